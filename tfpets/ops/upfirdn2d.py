"""Upsample, FIR-filter, downsample (StyleGAN2-ADA `upfirdn2d`) on NHWC.

For every image plane: insert `up - 1` zeros after each pixel, pad by
(x0, x1, y0, y1) (negative values crop), convolve with the FIR filter `k`
(true convolution unless `flip_filter`), keep every `down`-th pixel.
`outW = (W * upx + padx0 + padx1 - kW) // downx + 1`, likewise for H.

A 1-D filter is applied separably (one pass along x, one along y, each with
sqrt(gain)); a 2-D filter in one pass. `setup_filter` turns taps into either
form as StyleGAN does.

`ref` is plain TensorFlow, differentiable to any order: depthwise
convolutions on the zero-upsampled image in graph/eager mode, and under XLA
(`jit_compile=True`) sums of shifted slices with a polyphase split for
upsampling, because XLA's CPU depthwise convolution is far slower
(docs/ops.md).
`custom` is the `UpFirDn2D` C++/CUDA op, whose gradient is the same op with
up/down swapped and the filter flipped.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from tfpets.ops import _impl

Scaling = int | Sequence[int]
Padding = int | Sequence[int]


def _parse_scaling(value: Scaling, what: str) -> tuple[int, int]:
  """int or (x, y) -> (x, y), each >= 1."""
  pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(pair) != 2 or any(int(v) != v or v < 1 for v in pair):
    raise ValueError(f"upfirdn2d: {what} must be a positive int or (x, y), got {value!r}")
  return int(pair[0]), int(pair[1])


def parse_padding(value: Padding) -> tuple[int, int, int, int]:
  """int, (x, y) or (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
  if isinstance(value, (int, np.integer)):
    return (int(value),) * 4
  pads = tuple(int(v) for v in value)
  if len(pads) == 2:
    return pads[0], pads[0], pads[1], pads[1]
  if len(pads) == 4:
    return pads
  raise ValueError(f"upfirdn2d: pad must be an int, (x, y) or (x0, x1, y0, y1), got {value!r}")


def setup_filter(
  f: Any = None,
  normalize: bool = True,
  flip_filter: bool = False,
  gain: float = 1,
  separable: bool | None = None,
) -> np.ndarray:
  """Turns filter taps into the float32 filter `upfirdn2d` expects.

  Args:
    f: Taps: None (= [1]), a scalar, a 1-D or a 2-D array.
    normalize: Scale the filter to sum 1.
    flip_filter: Flip it (turning convolution into correlation).
    gain: Overall gain; the filter is multiplied by gain ** (ndim / 2).
    separable: Keep a 1-D filter 1-D (applied separably). Default: only when
      it has at least 8 taps; shorter ones become their outer product.

  Returns:
    A 1-D (separable) or 2-D float32 numpy array.
  """
  f = np.asarray(1 if f is None else f, dtype=np.float32)
  if f.ndim > 2 or f.size == 0:
    raise ValueError(
      f"setup_filter: taps must be a non-empty scalar, 1-D or 2-D array, got shape {f.shape}"
    )
  if f.ndim == 0:
    f = f[np.newaxis]
  if separable is None:
    separable = f.ndim == 1 and f.size >= 8
  if f.ndim == 1 and not separable:
    f = np.outer(f, f)
  if f.ndim != (1 if separable else 2):
    raise ValueError("setup_filter: a 2-D filter cannot be separable")
  if normalize:
    total = f.sum()
    if total == 0:
      raise ValueError("setup_filter: cannot normalize a filter summing to 0")
    f = f / total
  if flip_filter:
    f = np.flip(f, axis=tuple(range(f.ndim)))
  return np.ascontiguousarray(f * (gain ** (f.ndim / 2)), dtype=np.float32)


def _static_or_dynamic(x: tf.Tensor) -> list[Any]:
  dynamic = tf.shape(x)
  return [dim if dim is not None else dynamic[i] for i, dim in enumerate(x.shape.as_list())]


def _zero_insert(x: tf.Tensor, upx: int, upy: int) -> tf.Tensor:
  n, h, w, c = _static_or_dynamic(x)
  x = tf.reshape(x, [n, h, 1, w, 1, c])
  x = tf.pad(x, [[0, 0], [0, 0], [0, upy - 1], [0, 0], [0, upx - 1], [0, 0]])
  return tf.reshape(x, [n, h * upy, w * upx, c])


def _pad_crop(x: tf.Tensor, px0: int, px1: int, py0: int, py1: int) -> tf.Tensor:
  if max(px0, px1, py0, py1) > 0:
    x = tf.pad(x, [[0, 0], [max(py0, 0), max(py1, 0)], [max(px0, 0), max(px1, 0)], [0, 0]])
  if min(px0, px1, py0, py1) < 0:
    _, h, w, _ = _static_or_dynamic(x)
    x = x[:, max(-py0, 0) : h - max(-py1, 0), max(-px0, 0) : w - max(-px1, 0), :]
  return x


def _upfirdn_depthwise_pass(
  x: tf.Tensor,
  f: tf.Tensor,
  up: tuple[int, int],
  down: tuple[int, int],
  pad: tuple[int, int, int, int],
  flip: bool,
) -> tf.Tensor:
  """Zero insertion, pad, depthwise convolution (fastest in graph mode)."""
  upx, upy = up
  downx, downy = down
  if upx > 1 or upy > 1:
    x = _zero_insert(x, upx, upy)
  x = _pad_crop(x, *pad)
  if not flip:
    f = f[::-1, ::-1]  # depthwise_conv2d correlates; we want convolution.
  channels = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
  f = tf.tile(f[:, :, tf.newaxis, tf.newaxis], [1, 1, channels, 1])
  if downx == downy:
    return tf.nn.depthwise_conv2d(x, f, [1, downy, downx, 1], "VALID")
  y = tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "VALID")
  return y[:, ::downy, ::downx, :]


