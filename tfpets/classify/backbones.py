"""Backbones with local weights only: keras.applications (Inception-V3, Xception, EfficientNet
B0-B7) and keras-hub ViT presets read from a local folder.

Every backbone built here takes float RGB images in [0, 255] and normalises them inside itself,
exactly once: Inception-V3 and Xception get a `Rescaling(1/127.5, offset=-1)` in front (they were
trained on [-1, 1], `keras.applications.inception_v3.preprocess_input` mode "tf"); EfficientNet
normalises itself (`Rescaling(1/255)` + `Normalization` with the ImageNet mean and variance, see
`keras/src/applications/efficientnet.py:EfficientNet`).

Nothing is ever downloaded: `weights="imagenet"` reads the Keras release file from
`keras_home_models()` and fails with a `ValueError` naming the expected path when it is missing.
"""

import hashlib
import json
import math
import os
import warnings

import keras
import numpy as np

from tfpets.errors import ArgumentError

RANDOM_INIT = "random initialisation; nothing downloaded"

# The ImageNet statistics EfficientNet's `Normalization` uses (torchvision convention, [0, 1] scale).
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# keras.applications constructor, Keras release notop file and its md5 (from the Keras source:
# `keras/src/applications/{inception_v3,xception,efficientnet}.py`).
_APPLICATIONS = {
  "inception_v3": (
    "InceptionV3",
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "bcbd6486424b2319ff4ef7d526e38f63",
  ),
  "xception": (
    "Xception",
    "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "b0042744bf5b25fce3cb969f33bebb97",
  ),
  "efficientnet_b0": (
    "EfficientNetB0",
    "efficientnetb0_notop.h5",
    "50bc09e76180e00e4465e1a485ddc09d",
  ),
  "efficientnet_b1": (
    "EfficientNetB1",
    "efficientnetb1_notop.h5",
    "74c4e6b3e1f6a1eea24c589628592432",
  ),
  "efficientnet_b2": (
    "EfficientNetB2",
    "efficientnetb2_notop.h5",
    "111f8e2ac8aa800a7a99e3239f7bfb39",
  ),
  "efficientnet_b3": (
    "EfficientNetB3",
    "efficientnetb3_notop.h5",
    "af6d107764bb5b1abb91932881670226",
  ),
  "efficientnet_b4": (
    "EfficientNetB4",
    "efficientnetb4_notop.h5",
    "ebc24e6d6c33eaebbd558eafbeedf1ba",
  ),
  "efficientnet_b5": (
    "EfficientNetB5",
    "efficientnetb5_notop.h5",
    "38879255a25d3c92d5e44e04ae6cec6f",
  ),
  "efficientnet_b6": (
    "EfficientNetB6",
    "efficientnetb6_notop.h5",
    "9ecce42647a20130c1f39a5d4cb75743",
  ),
  "efficientnet_b7": (
    "EfficientNetB7",
    "efficientnetb7_notop.h5",
    "cbcfe4450ddf6f3ad90b1b398090fe4a",
  ),
}
APPLICATION_NAMES = tuple(_APPLICATIONS)

# Default input sizes of `keras.applications` (the `default_size` each constructor passes).
STANDARD_SIZES = {
  "inception_v3": 299,
  "xception": 299,
  "efficientnet_b0": 224,
  "efficientnet_b1": 240,
  "efficientnet_b2": 260,
  "efficientnet_b3": 300,
  "efficientnet_b4": 380,
  "efficientnet_b5": 456,
  "efficientnet_b6": 528,
  "efficientnet_b7": 600,
}


def keras_home_models() -> str:
  """The directory `keras.utils.get_file(..., cache_subdir="models")` uses for application weights.

  Computed at call time the way `keras/src/backend/config.py` and `keras/src/utils/file_utils.py:
  get_file` compute it (`$KERAS_HOME`, else `~/.keras`; `/tmp/.keras` when that is not writable).
  Keras itself reads `$KERAS_HOME` once at import; `application` loads the file from this directory
  itself, so a `KERAS_HOME` set after import is honoured.
  """
  if "KERAS_HOME" in os.environ:
    base = os.environ["KERAS_HOME"]
  else:
    home = os.path.expanduser("~")
    base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
  base = os.path.expanduser(base)
  if not os.access(base, os.W_OK):
    base = os.path.join("/tmp", ".keras")
  return os.path.join(base, "models")


def is_efficientnet(name: str) -> bool:
  return name.startswith("efficientnet_")


def input_normalization(name: str) -> keras.layers.Layer | None:
  """The layer mapping [0, 255] images to what backbone `name` expects, or None when the backbone
  normalises itself (EfficientNet)."""
  _check_name(name)
  if is_efficientnet(name):
    return None
  return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="input_rescaling")


def imagenet_weights_path(name: str) -> str:
  """Where the Keras ImageNet notop file of backbone `name` must be for `weights="imagenet"`."""
  _check_name(name)
  return os.path.join(keras_home_models(), _APPLICATIONS[name][1])


