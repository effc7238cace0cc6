"""Train a classifier (--model) on a converted dataset (--records): WS-DAN, ViT, EfficientNet or
the Xception baseline, each with its published recipe unless flags say otherwise (docs/classify.md).

Writes checkpoints/classify/ (resumable after a kill), logs/train (TensorBoard curves, WS-DAN
attention maps), models/classifier.{json,weights.h5} and reports/classify.json.
"""

from __future__ import annotations

import dataclasses
import json

from absl import flags, logging

from tfpets.classify import augment, train
from tfpets.runtime import context

flags.DEFINE_enum("cls_wsdan_variant", "paper", train.WSDAN_VARIANTS, "WS-DAN variant.")
flags.DEFINE_boolean(
  "cls_wsdan_attention",
  True,
  "WS-DAN with its attention; false trains its backbone alone, pooled (the ablation).",
)
flags.DEFINE_integer("cls_num_maps", 0, "WS-DAN attention maps (0: 32 paper, 64 cars).", 0)
flags.DEFINE_enum(
  "cls_efficientnet", "b0", [f"b{i}" for i in range(8)], "EfficientNet variant (--model)."
)
flags.DEFINE_enum(
  "cls_vit_size", "base", ["tiny", "small", "base"], "Random-init ViT size (no --preset)."
)
flags.DEFINE_float("cls_dropout", 0.0, "Dropout before the classification layer.", 0.0, 0.9)
flags.DEFINE_boolean("cls_drop_connect", True, "EfficientNet's per-block stochastic depth.")
flags.DEFINE_integer("cls_epochs", 30, "Epochs (the last one, counting resumed ones).", 1)
flags.DEFINE_integer("cls_steps_per_epoch", 0, "Steps per epoch (0: one pass).", lower_bound=0)
flags.DEFINE_enum("cls_optimizer", "", ("",) + train.OPTIMIZERS, "Optimiser ('': recipe's).")
flags.DEFINE_float("cls_learning_rate", 0.0, "Learning rate (0: the recipe's).", 0.0)
flags.DEFINE_enum(
  "cls_schedule",
  "",
  ("",) + train.SCHEDULES,
  "Learning-rate schedule ('': recipe's): exponential (x0.9 every --cls_decay_epochs), plateau "
  "(ReduceLROnPlateau on val_loss), cosine, constant.",
)
flags.DEFINE_float("cls_weight_decay", -1.0, "Weight decay (<0: the recipe's).")
flags.DEFINE_float("cls_plateau_factor", 0.0, "ReduceLROnPlateau factor (0: recipe's).", 0.0, 1.0)
flags.DEFINE_integer("cls_plateau_patience", 0, "ReduceLROnPlateau patience (0: recipe's).", 0)
flags.DEFINE_integer("cls_decay_epochs", 2, "Exponential schedule: epochs per x0.9.", 1)
flags.DEFINE_float("cls_label_smoothing", 0.0, "Label smoothing (not WS-DAN).", 0.0, 0.5)
flags.DEFINE_enum(
  "cls_augment", "", ("",) + augment.AUGMENTATIONS, "Batch augmentation ('': recipe's)."
)
flags.DEFINE_enum("cls_mixing", "none", augment.BATCH_MIXINGS, "MixUp or CutMix (not WS-DAN).")
flags.DEFINE_enum(
  "cls_class_weights", "recipe", ["recipe", "balanced", "none"], "Per-class loss weights."
)
flags.DEFINE_string("cls_train_split", "train", "Split of --records to train on.")
flags.DEFINE_string("cls_val_split", "val", "Split that picks the best epoch and the schedule.")
flags.DEFINE_float("cls_train_minutes", 0.0, "Wall-clock budget of training (0: epochs).", 0.0)
flags.DEFINE_boolean("cls_jit_compile", False, "XLA-compile the train step.")
flags.DEFINE_integer("cls_overlay_every", 5, "Epochs between attention overlays (WS-DAN).", 1)
flags.DEFINE_boolean(
  "cls_sync_batch_norm", True, "BatchNorm statistics over all replicas' batches."
)

# Config fields set by a shared flag of the same name; the others come from --cls_<field>.
_SHARED = ("model", "preset", "backbone_weights", "image_size", "batch_size", "seed")
_RENAMED = {"efficientnet_variant": "cls_efficientnet"}
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  field.name: field.name if field.name in _SHARED else _RENAMED.get(field.name, f"cls_{field.name}")
  for field in dataclasses.fields(train.ClassifyConfig)
}
ARGUMENT_FLAGS.update(records="records", classifier="classifier")


def config_from_flags(flag_values) -> train.ClassifyConfig:
  fields = {field.name for field in dataclasses.fields(train.ClassifyConfig)}
  values = {name: flag_values[ARGUMENT_FLAGS[name]].value for name in fields}
  if not flag_values["image_size"].present:
    values["image_size"] = 0  # the model's standard size
  values["class_weights"] = {"recipe": None, "balanced": True, "none": False}[
    values["class_weights"]
  ]
  return train.ClassifyConfig(**values)


def run(ctx: context.RunContext) -> None:
  config = config_from_flags(ctx.flags)
  summary = train.train_classifier(
    ctx.flags.records, ctx.workdir.root, config, ctx.strategy, ctx.summary_writer("train")
  )
  (ctx.workdir.reports / "classify.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(json.dumps(summary, indent=2))
  logging.info("next: --stage=evaluate --classifier=%s", ctx.workdir.root)
