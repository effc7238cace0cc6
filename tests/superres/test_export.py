"""The exported DBPN upscaler: version folder, metadata, and `serving_default` run by a process that
imports only TensorFlow, against the Keras model's own pixels."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tfpets.data.decode import decode_image, encode_jpeg, encode_png
from tfpets.export import layout, serving, warmup
from tfpets.superres import dbpn, export

SCALE = 2

# Loads the SavedModel with TensorFlow alone and saves serving_default's outputs for the files.
SERVE = textwrap.dedent(
  """
  import sys
  import numpy as np
  import tensorflow as tf

  version_dir, output_path, *files = sys.argv[1:]
  serve = tf.saved_model.load(version_dir).signatures["serving_default"]
  out = serve(image_bytes=tf.constant([open(p, "rb").read() for p in files]))
  assert not any(m.split(".")[0] in ("tfpets", "keras_hub") for m in sys.modules), "not TF alone"
  for i, png in enumerate(out.pop("png_bytes").numpy()):
    open(f"{output_path}.{i}.png", "wb").write(png)
  np.savez(output_path, **{k: v.numpy() for k, v in out.items()})
  """
)


@pytest.fixture(scope="module")
def network(tmp_path_factory):
  """(model, its .keras file, a run folder holding models/dbpn.keras)."""
  keras.utils.set_random_seed(5)
  model = dbpn.build_dbpn("dbpns", SCALE, residual=True)  # bicubic + noise: varied pixels
  root = tmp_path_factory.mktemp("superres_net")
  model.save(root / "net.keras")
  (root / "run" / "models").mkdir(parents=True)
  model.save(root / "run" / "models" / "dbpn.keras")
  return model, root / "net.keras", root / "run"


def _encoded_images(tmp_path):
  """A JPEG and a PNG of different sizes: (their files, the pixels each decodes to)."""
  rng = np.random.default_rng(3)
  y, x = np.mgrid[0:13, 0:17]
  smooth = np.stack([100 + 60 * np.sin(x / 3 + c) * np.cos(y / 4) for c in range(3)], -1)
  jpeg = encode_jpeg(np.clip(smooth, 0, 255).astype(np.uint8), 90)
  png = encode_png(rng.integers(0, 256, (9, 20, 3), np.uint8))
  files = []
  for name, data in (("a.jpg", jpeg), ("b.png", png)):
    (tmp_path / name).write_bytes(data)
    files.append(str(tmp_path / name))
  return files, [decode_image(data).pixels for data in (jpeg, png)]


def _keras_pixels(model, pixels):
  """The model on the image as [0, 1] RGB, clipped and rounded to uint8."""
  out = model(pixels[None].astype(np.float32) / 255.0, training=False).numpy()[0]
  return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _serve_fresh(version_dir, files, tmp_path) -> dict:
  result = subprocess.run(
    [sys.executable, "-c", SERVE, str(version_dir), str(tmp_path / "out.npz"), *files],
    capture_output=True,
    text=True,
    timeout=300,
    env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    cwd=tmp_path,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "out.npz") as outputs:
    served = dict(outputs)
  served["png_bytes"] = [(tmp_path / f"out.npz.{i}.png").read_bytes() for i in range(len(files))]
  return served


def test_exported_upscaler_serves_the_keras_pixels(network, tmp_path):
  model, keras_file, _ = network
  result = export.export_upscaler(keras_file, tmp_path / "models")
  version = tmp_path / "models" / "superres" / "1"
  assert result.path == version and result.version == 1 and result.model_name == "superres"
  assert result.signatures == [serving.DEFAULT_SIGNATURE]
  assert (version / "saved_model.pb").is_file()

  metadata = serving.load_metadata(version)
  assert metadata["kind"] == "superres" and metadata["source"] == str(keras_file)
  assert metadata["details"]["scale"] == SCALE
  assert metadata["details"]["parameters"] == model.count_params()
  outputs = metadata["signatures"]["serving_default"]["outputs"]
  assert outputs["pixels"]["dtype"] == "uint8" and outputs["pixels"]["shape"] == [-1, -1, -1, 3]
  assert outputs["png_bytes"]["dtype"] == "string"
  assert {outputs["height"]["dtype"], outputs["width"]["dtype"]} == {"int32"}
  (request,) = warmup.read_warmup(warmup.warmup_path(version))
  assert request.model_spec.name == "superres"

  files, decoded = _encoded_images(tmp_path)
  out = _serve_fresh(version, files, tmp_path)
  expected = [_keras_pixels(model, pixels) for pixels in decoded]
  sizes = [image.shape[:2] for image in expected]
  assert sizes == [(26, 34), (18, 40)]
  assert expected[0].std() > 10 and expected[1].std() > 10  # varied pixels, not a clipped block
  assert list(out["height"]) == [26, 18] and list(out["width"]) == [34, 40]
  assert out["pixels"].dtype == np.uint8 and out["pixels"].shape == (2, 26, 40, 3)
  for png, pixels, want in zip(out["png_bytes"], out["pixels"], expected):
    image = decode_image(png)
    assert image.format == "PNG"
    np.testing.assert_array_equal(image.pixels, want)
    height, width = want.shape[:2]
    np.testing.assert_array_equal(pixels[:height, :width], want)
    assert not pixels[height:].any() and not pixels[:, width:].any()  # zero padding


def test_a_run_folder_exports_to_the_next_free_version(network, tmp_path):
  model, keras_file, run = network
  export_dir = tmp_path / "models"
  first = export.export_upscaler(keras_file, export_dir, name="sr")
  second = export.export_upscaler(run, export_dir, name="sr")
  assert (first.version, second.version) == (1, 2)
  assert layout.version_dir(export_dir, "sr") == export_dir / "sr" / "2"
  metadata = serving.load_metadata(second.path)
  assert metadata["source"] == str(run) and metadata["details"]["scale"] == SCALE

  # The TF2 loader in this process serves the same pixels as the Keras model.
  files, decoded = _encoded_images(tmp_path)
  serve = serving.load_quietly(second.path).signatures[serving.DEFAULT_SIGNATURE]
  out = serve(image_bytes=np.array([pathlib.Path(files[1]).read_bytes()], object))
  np.testing.assert_array_equal(out["pixels"].numpy()[0], _keras_pixels(model, decoded[1]))

  with pytest.raises(ValueError, match="never overwrites"):
    export.export_upscaler(run, export_dir, name="sr", version=2)
  assert layout.versions(export_dir / "sr") == [1, 2]
