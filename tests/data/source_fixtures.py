"""Builders of tiny datasets in the exact on-disk formats the source loaders read.

Each builder writes real image files (made with PIL) under a pytest tmp_path and returns the facts a
test needs to check a loader independently: which files exist, which must be skipped or ignored and
why, and the annotations that were written.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tarfile
from typing import Dict, List, Tuple

import numpy as np
import scipy.io
from PIL import Image

# (breed, CLASS-ID, SPECIES) as in the official list.txt; ids 1, 2, 6 as in the shared slice.
OXFORD_BREEDS = (("Abyssinian", 1, 1), ("american_bulldog", 2, 2), ("Bengal", 6, 1))
NINE_POINTS = np.array(
  [[10, 12], [30, 12], [20, 28], [4, 2], [6, -3], [9, 4], [31, 4], [35, -2], [38, 3]], np.float32
)


def image_array(width: int, height: int, seed: int) -> np.ndarray:
  """Smooth random RGB content: JPEG-friendly and different per seed."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))


def write_jpeg(path, width: int = 40, height: int = 30, seed: int = 0) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image_array(width, height, seed)).save(path, format="JPEG", quality=90)
  return path


def write_text(path, text: str) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  return path


def sidecar_text(points: np.ndarray) -> str:
  points = np.asarray(points).reshape(-1, 2)
  return " ".join([str(len(points))] + [str(float(v)) for v in points.reshape(-1)])


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pet


@dataclasses.dataclass
class OxfordFixture:
  root: pathlib.Path
  listed: Dict[str, Tuple[int, int]]  # name -> (CLASS-ID, SPECIES), list.txt order
  split_of: Dict[str, str]  # name -> 'trainval' / 'test'
  boxes: Dict[str, Tuple[int, int, int, int]]  # name -> xml box (valid ones)
  sizes: Dict[str, Tuple[int, int]]  # name -> (width, height) of the image written
  missing_images: List[str]  # listed, no file
  broken_xmls: List[str]  # trainval names whose xml is unreadable
  unlisted_images: List[str]  # image files not in list.txt
  stray_files: List[str]  # .mat files in images/


def make_oxford_pets(root, with_defects: bool = True, per_split: int = 2) -> OxfordFixture:
  """Official layout; with_defects adds a missing image and a broken xml (TFDS cannot cope)."""
  root = pathlib.Path(root)
  images, annotations = root / "images", root / "annotations"
  (annotations / "xmls").mkdir(parents=True)
  (annotations / "trimaps").mkdir()
  fx = OxfordFixture(root, {}, {}, {}, {}, [], [], [], [])
  images.mkdir()
  seed = 0
  for breed, class_id, species in OXFORD_BREEDS:
    indices = [10 + k for k in range(2 * per_split)]
    if breed == "Abyssinian":
      indices[0] = 5  # as in the release: Abyssinian_5.jpg is an RGBA PNG (TFDS re-encodes it)
    for k, index in enumerate(indices):
      name = f"{breed}_{index}"
      seed += 1
      width, height = 50 + seed, 40 + (seed % 3)
      fx.listed[name] = (class_id, species)
      fx.split_of[name] = "trainval" if k < per_split else "test"
      fx.sizes[name] = (width, height)
      if index == 5:
        alpha = np.full((height, width, 1), 200, np.uint8)
        rgba = np.concatenate([image_array(width, height, seed), alpha], axis=-1)
        Image.fromarray(rgba, "RGBA").save(images / f"{name}.jpg", format="PNG")
      else:
        write_jpeg(images / f"{name}.jpg", width, height, seed)
      trimap = np.full((height, width), 2, np.uint8)
      trimap[5:-5, 5:-5] = 1
      Image.fromarray(trimap, "L").save(annotations / "trimaps" / f"{name}.png")
      if fx.split_of[name] == "trainval":
        box = (3 + seed % 5, 4, 30 + seed % 7, 25)
        fx.boxes[name] = box
        _write_voc(
          annotations / "xmls" / f"{name}.xml",
          name,
          width,
          height,
          box,
          "cat" if species == 1 else "dog",
        )
  if with_defects:
    fx.listed["Bengal_9"] = (6, 1)
    fx.split_of["Bengal_9"] = "test"
    fx.missing_images.append("Bengal_9")
    broken = "american_bulldog_10"
    (annotations / "xmls" / f"{broken}.xml").write_text("<annotation><size>")
    del fx.boxes[broken]
    fx.broken_xmls.append(broken)
  # As in the release: a GIF named .jpg that list.txt does not mention, and stray .mat files.
  gif = Image.fromarray(image_array(25, 20, 99)).convert("P")
  gif.save(images / "Abyssinian_34.jpg", format="GIF")
  fx.unlisted_images.append("Abyssinian_34.jpg")
  (images / "Abyssinian_100.mat").write_bytes(b"MATLAB 5.0 MAT-file, not really")
  fx.stray_files.append("Abyssinian_100.mat")
  _write_lists(annotations, fx)
  return fx


