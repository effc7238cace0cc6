"""Run the trained landmark detector on image files: annotated images and one JSON per image."""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.errors import UsageError
from tfpets.landmarks import predict
from tfpets.runtime import context

NEEDS_STRATEGY = False

IMAGES = flags.DEFINE_string(
  "images",
  "",
  "Images to run the landmark detector on: a file, a folder (searched "
  "recursively) or a glob pattern such as 'photos/*.jpg'.",
)
DETECTOR = flags.DEFINE_string(
  "detector",
  "runs/landmarks",
  "A trained landmark detector: the workdir of --stage=landmarks "
  "or its models/ folder (detector.json, bbox.keras, landmarks.keras).",
)


def run(ctx: context.RunContext) -> None:
  paths = predict.list_images(IMAGES.value)
  detector = predict.Detector.from_directory(DETECTOR.value)
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
