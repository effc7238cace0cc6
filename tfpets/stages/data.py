"""Convert a dataset (default: render the embedded synthetic pets) into TFRecords."""

from __future__ import annotations

import json
import os

from absl import flags, logging

from tfpets.data import convert, sources
from tfpets.data.prepare import SQUARE_POLICIES
from tfpets.errors import UsageError
from tfpets.runtime import context

NEEDS_STRATEGY = False

SPLITS = flags.DEFINE_string(
  "splits",
  "auto",
  "auto (the source's own splits when it has them, else train=0.8,val=0.1,test=0.1), source, "
  "or name=fraction,... such as train=0.75,val=0.25 (stratified, seeded by --seed).",
)
DEDUPE = flags.DEFINE_enum(
  "dedupe",
  "report",
  convert.DEDUPE_MODES,
  "Exact and near-duplicate images (perceptual hash): off; report (list them in "
  "reports/rejects.csv, keep them, so official split counts hold); remove (drop all but the first "
  "of each group; splits are written test, train, val in that order, so a train image "
  "duplicating a test image is the one dropped).",
)
MAX_HAMMING = flags.DEFINE_integer(
  "max_hamming",
  10,
  "Near-duplicate threshold: perceptual hashes at most this many bits apart "
  "(the synthetic pets, distinct by construction, are searched for exact duplicates only).",
  lower_bound=0,
  upper_bound=64,
)
GAN_RESOLUTION = flags.DEFINE_integer(
  "gan_resolution",
  128,
  "Resolution of the StyleGAN multi-resolution records (a power of two; "
  "0 writes none). Every lower level down to 4x4 is written too.",
  lower_bound=0,
)
SQUARE = flags.DEFINE_enum(
  "square",
  "center",
  SQUARE_POLICIES,
  "How non-square images become square for the GAN records: center crop, pad with black, or "
  "head (a square around the head box or landmarks, --head_margin on each side).",
)
HEAD_MARGIN = flags.DEFINE_float(
  "head_margin",
  0.2,
  "Margin around the head for --square=head, as a fraction of the head size.",
  lower_bound=0.0,
)
RECORDS_PER_SHARD = flags.DEFINE_integer(
  "records_per_shard", 1024, "Examples per classification shard file.", lower_bound=1
)
WORKERS = flags.DEFINE_integer("workers", 0, "Decoding processes (0: one per core).", lower_bound=0)
SYNTHETIC_BREEDS = flags.DEFINE_integer(
  "synthetic_breeds", 12, "Breeds of the synthetic pets.", lower_bound=2, upper_bound=37
)
SYNTHETIC_PER_BREED = flags.DEFINE_integer(
  "synthetic_per_breed", 100, "Synthetic images per breed.", lower_bound=1
)
SYNTHETIC_SIZE = flags.DEFINE_integer(
  "synthetic_size", 128, "Side of the synthetic images in pixels.", lower_bound=32
)


def load(ctx: context.RunContext) -> sources.SourceResult:
  """Loads --data; the synthetic pets are rendered into <workdir>/source first."""
  try:
    kind, location = sources.parse_spec(ctx.flags.data)
  except ValueError as e:
    raise UsageError(str(e)) from None
  if kind == "synthetic":
    from tfpets.data import synthetic

    csv_path = synthetic.write_dataset(
      ctx.workdir.root / "source",
      num_breeds=SYNTHETIC_BREEDS.value,
      images_per_breed=SYNTHETIC_PER_BREED.value,
      size=SYNTHETIC_SIZE.value,
      seed=ctx.seed,
      workers=WORKERS.value or (os.cpu_count() or 1),
    )
    return sources.load_source(f"csv:{csv_path}")
  options = {}
  if kind == "tfds":
    options = {
      "tfds_manual_dir": ctx.flags.tfds_manual_dir or None,
      "data_dir": ctx.flags.tfds_data_dir or None,
    }
  return sources.load_source(ctx.flags.data, **options)


def run(ctx: context.RunContext) -> None:
  source = load(ctx)
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
  result = convert.convert(source, ctx.workdir.records, ctx.workdir.reports, options)
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
