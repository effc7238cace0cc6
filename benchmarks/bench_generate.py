"""StyleGAN2-ADA generator images/s on this machine: tfpets backends against the official code.

Times what the official `generate.py` (NVlabs/stylegan2-ada-pytorch) does for each image, latents
in, uint8 pixels out: `G(z, label, truncation_psi=1, noise_mode='const')` and the conversion
clip(x * 127.5 + 128, 0, 255) to uint8, at 32, 64 and 128 px, batch 8 and batch 1 (generate.py
renders one seed per call), `auto` preset as the official `train.py --cfg=auto` resolves it, in
float32 (`num_fp16_res=0`, conv_clamp 256). Latents are drawn before the timing, as generate.py
draws them (`np.random.RandomState(seed).randn(batch, z_dim)`). Both sides start from their own
random weights: the work of a call does not depend on the weights' values, so its speed does not
either.

Backends, each in a fresh process:

  keras        the tfpets Keras generator (`tfpets.gan.networks.Generator`) and
               `tfpets.gan.metrics.to_uint8` in one `tf.function`; tfpets.ops pick their kernels
               as in training (`impl='auto'`)
  saved_model  the SavedModel `tfpets.export.serving.export` writes for
               `tfpets.export.generator.serving_model`, loaded with `tf.saved_model.load`, its
               `from_latents` signature (uint8 images, and PNG files of them, which generate.py
               writes too but this benchmark does not time on the official side)
  saved_model_float  the same SavedModel's `from_latents_float` signature (float images, no
               conversion): what the uint8 conversion and PNG encoding of `from_latents` cost
  tflite       the same generator and conversion as a Keras functional model converted by
               `tfpets.export.tflite.convert_keras`, run by `tfpets.export.tflite.TFLiteRunner`;
               when the converter rejects it, the error message is recorded instead
  official     official_pytorch_generate.py, run by `--official-python` with the checkout at
               `--official-repo` (not shipped with tfpets), under the no-mmap glibc malloc
               (MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=68719476736), PyTorch's
               best on CPU; 2 threads

tfpets processes run under TensorFlow's BFC pool (`--tfpets-allocator`, default what
`python -m tfpets.launch` sets). Each figure: `--warmups` untimed calls, then calls for at least
`--seconds` (and at least 3 calls); images/s = batch / median call time, and `img_per_s_from_cpu`
= batch / (mean process CPU seconds per call / 2), what the backend would reach with both cores to
itself (robust to other processes sharing the machine for TensorFlow, not for PyTorch, whose
OpenMP threads wait for a descheduled partner by spinning, which counts as CPU time);
`cpu_over_wall` says how many cores a call keeps busy. `--rounds N` measures every backend N times
per resolution, every other round in the mirrored order (official first, then the tfpets backends
in reverse), and reports medians and every round's ratio. Ratio = official seconds per image /
tfpets seconds per image (= tfpets images/s / official images/s; > 1: tfpets is faster), as in
bench_gan_training.py.

  python benchmarks/bench_generate.py [--official-repo PATH --official-python PYTHON]
      [--resolutions 32,64,128] [--seconds 5] [--warmups 2] [--rounds 1]
      [--backends keras,saved_model,tflite]

Without --official-repo only tfpets is measured. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from bench_gan_networks import ALLOCATOR_ENVS, NO_MMAP_ENV, _run_json
from bench_gan_training import _round

BATCHES = (8, 1)
BACKENDS = ("keras", "saved_model", "tflite")
# Figures each backend process reports (saved_model also times its float signature).
BACKEND_FIGURES = {
  "keras": ("keras",),
  "saved_model": ("saved_model", "saved_model_float"),
  "tflite": ("tflite",),
}
FIGURE_KEYS = ("img_per_s", "img_per_s_from_cpu", "ms_per_call", "cpu_over_wall")
THREADS = 2
MIN_CALLS = 3


# -- timing and latents, shared with official_pytorch_generate.py (standard library only) -------


def time_calls(call: Callable[[], Any], batch: int, seconds: float, warmups: int) -> dict:
  """`warmups` untimed calls, then calls for at least `seconds` (at least MIN_CALLS calls)."""
  for _ in range(warmups):
    call()
  walls: list[float] = []
  cpu_start, start = time.process_time(), time.perf_counter()
  while len(walls) < MIN_CALLS or time.perf_counter() - start < seconds:
    call_start = time.perf_counter()
    call()
    walls.append(time.perf_counter() - call_start)
  cpu = (time.process_time() - cpu_start) / len(walls)
  wall = statistics.median(walls)
  return {
    "img_per_s": batch / wall,
    "img_per_s_from_cpu": batch / (cpu / THREADS),
    "ms_per_call": wall * 1000,
    "cpu_over_wall": cpu / (sum(walls) / len(walls)),
    "calls": len(walls),
  }


def generate_py_latents(batch: int, z_dim: int, seed: int = 0) -> Any:
  """float64 [batch, z_dim], as generate.py draws a seed's z (np.random.RandomState(seed))."""
  import numpy as np  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  return np.random.RandomState(seed).randn(batch, z_dim)


