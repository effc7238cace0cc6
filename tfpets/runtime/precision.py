"""Mixed-precision policy, set once per run."""

from __future__ import annotations

import keras

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def set_precision(name: str) -> None:
  if name not in PRECISIONS:
    raise ValueError(f"--precision={name!r} is not one of {', '.join(PRECISIONS)}")
  keras.mixed_precision.set_global_policy(name)
