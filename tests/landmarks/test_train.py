"""Training frames from records, and a stage run that is killed and resumed from its checkpoint."""

from __future__ import annotations

import json
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpets.landmarks import augment, data, train, verifier
from tfpets.landmarks import model as model_lib

CONFIG = model_lib.DetectorConfig(image_size=32, roi_size=32, units=16)


@pytest.mark.parametrize("stage", data.STAGES)
def test_frames_hold_targets_inside_the_frame(tiny_shards, stage):
  spec = data.FrameSpec(stage, 48, 9)
  assert data.count_usable(tiny_shards, "train", spec) == 12
  options = augment.AugmentOptions(flip_horizontal=True, rotate_n=20, negative_fraction=0.2)
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


class _Killed(Exception):
  pass


class _KillAtEpoch(keras.callbacks.Callback):
  """Stands for a kill: the run dies as `epoch` begins, after the previous epoch was saved."""

  def __init__(self, epoch: int):
    super().__init__()
    self.epoch = epoch
    self.weights_before_kill = None

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self.epoch:
      self.weights_before_kill = [w.copy() for w in self.model.get_weights()]
      raise _Killed()


class _Record(keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.epochs, self.start_weights, self.start_iterations = [], None, None

  def on_train_begin(self, logs=None):
    self.start_weights = [w.copy() for w in self.model.get_weights()]
    self.start_iterations = int(self.model.optimizer.iterations.numpy())

  def on_epoch_begin(self, epoch, logs=None):
    self.epochs.append(epoch)


def test_training_datasets_have_no_autotune_thread(tiny_shards):
  """Destroying an iterator waits for tf.data's autotuning thread to wake (up to a minute), which
  delayed the end of Keras `fit`; the stages' and the verifier's datasets run without it."""
  spec = data.FrameSpec("landmarks", 32, 9)
  for training in (True, False):
    ds = data.frames(tiny_shards, "train", spec, batch_size=4, training=training)
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
  kill = _KillAtEpoch(2)
  with pytest.raises(_Killed):
    run([kill])
  state = json.loads((paths.checkpoints / "landmarks" / train.STATE_FILE).read_text())
  assert state["epoch"] == 2 and not state.get("done")

  record = _Record()
  _, summary = run([record])
  assert record.epochs == [2]  # only the epoch the kill prevented
  assert record.start_iterations == 2  # the optimizer state came back too
  for restored, saved in zip(record.start_weights, kill.weights_before_kill):
    np.testing.assert_array_equal(restored, saved)
  assert summary["epochs_run"] == 3
  assert (paths.models / "landmarks.keras").is_file()

  again = _Record()
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
  (bbox, bbox_summary), (landmarks, landmarks_summary) = train.train_concurrently(
    _stage_job("bbox", tiny_shards, paths, 2), _stage_job("landmarks", tiny_shards, paths, 2)
  )
  assert (bbox.name, landmarks.name) == ("bbox_detector", "landmarks_detector")
  assert bbox_summary["epochs_run"] == landmarks_summary["epochs_run"] == 2
  for stage in ("bbox", "landmarks"):
    assert train.read_state(paths.checkpoints / stage)["done"]
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
    train.train_concurrently(broken_stage, landmarks)
  state = train.read_state(paths.checkpoints / "landmarks")
  assert 1 <= state["epoch"] < 1000 and not state.get("done")
  assert not (paths.models / "landmarks.keras").exists()


def test_recomputed_batch_norm_statistics_are_the_batches_statistics():
  """After recomputing on copies of one batch, inference mode normalises that batch exactly as
  training mode does (the moving statistics are that batch's statistics)."""
  model = model_lib.build_model("landmarks", CONFIG)
  frames = np.random.default_rng(0).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
  before = model(frames, training=False)["landmarks"].numpy()
  batches = tf.data.Dataset.from_tensors((frames, {})).repeat(3)
  train.recompute_batch_norm(model, batches, 3)
  expected = model(frames, training=True)["landmarks"].numpy()
  after = model(frames, training=False)["landmarks"].numpy()
  np.testing.assert_allclose(after, expected, atol=1e-3)
  assert np.abs(before - expected).max() > 1e-2  # it did change something
  assert all(layer.momentum == model_lib.BN_MOMENTUM for layer in train._batch_norm_layers(model))


def test_recomputed_batch_norm_statistics_average_the_batches():
  """The moving statistics become the plain mean of the batches' means and (biased) variances."""
  model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9)])
  rng = np.random.default_rng(1)
  batches = [
    rng.normal(loc, scale, (8, 3)).astype(np.float32)
    for loc, scale in ((0.0, 1.0), (5.0, 2.0), (-3.0, 0.5))
  ]
  train.recompute_batch_norm(
    model, tf.data.Dataset.from_tensor_slices((np.stack(batches), np.zeros(3))), 3
  )
  layer = model.layers[0]
  np.testing.assert_allclose(
    layer.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], 0), rtol=1e-5
  )
  np.testing.assert_allclose(
    layer.moving_variance.numpy(), np.mean([b.var(0) for b in batches], 0), rtol=1e-5
  )
  assert layer.momentum == 0.9


class _SlowEpochs(keras.callbacks.Callback):
  """Makes every epoch last at least `seconds` (the first at least `first` if given)."""

  def __init__(self, seconds: float, first: float = 0.0):
    super().__init__()
    self.seconds, self.first = seconds, first

  def on_epoch_end(self, epoch, logs=None):
    time.sleep(self.first if epoch == 0 and self.first else self.seconds)


def test_time_budget_stops_before_an_epoch_that_would_overrun():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile("sgd", "mse")
  x = np.zeros((4, 2), np.float32)
  budget = train.TimeBudget(seconds=1.0)
  # The sleep runs before the budget's own epoch end (list order), as a slow epoch would.
  history = model.fit(x, x[:, :1], epochs=50, verbose=0, callbacks=[_SlowEpochs(0.4), budget])
  epochs = len(history.history["loss"])
  # Each epoch lasts >= 0.4 s, so the budget allows at most 2 (a third would end past 1 s).
  assert 1 <= epochs <= 2
  assert budget.stopped_epoch == epochs


def test_time_budget_does_not_judge_later_epochs_by_a_slow_first_one():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile("sgd", "mse")
  x = np.zeros((4, 2), np.float32)
  budget = train.TimeBudget(seconds=4.0)
  start = time.monotonic()
  history = model.fit(
    x, x[:, :1], epochs=200, verbose=0, callbacks=[_SlowEpochs(0.1, first=1.0), budget]
  )
  used = time.monotonic() - start
  # Expecting every epoch to last as long as the first (>= 1 s) would stop with over 1 s unused;
  # judged by the 0.1 s epochs, the run ends within about one of them of the budget.
  assert used > 4.0 - 0.6
  assert len(history.history["loss"]) >= 3
  assert budget.stopped_epoch == len(history.history["loss"])


def test_time_budget_drops_the_learning_rate_once_after_its_anneal_point():
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(keras.optimizers.SGD(0.5), "mse")
  x = np.zeros((4, 2), np.float32)
  budget = train.TimeBudget(seconds=1.2, anneal_at=0.3)
  model.fit(x, x[:, :1], epochs=50, verbose=0, callbacks=[_SlowEpochs(0.2), budget])
  # Each epoch lasts >= 0.2 s: 0.36 s (0.3 x 1.2) have passed by the end of epoch 2 at the latest.
  assert budget.annealed_epoch is not None and budget.annealed_epoch <= 2
  assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
