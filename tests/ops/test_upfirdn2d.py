"""Tests of tfpets.ops.upfirdn2d and the resampling wrappers built on it:
reference path against scipy/numpy, custom op against the reference path
(forward, first- and second-order gradients), shape inference, errors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy import signal

import tfpets.ops as ops


def numpy_upfirdn2d(x, k, up=(1, 1), down=(1, 1), pad=(0, 0, 0, 0), flip=False, gain=1.0):
  """The official definition (stylegan2-ada-pytorch torch_utils/ops/upfirdn2d.py) literally, in float64: zero insertion, pad/crop, per-plane
  scipy convolution (correlation when flip), decimation. A 1-D filter acts
  separably, which equals its outer product."""
  k = np.asarray(k, np.float64)
  if k.ndim == 1:
    k = np.outer(k, k)
  (upx, upy), (downx, downy) = up, down
  px0, px1, py0, py1 = pad
  n, h, w, c = x.shape
  u = np.zeros((n, h * upy, w * upx, c))
  u[:, ::upy, ::upx, :] = x
  u = np.pad(u, ((0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)))
  u = u[:, max(-py0, 0) : u.shape[1] - max(-py1, 0), max(-px0, 0) : u.shape[2] - max(-px1, 0), :]
  apply = signal.correlate2d if flip else signal.convolve2d
  out = np.stack(
    [np.stack([apply(u[i, :, :, j], k, mode="valid") for j in range(c)], axis=-1) for i in range(n)]
  )
  return out[:, ::downy, ::downx, :] * gain


def random_config(seed, small=False):
  """A random but valid upfirdn2d problem (x, kwargs for ops, for numpy);
  `small` keeps x at one 2..4-pixel-square plane for finite differences."""
  rng = np.random.default_rng(seed)
  h, w = (int(v) for v in rng.integers(2 if small else 3, 5 if small else 9, size=2))
  x = rng.normal(size=(1, h, w, 1) if small else (2, h, w, 3)).astype(np.float32)
  up = tuple(int(v) for v in rng.integers(1, 4, size=2))
  down = tuple(int(v) for v in rng.integers(1, 4, size=2))
  if seed % 2:
    k = rng.normal(size=tuple(int(v) for v in rng.integers(1, 5, size=2)))
  else:
    k = rng.normal(size=int(rng.integers(1, 5)))
  k = k.astype(np.float32)
  taps_y, taps_x = k.shape if k.ndim == 2 else (k.size, k.size)
  while True:  # Pads, possibly negative, that keep the output non-empty.
    pad = tuple(int(v) for v in rng.integers(-2, 4, size=4))
    if w * up[0] + pad[0] + pad[1] >= taps_x and h * up[1] + pad[2] + pad[3] >= taps_y:
      break
  kwargs = dict(
    up=up, down=down, pad=pad, flip_filter=bool(seed % 3 == 0), gain=float(rng.uniform(0.5, 2.0))
  )
  numpy_kwargs = dict(up=up, down=down, pad=pad, flip=kwargs["flip_filter"], gain=kwargs["gain"])
  return x, k, kwargs, numpy_kwargs


SEEDS = range(24)


# ---------------------------------------------------------------------------
# Reference path.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_ref_matches_numpy(seed):
  x, k, kwargs, numpy_kwargs = random_config(seed)
  got = ops.upfirdn2d(x, k, impl="ref", **kwargs)
  want = numpy_upfirdn2d(x, k, **numpy_kwargs)
  assert got.shape == want.shape
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS[:12])
def test_ref_under_xla_matches_numpy(seed):
  x, k, kwargs, numpy_kwargs = random_config(seed)
  fn = tf.function(lambda x: ops.upfirdn2d(x, k, **kwargs), jit_compile=True)
  np.testing.assert_allclose(
    fn(x).numpy(), numpy_upfirdn2d(x, k, **numpy_kwargs), rtol=1e-5, atol=1e-5
  )


def test_output_size_formula():
  x = np.zeros((1, 10, 7, 2), np.float32)
  y = ops.upfirdn2d(
    x, np.ones((3, 4), np.float32), up=(2, 3), down=(3, 2), pad=(1, -2, 0, 4), impl="ref"
  )
  # outW = (7*2 + 1 - 2 - 4) // 3 + 1, outH = (10*3 + 0 + 4 - 3) // 2 + 1.
  assert y.shape == (1, 16, 4, 2)


def test_setup_filter_rules():
  f = ops.setup_filter([1, 3, 3, 1])
  np.testing.assert_allclose(f, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)
  long = ops.setup_filter(np.arange(1, 9), gain=4)
  assert long.shape == (8,)  # >= 8 taps stay separable.
  np.testing.assert_allclose(long, np.arange(1, 9) / 36 * 2)  # gain^(1/2).
  np.testing.assert_allclose(
    ops.setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True), [[4, 3], [2, 1]]
  )
  assert ops.setup_filter(None).tolist() == [[1.0]]
  with pytest.raises(ValueError, match="non-empty scalar, 1-D or 2-D"):
    ops.setup_filter(np.ones((2, 2, 2)))


@pytest.mark.parametrize("factor", [2, 4])
def test_upsample_downsample_filter_wrappers(factor):
  rng = np.random.default_rng(factor)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  k2 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
  up = ops.upsample2d(x, factor=factor, impl="ref")
  pads_up = ((4 + factor - 1) // 2, (4 - factor) // 2)  # (2, 1) for 2.
  want_up = numpy_upfirdn2d(x, k2, up=(factor, factor), pad=pads_up * 2, gain=factor**2)
  assert up.shape == (2, 8 * factor, 8 * factor, 3)
  np.testing.assert_allclose(up.numpy(), want_up, rtol=1e-5, atol=1e-6)
  down = ops.downsample2d(x, factor=factor, impl="ref")
  pads_down = ((4 - factor + 1) // 2, (4 - factor) // 2)  # (1, 1) for 2.
  want_down = numpy_upfirdn2d(x, k2, down=(factor, factor), pad=pads_down * 2)
  assert down.shape == (2, 8 // factor, 8 // factor, 3)
  np.testing.assert_allclose(down.numpy(), want_down, rtol=1e-5, atol=1e-6)
  same = ops.filter2d(x, impl="ref")
  np.testing.assert_allclose(
    same.numpy(), numpy_upfirdn2d(x, k2, pad=(2, 1, 2, 1)), rtol=1e-5, atol=1e-6
  )


def numpy_conv_valid(x, w, stride=1):
  """Correlation of NHWC x with a [kh, kw, in, out] kernel, VALID."""
  kh, kw = w.shape[:2]
  oh = (x.shape[1] - kh) // stride + 1
  ow = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], oh, ow, w.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[
        :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride, :
      ]
      out += np.einsum("nhwc,cd->nhwd", patch, w[i, j])
  return out


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("mode", ["up", "down", "none"])
def test_conv2d_resample_matches_numpy(mode, kernel):
  """Against the definition: upfirdn (with the conv's padding folded into the
  filter's pads) then a VALID correlation with w (TF1 weight orientation)."""
  rng = np.random.default_rng(kernel)
  x = rng.normal(size=(2, 6, 6, 4)).astype(np.float32)
  w = rng.normal(size=(kernel, kernel, 4, 5)).astype(np.float32)
  k2 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
  p = kernel // 2
  if mode == "up":
    got = ops.conv2d_resample(x, w, up=2, impl="ref")
    z = numpy_upfirdn2d(x, k2, up=(2, 2), pad=(p + 2, p + 1) * 2, gain=4)
    want = numpy_conv_valid(z, w)
    assert got.shape == (2, 12, 12, 5)
  elif mode == "down":
    got = ops.conv2d_resample(x, w, down=2, impl="ref")
    if kernel == 1:
      want = numpy_conv_valid(numpy_upfirdn2d(x, k2, down=(2, 2), pad=(1, 1, 1, 1)), w)
    else:
      z = numpy_upfirdn2d(x, k2, pad=(p + 1, p + 1) * 2)
      want = numpy_conv_valid(z, w, stride=2)
    assert got.shape == (2, 3, 3, 5)
  else:
    got = ops.conv2d_resample(x, w, impl="ref")
    want = numpy_conv_valid(np.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), w)
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_conv2d_resample_up_uses_spec_paddings():
  """The official conv2d_resample (torch_utils/ops/conv2d_resample.py): transposed conv (2H + 1) then the filter with pads (1, 1)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 5, 5, 2)).astype(np.float32)
  w = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
  transposed = tf.nn.conv2d_transpose(
    x, np.transpose(w[::-1, ::-1], (0, 1, 3, 2)), [1, 11, 11, 3], [1, 2, 2, 1], "VALID"
  )
  want = numpy_upfirdn2d(
    transposed.numpy(), ops.setup_filter([1, 3, 3, 1]), pad=(1, 1, 1, 1), gain=4
  )
  got = ops.conv2d_resample(x, w, up=2, impl="ref")
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_ref_low_precision(dtype):
  x, k, kwargs, numpy_kwargs = random_config(5)
  got = ops.upfirdn2d(tf.cast(x, dtype), k, impl="ref", **kwargs)
  assert got.dtype == dtype
  want = numpy_upfirdn2d(x, k, **numpy_kwargs)
  np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want, rtol=5e-2, atol=1e-1)


def _first_grad(x, k, kwargs, weights, impl):
  """Gradient of sum(weights * y^2) w.r.t. x (non-linear in x)."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = ops.upfirdn2d(x, k, impl=impl, **kwargs)
    loss = tf.reduce_sum(weights * y * y)
  return tape.gradient(loss, x)


