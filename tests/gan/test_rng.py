"""tfpets.gan.rng, and the generator's seeded noise and style mixing built on it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

from tfpets.gan import networks, presets, rng

SEED = tf.constant([12, 34], tf.int64)


def test_normals_are_standard_and_streams_independent():
  a = rng.normal(SEED, [100_000], stream=0).numpy().astype(np.float64)
  b = rng.normal(SEED, [100_000], stream=1).numpy().astype(np.float64)
  # Five standard errors of the mean and of the variance, and of a correlation.
  assert abs(a.mean()) < 5 / np.sqrt(a.size) and abs(a.var() - 1) < 5 * np.sqrt(2 / a.size)
  assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
  assert scipy.stats.kstest(a, "norm").pvalue > 1e-3


def test_uniforms_lie_in_the_open_interval_and_repeat_under_xla():
  u = rng.uniform(SEED, [4, 1000])
  assert 0.0 < float(tf.reduce_min(u)) and float(tf.reduce_max(u)) < 1.0
  jitted = tf.function(lambda s: rng.uniform(s, [4, 1000]), jit_compile=True)(SEED)
  np.testing.assert_array_equal(u.numpy(), jitted.numpy())
  normal = tf.function(lambda s: rng.normal(s, [3, 5], stream=7), jit_compile=True)(SEED)
  np.testing.assert_allclose(normal.numpy(), rng.normal(SEED, [3, 5], stream=7).numpy(), atol=1e-6)


@pytest.fixture(scope="module")
def generator():
  config = presets.network_config(
    "demo", 16, channel_max=16, z_dim=16, w_dim=16, mapping_layers=1, style_mixing_prob=0.9
  )
  G, _, _ = networks.build_networks(config)
  for layer in G.synthesis.blocks:  # noise strengths start at 0: make the noise visible
    for weight in layer.weights:
      if "noise_strength" in weight.path:
        weight.assign(0.5)
  return G


def test_seeded_noise_repeats_and_a_new_seed_changes_it(generator):
  ws = generator.mapped_ws(tf.random.stateless_normal([2, 16], [1, 2]))
  first = generator.synthesis(ws, noise_seed=SEED)
  np.testing.assert_array_equal(first.numpy(), generator.synthesis(ws, noise_seed=SEED).numpy())
  other = generator.synthesis(ws, noise_seed=SEED + 1)
  assert float(tf.reduce_max(tf.abs(first - other))) > 1e-3
  jitted = tf.function(lambda w, s: generator.synthesis(w, noise_seed=s), jit_compile=True)
  np.testing.assert_allclose(jitted(ws, SEED).numpy(), first.numpy(), atol=1e-4)


def test_seeded_style_mixing_repeats_and_keeps_the_first_layer(generator):
  z = tf.random.stateless_normal([8, 16], [3, 4])
  ws = generator.mapping(z, None, training=True, skip_w_avg_update=True)
  mixed = generator.mix_styles(ws, z, None, 1.0, SEED)
  np.testing.assert_array_equal(mixed.numpy(), generator.mix_styles(ws, z, None, 1.0, SEED).numpy())
  np.testing.assert_array_equal(mixed[:, 0].numpy(), ws[:, 0].numpy())
  changed = np.any(mixed.numpy() != ws.numpy(), axis=(0, 2))
  assert changed.any() and not changed[0]  # with probability 1 some layers take other ws
  unmixed = generator.mix_styles(ws, z, None, 0.0, SEED)
  np.testing.assert_array_equal(unmixed.numpy(), ws.numpy())
