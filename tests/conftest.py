"""Shared pytest fixtures."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

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


def launch(*args: str, cwd=None, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m tfpets.launch ARGS` as a user would; `env` entries add to (or, as None,
  remove from) this process's environment, which keeps TensorFlow's logs quiet by default."""
  environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
  for key, value in (env or {}).items():
    if value is None:
      environ.pop(key, None)
    else:
      environ[key] = value
  return subprocess.run(
    [sys.executable, "-m", "tfpets.launch", *args],
    cwd=cwd or REPO,
    env=environ,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def loopback_worker_env(ports, index: int) -> dict:
  """The environment of worker `index` of a MultiWorkerMirroredStrategy cluster on 127.0.0.1."""
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
  return dict(
    os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", TF_CONFIG=json.dumps(config)
  )
