"""The Bazel build: tools/bazel/configure.py, the test targets of BUILD and their runner.

The configure and BUILD tests are fast; the runner's test starts two Python
processes (slow). The Bazel tests are slow too (a cold build compiles the
kernels; a warm run takes seconds) and are skipped where `bazel` is not
installed or `python tools/bazel/configure.py` has not been run (it writes the
git-ignored tools/bazel/local_config.bzl). They run with `--symlink_prefix=/`
so that no bazel-* links appear in the checkout.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGURE_PATH = REPO / "tools" / "bazel" / "configure.py"
RUNNER_PATH = REPO / "tests" / "bazel" / "pytest_runner.py"
BUILD_FILE = REPO / "BUILD"
LOCAL_CONFIG = REPO / "tools" / "bazel" / "local_config.bzl"
OP_LIBRARY = "//:tfpets/ops/_lib/libtfpets_ops.so"
BAZEL = shutil.which("bazel")
# The files of tests/gan that test the networks: Bazel runs them with every
# tests/ops/test_*.py. The rest of tests/gan (importers, stages, metrics) runs
# under pytest only.
NETWORK_TEST_FILES = (
  "tests/gan/test_layers.py",
  "tests/gan/test_networks.py",
  "tests/gan/test_param_counts.py",
  "tests/gan/test_presets.py",
)

needs_bazel = pytest.mark.skipif(
  BAZEL is None or not LOCAL_CONFIG.is_file(),
  reason="needs bazel and `python tools/bazel/configure.py`",
)


@pytest.fixture(scope="module")
def configure() -> types.ModuleType:
  spec = importlib.util.spec_from_file_location("bazel_configure", CONFIGURE_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fake_wheel(tmp_path: pathlib.Path) -> dict[str, object]:
  (tmp_path / "include").mkdir()
  (tmp_path / "libtensorflow_framework.so.2").write_bytes(b"")
  return {
    "python": "/opt/venv/bin/python",
    "tf_version": "2.21.0",
    "tf_lib_dir": str(tmp_path),
    "compile_flags": [
      f"-I{tmp_path}/include",
      "-D_GLIBCXX_USE_CXX11_ABI=1",
      "--std=c++17",
      "-DEIGEN_MAX_ALIGN_BYTES=64",
    ],
    "link_flags": [f"-L{tmp_path}", "-l:libtensorflow_framework.so.2"],
  }


def test_configure_renders_paths_and_sorted_flags(configure, tmp_path):
  text = configure.render(_fake_wheel(tmp_path))
  values: dict[str, object] = {}
  exec(text, {}, values)  # pylint: disable=exec-used  # JSON is Starlark too.
  assert values.pop("__doc__").startswith("Machine-specific Bazel settings")
  assert values == {
    "PYTHON_INTERPRETER": "/opt/venv/bin/python",
    "TF_VERSION": "2.21.0",
    "TF_LIB_DIR": str(tmp_path),
    "TF_DEFINES": ["_GLIBCXX_USE_CXX11_ABI=1", "EIGEN_MAX_ALIGN_BYTES=64"],
    "TF_COPTS": ["--std=c++17"],
    "TF_FRAMEWORK_LIBRARY": "libtensorflow_framework.so.2",
  }


def test_configure_rejects_include_dir_outside_the_wheel(configure, tmp_path):
  info = _fake_wheel(tmp_path)
  info["compile_flags"] = ["-I/elsewhere/include", "--std=c++17"]
  with pytest.raises(configure.ConfigureError, match=r"'-I/elsewhere/include' is not .*/include"):
    configure.split_flags(info)


def test_configure_rejects_missing_framework_library(configure, tmp_path):
  info = _fake_wheel(tmp_path)
  (tmp_path / "libtensorflow_framework.so.2").unlink()
  with pytest.raises(configure.ConfigureError, match="do not name one library"):
    configure.split_flags(info)


def test_configure_reports_interpreter_without_tensorflow(configure, tmp_path):
  fake_python = tmp_path / "python"
  fake_python.write_text('#!/bin/sh\necho "No module named tensorflow" >&2\nexit 1\n')
  fake_python.chmod(0o755)
  with pytest.raises(
    configure.ConfigureError, match=r"python: importing tensorflow failed \(exit 1\)"
  ):
    configure.probe(str(fake_python))


def _pytest_test_sources() -> list[str]:
  """The `src` of every pytest_test(...) in BUILD."""
  return re.findall(r'^pytest_test\(\s*src = "([^"]+)"', BUILD_FILE.read_text(), re.MULTILINE)


def test_build_runs_every_ops_and_networks_test_file():
  listed = _pytest_test_sources()
  assert len(listed) == len(set(listed)), f"a file has two targets: {sorted(listed)}"
  ops_tests = {path.relative_to(REPO).as_posix() for path in REPO.glob("tests/ops/test_*.py")}
  assert ops_tests, "no tests/ops/test_*.py found"
  forgotten = sorted((ops_tests | set(NETWORK_TEST_FILES)) - set(listed))
  assert not forgotten, f"BUILD needs a pytest_test(src = ...) for {forgotten}"
  missing = [src for src in listed if not (REPO / src).is_file()]
  assert not missing, f"BUILD lists test files that do not exist: {missing}"


def _run_runner(*args: str, env: dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, str(RUNNER_PATH), *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def test_runner_refuses_to_run_without_the_bazel_library(tmp_path):
  env = {key: value for key, value in os.environ.items() if key != "TFPETS_OPS_LIBRARY"}
  result = _run_runner("test_nothing.py", env=env, cwd=tmp_path)
  assert result.returncode == 1
  assert "TFPETS_OPS_LIBRARY is not set" in result.stderr


@pytest.mark.slow  # Two processes that import TensorFlow.
def test_runner_fails_when_every_test_skipped_and_passes_otherwise(tmp_path):
  from tfpets import ops  # pylint: disable=g-import-not-at-top

  if not ops.library_loaded():
    pytest.skip("no custom op library loaded (pip install builds one)")
  (tmp_path / "test_skipped.py").write_text(
    textwrap.dedent("""
      import pytest
      pytestmark = pytest.mark.skip(reason="skipped on purpose")
      def test_one():
        pass
    """)
  )
  (tmp_path / "test_passes.py").write_text("def test_one():\n  assert 1 + 1 == 2\n")
  env = dict(os.environ, TFPETS_OPS_LIBRARY=ops.library_path(), TF_CPP_MIN_LOG_LEVEL="3")
  skipped = _run_runner("test_skipped.py", env=env, cwd=tmp_path)
  assert skipped.returncode == 1, skipped.stdout + skipped.stderr
  assert "no test in test_skipped.py passed" in skipped.stderr
  passed = _run_runner("test_passes.py", env=env, cwd=tmp_path)
  assert passed.returncode == 0, passed.stdout + passed.stderr
  assert "1 passed" in passed.stdout


def _bazel(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
  return subprocess.run(
    [BAZEL, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
  )


@pytest.mark.slow
@needs_bazel
def test_bazel_compiles_the_same_kernel_sources_as_build_py():
  from tfpets.ops import build  # pylint: disable=g-import-not-at-top

  result = _bazel("query", f'labels(srcs, "{OP_LIBRARY}")', timeout=300)
  assert result.returncode == 0, result.stderr
  labels = result.stdout.split()
  assert all(label.startswith("//:tfpets/ops/kernels/") for label in labels)
  names = {label.rsplit("/", 1)[1] for label in labels}
  assert names == set(build.CPU_SOURCES + build.HEADERS)


@pytest.mark.slow
@needs_bazel
def test_bazel_test_of_the_op_library_passes():
  result = _bazel(
    "test", "--symlink_prefix=/", "--test_output=all", "//:op_library_test", timeout=600
  )
  output = result.stdout + result.stderr
  assert result.returncode == 0, output[-4000:]
  # The pytest summary inside the Bazel test log: everything ran and passed
  # (a skipped module would also make Bazel report PASSED).
  summaries = re.findall(r"^=*\s*(\d+ passed[^\n]*?) in [\d.]+s", output, re.MULTILINE)
  assert summaries, output[-4000:]
  assert re.fullmatch(r"\d+ passed", summaries[-1]), summaries[-1]
  assert int(summaries[-1].split()[0]) >= 5


@pytest.mark.slow
@needs_bazel
def test_bazel_test_targets_are_named_after_their_files():
  result = _bazel("query", "tests(//...)", timeout=300)
  assert result.returncode == 0, result.stderr
  expected = {"//:op_library_test"} | {
    f"//:{src.removesuffix('.py')}" for src in _pytest_test_sources()
  }
  assert set(result.stdout.split()) == expected
