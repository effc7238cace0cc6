from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tests.data import bad_images
from tfpets.data import pipeline, prepare
from tfpets.data.records import ImageRecord
from tfpets.data.tfrecord import shards


def write_split(directory, n=12, height=40, width=80, records_per_shard=5):
  """n images of one colour per class (3 classes), a box and landmarks each."""
  writer = shards.ShardWriter(directory, "train", n, records_per_shard=records_per_shard)
  labels = []
  for i in range(n):
    label = i % 3
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., label] = 200
    record = ImageRecord(
      f"img_{i}.jpg", label, f"c{label}", box=[8, 4, 40, 20], landmarks=[[10, 5]] * 4 + [[60, 30]]
    )
    writer.write(
      shards.serialize(prepare.PreparedImage(record, bad_images.jpeg(pixels), height, width, []))
    )
    labels.append(label)
  writer.close()
  shards.write_manifest(
    directory,
    ["c0", "c1", "c2"],
    {"train": shards.label_histogram(labels, ["c0", "c1", "c2"])},
    {"train": writer.paths},
  )
  return labels


def test_resize_scales_boxes_and_landmarks_with_the_image(tmp_path):
  write_split(tmp_path)
  ds = pipeline.shard_dataset(str(tmp_path), "train", batch_size=4, image_size=20, training=False)
  batch = next(iter(ds))
  assert batch["image"].shape == (4, 20, 20, 3) and batch["image"].dtype == tf.float32
  # 80x40 -> 20x20: x scales by 1/4, y by 1/2.
  np.testing.assert_allclose(batch["box"].numpy()[0], [2, 2, 10, 10])
  np.testing.assert_allclose(batch["landmarks"].numpy()[0, 4], [15, 15])
  # Colour encodes the label: the pipeline keeps image and label together.
  colour = batch["image"].numpy().mean(axis=(1, 2)).argmax(axis=-1)
  np.testing.assert_array_equal(colour, batch["label"].numpy())


def test_eval_mode_sees_every_record_once(tmp_path):
  labels = write_split(tmp_path, n=11)
  ds = pipeline.shard_dataset(str(tmp_path), "train", batch_size=4, image_size=8, training=False)
  seen = np.concatenate([b["label"].numpy() for b in ds])
  assert sorted(seen.tolist()) == sorted(labels)


@pytest.mark.parametrize("records_per_shard", [20, 5])
def test_input_pipelines_split_the_records_between_them(tmp_path, records_per_shard):
  """By file when every pipeline gets one, else by record: disjoint, and together all of them."""
  write_split(tmp_path, n=12, records_per_shard=records_per_shard)
  ids = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(2, pipeline_id, 1)
    ds = pipeline.shard_dataset(
      str(tmp_path), "train", batch_size=2, image_size=8, training=False, input_context=context
    )
    ids.append([i.decode() for b in ds for i in b["id"].numpy()])
  assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1])
  assert sorted(ids[0] + ids[1]) == sorted(f"img_{i}" for i in range(12))


@pytest.mark.parametrize("cache", [False, True])
def test_deterministic_mode_repeats_exactly(tmp_path, cache):
  write_split(tmp_path)

  def first_batches():
    ds = pipeline.shard_dataset(
      str(tmp_path),
      "train",
      batch_size=3,
      image_size=8,
      training=True,
      deterministic=True,
      seed=5,
      cache=cache,
      augment=lambda ex: dict(ex, image=ex["image"] * 0.5),
    )
    return [b["label"].numpy().tolist() for b in ds.take(6)]

  assert first_batches() == first_batches()


def test_per_replica_batches_under_mirrored_strategy(tmp_path):
  """Two logical CPUs must be made before TF starts, so this runs in its own process."""
  write_split(tmp_path, n=16)
  script = textwrap.dedent(f"""
      from tfpets.runtime.strategy import make_strategy
      from tfpets.data import pipeline
      strategy = make_strategy("mirrored", num_cpu_replicas=2)
      assert strategy.num_replicas_in_sync == 2
      dist = pipeline.distribute(strategy, lambda ctx: pipeline.shard_dataset(
          {str(tmp_path)!r}, "train", batch_size=8, image_size=8, input_context=ctx))
      batch = next(iter(dist))
      shapes = [tuple(t.shape) for t in strategy.experimental_local_results(batch["image"])]
      print(shapes)
      assert shapes == [(4, 8, 8, 3), (4, 8, 8, 3)], shapes
  """)
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-2000:]
