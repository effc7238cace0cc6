"""Evaluation of a classifier: per-sample metrics, reports and a confusion-matrix picture.

Every figure is computed over all samples at once. The GrabAI WS-DAN scripts (`train_wsdan.py`,
`wsdan_predict.py`) averaged per-batch percentages, which over-weights a small last batch; nothing
here depends on the batch size.
Macro precision, recall and F1 follow `sklearn.metrics.precision_recall_fscore_support(
average="macro", zero_division=0)`: per-class figures averaged over the classes that occur among
the labels or the predictions.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageDraw

from tfpets.runtime import drawing

TOP_K = (1, 3, 5)
SECTIONS = ("raw", "refined")  # a WS-DAN report: its raw and its refined prediction


def _split_element(element):
  """(images, labels or None) from a batch of (images, labels, ...), a dict or bare images."""
  if isinstance(element, dict):
    return element["image"], element.get("label")
  if isinstance(element, (tuple, list)):
    return element[0], (element[1] if len(element) > 1 else None)
  return element, None


def _prediction_function(model):
  """A tf.function from a batch of images to softmax probabilities (raw and refined for WS-DAN)."""
  refines = hasattr(model, "refine")

  @tf.function(reduce_retracing=True)  # eager calls per batch are many times slower
  def predict(images):
    images = tf.cast(images, tf.float32)
    if not refines:
      logits = tf.cast(model(images, training=False), tf.float32)
      return {"probabilities": tf.nn.softmax(logits, axis=-1)}
    outputs = model.refine(images)
    if "raw_probabilities" in outputs:
      raw = tf.cast(outputs["raw_probabilities"], tf.float32)
    else:
      raw = tf.nn.softmax(tf.cast(outputs["raw_logits"], tf.float32), axis=-1)
    refined = tf.cast(outputs["probabilities"], tf.float32)
    return {"probabilities": raw, "refined_probabilities": refined}

  return predict


def predict_probabilities(model, dataset, progress_every: int = 0) -> Dict[str, np.ndarray]:
  """Runs `model` over a dataset of batches and gathers its probabilities in dataset order.

  Batches are `(images, labels, ...)` tuples, dicts with `image` (and `label`) or bare images;
  images are RGB in [0, 255]. Returns `probabilities` [N, C] (softmax of the logits), `labels` [N]
  when the batches carry labels and, for a model with `refine` (WS-DAN), `refined_probabilities`
  [N, C]. `progress_every` > 0 logs a line each time that many more images are done.
  """
  predict = _prediction_function(model)
  gathered: Dict[str, List[np.ndarray]] = {}
  done, next_log = 0, progress_every
  for element in dataset:
    images, labels = _split_element(element)
    for key, value in predict(images).items():
      gathered.setdefault(key, []).append(value.numpy())
    if labels is not None:
      gathered.setdefault("labels", []).append(np.asarray(labels).reshape(-1).astype(np.int64))
    done += int(images.shape[0])
    if progress_every > 0 and done >= next_log:
      logging.info("predicted %d images", done)
      next_log = (done // progress_every + 1) * progress_every
  if not gathered:
    raise ValueError("the dataset to predict on is empty")
  return {key: np.concatenate(parts, axis=0) for key, parts in gathered.items()}


def top_k_accuracy(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
  """Fraction of samples whose label is among the k highest probabilities (k capped at C).

  Ties go to the lower class index, as `np.argmax` does, so top-1 agrees with the predictions.
  """
  probabilities, labels = _check_inputs(probabilities, labels)
  k = max(1, min(int(k), probabilities.shape[1]))
  ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(ranked == labels[:, None], axis=1)))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[C, C] int64 counts; rows are true classes, columns predicted classes."""
  labels = np.asarray(labels, np.int64).reshape(-1)
  predictions = np.asarray(predictions, np.int64).reshape(-1)
  flat = labels * num_classes + predictions
  return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
  numerator = numerator.astype(np.float64)
  denominator = denominator.astype(np.float64)
  out = np.zeros_like(numerator)
  np.divide(numerator, denominator, out=out, where=denominator > 0)
  return out


