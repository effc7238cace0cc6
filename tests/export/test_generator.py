"""The exported StyleGAN2-ADA generator: the Keras model's images from a process that has only
TensorFlow, PNG outputs, seeds, saved_model_cli, the warmup file, metadata and plain TF ops."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfpets import ops
from tfpets.export import generator as generator_export
from tfpets.export import serving, warmup
from tfpets.gan import generate, networks, presets, rng
from tfpets.ops import _impl

C_DIM, Z_DIM = 3, 128
CONFIG = presets.network_config("demo", 16, c_dim=C_DIM, channel_base=256, channel_max=16)

# Runs in a fresh interpreter that imports TensorFlow and numpy only, as TF Serving would load it.
FRESH_PROCESS = """
import sys
import numpy as np
import tensorflow as tf

version_dir, inputs_path, outputs_path = sys.argv[1:]
inputs = np.load(inputs_path)
loaded = tf.saved_model.load(version_dir)
outputs = {}
for name, function in loaded.signatures.items():
  feed = {k.split("/")[1]: tf.constant(v) for k, v in inputs.items() if k.split("/")[0] == name}
  for key, value in function(**feed).items():
    outputs[f"{name}/{key}"] = value.numpy()
outputs["modules"] = np.array(sorted(m for m in sys.modules if m.split(".")[0] == "tfpets"))
np.savez(outputs_path, **outputs)
"""


@pytest.fixture(scope="module")
def keras_generator():
  tf.keras.utils.set_random_seed(1)
  _, _, generator = networks.build_networks(CONFIG)
  # A W average away from zero, so that truncation changes the images as in a trained network.
  generator.mapping.w_avg.assign(np.random.default_rng(2).normal(0, 0.5, [CONFIG.w_dim]))
  return generator


@pytest.fixture(scope="module")
def exported(keras_generator, tmp_path_factory):
  export_dir = tmp_path_factory.mktemp("export")
  model = generator_export.serving_model(keras_generator, "tiny-test-network")
  return serving.export(model, export_dir, "generator")


def _keras_images(generator, z, psi, classes):
  c = tf.one_hot(classes, C_DIM)
  psi = tf.constant(psi, tf.float32)[:, None, None]
  images = generator((z, c), truncation_psi=psi, noise_mode="const", force_fp32=True)
  return np.asarray(images)


def _official_pixels(images: np.ndarray) -> np.ndarray:
  """NVlabs/stylegan2-ada-pytorch generate.py: (x * 127.5 + 128).clamp(0, 255) to uint8."""
  return np.clip(images * np.float32(127.5) + np.float32(128), 0, 255).astype(np.uint8)


def _run_fresh(version_dir, inputs, tmp_path) -> dict:
  np.savez(tmp_path / "inputs.npz", **inputs)
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      FRESH_PROCESS,
      str(version_dir),
      tmp_path / "inputs.npz",
      tmp_path / "o",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with np.load(tmp_path / "o.npz", allow_pickle=True) as outputs:
    return dict(outputs)


def test_a_fresh_tensorflow_process_gives_the_keras_images(keras_generator, exported, tmp_path):
  z = np.random.RandomState(7).standard_normal([3, Z_DIM]).astype(np.float32)
  psi = np.array([0.5, 1.0, 0.7], np.float32)
  classes = np.array([2, 0, 1], np.int64)
  seeds = np.array([0, 12345, -3], np.int64)
  inputs = {}
  for name in ("from_latents", "from_latents_float"):
    inputs.update({f"{name}/z": z, f"{name}/truncation_psi": psi, f"{name}/class_index": classes})
  inputs.update(
    {"serving_default/seeds": seeds, "serving_default/truncation_psi": psi}
    | {"serving_default/class_index": classes}
  )
  out = _run_fresh(exported.path, inputs, tmp_path)
  assert out["modules"].size == 0, out["modules"]  # TensorFlow alone ran the model

  expected = _keras_images(keras_generator, z, psi, classes)
  assert expected.std() > 0.01
  assert (
    np.abs(expected[0] - _keras_images(keras_generator, z[:1], [1.0], classes[:1])[0]).max() > 0.01
  )
  got = out["from_latents_float/images_float"]
  assert got.shape == (3, 16, 16, 3) and got.dtype == np.float32
  assert np.abs(got - expected).max() <= 1e-3

  images = out["from_latents/images"]
  assert images.dtype == np.uint8 and images.shape == (3, 16, 16, 3)
  # The official generate.py's pixel conversion, in numpy, of the same SavedModel's float output.
  np.testing.assert_array_equal(images, _official_pixels(got))
  for png, pixels in zip(out["from_latents/png_bytes"], images):
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
  np.testing.assert_array_equal(out["from_latents/z"], z)

  # Seeds: z is the documented stateless draw, and the images are those of that z.
  seed_z = np.stack([np.asarray(rng.normal(tf.constant([s, 0], tf.int64), [Z_DIM])) for s in seeds])
  np.testing.assert_array_equal(out["serving_default/z"], seed_z)
  by_seed = _official_pixels(_keras_images(keras_generator, seed_z, psi, classes))
  assert np.abs(out["serving_default/images"].astype(int) - by_seed).max() <= 1


def test_the_official_z_of_a_seed_gives_the_generate_stage_image(keras_generator, exported):
  seeds, psi, class_index = [3, 70, 1234], 0.7, 2
  expected = generate.generate_images(keras_generator, seeds, psi, class_index, "const", "pytorch")
  official_z = np.stack([np.random.RandomState(s).randn(1, Z_DIM)[0] for s in seeds])
  serve = serving.load_quietly(exported.path).signatures["from_latents"]
  got = serve(
    z=tf.constant(official_z, tf.float32),
    truncation_psi=tf.fill([3], psi),
    class_index=tf.fill([3], tf.constant(class_index, tf.int64)),
  )["images"].numpy()
  # Float rounding can move a value across an integer before the truncation to uint8.
  difference = np.abs(got.astype(int) - expected)
  assert difference.max() <= 1 and np.mean(difference == 0) > 0.99


def test_bad_classes_and_psi_counts_are_refused_by_the_graph(exported):
  serve = serving.load_quietly(exported.path).signatures["from_latents"]
  z = tf.zeros([2, Z_DIM])
  for classes, psi, message in (
    ([0, 3], [1.0, 1.0], "class_index must be < 3"),
    ([-1, 0], [1.0, 1.0], "class_index must be >= 0"),
    ([0], [1.0, 1.0], "class_index needs one value per image"),
    ([0, 1], [1.0], "truncation_psi needs one value per image"),
  ):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      serve(z=z, truncation_psi=tf.constant(psi), class_index=tf.constant(classes, tf.int64))


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_saved_model_cli_shows_the_named_signatures(exported):
  result = _cli("show", "--dir", str(exported.path), "--all")
  assert result.returncode == 0, result.stderr[-3000:]
  text = result.stdout
  sections = {
    name: text.split(f"signature_def['{name}']:")[1].split("signature_def[")[0]
    for name in ("serving_default", "from_latents", "from_latents_float")
  }
  default = sections["serving_default"]
  for line in (
    "inputs['seeds'] tensor_info:",
    "inputs['truncation_psi'] tensor_info:",
    "inputs['class_index'] tensor_info:",
    "outputs['images'] tensor_info:",
    "outputs['png_bytes'] tensor_info:",
    "outputs['z'] tensor_info:",
    "dtype: DT_UINT8",
    "shape: (-1, 16, 16, 3)",
    "Method name is: tensorflow/serving/predict",
  ):
    assert line in default, line
  assert "inputs['z'] tensor_info:" in sections["from_latents"]
  assert f"shape: (-1, {Z_DIM})" in sections["from_latents"]
  assert "outputs['images_float'] tensor_info:" in sections["from_latents_float"]


def test_saved_model_cli_runs_the_generator_from_npy_inputs(exported, tmp_path):
  seeds, psi, classes = np.array([4, 5], np.int64), np.ones(2, np.float32), np.array([1, 2])
  for name, value in (("seeds", seeds), ("psi", psi), ("classes", classes.astype(np.int64))):
    np.save(tmp_path / f"{name}.npy", value)
  result = _cli(
    "run",
    "--dir",
    str(exported.path),
    "--tag_set",
    "serve",
    "--signature_def",
    "serving_default",
    "--inputs",
    f"seeds={tmp_path / 'seeds.npy'};truncation_psi={tmp_path / 'psi.npy'};"
    f"class_index={tmp_path / 'classes.npy'}",
    "--outdir",
    str(tmp_path / "out"),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  served = serving.load_quietly(exported.path).signatures["serving_default"](
    seeds=tf.constant(seeds), truncation_psi=tf.constant(psi), class_index=tf.constant(classes)
  )
  np.testing.assert_array_equal(np.load(tmp_path / "out" / "images.npy"), served["images"])
  assert np.load(tmp_path / "out" / "z.npy").shape == (2, Z_DIM)


def test_the_warmup_file_holds_one_request_per_signature(exported):
  requests = warmup.read_warmup(warmup.warmup_path(exported.path))
  written = generator_export.warmup_requests(Z_DIM, C_DIM)
  assert len(requests) == len(written) == 3
  for request, expected in zip(requests, written):
    assert request.model_spec.name == "generator"
    assert request.model_spec.signature_name == expected.signature_name
    inputs = warmup.request_inputs(request)
    assert sorted(inputs) == sorted(expected.inputs)
    for name, value in expected.inputs.items():
      np.testing.assert_array_equal(inputs[name], value)
  assert {r.model_spec.signature_name for r in requests} == set(exported.signatures)


def test_metadata_describes_the_model_and_every_signature(exported):
  metadata = json.loads((exported.path / "assets" / "metadata.json").read_text())
  assert metadata["kind"] == "generator" and metadata["source"] == "tiny-test-network"
  assert metadata["model_name"] == "generator" and metadata["version"] == 1 == exported.version
  assert metadata["tensorflow_version"] == tf.__version__ and metadata["tfpets_version"]
  assert metadata["details"]["network"]["resolution"] == 16
  default = metadata["signatures"]["serving_default"]
  assert list(default["inputs"]) == ["seeds", "truncation_psi", "class_index"]
  assert default["inputs"]["seeds"] == {
    "dtype": "int64",
    "shape": [-1],
    "description": generator_export.DESCRIPTIONS["seeds"],
  }
  assert default["outputs"]["images"]["shape"] == [-1, 16, 16, 3]
  assert default["outputs"]["png_bytes"]["dtype"] == "string"
  assert metadata["signatures"]["from_latents"]["inputs"]["z"]["shape"] == [-1, Z_DIM]
  assert metadata["labels"] is None and not (exported.path / "assets" / "labels.txt").exists()
  loaded = serving.load_quietly(exported.path)
  assert json.loads(open(loaded.metadata_file.asset_path.numpy()).read()) == metadata


def test_the_graph_has_no_tfpets_custom_ops(exported):
  assert serving.saved_op_types(exported.path) & serving.CUSTOM_OP_TYPES == set()
  assert {"Conv2D", "EncodePng"} <= serving.saved_op_types(exported.path)
  outside = _impl.choose_impl("fused_bias_act", "auto", tf.float32, "lrelu")
  with serving.reference_ops():
    assert _impl.choose_impl("fused_bias_act", "auto", tf.float32, "lrelu") == "ref"
    assert _impl.choose_impl("upfirdn2d", "auto", tf.float32, "up") == "ref"
  assert _impl.choose_impl("fused_bias_act", "auto", tf.float32, "lrelu") == outside
  assert not ops.in_xla_context()


def test_the_next_export_is_a_new_version_beside_the_first(keras_generator, exported):
  export_dir = exported.path.parent.parent
  model = generator_export.serving_model(keras_generator, "again")
  second = serving.export(model, export_dir, "generator", verify=False)
  assert second.version == 2 and second.path == export_dir / "generator" / "2"
  assert sorted(p.name for p in (export_dir / "generator").iterdir()) == ["1", "2"]
  assert serving.load_metadata(exported.path)["source"] == "tiny-test-network"
