"""Convert a dataset (default: render the embedded synthetic pets) into TFRecords."""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.data import convert
from tfpets.data.prepare import SQUARE_POLICIES
from tfpets.runtime import context
from tfpets.runtime import flags as runtime_flags

NEEDS_STRATEGY = False

SPLITS = flags.DEFINE_string(
  "data_splits",
  "auto",
  "auto (the source's own splits when it has them, else train=0.8,val=0.1,test=0.1), source, "
  "source,val=F (the source's, F of its train held out as val), or name=fraction,... such as "
  "train=0.75,val=0.25 (stratified, seeded by --seed).",
)
DEDUPE = flags.DEFINE_enum(
  "data_dedupe",
  "report",
  convert.DEDUPE_MODES,
  "Exact and near-duplicate images (perceptual hash): off; report (list them in "
  "reports/rejects.csv, keep them, so official split counts hold); remove (drop all but the first "
  "of each group; splits are written test, train, val in that order, so a train image "
  "duplicating a test image is the one dropped).",
)
MAX_HAMMING = flags.DEFINE_integer(
  "data_max_hamming",
  10,
  "Near-duplicate threshold: perceptual hashes at most this many bits apart "
  "(the synthetic pets, distinct by construction, are searched for exact duplicates only).",
  lower_bound=0,
  upper_bound=64,
)
GAN_RESOLUTION = flags.DEFINE_integer(
  "data_gan_resolution",
  128,
  "Resolution of the StyleGAN multi-resolution records (a power of two; "
  "0 writes none). Every lower level down to 4x4 is written too.",
  lower_bound=0,
)
SQUARE = flags.DEFINE_enum(
  "data_square",
  "center",
  SQUARE_POLICIES,
  "How non-square images become square for the GAN records: center crop, pad with black, or "
  "head (a square around the head box or landmarks, --data_head_margin on each side).",
)
HEAD_MARGIN = flags.DEFINE_float(
  "data_head_margin",
  0.2,
  "Margin around the head for --data_square=head, as a fraction of the head size.",
  lower_bound=0.0,
)
RECORDS_PER_SHARD = flags.DEFINE_integer(
  "data_records_per_shard", 1024, "Examples per classification shard file.", lower_bound=1
)
WORKERS = flags.DEFINE_integer(
  "data_workers", 0, "Decoding processes (0: one per core).", lower_bound=0
)
SYNTHETIC_BREEDS = flags.DEFINE_integer(
  "synthetic_breeds", 12, "Breeds of the synthetic pets.", lower_bound=2, upper_bound=37
)
SYNTHETIC_PER_BREED = flags.DEFINE_integer(
  "synthetic_per_breed", 100, "Synthetic images per breed.", lower_bound=1
)
SYNTHETIC_SIZE = flags.DEFINE_integer(
  "synthetic_size", 128, "Side of the synthetic images in pixels.", lower_bound=32
)


# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  "data": "data",
  "subset": "subset",
  "splits": "data_splits",
  "dedupe": "data_dedupe",
  "max_hamming": "data_max_hamming",
  "strict": "strict",
}
# Spellings from before the data_ prefix, which flagfiles and scripts may still use.
runtime_flags.define_deprecated_aliases(
  {
    "splits": "data_splits",
    "dedupe": "data_dedupe",
    "max_hamming": "data_max_hamming",
    "gan_resolution": "data_gan_resolution",
    "square": "data_square",
    "head_margin": "data_head_margin",
    "records_per_shard": "data_records_per_shard",
    "workers": "data_workers",
  },
  __name__,
)


def run(ctx: context.RunContext) -> None:
  options = convert.ConvertOptions(
    splits=SPLITS.value,
    subset=ctx.flags.subset,
    dedupe=DEDUPE.value,
    max_hamming=None if ctx.flags.data == "synthetic" else MAX_HAMMING.value,
    gan_resolution=GAN_RESOLUTION.value,
    square=SQUARE.value,
    head_margin=HEAD_MARGIN.value,
    records_per_shard=RECORDS_PER_SHARD.value,
    workers=WORKERS.value,
    strict=ctx.flags.strict,
    seed=ctx.seed,
  )
  synthetic_options = convert.SyntheticOptions(
    SYNTHETIC_BREEDS.value, SYNTHETIC_PER_BREED.value, SYNTHETIC_SIZE.value
  )
  result = convert.convert_dataset(
    ctx.flags.data,
    ctx.workdir.root,
    options,
    synthetic_options,
    ctx.flags.tfds_manual_dir or None,
    ctx.flags.tfds_data_dir or None,
  )
  print(
    json.dumps(
      {
        "shards": result.shards_dir,
        "stylegan": result.gan_dir,
        "splits": result.split_counts,
        "rejects": dict(result.rejects.counts()),
        "rejects_csv": result.rejects_csv,
        "seconds": round(result.seconds, 1),
      },
      indent=2,
    )
  )
  logging.info("next: python -m tfpets.launch --stage=inspect --records=%s", ctx.workdir.root)
