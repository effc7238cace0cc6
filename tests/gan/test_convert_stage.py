"""`--stage=convert` end to end through the launcher (in a subprocess)."""

from __future__ import annotations

import json

import numpy as np

from tests.conftest import launch
from tests.gan import numpy_reference as ref
from tests.gan import pickle_writers as pw
from tests.gan.test_importers import tf_kwargs
from tfpets.gan import networks


def test_convert_stage_writes_loadable_networks_and_a_report(tmp_path):
  g_kwargs, d_kwargs = tf_kwargs("skip", "resnet", 0, 256)
  gs_params, _, _ = pw.write_tf_pickle(tmp_path / "snapshot.pkl", g_kwargs, d_kwargs, seed=9)
  workdir = tmp_path / "run"
  result = launch(
    "--stage=convert", f"--pickle={tmp_path / 'snapshot.pkl'}", f"--workdir={workdir}"
  )
  assert result.returncode == 0, result.stderr
  report = json.loads((workdir / "reports" / "convert.json").read_text())
  assert report["format"] == "tf" and report["network"]["resolution"] == 16
  assert set(report["parameters"]) == {"G", "D", "G_ema"}
  config, models = networks.load_networks(workdir)
  z = np.random.default_rng(0).standard_normal([2, 32]).astype(np.float32)
  got = models["G_ema"](z, noise_mode="const").numpy()
  want = ref.generator(ref.Params(gs_params), g_kwargs, z)
  assert config.resolution == 16 and np.abs(got - want).max() < 1e-3


def test_convert_stage_reports_a_bad_pickle_in_one_line(tmp_path):
  bad = tmp_path / "bad.pkl"
  bad.write_bytes(b"not a pickle at all")
  result = launch("--stage=convert", f"--pickle={bad}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("tfpets: error: ") and "bad.pkl" in last
  assert "Traceback" not in result.stderr
