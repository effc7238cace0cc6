"""A restricted unpickler for network pickles.

Official network pickles embed Python source (`build_module_src`, `module_src`) that the official
loaders execute. tfpets never executes it and never calls plain `pickle.load` on a network file:
`RestrictedUnpickler.find_class` resolves only the globals of an explicit allow-list, each mapped
to an inert replacement, and refuses every other global with `UnsafePickleError` naming it. Since
an unpickler can only call what `find_class` returned (REDUCE, NEWOBJ, BUILD, INST, OBJ and the
extension registry all go through it), the allow-list bounds everything loading can execute.
"""

from __future__ import annotations

import codecs
import collections
import io
import pickle
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

try:
  from numpy._core import multiarray as _multiarray
except ImportError:  # NumPy 1.x
  from numpy.core import multiarray as _multiarray  # pylint: disable=g-import-not-at-top


class PickleFormatError(ValueError):
  """The file is not a network pickle tfpets can read; the message names the file."""


class UnsafePickleError(PickleFormatError):
  """The pickle references a global outside the allow-list; nothing of it was executed."""


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
  if subtype is not np.ndarray:
    raise PickleFormatError(f"array subtype {subtype!r} is not allowed")
  return _multiarray._reconstruct(np.ndarray, shape, dtype)  # pylint: disable=protected-access


def _numpy_scalar(dtype: np.dtype, data: Any = None) -> Any:
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    raise PickleFormatError(f"numpy scalar of dtype {dtype!r} is not allowed")
  return _multiarray.scalar(dtype, data)


def _numpy_frombuffer(buffer: Any, dtype: np.dtype, shape: Any, order: str) -> np.ndarray:
  # Protocol 5 spelling of an array: raw bytes + dtype + shape.
  dtype = np.dtype(dtype)
  if dtype.hasobject:
    raise PickleFormatError("object arrays are not allowed")
  return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
  # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1').
  if not isinstance(text, str):
    raise PickleFormatError("_codecs.encode of a non-string is not allowed")
  return codecs.encode(text, encoding)


def _safe_set(items: Any = ()) -> set:
  return set(items)


# Globals every network pickle may use: NumPy arrays/scalars and plain containers.
BASE_GLOBALS: dict[tuple[str, str], Any] = {
  **{
    (module, "_reconstruct"): _numpy_reconstruct
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
  },
  **{
    (module, "scalar"): _numpy_scalar
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
  },
  **{
    (module, "_frombuffer"): _numpy_frombuffer
    for module in ("numpy.core.numeric", "numpy._core.numeric")
  },
  ("numpy", "ndarray"): np.ndarray,
  ("numpy", "dtype"): np.dtype,
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("builtins", "set"): _safe_set,
  ("__builtin__", "set"): _safe_set,  # Protocol-2 spelling (torch.save uses protocol 2).
  ("_codecs", "encode"): _codecs_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
  """`pickle.Unpickler` resolving only allow-listed globals (to inert stand-ins)."""

  def __init__(
    self,
    file: BinaryIO,
    allowed: Mapping[tuple[str, str], Any],
    source: str,
    persistent_load: Callable[[Any], Any] | None = None,
  ):
    super().__init__(file)
    self._allowed = dict(allowed)
    self._source = source
    self._persistent_load = persistent_load

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise UnsafePickleError(
        f"{self._source}: refusing to load global '{module}.{name}': it is not on the "
        "allow-list of what tfpets reads from pickles (nothing from the file was executed)"
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    if self._persistent_load is None:
      raise PickleFormatError(f"{self._source}: unexpected persistent id {pid!r}")
    return self._persistent_load(pid)


def restricted_load(
  data: bytes | BinaryIO,
  allowed: Mapping[tuple[str, str], Any],
  source: str,
  persistent_load: Callable[[Any], Any] | None = None,
) -> Any:
  """Unpickles one object from `data` with `RestrictedUnpickler`; errors name `source`."""
  file = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
  unpickler = RestrictedUnpickler(file, allowed, source, persistent_load)
  try:
    return unpickler.load()
  except PickleFormatError:
    raise
  except (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    ImportError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    MemoryError,
  ) as e:
    raise PickleFormatError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from e
