"""Test images for the super-resolution tests: smooth colour waves with mild noise."""

from __future__ import annotations

import numpy as np


def smooth_image(
  height: int, width: int, seed: int, centre=120, amplitude=80, low=0, high=255
) -> np.ndarray:
  """uint8 [height, width, 3]: per channel a product of two seeded sine waves around `centre`,
  plus noise of standard deviation 6, clipped to [low, high]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  channels = [
    centre + amplitude * np.sin(x / rng.uniform(2, 5) + c) * np.cos(y / rng.uniform(2, 5))
    for c in range(3)
  ]
  noisy = np.stack(channels, axis=-1) + rng.normal(0, 6, size=(height, width, 3))
  return np.clip(np.rint(noisy), low, high).astype(np.uint8)
