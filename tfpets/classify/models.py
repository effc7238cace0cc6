"""Single-network classifiers: ViT (keras-hub), EfficientNet B0-B7 and the Xception baseline.

Every model takes float RGB images in [0, 255], `[B, S, S, 3]`, normalises them inside itself and
returns float32 logits `[B, num_classes]` (the last Dense is float32 so mixed precision keeps the
logits in float32). WS-DAN is built by `tfpets.classify.wsdan.build_wsdan`; `build_classifier`
hands "wsdan" to it.
"""

import dataclasses

import keras

from tfpets.classify import backbones
from tfpets.errors import ArgumentError

MODELS = ("wsdan", "vit", "efficientnet", "xception")
EFFICIENTNET_VARIANTS = tuple(f"b{i}" for i in range(8))

# Random-initialisation ViT architectures (Dosovitskiy et al. 2021, Table 1; "small" is DeiT-S /
# ViT-S/16 of Touvron et al. 2021); "tiny" is a test and CPU size.
VIT_SIZES = {
  "tiny": dict(patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128),
  "small": dict(patch_size=16, num_layers=12, num_heads=6, hidden_dim=384, mlp_dim=1536),
  "base": dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
}
VIT_STANDARD_SIZE = 224
XCEPTION_STANDARD_SIZE = 299