def application(name: str, input_shape, weights: str = "") -> tuple[keras.Model, str]:
  """An `include_top=False` keras.applications backbone taking [0, 255] images.

  Args:
    name: one of `APPLICATION_NAMES`.
    input_shape: (height, width, 3).
    weights: "" (random initialisation), "imagenet" (the Keras release file, which must already be
      in `keras_home_models()`), or the path of a local weights file (Keras 3 `.weights.h5` or a
      legacy Keras HDF5 file such as the Keras release file), loaded by topology.

  Returns:
    `(model, description)`: a flat functional model (layer names as in keras.applications, e.g.
    "mixed7", "block6d_add", so feature taps can be picked with `get_layer`) whose output is the
    last feature map; and a one-line description of the weights for logs, e.g.
    "efficientnetb3_notop.h5 (ImageNet, 10.8M values)".

  EfficientNet computes (x/255 - mean)/std with the ImageNet statistics for a random initialisation
  and for any file holding them. The Keras ImageNet files store the standard deviations in the
  variance slot (tensorflow/tensorflow#49930); Keras compensates with an extra
  `Rescaling(1/sqrt(std))` only when `weights="imagenet"` is passed to it, not for a file path. Here
  the graph never has that layer: a loaded variance equal to the ImageNet standard deviations is
  squared instead, so "imagenet" and the same file given by path build the same maths. Other
  statistics in a file (e.g. a model saved by this function: std^2 already) are kept.
  """
  _check_name(name)
  path, source = _resolve_weights(name, weights)
  model = _build(name, input_shape)
  if path:
    _load_weights(model, name, path)
  if is_efficientnet(name):
    _fix_efficientnet_normalization(model, loaded=bool(path))
  if not path:
    return model, RANDOM_INIT
  values = sum(int(np.prod(w.shape)) for w in model.weights)
  shown = os.path.basename(path) if source == "ImageNet" else path
  return model, f"{shown} ({source}, {values / 1e6:.1f}M values)"


def disable_drop_connect(model: keras.Model) -> int:
  """Sets the rate of EfficientNet's per-block stochastic-depth `Dropout` layers (`block*_drop`) to
  0 (they are active in training and `EfficientNetB*()` does not expose their rate). Returns how many
  layers were changed."""
  changed = 0
  for layer in _all_layers(model):
    if isinstance(layer, keras.layers.Dropout) and layer.name.endswith("_drop"):
      layer.rate = 0.0
      changed += 1
  return changed


def _check_name(name: str) -> None:
  if name not in _APPLICATIONS:
    raise ValueError(f"backbone must be one of {', '.join(APPLICATION_NAMES)}, got {name!r}")


def _resolve_weights(name: str, weights: str) -> tuple[str, str]:
  """(path to load or "", description of the source)."""
  if not weights:
    return "", ""
  if weights == "imagenet":
    path = imagenet_weights_path(name)
    if not os.path.isfile(path):
      raise ArgumentError(
        "backbone_weights",
        weights,
        f"ImageNet weights for {name} not found: expected the Keras file {path} "
        "(nothing is downloaded; copy the file there, or set KERAS_HOME)",
      )
    _check_md5(path, _APPLICATIONS[name][2])
    return path, "ImageNet"
  if not os.path.isfile(weights):
    raise ArgumentError("backbone_weights", weights, "no such file (nothing is downloaded)")
  return weights, "local file"


def _check_md5(path: str, expected: str) -> None:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  if digest.hexdigest() != expected:
    raise ArgumentError(
      "backbone_weights",
      path,
      f"not the Keras release file: md5 {digest.hexdigest()}, expected {expected}",
    )


def _build(name: str, input_shape) -> keras.Model:
  constructor = getattr(keras.applications, _APPLICATIONS[name][0])
  inputs = keras.Input(shape=tuple(input_shape), name="images")
  normalization = input_normalization(name)
  x = inputs if normalization is None else normalization(inputs)
  base = constructor(
    include_top=False, weights=None, input_tensor=x, input_shape=tuple(input_shape)
  )
  # Rewrap with the single input so the model takes a tensor, not a one-element list.
  return keras.Model(inputs, base.output, name=base.name)


def _load_weights(model: keras.Model, name: str, path: str) -> None:
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      model.load_weights(path)
  except (ValueError, KeyError, OSError, IndexError, TypeError) as error:
    raise ArgumentError(
      "backbone_weights", path, f"cannot load it into the {name} backbone: {error}"
    ) from error
  # Keras warns, rather than fails, when parts of a `.weights.h5` file match no layer.
  skipped = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
  if skipped:
    raise ArgumentError(
      "backbone_weights", path, f"cannot load it into the {name} backbone: {skipped[0]}"
    )
  for warning in caught:
    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _efficientnet_normalization(model: keras.Model) -> keras.layers.Normalization:
  return next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))


