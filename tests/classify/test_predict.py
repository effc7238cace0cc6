"""Tests of tfpets.classify.predict: listings, prediction files read back, rejects."""

from __future__ import annotations

import csv
import io
import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.classify.test_evaluate import TinyRefiner, softmax, tiny_classifier
from tfpets.classify import predict
from tfpets.data.listing import list_images

SIZE = 16


def write_image(path: pathlib.Path, seed: int, fmt: str = "PNG") -> np.ndarray:
  """A small random RGB image of odd size; returns its pixels (lossless formats only)."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (20 + seed % 5, 23 + seed % 3, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt)
  path.write_bytes(buf.getvalue())
  return pixels


def expected_probabilities(model, pixel_list, refined=False) -> np.ndarray:
  """The model's probabilities computed here, one image at a time."""
  rows = []
  for pixels in pixel_list:
    # Evaluation's view: squash-resize to SIZE / 0.875 (antialiased), then the central crop.
    side = int(np.ceil(SIZE / 0.875))
    resized = tf.image.resize(np.float32(pixels)[None], [side, side], antialias=True)
    offset = (side - SIZE) // 2
    image = resized[:, offset : offset + SIZE, offset : offset + SIZE]
    if refined:
      rows.append(model.refine(image)["probabilities"].numpy()[0])
    else:
      rows.append(softmax(model(image).numpy().astype(np.float64))[0])
  return np.asarray(rows, np.float64)


def read_csv(path) -> list:
  with open(path, newline="") as f:
    return list(csv.reader(f))


# --- listings --------------------------------------------------------------------------------


def test_flat_folder_lists_its_images_sorted_without_labels(tmp_path):
  for i, name in enumerate(["b.png", "a.jpg", "C.PNG"]):
    write_image(tmp_path / name, i)
  (tmp_path / "notes.txt").write_text("not an image")
  listing = list_images(str(tmp_path))
  assert listing == [(str(tmp_path / n), None) for n in ["C.PNG", "a.jpg", "b.png"]]


def test_image_folder_labels_follow_sorted_folder_order(tmp_path):
  for i, (folder, name) in enumerate(
    [("zebra", "1.png"), ("Abyssinian", "2.png"), ("beagle", "3.png"), ("beagle", "deep/4.png")]
  ):
    write_image(tmp_path / folder / name, i)
  (tmp_path / ".hidden").mkdir()
  listing = list_images(str(tmp_path))
  # sorted(["zebra", "Abyssinian", "beagle"]) == ["Abyssinian", "beagle", "zebra"]
  assert listing == [
    (str(tmp_path / "Abyssinian" / "2.png"), 0),
    (str(tmp_path / "beagle" / "3.png"), 1),
    (str(tmp_path / "beagle" / "deep" / "4.png"), 1),
    (str(tmp_path / "zebra" / "1.png"), 2),
  ]


def test_csv_listing_with_relative_paths_and_own_headings(tmp_path):
  data_dir = tmp_path / "data"
  write_image(data_dir / "x" / "a.png", 0)
  write_image(data_dir / "b.png", 1)
  listing_csv = tmp_path / "lists" / "test.csv"
  listing_csv.parent.mkdir()
  listing_csv.write_text("file,cls,extra\nx/a.png,3,q\nb.png,0,r\n")
  listing = list_images(str(listing_csv), data_dir=str(data_dir), headings="file,cls")
  assert listing == [(str(data_dir / "x" / "a.png"), 3), (str(data_dir / "b.png"), 0)]
  # without a label column: unlabelled, paths relative to the CSV's own folder by default
  unlabelled = tmp_path / "lists" / "unlabelled.csv"
  unlabelled.write_text("image\n../data/b.png\n")
  assert list_images(str(unlabelled), data_dir="") == [
    (str(tmp_path / "lists" / "../data/b.png"), None)
  ]


def test_glob_lists_matching_files(tmp_path):
  for i, name in enumerate(["a.png", "b.png", "c.jpg"]):
    write_image(tmp_path / name, i)
  listing = list_images(str(tmp_path / "*.png"))
  assert listing == [(str(tmp_path / "a.png"), None), (str(tmp_path / "b.png"), None)]


