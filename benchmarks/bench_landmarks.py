"""Landmark detector inference throughput on this CPU: Keras, SavedModel and TFLite.

Each backend runs the full two-stage detector (letterbox, bbox model, ROI crop, landmarks model x
roi_passes, mapping back) one image at a time, as a request handler would; Keras is also timed on
batches of same-size images. The geometry around the TFLite models is eager TensorFlow here (a phone
app does it natively), so the stage models are also timed alone, one frame per call, on every
backend. Prints one JSON object with the rates, the load average (the CPU may be shared) and the
configuration.

  python benchmarks/bench_landmarks.py [--detector runs/landmarks] [--image_side 128] [--seconds 10]

Without --detector a detector with the default synthetic-run configuration and perturbed random
weights is built: the speed does not depend on the weights. Either is exported to a temporary
folder, as `--stage=export --export_model=landmarks` exports it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _perturbed_models(config):
  from tfpets.landmarks import model as model_lib

  rng = np.random.default_rng(0)
  models = []
  for stage in model_lib.stages_of(config):
    model = model_lib.build_model(stage, config)
    for weight in model.weights:
      value = weight.numpy()
      noise = rng.normal(0, 0.1, value.shape).astype(np.float32)
      weight.assign(np.abs(value + noise) + 0.5 if "variance" in weight.path else value + noise)
    models.append(model)
  return models


def _rate(fn, items, seconds: float) -> float:
  """Items per second of fn over items, cycled for about `seconds` after one warm-up call."""
  fn(items[0])
  done, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    fn(items[done % len(items)])
    done += 1
  return done / (time.perf_counter() - start)


def _stage_rates(config, models, version_dir: pathlib.Path, seconds: float) -> dict:
  """Frames/s of the stage models alone, one frame per call, as an app that does the geometry
  itself would run them (the Python pipeline around TFLite is eager TensorFlow, far slower)."""
  import tensorflow as tf

  from tfpets.export.tflite import TFLITE_DIR
  from tfpets.landmarks import export
  from tfpets.landmarks import model as model_lib

  rates = {}
  for stage, model in zip(model_lib.stages_of(config), models):
    size = config.frame_size(stage)
    frames = [
      np.random.default_rng(i).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
      for i in range(8)
    ]
    keras_fn = tf.function(lambda x, m=model: m(x, training=False))
    stage_dir = version_dir.parent / "stages" / stage
    model.export(str(stage_dir), format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(str(stage_dir))  # keeps the variables
    served = loaded.serve
    lite = export.TFLiteStage(version_dir / TFLITE_DIR / f"{stage}.tflite")
    rates[f"{stage}_model_keras_frames_per_s"] = _rate(keras_fn, frames, seconds / 2)
    rates[f"{stage}_model_saved_model_frames_per_s"] = _rate(served, frames, seconds / 2)
    rates[f"{stage}_model_tflite_frames_per_s"] = _rate(lite, frames, seconds / 2)
  return rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--detector", default="", help="trained --stage=landmarks workdir")
  parser.add_argument("--image_side", type=int, default=128, help="side of the test images")
  parser.add_argument("--image_size", type=int, default=64, help="stage-1 frame (no --detector)")
  parser.add_argument("--roi_size", type=int, default=64, help="stage-2 frame (no --detector)")
  parser.add_argument("--seconds", type=float, default=10.0, help="timing per backend")
  args = parser.parse_args()

  from tfpets.export.tflite import TFLITE_DIR
  from tfpets.landmarks import export, predict
  from tfpets.landmarks import model as model_lib

  tmp = tempfile.TemporaryDirectory()
  if args.detector:
    models_dir = predict.models_directory(args.detector)
    config = model_lib.DetectorConfig.load(models_dir)
    models = [
      model_lib.load_model(models_dir / model_lib.MODEL_FILES[s])
      for s in model_lib.stages_of(config)
    ]
  else:
    config = model_lib.DetectorConfig(image_size=args.image_size, roi_size=args.roi_size)
    models = _perturbed_models(config)
  version_dir = export.export_detector(config, models, tmp.name).path

  rng = np.random.default_rng(1)
  images = [
    rng.integers(0, 256, (args.image_side, args.image_side, 3), np.uint8) for _ in range(16)
  ]
  keras_detector = predict.Detector.from_models(config, *models)
  served = export.saved_model_detector(version_dir)
  lite = export.tflite_detector(version_dir)
  batch = np.stack(images)
  results = {
    "keras_images_per_s": _rate(keras_detector.detect, images, args.seconds),
    "keras_batch16_images_per_s": 16
    * _rate(lambda _: keras_detector.detect_batch(batch), [None], args.seconds),
    "saved_model_images_per_s": _rate(served, images, args.seconds),
    "tflite_images_per_s": _rate(lite.detect, images, args.seconds),
  }
  results.update(_stage_rates(config, models, version_dir, args.seconds))
  report = {k: round(v, 1) for k, v in results.items()}
  report.update(
    {
      "pipeline": "two stages per image: letterbox -> bbox model -> ROI crop -> landmarks model",
      "image_side": args.image_side,
      "detector": args.detector or "random (perturbed) weights",
      "config": {
        k: getattr(config, k)
        for k in (
          "image_size",
          "roi_size",
          "num_landmarks",
          "head",
          "width_multiplier",
          "roi_passes",
          "roi_flip",
          "roi_candidates",
          "roi_candidate_scales",
        )
      },
      "tflite_bytes": {
        s: os.path.getsize(version_dir / TFLITE_DIR / f"{s}.tflite")
        for s in model_lib.stages_of(config)
      },
      "cpu_count": os.cpu_count(),
      "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
    }
  )
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
