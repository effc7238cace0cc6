"""StyleGAN2-ADA G and D throughput on this machine, against the official PyTorch figures.

Measures images/s of the generator forward, generator forward+backward and discriminator
forward+backward (gradients with respect to the network's trainable weights, each step one
`tf.function`) at 32, 64 and 128 px, batch 8, float32 (`num_fp16_res=0`), conv_clamp 256, `auto`
preset, median of 5 timed steps after 2 warm-ups. The whole measurement runs once per
allocator setting, each in a fresh process: glibc's default malloc, `MALLOC_MMAP_THRESHOLD_=2147483647
MALLOC_TRIM_THRESHOLD_=68719476736` (no-mmap malloc), and TensorFlow's BFC pool on the CPU
(`TF_CPU_ALLOCATOR_USE_BFC=true`, what `python -m tfpets.launch` sets). Ratios are tfpets / official
(official = `OFFICIAL` below, benchmarks/RESULTS.md section 3; >= 1.0 means tfpets is as fast or
faster).
Besides wall-clock images/s, each figure has `img_per_s_from_cpu` = batch / (process CPU seconds
/ 2): the throughput with both cores to itself, which stays meaningful when other processes share
the machine (the load average before and after is recorded).

Side by side: with `--official-repo` (a checkout of NVlabs/stylegan2-ada-pytorch) and
`--official-python` (a Python with PyTorch), the same figures are measured for the official networks
in the same run (official_pytorch_networks.py; under `tf_bfc` PyTorch gets the no-mmap malloc, its
best), and every figure gets `ratio_to_official_measured`. `G_plus_D_fwd_bwd` is one G plus one D
forward+backward: batch / (G step seconds + D step seconds). The speed of this 2-core machine
drifts by 10-30 % over minutes, so `--rounds N` measures both sides N times, alternating which
goes first, and reports the median of each figure over the rounds plus every round's own ratio
(`ratio_to_official_measured_rounds`).

  python benchmarks/bench_gan_networks.py [--resolutions 32,64,128] [--repeats 5] [--xla]
      [--allocators default_malloc,no_mmap_malloc,tf_bfc]
      [--official-repo PATH --official-python PYTHON [--rounds N]]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# Official PyTorch, 2-core x86-64, batch 8, fp32, no-mmap malloc, img/s: the figures recorded in
# benchmarks/RESULTS.md, section 3, for runs without --official-repo.
OFFICIAL = {
  32: {"G_fwd": 26.8, "G_fwd_bwd": 10.6, "D_fwd_bwd": 14.7},
  64: {"G_fwd": 16.3, "G_fwd_bwd": 6.17, "D_fwd_bwd": 7.68},
  128: {"G_fwd": 10.3, "G_fwd_bwd": 4.47, "D_fwd_bwd": 5.14},
}
NO_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "2147483647", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
ALLOCATOR_ENVS = {
  "default_malloc": {},
  "no_mmap_malloc": NO_MMAP_ENV,
  "tf_bfc": {"TF_CPU_ALLOCATOR_USE_BFC": "true"},
}
BATCH = 8


def time_step(step, repeats: int, warmups: int = 2) -> tuple[float, float]:
  """(median wall seconds, mean process CPU seconds) per step."""
  for _ in range(warmups):
    step()
  times = []
  cpu_start = time.process_time()
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return statistics.median(times), (time.process_time() - cpu_start) / repeats


def measure(resolution: int, repeats: int, xla: bool) -> dict[str, dict[str, float]]:
  """G forward, G forward+backward and D forward+backward at one resolution.

  `img_per_s` is wall-clock; `img_per_s_from_cpu` is batch / (CPU seconds / 2 cores), what the
  step would reach with both cores to itself and perfect 2-thread scaling. The second figure is
  robust to other processes sharing the machine, the first is not.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from tfpets.gan import networks, presets  # pylint: disable=g-import-not-at-top

  config = presets.network_config("auto", resolution, num_fp16_res=0, conv_clamp=256)
  generator = networks.Generator(config)
  discriminator = networks.Discriminator(config)
  z = tf.random.normal([BATCH, config.z_dim])
  images = tf.random.uniform([BATCH, resolution, resolution, 3], -1, 1)

  @tf.function(jit_compile=xla)
  def g_forward():
    return generator(z, training=True)

  @tf.function(jit_compile=xla)
  def g_forward_backward():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(generator(z, training=True))
    return tape.gradient(loss, generator.trainable_weights)

  @tf.function(jit_compile=xla)
  def d_forward_backward():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(discriminator(images, training=True))
    return tape.gradient(loss, discriminator.trainable_weights)

  def run(fn):
    return lambda: tf.nest.map_structure(lambda t: t.numpy(), fn())

  results = {}
  for name, fn in (
    ("G_fwd", g_forward),
    ("G_fwd_bwd", g_forward_backward),
    ("D_fwd_bwd", d_forward_backward),
  ):
    wall, cpu = time_step(run(fn), repeats)
    results[name] = {
      "img_per_s": BATCH / wall,
      "img_per_s_from_cpu": BATCH / (cpu / 2),
      "cpu_s_per_step": cpu,
    }
  return results


def _child(args: argparse.Namespace) -> None:
  results = {str(res): measure(res, args.repeats, args.xla) for res in args.resolutions}
  print(json.dumps(results))


