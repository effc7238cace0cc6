"""An independent NumPy forward pass of StyleGAN2-ADA, written from the official
networks.py, upfirdn2d.py and bias_act.py of stylegan2-ada-pytorch and the TF1 variable layout.

It works on TF1-named variables in TF1 layouts (NCHW activations, `[k, k, in, out]` kernels, the
modulation bias stored minus 1, `Dense0` flattened NCHW) and follows the TF1 formulation: weights
scaled by their runtime coefficient, `upsample_conv_2d` as a stride-2 transposed convolution of the
spatially flipped kernel followed by the FIR filter, resnet branches merged as (x + t) / sqrt(2).
Everything runs in float64. Nothing here imports tfpets.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

SQRT2 = math.sqrt(2.0)


def fir_filter(taps=(1, 3, 3, 1)) -> np.ndarray:
  taps = np.asarray(taps, np.float64)
  f = np.outer(taps, taps) if taps.ndim == 1 else taps
  return f / f.sum()


def upfirdn(
  x: np.ndarray, f: np.ndarray, up: int = 1, down: int = 1, pad=(0, 0, 0, 0), gain: float = 1.0
) -> np.ndarray:
  """Zero-insert, pad (x0, x1, y0, y1), true 2-D convolution with f, decimate; x is NCHW."""
  n, c, h, w = x.shape
  u = np.zeros([n, c, h * up, w * up])
  u[:, :, ::up, ::up] = x
  x0, x1, y0, y1 = pad
  u = np.pad(u, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
  u = u[:, :, max(-y0, 0) : u.shape[2] - max(-y1, 0), max(-x0, 0) : u.shape[3] - max(-x1, 0)]
  g = f[::-1, ::-1] * gain  # convolution = correlation with the flipped filter
  kh, kw = g.shape
  oh, ow = u.shape[2] - kh + 1, u.shape[3] - kw + 1
  out = np.zeros([n, c, oh, ow])
  for a in range(kh):
    for b in range(kw):
      out += g[a, b] * u[:, :, a : a + oh, b : b + ow]
  return out[:, :, ::down, ::down]


def conv2d(x: np.ndarray, w: np.ndarray, pad: int = 0, stride: int = 1) -> np.ndarray:
  """Correlation of NCHW x with a [kh, kw, in, out] kernel."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  kh, kw = w.shape[:2]
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
  windows = windows[:, :, ::stride, ::stride]
  return np.einsum("nihwab,abio->nohw", windows, w)


