"""Tests of tfpets.ops.fused_bias_act: reference path against numpy, custom
op against the reference path (forward, first- and second-order gradients),
implementation choice and shape inference."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import tfpets.ops as ops
from tests.ops import cpu
from tfpets.ops import _impl

SQRT2 = np.sqrt(2.0)
SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772

# act -> (f(x, alpha) in float64, default alpha, default gain); the table of torch_utils/ops/bias_act.py.
NUMPY_ACTS = {
  "linear": (lambda x, a: x, 0.0, 1.0),
  "relu": (lambda x, a: np.maximum(x, 0.0), 0.0, SQRT2),
  "lrelu": (lambda x, a: np.where(x > 0, x, a * x), 0.2, SQRT2),
  "tanh": (lambda x, a: np.tanh(x), 0.0, 1.0),
  "sigmoid": (lambda x, a: 1.0 / (1.0 + np.exp(-x)), 0.0, 1.0),
  "elu": (lambda x, a: np.where(x >= 0, x, np.expm1(np.minimum(x, 0))), 0.0, 1.0),
  "selu": (
    lambda x, a: SELU_SCALE * np.where(x >= 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    0.0,
    1.0,
  ),
  "softplus": (lambda x, a: np.logaddexp(0.0, x), 0.0, 1.0),
  "swish": (lambda x, a: x / (1.0 + np.exp(-x)), 0.0, SQRT2),
}
ACTS = sorted(NUMPY_ACTS)
SMOOTH_ACTS = ("tanh", "sigmoid", "elu", "selu", "softplus", "swish")


def numpy_bias_act(x, b=None, axis=-1, act="linear", alpha=None, gain=None, clamp=None):
  f, default_alpha, default_gain = NUMPY_ACTS[act]
  s = x.astype(np.float64)
  if b is not None:
    shape = [1] * x.ndim
    shape[axis] = -1
    s = s + b.astype(np.float64).reshape(shape)
  y = f(s, default_alpha if alpha is None else alpha)
  y = y * (default_gain if gain is None else gain)
  return y if clamp is None else np.clip(y, -clamp, clamp)


def random_case(seed, rank=None, away_from=()):
  """x, b, axis with x + b kept 0.05 away from the given kinks."""
  rng = np.random.default_rng(seed)
  rank = rank or int(rng.integers(2, 5))
  shape = tuple(int(v) for v in rng.integers(2, 6, size=rank))
  axis = int(rng.integers(-rank, rank))
  x = rng.normal(0.0, 1.5, size=shape).astype(np.float32)
  b = rng.normal(0.0, 0.5, size=shape[axis]).astype(np.float32)
  bshape = [1] * rank
  bshape[axis] = -1
  s = x + b.reshape(bshape)
  for kink in away_from:
    near = np.abs(s - kink) < 0.05
    x = np.where(near, x + 0.1, x)
    s = x + b.reshape(bshape)
  return x, b, axis


# ---------------------------------------------------------------------------
# Reference path.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("clamp", [None, 0.6])
@pytest.mark.parametrize("act", ACTS)
def test_ref_matches_numpy(act, clamp):
  for seed in range(3):
    x, b, axis = random_case(seed)
    got = ops.fused_bias_act(x, b, axis=axis, act=act, clamp=clamp, impl="ref")
    want = numpy_bias_act(x, b, axis, act, clamp=clamp)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert got.dtype == tf.float32


def test_ref_alpha_gain_and_no_bias():
  x, _, _ = random_case(7, rank=4)
  got = ops.fused_bias_act(x, act="lrelu", alpha=0.05, gain=3.0, impl="ref")
  want = numpy_bias_act(x, None, -1, "lrelu", alpha=0.05, gain=3.0)
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_ref_clamp_applies_after_gain():
  x = np.array([[-3.0, -0.5, 0.5, 3.0]], np.float32)
  got = ops.fused_bias_act(x, act="linear", gain=2.0, clamp=2.5, impl="ref")
  np.testing.assert_array_equal(got.numpy(), [[-2.5, -1.0, 1.0, 2.5]])


def test_linear_without_anything_returns_input():
  x = tf.constant([[1.0, -2.0]])
  assert ops.fused_bias_act(x) is x


@pytest.mark.parametrize("dtype,tol", [(tf.float16, 2e-2), (tf.bfloat16, 5e-2)])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish"])
def test_ref_low_precision(act, dtype, tol):
  x, b, axis = random_case(3, rank=4)
  got = ops.fused_bias_act(
    tf.cast(x, dtype), tf.cast(b, dtype), axis=axis, act=act, clamp=2.0, impl="ref"
  )
  assert got.dtype == dtype
  x16 = tf.cast(tf.cast(x, dtype), tf.float32).numpy()
  b16 = tf.cast(tf.cast(b, dtype), tf.float32).numpy()
  want = numpy_bias_act(x16, b16, axis, act, clamp=2.0)
  np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("act", ["lrelu", "softplus", "selu"])
def test_ref_under_xla(act):
  x, b, axis = random_case(11, rank=4)
  fn = tf.function(
    lambda x, b: ops.fused_bias_act(x, b, axis=axis, act=act, clamp=1.5), jit_compile=True
  )
  want = numpy_bias_act(x, b, axis, act, clamp=1.5)
  np.testing.assert_allclose(fn(x, b).numpy(), want, rtol=1e-5, atol=1e-6)


def _first_grad(x, b, axis, act, clamp, impl, weights):
  """d/dx and d/db of sum(weights * fused_bias_act(x, b))."""
  with tf.GradientTape() as tape:
    tape.watch([x, b])
    y = ops.fused_bias_act(x, b, axis=axis, act=act, clamp=clamp, impl=impl)
    loss = tf.reduce_sum(y * weights)
  return tape.gradient(loss, [x, b], unconnected_gradients=tf.UnconnectedGradients.ZERO)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish", "softplus"])
def test_ref_gradients_against_finite_differences(act):
  x, b, axis = random_case(5, rank=3, away_from=(0.0,))
  x, b = tf.constant(x, tf.float64), tf.constant(b, tf.float64)
  weights = tf.constant(np.random.default_rng(1).normal(size=x.shape))
  first = lambda x: ops.fused_bias_act(x, b, axis=axis, act=act, impl="ref")
  theoretical, numerical = tf.test.compute_gradient(first, [x])
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-5)
  second = lambda x: _first_grad(x, b, axis, act, None, "ref", weights)[0]
  theoretical, numerical = tf.test.compute_gradient(second, [x])
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-5)


def test_bad_arguments():
  x = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="unknown activation"):
    ops.fused_bias_act(x, act="gelu")
  with pytest.raises(ValueError, match="b has length 2"):
    ops.fused_bias_act(x, np.zeros(2, np.float32))
  with pytest.raises(ValueError, match="clamp must be >= 0"):
    ops.fused_bias_act(x, act="relu", clamp=-1)
  with pytest.raises(ValueError, match="axis 2 is out of range"):
    ops.fused_bias_act(x, act="relu", axis=2)
  with pytest.raises(ValueError, match="impl must be one of"):
    ops.fused_bias_act(x, act="relu", impl="cuda")


# ---------------------------------------------------------------------------
# Custom op.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("clamp", [None, 0.6])
@pytest.mark.parametrize("act", ACTS)
def test_custom_forward_matches_ref(custom_ops, act, clamp):
  for seed in range(3):
    x, b, axis = random_case(seed)
    got = custom_ops.fused_bias_act(x, b, axis=axis, act=act, clamp=clamp, impl="custom")
    want = ops.fused_bias_act(x, b, axis=axis, act=act, clamp=clamp, impl="ref")
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_custom_low_precision_matches_ref(custom_ops, dtype):
  x, b, axis = random_case(4, rank=4)
  args = (tf.cast(x, dtype), tf.cast(b, dtype))
  got = custom_ops.fused_bias_act(*args, axis=axis, act="lrelu", clamp=1.0, impl="custom")
  want = ops.fused_bias_act(*args, axis=axis, act="lrelu", clamp=1.0, impl="ref")
  assert got.dtype == dtype
  np.testing.assert_array_equal(tf.cast(got, tf.float32).numpy(), tf.cast(want, tf.float32).numpy())


def _second_grad(x, b, axis, act, clamp, impl, weights, probe):
  """Gradients of sum(probe * d/dx sum(weights * y)) w.r.t. x and b (the
  shape of R1 regularisation), plus the first-order gradients."""
  with tf.GradientTape(persistent=True) as outer:
    outer.watch([x, b])
    dx, db = _first_grad(x, b, axis, act, clamp, impl, weights)
    penalty = tf.reduce_sum(dx * probe) + tf.reduce_sum(db * db)
  return [dx, db] + outer.gradient(
    penalty, [x, b], unconnected_gradients=tf.UnconnectedGradients.ZERO
  )


@pytest.mark.parametrize("clamp", [None, 0.9])
@pytest.mark.parametrize("act", ACTS)
def test_custom_gradients_match_ref(custom_ops, act, clamp):
  x, b, axis = random_case(21, rank=4, away_from=(0.0,))
  rng = np.random.default_rng(2)
  weights = tf.constant(rng.normal(size=x.shape), tf.float32)
  probe = tf.constant(rng.normal(size=x.shape), tf.float32)
  x, b = tf.constant(x), tf.constant(b)
  got = _second_grad(x, b, axis, act, clamp, "custom", weights, probe)
  want = _second_grad(x, b, axis, act, clamp, "ref", weights, probe)
  for name, g, w in zip(("dx", "db", "d2x", "d2b"), got, want):
    assert g is not None, name
    np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=2e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("act", ["lrelu", "sigmoid", "swish"])
def test_custom_gradients_against_finite_differences(custom_ops, act):
  x, b, axis = random_case(8, rank=3, away_from=(0.0,))
  x = tf.constant(x)
  b = tf.constant(b)
  weights = tf.constant(np.random.default_rng(3).normal(size=x.shape), tf.float32)

  def first(x, b):
    return custom_ops.fused_bias_act(x, b, axis=axis, act=act, impl="custom")

  theoretical, numerical = tf.test.compute_gradient(first, [x, b], delta=1e-2)
  for t, n in zip(theoretical, numerical):
    np.testing.assert_allclose(t, n, atol=2e-3)
  second = lambda x: _first_grad(x, b, axis, act, None, "custom", weights)[0]
  theoretical, numerical = tf.test.compute_gradient(second, [x], delta=1e-2)
  np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-3)


def test_custom_third_order_is_refused(custom_ops):
  x = tf.constant([[0.3, -0.7]])
  with tf.GradientTape() as t3:
    t3.watch(x)
    with tf.GradientTape() as t2:
      t2.watch(x)
      with tf.GradientTape() as t1:
        t1.watch(x)
        y = custom_ops.fused_bias_act(x, act="tanh", impl="custom")
      g1 = t1.gradient(y, x)
    g2 = t2.gradient(g1, x)
  with pytest.raises(NotImplementedError, match="third-order"):
    t3.gradient(g2, x)


def test_custom_shape_function_with_unknown_dims(custom_ops):
  spec = tf.TensorSpec([None, 5, None, 8], tf.float32)

  @tf.function(input_signature=[spec])
  def fn(x):
    y = custom_ops.fused_bias_act(x, tf.zeros([8]), act="lrelu", impl="custom")
    assert y.shape.as_list() == [None, 5, None, 8]
    return y

  assert fn(tf.ones([2, 5, 3, 8])).shape == (2, 5, 3, 8)


def _raw_bias_act(x, b, act, grad=0, yref=None, yref_positive=None, **attrs):
  """The FusedBiasAct op itself, with lrelu's defaults and empty extras."""
  library = _impl.require_library()
  empty = tf.zeros([0], tf.float32)
  bits = tf.zeros([0], tf.uint8) if yref_positive is None else yref_positive
  kwargs = dict(axis=-1, act=ops.ACTIVATIONS[act].index, alpha=0.2, gain=float(SQRT2), clamp=-1.0)
  kwargs.update(attrs)
  return library.fused_bias_act(
    x, b, empty, empty if yref is None else yref, empty, bits, grad=grad, **kwargs
  )


