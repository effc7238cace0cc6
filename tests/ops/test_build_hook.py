"""Tests of the install-time op build: setup.py's `build_ext` (BuildTFOps).

Runs the command through setuptools' own machinery (the Distribution that
setup.py creates), never through pip: wiring, where the library goes, that a
broken compiler only warns, that `TFPETS_BUILD_OPS=0` skips, and (slow) that
the library it builds is found by `tfpets.ops` and computes what an
independent numpy reference computes.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys

# isort: off
import setuptools  # noqa: F401  (first: it installs its own distutils over the stdlib's)
from distutils import core as distutils_core
# isort: on

import numpy as np
import pytest
from absl import logging as absl_logging

from tfpets.ops import _impl

REPO = pathlib.Path(__file__).resolve().parents[2]

# Loads the library the way an installed tfpets does (the manifest in
# tfpets/ops/_lib), but from the directory given as argv[1], in a fresh
# process: one process cannot register the same op names twice.
LOAD_AND_RUN = r"""
import json, os, pathlib, sys
import numpy as np
import tfpets.ops as ops
from tfpets.ops import _impl
del os.environ['TFPETS_OPS_DISABLE']
_impl.LIB_DIR = pathlib.Path(sys.argv[1])
ops.load_library()
data = np.load(sys.argv[2])
bias_act = ops.fused_bias_act(data['x'], data['b'], act='lrelu',
                              impl='custom')
up = {impl: ops.upfirdn2d(data['img'], data['k'], up=2, pad=1,
                          impl=impl).numpy().tolist()
      for impl in ('custom', 'ref')}
print(json.dumps({'loaded': ops.library_loaded(),
                  'path': ops.library_path(),
                  'bias_act': bias_act.numpy().tolist(), 'up': up}))
