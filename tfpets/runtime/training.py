"""Helpers every Keras training loop of tfpets shares: a time budget, the best epoch's weights,
state that survives a kill, two trainings side by side, and BatchNorm statistics recomputed at the
end.

A resumable training saves its model and optimizer with `CheckpointHelper` after every epoch and
its callbacks' counters in `<directory>/state.json` (`ResumeState`); a restarted run restores both
and continues with the next epoch, and a finished one is marked done (`mark_done`) so that a rerun
loads its model instead of training it again.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import tempfile
import threading
import time
from concurrent import futures
from typing import Callable, Iterator, Mapping, Optional, Sequence

import keras
import tensorflow as tf
from absl import logging

from tfpets.runtime.checkpoint import CheckpointHelper

STATE_FILE = "state.json"
BEST_WEIGHTS_FILE = "best.weights.h5"
# Seconds kept before a deadline for the work after the last epoch (best weights, BatchNorm
# statistics, a last validation, saving); one value for every training so that none overruns.
FINISH_SECONDS = 8.0


def seconds_until(deadline: float, finish_seconds: float = FINISH_SECONDS) -> float:
  """Training seconds left before `deadline` (a time.time()) once the finishing work is set aside;
  at least one, so that a late start still trains an epoch."""
  return max(deadline - finish_seconds - time.time(), 1.0)


def read_state(directory: pathlib.Path) -> dict:
  """The training state saved in `directory`, or {} when there is none."""
  path = pathlib.Path(directory) / STATE_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def write_state(directory: pathlib.Path, state: dict) -> None:
  """Replaces the state file atomically, so that a kill leaves the old or the new state whole."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / STATE_FILE
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(state, indent=2) + "\n")
  os.replace(tmp, path)


def finished_summary(directory: pathlib.Path) -> Optional[dict]:
  """The summary of a training marked done in `directory`, or None when it has not finished."""
  state = read_state(directory)
  return state.get("summary", {}) if state.get("done") else None


@contextlib.contextmanager
def worker_save_dir(checkpoints: pathlib.Path, chief: bool, prefix: str) -> Iterator[pathlib.Path]:
  """Where this worker saves its checkpoints: `checkpoints` on the chief; the other workers of a
  multi-worker run save into temporary folders of their own, deleted at the end."""
  if chief:
    yield checkpoints
    return
  directory = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
  try:
    yield directory
  finally:
    shutil.rmtree(directory, ignore_errors=True)


def mark_done(directory: pathlib.Path, summary: dict) -> None:
  """Marks the training in `directory` done with its summary, keeping the rest of its state."""
  state = read_state(directory)
  state.update(done=True, summary=summary)
  write_state(directory, state)


def _finite(value) -> Optional[float]:
  value = float(value)
  return value if math.isfinite(value) else None


class BestWeights(keras.callbacks.Callback):
  """Keeps the weights of the best epoch on `monitor` (`mode` 'max' or 'min') in a file."""

  def __init__(self, path: pathlib.Path, monitor: str, mode: str):
    super().__init__()
    if mode not in ("max", "min"):
      raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    self.path, self.monitor, self.mode = path, monitor, mode
    self.best: Optional[float] = None
    self.best_epoch = -1

  def on_epoch_end(self, epoch, logs=None):
    value = (logs or {}).get(self.monitor)
    if value is None or not math.isfinite(value):
      return
    better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
    if better:
      self.best, self.best_epoch = float(value), epoch
      self.model.save_weights(str(self.path))


class TimeBudget(keras.callbacks.Callback):
  """Stops training before an epoch that would end past `seconds` after training began, and
  divides the learning rate by 10 once `anneal_at` of them are spent.

  The next epoch is expected to last as long as the longest so far, the first one excepted once
  there are others, because it also traces the step and fills the input pipeline. The single late
  drop stands in for ReduceLROnPlateau, which seldom fires within a budget of minutes.
  """

  def __init__(self, seconds: float, anneal_at: float = 0.0):
    super().__init__()
    self.seconds, self.anneal_at = seconds, anneal_at
    self.durations: list = []
    self.stopped_epoch: Optional[int] = None
    self.annealed_epoch: Optional[int] = None

  def on_train_begin(self, logs=None):
    self.start = time.monotonic()

  def expected_epoch_seconds(self) -> float:
    return max(self.durations[1:] or self.durations)

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch_start = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    now = time.monotonic()
    self.durations.append(now - self.epoch_start)
    spent = now - self.start
    if (
      self.anneal_at > 0 and self.annealed_epoch is None and spent >= self.anneal_at * self.seconds
    ):
      rate = self.model.optimizer.learning_rate
      rate.assign(rate * 0.1)
      self.annealed_epoch = epoch + 1
      logging.info(
        "time budget: %.0f of %.0f s spent; learning rate -> %.2g",
        spent,
        self.seconds,
        float(keras.ops.convert_to_numpy(rate)),
      )
    if spent + self.expected_epoch_seconds() > self.seconds:
      self.stopped_epoch = epoch + 1
      self.model.stop_training = True
      logging.info(
        "time budget: %.0f of %.0f s spent after epoch %d; stopping", spent, self.seconds, epoch + 1
      )


# The counters of each callback that a resumed training needs to carry on where it stopped.
RESUMED_COUNTERS = (
  (keras.callbacks.ReduceLROnPlateau, ("wait", "best", "cooldown_counter")),
  (keras.callbacks.EarlyStopping, ("wait", "best", "best_epoch")),
  (BestWeights, ("best", "best_epoch")),
)


