"""Official DBPN checkpoints (PyTorch state dicts, `.pth`) -> Keras DBPN models, without torch.

The official repository (alterzero/DBPN-Pytorch) saves `model.state_dict()` of a `DataParallel`
wrapper (`main.py: checkpoint`), so every key starts with `module.`; older files use torch's legacy
format, newer ones the zip format. Both are read by `tfpets.importers.torch_file` with a
restricted unpickler that resolves tensors and storages only.

The variant and scale come from the tensors alone: the projection kernel of
`up1.up_conv1.deconv.weight` (6, 8, 12 -> x2, x4, x8), the back-projection units present and the
input width of `output_conv.conv.weight` (`num_stages * 64`: 448 for D-DBPN, 640 for DBPN-LL,
192 for DBPN-RES-MR64-3's three passes, 128 for DBPN-S). Every tensor is then assigned to the
Keras weight of the same module (`dbpn.layer_name`): Conv2d (out, in, k, k) -> Conv2D
(k, k, in, out) and ConvTranspose2d (in, out, k, k) -> Conv2DTranspose (k, k, out, in), both
`transpose(2, 3, 1, 0)` with no spatial flip (both frameworks cross-correlate); PReLU [1] ->
(1, 1, 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import types
from typing import Any, Callable, Mapping

import keras
import numpy as np
from absl import logging

from tfpets.errors import ArgumentError
from tfpets.importers.torch_file import load_torch_file
from tfpets.superres import dbpn

DESCRIPTIONS = {
  "dbpn": "D-DBPN (T = 7)",
  "dbpnll": "DBPN-LL (T = 10)",
  "dbpn_res_mr64_3": "DBPN-RES-MR64-3 (T = 7, 3 passes)",
  "dbpns": "DBPN-S (T = 2)",
}
SCALE_KEY = "up1.up_conv1.deconv.weight"
OUTPUT_KEY = "output_conv.conv.weight"
MODEL_FILE = "dbpn.keras"  # What convert_checkpoint and superres training write.
PARALLEL_PREFIX = "module."  # torch.nn.DataParallel's attribute holding the network.
WRAPPER_KEYS = ("state_dict", "model")  # Training checkpoints that nest the state dict.
_LISTED = 5  # Keys an error names before "+N more".
_UNIT = re.compile(r"^(up|down)(\d+)\.")


@dataclasses.dataclass
class ConvertedDBPN:
  model: keras.Model
  variant: str
  scale: int
  residual: bool
  parameters: int
  keras_path: pathlib.Path
  weights_path: pathlib.Path
  notes: list[str]


# ------------------------------------------------------------------------------------------------
# Checkpoint keys of a Keras DBPN.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Slot:
  """One Keras weight, as the checkpoint names and shapes it."""

  variable: Any
  torch_shape: tuple[int, ...]
  to_keras: Callable[[np.ndarray], np.ndarray]


def module_path(layer_name: str) -> str:
  """The checkpoint module of a Keras layer name (inverse of `dbpn.layer_name`).

  `_` separates modules except inside the official `up_conv*`, `down_conv*` and `output_conv`.
  """
  parts: list[str] = []
  for part in layer_name.split("_"):
    if parts and parts[-1] in ("up", "down", "output"):
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  path = ".".join(parts)
  if dbpn.layer_name(path) != layer_name:
    raise ValueError(f"layer {layer_name!r} has no checkpoint module name")
  return path


def _kernel_to_keras(value: np.ndarray) -> np.ndarray:
  # Conv2d (out, in, k, k) -> (k, k, in, out); ConvTranspose2d (in, out, k, k) -> (k, k, out, in).
  return value.transpose(2, 3, 1, 0)


def _kernel_slot(variable) -> _Slot:
  k0, k1, a, b = (int(n) for n in variable.shape)
  return _Slot(variable, (b, a, k0, k1), _kernel_to_keras)


def _weight_slots(model: keras.Model) -> dict[str, _Slot]:
  """Checkpoint key -> Keras weight for every weight of `model` (each exactly once)."""
  slots: dict[str, _Slot] = {}
  for layer in model.layers:
    if not layer.weights:
      continue
    path = module_path(layer.name)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
      slots[f"{path}.weight"] = _kernel_slot(layer.kernel)
      slots[f"{path}.bias"] = _Slot(layer.bias, tuple(layer.bias.shape), lambda v: v)
    elif isinstance(layer, keras.layers.PReLU):
      shape = tuple(layer.alpha.shape)
      slots[f"{path}.weight"] = _Slot(
        layer.alpha, (int(np.prod(shape)),), lambda v, shape=shape: v.reshape(shape)
      )
    else:
      raise TypeError(f"layer {layer.name} ({type(layer).__name__}) has no checkpoint mapping")
  covered = {id(slot.variable) for slot in slots.values()}
  if len(covered) != len(slots) or covered != {id(w) for w in model.weights}:
    raise TypeError(f"{model.name}: checkpoint keys do not cover every weight exactly once")
  return slots


@functools.lru_cache(maxsize=None)
def checkpoint_shapes(variant: str, scale: int) -> Mapping[str, tuple[int, ...]]:
  """Checkpoint key -> torch shape of a variant, read off the Keras model `build_dbpn` makes."""
  model = dbpn.build_dbpn(variant, scale)
  return types.MappingProxyType(
    {key: slot.torch_shape for key, slot in _weight_slots(model).items()}
  )


# ------------------------------------------------------------------------------------------------
# Reading and checking a state dict.
# ------------------------------------------------------------------------------------------------


def _unwrap(data: Any, notes: list[str]) -> Any:
  if not isinstance(data, Mapping) or any(isinstance(v, np.ndarray) for v in data.values()):
    return data
  for key in WRAPPER_KEYS:
    if isinstance(data.get(key), Mapping):
      notes.append(f"read the state dict under the checkpoint's {key!r} entry")
      return data[key]
  return data


def _normalise(data: Any, source: str, notes: list[str] | None = None) -> dict[str, np.ndarray]:
  """A float32 copy of a state dict, `module.` stripped; ArgumentError for anything else."""
  notes = [] if notes is None else notes
  data = _unwrap(data, notes)
  if not isinstance(data, Mapping):
    raise ArgumentError(
      "checkpoint",
      source,
      f"holds {type(data).__name__}, not a state dict (parameter names -> tensors)",
    )
  if not data:
    raise ArgumentError("checkpoint", source, "holds an empty state dict")
  tensors: dict[str, np.ndarray] = {}
  stripped = 0
  for key, value in data.items():
    if not isinstance(key, str):
      raise ArgumentError("checkpoint", source, f"has a non-string key {key!r}")
    if not isinstance(value, np.ndarray):
      raise ArgumentError(
        "checkpoint", source, f"entry {key!r} holds {type(value).__name__}, not a tensor"
      )
    if value.dtype.kind != "f":
      raise ArgumentError(
        "checkpoint", source, f"tensor {key!r} has dtype {value.dtype}, not floating point"
      )
    name = key
    if name.startswith(PARALLEL_PREFIX):
      name = name[len(PARALLEL_PREFIX) :]
      stripped += 1
    if name in tensors:
      raise ArgumentError("checkpoint", source, f"holds {name!r} both with and without 'module.'")
    tensors[name] = np.array(value, dtype=np.float32)
  if stripped:
    notes.append(f"stripped the DataParallel prefix {PARALLEL_PREFIX!r} from {stripped} keys")
  return tensors


def _read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
  source = str(path)
  if not pathlib.Path(path).is_file():
    raise ArgumentError("checkpoint", source, "no such file")
  notes: list[str] = []
  return _normalise(load_torch_file(path, source=source), source, notes), notes


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The tensors of a `torch.save(model.state_dict())` file (zip or legacy format), float32.

  A state dict nested under a `state_dict` or `model` entry (training checkpoints) is read too;
  a leading `module.` (DataParallel) is stripped. Raises `PickleFormatError` (from
  `tfpets.importers.safe_unpickle`, naming the file) when the file is not a readable torch.save
  file, its subclass `UnsafePickleError` when the pickle names a global other than tensors,
  storages and containers (nothing of it runs), and `ArgumentError("checkpoint", ...)` when it
  holds anything but a mapping of names to floating-point tensors.
  """
  return _read_checkpoint(path)[0]


