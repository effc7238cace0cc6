from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfpets.runtime.checkpoint import CheckpointHelper


def test_resumes_from_the_newest_complete_checkpoint_and_keeps_n(tmp_path):
  weights = tf.Variable(np.zeros(3, np.float32))
  helper = CheckpointHelper(tmp_path, max_to_keep=2, weights=weights)
  assert helper.restore_or_initialize() == 0
  for step in (10, 20, 30):
    weights.assign([step, step, step])
    helper.save(step)
  # A run killed while writing step 40 leaves data files but never updates the state file.
  (tmp_path / "ckpt-40.data-00000-of-00001").write_bytes(b"partial")
  (tmp_path / "ckpt-40.index").write_bytes(b"")
  kept = sorted(p.name for p in tmp_path.glob("ckpt-*.index"))
  assert kept == ["ckpt-20.index", "ckpt-30.index", "ckpt-40.index"]

  restored = tf.Variable(np.zeros(3, np.float32))
  resumed = CheckpointHelper(tmp_path, max_to_keep=2, weights=restored)
  assert resumed.restore_or_initialize() == 30
  np.testing.assert_array_equal(restored.numpy(), [30, 30, 30])
