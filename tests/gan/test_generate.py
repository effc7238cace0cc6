"""Generation (`tfpets.gan.generate`, `--stage=generate`) against numpy computations of the official
conventions: RandomState latents and TF1 noise draws, truncation, style mixing, converted official
pickles through the numpy reference forward pass, and the stage end to end."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import torch_files as tw
from tests.conftest import launch
from tests.gan import numpy_reference as ref
from tests.gan import pickle_writers as pw
from tests.gan.test_importers import tf_kwargs, torch_kwargs
from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError
from tfpets.gan import generate, importers, networks, presets

Z_DIM = 16
CLASSES = ["Abyssinian", "Bengal", "Birman"]


def official_uint8(images) -> np.ndarray:
  """clip(x * 127.5 + 128, 0, 255) truncated to uint8, as both official generate.py do it."""
  return np.clip(np.asarray(images, np.float32) * 127.5 + 128, 0, 255).astype(np.uint8)


def assert_images_match(got: np.ndarray, want: np.ndarray) -> None:
  """uint8 images equal up to one level where float rounding meets a truncation boundary."""
  assert got.dtype == np.uint8 and got.shape == want.shape
  diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
  assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def noise_in_layer_order(generator) -> list:
  """The noise inputs named one by one: 4x4 conv, then conv0 and conv1 of 8x8 and 16x16."""
  s = generator.synthesis
  layers = [s.b4.conv1, s.b8.conv0, s.b8.conv1, s.b16.conv0, s.b16.conv1]
  return [layer.noise for layer in layers]


def tiny_generator(c_dim: int = 0, seed: int = 0) -> networks.Generator:
  """A 16 px demo generator with visible noise (strengths set) and a non-zero W average."""
  config = presets.network_config(
    "demo", 16, c_dim=c_dim, channel_base=64, channel_max=16, z_dim=Z_DIM, w_dim=Z_DIM
  )
  keras.utils.set_random_seed(seed)
  generator = networks.Generator(config, name="G_ema")
  rng = np.random.default_rng(seed)
  for noise in noise_in_layer_order(generator):
    noise.noise_strength.assign(0.5 + rng.random())
  generator.mapping.w_avg.assign(0.5 * rng.standard_normal(Z_DIM).astype(np.float32))
  return generator


@pytest.fixture(scope="module")
def generator():
  return tiny_generator()


@pytest.fixture(scope="module")
def conditional():
  return tiny_generator(c_dim=len(CLASSES), seed=1)


def test_tiny_generator_has_six_ws_and_five_noise_layers(generator):
  assert generator.num_ws == 6 and generate.noise_layers(generator) == noise_in_layer_order(
    generator
  )


# --- Parsing -------------------------------------------------------------------------------------


def test_seeds_take_lists_ranges_and_both_mixed():
  assert generate.parse_seeds("50-53,1,5,9") == [50, 51, 52, 53, 1, 5, 9]
  assert generate.parse_seeds("85,265,297") == [85, 265, 297]
  assert generate.parse_seeds("600-602") == [600, 601, 602]
  assert generate.parse_seeds(" 7 ") == [7]


@pytest.mark.parametrize(
  "text,bad_part",
  [("1,x", "'x'"), ("3-1", "'3-1'"), ("1,,2", "''"), ("-4", "'-4'"), ("2.5", "'2.5'")],
)
def test_a_bad_seed_names_the_bad_part(text, bad_part):
  with pytest.raises(ArgumentError) as info:
    generate.parse_seeds(text, "row_seeds")
  assert info.value.argument == "row_seeds" and info.value.value == text
  assert bad_part in info.value.problem


def test_seeds_beyond_randomstate_and_empty_seeds_are_refused():
  with pytest.raises(ArgumentError, match="above 4294967295"):
    generate.parse_seeds("4294967296")
  with pytest.raises(ArgumentError, match="empty"):
    generate.parse_seeds("")


def test_named_style_ranges_follow_the_stylegan_paper():
  assert generate.parse_styles("coarse", 18) == [0, 1, 2, 3]
  assert generate.parse_styles("middle", 18) == [4, 5, 6, 7]
  assert generate.parse_styles("fine", 18) == list(range(8, 18))
  assert generate.parse_styles("0-6", 12) == list(range(7))
  assert generate.parse_styles("fine,1", 10) == [1, 8, 9]
  assert generate.parse_styles("Middle", 6) == [4, 5]  # clipped to the network's ws


def test_style_layers_beyond_the_network_are_refused():
  with pytest.raises(ArgumentError, match=r"layer 6 is beyond the network's 6 ws \(0-5\)"):
    generate.parse_styles("0-6", 6)
  with pytest.raises(ArgumentError, match="names no layer"):
    generate.parse_styles("fine", 6)
  with pytest.raises(ArgumentError, match="'mid'.*coarse, middle, fine"):
    generate.parse_styles("mid", 12)


def test_psis_parse_and_a_bad_one_is_named():
  assert generate.parse_psis(["1", "0.7", "-0.5"]) == [1.0, 0.7, -0.5]
  with pytest.raises(ArgumentError, match="'abc' is not a number"):
    generate.parse_psis(["1", "abc"])


# --- Latents and noise of a seed -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 85, 2**32 - 1])
def test_pytorch_latents_are_randomstate_randn(seed):
  z, noise = generate.seed_latents(seed, Z_DIM, "pytorch", [(4, 4)])
  np.testing.assert_array_equal(z, np.random.RandomState(seed).randn(1, Z_DIM)[0])
  assert noise is None


def test_tf1_latents_then_noise_come_from_one_randomstate():
  shapes = [(4, 4), (8, 8), (8, 8), (16, 16), (16, 16)]
  z, noise = generate.seed_latents(297, Z_DIM, "tf1", shapes)
  rnd = np.random.RandomState(297)
  np.testing.assert_array_equal(z, rnd.randn(1, Z_DIM)[0])
  for got, (size, _) in zip(noise, shapes, strict=True):
    np.testing.assert_array_equal(got, rnd.randn(1, 1, size, size)[0, 0])


def test_tf1_images_use_the_seed_draws_as_noise_buffers_in_layer_order(generator):
  layers = noise_in_layer_order(generator)
  stored = [layer.noise_const.numpy().copy() for layer in layers]
  got = generate.generate_images(generator, [5, 9], convention="tf1", batch_size=1)
  want = []
  for seed in (5, 9):
    rnd = np.random.RandomState(seed)
    z = rnd.randn(1, Z_DIM).astype(np.float32)
    for layer in layers:
      size = layer.resolution
      layer.noise_const.assign(rnd.randn(1, 1, size, size)[0, 0].astype(np.float32))
    ws = generator.mapping(z, truncation_psi=0.5)  # the tf1 default psi
    want.append(official_uint8(generator.synthesis(ws, noise_mode="const"))[0])
  for layer, value in zip(layers, stored):
    layer.noise_const.assign(value)
  assert_images_match(got, np.stack(want))
  # The stored buffers are back, and pytorch-convention images use them.
  for layer, value in zip(generate.noise_layers(generator), stored):
    np.testing.assert_array_equal(layer.noise_const.numpy(), value)
  assert not np.array_equal(got, generate.generate_images(generator, [5, 9], truncation_psi=0.5))


def test_noise_buffers_are_set_inside_the_block_and_restored_after(generator):
  layers = noise_in_layer_order(generator)
  stored = [layer.noise_const.numpy().copy() for layer in layers]
  values = [np.full(layer.noise_const.shape, i + 1.0, np.float32) for i, layer in enumerate(layers)]
  with pytest.raises(RuntimeError):
    with generate.noise_buffers(generator, values):
      for layer, value in zip(layers, values):
        np.testing.assert_array_equal(layer.noise_const.numpy(), value)
      raise RuntimeError("restored even so")
  for layer, value in zip(layers, stored):
    np.testing.assert_array_equal(layer.noise_const.numpy(), value)


# --- Truncation, images, sweeps and style mixing --------------------------------------------------


def numpy_ws(generator, seeds, psi, c=None) -> np.ndarray:
  """w_avg + (w - w_avg) * psi from the untruncated mapping output, in numpy."""
  z = np.stack([np.random.RandomState(seed).randn(Z_DIM) for seed in seeds]).astype(np.float32)
  w = generator.mapping(z, c).numpy().astype(np.float64)
  w_avg = generator.mapping.w_avg.numpy().astype(np.float64)
  return w_avg + (w - w_avg) * psi


@pytest.mark.parametrize("psi", [1.0, 0.7, 0.0, -0.5])
def test_truncation_matches_numpy_lerp_towards_w_avg(generator, psi):
  got = generate.seed_ws(generator, [3, 4, 11], psi)
  np.testing.assert_allclose(got, numpy_ws(generator, [3, 4, 11], psi), atol=1e-5)


@pytest.mark.parametrize("noise_mode", ["const", "none"])
def test_pytorch_images_are_the_synthesis_of_the_truncated_ws(generator, noise_mode):
  got = generate.generate_images(
    generator, [3, 4, 11], truncation_psi=0.7, noise_mode=noise_mode, batch_size=2
  )
  ws = numpy_ws(generator, [3, 4, 11], 0.7).astype(np.float32)
  assert_images_match(got, official_uint8(generator.synthesis(ws, noise_mode=noise_mode)))


def test_default_psi_is_1_for_pytorch_and_half_for_tf1(generator):
  plain = generate.generate_images(generator, [2])
  assert np.array_equal(plain, generate.generate_images(generator, [2], truncation_psi=1))
  tf1 = generate.generate_images(generator, [2], convention="tf1")
  assert np.array_equal(tf1, generate.generate_images(generator, [2], 0.5, convention="tf1"))
  assert not np.array_equal(tf1, generate.generate_images(generator, [2], 1, convention="tf1"))


def test_random_noise_is_fresh_for_every_image(generator):
  twice = generate.generate_images(generator, [1, 1], noise_mode="random", batch_size=1)
  assert not np.array_equal(twice[0], twice[1])
  for other in ("const", "none"):
    assert not np.array_equal(twice[:1], generate.generate_images(generator, [1], noise_mode=other))


@pytest.mark.parametrize("convention", ["pytorch", "tf1"])
def test_truncation_sweep_rows_are_seeds_and_columns_psis(generator, convention):
  psis = [1.0, 0.5, -1.0]
  sweep = generate.truncation_sweep(generator, [6, 8], psis, convention=convention)
  assert sweep.shape == (2, 3, 16, 16, 3)
  for j, psi in enumerate(psis):
    column = generate.generate_images(generator, [6, 8], psi, convention=convention)
    assert_images_match(sweep[:, j], column)


def test_style_mixing_cells_are_the_synthesis_of_the_mixed_ws(generator):
  rows, cols, styles = [3, 7], [7, 12, 20], [0, 1, 4]
  grid = generate.style_mixing(generator, rows, cols, "0-1,4", truncation_psi=0.7)
  assert grid.shape == (3, 4, 16, 16, 3)
  assert not grid[0, 0].any()  # the black corner
  ws = dict(zip(rows + cols, numpy_ws(generator, rows + cols, 0.7).astype(np.float32)))
  render = lambda w: official_uint8(generator.synthesis(w[np.newaxis], noise_mode="const"))[0]
  for j, seed in enumerate(cols):
    assert_images_match(grid[0, j + 1], render(ws[seed]))
  for i, row_seed in enumerate(rows):
    assert_images_match(grid[i + 1, 0], render(ws[row_seed]))
    for j, col_seed in enumerate(cols):
      mixed = ws[row_seed].copy()
      mixed[styles] = ws[col_seed][styles]
      assert_images_match(grid[i + 1, j + 1], render(mixed))
  # Mixing a seed with itself gives its own image; mixing coarse styles changes the image.
  assert_images_match(grid[2, 1], grid[0, 1])
  assert not np.array_equal(grid[1, 2], grid[1, 0])


def test_style_mixing_defaults_psi_by_convention(generator):
  tf1 = generate.style_mixing(generator, [1], [2], [0], convention="tf1")
  half = generate.style_mixing(generator, [1], [2], [0], truncation_psi=0.5)
  assert np.array_equal(tf1, half)


# --- Classes --------------------------------------------------------------------------------------


def write_dataset_manifest(workdir, names=CLASSES):
  shards_dir = workdir / "records" / "shards"
  shards_dir.mkdir(parents=True)
  counts = {"train": {name: 1 for name in names}}
  shards.write_manifest(shards_dir, names, counts, {"train": []})
  (workdir / "records" / "stylegan").mkdir()


def test_class_names_are_read_beside_the_stylegan_records(tmp_path):
  write_dataset_manifest(tmp_path)
  for place in ("", "records", "records/stylegan", "records/shards"):
    assert generate.dataset_class_names(tmp_path / place) == CLASSES
  with pytest.raises(ArgumentError, match="3 classes, but the network has 5"):
    generate.dataset_class_names(tmp_path, c_dim=5)
  with pytest.raises(ArgumentError, match="no class names there") as info:
    generate.dataset_class_names(tmp_path / "elsewhere")
  assert info.value.argument == "records"


def test_a_class_is_an_index_or_a_name():
  assert generate.resolve_class("2", 3) == 2
  assert generate.resolve_class(1, 3, CLASSES) == 1
  assert generate.resolve_class("Bengal", 3, CLASSES) == 1
  assert generate.resolve_class("birman", 3, CLASSES) == 2
  assert generate.resolve_class(None, 0) is None


@pytest.mark.parametrize(
  "value,c_dim,names,message",
  [
    ("Sphynx", 3, CLASSES, "no such class; the classes: 0 Abyssinian, 1 Bengal, 2 Birman"),
    ("3", 3, CLASSES, "not a class of the network: 0 Abyssinian"),
    ("3", 3, None, "not a class of the network: indices 0-2"),
    ("Bengal", 3, None, "a class name needs the dataset's class names"),
    (None, 3, None, "the network is conditional; name a class: indices 0-2"),
    ("1", 0, None, "the network is unconditional"),
  ],
)
def test_bad_classes_are_refused_by_name(value, c_dim, names, message):
  with pytest.raises(ArgumentError, match=message) as info:
    generate.resolve_class(value, c_dim, names)
  assert info.value.argument == "class_index"


def test_conditional_images_use_the_one_hot_class(conditional):
  with pytest.raises(ArgumentError, match="conditional"):
    generate.generate_images(conditional, [4])
  got = generate.generate_images(conditional, [4, 5], class_index=2)
  z = np.stack([np.random.RandomState(s).randn(Z_DIM) for s in (4, 5)]).astype(np.float32)
  c = np.eye(3, dtype=np.float32)[[2, 2]]
  assert_images_match(got, official_uint8(conditional((z, c), noise_mode="const")))
  assert not np.array_equal(got, generate.generate_images(conditional, [4, 5], class_index=0))


# --- Converted official pickles against the numpy reference ---------------------------------------


def write_pickle(tmp_path, fmt: str, variant=("skip", "resnet", 0, 256)):
  g_kwargs, d_kwargs = tf_kwargs(*variant)
  nets, gs_params, d_params, g_params = pw.tf_networks(g_kwargs, d_kwargs, 4, "")
  path = tmp_path / f"network.{fmt}"
  if fmt == "tf.pkl":
    path.write_bytes(tw.dumps(nets))
  else:
    snapshot = pw.torch_snapshot(*torch_kwargs(*variant), g_params, d_params, gs_params, "")
    pw.write_torch_pickle(path, snapshot)
  generator = importers.read_network_pickle(path).networks["G_ema"]
  return generator, g_kwargs, gs_params


def test_tf1_convention_on_a_tf1_pickle_matches_the_official_recipe(tmp_path):
  """TF1 generate.py: z, then noise0..noiseN from one RandomState, psi 0.5, the given class."""
  generator, g_kwargs, params = write_pickle(tmp_path, "tf.pkl", ("skip", "resnet", 3, 256))
  seeds = [0, 42]
  got = generate.generate_images(generator, seeds, class_index=1, convention="tf1")
  want = []
  for seed in seeds:
    rnd = np.random.RandomState(seed)
    z = rnd.randn(1, g_kwargs["latent_size"])
    seeded = dict(params)
    for i in range(2 * 4 - 3):  # noise0..noise4 at 16 px
      size = 2 ** ((i + 5) // 2)
      seeded[f"synthesis/noise{i}"] = rnd.randn(1, 1, size, size)
    c = np.eye(3)[[1]]
    images = ref.generator(ref.Params(seeded), g_kwargs, z, c, truncation_psi=0.5)
    want.append(official_uint8(images)[0])
  assert_images_match(got, np.stack(want))


@pytest.mark.parametrize("psi,noise_mode", [(1.0, "const"), (0.6, "const"), (0.6, "none")])
def test_pytorch_convention_on_a_pytorch_pickle_matches_the_official_recipe(
  tmp_path, psi, noise_mode
):
  """PyTorch generate.py: z = RandomState(seed).randn(1, z_dim), stored or no noise."""
  generator, g_kwargs, params = write_pickle(tmp_path, "torch.pkl")
  seeds = [85, 265, 297]
  got = generate.generate_images(generator, seeds, psi, noise_mode=noise_mode)
  z = np.concatenate([np.random.RandomState(s).randn(1, g_kwargs["latent_size"]) for s in seeds])
  if noise_mode == "none":
    params = {k: (v * 0 if k.endswith("noise_strength") else v) for k, v in params.items()}
  want = ref.generator(ref.Params(params), g_kwargs, z, truncation_psi=psi)
  assert_images_match(got, official_uint8(want))


# --- The stage -----------------------------------------------------------------------------------


def decode_png(path) -> np.ndarray:
  return tf.io.decode_png(tf.io.read_file(str(path))).numpy()


def test_generate_stage_writes_seed_pngs_a_grid_and_a_report(tmp_path, generator):
  snapshot_dir = tmp_path / "snapshot"
  networks.save_networks(snapshot_dir, generator.config, {"G_ema": generator})
  workdir = tmp_path / "run"
  result = launch(
    "--stage=generate",
    f"--network={snapshot_dir}",
    "--gen_seeds=50-51,7",
    "--gen_convention=tf1",
    "--gen_trunc=0.7",
    f"--workdir={workdir}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert str(workdir / "reports" / "generate.json") in result.stdout
  want = generate.generate_images(generator, [50, 51, 7], 0.7, convention="tf1")
  names = ["seed0050.png", "seed0051.png", "seed0007.png"]
  for name, image in zip(names, want):
    assert_images_match(decode_png(workdir / "images" / name), image)
  grid = decode_png(workdir / "images" / "grid.png")
  assert grid.shape == (32, 32, 3)  # 2 x 2 cells, the last one empty
  assert_images_match(grid[:16, 16:], want[1])
  assert_images_match(grid[16:, :16], want[2])
  assert not grid[16:, 16:].any()
  report = json.loads((workdir / "reports" / "generate.json").read_text())
  assert report["network"] == str(snapshot_dir) and report["convention"] == "tf1"
  assert report["seeds"] == [50, 51, 7] and report["truncation_psi"] == 0.7
  assert report["files"] == [f"images/{name}" for name in names]
  assert report["grid"] == "images/grid.png" and report["class_index"] is None


def test_generate_stage_mixes_styles_of_a_class_named_in_the_records(tmp_path, conditional):
  snapshot_dir = tmp_path / "snapshot"
  networks.save_networks(snapshot_dir, conditional.config, {"G_ema": conditional})
  write_dataset_manifest(tmp_path / "dataset")
  common = [f"--network={snapshot_dir}", f"--records={tmp_path / 'dataset'}"]
  workdir = tmp_path / "run"
  result = launch(
    "--stage=generate",
    *common,
    "--gen_mode=style_mixing",
    "--gen_row_seeds=1-2",
    "--gen_col_seeds=3",
    "--gen_styles=coarse",
    "--gen_class=birman",
    f"--workdir={workdir}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  want = generate.style_mixing(conditional, [1, 2], [3], [0, 1, 2, 3], class_index=2)
  grid = decode_png(workdir / "images" / "grid.png")
  assert_images_match(grid, want.transpose(0, 2, 1, 3, 4).reshape(48, 32, 3))
  assert_images_match(decode_png(workdir / "images" / "2-3.png"), want[2, 1])
  report = json.loads((workdir / "reports" / "generate.json").read_text())
  assert (report["class_index"], report["class_name"], report["styles"]) == (
    2,
    "Birman",
    [0, 1, 2, 3],
  )
  assert report["row_seeds"] == [1, 2] and report["col_seeds"] == [3]

  bad = launch("--stage=generate", *common, "--gen_class=Sphynx", f"--workdir={workdir}")
  assert bad.returncode == 2
  lines = [line for line in bad.stderr.strip().splitlines() if line.startswith("tfpets: error:")]
  assert lines == [
    "tfpets: error: --gen_class=Sphynx: no such class; the classes: 0 Abyssinian, 1 Bengal, "
    "2 Birman"
  ]
  assert "Traceback" not in bad.stderr
