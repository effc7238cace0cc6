"""Writers of PyTorch pickles and `torch.save` files, laid out as torch writes them (no torch).

* Plain pickles of tensors (torch/_tensor.py `__reduce_ex__`): a tensor reduces to
  `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, a
  parameter to `torch._utils._rebuild_parameter(tensor, requires_grad, hooks)`, and a storage on
  its own to `torch.storage._load_from_bytes(<legacy torch.save bytes of the storage>)`.
* `torch.save` files (torch/serialization.py) in both formats: the zip archive
  (`<name>/data.pkl` with ('storage', type, key, 'cpu', numel) persistent ids, `<name>/data/<key>`,
  byteorder, version) and the legacy stream (magic number, protocol 1001, sys_info, the object with
  ('storage', type, key, 'cpu', numel, None) persistent ids, the sorted storage keys, then per key
  an 8-byte little-endian element count and the raw bytes).

`pickle._Pickler` (the pure-Python pickler) is subclassed so that stand-in classes are written as
the global names torch uses without those modules existing.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import struct
import zipfile
from typing import Any, Mapping

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001


class GlobalStandIn:
  """Base of stand-in classes that pickle as the global named by `pickle_as`."""

  pickle_as: tuple[str, str] = ("", "")


def global_ref(module: str, name: str) -> type:
  """A callable stand-in class that pickles as `module.name`."""
  return type(name, (GlobalStandIn,), {"pickle_as": (module, name)})


class FixturePickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pure-Python pickler writing `GlobalStandIn` subclasses as their global names."""

  def save_global(self, obj: Any, name: str | None = None) -> None:
    if isinstance(obj, type) and issubclass(obj, GlobalStandIn) and obj is not GlobalStandIn:
      module, qualname = obj.pickle_as
      if self.proto >= 4:
        self.save(module)
        self.save(qualname)
        self.write(pickle.STACK_GLOBAL)
      else:
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("utf-8"))
      self.memoize(obj)
      return
    super().save_global(obj, name)


def dumps(obj: Any, protocol: int = 3, persistent_id=None) -> bytes:
  buffer = io.BytesIO()
  pickler = FixturePickler(buffer, protocol=protocol)
  if persistent_id is not None:
    pickler.persistent_id = persistent_id
  pickler.dump(obj)
  return buffer.getvalue()


REBUILD_TENSOR_V2 = global_ref("torch._utils", "_rebuild_tensor_v2")
REBUILD_PARAMETER = global_ref("torch._utils", "_rebuild_parameter")
LOAD_FROM_BYTES = global_ref("torch.storage", "_load_from_bytes")
STORAGE_TYPES = {
  np.dtype(np.float32): global_ref("torch", "FloatStorage"),
  np.dtype(np.float64): global_ref("torch", "DoubleStorage"),
  np.dtype(np.float16): global_ref("torch", "HalfStorage"),
  np.dtype(np.int64): global_ref("torch", "LongStorage"),
  np.dtype(np.int32): global_ref("torch", "IntStorage"),
  np.dtype(np.uint8): global_ref("torch", "ByteStorage"),
  np.dtype(np.bool_): global_ref("torch", "BoolStorage"),
}
FLOAT_STORAGE = STORAGE_TYPES[np.dtype(np.float32)]


class Storage:
  """A storage of one of STORAGE_TYPES' dtypes; in a plain pickle it reduces to
  _load_from_bytes(legacy torch.save bytes), in a torch.save file it is a persistent id."""

  def __init__(self, array: np.ndarray):
    self.array = np.ascontiguousarray(array).reshape(-1)
    if self.array.dtype not in STORAGE_TYPES:
      raise ValueError(f"no torch storage for dtype {self.array.dtype}")

  @property
  def storage_type(self) -> type:
    return STORAGE_TYPES[self.array.dtype]

  def raw_bytes(self) -> bytes:
    return self.array.astype(self.array.dtype.newbyteorder("<")).tobytes()

  def __reduce_ex__(self, protocol):
    return (LOAD_FROM_BYTES, (legacy_save_bytes(self),))


class Tensor:
  """A contiguous tensor over its own storage; float32 unless `array` has another storage dtype."""

  def __init__(self, array: np.ndarray):
    array = np.asarray(array)
    self.array = array if array.dtype in STORAGE_TYPES else array.astype(np.float32)

  def __reduce_ex__(self, protocol):
    shape = self.array.shape
    stride = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
    return (
      REBUILD_TENSOR_V2,
      (Storage(self.array), 0, shape, stride, False, collections.OrderedDict()),
    )


