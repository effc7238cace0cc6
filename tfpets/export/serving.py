"""The serving conventions every tfpets export shares (docs/export.md).

A model adapter (`tfpets.export.generator`, `tfpets.landmarks.export`) builds a `ServingModel`:
its signatures as `tf.function`s with named `input_signature`s and dict outputs (closures over the
Keras models), a description of every input and output, warmup requests, labels and any extra
files (TFLite models). `export` then writes, into a new version folder of the TF Serving layout
(`layout.py`):

  saved_model.pb, variables/   the SavedModel (`tf.saved_model.save`)
  assets/metadata.json         model kind, source, tfpets and TensorFlow versions, every signature's
                               inputs and outputs with dtype, shape and meaning, model details
  assets/labels.txt            one label per line (class names, point names), when the model has any
  assets.extra/tf_serving_warmup_requests   the warmup requests (`warmup.py`)
  tflite/...                   extra files of the adapter, such as TFLite models for phones

The signatures are traced with tfpets.ops on their reference paths (plain TensorFlow ops), so the
SavedModel runs where tfpets and its custom op library are absent (the TF Serving container); the
export checks this. The saved object tracks the TensorFlow variables the signatures capture, never
Keras models or Keras variables: a SavedModel that tracks Keras 3 objects loads in TF2 Python but
not into a TF1-style session, which is how TF Serving and `saved_model_cli run` load it (its
variables stay uninitialised there). The export replays its warmup requests that way, on the
written SavedModel, before it publishes the version.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging as std_logging
import os
import pathlib
import tempfile
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging as absl_logging
from tensorflow.core.protobuf import saved_model_pb2

import tfpets
from tfpets import ops
from tfpets.data import decode
from tfpets.export import layout, warmup
from tfpets.ops import _impl

DEFAULT_SIGNATURE = "serving_default"  # tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
METADATA_FILE = "metadata.json"
LABELS_FILE = "labels.txt"
# The input name of every image model: a batch of encoded images.
IMAGE_BYTES = "image_bytes"
# The custom op types of tfpets.ops, which no exported graph may contain.
CUSTOM_OP_TYPES = frozenset(_impl.OP_TYPES.values())
# Serving computes no gradients; saving the custom ones of tfpets.ops would only add functions.
SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)


@dataclasses.dataclass
class ServingModel:
  """What a model adapter hands to `export`."""

  kind: str  # generator, landmarks, ... (metadata.json "kind")
  source: str  # where the weights came from (a run, snapshot, pickle or detector folder)
  signatures: Dict[str, Any]  # name -> tf.function with an input_signature; DEFAULT_SIGNATURE first
  descriptions: Dict[str, str]  # input or output name -> its meaning, for metadata.json
  warmup_requests: List[warmup.WarmupRequest]
  labels: Sequence[str] = ()
  details: Dict[str, Any] = dataclasses.field(default_factory=dict)  # model configuration
  files: Dict[str, bytes] = dataclasses.field(default_factory=dict)  # relative path -> content


@dataclasses.dataclass
class ExportResult:
  path: pathlib.Path  # the version folder
  model_name: str
  version: int
  signatures: List[str]
  files: List[str]  # relative paths of the extra files

  def to_json(self) -> dict:
    return {
      "path": str(self.path),
      "model_name": self.model_name,
      "version": self.version,
      "signatures": self.signatures,
      "files": self.files,
    }


def image_bytes_spec() -> tf.TensorSpec:
  """The input of every image model: encoded images [None] tf.string."""
  return tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
  """One encoded image (a scalar string) -> uint8 [H, W, 3], the pixels `tfpets.data.decode` gives.

  Accepts what `tf.io.decode_image(channels=3, expand_animations=False)` accepts: JPEG, PNG, GIF
  (first frame), BMP and WebP, grayscale and alpha converted to RGB. JPEGs are decoded with the
  accurate integer IDCT, whose pixels equal Pillow's (the decoder of the training data);
  TensorFlow's default fast IDCT differs from them by a few levels. Unlike `tfpets.data.decode`, no
  EXIF orientation is applied and TIFF is not read, so clients send upright images.
  """
  image = tf.cond(
    tf.io.is_jpeg(image_bytes),
    lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
    lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
  )
  image.set_shape([None, None, 3])
  return image


def image_warmup_requests(size: int) -> List[warmup.WarmupRequest]:
  """The warmup of an image model: one request of two random images of different sizes around
  `size`, a JPEG and a PNG."""
  rng = np.random.default_rng(0)
  images = [
    decode.encode_jpeg(rng.integers(0, 256, (size, size * 3 // 2, 3), np.uint8)),
    decode.encode_png(rng.integers(0, 256, (size * 2, size, 3), np.uint8)),
  ]
  inputs = {IMAGE_BYTES: np.array(images, dtype=object)}
  return [warmup.WarmupRequest(DEFAULT_SIGNATURE, inputs)]


@contextlib.contextmanager
def reference_ops() -> Iterator[None]:
  """Inside the block, tfpets.ops trace their reference paths (plain TensorFlow ops)."""
  # Called eagerly, `in_xla_context()` says whether `set_xla(True)` is already in force.
  previous = ops.in_xla_context()
  ops.set_xla(True)  # `impl='auto'` then never picks the custom kernels
  try:
    yield
  finally:
    ops.set_xla(previous)


def export(
  model: ServingModel,
  export_dir: str | os.PathLike,
  name: str,
  version: Optional[int] = None,
  verify: bool = True,
) -> ExportResult:
  """Writes `model` as version `version` (default: the next free one) of model `name` under
  `export_dir`; see the module docstring for what a version folder holds."""
  if DEFAULT_SIGNATURE not in model.signatures:
    raise ValueError(f"signatures must include {DEFAULT_SIGNATURE!r}, got {list(model.signatures)}")
  model_path = layout.model_dir(export_dir, name)
  version = layout.resolve_version(model_path, version)
  with layout.staged_version(model_path, version) as staging:
    with reference_ops():
      concrete = {key: fn.get_concrete_function() for key, fn in model.signatures.items()}
    root = tf.Module()
    root.saved_variables = captured_variables(concrete.values())
    metadata = build_metadata(model, name, version, concrete)
    with tempfile.TemporaryDirectory() as assets_source:
      _attach_assets(root, model, metadata, pathlib.Path(assets_source))
      tf.saved_model.save(root, str(staging), signatures=concrete, options=SAVE_OPTIONS)
    check_no_custom_ops(staging)
    warmup.write_warmup(staging, name, model.warmup_requests)
    for relative, content in model.files.items():
      target = staging / relative
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(content)
    if verify:
      replay_warmup(staging)
  return ExportResult(
    model_path / str(version), name, version, list(model.signatures), sorted(model.files)
  )


def check_destination(export_dir: str | os.PathLike, name: str, version: Optional[int]) -> None:
  """Raises the ArgumentError `export` would raise for the name or version, before the work."""
  layout.resolve_version(layout.model_dir(export_dir, name), version)


def build_metadata(
  model: ServingModel, name: str, version: int, concrete: Mapping[str, Any]
) -> dict:
  """The content of assets/metadata.json."""
  return {
    "kind": model.kind,
    "model_name": name,
    "version": version,
    "source": model.source,
    "tfpets_version": tfpets.__version__,
    "tensorflow_version": tf.__version__,
    "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "signatures": {
      key: signature_description(fn, model.descriptions) for key, fn in concrete.items()
    },
    "labels": LABELS_FILE if model.labels else None,
    "files": sorted(model.files),
    "details": model.details,
  }


def _tensor_description(spec: Any, descriptions: Mapping[str, str], key: str) -> dict:
  shape = [-1 if d is None else int(d) for d in spec.shape] if spec.shape.rank is not None else None
  return {"dtype": spec.dtype.name, "shape": shape, "description": descriptions.get(key, "")}


def signature_description(concrete, descriptions: Mapping[str, str]) -> dict:
  """{"inputs": {name: {dtype, shape, description}}, "outputs": {...}} of a concrete function."""
  args, kwargs = concrete.structured_input_signature
  specs = list(args) + list(kwargs.values())
  inputs = {s.name: _tensor_description(s, descriptions, s.name) for s in specs}
  outputs = {
    key: _tensor_description(tf.TensorSpec(t.shape, t.dtype), descriptions, key)
    for key, t in concrete.structured_outputs.items()
  }
  return {"inputs": inputs, "outputs": outputs}


def captured_variables(functions) -> List[tf.Variable]:
  """The TensorFlow variables the concrete functions capture, each once, in order."""
  found = {}
  for function in functions:
    for variable in function.graph.variables:
      found.setdefault(id(variable), variable)
  return list(found.values())


def _attach_assets(
  root: tf.Module, model: ServingModel, metadata: dict, source_dir: pathlib.Path
) -> None:
  """Writes metadata.json (and labels.txt) to `source_dir` and has `root` track them as
  `tf.saved_model.Asset`s, which the save copies into assets/."""
  metadata_path = source_dir / METADATA_FILE
  metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
  root.metadata_file = tf.saved_model.Asset(str(metadata_path))
  if model.labels:
    labels_path = source_dir / LABELS_FILE
    labels_path.write_text("".join(f"{label}\n" for label in model.labels))
    root.labels_file = tf.saved_model.Asset(str(labels_path))


def saved_op_types(version_dir: str | os.PathLike) -> set:
  """Every op type the SavedModel's graph and functions use."""
  proto = saved_model_pb2.SavedModel()
  proto.ParseFromString((pathlib.Path(version_dir) / "saved_model.pb").read_bytes())
  types = set()
  for meta_graph in proto.meta_graphs:
    types.update(node.op for node in meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      types.update(node.op for node in function.node_def)
  return types


def check_no_custom_ops(version_dir: str | os.PathLike) -> None:
  found = saved_op_types(version_dir) & CUSTOM_OP_TYPES
  if found:
    raise RuntimeError(
      f"{version_dir}: the graph uses tfpets custom ops {sorted(found)}, which TF Serving lacks"
    )


def replay_warmup(version_dir: str | os.PathLike) -> None:
  """Runs every warmup request on the written SavedModel as TF Serving does: loaded into a TF1
  session (which restores the variables), each signature run by its tensor names."""
  requests = warmup.read_warmup(warmup.warmup_path(version_dir))
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    with _quiet_logs():
      meta_graph = tf.compat.v1.saved_model.load(
        session, [tf.saved_model.SERVING], str(version_dir)
      )
    for request in requests:
      signature = meta_graph.signature_def[request.model_spec.signature_name]
      inputs = warmup.request_inputs(request)
      feeds = {signature.inputs[key].name: value for key, value in inputs.items()}
      fetches = {key: info.name for key, info in signature.outputs.items()}
      for key, value in session.run(fetches, feeds).items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
          raise RuntimeError(f"{version_dir}: warmup output {key!r} is not finite")


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
  """TensorFlow's Python loggers at ERROR inside the block: loading logs a deprecation notice and
  one warning per function with a custom gradient (those of tfpets.ops, which the export leaves
  out: serving computes no gradients)."""
  loggers = [absl_logging.get_absl_logger(), tf.get_logger()]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(std_logging.ERROR)
  try:
    yield
  finally:
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def load_quietly(version_dir: str | os.PathLike):
  """`tf.saved_model.load` (TF2), without the log lines `_quiet_logs` names."""
  with _quiet_logs():
    return tf.saved_model.load(str(version_dir))


def load_metadata(version_dir: str | os.PathLike) -> dict:
  return json.loads((pathlib.Path(version_dir) / "assets" / METADATA_FILE).read_text())
