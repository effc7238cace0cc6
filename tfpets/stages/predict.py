"""Run a trained classifier (--classifier) on images: a folder (class subfolders give labels), a
glob pattern or a CSV. Writes predictions/predictions.csv (path, label, per-class probabilities),
the GrabAI-compatible <name>_ImageList.csv and <name>_PredictedProbabilities.npy (also under the
original misspelt name), and, with labels, the evaluation reports.
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.classify import predict, train
from tfpets.data import listing
from tfpets.runtime import context

NEEDS_STRATEGY = False

IMAGES = flags.DEFINE_string(
  "cls_images",
  "",
  "Images to classify: a folder (with class subfolders: labelled, in sorted order), a glob "
  "pattern such as 'photos/*.jpg', or a CSV file (--cls_csv_headings).",
)
DATA_DIR = flags.DEFINE_string("cls_data_dir", "", "Folder the paths of a CSV are relative to.")
HEADINGS = flags.DEFINE_list(
  "cls_csv_headings", ["image", "label"], "CSV columns of the image path and the (optional) label."
)
NAME = flags.DEFINE_string(
  "cls_predict_name", "", "Prefix of the GrabAI-compatible files (default: the model's name)."
)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  "classifier": "classifier",
  "source": "cls_images",
  "data_dir": "cls_data_dir",
  "headings": "cls_csv_headings",
}


def run(ctx: context.RunContext) -> None:
  images = listing.list_images(IMAGES.value, data_dir=DATA_DIR.value, headings=HEADINGS.value)
  model, class_names, config = train.load_classifier(ctx.flags.classifier)
  output = ctx.workdir.root / "predictions"
  name = NAME.value or train.describe(config).replace(" ", "").replace("(", "_").strip(")")
  result = predict.predict_folder(
    model, images, config.image_size, class_names, output, name, ctx.flags.batch_size
  )
  logging.info("predictions in %s", output)
  print(json.dumps(result["summary"], indent=2))
