"""Landmark sidecar files and the Kaggle CAT dataset (docs/landmarks.md, "Formats and measures").

A sidecar is a one-line text file named after its image plus `.cat` or `.animal`
(`00000001_000.jpg` + `00000001_000.jpg.cat`) holding `N x0 y0 ... x{N-1} y{N-1}`: 9 points
for the raw Kaggle files, 5 for the reduced variant (eyes, mouth, ear tips). Points may lie outside
the image (ears cut off in the photo), so nothing here assumes in-image points; the converter
checks them against the decoded size.

`load_cat_dataset` reads the Kaggle layout `DIR/CAT_00/.../x.jpg` + `x.jpg.cat`. A landmark dataset
without landmarks is useless, so images whose sidecar is missing or broken are skipped unless
`keep_unannotated=True`.
"""

from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

import numpy as np

from tfpets.data import rejects as rejects_lib
from tfpets.data.records import FIVE_OF_NINE, ImageRecord
from tfpets.data.sources import SourceResult

# Both names are in use: `.cat` (Kaggle, frederic) and `.animal` (the pet project's loader).
SIDECAR_SUFFIXES = (".cat", ".animal")
VALID_POINT_COUNTS = (9, 5)


def parse_landmark_file(path: str) -> np.ndarray:
  """Reads a sidecar into an [N, 2] float32 array of (x, y) pixels.

  Raises:
    ValueError: naming the file and the problem (unreadable, empty, a token that is not a number, a
      point count that disagrees with the numbers that follow, non-finite values).
  """
  try:
    with open(path, encoding="utf-8") as f:
      tokens = f.read().split()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: cannot read landmark file ({e})") from None
  if not tokens:
    raise ValueError(f"{path}: empty landmark file")
  try:
    count = int(tokens[0])
  except ValueError:
    raise ValueError(f"{path}: first token {tokens[0]!r} is not a point count") from None
  if count <= 0:
    raise ValueError(f"{path}: point count {count} must be positive")
  values = tokens[1:]
  if len(values) != 2 * count:
    raise ValueError(
      f"{path}: header says {count} points but {len(values)} numbers follow (expected {2 * count})"
    )
  coords = []
  for token in values:
    try:
      value = float(token)
    except ValueError:
      raise ValueError(f"{path}: {token!r} is not a number") from None
    if not math.isfinite(value):
      raise ValueError(f"{path}: non-finite coordinate {token!r}")
    coords.append(value)
  return np.asarray(coords, np.float32).reshape(count, 2)


def write_landmark_file(path: str, landmarks: np.ndarray) -> str:
  """Writes `N x0 y0 ...` (count as int, coordinates as Python str(float)); returns the path."""
  points = np.asarray(landmarks, np.float64).reshape(-1, 2)
  tokens = [str(len(points))] + [str(float(v)) for v in points.reshape(-1)]
  with open(path, "w", encoding="utf-8") as f:
    f.write(" ".join(tokens) + "\n")
  return path


def to_five_points(landmarks9: np.ndarray) -> np.ndarray:
  """Reduces 9 Kaggle points to the 5-point format (eyes, mouth, ear tips); 5 pass through."""
  points = np.asarray(landmarks9, np.float32).reshape(-1, 2)
  if len(points) == 5:
    return points
  if len(points) != 9:
    raise ValueError(f"to_five_points needs 9 (or 5) points, got {len(points)}")
  return points[list(FIVE_OF_NINE)]


def find_sidecar(image_path: str) -> Optional[str]:
  """The first existing `<image>.cat` / `<image>.animal`, or None."""
  for suffix in SIDECAR_SUFFIXES:
    if os.path.isfile(image_path + suffix):
      return image_path + suffix
  return None


def is_sidecar_name(name: str) -> bool:
  return name.endswith(SIDECAR_SUFFIXES)


def sidecar_image_name(name: str) -> str:
  """`x.jpg.cat` -> `x.jpg`."""
  return name.rsplit(".", 1)[0]


def read_sidecar_landmarks(image_path: str) -> Tuple[Optional[np.ndarray], str]:
  """(landmarks, problem): landmarks of the image's sidecar, or None and why ('' = no sidecar)."""
  sidecar = find_sidecar(image_path)
  if sidecar is None:
    return None, ""
  try:
    points = parse_landmark_file(sidecar)
  except ValueError as e:
    return None, str(e)
  if len(points) not in VALID_POINT_COUNTS:
    return None, f"{sidecar}: {len(points)} points, expected 9 or 5"
  return points, ""


