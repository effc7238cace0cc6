"""Evaluation of a super-resolution model: the SR benchmark protocol and GrabAI's small-image
classification protocol.

Benchmark protocol (as the D-DBPN paper's tables are computed): each ground-truth image is cropped
to a multiple of the scale, shrunk with MATLAB's bicubic `imresize(hr, 1/scale)` to uint8, upscaled
by the model and by bicubic `imresize(lr, scale)` as the baseline, and both are scored with PSNR and
SSIM on the Y channel, `scale` pixels shaved per border (`tfpets.superres.metrics`).

Small-image protocol (sun-yitao/GrabAIChallenge, `GAN_preprocess/downsample_images_for_test.py` and
`super_resolution.py`): a classifier's top-1 accuracy on the original images, on the images
resized to a short side of 128 px with OpenCV's INTER_AREA, and on those resized images after
super-resolving the ones smaller than 128 x 256 pixels. GrabAI rewrote JPEG files in between and
turned the model's output to uint8 with Keras' `array_to_img` (range stretched, then truncated);
here the images stay in memory (no JPEG re-encoding) and the output is clipped and rounded.

The model is called through one function, `upscale_fn(lr) -> sr`: an [h, w, 3] float32 RGB image
in [0, 1] to its [s h, s w, 3] float upscale (clipped to [0, 1] and rounded here), so that a tiled
or self-ensemble upscaler can stand in for the plain model call.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Callable, Iterable, List, Optional, Sequence

import cv2
import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.classify import data as classify_data
from tfpets.classify import evaluate as classify_evaluate
from tfpets.data import listing
from tfpets.data.decode import ImageDecodeError, read_image
from tfpets.data.rejects import SKIPPED, RejectsReport
from tfpets.errors import ArgumentError
from tfpets.superres import metrics, upscale

UpscaleFn = Callable[[np.ndarray], np.ndarray]
ClassifierPredict = Callable[[List[np.ndarray]], np.ndarray]

REPORT_NAME = "superres_eval"
SMALL_IMAGE_SIDE = 128  # GrabAI's downsample_images_for_test.py
SMALL_IMAGE_MAX_AREA = upscale.GRABAI_MAX_AREA


# --- upscaling ------------------------------------------------------------------------------


def model_upscaler(model) -> UpscaleFn:
  """`upscale_fn` of a Keras SR model: one forward pass on the whole image."""

  def upscale(lr: np.ndarray) -> np.ndarray:
    batch = tf.convert_to_tensor(np.asarray(lr, np.float32)[None])
    return np.asarray(model(batch, training=False))[0]

  return upscale


def bicubic_upscaler(scale: int) -> UpscaleFn:
  """`upscale_fn` that is MATLAB's bicubic `imresize(lr, scale)` on the float image."""
  return lambda lr: metrics.imresize(np.asarray(lr, np.float64), scale)


def upscale_uint8(upscale_fn: UpscaleFn, lr_uint8: np.ndarray, scale: int) -> np.ndarray:
  """`upscale_fn` on a uint8 RGB image (as floats in [0, 1]); its output clipped to [0, 1] and
  rounded to uint8. The output must be `scale` times the input's size."""
  sr = np.asarray(upscale_fn(lr_uint8.astype(np.float32) / 255.0))
  expected = (lr_uint8.shape[0] * scale, lr_uint8.shape[1] * scale, 3)
  if sr.shape != expected:
    raise ValueError(
      f"the upscaler turned a {lr_uint8.shape} image into {sr.shape}, expected {expected}"
    )
  return metrics.float01_to_uint8(sr)


# --- the SR benchmark protocol --------------------------------------------------------------


def modcrop(image: np.ndarray, scale: int) -> np.ndarray:
  """The top-left part of `image` whose height and width are multiples of `scale`."""
  height, width = image.shape[:2]
  return image[: height - height % scale, : width - width % scale]


def min_scored_side(scale: int) -> int:
  """The smallest HR side that can be scored: the SSIM window after shaving `scale` per border."""
  return 2 * scale + metrics.SSIM_WINDOW


def _mean(rows: List[dict], key: str) -> Optional[float]:
  return float(np.mean([row[key] for row in rows])) if rows else None


