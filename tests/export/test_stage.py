"""`--stage=export` end to end through the launcher (in a subprocess)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import launch
from tests.gan import numpy_reference as ref
from tests.gan import pickle_writers as pw
from tests.gan.test_importers import tf_kwargs
from tfpets.export import serving


def _error_lines(result) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith("tfpets: error: ")]


@pytest.mark.slow
def test_an_official_pickle_exports_to_the_next_free_version(tmp_path):
  g_kwargs, d_kwargs = tf_kwargs("skip", "resnet", 0, 256)
  gs_params, _, _ = pw.write_tf_pickle(tmp_path / "snapshot.pkl", g_kwargs, d_kwargs, seed=4)
  args = ["--stage=export", "--export_model=generator", f"--network={tmp_path / 'snapshot.pkl'}"]
  workdir = tmp_path / "run"
  first = launch(*args, f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  report = json.loads((workdir / "reports" / "export.json").read_text())
  version_dir = workdir / "models" / "generator" / "1"
  assert report["version"] == 1 and report["path"] == str(version_dir)
  assert report["export_model"] == "generator" and report["source"].endswith("snapshot.pkl")
  assert json.loads(first.stdout) == report

  # The SavedModel gives the official TF1 generator's images (an independent numpy reference).
  z = np.random.default_rng(0).standard_normal([2, 32]).astype(np.float32)
  serve = serving.load_quietly(version_dir).signatures["from_latents_float"]
  got = serve(z=z, truncation_psi=np.array([1.0, 0.5], np.float32))["images_float"].numpy()
  for i, psi in enumerate([1.0, 0.5]):
    want = ref.generator(ref.Params(gs_params), g_kwargs, z[i : i + 1], truncation_psi=psi)
    assert np.abs(got[i : i + 1] - want).max() < 1e-3

  second = launch(*args, f"--workdir={workdir}")
  assert second.returncode == 0, second.stderr[-3000:]
  assert json.loads(second.stdout)["version"] == 2
  assert sorted(p.name for p in (workdir / "models" / "generator").iterdir()) == ["1", "2"]

  again = launch(*args, "--export_version=1", f"--workdir={workdir}")
  assert again.returncode == 2
  (line,) = _error_lines(again)
  assert line.startswith("tfpets: error: --export_version=1: ") and "never overwrites" in line
  assert "Traceback" not in again.stderr


def test_missing_or_wrong_inputs_end_in_one_line_naming_the_flag(tmp_path):
  missing = launch("--stage=export", f"--workdir={tmp_path / 'a'}")
  assert missing.returncode == 2
  assert _error_lines(missing) == [
    "tfpets: error: --export_model is required: one of generator, landmarks, classifier, superres"
  ]
  detector = launch(
    "--stage=export",
    "--export_model=landmarks",
    "--detector=/nonexistent/detector",
    f"--workdir={tmp_path / 'b'}",
  )
  assert detector.returncode == 2
  (line,) = _error_lines(detector)
  assert line.startswith("tfpets: error: --detector=/nonexistent/detector: no trained detector")
