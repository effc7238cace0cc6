"""Hand-made detector stages with known behaviour, and images drawn for them.

Real Keras models (no weights) that measure what is drawn in their frame: the bbox stage returns the
box of the bright pixels, the landmarks stage the centroids of a red, a green and a blue blob. A
detector built from them must report, in original pixels, where the test drew the head and the
blobs, whatever letterbox and ROI crop happen in between.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tfpets.landmarks import model as model_lib


@keras.saving.register_keras_serializable(package="tfpets_tests")
class BrightBox(keras.layers.Layer):
  """(xmin, ymin, xmax, ymax) of pixel centres whose brightest channel exceeds 128."""

  def call(self, frames):
    mask = ops.cast(ops.max(frames, axis=-1) > 128.0, "float32")
    size = ops.shape(frames)[1]

    def extent(profile):
      first = ops.cast(ops.argmax(profile, axis=-1), "float32")
      last = ops.cast(size - 1, "float32") - ops.cast(
        ops.argmax(ops.flip(profile, axis=-1), axis=-1), "float32"
      )
      return first, last

    x0, x1 = extent(ops.max(mask, axis=1))
    y0, y1 = extent(ops.max(mask, axis=2))
    return ops.stack([x0, y0, x1, y1], axis=-1)


@keras.saving.register_keras_serializable(package="tfpets_tests")
class ColourCentroids(keras.layers.Layer):
  """Centroids of the red, green and blue blobs, repeated to `num_points` points."""

  def __init__(self, num_points: int, **kwargs):
    super().__init__(**kwargs)
    self.num_points = num_points

  def call(self, frames):
    size = ops.shape(frames)[1]
    coords = ops.cast(ops.arange(size), "float32")
    centroids = []
    for c in range(3):
      others = [o for o in range(3) if o != c]
      # Zero on white, black and the other colours; linear in the blob's opacity.
      weight = ops.relu(frames[..., c] - (frames[..., others[0]] + frames[..., others[1]]) / 2)
      total = ops.sum(weight, axis=(1, 2)) + 1e-6
      x = ops.sum(weight * coords[None, None, :], axis=(1, 2)) / total
      y = ops.sum(weight * coords[None, :, None], axis=(1, 2)) / total
      centroids.append(ops.stack([x, y], axis=-1))
    points = ops.stack(centroids, axis=1)
    return ops.concatenate([points] * (self.num_points // 3), axis=1)

  def get_config(self):
    return {**super().get_config(), "num_points": self.num_points}


@keras.saving.register_keras_serializable(package="tfpets_tests")
class Constant(keras.layers.Layer):
  def __init__(self, value: float, **kwargs):
    super().__init__(**kwargs)
    self.value = value

  def call(self, frames):
    return ops.ones((ops.shape(frames)[0], 1)) * self.value

  def get_config(self):
    return {**super().get_config(), "value": self.value}


def handmade_models(config: model_lib.DetectorConfig, head_logit: float = 10.0):
  """(bbox model, landmarks model) with the stage models' inputs and output names."""
  frames = keras.Input((config.image_size, config.image_size, 3))
  bbox = keras.Model(frames, {"box": BrightBox()(frames), "head": Constant(head_logit)(frames)})
  frames = keras.Input((config.roi_size, config.roi_size, 3))
  landmarks = keras.Model(
    frames, {"box": BrightBox()(frames), "landmarks": ColourCentroids(config.num_landmarks)(frames)}
  )
  return bbox, landmarks


def draw_head(
  height: int, width: int, head: tuple, blobs: np.ndarray, sigma: float = 2.0
) -> np.ndarray:
  """A black image with a white head square (x0, y0, x1, y1 inclusive pixel bounds) holding a red,
  a green and a blue Gaussian blob centred at blobs [3, 2]."""
  image = np.zeros((height, width, 3), np.float32)
  x0, y0, x1, y1 = head
  image[y0 : y1 + 1, x0 : x1 + 1] = 255.0
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  for c, (bx, by) in enumerate(blobs):
    alpha = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * sigma**2))
    colour = np.zeros(3, np.float32)
    colour[c] = 255.0
    image = image * (1 - alpha[..., None]) + colour * alpha[..., None]
  return np.clip(np.rint(image), 0, 255).astype(np.uint8)
