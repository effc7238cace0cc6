"""Official StyleGAN2-ADA PyTorch network pickles -> tfpets networks, without importing torch.

The official training loop writes `pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...))`. Every module is a `torch_utils.persistence` object that reduces to
`_reconstruct_persistent_obj(meta)` with meta = {type, version, module_src, class_name, state};
here that becomes an inert `PersistentObject` keeping `class_name` and `state` (the module's
`__dict__`) and discarding `module_src` unexecuted. Tensors and their storages
(`torch.storage._load_from_bytes(b)`, `b` a `torch.save` of the storage) are read into NumPy
arrays by `tfpets.importers.torch_file`, which also reads a snapshot saved with `torch.save`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from tfpets.gan.importers import common, names
from tfpets.gan.importers.tf_pickle import EasyDictStub
from tfpets.importers import torch_file
from tfpets.importers.safe_unpickle import PickleFormatError


class PersistentObject:
  """Inert stand-in for a `torch_utils.persistence` object: class name and pickled `__dict__`.

  The embedded `module_src` is dropped without being looked at, let alone executed.
  """

  def __init__(self, meta: Any):
    if not isinstance(meta, dict) or meta.get("type") != "class":
      raise PickleFormatError("persistent object metadata is not a class record")
    self.class_name = str(meta.get("class_name"))
    self.version = meta.get("version")
    state = meta.get("state")
    self.state: dict[str, Any] = dict(state) if isinstance(state, dict) else {}

  @property
  def init_kwargs(self) -> dict[str, Any]:
    return dict(self.state.get("_init_kwargs") or {})

  @property
  def init_args(self) -> tuple[Any, ...]:
    return tuple(self.state.get("_init_args") or ())

  def tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
    """Parameters and buffers of this module and its children, by state-dict name."""
    out = {}
    for group in ("_parameters", "_buffers"):
      for name, value in (self.state.get(group) or {}).items():
        if value is not None:
          out[prefix + name] = value
    for name, child in (self.state.get("_modules") or {}).items():
      if isinstance(child, PersistentObject):
        out.update(child.tensors(f"{prefix}{name}."))
    return out


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
  return PersistentObject(meta)


def torch_globals(source: str) -> dict[tuple[str, str], Any]:
  """Allow-list of a PyTorch network pickle: persistence, tensors, storages, EasyDict, NumPy."""
  return {
    **torch_file.STATE_DICT_GLOBALS,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch.storage", "_load_from_bytes"): lambda data: torch_file.load_storage_bytes(data, source),
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
  }


# ---------------------------------------------------------------------------------------------
# Configuration from the modules' init kwargs (official defaults where a kwarg is absent).
# ---------------------------------------------------------------------------------------------

_G_ARGS = (
  "z_dim",
  "c_dim",
  "w_dim",
  "img_resolution",
  "img_channels",
  "mapping_kwargs",
  "synthesis_kwargs",
)
_D_ARGS = (
  "c_dim",
  "img_resolution",
  "img_channels",
  "architecture",
  "channel_base",
  "channel_max",
  "num_fp16_res",
  "conv_clamp",
  "cmap_dim",
  "block_kwargs",
  "mapping_kwargs",
  "epilogue_kwargs",
)
_IGNORED = {"fp16_channels_last", "freeze_layers", "channels_last"}


def _kwargs(
  module: PersistentObject, signature: tuple[str, ...], source: str, what: str
) -> dict[str, Any]:
  args = module.init_args
  if len(args) > len(signature):
    raise PickleFormatError(f"{source}: {what} has {len(args)} positional init arguments")
  kwargs = dict(zip(signature, args))
  kwargs.update(module.init_kwargs)
  unknown = sorted(set(kwargs) - set(signature))
  if unknown:
    raise PickleFormatError(f"{source}: {what} has unknown init kwargs {unknown}")
  return kwargs


def _check_sub_kwargs(
  kwargs: Mapping[str, Any], allowed: set[str], source: str, what: str
) -> dict[str, Any]:
  kwargs = dict(kwargs or {})
  for key in sorted(kwargs):
    if key in _IGNORED:
      continue
    if key == "activation":
      if kwargs[key] != "lrelu":
        raise PickleFormatError(
          f"{source}: {what} uses activation {kwargs[key]!r}; tfpets implements lrelu"
        )
      continue
    if key == "kernel_size" and kwargs[key] == 3:
      continue
    if key not in allowed:
      raise PickleFormatError(f"{source}: {what} has unsupported setting {key}={kwargs[key]!r}")
  return kwargs


def _generator_fields(module: PersistentObject, source: str) -> dict[str, Any]:
  kwargs = _kwargs(module, _G_ARGS, source, "G")
  mapping = _check_sub_kwargs(
    kwargs.get("mapping_kwargs"),
    {"num_layers", "embed_features", "layer_features", "lr_multiplier", "w_avg_beta"},
    source,
    "G mapping_kwargs",
  )
  synthesis = _check_sub_kwargs(
    kwargs.get("synthesis_kwargs"),
    {
      "channel_base",
      "channel_max",
      "num_fp16_res",
      "conv_clamp",
      "architecture",
      "resample_filter",
      "use_noise",
    },
    source,
    "G synthesis_kwargs",
  )
  return dict(
    z_dim=kwargs["z_dim"],
    c_dim=kwargs["c_dim"],
    w_dim=kwargs["w_dim"],
    resolution=kwargs["img_resolution"],
    img_channels=kwargs["img_channels"],
    mapping_layers=mapping.get("num_layers", 8),
    embed_features=mapping.get("embed_features"),
    mapping_features=mapping.get("layer_features"),
    mapping_lr=mapping.get("lr_multiplier", 0.01),
    w_avg_beta=mapping.get("w_avg_beta", 0.995),
    channel_base=synthesis.get("channel_base", 32768),
    channel_max=synthesis.get("channel_max", 512),
    num_fp16_res=synthesis.get("num_fp16_res", 0),
    conv_clamp=synthesis.get("conv_clamp"),
    g_architecture=synthesis.get("architecture", "skip"),
    resample_filter=synthesis.get("resample_filter", [1, 3, 3, 1]),
    use_noise=synthesis.get("use_noise", True),
  )


def _discriminator_fields(module: PersistentObject, source: str) -> dict[str, Any]:
  kwargs = _kwargs(module, _D_ARGS, source, "D")
  block = _check_sub_kwargs(
    kwargs.get("block_kwargs"), {"resample_filter"}, source, "D block_kwargs"
  )
  mapping = _check_sub_kwargs(
    kwargs.get("mapping_kwargs"),
    {"num_layers", "embed_features", "layer_features", "lr_multiplier"},
    source,
    "D mapping_kwargs",
  )
  epilogue = _check_sub_kwargs(
    kwargs.get("epilogue_kwargs"),
    {"mbstd_group_size", "mbstd_num_channels"},
    source,
    "D epilogue_kwargs",
  )
  cmap_dim = kwargs.get("cmap_dim")
  for key in ("embed_features", "layer_features"):
    if kwargs["c_dim"] and mapping.get(key) not in (None, cmap_dim):
      raise PickleFormatError(
        f"{source}: D mapping {key}={mapping[key]} differs from cmap_dim; "
        "tfpets uses cmap_dim throughout the label mapping"
      )
  return dict(
    c_dim=kwargs["c_dim"],
    resolution=kwargs["img_resolution"],
    img_channels=kwargs["img_channels"],
    d_architecture=kwargs.get("architecture", "resnet"),
    channel_base=kwargs.get("channel_base", 32768),
    channel_max=kwargs.get("channel_max", 512),
    num_fp16_res=kwargs.get("num_fp16_res", 0),
    conv_clamp=kwargs.get("conv_clamp"),
    cmap_dim=cmap_dim,
    d_mapping_layers=mapping.get("num_layers", 8),
    d_mapping_lr=mapping.get("lr_multiplier", 0.01),
    mbstd_group_size=epilogue.get("mbstd_group_size", 4),
    mbstd_num_channels=epilogue.get("mbstd_num_channels", 1),
    resample_filter=block.get("resample_filter", [1, 3, 3, 1]),
  )


def is_torch_pickle(data: Any) -> bool:
  return isinstance(data, dict) and any(
    isinstance(data.get(key), PersistentObject) for key in ("G", "D", "G_ema")
  )


def _expect_class(module: Any, key: str, class_name: str, source: str) -> PersistentObject:
  if not isinstance(module, PersistentObject) or module.class_name != class_name:
    found = getattr(module, "class_name", type(module).__name__)
    raise PickleFormatError(f"{source}: entry {key!r} is {found}, expected {class_name}")
  return module


def _assign_from_torch(
  model: Any, module: PersistentObject, kind: str, source: str, key: str, notes: list[str]
) -> None:
  tensors = module.tensors()
  if kind == "D":
    variables = names.discriminator_variables(model)
    channels = model.b4.in_channels
  else:
    variables = names.generator_variables(model)
    channels = 0
  used = set()

  def read(name: str) -> np.ndarray:
    if name not in tensors:
      raise PickleFormatError(f"{source}: {key} lacks tensor {name!r}")
    used.add(name)
    value = common.as_float_array(tensors[name], source, f"{key}.{name}")
    return names.from_torch_layout(name, value, kind == "G", channels)

  common.assign_variables(source, key, variables, read)
  unused = sorted(n for n in set(tensors) - used if not n.endswith("resample_filter"))
  if unused:
    notes.append(f"{key}: ignored tensors {unused}")


def _json_value(value: Any) -> Any:
  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple)):
    return [_json_value(v) for v in value]
  if isinstance(value, dict):
    return {str(k): _json_value(v) for k, v in value.items()}
  return repr(value)


def convert_torch(data: dict[str, Any], source: str) -> common.ConvertedNetworks:
  """{'G', 'D', 'G_ema', ...} of PersistentObjects -> ConvertedNetworks."""
  modules = {key: data[key] for key in ("G", "D", "G_ema") if data.get(key) is not None}
  for key, module in modules.items():
    _expect_class(module, key, "Discriminator" if key == "D" else "Generator", source)
  g_key = "G_ema" if "G_ema" in modules else "G" if "G" in modules else None
  if g_key is None:
    raise PickleFormatError(f"{source}: the pickle holds no generator (G or G_ema)")
  g_fields = _generator_fields(modules[g_key], source)
  for key in ("G", "G_ema"):
    if key in modules and _generator_fields(modules[key], source) != g_fields:
      raise PickleFormatError(f"{source}: G and G_ema have different settings")
  d_fields = _discriminator_fields(modules["D"], source) if "D" in modules else None
  config = common.merge_configs(source, g_fields, d_fields)
  notes: list[str] = []
  models = common.build_networks(
    config,
    modules,
    lambda model, module, kind, key: _assign_from_torch(model, module, kind, source, key, notes),
  )
  extra: dict[str, Any] = {}
  if isinstance(data.get("training_set_kwargs"), dict):
    extra["training_set_kwargs"] = _json_value(data["training_set_kwargs"])
  pipe = data.get("augment_pipe")
  if isinstance(pipe, PersistentObject) and "p" in pipe.tensors():
    extra["augment_p"] = float(np.asarray(pipe.tensors()["p"]).reshape(()))
  return common.ConvertedNetworks(
    config=config, networks=models, source_format="torch", notes=notes, extra=extra
  )
