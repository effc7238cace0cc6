"""DBPN x4 inference on this machine: the tfpets Keras network against the official PyTorch code.

Side by side in one run (each side in a fresh process, 2 threads):

  keras     `tfpets.superres.upscale.Upscaler` on the D-DBPN x4 network (`dbpn.build_dbpn`), whole
            images: one `tf.function` call per image and the clip to [0, 1]
  official  official_pytorch_dbpn.py: alterzero/DBPN-Pytorch `dbpn.Net` as eval.py builds it
            (`--model_type DBPN`), `model(input)` under no_grad and the clamp, run by
            `--official-python` on the user's checkout `--official-repo` (not shipped with tfpets)

on LR inputs of 64x64 (Set5-like) and 128x185 (a Stanford Cars photo shrunk to a short side of 128,
GrabAI's small-image protocol), batch 1 as eval.py runs. Each figure: `--warmups` untimed calls,
then calls for at least `--seconds` (at least 3); images/s = 1 / median call time. Ratio = tfpets
images/s / official images/s (> 1: tfpets is faster), per round and the median over `--rounds`
(rounds alternate which side runs first).

With the official side, the official process also saves its randomly initialised network's state
dict in both of torch.save's formats and its output for one input; the tfpets side converts both
files with `tfpets.superres.convert` and reports the largest difference from the official output
(`parity_max_abs_diff`), so the timed networks are the same network.

Memory: peak memory of one 128x185 image upscaled whole against tiled within a budget
(`--memory-mb`: the `Upscaler` picks the tile side and how many tiles share a call; 16 px
overlap), each in a fresh process: TensorFlow's allocator peak (`tf.config.experimental.get_memory_info`,
BFC allocator) and the growth of the process's peak RSS, with the seconds per image and the largest
difference between the tiled and whole outputs.

  python benchmarks/bench_superres.py [--official-repo PATH --official-python PYTHON]
      [--sizes 64x64,128x185] [--seconds 10] [--warmups 1] [--rounds 1] [--memory-mb 256]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
from typing import Any

from bench_gan_networks import ALLOCATOR_ENVS, NO_MMAP_ENV, _run_json
from bench_gan_training import _round
from bench_generate import time_calls

MEMORY_SIZE = (128, 185)


def _sizes(text: str) -> list[tuple[int, int]]:
  return [tuple(int(v) for v in size.split("x")) for size in text.split(",")]


def _size_key(size) -> str:
  return f"{size[0]}x{size[1]}"


# -- tfpets workers (each in a fresh process) -----------------------------------------------------


def _parity(reference_dir: str) -> dict[str, str]:
  import numpy as np  # pylint: disable=g-import-not-at-top

  from tfpets.superres import convert  # pylint: disable=g-import-not-at-top

  image = np.load(os.path.join(reference_dir, "input.npy"))
  expected = np.load(os.path.join(reference_dir, "output.npy"))
  out = {}
  for kind in ("zip", "legacy"):
    path = os.path.join(reference_dir, f"state_dict_{kind}.pth")
    model = convert.convert_state_dict(convert.read_state_dict(path), source=path)
    out[kind] = f"{np.abs(model(image).numpy() - expected).max():.2e}"  # a string: not rounded
  return out


def _speed_worker(args: argparse.Namespace) -> dict[str, Any]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from tfpets.superres import dbpn, upscale  # pylint: disable=g-import-not-at-top

  load_before = os.getloadavg()[0]
  tf.keras.utils.set_random_seed(0)
  model = dbpn.build_dbpn("dbpn", 4)
  upscaler = upscale.Upscaler(model, memory_mb=1 << 20)  # whole images, as the official eval.py
  figures = {}
  for size in args.sizes:
    image = np.random.default_rng(0).random((*size, 3), dtype=np.float32)
    figures[_size_key(size)] = time_calls(lambda: upscaler(image), 1, args.seconds, args.warmups)
  report = {
    "figures": figures,
    "params": int(model.count_params()),
    "tensorflow": tf.__version__,
    "load_average_1min": [load_before, os.getloadavg()[0]],
  }
  if args.reference_dir:
    report["parity_max_abs_diff"] = _parity(args.reference_dir)
  return report


def _memory_worker(args: argparse.Namespace) -> dict[str, Any]:
  import time  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from tfpets.superres import dbpn, upscale  # pylint: disable=g-import-not-at-top

  tf.keras.utils.set_random_seed(0)
  model = dbpn.build_dbpn("dbpn", 4)
  image = np.random.default_rng(0).random((*MEMORY_SIZE, 3), dtype=np.float32)
  whole = upscale.Upscaler(model, memory_mb=1 << 20)
  tiled = upscale.Upscaler(model, memory_mb=args.memory_mb) if args.memory_mb else None
  whole(image[:8, :8])  # Builds and traces on a tiny input, outside the measured peak.
  tf.config.experimental.reset_memory_stats("CPU:0")
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  output = (tiled or whole)(image)
  seconds = time.perf_counter() - start
  report = {
    "tf_peak_mib": tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20,
    "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
    "seconds": seconds,
  }
  if tiled:
    report["tile"] = tiled.tile_size(*MEMORY_SIZE)
    report["max_abs_diff_vs_whole"] = f"{np.abs(output - whole(image)).max():.2e}"
  return report


# -- the side-by-side run -------------------------------------------------------------------------


def _worker_args(args: argparse.Namespace) -> list[str]:
  sizes = ",".join(_size_key(s) for s in args.sizes)
  return ["--sizes", sizes, "--seconds", str(args.seconds), "--warmups", str(args.warmups)]


def _spawn_keras(args: argparse.Namespace, reference_dir: str | None) -> dict[str, Any]:
  command = [sys.executable, os.path.abspath(__file__), "--worker", "speed", *_worker_args(args)]
  if reference_dir:
    command += ["--reference-dir", reference_dir]
  return _run_json(command, ALLOCATOR_ENVS["tf_bfc"])


def _spawn_official(args: argparse.Namespace, save_dir: str | None) -> dict[str, Any]:
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_pytorch_dbpn.py")
  command = [args.official_python, script, "--official-repo", args.official_repo]
  command += _worker_args(args) + (["--save", save_dir] if save_dir else [])
  return _run_json(command, NO_MMAP_ENV)


def _spawn_memory(memory_mb: int) -> dict[str, Any]:
  command = [sys.executable, os.path.abspath(__file__), "--worker", "memory"]
  command += ["--memory-mb", str(memory_mb)]
  return _run_json(command, ALLOCATOR_ENVS["tf_bfc"])


def _speed(args: argparse.Namespace, reference_dir: str) -> dict[str, Any]:
  keras_runs, official_runs = [], []
  for round_index in range(args.rounds):
    official_first = round_index % 2 == 1
    if args.official_repo and official_first:
      official_runs.append(_spawn_official(args, None))
    if args.official_repo and round_index == 0:
      official_runs.append(_spawn_official(args, reference_dir))
    keras_runs.append(_spawn_keras(args, reference_dir if args.official_repo else None))
  result: dict[str, Any] = {"keras": {}, "official": {}, "ratio": {}}
  for size in map(_size_key, args.sizes):
    keras_ips = [r["figures"][size]["img_per_s"] for r in keras_runs]
    result["keras"][size] = {"img_per_s": statistics.median(keras_ips), "rounds": keras_ips}
    if official_runs:
      theirs = [r["figures"][size]["img_per_s"] for r in official_runs]
      result["official"][size] = {"img_per_s": statistics.median(theirs), "rounds": theirs}
      result["ratio"][size] = {
        "median": statistics.median(keras_ips) / statistics.median(theirs),
        "rounds": [round(a / b, 3) for a, b in zip(keras_ips, theirs)],
      }
  result["params"] = {"keras": keras_runs[0]["params"]}
  if official_runs:
    result["params"]["official"] = official_runs[0]["params"]
    result["official_torch"] = official_runs[0]["torch"]
    result["parity_max_abs_diff"] = keras_runs[0]["parity_max_abs_diff"]
  result["tensorflow"] = keras_runs[0]["tensorflow"]
  return result


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="64x64,128x185", type=_sizes, help="LR HxW list")
  parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per figure")
  parser.add_argument("--warmups", type=int, default=1, help="untimed calls first")
  parser.add_argument("--rounds", type=int, default=1, help="measure each side N times")
  parser.add_argument(
    "--memory-mb", type=int, default=256, help="budget of the tiled run (0: whole only)"
  )
  parser.add_argument("--official-repo", help="checkout of alterzero/DBPN-Pytorch")
  parser.add_argument(
    "--official-python", default=sys.executable, help="Python with PyTorch for --official-repo"
  )
  parser.add_argument("--worker", choices=("speed", "memory"), help=argparse.SUPPRESS)
  parser.add_argument("--reference-dir", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rounds < 1 or args.warmups < 0 or args.seconds <= 0 or args.memory_mb < 0:
    parser.error(
      "--rounds must be at least 1, --warmups, --memory-mb at least 0, --seconds above 0"
    )
  return args


def main() -> None:
  args = _parse_args()
  if args.worker == "speed":
    print(json.dumps(_speed_worker(args)))
    return
  if args.worker == "memory":
    print(json.dumps(_memory_worker(args)))
    return
  report: dict[str, Any] = {
    "network": "D-DBPN (dbpn.py, T = 7), x4, float32, batch 1, random weights",
    "ratio": "tfpets images/s / official images/s (> 1: tfpets is faster)",
    "seconds": args.seconds,
    "warmups": args.warmups,
    "rounds": args.rounds,
    "load_average_before": os.getloadavg(),
  }
  with tempfile.TemporaryDirectory(prefix="tfpets_bench_superres_") as reference_dir:
    report["speed"] = _speed(args, reference_dir)
  report["memory"] = {
    "size": _size_key(MEMORY_SIZE),
    "whole": _spawn_memory(0),
    f"tiled_{args.memory_mb}mib": _spawn_memory(args.memory_mb),
  }
  report["load_average_after"] = os.getloadavg()
  print(json.dumps(_round(report), indent=2))


if __name__ == "__main__":
  main()
