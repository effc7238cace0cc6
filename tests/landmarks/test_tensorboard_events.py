"""A training stage, run as a user runs it, writes TensorBoard events that read back.

tf.summary writes nothing without the tensorboard package (TensorFlow no longer installs it), so
this test fails on an install that forgot the dependency, as a user's first run would.
"""

from __future__ import annotations

import collections
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import REPO


def read_events(logdir):
  """{tag: [(step, value)]}: a float for scalars, a decoded uint8 image for images."""
  tags = collections.defaultdict(list)
  for path in sorted(logdir.rglob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        tensor = tf.make_ndarray(value.tensor)
        if value.metadata.plugin_data.plugin_name == "images":
          decoded = np.asarray(Image.open(io.BytesIO(tensor[2])))
          tags[value.tag].append((event.step, decoded))
        else:
          tags[value.tag].append((event.step, float(tensor)))
  return tags


@pytest.mark.slow
def test_the_landmark_flagfile_run_writes_events_that_read_back(tiny_shards, tmp_path):
  workdir = tmp_path / "run"
  tiny = [
    f"--records={tiny_shards.parent.parent}",
    f"--workdir={workdir}",
    "--image_size=64",
    "--lm_roi_size=32",
    "--lm_epochs=1",
    "--lm_steps_per_epoch=2",
    "--lm_train_minutes=0",
    "--lm_roi_candidates=1",
    "--lm_roi_candidate_scales=",
    "--nolm_export",
  ]
  result = subprocess.run(
    [sys.executable, "-m", "tfpets.launch", "--flagfile=launch/landmarks_synthetic.flags", *tiny],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]

  events = read_events(workdir / "logs")
  for stage in ("bbox", "landmarks"):
    ((_, loss),) = events[f"{stage}/loss"]  # one point: the one epoch
    assert np.isfinite(loss)
  report = json.loads((workdir / "reports" / "landmarks_metrics.json").read_text())
  (_, val_loss), *_ = events["landmarks/val_loss"]
  assert val_loss == pytest.approx(report["stages"]["landmarks"]["best_val_loss"], rel=1e-6)
  (_, grid), *_ = events["detector/test_predicted_vs_true"]
  saved = np.asarray(Image.open(workdir / "images" / "test_predicted_vs_true.png").convert("RGB"))
  np.testing.assert_array_equal(grid[..., :3], saved)
