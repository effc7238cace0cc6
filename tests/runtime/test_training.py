"""The shared training helpers: deadlines, the time budget, best weights, resumable state, two
trainings side by side and recomputed BatchNorm statistics."""

from __future__ import annotations

import json
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpets.runtime import training
from tfpets.runtime.checkpoint import CheckpointHelper


def _dense_model(learning_rate: float = 0.1) -> keras.Model:
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(keras.optimizers.SGD(learning_rate), "mse")
  return model


def test_seconds_until_a_deadline_keep_the_finishing_time_and_at_least_one():
  left = training.seconds_until(time.time() + 100.0, finish_seconds=8.0)
  assert 91.0 < left <= 92.0
  assert training.seconds_until(time.time() + 100.0) <= 100.0 - training.FINISH_SECONDS
  assert training.seconds_until(time.time() - 50.0) == 1.0


def test_state_round_trips_and_a_finished_training_keeps_its_other_state(tmp_path):
  directory = tmp_path / "stage"
  assert training.read_state(directory) == {}
  assert training.finished_summary(directory) is None
  training.write_state(directory, {"epoch": 3, "best": {"best": 0.5}})
  assert training.read_state(directory) == {"epoch": 3, "best": {"best": 0.5}}
  assert training.finished_summary(directory) is None
  training.mark_done(directory, {"epochs_run": 3})
  assert training.finished_summary(directory) == {"epochs_run": 3}
  state = json.loads((directory / training.STATE_FILE).read_text())
  assert state == {"epoch": 3, "best": {"best": 0.5}, "done": True, "summary": {"epochs_run": 3}}
  assert sorted(p.name for p in directory.iterdir()) == [training.STATE_FILE]  # no temporary left


def test_best_weights_keeps_the_best_epoch_in_its_mode(tmp_path):
  model = _dense_model()
  best = training.BestWeights(tmp_path / "best.weights.h5", "val_loss", "min")
  best.set_model(model)
  kernels = {}
  for epoch, value in enumerate([3.0, 1.0, float("nan"), 2.0]):
    model.layers[0].kernel.assign(np.full((2, 1), epoch, np.float32))
    kernels[epoch] = model.layers[0].kernel.numpy()
    best.on_epoch_end(epoch, {"val_loss": value})
  assert (best.best, best.best_epoch) == (1.0, 1)
  model.load_weights(str(best.path))
  np.testing.assert_array_equal(model.layers[0].kernel.numpy(), kernels[1])
  with pytest.raises(ValueError, match="^mode must be 'max' or 'min', got 'up'$"):
    training.BestWeights(tmp_path / "x.weights.h5", "val_loss", "up")


class _StopAt(keras.callbacks.Callback):
  """Stands for a kill: training ends after `epoch` epochs, after they were saved."""

  def __init__(self, epoch: int):
    super().__init__()
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch + 1 == self.epoch:
      self.model.stop_training = True


def _resumable(model, directory):
  """Fresh schedule, early stopping and best-weights callbacks with the state that resumes them."""
  plateau = keras.callbacks.ReduceLROnPlateau("loss", patience=1, factor=0.5)
  early = keras.callbacks.EarlyStopping("loss", patience=50)
  best = training.BestWeights(directory / training.BEST_WEIGHTS_FILE, "loss", "min")
  helper = CheckpointHelper(directory, max_to_keep=2, model=model, optimizer=model.optimizer)
  resume = training.ResumeState(
    helper, directory, {"plateau": plateau, "early": early, "best": best}
  )
  return helper, [plateau, early, best, resume], best


def test_resume_state_restores_the_callbacks_counters_and_the_epoch(tmp_path):
  x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
  y = x @ np.array([[1.0], [-2.0]], np.float32)
  model = _dense_model()
  model.build((None, 2))
  model.optimizer.build(model.trainable_variables)
  helper, callbacks, best = _resumable(model, tmp_path)
  model.fit(x, y, epochs=10, verbose=0, callbacks=[*callbacks, _StopAt(3)])
  state = training.read_state(tmp_path)
  assert state["epoch"] == 3 and helper.latest.endswith("-3")
  assert state["best"] == {"best": best.best, "best_epoch": best.best_epoch}
  plateau, early = callbacks[:2]
  assert state["plateau"]["best"] == pytest.approx(plateau.best)
  assert state["early"]["wait"] == early.wait

  assert np.isfinite(plateau.best) and np.isfinite(early.best)

  restored = _dense_model()
  restored.build((None, 2))
  restored.optimizer.build(restored.trainable_variables)
  helper, callbacks, best_again = _resumable(restored, tmp_path)
  assert helper.restore_or_initialize() == 3
  np.testing.assert_array_equal(restored.get_weights()[0], model.get_weights()[0])
  # No epoch left to run: `fit` only begins and ends, so the callbacks reset and are restored.
  restored.fit(x, y, initial_epoch=3, epochs=3, verbose=0, callbacks=callbacks)
  assert (best_again.best, best_again.best_epoch) == (best.best, best.best_epoch)
  assert callbacks[0].best == pytest.approx(plateau.best)
  assert (callbacks[1].best, callbacks[1].wait) == (pytest.approx(early.best), early.wait)
  with pytest.raises(ValueError, match="no resumable counters known for TimeBudget"):
    training.ResumeState(helper, tmp_path, {"budget": training.TimeBudget(1.0)})


