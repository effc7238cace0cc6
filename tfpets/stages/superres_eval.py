"""Evaluate a DBPN network (--sr_model) two ways (docs/superres.md):

* --sr_eval_hr: PSNR and SSIM on the Y channel (scale pixels shaved) of ground-truth images shrunk
  by MATLAB's bicubic imresize and upscaled again, beside the bicubic baseline, as the DBPN paper's
  tables; reports/superres_eval.{json,csv}.
* --sr_eval_labelled with --classifier: GrabAI's small-image protocol, a classifier's top-1 on the
  original images, on the images shrunk to a short side of --sr_eval_short_side, and on those after
  upscaling the ones below --sr_max_area; reports/superres_small_images.{json,csv}.
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.data import listing
from tfpets.errors import ArgumentError, UsageError
from tfpets.runtime import context
from tfpets.runtime import flags as shared_flags
from tfpets.superres import evaluate, upscale

NEEDS_STRATEGY = False

HR_IMAGES = flags.DEFINE_string(
  "sr_eval_hr",
  "",
  "Ground-truth images (a folder such as Set5's HR images, a glob or a CSV) for PSNR/SSIM.",
)
LABELLED = flags.DEFINE_string(
  "sr_eval_labelled",
  "",
  "Labelled images (a folder of class folders in the classifier's class order, or a CSV with a "
  "label column) for GrabAI's small-image protocol with --classifier.",
)
SHORT_SIDE = flags.DEFINE_integer(
  "sr_eval_short_side",
  evaluate.SMALL_IMAGE_SIDE,
  "Small-image protocol: the short side images are shrunk to (OpenCV INTER_AREA).",
  lower_bound=1,
)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {**shared_flags.UPSCALER_ARGUMENT_FLAGS, "classifier": "classifier"}


def _benchmark(ctx: context.RunContext, upscaler: upscale.Upscaler) -> dict:
  try:
    paths = [path for path, _ in listing.list_images(HR_IMAGES.value)]
  except ArgumentError as e:
    raise e.as_flag("sr_eval_hr") from e
  report = evaluate.evaluate_pairs(
    None, paths, upscaler.scale, self_ensemble=upscaler.self_ensemble, upscaler=upscaler
  )
  evaluate.write_report(report, str(ctx.workdir.reports))
  return {"model": report["model"], "bicubic": report["bicubic"], "rejects": len(report["rejects"])}


def _small_images(ctx: context.RunContext, upscaler: upscale.Upscaler) -> dict:
  try:
    report = evaluate.evaluate_small_images(
      ctx.flags.classifier,
      LABELLED.value,
      upscaler,
      upscaler.scale,
      ctx.flags.sr_max_area,
      short_side=SHORT_SIDE.value,
      batch_size=ctx.flags.batch_size,
    )
  except ArgumentError as e:
    if e.argument != "source":
      raise
    raise e.as_flag("sr_eval_labelled") from e
  evaluate.write_report(report, str(ctx.workdir.reports), name="superres_small_images")
  keys = ("original_top1", "downscaled_top1", "upscaled_top1", "num_upscaled", "num_kept")
  return {key: report[key] for key in keys}


def run(ctx: context.RunContext) -> None:
  if not (HR_IMAGES.value or LABELLED.value):
    raise UsageError(
      "give --sr_eval_hr (PSNR/SSIM), --sr_eval_labelled (small-image accuracy) or both"
    )
  upscaler = upscale.load_upscaler(ctx.flags.sr_model, **shared_flags.upscaler_options(ctx.flags))
  summary = {}
  if HR_IMAGES.value:
    summary["benchmark"] = _benchmark(ctx, upscaler)
  if LABELLED.value:
    summary["small_images"] = _small_images(ctx, upscaler)
  (ctx.workdir.reports / "superres_eval_summary.json").write_text(
    json.dumps(summary, indent=2) + "\n"
  )
  logging.info("reports in %s", ctx.workdir.reports)
  print(json.dumps(summary, indent=2))
