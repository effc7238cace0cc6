"""Deep Back-Projection Networks (Haris, Shakhnarovich, Ukita: CVPR 2018; TPAMI 2020) in Keras.

The four networks of the official repository (alterzero/DBPN-Pytorch), as functional models on
RGB images in [0, 1] of any size (NHWC, output `scale` times larger, not clamped):

* `dbpn`: D-DBPN, `dbpn.py` (T = 7 up-projection units; the shipped `DBPN_x{2,4,8}.pth`).
* `dbpnll`: `dbpn_v1.py`, T = 10 (`eval.py`'s default model type).
* `dbpn_res_mr64_3`: `dbpn_iterative.py`, the T = 7 body run three times with shared weights, each
  pass starting from the previous pass's last down-projection; the last up-projection of every
  pass feeds the reconstruction, and the bicubic upscale of the input is added (residual).
* `dbpns`: `dbpns.py`, DBPN-S (T = 2).

Every convolution has a bias and is followed by a PReLU with one scalar slope (`torch.nn.PReLU()`)
except the reconstruction. Layers are named after the checkpoint's modules with `.` spelt `_`
(`up3.conv.conv` -> `up3_conv_conv`, its PReLU `up3_conv_act`), so conversion is a name map.
PyTorch's (kernel, stride, padding = 2) projections equal Keras' `padding="same"` at every scale:
both crop `kernel - stride = 4` rows as 2 + 2.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

BASE_FILTERS = 64  # n_R in the paper; base_filter in the official code.
FEATURES = 256  # n_0; feat.
PRELU_INIT = 0.25  # torch.nn.PReLU's default slope.
SCALES = (2, 4, 8)


@dataclasses.dataclass(frozen=True)
class Variant:
  stages: int  # Up-projection units per pass (T).
  passes: int = 1  # Recurrent passes sharing weights (DBPN-RES-MR64-3).
  residual: bool = False  # The official weights expect the bicubic upscale added.


VARIANTS = {
  "dbpn": Variant(stages=7),
  "dbpnll": Variant(stages=10),
  "dbpn_res_mr64_3": Variant(stages=7, passes=3, residual=True),
  "dbpns": Variant(stages=2),
}


def projection_kernel(scale: int) -> int:
  """Kernel of the strided projections (`dbpn.py`: 6 at x2, 8 at x4, 12 at x8; padding 2)."""
  if scale not in SCALES:
    raise ValueError(f"scale must be one of {SCALES}, got {scale}")
  return scale + 4


def layer_name(module_path: str) -> str:
  """Keras layer name of a checkpoint module path (`up1.up_conv1.deconv` -> `up1_up_conv1_deconv`)."""
  return module_path.replace(".", "_")


def _he_normal() -> keras.initializers.Initializer:
  # torch.nn.init.kaiming_normal_: untruncated normal, fan-in mode, gain sqrt(2).
  return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def _prelu(module: str) -> keras.layers.Layer:
  return keras.layers.PReLU(
    alpha_initializer=keras.initializers.Constant(PRELU_INIT),
    shared_axes=[1, 2, 3],
    name=layer_name(f"{module}.act"),
  )


class _Builder:
  """Creates each named layer once, so recurrent passes share weights."""

  def __init__(self, scale: int):
    self.kernel = projection_kernel(scale)
    self.scale = scale
    self.layers: dict[str, keras.layers.Layer] = {}

  def _get(self, name: str, make) -> keras.layers.Layer:
    if name not in self.layers:
      self.layers[name] = make()
    return self.layers[name]

  def conv(self, module: str, filters: int, kernel: int, stride: int = 1, act: bool = True):
    conv = self._get(
      f"{module}.conv",
      lambda: keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        kernel_initializer=_he_normal(),
        name=layer_name(f"{module}.conv"),
      ),
    )
    if not act:
      return conv
    prelu = self._get(f"{module}.act", lambda: _prelu(module))
    return lambda x: prelu(conv(x))

  def deconv(self, module: str):
    deconv = self._get(
      f"{module}.deconv",
      lambda: keras.layers.Conv2DTranspose(
        BASE_FILTERS,
        self.kernel,
        strides=self.scale,
        padding="same",
        kernel_initializer=_he_normal(),
        name=layer_name(f"{module}.deconv"),
      ),
    )
    prelu = self._get(f"{module}.act", lambda: _prelu(module))
    return lambda x: prelu(deconv(x))

  def down_conv(self, module: str):
    return self.conv(module, BASE_FILTERS, self.kernel, self.scale)

  def up(self, unit: str, low, dense: int = 0):
    """Up-projection (`UpBlock`, or `D_UpBlock` after a 1x1 fusion of `dense` inputs)."""
    if dense:
      low = self.conv(f"{unit}.conv", BASE_FILTERS, 1)(_concat(low))
    h0 = self.deconv(f"{unit}.up_conv1")(low)
    l0 = self.down_conv(f"{unit}.up_conv2")(h0)
    h1 = self.deconv(f"{unit}.up_conv3")(keras.layers.Subtract()([l0, low]))
    return keras.layers.Add()([h1, h0])

  def down(self, unit: str, high, dense: int = 0):
    """Down-projection (`DownBlock`, or `D_DownBlock` after a 1x1 fusion)."""
    if dense:
      high = self.conv(f"{unit}.conv", BASE_FILTERS, 1)(_concat(high))
    l0 = self.down_conv(f"{unit}.down_conv1")(high)
    h0 = self.deconv(f"{unit}.down_conv2")(l0)
    l1 = self.down_conv(f"{unit}.down_conv3")(keras.layers.Subtract()([h0, high]))
    return keras.layers.Add()([l1, l0])

  def body(self, low, stages: int):
    """One pass of up/down units with dense connections; returns (HR features, last LR)."""
    h1 = self.up("up1", low)
    l1 = self.down("down1", h1)
    highs = [self.up("up2", l1), h1]  # Newest first, as the official torch.cat calls.
    lows = [l1]
    for i in range(2, stages):
      lows.insert(0, self.down(f"down{i}", highs, dense=i))
      highs.insert(0, self.up(f"up{i + 1}", lows, dense=i))
    return highs, lows[0]


def _concat(tensors):
  return tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(axis=-1)(tensors)


@keras.saving.register_keras_serializable(package="tfpets")
class BicubicUpscale(keras.layers.Layer):
  """Bicubic upscale by an integer factor (half-pixel centres, Keys a = -0.5, as PIL's BICUBIC)."""

  def __init__(self, scale: int, **kwargs):
    super().__init__(**kwargs)
    self.scale = int(scale)

  def call(self, images):
    size = tf.shape(images)[1:3] * self.scale
    return tf.cast(tf.image.resize(tf.cast(images, tf.float32), size, "bicubic"), images.dtype)

  def compute_output_shape(self, input_shape):
    grow = lambda n: None if n is None else n * self.scale  # noqa: E731
    return (input_shape[0], grow(input_shape[1]), grow(input_shape[2]), input_shape[3])

  def get_config(self):
    return {**super().get_config(), "scale": self.scale}


def build_dbpn(
  variant: str = "dbpn", scale: int = 4, residual: bool | None = None, name: str | None = None
) -> keras.Model:
  """A DBPN variant at x2, x4 or x8; `residual=None` takes the variant's official setting."""
  if variant not in VARIANTS:
    raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
  spec = VARIANTS[variant]
  residual = spec.residual if residual is None else residual
  builder = _Builder(scale)
  images = keras.Input((None, None, 3), name="images")
  low = builder.conv("feat0", FEATURES, 3)(images)
  low = builder.conv("feat1", BASE_FILTERS, 1)(low)
  if spec.passes == 1:
    features, _ = builder.body(low, spec.stages)
  else:
    features = []
    for _ in range(spec.passes):
      highs, low = builder.body(low, spec.stages)
      features.append(highs[0])  # Oldest pass first: torch.cat(results).
  output = builder.conv("output_conv", 3, 3, act=False)(_concat(features))
  if residual:
    output = keras.layers.Add(name="residual")(
      [output, BicubicUpscale(scale, name="bicubic")(images)]
    )
  output = keras.layers.Activation("linear", dtype="float32", name="upscaled")(output)
  return keras.Model(images, output, name=name or f"{variant}_x{scale}")
