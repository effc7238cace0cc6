"""TensorBoard writing: scalar curves and image grids under the run's logs/ folder."""

from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np
import tensorflow as tf


def to_uint8(images) -> np.ndarray:
  """float [-1, 1] or [0, 255] / uint8 batch -> uint8 NHWC."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  images = images.astype(np.float32)
  if images.min() < 0:
    images = (images + 1.0) * 127.5
  elif images.max() <= 1.0:
    images = images * 255.0
  return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def make_grid(images, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles a batch [N, H, W, C] into one uint8 image, row-major."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y : y + h, x : x + w] = image
  return grid


class SummaryWriter:
  def __init__(self, logdir: str | os.PathLike):
    self._writer = tf.summary.create_file_writer(str(logdir))

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    with self._writer.as_default():
      for name, value in values.items():
        tf.summary.scalar(name, float(value), step=step)
    self._writer.flush()

  def images(self, name: str, images, step: int, max_outputs: int = 8) -> None:
    with self._writer.as_default():
      tf.summary.image(name, to_uint8(images)[:max_outputs], step=step, max_outputs=max_outputs)
    self._writer.flush()

  def grid(self, name: str, images, step: int, columns: int | None = None) -> np.ndarray:
    grid = make_grid(images, columns)
    self.images(name, grid[None], step, max_outputs=1)
    return grid

  def close(self) -> None:
    self._writer.close()
