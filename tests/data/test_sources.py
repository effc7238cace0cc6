"""Source loaders on fixtures written in the exact on-disk formats, and on the real Oxford slice."""

from __future__ import annotations

import collections
import os
import pathlib
import re

import numpy as np
import pytest
import scipy.io
import source_fixtures as sf

from tfpets.data import rejects as rejects_lib
from tfpets.data import synthetic
from tfpets.data.sources import load_source
from tfpets.data.sources.cat_landmarks import (
  load_cat_dataset,
  parse_landmark_file,
  to_five_points,
  write_landmark_file,
)
from tfpets.data.sources.csv_source import load_csv
from tfpets.data.sources.folders import load_folders
from tfpets.data.sources.oxford_pets import load_oxford_pets
from tfpets.data.sources.stanford_cars import load_stanford_cars

# The Kaggle CAT 5-point variant (docs/landmarks.md) keeps 1-based points #1, #2, #3, #5, #8.
FIVE_POINT_ROWS = [n - 1 for n in (1, 2, 3, 5, 8)]


def entries_by_name(result):
  """basename -> (reason, action) of every reject (names are unique within a fixture)."""
  return {
    os.path.basename(e.path.rstrip("/")): (e.reason, e.action) for e in result.rejects.entries
  }


def by_name(result):
  return {os.path.basename(r.path): r for r in result.records}


# ---------------------------------------------------------------------------------------------
# Landmark sidecar format


def test_landmark_file_round_trip_and_text_format(tmp_path):
  path = tmp_path / "x.jpg.cat"
  write_landmark_file(str(path), sf.NINE_POINTS)
  tokens = path.read_text().split()
  assert tokens[0] == "9" and len(tokens) == 19
  assert tokens[1:3] == ["10.0", "12.0"]  # Python str(float), x before y
  np.testing.assert_array_equal(parse_landmark_file(str(path)), sf.NINE_POINTS)


def test_landmark_file_reads_kaggle_integer_line(tmp_path):
  path = sf.write_text(
    tmp_path / "a.jpg.cat", "9 175 160 239 162 202 228 111 90 98 16 156 47 250 66 300 20 313 104 "
  )
  points = parse_landmark_file(str(path))
  assert points.shape == (9, 2) and points.dtype == np.float32
  assert points[0].tolist() == [175, 160] and points[8].tolist() == [313, 104]


@pytest.mark.parametrize(
  "text, message",
  [
    ("", "empty landmark file"),
    ("9 1 2 3", "header says 9 points but 3 numbers follow"),
    ("x 1 2", "is not a point count"),
    ("2 1 2 abc 4", "'abc' is not a number"),
    ("1 nan 2", "non-finite"),
  ],
)
def test_landmark_file_errors_name_file_and_problem(tmp_path, text, message):
  path = sf.write_text(tmp_path / "bad.jpg.cat", text)
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + re.escape(message)):
    parse_landmark_file(str(path))


def test_to_five_points_keeps_eyes_mouth_and_ear_tips():
  five = to_five_points(sf.NINE_POINTS)
  np.testing.assert_array_equal(five, sf.NINE_POINTS[FIVE_POINT_ROWS])
  np.testing.assert_array_equal(to_five_points(five), five)
  with pytest.raises(ValueError, match="9 .*got 7"):
    to_five_points(np.zeros((7, 2)))


# ---------------------------------------------------------------------------------------------
# Class folders


def make_folder_tree(root: pathlib.Path):
  sf.write_jpeg(root / "b_dog" / "sub" / "y1.jpg", seed=1)
  sf.write_jpeg(root / "b_dog" / "y2.jpeg", seed=2)
  sf.write_text(root / "b_dog" / "y2.jpeg.animal", "9 1 2 3")  # broken sidecar
  sf.write_jpeg(root / "a_cat" / "x1.jpg", seed=3)
  sf.write_text(root / "a_cat" / "x1.jpg.cat", sf.sidecar_text(sf.NINE_POINTS))
  sf.write_jpeg(root / "a_cat" / "x2.png", seed=4)
  sf.write_text(root / "a_cat" / "notes.txt", "hello")
  sf.write_text(root / "a_cat" / "gone.jpg.cat", sf.sidecar_text(sf.NINE_POINTS))
  (root / "c_empty").mkdir()
  sf.write_text(root / "README.md", "readme")
  sf.write_jpeg(root / ".ipynb_checkpoints" / "z.jpg", seed=5)


