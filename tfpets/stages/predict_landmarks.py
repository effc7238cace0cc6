"""Run the trained landmark detector on image files: annotated images and one JSON per image."""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.errors import UsageError
from tfpets.landmarks import predict
from tfpets.runtime import context
from tfpets.runtime import flags as shared_flags

NEEDS_STRATEGY = False

IMAGES = flags.DEFINE_string(
  "predict_images",
  "",
  "Images to run the landmark detector (--detector) on: a file, a folder (searched recursively) "
  "or a glob pattern such as 'photos/*.jpg'.",
)
# The spelling the README used before the predict_ prefix.
shared_flags.define_deprecated_alias("images", "predict_images", __name__)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {"images": "predict_images", "directory": "detector"}


def run(ctx: context.RunContext) -> None:
  paths = predict.list_images(IMAGES.value)
  detector = predict.Detector.from_directory(shared_flags.DETECTOR.value)
  results = predict.predict_files(
    detector, paths, ctx.workdir.images, ctx.workdir.reports / "predictions"
  )
  failed = [r for r in results if "error" in r]
  summary_path = ctx.workdir.reports / "predictions.jsonl"
  summary_path.write_text("".join(json.dumps(r) + "\n" for r in results))
  found = sum(1 for r in results if r.get("head_found"))
  logging.info(
    "%d images: %d with a head, %d without, %d unreadable -> %s",
    len(results),
    found,
    len(results) - found - len(failed),
    len(failed),
    summary_path,
  )
  if failed and (ctx.flags.strict or len(failed) == len(results)):
    raise UsageError(
      f"{len(failed)} of {len(results)} image(s) could not be read, first "
      f"{failed[0]['path']}: {failed[0]['error']}"
    )
  print(
    json.dumps(
      {
        "images": len(results),
        "head_found": found,
        "unreadable": len(failed),
        "predictions": str(summary_path),
        "annotated_images": str(ctx.workdir.images),
      },
      indent=2,
    )
  )
