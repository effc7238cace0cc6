"""StyleGAN2-ADA training iteration on this machine: tfpets against the official PyTorch code.

One run measures both sides at 32, 64 and 128 px (each resolution and side in a fresh process),
`auto` preset as the official `train.py --cfg=auto --batch=8` resolves it, float32
(`num_fp16_res=0`), conv_clamp 256, batch 8, ADA on with the `bgc` pipeline and p starting at
`--p` (0.2, so that augmentation runs; the controller moves it by 6.4e-5 per adjustment), and
reports the amortised seconds per thousand images of each side and the ratio official / tfpets
(> 1: tfpets is faster).

Per phase: every timed iteration runs each phase once, in the official order, Gmain, Greg, Dmain,
Dreg, then Gema (the G_ema update plus, every 4th iteration, the ADA adjustment of p); a phase's
figure is its median wall time (and its median process CPU time) over `--iterations` iterations
after `--warmups`. The amortised steady state with lazy regularisation (Greg every 4, Dreg every
16 iterations) is

  sec/kimg = 1000 / (8 / (Gmain + Dmain + Greg / 4 + Dreg / 16 + Gema)).

`sec_per_kimg_from_cpu` applies the same formula to CPU seconds / `--threads`: what the side
would reach with both cores to itself, which stays meaningful when other processes share the
machine (the load average before and after is recorded). `--blocks N` also times N blocks of 16
consecutive whole iterations (`train_step` on the tfpets side, training_loop.py's loop body on
the official side), in which lazy regularisation is amortised exactly.

Official side: official_pytorch_training.py, run by `--official-python` with the checkout at
`--official-repo` (NVlabs/stylegan2-ada-pytorch; not shipped with tfpets), under the no-mmap glibc
malloc (MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=68719476736), its best on CPU.
tfpets side: `tfpets.gan.train_step.GanTrainer` with `tfpets.gan.augment.AugmentPipe('bgc')`,
the phases being the trainer's per-phase functions, under TensorFlow's BFC allocator on the CPU
(TF_CPU_ALLOCATOR_USE_BFC=true, what `python -m tfpets.launch` sets; `--tfpets-allocator` picks
another). Before its warm-up it runs the G_ema step with the ADA adjustment once, so that every
function is traced before the timing. The machine's speed drifts by 10-30 % over minutes, so
`--rounds N` measures both sides N times, alternating which goes first, and reports the median of
each figure plus every round's ratio.

`--profile` adds, from a separate process at `--profile-resolution` (64 px), a TensorFlow profile
(`tf.profiler`) of one block of 16 tfpets iterations (after 4 that trace every function): the
self time of every op type and op summed over the block, per iteration and as a share, grouped
into convolution work (Conv2D, Conv2DBackpropInput, Conv2DBackpropFilter, depthwise, and MatMul,
since tfpets computes a convolution's weight gradient as one matmul per kernel tap) and
everything else. Op times are the ops' own wall durations on their threads, which overlap when
the two inter-op threads run ops at once (and stretch when other processes take the cores), so
they add up to more than the iteration's wall time; their shares carry over. And the floor of
that convolution work: every convolution and matmul of the traced phase graphs, at its own shapes
and attributes, timed alone as one bare op (median of 5 calls, minus the cost of an empty call),
summed with its phase's weight per amortised iteration (`bare_conv_seconds_per_iteration`),
against the wall time per iteration of the profiled block (`bare_over_wall`: the part of the
iteration that bare convolutions alone would take) and against the convolutions' share of it
(`conv_share_of_wall_over_bare` near 1: the convolutions already run at the speed this machine
gives a bare convolution).

  python benchmarks/bench_gan_training.py --official-repo PATH --official-python PYTHON
      [--resolutions 32,64,128] [--iterations 5] [--warmups 2] [--blocks 0] [--rounds 1]
      [--p 0.2] [--tfpets-allocator tf_bfc] [--profile [--profile-resolution 64]]

Without --official-repo only tfpets is measured. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Mapping

from bench_gan_networks import ALLOCATOR_ENVS, BATCH, NO_MMAP_ENV, _run_json

PHASES = ("Gmain", "Greg", "Dmain", "Dreg", "Gema")
# Lazy-regularisation intervals (training_loop.py defaults) and the ADA controller (train.py).
G_REG_INTERVAL = 4
D_REG_INTERVAL = 16
ADA_TARGET = 0.6
ADA_INTERVAL = 4
ADA_KIMG = 500
BLOCK = 16  # Iterations over which both lazy intervals repeat.
PHASE_WEIGHTS = {"Gmain": 1.0, "Greg": 1 / G_REG_INTERVAL, "Dmain": 1.0, "Dreg": 1 / D_REG_INTERVAL}
# Substrings of op types, checked in this order. tfpets computes convolution weight gradients as
# one matmul per kernel tap (tfpets/ops/conv2d_resample.py), so matmuls are convolution work too.
CONV_CATEGORIES = (
  ("conv2d_backprop_input", ("Conv2DBackpropInput", "DepthwiseConv2dNativeBackpropInput")),
  ("conv2d_backprop_filter", ("Conv2DBackpropFilter", "DepthwiseConv2dNativeBackpropFilter")),
  ("conv2d", ("Conv2D", "DepthwiseConv2dNative")),
  ("matmul", ("MatMul",)),
)
OP_ATTRS = (
  "strides",
  "padding",
  "dilations",
  "data_format",
  "explicit_paddings",
  "transpose_a",
  "transpose_b",
  "adj_x",
  "adj_y",
)


# -- timing helpers shared with official_pytorch_training.py (standard library only) -------------


def time_phases(
  run_phase: Callable[[str], None], iterations: int, warmups: int
) -> dict[str, dict[str, float]]:
  """Runs `warmups + iterations` iterations of every phase in PHASES order; per phase, the median
  wall seconds and the median process CPU seconds over the timed iterations."""
  wall: dict[str, list[float]] = collections.defaultdict(list)
  cpu: dict[str, list[float]] = collections.defaultdict(list)
  for index in range(warmups + iterations):
    for phase in PHASES:
      cpu_start, start = time.process_time(), time.perf_counter()
      run_phase(phase)
      if index >= warmups:
        wall[phase].append(time.perf_counter() - start)
        cpu[phase].append(time.process_time() - cpu_start)
  return {
    phase: {"wall_s": statistics.median(wall[phase]), "cpu_s": statistics.median(cpu[phase])}
    for phase in PHASES
  }


def time_blocks(run_iteration: Callable[[], None], blocks: int, threads: int) -> dict[str, float]:
  """sec/kimg of `blocks` blocks of BLOCK whole iterations: the median over blocks of the wall
  time and of the process CPU seconds / threads."""
  wall, cpu = [], []
  for _ in range(blocks):
    cpu_start, start = time.process_time(), time.perf_counter()
    for _ in range(BLOCK):
      run_iteration()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - cpu_start)
  per_kimg = 1000 / (BLOCK * BATCH)
  return {
    "sec_per_kimg": statistics.median(wall) * per_kimg,
    "sec_per_kimg_from_cpu": statistics.median(cpu) / threads * per_kimg,
  }


def amortised_seconds(seconds: Mapping[str, float]) -> float:
  """Seconds per iteration in the steady state: Gmain + Dmain + Greg/4 + Dreg/16 + Gema."""
  return sum(seconds[p] * PHASE_WEIGHTS.get(p, 1.0) for p in PHASES)


def amortised_figures(phases: Mapping[str, Mapping[str, float]], threads: int) -> dict[str, float]:
  """sec/kimg = 1000 / (batch / amortised seconds), from wall and from CPU seconds / threads."""
  wall = amortised_seconds({p: v["wall_s"] for p, v in phases.items()})
  cpu = amortised_seconds({p: v["cpu_s"] for p, v in phases.items()}) / threads
  return {
    "sec_per_kimg": 1000 / (BATCH / wall),
    "sec_per_kimg_from_cpu": 1000 / (BATCH / cpu),
  }


# -- tfpets worker (runs in a fresh process) -----------------------------------------------------


def _missing_trainer() -> str | None:
  """Why the tfpets trainer cannot be imported, or None."""
  try:
    from tfpets.gan import augment, train_step  # noqa: F401  pylint: disable=unused-import
  except ImportError as e:
    return f"tfpets.gan.train_step / tfpets.gan.augment not importable: {e}"
  return None


def _block_on(outputs: Any) -> None:
  """Waits for a step's results (reads every returned tensor)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.nest.map_structure(lambda t: t.numpy(), outputs)


