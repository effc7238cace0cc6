"""Official StyleGAN2-ADA TF1 network pickles -> tfpets networks.

A TF1 snapshot is a pickle of the tuple (G, D, Gs) of `dnnlib.tflib.network.Network` objects (or a
single Gs). Each unpickles here into an inert `TFNetworkStub` holding the pickled state (version,
name, static_kwargs, components, variables); `build_module_src` is never executed. The network
configuration comes from `static_kwargs` with the official defaults (as the official `legacy.py`
reads them), and every variable is checked against the network built from it.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import numpy as np

from tfpets.gan.importers import common, names
from tfpets.importers.safe_unpickle import BASE_GLOBALS, PickleFormatError

MIN_VERSION = 4


class TFNetworkStub:
  """Inert stand-in for `dnnlib.tflib.network.Network`: keeps the pickled state, runs nothing."""

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, dict):
      raise PickleFormatError(f"a dnnlib Network state must be a dict, got {type(state).__name__}")
    self.state = state

  @property
  def version(self) -> int:
    return int(self.state.get("version", 0))

  @property
  def name(self) -> str:
    return str(self.state.get("name", "?"))

  @property
  def static_kwargs(self) -> dict[str, Any]:
    return dict(self.state.get("static_kwargs") or {})

  @property
  def components(self) -> dict[str, Any]:
    return dict(self.state.get("components") or {})

  @property
  def variables(self) -> list[tuple[str, Any]]:
    return list(self.state.get("variables") or [])


class EasyDictStub(dict):
  """Stand-in for `dnnlib.util.EasyDict` (a dict with attribute access)."""

  def __setstate__(self, state: Any) -> None:
    if isinstance(state, dict):
      self.update(state)


TF_GLOBALS: dict[tuple[str, str], Any] = {
  **BASE_GLOBALS,
  ("dnnlib.tflib.network", "Network"): TFNetworkStub,
  ("dnnlib.util", "EasyDict"): EasyDictStub,
  ("dnnlib", "EasyDict"): EasyDictStub,
}

# TF kwarg -> NetworkConfig field, with the official default used when the kwarg is absent.
_G_FIELDS = {
  "latent_size": ("z_dim", 512),
  "label_size": ("c_dim", 0),
  "dlatent_size": ("w_dim", 512),
  "resolution": ("resolution", 1024),
  "num_channels": ("img_channels", 3),
  "mapping_layers": ("mapping_layers", 8),
  "label_fmaps": ("embed_features", None),
  "mapping_fmaps": ("mapping_features", None),
  "mapping_lrmul": ("mapping_lr", 0.01),
  "fmap_base": ("channel_base", 16384),
  "fmap_max": ("channel_max", 512),
  "num_fp16_res": ("num_fp16_res", 0),
  "conv_clamp": ("conv_clamp", None),
  "architecture": ("g_architecture", "skip"),
  "resample_kernel": ("resample_filter", [1, 3, 3, 1]),
  "use_noise": ("use_noise", True),
}
_D_FIELDS = {
  "label_size": ("c_dim", 0),
  "resolution": ("resolution", 1024),
  "num_channels": ("img_channels", 3),
  "architecture": ("d_architecture", "resnet"),
  "fmap_base": ("channel_base", 16384),
  "fmap_max": ("channel_max", 512),
  "num_fp16_res": ("num_fp16_res", 0),
  "conv_clamp": ("conv_clamp", None),
  "mapping_fmaps": ("cmap_dim", None),
  "mapping_layers": ("d_mapping_layers", 0),
  "mapping_lrmul": ("d_mapping_lr", 0.1),
  "mbstd_group_size": ("mbstd_group_size", None),
  "mbstd_num_features": ("mbstd_num_channels", 1),
  "resample_kernel": ("resample_filter", [1, 3, 3, 1]),
}
# Kwargs that must keep the value tfpets implements.
_FIXED = {
  "nonlinearity": "lrelu",
  "mapping_nonlinearity": "lrelu",
  "fmap_decay": 1,
  "fmap_min": 1,
  "normalize_latents": True,
  "dtype": "float32",
  "fmap_const": None,
  "use_pagan": False,
  "use_spectral_norm": False,
  "adaptive_dropout": 0,
  "score_max": 1,
  "score_size": 1,
}
# Kwargs that only affect how the official code runs the network, not its variables.
_RUNTIME_ONLY = {
  "truncation_psi",
  "truncation_cutoff",
  "truncation_psi_val",
  "truncation_cutoff_val",
  "structure",
  "fused_modconv",
  "randomize_noise",
  "conditioning",
  "freeze_layers",
  "augment_strength",
  "pagan_num",
  "pagan_fade",
  # Read by _generator_fields.
  "style_mixing_prob",
  "dlatent_avg_beta",
  "w_avg_beta",
}


def _config_fields(
  net: TFNetworkStub, table: Mapping[str, tuple[str, Any]], source: str
) -> dict[str, Any]:
  kwargs = net.static_kwargs
  fields = {field: kwargs.get(tf_name, default) for tf_name, (field, default) in table.items()}
  fields["channel_base"] = int(fields["channel_base"]) * 2
  if fields["resample_filter"] is None:
    fields["resample_filter"] = [1, 1]  # TF: None = box filter.
  for key, value in kwargs.items():
    if key in table or key in _RUNTIME_ONLY:
      continue
    if key in _FIXED:
      if value != _FIXED[key]:
        raise PickleFormatError(
          f"{source}: network {net.name} has {key}={value!r}; tfpets "
          f"implements only {key}={_FIXED[key]!r}"
        )
      continue
    raise PickleFormatError(f"{source}: network {net.name} has unknown TensorFlow kwarg {key!r}")
  return fields


def _generator_fields(net: TFNetworkStub, source: str) -> dict[str, Any]:
  fields = _config_fields(net, _G_FIELDS, source)
  kwargs = net.static_kwargs
  if fields["embed_features"] is None and fields["c_dim"]:
    fields["embed_features"] = fields["z_dim"]  # TF: label_fmaps defaults to latent_size.
  beta = kwargs.get("dlatent_avg_beta", kwargs.get("w_avg_beta", 0.995))
  fields["w_avg_beta"] = 1.0 if beta is None else float(beta)  # None: the average stays frozen.
  mixing = kwargs.get("style_mixing_prob", 0.9)
  fields["style_mixing_prob"] = 0.0 if mixing is None else float(mixing)
  return fields


def _discriminator_fields(net: TFNetworkStub, source: str) -> dict[str, Any]:
  fields = _config_fields(net, _D_FIELDS, source)
  if fields["c_dim"] and fields["cmap_dim"] is None:
    fmap_base, fmap_max = net.static_kwargs.get("fmap_base", 16384), fields["channel_max"]
    fields["cmap_dim"] = int(min(fmap_base, fmap_max))  # TF: nf(0)
  return fields


def tf_params(net: TFNetworkStub) -> dict[str, np.ndarray]:
  """{'mapping/Dense0/weight': array, ...}: own variables plus components' under '<name>/'."""
  params: dict[str, np.ndarray] = {}

  def collect(prefix: str, node: Any) -> None:
    if not isinstance(node, TFNetworkStub):
      raise PickleFormatError(f"component {prefix!r} is not a dnnlib Network")
    for name, value in node.variables:
      params[prefix + str(name)] = value
    for name, component in node.components.items():
      collect(f"{prefix}{name}/", component)

  collect("", net)
  return params


