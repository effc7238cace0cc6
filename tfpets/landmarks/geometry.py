"""Affine geometry of the detector in TensorFlow ops, shared by augmentation, prediction, export.

Two coordinate conventions meet here:
  * edge coordinates: an image of width W spans [0, W]; pixel column j covers [j, j + 1]. Every
    matrix in this module maps edge coordinates of its input to edge coordinates of its output,
    which makes crops and resizes plain scale-and-shift maps.
  * centre coordinates: pixel column j is at x = j (OpenCV, the synthetic pets, the records).
    Points and boxes enter and leave in centre coordinates; `transform_points` converts.
Matrices are [..., 3, 3] acting on column vectors (x, y, 1), x to the right and y down; leading
dimensions broadcast, so the same functions serve one example inside tf.data and a batch at
prediction time.
"""

from __future__ import annotations

import math
from typing import Tuple

import tensorflow as tf

HALF_PIXEL = 0.5


def _f32(x) -> tf.Tensor:
  return tf.cast(x, tf.float32)


def affine(a, b, c, d, e, f) -> tf.Tensor:
  """The matrix [[a, b, c], [d, e, f], [0, 0, 1]] for broadcastable entries."""
  a, b, c, d, e, f = [_f32(v) for v in (a, b, c, d, e, f)]
  shape = tf.broadcast_dynamic_shape(tf.shape(a), tf.shape(b))
  for v in (c, d, e, f):
    shape = tf.broadcast_dynamic_shape(shape, tf.shape(v))
  a, b, c, d, e, f = [tf.broadcast_to(v, shape) for v in (a, b, c, d, e, f)]
  zero, one = tf.zeros(shape), tf.ones(shape)
  return tf.stack(
    [tf.stack([a, b, c], -1), tf.stack([d, e, f], -1), tf.stack([zero, zero, one], -1)], -2
  )


def identity() -> tf.Tensor:
  return tf.eye(3)


def translation(tx, ty) -> tf.Tensor:
  return affine(1.0, 0.0, tx, 0.0, 1.0, ty)


def scaling(sx, sy) -> tf.Tensor:
  return affine(sx, 0.0, 0.0, 0.0, sy, 0.0)


