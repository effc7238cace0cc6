"""Adaptive discriminator augmentation (ADA): the augmentation pipeline and the p controller.

The pipeline follows `AugmentPipe` of NVlabs/stylegan2-ada-pytorch (`training/augment.py`) and
Karras et al., "Training Generative Adversarial Networks with Limited Data" (NeurIPS 2020), §2
and Appendix B, on NHWC images in about [-1, 1]. In the official order, each augmentation gated
independently per sample with probability `multiplier * p`:

- blit: xflip, rotate90, xint (integer translation);
- geom: scale, rotate (before and after aniso, each with p_rot = 1 - sqrt(1 - p) so that
  P(any rotation) = p), aniso, xfrac (fractional translation);
- color: brightness, contrast, lumaflip, hue, saturation (hue and saturation only for RGB);
- filter: imgfilter (4 frequency bands of a sym2 filter bank, amplified with power normalisation);
- noise: additive Gaussian noise; cutout.

The blit and geom transforms are composed into one inverse 3x3 matrix (output pixel -> input pixel)
and executed once: reflect padding, 2x upsampling with the sym6 wavelet, bilinear sampling with
zero fill at 2x resolution, sym6 filtering with 2x decimation. The colour transforms are composed
into one 4x4 matrix applied once. Every step is linear in the images with an exact gradient of any
order: the bilinear sampler is an explicit gather (its gradient a scatter-add, the true adjoint),
unlike `ImageProjectiveTransformV3`, whose registered gradient is not the adjoint.

API:
  AUGPIPES: preset name -> enabled augmentations ('bgc' is the default).
  AugmentPipe(augpipe='bgc', **overrides): overrides use the official knob names (`xflip=1`,
    `scale_std=0.3`, `imgfilter_bands=[1, 1, 0, 0]`, ...).
    pipe(images, p, seed): augmented images; `seed` is an int [2] tensor, the same seed giving the
      same draws with or without `jit_compile`.
    pipe.sample_params(shape, p, seed) and pipe.apply(images, params): the two halves of a call,
      so that the parameters can be fixed.
  geometric_matrix, color_matrix, warp, apply_color, imgfilter_gains, imgfilter, add_noise,
    cutout, bilinear_sample: the steps, with explicit per-sample parameters.
  adjust_p(p, sign_sum, count, batch_size, interval, target, ada_kimg): one step of the 'rt'
    controller (Karras et al. 2020, §3).
  AdaStats(): sums of sign(D(real)) and their count since the last adjustment, across replicas;
    create it under the strategy's scope.
    stats.update(real_logits): after every D evaluation of reals (the D main and R1 passes), in
      replica context (inside `strategy.run`) or without a strategy.
    stats.result() -> (sign_sum, count), summed over replicas, in cross-replica context (under
      MultiWorkerMirroredStrategy a collective: every worker must call it).
    stats.reset(); stats.read_and_reset() -> (sign_sum, count), then zero.
    Every `interval` steps: p.assign(adjust_p(p, *stats.read_and_reset(), global_batch_size)).

As in the official code, flips and quarter turns go through the same warp as the other geometric
transforms, so they are close to but not exactly pixel permutations (sym6 is not symmetric).

Numerical details that differ from the official code (results are otherwise the same):
- Random numbers come from a counter-based Threefry-2x32 generator (Salmon et al., "Parallel
  random numbers: as easy as 1, 2, 3", SC 2011) keyed by `seed`, with counters (sample, quantity),
  because TensorFlow's stateless random ops draw other numbers under XLA than without it. Uniforms have 24 bits in (0, 1);
  normals are their inverse normal CDF. The distributions are the official ones; the draws are not
  PyTorch's.
- p = 0 returns the images unchanged; the official pipe runs the identity warp (equal to within
  float rounding: the sym6 up/down pair reconstructs perfectly).
- The warp pads every image by the largest margin the official code can choose (W - 1, H - 1) so
  that shapes are static, and zeroes what lies outside the margin the official code computes from
  the transformed corners; the sampled values are the official ones.
- rotate90 uses exact cosines and sines of multiples of 90 degrees.
- imgfilter's reflect padding repeats the reflection for images smaller than the filter (the
  official code fails on them).
- `color_matrix` keeps the homogeneous row (0, 0, 0, 1); the official saturation step also scales
  that corner entry, which no result uses.
- `adjust_p` leaves p unchanged when no statistics were gathered (the official r_t would be NaN).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from tfpets.gan import rng
from tfpets.ops import setup_filter, upfirdn2d, upsample2d

# Nothing here branches on tensor values, so tf.function's autograph need not rewrite (and
# slowly trace) this code.
_not_converted = tf.autograph.experimental.do_not_convert

# Low-pass decomposition filters of the two wavelets the pipeline uses (PyWavelets' values).
SYM2 = (-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025)
SYM6 = (
  0.015404109327027373,
  0.0034907120842174702,
  -0.11799011114819057,
  -0.048311742585633,
  0.4910559419267466,
  0.787641141030194,
  0.3379294217276218,
  -0.07263752278646252,
  -0.021060292512300564,
  0.04472490177066578,
  0.0017677118642428036,
  -0.007800708325034148,
)
# Expected power spectrum of natural images over the 4 bands (1/f), normalised to sum 1.
EXPECTED_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)

BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
AUGPIPES: dict[str, tuple[str, ...]] = {
  "blit": BLIT,
  "geom": GEOM,
  "color": COLOR,
  "filter": ("imgfilter",),
  "noise": ("noise",),
  "cutout": ("cutout",),
  "bg": BLIT + GEOM,
  "bgc": BLIT + GEOM + COLOR,
  "bgcf": BLIT + GEOM + COLOR + ("imgfilter",),
  "bgcfn": BLIT + GEOM + COLOR + ("imgfilter", "noise"),
  "bgcfnc": BLIT + GEOM + COLOR + ("imgfilter", "noise", "cutout"),
}

# Every knob of the official AugmentPipe with its default: probability multipliers are 0 (off)
# unless the preset turns them on.
DEFAULTS: dict[str, Any] = {
  "xflip": 0.0,
  "rotate90": 0.0,
  "xint": 0.0,
  "xint_max": 0.125,
  "scale": 0.0,
  "rotate": 0.0,
  "aniso": 0.0,
  "xfrac": 0.0,
  "scale_std": 0.2,
  "rotate_max": 1.0,
  "aniso_std": 0.2,
  "xfrac_std": 0.125,
  "brightness": 0.0,
  "contrast": 0.0,
  "lumaflip": 0.0,
  "hue": 0.0,
  "saturation": 0.0,
  "brightness_std": 0.2,
  "contrast_std": 0.5,
  "hue_max": 1.0,
  "saturation_std": 1.0,
  "imgfilter": 0.0,
  "imgfilter_bands": (1.0, 1.0, 1.0, 1.0),
  "imgfilter_std": 1.0,
  "noise": 0.0,
  "cutout": 0.0,
  "noise_std": 0.1,
  "cutout_size": 0.5,
}

GEOM_PARAMS = ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac")
COLOR_PARAMS = ("brightness", "contrast", "lumaflip", "hue", "saturation")

# Per-sample draws: (name, how many). Each has its own columns of the random table, so enabling
# one augmentation leaves the others' draws unchanged.
_DRAWS = (
  ("xflip", 1),
  ("xflip_gate", 1),
  ("rotate90", 1),
  ("rotate90_gate", 1),
  ("xint", 2),
  ("xint_gate", 1),
  ("scale", 1),
  ("scale_gate", 1),
  ("rotate_pre", 1),
  ("rotate_pre_gate", 1),
  ("aniso", 1),
  ("aniso_gate", 1),
  ("rotate_post", 1),
  ("rotate_post_gate", 1),
  ("xfrac", 2),
  ("xfrac_gate", 1),
  ("brightness", 1),
  ("brightness_gate", 1),
  ("contrast", 1),
  ("contrast_gate", 1),
  ("lumaflip", 1),
  ("lumaflip_gate", 1),
  ("hue", 1),
  ("hue_gate", 1),
  ("saturation", 1),
  ("saturation_gate", 1),
  ("imgfilter", 4),
  ("imgfilter_gate", 4),
  ("noise_sigma", 1),
  ("noise_sigma_gate", 1),
  ("cutout_size_gate", 1),
  ("cutout_center", 2),
)
_COLUMNS = {
  name: (sum(size for _, size in _DRAWS[:i]), size) for i, (name, size) in enumerate(_DRAWS)
}
_TABLE_WIDTH = sum(size for _, size in _DRAWS)
_FIELD_STREAM = 0xFFFFFFFF  # Counter word of the noise field, beyond every table column.

# ---------------------------------------------------------------------------------------------
# Counter-based random numbers (identical with and without XLA).
# ---------------------------------------------------------------------------------------------


class _Random:
  """The draws of one call, from one Threefry evaluation: a [N, columns] table of uniforms
  (counter = (sample, column)) and, if `field_shape` is given, a standard normal noise field
  (counter = (index, _FIELD_STREAM), two values per evaluation)."""

  def __init__(self, seed: Any, batch: Any, field_shape: list[Any] | None = None):
    key = rng.seed_key(seed)
    sample = tf.cast(tf.range(batch), tf.uint32)[:, tf.newaxis]
    column = tf.cast(tf.range(_TABLE_WIDTH), tf.uint32)[tf.newaxis, :]
    words = [tf.reshape(sample + 0 * column, [-1]), tf.reshape(column + 0 * sample, [-1])]
    table_size = tf.size(words[0])
    if field_shape is not None:
      count = tf.reduce_prod(tf.cast(tf.stack(field_shape), tf.int32))
      index = tf.cast(tf.range((count + 1) // 2), tf.uint32)
      words = [tf.concat([words[0], index], 0), tf.concat([words[1], 0 * index + _FIELD_STREAM], 0)]
    x0, x1 = rng.threefry2x32(key, tuple(words))
    self.table = tf.reshape(rng.to_uniform(x0[:table_size]), [-1, _TABLE_WIDTH])
    if field_shape is not None:
      bits = tf.concat([x0[table_size:], x1[table_size:]], 0)[:count]
      self.field = tf.reshape(tf.math.ndtri(rng.to_uniform(bits)), tf.stack(field_shape))

  def uniform(self, name: str) -> tf.Tensor:
    """[N] (or [N, k] for a k-vector draw) uniforms in (0, 1)."""
    start, size = _COLUMNS[name]
    values = self.table[:, start : start + size]
    return values[:, 0] if size == 1 else values

  def normal(self, name: str) -> tf.Tensor:
    return tf.math.ndtri(self.uniform(name))


# ---------------------------------------------------------------------------------------------
# Transformation matrices (batched).
# ---------------------------------------------------------------------------------------------


# Small matrices are nested lists whose entries are Python floats or [N] tensors: products then
# cost only the elementwise operations their non-trivial entries need, which XLA fuses.
Entry = Any
Matrix = list[list[Entry]]


def _is_number(x: Entry, value: float | None = None) -> bool:
  return isinstance(x, (int, float)) and (value is None or x == value)


def _mul(a: Entry, b: Entry) -> Entry:
  if _is_number(a, 0) or _is_number(b, 0):
    return 0.0
  if _is_number(a, 1):
    return b
  if _is_number(b, 1):
    return a
  return a * b


def _add(a: Entry, b: Entry) -> Entry:
  if _is_number(a, 0):
    return b
  if _is_number(b, 0):
    return a
  return a + b


def _matmul(a: Matrix, b: Matrix) -> Matrix:
  rows, inner, cols = len(a), len(b), len(b[0])
  out = []
  for i in range(rows):
    row = []
    for j in range(cols):
      total: Entry = 0.0
      for k in range(inner):
        total = _add(total, _mul(a[i][k], b[k][j]))
      row.append(total)
    out.append(row)
  return out


def _eye(size: int) -> Matrix:
  return [[1.0 if i == j else 0.0 for j in range(size)] for i in range(size)]


def _stack(m: Matrix, like: tf.Tensor) -> tf.Tensor:
  """[N, rows, cols] with `like`'s batch size and dtype."""
  entries = [
    e if isinstance(e, tf.Tensor) else tf.fill(tf.shape(like), tf.cast(e, like.dtype))
    for row in m
    for e in row
  ]
  return tf.reshape(tf.stack(entries, axis=-1), [-1, len(m), len(m[0])])


