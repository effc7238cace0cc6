from __future__ import annotations

import collections
import csv
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.data import bad_images
from tfpets.data import convert
from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult, load_source
from tfpets.data.tfrecord import multires, shards
from tfpets.errors import ArgumentError, UsageError


def read_rejects(path):
  with open(path) as f:
    return {
      row["file"].rsplit("/", 1)[-1]: (row["reason"], row["action"]) for row in csv.DictReader(f)
    }


def read_split(shards_dir, split):
  return [shards.parse(s) for s in tf.data.TFRecordDataset(shards.split_files(shards_dir, split))]


@pytest.fixture(scope="module")
def converted_slice(oxford_pets_3class, tmp_path_factory):
  out = tmp_path_factory.mktemp("oxford")
  source = load_source(f"oxford_pets:{oxford_pets_3class}")
  options = convert.ConvertOptions(
    splits="source", dedupe="off", gan_resolution=32, square="head", workers=2
  )
  result = convert.convert(source, out / "records", out / "reports", options)
  return oxford_pets_3class, out, result


def test_real_slice_loses_no_image_and_matches_the_official_lists(converted_slice):
  root, out, result = converted_slice
  lines = lambda name: [
    line
    for line in (root / "annotations" / name).read_text().splitlines()
    if line and not line.startswith("#")
  ]
  assert result.split_counts == {
    "train": len(lines("trainval.txt")),
    "test": len(lines("test.txt")),
    "unlisted": 2,
  }
  jpgs = [p for p in (root / "images").iterdir() if p.suffix == ".jpg"]
  assert result.images_written == len(jpgs) == 600
  manifest = shards.read_manifest(out / "records" / "shards")
  per_class = collections.Counter(line.split()[0].rsplit("_", 1)[0] for line in lines("test.txt"))
  assert manifest["splits"]["test"]["per_class"] == dict(per_class)


def test_real_slice_png_and_gif_are_converted_and_mat_files_reported(converted_slice):
  root, out, result = converted_slice
  report = collections.defaultdict(list)
  with open(result.rejects_csv) as f:
    for row in csv.DictReader(f):
      report[row["file"].rsplit("/", 1)[-1]].append((row["reason"], row["action"]))
  assert ("PNG file named .jpg; converted", rejects_lib.CONVERTED) in report["Abyssinian_5.jpg"]
  assert ("alpha dropped; converted", rejects_lib.CONVERTED) in report["Abyssinian_5.jpg"]
  assert ("GIF file named .jpg; converted", rejects_lib.CONVERTED) in report["Abyssinian_34.jpg"]
  for i in (100, 101, 102):
    assert report[f"Abyssinian_{i}.mat"] == [
      ("stray .mat file in images/ (not an image)", rejects_lib.IGNORED)
    ]
  assert not [f for f, rows in report.items() for _, a in rows if a == rejects_lib.SKIPPED]
  # The PNG is stored as a real JPEG whose pixels are the PNG's RGB.
  png = np.asarray(Image.open(root / "images" / "Abyssinian_5.jpg").convert("RGB")).astype(int)
  stored = next(
    ex
    for split in ("train", "test", "unlisted")
    for ex in read_split(out / "records" / "shards", split)
    if ex["id"].numpy() == b"Abyssinian_5"
  )
  assert stored["image"].shape == png.shape
  assert np.abs(stored["image"].numpy().astype(int) - png).mean() < 3


def test_real_slice_gan_records_follow_the_train_split_with_labels(converted_slice):
  _, out, result = converted_slice
  files = multires.level_files(result.gan_dir)
  assert [f.rsplit("-", 1)[-1] for f in files] == [
    "r05.tfrecords",
    "r04.tfrecords",
    "r03.tfrecords",
    "r02.tfrecords",
  ]
  labels = multires.read_labels(result.gan_dir)
  train = read_split(out / "records" / "shards", "train")
  assert labels.shape == (len(train), 3)
  # GAN records are written in the same order as the train shard (one shard file here).
  np.testing.assert_array_equal(labels.argmax(1), [int(ex["label"]) for ex in train])


def _folder_source(tmp_path, names, landmarks=None):
  paths = bad_images.write_all(tmp_path / "imgs")
  records = [ImageRecord(str(paths[n]), 0, "only", landmarks=landmarks) for n in names]
  return SourceResult(records, ["only"], rejects_lib.RejectsReport())


def test_every_bad_file_is_in_the_report_with_its_reason(tmp_path):
  names = [
    "good.jpg",
    "png_named.jpg",
    "gif_named.jpg",
    "gray.jpg",
    "cmyk.jpg",
    "gray16.png",
    "exif_rotated.jpg",
    "truncated_tail.jpg",
    "truncated.jpg",
    "corrupt.jpg",
    "empty.jpg",
    "notes.jpg",
  ]
  source = _folder_source(tmp_path, names)
  # Without dedupe: truncated_tail.jpg has the same pixels as good.jpg.
  result = convert.convert(
    source,
    tmp_path / "rec",
    tmp_path / "rep",
    convert.ConvertOptions(splits="train=1.0", gan_resolution=0, dedupe="off"),
  )
  report = read_rejects(result.rejects_csv)
  skipped = {f for f, (_, action) in report.items() if action == rejects_lib.SKIPPED}
  assert skipped == {"truncated.jpg", "corrupt.jpg", "empty.jpg", "notes.jpg"}
  assert "empty file" in report["empty.jpg"][0] and "not an image" in report["notes.jpg"][0]
  assert result.images_written == len(names) - 4
  summary = json.loads((tmp_path / "rep" / "conversion.json").read_text())
  assert summary["images_written"] == 8 and summary["rejects"]["skipped"] == 4


