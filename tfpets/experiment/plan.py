"""The pet paper's experiment as a graph of ordinary stage runs, written as flagfiles and a Makefile.

Darvish et al. (arXiv 2109.00891) compare classifiers trained on real images (`original`), on real
plus StyleGAN2-ADA images (`augmented`) and on head crops plus a GAN trained on the crops
(`cropped_augmented`), on 10, 50 and 100 % of the training data. `build_plan` turns an
`ExperimentConfig` into the steps that reproduce that table, each a `python -m tfpets.launch` run
in its own workdir under one root; `write_plan` writes each step's flagfile, `plan/plan.json` (for
a cluster scheduler) and `plan/Makefile` (for `make -j` on one host). `tfpets.experiment.runner`
runs the same steps with resumption.

Layout under the root: `data/sP`, `crop/sP`, `gan/V/sP`, `fid/V/sP`, `augment/V/sP`,
`classify/V/sP/rK`, `evaluate/V/sP/rK` (P the subset as a percentage, V the variant, K the repeat),
and `plan/` (`steps/*.flags`, `plan.json`, `Makefile`, `done/` markers, `logs/`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import shlex
import sys
from typing import Any, Mapping, Sequence

from absl import logging

from tfpets.data import sources, subsets
from tfpets.errors import ArgumentError
from tfpets.experiment import results

VARIANTS = ("original", "augmented", "cropped_augmented", "cropped")
LABEL_SOURCES = ("conditional", "classifier")
# The stages a plan runs; keys of `stage_flags` and `stage_flagfiles`.
STAGES = ("data", "crop", "gan", "metrics", "augment", "classify", "evaluate", "experiment")
REPORT_STEP = "report"
DEFAULT_LAUNCHER = (sys.executable, "-m", "tfpets.launch")

# The plan's own flags of each stage's steps, written last so that nothing overrides them: the
# graph (workdirs, the records and networks each step reads, seeds) or an ExperimentConfig field
# decides them, and `stage_flags` may not set them. (`data_gan_resolution` and `gan_res` follow
# `gan_resolution` as defaults that `stage_flags` and flagfiles may change.)
PLAN_FLAGS = {
  "data": ("data", "subset", "seed"),
  "crop": ("records", "seed", "crop_use_annotations", "detector", "crop_size"),
  "gan": ("records", "seed", "gan_cond"),
  "metrics": ("records", "seed", "network", "metrics_names"),
  "augment": (
    "records",
    "seed",
    "network",
    "aug_ratio",
    "aug_per_class",
    "aug_label_from",
    "aug_classifier",
  ),
  "classify": ("records", "seed"),
  "evaluate": ("records", "seed", "classifier", "cls_eval_split"),
  "experiment": ("experiment_report_only",),
}
_ALWAYS_PLAN_FLAGS = ("stage", "flagfile", "workdir")
_FLAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CROPPED = ("cropped", "cropped_augmented")
_AUGMENTED = ("augmented", "cropped_augmented")
_GLOB_CHARS = re.compile(r"[*?\[]")
# The order of a plan: the longest runs (GANs) start as early as their deps allow.
_STAGE_RANK = {
  stage: rank
  for rank, stage in enumerate(
    ("data", "crop", "gan", "augment", "classify", "metrics", "evaluate", "experiment")
  )
}

# What each stage leaves in its workdir when it has finished (paths relative to the workdir; a
# pattern matches when any path does). `data` and `crop` add `records/stylegan` when a GAN reads them.
SHARDS_MANIFEST = "records/shards/manifest.json"
STYLEGAN_RECORDS = "records/stylegan"
STAGE_OUTPUTS = {
  "data": (SHARDS_MANIFEST,),
  "crop": (SHARDS_MANIFEST,),
  "gan": ("snapshots/network-snapshot-*/config.json",),  # config.json is a snapshot's last file
  "metrics": ("reports/metrics.json",),
  "augment": (SHARDS_MANIFEST,),
  "classify": ("models/classifier.json", "models/classifier.weights.h5"),
  "evaluate": ("reports/evaluate.json", "reports/metrics.json"),
  "experiment": ("results/results.json", "results/README.md"),
}


# ------------------------------------------------------------------------------------------------
# The configuration.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """The experiment's matrix and the settings its steps share; every field is checked on creation.

  `stage_flags` maps a stage name to extra flags of its steps (`{"gan": {"gan_preset": "cpu"}}`),
  written as given (give paths absolute); `stage_flagfiles` maps a stage name to flagfiles its steps
  read after those, so a flagfile overrides `stage_flags`, and the plan's own flags (workdirs,
  records, seeds, what the config's fields set) override both.
  """

  data: str = "synthetic"
  subsets: tuple[str, ...] = ("0.1", "0.5", "1.0")
  variants: tuple[str, ...] = ("original", "augmented", "cropped_augmented")
  repeats: int = 1
  seed: int = 0
  crop_use_annotations: bool = True  # else `detector` names a landmark detector
  detector: str = ""
  gan_resolution: int = 32
  crop_size: int = 0  # side of the head crops; 0: gan_resolution
  fid_metric: str = "fid2k_full"
  aug_ratio: float = 1.0
  aug_label_from: str = "conditional"  # or "classifier": the original variant's classifier labels
  stage_flags: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  stage_flagfiles: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    _check_data(self.data)
    object.__setattr__(self, "subsets", _check_subsets(self.subsets))
    object.__setattr__(self, "variants", _check_variants(self.variants))
    _check_int("repeats", self.repeats, 1)
    _check_int("seed", self.seed, 0)
    _check_crop(self)
    _check_gan_resolution(self.gan_resolution)
    _check_crop_size(self)
    _check_fid_metric(self.fid_metric)
    _check_ratio(self.aug_ratio)
    _check_label_source(self.aug_label_from, self.variants)
    _check_stage_flags(self.stage_flags)
    _check_stage_flagfiles(self.stage_flagfiles)

  @property
  def gan_variants(self) -> tuple[str, ...]:
    return tuple(v for v in self.variants if v in _AUGMENTED)

  @property
  def cropped_variants(self) -> tuple[str, ...]:
    return tuple(v for v in self.variants if v in _CROPPED)


def _check_data(data: Any) -> None:
  if not isinstance(data, str) or not data:
    raise ArgumentError("data", data, "a dataset spec such as synthetic or oxford_pets:DIR")
  sources.parse_spec(data)  # its ArgumentError names `data`


def subset_fraction(subset: Any) -> float:
  """The fraction of a subset written as a string ('0.1'); an ArgumentError about `subsets`."""
  problem = "a fraction of each class in (0, 1] written as a string, such as '0.1'"
  if not isinstance(subset, str):
    raise ArgumentError("subsets", subset, problem)
  try:
    size = subsets.parse_subset(subset)
  except ArgumentError:
    raise ArgumentError("subsets", subset, problem) from None
  if isinstance(size, int):
    raise ArgumentError("subsets", subset, f"a count of images per class; {problem}")
  return size


def subset_name(subset: str) -> str:
  """'0.1' -> 's10', '0.5' -> 's50', '1.0' -> 's100' (the percentage; '0.125' -> 's12.5')."""
  return results.subset_name(subset_fraction(subset))  # the one folder naming, also the report's


def _check_subsets(values: Any) -> tuple[str, ...]:
  if isinstance(values, str) or not isinstance(values, Sequence) or not values:
    raise ArgumentError("subsets", values, "a non-empty tuple of fractions such as ('0.1', '1.0')")
  names = [subset_name(v) for v in values]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ArgumentError("subsets", values, f"the same subset twice ({', '.join(duplicates)})")
  return tuple(values)


def _check_variants(values: Any) -> tuple[str, ...]:
  if isinstance(values, str) or not isinstance(values, Sequence) or not values:
    raise ArgumentError("variants", values, f"a non-empty tuple of {', '.join(VARIANTS)}")
  for value in values:
    if value not in VARIANTS:
      raise ArgumentError("variants", value, f"not a variant; valid: {', '.join(VARIANTS)}")
  if len(set(values)) != len(values):
    raise ArgumentError("variants", values, "a variant appears twice")
  return tuple(values)


def _check_int(field: str, value: Any, least: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < least:
    raise ArgumentError(field, value, f"a whole number of at least {least}")


def _check_crop(config: ExperimentConfig) -> None:
  if not isinstance(config.crop_use_annotations, bool):
    raise ArgumentError("crop_use_annotations", config.crop_use_annotations, "True or False")
  if not isinstance(config.detector, str):
    raise ArgumentError("detector", config.detector, "a path to a landmark detector")
  if config.crop_use_annotations and config.detector:
    raise ArgumentError("detector", config.detector, "only read when crop_use_annotations is False")
  if not config.crop_use_annotations and config.cropped_variants and not config.detector:
    raise ArgumentError(
      "detector",
      config.detector,
      "cropped variants without annotations need a landmark detector (the workdir of "
      "--stage=landmarks)",
    )


def _check_gan_resolution(value: Any) -> None:
  _check_int("gan_resolution", value, 8)
  if value & (value - 1) or value > 1024:
    raise ArgumentError("gan_resolution", value, "a power of two from 8 to 1024")


def _check_crop_size(config: ExperimentConfig) -> None:
  value = config.crop_size
  if value == 0:
    return
  _check_int("crop_size", value, 8)
  if "cropped_augmented" in config.variants and (
    value & (value - 1) or value < config.gan_resolution
  ):
    raise ArgumentError(
      "crop_size",
      value,
      f"a GAN reads the crops' StyleGAN records at gan_resolution={config.gan_resolution}: a "
      "power of two at least that large",
    )


def _check_fid_metric(value: Any) -> None:
  if not isinstance(value, str) or not value:
    raise ArgumentError("fid_metric", value, "an FID metric name such as fid2k_full")
  from tfpets.gan import metrics  # deferred: it loads TensorFlow

  try:
    spec = metrics.parse_metric_name(value)
  except ValueError as e:
    raise ArgumentError("fid_metric", value, str(e)) from None
  if spec.kind != "fid":
    raise ArgumentError("fid_metric", value, "an FID metric (fid<N>[_full]), not KID")


def _check_ratio(value: Any) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ArgumentError("aug_ratio", value, "a positive number")
  if not math.isfinite(value) or value <= 0:
    raise ArgumentError("aug_ratio", value, "a positive number")


def _check_label_source(value: Any, variants: tuple[str, ...]) -> None:
  if value not in LABEL_SOURCES:
    raise ArgumentError("aug_label_from", value, f"one of {', '.join(LABEL_SOURCES)}")
  if value == "classifier" and "original" not in variants and set(variants) & set(_AUGMENTED):
    raise ArgumentError(
      "aug_label_from",
      value,
      "classifier labels come from the original variant's classifier; add 'original' to variants",
    )


def _check_stage_key(field: str, stage: Any) -> None:
  if stage not in STAGES:
    raise ArgumentError(field, stage, f"not a stage of the plan; valid: {', '.join(STAGES)}")


def _check_stage_flags(stage_flags: Any) -> None:
  if not isinstance(stage_flags, Mapping):
    raise ArgumentError("stage_flags", stage_flags, "a mapping of stage name to {flag: value}")
  for stage, values in stage_flags.items():
    _check_stage_key("stage_flags", stage)
    if not isinstance(values, Mapping):
      raise ArgumentError("stage_flags", f"{stage}={values!r}", "a mapping of flag to value")
    for name, value in values.items():
      where = f"{stage}.{name}"
      if not isinstance(name, str) or not _FLAG_NAME.fullmatch(name):
        raise ArgumentError("stage_flags", where, "not a flag name (give it without --)")
      if name in _ALWAYS_PLAN_FLAGS or name in PLAN_FLAGS[stage]:
        raise ArgumentError(
          "stage_flags", where, "the plan sets this flag (from the graph or a config field)"
        )
      _check_flag_value("stage_flags", where, value)


def _check_flag_value(field: str, where: str, value: Any) -> None:
  items = value if isinstance(value, (list, tuple)) else [value]
  for item in items:
    if not isinstance(item, (bool, int, float, str)) or (
      isinstance(value, (list, tuple)) and isinstance(item, bool)
    ):
      raise ArgumentError(field, where, f"{item!r}: a bool, number, string or list of them")
    if isinstance(item, str) and ("\n" in item or "\r" in item):
      raise ArgumentError(field, where, "a value holds a line break, which a flagfile cannot")


def _check_stage_flagfiles(stage_flagfiles: Any) -> None:
  if not isinstance(stage_flagfiles, Mapping):
    raise ArgumentError("stage_flagfiles", stage_flagfiles, "a mapping of stage name to files")
  for stage, files in stage_flagfiles.items():
    _check_stage_key("stage_flagfiles", stage)
    if isinstance(files, str) or not isinstance(files, Sequence):
      raise ArgumentError("stage_flagfiles", f"{stage}={files!r}", "a tuple of flagfile paths")
    for path in files:
      if not isinstance(path, str) or not os.path.isfile(path):
        raise ArgumentError("stage_flagfiles", f"{stage}={path!r}", "no such flagfile")


# ------------------------------------------------------------------------------------------------
# Steps.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Step:
  """One stage run: `python -m tfpets.launch --stage=<stage>` with, in this order (a later flag
  overrides an earlier one), `defaults`, the `flagfiles` and the plan's own `flags`.

  `defaults` are the plan's defaults and the config's `stage_flags`; `flags` always include
  `workdir`. `outputs` are paths (or glob patterns) relative to the workdir that exist when the
  step is done; `cell` names the table cell (variant, subset, repeat) where they apply. A step that
  `collects` (the report) summarises its deps: it runs again whenever one finished after it did.
  """

  name: str
  stage: str
  flags: dict
  defaults: dict = dataclasses.field(default_factory=dict)
  flagfiles: tuple = ()
  deps: tuple = ()
  outputs: tuple = ()
  cell: dict = dataclasses.field(default_factory=dict)
  collects: bool = False

  @property
  def workdir(self) -> str:
    return self.flags["workdir"]

  def record(self) -> dict:
    """The step as plain JSON values (`plan.json`)."""
    return {
      "name": self.name,
      "stage": self.stage,
      "flags": dict(self.flags),
      "defaults": dict(self.defaults),
      "flagfiles": list(self.flagfiles),
      "deps": list(self.deps),
      "outputs": list(self.outputs),
      "cell": dict(self.cell),
      "collects": self.collects,
    }

  @classmethod
  def from_record(cls, record: Mapping[str, Any]) -> "Step":
    return cls(
      name=record["name"],
      stage=record["stage"],
      flags=dict(record["flags"]),
      defaults=dict(record.get("defaults", {})),
      flagfiles=tuple(record["flagfiles"]),
      deps=tuple(record["deps"]),
      outputs=tuple(record["outputs"]),
      cell=dict(record["cell"]),
      collects=bool(record.get("collects", False)),
    )


class _Builder:
  """Adds the steps of one config under one root; step names follow EXPERIMENT's layout."""

  def __init__(self, config: ExperimentConfig, root: str):
    self.config, self.root = config, root
    self.steps: list[Step] = []

  def workdir(self, name: str) -> str:
    return os.path.join(self.root, *name.split("/"))

  def add(self, name, stage, flags, deps=(), outputs=None, cell=None, defaults=None, **kwargs):
    extra = {k: _flag_value(v) for k, v in self.config.stage_flags.get(stage, {}).items()}
    step = Step(
      name=name,
      stage=stage,
      flags={"workdir": kwargs.pop("workdir", None) or self.workdir(name), **flags},
      defaults={**(defaults or {}), **extra},
      flagfiles=tuple(os.path.abspath(f) for f in self.config.stage_flagfiles.get(stage, ())),
      deps=tuple(deps),
      outputs=tuple(STAGE_OUTPUTS[stage] if outputs is None else outputs),
      cell=dict(cell or {}),
      **kwargs,
    )
    self.steps.append(step)
    return name

  def data(self, subset: str) -> str:
    config = self.config
    gan_reads = "augmented" in config.variants
    return self.add(
      f"data/{subset_name(subset)}",
      "data",
      {"data": _absolute_spec(config.data), "subset": subset, "seed": config.seed},
      defaults={"data_gan_resolution": config.gan_resolution if gan_reads else 0},
      outputs=(SHARDS_MANIFEST,) + ((STYLEGAN_RECORDS,) if gan_reads else ()),
      cell={"subset": subset},
    )

  def crop(self, subset: str, data_step: str) -> str:
    config = self.config
    flags = {"records": self.workdir(data_step), "seed": config.seed}
    flags["crop_use_annotations"] = config.crop_use_annotations
    if not config.crop_use_annotations:
      flags["detector"] = os.path.abspath(config.detector)
    flags["crop_size"] = config.crop_size or config.gan_resolution
    gan_reads = "cropped_augmented" in config.variants
    return self.add(
      f"crop/{subset_name(subset)}",
      "crop",
      flags,
      deps=(data_step,),
      outputs=(SHARDS_MANIFEST,) + ((STYLEGAN_RECORDS,) if gan_reads else ()),
      cell={"subset": subset},
    )

  def gan_branch(self, variant: str, subset: str, records_step: str) -> tuple[str, str]:
    """gan and fid of one cell; returns (gan step, fid step)."""
    config, cell = self.config, {"variant": variant, "subset": subset}
    suffix = f"{variant}/{subset_name(subset)}"
    records = self.workdir(records_step)
    gan = self.add(
      f"gan/{suffix}",
      "gan",
      {
        "records": records,
        "seed": config.seed,
        "gan_cond": config.aug_label_from == "conditional",
      },
      defaults={"gan_res": config.gan_resolution},
      deps=(records_step,),
      cell=cell,
    )
    fid = self.add(
      f"fid/{suffix}",
      "metrics",
      {
        "records": records,
        "seed": config.seed,
        "network": self.workdir(gan),
        "metrics_names": [config.fid_metric],
      },
      deps=(records_step, gan),
      cell=cell,
    )
    return gan, fid

  def augment(self, variant, subset, records_step, gan, labeller) -> str:
    config = self.config
    flags = {
      "records": self.workdir(records_step),
      "seed": config.seed,
      "network": self.workdir(gan),
      "aug_ratio": float(config.aug_ratio),
      "aug_label_from": config.aug_label_from,
    }
    deps = [records_step, gan]
    if labeller:
      flags["aug_classifier"] = os.path.join(self.workdir(labeller), "models")
      deps.append(labeller)
    return self.add(
      f"augment/{variant}/{subset_name(subset)}",
      "augment",
      flags,
      deps=deps,
      cell={"variant": variant, "subset": subset},
    )

  def classify(self, variant, subset, repeat, records_step) -> str:
    return self.add(
      f"classify/{variant}/{subset_name(subset)}/r{repeat}",
      "classify",
      {"records": self.workdir(records_step), "seed": self.config.seed + repeat},
      deps=(records_step,),
      cell={"variant": variant, "subset": subset, "repeat": repeat},
    )

  def evaluate(self, variant, subset, repeat, classify_step, real_step) -> str:
    return self.add(
      f"evaluate/{variant}/{subset_name(subset)}/r{repeat}",
      "evaluate",
      {
        "records": self.workdir(real_step),
        "seed": self.config.seed + repeat,
        "classifier": self.workdir(classify_step),
        "cls_eval_split": "test",
      },
      deps=(classify_step, real_step),
      cell={"variant": variant, "subset": subset, "repeat": repeat},
    )


