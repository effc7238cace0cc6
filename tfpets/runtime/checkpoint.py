"""The one checkpoint helper: keeps the last N, resumes from the newest complete one.

tf.train.CheckpointManager writes the data and index files first and updates its `checkpoint` state
file last, so a run killed while saving resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import logging


class CheckpointHelper:
  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3, **trackables):
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="checkpoint_step")
    self.checkpoint = tf.train.Checkpoint(step=self.step, **trackables)
    self.manager = tf.train.CheckpointManager(
      self.checkpoint, str(directory), max_to_keep=max_to_keep
    )

  def restore_or_initialize(self, directory: str | os.PathLike | None = None) -> int:
    """Restores the newest checkpoint if there is one; returns the step to continue from.

    `directory`: read from there instead of this helper's own folder (a multi-worker run's other
    workers save into folders of their own but resume from the chief's)."""
    if directory is None:
      latest = self.manager.latest_checkpoint
    else:
      latest = tf.train.latest_checkpoint(str(directory))
    if latest:
      self.checkpoint.restore(latest).expect_partial()
      logging.info("resumed from %s (step %d)", latest, int(self.step.numpy()))
    return int(self.step.numpy())

  def save(self, step: int) -> str:
    self.step.assign(step)
    return self.manager.save(checkpoint_number=step)

  @property
  def latest(self) -> str | None:
    return self.manager.latest_checkpoint
