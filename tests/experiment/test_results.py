"""Tests of tfpets.experiment.results on report files written here (no training)."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from tfpets.classify import evaluate
from tfpets.experiment import results

CLASSES = ["abyssinian", "beagle", "boxer", "pug"]


# --- Writing an experiment's reports -------------------------------------------------------------


def predictions(seed: int, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
  """(labels, one-hot-ish probabilities) with about `accuracy` of the argmaxes right."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, len(CLASSES), n)
  wrong = rng.random(n) > accuracy
  predicted = np.where(wrong, (labels + rng.integers(1, len(CLASSES), n)) % len(CLASSES), labels)
  probabilities = np.full((n, len(CLASSES)), 0.1)
  probabilities[np.arange(n), predicted] = 0.7
  return labels, probabilities


def write_evaluation(workdir: pathlib.Path, seed: int, n: int, accuracy: float, wsdan=False):
  """Writes `workdir/reports/{metrics,evaluate}.json` as --stage=evaluate does; returns the
  (correct, total) of the final prediction, counted here."""
  labels, probabilities = predictions(seed, n, accuracy)
  found = {"labels": labels, "probabilities": probabilities}
  if wsdan:  # a refined prediction that differs from the raw one
    found["probabilities"] = predictions(seed + 1000, n, accuracy / 2)[1]
    found["refined_probabilities"] = probabilities
  report = evaluate.reports_from_predictions(found, CLASSES)
  evaluate.write_report(report, str(workdir / "reports"))
  (workdir / "reports" / "evaluate.json").write_text(json.dumps(evaluate.headline(report)))
  return int(np.sum(np.argmax(probabilities, axis=1) == labels)), n


def write_fid(workdir: pathlib.Path, value: float, key: str = "fid2k_full") -> None:
  """A --stage=metrics report: a KID before the FID, so that the key is looked up by name."""
  report = {
    "network": "gan",
    "records": "records",
    "kimg": 12,
    "kid2k_full": 0.05,
    key: value,
    "feature_network": "inception",
  }
  (workdir / "reports").mkdir(parents=True, exist_ok=True)
  (workdir / "reports" / "metrics.json").write_text(json.dumps(report))


def write_grids(workdir: pathlib.Path, kimgs=(4, 12)) -> pathlib.Path:
  (workdir / "images").mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (8, 8), "gray").save(workdir / "images" / "reals.png")
  for kimg in kimgs:
    Image.new("RGB", (8, 8), (kimg, 0, 0)).save(workdir / "images" / f"fakes{kimg:06d}.png")
  return workdir / "images" / f"fakes{max(kimgs):06d}.png"


def step(name, stage, workdir, variant, subset, repeat=None):
  """A step as the experiment's plan writes it (subsets as strings, as the plan's are)."""
  cell = {"variant": variant, "subset": str(subset)}
  if repeat is not None:
    cell["repeat"] = repeat
  return {"name": name, "stage": stage, "flags": {"workdir": str(workdir)}, "cell": cell}


@dataclasses.dataclass
class Step:
  """A step as an object rather than a dict."""

  name: str
  stage: str
  flags: dict
  cell: dict


ACCURACY = {"original": 0.55, "augmented": 0.7, "cropped_augmented": 0.85}
FIDS = {("augmented", 0.1): 71.25, ("augmented", 0.5): 30.5, ("cropped_augmented", 0.1): 40.75}
FIDS[("cropped_augmented", 0.5)] = 18.0