# 3885 and 2048 elements: rows of 37 and 512 channels, vector bodies, scalar
# ends and (3885) a last byte with unused bits.
SIGN_BIT_CASES = [
  (act, shape) for act in ("relu", "lrelu") for shape in ((3, 5, 7, 37), (1, 2, 2, 512))
]


def _sign_bit_inputs(shape, seed):
  """x, its bias and an upstream gradient, float32."""
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=shape).astype(np.float32),
    rng.normal(size=shape[-1:]).astype(np.float32),
    rng.normal(size=shape).astype(np.float32),
  )


@pytest.mark.parametrize("act, shape", SIGN_BIT_CASES)
def test_custom_forward_packs_the_sign_of_y(custom_ops, act, shape):
  del custom_ops
  x, b, _ = _sign_bit_inputs(shape, seed=5)
  out = _raw_bias_act(x, b, act, emit_positive=True)
  if not cpu.has_avx2():
    assert out.y_positive.shape == (0,)
    return
  positive = (x.astype(np.float64) + b) > 0
  want = np.packbits(positive.reshape(-1), bitorder="little")
  np.testing.assert_array_equal(out.y_positive.numpy(), want)


@pytest.mark.parametrize(
  "case",
  [
    dict(act="lrelu", clamp=1.0),  # The gradient needs |y| < clamp too.
    dict(act="tanh"),
    dict(act="lrelu", axis=1),
    dict(act="lrelu", gain=-1.0),
    dict(act="lrelu", emit_positive=False),
  ],
)
def test_custom_forward_emits_no_sign_bits_where_unused(custom_ops, case):
  del custom_ops
  case = dict(case)
  x = tf.random.normal([2, 3, 3, 16], seed=1)
  axis = case.get("axis", -1)
  b = tf.random.normal([x.shape[axis]], seed=2)
  out = _raw_bias_act(x, b, case.pop("act"), **{"emit_positive": True, **case})
  assert out.y_positive.shape == (0,)


