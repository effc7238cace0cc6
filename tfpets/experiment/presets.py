"""Settings of the experiment's steps: the CPU default and the paper's scale.

Each preset gives, per stage the experiment runs, the flags that stage gets before the experiment's
own (records, workdirs, seeds) and before any flagfile the user adds per stage, so a flag given
either way overrides the preset's. The paper leaves the classifier, its schedule, the image size,
the synthetic-to-real ratio and the labelling of generated images open (Darvish et al., arXiv
2109.00891); what tfpets picks for them is documented in docs/experiment.md.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping

from tfpets.errors import ArgumentError


@dataclasses.dataclass(frozen=True)
class Preset:
  gan_resolution: int  # The GANs' images, and the side of the head crops.
  crop_size: int  # Head crops (a power of two, so that they get StyleGAN records).
  fid_metric: str
  stage_flags: Mapping[str, Mapping[str, Any]]


# The embedded default: 12 synthetic breeds, 32 px GANs, a small ViT at 64 px; the whole matrix
# (3 variants x 3 subsets: 6 GANs, 9 classifiers) within an hour on 2 CPU cores.
CPU = Preset(
  gan_resolution=32,
  crop_size=64,
  fid_metric="fid2k_full",
  stage_flags={
    "data": {
      "synthetic_breeds": 12,
      "synthetic_per_breed": 100,
      "synthetic_size": 128,
      "data_gan_resolution": 32,
    },
    "gan": {"gan_preset": "cpu", "gan_res": 32, "gan_kimg": 12, "gan_metrics": "none"},
    # A ViT as the paper's, at its CPU size; every cell takes the same number of steps.
    "classify": {
      "model": "vit",
      "cls_vit_size": "tiny",
      "image_size": 64,
      "batch_size": 32,
      "cls_epochs": 30,
      "cls_steps_per_epoch": 30,
      "cls_optimizer": "adam",
      "cls_learning_rate": 1e-3,
      "cls_schedule": "cosine",
      "cls_weight_decay": 0.0,
    },
    "evaluate": {"batch_size": 64},
  },
)

# The paper's scale on Oxford-IIIT Pet: 128 px StyleGAN2-ADA (cfg auto) for 5120 kimg with
# fid50k_full against each run's own subset, as the published runs; ViT-B/16 at 224 from a local
# keras-hub preset (give --preset), AdamW with cosine decay.
PAPER = Preset(
  gan_resolution=128,
  crop_size=256,
  fid_metric="fid50k_full",
  stage_flags={
    "data": {"data_gan_resolution": 128},
    "gan": {
      "gan_preset": "auto",
      "gan_res": 128,
      "gan_kimg": 5120,
      "gan_snap": 20,
      "gan_metrics": "fid50k_full",
    },
    "classify": {
      "model": "vit",
      "image_size": 224,
      "batch_size": 64,
      "cls_epochs": 30,
      "cls_steps_per_epoch": 60,
      "cls_optimizer": "adamw",
      "cls_learning_rate": 1e-4,
      "cls_schedule": "cosine",
    },
    "evaluate": {"batch_size": 64},
  },
)

PRESETS = {"cpu": CPU, "paper": PAPER}


# Shared flags a user gives on the command line go to the steps of the stages that read them.
FORWARDED = {
  "classify": ("model", "preset", "backbone_weights", "image_size", "precision", "strategy"),
  "gan": ("precision", "strategy", "inception_graph", "metrics_cache"),
  "metrics": ("inception_graph", "metrics_cache"),
}
FORWARDED_EVERYWHERE = ("tpu", "num_cpu_replicas", "intra_op_threads", "inter_op_threads")
_PATHS = ("preset", "backbone_weights", "inception_graph", "metrics_cache")


def absolute(path: str) -> str:
  # Steps run from wherever `make` or a scheduler starts them.
  return os.path.abspath(path) if path else path


def stage_flags(preset: Preset, given: Mapping[str, Any]) -> dict:
  """The preset's flags per stage, with the shared flags in `given` (name -> value) on top."""
  flags = {stage: dict(values) for stage, values in preset.stage_flags.items()}
  for stage, names in FORWARDED.items():
    for name in names + FORWARDED_EVERYWHERE:
      if name in given:
        value = given[name]
        flags.setdefault(stage, {})[name] = absolute(value) if name in _PATHS else value
  return flags


def forwarded_names() -> set:
  return {name for names in FORWARDED.values() for name in names} | set(FORWARDED_EVERYWHERE)


def parse_stage_flagfiles(items: Iterable[str]) -> dict:
  """["gan=a.flags", "gan=b.flags", ...] -> {"gan": (absolute a, absolute b)}."""
  out: dict = {}
  for item in items:
    stage, sep, path = item.partition("=")
    if not sep or not stage or not path:
      raise ArgumentError("stage_flagfiles", item, "expected STAGE=FLAGFILE")
    out[stage] = out.get(stage, ()) + (absolute(path),)
  return out
