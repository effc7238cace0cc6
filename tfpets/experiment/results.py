"""The pet paper's experiment table from the runs' reports: top-1 with bootstrap intervals and FID
per variant and training subset, the paper's figures beside them, written as markdown, CSV, JSON
and a PNG chart (docs/experiment.md).

A cell is one (variant, subset, repeat): its `evaluate` step's `reports/metrics.json` gives top-1,
the number of test images and the correct ones (the trace of the confusion matrix; WS-DAN reports
give the refined prediction's); its GAN's `metrics` step gives the FID, and the GAN run's latest
`images/fakes*.png` grid its samples. A file that is absent or unreadable marks the cell as
missing; nothing here raises on a half-finished experiment.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import re
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from tfpets.runtime import drawing

VARIANTS = ("original", "augmented", "cropped_augmented", "cropped")  # the table's row order
GAN_VARIANTS = ("augmented", "cropped_augmented")  # variants whose training split has GAN images

# Darvish, Pouramini, Bahador, "Towards Fine-grained Image Classification with Generative
# Adversarial Networks and Facial Landmark Detection" (arXiv 2109.00891), its results table: test
# top-1 of the ViT (percent) and FID of the StyleGAN2-ADA per training subset. `original` has no
# GAN; the paper has no `cropped` row.
PAPER: dict[str, dict[float, dict[str, Optional[float]]]] = {
  "original": {
    0.1: {"top1": 64.73, "fid": None},
    0.5: {"top1": 88.41, "fid": None},
    1.0: {"top1": 94.13, "fid": None},
  },
  "augmented": {
    0.1: {"top1": 63.32, "fid": 71.1},
    0.5: {"top1": 88.70, "fid": 36.4},
    1.0: {"top1": 94.93, "fid": 20.7},
  },
  "cropped_augmented": {
    0.1: {"top1": 68.55, "fid": 49.4},
    0.5: {"top1": 91.73, "fid": 22.3},
    1.0: {"top1": 96.28, "fid": 14.1},
  },
}
PAPER_CITATION = "Darvish et al., arXiv 2109.00891"

_FID_KEY = re.compile(r"fid[1-9][0-9]*k?(_full)?(_[a-z0-9]+)?")  # name + feature-network suffix


# --- Bootstrap -----------------------------------------------------------------------------------


def bootstrap_interval(
  correct: int, total: int, *, samples: int = 10000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
  """Percentile bootstrap interval of top-1 accuracy (a fraction) over `total` test images.

  Resampling the n images with replacement from n correct/incorrect outcomes with k correct draws
  each image as correct with probability k/n independently, so the number correct in one resample
  is a Binomial(n, k/n) draw: `samples` such draws from `numpy.random.default_rng(seed)` stand for
  the resamples. Returns the (1 - level)/2 and (1 + level)/2 quantiles of their accuracies.
  """
  correct, total, samples = int(correct), int(total), int(samples)
  if total <= 0:
    raise ValueError(f"total must be positive, got {total}")
  if not 0 <= correct <= total:
    raise ValueError(f"correct must be in [0, total={total}], got {correct}")
  if samples < 1:
    raise ValueError(f"samples must be at least 1, got {samples}")
  if not 0.0 < level < 1.0:
    raise ValueError(f"level must be in (0, 1), got {level}")
  rng = np.random.default_rng(seed)
  accuracies = rng.binomial(total, correct / total, size=samples) / total
  low, high = np.quantile(accuracies, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
  return float(low), float(high)


# --- Where a cell's files are --------------------------------------------------------------------


def subset_percent(subset: float) -> int | float:
  """0.1 -> 10, 0.125 -> 12.5: a subset as a percentage (an int when whole)."""
  percent = round(_subset(subset) * 100, 6)
  return int(percent) if percent.is_integer() else percent


def subset_name(subset: float) -> str:
  """0.1 -> "s10", 1.0 -> "s100", 0.125 -> "s12.5": the subset's folder name."""
  return f"s{subset_percent(subset)}"


def _subset(value) -> float:
  """A training subset as a fraction; values above 1 are read as percentages."""
  subset = float(value)
  if subset > 1.0:
    subset /= 100.0
  if not 0.0 < subset <= 1.0:
    raise ValueError(f"subset must be a fraction in (0, 1] or a percentage, got {value!r}")
  return round(subset, 6)


def _field(item, name: str, default=None):
  if isinstance(item, Mapping):
    return item.get(name, default)
  return getattr(item, name, default)