# ------------------------------------------------------------------------------------------------
# Architecture inference.
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Mismatch:
  missing: list[str]
  unexpected: list[str]
  misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]  # (key, found, expected)

  @property
  def count(self) -> int:
    return len(self.missing) + len(self.unexpected) + len(self.misshaped)

  def describe(self, target: str) -> str:
    parts = []
    for what, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
      if keys:
        parts.append(f"{what} {_keys(len(keys))} ({_listing(keys)})")
    if self.misshaped:
      shown = [
        f"{key} is {list(found)} in the checkpoint, {list(expected)} in {target}"
        for key, found, expected in self.misshaped[:_LISTED]
      ]
      more = len(self.misshaped) - _LISTED
      parts.append(
        f"size mismatch for {_keys(len(self.misshaped))}: "
        + "; ".join(shown)
        + (f"; +{more} more" if more > 0 else "")
      )
    return "; ".join(parts)


def _keys(count: int) -> str:
  return f"{count} key" if count == 1 else f"{count} keys"


def _listing(keys: list[str]) -> str:
  more = len(keys) - _LISTED
  return ", ".join(keys[:_LISTED]) + (f", +{more} more" if more > 0 else "")


def _compare(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple]) -> _Mismatch:
  return _Mismatch(
    missing=[key for key in expected if key not in tensors],
    unexpected=[key for key in tensors if key not in expected],
    misshaped=[
      (key, tuple(tensors[key].shape), tuple(shape))
      for key, shape in expected.items()
      if key in tensors and tuple(tensors[key].shape) != tuple(shape)
    ],
  )


