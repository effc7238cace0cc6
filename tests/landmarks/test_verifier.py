"""Stage-1 candidates and the head verifier: the candidates are the strongest local maxima of the
centre heatmap and stage 1's box rescaled, the verifier's examples are labelled with the quality of
their overlap with the true head, the pipeline keeps the candidate the verifier prefers, and a
trained verifier is saved and reloaded."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tfpets.landmarks import evaluate, predict, verifier
from tfpets.landmarks import model as model_lib

from .handmade import draw_head, handmade_models


def _local_maxima_numpy(logits: np.ndarray, count: int):
  """(row, col) of the `count` largest values that no 8-neighbour exceeds, largest first."""
  rows, cols = logits.shape
  found = []
  for r in range(rows):
    for c in range(cols):
      window = logits[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
      if logits[r, c] >= window.max():
        found.append((logits[r, c], r, c))
  return [(r, c) for _, r, c in sorted(found, reverse=True)[:count]]


def test_candidates_are_own_box_then_strongest_local_maxima_then_rescaled_boxes():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  own = np.array([[10, 12, 30, 40], [0, 5, 16, 9]], np.float32)
  count, frame, scales = 4, 64, (0.7, 1.5)
  config = model_lib.DetectorConfig(
    image_size=frame, roi_size=frame, roi_candidates=count, roi_candidate_scales=scales
  )
  got = predict.candidate_boxes(
    {"box": tf.constant(own), "centre_map": tf.constant(logits)}, config
  ).numpy()
  assert got.shape == (2, count + len(scales), 4)
  np.testing.assert_array_equal(got[:, 0], own)
  stride = frame / 8
  for n in range(2):
    half = (own[n, 2:] - own[n, :2]) / 2
    for k, (r, c) in enumerate(_local_maxima_numpy(logits[n, ..., 0], count - 1)):
      centre = np.array([(c + 0.5) * stride - 0.5, (r + 0.5) * stride - 0.5])
      np.testing.assert_allclose(
        got[n, k + 1], np.concatenate([centre - half, centre + half]), atol=1e-5
      )
    middle = (own[n, :2] + own[n, 2:]) / 2
    for k, scale in enumerate(scales):
      np.testing.assert_allclose(
        got[n, count + k], np.concatenate([middle - scale * half, middle + scale * half]), atol=1e-5
      )


def test_select_takes_each_images_best_candidate():
  values = np.arange(12, dtype=np.float32).reshape(6, 2)  # 2 images x 3 candidates
  scores = np.array([0.1, 0.9, 0.3, 2.0, -1.0, 1.5], np.float32)
  got = predict.select({"v": tf.constant(values)}, tf.constant(scores), 3)["v"].numpy()
  np.testing.assert_array_equal(got, values[[1, 3]])


def test_example_boxes_are_labelled_with_the_quality_of_their_overlap():
  truth = np.array([40, 30, 70, 60], np.float32)
  candidates = np.array(
    [
      truth + 1,  # the head
      truth + [15, 0, 15, 0],  # IoU 1/3: barely above quality 0
      [2, 2, 32, 32],
    ],  # background
    np.float32,
  )
  rng = np.random.default_rng(0)
  jittered = verifier.JITTERED_BOXES
  for _ in range(20):
    boxes, labels = verifier.example_boxes(truth, candidates, 128, 128, rng)
    assert jittered + 3 <= len(labels) <= jittered + 6
    # Jittered heads: centre within JITTER_SHIFT sizes, side within exp(+-JITTER_SCALE).
    shift = ((boxes[:jittered, :2] + boxes[:jittered, 2:]) / 2 - [55, 45]) / 30
    assert np.all(np.abs(shift) <= verifier.JITTER_SHIFT + 1e-5)
    ratio = (boxes[:jittered, 2:] - boxes[:jittered, :2]) / 30
    assert np.all(np.abs(np.log(ratio)) <= verifier.JITTER_SCALE + 1e-5)
    np.testing.assert_array_equal(boxes[jittered : jittered + 3], candidates)
    # The label: IoU 0.3 -> 0, 0.9 -> 1, linear between (numpy IoU written out here).
    low = np.maximum(boxes[:, :2], truth[:2])
    high = np.minimum(boxes[:, 2:], truth[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    union = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) + 900 - inter
    np.testing.assert_allclose(labels, np.clip((inter / union - 0.3) / 0.6, 0, 1), atol=1e-5)
    assert labels[jittered + 1] == pytest.approx((1 / 3 - 0.3) / 0.6, abs=1e-5)
    # Boxes beside the head and elsewhere miss it.
    assert np.all(inter[jittered + 3 :] / union[jittered + 3 :] <= verifier.NEGATIVE_IOU)
    assert np.all(labels[jittered + 2 :] == 0)


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
  return {
    "box": tf.tile(tf.constant([[6.5, 6.5, 16.5, 16.5]]), [n, 1]),
    "centre_map": tf.tile(tf.constant(logits), [n, 1, 1, 1]),
    "head": tf.fill([n, 1], 10.0),
  }


def test_pipeline_keeps_the_candidate_the_verifier_prefers():
  config = model_lib.DetectorConfig(
    image_size=64, roi_size=64, roi_margin=0.15, roi_candidates=3, verifier_size=16
  )
  head = (39, 39, 48, 48)  # around cell (5, 5)'s centre, 43.5
  image = draw_head(64, 64, head, np.array([[41.0, 42], [46, 42], [43.5, 46]]))
  _, landmarks_model = handmade_models(config)
  landmarks_fn = predict.keras_stage(landmarks_model)
  chosen = predict.Detector(config, _decoy_stage_one, landmarks_fn, _bright_square_verifier).detect(
    image
  )
  np.testing.assert_allclose(chosen.stage1_box, [38.5, 38.5, 48.5, 48.5], atol=1e-4)
  np.testing.assert_allclose(chosen.box, head, atol=1.2)
  # Stage 1's own box alone stays on the background.
  alone = predict.Detector(
    dataclasses.replace(config, roi_candidates=1), _decoy_stage_one, landmarks_fn
  ).detect(image)
  assert evaluate.box_iou(alone.box, np.array(head, np.float32)) < 0.1


@pytest.mark.parametrize("candidates, scales", [(2, ()), (1, (0.7,))])
def test_candidates_without_a_verifier_are_refused(candidates, scales):
  config = model_lib.DetectorConfig(
    image_size=64, roi_size=64, roi_candidates=candidates, roi_candidate_scales=scales
  )
  assert model_lib.stages_of(config) == ("bbox", "landmarks", "verifier")
  detector = predict.Detector(config, _decoy_stage_one, _bright_square_verifier)
  with pytest.raises(ValueError, match="verifier_fn is required: 2 candidates .* need the head"):
    detector.detect(np.zeros((64, 64, 3), np.uint8))


def test_candidates_need_the_heatmap_head():
  with pytest.raises(
    ValueError, match="^roi_candidates=3: more than one candidate needs head 'heatm"
  ):
    model_lib.DetectorConfig(head="dense", roi_candidates=3)


@pytest.mark.slow
def test_trained_verifier_is_saved_and_reloaded(tiny_shards, tmp_path):
  config = model_lib.DetectorConfig(image_size=32, roi_size=32, roi_candidates=3, verifier_size=16)
  bbox_fn = predict.keras_stage(model_lib.build_model("bbox", config))
  train = evaluate.collect(tiny_shards, "train", 9)
  val = evaluate.collect(tiny_shards, "val", 9)
  args = (config, train, val, bbox_fn, tmp_path / "models", tmp_path / "checkpoints")
  model, summary = verifier.train_verifier(*args, seconds=3, batch_size=16, steps_per_epoch=2)
  # Each training image gives the jittered heads, its 3 candidates and up to 3 more ROIs.
  per_image = verifier.JITTERED_BOXES + 3
  assert per_image * len(train) <= summary["training_rois"] <= (per_image + 3) * len(train)
  assert 0.0 <= summary["val_quality_mae"] <= 1.0
  assert (tmp_path / "models" / model_lib.MODEL_FILES["verifier"]).is_file()

  again, summary_again = verifier.train_verifier(*args, seconds=3)
  assert summary_again == summary
  frames = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
  np.testing.assert_allclose(again(frames)["head"], model(frames)["head"], atol=1e-5)
