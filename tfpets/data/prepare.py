"""Per-image preparation for conversion: decode, check annotations, square and pyramid.

Pure numpy + Pillow (no TensorFlow) so conversion can fan out over worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional

import cv2
import numpy as np

from tfpets.data import decode, rejects, subsets
from tfpets.data.records import ImageRecord, landmark_box

SQUARE_POLICIES = ("center", "pad", "head")


@dataclasses.dataclass
class PreparedImage:
  """One image ready to be written; `issues` become rejects-report rows."""

  record: ImageRecord
  encoded: bytes  # JPEG bytes of `pixels`
  height: int
  width: int
  issues: List[tuple]  # (reason, action) pairs
  pixels: Optional[np.ndarray] = None  # kept only when a GAN pyramid or dedupe needs them
  pyramid: Optional[List[np.ndarray]] = None  # CHW uint8 levels, highest resolution first
  fingerprint: Optional[tuple] = None  # (pixel digest, perceptual hash) for duplicate search


def check_annotations(
  record: ImageRecord, height: int, width: int, landmark_margin: float = 0.25
) -> List[tuple]:
  """Validates box/landmarks against the decoded size; drops what is unusable, in place.

  Points a little outside the frame are real (ears cut off in the photo); a point further out
  than `landmark_margin` of the image size is an annotation error.
  """
  issues = []
  if record.landmarks is not None:
    pts = record.landmarks
    lo = -landmark_margin * np.array([width, height])
    hi = (1 + landmark_margin) * np.array([width, height])
    bad = np.where(np.any((pts < lo) | (pts > hi) | ~np.isfinite(pts), axis=1))[0]
    if pts.shape[0] not in (5, 9):
      issues.append(
        (
          f"{pts.shape[0]} landmarks, expected 9 or 5; landmarks dropped",
          rejects.ANNOTATION_DROPPED,
        )
      )
      record.landmarks = None
    elif bad.size:
      x, y = pts[bad[0]]
      issues.append(
        (
          f"landmark {bad[0]} at ({x:.1f}, {y:.1f}) lies outside the {width}x{height} "
          f"image; landmarks dropped",
          rejects.ANNOTATION_DROPPED,
        )
      )
      record.landmarks = None
  if record.box is not None:
    x0, y0, x1, y1 = record.box
    if not np.all(np.isfinite(record.box)) or x1 <= x0 or y1 <= y0:
      issues.append(
        (f"degenerate box {record.box.tolist()}; box dropped", rejects.ANNOTATION_DROPPED)
      )
      record.box = None
    else:
      clipped = np.array([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)], np.float32)
      if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        issues.append(
          (
            f"box {record.box.tolist()} lies outside the {width}x{height} image; box dropped",
            rejects.ANNOTATION_DROPPED,
          )
        )
        record.box = None
      elif not np.array_equal(clipped, record.box):
        issues.append(
          (f"box {record.box.tolist()} clipped to the {width}x{height} image", rejects.CONVERTED)
        )
        record.box = clipped
  return issues


def orient_annotations(record: ImageRecord, image: decode.DecodedImage) -> None:
  """Annotations are given on the stored pixels; move them as EXIF orientation moved the pixels."""
  swapped = image.orientation in (5, 6, 7, 8)
  stored_w, stored_h = (image.height, image.width) if swapped else (image.width, image.height)
  if record.landmarks is not None:
    record.landmarks = decode.orient_points(record.landmarks, image.orientation, stored_w, stored_h)
  if record.box is not None:
    corners = decode.orient_points(record.box.reshape(2, 2), image.orientation, stored_w, stored_h)
    record.box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])


def head_box(record: ImageRecord) -> Optional[np.ndarray]:
  if record.box is not None:
    return record.box
  if record.landmarks is not None:
    return landmark_box(record.landmarks)
  return None


def square_window(
  height: int, width: int, policy: str, box: Optional[np.ndarray] = None, margin: float = 0.2
) -> tuple:
  """(x0, y0, side) of the square to cut; it may extend past the image (padded with black)."""
  if policy == "head" and box is not None:
    x0, y0, x1, y1 = box
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = max(2, min(side, max(height, width)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # Shift the window into the frame where it fits, so padding appears only when it must.
    left = int(round(np.clip(cx - side / 2, min(0, width - side), max(0, width - side))))
    top = int(round(np.clip(cy - side / 2, min(0, height - side), max(0, height - side))))
    return left, top, side
  if policy == "pad":
    side = max(height, width)
    return (width - side) // 2, (height - side) // 2, side
  side = min(height, width)
  return (width - side) // 2, (height - side) // 2, side


def cut_square(pixels: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
  h, w = pixels.shape[:2]
  out = np.zeros((side, side, 3), np.uint8)
  sx0, sy0 = max(left, 0), max(top, 0)
  sx1, sy1 = min(left + side, w), min(top + side, h)
  if sx1 > sx0 and sy1 > sy0:
    out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = pixels[sy0:sy1, sx0:sx1]
  return out


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
  h = pixels.shape[0]
  interpolation = cv2.INTER_AREA if size < h else cv2.INTER_CUBIC
  return cv2.resize(pixels, (size, size), interpolation=interpolation)


def lod_pyramid(image_hwc: np.ndarray) -> List[np.ndarray]:
  """StyleGAN2-ADA level-of-detail pyramid (official dataset_tool.py, TFRecordExporter.add_image).

  CHW, each level the 2x2 box average of the previous one in float32 (a cascade), quantised with
  rint+clip only when stored.
  """
  level = np.transpose(image_hwc, (2, 0, 1)).astype(np.float32)
  levels = []
  while True:
    levels.append(np.clip(np.rint(level), 0, 255).astype(np.uint8))
    if level.shape[1] <= 4:
      return levels
    # Four strided adds: exact (the values are multiples of 1/4^k) and far faster than mean().
    level = (
      level[:, 0::2, 0::2] + level[:, 1::2, 0::2] + level[:, 0::2, 1::2] + level[:, 1::2, 1::2]
    ) * np.float32(0.25)


def prepare(
  record: ImageRecord,
  gan_resolution: int = 0,
  square_policy: str = "center",
  head_margin: float = 0.2,
  keep_pixels: bool = False,
  with_fingerprint: bool = False,
) -> PreparedImage:
  """Decodes and checks one record; raises decode.ImageDecodeError for unusable files."""
  data = record.read_bytes()
  image = decode.decode_image(data, record.path)
  issues = [(f"{note}; converted", rejects.CONVERTED) for note in image.notes]
  if image.orientation != 1:
    orient_annotations(record, image)
  issues += check_annotations(record, image.height, image.width)
  encoded = (
    data if (image.format == "JPEG" and not image.notes) else decode.encode_jpeg(image.pixels)
  )
  prepared = PreparedImage(
    record, encoded, image.height, image.width, issues, pixels=image.pixels if keep_pixels else None
  )
  if with_fingerprint:
    prepared.fingerprint = subsets.fingerprint(image.pixels)
  if gan_resolution:
    box = head_box(record)
    if square_policy == "head" and box is None:
      prepared.issues.append(
        ("no head box or landmarks; centre crop used for the GAN set", rejects.CONVERTED)
      )
    left, top, side = square_window(image.height, image.width, square_policy, box, head_margin)
    square = resize(cut_square(image.pixels, left, top, side), gan_resolution)
    prepared.pyramid = lod_pyramid(square)
  return prepared


def prepare_or_error(args: tuple):
  """`prepare(*args)` for a worker pool: an unusable file comes back as its ImageDecodeError."""
  record, gan_resolution, square, head_margin, dedupe = args
  try:
    return prepare(record, gan_resolution, square, head_margin, with_fingerprint=dedupe)
  except decode.ImageDecodeError as e:
    return e
