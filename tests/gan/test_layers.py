"""tfpets.gan.layers against the independent NumPy reference (tests/gan/numpy_reference.py)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.gan import numpy_reference as ref
from tfpets.gan import layers

F = ref.fir_filter()


def nchw(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


@pytest.fixture
def rng():
  return np.random.default_rng(1234)


def _set(variable, value):
  variable.assign(np.asarray(value, np.float32))


def test_equalized_dense_scales_weight_and_bias_at_run_time(rng):
  layer = layers.EqualizedDense(6, 5, activation="lrelu", lr_multiplier=0.01)
  weight, bias = rng.standard_normal([6, 5]), rng.standard_normal([5])
  _set(layer.weight, weight)
  _set(layer.bias, bias)
  x = rng.standard_normal([3, 6]).astype(np.float32)
  y = x @ (weight * 0.01 / math.sqrt(6)) + bias * 0.01
  want = np.where(y > 0, y, 0.2 * y) * math.sqrt(2)
  np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-6)


def test_equalized_dense_initialisation_is_raw_normal_over_lr_multiplier():
  layer = layers.EqualizedDense(400, 500, lr_multiplier=0.01, bias_init=1.0)
  weight = layer.weight.numpy()
  assert abs(weight.std() - 100.0) < 1.0 and abs(weight.mean()) < 1.0
  np.testing.assert_array_equal(layer.bias.numpy(), np.ones(500))


@pytest.mark.parametrize(
  "kernel,up,down", [(3, 1, 1), (1, 1, 1), (3, 2, 1), (1, 2, 1), (3, 1, 2), (1, 1, 2)]
)
def test_equalized_conv_matches_tf1_resampling_formulas(rng, kernel, up, down):
  layer = layers.EqualizedConv2D(4, 5, kernel, activation="lrelu", up=up, down=down, conv_clamp=0.8)
  weight, bias = rng.standard_normal([kernel, kernel, 4, 5]), rng.standard_normal([5])
  _set(layer.weight, weight)
  _set(layer.bias, bias)
  x = rng.standard_normal([2, 8, 8, 4]).astype(np.float32)
  w = weight / math.sqrt(kernel * kernel * 4)
  if up > 1:
    y = ref.upsample_conv(nchw(x), w, F)
  elif down > 1:
    y = ref.conv_downsample(nchw(x), w, F)
  else:
    y = ref.conv2d(nchw(x), w, pad=kernel // 2)
  want = ref.bias_act(y, bias, "lrelu", clamp=0.8)
  got = layer(x).numpy()
  assert got.shape == (2, 8 * up // down, 8 * up // down, 5)
  np.testing.assert_allclose(got, nhwc(want), rtol=1e-4, atol=1e-5)
  assert np.isclose(np.abs(got).max(), 0.8)  # The clamp is active in this test.


def test_equalized_conv_gain_scales_output_and_clamp_together(rng):
  layer = layers.EqualizedConv2D(3, 4, 3, activation="lrelu", conv_clamp=1.0)
  x = (5 * rng.standard_normal([2, 6, 6, 3])).astype(np.float32)
  full = layer(x).numpy()
  halved = layer(x, gain=math.sqrt(0.5)).numpy()
  np.testing.assert_allclose(halved, full * math.sqrt(0.5), rtol=1e-5, atol=1e-6)
  assert np.isclose(np.abs(halved).max(), math.sqrt(0.5))


def _tf_style_params(layer: layers.ModulatedConv2D, rng, scope: str) -> dict:
  """Random weights set on `layer`, returned under TF1 names (mod_bias stored minus 1)."""
  weight = rng.standard_normal(layer.weight.shape)
  mod_weight = rng.standard_normal(layer.affine.weight.shape)
  mod_bias = 1 + 0.3 * rng.standard_normal(layer.affine.bias.shape)
  for var, value in (
    (layer.weight, weight),
    (layer.affine.weight, mod_weight),
    (layer.affine.bias, mod_bias),
  ):
    _set(var, value)
  return {
    f"{scope}/weight": weight,
    f"{scope}/mod_weight": mod_weight,
    f"{scope}/mod_bias": mod_bias - 1,
  }


@pytest.mark.parametrize("kernel,up,demodulate", [(3, 1, True), (3, 2, True), (1, 1, False)])
def test_modulated_conv_matches_reference(rng, kernel, up, demodulate):
  layer = layers.ModulatedConv2D(6, 5, kernel, w_dim=7, up=up, demodulate=demodulate)
  params = ref.Params(_tf_style_params(layer, rng, "L"))
  x = rng.standard_normal([3, 8, 8, 6]).astype(np.float32)
  w = rng.standard_normal([3, 7]).astype(np.float32)
  want = ref.modulated_conv(
    params, "L", nchw(x), w.astype(np.float64), demodulate=demodulate, up=up > 1, f=F
  )
  np.testing.assert_allclose(layer(x, w).numpy(), nhwc(want), rtol=1e-4, atol=1e-4)


def test_modulated_conv_in_float16_keeps_float32_style_math(rng):
  layer = layers.ModulatedConv2D(16, 8, 3, w_dim=4, up=2)
  _tf_style_params(layer, rng, "L")
  x = rng.standard_normal([2, 4, 4, 16]).astype(np.float32)
  w = rng.standard_normal([2, 4]).astype(np.float32)
  full = layer(x, w).numpy()
  half = layer(tf.cast(x, tf.float16), w)
  assert half.dtype == tf.float16 and layer.weight.dtype == "float32"
  # Pre-normalisation is cancelled by demodulation: same result up to float16 rounding.
  np.testing.assert_allclose(half.numpy().astype(np.float32), full, rtol=2e-2, atol=2e-2)


def test_noise_injection_modes(rng):
  layer = layers.NoiseInjection(4)
  _set(layer.noise_strength, 0.7)
  x = rng.standard_normal([2, 4, 4, 3]).astype(np.float32)
  const = layer(x, noise_mode="const").numpy()
  np.testing.assert_allclose(
    const, x + 0.7 * layer.noise_const.numpy()[None, :, :, None], rtol=1e-6
  )
  np.testing.assert_array_equal(layer(x, noise_mode="none").numpy(), x)
  first, second = layer(x).numpy() - x, layer(x).numpy() - x
  assert not np.allclose(first, second)  # fresh noise per call
  np.testing.assert_allclose(first[..., 0], first[..., 2], rtol=1e-5, atol=1e-6)  # one plane
  assert not np.allclose(first[0], first[1])  # per sample
  with pytest.raises(ValueError, match="noise_mode"):
    layer(x, noise_mode="fixed")


def test_noise_strength_starts_at_zero_and_noise_buffer_is_not_trainable():
  layer = layers.NoiseInjection(8)
  assert float(layer.noise_strength.numpy()) == 0.0
  assert [v.name for v in layer.trainable_weights] == ["noise_strength"]
  assert layer.noise_const.shape == (8, 8) and not layer.noise_const.trainable


def test_minibatch_stddev_groups_interleave_samples(rng):
  x = rng.standard_normal([8, 4, 4, 6]).astype(np.float32)
  layer = layers.MinibatchStdDev(group_size=4, num_channels=2)
  got = layer(x).numpy()
  want = nhwc(ref.minibatch_stddev(nchw(x), 4, 2))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Outer split: samples i and i + N/G = i + 2 share a group, so they share the statistic.
  stat = got[:, 0, 0, -2]
  np.testing.assert_allclose(stat[0::2], stat[0], rtol=1e-6)
  np.testing.assert_allclose(stat[1::2], stat[1], rtol=1e-6)
  assert not np.isclose(stat[0], stat[1])


def test_minibatch_stddev_group_larger_than_batch_uses_whole_batch(rng):
  x = rng.standard_normal([3, 4, 4, 2]).astype(np.float32)
  got = layers.MinibatchStdDev(group_size=4)(x).numpy()
  np.testing.assert_allclose(got, nhwc(ref.minibatch_stddev(nchw(x), 3)), rtol=1e-5)
  with pytest.raises(ValueError, match="batch 6 is not divisible by group size 4"):
    layers.MinibatchStdDev(group_size=4)(np.zeros([6, 4, 4, 2], np.float32))


def test_normalize_2nd_moment(rng):
  x = rng.standard_normal([4, 9]).astype(np.float32)
  np.testing.assert_allclose(
    layers.normalize_2nd_moment(x).numpy(), ref.normalize_2nd_moment(x), rtol=1e-5
  )


def test_to_rgb_and_synthesis_layer_compose_their_parts(rng):
  torgb = layers.ToRGB(6, 3, w_dim=5, conv_clamp=0.5)
  params = _tf_style_params(torgb.conv, rng, "T")
  _set(torgb.bias, rng.standard_normal([3]))
  params["T/bias"] = torgb.bias.numpy()
  x = rng.standard_normal([2, 4, 4, 6]).astype(np.float32)
  w = rng.standard_normal([2, 5]).astype(np.float32)
  y = ref.modulated_conv(ref.Params(params), "T", nchw(x), w, demodulate=False)
  want = ref.bias_act(y, params["T/bias"], clamp=0.5)
  np.testing.assert_allclose(torgb(x, w).numpy(), nhwc(want), rtol=1e-4, atol=1e-5)

  layer = layers.SynthesisLayer(6, 4, w_dim=5, resolution=8, up=2, conv_clamp=2.0)
  params = _tf_style_params(layer.conv, rng, "S")
  _set(layer.bias, rng.standard_normal([4]))
  _set(layer.noise.noise_strength, 0.4)
  y = ref.modulated_conv(ref.Params(params), "S", nchw(x), w, up=True, f=F)
  y = y + 0.4 * layer.noise.noise_const.numpy()
  want = ref.bias_act(y, layer.bias.numpy(), "lrelu", clamp=2.0)
  np.testing.assert_allclose(
    layer(x, w, noise_mode="const").numpy(), nhwc(want), rtol=1e-4, atol=1e-4
  )


@pytest.mark.parametrize(
  "layer",
  [
    layers.EqualizedDense(3, 4, activation="lrelu", lr_multiplier=0.1, bias_init=1.0),
    layers.EqualizedConv2D(3, 4, 3, down=2, activation="lrelu", conv_clamp=256),
    layers.ModulatedConv2D(3, 4, 3, w_dim=8, up=2),
    layers.SynthesisLayer(3, 4, w_dim=8, resolution=8, up=2, conv_clamp=256),
    layers.ToRGB(3, 3, w_dim=8, conv_clamp=256),
    layers.NoiseInjection(4),
    layers.MinibatchStdDev(4, 1),
  ],
  ids=lambda layer: type(layer).__name__,
)
def test_get_config_rebuilds_an_equivalent_layer(layer):
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  assert [tuple(v.shape) for v in clone.weights] == [tuple(v.shape) for v in layer.weights]


def test_layers_keep_float32_under_a_global_mixed_policy(rng):
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy("mixed_float16")
  try:
    layer = layers.EqualizedConv2D(3, 4, 3, activation="lrelu")
  finally:
    keras.config.set_dtype_policy(previous)
  assert all(v.dtype == "float32" for v in layer.weights)
  assert layer(rng.standard_normal([1, 4, 4, 3]).astype(np.float32)).dtype == tf.float32
  assert layer(tf.zeros([1, 4, 4, 3], tf.float16)).dtype == tf.float16


def test_reference_primitives_agree_with_scipy(rng):
  """The NumPy reference's building blocks, against scipy.signal (a third implementation)."""
  from scipy import signal  # pylint: disable=g-import-not-at-top

  x = rng.standard_normal([5, 6])
  w = rng.standard_normal([3, 3, 1, 1])
  np.testing.assert_allclose(
    ref.conv2d(x[None, None], w, pad=1)[0, 0],
    signal.correlate2d(x, w[:, :, 0, 0], mode="same"),
    atol=1e-12,
  )
  # TF1 upsample_conv_2d's transposed conv = full correlation of the zero-inserted image.
  zero_inserted = np.zeros([9, 11])
  zero_inserted[::2, ::2] = x
  np.testing.assert_allclose(
    ref.conv_transpose_stride2(x[None, None], w)[0, 0],
    signal.correlate2d(zero_inserted, w[:, :, 0, 0], mode="full"),
    atol=1e-12,
  )
  # upfirdn = zero insertion, padding, true convolution, decimation.
  padded = np.pad(np.kron(x, [[1, 0], [0, 0]]), ((2, 1), (2, 1)))
  want = signal.convolve2d(padded, F * 4, mode="valid")
  np.testing.assert_allclose(ref.upsample(x[None, None], F)[0, 0], want, atol=1e-12)
  want = signal.convolve2d(np.pad(x, 1), F, mode="valid")[::2, ::2]
  np.testing.assert_allclose(ref.downsample(x[None, None], F)[0, 0], want, atol=1e-12)
