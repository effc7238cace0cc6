"""Sharded classification/landmark records (schema documented in tfrecords/README.md).

One tf.train.Example per image: the encoded JPEG plus every annotation in pixels of that JPEG.
Files: `<dir>/<split>-<i:05d>-of-<n:05d>.tfrecord` and `<dir>/manifest.json`.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Dict, Iterable, List, Sequence

import numpy as np
import tensorflow as tf

from tfpets.errors import ArgumentError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MAX_LANDMARKS = 9

FEATURES = {
  "image/encoded": tf.io.FixedLenFeature([], tf.string),
  "image/height": tf.io.FixedLenFeature([], tf.int64),
  "image/width": tf.io.FixedLenFeature([], tf.int64),
  "image/label": tf.io.FixedLenFeature([], tf.int64),
  "image/class_name": tf.io.FixedLenFeature([], tf.string),
  "image/species": tf.io.FixedLenFeature([], tf.string, default_value=b""),
  "image/id": tf.io.FixedLenFeature([], tf.string),
  "image/source_path": tf.io.FixedLenFeature([], tf.string),
  "image/box": tf.io.FixedLenFeature([4], tf.float32, default_value=[0.0] * 4),
  "image/has_box": tf.io.FixedLenFeature([], tf.int64, default_value=0),
  "image/landmarks": tf.io.VarLenFeature(tf.float32),
  "image/num_landmarks": tf.io.FixedLenFeature([], tf.int64, default_value=0),
  # 1 for a generated image (docs/augment.md); shards written before it parse as 0.
  "image/synthetic": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def _bytes(values: Sequence[bytes]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values: Sequence[int]) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values: Iterable[float]) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def serialize(prepared) -> bytes:
  """tfpets.data.prepare.PreparedImage -> serialized tf.train.Example."""
  r = prepared.record
  feature = {
    "image/encoded": _bytes([prepared.encoded]),
    "image/height": _ints([prepared.height]),
    "image/width": _ints([prepared.width]),
    "image/label": _ints([r.label]),
    "image/class_name": _bytes([r.class_name.encode()]),
    "image/species": _bytes([r.species.encode()]),
    "image/id": _bytes([r.image_id.encode()]),
    "image/source_path": _bytes([r.path.encode()]),
    "image/synthetic": _ints([int(r.synthetic)]),
  }
  if r.box is not None:
    feature["image/box"] = _floats(r.box)
    feature["image/has_box"] = _ints([1])
  if r.landmarks is not None:
    feature["image/landmarks"] = _floats(r.landmarks.reshape(-1))
    feature["image/num_landmarks"] = _ints([r.landmarks.shape[0]])
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse(serialized: tf.Tensor, decode_image: bool = True) -> Dict[str, tf.Tensor]:
  """Serialized example -> dict with `image` uint8 [H, W, 3], `label`, `box`, `landmarks` [9, 2]...

  Landmarks are padded to 9 points (`num_landmarks` says how many are real) so batches stack.
  """
  ex = tf.io.parse_single_example(serialized, FEATURES)
  points = tf.reshape(tf.sparse.to_dense(ex["image/landmarks"]), [-1, 2])
  points = tf.pad(points, [[0, MAX_LANDMARKS - tf.shape(points)[0]], [0, 0]])
  out = {
    "label": tf.cast(ex["image/label"], tf.int32),
    "class_name": ex["image/class_name"],
    "species": ex["image/species"],
    "id": ex["image/id"],
    "source_path": ex["image/source_path"],
    "height": tf.cast(ex["image/height"], tf.int32),
    "width": tf.cast(ex["image/width"], tf.int32),
    "box": ex["image/box"],
    "has_box": tf.cast(ex["image/has_box"], tf.bool),
    "landmarks": tf.ensure_shape(points, [MAX_LANDMARKS, 2]),
    "num_landmarks": tf.cast(ex["image/num_landmarks"], tf.int32),
    "synthetic": tf.cast(ex["image/synthetic"], tf.bool),
  }
  if decode_image:
    image = tf.io.decode_jpeg(ex["image/encoded"], channels=3)
    out["image"] = tf.ensure_shape(image, [None, None, 3])
  else:
    out["encoded"] = ex["image/encoded"]
  return out


def shard_paths(directory: str | os.PathLike, split: str, num_shards: int) -> List[str]:
  return [
    os.path.join(str(directory), f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord")
    for i in range(num_shards)
  ]


class ShardWriter:
  """Writes one split's examples round-robin into `num_shards` files."""

  def __init__(
    self, directory: str | os.PathLike, split: str, num_records: int, records_per_shard: int = 1024
  ):
    os.makedirs(directory, exist_ok=True)
    num_shards = max(1, math.ceil(num_records / records_per_shard))
    self.paths = shard_paths(directory, split, num_shards)
    self._writers = [tf.io.TFRecordWriter(p) for p in self.paths]
    self.count = 0

  def write(self, serialized: bytes) -> None:
    self._writers[self.count % len(self._writers)].write(serialized)
    self.count += 1

  def close(self) -> None:
    for w in self._writers:
      w.close()


def write_manifest(
  directory: str | os.PathLike,
  class_names: Sequence[str],
  split_counts: Dict[str, Dict[str, int]],
  files: Dict[str, List[str]],
  extra: dict | None = None,
) -> str:
  """manifest.json: class names, per-split per-class counts, shard files, schema version."""
  manifest = {
    "schema_version": SCHEMA_VERSION,
    "format": "tfpets.shards",
    "class_names": list(class_names),
    "num_classes": len(class_names),
    "splits": {
      split: {
        "num_examples": int(sum(c.values())),
        "per_class": c,
        "files": [os.path.basename(f) for f in files[split]],
      }
      for split, c in split_counts.items()
    },
  }
  manifest.update(extra or {})
  path = pathlib.Path(directory) / MANIFEST
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
  os.replace(tmp, path)
  return str(path)


def read_manifest(directory: str | os.PathLike) -> dict:
  path = pathlib.Path(directory) / MANIFEST
  if not path.is_file():
    raise FileNotFoundError(
      f"{path}: no manifest; convert a dataset first (python -m tfpets.launch --stage=data)"
    )
  manifest = json.loads(path.read_text())
  if manifest.get("schema_version") != SCHEMA_VERSION:
    raise ValueError(
      f"{path}: schema_version {manifest.get('schema_version')} is not "
      f"{SCHEMA_VERSION}; re-run --stage=data"
    )
  return manifest


def find_shards(records: str | pathlib.Path) -> pathlib.Path:
  """The shards folder of a converted dataset: accepts the data stage's workdir, its records/
  folder or the shards/ folder itself."""
  root = pathlib.Path(records)
  for candidate in (root / "records" / "shards", root / "shards", root):
    if (candidate / MANIFEST).is_file():
      return candidate
  raise ArgumentError(
    "records",
    str(records),
    f"no converted dataset there (expected records/shards/{MANIFEST} in it; the data "
    "stage writes one)",
  )


def split_files(directory: str | os.PathLike, split: str) -> List[str]:
  manifest = read_manifest(directory)
  if split not in manifest["splits"]:
    raise ValueError(f"{directory}: no split {split!r}; splits: {', '.join(manifest['splits'])}")
  return [os.path.join(str(directory), f) for f in manifest["splits"][split]["files"]]


def label_histogram(labels: Iterable[int], class_names: Sequence[str]) -> Dict[str, int]:
  counts = np.bincount(np.asarray(list(labels), np.int64), minlength=len(class_names))
  return {name: int(n) for name, n in zip(class_names, counts)}
