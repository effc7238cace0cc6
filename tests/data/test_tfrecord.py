from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.data import bad_images
from tfpets.data import prepare
from tfpets.data.records import ImageRecord
from tfpets.data.tfrecord import multires, shards


def numpy_box_pyramid(image_hwc: np.ndarray) -> list:
  """Independent reference: explicit 2x2 block sums, float64, cascaded."""
  level = image_hwc.astype(np.float64).transpose(2, 0, 1)
  out = [np.clip(np.rint(level), 0, 255).astype(np.uint8)]
  while level.shape[1] > 4:
    level = (
      level[:, 0::2, 0::2] + level[:, 1::2, 0::2] + level[:, 0::2, 1::2] + level[:, 1::2, 1::2]
    ) / 4.0
    out.append(np.clip(np.rint(level), 0, 255).astype(np.uint8))
  return out


def test_lod_pyramid_equals_numpy_box_average():
  image = np.random.RandomState(3).randint(0, 256, (64, 64, 3)).astype(np.uint8)
  ours = prepare.lod_pyramid(image)
  ref = numpy_box_pyramid(image)
  assert [level.shape for level in ours] == [
    (3, 64, 64),
    (3, 32, 32),
    (3, 16, 16),
    (3, 8, 8),
    (3, 4, 4),
  ]
  for a, b in zip(ours, ref):
    np.testing.assert_array_equal(a, b)


def test_multires_files_names_shapes_and_labels_in_record_order(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (5, 32, 32, 3)).astype(np.uint8)
  labels = [2, 0, 1, 2, 1]
  out = tmp_path / "pets"
  writer = multires.MultiResWriter(out, 32)
  for image in images:
    writer.write(prepare.lod_pyramid(image))
  writer.close(multires.one_hot(labels, 3))
  names = sorted(p.name for p in out.iterdir())
  assert names == [
    "pets-r02.tfrecords",
    "pets-r03.tfrecords",
    "pets-r04.tfrecords",
    "pets-r05.tfrecords",
    "pets-rxx.labels",
  ]
  for log2 in (5, 4, 3, 2):
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(out / f"pets-r{log2:02d}.tfrecords"))]
    assert len(records) == 5
    for image, serialized in zip(images, records):
      ex = tf.train.Example.FromString(serialized)
      assert sorted(ex.features.feature) == ["data", "shape"]
      shape = list(ex.features.feature["shape"].int64_list.value)
      data = np.frombuffer(ex.features.feature["data"].bytes_list.value[0], np.uint8)
      expected = numpy_box_pyramid(image)[5 - log2]
      assert shape == [3, 2**log2, 2**log2]
      np.testing.assert_array_equal(data.reshape(shape), expected)
  with open(out / "pets-rxx.labels", "rb") as f:
    stored = np.load(f)
  assert stored.dtype == np.float32
  np.testing.assert_array_equal(stored.argmax(axis=1), labels)
  np.testing.assert_array_equal(stored.sum(axis=1), np.ones(5))


def test_multires_reader_requires_every_level(tmp_path):
  out = tmp_path / "ds"
  writer = multires.MultiResWriter(out, 16)
  writer.write(prepare.lod_pyramid(np.zeros((16, 16, 3), np.uint8)))
  writer.close()
  (out / "ds-r03.tfrecords").unlink()
  with pytest.raises(FileNotFoundError, match="ds-r03.tfrecords"):
    multires.level_files(out)


def test_multires_rejects_non_power_of_two(tmp_path):
  with pytest.raises(ValueError, match="power of two"):
    multires.MultiResWriter(tmp_path / "x", 96)


def _jpeg(pixels):
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


def test_shard_example_round_trip(tmp_path):
  pixels = bad_images.gradient(30, 50)
  record = ImageRecord(
    path="/data/Bengal_7.jpg",
    label=4,
    class_name="Bengal",
    species="cat",
    box=[3, 4, 20, 25],
    landmarks=np.arange(10, dtype=np.float32).reshape(5, 2),
  )
  encoded = _jpeg(pixels)
  item = prepare.PreparedImage(record, encoded, 30, 50, [])
  ex = shards.parse(tf.constant(shards.serialize(item)))
  assert int(ex["label"]) == 4 and ex["class_name"].numpy() == b"Bengal"
  assert ex["id"].numpy() == b"Bengal_7" and ex["species"].numpy() == b"cat"
  assert bool(ex["has_box"]) and int(ex["num_landmarks"]) == 5
  np.testing.assert_allclose(ex["box"].numpy(), [3, 4, 20, 25])
  landmarks = ex["landmarks"].numpy()
  np.testing.assert_allclose(landmarks[:5], record.landmarks)
  np.testing.assert_array_equal(landmarks[5:], 0)
  assert (
    shards.parse(tf.constant(shards.serialize(item)), decode_image=False)["encoded"].numpy()
    == encoded
  )
  # TF and Pillow upsample chroma differently: close on average, not bit-equal.
  decoded = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")).astype(int)
  assert np.abs(ex["image"].numpy().astype(int) - decoded).mean() < 1.5


def test_shard_example_without_annotations(tmp_path):
  record = ImageRecord(path="a/b/cat.jpg", label=0, class_name="x")
  item = prepare.PreparedImage(record, _jpeg(np.zeros((8, 8, 3), np.uint8)), 8, 8, [])
  ex = shards.parse(tf.constant(shards.serialize(item)))
  assert not bool(ex["has_box"]) and int(ex["num_landmarks"]) == 0


def test_manifest_round_trip_and_errors(tmp_path):
  writer = shards.ShardWriter(tmp_path, "train", num_records=5, records_per_shard=2)
  assert [p.rsplit("/", 1)[-1] for p in writer.paths] == [
    "train-00000-of-00003.tfrecord",
    "train-00001-of-00003.tfrecord",
    "train-00002-of-00003.tfrecord",
  ]
  writer.close()
  shards.write_manifest(tmp_path, ["a", "b"], {"train": {"a": 3, "b": 2}}, {"train": writer.paths})
  manifest = shards.read_manifest(tmp_path)
  assert manifest["splits"]["train"]["num_examples"] == 5
  assert shards.split_files(tmp_path, "train") == writer.paths
  with pytest.raises(ValueError, match="no split 'test'"):
    shards.split_files(tmp_path, "test")
  with pytest.raises(FileNotFoundError, match="no manifest"):
    shards.read_manifest(tmp_path / "missing")
