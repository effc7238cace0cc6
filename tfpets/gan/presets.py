"""StyleGAN2-ADA network and training presets, and the network configuration.

The presets are those of the official stylegan2-ada-pytorch train.py (`cfg_specs` in
setup_training_loop_kwargs()).

`NetworkConfig` holds everything that shapes the generator and the discriminator, in the PyTorch
naming of the official code (`channel_base = 2 * fmap_base`, `channels(res) = min(channel_base //
res, channel_max)`). `network_config(preset, resolution)` resolves a preset the way the official
`train.py` does; `training_config(preset, resolution)` gives the matching optimisation settings.

Presets: `auto` (the pet project's configuration at 128 px), `stylegan2`, `paper256`, `paper512`,
`paper1024`, `cifar`, and `demo` (a small network for CPU demonstrations: channel_max 128,
z = w = 128, no fp16).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

PRESETS = ("auto", "stylegan2", "paper256", "paper512", "paper1024", "cifar", "demo")
ARCHITECTURES = ("orig", "skip", "resnet")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Shape of a StyleGAN2-ADA generator/discriminator pair.

  Attributes:
    resolution: Image size, a power of two >= 4.
    img_channels: Colour channels of the images.
    c_dim: Conditioning label size, 0 = unconditional.
    z_dim: Latent (Z) size.
    w_dim: Intermediate latent (W) size.
    channel_base: channels(res) = min(channel_base // res, channel_max).
    channel_max: Upper bound of every layer's channels.
    mapping_layers: Dense layers of the generator's mapping network.
    mapping_lr: Learning-rate multiplier of the mapping layers.
    mapping_features: Width of the hidden mapping layers, None = w_dim.
    embed_features: Width of the generator's label embedding, None = w_dim.
    w_avg_beta: Decay of the tracked W average, None = not tracked (no truncation).
    style_mixing_prob: Probability of style mixing during training, 0 = off.
    g_architecture: Generator architecture: 'orig', 'skip' or 'resnet'.
    use_noise: Per-pixel noise inputs in the synthesis layers.
    d_architecture: Discriminator architecture: 'orig', 'skip' or 'resnet'.
    mbstd_group_size: Minibatch-stddev group size, None = the whole minibatch.
    mbstd_num_channels: Minibatch-stddev features, 0 = no minibatch-stddev layer.
    cmap_dim: Discriminator label-projection size, None = channels(4).
    d_mapping_layers: Dense layers after the discriminator's label embedding.
    d_mapping_lr: Learning-rate multiplier of those layers.
    num_fp16_res: Number of highest resolutions computed in float16 (weights stay float32).
    conv_clamp: Clamp of every convolution output, None = no clamping.
    resample_filter: Taps of the resampling low-pass filter.
  """

  resolution: int = 128
  img_channels: int = 3
  c_dim: int = 0
  z_dim: int = 512
  w_dim: int = 512
  channel_base: int = 16384
  channel_max: int = 512
  mapping_layers: int = 2
  mapping_lr: float = 0.01
  mapping_features: int | None = None
  embed_features: int | None = None
  w_avg_beta: float | None = 0.995
  style_mixing_prob: float = 0.9
  g_architecture: str = "skip"
  use_noise: bool = True
  d_architecture: str = "resnet"
  mbstd_group_size: int | None = 4
  mbstd_num_channels: int = 1
  cmap_dim: int | None = None
  d_mapping_layers: int = 0
  d_mapping_lr: float = 0.1
  num_fp16_res: int = 4
  conv_clamp: float | None = 256
  resample_filter: tuple[float, ...] = (1, 3, 3, 1)

  def __post_init__(self):
    object.__setattr__(self, "resample_filter", tuple(self.resample_filter))
    if self.resolution < 4 or self.resolution & (self.resolution - 1):
      raise ValueError(f"resolution must be a power of two >= 4, got {self.resolution}")
    for name in ("g_architecture", "d_architecture"):
      if getattr(self, name) not in ARCHITECTURES:
        raise ValueError(f"{name} must be one of {ARCHITECTURES}, got {getattr(self, name)!r}")
    for name in ("img_channels", "w_dim", "channel_base", "channel_max"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in (
      "c_dim",
      "z_dim",
      "mapping_layers",
      "d_mapping_layers",
      "num_fp16_res",
      "mbstd_num_channels",
    ):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.z_dim == 0 and self.c_dim == 0:
      raise ValueError("the generator needs z_dim > 0 or c_dim > 0")
    if self.mapping_layers == 0 and self.z_dim + self.embed_width != self.w_dim:
      raise ValueError("mapping_layers = 0 needs z_dim + embed width == w_dim")

  @property
  def resolution_log2(self) -> int:
    return int(math.log2(self.resolution))

  @property
  def num_ws(self) -> int:
    """Number of W vectors the synthesis network consumes (2 log2(res) - 2)."""
    return 2 * self.resolution_log2 - 2

  @property
  def embed_width(self) -> int:
    if self.c_dim == 0:
      return 0
    return self.w_dim if self.embed_features is None else self.embed_features

  @property
  def fp16_resolution(self) -> int:
    """Blocks at this resolution and above run in float16 (never the 4x4 block)."""
    return max(2 ** (self.resolution_log2 + 1 - self.num_fp16_res), 8)

  @property
  def d_cmap_dim(self) -> int:
    if self.c_dim == 0:
      return 0
    return self.channels(4) if self.cmap_dim is None else self.cmap_dim

  def channels(self, res: int) -> int:
    return min(self.channel_base // res, self.channel_max)

  def block_resolutions(self) -> list[int]:
    """Synthesis block resolutions, 4 first."""
    return [2**i for i in range(2, self.resolution_log2 + 1)]

  def use_fp16(self, res: int) -> bool:
    return res >= self.fp16_resolution

  def to_dict(self) -> dict[str, Any]:
    config = dataclasses.asdict(self)
    config["resample_filter"] = list(self.resample_filter)
    return config

  @classmethod
  def from_dict(cls, config: Mapping[str, Any], source: str = "config") -> "NetworkConfig":
    """Builds a config from `to_dict()` output; unknown keys are an error naming `source`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
      raise ValueError(f"{source}: unknown network config keys {unknown}")
    try:
      return cls(**dict(config))
    except (TypeError, ValueError) as e:
      raise ValueError(f"{source}: invalid network config: {e}") from e


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
  """Optimisation settings of a preset, resolved for a GPU count."""

  batch: int
  mbstd_group_size: int
  learning_rate: float
  r1_gamma: float
  ema_kimg: float
  ema_rampup: float | None
  kimg: int
  ref_gpus: int
  pl_weight: float = 2.0
  style_mixing_prob: float = 0.9


# name: (ref_gpus, kimg, batch, mbstd, fmaps, lr, gamma, ema_kimg, ema_rampup, map).
# None marks the `auto` formulas.
_TABLE: dict[str, tuple[Any, ...]] = {
  "auto": (None, 25000, None, None, None, None, None, None, 0.05, 2),
  "stylegan2": (8, 25000, 32, 4, 1.0, 0.002, 10.0, 10.0, None, 8),
  "paper256": (8, 25000, 64, 8, 0.5, 0.0025, 1.0, 20.0, None, 8),
  "paper512": (8, 25000, 64, 8, 1.0, 0.0025, 0.5, 20.0, None, 8),
  "paper1024": (8, 25000, 32, 4, 1.0, 0.002, 2.0, 10.0, None, 8),
  "cifar": (2, 100000, 64, 32, 1.0, 0.0025, 0.01, 500.0, 0.05, 2),
  "demo": (None, 25000, None, None, None, None, None, None, 0.05, 2),
}


def _check_preset(preset: str) -> None:
  if preset not in PRESETS:
    raise ValueError(f"unknown GAN preset {preset!r}; expected one of {', '.join(PRESETS)}")


def training_config(preset: str, resolution: int, gpus: int = 1) -> TrainingConfig:
  """The optimisation settings the official `train.py` derives for `preset`."""
  _check_preset(preset)
  ref_gpus, kimg, batch, mbstd, _, lr, gamma, ema_kimg, ema_rampup, _ = _TABLE[preset]
  if ref_gpus is None:  # auto (and demo): formulas of train.py.
    ref_gpus = gpus
    batch = max(min(gpus * min(4096 // resolution, 32), 64), gpus)
    mbstd = min(batch // gpus, 4)
    lr = 0.002 if resolution >= 1024 else 0.0025
    gamma = 0.0002 * resolution**2 / batch
    ema_kimg = batch * 10 / 32
  cifar = preset == "cifar"
  return TrainingConfig(
    batch=batch,
    mbstd_group_size=mbstd,
    learning_rate=lr,
    r1_gamma=gamma,
    ema_kimg=ema_kimg,
    ema_rampup=ema_rampup,
    kimg=kimg,
    ref_gpus=ref_gpus,
    pl_weight=0.0 if cifar else 2.0,
    style_mixing_prob=0.0 if cifar else 0.9,
  )


def network_config(
  preset: str,
  resolution: int,
  c_dim: int = 0,
  img_channels: int = 3,
  gpus: int = 1,
  **overrides: Any,
) -> NetworkConfig:
  """Resolves `preset` at `resolution` as the official train.py does; `overrides` win."""
  _check_preset(preset)
  fmaps = _TABLE[preset][4]
  mapping_layers = _TABLE[preset][9]
  if fmaps is None:
    fmaps = 1.0 if resolution >= 512 else 0.5
  train = training_config(preset, resolution, gpus)
  fields: dict[str, Any] = dict(
    resolution=resolution,
    img_channels=img_channels,
    c_dim=c_dim,
    channel_base=int(fmaps * 32768),
    channel_max=512,
    mapping_layers=mapping_layers,
    mbstd_group_size=train.mbstd_group_size,
    num_fp16_res=4,
    conv_clamp=256,
    style_mixing_prob=train.style_mixing_prob,
  )
  if preset == "cifar":
    fields["d_architecture"] = "orig"
  if preset == "demo":
    fields.update(z_dim=128, w_dim=128, channel_max=128, num_fp16_res=0)
  fields.update(overrides)
  return NetworkConfig(**fields)