class TfpetsIteration:
  """A GanTrainer at one resolution with the benchmark's settings, and its phases."""

  def __init__(self, resolution: int, p: float):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from tfpets.gan import augment, presets, train_step  # pylint: disable=g-import-not-at-top

    config = presets.network_config("auto", resolution, num_fp16_res=0, conv_clamp=256)
    settings = train_step.TrainSettings.from_training_config(
      presets.training_config("auto", resolution),
      batch=BATCH,
      batch_gpu=BATCH,
      aug="ada",
      p=p,
      ada_target=ADA_TARGET,
      ada_interval=ADA_INTERVAL,
      ada_kimg=ADA_KIMG,
      g_reg_interval=G_REG_INTERVAL,
      d_reg_interval=D_REG_INTERVAL,
    )
    self.settings = settings
    self.trainer = train_step.GanTrainer(
      config, settings, augment_pipe=augment.AugmentPipe(augpipe="bgc"), seed=0
    )
    self.reals = tf.random.stateless_uniform(
      [BATCH, resolution, resolution, config.img_channels], [1, 2], -1.0, 1.0
    )
    # Per-phase functions of the trainer: present in the current GanTrainer, not part of its API.
    self.phase_fns = getattr(self.trainer, "_phase_fns", None)
    self.finish_fns = getattr(self.trainer, "_finish_fns", None)

  @property
  def has_phases(self) -> bool:
    return self.phase_fns is not None and self.finish_fns is not None

  def run_phase(self, phase: str) -> None:
    if phase == "Gema":
      adjust = int((int(self.trainer.batch_idx.numpy()) + 1) % ADA_INTERVAL == 0)
      _block_on(self.finish_fns[adjust]())
    else:
      _block_on(self.phase_fns[phase](self.reals, None, None))

  def run_iteration(self) -> None:
    _block_on(self.trainer.train_step(self.reals))

  def params(self) -> dict[str, int]:
    def count(network):
      return int(sum(v.shape.num_elements() for v in network.trainable_weights))

    return {"G": count(self.trainer.G), "D": count(self.trainer.D)}


