"""The pet paper's experiment end to end (Darvish et al., arXiv 2109.00891; docs/experiment.md):
variants (original; augmented with StyleGAN2-ADA images; head crops augmented with the images of a
GAN trained on the crops) by training subset (10 / 50 / 100 %, nested and seeded), each cell run
through the ordinary stages (data, crop, gan, metrics, augment, classify, evaluate) and collected
into the paper's table with 95 % bootstrap intervals, a chart and each GAN's samples.

Every step is a stage command with its own flagfile under <workdir>/plan/ and writes a done marker,
so a killed or failed run resumes where it stopped and a finished one does nothing.
--experiment_plan only writes the plan (flagfiles, plan.json and a Makefile for `make -j`).
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.errors import UsageError
from tfpets.experiment import plan, presets, results, runner
from tfpets.runtime import context

NEEDS_STRATEGY = False
PRESET = flags.DEFINE_enum(
  "experiment_preset",
  "cpu",
  list(presets.PRESETS),
  "Settings of the steps: cpu (the embedded synthetic pets at reduced sizes, about an hour on 2 "
  "cores) or paper (128 px GANs for 5120 kimg, ViT-B/16 at 224 from --preset).",
)
SUBSETS = flags.DEFINE_list(
  "experiment_subsets", ["0.1", "0.5", "1.0"], "Training subsets, fractions of the train split."
)
VARIANTS = flags.DEFINE_list(
  "experiment_variants",
  ["original", "augmented", "cropped_augmented"],
  f"Rows of the table, of {', '.join(plan.VARIANTS)} (cropped: head crops without GAN images).",
)
REPEATS = flags.DEFINE_integer(
  "experiment_repeats", 1, "Classifier trainings per cell, seeds --seed, --seed+1, ...", 1
)
HEADS = flags.DEFINE_enum(
  "experiment_heads",
  "annotations",
  ["annotations", "detector"],
  "Where the head crops come from: the annotated heads, or the landmark detector of --detector.",
)
RATIO = flags.DEFINE_float(
  "experiment_aug_ratio",
  1.0,
  "Generated training images per class as this times the class's real training images.",
  lower_bound=0.0,
)
LABELS = flags.DEFINE_enum(
  "experiment_labels",
  "conditional",
  ["conditional", "classifier"],
  "How generated images get labels: conditional (class-conditional GANs) or classifier "
  "(unconditional GANs as the paper's, labelled by the original variant's classifier).",
)
FID = flags.DEFINE_string(
  "experiment_fid", "", "FID of each GAN against its own subset (default: the preset's)."
)
STAGE_FLAGFILES = flags.DEFINE_list(
  "experiment_stage_flags",
  [],
  "STAGE=FLAGFILE,...: flags for every step of that stage (data, crop, gan, metrics, augment, "
  "classify, evaluate), read after the preset's.",
)
JOBS = flags.DEFINE_integer("experiment_jobs", 1, "Steps run at once.", lower_bound=1)
PLAN_ONLY = flags.DEFINE_boolean(
  "experiment_plan",
  False,
  "Only write the plan: one flagfile per step, plan.json (steps, dependencies, commands) and a "
  "Makefile, for a scheduler or `make -j`.",
)
REPORT_ONLY = flags.DEFINE_boolean(
  "experiment_report_only",
  False,
  "Only collect the finished cells into results/ (the plan's last step).",
)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  "subsets": "experiment_subsets",
  "variants": "experiment_variants",
  "repeats": "experiment_repeats",
  "aug_ratio": "experiment_aug_ratio",
  "aug_label_from": "experiment_labels",
  "fid_metric": "experiment_fid",
  "detector": "detector",
  "data": "data",
  "stage_flagfiles": "experiment_stage_flags",
}


def config_from_flags(flag_values) -> plan.ExperimentConfig:
  preset = presets.PRESETS[PRESET.value]
  names = presets.forwarded_names()
  given = {name: flag_values[name].value for name in names if flag_values[name].present}
  return plan.ExperimentConfig(
    data=flag_values.data,
    subsets=tuple(SUBSETS.value),
    variants=tuple(VARIANTS.value),
    repeats=REPEATS.value,
    seed=flag_values.seed,
    crop_use_annotations=HEADS.value == "annotations",
    detector=flag_values.detector if HEADS.value == "detector" else "",
    gan_resolution=preset.gan_resolution,
    crop_size=preset.crop_size,
    fid_metric=FID.value or preset.fid_metric,
    aug_ratio=RATIO.value,
    aug_label_from=LABELS.value,
    stage_flags=presets.stage_flags(preset, given),
    stage_flagfiles=presets.parse_stage_flagfiles(STAGE_FLAGFILES.value),
  )


def run(ctx: context.RunContext) -> None:
  root = ctx.workdir.root
  if REPORT_ONLY.value:
    try:
      paths, table = results.report_plan(root)
    except FileNotFoundError as e:
      raise UsageError(f"--workdir={e}") from e
    print(results.markdown_table(table))
    logging.info("results in %s", paths["readme"])
    return
  steps = plan.build_plan(config_from_flags(ctx.flags), root)
  written = plan.write_plan(steps, root)
  if PLAN_ONLY.value:
    logging.info(
      "plan of %d steps in %s; run it with: make -j4 -f %s",
      len(steps),
      written["plan"],
      written["makefile"],
    )
    return
  summary = runner.run_plan(steps, root, jobs=JOBS.value)
  (ctx.workdir.reports / "experiment.json").write_text(json.dumps(summary, indent=2) + "\n")
  if summary.get("failed"):
    raise UsageError(
      f"{len(summary['failed'])} steps failed; see {ctx.workdir.reports / 'experiment.json'}"
    )
  logging.info("results in %s", root / "results" / "README.md")
