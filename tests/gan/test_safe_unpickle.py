"""The restricted unpickler refuses everything outside its allow-list, without running it."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from tests import torch_files as tw
from tests.gan import pickle_writers as pw
from tfpets.gan import importers
from tfpets.gan.importers import torch_pickle
from tfpets.importers import safe_unpickle, torch_file


def _shell_touch(marker) -> str:
  return f"touch {marker}"


@pytest.mark.parametrize(
  "module,name", [("os", "system"), ("posix", "system"), ("subprocess", "getoutput")]
)
def test_shell_globals_are_refused_without_running(tmp_path, module, name):
  marker = tmp_path / "ran"
  path = tmp_path / "evil.pkl"
  path.write_bytes(tw.dumps({"G": tw.Call(module, name, _shell_touch(marker))}))
  with pytest.raises(
    importers.UnsafePickleError, match=rf"evil.pkl: refusing to load global '{module}.{name}'"
  ):
    importers.read_network_pickle(path)
  assert not marker.exists()


def test_real_os_system_pickle_is_refused(tmp_path):
  marker = tmp_path / "ran"

  class Evil:
    def __reduce__(self):
      return (os.system, (_shell_touch(marker),))

  path = tmp_path / "evil.pkl"
  path.write_bytes(pickle.dumps((Evil(), 1, 2)))
  with pytest.raises(importers.UnsafePickleError, match=r"global '(posix|os)\.system'"):
    importers.read_network_pickle(path)
  assert not marker.exists()


@pytest.mark.parametrize(
  "module,name",
  [
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("numpy", "load"),
    ("torch", "load"),
    ("dnnlib.util", "call_func_by_name"),
    ("copyreg", "_reconstructor"),
  ],
)
def test_other_code_execution_routes_are_refused(tmp_path, module, name):
  path = tmp_path / "bad.pkl"
  path.write_bytes(tw.dumps([tw.Call(module, name, "print(1)")]))
  with pytest.raises(importers.UnsafePickleError, match=rf"'{module}.{name}'"):
    importers.load_pickle(path)


def test_global_hidden_inside_torch_storage_bytes_is_refused(tmp_path):
  marker = tmp_path / "ran"
  inner = b"".join(
    [
      tw.dumps(0x1950A86A20F9469CFC6C, 2),
      tw.dumps(1001, 2),
      tw.dumps({"little_endian": True}, 2),
      tw.dumps(tw.Call("os", "system", _shell_touch(marker)), 2),
    ]
  )
  path = tmp_path / "storage.pkl"
  path.write_bytes(tw.dumps({"G": tw.Call("torch.storage", "_load_from_bytes", inner)}))
  with pytest.raises(importers.UnsafePickleError, match="'os.system'"):
    importers.read_network_pickle(path)
  assert not marker.exists()


def test_global_inside_a_torch_zip_archive_is_refused(tmp_path):
  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", tw.dumps(tw.Call("os", "system", "true"), 2))
  with pytest.raises(importers.UnsafePickleError, match="evil.pt: refusing to load global"):
    importers.read_network_pickle(path)


def test_embedded_module_source_is_never_executed(tmp_path):
  marker = tmp_path / "ran"
  module = pw.Module("Generator", pw.embedded_source(str(marker)), {"z_dim": 1})
  path = tmp_path / "net.pkl"
  path.write_bytes(tw.dumps({"G_ema": module}))
  data = importers.load_pickle(path)
  assert isinstance(data["G_ema"], torch_pickle.PersistentObject)
  assert data["G_ema"].class_name == "Generator" and data["G_ema"].init_kwargs == {"z_dim": 1}
  assert not hasattr(data["G_ema"], "module_src")
  assert not marker.exists()


def test_numpy_arrays_and_scalars_load():
  value = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.float64(0.25),
    "c": {1, 2},
    "d": b"\x00\x01",
  }
  for protocol in (2, 3, 4, 5):
    loaded = safe_unpickle.restricted_load(
      pickle.dumps(value, protocol=protocol), safe_unpickle.BASE_GLOBALS, "mem"
    )
    np.testing.assert_array_equal(loaded["a"], value["a"])
    assert loaded["b"] == 0.25 and loaded["c"] == {1, 2} and loaded["d"] == b"\x00\x01"


def test_object_dtype_scalars_are_refused():
  data = tw.dumps(tw.Call("numpy.core.multiarray", "scalar", np.dtype(object), "payload"))
  with pytest.raises(importers.PickleFormatError, match="numpy scalar of dtype"):
    safe_unpickle.restricted_load(data, safe_unpickle.BASE_GLOBALS, "mem")


def _legacy_storage(values):
  """torch.save(storage, _use_new_zipfile_serialization=False) of float32 `values`."""
  storage = tw.Storage(np.asarray(values, np.float32))
  return tw.legacy_storage_bytes(storage)


def test_tensor_strides_must_stay_inside_the_storage(tmp_path):
  storage = tw.Call("torch.storage", "_load_from_bytes", _legacy_storage([1.0, 2.0, 3.0]))
  good = tw.Call("torch._utils", "_rebuild_tensor_v2", storage, 1, (2,), (1,), False, None)
  bad = tw.Call("torch._utils", "_rebuild_tensor_v2", storage, 0, (2, 2), (2, 1), False, None)
  allowed = torch_pickle.torch_globals("mem")
  np.testing.assert_array_equal(
    safe_unpickle.restricted_load(tw.dumps(good), allowed, "mem"), [2.0, 3.0]
  )
  with pytest.raises(importers.PickleFormatError, match="exceeds its storage of 3 elements"):
    safe_unpickle.restricted_load(tw.dumps(bad), allowed, "mem")


def test_storage_byte_count_is_checked():
  data = _legacy_storage([1.0, 2.0, 3.0])[:-4]
  with pytest.raises(importers.PickleFormatError, match="storage holds 8 bytes, expected 3 x 4"):
    torch_file.load_storage_bytes(data, "mem")


def test_restricted_load_of_garbage_names_the_source():
  with pytest.raises(importers.PickleFormatError, match="garbage.bin: not a readable pickle"):
    safe_unpickle.restricted_load(io.BytesIO(b"\x80\x04garbage"), {}, "garbage.bin")
