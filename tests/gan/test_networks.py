"""Generator/Discriminator behaviour: W average, truncation, style mixing, mixed precision,
architectures and resolutions, conditioning, gradients, configs and saving."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfpets.gan import networks, presets


def tiny(resolution=16, **overrides):
  fields = dict(
    z_dim=8,
    w_dim=8,
    channel_base=64,
    channel_max=8,
    mapping_layers=2,
    num_fp16_res=0,
    mbstd_group_size=2,
  )
  fields.update(overrides)
  return presets.NetworkConfig(resolution=resolution, **fields)


@pytest.fixture
def rng():
  return np.random.default_rng(7)


def test_w_avg_tracks_the_batch_mean_with_beta_0995_only_in_training(rng):
  generator = networks.Generator(tiny())
  start = rng.standard_normal(8).astype(np.float32)
  generator.mapping.w_avg.assign(start)
  z = rng.standard_normal([4, 8]).astype(np.float32)
  generator.mapping(z)
  np.testing.assert_array_equal(generator.mapping.w_avg.numpy(), start)
  ws = generator.mapping(z, training=True).numpy()
  mean = ws[:, 0].mean(axis=0)
  np.testing.assert_allclose(
    generator.mapping.w_avg.numpy(), mean + 0.995 * (start - mean), rtol=1e-5, atol=1e-6
  )


def test_truncation_lerps_towards_w_avg_below_the_cutoff(rng):
  generator = networks.Generator(tiny())
  avg = rng.standard_normal(8).astype(np.float32)
  generator.mapping.w_avg.assign(avg)
  z = rng.standard_normal([3, 8]).astype(np.float32)
  plain = generator.mapping(z).numpy()
  cut = generator.mapping(z, truncation_psi=0.5, truncation_cutoff=2).numpy()
  np.testing.assert_allclose(cut[:, :2], avg + 0.5 * (plain[:, :2] - avg), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(cut[:, 2:], plain[:, 2:])
  full = generator.mapping(z, truncation_psi=0.0).numpy()
  np.testing.assert_allclose(full, np.broadcast_to(avg, full.shape), atol=1e-6)


def test_style_mixing_takes_a_second_mapping_from_a_random_cutoff(rng):
  generator = networks.Generator(tiny(resolution=32))
  z = rng.standard_normal([2, 8]).astype(np.float32)
  own = generator.mapping(z).numpy()
  cutoffs = set()
  for _ in range(30):
    ws = generator.mapped_ws(z, training=True, style_mixing_prob=1.0).numpy()
    same = np.all(np.isclose(ws, own, atol=1e-6), axis=(0, 2))
    cutoff = int(np.argmin(same))
    assert 1 <= cutoff < generator.num_ws
    assert same[:cutoff].all() and not same[cutoff:].any()
    cutoffs.add(cutoff)
  assert len(cutoffs) > 2
  unmixed = generator.mapped_ws(z, training=True, style_mixing_prob=0.0).numpy()
  np.testing.assert_allclose(unmixed, own, atol=1e-6)


def test_mixed_precision_blocks_compute_in_float16_with_float32_weights(rng):
  config = tiny(num_fp16_res=2, conv_clamp=256)
  generator, discriminator = networks.Generator(config), networks.Discriminator(config)
  assert [b.use_fp16 for b in generator.synthesis.blocks] == [False, True, True]
  assert [b.use_fp16 for b in discriminator.blocks] == [True, True]
  assert all(v.dtype == "float32" for v in generator.weights + discriminator.weights)
  z = rng.standard_normal([2, 8]).astype(np.float32)
  images = generator(z, noise_mode="const")
  reference = generator(z, noise_mode="const", force_fp32=True)
  assert images.dtype == tf.float32
  np.testing.assert_allclose(
    images.numpy(), reference.numpy(), atol=0.05 * np.abs(reference.numpy()).max()
  )
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(discriminator(generator(z)))
  grads = tape.gradient(loss, generator.trainable_weights)
  assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("g_arch", ["orig", "skip", "resnet"])
@pytest.mark.parametrize("d_arch", ["orig", "skip", "resnet"])
def test_every_architecture_runs(rng, g_arch, d_arch):
  config = tiny(resolution=8, g_architecture=g_arch, d_architecture=d_arch)
  generator, discriminator = networks.Generator(config), networks.Discriminator(config)
  images = generator(rng.standard_normal([2, 8]).astype(np.float32))
  assert images.shape == (2, 8, 8, 3) and images.dtype == tf.float32
  assert discriminator(images).shape == (2, 1)
  assert (g_arch == "skip") == (generator.synthesis.b4.torgb is not None)
  assert (g_arch == "resnet") == (generator.synthesis.b8.skip is not None)
  assert (d_arch == "skip") == (discriminator.b4.fromrgb is not None)


@pytest.mark.parametrize("resolution", [4, 8, 16, 32, 64, 128, 256, 512, 1024])
def test_every_power_of_two_resolution_builds(resolution):
  config = tiny(resolution=resolution, channel_base=resolution * 4, channel_max=4)
  generator, discriminator = networks.Generator(config), networks.Discriminator(config)
  assert generator.num_ws == 2 * int(np.log2(resolution)) - 2
  assert len(generator.synthesis.blocks) == int(np.log2(resolution)) - 1
  if resolution <= 16:
    images = generator(tf.random.normal([2, 8]))
    assert images.shape == (2, resolution, resolution, 3)
    assert discriminator(images).shape == (2, 1)


def test_conditional_networks_need_labels_and_project_them(rng):
  config = tiny(c_dim=3, cmap_dim=4, d_mapping_layers=1)
  generator, discriminator = networks.Generator(config), networks.Discriminator(config)
  z = rng.standard_normal([2, 8]).astype(np.float32)
  c = np.eye(3, dtype=np.float32)[[0, 2]]
  with pytest.raises(ValueError, match=r"conditional \(c_dim=3\) and needs \(x, c\)"):
    generator(z)
  images = generator((z, c))
  assert discriminator((images, c)).shape == (2, 1)
  other = discriminator((images, np.eye(3, dtype=np.float32)[[1, 1]])).numpy()
  assert not np.allclose(discriminator((images, c)).numpy(), other)
  assert discriminator.mapping.fc0.weight.shape == (4, 4)


def test_gradients_reach_every_trainable_variable(rng):
  config = tiny(g_architecture="resnet", c_dim=2)
  generator, discriminator = networks.Generator(config), networks.Discriminator(config)
  z = rng.standard_normal([2, 8]).astype(np.float32)
  c = np.eye(2, dtype=np.float32)
  with tf.GradientTape(persistent=True) as tape:
    score = tf.reduce_sum(discriminator((generator((z, c), training=True), c)))
  for model in (generator, discriminator):
    grads = tape.gradient(score, model.trainable_weights)
    missing = [v.path for v, g in zip(model.trainable_weights, grads) if g is None]
    assert not missing


def test_step_compiles_in_a_tf_function(rng):
  generator, discriminator = networks.Generator(tiny()), networks.Discriminator(tiny())

  @tf.function
  def step(z):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.nn.softplus(-discriminator(generator(z, training=True))))
    return loss, tape.gradient(loss, generator.trainable_weights)

  loss, grads = step(tf.random.normal([2, 8]))
  assert np.isfinite(loss.numpy()) and len(grads) == len(generator.trainable_weights)


def test_get_config_round_trip():
  generator = networks.Generator(tiny(c_dim=2))
  clone = networks.Generator.from_config(generator.get_config())
  assert clone.config == generator.config
  discriminator = networks.Discriminator(tiny())
  assert networks.Discriminator.from_config(discriminator.get_config()).config == tiny()


def test_save_and_load_networks_round_trip(tmp_path, rng):
  config = tiny(c_dim=2)
  generator, discriminator, generator_ema = networks.build_networks(config)
  for a, b in zip(generator.weights, generator_ema.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  generator_ema.mapping.w_avg.assign(np.arange(8, dtype=np.float32))
  networks.save_networks(
    tmp_path, config, {"G_ema": generator_ema, "D": discriminator}, extra={"note": "x"}
  )
  loaded_config, models = networks.load_networks(tmp_path)
  assert loaded_config == config and sorted(models) == ["D", "G_ema"]
  z = rng.standard_normal([2, 8]).astype(np.float32)
  c = np.eye(2, dtype=np.float32)
  np.testing.assert_array_equal(
    models["G_ema"]((z, c), noise_mode="const").numpy(),
    generator_ema((z, c), noise_mode="const").numpy(),
  )
  images = generator_ema((z, c), noise_mode="const")
  np.testing.assert_array_equal(
    models["D"]((images, c)).numpy(), discriminator((images, c)).numpy()
  )


def test_load_networks_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    networks.load_networks(tmp_path)
  (tmp_path / "config.json").write_text(
    '{"network": {"resolution": 16, "bogus": 1}, "networks": []}'
  )
  with pytest.raises(ValueError, match=r"config.json: unknown network config keys \['bogus'\]"):
    networks.load_networks(tmp_path)
