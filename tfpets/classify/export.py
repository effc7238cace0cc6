"""Classifiers for TF Serving and for phones, on the shared export conventions (`tfpets.export`,
docs/export.md).

`export_classifier(run, export_dir)` writes version `<export_dir>/<name>/<version>/`:

  SavedModel, `serving_default`: image_bytes string [N] (encoded images of any sizes) ->
      probabilities float32 [N, C]   class probabilities, classes in the order of assets/labels.txt
                                     (WS-DAN: refined by its attention crop, as evaluation does)
      top_k_classes int32 [N, K]     the K most probable class indices, most probable first
      top_k_scores float32 [N, K]    their probabilities
      top_k_names string [N, K]      their class names
      raw_probabilities float32 [N, C]   (WS-DAN only) the whole image's probabilities alone
    Preprocessing runs in the graph as evaluation does it (`data.eval_images`): decode, squash-
    resize, central crop; the model normalises inside itself.
  assets/labels.txt                  the class names
  tflite/classifier.tflite           (EfficientNet and Xception) input `images` float32
                                     [N, S, S, 3] in 0..255 after that preprocessing, output
                                     `probabilities`
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import keras
import tensorflow as tf

from tfpets.classify import data, train
from tfpets.export import serving, tflite

TOP_K = 5
# Models small enough for a phone get a TFLite model too.
TFLITE_MODELS = ("efficientnet", "xception")
TFLITE_FILE = f"{tflite.TFLITE_DIR}/classifier.tflite"
DESCRIPTIONS = {
  serving.IMAGE_BYTES: "encoded images (JPEG, PNG, GIF, BMP or WebP) of any sizes; EXIF "
  "orientation is not applied",
  "probabilities": "class probabilities in the order of assets/labels.txt (WS-DAN: refined)",
  "top_k_classes": "indices of the most probable classes, most probable first",
  "top_k_scores": "probabilities of top_k_classes",
  "top_k_names": "names of top_k_classes",
  "raw_probabilities": "WS-DAN: probabilities of the whole image without attention refinement",
}


class ClassifierSignature:
  """`serve`: the image-bytes signature, a closure over the Keras classifier."""

  def __init__(self, model: keras.Model, class_names: Sequence[str], image_size: int):
    self.model, self.image_size = model, int(image_size)
    self.names = tf.constant(list(class_names))
    self.top_k = min(TOP_K, len(class_names))
    self.serve = tf.function(self._serve, input_signature=[serving.image_bytes_spec()])

  def preprocess(self, encoded: tf.Tensor) -> tf.Tensor:
    image = serving.decode_image(encoded)
    return data.eval_images(image[None], self.image_size)[0]

  def _serve(self, image_bytes):
    images = tf.map_fn(
      self.preprocess,
      image_bytes,
      fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32),
    )
    return self.outputs(images)

  def outputs(self, images: tf.Tensor) -> dict:
    out = {}
    if hasattr(self.model, "refine"):
      refined = self.model.refine(images)
      out["probabilities"] = tf.cast(refined["probabilities"], tf.float32)
      out["raw_probabilities"] = tf.cast(refined["raw_probabilities"], tf.float32)
    else:
      out["probabilities"] = tf.nn.softmax(tf.cast(self.model(images, training=False), tf.float32))
    scores, classes = tf.math.top_k(out["probabilities"], k=self.top_k)
    out.update(
      top_k_classes=classes, top_k_scores=scores, top_k_names=tf.gather(self.names, classes)
    )
    return out


def tflite_classifier(model: keras.Model, image_size: int) -> bytes:
  """A float32 TFLite model: images [N, S, S, 3] in 0..255 -> probabilities."""
  images = keras.Input((image_size, image_size, 3), name="images")
  probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(model(images))
  return tflite.convert_keras(keras.Model(images, {"probabilities": probabilities}))


def serving_model(
  model: keras.Model, class_names: Sequence[str], config: train.ClassifyConfig, source: str = ""
) -> serving.ServingModel:
  signature = ClassifierSignature(model, class_names, config.image_size)
  descriptions = dict(DESCRIPTIONS)
  if not hasattr(model, "refine"):
    descriptions.pop("raw_probabilities")
  files = {}
  if config.model in TFLITE_MODELS:
    files[TFLITE_FILE] = tflite_classifier(model, config.image_size)
  return serving.ServingModel(
    kind="classifier",
    source=source,
    signatures={serving.DEFAULT_SIGNATURE: signature.serve},
    descriptions=descriptions,
    warmup_requests=serving.image_warmup_requests(config.image_size),
    labels=list(class_names),
    details={"model": train.describe(config), "image_size": config.image_size},
    files=files,
  )


def export_classifier(
  run: str | os.PathLike,
  export_dir: str | os.PathLike,
  name: str = "classifier",
  version: Optional[int] = None,
) -> serving.ExportResult:
  """Writes the next (or the given) version of the classifier trained in `run` (a classify
  workdir or its models/ folder) under `export_dir`/`name`, as the module docstring describes."""
  serving.check_destination(export_dir, name, version)  # before the slow conversions
  model, class_names, config = train.load_classifier(run)
  return serving.export(
    serving_model(model, class_names, config, source=str(run)), export_dir, name, version
  )
