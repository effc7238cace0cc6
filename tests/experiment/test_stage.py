"""`--stage=experiment` through the launcher: the plan its flags make, its one-line errors, and a
tiny end-to-end run of real stages that resumes and never lets a synthetic image into a test split."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from tests.conftest import launch
from tfpets.data.tfrecord import shards


def _error_lines(result) -> list[str]:
  return [line for line in result.stderr.splitlines() if line.startswith("tfpets: error: ")]


def _flag_lines(path: pathlib.Path) -> list[str]:
  return [line for line in path.read_text().splitlines() if line.startswith("--")]


def _plan(root: pathlib.Path) -> dict:
  return {
    step["name"]: step for step in json.loads((root / "plan" / "plan.json").read_text())["steps"]
  }


def test_the_plan_follows_the_flags_and_forwards_given_shared_flags(tmp_path):
  (tmp_path / "gan.flags").write_text("--gan_kimg=0.5\n")
  root = tmp_path / "run"
  result = launch(
    "--stage=experiment",
    "--experiment_plan",
    "--experiment_subsets=0.5,1.0",
    "--experiment_variants=original,augmented",
    "--experiment_repeats=2",
    "--experiment_aug_ratio=0.5",
    "--model=efficientnet",
    "--preset=relative/preset",
    f"--experiment_stage_flags=gan={tmp_path / 'gan.flags'}",
    f"--workdir={root}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  steps = _plan(root)
  want = {"data/s50", "data/s100", "report"}
  for subset in ("s50", "s100"):
    want |= {f"gan/augmented/{subset}", f"fid/augmented/{subset}", f"augment/augmented/{subset}"}
    for variant in ("original", "augmented"):
      want |= {
        f"{kind}/{variant}/{subset}/r{k}" for kind in ("classify", "evaluate") for k in (0, 1)
      }
  assert set(steps) == want
  assert not (root / "plan" / "done").exists()  # only planned

  classify = _flag_lines(pathlib.Path(steps["classify/augmented/s50/r1"]["flagfile"]))
  assert "--model=efficientnet" in classify  # given on the command line: forwarded
  assert f"--preset={pathlib.Path('relative/preset').resolve()}" in classify
  assert "--model=vit" not in classify  # instead of the preset's
  assert f"--records={root / 'augment' / 'augmented' / 's50'}" in classify
  assert "--seed=1" in classify
  gan = _flag_lines(pathlib.Path(steps["gan/augmented/s50"]["flagfile"]))
  assert f"--flagfile={tmp_path / 'gan.flags'}" in gan and "--gan_cond" in gan
  augment = _flag_lines(pathlib.Path(steps["augment/augmented/s100"]["flagfile"]))
  assert "--aug_ratio=0.5" in augment
  evaluate = _flag_lines(pathlib.Path(steps["evaluate/augmented/s50/r0"]["flagfile"]))
  assert f"--records={root / 'data' / 's50'}" in evaluate  # the real records, not the grown ones


@pytest.mark.parametrize(
  "args, flag",
  [
    (["--experiment_subsets=0.1,2"], "--experiment_subsets"),
    (["--experiment_stage_flags=gan"], "--experiment_stage_flags=gan"),
    (["--experiment_variants=original,nonsense"], "--experiment_variants"),
    (["--experiment_report_only"], "--workdir"),
  ],
)
def test_bad_experiment_flags_end_in_one_line(tmp_path, args, flag):
  result = launch(
    "--stage=experiment",
    "--experiment_plan",
    *args,
    f"--workdir={tmp_path}",
    env={"TF_CPP_MIN_LOG_LEVEL": None},
  )
  assert result.returncode == 2, result.stderr[-2000:]
  errors = _error_lines(result)
  assert len(errors) == 1 and flag in errors[0], result.stderr[-2000:]


def _write_tiny_flagfiles(directory: pathlib.Path) -> list[str]:
  files = {
    "data": ["--synthetic_breeds=2", "--synthetic_per_breed=12", "--synthetic_size=64"],
    "gan": ["--gan_kimg=0.05", "--gan_kimg_per_tick=0.05"],
    "augment": ["--aug_records_per_shard=64"],
    "classify": ["--cls_vit_size=tiny", "--image_size=32", "--cls_epochs=1"],
  }
  out = []
  for stage, lines in files.items():
    path = directory / f"{stage}.flags"
    path.write_text("\n".join(lines) + "\n")
    out.append(f"{stage}={path}")
  return out


@pytest.mark.slow
def test_a_tiny_experiment_runs_resumes_and_keeps_test_splits_real(tmp_path):
  root = tmp_path / "run"
  args = [
    "--stage=experiment",
    "--experiment_subsets=1.0",
    "--experiment_variants=original,augmented",
    "--experiment_fid=fid500_full",
    "--experiment_stage_flags=" + ",".join(_write_tiny_flagfiles(tmp_path)),
    f"--workdir={root}",
  ]
  first = launch(*args, timeout=1200)
  assert first.returncode == 0, first.stderr[-3000:]

  # No synthetic image outside the grown training split; every evaluation read the real records.
  grown = shards.read_manifest(root / "augment" / "augmented" / "s100" / "records" / "shards")
  real = shards.read_manifest(root / "data" / "s100" / "records" / "shards")
  assert grown["synthetic"]["train"]["num_examples"] > 0
  for split in ("val", "test"):
    assert grown["synthetic"][split]["num_examples"] == 0
    assert grown["splits"][split] == real["splits"][split]

  # The table holds what each evaluation measured.
  rows = {row["variant"]: row for row in _csv_rows(root / "results" / "table.csv")}
  for variant in ("original", "augmented"):
    metrics = json.loads(
      (root / "evaluate" / variant / "s100" / "r0" / "reports" / "metrics.json").read_text()
    )
    matrix = np.asarray(metrics["confusion_matrix"])
    assert float(rows[variant]["top1"]) == pytest.approx(100 * np.trace(matrix) / matrix.sum())
    assert int(rows[variant]["n_test"]) == matrix.sum() == real["splits"]["test"]["num_examples"]
  fid = json.loads((root / "fid" / "augmented" / "s100" / "reports" / "metrics.json").read_text())
  assert float(rows["augmented"]["fid"]) == pytest.approx(_fid(fid))
  assert (root / "results" / "accuracy.png").is_file() and (
    root / "results" / "README.md"
  ).is_file()

  # Finished: a second run runs nothing.
  second = launch(*args, timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  summary = json.loads((root / "reports" / "experiment.json").read_text())
  assert summary["done"] == [] and summary["failed"] == []

  # A cell whose outputs are gone runs again, alone (and the report after it).
  (root / "evaluate" / "original" / "s100" / "r0" / "reports" / "metrics.json").unlink()
  third = launch(*args, timeout=600)
  assert third.returncode == 0, third.stderr[-3000:]
  summary = json.loads((root / "reports" / "experiment.json").read_text())
  assert sorted(summary["done"]) == ["evaluate/original/s100/r0", "report"]


def _csv_rows(path: pathlib.Path) -> list[dict]:
  import csv

  with open(path) as f:
    return list(csv.DictReader(f))


def _fid(report: dict) -> float:
  return next(v for k, v in report.items() if k.startswith("fid") and isinstance(v, (int, float)))
