"""The plan runner with a fake launcher: order, resumption, stale markers, failures, parallel
steps, a killed runner, and the Makefile run by make."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tfpets.experiment import plan, runner

# A stand-in for `python -m tfpets.launch`: reads the step's flagfile, checks that what it reads
# exists (so a step run before its deps fails), writes the step's outputs and logs its start and end
# to $FAKE_EVENTS. $FAKE_FAIL names a step that fails; $FAKE_SLEEP_STEP one that sleeps
# $FAKE_SLEEP_SECONDS; the steps of $FAKE_RENDEZVOUS each wait until all of them have started.
FAKE_LAUNCHER = textwrap.dedent(
  """
  import json, os, pathlib, sys, time

  flagfile = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--flagfile="))
  flags = {}
  for line in pathlib.Path(flagfile).read_text().splitlines():
    if line.startswith("--") and not line.startswith("--flagfile="):
      name, _, value = line[2:].partition("=")
      flags[name] = value
  stage, workdir = flags["stage"], pathlib.Path(flags["workdir"])
  root = pathlib.Path(flagfile).parents[2]
  steps = json.loads((root / "plan" / "plan.json").read_text())["steps"]
  step = next(s for s in steps if s["flagfile"] == flagfile)
  name = step["name"]

  def event(kind):
    with open(os.environ["FAKE_EVENTS"], "a") as f:
      f.write(json.dumps({"event": kind, "name": name, "stage": stage, "pid": os.getpid()}) + "\\n")

  event("start")
  print(f"fake launcher: {name} (stage {stage})", flush=True)
  for flag in ("records", "network", "classifier"):
    if flag in flags and not pathlib.Path(flags[flag]).is_dir():
      print(f"--{flag}={flags[flag]} does not exist", file=sys.stderr)
      sys.exit(4)
  together = [n for n in os.environ.get("FAKE_RENDEZVOUS", "").split(",") if n]
  if name in together:
    meeting = pathlib.Path(os.environ["FAKE_RENDEZVOUS_DIR"])
    (meeting / name.replace("/", "__")).touch()
    deadline = time.time() + 30
    while len(list(meeting.iterdir())) < len(together) and time.time() < deadline:
      time.sleep(0.02)
  if name == os.environ.get("FAKE_SLEEP_STEP"):
    time.sleep(float(os.environ["FAKE_SLEEP_SECONDS"]))
  if name == os.environ.get("FAKE_FAIL"):
    print(f"fake failure of {name}", file=sys.stderr)
    sys.exit(3)
  for output in step["outputs"]:
    path = workdir / output.replace("*", "000001")
    if "." in path.name:
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("{}")
    else:
      path.mkdir(parents=True, exist_ok=True)
  event("end")
  """
)

CONFIG = dict(subsets=("0.1", "1.0"), variants=("original", "cropped_augmented"), repeats=1)


@pytest.fixture(scope="module")
def small_steps(tmp_path_factory):
  """The steps of a small matrix under a root, built once (the config check loads TensorFlow)."""
  root = tmp_path_factory.mktemp("template") / "exp"
  return plan.build_plan(plan.ExperimentConfig(**CONFIG), root), str(root)


class Harness:
  def __init__(self, tmp_path: pathlib.Path, small_steps):
    template, template_root = small_steps
    self.root = str(tmp_path / "exp")
    # The same steps under this test's root (the plan's paths are absolute).
    text = json.dumps([s.record() for s in template]).replace(template_root, self.root)
    self.steps = [plan.Step.from_record(r) for r in json.loads(text)]
    self.fake = tmp_path / "fake_launch.py"
    self.fake.write_text(FAKE_LAUNCHER)
    self.launcher = (sys.executable, str(self.fake))
    self.events_file = tmp_path / "events.jsonl"
    self.env = {"FAKE_EVENTS": str(self.events_file)}

  def run(self, **kwargs):
    env = {**self.env, **kwargs.pop("env", {})}
    return runner.run_plan(self.steps, self.root, launcher=self.launcher, env=env, **kwargs)

  def events(self):
    if not self.events_file.exists():
      return []
    return [json.loads(line) for line in self.events_file.read_text().splitlines()]

  def started(self):
    return [e["name"] for e in self.events() if e["event"] == "start"]

  def step(self, name):
    return next(s for s in self.steps if s.name == name)

  def names(self):
    return [s.name for s in self.steps]

  def marker(self, name):
    return pathlib.Path(plan.marker_path(self.root, name))


@pytest.fixture
def harness(tmp_path, small_steps):
  return Harness(tmp_path, small_steps)


def assert_dependency_order(events, steps):
  """Every step that started did so after each of its deps ended (in the events' order)."""
  position = {(e["event"], e["name"]): i for i, e in enumerate(events)}
  for step in steps:
    if ("start", step.name) in position:
      for dep in step.deps:
        assert position[("end", dep)] < position[("start", step.name)], (dep, step.name)


def test_every_step_runs_once_after_its_deps(harness):
  summary = harness.run()
  assert summary["done"] == harness.names() and len(summary["done"]) == 19
  assert summary["skipped"] == summary["failed"] == summary["not_run"] == []
  assert harness.started() == harness.names()
  assert_dependency_order(harness.events(), harness.steps)
  for step in harness.steps:
    marker = json.loads(harness.marker(step.name).read_text())
    assert marker["step"] == step.name and marker["seconds"] >= 0
    assert marker["command"] == [
      *harness.launcher,
      f"--flagfile={plan.flagfile_path(harness.root, step.name)}",
    ]
    assert len(marker["outputs"]) == len(step.outputs)
    assert all(os.path.exists(p) for p in marker["outputs"])
    log = pathlib.Path(plan.log_path(harness.root, step.name)).read_text()
    assert f"fake launcher: {step.name} (stage {step.stage})" in log
  gan = json.loads(harness.marker("gan/cropped_augmented/s10").read_text())
  assert gan["outputs"][0].endswith("snapshots/network-snapshot-000001/config.json")


def test_a_second_run_runs_nothing(harness):
  harness.run()
  count = len(harness.events())
  summary = harness.run(jobs=2)
  assert summary["done"] == [] and summary["skipped"] == harness.names()
  assert len(harness.events()) == count


def test_missing_outputs_rerun_that_step_only(harness):
  harness.run()
  shutil.rmtree(pathlib.Path(harness.step("gan/cropped_augmented/s10").workdir) / "snapshots")
  before = len(harness.started())
  summary = harness.run()
  # Its finished dependents (fid, augment, classify ...) keep their outputs and are not rerun.
  assert summary["done"] == ["gan/cropped_augmented/s10"]
  assert harness.started()[before:] == ["gan/cropped_augmented/s10"]


def test_a_dependent_with_missing_outputs_reruns_too(harness):
  harness.run()
  for name in ("crop/s100", "augment/cropped_augmented/s100"):
    os.remove(pathlib.Path(harness.step(name).workdir) / "records/shards/manifest.json")
  before = len(harness.started())
  summary = harness.run()
  assert summary["done"] == ["crop/s100", "augment/cropped_augmented/s100"]
  assert harness.started()[before:] == summary["done"]
  order = [(e["event"], e["name"]) for e in harness.events()[2 * 19 :]]
  assert order.index(("end", "crop/s100")) < order.index(
    ("start", "augment/cropped_augmented/s100")
  )


def test_a_stale_marker_is_removed_and_the_report_follows_its_deps(harness):
  harness.run()
  evaluate = harness.step("evaluate/original/s10/r0")
  os.remove(pathlib.Path(evaluate.workdir) / "reports/evaluate.json")
  assert runner.steps_to_run(harness.steps, harness.root) == [evaluate.name, "report"]
  assert not harness.marker(evaluate.name).exists()
  # Killed before anything ran: the report still follows the evaluation when it runs next.
  summary = harness.run()
  assert summary["done"] == [evaluate.name, "report"]
  assert (
    harness.marker("report").stat().st_mtime_ns > harness.marker(evaluate.name).stat().st_mtime_ns
  )


def test_a_failed_step_stops_its_dependents_only(harness):
  failing = "gan/cropped_augmented/s10"
  summary = harness.run(env={"FAKE_FAIL": failing}, stop_on_failure=False)
  dependents = {
    failing,
    "fid/cropped_augmented/s10",
    "augment/cropped_augmented/s10",
    "classify/cropped_augmented/s10/r0",
    "evaluate/cropped_augmented/s10/r0",
    "report",
  }
  assert [f["name"] for f in summary["failed"]] == [failing]
  failure = summary["failed"][0]
  assert failure["log"] == plan.log_path(harness.root, failing)
  assert failure["error"] == "exit code 3"
  assert failure["log_tail"][-1] == f"fake failure of {failing}"
  assert set(summary["not_run"]) == dependents - {failing}
  assert set(summary["done"]) == set(harness.names()) - dependents
  assert not any(harness.marker(n).exists() for n in dependents)
  assert set(harness.started()) == set(harness.names()) - dependents | {failing}
  # Fixed, the next run finishes what is left.
  summary = harness.run()
  assert set(summary["done"]) == dependents


def test_stop_on_failure_starts_nothing_more(harness):
  summary = harness.run(env={"FAKE_FAIL": "data/s100"})
  assert harness.started() == ["data/s10", "data/s100"]
  assert [f["name"] for f in summary["failed"]] == ["data/s100"]
  assert summary["done"] == ["data/s10"]
  assert set(summary["not_run"]) == set(harness.names()) - {"data/s10", "data/s100"}


def test_a_step_without_its_outputs_fails(harness, tmp_path):
  # A launcher that exits 0 and writes nothing.
  quiet = tmp_path / "quiet.py"
  quiet.write_text("print('nothing written')\n")
  summary = runner.run_plan(harness.steps[:1], harness.root, launcher=(sys.executable, str(quiet)))
  assert summary["failed"][0]["error"] == (
    "finished without its outputs records/shards/manifest.json"
  )
  assert not harness.marker("data/s10").exists()


def test_two_jobs_run_independent_steps_together(harness, tmp_path):
  meeting = tmp_path / "meeting"
  meeting.mkdir()
  env = {"FAKE_RENDEZVOUS": "data/s10,data/s100", "FAKE_RENDEZVOUS_DIR": str(meeting)}
  summary = harness.run(jobs=2, env=env)
  assert sorted(summary["done"]) == sorted(harness.names())
  events = harness.events()
  order = [(e["event"], e["name"]) for e in events]
  # Both data steps started before either ended.
  first_end = min(order.index(("end", "data/s10")), order.index(("end", "data/s100")))
  assert order.index(("start", "data/s10")) < first_end
  assert order.index(("start", "data/s100")) < first_end
  assert sorted(harness.started()) == sorted(harness.names())
  assert_dependency_order(events, harness.steps)


def test_a_killed_runner_leaves_no_marker_for_its_running_step(harness):
  plan.write_plan(harness.steps, harness.root, harness.launcher)
  driver = textwrap.dedent(
    f"""
    import sys
    from tfpets.experiment import plan, runner
    runner.run_plan(plan.load_plan({harness.root!r}), {harness.root!r}, launcher={harness.launcher!r})
    """
  )
  env = dict(
    os.environ,
    FAKE_EVENTS=str(harness.events_file),
    FAKE_SLEEP_STEP="crop/s10",
    FAKE_SLEEP_SECONDS="120",
  )
  process = subprocess.Popen([sys.executable, "-c", driver], env=env)
  try:
    deadline = time.monotonic() + 60
    while "crop/s10" not in harness.started():
      assert time.monotonic() < deadline and process.poll() is None
      time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
  finally:
    if process.poll() is None:
      process.kill()
  assert harness.marker("data/s10").exists() and harness.marker("data/s100").exists()
  assert not harness.marker("crop/s10").exists()
  # The step's own process was stopped too: it never reached its end.
  assert ("end", "crop/s10") not in [(e["event"], e["name"]) for e in harness.events()]
  crop_pid = next(e["pid"] for e in harness.events() if e["name"] == "crop/s10")
  with pytest.raises(ProcessLookupError):
    os.kill(crop_pid, 0)
  summary = harness.run()
  assert summary["skipped"] == ["data/s10", "data/s100"]
  assert summary["done"][0] == "crop/s10" and len(summary["done"]) == 17


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_runs_the_plan(harness):
  written = plan.write_plan(harness.steps, harness.root, harness.launcher)
  env = dict(os.environ, **harness.env)
  result = subprocess.run(
    ["make", "-j2", "-f", written["makefile"]], env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stdout + result.stderr
  assert sorted(harness.started()) == sorted(harness.names())
  assert_dependency_order(harness.events(), harness.steps)
  for step in harness.steps:
    marker = json.loads(harness.marker(step.name).read_text())
    assert marker["step"] == step.name and marker["seconds"] >= 0
    assert all(os.path.exists(p) for p in marker["outputs"])
  # make and the runner agree on what is done.
  again = subprocess.run(["make", "-f", written["makefile"]], env=env, capture_output=True)
  assert again.returncode == 0
  assert runner.run_plan(harness.steps, harness.root, launcher=harness.launcher)["done"] == []
  assert len(harness.started()) == len(harness.steps)
  # After deleting an output, `runner stale` removes the marker and make reruns that step only,
  # and the report, whose prerequisites are ordinary.
  evaluate = harness.step("evaluate/cropped_augmented/s100/r0")
  os.remove(pathlib.Path(evaluate.workdir) / "reports/metrics.json")
  stale = subprocess.run(
    [sys.executable, "-m", "tfpets.experiment.runner", "stale", harness.root],
    capture_output=True,
    text=True,
  )
  assert stale.returncode == 0 and stale.stdout.strip() == f"stale: {evaluate.name}"
  rerun = subprocess.run(["make", "-f", written["makefile"]], env=env, capture_output=True)
  assert rerun.returncode == 0
  assert harness.started()[len(harness.steps) :] == [evaluate.name, "report"]


def test_make_stops_at_a_failing_step(harness):
  if shutil.which("make") is None:
    pytest.skip("make is not installed")
  written = plan.write_plan(harness.steps, harness.root, harness.launcher)
  env = dict(os.environ, **harness.env, FAKE_FAIL="data/s10")
  result = subprocess.run(["make", "-f", written["makefile"]], env=env, capture_output=True)
  assert result.returncode != 0
  assert harness.started() == ["data/s10"] and not harness.marker("data/s10").exists()


def test_mark_refuses_a_step_without_outputs(harness):
  plan.write_plan(harness.steps, harness.root, harness.launcher)
  assert runner.main(["mark", harness.root, "data/s10"]) == 2
  assert runner.main(["mark", harness.root, "no/such/step"]) == 2
  assert not harness.marker("data/s10").exists()
