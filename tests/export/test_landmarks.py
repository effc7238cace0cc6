"""The exported landmark detector (tfpets.landmarks.export): encoded JPEG and PNG images in, the
Keras pipeline's coordinates out; the TFLite models and their pipeline; assets, warmup and
saved_model_cli. One export of a detector with perturbed weights serves every test."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.landmarks.handmade import draw_head
from tfpets.data import decode
from tfpets.export import serving, warmup
from tfpets.landmarks import export, predict
from tfpets.landmarks import model as model_lib

# One stage-2 pass: a random stage-2 box fed back as the next ROI can grow without bound. Three
# candidates (a heatmap peak and a rescaled box beside stage 1's), so that the verifier is exported
# and picks one of them in the pipeline.
CONFIG = model_lib.DetectorConfig(
  image_size=32,
  roi_size=32,
  units=16,
  roi_first_margin=0.5,
  roi_candidates=2,
  roi_candidate_scales=(0.7,),
  verifier_size=16,
)
BLOBS = np.array([[50.0, 30.0], [70.0, 35.0], [60.0, 50.0]])
# The SavedModel runs the Keras models' ops: float differences only.
SAVED_MODEL_TOLERANCE_PX, SAVED_MODEL_RTOL = 1e-3, 1e-5
# The TFLite kernels differ from TensorFlow's in float rounding; the ROI follows the stage-1 box, so
# those differences resample stage 2's input slightly differently, which a perturbed random network
# amplifies a little; its boxes can also be far larger than the image, hence a relative tolerance
# beside the absolute one.
TFLITE_TOLERANCE_PX, TFLITE_RTOL = 0.1, 1e-4
OUTPUTS = ("landmarks", "box", "head_score", "head_found", "stage1_box", "roi", "image_size")


def _perturbed(stage, seed):
  """A stage model whose outputs depend on its input (a fresh BatchNorm net outputs ~0)."""
  model = model_lib.build_model(stage, CONFIG)
  rng = np.random.default_rng(seed)
  for weight in model.weights:
    value = weight.numpy()
    noise = rng.normal(0, 0.3, value.shape).astype(np.float32)
    weight.assign(np.abs(value + noise) + 0.5 if "variance" in weight.path else value + noise)
  return model


@pytest.fixture(scope="module")
def models():
  keras.utils.set_random_seed(0)  # fixed weights: the same float differences on every run
  return [_perturbed(stage, i) for i, stage in enumerate(model_lib.stages_of(CONFIG))]


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
  """The detector saved as the landmarks stage saves it, then exported from that folder."""
  models_dir = tmp_path_factory.mktemp("detector") / "models"
  CONFIG.save(models_dir)
  for stage, model in zip(model_lib.stages_of(CONFIG), models):
    model.save(models_dir / model_lib.MODEL_FILES[stage])
  return export.export_trained_detector(models_dir.parent, tmp_path_factory.mktemp("export"))


def _images():
  """A JPEG and a PNG of different sizes, and the pixels tfpets' decoder gives for them."""
  wide = draw_head(70, 110, (40, 20, 79, 59), BLOBS)
  tall = draw_head(90, 60, (10, 30, 49, 69), BLOBS - [30, -10])
  encoded = [decode.encode_jpeg(wide, quality=90), decode.encode_png(tall)]
  return encoded, [decode.decode_image(data).pixels for data in encoded]


def _assert_detection(served: dict, expected: predict.Detection, atol: float, rtol: float):
  for name in ("landmarks", "box", "stage1_box", "roi"):
    np.testing.assert_allclose(served[name], getattr(expected, name), rtol=rtol, atol=atol)
  assert float(served["head_score"]) == pytest.approx(expected.head_score, abs=1e-4)


@pytest.mark.slow
def test_image_bytes_in_give_the_keras_pipeline_outputs(models, exported):
  assert exported.path.name == "1" and exported.path.parent.name == "landmarks"
  encoded, pixels = _images()
  serve = serving.load_quietly(exported.path).signatures["serving_default"]
  out = {k: v.numpy() for k, v in serve(image_bytes=np.array(encoded, object)).items()}
  assert sorted(out) == sorted(OUTPUTS)
  assert out["landmarks"].shape == (2, CONFIG.num_landmarks, 2)
  keras_detector = predict.Detector.from_models(CONFIG, *models)
  for i, image in enumerate(pixels):
    expected = keras_detector.detect(image)
    served = {k: v[i] for k, v in out.items()}
    _assert_detection(served, expected, SAVED_MODEL_TOLERANCE_PX, SAVED_MODEL_RTOL)
    assert bool(served["head_found"]) == expected.head_found
    assert list(served["image_size"]) == [image.shape[1], image.shape[0]]
  # The outputs must depend on the image, or the comparison proves nothing.
  assert np.abs(out["landmarks"][0] - out["landmarks"][1]).max() > 1.0

  # The in-process helper sends pixels as PNG bytes and gets one image's outputs.
  one = export.saved_model_detector(exported.path.parent.parent)(pixels[1])
  _assert_detection(
    one, keras_detector.detect(pixels[1]), SAVED_MODEL_TOLERANCE_PX, SAVED_MODEL_RTOL
  )