def test_folders_classes_labels_sidecars_and_rejects(tmp_path):
  make_folder_tree(tmp_path)
  result = load_folders(str(tmp_path), split="train")
  assert result.class_names == ["a_cat", "b_dog"]  # sorted, the empty class gets no label
  records = by_name(result)
  assert sorted(records) == ["x1.jpg", "x2.png", "y1.jpg", "y2.jpeg"]
  assert {n: (r.label, r.class_name) for n, r in records.items()} == {
    "x1.jpg": (0, "a_cat"),
    "x2.png": (0, "a_cat"),
    "y1.jpg": (1, "b_dog"),
    "y2.jpeg": (1, "b_dog"),
  }
  assert all(r.split == "train" and r.source == "folder" for r in result.records)
  assert records["y1.jpg"].path == str(tmp_path / "b_dog" / "sub" / "y1.jpg")
  np.testing.assert_array_equal(records["x1.jpg"].landmarks, sf.NINE_POINTS)
  assert records["x2.png"].landmarks is None and records["y2.jpeg"].landmarks is None
  rejects = entries_by_name(result)
  assert rejects["notes.txt"] == ("not an image (extension '.txt')", rejects_lib.IGNORED)
  assert rejects["README.md"] == ("file not inside a class folder", rejects_lib.IGNORED)
  assert rejects["c_empty"][1] == rejects_lib.SKIPPED and "empty class" in rejects["c_empty"][0]
  assert rejects[".ipynb_checkpoints"][1] == rejects_lib.IGNORED
  assert rejects["gone.jpg.cat"] == ("landmark file without its image", rejects_lib.IGNORED)
  reason, action = rejects["y2.jpeg"]
  assert action == rejects_lib.ANNOTATION_DROPPED
  assert "y2.jpeg.animal" in reason and "header says 9 points" in reason
  assert len(result.rejects) == 6


def test_folders_mixed_point_counts_reduce_to_five(tmp_path):
  sf.write_jpeg(tmp_path / "cat" / "a.jpg", seed=1)
  sf.write_text(tmp_path / "cat" / "a.jpg.cat", sf.sidecar_text(sf.NINE_POINTS))
  sf.write_jpeg(tmp_path / "cat" / "b.jpg", seed=2)
  five = sf.NINE_POINTS[FIVE_POINT_ROWS] + 1
  sf.write_text(tmp_path / "cat" / "b.jpg.animal", sf.sidecar_text(five))
  result = load_folders(str(tmp_path))
  records = by_name(result)
  np.testing.assert_array_equal(records["a.jpg"].landmarks, sf.NINE_POINTS[FIVE_POINT_ROWS])
  np.testing.assert_array_equal(records["b.jpg"].landmarks, five)
  assert entries_by_name(result)["a.jpg"][1] == rejects_lib.CONVERTED


def test_folders_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere: no such directory"):
    load_folders(str(tmp_path / "nowhere"))
  (tmp_path / "only_empty").mkdir()
  with pytest.raises(ValueError, match="no usable images.*empty class"):
    load_folders(str(tmp_path))


def test_load_source_dispatches_folder_spec(tmp_path):
  make_folder_tree(tmp_path)
  assert load_source(f"folder:{tmp_path}").class_names == ["a_cat", "b_dog"]


# ---------------------------------------------------------------------------------------------
# CSV

CSV_HEADER = ["path", "label", "species", "split", "xmin", "ymin", "xmax", "ymax"] + [
  f"lm{i}_{a}" for i in range(9) for a in "xy"
]


def write_csv(path: pathlib.Path, header, rows):
  lines = [",".join(header)] + [",".join(str(c) for c in row) for row in rows]
  path.write_text("\n".join(lines) + "\n")
  return path


