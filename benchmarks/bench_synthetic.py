"""Throughput of the embedded synthetic pets: render + JPEG-encode + write, one process, one core.

Prints JSON: images per second at 128 px and 256 px, measured with `write_dataset(workers=1)` into
a temporary folder (OpenCV's own thread pool limited to 1 thread so that one core is measured):
the best and the median batch by wall clock, and the best by process CPU time.

  python benchmarks/bench_synthetic.py [--batches 10] [--per_breed 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import cv2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tfpets.data import (
  decode,  # noqa: E402
  synthetic,  # noqa: E402
)


def measure(size: int, batches: int, per_breed: int) -> dict:
  """Rates over `batches` runs of write_dataset (12 breeds x `per_breed` images each).

  The machine is shared, so the best batch (least disturbed by other processes) is the figure
  for one core; the median is reported too.
  """
  num_breeds = 12
  count = num_breeds * per_breed
  walls, cpus = [], []
  for batch in range(batches):
    with tempfile.TemporaryDirectory() as out_dir:
      wall, cpu = time.perf_counter(), time.process_time()
      synthetic.write_dataset(
        out_dir, num_breeds=num_breeds, images_per_breed=per_breed, size=size, seed=batch, workers=1
      )
      walls.append(time.perf_counter() - wall)
      cpus.append(time.process_time() - cpu)
  return {
    "best": count / min(walls),
    "median": count / statistics.median(walls),
    "cpu_best": count / min(cpus),
    "images": count * batches,
  }


def render_encode_cpu_rate(size: int, images: int) -> float:
  """Images per CPU second for render + JPEG encode alone, without touching the file system
  (creating files is slow on some virtual disks and shows up as wall time)."""
  cpu = time.process_time()
  for index in range(images):
    decode.encode_jpeg(synthetic.render_pet(0, index, index % 12, size, 12).image)
  return images / (time.process_time() - cpu)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", type=int, default=10)
  parser.add_argument("--per_breed", type=int, default=10, help="images per breed per batch")
  args = parser.parse_args()
  cv2.setNumThreads(1)
  synthetic.render_pet(0, 0, 0)  # warm-up: imports, caches
  result = {}
  for size in (128, 256):
    stats = measure(size, args.batches, args.per_breed)
    result[f"images_per_s_{size}px_1core"] = round(stats["best"], 1)
    result[f"median_images_per_s_{size}px"] = round(stats["median"], 1)
    result[f"cpu_images_per_s_{size}px"] = round(stats["cpu_best"], 1)
    result[f"cpu_render_encode_only_images_per_s_{size}px"] = round(
      render_encode_cpu_rate(size, 300), 1
    )
  result["images_per_size"] = stats["images"]
  result["load_average_1min"] = round(os.getloadavg()[0], 2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
