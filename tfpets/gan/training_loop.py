"""The StyleGAN2-ADA training loop: ticks, snapshots, metrics, checkpoints and resuming.

The loop of NVlabs/stylegan2-ada-pytorch (`training/training_loop.py`, `train.py`) around
`tfpets.gan.train_step.GanTrainer`, which runs one iteration per global batch:

- A tick ends every `kimg_per_tick` thousand images (the first after one iteration, as in the
  official loop). Each tick logs one progress line (tick, kimg, sec/tick, sec/kimg, maintenance,
  peak memory, augment p, G and D losses), draws a progress bar within the tick when stderr is a
  terminal, and writes TensorBoard scalars: the trainer's statistics averaged over the tick
  (`Loss/*`; `Loss/signs/real` is the ADA overfitting heuristic r_t), `Progress/*`, `Timing/*`
  and `Resources/*`.
- Every `snap` ticks and at the end: a grid of fakes drawn by G_ema from latents fixed for the
  run (`images/fakes%06d.png`, TensorBoard `Images/fakes`; the reals once, `images/reals.png`), a
  network snapshot (`snapshots/network-snapshot-%06d/`, `tfpets.gan.snapshot`), the metrics of
  that snapshot (`reports/metric-<name>.jsonl`, TensorBoard `Metrics/<name>`) and a checkpoint of
  the whole training state (`checkpoints/`, the last `keep_checkpoints` kept).

Resuming. The checkpoint holds G, D, G_ema, both Adam states, pl_mean, augment p and the ADA
statistics, the counters (images, iterations, skipped updates), the tick and the data position.
The trainer's random draws are stateless functions of (seed, iteration), and the data stream is a
function of (seed, images read) (`tfpets.data.pipeline.multires_dataset(start=...)`), so the same
command after a kill continues from the newest complete checkpoint as if never stopped
(`tf.train.CheckpointManager` writes its state file last, so a checkpoint being written when the
process died is never read). Metric lines written after that checkpoint are dropped, to be
written again. `resume` is something else: the official `--resume`, transfer learning from the
weights of a snapshot, a run folder or an official TF1/PyTorch pickle, with fresh counters, Adam
state and p, `ada_kimg` 100 and no G_ema ramp-up.

Multi-worker. Every worker reads the same global batches and runs the same iteration; only the
chief (task 0) writes to the workdir. The others save their checkpoint into a temporary folder
that is deleted, as TensorFlow's multi-worker checkpointing asks, so that any collective a save
involves has every worker; all restore from the chief's checkpoints, so the workers share one
workdir.

API:
  TrainOptions: a resolved run; `resolve_options(...)` builds it from `train.py`-style arguments.
  train(options, records_dir, workdir, strategy=None, writer=None) -> summary dict.
  records_info(records_dir) -> RecordsInfo.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import resource
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.data import pipeline
from tfpets.data.tfrecord import multires
from tfpets.errors import ArgumentError
from tfpets.gan import augment as augment_lib
from tfpets.gan import inception, presets, snapshot, train_step
from tfpets.gan import metrics as metrics_lib
from tfpets.gan.presets import NetworkConfig
from tfpets.runtime import strategy as strategy_lib
from tfpets.runtime.checkpoint import CheckpointHelper
from tfpets.runtime.tensorboard import SummaryWriter
from tfpets.runtime.workdir import Workdir

CPU_PRESET = "cpu"
PRESETS = (CPU_PRESET, *presets.PRESETS)
AUG_MODES = train_step.AUG_MODES
KIMG_PER_TICK = 4.0
RUN_FILE = "run.json"  # the network config of the run in checkpoints/, checked on restore

# The official train.py defaults that the CPU preset changes.
_OFFICIAL_SNAP = 50
_OFFICIAL_METRICS = ("fid50k_full",)
# The CPU preset: the `demo` networks narrowed for 2 CPU cores, at 32 px from the multi-resolution
# records, a batch of 16, and a run long enough to show learning (docs/gan.md).
_CPU = {
  "base": "demo",
  "resolution": 32,
  "network": {"z_dim": 64, "w_dim": 64, "channel_max": 32},
  "batch": 16,
  "kimg": 40,
  "snap": 3,
  "metrics": ("fid2k_full",),
}


@dataclasses.dataclass(frozen=True)
class RecordsInfo:
  """What the StyleGAN records of a dataset hold: top resolution, label size, image count."""

  resolution: int
  label_size: int
  count: int


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """A resolved training run.

  Attributes:
    network: The networks' configuration (replaced by the resume source's when there is one).
    settings: The trainer's settings (batch, batch_gpu, lr, gamma, ema, ADA, ...).
    total_kimg: Length of the run in thousands of real images shown to D.
    kimg_per_tick: Thousands of images per tick (official: 4).
    snap: Ticks between snapshots (grid, network, metrics, checkpoint).
    metrics: Metric names (`tfpets.gan.metrics`), evaluated on every snapshot; () = none.
    augpipe: The augmentation pipeline (`tfpets.gan.augment.AUGPIPES`) when settings.aug != noaug.
    mirror: x-flip each training image with probability 0.5 (a stateless draw per image).
    resume: Transfer learning from a snapshot folder, run folder or official pickle ('' = none).
    freezed: Freeze-D, the number of D layers from the top resolution left untrained.
    seed: Seed of the weights, the data order, the trainer's draws and the grid latents.
    keep_checkpoints: Checkpoints kept.
    grid: (columns, rows) of the image grids; None = the official fit to 7680 x 4320 pixels.
    inception_graph: The Inception graph for standard FID/KID ('' = the seeded stand-in).
    metrics_cache: Folder of cached real-image features (None = not cached).
    metrics_batch: Images per batch when computing metrics and grids.
    progress_bar: Draw a progress bar on stderr within each tick (None = when it is a terminal).
    preset: Name of the preset the options came from (recorded with the snapshots).
  """

  network: NetworkConfig
  settings: train_step.TrainSettings
  total_kimg: float
  kimg_per_tick: float = KIMG_PER_TICK
  snap: int = _OFFICIAL_SNAP
  metrics: tuple[str, ...] = _OFFICIAL_METRICS
  augpipe: str = "bgc"
  mirror: bool = False
  resume: str = ""
  freezed: int = 0
  seed: int = 0
  keep_checkpoints: int = 3
  grid: Optional[tuple[int, int]] = None
  inception_graph: str = ""
  metrics_cache: Optional[str] = None
  metrics_batch: int = 32
  progress_bar: Optional[bool] = None
  preset: str = ""

  def __post_init__(self):
    object.__setattr__(self, "metrics", tuple(self.metrics))
    checks = (
      ("total_kimg", self.total_kimg > 0, "must be > 0"),
      ("kimg_per_tick", self.kimg_per_tick > 0, "must be > 0"),
      ("snap", self.snap >= 1, "must be >= 1"),
      ("keep_checkpoints", self.keep_checkpoints >= 1, "must be >= 1"),
      ("freezed", self.freezed >= 0, "must be >= 0"),
      ("augpipe", self.augpipe in augment_lib.AUGPIPES, f"not one of {', '.join(_augpipes())}"),
    )
    for name, ok, problem in checks:
      if not ok:
        raise ArgumentError(name, getattr(self, name), problem)
    for name in self.metrics:
      try:
        metrics_lib.parse_metric_name(name)
      except ValueError as e:
        raise ArgumentError("metrics", name, str(e)) from None


def _augpipes() -> list[str]:
  return list(augment_lib.AUGPIPES)


def records_info(records_dir: str | os.PathLike) -> RecordsInfo:
  top = multires.level_files(records_dir)[0]
  labels = multires.read_labels(records_dir)
  count = len(labels) if labels is not None else sum(1 for _ in tf.data.TFRecordDataset(top))
  label_size = 0 if labels is None else int(labels.shape[1])
  return RecordsInfo(2 ** int(top[-12:-10]), label_size, count)


def resolve_options(
  preset: str,
  records: RecordsInfo,
  *,
  gpus: int = 1,
  resolution: int = 0,
  cond: bool = False,
  gamma: Optional[float] = None,
  kimg: Optional[float] = None,
  batch: Optional[int] = None,
  batch_gpu: Optional[int] = None,
  snap: Optional[int] = None,
  aug: str = "ada",
  p: Optional[float] = None,
  target: Optional[float] = None,
  resume: str = "",
  metrics: Optional[Sequence[str]] = None,
  jit_compile: bool = False,
  **options: Any,
) -> TrainOptions:
  """TrainOptions as the official `train.py` resolves its arguments (`setup_training_loop_kwargs`).

  `None` (0 for `resolution`) keeps the preset's value; the CPU preset's resolution is 32 and the
  others train at the records' resolution. `metrics=['none']` evaluates none. Other keyword
  arguments are TrainOptions fields. Raises ArgumentError naming the argument at fault.
  """
  if preset not in PRESETS:
    raise ArgumentError("preset", preset, f"not one of {', '.join(PRESETS)}")
  cpu = preset == CPU_PRESET
  base = _CPU["base"] if cpu else preset
  if not resolution and cpu and _CPU["resolution"] > records.resolution:
    raise ArgumentError(
      "preset",
      preset,
      f"trains at {_CPU['resolution']} px, above the records' {records.resolution} px; give a "
      "resolution",
    )
  resolution = resolution or (_CPU["resolution"] if cpu else records.resolution)
  _check_resolution(resolution, records)
  if cond and not records.label_size:
    raise ArgumentError("cond", cond, "the records have no labels (a -rxx.labels file)")
  if aug not in AUG_MODES:
    raise ArgumentError("aug", aug, f"not one of {', '.join(AUG_MODES)}")
  if p is not None and (aug != "fixed" or not 0 <= p <= 1):
    raise ArgumentError("p", p, "needs aug=fixed and a value in [0, 1]")
  if target is not None and (aug != "ada" or not 0 <= target <= 1):
    raise ArgumentError("target", target, "needs aug=ada and a value in [0, 1]")
  if gamma is not None and gamma < 0:
    raise ArgumentError("gamma", gamma, "must be >= 0")
  config = presets.training_config(base, resolution, gpus)
  batch = batch or (_CPU["batch"] if cpu else config.batch)
  if batch < 1 or batch % gpus:
    raise ArgumentError("batch", batch, f"must be a positive multiple of the {gpus} replica(s)")
  if batch != config.batch:  # official train.py: --batch sets batch_gpu = batch / gpus
    config = _with_batch(base, config, batch, resolution, gpus)
  batch_gpu = batch_gpu or batch // config.ref_gpus
  batch_gpu = max(min(batch_gpu, batch // gpus), 1)
  mbstd = min(config.mbstd_group_size, batch_gpu)
  if batch_gpu % mbstd or batch % (batch_gpu * gpus):
    raise ArgumentError(
      "batch_gpu",
      batch_gpu,
      f"must divide the batch per replica ({batch // gpus}) and be a multiple of the minibatch-"
      f"stddev group ({mbstd})",
    )
  network = presets.network_config(
    base,
    resolution,
    c_dim=records.label_size if cond else 0,
    gpus=gpus,
    mbstd_group_size=config.mbstd_group_size,
    **(_CPU["network"] if cpu else {}),
  )
  overrides: dict[str, Any] = dict(batch=batch, batch_gpu=batch_gpu, aug=aug)
  overrides.update(jit_compile=jit_compile)
  if gamma is not None:
    overrides["r1_gamma"] = gamma
  if p is not None:
    overrides["p"] = p
  if target is not None:
    overrides["ada_target"] = target
  if resume:  # official train.py: transfer learning adapts p faster and has no ema ramp-up
    overrides.update(ada_kimg=100.0, ema_rampup=None)
  settings = train_step.TrainSettings.from_training_config(config, **overrides)
  if metrics is None:
    metrics = _CPU["metrics"] if cpu else _OFFICIAL_METRICS
  metrics = () if list(metrics) in ([], ["none"]) else tuple(metrics)
  return TrainOptions(
    network=network,
    settings=settings,
    total_kimg=kimg or (_CPU["kimg"] if cpu else config.kimg),
    snap=snap or (_CPU["snap"] if cpu else _OFFICIAL_SNAP),
    metrics=metrics,
    resume=resume,
    preset=preset,
    **options,
  )


def _check_resolution(resolution: int, records: RecordsInfo) -> None:
  if resolution < 4 or resolution & (resolution - 1) or resolution > records.resolution:
    raise ArgumentError(
      "resolution",
      resolution,
      f"must be a power of two from 4 to the records' {records.resolution} px",
    )


def _with_batch(
  preset: str, config: presets.TrainingConfig, batch: int, resolution: int, gpus: int
) -> presets.TrainingConfig:
  """The training config with another batch, split over the replicas; the auto formulas of gamma
  and ema follow it."""
  fields: dict[str, Any] = dict(batch=batch, ref_gpus=gpus)
  if preset in ("auto", "demo"):
    fields.update(
      r1_gamma=0.0002 * resolution**2 / batch,
      ema_kimg=batch * 10 / 32,
      mbstd_group_size=min(batch // gpus, 4),
    )
  return dataclasses.replace(config, **fields)


# --- The run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Tick:
  """Statistics of the tick being run."""

  start_nimg: int
  start_time: float
  values: dict[str, list] = dataclasses.field(default_factory=dict)

  def add(self, results: Mapping[str, tf.Tensor]) -> None:
    for name, value in results.items():
      self.values.setdefault(name, []).append(value)

  def means(self) -> dict[str, float]:
    return {k: float(np.mean([float(v) for v in vs])) for k, vs in self.values.items()}


class _ProgressBar:
  """A one-line bar within the tick on stderr, only when stderr is a terminal."""

  def __init__(self, enabled: Optional[bool]):
    self.enabled = sys.stderr.isatty() if enabled is None else enabled
    self._drawn = False

  def draw(self, tick: int, done_nimg: int, tick_nimg: int) -> None:
    if not self.enabled:
      return
    fraction = min(max(done_nimg / max(tick_nimg, 1), 0.0), 1.0)
    bar = "#" * int(fraction * 30)
    sys.stderr.write(f"\rtick {tick} [{bar:<30}] {done_nimg / 1000:.2f}/{tick_nimg / 1000:g} kimg")
    sys.stderr.flush()
    self._drawn = True

  def clear(self) -> None:
    if self._drawn:
      sys.stderr.write("\r\033[K")
      sys.stderr.flush()
      self._drawn = False


def _peak_memory_gb() -> tuple[float, float]:
  """(peak host RSS, peak GPU memory over the GPUs) in GiB since the last call (GPU) / start."""
  host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux
  gpu = 0.0
  for device in tf.config.list_logical_devices("GPU"):
    gpu = max(gpu, tf.config.experimental.get_memory_info(device.name)["peak"] / 2**30)
    tf.config.experimental.reset_memory_stats(device.name)
  return host, gpu


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


class _Run:
  """One call of `train`: the trainer, its checkpoint, data and outputs."""

  def __init__(self, options, records_dir, workdir, strategy, writer):
    self.options = options
    self.records_dir = str(records_dir)
    self.workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    self.strategy = strategy or tf.distribute.get_strategy()
    self.chief = strategy_lib.is_chief(self.strategy)
    self.writer = writer
    self.checkpoint_dir = self.workdir.root / "checkpoints"
    self.last_metrics: dict[str, float] = {}

  # -- set-up ----------------------------------------------------------------------------------

  def build(self) -> None:
    options = self.options
    run_file = self.checkpoint_dir / RUN_FILE
    resumed = tf.train.latest_checkpoint(str(self.checkpoint_dir)) is not None
    source = None
    if resumed:
      config = self._checkpointed_config(run_file)
    elif options.resume:
      source = self._read_resume_source()
      config = source[0]
    else:
      config = options.network
    self.config = config
    pipe = None if options.settings.aug == "noaug" else augment_lib.AugmentPipe(options.augpipe)
    self.trainer = train_step.GanTrainer(
      config, options.settings, self.strategy, pipe, options.seed, freezed=options.freezed
    )
    self.tick_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="tick")
    self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="data_position")
    items = dict(self.trainer.checkpoint_items(), tick=self.tick_var, data_position=self.position)
    # Not the chief: a folder of its own that each save creates and the loop then deletes.
    temporary = pathlib.Path(tempfile.gettempdir()) / f"tfpets-gan-ckpt-{uuid.uuid4().hex}"
    self.save_dir = self.checkpoint_dir if self.chief else temporary
    self.checkpoints = CheckpointHelper(self.save_dir, options.keep_checkpoints, **items)
    if resumed:
      latest = tf.train.latest_checkpoint(str(self.checkpoint_dir))
      self.checkpoints.checkpoint.restore(latest).expect_partial()
      logging.info("gan: resumed from %s", latest)
    elif source is not None:
      self._start_from(source)
    self._check_workers_agree()
    if self.chief:
      self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
      payload = {"network": config.to_dict(), "preset": options.preset}
      tmp = run_file.with_suffix(".json.tmp")
      tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
      os.replace(tmp, run_file)
      if self.writer is None:
        self.writer = SummaryWriter(self.workdir.logs / "train")
      if options.metrics:
        self.feature_network = _feature_network(options.inception_graph)
        self.real_images = metrics_lib.records_images(self.records_dir, config.resolution)

  def _checkpointed_config(self, run_file: pathlib.Path) -> NetworkConfig:
    if not run_file.is_file():
      return self.options.network
    config = NetworkConfig.from_dict(json.loads(run_file.read_text())["network"], str(run_file))
    if config != self.options.network and not self.options.resume:
      raise ArgumentError(
        "workdir",
        str(self.workdir.root),
        "holds the checkpoints of a run with other networks; give another workdir",
      )
    return config

  def _read_resume_source(self) -> tuple:
    options = self.options
    try:
      config, models, what = snapshot.read_start_networks(options.resume)
    except (FileNotFoundError, ValueError) as e:
      raise ArgumentError("resume", options.resume, str(e).partition(": ")[2] or str(e)) from None
    wanted = options.network
    if (config.resolution, config.c_dim) != (wanted.resolution, wanted.c_dim):
      raise ArgumentError(
        "resume",
        options.resume,
        f"its networks make {config.resolution} px images with {config.c_dim} labels; this run "
        f"trains at {wanted.resolution} px with {wanted.c_dim}",
      )
    logging.info("gan: transfer learning from %s (its network configuration)", what)
    return config, models, what

  def _start_from(self, source: tuple) -> None:
    _, models, what = source
    trainer = self.trainer
    with self.strategy.scope():
      for name, target in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.G_ema)):
        model = models.get(name) or (models.get("G") if name == "G_ema" else None)
        if model is None:
          logging.warning("gan: %s holds no %s; it starts from random weights", what, name)
          continue
        snapshot.copy_weights(model, target)

  def _check_workers_agree(self) -> None:
    """Multi-worker: every worker must have restored the same checkpoint (one shared workdir)."""
    if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return
    local = tf.cast(self.trainer.cur_nimg.read_value(), tf.float64)
    mean = self.strategy.reduce("MEAN", self.strategy.run(lambda: tf.identity(local)), axis=None)
    spread = self.strategy.run(lambda: tf.square(local - mean))
    if float(self.strategy.reduce("SUM", spread, axis=None)) != 0:  # every worker sees the same
      raise ArgumentError(
        "workdir",
        str(self.workdir.root),
        "the workers resumed from different checkpoints; give every worker the same workdir",
      )

  # -- data ------------------------------------------------------------------------------------

  def batches(self, start: int) -> Iterable:
    ds = pipeline.multires_dataset(
      self.records_dir,
      batch_size=self.options.settings.batch,
      resolution=self.config.resolution,
      mirror=self.options.mirror,
      seed=self.options.seed,
      start=start,
    )
    return iter(ds)

  def generated_labels(self, labels: Optional[np.ndarray], batch_idx: Any) -> Optional[np.ndarray]:
    """Labels of the fakes, one row per phase: dataset labels drawn by (seed, iteration)."""
    if not self.config.c_dim or labels is None:
      return None
    rng = np.random.default_rng([self.options.seed, int(batch_idx.numpy())])
    batch = self.options.settings.batch
    return labels[rng.integers(0, len(labels), size=(len(train_step.PHASES), batch))]

  def real_grid(self) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images, labels) of the real grid: the first images of the run's data stream."""
    columns, rows = self.grid_shape
    ds = pipeline.multires_dataset(
      self.records_dir,
      batch_size=columns * rows,
      resolution=self.config.resolution,
      mirror=self.options.mirror,
      seed=self.options.seed,
      start=0,
      cache=False,
    )
    images, labels = next(iter(ds))
    return snapshot.to_uint8(images), labels.numpy()

  @property
  def grid_shape(self) -> tuple[int, int]:
    return self.options.grid or snapshot.grid_shape(self.config.resolution)

  # -- outputs (chief only) --------------------------------------------------------------------

  def write_tick(self, tick: int, cur_nimg: int, stats: _Tick, maintenance: float, start: float):
    now = time.time()
    tick_time = now - stats.start_time
    tick_kimg = (cur_nimg - stats.start_nimg) / 1000
    host_gb, gpu_gb = _peak_memory_gb()
    means = stats.means()
    sec_per_kimg = tick_time / tick_kimg if tick_kimg else 0.0
    fields = [
      f"tick {tick:<5d}",
      f"kimg {cur_nimg / 1000:<8.1f}",
      f"time {_format_seconds(now - start):<12s}",
      f"sec/tick {tick_time:<7.1f}",
      f"sec/kimg {sec_per_kimg:<7.2f}",
      f"maintenance {maintenance:<6.1f}",
      f"cpumem {host_gb:<6.2f}",
      f"gpumem {gpu_gb:<6.2f}",
      f"augment {means.get('Progress/augment', 0.0):.3f}",
      f"loss G {means.get('Loss/G/loss', float('nan')):.3f}",
      f"D {means.get('Loss/D/loss', float('nan')):.3f}",
    ]
    logging.info("%s", " ".join(fields))
    if self.writer is None:
      return
    scalars = dict(means)
    scalars.update(
      {
        "Progress/tick": tick,
        "Progress/kimg": cur_nimg / 1000,
        "Timing/total_sec": now - start,
        "Timing/sec_per_tick": tick_time,
        "Timing/sec_per_kimg": sec_per_kimg,
        "Timing/maintenance_sec": maintenance,
        "Resources/peak_host_mem_gb": host_gb,
        "Resources/peak_gpu_mem_gb": gpu_gb,
      }
    )
    self.writer.scalars(scalars, step=cur_nimg // 1000)

  def write_reals(self, images: np.ndarray) -> None:
    path = self.workdir.images / "reals.png"
    if path.is_file():
      return
    grid = snapshot.write_grid(path, images, self.grid_shape[0])
    if self.writer is not None:
      self.writer.images("Images/reals", grid[None], step=0, max_outputs=1)

  def write_snapshot(self, cur_nimg: int, tick: int, grid_z, grid_c) -> None:
    G_ema = self.trainer.G_ema
    images = snapshot.generate_images(G_ema, grid_z, grid_c, self.options.metrics_batch)
    path = self.workdir.images / snapshot.fakes_name(cur_nimg)
    grid = snapshot.write_grid(path, images, self.grid_shape[0])
    if self.writer is not None:
      self.writer.images("Images/fakes", grid[None], step=cur_nimg // 1000, max_outputs=1)
    models = {"G": self.trainer.G, "D": self.trainer.D, "G_ema": G_ema}
    extra = {"tick": tick, "preset": self.options.preset, "seed": self.options.seed}
    directory = snapshot.save_snapshot(self.workdir.root, cur_nimg, self.config, models, extra)
    if self.options.metrics:
      self.write_metrics(directory, cur_nimg)

  def write_metrics(self, directory: pathlib.Path, cur_nimg: int) -> None:
    results = metrics_lib.compute_metrics(
      self.options.metrics,
      self.trainer.G_ema,
      self.real_images,
      self.feature_network,
      cache_dir=self.options.metrics_cache,
      batch_size=self.options.metrics_batch,
      seed=self.options.seed,
    )
    metrics_lib.append_metric_lines(self.workdir.reports, results, str(directory), cur_nimg / 1000)
    values = {k: v for k, v in results.items() if k != "feature_network"}
    self.last_metrics = values
    logging.info(
      "gan: %s (%s)",
      ", ".join(f"{k} {v:.4g}" for k, v in values.items()),
      results["feature_network"],
    )
    if self.writer is not None:
      self.writer.scalars({f"Metrics/{k}": v for k, v in values.items()}, step=cur_nimg // 1000)

  def save_checkpoint(self, cur_nimg: int) -> None:
    path = self.checkpoints.save(cur_nimg)
    if not self.chief:
      shutil.rmtree(self.save_dir, ignore_errors=True)
    else:
      logging.info("gan: checkpoint %s", path)

  def close(self) -> None:
    if not self.chief:
      shutil.rmtree(self.save_dir, ignore_errors=True)


def _feature_network(path: str) -> inception.FeatureNetwork:
  try:
    return inception.load_feature_network(path or None)
  except inception.FeatureNetworkError as e:
    raise ArgumentError("inception_graph", path, str(e).partition(": ")[2] or str(e)) from None


def _forget_metric_lines_after(reports_dir: pathlib.Path, kimg: float) -> None:
  """Drops metric lines of snapshots after `kimg`: a resumed run writes them again."""
  for path in reports_dir.glob("metric-*.jsonl"):
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line and (json.loads(line).get("kimg") or 0) <= kimg + 1e-9]
    if len(kept) != len(lines):
      tmp = path.with_suffix(".jsonl.tmp")
      tmp.write_text("".join(line + "\n" for line in kept))
      os.replace(tmp, path)


def train(
  options: TrainOptions,
  records_dir: str | os.PathLike,
  workdir: Workdir | str | os.PathLike,
  strategy: Optional[tf.distribute.Strategy] = None,
  writer: Optional[SummaryWriter] = None,
) -> dict:
  """Trains (or continues training) until `options.total_kimg`; returns a summary of the outputs.

  Args:
    options: The run (`resolve_options`).
    records_dir: StyleGAN multi-resolution records (`multires.find_directory`).
    workdir: The run's folder (a `Workdir` or a path): checkpoints/, snapshots/, images/,
      reports/, logs/train (TensorBoard).
    strategy: A tf.distribute strategy; None = the current one.
    writer: TensorBoard writer of the chief; None = one on workdir/logs/train.
  """
  run = _Run(options, records_dir, workdir, strategy, writer)
  run.build()
  trainer, settings = run.trainer, options.settings
  total_nimg = int(round(options.total_kimg * 1000))
  tick_nimg = int(round(options.kimg_per_tick * 1000))
  cur_nimg = int(trainer.cur_nimg.numpy())
  cur_tick = int(run.tick_var.numpy())
  labels = multires.read_labels(run.records_dir) if run.config.c_dim else None
  grid_z = grid_c = None
  if run.chief:
    _forget_metric_lines_after(run.workdir.reports, cur_nimg / 1000)
    real_images, real_labels = run.real_grid()
    run.write_reals(real_images)
    grid_z = snapshot.fixed_latents(len(real_images), run.config.z_dim, options.seed)
    grid_c = real_labels.astype(np.float32) if run.config.c_dim else None
  start_time = time.time()
  bar = _ProgressBar(options.progress_bar if run.chief else False)
  done = cur_nimg >= total_nimg
  if not done:
    logging.info(
      "gan: training %s px, batch %d, from %.1f to %g kimg; outputs in %s",
      run.config.resolution,
      settings.batch,
      cur_nimg / 1000,
      options.total_kimg,
      run.workdir.root,
    )
  data = run.batches(int(run.position.numpy())) if not done else None
  stats = _Tick(cur_nimg, time.time())
  maintenance = 0.0
  while not done:
    reals, real_c = next(data)
    gen_c = run.generated_labels(labels, trainer.batch_idx)
    real_c = real_c if run.config.c_dim else None
    stats.add(trainer.train_step(reals, real_c, gen_c))
    run.position.assign_add(settings.batch)
    cur_nimg += settings.batch
    done = cur_nimg >= total_nimg
    bar.draw(cur_tick, cur_nimg - stats.start_nimg, tick_nimg)
    if not done and cur_tick != 0 and cur_nimg < stats.start_nimg + tick_nimg:
      continue
    bar.clear()
    if run.chief:
      run.write_tick(cur_tick, cur_nimg, stats, maintenance, start_time)
    maintenance_start = time.time()
    snap = done or cur_tick % options.snap == 0
    if snap and run.chief:
      run.write_snapshot(cur_nimg, cur_tick, grid_z, grid_c)
    cur_tick += 1
    run.tick_var.assign(cur_tick)
    if snap:
      run.save_checkpoint(cur_nimg)
    stats = _Tick(cur_nimg, time.time())
    maintenance = time.time() - maintenance_start
  run.close()
  return _summary(run, cur_nimg, cur_tick, time.time() - start_time)


def _summary(run: _Run, cur_nimg: int, ticks: int, seconds: float) -> dict:
  """Where the outputs are, and the last metrics."""
  root = run.workdir.root
  images = sorted((root / "images").glob("fakes*.png"))
  latest = snapshot.latest_snapshot(root)
  metric_files = sorted(str(p) for p in (root / "reports").glob("metric-*.jsonl"))
  summary = {
    "workdir": str(root),
    "kimg": cur_nimg / 1000,
    "ticks": ticks,
    "seconds": round(seconds, 1),
    "last_grid": str(images[-1]) if images else None,
    "last_snapshot": str(latest) if latest else None,
    "metric_files": metric_files,
    "metrics": run.last_metrics or _last_metric_values(metric_files),
    "tensorboard": str(root / "logs" / "train"),
    "checkpoints": str(run.checkpoint_dir),
  }
  return summary if run.chief else {"workdir": str(root), "kimg": cur_nimg / 1000, "chief": False}


def _last_metric_values(metric_files: Sequence[str]) -> dict:
  values = {}
  for path in metric_files:
    lines = [line for line in pathlib.Path(path).read_text().splitlines() if line]
    if lines:
      values.update(json.loads(lines[-1])["results"])
  return values
