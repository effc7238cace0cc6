"""PyTorch `torch.save` files read into NumPy arrays without importing torch.

Two on-disk formats exist (torch/serialization.py):

* zip (the default since PyTorch 1.6): an archive `<name>/data.pkl` holding the pickled object,
  whose storages are persistent ids ('storage', type, key, location, numel) with the bytes of
  each storage in `<name>/data/<key>`, plus `<name>/byteorder`.
* legacy (`_use_new_zipfile_serialization=False`, and every file of PyTorch < 1.6): consecutive
  pickles of the magic number, the protocol version 1001 and `sys_info`, then the object with
  ('storage', type, key, location, numel, view) persistent ids, then the list of storage keys,
  then per key an 8-byte little-endian element count and the storage's raw bytes.

Everything is unpickled by `safe_unpickle.restricted_load`: tensors rebuild through the stand-ins
below (`torch._utils._rebuild_tensor_v2` -> a read-only NumPy view of the storage), storage
classes are `StorageType` markers, and any global outside the caller's allow-list is refused
before it runs.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

from tfpets.importers.safe_unpickle import (
  BASE_GLOBALS,
  PickleFormatError,
  UnsafePickleError,
  restricted_load,
)

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
  """A storage's elements as a flat little-endian NumPy array, zero until its bytes are read.

  The buffer exists from the start because the legacy format pickles the tensors (views of their
  storages) before it writes the storages' bytes.
  """

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = dtype
    self.numel = int(numel)
    self.array = np.zeros(self.numel, dtype=self.dtype.newbyteorder("<"))

  def set_bytes(self, data: bytes, source: str) -> None:
    if len(data) != self.numel * self.dtype.itemsize:
      raise PickleFormatError(
        f"{source}: storage holds {len(data)} bytes, expected {self.numel} x {self.dtype.itemsize}"
      )
    self.array[:] = np.frombuffer(data, dtype=self.array.dtype)


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
  if not isinstance(storage, Storage):
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
  # A read-only view, as tensors share their storage: legacy files fill it after the pickle.
  return np.lib.stride_tricks.as_strided(
    storage.array[offset:], shape=size, strides=[s * itemsize for s in stride], writeable=False
  )


def _rebuild_tensor(storage: Storage, storage_offset: int, size: Any, stride: Any) -> np.ndarray:
  return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(
  data: np.ndarray, requires_grad: Any = False, backward_hooks: Any = None, state: Any = None
) -> np.ndarray:
  del requires_grad, backward_hooks, state
  return data


def storage_types() -> dict[tuple[str, str], StorageType]:
  """Allow-list entries of the storage classes (`torch.FloatStorage`, ...)."""
  return {("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()}


# What a pickled tensor or parameter refers to besides its storage's class.
TENSOR_GLOBALS: dict[tuple[str, str], Any] = {
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}

# Allow-list of a `torch.save(model.state_dict())` file: an OrderedDict (in BASE_GLOBALS) of
# tensors.
STATE_DICT_GLOBALS: dict[tuple[str, str], Any] = {
  **BASE_GLOBALS,
  **storage_types(),
  **TENSOR_GLOBALS,
}


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


def _load_legacy(stream: BinaryIO, allowed: Mapping[tuple[str, str], Any], source: str) -> Any:
  """The object of a legacy-format `torch.save` stream, its storages read after the pickle."""
  try:
    magic = restricted_load(stream, BASE_GLOBALS, source)
  except UnsafePickleError:
    raise
  except PickleFormatError as e:
    raise PickleFormatError(
      f"{source}: not a torch.save file (neither a zip archive nor the legacy format)"
    ) from e
  if magic != LEGACY_MAGIC:
    raise PickleFormatError(f"{source}: not a torch.save file (no torch magic number)")
  if restricted_load(stream, BASE_GLOBALS, source) != LEGACY_PROTOCOL:
    raise PickleFormatError(f"{source}: unsupported torch serialization protocol")
  sys_info = restricted_load(stream, BASE_GLOBALS, source)
  if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
    raise PickleFormatError(f"{source}: big-endian torch storages are not supported")
  table = _StorageTable(source, lambda key, storage: None)
  result = restricted_load(stream, allowed, source, persistent_load=table)
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
  return result


def _load_legacy_storage(data: bytes, source: str) -> Storage:
  """A storage saved by torch.save(storage, _use_new_zipfile_serialization=False)."""
  result = _load_legacy(io.BytesIO(data), storage_types(), source)
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


def load_storage_bytes(data: bytes, source: str) -> Storage:
  """`torch.storage._load_from_bytes(data)`: how a plain pickle spells a storage."""
  if data[:2] == b"PK":
    result = load_torch_zip(io.BytesIO(data), storage_types(), source)
    if not isinstance(result, Storage):
      raise PickleFormatError(f"{source}: storage bytes do not hold a storage")
    return result
  return _load_legacy_storage(data, source)


def load_torch_zip(file: BinaryIO, allowed: Mapping[tuple[str, str], Any], source: str) -> Any:
  """The object of a `torch.save` zip archive, storages read as NumPy arrays."""
  try:
    with zipfile.ZipFile(file) as archive:
      entry, load = _zip_loader(archive, source)
      return restricted_load(archive.read(entry), allowed, source, load)
  except (zipfile.BadZipFile, zlib.error, EOFError) as e:
    raise PickleFormatError(f"{source}: damaged zip archive ({e})") from e


def load_torch_file(
  path_or_bytes: str | os.PathLike | bytes,
  extra_globals: Mapping[tuple[str, str], Any] | None = None,
  source: str | None = None,
) -> Any:
  """The object of a `torch.save` file in either format, tensors as NumPy arrays.

  Only `STATE_DICT_GLOBALS` (tensors, storages, OrderedDict, NumPy) plus `extra_globals` may
  appear in the pickle; any other global raises `UnsafePickleError` before anything runs. Errors
  are `PickleFormatError`s naming `source` (by default the path, or "<bytes>").
  """
  allowed = {**STATE_DICT_GLOBALS, **(extra_globals or {})}
  if isinstance(path_or_bytes, (bytes, bytearray)):
    return _load_stream(io.BytesIO(path_or_bytes), allowed, source or "<bytes>")
  with open(path_or_bytes, "rb") as f:
    return _load_stream(f, allowed, source or str(path_or_bytes))


def _load_stream(file: BinaryIO, allowed: Mapping[tuple[str, str], Any], source: str) -> Any:
  head = file.read(2)
  file.seek(0)
  if head == b"PK":
    return load_torch_zip(file, allowed, source)
  return _load_legacy(file, allowed, source)