def test_csv_rows_annotations_and_row_rejects(tmp_path):
  sf.write_jpeg(tmp_path / "img" / "a.jpg", seed=1)
  sf.write_jpeg(tmp_path / "img" / "b.jpg", seed=2)
  absolute = sf.write_jpeg(tmp_path / "elsewhere" / "c.png", seed=3)
  lms = [f"{v:g}" for v in sf.NINE_POINTS.reshape(-1)]
  no_lms = [""] * 18
  rows = [
    ["img/a.jpg", "tabby", "cat", "train", 1, 2, 30, 25.5] + lms,  # line 2
    [absolute, "tabby", "", "", "", "", "", ""] + no_lms,  # line 3
    ["img/missing.jpg", "tabby", "cat", "train", "", "", "", ""] + no_lms,  # line 4
    ["img/b.jpg", "pug", "dog", "test", "abc", 2, 3, 4] + no_lms,  # line 5
    ["img/b.jpg", "pug", "dog", "test", 1, "", 3, 4] + no_lms,  # line 6
    ["img/a.jpg", "tabby", "cat", "train", "", "", "", ""] + no_lms,  # line 7
    ["img/b.jpg", "", "dog", "test", "", "", "", ""] + no_lms,  # line 8
    ["img/b.jpg", "pug", "dog", "test", "", "", "", ""] + no_lms,  # line 9
  ]
  result = load_csv(str(write_csv(tmp_path / "list.csv", CSV_HEADER, rows)))
  assert result.class_names == ["pug", "tabby"]
  records = by_name(result)
  assert sorted(records) == ["a.jpg", "b.jpg", "c.png"]
  a = records["a.jpg"]
  assert a.path == str(tmp_path / "img" / "a.jpg")
  assert (a.label, a.class_name, a.species, a.split) == (1, "tabby", "cat", "train")
  np.testing.assert_array_equal(a.box, [1, 2, 30, 25.5])
  np.testing.assert_array_equal(a.landmarks, sf.NINE_POINTS)
  c = records["c.png"]
  assert c.path == str(absolute) and c.box is None and c.landmarks is None and c.species == ""
  assert (records["b.jpg"].label, records["b.jpg"].split) == (0, "test")
  reasons = [e.reason for e in result.rejects.entries]
  assert all(e.action == rejects_lib.SKIPPED for e in result.rejects.entries)
  assert reasons == [
    "row 4: file not found",
    "row 5: malformed number 'abc' in column xmin",
    "row 6: box partly empty (column ymin is empty)",
    "row 7: duplicate of row 2",
    "row 8: empty label",
  ]


def test_csv_five_point_landmarks_and_unknown_columns(tmp_path):
  sf.write_jpeg(tmp_path / "a.jpg")
  header = ["label", "path", "note"] + [f"lm{i}_{a}" for i in range(5) for a in "xy"]
  path = write_csv(tmp_path / "five.csv", header, [["x", "a.jpg", "hi"] + list(range(10))])
  result = load_csv(str(path))
  np.testing.assert_array_equal(result.records[0].landmarks, np.arange(10).reshape(5, 2))


@pytest.mark.parametrize(
  "header, message",
  [
    (["path", "species"], "lacks required column.*label"),
    (["path", "label", "xmin", "ymin"], "box columns need all of"),
    (["path", "label"] + [f"lm{i}_{a}" for i in range(7) for a in "xy"], "N = 9 or 5"),
  ],
)
def test_csv_header_errors(tmp_path, header, message):
  path = write_csv(tmp_path / "bad.csv", header, [])
  with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
    load_csv(str(path))


def test_csv_empty_file(tmp_path):
  path = sf.write_text(tmp_path / "empty.csv", "")
  with pytest.raises(ValueError, match="empty file"):
    load_csv(str(path))


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pet (fixture)


