"""Tests of tfpets.superres.evaluate: the SR benchmark report and GrabAI's small-image protocol."""

from __future__ import annotations

import csv
import json
import math

import keras
import numpy as np
import pytest
from PIL import Image

from tests.superres.images import smooth_image
from tfpets.data.rejects import RejectsReport
from tfpets.errors import ArgumentError
from tfpets.superres import evaluate, metrics
from tfpets.superres.dbpn import build_dbpn

Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0


def _direct_psnr_on_y(sr_uint8, hr_uint8, scale):
  """PSNR on the BT.601 Y channel with `scale` pixels cropped per border, written out directly."""
  y_sr = 16 + sr_uint8.astype(np.float64) @ Y_WEIGHTS
  y_hr = 16 + hr_uint8.astype(np.float64) @ Y_WEIGHTS
  crop = (slice(scale, -scale), slice(scale, -scale))
  mse = np.mean((y_sr[crop] - y_hr[crop]) ** 2)
  return 10 * math.log10(255.0**2 / mse)


def _write_png(path, pixels):
  Image.fromarray(pixels).save(path, format="PNG")
  return str(path)


@pytest.fixture
def hr_files(tmp_path):
  """Two HR PNGs whose sizes are not multiples of 2, a corrupt file and one too small to score."""
  images = {"a.png": smooth_image(31, 38, 0), "b.png": smooth_image(34, 29, 1)}
  paths = [_write_png(tmp_path / name, pixels) for name, pixels in images.items()]
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(b"this is not an image")
  tiny = _write_png(tmp_path / "tiny.png", smooth_image(14, 40, 2))
  return paths + [str(corrupt), tiny], images


def test_modcrop():
  image = np.arange(7 * 10).reshape(7, 10)
  np.testing.assert_array_equal(evaluate.modcrop(image, 3), image[:6, :9])
  np.testing.assert_array_equal(evaluate.modcrop(image, 1), image)