def _scale_of(tensors: Mapping[str, np.ndarray]) -> int | None:
  """The scale whose projection kernel `up1.up_conv1.deconv.weight` has, if any."""
  weight = tensors.get(SCALE_KEY)
  if weight is None or weight.ndim != 4:
    return None
  for scale in dbpn.SCALES:
    if weight.shape[2:] == (dbpn.projection_kernel(scale),) * 2:
      return scale
  return None


def _output_width(spec: dbpn.Variant) -> int:
  # The reconstruction sees every up-projection of the pass, or the last one of every pass.
  return dbpn.BASE_FILTERS * (spec.passes if spec.passes > 1 else spec.stages)


def _variant_of(tensors: Mapping[str, np.ndarray]) -> str | None:
  """The variant whose units and reconstruction width the tensors have, if any."""
  units = {"".join(match.groups()) for key in tensors if (match := _UNIT.match(key))}
  output = tensors.get(OUTPUT_KEY)
  width = output.shape[1] if output is not None and output.ndim == 4 else None
  for name, spec in dbpn.VARIANTS.items():
    wanted = {f"up{i}" for i in range(1, spec.stages + 1)}
    wanted |= {f"down{i}" for i in range(1, spec.stages)}
    if units == wanted and width == _output_width(spec):
      return name
  return None


def _target(variant: str, scale: int) -> str:
  return f"{variant} x{scale}"


def infer_architecture(
  state_dict: Mapping[str, Any], source: str = "<state dict>"
) -> tuple[str, int]:
  """(variant, scale) of a DBPN state dict, from its tensors alone.

  Every key and shape must match the variant's Keras model; otherwise ArgumentError names the
  missing, unexpected and mis-shaped keys against the closest variant.
  """
  return _infer(_normalise(state_dict, source), source)


def _infer(tensors: Mapping[str, np.ndarray], source: str) -> tuple[str, int]:
  scale, variant = _scale_of(tensors), _variant_of(tensors)
  if scale is not None and variant is not None:
    mismatch = _compare(tensors, checkpoint_shapes(variant, scale))
    if not mismatch.count:
      return variant, scale
  problem = ""
  if scale is None:
    problem = f"no {SCALE_KEY} with a x2/x4/x8 kernel (6/8/12), compared at x4; "
    scale = 4
  if variant is None:
    variant = min(dbpn.VARIANTS, key=lambda v: _compare(tensors, checkpoint_shapes(v, scale)).count)
  target = _target(variant, scale)
  mismatch = _compare(tensors, checkpoint_shapes(variant, scale))
  raise ArgumentError(
    "checkpoint",
    source,
    f"is no DBPN checkpoint tfpets knows; {problem}closest is {target} "
    f"({DESCRIPTIONS[variant]}): {mismatch.describe(target)}",
  )


def _resolve(
  tensors: Mapping[str, np.ndarray], variant: str | None, scale: int | None, source: str
) -> tuple[str, int]:
  """(variant, scale): inferred where None, checked against the tensors where given."""
  if variant is not None and variant not in dbpn.VARIANTS:
    raise ArgumentError("variant", variant, f"must be one of {sorted(dbpn.VARIANTS)}")
  if scale is not None and scale not in dbpn.SCALES:
    raise ArgumentError("scale", scale, f"must be one of {dbpn.SCALES}")
  found = _scale_of(tensors)
  if scale is not None and found is not None and scale != found:
    raise ArgumentError(
      "scale",
      scale,
      f"{source} holds x{found} projections (kernel {dbpn.projection_kernel(found)}), "
      f"not x{scale} ones (kernel {dbpn.projection_kernel(scale)})",
    )
  if variant is None:
    return _infer(tensors, source)
  scale = scale or found
  if scale is None:
    raise ArgumentError(
      "scale", None, f"{source} has no {SCALE_KEY} with a x2/x4/x8 kernel; give the scale"
    )
  target = _target(variant, scale)
  mismatch = _compare(tensors, checkpoint_shapes(variant, scale))
  if mismatch.count:
    try:
      hint = "; it fits {} x{} (leave the variant unset to infer it)".format(
        *_infer(tensors, source)
      )
    except ArgumentError:
      hint = ""
    raise ArgumentError(
      "variant",
      variant,
      f"{source} does not fit {target} ({DESCRIPTIONS[variant]}): "
      f"{mismatch.describe(target)}{hint}",
    )
  return variant, scale


