"""`fused_bias_act` against the memory floor: how far any kernel could go.

Forward + backward of `fused_bias_act` must at least read x and write y, then
read dy and write dx: two passes over memory, the second after the first.
`floor` is exactly those two passes, two TensorFlow negations (`-x`, then
`-dy`) returned from one `tf.function`. `ref / floor` bounds the speed-up
over the reference path that any kernel storing as TensorFlow's element-wise
ops do could show in the same measurement (only non-temporal stores, which
write around the cache, go below it), and `custom / floor` says how far the
custom kernel is from it. `call` is a `tf.function` that returns its
inputs: TensorFlow's fixed cost of a call, which every figure includes.
The functions are those of `bench_ops.py`'s per-call figure (lrelu, bias,
upstream gradient captured), all timed in one process, two ways:

* `hot`: each function alone for `--seconds`, so its tensors stay cached
  between calls, as in `bench_ops.py`, where every case has its process;
* `cold`: the functions called in turn for `--seconds` each, so every call
  finds the cache holding the other functions' tensors, as a layer of a
  network finds it holding the other layers'.

Each figure is the median of a round's calls; every round is a fresh
process (its own allocations) and runs the functions in the opposite order
to the round before, since these machines' speed drifts over minutes; the
ratios are per round, and the report gives their median over `--rounds`
and every round's value.

Usage: python benchmarks/bench_bias_act_floor.py [--rounds 5] [--seconds 2]
         [--allocator tf_bfc] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from bench_ops import ALLOCATORS, REPO, STYLEGAN_SHAPES, run_worker

FUNCTIONS = ("custom", "ref", "floor", "call")
RATIOS = (("ref", "custom"), ("ref", "floor"), ("custom", "floor"))


def _functions(shape):
  """The timed `tf.function`s and their arguments."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  import tfpets.ops as tfops  # pylint: disable=g-import-not-at-top

  x = tf.random.normal(shape, seed=1)
  b = tf.random.normal(shape[-1:], seed=2)
  dy = tf.random.normal(shape, seed=3)

  def forward_backward(impl):
    def run(x, b):
      with tf.GradientTape() as tape:
        tape.watch([x, b])
        y = tfops.fused_bias_act(x, b, act="lrelu", impl=impl)
      return y, tape.gradient(y, [x, b], output_gradients=dy)

    return run

  def floor(x, b):
    y = tf.math.negative(x)
    # A backward pass follows its forward pass; left independent, the two
    # negations would run side by side on the two inter-op threads.
    with tf.control_dependencies([y]):
      return y, tf.math.negative(dy)

  bodies = {
    "custom": forward_backward("custom"),
    "ref": forward_backward("ref"),
    "floor": floor,
    "call": lambda x, b: (x, b),
  }
  return {name: tf.function(body, autograph=False) for name, body in bodies.items()}, (x, b)


def _median_ms(times: list[float]) -> float:
  return round(statistics.median(times) * 1000, 4)


def worker(shape: list[int], seconds: float, reverse: bool) -> dict:
  """One round: every function's median call, hot then cold."""
  sys.path.insert(0, str(REPO))
  import tfpets.ops as tfops  # pylint: disable=g-import-not-at-top

  if not tfops.library_loaded():
    return {"error": "custom op library not loaded"}
  functions, args = _functions(tuple(shape))
  if reverse:
    functions = dict(reversed(functions.items()))
  for fn in functions.values():
    for _ in range(5):
      fn(*args)
  hot = {}
  for name, fn in functions.items():
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
      start = time.perf_counter()
      fn(*args)  # Eager calls of a tf.function on CPU return when done.
      times.append(time.perf_counter() - start)
    hot[name] = _median_ms(times)
  cold = {name: [] for name in functions}
  deadline = time.perf_counter() + seconds * len(functions)
  while time.perf_counter() < deadline:
    for name, fn in functions.items():
      start = time.perf_counter()
      fn(*args)
      cold[name].append(time.perf_counter() - start)
  return {"hot": hot, "cold": {k: _median_ms(v) for k, v in cold.items()}}


def summarise(rounds: list[dict]) -> dict:
  """Per mode: median ms per function and median per-round ratios, each
  with every round's value."""
  summary = {}
  for mode in ("hot", "cold"):
    per_round = [r[mode] for r in rounds]
    figures = {}
    for name in FUNCTIONS:
      values = [r[name] for r in per_round]
      figures[f"{name}_ms"] = round(statistics.median(values), 4)
      figures[f"{name}_ms_rounds"] = values
    for top, bottom in RATIOS:
      values = [round(r[top] / r[bottom], 3) for r in per_round]
      figures[f"{top}_over_{bottom}"] = round(statistics.median(values), 3)
      figures[f"{top}_over_{bottom}_rounds"] = values
    summary[mode] = figures
  return summary


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument(
    "--rounds", type=int, default=5, help="fresh processes per shape; report medians"
  )
  parser.add_argument(
    "--seconds", type=float, default=2.0, help="time each function this long per mode"
  )
  parser.add_argument(
    "--allocator",
    default="tf_bfc",
    choices=ALLOCATORS,
    help="allocator setting, as in bench_ops.py",
  )
  parser.add_argument("--quick", action="store_true", help="only the smallest shape")
  args = parser.parse_args()
  if args.rounds < 1 or args.seconds <= 0:
    parser.error("--rounds must be at least 1 and --seconds positive")
  if args.worker:
    spec = json.loads(args.worker)
    print(json.dumps(worker(**spec)))
    return 0

  started = time.time()
  shapes = STYLEGAN_SHAPES[:1] if args.quick else STYLEGAN_SHAPES
  results = []
  for shape in shapes:
    rounds = [
      run_worker(
        __file__,
        {"shape": list(shape), "seconds": args.seconds, "reverse": bool(k % 2)},
        ALLOCATORS[args.allocator],
      )
      for k in range(args.rounds)
    ]
    errors = [r["error"] for r in rounds if "error" in r]
    if errors:
      results.append({"shape": list(shape), "error": errors[0]})
      continue
    results.append({"shape": list(shape), **summarise(rounds)})
    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
  print(
    json.dumps(
      {
        "host": {"cpus": os.cpu_count(), "seconds": round(time.time() - started, 1)},
        "allocator": args.allocator,
        "case": "fused_bias_act lrelu, bias, forward + backward per call",
        "results": results,
      },
      indent=2,
    )
  )
  return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
  sys.exit(main())