def _mkdir(path: pathlib.Path) -> pathlib.Path:
  path.mkdir(parents=True, exist_ok=True)
  return path


def _write_lists(annotations: pathlib.Path, fx: OxfordFixture) -> None:
  lines = {
    "list": ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids"],
    "trainval": [],
    "test": [],
  }
  for name, (class_id, species) in fx.listed.items():
    line = f"{name} {class_id} {species} 1"
    lines["list"].append(line)
    lines[fx.split_of[name]].append(line)
  for stem, rows in lines.items():
    (annotations / f"{stem}.txt").write_text("\n".join(rows) + "\n")


def _write_voc(
  path: pathlib.Path,
  name: str,
  width: int,
  height: int,
  box: Tuple[int, int, int, int],
  species: str,
) -> None:
  xmin, ymin, xmax, ymax = box
  path.write_text(
    f"<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename>"
    "<source><database>OXFORD-IIIT Pet Dataset</database><annotation>OXIIIT</annotation>"
    f"<image>flickr</image></source><size><width>{width}</width><height>{height}</height>"
    f"<depth>3</depth></size><segmented>0</segmented><object><name>{species}</name>"
    "<pose>Frontal</pose><truncated>0</truncated><occluded>0</occluded><bndbox>"
    f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>"
    "<difficult>0</difficult></object></annotation>"
  )


# ---------------------------------------------------------------------------------------------
# Stanford Cars

CAR_NAMES = (
  "AM General Hummer SUV 2000",
  "Acura RL Sedan 2012",
  "Acura TL Sedan 2012",
  "Acura TL Type-S 2008",
)
_CAR_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


@dataclasses.dataclass
class CarsFixture:
  root: pathlib.Path
  annotations: Dict[str, List[Tuple[str, int, Tuple[int, int, int, int]]]]  # split -> rows
  sizes: Dict[Tuple[str, str], Tuple[int, int]]  # (split, fname) -> (width, height)
  missing_images: List[str]  # train fnames annotated but absent
  unannotated_images: List[str]  # train fnames present but not annotated
  stray_files: List[str]  # non-image files in cars_train/


def save_annotations_mat(path, rows, with_class: bool = True) -> None:
  """A devkit `annotations` struct array (1, N) with the devkit's field order and integer types."""
  fields = _CAR_FIELDS if with_class else tuple(f for f in _CAR_FIELDS if f != "class")
  table = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
  for i, (fname, class_id, box) in enumerate(rows):
    values = dict(zip(_CAR_FIELDS[:4], box), **{"class": class_id})
    for field in fields[:-1]:
      table[field][0, i] = np.array([[values[field]]], np.uint16)
    table["fname"][0, i] = np.array([fname])
  scipy.io.savemat(str(path), {"annotations": table})


def save_meta_mat(path, names) -> None:
  scipy.io.savemat(str(path), {"class_names": np.array([list(names)], dtype=object)})


