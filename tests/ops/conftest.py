"""Fixtures for the fused-op tests: the custom op library, built if needed."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def custom_ops(tmp_path_factory):
  """`tfpets.ops` with the custom library loaded.

  Uses the library `import tfpets.ops` loaded (it is only loaded when it was
  built from the current kernel sources); otherwise builds the sources once
  per session into a temporary directory (CPU only). Skips when there is no
  C++ compiler or custom ops are disabled.
  """
  import tfpets.ops as ops  # pylint: disable=g-import-not-at-top
  from tfpets.ops import build  # pylint: disable=g-import-not-at-top

  if ops.library_loaded():
    return ops
  if os.environ.get("TFPETS_OPS_DISABLE") == "1":
    pytest.skip("custom ops disabled by TFPETS_OPS_DISABLE=1")
  compiler = os.environ.get("CXX", "g++")
  if shutil.which(compiler) is None:
    pytest.skip(f"no C++ compiler ({compiler}) to build the custom ops")
  path = build.build_ops(tmp_path_factory.mktemp("tfpets_ops"), cuda=False)
  if ops.load_library(path) is None:
    pytest.fail(f"built {path} but could not load it")
  return ops