def test_strict_and_nothing_usable_fail(tmp_path):
  source = _folder_source(tmp_path, ["good.jpg", "empty.jpg"])
  with pytest.raises(UsageError, match=r"strict=True: 1 file\(s\) skipped"):
    convert.convert(
      source,
      tmp_path / "a",
      tmp_path / "ra",
      convert.ConvertOptions(splits="train=1.0", gan_resolution=0, strict=True),
    )
  source = _folder_source(tmp_path, ["empty.jpg", "notes.jpg"])
  with pytest.raises(UsageError, match="no usable image remains"):
    convert.convert(
      source,
      tmp_path / "b",
      tmp_path / "rb",
      convert.ConvertOptions(splits="train=1.0", gan_resolution=0),
    )
  assert (tmp_path / "rb" / "rejects.csv").is_file()


def test_landmarks_far_outside_the_image_are_dropped_and_reported(tmp_path):
  source = _folder_source(tmp_path, ["good.jpg"], landmarks=[[5, 5]] * 8 + [[500, 5]])
  result = convert.convert(
    source,
    tmp_path / "rec",
    tmp_path / "rep",
    convert.ConvertOptions(splits="train=1.0", gan_resolution=0),
  )
  reason, action = read_rejects(result.rejects_csv)["good.jpg"]
  assert action == rejects_lib.ANNOTATION_DROPPED and "landmark 8 at (500.0, 5.0)" in reason
  (ex,) = read_split(tmp_path / "rec" / "shards", "train")
  assert int(ex["num_landmarks"]) == 0


@pytest.mark.parametrize(
  "mode, written, action",
  [("remove", 2, rejects_lib.SKIPPED), ("report", 3, rejects_lib.DUPLICATE_KEPT)],
)
def test_exact_duplicates_are_reported_and_removed_on_request(tmp_path, mode, written, action):
  paths = bad_images.write_all(tmp_path / "imgs")
  copy = tmp_path / "imgs" / "copy.jpg"
  copy.write_bytes(paths["good.jpg"].read_bytes())
  records = [
    ImageRecord(str(paths["good.jpg"]), 0, "a"),
    ImageRecord(str(copy), 0, "a"),
    ImageRecord(str(paths["gray.jpg"]), 0, "a"),
  ]
  result = convert.convert(
    SourceResult(records, ["a"], rejects_lib.RejectsReport()),
    tmp_path / "rec",
    tmp_path / "rep",
    convert.ConvertOptions(splits="train=1.0", gan_resolution=0, dedupe=mode),
  )
  reason, got_action = read_rejects(result.rejects_csv)["copy.jpg"]
  assert got_action == action and reason.startswith(f"exact duplicate of {paths['good.jpg']}")
  assert result.images_written == written


def test_subsets_nest_through_conversion(tmp_path):
  bad_images.write_all(tmp_path / "imgs")
  records = []
  for label in range(2):
    for i in range(10):
      pixels = np.random.RandomState(label * 100 + i).randint(0, 256, (16, 16, 3)).astype(np.uint8)
      path = tmp_path / "imgs" / f"c{label}_{i}.jpg"
      path.write_bytes(bad_images.jpeg(pixels))
      records.append(ImageRecord(str(path), label, f"c{label}"))
  members = {}
  for subset in ("0.2", "0.5", "1.0"):
    source = SourceResult(list(records), ["c0", "c1"], rejects_lib.RejectsReport())
    convert.convert(
      source,
      tmp_path / subset,
      tmp_path / f"rep{subset}",
      convert.ConvertOptions(splits="train=1.0", subset=subset, gan_resolution=0, dedupe="off"),
    )
    members[subset] = {ex["id"].numpy() for ex in read_split(tmp_path / subset / "shards", "train")}
  assert len(members["0.2"]) == 4 and len(members["0.5"]) == 10 and len(members["1.0"]) == 20
  assert members["0.2"] < members["0.5"] < members["1.0"]


def test_convert_dataset_renders_and_converts_the_synthetic_pets(tmp_path):
  options = convert.ConvertOptions(splits="train=0.5,test=0.5", gan_resolution=32, workers=1)
  synthetic = convert.SyntheticOptions(num_breeds=2, images_per_breed=4, size=64)
  result = convert.convert_dataset("synthetic", tmp_path, options, synthetic)
  assert sorted((tmp_path / "source").rglob("*.jpg")) and result.images_written == 8
  assert result.split_counts == {"test": 4, "train": 4}
  levels = multires.level_files(tmp_path / "records" / "stylegan")
  first = next(iter(tf.data.TFRecordDataset(levels[0]).map(multires.parse_level)))
  assert first.shape == (3, 32, 32) and len(levels) == 4  # 32, 16, 8 and 4 px
  assert sum(1 for _ in tf.data.TFRecordDataset(levels[0])) == 4  # the train split only


@pytest.mark.parametrize(
  "field,value,argument",
  [("splits", "train=2", "splits"), ("subset", "0", "subset"), ("dedupe", "maybe", "dedupe")],
)
def test_bad_options_fail_before_any_work_naming_the_argument(field, value, argument):
  with pytest.raises(ArgumentError) as info:
    convert.ConvertOptions(**{field: value})
  assert info.value.argument == argument and info.value.value == value
