"""Tests of tfpets.superres.upscale: tiles, self-ensemble, and folders upscaled to files."""

from __future__ import annotations

import csv
import io
import os
import pathlib

import keras
import numpy as np
import pytest
from PIL import Image

from tfpets.data.decode import encode_jpeg, read_image
from tfpets.superres import upscale
from tfpets.superres.dbpn import build_dbpn

SCALE = 2


@pytest.fixture(scope="module")
def model() -> keras.Model:
  keras.utils.set_random_seed(7)
  return build_dbpn("dbpns", SCALE, residual=True)  # bicubic + noise: image-like outputs


def random_image(height: int, width: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).random((height, width, 3), np.float32)


def write_image(path: pathlib.Path, pixels: np.ndarray, fmt: str = "PNG", mode=None) -> bytes:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = Image.fromarray(pixels)
  if mode:
    image = image.convert(mode)
  buf = io.BytesIO()
  image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  path.write_bytes(buf.getvalue())
  return buf.getvalue()


def random_pixels(height: int, width: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def as_uint8(images: np.ndarray) -> np.ndarray:
  return np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8)


def read_manifest(path) -> dict:
  with open(path, newline="") as f:
    return {row["path"]: row for row in csv.DictReader(f)}


# --- Upscaler ---------------------------------------------------------------------------------


def test_whole_image_is_the_model_output_clipped(model):
  image = random_image(9, 13, 0)
  upscaler = upscale.Upscaler(model)
  assert upscaler.scale == SCALE
  expected = np.clip(model(image[None]).numpy()[0], 0, 1)
  np.testing.assert_allclose(upscaler(image), expected, atol=1e-5)
  assert upscaler(image).min() >= 0 and upscaler(image).max() <= 1
  batch = np.stack([image, random_image(9, 13, 1)])
  np.testing.assert_allclose(upscaler(batch)[0], expected, atol=1e-5)


def test_new_sizes_do_not_retrace(model):
  upscaler = upscale.Upscaler(model)
  for height, width, count in [(5, 7, 1), (11, 6, 2), (8, 8, 3)]:
    out = upscaler(np.zeros((count, height, width, 3), np.float32))
    assert out.shape == (count, SCALE * height, SCALE * width, 3)
  assert upscaler.forward.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("length, tile, overlap", [(70, 16, 16), (45, 16, 4), (33, 10, 0)])
def test_tile_spans_cover_the_axis_with_context(length, tile, overlap):
  window, spans = upscale.tile_spans(length, tile, overlap)
  cores = [(a, b) for _, a, b in spans]
  assert cores[0][0] == 0 and cores[-1][1] == length
  assert all(b0 == a1 for (_, b0), (a1, _) in zip(cores, cores[1:]))
  for start, a, b in spans:
    assert 0 < b - a <= tile and 0 <= start and start + window <= length
    assert a - start >= overlap or start == 0
    assert start + window - b >= overlap or start + window == length


def test_tiled_output_equals_whole_image_output(model):
  image = random_image(45, 70, 2)  # not a multiple of the tile, not square
  whole = upscale.Upscaler(model)(image)
  tiled = upscale.Upscaler(model, tile=16, overlap=16)
  assert tiled.tile_size(45, 70) == 16
  np.testing.assert_allclose(tiled(image), whole, atol=1e-4)
  batch = np.stack([image, random_image(45, 70, 3)])
  np.testing.assert_allclose(tiled(batch)[0], whole, atol=1e-4)
  # Too little context shows at the seams: the overlap is what makes tiles exact.
  assert np.abs(upscale.Upscaler(model, tile=16, overlap=1)(image) - whole).max() > 1e-3


