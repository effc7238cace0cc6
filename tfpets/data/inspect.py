"""Checks a converted dataset folder: every record decodes, counts match, pyramids are consistent."""

from __future__ import annotations

import os
import pathlib
from typing import Dict, List

import cv2
import numpy as np
import tensorflow as tf

from tfpets.data.tfrecord import multires, shards
from tfpets.runtime.tensorboard import make_grid


def _records(path: str, problems: List[str]):
  """Serialized records of one file; a corrupt file ends with a problem instead of an exception."""
  iterator = iter(tf.data.TFRecordDataset(path))
  while True:
    try:
      yield next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      problems.append(f"{path}: {e.message.splitlines()[0]}")
      return


def inspect_shards(shards_dir: str | os.PathLike) -> Dict:
  """Decodes every example of every split; returns counts and a list of problems."""
  manifest = shards.read_manifest(shards_dir)
  problems: List[str] = []
  counts = {}
  for split, info in manifest["splits"].items():
    n = 0
    for path in shards.split_files(shards_dir, split):
      if not os.path.isfile(path):
        problems.append(f"{path}: listed in the manifest but missing")
        continue
      for i, serialized in enumerate(_records(path, problems)):
        try:
          ex = shards.parse(serialized)
          h, w = int(ex["height"]), int(ex["width"])
          if tuple(ex["image"].shape[:2]) != (h, w):
            problems.append(f"{path} record {i}: image {ex['image'].shape} but header {h}x{w}")
          if not 0 <= int(ex["label"]) < manifest["num_classes"]:
            problems.append(f"{path} record {i}: label {int(ex['label'])} out of range")
        except tf.errors.OpError as e:
          problems.append(f"{path} record {i}: {e.message.splitlines()[0]}")
        n += 1
    counts[split] = n
    if n != info["num_examples"]:
      problems.append(
        f"{shards_dir}: split {split} has {n} records, manifest says {info['num_examples']}"
      )
  return {"counts": counts, "problems": problems, "class_names": manifest["class_names"]}


def inspect_multires(gan_dir: str | os.PathLike) -> Dict:
  """Checks level files (same count, right shapes, each level the box average of the one above)."""
  problems: List[str] = []
  files = multires.level_files(gan_dir)
  readers = [map(multires.parse_level, _records(f, problems)) for f in files]
  top = int(files[0][-12:-10])
  n = 0
  while True:
    levels = [next(r, None) for r in readers]
    if all(level is None for level in levels):
      break
    if any(level is None for level in levels):
      problems.append(f"{gan_dir}: level files hold different record counts (record {n})")
      break
    for lod, level in enumerate(levels):
      expected = 2 ** (top - lod)
      if tuple(level.shape[1:]) != (expected, expected) or level.shape[0] not in (1, 3):
        problems.append(
          f"{files[lod]} record {n}: shape {tuple(level.shape)}, expected "
          f"[C, {expected}, {expected}]"
        )
      elif lod and not _is_box_average(levels[lod - 1].numpy(), level.numpy()):
        problems.append(f"{files[lod]} record {n}: not the 2x2 average of the level above")
    n += 1
  labels = multires.read_labels(gan_dir)
  if labels is not None and len(labels) != n:
    problems.append(f"{multires.labels_path(gan_dir)}: {len(labels)} labels for {n} records")
  return {
    "count": n,
    "resolution": 2**top,
    "problems": problems,
    "num_classes": 0 if labels is None else int(labels.shape[1]),
  }


def _is_box_average(upper: np.ndarray, lower: np.ndarray) -> bool:
  # Levels are averaged in float and quantised separately, so allow one step of rounding.
  c, h, w = upper.shape
  average = upper.astype(np.float32).reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
  return bool(np.abs(average - lower.astype(np.float32)).max() <= 1.0)


def draw_annotations(image: np.ndarray, example: Dict) -> np.ndarray:
  image = np.ascontiguousarray(image)
  if bool(example["has_box"]):
    x0, y0, x1, y1 = [int(round(float(v))) for v in example["box"]]
    cv2.rectangle(image, (x0, y0), (x1, y1), (0, 255, 0), 1, cv2.LINE_AA)
  for x, y in np.asarray(example["landmarks"])[: int(example["num_landmarks"])]:
    cv2.circle(image, (int(round(x)), int(round(y))), 2, (255, 0, 0), -1, cv2.LINE_AA)
  return image


def contact_sheet(
  shards_dir: str | os.PathLike,
  split: str,
  per_class: int = 4,
  size: int = 96,
  max_classes: int = 37,
) -> np.ndarray:
  """A grid with `per_class` images of each class (a row each), boxes and landmarks drawn."""
  manifest = shards.read_manifest(shards_dir)
  num_classes = min(manifest["num_classes"], max_classes)
  tiles = np.zeros((num_classes, per_class, size, size, 3), np.uint8)
  filled = np.zeros(num_classes, np.int64)
  for path in shards.split_files(shards_dir, split):
    for serialized in _records(path, []):  # inspect_shards reports the problems
      try:
        ex = shards.parse(serialized)
      except tf.errors.OpError:
        continue
      label = int(ex["label"])
      if label >= num_classes or filled[label] >= per_class:
        continue
      h, w = int(ex["height"]), int(ex["width"])
      scale = np.array([size / w, size / h], np.float32)
      resized = cv2.resize(ex["image"].numpy(), (size, size), interpolation=cv2.INTER_AREA)
      ex = dict(
        ex,
        box=np.asarray(ex["box"]) * np.tile(scale, 2),
        landmarks=np.asarray(ex["landmarks"]) * scale,
      )
      tiles[label, filled[label]] = draw_annotations(resized, ex)
      filled[label] += 1
      if filled.min() >= per_class:
        break
  return make_grid(tiles.reshape(-1, size, size, 3), columns=per_class)


def multires_sheet(gan_dir: str | os.PathLike, count: int = 8) -> np.ndarray:
  """First `count` records at every level, upscaled to the top resolution, one row per level."""
  files = multires.level_files(gan_dir)
  top = None
  rows = []
  for path in files:
    levels = [
      np.transpose(c.numpy(), (1, 2, 0))
      for c in tf.data.TFRecordDataset(path).map(multires.parse_level).take(count)
    ]
    top = top or levels[0].shape[0]
    rows += [
      cv2.resize(level, (top, top), interpolation=cv2.INTER_NEAREST).reshape(top, top, -1)
      for level in levels
    ]
  return make_grid(np.stack(rows), columns=count)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> str:
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
    raise OSError(f"{path}: could not write PNG")
  return str(path)
