"""Gradients of tfpets.ops.conv2d_resample's convolutions (stride 1, strided,
transposed), whose weight gradients are one matmul per tap and the stride-1
input gradient a forward convolution: first order against a numpy derivation,
second order against finite differences. (Forward values against numpy are in
test_upfirdn2d.py.)"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import tensorflow as tf

import tfpets.ops as ops

# tfpets.ops.conv2d_resample is also the name of the function it exports.
conv2d_resample_lib = importlib.import_module("tfpets.ops.conv2d_resample")

# (kernel size, padding (x0, x1, y0, y1)): 'same', none, asymmetric, even.
CASES = [
  (3, (1, 1, 1, 1)),
  (3, (0, 0, 0, 0)),
  (3, (2, 0, 1, 2)),
  (2, (1, 0, 0, 1)),
  (4, (3, 1, 2, 0)),
]


def numpy_conv_grads(x, w, pads, probe, stride=1):
  """d/dx and d/dw of sum(probe * correlate(pad(x), w)), from the definition:
  every output pixel (h, w) reads xpad[s * h + i, s * w + j] through w[i, j]."""
  px0, px1, py0, py1 = pads
  kh, kw = w.shape[:2]
  xpad = np.pad(x, ((0, 0), (py0, py1), (px0, px1), (0, 0)))
  oh, ow = probe.shape[1:3]
  dxpad = np.zeros_like(xpad)
  dw = np.zeros_like(w)
  for i in range(kh):
    for j in range(kw):
      rows = slice(i, i + stride * (oh - 1) + 1, stride)
      cols = slice(j, j + stride * (ow - 1) + 1, stride)
      dw[i, j] = np.einsum("nhwc,nhwd->cd", xpad[:, rows, cols], probe)
      dxpad[:, rows, cols] += np.einsum("nhwd,cd->nhwc", probe, w[i, j])
  dx = dxpad[:, py0 : xpad.shape[1] - py1, px0 : xpad.shape[2] - px1, :]
  return dx, dw


def _first_order(fn, x, w, rng):
  x_t, w_t = tf.constant(x), tf.constant(w)
  with tf.GradientTape() as tape:
    tape.watch([x_t, w_t])
    y = fn(x_t, w_t)
    probe = rng.normal(size=y.shape)
    loss = tf.reduce_sum(y * probe)
  return [g.numpy() for g in tape.gradient(loss, [x_t, w_t])], probe


@pytest.mark.parametrize("kernel, pads", CASES)
def test_first_order_gradients_match_numpy(kernel, pads):
  rng = np.random.default_rng(kernel + sum(pads))
  x = rng.normal(size=(2, 7, 6, 3))
  w = rng.normal(size=(kernel, kernel, 3, 4))
  (dx, dw), probe = _first_order(lambda x, w: ops.conv2d_resample(x, w, padding=pads), x, w, rng)
  want_dx, want_dw = numpy_conv_grads(x, w, pads, probe)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-10, atol=1e-10)


# (kernel size, input size, stride): exact fit, a row left over, stride 3,
# even kernel, 1x1.
STRIDED_CASES = [(3, 9, 2), (3, 8, 2), (2, 7, 3), (4, 10, 2), (1, 5, 2)]


@pytest.mark.parametrize("kernel, size, stride", STRIDED_CASES)
def test_strided_conv_gradients_match_numpy(kernel, size, stride):
  rng = np.random.default_rng(kernel * size * stride)
  x = rng.normal(size=(2, size, size + 1, 3))
  w = rng.normal(size=(kernel, kernel, 3, 4))
  (dx, dw), probe = _first_order(
    lambda x, w: conv2d_resample_lib._strided_conv(x, w, stride), x, w, rng
  )
  want_dx, want_dw = numpy_conv_grads(x, w, (0, 0, 0, 0), probe, stride)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel, size, factor", STRIDED_CASES)
def test_transposed_conv_gradients_match_numpy(kernel, size, factor):
  """The transposed convolution is the correlation of the zero-upsampled
  image, padded by kernel - 1, with w."""
  rng = np.random.default_rng(kernel * size + factor)
  x = rng.normal(size=(2, size, size - 1, 3))
  w = rng.normal(size=(kernel, kernel, 3, 4))
  (dx, dw), probe = _first_order(
    lambda x, w: conv2d_resample_lib._transposed_conv(x, w, factor), x, w, rng
  )
  upsampled = np.zeros((2, factor * (size - 1) + 1, factor * (size - 2) + 1, 3))
  upsampled[:, ::factor, ::factor] = x
  want_dup, want_dw = numpy_conv_grads(upsampled, w, (kernel - 1,) * 4, probe)
  np.testing.assert_allclose(dx, want_dup[:, ::factor, ::factor], rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("up, down", [(2, 1), (1, 2)])
def test_resampling_second_order_against_finite_differences(up, down):
  """R1 through D's downsampling convolution, path length through G's
  upsampling one."""
  rng = np.random.default_rng(up + 2 * down)
  x = tf.constant(rng.normal(size=(1, 4, 6, 2)))
  w = tf.constant(rng.normal(size=(3, 3, 2, 3)))
  probe = tf.constant(rng.normal(size=(1, 4 * up // down, 6 * up // down, 3)))

  def input_grad_energy(x, w):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = ops.conv2d_resample(x, w, up=up, down=down, impl="ref")
      loss = tf.reduce_sum(tf.sin(y) * probe)
    return tf.reduce_sum(tf.square(tape.gradient(loss, x)))

  theoretical, numerical = tf.test.compute_gradient(input_grad_energy, [x, w])
  for got, want in zip(theoretical, numerical):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel, pads", CASES[:3] + CASES[4:])
def test_second_order_gradients_against_finite_differences(kernel, pads):
  """The R1 shape: the gradient of |d loss / dx|^2 with respect to x and w."""
  rng = np.random.default_rng(10 + kernel)
  x = tf.constant(rng.normal(size=(1, 5, 4, 2)))
  w = tf.constant(rng.normal(size=(kernel, kernel, 2, 3)))
  out_h = 5 + pads[2] + pads[3] - kernel + 1
  out_w = 4 + pads[0] + pads[1] - kernel + 1
  probe = tf.constant(rng.normal(size=(1, out_h, out_w, 3)))

  def input_grad_energy(x, w):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = ops.conv2d_resample(x, w, padding=pads)
      loss = tf.reduce_sum(tf.sin(y) * probe)
    return tf.reduce_sum(tf.square(tape.gradient(loss, x)))

  theoretical, numerical = tf.test.compute_gradient(input_grad_energy, [x, w])
  for got, want in zip(theoretical, numerical):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("up, down", [(1, 1), (2, 1), (1, 2)])
def test_gradients_under_xla_match_eager(up, down):
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=(2, 6, 6, 4)), tf.float32)
  w = tf.constant(rng.normal(size=(3, 3, 4, 5)), tf.float32)

  def grads(x, w):
    with tf.GradientTape() as tape:
      tape.watch([x, w])
      y = ops.conv2d_resample(x, w, up=up, down=down, impl="ref")
      loss = tf.reduce_sum(tf.square(y))
    return tape.gradient(loss, [x, w])

  eager = grads(x, w)
  compiled = tf.function(grads, jit_compile=True)(x, w)
  for got, want in zip(compiled, eager):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-3)
