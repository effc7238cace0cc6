"""An independent NumPy forward pass of the official DBPN networks, on torch-layout state dicts.

Written from alterzero/DBPN-Pytorch: `base_networks.py` (ConvBlock, DeconvBlock, UpBlock,
DownBlock, D_UpBlock, D_DownBlock), the `__init__` and `forward` of `dbpn.py` (T = 7),
`dbpn_v1.py` (T = 10), `dbpn_iterative.py` (three passes of the T = 7 body sharing weights) and
`dbpns.py` (T = 2). Arrays are NCHW float64 as torch holds them; convolutions use explicit zero
padding and transposed convolutions scatter-add the full output, then crop the padding.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

BASE = 64  # base_filter
FEAT = 256  # feat
PADDING = 2  # of every projection, at every scale
KERNELS = {2: 6, 4: 8, 8: 12}  # Net.__init__: kernel per scale_factor (stride = scale)
# Model name -> (num_stages of the dense body, recurrent passes, num_stages passed to Net).
NETWORKS = {
  "dbpn": (7, 1, 7),
  "dbpnll": (10, 1, 10),
  "dbpn_res_mr64_3": (7, 3, 3),
  "dbpns": (2, 1, 2),
}


# ------------------------------------------------------------------------------------------------
# The state dict's keys and shapes, from the modules each Net.__init__ registers (in order).
# ------------------------------------------------------------------------------------------------


def state_dict_shapes(variant: str, scale: int) -> dict[str, tuple[int, ...]]:
  body, _, num_stages = NETWORKS[variant]
  kernel = KERNELS[scale]
  shapes: dict[str, tuple[int, ...]] = {}

  def conv_block(name, cin, cout, k, act=True):
    shapes[f"{name}.conv.weight"] = (cout, cin, k, k)  # Conv2d: (out, in, kH, kW)
    shapes[f"{name}.conv.bias"] = (cout,)
    if act:
      shapes[f"{name}.act.weight"] = (1,)  # PReLU(): one slope

  def deconv_block(name, cin, cout, k):
    shapes[f"{name}.deconv.weight"] = (cin, cout, k, k)  # ConvTranspose2d: (in, out, kH, kW)
    shapes[f"{name}.deconv.bias"] = (cout,)
    shapes[f"{name}.act.weight"] = (1,)

  def up_block(name, stages=0):
    if stages:
      conv_block(f"{name}.conv", BASE * stages, BASE, 1)
    deconv_block(f"{name}.up_conv1", BASE, BASE, kernel)
    conv_block(f"{name}.up_conv2", BASE, BASE, kernel)
    deconv_block(f"{name}.up_conv3", BASE, BASE, kernel)

  def down_block(name, stages=0):
    if stages:
      conv_block(f"{name}.conv", BASE * stages, BASE, 1)
    conv_block(f"{name}.down_conv1", BASE, BASE, kernel)
    deconv_block(f"{name}.down_conv2", BASE, BASE, kernel)
    conv_block(f"{name}.down_conv3", BASE, BASE, kernel)

  conv_block("feat0", 3, FEAT, 3)
  conv_block("feat1", FEAT, BASE, 1)
  up_block("up1")
  down_block("down1")
  up_block("up2")
  for i in range(2, body):
    down_block(f"down{i}", i)
    up_block(f"up{i + 1}", i)
  conv_block("output_conv", num_stages * BASE, 3, 3, act=False)
  return shapes


def random_state_dict(variant: str, scale: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Float32 tensors scaled so that activations stay O(1) through every unit."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in state_dict_shapes(variant, scale).items():
    if name.endswith("act.weight"):
      value = rng.uniform(0.05, 0.4, shape)
    elif name.endswith("bias"):
      value = 0.05 * rng.standard_normal(shape)
    elif name.endswith("deconv.weight"):
      cin, _, k, _ = shape  # Each output pixel sees about (k / stride)^2 input pixels.
      value = rng.standard_normal(shape) * scale / (k * np.sqrt(cin))
    else:
      _, cin, k, _ = shape
      value = rng.standard_normal(shape) / (k * np.sqrt(cin))
    out[name] = value.astype(np.float32)
  return out


# ------------------------------------------------------------------------------------------------
# Layers (torch semantics).
# ------------------------------------------------------------------------------------------------


def conv2d(x, weight, bias, stride, padding):
  """torch.nn.functional.conv2d: x (N, C, H, W), weight (out, in, k, k)."""
  k = weight.shape[2]
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  out_h = (x.shape[2] - k) // stride + 1
  out_w = (x.shape[3] - k) // stride + 1
  out = np.zeros((x.shape[0], weight.shape[0], out_h, out_w))
  for dy in range(k):
    for dx in range(k):
      window = x[
        :,
        :,
        dy : dy + stride * (out_h - 1) + 1 : stride,
        dx : dx + stride * (out_w - 1) + 1 : stride,
      ]
      out += np.einsum("nchw,oc->nohw", window, weight[:, :, dy, dx])
  return out + bias[None, :, None, None]


def conv_transpose2d(x, weight, bias, stride, padding):
  """torch.nn.functional.conv_transpose2d: every input pixel scatters weight[c, :] * x into the
  full (H - 1) * stride + k output, which then loses `padding` rows and columns on each side."""
  n, _, h, w = x.shape
  k = weight.shape[2]
  full = np.zeros((n, weight.shape[1], (h - 1) * stride + k, (w - 1) * stride + k))
  for dy in range(k):
    for dx in range(k):
      full[
        :, :, dy : dy + stride * (h - 1) + 1 : stride, dx : dx + stride * (w - 1) + 1 : stride
      ] += np.einsum("nchw,co->nohw", x, weight[:, :, dy, dx])
  out = full[:, :, padding : full.shape[2] - padding, padding : full.shape[3] - padding]
  return out + bias[None, :, None, None]


def prelu(x, slope):
  return np.maximum(x, 0) + slope.reshape(()) * np.minimum(x, 0)


def cat(*tensors):
  return np.concatenate(tensors, axis=1)  # torch.cat(..., 1): channels


# ------------------------------------------------------------------------------------------------
# Blocks and networks.
# ------------------------------------------------------------------------------------------------


class _Net:
  def __init__(self, state_dict: Mapping[str, np.ndarray], scale: int):
    self.p = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    self.scale = scale
    self.kernel = KERNELS[scale]

  def conv_block(self, name, x, stride=1, padding=0, act=True):
    y = conv2d(x, self.p[f"{name}.conv.weight"], self.p[f"{name}.conv.bias"], stride, padding)
    return prelu(y, self.p[f"{name}.act.weight"]) if act else y

  def deconv_block(self, name, x):
    w, b = self.p[f"{name}.deconv.weight"], self.p[f"{name}.deconv.bias"]
    return prelu(conv_transpose2d(x, w, b, self.scale, PADDING), self.p[f"{name}.act.weight"])

  def project_down(self, name, x):
    return self.conv_block(name, x, self.scale, PADDING)

  def up_block(self, name, x, dense=False):  # UpBlock / D_UpBlock.forward
    if dense:
      x = self.conv_block(f"{name}.conv", x)
    h0 = self.deconv_block(f"{name}.up_conv1", x)
    l0 = self.project_down(f"{name}.up_conv2", h0)
    h1 = self.deconv_block(f"{name}.up_conv3", l0 - x)
    return h1 + h0

  def down_block(self, name, x, dense=False):  # DownBlock / D_DownBlock.forward
    if dense:
      x = self.conv_block(f"{name}.conv", x)
    l0 = self.project_down(f"{name}.down_conv1", x)
    h0 = self.deconv_block(f"{name}.down_conv2", l0)
    l1 = self.project_down(f"{name}.down_conv3", h0 - x)
    return l1 + l0

  def body(self, x, stages):
    """dbpn.py / dbpn_v1.py forward between feat1 and output_conv; also returns the last h and
    l (`low`), which dbpn_iterative.py collects and feeds to its next pass."""
    h1 = self.up_block("up1", x)
    l1 = self.down_block("down1", h1)
    h2 = self.up_block("up2", l1)
    concat_h = cat(h2, h1)
    concat_l, h, low = l1, h2, l1
    for i in range(2, stages):
      low = self.down_block(f"down{i}", concat_h, dense=True)
      concat_l = cat(low, concat_l)
      h = self.up_block(f"up{i + 1}", concat_l, dense=True)
      concat_h = cat(h, concat_h)
    return concat_h, h, low

  def forward(self, x, variant):
    stages, passes, _ = NETWORKS[variant]
    x = self.conv_block("feat0", x, 1, 1)
    low = self.conv_block("feat1", x)
    if passes == 1:
      features, _, _ = self.body(low, stages)
    else:
      results = []
      for _ in range(passes):
        _, h, low = self.body(low, stages)
        results.append(h)
      features = cat(*results)
    return self.conv_block("output_conv", features, 1, 1, act=False)


def forward(state_dict: Mapping[str, np.ndarray], variant: str, scale: int, images_nhwc):
  """The network's output for NHWC images (no residual), as NHWC float64."""
  x = np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)
  return _Net(state_dict, scale).forward(x, variant).transpose(0, 2, 3, 1)
