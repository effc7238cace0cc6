"""StyleGAN2-ADA generator and discriminator as Keras 3 models (NHWC), exact to the official code.

Structure and attribute names follow the official PyTorch networks so that the importers can map
pickles onto them one to one: `Generator.mapping` (`embed`, `fc{i}`, `w_avg`),
`Generator.synthesis.b{res}` (`const`, `conv0`, `conv1`, `torgb`, `skip`),
`Discriminator.b{res}` (`fromrgb`, `conv0`, `conv1`, `skip`), `Discriminator.mapping` and the
epilogue `Discriminator.b4` (`fromrgb`, `mbstd`, `conv`, `fc`, `out`).

Images are NHWC float32 in [-1, 1]. Blocks at the top `num_fp16_res` resolutions compute in
float16 with float32 weights (official training/networks.py, `num_fp16_res`); the mapping network,
the image accumulation and the discriminator epilogue always run in float32.

`save_networks` / `load_networks` store converted or trained networks as `<name>.weights.h5` plus
`config.json`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

from tfpets import ops
from tfpets.gan import layers, rng
from tfpets.gan.presets import NetworkConfig

CONFIG_FILE = "config.json"
_SQRT_HALF = math.sqrt(0.5)


def _as_config(config: NetworkConfig | Mapping[str, Any]) -> NetworkConfig:
  return config if isinstance(config, NetworkConfig) else NetworkConfig.from_dict(config)


def _split_inputs(inputs: Any, c_dim: int, what: str) -> tuple[tf.Tensor, tf.Tensor | None]:
  """`inputs` is x or (x, c); c is required exactly when the network is conditional."""
  if isinstance(inputs, (tuple, list)):
    if len(inputs) != 2:
      raise ValueError(f"{what} expects x or (x, c), got {len(inputs)} inputs")
    x, c = inputs
  else:
    x, c = inputs, None
  if c_dim and c is None:
    raise ValueError(f"{what} is conditional (c_dim={c_dim}) and needs (x, c) inputs")
  if not c_dim:
    c = None
  return tf.convert_to_tensor(x), None if c is None else tf.convert_to_tensor(c, tf.float32)


class MappingNetwork(keras.layers.Layer):
  """z (and label c) -> w (official training/networks.py, MappingNetwork), with W-average tracking
  and truncation.

  Also serves as the discriminator's label mapping (z_dim = 0, num_ws = None, no W average).
  """

  def __init__(
    self,
    z_dim: int,
    c_dim: int,
    w_dim: int,
    num_ws: int | None,
    num_layers: int = 8,
    embed_features: int | None = None,
    layer_features: int | None = None,
    activation: str = "lrelu",
    lr_multiplier: float = 0.01,
    w_avg_beta: float | None = 0.995,
    **kwargs,
  ):
    super().__init__(**layers._layer_kwargs(kwargs))  # pylint: disable=protected-access
    self.z_dim, self.c_dim, self.w_dim = int(z_dim), int(c_dim), int(w_dim)
    self.num_ws = num_ws
    self.num_layers = int(num_layers)
    self.embed_features = embed_features
    self.layer_features = layer_features
    self.activation = activation
    self.lr_multiplier = float(lr_multiplier)
    self.w_avg_beta = w_avg_beta
    embed = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
    hidden = w_dim if layer_features is None else layer_features
    features = [z_dim + embed] + [hidden] * (self.num_layers - 1) + [w_dim]
    self.embed = layers.EqualizedDense(c_dim, embed, name="embed") if c_dim else None
    for idx in range(self.num_layers):
      setattr(
        self,
        f"fc{idx}",
        layers.EqualizedDense(
          features[idx],
          features[idx + 1],
          activation=activation,
          lr_multiplier=lr_multiplier,
          name=f"fc{idx}",
        ),
      )
    self.w_avg = None
    if num_ws is not None and w_avg_beta is not None:
      self.w_avg = self.add_weight(
        name="w_avg", shape=(self.w_dim,), initializer="zeros", trainable=False, aggregation="mean"
      )
    self.built = True

  def call(
    self,
    z: tf.Tensor | None,
    c: tf.Tensor | None = None,
    training: bool = False,
    truncation_psi: Any = 1.0,
    truncation_cutoff: int | None = None,
    skip_w_avg_update: bool = False,
  ) -> tf.Tensor:
    parts = []
    if self.z_dim:
      parts.append(layers.normalize_2nd_moment(tf.cast(z, tf.float32)))
    if self.c_dim:
      parts.append(layers.normalize_2nd_moment(self.embed(tf.cast(c, tf.float32))))
    x = parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
    for idx in range(self.num_layers):
      x = getattr(self, f"fc{idx}")(x)
    if self.w_avg is not None and training and not skip_w_avg_update:
      self.update_w_avg(tf.reduce_mean(x, axis=0))
    if self.num_ws is not None:
      x = tf.tile(x[:, tf.newaxis, :], [1, self.num_ws, 1])
    if not (isinstance(truncation_psi, (int, float)) and truncation_psi == 1):
      x = self._truncate(x, truncation_psi, truncation_cutoff)
    return x

  def update_w_avg(self, batch_mean: tf.Tensor, apply: Any = True) -> None:
    """Moves the tracked W average towards `batch_mean` (unless `apply` is False)."""
    updated = batch_mean + self.w_avg_beta * (self.w_avg - batch_mean)
    self.w_avg.assign(tf.where(apply, updated, self.w_avg))

  def _truncate(self, x: tf.Tensor, psi: Any, cutoff: int | None) -> tf.Tensor:
    if self.w_avg is None:
      raise ValueError("truncation needs the tracked W average (w_avg_beta is None)")
    truncated = self.w_avg + (x - self.w_avg) * tf.cast(psi, tf.float32)
    if self.num_ws is None or cutoff is None:
      return truncated
    layer_idx = tf.range(self.num_ws)[tf.newaxis, :, tf.newaxis]
    return tf.where(layer_idx < cutoff, truncated, x)

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "z_dim": self.z_dim,
      "c_dim": self.c_dim,
      "w_dim": self.w_dim,
      "num_ws": self.num_ws,
      "num_layers": self.num_layers,
      "embed_features": self.embed_features,
      "layer_features": self.layer_features,
      "activation": self.activation,
      "lr_multiplier": self.lr_multiplier,
      "w_avg_beta": self.w_avg_beta,
    }


class SynthesisBlock(keras.layers.Layer):
  """One generator resolution: const or conv0 (up 2x), conv1, ToRGB and/or resnet skip."""

  def __init__(
    self,
    in_channels: int,
    out_channels: int,
    w_dim: int,
    resolution: int,
    img_channels: int,
    is_last: bool,
    architecture: str = "skip",
    resample_filter: Sequence[float] = layers.DEFAULT_FILTER,
    conv_clamp: float | None = None,
    use_fp16: bool = False,
    use_noise: bool = True,
    **kwargs,
  ):
    super().__init__(**layers._layer_kwargs(kwargs))  # pylint: disable=protected-access
    self.in_channels, self.out_channels = int(in_channels), int(out_channels)
    self.w_dim, self.resolution = int(w_dim), int(resolution)
    self.img_channels, self.is_last = int(img_channels), bool(is_last)
    self.architecture = architecture
    self.resample_filter = tuple(resample_filter)
    self.conv_clamp = conv_clamp
    self.use_fp16, self.use_noise = bool(use_fp16), bool(use_noise)
    common = dict(
      w_dim=w_dim,
      resolution=resolution,
      use_noise=use_noise,
      resample_filter=self.resample_filter,
      conv_clamp=conv_clamp,
    )
    self.const = self.conv0 = self.torgb = self.skip = None
    if in_channels == 0:
      self.const = self.add_weight(
        name="const",
        shape=(resolution, resolution, out_channels),
        initializer=keras.initializers.RandomNormal(0.0, 1.0),
      )
    else:
      self.conv0 = layers.SynthesisLayer(in_channels, out_channels, up=2, name="conv0", **common)
    self.conv1 = layers.SynthesisLayer(out_channels, out_channels, name="conv1", **common)
    if is_last or architecture == "skip":
      self.torgb = layers.ToRGB(
        out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, name="torgb"
      )
    if in_channels != 0 and architecture == "resnet":
      self.skip = layers.EqualizedConv2D(
        in_channels,
        out_channels,
        1,
        use_bias=False,
        up=2,
        resample_filter=self.resample_filter,
        name="skip",
      )
    self.num_conv = 1 if in_channels == 0 else 2
    self.num_torgb = 1 if self.torgb is not None else 0
    self.built = True

  def call(
    self,
    x: tf.Tensor | None,
    img: tf.Tensor | None,
    ws: tf.Tensor,
    noise_mode: str = "random",
    force_fp32: bool = False,
    noise_seed: Any = None,
  ) -> tuple[tf.Tensor, tf.Tensor | None]:
    dtype = tf.float16 if self.use_fp16 and not force_fp32 else tf.float32
    w_iter = iter(tf.unstack(ws, axis=1))
    # One noise stream per layer of the network: two per resolution.
    stream = 2 * int(math.log2(self.resolution))
    noise0 = dict(noise_mode=noise_mode, noise_seed=noise_seed, noise_stream=stream)
    noise1 = dict(noise_mode=noise_mode, noise_seed=noise_seed, noise_stream=stream + 1)
    if self.const is not None:
      x = tf.tile(tf.cast(self.const, dtype)[tf.newaxis], [tf.shape(ws)[0], 1, 1, 1])
      x = self.conv1(x, next(w_iter), **noise1)
    elif self.skip is not None:
      x = tf.cast(x, dtype)
      y = self.skip(x, gain=_SQRT_HALF)
      x = self.conv0(x, next(w_iter), **noise0)
      x = y + self.conv1(x, next(w_iter), gain=_SQRT_HALF, **noise1)
    else:
      x = tf.cast(x, dtype)
      x = self.conv0(x, next(w_iter), **noise0)
      x = self.conv1(x, next(w_iter), **noise1)
    if img is not None:
      img = ops.upsample2d(img, self.resample_filter)
    if self.torgb is not None:
      y = tf.cast(self.torgb(x, next(w_iter)), tf.float32)
      img = y if img is None else img + y
    return x, img

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_channels": self.in_channels,
      "out_channels": self.out_channels,
      "w_dim": self.w_dim,
      "resolution": self.resolution,
      "img_channels": self.img_channels,
      "is_last": self.is_last,
      "architecture": self.architecture,
      "resample_filter": list(self.resample_filter),
      "conv_clamp": self.conv_clamp,
      "use_fp16": self.use_fp16,
      "use_noise": self.use_noise,
    }


class SynthesisNetwork(keras.layers.Layer):
  """ws [B, num_ws, w_dim] -> images [B, res, res, C] float32 (official SynthesisNetwork)."""

  def __init__(self, config: NetworkConfig | Mapping[str, Any], **kwargs):
    super().__init__(**layers._layer_kwargs(kwargs))  # pylint: disable=protected-access
    self.config = _as_config(config)
    cfg = self.config
    self.block_resolutions = cfg.block_resolutions()
    self.num_ws = cfg.num_ws
    for res in self.block_resolutions:
      block = SynthesisBlock(
        cfg.channels(res // 2) if res > 4 else 0,
        cfg.channels(res),
        w_dim=cfg.w_dim,
        resolution=res,
        img_channels=cfg.img_channels,
        is_last=res == cfg.resolution,
        architecture=cfg.g_architecture,
        resample_filter=cfg.resample_filter,
        conv_clamp=cfg.conv_clamp,
        use_fp16=cfg.use_fp16(res),
        use_noise=cfg.use_noise,
        name=f"b{res}",
      )
      setattr(self, f"b{res}", block)
    self.built = True

  @property
  def blocks(self) -> list[SynthesisBlock]:
    return [getattr(self, f"b{res}") for res in self.block_resolutions]

  def call(
    self,
    ws: tf.Tensor,
    noise_mode: str = "random",
    force_fp32: bool = False,
    noise_seed: Any = None,
  ) -> tf.Tensor:
    """Images from ws; `noise_seed` (int [2]) makes 'random' noise repeatable (tfpets.gan.rng)."""
    ws = tf.cast(ws, tf.float32)
    x = img = None
    w_idx = 0
    for block in self.blocks:
      block_ws = ws[:, w_idx : w_idx + block.num_conv + block.num_torgb]
      w_idx += block.num_conv
      x, img = block(
        x, img, block_ws, noise_mode=noise_mode, force_fp32=force_fp32, noise_seed=noise_seed
      )
    return img

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "config": self.config.to_dict()}


class Generator(keras.Model):
  """Mapping + synthesis. `call((z, c))` -> images [B, res, res, C] in about [-1, 1].

  In training (`training=True`) the W average is updated and styles are mixed with probability
  `config.style_mixing_prob` (as the official training/loss.py, StyleGAN2Loss.run_G, mixes them);
  truncation applies only when psi != 1.
  """

  def __init__(self, config: NetworkConfig | Mapping[str, Any], **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.config = _as_config(config)
    cfg = self.config
    self.synthesis = SynthesisNetwork(cfg, name="synthesis")
    self.num_ws = self.synthesis.num_ws
    self.mapping = MappingNetwork(
      cfg.z_dim,
      cfg.c_dim,
      cfg.w_dim,
      num_ws=self.num_ws,
      num_layers=cfg.mapping_layers,
      embed_features=cfg.embed_features,
      layer_features=cfg.mapping_features,
      lr_multiplier=cfg.mapping_lr,
      w_avg_beta=cfg.w_avg_beta,
      name="mapping",
    )
    self.built = True

  def mapped_ws(
    self,
    z: tf.Tensor,
    c: tf.Tensor | None = None,
    training: bool = False,
    truncation_psi: Any = 1.0,
    truncation_cutoff: int | None = None,
    style_mixing_prob: float | None = None,
    mixing_seed: Any = None,
  ) -> tf.Tensor:
    """ws [B, num_ws, w_dim]; in training with style mixing (config probability by default)."""
    ws = self.mapping(
      z, c, training=training, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff
    )
    prob = self.config.style_mixing_prob if style_mixing_prob is None else style_mixing_prob
    if training and prob > 0:
      ws = self.mix_styles(ws, z, c, prob, mixing_seed)
    return ws

  def mix_styles(
    self, ws: tf.Tensor, z: tf.Tensor, c: tf.Tensor | None, prob: float, seed: Any = None
  ) -> tf.Tensor:
    """With probability `prob`, the layers from a random cutoff on take the ws of fresh latents.

    `seed` (int [2]) makes the cutoff and the latents repeatable (tfpets.gan.rng).
    """
    if seed is None:
      draws, z2 = tf.random.uniform([2]), tf.random.normal(tf.shape(z))
    else:
      draws, z2 = rng.uniform(seed, [2], stream=0), rng.normal(seed, tf.shape(z), stream=1)
    cutoff = 1 + tf.cast(draws[0] * (self.num_ws - 1), tf.int32)
    cutoff = tf.where(draws[1] < prob, cutoff, self.num_ws)
    ws2 = self.mapping(z2, c, training=True, skip_w_avg_update=True)
    layer_idx = tf.range(self.num_ws)[tf.newaxis, :, tf.newaxis]
    return tf.where(layer_idx < cutoff, ws, ws2)

  def call(
    self,
    inputs: Any,
    training: bool = False,
    truncation_psi: Any = 1.0,
    truncation_cutoff: int | None = None,
    noise_mode: str = "random",
    force_fp32: bool = False,
  ) -> tf.Tensor:
    z, c = _split_inputs(inputs, self.config.c_dim, "Generator")
    ws = self.mapped_ws(
      z, c, training=training, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff
    )
    return self.synthesis(ws, noise_mode=noise_mode, force_fp32=force_fp32)

  def get_config(self) -> dict[str, Any]:
    return {"name": self.name, "config": self.config.to_dict()}


class DiscriminatorBlock(keras.layers.Layer):
  """One discriminator resolution: [FromRGB], conv0, conv1 (down 2x), [resnet skip]."""

  def __init__(
    self,
    in_channels: int,
    tmp_channels: int,
    out_channels: int,
    resolution: int,
    img_channels: int,
    architecture: str = "resnet",
    resample_filter: Sequence[float] = layers.DEFAULT_FILTER,
    conv_clamp: float | None = None,
    use_fp16: bool = False,
    **kwargs,
  ):
    super().__init__(**layers._layer_kwargs(kwargs))  # pylint: disable=protected-access
    self.in_channels, self.tmp_channels = int(in_channels), int(tmp_channels)
    self.out_channels, self.resolution = int(out_channels), int(resolution)
    self.img_channels, self.architecture = int(img_channels), architecture
    self.resample_filter = tuple(resample_filter)
    self.conv_clamp, self.use_fp16 = conv_clamp, bool(use_fp16)
    conv = dict(activation="lrelu", conv_clamp=conv_clamp)
    self.fromrgb = self.skip = None
    if in_channels == 0 or architecture == "skip":
      self.fromrgb = layers.EqualizedConv2D(img_channels, tmp_channels, 1, name="fromrgb", **conv)
    self.conv0 = layers.EqualizedConv2D(tmp_channels, tmp_channels, 3, name="conv0", **conv)
    self.conv1 = layers.EqualizedConv2D(
      tmp_channels,
      out_channels,
      3,
      down=2,
      resample_filter=self.resample_filter,
      name="conv1",
      **conv,
    )
    if architecture == "resnet":
      self.skip = layers.EqualizedConv2D(
        tmp_channels,
        out_channels,
        1,
        use_bias=False,
        down=2,
        resample_filter=self.resample_filter,
        name="skip",
      )
    self.built = True

  def call(
    self, x: tf.Tensor | None, img: tf.Tensor | None, force_fp32: bool = False
  ) -> tuple[tf.Tensor, tf.Tensor | None]:
    dtype = tf.float16 if self.use_fp16 and not force_fp32 else tf.float32
    if x is not None:
      x = tf.cast(x, dtype)
    if self.fromrgb is not None:
      img = tf.cast(img, dtype)
      y = self.fromrgb(img)
      x = y if x is None else x + y
      img = ops.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
    if self.skip is not None:
      y = self.skip(x, gain=_SQRT_HALF)
      x = y + self.conv1(self.conv0(x), gain=_SQRT_HALF)
    else:
      x = self.conv1(self.conv0(x))
    return x, img

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_channels": self.in_channels,
      "tmp_channels": self.tmp_channels,
      "out_channels": self.out_channels,
      "resolution": self.resolution,
      "img_channels": self.img_channels,
      "architecture": self.architecture,
      "resample_filter": list(self.resample_filter),
      "conv_clamp": self.conv_clamp,
      "use_fp16": self.use_fp16,
    }


class DiscriminatorEpilogue(keras.layers.Layer):
  """4x4 epilogue, always float32: [FromRGB], minibatch stddev, conv, dense, output (+ cmap).

  The dense layer flattens NHWC; TF1/PyTorch weights (NCHW flatten) are reordered on import.
  FromRGB is present for the skip architecture and for a 4x4 discriminator.
  """

  def __init__(
    self,
    in_channels: int,
    cmap_dim: int,
    resolution: int,
    img_channels: int,
    has_fromrgb: bool = False,
    mbstd_group_size: int | None = 4,
    mbstd_num_channels: int = 1,
    conv_clamp: float | None = None,
    **kwargs,
  ):
    super().__init__(**layers._layer_kwargs(kwargs))  # pylint: disable=protected-access
    self.in_channels, self.cmap_dim = int(in_channels), int(cmap_dim)
    self.resolution, self.img_channels = int(resolution), int(img_channels)
    self.has_fromrgb = bool(has_fromrgb)
    self.mbstd_group_size, self.mbstd_num_channels = mbstd_group_size, int(mbstd_num_channels)
    self.conv_clamp = conv_clamp
    self.fromrgb = self.mbstd = None
    if has_fromrgb:
      self.fromrgb = layers.EqualizedConv2D(
        img_channels, in_channels, 1, activation="lrelu", conv_clamp=conv_clamp, name="fromrgb"
      )
    if mbstd_num_channels > 0:
      self.mbstd = layers.MinibatchStdDev(mbstd_group_size, mbstd_num_channels, name="mbstd")
    self.conv = layers.EqualizedConv2D(
      in_channels + self.mbstd_num_channels,
      in_channels,
      3,
      activation="lrelu",
      conv_clamp=conv_clamp,
      name="conv",
    )
    self.fc = layers.EqualizedDense(
      in_channels * resolution**2, in_channels, activation="lrelu", name="fc"
    )
    self.out = layers.EqualizedDense(in_channels, 1 if cmap_dim == 0 else cmap_dim, name="out")
    self.built = True

  def call(
    self, x: tf.Tensor | None, img: tf.Tensor | None, cmap: tf.Tensor | None = None
  ) -> tf.Tensor:
    if x is not None:
      x = tf.cast(x, tf.float32)
    if self.fromrgb is not None:
      y = self.fromrgb(tf.cast(img, tf.float32))
      x = y if x is None else x + y
    if self.mbstd is not None:
      x = self.mbstd(x)
    x = self.conv(x)
    x = self.fc(tf.reshape(x, [-1, self.in_channels * self.resolution**2]))
    x = self.out(x)
    if self.cmap_dim:
      x = tf.reduce_sum(x * cmap, axis=1, keepdims=True) * (1 / math.sqrt(self.cmap_dim))
    return x

  def get_config(self) -> dict[str, Any]:
    return {
      **super().get_config(),
      "in_channels": self.in_channels,
      "cmap_dim": self.cmap_dim,
      "resolution": self.resolution,
      "img_channels": self.img_channels,
      "has_fromrgb": self.has_fromrgb,
      "mbstd_group_size": self.mbstd_group_size,
      "mbstd_num_channels": self.mbstd_num_channels,
      "conv_clamp": self.conv_clamp,
    }


class Discriminator(keras.Model):
  """`call(img)` or `call((img, c))` -> logits [B, 1] float32 (official Discriminator)."""

  def __init__(self, config: NetworkConfig | Mapping[str, Any], **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.config = _as_config(config)
    cfg = self.config
    self.block_resolutions = [2**i for i in range(cfg.resolution_log2, 2, -1)]
    for res in self.block_resolutions:
      block = DiscriminatorBlock(
        cfg.channels(res) if res < cfg.resolution else 0,
        cfg.channels(res),
        cfg.channels(res // 2),
        resolution=res,
        img_channels=cfg.img_channels,
        architecture=cfg.d_architecture,
        resample_filter=cfg.resample_filter,
        conv_clamp=cfg.conv_clamp,
        use_fp16=cfg.use_fp16(res),
        name=f"b{res}",
      )
      setattr(self, f"b{res}", block)
    self.mapping = None
    if cfg.c_dim:
      self.mapping = MappingNetwork(
        0,
        cfg.c_dim,
        cfg.d_cmap_dim,
        num_ws=None,
        num_layers=cfg.d_mapping_layers,
        lr_multiplier=cfg.d_mapping_lr,
        w_avg_beta=None,
        name="mapping",
      )
    self.b4 = DiscriminatorEpilogue(
      cfg.channels(4),
      cfg.d_cmap_dim,
      resolution=4,
      img_channels=cfg.img_channels,
      has_fromrgb=cfg.d_architecture == "skip" or cfg.resolution == 4,
      mbstd_group_size=cfg.mbstd_group_size,
      mbstd_num_channels=cfg.mbstd_num_channels,
      conv_clamp=cfg.conv_clamp,
      name="b4",
    )
    self.built = True

  @property
  def blocks(self) -> list[DiscriminatorBlock]:
    return [getattr(self, f"b{res}") for res in self.block_resolutions]

  def call(self, inputs: Any, training: bool = False, force_fp32: bool = False) -> tf.Tensor:
    del training  # Same computation in training and inference.
    img, c = _split_inputs(inputs, self.config.c_dim, "Discriminator")
    x = None
    for block in self.blocks:
      x, img = block(x, img, force_fp32=force_fp32)
    cmap = None if self.mapping is None else self.mapping(None, c)
    return self.b4(x, img, cmap)

  def get_config(self) -> dict[str, Any]:
    return {"name": self.name, "config": self.config.to_dict()}


def build_networks(
  config: NetworkConfig | Mapping[str, Any],
) -> tuple[Generator, Discriminator, Generator]:
  """A fresh (G, D, G_ema); G_ema starts as a copy of G."""
  config = _as_config(config)
  generator = Generator(config, name="G")
  discriminator = Discriminator(config, name="D")
  generator_ema = Generator(config, name="G_ema")
  for source, target in zip(generator.weights, generator_ema.weights):
    target.assign(source)
  return generator, discriminator, generator_ema


def save_networks(
  directory: str | os.PathLike,
  config: NetworkConfig,
  networks: Mapping[str, keras.Model],
  extra: Mapping[str, Any] | None = None,
) -> pathlib.Path:
  """Writes `<name>.weights.h5` per network and config.json (network config + `extra`)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for name, model in networks.items():
    model.save_weights(str(directory / f"{name}.weights.h5"))
  payload = {"network": config.to_dict(), "networks": sorted(networks), **(extra or {})}
  tmp = directory / (CONFIG_FILE + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, directory / CONFIG_FILE)
  return directory / CONFIG_FILE


def load_networks(directory: str | os.PathLike) -> tuple[NetworkConfig, dict[str, keras.Model]]:
  """Reads what `save_networks` wrote: (config, {name: model})."""
  directory = pathlib.Path(directory)
  config_path = directory / CONFIG_FILE
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path}: no network config.json there")
  try:
    payload = json.loads(config_path.read_text())
    config = NetworkConfig.from_dict(payload["network"], source=str(config_path))
    names = list(payload["networks"])
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{config_path}: not a tfpets network config ({e})") from e
  models = {}
  for name in names:
    model = Discriminator(config, name=name) if name == "D" else Generator(config, name=name)
    model.load_weights(str(directory / f"{name}.weights.h5"))
    models[name] = model
  return config, models