def _assign(model: keras.Model, tensors: Mapping[str, np.ndarray], source: str) -> None:
  slots = _weight_slots(model)
  mismatch = _compare(tensors, {key: slot.torch_shape for key, slot in slots.items()})
  if mismatch.count:
    raise ArgumentError("checkpoint", source, mismatch.describe(model.name))
  for key, slot in slots.items():
    slot.variable.assign(slot.to_keras(tensors[key]))


# ------------------------------------------------------------------------------------------------
# Conversion.
# ------------------------------------------------------------------------------------------------


def convert_state_dict(
  state_dict: Mapping[str, Any],
  variant: str | None = None,
  scale: int | None = None,
  residual: bool | None = None,
  source: str = "<state dict>",
) -> keras.Model:
  """A Keras DBPN holding the tensors of `state_dict` (torch layout, `module.` optional).

  `variant` and `scale` are inferred from the tensors unless given; given ones must fit them.
  `residual=None` takes the variant's official setting (only DBPN-RES-MR64-3 adds the bicubic
  upscale); the tensors cannot tell, since residual training adds no weights.
  """
  tensors = _normalise(state_dict, source)
  variant, scale = _resolve(tensors, variant, scale, source)
  model = dbpn.build_dbpn(variant, scale, residual)
  _assign(model, tensors, source)
  return model


def _thousands(n: int) -> str:
  return f"{n:,}".replace(",", " ")


def describe(variant: str, scale: int, residual: bool, parameters: int) -> str:
  """'D-DBPN (T = 7), x4, not residual, 10 426 358 parameters'."""
  kind = "residual" if residual else "not residual"
  return f"{DESCRIPTIONS[variant]}, x{scale}, {kind}, {_thousands(parameters)} parameters"


def convert_checkpoint(
  path: str | os.PathLike,
  output_dir: str | os.PathLike,
  name: str = "dbpn",
  variant: str | None = None,
  scale: int | None = None,
  residual: bool | None = None,
) -> ConvertedDBPN:
  """Converts an official `.pth` and writes `<name>.keras` and `<name>.weights.h5`.

  Errors as `read_state_dict` and `convert_state_dict`.
  """
  source = str(path)
  tensors, notes = _read_checkpoint(path)
  variant, scale = _resolve(tensors, variant, scale, source)
  residual = dbpn.VARIANTS[variant].residual if residual is None else bool(residual)
  model = dbpn.build_dbpn(variant, scale, residual)
  _assign(model, tensors, source)
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  keras_path = output_dir / f"{name}.keras"
  weights_path = output_dir / f"{name}.weights.h5"
  model.save(keras_path)
  model.save_weights(weights_path)
  parameters = int(model.count_params())
  logging.info("%s: %s", pathlib.Path(path).stem, describe(variant, scale, residual, parameters))
  for note in notes:
    logging.info("%s: %s", pathlib.Path(path).stem, note)
  return ConvertedDBPN(
    model=model,
    variant=variant,
    scale=scale,
    residual=residual,
    parameters=parameters,
    keras_path=keras_path,
    weights_path=weights_path,
    notes=notes,
  )


def model_file(path: str | os.PathLike) -> pathlib.Path:
  """`path` itself, or the models/dbpn.keras of a run folder (convert_dbpn, superres_train)."""
  folder = pathlib.Path(path)
  if not folder.is_dir():
    return folder
  found = [p for p in (folder / "models" / MODEL_FILE, folder / MODEL_FILE) if p.is_file()]
  if not found:
    raise ArgumentError("model", str(path), f"a folder without models/{MODEL_FILE}")
  return found[0]


def load_dbpn(
  path: str | os.PathLike,
  variant: str | None = None,
  scale: int | None = None,
  residual: bool | None = None,
) -> keras.Model:
  """A DBPN model: a `.keras` file, a `.weights.h5` file of the given variant and scale, or the
  workdir of --stage=convert_dbpn or --stage=superres_train (its models/dbpn.keras)."""
  path = model_file(path)
  source = str(path)
  if not pathlib.Path(path).is_file():
    raise ArgumentError("model", source, "no such file")
  if source.endswith(".keras"):
    return keras.saving.load_model(path, compile=False)
  if not source.endswith(".weights.h5"):
    raise ArgumentError("model", source, "expected a .keras or a .weights.h5 file")
  if variant is None or scale is None:
    raise ArgumentError("model", source, "a .weights.h5 file needs its variant and scale")
  model = dbpn.build_dbpn(variant, scale, residual)
  try:
    model.load_weights(path)
  except ValueError as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ArgumentError(
      "model", source, f"does not hold {_target(variant, scale)} weights ({first_line})"
    ) from e
  return model
