"""A tiny converted dataset the classifier tests share: class folders of PNGs in three splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tfpets.data import convert

CLASSES = ("abyssinian", "beagle", "chihuahua")
PER_CLASS = 8  # 4 train, 2 val, 2 test


def class_image(label: int, index: int, size: int = 40) -> np.ndarray:
  """A learnable image: each class has its own colour, with noise."""
  rng = np.random.default_rng(1000 * label + index)
  colour = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]][label], np.float64)
  pixels = colour + rng.normal(0, 25, (size, size + 6, 3))
  return np.clip(pixels, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def class_records(tmp_path_factory):
  """The converted dataset's workdir (records/shards inside)."""
  root = tmp_path_factory.mktemp("classify_records")
  for label, name in enumerate(CLASSES):
    folder = root / "folders" / name
    folder.mkdir(parents=True)
    for i in range(PER_CLASS):
      Image.fromarray(class_image(label, i)).save(folder / f"{name}_{i}.png")
  options = convert.ConvertOptions(
    splits="train=0.5,val=0.25,test=0.25", dedupe="off", gan_resolution=0, workers=1
  )
  convert.convert_dataset(f"folder:{root / 'folders'}", root, options)
  return root
