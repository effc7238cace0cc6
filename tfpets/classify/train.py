"""Training of every classifier with Keras `fit`: one config drives the run, resumable after a kill.

Each model gets the optimiser and schedule of its published recipe unless the config names
others (`recipe`): WS-DAN as the official code (SGD with momentum 0.9 at 1e-3, x0.9 every two
epochs) or the Stanford Cars variant (SGD, ReduceLROnPlateau x0.1 after 10 epochs), the Xception
baseline as GrabAI's (AdaBound, random erasing, balanced class weights, ReduceLROnPlateau x0.2 after
5), EfficientNet and ViT with AdamW and a cosine decay. After every epoch the model, the optimiser
and the callbacks' counters are saved (tfpets.runtime.training); a restarted run continues with the
next epoch and a finished one is not trained again. The run folder holds models/classifier.json
(what to build) and models/classifier.weights.h5 (the best epoch's weights): `load_classifier`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import pathlib
import shutil
import time
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.classify import augment as augment_lib
from tfpets.classify import data
from tfpets.errors import ArgumentError
from tfpets.runtime import strategy as strategy_lib
from tfpets.runtime import training
from tfpets.runtime.checkpoint import CheckpointHelper

MODELS = ("wsdan", "vit", "efficientnet", "xception")
WSDAN_VARIANTS = ("paper", "cars")
OPTIMIZERS = ("sgd", "adam", "adamw", "adabound")
SCHEDULES = ("exponential", "plateau", "cosine", "constant")
CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.weights.h5"


@dataclasses.dataclass
class ClassifyConfig:
  model: str = "efficientnet"
  wsdan_variant: str = "paper"
  wsdan_attention: bool = True  # False: the WS-DAN backbone alone, pooled (the ablation)
  num_maps: int = 0  # WS-DAN attention maps; 0: the variant's (32 paper, 64 cars)
  efficientnet_variant: str = "b0"
  vit_size: str = "base"  # random-init ViT architecture when no preset is given
  preset: str = ""  # ViT: a local keras-hub preset folder
  backbone_weights: str = ""  # '' random, 'imagenet' ($KERAS_HOME/models) or a local file
  image_size: int = 0  # 0: the model's standard size
  dropout: float = 0.0
  drop_connect: bool = True  # EfficientNet's per-block stochastic depth
  # Training; empty or 0 values take the model's recipe (`recipe`).
  epochs: int = 30
  steps_per_epoch: int = 0  # 0: one pass over the training images
  batch_size: int = 16
  optimizer: str = ""
  learning_rate: float = 0.0
  schedule: str = ""
  weight_decay: float = -1.0  # <0: the recipe's
  plateau_factor: float = 0.0
  plateau_patience: int = 0
  decay_epochs: int = 2  # exponential schedule: epochs per x0.9
  label_smoothing: float = 0.0
  augment: str = ""  # tfpets.classify.augment names; '' the recipe's
  mixing: str = "none"  # none | mixup | cutmix (not WS-DAN)
  class_weights: Optional[bool] = None  # None: the recipe's
  train_split: str = "train"
  val_split: str = "val"
  train_minutes: float = 0.0  # wall-clock budget of fit (0: epochs decide)
  jit_compile: bool = False
  overlay_every: int = 5  # epochs between TensorBoard attention overlays (WS-DAN)
  sync_batch_norm: bool = True  # BatchNorm statistics over the global batch under a strategy
  seed: int = 0

  def __post_init__(self):
    for argument, value, allowed in (
      ("model", self.model, MODELS),
      ("wsdan_variant", self.wsdan_variant, WSDAN_VARIANTS),
      ("optimizer", self.optimizer, ("",) + OPTIMIZERS),
      ("schedule", self.schedule, ("",) + SCHEDULES),
    ):
      if value not in allowed:
        raise ArgumentError(argument, value, f"is not one of {', '.join(a for a in allowed if a)}")
    if self.mixing != "none" and uses_attention(self):
      raise ArgumentError("mixing", self.mixing, "WS-DAN trains on hard labels (centre loss)")


def uses_attention(config: ClassifyConfig) -> bool:
  """Whether `config` is WS-DAN with its attention: its own train step, sparse labels."""
  return config.model == "wsdan" and config.wsdan_attention


# The published recipes: optimiser, learning rate, schedule, weight decay, plateau factor and
# patience, augmentation, class weights.
RECIPES = {
  "wsdan/paper": ("sgd", 1e-3, "exponential", 1e-5, 0.1, 10, "none", False),
  "wsdan/cars": ("sgd", 1e-3, "plateau", 1e-5, 0.1, 10, "autoaugment", False),
  "xception": ("adabound", 1e-2, "plateau", 5e-4, 0.2, 5, "erasing_grabai", True),
  "efficientnet": ("adamw", 1e-3, "cosine", 1e-4, 0.1, 10, "none", False),
  "vit": ("adamw", 1e-4, "cosine", 1e-4, 0.1, 10, "none", False),
}


def recipe(config: ClassifyConfig) -> ClassifyConfig:
  """`config` with every unset training value taken from its model's published recipe."""
  key = f"wsdan/{config.wsdan_variant}" if config.model == "wsdan" else config.model
  opt, rate, schedule, decay, factor, patience, augment, weights = RECIPES[key]
  return dataclasses.replace(
    config,
    optimizer=config.optimizer or opt,
    learning_rate=config.learning_rate or rate,
    schedule=config.schedule or schedule,
    weight_decay=decay if config.weight_decay < 0 else config.weight_decay,
    plateau_factor=config.plateau_factor or factor,
    plateau_patience=config.plateau_patience or patience,
    augment=config.augment or augment,
    class_weights=weights if config.class_weights is None else config.class_weights,
  )