@dataclasses.dataclass(frozen=True)
class _Locations:
  """Workdirs of the steps a cell reads (None: the variant has no such step)."""

  evaluate: pathlib.Path
  fid: Optional[pathlib.Path]
  gan: Optional[pathlib.Path]


def _step_workdir(step) -> Optional[pathlib.Path]:
  flags = _field(step, "flags") or {}
  workdir = _field(flags, "workdir")
  return pathlib.Path(workdir) if workdir else None


def _cell_key(cell) -> tuple[str, float, int]:
  if isinstance(cell, (tuple, list)):
    variant, subset, repeat = cell
  else:
    variant, subset, repeat = (_field(cell, name) for name in ("variant", "subset", "repeat"))
  if not variant or subset is None:
    raise ValueError(f"a cell needs a variant and a subset, got {cell!r}")
  return str(variant), _subset(subset), int(repeat or 0)


def _gan_step_workdir(
  top: pathlib.Path, variant: str, subset: float, steps: Mapping[tuple, Optional[pathlib.Path]]
) -> Optional[pathlib.Path]:
  """A GAN or FID step's workdir: the step's own, else `top/V/sP` for a GAN variant or a step
  without a workdir, else None (the variant trains no GAN)."""
  default = top / variant / subset_name(subset)
  if (variant, subset) in steps:
    return steps[(variant, subset)] or default
  return default if variant in GAN_VARIANTS else None


def _locations(root: pathlib.Path, steps_or_cells: Iterable) -> dict[tuple, _Locations]:
  """{(variant, subset, repeat): locations}: from the steps' workdirs where a step names one, else
  the experiment's layout under `root` (`evaluate/V/sP/rK`, `fid/V/sP`, `gan/V/sP`)."""
  evaluations: dict[tuple, Optional[pathlib.Path]] = {}
  per_gan: dict[str, dict[tuple, Optional[pathlib.Path]]] = {"metrics": {}, "gan": {}}
  for item in steps_or_cells:
    stage = _field(item, "stage")
    if stage is None:
      evaluations.setdefault(_cell_key(item), None)
      continue
    cell = _field(item, "cell")
    if not cell or stage not in ("evaluate", "metrics", "gan"):
      continue
    key = _cell_key(cell)
    if stage == "evaluate":
      evaluations[key] = _step_workdir(item)
    else:
      per_gan[stage][key[:2]] = _step_workdir(item)
  locations = {}
  for (variant, subset, repeat), evaluate_dir in evaluations.items():
    folder = pathlib.Path(variant) / subset_name(subset)
    locations[(variant, subset, repeat)] = _Locations(
      evaluate=evaluate_dir or root / "evaluate" / folder / f"r{repeat}",
      fid=_gan_step_workdir(root / "fid", variant, subset, per_gan["metrics"]),
      gan=_gan_step_workdir(root / "gan", variant, subset, per_gan["gan"]),
    )
  return locations


# --- Reading a cell ------------------------------------------------------------------------------


@dataclasses.dataclass
class CellResult:
  """One (variant, subset, repeat) as read from its reports; None where a file is missing.

  `top1` is a fraction (as in `reports/metrics.json`); `correct` / `total` are the test images
  classified correctly / evaluated. `section` is "refined" for a WS-DAN report, "" otherwise.
  `fid_report` and `gan_dir` are None when the variant trains no GAN. `missing` describes every
  file that was absent or unreadable.
  """

  variant: str
  subset: float
  repeat: int
  evaluate_dir: str
  top1: Optional[float] = None
  correct: Optional[int] = None
  total: Optional[int] = None
  section: str = ""
  fid: Optional[float] = None
  fid_metric: Optional[str] = None
  fid_report: Optional[str] = None
  gan_dir: Optional[str] = None
  gan_grid: Optional[str] = None
  missing: list[str] = dataclasses.field(default_factory=list)

  @property
  def evaluated(self) -> bool:
    return self.total is not None

  @property
  def evaluate_report(self) -> str:
    return os.path.join(self.evaluate_dir, "reports", "evaluate.json")

  @property
  def metrics_report(self) -> str:
    return os.path.join(self.evaluate_dir, "reports", "metrics.json")


def _read_json(path: pathlib.Path, missing: list[str], what: str) -> Optional[dict]:
  if not path.is_file():
    missing.append(f"{what}: {path} does not exist")
    return None
  try:
    report = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    missing.append(f"{what}: {path} is unreadable ({e})")
    return None
  if not isinstance(report, dict):
    missing.append(f"{what}: {path} holds no JSON object")
    return None
  return report


