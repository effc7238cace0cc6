"""Fused bias + activation + gain + clamp (StyleGAN2-ADA `fused_bias_act`).

`y = clamp(act(x + b) * gain, -clamp, +clamp)` with `b` broadcast along `axis`.

Two implementations with identical results:

* `ref`: plain TensorFlow ops, differentiable to any order, usable inside
  `tf.function(jit_compile=True)` (XLA fuses it on its own).
* `custom`: the `FusedBiasAct` C++/CUDA op from `tfpets/ops/kernels`, one pass
  over memory, with hand-written first- and second-order gradients that are
  themselves `FusedBiasAct` ops (attribute `grad`), following the PyTorch
  kernel semantics (bias added to `xref` in gradient mode).

Internal math is float32 for every input dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import tensorflow as tf

from tfpets.ops import _impl


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
  """One row of the activation table (official torch_utils/ops/bias_act.py, activation_funcs)."""

  name: str
  index: int  # Value of the op's `act` attribute.
  default_alpha: float
  default_gain: float
  uses_xref: bool  # First derivative expressed through the input (swish).
  has_2nd_grad: bool  # Non-zero second derivative.


ACTIVATIONS: dict[str, ActivationSpec] = {
  spec.name: spec
  for spec in [
    ActivationSpec("linear", 1, 0.0, 1.0, False, False),
    ActivationSpec("relu", 2, 0.0, math.sqrt(2), False, False),
    ActivationSpec("lrelu", 3, 0.2, math.sqrt(2), False, False),
    ActivationSpec("tanh", 4, 0.0, 1.0, False, True),
    ActivationSpec("sigmoid", 5, 0.0, 1.0, False, True),
    ActivationSpec("elu", 6, 0.0, 1.0, False, True),
    ActivationSpec("selu", 7, 0.0, 1.0, False, True),
    ActivationSpec("softplus", 8, 0.0, 1.0, False, True),
    ActivationSpec("swish", 9, 0.0, math.sqrt(2), True, True),
  ]
}


def _activation_spec(act: str) -> ActivationSpec:
  if act not in ACTIVATIONS:
    raise ValueError(
      f"fused_bias_act: unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}"
    )
  return ACTIVATIONS[act]


def _apply_activation(x: tf.Tensor, act: str, alpha: float) -> tf.Tensor:
  """The activation functions of the reference path (float32 in, out)."""
  if act == "linear":
    return x
  if act == "relu":
    return tf.nn.relu(x)
  if act == "lrelu":
    return tf.nn.leaky_relu(x, alpha=alpha)
  if act == "tanh":
    return tf.math.tanh(x)
  if act == "sigmoid":
    return tf.math.sigmoid(x)
  if act == "elu":
    return tf.nn.elu(x)
  if act == "selu":
    return tf.nn.selu(x)
  if act == "softplus":
    return tf.math.softplus(x)
  return x * tf.math.sigmoid(x)  # swish


def _normalize_axis(axis: int, rank: int) -> int:
  if not -rank <= axis < rank:
    raise ValueError(f"fused_bias_act: axis {axis} is out of range for a rank-{rank} input")
  return axis % rank


def _bias_act_ref(
  x: tf.Tensor,
  b: tf.Tensor | None,
  axis: int,
  act: str,
  alpha: float,
  gain: float,
  clamp: float | None,
) -> tf.Tensor:
  """Reference path: bias, activation, gain, clamp in float32."""
  out_dtype = x.dtype
  # Half-precision inputs compute in float32 (float32/float64 as they are).
  math_dtype = tf.float32 if out_dtype in (tf.float16, tf.bfloat16) else (out_dtype)
  y = tf.cast(x, math_dtype)
  if b is not None:
    b = tf.cast(b, math_dtype)
    if axis == x.shape.rank - 1:
      y = tf.nn.bias_add(y, b)
    else:
      shape = [-1 if i == axis else 1 for i in range(x.shape.rank)]
      y = y + tf.reshape(b, shape)
  y = _apply_activation(y, act, alpha)
  if gain != 1:
    y = y * gain
  if clamp is not None:
    y = tf.clip_by_value(y, -clamp, clamp)
  return tf.cast(y, out_dtype)


def _empty(dtype: tf.DType) -> tf.Tensor:
  return tf.zeros([0], dtype)


def _no_bits() -> tf.Tensor:
  """An empty `yref_positive`: the gradient reads yref's sign."""
  return tf.zeros([0], tf.uint8)


