"""Every stage answers a bad flag value with one line, `tfpets: error: ...`, and exit code 2.

Values absl validates (enums, bounds) are swept in this process for every flag of every stage;
values the stage or its library validates run the real launcher, one stage each.
"""

from __future__ import annotations

import concurrent.futures
import copy
import re

import pytest
from absl import flags, logging

from tests import conftest
from tests.conftest import REPO
from tfpets import cli
from tfpets.runtime import flags as runtime_flags

# A Python absl log record ("I1207 16:03:52.603678 1399 cli.py:58] ..."): progress, not an error.
ABSL_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+\.py:\d+\] ")

# One bad value per stage that the stage or its library (not absl) rejects, and what the error
# line must name. Every stage needs a row: a new stage without one fails test_every_stage_has_a_case.
CODE_VALIDATED = {
  "data": (["--subset=abc"], "--subset=abc"),
  "inspect": (["--records=/nonexistent/records"], "--records=/nonexistent/records"),
  "convert": (["--pickle=/nonexistent/network.pkl"], "--pickle=/nonexistent/network.pkl"),
  "landmarks": (["--records=/nonexistent/records"], "--records=/nonexistent/records"),
  "predict_landmarks": (
    ["--detector=/nonexistent/detector", f"--predict_images={REPO / 'README.md'}"],
    "--detector=/nonexistent/detector",
  ),
  "crop": (["--records=/nonexistent/records", "--crop_use_annotations"], "--records="),
  "gan": (["--records=/nonexistent/records"], "--records=/nonexistent/records"),
  "metrics": (["--network=/tmp", "--metrics_names=bogus"], "--metrics_names"),
  "generate": (["--network=/tmp", "--gen_seeds=1,x"], "--gen_seeds=1,x"),
  "export": (
    ["--export_model=generator", "--network=/nonexistent/network.pkl"],
    "--network=/nonexistent/network.pkl",
  ),
  "augment": (["--aug_label_from=per_class", "--aug_class_networks=x"], "--aug_class_networks=x"),
  "classify": (["--records=/nonexistent/records"], "--records=/nonexistent/records"),
  "evaluate": (["--classifier=/nonexistent/run"], "--classifier=/nonexistent/run"),
  "predict": (["--cls_images=/nonexistent/images"], "--cls_images=/nonexistent/images"),
  "convert_dbpn": (
    ["--dbpn_checkpoint=/nonexistent/DBPN_x4.pth"],
    "--dbpn_checkpoint=/nonexistent/DBPN_x4.pth",
  ),
  "superres": (
    ["--sr_model=/nonexistent/dbpn.keras", "--sr_images=/nonexistent/images"],
    "--sr_model=/nonexistent/dbpn.keras",
  ),
  "superres_eval": (
    ["--sr_model=/nonexistent/dbpn.keras", "--sr_eval_hr=/nonexistent/hr"],
    "--sr_model=/nonexistent/dbpn.keras",
  ),
  "experiment": (["--experiment_plan", "--experiment_subsets=0.1,2"], "--experiment_subsets"),
  "superres_train": (["--sr_train_images=/nonexistent/hr"], "--sr_train_images=/nonexistent/hr"),
}


@pytest.fixture(autouse=True)
def keep_log_verbosity():
  before = logging.get_verbosity()
  yield
  logging.set_verbosity(before)


def bad_value(flag: flags.Flag) -> str | None:
  """A value absl's own validation rejects for `flag`, or None when absl validates nothing."""
  parser = flag.parser
  if isinstance(parser, (flags.EnumParser, flags.EnumClassParser)):
    return "not_a_choice"
  lower = getattr(parser, "lower_bound", None)
  upper = getattr(parser, "upper_bound", None)
  if lower is not None:
    return str(lower - 1)
  if upper is not None:
    return str(upper + 1)
  return None


