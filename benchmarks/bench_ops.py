"""Benchmarks tfpets' fused ops: custom C++ kernels against the reference path.

Prints (and optionally writes) JSON with, per op, shape, allocator setting and
implementation: forward and forward+backward milliseconds (min and median of
the timed calls after warm-up) and peak memory, plus ref/custom ratios. Each
figure times at least `--reps` calls and at least `--min-seconds` of them, as
`timeit`'s autorange does: 7 calls of a 1 ms case are over in 10 ms, within
one of this machine's swings, while its 128 px cases take 20-90 ms a call.
Each call is one `tf.function` call, so it includes TensorFlow's fixed cost of
a call (about 0.3 ms here), which decides the ratio at small shapes; `chain_fwd_bwd`
is therefore also measured: forward+backward per op inside one `tf.function` of
CHAIN serial calls (each call's input gradient is the next call's input, each
call has its own upstream gradient, and every output is returned so that no
part of the work is pruned), as the ops run inside a training step.

Implementations: `custom` (C++ op), `ref` (plain TF ops in a `tf.function`,
the path `impl='auto'` would otherwise take) and `xla` (the reference path
compiled with `jit_compile=True`, for information: custom ops cannot run
there).

Every (op, shape, impl, allocator) case runs in its own subprocess, so the
peak memory is that process's `ru_maxrss`: reported as the total and as the
growth caused by the case (`peak_rss_delta_mb`: high-water mark after the
runs minus before creating the inputs, so it includes x, b and the CHAIN
upstream gradients, which are the same for every implementation). `tf.config.experimental.
get_memory_info('CPU:0')` is not available with TF's default CPU allocator.

Allocator settings: `default` (glibc defaults), `nommap`
(MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=68719476736, the
official PyTorch code's best, benchmarks/RESULTS.md section 3) and `tf_bfc`
(TF_CPU_ALLOCATOR_USE_BFC=true: TensorFlow's own pooling allocator on CPU).
With glibc, every large op output is a fresh mapping that the kernel
zero-fills page by page; `nommap` only partly helps because TensorFlow
allocates from executor threads (non-main glibc arenas), whereas the BFC
pool reuses memory and removes the faults. Under `tf_bfc` the worker also
records TensorFlow's own peak (`tf_peak_mb`, from
`tf.config.experimental.get_memory_info`, which the default CPU allocator
does not support). `--allocators` picks a subset.

`--rounds N` measures every case N times, reversing the order of the
implementations every other round, since these machines' speed drifts by
10-30 % over minutes: each figure is then the median over the rounds
(`*_rounds` lists every round's), and each ratio comes with every round's
own ratio (`ref_over_custom_*_min_rounds`).

`--write-table` stores in `tfpets/ops/auto_table.json`, per op and case,
'custom' only if, under every allocator setting, custom's forward+backward
time summed over the measured shapes (min of the reps) is below ref's, else
'ref'; `impl='auto'` consults it. `--ops` measures only the named ops, and
then the table keeps its entries for the others. `--table-from REPORT.json` redoes only
that from a saved report.

Usage: python benchmarks/bench_ops.py [--out FILE] [--write-table]
         [--reps 7] [--min-seconds 0.5] [--quick] [--allocators default,nommap,tf_bfc]
         [--ops fused_bias_act,upfirdn2d] [--rounds 1]
       python benchmarks/bench_ops.py --table-from REPORT.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
STYLEGAN_SHAPES = ((8, 16, 16, 512), (8, 64, 64, 256), (8, 128, 128, 128))
CHAIN = 10
METRICS = ("fwd", "fwd_bwd", "chain_fwd_bwd")
NOMMAP = {"MALLOC_MMAP_THRESHOLD_": "2147483647", "MALLOC_TRIM_THRESHOLD_": "68719476736"}
ALLOCATORS = {
  "default": {},
  "nommap": NOMMAP,
  "tf_bfc": {"TF_CPU_ALLOCATOR_USE_BFC": "true"},
}
# (op, case, description); `case` is the key impl='auto' looks up.
MAIN_CASES = (
  ("fused_bias_act", "lrelu", "lrelu, bias"),
  ("fused_bias_act", "lrelu+clamp", "lrelu, bias, clamp 256"),
  ("upfirdn2d", "up", "upsample2d [1,3,3,1] x2"),
  ("upfirdn2d", "down", "downsample2d [1,3,3,1] /2"),
  ("upfirdn2d", "filter", "filter [1,3,3,1], pads 2 (conv2d_resample down)"),
)
OPS = ("fused_bias_act", "upfirdn2d")
OTHER_ACTS = (
  "linear",
  "linear+clamp",
  "relu",
  "tanh",
  "sigmoid",
  "elu",
  "selu",
  "softplus",
  "swish",
)


def _build_function(op: str, description: str, impl: str, shape):
  """Returns (forward, forward+backward, CHAIN x forward+backward) functions
  and their input."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  import tfpets.ops as tfops  # pylint: disable=g-import-not-at-top

  op_impl = "ref" if impl == "xla" else impl
  x = tf.random.normal(shape, seed=1)
  b = tf.random.normal(shape[-1:], seed=2)
  if op == "fused_bias_act":
    act = description.split(",")[0]
    clamp = 256.0 if "clamp" in description else None
    run = lambda x, b: tfops.fused_bias_act(  # pylint: disable=g-long-lambda
      x, b, act=act, clamp=clamp, impl=op_impl
    )
  elif description.startswith("upsample"):
    run = lambda x, b: tfops.upsample2d(x, impl=op_impl)
  elif description.startswith("downsample"):
    run = lambda x, b: tfops.downsample2d(x, impl=op_impl)
  else:
    f = tfops.setup_filter([1, 3, 3, 1])
    run = lambda x, b: tfops.upfirdn2d(x, f, pad=2, impl=op_impl)
  out_shape = tf.function(run, autograph=False).get_concrete_function(x, b).structured_outputs.shape
  dys = [tf.random.normal(out_shape, seed=3 + k) for k in range(CHAIN)]

  def forward_backward(x, b, dy=dys[0]):
    with tf.GradientTape() as tape:
      tape.watch([x, b])
      y = run(x, b)
    return y, tape.gradient(y, [x, b], output_gradients=dy)

  def chain(x, b):
    # Every call's output and bias gradient is returned: graph pruning
    # would otherwise drop the reference's forward pass and bias gradient,
    # which the next call does not consume, and time only part of its work.
    # Every call has its own upstream gradient, as every layer of a net
    # does: with one shared dy, Grappler computes the reference's
    # `dy * gain` once for the whole chain.
    outputs = []
    for dy in dys:
      y, (x, db) = forward_backward(x, b, dy)  # a serial chain, as in a net
      outputs += [y, db]
    return x, outputs

  jit = impl == "xla"
  return (
    tf.function(run, jit_compile=jit, autograph=False),
    tf.function(forward_backward, jit_compile=jit, autograph=False),
    tf.function(chain, jit_compile=jit, autograph=False),
    (x, b),
  )