def _reduce_to_axis(t: tf.Tensor, axis: int) -> tf.Tensor:
  """Sums over every axis except `axis` (the bias gradient).

  BiasAddGrad (channels last or first) is several times faster on CPU than
  Eigen's column reduction behind reduce_sum, and has its own gradient.
  """
  rank = t.shape.rank
  if rank >= 2 and axis == rank - 1:
    return tf.raw_ops.BiasAddGrad(out_backprop=t, data_format="NHWC")
  if rank >= 3 and axis == 1:
    return tf.raw_ops.BiasAddGrad(out_backprop=t, data_format="NCHW")
  reduce_axes = [i for i in range(rank) if i != axis]
  total = tf.reduce_sum(tf.cast(t, tf.float32), axis=reduce_axes)
  return tf.cast(total, t.dtype)


def _bias_act_custom(
  x: tf.Tensor,
  b: tf.Tensor | None,
  axis: int,
  act: str,
  alpha: float,
  gain: float,
  clamp: float | None,
) -> tf.Tensor:
  spec = ACTIVATIONS[act]
  module = _impl.require_library()
  b = _empty(x.dtype) if b is None else tf.cast(b, x.dtype)
  empty = _empty(x.dtype)
  # The kernel emits y's sign bits only where its gradient can read them in
  # place of y (the op's doc says where), and an empty tensor elsewhere.
  return module.fused_bias_act(
    x,
    b,
    empty,
    empty,
    empty,
    _no_bits(),
    grad=0,
    axis=axis,
    act=spec.index,
    alpha=float(alpha),
    gain=float(gain),
    clamp=-1.0 if clamp is None else float(clamp),
    emit_positive=True,
  ).y


def fused_bias_act(
  x: Any,
  b: Any = None,
  axis: int = -1,
  act: str = "linear",
  alpha: float | None = None,
  gain: float | None = None,
  clamp: float | None = None,
  impl: str = "auto",
) -> tf.Tensor:
  """Adds a bias along `axis`, applies `act`, scales by `gain`, clamps.

  Args:
    x: Input tensor of any rank; float32, float16 or bfloat16.
    b: Optional 1-D bias of length `x.shape[axis]` (cast to x's dtype).
    axis: Axis of `x` that `b` runs along; -1 (channels of NHWC) by default.
    act: One of `ACTIVATIONS` ('linear', 'relu', 'lrelu', 'tanh', 'sigmoid',
      'elu', 'selu', 'softplus', 'swish').
    alpha: Negative slope of 'lrelu' (default 0.2); ignored otherwise.
    gain: Output scale; defaults per activation (sqrt(2) for relu, lrelu,
      swish, else 1).
    clamp: If given (>= 0), the result is clipped to [-clamp, clamp] after
      the gain.
    impl: 'auto', 'ref' or 'custom' (see `tfpets.ops.choose_impl`).

  Returns:
    A tensor with x's shape and dtype.
  """
  spec = _activation_spec(act)
  x = tf.convert_to_tensor(x)
  if not x.dtype.is_floating:
    raise TypeError(f"fused_bias_act: x must be floating point, got {x.dtype}")
  if x.shape.rank is None:
    raise ValueError("fused_bias_act: x must have a known rank")
  axis = _normalize_axis(axis, x.shape.rank)
  alpha = float(spec.default_alpha if alpha is None else alpha)
  gain = float(spec.default_gain if gain is None else gain)
  if clamp is not None:
    clamp = float(clamp)
    if clamp < 0:
      raise ValueError(f"fused_bias_act: clamp must be >= 0, got {clamp}")
  if b is not None:
    b = tf.convert_to_tensor(b)
    if b.shape.rank != 1:
      raise ValueError(f"fused_bias_act: b must be 1-D, got shape {b.shape}")
    if b.shape[0] is not None and x.shape[axis] is not None and b.shape[0] != x.shape[axis]:
      raise ValueError(
        f"fused_bias_act: b has length {b.shape[0]} but x.shape[{axis}] is {x.shape[axis]}"
      )
  if act == "linear" and b is None and gain == 1 and clamp is None:
    return x  # Nothing to do (the PyTorch shortcut).
  case = act if clamp is None else f"{act}+clamp"
  if _impl.choose_impl("fused_bias_act", impl, x.dtype, case=case) == "custom":
    return _bias_act_custom(x, b, axis, act, alpha, gain, clamp)
  return _bias_act_ref(x, b, axis, act, alpha, gain, clamp)


