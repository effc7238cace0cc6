"""Tests of tfpets.classify.evaluate against loop-by-loop references written here."""

from __future__ import annotations

import csv
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from PIL import Image

from tfpets.classify import evaluate

IMAGE_SIZE = 8


def tiny_classifier(num_classes: int, seed: int = 0) -> keras.Model:
  keras.utils.set_random_seed(seed)
  return keras.Sequential(
    [
      keras.Input((None, None, 3)),
      keras.layers.Rescaling(1 / 127.5, -1),
      keras.layers.GlobalAveragePooling2D(),
      keras.layers.Dense(num_classes, dtype="float32"),
    ]
  )


class TinyRefiner(keras.Model):
  """A real (tiny) model with WS-DAN's `refine` contract: the refined prediction averages the
  softmaxes of the whole image and of its top-left quarter."""

  def __init__(self, num_classes: int, seed: int = 0):
    super().__init__()
    keras.utils.set_random_seed(seed)
    self.rescale = keras.layers.Rescaling(1 / 127.5, -1)
    self.pool = keras.layers.GlobalAveragePooling2D()
    self.dense = keras.layers.Dense(num_classes, dtype="float32")

  def call(self, images, training=False):
    return self.dense(self.pool(self.rescale(images)))

  def refine(self, images):
    raw = self(images, training=False)
    half = tf.shape(images)[1] // 2
    crop = self(images[:, :half, :half, :], training=False)
    return {
      "raw_logits": raw,
      "raw_probabilities": tf.nn.softmax(raw),
      "probabilities": 0.5 * tf.nn.softmax(raw) + 0.5 * tf.nn.softmax(crop),
    }


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def random_images(n: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.uniform(0, 255, (n, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


# --- loop references -------------------------------------------------------------------------


def reference_top_k(probabilities, labels, k):
  hits = 0
  for row, label in zip(probabilities, labels):
    # the label's rank: classes scoring higher, or equal with a lower index, come first
    rank = sum(1 for c, p in enumerate(row) if p > row[label] or (p == row[label] and c < label))
    hits += rank < min(k, len(row))
  return hits / len(labels)


def reference_scores(labels, predictions, num_classes):
  """Per-class precision/recall/F1 and sklearn's macro average, one sample at a time."""
  per_class = []
  for c in range(num_classes):
    tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
    fp = sum(1 for y, p in zip(labels, predictions) if y != c and p == c)
    fn = sum(1 for y, p in zip(labels, predictions) if y == c and p != c)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_class.append((precision, recall, f1, tp + fn))
  present = sorted(set(labels) | set(predictions))
  macro = [sum(per_class[c][i] for c in present) / len(present) for i in range(3)]
  return per_class, macro


def reference_confusion(labels, predictions, num_classes):
  matrix = [[0] * num_classes for _ in range(num_classes)]
  for y, p in zip(labels, predictions):
    matrix[y][p] += 1
  return matrix


# --- metrics ---------------------------------------------------------------------------------


def random_predictions(n=97, num_classes=7, seed=3):
  """Labels never of class 5 (no support); class 6 never predicted; the rest random."""
  rng = np.random.default_rng(seed)
  probabilities = softmax(rng.normal(size=(n, num_classes)) * 2)
  probabilities[:, 6] = 1e-6
  labels = rng.choice([0, 1, 2, 3, 4, 6], size=n)
  return probabilities, labels


def test_report_matches_loop_reference():
  probabilities, labels = random_predictions()
  names = [f"class{i}" for i in range(7)]
  report = evaluate.evaluation_report(probabilities, labels, names)
  predictions = [int(np.argmax(row)) for row in probabilities]
  assert 6 not in predictions and 5 not in labels.tolist()
  for k in (1, 3, 5):
    assert report[f"top{k}"] == pytest.approx(reference_top_k(probabilities, labels, k))
  per_class, macro = reference_scores(labels.tolist(), predictions, 7)
  assert report["macro_precision"] == pytest.approx(macro[0])
  assert report["macro_recall"] == pytest.approx(macro[1])
  assert report["macro_f1"] == pytest.approx(macro[2])
  for row, (precision, recall, f1, support) in zip(report["per_class"], per_class):
    assert row["precision"] == pytest.approx(precision)
    assert row["recall"] == pytest.approx(recall)
    assert row["f1"] == pytest.approx(f1)
    assert row["support"] == support
  assert report["per_class"][5]["support"] == 0 and report["per_class"][6]["predicted"] == 0
  assert report["confusion_matrix"] == reference_confusion(labels.tolist(), predictions, 7)
  json.dumps(report)  # JSON-ready


def test_class_absent_from_labels_and_predictions_is_left_out_of_the_macro_average():
  # class 2 never occurs: sklearn's macro average is over classes 0 and 1 only
  probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
  labels = np.array([0, 1, 1, 1])
  report = evaluate.evaluation_report(probabilities, labels, ["a", "b", "c"])
  # class 0: precision 1/2, recall 1, F1 2/3; class 1: precision 1, recall 2/3, F1 4/5
  assert report["macro_precision"] == pytest.approx((0.5 + 1.0) / 2)
  assert report["macro_recall"] == pytest.approx((1.0 + 2 / 3) / 2)
  assert report["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
  assert report["macro_classes"] == 2


def test_top_k_is_capped_at_the_number_of_classes():
  probabilities, labels = random_predictions(n=20, num_classes=7)
  three = probabilities[:, :3]
  labels = labels % 3
  assert evaluate.top_k_accuracy(three, labels, 5) == 1.0
  assert evaluate.top_k_accuracy(three, labels, 3) == 1.0
  assert evaluate.top_k_accuracy(three, labels, 2) == pytest.approx(
    reference_top_k(three, labels, 2)
  )


def test_confusion_matrix_counts_rows_true_columns_predicted():
  labels = np.array([0, 0, 1, 2, 2, 2])
  predictions = np.array([0, 1, 1, 2, 0, 2])
  matrix = evaluate.confusion_matrix(labels, predictions, 3)
  assert matrix.tolist() == reference_confusion(labels.tolist(), predictions.tolist(), 3)
  assert matrix[2, 0] == 1 and matrix[0, 2] == 0  # a 2 predicted as 0, never a 0 as 2
  assert matrix.sum() == 6


def test_bad_arguments_are_named():
  probabilities = np.full((3, 2), 0.5)
  with pytest.raises(ValueError, match="label 2 is outside the 2 classes"):
    evaluate.evaluation_report(probabilities, np.array([0, 1, 2]), ["a", "b"])
  with pytest.raises(ValueError, match="3 class names for 2 columns"):
    evaluate.evaluation_report(probabilities, np.array([0, 1, 1]), ["a", "b", "c"])
  with pytest.raises(ValueError, match="2 labels for 3 rows"):
    evaluate.evaluation_report(probabilities, np.array([0, 1]), ["a", "b"])


# --- models and datasets ---------------------------------------------------------------------


def test_per_sample_accuracy_with_an_uneven_last_batch(tmp_path):
  num_classes = 4
  model = tiny_classifier(num_classes)
  images = random_images(10)
  predicted = np.argmax(model(images).numpy(), axis=1)
  # batches of 4, 4, 2: one hit in each full batch, both in the last one
  labels = (predicted + 1) % num_classes
  for i in (0, 4, 8, 9):
    labels[i] = predicted[i]
  dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).batch(4)
  headline = evaluate.evaluate(model, dataset, ["a", "b", "c", "d"], str(tmp_path))
  per_sample = np.mean(predicted == labels)
  batch_mean = np.mean([np.mean(predicted[s : s + 4] == labels[s : s + 4]) for s in (0, 4, 8)])
  assert per_sample == pytest.approx(0.4) and batch_mean == pytest.approx(0.5)
  assert headline["top1"] == pytest.approx(per_sample)
  assert set(headline) == {"top1", "top3", "top5", "macro_f1"}
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["top1"] == pytest.approx(per_sample)
  assert metrics["num_examples"] == 10


def test_predict_probabilities_is_the_softmax_of_the_logits_for_tuples_and_dicts():
  model = tiny_classifier(5)
  images = random_images(7, seed=1)
  labels = np.arange(7, dtype=np.int32) % 5
  expected = softmax(model(images).numpy().astype(np.float64))
  tuples = tf.data.Dataset.from_tensor_slices((images, labels)).batch(3)
  dicts = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).batch(3)
  for dataset in (tuples, dicts):
    out = evaluate.predict_probabilities(model, dataset)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["labels"], labels)
    assert "refined_probabilities" not in out


def test_progress_is_logged_every_few_images(caplog):
  model = tiny_classifier(2)
  dataset = tf.data.Dataset.from_tensor_slices(random_images(10)).batch(3)
  verbosity = absl_logging.get_verbosity()  # an earlier test in this process may have lowered it
  absl_logging.set_verbosity(absl_logging.INFO)
  try:
    with caplog.at_level(logging.INFO):
      out = evaluate.predict_probabilities(model, dataset, progress_every=4)
  finally:
    absl_logging.set_verbosity(verbosity)
  assert out["probabilities"].shape == (10, 2) and "labels" not in out
  logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predicted")]
  assert logged == ["predicted 6 images", "predicted 9 images"]


def test_model_built_under_a_distribution_strategy(tmp_path):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = tiny_classifier(3, seed=5)
  images = random_images(5, seed=6)
  labels = np.array([0, 1, 2, 0, 1], np.int32)
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
  expected = softmax(model(images).numpy().astype(np.float64))
  headline = evaluate.evaluate(model, dataset, ["a", "b", "c"], str(tmp_path), prefix="test_")
  assert headline["top1"] == pytest.approx(np.mean(np.argmax(expected, 1) == labels))
  assert (tmp_path / "test_metrics.json").is_file()


def test_refining_model_reports_raw_and_refined(tmp_path):
  num_classes = 3
  model = TinyRefiner(num_classes)
  images = random_images(9, seed=2)
  labels = (np.arange(9) % num_classes).astype(np.int32)
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
  raw = softmax(model(images).numpy().astype(np.float64))
  crop = softmax(model(images[:, :4, :4]).numpy().astype(np.float64))
  refined = 0.5 * raw + 0.5 * crop
  out = evaluate.predict_probabilities(model, dataset)
  np.testing.assert_allclose(out["probabilities"], raw, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["refined_probabilities"], refined, rtol=1e-5, atol=1e-6)
  names = ["x", "y", "z"]
  headline = evaluate.evaluate(model, dataset, names, str(tmp_path))
  assert headline["top1"] == pytest.approx(np.mean(np.argmax(refined, 1) == labels))
  assert headline["raw_top1"] == pytest.approx(np.mean(np.argmax(raw, 1) == labels))
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert set(metrics) == {"raw", "refined"}
  assert metrics["refined"]["confusion_matrix"] == reference_confusion(
    labels.tolist(), np.argmax(refined, 1).tolist(), num_classes
  )
  for section in ("raw", "refined"):
    assert (tmp_path / f"{section}_per_class.csv").is_file()
    Image.open(tmp_path / f"{section}_confusion_matrix.png").verify()


# --- files -----------------------------------------------------------------------------------


def luminance(pixel) -> float:
  r, g, b = pixel[:3]
  return 0.299 * r + 0.587 * g + 0.114 * b


def test_written_report_files_read_back(tmp_path):
  names = ["Abyssinian", "beagle", "chihuahua", "dachshund"]
  # row 2 holds counts 1, 0, 5, 2; class 3 has no sample
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2])
  predictions = np.array([0, 0, 1, 1, 0, 0, 2, 2, 2, 2, 2, 3, 3])
  probabilities = np.eye(4)[predictions] * 0.7 + 0.075
  report = evaluate.evaluation_report(probabilities, labels, names)
  paths = evaluate.write_report(report, str(tmp_path), prefix="val_")
  assert sorted(p.rsplit("/", 1)[-1] for p in paths) == [
    "val_confusion_matrix.png",
    "val_metrics.json",
    "val_per_class.csv",
  ]
  assert json.loads((tmp_path / "val_metrics.json").read_text()) == report
  with open(tmp_path / "val_per_class.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["class"] for r in rows] == names
  assert [int(r["support"]) for r in rows] == [3, 2, 8, 0]
  assert [int(r["predicted"]) for r in rows] == [4, 2, 5, 2]
  per_class, _ = reference_scores(labels.tolist(), predictions.tolist(), 4)
  for row, (precision, recall, f1, _) in zip(rows, per_class):
    assert float(row["precision"]) == pytest.approx(precision)
    assert float(row["recall"]) == pytest.approx(recall)
    assert float(row["f1"]) == pytest.approx(f1)

  with Image.open(tmp_path / "val_confusion_matrix.png") as image:
    assert image.format == "PNG"
    image = image.convert("RGB")
  layout = evaluate.confusion_matrix_layout(names)
  assert image.size == (layout.width, layout.height)
  assert layout.cell * 4 <= layout.width - layout.left
  pixels = np.asarray(image)

  def cell(row, col):
    x0, y0, _, _ = layout.cell_box(row, col)
    return pixels[y0 + 3, x0 + 3]

  darkness = [luminance(cell(2, col)) for col in range(4)]
  # counts 1, 0, 5, 2: the more counts, the darker
  assert darkness[2] < darkness[3] < darkness[0] < darkness[1]
  # an empty row and an empty cell share the lightest colour
  assert tuple(cell(3, 0)) == tuple(cell(2, 1)) == tuple(cell(3, 3))
  # row-normalised: 2 of 3 in row 0 is darker than 2 of 8 in row 2
  assert luminance(cell(0, 0)) < luminance(cell(2, 3))
  # class names are drawn left of the cells: dark pixels in the label margin
  assert pixels[layout.top : layout.top + 4 * layout.cell, : layout.left].min() < 100


def test_many_classes_render_without_names():
  names = [f"class{i}" for i in range(120)]
  rng = np.random.default_rng(0)
  matrix = rng.integers(0, 5, (120, 120))
  image = evaluate.render_confusion_matrix(matrix, names)
  layout = evaluate.confusion_matrix_layout(names)
  assert image.size == (layout.width, layout.height)
  assert layout.left < 40  # no room taken by names
  colours = evaluate.cell_colours(matrix)
  x0, y0, x1, y1 = layout.cell_box(7, 11)
  centre = (y0 + y1) // 2, (x0 + x1) // 2
  assert tuple(np.asarray(image)[centre]) == tuple(colours[7, 11])