def _shifted_window(
  x: tf.Tensor, lo_y: int, lo_x: int, shift_y: int, shift_x: int, size_y: int, size_x: int
) -> tf.Tensor:
  return x[:, lo_y + shift_y : lo_y + shift_y + size_y, lo_x + shift_x : lo_x + shift_x + size_x, :]


def _polyphase_component(
  x: tf.Tensor, kc: tf.Tensor, taps: list[tuple[int, int, int, int]], size_y: int, size_x: int
) -> tf.Tensor:
  """sum over taps (i, j, sy, sx) of kc[i, j] * x[q + sy, p + sx], zero-padded.

  The result has size_y x size_x pixels; x is padded so that every shifted
  window lies inside it.
  """
  in_h, in_w = x.shape[1], x.shape[2]
  lo_y = max(0, -min(t[2] for t in taps))
  lo_x = max(0, -min(t[3] for t in taps))
  hi_y = max(0, size_y + max(t[2] for t in taps) - in_h)
  hi_x = max(0, size_x + max(t[3] for t in taps) - in_w)
  if max(lo_y, lo_x, hi_y, hi_x) > 0:
    x = tf.pad(x, [[0, 0], [lo_y, hi_y], [lo_x, hi_x], [0, 0]])
  total = None
  for i, j, shift_y, shift_x in taps:
    term = kc[i, j] * _shifted_window(x, lo_y, lo_x, shift_y, shift_x, size_y, size_x)
    total = term if total is None else total + term
  return total


