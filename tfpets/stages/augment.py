"""Grow a converted dataset with generated training images, labelled and marked (docs/augment.md).

Reads --records (the data or crop stage's workdir) and --network (or --aug_class_networks) and
writes the grown dataset to --workdir: records/shards, images/synthetic/<class>/*.png and reports/.
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.data import augment_gan
from tfpets.data.tfrecord.shards import find_shards
from tfpets.gan import generate
from tfpets.runtime import context

NEEDS_STRATEGY = False

PER_CLASS = flags.DEFINE_integer(
  "aug_per_class",
  0,
  "Generated training images per class (or give --aug_ratio).",
  lower_bound=0,
)
RATIO = flags.DEFINE_float(
  "aug_ratio",
  0.0,
  "Generated training images per class as this times the class's real training images, rounded "
  "half up (1.0 doubles each class; or give --aug_per_class).",
  lower_bound=0.0,
)
LABEL_FROM = flags.DEFINE_enum(
  "aug_label_from",
  "conditional",
  list(augment_gan.LABEL_SOURCES),
  "Where labels come from: conditional (--network has one class per dataset class; class i is "
  "generated with class index i), per_class (--aug_class_networks, one unconditional generator "
  "per class), classifier (--network is unconditional; --aug_classifier labels each sample, kept "
  "when its top probability is at least --aug_threshold).",
)
CLASS_NETWORKS = flags.DEFINE_string(
  "aug_class_networks",
  "",
  "For --aug_label_from=per_class: CLASS=NETWORK,... (a run, snapshot folder or pickle per "
  "class name of --records); unnamed classes get no generated images.",
)
CLASSIFIER = flags.DEFINE_string(
  "aug_classifier",
  "",
  "For --aug_label_from=classifier: the workdir of --stage=classify (its logits become "
  "probabilities), or a Keras model file (.keras, .h5) or a SavedModel folder "
  "mapping images (uint8, or float in [0, 255], as its input declares) to probabilities of the "
  "classes of --records, in their order.",
)
THRESHOLD = flags.DEFINE_float(
  "aug_threshold",
  0.9,
  "For --aug_label_from=classifier: the least top class probability a kept sample has.",
  lower_bound=0.0,
  upper_bound=1.0,
)
MAX_DRAWS = flags.DEFINE_integer(
  "aug_max_draws",
  0,
  "For --aug_label_from=classifier: seeds tried at most (0: 20 per requested image).",
  lower_bound=0,
)
TRUNC = flags.DEFINE_float(
  "aug_trunc",
  None,
  "Truncation psi on every layer. Default: the convention's, 1 for --aug_convention=pytorch, "
  "0.5 for tf1.",
)
SEED_START = flags.DEFINE_integer(
  "aug_seed_start",
  0,
  "First seed: each class's images use seeds from it on (the classifier draws them in turn).",
  lower_bound=0,
)
NOISE_MODE = flags.DEFINE_enum(
  "aug_noise_mode",
  "const",
  list(generate.NOISE_MODES),
  "Noise inputs of the generator, as --gen_noise_mode of --stage=generate.",
)
CONVENTION = flags.DEFINE_enum(
  "aug_convention",
  "pytorch",
  list(generate.CONVENTIONS),
  "How a seed becomes latents and noise, as --gen_convention of --stage=generate.",
)
RECORDS_PER_SHARD = flags.DEFINE_integer(
  "aug_records_per_shard", 1024, "Examples per shard file of the grown dataset.", lower_bound=1
)

# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  "per_class": "aug_per_class",
  "ratio": "aug_ratio",
  "label_from": "aug_label_from",
  "class_networks": "aug_class_networks",
  "classifier": "aug_classifier",
  "threshold": "aug_threshold",
  "max_draws": "aug_max_draws",
  "truncation_psi": "aug_trunc",
  "seed_start": "aug_seed_start",
  "noise_mode": "aug_noise_mode",
  "convention": "aug_convention",
  "network": "network",
  "records": "records",
  "out_root": "workdir",
}


def run(ctx: context.RunContext) -> None:
  class_networks = {}
  if LABEL_FROM.value == "per_class" or CLASS_NETWORKS.value:
    class_networks = augment_gan.parse_class_networks(CLASS_NETWORKS.value)
  options = augment_gan.AugmentOptions(
    per_class=PER_CLASS.value,
    ratio=RATIO.value,
    label_from=LABEL_FROM.value,
    network=ctx.flags.network,
    class_networks=class_networks,
    classifier=CLASSIFIER.value,
    threshold=THRESHOLD.value,
    truncation_psi=TRUNC.value,
    seed_start=SEED_START.value,
    max_draws=MAX_DRAWS.value,
    noise_mode=NOISE_MODE.value,
    convention=CONVENTION.value,
    batch_size=ctx.flags.batch_size,
    records_per_shard=RECORDS_PER_SHARD.value,
    seed=ctx.seed,
  )
  shards_dir = find_shards(ctx.flags.records)
  result = augment_gan.augment_dataset(shards_dir, ctx.workdir.root, options)
  summary = {
    "shards": result.conversion.shards_dir,
    "splits": result.conversion.split_counts,
    "requested_per_class": result.requested,
    "synthetic_per_class": result.written,
    "rejected_samples": sum(1 for s in result.samples if s.reason),
    "rejects_csv": result.conversion.rejects_csv,
    "samples_csv": result.samples_csv,
  }
  (ctx.workdir.reports / "augment.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(json.dumps(summary, indent=2))
  logging.info("next: train a classifier with --records=%s", ctx.workdir.root)
