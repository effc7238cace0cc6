"""The two-stage detector on images of any size, and prediction files.

Steps 1 and 2 are those of frederic's `Predictor` (zylamarek/frederic, `predictor.py`), in float
geometry throughout.

1. The whole image is letterboxed into the stage-1 frame; the bbox model gives the head box and a
   head-presence logit, mapped back to the original pixels.
2. The ROI (head box + `roi_margin` x its longer side per side, squared about its centre) is cut
   from the ORIGINAL image (black outside) into the stage-2 frame; the landmarks model gives the
   landmarks and a refined head box, mapped back through the inverse of the same matrix.
   With `roi_passes` > 1 the ROI is cut again around the refined box and stage 2 runs again (a
   cascade: stage 2 trains on jittered ROIs, so its own box is a valid ROI source, and a better
   centred ROI gives better landmarks); the last pass gives the results. `roi_first_margin`
   widens the first ROI, so that a stage-1 box that is off still has the head inside it.
   With `roi_flip`, each stage-2 pass averages its estimates on the ROI and on its mirror image
   (test-time augmentation: the two estimates' errors are partly independent).
3. With more than one candidate (`roi_candidates` > 1 or `roi_candidate_scales`), stage 2 runs
   from stage 1's box, from boxes on the next peaks of its centre heatmap and from stage 1's box
   rescaled, and the head verifier (verifier.py), which scores how well a box fits a head, keeps
   the candidate whose final box it scores highest: a stage-1 box on background clutter, or one
   too big for a small head, no longer decides the whole detection.
All coordinates returned are centre coordinates of the original (EXIF-oriented) image.

The pipeline is written once (`run_pipeline`) over stage functions, so the same code runs the
Keras models (in one tf.function), the exported SavedModel and the TFLite interpreters.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pathlib
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.data import decode
from tfpets.errors import ArgumentError
from tfpets.landmarks import augment, draw, geometry
from tfpets.landmarks import model as model_lib

StageFn = Callable[[tf.Tensor], Dict[str, tf.Tensor]]
# The verifier sees a box with this margin around it, like the stage-2 ROIs.
VERIFIER_MARGIN = 0.3
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def stage_one(images: tf.Tensor, config: model_lib.DetectorConfig):
  """(frames, matrices): images [N, H, W, 3] letterboxed into the stage-1 frame."""
  shape = tf.shape(images)
  n = shape[0]
  window = tf.cast(tf.stack([0, 0, shape[2], shape[1]]), tf.float32)
  matrices = tf.repeat(geometry.window_to_frame(window, config.image_size)[None], n, axis=0)
  return geometry.warp(images, matrices, config.image_size), matrices


def roi_frames(images: tf.Tensor, boxes: tf.Tensor, margin: float, size: int):
  """(frames, matrices, roi windows): square ROIs around boxes [N, 4] (original pixels), cut from
  images into size x size frames."""
  rois = geometry.square_roi(boxes, margin)
  matrices = geometry.window_to_frame(rois, size)
  return geometry.warp(images, matrices, size), matrices, rois


def stage_two(images: tf.Tensor, boxes: tf.Tensor, config: model_lib.DetectorConfig, margin: float):
  """(frames, matrices, roi windows) of the stage-2 frame around boxes [N, 4]."""
  return roi_frames(images, boxes, margin, config.roi_size)


def flip_averaged(landmarks_fn: StageFn, config: model_lib.DetectorConfig) -> StageFn:
  """Stage 2 on each frame and on its mirror image, in one batch, box and landmarks averaged."""
  permutation = list(augment.flip_permutation(config.num_landmarks))
  mirror = geometry.horizontal_flip(float(config.roi_size))

  def stage(frames):
    n = tf.shape(frames)[0]
    out = landmarks_fn(tf.concat([frames, frames[:, :, ::-1]], axis=0))
    box, points = tf.cast(out["box"], tf.float32), tf.cast(out["landmarks"], tf.float32)
    mirrored_box = geometry.transform_box(mirror, box[n:])
    mirrored_points = geometry.transform_points(mirror, tf.gather(points[n:], permutation, axis=1))
    return {"box": (box[:n] + mirrored_box) / 2, "landmarks": (points[:n] + mirrored_points) / 2}

  return stage


def candidate_boxes(first: Dict[str, tf.Tensor], config: model_lib.DetectorConfig) -> tf.Tensor:
  """Stage-1 head boxes [N, num_candidates, 4] in its frame: its own box, boxes of the same size
  centred on the strongest local maxima (3 x 3) of its centre heatmap, strongest first, then its
  own box scaled about its centre by each of `roi_candidate_scales`."""
  box = tf.cast(first["box"], tf.float32)
  candidates = [box[:, None]]
  if config.roi_candidates > 1:
    logits = tf.cast(first["centre_map"], tf.float32)
    local_max = tf.nn.max_pool2d(logits, 3, 1, "SAME")
    peaks = tf.where(logits >= local_max, logits, tf.fill(tf.shape(logits), -np.inf))
    grid = tf.shape(logits)[2]
    _, index = tf.math.top_k(
      tf.reshape(peaks, [tf.shape(logits)[0], -1]), k=config.roi_candidates - 1
    )
    cell = tf.cast(tf.stack([index % grid, index // grid], -1), tf.float32)
    stride = config.image_size / tf.cast(grid, tf.float32)
    centre = (cell + 0.5) * stride - 0.5  # cell centres, as the heatmap head's soft-argmax
    half = (box[:, None, 2:] - box[:, None, :2]) / 2
    candidates.append(tf.concat([centre - half, centre + half], -1))
  centre, half = (box[:, 2:] + box[:, :2]) / 2, (box[:, 2:] - box[:, :2]) / 2
  for scale in config.roi_candidate_scales:
    candidates.append(tf.concat([centre - scale * half, centre + scale * half], -1)[:, None])
  return tf.concat(candidates, axis=1)


def verifier_frames(images: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
  """The verifier's frames [N, size, size, 3]: square ROIs around boxes [N, 4] of images."""
  return roi_frames(images, boxes, VERIFIER_MARGIN, size)[0]


