"""The two MobileNetV2 regressors of the detector and their shared configuration.

The design follows frederic (zylamarek/frederic, `tools/train.py`): a head-box model on the whole
image, then a landmarks model on the head's region of interest, each a MobileNetV2.

Both take a square frame of float pixels in [0, 255] (preprocessing is inside the model, so exported
models take plain pixels) and return coordinates in pixels of that frame:

  bbox model:      {"box": [B, 4] head box (xmin, ymin, xmax, ymax), "head": [B, 1] presence logit}
  landmarks model: {"landmarks": [B, K, 2], "box": [B, 4] the head box re-estimated in the ROI}
  heatmap head, also: "centre_map" [B, G, G, 1] (box centre logits) and "landmark_maps"
                   [B, G, G, K], which training supervises (losses.HeatmapLoss); its bbox model
                   predicts "landmarks" too, as an auxiliary task.

Two coordinate heads on the same MobileNetV2 backbone:
  dense    frederic's head: global pooling -> Dense(units, relu) x 2 -> Dense, through
           `FrameCoordinates` (`landmark_norm`).
  heatmap  integral regression (Sun et al., "Integral Human Pose Regression", ECCV 2018):
           stride-8 features (with upsampled stride-16 features) -> one heatmap per point ->
           spatial softmax -> expected position (`SoftArgmax`); the box
           is a centre heatmap with per-cell sizes (`CentreSizeBox`). Trained from scratch it
           learns localisation in far fewer steps than the dense head, which a CPU budget needs.
           It uses MobileNetV2 up to its stride-16 stage; the presence logit comes from the
           pooled stride-16 features.
The dense head's presence logit comes from its hidden layers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Tuple

import keras

from tfpets.data.records import LANDMARK_NAMES_5, LANDMARK_NAMES_9
from tfpets.errors import ArgumentError

NORMS = ("none", "unit", "center")
HEADS = ("heatmap", "dense")
# MobileNetV2 layers whose outputs feed the heatmap head, by stride.
_TAPS = {4: "block_3_expand_relu", 8: "block_6_expand_relu", 16: "block_13_expand_relu"}
HEATMAP_STRIDES = (4, 8)
POOLINGS = ("max", "avg", "none")
# Keras's MobileNetV2 uses 0.999, whose moving statistics lag hundreds of steps behind weights that
# train from scratch, so that short runs validate far worse than they train; 0.9 keeps up.
BN_MOMENTUM = 0.9
CONFIG_FILE = "detector.json"
VERIFIER_WIDTHS = (16, 32, 64, 96)
MODEL_FILES = {"bbox": "bbox.keras", "landmarks": "landmarks.keras", "verifier": "verifier.keras"}


@dataclasses.dataclass
class DetectorConfig:
  """Everything prediction needs besides the weights; saved beside the models as detector.json."""

  image_size: int = 128  # stage 1 frame (the whole image, letterboxed)
  roi_size: int = 128  # stage 2 frame (the square head ROI); 0: image_size
  num_landmarks: int = 9
  head: str = "heatmap"  # coordinate head: heatmap | dense
  width_multiplier: float = 0.35
  units: int = 128
  pooling: str = "max"
  landmark_norm: str = "unit"
  roi_margin: float = 0.1  # ROI = head box + margin x longer side per side, squared
  roi_passes: int = 1  # stage-2 passes, each on the ROI around the previous box
  roi_first_margin: float = 0.0  # margin of the first pass's ROI (around stage 1's box); 0: same
  head_threshold: float = 0.5  # head presence probability below which no head is reported
  roi_flip: bool = False  # stage 2 averages each ROI with its mirror image
  roi_candidates: int = 1  # stage-1 boxes that get stage-2 passes; > 1: the verifier picks
  roi_candidate_scales: Tuple[float, ...] = ()  # more candidates: stage 1's box scaled by these
  verifier_size: int = 32  # the head verifier's frame
  heatmap_stride: int = 8  # heatmap head: frame pixels per heatmap cell (4 or 8)

  def __post_init__(self):
    """Checks every field; an ArgumentError names the first bad one."""
    self.roi_size = self.roi_size or self.image_size
    try:  # strings (as a flag gives them) or a list (as detector.json holds them)
      self.roi_candidate_scales = tuple(float(s) for s in self.roi_candidate_scales)
    except ValueError:
      scales = _listed(self.roi_candidate_scales)
      raise ArgumentError("roi_candidate_scales", scales, "must be numbers") from None
    problems = _config_problems(self)
    if problems:
      raise ArgumentError(*problems[0])

  @property
  def num_candidates(self) -> int:
    """Candidate boxes per image that get stage-2 passes; above 1 the verifier picks one."""
    return self.roi_candidates + len(self.roi_candidate_scales)

  @property
  def point_names(self) -> Tuple[str, ...]:
    return LANDMARK_NAMES_9 if self.num_landmarks == 9 else LANDMARK_NAMES_5

  def frame_size(self, stage: str) -> int:
    return {"bbox": self.image_size, "verifier": self.verifier_size}.get(stage, self.roi_size)

  def save(self, directory: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(directory) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dataclasses.asdict(self)
    payload["point_names"] = list(self.point_names)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "DetectorConfig":
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
      raise FileNotFoundError(f"{path}: no detector configuration (the landmarks stage writes one)")
    payload = json.loads(path.read_text())
    payload.pop("point_names", None)
    return cls(**payload)


def _listed(values) -> str:
  return ",".join(map(str, values))


def _choice(name: str, value, choices) -> list:
  if value in choices:
    return []
  return [(name, value, f"must be one of {', '.join(map(str, choices))}")]


def _config_problems(config: DetectorConfig) -> list:
  """(field, value, problem) of each bad field of `config`."""
  problems = []
  if config.num_landmarks not in (5, 9):
    problems.append(("num_landmarks", config.num_landmarks, "must be 9 (Kaggle CAT) or 5"))
  problems += _choice("head", config.head, HEADS)
  problems += _choice("landmark_norm", config.landmark_norm, NORMS)
  problems += _choice("pooling", config.pooling, POOLINGS)
  problems += _choice("heatmap_stride", config.heatmap_stride, HEATMAP_STRIDES)
  for name in ("roi_passes", "roi_candidates"):
    if getattr(config, name) < 1:
      problems.append((name, getattr(config, name), "must be at least 1"))
  if any(s <= 0 for s in config.roi_candidate_scales):
    problems.append(
      ("roi_candidate_scales", _listed(config.roi_candidate_scales), "must be positive")
    )
  if config.roi_candidates > 1 and config.head != "heatmap":
    problems.append(
      (
        "roi_candidates",
        config.roi_candidates,
        "more than one candidate needs head 'heatmap' (the candidates are peaks of stage 1's "
        "centre heatmap)",
      )
    )
  if config.verifier_size < 16:
    problems.append(("verifier_size", config.verifier_size, "must be at least 16"))
  for name in ("image_size", "roi_size"):
    size = getattr(config, name)
    if size < 32 or (config.head == "heatmap" and size % 16):
      problems.append(
        (name, size, "must be at least 32 pixels, and a multiple of 16 with head 'heatmap'")
      )
  return problems


@keras.saving.register_keras_serializable(package="tfpets")
class FrameCoordinates(keras.layers.Layer):
  """Regression output -> pixel coordinates of a size x size frame.

  norm 'none': the output already is pixels; 'center': pixels relative to the frame centre (the ROI
  centre for stage 2); 'unit': the frame spans [-1, 1]. Targets are never rescaled by hand, so
  metrics always compare pixels.
  """

  def __init__(self, frame_size: int, norm: str, target_shape: Tuple[int, ...], **kwargs):
    super().__init__(**kwargs)
    self.frame_size = int(frame_size)
    self.norm = norm
    self.target_shape = tuple(target_shape)
    half = self.frame_size / 2.0
    self._scale = {"none": 1.0, "center": 1.0, "unit": half}[norm]
    self._offset = 0.0 if norm == "none" else half

  def call(self, inputs):
    coordinates = inputs * self._scale + self._offset
    return keras.ops.reshape(coordinates, (-1,) + self.target_shape)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],) + self.target_shape

  def get_config(self):
    config = super().get_config()
    config.update(frame_size=self.frame_size, norm=self.norm, target_shape=list(self.target_shape))
    return config


def _backbone(size: int, config: DetectorConfig, weights: str) -> keras.Model:
  if weights and not os.path.isfile(weights):
    raise ArgumentError(
      "backbone_weights",
      weights,
      f"no such file (expected a MobileNetV2 no-top .h5 of width {config.width_multiplier}; "
      "nothing is downloaded)",
    )
  try:
    backbone = keras.applications.MobileNetV2(
      input_shape=(size, size, 3),
      alpha=config.width_multiplier,
      include_top=False,
      weights=weights or None,
      pooling=None if config.pooling == "none" else config.pooling,
    )
  except ValueError as e:
    raise ArgumentError(
      "backbone_weights",
      weights,
      f"do not fit MobileNetV2 of size {size} and width {config.width_multiplier}: {e}",
    ) from None
  for layer in backbone.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = BN_MOMENTUM
  return backbone


def _expected_position(flat_logits, grid: int, frame_size: int):
  """[..., G * G] logits -> [..., 2] expected cell centre in frame pixels, and the weights."""
  weights = keras.ops.softmax(flat_logits, axis=-1)
  stride = frame_size / grid
  centres = (keras.ops.arange(grid, dtype="float32") + 0.5) * stride - 0.5
  xs = keras.ops.reshape(keras.ops.tile(centres[None, :], (grid, 1)), (-1,))
  ys = keras.ops.reshape(keras.ops.tile(centres[:, None], (1, grid)), (-1,))
  position = keras.ops.stack([keras.ops.sum(weights * xs, -1), keras.ops.sum(weights * ys, -1)], -1)
  return position, weights


@keras.saving.register_keras_serializable(package="tfpets")
class SoftArgmax(keras.layers.Layer):
  """Heatmap logits [B, G, G, C] -> expected positions [B, C, 2] in pixels of a frame_size frame.

  Cell (i, j) of the G x G grid stands for the centre of the frame region it covers; the softmax
  over cells weights those centres, so positions between cells are reached smoothly.
  """

  def __init__(self, frame_size: int, **kwargs):
    super().__init__(**kwargs)
    self.frame_size = int(frame_size)

  def call(self, logits):
    grid, channels = logits.shape[1], logits.shape[-1]
    flat = keras.ops.reshape(keras.ops.transpose(logits, (0, 3, 1, 2)), (-1, channels, grid * grid))
    return _expected_position(flat, grid, self.frame_size)[0]

  def compute_output_shape(self, input_shape):
    return (input_shape[0], input_shape[-1], 2)

  def get_config(self):
    return {**super().get_config(), "frame_size": self.frame_size}


@keras.saving.register_keras_serializable(package="tfpets")
class CentreSizeBox(keras.layers.Layer):
  """Box maps [B, G, G, 3] -> boxes [B, 4] in pixels of a frame_size frame.

  Channel 0 is a heatmap of the box centre (as `SoftArgmax`); channels 1 and 2 give a log width
  and height per cell (in units of the cell stride), averaged with the centre's weights. A centre
  is a salient point of the head, where a corner often lies on background.
  """

  def __init__(self, frame_size: int, **kwargs):
    super().__init__(**kwargs)
    self.frame_size = int(frame_size)

  def call(self, maps):
    grid = maps.shape[1]
    flat = keras.ops.reshape(maps[..., 0], (-1, grid * grid))
    centre, weights = _expected_position(flat, grid, self.frame_size)
    log_size = keras.ops.clip(keras.ops.reshape(maps[..., 1:], (-1, grid * grid, 2)), -6.0, 6.0)
    size = (self.frame_size / grid) * keras.ops.sum(
      weights[..., None] * keras.ops.exp(log_size), axis=1
    )
    return keras.ops.concatenate([centre - size / 2, centre + size / 2], axis=-1)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], 4)

  def get_config(self):
    return {**super().get_config(), "frame_size": self.frame_size}


def _dense_head(features, size: int, stage: str, config: DetectorConfig):
  x = features
  if config.pooling == "none":
    x = keras.layers.Flatten()(x)
  x = keras.layers.Dense(config.units, activation="relu", name="hidden_1")(x)
  x = keras.layers.Dense(config.units, activation="relu", name="hidden_2")(x)

  def coordinates(width: int, shape: Tuple[int, ...], name: str):
    raw = keras.layers.Dense(width, dtype="float32", name=f"{name}_raw")(x)
    return FrameCoordinates(size, config.landmark_norm, shape, dtype="float32", name=name)(raw)

  outputs = {"box": coordinates(4, (4,), "box")}
  if stage == "bbox":
    outputs["head"] = keras.layers.Dense(1, dtype="float32", name="head")(x)
  else:
    k = config.num_landmarks
    outputs["landmarks"] = coordinates(2 * k, (k, 2), "landmarks")
  return outputs


def _heatmap_head(backbone, x, size: int, stage: str, config: DetectorConfig):
  # MobileNetV2 up to its stride-16 stage: the layers after it would only feed a pooled vector.
  # Every tap from the heatmap stride to 16 is upsampled to the heatmap grid and concatenated.
  strides = [s for s in sorted(_TAPS) if s >= config.heatmap_stride]
  taps = keras.Model(
    backbone.input, [backbone.get_layer(_TAPS[s]).output for s in strides], name="mobilenetv2_taps"
  )
  features = taps(x)
  coarse = features[-1]
  grid = [features[0]] + [
    keras.layers.UpSampling2D(s // strides[0], interpolation="bilinear", name=f"upsample_{s}")(f)
    for s, f in zip(strides[1:], features[1:])
  ]
  h = keras.layers.Concatenate(name="features")(grid)
  h = keras.layers.SeparableConv2D(
    config.units // 2, 3, padding="same", activation="relu", name="heatmap_conv"
  )(h)
  box_maps = keras.layers.Conv2D(3, 1, dtype="float32", name="box_maps")(h)
  # The heatmaps are outputs too, so that training can supervise them directly (HeatmapLoss).
  outputs = {
    "box": CentreSizeBox(size, dtype="float32", name="box")(box_maps),
    "centre_map": keras.layers.Identity(dtype="float32", name="centre_map")(box_maps[..., :1]),
  }
  # Stage 1 predicts the landmarks too (frederic's `--include_landmarks`): eyes, mouth and ears
  # tell the network where a head is far sooner than the box alone.
  maps = keras.layers.Conv2D(config.num_landmarks, 1, dtype="float32", name="landmark_maps")(h)
  outputs["landmarks"] = SoftArgmax(size, dtype="float32", name="landmarks")(maps)
  outputs["landmark_maps"] = maps
  if stage == "bbox":
    pool = (
      keras.layers.GlobalAveragePooling2D
      if config.pooling == "avg"
      else keras.layers.GlobalMaxPooling2D
    )(name="pool")(coarse)
    outputs["head"] = keras.layers.Dense(1, dtype="float32", name="head")(pool)
  return outputs


def stages_of(config: DetectorConfig) -> Tuple[str, ...]:
  """The models a detector with this configuration is made of, in pipeline order."""
  return ("bbox", "landmarks", "verifier") if config.num_candidates > 1 else ("bbox", "landmarks")


def _verifier(size: int) -> keras.Model:
  """The head verifier (verifier.py): frames [N, size, size, 3] in 0..255 -> {"head": logit
  [N, 1]}, a plain 8-layer CNN (a small frame needs no MobileNet)."""
  inputs = keras.Input((size, size, 3), name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
  for i, width in enumerate(VERIFIER_WIDTHS):
    for stride in (1, 2):
      x = keras.layers.Conv2D(
        width, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i}_{stride}"
      )(x)
      x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"bn{i}_{stride}")(x)
      x = keras.layers.ReLU(name=f"relu{i}_{stride}")(x)
  x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
  head = keras.layers.Dense(1, dtype="float32", name="head")(x)
  return keras.Model(inputs, {"head": head}, name="head_verifier")


def build_model(stage: str, config: DetectorConfig, backbone_weights: str = "") -> keras.Model:
  """A fresh model of `stages_of` ('bbox', 'landmarks' or 'verifier')."""
  size = config.frame_size(stage)
  if stage == "verifier":
    return _verifier(size)
  inputs = keras.Input((size, size, 3), name="image")
  x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
  backbone = _backbone(size, config, backbone_weights)
  if config.head == "dense":
    outputs = _dense_head(backbone(x), size, stage, config)
  else:
    outputs = _heatmap_head(backbone, x, size, stage, config)
  return keras.Model(inputs, outputs, name=f"{stage}_detector")


def load_model(path: str | os.PathLike) -> keras.Model:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such model file (the landmarks stage writes it)")
  return keras.models.load_model(path, compile=False)
