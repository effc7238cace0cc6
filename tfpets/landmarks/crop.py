"""The head-cropped dataset variant (docs/landmarks.md): the seed paper (arXiv 2109.00891)
publishes its cropped Oxford pets but not how it cut them, so this procedure is tfpets' own.

Per image: the head is the union of the landmarks' box and the head box (predicted by the detector,
or annotated with `use_annotations`); the crop is the square `prepare.square_window` cuts around it
with `margin` x its longer side on each side (shifted into the frame where it fits, black outside
where it does not), resized to `size`. Images without a head are listed and either kept uncropped
(the whole image padded square) or skipped. Crops are written as class folders, then converted to
shard records by the one converter, `tfpets.data.convert.convert`, with the annotations moved into
crop pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
from typing import Dict, List, Optional, Tuple

import numpy as np
from absl import logging

from tfpets.data import convert, decode, prepare
from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult
from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError
from tfpets.landmarks import data

NO_HEAD_ACTIONS = ("keep", "skip")
Window = Tuple[int, int, int]  # left, top, side (pixels; may reach outside the image)


@dataclasses.dataclass(frozen=True)
class CropOptions:
  margin: float = 0.2
  size: int = 128
  no_head: str = "keep"  # keep uncropped | skip
  use_annotations: bool = False


@dataclasses.dataclass
class CropOutcome:
  records: List[ImageRecord]
  class_names: List[str]
  rows: List[dict]  # one per input image: the crop manifest
  no_head: List[dict]  # images where no head was found

  @property
  def contained_fraction(self) -> float:
    """Fraction of cropped images whose crop holds the whole annotated head box."""
    flags = [r["contains_true_head"] for r in self.rows if r["contains_true_head"] != ""]
    return float(np.mean(flags)) if flags else float("nan")


def head_window(
  points: Optional[np.ndarray], box: Optional[np.ndarray], height: int, width: int, margin: float
) -> Window:
  """The square crop around the union of the points' box and the head box."""
  parts = []
  if points is not None and len(points):
    pts = np.asarray(points, np.float32).reshape(-1, 2)
    parts.append(np.concatenate([pts.min(0), pts.max(0)]))
  if box is not None:
    parts.append(np.asarray(box, np.float32))
  if not parts:
    raise ValueError("a head window needs landmarks or a head box")
  stacked = np.stack(parts)
  union = np.concatenate([stacked[:, :2].min(0), stacked[:, 2:].max(0)])
  return prepare.square_window(height, width, "head", union, margin)


def contains(window: Window, box: np.ndarray) -> bool:
  """Whether the crop's pixels include every pixel centre of box (centre coordinates)."""
  left, top, side = window
  x0, y0, x1, y1 = np.asarray(box, np.float64)
  return bool(
    left - 0.5 <= x0 and top - 0.5 <= y0 and x1 <= left + side - 0.5 and y1 <= top + side - 0.5
  )


def to_crop(points: np.ndarray, window: Window, size: int) -> np.ndarray:
  """Centre coordinates of the original image -> centre coordinates of the resized crop."""
  left, top, side = window
  scale = size / side
  return (
    (np.asarray(points, np.float32) + 0.5 - np.array([left, top], np.float32)) * scale - 0.5
  ).astype(np.float32)


def _annotations(example: Dict) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  count = int(example["num_landmarks"])
  points = np.asarray(example["landmarks"], np.float32)[:count] if count else None
  box = np.asarray(example["box"], np.float32) if bool(example["has_box"]) else None
  return points, box


def _crop_record(
  example: Dict,
  window: Window,
  options: CropOptions,
  out_dir: pathlib.Path,
  class_names: List[str],
  taken: set,
) -> ImageRecord:
  label = int(example["label"])
  class_name = class_names[label]
  name = example["id"].decode() or "image"
  stem, n = name, 1
  while (class_name, stem) in taken:
    n += 1
    stem = f"{name}_{n}"
  taken.add((class_name, stem))
  path = out_dir / class_name / f"{stem}.jpg"
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = prepare.resize(prepare.cut_square(example["image"], *window), options.size)
  path.write_bytes(decode.encode_jpeg(pixels))
  points, box = _annotations(example)
  if box is not None:
    corners = to_crop(box.reshape(2, 2), window, options.size)
    box = corners.reshape(4)
  return ImageRecord(
    path=str(path),
    label=label,
    class_name=class_name,
    box=box,
    landmarks=None if points is None else to_crop(points, window, options.size),
    species=example["species"].decode(),
    source="head_crop",
    split=example["split"],
  )


