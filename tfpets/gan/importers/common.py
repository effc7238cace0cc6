"""Pieces shared by the TF1 and PyTorch pickle importers."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import keras
import numpy as np

from tfpets.gan import networks
from tfpets.gan.presets import NetworkConfig
from tfpets.importers.safe_unpickle import PickleFormatError

# Fields the generator and the discriminator of one pickle must agree on.
SHARED_FIELDS = (
  "resolution",
  "img_channels",
  "c_dim",
  "channel_base",
  "channel_max",
  "num_fp16_res",
  "conv_clamp",
  "resample_filter",
)
# Fields for which None is a meaningful value rather than "not given".
_NULLABLE = (
  "mapping_features",
  "embed_features",
  "w_avg_beta",
  "mbstd_group_size",
  "cmap_dim",
  "conv_clamp",
)


@dataclasses.dataclass
class ConvertedNetworks:
  """Networks read from a pickle. `networks` has 'G', 'D', 'G_ema' (those present in the file)."""

  config: NetworkConfig
  networks: dict[str, keras.Model]
  source_format: str
  notes: list[str] = dataclasses.field(default_factory=list)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def merge_configs(
  source: str, generator: Mapping[str, Any] | None, discriminator: Mapping[str, Any] | None
) -> NetworkConfig:
  """One NetworkConfig from the generator's and the discriminator's fields."""
  if generator and discriminator:
    for name in SHARED_FIELDS:
      g_value, d_value = generator.get(name), discriminator.get(name)
      if (
        g_value is not None and d_value is not None and _normalized(g_value) != _normalized(d_value)
      ):
        raise PickleFormatError(
          f"{source}: generator and discriminator disagree on {name} ({g_value!r} vs "
          f"{d_value!r}); tfpets needs one value for both"
        )
  fields = {**(discriminator or {}), **(generator or {})}
  fields = {k: v for k, v in fields.items() if v is not None or k in _NULLABLE}
  try:
    return NetworkConfig(**fields)
  except (TypeError, ValueError) as e:
    raise PickleFormatError(f"{source}: unsupported network configuration: {e}") from e


def _normalized(value: Any) -> Any:
  if isinstance(value, (list, tuple)):
    return tuple(float(v) for v in value)
  return value


def as_float_array(value: Any, source: str, name: str) -> np.ndarray:
  array = np.asarray(value)
  if array.dtype.kind not in "fiub":
    raise PickleFormatError(f"{source}: {name} is not a numeric array (dtype {array.dtype})")
  return array.astype(np.float32)


def assign_variables(
  source: str, what: str, variables: Mapping[str, keras.Variable], read: Callable[[str], np.ndarray]
) -> None:
  """Assigns `read(name)` (already in tfpets layout) to every variable, checking shapes."""
  for name, variable in variables.items():
    value = read(name)
    if tuple(value.shape) != tuple(variable.shape):
      raise PickleFormatError(
        f"{source}: {what} variable {name} has shape {tuple(value.shape)} but the network "
        f"described by the pickle's settings needs {tuple(variable.shape)}"
      )
    variable.assign(value)


def build_model(kind: str, config: NetworkConfig, name: str) -> keras.Model:
  if kind == "D":
    return networks.Discriminator(config, name=name)
  return networks.Generator(config, name=name)


def build_networks(
  config: NetworkConfig,
  official: dict[str, Any],
  assign: Callable[[keras.Model, Any, str, str], None],
) -> dict[str, keras.Model]:
  """A tfpets model per official network ('D' a discriminator, the others generators), each
  filled by assign(model, official network, kind, key)."""
  models = {}
  for key, net in official.items():
    kind = "D" if key == "D" else "G"
    models[key] = build_model(kind, config, key)
    assign(models[key], net, kind, key)
  return models
