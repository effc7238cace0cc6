"""Official StyleGAN2-ADA PyTorch network pickles -> tfpets networks, without importing torch.

The official training loop writes `pickle.dump(dict(G=..., D=..., G_ema=..., augment_pipe=...,
training_set_kwargs=...))`. Every module is a `torch_utils.persistence` object that reduces to
`_reconstruct_persistent_obj(meta)` with meta = {type, version, module_src, class_name, state};
here that becomes an inert `PersistentObject` keeping `class_name` and `state` (the module's
`__dict__`) and discarding `module_src` unexecuted. Tensors reduce to
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`; their storages to
`torch.storage._load_from_bytes(b)`, where `b` is a `torch.save` of the storage in the legacy
format (or the zip format). Both are read into NumPy arrays by the stand-ins below. A file saved
with `torch.save` (a zip archive holding `<name>/data.pkl` and `<name>/data/<key>`) is read too.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from tfpets.gan.importers import common, names
from tfpets.gan.importers.safe_unpickle import BASE_GLOBALS, PickleFormatError, restricted_load
from tfpets.gan.importers.tf_pickle import EasyDictStub

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

STORAGE_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class StorageType:
  """Stand-in for a torch storage class such as `torch.FloatStorage`: just its dtype."""

  def __init__(self, name: str, dtype: Any):
    self.name = name
    self.dtype = np.dtype(dtype)

  def __repr__(self) -> str:
    return f"torch.{self.name}"


class Storage:
  """A storage's elements as a flat little-endian NumPy array (filled once its bytes are read)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = dtype
    self.numel = int(numel)
    self.array: np.ndarray | None = None

  def set_bytes(self, data: bytes, source: str) -> None:
    if len(data) != self.numel * self.dtype.itemsize:
      raise PickleFormatError(
        f"{source}: storage holds {len(data)} bytes, expected {self.numel} x {self.dtype.itemsize}"
      )
    self.array = np.frombuffer(data, dtype=self.dtype.newbyteorder("<"))


def _rebuild_tensor_v2(
  storage: Storage,
  storage_offset: int,
  size: Any,
  stride: Any,
  requires_grad: Any = False,
  backward_hooks: Any = None,
  metadata: Any = None,
) -> np.ndarray:
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, Storage) or storage.array is None:
    raise PickleFormatError("tensor without readable storage")
  size = tuple(int(s) for s in size)
  stride = tuple(int(s) for s in stride)
  offset = int(storage_offset)
  if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size + stride):
    raise PickleFormatError(f"invalid tensor geometry size={size} stride={stride}")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.numel:  # Strides must stay inside the storage (no out-of-bounds views).
    raise PickleFormatError(
      f"tensor size={size} stride={stride} offset={offset} exceeds its "
      f"storage of {storage.numel} elements"
    )
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    storage.array[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
  )
  return np.array(view, dtype=storage.dtype.newbyteorder("="))


def _rebuild_tensor(storage: Storage, storage_offset: int, size: Any, stride: Any) -> np.ndarray:
  return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(
  data: np.ndarray, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None
) -> np.ndarray:
  del requires_grad, backward_hooks, state
  return data


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