def _time_calls(fn, args, reps: int, min_seconds: float = 0.0) -> list[float]:
  """Milliseconds of at least `reps` calls lasting at least `min_seconds`."""
  times = []
  while len(times) < reps or sum(times) < min_seconds * 1000:
    start = time.perf_counter()
    fn(*args)  # Eager calls of a tf.function on CPU return when done.
    times.append((time.perf_counter() - start) * 1000)
  return times


def worker(spec: dict) -> dict:
  """Runs one case in this process; returns its measurements."""
  sys.path.insert(0, str(REPO))
  import tfpets.ops as tfops  # pylint: disable=g-import-not-at-top

  if spec["impl"] == "custom" and not tfops.library_loaded():
    return {**spec, "error": "custom op library not loaded"}
  rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  *functions, args = _build_function(
    spec["op"], spec["description"], spec["impl"], tuple(spec["shape"])
  )
  result = dict(spec)
  tf_peak = _reset_tf_peak()
  for name, fn in zip(METRICS, functions):
    _time_calls(fn, args, spec["warmup"])
    times = _time_calls(fn, args, spec["reps"], spec["min_seconds"])
    result[f"{name}_calls"] = len(times)
    if name.startswith("chain"):
      times = [t / CHAIN for t in times]
    result[f"{name}_ms_min"] = round(min(times), 3)
    result[f"{name}_ms_median"] = round(statistics.median(times), 3)
  rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  result["peak_rss_mb"] = round(rss_after, 1)
  result["peak_rss_delta_mb"] = round(rss_after - rss_before, 1)
  if tf_peak:
    result["tf_peak_mb"] = round(tf_peak() / 2**20, 1)
  return result


