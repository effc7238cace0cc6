"""Losses and metrics of the detector, serializable Keras objects.

The IoU loss (`loss_fn='iou'`) is plain IoU (not GIoU) through keras-cv's box IoU, per example,
so that background frames can be masked out with sample weights; the `iou_loss` of frederic's
`utils/general.py` (zylamarek/frederic) is its batch mean.
Coordinates are pixels of the model frame (`FrameCoordinates`), so RMSE is in pixels too.
"""

from __future__ import annotations

from typing import Dict, List

import keras
from keras import ops

from tfpets.errors import ArgumentError

LOSS_FNS = ("mse", "iou")
EPSILON = 1e-7


def box_iou(y_true, y_pred):
  """Per-example IoU of (xmin, ymin, xmax, ymax) boxes [..., 4] -> [...], with an epsilon."""
  y_true = ops.cast(y_true, y_pred.dtype)
  x0 = ops.maximum(y_true[..., 0], y_pred[..., 0])
  y0 = ops.maximum(y_true[..., 1], y_pred[..., 1])
  x1 = ops.minimum(y_true[..., 2], y_pred[..., 2])
  y1 = ops.minimum(y_true[..., 3], y_pred[..., 3])
  inter = ops.relu(x1 - x0) * ops.relu(y1 - y0)

  def area(b):
    return ops.relu(b[..., 2] - b[..., 0]) * ops.relu(b[..., 3] - b[..., 1])

  return inter / (area(y_true) + area(y_pred) - inter + EPSILON)


@keras.saving.register_keras_serializable(package="tfpets")
class IoULoss(keras.losses.Loss):
  """1 - IoU per example (keras-cv `compute_iou`, xyxy); the batch mean is frederic's iou_loss."""

  def __init__(self, name: str = "iou_loss", **kwargs):
    super().__init__(name=name, **kwargs)

  def call(self, y_true, y_pred):
    from keras_cv import bounding_box  # heavy import; only runs that train with IoU pay for it

    y_true = ops.cast(y_true, y_pred.dtype)
    iou = bounding_box.compute_iou(y_true[..., None, :], y_pred[..., None, :], "xyxy")
    return 1.0 - iou[..., 0, 0]


@keras.saving.register_keras_serializable(package="tfpets")
class BoxIoU(keras.metrics.MeanMetricWrapper):
  """Mean IoU over examples (logged as `iou`, as frederic's `iou` metric)."""

  def __init__(self, name: str = "iou", dtype=None):
    super().__init__(fn=box_iou, name=name, dtype=dtype)

  def get_config(self):
    return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="tfpets")
class PointsMSE(keras.losses.Loss):
  """Mean squared coordinate error per example over points [B, K, 2] -> [B], so that a sample
  weight [B] can drop examples (Keras's MSE keeps the K axis)."""

  def __init__(self, name: str = "landmarks_mse", **kwargs):
    super().__init__(name=name, **kwargs)

  def call(self, y_true, y_pred):
    return ops.mean(ops.square(y_pred - ops.cast(y_true, y_pred.dtype)), axis=(-2, -1))


@keras.saving.register_keras_serializable(package="tfpets")
class HeatmapLoss(keras.losses.Loss):
  """Cross-entropy between heatmap logits [B, G, G, C] and Gaussian targets around true points
  [B, C, 2] (frame pixels), per example.

  The coordinate MSE alone barely tells a diffuse heatmap where to concentrate; supervising the
  heatmap itself (sigma = `sigma_cells` grid cells) makes localisation learn in far fewer steps.
  """

  def __init__(self, frame_size: int, sigma_cells: float = 1.0, name: str = "heatmap_ce", **kwargs):
    super().__init__(name=name, **kwargs)
    self.frame_size = int(frame_size)
    self.sigma_cells = float(sigma_cells)

  def call(self, y_true, y_pred):
    grid, channels = y_pred.shape[1], y_pred.shape[-1]
    stride = self.frame_size / grid
    centres = (ops.arange(grid, dtype="float32") + 0.5) * stride - 0.5
    points = ops.cast(y_true, "float32")
    dx = (centres[None, None, :] - points[..., 0:1]) / (stride * self.sigma_cells)
    dy = (centres[None, None, :] - points[..., 1:2]) / (stride * self.sigma_cells)
    logits = -0.5 * (dy[..., :, None] ** 2 + dx[..., None, :] ** 2)  # [B, C, Gy, Gx]
    target = ops.softmax(ops.reshape(logits, (-1, channels, grid * grid)), axis=-1)
    predicted = ops.reshape(ops.transpose(y_pred, (0, 3, 1, 2)), (-1, channels, grid * grid))
    cross_entropy = -ops.sum(target * ops.log_softmax(predicted, axis=-1), axis=-1)
    return ops.mean(cross_entropy, axis=-1)

  def get_config(self):
    return {**super().get_config(), "frame_size": self.frame_size, "sigma_cells": self.sigma_cells}


def box_loss(loss_fn: str) -> keras.losses.Loss:
  if loss_fn not in LOSS_FNS:
    raise ArgumentError("loss_fn", loss_fn, f"must be one of {', '.join(LOSS_FNS)}")
  return IoULoss() if loss_fn == "iou" else keras.losses.MeanSquaredError(name="box_mse")


def stage_losses(
  stage: str, loss_fn: str, frame_size: int, heatmaps: bool, heatmap_weight: float = 1.0
) -> tuple:
  """(losses, loss weights) per output. Stage 1: box loss + presence cross-entropy. Stage 2: MSE
  on landmarks and on the box (the landmarks stage always uses MSE, as frederic's `get_loss_fn`
  forces). The heatmap head adds `HeatmapLoss` on its maps, weighted by heatmap_weight, and in
  stage 1 MSE on its auxiliary landmarks."""
  if stage == "bbox":
    found = {
      "box": box_loss(loss_fn),
      "head": keras.losses.BinaryCrossentropy(from_logits=True, name="head_bce"),
    }
  else:
    found = {"landmarks": PointsMSE(), "box": keras.losses.MeanSquaredError(name="box_mse")}
  weights = {name: 1.0 for name in found}
  if heatmaps:
    found["landmarks"] = PointsMSE()
    weights["landmarks"] = 1.0
    for name in ("centre_map", "landmark_maps"):
      found[name] = HeatmapLoss(frame_size)
      weights[name] = heatmap_weight
  return found, weights


def stage_metrics(stage: str) -> Dict[str, List[keras.metrics.Metric]]:
  if stage == "bbox":
    return {
      "box": [BoxIoU()],
      "head": [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
    }
  return {"landmarks": [keras.metrics.RootMeanSquaredError(name="rmse")], "box": [BoxIoU()]}


def monitor(stage: str) -> tuple:
  """(metric, mode) that ReduceLROnPlateau, EarlyStopping and best-model saving follow
  (frederic's `tools/train.py`: the bbox stage's validation IoU, maximised; the landmarks
  stage's validation loss, minimised)."""
  return ("val_box_iou", "max") if stage == "bbox" else ("val_loss", "min")
