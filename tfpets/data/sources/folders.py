"""Class folders: `DIR/<class>/<images>` (the ImageFolder layout).

Classes are the sorted names of the non-empty class folders, labels their indices. Images may sit
in sub-folders of a class folder. Landmark sidecars `<image>.cat` / `<image>.animal` beside an
image are read when present. Everything else found on the way (stray files, hidden files, empty
class folders, broken sidecars) goes into the rejects report. Pixels are not decoded here.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence

from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult, cat_landmarks

# Extensions the decoder can open; the decoder sniffs the real format, this only picks candidates.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})


def is_hidden(name: str) -> bool:
  """Dot-files and dot-folders (.DS_Store, .ipynb_checkpoints, ...) are never dataset content."""
  return name.startswith(".")


def is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def walk_images(root: str, rejects: rejects_lib.RejectsReport) -> List[str]:
  """Image paths under root (recursively, sorted); other files are reported as IGNORED.

  Landmark sidecars beside their image are not reported: the image's reader consumes them.
  """
  images = []
  for dirpath, dirnames, filenames in os.walk(root):
    for name in sorted(d for d in dirnames if is_hidden(d)):
      rejects.add(os.path.join(dirpath, name), "hidden folder", rejects_lib.IGNORED)
    dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
    present = set(filenames)
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      reason = _stray_file_reason(name, present)
      if reason is None:
        images.append(path)
      elif reason:
        rejects.add(path, reason, rejects_lib.IGNORED)
  return images


def _stray_file_reason(name: str, present: set) -> Optional[str]:
  """None for an image, '' for a file consumed with its image, else why the file is ignored."""
  if is_hidden(name):
    return "hidden file"
  if cat_landmarks.is_sidecar_name(name):
    image_name = cat_landmarks.sidecar_image_name(name)
    if image_name not in present:
      return "landmark file without its image"
    first = next(
      image_name + s for s in cat_landmarks.SIDECAR_SUFFIXES if image_name + s in present
    )
    return "" if first == name else f"second landmark file for {image_name}; {first} is used"
  if is_image_name(name):
    return None
  ext = os.path.splitext(name)[1].lower()
  return f"not an image (extension {ext!r})" if ext else "not an image (no extension)"


def load_folders(
  location: str,
  split: str = "",
  source: str = "folder",
  num_points: Optional[int] = None,
  **unused_options,
) -> SourceResult:
  """Reads `location/<class>/...` into labelled records.

  Args:
    location: the root folder; each sub-folder is a class.
    split: stored in every record's `split` (e.g. 'train' for `car_data/train`).
    source: stored in every record's `source`.
    num_points: landmark harmonisation, see cat_landmarks.harmonise_point_counts.
  """
  root = os.path.abspath(location)
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{location}: no such directory (expected DIR/<class>/<images>)")
  rejects = rejects_lib.RejectsReport()
  per_class = {}
  for name in sorted(os.listdir(root)):
    path = os.path.join(root, name)
    if is_hidden(name):
      rejects.add(path, "hidden file or folder", rejects_lib.IGNORED)
    elif not os.path.isdir(path):
      rejects.add(path, "file not inside a class folder", rejects_lib.IGNORED)
    else:
      images = walk_images(path, rejects)
      if images:
        per_class[name] = images
      else:
        rejects.add(path, "empty class (no images); no label given", rejects_lib.SKIPPED)
  class_names = sorted(per_class)
  records = []
  for label, class_name in enumerate(class_names):
    for image_path in per_class[class_name]:
      records.append(_record(image_path, label, class_name, split, source, rejects))
  records = cat_landmarks.harmonise_point_counts(records, rejects, num_points)
  require_records(records, rejects, location)
  return SourceResult(records, class_names, rejects)


def _record(
  path: str,
  label: int,
  class_name: str,
  split: str,
  source: str,
  rejects: rejects_lib.RejectsReport,
) -> ImageRecord:
  points, problem = cat_landmarks.read_sidecar_landmarks(path)
  if problem:
    rejects.add(path, problem, rejects_lib.ANNOTATION_DROPPED)
  return ImageRecord(
    path=path, label=label, class_name=class_name, landmarks=points, source=source, split=split
  )


def require_records(
  records: Sequence[ImageRecord], rejects: rejects_lib.RejectsReport, location: str
) -> None:
  """Raises ValueError naming the location and the first rejects when a source yields nothing."""
  if records:
    return
  examples = "; ".join(f"{e.path}: {e.reason}" for e in rejects.entries[:3])
  raise ValueError(
    f"{location}: no usable images found"
    + (f" ({rejects.summary()}; e.g. {examples})" if examples else "")
  )