# ---------------------------------------------------------------------------
# Gradients of the custom op. The op has inputs (x, b, xref, yref, dy,
# yref_positive), outputs (y, db, y_positive) and the attribute `grad`:
#   grad 0: y = clamp(gain * f(x + b))
#   grad 1: y = gain * f'(xref + b) * x, masked where |yref| >= clamp
#   grad 2: d/dxref of grad 1 = gain * f''(xref + b) * x * dy, masked
# With `reduce_b` (grad 1, 2) it also returns db = sum of y over all axes but
# `axis`, computed in the same pass. All of them are diagonal in x, so each
# gradient is again this op. y_positive (the sign bits of y, where the
# forward op emitted them) is passed on as yref_positive; it has no gradient.
# ---------------------------------------------------------------------------


def _attrs(op: tf.Operation) -> dict[str, Any]:
  return {name: op.get_attr(name) for name in ("axis", "act", "alpha", "gain", "clamp")}


def _spec_by_index(index: int) -> ActivationSpec:
  return next(s for s in ACTIVATIONS.values() if s.index == index)


def _has_bias(b: tf.Tensor) -> bool:
  return b.shape[0] != 0


def _first_order(op: tf.Operation, dy: tf.Tensor) -> list[Any]:
  """Gradient of the forward op: returns (dx, db, None, None, None, None)."""
  module = _impl.require_library()
  attrs = _attrs(op)
  spec = _spec_by_index(attrs["act"])
  x, b = op.inputs[0], op.inputs[1]
  if spec.name == "linear" and attrs["clamp"] < 0:
    # The derivative is the constant gain: no kernel pass needed.
    dx = dy if attrs["gain"] == 1 else dy * tf.cast(attrs["gain"], dy.dtype)
    db = _reduce_to_axis(dx, attrs["axis"]) if _has_bias(b) else None
    return [dx, db, None, None, None, None]
  needs_xref = spec.uses_xref or spec.has_2nd_grad
  xref = x if needs_xref else _empty(x.dtype)
  dx, db, _ = module.fused_bias_act(
    dy,
    b,
    xref,
    op.outputs[0],
    _empty(x.dtype),
    op.outputs[2],
    grad=1,
    reduce_b=_has_bias(b),
    **attrs,
  )
  return [dx, db if _has_bias(b) else None, None, None, None, None]


def _broadcast_add(t: tf.Tensor, v: tf.Tensor, axis: int) -> tf.Tensor:
  if axis == t.shape.rank - 1:
    return tf.nn.bias_add(t, v)
  shape = [-1 if i == axis else 1 for i in range(t.shape.rank)]
  return t + tf.reshape(v, shape)


def _second_order(op: tf.Operation, d_dx: tf.Tensor, d_db: tf.Tensor | None) -> list[Any]:
  """Gradient of the grad-1 op with respect to (dy, b, xref, yref, -, -).

  Its db output is the sum of its dx output, so db's cotangent joins dx's,
  broadcast. The whole second derivative is attributed to `xref` (and `b`,
  which is added to it); `yref` gets none, because it is a function of
  `xref` and counting it too would double the term.
  """
  module = _impl.require_library()
  attrs = _attrs(op)
  spec = _spec_by_index(attrs["act"])
  dy, b, xref, yref, yref_positive = (
    op.inputs[0],
    op.inputs[1],
    op.inputs[2],
    op.inputs[3],
    op.inputs[5],
  )
  if op.get_attr("reduce_b") and d_db is not None:
    d_dx = _broadcast_add(d_dx, d_db, attrs["axis"])
  d_dy = module.fused_bias_act(
    d_dx, b, xref, yref, _empty(dy.dtype), yref_positive, grad=1, **attrs
  ).y
  if not spec.has_2nd_grad:
    return [d_dy, None, None, None, None, None]
  d_xref, d_b, _ = module.fused_bias_act(
    d_dx, b, xref, yref, dy, _no_bits(), grad=2, reduce_b=_has_bias(b), **attrs
  )
  return [d_dy, d_b if _has_bias(b) else None, d_xref, None, None, None]


@tf.RegisterGradient("FusedBiasAct")
def _fused_bias_act_grad(
  op: tf.Operation, grad_y: tf.Tensor, grad_db: tf.Tensor | None, unused_grad_y_positive: Any = None
) -> list[Any]:
  order = op.get_attr("grad")
  if order == 0:
    return _first_order(op, grad_y)
  if order == 1:
    return _second_order(op, grad_y, grad_db)
  raise NotImplementedError(
    "FusedBiasAct supports first- and second-order gradients only; a "
    'third-order gradient was requested (use impl="ref" for that)'
  )
