"""Train StyleGAN2-ADA: snapshots, image grids and FID as training goes (docs/gan.md).

With no flag: renders and converts the synthetic pets into --records if it holds no StyleGAN records,
then trains the CPU preset (32 px) for a few minutes on 2 cores. The same command continues a killed
run from its last checkpoint. Each flag names its official train.py spelling.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags, logging

from tfpets.data import convert
from tfpets.data.tfrecord import multires
from tfpets.gan import augment, metrics, training_loop
from tfpets.runtime import context

PRESET = flags.DEFINE_enum(
  "gan_preset",
  training_loop.CPU_PRESET,
  training_loop.PRESETS,
  "Configuration (official --cfg): cpu (small networks at 32 px for 2 CPU cores), auto (the pet "
  "paper's), stylegan2, paper256, paper512, paper1024, cifar, demo.",
)
RES = flags.DEFINE_integer(
  "gan_res", 0, "Resolution, a level of the records (official TF --res); 0: the preset's.", 0
)
GAMMA = flags.DEFINE_float("gan_gamma", None, "R1 weight (official --gamma).", 0)
KIMG = flags.DEFINE_float("gan_kimg", None, "Length in thousands of images (official --kimg).", 0)
BATCH = flags.DEFINE_integer("gan_batch", None, "Global batch (official --batch).", 1)
BATCH_GPU = flags.DEFINE_integer(
  "gan_batch_gpu", None, "Samples per replica and accumulation round (--batch-gpu).", 1
)
SNAP = flags.DEFINE_integer(
  "gan_snap", None, "Ticks between snapshots (official --snap); cpu preset: 3, others: 50.", 1
)
MIRROR = flags.DEFINE_boolean("gan_mirror", False, "x-flip half the images (official --mirror).")
COND = flags.DEFINE_boolean("gan_cond", False, "Use the records' labels (official --cond).")
AUG = flags.DEFINE_enum("gan_aug", "ada", training_loop.AUG_MODES, "Official --aug.")
P = flags.DEFINE_float("gan_p", None, "p of --gan_aug=fixed (official --p).", 0, 1)
TARGET = flags.DEFINE_float("gan_target", None, "ADA target r_t, 0.6 (official --target).", 0, 1)
AUGPIPE = flags.DEFINE_enum("gan_augpipe", "bgc", list(augment.AUGPIPES), "Official --augpipe.")
FREEZED = flags.DEFINE_integer("gan_freezed", 0, "Freeze-D layers (official --freezed).", 0)
RESUME = flags.DEFINE_string(
  "gan_resume",
  "",
  "Transfer learning (official --resume): start from a snapshot folder, a run folder (its newest "
  "snapshot) or an official TF1/PyTorch pickle, read without executing its code. A killed run "
  "needs no flag: the same command continues from the workdir's checkpoints.",
)
METRICS = flags.DEFINE_list(
  "gan_metrics",
  [],
  "Metrics of each snapshot (official --metrics), e.g. fid50k_full,kid50k_full, or none. "
  "Default: the preset's (cpu: fid2k_full; others: fid50k_full).",
)
KIMG_PER_TICK = flags.DEFINE_float(
  "gan_kimg_per_tick", 4.0, "Thousands of images per tick (official kimg_per_tick).", 0.001
)
KEEP = flags.DEFINE_integer("gan_keep_checkpoints", 3, "Checkpoints kept.", lower_bound=1)
JIT = flags.DEFINE_boolean("gan_jit", False, "Compile each step's passes with XLA (jit_compile).")

# Library argument -> its flag; the launcher words the library's errors with the flag's name.
_ARGUMENTS = {
  "resolution": RES,
  "gamma": GAMMA,
  "kimg": KIMG,
  "batch": BATCH,
  "batch_gpu": BATCH_GPU,
  "snap": SNAP,
  "cond": COND,
  "aug": AUG,
  "p": P,
  "target": TARGET,
  "augpipe": AUGPIPE,
  "mirror": MIRROR,
  "freezed": FREEZED,
  "resume": RESUME,
  "kimg_per_tick": KIMG_PER_TICK,
  "keep_checkpoints": KEEP,
  "jit_compile": JIT,
}
ARGUMENT_FLAGS = {
  **{argument: holder.name for argument, holder in _ARGUMENTS.items()},
  "preset": PRESET.name,
  "total_kimg": KIMG.name,
  "metrics": METRICS.name,
  "workdir": "workdir",
  "inception_graph": "inception_graph",
  "records": "records",
}


def stylegan_records(ctx: context.RunContext) -> pathlib.Path:
  """The StyleGAN records of --records; the synthetic pets are made there first when --records
  is left at its default and holds none."""
  if multires.search_directory(ctx.flags.records) is None and not ctx.flags["records"].present:
    logging.info("gan: no StyleGAN records in %s; making the synthetic pets", ctx.flags.records)
    options = convert.ConvertOptions(max_hamming=None, seed=ctx.seed)
    convert.convert_dataset("synthetic", ctx.flags.records, options)
  return multires.find_directory(ctx.flags.records)


def run(ctx: context.RunContext) -> None:
  records = stylegan_records(ctx)
  options = training_loop.resolve_options(
    PRESET.value,
    training_loop.records_info(records),
    gpus=ctx.strategy.num_replicas_in_sync,
    metrics=METRICS.value or None,
    seed=ctx.seed,
    inception_graph=ctx.flags.inception_graph,
    metrics_cache=ctx.flags.metrics_cache or str(metrics.default_cache_dir()),
    **{argument: holder.value for argument, holder in _ARGUMENTS.items()},
  )
  summary = training_loop.train(options, records, ctx.workdir, ctx.strategy)
  print(json.dumps(summary, indent=2))
