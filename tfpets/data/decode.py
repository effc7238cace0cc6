"""The one image decoder.

Never trusts the file extension: the Oxford-IIIT Pet release has a PNG and a GIF named `.jpg`
(Abyssinian_5 and Abyssinian_34). Everything that can be turned into an 8-bit RGB array is (first
GIF frame, alpha dropped, CMYK, grayscale and 16-bit converted, EXIF orientation applied), and
every conversion is named in `DecodedImage.notes` so that conversions can report it. Anything else raises
`ImageDecodeError` naming the file and the problem.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from typing import List

import numpy as np
from PIL import Image, ImageOps

# Pillow's own guard against decompression bombs stays on; real pet photos are far below it.
Image.MAX_IMAGE_PIXELS = 20000 * 20000


class ImageDecodeError(ValueError):
  """An image file that cannot be decoded; `str()` names the file and the reason."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass
class DecodedImage:
  pixels: np.ndarray  # [H, W, 3] uint8 RGB
  format: str  # container format actually found ('JPEG', 'PNG', 'GIF', ...)
  notes: List[str]  # conversions applied, empty for a clean 8-bit RGB JPEG
  orientation: int = 1  # EXIF orientation that was applied (1: none)

  @property
  def height(self) -> int:
    return int(self.pixels.shape[0])

  @property
  def width(self) -> int:
    return int(self.pixels.shape[1])


def sniff_format(data: bytes) -> str:
  """Container format from magic bytes, or '' when unknown."""
  if data[:3] == b"\xff\xd8\xff":
    return "JPEG"
  if data[:8] == b"\x89PNG\r\n\x1a\n":
    return "PNG"
  if data[:6] in (b"GIF87a", b"GIF89a"):
    return "GIF"
  if data[:2] == b"BM":
    return "BMP"
  if data[:4] in (b"II*\x00", b"MM\x00*"):
    return "TIFF"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "WEBP"
  return ""


def _to_rgb8(img: Image.Image, notes: List[str]) -> np.ndarray:
  mode = img.mode
  if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    arr = np.asarray(img)
    notes.append(f"{'16' if mode.startswith('I;16') else '32'}-bit grayscale to 8-bit")
    max_value = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
    gray = np.clip(np.rint(arr.astype(np.float64) * (255.0 / max_value)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "F":
    notes.append("float grayscale to 8-bit")
    gray = np.clip(np.rint(np.asarray(img, np.float64)), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode != "RGB":
    notes.append(
      {
        "L": "grayscale to RGB",
        "1": "bilevel to RGB",
        "P": "palette to RGB",
        "CMYK": "CMYK to RGB",
        "RGBA": "alpha dropped",
        "LA": "grayscale+alpha to RGB",
        "PA": "palette+alpha to RGB",
      }.get(mode, f"{mode} to RGB")
    )
    if mode == "P" and "transparency" in img.info:
      img = img.convert("RGBA")
    img = img.convert("RGB")
  return np.asarray(img, np.uint8)


def decode_image(data: bytes, path: str = "<bytes>") -> DecodedImage:
  """Decodes encoded image bytes to 8-bit RGB, or raises ImageDecodeError."""
  if not data:
    raise ImageDecodeError(path, "empty file (0 bytes)")
  fmt = sniff_format(data)
  if not fmt:
    raise ImageDecodeError(path, "not an image (unrecognised magic bytes)")
  notes: List[str] = []
  ext = path.rsplit(".", 1)[-1].lower() if "." in path else ""
  if ext in ("jpg", "jpeg") and fmt != "JPEG":
    notes.append(f"{fmt} file named .{ext}")
  missing_eoi = fmt == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")
  if missing_eoi:
    # Pillow refuses a JPEG without its end marker; with the marker restored it decodes what is
    # there, and `_scan_is_complete` tells a lost marker from lost image data.
    data = data + b"\xff\xd9"
  img = _open(data, path, fmt)
  if getattr(img, "n_frames", 1) > 1:
    notes.append(f"first of {img.n_frames} frames")
  if missing_eoi:
    if not _scan_is_complete(img):
      raise ImageDecodeError(path, "truncated JPEG data (the bottom of the image is missing)")
    notes.append("JPEG end marker missing")
  orientation = _exif_orientation(img)
  if orientation in range(2, 9):
    try:
      img = ImageOps.exif_transpose(img)
      notes.append(f"EXIF orientation {orientation} applied")
    except Exception:  # a malformed EXIF block is not worth losing the image over
      notes.append("unreadable EXIF orientation ignored")
      orientation = 1
  else:
    orientation = 1
  pixels = _to_rgb8(img, notes)
  if pixels.ndim != 3 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
    raise ImageDecodeError(path, f"decoded to an empty array of shape {pixels.shape}")
  return DecodedImage(
    pixels=np.ascontiguousarray(pixels), format=fmt, notes=notes, orientation=orientation
  )


def _open(data: bytes, path: str, fmt: str) -> Image.Image:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      img = Image.open(io.BytesIO(data))
      img.seek(0)
      img.load()
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... for bad files.
    raise ImageDecodeError(path, f"corrupt or truncated {fmt} data ({e})") from None
  return img


def _scan_is_complete(img: Image.Image) -> bool:
  """False when libjpeg filled the last block with its mid-grey placeholder for missing data."""
  corner = np.asarray(img.convert("RGB"))[-8:, -8:]
  return not np.all(corner == 128)


def _exif_orientation(img: Image.Image):
  try:
    return img.getexif().get(0x0112)
  except Exception:
    return None


def orient_points(points: np.ndarray, orientation: int, width: int, height: int) -> np.ndarray:
  """Moves (x, y) pixel coordinates of the stored image as EXIF `orientation` moves its pixels.

  `width` and `height` are the stored (un-oriented) size; coordinates are continuous (0..width).
  """
  x, y = np.asarray(points, np.float32).reshape(-1, 2).T
  w, h = float(width), float(height)
  moved = {
    1: (x, y),
    2: (w - x, y),
    3: (w - x, h - y),
    4: (x, h - y),
    5: (y, x),
    6: (h - y, x),
    7: (h - y, w - x),
    8: (y, w - x),
  }[orientation]
  return np.stack(moved, axis=-1).astype(np.float32)


def read_image(path: str) -> DecodedImage:
  """Reads and decodes a file; a missing or unreadable file is an ImageDecodeError too."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})") from None
  return decode_image(data, path)


def encode_jpeg(pixels: np.ndarray, quality: int = 95) -> bytes:
  """Encodes [H, W, 3] uint8 RGB as a baseline JPEG, full-resolution chroma (4:4:4)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(pixels, np.uint8)).save(
    buf, format="JPEG", quality=quality, subsampling=0
  )
  return buf.getvalue()


def encode_png(pixels: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, format="PNG")
  return buf.getvalue()
