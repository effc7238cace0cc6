"""The classifiers' input pipeline: crops, flips, labels, class weights, one-hot and mixing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.classify.conftest import CLASSES, PER_CLASS
from tfpets.classify import data
from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError


def test_class_names_and_counts_come_from_the_manifest(class_records):
  assert data.class_names(class_records) == list(CLASSES)
  assert data.split_counts(class_records, "train") == {name: PER_CLASS // 2 for name in CLASSES}
  assert data.count_images(class_records, "val") == len(CLASSES) * PER_CLASS // 4
  with pytest.raises(ArgumentError, match=r"val_split='nope': no such split .*train"):
    data.count_images(class_records, "nope", "val_split")


def test_balanced_class_weights_follow_sklearns_rule(class_records, tmp_path):
  weights = data.balanced_class_weights(class_records, "train")
  np.testing.assert_allclose(weights, [1.0, 1.0, 1.0])
  # An unbalanced manifest: n / (classes x n_c), a class without images gets 0.
  manifest = shards.read_manifest(shards.find_shards(class_records))
  manifest["splits"]["train"]["per_class"] = {"abyssinian": 6, "beagle": 2}
  folder = tmp_path / "records" / "shards"
  folder.mkdir(parents=True)
  (folder / shards.MANIFEST).write_text(json.dumps(manifest))
  expected = [8 / (2 * 6), 8 / (2 * 2), 0.0]
  np.testing.assert_allclose(data.balanced_class_weights(tmp_path, "train"), expected, rtol=1e-6)


def reference_eval_image(pixels, image_size: int) -> np.ndarray:
  """The evaluation view: squash-resize (antialiased) and central crop."""
  side = int(np.ceil(image_size / 0.875))
  resized = tf.image.resize(np.float32(pixels)[None], [side, side], antialias=True)[0].numpy()
  offset = (side - image_size) // 2
  return resized[offset : offset + image_size, offset : offset + image_size]


def test_evaluation_batches_are_central_crops_with_labels(class_records):
  dataset = data.classification_dataset(
    class_records, "test", image_size=28, batch_size=4, training=False, deterministic=True
  )
  images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
  images, labels = np.concatenate(images), np.concatenate(labels)
  assert images.shape == (6, 28, 28, 3) and images.dtype == np.float32
  examples = _examples(class_records, "test")
  assert labels.tolist() == [int(ex["label"]) for ex in examples]
  for image, example in zip(images, examples):
    np.testing.assert_allclose(image, reference_eval_image(example["image"], 28), atol=1e-3)
  # The exported graph feeds models the same view.
  decoded = examples[0]["image"].numpy()
  np.testing.assert_allclose(data.eval_images(decoded[None], 28)[0], images[0], atol=1e-3)


def _examples(records, split):
  files = shards.split_files(shards.find_shards(records), split)
  return [shards.parse(s) for s in tf.data.TFRecordDataset(files)]


def test_training_batches_are_random_crops_of_the_resized_image(class_records):
  dataset = data.classification_dataset(
    class_records, "train", image_size=28, batch_size=4, training=True, seed=3
  )
  images, labels = next(iter(dataset))
  assert images.shape == (4, 28, 28, 3) and labels.dtype == tf.int32
  # Each crop is a window of the 32 px resize, possibly mirrored.
  by_label = {}
  for ex in _examples(class_records, "train"):
    resized = tf.image.resize(tf.cast(ex["image"], tf.float32)[None], [32, 32], antialias=True)
    by_label.setdefault(int(ex["label"]), []).append(resized[0].numpy())
  for image, label in zip(images.numpy(), labels.numpy()):
    assert any(_is_window(image, full) for full in by_label[int(label)])


def _is_window(crop, full) -> bool:
  size = crop.shape[0]
  for candidate in (full, full[:, ::-1]):
    for y in range(full.shape[0] - size + 1):
      for x in range(full.shape[1] - size + 1):
        if np.allclose(candidate[y : y + size, x : x + size], crop, atol=1e-3):
          return True
  return False


def test_one_hot_labels_weights_augmentation_and_mixing(class_records):
  def halve(images):
    return images * 0.5

  def mix(images, labels):  # every label spread evenly
    return images, tf.fill(tf.shape(labels), 1.0 / len(CLASSES))

  weights = [1.0, 2.0, 3.0]
  dataset = data.classification_dataset(
    class_records,
    "train",
    image_size=28,
    batch_size=4,
    training=True,
    augment=halve,
    mixing=mix,
    num_classes=len(CLASSES),
    class_weights=weights,
  )
  images, labels, sample_weights = next(iter(dataset))
  assert float(tf.reduce_max(images)) <= 128.0  # halved from [0, 255]
  np.testing.assert_allclose(labels.numpy(), np.full((4, 3), 1 / 3), rtol=1e-6)
  assert set(sample_weights.numpy().tolist()) <= set(weights)
  with pytest.raises(ValueError, match="one-hot"):
    data.classification_dataset(
      class_records, "train", image_size=28, batch_size=4, training=True, mixing=mix
    )