"""


@pytest.fixture
def distribution():
  """The Distribution setup.py builds, before any command has run."""
  return distutils_core.run_setup(str(REPO / "setup.py"), stop_after="init")


def build_ext_command(distribution, tmp_path: pathlib.Path):
  command = distribution.get_command_obj("build_ext")
  command.build_lib = str(tmp_path / "lib")
  command.build_temp = str(tmp_path / "temp")
  return command


def absl_warnings(caplog) -> list[str]:
  return [
    r.getMessage()
    for r in caplog.records
    if r.levelno == logging.WARNING and "tfpets.ops.build" in r.getMessage()
  ]


def test_setup_runs_build_tf_ops_for_its_placeholder_extension(distribution):
  assert distribution.cmdclass["build_ext"].__name__ == "BuildTFOps"
  # Without an extension setuptools never runs build_ext.
  assert distribution.has_ext_modules()
  assert [e.name for e in distribution.ext_modules] == ["tfpets.ops._lib.tfpets_ops"]


def test_library_goes_where_tfpets_ops_looks(distribution, tmp_path):
  command = build_ext_command(distribution, tmp_path)
  command.ensure_finalized()
  assert command.library_dir() == tmp_path / "lib" / "tfpets" / "ops" / "_lib"
  command.editable_mode = True
  assert command.library_dir() == _impl.LIB_DIR


def test_tfpets_build_ops_0_skips_the_build(distribution, tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("TFPETS_BUILD_OPS", "0")
  monkeypatch.setenv("CXX", "/bin/false")
  caplog.set_level(logging.INFO)
  # absl drops records below its verbosity, which flag parsing in another
  # test may have raised.
  before = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    build_ext_command(distribution, tmp_path)
    distribution.run_command("build_ext")
  finally:
    absl_logging.set_verbosity(before)
  assert not (tmp_path / "lib").exists()
  assert not absl_warnings(caplog)
  assert any("TFPETS_BUILD_OPS=0" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
  "compiler, cause",
  [
    ("/bin/false", "C++ build failed (exit 1)"),
    ("/nonexistent/g++", "cannot run /nonexistent/g++"),
  ],
)
def test_failed_build_warns_and_does_not_raise(
  distribution, tmp_path, monkeypatch, caplog, compiler, cause
):
  monkeypatch.setenv("CXX", compiler)
  monkeypatch.setenv("TFPETS_BUILD_CUDA", "0")
  monkeypatch.delenv("TFPETS_BUILD_OPS", raising=False)
  # What an earlier install left in pip's reused build/ directory must not
  # end up in this wheel.
  lib_dir = tmp_path / "lib" / "tfpets" / "ops" / "_lib"
  lib_dir.mkdir(parents=True)
  (lib_dir / "tfpets_ops_0000000000000000.so").write_bytes(b"earlier build")
  (lib_dir / "tfpets_ops.json").write_text("{}")
  build_ext_command(distribution, tmp_path)
  distribution.run_command("build_ext")  # Must not raise.
  warnings = absl_warnings(caplog)
  assert len(warnings) == 1, caplog.text
  assert "reference (plain TensorFlow) ops" in warnings[0]
  assert "`python -m tfpets.ops.build`" in warnings[0]
  assert cause in warnings[0]
  assert not list(lib_dir.iterdir())


def test_invalid_cuda_choice_is_an_error(distribution, tmp_path, monkeypatch):
  monkeypatch.setenv("TFPETS_BUILD_CUDA", "maybe")
  monkeypatch.delenv("TFPETS_BUILD_OPS", raising=False)
  build_ext_command(distribution, tmp_path)
  with pytest.raises(ValueError, match="TFPETS_BUILD_CUDA must be auto, 1 or 0, got 'maybe'"):
    distribution.run_command("build_ext")


def numpy_lrelu_bias(x: np.ndarray, b: np.ndarray) -> np.ndarray:
  s = x.astype(np.float64) + b.astype(np.float64)
  return np.where(s > 0, s, 0.2 * s) * np.sqrt(2.0)


@pytest.mark.slow  # Compiles the CPU kernels: about 95 s on 2 cores.
def test_built_library_loads_and_matches_reference(distribution, tmp_path, monkeypatch):
  monkeypatch.setenv("TFPETS_BUILD_CUDA", "0")
  monkeypatch.delenv("TFPETS_BUILD_OPS", raising=False)
  monkeypatch.delenv("CXX", raising=False)
  lib_dir = tmp_path / "lib" / "tfpets" / "ops" / "_lib"
  lib_dir.mkdir(parents=True)
  stale = lib_dir / "tfpets_ops_0000000000000000.so"
  stale.write_bytes(b"left by an earlier build")
  build_ext_command(distribution, tmp_path)
  distribution.run_command("build_ext")

  manifest = json.loads((lib_dir / "tfpets_ops.json").read_text())
  assert [p.name for p in lib_dir.glob("*.so")] == [manifest["library"]]
  assert manifest["cuda"] is False

  rng = np.random.default_rng(3)
  inputs = {
    "x": rng.normal(size=(2, 4, 5, 3)).astype(np.float32),
    "b": rng.normal(size=3).astype(np.float32),
    "img": rng.normal(size=(1, 6, 7, 2)).astype(np.float32),
    "k": np.array([1.0, 3.0, 3.0, 1.0], np.float32) / 8,
  }
  np.savez(tmp_path / "inputs.npz", **inputs)
  env = dict(os.environ, TFPETS_OPS_DISABLE="1", PYTHONPATH=str(REPO))
  result = subprocess.run(
    [sys.executable, "-c", LOAD_AND_RUN, str(lib_dir), str(tmp_path / "inputs.npz")],
    capture_output=True,
    text=True,
    check=False,
    env=env,
    cwd=REPO,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["loaded"], result.stderr
  assert out["path"] == str(lib_dir / manifest["library"])
  np.testing.assert_allclose(
    out["bias_act"], numpy_lrelu_bias(inputs["x"], inputs["b"]), rtol=1e-6, atol=1e-6
  )
  up_custom = np.array(out["up"]["custom"])
  # Each side: size * up + 2 * pad - (taps - 1).
  assert up_custom.shape == (1, 6 * 2 + 2 - 3, 7 * 2 + 2 - 3, 2)
  np.testing.assert_allclose(up_custom, out["up"]["ref"], rtol=1e-5, atol=1e-6)