def rotation_expand(angle_degrees, width, height) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Counter-clockwise rotation about the image centre onto a canvas that holds all of it.

  As PIL's `rotate(angle, expand=True)`: positive angles turn the picture counter-clockwise on
  screen. Returns (matrix, canvas width, canvas height).
  """
  radians = _f32(angle_degrees) * (math.pi / 180.0)
  cos, sin = tf.cos(radians), tf.sin(radians)
  width, height = _f32(width), _f32(height)
  new_width = tf.abs(width * cos) + tf.abs(height * sin)
  new_height = tf.abs(width * sin) + tf.abs(height * cos)
  zero = tf.zeros_like(cos)
  # y points down, so a counter-clockwise turn on screen is x' = cos x + sin y, y' = -sin x + cos y.
  rotate = affine(cos, sin, zero, -sin, cos, zero)
  matrix = (
    translation(new_width / 2, new_height / 2) @ rotate @ translation(-width / 2, -height / 2)
  )
  return matrix, new_width, new_height


def window_to_frame(window, size) -> tf.Tensor:
  """Letterboxes window [..., 4] = (x0, y0, x1, y1) (edge coordinates) into a size x size frame.

  The longer side fills the frame; the shorter one is centred with black bars, as frederic's
  letterbox `resize` (zylamarek/frederic, `utils/image.py`) but without rounding the scale or the
  offsets.
  """
  window = _f32(window)
  x0, y0, x1, y1 = tf.unstack(window, axis=-1)
  size = _f32(size)
  scale = size / tf.maximum(tf.maximum(x1 - x0, y1 - y0), 1e-6)
  offset_x = (size - (x1 - x0) * scale) / 2
  offset_y = (size - (y1 - y0) * scale) / 2
  return affine(scale, 0.0, offset_x - x0 * scale, 0.0, scale, offset_y - y0 * scale)


def horizontal_flip(width) -> tf.Tensor:
  """x -> width - x in edge coordinates (column j -> width - 1 - j)."""
  return affine(-1.0, 0.0, width, 0.0, 1.0, 0.0)


def linear_scale(matrix) -> tf.Tensor:
  """The uniform scale of a similarity transform (sqrt |det|), [...]."""
  det = matrix[..., 0, 0] * matrix[..., 1, 1] - matrix[..., 0, 1] * matrix[..., 1, 0]
  return tf.sqrt(tf.abs(det))


def transform_points(matrix, points) -> tf.Tensor:
  """Maps points [..., K, 2] in centre coordinates through matrix [..., 3, 3]."""
  points = _f32(points) + HALF_PIXEL
  linear = matrix[..., :2, :2]
  shift = matrix[..., :2, 2]
  moved = tf.einsum("...ij,...kj->...ki", linear, points) + shift[..., None, :]
  return moved - HALF_PIXEL


def transform_box(matrix, box) -> tf.Tensor:
  """Maps a box [..., 4] = (xmin, ymin, xmax, ymax) through matrix, as the ellipse inscribed in it.

  For scale, shift and flip maps this is exactly the mapped box. Under rotation the corners of a
  box overshoot a round head, so the box of the rotated inscribed ellipse is used instead: exact
  for elliptical heads, an approximation for others (ears poking into a corner).
  """
  box = _f32(box)
  centre = (box[..., :2] + box[..., 2:]) / 2
  half = (box[..., 2:] - box[..., :2]) / 2
  new_centre = transform_points(matrix, centre[..., None, :])[..., 0, :]
  linear = matrix[..., :2, :2]
  a, b = half[..., 0], half[..., 1]
  half_x = tf.sqrt((linear[..., 0, 0] * a) ** 2 + (linear[..., 0, 1] * b) ** 2)
  half_y = tf.sqrt((linear[..., 1, 0] * a) ** 2 + (linear[..., 1, 1] * b) ** 2)
  new_half = tf.stack([half_x, half_y], -1)
  return tf.concat([new_centre - new_half, new_centre + new_half], -1)


def box_from_points(points) -> tf.Tensor:
  """Tight (xmin, ymin, xmax, ymax) [..., 4] of points [..., K, 2]."""
  return tf.concat([tf.reduce_min(points, -2), tf.reduce_max(points, -2)], -1)


def square_roi(box, margin) -> tf.Tensor:
  """The detector's ROI, as frederic's `postprocess_bounding_box` (`utils/image.py`) makes it: the
  box grown by `margin` x its longer side on every side, made square about its centre. Returns an
  edge-coordinate window [..., 4]."""
  box = _f32(box)
  centre = (box[..., :2] + box[..., 2:]) / 2 + HALF_PIXEL
  longer = tf.reduce_max(box[..., 2:] - box[..., :2], -1, keepdims=True)
  half = tf.maximum(longer * (0.5 + _f32(margin)), 1.0)
  return tf.concat([centre - half, centre + half], -1)


def warp(images, matrices, size, antialias: bool = True) -> tf.Tensor:
  """Renders images [N, H, W, C] through matrices [N, 3, 3] into [N, size, size, C] float32.

  Bilinear sampling with black outside the source. When every image of the batch shrinks, it is
  first resized with an antialiasing filter (by the mildest shrink of the batch) so that bilinear
  sampling does not alias.
  """
  images = _f32(images)
  matrices = _f32(matrices)
  if antialias:
    images, matrices = _prescale(images, matrices)
  # ImageProjectiveTransformV3 wants output -> input in centre coordinates.
  to_centre = translation(-HALF_PIXEL, -HALF_PIXEL)
  to_edge = translation(HALF_PIXEL, HALF_PIXEL)
  inverse = to_centre @ tf.linalg.inv(matrices) @ to_edge
  inverse = inverse / inverse[..., 2:3, 2:3]
  params = tf.reshape(inverse, [-1, 9])[:, :8]
  return tf.raw_ops.ImageProjectiveTransformV3(
    images=images,
    transforms=params,
    output_shape=tf.constant([size, size], tf.int32),
    fill_value=tf.constant(0.0),
    interpolation="BILINEAR",
    fill_mode="CONSTANT",
  )


def _prescale(images, matrices):
  shrink = tf.minimum(tf.reduce_max(linear_scale(matrices)), 1.0)
  shape = tf.shape(images)
  height, width = _f32(shape[1]), _f32(shape[2])
  new_height = tf.maximum(tf.cast(tf.round(height * shrink), tf.int32), 1)
  new_width = tf.maximum(tf.cast(tf.round(width * shrink), tf.int32), 1)

  def shrunk():
    resized = tf.image.resize(images, tf.stack([new_height, new_width]), antialias=True)
    # Resizing maps edge coordinates by exactly new/old per axis; undo that in the matrices.
    back = scaling(width / _f32(new_width), height / _f32(new_height))
    return resized, matrices @ back

  return tf.cond(shrink < 0.999, shrunk, lambda: (images, matrices))