def _fix_efficientnet_normalization(model: keras.Model, loaded: bool) -> None:
  layer = _efficientnet_normalization(model)
  std = np.asarray(IMAGENET_STDDEV_RGB, np.float32)
  variance = np.asarray(layer.adapt_variance.numpy(), np.float32)
  if not loaded:
    layer.adapt_mean.assign(np.asarray(IMAGENET_MEAN_RGB, np.float32))
    layer.adapt_variance.assign(std**2)
  elif np.allclose(variance, std, rtol=1e-4, atol=0.0):
    layer.adapt_variance.assign(variance**2)
  # The layer computes with constants cached from its variables when they were last loaded.
  layer.finalize_state()


def _all_layers(model: keras.layers.Layer):
  for layer in getattr(model, "layers", ()):
    yield layer
    yield from _all_layers(layer)


# ---------------------------------------------------------------------------------------------
# keras-hub ViT presets from a local folder.

# ViT checkpoints from google-research/vision_transformer expect [-1, 1] inputs.
_VIT_SCALE = 1.0 / 127.5
_VIT_OFFSET = -1.0


def vit_from_preset(
  directory: str, num_classes: int, image_size: int = 0, dropout: float = 0.0
) -> tuple[keras.Model, str]:
  """A keras-hub ViT classifier from a local Keras preset folder, with a fresh float32 head of
  `num_classes` (keras-hub skips the task weights when `num_classes` is passed) and `dropout` before
  it.

  The folder must exist and hold `config.json` (made by `save_to_preset`, or a copy of the kagglehub
  cache); nothing else is accepted, so nothing is downloaded. Its image converter must map [0, 255]
  to [-1, 1] (scale 1/127.5, offset -1): some published preset revisions store scale 1/255 and no
  offset, which would silently feed [0, 1] images. The model takes [0, 255] images at the preset's
  native size (its position embeddings do not interpolate); `image_size`, when not 0, must equal it.

  Returns `(model, description)` as `application` does; the model is `vit_with_rescaling` of the
  `ViTImageClassifier`.
  """
  import keras_hub  # Imported here: only ViT needs it.

  config = _read_local_preset(directory)
  native = preset_image_size(directory, config)
  if image_size and image_size != native:
    raise ArgumentError(
      "image_size",
      image_size,
      f"the ViT preset {directory} is {native}x{native}; its position embeddings cannot be "
      "interpolated to another size",
    )
  classifier = keras_hub.models.ViTImageClassifier.from_preset(
    directory,
    num_classes=num_classes,
    dropout=dropout,
    head_dtype="float32",
    dtype=keras.config.dtype_policy().name,  # The global policy, not the one saved in the preset.
  )
  _check_vit_converter(directory, classifier)
  values = classifier.backbone.count_params()
  model = vit_with_rescaling(classifier, native)
  return model, f"{directory} (keras-hub preset, {values / 1e6:.1f}M values)"


def vit_with_rescaling(classifier: keras.Model, image_size: int) -> keras.Model:
  """`classifier` (a `ViTImageClassifier`) behind a `Rescaling(1/127.5, offset=-1)`, so the model
  takes [0, 255] images. keras-hub tasks apply their preprocessor only inside `fit`/`predict` of
  the task itself, not in `__call__`, so the wrapper never normalises twice."""
  inputs = keras.Input(shape=(image_size, image_size, 3), name="images")
  x = keras.layers.Rescaling(_VIT_SCALE, offset=_VIT_OFFSET, name="input_rescaling")(inputs)
  return keras.Model(inputs, classifier(x), name="vit")


def preset_image_size(directory: str, config: dict | None = None) -> int:
  """The square input size stored in a local ViT preset's `config.json`."""
  config = _read_local_preset(directory) if config is None else config
  shape = config.get("config", {}).get("image_shape")
  if not shape or shape[0] != shape[1]:
    raise ArgumentError(
      "preset", directory, f"no square image_shape in its config.json (found {shape})"
    )
  return int(shape[0])


def _read_local_preset(directory: str) -> dict:
  path = os.path.join(str(directory), "config.json")
  if not os.path.isdir(str(directory)) or not os.path.isfile(path):
    raise ArgumentError(
      "preset", directory, "not a local folder holding config.json (nothing is downloaded)"
    )
  with open(path) as f:
    return json.load(f)


def _check_vit_converter(directory: str, classifier) -> None:
  preprocessor = getattr(classifier, "preprocessor", None)
  converter = getattr(preprocessor, "image_converter", None)
  if converter is None:
    raise ArgumentError("preset", directory, "no image converter to map [0, 255] to [-1, 1]")
  scale, offset = converter.scale, converter.offset
  if not (_all_close(scale, _VIT_SCALE) and _all_close(offset, _VIT_OFFSET)):
    raise ArgumentError(
      "preset",
      directory,
      f"its image converter (scale={scale}, offset={offset}) does not map [0, 255] to [-1, 1] "
      "(expected scale 1/127.5, offset -1)",
    )


def _all_close(value, expected: float) -> bool:
  if value is None:
    return False
  values = np.asarray(value, np.float64).ravel()
  return bool(values.size) and all(math.isclose(v, expected, rel_tol=1e-5) for v in values)
