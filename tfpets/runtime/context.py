"""RunContext: what a stage gets from the launcher."""

from __future__ import annotations

import functools

import tensorflow as tf
from absl import flags

from tfpets.runtime import checkpoint, tensorboard
from tfpets.runtime import strategy as strategy_lib
from tfpets.runtime.workdir import Workdir


class RunContext:
  def __init__(self, stage: str, workdir: Workdir, flag_values: flags.FlagValues):
    self.stage = stage
    self.workdir = workdir
    self.flags = flag_values

  @property
  def seed(self) -> int:
    return self.flags.seed

  @functools.cached_property
  def strategy(self) -> tf.distribute.Strategy:
    return strategy_lib.make_strategy(
      self.flags.strategy, self.flags.tpu, self.flags.num_cpu_replicas
    )

  def summary_writer(self, name: str = "train") -> tensorboard.SummaryWriter:
    return tensorboard.SummaryWriter(self.workdir.logs / name)

  def checkpoints(self, max_to_keep: int = 3, **trackables) -> checkpoint.CheckpointHelper:
    return checkpoint.CheckpointHelper(self.workdir.checkpoints, max_to_keep, **trackables)