def _read_evaluation(cell: CellResult) -> None:
  path = pathlib.Path(cell.metrics_report)
  report = _read_json(path, cell.missing, "evaluate report")
  if report is None:
    return
  section, name = report, ""
  if isinstance(report.get("refined"), dict):  # WS-DAN: the refined prediction is the final one
    section, name = report["refined"], "refined"
  try:
    matrix = np.asarray(section["confusion_matrix"], np.int64)
    total = int(section.get("num_examples", matrix.sum()))
    correct = int(np.trace(matrix))
    top1 = float(section["top1"])
  except (KeyError, TypeError, ValueError) as e:
    cell.missing.append(f"evaluate report: {path} lacks top1 / confusion_matrix ({e!r})")
    return
  if total <= 0 or not 0 <= correct <= total:
    cell.missing.append(f"evaluate report: {path} has {correct} correct of {total} images")
    return
  cell.top1, cell.correct, cell.total, cell.section = top1, correct, total, name


def fid_value(report: Mapping, metric: Optional[str] = None) -> Optional[tuple[str, float]]:
  """(key, value) of the FID in a `--stage=metrics` report: the key `metric` (with or without the
  feature network's suffix, e.g. `fid2k_full_seeded`) when given, else the first FID key."""
  for key, value in report.items():
    if not _FID_KEY.fullmatch(key) or not isinstance(value, (int, float)):
      continue
    if metric is None or key == metric or key.startswith(metric + "_"):
      return key, float(value)
  return None


def _read_fid(cell: CellResult, fid_dir: pathlib.Path, metric: Optional[str]) -> None:
  path = fid_dir / "reports" / "metrics.json"
  cell.fid_report = str(path)
  report = _read_json(path, cell.missing, "FID report")
  if report is None:
    return
  found = fid_value(report, metric)
  if found is None:
    cell.missing.append(f"FID report: {path} has no {metric or 'fid*'} value")
    return
  cell.fid_metric, cell.fid = found


def latest_grid(gan_dir: str | os.PathLike) -> Optional[pathlib.Path]:
  """The GAN run's latest `images/fakes<kimg>.png` (zero-padded kimg, so the last name), or None."""
  grids = sorted(pathlib.Path(gan_dir, "images").glob("fakes*.png"))
  return grids[-1] if grids else None


def _variant_order(variant: str) -> tuple[int, str]:
  return (VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), variant)


def collect(
  root: str | os.PathLike, steps_or_cells: Iterable, *, fid_metric: Optional[str] = None
) -> list[CellResult]:
  """Reads every cell's reports.

  `steps_or_cells` holds the experiment's steps (objects or dicts with `name`, `stage`,
  `flags["workdir"]` and `cell = {"variant", "subset", "repeat"}`) or plain cells (dicts or
  objects with `variant`, `subset`, `repeat`, or `(variant, subset, repeat)` tuples). Each
  `evaluate` step or plain cell is one result; `metrics` and `gan` steps say where its variant and
  subset's FID report and GAN run are. Without a step, the layout under `root` is assumed:
  `evaluate/V/sP/rK`, and for GAN variants `fid/V/sP` and `gan/V/sP`. Subsets are fractions
  (0.1) or percentages (10). `fid_metric` picks the FID key (default: the report's first FID).
  Returns the cells in table order; absent files are listed in each cell's `missing`.
  """
  root = pathlib.Path(root)
  cells = []
  for (variant, subset, repeat), where in _locations(root, steps_or_cells).items():
    cell = CellResult(variant, subset, repeat, str(where.evaluate))
    _read_evaluation(cell)
    if where.fid is not None:
      _read_fid(cell, where.fid, fid_metric)
    if where.gan is not None:
      cell.gan_dir = str(where.gan)
      grid = latest_grid(where.gan)
      if grid is None:
        cell.missing.append(f"GAN samples: no images/fakes*.png under {where.gan}")
      cell.gan_grid = str(grid) if grid else None
    cells.append(cell)
  cells.sort(key=lambda c: (_variant_order(c.variant), c.subset, c.repeat))
  return cells


# --- The table -----------------------------------------------------------------------------------