def _run_json(command: list[str], extra_env: dict[str, str]) -> dict:
  """Runs `command` with only `extra_env`'s allocator settings; returns its last JSON line."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra_env)
  for key in (*NO_MMAP_ENV, "TF_CPU_ALLOCATOR_USE_BFC"):
    if key not in extra_env:
      env.pop(key, None)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run(command, env=env, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _spawn(args: argparse.Namespace, extra_env: dict[str, str]) -> dict:
  command = [
    sys.executable,
    os.path.abspath(__file__),
    "--child",
    "--resolutions",
    ",".join(map(str, args.resolutions)),
    "--repeats",
    str(args.repeats),
  ] + (["--xla"] if args.xla else [])
  return _run_json(command, extra_env)


def _spawn_official(args: argparse.Namespace, label: str) -> dict:
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_pytorch_networks.py")
  command = [
    args.official_python,
    script,
    "--repo",
    args.official_repo,
    "--resolutions",
    ",".join(map(str, args.resolutions)),
    "--repeats",
    str(args.repeats),
  ]
  return _run_json(command, {} if label == "default_malloc" else NO_MMAP_ENV)


def _with_g_plus_d(figures: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
  """Adds one G plus one D forward+backward: batch / (G seconds + D seconds)."""
  g, d = figures["G_fwd_bwd"], figures["D_fwd_bwd"]
  combined = {
    key: 1.0 / (1.0 / g[key] + 1.0 / d[key]) for key in ("img_per_s", "img_per_s_from_cpu")
  }
  combined["cpu_s_per_step"] = g["cpu_s_per_step"] + d["cpu_s_per_step"]
  return {**figures, "G_plus_D_fwd_bwd": combined}


def _measure_rounds(args: argparse.Namespace, label: str) -> tuple[list[dict], list[dict]]:
  """`args.rounds` measurements of tfpets and (with --official-repo) the official code, the
  order alternating each round so that a drift of the machine's speed hits both sides alike."""
  ours, official = [], []
  for round_index in range(args.rounds):
    official_first = round_index % 2 == 1
    if args.official_repo and official_first:
      official.append(_spawn_official(args, label))
    ours.append(_spawn(args, ALLOCATOR_ENVS[label]))
    if args.official_repo and not official_first:
      official.append(_spawn_official(args, label))
  return ours, official


def _median_over_rounds(rounds: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
  """Per resolution and figure, the median over rounds of each value (resolution keys only)."""
  resolutions = [key for key in rounds[0] if key.isdigit()]
  return {
    res: {
      name: {
        key: statistics.median(r[res][name][key] for r in rounds) for key in rounds[0][res][name]
      }
      for name in rounds[0][res]
    }
    for res in resolutions
  }


def _figure(value: dict[str, float], spec: float, official: dict[str, float] | None) -> dict:
  figure = {
    "img_per_s": round(value["img_per_s"], 3),
    "img_per_s_from_cpu": round(value["img_per_s_from_cpu"], 3),
    "cpu_s_per_step": round(value["cpu_s_per_step"], 3),
    "ratio_to_official": round(value["img_per_s"] / spec, 3),
    "ratio_to_official_from_cpu": round(value["img_per_s_from_cpu"] / spec, 3),
  }
  if official is not None:
    figure["official_measured"] = round(official["img_per_s"], 3)
    figure["ratio_to_official_measured"] = round(value["img_per_s"] / official["img_per_s"], 3)
    figure["ratio_to_official_measured_from_cpu"] = round(
      value["img_per_s_from_cpu"] / official["img_per_s_from_cpu"], 3
    )
  return figure


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--resolutions", default="32,64,128", type=lambda s: [int(v) for v in s.split(",")]
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--xla", action="store_true", help="tf.function(jit_compile=True)")
  parser.add_argument(
    "--allocators",
    default=",".join(ALLOCATOR_ENVS),
    type=lambda s: s.split(","),
    help="subset of " + ",".join(ALLOCATOR_ENVS),
  )
  parser.add_argument(
    "--official-repo",
    help="checkout of NVlabs/stylegan2-ada-pytorch: measure the official networks side by side",
  )
  parser.add_argument(
    "--official-python", default=sys.executable, help="Python with PyTorch for --official-repo"
  )
  parser.add_argument(
    "--rounds",
    type=int,
    default=1,
    help="measure each side this many times, alternating; report medians",
  )
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rounds < 1:
    parser.error(f"--rounds must be at least 1, got {args.rounds}")
  if args.child:
    _child(args)
    return
  report = {
    "batch": BATCH,
    "preset": "auto",
    "dtype": "float32",
    "xla": args.xla,
    "official_reference": "OFFICIAL (benchmarks/RESULTS.md section 3); official_measured: "
    "the official code in this run",
    "load_average_before": os.getloadavg(),
    "runs": {},
  }
  for label in args.allocators:
    ours_rounds, official_rounds = _measure_rounds(args, label)
    measured = _median_over_rounds(ours_rounds)
    official = _median_over_rounds(official_rounds) if official_rounds else None
    run = {}
    for res, figures in measured.items():
      spec = dict(OFFICIAL[int(res)])
      spec["G_plus_D_fwd_bwd"] = 1.0 / (1.0 / spec["G_fwd_bwd"] + 1.0 / spec["D_fwd_bwd"])
      theirs = _with_g_plus_d(official[res]) if official else {}
      run[res] = {
        name: _figure(value, spec[name], theirs.get(name))
        for name, value in _with_g_plus_d(figures).items()
      }
      for ours, theirs_round in zip(ours_rounds, official_rounds):
        ours_res, theirs_res = _with_g_plus_d(ours[res]), _with_g_plus_d(theirs_round[res])
        for name, figure in run[res].items():
          figure.setdefault("ratio_to_official_measured_rounds", []).append(
            round(ours_res[name]["img_per_s"] / theirs_res[name]["img_per_s"], 3)
          )
    report["runs"][label] = run
    if official_rounds:
      report.setdefault("official_params", official_rounds[0]["params"])
      report["official_torch"] = official_rounds[0]["torch"]
  report["load_average_after"] = os.getloadavg()
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