def harmonise_point_counts(
  records: List[ImageRecord],
  rejects: rejects_lib.RejectsReport,
  num_points: Optional[int] = None,
  keep_unannotated: bool = True,
) -> List[ImageRecord]:
  """Makes every record's landmarks the same size so that they can be batched.

  num_points=None keeps the files' own count unless the dataset mixes 9- and 5-point files, in which
  case the 9-point ones are reduced to 5 (the common subset) and reported as CONVERTED. num_points=5
  reduces all silently (it was asked for). num_points=9 cannot expand 5-point files: their records
  lose the annotation (ANNOTATION_DROPPED) or, with keep_unannotated=False, are SKIPPED. Records
  without landmarks pass through. Returns the records that remain, in order.
  """
  if num_points not in (None, 5, 9):
    raise ValueError(f"num_points must be 9, 5 or None, got {num_points!r}")
  counts = {len(r.landmarks) for r in records if r.landmarks is not None}
  target = num_points or (5 if counts == {5, 9} else None)
  if target is None:
    return list(records)
  kept = []
  for record in records:
    if record.landmarks is not None and len(record.landmarks) != target:
      if target == 5:
        record.landmarks = to_five_points(record.landmarks)
        if num_points is None:
          rejects.add(
            record.path,
            "9 landmarks reduced to 5: the dataset mixes 9- and 5-point files",
            rejects_lib.CONVERTED,
          )
      elif keep_unannotated:
        record.landmarks = None
        rejects.add(
          record.path,
          "5-point landmark file where 9 points are required",
          rejects_lib.ANNOTATION_DROPPED,
        )
      else:
        rejects.add(record.path, "5-point landmark file where 9 points are required")
        continue
    kept.append(record)
  return kept


def load_cat_dataset(
  location: str,
  folders_as_classes: bool = False,
  keep_unannotated: bool = False,
  num_points: Optional[int] = None,
  **unused_options,
) -> SourceResult:
  """Reads the Kaggle CAT layout (any depth) into records with landmarks.

  Args:
    location: the dataset root (holding CAT_00 ... CAT_06, or any folder tree of images+sidecars).
    folders_as_classes: label each image by its top-level folder instead of the single class 'cat'.
    keep_unannotated: keep images whose sidecar is missing or broken (landmarks=None, a broken one
      reported as ANNOTATION_DROPPED) instead of skipping them.
    num_points: 9, 5 or None (see harmonise_point_counts).
  """
  # folders imports this module for sidecars, so a top-level import here would be circular.
  from tfpets.data.sources import folders  # pylint: disable=g-import-not-at-top

  root = os.path.abspath(location)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{location}: no such directory (expected the CAT dataset root)")
  rejects = rejects_lib.RejectsReport()
  records = []
  for path in folders.walk_images(root, rejects):
    top_folder = os.path.relpath(path, root).split(os.sep)[0]
    if folders_as_classes and top_folder == os.path.basename(path):
      rejects.add(path, "image not inside a class folder (folders_as_classes=True)")
      continue
    record = _annotated_record(
      path, top_folder if folders_as_classes else "cat", rejects, keep_unannotated
    )
    if record is not None:
      records.append(record)
  records = harmonise_point_counts(records, rejects, num_points, keep_unannotated)
  folders.require_records(records, rejects, location)
  class_names = sorted({r.class_name for r in records})
  index = {name: i for i, name in enumerate(class_names)}
  for record in records:
    record.label = index[record.class_name]
  return SourceResult(records, class_names, rejects)


def _annotated_record(
  path: str, class_name: str, rejects: rejects_lib.RejectsReport, keep_unannotated: bool
) -> Optional[ImageRecord]:
  points, problem = read_sidecar_landmarks(path)
  if points is None:
    reason = problem or "no landmark file (.cat or .animal)"
    if not keep_unannotated:
      rejects.add(path, reason, rejects_lib.SKIPPED)
      return None
    if problem:
      rejects.add(path, reason, rejects_lib.ANNOTATION_DROPPED)
  return ImageRecord(
    path=path, label=-1, class_name=class_name, landmarks=points, species="cat", source="cat"
  )
