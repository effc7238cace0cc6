"""Shared serving conventions: the in-graph image decoder gives the pixels of tfpets' decoder; an
export writes a version TF Serving can load, or nothing."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfpets.data import decode
from tfpets.export import serving, warmup


def _picture() -> np.ndarray:
  """A smooth picture with detail, upsampled so that JPEG chroma subsampling matters."""
  noise = np.random.default_rng(0).uniform(0, 255, (34, 51, 3)).astype(np.uint8)
  return np.asarray(Image.fromarray(noise).resize((101, 67), Image.BILINEAR))


def _encoded(fmt: str, mode: str = "RGB", **options) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(_picture()).convert(mode).save(buffer, fmt, **options)
  return buffer.getvalue()


CASES = {
  "jpeg 4:4:4": _encoded("JPEG", quality=90, subsampling=0),
  "jpeg 4:2:0": _encoded("JPEG", quality=90, subsampling=2),
  "jpeg progressive": _encoded("JPEG", quality=80, subsampling=2, progressive=True),
  "jpeg grayscale": _encoded("JPEG", "L", quality=90),
  "jpeg cmyk": _encoded("JPEG", "CMYK", quality=90),
  "png": _encoded("PNG"),
  "png rgba": _encoded("PNG", "RGBA"),
  "png grayscale": _encoded("PNG", "L"),
  "gif": _encoded("GIF"),
  "bmp": _encoded("BMP"),
  "webp lossless": _encoded("WEBP", lossless=True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_graph_decodes_the_pixels_of_tfpets_decoder(name):
  data = CASES[name]
  decoded = serving.decode_image(tf.constant(data))
  assert decoded.dtype == tf.uint8 and decoded.shape == (67, 101, 3)
  np.testing.assert_array_equal(decoded.numpy(), decode.decode_image(data).pixels)


def test_the_graph_decoder_rejects_what_tensorflow_cannot_read():
  with pytest.raises(tf.errors.InvalidArgumentError):
    serving.decode_image(tf.constant(_encoded("TIFF")))
  with pytest.raises(tf.errors.InvalidArgumentError):
    serving.decode_image(tf.constant(b"not an image"))


def test_the_decoder_traces_with_an_unknown_size():
  fn = tf.function(serving.decode_image, input_signature=[tf.TensorSpec([], tf.string)])
  assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 3]
  assert serving.image_bytes_spec() == tf.TensorSpec([None], tf.string, name="image_bytes")


def _tiny_model(scale: float) -> serving.ServingModel:
  """A Dense layer behind one signature, `y = dense(x) * scale`, with a warmup request."""
  dense = keras.layers.Dense(2, kernel_initializer="ones", bias_initializer="ones")
  dense.build((None, 3))
  fn = tf.function(
    lambda x: {"y": dense(x) * scale}, input_signature=[tf.TensorSpec([None, 3], tf.float32, "x")]
  )
  return serving.ServingModel(
    kind="tiny",
    source="test",
    signatures={"serving_default": fn},
    descriptions={"x": "inputs", "y": "outputs"},
    warmup_requests=[warmup.WarmupRequest("serving_default", {"x": np.ones([1, 3], np.float32)})],
    labels=["first", "second"],
    files={"extra/notes.txt": b"hello"},
  )


def test_export_writes_a_servable_version_with_its_assets_and_files(tmp_path):
  result = serving.export(_tiny_model(2.0), tmp_path, "tiny")
  assert result.path == tmp_path / "tiny" / "1" and result.files == ["extra/notes.txt"]
  assert (result.path / "assets" / "labels.txt").read_text() == "first\nsecond\n"
  assert (result.path / "extra" / "notes.txt").read_bytes() == b"hello"
  metadata = serving.load_metadata(result.path)
  assert metadata["signatures"]["serving_default"] == {
    "inputs": {"x": {"dtype": "float32", "shape": [-1, 3], "description": "inputs"}},
    "outputs": {"y": {"dtype": "float32", "shape": [-1, 2], "description": "outputs"}},
  }
  # Loaded into a TF1 session, as TF Serving and saved_model_cli load it: the variables restore.
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta_graph = tf.compat.v1.saved_model.load(session, ["serve"], str(result.path))
    signature = meta_graph.signature_def["serving_default"]
    y = session.run(signature.outputs["y"].name, {signature.inputs["x"].name: [[1.0, 2.0, 3.0]]})
  np.testing.assert_allclose(y, [[14.0, 14.0]])  # (1 + 2 + 3 + 1) * 2


def test_a_failing_export_publishes_nothing(tmp_path):
  with pytest.raises(RuntimeError, match="not finite"):
    serving.export(_tiny_model(np.inf), tmp_path, "tiny")
  assert list((tmp_path / "tiny").iterdir()) == []
  model = _tiny_model(1.0)
  model.signatures = {"predict": model.signatures["serving_default"]}
  with pytest.raises(ValueError, match="serving_default"):
    serving.export(model, tmp_path, "tiny")
