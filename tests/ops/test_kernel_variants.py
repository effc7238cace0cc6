"""The custom ops give the same numbers on every variant of their CPU loops.

The CPU kernels pick between variants at run time:

* an AVX2 build of their loops beside the plain x86-64 one
  (`kernels/tfpets_ops.h`); `TFPETS_OPS_ISA=baseline` forces the plain one,
  which also makes `FusedBiasAct`'s relu and lrelu gradients read the sign
  of y from y itself instead of from the bits the AVX2 forward pass packs;
* for tensors above a size threshold (`kernels/cpu_stream.h`),
  non-temporal stores of the output: `UpFirDn2D` stages its output in a
  small buffer and copies it out, `FusedBiasAct`'s piecewise-linear rows
  store from AVX2 registers; and `UpFirDn2D` prefetches the next output
  row's input rows. `TFPETS_OPS_STREAM_MIN_BYTES=0` forces those paths for
  the small tensors here, which this process handles the plain way.

Each test runs the same ops in a second process with one variant forced, on
the same library, and compares every output and gradient with this
process's. The variants add the same terms in the same order, so the
results must be identical, not merely close.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tests.ops import cpu

REPO = pathlib.Path(__file__).resolve().parents[2]
ACTIVATIONS = ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish")


def compute_outputs(ops) -> dict[str, np.ndarray]:
  """Every op's outputs and first- and second-order gradients, float32.

  Channel counts are not multiples of 8, so the loops' vector bodies and
  their scalar tails both run.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(11)
  x = tf.constant(rng.normal(size=(3, 5, 7, 37)) * 3, tf.float32)
  b = tf.constant(rng.normal(size=37), tf.float32)
  x_nchw = tf.constant(rng.normal(size=(2, 13, 6, 5)) * 3, tf.float32)
  b_nchw = tf.constant(rng.normal(size=13), tf.float32)
  img = tf.constant(rng.normal(size=(2, 9, 11, 19)), tf.float32)
  kernel = ops.setup_filter([1, 3, 3, 1])
  outputs = {}
  for act in ACTIVATIONS:
    for clamp in (None, 1.5):
      for name, xs, bs, axis in (("nhwc", x, b, -1), ("nchw", x_nchw, b_nchw, 1)):
        with tf.GradientTape() as outer:
          outer.watch([xs, bs])
          with tf.GradientTape() as inner:
            inner.watch([xs, bs])
            y = ops.fused_bias_act(xs, bs, axis=axis, act=act, clamp=clamp, impl="custom")
            loss = tf.reduce_sum(y * y)
          dx, db = inner.gradient(loss, [xs, bs])
          loss_of_grads = tf.reduce_sum(dx * dx) + tf.reduce_sum(db)
        ddx, ddb = outer.gradient(
          loss_of_grads, [xs, bs], unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        key = f"bias_act/{act}/{clamp}/{name}"
        for part, value in (("y", y), ("dx", dx), ("db", db), ("ddx", ddx), ("ddb", ddb)):
          outputs[f"{key}/{part}"] = value.numpy()
  resamplers = {
    "up": lambda t: ops.upsample2d(t, kernel, impl="custom"),
    "down": lambda t: ops.downsample2d(t, kernel, impl="custom"),
    "filter": lambda t: ops.upfirdn2d(t, kernel, pad=2, impl="custom"),
    "up_down": lambda t: ops.upfirdn2d(t, kernel, up=3, down=2, pad=(1, 2), impl="custom"),
  }
  for name, run in resamplers.items():
    with tf.GradientTape() as tape:
      tape.watch(img)
      y = run(img)
      loss = tf.reduce_sum(y * y)
    outputs[f"upfirdn2d/{name}/y"] = y.numpy()
    outputs[f"upfirdn2d/{name}/dx"] = tape.gradient(loss, img).numpy()
  return outputs


def _outputs_in_subprocess(
  custom_ops, out_path: pathlib.Path, **env_extra: str
) -> dict[str, np.ndarray]:
  env = dict(
    os.environ,
    TFPETS_OPS_LIBRARY=custom_ops.library_path(),
    PYTHONPATH=str(REPO),
    TF_CPP_MIN_LOG_LEVEL="3",
    **env_extra,
  )
  env.pop("TFPETS_OPS_DISABLE", None)
  result = subprocess.run(
    [sys.executable, __file__, str(out_path)],
    capture_output=True,
    text=True,
    check=False,
    env=env,
    cwd=REPO,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return dict(np.load(out_path))


def _assert_identical(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> None:
  assert sorted(theirs) == sorted(ours)
  for key, value in ours.items():
    np.testing.assert_array_equal(value, theirs[key], err_msg=key)


@pytest.mark.skipif(not cpu.has_avx2(), reason="this CPU has no AVX2")
def test_baseline_and_avx2_builds_give_identical_results(custom_ops, tmp_path):
  baseline = _outputs_in_subprocess(
    custom_ops, tmp_path / "baseline.npz", TFPETS_OPS_ISA="baseline"
  )
  _assert_identical(compute_outputs(custom_ops), baseline)


def test_streamed_and_in_place_outputs_are_identical(custom_ops, tmp_path):
  streamed = _outputs_in_subprocess(
    custom_ops, tmp_path / "streamed.npz", TFPETS_OPS_STREAM_MIN_BYTES="0"
  )
  _assert_identical(compute_outputs(custom_ops), streamed)


if __name__ == "__main__":
  import tfpets.ops as tfpets_ops  # pylint: disable=g-import-not-at-top

  if not tfpets_ops.library_loaded():
    sys.exit(f"custom op library not loaded from {os.environ.get('TFPETS_OPS_LIBRARY')}")
  np.savez(sys.argv[1], **compute_outputs(tfpets_ops))