def _storage_types() -> dict[tuple[str, str], Any]:
  return {("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()}


class _StorageTable:
  """persistent_load for ('storage', type, key, location, numel, view) records.

  `read_data(key, storage)` fills a storage when its key is first seen; the legacy format passes
  a no-op and fills the storages after the pickle, from the raw records that follow it.
  """

  def __init__(self, source: str, read_data: Callable[[str, Storage], None]):
    self.source = source
    self.read_data = read_data
    self.storages: dict[str, Storage] = {}

  def __call__(self, pid: Any) -> Storage:
    if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
      raise PickleFormatError(f"{self.source}: unexpected persistent id {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if not isinstance(storage_type, StorageType):
      raise PickleFormatError(f"{self.source}: unsupported storage type {storage_type!r}")
    if len(pid) > 5 and pid[5] is not None:
      raise PickleFormatError(f"{self.source}: storage views are not supported")
    if key not in self.storages:
      self.storages[key] = Storage(storage_type.dtype, numel)
      self.read_data(key, self.storages[key])
    return self.storages[key]


def _load_legacy_storage(data: bytes, source: str) -> Storage:
  """A storage saved by torch.save(..., _use_new_zipfile_serialization=False)."""
  stream = io.BytesIO(data)
  if restricted_load(stream, BASE_GLOBALS, source) != LEGACY_MAGIC:
    raise PickleFormatError(f"{source}: storage bytes lack torch's magic number")
  if restricted_load(stream, BASE_GLOBALS, source) != LEGACY_PROTOCOL:
    raise PickleFormatError(f"{source}: unsupported torch serialization protocol")
  sys_info = restricted_load(stream, BASE_GLOBALS, source)
  if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
    raise PickleFormatError(f"{source}: big-endian torch storages are not supported")
  table = _StorageTable(source, lambda key, storage: None)
  result = restricted_load(stream, _storage_types(), source, persistent_load=table)
  keys = restricted_load(stream, BASE_GLOBALS, source)
  if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(table.storages):
    raise PickleFormatError(f"{source}: storage records do not match the pickled storages")
  for key in keys:
    storage = table.storages[str(key)]
    header = stream.read(8)
    if len(header) != 8:
      raise PickleFormatError(f"{source}: storage bytes end early")
    (count,) = struct.unpack("<q", header)
    if count != storage.numel:
      raise PickleFormatError(
        f"{source}: storage {key} holds {count} elements, expected {storage.numel}"
      )
    storage.set_bytes(stream.read(count * storage.dtype.itemsize), source)
  if not isinstance(result, Storage):
    raise PickleFormatError(f"{source}: storage bytes do not hold a storage")
  return result


def _zip_loader(archive: zipfile.ZipFile, source: str) -> tuple[str, Callable[[Any], Storage]]:
  pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
  if len(pickles) != 1:
    raise PickleFormatError(f"{source}: zip archive without exactly one data.pkl")
  prefix = pickles[0][: -len("data.pkl")]
  byteorder = f"{prefix}byteorder"
  if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
    raise PickleFormatError(f"{source}: big-endian torch archives are not supported")

  def read_data(key: str, storage: Storage) -> None:
    try:
      storage.set_bytes(archive.read(f"{prefix}data/{key}"), source)
    except KeyError:
      raise PickleFormatError(f"{source}: archive lacks storage {prefix}data/{key}") from None

  return pickles[0], _StorageTable(source, read_data)


def _load_storage_bytes(data: bytes, source: str) -> Storage:
  if data[:2] == b"PK":
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
      entry, load = _zip_loader(archive, source)
      result = restricted_load(archive.read(entry), _storage_types(), source, load)
    if not isinstance(result, Storage):
      raise PickleFormatError(f"{source}: storage bytes do not hold a storage")
    return result
  return _load_legacy_storage(data, source)


def torch_globals(source: str) -> dict[tuple[str, str], Any]:
  """Allow-list of a PyTorch network pickle: persistence, tensors, storages, EasyDict, NumPy."""
  return {
    **BASE_GLOBALS,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): lambda data: _load_storage_bytes(data, source),
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
    **_storage_types(),
  }


def load_torch_zip(file: BinaryIO, source: str) -> Any:
  """The object of a `torch.save` zip archive, storages read as NumPy arrays."""
  try:
    with zipfile.ZipFile(file) as archive:
      entry, load = _zip_loader(archive, source)
      return restricted_load(archive.read(entry), torch_globals(source), source, load)
  except zipfile.BadZipFile as e:
    raise PickleFormatError(f"{source}: damaged zip archive ({e})") from e


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
