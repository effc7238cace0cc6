"""Training of the two detector stages with Keras `fit` (landmarks.md §6), resumable after a kill.

Per stage: Adam, ReduceLROnPlateau(factor, patience) and EarlyStopping(2 x patience + 3) on the
spec's monitor (bbox: val IoU, max; landmarks: val loss, min), the best epoch's weights kept, and
with `--loss_fn=iou` a warm-up of `warmup_steps` MSE steps first (IoU losses explode early), and
optionally a deadline (`TimeBudget`): the stage stops before an epoch that would overrun it.

Resuming: after every epoch the model and optimizer (learning rate included) are saved with the
checkpoint helper under checkpoints/<stage>/, and the callbacks' counters in state.json beside
them; a restarted run restores both and continues with the next epoch. A finished stage is marked
done there and its model is loaded instead of retrained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import threading
import time
from concurrent import futures
from typing import Callable, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.errors import UsageError
from tfpets.landmarks import augment, data, draw, losses
from tfpets.landmarks import model as model_lib
from tfpets.runtime.checkpoint import CheckpointHelper

STATE_FILE = "state.json"
BEST_WEIGHTS = "best.weights.h5"
# Kept before a stage's deadline for what follows its last epoch: the best weights, BatchNorm
# statistics, overlays and saving.
FINISH_SECONDS = 8.0


@dataclasses.dataclass
class TrainOptions:
  epochs: int = 300
  steps_per_epoch: int = 0  # 0: one pass over the usable training images
  batch_size: int = 32
  learning_rate: float = 1e-3
  loss_fn: str = "mse"  # stage 1 box loss; stage 2 always uses MSE
  plateau_factor: float = 0.6
  plateau_patience: int = 8
  warmup_steps: int = 50
  heatmap_weight: float = 10.0  # weight of the heatmap cross-entropy (heatmap head)
  batch_norm_batches: int = 50  # training batches whose average becomes the BatchNorm statistics
  overlay_every: int = 5  # epochs between TensorBoard overlays
  seed: int = 0
  backbone_weights: str = ""  # MobileNetV2 no-top .h5, or '' for random weights
  deadline: float = 0.0  # time.time() by which the stage returns, finishing included
  anneal_at: float = 0.0  # with `deadline`: fraction of the time to it after which the
  # learning rate drops 10x


class StageCancelled(Exception):
  """A stage stopped because another one trained beside it failed or the run was interrupted."""


class CancelOnEvent(keras.callbacks.Callback):
  """Raises `StageCancelled` at the next batch once `event` is set. Raising, rather than stopping
  `fit`, keeps the stage from saving itself as done: a rerun resumes it from its last epoch."""

  def __init__(self, event: threading.Event):
    super().__init__()
    self.event = event

  def on_train_batch_end(self, batch, logs=None):
    if self.event.is_set():
      raise StageCancelled("a stage trained beside this one failed, or the run was interrupted")


def train_concurrently(*jobs: Callable[[Sequence], object]) -> list:
  """Runs `jobs` side by side in threads, each called with extra callbacks for its `fit` calls,
  and returns their results in order. The first failure, or an interrupt, cancels the others at
  their next batch and is raised."""
  cancel = threading.Event()
  with futures.ThreadPoolExecutor(len(jobs), thread_name_prefix="landmarks-stage") as pool:
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


@dataclasses.dataclass
class RunPaths:
  checkpoints: pathlib.Path  # checkpoints/<stage>/
  models: pathlib.Path  # <stage>.keras and detector.json
  logs: pathlib.Path  # TensorBoard: logs/<stage>/


def read_state(directory: pathlib.Path) -> dict:
  path = directory / STATE_FILE
  return json.loads(path.read_text()) if path.is_file() else {}


def write_state(directory: pathlib.Path, state: dict) -> None:
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / STATE_FILE
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(state, indent=2) + "\n")
  os.replace(tmp, path)


def _finite(value) -> Optional[float]:
  value = float(value)
  return value if math.isfinite(value) else None


class BestWeights(keras.callbacks.Callback):
  """Keeps the weights of the best epoch on `monitor` in a file."""

  def __init__(self, path: pathlib.Path, monitor: str, mode: str):
    super().__init__()
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
  """Stops training before an epoch that would end past `seconds` of this run's training, and
  divides the learning rate by 10 once `anneal_at` of them are spent.

  The next epoch is assumed to last as long as the longest so far, the first excepted once there
  are others (it also traces the step and fills the input pipeline, which can take several times
  longer), so a stage does not overrun its share of a fixed budget (a CPU run sized in minutes
  rather than epochs). Within minutes
  ReduceLROnPlateau seldom fires, and a final low-rate phase is what sharpens the coordinates.
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


