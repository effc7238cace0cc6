"""Super-resolution benchmark metrics: MATLAB-compatible bicubic resizing, Y channel, PSNR, SSIM.

The SR benchmarks (Set5, Set14, B100, Urban100, Manga109) make the low-resolution input with
MATLAB's `imresize(hr, 1/scale)` (bicubic, antialiased) and score PSNR and SSIM on the BT.601 Y
channel of `rgb2ycbcr` with `scale` pixels cropped from every border. Everything here follows
those MATLAB functions, in float64.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

KERNEL_WIDTH = 4.0  # Keys' cubic is non-zero on (-2, 2).
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic convolution kernel with a = -0.5 (Keys 1981, IEEE Trans. ASSP 29(6), p. 1155)."""
  absx = np.abs(x)
  absx2, absx3 = absx * absx, absx * absx * absx
  near = (1.5 * absx3 - 2.5 * absx2 + 1.0) * (absx <= 1)
  far = (-0.5 * absx3 + 2.5 * absx2 - 4.0 * absx + 2.0) * ((absx > 1) & (absx <= 2))
  return near + far


def matlab_uint8(values: np.ndarray) -> np.ndarray:
  """float -> uint8 as MATLAB converts: round half away from zero, saturate to [0, 255]."""
  return np.clip(np.floor(np.asarray(values, np.float64) + 0.5), 0, 255).astype(np.uint8)


def float01_to_uint8(image: np.ndarray) -> np.ndarray:
  """A float image in [0, 1] (values outside are clipped) as uint8, MATLAB's `im2uint8`."""
  return matlab_uint8(np.clip(np.asarray(image, np.float64), 0.0, 1.0) * 255.0)


def contributions(
  in_length: int, out_length: int, scale: float, antialiasing: bool = True
) -> Tuple[np.ndarray, np.ndarray]:
  """(weights, indices), each [out_length, taps]: output pixel k is the sum over taps of
  weights[k] * input[indices[k]] (0-based indices, mirrored into range).

  MATLAB's `imresize` (Image Processing Toolbox, `contributions`): output pixel x (1-based) sits
  at u = x / scale + 0.5 (1 - 1 / scale) in input coordinates; when shrinking with antialiasing,
  the kernel is stretched to h(t) = scale * cubic(scale * t) and its width to 4 / scale; the taps
  are floor(u - width / 2) + 0 ... ceil(width) + 1, their weights h(u - index) divided by their
  sum; indices outside 1 ... in_length are mirrored (symmetric padding: ..., 2, 1, 1, 2, ...).
  """
  if antialiasing and scale < 1:
    kernel = lambda t: scale * cubic(scale * t)  # noqa: E731
    width = KERNEL_WIDTH / scale
  else:
    kernel, width = cubic, KERNEL_WIDTH
  x = np.arange(1, out_length + 1, dtype=np.float64)
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)
  left = np.floor(u - width / 2.0)
  taps = int(math.ceil(width)) + 2
  indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
  weights = kernel(u[:, None] - indices)
  weights = weights / weights.sum(axis=1, keepdims=True)
  mirror = np.concatenate([np.arange(in_length), np.arange(in_length)[::-1]])
  indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
  return weights, indices


def resize_matrix(
  in_length: int, out_length: int, scale: float, antialiasing: bool = True
) -> np.ndarray:
  """[out_length, in_length] float64: the linear map of `contributions` as one matrix."""
  weights, indices = contributions(in_length, out_length, scale, antialiasing)
  matrix = np.zeros((out_length, in_length), np.float64)
  rows = np.broadcast_to(np.arange(out_length)[:, None], indices.shape)
  np.add.at(matrix, (rows, indices), weights)  # mirrored taps can hit one pixel twice
  return matrix


def _resize_axis(image: np.ndarray, axis: int, matrix: np.ndarray) -> np.ndarray:
  return np.moveaxis(np.tensordot(matrix, image, axes=([1], [axis])), 0, axis)


def _scales_and_shape(
  size: Tuple[int, int], scale, output_shape
) -> Tuple[Tuple[float, float], Tuple[int, int]]:
  if (scale is None) == (output_shape is None):
    raise ValueError("give exactly one of scale and output_shape")
  if scale is not None:
    scales = tuple(float(s) for s in np.broadcast_to(np.asarray(scale, np.float64), (2,)))
    if min(scales) <= 0:
      raise ValueError(f"scale must be positive, got {scale}")
    shape = tuple(int(math.ceil(s * n)) for s, n in zip(scales, size))
    return scales, shape
  shape = tuple(int(n) for n in output_shape)
  if len(shape) != 2 or min(shape) < 1:
    raise ValueError(f"output_shape must be (rows, columns) of positive sizes, got {output_shape}")
  return (shape[0] / size[0], shape[1] / size[1]), shape


