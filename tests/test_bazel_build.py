"""The Bazel build: tools/bazel/configure.py, and the op library built by Bazel.

The configure tests are fast. The Bazel tests are slow (a cold build compiles
the kernels: ~100 s on 2 busy cores; a warm run takes seconds) and are
skipped where `bazel` is not installed or `python tools/bazel/configure.py`
has not been run (it writes the git-ignored tools/bazel/local_config.bzl).
They run with `--symlink_prefix=/` so that no bazel-* links appear in the
checkout.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil
import subprocess
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGURE_PATH = REPO / "tools" / "bazel" / "configure.py"
LOCAL_CONFIG = REPO / "tools" / "bazel" / "local_config.bzl"
OP_LIBRARY = "//:tfpets/ops/_lib/libtfpets_ops.so"
BAZEL = shutil.which("bazel")

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
