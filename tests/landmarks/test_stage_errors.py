"""Each validated flag of the landmarks, crop and predict_landmarks stages, given a bad value, ends
the run with one line `tfpets: error: --flag=value: ...` and exit code 2, before anything trains;
old spellings of renamed flags still work."""

from __future__ import annotations

import pytest
from absl import flags, logging

from tfpets import cli


@pytest.fixture
def launcher(tmp_path, capsys):
  """Runs the launcher's main in this process on a command line; returns (exit code, stderr)."""
  absl_handlers = list(logging.get_absl_logger().handlers)
  verbosity = logging.get_verbosity()

  def launch(*args):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["tfpets.launch", f"--workdir={tmp_path / 'run'}", *args])
    try:
      with pytest.raises(SystemExit) as exited:
        cli.main(["tfpets.launch"])
    finally:
      flags.FLAGS.unparse_flags()
      for handler in logging.get_absl_logger().handlers:
        if handler not in absl_handlers:  # the run's log.txt
          logging.get_absl_logger().removeHandler(handler)
          handler.close()
    return exited.value.code, capsys.readouterr().err

  yield launch
  logging.set_verbosity(verbosity)


def _one_error_line(stderr: str) -> str:
  assert "Traceback" not in stderr
  lines = [line for line in stderr.splitlines() if line.startswith("tfpets: error:")]
  assert len(lines) == 1 and stderr.rstrip().endswith(lines[0]), stderr
  return lines[0][len("tfpets: error: ") :]


@pytest.mark.parametrize(
  "args, expected",
  [
    (["--lm_num_landmarks=7"], "--lm_num_landmarks=7: must be 9 (Kaggle CAT) or 5"),
    (["--num_landmarks=7"], "--lm_num_landmarks=7: must be 9"),  # the old spelling
    (["--lm_heatmap_stride=2"], "--lm_heatmap_stride=2: must be one of 4, 8"),
    (["--lm_roi_size=72"], "--lm_roi_size=72: must be at least 32 pixels, and a multiple of 16"),
    (["--image_size=40"], "--image_size=40: must be at least 32 pixels, and a multiple of 16"),
    (["--lm_roi_candidate_scales=0.7,x"], "--lm_roi_candidate_scales=0.7,x: must be numbers"),
    (["--lm_roi_candidate_scales=0.7,0"], "--lm_roi_candidate_scales=0.7,0.0: must be positive"),
    (
      ["--lm_roi_candidates=3", "--lm_head=dense"],
      "--lm_roi_candidates=3: more than one candidate needs head 'heatmap'",
    ),
    (["--lm_eval_split=holdout"], "--lm_eval_split=holdout: no such split in"),
    (["--lm_backbone_weights=/nowhere/w.h5"], "--lm_backbone_weights=/nowhere/w.h5: no such file"),
    (
      ["--lm_roi_candidates=2", "--lm_concurrent_stages", "--lm_train_minutes=1"],
      "--lm_verifier_seconds=60.0: must be shorter than train_minutes (1), so that stage 1",
    ),
  ],
)
def test_landmarks_stage_names_the_bad_flag(launcher, tiny_shards, args, expected):
  code, stderr = launcher("--stage=landmarks", f"--records={tiny_shards}", *args)
  assert code == 2
  assert _one_error_line(stderr).startswith(expected)


@pytest.mark.parametrize("stage", ["landmarks", "crop"])
def test_stages_reading_records_name_a_missing_dataset(launcher, tmp_path, stage):
  code, stderr = launcher(f"--stage={stage}", f"--records={tmp_path / 'none'}")
  assert code == 2
  message = _one_error_line(stderr)
  assert message.startswith(f"--records={tmp_path / 'none'}: no converted dataset there")


def test_crop_names_a_missing_detector(launcher, tiny_shards, tmp_path):
  code, stderr = launcher("--stage=crop", f"--records={tiny_shards}", f"--detector={tmp_path}")
  assert code == 2
  assert _one_error_line(stderr).startswith(f"--detector={tmp_path}: no trained detector there")


@pytest.mark.parametrize(
  "images, problem",
  [
    ("", "must name an image file, a folder or a glob pattern"),
    ("x/*.png", "no image files there"),
  ],
)
def test_predict_landmarks_names_images_that_are_not_there(launcher, images, problem):
  code, stderr = launcher("--stage=predict_landmarks", f"--images={images}")  # the old spelling
  assert code == 2
  assert _one_error_line(stderr) == f"--predict_images={images}: {problem}"


def test_predict_landmarks_names_a_missing_detector(launcher, tmp_path):
  image = tmp_path / "cat.png"
  image.write_bytes(b"any bytes: the detector is looked for first")
  code, stderr = launcher(
    "--stage=predict_landmarks", f"--predict_images={image}", f"--detector={tmp_path / 'no'}"
  )
  assert code == 2
  assert _one_error_line(stderr).startswith(f"--detector={tmp_path / 'no'}: ")


def test_old_spellings_set_the_new_flags():
  old_spellings = [
    "--roi_candidate_scales=0.7,0.5",
    "--reduce_lr_on_plateau_patience=5",
    "--flip_horizontal",
    "--use_annotations",
    "--no_head=skip",
    "--images=a.jpg",
  ]
  try:
    flags.FLAGS(["tfpets.launch", "--stage=landmarks", *old_spellings])
    values = {name: flags.FLAGS[name].value for name in flags.FLAGS}
  finally:
    flags.FLAGS.unparse_flags()
  assert values["lm_roi_candidate_scales"] == ["0.7", "0.5"]
  assert values["lm_plateau_patience"] == 5
  assert values["lm_flip_horizontal"] is True
  assert values["crop_use_annotations"] is True
  assert values["crop_no_head"] == "skip"
  assert values["predict_images"] == "a.jpg"