def select(outputs: Dict[str, tf.Tensor], scores: tf.Tensor, count: int) -> Dict[str, tf.Tensor]:
  """Per image, the outputs [N * count, ...] of its best-scoring candidate (scores [N * count])."""
  best = tf.argmax(tf.reshape(scores, [-1, count]), axis=1, output_type=tf.int32)
  rows = tf.range(tf.shape(best)[0]) * count + best
  return {name: tf.gather(value, rows) for name, value in outputs.items()}


def stage_one_candidates(
  images: tf.Tensor, config: model_lib.DetectorConfig, bbox_fn: StageFn
) -> tf.Tensor:
  """Stage 1 on images [N, H, W, 3] -> candidate head boxes [N, num_candidates, 4] in their
  pixels."""
  frames, matrices = stage_one(images, config)
  return _candidates_in_image(bbox_fn(frames), matrices, config)


def _candidates_in_image(first, matrices, config: model_lib.DetectorConfig):
  back = tf.repeat(tf.linalg.inv(matrices)[:, None], config.num_candidates, axis=1)
  return geometry.transform_box(back, candidate_boxes(first, config))


def run_pipeline(
  images,
  config: model_lib.DetectorConfig,
  bbox_fn: StageFn,
  landmarks_fn: StageFn,
  verifier_fn: Optional[StageFn] = None,
) -> Dict[str, tf.Tensor]:
  """Both stages on a batch of same-size images [N, H, W, 3] (any numeric dtype, 0..255).

  With more than one candidate, every candidate box of stage 1 gets its own stage-2 passes, and
  per image the one whose final box the verifier scores highest wins.
  """
  count = config.num_candidates
  if count > 1 and verifier_fn is None:
    raise ValueError(
      f"verifier_fn is required: {count} candidates (roi_candidates and roi_candidate_scales) "
      f"need the head verifier model ({model_lib.MODEL_FILES['verifier']})"
    )
  images = tf.cast(images, tf.float32)
  frames, matrices = stage_one(images, config)
  first = bbox_fn(frames)
  stage1_box = tf.reshape(_candidates_in_image(first, matrices, config), [-1, 4])
  if count > 1:
    images = tf.repeat(images, count, axis=0)
  if config.roi_flip:
    landmarks_fn = flip_averaged(landmarks_fn, config)
  box = stage1_box
  for i in range(config.roi_passes):
    margin = config.roi_first_margin if i == 0 and config.roi_first_margin else config.roi_margin
    frames, matrices, rois = stage_two(images, box, config, margin)
    second = landmarks_fn(frames)
    back = tf.linalg.inv(matrices)
    box = geometry.transform_box(back, second["box"])
  outputs = {
    "box": box,
    "landmarks": geometry.transform_points(back, second["landmarks"]),
    "stage1_box": stage1_box,
    "roi": rois,
  }
  if count > 1:
    scores = verifier_fn(verifier_frames(images, box, config.verifier_size))["head"]
    outputs = select(outputs, tf.cast(scores, tf.float32)[:, 0], count)
  outputs["head_score"] = tf.sigmoid(tf.cast(first["head"], tf.float32)[:, 0])
  return outputs