def crop_dataset(
  shards_dir: pathlib.Path,
  out_dir: pathlib.Path,
  detector,
  options: CropOptions,
  batch_size: int = 32,
) -> CropOutcome:
  """Crops every split of a converted dataset into out_dir/<class>/<id>.jpg.

  `detector` (a predict.Detector) is used unless options.use_annotations.
  """
  if options.no_head not in NO_HEAD_ACTIONS:
    raise ArgumentError("no_head", options.no_head, f"must be one of {', '.join(NO_HEAD_ACTIONS)}")
  manifest = shards.read_manifest(shards_dir)
  class_names = list(manifest["class_names"])
  outcome = CropOutcome([], class_names, [], [])
  taken: set = set()
  for split in manifest["splits"]:
    batch: List[Dict] = []
    for example in data.examples(shards_dir, split).as_numpy_iterator():
      example["split"] = split
      batch.append(example)
      if len(batch) == batch_size:
        _crop_batch(batch, detector, options, out_dir, outcome, taken)
        batch = []
    if batch:
      _crop_batch(batch, detector, options, out_dir, outcome, taken)
  logging.info(
    "cropped %d images, %d without a head (%s)",
    len(outcome.rows),
    len(outcome.no_head),
    options.no_head,
  )
  return outcome


def _crop_batch(
  batch: List[Dict],
  detector,
  options: CropOptions,
  out_dir: pathlib.Path,
  outcome: CropOutcome,
  taken: set,
) -> None:
  detections = [None] * len(batch)
  if not options.use_annotations:
    detections = detector.detect_many([ex["image"] for ex in batch])
  for example, det in zip(batch, detections):
    height, width = example["image"].shape[:2]
    true_points, true_box = _annotations(example)
    if det is None:
      points, box, score = true_points, true_box, ""
      found, reason = points is not None or box is not None, "no head box or landmarks annotated"
    else:
      points, box, score = det.landmarks, det.box, round(det.head_score, 4)
      found, reason = det.head_found, f"head score {det.head_score:.3f} or box {det.box.round(1)}"
    row = {
      "split": example["split"],
      "class_name": outcome.class_names[int(example["label"])],
      "id": example["id"].decode(),
      "source_path": example["source_path"].decode(),
      "head_found": found,
      "head_score": score,
      "margin": options.margin,
    }
    if not found:
      outcome.no_head.append({**row, "reason": reason, "action": options.no_head})
      if options.no_head == "skip":
        outcome.rows.append(
          {**row, "crop_file": "", "left": "", "top": "", "side": "", "contains_true_head": ""}
        )
        continue
      window = prepare.square_window(height, width, "pad")
    else:
      window = head_window(points, box, height, width, options.margin)
    record = _crop_record(example, window, options, out_dir, outcome.class_names, taken)
    outcome.records.append(record)
    left, top, side = window
    row.update(
      crop_file=record.path,
      left=left,
      top=top,
      side=side,
      contains_true_head="" if true_box is None or not found else contains(window, true_box),
    )
    if det is not None:
      row["box"] = " ".join(f"{v:.2f}" for v in det.box)
      row["landmarks"] = " ".join(f"{v:.2f}" for v in det.landmarks.reshape(-1))
    outcome.rows.append(row)


def write_reports(outcome: CropOutcome, reports_dir: pathlib.Path) -> Dict[str, str]:
  """reports/crops.csv (every image: window, score, predictions) and reports/no_head.csv."""
  reports_dir.mkdir(parents=True, exist_ok=True)
  paths = {"crops": reports_dir / "crops.csv", "no_head": reports_dir / "no_head.csv"}
  columns = [
    "split",
    "class_name",
    "id",
    "source_path",
    "crop_file",
    "head_found",
    "head_score",
    "margin",
    "left",
    "top",
    "side",
    "contains_true_head",
    "box",
    "landmarks",
  ]
  _write_csv(paths["crops"], columns, outcome.rows)
  _write_csv(
    paths["no_head"],
    ["split", "class_name", "id", "source_path", "head_score", "reason", "action"],
    outcome.no_head,
  )
  return {k: str(v) for k, v in paths.items()}


def _write_csv(path: pathlib.Path, columns: List[str], rows: List[dict]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def convert_crops(
  outcome: CropOutcome,
  records_dir: pathlib.Path,
  reports_dir: pathlib.Path,
  size: int,
  workers: int = 0,
  seed: int = 0,
) -> convert.ConvertResult:
  """Shard records (and StyleGAN records when the crop size is a power of two) of the crops,
  keeping each image's split."""
  report = rejects_lib.RejectsReport()
  for row in outcome.no_head:
    action = rejects_lib.SKIPPED if row["action"] == "skip" else rejects_lib.CONVERTED
    report.add(
      row["source_path"],
      f"no head found ({row['reason']}); "
      f"{'skipped' if row['action'] == 'skip' else 'kept uncropped'}",
      action,
    )
  gan_resolution = size if size & (size - 1) == 0 else 0
  options = convert.ConvertOptions(
    splits="source",
    dedupe="off",
    gan_resolution=gan_resolution,
    square="center",
    workers=workers,
    seed=seed,
  )
  return convert.convert(
    SourceResult(outcome.records, outcome.class_names, report), records_dir, reports_dir, options
  )
