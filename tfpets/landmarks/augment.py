"""Training frames for the two detector stages, sampled inside tf.data with TF ops.

Each example's augmentations (in the order of frederic's `cat_data_generator.py`, from
zylamarek/frederic: rotation with an expanded canvas, then a crop, then a horizontal flip) are
composed into one affine matrix, so the image is resampled once (`geometry.warp`) and landmarks and
boxes go through the very same matrix. Randomness is stateless, seeded per example, so a run is
reproducible.

Stage 1 (head box, and the landmarks as an auxiliary target) sees the whole (rotated) image
letterboxed, or with `crop_scale_balanced` frederic's scale-balancing crop; a fraction of frames are
background crops that miss the head, which teach the head-presence output. Stage 2 (landmarks)
sees the square ROI the detector would cut around the head box: the box grown by a margin between
`roi_margin` and `roi_first_margin` of its longer side per side, jittered.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import tensorflow as tf

from tfpets.data.records import FIVE_OF_NINE
from tfpets.landmarks import geometry

# Mirror images swap the left and right points. 9 points (Kaggle CAT order, records.py): the eyes,
# and the ears listed left to right along the head top (left ear outer base, tip, inner base; right
# ear inner base, tip, outer base), so a flip reverses points 3..8. 5 points: eyes and ear tips.
FLIP_PERMUTATION = {9: (1, 0, 2, 8, 7, 6, 5, 4, 3), 5: (1, 0, 2, 4, 3)}

# crop_scale_balanced (frederic's `cat_data_generator.py`): side = bb + v * 13 * bb, with
# v ~ Beta(1.05, 30) or 1 - Beta(1, 10000) at equal odds.
_BALANCED_SCALE = 13.0
_NEGATIVE_CANDIDATES = 8


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  flip_horizontal: bool = False
  rotate_n: float = 0.0  # rotation ~ U[-n, n] degrees
  crop_scale_balanced: bool = False  # stage 1 only
  head_negative_fraction: float = 0.0  # stage 1: frames without the head
  roi_margin: float = 0.1  # stage 2: margin per side, fraction of the longer box side
  roi_jitter: float = 0.1  # stage 2: each side's margin varies by U[-jitter, jitter]
  roi_first_margin: float = 0.0  # stage 2: widest margin (the first prediction pass's); 0: none


EVAL = AugmentOptions()


def flip_permutation(num_points: int) -> Tuple[int, ...]:
  if num_points not in FLIP_PERMUTATION:
    raise ValueError(f"no left/right convention for {num_points} landmarks (9 or 5)")
  return FLIP_PERMUTATION[num_points]


def select_points(
  landmarks: tf.Tensor, num_landmarks: tf.Tensor, num_points: int
) -> Tuple[tf.Tensor, tf.Tensor]:
  """(points [num_points, 2], usable) from a record's padded [9, 2] landmarks.

  9-point records give 5 points through FIVE_OF_NINE; 5-point records cannot give 9.
  """
  if num_points == 5:
    five = tf.where(num_landmarks == 9, tf.gather(landmarks, FIVE_OF_NINE), landmarks[:5])
    return five, (num_landmarks == 9) | (num_landmarks == 5)
  return landmarks[:num_points], num_landmarks == num_points


def head_box(box: tf.Tensor, has_box: tf.Tensor, points: tf.Tensor) -> tf.Tensor:
  """The annotated head box, or the landmarks' tight box when there is none."""
  return tf.where(has_box, box, geometry.box_from_points(points))


class _Draws:
  """Successive stateless random draws from one [2] seed."""

  def __init__(self, seed: tf.Tensor):
    self._seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 16)
    self._next = 0

  def _seed(self) -> tf.Tensor:
    seed = self._seeds[self._next]
    self._next += 1
    return seed

  def uniform(self, shape=(), low=0.0, high=1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, self._seed(), low, high)

  def beta(self, a: float, b: float) -> tf.Tensor:
    x = tf.random.stateless_gamma([], self._seed(), alpha=a)
    y = tf.random.stateless_gamma([], self._seed(), alpha=b)
    return x / (x + y)


def _rotate(draws: _Draws, options: AugmentOptions, width, height):
  if options.rotate_n <= 0:
    return geometry.identity(), tf.cast(width, tf.float32), tf.cast(height, tf.float32)
  angle = draws.uniform((), -options.rotate_n, options.rotate_n)
  return geometry.rotation_expand(angle, width, height)


def _flip(draws: _Draws, options: AugmentOptions) -> tf.Tensor:
  if not options.flip_horizontal:
    return tf.constant(False)
  return draws.uniform() < 0.5


def _pixel_extent(box: tf.Tensor) -> tf.Tensor:
  """Edge coordinates covered by the pixels of a centre-coordinate box."""
  return box + tf.constant([0.0, 0.0, 1.0, 1.0])


def _box_after(matrix, box, has_box, points) -> tf.Tensor:
  """Head box through matrix: exact via the points when the box came from them."""
  return tf.where(
    has_box,
    geometry.transform_box(matrix, box),
    geometry.box_from_points(geometry.transform_points(matrix, points)),
  )