class ResumeState(keras.callbacks.Callback):
  """Checkpoints model + optimizer each epoch and keeps the other callbacks' counters in state.json.

  Must come after the callbacks it saves in the list, so that it sees their end-of-epoch values
  and overrides their on_train_begin resets.
  """

  def __init__(
    self,
    helper: CheckpointHelper,
    directory: pathlib.Path,
    plateau: keras.callbacks.ReduceLROnPlateau,
    early: keras.callbacks.EarlyStopping,
    best: BestWeights,
  ):
    super().__init__()
    self.helper, self.directory = helper, directory
    self.plateau, self.early, self.best = plateau, early, best

  def on_train_begin(self, logs=None):
    state = read_state(self.directory)
    for name, callback, keys in self._tracked():
      for key, value in state.get(name, {}).items():
        if key in keys and value is not None:
          setattr(callback, key, value)

  def _tracked(self):
    return (
      ("plateau", self.plateau, ("wait", "best", "cooldown_counter")),
      ("early", self.early, ("wait", "best", "best_epoch")),
      ("best", self.best, ("best", "best_epoch")),
    )

  def on_epoch_end(self, epoch, logs=None):
    self.helper.save(epoch + 1)
    state = read_state(self.directory)
    state["epoch"] = epoch + 1
    for name, callback, keys in self._tracked():
      state[name] = {
        key: (_finite(getattr(callback, key)) if key == "best" else int(getattr(callback, key)))
        for key in keys
        if getattr(callback, key) is not None
      }
    write_state(self.directory, state)


