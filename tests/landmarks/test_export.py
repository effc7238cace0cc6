"""Exported detectors give the Keras detector's outputs: the TFLite models (the two stages and the
head verifier), the pipeline run on them, and the whole-pipeline SavedModel."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from tfpets.landmarks import export, predict
from tfpets.landmarks import model as model_lib

from .handmade import draw_head

# One stage-2 pass: a random stage-2 box fed back as the next ROI can grow without bound.
CONFIG = model_lib.DetectorConfig(image_size=32, roi_size=32, units=16, roi_first_margin=0.5)
HEAD, BLOBS = (40, 20, 79, 59), np.array([[50.0, 30.0], [70.0, 35.0], [60.0, 50.0]])
# The ROI follows the stage-1 box, so float differences there resample stage 2's input slightly
# differently, which a perturbed random network amplifies a little; its boxes can also be far
# larger than the image, hence a relative tolerance beside the absolute one.
PIPELINE_TOLERANCE_PX, PIPELINE_RTOL = 0.1, 1e-4
# Three candidates (a heatmap peak and a rescaled box beside stage 1's), so the verifier is
# exported and picks one of them in the pipeline.
VERIFIED = dataclasses.replace(
  CONFIG, roi_candidates=2, roi_candidate_scales=(0.7,), verifier_size=16
)


def _perturbed(stage, seed):
  """A stage model whose outputs depend on its input (a fresh BatchNorm net outputs ~0)."""
  model = model_lib.build_model(stage, VERIFIED)
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    value = weight.numpy()
    noise = rng.normal(0, 0.3, value.shape).astype(np.float32)
    weight.assign(np.abs(value + noise) + 0.5 if "variance" in weight.path else value + noise)
  return model


@pytest.fixture(scope="module")
def models():
  keras.utils.set_random_seed(0)  # fixed weights: the same float differences on every run
  return {stage: _perturbed(stage, i) for i, stage in enumerate(model_lib.stages_of(VERIFIED))}


@pytest.mark.slow
def test_tflite_matches_keras(models, tmp_path):
  export.export_detector(VERIFIED, list(models.values()), tmp_path, pipeline=False)
  rng = np.random.default_rng(5)
  for stage, model in models.items():
    size = VERIFIED.frame_size(stage)
    frames = rng.uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    keras_out = {k: np.asarray(v) for k, v in model(frames, training=False).items()}
    lite_out = export.TFLiteStage(tmp_path / "tflite" / f"{stage}.tflite")(frames)
    assert set(lite_out) == set(keras_out)
    for name, value in keras_out.items():
      assert np.std(value) > 0.05, f"{stage}/{name} does not depend on the input"
      np.testing.assert_allclose(lite_out[name], value, rtol=1e-4, atol=1e-3)

  assert model_lib.DetectorConfig.load(tmp_path) == VERIFIED
  image = draw_head(70, 110, HEAD, BLOBS)
  expected = predict.Detector.from_models(VERIFIED, *models.values()).detect(image)
  lite = export.tflite_detector(tmp_path).detect(image)
  np.testing.assert_allclose(
    lite.landmarks, expected.landmarks, rtol=PIPELINE_RTOL, atol=PIPELINE_TOLERANCE_PX
  )
  np.testing.assert_allclose(lite.box, expected.box, rtol=PIPELINE_RTOL, atol=PIPELINE_TOLERANCE_PX)
  assert lite.head_score == pytest.approx(expected.head_score, abs=1e-4)


@pytest.mark.slow
def test_pipeline_saved_model_matches_keras(models, tmp_path):
  export.export_pipeline(VERIFIED, list(models.values()), tmp_path / "detector")
  image = draw_head(90, 60, (10, 30, 49, 69), BLOBS - [30, -10])
  expected = predict.Detector.from_models(VERIFIED, *models.values()).detect(image)
  served = export.saved_model_detector(tmp_path)(image)
  for name, value in (
    ("landmarks", expected.landmarks),
    ("box", expected.box),
    ("roi", expected.roi),
  ):
    np.testing.assert_allclose(served[name], value, rtol=1e-5, atol=1e-3)
  assert float(served["head_score"]) == pytest.approx(expected.head_score, abs=1e-5)