def _grads(x, k, kwargs, weights, probe, impl):
  """The first-order gradient and the gradient of sum(probe * it) w.r.t. x
  (a second-order term, as in R1 regularisation)."""
  with tf.GradientTape() as outer:
    outer.watch(x)
    dx = _first_grad(x, k, kwargs, weights, impl)
    penalty = tf.reduce_sum(probe * dx)
  return dx, outer.gradient(penalty, x)


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_ref_gradients_against_finite_differences(seed):
  x, k, kwargs, _ = random_config(seed, small=True)
  x = tf.constant(x, tf.float64)
  first = lambda x: ops.upfirdn2d(x, k, impl="ref", **kwargs)
  theoretical, numerical = tf.test.compute_gradient(first, [x])
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)
  out_shape = first(x).shape
  weights = tf.constant(np.random.default_rng(seed).normal(size=out_shape))
  second = lambda x: _first_grad(x, k, kwargs, weights, "ref")
  theoretical, numerical = tf.test.compute_gradient(second, [x])
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_bad_arguments():
  x = np.zeros((1, 4, 4, 1), np.float32)
  with pytest.raises(ValueError, match="NHWC"):
    ops.upfirdn2d(x[0], [1.0])
  with pytest.raises(ValueError, match="output height would be empty"):
    ops.upfirdn2d(x, np.ones((4, 1), np.float32), pad=(0, 0, -1, -1))
  with pytest.raises(ValueError, match="pad must be an int"):
    ops.upfirdn2d(x, [1.0], pad=(1, 2, 3))
  with pytest.raises(ValueError, match="up must be a positive int"):
    ops.upfirdn2d(x, [1.0], up=0)
  with pytest.raises(ValueError, match="static shape"):
    ops.upfirdn2d(x, np.ones((2, 2, 2), np.float32))
  with pytest.raises(ValueError, match="cannot both exceed 1"):
    ops.conv2d_resample(x, np.ones((3, 3, 1, 1), np.float32), up=2, down=2)