def build_model(
  config: ClassifyConfig, num_classes: int, sync_batch_norm: bool = False
) -> keras.Model:
  """The classifier `config` describes, with random or local weights (nothing is downloaded).
  `sync_batch_norm`: BatchNorm statistics over all replicas (for a multi-replica strategy)."""
  from tfpets.classify import models, wsdan

  if uses_attention(config):
    return wsdan.build_wsdan(_wsdan_config(config, num_classes, sync_batch_norm))
  if config.model == "wsdan":
    model = wsdan.build_backbone_classifier(_wsdan_config(config, num_classes, sync_batch_norm))
  else:
    model = models.build_classifier(
      models.ClassifierConfig(
        model=config.model,
        num_classes=num_classes,
        image_size=config.image_size,
        efficientnet_variant=config.efficientnet_variant,
        preset=config.preset,
        vit_size=config.vit_size,
        backbone_weights=config.backbone_weights,
        dropout=config.dropout,
        drop_connect=config.drop_connect,
      )
    )
  if sync_batch_norm:
    models.sync_batch_norm(model)
  return model


def _wsdan_config(config: ClassifyConfig, num_classes: int, sync_batch_norm: bool):
  from tfpets.classify import wsdan

  return wsdan.WSDANConfig(
    variant=config.wsdan_variant,
    num_classes=num_classes,
    image_size=config.image_size,
    num_maps=config.num_maps,
    backbone_weights=config.backbone_weights,
    weight_decay=max(config.weight_decay, 0.0),
    seed=config.seed,
    sync_batch_norm=sync_batch_norm,
  )


def model_image_size(model: keras.Model) -> int:
  """The square input size of a built classifier (WS-DAN keeps it in its resolved config)."""
  if hasattr(model, "refine"):
    return int(model.config.image_size)
  return int(model.inputs[0].shape[1])


def make_optimizer(config: ClassifyConfig) -> keras.optimizers.Optimizer:
  """The optimiser of `config`. WS-DAN adds its (coupled) weight decay to the loss itself, as
  official slim L2 does; SGD elsewhere gets it coupled too; AdamW decoupled; AdaBound coupled."""
  rate, decay = config.learning_rate, max(config.weight_decay, 0.0)
  if config.optimizer == "sgd":
    return keras.optimizers.SGD(rate, momentum=0.9)
  if config.optimizer == "adam":
    return keras.optimizers.Adam(rate)
  if config.optimizer == "adamw":
    optimizer = keras.optimizers.AdamW(rate, weight_decay=decay)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "norm"])
    return optimizer
  from tfpets.classify import adabound

  return adabound.AdaBound(rate, final_lr=0.1, l2=decay)


