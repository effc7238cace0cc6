"""Source records -> checked images -> sharded records + StyleGAN multires records + reports.

Every image is decoded once (in worker processes); whatever is skipped or changed is written to the
rejects report with its reason, and a summary is logged. Nothing is dropped silently.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import pathlib
import time
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
from absl import logging

from tfpets.data import prepare as prepare_lib
from tfpets.data import rejects as rejects_lib
from tfpets.data import sources, subsets
from tfpets.data.decode import ImageDecodeError
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult
from tfpets.errors import ArgumentError, UsageError

# Below this many images, spawning worker processes costs more than it saves (measured on 2 cores).
_PROCESS_POOL_MIN_JOBS = 5000

DEDUPE_MODES = ("off", "report", "remove")

# Source split names that mean "training data" and "held-out data".
_SOURCE_SPLITS = {
  "train": "train",
  "trainval": "train",
  "val": "val",
  "validation": "val",
  "test": "test",
}


@dataclasses.dataclass
class ConvertOptions:
  splits: str = "auto"  # 'auto' | 'source' | 'train=0.8,val=0.1,test=0.1'
  subset: str = "1.0"  # applied to the train split only
  dedupe: str = "report"  # 'off' | 'report' (list duplicates, keep them) | 'remove'
  max_hamming: Optional[int] = subsets.DEFAULT_MAX_HAMMING  # None: exact duplicates only
  gan_resolution: int = 128  # 0 writes no StyleGAN records
  gan_split: str = "train"
  square: str = "center"
  head_margin: float = 0.2
  records_per_shard: int = 1024
  workers: int = 0  # 0: one per core
  strict: bool = False
  seed: int = 0

  def __post_init__(self):
    # Fail on a bad option before minutes of decoding, not after.
    if self.splits not in ("auto", "source"):
      parse_split_fractions(self.splits)
    subsets.parse_subset(self.subset)
    if self.dedupe not in DEDUPE_MODES:
      raise ArgumentError("dedupe", self.dedupe, f"not one of {', '.join(DEDUPE_MODES)}")


@dataclasses.dataclass
class ConvertResult:
  shards_dir: str
  gan_dir: Optional[str]
  split_counts: Dict[str, int]
  rejects: rejects_lib.RejectsReport
  rejects_csv: str
  seconds: float

  @property
  def images_written(self) -> int:
    return sum(self.split_counts.values())


def _with_progress(results: Iterable, total: int, every: int = 1000) -> list:
  done = []
  for i, result in enumerate(results, 1):
    done.append(result)
    if i % every == 0 or i == total:
      logging.info("decoded and checked %d / %d images", i, total)
  return done


def prepare_all(records: Sequence[ImageRecord], options: ConvertOptions, gan_paths: set):
  """Decodes and checks every record, in worker processes for large inputs; keeps input order."""
  jobs = [
    (
      r,
      options.gan_resolution if r.path in gan_paths else 0,
      options.square,
      options.head_margin,
      options.dedupe != "off",
    )
    for r in records
  ]
  workers = options.workers or os.cpu_count() or 1
  if workers == 1 or len(jobs) < 64:
    return _with_progress(map(prepare_lib.prepare_or_error, jobs), len(jobs))
  if len(jobs) < _PROCESS_POOL_MIN_JOBS:
    # Pillow, OpenCV and numpy release the GIL for the heavy parts; threads start instantly.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      return _with_progress(pool.map(prepare_lib.prepare_or_error, jobs), len(jobs))
  # spawn: the parent has TensorFlow's threads running, which fork does not copy safely.
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    return _with_progress(pool.map(prepare_lib.prepare_or_error, jobs, chunksize=32), len(jobs))


def parse_split_fractions(text: str) -> Dict[str, float]:
  try:
    fractions = {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
  except ValueError:
    raise ArgumentError(
      "splits", text, "expected auto, source or name=fraction,... (for example train=0.75,val=0.25)"
    ) from None
  if abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
    raise ArgumentError("splits", text, "fractions must be >= 0 and sum to 1")
  return fractions


SOURCE_WITH_VAL = "source,val="  # the source's splits, a stratified part of its train as val


def assign_splits(records: List[ImageRecord], spec: str, seed: int) -> Dict[str, List[ImageRecord]]:
  if spec.startswith(SOURCE_WITH_VAL):
    return _source_with_val(records, spec, seed)
  use_source = spec == "source" or (spec == "auto" and records and all(r.split for r in records))
  if use_source:
    out = collections.defaultdict(list)
    for r in records:
      name = _SOURCE_SPLITS.get(r.split, r.split)
      if not name:
        raise ArgumentError(
          "splits", "source", f"{r.path} has no split in the source; give fractions (train=0.8,...)"
        )
      out[name].append(r)
    return dict(out)
  fractions = parse_split_fractions("train=0.8,val=0.1,test=0.1" if spec == "auto" else spec)
  return subsets.split_records(records, fractions, seed)


def _source_with_val(
  records: List[ImageRecord], spec: str, seed: int
) -> Dict[str, List[ImageRecord]]:
  """`source,val=F`: the source's splits, with a stratified fraction F of its train split held out
  as val (Oxford-IIIT Pet has trainval and test only; classifiers want a val split)."""
  try:
    fraction = float(spec[len(SOURCE_WITH_VAL) :])
  except ValueError:
    fraction = -1.0
  if not 0.0 < fraction < 1.0:
    raise ArgumentError("splits", spec, "source,val=F needs a fraction F between 0 and 1")
  out = assign_splits(records, "source", seed)
  if "val" in out:
    raise ArgumentError("splits", spec, "the source already has a val split; give source")
  held = subsets.split_records(out.pop("train", []), {"train": 1 - fraction, "val": fraction}, seed)
  return {**out, **held}


def _write_reports(
  reports_dir: pathlib.Path, report: rejects_lib.RejectsReport, summary: dict
) -> str:
  reports_dir.mkdir(parents=True, exist_ok=True)
  csv_path = report.write_csv(str(reports_dir / "rejects.csv"))
  (reports_dir / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
  return csv_path


def _write_member_list(path: pathlib.Path, records: Sequence[ImageRecord]) -> None:
  """The exact files of a split, in record order, so a subset can be reproduced and audited."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{r.path}\t{r.class_name}\n" for r in records))


