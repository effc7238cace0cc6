"""Stage registry: `--stage=NAME` runs `tfpets.stages.<module>.run(ctx)`."""

STAGES = {
  "data": "tfpets.stages.data",
  "inspect": "tfpets.stages.inspect",
  "convert": "tfpets.stages.convert",
  "landmarks": "tfpets.stages.landmarks",
  "predict_landmarks": "tfpets.stages.predict_landmarks",
  "crop": "tfpets.stages.crop",
  "metrics": "tfpets.stages.metrics",
  "gan": "tfpets.stages.gan",
  "generate": "tfpets.stages.generate",
  "export": "tfpets.stages.export",
  "augment": "tfpets.stages.augment",
  "classify": "tfpets.stages.classify",
  "evaluate": "tfpets.stages.evaluate",
  "predict": "tfpets.stages.predict",
  "convert_dbpn": "tfpets.stages.convert_dbpn",
  "superres": "tfpets.stages.superres",
  "superres_eval": "tfpets.stages.superres_eval",
  "superres_train": "tfpets.stages.superres_train",
  "experiment": "tfpets.stages.experiment",
}
