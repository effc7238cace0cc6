"""The crop stage's windows, crops, reports and records against hand-computed values."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tfpets.data import convert, decode
from tfpets.data.records import ImageRecord
from tfpets.data.rejects import RejectsReport
from tfpets.data.sources import SourceResult
from tfpets.data.tfrecord import shards
from tfpets.landmarks import crop as crop_lib
from tfpets.landmarks import model as model_lib
from tfpets.landmarks import predict

from .handmade import draw_head, handmade_models

MARGIN, SIZE = 0.2, 32


def _smooth_image(height, width, seed):
  """A smooth colour gradient, which JPEG keeps nearly intact."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  phase = seed * 0.7
  channels = [
    127 + 100 * np.sin(xx / 9 + phase),
    127 + 100 * np.cos(yy / 11 - phase),
    127 + 60 * np.sin((xx + yy) / 13),
  ]
  return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def _points_in(box):
  x0, y0, x1, y1 = box
  return np.array([[x0 + 2, y0 + 3], [x1 - 2, y0 + 4], [(x0 + x1) / 2, y1 - 2]] * 3, np.float32)


# (height, width, head box, landmarks, hand-computed (left, top, side) for margin 0.2):
CASES = {
  # union [38, 28, 62, 52] (the box holds the points): side round(24 * 1.4) = 34,
  # left round(50 - 17) = 33, top round(40 - 17) = 23.
  "middle": (80, 100, [38, 28, 62, 52], None, (33, 23, 34)),
  # points reach past the box: union [2, 5, 30, 40], side round(35 * 1.4) = 49; centred it would
  # start at (-8.5, -2), so it is shifted into the frame: (0, 0).
  "corner": (80, 100, [6, 5, 30, 40], [[2, 8], [20, 6], [16, 39]], (0, 0, 49)),
  # side round(30 * 1.4) = 42 exceeds the image: clipped to max(40, 30) = 40; x: 20 - 20 = 0;
  # y: 16.5 - 20 = -3.5 rounds (half to even) to -4, black rows above and below.
  "big_head": (30, 40, [5, 5, 35, 28], None, (0, -4, 40)),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """Converted shards: the three cases (train/test) and one image without annotations."""
  root = tmp_path_factory.mktemp("crop_data")
  records = []
  for i, (name, (h, w, box, points, _)) in enumerate(CASES.items()):
    path = root / "images" / f"{name}.jpg"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(decode.encode_jpeg(_smooth_image(h, w, i), quality=98))
    points = _points_in(box) if points is None else np.array(points * 3, np.float32)
    records.append(
      ImageRecord(
        str(path),
        i % 2,
        ["cat", "dog"][i % 2],
        box=box,
        landmarks=points,
        split="train" if i < 2 else "test",
      )
    )
  bare = root / "images" / "bare.jpg"
  bare.write_bytes(decode.encode_jpeg(_smooth_image(50, 70, 9), quality=98))
  records.append(ImageRecord(str(bare), 0, "cat", split="test"))
  source = SourceResult(records, ["cat", "dog"], RejectsReport())
  convert.convert(
    source,
    root / "records",
    root / "reports",
    convert.ConvertOptions(splits="source", dedupe="off", gan_resolution=0, workers=1),
  )
  return root / "records" / "shards"


def _stored_pixels(shards_dir, image_id):
  for split in ("train", "test"):
    for serialized in tf.data.TFRecordDataset(shards.split_files(shards_dir, split)):
      ex = shards.parse(serialized)
      if ex["id"].numpy().decode() == image_id:
        return ex["image"].numpy()
  raise KeyError(image_id)


def test_windows_crops_and_mapped_annotations_from_annotations(dataset, tmp_path):
  outcome = crop_lib.crop_dataset(
    dataset, tmp_path / "crops", None, crop_lib.CropOptions(MARGIN, SIZE, "keep", True)
  )
  rows = {r["id"]: r for r in outcome.rows}
  records = {r.image_id: r for r in outcome.records}
  for name, (h, w, box, points, expected) in CASES.items():
    row = rows[name]
    assert (row["left"], row["top"], row["side"]) == expected
    assert row["contains_true_head"] is True
    assert row["crop_file"].endswith(f"{['cat', 'dog'][list(CASES).index(name) % 2]}/{name}.jpg")
    # The crop is the window of the stored image (black outside), resized to SIZE.
    left, top, side = expected
    stored = _stored_pixels(dataset, name)
    padded = np.zeros((side, side, 3), np.uint8)
    ys, xs = slice(max(top, 0), min(top + side, h)), slice(max(left, 0), min(left + side, w))
    padded[ys.start - top : ys.stop - top, xs.start - left : xs.stop - left] = stored[ys, xs]
    expected_pixels = cv2.resize(padded, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    written = decode.read_image(row["crop_file"]).pixels
    assert np.abs(written.astype(int) - expected_pixels).mean() < 3.0
    # Annotations move into crop pixels: (p + 0.5 - corner) * SIZE / side - 0.5.
    scale = SIZE / side
    np.testing.assert_allclose(
      records[name].box,
      [
        (box[0] + 0.5 - left) * scale - 0.5,
        (box[1] + 0.5 - top) * scale - 0.5,
        (box[2] + 0.5 - left) * scale - 0.5,
        (box[3] + 0.5 - top) * scale - 0.5,
      ],
      atol=1e-4,
    )
  assert outcome.contained_fraction == 1.0


@pytest.mark.parametrize("action", ["keep", "skip"])
def test_images_without_a_head_are_reported_and_kept_or_skipped(dataset, tmp_path, action):
  outcome = crop_lib.crop_dataset(
    dataset, tmp_path / "crops", None, crop_lib.CropOptions(MARGIN, SIZE, action, True)
  )
  assert [r["id"] for r in outcome.no_head] == ["bare"]
  assert outcome.no_head[0]["action"] == action
  kept = {r.image_id for r in outcome.records}
  assert kept == set(CASES) | ({"bare"} if action == "keep" else set())
  if action == "keep":  # uncropped: the whole 70 x 50 image padded to a 70 x 70 square
    row = next(r for r in outcome.rows if r["id"] == "bare")
    assert (row["left"], row["top"], row["side"]) == (0, -10, 70)
  reports = crop_lib.write_reports(outcome, tmp_path / "reports")
  with open(reports["no_head"]) as f:
    assert [r["id"] for r in csv.DictReader(f)] == ["bare"]


def test_crops_become_shard_records_with_their_splits(dataset, tmp_path):
  outcome = crop_lib.crop_dataset(
    dataset, tmp_path / "crops", None, crop_lib.CropOptions(MARGIN, SIZE, "keep", True)
  )
  result = crop_lib.convert_crops(
    outcome, tmp_path / "records", tmp_path / "reports", SIZE, workers=1
  )
  assert result.split_counts == {"train": 2, "test": 2}
  assert result.gan_dir is not None  # 32 is a power of two: StyleGAN records too
  manifest = shards.read_manifest(result.shards_dir)
  assert manifest["class_names"] == ["cat", "dog"]
  for serialized in tf.data.TFRecordDataset(shards.split_files(result.shards_dir, "train")):
    ex = shards.parse(serialized)
    assert ex["image"].shape == (SIZE, SIZE, 3)
    assert bool(ex["has_box"]) and int(ex["num_landmarks"]) == 9


def test_detector_crops_follow_the_detected_head(tmp_path):
  """With a detector, the window comes from its landmarks and box, in original pixels."""
  config = model_lib.DetectorConfig(image_size=64, roi_size=64, roi_margin=0.15)
  detector = predict.Detector.from_models(config, *handmade_models(config))
  head, blobs = (50, 20, 89, 59), np.array([[60.2, 30.4], [79.5, 35.1], [70.3, 50.6]])
  image = draw_head(100, 140, head, blobs)
  det = detector.detect(image)
  window = crop_lib.head_window(det.landmarks, det.box, 100, 140, MARGIN)
  # The head spans 39 px between its edge pixel centres: side round(39 * 1.4) = 55 (+-1 for the
  # detected box), centred on (69.5, 39.5).
  left, top, side = window
  assert abs(side - 55) <= 1 and abs(left - 42) <= 1 and abs(top - 12) <= 1
  assert crop_lib.contains(window, np.array(head, np.float32))
  assert not crop_lib.contains((head[0] + 1, top, side), np.array(head, np.float32))
