"""Train or fine-tune a DBPN network on a folder of high-resolution images (--sr_train_images) with
the official recipe (alterzero/DBPN-Pytorch main.py): L1 loss, Adam 1e-4 divided by 10 half-way,
random LR patches of --sr_train_patch pixels made by bicubic downscaling, flips and rotations.

--sr_model starts from a converted or trained network (fine-tuning on your own domain); without it
the weights start from Kaiming initialisation. Writes checkpoints/superres/ (resumable after a
kill), logs/train (loss, validation PSNR/SSIM, LR | SR | HR grids), models/dbpn.keras and
reports/superres_train.json (docs/superres.md).
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.runtime import context
from tfpets.superres import convert, dbpn, train

IMAGES = flags.DEFINE_string(
  "sr_train_images", "", "Folder of high-resolution training images (searched recursively)."
)
VAL_IMAGES = flags.DEFINE_string(
  "sr_train_val_images",
  "",
  "Folder of validation images. Empty: --sr_train_val_count images held out of the training folder.",
)
flags.DEFINE_integer(
  "sr_train_val_count", 8, "Images validated after every epoch (0: no validation).", 0
)
flags.DEFINE_enum("sr_train_variant", "dbpn", list(dbpn.VARIANTS), "Network to train.")
flags.DEFINE_enum("sr_train_scale", "4", ["2", "4", "8"], "Upscaling factor.")
flags.DEFINE_enum(
  "sr_train_residual",
  "auto",
  ["auto", "true", "false"],
  "Add the bicubic upscale to the output (auto: the variant's official setting; main.py trains "
  "with true).",
)
flags.DEFINE_integer("sr_train_patch", 40, "Low-resolution patch side in pixels.", 1)
flags.DEFINE_integer("sr_train_epochs", 2000, "Epochs (the last one, counting resumed ones).", 1)
flags.DEFINE_integer(
  "sr_train_steps_per_epoch", 0, "Steps per epoch (0: one patch per image).", lower_bound=0
)
flags.DEFINE_float("sr_train_learning_rate", 1e-4, "Adam's learning rate before half-way.", 0.0)
flags.DEFINE_boolean("sr_train_augment", True, "Random flips and rotations of the patch pairs.")
flags.DEFINE_float("sr_train_minutes", 0.0, "Wall-clock budget of training (0: epochs).", 0.0)
flags.DEFINE_boolean("sr_train_jit_compile", False, "XLA-compile the train step.")

# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  "hr_dir": "sr_train_images",
  "val_dir": "sr_train_val_images",
  "val_images": "sr_train_val_count",
  "init": "sr_model",
  "model": "sr_model",
  "variant": "sr_train_variant",
  "scale": "sr_train_scale",
  "patch_size": "sr_train_patch",
  "epochs": "sr_train_epochs",
  "batch_size": "batch_size",
}


def config_from_flags(flag_values) -> train.SuperResConfig:
  residual = {"auto": None, "true": True, "false": False}[flag_values.sr_train_residual]
  batch_size = flag_values.batch_size if flag_values["batch_size"].present else None
  fields = dict(
    variant=flag_values.sr_train_variant,
    scale=int(flag_values.sr_train_scale),
    residual=residual,
    patch_size=flag_values.sr_train_patch,
    epochs=flag_values.sr_train_epochs,
    steps_per_epoch=flag_values.sr_train_steps_per_epoch,
    learning_rate=flag_values.sr_train_learning_rate,
    augment=flag_values.sr_train_augment,
    init=str(convert.model_file(flag_values.sr_model)) if flag_values.sr_model else "",
    val_dir=flag_values.sr_train_val_images,
    val_images=flag_values.sr_train_val_count,
    jit_compile=flag_values.sr_train_jit_compile,
    seed=flag_values.seed,
    train_minutes=flag_values.sr_train_minutes,
  )
  if batch_size:  # The shared default suits classifiers; the recipe's batch suits DBPN.
    fields["batch_size"] = batch_size
  return train.SuperResConfig(**fields)


def run(ctx: context.RunContext) -> None:
  config = config_from_flags(ctx.flags)
  summary = train.train_superres(
    IMAGES.value, ctx.workdir.root, config, ctx.strategy, ctx.summary_writer("train")
  )
  print(json.dumps(summary, indent=2))
  logging.info("next: --stage=superres_eval --sr_model=%s", ctx.workdir.root)
