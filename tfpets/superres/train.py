"""Training, or fine-tuning, of DBPN on any folder of high-resolution images with Keras `fit`,
resumable after a kill.

The recipe of the official `main.py` and `dataset.py` (alterzero/DBPN-Pytorch): random HR patches
of `patch_size * scale` pixels, each with its bicubic downscale as the input, the flips of
`augment()`, L1 loss, Adam (1e-4, betas 0.9 / 0.999, eps 1e-8) and the rate divided by 10
half-way. Differences: the LR patch is the downscale of the HR patch rather than a crop of the
downscaled whole image (the two differ only within the kernel's reach of the patch border, and the
HR patch always lines up exactly with its LR patch); batches of 16 rather than 1
(`SuperResConfig.batch_size`); a few images held out for a validation PSNR each epoch.

Every file of the folder (subfolders included) is decoded once before training by
`tfpets.data.decode.read_image`, the one decoder, which also feeds the input pipeline: files it
cannot decode and images smaller than an HR patch are skipped, counted in the log and listed in
reports/superres_rejects.csv. The patch stream is a function of the seed and of the position in the
stream, so a run resumed after a kill carries on with the patches the killed run would have seen.

Outputs under the workdir: checkpoints/superres/ (model and optimizer after every epoch,
state.json), models/dbpn.keras and models/dbpn.weights.h5 (the weights of the epoch with the best
validation PSNR, else of the last epoch; float32), reports/superres_train.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import shutil
import time
import warnings
from concurrent import futures
from typing import List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.data import listing
from tfpets.data.decode import ImageDecodeError, read_image
from tfpets.data.rejects import RejectsReport
from tfpets.errors import ArgumentError
from tfpets.runtime import strategy as strategy_lib
from tfpets.runtime import training
from tfpets.runtime.checkpoint import CheckpointHelper
from tfpets.superres import convert, dbpn, metrics

AUTOTUNE = tf.data.AUTOTUNE
MODEL_FILE = convert.MODEL_FILE
WEIGHTS_FILE = "dbpn.weights.h5"
REPORT_FILE = "superres_train.json"
REJECTS_FILE = "superres_rejects.csv"
INIT_SUFFIXES = (".keras", ".weights.h5")


@dataclasses.dataclass
class SuperResConfig:
  variant: str = "dbpn"
  scale: int = 4
  # None: the variant's (plain for dbpn, as its shipped weights); main.py trains with True.
  residual: Optional[bool] = None
  patch_size: int = 40  # LR patch side; HR patches are patch_size * scale
  # main.py trains on single patches; 16 per step keep an accelerator busy and make Adam's steps
  # less noisy, the usual SR batch (EDSR). Every epoch still sees one patch per image.
  batch_size: int = 16
  epochs: int = 2000  # main.py's nEpochs
  steps_per_epoch: int = 0  # 0: one pass over the training images
  learning_rate: float = 1e-4  # a tenth of it after half of epochs * steps_per_epoch steps
  augment: bool = True
  init: str = ""  # "": Kaiming-normal weights; else a .keras or .weights.h5 of the same network
  val_dir: str = ""  # HR images to validate on; "": `val_images` held out of the training folder
  val_images: int = 8  # images validated after every epoch (centre patches); 0: no validation
  grid_images: int = 4  # validation patches in the TensorBoard grid
  jit_compile: bool = False
  seed: int = 0  # the initial weights, the held-out images and the patch stream
  train_minutes: float = 0.0  # wall-clock budget of fit (0: epochs decide)

  def __post_init__(self):
    if self.variant not in dbpn.VARIANTS:
      raise ArgumentError("variant", self.variant, f"is not one of {', '.join(dbpn.VARIANTS)}")
    if self.scale not in dbpn.SCALES:
      raise ArgumentError("scale", self.scale, f"is not one of {', '.join(map(str, dbpn.SCALES))}")
    for argument in ("patch_size", "batch_size", "epochs"):
      if getattr(self, argument) < 1:
        raise ArgumentError(argument, getattr(self, argument), "must be at least 1")
    if self.init and not self.init.endswith(INIT_SUFFIXES):
      raise ArgumentError("init", self.init, "must be a .keras model or a .weights.h5 file")
    scored = self.hr_patch - 2 * self.scale  # what PSNR and SSIM see once the border is shaved
    if self.val_images > 0 and scored < metrics.SSIM_WINDOW:
      raise ArgumentError(
        "patch_size",
        self.patch_size,
        f"too small to validate: {self.hr_patch} px HR patches less {self.scale} px per border "
        f"leave {scored} px, SSIM needs {metrics.SSIM_WINDOW}",
      )

  @property
  def hr_patch(self) -> int:
    return self.patch_size * self.scale

  @property
  def uses_residual(self) -> bool:
    return dbpn.VARIANTS[self.variant].residual if self.residual is None else bool(self.residual)


# --- images ------------------------------------------------------------------------------------


def list_hr_images(folder: str) -> List[str]:
  """The image files under `folder` and its subfolders (hidden ones left out), sorted."""
  return listing.images_in(folder, recursive=True)


@dataclasses.dataclass
class ImageScan:
  usable: List[str]
  rejects: RejectsReport
  too_small: int
  undecodable: int


def _image_size(path: str) -> Tuple[int, int, str]:
  try:
    image = read_image(path)
  except ImageDecodeError as e:
    return 0, 0, e.reason
  return image.height, image.width, ""


def scan_images(paths: Sequence[str], min_side: int) -> ImageScan:
  """Decodes every file once: the ones that decode to at least `min_side` x `min_side` pixels are
  usable, the others go to the rejects report with the reason."""
  workers = max(1, min(8, os.cpu_count() or 1))
  with futures.ThreadPoolExecutor(workers) as pool:  # Pillow decodes without the GIL
    sizes = list(pool.map(_image_size, paths))
  usable, rejects, too_small, undecodable = [], RejectsReport(), 0, 0
  for path, (height, width, problem) in zip(paths, sizes):
    if problem:
      rejects.add(path, problem)
      undecodable += 1
    elif min(height, width) < min_side:
      rejects.add(path, f"{width}x{height} is smaller than the {min_side}x{min_side} HR patch")
      too_small += 1
    else:
      usable.append(path)
  return ImageScan(usable, rejects, too_small, undecodable)


def usable_images(folder: str, min_side: int, argument: str) -> ImageScan:
  """`scan_images` of a folder; an ArgumentError naming `argument` when none is usable."""
  if not os.path.isdir(folder):
    raise ArgumentError(argument, folder, "no such folder")
  paths = list_hr_images(folder)
  scan = scan_images(paths, min_side)
  if scan.too_small or scan.undecodable:
    logging.warning(
      "superres: %s: skipped %d images smaller than the %d px HR patch and %d undecodable files "
      "of %d",
      folder,
      scan.too_small,
      min_side,
      scan.undecodable,
      len(paths),
    )
  if not scan.usable:
    raise ArgumentError(
      argument,
      folder,
      f"no usable images ({len(paths)} image files: {scan.too_small} smaller than the "
      f"{min_side}x{min_side} HR patch, {scan.undecodable} undecodable)",
    )
  return scan


def _read_pixels(path: bytes) -> np.ndarray:
  return read_image(os.fsdecode(path)).pixels


def read_rgb(path: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] RGB of the image file `path` (a string tensor), by the one decoder."""
  image = tf.numpy_function(_read_pixels, [path], tf.uint8, stateful=False)
  image.set_shape([None, None, 3])
  return image


