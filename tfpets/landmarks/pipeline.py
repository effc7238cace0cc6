"""A whole training run of the detector: stage 1, the head verifier and stage 2 within one time
budget, then the held-out evaluation, overlays, exports and a report.

Outputs, under the run's workdir: models/ (detector.json and the stage models), checkpoints/ (one
folder per stage, from which a killed run resumes), export/landmarks/<version>/ (the SavedModel
for TF Serving and the TFLite models, docs/export.md),
images/test_predicted_vs_true.png and reports/landmarks_metrics.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import resource
import time
from typing import Dict, Optional

import numpy as np
from absl import logging

from tfpets.data import decode
from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError
from tfpets.landmarks import augment, data, draw, evaluate, export, predict, train, verifier
from tfpets.landmarks import model as model_lib
from tfpets.runtime import tensorboard, training
from tfpets.runtime.workdir import Workdir

REPORT_FILE = "landmarks_metrics.json"
VERIFIER_VAL_IMAGES = 200  # validation images of the verifier's one check at its end
# The report's figures that `headline` shows.
HEADLINE_METRICS = (
  "rmse_px",
  "box_iou",
  "stage1_box_iou",
  "crop_contains_head",
  "head_found_rate",
  "roi_rmse_frame_px",
)


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
  train_minutes: float = 0.0  # wall-clock budget of all training; 0: the epochs alone decide
  bbox_share: float = 0.6  # trained in turn: stage 1's share of the budget
  concurrent_stages: bool = False  # stage 2 in a second thread beside stage 1 and the verifier
  verifier_seconds: float = 60.0  # the head verifier's time, building its examples included
  verifier_images: int = 4000  # training images the verifier's examples come from
  eval_split: str = "test"  # held-out split of the final report
  crop_margin: float = 0.2  # head-crop margin whose crops the report checks for the whole head
  export: bool = True  # a new version of export/landmarks/: SavedModel and TFLite models

  def __post_init__(self):
    checks = (
      ("train_minutes", self.train_minutes >= 0, "must not be negative"),
      ("bbox_share", 0 < self.bbox_share < 1, "must lie between 0 and 1"),
      ("verifier_seconds", self.verifier_seconds > 0, "must be positive"),
      ("verifier_images", self.verifier_images >= 1, "must be at least 1"),
      ("crop_margin", self.crop_margin >= 0, "must not be negative"),
    )
    for name, ok, problem in checks:
      if not ok:
        raise ArgumentError(name, getattr(self, name), problem)


def stage_deadlines(
  start: float, train_minutes: float, bbox_share: float, concurrent: bool, verifier_seconds: float
) -> Dict[str, float]:
  """{stage: time.time() by which it ends} for a run started at `start`; 0.0 where there is no
  budget. Stage 2 ends with the budget. Stage 1 ends at its share of it or, trained concurrently
  with stage 2, when the verifier that follows it must start (`verifier_seconds`, 0 without one)."""
  total = 60.0 * train_minutes
  if not total:
    return {"bbox": 0.0, "landmarks": 0.0}
  bbox_end = total - verifier_seconds if concurrent else total * bbox_share
  return {"bbox": start + bbox_end, "landmarks": start + total}


def _with_deadline(options: train.TrainOptions, deadline: float) -> train.TrainOptions:
  return dataclasses.replace(options, deadline=deadline) if deadline else options


def check_inputs(
  records: str | os.PathLike,
  config: model_lib.DetectorConfig,
  train_options: train.TrainOptions,
  options: PipelineOptions,
  replicas: int = 1,
) -> pathlib.Path:
  """The shards folder of `records`, once the arguments fit it, each other and a strategy of
  `replicas` replicas (an ArgumentError names the first that does not). Nothing trains before it
  returns."""
  shards_dir = shards.find_shards(records)
  try:
    data.split_size(shards_dir, options.eval_split)
  except ArgumentError as e:
    raise ArgumentError("eval_split", options.eval_split, e.problem) from None
  if options.concurrent_stages and replicas > 1:
    raise ArgumentError(
      "concurrent_stages",
      True,
      f"trains two stages on one device at once; the strategy has {replicas} replicas",
    )
  if config.num_candidates > 1 and options.concurrent_stages and options.train_minutes:
    if options.verifier_seconds >= 60.0 * options.train_minutes:
      raise ArgumentError(
        "verifier_seconds",
        options.verifier_seconds,
        f"must be shorter than train_minutes ({options.train_minutes:g}), so that stage 1 "
        "trains before the verifier",
      )
  weights = train_options.backbone_weights
  if weights and not os.path.isfile(weights):
    raise ArgumentError("backbone_weights", weights, "no such file")
  return shards_dir


def _train_stage_one(
  config,
  shards_dir,
  paths,
  augment_options,
  train_options,
  options,
  deadline,
  strategy,
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
    augment_options,
    _with_deadline(train_options, deadline),
    strategy,
    writer,
    extra_callbacks,
  )
  if config.num_candidates > 1:
    # Trained right after stage 1, which it needs, the verifier gets its seconds whatever stage 2
    # does, and stage 2 still ends by the deadline.
    samples = lambda split, limit: evaluate.collect(shards_dir, split, config.num_landmarks, limit)
    trained["verifier"], summaries["verifier"] = verifier.train_verifier(
      config,
      samples("train", options.verifier_images),
      samples("val", VERIFIER_VAL_IMAGES),
      predict.keras_stage(trained["bbox"]),
      paths.models,
      paths.checkpoints,
      options.verifier_seconds,
      train_options.seed,
      extra_callbacks=extra_callbacks,
    )
  return trained, summaries


def train_models(
  shards_dir: pathlib.Path,
  paths: train.RunPaths,
  config: model_lib.DetectorConfig,
  train_options: train.TrainOptions,
  augment_options: augment.AugmentOptions,
  options: PipelineOptions,
  start: float,
  strategy=None,
  writer=None,
) -> tuple:
  """Trains (or resumes) every model of `config` within the budget counted from `start`, in turn
  or concurrently; returns (models, summaries) by stage name."""
  verifier_seconds = options.verifier_seconds if config.num_candidates > 1 else 0.0
  deadlines = stage_deadlines(
    start, options.train_minutes, options.bbox_share, options.concurrent_stages, verifier_seconds
  )
  stage_one = functools.partial(
    _train_stage_one,
    config,
    shards_dir,
    paths,
    augment_options,
    train_options,
    options,
    deadlines["bbox"],
    strategy,
    writer,
  )
  stage_two = functools.partial(
    train.train_stage,
    "landmarks",
    config,
    shards_dir,
    paths,
    augment_options,
    _with_deadline(train_options, deadlines["landmarks"]),
    strategy,
    writer,
  )
  if options.concurrent_stages:
    (trained, summaries), second = training.train_concurrently(stage_one, stage_two)
  else:
    (trained, summaries), second = stage_one(), stage_two()
  trained["landmarks"], summaries["landmarks"] = second
  return trained, summaries


def train_detector(
  records: str | os.PathLike,
  workdir: Workdir,
  config: model_lib.DetectorConfig,
  train_options: train.TrainOptions,
  augment_options: augment.AugmentOptions,
  options: PipelineOptions,
  strategy=None,
  writer: Optional[tensorboard.SummaryWriter] = None,
) -> dict:
  """Trains, evaluates and exports a detector in `workdir`; returns the report it writes to
  reports/landmarks_metrics.json. A rerun in the same workdir resumes where the last one stopped."""
  start = time.time()
  replicas = strategy.num_replicas_in_sync if strategy is not None else 1
  shards_dir = check_inputs(records, config, train_options, options, replicas)
  paths = train.RunPaths(workdir.checkpoints, workdir.root / "models", workdir.logs)
  config.save(paths.models)
  trained, summaries = train_models(
    shards_dir, paths, config, train_options, augment_options, options, start, strategy, writer
  )
  train_seconds, train_cpu_seconds = time.time() - start, _cpu_seconds()
  models = [trained[stage] for stage in model_lib.stages_of(config)]
  samples = evaluate.collect(shards_dir, options.eval_split, config.num_landmarks)
  report = {
    "records": str(shards_dir),
    "split": options.eval_split,
    "metrics": _metrics(config, models, trained["landmarks"], shards_dir, samples, options),
    "stages": summaries,
    "config": dataclasses.asdict(config),
    "seconds_to_trained_models": round(train_seconds, 1),
    # CPU seconds of this process: on a shared machine, wall time overstates the cost.
    "cpu_seconds_to_trained_models": round(train_cpu_seconds, 1),
    "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    "cpu_count": os.cpu_count(),
  }
  _write_overlays(workdir.images / "test_predicted_vs_true.png", samples[:16], writer)
  if options.export:
    exported = export.export_detector(
      config, models, workdir.root / "export", source=str(paths.models)
    )
    report["export"] = exported.to_json()
  report["seconds_total"] = round(time.time() - start, 1)
  path = workdir.reports / REPORT_FILE
  path.write_text(json.dumps(report, indent=2) + "\n")
  report["report"] = str(path)
  metrics = report["metrics"]
  logging.info(
    "landmarks: %s RMSE %.2f px, box IoU %.3f, crops contain the head %.1f%% -> %s",
    options.eval_split,
    metrics["rmse_px"],
    metrics["box_iou"],
    100 * metrics["crop_contains_head"],
    path,
  )
  return report


def _metrics(config, models, landmarks_model, shards_dir, samples, options) -> dict:
  detector = predict.Detector.from_models(config, *models)
  metrics = evaluate.evaluate_detector(detector, samples, options.crop_margin)
  metrics["roi_rmse_frame_px"] = evaluate.roi_rmse(
    landmarks_model, shards_dir, options.eval_split, config
  )
  # The landmarks-in-ROI RMSE of frederic's README is in pixels of a 224-pixel frame.
  metrics["roi_rmse_224_px"] = metrics["roi_rmse_frame_px"] * 224.0 / config.roi_size
  return metrics


def headline(report: dict) -> dict:
  """The report's path and main figures, for printing."""
  return {
    "report": report["report"],
    **{k: report["metrics"][k] for k in HEADLINE_METRICS},
    "seconds_to_trained_models": report["seconds_to_trained_models"],
    "cpu_seconds_to_trained_models": report["cpu_seconds_to_trained_models"],
  }


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _write_overlays(path: pathlib.Path, samples, writer=None) -> None:
  """Predicted (yellow) versus true (red) on held-out images from `evaluate.evaluate_detector`,
  as one picture at `path` and in TensorBoard."""
  if not samples:
    return
  side = max(max(s["image"].shape[:2]) for s in samples)
  zoom = max(1, 256 // side)
  pictures = []
  for s in samples:
    det = s["detection"]
    picture = draw.overlay(
      s["image"], det.landmarks, det.box, s["points"], s["box"], det.roi, zoom=zoom
    )
    canvas = np.zeros((side * zoom, side * zoom, 3), np.uint8)
    canvas[: picture.shape[0], : picture.shape[1]] = picture
    pictures.append(canvas)
  if writer is not None:
    grid = writer.grid("detector/test_predicted_vs_true", np.stack(pictures), step=0)
  else:
    grid = tensorboard.make_grid(np.stack(pictures))
  path.write_bytes(decode.encode_png(grid))