def _tfpets_worker(args: argparse.Namespace) -> dict[str, Any]:
  missing = _missing_trainer()
  if missing:
    return {"error": missing}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  load_before = os.getloadavg()[0]
  state = TfpetsIteration(args.resolution, args.p)
  threads = 2
  report: dict[str, Any] = {}
  if state.has_phases:
    _block_on(state.finish_fns[1]())  # Traces the G_ema step with the ADA adjustment.
    phases = time_phases(state.run_phase, args.iterations, args.warmups)
    report.update(phases=phases, **amortised_figures(phases, threads))
  else:
    for _ in range(BLOCK):  # Traces every phase and both G_ema steps.
      state.run_iteration()
  if args.blocks or not state.has_phases:
    blocks = time_blocks(state.run_iteration, max(args.blocks, 1), threads)
    report["block_sec_per_kimg"] = blocks
    if not state.has_phases:
      report.update(blocks)
  report["augment_p"] = float(state.trainer.augment_p.numpy())
  report["params"] = state.params()
  report["r1_gamma"] = state.settings.r1_gamma
  report["tensorflow"] = tf.__version__
  report["load_average_1min"] = [load_before, os.getloadavg()[0]]
  return report


# -- profile of the tfpets iteration --------------------------------------------------------------


def _conv_category(op_type: str) -> str | None:
  for category, markers in CONV_CATEGORIES:
    if any(marker in op_type for marker in markers):
      return category
  return None


