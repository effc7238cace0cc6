"""The Keras DBPN networks: parameter counts, output shapes and checkpoint names."""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest

from tests.superres import numpy_dbpn
from tfpets.superres import dbpn

# Official figures: D-DBPN (dbpn.py, T = 7) x2/x4/x8 and DBPN-LL (dbpn_v1.py, T = 10) x4.
PUBLISHED = {
  ("dbpn", 2): 5_953_526,
  ("dbpn", 4): 10_426_358,
  ("dbpn", 8): 23_205_878,
  ("dbpnll", 4): 15_348_302,
}
PAIRS = [(variant, scale) for variant in sorted(dbpn.VARIANTS) for scale in (2, 4, 8)]


def counted_parameters(variant: str, scale: int) -> int:
  """Layer-by-layer count from the papers' description: n_0 = 256, n_R = 64, every convolution
  with a bias and a one-slope PReLU except the reconstruction."""
  kernel = {2: 6, 4: 8, 8: 12}[scale]
  stages = {"dbpn": 7, "dbpnll": 10, "dbpn_res_mr64_3": 7, "dbpns": 2}[variant]
  # 64-channel maps the reconstruction sees: every up-projection, or one per recurrent pass.
  reconstructed = 3 if variant == "dbpn_res_mr64_3" else stages

  def conv(cin, cout, k, prelu=True):
    return cin * cout * k * k + cout + (1 if prelu else 0)

  unit = 3 * conv(64, 64, kernel)  # Two projections one way, one the other: same size.
  total = conv(3, 256, 3) + conv(256, 64, 1)  # feat0, feat1
  total += 3 * unit  # up1, down1, up2
  for i in range(2, stages):  # down_i and up_{i+1}, each after a 1x1 fusion of i maps
    total += 2 * (conv(64 * i, 64, 1) + unit)
  return total + conv(64 * reconstructed, 3, 3, prelu=False)


@functools.lru_cache(maxsize=None)
def _model(variant: str, scale: int) -> keras.Model:
  return dbpn.build_dbpn(variant, scale)


@pytest.mark.parametrize("variant,scale", sorted(PUBLISHED))
def test_published_parameter_counts(variant, scale):
  published = PUBLISHED[(variant, scale)]
  assert counted_parameters(variant, scale) == published
  assert _model(variant, scale).count_params() == published


@pytest.mark.parametrize("variant,scale", PAIRS)
def test_parameter_count_of_every_variant_and_scale(variant, scale):
  assert _model(variant, scale).count_params() == counted_parameters(variant, scale)


@pytest.mark.parametrize("variant,scale", PAIRS)
def test_layer_names_cover_every_checkpoint_key(variant, scale):
  """Each official state-dict key names exactly one Keras weight of the matching layout."""
  model = _model(variant, scale)
  covered = []
  for key, torch_shape in numpy_dbpn.state_dict_shapes(variant, scale).items():
    module, leaf = key.rsplit(".", 1)
    layer = model.get_layer(dbpn.layer_name(module))
    if module.endswith(".act"):
      assert isinstance(layer, keras.layers.PReLU) and leaf == "weight"
      weight, keras_shape = layer.alpha, (1, 1, 1)
    else:
      kind = keras.layers.Conv2DTranspose if module.endswith(".deconv") else keras.layers.Conv2D
      assert isinstance(layer, kind), key
      weight = layer.kernel if leaf == "weight" else layer.bias
      # Conv2d (out, in, k, k) -> (k, k, in, out); ConvTranspose2d (in, out, k, k) -> (k, k, out, in).
      keras_shape = tuple(torch_shape[i] for i in (2, 3, 1, 0)) if leaf == "weight" else torch_shape
    assert tuple(weight.shape) == keras_shape, key
    covered.append(id(weight))
  assert sorted(covered) == sorted(id(w) for w in model.weights)


@pytest.mark.parametrize(
  "variant,scale,size",
  [
    ("dbpns", 2, (5, 7)),
    ("dbpns", 4, (1, 3)),
    ("dbpns", 8, (3, 5)),
    ("dbpn", 4, (7, 9)),
    ("dbpn_res_mr64_3", 2, (3, 5)),
  ],
)
def test_output_is_scale_times_any_input_size(variant, scale, size):
  model = _model(variant, scale)
  images = np.random.default_rng(0).uniform(0, 1, (2, *size, 3)).astype(np.float32)
  out = model(images).numpy()
  assert out.shape == (2, size[0] * scale, size[1] * scale, 3)
  assert out.dtype == np.float32 and np.isfinite(out).all()
  assert tuple(model.output_shape) == (None, None, None, 3)
