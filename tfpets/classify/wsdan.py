"""WS-DAN, weakly supervised data augmentation network ("See Better Before Looking Closer", Hu et
al., arXiv 1901.09891), as a Keras 3 model with its own train, test and refinement steps.

Two variants, chosen by `WSDANConfig.variant`:

- "paper": the official TF1/slim code (tau-yihouxiang/WS_DAN, `nets/inception_v3_bap.py`,
  `train_sample.py`, `eval_sample.py`). Inception-V3 features at Mixed_6e (Keras "mixed7", 768
  channels); the attention maps are the first M = 32 channels of the ImageNet-pretrained
  Mixed_7a/Branch_0/Conv2d_0a_1x1 (conv + BN + ReLU); bilinear attention pooling (BAP) with signed
  square root and L2 normalisation, logits on 100 x the embedding; a per-class centre loss on the
  L2-normalised centre; crop and drop maps drawn with p_k ~ sqrt(mean A_k); one optimiser step over
  CE(raw)/3 + CE(crop)/3 + CE(drop)/3 + centre loss; test-time refinement averages softmaxes.
- "cars": the EfficientNet-B3 variant of the Grab "AI for SEA" Stanford-Cars entry
  (sun-yitao/GrabAIChallenge, `ws-dan/train_wsdan.py`, `ws-dan/models/wsdan.py`). Features at
  "block6d_add" (232 channels) without drop-connect; a new linear 1x1 conv gives M = 64 maps; plain
  BAP; centres per class and part with an MSE loss; maps min-max normalised and thresholded at 0.5;
  three optimiser steps per batch (raw + centre, crop, drop); refinement averages logits.

Images are float RGB in [0, 255]; the backbone normalises them (`tfpets.classify.backbones`).
Batch normalisation stays in training mode for all three training passes, as in both sources.

Every random draw of a training step (crop and drop thresholds and parts) is a stateless function of
(`config.seed`, the optimiser's step, the sample's index in the global batch), so a step split over
replicas draws what one device draws for the same global batch; batch-norm statistics are
synchronised over replicas (`sync_batch_norm`) for the same reason.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tfpets.classify import backbones
from tfpets.errors import ArgumentError

VARIANTS = ("paper", "cars")

# Per-variant defaults, from the two sources named in the module docstring.
_DEFAULTS = {
  "paper": dict(
    backbone="inception_v3",
    feature_layer="mixed7",
    image_size=448,
    num_maps=32,
    centre_rate=0.05,
    crop_thresholds=(0.4, 0.6),
    drop_thresholds=(0.2, 0.5),
    crop_padding=0.1,
    refine_threshold=0.1,
    refine_padding=0.05,
  ),
  "cars": dict(
    backbone="efficientnet_b3",
    feature_layer="block6d_add",
    image_size=512,
    num_maps=64,
    centre_rate=1e-4,
    crop_thresholds=(0.5, 0.5),
    drop_thresholds=(0.5, 0.5),
    crop_padding=0.0,
    refine_threshold=0.5,
    refine_padding=0.0,
  ),
}

# Smallest inputs keras.applications accepts (`imagenet_utils.obtain_input_shape`).
_BACKBONE_MIN_SIZE = {"inception_v3": 75, "efficientnet_b3": 32}

# Channels of the attention source of the paper variant (Mixed_7a/Branch_0/Conv2d_0a_1x1).
_PAPER_ATTENTION_CHANNELS = 192

# Fill colour of dropped pixels and of crop boxes reaching outside the image, in [0, 255] input
# space. The paper multiplies [-1, 1] images by the mask, i.e. fills with 0 = grey 127.5; the cars
# variant multiplies ImageNet-normalised images, i.e. fills with the ImageNet mean colour.
_FILL_RGB = {
  "paper": (127.5, 127.5, 127.5),
  "cars": tuple(255.0 * m for m in backbones.IMAGENET_MEAN_RGB),
}

# BAP: added under the square root so its gradient stays finite at 0 (official code and GuYuc).
_SQRT_EPSILON = 1e-12
# The paper feeds 100 x the L2-normalised embedding to the classifier.
_PAPER_FEATURE_SCALE = 100.0
# Min-max normalisation of the cars maps: the published code divides by (max - min) alone, which is
# NaN for a constant map.
_MINMAX_EPSILON = 1e-6


@dataclasses.dataclass
class WSDANConfig:
  """WS-DAN settings; a 0 / None field takes the variant's published default.

  Thresholds are ranges (low, high) of a uniform draw per sample; the cars variant uses a fixed
  0.5, i.e. (0.5, 0.5). The paper thresholds are relative to each map's maximum; the cars
  thresholds apply to the min-max normalised map.
  """

  variant: str = "paper"
  num_classes: int = 37
  image_size: int = 0  # 0: 448 paper, 512 cars
  num_maps: int = 0  # 0: 32 paper, 64 cars
  backbone_weights: str = ""  # "", "imagenet" or a file path (tfpets.classify.backbones)
  centre_rate: float = 0.0  # 0: 0.05 paper, 1e-4 cars
  centre_weight: float = 1.0
  weight_decay: float = 1e-5  # coupled L2, wd/2 * sum(w^2) over kernels
  seed: int = 0
  crop_thresholds: tuple[float, float] | None = None  # paper (0.4, 0.6), cars (0.5, 0.5)
  drop_thresholds: tuple[float, float] | None = None  # paper (0.2, 0.5), cars (0.5, 0.5)
  crop_padding: float | None = None  # paper 0.1, cars 0
  refine_threshold: float | None = None  # paper 0.1, cars 0.5
  refine_padding: float | None = None  # paper 0.05, cars 0
  sync_batch_norm: bool = True  # replicas share batch statistics, as one device would

  def resolved(self) -> WSDANConfig:
    """A copy with every default filled in; raises ValueError on a bad field."""
    if self.variant not in VARIANTS:
      raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
    defaults = _DEFAULTS[self.variant]
    values = dataclasses.asdict(self)
    for key in ("image_size", "num_maps", "centre_rate"):
      if not values[key]:
        values[key] = defaults[key]
    for key in (
      "crop_thresholds",
      "drop_thresholds",
      "crop_padding",
      "refine_threshold",
      "refine_padding",
    ):
      if values[key] is None:
        values[key] = defaults[key]
    config = WSDANConfig(**values)
    config.crop_thresholds = tuple(float(t) for t in config.crop_thresholds)
    config.drop_thresholds = tuple(float(t) for t in config.drop_thresholds)
    config._check()
    return config

  def _check(self) -> None:
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
    if self.num_maps <= 0:
      raise ArgumentError("num_maps", self.num_maps, "must be positive")
    if self.variant == "paper" and self.num_maps > _PAPER_ATTENTION_CHANNELS:
      raise ArgumentError(
        "num_maps",
        self.num_maps,
        f"at most {_PAPER_ATTENTION_CHANNELS} for the paper variant (the channels of "
        "Mixed_7a/Branch_0/Conv2d_0a_1x1)",
      )
    if self.image_size < 2:
      raise ArgumentError("image_size", self.image_size, "must be at least 2")
    for name in ("crop_thresholds", "drop_thresholds"):
      low, high = getattr(self, name)
      if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"{name} must be (low, high) with 0 <= low <= high <= 1, got {low, high}")
    for name in ("centre_rate", "centre_weight", "weight_decay", "crop_padding", "refine_padding"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------
# Pure functions (one sample per row; usable inside tf.function and XLA).


def bilinear_attention_pooling(features, attentions, *, signed_sqrt_l2: bool):
  """BAP: phi[b, m, c] = sum_hw A[b, h, w, m] F[b, h, w, c] / (H W), in float32.

  With `signed_sqrt_l2` (the paper), phi -> sign(phi) sqrt(|phi| + 1e-12), then L2-normalised over
  the whole M x C matrix of each sample (official `nets/inception_v3_bap.py`).

  Args:
    features: [B, H, W, C]; attentions: [B, H, W, M] (any float dtype; cast to float32 first, since
      the 1e-12 under the square root underflows in float16).
  Returns:
    [B, M, C] float32.
  """
  features = tf.cast(features, tf.float32)
  attentions = tf.cast(attentions, tf.float32)
  shape = tf.shape(features)
  area = tf.cast(shape[1] * shape[2], tf.float32)
  phi = tf.einsum("bhwc,bhwm->bmc", features, attentions) / area
  if signed_sqrt_l2:
    phi = tf.sign(phi) * tf.sqrt(tf.abs(phi) + _SQRT_EPSILON)
    phi = tf.math.l2_normalize(phi, axis=[1, 2])
  return phi


def part_sampling_weights(attentions, variant: str, upsampled_size: int = 0):
  """Probabilities [B, M] of choosing each attention map [B, h, w, M] for crop or drop.

  paper: p_k proportional to sqrt(mean_hw A_k) (A >= 0 after the ReLU; uniform when every map is
  zero); with `upsampled_size`, the mean is that of the map resized to the input size, as the
  official `train_sample.py` computes it (exactly, from the resize weights, without resizing).
  cars: uniform.
  """
  _check_variant(variant)
  attentions = tf.cast(attentions, tf.float32)
  shape = tf.shape(attentions)
  uniform = tf.ones(tf.stack([shape[0], shape[3]])) / tf.cast(shape[3], tf.float32)
  if variant == "cars":
    return uniform
  if upsampled_size:
    rows, cols = _resize_weights(shape, upsampled_size, variant)
    row_mean = tf.reduce_mean(rows, axis=0)
    col_mean = tf.reduce_mean(cols, axis=0)
    means = tf.einsum("h,bhwm,w->bm", row_mean, attentions, col_mean)
  else:
    means = tf.reduce_mean(attentions, axis=[1, 2])
  weights = tf.sqrt(tf.maximum(means, 0.0))
  total = tf.reduce_sum(weights, axis=1, keepdims=True)
  return tf.where(total > 0, weights / tf.where(total > 0, total, 1.0), uniform)


def stateless_draws(seed, step, global_indices, num: int = 4):
  """[b, num] uniform [0, 1) draws; row i depends only on (seed, step, global_indices[i]).

  A key is drawn from (seed, step), and each sample's draws come from the stateless seed
  (key, global index), so they do not depend on how the global batch is split over replicas.
  """
  base = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
  key = tf.random.stateless_uniform([], seed=base, minval=None, maxval=None, dtype=tf.int64)

  def one(index):
    return tf.random.stateless_uniform([num], seed=tf.stack([key, index]), dtype=tf.float32)

  indices = tf.cast(global_indices, tf.int64)
  return tf.map_fn(one, indices, fn_output_signature=tf.TensorSpec([num], tf.float32))


def choose_parts(probabilities, uniforms):
  """Inverse-CDF categorical draw: for each row b, the first k with cumsum(p)[k] > u[b]."""
  cumulative = tf.cumsum(probabilities, axis=1)
  below = tf.cast(cumulative <= uniforms[:, None], tf.int32)
  return tf.minimum(tf.reduce_sum(below, axis=1), tf.shape(probabilities)[1] - 1)


def normalise_maps(maps):
  """Min-max normalises each sample's maps to [0, 1] over H, W (per map); a constant map -> 0."""
  maps = tf.cast(maps, tf.float32)
  low = tf.reduce_min(maps, axis=[1, 2], keepdims=True)
  high = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
  return (maps - low) / (high - low + _MINMAX_EPSILON)