def convert(
  source: SourceResult,
  records_dir: str | os.PathLike,
  reports_dir: str | os.PathLike,
  options: ConvertOptions = ConvertOptions(),
  manifest_extra: Optional[dict] = None,
) -> ConvertResult:
  """Converts a loaded source; writes records_dir/{shards,stylegan}/ and reports_dir/.

  Synthetic records (`ImageRecord.synthetic`) always go to the train split, outside any subset and
  never into the StyleGAN records; `manifest_extra` adds entries to the manifest.
  """
  from tfpets.data.tfrecord import multires, shards  # TensorFlow only in the parent process

  start = time.time()
  records_dir, reports_dir = pathlib.Path(records_dir), pathlib.Path(reports_dir)
  report = rejects_lib.RejectsReport()
  report.extend(source.rejects)
  if not source.records:
    _write_reports(reports_dir, report, {"images_written": 0})
    raise UsageError(
      f"the source has no usable images ({report.summary()}); see {reports_dir / 'rejects.csv'}"
    )

  real = [r for r in source.records if not r.synthetic]
  synthetic = [r for r in source.records if r.synthetic]
  split_map = assign_splits(real, options.splits, options.seed)
  if "train" in split_map and options.subset not in ("1", "1.0"):
    kept = subsets.stratified_subset(
      split_map["train"], subsets.parse_subset(options.subset), options.seed
    )
    logging.info(
      "--subset=%s keeps %d of %d training images",
      options.subset,
      len(kept),
      len(split_map["train"]),
    )
    split_map["train"] = kept
  gan_paths = (
    {r.path for r in split_map.get(options.gan_split, [])} if options.gan_resolution else set()
  )
  if synthetic:
    # Held-out splits measure real images only.
    split_map["train"] = split_map.get("train", []) + synthetic

  ordered = [r for split in sorted(split_map) for r in split_map[split]]
  results = prepare_all(ordered, options, gan_paths)
  prepared_by_path = {}
  for record, result in zip(ordered, results):
    if isinstance(result, ImageDecodeError):
      report.add(record.path, result.reason, rejects_lib.SKIPPED)
      continue
    for reason, action in result.issues:
      report.add(record.path, reason, action)
    prepared_by_path[record.path] = result

  if options.dedupe != "off":
    items = list(prepared_by_path.values())
    duplicates = subsets.find_duplicates_by_fingerprint(
      [p.record for p in items], [p.fingerprint for p in items], options.max_hamming
    )
    for dup in duplicates.removed:
      if options.dedupe == "remove":
        report.add(dup.record.path, dup.reason, rejects_lib.SKIPPED)
        del prepared_by_path[dup.record.path]
      else:
        report.add(
          dup.record.path,
          f"{dup.reason}; kept (--dedupe=remove drops it)",
          rejects_lib.DUPLICATE_KEPT,
        )

  if not prepared_by_path:
    _write_reports(reports_dir, report, {"images_written": 0})
    raise UsageError(
      f"no usable image remains ({report.summary()}); see {reports_dir / 'rejects.csv'}"
    )

  shards_dir = records_dir / "shards"
  split_counts, files, per_class, synthetic_per_class = {}, {}, {}, {}
  gan_dir, gan_writer, gan_labels = None, None, []
  if options.gan_resolution and gan_paths:
    gan_dir = records_dir / "stylegan"
    gan_writer = multires.MultiResWriter(gan_dir, options.gan_resolution)
  rng = np.random.RandomState(options.seed)
  for split in sorted(split_map):
    kept = [r for r in split_map[split] if r.path in prepared_by_path]
    order = rng.permutation(len(kept)) if split == "train" else np.arange(len(kept))
    writer = shards.ShardWriter(shards_dir, split, len(kept), options.records_per_shard)
    for i in order:
      prepared = prepared_by_path[kept[i].path]
      writer.write(shards.serialize(prepared))
      if gan_writer is not None and prepared.pyramid is not None:
        gan_writer.write(prepared.pyramid)
        gan_labels.append(prepared.record.label)
    writer.close()
    split_counts[split] = writer.count
    files[split] = writer.paths
    per_class[split] = shards.label_histogram([r.label for r in kept], source.class_names)
    synthetic_per_class[split] = shards.label_histogram(
      [r.label for r in kept if r.synthetic], source.class_names
    )
    _write_member_list(reports_dir / f"split_{split}.txt", [kept[i] for i in order])
  if gan_writer is not None:
    gan_writer.close(multires.one_hot(gan_labels, len(source.class_names)))

  empty = [name for name, n in per_class.get("train", {}).items() if n == 0]
  for name in empty:
    report.add(name, "class has no usable training image", "empty_class")
  shards.write_manifest(
    shards_dir,
    source.class_names,
    per_class,
    files,
    extra={
      "seed": options.seed,
      "subset": options.subset,
      "split_spec": options.splits,
      "gan_records": str(gan_dir) if gan_dir else None,
      "gan_resolution": options.gan_resolution if gan_dir else 0,
      **(_synthetic_counts(synthetic_per_class) if synthetic else {}),
      **(manifest_extra or {}),
    },
  )
  seconds = time.time() - start
  summary = {
    "images_written": sum(split_counts.values()),
    "split_counts": split_counts,
    "rejects": dict(report.counts()),
    "seconds": round(seconds, 2),
    "images_per_second": round(len(ordered) / max(seconds, 1e-9), 1),
  }
  csv_path = _write_reports(reports_dir, report, summary)
  logging.info(
    "converted %d images in %.1fs (%s); %s -> %s",
    summary["images_written"],
    seconds,
    ", ".join(f"{k} {v}" for k, v in split_counts.items()),
    report.summary(),
    csv_path,
  )
  skipped = report.paths(rejects_lib.SKIPPED)
  if options.strict and skipped:
    raise ArgumentError(
      "strict", True, f"{len(skipped)} file(s) skipped, first {skipped[0]}; see {csv_path}"
    )
  return ConvertResult(
    str(shards_dir), str(gan_dir) if gan_dir else None, split_counts, report, csv_path, seconds
  )


