"""Classifiers: [0, 255] in, float32 logits out, standard sizes, parameter counts, synchronised
BatchNorm."""

import json

import keras
import numpy as np
import pytest

from tfpets.classify import models

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

TINY = {
  "efficientnet": dict(image_size=32),
  "xception": dict(image_size=71),
  "vit": dict(image_size=32, vit_size="tiny"),
}


def _images(size, batch=2, seed=0):
  return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _build(model, num_classes=7, **overrides):
  return models.build_classifier(
    models.ClassifierConfig(model=model, num_classes=num_classes, **{**TINY[model], **overrides})
  )


@pytest.fixture
def mixed_float16():
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def test_standard_image_sizes_without_building(tmp_path):
  sizes = [models.standard_image_size("efficientnet", f"b{i}") for i in range(8)]
  assert sizes == [224, 240, 260, 300, 380, 456, 528, 600]
  assert models.standard_image_size("xception") == 299
  assert models.standard_image_size("vit") == 224
  (tmp_path / "config.json").write_text(json.dumps({"config": {"image_shape": [384, 384, 3]}}))
  assert models.standard_image_size("vit", preset=str(tmp_path)) == 384
  with pytest.raises(ValueError, match="tfpets.classify.wsdan"):
    models.standard_image_size("wsdan")
  with pytest.raises(ValueError, match="efficientnet_variant must be one of"):
    models.standard_image_size("efficientnet", "b8")


@pytest.mark.parametrize("model", ["efficientnet", "xception", "vit"])
def test_classifiers_give_float32_logits(model):
  classifier = _build(model)
  size = TINY[model]["image_size"]
  assert classifier.input_shape == (None, size, size, 3)
  for training in (False, True):
    logits = classifier(_images(size), training=training)
    assert logits.dtype == "float32" and logits.shape == (2, 7)
    assert np.all(np.isfinite(logits))
  assert classifier.backbone_description == "random initialisation; nothing downloaded"


@pytest.mark.parametrize("model", ["efficientnet", "xception", "vit"])
def test_classifiers_give_float32_logits_under_mixed_precision(mixed_float16, model):
  classifier = _build(model)
  logits = classifier(_images(TINY[model]["image_size"]))
  assert logits.dtype == "float32" and logits.shape == (2, 7)
  assert np.all(np.isfinite(logits))
  dense = [layer for layer in _nested(classifier) if isinstance(layer, keras.layers.Dense)]
  assert dense[-1].compute_dtype == "float32"
  assert any(layer.compute_dtype == "float16" for layer in _nested(classifier))


def _nested(model):
  for layer in model.layers:
    yield layer
    if hasattr(layer, "layers"):
      yield from _nested(layer)