def balanced_window(draws: _Draws, box, width, height) -> tf.Tensor:
  """frederic's crop_scale_balanced window (edge coordinates) around box in the canvas."""
  bx0, by0, bx1, by1 = tf.unstack(box)
  longer = tf.maximum(tf.maximum(bx1 - bx0, by1 - by0), 1.0)
  v = tf.where(draws.uniform() < 0.5, draws.beta(1.05, 30.0), 1.0 - draws.beta(1.0, 10000.0))
  side = longer + v * _BALANCED_SCALE * longer

  def start(lo_edge, hi_edge, extent):
    low = tf.maximum(0.0, hi_edge - side)
    high = tf.maximum(low, tf.maximum(0.0, lo_edge))
    begin = draws.uniform((), 0.0, 1.0) * (high - low) + low
    return begin, tf.minimum(begin + side, extent)

  x0, x1 = start(bx0, bx1, width)
  y0, y1 = start(by0, by1, height)
  return tf.stack([x0, y0, x1, y1])


def negative_window(draws: _Draws, box, width, height) -> Tuple[tf.Tensor, tf.Tensor]:
  """(window, found): a random square crop that misses the head box, when one fits."""
  bx0, by0, bx1, by1 = tf.unstack(box)
  shorter = tf.minimum(width, height)
  low = 0.25 * shorter
  side = draws.uniform([_NEGATIVE_CANDIDATES], 0.0, 1.0) * (shorter - low) + low
  x0 = draws.uniform([_NEGATIVE_CANDIDATES]) * (width - side)
  y0 = draws.uniform([_NEGATIVE_CANDIDATES]) * (height - side)
  # One pixel of clearance, so that bilinear sampling at the frame border cannot pick up the head.
  misses = (x0 >= bx1 + 1) | (x0 + side <= bx0 - 1) | (y0 >= by1 + 1) | (y0 + side <= by0 - 1)
  pick = tf.argmax(tf.cast(misses, tf.int32))
  window = tf.stack([x0[pick], y0[pick], x0[pick] + side[pick], y0[pick] + side[pick]])
  return window, tf.reduce_any(misses)


def jittered_roi(draws: _Draws, box, options: AugmentOptions) -> tf.Tensor:
  """Stage 2's training ROI: the box grown on each side by a margin ~ U[roi_margin,
  roi_first_margin] (one draw) +- roi_jitter (per side), squared about the centre.

  Unequal sides shift the head off centre, as a stage-1 error does; wide margins train the first,
  wide prediction pass, narrow ones the later passes.
  """
  longer = tf.reduce_max(box[2:] - box[:2])
  widest = max(options.roi_margin, options.roi_first_margin)
  base = (
    draws.uniform((), options.roi_margin, widest)
    if widest > options.roi_margin
    else (options.roi_margin)
  )
  margins = (base + draws.uniform([4], -options.roi_jitter, options.roi_jitter)) * longer
  grown = box + tf.concat([-margins[:2], margins[2:]], 0)
  return geometry.square_roi(grown, 0.0)


def _render(
  draws: _Draws,
  options: AugmentOptions,
  example: Dict[str, tf.Tensor],
  points,
  num_points: int,
  matrix,
  window,
  size: int,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(frame, head box, landmarks) through `matrix`, then `window` -> the frame, then a random flip
  (which swaps the left and right points)."""
  matrix = geometry.window_to_frame(window, size) @ matrix
  flip = _flip(draws, options)
  matrix = tf.where(flip, geometry.horizontal_flip(float(size)) @ matrix, matrix)
  frame = geometry.warp(example["image"][None], matrix[None], size)[0]
  box = _box_after(matrix, example["box"], example["has_box"], points)
  moved = geometry.transform_points(matrix, points)
  moved = tf.where(flip, tf.gather(moved, flip_permutation(num_points)), moved)
  return frame, box, moved


def bbox_frame(
  example: Dict[str, tf.Tensor],
  seed: tf.Tensor,
  size: int,
  num_points: int,
  options: AugmentOptions,
) -> Tuple[tf.Tensor, ...]:
  """Stage 1: (frame [size, size, 3] float32 0..255, head box [4] and landmarks [K, 2] in the
  frame, is_head [], has_points [])."""
  draws = _Draws(seed)
  points, has_points = select_points(example["landmarks"], example["num_landmarks"], num_points)
  shape = tf.shape(example["image"])
  matrix, width, height = _rotate(draws, options, shape[1], shape[0])
  box = _box_after(matrix, example["box"], example["has_box"], points)
  window = tf.stack([0.0, 0.0, width, height])
  if options.crop_scale_balanced:
    window = balanced_window(draws, _pixel_extent(box), width, height)
  is_head = tf.constant(True)
  if options.head_negative_fraction > 0:
    negative, found = negative_window(draws, _pixel_extent(box), width, height)
    use = found & (draws.uniform() < options.head_negative_fraction)
    window = tf.where(use, negative, window)
    is_head = ~use
  frame, box, moved = _render(draws, options, example, points, num_points, matrix, window, size)
  return frame, box, moved, tf.cast(is_head, tf.float32), tf.cast(has_points, tf.float32)


def landmarks_frame(
  example: Dict[str, tf.Tensor],
  seed: tf.Tensor,
  size: int,
  num_points: int,
  options: AugmentOptions,
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Stage 2: (frame [size, size, 3], landmarks [K, 2] and head box [4] in the frame)."""
  draws = _Draws(seed)
  points, _ = select_points(example["landmarks"], example["num_landmarks"], num_points)
  shape = tf.shape(example["image"])
  matrix, _, _ = _rotate(draws, options, shape[1], shape[0])
  box = _box_after(matrix, example["box"], example["has_box"], points)
  roi = jittered_roi(draws, box, options)
  frame, box, moved = _render(draws, options, example, points, num_points, matrix, roi, size)
  return frame, moved, box
