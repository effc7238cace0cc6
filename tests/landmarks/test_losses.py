"""IoU, RMSE and the coordinate parameterisation against numpy written here."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tfpets.landmarks import evaluate, losses
from tfpets.landmarks import model as model_lib


def _reference_iou(a, b):
  ious = []
  for (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) in zip(a, b):
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    ious.append(inter / union)
  return np.array(ious, np.float64)


def _boxes(rng, n):
  corner = rng.uniform(0, 50, (n, 2))
  size = rng.uniform(1, 30, (n, 2))
  return np.concatenate([corner, corner + size], 1).astype(np.float32)


@pytest.fixture
def pairs():
  rng = np.random.default_rng(3)
  truth, predicted = _boxes(rng, 64), _boxes(rng, 64)
  predicted[:8] = truth[:8]  # identical
  predicted[8:16] = truth[8:16] + [100, 0, 100, 0]  # disjoint
  centre = (truth[16:24, :2] + truth[16:24, 2:]) / 2
  half = (truth[16:24, 2:] - truth[16:24, :2]) / 4
  predicted[16:24] = np.concatenate([centre - half, centre + half], 1)  # nested, IoU 1/4
  return truth, predicted


def test_iou_metric_loss_and_numpy_evaluation_agree_with_reference(pairs):
  truth, predicted = pairs
  expected = _reference_iou(truth, predicted)
  assert expected[:8] == pytest.approx(1.0) and np.all(expected[8:16] == 0)
  np.testing.assert_allclose(expected[16:24], 0.25, atol=1e-5)
  np.testing.assert_allclose(np.asarray(losses.box_iou(truth, predicted)), expected, atol=1e-5)
  np.testing.assert_allclose(evaluate.box_iou(truth, predicted), expected, atol=1e-6)

  metric = losses.BoxIoU()
  metric.update_state(truth, predicted)
  assert float(metric.result()) == pytest.approx(expected.mean(), abs=1e-5)

  # keras-cv's IoU per example, averaged over the batch: frederic's iou_loss = 1 - mean IoU ...
  loss = losses.IoULoss()
  assert float(loss(truth, predicted)) == pytest.approx(1 - expected.mean(), abs=1e-4)
  # ... and sample weights drop background frames from it (Keras divides by the batch size).
  weights = (np.arange(64) % 3 != 0).astype(np.float32)
  assert float(loss(truth, predicted, sample_weight=weights)) == pytest.approx(
    np.sum(weights * (1 - expected)) / 64, abs=1e-4
  )


def test_rmse_metric_and_evaluation_against_numpy():
  rng = np.random.default_rng(0)
  truth = rng.uniform(0, 64, (10, 9, 2)).astype(np.float32)
  predicted = truth + rng.normal(0, 2.5, truth.shape).astype(np.float32)
  expected = np.sqrt(np.mean((predicted - truth) ** 2))
  metric = keras.metrics.RootMeanSquaredError()
  metric.update_state(truth, predicted)
  assert float(metric.result()) == pytest.approx(expected, rel=1e-5)
  assert evaluate.rmse(predicted - truth) == pytest.approx(expected, rel=1e-9)
  # Per point: that point's x and y errors pooled over images.
  point3 = np.sqrt(np.mean((predicted[:, 3] - truth[:, 3]) ** 2))
  assert evaluate.rmse((predicted - truth)[:, 3]) == pytest.approx(point3)


@pytest.mark.parametrize(
  "norm,raw,expected",
  [
    ("none", [[-1.0, 0.0, 5.5, 30.0]], [[-1.0, 0.0, 5.5, 30.0]]),
    ("center", [[-1.0, 0.0, 5.5, 30.0]], [[31.0, 32.0, 37.5, 62.0]]),
    ("unit", [[-1.0, 0.0, 0.5, 1.0]], [[0.0, 32.0, 48.0, 64.0]]),
  ],
)
def test_frame_coordinates_map_outputs_to_frame_pixels(norm, raw, expected):
  layer = model_lib.FrameCoordinates(64, norm, (2, 2))
  out = np.asarray(layer(np.array(raw, np.float32)))
  np.testing.assert_allclose(out, np.array(expected, np.float32).reshape(1, 2, 2))
  clone = model_lib.FrameCoordinates.from_config(layer.get_config())
  np.testing.assert_allclose(np.asarray(clone(np.array(raw, np.float32))), out)


def test_heatmap_loss_against_numpy():
  rng = np.random.default_rng(4)
  logits = rng.normal(0, 1, (2, 4, 4, 3)).astype(np.float32)
  points = rng.uniform(0, 32, (2, 3, 2)).astype(np.float32)
  loss = losses.HeatmapLoss(32, sigma_cells=1.5)
  centres = (np.arange(4) + 0.5) * 8 - 0.5
  expected = []
  for b in range(2):
    per_point = []
    for c in range(3):
      d2 = (centres[None, :] - points[b, c, 0]) ** 2 + (centres[:, None] - points[b, c, 1]) ** 2
      target = np.exp(-d2 / (2 * 12.0**2))  # sigma: 1.5 cells of 8 px
      target /= target.sum()
      z = logits[b, ..., c]
      log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
      per_point.append(-(target * log_p).sum())
    expected.append(np.mean(per_point))
  per_example = np.asarray(loss.call(points, logits))
  np.testing.assert_allclose(per_example, expected, rtol=1e-5)
  # A map peaked where the point is beats a map peaked elsewhere.
  peaked = np.full((1, 4, 4, 1), -5.0, np.float32)
  peaked[0, 1, 2, 0] = 5.0
  at_peak = np.array([[[2 * 8 + 3.5, 1 * 8 + 3.5]]], np.float32)
  elsewhere = np.array([[[3.5, 27.5]]], np.float32)
  sharp = losses.HeatmapLoss(32)
  assert float(sharp(at_peak, peaked)) < float(sharp(elsewhere, peaked)) - 1


def test_unknown_loss_is_refused():
  with pytest.raises(ValueError, match="^loss_fn='giou': must be one of mse, iou$"):
    losses.box_loss("giou")