def _reset_tf_peak():
  """A function returning TF's CPU peak bytes since now, or None."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.experimental.reset_memory_stats("CPU:0")
  except ValueError:  # Not supported by the default CPU allocator.
    return None
  return lambda: tf.config.experimental.get_memory_info("CPU:0")["peak"]


def run_worker(script: str, spec: dict, env_extra: dict[str, str]) -> dict:
  """Runs `script --worker SPEC` in a fresh process; returns the last JSON
  line it prints, or {'error': its stderr's tail}."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
  command = [sys.executable, script, "--worker", json.dumps(spec)]
  completed = subprocess.run(
    command, capture_output=True, text=True, env=env, check=False, timeout=1800
  )
  lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
  if completed.returncode != 0 or not lines:
    return {"error": completed.stderr[-2000:]}
  return json.loads(lines[-1])


def _run_case(spec: dict, env_extra: dict[str, str]) -> dict:
  result = run_worker(__file__, spec, env_extra)
  return {**spec, **result} if "error" in result else result


def _case_specs(args) -> list[dict]:
  shapes = STYLEGAN_SHAPES[:1] if args.quick else STYLEGAN_SHAPES
  specs = []
  for op, case, description in MAIN_CASES:
    if op not in args.ops:
      continue
    for shape in shapes:
      for impl in ("custom", "ref", "xla"):
        specs.append(
          {"op": op, "case": case, "description": description, "shape": list(shape), "impl": impl}
        )
  for case in OTHER_ACTS if "fused_bias_act" in args.ops else ():
    act, clamped = case.split("+")[0], "+" in case
    for impl in ("custom", "ref"):
      specs.append(
        {
          "op": "fused_bias_act",
          "case": case,
          "description": f"{act}, bias" + (", clamp 256" if clamped else ""),
          "shape": list(STYLEGAN_SHAPES[1]),
          "impl": impl,
        }
      )
  for spec in specs:
    spec.update(reps=args.reps, warmup=args.warmup, min_seconds=args.min_seconds)
  return specs


def _case_key(result: dict) -> tuple:
  return (result["description"], tuple(result["shape"]), result["allocator"], result["impl"])


def _merge_rounds(results: list[dict]) -> list[dict]:
  """One result per case: every measured figure is the median over the
  rounds, and `<figure>_rounds` lists the rounds' values."""
  by_case: dict[tuple, list[dict]] = {}
  for r in results:
    if "error" not in r:
      by_case.setdefault(_case_key(r), []).append(r)
  merged = [r for r in results if "error" in r]
  for rounds in by_case.values():
    case = {k: v for k, v in rounds[0].items() if k != "round"}
    case["rounds"] = len(rounds)
    for key, value in rounds[0].items():
      if key.endswith(("_ms_min", "_ms_median", "_mb")) and isinstance(value, (int, float)):
        values = [r[key] for r in rounds]
        case[key] = round(statistics.median(values), 3)
        if len(rounds) > 1:
          case[f"{key}_rounds"] = values
    merged.append(case)
  return merged


def _impl_groups(specs: list[dict]) -> list[list[dict]]:
  """Consecutive specs that differ only in `impl`."""
  groups: list[list[dict]] = []
  for spec in specs:
    if groups and all(spec[k] == groups[-1][0][k] for k in ("description", "shape")):
      groups[-1].append(spec)
    else:
      groups.append([spec])
  return groups


def _ratios(results: list[dict]) -> list[dict]:
  """ref/custom and xla/custom time ratios (> 1: custom is faster)."""
  index = {_case_key(r): r for r in results if "error" not in r}
  ratios = []
  for (description, shape, allocator, impl), custom in sorted(index.items()):
    if impl != "custom":
      continue
    row = {
      "op": custom["op"],
      "case": custom["case"],
      "description": description,
      "shape": list(shape),
      "allocator": allocator,
    }
    for other in ("ref", "xla"):
      base = index.get((description, shape, allocator, other))
      if base is None:
        continue
      for metric in METRICS:
        for stat in ("min", "median"):
          key = f"{metric}_ms_{stat}"
          row[f"{other}_over_custom_{metric}_{stat}"] = round(base[key] / custom[key], 2)
          if stat == "min" and f"{key}_rounds" in custom:
            row[f"{other}_over_custom_{metric}_{stat}_rounds"] = [
              round(b / c, 2) for b, c in zip(base[f"{key}_rounds"], custom[f"{key}_rounds"])
            ]
      row[f"{other}_over_custom_peak_rss_delta"] = round(
        base["peak_rss_delta_mb"] / max(custom["peak_rss_delta_mb"], 1.0), 2
      )
    ratios.append(row)
  return ratios


def _auto_table(results: list[dict]) -> dict:
  """Per op and case: 'custom' if, under every allocator, custom's total
  forward+backward time over the measured shapes (min of the reps, the
  statistic least disturbed by other load) is below ref's; else 'ref'."""
  totals: dict[tuple[str, str, str], dict[str, float]] = {}
  for r in results:
    if "error" in r or r["impl"] == "xla":
      continue
    key = (r["op"], r["case"], r["allocator"])
    per_impl = totals.setdefault(key, {})
    per_impl[r["impl"]] = per_impl.get(r["impl"], 0.0) + r["fwd_bwd_ms_min"]
  table: dict[str, dict[str, str]] = {}
  for (op, case, _), per_impl in sorted(totals.items()):
    faster = per_impl.get("custom", float("inf")) < per_impl.get("ref", float("inf"))
    entry = table.setdefault(op, {})
    entry[case] = "custom" if faster and entry.get(case, "custom") == "custom" else "ref"
  return {"cpu": table}


def _write_table(table: dict) -> None:
  """Replaces the entries of the ops in `table`, keeps the others."""
  path = REPO / "tfpets" / "ops" / "auto_table.json"
  merged = json.loads(path.read_text()) if path.exists() else {"cpu": {}}
  merged["cpu"].update(table["cpu"])
  path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--out", help="also write the JSON here")
  parser.add_argument(
    "--write-table", action="store_true", help="update tfpets/ops/auto_table.json"
  )
  parser.add_argument("--table-from", help="only rewrite auto_table.json from this report")
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument(
    "--min-seconds", type=float, default=0.5, help="time each figure over at least this long"
  )
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument(
    "--rounds",
    type=int,
    default=1,
    help="measure every case this many times, alternating "
    "the order of the implementations; report medians",
  )
  parser.add_argument("--quick", action="store_true", help="only the smallest shape")
  parser.add_argument(
    "--allocators",
    default=",".join(ALLOCATORS),
    help="comma-separated subset of " + ",".join(ALLOCATORS),
  )
  parser.add_argument(
    "--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS)
  )
  args = parser.parse_args()
  args.ops = args.ops.split(",")
  unknown = sorted(set(args.ops) - set(OPS))
  if unknown:
    parser.error(f"--ops: unknown op(s) {unknown}; choose from {OPS}")
  if args.rounds < 1:
    parser.error(f"--rounds must be at least 1, got {args.rounds}")
  if args.reps < 1 or args.min_seconds < 0:
    parser.error("--reps must be at least 1 and --min-seconds at least 0")
  if args.worker:
    print(json.dumps(worker(json.loads(args.worker))))
    return 0
  if args.table_from:
    report = json.loads(pathlib.Path(args.table_from).read_text())
    _write_table(_auto_table(report["results"]))
    return 0

  allocators = {name: ALLOCATORS[name] for name in args.allocators.split(",")}
  started = time.time()
  load_before = os.getloadavg()
  results = []
  for round_index in range(args.rounds):
    specs = _case_specs(args)
    if round_index % 2:  # Within each shape, the other order of the impls.
      specs = [spec for group in _impl_groups(specs) for spec in group[::-1]]
    for allocator, env_extra in allocators.items():
      for spec in specs:
        result = _run_case(spec, env_extra)
        result.update(allocator=allocator, round=round_index)
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
  results = _merge_rounds(results)
  ratios = _ratios(results)
  report = {
    "host": {
      "cpus": os.cpu_count(),
      "loadavg_before": load_before,
      "loadavg_after": os.getloadavg(),
      "seconds": round(time.time() - started, 1),
    },
    "allocators": allocators,
    "results": results,
    "ratios": ratios,
  }
  if args.write_table:
    report["auto_table"] = _auto_table(results)
    _write_table(report["auto_table"])
  text = json.dumps(report, indent=2)
  if args.out:
    pathlib.Path(args.out).write_text(text + "\n")
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
