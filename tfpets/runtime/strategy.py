"""The one tf.distribute strategy factory."""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

from tfpets.errors import UsageError

STRATEGIES = ("auto", "cpu", "mirrored", "multiworker", "tpu")


def split_cpu(num_replicas: int) -> list:
  """Splits the host CPU into logical devices (the CI stand-in for several GPUs).

  Must run before TensorFlow initialises its devices, i.e. before any op executes.
  """
  cpus = tf.config.list_physical_devices("CPU")
  existing = tf.config.get_logical_device_configuration(cpus[0])
  if not existing or len(existing) != num_replicas:
    try:
      tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_replicas
      )
    except RuntimeError as e:
      raise UsageError(
        f"cannot split the CPU into {num_replicas} devices after TensorFlow "
        f"initialised ({e}); create the strategy before running any op"
      ) from None
  return [d.name for d in tf.config.list_logical_devices("CPU")][:num_replicas]


def set_op_threads(intra_op: int = 0, inter_op: int = 0) -> None:
  """Sets TensorFlow's thread pools (0 keeps its default, one thread per core).

  Must run before TensorFlow initialises, like `split_cpu`. Small models gain from one thread per
  op: their ops are too short to split, and two stages trained at once then share the cores.
  """
  for name, value, getter, setter in (
    (
      "--intra_op_threads",
      intra_op,
      tf.config.threading.get_intra_op_parallelism_threads,
      tf.config.threading.set_intra_op_parallelism_threads,
    ),
    (
      "--inter_op_threads",
      inter_op,
      tf.config.threading.get_inter_op_parallelism_threads,
      tf.config.threading.set_inter_op_parallelism_threads,
    ),
  ):
    if value and value != getter():
      try:
        setter(value)
      except RuntimeError as e:
        raise UsageError(
          f"{name}={value}: cannot change TensorFlow's thread pools after it "
          f"initialised ({e}); set them before running any op"
        ) from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True unless this is a multi-worker run's worker other than the chief: the one that writes."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  cluster = resolver.cluster_spec().as_dict() or {}
  return _is_chief_task(resolver.task_type, resolver.task_id, "chief" in cluster)


def is_chief_task(kind: str) -> bool:
  """`is_chief` of the strategy `kind` will make, read from TF_CONFIG before it exists."""
  if kind != "multiworker":
    return True
  try:
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
  except ValueError:
    return True  # make_strategy reports it
  task = config.get("task") or {}
  return _is_chief_task(
    task.get("type"), task.get("index", 0), "chief" in config.get("cluster", {})
  )


def _is_chief_task(task_type, task_id, has_chief: bool) -> bool:
  # TensorFlow's convention: the task named chief, else worker 0.
  return task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief)


def make_strategy(
  kind: str = "auto", tpu: str = "", num_cpu_replicas: int = 2
) -> tf.distribute.Strategy:
  """Returns the strategy for `kind`.

  auto: TPU if `tpu` is given, MirroredStrategy over all GPUs if there are several, one GPU, else CPU.
  cpu: TensorFlow's default strategy on the one device there is (GPU 0, else the CPU). Not
    OneDeviceStrategy: its per-step distribution machinery makes Keras `fit` of small models
    several times slower on CPU (benchmarks/RESULTS.md, section 5.1).
  mirrored: all GPUs, or `num_cpu_replicas` logical CPUs on a CPU-only host.
  multiworker: MultiWorkerMirroredStrategy configured from TF_CONFIG (ring all-reduce).
  tpu: TPUStrategy on `tpu` ('local', a name or grpc:// address).
  """
  if kind not in STRATEGIES:
    raise UsageError(f"--strategy={kind!r} is not one of {', '.join(STRATEGIES)}")
  gpus = tf.config.list_physical_devices("GPU")
  if kind == "auto":
    kind = "tpu" if tpu else ("mirrored" if len(gpus) > 1 else "cpu")
  if kind == "cpu":
    strategy = tf.distribute.get_strategy()
  elif kind == "mirrored":
    devices = None if gpus else split_cpu(num_cpu_replicas)
    strategy = tf.distribute.MirroredStrategy(devices)
  elif kind == "multiworker":
    if "TF_CONFIG" not in os.environ:
      raise UsageError(
        "--strategy=multiworker needs the TF_CONFIG environment variable "
        "(see launch/multiworker_cpu.sh)"
      )
    json.loads(os.environ["TF_CONFIG"])  # fail early on malformed JSON
    options = tf.distribute.experimental.CommunicationOptions(
      implementation=tf.distribute.experimental.CommunicationImplementation.RING
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  else:
    if not tpu:
      raise UsageError("--strategy=tpu needs --tpu=NAME (or --tpu=local)")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="" if tpu == "local" else tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    strategy = tf.distribute.TPUStrategy(resolver)
  logging.info(
    "strategy %s with %d replica(s)", type(strategy).__name__, strategy.num_replicas_in_sync
  )
  return strategy
