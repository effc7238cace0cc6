"""ImageRecord: the one in-memory description of a labelled image, whatever its source.

Every source (class folders, CSV, Oxford-IIIT Pet, Stanford Cars, tfds, Kaggle CAT, the embedded
synthetic pets) yields ImageRecords; every writer consumes them. Coordinates are pixels in the image
as decoded (after EXIF orientation), x to the right and y down.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

# Kaggle CAT point order, as its .cat files store them (docs/landmarks.md, "Formats and measures").
LANDMARK_NAMES_9 = (
  "left_eye",
  "right_eye",
  "mouth",
  "left_ear_1",
  "left_ear_2",
  "left_ear_3",
  "right_ear_1",
  "right_ear_2",
  "right_ear_3",
)
# The 5-point variant keeps 0-based points [0, 1, 2, 4, 7] of the 9, as zylamarek/cat-dataset's
# utils.py, remove_inner_ear_landmarks(), derives it.
FIVE_OF_NINE = (0, 1, 2, 4, 7)
LANDMARK_NAMES_5 = ("left_eye", "right_eye", "mouth", "left_ear_tip", "right_ear_tip")


@dataclasses.dataclass
class ImageRecord:
  """One labelled image.

  Attributes:
    path: where the image comes from (a file path, or `tfds:<name>/<split>/<id>`).
    label: integer class index into the dataset's class list.
    class_name: human-readable class name.
    box: optional head/object box [xmin, ymin, xmax, ymax] in pixels, float32.
    landmarks: optional [N, 2] float32 array of (x, y) pixels, N = 9 or 5.
    species: optional 'cat' / 'dog' (pets) or '' when unknown.
    source: the source kind that produced the record ('folder', 'oxford_pets', ...).
    split: optional split name given by the source ('train', 'test', ...).
    image_bytes: encoded bytes when the image does not live in a file (tfds).
    synthetic: True for a generated image (docs/augment.md); such images only ever train.
  """

  path: str
  label: int
  class_name: str
  box: Optional[np.ndarray] = None
  landmarks: Optional[np.ndarray] = None
  species: str = ""
  source: str = ""
  split: str = ""
  image_bytes: Optional[bytes] = None
  synthetic: bool = False

  def __post_init__(self):
    if self.box is not None:
      self.box = np.asarray(self.box, np.float32).reshape(4)
    if self.landmarks is not None:
      self.landmarks = np.asarray(self.landmarks, np.float32).reshape(-1, 2)

  @property
  def image_id(self) -> str:
    """File stem, the identifier used in split lists and reports."""
    name = self.path.replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name

  def read_bytes(self) -> bytes:
    if self.image_bytes is not None:
      return self.image_bytes
    with open(self.path, "rb") as f:
      return f.read()


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
  """Tight [xmin, ymin, xmax, ymax] box around landmark points."""
  pts = np.asarray(landmarks, np.float32).reshape(-1, 2)
  return np.concatenate([pts.min(axis=0), pts.max(axis=0)]).astype(np.float32)