def _op_self_times(xplane_file: str) -> tuple[dict[str, float], dict[str, float]]:
  """Seconds per op type and per op name over the profile: each op event's duration minus the
  op events nested in it on the same thread (a function-call op contains its callee's ops)."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top

  space = xplane_pb2.XSpace()
  with open(xplane_file, "rb") as f:
    space.ParseFromString(f.read())
  by_type: dict[str, float] = collections.defaultdict(float)
  by_name: dict[str, float] = collections.defaultdict(float)

  def add(done: list[Any]) -> None:
    by_type[done[1]] += done[3] * 1e-12
    by_name[done[2]] += done[3] * 1e-12

  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      events = []
      for event in line.events:
        metadata = plane.event_metadata[event.metadata_id]
        # TensorFlow op events are named "node:OpType" and carry the op type as display name.
        op_type = metadata.display_name
        if op_type and metadata.name.endswith(":" + op_type):
          end = event.offset_ps + event.duration_ps
          events.append((event.offset_ps, end, op_type, metadata.name[: -len(op_type) - 1]))
      events.sort(key=lambda e: (e[0], -e[1]))
      stack: list[list[Any]] = []  # [end, op type, op name, self ps]
      for start, end, op_type, name in events:
        while stack and stack[-1][0] <= start:
          add(stack.pop())
        if stack:
          stack[-1][3] -= end - start
        stack.append([end, op_type, name, end - start])
      for done in stack:
        add(done)
  return dict(by_type), dict(by_name)


def _conv_ops(function: Any) -> tuple[list[dict[str, Any]], int]:
  """Every convolution op of the graphs a traced tf.function has built, with its static shapes
  and attributes; and the number of convolutions in the functions those graphs call (control
  flow branches and loops, not counted in the first list)."""
  ops, nested = [], 0
  for concrete in function._list_all_concrete_functions():  # pylint: disable=protected-access
    for op in concrete.graph.get_operations():
      if _conv_category(op.type) is not None:
        ops.append(_conv_op_spec(op))
    for called in getattr(concrete.graph, "_functions", {}).values():
      graph = getattr(called, "graph", None)
      if graph is not None:
        nested += sum(_conv_category(op.type) is not None for op in graph.get_operations())
  return ops, nested


def _conv_op_spec(op: Any) -> dict[str, Any]:
  sizes = {}
  if op.type.endswith("BackpropInput"):
    sizes["input_sizes"] = op.outputs[0].shape.as_list()
  elif op.type.endswith("BackpropFilter"):
    sizes["filter_sizes"] = op.outputs[0].shape.as_list()
  attrs = {name: op.get_attr(name) for name in OP_ATTRS if name in op.node_def.attr}
  shapes = [t.shape.as_list() for t in op.inputs]
  return {"type": op.type, "shapes": shapes, "sizes": sizes, "attrs": attrs}


def _bare_conv_seconds(op: Mapping[str, Any], repeats: int = 5) -> float:
  """Median seconds of one convolution op alone at its shapes (one tf.function call per op)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in op["attrs"].items()}
  tensors = [tf.random.normal(shape) for shape in op["shapes"]]
  if op["type"].endswith("BackpropInput"):
    sizes = tf.constant(op["sizes"]["input_sizes"])
    inputs = dict(input_sizes=sizes, filter=tensors[1], out_backprop=tensors[2])
  elif op["type"].endswith("BackpropFilter"):
    sizes = tf.constant(op["sizes"]["filter_sizes"])
    inputs = dict(input=tensors[0], filter_sizes=sizes, out_backprop=tensors[2])
  elif "MatMul" in op["type"]:
    inputs = dict(zip(("a", "b") if op["type"] == "MatMul" else ("x", "y"), tensors))
  else:
    inputs = dict(input=tensors[0], filter=tensors[1])
  raw_op = getattr(tf.raw_ops, op["type"])
  return _median_call_seconds(tf.function(lambda: raw_op(**inputs, **attrs)), repeats)


