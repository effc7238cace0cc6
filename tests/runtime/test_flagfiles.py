"""Every shipped flagfile in launch/ names only real flags with valid values."""

from __future__ import annotations

import copy

import pytest
from absl import flags, logging

from tests.conftest import REPO
from tfpets import cli

FLAGFILES = sorted((REPO / "launch").glob("*.flags"))
# Flags for one stage's steps of --stage=experiment (--experiment_stage_flags=STAGE=FILE): named
# after their stage, with no --stage of their own.
STEP_FLAGFILES = sorted((REPO / "launch" / "experiment").glob("*.flags"))


@pytest.fixture(autouse=True)
def keep_log_verbosity():
  """Parsing sets absl's --verbosity, which changes the process-wide log level."""
  before = logging.get_verbosity()
  yield
  logging.set_verbosity(before)


@pytest.mark.parametrize("path", FLAGFILES, ids=[p.name for p in FLAGFILES])
def test_flagfile_parses_with_the_launchers_flags(path):
  parser = copy.deepcopy(flags.FLAGS)
  parser.unparse_flags()
  parser(["tfpets.launch", f"--flagfile={path}"])
  assert parser["stage"].value in cli.STAGE_MODULES
  _check_values(parser, path)


@pytest.mark.parametrize("path", STEP_FLAGFILES, ids=[p.name for p in STEP_FLAGFILES])
def test_step_flagfile_parses_with_its_stage(path):
  stage = path.stem.split("_")[0]
  assert stage in cli.STAGE_MODULES, f"{path.name} is not named after a stage"
  parser = copy.deepcopy(flags.FLAGS)
  parser.unparse_flags()
  parser(["tfpets.launch", f"--stage={stage}", f"--flagfile={path}"])
  _check_values(parser, path)


def _check_values(parser, path) -> None:
  """Each --name=value line of the file (not the files it includes) holds in the parsed flags,
  unless a later line of the file sets the same flag again."""
  last = {}
  for line in path.read_text().splitlines():
    line = line.strip()
    if line.startswith("--") and "=" in line and not line.startswith("--flagfile="):
      name, value = line[2:].split("=", 1)
      last[name] = value
  for name, value in last.items():
    assert parser[name].value == parser[name].parser.parse(value), f"{path.name}: --{name}"


def test_a_misspelt_flag_in_a_flagfile_is_rejected(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("--stage=landmarks\n--lm_train_minuts=3\n")
  parser = copy.deepcopy(flags.FLAGS)
  parser.unparse_flags()
  with pytest.raises(flags.UnrecognizedFlagError, match="lm_train_minuts"):
    parser(["tfpets.launch", f"--flagfile={bad}"])