@pytest.mark.parametrize("act, shape", SIGN_BIT_CASES)
def test_custom_gradient_from_sign_bits_equals_numpy(custom_ops, act, shape):
  del custom_ops
  x, b, dy = _sign_bit_inputs(shape, seed=6)
  forward = _raw_bias_act(x, b, act, emit_positive=True)
  from_bits = _raw_bias_act(
    dy, b, act, grad=1, yref=forward.y, yref_positive=forward.y_positive, reduce_b=True
  )
  from_yref = _raw_bias_act(dy, b, act, grad=1, yref=forward.y, reduce_b=True)
  negative_slope = 0.2 if act == "lrelu" else 0.0
  s = x.astype(np.float64) + b
  want_dx = dy * np.where(s > 0, 1.0, negative_slope) * SQRT2
  np.testing.assert_allclose(from_bits.y.numpy(), want_dx, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
    from_bits.db.numpy(), want_dx.reshape(-1, shape[-1]).sum(0), rtol=1e-4, atol=1e-4
  )
  # Same slopes, same order of the bias-gradient sums: identical results.
  np.testing.assert_array_equal(from_bits.y.numpy(), from_yref.y.numpy())
  np.testing.assert_array_equal(from_bits.db.numpy(), from_yref.db.numpy())


def test_custom_gradient_refuses_sign_bits_of_the_wrong_size(custom_ops):
  del custom_ops
  x = tf.ones([2, 9])  # 18 elements: 3 bytes of bits.
  with pytest.raises(
    tf.errors.InvalidArgumentError, match="yref_positive has 2 bytes, expected 0 or 3"
  ):
    _raw_bias_act(x, tf.zeros([9]), "lrelu", grad=1, yref=x, yref_positive=tf.zeros([2], tf.uint8))


