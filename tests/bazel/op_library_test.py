"""Checks the Bazel-built op library (`//:tfpets/ops/_lib/libtfpets_ops.so`).

Run by `bazel test //:op_library_test`, which passes the library's path in
`TFPETS_BAZEL_OPS_LIBRARY`. It loads the library with `tf.load_op_library`,
compares `FusedBiasAct` and `UpFirDn2D` with numpy references written here,
and runs `tfpets.ops` on it. Without that variable (plain pytest, no Bazel
outputs) the whole module is skipped.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

LIBRARY_ENV = "TFPETS_BAZEL_OPS_LIBRARY"
LIBRARY_PATH = os.environ.get(LIBRARY_ENV)
if not LIBRARY_PATH:
  if __name__ == "__main__":
    # Run as a script (by Bazel): skipping would report a silent pass.
    sys.exit(f"{__file__}: {LIBRARY_ENV} is not set; run it with `bazel test //:op_library_test`")
  pytest.skip(f"{LIBRARY_ENV} is not set (only `bazel test` sets it)", allow_module_level=True)

# tfpets.ops loads its library at import; point it at the Bazel one.
os.environ["TFPETS_OPS_LIBRARY"] = LIBRARY_PATH

import tensorflow as tf  # noqa: E402  (after the variable above, which the import reads)

LRELU, TANH = 3, 4  # `act` attribute values (tfpets/ops/bias_act.py).


@pytest.fixture(scope="module")
def library():
  return tf.load_op_library(LIBRARY_PATH)


def _bias_act_reference(
  x: np.ndarray, b: np.ndarray, act: int, alpha: float, gain: float, clamp: float
) -> np.ndarray:
  s = x + b  # Bias along the last axis.
  if act == LRELU:
    y = np.where(s > 0, s, s * alpha)
  elif act == TANH:
    y = np.tanh(s)
  else:
    raise ValueError(f"no reference for act={act}")
  y = y * gain
  return np.clip(y, -clamp, clamp) if clamp >= 0 else y


@pytest.mark.parametrize(
  "act, alpha, gain, clamp",
  [
    (LRELU, 0.2, math.sqrt(2), 1.0),
    (TANH, 0.0, 1.0, -1.0),
  ],
)
def test_fused_bias_act_matches_reference(library, act, alpha, gain, clamp):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  b = rng.normal(size=(5,)).astype(np.float32)
  empty = tf.zeros([0], tf.float32)
  outputs = library.fused_bias_act(
    x=x,
    b=b,
    xref=empty,
    yref=empty,
    dy=empty,
    yref_positive=tf.zeros([0], tf.uint8),
    grad=0,
    axis=-1,
    act=act,
    alpha=alpha,
    gain=gain,
    clamp=clamp,
  )
  expected = _bias_act_reference(x, b, act, alpha, gain, clamp)
  np.testing.assert_allclose(outputs.y.numpy(), expected, rtol=1e-5, atol=1e-6)
  if clamp >= 0:
    assert np.abs(expected).max() == pytest.approx(clamp)  # Clamp was hit.


def _upfirdn_reference(
  x: np.ndarray, k: np.ndarray, up: int, down: int, pad0: int, pad1: int, gain: float
) -> np.ndarray:
  """Zero-insert, pad, true 2-D convolution with k, keep every down-th."""
  n, h, w, c = x.shape
  upsampled = np.zeros((n, h * up, w * up, c), np.float64)
  upsampled[:, ::up, ::up, :] = x
  padded = np.pad(upsampled, ((0, 0), (pad0, pad1), (pad0, pad1), (0, 0)))
  kh, kw = k.shape
  rotated = k[::-1, ::-1]  # Convolution = correlation with the rotated k.
  out_h = (padded.shape[1] - kh) // down + 1
  out_w = (padded.shape[2] - kw) // down + 1
  out = np.zeros((n, out_h, out_w, c), np.float64)
  for oy in range(out_h):
    for ox in range(out_w):
      window = padded[:, oy * down : oy * down + kh, ox * down : ox * down + kw, :]
      out[:, oy, ox, :] = np.einsum("nijc,ij->nc", window, rotated)
  return out * gain


@pytest.mark.parametrize("up, down, pad0, pad1", [(2, 1, 2, 1), (1, 2, 1, 1)])
def test_upfirdn2d_matches_reference(library, up, down, pad0, pad1):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
  k = rng.normal(size=(4, 3)).astype(np.float32)  # Asymmetric: catches flips.
  gain = float(up * up)
  y = library.up_fir_dn2d(
    x=x,
    k=k,
    upx=up,
    upy=up,
    downx=down,
    downy=down,
    padx0=pad0,
    padx1=pad1,
    pady0=pad0,
    pady1=pad1,
    flip=False,
    gain=gain,
  )
  expected = _upfirdn_reference(x, k, up, down, pad0, pad1, gain)
  assert y.shape == expected.shape
  np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_tfpets_ops_uses_the_bazel_library():
  # Imported here so that the raw-op tests above do not depend on tfpets.
  from tfpets import ops  # pylint: disable=g-import-not-at-top

  assert ops.library_loaded(), "tfpets.ops did not load the Bazel library"
  assert os.path.samefile(ops.library_path(), LIBRARY_PATH)
  rng = np.random.default_rng(2)
  x = tf.constant(rng.normal(size=(2, 4, 4, 8)).astype(np.float32))
  b = tf.constant(rng.normal(size=(8,)).astype(np.float32))
  custom = ops.fused_bias_act(x, b, act="lrelu", impl="custom")
  reference = ops.fused_bias_act(x, b, act="lrelu", impl="ref")
  np.testing.assert_allclose(custom.numpy(), reference.numpy(), rtol=1e-6, atol=1e-6)


if __name__ == "__main__":
  # `bazel test` runs this file as a script; the cache would land in runfiles.
  sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