# ---------------------------------------------------------------------------
# Custom op.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_custom_forward_matches_ref(custom_ops, seed):
  x, k, kwargs, _ = random_config(seed)
  got = custom_ops.upfirdn2d(x, k, impl="custom", **kwargs)
  want = ops.upfirdn2d(x, k, impl="ref", **kwargs)
  np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_custom_low_precision_matches_ref(custom_ops, dtype):
  x, k, kwargs, _ = random_config(3)
  got = custom_ops.upfirdn2d(tf.cast(x, dtype), k, impl="custom", **kwargs)
  want = ops.upfirdn2d(tf.cast(x, dtype), k, impl="ref", **kwargs)
  assert got.dtype == dtype
  tol = 1e-2 if dtype == tf.float16 else 5e-2
  np.testing.assert_allclose(
    tf.cast(got, tf.float32).numpy(), tf.cast(want, tf.float32).numpy(), rtol=tol, atol=tol
  )


@pytest.mark.parametrize("seed", SEEDS)
def test_custom_gradients_match_ref(custom_ops, seed):
  x, k, kwargs, _ = random_config(seed)
  x = tf.constant(x)
  out_shape = ops.upfirdn2d(x, k, impl="ref", **kwargs).shape
  rng = np.random.default_rng(seed)
  weights = tf.constant(rng.normal(size=out_shape), tf.float32)
  probe = tf.constant(rng.normal(size=x.shape), tf.float32)
  got = _grads(x, k, kwargs, weights, probe, "custom")
  want = _grads(x, k, kwargs, weights, probe, "ref")
  for name, g, w in zip(("first", "second"), got, want):
    np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("seed", SEEDS[:4])
