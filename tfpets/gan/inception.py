"""Feature networks for FID and KID: the standard Inception graph read from a local file, or a
seeded random CNN when the user has none.

`InceptionGraph` reads TensorFlow's `inception-2015-12-05` frozen graph
(`classify_image_graph_def.pb`), the network behind every published FID figure (Heusel et al.
2017, and the official StyleGAN2-ADA `metrics/frechet_inception_distance.py`). Parsing a GraphDef
protobuf executes no Python code. Images are fed as float32 NHWC in [0, 255] to the graph's
`ExpandDims:0` tensor (the batch that its `DecodeJpeg` -> `Cast` -> `ExpandDims` path would
produce from one JPEG), so the graph's own `ResizeBilinear` to 299 x 299 and its scaling to
[-1, 1] run on them; features are `pool_3:0`, 2048 per image. tfpets never downloads the file.

`SeededRandomCNN` needs no file: five random 3x3 convolutions whose weights come from a fixed
NumPy seed, so its figures are reproducible on any machine. They are not FID: every output names
this network (`fid2k_seeded`, `"feature_network": "seeded-random-cnn (not standard FID)"`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Optional

import numpy as np
import tensorflow as tf

INPUT_TENSOR = "ExpandDims:0"
FEATURE_TENSOR = "pool_3:0"
STANDARD_DESCRIPTION = "inception-2015-12-05 pool_3 (standard FID)"
SEEDED_DESCRIPTION = "seeded-random-cnn (not standard FID)"
_DEPRECATED_BATCHNORM = "BatchNormWithGlobalNormalization"


class FeatureNetworkError(ValueError):
  """A feature-network file that is not what it should be; the message starts with the file."""


class FeatureNetwork:
  """Maps uint8 NHWC images (1 or 3 channels) to float32 features [N, dim].

  Attributes:
    id: Identity of the network and its weights, part of the real-statistics cache key.
    description: What the network is, written beside every metric value.
    metric_suffix: Appended to metric names ("" only for the standard Inception graph).
    dim: Feature size.
  """

  id: str
  description: str
  metric_suffix: str
  dim: int

  def features(self, images) -> np.ndarray:
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8 or images.shape.rank != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(
        f"feature networks take uint8 NHWC images with 1 or 3 channels, got "
        f"{images.dtype.name} {images.shape}"
      )
    if images.shape[-1] == 1:
      images = tf.tile(images, [1, 1, 1, 3])  # grayscale as RGB, as the official metrics do
    return self._features(tf.cast(images, tf.float32)).numpy()

  def _features(self, images: tf.Tensor) -> tf.Tensor:
    """float32 NHWC in [0, 255] -> float32 [N, dim]."""
    raise NotImplementedError


class InceptionGraph(FeatureNetwork):
  """The `inception-2015-12-05` frozen graph from `path`, `pool_3` features."""

  metric_suffix = ""
  description = STANDARD_DESCRIPTION

  def __init__(self, path: str | os.PathLike):
    self.path = str(path)
    data = _read_file(self.path)
    graph_def = _parse_graph_def(self.path, data)
    self.id = "inception-2015-12-05-" + hashlib.sha256(data).hexdigest()[:16]
    self._function = _import_features(self.path, _replace_deprecated_batchnorm(graph_def))
    self.dim = int(self._function.structured_outputs.shape[-1])

  def _features(self, images: tf.Tensor) -> tf.Tensor:
    pooled = self._function(images)
    return tf.reshape(pooled, [tf.shape(pooled)[0], self.dim])


def _read_file(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise FeatureNetworkError(f"{path}: cannot read the Inception graph ({e.strerror})") from e


def _parse_graph_def(path: str, data: bytes) -> tf.compat.v1.GraphDef:
  graph_def = tf.compat.v1.GraphDef()
  try:
    graph_def.ParseFromString(data)
  except Exception as e:  # protobuf raises its own DecodeError type
    raise FeatureNetworkError(f"{path}: not a frozen Inception graph (not a GraphDef)") from e
  names = {node.name for node in graph_def.node}
  for tensor in (FEATURE_TENSOR, INPUT_TENSOR):
    if tensor.split(":")[0] not in names:
      raise FeatureNetworkError(
        f"{path}: not a frozen Inception graph (no {tensor.split(':')[0]} tensor)"
      )
  return graph_def


def _replace_deprecated_batchnorm(graph_def: tf.compat.v1.GraphDef) -> tf.compat.v1.GraphDef:
  """Rewrites each `BatchNormWithGlobalNormalization` node into the ops its kernel computes.

  The 2015 graph uses that op, which TensorFlow refuses to run inside a tf.function (it was removed
  from GraphDef version 9 on). Its kernel computes (t - m) * (rsqrt(v + eps) * gamma) + beta; the
  same ops in the same order give the same float32 values.
  """
  out = tf.compat.v1.GraphDef()
  out.versions.CopyFrom(graph_def.versions)
  out.library.CopyFrom(graph_def.library)
  for node in graph_def.node:
    if node.op != _DEPRECATED_BATCHNORM:
      out.node.add().CopyFrom(node)
      continue
    t, mean, var, beta, gamma = node.input
    dtype = node.attr["T"]
    name = node.name + "/tfpets"

    def add(op: str, suffix: str, inputs, **attrs):
      new = out.node.add(
        op=op, name=f"{name}/{suffix}" if suffix else node.name, device=node.device
      )
      new.input.extend(inputs)
      new.attr["T" if op != "Const" else "dtype"].CopyFrom(dtype)
      for key, value in attrs.items():
        new.attr[key].CopyFrom(value)
      return new.name

    epsilon = tf.make_tensor_proto(node.attr["variance_epsilon"].f, tf.as_dtype(dtype.type))
    eps = add("Const", "epsilon", [], value=tf.compat.v1.AttrValue(tensor=epsilon))
    scale = add("Rsqrt", "rsqrt", [add("AddV2", "var_plus_epsilon", [var, eps])])
    if node.attr["scale_after_normalization"].b:
      scale = add("Mul", "scale", [scale, gamma])
    scaled = add("Mul", "scaled", [add("Sub", "centered", [t, mean]), scale])
    add("AddV2", "", [scaled, beta])
  return out


def _import_features(path: str, graph_def: tf.compat.v1.GraphDef):
  """A concrete function: float32 [N, H, W, 3] in [0, 255] -> pool_3 [N, 1, 1, dim]."""

  def import_graph(images):
    (pooled,) = tf.compat.v1.import_graph_def(
      graph_def,
      input_map={INPUT_TENSOR: images},
      return_elements=[FEATURE_TENSOR],
      name="inception",
    )
    return pooled

  spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
  try:
    wrapped = tf.compat.v1.wrap_function(import_graph, [spec])
  except (ValueError, TypeError, tf.errors.OpError) as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise FeatureNetworkError(
      f"{path}: not a frozen Inception graph (import failed: {first_line})"
    ) from e
  # Keep only the ops between the images and pool_3 (not the JPEG decoder or the classifier).
  return wrapped.prune(feeds=wrapped.inputs[0], fetches=wrapped.outputs[0])


class SeededRandomCNN(FeatureNetwork):
  """Five 3x3 stride-2 ReLU convolutions with He-normal weights drawn from a fixed seed.

  Images are scaled to [-1, 1] and resized to 128 x 128 (bilinear, antialiased); the features are
  the global average of each of the last three layers, concatenated (128 + 128 + 256 = 512; few
  enough that the matrix square root of FID stays quick on a CPU).
  Weights come from `np.random.RandomState`, whose stream NumPy keeps identical across versions.
  """

  INPUT_SIZE = 128
  CHANNELS = (32, 64, 128, 128, 256)
  POOLED_LAYERS = 3

  metric_suffix = "_seeded"
  description = SEEDED_DESCRIPTION

  def __init__(self, seed: int = 0):
    self.seed = seed
    self.id = f"seeded-random-cnn-v1-seed{seed}"
    rng = np.random.RandomState(seed)
    self._kernels = []
    fan_in_channels = 3
    for channels in self.CHANNELS:
      std = np.sqrt(2.0 / (9 * fan_in_channels))
      kernel = rng.standard_normal((3, 3, fan_in_channels, channels)) * std
      self._kernels.append(tf.constant(kernel.astype(np.float32)))
      fan_in_channels = channels
    self.dim = sum(self.CHANNELS[-self.POOLED_LAYERS :])
    self._run = tf.function(
      self._forward,
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )

  def _forward(self, images: tf.Tensor) -> tf.Tensor:
    x = tf.image.resize(images / 127.5 - 1.0, [self.INPUT_SIZE, self.INPUT_SIZE], antialias=True)
    pooled = []
    for kernel in self._kernels:
      x = tf.nn.relu(tf.nn.conv2d(x, kernel, strides=2, padding="SAME"))
      pooled.append(tf.reduce_mean(x, axis=[1, 2]))
    return tf.concat(pooled[-self.POOLED_LAYERS :], axis=-1)

  def _features(self, images: tf.Tensor) -> tf.Tensor:
    return self._run(images)


def load_feature_network(inception_graph: Optional[str | os.PathLike] = None) -> FeatureNetwork:
  """The Inception graph at `inception_graph`, or the seeded random CNN when it is empty/None."""
  if inception_graph:
    return InceptionGraph(inception_graph)
  return SeededRandomCNN()