def keras_stage(model) -> StageFn:
  return lambda frames: model(frames, training=False)


@dataclasses.dataclass
class Detection:
  """One image's result, in centre coordinates of the original image."""

  box: np.ndarray  # [4] head box (refined by stage 2)
  landmarks: np.ndarray  # [K, 2]
  stage1_box: np.ndarray  # [4] head box of stage 1, which placed the ROI
  roi: np.ndarray  # [4] the square ROI window of the last stage-2 pass (edge coordinates)
  head_score: float  # head presence probability
  head_found: bool

  def to_json(self, point_names: Sequence[str]) -> dict:
    def rounded(values):
      return [round(float(v), 2) for v in np.asarray(values).reshape(-1)]

    return {
      "head_found": bool(self.head_found),
      "head_score": round(float(self.head_score), 4),
      "box": rounded(self.box),
      "landmarks": {name: rounded(p) for name, p in zip(point_names, self.landmarks)},
      "stage1_box": rounded(self.stage1_box),
      "roi": rounded(self.roi),
    }


def head_found(box: np.ndarray, score: float, width: int, height: int, threshold: float) -> bool:
  """A head is reported when the presence score passes the threshold and the box is a real box
  that overlaps the image."""
  x0, y0, x1, y1 = box
  overlaps = x1 > 0 and y1 > 0 and x0 < width - 1 and y0 < height - 1
  return bool(score >= threshold and x1 - x0 >= 1 and y1 - y0 >= 1 and overlaps)


class Detector:
  """The two-stage detector over its stage functions (Keras, SavedModel, TFLite), the head
  verifier's among them when the configuration has candidates."""

  def __init__(
    self,
    config: model_lib.DetectorConfig,
    bbox_fn: StageFn,
    landmarks_fn: StageFn,
    verifier_fn: Optional[StageFn] = None,
    compile_pipeline: bool = True,
  ):
    self.config = config
    pipeline = lambda images: run_pipeline(images, config, bbox_fn, landmarks_fn, verifier_fn)
    if compile_pipeline:
      pipeline = tf.function(
        pipeline, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)]
      )
    self._pipeline = pipeline

  @classmethod
  def from_models(cls, config, bbox_model, landmarks_model, verifier_model=None) -> "Detector":
    return cls(
      config,
      keras_stage(bbox_model),
      keras_stage(landmarks_model),
      keras_stage(verifier_model) if verifier_model is not None else None,
    )

  @classmethod
  def from_directory(cls, directory: str | os.PathLike) -> "Detector":
    """Loads a trained detector: the landmarks stage's workdir or its models/ folder."""
    models = models_directory(directory)
    config = model_lib.DetectorConfig.load(models)
    return cls.from_models(
      config,
      *(
        model_lib.load_model(models / model_lib.MODEL_FILES[s]) for s in model_lib.stages_of(config)
      ),
    )

  def detect_batch(self, images: np.ndarray) -> List[Detection]:
    """Same-size images [N, H, W, 3] uint8 -> one Detection each."""
    images = np.asarray(images)
    out = {k: np.asarray(v) for k, v in self._pipeline(tf.cast(images, tf.float32)).items()}
    height, width = images.shape[1:3]
    return [
      Detection(
        out["box"][i],
        out["landmarks"][i],
        out["stage1_box"][i],
        out["roi"][i],
        float(out["head_score"][i]),
        head_found(
          out["box"][i], float(out["head_score"][i]), width, height, self.config.head_threshold
        ),
      )
      for i in range(images.shape[0])
    ]

  def detect(self, image: np.ndarray) -> Detection:
    return self.detect_batch(np.asarray(image)[None])[0]

  def detect_many(self, images: Sequence[np.ndarray], batch_size: int = 32) -> List[Detection]:
    """Images of any sizes; same-size images are run together."""
    results: List[Optional[Detection]] = [None] * len(images)
    by_shape: Dict[tuple, List[int]] = {}
    for i, image in enumerate(images):
      by_shape.setdefault(np.asarray(image).shape, []).append(i)
    for indices in by_shape.values():
      for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        for i, det in zip(chunk, self.detect_batch(np.stack([images[j] for j in chunk]))):
          results[i] = det
    return results