def build_plan(config: ExperimentConfig, root: str | os.PathLike) -> list[Step]:
  """Every step of the experiment of `config` under `root`, each after its deps.

  Data (and crops) are shared by every variant of a subset; a GAN, its FID and the grown dataset
  by every repeat of a cell; each repeat retrains and re-evaluates the classifier with seed + k.
  Evaluation always reads the real records (data, or crops for cropped variants), so no generated
  image reaches a test split.
  """
  builder = _Builder(config, os.path.abspath(os.fspath(root)))
  collected = []
  for subset in config.subsets:
    data = builder.data(subset)
    crop = builder.crop(subset, data) if config.cropped_variants else None
    real = {v: crop if v in _CROPPED else data for v in config.variants}
    classifiers = {}
    for variant in _labellers_first(config.variants):
      train_step = real[variant]
      if variant in _AUGMENTED:
        gan, fid = builder.gan_branch(variant, subset, real[variant])
        collected.append(fid)
        labeller = classifiers.get("original") if config.aug_label_from == "classifier" else None
        train_step = builder.augment(variant, subset, real[variant], gan, labeller)
      for repeat in range(config.repeats):
        classify = builder.classify(variant, subset, repeat, train_step)
        classifiers.setdefault(variant, classify)
        collected.append(builder.evaluate(variant, subset, repeat, classify, real[variant]))
  builder.add(
    REPORT_STEP,
    "experiment",
    {"experiment_report_only": True},
    deps=collected,
    collects=True,
    workdir=builder.root,
  )
  return topological_order(sorted(builder.steps, key=lambda s: _STAGE_RANK[s.stage]))


