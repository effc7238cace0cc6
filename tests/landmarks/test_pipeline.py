"""The detector's whole training run from Python, without absl flags: the split of the time budget
between the stages, the checks made before anything trains, and a run on tiny records."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from tfpets.data import decode
from tfpets.landmarks import augment, pipeline, train
from tfpets.landmarks import model as model_lib
from tfpets.runtime import training
from tfpets.runtime.workdir import Workdir

CONFIG = model_lib.DetectorConfig(image_size=32, roi_size=32, units=16)


def test_without_a_budget_no_stage_has_a_deadline():
  assert pipeline.stage_deadlines(1000.0, 0.0, 0.6, False, 0.0) == {"bbox": 0.0, "landmarks": 0.0}
  assert pipeline.stage_deadlines(1000.0, 0.0, 0.6, True, 60.0) == {"bbox": 0.0, "landmarks": 0.0}


def test_in_turn_stage_one_ends_at_its_share_and_stage_two_with_the_budget():
  # 10 minutes from t = 1000 s: stage 1 has 0.6 of 600 s; the verifier, if any, and stage 2 share
  # what it leaves.
  for verifier_seconds in (0.0, 60.0):
    deadlines = pipeline.stage_deadlines(1000.0, 10.0, 0.6, False, verifier_seconds)
    assert deadlines == {"bbox": 1360.0, "landmarks": 1600.0}


def test_concurrently_stage_one_leaves_the_verifier_its_seconds_before_the_end():
  assert pipeline.stage_deadlines(1000.0, 10.0, 0.6, True, 200.0) == {
    "bbox": 1400.0,
    "landmarks": 1600.0,
  }
  # Without a verifier after it, stage 1 trains beside stage 2 for the whole budget.
  assert pipeline.stage_deadlines(1000.0, 10.0, 0.6, True, 0.0) == {
    "bbox": 1600.0,
    "landmarks": 1600.0,
  }


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("train_minutes", -1.0, "^train_minutes=-1.0: must not be negative$"),
    ("bbox_share", 1.0, "^bbox_share=1.0: must lie between 0 and 1$"),
    ("verifier_seconds", 0.0, "^verifier_seconds=0.0: must be positive$"),
    ("verifier_images", 0, "^verifier_images=0: must be at least 1$"),
    ("crop_margin", -0.1, "^crop_margin=-0.1: must not be negative$"),
  ],
)
def test_pipeline_options_refuse_bad_values_naming_the_argument(field, value, message):
  with pytest.raises(ValueError, match=message):
    pipeline.PipelineOptions(**{field: value})


def test_inputs_are_checked_before_anything_trains(tiny_shards, tmp_path):
  def check(records=tiny_shards, config=CONFIG, train_options=train.TrainOptions(), **options):
    return pipeline.check_inputs(
      records, config, train_options, pipeline.PipelineOptions(**options)
    )

  assert check() == tiny_shards
  assert check(records=tiny_shards.parent.parent) == tiny_shards  # the data stage's workdir
  with pytest.raises(ValueError, match=r"^records='.*nowhere': no converted dataset there"):
    check(records=tmp_path / "nowhere")
  with pytest.raises(
    ValueError, match=r"^eval_split='holdout': no such split in .*: test, train, val\)$"
  ):
    check(eval_split="holdout")
  with pytest.raises(ValueError, match="^concurrent_stages=True: trains two stages on one device"):
    pipeline.check_inputs(
      tiny_shards, CONFIG, train.TrainOptions(), pipeline.PipelineOptions(concurrent_stages=True), 2
    )
  with pytest.raises(ValueError, match=r"^backbone_weights='.*missing.h5': no such file$"):
    check(train_options=train.TrainOptions(backbone_weights=str(tmp_path / "missing.h5")))
  with_verifier = dataclasses.replace(CONFIG, roi_candidates=2)
  concurrent = dict(concurrent_stages=True, train_minutes=1.0)
  with pytest.raises(
    ValueError,
    match=r"^verifier_seconds=60.0: must be shorter than train_minutes \(1\), so that stage 1",
  ):
    check(config=with_verifier, verifier_seconds=60.0, **concurrent)
  assert check(config=with_verifier, verifier_seconds=30.0, **concurrent) == tiny_shards


@pytest.mark.slow
def test_a_run_from_python_trains_evaluates_reports_and_resumes(tiny_shards, tmp_path):
  workdir = Workdir(tmp_path / "run")
  train_options = train.TrainOptions(
    epochs=1, steps_per_epoch=1, batch_size=4, batch_norm_batches=1, learning_rate=0.01
  )
  options = pipeline.PipelineOptions(concurrent_stages=True, export=False)
  arguments = (CONFIG, train_options, augment.AugmentOptions(), options)
  report = pipeline.train_detector(tiny_shards, workdir, *arguments)

  path = workdir.root / "reports" / pipeline.REPORT_FILE
  assert report["report"] == str(path)
  written = {k: v for k, v in report.items() if k != "report"}
  assert json.loads(path.read_text()) == json.loads(json.dumps(written))
  assert report["split"] == "test" and report["records"] == str(tiny_shards)
  assert report["config"] == dataclasses.asdict(CONFIG)
  metrics = report["metrics"]
  assert metrics["images"] == 4 and metrics["images_with_landmarks"] == 4
  assert np.isfinite(metrics["rmse_px"]) and 0.0 <= metrics["box_iou"] <= 1.0
  assert metrics["roi_rmse_224_px"] == pytest.approx(metrics["roi_rmse_frame_px"] * 224 / 32)
  assert set(report["stages"]) == {"bbox", "landmarks"}
  assert all(summary["epochs_run"] == 1 for summary in report["stages"].values())
  assert "export" not in report
  models = workdir.root / "models"
  assert model_lib.DetectorConfig.load(models) == CONFIG
  for stage in ("bbox", "landmarks"):
    assert (models / model_lib.MODEL_FILES[stage]).is_file()
    assert training.finished_summary(workdir.root / "checkpoints" / stage) is not None
  overlays = decode.read_image(str(workdir.root / "images" / "test_predicted_vs_true.png"))
  assert overlays.width == overlays.height > 256  # the 4 test images in 2 x 2 enlarged tiles
  assert set(pipeline.headline(report)) == {
    "report",
    *pipeline.HEADLINE_METRICS,
    "seconds_to_trained_models",
    "cpu_seconds_to_trained_models",
  }

  again = pipeline.train_detector(tiny_shards, workdir, *arguments)  # done: loaded, not trained
  assert again["stages"] == report["stages"]
  assert again["metrics"]["rmse_px"] == pytest.approx(metrics["rmse_px"], rel=1e-5)