def test_oxford_fixture_records_classes_boxes_and_rejects(tmp_path):
  fx = sf.make_oxford_pets(tmp_path)
  result = load_oxford_pets(str(tmp_path))
  # CLASS-ID order (1, 2, 6), not alphabetical: 'Bengal' < 'american_bulldog' in plain sort.
  assert result.class_names == ["Abyssinian", "american_bulldog", "Bengal"]
  label_of_id = {1: 0, 2: 1, 6: 2}
  expected = {n for n in fx.listed if n not in fx.missing_images}
  records = {r.image_id: r for r in result.records}
  # An image list.txt omits is kept, labelled by its file name, in the 'unlisted' split.
  unlisted = records.pop("Abyssinian_34")
  assert (unlisted.label, unlisted.split, unlisted.species) == (0, "unlisted", "cat")
  assert set(records) == expected and len(result.records) == len(expected) + 1
  for name, record in records.items():
    class_id, species = fx.listed[name]
    assert record.label == label_of_id[class_id]
    assert record.class_name == name.rsplit("_", 1)[0]
    assert record.species == {1: "cat", 2: "dog"}[species]
    assert record.split == fx.split_of[name]
    assert record.path == str(tmp_path / "images" / f"{name}.jpg")
    if name in fx.boxes:
      np.testing.assert_array_equal(record.box, fx.boxes[name])
    else:
      assert record.box is None
  rejects = entries_by_name(result)
  assert rejects["Bengal_9.jpg"][1] == rejects_lib.SKIPPED
  assert "missing" in rejects["Bengal_9.jpg"][0]
  broken = f"{fx.broken_xmls[0]}.xml"
  assert rejects[broken][1] == rejects_lib.ANNOTATION_DROPPED
  assert "Abyssinian_34.jpg" not in rejects
  assert rejects["Abyssinian_100.mat"][1] == rejects_lib.IGNORED
  assert ".mat" in rejects["Abyssinian_100.mat"][0]
  assert len(result.rejects) == 3  # the '#' header lines of list.txt are not rejects


def test_oxford_split_option_shares_class_list(tmp_path):
  fx = sf.make_oxford_pets(tmp_path)
  full = load_oxford_pets(str(tmp_path))
  for split in ("trainval", "test"):
    part = load_oxford_pets(str(tmp_path), split=split)
    assert part.class_names == full.class_names
    expected = {n for n, s in fx.split_of.items() if s == split and n not in fx.missing_images}
    assert {r.image_id for r in part.records} == expected
  with pytest.raises(ValueError, match="split must be one of all, trainval, test"):
    load_oxford_pets(str(tmp_path), split="train")


