"""tfds:oxford_iiit_pet and tfds:cars196 prepared offline from tiny archives in the official layout.

Archives are built in tmp_path, TFDS is pointed at them through the download-cache-name route
(its download cache, keyed by the archive URL), and every socket connection is refused, so a download attempt fails the test.
"""

from __future__ import annotations

import os
import shutil
import socket

import numpy as np
import pytest
import source_fixtures as sf

from tfpets.data import decode
from tfpets.data.sources import tfds_source

# The cache name TFDS uses for the registered images.tar.gz.
OXFORD_IMAGES_CACHE_NAME = (
  "thor.robots.ox.ac.uk_vgg_pets_imagesZxlcXhwB8atfm2pdIrjCelgNiW7ORYkX5h1Fkzf6MY0.tar.gz"
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError(f"network access attempted in a test: {args}")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(autouse=True)
def quiet_tfds():
  tfds_source.tfds.disable_progress_bar()


def test_oxford_pets_prepared_from_cache_route(tmp_path):
  fx = sf.make_oxford_pets(tmp_path / "release", with_defects=False)
  archives = sf.make_oxford_archives(fx, tmp_path / "archives")
  data_dir = tmp_path / "tfds"
  result = tfds_source.load_tfds(
    "oxford_iiit_pet",
    data_dir=str(data_dir),
    tfds_manual_dir=str(archives),
    tfds_verify_checksums=False,
  )
  cache_dir = data_dir / "downloads" / "oxford_iiit_pet"
  assert (cache_dir / OXFORD_IMAGES_CACHE_NAME).is_symlink()
  assert (cache_dir / (OXFORD_IMAGES_CACHE_NAME + ".INFO")).is_file()

  assert result.class_names == ["Abyssinian", "american_bulldog", "Bengal"]  # CLASS-ID order
  label_of_id = {1: 0, 2: 1, 6: 2}
  tfds_split = {"trainval": "train", "test": "test"}
  records = {r.path: r for r in result.records}
  assert set(records) == {
    f"tfds:oxford_iiit_pet/{tfds_split[fx.split_of[n]]}/{n}.jpg" for n in fx.listed
  }
  for name, (class_id, species) in fx.listed.items():
    record = records[f"tfds:oxford_iiit_pet/{tfds_split[fx.split_of[name]]}/{name}.jpg"]
    assert record.label == label_of_id[class_id]
    assert record.class_name == name.rsplit("_", 1)[0]
    assert record.species == {1: "cat", 2: "dog"}[species]
    assert record.split == tfds_split[fx.split_of[name]]
    assert record.image_id == name
    decoded = decode.decode_image(record.image_bytes, record.path)
    assert decoded.format == "JPEG"  # the RGBA PNG Abyssinian_5 was re-encoded
    assert (decoded.width, decoded.height) == fx.sizes[name]
    if name in fx.boxes:
      np.testing.assert_allclose(record.box, fx.boxes[name], atol=1e-3)
    else:
      assert record.box is None  # TFDS stores (0, 0, 0, 0) for test images
  original = decode.read_image(str(fx.root / "images" / "Bengal_10.jpg")).pixels
  stored = decode.decode_image(records["tfds:oxford_iiit_pet/train/Bengal_10.jpg"].image_bytes)
  np.testing.assert_array_equal(stored.pixels, original)

  # Prepared now: a second load needs no archives and keeps the label space.
  shutil.rmtree(archives)
  test_only = tfds_source.load_tfds("oxford_iiit_pet", data_dir=str(data_dir), split="test")
  assert {r.split for r in test_only.records} == {"test"}
  assert len(test_only.records) == sum(s == "test" for s in fx.split_of.values())
  assert test_only.class_names == result.class_names


def test_cars196_prepared_from_cache_route(tmp_path):
  fx = sf.make_stanford_cars(tmp_path / "release", with_defects=False)
  archives = sf.make_cars_archives(fx, tmp_path / "archives")
  result = tfds_source.load_tfds(
    "cars196",
    data_dir=str(tmp_path / "tfds"),
    tfds_manual_dir=str(archives),
    tfds_verify_checksums=False,
  )
  assert result.class_names == list(sf.CAR_NAMES[:3])
  records = {r.path: r for r in result.records}
  expected = {
    f"tfds:cars196/{split}/{fname[:-4]}": (split, fname, class_id, box)
    for split, rows in fx.annotations.items()
    for fname, class_id, box in rows
  }
  assert set(records) == set(expected)
  for path, (split, fname, class_id, box) in expected.items():
    record = records[path]
    assert (record.split, record.label, record.class_name) == (
      split,
      class_id - 1,
      sf.CAR_NAMES[class_id - 1],
    )
    np.testing.assert_allclose(record.box, box, atol=1e-3)
    original = decode.read_image(str(fx.root / f"cars_{split}" / fname)).pixels
    np.testing.assert_array_equal(decode.decode_image(record.image_bytes).pixels, original)


def test_manual_dir_route_validates_checksums(tmp_path):
  fx = sf.make_oxford_pets(tmp_path / "release", with_defects=False)
  archives = sf.make_oxford_archives(fx, tmp_path / "archives")
  with pytest.raises(
    tfds_source.ChecksumMismatchError, match=f"in {archives} differs.*has wrong checksum"
  ):
    tfds_source.load_tfds(
      "oxford_iiit_pet", data_dir=str(tmp_path / "tfds"), tfds_manual_dir=str(archives)
    )


def test_missing_archives_name_directory_and_files(tmp_path):
  empty = tmp_path / "manual"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as error:
    tfds_source.load_tfds("cars196", data_dir=str(tmp_path / "tfds"), tfds_manual_dir=str(empty))
  message = str(error.value)
  assert str(empty) in message and str(tmp_path / "tfds") in message
  for name in (
    "cars_train.tgz",
    "cars_test.tgz",
    "car_devkit.tgz",
    "cars_test_annos_withlabels.mat",
  ):
    assert name in message
  assert not os.listdir(empty)


def test_unsupported_dataset_and_split(tmp_path):
  with pytest.raises(ValueError, match="unsupported dataset; supported: oxford_iiit_pet, cars196"):
    tfds_source.load_tfds("mnist", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="split must be one of all, train, test"):
    tfds_source.load_tfds("cars196", data_dir=str(tmp_path), split="trainval")
