"""StyleGAN2-ADA multi-resolution TFRecords, exactly as the official dataset_tool writes them.

`<dir>/<basename(dir)>-rXX.tfrecords`, one file per level of detail (XX = log2 of its resolution),
each record a tf.train.Example with `shape` = [C, H, W] (int64) and `data` = raw CHW uint8 bytes;
optional `<dir>/<basename(dir)>-rxx.labels`, an np.save'd float32 one-hot array in record order
(official NVlabs/stylegan2-ada dataset_tool.py, TFRecordExporter; tfrecords/README.md).
"""

from __future__ import annotations

import glob
import os
import pathlib
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfpets.errors import ArgumentError


def prefix(directory: str | os.PathLike) -> str:
  directory = os.path.normpath(str(directory))
  return os.path.join(directory, os.path.basename(directory))


def level_path(directory: str | os.PathLike, log2_res: int) -> str:
  return f"{prefix(directory)}-r{log2_res:02d}.tfrecords"


def labels_path(directory: str | os.PathLike) -> str:
  return f"{prefix(directory)}-rxx.labels"


def serialize_level(chw: np.ndarray) -> bytes:
  feature = {
    "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(chw.shape))),
    "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class MultiResWriter:
  """Appends pyramids (highest resolution first) to the per-level files."""

  def __init__(self, directory: str | os.PathLike, resolution: int):
    log2 = int(np.log2(resolution))
    if resolution < 4 or 2**log2 != resolution:
      raise ValueError(f"GAN resolution {resolution} is not a power of two >= 4")
    os.makedirs(directory, exist_ok=True)
    self.directory = str(directory)
    self.resolution = resolution
    self._writers = [
      tf.io.TFRecordWriter(level_path(directory, log2 - lod)) for lod in range(log2 - 1)
    ]
    self.count = 0

  def write(self, pyramid: Sequence[np.ndarray]) -> None:
    if len(pyramid) != len(self._writers) or pyramid[0].shape[1:] != (self.resolution,) * 2:
      raise ValueError(
        f"pyramid of {len(pyramid)} levels from {pyramid[0].shape} does not fit "
        f"resolution {self.resolution}"
      )
    for writer, level in zip(self._writers, pyramid):
      writer.write(serialize_level(level))
    self.count += 1

  def close(self, one_hot_labels: Optional[np.ndarray] = None) -> None:
    for writer in self._writers:
      writer.close()
    if one_hot_labels is not None:
      if len(one_hot_labels) != self.count:
        raise ValueError(f"{len(one_hot_labels)} labels for {self.count} records")
      with open(labels_path(self.directory), "wb") as f:
        np.save(f, one_hot_labels.astype(np.float32))


def one_hot(labels: Sequence[int], num_classes: int) -> np.ndarray:
  out = np.zeros((len(labels), num_classes), np.float32)
  out[np.arange(len(labels)), np.asarray(labels, np.int64)] = 1.0
  return out


def search_directory(path: str | os.PathLike) -> Optional[pathlib.Path]:
  """The StyleGAN records folder of a converted dataset (its workdir, records/ or the folder
  itself), or None when it has none."""
  root = pathlib.Path(path)
  for candidate in (root / "records" / "stylegan", root / "stylegan", root):
    if glob.glob(f"{prefix(candidate)}-r[0-9][0-9].tfrecords"):
      return candidate
  return None


def find_directory(path: str | os.PathLike) -> pathlib.Path:
  """`search_directory`, raising an error about `records` when there is none."""
  found = search_directory(path)
  if found is not None:
    return found
  raise ArgumentError(
    "records",
    str(path),
    "no StyleGAN records there (expected records/stylegan/*-rXX.tfrecords); convert a dataset "
    "with --stage=data first",
  )


def level_files(directory: str | os.PathLike) -> List[str]:
  """Level files, highest resolution first; checks that every level down to 4x4 exists."""
  files = sorted(glob.glob(f"{prefix(directory)}-r[0-9][0-9].tfrecords"), reverse=True)
  if not files:
    raise FileNotFoundError(
      f"{directory}: no {os.path.basename(prefix(directory))}-rXX.tfrecords "
      "files (StyleGAN multi-resolution records)"
    )
  top = int(files[0][-12:-10])
  expected = [level_path(directory, r) for r in range(top, 1, -1)]
  missing = [f for f in expected if f not in files]
  if missing:
    raise FileNotFoundError(f"{directory}: missing level files {', '.join(missing)}")
  return expected


def read_labels(directory: str | os.PathLike) -> Optional[np.ndarray]:
  matches = sorted(glob.glob(os.path.join(str(directory), "*.labels")))
  if not matches:
    return None
  with open(matches[0], "rb") as f:
    return np.load(f)


def parse_level(serialized: tf.Tensor) -> tf.Tensor:
  """Serialized record -> uint8 CHW tensor."""
  ex = tf.io.parse_single_example(
    serialized,
    {"shape": tf.io.FixedLenFeature([3], tf.int64), "data": tf.io.FixedLenFeature([], tf.string)},
  )
  return tf.reshape(tf.io.decode_raw(ex["data"], tf.uint8), ex["shape"])
