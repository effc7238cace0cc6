"""tf.data input pipelines for the two record formats.

Each builder is a chain of small named steps: list files -> read -> (cache) -> shuffle -> parse and
decode in parallel -> resize -> augmentation hook -> batch per replica -> prefetch. `deterministic=True`
fixes every seed and keeps element order, so two runs see identical batches.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tfpets.data.tfrecord import multires, shards

AUTOTUNE = tf.data.AUTOTUNE
Example = Dict[str, tf.Tensor]


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.experimental_optimization.map_parallelization = True
  return options


def resize_example(example: Example, image_size: int) -> Example:
  """Squashes the image to image_size x image_size and scales boxes and landmarks with it."""
  example = dict(example)
  image = example.pop("image")
  scale_xy = tf.cast(image_size, tf.float32) / tf.cast(
    tf.stack([example["width"], example["height"]]), tf.float32
  )
  example["image"] = tf.image.resize(image, [image_size, image_size], antialias=True)
  example["box"] = example["box"] * tf.tile(scale_xy, [2])
  example["landmarks"] = example["landmarks"] * scale_xy
  return example


def shard_dataset(
  records_dir: str,
  split: str,
  *,
  batch_size: int,
  image_size: int,
  training: bool = True,
  augment: Optional[Callable[[Example], Example]] = None,
  cache: bool = False,
  deterministic: bool = False,
  seed: int = 0,
  input_context: Optional[tf.distribute.InputContext] = None,
  drop_remainder: Optional[bool] = None,
) -> tf.data.Dataset:
  """Batches of dicts: `image` float32 [B, S, S, 3] in [0, 255], `label`, `box`, `landmarks`...

  `augment` runs per example after resizing (training only). With an `input_context` the files are
  sharded by input pipeline and `batch_size` is the global batch, divided per replica.
  """
  files = shards.split_files(records_dir, split)
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  pipelines = input_context.num_input_pipelines if input_context is not None else 1
  ds = tf.data.Dataset.from_tensor_slices(files)
  # Each input pipeline reads its own files, or its own records when there are fewer files.
  by_file = pipelines > 1 and len(files) >= pipelines
  if by_file:
    ds = ds.shard(pipelines, input_context.input_pipeline_id)
  ds = ds.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(len(files), 4),
    num_parallel_calls=AUTOTUNE,
    deterministic=deterministic or (pipelines > 1 and not by_file),  # same order, disjoint shards
  )
  if pipelines > 1 and not by_file:
    ds = ds.shard(pipelines, input_context.input_pipeline_id)
  decode_and_resize = lambda s: resize_example(shards.parse(s), image_size)
  if cache:
    # Decoded, resized images are the expensive part; cache them, shuffle after.
    ds = ds.map(decode_and_resize, num_parallel_calls=AUTOTUNE, deterministic=True).cache()
  if training:
    ds = ds.shuffle(
      2048, seed=seed if deterministic else None, reshuffle_each_iteration=True
    ).repeat()
  if not cache:
    ds = ds.map(decode_and_resize, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if training and augment is not None:
    ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  if drop_remainder is None:
    drop_remainder = training
  ds = ds.batch(
    batch_size,
    drop_remainder=drop_remainder,
    num_parallel_calls=AUTOTUNE,
    deterministic=deterministic,
  )
  return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def multires_dataset(
  directory: str,
  *,
  batch_size: int,
  training: bool = True,
  mirror: bool = False,
  cache: bool = True,
  deterministic: bool = False,
  seed: int = 0,
  input_context: Optional[tf.distribute.InputContext] = None,
  resolution: Optional[int] = None,
  start: Optional[int] = None,
) -> tf.data.Dataset:
  """Batches of (images float32 NHWC in [-1, 1], one-hot labels [B, C] or [B, 0]) from one level.

  Labels are zipped with records by position, as the official reader does. `resolution` picks a
  level of detail (default: the highest).

  `start` (training only) gives one resumable stream of global batches instead, a function of
  (seed, stream index) alone: the level is read into memory once; stream index i is image
  index_shuffle(i mod N) of epoch i // N (N images, a stateless permutation keyed by (seed, epoch));
  `mirror` flips it by a stateless draw keyed by (seed, i). The stream begins at index `start`, so
  a run that has read `start` images and restarts there continues where it was.
  """
  level_file = _level_file(directory, resolution)
  labels = multires.read_labels(directory)
  images = tf.data.TFRecordDataset(level_file).map(
    multires.parse_level, num_parallel_calls=AUTOTUNE, deterministic=True
  )
  if training and start is not None:
    return _resumable_stream(images, labels, batch_size, mirror, seed, start)
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  if labels is None:
    count = sum(1 for _ in tf.data.TFRecordDataset(level_file))
    labels = tf.zeros([count, 0], tf.float32)
  ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(labels)))
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if cache:
    ds = ds.cache()
  if training:
    ds = ds.shuffle(4096, seed=seed if deterministic else None).repeat()

  def to_float_nhwc(chw, label):
    image = _to_float_nhwc(chw)
    if mirror:
      image = tf.image.random_flip_left_right(image, seed=seed if deterministic else None)
    return image, label

  ds = ds.map(to_float_nhwc, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  ds = ds.batch(batch_size, drop_remainder=training)
  return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def _level_file(directory: str, resolution: Optional[int]) -> str:
  files = multires.level_files(directory)
  if resolution is None:
    return files[0]
  wanted = multires.level_path(directory, max(int(resolution), 1).bit_length() - 1)
  if resolution < 4 or resolution & (resolution - 1) or wanted not in files:
    top = 2 ** int(files[0][-12:-10])
    raise ValueError(
      f"resolution {resolution} is not a level of {directory} (powers of two from 4 to {top})"
    )
  return wanted


def _to_float_nhwc(chw: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.transpose(chw, [1, 2, 0]), tf.float32) * (2.0 / 255.0) - 1.0


def _resumable_stream(
  images: tf.data.Dataset,
  labels,
  batch_size: int,
  mirror: bool,
  seed: int,
  start: int,
) -> tf.data.Dataset:
  """Global batches of the stream described in `multires_dataset`, from index `start` on."""
  pixels = np.concatenate([batch.numpy() for batch in images.batch(1024)])
  count = len(pixels)
  if count == 0:
    raise ValueError("the records hold no image")
  pixels = tf.constant(pixels)
  labels = tf.constant(np.zeros([count, 0]) if labels is None else labels, tf.float32)
  seed = tf.constant(seed, tf.int64)

  def example(index):
    epoch_seed = tf.stack([seed, index // count])
    chosen = tf.random.experimental.index_shuffle(
      index % count, epoch_seed, tf.constant(count - 1, tf.int64)
    )
    image = _to_float_nhwc(tf.gather(pixels, chosen))
    if mirror:
      image = tf.image.stateless_random_flip_left_right(image, seed=tf.stack([seed, index]))
    return image, tf.gather(labels, chosen)

  ds = tf.data.Dataset.range(int(start), 1 << 62).map(
    example, num_parallel_calls=AUTOTUNE, deterministic=True
  )
  ds = ds.batch(batch_size, drop_remainder=True)
  return ds.prefetch(AUTOTUNE).with_options(_options(True))


def distribute(
  strategy: tf.distribute.Strategy, builder: Callable[[tf.distribute.InputContext], tf.data.Dataset]
):
  """Per-replica batches under any strategy: `builder(input_context)` builds one pipeline."""
  return strategy.distribute_datasets_from_function(builder)
