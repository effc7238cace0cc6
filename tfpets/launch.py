"""tfpets launcher: `python -m tfpets.launch --stage=NAME [--flagfile=FILE] [flags]`.

Every stage shares the common flags (--data, --records, --workdir, --seed, --strategy, --tpu,
--precision, ...) and adds its own; `--helpfull` documents them all. Outputs of a run go under
--workdir, with the resolved flags saved as <workdir>/flags.txt (usable as --flagfile).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Iterator, MutableMapping, Sequence

# TensorFlow's CPU allocator hands large tensors to malloc, which maps fresh zero-filled pages for
# each: on CPU that page faulting costs more than the math of element-wise ops (benchmarks/
# RESULTS.md, section 1.1). TensorFlow's own BFC pool reuses memory. It must be chosen before
# TensorFlow starts; a value the user set wins.
ALLOCATOR_DEFAULTS = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}


def set_allocator_defaults(environ: MutableMapping[str, str]) -> None:
  for key, value in ALLOCATOR_DEFAULTS.items():
    environ.setdefault(key, value)


# TensorFlow's C++ start-up lines (oneDNN and CPU-feature notices, CUDA probing errors on a host
# without a GPU) mean nothing to a user running a stage. Level 3 hides what TensorFlow logs once
# running; what it prints while loading, before its logger starts, only a silenced stderr hides.
QUIET_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "3"}
_VERBOSITY_FLAG = re.compile(r"^--?(v|verbosity)(=|$)")


def wants_tensorflow_logs(argv: Sequence[str], environ: MutableMapping[str, str]) -> bool:
  """True when the user asked for logs: --verbosity (or -v) given, or TF_CPP_MIN_LOG_LEVEL set."""
  return "TF_CPP_MIN_LOG_LEVEL" in environ or any(_VERBOSITY_FLAG.match(a) for a in argv[1:])


@contextlib.contextmanager
def silenced_stderr(enabled: bool = True) -> Iterator[None]:
  """Sends file descriptor 2 to /dev/null inside the block (C++ writes bypass sys.stderr)."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def main() -> None:
  """`python -m tfpets.launch` and the `tfpets` command."""
  set_allocator_defaults(os.environ)
  quiet = not wants_tensorflow_logs(sys.argv, os.environ)
  if quiet:
    os.environ.update(QUIET_DEFAULTS)
  with silenced_stderr(quiet):
    import tensorflow  # noqa: F401  (loaded here only so that its start-up lines can be hidden)
  from tfpets import cli

  cli.run()


# Everything else lives in tfpets.cli: worker processes started with 'spawn' re-import this module,
# and must not pay for TensorFlow and every stage when they do.
if __name__ == "__main__":
  main()
