"""Data-layer throughput: conversion images/s, and the tf.data pipeline against a plain loop.

Prints one JSON object. The plain loop is the bound the pipeline is measured against: the same
encoded images decoded and resized by OpenCV in a thread pool with one thread per core (OpenCV
releases the GIL), with no parsing, batching or framework overhead. Uses the real Oxford slice in
../shared/data when present, else synthetic pets rendered at 384 px.

  python benchmarks/bench_data.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import sys
import tempfile
import time

import cv2
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OXFORD = REPO.parent / "shared" / "data" / "oxford_pets_3class"


def convert_source(spec: str, out: pathlib.Path, gan_resolution: int) -> dict:
  from tfpets.data import convert
  from tfpets.data.sources import load_source

  source = load_source(spec)
  start = time.perf_counter()
  result = convert.convert(
    source,
    out / "records",
    out / "reports",
    convert.ConvertOptions(splits="train=1.0", gan_resolution=gan_resolution, dedupe="remove"),
  )
  seconds = time.perf_counter() - start
  return {
    "images": len(source.records),
    "seconds": round(seconds, 2),
    "images_per_s": round(len(source.records) / seconds, 1),
    "shards_dir": result.shards_dir,
  }


def encoded_images(shards_dir: str) -> list:
  import tensorflow as tf

  from tfpets.data.tfrecord import shards

  return [
    shards.parse(s, decode_image=False)["encoded"].numpy()
    for s in tf.data.TFRecordDataset(shards.split_files(shards_dir, "train"))
  ]


def plain_loop(images: list, size: int, repeats: int, threads: int) -> float:
  cv2.setNumThreads(1)  # parallelism comes from the pool, one image per thread

  def work(data):
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)

  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    list(pool.map(work, images[:32]))
    start = time.perf_counter()
    for _ in range(repeats):
      list(pool.map(work, images, chunksize=16))
  return len(images) * repeats / (time.perf_counter() - start)


def tf_data(shards_dir: str, n: int, size: int, repeats: int) -> float:
  from tfpets.data import pipeline

  ds = pipeline.shard_dataset(
    shards_dir, "train", batch_size=64, image_size=size, training=False
  ).repeat()
  it = iter(ds)
  next(it)
  batches = int(np.ceil(n * repeats / 64))
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * 64 / (time.perf_counter() - start)


def main() -> None:
  # Imported here: conversion workers are spawned and re-import this script, and should not
  # pay for TensorFlow when they do.
  from tfpets.data import synthetic

  parser = argparse.ArgumentParser()
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  cores = os.cpu_count() or 1
  out = {
    "cores": cores,
    "malloc": "no-mmap" if "MALLOC_MMAP_THRESHOLD_" in os.environ else "default",
  }
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    csv_path = synthetic.write_dataset(
      str(tmp / "synthetic"), num_breeds=12, images_per_breed=50, size=128, seed=0, workers=cores
    )
    out["convert_synthetic_128px"] = convert_source(f"csv:{csv_path}", tmp / "c1", 128)
    if OXFORD.is_dir():
      out["convert_oxford_slice"] = convert_source(f"oxford_pets:{OXFORD}", tmp / "c2", 128)
      shards_dir, out["pipeline_source"] = out["convert_oxford_slice"]["shards_dir"], "oxford slice"
    else:
      csv_big = synthetic.write_dataset(
        str(tmp / "big"), num_breeds=12, images_per_breed=50, size=384, seed=1, workers=cores
      )
      shards_dir = convert_source(f"csv:{csv_big}", tmp / "c3", 0)["shards_dir"]
      out["pipeline_source"] = "synthetic 384 px"
    images = encoded_images(shards_dir)
    for size in (128, 256):
      bound = plain_loop(images, size, args.repeats, cores)
      ours = tf_data(shards_dir, len(images), size, args.repeats)
      out[f"pipeline_{size}px"] = {
        "tf_data_images_per_s": round(ours, 1),
        "plain_loop_images_per_s": round(bound, 1),
        "ratio": round(ours / bound, 3),
      }
  for key in ("convert_synthetic_128px", "convert_oxford_slice"):
    out.get(key, {}).pop("shards_dir", None)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  main()
