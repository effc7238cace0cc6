"""CSV image lists: one row per image.

Header required. Columns:
  path, label                     required; path relative to the CSV's folder (or absolute), label a
                                  class name
  species, split                  optional strings
  xmin, ymin, xmax, ymax          optional box in pixels (all four or none)
  lm0_x, lm0_y, ... lm{N-1}_y     optional landmarks, N = 9 or 5 (all or none)
Empty cells mean absent. Classes are the sorted label names of the rows kept. Rows that cannot be
used (missing file, malformed number, half-filled box, duplicate path, ...) are SKIPPED with their
row number (the line number in the file, the header being line 1). The synthetic pets are written in
this format.
"""

from __future__ import annotations

import csv
import math
import os
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
from absl import logging

from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult, folders

REQUIRED_COLUMNS = ("path", "label")
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
OPTIONAL_TEXT_COLUMNS = ("species", "split")
_LANDMARK_COLUMN = re.compile(r"^lm(\d+)_([xy])$")


class _RowError(ValueError):
  """A row that cannot be used; the message is the reject reason."""


def landmark_columns(num_points: int) -> List[str]:
  """`lm0_x, lm0_y, ..., lm{n-1}_y` in file order."""
  return [f"lm{i}_{axis}" for i in range(num_points) for axis in "xy"]


def load_csv(location: str, source: str = "csv", **unused_options) -> SourceResult:
  """Reads a CSV image list (see the module docstring for the columns)."""
  if not os.path.isfile(location):
    raise FileNotFoundError(f"{location}: no such CSV file")
  base_dir = os.path.dirname(os.path.abspath(location))
  rejects = rejects_lib.RejectsReport()
  with open(location, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    num_points = _check_header(location, reader.fieldnames)
    reader.fieldnames = [c.strip() for c in reader.fieldnames]
    rows = []
    first_row_of: Dict[str, int] = {}
    for row in reader:
      row_number = reader.line_num
      try:
        record = _parse_row(row, row_number, base_dir, num_points, source)
      except _RowError as e:
        rejects.add(_row_path(row, base_dir, location, row_number), str(e))
        continue
      if record.path in first_row_of:
        rejects.add(record.path, f"row {row_number}: duplicate of row {first_row_of[record.path]}")
        continue
      first_row_of[record.path] = row_number
      rows.append(record)
  class_names = sorted({r.class_name for r in rows})
  index = {name: i for i, name in enumerate(class_names)}
  for record in rows:
    record.label = index[record.class_name]
  folders.require_records(rows, rejects, location)
  return SourceResult(rows, class_names, rejects)


def _check_header(location: str, fieldnames: Optional[Sequence[str]]) -> int:
  """Validates the header; returns the landmark count (0 when there are no landmark columns)."""
  if not fieldnames:
    raise ValueError(f"{location}: empty file; expected a header with columns path,label")
  columns = [c.strip() for c in fieldnames]
  missing = [c for c in REQUIRED_COLUMNS if c not in columns]
  if missing:
    raise ValueError(
      f"{location}: header lacks required column(s) {', '.join(missing)} "
      f"(found: {', '.join(columns)})"
    )
  present_box = [c for c in BOX_COLUMNS if c in columns]
  if present_box and len(present_box) != len(BOX_COLUMNS):
    raise ValueError(
      f"{location}: box columns need all of {','.join(BOX_COLUMNS)} "
      f"(found only {','.join(present_box)})"
    )
  landmark_cols = [c for c in columns if _LANDMARK_COLUMN.match(c)]
  num_points = len(landmark_cols) // 2
  if landmark_cols and (
    num_points not in (9, 5) or sorted(landmark_cols) != sorted(landmark_columns(num_points))
  ):
    raise ValueError(
      f"{location}: landmark columns must be lm0_x,lm0_y,...,lm{{N-1}}_y for N = 9 "
      f"or 5 (found {','.join(landmark_cols)})"
    )
  known = set(REQUIRED_COLUMNS + BOX_COLUMNS + OPTIONAL_TEXT_COLUMNS) | set(landmark_cols)
  unknown = [c for c in columns if c not in known]
  if unknown:
    logging.warning("%s: ignoring unknown column(s) %s", location, ", ".join(unknown))
  return num_points


def _cell(row: Dict[str, Optional[str]], column: str) -> str:
  value = row.get(column)
  return value.strip() if value else ""


def _parse_row(
  row: Dict[str, Optional[str]], row_number: int, base_dir: str, num_points: int, source: str
) -> ImageRecord:
  if None in row:
    raise _RowError(f"row {row_number}: more cells than header columns")
  path, class_name = _cell(row, "path"), _cell(row, "label")
  if not path:
    raise _RowError(f"row {row_number}: empty path")
  if not class_name:
    raise _RowError(f"row {row_number}: empty label")
  full_path = _resolve(path, base_dir)
  box = _numbers(row, BOX_COLUMNS, row_number, "box")
  landmarks = _numbers(row, landmark_columns(num_points), row_number, "landmark")
  if not os.path.isfile(full_path):
    raise _RowError(f"row {row_number}: file not found")
  return ImageRecord(
    path=full_path,
    label=-1,
    class_name=class_name,
    box=box,
    landmarks=None if landmarks is None else np.reshape(landmarks, (-1, 2)),
    species=_cell(row, "species"),
    split=_cell(row, "split"),
    source=source,
  )


def _numbers(
  row: Dict[str, Optional[str]], columns: Sequence[str], row_number: int, what: str
) -> Optional[List[float]]:
  """All-empty -> None; all numbers -> the list; anything else -> _RowError naming the column."""
  if not columns or all(not _cell(row, c) for c in columns if c in row):
    return None
  values = []
  for column in columns:
    text = _cell(row, column)
    if not text:
      raise _RowError(f"row {row_number}: {what} partly empty (column {column} is empty)")
    try:
      value = float(text)
    except ValueError:
      raise _RowError(f"row {row_number}: malformed number {text!r} in column {column}") from None
    if not math.isfinite(value):
      raise _RowError(f"row {row_number}: non-finite number {text!r} in column {column}")
    values.append(value)
  return values


def _resolve(path: str, base_dir: str) -> str:
  return os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def _row_path(row: Dict[str, Optional[str]], base_dir: str, location: str, row_number: int) -> str:
  path = _cell(row, "path")
  return _resolve(path, base_dir) if path else f"{location}:{row_number}"
