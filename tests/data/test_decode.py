from __future__ import annotations

import numpy as np
import pytest

from tests.data import bad_images
from tfpets.data import decode


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  return bad_images.write_all(tmp_path_factory.mktemp("bad_images"))


def test_clean_jpeg_decodes_without_notes(files):
  image = decode.read_image(str(files["good.jpg"]))
  assert image.format == "JPEG" and image.notes == []
  assert image.pixels.shape == (40, 60, 3) and image.pixels.dtype == np.uint8
  assert np.abs(image.pixels.astype(int) - bad_images.gradient()).mean() < 3


def test_png_named_jpg_drops_alpha_and_says_so(files):
  image = decode.read_image(str(files["png_named.jpg"]))
  assert image.format == "PNG"
  assert "PNG file named .jpg" in image.notes and "alpha dropped" in image.notes
  np.testing.assert_array_equal(image.pixels, bad_images.gradient())


def test_gif_named_jpg_keeps_first_frame(files):
  image = decode.read_image(str(files["gif_named.jpg"]))
  assert image.format == "GIF" and "first of 2 frames" in image.notes
  assert image.pixels.shape == (40, 60, 3)
  # GIF palettes quantise colours; the first frame is the gradient, not its inverse.
  assert np.abs(image.pixels.astype(int) - bad_images.gradient()).mean() < 12


def test_grayscale_and_cmyk_become_rgb(files):
  gray = decode.read_image(str(files["gray.jpg"]))
  assert gray.pixels.shape == (40, 60, 3) and "grayscale to RGB" in gray.notes
  np.testing.assert_array_equal(gray.pixels[..., 0], gray.pixels[..., 2])
  cmyk = decode.read_image(str(files["cmyk.jpg"]))
  assert "CMYK to RGB" in cmyk.notes
  assert np.abs(cmyk.pixels.astype(int) - bad_images.gradient()).mean() < 6


def test_16bit_grayscale_scales_to_8bit(files):
  image = decode.read_image(str(files["gray16.png"]))
  assert "16-bit grayscale to 8-bit" in image.notes
  raw = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
  expected = np.rint(raw / 65535.0 * 255.0).astype(np.uint8)
  np.testing.assert_array_equal(image.pixels[..., 1], expected)


def test_exif_orientation_is_applied(files):
  image = decode.read_image(str(files["exif_rotated.jpg"]))
  assert image.pixels.shape == (60, 40, 3)  # orientation 6: width and height swap
  assert "EXIF orientation 6 applied" in image.notes
  # Orientation 6 means rotate 90 degrees clockwise: the original left column becomes the top row.
  expected = np.rot90(bad_images.gradient(), k=-1)
  assert np.abs(image.pixels.astype(int) - expected).mean() < 3


def test_missing_end_marker_is_usable_and_noted(files):
  image = decode.read_image(str(files["truncated_tail.jpg"]))
  assert "JPEG end marker missing" in image.notes


@pytest.mark.parametrize(
  "name, reason",
  [
    ("truncated.jpg", "truncated JPEG"),
    ("corrupt.jpg", "truncated JPEG"),
    ("empty.jpg", "empty file"),
    ("notes.jpg", "not an image"),
  ],
)
def test_unusable_files_raise_naming_file_and_reason(files, name, reason):
  with pytest.raises(decode.ImageDecodeError, match=reason) as info:
    decode.read_image(str(files[name]))
  assert info.value.path.endswith(name) and name in str(info.value)


def test_missing_file_is_a_decode_error(tmp_path):
  with pytest.raises(decode.ImageDecodeError, match="cannot read file"):
    decode.read_image(str(tmp_path / "nope.jpg"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_points_moves_points_with_the_pixels(orientation):
  """A lone bright block is found where orient_points says the annotation goes."""
  h, w = 40, 64
  pixels = np.zeros((h, w, 3), np.uint8)
  pixels[8:12, 44:48] = 255  # block centred at (46, 10) in stored coordinates
  exif = bad_images.Image.Exif()
  exif[0x0112] = orientation
  data = bad_images.save(bad_images.Image.fromarray(pixels), "PNG", exif=exif.tobytes())
  image = decode.decode_image(data, "dot.png")
  ys, xs = np.nonzero(image.pixels[..., 0] > 127)
  found = np.array([xs.mean() + 0.5, ys.mean() + 0.5])  # pixel centres -> continuous coords
  expected = decode.orient_points(np.array([[46.0, 10.0]]), orientation, w, h)[0]
  np.testing.assert_allclose(found, expected, atol=1e-6)