def validated_flags() -> list[tuple[str, str]]:
  """(stage, flag name) for every absl-validated flag of every stage and of the shared flags."""
  by_module = flags.FLAGS.flags_by_module_dict()
  aliases = runtime_flags.deprecated_aliases()
  out = []
  modules = {stage: module.__name__ for stage, module in cli.STAGE_MODULES.items()}
  modules["data"] = [modules["data"], runtime_flags.__name__]
  for stage, names in modules.items():
    for module_name in [names] if isinstance(names, str) else names:
      for flag in by_module.get(module_name, []):
        if flag.name not in aliases and bad_value(flag) is not None:
          out.append((stage, flag.name))
  return sorted(set(out))


VALIDATED = validated_flags()


def test_the_sweep_covers_enums_and_bounds_of_several_stages():
  stages = {stage for stage, _ in VALIDATED}
  assert {"data", "landmarks", "crop"} <= stages
  assert ("data", "strategy") in VALIDATED and ("data", "data_dedupe") in VALIDATED


@pytest.mark.parametrize("stage,name", VALIDATED, ids=[f"{s}-{n}" for s, n in VALIDATED])
def test_absl_validated_flag_gives_one_line_and_exit_2(stage, name, capsys):
  parser = copy.deepcopy(flags.FLAGS)
  parser.unparse_flags()
  value = bad_value(parser[name])
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_flags(["tfpets.launch", f"--stage={stage}", f"--{name}={value}"], parser)
  assert exit_info.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith("tfpets: error: ") and f"--{name}={value}" in lines[0]


def test_every_stage_has_a_case():
  assert sorted(CODE_VALIDATED) == sorted(cli.STAGE_MODULES)


def launch(args, tmp_path, extra_env=None):
  env = {"TF_CPP_MIN_LOG_LEVEL": None, **(extra_env or {})}  # the user's default: quiet
  return conftest.launch(*args, f"--workdir={tmp_path}", env=env, timeout=600)


def error_lines(stderr: str) -> list[str]:
  """stderr less absl log records (and the tfpets.ops notice of a stale or missing library)."""
  return [
    line
    for line in stderr.strip().splitlines()
    if not ABSL_RECORD.match(line) and not line.startswith("WARNING:absl:tfpets.ops:")
  ]


@pytest.mark.slow
def test_every_stage_words_its_own_validation_as_one_line(tmp_path):
  def run(stage):
    args, expected = CODE_VALIDATED[stage]
    return stage, expected, launch([f"--stage={stage}", *args], tmp_path / stage)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(run, sorted(CODE_VALIDATED)))
  for stage, expected, result in results:
    lines = error_lines(result.stderr)
    assert result.returncode == 2, (stage, result.stderr[-2000:])
    assert len(lines) == 1, (stage, lines)
    assert lines[0].startswith("tfpets: error: ") and expected in lines[0], (stage, lines)


def test_tensorflow_start_up_noise_is_hidden_unless_asked_for(tmp_path):
  args = ["--stage=inspect", "--records=/nonexistent/records"]
  quiet = launch(args, tmp_path / "quiet")
  assert quiet.returncode == 2 and len(error_lines(quiet.stderr)) == 1, quiet.stderr
  loud = launch(args, tmp_path / "loud", {"TF_CPP_MIN_LOG_LEVEL": "0"})
  assert loud.returncode == 2 and len(error_lines(loud.stderr)) > 1, loud.stderr


def test_a_deprecated_spelling_sets_the_new_flag_and_is_not_saved(tmp_path):
  result = launch(["--stage=data", "--splits=nonsense"], tmp_path)
  assert result.returncode == 2
  assert "--splits is deprecated; use --data_splits" in result.stderr
  assert error_lines(result.stderr)[-1].startswith("tfpets: error: --data_splits=nonsense:")
  saved = (tmp_path / "flags.txt").read_text().splitlines()
  assert "--data_splits=nonsense" in saved
  assert not any(line.startswith("--splits=") for line in saved)
