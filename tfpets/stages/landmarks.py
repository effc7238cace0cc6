"""Train the two-stage pet-face landmark detector (head box, then landmarks in the head crop)."""

from __future__ import annotations

import json
from dataclasses import fields

from absl import flags

from tfpets.landmarks import augment, losses, pipeline, train
from tfpets.landmarks import model as model_lib
from tfpets.runtime import context
from tfpets.runtime import flags as shared_flags

# Each --lm_<name> flag sets the argument <name> of the detector's options (`_from_flags`).
flags.DEFINE_integer(
  "lm_num_landmarks", 9, "9 (Kaggle CAT order) or 5 (eyes, mouth, ear tips; from 9-point records)."
)
flags.DEFINE_integer(
  "lm_roi_size", 0, "Side of stage 2's frame, the head ROI (0: --image_size).", lower_bound=0
)
flags.DEFINE_enum("lm_head", "heatmap", model_lib.HEADS, "Coordinate head of both stages.")
flags.DEFINE_integer("lm_heatmap_stride", 8, "Heatmap head: frame pixels per heatmap cell, 4 or 8.")
flags.DEFINE_float(
  "lm_width_multiplier", 0.35, "MobileNetV2 width (alpha) of both stages.", lower_bound=0.05
)
flags.DEFINE_integer("lm_units", 128, "Width of the dense head's hidden layers.", lower_bound=1)
flags.DEFINE_enum("lm_pooling", "max", model_lib.POOLINGS, "MobileNetV2 pooling (none: flatten).")
flags.DEFINE_string(
  "lm_backbone_weights", "", "Local MobileNetV2 no-top .h5 for both backbones (empty: random)."
)
flags.DEFINE_enum(
  "lm_landmark_norm",
  "unit",
  model_lib.NORMS,
  "Dense head: outputs in frame pixels (none), pixels from the centre (center) or [-1, 1] (unit).",
)
flags.DEFINE_float(
  "lm_roi_margin", 0.1, "ROI margin per side, a fraction of the head box's longer side.", 0.0
)
flags.DEFINE_integer(
  "lm_roi_passes", 2, "Stage-2 passes, each on the ROI around the last head box.", lower_bound=1
)
flags.DEFINE_float(
  "lm_roi_first_margin", 0.0, "Margin of the first pass's ROI (0: --lm_roi_margin).", lower_bound=0
)
flags.DEFINE_boolean("lm_roi_flip", False, "Average each stage-2 pass with its mirror image.")
flags.DEFINE_integer(
  "lm_roi_candidates",
  1,
  "Stage-1 boxes (its own, then the next peaks of its centre heatmap) that get stage-2 passes; "
  "with more than one candidate, a head verifier is trained to keep the best final box.",
  lower_bound=1,
)
flags.DEFINE_list(
  "lm_roi_candidate_scales", [], "More candidates: stage 1's box scaled by these, e.g. 0.7,0.5."
)
flags.DEFINE_integer("lm_verifier_size", 32, "Side of the head verifier's frame.", lower_bound=16)
flags.DEFINE_float("lm_head_threshold", 0.5, "Head probability under which no head is found.", 0, 1)
flags.DEFINE_boolean("lm_flip_horizontal", False, "Mirror half of the training frames.")
flags.DEFINE_float("lm_rotate_n", 0.0, "Rotate training images by U[-n, n] degrees.", 0, 180)
flags.DEFINE_boolean(
  "lm_crop_scale_balanced", False, "Stage 1: frederic's scale-balancing crops around the head."
)
flags.DEFINE_float(
  "lm_head_negative_fraction", 0.1, "Stage 1: fraction of frames cut away from the head.", 0, 0.9
)
flags.DEFINE_float(
  "lm_roi_jitter", 0.1, "Training ROIs: each side's margin varies by up to this.", lower_bound=0
)
flags.DEFINE_integer("lm_epochs", 300, "Maximum epochs per stage.", lower_bound=1)
flags.DEFINE_integer("lm_steps_per_epoch", 0, "Steps per epoch (0: one pass).", lower_bound=0)
flags.DEFINE_float("lm_learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_enum("lm_loss_fn", "mse", losses.LOSS_FNS, "Stage 1's box loss (stage 2: mse).")
flags.DEFINE_integer("lm_iou_warmup_steps", 50, "MSE steps before the IoU loss.", lower_bound=0)
flags.DEFINE_float("lm_heatmap_loss_weight", 10.0, "Heatmap head: heatmap loss weight.", 0)
flags.DEFINE_float("lm_plateau_factor", 0.6, "ReduceLROnPlateau factor.", 0.0, 1.0)
flags.DEFINE_integer("lm_plateau_patience", 8, "ReduceLROnPlateau patience; EarlyStopping 2x+3.", 1)
flags.DEFINE_integer("lm_overlay_every", 5, "Epochs between TensorBoard overlays.", lower_bound=1)
flags.DEFINE_float(
  "lm_train_minutes",
  0.0,
  "Wall-clock budget of all training (0: --lm_epochs decides); a stage stops before an epoch "
  "that would overrun its share.",
  lower_bound=0.0,
)
flags.DEFINE_float("lm_bbox_share", 0.6, "Stage 1's share of the budget, in turn.", 0.05, 0.95)
flags.DEFINE_boolean(
  "lm_concurrent_stages",
  False,
  "Train stage 2 in a second thread beside stage 1 and then the verifier, for the whole budget "
  "(one device; on a CPU with --intra_op_threads=1).",
)
flags.DEFINE_float(
  "lm_anneal_at", 0.0, "Learning rate x0.1 once this share of a stage's time is spent.", 0.0, 1.0
)
flags.DEFINE_float("lm_verifier_seconds", 60.0, "Head verifier's time, its examples included.", 1)
flags.DEFINE_integer("lm_verifier_images", 4000, "Images of the verifier's examples.", 1)
flags.DEFINE_string("lm_eval_split", "test", "Held-out split for the final report.")
flags.DEFINE_boolean("lm_export", True, "Export SavedModels and TFLite models to <workdir>/export.")

# Spellings that launch/ flagfiles and the README used before the lm_ prefix.
_OLD_SPELLINGS = (
  "num_landmarks roi_size heatmap_stride landmark_norm roi_margin roi_passes roi_first_margin "
  "roi_flip roi_candidates roi_candidate_scales roi_jitter verifier_seconds loss_fn "
  "iou_warmup_steps flip_horizontal rotate_n crop_scale_balanced"
).split()
for _old in _OLD_SPELLINGS:
  shared_flags.define_deprecated_alias(_old, "lm_" + _old, __name__)
for k in ("factor", "patience"):
  shared_flags.define_deprecated_alias(f"reduce_lr_on_plateau_{k}", f"lm_plateau_{k}", __name__)
# Shared flags that set library arguments of their own name.
_SHARED = ("image_size", "batch_size", "seed", "crop_margin", "records")
_OPTIONS = (
  model_lib.DetectorConfig,
  train.TrainOptions,
  augment.AugmentOptions,
  pipeline.PipelineOptions,
)


def _flag_of(argument: str) -> str | None:
  if f"lm_{argument}" in flags.FLAGS:
    return f"lm_{argument}"
  return argument if argument in _SHARED else None


# The flag each library argument comes from, so that the launcher words the library's errors
# with flags: --lm_<argument>, or a shared flag.
ARGUMENT_FLAGS = {
  name: flag
  for name in ["records", *(f.name for cls in _OPTIONS for f in fields(cls))]
  if (flag := _flag_of(name))
}


def _from_flags(cls):
  """`cls` with every field that a flag sets (ARGUMENT_FLAGS) set from it."""
  names = [f.name for f in fields(cls) if f.name in ARGUMENT_FLAGS]
  return cls(**{name: flags.FLAGS[ARGUMENT_FLAGS[name]].value for name in names})


def run(ctx: context.RunContext) -> None:
  arguments = [_from_flags(cls) for cls in _OPTIONS]  # config, training, augmentation, run
  writer = ctx.summary_writer("train")
  report = pipeline.train_detector(ctx.flags.records, ctx.workdir, *arguments, ctx.strategy, writer)
  print(json.dumps(pipeline.headline(report), indent=2))