def _to_unit(patch: tf.Tensor) -> tf.Tensor:
  return tf.cast(patch, tf.float32) / 255.0


def random_hr_patch(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """A `size` x `size` crop of a uint8 image at a seeded random place, float32 in [0, 1]."""
  return _to_unit(tf.image.stateless_random_crop(image, [size, size, 3], seed))


def center_hr_patch(image: tf.Tensor, size: int) -> tf.Tensor:
  """The centre `size` x `size` crop of a uint8 image, float32 in [0, 1]."""
  shape = tf.shape(image)
  top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
  return _to_unit(tf.image.crop_to_bounding_box(image, top, left, size, size))


def bicubic_downscale(hr: tf.Tensor, scale: int) -> tf.Tensor:
  """The LR input of HR patches [..., H, W, 3] in [0, 1]: a bicubic (Keys, a = -0.5) shrink by
  `scale` with the kernel stretched by the scale (antialiased): the in-graph equivalent of the PIL
  BICUBIC resize that `dataset.py` uses, within one 8-bit level of it (PIL also rounds between its
  two passes). Rounded to 8 bits, as PIL's images and LR files are."""
  height, width = hr.shape[-3], hr.shape[-2]
  if height is not None and width is not None:
    size = [height // scale, width // scale]
  else:
    size = tf.shape(hr)[-3:-1] // scale
  lr = tf.image.resize(hr, size, "bicubic", antialias=True)
  return tf.round(tf.clip_by_value(lr, 0.0, 1.0) * 255.0) / 255.0


def augment_pair(lr: tf.Tensor, hr: tf.Tensor, seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """`dataset.py`'s `augment()`: three fair coins for a vertical flip, a horizontal flip and a
  rotation by 180 degrees, each applied to LR and HR alike.

  The official names are crossed (`flip_h` does ImageOps.flip, top to bottom; the mirror records
  `flip_v`; both the mirror and the rotation hang off `rot`; the rotation is logged as `trans`),
  and since a half turn is the two flips together, the coins make only four transforms, each with
  probability 1/4: no quarter turn and no transpose.
  """
  coins = tf.random.stateless_uniform([3], seed) < 0.5
  pair = (lr, hr)
  for coin, transform in (
    (coins[0], tf.image.flip_up_down),  # ImageOps.flip
    (coins[1], tf.image.flip_left_right),  # ImageOps.mirror
    (coins[2], lambda x: tf.image.rot90(x, 2)),  # Image.rotate(180)
  ):
    pair = tf.cond(
      coin, lambda p=pair, t=transform: tuple(t(x) for x in p), lambda p=pair: tuple(p)
    )
  return pair


def training_pairs(
  paths: Sequence[str],
  *,
  scale: int,
  patch_size: int,
  batch_size: int,
  augment: bool = True,
  seed: int = 0,
  start: int = 0,
) -> tf.data.Dataset:
  """Endless batches of (LR [B, p, p, 3], HR [B, p s, p s, 3]) float32 in [0, 1], from element
  `start` of the stream on.

  Element i comes from image i mod n of a seeded shuffle of the n images that changes with every
  pass (each pass visits each image once, as an epoch of `main.py`); its crop place and its
  augmentation depend on (seed, i) alone, the augmentation coins apart from the crop's.
  """
  files = tf.constant([os.fspath(p) for p in paths])
  count = tf.constant(len(paths), tf.int64)
  seed = tf.constant(seed, tf.int64)
  fold_in = tf.random.experimental.stateless_fold_in

  def pair(index):
    chosen = tf.random.experimental.index_shuffle(
      index % count, tf.stack([seed, index // count]), count - 1
    )
    sample_seed = fold_in(tf.stack([seed, tf.constant(1, tf.int64)]), index)
    hr = random_hr_patch(read_rgb(files[chosen]), patch_size * scale, fold_in(sample_seed, 0))
    lr = bicubic_downscale(hr, scale)
    if augment:
      lr, hr = augment_pair(lr, hr, fold_in(sample_seed, 1))
    return lr, hr

  dataset = tf.data.Dataset.range(int(start), 1 << 62)
  dataset = dataset.map(pair, num_parallel_calls=AUTOTUNE, deterministic=True)
  return dataset.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def validation_patches(
  paths: Sequence[str], *, scale: int, patch_size: int
) -> Tuple[np.ndarray, np.ndarray]:
  """(LR [N, p, p, 3], HR [N, p s, p s, 3]) float32: the centre HR patch of each image and its
  downscale, made as the training pairs are."""
  size = patch_size * scale
  if not paths:
    return np.zeros((0, patch_size, patch_size, 3), np.float32), np.zeros(
      (0, size, size, 3), np.float32
    )
  hr = tf.stack([center_hr_patch(read_image(p).pixels, size) for p in paths])
  return bicubic_downscale(hr, scale).numpy(), hr.numpy()


def split_validation(usable: Sequence[str], count: int, seed: int) -> Tuple[list, list]:
  """(training, validation) images: `count` of `usable` held out at seeded random, one image at
  least left for training."""
  held = max(0, min(count, len(usable) - 1))
  order = np.random.default_rng(seed).permutation(len(usable))
  return (
    [usable[i] for i in sorted(order[held:])],
    [usable[i] for i in sorted(order[:held])],
  )


# --- model and optimiser ----------------------------------------------------------------------


def build_model(config: SuperResConfig) -> keras.Model:
  """The network `config` trains, with Kaiming-normal weights."""
  return dbpn.build_dbpn(config.variant, config.scale, residual=config.uses_residual)


def learning_rate_schedule(
  learning_rate: float, total_steps: int
) -> keras.optimizers.schedules.LearningRateSchedule:
  """`learning_rate` for the first half of `total_steps`, a tenth of it from then on.

  main.py divides the rate after its epochs nEpochs / 2 - 1 and nEpochs - 1 (`(epoch + 1) %
  (nEpochs / 2) == 0` with epochs counted from 1): one epoch before half-way, and once more before
  the last epoch. Here the rate drops once, at half of the steps.
  """
  half = max(total_steps // 2, 1)
  # The schedule sees the number of steps already taken: steps 0 ... half - 1 keep the rate.
  return keras.optimizers.schedules.PiecewiseConstantDecay(
    [half - 1], [learning_rate, learning_rate / 10.0]
  )


def make_optimizer(schedule) -> keras.optimizers.Optimizer:
  """main.py's Adam (betas 0.9 / 0.999, eps 1e-8) on `schedule`."""
  return keras.optimizers.Adam(
    schedule,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-8,
  )


def load_initial_weights(model: keras.Model, path: str) -> None:
  """Copies into `model` the weights of a `.keras` DBPN (layer by layer, by name) or a
  `.weights.h5` file of the same variant and scale. The residual setting may differ: the bicubic
  it adds has no weights."""
  if not os.path.isfile(path):
    raise ArgumentError("init", path, "no such file")
  if path.endswith(".weights.h5"):
    # A twin without an optimizer: optimizer state saved in the file stays out of this run.
    twin = keras.Model.from_config(model.get_config())
    with warnings.catch_warnings(record=True) as caught:  # Keras warns of layers it left as built
      warnings.simplefilter("always")
      try:
        twin.load_weights(path)
      except ValueError as e:
        problem = str(e).strip().splitlines()[0]
        raise ArgumentError("init", path, f"does not fit {model.name}: {problem}") from None
    skipped = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
    if skipped:
      raise ArgumentError("init", path, f"does not fit {model.name}: {skipped[0]}")
    model.set_weights(twin.get_weights())
    return
  try:
    source = keras.saving.load_model(path, compile=False)
  except (ValueError, TypeError, OSError) as e:
    raise ArgumentError("init", path, f"cannot be loaded ({e})") from None
  weighted = [layer for layer in model.layers if layer.weights]
  donors = {layer.name: layer for layer in source.layers if layer.weights}
  if len(donors) != len(weighted):
    raise ArgumentError(
      "init", path, f"has {len(donors)} layers with weights, {model.name} has {len(weighted)}"
    )
  for layer in weighted:
    donor = donors.get(layer.name)
    if donor is None:
      raise ArgumentError("init", path, f"has no layer {layer.name}: not a {model.name} network")
    values = donor.get_weights()
    have = [tuple(v.shape) for v in values]
    need = [tuple(w.shape) for w in layer.weights]
    if have != need:
      raise ArgumentError(
        "init", path, f"layer {layer.name} holds shapes {have}, {model.name} needs {need}"
      )
    layer.set_weights(values)


def export_model(model: keras.Model, config: SuperResConfig, directory: pathlib.Path) -> tuple:
  """Writes the plain network (float32, not compiled) as dbpn.keras and dbpn.weights.h5."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  policy = keras.config.dtype_policy()
  keras.config.set_dtype_policy("float32")  # Keras keeps the policy per thread
  try:
    plain = build_model(config)
  finally:
    keras.config.set_dtype_policy(policy)
  plain.set_weights(model.get_weights())
  model_path, weights_path = directory / MODEL_FILE, directory / WEIGHTS_FILE
  plain.save(model_path)
  plain.save_weights(weights_path)
  return model_path, weights_path


# --- callbacks ---------------------------------------------------------------------------------


def upscale(model: keras.Model, lr: np.ndarray, batch_size: int) -> np.ndarray:
  """The model's output for a stack of LR images, in batches; float32, not clipped."""
  parts = [
    np.asarray(model(lr[i : i + batch_size], training=False), np.float32)
    for i in range(0, len(lr), batch_size)
  ]
  return np.concatenate(parts)


class ValidationScores(keras.callbacks.Callback):
  """After every epoch, adds to the logs the validation patches' mean PSNR and SSIM (Y channel,
  `scale` pixels shaved per border, the model's output clipped and rounded to 8 bits:
  `tfpets.superres.metrics.sr_scores`) as val_psnr and val_ssim, and their L1 loss as val_loss."""

  def __init__(self, lr: np.ndarray, hr: np.ndarray, scale: int, batch_size: int):
    super().__init__()
    self.lr, self.hr, self.scale, self.batch_size = lr, hr, scale, batch_size
    self.hr_uint8 = metrics.float01_to_uint8(hr)

  def scores(self) -> dict:
    sr = upscale(self.model, self.lr, self.batch_size)
    sr_uint8 = metrics.float01_to_uint8(sr)
    scores = [metrics.sr_scores(s, h, self.scale) for s, h in zip(sr_uint8, self.hr_uint8)]
    return {
      "val_loss": float(np.mean(np.abs(sr - self.hr))),
      "val_psnr": float(np.mean([s["psnr"] for s in scores])),
      "val_ssim": float(np.mean([s["ssim"] for s in scores])),
    }

  def on_epoch_end(self, epoch, logs=None):
    if logs is not None:
      logs.update(self.scores())


def comparison_rows(model: keras.Model, lr: np.ndarray, hr: np.ndarray, scale: int) -> np.ndarray:
  """[3N, H, W, 3] in [0, 1]: for each patch its bicubic upscale, the model's output and the HR
  patch, side by side as rows of three."""
  bicubic = np.asarray(dbpn.BicubicUpscale(scale)(lr))
  sr = upscale(model, lr, len(lr))
  rows = np.stack([bicubic, sr, hr], axis=1).reshape((-1,) + hr.shape[1:])
  return np.clip(rows, 0.0, 1.0)


class EpochSummaries(keras.callbacks.Callback):
  """TensorBoard: the epoch's scalars, the learning rate of its last step, and a grid of
  (LR bicubic | SR | HR) patches."""

  def __init__(self, writer, schedule, lr: np.ndarray, hr: np.ndarray, scale: int):
    super().__init__()
    self.writer, self.schedule = writer, schedule
    self.lr, self.hr, self.scale = lr, hr, scale

  def on_epoch_end(self, epoch, logs=None):
    values = {k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}
    steps = int(self.model.optimizer.iterations.numpy())
    values["learning_rate"] = float(self.schedule(max(steps - 1, 0)))
    self.writer.scalars({f"superres/{k}": v for k, v in values.items()}, epoch + 1)
    rows = comparison_rows(self.model, self.lr, self.hr, self.scale)
    self.writer.grid("superres/lr_bicubic_sr_hr", rows, epoch + 1, columns=3)


# --- training ----------------------------------------------------------------------------------


def paths(workdir: pathlib.Path) -> tuple:
  """(checkpoints, models, reports) folders of a superres run."""
  workdir = pathlib.Path(workdir)
  return workdir / "checkpoints" / "superres", workdir / "models", workdir / "reports"


@dataclasses.dataclass
class _Data:
  train: List[str]
  val: List[str]
  rejects: RejectsReport
  too_small: int
  undecodable: int


def _find_images(hr_dir: str, config: SuperResConfig) -> _Data:
  scan = usable_images(hr_dir, config.hr_patch, "hr_dir")
  rejects, too_small, undecodable = scan.rejects, scan.too_small, scan.undecodable
  if config.val_images <= 0:
    train, val = scan.usable, []
  elif config.val_dir:
    val_scan = usable_images(config.val_dir, config.hr_patch, "val_dir")
    train, val = scan.usable, val_scan.usable[: config.val_images]
    rejects.extend(val_scan.rejects)
    too_small, undecodable = too_small + val_scan.too_small, undecodable + val_scan.undecodable
  else:
    train, val = split_validation(scan.usable, config.val_images, config.seed)
  return _Data(train, val, rejects, too_small, undecodable)


def _sharded(dataset: tf.data.Dataset, strategy) -> tf.data.Dataset:
  """Under several workers, each takes its share of the batches: the stream reads no files that
  tf.data could shard by."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return dataset
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return dataset.with_options(options)


def train_superres(
  hr_dir: str,
  workdir: pathlib.Path,
  config: SuperResConfig,
  strategy: Optional[tf.distribute.Strategy] = None,
  writer=None,
  extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
  """Trains (or resumes, or finds done) the DBPN of `config` on the images under `hr_dir`;
  returns the run's summary, also written to reports/superres_train.json."""
  checkpoints, models_dir, reports = paths(workdir)
  summary = training.finished_summary(checkpoints)
  if summary is not None and (models_dir / MODEL_FILE).is_file():
    logging.info("superres: already trained (%s); nothing to do", models_dir)
    return summary
  data = _find_images(os.fspath(hr_dir), config)
  chief = strategy is None or strategy_lib.is_chief(strategy)
  if data.rejects and chief:
    data.rejects.write_csv(str(reports / REJECTS_FILE))
  with training.worker_save_dir(checkpoints, chief, "tfpets-superres-") as save_dir:
    run = _Run(data, config, pathlib.Path(workdir), checkpoints, save_dir)
    return _train(run, strategy, writer if chief else None, extra_callbacks)


@dataclasses.dataclass
class _Run:
  data: _Data
  config: SuperResConfig
  workdir: pathlib.Path
  checkpoints: pathlib.Path  # the run's checkpoints, which every worker resumes from
  save_dir: pathlib.Path  # where this worker saves: `checkpoints` on the chief


def _train(run: _Run, strategy, writer, extra_callbacks) -> dict:
  data, config, checkpoints, save_dir = run.data, run.config, run.checkpoints, run.save_dir
  chief = save_dir == checkpoints
  _, models_dir, reports = paths(run.workdir)
  steps = config.steps_per_epoch or max(1, math.ceil(len(data.train) / config.batch_size))
  total_steps = config.epochs * steps
  schedule = learning_rate_schedule(config.learning_rate, total_steps)
  keras.utils.set_random_seed(config.seed)
  scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
  with scope:
    model = build_model(config)
    optimizer = make_optimizer(schedule)
    model.compile(
      optimizer=optimizer, loss=keras.losses.MeanAbsoluteError(), jit_compile=config.jit_compile
    )
    model.optimizer.build(model.trainable_variables)
  save_dir.mkdir(parents=True, exist_ok=True)
  if not chief and (checkpoints / training.STATE_FILE).is_file():
    shutil.copy(checkpoints / training.STATE_FILE, save_dir)  # the chief's counters
  helper = CheckpointHelper(save_dir, max_to_keep=2, model=model, optimizer=model.optimizer)
  initial_epoch = helper.restore_or_initialize(checkpoints)
  if initial_epoch == 0 and config.init:
    load_initial_weights(model, config.init)
  train_ds = training_pairs(
    data.train,
    scale=config.scale,
    patch_size=config.patch_size,
    batch_size=config.batch_size,
    augment=config.augment,
    seed=config.seed,
    start=initial_epoch * steps * config.batch_size,
  )
  train_ds = _sharded(train_ds, strategy)
  training.prepare_multiworker_fit(model, strategy, next(iter(train_ds)))
  val_lr, val_hr = validation_patches(data.val, scale=config.scale, patch_size=config.patch_size)
  callbacks, best = _callbacks(config, save_dir, helper, val_lr, val_hr)
  if writer is not None:
    callbacks.append(EpochSummaries(writer, schedule, *_grid_patches(data, config, val_lr, val_hr)))
  callbacks.extend(extra_callbacks)
  logging.info(
    "superres: %s x%d%s, %d training and %d validation images, %d steps/epoch of %d patches, "
    "epochs %d..%d, rate / 10 after step %d",
    config.variant,
    config.scale,
    " (residual)" if config.uses_residual else "",
    len(data.train),
    len(data.val),
    steps,
    config.batch_size,
    initial_epoch + 1,
    config.epochs,
    max(total_steps // 2, 1),
  )
  start = time.time()
  history = model.fit(
    train_ds,
    epochs=config.epochs,
    initial_epoch=initial_epoch,
    steps_per_epoch=steps,
    callbacks=callbacks,
    shuffle=False,  # the stream is shuffled already
    verbose=2,
  )
  seconds = time.time() - start
  steps_taken = int(model.optimizer.iterations.numpy())
  if best is not None and best.path.is_file():
    model.load_weights(str(best.path))
  summary = {
    "model": f"{config.variant} x{config.scale}",
    "residual": config.uses_residual,
    "init": config.init or "kaiming",
    "epochs_run": training.read_state(save_dir).get("epoch", 0),
    "optimizer_steps": steps_taken,
    "planned_steps": total_steps,
    "decay_step": max(total_steps // 2, 1),
    "last_learning_rate": float(schedule(max(steps_taken - 1, 0))),
    "steps_per_epoch": steps,
    "batch_size": config.batch_size,
    "lr_patch": config.patch_size,
    "hr_patch": config.hr_patch,
    "train_images": len(data.train),
    "val_images": len(data.val),
    "skipped_too_small": data.too_small,
    "skipped_undecodable": data.undecodable,
    "best_epoch": best.best_epoch + 1 if best is not None else None,
    "best_val_psnr": best.best if best is not None else None,
    "last_epoch": {k: float(v[-1]) for k, v in history.history.items() if v},
    "fit_seconds_this_run": round(seconds, 1),
    "parameters": int(model.count_params()),
  }
  if chief:
    model_path, weights_path = export_model(model, config, models_dir)
    summary.update(model_file=str(model_path), weights_file=str(weights_path))
    reports.mkdir(parents=True, exist_ok=True)
    (reports / REPORT_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    training.mark_done(checkpoints, summary)
  return summary


def _grid_patches(data: _Data, config: SuperResConfig, val_lr, val_hr) -> tuple:
  """(LR, HR, scale) of the TensorBoard grid: validation patches, else the first training ones."""
  if len(val_lr):
    return val_lr[: config.grid_images], val_hr[: config.grid_images], config.scale
  first = training_pairs(
    data.train,
    scale=config.scale,
    patch_size=config.patch_size,
    batch_size=config.grid_images,
    augment=False,
    seed=config.seed,
  )
  lr, hr = next(iter(first))
  return lr.numpy(), hr.numpy(), config.scale


def _callbacks(config, directory, helper, val_lr, val_hr):
  """(callbacks, best-weights callback or None): validation scores, the best weights and the state
  that resumes them, the time budget."""
  callbacks, tracked, best = [], {}, None
  if len(val_lr):
    callbacks.append(ValidationScores(val_lr, val_hr, config.scale, config.batch_size))
    best = training.BestWeights(directory / training.BEST_WEIGHTS_FILE, "val_psnr", "max")
    callbacks.append(best)
    tracked["best"] = best
  callbacks.append(training.ResumeState(helper, directory, tracked))
  if config.train_minutes > 0:
    callbacks.append(training.TimeBudget(config.train_minutes * 60.0))
  return callbacks, best
