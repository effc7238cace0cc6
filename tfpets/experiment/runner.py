"""Runs a plan's steps as subprocesses, deps first, some at once, and resumes where it stopped.

A step is done when its marker `<root>/plan/done/<name>.done` exists and every output it declares
is in its workdir. A marker whose outputs are missing is stale: the step runs again, and only it;
its finished dependents keep their results unless their own outputs are missing too. The report
(a step that `collects`) runs again whenever one of its deps finished after it did. Markers are
written atomically after a step exits 0 with its outputs, never for a step that failed or was
stopped.

`python -m tfpets.experiment.runner mark ROOT NAME` writes a step's marker (the Makefile's
recipes) and `python -m tfpets.experiment.runner stale ROOT` removes the stale markers of a plan
(make trusts markers and does not look at outputs).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from typing import Mapping, Optional, Sequence

from absl import logging

from tfpets.errors import ArgumentError
from tfpets.experiment import plan as plan_lib
from tfpets.experiment.plan import Step

DEFAULT_LAUNCHER = plan_lib.DEFAULT_LAUNCHER
LOG_TAIL_LINES = 20
_TERMINATE_GRACE_SECONDS = 10.0


class _Terminated(BaseException):
  """SIGTERM reached the runner: stop its steps as Ctrl-C would."""


# ------------------------------------------------------------------------------------------------
# Markers.
# ------------------------------------------------------------------------------------------------


def write_marker(step: Step, root: str, seconds: Optional[float], command: Sequence[str]) -> str:
  """Writes the done marker of `step`, whose outputs must all exist (else an ArgumentError)."""
  found, missing = plan_lib.find_outputs(step)
  if missing:
    raise ArgumentError("step", step.name, f"finished without its outputs {', '.join(missing)}")
  now = time.time()
  record = {
    "step": step.name,
    "outputs": found,
    "seconds": None if seconds is None else round(seconds, 3),
    "finished": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(),
    "finished_unix": now,
    "command": list(command),
  }
  path = plan_lib.marker_path(root, step.name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
  with open(tmp, "w") as f:
    f.write(json.dumps(record, indent=2) + "\n")
  os.replace(tmp, path)
  return path


def _marker_mtime(root: str, name: str) -> Optional[int]:
  try:
    return os.stat(plan_lib.marker_path(root, name)).st_mtime_ns
  except FileNotFoundError:
    return None


def remove_stale_markers(steps: Sequence[Step], root: str) -> list[str]:
  """Deletes the markers whose step's outputs are missing; returns those steps' names."""
  stale = []
  for step in steps:
    marker = plan_lib.marker_path(root, step.name)
    if os.path.exists(marker):
      _, missing = plan_lib.find_outputs(step)
      if missing:
        logging.warning(
          "%s: marked done but %s missing; it will run again", step.name, ", ".join(missing)
        )
        os.remove(marker)
        stale.append(step.name)
  return stale


def steps_to_run(steps: Sequence[Step], root: str) -> list[str]:
  """Names of the steps that are not done, in plan order (removes stale markers on the way)."""
  remove_stale_markers(steps, root)
  pending = []
  for step in steps:
    mtime = _marker_mtime(root, step.name)
    if mtime is None:
      pending.append(step.name)
    elif step.collects and any(
      d in pending or (_marker_mtime(root, d) or 0) > mtime for d in step.deps
    ):
      logging.info("%s: a dep finished after it; it will run again", step.name)
      pending.append(step.name)
  return pending


# ------------------------------------------------------------------------------------------------
# Running.
# ------------------------------------------------------------------------------------------------


def _tail(path: str, lines: int = LOG_TAIL_LINES) -> list[str]:
  try:
    with open(path, errors="replace") as f:
      return [line.rstrip("\n") for line in collections.deque(f, maxlen=lines)]
  except FileNotFoundError:
    return []


class _StepProcess:
  """One step's subprocess, output to its log; `run` waits for it in a thread of its own."""

  def __init__(self, step: Step, root: str, launcher: Sequence[str], environ: Mapping[str, str]):
    self.step, self.root = step, root
    self.command = plan_lib.step_command(step, root, launcher)
    self.environ = environ
    self.log = plan_lib.log_path(root, step.name)
    self.process: Optional[subprocess.Popen] = None
    self.started = time.monotonic()
    self._lock = threading.Lock()
    self._stopped = False

  def run(self, events: queue.Queue) -> None:
    returncode = None
    try:
      os.makedirs(os.path.dirname(self.log), exist_ok=True)
      with open(self.log, "wb") as log:
        log.write(f"# {' '.join(self.command)}\n".encode())
        log.flush()
        with self._lock:
          if not self._stopped:
            # A session of its own, so that stopping the step reaches the processes it starts.
            self.process = subprocess.Popen(
              self.command,
              stdout=log,
              stderr=subprocess.STDOUT,
              stdin=subprocess.DEVNULL,
              env=dict(self.environ),
              start_new_session=True,
            )
        if self.process is not None:
          returncode = self.process.wait()
    except OSError as e:
      with open(self.log, "a") as log:
        log.write(f"cannot start the step: {e}\n")
    events.put((self.step.name, returncode, time.monotonic() - self.started))

  def stop(self) -> None:
    with self._lock:
      self._stopped = True
      process = self.process
    if process is None or process.poll() is not None:
      return
    try:
      os.killpg(process.pid, signal.SIGTERM)
      process.wait(_TERMINATE_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
    except ProcessLookupError:
      pass


def run_plan(
  steps: Sequence[Step],
  root: str | os.PathLike,
  *,
  jobs: int = 1,
  launcher: Sequence[str] = DEFAULT_LAUNCHER,
  env: Optional[Mapping[str, str]] = None,
  stop_on_failure: bool = True,
) -> dict:
  """Runs every step of `steps` that is not done, each after its deps, up to `jobs` at once.

  Writes the plan's files first (`plan.write_plan`), so that the flagfiles are those of `steps`.
  A step runs as `launcher + ["--flagfile=<its flagfile>"]` with this process's environment plus
  `env`, its output in `<root>/plan/logs/<name>.log`. A step that fails (non-zero exit, or no
  outputs) stops its dependents; the others go on unless `stop_on_failure`, which starts nothing
  more (running steps finish). Ctrl-C or SIGTERM stops the running steps, writes no marker for them
  and re-raises (SIGTERM as SystemExit(143)).

  Returns {"done": names run now, "skipped": names done before, "failed": [{"name", "log",
  "error", "log_tail"}], "not_run": names left (after a failure)}.
  """
  if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
    raise ArgumentError("jobs", jobs, "a whole number of at least 1")
  root = os.path.abspath(os.fspath(root))
  steps = plan_lib.topological_order(steps)
  plan_lib.write_plan(steps, root, launcher)
  pending = steps_to_run(steps, root)
  skipped = [s.name for s in steps if s.name not in pending]
  for name in skipped:
    logging.info("%s: done before, skipped", name)
  scheduler = _Scheduler(steps, root, pending, jobs, launcher, env, stop_on_failure)
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    scheduler.run()
  except (KeyboardInterrupt, _Terminated) as e:
    scheduler.stop_all()
    if isinstance(e, _Terminated):
      raise SystemExit(128 + signal.SIGTERM) from None
    raise
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  return {
    "done": scheduler.done,
    "skipped": skipped,
    "failed": scheduler.failed,
    "not_run": [n for n in pending if n not in scheduler.finished],
  }


def _raise_terminated(signum, frame):
  raise _Terminated()


class _Scheduler:
  """Starts ready steps in plan order; the main thread alone writes markers and keeps state."""

  def __init__(self, steps, root, pending, jobs, launcher, env, stop_on_failure):
    self.by_name = {s.name: s for s in steps}
    self.root, self.pending, self.jobs = root, list(pending), jobs
    self.launcher, self.stop_on_failure = list(launcher), stop_on_failure
    self.environ = {**os.environ, **(env or {})}
    self.available = {s.name for s in steps if s.name not in pending}  # done, deps may use them
    self.finished: set[str] = set()  # run now, successfully or not
    self.blocked: set[str] = set()
    self.running: dict[str, _StepProcess] = {}
    self.events: queue.Queue = queue.Queue()
    self.done: list[str] = []
    self.failed: list[dict] = []
    self.stopping = False

  def run(self) -> None:
    while True:
      self._start_ready()
      if not self.running:
        return
      try:
        name, returncode, seconds = self.events.get(timeout=0.5)
      except queue.Empty:
        continue
      self._finish(name, returncode, seconds)

  def _start_ready(self) -> None:
    for name in self.pending:
      if self.stopping or len(self.running) >= self.jobs:
        return
      if name in self.running or name in self.finished or name in self.blocked:
        continue
      step = self.by_name[name]
      if any(d in self.blocked or d in self.failed_names for d in step.deps):
        self.blocked.add(name)
        logging.warning("%s: not run, a dep failed", name)
        continue
      if all(d in self.available for d in step.deps):
        process = _StepProcess(step, self.root, self.launcher, self.environ)
        self.running[name] = process
        logging.info("start %s (log: %s)", name, process.log)
        threading.Thread(target=process.run, args=(self.events,), daemon=True).start()

  @property
  def failed_names(self) -> set[str]:
    return {f["name"] for f in self.failed}

  def _finish(self, name: str, returncode: Optional[int], seconds: float) -> None:
    process = self.running.pop(name)
    self.finished.add(name)
    count = f"[{len(self.finished)}/{len(self.pending)}]"
    error = None
    if returncode is None:
      error = "could not start"
    elif returncode != 0:
      error = f"exit code {returncode}"
    else:
      try:
        write_marker(process.step, self.root, seconds, process.command)
      except ArgumentError as e:
        error = e.problem
    if error is None:
      self.available.add(name)
      self.done.append(name)
      logging.info("%s %s done in %.0f s", count, name, seconds)
      return
    tail = _tail(process.log)
    self.failed.append({"name": name, "log": process.log, "error": error, "log_tail": tail})
    logging.error(
      "%s %s failed (%s) after %.0f s; log: %s", count, name, error, seconds, process.log
    )
    for line in tail[-5:]:
      logging.error("  %s", line)
    if self.stop_on_failure:
      self.stopping = True

  def stop_all(self) -> None:
    for name, process in list(self.running.items()):
      logging.warning("%s: stopped; no marker written", name)
      process.stop()


# ------------------------------------------------------------------------------------------------
# Command line (the Makefile's recipes).
# ------------------------------------------------------------------------------------------------


def _step_of(root: str, name: str) -> tuple[Step, list[str]]:
  """The step `name` of the plan.json under `root`, and its command."""
  with open(plan_lib.plan_json_path(root)) as f:
    records = json.load(f)["steps"]
  for record in records:
    if record["name"] == name:
      return Step.from_record(record), record["command"]
  raise ArgumentError("step", name, f"not a step of {plan_lib.plan_json_path(root)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tfpets.experiment.runner")
  commands = parser.add_subparsers(dest="command", required=True)
  mark = commands.add_parser("mark", help="write a finished step's done marker")
  mark.add_argument("root")
  mark.add_argument("name")
  mark.add_argument("--started", type=float, help="unix time the step started")
  stale = commands.add_parser("stale", help="remove the markers whose outputs are missing")
  stale.add_argument("root")
  args = parser.parse_args(argv)
  root = os.path.abspath(args.root)
  try:
    if args.command == "mark":
      step, command = _step_of(root, args.name)
      seconds = time.time() - args.started if args.started is not None else None
      write_marker(step, root, seconds, command)
    else:
      for name in remove_stale_markers(plan_lib.load_plan(root), root):
        print(f"stale: {name}")
  except (ArgumentError, OSError) as e:
    print(f"tfpets: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
