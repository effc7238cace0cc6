"""Writers of tiny official-format network pickles, built in the official formats (no TF1, dnnlib, torch).

* TF1 (stylegan2-ada dnnlib/tflib/network.py, training/networks.py): a pickled tuple (G, D, Gs) of objects whose class pickles as
  `dnnlib.tflib.network.Network`, with the official `__getstate__` keys; variables are
  (name, ndarray) lists, G holding `mapping` and `synthesis` components.
* PyTorch (stylegan2-ada-pytorch training/training_loop.py, legacy.py): a plain pickle of {G, D, G_ema, augment_pipe, training_set_kwargs}
  whose modules reduce to `torch_utils.persistence._reconstruct_persistent_obj(meta)`, parameters
  to `torch._utils._rebuild_parameter`, tensors to `torch._utils._rebuild_tensor_v2` and storages
  to `torch.storage._load_from_bytes(<legacy torch.save bytes>)` (`tests/torch_files.py`); or
  the same object in a `torch.save` zip archive (`torch_files.write_torch_zip`). The PyTorch
  tensors are derived from the TF variables with the official name/layout map (legacy.py:
  transposes, flips, mod_bias + 1).
"""

from __future__ import annotations

import collections
import copyreg
import math
from typing import Any, Mapping

import numpy as np

from tests.torch_files import GlobalStandIn, Parameter, Tensor, dumps, global_ref

SOURCE_MARKER = "stylegan_embedded_source_ran"


def embedded_source(marker_path: str) -> str:
  """Module source that, if anything ever executed it, would create `marker_path`."""
  return f"open({marker_path!r}, 'w').write({SOURCE_MARKER!r})\n"


# ------------------------------------------------------------------------------------------------
# Random TF1 variables for a configuration, named as stylegan2-ada training/networks.py names them.
# ------------------------------------------------------------------------------------------------


def nf(cfg: Mapping[str, Any], stage: int) -> int:
  return int(np.clip(int(cfg["fmap_base"] / 2.0**stage), 1, cfg["fmap_max"]))


def _modconv(
  rng, out: dict, scope: str, w_dim: int, k: int, cin: int, cout: int, noise: bool
) -> None:
  out[f"{scope}/weight"] = rng.standard_normal([k, k, cin, cout])
  out[f"{scope}/mod_weight"] = rng.standard_normal([w_dim, cin])
  out[f"{scope}/mod_bias"] = 0.3 * rng.standard_normal([cin])
  if noise:
    out[f"{scope}/noise_strength"] = np.asarray(0.5 * rng.standard_normal())
  out[f"{scope}/bias"] = 0.5 * rng.standard_normal([cout])


def _dense(rng, out: dict, scope: str, fan_in: int, units: int) -> None:
  out[f"{scope}/weight"] = rng.standard_normal([fan_in, units])
  out[f"{scope}/bias"] = 0.5 * rng.standard_normal([units])


def _conv(rng, out: dict, scope: str, k: int, cin: int, cout: int, bias: bool = True) -> None:
  out[f"{scope}/weight"] = rng.standard_normal([k, k, cin, cout])
  if bias:
    out[f"{scope}/bias"] = 0.5 * rng.standard_normal([cout])