def _median_call_seconds(function: Callable[[], Any], repeats: int) -> float:
  function().numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function().numpy()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _conv_floor(state: TfpetsIteration, conv_share: float, wall_per_iteration: float) -> dict:
  """The convolutions and matmuls of the traced phase graphs, each timed alone as one bare op at
  its shapes, weighted per amortised iteration, against the iteration's wall time and the part of
  it the profile attributes to them (their share of op time: op durations overlap when the two
  inter-op threads run ops at once, so only shares carry over to wall time)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  grad_fns = getattr(state.trainer, "_grad_fns", None) or state.phase_fns
  empty = tf.constant(0.0)
  call_overhead = _median_call_seconds(tf.function(lambda: tf.identity(empty)), 20)
  seconds: dict[str, float] = {}
  bare: dict[str, float] = collections.defaultdict(float)
  counts: dict[str, int] = {}
  nested_total = 0
  for phase, weight in PHASE_WEIGHTS.items():
    ops, nested = _conv_ops(grad_fns[phase])
    counts[phase], nested_total = len(ops), nested_total + nested
    for op in ops:
      key = json.dumps(op, sort_keys=True, default=str)
      if key not in seconds:
        seconds[key] = max(_bare_conv_seconds(op) - call_overhead, 0.0)
      bare[_conv_category(op["type"])] += weight * seconds[key]
  floor = sum(bare.values())
  return {
    "conv_ops_per_phase_graph": counts,
    "conv_ops_in_nested_functions": nested_total,
    "distinct_conv_shapes": len(seconds),
    "call_overhead_s_subtracted": round(call_overhead, 6),
    "bare_conv_seconds_per_iteration": round(floor, 4),
    "bare_by_category_per_iteration": {k: round(v, 4) for k, v in sorted(bare.items())},
    "wall_s_per_iteration": round(wall_per_iteration, 4),
    "bare_over_wall": round(floor / wall_per_iteration, 3),
    "conv_share_of_wall_s_per_iteration": round(conv_share * wall_per_iteration, 4),
    "conv_share_of_wall_over_bare": round(conv_share * wall_per_iteration / floor, 3)
    if floor
    else None,
  }


def _profile_worker(args: argparse.Namespace) -> dict[str, Any]:
  missing = _missing_trainer()
  if missing:
    return {"error": missing}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  state = TfpetsIteration(args.resolution, args.p)
  for _ in range(ADA_INTERVAL):  # Traces every phase and both G_ema steps.
    state.run_iteration()
  logdir = tempfile.mkdtemp(prefix="tfpets_gan_profile_")
  tf.profiler.experimental.start(logdir)
  cpu_start, start = time.process_time(), time.perf_counter()
  for _ in range(BLOCK):
    state.run_iteration()
  wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
  tf.profiler.experimental.stop()
  xplane = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1]
  by_type, by_name = _op_self_times(xplane)
  total = sum(by_type.values())
  by_category: dict[str, float] = collections.defaultdict(float)
  for op_type, seconds in by_type.items():
    by_category[_conv_category(op_type) or "other"] += seconds

  def table(values: Mapping[str, float], top: int) -> dict[str, dict[str, float]]:
    ranked = sorted(values.items(), key=lambda kv: -kv[1])[:top]
    return {
      k: {"s_per_iteration": round(v / BLOCK, 4), "share": round(v / total, 4)} for k, v in ranked
    }

  report: dict[str, Any] = {
    "resolution": args.resolution,
    "profiled_iterations": BLOCK,
    "wall_s_per_iteration_while_profiling": round(wall / BLOCK, 4),
    "cpu_s_per_iteration_while_profiling": round(cpu / BLOCK, 4),
    "op_seconds_per_iteration": round(total / BLOCK, 4),
    "share_by_category": {k: round(v / total, 4) for k, v in sorted(by_category.items())},
    "seconds_by_category_per_iteration": {
      k: round(v / BLOCK, 4) for k, v in sorted(by_category.items())
    },
    "top_op_types": table(by_type, 20),
    "top_ops": table(by_name, 25),
    "xplane": xplane,
  }
  conv_share = sum(v for k, v in by_category.items() if k != "other") / total
  report["conv_floor"] = _conv_floor(state, conv_share, wall / BLOCK)
  return report


# -- the side-by-side run -------------------------------------------------------------------------


def _timing_args(args: argparse.Namespace, resolution: int) -> list[str]:
  """The measurement flags both workers take."""
  values = dict(resolution=resolution, iterations=args.iterations, warmups=args.warmups)
  values.update(blocks=args.blocks, p=args.p)
  return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def _spawn_tfpets(args: argparse.Namespace, resolution: int, mode: str) -> dict[str, Any]:
  command = [sys.executable, os.path.abspath(__file__), mode, *_timing_args(args, resolution)]
  return _run_json(command, ALLOCATOR_ENVS[args.tfpets_allocator])


def _spawn_official(args: argparse.Namespace, resolution: int) -> dict[str, Any]:
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "official_pytorch_training.py")
  command = [args.official_python, script, "--official-repo", args.official_repo]
  return _run_json(command + _timing_args(args, resolution), NO_MMAP_ENV)


def _round(value: Any) -> Any:
  if isinstance(value, float):
    return round(value, 4)
  if isinstance(value, dict):
    return {k: _round(v) for k, v in value.items()}
  return value


def _median_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
  """Median over rounds of the sec/kimg figures and of each phase's seconds."""
  figures: dict[str, Any] = {}
  for key in ("sec_per_kimg", "sec_per_kimg_from_cpu"):
    if all(key in r for r in runs):
      figures[key] = statistics.median(r[key] for r in runs)
  if all("phases" in r for r in runs):
    figures["phases"] = {
      phase: {
        k: statistics.median(r["phases"][phase][k] for r in runs) for k in runs[0]["phases"][phase]
      }
      for phase in runs[0]["phases"]
    }
  if all("block_sec_per_kimg" in r for r in runs):
    figures["block_sec_per_kimg"] = {
      k: statistics.median(r["block_sec_per_kimg"][k] for r in runs)
      for k in runs[0]["block_sec_per_kimg"]
    }
  return figures