@dataclasses.dataclass
class TableRow:
  """One variant at one training subset. Accuracies are percentages.

  `top1`: mean over the evaluated repeats; `top1_low`/`top1_high`: the bootstrap interval (of one
  run, or of the repeats' pooled test outcomes); `top1_std`: the sample standard deviation
  (ddof 1) of the repeats' accuracies, None for fewer than two. `correct`/`total`: pooled over the
  repeats; `n_test`: test images of one run. None where nothing was evaluated.
  """

  variant: str
  subset: float
  repeats: int
  repeats_missing: int
  n_test: Optional[int]
  correct: Optional[int]
  total: Optional[int]
  top1: Optional[float]
  top1_low: Optional[float]
  top1_high: Optional[float]
  top1_std: Optional[float]
  has_gan: bool
  fid: Optional[float]
  fid_metric: Optional[str]
  paper_top1: Optional[float]
  paper_fid: Optional[float]
  gan_grid: Optional[str]
  missing: list[str]

  @property
  def subset_percent(self) -> int | float:
    return subset_percent(self.subset)


@dataclasses.dataclass
class ResultsTable:
  rows: list[TableRow]
  samples: int
  level: float
  seed: int

  @property
  def variants(self) -> list[str]:
    return sorted({row.variant for row in self.rows}, key=_variant_order)

  @property
  def subsets(self) -> list[float]:
    return sorted({row.subset for row in self.rows})

  def row(self, variant: str, subset: float) -> Optional[TableRow]:
    subset = _subset(subset)
    return next((r for r in self.rows if r.variant == variant and r.subset == subset), None)


def paper_figures(variant: str, subset: float) -> dict[str, Optional[float]]:
  """{"top1": percent, "fid": value} of the paper, None where it has no figure."""
  return PAPER.get(variant, {}).get(_subset(subset), {"top1": None, "fid": None})


def _summarise_cell_group(group: Sequence[CellResult], samples, level, seed) -> TableRow:
  first = group[0]
  done = [cell for cell in group if cell.evaluated]
  paper = paper_figures(first.variant, first.subset)
  fids = [cell for cell in group if cell.fid is not None]
  grids = [cell.gan_grid for cell in group if cell.gan_grid]
  missing = list(dict.fromkeys(text for cell in group for text in cell.missing))
  row = TableRow(
    variant=first.variant,
    subset=first.subset,
    repeats=len(done),
    repeats_missing=len(group) - len(done),
    n_test=done[0].total if done else None,
    correct=None,
    total=None,
    top1=None,
    top1_low=None,
    top1_high=None,
    top1_std=None,
    has_gan=first.fid_report is not None or first.gan_dir is not None,
    fid=fids[0].fid if fids else None,
    fid_metric=fids[0].fid_metric if fids else None,
    paper_top1=paper["top1"],
    paper_fid=paper["fid"],
    gan_grid=grids[0] if grids else None,
    missing=missing,
  )
  if done:
    accuracies = np.array([cell.correct / cell.total for cell in done])
    row.correct = sum(cell.correct for cell in done)
    row.total = sum(cell.total for cell in done)
    low, high = bootstrap_interval(row.correct, row.total, samples=samples, level=level, seed=seed)
    row.top1 = 100.0 * float(accuracies.mean())
    row.top1_low, row.top1_high = 100.0 * low, 100.0 * high
    if len(done) > 1:
      row.top1_std = 100.0 * float(accuracies.std(ddof=1))
  return row


def summarise(
  cells: Sequence[CellResult], *, samples: int = 10000, level: float = 0.95, seed: int = 0
) -> ResultsTable:
  """One row per (variant, subset) over its repeats (see `TableRow`), with the paper's figures."""
  groups: dict[tuple[str, float], list[CellResult]] = {}
  for cell in cells:
    groups.setdefault((cell.variant, cell.subset), []).append(cell)
  order = sorted(groups, key=lambda key: (_variant_order(key[0]), key[1]))
  rows = [_summarise_cell_group(groups[key], samples, level, seed) for key in order]
  return ResultsTable(rows=rows, samples=samples, level=level, seed=seed)


# --- Markdown and CSV ----------------------------------------------------------------------------

NOT_APPLICABLE = "–"
MISSING = "missing"


def _percent_level(table: ResultsTable) -> str:
  return f"{100 * table.level:g} %"


def format_top1(row: Optional[TableRow]) -> str:
  """ "64.12 [61.10, 67.00]", with "± std" after the mean for several repeats."""
  if row is None:
    return NOT_APPLICABLE
  if row.top1 is None:
    return MISSING
  spread = f" ± {row.top1_std:.2f}" if row.top1_std is not None else ""
  return f"{row.top1:.2f}{spread} [{row.top1_low:.2f}, {row.top1_high:.2f}]"


