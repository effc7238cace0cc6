"""Upscale small images with a DBPN network (--sr_model): every image of a folder, glob or CSV
whose width x height is below --sr_max_area, as GrabAI did for Stanford Cars before predicting.

Writes the whole set to --sr_output (upscaled images, the others copied) or upscales in place,
with manifest.csv (what was done to each image, and why) and rejects.csv (docs/superres.md).
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.runtime import context
from tfpets.runtime import flags as shared_flags
from tfpets.superres import upscale

NEEDS_STRATEGY = False

IMAGES = flags.DEFINE_string(
  "sr_images",
  "",
  "Images to upscale: a folder (class subfolders are kept), a glob pattern such as "
  "'photos/**/*.jpg', or a CSV file of image paths (--sr_data_dir).",
)
DATA_DIR = flags.DEFINE_string("sr_data_dir", "", "Folder the paths of a CSV are relative to.")
OUTPUT = flags.DEFINE_string(
  "sr_output", "", "Folder for the upscaled set (default: <workdir>/upscaled)."
)
IN_PLACE = flags.DEFINE_boolean(
  "sr_in_place",
  False,
  "Replace each upscaled image by its upscaled version (GrabAI's behaviour) instead of writing "
  "a new folder; the manifest then goes to --sr_output.",
)
FORMAT = flags.DEFINE_enum(
  "sr_format",
  "same",
  upscale.FORMATS,
  "File format of upscaled images: same (JPEG names stay JPEG, quality 95; others PNG) or png.",
)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  **shared_flags.UPSCALER_ARGUMENT_FLAGS,
  "source": "sr_images",
  "sources": "sr_images",
  "data_dir": "sr_data_dir",
  "output_dir": "sr_output",
  "batch_size": "batch_size",
}


def run(ctx: context.RunContext) -> None:
  upscaler = upscale.load_upscaler(ctx.flags.sr_model, **shared_flags.upscaler_options(ctx.flags))
  output = OUTPUT.value or str(ctx.workdir.root / "upscaled")
  summary = upscale.upscale_images(
    upscaler,
    IMAGES.value,
    output,
    data_dir=DATA_DIR.value or None,
    max_area=ctx.flags.sr_max_area,
    in_place=IN_PLACE.value,
    format=FORMAT.value,
    batch_size=ctx.flags.batch_size,
  )
  (ctx.workdir.reports / "superres.json").write_text(json.dumps(summary, indent=2) + "\n")
  logging.info("upscaled set in %s", output)
  print(json.dumps(summary, indent=2))