def _counters(callback) -> tuple:
  for kind, keys in RESUMED_COUNTERS:
    if isinstance(callback, kind):
      return keys
  raise ValueError(f"callbacks: no resumable counters known for {type(callback).__name__}")


class ResumeState(keras.callbacks.Callback):
  """Checkpoints model and optimizer each epoch and keeps `callbacks`' counters in state.json,
  under the names they are given.

  Must come after those callbacks in the list, so that it sees their end-of-epoch values and
  overrides their on_train_begin resets.
  """

  def __init__(
    self,
    helper: CheckpointHelper,
    directory: pathlib.Path,
    callbacks: Mapping[str, keras.callbacks.Callback],
  ):
    super().__init__()
    self.helper, self.directory = helper, directory
    self.tracked = [(name, callback, _counters(callback)) for name, callback in callbacks.items()]

  def on_train_begin(self, logs=None):
    state = read_state(self.directory)
    for name, callback, keys in self.tracked:
      for key, value in state.get(name, {}).items():
        if key in keys and value is not None:
          setattr(callback, key, value)

  def on_epoch_end(self, epoch, logs=None):
    self.helper.save(epoch + 1)
    state = read_state(self.directory)
    state["epoch"] = epoch + 1
    for name, callback, keys in self.tracked:
      state[name] = {
        key: (_finite(getattr(callback, key)) if key == "best" else int(getattr(callback, key)))
        for key in keys
        if getattr(callback, key) is not None
      }
    write_state(self.directory, state)


class StageCancelled(Exception):
  """A training stopped because another one trained beside it failed or the run was interrupted."""


class CancelOnEvent(keras.callbacks.Callback):
  """Raises `StageCancelled` at the next batch once `event` is set. Raising, rather than stopping
  `fit`, keeps the training from marking itself done: a rerun resumes it from its last epoch."""

  def __init__(self, event: threading.Event):
    super().__init__()
    self.event = event

  def on_train_batch_end(self, batch, logs=None):
    if self.event.is_set():
      raise StageCancelled("a training beside this one failed, or the run was interrupted")


def train_concurrently(*jobs: Callable[[Sequence], object]) -> list:
  """Runs `jobs` side by side in threads, each called with extra callbacks for its `fit` calls,
  and returns their results in order. The first failure, or an interrupt, cancels the others at
  their next batch and is raised."""
  cancel = threading.Event()
  with futures.ThreadPoolExecutor(len(jobs), thread_name_prefix="training") as pool:
    running = [pool.submit(job, [CancelOnEvent(cancel)]) for job in jobs]
    try:
      futures.wait(running, return_when=futures.FIRST_EXCEPTION)
      for job in running:
        if job.done() and job.exception() is not None:
          raise job.exception()
    except BaseException:
      cancel.set()
      raise
    return [job.result() for job in running]


def batch_norm_layers(layer) -> Iterator[keras.layers.BatchNormalization]:
  """Every BatchNormalization layer inside `layer`, nested models included."""
  for sub in getattr(layer, "layers", []):
    if isinstance(sub, keras.layers.BatchNormalization):
      yield sub
    yield from batch_norm_layers(sub)


def recompute_batch_norm(model, dataset: tf.data.Dataset, batches: int) -> None:
  """Replaces BatchNorm moving statistics by their plain average over `batches` batches of
  `dataset` (elements whose first item is the model input).

  Moving statistics kept with momentum mostly reflect the last few batches; the final model should
  not depend on which ones they were.
  """
  layers = list(batch_norm_layers(model))
  if not layers or batches <= 0:
    return
  momentum = [layer.momentum for layer in layers]
  for layer in layers:
    layer.momentum = 0.0  # a training-mode call then leaves this batch's statistics behind

  @tf.function  # eager calls are many times slower
  def batch_statistics(inputs):
    model(inputs, training=True)
    return [
      (tf.identity(layer.moving_mean), tf.identity(layer.moving_variance)) for layer in layers
    ]

  sums = None
  count = 0
  try:
    for batch in dataset.take(batches):
      statistics = [(m.numpy(), v.numpy()) for m, v in batch_statistics(batch[0])]
      sums = (
        statistics if sums is None else [(a + m, b + v) for (a, b), (m, v) in zip(sums, statistics)]
      )
      count += 1
  finally:
    for layer, value in zip(layers, momentum):
      layer.momentum = value
  for layer, (mean, variance) in zip(layers, sums or []):
    layer.moving_mean.assign(mean / count)
    layer.moving_variance.assign(variance / count)


def prepare_multiworker_fit(model, strategy: tf.distribute.Strategy, batch) -> None:
  """Lets Keras 3 `fit` and `evaluate` run `model` under MultiWorkerMirroredStrategy.

  Keras 3 (3.15) fails there twice (keras-team/keras#20585): it builds the model by averaging a
  distributed data batch over the workers, which MultiWorkerMirroredStrategy cannot reduce
  eagerly, and its step functions average the replicas' logs along an axis scalars lack. Here the
  model is built once from `batch` (one local, undistributed batch) and each step returns the
  first replica's logs, which the strategy's synchronised metrics make the same on every replica.
  A no-op under any other strategy.
  """
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return
  with strategy.scope():
    model._symbolic_build(data_batch=batch)  # pylint: disable=protected-access
  model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
  model.train_function = _first_replica_steps(model.train_step, strategy)
  model.test_function = _first_replica_steps(model.test_step, strategy)


def _first_replica_steps(step: Callable, strategy: tf.distribute.Strategy) -> Callable:
  @tf.function(reduce_retracing=True)
  def one_step(iterator):
    outputs = strategy.run(step, args=(next(iterator),))
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], outputs)

  return one_step
