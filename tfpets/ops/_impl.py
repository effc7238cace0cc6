"""Loading of the custom op library and the choice between `ref` and `custom`.

The library (`FusedBiasAct`, `UpFirDn2D`) is loaded once, when
`tfpets.ops` is imported, because an op library must be loaded before the
first XLA compilation in the process. Where it is missing or fails to load,
tfpets logs one warning and every op uses its reference path.

Which library is loaded: `$TFPETS_OPS_LIBRARY` if set (a path to a `.so`),
otherwise the one recorded in `tfpets/ops/_lib/tfpets_ops.json` by
`python -m tfpets.ops.build` (ignored when it was built for another
TensorFlow version or from other kernel sources). `TFPETS_OPS_DISABLE=1`
skips loading altogether. On x86-64 the library's CPU loops use AVX2 where
the CPU has it; `TFPETS_OPS_ISA=baseline` makes them use the plain x86-64
build instead (read once, when the first kernel runs). `UpFirDn2D` writes
outputs of 16 MiB or more with non-temporal stores, and so does
`FusedBiasAct` for float linear, relu and lrelu (forward and first
derivative, on AVX2 CPUs); `TFPETS_OPS_STREAM_MIN_BYTES` sets that
threshold in bytes (also read once). `UpFirDn2D` also prefetches the input
rows of its next output row when its input is 1 MiB or more (or at least
`TFPETS_OPS_STREAM_MIN_BYTES`, if that is lower). On AVX2 CPUs the float
relu and lrelu forward pass of `FusedBiasAct` (no clamp, bias on the last
axis) also packs the sign of its output into one bit per element, which its
gradient reads instead of the output: 1/32 of the bytes. docs/ops.md lists
every variable.

`impl='auto'` picks `custom` only when all of these hold:

* the library is loaded and has a kernel for the dtype;
* the op is not being traced for XLA (`tf.function(jit_compile=True)`,
  detected through the graph's XLA control-flow context, or forced with
  `set_xla(True)`), because XLA cannot compile a custom op without an XLA
  kernel;
* no GPU is visible unless the library was built with CUDA kernels, and no
  TPU is visible;
* `auto_table.json` (written by `benchmarks/bench_ops.py --write-table` from
  its measurements) says `custom` was faster for this device, op and case
  (cases are an activation, optionally with '+clamp', or 'up', 'down',
  'filter'); unmeasured devices and cases use the reference path.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import threading
from typing import Any

import tensorflow as tf
from absl import logging
from tensorflow.python.framework import kernels as tf_kernels
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
LIB_DIR = PACKAGE_DIR / "_lib"
MANIFEST_NAME = "tfpets_ops.json"
AUTO_TABLE_PATH = PACKAGE_DIR / "auto_table.json"
IMPLS = ("auto", "ref", "custom")
OP_TYPES = {"fused_bias_act": "FusedBiasAct", "upfirdn2d": "UpFirDn2D"}

_state_lock = threading.Lock()
_library: Any = None
_library_error: str | None = None
_library_path: str | None = None
_force_xla = False
_logged: set[tuple[str, ...]] = set()


def _log_once(*key: str) -> None:
  with _state_lock:
    if key in _logged:
      return
    _logged.add(key)
  logging.info("tfpets.ops: %s", " ".join(key))


def _manifest_library() -> pathlib.Path:
  """The library recorded by the in-place build, checked against TF/sources."""
  manifest_path = LIB_DIR / MANIFEST_NAME
  if not manifest_path.is_file():
    raise FileNotFoundError(
      f"no custom op library built ({manifest_path} is missing; run `python -m tfpets.ops.build`)"
    )
  manifest = json.loads(manifest_path.read_text())
  if manifest.get("tf_version") != tf.__version__:
    raise RuntimeError(
      f"{manifest_path}: library was built for TensorFlow "
      f"{manifest.get('tf_version')}, this is {tf.__version__}; rebuild "
      "with `python -m tfpets.ops.build`"
    )
  from tfpets.ops import build  # pylint: disable=g-import-not-at-top

  if build.sources_present() and build.source_hash() != manifest.get("source_hash"):
    raise RuntimeError(
      f"{manifest_path}: library is older than the kernel sources; rebuild "
      "with `python -m tfpets.ops.build`"
    )
  return LIB_DIR / manifest["library"]


def load_library(path: str | os.PathLike[str] | None = None) -> Any:
  """Loads the op library (idempotent); returns the module or None."""
  global _library, _library_error, _library_path
  if _library is not None and path is None:
    return _library
  try:
    if path is None:
      if os.environ.get("TFPETS_OPS_DISABLE") == "1":
        raise RuntimeError("disabled by TFPETS_OPS_DISABLE=1")
      path = os.environ.get("TFPETS_OPS_LIBRARY") or _manifest_library()
    module = tf.load_op_library(str(path))
  except (OSError, RuntimeError, ValueError, KeyError, tf.errors.OpError) as error:
    _library_error = f"{path}: {error}" if path else str(error)
    logging.warning(
      "tfpets.ops: custom ops unavailable, using the reference paths (%s)", _library_error
    )
    return None
  _library, _library_error, _library_path = module, None, str(path)
  _kernel_devices.cache_clear()
  logging.info("tfpets.ops: loaded custom ops from %s", path)
  return module


def library_loaded() -> bool:
  return _library is not None


def library_path() -> str | None:
  return _library_path


def require_library() -> Any:
  if _library is None:
    raise RuntimeError(
      'tfpets.ops: impl="custom" needs the custom op library, which is not '
      f"loaded: {_library_error or 'not loaded yet'}"
    )
  return _library


def set_xla(enabled: bool) -> None:
  """Declares that ops are being built for XLA although tracing cannot tell.

  Use it around code compiled by means other than `tf.function(jit_compile=
  True)` (for example auto-clustering); `impl='auto'` then picks `ref`.
  """
  global _force_xla
  _force_xla = bool(enabled)


def in_xla_context() -> bool:
  """True while tracing for XLA (or after `set_xla(True)`)."""
  if _force_xla:
    return True
  if tf.executing_eagerly():
    return False
  return control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph())


@functools.lru_cache(maxsize=None)
def _kernel_devices(op_type: str) -> dict[str, frozenset[str]]:
  """Device type -> dtypes ('float', 'half', ...) with a registered kernel."""
  found: dict[str, set[str]] = {}
  for kernel in tf_kernels.get_registered_kernels_for_op(op_type).kernel:
    dtypes = {
      c.allowed_values.list.type[0]
      for c in kernel.constraint
      if c.name == "T" and c.allowed_values.list.type
    }
    names = {tf.dtypes.as_dtype(d).name for d in dtypes}
    found.setdefault(kernel.device_type, set()).update(names)
  return {device: frozenset(names) for device, names in found.items()}


@functools.lru_cache(maxsize=1)
def _target_device() -> str:
  """Where the ops will run; fixed once TensorFlow has initialised."""
  if tf.config.list_logical_devices("TPU"):
    return "TPU"
  if tf.config.list_logical_devices("GPU"):
    return "GPU"
  return "CPU"


@functools.lru_cache(maxsize=1)
def _auto_table() -> dict[str, Any]:
  if not AUTO_TABLE_PATH.is_file():
    return {}
  return json.loads(AUTO_TABLE_PATH.read_text())


def _table_choice(device: str, op: str, case: str) -> str:
  """The table's entry for `case`, else for its base ('lrelu+clamp' ->
  'lrelu'); 'ref' where nothing was measured (for example on GPU)."""
  entry = _auto_table().get(device.lower(), {}).get(op, {})
  return entry.get(case, entry.get(case.split("+")[0], "ref"))


def _custom_blocker(op: str, dtype: tf.DType, device: str) -> str | None:
  """Why the custom kernel cannot run here, or None if it can."""
  if _library is None:
    return f"custom op library not loaded ({_library_error})"
  if in_xla_context():
    return "inside an XLA (jit_compile) context"
  kernels = _kernel_devices(OP_TYPES[op])
  if device not in kernels:
    return f"no {device} kernel in the library"
  if dtype.name not in kernels[device]:
    return f"no {dtype.name} kernel"
  return None


def choose_impl(op: str, impl: str, dtype: tf.DType, case: str) -> str:
  """Resolves `impl` for one op call to 'ref' or 'custom'."""
  if impl not in IMPLS:
    raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
  if impl == "ref":
    return "ref"
  device = _target_device()
  blocker = _custom_blocker(op, dtype, device)
  if impl == "custom":
    if blocker is not None:
      raise RuntimeError(f'{op}: impl="custom" is not possible: {blocker}')
    return "custom"
  if blocker is None and _table_choice(device, op, case) == "ref":
    blocker = f"auto_table.json does not show custom faster for {case} on {device}"
  choice = "custom" if blocker is None else "ref"
  _log_once(op, case, dtype.name, "->", choice, *([f"({blocker})"] if blocker else []))
  return choice