def test_evaluate_pairs_with_a_bicubic_callable(hr_files):
  paths, images = hr_files
  upscaler = evaluate.bicubic_upscaler(2)
  report = evaluate.evaluate_pairs(None, paths, 2, upscaler=upscaler)
  assert report["num_images"] == 2 and report["scale"] == 2
  rows = {row["file"]: row for row in report["images"]}
  model_psnrs, bicubic_psnrs = [], []
  for path, (name, pixels) in zip(paths, images.items()):
    row = rows[path]
    hr = pixels[: pixels.shape[0] // 2 * 2, : pixels.shape[1] // 2 * 2]
    assert (row["hr_height"], row["hr_width"]) == hr.shape[:2]
    assert (row["lr_height"], row["lr_width"]) == (hr.shape[0] // 2, hr.shape[1] // 2)
    lr = metrics.imresize(hr, 0.5)
    # Baseline: MATLAB bicubic x2 of the uint8 LR (rounded as MATLAB after each axis).
    bicubic = metrics.imresize(lr, 2)
    assert row["bicubic_psnr"] == pytest.approx(_direct_psnr_on_y(bicubic, hr, 2), abs=1e-9)
    # "Model": the same bicubic on the float LR in [0, 1], clipped and rounded once.
    sr = metrics.imresize(lr.astype(np.float64) / 255.0, 2)
    sr_uint8 = np.floor(np.clip(sr, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert row["model_psnr"] == pytest.approx(_direct_psnr_on_y(sr_uint8, hr, 2), abs=1e-9)
    assert row["model_ssim"] == pytest.approx(metrics.sr_scores(sr_uint8, hr, 2)["ssim"])
    model_psnrs.append(row["model_psnr"])
    bicubic_psnrs.append(row["bicubic_psnr"])
  assert report["model"]["psnr"] == pytest.approx(np.mean(model_psnrs))
  assert report["bicubic"]["psnr"] == pytest.approx(np.mean(bicubic_psnrs))
  assert 0 < report["bicubic"]["ssim"] < 1
  assert 20 < report["bicubic"]["psnr"] < 60


def test_evaluate_pairs_rejects_corrupt_and_small_files(hr_files):
  paths, _ = hr_files
  rejects = RejectsReport()
  report = evaluate.evaluate_pairs(
    None, paths, 2, upscaler=evaluate.bicubic_upscaler(2), rejects=rejects
  )
  reasons = {entry["path"]: entry["reason"] for entry in report["rejects"]}
  assert set(reasons) == {paths[2], paths[3]}
  assert "not an image" in reasons[paths[2]]
  assert "too small to score at x2: 14x40" in reasons[paths[3]]
  assert rejects.paths() == [paths[2], paths[3]]
  assert [row["file"] for row in report["images"]] == paths[:2]


def test_evaluate_pairs_with_a_dbpns_model(hr_files):
  paths, images = hr_files
  keras.utils.set_random_seed(0)
  model = build_dbpn("dbpns", scale=2)
  report = evaluate.evaluate_pairs(model, paths[:1], 2)
  hr = images["a.png"][:30, :38]
  lr = metrics.imresize(hr, 0.5)
  sr = np.asarray(model(lr[None].astype(np.float32) / 255.0))[0]
  assert sr.shape == (30, 38, 3)
  sr_uint8 = np.floor(np.clip(sr, 0, 1) * 255 + 0.5).astype(np.uint8)
  row = report["images"][0]
  assert row["model_psnr"] == pytest.approx(_direct_psnr_on_y(sr_uint8, hr, 2), abs=1e-6)
  assert report["model"]["psnr"] == pytest.approx(row["model_psnr"])
  assert row["bicubic_psnr"] > row["model_psnr"]  # random weights lose to bicubic


def test_evaluate_pairs_argument_errors(hr_files):
  paths, _ = hr_files
  with pytest.raises(ArgumentError, match="self_ensemble"):
    evaluate.evaluate_pairs(object(), paths, 2, self_ensemble=True)
  with pytest.raises(ArgumentError, match="model"):
    evaluate.evaluate_pairs(None, paths, 2)
  with pytest.raises(ValueError, match=r"expected \(30, 38, 3\)"):
    evaluate.evaluate_pairs(None, paths[:1], 2, upscaler=lambda lr: lr)


def test_write_report(hr_files, tmp_path):
  paths, _ = hr_files
  report = evaluate.evaluate_pairs(None, paths, 2, upscaler=evaluate.bicubic_upscaler(2))
  written = evaluate.write_report(report, str(tmp_path / "reports"))
  json_path, csv_path, rejects_path = written
  assert json_path.endswith("reports/superres_eval.json")
  assert json.loads(open(json_path).read()) == report
  with open(csv_path) as f:
    rows = list(csv.DictReader(f))
  assert [row["file"] for row in rows] == paths[:2]
  assert float(rows[0]["model_psnr"]) == pytest.approx(report["images"][0]["model_psnr"])
  with open(rejects_path) as f:
    rejected = list(csv.reader(f))
  assert rejected[0] == ["file", "reason", "action"]
  assert [row[0] for row in rejected[1:]] == paths[2:]


# --- GrabAI's small-image protocol ----------------------------------------------------------


@pytest.mark.parametrize(
  "shape, expected",
  [
    ((97, 203), (128, 268)),  # 203 * 128 / 97 = 267.88: rounded, not truncated to 267
    ((203, 97), (268, 128)),
    ((256, 257), (128, 128)),  # 128.5: ties go to the even neighbour, as OpenCV's cvRound
    ((256, 259), (128, 130)),  # 129.5
    ((150, 300), (128, 256)),
    ((100, 150), (128, 192)),  # smaller than 128: enlarged likewise
  ],
)
def test_downscale_short_side_sizes(shape, expected):
  image = np.zeros(shape + (3,), np.uint8)
  assert evaluate.downscale_short_side(image).shape == expected + (3,)
  assert evaluate.short_side_size(*shape) == expected


def test_downscale_short_side_averages_areas():
  rng = np.random.default_rng(5)
  coarse = rng.integers(0, 250, size=(128, 160, 3))
  # Each 2x2 block holds v, v + 2, v + 2, v: its area average is v + 1 exactly.
  image = np.kron(coarse, np.ones((2, 2, 1), int)) + np.kron(
    np.ones((128, 160, 1), int), np.array([[0, 2], [2, 0]])[..., None]
  )
  out = evaluate.downscale_short_side(image.astype(np.uint8))
  np.testing.assert_array_equal(out, coarse + 1)


def _short_side_classifier(images):
  """Class 0 for a short side of 128, 1 for 512, 2 otherwise (one-hot probabilities)."""
  classes = [{128: 0, 512: 1}.get(min(image.shape[:2]), 2) for image in images]
  return np.eye(3)[classes]


def _nearest_x4(lr):
  assert lr.dtype == np.float32 and 0 <= lr.min() and lr.max() <= 1
  return np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)


SHAPES = [(200, 300), (150, 300), (150, 400), (100, 150), (128, 128)]
# Downscaled: 128x192 (24 576), 128x256 (= 32 768), 128x341, 128x192, 128x128 (16 384).
LABELS = [1, 0, 2, 0, 0]


def _images():
  for i, shape in enumerate(SHAPES):
    yield np.full(shape + (3,), 40 * i, np.uint8)


def test_small_image_protocol_accuracies_by_construction():
  report = evaluate.small_image_protocol(
    _short_side_classifier, _images(), LABELS, _nearest_x4, 4, chunk_size=2
  )
  # Originals: short sides 200, 150, 150, 100, 128 -> classes 2, 2, 2, 2, 0: right for 3rd, 5th.
  assert report["original_top1"] == pytest.approx(2 / 5)
  # Downscaled: every short side is 128 -> class 0: right for the 2nd, 4th and 5th.
  assert report["downscaled_top1"] == pytest.approx(3 / 5)
  # Upscaled where w * h < 32 768 (1st, 4th, 5th -> class 1); the 2nd is exactly 32 768 and stays.
  assert report["upscaled_top1"] == pytest.approx(2 / 5)
  assert (report["num_upscaled"], report["num_kept"]) == (3, 2)
  assert [row["upscaled"] for row in report["images"]] == [True, False, False, True, True]
  assert [row["upscaled_prediction"] for row in report["images"]] == [1, 0, 0, 1, 1]
  assert [(r["downscaled_height"], r["downscaled_width"]) for r in report["images"]] == [
    (128, 192),
    (128, 256),
    (128, 341),
    (128, 192),
    (128, 128),
  ]


def test_small_image_protocol_threshold_is_strict():
  report = evaluate.small_image_protocol(
    _short_side_classifier, _images(), LABELS, _nearest_x4, 4, max_area=128 * 256 + 1
  )
  assert report["images"][1]["upscaled"] and report["num_upscaled"] == 4
  assert report["upscaled_top1"] == pytest.approx(1 / 5)


def test_small_image_protocol_checks_labels_and_outputs():
  with pytest.raises(ArgumentError, match="given for 5 images"):
    evaluate.small_image_protocol(_short_side_classifier, _images(), LABELS[:4], _nearest_x4, 4)
  with pytest.raises(ArgumentError, match="4 labels.*given for 5 images"):
    evaluate.small_image_protocol(
      _short_side_classifier, list(_images()), LABELS[:4], _nearest_x4, 4
    )
  with pytest.raises(ValueError, match="expected"):
    evaluate.small_image_protocol(_short_side_classifier, _images(), LABELS, _nearest_x4, 2)


def test_classifier_predict_fn_softmax_of_eval_images():
  image_size = 8
  model = keras.Sequential(
    [
      keras.Input((image_size, image_size, 3)),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(2),
    ]
  )
  # logits = (R / 50, (255 - R) / 50) of the mean colour.
  model.layers[-1].set_weights(
    [np.array([[1 / 50, -1 / 50], [0, 0], [0, 0]], np.float32), np.array([0, 255 / 50], np.float32)]
  )
  reds = [200, 50, 128]
  images = [
    np.full(shape + (3,), red, np.uint8) for shape, red in zip([(20, 30), (9, 13), (40, 17)], reds)
  ]
  probabilities = evaluate.classifier_predict_fn(model, image_size, batch_size=2)(images)
  logits = np.array([[red / 50, (255 - red) / 50] for red in reds])
  expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(probabilities, expected, atol=1e-5)