def test_custom_gradient_reads_the_forward_sign_bits(custom_ops):
  x = tf.random.normal([2, 4, 4, 8], seed=3)
  b = tf.zeros([8])

  @tf.function
  def forward_backward(x, b):
    with tf.GradientTape() as tape:
      tape.watch([x, b])
      y = custom_ops.fused_bias_act(x, b, act="lrelu", impl="custom")
    return tape.gradient(y, [x, b])

  graph = forward_backward.get_concrete_function(x, b).graph
  by_grad = {op.get_attr("grad"): op for op in graph.get_operations() if op.type == "FusedBiasAct"}
  assert by_grad[1].inputs[5] is by_grad[0].outputs[2]


# ---------------------------------------------------------------------------
# Choice of implementation.
# ---------------------------------------------------------------------------


def _op_types(fn, *args):
  graph = fn.get_concrete_function(*args).graph
  return {op.type for op in graph.get_operations()}


def test_auto_uses_ref_under_xla(custom_ops):
  x = tf.ones([2, 4])
  jit = tf.function(lambda x: custom_ops.fused_bias_act(x, act="lrelu"), jit_compile=True)
  assert "FusedBiasAct" not in _op_types(jit, x)
  np.testing.assert_allclose(jit(x).numpy(), np.full((2, 4), SQRT2), rtol=1e-6)