def imresize(
  image: np.ndarray,
  scale: Union[float, Sequence[float], None] = None,
  output_shape: Optional[Sequence[int]] = None,
  *,
  antialiasing: bool = True,
) -> np.ndarray:
  """MATLAB's `imresize(image, scale)` / `imresize(image, [rows, cols])` with the default bicubic
  method, on an [H, W] or [H, W, C] array.

  The algorithm documented in MATLAB's Image Processing Toolbox (`imresize`, R2007a and later):
  each of the two image axes is resized by the separable map of `contributions` (Keys cubic,
  a = -0.5, antialiased when shrinking, mirrored borders, weights summing to 1); the axis with the
  smaller scale is resized first (rows first on a tie). A `scale` (scalar or (rows, cols)) gives
  an output of ceil(scale * size); an `output_shape` gives scale = output / input per axis.
  uint8 in gives uint8 out, rounded and saturated after each axis as MATLAB's `imresizemex`
  returns the input's class; float in gives float (same dtype) out, computed in float64.
  """
  image = np.asarray(image)
  if image.ndim not in (2, 3):
    raise ValueError(f"image must be [H, W] or [H, W, C], got shape {image.shape}")
  if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f"image must be uint8 or float, got dtype {image.dtype}")
  scales, shape = _scales_and_shape(image.shape[:2], scale, output_shape)
  is_uint8 = image.dtype == np.uint8
  result = image.astype(np.float64)
  for axis in sorted((0, 1), key=lambda a: scales[a]):  # stable: rows first on a tie
    matrix = resize_matrix(image.shape[axis], shape[axis], scales[axis], antialiasing)
    result = _resize_axis(result, axis, matrix)
    if is_uint8:
      result = matlab_uint8(result).astype(np.float64)
  return result.astype(np.uint8) if is_uint8 else result.astype(image.dtype)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
  """BT.601 luma of RGB as MATLAB's `rgb2ycbcr` on doubles, scaled to [0, 255]: float64
  Y = 16 + 65.481 R + 128.553 G + 24.966 B with R, G, B in [0, 1] (uint8 input is divided by
  255; float input is taken to be in [0, 1]). Not rounded, as the SR benchmark scripts use it."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"image must be [H, W, 3] RGB, got shape {image.shape}")
  rgb = image.astype(np.float64)
  if image.dtype == np.uint8:
    rgb = rgb / 255.0
  return 16.0 + rgb @ np.array([65.481, 128.553, 24.966])


def shave(image: np.ndarray, pixels: int) -> np.ndarray:
  """The image without `pixels` rows and columns at each border."""
  pixels = int(pixels)
  if pixels < 0:
    raise ValueError(f"pixels must be >= 0, got {pixels}")
  height, width = image.shape[:2]
  if 2 * pixels >= min(height, width):
    raise ValueError(f"cannot shave {pixels} pixels per border from a {height}x{width} image")
  return image[pixels : height - pixels, pixels : width - pixels]


def _check_pair(a, b) -> Tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
  return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
  """Peak signal-to-noise ratio in dB, 10 log10(data_range^2 / MSE); inf for identical images."""
  a, b = _check_pair(a, b)
  mse = float(np.mean((a - b) ** 2))
  if mse == 0.0:
    return math.inf
  return 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """1-D Gaussian taps summing to 1; their outer product is MATLAB's `fspecial('gaussian')`."""
  t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  taps = np.exp(-(t * t) / (2.0 * sigma * sigma))
  return taps / taps.sum()


def _filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """Separable 'valid' filtering by the outer product of `taps` (symmetric, so correlation and
  convolution agree)."""
  size = taps.size
  rows = np.lib.stride_tricks.sliding_window_view(image, size, axis=0) @ taps
  return np.lib.stride_tricks.sliding_window_view(rows, size, axis=1) @ taps


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
  """The SSIM map of two [H, W] images (Wang, Bovik, Sheikh, Simoncelli 2004, eq. 13): local
  statistics under an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 L)^2, C2 = (0.03 L)^2,
  'valid' positions only, as the authors' `ssim_index.m` computes it."""
  a, b = _check_pair(a, b)
  if a.ndim != 2:
    raise ValueError(f"SSIM takes [H, W] images (e.g. the Y channel), got shape {a.shape}")
  if min(a.shape) < SSIM_WINDOW:
    raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape}")
  taps = gaussian_window()
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
  var_a = _filter_valid(a * a, taps) - mu_a * mu_a
  var_b = _filter_valid(b * b, taps) - mu_b * mu_b
  cov = _filter_valid(a * b, taps) - mu_a * mu_b
  numerator = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
  denominator = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
  return numerator / denominator


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
  """Mean SSIM of two [H, W] images in [0, data_range] (see `ssim_map`)."""
  return float(np.mean(ssim_map(a, b, data_range)))


def sr_scores(sr_uint8: np.ndarray, hr_uint8: np.ndarray, scale: int) -> Dict[str, float]:
  """{"psnr", "ssim"} of a super-resolved RGB uint8 image against its ground truth, on the Y
  channel with `scale` pixels shaved per border (the SR benchmark protocol)."""
  sr_uint8, hr_uint8 = np.asarray(sr_uint8), np.asarray(hr_uint8)
  if sr_uint8.shape != hr_uint8.shape:
    raise ValueError(f"images differ in shape: {sr_uint8.shape} and {hr_uint8.shape}")
  if sr_uint8.dtype != np.uint8 or hr_uint8.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {sr_uint8.dtype} and {hr_uint8.dtype}")
  sr_y = shave(rgb_to_y(sr_uint8), scale)
  hr_y = shave(rgb_to_y(hr_uint8), scale)
  return {"psnr": psnr(sr_y, hr_y), "ssim": ssim(sr_y, hr_y)}
