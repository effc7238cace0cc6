"""Training frames from records, a stage run that is killed and resumed from its checkpoint, and
two stages trained side by side."""

from __future__ import annotations

import json
import threading

import keras
import numpy as np
import pytest

from tests.keras_callbacks import KillAtEpoch, Killed, Record
from tfpets.landmarks import augment, data, train, verifier
from tfpets.landmarks import model as model_lib
from tfpets.runtime import training

CONFIG = model_lib.DetectorConfig(image_size=32, roi_size=32, units=16)


@pytest.mark.parametrize("stage", data.STAGES)
def test_frames_hold_targets_inside_the_frame(tiny_shards, stage):
  spec = data.FrameSpec(stage, 48, 9)
  assert data.count_usable(tiny_shards, "train", spec) == 12
  options = augment.AugmentOptions(flip_horizontal=True, rotate_n=20, head_negative_fraction=0.2)
  frames, targets, *weights = next(
    iter(data.frames(tiny_shards, "train", spec, batch_size=8, training=True, options=options))
  )
  assert frames.shape == (8, 48, 48, 3) and frames.dtype == "float32"
  assert -1e-3 <= float(np.min(frames)) and float(np.max(frames)) <= 255.0 + 1e-3
  box = targets["box"].numpy()
  if stage == "bbox":
    heads = weights[0]["box"].numpy() > 0
    assert np.array_equal(heads, targets["head"].numpy()[:, 0] > 0)
    box = box[heads]
  else:
    assert targets["landmarks"].shape == (8, 9, 2)
    # The ROI is the box grown by 0..0.2 of its longer side per side: the box stays inside.
    assert np.all(box > -1) and np.all(box < 48)
  assert np.all(box[:, 2:] > box[:, :2])


def test_training_datasets_have_no_autotune_thread(tiny_shards):
  """Destroying an iterator waits for tf.data's autotuning thread to wake (up to a minute), which
  delayed the end of Keras `fit`; the stages' and the verifier's datasets run without it."""
  spec = data.FrameSpec("landmarks", 32, 9)
  for is_training in (True, False):
    ds = data.frames(tiny_shards, "train", spec, batch_size=4, training=is_training)
    assert ds.options().autotune.enabled is False
  x, y = np.zeros((6, 16, 16, 3), np.uint8), np.linspace(0, 1, 6).astype(np.float32)
  assert verifier._dataset(x, y, 2, 0, True).options().autotune.enabled is False


@pytest.mark.slow
def test_killed_stage_resumes_from_its_last_epoch(tiny_shards, tmp_path):
  paths = train.RunPaths(tmp_path / "checkpoints", tmp_path / "models", tmp_path / "logs")
  options = train.TrainOptions(
    epochs=3,
    steps_per_epoch=1,
    batch_size=4,
    plateau_patience=1,
    learning_rate=0.01,
    batch_norm_batches=2,
  )
  run = lambda callbacks: train.train_stage(
    "landmarks", CONFIG, tiny_shards, paths, augment.EVAL, options, extra_callbacks=callbacks
  )
  kill = KillAtEpoch(2)
  with pytest.raises(Killed):
    run([kill])
  state = json.loads((paths.checkpoints / "landmarks" / training.STATE_FILE).read_text())
  assert state["epoch"] == 2 and not state.get("done")

  record = Record()
  _, summary = run([record])
  assert record.epochs == [2]  # only the epoch the kill prevented
  assert record.start_iterations == 2  # the optimizer state came back too
  for restored, saved in zip(record.start_weights, kill.weights_before_kill):
    np.testing.assert_array_equal(restored, saved)
  assert summary["epochs_run"] == 3
  assert (paths.models / "landmarks.keras").is_file()

  again = Record()
  model, _ = run([again])  # done: the saved model is loaded, nothing trains
  assert again.epochs == [] and model.name == "landmarks_detector"


class _SignalAtEpochEnd(keras.callbacks.Callback):
  def __init__(self, event: threading.Event):
    super().__init__()
    self.event = event

  def on_epoch_end(self, epoch, logs=None):
    self.event.set()


def _stage_job(stage, tiny_shards, paths, epochs, more_callbacks=()):
  options = train.TrainOptions(
    epochs=epochs,
    steps_per_epoch=1,
    batch_size=4,
    plateau_patience=1,
    learning_rate=0.01,
    batch_norm_batches=1,
  )
  return lambda callbacks: train.train_stage(
    stage,
    CONFIG,
    tiny_shards,
    paths,
    augment.EVAL,
    options,
    extra_callbacks=[*callbacks, *more_callbacks],
  )


def test_stages_trained_concurrently_each_finish_and_save(tiny_shards, tmp_path):
  paths = train.RunPaths(tmp_path / "checkpoints", tmp_path / "models", tmp_path / "logs")
  (bbox, bbox_summary), (landmarks, landmarks_summary) = training.train_concurrently(
    _stage_job("bbox", tiny_shards, paths, 2), _stage_job("landmarks", tiny_shards, paths, 2)
  )
  assert (bbox.name, landmarks.name) == ("bbox_detector", "landmarks_detector")
  assert bbox_summary["epochs_run"] == landmarks_summary["epochs_run"] == 2
  for stage in ("bbox", "landmarks"):
    assert training.read_state(paths.checkpoints / stage)["done"]
    assert (paths.models / f"{stage}.keras").is_file()


def test_a_failed_stage_cancels_the_concurrent_one_which_stays_resumable(tiny_shards, tmp_path):
  paths = train.RunPaths(tmp_path / "checkpoints", tmp_path / "models", tmp_path / "logs")
  first_epoch_saved = threading.Event()

  def broken_stage(callbacks):
    assert first_epoch_saved.wait(timeout=300)
    raise ValueError("broken records")

  landmarks = _stage_job(
    "landmarks", tiny_shards, paths, 1000, [_SignalAtEpochEnd(first_epoch_saved)]
  )
  with pytest.raises(ValueError, match="broken records"):
    training.train_concurrently(broken_stage, landmarks)
  state = training.read_state(paths.checkpoints / "landmarks")
  assert 1 <= state["epoch"] < 1000 and not state.get("done")
  assert not (paths.models / "landmarks.keras").exists()
