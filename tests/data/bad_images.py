"""Builders of every kind of awkward image file the decoder and converter must handle."""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image


def gradient(h: int = 40, w: int = 60) -> np.ndarray:
  y, x = np.mgrid[0:h, 0:w]
  return np.stack(
    [x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], axis=-1
  ).astype(np.uint8)


def save(img: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def jpeg(pixels: np.ndarray | None = None, **kwargs) -> bytes:
  return save(
    Image.fromarray(gradient() if pixels is None else pixels), "JPEG", quality=95, **kwargs
  )


def write_all(folder: pathlib.Path) -> dict:
  """Writes one file per case into `folder`; returns {case: path}."""
  folder.mkdir(parents=True, exist_ok=True)
  rgb = gradient()
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 128, np.uint8)], axis=-1)
  good = jpeg(rgb)
  frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
  gif = io.BytesIO()
  frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
  exif = Image.Exif()
  exif[0x0112] = 6  # rotated 90 degrees clockwise when shown
  gray16 = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
  cases = {
    "good.jpg": good,
    "png_named.jpg": save(Image.fromarray(rgba, "RGBA"), "PNG"),
    "gif_named.jpg": gif.getvalue(),
    "gray.jpg": save(Image.fromarray(rgb[..., 0], "L"), "JPEG"),
    "cmyk.jpg": save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
    "gray16.png": save(Image.fromarray(gray16), "PNG"),
    "exif_rotated.jpg": jpeg(rgb, exif=exif.tobytes()),
    "truncated_tail.jpg": good[:-2],  # only the end marker missing: usable
    "truncated.jpg": good[: len(good) // 3],  # most of the scan missing: unusable
    "corrupt.jpg": good[:200] + bytes(range(256)) * 8,
    "empty.jpg": b"",
    "notes.jpg": b"these are not the pixels you are looking for\n",
  }
  paths = {}
  for name, data in cases.items():
    path = folder / name
    path.write_bytes(data)
    paths[name] = path
  return paths