def upsample_maps(maps, size: int, variant: str):
  """Bilinear resize of [B, h, w, K] maps to `size` x `size`, as each source does it.

  paper: TF1 `tf.image.resize_bilinear` (align_corners=False, half_pixel_centers=False: source
  coordinate = i h / size; official `train_sample.py`); cars: PyTorch `upsample_bilinear`
  (align_corners=True: source coordinate = i (h - 1) / (size - 1)).
  """
  maps = tf.cast(maps, tf.float32)
  rows, cols = _resize_weights(tf.shape(maps), size, variant)
  return tf.einsum("sh,bhwk,tw->bstk", rows, maps, cols)


def _resize_weights(shape, size: int, variant: str):
  """Row and column interpolation matrices [size, h], [size, w] of `upsample_maps`."""
  _check_variant(variant)
  height = tf.cast(shape[1], tf.float32)
  width = tf.cast(shape[2], tf.float32)
  steps = tf.range(size, dtype=tf.float32)[None, :]
  if variant == "paper":
    rows, cols = steps * height / size, steps * width / size
  else:
    denominator = float(max(size - 1, 1))
    rows, cols = steps * (height - 1) / denominator, steps * (width - 1) / denominator
  row_weights, _ = _interpolation_weights(rows, shape[1], clamp=True)
  col_weights, _ = _interpolation_weights(cols, shape[2], clamp=True)
  return row_weights[0], col_weights[0]