@dataclasses.dataclass
class ClassScores:
  precision: np.ndarray  # [C]
  recall: np.ndarray  # [C]
  f1: np.ndarray  # [C]
  support: np.ndarray  # [C] true samples per class
  predicted: np.ndarray  # [C] samples predicted as each class
  present: np.ndarray  # [C] bool: the class occurs among the labels or the predictions


def class_scores(matrix: np.ndarray) -> ClassScores:
  """Per-class precision, recall and F1 from a confusion matrix (rows true, columns predicted)."""
  true_positives = np.diag(matrix)
  support = matrix.sum(axis=1)
  predicted = matrix.sum(axis=0)
  # F1 from counts, 2tp / (2tp + fp + fn), equals 2pr / (p + r) and is 0 when tp is 0.
  f1 = _safe_divide(2 * true_positives, support + predicted)
  return ClassScores(
    precision=_safe_divide(true_positives, predicted),
    recall=_safe_divide(true_positives, support),
    f1=f1,
    support=support,
    predicted=predicted,
    present=(support + predicted) > 0,
  )


def macro_scores(scores: ClassScores) -> Dict[str, float]:
  """Unweighted means over the classes present among the labels or predictions."""
  if not scores.present.any():
    return {"macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0}
  return {
    f"macro_{name}": float(np.mean(getattr(scores, name)[scores.present]))
    for name in ("precision", "recall", "f1")
  }


def _check_inputs(probabilities, labels):
  probabilities = np.asarray(probabilities, np.float64)
  labels = np.asarray(labels).reshape(-1)
  if probabilities.ndim != 2:
    raise ValueError(f"probabilities must be [N, C], got shape {probabilities.shape}")
  if labels.shape[0] != probabilities.shape[0]:
    raise ValueError(f"{labels.shape[0]} labels for {probabilities.shape[0]} rows of probabilities")
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
  labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
    bad = labels[(labels < 0) | (labels >= probabilities.shape[1])][0]
    raise ValueError(f"label {bad} is outside the {probabilities.shape[1]} classes")
  return probabilities, labels


def evaluation_report(
  probabilities: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> dict:
  """JSON-ready metrics of one set of predictions: top-1/3/5, macro and per-class figures."""
  probabilities, labels = _check_inputs(probabilities, labels)
  num_classes = probabilities.shape[1]
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for {num_classes} columns of probabilities")
  if labels.size == 0:
    raise ValueError("cannot evaluate zero samples")
  predictions = np.argmax(probabilities, axis=1)
  matrix = confusion_matrix(labels, predictions, num_classes)
  scores = class_scores(matrix)
  report = {"num_examples": int(labels.size), "num_classes": num_classes}
  for k in TOP_K:
    report[f"top{k}"] = top_k_accuracy(probabilities, labels, k)
  report.update(macro_scores(scores))
  report["macro_classes"] = int(scores.present.sum())
  report["per_class"] = [
    {
      "index": i,
      "class": str(name),
      "precision": float(scores.precision[i]),
      "recall": float(scores.recall[i]),
      "f1": float(scores.f1[i]),
      "support": int(scores.support[i]),
      "predicted": int(scores.predicted[i]),
    }
    for i, name in enumerate(class_names)
  ]
  report["class_names"] = [str(name) for name in class_names]
  report["confusion_matrix"] = matrix.tolist()
  return report


def reports_from_predictions(predictions: Dict[str, np.ndarray], class_names) -> dict:
  """One report, or `raw` and `refined` reports when the predictions hold refined ones."""
  labels = predictions["labels"]
  raw = evaluation_report(predictions["probabilities"], labels, class_names)
  if "refined_probabilities" not in predictions:
    return raw
  refined = evaluation_report(predictions["refined_probabilities"], labels, class_names)
  return {"raw": raw, "refined": refined}


def _sections(report: dict) -> Dict[str, dict]:
  """{section name: single report}; the name is '' for a report without sections."""
  if all(name in report for name in SECTIONS):
    return {name: report[name] for name in SECTIONS}
  return {"": report}


def headline(report: dict) -> Dict[str, float]:
  """top1, top3, top5 and macro_f1 of the final prediction (refined for WS-DAN), plus raw_* ones
  when the report also holds a raw prediction."""
  sections = _sections(report)
  keys = [f"top{k}" for k in TOP_K] + ["macro_f1"]
  final = sections.get("refined", sections.get(""))
  figures = {key: final[key] for key in keys}
  if "raw" in sections:
    figures.update({f"raw_{key}": sections["raw"][key] for key in keys})
  return figures


def log_report(report: dict) -> None:
  for name, section in _sections(report).items():
    prefix = f"{name}: " if name else ""
    logging.info(
      "%sAccuracy: Top-1 %.4f, Top-3 %.4f, Top-5 %.4f (%d images)",
      prefix,
      100 * section["top1"],
      100 * section["top3"],
      100 * section["top5"],
      section["num_examples"],
    )
    logging.info(
      "%sPrecision: %.4f, Recall: %.4f, Macro F1: %.4f",
      prefix,
      section["macro_precision"],
      section["macro_recall"],
      section["macro_f1"],
    )


def write_per_class_csv(report: dict, path: str) -> str:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    columns = ["index", "class", "precision", "recall", "f1", "support", "predicted"]
    writer.writerow(columns)
    for row in report["per_class"]:
      writer.writerow([row[column] for column in columns])
  return path


def write_report(report: dict, directory: str, prefix: str = "") -> List[str]:
  """Writes `<prefix>metrics.json` (the whole report), and per section (`raw_`, `refined_` for
  WS-DAN, none otherwise) `<prefix>[section_]per_class.csv` and
  `<prefix>[section_]confusion_matrix.png`. Returns the paths written."""
  os.makedirs(directory, exist_ok=True)
  metrics_path = os.path.join(directory, f"{prefix}metrics.json")
  with open(metrics_path, "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  paths = [metrics_path]
  for name, section in _sections(report).items():
    stem = os.path.join(directory, f"{prefix}{name}_" if name else prefix)
    paths.append(write_per_class_csv(section, f"{stem}per_class.csv"))
    image = render_confusion_matrix(np.asarray(section["confusion_matrix"]), section["class_names"])
    image.save(f"{stem}confusion_matrix.png", format="PNG")
    paths.append(f"{stem}confusion_matrix.png")
  return paths


def evaluate(
  model,
  dataset,
  class_names: Sequence[str],
  directory: Optional[str],
  prefix: str = "",
  progress_every: int = 0,
) -> dict:
  """Predicts `dataset` (batches of images and labels), writes the report into `directory`
  (unless None, file names starting with `prefix`) and returns its headline figures (see
  `headline`)."""
  predictions = predict_probabilities(model, dataset, progress_every=progress_every)
  if "labels" not in predictions:
    raise ValueError("the dataset to evaluate has no labels")
  report = reports_from_predictions(predictions, class_names)
  log_report(report)
  if directory:
    write_report(report, directory, prefix)
  return headline(report)


# --- the confusion-matrix picture -----------------------------------------------------------

MAX_NAMED_CLASSES = 50  # above this, class names would be unreadably small
MAX_COUNTED_CLASSES = 25  # above this, counts do not fit in the cells
_LOW = np.array([247, 251, 255], np.float64)  # colour of an empty cell
_HIGH = np.array([8, 48, 107], np.float64)  # colour of a cell holding its whole row


@dataclasses.dataclass
class MatrixLayout:
  """Where the cells of a confusion-matrix picture are: cell (row, col) spans
  x in [left + col * cell, left + (col + 1) * cell), y likewise from `top`."""

  left: int
  top: int
  cell: int
  width: int
  height: int

  def cell_box(self, row: int, col: int):
    x0, y0 = self.left + col * self.cell, self.top + row * self.cell
    return x0, y0, x0 + self.cell - 1, y0 + self.cell - 1


def _text_width(font, text: str) -> int:
  left, _, right, _ = font.getbbox(text)
  return int(right - left)


def _cell_size(num_classes: int) -> int:
  return int(max(1, min(40, 800 // max(num_classes, 1))))


def confusion_matrix_layout(class_names: Sequence[str]) -> MatrixLayout:
  num_classes = len(class_names)
  cell = _cell_size(num_classes)
  margin = 24  # room for the axis title
  label_room = 0
  if num_classes <= MAX_NAMED_CLASSES:
    font = drawing.font(max(8, min(12, cell - 2)))
    label_room = max(_text_width(font, str(name)) for name in class_names) + 6
  left = top = margin + label_room
  side = num_classes * cell
  return MatrixLayout(left=left, top=top, cell=cell, width=left + side + 8, height=top + side + 8)


def cell_colours(matrix: np.ndarray) -> np.ndarray:
  """[C, C, 3] uint8 colours: each row normalised by its total, light (none) to dark (all)."""
  matrix = np.asarray(matrix, np.float64)
  fraction = _safe_divide(matrix, np.broadcast_to(matrix.sum(axis=1, keepdims=True), matrix.shape))
  colours = _LOW + fraction[..., None] * (_HIGH - _LOW)
  return np.rint(colours).astype(np.uint8)


def render_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> Image.Image:
  """A heat map of the matrix (rows true, columns predicted, colours row-normalised), class names
  on both axes up to MAX_NAMED_CLASSES classes and counts in the cells up to MAX_COUNTED_CLASSES."""
  matrix = np.asarray(matrix)
  num_classes = matrix.shape[0]
  layout = confusion_matrix_layout(class_names)
  cell = layout.cell
  side = num_classes * cell
  cells = np.repeat(np.repeat(cell_colours(matrix), cell, axis=0), cell, axis=1)
  image = Image.new("RGB", (layout.width, layout.height), "white")
  image.paste(Image.fromarray(cells), (layout.left, layout.top))
  draw = ImageDraw.Draw(image)
  title_font = drawing.font(12)
  draw.text((layout.left, 4), "predicted", fill="black", font=title_font)
  _draw_vertical_text(image, "true", (4, layout.top), title_font)
  if num_classes <= MAX_NAMED_CLASSES:
    _draw_names(image, class_names, layout)
  if num_classes <= MAX_COUNTED_CLASSES and cell >= 16:
    _draw_counts(draw, matrix, layout)
  if cell >= 6:  # grid lines would hide cells smaller than this
    grid = (200, 200, 200)
    for i in range(num_classes + 1):
      offset = i * cell
      draw.line(
        [(layout.left + offset, layout.top), (layout.left + offset, layout.top + side)], grid
      )
      draw.line(
        [(layout.left, layout.top + offset), (layout.left + side, layout.top + offset)], grid
      )
  return image


def _draw_names(image: Image.Image, class_names, layout: MatrixLayout) -> None:
  draw = ImageDraw.Draw(image)
  font = drawing.font(max(8, min(12, layout.cell - 2)))
  for i, name in enumerate(class_names):
    name = str(name)
    centre = layout.top + i * layout.cell + layout.cell // 2
    width = _text_width(font, name)
    draw.text((layout.left - 4 - width, centre), name, fill="black", font=font, anchor="lm")
    column_centre = layout.left + i * layout.cell + layout.cell // 2
    _draw_vertical_text(image, name, (column_centre, layout.top - 4), font, anchor_bottom=True)


def _draw_vertical_text(image, text, position, font, anchor_bottom=False) -> None:
  """Text rotated to read bottom-to-top; `position` is its top-left corner, or with
  anchor_bottom its bottom centre."""
  left, top, right, bottom = font.getbbox(text)
  strip = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
  ImageDraw.Draw(strip).text((1 - left, 1 - top), text, fill=255, font=font)
  strip = strip.rotate(90, expand=True)
  x, y = position
  if anchor_bottom:
    x, y = x - strip.width // 2, y - strip.height
  image.paste((0, 0, 0), (int(x), int(y)), strip)


def _draw_counts(draw: ImageDraw.ImageDraw, matrix: np.ndarray, layout: MatrixLayout) -> None:
  font = drawing.font(max(8, min(12, layout.cell // 3)))
  totals = matrix.sum(axis=1)
  for row in range(matrix.shape[0]):
    for col in range(matrix.shape[1]):
      count = int(matrix[row, col])
      if count == 0:
        continue
      dark = totals[row] > 0 and count / totals[row] > 0.5
      x0, y0, x1, y1 = layout.cell_box(row, col)
      centre = ((x0 + x1 + 1) / 2, (y0 + y1 + 1) / 2)
      draw.text(centre, str(count), fill="white" if dark else "black", font=font, anchor="mm")