def _compare(ours: list[dict], theirs: list[dict]) -> dict[str, Any]:
  result: dict[str, Any] = {"tfpets": _median_figures(ours)}
  if not theirs:
    return result
  result["official"] = _median_figures(theirs)
  for key in ("sec_per_kimg", "sec_per_kimg_from_cpu"):
    if key in result["tfpets"] and key in result["official"]:
      result[f"ratio_official_over_tfpets{key[len('sec_per_kimg') :]}"] = (
        result["official"][key] / result["tfpets"][key]
      )
      result[f"ratio_rounds{key[len('sec_per_kimg') :]}"] = [
        round(official[key] / tfpets[key], 3) for tfpets, official in zip(ours, theirs)
      ]
  if "block_sec_per_kimg" in result["tfpets"] and "block_sec_per_kimg" in result["official"]:
    result["block_ratio_official_over_tfpets"] = {
      k: result["official"]["block_sec_per_kimg"][k] / result["tfpets"]["block_sec_per_kimg"][k]
      for k in result["tfpets"]["block_sec_per_kimg"]
    }
  return result


def _measure_resolution(args: argparse.Namespace, resolution: int) -> dict[str, Any]:
  ours, theirs = [], []
  for round_index in range(args.rounds):
    official_first = round_index % 2 == 1
    if args.official_repo and official_first:
      theirs.append(_spawn_official(args, resolution))
    ours.append(_spawn_tfpets(args, resolution, "--worker"))
    if args.official_repo and not official_first:
      theirs.append(_spawn_official(args, resolution))
  if any("error" in r for r in ours):
    return {"tfpets": next(r for r in ours if "error" in r), "official": _median_figures(theirs)}
  result = _compare(ours, theirs)
  result["tfpets_params"] = ours[0]["params"]
  if theirs:
    result["official_params"] = theirs[0]["params"]
    result["official_r1_gamma"] = theirs[0]["r1_gamma"]
    result["official_torch"] = theirs[0]["torch"]
  result["load_average_1min_rounds"] = {
    "tfpets": [r["load_average_1min"] for r in ours],
    "official": [r["load_average_1min"] for r in theirs],
  }
  result["tfpets_r1_gamma"] = ours[0]["r1_gamma"]
  result["tensorflow"] = ours[0]["tensorflow"]
  return _round(result)


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--resolutions", default="32,64,128", type=lambda s: [int(v) for v in s.split(",")]
  )
  parser.add_argument("--iterations", type=int, default=5, help="timed iterations per phase")
  parser.add_argument("--warmups", type=int, default=2, help="untimed iterations first")
  parser.add_argument(
    "--blocks", type=int, default=0, help=f"also time N blocks of {BLOCK} whole iterations"
  )
  parser.add_argument("--p", type=float, default=0.2, help="initial augmentation probability")
  parser.add_argument(
    "--rounds", type=int, default=1, help="measure each side N times, alternating; report medians"
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
  parser.add_argument("--profile", action="store_true", help="profile the tfpets iteration")
  parser.add_argument("--profile-resolution", type=int, default=64)
  parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.rounds < 1 or args.iterations < 1:
    parser.error("--rounds and --iterations must be at least 1")
  return args


def main() -> None:
  args = _parse_args()
  if args.worker or args.profile_worker:
    worker = _tfpets_worker if args.worker else _profile_worker
    print(json.dumps(worker(args)))
    return
  missing = _missing_trainer()
  report: dict[str, Any] = {
    "batch": BATCH,
    "preset": "auto",
    "dtype": "float32",
    "augpipe": "bgc",
    "initial_p": args.p,
    "iterations": args.iterations,
    "warmups": args.warmups,
    "rounds": args.rounds,
    "formula": "sec/kimg = 1000 / (8 / (Gmain + Dmain + Greg/4 + Dreg/16 + Gema))",
    "allocators": {"tfpets": args.tfpets_allocator, "official": "no_mmap_malloc"},
    "load_average_before": os.getloadavg(),
  }
  if missing:
    report["tfpets_missing"] = missing
  report["resolutions"] = {}
  for resolution in args.resolutions:
    report["resolutions"][str(resolution)] = _measure_resolution(args, resolution)
  if args.profile:
    report["profile"] = _spawn_tfpets(args, args.profile_resolution, "--profile-worker")
  report["load_average_after"] = os.getloadavg()
  print(json.dumps(report, indent=2))


if __name__ == "__main__":
  main()