class _SlowEpochs(keras.callbacks.Callback):
  """Makes every epoch last at least `seconds` (the first at least `first` if given)."""

  def __init__(self, seconds: float, first: float = 0.0):
    super().__init__()
    self.seconds, self.first = seconds, first

  def on_epoch_end(self, epoch, logs=None):
    time.sleep(self.first if epoch == 0 and self.first else self.seconds)


def test_time_budget_stops_before_an_epoch_that_would_overrun():
  model = _dense_model()
  x = np.zeros((4, 2), np.float32)
  budget = training.TimeBudget(seconds=1.0)
  # The sleep runs before the budget's own epoch end (list order), as a slow epoch would.
  history = model.fit(x, x[:, :1], epochs=50, verbose=0, callbacks=[_SlowEpochs(0.4), budget])
  epochs = len(history.history["loss"])
  # Each epoch lasts >= 0.4 s, so the budget allows at most 2 (a third would end past 1 s).
  assert 1 <= epochs <= 2
  assert budget.stopped_epoch == epochs


def test_time_budget_does_not_judge_later_epochs_by_a_slow_first_one():
  model = _dense_model()
  x = np.zeros((4, 2), np.float32)
  budget = training.TimeBudget(seconds=4.0)
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
  model = _dense_model(learning_rate=0.5)
  x = np.zeros((4, 2), np.float32)
  budget = training.TimeBudget(seconds=1.2, anneal_at=0.3)
  model.fit(x, x[:, :1], epochs=50, verbose=0, callbacks=[_SlowEpochs(0.2), budget])
  # Each epoch lasts >= 0.2 s: 0.36 s (0.3 x 1.2) have passed by the end of epoch 2 at the latest.
  assert budget.annealed_epoch is not None and budget.annealed_epoch <= 2
  assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)


class _SignalAtEpochEnd(keras.callbacks.Callback):
  def __init__(self, event: threading.Event):
    super().__init__()
    self.event = event

  def on_epoch_end(self, epoch, logs=None):
    self.event.set()


def _fit_job(epochs: int, more_callbacks=()):
  """A training of `epochs` epochs that returns its epoch count, as a train_concurrently job."""

  def job(callbacks):
    model = _dense_model()
    x = np.ones((4, 2), np.float32)
    history = model.fit(
      x, x[:, :1], epochs=epochs, verbose=0, callbacks=[*callbacks, *more_callbacks]
    )
    return len(history.epoch)

  return job


def test_concurrent_trainings_return_their_results_in_order():
  assert training.train_concurrently(_fit_job(2), _fit_job(5)) == [2, 5]


def test_a_failed_training_cancels_the_one_beside_it_and_is_raised():
  first_epoch_done = threading.Event()
  outcome = {}

  def broken(callbacks):
    assert first_epoch_done.wait(timeout=300)
    raise RuntimeError("broken input")

  long_job = _fit_job(100_000, [_SignalAtEpochEnd(first_epoch_done)])

  def watched(callbacks):
    try:
      return long_job(callbacks)
    except training.StageCancelled as e:
      outcome["cancelled"] = e
      raise

  with pytest.raises(RuntimeError, match="broken input"):
    training.train_concurrently(broken, watched)
  assert isinstance(outcome.get("cancelled"), training.StageCancelled)


def _conv_model_with_nested_batch_norm() -> keras.Model:
  inner = keras.Sequential(
    [keras.Input((8, 8, 4)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()],
    name="inner",
  )
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 1)(inputs)
  x = keras.layers.BatchNormalization(momentum=0.9)(x)
  outputs = keras.layers.GlobalAveragePooling2D()(inner(x))
  return keras.Model(inputs, outputs)


def test_recomputed_batch_norm_statistics_are_the_batches_statistics():
  """After recomputing on copies of one batch, inference mode normalises that batch exactly as
  training mode does, in nested models too, and the momenta are back as they were."""
  model = _conv_model_with_nested_batch_norm()
  layers = list(training.batch_norm_layers(model))
  assert len(layers) == 2
  momenta = [layer.momentum for layer in layers]
  frames = np.random.default_rng(0).uniform(0, 255, (6, 8, 8, 3)).astype(np.float32)
  before = model(frames, training=False).numpy()
  training.recompute_batch_norm(model, tf.data.Dataset.from_tensors((frames, {})).repeat(3), 3)
  expected = model(frames, training=True).numpy()
  after = model(frames, training=False).numpy()
  np.testing.assert_allclose(after, expected, atol=1e-3)
  assert np.abs(before - expected).max() > 1e-2  # it did change something
  assert [layer.momentum for layer in layers] == momenta


def test_recomputed_batch_norm_statistics_average_the_batches():
  """The moving statistics become the plain mean of the batches' means and (biased) variances."""
  model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9)])
  rng = np.random.default_rng(1)
  batches = [
    rng.normal(loc, scale, (8, 3)).astype(np.float32)
    for loc, scale in ((0.0, 1.0), (5.0, 2.0), (-3.0, 0.5))
  ]
  training.recompute_batch_norm(
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
