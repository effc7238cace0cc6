"""Upscaling images and folders with a DBPN network (`tfpets.superres.dbpn`).

`Upscaler` runs a model on float32 RGB images in [0, 1] and clips its output to [0, 1]. Large
inputs are cut into overlapping tiles whose centres are stitched (as the official `eval.py`'s
`chop_forward`, but with tiles of a chosen size, batched), so that one model call stays within a
memory budget; `self_ensemble=True` averages the outputs of the eight flips and transposes of the
input, each transformed back (`eval.py`'s `x8_forward`).

`upscale_images` follows GrabAI's `GAN_preprocess/super_resolution.py` (Stanford Cars): only images
with `width * height < max_area` (strictly; 128 * 256 by default) are upscaled. Unlike GrabAI's
script it converts every image to RGB, writes into an output folder by default, and records what
it did in `manifest.csv`.
"""

from __future__ import annotations

import collections
import csv
import math
import os
import re
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.data.decode import ImageDecodeError, encode_jpeg, encode_png, read_image
from tfpets.data.listing import GLOB_CHARACTERS, as_listing
from tfpets.data.rejects import SKIPPED, RejectsReport
from tfpets.errors import ArgumentError
from tfpets.superres import convert

GRABAI_MAX_AREA = 128 * 256  # super_resolution.py upscales images with w * h below this.
DEFAULT_OVERLAP = 16  # LR pixels of context around each tile.
DEFAULT_MEMORY_MB = 2048
MIN_TILE = 16
FORMATS = ("same", "png")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
UPSCALED, KEPT, REJECTED = "upscaled", "kept", "rejected"
MANIFEST_COLUMNS = (
  "path",
  "output_path",
  "width",
  "height",
  "action",
  "reason",
  "output_width",
  "output_height",
)
_UP_PROJECTION = re.compile(r"^up\d+_up_conv1_deconv$")


# --- the model ------------------------------------------------------------------------------


def model_scale(model: keras.Model) -> int:
  """The integer factor by which `model` enlarges both sides of its input."""
  out = model.compute_output_shape((1, 8, 8, 3))
  ratio = (out[1] / 8, out[2] / 8)
  if ratio[0] != ratio[1] or ratio[0] != int(ratio[0]) or ratio[0] < 1:
    raise ArgumentError("model", model.name, f"does not upscale by an integer factor ({ratio})")
  return int(ratio[0])


def activation_bytes_per_pixel(model: keras.Model, scale: int) -> int:
  """Estimated peak float32 activation memory of one forward pass, per input (LR) pixel.

  A DBPN with T up-projection units keeps its T HR feature maps (64 channels, scale^2 pixels per
  LR pixel) alive together with their concatenation, read by the reconstruction (and by the last
  dense down-projection), while a projection unit adds up to four HR maps of its own: (2T + 4)
  maps of 64 * scale^2 floats.
  """
  units = sum(1 for layer in model.layers if _UP_PROJECTION.match(layer.name))
  if not units:
    raise ArgumentError(
      "model", model.name, "has no DBPN up-projection units; give bytes_per_pixel"
    )
  return 4 * 64 * scale * scale * (2 * units + 4)


# --- tiles ----------------------------------------------------------------------------------


