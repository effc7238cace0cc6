"""The classifier export's TFLite model: the Keras model's probabilities for the same view."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tests.classify.conftest import CLASSES
from tfpets.classify import export, train
from tfpets.export import layout, serving, tflite


@pytest.mark.slow
def test_efficientnet_export_has_a_tflite_model_with_the_keras_probabilities(tmp_path):
  keras.utils.set_random_seed(0)
  config = train.recipe(train.ClassifyConfig(model="efficientnet", image_size=32))
  model = train.build_model(config, len(CLASSES))
  train.save_classifier(model, tmp_path / "run" / "models", config, CLASSES, 32)
  result = export.export_classifier(tmp_path / "run", tmp_path / "models", "pets")
  assert result.files == [export.TFLITE_FILE]
  version = layout.version_dir(tmp_path / "models", "pets")
  metadata = json.loads((version / "assets" / serving.METADATA_FILE).read_text())
  assert metadata["kind"] == "classifier"
  images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  out = tflite.TFLiteRunner(version / export.TFLITE_FILE)(images=images)
  logits = model(images).numpy().astype(np.float64)
  expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
