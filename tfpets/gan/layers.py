"""StyleGAN2-ADA building blocks as small Keras 3 layers (NHWC), exact to the official code.

Equalised learning rate (Karras et al., "Progressive Growing of GANs", ICLR 2018, section 4.1;
official stylegan2-ada-pytorch training/networks.py, FullyConnectedLayer and Conv2dLayer): every
weight is stored "raw", initialised N(0, 1/lr_multiplier), and scaled at run time by
lr_multiplier / sqrt(fan_in); biases are scaled by lr_multiplier. Kernels use the Keras layout
([k, k, in, out], dense [in, out]), which is also the TF1 pickle layout.

Mixed precision is decided per synthesis/discriminator block, as the official training/networks.py
does with `num_fp16_res`: a layer computes in the dtype of its input `x` (float32 or float16) while
its variables stay float32. The layers therefore use the float32 policy with `autocast=False`, so
neither a global Keras policy nor Keras' input casting changes their dtypes. Modulation,
demodulation and all style math stay in float32.

The modulation bias follows the PyTorch convention: it is initialised to 1 and used as is (the TF1
pickles store it minus 1, see the importers).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
import tensorflow as tf

from tfpets import ops
from tfpets.gan import rng

DEFAULT_FILTER = (1, 3, 3, 1)


def _layer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
  kwargs.setdefault("dtype", "float32")
  kwargs.setdefault("autocast", False)
  return kwargs


def _normal(stddev: float) -> keras.initializers.Initializer:
  return keras.initializers.RandomNormal(mean=0.0, stddev=stddev)


def normalize_2nd_moment(x: tf.Tensor, axis: int = -1, eps: float = 1e-8) -> tf.Tensor:
  """x / sqrt(mean(x^2) + eps) along `axis` (official networks.py, normalize_2nd_moment)."""
  return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=axis, keepdims=True) + eps)


def _activation_gain(activation: str) -> float:
  return ops.ACTIVATIONS[activation].default_gain


class EqualizedDense(keras.layers.Layer):
  """Fully-connected layer with equalised learning rate and fused bias + activation."""

  def __init__(
    self,
    in_features: int,
    units: int,
    activation: str = "linear",
    lr_multiplier: float = 1.0,
    use_bias: bool = True,
    bias_init: float = 0.0,
    **kwargs,
  ):
    super().__init__(**_layer_kwargs(kwargs))
    self.in_features = int(in_features)
    self.units = int(units)
    self.activation = activation
    self.lr_multiplier = float(lr_multiplier)
    self.use_bias = use_bias
    self.bias_init = float(bias_init)
    self.weight_gain = self.lr_multiplier / math.sqrt(self.in_features)
    self.weight = self.add_weight(
      name="weight",
      shape=(self.in_features, self.units),
      initializer=_normal(1.0 / self.lr_multiplier),
    )
    self.bias = None
    if use_bias:
      self.bias = self.add_weight(
        name="bias", shape=(self.units,), initializer=keras.initializers.Constant(self.bias_init)
      )
    self.built = True

  def call(self, x: tf.Tensor) -> tf.Tensor:
    y = tf.matmul(x, tf.cast(self.weight, x.dtype) * self.weight_gain)
    b = None
    if self.bias is not None:
      b = tf.cast(self.bias, x.dtype)
      if self.lr_multiplier != 1:
        b = b * self.lr_multiplier
    return ops.fused_bias_act(y, b, act=self.activation)

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_features": self.in_features,
      "units": self.units,
      "activation": self.activation,
      "lr_multiplier": self.lr_multiplier,
      "use_bias": self.use_bias,
      "bias_init": self.bias_init,
    }


class EqualizedConv2D(keras.layers.Layer):
  """Convolution with equalised learning rate, optional 2x up/down resampling (`conv2d_resample`),
  fused bias + activation and the conv clamp. `call(x, gain)` scales the activation gain and the
  clamp together, as the resnet branches need (x * sqrt(0.5))."""

  def __init__(
    self,
    in_channels: int,
    filters: int,
    kernel_size: int,
    use_bias: bool = True,
    activation: str = "linear",
    up: int = 1,
    down: int = 1,
    resample_filter: Sequence[float] = DEFAULT_FILTER,
    conv_clamp: float | None = None,
    **kwargs,
  ):
    super().__init__(**_layer_kwargs(kwargs))
    self.in_channels = int(in_channels)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.use_bias = use_bias
    self.activation = activation
    self.up = int(up)
    self.down = int(down)
    self.resample_filter = tuple(resample_filter)
    self.conv_clamp = conv_clamp
    self.weight_gain = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
    self.act_gain = _activation_gain(activation)
    self.weight = self.add_weight(
      name="weight",
      shape=(self.kernel_size, self.kernel_size, self.in_channels, self.filters),
      initializer=_normal(1.0),
    )
    self.bias = None
    if use_bias:
      self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
    self.built = True

  def call(self, x: tf.Tensor, gain: float = 1.0) -> tf.Tensor:
    w = tf.cast(self.weight * self.weight_gain, x.dtype)
    x = ops.conv2d_resample(x, w, k=self.resample_filter, up=self.up, down=self.down)
    b = None if self.bias is None else tf.cast(self.bias, x.dtype)
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return ops.fused_bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_channels": self.in_channels,
      "filters": self.filters,
      "kernel_size": self.kernel_size,
      "use_bias": self.use_bias,
      "activation": self.activation,
      "up": self.up,
      "down": self.down,
      "resample_filter": list(self.resample_filter),
      "conv_clamp": self.conv_clamp,
    }


class ModulatedConv2D(keras.layers.Layer):
  """Style-modulated convolution (StyleGAN2 paper, Karras et al. CVPR 2020, section 2.2; official
  training/networks.py, modulated_conv2d), the non-fused form both official codes train with.

  styles = affine(w); x * styles -> conv (optionally up 2x) -> x * dcoefs. The demodulation
  coefficients are computed as rsqrt(styles^2 @ sum_kk(weight^2) + 1e-8), which equals the
  official sum over the [B, k, k, in, out] modulated weight without building it. In float16 the
  weight and styles are first normalised by their maxima (per output channel, per sample), which
  demodulation cancels. Without demodulation (ToRGB) the styles carry the 1/sqrt(fan_in) gain.
  """

  def __init__(
    self,
    in_channels: int,
    filters: int,
    kernel_size: int,
    w_dim: int,
    demodulate: bool = True,
    up: int = 1,
    resample_filter: Sequence[float] = DEFAULT_FILTER,
    **kwargs,
  ):
    super().__init__(**_layer_kwargs(kwargs))
    self.in_channels = int(in_channels)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.w_dim = int(w_dim)
    self.demodulate = demodulate
    self.up = int(up)
    self.resample_filter = tuple(resample_filter)
    self.fan_in = self.in_channels * self.kernel_size**2
    self.affine = EqualizedDense(self.w_dim, self.in_channels, bias_init=1.0, name="affine")
    self.weight = self.add_weight(
      name="weight",
      shape=(self.kernel_size, self.kernel_size, self.in_channels, self.filters),
      initializer=_normal(1.0),
    )
    self.built = True

  def call(self, x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    styles = self.affine(w)
    weight = tf.convert_to_tensor(self.weight)
    if not self.demodulate:
      styles = styles * (1.0 / math.sqrt(self.fan_in))
    elif x.dtype == tf.float16:
      weight = weight * (
        math.sqrt(1.0 / self.fan_in) / tf.reduce_max(tf.abs(weight), axis=[0, 1, 2], keepdims=True)
      )
      styles = styles / tf.reduce_max(tf.abs(styles), axis=1, keepdims=True)
    x = x * tf.cast(styles[:, tf.newaxis, tf.newaxis, :], x.dtype)
    x = ops.conv2d_resample(x, tf.cast(weight, x.dtype), k=self.resample_filter, up=self.up)
    if self.demodulate:
      energy = tf.matmul(tf.square(styles), tf.reduce_sum(tf.square(weight), axis=[0, 1]))
      dcoefs = tf.math.rsqrt(energy + 1e-8)
      x = x * tf.cast(dcoefs[:, tf.newaxis, tf.newaxis, :], x.dtype)
    return x

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_channels": self.in_channels,
      "filters": self.filters,
      "kernel_size": self.kernel_size,
      "w_dim": self.w_dim,
      "demodulate": self.demodulate,
      "up": self.up,
      "resample_filter": list(self.resample_filter),
    }


class NoiseInjection(keras.layers.Layer):
  """Adds noise * noise_strength (trainable scalar, initialised 0).

  noise_mode 'random' draws N(0, 1) [B, H, W, 1] per call, 'const' uses the stored non-trainable
  `noise_const` [H, W] buffer, 'none' adds nothing.
  """

  NOISE_MODES = ("random", "const", "none")

  def __init__(self, resolution: int, **kwargs):
    super().__init__(**_layer_kwargs(kwargs))
    self.resolution = int(resolution)
    self.noise_const = self.add_weight(
      name="noise_const",
      shape=(self.resolution, self.resolution),
      initializer=_normal(1.0),
      trainable=False,
    )
    self.noise_strength = self.add_weight(name="noise_strength", shape=(), initializer="zeros")
    self.built = True

  def call(
    self, x: tf.Tensor, noise_mode: str = "random", seed: Any = None, stream: int = 0
  ) -> tf.Tensor:
    """`seed` (int [2]) makes 'random' noise a function of (seed, stream), the same with XLA."""
    if noise_mode not in self.NOISE_MODES:
      raise ValueError(f"noise_mode must be one of {self.NOISE_MODES}, got {noise_mode!r}")
    if noise_mode == "none":
      return x
    if noise_mode == "random":
      shape = [tf.shape(x)[0], self.resolution, self.resolution, 1]
      noise = tf.random.normal(shape) if seed is None else rng.normal(seed, shape, stream)
    else:
      noise = self.noise_const[tf.newaxis, :, :, tf.newaxis]
    return x + tf.cast(noise * self.noise_strength, x.dtype)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "resolution": self.resolution}


class SynthesisLayer(keras.layers.Layer):
  """Modulated conv -> noise -> bias + lrelu (gain sqrt 2) + clamp; one generator conv layer."""

  def __init__(
    self,
    in_channels: int,
    filters: int,
    w_dim: int,
    resolution: int,
    kernel_size: int = 3,
    up: int = 1,
    use_noise: bool = True,
    activation: str = "lrelu",
    resample_filter: Sequence[float] = DEFAULT_FILTER,
    conv_clamp: float | None = None,
    **kwargs,
  ):
    super().__init__(**_layer_kwargs(kwargs))
    self.in_channels = int(in_channels)
    self.filters = int(filters)
    self.w_dim = int(w_dim)
    self.resolution = int(resolution)
    self.kernel_size = int(kernel_size)
    self.up = int(up)
    self.use_noise = use_noise
    self.activation = activation
    self.resample_filter = tuple(resample_filter)
    self.conv_clamp = conv_clamp
    self.act_gain = _activation_gain(activation)
    self.conv = ModulatedConv2D(
      self.in_channels,
      self.filters,
      self.kernel_size,
      self.w_dim,
      up=self.up,
      resample_filter=self.resample_filter,
      name="conv",
    )
    self.noise = NoiseInjection(self.resolution, name="noise") if use_noise else None
    self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
    self.built = True

  def call(
    self,
    x: tf.Tensor,
    w: tf.Tensor,
    noise_mode: str = "random",
    gain: float = 1.0,
    noise_seed: Any = None,
    noise_stream: int = 0,
  ) -> tf.Tensor:
    x = self.conv(x, w)
    if self.noise is not None:
      x = self.noise(x, noise_mode=noise_mode, seed=noise_seed, stream=noise_stream)
    clamp = None if self.conv_clamp is None else self.conv_clamp * gain
    return ops.fused_bias_act(
      x, tf.cast(self.bias, x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp
    )

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_channels": self.in_channels,
      "filters": self.filters,
      "w_dim": self.w_dim,
      "resolution": self.resolution,
      "kernel_size": self.kernel_size,
      "up": self.up,
      "use_noise": self.use_noise,
      "activation": self.activation,
      "resample_filter": list(self.resample_filter),
      "conv_clamp": self.conv_clamp,
    }


class ToRGB(keras.layers.Layer):
  """Modulated 1x1 conv without demodulation, then bias + clamp (linear)."""

  def __init__(
    self,
    in_channels: int,
    img_channels: int,
    w_dim: int,
    kernel_size: int = 1,
    conv_clamp: float | None = None,
    **kwargs,
  ):
    super().__init__(**_layer_kwargs(kwargs))
    self.in_channels = int(in_channels)
    self.img_channels = int(img_channels)
    self.w_dim = int(w_dim)
    self.kernel_size = int(kernel_size)
    self.conv_clamp = conv_clamp
    self.conv = ModulatedConv2D(
      self.in_channels,
      self.img_channels,
      self.kernel_size,
      self.w_dim,
      demodulate=False,
      name="conv",
    )
    self.bias = self.add_weight(name="bias", shape=(self.img_channels,), initializer="zeros")
    self.built = True

  def call(self, x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    x = self.conv(x, w)
    return ops.fused_bias_act(x, tf.cast(self.bias, x.dtype), clamp=self.conv_clamp)

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_channels": self.in_channels,
      "img_channels": self.img_channels,
      "w_dim": self.w_dim,
      "kernel_size": self.kernel_size,
      "conv_clamp": self.conv_clamp,
    }


class MinibatchStdDev(keras.layers.Layer):
  """Appends the minibatch standard deviation as `num_channels` last channels (official
  training/networks.py, MinibatchStdLayer).

  The group axis is the outer split of the batch: samples i and i + N/G share a group. The batch
  must be divisible by min(group_size, N). Computed in float32.
  """

  def __init__(self, group_size: int | None = 4, num_channels: int = 1, **kwargs):
    super().__init__(**_layer_kwargs(kwargs))
    self.group_size = None if group_size is None else int(group_size)
    self.num_channels = int(num_channels)
    self.built = True

  def _groups(self, x: tf.Tensor) -> Any:
    batch = x.shape[0]
    if batch is None:
      batch = tf.shape(x)[0]
      return batch if self.group_size is None else tf.minimum(self.group_size, batch)
    group = batch if self.group_size is None else min(self.group_size, batch)
    if batch % group:
      raise ValueError(f"minibatch stddev: batch {batch} is not divisible by group size {group}")
    return group

  def call(self, x: tf.Tensor) -> tf.Tensor:
    _, height, width, channels = x.shape
    groups = self._groups(x)
    features = self.num_channels
    y = tf.reshape(
      tf.cast(x, tf.float32), [groups, -1, height, width, features, channels // features]
    )
    y = y - tf.reduce_mean(y, axis=0)
    y = tf.sqrt(tf.reduce_mean(tf.square(y), axis=0) + 1e-8)  # [n, H, W, F, c]
    y = tf.reduce_mean(y, axis=[1, 2, 4])  # [n, F]
    y = tf.tile(y[:, tf.newaxis, tf.newaxis, :], [groups, height, width, 1])
    return tf.concat([x, tf.cast(y, x.dtype)], axis=-1)

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "group_size": self.group_size,
      "num_channels": self.num_channels,
    }