def test_oxford_layout_error_names_missing_file(tmp_path):
  sf.make_oxford_pets(tmp_path)
  os.remove(tmp_path / "annotations" / "test.txt")
  with pytest.raises(FileNotFoundError, match="annotations/test.txt"):
    load_oxford_pets(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Oxford-IIIT Pet (the real 3-breed slice)


def read_official_list(path: pathlib.Path):
  rows = [
    line.split()
    for line in path.read_text().splitlines()
    if line.strip() and not line.startswith("#")
  ]
  return {row[0]: (int(row[1]), int(row[2])) for row in rows}


def test_oxford_real_slice_against_official_lists(oxford_pets_3class):
  root = oxford_pets_3class
  listed = read_official_list(root / "annotations" / "list.txt")
  trainval = read_official_list(root / "annotations" / "trainval.txt")
  test = read_official_list(root / "annotations" / "test.txt")
  result = load_oxford_pets(str(root))
  assert len(result.records) == len(listed) + 2 == 600  # + the two images list.txt omits
  assert result.class_names == ["Abyssinian", "american_bulldog", "Bengal"]
  splits = collections.Counter(r.split for r in result.records)
  assert (
    splits
    == {"trainval": len(trainval), "test": len(test), "unlisted": 2}
    == {"trainval": 300, "test": 298, "unlisted": 2}
  )
  per_class = collections.Counter(r.class_name for r in result.records if r.split != "unlisted")
  expected_per_class = collections.Counter(n.rsplit("_", 1)[0] for n in listed)
  assert per_class == expected_per_class
  species = {r.image_id: r.species for r in result.records}
  assert all(species[n] == {1: "cat", 2: "dog"}[s] for n, (_, s) in listed.items())
  xmls = {p.stem for p in (root / "annotations" / "xmls").glob("*.xml")}
  assert {r.image_id for r in result.records if r.box is not None} == xmls
  assert len(xmls) == 296
  record = next(r for r in result.records if r.image_id == "Abyssinian_1")
  xml = (root / "annotations" / "xmls" / "Abyssinian_1.xml").read_text()
  expected_box = [
    float(re.search(f"<{t}>([0-9.]+)</{t}>", xml).group(1))
    for t in ("xmin", "ymin", "xmax", "ymax")
  ]
  np.testing.assert_array_equal(record.box, expected_box)
  files = {p.name for p in (root / "images").iterdir()}
  unlisted = {f for f in files if f.endswith(".jpg") and f[:-4] not in listed}
  mats = {f for f in files if f.endswith(".mat")}
  ignored = set(result.rejects.paths(rejects_lib.IGNORED))
  assert {os.path.basename(p) for p in ignored} == mats and len(mats) == 3
  assert unlisted == {"Abyssinian_34.jpg", "Abyssinian_82.jpg"}
  assert {r.image_id + ".jpg" for r in result.records if r.split == "unlisted"} == unlisted
  assert result.rejects.counts() == {rejects_lib.IGNORED: 3}


# ---------------------------------------------------------------------------------------------
# Stanford Cars


def test_cars_devkit_structure_matches_the_release_reader(tmp_path):
  """Fixture .mat files have the structure loadmat shows for the real devkit (the Stanford Cars devkit)."""
  fx = sf.make_stanford_cars(tmp_path, with_defects=False)
  annos = scipy.io.loadmat(str(tmp_path / "devkit" / "cars_train_annos.mat"))["annotations"]
  assert annos.shape == (1, len(fx.annotations["train"]))
  assert annos.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
  first = annos[0][0]
  assert first[4].item() == fx.annotations["train"][0][1] and first[-1].item() == "00001.jpg"
  meta = scipy.io.loadmat(str(tmp_path / "devkit" / "cars_meta.mat"))["class_names"]
  assert meta.shape == (1, len(sf.CAR_NAMES)) and meta[0][0].item() == sf.CAR_NAMES[0]


def test_cars_devkit_records_boxes_and_rejects(tmp_path):
  fx = sf.make_stanford_cars(tmp_path)
  result = load_stanford_cars(str(tmp_path))
  # Class 4 has no annotation, so three classes in class-id order.
  assert result.class_names == list(sf.CAR_NAMES[:3])
  for split in ("train", "test"):
    records = {os.path.basename(r.path): r for r in result.records if r.split == split}
    expected = [row for row in fx.annotations[split] if row[0] not in fx.missing_images]
    assert sorted(records) == sorted(row[0] for row in expected)
    for fname, class_id, box in expected:
      record = records[fname]
      assert record.path == str(tmp_path / f"cars_{split}" / fname)
      assert (record.label, record.class_name) == (class_id - 1, sf.CAR_NAMES[class_id - 1])
      np.testing.assert_array_equal(record.box, box)  # kept even past the image edge
  first_fname, _, first_box = fx.annotations["train"][0]
  assert first_box[2] > fx.sizes[("train", first_fname)][0]
  rejects = entries_by_name(result)
  assert rejects["09999.jpg"] == ("file not found (listed in the annotations)", rejects_lib.SKIPPED)
  assert rejects["08888.jpg"] == ("not in cars_train_annos.mat", rejects_lib.IGNORED)
  assert rejects["README.txt"] == ("not an image", rejects_lib.IGNORED)
  assert len(result.rejects) == 3


def test_cars_split_option_and_test_labels_in_devkit(tmp_path):
  fx = sf.make_stanford_cars(tmp_path, test_labels_in_devkit=True)
  test = load_stanford_cars(str(tmp_path), split="test")
  assert len(test.records) == len(fx.annotations["test"])
  assert {r.split for r in test.records} == {"test"}
  assert test.class_names == list(sf.CAR_NAMES[:3])  # same label space as split='all'


def test_cars_without_test_labels(tmp_path):
  fx = sf.make_stanford_cars(tmp_path)
  os.remove(tmp_path / "cars_test_annos_withlabels.mat")
  result = load_stanford_cars(str(tmp_path))
  assert {r.split for r in result.records} == {"train"}
  assert len(result.records) == len(fx.annotations["train"]) - len(fx.missing_images)
  reason, action = entries_by_name(result)["cars_test"]
  assert action == rejects_lib.SKIPPED and "cars_test_annos_withlabels.mat not found" in reason
  with pytest.raises(FileNotFoundError, match="test split needs cars_test_annos_withlabels.mat"):
    load_stanford_cars(str(tmp_path), split="test")


def test_cars_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="devkit/cars_meta.mat"):
    load_stanford_cars(str(tmp_path))
  sf.make_stanford_cars(tmp_path)
  unlabelled = tmp_path / "cars_test_annos_withlabels.mat"
  rows = [("00001.jpg", 1, (1, 2, 3, 4))]
  sf.save_annotations_mat(unlabelled, rows, with_class=False)
  with pytest.raises(ValueError, match=re.escape(str(unlabelled)) + ".*lack field.*class"):
    load_stanford_cars(str(tmp_path))


