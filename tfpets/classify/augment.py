"""Image augmentations for the classifiers: AutoAugment's ImageNet policy, random erasing, and the
factories that pick an augmentation or a batch mixing (MixUp / CutMix) by name.

Every layer takes float images in [0, 255], batched `[B, H, W, C]` (or one image `[H, W, C]`), draws
its random choices per image, and runs in graph mode inside `tf.data` (`ds.map(layer)`). A `seed`
fixes the random op seeds, so a freshly built dataset replays the same augmentations.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import tensorflow as tf

# AutoAugment's ImageNet policy (Cubuk et al. 2019, Table 9): 25 sub-policies of two
# (operation, probability, magnitude bin 0-9) each; the last five repeat earlier ones as published.
# Operations without a magnitude carry the nominal bins of DeepVoltaire's `ImageNetPolicy`.
IMAGENET_POLICY = (
  (("posterize", 0.4, 8), ("rotate", 0.6, 9)),
  (("solarize", 0.6, 5), ("autocontrast", 0.6, 5)),
  (("equalize", 0.8, 8), ("equalize", 0.6, 3)),
  (("posterize", 0.6, 7), ("posterize", 0.6, 6)),
  (("equalize", 0.4, 7), ("solarize", 0.2, 4)),
  (("equalize", 0.4, 4), ("rotate", 0.8, 8)),
  (("solarize", 0.6, 3), ("equalize", 0.6, 7)),
  (("posterize", 0.8, 5), ("equalize", 1.0, 2)),
  (("rotate", 0.2, 3), ("solarize", 0.6, 8)),
  (("equalize", 0.6, 8), ("posterize", 0.4, 6)),
  (("rotate", 0.8, 8), ("color", 0.4, 0)),
  (("rotate", 0.4, 9), ("equalize", 0.6, 2)),
  (("equalize", 0.0, 7), ("equalize", 0.8, 8)),
  (("invert", 0.6, 4), ("equalize", 1.0, 8)),
  (("color", 0.6, 4), ("contrast", 1.0, 8)),
  (("rotate", 0.8, 8), ("color", 1.0, 2)),
  (("color", 0.8, 8), ("solarize", 0.8, 7)),
  (("sharpness", 0.4, 7), ("invert", 0.6, 8)),
  (("shearX", 0.6, 5), ("equalize", 1.0, 9)),
  (("color", 0.4, 0), ("equalize", 0.6, 3)),
  (("equalize", 0.4, 7), ("solarize", 0.2, 4)),
  (("solarize", 0.6, 5), ("autocontrast", 0.6, 5)),
  (("invert", 0.6, 4), ("equalize", 1.0, 8)),
  (("color", 0.6, 4), ("contrast", 1.0, 8)),
  (("equalize", 0.8, 8), ("equalize", 0.6, 3)),
)

# Magnitude of each bin 0-9, as DeepVoltaire's `ImageNetPolicy` maps them. Signed operations
# (shear, translate, rotate, and the enhancements' 1 +/- m) draw the sign per application.
MAGNITUDES = {
  "shearX": np.linspace(0.0, 0.3, 10),
  "shearY": np.linspace(0.0, 0.3, 10),
  "translateX": np.linspace(0.0, 150 / 331, 10),  # fraction of the image width
  "translateY": np.linspace(0.0, 150 / 331, 10),
  "rotate": np.linspace(0.0, 30.0, 10),  # degrees
  "color": np.linspace(0.0, 0.9, 10),
  "posterize": np.round(np.linspace(8, 4, 10)).astype(np.int64),  # bits kept
  "solarize": np.linspace(256.0, 0.0, 10),  # threshold
  "contrast": np.linspace(0.0, 0.9, 10),
  "sharpness": np.linspace(0.0, 0.9, 10),
  "brightness": np.linspace(0.0, 0.9, 10),
  "autocontrast": np.zeros(10),
  "equalize": np.zeros(10),
  "invert": np.zeros(10),
}
FILL_VALUE = 128.0  # DeepVoltaire's fillcolor for the geometric operations

AUGMENTATIONS = ("none", "autoaugment", "randaugment", "erasing", "erasing_grabai")
BATCH_MIXINGS = ("none", "mixup", "cutmix")


# ---------------------------------------------------------------------------------------------
# AutoAugment operations. Each takes float32 [B, H, W, C] in [0, 255] and returns integer-valued
# float32, as the reference PIL operations return uint8 images.


class _KerasBlocks:
  """Keras core layers whose image transform is the PIL operation's; they are driven through
  `transform_images` with explicit parameters so that the policy, not the layer, draws them."""

  def __init__(self):
    kwargs = {"dtype": "float32"}
    self.solarization = keras.layers.Solarization(value_range=(0, 255), **kwargs)
    self.posterization = keras.layers.RandomPosterization(factor=(8, 8), **kwargs)
    self.auto_contrast = keras.layers.AutoContrast(value_range=(0, 255), **kwargs)
    self.invert = keras.layers.RandomInvert(value_range=(0, 255), **kwargs)
    self.color = keras.layers.RandomColorDegeneration(factor=(0.5, 0.5), **kwargs)
    self.sharpness = keras.layers.RandomSharpness(factor=(0.5, 0.5), **kwargs)


@functools.cache
def _keras_blocks() -> _KerasBlocks:
  # The layers own seed variables: create them eagerly even when first needed inside tf.data.
  with tf.init_scope():
    return _KerasBlocks()


def _per_image(values, images: tf.Tensor) -> tf.Tensor:
  """A scalar or [B] vector as float32 [B, 1, 1, 1]."""
  values = tf.cast(values, tf.float32)
  return tf.reshape(values * tf.ones([tf.shape(images)[0]]), [-1, 1, 1, 1])


def _blend(degenerate, images, factor):
  """PIL `Image.blend(degenerate, image, factor)` on uint8: clipped, then truncated."""
  return tf.floor(tf.clip_by_value(degenerate + factor * (images - degenerate), 0.0, 255.0))


def _pil_grayscale(images: tf.Tensor) -> tf.Tensor:
  """PIL's RGB -> "L" conversion (ITU-R 601-2 luma in 16-bit fixed point), [B, H, W, 1]."""
  rgb = tf.clip_by_value(tf.round(images), 0.0, 255.0)
  weighted = rgb[..., 0:1] * 19595.0 + rgb[..., 1:2] * 38470.0 + rgb[..., 2:3] * 7471.0
  return tf.floor((weighted + 32768.0) / 65536.0)


