"""Held-out evaluation of a detector in original-image pixels.

RMSE is the root of the mean squared coordinate error (x and y errors pooled), as the
`sqrt(mse)` of frederic's `tools/test_separately.py` (zylamarek/frederic); per point it pools that
point's x and y errors over images. Box IoU compares the
detector's head box with the annotated head box (or the landmarks' box where there is none).
`roi_rmse` is the paper-comparable figure: the landmarks model alone inside ROIs cut around the true
head box, in pixels of its frame.
"""

from __future__ import annotations

import pathlib
from typing import Dict, List

import numpy as np

from tfpets.landmarks import augment, data, predict
from tfpets.landmarks import crop as crop_lib


def rmse(errors: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(errors)))) if np.size(errors) else float("nan")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of boxes [..., 4] (xmin, ymin, xmax, ymax)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = w * h
  area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)
  return inter / (area(a) + area(b) - inter + 1e-7)


def _truth(example: Dict, num_points: int):
  """(points or None, head box or None) of a parsed example, as numpy."""
  count = int(example["num_landmarks"])
  raw = np.asarray(example["landmarks"], np.float32)
  points = None
  if count == num_points:
    points = raw[:num_points]
  elif count == 9 and num_points == 5:
    points = raw[list(augment.FIVE_OF_NINE)]
  box = np.asarray(example["box"], np.float32) if bool(example["has_box"]) else None
  if box is None and count >= 3:
    pts = raw[:count]
    box = np.concatenate([pts.min(0), pts.max(0)])
  return points, box


def collect(shards_dir: pathlib.Path, split: str, num_points: int, limit: int = 0) -> List[dict]:
  """The split's images with their truth, as numpy."""
  data.split_size(shards_dir, split)  # a clear error for a missing split
  samples = []
  for example in data.examples(shards_dir, split).as_numpy_iterator():
    points, box = _truth(example, num_points)
    samples.append(
      {"image": example["image"], "points": points, "box": box, "id": example["id"].decode()}
    )
    if limit and len(samples) >= limit:
      break
  return samples


def evaluate_detector(detector: predict.Detector, samples: List[dict], crop_margin: float) -> Dict:
  """Two-stage metrics on samples from `collect`; detections are added to each sample."""
  names = detector.config.point_names
  detections = detector.detect_many([s["image"] for s in samples])
  errors, ious, stage1_ious, contained, found = [], [], [], [], []
  for sample, det in zip(samples, detections):
    sample["detection"] = det
    found.append(det.head_found)
    if sample["points"] is not None:
      errors.append(det.landmarks - sample["points"])
    if sample["box"] is not None:
      ious.append(box_iou(det.box, sample["box"]))
      stage1_ious.append(box_iou(det.stage1_box, sample["box"]))
      height, width = sample["image"].shape[:2]
      window = crop_lib.head_window(det.landmarks, det.box, height, width, crop_margin)
      contained.append(crop_lib.contains(window, sample["box"]))
  errors = np.asarray(errors, np.float64).reshape(-1, len(names), 2)
  return {
    "images": len(samples),
    "images_with_landmarks": int(errors.shape[0]),
    "rmse_px": rmse(errors),
    "rmse_per_point_px": {name: rmse(errors[:, k]) for k, name in enumerate(names)},
    "mean_point_error_px": float(np.mean(np.linalg.norm(errors, axis=-1)))
    if errors.size
    else float("nan"),
    "box_iou": float(np.mean(ious)) if ious else float("nan"),
    "stage1_box_iou": float(np.mean(stage1_ious)) if stage1_ious else float("nan"),
    "crop_contains_head": float(np.mean(contained)) if contained else float("nan"),
    "crop_margin": crop_margin,
    "head_found_rate": float(np.mean(found)) if found else float("nan"),
  }


def roi_rmse(landmarks_model, shards_dir: pathlib.Path, split: str, config) -> float:
  """RMSE of the landmarks model inside ROIs around the true head box, in frame pixels."""
  spec = data.FrameSpec("landmarks", config.roi_size, config.num_landmarks)
  options = augment.AugmentOptions(roi_margin=config.roi_margin, roi_jitter=0.0)
  errors = []
  for frames, targets in data.frames(
    shards_dir, split, spec, batch_size=32, training=False, options=options
  ):
    predicted = landmarks_model(frames, training=False)["landmarks"]
    errors.append(np.asarray(predicted) - targets["landmarks"].numpy())
  return rmse(np.concatenate(errors)) if errors else float("nan")