def test_custom_under_xla_is_refused(custom_ops):
  jit = tf.function(
    lambda x: custom_ops.fused_bias_act(x, act="lrelu", impl="custom"), jit_compile=True
  )
  with pytest.raises(RuntimeError, match="XLA"):
    jit(tf.ones([2, 4]))


def test_set_xla_forces_ref(custom_ops):
  fn = tf.function(lambda x: custom_ops.fused_bias_act(x, act="lrelu"))
  custom_ops.set_xla(True)
  try:
    assert "FusedBiasAct" not in _op_types(fn, tf.ones([3]))
  finally:
    custom_ops.set_xla(False)


def test_auto_follows_the_benchmark_table(custom_ops, tmp_path, monkeypatch):
  table = tmp_path / "auto_table.json"
  table.write_text('{"cpu": {"fused_bias_act": {"tanh": "ref", "lrelu": "custom"}}}')
  monkeypatch.setattr(_impl, "AUTO_TABLE_PATH", table)
  _impl._auto_table.cache_clear()  # pylint: disable=protected-access
  try:
    choose = lambda case: _impl.choose_impl("fused_bias_act", "auto", tf.float32, case)
    assert choose("tanh") == "ref"
    assert choose("tanh+clamp") == "ref"  # Falls back to the act's entry.
    assert choose("lrelu") == "custom"
    assert choose("elu") == "ref"  # Not measured: not known to be faster.
  finally:
    _impl._auto_table.cache_clear()  # pylint: disable=protected-access


def test_custom_without_library_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(_impl, "_library", None)
  monkeypatch.setattr(_impl, "_library_error", "no such file")
  with pytest.raises(RuntimeError, match=r"custom op library not loaded \(no such file\)"):
    ops.fused_bias_act(np.ones((2, 2), np.float32), act="relu", impl="custom")
  assert ops.fused_bias_act(np.ones((1, 2), np.float32), act="relu", impl="auto").shape == (1, 2)