def _translate2d(tx: Entry, ty: Entry) -> Matrix:
  return [[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]


def _scale2d(sx: Entry, sy: Entry) -> Matrix:
  return [[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]]


def _rotate2d(cos: Entry, sin: Entry) -> Matrix:
  return [[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]


def _quarter_turn(turns: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Exact cos and sin of turns * 90 degrees for integer-valued turns."""
  q = tf.math.floormod(tf.round(turns), 4)
  is_q = lambda k: tf.cast(tf.equal(q, k), turns.dtype)
  return is_q(0) - is_q(2), is_q(1) - is_q(3)


@_not_converted
def geometric_matrix(
  params: Mapping[str, tf.Tensor], width: int, height: int, dtype: tf.DType = tf.float32
) -> tf.Tensor:
  """The inverse 3x3 transform (output pixel -> input pixel, centred pixel units), [N, 3, 3].

  `params` holds realised per-sample parameters (identity values where a gate is off); missing
  keys are skipped. xflip, rotate90: [N] integers as floats (0/1, 0-3); xint: [N, 2] translation
  as a fraction of (W, H), rounded to whole pixels here; scale, aniso: [N] factors; rotate_pre,
  rotate_post: [N] angles (radians); xfrac: [N, 2] translation as a fraction of (W, H). Each
  step right-multiplies the inverse of its forward transform, in the official order.
  """
  present = [k for k in GEOM_PARAMS if k in params]
  if not present:
    raise ValueError(f"geometric_matrix: params has none of {GEOM_PARAMS}")
  p = {k: tf.cast(params[k], dtype) for k in present}
  g = _eye(3)
  if "xflip" in p:
    g = _matmul(g, _scale2d(1 - 2 * p["xflip"], 1.0))
  if "rotate90" in p:
    g = _matmul(g, _rotate2d(*_quarter_turn(p["rotate90"])))
  if "xint" in p:
    shift = -tf.round(p["xint"] * [width, height])
    g = _matmul(g, _translate2d(shift[:, 0], shift[:, 1]))
  if "scale" in p:
    g = _matmul(g, _scale2d(1 / p["scale"], 1 / p["scale"]))
  if "rotate_pre" in p:
    g = _matmul(g, _rotate2d(tf.cos(p["rotate_pre"]), tf.sin(p["rotate_pre"])))
  if "aniso" in p:
    g = _matmul(g, _scale2d(1 / p["aniso"], p["aniso"]))
  if "rotate_post" in p:
    g = _matmul(g, _rotate2d(tf.cos(p["rotate_post"]), tf.sin(p["rotate_post"])))
  if "xfrac" in p:
    shift = -p["xfrac"] * [width, height]
    g = _matmul(g, _translate2d(shift[:, 0], shift[:, 1]))
  like = p[present[0]]
  return _stack(g, like[:, 0] if like.shape.rank == 2 else like)


@_not_converted
def color_matrix(params: Mapping[str, tf.Tensor], dtype: tf.DType = tf.float32) -> tf.Tensor:
  """The 4x4 homogeneous colour transform (input RGB1 -> output), [N, 4, 4].

  brightness: [N] offset; contrast: [N] factor; lumaflip: [N] 0/1; hue: [N] angle about the luma
  axis; saturation: [N] factor. Missing keys are skipped. Each step left-multiplies, in the
  official order.
  """
  present = [k for k in COLOR_PARAMS if k in params]
  if not present:
    raise ValueError(f"color_matrix: params has none of {COLOR_PARAMS}")
  p = {k: tf.cast(params[k], dtype) for k in present}
  third = 1 / 3  # v v^T for the luma axis v = (1, 1, 1) / sqrt(3)
  c = _eye(4)
  if "brightness" in p:
    b = p["brightness"]
    c = _matmul([[1.0, 0.0, 0.0, b], [0.0, 1.0, 0.0, b], [0.0, 0.0, 1.0, b], _eye(4)[3]], c)
  if "contrast" in p:
    s = p["contrast"]
    c = _matmul([[s, 0.0, 0.0, 0.0], [0.0, s, 0.0, 0.0], [0.0, 0.0, s, 0.0], _eye(4)[3]], c)
  if "lumaflip" in p:  # Householder reflection I - 2 v v^T i.
    off = -2 * third * p["lumaflip"]
    c = _matmul(_rgb_block([[1 + off, off, off], [off, 1 + off, off], [off, off, 1 + off]]), c)
  if "hue" in p:
    c = _matmul(_rgb_block(_rotate_about_luma(p["hue"])), c)
  if "saturation" in p:  # v v^T + (I - v v^T) s.
    s = p["saturation"]
    diag, off = third + (1 - third) * s, third - third * s
    c = _matmul(_rgb_block([[diag, off, off], [off, diag, off], [off, off, diag]]), c)
  return _stack(c, p[present[0]])


def _rgb_block(m: Matrix) -> Matrix:
  return [m[0] + [0.0], m[1] + [0.0], m[2] + [0.0], [0.0, 0.0, 0.0, 1.0]]


def _rotate_about_luma(theta: tf.Tensor) -> Matrix:
  """Rotation by theta about v = (1, 1, 1) / sqrt(3) (Rodrigues: c I + s [v]x + (1 - c) v v^T)."""
  c, s = tf.cos(theta), tf.sin(theta)
  on = c + (1 - c) / 3
  k = s / math.sqrt(3)
  plus, minus = (1 - c) / 3 + k, (1 - c) / 3 - k
  return [[on, minus, plus], [plus, on, minus], [minus, plus, on]]


# ---------------------------------------------------------------------------------------------
# Executing the transforms.
# ---------------------------------------------------------------------------------------------


def reflect_indices(size: int, before: int, after: int) -> np.ndarray:
  """Source index of each sample of a reflect-padded axis (edge not repeated, any pad: wider
  pads repeat the reflection, as the periodic symmetric extension does)."""
  index = np.arange(-before, size + after)
  if size == 1:
    return np.zeros_like(index)
  period = 2 * (size - 1)
  index = np.mod(index, period)
  return np.where(index >= size, period - index, index)


def _reflect_pad(x: tf.Tensor, top: int, bottom: int, left: int, right: int) -> tf.Tensor:
  """Reflect padding of NHWC images as one gather of pixels.

  (A gather along an inner axis would be simpler, but its gradient of a gradient fails under XLA
  inside tf.cond.)
  """
  height, width, channels = x.shape[1], x.shape[2], x.shape[3]
  rows = reflect_indices(height, top, bottom)
  cols = reflect_indices(width, left, right)
  pixel = tf.constant((rows[:, None] * width + cols[None, :]).astype(np.int32))
  base = tf.range(tf.shape(x)[0]) * (height * width)
  flat = tf.reshape(x, [-1, channels])
  return tf.gather(flat, base[:, tf.newaxis, tf.newaxis] + pixel)


@_not_converted
def bilinear_sample(images: tf.Tensor, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
  """Bilinear interpolation of NHWC images at (x, y), zero outside.

  x, y: [N, Ho, Wo] sample positions in pixel indices (pixel (i, j) is at x = j, y = i). The
  result is [N, Ho, Wo, C]; as a gather with computed weights, its gradient with respect to the
  images is the exact adjoint (a scatter-add), differentiable again. Positions get no gradient.
  """
  x = tf.stop_gradient(tf.cast(x, images.dtype))
  y = tf.stop_gradient(tf.cast(y, images.dtype))
  shape = tf.shape(images)
  n, h, w, c = shape[0], images.shape[1], images.shape[2], images.shape[3]
  flat = tf.reshape(images, [-1, c])
  base = tf.reshape(tf.range(n) * (h * w), [-1, 1, 1])
  x0, y0 = tf.floor(x), tf.floor(y)
  fx, fy = x - x0, y - y0
  total = None
  for dx, dy, weight in (
    (0, 0, (1 - fx) * (1 - fy)),
    (1, 0, fx * (1 - fy)),
    (0, 1, (1 - fx) * fy),
    (1, 1, fx * fy),
  ):
    xi, yi = x0 + dx, y0 + dy
    inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    col = tf.cast(tf.clip_by_value(xi, 0, w - 1), tf.int32)
    row = tf.cast(tf.clip_by_value(yi, 0, h - 1), tf.int32)
    weight = tf.where(inside, weight, tf.zeros_like(weight))
    term = tf.gather(flat, base + row * w + col) * weight[..., tf.newaxis]
    total = term if total is None else total + term
  return total


def _hz_pad() -> int:
  return len(SYM6) // 4


@_not_converted
def warp_margin(g_inv: tf.Tensor, width: int, height: int) -> tf.Tensor:
  """The official reflect-padding margin (x0, y0, x1, y1), int32, over the whole batch.

  The bounding box of the transformed image corners plus 2 * Hz_pad, clipped to [0, W - 1] and
  [0, H - 1], rounded up.
  """
  dtype = g_inv.dtype
  cx, cy = (width - 1) / 2, (height - 1) / 2
  corner_x = tf.constant([-cx, cx, cx, -cx], dtype)
  corner_y = tf.constant([-cy, -cy, cy, cy], dtype)
  g = g_inv[:, :, :, tf.newaxis]
  x = g[:, 0, 0] * corner_x + g[:, 0, 1] * corner_y + g[:, 0, 2]  # [N, corner]
  y = g[:, 1, 0] * corner_x + g[:, 1, 1] * corner_y + g[:, 1, 2]
  extent = tf.stack([tf.reduce_max(v) for v in (-x, -y, x, y)])  # [x0, y0, x1, y1]
  pad = 2 * _hz_pad()
  margin = extent + tf.constant([pad - cx, pad - cy] * 2, dtype)
  margin = tf.clip_by_value(margin, 0, tf.constant([width - 1, height - 1] * 2, dtype))
  return tf.cast(tf.math.ceil(margin), tf.int32)


def _window(size: int, start: tf.Tensor, stop: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  index = tf.range(size)
  return tf.cast((index >= start) & (index < stop), dtype)


@_not_converted
def warp(images: tf.Tensor, g_inv: tf.Tensor) -> tf.Tensor:
  """Applies per-sample inverse transforms [N, 3, 3] to NHWC images, as the official pipe does.

  Reflect-pad by the margin of `warp_margin`, upsample 2x with sym6, sample bilinearly (zero fill)
  at 2x resolution, filter with sym6 and decimate 2x, crop. The padding is the largest possible
  margin with the part outside the official margin zeroed, before and after upsampling, which
  gives the official values with static shapes.
  """
  dtype = images.dtype
  g_inv = tf.cast(g_inv, dtype)
  height, width = images.shape[1], images.shape[2]
  hz_pad = _hz_pad()
  big_x, big_y = width - 1, height - 1
  mx0, my0, mx1, my1 = tf.unstack(warp_margin(g_inv, width, height))

  x = _reflect_pad(images, big_y, big_y, big_x, big_x)
  rows = _window(height + 2 * big_y, big_y - my0, big_y + height + my1, dtype)
  cols = _window(width + 2 * big_x, big_x - mx0, big_x + width + mx1, dtype)
  x = x * rows[:, tf.newaxis, tf.newaxis] * cols[:, tf.newaxis]

  x = upsample2d(x, SYM6, factor=2)
  rows = _window(2 * (height + 2 * big_y), 2 * (big_y - my0), 2 * (big_y + height + my1), dtype)
  cols = _window(2 * (width + 2 * big_x), 2 * (big_x - mx0), 2 * (big_x + width + mx1), dtype)
  x = x * rows[:, tf.newaxis, tf.newaxis] * cols[:, tf.newaxis]

  # Output samples at 2x resolution, Hz_pad pixels beyond each edge, in centred 1x units.
  ux = (tf.range(2 * (width + 2 * hz_pad), dtype=dtype) - (width + 2 * hz_pad - 1)) / 2
  uy = (tf.range(2 * (height + 2 * hz_pad), dtype=dtype) - (height + 2 * hz_pad - 1)) / 2
  ux, uy = ux[tf.newaxis, tf.newaxis, :], uy[tf.newaxis, :, tf.newaxis]
  g = g_inv[:, :, :, tf.newaxis, tf.newaxis]
  vx = g[:, 0, 0] * ux + g[:, 0, 1] * uy + g[:, 0, 2]
  vy = g[:, 1, 0] * ux + g[:, 1, 1] * uy + g[:, 1, 2]
  sample_x = 2 * (vx + (width - 1) / 2 + big_x)
  sample_y = 2 * (vy + (height - 1) / 2 + big_y)
  x = bilinear_sample(x, sample_x, sample_y)

  # downsample2d's pads ((taps - 1) // 2, (taps - 2) // 2) less the 2 * Hz_pad crop.
  crop = ((len(SYM6) - 1) // 2 - 2 * hz_pad, (len(SYM6) - 2) // 2 - 2 * hz_pad)
  return upfirdn2d(x, setup_filter(SYM6), down=2, pad=crop * 2, flip_filter=True)


@_not_converted
def apply_color(images: tf.Tensor, c: tf.Tensor) -> tf.Tensor:
  """Applies [N, 4, 4] colour matrices to RGB images, or their row mean to grayscale images."""
  c = tf.cast(c, images.dtype)
  channels = images.shape[-1]
  if channels == 3:
    out = tf.einsum("nhwj,nij->nhwi", images, c[:, :3, :3])
    return out + c[:, tf.newaxis, tf.newaxis, :3, 3]
  if channels == 1:
    mean = tf.reduce_mean(c[:, :3, :], axis=1)  # [N, 4]
    gain = tf.reduce_sum(mean[:, :3], axis=1)
    return images * gain[:, None, None, None] + mean[:, 3, None, None, None]
  raise ValueError(f"colour augmentation needs RGB (3) or grayscale (1) images, got {channels}")


def _dilate(taps: np.ndarray, factor: int) -> np.ndarray:
  """H(z) -> H(z^factor)."""
  out = np.zeros((taps.size - 1) * factor + 1)
  out[::factor] = taps
  return out


def filter_bank() -> np.ndarray:
  """The 4 band-pass filters [4, taps] of imgfilter, lowest band first; they sum to a unit pulse.

  With lo(z) = H(z)H(1/z)/2 and hi(z) = H(-z)H(-1/z)/2 for the sym2 filter H: band 3 = hi(z),
  band 2 = lo(z) hi(z^2), band 1 = lo(z) lo(z^2) hi(z^4), band 0 = lo(z) lo(z^2) lo(z^4), centred.
  """
  lo = np.asarray(SYM2)
  hi = lo * (-1.0) ** np.arange(lo.size)
  lo2 = np.convolve(lo, lo[::-1]) / 2
  hi2 = np.convolve(hi, hi[::-1]) / 2
  bands = [
    np.convolve(np.convolve(lo2, _dilate(lo2, 2)), _dilate(lo2, 4)),
    np.convolve(np.convolve(lo2, _dilate(lo2, 2)), _dilate(hi2, 4)),
    np.convolve(lo2, _dilate(hi2, 2)),
    hi2,
  ]
  taps = max(b.size for b in bands)
  return np.stack([np.pad(b, (taps - b.size) // 2) for b in bands])


@_not_converted
def imgfilter_gains(band_gains: tf.Tensor) -> tf.Tensor:
  """Per-band gains [N, 4] from the realised amplifications t_i [N, 4] (1 where a gate is off).

  Each band in turn is amplified by t_i and the gain vector renormalised to unit expected power.
  """
  power = tf.constant(EXPECTED_POWER, band_gains.dtype)
  g = tf.ones_like(band_gains)
  for i in range(len(EXPECTED_POWER)):
    t = tf.concat([tf.ones_like(band_gains[:, :i]), band_gains[:, i : i + 1]], 1)
    t = tf.concat([t, tf.ones_like(band_gains[:, i + 1 :])], 1)
    g = g * t / tf.sqrt(tf.reduce_sum(power * tf.square(t), axis=1, keepdims=True))
  return g


@_not_converted
def imgfilter(images: tf.Tensor, gains: tf.Tensor) -> tf.Tensor:
  """Filters each image with sum_b gains[n, b] * band_b, separably, with reflect padding."""
  bank = tf.constant(filter_bank(), images.dtype)
  taps = tf.cast(gains, images.dtype) @ bank  # [N, taps]
  size = bank.shape[1]
  half = size // 2
  height, width = images.shape[1], images.shape[2]
  x = _reflect_pad(images, half, half, half, half)
  rows = None
  for k in range(size):
    term = taps[:, k, None, None, None] * x[:, :, k : k + width, :]
    rows = term if rows is None else rows + term
  out = None
  for k in range(size):
    term = taps[:, k, None, None, None] * rows[:, k : k + height, :, :]
    out = term if out is None else out + term
  return out


@_not_converted
def add_noise(images: tf.Tensor, sigma: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
  """images + sigma[n] * noise (noise: standard normal, the images' shape)."""
  sigma = tf.cast(sigma, images.dtype)
  return images + tf.cast(noise, images.dtype) * sigma[:, None, None, None]


@_not_converted
def cutout(images: tf.Tensor, size: tf.Tensor, center: tf.Tensor) -> tf.Tensor:
  """Zeroes a size[n] * W x size[n] * H rectangle centred at center[n] (fractions of W, H)."""
  dtype = images.dtype
  height, width = images.shape[1], images.shape[2]
  size = tf.cast(size, dtype)[:, None, None, None]
  center = tf.cast(center, dtype)
  x = (tf.range(width, dtype=dtype)[None, None, :, None] + 0.5) / width
  y = (tf.range(height, dtype=dtype)[None, :, None, None] + 0.5) / height
  keep_x = tf.abs(x - center[:, 0, None, None, None]) >= size / 2
  keep_y = tf.abs(y - center[:, 1, None, None, None]) >= size / 2
  return images * tf.cast(keep_x | keep_y, dtype)


# ---------------------------------------------------------------------------------------------
# The pipeline.
# ---------------------------------------------------------------------------------------------


def _exp2(x: tf.Tensor) -> tf.Tensor:
  return tf.exp(x * math.log(2.0))


def _resolve_config(augpipe: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
  if augpipe not in AUGPIPES:
    raise ValueError(f"augpipe must be one of {', '.join(AUGPIPES)}, got {augpipe!r}")
  unknown = sorted(set(overrides) - set(DEFAULTS))
  if unknown:
    raise ValueError(
      f"unknown augmentation option(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}"
    )
  config = dict(DEFAULTS)
  config.update({name: 1.0 for name in AUGPIPES[augpipe]})
  config.update(overrides)
  bands = tuple(float(b) for b in config.pop("imgfilter_bands"))
  if len(bands) != len(EXPECTED_POWER):
    raise ValueError(f"imgfilter_bands must have {len(EXPECTED_POWER)} entries, got {bands}")
  config = {name: float(value) for name, value in config.items()}
  config["imgfilter_bands"] = bands
  negative = [n for n, v in config.items() if n != "imgfilter_bands" and v < 0]
  if negative:
    raise ValueError(f"augmentation option(s) {', '.join(negative)} must not be negative")
  return config


class AugmentPipe(tf.Module):
  """The ADA augmentation pipeline (official `AugmentPipe`), without variables.

  Args:
    augpipe: A preset of `AUGPIPES`.
    **overrides: Official knob names and values (probability multipliers such as `xflip`,
      distribution widths such as `scale_std`, `imgfilter_bands`).
  """

  def __init__(self, augpipe: str = "bgc", **overrides: Any):
    super().__init__(name="augment_pipe")
    self.augpipe = augpipe
    self.config = _resolve_config(augpipe, overrides)

  def _on(self, name: str) -> bool:
    return self.config[name] > 0

  @_not_converted
  def __call__(self, images: Any, p: Any, seed: Any) -> tf.Tensor:
    """Augments NHWC images with strength p (a scalar) and draws keyed by seed (int [2])."""
    images = tf.convert_to_tensor(images)
    self._check_images(images)
    static_p = float(p) if isinstance(p, (int, float, np.number)) else None
    p = tf.cast(p, tf.float32)

    def augment() -> tf.Tensor:
      return self.apply(images, self.sample_params(tf.shape(images), p, seed))

    if static_p is None and tf.executing_eagerly():
      static_p = float(p)
    if static_p is not None:
      return augment() if static_p > 0 else images
    return tf.cond(p > 0, augment, lambda: tf.identity(images))

  def _check_images(self, images: tf.Tensor) -> None:
    if images.shape.rank != 4 or None in images.shape[1:]:
      raise ValueError(f"images must be NHWC with static H, W, C, got shape {images.shape}")
    if not images.dtype.is_floating:
      raise TypeError(f"images must be floating point, got {images.dtype}")

  @_not_converted
  def sample_params(self, shape: Any, p: Any, seed: Any) -> dict[str, tf.Tensor]:
    """Draws the realised per-sample parameters for images of `shape` [N, H, W, C].

    Keys of the enabled augmentations: the inputs of `geometric_matrix`, `color_matrix`,
    'imgfilter' (band amplifications [N, 4], 1 where off), 'noise_sigma' [N], 'noise'
    [N, H, W, C], 'cutout_size' [N] (0 where off) and 'cutout_center' [N, 2].
    """
    cfg = self.config
    shape = tf.unstack(tf.cast(shape, tf.int32)) if isinstance(shape, tf.Tensor) else list(shape)
    p = tf.cast(p, tf.float32)
    rng = _Random(seed, shape[0], shape if self._on("noise") else None)
    uniform, normal = rng.uniform, rng.normal
    params: dict[str, tf.Tensor] = {}

    def gated(name: str, value: tf.Tensor, identity: float, prob: Any) -> None:
      gate = uniform(name + "_gate") < prob
      if value.shape.rank == 2:
        gate = gate[:, tf.newaxis]  # One gate for both axes.
      params[name] = tf.where(gate, value, tf.fill(tf.shape(value), identity))

    if self._on("xflip"):
      gated("xflip", tf.floor(uniform("xflip") * 2), 0.0, cfg["xflip"] * p)
    if self._on("rotate90"):
      gated("rotate90", tf.floor(uniform("rotate90") * 4), 0.0, cfg["rotate90"] * p)
    if self._on("xint"):
      gated("xint", (uniform("xint") * 2 - 1) * cfg["xint_max"], 0.0, cfg["xint"] * p)
    if self._on("scale"):
      gated("scale", _exp2(normal("scale") * cfg["scale_std"]), 1.0, cfg["scale"] * p)
    # P(pre or post rotation) = rotate * p.
    p_rot = 1 - tf.sqrt(tf.clip_by_value(1 - cfg["rotate"] * p, 0, 1))
    if self._on("rotate"):
      angle = (uniform("rotate_pre") * 2 - 1) * math.pi * cfg["rotate_max"]
      gated("rotate_pre", angle, 0.0, p_rot)
    if self._on("aniso"):
      gated("aniso", _exp2(normal("aniso") * cfg["aniso_std"]), 1.0, cfg["aniso"] * p)
    if self._on("rotate"):
      angle = (uniform("rotate_post") * 2 - 1) * math.pi * cfg["rotate_max"]
      gated("rotate_post", angle, 0.0, p_rot)
    if self._on("xfrac"):
      gated("xfrac", normal("xfrac") * cfg["xfrac_std"], 0.0, cfg["xfrac"] * p)

    if self._on("brightness"):
      value = normal("brightness") * cfg["brightness_std"]
      gated("brightness", value, 0.0, cfg["brightness"] * p)
    if self._on("contrast"):
      value = _exp2(normal("contrast") * cfg["contrast_std"])
      gated("contrast", value, 1.0, cfg["contrast"] * p)
    if self._on("lumaflip"):
      gated("lumaflip", tf.floor(uniform("lumaflip") * 2), 0.0, cfg["lumaflip"] * p)
    if self._on("hue"):
      angle = (uniform("hue") * 2 - 1) * math.pi * cfg["hue_max"]
      gated("hue", angle, 0.0, cfg["hue"] * p)
    if self._on("saturation"):
      value = _exp2(normal("saturation") * cfg["saturation_std"])
      gated("saturation", value, 1.0, cfg["saturation"] * p)

    if self._on("imgfilter"):
      amp = _exp2(normal("imgfilter") * cfg["imgfilter_std"])
      prob = cfg["imgfilter"] * p * tf.constant(cfg["imgfilter_bands"], tf.float32)
      params["imgfilter"] = tf.where(uniform("imgfilter_gate") < prob, amp, tf.ones_like(amp))

    if self._on("noise"):
      gated("noise_sigma", tf.abs(normal("noise_sigma")) * cfg["noise_std"], 0.0, cfg["noise"] * p)
      params["noise"] = rng.field
    if self._on("cutout"):
      size = tf.fill(tf.shape(uniform("cutout_size_gate")), cfg["cutout_size"])
      gated("cutout_size", size, 0.0, cfg["cutout"] * p)
      params["cutout_center"] = uniform("cutout_center")
    return params

  @_not_converted
  def apply(self, images: Any, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Applies realised parameters (from `sample_params`, or fixed) to NHWC images."""
    images = tf.convert_to_tensor(images)
    self._check_images(images)
    out_dtype = images.dtype
    dtype = tf.float64 if out_dtype == tf.float64 else tf.float32
    x = tf.cast(images, dtype)
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    if any(k in params for k in GEOM_PARAMS):
      x = warp(x, geometric_matrix(params, width, height, dtype))
    color = {k: v for k, v in params.items() if k in COLOR_PARAMS}
    if channels == 1:
      color = {k: v for k, v in color.items() if k not in ("hue", "saturation")}
    if color:
      x = apply_color(x, color_matrix(color, dtype))
    if "imgfilter" in params:
      x = imgfilter(x, imgfilter_gains(tf.cast(params["imgfilter"], dtype)))
    if "noise_sigma" in params:
      x = add_noise(x, params["noise_sigma"], params["noise"])
    if "cutout_size" in params:
      x = cutout(x, params["cutout_size"], params["cutout_center"])
    return tf.cast(x, out_dtype)


# ---------------------------------------------------------------------------------------------
# The adaptive controller.
# ---------------------------------------------------------------------------------------------


@_not_converted
def adjust_p(
  p: Any,
  sign_sum: Any,
  count: Any,
  batch_size: int,
  interval: int = 4,
  target: float = 0.6,
  ada_kimg: float = 500,
) -> tf.Tensor:
  """One step of the 'rt' heuristic: r_t = sign_sum / count, then
  p + sign(r_t - target) * batch_size * interval / (ada_kimg * 1000), floored at 0 (no upper
  clamp). Unchanged when count is 0.
  """
  p = tf.cast(p, tf.float32)
  sign_sum = tf.cast(sign_sum, tf.float32)
  count = tf.cast(count, tf.float32)
  r_t = sign_sum / tf.maximum(count, 1)
  step = batch_size * interval / (ada_kimg * 1000)
  moved = tf.maximum(p + tf.sign(r_t - target) * step, 0.0)
  return tf.where(count > 0, moved, p)


class AdaStats(tf.Module):
  """Sum of sign(D(real)) and its count since the last adjustment, summed over replicas.

  Create it under the strategy's scope. The variables are per replica (sync on read, SUM), so
  `update` costs no communication and `result` reduces once per adjustment.
  """

  def __init__(self, name: str = "ada_stats"):
    super().__init__(name=name)
    with self.name_scope:
      self.sign_sum = self._variable("sign_sum")
      self.count = self._variable("count")

  @staticmethod
  def _variable(name: str) -> tf.Variable:
    return tf.Variable(
      0.0,
      trainable=False,
      name=name,
      synchronization=tf.VariableSynchronization.ON_READ,
      aggregation=tf.VariableAggregation.SUM,
    )

  @_not_converted
  def update(self, real_logits: tf.Tensor) -> None:
    """Adds sign(real_logits) and their number (call once per D evaluation of reals)."""
    logits = tf.cast(real_logits, tf.float32)
    self.sign_sum.assign_add(tf.reduce_sum(tf.sign(logits)))
    self.count.assign_add(tf.cast(tf.size(logits), tf.float32))

  def result(self) -> tuple[tf.Tensor, tf.Tensor]:
    """(sign_sum, count) over all replicas."""
    return tf.convert_to_tensor(self.sign_sum), tf.convert_to_tensor(self.count)

  def reset(self) -> None:
    self.sign_sum.assign(0.0)
    self.count.assign(0.0)

  def read_and_reset(self) -> tuple[tf.Tensor, tf.Tensor]:
    sign_sum, count = self.result()
    sign_sum, count = tf.identity(sign_sum), tf.identity(count)
    with tf.control_dependencies([sign_sum, count]):
      self.reset()
    return sign_sum, count
