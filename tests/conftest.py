"""Shared pytest fixtures."""

from __future__ import annotations

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests run on 2 cores next to other work; keep TF quiet and deterministic.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """../shared/data beside the checkout; skipped where a fresh clone has none."""
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data is not present beside this checkout")
  return SHARED_DATA


@pytest.fixture(scope="session")
def oxford_pets_3class(shared_data) -> pathlib.Path:
  path = shared_data / "oxford_pets_3class"
  if not path.is_dir():
    pytest.skip("../shared/data/oxford_pets_3class is not present")
  return path