def _labellers_first(variants: Sequence[str]) -> list[str]:
  """The original variant first: its classifier may label the GAN images of the others."""
  return sorted(variants, key=lambda v: v != "original")


def _flag_value(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


def _absolute_spec(spec: str) -> str:
  """`kind:location` with a filesystem location made absolute (tfds names are not paths)."""
  kind, location = sources.parse_spec(spec)
  if not location or kind == "tfds":
    return spec
  return f"{kind}:{os.path.abspath(location)}"


def topological_order(steps: Sequence[Step]) -> list[Step]:
  """`steps` reordered so that deps come first, otherwise in their given order.

  Raises ArgumentError("steps", ...) on a repeated name, an unknown dep or a cycle.
  """
  by_name = {}
  for step in steps:
    if step.name in by_name:
      raise ArgumentError("steps", step.name, "two steps have this name")
    by_name[step.name] = step
  for step in steps:
    for dep in step.deps:
      if dep not in by_name:
        raise ArgumentError("steps", step.name, f"depends on {dep!r}, which is not a step")
  ordered, placed = [], set()
  while len(ordered) < len(steps):
    ready = [s for s in steps if s.name not in placed and all(d in placed for d in s.deps)]
    if not ready:
      cycle = [s.name for s in steps if s.name not in placed]
      raise ArgumentError("steps", cycle, "their deps form a cycle")
    ordered.append(ready[0])
    placed.add(ready[0].name)
  return ordered


# ------------------------------------------------------------------------------------------------
# Files of a plan.
# ------------------------------------------------------------------------------------------------


def plan_dir(root: str | os.PathLike) -> str:
  return os.path.join(os.path.abspath(os.fspath(root)), "plan")


def flagfile_path(root: str | os.PathLike, name: str) -> str:
  return os.path.join(plan_dir(root), "steps", name.replace("/", "__") + ".flags")


def marker_path(root: str | os.PathLike, name: str) -> str:
  return os.path.join(plan_dir(root), "done", *name.split("/")) + ".done"


def log_path(root: str | os.PathLike, name: str) -> str:
  return os.path.join(plan_dir(root), "logs", *name.split("/")) + ".log"


def plan_json_path(root: str | os.PathLike) -> str:
  return os.path.join(plan_dir(root), "plan.json")


def makefile_path(root: str | os.PathLike) -> str:
  return os.path.join(plan_dir(root), "Makefile")


def flag_line(name: str, value: Any) -> str:
  """One flagfile line: booleans as --name / --noname, lists comma-joined."""
  if isinstance(value, bool):
    return f"--{name}" if value else f"--no{name}"
  if isinstance(value, (list, tuple)):
    value = ",".join(str(v) for v in value)
  return f"--{name}={value}"


def flagfile_text(step: Step) -> str:
  """The step's flagfile: `--stage`, its defaults, its flagfiles, then its own flags; absl reads
  a `--flagfile` line where it stands, and a later value of a flag wins."""
  lines = [f"# step: {step.name}", f"# deps: {', '.join(step.deps) or '(none)'}"]
  lines.append(f"--stage={step.stage}")
  lines += [flag_line(name, value) for name, value in step.defaults.items()]
  lines += [f"--flagfile={path}" for path in step.flagfiles]
  lines += [flag_line(name, value) for name, value in step.flags.items()]
  return "\n".join(lines) + "\n"


def step_command(step: Step, root: str | os.PathLike, launcher: Sequence[str]) -> list[str]:
  return [*launcher, f"--flagfile={flagfile_path(root, step.name)}"]


def find_outputs(step: Step) -> tuple[list[str], list[str]]:
  """(paths found, outputs missing) of `step`'s outputs in its workdir; a pattern is found when
  any path matches it (the first in sorted order is reported)."""
  found, missing = [], []
  for output in step.outputs:
    if _GLOB_CHARS.search(output):
      matches = sorted(glob.glob(os.path.join(glob.escape(step.workdir), output)))
      path = matches[0] if matches else None
    else:
      path = os.path.join(step.workdir, output)
      path = path if os.path.exists(path) else None
    if path:
      found.append(path)
    else:
      missing.append(output)
  return found, missing


def _write_text(path: str, text: str) -> None:
  """Written whole or not at all: a reader never sees half a file."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_plan(
  steps: Sequence[Step],
  root: str | os.PathLike,
  launcher: Sequence[str] = DEFAULT_LAUNCHER,
) -> dict:
  """Writes each step's flagfile, plan.json and the Makefile under `<root>/plan`.

  `launcher` is the command a step's flagfile is appended to. Returns the paths written:
  {"flagfiles": {step name: path}, "plan": path, "makefile": path or None}; the Makefile is left
  out (None) when `root` holds characters make cannot name files with (spaces, ':', '#', '%', '$').
  """
  steps = topological_order(steps)
  root = os.path.abspath(os.fspath(root))
  flagfiles = {}
  for step in steps:
    flagfiles[step.name] = flagfile_path(root, step.name)
    _write_text(flagfiles[step.name], flagfile_text(step))
  records = []
  for step in steps:
    record = step.record()
    record.update(
      flagfile=flagfiles[step.name],
      marker=marker_path(root, step.name),
      log=log_path(root, step.name),
      command=step_command(step, root, launcher),
    )
    records.append(record)
  _write_text(plan_json_path(root), json.dumps({"root": root, "steps": records}, indent=2) + "\n")
  makefile = None
  if re.search(r"[\s:#%$\\]", root):
    logging.warning("no Makefile: make cannot name files under %r; use the runner", root)
  else:
    makefile = makefile_path(root)
    _write_text(makefile, makefile_text(steps, root, launcher))
  return {"flagfiles": flagfiles, "plan": plan_json_path(root), "makefile": makefile}


def load_plan(root: str | os.PathLike) -> list[Step]:
  """The steps `write_plan` wrote to `<root>/plan/plan.json`."""
  with open(plan_json_path(root)) as f:
    return [Step.from_record(record) for record in json.load(f)["steps"]]


def _recipe_quote(argument: str) -> str:
  return shlex.quote(str(argument)).replace("$", "$$")


def makefile_text(steps: Sequence[Step], root: str, launcher: Sequence[str]) -> str:
  """A Makefile whose targets are the steps' done markers.

  A step's deps are order-only prerequisites: make runs a step whose marker is missing, after its
  deps, and never because a dep ran again (as the runner); the report, which collects its deps,
  has ordinary prerequisites and runs again when a dep's marker is newer. make trusts markers:
  after deleting a step's outputs, `python -m tfpets.experiment.runner stale ROOT` removes the
  markers whose outputs are missing.
  """
  python = _recipe_quote(sys.executable)
  markers = [marker_path(root, s.name) for s in steps]
  lines = [
    f"# The experiment's steps under {root}; run with make -j N -f {makefile_path(root)}.",
    "# Each target is a step's done marker; a step's output goes to its log under plan/logs.",
    f"# make trusts markers: after deleting outputs run {sys.executable} -m "
    f"tfpets.experiment.runner stale {root}",
    "",
    ".PHONY: all",
    "all: " + " ".join(markers),
    "",
  ]
  for step in steps:
    target = marker_path(root, step.name)
    deps = " ".join(marker_path(root, d) for d in step.deps)
    prerequisites = deps if step.collects else (f"| {deps}" if deps else "")
    log = log_path(root, step.name)
    command = " ".join(_recipe_quote(a) for a in step_command(step, root, launcher))
    mark = f"{python} -m tfpets.experiment.runner mark {_recipe_quote(root)} "
    mark += f"{_recipe_quote(step.name)} --started=$$start"
    lines += [
      f"{target}: {prerequisites}".rstrip(),
      f"\t@mkdir -p {_recipe_quote(os.path.dirname(target))} {_recipe_quote(os.path.dirname(log))}",
      f"\t@echo 'start {step.name} (log: {log})'",
      f"\t@start=$$(date +%s) && {command} > {_recipe_quote(log)} 2>&1 && {mark}",
      "",
    ]
  return "\n".join(lines)
