"""`--stage=gan` through the real launcher: bad flag values end as one line and exit code 2, and a
tiny run prints where its outputs are and continues, not restarts, when run again."""

from __future__ import annotations

import json
import os

import pytest

from tests import conftest
from tests.gan.test_training_loop import write_records


def launch(*flags, cwd=None):
  # The user's default: TensorFlow's start-up lines hidden by the launcher itself.
  return conftest.launch(
    "--stage=gan", *flags, cwd=cwd, env={"TF_CPP_MIN_LOG_LEVEL": None}, timeout=900
  )


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return write_records(tmp_path_factory.mktemp("records") / "stylegan")


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--gan_metrics=fid", "--gan_metrics=fid: unknown metric 'fid'"),
    ("--gan_p=0.3", "--gan_p=0.3: needs aug=fixed"),
    ("--gan_res=12", "--gan_res=12: must be a power of two from 4 to the records' 16 px"),
    ("--gan_resume=/nonexistent/network.pkl", "--gan_resume=/nonexistent/network.pkl: no such"),
    ("--gan_cond", "--gan_cond=True: the records have no labels"),
    ("--gan_aug=sometimes", "flag --gan_aug=sometimes: value should be one of <ada|fixed|noaug>"),
    ("--gan_preset=cpu", "--gan_preset=cpu: trains at 32 px, above the records' 16 px"),
  ],
)
def test_a_bad_flag_value_is_one_line_and_exit_2(records, tmp_path, flag, message):
  result = launch(f"--records={records}", f"--workdir={tmp_path}", "--gan_preset=demo", flag)
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"tfpets: error: {message}"), result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_records_without_stylegan_files_is_one_line(tmp_path):
  result = launch(f"--records={tmp_path}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
    f"tfpets: error: --records={tmp_path}: no StyleGAN records there "
    "(expected records/stylegan/*-rXX.tfrecords); convert a dataset with --stage=data first"
  )


@pytest.mark.slow
def test_a_tiny_run_prints_its_outputs_and_a_rerun_continues(records, tmp_path):
  flags = [
    f"--records={records}",
    f"--workdir={tmp_path / 'run'}",
    "--gan_preset=demo",
    "--gan_res=8",
    "--gan_batch=4",
    "--gan_kimg=0.008",
    "--gan_kimg_per_tick=0.004",
    "--gan_metrics=none",
  ]
  first = launch(*flags)
  assert first.returncode == 0, first.stderr[-3000:]
  summary = json.loads(first.stdout[first.stdout.index("{") :])
  assert summary["kimg"] == 0.008 and summary["ticks"] == 2
  assert os.path.isfile(summary["last_grid"]) and summary["metric_files"] == []
  assert os.path.isfile(os.path.join(summary["last_snapshot"], "G_ema.weights.h5"))
  assert "tick 0 " in first.stderr and "tick 1 " in first.stderr  # one progress line per tick

  longer = launch(*flags[:-3], "--gan_kimg=0.012", *flags[-2:])
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert "resumed from" in longer.stderr and "tick 2 " in longer.stderr
  assert "tick 0 " not in longer.stderr
  assert json.loads(longer.stdout[longer.stdout.index("{") :])["kimg"] == 0.012