def test_tiles_chosen_from_the_memory_budget(model):
  image = random_image(45, 70, 4)
  whole = upscale.Upscaler(model)(image)
  per_pixel = upscale.activation_bytes_per_pixel(model, SCALE)
  budget_mb = 44 * 44 * per_pixel / 2**20  # room for one 44 x 44 window
  upscaler = upscale.Upscaler(model, memory_mb=budget_mb, overlap=12)
  assert upscaler.tile_size(30, 40) is None  # 1200 pixels fit
  assert upscaler.tile_size(45, 70) == 44 - 2 * 12
  assert upscale.Upscaler(model, memory_mb=budget_mb, overlap=16).tile_size(45, 70) == 16
  np.testing.assert_allclose(upscaler(image), whole, atol=1e-4)


def test_image_smaller_than_a_tile_runs_whole(model):
  image = random_image(10, 13, 5)
  whole = upscale.Upscaler(model)(image)
  big_tile = upscale.Upscaler(model, tile=32)
  assert big_tile.tile_size(10, 13) is None
  np.testing.assert_array_equal(big_tile(image), whole)
  # Tiles smaller than the image but windows (tile + context) that hold all of it.
  np.testing.assert_array_equal(upscale.Upscaler(model, tile=8, overlap=16)(image), whole)


def test_self_ensemble_is_the_mean_of_the_eight_transforms(model):
  image = random_image(7, 34, 6)
  transforms = [  # (forward, inverse) on HWC arrays
    (lambda x: x, lambda y: y),
    (lambda x: x[:, ::-1], lambda y: y[:, ::-1]),
    (lambda x: x[::-1], lambda y: y[::-1]),
    (lambda x: x[::-1, ::-1], lambda y: y[::-1, ::-1]),
    (lambda x: x.transpose(1, 0, 2), lambda y: y.transpose(1, 0, 2)),
    (lambda x: x[:, ::-1].transpose(1, 0, 2), lambda y: y.transpose(1, 0, 2)[:, ::-1]),
    (lambda x: x[::-1].transpose(1, 0, 2), lambda y: y.transpose(1, 0, 2)[::-1]),
    (lambda x: x[::-1, ::-1].transpose(1, 0, 2), lambda y: y.transpose(1, 0, 2)[::-1, ::-1]),
  ]
  outputs = [
    inverse(model(np.ascontiguousarray(forward(image))[None]).numpy()[0])
    for forward, inverse in transforms
  ]
  assert all(out.shape == (14, 68, 3) for out in outputs)
  expected = np.clip(np.mean(outputs, axis=0), 0, 1)
  ensemble = upscale.Upscaler(model, self_ensemble=True)
  np.testing.assert_allclose(ensemble(image), expected, atol=1e-5)
  assert np.abs(ensemble(image) - upscale.Upscaler(model)(image)).max() > 1e-2
  # Tiled and ensembled: the ensemble of each tile, stitched.
  tiled = upscale.Upscaler(model, self_ensemble=True, tile=8, overlap=12)
  assert tiled.tile_size(7, 34) == 8
  np.testing.assert_allclose(tiled(image), expected, atol=1e-4)


def test_upscaler_argument_errors(model):
  with pytest.raises(ValueError, match="scale=4: the model dbpns_x2 upscales by 2"):
    upscale.Upscaler(model, scale=4)
  with pytest.raises(ValueError, match="tile=-1"):
    upscale.Upscaler(model, tile=-1)
  plain = keras.Sequential([keras.Input((None, None, 3)), keras.layers.UpSampling2D(3)])
  with pytest.raises(ValueError, match="no DBPN up-projection units; give bytes_per_pixel"):
    upscale.Upscaler(plain)
  nearest = upscale.Upscaler(plain, bytes_per_pixel=100)
  assert nearest.scale == 3
  with pytest.raises(ValueError, match=r"must be \(H, W, 3\)"):
    nearest(np.zeros((4, 4), np.float32))


# --- upscale_images ---------------------------------------------------------------------------