class TensorBoardOverlays(keras.callbacks.Callback):
  """Epoch scalars (with the learning rate) and predicted-versus-true overlays of a fixed batch."""

  def __init__(
    self, writer, stage: str, frames: np.ndarray, targets: Dict[str, np.ndarray], every: int
  ):
    super().__init__()
    self.writer, self.stage, self.every = writer, stage, max(1, every)
    self.frames, self.targets = frames, targets

  def on_epoch_end(self, epoch, logs=None):
    values = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float))}
    values["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
    self.writer.scalars({f"{self.stage}/{k}": v for k, v in values.items()}, epoch + 1)
    if (epoch + 1) % self.every == 0:
      self.draw(epoch + 1)

  def draw(self, step: int) -> np.ndarray:
    outputs = {k: np.asarray(v) for k, v in self.model(self.frames, training=False).items()}
    zoom = max(1, int(math.ceil(256 / self.frames.shape[1])))
    pictures = [
      draw.overlay(
        frame,
        outputs.get("landmarks", [None] * len(self.frames))[i],
        outputs["box"][i],
        None if "landmarks" not in self.targets else self.targets["landmarks"][i],
        self.targets["box"][i],
        zoom=zoom,
      )
      for i, frame in enumerate(self.frames)
    ]
    return self.writer.grid(f"{self.stage}/predicted_vs_true", np.stack(pictures), step)


def _batch_norm_layers(layer):
  for sub in getattr(layer, "layers", []):
    if isinstance(sub, keras.layers.BatchNormalization):
      yield sub
    yield from _batch_norm_layers(sub)


def recompute_batch_norm(model, train_ds, batches: int) -> None:
  """Replaces BatchNorm moving statistics by their plain average over `batches` training batches.

  Training keeps them with momentum 0.9 (model.BN_MOMENTUM), which follows the weights closely but
  mostly reflects the last few batches; the final model should not depend on which ones.
  """
  layers = list(_batch_norm_layers(model))
  if not layers or batches <= 0:
    return
  momentum = [layer.momentum for layer in layers]
  for layer in layers:
    layer.momentum = 0.0  # a training-mode call then leaves this batch's statistics behind

  @tf.function  # eager calls take ten times longer (20 s for 50 batches of a stage)
  def batch_statistics(frames):
    model(frames, training=True)
    return [
      (tf.identity(layer.moving_mean), tf.identity(layer.moving_variance)) for layer in layers
    ]

  sums = None
  count = 0
  for batch in train_ds.take(batches):
    statistics = [(m.numpy(), v.numpy()) for m, v in batch_statistics(batch[0])]
    sums = (
      statistics if sums is None else [(a + m, b + v) for (a, b), (m, v) in zip(sums, statistics)]
    )
    count += 1
  for layer, value in zip(layers, momentum):
    layer.momentum = value
  for layer, (mean, variance) in zip(layers, sums or []):
    layer.moving_mean.assign(mean / count)
    layer.moving_variance.assign(variance / count)


def _overlay_batch(shards_dir, spec, options: augment.AugmentOptions, count: int = 8):
  frames, targets = next(
    iter(data.frames(shards_dir, "val", spec, batch_size=count, training=False, options=options))
  )[:2]
  return frames.numpy(), {k: v.numpy() for k, v in targets.items()}


def compile_stage(
  model, optimizer, spec: data.FrameSpec, loss_fn: str, heatmap_weight: float
) -> None:
  """Compiles a stage model with its losses (`loss_fn` for the stage-1 box) and metrics."""
  found, weights = losses.stage_losses(
    spec.stage, loss_fn, spec.size, spec.heatmaps, heatmap_weight
  )
  model.compile(
    optimizer, loss=found, loss_weights=weights, metrics=losses.stage_metrics(spec.stage)
  )


def _warm_up(model, train_ds, spec: data.FrameSpec, steps: int, heatmap_weight: float) -> None:
  """landmarks.md §5: one epoch of `steps` steps with Adam() and MSE before the IoU loss."""
  logging.info("%s: %d MSE warm-up steps before the IoU loss", spec.stage, steps)
  compile_stage(model, keras.optimizers.Adam(), spec, "mse", heatmap_weight)
  model.fit(train_ds, epochs=1, steps_per_epoch=steps, verbose=2)


def train_stage(
  stage: str,
  config: model_lib.DetectorConfig,
  shards_dir: pathlib.Path,
  paths: RunPaths,
  augment_options: augment.AugmentOptions,
  options: TrainOptions,
  strategy=None,
  writer=None,
  extra_callbacks: Sequence = (),
) -> tuple:
  """Trains (or resumes, or loads when done) one stage; returns (model, summary dict)."""
  directory = paths.checkpoints / stage
  model_path = paths.models / model_lib.MODEL_FILES[stage]
  state = read_state(directory)
  if state.get("done") and model_path.is_file():
    logging.info("%s: already trained (%s); loading it", stage, model_path)
    return model_lib.load_model(model_path), state.get("summary", {})

  spec = data.FrameSpec(
    stage, config.frame_size(stage), config.num_landmarks, heatmaps=config.head == "heatmap"
  )
  usable = data.count_usable(shards_dir, "train", spec)
  if usable == 0:
    need = "head boxes or landmarks" if stage == "bbox" else f"{config.num_landmarks} landmarks"
    raise UsageError(
      f"{shards_dir}: no training image has {need}; the {stage} stage cannot train "
      "(a 5-point dataset needs --num_landmarks=5)"
    )
  steps = options.steps_per_epoch or max(1, math.ceil(usable / options.batch_size))
  train_ds = data.frames(
    shards_dir,
    "train",
    spec,
    batch_size=options.batch_size,
    training=True,
    options=augment_options,
    seed=options.seed,
  )
  val_ds = data.frames(
    shards_dir, "val", spec, batch_size=options.batch_size, training=False, options=augment_options
  )
  # Its length, which the usable-image filter hides: Keras warns at the end of an unknown one.
  val_batches = math.ceil(data.count_usable(shards_dir, "val", spec) / options.batch_size)
  val_ds = val_ds.apply(tf.data.experimental.assert_cardinality(val_batches))

  scope = lambda: strategy.scope() if strategy is not None else contextlib.nullcontext()
  with scope():
    model = model_lib.build_model(stage, config, options.backbone_weights)
    optimizer = keras.optimizers.Adam(options.learning_rate)
    optimizer.build(model.trainable_variables)
  directory.mkdir(parents=True, exist_ok=True)
  paths.models.mkdir(parents=True, exist_ok=True)
  helper = CheckpointHelper(directory, max_to_keep=2, model=model, optimizer=optimizer)
  initial_epoch = helper.restore_or_initialize()
  with scope():
    if initial_epoch == 0 and stage == "bbox" and options.loss_fn == "iou":
      _warm_up(model, train_ds, spec, options.warmup_steps, options.heatmap_weight)
    compile_stage(model, optimizer, spec, options.loss_fn, options.heatmap_weight)

  monitor, mode = losses.monitor(stage)
  plateau = keras.callbacks.ReduceLROnPlateau(
    monitor, factor=options.plateau_factor, patience=options.plateau_patience, mode=mode, verbose=1
  )
  early = keras.callbacks.EarlyStopping(
    monitor, patience=2 * options.plateau_patience + 3, mode=mode, verbose=1
  )
  best = BestWeights(directory / BEST_WEIGHTS, monitor, mode)
  callbacks = [plateau, early, best, ResumeState(helper, directory, plateau, early, best)]
  if options.deadline > 0:
    callbacks.append(
      TimeBudget(max(options.deadline - FINISH_SECONDS - time.time(), 1.0), options.anneal_at)
    )
  overlays = None
  if writer is not None:
    overlays = TensorBoardOverlays(
      writer, stage, *_overlay_batch(shards_dir, spec, augment_options), options.overlay_every
    )
    callbacks.append(overlays)
  callbacks.extend(extra_callbacks)
  logging.info(
    "%s: %d usable training images, %d steps/epoch, epochs %d..%d",
    stage,
    usable,
    steps,
    initial_epoch + 1,
    options.epochs,
  )
  start = time.time()
  model.fit(
    train_ds,
    epochs=options.epochs,
    initial_epoch=initial_epoch,
    steps_per_epoch=steps,
    validation_data=val_ds,
    callbacks=callbacks,
    verbose=2,
  )
  seconds = time.time() - start
  logging.info(
    "%s: fit returned after %.0f s; best weights, BatchNorm statistics, saving", stage, seconds
  )
  if (directory / BEST_WEIGHTS).is_file():
    model.load_weights(str(directory / BEST_WEIGHTS))
  recompute_batch_norm(model, train_ds, options.batch_norm_batches)
  if overlays is not None:
    overlays.draw(max(read_state(directory).get("epoch", 0), 1))
  model.save(model_path)
  state = read_state(directory)
  state.update(
    done=True,
    summary={
      "epochs_run": state.get("epoch", 0),
      "best_epoch": best.best_epoch + 1,
      f"best_{monitor}": best.best,
      "fit_seconds_this_run": round(seconds, 1),
      "finish_seconds": round(time.time() - start - seconds, 1),
      "steps_per_epoch": steps,
      "usable_train_images": usable,
    },
  )
  write_state(directory, state)
  return model, state["summary"]