# -- tfpets worker (runs in a fresh process) -----------------------------------------------------


def _generator(resolution: int) -> Any:
  """A tfpets generator with random weights, `auto` preset, float32."""
  from tfpets.gan import networks, presets  # pylint: disable=g-import-not-at-top

  config = presets.network_config("auto", resolution, num_fp16_res=0, conv_clamp=256)
  return networks.Generator(config, name="G_ema")


def _uint8_images(generator: Any, z: Any) -> Any:
  """What generate.py computes from z: images at psi 1 with constant noise, as uint8."""
  from tfpets.gan import metrics  # pylint: disable=g-import-not-at-top

  images = generator(z, training=False, truncation_psi=1.0, noise_mode="const", force_fp32=True)
  return metrics.to_uint8(images)


def _keras_backend(generator: Any, workdir: str) -> dict[str, Callable[[Any], Any]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  del workdir
  images = tf.function(lambda z: _uint8_images(generator, z))
  return {"keras": lambda z: images(tf.constant(z)).numpy()}


def _saved_model_backend(generator: Any, workdir: str) -> dict[str, Callable[[Any], Any]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from tfpets.export import generator as export_generator  # pylint: disable=g-import-not-at-top
  from tfpets.export import serving  # pylint: disable=g-import-not-at-top

  model = export_generator.serving_model(generator, "random weights")
  # verify=False: the TF1-session warmup replay checks correctness, not speed.
  result = serving.export(model, workdir, "generator", verify=False)
  loaded = serving.load_quietly(result.path)

  def signature_call(name: str) -> Callable[[Any], Any]:
    function = loaded.signatures[name]

    def call(z: Any) -> Any:
      psi = tf.ones([z.shape[0]], tf.float32)
      return {k: v.numpy() for k, v in function(z=tf.constant(z), truncation_psi=psi).items()}

    return call

  return {
    "saved_model": signature_call(export_generator.LATENTS_SIGNATURE),
    "saved_model_float": signature_call(export_generator.FLOAT_SIGNATURE),
  }


def _const_noise_model(generator: Any) -> Any:
  """A Keras functional model z -> uint8 images (`_uint8_images`), for the TFLite converter."""
  import keras  # pylint: disable=g-import-not-at-top

  class Uint8Images(keras.layers.Layer):
    def __init__(self, network: Any, **kwargs: Any):
      super().__init__(**kwargs)
      self.network = network

    def call(self, z: Any) -> Any:
      return _uint8_images(self.network, z)

  z = keras.Input(shape=(generator.config.z_dim,), name="z")
  return keras.Model(z, Uint8Images(generator, name="images")(z))


def _tflite_backend(generator: Any, workdir: str) -> dict[str, Callable[[Any], Any]]:
  from tfpets.export import tflite  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, "generator.tflite")
  with open(path, "wb") as f:
    f.write(tflite.convert_keras(_const_noise_model(generator)))
  runner = tflite.TFLiteRunner(path)
  signature = tflite.interpreter(path).get_signature_list()
  (input_name,) = next(iter(signature.values()))["inputs"]
  return {"tflite": lambda z: runner(**{input_name: z})}


BACKEND_BUILDERS = {
  "keras": _keras_backend,
  "saved_model": _saved_model_backend,
  "tflite": _tflite_backend,
}


def _tfpets_worker(args: argparse.Namespace) -> dict[str, Any]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  load_before = os.getloadavg()[0]
  generator = _generator(args.resolution)
  z_dim = generator.config.z_dim
  generator(tf.zeros([1, z_dim]), training=False, noise_mode="const")  # Creates the weights.
  report: dict[str, Any] = {"figures": {}}
  with tempfile.TemporaryDirectory(prefix="tfpets_bench_generate_") as workdir:
    setup_start = time.perf_counter()
    try:
      calls = BACKEND_BUILDERS[args.backend](generator, workdir)
    except Exception as e:  # pylint: disable=broad-except
      # A converter's rejection is a result of this benchmark, not a failure of it.
      message = f"{type(e).__name__}: {e}"
      return {"error": message[:2000], "load_average_1min": [load_before, os.getloadavg()[0]]}
    report["setup_s"] = time.perf_counter() - setup_start
    for name, call in calls.items():
      report["figures"][name] = {}
      for batch in BATCHES:
        z = generate_py_latents(batch, z_dim).astype(np.float32)
        figures = time_calls(lambda: call(z), batch, args.seconds, args.warmups)
        report["figures"][name][str(batch)] = figures
  report["params"] = int(sum(w.shape.num_elements() for w in generator.trainable_weights))
  report["tensorflow"] = tf.__version__
  report["load_average_1min"] = [load_before, os.getloadavg()[0]]
  return report


# -- the side-by-side run -------------------------------------------------------------------------


def _timing_args(args: argparse.Namespace, resolution: int) -> list[str]:
  values = dict(resolution=resolution, seconds=args.seconds, warmups=args.warmups)
  return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def _spawn_tfpets(args: argparse.Namespace, resolution: int, backend: str) -> dict[str, Any]:
  command = [sys.executable, os.path.abspath(__file__), "--worker", "--backend", backend]
  return _run_json(command + _timing_args(args, resolution), ALLOCATOR_ENVS[args.tfpets_allocator])


def _spawn_official(args: argparse.Namespace, resolution: int) -> dict[str, Any]:
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_pytorch_generate.py")
  command = [args.official_python, script, "--official-repo", args.official_repo]
  return _run_json(command + _timing_args(args, resolution), NO_MMAP_ENV)


def _median_figures(runs: list[dict[str, Any]], name: str) -> dict[str, dict[str, float]]:
  """Per batch, the median over rounds of each figure of `name`."""
  return {
    batch: {
      key: statistics.median(r["figures"][name][batch][key] for r in runs) for key in FIGURE_KEYS
    }
    for batch in runs[0]["figures"][name]
  }


def _ratios(ours: list[dict], theirs: list[dict], name: str) -> dict[str, dict[str, Any]]:
  """Per batch: official s/image / tfpets s/image, of the medians, of each round, from CPU."""
  ours_median, theirs_median = _median_figures(ours, name), _median_figures(theirs, "official")
  ratios = {}
  for batch, figures in ours_median.items():
    official = theirs_median[batch]
    ratios[batch] = {
      "ratio": figures["img_per_s"] / official["img_per_s"],
      "ratio_rounds": [
        round(
          a["figures"][name][batch]["img_per_s"] / b["figures"]["official"][batch]["img_per_s"], 3
        )
        for a, b in zip(ours, theirs)
      ],
      "ratio_from_cpu": figures["img_per_s_from_cpu"] / official["img_per_s_from_cpu"],
    }
  return ratios


def _measure_resolution(args: argparse.Namespace, resolution: int) -> dict[str, Any]:
  runs: dict[str, list[dict]] = {backend: [] for backend in args.backends}
  official: list[dict] = []
  for round_index in range(args.rounds):
    official_first = round_index % 2 == 1
    if args.official_repo and official_first:
      official.append(_spawn_official(args, resolution))
    for backend in reversed(args.backends) if official_first else args.backends:
      if not any("error" in r for r in runs[backend]):  # A rejected conversion stays rejected.
        runs[backend].append(_spawn_tfpets(args, resolution, backend))
    if args.official_repo and not official_first:
      official.append(_spawn_official(args, resolution))
  result: dict[str, Any] = {}
  for backend, backend_runs in runs.items():
    failed = next((r for r in backend_runs if "error" in r), None)
    if failed:
      result[backend] = {"error": failed["error"]}
      continue
    for name in BACKEND_FIGURES[backend]:
      result[name] = _median_figures(backend_runs, name)
      if official:
        for batch, ratios in _ratios(backend_runs, official, name).items():
          result[name][batch].update(ratios)
    result[f"{backend}_setup_s"] = [round(r["setup_s"], 1) for r in backend_runs]
  if official:
    result["official"] = _median_figures(official, "official")
    result["official_params"] = official[0]["params"]
    result["official_torch"] = official[0]["torch"]
  successful = [r[0] for r in runs.values() if "params" in r[0]]
  if successful:
    result["tfpets_params"] = successful[0]["params"]
    result["tensorflow"] = successful[0]["tensorflow"]
  result["load_average_1min_rounds"] = {
    **{backend: [r["load_average_1min"] for r in rs] for backend, rs in runs.items()},
    "official": [r["load_average_1min"] for r in official],
  }
  return _round(result)


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--resolutions", default="32,64,128", type=lambda s: [int(v) for v in s.split(",")]
  )
  parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per figure")
  parser.add_argument("--warmups", type=int, default=2, help="untimed calls first")
  parser.add_argument(
    "--rounds", type=int, default=1, help="measure each side N times, alternating; report medians"
  )
  parser.add_argument(
    "--backends",
    default=",".join(BACKENDS),
    type=lambda s: s.split(","),
    help="tfpets backends to measure, of " + ",".join(BACKENDS),
  )
  parser.add_argument("--official-repo", help="checkout of NVlabs/stylegan2-ada-pytorch")
  parser.add_argument(
    "--official-python", default=sys.executable, help="Python with PyTorch for --official-repo"
  )
  parser.add_argument(
    "--tfpets-allocator",
    default="tf_bfc",
    choices=sorted(ALLOCATOR_ENVS),
    help="allocator setting of the tfpets side (tf_bfc: what tfpets.launch sets)",
  )
  parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--backend", choices=BACKENDS, help=argparse.SUPPRESS)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rounds < 1 or args.warmups < 0 or args.seconds <= 0:
    parser.error("--rounds must be at least 1, --warmups at least 0, --seconds above 0")
  unknown = sorted(set(args.backends) - set(BACKENDS))
  if unknown:
    parser.error(f"--backends: unknown {unknown}; expected some of {', '.join(BACKENDS)}")
  return args


def main() -> None:
  args = _parse_args()
  if args.worker:
    print(json.dumps(_tfpets_worker(args)))
    return
  report: dict[str, Any] = {
    "preset": "auto",
    "dtype": "float32",
    "noise_mode": "const",
    "truncation_psi": 1,
    "batches": list(BATCHES),
    "seconds": args.seconds,
    "warmups": args.warmups,
    "rounds": args.rounds,
    "weights": "random on each side, not the same: a call's work, so its speed, does not "
    "depend on the weights' values",
    "ratio": "official seconds per image / tfpets seconds per image (> 1: tfpets is faster)",
    "allocators": {"tfpets": args.tfpets_allocator, "official": "no_mmap_malloc"},
    "load_average_before": os.getloadavg(),
    "resolutions": {},
  }
  for resolution in args.resolutions:
    report["resolutions"][str(resolution)] = _measure_resolution(args, resolution)
  report["load_average_after"] = os.getloadavg()
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
