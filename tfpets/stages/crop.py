"""Crop a converted dataset to the pets' heads (the cropped variant), as class folders + records."""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.data.tfrecord import shards
from tfpets.landmarks import crop as crop_lib
from tfpets.runtime import context
from tfpets.runtime import flags as shared_flags

USE_ANNOTATIONS = flags.DEFINE_boolean(
  "crop_use_annotations",
  False,
  "Crop around the annotated head box and landmarks instead of the predictions of --detector.",
)
CROP_SIZE = flags.DEFINE_integer(
  "crop_size",
  128,
  "Side of the saved square crops in pixels (a power of two also gets StyleGAN records).",
  lower_bound=8,
)
NO_HEAD = flags.DEFINE_enum(
  "crop_no_head",
  "keep",
  crop_lib.NO_HEAD_ACTIONS,
  "Images where no head is found: keep them uncropped (the whole image padded square) or skip "
  "them. Either way they are listed in reports/no_head.csv.",
)
CROP_WORKERS = flags.DEFINE_integer(
  "crop_workers",
  0,
  "Processes for converting the crops to records (0: one per core).",
  lower_bound=0,
)
# Spellings that launch/ flagfiles and the README used before the crop_ prefix.
shared_flags.define_deprecated_aliases(
  {"use_annotations": "crop_use_annotations", "no_head": "crop_no_head"}, __name__
)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {"records": "records", "directory": "detector", "no_head": "crop_no_head"}


def run(ctx: context.RunContext) -> None:
  shards_dir = shards.find_shards(ctx.flags.records)
  detector = None
  if not USE_ANNOTATIONS.value:
    from tfpets.landmarks import predict

    detector = predict.Detector.from_directory(shared_flags.DETECTOR.value)
  options = crop_lib.CropOptions(
    margin=shared_flags.CROP_MARGIN.value,
    size=CROP_SIZE.value,
    no_head=NO_HEAD.value,
    use_annotations=USE_ANNOTATIONS.value,
  )
  outcome = crop_lib.crop_dataset(shards_dir, ctx.workdir.root / "crops", detector, options)
  reports = crop_lib.write_reports(outcome, ctx.workdir.reports)
  result = crop_lib.convert_crops(
    outcome, ctx.workdir.records, ctx.workdir.reports, CROP_SIZE.value, CROP_WORKERS.value, ctx.seed
  )
  summary = {
    "crops": str(ctx.workdir.root / "crops"),
    "shards": result.shards_dir,
    "stylegan": result.gan_dir,
    "splits": result.split_counts,
    "no_head": len(outcome.no_head),
    "no_head_action": NO_HEAD.value,
    "crops_containing_true_head": outcome.contained_fraction,
    "crops_csv": reports["crops"],
    "no_head_csv": reports["no_head"],
  }
  (ctx.workdir.reports / "crop_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  logging.info("crop: %d images -> %s", len(outcome.rows), result.shards_dir)
  print(json.dumps(summary, indent=2))
