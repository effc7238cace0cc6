"""Train the two-stage pet-face landmark detector (head box, then landmarks in the head crop)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import time

import numpy as np
from absl import flags, logging

from tfpets.data import decode
from tfpets.errors import UsageError
from tfpets.landmarks import augment, data, draw, evaluate, losses, predict, train, verifier
from tfpets.landmarks import model as model_lib
from tfpets.runtime import context
from tfpets.stages import crop as crop_stage

NUM_LANDMARKS = flags.DEFINE_integer(
  "num_landmarks",
  9,
  "Landmarks the detector predicts: 9 (Kaggle CAT order) or 5 (eyes, mouth, "
  "ear tips; taken from 9-point records as points 0, 1, 2, 4, 7).",
)
ROI_SIZE = flags.DEFINE_integer(
  "roi_size",
  0,
  "Side of the stage-2 frame (the square head ROI) in pixels; 0: --image_size. "
  "--image_size is the stage-1 frame (the whole image, letterboxed).",
  lower_bound=0,
)
HEAD = flags.DEFINE_enum(
  "lm_head",
  "heatmap",
  model_lib.HEADS,
  "Coordinate head of both stages: heatmap (integral regression over "
  "heatmaps, see --heatmap_stride) or dense (the spec's pooled features -> Dense x 2).",
)
HEATMAP_STRIDE = flags.DEFINE_enum(
  "heatmap_stride",
  "8",
  [str(s) for s in model_lib.HEATMAP_STRIDES],
  "--lm_head=heatmap: frame pixels per heatmap cell. 4 taps MobileNetV2's stride-4 features "
  "too: finer positions (boxes and landmarks) for a little more compute.",
)
WIDTH = flags.DEFINE_float(
  "lm_width_multiplier",
  0.35,
  "MobileNetV2 width multiplier (alpha) of both detector stages.",
  lower_bound=0.05,
)
UNITS = flags.DEFINE_integer(
  "lm_units", 128, "Width of the two hidden Dense layers.", lower_bound=1
)
POOLING = flags.DEFINE_enum(
  "lm_pooling", "max", model_lib.POOLINGS, "MobileNetV2 global pooling (none: flatten)."
)
BACKBONE_WEIGHTS = flags.DEFINE_string(
  "lm_backbone_weights",
  "",
  "Local MobileNetV2 no-top weights (.h5) for both backbones; empty: "
  "random initialisation. Nothing is downloaded.",
)
LANDMARK_NORM = flags.DEFINE_enum(
  "landmark_norm",
  "unit",
  model_lib.NORMS,
  "--lm_head=dense: how the coordinate outputs are parameterised: none (pixels of the frame), "
  "center (pixels from the frame/ROI centre), unit (the frame spans [-1, 1]). Metrics are "
  "always in pixels.",
)
ROI_MARGIN = flags.DEFINE_float(
  "roi_margin",
  0.1,
  "ROI around the stage-1 head box: this "
  "fraction of its longer side added on each side, then squared.",
  lower_bound=0.0,
)
ROI_PASSES = flags.DEFINE_integer(
  "roi_passes",
  2,
  "Stage-2 passes at prediction: the first on the ROI around the stage-1 box, "
  "each further one on the ROI around the previous pass's head box.",
  lower_bound=1,
)
ROI_FIRST_MARGIN = flags.DEFINE_float(
  "roi_first_margin",
  0.0,
  "Margin of the first stage-2 pass's ROI around the stage-1 box (0: "
  "--roi_margin). A wide first ROI keeps heads that stage 1 placed poorly inside it; stage 2 "
  "trains on margins from --roi_margin up to this one.",
  lower_bound=0.0,
)
ROI_FLIP = flags.DEFINE_boolean(
  "roi_flip",
  False,
  "Each stage-2 pass at prediction also runs on the mirrored ROI and averages "
  "the two estimates (twice the stage-2 work; box IoU about +0.015 on the synthetic pets).",
)
ROI_CANDIDATES = flags.DEFINE_integer(
  "roi_candidates",
  1,
  "Stage-1 boxes that get stage-2 passes at prediction: its own box and "
  "boxes on the next peaks of its centre heatmap. More than one candidate in all (with "
  "--roi_candidate_scales) also trains the head verifier, a small CNN that scores how well a "
  "box fits a head and keeps the candidate whose final box it scores highest (a stage-1 box on "
  "background clutter is then caught). 1: stage 1's box only.",
  lower_bound=1,
)
ROI_CANDIDATE_SCALES = flags.DEFINE_list(
  "roi_candidate_scales",
  [],
  "More candidates: stage 1's box scaled about its centre by each of "
  "these factors, e.g. 0.7 (stage 1 makes small heads' boxes about 1.5x too big, and stage 2 "
  "shrinks them only slowly).",
)
VERIFIER_SIZE = flags.DEFINE_integer(
  "verifier_size", 32, "Side of the head verifier's frame.", lower_bound=16
)
VERIFIER_SECONDS = flags.DEFINE_float(
  "verifier_seconds",
  60.0,
  "With more than one candidate: wall-clock seconds for building the "
  "verifier's examples and training it, right after stage 1 (in turn, stage 2 then gets what is "
  "left of --lm_train_minutes; with --lm_concurrent_stages, stage 1 ends this long before the "
  "end).",
  lower_bound=1.0,
)
VERIFIER_IMAGES = flags.DEFINE_integer(
  "verifier_images",
  4000,
  "Training images the verifier's examples come from (each gives about ten ROIs).",
  lower_bound=1,
)
ROI_JITTER = flags.DEFINE_float(
  "roi_jitter",
  0.1,
  "Training ROIs vary each side's margin by U[-jitter, jitter] x the longer box side.",
  lower_bound=0.0,
)
EPOCHS = flags.DEFINE_integer("lm_epochs", 300, "Maximum epochs per stage.", lower_bound=1)
TRAIN_MINUTES = flags.DEFINE_float(
  "lm_train_minutes",
  0.0,
  "Wall-clock budget for training both stages and the head verifier "
  "(0: none, --lm_epochs alone decides); a stage stops before an epoch that would overrun its "
  "share.",
  lower_bound=0.0,
)
BBOX_SHARE = flags.DEFINE_float(
  "lm_bbox_share",
  0.6,
  "Share of --lm_train_minutes for stage 1 (head box); stage 2 gets what "
  "stage 1 and the head verifier leave. Not used with --lm_concurrent_stages.",
  lower_bound=0.05,
  upper_bound=0.95,
)
CONCURRENT = flags.DEFINE_boolean(
  "lm_concurrent_stages",
  False,
  "Train stage 2 in a second thread while stage 1, then the head "
  "verifier, train (stage 2 needs neither). The models are small: on a CPU, two stages at one "
  "thread per op (--intra_op_threads=1) get through nearly twice the steps of one stage on all "
  "cores. With --lm_train_minutes, stage 1 then ends --verifier_seconds before the end when "
  "the verifier follows it. One device only.",
)
ANNEAL_AT = flags.DEFINE_float(
  "lm_anneal_at",
  0.0,
  "With --lm_train_minutes: fraction of a stage's share after which its "
  "learning rate drops 10x, once (0: never).",
  lower_bound=0.0,
  upper_bound=1.0,
)
STEPS = flags.DEFINE_integer(
  "lm_steps_per_epoch", 0, "Steps per epoch; 0: one pass over the training images.", lower_bound=0
)
LEARNING_RATE = flags.DEFINE_float("lm_learning_rate", 1e-3, "Adam learning rate.", lower_bound=0.0)
LOSS_FN = flags.DEFINE_enum(
  "loss_fn",
  "mse",
  losses.LOSS_FNS,
  "Head-box loss of stage 1: mse, or iou (1 - IoU, after "
  "--iou_warmup_steps MSE steps). Stage 2 always uses MSE.",
)
WARMUP = flags.DEFINE_integer(
  "iou_warmup_steps", 50, "MSE steps (one epoch) before the IoU loss.", lower_bound=0
)
HEATMAP_WEIGHT = flags.DEFINE_float(
  "heatmap_loss_weight",
  10.0,
  "--lm_head=heatmap: weight of the cross-entropy between each "
  "heatmap and a Gaussian around its true point, beside the coordinate losses.",
  lower_bound=0.0,
)
FLIP = flags.DEFINE_boolean(
  "flip_horizontal", False, "Mirror half of the training frames, swapping left/right landmarks."
)
ROTATE_N = flags.DEFINE_float(
  "rotate_n",
  0.0,
  "Rotate training images by U[-n, n] degrees on an expanded canvas.",
  lower_bound=0.0,
  upper_bound=180.0,
)
CROP_BALANCED = flags.DEFINE_boolean(
  "crop_scale_balanced",
  False,
  "Stage 1: crop training images around the head with the spec's "
  "scale-balancing distribution (side = bb + v * 13 bb).",
)
NEGATIVES = flags.DEFINE_float(
  "head_negative_fraction",
  0.1,
  "Stage 1: fraction of training frames cut away from the head, which "
  "teach the head-presence output.",
  lower_bound=0.0,
  upper_bound=0.9,
)
HEAD_THRESHOLD = flags.DEFINE_float(
  "head_threshold",
  0.5,
  "Head presence probability below which no head is reported.",
  lower_bound=0.0,
  upper_bound=1.0,
)
PLATEAU_FACTOR = flags.DEFINE_float(
  "reduce_lr_on_plateau_factor", 0.6, "ReduceLROnPlateau factor.", lower_bound=0.0, upper_bound=1.0
)
PLATEAU_PATIENCE = flags.DEFINE_integer(
  "reduce_lr_on_plateau_patience",
  8,
  "ReduceLROnPlateau patience in epochs; EarlyStopping waits 2 * patience + 3.",
  lower_bound=1,
)
OVERLAY_EVERY = flags.DEFINE_integer(
  "lm_overlay_every", 5, "Epochs between TensorBoard predicted-versus-true overlays.", lower_bound=1
)
EVAL_SPLIT = flags.DEFINE_string("lm_eval_split", "test", "Held-out split for the final report.")
EXPORT = flags.DEFINE_boolean(
  "lm_export", True, "Export SavedModels and TFLite models to <workdir>/export after training."
)


def detector_config(ctx: context.RunContext) -> model_lib.DetectorConfig:
  return model_lib.DetectorConfig(
    image_size=ctx.flags.image_size,
    roi_size=ROI_SIZE.value or ctx.flags.image_size,
    num_landmarks=NUM_LANDMARKS.value,
    head=HEAD.value,
    width_multiplier=WIDTH.value,
    units=UNITS.value,
    pooling=POOLING.value,
    landmark_norm=LANDMARK_NORM.value,
    roi_margin=ROI_MARGIN.value,
    roi_passes=ROI_PASSES.value,
    roi_first_margin=ROI_FIRST_MARGIN.value,
    head_threshold=HEAD_THRESHOLD.value,
    roi_flip=ROI_FLIP.value,
    roi_candidates=ROI_CANDIDATES.value,
    roi_candidate_scales=ROI_CANDIDATE_SCALES.value,
    verifier_size=VERIFIER_SIZE.value,
    heatmap_stride=int(HEATMAP_STRIDE.value),
  )


def augment_options() -> augment.AugmentOptions:
  return augment.AugmentOptions(
    flip_horizontal=FLIP.value,
    rotate_n=ROTATE_N.value,
    crop_scale_balanced=CROP_BALANCED.value,
    negative_fraction=NEGATIVES.value,
    roi_margin=ROI_MARGIN.value,
    roi_jitter=ROI_JITTER.value,
    roi_first_margin=ROI_FIRST_MARGIN.value,
  )


def train_options(ctx: context.RunContext) -> train.TrainOptions:
  return train.TrainOptions(
    epochs=EPOCHS.value,
    steps_per_epoch=STEPS.value,
    batch_size=ctx.flags.batch_size,
    learning_rate=LEARNING_RATE.value,
    loss_fn=LOSS_FN.value,
    plateau_factor=PLATEAU_FACTOR.value,
    plateau_patience=PLATEAU_PATIENCE.value,
    warmup_steps=WARMUP.value,
    heatmap_weight=HEATMAP_WEIGHT.value,
    overlay_every=OVERLAY_EVERY.value,
    seed=ctx.seed,
    backbone_weights=BACKBONE_WEIGHTS.value,
  )


def run(ctx: context.RunContext) -> None:
  start = time.time()
  shards_dir = data.find_shards(ctx.flags.records)
  config = detector_config(ctx)
  models_dir = ctx.workdir.root / "models"
  paths = train.RunPaths(ctx.workdir.checkpoints, models_dir, ctx.workdir.logs)
  config.save(models_dir)
  writer = ctx.summary_writer("train")
  options, augmentation = train_options(ctx), augment_options()
  stage_one = functools.partial(
    _train_stage_one, config, shards_dir, paths, augmentation, options, start, ctx, writer
  )
  stage_two = functools.partial(
    train.train_stage,
    "landmarks",
    config,
    shards_dir,
    paths,
    augmentation,
    _with_deadline(options, "landmarks", start, config),
    ctx.strategy,
    writer,
  )
  if CONCURRENT.value:
    if ctx.strategy.num_replicas_in_sync > 1:
      raise UsageError(
        "--lm_concurrent_stages trains two stages on one device at once; with "
        f"{ctx.strategy.num_replicas_in_sync} replicas, pass "
        "--nolm_concurrent_stages"
      )
    (trained, summaries), second = train.train_concurrently(stage_one, stage_two)
    trained["landmarks"], summaries["landmarks"] = second
  else:
    trained, summaries = stage_one()
    trained["landmarks"], summaries["landmarks"] = stage_two()
  train_seconds = time.time() - start
  train_cpu_seconds = _cpu_seconds()

  models = [trained[stage] for stage in model_lib.stages_of(config)]
  detector = predict.Detector.from_models(config, *models)
  samples = evaluate.collect(shards_dir, EVAL_SPLIT.value, config.num_landmarks)
  metrics = evaluate.evaluate_detector(detector, samples, crop_stage.CROP_MARGIN.value)
  metrics["roi_rmse_frame_px"] = evaluate.roi_rmse(
    trained["landmarks"], shards_dir, EVAL_SPLIT.value, config
  )
  metrics["roi_rmse_224_px"] = metrics["roi_rmse_frame_px"] * 224.0 / config.roi_size
  _write_overlays(ctx, samples[:16], writer)
  report = {
    "records": str(shards_dir),
    "split": EVAL_SPLIT.value,
    "metrics": metrics,
    "stages": summaries,
    "config": config.__dict__,
    "seconds_to_trained_models": round(train_seconds, 1),
    # CPU seconds of this process: on a shared machine, wall time overstates the cost.
    "cpu_seconds_to_trained_models": round(train_cpu_seconds, 1),
    "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    "cpu_count": os.cpu_count(),
  }
  if EXPORT.value:
    from tfpets.landmarks import export

    report["export"] = export.export_detector(config, models, ctx.workdir.root / "export")
  report["seconds_total"] = round(time.time() - start, 1)
  path = ctx.workdir.reports / "landmarks_metrics.json"
  path.write_text(json.dumps(report, indent=2) + "\n")
  logging.info(
    "landmarks: %s RMSE %.2f px, box IoU %.3f, crops contain the head %.1f%% -> %s",
    EVAL_SPLIT.value,
    metrics["rmse_px"],
    metrics["box_iou"],
    100 * metrics["crop_contains_head"],
    path,
  )
  print(
    json.dumps(
      {
        "report": str(path),
        **{
          k: metrics[k]
          for k in (
            "rmse_px",
            "box_iou",
            "stage1_box_iou",
            "crop_contains_head",
            "head_found_rate",
            "roi_rmse_frame_px",
          )
        },
        "seconds_to_trained_models": report["seconds_to_trained_models"],
        "cpu_seconds_to_trained_models": report["cpu_seconds_to_trained_models"],
      },
      indent=2,
    )
  )


def _train_verifier(
  config, shards_dir, paths: train.RunPaths, bbox_model, seed: int, extra_callbacks=()
):
  """Trains the verifier within --verifier_seconds (building its examples takes about 20 s of
  them)."""

  def samples(split, limit):
    return evaluate.collect(shards_dir, split, config.num_landmarks, limit=limit)

  train_samples, val_samples = samples("train", VERIFIER_IMAGES.value), samples("val", 200)
  return verifier.train_verifier(
    config,
    train_samples,
    val_samples,
    predict.keras_stage(bbox_model),
    paths.models,
    paths.checkpoints,
    VERIFIER_SECONDS.value,
    seed,
    extra_callbacks=extra_callbacks,
  )


def _train_stage_one(
  config,
  shards_dir,
  paths: train.RunPaths,
  augmentation,
  options,
  start,
  ctx: context.RunContext,
  writer,
  extra_callbacks=(),
):
  """Stage 1, then the head verifier when there are several candidates; returns (models,
  summaries) by stage name."""
  trained, summaries = {}, {}
  trained["bbox"], summaries["bbox"] = train.train_stage(
    "bbox",
    config,
    shards_dir,
    paths,
    augmentation,
    _with_deadline(options, "bbox", start, config),
    ctx.strategy,
    writer,
    extra_callbacks,
  )
  if config.num_candidates > 1:
    # The verifier needs stage 1 only. Trained right after it, it gets its seconds whatever
    # stage 2 does, and stage 2 ends by the deadline.
    trained["verifier"], summaries["verifier"] = _train_verifier(
      config, shards_dir, paths, trained["bbox"], ctx.seed, extra_callbacks
    )
  return trained, summaries


def _with_deadline(
  options: train.TrainOptions, stage: str, start: float, config: model_lib.DetectorConfig
) -> train.TrainOptions:
  """The options with the end of this stage's share of --lm_train_minutes, counted from the
  run's `start`. Stage 2 ends at the end. Stage 1 ends at its --lm_bbox_share, or, with
  --lm_concurrent_stages, at the end less the --verifier_seconds of the verifier that follows
  it (if there is one)."""
  total = 60.0 * TRAIN_MINUTES.value
  if not total:
    return options
  end = total
  if stage == "bbox":
    verifier_seconds = VERIFIER_SECONDS.value if config.num_candidates > 1 else 0.0
    end = total - verifier_seconds if CONCURRENT.value else total * BBOX_SHARE.value
  return dataclasses.replace(options, deadline=start + end, anneal_at=ANNEAL_AT.value)


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _write_overlays(ctx: context.RunContext, samples, writer) -> None:
  """Predicted (yellow) versus true (red) on held-out images, in TensorBoard and images/."""
  if not samples:
    return
  side = max(max(s["image"].shape[:2]) for s in samples)
  pictures = []
  for s in samples:
    det = s["detection"]
    picture = draw.overlay(
      s["image"], det.landmarks, det.box, s["points"], s["box"], det.roi, zoom=max(1, 256 // side)
    )
    canvas = np.zeros((side * max(1, 256 // side),) * 2 + (3,), np.uint8)
    canvas[: picture.shape[0], : picture.shape[1]] = picture
    pictures.append(canvas)
  grid = writer.grid("detector/test_predicted_vs_true", np.stack(pictures), step=0)
  (ctx.workdir.images / "test_predicted_vs_true.png").write_bytes(decode.encode_png(grid))