@pytest.fixture()
def experiment(tmp_path):
  """Three variants x subsets 10 / 50 %, two repeats, written under workdirs the steps name
  (`runs/...`, not the default layout); returns (root, steps, expected counts per cell)."""
  root = tmp_path / "exp"
  runs = tmp_path / "runs"
  steps, counts = [], {}
  for v, variant in enumerate(ACCURACY):
    for subset in (0.1, 0.5):
      p = round(100 * subset)
      if variant != "original":
        gan, fid = runs / f"gan-{variant}-{p}", runs / f"fid-{variant}-{p}"
        write_grids(gan)
        write_fid(fid, FIDS[(variant, subset)])
        steps.append(step(f"gan/{variant}/s{p}", "gan", gan, variant, subset))
        steps.append(step(f"fid/{variant}/s{p}", "metrics", fid, variant, subset))
      for repeat in (0, 1):
        workdir = runs / f"eval-{variant}-{p}-{repeat}"
        seed = 100 * v + 10 * p + repeat
        accuracy = ACCURACY[variant] - 0.1 * (subset == 0.1)
        counts[(variant, subset, repeat)] = write_evaluation(workdir, seed, 60, accuracy)
        name = f"evaluate/{variant}/s{p}/r{repeat}"
        steps.append(step(name, "evaluate", workdir, variant, subset, repeat))
        classify = f"classify/{variant}/s{p}/r{repeat}"
        steps.append(step(classify, "classify", runs / classify, variant, subset, repeat))
  steps.append({"name": "report", "stage": "experiment_report", "flags": {}, "cell": None})
  return root, steps, counts


# --- The bootstrap -------------------------------------------------------------------------------


def test_bootstrap_matches_explicit_resampling():
  n, k, samples = 120, 84, 10000
  outcomes = np.zeros(n)
  outcomes[:k] = 1
  rng = np.random.default_rng(7)
  resampled = outcomes[rng.integers(0, n, size=(samples, n))].mean(axis=1)
  expected = np.quantile(resampled, [0.025, 0.975])
  low, high = results.bootstrap_interval(k, n, samples=samples, seed=0)
  # Both are Monte Carlo estimates of the same quantiles, on a grid of 1/n.
  assert low == pytest.approx(expected[0], abs=1.5 / n)
  assert high == pytest.approx(expected[1], abs=1.5 / n)
  assert low < k / n < high


@pytest.mark.parametrize("level,z", [(0.95, 1.959964), (0.9, 1.644854)])
def test_bootstrap_matches_normal_approximation_for_large_n(level, z):
  n, k = 200_000, 150_000
  p = k / n
  se = math.sqrt(p * (1 - p) / n)
  low, high = results.bootstrap_interval(k, n, level=level, seed=3)
  assert low == pytest.approx(p - z * se, abs=0.1 * se)
  assert high == pytest.approx(p + z * se, abs=0.1 * se)


def test_bootstrap_is_seeded_and_checks_its_arguments():
  assert results.bootstrap_interval(30, 50, seed=1) == results.bootstrap_interval(30, 50, seed=1)
  assert results.bootstrap_interval(50, 50) == (1.0, 1.0)
  assert results.bootstrap_interval(0, 50) == (0.0, 0.0)
  with pytest.raises(ValueError, match="total must be positive"):
    results.bootstrap_interval(0, 0)
  with pytest.raises(ValueError, match="correct must be in"):
    results.bootstrap_interval(51, 50)
  with pytest.raises(ValueError, match="level must be in"):
    results.bootstrap_interval(5, 50, level=1.0)


# --- Collecting and summarising ------------------------------------------------------------------


def test_table_numbers_are_the_confusion_matrices(experiment):
  root, steps, counts = experiment
  steps = steps[:3] + [Step(**s) if s["cell"] else s for s in steps[3:]]  # objects and dicts
  cells = results.collect(root, steps)
  assert [(c.variant, c.subset, c.repeat) for c in cells] == sorted(
    counts, key=lambda key: (list(ACCURACY).index(key[0]), key[1], key[2])
  )
  for cell in cells:
    assert cell.missing == []
    assert (cell.correct, cell.total) == counts[(cell.variant, cell.subset, cell.repeat)]
  table = results.summarise(cells, samples=2000, seed=5)
  assert len(table.rows) == 6
  for row in table.rows:
    repeats = [counts[(row.variant, row.subset, r)] for r in (0, 1)]
    accuracies = [100 * c / n for c, n in repeats]
    correct, total = sum(c for c, _ in repeats), sum(n for _, n in repeats)
    low, high = results.bootstrap_interval(correct, total, samples=2000, seed=5)
    assert row.top1 == pytest.approx(np.mean(accuracies))
    assert row.top1_std == pytest.approx(np.std(accuracies, ddof=1))
    assert (row.correct, row.total, row.n_test, row.repeats) == (correct, total, 60, 2)
    assert (row.top1_low, row.top1_high) == pytest.approx((100 * low, 100 * high))
    assert row.top1_low <= row.top1 <= row.top1_high
    assert row.fid == FIDS.get((row.variant, row.subset))
    assert row.has_gan == (row.variant != "original")
    if row.has_gan:
      assert row.fid_metric == "fid2k_full"
      assert pathlib.Path(row.gan_grid).name == "fakes000012.png"
  # The paper's figures (arXiv 2109.00891) stand beside ours.
  assert table.row("original", 0.1).paper_top1 == 64.73
  assert table.row("augmented", 0.5).paper_fid == 36.4
  assert table.row("cropped_augmented", 0.5).paper_top1 == 91.73


