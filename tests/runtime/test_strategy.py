"""The strategy factory under MultiWorkerMirroredStrategy on loopback, and mirrored logical CPUs.

Each worker is its own process (TF_CONFIG is read once per process), running a short custom loop
over the tfpets pipeline; both must end with identical weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, loopback_worker_env
from tests.data.test_pipeline import write_split
from tfpets.errors import UsageError
from tfpets.runtime import strategy as strategy_lib

WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    from tfpets.data import pipeline
    from tfpets.runtime.strategy import make_strategy
    strategy = make_strategy(sys.argv[1], num_cpu_replicas=2)
    with strategy.scope():
      w = tf.Variable(tf.zeros([3]))
      opt = tf.keras.optimizers.SGD(0.1)
    dist = iter(pipeline.distribute(strategy, lambda ctx: pipeline.shard_dataset(
        sys.argv[2], "train", batch_size=8, image_size=4, deterministic=True, input_context=ctx)))
    @tf.function
    def step(batch):
      def replica(b):
        x = tf.reduce_mean(b["image"], axis=[1, 2]) / 255.0
        with tf.GradientTape() as tape:
          loss = tf.nn.compute_average_loss(tf.square(x @ tf.reshape(w, [3, 1]) - 1.0)[:, 0],
                                            global_batch_size=8)
        opt.apply_gradients([(tape.gradient(loss, w), w)])
        return loss
      return strategy.reduce("SUM", strategy.run(replica, args=(batch,)), axis=None)
    losses = [float(step(next(dist))) for _ in range(5)]
    assert losses[-1] < losses[0], losses
    print("RESULT", strategy.num_replicas_in_sync, np.round(w.numpy(), 6).tolist())
""")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_workers(kind, records, num_workers):
  ports = [free_port() for _ in range(num_workers)]
  procs = []
  for i in range(num_workers):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    if kind == "multiworker":
      env = loopback_worker_env(ports, i)
    procs.append(
      subprocess.Popen(
        [sys.executable, "-c", WORKER, kind, str(records)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [
    json.loads(line.split(" ", 2)[2]) and line
    for out, _ in outputs
    for line in out.splitlines()
    if line.startswith("RESULT")
  ]


def test_multiworker_on_loopback_trains_in_lockstep(tmp_path):
  write_split(tmp_path, n=24)
  results = run_workers("multiworker", tmp_path, num_workers=2)
  assert len(results) == 2 and results[0] == results[1]
  assert results[0].split(" ")[1] == "2"  # two replicas in sync, one per worker


def test_mirrored_over_logical_cpus(tmp_path):
  write_split(tmp_path, n=24)
  (result,) = run_workers("mirrored", tmp_path, num_workers=1)
  assert result.split(" ")[1] == "2"


def test_bad_strategy_and_missing_tf_config_are_usage_errors(monkeypatch):
  with pytest.raises(UsageError, match="not one of auto, cpu, mirrored, multiworker, tpu"):
    strategy_lib.make_strategy("gpu-please")
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(UsageError, match="needs the TF_CONFIG environment variable"):
    strategy_lib.make_strategy("multiworker")
  with pytest.raises(UsageError, match="needs --tpu"):
    strategy_lib.make_strategy("tpu")


@pytest.mark.parametrize(
  "kind,tf_config,chief",
  [
    (
      "multiworker",
      {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}},
      True,
    ),
    (
      "multiworker",
      {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}},
      False,
    ),
    (
      "multiworker",
      {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
      False,
    ),
    (
      "multiworker",
      {"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}},
      True,
    ),
    (
      "mirrored",
      {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}},
      True,
    ),
  ],
)
def test_only_the_chief_task_writes_the_workdir(monkeypatch, kind, tf_config, chief):
  monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
  assert strategy_lib.is_chief_task(kind) is chief


def test_op_threads_are_set_before_tensorflow_starts():
  code = (
    "import tensorflow as tf; from tfpets.runtime import strategy; "
    "strategy.set_op_threads(1, 2); print(float(tf.reduce_sum(tf.ones([4, 4]) @ "
    "tf.ones([4, 4]))), tf.config.threading.get_intra_op_parallelism_threads(), "
    "tf.config.threading.get_inter_op_parallelism_threads())"
  )
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
  out = subprocess.run(
    [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True
  ).stdout
  assert out.split() == ["64.0", "1", "2"]


def test_op_threads_after_tensorflow_started_are_a_usage_error():
  import tensorflow as tf

  float(tf.constant(1.0) + 1.0)  # TensorFlow is running from here on
  current = tf.config.threading.get_intra_op_parallelism_threads()
  strategy_lib.set_op_threads(current, 0)  # what is set already is no change
  with pytest.raises(
    UsageError,
    match=f"--intra_op_threads={current + 3}: cannot change "
    "TensorFlow's thread pools after it initialised",
  ):
    strategy_lib.set_op_threads(current + 3, 0)
