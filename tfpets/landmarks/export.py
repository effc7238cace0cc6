"""Exports of a trained detector: SavedModels and TFLite models for phones.

Layout written by `export_detector(config, models, out_dir)`:
  out_dir/detector/            SavedModel of the whole two-stage pipeline: `serving_default` takes
                               one image uint8 [H, W, 3] of any size and returns box, landmarks,
                               head_score, stage1_box and roi in its pixels.
  out_dir/stages/{bbox,landmarks[,verifier]}/   SavedModel of each model (`serve`: frames ->
                               outputs); the head verifier only with more than one candidate.
  out_dir/tflite/{bbox,landmarks[,verifier]}.tflite   the same as TFLite (input `image` float32
                               [N, S, S, 3] in 0..255, outputs by name).
  out_dir/detector.json        the configuration a phone app needs for the geometry around the two
                               TFLite models (frame sizes, ROI margin, point names), as
                               predict.py documents it.
`tflite_detector(out_dir)` runs the TFLite models through the same pipeline code as Keras.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf

from tfpets.landmarks import model as model_lib
from tfpets.landmarks import predict


def _interpreter(model_path: str):
  """LiteRT's interpreter when installed; TF's own (deprecated but identical kernels) otherwise."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    Interpreter = tf.lite.Interpreter
  return Interpreter(model_path=model_path)


class TFLiteStage:
  """A stage function backed by a TFLite model (runs eagerly, numpy in and out)."""

  def __init__(self, model_path: str | os.PathLike):
    self.path = str(model_path)
    self._interpreter = _interpreter(self.path)
    self._runner = self._interpreter.get_signature_runner()

  def __call__(self, frames) -> Dict[str, np.ndarray]:
    return self._runner(image=np.asarray(frames, np.float32))


def export_stage(model, saved_model_dir: pathlib.Path, tflite_path: pathlib.Path) -> None:
  """One stage model -> SavedModel (`serve`) and a float TFLite model converted from it."""
  if saved_model_dir.exists():
    shutil.rmtree(saved_model_dir)
  model.export(str(saved_model_dir), format="tf_saved_model", verbose=False)
  converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
  tflite_path.parent.mkdir(parents=True, exist_ok=True)
  tflite_path.write_bytes(converter.convert())


class _PipelineModule(tf.Module):
  """The pipeline with its models (`model_lib.stages_of` order), for tf.saved_model.save."""

  def __init__(self, config: model_lib.DetectorConfig, models: Sequence):
    super().__init__()
    self.config = config
    self.models = list(models)

  @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8, name="image")])
  def serve(self, image):
    out = predict.run_pipeline(
      image[None], self.config, *(predict.keras_stage(m) for m in self.models)
    )
    return {k: v[0] for k, v in out.items()}


def export_detector(
  config: model_lib.DetectorConfig,
  models: Sequence,
  out_dir: str | os.PathLike,
  pipeline: bool = True,
) -> Dict[str, str]:
  """Writes the layout in the module docstring (without detector/ when not `pipeline`) for the
  models of `model_lib.stages_of(config)`, in that order; returns the main paths."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {}
  for stage, model in zip(model_lib.stages_of(config), models, strict=True):
    tflite_path = out_dir / "tflite" / f"{stage}.tflite"
    export_stage(model, out_dir / "stages" / stage, tflite_path)
    paths[f"tflite_{stage}"] = str(tflite_path)
  paths["config"] = str(config.save(out_dir))
  if pipeline:
    paths["saved_model"] = export_pipeline(config, models, out_dir / "detector")
  return paths


def export_pipeline(
  config: model_lib.DetectorConfig, models: Sequence, directory: pathlib.Path
) -> str:
  """The whole pipeline as one SavedModel (`serving_default`: image -> results)."""
  module = _PipelineModule(config, models)
  if directory.exists():
    shutil.rmtree(directory)
  tf.saved_model.save(
    module, str(directory), signatures={"serving_default": module.serve.get_concrete_function()}
  )
  return str(directory)


def tflite_detector(export_dir: str | os.PathLike) -> predict.Detector:
  """The exported TFLite models, run through the shared pipeline."""
  export_dir = pathlib.Path(export_dir)
  config = model_lib.DetectorConfig.load(export_dir)
  stages = [TFLiteStage(export_dir / "tflite" / f"{s}.tflite") for s in model_lib.stages_of(config)]
  return predict.Detector(config, *stages, compile_pipeline=False)


class SavedModelDetector:
  """The whole-pipeline SavedModel: one image uint8 [H, W, 3] -> dict of numpy outputs."""

  def __init__(self, export_dir: str | os.PathLike):
    # Keep the loaded object: its signature functions reference its variables.
    self._loaded = tf.saved_model.load(str(pathlib.Path(export_dir) / "detector"))
    self._serve = self._loaded.signatures["serving_default"]

  def __call__(self, image) -> Dict[str, np.ndarray]:
    out = self._serve(image=tf.constant(np.asarray(image, np.uint8)))
    return {k: v.numpy() for k, v in out.items()}


def saved_model_detector(export_dir: str | os.PathLike) -> SavedModelDetector:
  return SavedModelDetector(export_dir)