def test_listing_errors_name_the_source(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(ValueError, match=f"{missing}'?: no such file"):
    list_images(str(missing))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty'?: no images found"):
    list_images(str(tmp_path / "empty"))
  bad_csv = tmp_path / "bad.csv"
  bad_csv.write_text("path,label\na.png,1\n")
  with pytest.raises(
    ValueError, match=r"bad.csv'?: no 'image' column \(the header has path, label\)"
  ):
    list_images(str(bad_csv))
  bad_label = tmp_path / "bad_label.csv"
  bad_label.write_text("image,label\na.png,cat\n")
  with pytest.raises(ValueError, match="bad_label.csv'?: line 2: label 'cat' is not an integer"):
    list_images(str(bad_label))
  with pytest.raises(ValueError, match=r"headings=.*: must name the image and label columns"):
    list_images(str(bad_csv), headings=["image"])
  mixed = tmp_path / "mixed"
  write_image(mixed / "a.png", 0)
  write_image(mixed / "cls" / "b.png", 1)
  with pytest.raises(ValueError, match="mixed'?: holds both images and subfolders"):
    list_images(str(mixed))


# --- predictions -----------------------------------------------------------------------------


def test_predict_image_folder_writes_files_that_read_back(tmp_path):
  names = ["cat", "dog", "fox"]
  source = tmp_path / "images"
  pixels = {}
  for i in range(7):
    path = source / names[i % 3] / f"{i}.png"
    pixels[str(path)] = write_image(path, i)
  corrupt = source / "dog" / "broken.png"
  corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
  model = tiny_classifier(3)
  out_dir = tmp_path / "out"
  result = predict.predict_folder(model, str(source), SIZE, names, str(out_dir), "pets", 3)

  listing = list_images(str(source))
  kept = [(p, label) for p, label in listing if p != str(corrupt)]
  assert result["paths"] == [p for p, _ in kept]
  labels = np.array([label for _, label in kept])
  np.testing.assert_array_equal(result["labels"], labels)
  expected = expected_probabilities(model, [pixels[p] for p, _ in kept])
  np.testing.assert_allclose(result["probabilities"], expected, rtol=1e-5, atol=1e-6)

  # rejects: the corrupt file with its reason, nothing else
  rejects = read_csv(out_dir / "rejects.csv")
  assert rejects[0] == ["file", "reason", "action"]
  assert len(rejects) == 2 and rejects[1][0] == str(corrupt)
  assert "corrupt or truncated PNG" in rejects[1][1] and rejects[1][2] == "skipped"

  # predictions.csv
  rows = read_csv(out_dir / "predictions.csv")
  assert rows[0] == [
    "path",
    "label",
    "label_index",
    "probability",
    "true_label",
    "true_label_index",
    *names,
  ]
  rows = rows[1:]
  assert [r[0] for r in rows] == result["paths"]
  table = np.array([[float(v) for v in r[6:]] for r in rows])
  np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-6)
  top = np.argmax(expected, axis=1)
  assert [int(r[2]) for r in rows] == top.tolist()
  assert [r[1] for r in rows] == [names[i] for i in top]
  np.testing.assert_allclose([float(r[3]) for r in rows], expected.max(axis=1), rtol=1e-5)
  assert [int(r[5]) for r in rows] == labels.tolist()

  # GrabAI's files: both spellings of the probabilities, float64 N x C; the pandas-style list
  for file_name in ("pets_PredictedProbabilites.npy", "pets_PredictedProbabilities.npy"):
    array = np.load(out_dir / file_name)
    assert array.dtype == np.float64 and array.shape == (7, 3)
    np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-6)
  image_list = read_csv(out_dir / "pets_ImageList.csv")
  assert image_list[0] == ["", "image_path", "label"]
  assert image_list[1:] == [[str(i), p, str(label)] for i, (p, label) in enumerate(kept)]

  # the evaluation report
  metrics = json.loads((out_dir / "pets_metrics.json").read_text())
  assert metrics["top1"] == pytest.approx(np.mean(top == labels))
  assert metrics["num_examples"] == 7
  assert result["headline"]["top1"] == pytest.approx(metrics["top1"])
  summary = json.loads(json.dumps(result["summary"]))
  assert summary["predicted"] == 7 and summary["rejected"] == 1
  assert summary["files"]["probabilities"] == str(out_dir / "pets_PredictedProbabilities.npy")
  assert (out_dir / "pets_per_class.csv").is_file()
  assert (out_dir / "pets_confusion_matrix.png").is_file()