def test_one_repeat_interval_is_that_runs(tmp_path):
  correct, total = write_evaluation(tmp_path / "evaluate" / "original" / "s100" / "r0", 3, 80, 0.9)
  cells = results.collect(tmp_path, [("original", 1.0, 0)])
  row = results.summarise(cells).rows[0]
  assert row.top1 == pytest.approx(100 * correct / total)
  assert row.top1_std is None
  low, high = results.bootstrap_interval(correct, total)
  assert (row.top1_low, row.top1_high) == pytest.approx((100 * low, 100 * high))
  assert row.paper_top1 == 94.13 and row.paper_fid is None and not row.has_gan


def test_subset_names_follow_the_experiment_layout(tmp_path):
  assert [results.subset_name(s) for s in ("0.1", 0.5, "1.0", 0.125, 10)] == [
    "s10",
    "s50",
    "s100",
    "s12.5",
    "s10",
  ]
  with pytest.raises(ValueError, match="subset must be"):
    results.subset_name(0)
  correct, total = write_evaluation(tmp_path / "evaluate" / "original" / "s12.5" / "r2", 6, 30, 0.5)
  (cell,) = results.collect(tmp_path, [{"variant": "original", "subset": "0.125", "repeat": 2}])
  assert (cell.subset, cell.repeat, cell.correct, cell.total) == (0.125, 2, correct, total)
  assert "| 12.5 %: FID |" in results.markdown_table(results.summarise([cell], samples=100))


def test_wsdan_reports_give_the_refined_prediction(tmp_path):
  workdir = tmp_path / "evaluate" / "cropped" / "s50" / "r0"
  correct, total = write_evaluation(workdir, 4, 50, 0.8, wsdan=True)
  report = json.loads((workdir / "reports" / "metrics.json").read_text())
  assert np.trace(report["raw"]["confusion_matrix"]) != correct  # the raw one would differ
  (cell,) = results.collect(tmp_path, [{"variant": "cropped", "subset": 50, "repeat": 0}])
  assert (cell.correct, cell.total, cell.section) == (correct, total, "refined")
  assert cell.missing == [] and cell.fid_report is None and cell.gan_dir is None


def test_fid_key_with_a_feature_network_suffix(tmp_path):
  write_fid(tmp_path / "fid" / "augmented" / "s10", 12.5, key="fid2k_full_seeded")
  write_grids(tmp_path / "gan" / "augmented" / "s10", kimgs=(0,))
  write_evaluation(tmp_path / "evaluate" / "augmented" / "s10" / "r0", 5, 40, 0.7)
  (cell,) = results.collect(tmp_path, [("augmented", 0.1, 0)], fid_metric="fid2k_full")
  assert (cell.fid_metric, cell.fid) == ("fid2k_full_seeded", 12.5)
  (cell,) = results.collect(tmp_path, [("augmented", 0.1, 0)], fid_metric="fid50k_full")
  assert cell.fid is None and any("no fid50k_full value" in text for text in cell.missing)


