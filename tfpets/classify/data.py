"""Input pipelines of the classifiers: (images, labels[, weights]) batches from shard records.

Images stay RGB floats in [0, 255] at the model's size (the models normalise inside). Training
squash-resizes to size / 0.875, takes a random size x size crop and flips half the images, as the
official WS-DAN (tau-yihouxiang/WS_DAN, `preprocessing/inception_preprocessing.py`) does; evaluation
takes the central crop of the same resize, so both see objects at one scale. A batch augmentation
layer (tfpets.classify.augment) and a batch mixing function (MixUp, CutMix) run after batching.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfpets.data import pipeline
from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError

CENTRAL_FRACTION = 0.875


def resize_size(image_size: int) -> int:
  """The side images are squash-resized to before the (random or central) crop."""
  return int(math.ceil(image_size / CENTRAL_FRACTION))


def class_names(records: str) -> list:
  """The class names of a converted dataset (its workdir, records/ or shards/ folder), in order."""
  return list(shards.read_manifest(shards.find_shards(records))["class_names"])


def split_counts(records: str, split: str, argument: str = "split") -> Dict[str, int]:
  """{class name: images} of `split`; a missing split is an error about `argument`."""
  manifest = shards.read_manifest(shards.find_shards(records))
  if split not in manifest["splits"]:
    raise ArgumentError(
      argument, split, f"no such split in {records} (its splits: {', '.join(manifest['splits'])})"
    )
  return dict(manifest["splits"][split]["per_class"])


def balanced_class_weights(records: str, split: str) -> np.ndarray:
  """sklearn's 'balanced' weights, n / (classes x n_c), for the classes of `records` in order;
  a class without images gets weight 0 (it never occurs)."""
  names = class_names(records)
  counts = split_counts(records, split)
  n = np.array([counts.get(name, 0) for name in names], np.float64)
  present = n > 0
  weights = np.zeros_like(n)
  weights[present] = n.sum() / (present.sum() * n[present])
  return weights.astype(np.float32)


def _random_crop_flip(image_size: int, seed: Optional[int]):
  def augment(example):
    example = dict(example)
    image = tf.image.random_crop(example["image"], [image_size, image_size, 3], seed=seed)
    example["image"] = tf.image.random_flip_left_right(image, seed=seed)
    return example

  return augment


def _central_crop(images: tf.Tensor, image_size: int) -> tf.Tensor:
  offset = (tf.shape(images)[1] - image_size) // 2
  return images[:, offset : offset + image_size, offset : offset + image_size, :]


def eval_images(images: tf.Tensor, image_size: int) -> tf.Tensor:
  """Images [B, H, W, 3] (uint8 or float in [0, 255]) as evaluation feeds them to a model: squash-
  resized to `resize_size` (antialiased, as the records pipeline resizes) and centrally cropped."""
  side = resize_size(image_size)
  resized = tf.image.resize(tf.cast(images, tf.float32), [side, side], antialias=True)
  return _central_crop(resized, image_size)


def classification_dataset(
  records: str,
  split: str,
  *,
  image_size: int,
  batch_size: int,
  training: bool,
  augment: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
  mixing: Optional[Callable[[tf.Tensor, tf.Tensor], tuple]] = None,
  num_classes: int = 0,
  class_weights: Optional[Sequence[float]] = None,
  seed: int = 0,
  deterministic: bool = False,
  cache: bool = False,
  input_context: Optional[tf.distribute.InputContext] = None,
  endless: bool = False,
) -> tf.data.Dataset:
  """Batches of (images [B, S, S, 3] float32 in [0, 255], labels[, sample weights]).

  Labels are int32 class indices, or one-hot float32 [B, num_classes] when `num_classes` is given
  (needed by `mixing`, which mixes them). `augment` (a batch layer) and `mixing` run in training
  only; `class_weights` (per class, in class order) become per-sample weights. `endless`
  (evaluation under several replicas) gives a shuffled, repeated stream of whole batches instead,
  so that every replica always has images: a partial last batch would leave some with none.
  """
  if mixing is not None and not num_classes:
    raise ValueError("mixing needs one-hot labels: give num_classes")
  dataset = pipeline.shard_dataset(
    str(shards.find_shards(records)),
    split,
    batch_size=batch_size,
    image_size=resize_size(image_size),
    training=training or endless,
    augment=_random_crop_flip(image_size, seed if deterministic else None) if training else None,
    cache=cache,
    deterministic=deterministic,
    seed=seed,
    input_context=input_context,
  )
  weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

  def to_batch(example):
    images, labels = example["image"], example["label"]
    if not training:
      images = _central_crop(images, image_size)
    elif augment is not None:
      images = augment(images)
    if num_classes:
      labels_out = tf.one_hot(labels, num_classes)
      if training and mixing is not None:
        images, labels_out = mixing(images, labels_out)
    else:
      labels_out = labels
    if weights is None:
      return images, labels_out
    return images, labels_out, tf.gather(weights, labels)

  return dataset.map(to_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def count_images(records: str, split: str, argument: str = "split") -> int:
  return int(sum(split_counts(records, split, argument).values()))