def format_fid(row: Optional[TableRow]) -> str:
  if row is None or not row.has_gan:
    return NOT_APPLICABLE
  return MISSING if row.fid is None else f"{row.fid:.2f}"


def _paper_cell(value: Optional[float]) -> str:
  return NOT_APPLICABLE if value is None else f"{value:.2f}"


def _markdown_row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def _fid_metrics(table: ResultsTable) -> str:
  names = sorted({row.fid_metric for row in table.rows if row.fid_metric})
  return ", ".join(f"`{name}`" for name in names) or "FID"


def intervals_note(table: ResultsTable) -> str:
  return (
    f"Top-1: percent of the real test split classified correctly; with several repeats, their "
    f"mean ± the standard deviation of their accuracies. [low, high]: the {_percent_level(table)} "
    f"percentile bootstrap interval of top-1 over the test images ({table.samples} resamples, "
    f"seed {table.seed}; several repeats: their test outcomes pooled). FID: {_fid_metrics(table)} "
    f"of each variant's StyleGAN2-ADA against its own training subset. "
    f"{NOT_APPLICABLE}: no GAN or no such run; {MISSING}: its report is absent. "
    f"Rows marked (paper): {PAPER_CITATION}."
  )


def markdown_table(table: ResultsTable) -> str:
  """The paper's layout: a row per variant (and its paper row), FID and top-1 per subset, then
  the test images and repeats per cell."""
  subsets = table.subsets
  level = _percent_level(table)
  header = ["variant"]
  for subset in subsets:
    percent = subset_percent(subset)
    header += [f"{percent} %: FID", f"{percent} %: top-1 [{level} CI]"]
  lines = [_markdown_row(header), _markdown_row(["---"] * len(header))]
  for variant in table.variants:
    ours, paper = [variant], [f"{variant} (paper)"]
    for subset in subsets:
      row = table.row(variant, subset)
      ours += [format_fid(row), format_top1(row)]
      figures = paper_figures(variant, subset)
      paper += [_paper_cell(figures["fid"]), _paper_cell(figures["top1"])]
    lines.append(_markdown_row(ours))
    if variant in PAPER:
      lines.append(_markdown_row(paper))
  lines += ["", intervals_note(table), "", "Test images per run (evaluated repeats):", ""]
  header = ["variant"] + [f"{subset_percent(subset)} %" for subset in subsets]
  lines += [_markdown_row(header), _markdown_row(["---"] * len(header))]
  for variant in table.variants:
    counts = [variant]
    for subset in subsets:
      row = table.row(variant, subset)
      if row is None:
        counts.append(NOT_APPLICABLE)
        continue
      text = f"{row.n_test} × {row.repeats}" if row.repeats else MISSING
      if row.repeats and row.repeats_missing:
        text += f" ({row.repeats_missing} missing)"
      counts.append(text)
    lines.append(_markdown_row(counts))
  missing = [text for row in table.rows for text in row.missing]
  if missing:
    lines += ["", "Missing:", ""] + [f"- {text}" for text in missing]
  return "\n".join(lines) + "\n"


def write_markdown(table: ResultsTable, path: str | os.PathLike) -> str:
  text = "# Top-1 and FID per variant and training subset\n\n" + markdown_table(table)
  pathlib.Path(path).write_text(text)
  return str(path)


CSV_COLUMNS = (
  "variant",
  "subset",
  "subset_percent",
  "repeats",
  "repeats_missing",
  "n_test",
  "correct",
  "total",
  "top1",
  "top1_low",
  "top1_high",
  "top1_std",
  "fid",
  "fid_metric",
  "paper_top1",
  "paper_fid",
  "missing",
)


def _csv_value(value) -> str:
  if value is None:
    return ""
  if isinstance(value, list):
    return "; ".join(value)
  return repr(value) if isinstance(value, float) else str(value)


