"""Every shipped flagfile in launch/ names only real flags with valid values."""

from __future__ import annotations

import copy

import pytest
from absl import flags, logging

from tests.conftest import REPO
from tfpets import cli

FLAGFILES = sorted((REPO / "launch").glob("*.flags"))


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
  for line in path.read_text().splitlines():
    line = line.strip()
    if line.startswith("--") and "=" in line:
      name, value = line[2:].split("=", 1)
      assert parser[name].value == parser[name].parser.parse(value), f"{path.name}: --{name}"


def test_a_misspelt_flag_in_a_flagfile_is_rejected(tmp_path):
  bad = tmp_path / "bad.flags"
  bad.write_text("--stage=landmarks\n--lm_train_minuts=3\n")
  parser = copy.deepcopy(flags.FLAGS)
  parser.unparse_flags()
  with pytest.raises(flags.UnrecognizedFlagError, match="lm_train_minuts"):
    parser(["tfpets.launch", f"--flagfile={bad}"])
