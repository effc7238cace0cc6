"""Training of the two detector stages with Keras `fit`, resumable after a kill.

Per stage, as frederic's `tools/train.py` (zylamarek/frederic) trains its two models: Adam,
ReduceLROnPlateau(factor, patience) and EarlyStopping(2 x patience + 3) on the stage's monitor
(`losses.monitor`), the best epoch's weights kept, and with `loss_fn='iou'` a warm-up of
`iou_warmup_steps` MSE steps first, because IoU losses diverge on untrained boxes. With a `deadline`
a `TimeBudget` stops the stage before an epoch that would overrun it.

Resuming (`tfpets.runtime.training`): after every epoch the model and optimizer are saved under
checkpoints/<stage>/ with the callbacks' counters beside them; a restarted run continues with the
next epoch, and a finished stage's model is loaded instead of trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import time
from typing import Dict, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.errors import UsageError
from tfpets.landmarks import augment, data, draw, losses
from tfpets.landmarks import model as model_lib
from tfpets.runtime import training
from tfpets.runtime.checkpoint import CheckpointHelper


@dataclasses.dataclass
class TrainOptions:
  epochs: int = 300
  steps_per_epoch: int = 0  # 0: one pass over the usable training images
  batch_size: int = 32
  learning_rate: float = 1e-3
  loss_fn: str = "mse"  # stage 1 box loss; stage 2 always uses MSE
  plateau_factor: float = 0.6
  plateau_patience: int = 8
  iou_warmup_steps: int = 50  # with loss_fn "iou": MSE steps first
  heatmap_loss_weight: float = 10.0  # heatmap head: weight of the heatmaps' cross-entropy
  batch_norm_batches: int = 50  # training batches whose average becomes the BatchNorm statistics
  overlay_every: int = 5  # epochs between TensorBoard overlays
  seed: int = 0
  backbone_weights: str = ""  # MobileNetV2 no-top .h5, or '' for random weights
  deadline: float = 0.0  # time.time() by which the stage returns, finishing included; 0: none
  anneal_at: float = 0.0  # with `deadline`: fraction of the time after which the rate drops 10x


@dataclasses.dataclass
class RunPaths:
  checkpoints: pathlib.Path  # checkpoints/<stage>/
  models: pathlib.Path  # <stage>.keras and detector.json
  logs: pathlib.Path  # TensorBoard: logs/<stage>/


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
  """One epoch of `steps` steps with Adam() and MSE before the IoU loss, as frederic's
  `tools/train.py` does."""
  logging.info("%s: %d MSE warm-up steps before the IoU loss", spec.stage, steps)
  compile_stage(model, keras.optimizers.Adam(), spec, "mse", heatmap_weight)
  model.fit(train_ds, epochs=1, steps_per_epoch=steps, verbose=2)


def _usable_images(shards_dir: pathlib.Path, spec: data.FrameSpec) -> int:
  usable = data.count_usable(shards_dir, "train", spec)
  if usable == 0:
    need = "a head box or landmarks" if spec.stage == "bbox" else f"{spec.num_points} landmarks"
    raise UsageError(
      f"{shards_dir}: no training image has {need}, so the {spec.stage} stage cannot train "
      "(a 5-point dataset needs num_landmarks=5)"
    )
  return usable


def _datasets(shards_dir, spec: data.FrameSpec, augment_options, options: TrainOptions):
  """(training frames, validation frames) of the stage."""
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
  return train_ds, val_ds.apply(tf.data.experimental.assert_cardinality(val_batches))


def _resumable_callbacks(stage: str, directory: pathlib.Path, helper, options: TrainOptions):
  """(callbacks, best-weights callback, monitor): the schedule, early stopping, the best weights
  and the state that resumes them, then the time budget."""
  monitor, mode = losses.monitor(stage)
  plateau = keras.callbacks.ReduceLROnPlateau(
    monitor, factor=options.plateau_factor, patience=options.plateau_patience, mode=mode, verbose=1
  )
  early = keras.callbacks.EarlyStopping(
    monitor, patience=2 * options.plateau_patience + 3, mode=mode, verbose=1
  )
  best = training.BestWeights(directory / training.BEST_WEIGHTS_FILE, monitor, mode)
  resume = training.ResumeState(
    helper, directory, {"plateau": plateau, "early": early, "best": best}
  )
  callbacks = [plateau, early, best, resume]
  if options.deadline > 0:
    callbacks.append(
      training.TimeBudget(training.seconds_until(options.deadline), options.anneal_at)
    )
  return callbacks, best, monitor


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
  summary = training.finished_summary(directory)
  if summary is not None and model_path.is_file():
    logging.info("%s: already trained (%s); loading it", stage, model_path)
    return model_lib.load_model(model_path), summary

  spec = data.FrameSpec(
    stage, config.frame_size(stage), config.num_landmarks, heatmaps=config.head == "heatmap"
  )
  usable = _usable_images(shards_dir, spec)
  steps = options.steps_per_epoch or max(1, math.ceil(usable / options.batch_size))
  train_ds, val_ds = _datasets(shards_dir, spec, augment_options, options)
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
      _warm_up(model, train_ds, spec, options.iou_warmup_steps, options.heatmap_loss_weight)
    compile_stage(model, optimizer, spec, options.loss_fn, options.heatmap_loss_weight)

  callbacks, best, monitor = _resumable_callbacks(stage, directory, helper, options)
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
  if best.path.is_file():
    model.load_weights(str(best.path))
  training.recompute_batch_norm(model, train_ds, options.batch_norm_batches)
  epochs_run = training.read_state(directory).get("epoch", 0)
  if overlays is not None:
    overlays.draw(max(epochs_run, 1))
  model.save(model_path)
  summary = {
    "epochs_run": epochs_run,
    "best_epoch": best.best_epoch + 1,
    f"best_{monitor}": best.best,
    "fit_seconds_this_run": round(seconds, 1),
    "finish_seconds": round(time.time() - start - seconds, 1),
    "steps_per_epoch": steps,
    "usable_train_images": usable,
  }
  training.mark_done(directory, summary)
  return model, summary
