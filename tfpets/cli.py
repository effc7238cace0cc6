"""The launcher behind `python -m tfpets.launch` and the `tfpets` command: stage registry,
flag parsing, workdir set-up and one-line errors."""

from __future__ import annotations

import importlib
import logging as std_logging
import os
import sys

from absl import app, flags, logging

from tfpets import stages
from tfpets.data.decode import ImageDecodeError
from tfpets.errors import ArgumentError, UsageError
from tfpets.runtime import flags as common_flags  # noqa: F401  (defines the shared flags)
from tfpets.runtime.workdir import Workdir

STAGE_MODULES = {name: importlib.import_module(path) for name, path in stages.STAGES.items()}


def _stage_help() -> str:
  lines = [
    f"{name}: {(m.__doc__ or '').strip().splitlines()[0]}" for name, m in STAGE_MODULES.items()
  ]
  return "Stage to run. " + "; ".join(lines)


STAGE = flags.DEFINE_enum("stage", None, list(STAGE_MODULES), _stage_help())
flags.mark_flag_as_required("stage")


def default_workdir(stage: str, data: str) -> str:
  """tfrecords/<dataset name> for the data stage (the default records root), runs/<stage> else."""
  if stage != "data":
    return os.path.join("runs", stage)
  kind, _, location = data.partition(":")
  name = os.path.splitext(os.path.basename(os.path.normpath(location)))[0] if location else kind
  return os.path.join("tfrecords", name)


def _log_to_file(workdir: Workdir) -> None:
  handler = std_logging.FileHandler(workdir.root / "log.txt")
  handler.setFormatter(std_logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  logging.get_absl_logger().addHandler(handler)


def run_stage(stage: str) -> None:
  """Runs a stage with the parsed flags; the tests call this too."""
  import keras  # deferred: --helpfull and flag errors should not wait for TensorFlow

  from tfpets.runtime import context, precision, strategy

  FLAGS = flags.FLAGS
  module = STAGE_MODULES[stage]
  workdir = Workdir(FLAGS.workdir or default_workdir(stage, FLAGS.data))
  if not FLAGS.workdir:
    FLAGS.workdir = str(workdir.root)
  if strategy.is_chief_task(FLAGS.strategy):  # workers of a multi-worker run share the workdir
    workdir.root.mkdir(parents=True, exist_ok=True)
    workdir.save_flags(FLAGS)
    _log_to_file(workdir)
  logging.info("stage %s, workdir %s", stage, workdir.root)

  strategy.set_op_threads(FLAGS.intra_op_threads, FLAGS.inter_op_threads)
  ctx = context.RunContext(stage, workdir, FLAGS)
  if getattr(module, "NEEDS_STRATEGY", True):
    ctx.strategy  # pylint: disable=pointless-statement  # before any op, so CPUs can be split
  precision.set_precision(FLAGS.precision)
  keras.utils.set_random_seed(FLAGS.seed)
  module.run(ctx)


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])!r}; flags take the form --name=value")
  common_flags.warn_deprecated_spellings()
  try:
    run_stage(STAGE.value)
  except ArgumentError as e:
    _fail(str(as_flag_error(e, STAGE_MODULES[STAGE.value])))
  except (UsageError, ImageDecodeError, FileNotFoundError) as e:
    _fail(str(e))


def as_flag_error(error: ArgumentError, module) -> UsageError:
  """The library's error about its argument, worded with the stage flag that argument came from."""
  flag_name = getattr(module, "ARGUMENT_FLAGS", {}).get(error.argument)
  return error.as_flag(flag_name) if flag_name else error


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's parsing, with a bad or missing flag reported as one line like every other user error."""
  try:
    return flag_values(argv)
  except flags.Error as e:
    _fail(f"{str(e).rstrip('.')}; see --helpfull")


def _fail(message: str) -> None:
  print(f"tfpets: error: {message}", file=sys.stderr)
  sys.exit(2)


def run() -> None:
  app.run(main, flags_parser=parse_flags)