def learning_rate_at(config: ClassifyConfig, epoch: int) -> float:
  """Epoch-level schedules (the plateau and constant ones keep the rate they are given)."""
  if config.schedule == "exponential":
    return config.learning_rate * 0.9 ** (epoch // max(config.decay_epochs, 1))
  if config.schedule == "cosine":
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * min(epoch / config.epochs, 1.0)))
  return config.learning_rate


def compile_model(model, optimizer, config: ClassifyConfig, one_hot: bool) -> None:
  if uses_attention(config):
    model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
    return
  if one_hot:
    loss = keras.losses.CategoricalCrossentropy(
      from_logits=True, label_smoothing=config.label_smoothing
    )
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
  else:
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
  model.compile(optimizer=optimizer, loss=loss, metrics=metrics, jit_compile=config.jit_compile)


class EpochSummaries(keras.callbacks.Callback):
  """Epoch curves (with the learning rate) and, for WS-DAN, attention maps over a fixed batch."""

  def __init__(self, writer, images: np.ndarray, every: int):
    super().__init__()
    self.writer, self.images, self.every = writer, images, max(1, every)

  def on_epoch_end(self, epoch, logs=None):
    values = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
    values["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
    self.writer.scalars({f"classify/{k}": v for k, v in values.items()}, epoch + 1)
    if hasattr(self.model, "attention_maps") and (epoch + 1) % self.every == 0:
      self.writer.grid("classify/attention", attention_overlays(self.model, self.images), epoch + 1)


def attention_overlays(model, images: np.ndarray) -> np.ndarray:
  """Images [0, 255] with WS-DAN's mean attention map laid over them in red, side by side with
  the image itself: [2B, S, S, 3] uint8."""
  maps = tf.reduce_mean(model.attention_maps(images), axis=-1, keepdims=True)
  low = tf.reduce_min(maps, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(maps, axis=[1, 2, 3], keepdims=True)
  maps = tf.image.resize((maps - low) / (high - low + 1e-6), images.shape[1:3]).numpy()
  heat = np.concatenate([maps, np.zeros_like(maps), np.zeros_like(maps)], axis=-1) * 255.0
  overlays = 0.5 * images + 0.5 * heat
  pairs = np.stack([images, overlays], axis=1).reshape((-1,) + images.shape[1:])
  return np.clip(np.rint(pairs), 0, 255).astype(np.uint8)


def _callbacks(config, directory, helper, writer, overlay_images):
  best = training.BestWeights(directory / training.BEST_WEIGHTS_FILE, "val_accuracy", "max")
  tracked = {"best": best}
  if config.schedule == "plateau":
    schedule = keras.callbacks.ReduceLROnPlateau(
      "val_loss",
      factor=config.plateau_factor,
      patience=config.plateau_patience,
      min_delta=1e-5,
      verbose=1,
    )
    tracked["plateau"] = schedule
  else:
    schedule = keras.callbacks.LearningRateScheduler(lambda e: learning_rate_at(config, e))
  callbacks = [schedule, best]
  callbacks.append(training.ResumeState(helper, directory, tracked))
  if config.train_minutes > 0:
    callbacks.append(training.TimeBudget(config.train_minutes * 60.0))
  if writer is not None:
    callbacks.append(EpochSummaries(writer, overlay_images, config.overlay_every))
  return callbacks, best


def _datasets(records, config, image_size, num_classes, strategy):
  one_hot = not uses_attention(config)
  layer = augment_lib.augmentation(config.augment, seed=config.seed)
  mixing = augment_lib.batch_mixing(config.mixing, seed=config.seed)
  weights = (
    data.balanced_class_weights(records, config.train_split) if config.class_weights else None
  )

  def train_input():
    return data.classification_dataset(
      records,
      config.train_split,
      image_size=image_size,
      batch_size=config.batch_size,
      training=True,
      augment=layer,
      mixing=mixing,
      num_classes=num_classes if one_hot else 0,
      class_weights=weights,
      seed=config.seed,
    )

  replicated = strategy is not None and strategy.num_replicas_in_sync > 1

  def val_input():
    return data.classification_dataset(
      records,
      config.val_split,
      image_size=image_size,
      batch_size=config.batch_size,
      training=False,
      num_classes=num_classes if one_hot else 0,
      endless=replicated,
      seed=config.seed,
    )

  # Global batches; Keras distributes them over the replicas (and shards them over workers).
  return _sharded(train_input(), strategy), _sharded(val_input(), strategy)


def _sharded(dataset: tf.data.Dataset, strategy) -> tf.data.Dataset:
  """`dataset` split over a multi-worker run's workers by record: by file, TensorFlow's default,
  fails when a split has fewer shard files than there are workers."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return dataset
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return dataset.with_options(options)


def _overlay_images(records, config, image_size, count=8) -> np.ndarray:
  dataset = data.classification_dataset(
    records, config.val_split, image_size=image_size, batch_size=count, training=False
  )
  return next(iter(dataset))[0].numpy()


def paths(workdir: pathlib.Path) -> tuple:
  """(checkpoints folder, models folder) of a classify run."""
  workdir = pathlib.Path(workdir)
  return workdir / "checkpoints" / "classify", workdir / "models"


def train_classifier(
  records: str,
  workdir: pathlib.Path,
  config: ClassifyConfig,
  strategy: Optional[tf.distribute.Strategy] = None,
  writer=None,
  extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
  """Trains (or resumes, or finds done) the classifier of `config` on `records`; returns the
  run's summary. Writes models/classifier.json and models/classifier.weights.h5 under workdir."""
  config = recipe(config)
  class_names = data.class_names(records)
  train_images = data.count_images(records, config.train_split, "train_split")
  val_images = data.count_images(records, config.val_split, "val_split")  # fails before building
  checkpoints, models_dir = paths(workdir)
  summary = training.finished_summary(checkpoints)
  if summary is not None and (models_dir / WEIGHTS_FILE).is_file():
    logging.info("classify: already trained (%s); nothing to do", models_dir)
    return summary
  chief = strategy is None or strategy_lib.is_chief(strategy)
  with training.worker_save_dir(checkpoints, chief, "tfpets-classify-") as save_dir:
    run = _Run(records, config, class_names, train_images, val_images, checkpoints, save_dir)
    return _train(run, models_dir, strategy, writer if chief else None, extra_callbacks)


@dataclasses.dataclass
class _Run:
  records: str
  config: ClassifyConfig
  class_names: list
  train_images: int
  val_images: int
  checkpoints: pathlib.Path  # the run's checkpoints, which every worker resumes from
  save_dir: pathlib.Path  # where this worker saves: `checkpoints` on the chief

  @property
  def chief(self) -> bool:
    return self.save_dir == self.checkpoints


def _train(run: _Run, models_dir, strategy, writer, extra_callbacks) -> dict:
  records, config, class_names = run.records, run.config, run.class_names
  checkpoints, save_dir, chief = run.checkpoints, run.save_dir, run.chief
  train_images, val_images = run.train_images, run.val_images
  scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
  with scope:
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    model = build_model(config, len(class_names), config.sync_batch_norm and replicas > 1)
    compile_model(model, make_optimizer(config), config, one_hot=not uses_attention(config))
    model.optimizer.build(model.trainable_variables)
  image_size = model_image_size(model)
  logging.info("classify: backbone weights: %s", getattr(model, "backbone_description", "-"))
  save_dir.mkdir(parents=True, exist_ok=True)
  if not chief and (checkpoints / training.STATE_FILE).is_file():
    shutil.copy(checkpoints / training.STATE_FILE, save_dir)  # the chief's counters
  helper = CheckpointHelper(save_dir, max_to_keep=2, model=model, optimizer=model.optimizer)
  initial_epoch = helper.restore_or_initialize(checkpoints)
  train_ds, val_ds = _datasets(records, config, image_size, len(class_names), strategy)
  training.prepare_multiworker_fit(model, strategy, next(iter(train_ds)))
  overlay = _overlay_images(records, config, image_size) if writer is not None else None
  callbacks, best = _callbacks(config, save_dir, helper, writer, overlay)
  callbacks.extend(extra_callbacks)
  steps = config.steps_per_epoch or max(1, math.ceil(train_images / config.batch_size))
  logging.info(
    "classify: %s, %d classes, %d training images at %d px, %d steps/epoch, epochs %d..%d",
    describe(config),
    len(class_names),
    train_images,
    image_size,
    steps,
    initial_epoch + 1,
    config.epochs,
  )
  start = time.time()
  history = model.fit(
    train_ds,
    epochs=config.epochs,
    initial_epoch=initial_epoch,
    steps_per_epoch=steps,
    validation_data=val_ds,
    validation_steps=_validation_steps(val_images, config.batch_size, strategy),
    callbacks=callbacks,
    verbose=2,
  )
  seconds = time.time() - start
  if best.path.is_file():
    model.load_weights(str(best.path))
  summary = {
    "model": describe(config),
    "epochs_run": training.read_state(save_dir).get("epoch", 0),
    "best_epoch": best.best_epoch + 1,
    "best_val_accuracy": best.best,
    "last_epoch": {k: float(v[-1]) for k, v in history.history.items() if v},
    "fit_seconds_this_run": round(seconds, 1),
    "train_images": train_images,
    "steps_per_epoch": steps,
    "image_size": image_size,
    "parameters": int(model.count_params()),
  }
  if chief:
    save_classifier(model, models_dir, config, class_names, image_size)
    training.mark_done(checkpoints, summary)
  return summary


def _validation_steps(val_images: int, batch_size: int, strategy) -> int:
  """One pass over the validation split; under several replicas, the whole batches it holds (of
  a shuffled stream, so that every replica always has images), the rest left out of the
  per-epoch figures (--stage=evaluate reads every image)."""
  if strategy is None or strategy.num_replicas_in_sync == 1:
    return max(1, math.ceil(val_images / batch_size))
  steps = max(1, val_images // batch_size)
  if val_images % batch_size:
    logging.info(
      "classify: %d replicas; each epoch validates %d of the %d validation images",
      strategy.num_replicas_in_sync,
      steps * batch_size,
      val_images,
    )
  return steps


def describe(config: ClassifyConfig) -> str:
  if config.model == "wsdan":
    part = "" if config.wsdan_attention else " backbone"
    return f"wsdan{part} ({config.wsdan_variant})"
  if config.model == "efficientnet":
    return f"efficientnet-{config.efficientnet_variant}"
  return config.model


def save_classifier(model, directory: pathlib.Path, config, class_names, image_size) -> None:
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  model.save_weights(str(directory / WEIGHTS_FILE))
  description = {
    "config": dataclasses.asdict(config),
    "class_names": list(class_names),
    "image_size": int(image_size),
  }
  (directory / CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n")


def load_classifier(run: str | pathlib.Path) -> tuple:
  """(model, class names, config) of a classify run folder or its models/ folder."""
  directory = pathlib.Path(run)
  if (directory / "models" / CONFIG_FILE).is_file():
    directory = directory / "models"
  if not (directory / CONFIG_FILE).is_file():
    raise ArgumentError(
      "classifier", str(run), f"no {CONFIG_FILE}: give the workdir of --stage=classify"
    )
  description = json.loads((directory / CONFIG_FILE).read_text())
  fields = {f.name for f in dataclasses.fields(ClassifyConfig)}
  config = ClassifyConfig(**{k: v for k, v in description["config"].items() if k in fields})
  # The run's weights replace any backbone weights: build without reading them.
  config = dataclasses.replace(
    config, backbone_weights="", preset=config.preset, image_size=description["image_size"]
  )
  model = build_model(config, len(description["class_names"]))
  model.load_weights(str(directory / WEIGHTS_FILE))
  return model, description["class_names"], config
