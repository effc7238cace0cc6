"""Evaluate a trained classifier (--classifier) on a split of --records: top-1/3/5 per sample,
macro precision, recall and F1, a per-class report and a confusion-matrix PNG (WS-DAN: raw and
refined figures both), written to reports/.
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.classify import data, evaluate, train
from tfpets.errors import UsageError
from tfpets.runtime import context

NEEDS_STRATEGY = False

SPLIT = flags.DEFINE_string("cls_eval_split", "test", "Split of --records to evaluate on.")
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {"classifier": "classifier", "records": "records", "split": "cls_eval_split"}


def check_classes(model_classes, records: str) -> list:
  """The records' class names, which must be the classifier's, in its order."""
  names = data.class_names(records)
  if list(names) != list(model_classes):
    raise UsageError(
      f"--records={records}: its {len(names)} classes are not the classifier's "
      f"{len(model_classes)} classes in the classifier's order"
    )
  return names


def run(ctx: context.RunContext) -> None:
  model, class_names, config = train.load_classifier(ctx.flags.classifier)
  check_classes(class_names, ctx.flags.records)
  try:
    dataset = data.classification_dataset(
      ctx.flags.records,
      SPLIT.value,
      image_size=config.image_size,
      batch_size=ctx.flags.batch_size,
      training=False,
    )
  except ValueError as e:
    raise UsageError(f"--cls_eval_split={SPLIT.value}: {e}") from None
  headline = evaluate.evaluate(model, dataset, class_names, ctx.workdir.reports)
  headline = {"classifier": ctx.flags.classifier, "split": SPLIT.value, **headline}
  (ctx.workdir.reports / "evaluate.json").write_text(json.dumps(headline, indent=2) + "\n")
  logging.info("reports in %s", ctx.workdir.reports)
  print(json.dumps(headline, indent=2))