def _upfirdn_slices_pass(
  x: tf.Tensor,
  f: tf.Tensor,
  up: tuple[int, int],
  down: tuple[int, int],
  pad: tuple[int, int, int, int],
  flip: bool,
) -> tf.Tensor:
  """Sums of shifted slices, polyphase for upsampling (fastest under XLA).

  XLA fuses the slices into one loop and never multiplies inserted zeros;
  XLA's own depthwise convolution is very slow on CPU. Needs static H, W.
  """
  upx, upy = up
  downx, downy = down
  px0, px1, py0, py1 = pad
  kh, kw = f.shape
  kc = f if flip else f[::-1, ::-1]  # Correlation weights.
  in_h, in_w = x.shape[1], x.shape[2]
  full_h = in_h * upy + py0 + py1 - kh + 1  # Output size before decimation.
  full_w = in_w * upx + px0 + px1 - kw + 1
  if upx == 1 and upy == 1:
    x = _pad_crop(x, px0, px1, py0, py1)
    total = None
    for i in range(kh):
      for j in range(kw):
        term = kc[i, j] * x[:, i : i + full_h : downy, j : j + full_w : downx, :]
        total = term if total is None else total + term
    return total
  size_y, size_x = -(-full_h // upy), -(-full_w // upx)
  n, _, _, c = _static_or_dynamic(x)
  rows = []
  for ry in range(upy):
    phases = []
    for rx in range(upx):
      taps = [
        (i, j, (ry + i - py0) // upy, (rx + j - px0) // upx)
        for i in range(kh)
        for j in range(kw)
        if (ry + i - py0) % upy == 0 and (rx + j - px0) % upx == 0
      ]
      if taps:
        phases.append(_polyphase_component(x, kc, taps, size_y, size_x))
      else:
        phases.append(tf.zeros([n, size_y, size_x, c], x.dtype))
    rows.append(tf.reshape(tf.stack(phases, axis=3), [n, size_y, size_x * upx, c]))
  y = tf.reshape(tf.stack(rows, axis=2), [n, size_y * upy, size_x * upx, c])
  return y[:, :full_h:downy, :full_w:downx, :]


def _upfirdn_ref_pass(
  x: tf.Tensor,
  f: tf.Tensor,
  up: tuple[int, int],
  down: tuple[int, int],
  pad: tuple[int, int, int, int],
  flip: bool,
) -> tf.Tensor:
  """One 2-D pass of the reference path; f is [kh, kw] of x's dtype."""
  if _impl.in_xla_context() and None not in x.shape[1:3]:
    return _upfirdn_slices_pass(x, f, up, down, pad, flip)
  return _upfirdn_depthwise_pass(x, f, up, down, pad, flip)


def _check_input(x: tf.Tensor) -> None:
  if x.shape.rank != 4:
    raise ValueError(f"upfirdn2d: x must be NHWC (rank 4), got shape {x.shape}")
  if not x.dtype.is_floating:
    raise TypeError(f"upfirdn2d: x must be floating point, got {x.dtype}")


def _filter_tensor(k: Any) -> tf.Tensor:
  k = (
    tf.convert_to_tensor(k, dtype=tf.float32)
    if not isinstance(k, tf.Tensor)
    else tf.cast(k, tf.float32)
  )
  if k.shape.rank not in (1, 2) or not k.shape.is_fully_defined():
    raise ValueError(
      f"upfirdn2d: k must be a 1-D or 2-D filter with a static shape, got shape {k.shape}"
    )
  if k.shape.num_elements() == 0:
    raise ValueError("upfirdn2d: k is empty")
  return k


def _check_output_size(
  x: tf.Tensor,
  k: tf.Tensor,
  up: tuple[int, int],
  down: tuple[int, int],
  pad: tuple[int, int, int, int],
) -> None:
  """Raises if a static spatial size would come out empty."""
  kh, kw = (k.shape[0], k.shape[0]) if k.shape.rank == 1 else k.shape
  for size, u, d, p0, p1, kk, name in (
    (x.shape[2], up[0], down[0], pad[0], pad[1], kw, "width"),
    (x.shape[1], up[1], down[1], pad[2], pad[3], kh, "height"),
  ):
    if size is not None and size * u + p0 + p1 - kk < 0:
      raise ValueError(
        f"upfirdn2d: output {name} would be empty (input {size}, up {u}, "
        f"pads ({p0}, {p1}), filter {kk} taps)"
      )


def _ref_pass(
  x: tf.Tensor,
  k: tf.Tensor,
  up: tuple[int, int],
  down: tuple[int, int],
  pad: tuple[int, int, int, int],
  flip: bool,
  gain: float,
) -> tf.Tensor:
  return _upfirdn_ref_pass(x, tf.cast(k * gain, x.dtype), up, down, pad, flip)


def _custom_pass(
  x: tf.Tensor,
  k: tf.Tensor,
  up: tuple[int, int],
  down: tuple[int, int],
  pad: tuple[int, int, int, int],
  flip: bool,
  gain: float,
) -> tf.Tensor:
  module = _impl.require_library()
  return module.up_fir_dn2d(
    x,
    k,
    upx=up[0],
    upy=up[1],
    downx=down[0],
    downy=down[1],
    padx0=pad[0],
    padx1=pad[1],
    pady0=pad[2],
    pady1=pad[3],
    flip=flip,
    gain=float(gain),
  )


def _separable(
  one_pass,
  x: tf.Tensor,
  k: tf.Tensor,
  up: tuple[int, int],
  down: tuple[int, int],
  pad: tuple[int, int, int, int],
  flip: bool,
  gain: float,
) -> tf.Tensor:
  """A 2-D filter in one pass of `one_pass`; a 1-D one as a horizontal then a vertical pass,
  each with the square root of the gain."""
  if k.shape.rank == 2:
    return one_pass(x, k, up, down, pad, flip, gain)
  root_gain = math.sqrt(gain)
  x = one_pass(
    x, k[tf.newaxis, :], (up[0], 1), (down[0], 1), (pad[0], pad[1], 0, 0), flip, root_gain
  )
  return one_pass(
    x, k[:, tf.newaxis], (1, up[1]), (1, down[1]), (0, 0, pad[2], pad[3]), flip, root_gain
  )


def _case_name(up: tuple[int, int], down: tuple[int, int]) -> str:
  if max(up) > 1:
    return "up"
  if max(down) > 1:
    return "down"
  return "filter"


def upfirdn2d(
  x: Any,
  k: Any,
  up: Scaling = 1,
  down: Scaling = 1,
  pad: Padding = 0,
  flip_filter: bool = False,
  gain: float = 1,
  impl: str = "auto",
) -> tf.Tensor:
  """Upsamples, pads, FIR-filters and downsamples NHWC images.

  Args:
    x: [N, H, W, C] tensor; float32, float16 or bfloat16.
    k: Filter, a 1-D (applied separably) or 2-D array or tensor with a static
      shape, typically from `setup_filter`. It is not normalised here.
    up: Upsampling factor, int or (x, y).
    down: Downsampling factor, int or (x, y).
    pad: Padding, int, (x, y) or (x0, x1, y0, y1); negative values crop.
    flip_filter: False = true convolution (as StyleGAN), True = correlation.
    gain: Multiplies the result (folded into the filter).
    impl: 'auto', 'ref' or 'custom'.

  Returns:
    [N, outH, outW, C] tensor of x's dtype.
  """
  x = tf.convert_to_tensor(x)
  _check_input(x)
  k = _filter_tensor(k)
  up_pair = _parse_scaling(up, "up")
  down_pair = _parse_scaling(down, "down")
  pads = parse_padding(pad)
  _check_output_size(x, k, up_pair, down_pair, pads)
  choice = _impl.choose_impl("upfirdn2d", impl, x.dtype, case=_case_name(up_pair, down_pair))
  one_pass = _custom_pass if choice == "custom" else _ref_pass
  return _separable(one_pass, x, k, up_pair, down_pair, pads, bool(flip_filter), float(gain))


def filter2d(
  x: Any, k: Any = (1, 3, 3, 1), padding: Padding = 0, gain: float = 1, impl: str = "auto"
) -> tf.Tensor:
  """Filters NHWC images with `setup_filter(k)`, keeping their size.

  `padding` is added on top of the size-preserving padding
  (kW // 2, (kW - 1) // 2).
  """
  f = setup_filter(k)
  kh, kw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape
  px0, px1, py0, py1 = parse_padding(padding)
  pads = (px0 + kw // 2, px1 + (kw - 1) // 2, py0 + kh // 2, py1 + (kh - 1) // 2)
  return upfirdn2d(x, f, pad=pads, gain=gain, impl=impl)


def upsample2d(
  x: Any, k: Any = (1, 3, 3, 1), factor: Scaling = 2, gain: float = 1, impl: str = "auto"
) -> tf.Tensor:
  """Upsamples NHWC images by `factor` with filter `setup_filter(k)`.

  Pads ((kW + factor - 1) // 2, (kW - factor) // 2) give exactly factor x
  the size; the gain is multiplied by factor_x * factor_y, as in the official
  stylegan2-ada-pytorch torch_utils/ops/upfirdn2d.py, upsample2d().
  """
  f = setup_filter(k)
  kh, kw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape
  fx, fy = _parse_scaling(factor, "factor")
  pads = ((kw + fx - 1) // 2, (kw - fx) // 2, (kh + fy - 1) // 2, (kh - fy) // 2)
  return upfirdn2d(x, f, up=(fx, fy), pad=pads, gain=gain * fx * fy, impl=impl)


def downsample2d(
  x: Any, k: Any = (1, 3, 3, 1), factor: Scaling = 2, gain: float = 1, impl: str = "auto"
) -> tf.Tensor:
  """Downsamples NHWC images by `factor` after filtering with `setup_filter(k)`.

  Pads ((kW - factor + 1) // 2, (kW - factor) // 2), as in the official
  stylegan2-ada-pytorch torch_utils/ops/upfirdn2d.py, downsample2d().
  """
  f = setup_filter(k)
  kh, kw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape
  fx, fy = _parse_scaling(factor, "factor")
  pads = ((kw - fx + 1) // 2, (kw - fx) // 2, (kh - fy + 1) // 2, (kh - fy) // 2)
  return upfirdn2d(x, f, down=(fx, fy), pad=pads, gain=gain, impl=impl)


# ---------------------------------------------------------------------------
# Gradient of the custom op: the same op with up and down swapped, the filter
# flipped and the pads mirrored (as the official torch_utils/ops/upfirdn2d.py,
# _upfirdn2d_cuda(), computes it). It is again an UpFirDn2D op, so gradients
# of any order follow.
# ---------------------------------------------------------------------------


def _grad_pads(
  in_size: int | None, out_size: int | None, up: int, down: int, p0: int, p1: int, taps: int
) -> tuple[int, int]:
  """Pads of the gradient pass along one axis.

  The right pad depends on the input size only through
  r = (in * up + p0 + p1 - taps) mod down. With an unknown size the largest r
  is used, which yields at most down - 1 extra trailing samples that the
  caller slices off.
  """
  if in_size is not None and out_size is not None:
    right = in_size * up - out_size * down + p0 - up + 1
  else:
    right = taps - p1 + (down - 1) - down - up + 1
  return taps - p0 - 1, right


@tf.RegisterGradient("UpFirDn2D")
def _upfirdn2d_grad(op: tf.Operation, dy: tf.Tensor) -> list[Any]:
  x, k = op.inputs[0], op.inputs[1]
  attr = {
    name: op.get_attr(name)
    for name in ("upx", "upy", "downx", "downy", "padx0", "padx1", "pady0", "pady1", "flip", "gain")
  }
  kh, kw = k.shape.as_list()
  in_h, in_w = x.shape[1], x.shape[2]
  out_h, out_w = op.outputs[0].shape[1], op.outputs[0].shape[2]
  gx0, gx1 = _grad_pads(in_w, out_w, attr["upx"], attr["downx"], attr["padx0"], attr["padx1"], kw)
  gy0, gy1 = _grad_pads(in_h, out_h, attr["upy"], attr["downy"], attr["pady0"], attr["pady1"], kh)
  dx = _impl.require_library().up_fir_dn2d(
    dy,
    k,
    upx=attr["downx"],
    upy=attr["downy"],
    downx=attr["upx"],
    downy=attr["upy"],
    padx0=gx0,
    padx1=gx1,
    pady0=gy0,
    pady1=gy1,
    flip=not attr["flip"],
    gain=attr["gain"],
  )
  if None in (in_h, in_w, out_h, out_w):
    shape = tf.shape(x)
    dx = dx[:, : shape[1], : shape[2], :]
  return [dx, None]