def evaluate_pairs(
  model,
  hr_paths: Sequence[str],
  scale: int,
  *,
  self_ensemble: bool = False,
  upscaler: Optional[UpscaleFn] = None,
  rejects: Optional[RejectsReport] = None,
  progress_every: int = 0,
) -> dict:
  """Scores `model` (or `upscaler`, which then replaces the plain model call) against bicubic
  on ground-truth images, by the SR benchmark protocol (see the module docstring).

  `self_ensemble` records that `upscaler` averages the flipped and transposed predictions; the
  plain model call does not, so it requires an `upscaler`. Files that cannot be decoded or are
  too small to score are skipped into `rejects` (a new RejectsReport unless given) and listed in
  the report. Returns a JSON-ready report: per-image rows under `images`, and mean PSNR and SSIM
  of the model and of bicubic (None when no image was scored).
  """
  scale = int(scale)
  if scale < 1:
    raise ArgumentError("scale", scale, "must be a positive integer")
  if upscaler is None:
    if self_ensemble:
      raise ArgumentError(
        "self_ensemble", True, "needs an upscaler that averages the flips and transposes"
      )
    if model is None:
      raise ArgumentError("model", None, "give a model or an upscaler")
    upscaler = model_upscaler(model)
  rejects = RejectsReport() if rejects is None else rejects
  first_reject = len(rejects)
  rows = []
  for path in hr_paths:
    row = _evaluate_one(str(path), scale, upscaler, rejects)
    if row is not None:
      rows.append(row)
      if progress_every > 0 and len(rows) % progress_every == 0:
        logging.info("scored %d images", len(rows))
  return {
    "scale": scale,
    "self_ensemble": bool(self_ensemble),
    "num_images": len(rows),
    "model": {"psnr": _mean(rows, "model_psnr"), "ssim": _mean(rows, "model_ssim")},
    "bicubic": {"psnr": _mean(rows, "bicubic_psnr"), "ssim": _mean(rows, "bicubic_ssim")},
    "images": rows,
    "rejects": [vars(entry).copy() for entry in rejects.entries[first_reject:]],
  }


def _evaluate_one(
  path: str, scale: int, upscaler: UpscaleFn, rejects: RejectsReport
) -> Optional[dict]:
  try:
    hr = read_image(path).pixels
  except ImageDecodeError as e:
    rejects.add(path, e.reason)
    return None
  cropped = modcrop(hr, scale)
  if min(cropped.shape[:2]) < min_scored_side(scale):
    rejects.add(
      path,
      f"too small to score at x{scale}: {hr.shape[0]}x{hr.shape[1]} "
      f"(needs {min_scored_side(scale)} pixels per side)",
    )
    return None
  lr = metrics.imresize(cropped, 1.0 / scale)
  model_scores = metrics.sr_scores(upscale_uint8(upscaler, lr, scale), cropped, scale)
  bicubic_scores = metrics.sr_scores(metrics.imresize(lr, scale), cropped, scale)
  return {
    "file": path,
    "hr_height": int(cropped.shape[0]),
    "hr_width": int(cropped.shape[1]),
    "lr_height": int(lr.shape[0]),
    "lr_width": int(lr.shape[1]),
    "model_psnr": model_scores["psnr"],
    "model_ssim": model_scores["ssim"],
    "bicubic_psnr": bicubic_scores["psnr"],
    "bicubic_ssim": bicubic_scores["ssim"],
  }