def _synthetic_counts(per_class: Dict[str, Dict[str, int]]) -> dict:
  """The manifest's `synthetic` entry: generated images per split and class."""
  return {
    "synthetic": {
      split: {"num_examples": int(sum(counts.values())), "per_class": counts}
      for split, counts in per_class.items()
    }
  }


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
  """Size of the embedded synthetic pets (tfpets.data.synthetic)."""

  num_breeds: int = 12
  images_per_breed: int = 100
  size: int = 128


def load_dataset(
  spec: str,
  root: str | os.PathLike,
  synthetic_options: SyntheticOptions = SyntheticOptions(),
  seed: int = 0,
  workers: int = 0,
  tfds_manual_dir: Optional[str] = None,
  tfds_data_dir: Optional[str] = None,
) -> SourceResult:
  """Reads dataset `spec` (`sources.parse_spec`); the synthetic pets are rendered into root/source."""
  kind, _ = sources.parse_spec(spec)
  if kind == "synthetic":
    from tfpets.data import synthetic

    csv_path = synthetic.write_dataset(
      str(pathlib.Path(root) / "source"),
      num_breeds=synthetic_options.num_breeds,
      images_per_breed=synthetic_options.images_per_breed,
      size=synthetic_options.size,
      seed=seed,
      workers=workers or (os.cpu_count() or 1),
    )
    return sources.load_source(f"csv:{csv_path}")
  options = {}
  if kind == "tfds":
    options = {"tfds_manual_dir": tfds_manual_dir, "data_dir": tfds_data_dir}
  return sources.load_source(spec, **options)


def convert_dataset(
  spec: str,
  root: str | os.PathLike,
  options: ConvertOptions,
  synthetic_options: SyntheticOptions = SyntheticOptions(),
  tfds_manual_dir: Optional[str] = None,
  tfds_data_dir: Optional[str] = None,
) -> ConvertResult:
  """Reads `spec` and converts it into root/records (shards, StyleGAN records) and root/reports."""
  root = pathlib.Path(root)
  source = load_dataset(
    spec, root, synthetic_options, options.seed, options.workers, tfds_manual_dir, tfds_data_dir
  )
  return convert(source, root / "records", root / "reports", options)