def _interpolation_weights(coordinates, length, clamp: bool):
  """Linear interpolation matrices [B, S, length] for source `coordinates` [B, S].

  Row s weighs floor(c) by 1 - frac(c) and ceil(c) by frac(c) (TF's bilinear kernels). With
  `clamp`, the upper neighbour is clamped to the last pixel (resize); without, a coordinate outside
  [0, length - 1] gets an all-zero row and `valid` False (crop_and_resize extrapolation).
  """
  last = tf.cast(length - 1, tf.float32)
  low = tf.floor(coordinates)
  frac = coordinates - low
  if clamp:
    high = tf.minimum(low + 1, last)
    valid = tf.ones_like(coordinates, tf.bool)
  else:
    high = tf.math.ceil(coordinates)
    valid = tf.logical_and(coordinates >= 0, coordinates <= last)
  low_index = tf.cast(tf.clip_by_value(low, 0, last), tf.int32)
  high_index = tf.cast(tf.clip_by_value(high, 0, last), tf.int32)
  weights = tf.one_hot(low_index, length) * (1 - frac)[..., None]
  weights += tf.one_hot(high_index, length) * frac[..., None]
  return weights * tf.cast(valid, tf.float32)[..., None], valid


def attention_boxes(maps_up, thresholds, padding, variant: str = "paper"):
  """Normalised crop boxes [B, 4] (y1, x1, y2, x2) for `tf.image.crop_and_resize`.

  Args:
    maps_up: [B, H, W] or [B, H, W, 1] maps at the input resolution.
    thresholds: [B] (or a scalar).
    padding: added on each side, in units of the image size; boxes are not clipped to [0, 1], so
      `crop_and_resize` fills the outside with its extrapolation value, as the official code does.
    variant: "paper": mask = A >= t * max(A); box = [rmin/H - p, cmin/W - p, rmax/H + p,
      cmax/W + p] (official `train_sample.py:attention_crop`, `eval_sample.py`). "cars": mask =
      A > t (A min-max normalised); the PyTorch slice [rmin:rmax) resized with align_corners is
      the box [rmin/(H-1), cmin/(W-1), (rmax-1)/(H-1), (cmax-1)/(W-1)], except that a one-row
      (one-column) mask keeps its row (where the published slice is empty).
  An empty mask (or a map whose maximum is <= 0, paper) gives the full image [0, 0, 1, 1].
  """
  maps, thresholds = _maps_and_thresholds(maps_up, thresholds, variant)
  if variant == "paper":
    peak = tf.reduce_max(maps, axis=[1, 2])
    mask = maps >= (thresholds * peak)[:, None, None]
    valid = peak > 0
  else:
    mask = maps > thresholds[:, None, None]
    valid = tf.ones_like(thresholds, tf.bool)
  rows = tf.reduce_any(mask, axis=2)
  cols = tf.reduce_any(mask, axis=1)
  valid = tf.logical_and(valid, tf.reduce_any(rows, axis=1))
  row_min, row_max = _first_last(rows)
  col_min, col_max = _first_last(cols)
  height = tf.cast(tf.shape(maps)[1], tf.float32)
  width = tf.cast(tf.shape(maps)[2], tf.float32)
  if variant == "paper":
    y1, y2 = row_min / height, row_max / height
    x1, x2 = col_min / width, col_max / width
  else:
    y1 = row_min / tf.maximum(height - 1, 1.0)
    y2 = tf.maximum(row_max - 1, row_min) / tf.maximum(height - 1, 1.0)
    x1 = col_min / tf.maximum(width - 1, 1.0)
    x2 = tf.maximum(col_max - 1, col_min) / tf.maximum(width - 1, 1.0)
  padding = tf.cast(padding, tf.float32)
  boxes = tf.stack([y1 - padding, x1 - padding, y2 + padding, x2 + padding], axis=1)
  full = tf.constant([[0.0, 0.0, 1.0, 1.0]])
  return tf.where(valid[:, None], boxes, full)


