"""TFLite models for phones, and the interpreter that runs them (docs/export.md).

A Keras model is exported to a temporary SavedModel (`model.export`, its `serve` signature) and
converted from it in float32 (`tf.lite.TFLiteConverter.from_saved_model`); the TFLite model keeps
the Keras model's input and output names, so `TFLiteRunner(path)(image=...)` returns the Keras
model's outputs by name. The result lives under `<version>/tflite/` of the SavedModel version it was
exported with.
"""

from __future__ import annotations

import os
import tempfile
from typing import Dict

import numpy as np
import tensorflow as tf

from tfpets.export import serving

TFLITE_DIR = "tflite"


def convert_keras(model) -> bytes:
  """A float32 TFLite model of a Keras model (tfpets.ops on their reference paths)."""
  with tempfile.TemporaryDirectory() as saved_model_dir:
    with serving.reference_ops():
      model.export(saved_model_dir, format="tf_saved_model", verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir).convert()


def interpreter(model_path: str | os.PathLike):
  """LiteRT's interpreter when installed; TF's own (deprecated, the same kernels) otherwise."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    Interpreter = tf.lite.Interpreter
  return Interpreter(model_path=str(model_path))


class TFLiteRunner:
  """A TFLite model's default signature: named numpy inputs -> dict of numpy outputs."""

  def __init__(self, model_path: str | os.PathLike):
    self.path = str(model_path)
    self._interpreter = interpreter(self.path)
    self._runner = self._interpreter.get_signature_runner()

  def __call__(self, **inputs) -> Dict[str, np.ndarray]:
    return self._runner(**inputs)