def test_predict_unlabelled_folder_writes_no_report(tmp_path):
  pixels = [write_image(tmp_path / "in" / f"{i}.png", i) for i in range(5)]
  model = tiny_classifier(4, seed=1)
  names = ["a", "b", "c", "d"]
  result = predict.predict_folder(model, str(tmp_path / "in"), SIZE, names, str(tmp_path / "o"))
  assert result["labels"] is None and "report" not in result
  expected = expected_probabilities(model, pixels)
  np.testing.assert_allclose(
    np.load(tmp_path / "o" / "predictions_PredictedProbabilites.npy"),
    expected,
    rtol=1e-5,
    atol=1e-6,
  )
  assert read_csv(tmp_path / "o" / "predictions_ImageList.csv")[0] == ["", "image_path"]
  assert read_csv(tmp_path / "o" / "predictions.csv")[0] == [
    "path",
    "label",
    "label_index",
    "probability",
    *names,
  ]
  assert not list((tmp_path / "o").glob("*metrics.json"))
  assert read_csv(tmp_path / "o" / "rejects.csv") == [["file", "reason", "action"]]


def test_predict_refining_model_saves_refined_probabilities_and_both_reports(tmp_path):
  names = ["x", "y"]
  listing = []
  pixel_list = []
  for i in range(5):
    path = tmp_path / "in" / f"{i}.png"
    pixel_list.append(write_image(path, 10 + i))
    listing.append((str(path), i % 2))
  model = TinyRefiner(2, seed=4)
  result = predict.predict_folder(model, listing, SIZE, names, str(tmp_path / "o"), "cars", 2)
  refined = expected_probabilities(model, pixel_list, refined=True)
  np.testing.assert_allclose(result["probabilities"], refined, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    np.load(tmp_path / "o" / "cars_PredictedProbabilities.npy"), refined, rtol=1e-5, atol=1e-6
  )
  metrics = json.loads((tmp_path / "o" / "cars_metrics.json").read_text())
  assert set(metrics) == {"raw", "refined"}
  labels = np.arange(5) % 2
  assert metrics["refined"]["top1"] == pytest.approx(np.mean(np.argmax(refined, 1) == labels))
  assert {"top1", "raw_top1"} <= set(result["headline"])
  for section in ("raw", "refined"):
    assert (tmp_path / "o" / f"cars_{section}_confusion_matrix.png").is_file()


def test_nothing_decodable_is_an_error_naming_the_rejects(tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.jpg").write_bytes(b"")
  (tmp_path / "in" / "b.jpg").write_bytes(b"not an image at all")
  model = tiny_classifier(2)
  with pytest.raises(ValueError, match="none of the 2 images could be decoded; see .*rejects.csv"):
    predict.predict_folder(model, str(tmp_path / "in"), SIZE, ["a", "b"], str(tmp_path / "o"))
  rejects = read_csv(tmp_path / "o" / "rejects.csv")
  assert [r[1] for r in rejects[1:]] == [
    "empty file (0 bytes)",
    "not an image (unrecognised magic bytes)",
  ]


def test_class_count_mismatch_is_named(tmp_path):
  write_image(tmp_path / "in" / "a.png", 0)
  with pytest.raises(ValueError, match="the model predicts 2 classes but 3 class names"):
    predict.predict_folder(
      tiny_classifier(2), str(tmp_path / "in"), SIZE, ["a", "b", "c"], str(tmp_path / "o")
    )
