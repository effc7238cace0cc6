"""Lists the images of a folder, a glob or a CSV file, with their labels when the source has them.

Sources follow GrabAI's `wsdan_predict.py`: a folder of images, a folder of class folders
(torchvision `ImageFolder`: the label is the position of the class folder in sorted order) or a CSV
of `image,label` rows with paths relative to a data folder.
"""

from __future__ import annotations

import csv
import glob
import os
from typing import List, Optional, Sequence, Tuple, Union

from tfpets.errors import ArgumentError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
GLOB_CHARACTERS = "*?["

Listing = List[Tuple[str, Optional[int]]]


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def images_in(folder: str, recursive: bool) -> List[str]:
  """Image files of `folder` (and, if `recursive`, its subfolders), hidden ones left out, sorted."""
  if not recursive:
    names = sorted(os.listdir(folder))
    return [
      os.path.join(folder, n)
      for n in names
      if _is_image_name(n) and os.path.isfile(os.path.join(folder, n))
    ]
  found = []
  for root, dirs, files in os.walk(folder, followlinks=True):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    found.extend(os.path.join(root, n) for n in sorted(files) if _is_image_name(n))
  return found


def _list_folder(folder: str) -> Listing:
  """Top-level images without labels, or ImageFolder class folders with labels."""
  subfolders = sorted(
    n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)) and n[0] != "."
  )
  images = images_in(folder, recursive=False)
  if not subfolders:
    return [(path, None) for path in images]
  if images:
    raise ArgumentError(
      "source",
      folder,
      "holds both images and subfolders; give a folder of images only, a folder of class folders "
      f"only, or a glob such as {os.path.join(folder, '*.jpg')}",
    )
  return [
    (path, label)
    for label, name in enumerate(subfolders)
    for path in images_in(os.path.join(folder, name), recursive=True)
  ]


def _parse_label(value: str, csv_path: str, line: int) -> Optional[int]:
  value = value.strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise ArgumentError(
      "source", csv_path, f"line {line}: label {value!r} is not an integer class index"
    ) from None


def _list_csv(csv_path: str, data_dir: Optional[str], headings: Sequence[str]) -> Listing:
  image_column, label_column = headings
  base = data_dir or os.path.dirname(csv_path)
  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    if image_column not in columns:
      raise ArgumentError(
        "source",
        csv_path,
        f"no {image_column!r} column (the header has {', '.join(columns) or 'nothing'})",
      )
    listing = []
    for line, row in enumerate(reader, start=2):
      path = (row.get(image_column) or "").strip()
      if not path:
        raise ArgumentError("source", csv_path, f"line {line}: empty {image_column!r}")
      label = None
      if label_column in columns:
        label = _parse_label(row.get(label_column) or "", csv_path, line)
      listing.append((os.path.join(base, path), label))
  return listing


def list_images(
  source: str,
  data_dir: Optional[str] = None,
  headings: Union[str, Sequence[str]] = ("image", "label"),
) -> Listing:
  """[(path, label or None)] for a folder, a glob pattern or a CSV file.

  A folder: its images (not recursive), unlabelled; or, when it holds only subfolders, one class
  per subfolder, labelled by its position in sorted order (their images found recursively, as
  torchvision's ImageFolder does). A glob: the files it matches, sorted, unlabelled. A `.csv`
  file: rows with an image column and an optional integer label column (`headings`, a pair or
  "image,label"); relative paths are taken from `data_dir` (None or "": the CSV's folder).
  """
  if isinstance(headings, str):
    headings = [h.strip() for h in headings.split(",")]
  if len(headings) != 2 or not all(headings):
    raise ArgumentError("headings", list(headings), "must name the image and label columns")
  if any(c in source for c in GLOB_CHARACTERS) and not os.path.exists(source):
    listing = [(p, None) for p in sorted(glob.glob(source, recursive=True)) if os.path.isfile(p)]
  elif os.path.isdir(source):
    listing = _list_folder(source)
  elif os.path.isfile(source) and source.lower().endswith(".csv"):
    listing = _list_csv(source, data_dir, headings)
  elif os.path.isfile(source):
    listing = [(source, None)]
  else:
    raise ArgumentError("source", source, "no such file, folder or matching files")
  if not listing:
    raise ArgumentError("source", source, "no images found")
  return listing


def as_listing(
  sources,
  data_dir: Optional[str] = None,
  headings: Union[str, Sequence[str]] = ("image", "label"),
) -> Listing:
  """A listing from a source for `list_images`, or from (path, label or None) pairs or paths."""
  if isinstance(sources, (str, os.PathLike)):
    return list_images(os.fspath(sources), data_dir, headings)
  listing = []
  for item in sources:
    if isinstance(item, (str, os.PathLike)):
      listing.append((os.fspath(item), None))
    else:
      path, label = item
      listing.append((os.fspath(path), None if label is None else int(label)))
  if not listing:
    raise ValueError("no images given")
  return listing
