"""tf.data input pipelines for the two record formats.

Each builder is a chain of small named steps: list files -> read -> (cache) -> shuffle -> parse and
decode in parallel -> resize -> augmentation hook -> batch per replica -> prefetch. `deterministic=True`
fixes every seed and keeps element order, so two runs see identical batches.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

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
  ds = tf.data.Dataset.from_tensor_slices(files)
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  ds = ds.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(len(files), 4),
    num_parallel_calls=AUTOTUNE,
    deterministic=deterministic,
  )
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
) -> tf.data.Dataset:
  """Batches of (images float32 NHWC in [-1, 1], one-hot labels [B, C] or [B, 0]) from the lod-0 file.

  Labels are zipped with records by position, as the official reader does.
  """
  top_file = multires.level_files(directory)[0]
  labels = multires.read_labels(directory)
  if input_context is not None:
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  images = tf.data.TFRecordDataset(top_file).map(
    multires.parse_level, num_parallel_calls=AUTOTUNE, deterministic=True
  )
  if labels is None:
    count = sum(1 for _ in tf.data.TFRecordDataset(top_file))
    labels = tf.zeros([count, 0], tf.float32)
  ds = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(labels)))
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  if cache:
    ds = ds.cache()
  if training:
    ds = ds.shuffle(4096, seed=seed if deterministic else None).repeat()

  def to_float_nhwc(chw, label):
    image = tf.cast(tf.transpose(chw, [1, 2, 0]), tf.float32) * (2.0 / 255.0) - 1.0
    if mirror:
      image = tf.image.random_flip_left_right(image, seed=seed if deterministic else None)
    return image, label

  ds = ds.map(to_float_nhwc, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
  ds = ds.batch(batch_size, drop_remainder=training)
  return ds.prefetch(AUTOTUNE).with_options(_options(deterministic))


def distribute(
  strategy: tf.distribute.Strategy, builder: Callable[[tf.distribute.InputContext], tf.data.Dataset]
):
  """Per-replica batches under any strategy: `builder(input_context)` builds one pipeline."""
  return strategy.distribute_datasets_from_function(builder)