def drop_masks(maps_up, thresholds, variant: str = "paper"):
  """Keep-masks [B, H, W, 1] float32 (1 keeps a pixel, 0 drops it).

  paper: keep A < t * max(A) (official `train_sample.py:attention_drop`); a map whose maximum is
  <= 0 keeps everything. cars: keep A <= t on the min-max normalised map.
  """
  maps, thresholds = _maps_and_thresholds(maps_up, thresholds, variant)
  if variant == "paper":
    peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    keep = tf.logical_or(maps < thresholds[:, None, None] * peak, peak <= 0)
  else:
    keep = maps <= thresholds[:, None, None]
  return tf.cast(keep, tf.float32)[..., None]


def apply_drop(images, keep, variant: str):
  """Replaces dropped pixels by the variant's fill colour (see `_FILL_RGB`)."""
  fill = tf.constant(_FILL_RGB[variant], images.dtype)
  keep = tf.cast(keep, images.dtype)
  return images * keep + fill * (1 - keep)


def crop_images(images, boxes, size: int, variant: str):
  """Bilinear crop of each image to its box, resized to `size` x `size`.

  Same sampling as `tf.image.crop_and_resize` (box coordinate y maps to y (H - 1); samples outside
  the image take the variant's fill colour), written as two interpolation matmuls because
  CropAndResize has no XLA kernel.
  """
  images = tf.cast(images, tf.float32)
  boxes = tf.cast(boxes, tf.float32)
  shape = tf.shape(images)
  height = tf.cast(shape[1] - 1, tf.float32)
  width = tf.cast(shape[2] - 1, tf.float32)
  steps = tf.range(size, dtype=tf.float32)[None, :]
  scale = 1.0 / max(size - 1, 1)
  if size > 1:
    rows = boxes[:, :1] * height + steps * (boxes[:, 2:3] - boxes[:, :1]) * height * scale
    cols = boxes[:, 1:2] * width + steps * (boxes[:, 3:] - boxes[:, 1:2]) * width * scale
  else:
    rows = 0.5 * (boxes[:, :1] + boxes[:, 2:3]) * height
    cols = 0.5 * (boxes[:, 1:2] + boxes[:, 3:]) * width
  row_weights, row_valid = _interpolation_weights(rows, shape[1], clamp=False)
  col_weights, col_valid = _interpolation_weights(cols, shape[2], clamp=False)
  crops = tf.einsum("bsh,bhwc,btw->bstc", row_weights, images, col_weights)
  inside = tf.cast(row_valid[:, :, None] & col_valid[:, None, :], tf.float32)[..., None]
  fill = tf.constant(_FILL_RGB[variant], tf.float32)
  return crops + (1 - inside) * fill