def write_csv(table: ResultsTable, path: str | os.PathLike) -> str:
  """One row per (variant, subset) with every number (accuracies in percent, full precision;
  empty where there is none)."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(CSV_COLUMNS)
  for row in table.rows:
    values = {**dataclasses.asdict(row), "subset_percent": row.subset_percent}
    writer.writerow([_csv_value(values[name]) for name in CSV_COLUMNS])
  pathlib.Path(path).write_text(buffer.getvalue())
  return str(path)


# --- The chart -----------------------------------------------------------------------------------

COLOURS = {
  "original": (31, 119, 180),
  "augmented": (255, 127, 14),
  "cropped_augmented": (44, 160, 44),
  "cropped": (214, 39, 40),
}
_MORE_COLOURS = ((148, 103, 189), (140, 86, 75), (227, 119, 194), (23, 190, 207))
CHART_SIZE = (900, 540)
_MARKER_RADIUS = 5
_DODGE = 8  # pixels between the variants' points at one subset, so that no bar hides another
_DASH, _GAP = 8, 5


def chart_colours(table: ResultsTable) -> dict[str, tuple[int, int, int]]:
  """{variant: RGB}: fixed for the known variants, the next free colour for any other."""
  others = iter(_MORE_COLOURS * (1 + len(table.variants) // len(_MORE_COLOURS)))
  return {variant: COLOURS.get(variant) or next(others) for variant in table.variants}


def chart_dodges(table: ResultsTable) -> dict[str, int]:
  """{variant: sideways shift in pixels} of its points, centred on the subset."""
  count = len(table.variants)
  return {v: round((i - (count - 1) / 2) * _DODGE) for i, v in enumerate(table.variants)}


@dataclasses.dataclass(frozen=True)
class ChartLayout:
  """The plot area [left, right] x [top, bottom] in pixels; x runs over 0..100 % of the training
  split (inset by `pad` pixels), y over [y_min, y_max] percent top-1 (inset by `pad_y`)."""

  width: int
  height: int
  left: int
  top: int
  right: int
  bottom: int
  pad: int
  pad_y: int
  y_min: float
  y_max: float

  def point(self, subset_percent: float, top1: float, dodge: int = 0) -> tuple[int, int]:
    """Pixel of a figure; `dodge` shifts it sideways (see `chart_dodges`)."""
    span = self.right - self.left - 2 * self.pad
    x = self.left + self.pad + subset_percent / 100.0 * span + dodge
    height = self.bottom - self.top - 2 * self.pad_y
    y = self.bottom - self.pad_y - (top1 - self.y_min) / (self.y_max - self.y_min) * height
    return round(x), round(y)


def _chart_values(table: ResultsTable) -> list[float]:
  values = []
  for row in table.rows:
    values += [v for v in (row.top1, row.top1_low, row.top1_high, row.paper_top1) if v is not None]
  return values


def chart_layout(table: ResultsTable, size: tuple[int, int] = CHART_SIZE) -> ChartLayout:
  width, height = int(size[0]), int(size[1])
  if width < 320 or height < 200:
    raise ValueError(f"the chart must be at least 320 x 200 pixels, got {width} x {height}")
  values = _chart_values(table)
  y_min, y_max = 0.0, 100.0
  if values:
    y_min = max(0.0, math.floor((min(values) - 1.0) / 5.0) * 5.0)
    y_max = min(100.0, math.ceil((max(values) + 1.0) / 5.0) * 5.0)
    if y_max - y_min < 5.0:
      y_min, y_max = (y_max - 5.0, y_max) if y_max >= 5.0 else (0.0, 5.0)
  legend = min(230, width // 3)
  return ChartLayout(
    width=width,
    height=height,
    left=70,
    top=40,
    right=width - legend,
    bottom=height - 60,
    pad=max(20, len(table.variants) * _DODGE // 2 + 2 * _MARKER_RADIUS),
    pad_y=2 * _MARKER_RADIUS,
    y_min=y_min,
    y_max=y_max,
  )


def _dashed_line(draw: ImageDraw.ImageDraw, points, fill, width: int) -> None:
  for (x0, y0), (x1, y1) in zip(points, points[1:]):
    length = math.hypot(x1 - x0, y1 - y0)
    start = 0.0
    while start < length:
      end = min(start + _DASH, length)
      a, b = start / length, end / length
      segment = [(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))]
      draw.line(segment, fill=fill, width=width)
      start = end + _GAP


def _circle(draw, centre, fill) -> None:
  x, y = centre
  r = _MARKER_RADIUS
  draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _square(draw, centre, fill) -> None:
  x, y = centre
  r = _MARKER_RADIUS - 1
  draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)


def _y_step(span: float) -> float:
  return next((step for step in (1, 2, 5, 10, 20) if span / step <= 10), 25)


def _draw_axes(image: Image.Image, layout: ChartLayout, subsets: Sequence[float], title: str):
  draw = ImageDraw.Draw(image)
  font, label_font = drawing.font(12), drawing.font(13)
  grid, black = (225, 225, 225), (0, 0, 0)
  step = _y_step(layout.y_max - layout.y_min)
  value = math.ceil(layout.y_min / step) * step
  while value <= layout.y_max + 1e-9:
    _, y = layout.point(0, value)
    draw.line([(layout.left, y), (layout.right, y)], fill=grid)
    draw.text((layout.left - 6, y), f"{value:g}", fill=black, font=font, anchor="rm")
    value += step
  for subset in subsets:
    x, _ = layout.point(subset_percent(subset), layout.y_min)
    draw.line([(x, layout.top), (x, layout.bottom)], fill=grid)
    draw.text(
      (x, layout.bottom + 6), f"{subset_percent(subset)} %", fill=black, font=font, anchor="mt"
    )
  draw.rectangle([layout.left, layout.top, layout.right, layout.bottom], outline=black)
  centre_x = (layout.left + layout.right) // 2
  draw.text((centre_x, 12), title, fill=black, font=label_font, anchor="mt")
  draw.text(
    (centre_x, layout.bottom + 30),
    "training subset (% of the training split)",
    fill=black,
    font=label_font,
    anchor="mt",
  )
  _vertical_text(image, "top-1 on the test split (%)", (8, (layout.top + layout.bottom) // 2))


def _vertical_text(image: Image.Image, text: str, left_centre: tuple[int, int]) -> None:
  """Black text reading bottom-to-top, its left edge at x and centred on y."""
  font = drawing.font(13)
  left, top, right, bottom = font.getbbox(text)
  strip = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
  ImageDraw.Draw(strip).text((1 - left, 1 - top), text, fill=255, font=font)
  strip = strip.rotate(90, expand=True)
  x, y = left_centre
  image.paste((0, 0, 0), (int(x), int(y - strip.height // 2)), strip)


def _draw_legend(draw, layout: ChartLayout, colours: Mapping[str, tuple]) -> None:
  font = drawing.font(12)
  x0, y = layout.right + 16, layout.top + 4
  for variant, colour in colours.items():
    entries = [(variant, False)] + ([(f"{variant} (paper)", True)] if variant in PAPER else [])
    for label, dashed in entries:
      line = [(x0, y + 7), (x0 + 34, y + 7)]
      if dashed:
        _dashed_line(draw, line, colour, 2)
        _square(draw, (x0 + 17, y + 7), colour)
      else:
        draw.line(line, fill=colour, width=2)
        _circle(draw, (x0 + 17, y + 7), colour)
      draw.text((x0 + 42, y + 7), label, fill=(0, 0, 0), font=font, anchor="lm")
      y += 20
    y += 6


def render_chart(table: ResultsTable, size: tuple[int, int] = CHART_SIZE) -> Image.Image:
  """Top-1 against the training subset: a solid line per variant with its bootstrap interval as
  error bars and circles, the paper's figures as dashed lines with squares in the same colour."""
  layout = chart_layout(table, size)
  colours = chart_colours(table)
  dodges = chart_dodges(table)
  image = Image.new("RGB", (layout.width, layout.height), "white")
  title = f"Top-1 against the training subset (bars: {_percent_level(table)} bootstrap interval)"
  _draw_axes(image, layout, table.subsets, title)
  draw = ImageDraw.Draw(image)
  markers = []
  for variant, colour in colours.items():
    paper = [
      layout.point(subset_percent(subset), paper_figures(variant, subset)["top1"], dodges[variant])
      for subset in table.subsets
      if paper_figures(variant, subset)["top1"] is not None
    ]
    _dashed_line(draw, paper, colour, 2)
    markers += [(_square, point, colour) for point in paper]
  for variant, colour in colours.items():
    rows = [row for row in table.rows if row.variant == variant and row.top1 is not None]
    points = [layout.point(row.subset_percent, row.top1, dodges[variant]) for row in rows]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for row, (x, _) in zip(rows, points):
      _, y_low = layout.point(row.subset_percent, row.top1_low)
      _, y_high = layout.point(row.subset_percent, row.top1_high)
      draw.line([(x, y_low), (x, y_high)], fill=colour, width=2)
      cap = _DODGE // 2
      for y in (y_low, y_high):
        draw.line([(x - cap, y), (x + cap, y)], fill=colour, width=2)
    markers += [(_circle, point, colour) for point in points]
  for shape, point, colour in markers:  # last, so that no line hides a figure
    shape(draw, point, colour)
  _draw_legend(draw, layout, colours)
  return image