@pytest.mark.slow
def test_tflite_models_and_their_pipeline_match_keras(models, exported):
  rng = np.random.default_rng(5)
  for stage, model in zip(model_lib.stages_of(CONFIG), models):
    size = CONFIG.frame_size(stage)
    frames = rng.uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    keras_out = {k: np.asarray(v) for k, v in model(frames, training=False).items()}
    lite_out = export.TFLiteStage(exported.path / "tflite" / f"{stage}.tflite")(frames)
    assert set(lite_out) == set(keras_out)
    for name, value in keras_out.items():
      assert np.std(value) > 0.05, f"{stage}/{name} does not depend on the input"
      np.testing.assert_allclose(lite_out[name], value, rtol=1e-4, atol=1e-3)

  _, pixels = _images()
  lite = export.tflite_detector(exported.path)
  keras_detector = predict.Detector.from_models(CONFIG, *models)
  for image in pixels:
    expected, got = keras_detector.detect(image), lite.detect(image)
    for name in ("landmarks", "box", "stage1_box"):
      np.testing.assert_allclose(
        getattr(got, name), getattr(expected, name), rtol=TFLITE_RTOL, atol=TFLITE_TOLERANCE_PX
      )
    assert got.head_score == pytest.approx(expected.head_score, abs=1e-4)


@pytest.mark.slow
def test_assets_metadata_and_warmup_describe_the_detector(exported):
  labels = (exported.path / "assets" / "labels.txt").read_text().splitlines()
  assert labels == list(CONFIG.point_names) and len(labels) == CONFIG.num_landmarks
  assert model_lib.DetectorConfig.load(exported.path / "tflite") == CONFIG
  assert sorted(exported.files) == [
    "tflite/bbox.tflite",
    "tflite/detector.json",
    "tflite/landmarks.tflite",
    "tflite/verifier.tflite",
  ]
  metadata = json.loads((exported.path / "assets" / "metadata.json").read_text())
  assert metadata["kind"] == "landmarks" and metadata["labels"] == "labels.txt"
  assert metadata["source"].endswith("models")
  assert metadata["details"]["detector"]["roi_candidate_scales"] == [0.7]
  signature = metadata["signatures"]["serving_default"]
  assert signature["inputs"] == {
    "image_bytes": {
      "dtype": "string",
      "shape": [-1],
      "description": export.DESCRIPTIONS["image_bytes"],
    }
  }
  assert signature["outputs"]["landmarks"]["shape"] == [-1, CONFIG.num_landmarks, 2]
  assert signature["outputs"]["head_found"]["dtype"] == "bool"

  (request,) = warmup.read_warmup(warmup.warmup_path(exported.path))
  assert request.model_spec.name == "landmarks"
  assert request.model_spec.signature_name == "serving_default"
  images = warmup.request_inputs(request)["image_bytes"]
  assert images.shape == (2,)
  formats = [decode.decode_image(data).format for data in images]
  assert formats == ["JPEG", "PNG"]


@pytest.mark.slow
def test_saved_model_cli_runs_the_detector_on_encoded_images(exported, tmp_path):
  encoded, _ = _images()
  np.save(tmp_path / "images.npy", np.array(encoded, object), allow_pickle=True)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "tensorflow.python.tools.saved_model_cli",
      "run",
      "--dir",
      str(exported.path),
      "--tag_set",
      "serve",
      "--signature_def",
      "serving_default",
      "--inputs",
      f"image_bytes={tmp_path / 'images.npy'}",
      "--outdir",
      str(tmp_path / "out"),
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  serve = serving.load_quietly(exported.path).signatures["serving_default"]
  expected = serve(image_bytes=np.array(encoded, object))
  for name in OUTPUTS:
    np.testing.assert_array_equal(np.load(tmp_path / "out" / f"{name}.npy"), expected[name])


def test_head_found_in_the_graph_follows_predict():
  boxes = np.array(
    [[10, 10, 20, 20], [10, 10, 10.5, 20], [-30, 5, -1, 9], [99.5, 5, 120, 9], [10, 10, 20, 20]],
    np.float32,
  )
  scores = np.array([0.9, 0.9, 0.9, 0.9, 0.2], np.float32)
  got = export.head_found(boxes, scores, 100, 50, 0.5).numpy()
  want = [predict.head_found(b, s, 100, 50, 0.5) for b, s in zip(boxes, scores)]
  assert list(got) == want == [True, False, False, False, False]
