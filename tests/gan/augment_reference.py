"""An independent NumPy (float64) implementation of the ADA augmentation steps, for the tests.

Written from the description of the official pipeline (Karras et al. 2020, Appendix B, and the
semantics of `AugmentPipe` in stylegan2-ada-pytorch): matrices are built as forward transforms and
inverted with `np.linalg.inv`, the hue rotation is a matrix exponential, the warp follows the
official steps literally (a margin computed per batch, `affine_grid` + `grid_sample` in
normalised coordinates with align_corners=False), the filter bank is built by the recursive
band-splitting of the paper. Images are NHWC. Nothing here imports tfpets.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

SYM2 = np.array([-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025])
SYM6 = np.array(
  [
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
  ]
)


# --- matrices -----------------------------------------------------------------------------------


def translate(tx, ty) -> np.ndarray:
  tx, ty = np.broadcast_arrays(np.asarray(tx, float), np.asarray(ty, float))
  m = np.tile(np.eye(3), tx.shape + (1, 1))
  m[..., 0, 2], m[..., 1, 2] = tx, ty
  return m


def scale(sx, sy) -> np.ndarray:
  sx, sy = np.broadcast_arrays(np.asarray(sx, float), np.asarray(sy, float))
  m = np.tile(np.eye(3), sx.shape + (1, 1))
  m[..., 0, 0], m[..., 1, 1] = sx, sy
  return m


def rotate(theta) -> np.ndarray:
  """Counter-clockwise in (x right, y down) pixel axes means [[cos, -sin], [sin, cos]]."""
  theta = np.asarray(theta, float)
  m = np.tile(np.eye(3), theta.shape + (1, 1))
  m[..., 0, 0], m[..., 0, 1] = np.cos(theta), -np.sin(theta)
  m[..., 1, 0], m[..., 1, 1] = np.sin(theta), np.cos(theta)
  return m


def geometric_matrix(params: dict, width: int, height: int) -> np.ndarray:
  """Official order, each step right-multiplying the inverse of a forward transform."""
  inv = np.linalg.inv
  n = len(next(iter(params.values())))
  g = np.tile(np.eye(3), (n, 1, 1))
  if "xflip" in params:
    g = g @ inv(scale(1 - 2 * params["xflip"], 1))
  if "rotate90" in params:
    g = g @ inv(rotate(-np.pi / 2 * params["rotate90"]))
  if "xint" in params:
    t = params["xint"]
    g = g @ inv(translate(np.round(t[:, 0] * width), np.round(t[:, 1] * height)))
  if "scale" in params:
    g = g @ inv(scale(params["scale"], params["scale"]))
  if "rotate_pre" in params:
    g = g @ inv(rotate(-params["rotate_pre"]))
  if "aniso" in params:
    g = g @ inv(scale(params["aniso"], 1 / params["aniso"]))
  if "rotate_post" in params:
    g = g @ inv(rotate(-params["rotate_post"]))
  if "xfrac" in params:
    t = params["xfrac"]
    g = g @ inv(translate(t[:, 0] * width, t[:, 1] * height))
  return g


def color_matrix(params: dict) -> np.ndarray:
  n = len(next(iter(params.values())))
  c = np.tile(np.eye(4), (n, 1, 1))
  luma = np.array([1.0, 1.0, 1.0]) / np.sqrt(3)
  cross = np.array([[0, -luma[2], luma[1]], [luma[2], 0, -luma[0]], [-luma[1], luma[0], 0]])
  for k in range(n):
    steps = []
    if "brightness" in params:
      m = np.eye(4)
      m[:3, 3] = params["brightness"][k]
      steps.append(m)
    if "contrast" in params:
      steps.append(np.diag([params["contrast"][k]] * 3 + [1.0]))
    if "lumaflip" in params:
      m = np.eye(4)
      m[:3, :3] -= 2 * np.outer(luma, luma) * params["lumaflip"][k]
      steps.append(m)
    if "hue" in params:
      m = np.eye(4)
      m[:3, :3] = scipy.linalg.expm(params["hue"][k] * cross)
      steps.append(m)
    if "saturation" in params:
      m = np.eye(4)
      proj = np.outer(luma, luma)
      m[:3, :3] = proj + (np.eye(3) - proj) * params["saturation"][k]
      steps.append(m)
    for m in steps:
      c[k] = m @ c[k]
  return c


# --- resampling ---------------------------------------------------------------------------------


def upfirdn_axis(x, taps, axis, up=1, down=1, pad=(0, 0), flip=False, gain=1.0) -> np.ndarray:
  """1-D upfirdn along one axis: zero-insert, pad (negative crops), filter, decimate."""
  x = np.moveaxis(np.asarray(x, float), axis, -1)
  z = np.zeros(x.shape[:-1] + (x.shape[-1] * up,))
  z[..., ::up] = x
  z = np.pad(z, [(0, 0)] * (z.ndim - 1) + [(max(pad[0], 0), max(pad[1], 0))])
  z = z[..., max(-pad[0], 0) : z.shape[-1] - max(-pad[1], 0)]
  k = np.asarray(taps, float) * gain
  if not flip:
    k = k[::-1]  # convolution = correlation with the reversed filter
  windows = np.lib.stride_tricks.sliding_window_view(z, k.size, axis=-1)
  out = windows @ k
  return np.moveaxis(out[..., ::down], -1, axis)


def upfirdn_separable(x, taps, up=1, down=1, pad=(0, 0, 0, 0), flip=False, gain=1.0):
  """x along W with pads (pad[0], pad[1]), then along H with (pad[2], pad[3]); NHWC."""
  root = np.sqrt(gain)
  x = upfirdn_axis(x, taps, 2, up, down, pad[:2], flip, root)
  return upfirdn_axis(x, taps, 1, up, down, pad[2:], flip, root)


def bilinear_sample(images, x, y) -> np.ndarray:
  """images [N, H, W, C] at positions x, y [N, Ho, Wo] (pixel indices), zero outside."""
  n, h, w, c = images.shape
  out = np.zeros(x.shape + (c,))
  for b in range(n):
    for i in range(x.shape[1]):
      for j in range(x.shape[2]):
        px, py = x[b, i, j], y[b, i, j]
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
          if 0 <= xi < w and 0 <= yi < h:
            weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
            out[b, i, j] += weight * images[b, yi, xi]
  return out


def bilinear_operator(height, width, x, y) -> np.ndarray:
  """The dense matrix of `bilinear_sample` for one image: [Ho * Wo, H * W]."""
  eye = np.eye(height * width).reshape(height * width, height, width, 1)
  columns = [bilinear_sample(eye[k : k + 1], x[:1], y[:1]).ravel() for k in range(height * width)]
  return np.stack(columns, axis=1)


def affine_grid(theta, height, width) -> np.ndarray:
  """torch affine_grid, align_corners=False: theta [N, 2, 3] -> [N, H, W, (x, y)]."""
  xs = (2 * np.arange(width) + 1) / width - 1
  ys = (2 * np.arange(height) + 1) / height - 1
  base = np.stack(np.broadcast_arrays(xs[None, :], ys[:, None], 1.0), axis=-1)  # [H, W, 3]
  return np.einsum("hwk,nik->nhwi", base, theta)


def grid_sample(images, grid) -> np.ndarray:
  """torch grid_sample, bilinear, zeros, align_corners=False (grid in [-1, 1] units)."""
  h, w = images.shape[1:3]
  x = ((grid[..., 0] + 1) * w - 1) / 2
  y = ((grid[..., 1] + 1) * h - 1) / 2
  return bilinear_sample(images, x, y)


def warp(images, g_inv) -> np.ndarray:
  """The official geometric execution, step by step."""
  n, h, w, c = images.shape
  hz_pad = SYM6.size // 4
  cx, cy = (w - 1) / 2, (h - 1) / 2
  corners = np.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]]).T
  pts = g_inv @ corners  # [N, 3, 4]
  margin = np.array(
    [(-pts[:, 0]).max(), (-pts[:, 1]).max(), pts[:, 0].max(), pts[:, 1].max()]
  ) + np.array([2 * hz_pad - cx, 2 * hz_pad - cy] * 2)
  margin = np.minimum(np.maximum(margin, 0), [w - 1, h - 1] * 2)
  mx0, my0, mx1, my1 = np.ceil(margin).astype(int)

  x = np.pad(images, ((0, 0), (my0, my1), (mx0, mx1), (0, 0)), mode="reflect")
  g = translate((mx0 - mx1) / 2, (my0 - my1) / 2) @ g_inv

  taps = SYM6 / SYM6.sum()
  k = taps.size
  x = upfirdn_separable(x, taps, up=2, pad=((k + 1) // 2, (k - 2) // 2) * 2, gain=4)
  g = scale(2, 2) @ g @ np.linalg.inv(scale(2, 2))
  g = translate(-0.5, -0.5) @ g @ np.linalg.inv(translate(-0.5, -0.5))

  ho, wo = (h + 2 * hz_pad) * 2, (w + 2 * hz_pad) * 2
  hi, wi = x.shape[1:3]
  g = scale(2 / wi, 2 / hi) @ g @ np.linalg.inv(scale(2 / wo, 2 / ho))
  x = grid_sample(x, affine_grid(g[:, :2, :], ho, wo))

  crop = ((k - 1) // 2 - 2 * hz_pad, (k - 2) // 2 - 2 * hz_pad)
  return upfirdn_separable(x, taps, down=2, pad=crop * 2, flip=True)


# --- colour, filtering, corruption ------------------------------------------------------------


def apply_color(images, c) -> np.ndarray:
  if images.shape[-1] == 3:
    return np.einsum("nij,nhwj->nhwi", c[:, :3, :3], images) + c[:, None, None, :3, 3]
  mean = c[:, :3, :].mean(axis=1)
  return images * mean[:, :3].sum(axis=1)[:, None, None, None] + mean[:, None, None, 3:]


def filter_bank() -> np.ndarray:
  """Recursive band splitting: at each level the bands so far are stretched 2x (z -> z^2) and
  low-passed, and the new finest band is the high-pass half-band filter."""
  lo = SYM2
  hi = SYM2 * np.array([1, -1, 1, -1])
  lo2 = np.convolve(lo, lo[::-1]) / 2
  hi2 = np.convolve(hi, hi[::-1]) / 2
  bank = np.zeros((4, 1))
  bank[0, 0] = 1
  for level in range(1, 4):
    stretched = np.zeros((4, 2 * bank.shape[1] - 1))
    stretched[:, ::2] = bank
    bank = np.stack([np.convolve(row, lo2) for row in stretched])
    start = (bank.shape[1] - hi2.size) // 2
    bank[level, start : start + hi2.size] += hi2
  return bank


def imgfilter_gains(t) -> np.ndarray:
  power = np.array([10, 1, 1, 1]) / 13
  g = np.ones_like(t)
  for i in range(t.shape[1]):
    step = np.ones_like(t)
    step[:, i] = t[:, i]
    g *= step / np.sqrt((power * step**2).sum(axis=1, keepdims=True))
  return g


def imgfilter(images, gains) -> np.ndarray:
  bank = filter_bank()
  half = bank.shape[1] // 2
  x = np.pad(images, ((0, 0), (half, half), (half, half), (0, 0)), mode="reflect")
  out = np.empty_like(images)
  for b in range(images.shape[0]):
    taps = gains[b] @ bank
    y = upfirdn_axis(x[b : b + 1], taps, 2, flip=True)
    out[b] = upfirdn_axis(y, taps, 1, flip=True)[0]
  return out


def add_noise(images, sigma, noise) -> np.ndarray:
  return images + noise * sigma[:, None, None, None]


def cutout(images, size, center) -> np.ndarray:
  n, h, w, _ = images.shape
  out = images.copy()
  for b in range(n):
    for i in range(h):
      for j in range(w):
        inside_x = abs((j + 0.5) / w - center[b, 0]) < size[b] / 2
        inside_y = abs((i + 0.5) / h - center[b, 1]) < size[b] / 2
        if inside_x and inside_y:
          out[b, i, j] = 0
  return out


def pipeline(images, params: dict) -> np.ndarray:
  """All steps in the official order for realised parameters (keys as tfpets' sample_params)."""
  params = {k: np.asarray(v, float) for k, v in params.items()}
  n, h, w, c = images.shape
  geom_keys = ("xflip", "rotate90", "xint", "scale", "rotate_pre", "aniso", "rotate_post", "xfrac")
  color_keys = ("brightness", "contrast", "lumaflip", "hue", "saturation")
  x = np.asarray(images, float)
  geom = {k: params[k] for k in geom_keys if k in params}
  if geom:
    x = warp(x, geometric_matrix(geom, w, h))
  color = {k: params[k] for k in color_keys if k in params}
  if c == 1:
    color = {k: v for k, v in color.items() if k not in ("hue", "saturation")}
  if color:
    x = apply_color(x, color_matrix(color))
  if "imgfilter" in params:
    x = imgfilter(x, imgfilter_gains(params["imgfilter"]))
  if "noise_sigma" in params:
    x = add_noise(x, params["noise_sigma"], params["noise"])
  if "cutout_size" in params:
    x = cutout(x, params["cutout_size"], params["cutout_center"])
  return x
