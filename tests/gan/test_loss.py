"""The StyleGAN2-ADA loss terms against direct computations: closed forms on hand-built networks,
finite differences and per-sample loops on the tiny real networks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpets.gan import loss, networks, presets


def tiny_config(resolution=8, **overrides):
  fields = dict(channel_max=16, z_dim=16, w_dim=16, mapping_layers=1, num_fp16_res=0)
  fields.update(overrides)
  return presets.network_config("demo", resolution, **fields)


def flip_and_scale(images, p, seed):
  """A linear augmentation: x -> (1 + p + seed-dependent shift) * x mirrored left-right."""
  shift = tf.cast(tf.math.floormod(seed[0] * 31 + seed[1], 1000), tf.float32) / 1000.0
  return (1.0 + tf.cast(p, tf.float32) + shift) * images[:, :, ::-1, :]


def aug_gain(p, seed):
  return 1.0 + p + ((seed[0] * 31 + seed[1]) % 1000) / 1000.0


class QuadraticD:
  """logits = sum(w * x^2) + c . u, so d logits / dx = 2 w x in closed form."""

  def __init__(self, rng, shape=(8, 8, 3), c_dim=2):
    self.w = rng.standard_normal(shape).astype(np.float32)
    self.u = rng.standard_normal([c_dim, 1]).astype(np.float32)

  def __call__(self, inputs, training=False):
    images, c = inputs
    logits = tf.reduce_sum(self.w * tf.square(images), axis=[1, 2, 3])[:, None]
    return logits + (0.0 if c is None else tf.matmul(c, self.u))


class _Mapping:
  def __init__(self, matrix, num_ws):
    self.matrix, self.num_ws = matrix, num_ws

  def __call__(self, z, c=None, training=False, skip_w_avg_update=False):
    w = tf.matmul(z, self.matrix)
    return tf.tile(w[:, None, :], [1, self.num_ws, 1])


class TanhG:
  """mapping: w = z M broadcast to num_ws; synthesis: img = tanh(sum_n ws_n A_n) [B, 4, 4, 2]."""

  def __init__(self, rng, z_dim=3, w_dim=5, num_ws=2, shape=(4, 4, 2)):
    self.shape = shape
    self.a = rng.standard_normal([num_ws, w_dim, int(np.prod(shape))]).astype(np.float32) * 0.3
    self.mapping = _Mapping(rng.standard_normal([z_dim, w_dim]).astype(np.float32), num_ws)

  def synthesis(self, ws, noise_mode="random", noise_seed=None):
    flat = tf.tanh(tf.einsum("bnw,nwk->bk", ws, self.a))
    return tf.reshape(flat, [-1, *self.shape])


@pytest.fixture
def rng():
  return np.random.default_rng(23)


def test_r1_is_the_squared_gradient_at_the_reals_before_augmentation(rng):
  D = QuadraticD(rng)
  reals = rng.standard_normal([3, 8, 8, 3]).astype(np.float32)
  c = rng.standard_normal([3, 2]).astype(np.float32)
  seed = tf.constant([12, 5], tf.int64)
  penalty, logits = loss.r1_penalty(D, tf.constant(reals), c, flip_and_scale, 0.25, seed)
  a = aug_gain(0.25, (12, 5))
  # D(a flip(x)) = a^2 sum(flip(w) x^2) + c u: gradient 2 a^2 flip(w) x w.r.t. the reals.
  grad = 2 * a**2 * D.w[:, ::-1, :] * reals
  np.testing.assert_allclose(penalty.numpy(), (grad**2).sum(axis=(1, 2, 3)), rtol=1e-5)
  expected_logits = a**2 * (D.w[:, ::-1, :] * reals**2).sum(axis=(1, 2, 3)) + (c @ D.u)[:, 0]
  np.testing.assert_allclose(logits.numpy(), expected_logits, rtol=1e-5)
  plain, _ = loss.r1_penalty(D, tf.constant(reals), c)
  np.testing.assert_allclose(plain.numpy(), ((2 * D.w * reals) ** 2).sum(axis=(1, 2, 3)), rtol=1e-5)


def test_r1_of_the_tiny_discriminator_matches_central_differences(rng):
  # No minibatch stddev, so that D(x_i) depends on sample i alone.
  D = networks.Discriminator(tiny_config(mbstd_num_channels=0))
  reals = rng.uniform(-1, 1, [2, 8, 8, 3]).astype(np.float32)
  penalty, logits = loss.r1_penalty(D, tf.constant(reals), None)
  h = 1e-3  # small enough to cross few leaky-ReLU kinks, large enough for float32
  for i in range(2):
    eye = np.eye(reals[i].size, dtype=np.float32).reshape(-1, 8, 8, 3) * h
    up = D(reals[i] + eye).numpy()[:, 0].astype(np.float64)
    down = D(reals[i] - eye).numpy()[:, 0].astype(np.float64)
    grad = (up - down) / (2 * h)
    np.testing.assert_allclose(penalty[i].numpy(), (grad**2).sum(), rtol=1e-2)
  np.testing.assert_allclose(logits.numpy(), D(reals).numpy()[:, 0], rtol=1e-5, atol=1e-6)


def test_path_length_penalty_in_closed_form_on_a_tanh_generator(rng):
  G = TanhG(rng)
  z = rng.standard_normal([4, 3]).astype(np.float32)
  noise = rng.standard_normal([4, 4, 4, 2]).astype(np.float32)
  pl_mean = 0.7
  penalty, lengths, ws = loss.path_length_penalty(G, z, None, pl_mean, noise, pl_decay=0.1)
  w = z @ G.mapping.matrix  # [B, w_dim], the same for both ws
  pre = w @ G.a.sum(axis=0)
  n = noise.reshape(4, -1) / np.sqrt(4 * 4)
  upstream = n * (1 - np.tanh(pre) ** 2)  # d sum(img * n) / d pre
  grads = np.einsum("bk,nwk->bnw", upstream, G.a)  # [B, num_ws, w_dim]
  expected = np.sqrt((grads**2).sum(axis=2).mean(axis=1))
  np.testing.assert_allclose(lengths.numpy(), expected, rtol=1e-4)
  mean = pl_mean + 0.1 * (expected.mean() - pl_mean)
  np.testing.assert_allclose(penalty.numpy(), (expected - mean) ** 2, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(ws.numpy()[:, 1], w, rtol=1e-5)


def test_path_length_of_the_tiny_generator_matches_a_per_sample_loop(rng):
  keras.utils.set_random_seed(0)  # the same weights every run, so the float32 check repeats
  G = networks.Generator(tiny_config())
  for layer in G.weights:  # nonzero noise strengths, so the noise inputs take part
    if "noise_strength" in layer.path:
      layer.assign(0.3)
  z = rng.standard_normal([3, 16]).astype(np.float32)
  noise = rng.standard_normal([3, 8, 8, 3]).astype(np.float32)
  w_avg = G.mapping.w_avg.numpy()
  penalty, lengths, ws = loss.path_length_penalty(G, z, None, 0.0, noise, noise_mode="const")
  np.testing.assert_array_equal(G.mapping.w_avg.numpy(), w_avg)  # not updated here
  expected = []
  for i in range(3):
    w_i = tf.constant(ws[i : i + 1])
    with tf.GradientTape() as tape:
      tape.watch(w_i)
      out = tf.reduce_sum(G.synthesis(w_i, noise_mode="const") * noise[i] / 8.0)
    g = tape.gradient(out, w_i).numpy()[0].astype(np.float64)
    expected.append(np.sqrt((g**2).sum(axis=1).mean()))
    # The gradient itself against a central difference along a random direction.
    u = rng.standard_normal(g.shape).astype(np.float32)
    h = 1e-3
    f = lambda x: float(tf.reduce_sum(G.synthesis(x, noise_mode="const") * noise[i] / 8.0))
    fd = (f(w_i + h * u) - f(w_i - h * u)) / (2 * h)
    np.testing.assert_allclose(fd, (g * u).sum(), rtol=3e-2)  # float32 rounding
  expected = np.array(expected)
  np.testing.assert_allclose(lengths.numpy(), expected, rtol=1e-4)
  mean = 0.01 * expected.mean()
  np.testing.assert_allclose(penalty.numpy(), (expected - mean) ** 2, rtol=1e-3)


def test_path_length_gradient_reaches_the_mapping_through_the_ws(rng):
  G = networks.Generator(tiny_config())
  z = rng.standard_normal([2, 16]).astype(np.float32)
  noise = rng.standard_normal([2, 8, 8, 3]).astype(np.float32)
  with tf.GradientTape() as tape:
    penalty, _, _ = loss.path_length_penalty(G, z, None, 0.0, noise, noise_mode="const")
    total = tf.reduce_sum(penalty)
  grads = tape.gradient(total, G.mapping.trainable_variables)
  assert all(g is not None and float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)


def test_main_losses_are_softplus_of_the_augmented_logits(rng):
  D = QuadraticD(rng)
  G = TanhG(rng, shape=(8, 8, 3), num_ws=2)
  z = rng.standard_normal([3, 3]).astype(np.float32)
  seed = tf.constant([9, 4], tf.int64)
  g_loss, fake_logits, ws = loss.generator_main_loss(G, D, z, None, flip_and_scale, 0.5, seed)
  fakes = G.synthesis(ws).numpy()
  a = aug_gain(0.5, (9, 4))
  expected = a**2 * (D.w[:, ::-1, :] * fakes**2).sum(axis=(1, 2, 3))
  np.testing.assert_allclose(fake_logits.numpy(), expected, rtol=1e-5)
  np.testing.assert_allclose(g_loss.numpy(), np.log1p(np.exp(-expected)), rtol=1e-5)

  reals = rng.standard_normal([3, 8, 8, 3]).astype(np.float32) * 0.3
  fakes_t = tf.constant(fakes)
  with tf.GradientTape() as tape:
    tape.watch(fakes_t)
    d_loss, real_logits, d_fake_logits = loss.discriminator_main_loss(
      D, fakes_t, None, tf.constant(reals), None, flip_and_scale, 0.5, seed
    )
  assert tape.gradient(d_loss, fakes_t) is None  # G is not trained by the D loss
  # Fakes and reals are augmented with their own draws (two different seeds).
  gains = []
  for images, logits in ((fakes, d_fake_logits), (reals, real_logits)):
    base = (D.w[:, ::-1, :] * images**2).sum(axis=(1, 2, 3))
    gains.append(float(np.sqrt(logits.numpy()[0] / base[0])))
    np.testing.assert_allclose(logits.numpy(), gains[-1] ** 2 * base, rtol=1e-5)
  assert gains[0] != pytest.approx(gains[1])
  expected_d = np.log1p(np.exp(d_fake_logits.numpy())) + np.log1p(np.exp(-real_logits.numpy()))
  np.testing.assert_allclose(d_loss.numpy(), expected_d, rtol=1e-5)


def test_style_mixing_keeps_the_first_ws_and_leaves_the_w_average(rng):
  G = networks.Generator(tiny_config(resolution=16))
  z = rng.standard_normal([4, 16]).astype(np.float32)
  w_avg = G.mapping.w_avg.numpy()
  unmixed = loss.generate_ws(G, z, None, 0.0).numpy()
  assert np.all(unmixed == unmixed[:, :1])
  mixed = loss.generate_ws(G, z, None, 1.0).numpy()
  np.testing.assert_allclose(mixed[:, 0], unmixed[:, 0], rtol=1e-6)
  same = np.all(np.isclose(mixed, unmixed[:, :1], rtol=1e-6), axis=(0, 2))  # per ws index
  cutoff = int(np.argmin(same))
  assert 1 <= cutoff < G.num_ws and np.all(same[:cutoff]) and not np.any(same[cutoff:])
  np.testing.assert_array_equal(G.mapping.w_avg.numpy(), w_avg)
