"""Pillow helpers the report pictures share (confusion matrices, experiment charts)."""

from __future__ import annotations

from PIL import ImageFont


def font(size: int):
  """Pillow's default font at `size` pixels, or its one bitmap size when Pillow lacks FreeType."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default()