def centre_loss_and_update(features, labels, centres, *, variant: str, rate: float):
  """Centre loss and the dense delta to add to the centres.

  paper: f = features flattened [B, M*C]; c_b = l2_normalize(centres[y]); loss = mean_b
  sum_j (f - c_b)^2; centres[y] -= rate * (c_b - f) (official
  `train_sample.py:calculate_pooling_center_loss`). cars: f = features [B, M, C]; c_b = centres[y];
  loss = mean over B*M*C of (f - c_b)^2; centres[y] += rate * (f - c_b) (GrabAI
  `train_wsdan.py`). Duplicate labels in a batch accumulate, as TF `scatter_sub` does.

  Returns:
    (loss, delta): delta has the shape of `centres`, computed with `unsorted_segment_sum`, so
    replicas' deltas add up to the delta of the whole batch.
  """
  _check_variant(variant)
  labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
  features = tf.cast(features, tf.float32)
  batch_centres = tf.gather(tf.convert_to_tensor(centres), labels)
  if variant == "paper":
    features = tf.reshape(features, [tf.shape(features)[0], -1])
    batch_centres = tf.math.l2_normalize(batch_centres, axis=-1)
    loss = tf.reduce_mean(tf.reduce_sum(tf.square(features - batch_centres), axis=-1))
  else:
    loss = tf.reduce_mean(tf.square(features - batch_centres))
  step = rate * (tf.stop_gradient(features) - batch_centres)
  delta = tf.math.unsorted_segment_sum(step, labels, tf.shape(centres)[0])
  return loss, delta


def combine_refined(raw_logits, crop_logits, variant: str):
  """Refined class probabilities: paper 0.5 softmax(raw) + 0.5 softmax(crop) (official
  `eval_sample.py`); cars softmax((raw + crop) / 2) (GrabAI `wsdan_predict.py`)."""
  _check_variant(variant)
  raw_logits = tf.cast(raw_logits, tf.float32)
  crop_logits = tf.cast(crop_logits, tf.float32)
  if variant == "paper":
    return 0.5 * tf.nn.softmax(raw_logits) + 0.5 * tf.nn.softmax(crop_logits)
  return tf.nn.softmax((raw_logits + crop_logits) / 2)


def _first_last(flags):
  """First and last True index along axis 1 of [B, N] booleans, as float32 (0 when none)."""
  flags = tf.cast(flags, tf.int32)
  size = tf.shape(flags)[1]
  first = tf.argmax(flags, axis=1, output_type=tf.int32)
  last = size - 1 - tf.argmax(tf.reverse(flags, axis=[1]), axis=1, output_type=tf.int32)
  return tf.cast(first, tf.float32), tf.cast(last, tf.float32)


def _maps_and_thresholds(maps_up, thresholds, variant: str) -> tuple:
  """Maps [B, H, W] float32 (from [B, H, W] or [B, H, W, 1]) and one threshold per map [B]."""
  _check_variant(variant)
  maps = tf.cast(maps_up, tf.float32)
  if maps.shape.rank == 4:
    maps = maps[..., 0]
  return maps, tf.broadcast_to(tf.cast(thresholds, tf.float32), tf.shape(maps)[:1])


def _check_variant(variant: str) -> None:
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


# ---------------------------------------------------------------------------------------------
# Feature extractors.


def _extractor(config: WSDANConfig) -> tuple[keras.Model, str]:
  """Functional model [0, 255] images -> (features F, attention source) and its weights note."""
  defaults = _DEFAULTS[config.variant]
  minimum = _BACKBONE_MIN_SIZE[defaults["backbone"]]
  if config.image_size < minimum:
    raise ArgumentError(
      "image_size",
      config.image_size,
      f"at least {minimum} for the {config.variant} variant's {defaults['backbone']} backbone",
    )
  shape = (config.image_size, config.image_size, 3)
  app, description = backbones.application(defaults["backbone"], shape, config.backbone_weights)
  features = app.get_layer(defaults["feature_layer"]).output
  if config.variant == "paper":
    outputs = [features, _mixed_7a_branch_0(app)]
  else:
    backbones.disable_drop_connect(app)
    outputs = features
  extractor = keras.Model(app.input, outputs, name=f"wsdan_{config.variant}_extractor")
  return extractor, description


def _mixed_7a_branch_0(app: keras.Model):
  """Output of slim's Mixed_7a/Branch_0/Conv2d_0a_1x1 in keras.applications.InceptionV3: the 71st
  `conv2d_bn` (the first 1x1 192-channel conv of the "mixed8" block).

  Keras lists that block's two parallel 1x1 convs in an arbitrary order, so the layer is found by
  walking back from mixed8's first input (branch3x3 = conv 3x3/2 of conv 1x1): activation <- BN <-
  conv 3x3 <- our activation.
  """
  producers = {id(layer.output): layer for layer in app.layers}

  def producer(tensor):
    if id(tensor) not in producers:
      raise ValueError("the Inception-V3 graph does not have the expected Mixed_7a/Branch_0 layer")
    return producers[id(tensor)]

  branch = producer(app.get_layer("mixed8").input[0])  # Activation of the 3x3/2 conv
  conv3x3 = producer(producer(branch.input).input)
  target = producer(conv3x3.input)
  conv1x1 = producer(producer(target.input).input)
  if (
    not isinstance(target, keras.layers.Activation)
    or not isinstance(conv1x1, keras.layers.Conv2D)
    or conv1x1.filters != _PAPER_ATTENTION_CHANNELS
    or tuple(conv1x1.kernel_size) != (1, 1)
    or conv1x1.input is not app.get_layer("mixed7").output
  ):
    raise ValueError("the Inception-V3 graph does not have the expected Mixed_7a/Branch_0 layer")
  return target.output


# ---------------------------------------------------------------------------------------------
# The model.