@dataclasses.dataclass
class ClassifierConfig:
  """What `build_classifier` builds.

  Attributes:
    model: one of `MODELS`.
    num_classes: number of logits.
    image_size: square input size; 0 takes the model's standard size (`standard_image_size`).
    efficientnet_variant: "b0".."b7".
    preset: ViT only: a local keras-hub preset folder (ViT weights and native size); "" builds a
      random-init ViT of `vit_size`.
    vit_size: "tiny", "small" or "base" (ViT-B/16).
    backbone_weights: EfficientNet / Xception: "" (random), "imagenet" (the Keras file already in
      `backbones.keras_home_models()`) or a local weights file.
    dropout: dropout before the last Dense.
    drop_connect: EfficientNet's per-block stochastic depth; False sets those rates to 0.
  """

  model: str
  num_classes: int
  image_size: int = 0
  efficientnet_variant: str = "b0"
  preset: str = ""
  vit_size: str = "base"
  backbone_weights: str = ""
  dropout: float = 0.0
  drop_connect: bool = True

  def __post_init__(self):
    _check_choice("model", self.model, MODELS)
    _check_choice("efficientnet_variant", self.efficientnet_variant, EFFICIENTNET_VARIANTS)
    _check_choice("vit_size", self.vit_size, tuple(VIT_SIZES))
    if self.num_classes < 1:
      raise ValueError(f"num_classes must be positive, got {self.num_classes}")
    if self.image_size < 0:
      raise ValueError(f"image_size must be 0 (standard) or positive, got {self.image_size}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
    if self.preset and self.model != "vit":
      raise ArgumentError(
        "preset", self.preset, f"a ViT preset folder; {self.model} takes backbone weights"
      )
    if self.backbone_weights and self.model == "vit":
      raise ArgumentError(
        "backbone_weights",
        self.backbone_weights,
        "ViT weights come from a preset (a local keras-hub folder)",
      )


def standard_image_size(model: str, efficientnet_variant: str = "b0", preset: str = "") -> int:
  """The input size a model is built for when `image_size` is 0: ViT 224 (or the preset's),
  EfficientNet its Keras default (224 ... 600), Xception 299. WS-DAN's sizes belong to
  `tfpets.classify.wsdan`."""
  _check_choice("model", model, MODELS)
  if model == "wsdan":
    raise ValueError("WS-DAN input sizes are defined by tfpets.classify.wsdan")
  if model == "vit":
    return backbones.preset_image_size(preset) if preset else VIT_STANDARD_SIZE
  if model == "efficientnet":
    _check_choice("efficientnet_variant", efficientnet_variant, EFFICIENTNET_VARIANTS)
    return backbones.STANDARD_SIZES[f"efficientnet_{efficientnet_variant}"]
  return XCEPTION_STANDARD_SIZE


def build_classifier(config: ClassifierConfig) -> keras.Model:
  """The classifier `config` describes, taking [0, 255] images and returning float32 logits.

  The returned model carries `backbone_description`, a one-line account of the weights it was
  initialised from (e.g. "efficientnetb3_notop.h5 (ImageNet, 10.8M values)") for logs.
  """
  if config.model == "wsdan":
    return _build_wsdan(config)
  size = config.image_size or standard_image_size(
    config.model, config.efficientnet_variant, config.preset
  )
  if config.model == "vit":
    model, description = _build_vit(config, size)
  else:
    model, description = _build_cnn(config, size)
  model.backbone_description = description
  return model


def sync_batch_norm(model: keras.Model) -> int:
  """Sets `synchronized=True` on every BatchNormalization layer, nested ones included, so that
  under a multi-replica strategy the batch statistics are those of the global batch, as on one
  device. Keras reads the attribute at call time (`BatchNormalization._moments`; the TensorFlow
  backend all-reduces the moments). Returns the number of layers set."""
  count = 0
  for layer in _all_layers(model):
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.synchronized = True
      count += 1
  return count


def parameter_counts(model: keras.Model) -> dict:
  """{"total", "trainable", "non_trainable"} parameter (value) counts."""
  trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
  non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
  return {
    "total": trainable + non_trainable,
    "trainable": trainable,
    "non_trainable": non_trainable,
  }


def describe(model: keras.Model) -> str:
  """One log line: the model's name, parameter counts and backbone weights."""
  counts = parameter_counts(model)
  weights = getattr(model, "backbone_description", "")
  return f"{model.name}: {counts['total']:,} parameters ({counts['trainable']:,} trainable)" + (
    f"; backbone weights: {weights}" if weights else ""
  )


def _build_wsdan(config: ClassifierConfig) -> keras.Model:
  """WS-DAN with its default variant; `tfpets.classify.wsdan.build_wsdan` takes the full config."""
  try:
    from tfpets.classify import wsdan  # Imported here: wsdan builds on this module's backbones.
  except ImportError as error:
    raise ValueError("WS-DAN is built by tfpets.classify.wsdan.build_wsdan") from error
  return wsdan.build_wsdan(
    wsdan.WSDANConfig(
      num_classes=config.num_classes,
      image_size=config.image_size,
      backbone_weights=config.backbone_weights,
    )
  )


def _build_cnn(config: ClassifierConfig, size: int) -> tuple[keras.Model, str]:
  """keras.applications backbone + global average pooling + dropout + Dense.

  The Xception baseline follows GrabAI `baseline_cnn/baseline_cnn.py` (Xception, include_top=False,
  pooling "avg", Dense) except its input: GrabAI fed 363x525 (H x W) images; the tfpets pipeline is
  square, so Xception takes S x S.
  """
  if config.model == "efficientnet":
    name = f"efficientnet_{config.efficientnet_variant}"
  else:
    name = "xception"
  backbone, description = backbones.application(name, (size, size, 3), config.backbone_weights)
  if config.model == "efficientnet" and not config.drop_connect:
    backbones.disable_drop_connect(backbone)
  x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone.output)
  if config.dropout:
    x = keras.layers.Dropout(config.dropout, name="top_dropout")(x)
  logits = keras.layers.Dense(config.num_classes, dtype="float32", name="logits")(x)
  return keras.Model(backbone.input, logits, name=config.model), description


def _build_vit(config: ClassifierConfig, size: int) -> tuple[keras.Model, str]:
  if config.preset:
    return backbones.vit_from_preset(
      config.preset, config.num_classes, image_size=size, dropout=config.dropout
    )
  import keras_hub  # Imported here: only ViT needs it.

  architecture = VIT_SIZES[config.vit_size]
  if size % architecture["patch_size"]:
    raise ArgumentError(
      "image_size", size, f"ViT needs a multiple of its patch size {architecture['patch_size']}"
    )
  backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), **architecture)
  classifier = keras_hub.models.ViTImageClassifier(
    backbone, config.num_classes, dropout=config.dropout, head_dtype="float32"
  )
  return backbones.vit_with_rescaling(classifier, size), backbones.RANDOM_INIT


def _check_choice(argument: str, value: str, allowed: tuple) -> None:
  if value not in allowed:
    raise ValueError(f"{argument} must be one of {', '.join(allowed)}, got {value!r}")


def _all_layers(layer: keras.layers.Layer):
  for child in getattr(layer, "layers", ()):
    yield child
    yield from _all_layers(child)