def test_cars_kaggle_class_folders(tmp_path):
  layout = sf.make_kaggle_cars(tmp_path)
  result = load_stanford_cars(str(tmp_path))
  names = sorted(set(layout["train"]) | set(layout["test"]))
  assert result.class_names == names
  seen = {(r.split, r.class_name, os.path.basename(r.path)) for r in result.records}
  assert seen == {
    (s, c, f) for s, classes in layout.items() for c, files in classes.items() for f in files
  }
  assert all(result.class_names[r.label] == r.class_name for r in result.records)
  assert all(r.source == "stanford_cars" for r in result.records)
  train = load_stanford_cars(str(tmp_path / "car_data"), split="train")
  assert {r.split for r in train.records} == {"train"} and train.class_names == names


# ---------------------------------------------------------------------------------------------
# Kaggle CAT


def make_cat_tree(root: pathlib.Path):
  good = sf.NINE_POINTS
  sf.write_jpeg(root / "CAT_00" / "00000001_000.jpg", seed=1)
  sf.write_text(root / "CAT_00" / "00000001_000.jpg.cat", sf.sidecar_text(good))
  sf.write_jpeg(root / "CAT_00" / "00000002_000.jpg", seed=2)
  sf.write_text(root / "CAT_00" / "00000002_000.jpg.cat", "9 1 2 3 4 5 6 7")
  sf.write_text(root / "CAT_00" / "00000009_000.jpg.cat", sf.sidecar_text(good))
  sf.write_text(root / "CAT_00" / "Thumbs.db", "junk")
  sf.write_jpeg(root / "CAT_01" / "00000003_000.jpg", seed=3)
  sf.write_text(root / "CAT_01" / "00000003_000.jpg.animal", sf.sidecar_text(good + 5))
  sf.write_jpeg(root / "CAT_01" / "deeper" / "00000004_000.jpg", seed=4)
  sf.write_jpeg(root / "CAT_01" / "00000005_000.jpg", seed=5)
  sf.write_text(root / "CAT_01" / "00000005_000.jpg.cat", "9 " + "1 " * 17 + "a")
  sf.write_jpeg(root / "CAT_01" / "00000006_000.jpg", seed=6)
  sf.write_text(root / "CAT_01" / "00000006_000.jpg.cat", "7 " + " ".join(["1"] * 14))


