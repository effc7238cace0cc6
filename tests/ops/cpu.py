"""What the test machine's CPU offers, for the tests of the CPU kernels."""

from __future__ import annotations

import pathlib


def has_avx2() -> bool:
  """Whether the kernels' AVX2 loops run here (Linux; False elsewhere)."""
  try:
    return " avx2" in pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return False