def test_missing_files_mark_cells_missing(experiment):
  root, steps, counts = experiment
  workdirs = {s["name"]: pathlib.Path(s["flags"]["workdir"]) for s in steps if s["cell"]}
  (workdirs["evaluate/augmented/s10/r1"] / "reports" / "metrics.json").unlink()
  for repeat in (0, 1):  # a whole cell never evaluated
    (workdirs[f"evaluate/original/s50/r{repeat}"] / "reports" / "metrics.json").unlink()
  (workdirs["fid/cropped_augmented/s50"] / "reports" / "metrics.json").write_text("{not json")
  for grid in (workdirs["gan/augmented/s50"] / "images").glob("fakes*.png"):
    grid.unlink()
  cells = results.collect(root, steps)
  missing = {(c.variant, c.subset, c.repeat): c.missing for c in cells if c.missing}
  assert set(missing) == {
    ("augmented", 0.1, 1),
    ("original", 0.5, 0),
    ("original", 0.5, 1),
    ("cropped_augmented", 0.5, 0),
    ("cropped_augmented", 0.5, 1),
    ("augmented", 0.5, 0),
    ("augmented", 0.5, 1),
  }
  assert "does not exist" in missing[("augmented", 0.1, 1)][0]
  assert "unreadable" in missing[("cropped_augmented", 0.5, 0)][0]
  assert "no images/fakes*.png" in missing[("augmented", 0.5, 0)][0]
  table = results.summarise(cells, samples=500)
  partial = table.row("augmented", 0.1)
  c, n = counts[("augmented", 0.1, 0)]
  assert (partial.repeats, partial.repeats_missing, partial.top1_std) == (1, 1, None)
  assert partial.top1 == pytest.approx(100 * c / n)
  assert table.row("original", 0.5).top1 is None
  assert table.row("cropped_augmented", 0.5).fid is None
  assert table.row("cropped_augmented", 0.5).top1 is not None
  text = results.markdown_table(table)
  assert parse_markdown(text)["original"][50]["top1"] == results.MISSING
  assert parse_markdown(text)["cropped_augmented"][50]["fid"] == results.MISSING
  assert "(1 missing)" in text and "unreadable" in text
  paths = results.write_report(root, cells, table)  # a half-finished experiment still reports
  assert all(pathlib.Path(path).is_file() for path in paths.values())


# --- Markdown, CSV, chart, report folder ---------------------------------------------------------


def parse_markdown(text: str) -> dict:
  """{row name: {percent: {"fid": str|float, "top1": str|tuple}}} of the first table."""
  lines = [line for line in text.splitlines() if line.startswith("|")]
  header = [cell.strip() for cell in lines[0].strip("|").split("|")]
  percents = [float(re.match(r"([\d.]+) %", name).group(1)) for name in header[1::2]]
  table = {}
  for line in lines[2:]:
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    if len(cells) != len(header):
      break  # the next table
    row = table.setdefault(cells[0], {})
    for i, percent in enumerate(percents):
      fid, top1 = cells[1 + 2 * i], cells[2 + 2 * i]
      match = re.fullmatch(r"([\d.]+)(?: ± ([\d.]+))?(?: \[([\d.]+), ([\d.]+)\])?", top1)
      if match:
        top1 = tuple(float(x) if x is not None else None for x in match.groups())
      row[percent] = {"fid": float(fid) if re.fullmatch(r"[\d.]+", fid) else fid, "top1": top1}
  return table


def test_markdown_parses_back_into_the_table(experiment, tmp_path):
  root, steps, _ = experiment
  table = results.summarise(results.collect(root, steps), samples=1000)
  path = results.write_markdown(table, tmp_path / "table.md")
  text = pathlib.Path(path).read_text()
  parsed = parse_markdown(text)
  for row in table.rows:
    ours = parsed[row.variant][row.subset_percent]
    expected = (row.top1, row.top1_std, row.top1_low, row.top1_high)
    assert ours["top1"] == tuple(round(x, 2) for x in expected)
    assert ours["fid"] == (round(row.fid, 2) if row.has_gan else results.NOT_APPLICABLE)
    paper = parsed[f"{row.variant} (paper)"][row.subset_percent]
    figures = results.PAPER[row.variant][row.subset]
    assert paper["top1"] == (figures["top1"], None, None, None)
    assert paper["fid"] == (figures["fid"] if figures["fid"] else results.NOT_APPLICABLE)
  assert "95 % percentile bootstrap interval" in text and "arXiv 2109.00891" in text
  assert "| original | 60 × 2 | 60 × 2 |" in text