def test_cat_dataset_requires_landmarks(tmp_path):
  make_cat_tree(tmp_path)
  result = load_cat_dataset(str(tmp_path))
  assert result.class_names == ["cat"]
  records = by_name(result)
  assert sorted(records) == ["00000001_000.jpg", "00000003_000.jpg"]
  np.testing.assert_array_equal(records["00000001_000.jpg"].landmarks, sf.NINE_POINTS)
  np.testing.assert_array_equal(records["00000003_000.jpg"].landmarks, sf.NINE_POINTS + 5)
  assert all(r.label == 0 and r.species == "cat" for r in result.records)
  rejects = entries_by_name(result)
  assert rejects["00000002_000.jpg"][1] == rejects_lib.SKIPPED
  assert "header says 9 points but 7 numbers follow" in rejects["00000002_000.jpg"][0]
  assert rejects["00000004_000.jpg"] == ("no landmark file (.cat or .animal)", rejects_lib.SKIPPED)
  assert "'a' is not a number" in rejects["00000005_000.jpg"][0]
  assert "7 points, expected 9 or 5" in rejects["00000006_000.jpg"][0]
  assert rejects["00000009_000.jpg.cat"] == ("landmark file without its image", rejects_lib.IGNORED)
  assert rejects["Thumbs.db"] == ("not an image (extension '.db')", rejects_lib.IGNORED)
  assert len(result.rejects) == 6


def test_cat_dataset_keep_unannotated_and_folder_classes(tmp_path):
  make_cat_tree(tmp_path)
  kept = load_cat_dataset(str(tmp_path), keep_unannotated=True)
  assert len(kept.records) == 6
  actions = {n: a for n, (_, a) in entries_by_name(kept).items() if n.endswith(".jpg")}
  assert actions == {
    "00000002_000.jpg": rejects_lib.ANNOTATION_DROPPED,
    "00000005_000.jpg": rejects_lib.ANNOTATION_DROPPED,
    "00000006_000.jpg": rejects_lib.ANNOTATION_DROPPED,
  }
  by_folder = load_cat_dataset(str(tmp_path), folders_as_classes=True)
  assert by_folder.class_names == ["CAT_00", "CAT_01"]
  assert {os.path.basename(r.path): r.label for r in by_folder.records} == {
    "00000001_000.jpg": 0,
    "00000003_000.jpg": 1,
  }


def test_cat_dataset_five_point_variant(tmp_path):
  make_cat_tree(tmp_path)
  five = load_cat_dataset(str(tmp_path), num_points=5)
  for record in five.records:
    assert record.landmarks.shape == (5, 2)
  np.testing.assert_array_equal(
    by_name(five)["00000001_000.jpg"].landmarks, sf.NINE_POINTS[FIVE_POINT_ROWS]
  )
  sf.write_jpeg(tmp_path / "CAT_02" / "x.jpg")
  sf.write_text(tmp_path / "CAT_02" / "x.jpg.cat", sf.sidecar_text(np.ones((5, 2))))
  nine_only = load_cat_dataset(str(tmp_path), num_points=9)
  assert "x.jpg" not in by_name(nine_only)
  assert "5-point" in entries_by_name(nine_only)["x.jpg"][0]
  mixed = load_cat_dataset(str(tmp_path))
  assert {r.landmarks.shape for r in mixed.records} == {(5, 2)}
  assert entries_by_name(mixed)["00000001_000.jpg"][1] == rejects_lib.CONVERTED


# ---------------------------------------------------------------------------------------------
# The synthetic pets are written in the CSV format (and as class folders with .cat sidecars)


def test_synthetic_pets_csv_and_folders_agree(tmp_path):
  csv_path = synthetic.write_dataset(str(tmp_path), num_breeds=3, images_per_breed=2, size=64)
  from_csv, from_folders = load_csv(csv_path), load_folders(str(tmp_path))
  assert from_csv.class_names == from_folders.class_names == sorted(from_csv.class_names)
  assert len(from_csv.records) == 6 and len(from_csv.rejects) == 0
  assert entries_by_name(from_folders) == {
    os.path.basename(csv_path): ("file not inside a class folder", rejects_lib.IGNORED)
  }
  folder_records = {r.path: r for r in from_folders.records}
  for record in from_csv.records:
    twin = folder_records[record.path]
    assert record.label == twin.label and record.box is not None
    assert record.species in ("cat", "dog")
    np.testing.assert_allclose(record.landmarks, twin.landmarks, atol=1e-3)