class WSDAN(keras.Model):
  """WS-DAN: `call(images, training)` gives float32 logits [B, num_classes] of the raw image.

  `fit` runs the variant's training step (three forward passes, crop and drop augmentation,
  centre loss and update) and logs "loss" (paper: the one objective; cars: the sum of its three
  step losses), the compiled metrics of the raw logits (e.g. "accuracy"), "centre_loss",
  "crop_accuracy" and "drop_accuracy"; `evaluate` logs the raw cross-entropy as "loss", the
  compiled metrics and "refined_accuracy". `refine(images)` gives the refined prediction and
  `attention_maps(images)` the maps. The centres are a non-trainable weight (`centres`), saved
  with the model's checkpoint. The cars variant makes three optimiser steps per batch, so
  `optimizer.iterations` (and a schedule keyed on it) advances by 3 per batch.
  """

  def __init__(self, config: WSDANConfig, extractor: keras.Model | None = None, **kwargs):
    """`extractor`: None builds the variant's published backbone; otherwise a model mapping
    [0, 255] images to the features F (cars) or to [F, attention source] (paper, a ReLU map with
    at least `num_maps` channels at F's resolution), e.g. another backbone or a tiny test model."""
    super().__init__(**kwargs)
    self.config = config = config.resolved()
    self.variant = config.variant
    if extractor is None:
      extractor, self.backbone_description = _extractor(config)
    else:
      self.backbone_description = f"custom extractor {extractor.name}"
    expected = 2 if self.variant == "paper" else 1
    if len(extractor.outputs) != expected:
      raise ValueError(
        f"the {self.variant} extractor must have {expected} output(s), got {len(extractor.outputs)}"
      )
    if self.variant == "paper" and extractor.outputs[1].shape[-1] < config.num_maps:
      raise ValueError(
        f"num_maps ({config.num_maps}) exceeds the attention source's "
        f"{extractor.outputs[1].shape[-1]} channels"
      )
    if config.sync_batch_norm:
      for layer in extractor.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
          layer.synchronized = True
    self.extractor = extractor
    feature_shape = self.extractor.outputs[0].shape
    self.num_features = int(feature_shape[-1])
    self.feature_size = (int(feature_shape[1]), int(feature_shape[2]))
    self.attention_conv = None
    if self.variant == "cars":
      # Linear maps, as in GrabAI `models/wsdan.py` (no BN, no ReLU, no bias).
      self.attention_conv = keras.layers.Conv2D(
        config.num_maps, 1, use_bias=False, name="attention_conv"
      )
      self.attention_conv.build(feature_shape)
    embedding = config.num_maps * self.num_features
    self.head = keras.layers.Dense(config.num_classes, dtype="float32", name="logits")
    self.head.build((None, embedding))
    centre_shape = (config.num_classes, embedding)
    if self.variant == "cars":
      centre_shape = (config.num_classes, config.num_maps, self.num_features)
    # "sum": each replica adds its batch's delta, giving the update of the whole global batch.
    self.centres = self.add_weight(
      shape=centre_shape,
      initializer="zeros",
      trainable=False,
      dtype="float32",
      autocast=False,
      aggregation="sum",
      name="centres",
    )
    # "accuracy" of the raw logits is always logged (the same figure as a compiled "accuracy").
    self.raw_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    self.centre_loss_tracker = keras.metrics.Mean(name="centre_loss")
    self.crop_accuracy = keras.metrics.SparseCategoricalAccuracy(name="crop_accuracy")
    self.drop_accuracy = keras.metrics.SparseCategoricalAccuracy(name="drop_accuracy")
    self.refined_accuracy = keras.metrics.SparseCategoricalAccuracy(name="refined_accuracy")
    self.built = True

  # Forward passes ----------------------------------------------------------------------------

  def _forward(self, images, training):
    """(logits [B, K] float32, BAP [B, M, C] float32, maps [B, h, w, M] float32)."""
    outputs = self.extractor(images, training=training)
    features = outputs[0] if self.variant == "paper" else outputs
    if self.variant == "paper":
      maps = outputs[1][..., : self.config.num_maps]
    else:
      maps = self.attention_conv(features)
    pooled = bilinear_attention_pooling(features, maps, signed_sqrt_l2=self.variant == "paper")
    flat = tf.reshape(pooled, [-1, self.config.num_maps * self.num_features])
    if self.variant == "paper":
      flat = _PAPER_FEATURE_SCALE * flat
    return self.head(flat), pooled, tf.cast(maps, tf.float32)

  def call(self, images, training=False):
    return self._forward(images, training)[0]

  def attention_maps(self, images):
    """[B, h, w, M] float32 attention maps (inference mode)."""
    return self._forward(images, False)[2]

  def refine(self, images):
    """Test-time refinement: crop to the mean attention map and combine with the raw prediction.

    Returns a dict of "raw_logits" [B, K], "crop_logits", "probabilities" (refined, by the
    variant's rule, see `combine_refined`) and "raw_probabilities".
    """
    raw_logits, _, maps = self._forward(images, False)
    crops = self.refinement_crops(images, maps)
    crop_logits = self(crops, training=False)
    return {
      "raw_logits": raw_logits,
      "crop_logits": crop_logits,
      "probabilities": combine_refined(raw_logits, crop_logits, self.variant),
      "raw_probabilities": tf.nn.softmax(raw_logits),
    }

  def refinement_boxes(self, maps):
    """Boxes [B, 4] of the mean attention map, as the variant's evaluation code draws them."""
    mean = tf.reduce_mean(maps, axis=-1, keepdims=True)
    if self.variant == "cars":
      mean = normalise_maps(mean)
    mean_up = upsample_maps(mean, self.config.image_size, self.variant)
    c = self.config
    return attention_boxes(mean_up, c.refine_threshold, c.refine_padding, self.variant)

  def refinement_crops(self, images, maps):
    boxes = self.refinement_boxes(maps)
    return crop_images(images, boxes, self.config.image_size, self.variant)

  # Training ----------------------------------------------------------------------------------

  def augmentation_draws(self, batch_size):
    """[b, 4] uniforms (crop threshold, drop threshold, crop part, drop part) of this replica's
    samples, keyed by (seed, optimiser step, global sample index)."""
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    replica = tf.cast(replica, tf.int32)
    indices = replica * batch_size + tf.range(batch_size)
    return stateless_draws(self.config.seed, self.optimizer.iterations, indices)

  def augment(self, images, maps, draws):
    """(crop images, drop images) of a batch from its attention maps and draws; no gradient."""
    c = self.config
    maps = tf.stop_gradient(tf.cast(maps, tf.float32))
    if self.variant == "cars":
      maps = normalise_maps(maps)
    weights = part_sampling_weights(maps, self.variant, c.image_size)
    crop_low, crop_high = c.crop_thresholds
    drop_low, drop_high = c.drop_thresholds
    crop_thresholds = crop_low + (crop_high - crop_low) * draws[:, 0]
    drop_thresholds = drop_low + (drop_high - drop_low) * draws[:, 1]
    crop_parts = choose_parts(weights, draws[:, 2])
    drop_parts = choose_parts(weights, draws[:, 3])
    crop_maps = tf.gather(maps, crop_parts, axis=3, batch_dims=1)[..., None]
    drop_maps = tf.gather(maps, drop_parts, axis=3, batch_dims=1)[..., None]
    crop_up = upsample_maps(crop_maps, c.image_size, self.variant)
    drop_up = upsample_maps(drop_maps, c.image_size, self.variant)
    boxes = attention_boxes(crop_up, crop_thresholds, c.crop_padding, self.variant)
    crops = crop_images(images, boxes, c.image_size, self.variant)
    drops = apply_drop(
      tf.cast(images, tf.float32), drop_masks(drop_up, drop_thresholds, self.variant), self.variant
    )
    return tf.stop_gradient(crops), tf.stop_gradient(drops)

  def weight_penalty(self):
    """Coupled L2 on the kernels: weight_decay / 2 * sum(w^2) (slim's `l2_regularizer`, PyTorch
    SGD `weight_decay`)."""
    kernels = [v for v in self.trainable_variables if len(v.shape) >= 2]
    if not kernels or not self.config.weight_decay:
      return tf.constant(0.0)
    total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v.value, tf.float32))) for v in kernels])
    return 0.5 * self.config.weight_decay * total

  def _scaled(self, loss):
    """`loss` (this replica's mean) as the optimiser differentiates it: divided by the replica
    count, so replicas' gradients sum to the global batch's, and loss-scaled under mixed precision.
    Must be computed inside the tape."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return self.optimizer.scale_loss(loss / replicas)

  def _optimise(self, tape, scaled_loss):
    variables = self.trainable_variables
    gradients = tape.gradient(scaled_loss, variables)
    self.optimizer.apply_gradients(zip(gradients, variables))

  def train_step(self, data):
    images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    draws = self.augmentation_draws(tf.shape(images)[0])
    step = self._paper_step if self.variant == "paper" else self._cars_step
    loss, raw_logits, centre_loss, crop_logits, drop_logits = step(images, labels, weights, draws)
    batch = tf.shape(images)[0]
    self._loss_tracker.update_state(loss, sample_weight=batch)
    self.centre_loss_tracker.update_state(centre_loss, sample_weight=batch)
    self.raw_accuracy.update_state(labels, raw_logits, weights)
    self.crop_accuracy.update_state(labels, crop_logits, weights)
    self.drop_accuracy.update_state(labels, drop_logits, weights)
    logs = self.compute_metrics(images, labels, raw_logits, weights)
    return {k: v for k, v in logs.items() if k != "refined_accuracy"}

  def _cross_entropy(self, labels, logits, weights=None):
    """Mean cross-entropy; sample weights scale each term (Keras' "sum_over_batch_size")."""
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32))
    if weights is not None:
      losses *= tf.reshape(tf.cast(weights, tf.float32), [-1])
    return tf.reduce_mean(losses)

  def _paper_step(self, images, labels, weights, draws):
    c = self.config
    with tf.GradientTape() as tape:
      raw_logits, pooled, maps = self._forward(images, True)
      crops, drops = self.augment(images, maps, draws)
      crop_logits = self(crops, training=True)
      drop_logits = self(drops, training=True)
      cross_entropy = (
        self._cross_entropy(labels, raw_logits, weights)
        + self._cross_entropy(labels, crop_logits, weights)
        + self._cross_entropy(labels, drop_logits, weights)
      ) / 3
      centre_loss, delta = centre_loss_and_update(
        pooled, labels, self.centres.value, variant="paper", rate=c.centre_rate
      )
      loss = cross_entropy + c.centre_weight * centre_loss + self.weight_penalty()
      scaled = self._scaled(loss)
    self._optimise(tape, scaled)
    self.centres.value.assign_add(delta)
    return loss, raw_logits, centre_loss, crop_logits, drop_logits

  def _cars_step(self, images, labels, weights, draws):
    c = self.config
    with tf.GradientTape() as tape:
      raw_logits, pooled, maps = self._forward(images, True)
      centre_loss, delta = centre_loss_and_update(
        pooled, labels, self.centres.value, variant="cars", rate=c.centre_rate
      )
      raw_loss = (
        self._cross_entropy(labels, raw_logits, weights)
        + c.centre_weight * centre_loss
        + self.weight_penalty()
      )
      scaled = self._scaled(raw_loss)
    self._optimise(tape, scaled)
    self.centres.value.assign_add(delta)
    crops, drops = self.augment(images, maps, draws)
    with tf.GradientTape() as tape:
      crop_logits = self(crops, training=True)
      crop_loss = self._cross_entropy(labels, crop_logits, weights) + self.weight_penalty()
      scaled = self._scaled(crop_loss)
    self._optimise(tape, scaled)
    with tf.GradientTape() as tape:
      drop_logits = self(drops, training=True)
      drop_loss = self._cross_entropy(labels, drop_logits, weights) + self.weight_penalty()
      scaled = self._scaled(drop_loss)
    self._optimise(tape, scaled)
    return raw_loss + crop_loss + drop_loss, raw_logits, centre_loss, crop_logits, drop_logits

  def test_step(self, data):
    images, labels, weights = keras.utils.unpack_x_y_sample_weight(data)
    labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    outputs = self.refine(images)
    raw_logits = outputs["raw_logits"]
    loss = self._cross_entropy(labels, raw_logits, weights)
    self._loss_tracker.update_state(loss, sample_weight=tf.shape(images)[0])
    self.raw_accuracy.update_state(labels, raw_logits, weights)
    self.refined_accuracy.update_state(labels, outputs["probabilities"], weights)
    logs = self.compute_metrics(images, labels, raw_logits, weights)
    training_only = ("centre_loss", "crop_accuracy", "drop_accuracy")
    return {k: v for k, v in logs.items() if k not in training_only}


