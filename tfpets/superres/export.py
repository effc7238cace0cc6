"""DBPN upscalers for TF Serving, on the shared export conventions (`tfpets.export`,
docs/export.md).

`export_upscaler(model_path, export_dir)` writes version `<export_dir>/<name>/<version>/`:

  SavedModel, `serving_default`: image_bytes string [N] (encoded images of any sizes) ->
      png_bytes string [N]           each image upscaled `scale` times, as a PNG
      pixels uint8 [N, H, W, 3]      the same pixels, zero-padded to the batch's largest image
      height int32 [N], width int32 [N]   each upscaled image's size within `pixels`
    Every image is upscaled whole, as `python -m tfpets.launch --stage=superres` does without
    tiling: RGB in [0, 1], the network, clipped to [0, 1], rounded to uint8.
"""

from __future__ import annotations

import os
from typing import Optional

import keras
import tensorflow as tf

from tfpets.export import serving
from tfpets.superres import convert, upscale

WARMUP_SIZE = 32  # Small: warmup only has to trace and touch every kernel once.
DESCRIPTIONS = {
  serving.IMAGE_BYTES: "encoded images (JPEG, PNG, GIF, BMP or WebP) of any sizes; EXIF "
  "orientation is not applied",
  "png_bytes": "the upscaled images as PNG files",
  "pixels": "the upscaled images as uint8 RGB, zero-padded to the largest image of the request",
  "height": "height of each upscaled image in pixels",
  "width": "width of each upscaled image in pixels",
}


def upscale_uint8(model: keras.Model, image: tf.Tensor) -> tf.Tensor:
  """uint8 [H, W, 3] -> uint8 [s·H, s·W, 3]: the network on [0, 1] RGB, clipped and rounded."""
  inputs = tf.image.convert_image_dtype(image, tf.float32)[None]
  output = tf.clip_by_value(tf.cast(model(inputs, training=False), tf.float32), 0.0, 1.0)
  return tf.cast(tf.round(output[0] * 255.0), tf.uint8)


class UpscalerSignature:
  """`serve`: the image-bytes signature, a closure over the Keras network."""

  def __init__(self, model: keras.Model):
    self.model = model
    self.serve = tf.function(self._serve, input_signature=[serving.image_bytes_spec()])

  def _upscale_one(self, image_bytes: tf.Tensor):
    pixels = upscale_uint8(self.model, serving.decode_image(image_bytes))
    size = tf.shape(pixels)
    return tf.io.encode_png(pixels), size[0], size[1]

  def _serve(self, image_bytes):
    png, height, width = tf.map_fn(
      self._upscale_one,
      image_bytes,
      fn_output_signature=(tf.string, tf.int32, tf.int32),
    )
    max_height, max_width = tf.reduce_max(height), tf.reduce_max(width)

    def padded(encoded):
      pixels = tf.io.decode_png(encoded, channels=3)
      return tf.image.pad_to_bounding_box(pixels, 0, 0, max_height, max_width)

    pixels = tf.map_fn(padded, png, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    return {"png_bytes": png, "pixels": pixels, "height": height, "width": width}


def serving_model(model: keras.Model, scale: int, source: str = "") -> serving.ServingModel:
  return serving.ServingModel(
    kind="superres",
    source=source,
    signatures={serving.DEFAULT_SIGNATURE: UpscalerSignature(model).serve},
    descriptions=dict(DESCRIPTIONS),
    warmup_requests=serving.image_warmup_requests(WARMUP_SIZE),
    details={"model": model.name, "scale": int(scale), "parameters": int(model.count_params())},
  )


def export_upscaler(
  model_path: str | os.PathLike,
  export_dir: str | os.PathLike,
  name: str = "superres",
  version: Optional[int] = None,
) -> serving.ExportResult:
  """Writes the next (or the given) version of the DBPN model at `model_path` (a `.keras` file
  or a run folder holding models/dbpn.keras) under `export_dir`/`name`."""

  serving.check_destination(export_dir, name, version)
  network = convert.load_dbpn(model_path)
  model = serving_model(network, upscale.model_scale(network), source=str(model_path))
  return serving.export(model, export_dir, name, version)