def write_chart(
  table: ResultsTable, path: str | os.PathLike, size: tuple[int, int] = CHART_SIZE
) -> str:
  render_chart(table, size).save(path, format="PNG")
  return str(path)


# --- The report folder ---------------------------------------------------------------------------


def _link(text: str, target: str | os.PathLike, start: pathlib.Path) -> str:
  relative = pathlib.Path(os.path.relpath(target, start)).as_posix()
  if re.search(r"[\s()<>]", relative):
    relative = f"<{relative}>"
  return f"[{text}]({relative})"


def _cell_title(variant: str, subset: float, repeat: Optional[int] = None) -> str:
  text = f"`{variant}`, {subset_percent(subset)} %"
  return text if repeat is None else f"{text}, repeat {repeat}"


def readme_text(results_dir: pathlib.Path, cells: Sequence[CellResult], table: ResultsTable):
  lines = [
    "# Experiment results",
    "",
    f"{_link('Table', results_dir / 'table.md', results_dir)} · "
    f"{_link('CSV', results_dir / 'table.csv', results_dir)} · "
    f"{_link('JSON', results_dir / 'results.json', results_dir)}",
    "",
    "![Top-1 against the training subset](accuracy.png)",
    "",
    markdown_table(table).rstrip("\n"),
    "",
    "## GAN samples (latest grid of each run)",
    "",
  ]
  gan_rows = [row for row in table.rows if row.has_gan]
  for row in gan_rows:
    grid = row.gan_grid
    link = _link(pathlib.Path(grid).name, grid, results_dir) if grid else MISSING
    lines.append(f"- {_cell_title(row.variant, row.subset)}: {link}")
  if not gan_rows:
    lines.append("No variant trains a GAN.")
  lines += ["", "## Evaluation reports", ""]
  for cell in cells:
    if not cell.evaluated:
      lines.append(f"- {_cell_title(cell.variant, cell.subset, cell.repeat)}: {MISSING}")
      continue
    links = [
      _link(pathlib.Path(path).name, path, results_dir)
      for path in (cell.evaluate_report, cell.metrics_report)
      if os.path.isfile(path)
    ]
    lines.append(f"- {_cell_title(cell.variant, cell.subset, cell.repeat)}: {' · '.join(links)}")
  return "\n".join(lines) + "\n"