def tile_spans(length: int, tile: int, overlap: int) -> Tuple[int, List[Tuple[int, int, int]]]:
  """Cuts one axis of `length` LR pixels into cores of at most `tile` pixels.

  Returns (window, [(window_start, core_start, core_end)]): every window has the same size and
  holds its core with at least `overlap` pixels of context on each side, except at the edges of
  the image (where the image itself ends).
  """
  if length <= tile + 2 * overlap:  # one window holds the whole axis
    return length, [(0, 0, length)]
  count = -(-length // tile)
  bounds = [i * length // count for i in range(count + 1)]
  largest = max(b - a for a, b in zip(bounds, bounds[1:]))
  window = largest + 2 * overlap
  spans = [(min(max(a - overlap, 0), length - window), a, b) for a, b in zip(bounds, bounds[1:])]
  return window, spans


def _dihedral(images: np.ndarray, index: int, inverse: bool = False) -> np.ndarray:
  """The `index`-th of the eight flips/transposes of NHWC images, or its inverse."""
  flip_w, flip_h, transpose = index & 1, index & 2, index & 4
  if inverse and transpose:
    images = images.transpose(0, 2, 1, 3)
  if flip_h:
    images = images[:, ::-1]
  if flip_w:
    images = images[:, :, ::-1]
  if not inverse and transpose:
    images = images.transpose(0, 2, 1, 3)
  return np.ascontiguousarray(images)


class Upscaler:
  """Upscales float32 RGB images in [0, 1] with a super-resolution Keras model.

  `tile`: largest tile side in LR pixels (0: whole images when they fit `memory_mb`, otherwise
  the largest tiles that do). `overlap`: LR pixels of context on each side of a tile, discarded
  when stitching; the default covers D-DBPN's effective receptive field at every scale
  (DBPN-RES-MR64-3 at x2 wants 24). `memory_mb`: activation memory one model call may use,
  estimated by `activation_bytes_per_pixel` unless `bytes_per_pixel` is given; equal-sized
  images or tiles are batched up to it.
  """

  def __init__(
    self,
    model: keras.Model,
    *,
    scale: Optional[int] = None,
    tile: int = 0,
    overlap: int = DEFAULT_OVERLAP,
    memory_mb: float = DEFAULT_MEMORY_MB,
    self_ensemble: bool = False,
    bytes_per_pixel: Optional[int] = None,
  ):
    if tile < 0:
      raise ArgumentError("tile", tile, "must be 0 (automatic) or a positive number of pixels")
    if overlap < 0:
      raise ArgumentError("overlap", overlap, "must not be negative")
    if memory_mb <= 0:
      raise ArgumentError("memory_mb", memory_mb, "must be positive")
    found = model_scale(model)
    if scale is not None and scale != found:
      raise ArgumentError("scale", scale, f"the model {model.name} upscales by {found}")
    self.model = model
    self.scale = found
    self.tile = tile
    self.overlap = overlap
    self.self_ensemble = self_ensemble
    self.budget = int(memory_mb * 2**20)
    self.bytes_per_pixel = bytes_per_pixel or activation_bytes_per_pixel(model, found)
    self.forward = tf.function(
      self._forward,
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
      reduce_retracing=True,
    )

  def _forward(self, images: tf.Tensor) -> tf.Tensor:
    return tf.cast(self.model(images, training=False), tf.float32)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """(H, W, 3) or (B, H, W, 3) in [0, 1] -> (.., scale * H, scale * W, 3) in [0, 1]."""
    images = np.asarray(images, np.float32)
    single = images.ndim == 3
    batch = images[None] if single else images
    if batch.ndim != 4 or batch.shape[-1] != 3 or 0 in batch.shape:
      raise ValueError(f"images must be (H, W, 3) or (B, H, W, 3) RGB, got {images.shape}")
    upscaled = np.clip(self._upscale(batch), 0.0, 1.0)
    return upscaled[0] if single else upscaled

  def tile_size(self, height: int, width: int) -> Optional[int]:
    """The tile side for an image of this size, or None to run it whole."""
    if self.tile:
      return self.tile if max(height, width) > self.tile else None
    if height * width * self.bytes_per_pixel <= self.budget:
      return None
    window = math.isqrt(self.budget // self.bytes_per_pixel)
    return max(MIN_TILE, window - 2 * self.overlap)

  def _upscale(self, batch: np.ndarray) -> np.ndarray:
    n, height, width, _ = batch.shape
    tile = self.tile_size(height, width)
    if tile is None:
      return self._run(batch)
    row_window, rows = tile_spans(height, tile, self.overlap)
    col_window, cols = tile_spans(width, tile, self.overlap)
    windows = np.concatenate(
      [batch[:, r : r + row_window, c : c + col_window] for r, _, _ in rows for c, _, _ in cols]
    )
    outputs = self._run(windows)
    s = self.scale
    stitched = np.empty((n, s * height, s * width, 3), np.float32)
    for i, ((r, top, bottom), (c, left, right)) in enumerate(
      (row, col) for row in rows for col in cols
    ):
      stitched[:, s * top : s * bottom, s * left : s * right] = outputs[
        i * n : (i + 1) * n, s * (top - r) : s * (bottom - r), s * (left - c) : s * (right - c)
      ]
    return stitched

  def _run(self, images: np.ndarray) -> np.ndarray:
    """Runs equal-sized images in as few calls as the memory budget allows."""
    per_image = images.shape[1] * images.shape[2] * self.bytes_per_pixel
    per_call = max(1, self.budget // per_image)
    return np.concatenate(
      [self._predict(images[i : i + per_call]) for i in range(0, len(images), per_call)]
    )

  def _predict(self, images: np.ndarray) -> np.ndarray:
    if not self.self_ensemble:
      return self.forward(images).numpy()
    total = 0.0
    for index in range(8):
      output = self.forward(_dihedral(images, index)).numpy()
      total = total + _dihedral(output, index, inverse=True)
    return total / 8.0


# --- folders --------------------------------------------------------------------------------


def _input_root(sources, paths: Sequence[str], data_dir: Optional[str]) -> str:
  """The folder whose layout the output keeps: the source folder, a glob's fixed part, a CSV's
  data folder, else the deepest folder holding every image."""
  candidate = None
  if isinstance(sources, (str, os.PathLike)):
    source = os.fspath(sources)
    if os.path.isdir(source):
      candidate = source
    elif any(c in source for c in GLOB_CHARACTERS) and not os.path.exists(source):
      fixed = re.split(r"[*?\[]", source, maxsplit=1)[0]
      candidate = os.path.dirname(fixed) or "."
    elif source.lower().endswith(".csv"):
      candidate = data_dir or os.path.dirname(source) or "."
  common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
  if candidate is None:
    return common
  candidate = os.path.abspath(candidate)
  inside = all(os.path.commonpath([candidate, os.path.abspath(p)]) == candidate for p in paths)
  return candidate if inside else common


def _upscaled_name(path: str, output_format: str) -> Tuple[str, bool]:
  """(file path of the upscaled image, whether it is a JPEG): JPEG names stay JPEG with
  format="same"; everything else becomes PNG, named .png."""
  stem, ext = os.path.splitext(path)
  if output_format == "same" and ext.lower() in JPEG_EXTENSIONS:
    return path, True
  return (path if ext.lower() == ".png" else stem + ".png"), False


class _Plan:
  """Where each input goes when kept and when upscaled; refuses two inputs sharing an output."""

  def __init__(self, paths, root, output_dir, in_place, output_format):
    self.kept: List[str] = []
    self.upscaled: List[Tuple[str, bool]] = []
    owners: Dict[str, str] = {}
    inputs = {os.path.realpath(p) for p in paths}
    for path in paths:
      target = path if in_place else os.path.join(output_dir, os.path.relpath(path, root))
      upscaled = _upscaled_name(target, output_format)
      self.kept.append(target)
      self.upscaled.append(upscaled)
      for name in {target, upscaled[0]}:
        real = os.path.realpath(name)
        if owners.setdefault(real, path) != path:
          raise ArgumentError(
            "sources", path, f"{owners[real]} and {path} would both be written to {name}"
          )
        if not in_place and real in inputs:
          raise ArgumentError(
            "output_dir", output_dir, f"{name} is an input; pass in_place=True to overwrite"
          )
        if in_place and name != path and os.path.exists(name) and real not in inputs:
          raise ArgumentError("sources", path, f"its upscaled {name} would overwrite a file")


def _write_atomically(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  partial = path + ".partial"
  with open(partial, "wb") as f:
    f.write(data)
  os.replace(partial, path)


def _to_uint8(images: np.ndarray) -> np.ndarray:
  return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


class _Progress:
  def __init__(self, total: int, every: int):
    self.total, self.every = total, every
    self.counts = collections.Counter()
    self.start = time.monotonic()
    self.logged = 0

  def add(self, action: str, count: int = 1) -> None:
    self.counts[action] += count
    done = sum(self.counts.values())
    if self.every and done // self.every > self.logged // self.every or done == self.total:
      self.logged = done
      logging.info(
        "upscale: %d of %d images (%d upscaled, %d kept, %d rejected), %.2f images/s",
        done,
        self.total,
        self.counts[UPSCALED],
        self.counts[KEPT],
        self.counts[REJECTED],
        done / max(self.seconds(), 1e-9),
      )

  def seconds(self) -> float:
    return time.monotonic() - self.start


def upscale_images(
  upscaler,
  sources,
  output_dir: str,
  *,
  data_dir: Optional[str] = None,
  max_area: int = GRABAI_MAX_AREA,
  in_place: bool = False,
  format: str = "same",
  batch_size: int = 8,
  jpeg_quality: int = 95,
  progress_every: int = 100,
) -> dict:
  """Upscales every image of `sources` whose width * height is below `max_area`.

  `upscaler`: an `Upscaler` or a Keras model (wrapped with the defaults). `sources`: a source for
  `tfpets.data.listing.list_images` (folder, glob, CSV with `data_dir`, file) or a list of paths.
  Images are decoded to RGB (any mode, EXIF orientation applied); equal-sized ones are upscaled
  in batches of up to `batch_size`. Outputs keep their path relative to the inputs' root folder
  under `output_dir`: upscaled images as JPEG (quality `jpeg_quality`) when their name is
  .jpg/.jpeg and `format="same"`, otherwise as lossless PNG named .png; images not upscaled are
  copied byte for byte, so `output_dir` holds the whole set. With `in_place=True` each upscaled
  image replaces its original (a name that changes to .png removes the original) and the others
  are left alone. Files that cannot be decoded are skipped into `rejects.csv`; `manifest.csv`
  has one row per input with what was done and why. Both are written to `output_dir`.

  Returns {"upscaled", "kept", "rejected": counts, "seconds", "scale", "files": {"manifest",
  "rejects"}}.
  """
  if format not in FORMATS:
    raise ArgumentError("format", format, f"must be one of {', '.join(FORMATS)}")
  if max_area <= 0:
    raise ArgumentError("max_area", max_area, "must be positive")
  if batch_size <= 0:
    raise ArgumentError("batch_size", batch_size, "must be positive")
  if not isinstance(upscaler, Upscaler):
    upscaler = Upscaler(upscaler)
  paths = [path for path, _ in as_listing(sources, data_dir)]
  root = _input_root(sources, paths, data_dir)
  plan = _Plan(paths, root, output_dir, in_place, format)
  os.makedirs(output_dir, exist_ok=True)
  logging.info("upscale: %d images from %s into %s", len(paths), root, output_dir)

  rows: List[Optional[dict]] = [None] * len(paths)
  rejects = RejectsReport()
  progress = _Progress(len(paths), progress_every)
  pending: Dict[Tuple[int, int], List[int]] = collections.OrderedDict()
  decoded: Dict[int, np.ndarray] = {}

  def flush(size: Tuple[int, int]) -> None:
    indices = pending.pop(size)
    batch = np.stack([decoded.pop(i) for i in indices]).astype(np.float32) / 255.0
    pixels = _to_uint8(upscaler(batch))
    for i, image in zip(indices, pixels):
      output_path, is_jpeg = plan.upscaled[i]
      data = encode_jpeg(image, jpeg_quality) if is_jpeg else encode_png(image)
      _write_atomically(output_path, data)
      if in_place and output_path != paths[i]:
        os.remove(paths[i])
      height, width = image.shape[:2]
      rows[i].update(output_path=output_path, output_width=width, output_height=height)
    progress.add(UPSCALED, len(indices))

  for i, path in enumerate(paths):
    try:
      pixels = read_image(path).pixels
    except ImageDecodeError as e:
      rejects.add(path, e.reason, SKIPPED)
      rows[i] = dict(path=path, output_path="", action=REJECTED, reason=e.reason)
      progress.add(REJECTED)
      continue
    height, width = pixels.shape[:2]
    area = width * height
    rows[i] = dict(path=path, width=width, height=height)
    if area >= max_area:
      if not in_place:
        os.makedirs(os.path.dirname(plan.kept[i]) or ".", exist_ok=True)
        shutil.copyfile(path, plan.kept[i])
      rows[i].update(
        output_path=plan.kept[i],
        action=KEPT,
        reason=f"area {area} >= {max_area}",
        output_width=width,
        output_height=height,
      )
      progress.add(KEPT)
      continue
    rows[i].update(action=UPSCALED, reason=f"area {area} < {max_area}")
    decoded[i] = pixels
    pending.setdefault((height, width), []).append(i)
    if len(pending[(height, width)]) >= batch_size:
      flush((height, width))
    elif len(decoded) >= 4 * batch_size:  # many sizes: bound what waits for a batch
      flush(max(pending, key=lambda size: len(pending[size])))
  while pending:
    flush(next(iter(pending)))

  files = {
    "manifest": _write_manifest(os.path.join(output_dir, "manifest.csv"), rows),
    "rejects": rejects.write_csv(os.path.join(output_dir, "rejects.csv")),
  }
  if rejects:
    logging.warning(
      "upscale: %d of %d images could not be decoded; see %s",
      len(rejects),
      len(paths),
      files["rejects"],
    )
  return {
    "upscaled": progress.counts[UPSCALED],
    "kept": progress.counts[KEPT],
    "rejected": progress.counts[REJECTED],
    "seconds": progress.seconds(),
    "scale": upscaler.scale,
    "files": files,
  }


def _write_manifest(path: str, rows: Sequence[dict]) -> str:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, MANIFEST_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
  return path


def load_upscaler(model_path, **options) -> Upscaler:
  """An `Upscaler` (keyword `options` as its constructor's) of the DBPN model at `model_path`: a
  `.keras` file or the workdir of --stage=convert_dbpn or --stage=superres_train."""
  return Upscaler(convert.load_dbpn(model_path), **options)