def _affine(images: tf.Tensor, transform: tf.Tensor, interpolation: str) -> tf.Tensor:
  """PIL's `Image.transform(..., AFFINE, ...)` with fill 128; `transform` [B, 8] maps output
  pixel indices to input pixel indices (PIL's centre-of-pixel coordinates already converted)."""
  out = keras.ops.image.affine_transform(
    images,
    transform,
    interpolation=interpolation,
    fill_mode="constant",
    fill_value=FILL_VALUE,
  )
  return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def _affine_rows(a0, a1, a2, b0, b1, b2):
  zeros = tf.zeros_like(a0)
  return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=-1)


def shear(images, amount, axis: str) -> tf.Tensor:
  """DeepVoltaire `shearX` / `shearY`: PIL affine (1, m, 0, 0, 1, 0) about the top-left corner.

  PIL resamples bicubically; TensorFlow's projective transform offers bilinear at most, so edges
  and fine texture differ by a few levels.
  """
  m = tf.reshape(_per_image(amount, images), [-1])
  one, zero = tf.ones_like(m), tf.zeros_like(m)
  # PIL samples at pixel centres: input x + 0.5 = (x + 0.5) + m (y + 0.5).
  if axis == "x":
    transform = _affine_rows(one, m, 0.5 * m, zero, one, zero)
  else:
    transform = _affine_rows(one, zero, zero, m, one, 0.5 * m)
  return _affine(images, transform, "bilinear")