def models_directory(directory: str | os.PathLike) -> pathlib.Path:
  """The folder of a trained detector's models: `directory` itself or its models/ folder."""
  root = pathlib.Path(directory)
  for candidate in (root / "models", root):
    if (candidate / model_lib.CONFIG_FILE).is_file():
      return candidate
  raise ArgumentError(
    "directory",
    str(directory),
    f"no trained detector there (expected {model_lib.CONFIG_FILE} in it or in its models/ "
    "folder; the landmarks stage writes them)",
  )


def list_images(images: str) -> List[str]:
  """The image files `images` names: a file, a folder (searched recursively) or a glob pattern."""
  if not images:
    raise ArgumentError("images", images, "must name an image file, a folder or a glob pattern")
  if os.path.isfile(images):
    return [images]
  if os.path.isdir(images):
    found = [
      str(p)
      for p in sorted(pathlib.Path(images).rglob("*"))
      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
  else:
    found = sorted(p for p in glob.glob(images, recursive=True) if os.path.isfile(p))
  if not found:
    raise ArgumentError("images", images, "no image files there")
  return found


def _unique_stem(path: str, taken: set) -> str:
  stem = pathlib.Path(path).stem or "image"
  name, n = stem, 1
  while name in taken:
    n += 1
    name = f"{stem}_{n}"
  taken.add(name)
  return name


def predict_files(
  detector: Detector, paths: Iterable[str], images_dir: pathlib.Path, records_dir: pathlib.Path
) -> List[dict]:
  """Writes `<stem>.landmarks.png` (annotated) and `<stem>.json` per input; returns the records.

  Unreadable files get a record with an `error` and no outputs.
  """
  images_dir.mkdir(parents=True, exist_ok=True)
  records_dir.mkdir(parents=True, exist_ok=True)
  names = detector.config.point_names
  taken: set = set()
  results = []
  for path in paths:
    try:
      decoded = decode.read_image(path)
    except decode.ImageDecodeError as e:
      logging.warning("skipped %s", e)
      results.append({"path": path, "error": e.reason})
      continue
    det = detector.detect(decoded.pixels)
    stem = _unique_stem(path, taken)
    record = {
      "path": path,
      "width": decoded.width,
      "height": decoded.height,
      "decoder_notes": decoded.notes,
      **det.to_json(names),
      "annotated_image": str(images_dir / f"{stem}.landmarks.png"),
    }
    picture = draw.overlay(decoded.pixels, det.landmarks, det.box, roi=det.roi, labels=True)
    if not det.head_found:
      draw.draw_box(picture, det.box, draw.NO_HEAD)
    pathlib.Path(record["annotated_image"]).write_bytes(decode.encode_png(picture))
    (records_dir / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    results.append(record)
  return results