def make_stanford_cars(
  root, with_defects: bool = True, test_labels_in_devkit: bool = False, per_split: int = 3
) -> CarsFixture:
  """Devkit layout with 4 classes; class 3 is annotated for train only, class 4 never (unused)."""
  root = pathlib.Path(root)
  devkit = _mkdir(root / "devkit")
  fx = CarsFixture(root, {"train": [], "test": []}, {}, [], [], [])
  seed = 100
  for split in ("train", "test"):
    classes = (1, 2, 3) if split == "train" else (1, 2)
    n = 0
    for class_id in classes:
      for _ in range(per_split):
        n += 1
        seed += 1
        fname = f"{n:05d}.jpg"
        width, height = 60 + seed % 9, 40 + seed % 5
        box = (2 + n, 3, width - 4, height - 2)
        fx.annotations[split].append((fname, class_id, box))
        fx.sizes[(split, fname)] = (width, height)
        write_jpeg(root / f"cars_{split}" / fname, width, height, seed)
  if with_defects:
    fname, class_id, (x1, y1, _, y2) = fx.annotations["train"][0]
    width, _ = fx.sizes[("train", fname)]
    fx.annotations["train"][0] = (fname, class_id, (x1, y1, width + 15, y2))  # runs past the image
    fx.annotations["train"].append(("09999.jpg", 1, (1, 1, 10, 10)))
    fx.missing_images.append("09999.jpg")
    write_jpeg(root / "cars_train" / "08888.jpg", 30, 30, 7)
    fx.unannotated_images.append("08888.jpg")
    write_text(root / "cars_train" / "README.txt", "not an image")
    fx.stray_files.append("README.txt")
  save_meta_mat(devkit / "cars_meta.mat", CAR_NAMES)
  save_annotations_mat(devkit / "cars_train_annos.mat", fx.annotations["train"])
  save_annotations_mat(devkit / "cars_test_annos.mat", fx.annotations["test"], with_class=False)
  labels_dir = devkit if test_labels_in_devkit else root
  save_annotations_mat(labels_dir / "cars_test_annos_withlabels.mat", fx.annotations["test"])
  return fx


def make_kaggle_cars(root) -> Dict[str, Dict[str, List[str]]]:
  """`car_data/{train,test}/<class>/*.jpg`; returns split -> class -> file names."""
  layout = {
    "train": {"Acura RL Sedan 2012": ["a.jpg", "b.jpg"], "Audi A5 Coupe 2012": ["c.jpg"]},
    "test": {"Acura RL Sedan 2012": ["d.jpg"], "BMW M3 Coupe 2012": ["e.jpg"]},
  }
  seed = 0
  for split, classes in layout.items():
    for class_name, files in classes.items():
      for name in files:
        seed += 1
        write_jpeg(pathlib.Path(root) / "car_data" / split / class_name / name, 32, 24, seed)
  return layout


# ---------------------------------------------------------------------------------------------
# TFDS archives: tiny archives in the official layout, read from a manual dir


def tar_folder(archive, root, members, gzip: bool) -> pathlib.Path:
  """Writes `members` (paths relative to root) into a tar archive, gzipped or not."""
  with tarfile.open(archive, "w:gz" if gzip else "w") as tar:
    for member in members:
      tar.add(os.path.join(root, member), arcname=member)
  return pathlib.Path(archive)


def make_oxford_archives(fx: OxfordFixture, out_dir) -> pathlib.Path:
  out_dir = _mkdir(pathlib.Path(out_dir))
  # The real images.tar.gz is an uncompressed tar despite its name; mimic that.
  tar_folder(out_dir / "images.tar.gz", fx.root, ["images"], gzip=False)
  tar_folder(out_dir / "annotations.tar.gz", fx.root, ["annotations"], gzip=True)
  return out_dir


def make_cars_archives(fx: CarsFixture, out_dir) -> pathlib.Path:
  out_dir = _mkdir(pathlib.Path(out_dir))
  tar_folder(out_dir / "cars_train.tgz", fx.root, ["cars_train"], gzip=True)
  tar_folder(out_dir / "cars_test.tgz", fx.root, ["cars_test"], gzip=True)
  tar_folder(out_dir / "car_devkit.tgz", fx.root, ["devkit"], gzip=True)
  (out_dir / "cars_test_annos_withlabels.mat").write_bytes(
    (fx.root / "cars_test_annos_withlabels.mat").read_bytes()
  )
  return out_dir
