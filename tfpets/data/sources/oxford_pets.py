"""Oxford-IIIT Pet in its official release layout (Parkhi et al., "Cats and Dogs", CVPR 2012).

  DIR/images/<Breed>_<n>.jpg            (plus three stray .mat files in the release)
  DIR/annotations/list.txt              Image CLASS-ID SPECIES BREED-ID, all annotated images
  DIR/annotations/trainval.txt          the paper's split, same columns
  DIR/annotations/test.txt
  DIR/annotations/xmls/<name>.xml       PASCAL VOC head box, trainval images only

Classes are the breeds that occur in the annotation files, in CLASS-ID order (labels 0..C-1 follow
that order, so the 3-breed slice with ids 1, 2, 6 gets labels 0, 1, 2). The class list does not
depend on the `split` option, so records loaded per split share one label space. Files are listed,
not decoded: the PNG and GIF named `.jpg` in the release are the decoder's business.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ElementTree
from typing import Dict, List, Optional, Tuple

import numpy as np

from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult, folders

SPLITS = ("all", "trainval", "test")
# Images of a known breed that list.txt omits (Abyssinian_34, a GIF, among them) are kept under this
# split with the label their file name gives, so that converting the release loses no image.
UNLISTED = "unlisted"
SPECIES = {1: "cat", 2: "dog"}
LIST_FILES = ("list.txt", "trainval.txt", "test.txt")


@dataclasses.dataclass
class _Entry:
  class_id: int
  breed: str
  species: str
  split: str = ""


def load_oxford_pets(location: str, split: str = "all", **unused_options) -> SourceResult:
  """Reads the official layout; `split` is 'all' (every list.txt image), 'trainval' or 'test'."""
  if split not in SPLITS:
    raise ValueError(f"oxford_pets split must be one of {', '.join(SPLITS)}, got {split!r}")
  images_dir, annotations_dir = _check_layout(location)
  rejects = rejects_lib.RejectsReport()
  entries = _read_lists(annotations_dir, rejects)
  class_ids = sorted({e.class_id for e in entries.values()})
  class_names = [_breed_of_class(class_id, entries, annotations_dir) for class_id in class_ids]
  label_of = {class_id: i for i, class_id in enumerate(class_ids)}
  records = []
  for path, breed in _unlisted_images(images_dir, entries, rejects):
    if split == "all" and breed in class_names:
      label = class_names.index(breed)
      species = next(e.species for e in entries.values() if e.breed == breed)
      records.append(
        ImageRecord(
          path=path,
          label=label,
          class_name=breed,
          species=species,
          source="oxford_pets",
          split=UNLISTED,
        )
      )
    else:
      rejects.add(path, "not in annotations/list.txt", rejects_lib.IGNORED)
  for name, entry in entries.items():
    if split != "all" and entry.split != split:
      continue
    path = os.path.join(images_dir, name + ".jpg")
    if not os.path.isfile(path):
      rejects.add(path, "image file missing (listed in annotations/list.txt)")
      continue
    box = _head_box(os.path.join(annotations_dir, "xmls", name + ".xml"), rejects)
    records.append(
      ImageRecord(
        path=path,
        label=label_of[entry.class_id],
        class_name=entry.breed,
        box=box,
        species=entry.species,
        source="oxford_pets",
        split=entry.split,
      )
    )
  folders.require_records(records, rejects, location)
  return SourceResult(records, class_names, rejects)


def _check_layout(location: str) -> Tuple[str, str]:
  root = os.path.abspath(location)
  images_dir = os.path.join(root, "images")
  annotations_dir = os.path.join(root, "annotations")
  expected = [images_dir] + [os.path.join(annotations_dir, n) for n in LIST_FILES]
  missing = [p for p in expected if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(
      f"{location}: not the Oxford-IIIT Pet layout; missing {', '.join(missing)} (expected "
      "images/ and annotations/{list.txt,trainval.txt,test.txt,xmls/})"
    )
  return images_dir, annotations_dir


def _read_lists(annotations_dir: str, rejects: rejects_lib.RejectsReport) -> Dict[str, _Entry]:
  """name -> entry from list.txt, with the split taken from trainval.txt / test.txt."""
  entries: Dict[str, _Entry] = {}
  for list_name, split in (("list.txt", ""), ("trainval.txt", "trainval"), ("test.txt", "test")):
    path = os.path.join(annotations_dir, list_name)
    for name, entry in _parse_list_file(path, rejects):
      known = entries.setdefault(name, entry)
      if split and known.split and known.split != split:
        rejects.add(
          name,
          f"listed in both {known.split}.txt and {list_name}; kept in {known.split}",
          rejects_lib.ANNOTATION_DROPPED,
        )
      elif split:
        known.split = split
  return entries


def _parse_list_file(path: str, rejects: rejects_lib.RejectsReport) -> List[Tuple[str, _Entry]]:
  parsed = []
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      fields = line.split()
      where = f"{path}:{line_number}"
      if len(fields) != 4 or not all(x.isdigit() for x in fields[1:]):
        rejects.add(where, f"malformed line {line!r} (expected 'Image CLASS-ID SPECIES BREED-ID')")
        continue
      name, class_id, species = fields[0], int(fields[1]), int(fields[2])
      if species not in SPECIES:
        rejects.add(where, f"unknown SPECIES {species} for {name} (expected 1 = cat, 2 = dog)")
        continue
      if "_" not in name:
        rejects.add(where, f"image name {name!r} has no '_<n>' suffix; breed unknown")
        continue
      parsed.append((name, _Entry(class_id, name.rsplit("_", 1)[0], SPECIES[species])))
  return parsed


def _breed_of_class(class_id: int, entries: Dict[str, _Entry], annotations_dir: str) -> str:
  breeds = sorted({e.breed for e in entries.values() if e.class_id == class_id})
  if len(breeds) != 1:
    raise ValueError(
      f"{annotations_dir}: CLASS-ID {class_id} is used by several breeds "
      f"({', '.join(breeds)}); the annotation files are inconsistent"
    )
  return breeds[0]


def _unlisted_images(
  images_dir: str, entries: Dict[str, _Entry], rejects: rejects_lib.RejectsReport
) -> List[Tuple[str, str]]:
  """(path, breed) of images that list.txt omits; stray non-image files go to the report."""
  unlisted = []
  for name in sorted(os.listdir(images_dir)):
    path = os.path.join(images_dir, name)
    stem, ext = os.path.splitext(name)
    if ext.lower() == ".mat":
      rejects.add(path, "stray .mat file in images/ (not an image)", rejects_lib.IGNORED)
    elif os.path.isdir(path) or not folders.is_image_name(name):
      rejects.add(path, "not an image", rejects_lib.IGNORED)
    elif ext != ".jpg" or stem not in entries:
      unlisted.append((path, stem.rsplit("_", 1)[0]))
  return unlisted


def _head_box(xml_path: str, rejects: rejects_lib.RejectsReport) -> Optional[np.ndarray]:
  """[xmin, ymin, xmax, ymax] from a VOC file, None when absent (all test images) or broken."""
  if not os.path.isfile(xml_path):
    return None
  try:
    bndbox = ElementTree.parse(xml_path).getroot().find("object/bndbox")
    if bndbox is None:
      raise ValueError("no <object><bndbox>")
    return np.array(
      [float(bndbox.findtext(tag, "")) for tag in ("xmin", "ymin", "xmax", "ymax")], np.float32
    )
  except (ElementTree.ParseError, ValueError) as e:
    rejects.add(
      xml_path, f"unreadable head box ({e}); image kept without box", rejects_lib.ANNOTATION_DROPPED
    )
    return None