def results_json(cells: Sequence[CellResult], table: ResultsTable) -> dict:
  return {
    "paper": PAPER_CITATION,
    "bootstrap": {"samples": table.samples, "level": table.level, "seed": table.seed},
    "rows": [dataclasses.asdict(row) for row in table.rows],
    "cells": [dataclasses.asdict(cell) for cell in cells],
  }


def write_report(
  root: str | os.PathLike, cells: Sequence[CellResult], table: ResultsTable
) -> dict[str, str]:
  """Writes `<root>/results/`: table.md, table.csv, accuracy.png, results.json and a README.md
  linking them, each GAN's latest sample grid and each cell's evaluate reports (relative links).
  Returns {"markdown", "csv", "chart", "json", "readme": path}."""
  results_dir = pathlib.Path(root) / "results"
  results_dir.mkdir(parents=True, exist_ok=True)
  paths = {
    "markdown": write_markdown(table, results_dir / "table.md"),
    "csv": write_csv(table, results_dir / "table.csv"),
    "chart": write_chart(table, results_dir / "accuracy.png"),
  }
  json_path = results_dir / "results.json"
  json_path.write_text(json.dumps(results_json(cells, table), indent=1) + "\n")
  paths["json"] = str(json_path)
  readme = results_dir / "README.md"
  readme.write_text(readme_text(results_dir, cells, table))
  paths["readme"] = str(readme)
  return paths


def report_plan(root: str | os.PathLike) -> tuple:
  """Collects the cells of the plan written under `root` (`plan/plan.json`) and writes the
  results; returns (the paths `write_report` wrote, the table)."""
  root = pathlib.Path(root)
  plan_file = root / "plan" / "plan.json"
  if not plan_file.is_file():
    raise FileNotFoundError(f"{root}: no plan/plan.json; run the experiment first")
  steps = json.loads(plan_file.read_text())["steps"]
  cells = collect(root, steps)
  table = summarise(cells)
  return write_report(root, cells, table), table