def conv_transpose_stride2(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """TF1 upsample_conv_2d's conv2d_transpose: y[2i + a, 2j + b] += x[i, j] w[K-1-a, K-1-b]."""
  n, _, h, wd = x.shape
  kh, kw, _, out = w.shape
  y = np.zeros([n, out, (h - 1) * 2 + kh, (wd - 1) * 2 + kw])
  for a in range(kh):
    for b in range(kw):
      y[:, :, a : a + 2 * h - 1 : 2, b : b + 2 * wd - 1 : 2] += np.einsum(
        "nihw,io->nohw", x, w[kh - 1 - a, kw - 1 - b]
      )
  return y


def upsample_conv(x, w, f):
  """TF1 upsample_conv_2d, factor 2: p = (taps - 2) - (k - 1); pads ((p+1)//2 + 1, p//2 + 1)."""
  p = (f.shape[0] - 2) - (w.shape[0] - 1)
  pad0, pad1 = (p + 1) // 2 + 1, p // 2 + 1
  return upfirdn(conv_transpose_stride2(x, w), f, pad=(pad0, pad1, pad0, pad1), gain=4)


def conv_downsample(x, w, f):
  """TF1 conv_downsample_2d, factor 2: p = (taps - 2) + (k - 1); pads ((p+1)//2, p//2)."""
  p = (f.shape[0] - 2) + (w.shape[0] - 1)
  y = upfirdn(x, f, pad=((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
  return conv2d(y, w, stride=2)


def upsample(x, f):
  p = f.shape[0] - 2
  return upfirdn(x, f, up=2, pad=((p + 1) // 2 + 1, p // 2, (p + 1) // 2 + 1, p // 2), gain=4)


def downsample(x, f):
  p = f.shape[0] - 2
  return upfirdn(x, f, down=2, pad=((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))


def bias_act(x, b=None, act="linear", clamp=None, channel_axis=1):
  if b is not None:
    shape = [1] * x.ndim
    shape[channel_axis] = -1
    x = x + b.reshape(shape)
  if act == "lrelu":
    x = np.where(x > 0, x, 0.2 * x) * SQRT2
  if clamp is not None:
    x = np.clip(x, -clamp, clamp)
  return x


def normalize_2nd_moment(x):
  return x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + 1e-8)


class Params:
  """TF-named float64 parameters with a readable KeyError."""

  def __init__(self, params: Mapping[str, np.ndarray]):
    self._params = {k: np.asarray(v, np.float64) for k, v in params.items()}

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._params:
      raise KeyError(f"reference needs TF variable {name}")
    return self._params[name]

  def __contains__(self, name: str) -> bool:
    return name in self._params


def dense(p: Params, scope: str, x, lrmul=1.0, act="linear"):
  w = p[f"{scope}/weight"]
  y = x @ (w * (lrmul / math.sqrt(w.shape[0])))
  return bias_act(y, p[f"{scope}/bias"] * lrmul, act)


def conv_weight(p: Params, scope: str) -> np.ndarray:
  w = p[f"{scope}/weight"]
  return w / math.sqrt(np.prod(w.shape[:3]))


def modulated_conv(p: Params, scope: str, x, w_latent, demodulate=True, up=False, f=None):
  w = conv_weight(p, scope)
  s = w_latent @ (p[f"{scope}/mod_weight"] / math.sqrt(w_latent.shape[1]))
  s = s + p[f"{scope}/mod_bias"] + 1
  x = x * s[:, :, None, None]
  if up:
    x = upsample_conv(x, w, f)
  else:
    x = conv2d(x, w, pad=w.shape[0] // 2)
  if demodulate:
    ww = w[None] * s[:, None, None, :, None]  # [B, k, k, I, O]
    d = 1 / np.sqrt(np.sum(ww**2, axis=(1, 2, 3)) + 1e-8)
    x = x * d[:, :, None, None]
  return x


def nf(cfg: Mapping[str, Any], stage: int) -> int:
  return int(np.clip(int(cfg["fmap_base"] / 2.0**stage), 1, cfg["fmap_max"]))


def mapping(p: Params, cfg: Mapping[str, Any], z, c=None, prefix="mapping/"):
  x = normalize_2nd_moment(z)
  if cfg.get("label_size", 0):
    y = normalize_2nd_moment(dense(p, f"{prefix}LabelEmbed", c))
    x = np.concatenate([x, y], axis=1)
  for i in range(cfg.get("mapping_layers", 8)):
    x = dense(p, f"{prefix}Dense{i}", x, lrmul=0.01, act="lrelu")
  return x


def generator(
  p: Params, cfg: Mapping[str, Any], z, c=None, truncation_psi=1.0, truncation_cutoff=None
) -> np.ndarray:
  """TF1 G_main with randomize_noise=False (stored noise); returns NHWC images."""
  log2 = int(np.log2(cfg["resolution"]))
  num_ws = 2 * log2 - 2
  w = mapping(p, cfg, z, c)
  ws = np.repeat(w[:, None, :], num_ws, axis=1)
  if truncation_psi != 1:
    layers = np.arange(num_ws)[None, :, None]
    psi = np.where(
      layers < (num_ws if truncation_cutoff is None else truncation_cutoff), truncation_psi, 1.0
    )
    avg = p["dlatent_avg"]
    ws = avg + (ws - avg) * psi
  return synthesis(p, cfg, ws).transpose(0, 2, 3, 1)


def synthesis(p: Params, cfg: Mapping[str, Any], ws, prefix="synthesis/"):
  f = fir_filter(cfg.get("resample_kernel", (1, 3, 3, 1)))
  arch = cfg.get("architecture", "skip")
  clamp = cfg.get("conv_clamp")
  log2 = int(np.log2(cfg["resolution"]))

  def layer(x, idx, scope, up=False):
    x = modulated_conv(p, f"{prefix}{scope}", x, ws[:, idx], up=up, f=f)
    noise = p[f"{prefix}noise{idx}"][0, 0]
    x = x + noise * p[f"{prefix}{scope}/noise_strength"]
    return bias_act(x, p[f"{prefix}{scope}/bias"], "lrelu", clamp)

  def torgb(x, y, res):
    scope = f"{prefix}{2**res}x{2**res}/ToRGB"
    t = modulated_conv(p, scope, x, ws[:, res * 2 - 3], demodulate=False)
    t = bias_act(t, p[f"{scope}/bias"], clamp=clamp)
    return t if y is None else t + y

  const = p[f"{prefix}4x4/Const/const"]
  x = np.repeat(const, ws.shape[0], axis=0)
  x = layer(x, 0, "4x4/Conv")
  y = torgb(x, None, 2) if arch == "skip" else None
  for res in range(3, log2 + 1):
    scope = f"{2**res}x{2**res}"
    t = x
    x = layer(x, res * 2 - 5, f"{scope}/Conv0_up", up=True)
    x = layer(x, res * 2 - 4, f"{scope}/Conv1")
    if arch == "resnet":
      t = upsample_conv(t, conv_weight(p, f"{prefix}{scope}/Skip"), f)
      x = (x + t) / SQRT2
    if arch == "skip":
      y = upsample(y, f)
    if arch == "skip" or res == log2:
      y = torgb(x, y, res)
  return y


def minibatch_stddev(x, group_size, num_features=1):
  n, c, h, w = x.shape
  g = n if group_size is None else min(group_size, n)
  y = x.reshape(g, -1, num_features, c // num_features, h, w)
  y = y - y.mean(axis=0)
  y = np.sqrt(np.mean(y**2, axis=0) + 1e-8)
  y = y.mean(axis=(2, 3, 4)).reshape(-1, num_features, 1, 1)
  y = np.tile(y, [g, 1, h, w])
  return np.concatenate([x, y], axis=1)


def discriminator(p: Params, cfg: Mapping[str, Any], images_nhwc, c=None) -> np.ndarray:
  """TF1 D_main on NHWC images; returns [B, 1] scores."""
  f = fir_filter(cfg.get("resample_kernel", (1, 3, 3, 1)))
  arch = cfg.get("architecture", "resnet")
  clamp = cfg.get("conv_clamp")
  log2 = int(np.log2(cfg["resolution"]))

  def conv(x, scope, act="lrelu", down=False, bias=True, use_clamp=True):
    w = conv_weight(p, scope)
    x = conv_downsample(x, w, f) if down else conv2d(x, w, pad=w.shape[0] // 2)
    if not bias:
      return x
    return bias_act(x, p[f"{scope}/bias"], act, clamp if use_clamp else None)

  y = images_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
  x = None
  for res in range(log2, 2, -1):
    scope = f"{2**res}x{2**res}"
    if arch == "skip" or res == log2:
      t = conv(y, f"{scope}/FromRGB")
      x = t if x is None else t + x
    t = x
    x = conv(x, f"{scope}/Conv0")
    x = conv(x, f"{scope}/Conv1_down", down=True)
    if arch == "resnet":
      t = conv_downsample(t, conv_weight(p, f"{scope}/Skip"), f)
      x = (x + t) / SQRT2
    if arch == "skip":
      y = downsample(y, f)
  if arch == "skip" or log2 == 2:
    t = conv(y, "4x4/FromRGB")
    x = t if x is None else t + x
  if cfg.get("mbstd_num_features", 1):
    x = minibatch_stddev(x, cfg.get("mbstd_group_size"), cfg.get("mbstd_num_features", 1))
  x = conv(x, "4x4/Conv")
  x = dense(p, "4x4/Dense0", x.reshape(x.shape[0], -1), act="lrelu")
  x = dense(p, "Output", x)
  if cfg.get("label_size", 0):
    cmap = normalize_2nd_moment(dense(p, "LabelEmbed", c))
    for i in range(cfg.get("mapping_layers", 0)):
      cmap = dense(p, f"Mapping{i}", cmap, lrmul=cfg.get("mapping_lrmul", 0.1), act="lrelu")
    x = np.sum(x * cmap, axis=1, keepdims=True) / math.sqrt(cmap.shape[1])
  return x