def test_custom_gradients_against_finite_differences(custom_ops, seed):
  x, k, kwargs, _ = random_config(seed, small=True)
  x = tf.constant(x)
  first = lambda x: custom_ops.upfirdn2d(x, k, impl="custom", **kwargs)
  theoretical, numerical = tf.test.compute_gradient(first, [x], delta=1e-2)
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)
  weights = tf.constant(np.random.default_rng(seed).normal(size=first(x).shape), tf.float32)
  second = lambda x: _first_grad(x, k, kwargs, weights, "custom")
  theoretical, numerical = tf.test.compute_gradient(second, [x], delta=1e-2)
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=5e-3)


def test_custom_shape_function_and_unknown_sizes(custom_ops):
  """Static output dims where the input's are known; gradients still match
  the reference when H and W are unknown while tracing."""
  f = ops.setup_filter([1, 3, 3, 1])
  spec = tf.TensorSpec([None, 7, None, 3], tf.float32)

  def grads(impl):
    @tf.function(input_signature=[spec])
    def fn(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = custom_ops.upfirdn2d(x, f, up=(2, 1), down=(1, 3), pad=(2, 1, 0, 3), impl=impl)
        if impl == "custom":
          assert y.shape.as_list() == [None, 3, None, 3]
        loss = tf.reduce_sum(y * y)
      return tape.gradient(loss, x)

    return fn

  x = tf.constant(np.random.default_rng(0).normal(size=(2, 7, 5, 3)), tf.float32)
  got = grads("custom")(x)
  assert got.shape == (2, 7, 5, 3)
  np.testing.assert_allclose(got.numpy(), grads("ref")(x).numpy(), rtol=1e-5, atol=1e-5)


def test_custom_conv2d_resample_matches_ref(custom_ops):
  rng = np.random.default_rng(9)
  x = tf.constant(rng.normal(size=(2, 8, 8, 4)), tf.float32)
  w = tf.constant(rng.normal(size=(3, 3, 4, 6)), tf.float32)
  for kwargs in (dict(up=2), dict(down=2)):
    got = custom_ops.conv2d_resample(x, w, impl="custom", **kwargs)
    want = ops.conv2d_resample(x, w, impl="ref", **kwargs)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_auto_uses_ref_under_xla(custom_ops):
  f = ops.setup_filter([1, 3, 3, 1])
  jit = tf.function(lambda x: custom_ops.upsample2d(x), jit_compile=True)
  x = tf.ones([1, 4, 4, 2])
  graph = jit.get_concrete_function(x).graph
  assert "UpFirDn2D" not in {op.type for op in graph.get_operations()}
  np.testing.assert_allclose(
    jit(x).numpy(),
    numpy_upfirdn2d(x.numpy(), f, up=(2, 2), pad=(2, 1, 2, 1), gain=4),
    rtol=1e-5,
    atol=1e-6,
  )