def test_threshold_files_and_manifest(model, tmp_path):
  source = tmp_path / "in"
  small = random_pixels(8, 11, 0)  # area 88 < 96: upscaled
  exact = random_pixels(8, 12, 1)  # area 96, not below: kept
  photo = random_pixels(9, 10, 2)  # area 90 < 96: upscaled, a JPEG
  write_image(source / "small.png", small)
  exact_bytes = write_image(source / "exact.png", exact)
  write_image(source / "photo.jpg", photo, "JPEG")
  out = tmp_path / "out"
  upscaler = upscale.Upscaler(model)
  summary = upscale.upscale_images(upscaler, str(source), str(out), max_area=96)
  assert {k: summary[k] for k in ("upscaled", "kept", "rejected", "scale")} == {
    "upscaled": 2,
    "kept": 1,
    "rejected": 0,
    "scale": SCALE,
  }
  assert summary["seconds"] > 0

  decoded = read_image(str(out / "small.png"))
  assert decoded.format == "PNG"
  expected_small = as_uint8(upscaler(small.astype(np.float32) / 255))
  np.testing.assert_array_equal(decoded.pixels, expected_small)
  assert (out / "exact.png").read_bytes() == exact_bytes
  photo_out = read_image(str(out / "photo.jpg"))
  assert photo_out.format == "JPEG" and photo_out.pixels.shape == (18, 20, 3)
  photo_in = read_image(str(source / "photo.jpg")).pixels.astype(np.float32) / 255
  expected_photo = as_uint8(upscaler(photo_in))
  assert (out / "photo.jpg").read_bytes() == encode_jpeg(expected_photo, quality=95)
  difference = photo_out.pixels.astype(float) - expected_photo
  assert np.abs(difference).mean() < 4  # noisy random-weight output: JPEG's hardest case

  rows = read_manifest(summary["files"]["manifest"])
  assert set(rows) == {str(source / n) for n in ("small.png", "exact.png", "photo.jpg")}
  assert rows[str(source / "small.png")] == {
    "path": str(source / "small.png"),
    "output_path": str(out / "small.png"),
    "width": "11",
    "height": "8",
    "action": "upscaled",
    "reason": "area 88 < 96",
    "output_width": "22",
    "output_height": "16",
  }
  exact_row = rows[str(source / "exact.png")]
  assert exact_row["action"] == "kept" and exact_row["reason"] == "area 96 >= 96"
  assert (exact_row["output_width"], exact_row["output_height"]) == ("12", "8")
  assert rows[str(source / "photo.jpg")]["output_path"] == str(out / "photo.jpg")
  with open(summary["files"]["rejects"]) as f:
    assert f.read().splitlines() == ["file,reason,action"]


def test_relative_paths_png_format_and_equal_sizes_batched(model, tmp_path):
  source = tmp_path / "classes"
  inputs = {
    "cat/a.jpg": random_pixels(6, 7, 3),
    "cat/deep/b.png": random_pixels(6, 7, 4),
    "dog/c.bmp": random_pixels(6, 7, 5),
    "dog/d.png": random_pixels(20, 20, 6),
  }
  for name, pixels in inputs.items():
    write_image(source / name, pixels, {"jpg": "JPEG", "png": "PNG", "bmp": "BMP"}[name[-3:]])
  out = tmp_path / "out"
  upscaler = upscale.Upscaler(model)
  summary = upscale.upscale_images(
    upscaler, str(source), str(out), max_area=100, format="png", batch_size=2
  )
  assert (summary["upscaled"], summary["kept"]) == (3, 1)
  written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  assert written == [
    "cat/a.png",
    "cat/deep/b.png",
    "dog/c.png",
    "dog/d.png",
    "manifest.csv",
    "rejects.csv",
  ]
  assert (out / "dog/d.png").read_bytes() == (source / "dog/d.png").read_bytes()
  for name in ("cat/a.jpg", "cat/deep/b.png", "dog/c.bmp"):
    pixels = read_image(str(source / name)).pixels.astype(np.float32) / 255
    expected = as_uint8(upscaler(pixels)).astype(int)
    got = read_image(str(out / (os.path.splitext(name)[0] + ".png"))).pixels.astype(int)
    assert np.abs(got - expected).max() <= 1  # batched (2 + 1) vs alone: rounding at most


