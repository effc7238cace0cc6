"""Stanford Cars (cars196): the devkit layout or the Kaggle class-folder layout.

Devkit layout:
  DIR/devkit/cars_meta.mat              class_names (1, 196)
  DIR/devkit/cars_train_annos.mat       annotations: bbox_x1, bbox_y1, bbox_x2, bbox_y2, class,
                                        fname
  DIR/cars_test_annos_withlabels.mat    the same for the test images (or in DIR/devkit/); optional
  DIR/cars_train/<fname>, DIR/cars_test/<fname>
Boxes are kept as annotated, even where they run past the image: the converter clips and reports.

Kaggle layout `DIR/car_data/{train,test}/<class>/*.jpg` (or DIR itself holding train/ and test/) is
read with the folder loader; the class list is the union of both splits' folders.

Classes are those that occur in the annotations, in class-id order (labels 0..C-1), independent of
the `split` option so that per-split loads share one label space.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np
import scipy.io

from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult, folders

SPLITS = ("all", "train", "test")
TEST_LABELS_FILE = "cars_test_annos_withlabels.mat"
_ANNOTATION_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")

# (fname, class id 1-based, box) per annotation row.
_Annotation = Tuple[str, int, np.ndarray]


def load_stanford_cars(location: str, split: str = "all", **unused_options) -> SourceResult:
  """Reads either layout; `split` is 'all', 'train' or 'test'."""
  if split not in SPLITS:
    raise ValueError(f"stanford_cars split must be one of {', '.join(SPLITS)}, got {split!r}")
  root = os.path.abspath(location)
  kaggle_root = _kaggle_root(root)
  if kaggle_root:
    return _load_kaggle(kaggle_root, split, location)
  devkit = os.path.join(root, "devkit")
  meta_path = os.path.join(devkit, "cars_meta.mat")
  train_annos = os.path.join(devkit, "cars_train_annos.mat")
  missing = [p for p in (meta_path, train_annos) if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(
      f"{location}: not a Stanford Cars layout; missing {', '.join(missing)} (expected "
      "devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/, cars_test/ and "
      f"{TEST_LABELS_FILE}, or car_data/{{train,test}}/<class>/)"
    )
  return _load_devkit(root, split, location)


def _kaggle_root(root: str) -> Optional[str]:
  for candidate in (os.path.join(root, "car_data"), root):
    if all(
      os.path.isdir(os.path.join(candidate, s)) for s in ("train", "test")
    ) and not os.path.isdir(os.path.join(candidate, "devkit")):
      return candidate
  return None


def _load_kaggle(kaggle_root: str, split: str, location: str) -> SourceResult:
  parts = {
    s: folders.load_folders(os.path.join(kaggle_root, s), split=s, source="stanford_cars")
    for s in ("train", "test")
  }
  class_names = sorted(set(parts["train"].class_names) | set(parts["test"].class_names))
  label_of = {name: i for i, name in enumerate(class_names)}
  rejects = rejects_lib.RejectsReport()
  records = []
  for name, part in parts.items():
    rejects.extend(part.rejects)
    if split in ("all", name):
      for record in part.records:
        record.label = label_of[record.class_name]
        records.append(record)
  folders.require_records(records, rejects, location)
  return SourceResult(records, class_names, rejects)


def _load_devkit(root: str, split: str, location: str) -> SourceResult:
  devkit = os.path.join(root, "devkit")
  meta_path = os.path.join(devkit, "cars_meta.mat")
  meta_names = [str(n) for n in np.atleast_1d(_load_mat_field(meta_path, "class_names"))]
  rejects = rejects_lib.RejectsReport()
  annotation_files = {"train": os.path.join(devkit, "cars_train_annos.mat")}
  test_labels = _find_test_labels(root)
  if test_labels:
    annotation_files["test"] = test_labels
  elif split == "test":
    raise FileNotFoundError(
      f"{location}: the test split needs {TEST_LABELS_FILE} in {root} or "
      f"{devkit} (devkit/cars_test_annos.mat has no class labels)"
    )
  elif os.path.isdir(os.path.join(root, "cars_test")):
    rejects.add(
      os.path.join(root, "cars_test"),
      f"test images have no labels: {TEST_LABELS_FILE} not found in {root} or {devkit}",
    )
  annotations = {name: _read_annotations(path) for name, path in annotation_files.items()}
  class_ids = sorted(
    {
      class_id
      for rows in annotations.values()
      for _, class_id, _ in rows
      if 1 <= class_id <= len(meta_names)
    }
  )
  label_of = {class_id: i for i, class_id in enumerate(class_ids)}
  records = []
  for name, rows in annotations.items():
    images_dir = _images_dir(root, f"cars_{name}")
    _report_unannotated(
      images_dir, {fname for fname, _, _ in rows}, annotation_files[name], rejects
    )
    if split not in ("all", name):
      continue
    for fname, class_id, box in rows:
      path = os.path.join(images_dir, fname)
      if class_id not in label_of:
        rejects.add(path, f"class {class_id} is not in cars_meta.mat ({len(meta_names)} names)")
      elif not os.path.isfile(path):
        rejects.add(path, "file not found (listed in the annotations)")
      else:
        records.append(
          ImageRecord(
            path=path,
            label=label_of[class_id],
            class_name=meta_names[class_id - 1],
            box=box,
            source="stanford_cars",
            split=name,
          )
        )
  folders.require_records(records, rejects, location)
  return SourceResult(records, [meta_names[i - 1] for i in class_ids], rejects)


def _find_test_labels(root: str) -> Optional[str]:
  for folder in (root, os.path.join(root, "devkit")):
    path = os.path.join(folder, TEST_LABELS_FILE)
    if os.path.isfile(path):
      return path
  return None


def _images_dir(root: str, name: str) -> str:
  """DIR/cars_train, or DIR/cars_train/cars_train as some mirrors nest it."""
  path = os.path.join(root, name)
  nested = os.path.join(path, name)
  return nested if os.path.isdir(nested) else path


def _load_mat_field(path: str, field: str) -> np.ndarray:
  try:
    contents = scipy.io.loadmat(path, squeeze_me=True)
  except Exception as e:  # scipy raises ValueError, TypeError, MatReadError... for bad files.
    raise ValueError(f"{path}: cannot read .mat file ({e})") from None
  if field not in contents:
    found = ", ".join(k for k in contents if not k.startswith("__"))
    raise ValueError(f"{path}: no variable {field!r} (found: {found or 'none'})")
  return contents[field]


def _read_annotations(path: str) -> List[_Annotation]:
  """Rows of an annotations struct array; ValueError naming the file when fields are missing."""
  table = np.atleast_1d(_load_mat_field(path, "annotations"))
  fields = table.dtype.names or ()
  missing = [f for f in _ANNOTATION_FIELDS if f not in fields]
  if missing:
    raise ValueError(
      f"{path}: annotations lack field(s) {', '.join(missing)} "
      f"(found: {', '.join(fields)}; a file without 'class' has no labels)"
    )
  rows = []
  for entry in table:
    box = np.array([float(entry[f]) for f in _ANNOTATION_FIELDS[:4]], np.float32)
    rows.append((str(entry["fname"]), int(entry["class"]), box))
  return rows


def _report_unannotated(
  images_dir: str, annotated: set, annotation_file: str, rejects: rejects_lib.RejectsReport
) -> None:
  if not os.path.isdir(images_dir):
    return
  for name in sorted(os.listdir(images_dir)):
    if name not in annotated:
      reason = (
        f"not in {os.path.basename(annotation_file)}"
        if folders.is_image_name(name)
        else "not an image"
      )
      rejects.add(os.path.join(images_dir, name), reason, rejects_lib.IGNORED)
