"""Stage-1 candidates and the head verifier: the candidates are the strongest local maxima of the
centre heatmap, the verifier's examples are labelled by their overlap with the true head, the
pipeline keeps the candidate the verifier prefers, and a trained verifier is saved and reloaded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfpets.errors import UsageError
from tfpets.landmarks import evaluate
from tfpets.landmarks import model as model_lib
from tfpets.landmarks import predict
from tfpets.landmarks import verifier

from .handmade import draw_head, handmade_models


def _local_maxima_numpy(logits: np.ndarray, count: int):
  """(row, col) of the `count` largest values that no 8-neighbour exceeds, largest first."""
  rows, cols = logits.shape
  found = []
  for r in range(rows):
    for c in range(cols):
      window = logits[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2]
      if logits[r, c] >= window.max():
        found.append((logits[r, c], r, c))
  return [(r, c) for _, r, c in sorted(found, reverse=True)[:count]]


def test_candidates_are_own_box_then_strongest_local_maxima():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  own = np.array([[10, 12, 30, 40], [0, 5, 16, 9]], np.float32)
  count, frame = 4, 64
  got = predict.candidate_boxes({"box": tf.constant(own), "centre_map": tf.constant(logits)},
                                count, frame).numpy()
  assert got.shape == (2, count, 4)
  np.testing.assert_array_equal(got[:, 0], own)
  stride = frame / 8
  for n in range(2):
    half = (own[n, 2:] - own[n, :2]) / 2
    for k, (r, c) in enumerate(_local_maxima_numpy(logits[n, ..., 0], count - 1)):
      centre = np.array([(c + 0.5) * stride - 0.5, (r + 0.5) * stride - 0.5])
      np.testing.assert_allclose(got[n, k + 1], np.concatenate([centre - half, centre + half]),
                                 atol=1e-5)


def test_select_takes_each_images_best_candidate():
  values = np.arange(12, dtype=np.float32).reshape(6, 2)  # 2 images x 3 candidates
  scores = np.array([0.1, 0.9, 0.3, 2.0, -1.0, 1.5], np.float32)
  got = predict.select({"v": tf.constant(values)}, tf.constant(scores), 3)["v"].numpy()
  np.testing.assert_array_equal(got, values[[1, 3]])


def test_candidate_scores_add_the_logits_and_charge_the_last_pass_drift():
  rng = np.random.default_rng(5)
  first, last = rng.normal(size=(2, 6)).astype(np.float32)
  box = np.array([[10, 10, 30, 40]] * 6, np.float32) + rng.uniform(0, 5, (6, 4)).astype(np.float32)
  previous = box + rng.normal(0, 3, (6, 4)).astype(np.float32)
  previous[0] = box[0]  # a settled cascade costs nothing
  got = predict.candidate_scores(*map(tf.constant, (first, last, previous, box))).numpy()
  drift = np.abs(box - previous).sum(1) / (box[:, 2] - box[:, 0])
  np.testing.assert_allclose(got, first + last - predict.DRIFT_WEIGHT * drift, rtol=1e-5)
  assert got[0] == pytest.approx(first[0] + last[0])


def test_example_boxes_are_labelled_by_overlap_with_the_head():
  truth = np.array([40, 30, 70, 60], np.float32)
  candidates = np.array([truth + 1,                 # the head: positive
                         truth + [15, 0, 15, 0],    # IoU 1/3: ambiguous, left out
                         [2, 2, 32, 32]],           # background: negative
                        np.float32)
  rng = np.random.default_rng(0)
  for _ in range(20):
    boxes, labels = verifier.example_boxes(truth, candidates, 128, 128, rng)
    iou = evaluate.box_iou(boxes, truth)
    assert np.all(iou[labels == 1] >= verifier.POSITIVE_IOU)
    assert np.all(iou[labels == 0] <= verifier.NEGATIVE_IOU)
    # Two jittered heads, the first and last candidate, up to three more backgrounds.
    assert labels[:3].tolist() == [1, 1, 1] and labels[3] == 0
    np.testing.assert_array_equal(boxes[2:4], candidates[[0, 2]])
    assert 4 <= len(labels) <= 7


def _bright_square_verifier(frames):
  """Scores a frame by its share of bright pixels: a head in the hand-made world."""
  bright = tf.cast(tf.reduce_max(frames, axis=-1) > 128, tf.float32)
  return {"head": tf.reduce_mean(bright, axis=[1, 2])[:, None] * 10 - 1}


def _decoy_stage_one(frames):
  """Stage-1 outputs whose own box and strongest peak sit on background (cell 1, 1) and whose
  second peak is at cell (5, 5), where the test draws the head."""
  n = tf.shape(frames)[0]
  logits = np.full((1, 8, 8, 1), -5.0, np.float32)
  logits[0, 1, 1, 0], logits[0, 5, 5, 0] = 3.0, 2.0
  return {"box": tf.tile(tf.constant([[6.5, 6.5, 16.5, 16.5]]), [n, 1]),
          "centre_map": tf.tile(tf.constant(logits), [n, 1, 1, 1]),
          "head": tf.fill([n, 1], 10.0)}


def test_pipeline_keeps_the_candidate_the_verifier_prefers():
  config = model_lib.DetectorConfig(image_size=64, roi_size=64, roi_margin=0.15,
                                    roi_candidates=3, verifier_size=16)
  head = (39, 39, 48, 48)  # around cell (5, 5)'s centre, 43.5
  image = draw_head(64, 64, head, np.array([[41.0, 42], [46, 42], [43.5, 46]]))
  _, landmarks_model = handmade_models(config)
  landmarks_fn = predict.keras_stage(landmarks_model)
  chosen = predict.Detector(config, _decoy_stage_one, landmarks_fn,
                            _bright_square_verifier).detect(image)
  np.testing.assert_allclose(chosen.stage1_box, [38.5, 38.5, 48.5, 48.5], atol=1e-4)
  np.testing.assert_allclose(chosen.box, head, atol=1.2)
  # Stage 1's own box alone stays on the background.
  alone = predict.Detector(dataclasses.replace(config, roi_candidates=1), _decoy_stage_one,
                           landmarks_fn).detect(image)
  assert evaluate.box_iou(alone.box, np.array(head, np.float32)) < 0.1


def test_candidates_without_a_verifier_are_refused():
  config = model_lib.DetectorConfig(image_size=64, roi_size=64, roi_candidates=2)
  detector = predict.Detector(config, _decoy_stage_one, _bright_square_verifier)
  with pytest.raises(UsageError, match="roi_candidates=2 needs the head verifier"):
    detector.detect(np.zeros((64, 64, 3), np.uint8))


def test_candidates_need_the_heatmap_head():
  with pytest.raises(UsageError, match="--lm_head=heatmap"):
    model_lib.DetectorConfig(head="dense", roi_candidates=3)


@pytest.mark.slow
def test_trained_verifier_is_saved_and_reloaded(tiny_shards, tmp_path):
  config = model_lib.DetectorConfig(image_size=32, roi_size=32, roi_candidates=3,
                                    verifier_size=16)
  bbox_fn = predict.keras_stage(model_lib.build_model("bbox", config))
  train = evaluate.collect(tiny_shards, "train", 9)
  val = evaluate.collect(tiny_shards, "val", 9)
  args = (config, train, val, bbox_fn, tmp_path / "models", tmp_path / "checkpoints")
  model, summary = verifier.train_verifier(*args, seconds=3, batch_size=16, steps_per_epoch=2)
  # Each training image gives two jittered heads and up to 3 + 3 more ROIs.
  assert 2 * len(train) <= summary["training_rois"] <= 8 * len(train)
  assert 0.0 <= summary["val_accuracy"] <= 1.0
  assert (tmp_path / "models" / model_lib.MODEL_FILES["verifier"]).is_file()

  again, summary_again = verifier.train_verifier(*args, seconds=3)
  assert summary_again == summary
  frames = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(again(frames)["head"], model(frames)["head"], atol=1e-5)