def test_efficientnet_classifier_normalises_once():
  classifier = _build("efficientnet")
  x = _images(32)
  stem_input = keras.Model(classifier.input, classifier.get_layer("stem_conv_pad").input)(x)
  np.testing.assert_allclose(stem_input, (x / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-5)


def test_vit_classifier_normalises_once():
  classifier = _build("vit")
  x = _images(32, seed=1)
  (inner,) = [layer for layer in classifier.layers if hasattr(layer, "backbone")]
  rescaled = keras.Model(classifier.input, classifier.get_layer("input_rescaling").output)(x)
  np.testing.assert_allclose(rescaled, x / 127.5 - 1.0, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(classifier(x), inner(x / 127.5 - 1.0), rtol=1e-5, atol=1e-5)


def test_efficientnet_and_xception_parameter_counts_are_backbone_plus_head():
  for model, constructor, features in (
    ("efficientnet", keras.applications.EfficientNetB0, 1280),
    ("xception", keras.applications.Xception, 2048),
  ):
    size = TINY[model]["image_size"]
    backbone = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
    counts = models.parameter_counts(_build(model, num_classes=7))
    assert counts["total"] == backbone.count_params() + features * 7 + 7
    assert counts["total"] == counts["trainable"] + counts["non_trainable"]
    # Non-trainable: BatchNorm moving mean and variance (+ EfficientNet's Normalization state).
    batch_norm = [
      layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    moving = sum(2 * layer.moving_mean.shape[0] for layer in batch_norm)
    assert counts["non_trainable"] == moving + (7 if model == "efficientnet" else 0)


def test_vit_tiny_parameter_count_by_hand():
  classes, size, hidden, mlp, patch, layers = 7, 32, 64, 128, 16, 2
  tokens = (size // patch) ** 2 + 1
  per_layer = (
    2 * 2 * hidden + 4 * (hidden * hidden + hidden) + (hidden * mlp + mlp) + (mlp * hidden + hidden)
  )
  expected = (
    patch * patch * 3 * hidden
    + hidden  # patch embedding
    + hidden  # class token
    + tokens * hidden  # position embedding
    + layers * per_layer
    + 2 * hidden  # final LayerNorm
    + hidden * classes
    + classes  # head
  )
  counts = models.parameter_counts(_build("vit", num_classes=classes))
  assert counts == {"total": expected, "trainable": expected, "non_trainable": 0}


def test_drop_connect_switch():
  def rates(classifier):
    return [layer.rate for layer in classifier.layers if layer.name.endswith("_drop")]

  assert all(rate > 0 for rate in rates(_build("efficientnet")))
  off = rates(_build("efficientnet", drop_connect=False))
  assert off and all(rate == 0 for rate in off)


def test_sync_batch_norm_sets_every_layer_including_nested():
  classifier = _build("efficientnet")
  inputs = keras.Input((32, 32, 3))
  outer = keras.Model(inputs, classifier(inputs))
  expected = [
    layer for layer in classifier.layers if isinstance(layer, keras.layers.BatchNormalization)
  ]
  assert expected and not any(layer.synchronized for layer in expected)
  assert models.sync_batch_norm(outer) == len(expected)
  assert all(layer.synchronized for layer in expected)
  assert all(layer.get_config()["synchronized"] for layer in expected)


def test_describe_names_counts_and_weights():
  classifier = _build("vit")
  counts = models.parameter_counts(classifier)
  line = models.describe(classifier)
  assert f"{counts['total']:,} parameters" in line
  assert "random initialisation; nothing downloaded" in line


@pytest.mark.parametrize(
  "arguments, message",
  [
    (dict(model="resnet", num_classes=3), "model must be one of"),
    (dict(model="vit", num_classes=0), "num_classes must be positive"),
    (dict(model="efficientnet", num_classes=3, preset="/tmp/x"), "preset=.*: a ViT preset folder"),
    (
      dict(model="vit", num_classes=3, backbone_weights="imagenet"),
      "backbone_weights=.*ViT weights come from a preset",
    ),
    (dict(model="vit", num_classes=3, vit_size="huge"), "vit_size must be one of"),
    (dict(model="xception", num_classes=3, dropout=1.0), "dropout must be in"),
  ],
)
def test_config_errors(arguments, message):
  with pytest.raises(ValueError, match=message):
    models.ClassifierConfig(**arguments)


def test_vit_size_must_be_a_multiple_of_the_patch():
  with pytest.raises(ValueError, match="multiple of its patch size 16"):
    _build("vit", image_size=40)


def test_imagenet_weights_missing_is_a_value_error(monkeypatch, tmp_path):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))
  with pytest.raises(ValueError, match="efficientnetb2_notop.h5"):
    _build("efficientnet", efficientnet_variant="b2", backbone_weights="imagenet")


def test_wsdan_is_dispatched_to_its_module():
  classifier = models.build_classifier(models.ClassifierConfig("wsdan", 5, image_size=96))
  assert hasattr(classifier, "refine")
  logits = classifier(_images(96))
  assert logits.dtype == "float32" and logits.shape == (2, 5)
