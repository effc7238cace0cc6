"""The landmark detector for TF Serving and for phones, on the shared export conventions
(`tfpets.export`, docs/export.md).

`export_detector(config, models, export_dir)` writes version `<export_dir>/landmarks/<version>/`:

  SavedModel, `serving_default`: image_bytes string [N] (encoded images of any sizes) ->
      landmarks float32 [N, K, 2]   (x, y) per point, in the order of assets/labels.txt
      box float32 [N, 4]            head box (xmin, ymin, xmax, ymax), refined by stage 2
      head_score float32 [N]        head presence probability
      head_found bool [N]           score >= the threshold and a real box that overlaps the image
      stage1_box float32 [N, 4]     stage 1's head box, which placed the ROI
      roi float32 [N, 4]            the last stage-2 ROI window (edge coordinates)
      image_size int32 [N, 2]       (width, height) of the decoded image
    All coordinates are pixel-centre coordinates of the decoded image, as `predict.Detector`
    returns them; the whole two-stage pipeline (`predict.run_pipeline`) runs in the graph, one
    image at a time.
  assets/labels.txt                  the point names
  tflite/{bbox,landmarks[,verifier]}.tflite   each stage model (input `image` float32
                                     [N, S, S, 3] in 0..255, outputs by name); the verifier only
                                     with more than one candidate
  tflite/detector.json               the configuration a phone app needs for the geometry around
                                     the TFLite models (frame sizes, ROI margin, point names), as
                                     predict.py documents it

`tflite_detector(path)` runs the TFLite models through the same pipeline code as Keras;
`saved_model_detector(path)` calls the SavedModel.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfpets.export import layout, serving, tflite
from tfpets.landmarks import model as model_lib
from tfpets.landmarks import predict

MODEL_NAME = "landmarks"
DESCRIPTIONS = {
  serving.IMAGE_BYTES: "encoded images (JPEG, PNG, GIF, BMP or WebP) of any sizes; EXIF "
  "orientation is not applied",
  "landmarks": "(x, y) of each point in the order of assets/labels.txt, pixel centres of the image",
  "box": "head box (xmin, ymin, xmax, ymax), refined by stage 2",
  "head_score": "head presence probability",
  "head_found": "head_score >= the threshold and the box is a real box overlapping the image",
  "stage1_box": "stage 1's head box, around which stage 2's ROI was cut",
  "roi": "the last stage-2 ROI window (xmin, ymin, xmax, ymax), edge coordinates",
  "image_size": "(width, height) of the decoded image",
}


class TFLiteStage:
  """A stage function backed by a TFLite stage model (runs eagerly, numpy in and out)."""

  def __init__(self, model_path: str | os.PathLike):
    self.runner = tflite.TFLiteRunner(model_path)

  def __call__(self, frames) -> Dict[str, np.ndarray]:
    return self.runner(image=np.asarray(frames, np.float32))


def head_found(box: tf.Tensor, score: tf.Tensor, width, height, threshold: float) -> tf.Tensor:
  """`predict.head_found` in TensorFlow, for boxes [N, 4] and scores [N] of one image."""
  x0, y0, x1, y1 = tf.unstack(box, axis=-1)
  width, height = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
  overlaps = (x1 > 0) & (y1 > 0) & (x0 < width - 1) & (y0 < height - 1)
  return (score >= threshold) & (x1 - x0 >= 1) & (y1 - y0 >= 1) & overlaps


class DetectorSignature:
  """`serve`: the image-bytes signature, a closure over the stage models (`model_lib.stages_of`
  order)."""

  def __init__(self, config: model_lib.DetectorConfig, models: Sequence):
    self.config = config
    self.models = list(models)
    self.serve = tf.function(self._serve, input_signature=[serving.image_bytes_spec()])

  def _serve(self, image_bytes):
    k = self.config.num_landmarks
    signature = {
      "landmarks": tf.TensorSpec([k, 2], tf.float32),
      "box": tf.TensorSpec([4], tf.float32),
      "head_score": tf.TensorSpec([], tf.float32),
      "head_found": tf.TensorSpec([], tf.bool),
      "stage1_box": tf.TensorSpec([4], tf.float32),
      "roi": tf.TensorSpec([4], tf.float32),
      "image_size": tf.TensorSpec([2], tf.int32),
    }
    return tf.map_fn(self.detect_one, image_bytes, fn_output_signature=signature)

  def detect_one(self, encoded: tf.Tensor) -> Dict[str, tf.Tensor]:
    image = serving.decode_image(encoded)
    stages = (predict.keras_stage(m) for m in self.models)
    out = {k: v[0] for k, v in predict.run_pipeline(image[None], self.config, *stages).items()}
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    out["head_found"] = head_found(
      out["box"][None], out["head_score"][None], width, height, self.config.head_threshold
    )[0]
    out["image_size"] = tf.stack([width, height])
    return out


def serving_model(
  config: model_lib.DetectorConfig, models: Sequence, source: str = ""
) -> serving.ServingModel:
  """The detector of `models` (`model_lib.stages_of(config)` order) as a ServingModel."""
  signature = DetectorSignature(config, models)
  files = {
    f"{tflite.TFLITE_DIR}/{stage}.tflite": tflite.convert_keras(model)
    for stage, model in zip(model_lib.stages_of(config), models, strict=True)
  }
  config_json = detector_json(config)
  files[f"{tflite.TFLITE_DIR}/{model_lib.CONFIG_FILE}"] = config_json
  return serving.ServingModel(
    kind="landmarks",
    source=source,
    signatures={serving.DEFAULT_SIGNATURE: signature.serve},
    descriptions=DESCRIPTIONS,
    warmup_requests=serving.image_warmup_requests(config.image_size),
    labels=config.point_names,
    details={"detector": json.loads(config_json)},
    files=files,
  )


def detector_json(config: model_lib.DetectorConfig) -> bytes:
  """detector.json as `DetectorConfig.save` writes it."""
  with tempfile.TemporaryDirectory() as directory:
    return config.save(directory).read_bytes()


def export_detector(
  config: model_lib.DetectorConfig,
  models: Sequence,
  export_dir: str | os.PathLike,
  name: str = MODEL_NAME,
  version: Optional[int] = None,
  source: str = "",
) -> serving.ExportResult:
  """Writes the next (or the given) version of the detector under `export_dir`/`name`, as the
  module docstring describes."""
  serving.check_destination(export_dir, name, version)  # before the slow TFLite conversions
  return serving.export(serving_model(config, models, source), export_dir, name, version)


def export_trained_detector(
  directory: str | os.PathLike,
  export_dir: str | os.PathLike,
  name: str = MODEL_NAME,
  version: Optional[int] = None,
) -> serving.ExportResult:
  """`export_detector` for the trained detector in `directory` (the landmarks stage's workdir or
  its models/ folder)."""
  serving.check_destination(export_dir, name, version)
  models_dir = predict.models_directory(directory)
  config = model_lib.DetectorConfig.load(models_dir)
  models = [
    model_lib.load_model(models_dir / model_lib.MODEL_FILES[s]) for s in model_lib.stages_of(config)
  ]
  return export_detector(config, models, export_dir, name, version, source=str(models_dir))


def tflite_detector(path: str | os.PathLike) -> predict.Detector:
  """The exported TFLite models of a version (`layout.version_dir(path, 'landmarks')`), run
  through the shared pipeline."""
  tflite_dir = layout.version_dir(path, MODEL_NAME) / tflite.TFLITE_DIR
  config = model_lib.DetectorConfig.load(tflite_dir)
  stages = [TFLiteStage(tflite_dir / f"{s}.tflite") for s in model_lib.stages_of(config)]
  return predict.Detector(config, *stages, compile_pipeline=False)


class SavedModelDetector:
  """The SavedModel of a version: one image uint8 [H, W, 3] -> dict of numpy outputs (sent to
  `serving_default` as PNG bytes, which decode to the same pixels)."""

  def __init__(self, path: str | os.PathLike):
    # Keep the loaded object: its signature functions reference its variables.
    self._loaded = serving.load_quietly(layout.version_dir(path, MODEL_NAME))
    self._serve = self._loaded.signatures[serving.DEFAULT_SIGNATURE]

  def __call__(self, image) -> Dict[str, np.ndarray]:
    encoded = tf.io.encode_png(np.asarray(image, np.uint8))
    out = self._serve(**{serving.IMAGE_BYTES: encoded[None]})
    return {k: v.numpy()[0] for k, v in out.items()}


def saved_model_detector(path: str | os.PathLike) -> SavedModelDetector:
  return SavedModelDetector(path)