def translate(images, fraction, axis: str) -> tf.Tensor:
  """DeepVoltaire `translateX` / `translateY`: shift by `fraction` of the size, nearest, fill 128."""
  shape = tf.shape(images)
  size = tf.cast(shape[2] if axis == "x" else shape[1], tf.float32)
  offset = tf.reshape(_per_image(fraction, images), [-1]) * size
  one, zero = tf.ones_like(offset), tf.zeros_like(offset)
  if axis == "x":
    transform = _affine_rows(one, zero, offset, zero, one, zero)
  else:
    transform = _affine_rows(one, zero, zero, zero, one, offset)
  return _affine(images, transform, "nearest")


def rotate(images, degrees) -> tf.Tensor:
  """PIL `Image.rotate(degrees)` (counter-clockwise for positive degrees) about the centre,
  nearest-neighbour, fill 128 (DeepVoltaire's `rotate_with_fill`).

  keras.layers.RandomRotation draws its own angles; here the policy supplies the angle.
  """
  angle = -tf.reshape(_per_image(degrees, images), [-1]) * (math.pi / 180.0)
  shape = tf.cast(tf.shape(images), tf.float32)
  # PIL rotates about (w/2, h/2) in continuous coordinates: (w-1)/2, (h-1)/2 in pixel indices.
  cx, cy = (shape[2] - 1.0) / 2.0, (shape[1] - 1.0) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  transform = _affine_rows(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
  return _affine(images, transform, "nearest")


def color(images, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Color(factor)`: blend with the greyscale image. Uses
  keras.layers.RandomColorDegeneration, whose degeneration amount is `1 - factor`."""
  blocks = _keras_blocks()
  out = blocks.color.transform_images(images, {"factor": 1.0 - _per_image(factor, images)})
  return tf.floor(out)


def contrast(images, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Contrast(factor)`: blend with the image's mean grey level (one value for
  all channels). keras.layers.RandomContrast blends with each channel's own mean instead."""
  mean = tf.reduce_mean(_pil_grayscale(images), axis=[1, 2, 3], keepdims=True)
  return _blend(tf.floor(mean + 0.5), images, _per_image(factor, images))


def brightness(images, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Brightness(factor)`: blend with black, i.e. scale. keras.layers.
  RandomBrightness adds an offset instead."""
  return _blend(0.0, images, _per_image(factor, images))


def sharpness(images, factor) -> tf.Tensor:
  """PIL `ImageEnhance.Sharpness(factor)`: blend with the 3x3 SMOOTH filter (centre 5, others 1,
  over 13). Uses keras.layers.RandomSharpness (same kernel; its factor is half PIL's) and keeps
  the one-pixel border unchanged, as PIL's filter leaves it (Keras zero-pads it)."""
  blocks = _keras_blocks()
  factor = tf.reshape(_per_image(factor, images), [-1])
  sharpened = blocks.sharpness.transform_images(images, {"factor": factor / 2.0})
  shape = tf.shape(images)
  interior = tf.pad(tf.ones([shape[1] - 2, shape[2] - 2]), [[1, 1], [1, 1]])
  interior = tf.cast(interior[None, :, :, None], tf.bool)
  return tf.floor(tf.where(interior, sharpened, images))


def posterize(images, bits) -> tf.Tensor:
  """PIL `ImageOps.posterize(bits)`, with keras.layers.RandomPosterization."""
  shift = tf.cast(8 - tf.reshape(_per_image(bits, images), [-1]), tf.uint8)
  return _keras_blocks().posterization.transform_images(images, {"shift_factor": shift})


def solarize(images, threshold) -> tf.Tensor:
  """PIL `ImageOps.solarize(threshold)`: invert values >= threshold, with keras.layers.
  Solarization (whose own threshold sampling is not used)."""
  transformation = {"thresholds": _per_image(threshold, images), "additions": 0.0}
  return _keras_blocks().solarization.transform_images(images, transformation)


def autocontrast(images) -> tf.Tensor:
  """PIL `ImageOps.autocontrast()`: stretch each channel to [0, 255], with keras.layers.
  AutoContrast, truncated as PIL's lookup table is (the small offset absorbs float32 rounding)."""
  stretched = _keras_blocks().auto_contrast.transform_images(images)
  return tf.clip_by_value(tf.floor(stretched + 1e-3), 0.0, 255.0)


def invert(images) -> tf.Tensor:
  """PIL `ImageOps.invert`, with keras.layers.RandomInvert."""
  apply = tf.ones([tf.shape(images)[0]], tf.bool)
  return _keras_blocks().invert.transform_images(images, {"apply_inversion": apply})


def equalize(images) -> tf.Tensor:
  """PIL `ImageOps.equalize`, per image and channel. keras.layers.Equalization differs: it builds
  one histogram over the whole batch and uses the textbook (cdf - cdf_min) / (n - cdf_min) map,
  while PIL uses step = (n - count of the last used level) // 255, lut[i] = (step // 2 +
  sum(h[:i])) // step, and leaves the channel alone when step is 0."""
  shape = tf.shape(images)
  batch, channels = shape[0], shape[3]
  levels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)
  # One bincount for every (image, channel): offset each pair's levels by 256 * pair index.
  pair = tf.range(batch)[:, None, None, None] * channels + tf.range(channels)
  histogram = tf.math.bincount(
    tf.reshape(levels + 256 * pair, [-1]),
    minlength=256 * batch * channels,
    maxlength=256 * batch * channels,
  )
  histogram = tf.reshape(histogram, [batch, channels, 256])
  total = tf.reduce_sum(histogram, axis=-1, keepdims=True)
  last_level = 255 - tf.argmax(tf.reverse(tf.cast(histogram > 0, tf.int32), [-1]), axis=-1)
  last_count = tf.gather(histogram, last_level[..., None], batch_dims=2)
  step = (total - last_count) // 255
  below = tf.cumsum(histogram, axis=-1, exclusive=True)
  lut = tf.minimum((step // 2 + below) // tf.maximum(step, 1), 255)
  lut = tf.where(step > 0, lut, tf.range(256))  # one level only, or too few pixels: identity
  # Look up level l of channel c at l * C + c in the [B, 256 * C] table.
  lut = tf.reshape(tf.transpose(lut, [0, 2, 1]), [batch, 256 * channels])
  mapped = tf.gather(
    lut, tf.reshape(levels * channels + tf.range(channels), [batch, -1]), batch_dims=1
  )
  return tf.cast(tf.reshape(mapped, shape), tf.float32)


def apply_operation(images, name: str, magnitude_bin: int, sign=1.0) -> tf.Tensor:
  """Applies the named AutoAugment operation at a magnitude bin (0-9) to [B, H, W, C] float32
  images in [0, 255]. `sign` (+1 or -1, scalar or per image) orients the signed operations."""
  if name not in MAGNITUDES:
    raise ValueError(f"operation must be one of {sorted(MAGNITUDES)}, got {name!r}")
  if not 0 <= magnitude_bin <= 9:
    raise ValueError(f"magnitude_bin must be in 0..9, got {magnitude_bin}")
  images = tf.cast(images, tf.float32)
  magnitude = float(MAGNITUDES[name][magnitude_bin])
  # In float64, then rounded once: PIL receives e.g. 1 - 0.6 as a Python float it rounds to C float.
  signed = tf.cast(sign, tf.float64) * magnitude
  if name in ("shearX", "shearY"):
    return shear(images, tf.cast(signed, tf.float32), name[-1].lower())
  if name in ("translateX", "translateY"):
    return translate(images, tf.cast(signed, tf.float32), name[-1].lower())
  if name == "rotate":
    return rotate(images, tf.cast(signed, tf.float32))
  enhancements = {"color": color, "contrast": contrast, "sharpness": sharpness}
  enhancements["brightness"] = brightness
  if name in enhancements:
    return enhancements[name](images, tf.cast(1.0 + signed, tf.float32))
  if name == "posterize":
    return posterize(images, magnitude)
  if name == "solarize":
    return solarize(images, magnitude)
  return {"autocontrast": autocontrast, "equalize": equalize, "invert": invert}[name](images)


def _as_batch(images):
  images = tf.convert_to_tensor(images)
  if images.shape.rank == 3:
    return images[None], False
  if images.shape.rank != 4:
    raise ValueError(f"images must be [H, W, C] or [B, H, W, C], got shape {images.shape}")
  return images, True


def _op_seed(seed: int | None, offset: int) -> int | None:
  return None if seed is None else seed * 1000 + offset


@keras.saving.register_keras_serializable(package="tfpets")
class AutoAugment(keras.layers.Layer):
  """AutoAugment with a learned policy, by default the ImageNet one (Cubuk et al., "AutoAugment:
  Learning Augmentation Policies from Data", CVPR 2019, Table 9).

  Per image, one sub-policy is chosen uniformly; its first operation is applied with its
  probability, then its second with its own. Magnitudes follow DeepVoltaire's `ImageNetPolicy`
  (the PIL implementation GrabAI trained with), see `MAGNITUDES`. Rotation takes a random sign,
  as the paper's released `augmentation_transforms.py` does (DeepVoltaire's active code rotates
  counter-clockwise only). Shear uses bilinear where PIL uses bicubic resampling.

  Args:
    policy: sub-policies as `((op, probability, bin), (op, probability, bin))` tuples.
    value_range: the range of the input images; operations run in [0, 255].
    seed: op seed of the random choices, or None.
  Call args: images `[B, H, W, C]` or `[H, W, C]` floats; `training=False` returns them unchanged.
  """

  def __init__(self, policy=IMAGENET_POLICY, value_range=(0, 255), seed=None, **kwargs):
    kwargs.setdefault("dtype", "float32")  # quantised PIL-like levels: keep out of float16
    super().__init__(**kwargs)
    self.policy = _check_policy(policy)
    self.value_range = tuple(float(v) for v in value_range)
    if self.value_range[1] <= self.value_range[0]:
      raise ValueError(f"value_range must be (low, high) with low < high, got {value_range}")
    self.seed = seed
    self._probabilities = np.array([[op[1] for op in sub] for sub in self.policy], np.float32)
    _keras_blocks()
    self.built = True

  def call(self, images, training=True):
    if not training:
      return images
    batch, batched = _as_batch(images)
    low, high = self.value_range
    batch = (tf.cast(batch, tf.float32) - low) * (255.0 / (high - low))
    indices, apply, signs = self.sample_choices(tf.shape(batch)[0])
    out = self.apply_policy(batch, indices, apply, signs)
    out = tf.cast(out * ((high - low) / 255.0) + low, self.compute_dtype)
    return out if batched else out[0]

  def sample_choices(self, batch_size):
    """Per image: the sub-policy index [B] int32, whether each of its two operations applies
    [B, 2] bool (with the sub-policy's probabilities), and their signs [B, 2] (+1 or -1)."""
    indices = tf.random.uniform(
      [batch_size], 0, len(self.policy), tf.int32, seed=_op_seed(self.seed, 1)
    )
    draws = tf.random.uniform([batch_size, 2], seed=_op_seed(self.seed, 2))
    apply = draws < tf.gather(self._probabilities, indices)
    signs = tf.random.uniform([batch_size, 2], seed=_op_seed(self.seed, 3))
    return indices, apply, tf.where(signs < 0.5, -1.0, 1.0)

  def apply_policy(self, images, indices, apply, signs) -> tf.Tensor:
    """Applies sub-policy `indices[i]` to image i: its operation k when `apply[i, k]`, oriented by
    `signs[i, k]`. Images in [0, 255]; only the chosen branch runs for each image."""
    images = tf.cast(images, tf.float32)
    apply = tf.convert_to_tensor(apply, tf.bool)
    signs = tf.cast(signs, tf.float32)
    branches = [functools.partial(_apply_sub_policy, sub_policy) for sub_policy in self.policy]

    def one_image(args):
      image, index, applied, sign = args
      return tf.switch_case(
        index, [functools.partial(b, image[None], applied, sign) for b in branches]
      )[0]

    return tf.map_fn(
      one_image,
      (images, tf.cast(indices, tf.int32), apply, signs),
      fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32),
    )

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update({"policy": self.policy, "value_range": self.value_range, "seed": self.seed})
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["policy"] = tuple(tuple(tuple(op) for op in sub) for sub in config["policy"])
    return cls(**config)


def _apply_sub_policy(sub_policy, image, applied, sign):
  for k, (name, _, magnitude_bin) in enumerate(sub_policy):
    image = tf.cond(
      applied[k],
      functools.partial(apply_operation, image, name, magnitude_bin, sign[k]),
      functools.partial(tf.identity, image),
    )
  return image


def _check_policy(policy):
  policy = tuple(tuple(tuple(op) for op in sub) for sub in policy)
  if not policy:
    raise ValueError("policy must hold at least one sub-policy")
  for sub in policy:
    for name, probability, magnitude_bin in sub:
      if name not in MAGNITUDES:
        raise ValueError(f"policy operation must be one of {sorted(MAGNITUDES)}, got {name!r}")
      if not 0.0 <= probability <= 1.0:
        raise ValueError(f"policy probability must be in [0, 1], got {probability}")
      if not 0 <= magnitude_bin <= 9:
        raise ValueError(f"policy magnitude bin must be in 0..9, got {magnitude_bin}")
  return policy


# ---------------------------------------------------------------------------------------------
# Random erasing.


@keras.saving.register_keras_serializable(package="tfpets")
class RandomErasing(keras.layers.Layer):
  """Random erasing (Zhong et al., "Random Erasing Data Augmentation", 2017, Algorithm 1).

  With probability `probability` an image gets one rectangle filled with random values: its area
  is `s * H * W` with s ~ U(scale), its aspect ratio r ~ U(ratio), its height `int(sqrt(s H W r))`
  and width `int(sqrt(s H W / r))`, its top-left corner uniform over the image; a draw that does
  not fit inside the image is redrawn, up to `max_attempts` times, after which the image is left
  unchanged. The fill is one value ~ U(fill_range) for the whole rectangle, or one per pixel and
  channel with `pixel_level=True`. Unlike keras.layers.RandomErasing, which draws the probability
  itself from U(0, factor) and each side independently, this follows the paper.

  Args:
    probability: chance that an image is erased (the paper's p).
    scale: (s_l, s_h), the range of the erased area as a fraction of the image.
    ratio: (r_1, r_2), the range of the aspect ratio height / width.
    fill_range: (v_l, v_h), the range of the fill values.
    pixel_level: fill each pixel and channel with its own value.
    max_attempts: draws per image before giving up.
    seed: op seed of the random draws, or None.
  """

  GRABAI = {"probability": 0.8, "scale": (0.02, 0.3), "pixel_level": True}

  def __init__(
    self,
    probability: float = 0.5,
    scale=(0.02, 0.4),
    ratio=(0.3, 1 / 0.3),
    fill_range=(0.0, 255.0),
    pixel_level: bool = False,
    max_attempts: int = 100,
    seed=None,
    **kwargs,
  ):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    if not 0.0 <= probability <= 1.0:
      raise ValueError(f"probability must be in [0, 1], got {probability}")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
      raise ValueError(f"scale must be (s_l, s_h) with 0 < s_l <= s_h <= 1, got {scale}")
    if not 0.0 < ratio[0] <= ratio[1]:
      raise ValueError(f"ratio must be (r_1, r_2) with 0 < r_1 <= r_2, got {ratio}")
    if fill_range[0] > fill_range[1]:
      raise ValueError(f"fill_range must be (v_l, v_h) with v_l <= v_h, got {fill_range}")
    if max_attempts < 1:
      raise ValueError(f"max_attempts must be positive, got {max_attempts}")
    self.probability = float(probability)
    self.scale = tuple(float(s) for s in scale)
    self.ratio = tuple(float(r) for r in ratio)
    self.fill_range = tuple(float(v) for v in fill_range)
    self.pixel_level = bool(pixel_level)
    self.max_attempts = int(max_attempts)
    self.seed = seed
    self.built = True

  @classmethod
  def grabai(cls, **kwargs) -> RandomErasing:
    """The GrabAI baseline's eraser: p 0.8, s_h 0.3, one value per pixel."""
    return cls(**{**cls.GRABAI, **kwargs})

  def sample_boxes(self, batch_size, height, width) -> dict[str, tf.Tensor]:
    """Draws one rectangle per image: int32 `top`, `left`, `height`, `width` [B] and bool
    `erase` [B] (false when the coin says so or no draw fitted)."""
    shape = [batch_size, self.max_attempts]
    h_img, w_img = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = tf.random.uniform(shape, *self.scale, seed=_op_seed(self.seed, 1)) * h_img * w_img
    aspect = tf.random.uniform(shape, *self.ratio, seed=_op_seed(self.seed, 2))
    box_h = tf.cast(tf.floor(tf.sqrt(area * aspect)), tf.int32)
    box_w = tf.cast(tf.floor(tf.sqrt(area / aspect)), tf.int32)
    top = tf.random.uniform(shape, 0, height, tf.int32, seed=_op_seed(self.seed, 3))
    left = tf.random.uniform(shape, 0, width, tf.int32, seed=_op_seed(self.seed, 4))
    fits = (top + box_h <= height) & (left + box_w <= width)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    pick = lambda values: tf.gather(values, first, batch_dims=1)
    coin = tf.random.uniform([batch_size], seed=_op_seed(self.seed, 5)) < self.probability
    return {
      "top": pick(top),
      "left": pick(left),
      "height": pick(box_h),
      "width": pick(box_w),
      "erase": coin & tf.reduce_any(fits, axis=1),
    }

  def call(self, images, training=True):
    if not training:
      return images
    batch, batched = _as_batch(images)
    batch = tf.cast(batch, self.compute_dtype)
    shape = tf.shape(batch)
    boxes = self.sample_boxes(shape[0], shape[1], shape[2])
    rows = tf.range(shape[1])[None, :]
    cols = tf.range(shape[2])[None, :]
    in_rows = (rows >= boxes["top"][:, None]) & (rows < (boxes["top"] + boxes["height"])[:, None])
    in_cols = (cols >= boxes["left"][:, None]) & (cols < (boxes["left"] + boxes["width"])[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & boxes["erase"][:, None, None]
    fill_shape = shape if self.pixel_level else [shape[0], 1, 1, 1]
    fill = tf.random.uniform(fill_shape, *self.fill_range, seed=_op_seed(self.seed, 6))
    out = tf.where(mask[..., None], tf.cast(fill, batch.dtype), batch)
    return out if batched else out[0]

  def compute_output_shape(self, input_shape):
    return input_shape

  def get_config(self):
    config = super().get_config()
    config.update(
      {
        "probability": self.probability,
        "scale": self.scale,
        "ratio": self.ratio,
        "fill_range": self.fill_range,
        "pixel_level": self.pixel_level,
        "max_attempts": self.max_attempts,
        "seed": self.seed,
      }
    )
    return config


# ---------------------------------------------------------------------------------------------
# Factories.


def augmentation(name: str, seed=None) -> keras.layers.Layer | None:
  """The per-image augmentation layer called `name` (one of `AUGMENTATIONS`), or None for
  "none". Layers take [0, 255] images and compute in float32 whatever the global dtype policy."""
  if name == "none":
    return None
  if name == "autoaugment":
    return AutoAugment(seed=seed)
  if name == "randaugment":
    return keras.layers.RandAugment(value_range=(0, 255), seed=seed, dtype="float32")
  if name == "erasing":
    return RandomErasing(seed=seed)
  if name == "erasing_grabai":
    return RandomErasing.grabai(seed=seed)
  raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")


def batch_mixing(name: str, seed=None):
  """A function `(images, one_hot_labels) -> (images, mixed_labels)` applying keras.layers.MixUp
  (alpha 0.2) or keras.layers.CutMix (factor 1.0) to a batch, or None for "none". The Keras
  layers take a dict `{"images", "labels"}` with one-hot (float) labels. They run in float32
  whatever the global dtype policy (MixUp fails on float16 inputs)."""
  if name == "none":
    return None
  if name == "mixup":
    layer = keras.layers.MixUp(alpha=0.2, seed=seed, dtype="float32")
  elif name == "cutmix":
    layer = keras.layers.CutMix(factor=1.0, seed=seed, dtype="float32")
  else:
    raise ValueError(f"batch mixing must be one of {', '.join(BATCH_MIXINGS)}, got {name!r}")

  def mix(images, one_hot_labels):
    mixed = layer({"images": images, "labels": tf.cast(one_hot_labels, tf.float32)}, training=True)
    return mixed["images"], mixed["labels"]

  return mix