def _same(x: np.ndarray) -> np.ndarray:
  return x


def _plus_one(x: np.ndarray) -> np.ndarray:
  return x + 1  # TF stores the modulation bias minus its initial 1 (official legacy.py adds it).


def _generator_source(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  """TF variable and conversion for the official name of a generator variable."""
  if name == "mapping.w_avg":
    return "dlatent_avg", _same
  match = re.fullmatch(r"mapping\.(embed|fc(\d+))\.(weight|bias)", name)
  if match:
    scope = "LabelEmbed" if match.group(1) == "embed" else f"Dense{match.group(2)}"
    return f"mapping/{scope}/{match.group(3)}", _same
  if name == "synthesis.b4.const":
    return "synthesis/4x4/Const/const", lambda x: x[0].transpose(1, 2, 0)
  match = re.fullmatch(r"synthesis\.b(\d+)\.(conv0|conv1|torgb|skip)\.(.+)", name)
  if not match:
    raise PickleFormatError(f"no TF counterpart for generator variable {name}")
  res, layer, var = int(match.group(1)), match.group(2), match.group(3)
  log2 = int(np.log2(res))
  scope = {
    "conv0": "Conv0_up",
    "conv1": "Conv1" if res > 4 else "Conv",
    "torgb": "ToRGB",
    "skip": "Skip",
  }[layer]
  prefix = f"synthesis/{res}x{res}/{scope}"
  if var == "noise_const":
    index = 0 if res == 4 else 2 * log2 - (5 if layer == "conv0" else 4)
    return f"synthesis/noise{index}", lambda x: x[0, 0]
  if var == "affine.weight":
    return f"{prefix}/mod_weight", _same
  if var == "affine.bias":
    return f"{prefix}/mod_bias", _plus_one
  return f"{prefix}/{var}", _same


def _discriminator_source(
  name: str, epilogue_channels: int
) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  """TF variable and conversion for the official name of a discriminator variable."""
  match = re.fullmatch(r"b(\d+)\.(fromrgb|conv0|conv1|skip|conv|fc|out)\.(weight|bias)", name)
  if match:
    res, layer, var = int(match.group(1)), match.group(2), match.group(3)
    if layer == "out":
      return f"Output/{var}", _same
    if layer == "fc":
      if var == "weight":
        return "4x4/Dense0/weight", lambda x: names.nchw_to_nhwc_dense(x, epilogue_channels, 4)
      return "4x4/Dense0/bias", _same
    scope = {
      "fromrgb": "FromRGB",
      "conv0": "Conv0",
      "conv1": "Conv1_down",
      "skip": "Skip",
      "conv": "Conv",
    }[layer]
    return f"{res}x{res}/{scope}/{var}", _same
  match = re.fullmatch(r"mapping\.(embed|fc(\d+))\.(weight|bias)", name)
  if match:
    scope = "LabelEmbed" if match.group(1) == "embed" else f"Mapping{match.group(2)}"
    return f"{scope}/{match.group(3)}", _same
  raise PickleFormatError(f"no TF counterpart for discriminator variable {name}")


def _assign_from_tf(
  model: Any, net: TFNetworkStub, kind: str, source: str, notes: list[str]
) -> None:
  params = tf_params(net)
  is_discriminator = kind == "D"
  if is_discriminator:
    variables = names.discriminator_variables(model)
  else:
    variables = names.generator_variables(model)
  used = set()

  def read(name: str) -> np.ndarray:
    if is_discriminator:
      tf_name, convert = _discriminator_source(name, model.b4.in_channels)
    else:
      tf_name, convert = _generator_source(name)
    if tf_name not in params:
      raise PickleFormatError(
        f"{source}: network {net.name} lacks variable {tf_name!r} (needed for {name})"
      )
    used.add(tf_name)
    return convert(common.as_float_array(params[tf_name], source, tf_name))

  common.assign_variables(source, f"{net.name}", variables, read)
  unused = sorted(set(params) - used)
  if unused:
    notes.append(f"{net.name}: ignored TF variables {unused}")


def is_tf_pickle(data: Any) -> bool:
  if isinstance(data, TFNetworkStub):
    return True
  return (
    isinstance(data, tuple)
    and len(data) == 3
    and all(isinstance(net, TFNetworkStub) for net in data)
  )


def convert_tf(data: Any, source: str) -> common.ConvertedNetworks:
  """(G, D, Gs) or a single Gs stub -> ConvertedNetworks with 'G', 'D', 'G_ema'."""
  nets = (
    {"G_ema": data} if isinstance(data, TFNetworkStub) else dict(zip(("G", "D", "G_ema"), data))
  )
  for key, net in nets.items():
    if net.version < MIN_VERSION:
      raise PickleFormatError(
        f"{source}: network {net.name} has pickle version {net.version}; "
        f"tfpets reads version {MIN_VERSION} and later"
      )
  g_net = nets["G_ema"]
  g_fields = _generator_fields(g_net, source)
  if "G" in nets and _generator_fields(nets["G"], source) != g_fields:
    raise PickleFormatError(f"{source}: G and Gs have different settings")
  d_fields = _discriminator_fields(nets["D"], source) if "D" in nets else None
  config = common.merge_configs(source, g_fields, d_fields)
  notes: list[str] = []
  models = common.build_networks(
    config, nets, lambda model, net, kind, _: _assign_from_tf(model, net, kind, source, notes)
  )
  return common.ConvertedNetworks(config=config, networks=models, source_format="tf", notes=notes)
