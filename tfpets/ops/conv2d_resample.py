"""2-D convolution combined with up- or downsampling, NHWC.

The official stylegan2-ada-pytorch torch_utils/ops/conv2d_resample.py,
conv2d_resample(), and the TF1 dnnlib/tflib/ops/upfirdn_2d.py,
upsample_conv_2d() and conv_downsample_2d(), do the same in NCHW.

The weight is a Keras-layout kernel `[kh, kw, in, out]` used as a correlation
kernel on the (virtually) resampled image, which is the TF1
`upsample_conv_2d` orientation: TF1 pickle weights load unflipped.

`padding` is the padding the plain convolution would use (PyTorch
`conv2d_resample` semantics); the default, kernel_size // 2, reproduces the
official paddings exactly:

* up 2, 3x3: `conv2d_transpose` stride 2 VALID (2H + 1), then the filter
  with pads (1, 1) and gain 4 -> 2H;
* down 2, 3x3: the filter with pads (2, 2) -> H + 1, then a stride-2 VALID
  convolution -> H / 2;
* 1x1 + up: convolution, then `upsample2d` (pads (2, 1));
* 1x1 + down: `downsample2d` (pads (1, 1)), then convolution.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from tfpets.ops import upfirdn2d as upfirdn2d_lib


def _kernel_shape(w: tf.Tensor) -> tuple[int, int]:
  if w.shape.rank != 4 or not w.shape[:2].is_fully_defined():
    raise ValueError(
      f"conv2d_resample: w must be [kh, kw, in, out] with static kh, kw, got shape {w.shape}"
    )
  return int(w.shape[0]), int(w.shape[1])


def _plain_conv(
  x: tf.Tensor, w: tf.Tensor, stride: int, pads: tuple[int, int, int, int]
) -> tf.Tensor:
  if min(pads) < 0:
    raise ValueError(f"conv2d_resample: negative padding {pads}")
  kh, kw = _kernel_shape(w)
  px0, px1, py0, py1 = pads
  if stride == 1 and kh * kw > 1 and max(py0, py1) < kh and max(px0, px1) < kw:
    return _stride1_conv(x, w, pads)
  if stride > 1 and max(pads) == 0:
    return _strided_conv(x, w, stride)
  return tf.nn.conv2d(x, w, [1, stride, stride, 1], _padding_arg(pads))


def _padding_arg(pads: tuple[int, int, int, int]) -> Any:
  px0, px1, py0, py1 = pads
  if max(pads) == 0:
    return "VALID"
  return [[0, 0], [py0, py1], [px0, px1], [0, 0]]


def _rotated(w: tf.Tensor) -> tf.Tensor:
  """w turned by 180 degrees, in/out axes swapped: correlating with it runs
  a correlation with w backwards (transposed convolution, input gradient).

  tf.reverse rather than w[::-1, ::-1]: TensorFlow's CPU kernel for
  negative-stride slices is far slower, and G and D rotate every 3x3 kernel
  once per step (benchmarks/RESULTS.md, section 3)."""
  return tf.transpose(tf.reverse(w, [0, 1]), [0, 1, 3, 2])


def _weight_gradient(x: tf.Tensor, dy: tf.Tensor, kh: int, kw: int, stride: int = 1) -> tf.Tensor:
  """Weight gradient of the VALID correlation of x with a [kh, kw, in, out]
  kernel at `stride`: one [in, N*H*W] x [N*H*W, out] matmul per kernel tap.

  On CPU the matmuls run faster than both a forward convolution of the
  transposed tensors and TensorFlow's Conv2DBackpropFilter at StyleGAN's
  shapes (benchmarks/RESULTS.md, section 3).
  """
  height, width = tf.shape(dy)[1], tf.shape(dy)[2]
  in_channels, out_channels = tf.shape(x)[3], tf.shape(dy)[3]
  dy_rows = tf.reshape(dy, [-1, out_channels])
  phases = _phases(x, stride, height + (kh - 1) // stride, width + (kw - 1) // stride)

  def tap(i, j):
    (a, p), (b, q) = divmod(i, stride), divmod(j, stride)
    window = phases[p, q, :, a : a + height, b : b + width]
    return tf.matmul(tf.reshape(window, [-1, in_channels]), dy_rows, transpose_a=True)

  taps = [tap(i, j) for i in range(kh) for j in range(kw)]
  return tf.reshape(tf.stack(taps), [kh, kw, in_channels, out_channels])


def _phases(x: tf.Tensor, stride: int, rows: int, cols: int) -> tf.Tensor:
  """[stride, stride, N, rows, cols, C]: [p, q, :, a, b] = x[:, stride * a + p,
  stride * b + q], zero past x's edge.

  Strided taps then become stride-1 windows, because TensorFlow's CPU
  kernel for strided slices is far slower than this split plus stride-1
  windows (benchmarks/RESULTS.md, section 3)."""
  if stride == 1:
    return x[tf.newaxis, tf.newaxis]
  shape = tf.shape(x)
  x = x[:, : stride * rows, : stride * cols]
  x = tf.pad(
    x,
    [
      [0, 0],
      [0, tf.maximum(stride * rows - shape[1], 0)],
      [0, tf.maximum(stride * cols - shape[2], 0)],
      [0, 0],
    ],
  )
  x = tf.reshape(x, [shape[0], rows, stride, cols, stride, shape[3]])
  return tf.transpose(x, [2, 4, 0, 1, 3, 5])


def _stride1_conv(x: tf.Tensor, w: tf.Tensor, pads: tuple[int, int, int, int]) -> tf.Tensor:
  """Stride-1 convolution whose gradients are a convolution and matmuls.

  Input gradient: the output gradient correlated with the kernel rotated by
  180 degrees, in/out axes swapped, padded by (k - 1 - pad), because on CPU
  TensorFlow's forward convolution is at least as fast as its dedicated
  input-gradient kernel. Weight gradient: `_weight_gradient`. XLA lowers
  both the same way, and higher-order gradients (R1) differentiate through
  this function.
  """
  kh, kw = _kernel_shape(w)
  px0, px1, py0, py1 = pads

  @tf.custom_gradient
  def conv(x, w):
    y = tf.nn.conv2d(x, w, 1, _padding_arg(pads))

    def grad(dy):
      dx = _stride1_conv(dy, _rotated(w), (kw - 1 - px0, kw - 1 - px1, kh - 1 - py0, kh - 1 - py1))
      x_padded = tf.pad(x, [[0, 0], [py0, py1], [px0, px1], [0, 0]])
      return dx, _weight_gradient(x_padded, dy, kh, kw)

    return y, grad

  return conv(x, w)


def _strided_conv(x: tf.Tensor, w: tf.Tensor, stride: int) -> tf.Tensor:
  """VALID convolution at `stride` (D's downsampling layers) whose weight
  gradient is `_weight_gradient`; the input gradient is TensorFlow's."""
  kh, kw = _kernel_shape(w)

  @tf.custom_gradient
  def conv(x, w):
    y = tf.nn.conv2d(x, w, stride, "VALID")

    def grad(dy):
      dx = tf.nn.conv2d_transpose(dy, w, tf.shape(x), stride, "VALID")
      return dx, _weight_gradient(x, dy, kh, kw, stride)

    return y, grad

  return conv(x, w)


def _transposed_conv(x: tf.Tensor, w: tf.Tensor, factor: int) -> tf.Tensor:
  """Full transposed convolution: (H - 1) * factor + kh rows.

  Equal to correlating the zero-upsampled, (k - 1)-padded image with w, so
  dy's row factor * h + kh - 1 - i meets x's row h through tap i: the weight
  gradient is `_weight_gradient` of dy against x, rotated back."""
  kh, kw = _kernel_shape(w)

  @tf.custom_gradient
  def conv(x, w):
    shape = tf.shape(x)
    output_shape = tf.stack(
      [shape[0], (shape[1] - 1) * factor + kh, (shape[2] - 1) * factor + kw, tf.shape(w)[3]]
    )
    # conv2d_transpose scatters with its filter ([kh, kw, out, in]);
    # rotating w makes that the correlation above.
    y = tf.nn.conv2d_transpose(x, _rotated(w), output_shape, factor, "VALID")

    def grad(dy):
      dx = tf.nn.conv2d(dy, _rotated(w), factor, "VALID")
      return dx, _rotated(_weight_gradient(dy, x, kh, kw, factor))

    return y, grad

  y = conv(x, w)
  height = None if x.shape[1] is None else (x.shape[1] - 1) * factor + kh
  width = None if x.shape[2] is None else (x.shape[2] - 1) * factor + kw
  return tf.ensure_shape(y, [x.shape[0], height, width, w.shape[3]])


def conv2d_resample(
  x: Any,
  w: Any,
  k: Any = (1, 3, 3, 1),
  up: int = 1,
  down: int = 1,
  padding: int | tuple[int, ...] | None = None,
  impl: str = "auto",
) -> tf.Tensor:
  """Convolution with optional 'up'/'down' resampling through filter `k`.

  Args:
    x: [N, H, W, in] tensor.
    w: [kh, kw, in, out] kernel (cast to x's dtype).
    k: Resampling filter taps (normalised by `setup_filter`).
    up: Integer upsampling factor.
    down: Integer downsampling factor (not together with up).
    padding: Padding of the equivalent plain convolution: int, (x, y) or
      (x0, x1, y0, y1); default (kw // 2, (kw - 1) // 2, kh // 2, ...),
      i.e. 'same' size for odd kernels and the exact StyleGAN paddings.
    impl: Implementation of the upfirdn2d steps ('auto', 'ref', 'custom').

  Returns:
    [N, H * up / down, W * up / down, out] for the default padding.
  """
  x = tf.convert_to_tensor(x)
  w = tf.cast(tf.convert_to_tensor(w), x.dtype)
  kh, kw = _kernel_shape(w)
  if int(up) != up or int(down) != down or up < 1 or down < 1:
    raise ValueError(f"conv2d_resample: up and down must be positive ints, got {up}, {down}")
  if up > 1 and down > 1:
    raise ValueError("conv2d_resample: up and down cannot both exceed 1")
  if padding is None:
    padding = (kw // 2, (kw - 1) // 2, kh // 2, (kh - 1) // 2)
  px0, px1, py0, py1 = upfirdn2d_lib.parse_padding(padding)
  f = upfirdn2d_lib.setup_filter(k)
  fh, fw = (f.shape[0], f.shape[0]) if f.ndim == 1 else f.shape

  if up > 1:
    px0 += (fw + up - 1) // 2
    px1 += (fw - up) // 2
    py0 += (fh + up - 1) // 2
    py1 += (fh - up) // 2
    if kw == 1 and kh == 1:
      y = _plain_conv(x, w, 1, (0, 0, 0, 0))
      return upfirdn2d_lib.upfirdn2d(y, f, up=up, pad=(px0, px1, py0, py1), gain=up * up, impl=impl)
    # The transposed convolution supplies kw - 1 zeros on the left and
    # kw - up on the right of the upsampled image; the filter adds the rest.
    y = _transposed_conv(x, w, up)
    pads = (px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up))
    return upfirdn2d_lib.upfirdn2d(y, f, pad=pads, gain=up * up, impl=impl)

  if down > 1:
    px0 += (fw - down + 1) // 2
    px1 += (fw - down) // 2
    py0 += (fh - down + 1) // 2
    py1 += (fh - down) // 2
    if kw == 1 and kh == 1:
      y = upfirdn2d_lib.upfirdn2d(x, f, down=down, pad=(px0, px1, py0, py1), impl=impl)
      return _plain_conv(y, w, 1, (0, 0, 0, 0))
    y = upfirdn2d_lib.upfirdn2d(x, f, pad=(px0, px1, py0, py1), impl=impl)
    return _plain_conv(y, w, down, (0, 0, 0, 0))

  return _plain_conv(x, w, 1, (px0, px1, py0, py1))