def generator_variables(cfg: Mapping[str, Any], seed: int) -> tuple[dict, dict, dict]:
  """(G own, G_mapping, G_synthesis) TF variables, float32, for TF kwargs `cfg`."""
  rng = np.random.default_rng(seed)
  z, w, c = cfg["latent_size"], cfg["dlatent_size"], cfg.get("label_size", 0)
  arch = cfg.get("architecture", "skip")
  log2 = int(np.log2(cfg["resolution"]))
  mapping: dict[str, np.ndarray] = {}
  if c:
    _dense(rng, mapping, "LabelEmbed", c, z)
  for i in range(cfg["mapping_layers"]):
    _dense(rng, mapping, f"Dense{i}", (z + (z if c else 0)) if i == 0 else w, w)
  synthesis: dict[str, np.ndarray] = {}
  for i in range(2 * log2 - 3):
    size = 2 ** ((i + 5) // 2)
    synthesis[f"noise{i}"] = rng.standard_normal([1, 1, size, size])
  synthesis["4x4/Const/const"] = rng.standard_normal([1, nf(cfg, 1), 4, 4])
  _modconv(rng, synthesis, "4x4/Conv", w, 3, nf(cfg, 1), nf(cfg, 1), True)
  if arch == "skip":
    _modconv(rng, synthesis, "4x4/ToRGB", w, 1, nf(cfg, 1), cfg["num_channels"], False)
  for res in range(3, log2 + 1):
    scope = f"{2**res}x{2**res}"
    cin, cout = nf(cfg, res - 2), nf(cfg, res - 1)
    _modconv(rng, synthesis, f"{scope}/Conv0_up", w, 3, cin, cout, True)
    _modconv(rng, synthesis, f"{scope}/Conv1", w, 3, cout, cout, True)
    if arch == "skip" or res == log2:
      _modconv(rng, synthesis, f"{scope}/ToRGB", w, 1, cout, cfg["num_channels"], False)
    if arch == "resnet":
      _conv(rng, synthesis, f"{scope}/Skip", 1, cin, cout, bias=False)
  own = {"dlatent_avg": 0.5 * rng.standard_normal([w])}
  as32 = lambda d: {k: np.asarray(v, np.float32) for k, v in d.items()}
  return as32(own), as32(mapping), as32(synthesis)


def discriminator_variables(cfg: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  arch = cfg.get("architecture", "resnet")
  log2 = int(np.log2(cfg["resolution"]))
  mbstd = cfg.get("mbstd_num_features", 1)
  out: dict[str, np.ndarray] = {}
  for res in range(log2, 2, -1):
    scope = f"{2**res}x{2**res}"
    if arch == "skip" or res == log2:
      _conv(rng, out, f"{scope}/FromRGB", 1, cfg["num_channels"], nf(cfg, res - 1))
    _conv(rng, out, f"{scope}/Conv0", 3, nf(cfg, res - 1), nf(cfg, res - 1))
    _conv(rng, out, f"{scope}/Conv1_down", 3, nf(cfg, res - 1), nf(cfg, res - 2))
    if arch == "resnet":
      _conv(rng, out, f"{scope}/Skip", 1, nf(cfg, res - 1), nf(cfg, res - 2), bias=False)
  if arch == "skip":
    _conv(rng, out, "4x4/FromRGB", 1, cfg["num_channels"], nf(cfg, 1))
  _conv(rng, out, "4x4/Conv", 3, nf(cfg, 1) + mbstd, nf(cfg, 1))
  _dense(rng, out, "4x4/Dense0", nf(cfg, 1) * 16, nf(cfg, 0))
  label = cfg.get("label_size", 0)
  cmap = cfg.get("mapping_fmaps") or nf(cfg, 0)
  _dense(rng, out, "Output", nf(cfg, 0), cmap if label else 1)
  if label:
    _dense(rng, out, "LabelEmbed", label, cmap)
    for i in range(cfg.get("mapping_layers", 0)):
      _dense(rng, out, f"Mapping{i}", cmap, cmap)
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def flat_generator_params(own: dict, mapping: dict, synthesis: dict) -> dict[str, np.ndarray]:
  """The names the official legacy.py uses: own vars, 'mapping/...', 'synthesis/...'."""
  return {
    **own,
    **{f"mapping/{k}": v for k, v in mapping.items()},
    **{f"synthesis/{k}": v for k, v in synthesis.items()},
  }


# ------------------------------------------------------------------------------------------------
# TF1 pickle.
# ------------------------------------------------------------------------------------------------


class TFNetwork(GlobalStandIn):
  """Pickles like dnnlib.tflib.network.Network: NEWOBJ of that class + BUILD with its state."""

  pickle_as = ("dnnlib.tflib.network", "Network")

  def __init__(
    self,
    name: str,
    static_kwargs: Mapping[str, Any],
    variables: Mapping[str, Any],
    components: Mapping[str, "TFNetwork"] | None,
    build_func_name: str,
    module_src: str,
    version: int = 5,
  ):
    self._state = {
      "version": version,
      "name": name,
      "static_kwargs": dict(static_kwargs),
      "components": dict(components or {}),
      "build_module_src": module_src,
      "build_func_name": build_func_name,
      "variables": list(variables.items()),
      "input_shapes": [[None, 1]],
      "output_shapes": [[None, 1]],
      "input_names": ["x"],
      "output_names": ["y"],
    }

  def __reduce_ex__(self, protocol):
    return (copyreg.__newobj__, (type(self),), self._state)


def tf_networks(
  g_kwargs: Mapping[str, Any], d_kwargs: Mapping[str, Any], seed: int, module_src: str
) -> tuple[tuple[TFNetwork, TFNetwork, TFNetwork], dict, dict, dict]:
  """((G, D, Gs) stand-ins, Gs params, D params, G params); G and Gs differ."""
  g_parts = generator_variables(g_kwargs, seed)
  gs_parts = generator_variables(g_kwargs, seed + 1)
  d_vars = discriminator_variables(d_kwargs, seed + 2)

  def make_g(name: str, parts: tuple[dict, dict, dict]) -> TFNetwork:
    own, mapping, synthesis = parts
    comps = {
      "mapping": TFNetwork(
        "G_mapping", g_kwargs, mapping, None, "training.networks.G_mapping", module_src
      ),
      "synthesis": TFNetwork(
        "G_synthesis", g_kwargs, synthesis, None, "training.networks.G_synthesis", module_src
      ),
    }
    return TFNetwork(name, g_kwargs, own, comps, "training.networks.G_main", module_src)

  nets = (
    make_g("G", g_parts),
    TFNetwork("D", d_kwargs, d_vars, None, "training.networks.D_main", module_src),
    make_g("Gs", gs_parts),
  )
  return nets, flat_generator_params(*gs_parts), d_vars, flat_generator_params(*g_parts)


def write_tf_pickle(path, g_kwargs, d_kwargs, seed=0, module_src="", protocol=3):
  """Writes (G, D, Gs); returns (Gs params, D params, G params) in TF naming."""
  nets, gs_params, d_params, g_params = tf_networks(g_kwargs, d_kwargs, seed, module_src)
  path.write_bytes(dumps(nets, protocol=protocol))
  return gs_params, d_params, g_params


# ------------------------------------------------------------------------------------------------
# PyTorch pickle.
# ------------------------------------------------------------------------------------------------

RECONSTRUCT = global_ref("torch_utils.persistence", "_reconstruct_persistent_obj")


class EasyDict(GlobalStandIn, dict):
  """Pickles as dnnlib.util.EasyDict (NEWOBJ + SETITEMS), like the official kwargs dicts."""

  pickle_as = ("dnnlib.util", "EasyDict")


class Module:
  """Pickles like a torch_utils.persistence module: _reconstruct_persistent_obj(meta)."""

  def __init__(
    self, class_name: str, module_src: str, init_kwargs: Mapping[str, Any] | None = None
  ):
    self.class_name = class_name
    self.module_src = module_src
    self.parameters: dict[str, Any] = collections.OrderedDict()
    self.buffers: dict[str, Any] = collections.OrderedDict()
    self.modules: dict[str, Module] = collections.OrderedDict()
    self.init_kwargs = EasyDict(init_kwargs or {})
    self.attributes: dict[str, Any] = {}

  def child(self, name: str) -> "Module":
    if name not in self.modules:
      self.modules[name] = Module(
        _CLASS_NAMES.get(name.rstrip("0123456789"), "Module"), self.module_src
      )
    return self.modules[name]

  def __reduce_ex__(self, protocol):
    state = {
      "training": False,
      "_parameters": self.parameters,
      "_buffers": self.buffers,
      "_non_persistent_buffers_set": set(),
      "_backward_hooks": collections.OrderedDict(),
      "_forward_hooks": collections.OrderedDict(),
      "_forward_pre_hooks": collections.OrderedDict(),
      "_state_dict_hooks": collections.OrderedDict(),
      "_load_state_dict_pre_hooks": collections.OrderedDict(),
      "_modules": self.modules,
      "_init_args": (),
      "_init_kwargs": self.init_kwargs,
      **self.attributes,
    }
    meta = dict(
      type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=state
    )
    return (RECONSTRUCT, (meta,))


_CLASS_NAMES = {
  "mapping": "MappingNetwork",
  "synthesis": "SynthesisNetwork",
  "b": "Block",
  "conv": "SynthesisLayer",
  "torgb": "ToRGBLayer",
  "affine": "FullyConnectedLayer",
  "fc": "FullyConnectedLayer",
  "embed": "FullyConnectedLayer",
  "fromrgb": "Conv2dLayer",
  "skip": "Conv2dLayer",
  "out": "FullyConnectedLayer",
}
_BUFFERS = ("w_avg", "noise_const", "resample_filter")


def module_tree(root: Module, tensors: Mapping[str, np.ndarray]) -> Module:
  """Hangs flat state-dict tensors ('a.b.weight') on nested Modules under `root`."""
  for name, value in tensors.items():
    *path, leaf = name.split(".")
    node = root
    for part in path:
      node = node.child(part)
    if leaf in _BUFFERS:
      node.buffers[leaf] = Tensor(value)
    else:
      node.parameters[leaf] = Parameter(value)
    if leaf == "weight" and np.ndim(value) == 4:
      node.attributes["weight_gain"] = np.float64(1 / math.sqrt(np.prod(np.shape(value)[1:])))
  return root


def torch_generator_tensors(g: Mapping[str, np.ndarray], resolution: int) -> dict[str, np.ndarray]:
  """legacy.py's TF -> PyTorch map for a flat TF generator parameter dict."""
  out = {"mapping.w_avg": g["dlatent_avg"]}
  for name, value in g.items():
    if name.startswith("mapping/"):
      scope, var = name.split("/")[1:]
      key = "embed" if scope == "LabelEmbed" else "fc" + scope[len("Dense") :]
      out[f"mapping.{key}.{var}"] = value.T if var == "weight" else value
  out["synthesis.b4.const"] = g["synthesis/4x4/Const/const"][0]
  log2 = int(np.log2(resolution))
  for res in [2**i for i in range(2, log2 + 1)]:
    layers = (
      {"conv1": "4x4/Conv"}
      if res == 4
      else {"conv0": f"{res}x{res}/Conv0_up", "conv1": f"{res}x{res}/Conv1"}
    )
    for layer, scope in layers.items():
      tf_scope = f"synthesis/{scope}"
      weight = g[f"{tf_scope}/weight"]
      if layer == "conv0":
        weight = weight[::-1, ::-1]
      idx = 0 if res == 4 else int(np.log2(res)) * 2 - (5 if layer == "conv0" else 4)
      prefix = f"synthesis.b{res}.{layer}"
      out[f"{prefix}.weight"] = weight.transpose(3, 2, 0, 1)
      out[f"{prefix}.bias"] = g[f"{tf_scope}/bias"]
      out[f"{prefix}.noise_const"] = g[f"synthesis/noise{idx}"][0, 0]
      out[f"{prefix}.noise_strength"] = g[f"{tf_scope}/noise_strength"]
      out[f"{prefix}.affine.weight"] = g[f"{tf_scope}/mod_weight"].T
      out[f"{prefix}.affine.bias"] = g[f"{tf_scope}/mod_bias"] + 1
      out[f"{prefix}.resample_filter"] = np.full([4, 4], 1 / 16, np.float32)
    tf_scope = f"synthesis/{res}x{res}/ToRGB"
    if f"{tf_scope}/weight" in g:
      prefix = f"synthesis.b{res}.torgb"
      out[f"{prefix}.weight"] = g[f"{tf_scope}/weight"].transpose(3, 2, 0, 1)
      out[f"{prefix}.bias"] = g[f"{tf_scope}/bias"]
      out[f"{prefix}.affine.weight"] = g[f"{tf_scope}/mod_weight"].T
      out[f"{prefix}.affine.bias"] = g[f"{tf_scope}/mod_bias"] + 1
    skip = f"synthesis/{res}x{res}/Skip/weight"
    if skip in g:
      out[f"synthesis.b{res}.skip.weight"] = g[skip][::-1, ::-1].transpose(3, 2, 0, 1)
  return {k: np.array(v, np.float32, order="C") for k, v in out.items()}


def torch_discriminator_tensors(d: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  scopes = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip"}
  for name, value in d.items():
    parts = name.split("/")
    if parts[0] == "4x4":
      key = {"FromRGB": "fromrgb", "Conv": "conv", "Dense0": "fc"}[parts[1]]
      out[f"b4.{key}.{parts[2]}"] = value
    elif parts[0] == "Output":
      out[f"b4.out.{parts[1]}"] = value
    elif parts[0] == "LabelEmbed":
      out[f"mapping.embed.{parts[1]}"] = value
    elif parts[0].startswith("Mapping"):
      out[f"mapping.fc{parts[0][len('Mapping') :]}.{parts[1]}"] = value
    else:
      res = parts[0].split("x")[0]
      out[f"b{res}.{scopes[parts[1]]}.{parts[2]}"] = value
  for key, value in list(out.items()):
    if key.endswith(".weight"):
      out[key] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return {k: np.array(v, np.float32, order="C") for k, v in out.items()}


def torch_snapshot(
  g_kwargs: Mapping[str, Any],
  d_kwargs: Mapping[str, Any],
  g_params: Mapping[str, np.ndarray],
  d_params: Mapping[str, np.ndarray],
  g_ema_params: Mapping[str, np.ndarray],
  module_src: str,
) -> dict[str, Any]:
  """{G, D, G_ema, augment_pipe, training_set_kwargs} of stand-ins, as training_loop.py dumps."""
  resolution = g_kwargs["img_resolution"]
  g = module_tree(
    Module("Generator", module_src, g_kwargs), torch_generator_tensors(g_params, resolution)
  )
  g_ema = module_tree(
    Module("Generator", module_src, g_kwargs), torch_generator_tensors(g_ema_params, resolution)
  )
  d = module_tree(
    Module("Discriminator", module_src, d_kwargs), torch_discriminator_tensors(d_params)
  )
  pipe = Module("AugmentPipe", module_src, {"xflip": 1, "rotate90": 1})
  pipe.buffers["p"] = Tensor(np.asarray(0.25, np.float32))
  return {
    "training_set_kwargs": EasyDict(resolution=resolution, use_labels=False),
    "G": g,
    "D": d,
    "G_ema": g_ema,
    "augment_pipe": pipe,
  }


def write_torch_pickle(path, snapshot: Mapping[str, Any], protocol: int = 3) -> None:
  path.write_bytes(dumps(dict(snapshot), protocol=protocol))