class Parameter(Tensor):
  def __reduce_ex__(self, protocol):
    return (REBUILD_PARAMETER, (Tensor(self.array), False, collections.OrderedDict()))


def legacy_save_bytes(obj: Any) -> bytes:
  """torch.save(obj, _use_new_zipfile_serialization=False), written by hand (protocol 2)."""
  storages: dict[str, Storage] = {}
  keys_by_id: dict[int, str] = {}

  def persistent_id(value):
    if isinstance(value, Storage):
      if id(value) not in keys_by_id:
        # torch keys storages by their C pointer; distinct lengths make string order differ
        # from the order of first use, as it can in real files.
        key = str(94367123456 + 1000003 * len(storages) ** 3)
        keys_by_id[id(value)] = key
        storages[key] = value  # Keeps `value` alive, so its id is not reused.
      key = keys_by_id[id(value)]
      return ("storage", value.storage_type, key, "cpu", value.array.size, None)
    return None

  sys_info = {
    "protocol_version": LEGACY_PROTOCOL,
    "little_endian": True,
    "type_sizes": {"short": 2, "int": 4, "long": 4},
  }
  parts = [
    dumps(LEGACY_MAGIC, 2),
    dumps(LEGACY_PROTOCOL, 2),
    dumps(sys_info, 2),
    dumps(obj, 2, persistent_id),
  ]
  keys = sorted(storages)
  parts.append(dumps(keys, 2))
  for key in keys:
    parts.append(struct.pack("<q", storages[key].array.size))
    parts.append(storages[key].raw_bytes())
  return b"".join(parts)


def legacy_storage_bytes(storage: Storage) -> bytes:
  """torch.save(storage, _use_new_zipfile_serialization=False)."""
  return legacy_save_bytes(storage)


def write_torch_zip(path, obj: Any) -> None:
  """torch.save's zip layout: <stem>/data.pkl with storage persistent ids + <stem>/data/<key>."""
  storages: dict[int, tuple[str, Storage]] = {}

  def persistent_id(value):
    if isinstance(value, Storage):
      key = storages.setdefault(id(value), (str(len(storages)), value))[0]
      return ("storage", value.storage_type, key, "cpu", value.array.size)
    return None

  data = dumps(obj, protocol=2, persistent_id=persistent_id)
  name = pathlib.Path(path).stem or "archive"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr(f"{name}/data.pkl", data)
    archive.writestr(f"{name}/.format_version", "1")
    archive.writestr(f"{name}/.storage_alignment", "64")
    archive.writestr(f"{name}/byteorder", "little")
    for key, storage in storages.values():
      archive.writestr(f"{name}/data/{key}", storage.raw_bytes())
    archive.writestr(f"{name}/version", "3\n")
    archive.writestr(f"{name}/.data/serialization_id", "0" * 20)


def state_dict_object(tensors: Mapping[str, np.ndarray]) -> collections.OrderedDict:
  """`module.state_dict()` as torch pickles it: an OrderedDict of tensors with `_metadata`
  (the version of every module, by dotted path, "" for the root)."""
  state = collections.OrderedDict((name, Tensor(value)) for name, value in tensors.items())
  modules = {""}
  for name in tensors:
    parts = name.split(".")[:-1]
    modules.update(".".join(parts[: i + 1]) for i in range(len(parts)))
  state._metadata = collections.OrderedDict(  # pylint: disable=protected-access
    (module, {"version": 1}) for module in sorted(modules, key=lambda m: (m.count("."), m))
  )
  return state


def write_state_dict_zip(path, state_dict: Mapping[str, np.ndarray]) -> None:
  """torch.save(state_dict, path): the zip format."""
  write_torch_zip(path, state_dict_object(state_dict))


def write_state_dict_legacy(path, state_dict: Mapping[str, np.ndarray]) -> None:
  """torch.save(state_dict, path, _use_new_zipfile_serialization=False)."""
  pathlib.Path(path).write_bytes(legacy_save_bytes(state_dict_object(state_dict)))


class Call:
  """Pickles as `module.name(*args)`: a REDUCE of that global (which a safe reader must refuse)."""

  def __init__(self, module: str, name: str, *args):
    self.func = global_ref(module, name)
    self.args = args

  def __reduce_ex__(self, protocol):
    return (self.func, self.args)