def write_report(report: dict, directory: str, name: str = REPORT_NAME) -> List[str]:
  """Writes `<name>.json` (the whole report), `<name>.csv` (its per-image rows) and, when the
  report lists rejects, `<name>_rejects.csv` into `directory`. Returns the paths written."""
  os.makedirs(directory, exist_ok=True)
  json_path = os.path.join(directory, f"{name}.json")
  with open(json_path, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  csv_path = os.path.join(directory, f"{name}.csv")
  rows = report.get("images", [])
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file"])
    writer.writeheader()
    writer.writerows(rows)
  paths = [json_path, csv_path]
  if "rejects" in report:
    rejects = RejectsReport()
    for entry in report["rejects"]:
      rejects.add(entry["path"], entry["reason"], entry["action"])
    paths.append(rejects.write_csv(os.path.join(directory, f"{name}_rejects.csv")))
  return paths


# --- GrabAI's small-image protocol ----------------------------------------------------------


def short_side_size(height: int, width: int, short_side: int = SMALL_IMAGE_SIDE) -> tuple:
  """(height, width) of `downscale_short_side`: OpenCV's `resize` with fx = fy = ratio and no
  dsize rounds each side times the ratio to the nearest integer (`saturate_cast<int>`, ties to
  even), so the short side becomes `short_side` and the long side round(long * ratio)."""
  ratio = short_side / min(height, width)
  return int(np.rint(height * ratio)), int(np.rint(width * ratio))


def downscale_short_side(image_uint8: np.ndarray, short_side: int = SMALL_IMAGE_SIDE) -> np.ndarray:
  """`image_uint8` resized so that its shorter side is `short_side`, as GrabAI's
  `downsample_images_for_test.py`: `cv2.resize(image, None, fx=ratio, fy=ratio, INTER_AREA)`
  with ratio = short_side / min(h, w) (an image already smaller is enlarged likewise)."""
  image_uint8 = np.asarray(image_uint8)
  ratio = short_side / min(image_uint8.shape[:2])
  return cv2.resize(image_uint8, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_AREA)


def _top1(probabilities: List[np.ndarray], labels: np.ndarray) -> float:
  return classify_evaluate.top_k_accuracy(np.concatenate(probabilities), labels, 1)


def _predict(classifier_predict: ClassifierPredict, images: List[np.ndarray]) -> np.ndarray:
  probabilities = np.asarray(classifier_predict(images))
  if probabilities.ndim != 2 or probabilities.shape[0] != len(images):
    raise ValueError(
      f"classifier_predict returned shape {probabilities.shape} for {len(images)} images"
    )
  return probabilities


def _chunks(images: Iterable[np.ndarray], size: int):
  chunk = []
  for image in images:
    chunk.append(np.asarray(image, np.uint8))
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def small_image_protocol(
  classifier_predict: ClassifierPredict,
  images: Iterable[np.ndarray],
  labels: Sequence[int],
  upscale_fn: UpscaleFn,
  scale: int,
  max_area: int = SMALL_IMAGE_MAX_AREA,
  *,
  short_side: int = SMALL_IMAGE_SIDE,
  names: Optional[Sequence[str]] = None,
  chunk_size: int = 64,
) -> dict:
  """Top-1 accuracy of a classifier on (a) the `images` ([H, W, 3] uint8 RGB, any iterable),
  (b) the images resized to a short side of `short_side` (`downscale_short_side`) and (c) those
  resized images upscaled by `upscale_fn` when width * height < `max_area` (strictly; the
  others stay as resized), as GrabAI's small-image experiment.

  `classifier_predict(list of uint8 images) -> [N, C] probabilities` (see
  `classifier_predict_fn`) is called on at most `chunk_size` images at a time, so `images` can be
  a generator. Returns a JSON-ready report with the three accuracies, how many images were
  upscaled, and per-image rows (sizes and the predicted class in each condition).
  """
  labels = np.asarray(labels).reshape(-1)
  if labels.size == 0:
    raise ArgumentError("labels", [], "cannot evaluate zero images")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ArgumentError("labels", labels.dtype, "must be integer class indices")
  if hasattr(images, "__len__") and len(images) != labels.size:
    raise ArgumentError("labels", f"{labels.size} labels", f"given for {len(images)} images")
  conditions = ("original", "downscaled", "upscaled")
  probabilities = {condition: [] for condition in conditions}
  rows = []
  for chunk in _chunks(images, chunk_size):
    downscaled = [downscale_short_side(image, short_side) for image in chunk]
    small = [image.shape[0] * image.shape[1] < max_area for image in downscaled]
    upscaled = [
      upscale_uint8(upscale_fn, image, scale) if is_small else image
      for image, is_small in zip(downscaled, small)
    ]
    predictions = {}
    for condition, batch in zip(conditions, (chunk, downscaled, upscaled)):
      predicted = _predict(classifier_predict, batch)
      probabilities[condition].append(predicted)
      predictions[condition] = np.argmax(predicted, axis=1)
    for i in range(len(chunk)):
      index = len(rows)
      rows.append(
        {
          "index": index,
          "file": str(names[index]) if names is not None and index < len(names) else "",
          "label": int(labels[index]) if index < labels.size else None,
          "original_height": int(chunk[i].shape[0]),
          "original_width": int(chunk[i].shape[1]),
          "downscaled_height": int(downscaled[i].shape[0]),
          "downscaled_width": int(downscaled[i].shape[1]),
          "upscaled": bool(small[i]),
          **{f"{c}_prediction": int(predictions[c][i]) for c in conditions},
        }
      )
  if len(rows) != labels.size:
    raise ArgumentError("labels", f"{labels.size} labels", f"given for {len(rows)} images")
  if names is not None and len(names) != len(rows):
    raise ArgumentError("names", f"{len(names)} names", f"given for {len(rows)} images")
  num_upscaled = sum(row["upscaled"] for row in rows)
  return {
    "scale": int(scale),
    "short_side": int(short_side),
    "max_area": int(max_area),
    "num_images": len(rows),
    "num_upscaled": int(num_upscaled),
    "num_kept": len(rows) - int(num_upscaled),
    **{f"{c}_top1": _top1(probabilities[c], labels) for c in conditions},
    "images": rows,
  }


def classifier_predict_fn(model, image_size: int, batch_size: int = 32) -> ClassifierPredict:
  """`classifier_predict` of a tfpets classifier (`tfpets.classify.train.load_classifier`):
  images of any size are prepared as evaluation prepares them (`classify.data.eval_images`:
  squash-resize and central crop, RGB in [0, 255]) and predicted `batch_size` at a time; a
  WS-DAN model gives its refined probabilities, the final prediction."""

  def batches(images: List[np.ndarray]):
    for start in range(0, len(images), batch_size):
      yield tf.concat(
        [
          classify_data.eval_images(tf.convert_to_tensor(image[None]), image_size)
          for image in images[start : start + batch_size]
        ],
        axis=0,
      )

  def predict(images: List[np.ndarray]) -> np.ndarray:
    predictions = classify_evaluate.predict_probabilities(model, batches(list(images)))
    return predictions.get("refined_probabilities", predictions["probabilities"])

  return predict


def decodable_labelled_images(source: str, rejects: RejectsReport) -> tuple:
  """([path], [label]) of the labelled images of `source` (class folders or a CSV with labels)
  that decode; the others go to `rejects`."""
  found = listing.list_images(source)
  unlabelled = [path for path, label in found if label is None]
  if unlabelled:
    raise ArgumentError(
      "source", source, "needs labels: a folder of class folders or a CSV with a label column"
    )
  paths, labels = [], []
  for path, label in found:
    try:
      read_image(path)
    except ImageDecodeError as e:
      rejects.add(path, e.reason, SKIPPED)
      continue
    paths.append(path)
    labels.append(label)
  if not paths:
    raise ArgumentError("source", source, "no image could be decoded")
  return paths, labels


def evaluate_small_images(
  classifier_run: str,
  source: str,
  upscale_fn: UpscaleFn,
  scale: int,
  max_area: int = SMALL_IMAGE_MAX_AREA,
  *,
  short_side: int = SMALL_IMAGE_SIDE,
  batch_size: int = 32,
) -> dict:
  """`small_image_protocol` of the classifier trained in `classifier_run` (a classify workdir) on
  the labelled images of `source`; undecodable files are listed under `rejects`."""
  from tfpets.classify import train  # pylint: disable=g-import-not-at-top  # heavy: Keras apps

  model, class_names, config = train.load_classifier(classifier_run)
  rejects = RejectsReport()
  paths, labels = decodable_labelled_images(source, rejects)
  report = small_image_protocol(
    classifier_predict_fn(model, config.image_size, batch_size),
    (read_image(path).pixels for path in paths),
    labels,
    upscale_fn,
    scale,
    max_area,
    short_side=short_side,
    names=paths,
  )
  report["classifier"] = str(classifier_run)
  report["classes"] = len(class_names)
  report["rejects"] = [vars(entry).copy() for entry in rejects.entries]
  return report
