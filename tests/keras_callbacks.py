"""Keras callbacks the resumable-training tests share: a stand-in for a kill and a recorder."""

from __future__ import annotations

import keras


class Killed(Exception):
  pass


class KillAtEpoch(keras.callbacks.Callback):
  """Stands for a kill: the run dies as `epoch` begins, after the previous epoch was saved."""

  def __init__(self, epoch: int):
    super().__init__()
    self.epoch = epoch
    self.weights_before_kill = None

  def on_epoch_begin(self, epoch, logs=None):
    if epoch == self.epoch:
      self.weights_before_kill = [w.copy() for w in self.model.get_weights()]
      raise Killed()


class Record(keras.callbacks.Callback):
  """The weights and optimizer step a training starts from, and the epochs it runs."""

  def __init__(self):
    super().__init__()
    self.epochs, self.start_weights, self.start_iterations = [], None, None

  def on_train_begin(self, logs=None):
    self.start_weights = [w.copy() for w in self.model.get_weights()]
    self.start_iterations = int(self.model.optimizer.iterations.numpy())

  def on_epoch_begin(self, epoch, logs=None):
    self.epochs.append(epoch)