def test_csv_round_trips(experiment, tmp_path):
  root, steps, _ = experiment
  table = results.summarise(results.collect(root, steps), samples=1000)
  with open(results.write_csv(table, tmp_path / "table.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(table.rows)
  assert tuple(rows[0]) == results.CSV_COLUMNS
  for read, row in zip(rows, table.rows):
    assert (read["variant"], float(read["subset"]), int(read["subset_percent"])) == (
      row.variant,
      row.subset,
      row.subset_percent,
    )
    for name in ("repeats", "repeats_missing", "n_test", "correct", "total"):
      assert int(read[name]) == getattr(row, name)
    for name in ("top1", "top1_low", "top1_high", "top1_std", "fid", "paper_top1", "paper_fid"):
      value = getattr(row, name)
      assert (float(read[name]) if read[name] else None) == value
    assert read["fid_metric"] == (row.fid_metric or "")


def test_chart_draws_every_variant_and_the_paper(experiment, tmp_path):
  root, steps, _ = experiment
  cells = results.collect(root, steps)
  cells += results.collect(tmp_path, [("cropped", 0.5, 0)])  # missing, so no point of its own
  write_evaluation(tmp_path / "evaluate" / "cropped" / "s100" / "r0", 9, 60, 0.95)
  cells += results.collect(tmp_path, [("cropped", 1.0, 0)])
  table = results.summarise(cells, samples=1000)
  size = (720, 450)
  path = results.write_chart(table, tmp_path / "chart.png", size)
  image = Image.open(path)
  image.load()
  assert image.format == "PNG" and image.size == size and image.mode == "RGB"
  pixels = np.asarray(image)
  layout = results.chart_layout(table, size)
  colours = results.chart_colours(table)
  dodges = results.chart_dodges(table)
  assert set(colours) == {"original", "augmented", "cropped_augmented", "cropped"}
  assert len(set(colours.values())) == 4
  for row in table.rows:
    colour, dodge = colours[row.variant], dodges[row.variant]
    if row.top1 is not None:
      x, y = layout.point(row.subset_percent, row.top1, dodge)
      assert tuple(pixels[y, x]) == colour, row
      for end in (row.top1_low, row.top1_high):  # the error bar's caps
        x, y = layout.point(row.subset_percent, end, dodge)
        assert tuple(pixels[y, x]) == colour, row
    if row.paper_top1 is not None:
      x, y = layout.point(row.subset_percent, row.paper_top1, dodge)
      assert tuple(pixels[y, x]) == colour, row
  for variant, colour in colours.items():
    assert np.all(pixels == colour, axis=-1).sum() > 100, variant


def test_write_report_links_resolve(experiment):
  root, steps, _ = experiment
  cells = results.collect(root, steps)
  table = results.summarise(cells, samples=1000)
  paths = results.write_report(root, cells, table)
  folder = root / "results"
  assert paths == {
    "markdown": str(folder / "table.md"),
    "csv": str(folder / "table.csv"),
    "chart": str(folder / "accuracy.png"),
    "json": str(folder / "results.json"),
    "readme": str(folder / "README.md"),
  }
  readme = (folder / "README.md").read_text()
  targets = re.findall(r"\]\(([^)]+)\)", readme)
  assert all(not pathlib.Path(target).is_absolute() for target in targets)
  assert all((folder / target).is_file() for target in targets), targets
  resolved = {(folder / target).resolve() for target in targets}
  for cell in cells:
    assert pathlib.Path(cell.evaluate_report).resolve() in resolved
    assert pathlib.Path(cell.metrics_report).resolve() in resolved
  grids = {pathlib.Path(row.gan_grid).resolve() for row in table.rows if row.has_gan}
  assert len(grids) == 4 and grids <= resolved
  saved = json.loads((folder / "results.json").read_text())
  assert [r["top1"] for r in saved["rows"]] == [row.top1 for row in table.rows]
  assert len(saved["cells"]) == len(cells) == 12
  assert parse_markdown(readme) == parse_markdown((folder / "table.md").read_text())
