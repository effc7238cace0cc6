"""Runs one test file under pytest inside `bazel test` (the py_test targets of //:BUILD).

Usage (by Bazel): pytest_runner.py TEST_FILE [PYTEST_ARGS...]

`TFPETS_OPS_LIBRARY` names the Bazel-built op library; the runner makes it
absolute (tests hand it to subprocesses that run elsewhere) and fails unless
`tfpets.ops` loads it, since the ops would otherwise fall back to their
reference paths and the target would pass without testing the Bazel build.
It also fails when no test passed (a skipped module would look like a pass),
writes Bazel's JUnit XML and keeps pytest's files in the test's own temporary
directory.
"""

from __future__ import annotations

import os
import sys

import pytest

LIBRARY_ENV = "TFPETS_OPS_LIBRARY"


class PassCounter:
  """A pytest plugin that counts passed test calls."""

  def __init__(self) -> None:
    self.passed = 0

  def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
      self.passed += 1


def load_bazel_library() -> str | None:
  """Points tfpets.ops at the Bazel library; returns an error message or None."""
  library = os.environ.get(LIBRARY_ENV)
  if not library:
    return f"{LIBRARY_ENV} is not set; run this with `bazel test`"
  os.environ[LIBRARY_ENV] = os.path.abspath(library)
  from tfpets import ops  # pylint: disable=g-import-not-at-top  (reads the variable above)

  if not ops.library_loaded():
    return f"tfpets.ops did not load {os.environ[LIBRARY_ENV]}"
  return None


def pytest_args(test_file: str, extra: list[str]) -> list[str]:
  # One process: Bazel runs its targets side by side already (pytest.ini asks for two).
  args = [test_file, "-q", "-p", "no:cacheprovider", "-n", "0", *extra]
  if "XML_OUTPUT_FILE" in os.environ:  # Set by `bazel test`: per-test results.
    args.append(f"--junitxml={os.environ['XML_OUTPUT_FILE']}")
  if "TEST_TMPDIR" in os.environ:
    args.append(f"--basetemp={os.path.join(os.environ['TEST_TMPDIR'], 'pytest')}")
  return args


def main(argv: list[str]) -> int:
  if not argv:
    print(f"usage: {sys.argv[0]} TEST_FILE [PYTEST_ARGS...]", file=sys.stderr)
    return 2
  error = load_bazel_library()
  if error:
    print(f"pytest_runner: {error}", file=sys.stderr)
    return 1
  counter = PassCounter()
  status = pytest.main(pytest_args(argv[0], argv[1:]), plugins=[counter])
  if status == 0 and counter.passed == 0:
    print(f"pytest_runner: no test in {argv[0]} passed (all skipped?)", file=sys.stderr)
    return 1
  return int(status)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
