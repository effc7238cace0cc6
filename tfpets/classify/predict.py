"""Predictions for a folder, a glob or a CSV list of images, in tfpets' and GrabAI's file formats.

Sources follow GrabAI's `wsdan_predict.py`: a folder of images, a folder of class folders
(torchvision `ImageFolder`: the label is the position of the class folder in sorted order) or a CSV
of `image,label` rows with paths relative to a data folder. Each image is decoded by
`tfpets.data.decode.read_image`; a file that cannot be decoded goes to `rejects.csv` with the
reason. Outputs: `predictions.csv`, GrabAI's `<name>_ImageList.csv` and
`<name>_PredictedProbabilites.npy` (their spelling), the same array as
`<name>_PredictedProbabilities.npy`, and with known labels the evaluation report of
`tfpets.classify.evaluate`. The arrays always hold probabilities (GrabAI saved raw logits when not
evaluating).
"""

from __future__ import annotations

import csv
import os
from typing import Iterable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.classify import data, evaluate
from tfpets.data.decode import ImageDecodeError, read_image
from tfpets.data.listing import Listing, as_listing
from tfpets.data.rejects import SKIPPED, RejectsReport

PROGRESS_EVERY = 256


class _DecodedImages:
  """Decodes a listing in order, keeping what decodes and reporting what does not."""

  def __init__(self, listing: Listing):
    self.listing = listing
    self.kept: Listing = []
    self.rejects = RejectsReport()

  def __call__(self) -> Iterable[Tuple[np.ndarray, int]]:
    for path, label in self.listing:
      try:
        pixels = read_image(path).pixels
      except ImageDecodeError as e:
        self.rejects.add(path, e.reason, SKIPPED)
        continue
      self.kept.append((path, label))
      yield pixels, -1 if label is None else label


def image_dataset(decoded: _DecodedImages, image_size: int, batch_size: int) -> tf.data.Dataset:
  """Batches of (images float32 [B, S, S, 3] in [0, 255], labels, -1 when unknown)."""

  def resize(pixels, label):
    return data.eval_images(pixels[None], image_size)[0], label  # as evaluation and export

  signature = (
    tf.TensorSpec([None, None, 3], tf.uint8),
    tf.TensorSpec([], tf.int32),
  )
  dataset = tf.data.Dataset.from_generator(decoded, output_signature=signature)
  dataset = dataset.map(resize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def write_predictions_csv(path, paths, probabilities, class_names, labels=None) -> str:
  """path, predicted label, label_index, its probability[, true_label, true_label_index], and one
  probability column per class."""
  predicted = np.argmax(probabilities, axis=1)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    header = ["path", "label", "label_index", "probability"]
    if labels is not None:
      header += ["true_label", "true_label_index"]
    writer.writerow(header + [str(n) for n in class_names])
    for i, image_path in enumerate(paths):
      row = [image_path, class_names[predicted[i]], int(predicted[i])]
      row.append(repr(float(probabilities[i, predicted[i]])))
      if labels is not None:
        row += [class_names[labels[i]], int(labels[i])]
      writer.writerow(row + [repr(float(p)) for p in probabilities[i]])
  return path


def write_image_list(path, paths, labels=None) -> str:
  """GrabAI's `<name>_ImageList.csv`: pandas `to_csv` layout with its unnamed index column."""
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["", "image_path"] + (["label"] if labels is not None else []))
    for i, image_path in enumerate(paths):
      writer.writerow([i, image_path] + ([int(labels[i])] if labels is not None else []))
  return path


def predict_folder(
  model,
  sources,
  image_size: int,
  class_names: Sequence[str],
  output_dir: str,
  name: str = "predictions",
  batch_size: int = 32,
) -> dict:
  """Predicts every image of `sources` and writes the prediction files into `output_dir`.

  `sources` is a source for `list_images` or its listing: (path, label or None) pairs or paths.
  Returns `paths` (the images predicted, in order), `probabilities` [N, C] (refined ones for a
  model with `refine`), `labels` (None unless every predicted image has one), `rejects`, `files`
  {kind: path}, with labels the evaluation `report` and its `headline`, and a JSON-ready
  `summary` (counts, files, headline).
  """
  if image_size <= 0:
    raise ValueError(f"image_size must be positive, got {image_size}")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  listing = as_listing(sources)
  os.makedirs(output_dir, exist_ok=True)
  logging.info("predicting %d images into %s", len(listing), output_dir)
  decoded = _DecodedImages(listing)
  dataset = image_dataset(decoded, image_size, batch_size)
  try:
    predictions = evaluate.predict_probabilities(model, dataset, progress_every=PROGRESS_EVERY)
  except ValueError:
    if decoded.kept:
      raise
    predictions = None  # nothing decoded: reported below with the rejects
  files = {"rejects": decoded.rejects.write_csv(os.path.join(output_dir, "rejects.csv"))}
  if decoded.rejects:
    logging.warning(
      "%d of %d images could not be decoded and were skipped; see %s",
      len(decoded.rejects),
      len(listing),
      files["rejects"],
    )
  if predictions is None:
    raise ValueError(f"none of the {len(listing)} images could be decoded; see {files['rejects']}")
  probabilities = predictions.get("refined_probabilities", predictions["probabilities"])
  if probabilities.shape[1] != len(class_names):
    raise ValueError(
      f"the model predicts {probabilities.shape[1]} classes but {len(class_names)} class names "
      "were given"
    )
  paths = [path for path, _ in decoded.kept]
  labels = _known_labels(decoded.kept, len(class_names))
  files.update(_write_files(output_dir, name, paths, probabilities, class_names, labels))
  result = {
    "paths": paths,
    "probabilities": probabilities,
    "labels": labels,
    "rejects": decoded.rejects,
    "files": files,
  }
  if labels is not None:
    predictions["labels"] = labels
    report = evaluate.reports_from_predictions(predictions, class_names)
    evaluate.log_report(report)
    written = evaluate.write_report(report, output_dir, prefix=f"{name}_")
    files.update({os.path.basename(p): p for p in written})
    result.update(report=report, headline=evaluate.headline(report))
  result["summary"] = {
    "predicted": len(paths),
    "rejected": len(decoded.rejects),
    "files": dict(files),
    **({"headline": result["headline"]} if "headline" in result else {}),
  }
  logging.info("predicted %d images; files in %s", len(paths), output_dir)
  return result


def _known_labels(kept: Listing, num_classes: int) -> Optional[np.ndarray]:
  labels = [label for _, label in kept]
  if any(label is None for label in labels):
    if any(label is not None for label in labels):
      logging.warning("only some images have labels; predicting without evaluating")
    return None
  labels = np.asarray(labels, np.int64)
  outside = labels[(labels < 0) | (labels >= num_classes)]
  if outside.size:
    raise ValueError(f"label {outside[0]} is outside the {num_classes} classes")
  return labels


def _write_files(output_dir, name, paths, probabilities, class_names, labels) -> dict:
  probabilities64 = np.asarray(probabilities, np.float64)
  files = {
    "predictions": write_predictions_csv(
      os.path.join(output_dir, "predictions.csv"), paths, probabilities, class_names, labels
    ),
    "image_list": write_image_list(
      os.path.join(output_dir, f"{name}_ImageList.csv"), paths, labels
    ),
  }
  # GrabAI's misspelt name, kept for its users' scripts, and the correct one.
  for key, file_name in (
    ("grabai_probabilities", f"{name}_PredictedProbabilites.npy"),
    ("probabilities", f"{name}_PredictedProbabilities.npy"),
  ):
    files[key] = os.path.join(output_dir, file_name)
    np.save(files[key], probabilities64)
  return files