def test_in_place_rewrites_only_the_upscaled_images(model, tmp_path):
  source = tmp_path / "in"
  write_image(source / "small.png", random_pixels(5, 6, 7))
  big = write_image(source / "big.jpg", random_pixels(12, 12, 8), "JPEG")
  write_image(source / "old.bmp", random_pixels(4, 5, 9), "BMP")
  reports = tmp_path / "reports"
  summary = upscale.upscale_images(model, str(source), str(reports), max_area=100, in_place=True)
  assert (summary["upscaled"], summary["kept"]) == (2, 1)
  assert sorted(os.listdir(source)) == ["big.jpg", "old.png", "small.png"]
  assert (source / "big.jpg").read_bytes() == big
  assert read_image(str(source / "small.png")).pixels.shape == (10, 12, 3)
  assert read_image(str(source / "old.png")).pixels.shape == (8, 10, 3)
  assert sorted(os.listdir(reports)) == ["manifest.csv", "rejects.csv"]
  rows = read_manifest(reports / "manifest.csv")
  assert rows[str(source / "old.bmp")]["output_path"] == str(source / "old.png")
  assert rows[str(source / "big.jpg")]["output_path"] == str(source / "big.jpg")


def test_grayscale_and_rgba_become_rgb(model, tmp_path):
  source = tmp_path / "in"
  write_image(source / "gray.png", random_pixels(6, 6, 10), mode="L")
  rgba = np.dstack([random_pixels(5, 7, 11), random_pixels(5, 7, 12)[..., :1]])
  write_image(source / "rgba.png", rgba)
  upscaler = upscale.Upscaler(model)
  upscale.upscale_images(upscaler, [source / "gray.png", source / "rgba.png"], tmp_path / "out")
  gray = np.asarray(Image.open(source / "gray.png"))
  for name, rgb in [("gray.png", np.repeat(gray[..., None], 3, -1)), ("rgba.png", rgba[..., :3])]:
    with Image.open(tmp_path / "out" / name) as written:
      assert written.mode == "RGB"
      expected = as_uint8(upscaler(rgb.astype(np.float32) / 255))
      np.testing.assert_array_equal(np.asarray(written), expected)


def test_corrupt_file_is_rejected_and_the_rest_run(model, tmp_path):
  source = tmp_path / "in"
  write_image(source / "a.png", random_pixels(5, 5, 13))
  (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 30)
  write_image(source / "c.png", random_pixels(30, 30, 14))
  out = tmp_path / "out"
  summary = upscale.upscale_images(model, str(source), str(out), max_area=100)
  assert (summary["upscaled"], summary["kept"], summary["rejected"]) == (1, 1, 1)
  assert sorted(os.listdir(out)) == ["a.png", "c.png", "manifest.csv", "rejects.csv"]
  with open(out / "rejects.csv", newline="") as f:
    rejects = list(csv.reader(f))
  assert rejects[1][0] == str(source / "broken.jpg") and rejects[1][2] == "skipped"
  assert "JPEG" in rejects[1][1]
  row = read_manifest(out / "manifest.csv")[str(source / "broken.jpg")]
  assert row["action"] == "rejected" and row["reason"] == rejects[1][1]
  assert row["output_path"] == row["width"] == row["output_width"] == ""


def test_upscale_images_argument_errors(model, tmp_path):
  source = tmp_path / "in"
  write_image(source / "a.png", random_pixels(5, 5, 15))
  write_image(source / "a.jpg", random_pixels(5, 5, 16), "JPEG")
  with pytest.raises(ValueError, match="format='tiff': must be one of same, png"):
    upscale.upscale_images(model, str(source), str(tmp_path / "o"), format="tiff")
  with pytest.raises(ValueError, match=r"a.jpg and .*a.png would both be written to .*a.png"):
    upscale.upscale_images(model, str(source), str(tmp_path / "o"), format="png")
  with pytest.raises(ValueError, match="is an input; pass in_place=True to overwrite"):
    upscale.upscale_images(model, str(source), str(source))
  assert sorted(os.listdir(source)) == ["a.jpg", "a.png"]
