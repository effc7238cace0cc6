"""Backbones: local weights only, normalisation exactly once, the EfficientNet variance trap and
keras-hub ViT presets from a local folder."""

import hashlib
import json
import os
import socket

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from tfpets.classify import backbones

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _images(size, batch=2, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _tap(model, tensor):
  return keras.Model(model.input, tensor)


def _normalization(model):
  (layer,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
  return layer


def _release_like_efficientnet_b0(size, seed=1):
  """A bare keras.applications EfficientNet-B0 holding what the Keras release files hold in their
  Normalization: the ImageNet mean, and the standard deviations in the variance slot."""
  keras.utils.set_random_seed(seed)
  model = keras.applications.EfficientNetB0(
    include_top=False, weights=None, input_shape=(size, size, 3)
  )
  layer = _normalization(model)
  layer.adapt_mean.assign(MEAN)
  layer.adapt_variance.assign(STD)
  return model


def _save_legacy_h5(model, path):
  with h5py.File(path, "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _assert_same_as_source_with_squared_variance(model, source, x):
  """Every weight loaded: the loaded model equals the source once the source's variance slot holds
  std^2 (what Keras's own `weights="imagenet"` graph computes with its extra Rescaling)."""
  layer = _normalization(source)
  layer.adapt_variance.assign(STD**2)
  layer.finalize_state()
  np.testing.assert_allclose(model(x), source(x), rtol=1e-4, atol=1e-4)


def _md5(path):
  return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_keras_home_models_follows_the_environment_at_call_time(monkeypatch, tmp_path):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  assert backbones.keras_home_models() == os.path.join(str(tmp_path), "models")
  monkeypatch.delenv("KERAS_HOME")
  home = os.path.expanduser("~")
  if os.access(home, os.W_OK):
    assert backbones.keras_home_models() == os.path.join(home, ".keras", "models")


@pytest.mark.parametrize(
  "name, file_name",
  [
    ("efficientnet_b3", "efficientnetb3_notop.h5"),
    ("inception_v3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ("xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
  ],
)
def test_imagenet_without_the_file_names_the_expected_path(monkeypatch, tmp_path, name, file_name):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  expected = os.path.join(str(tmp_path), "models", file_name)
  assert backbones.imagenet_weights_path(name) == expected
  with pytest.raises(ValueError) as error:
    backbones.application(name, (96, 96, 3), weights="imagenet")
  assert expected in str(error.value)
  assert "nothing is downloaded" in str(error.value)
  assert not os.path.exists(expected)


def test_imagenet_file_that_is_not_the_release_file_is_rejected(monkeypatch, tmp_path):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  path = tmp_path / "models" / "efficientnetb0_notop.h5"
  path.parent.mkdir()
  path.write_bytes(b"not weights")
  with pytest.raises(ValueError, match="not the Keras release file"):
    backbones.application("efficientnet_b0", (32, 32, 3), weights="imagenet")


def test_efficientnet_random_init_normalises_once_with_imagenet_statistics():
  model, description = backbones.application("efficientnet_b0", (32, 32, 3))
  assert description == backbones.RANDOM_INIT
  x = _images(32)
  stem_input = _tap(model, model.get_layer("stem_conv_pad").input)(x)
  np.testing.assert_allclose(stem_input, (x / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-5)
  assert sum(isinstance(layer, keras.layers.Rescaling) for layer in model.layers) == 1


@pytest.mark.parametrize("name, size", [("xception", 71), ("inception_v3", 75)])
def test_inception_and_xception_rescale_to_minus_one_one_once(name, size):
  model, _ = backbones.application(name, (size, size, 3))
  x = _images(size)
  first_conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
  np.testing.assert_allclose(
    _tap(model, first_conv.input)(x), x / 127.5 - 1.0, rtol=1e-6, atol=1e-6
  )
  assert sum(isinstance(layer, keras.layers.Rescaling) for layer in model.layers) == 1


@pytest.mark.parametrize("file_name", ["release_like.weights.h5", "efficientnetb0_notop.h5"])
def test_efficientnet_local_file_gets_the_imagenet_normalisation(tmp_path, file_name):
  source = _release_like_efficientnet_b0(32)
  path = str(tmp_path / file_name)
  if file_name.endswith(".weights.h5"):
    source.save_weights(path)
  else:
    _save_legacy_h5(source, path)
  model, description = backbones.application("efficientnet_b0", (32, 32, 3), weights=path)
  assert description.startswith(f"{path} (local file, ")
  x = _images(32)
  stem_input = _tap(model, model.get_layer("stem_conv_pad").input)(x)
  np.testing.assert_allclose(stem_input, (x / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-5)
  _assert_same_as_source_with_squared_variance(model, source, x)


def test_imagenet_file_in_keras_home_loads_with_the_same_maths(monkeypatch, tmp_path):
  source = _release_like_efficientnet_b0(32, seed=2)
  path = tmp_path / "models" / "efficientnetb0_notop.h5"
  path.parent.mkdir()
  _save_legacy_h5(source, str(path))
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  # The file written here stands in for the release file, so the table holds its md5.
  constructor, file_name, _ = backbones._APPLICATIONS["efficientnet_b0"]
  monkeypatch.setitem(
    backbones._APPLICATIONS, "efficientnet_b0", (constructor, file_name, _md5(path))
  )
  model, description = backbones.application("efficientnet_b0", (32, 32, 3), weights="imagenet")
  values = sum(int(np.prod(w.shape)) for w in source.weights)
  assert description == f"efficientnetb0_notop.h5 (ImageNet, {values / 1e6:.1f}M values)"
  x = _images(32, seed=3)
  stem_input = _tap(model, model.get_layer("stem_conv_pad").input)(x)
  np.testing.assert_allclose(stem_input, (x / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-5)
  _assert_same_as_source_with_squared_variance(model, source, x)


def test_wrong_weights_file_names_the_file(tmp_path):
  other, _ = backbones.application("efficientnet_b0", (32, 32, 3))
  path = str(tmp_path / "b0.weights.h5")
  other.save_weights(path)
  with pytest.raises(ValueError) as error:
    backbones.application("xception", (71, 71, 3), weights=path)
  assert path in str(error.value) and "xception" in str(error.value)
  missing = str(tmp_path / "missing.weights.h5")
  with pytest.raises(ValueError, match=r"backbone_weights=.*missing.weights.h5.: no such file"):
    backbones.application("xception", (71, 71, 3), weights=missing)


def test_unknown_backbone_is_rejected():
  with pytest.raises(ValueError, match="backbone must be one of"):
    backbones.application("resnet50", (64, 64, 3))


def test_disable_drop_connect_makes_training_calls_deterministic():
  model, _ = backbones.application("efficientnet_b0", (32, 32, 3))
  x = _images(32, batch=4)
  assert not np.allclose(model(x, training=True), model(x, training=True))
  assert (
    backbones.disable_drop_connect(model) == 9
  )  # B0's residual blocks: all but the first of each stage
  np.testing.assert_array_equal(model(x, training=True), model(x, training=True))


# ---------------------------------------------------------------------------------------------
# ViT presets.


def _save_tiny_vit_preset(directory, scale, offset, num_classes=5, size=32):
  import keras_hub

  keras.utils.set_random_seed(4)
  backbone = keras_hub.models.ViTBackbone(
    image_shape=(size, size, 3),
    patch_size=16,
    num_layers=2,
    num_heads=2,
    hidden_dim=64,
    mlp_dim=128,
  )
  converter = keras_hub.layers.ViTImageConverter(
    image_size=(size, size), scale=scale, offset=offset
  )
  preprocessor = keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter)
  classifier = keras_hub.models.ViTImageClassifier(
    backbone, num_classes=num_classes, preprocessor=preprocessor
  )
  classifier.save_to_preset(str(directory))
  return classifier


def test_local_vit_preset_loads_backbone_and_maps_0_255_to_minus_one_one(tmp_path):
  source = _save_tiny_vit_preset(tmp_path / "vit", scale=1 / 127.5, offset=-1.0)
  model, description = backbones.vit_from_preset(str(tmp_path / "vit"), num_classes=3)
  assert description.startswith(f"{tmp_path / 'vit'} (keras-hub preset, ")
  assert model.input_shape == (None, 32, 32, 3)
  x = _images(32, seed=5)
  logits = model(x)
  assert logits.dtype == "float32" and logits.shape == (2, 3)
  # Reference: the saved backbone on [-1, 1] inputs, class token through the loaded fresh head.
  tokens = np.asarray(source.backbone(x / 127.5 - 1.0))
  head = model.layers[-1].output_dense
  expected = tokens[:, 0] @ head.kernel.numpy() + head.bias.numpy()
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match=r"image_size=64: the ViT preset .* is 32x32"):
    backbones.vit_from_preset(str(tmp_path / "vit"), num_classes=3, image_size=64)


def test_local_vit_preset_follows_mixed_precision_with_float32_logits(tmp_path):
  _save_tiny_vit_preset(tmp_path / "vit", scale=1 / 127.5, offset=-1.0)
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model, _ = backbones.vit_from_preset(str(tmp_path / "vit"), num_classes=3)
  finally:
    keras.mixed_precision.set_global_policy(previous)
  classifier = model.layers[-1]
  assert classifier.backbone.compute_dtype == "float16"
  logits = model(_images(32))
  assert logits.dtype == "float32" and np.all(np.isfinite(logits))


def test_vit_preset_with_0_1_converter_is_rejected(tmp_path):
  directory = tmp_path / "vit_0_1"
  _save_tiny_vit_preset(directory, scale=1 / 255, offset=None)
  with pytest.raises(ValueError) as error:
    backbones.vit_from_preset(str(directory), num_classes=3)
  message = str(error.value)
  assert str(directory) in message and "offset=None" in message and "0.0039" in message


@pytest.mark.parametrize(
  "preset",
  [
    "vit_base_patch16_224_imagenet",
    "kaggle://keras/vit/keras/vit_base_patch16_224_imagenet/4",
    "hf://google/vit-base-patch16-224",
    "file",
    "empty_dir",
  ],
)
def test_vit_preset_that_is_not_a_local_folder_is_rejected_offline(monkeypatch, tmp_path, preset):
  if preset == "file":
    preset = str(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"config": {"image_shape": [32, 32, 3]}}))
  elif preset == "empty_dir":
    preset = str(tmp_path)

  def no_network(*args, **kwargs):
    raise AssertionError("network access attempted")

  monkeypatch.setattr(socket, "socket", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  with pytest.raises(ValueError, match="local folder holding config.json"):
    backbones.vit_from_preset(preset, num_classes=3)
