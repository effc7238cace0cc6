"""Export a model for TF Serving (and TFLite): the generator of --network, the detector of
--detector, the classifier of --classifier or the DBPN upscaler of --sr_model, as a new version of
<export_dir>/<name>/
(docs/export.md).

Writes the version folder (SavedModel, assets/metadata.json, the warmup requests, and TFLite models
for the detector and the phone-sized classifiers) and reports/export.json.
"""

from __future__ import annotations

import json

from absl import flags, logging

from tfpets.errors import UsageError
from tfpets.runtime import context
from tfpets.runtime import flags as shared_flags

NEEDS_STRATEGY = False
EXPORT_MODELS = ("generator", "landmarks", "classifier", "superres")

MODEL = flags.DEFINE_enum(
  "export_model",
  None,
  EXPORT_MODELS,
  "Model to export: generator (the StyleGAN2-ADA generator of --network), landmarks (the "
  "landmark detector of --detector), classifier (the classifier of --classifier) or superres "
  "(the DBPN network of --sr_model).",
)
EXPORT_DIR = flags.DEFINE_string(
  "export_dir",
  "",
  "TF Serving's model base folder: the export is <export_dir>/<export_name>/<version>/. "
  "Default: <workdir>/models.",
)
NAME = flags.DEFINE_string(
  "export_name", "", "Model name, the folder under --export_dir. Default: --export_model."
)
VERSION = flags.DEFINE_integer(
  "export_version",
  0,
  "Version to write (a positive integer). 0: one more than the highest existing version. An "
  "existing version is never overwritten.",
  lower_bound=0,
)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  "name": "export_name",
  "version": "export_version",
  "source": "network",
  "directory": "detector",
  "classifier": "classifier",
  "model": "sr_model",
}


def run(ctx: context.RunContext) -> None:
  kind = MODEL.value
  if not kind:
    raise UsageError(f"--export_model is required: one of {', '.join(EXPORT_MODELS)}")
  export_dir = EXPORT_DIR.value or str(ctx.workdir.root / "models")
  name = NAME.value or kind
  version = VERSION.value or None
  if kind == "generator":
    source = ctx.flags.network
    if not source:
      raise UsageError("--network is required: a run folder, snapshot folder or network pickle")
    from tfpets.export import generator

    result = generator.export_generator(source, export_dir, name, version)
  elif kind == "landmarks":
    from tfpets.landmarks import export

    source = shared_flags.DETECTOR.value
    result = export.export_trained_detector(source, export_dir, name, version)
  elif kind == "classifier":
    from tfpets.classify import export

    source = shared_flags.CLASSIFIER.value
    result = export.export_classifier(source, export_dir, name, version)
  else:
    from tfpets.superres import export

    source = shared_flags.SR_MODEL.value
    if not source:
      raise UsageError("--sr_model is required: a DBPN .keras file or its run folder")
    result = export.export_upscaler(source, export_dir, name, version)
  report = {"export_model": kind, "source": source, **result.to_json()}
  (ctx.workdir.reports / "export.json").write_text(json.dumps(report, indent=2) + "\n")
  logging.info("exported %s version %d -> %s", name, result.version, result.path)
  print(json.dumps(report, indent=2))