def build_wsdan(config: WSDANConfig, extractor: keras.Model | None = None) -> WSDAN:
  """A WS-DAN model (build it inside `strategy.scope()` for distributed training); `extractor`
  replaces the variant's backbone (see `WSDAN`)."""
  return WSDAN(config, extractor=extractor, name=f"wsdan_{config.variant}")


def build_backbone_classifier(config: WSDANConfig) -> keras.Model:
  """The WS-DAN backbone without attention, the ablation WS-DAN is measured against: the same
  features F averaged over positions and one float32 linear layer, trained with cross-entropy."""
  config = config.resolved()
  extractor, description = _extractor(config)
  features = extractor.outputs[0]
  pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
  logits = keras.layers.Dense(config.num_classes, dtype="float32", name="logits")(pooled)
  model = keras.Model(extractor.inputs, logits, name=f"wsdan_{config.variant}_backbone")
  model.backbone_description = description
  return model


def parameter_count(variant: str, num_classes: int, num_maps: int = 0) -> dict:
  """Values per layer group of a WS-DAN (weights are independent of the image size).

  Keys: "backbone" (the Keras application up to the feature layer, BN statistics included),
  "attention" (paper: Mixed_7a/Branch_0 1x1 conv 768 -> 192 without bias + its scale-free BN, 3 x
  192; cars: the 1x1 conv 232 -> M), "head" (M C K + K), "centres" (K M C, non-trainable) and
  "total".
  """
  _check_variant(variant)
  defaults = _DEFAULTS[variant]
  num_maps = num_maps or defaults["num_maps"]
  size = 75 if variant == "paper" else 32
  app, _ = backbones.application(defaults["backbone"], (size, size, 3))
  features = app.get_layer(defaults["feature_layer"]).output
  backbone = keras.Model(app.input, features).count_params()
  channels = int(features.shape[-1])
  if variant == "paper":
    attention = channels * _PAPER_ATTENTION_CHANNELS + 3 * _PAPER_ATTENTION_CHANNELS
  else:
    attention = channels * num_maps
  head = num_maps * channels * num_classes + num_classes
  centres = num_classes * num_maps * channels
  counts = dict(backbone=backbone, attention=attention, head=head, centres=centres)
  counts["total"] = int(np.sum(list(counts.values())))
  return counts
