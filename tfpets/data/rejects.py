"""What a conversion skipped or changed, and why: nothing is dropped silently."""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
from typing import List

SKIPPED = "skipped"  # the item is not in the output
CONVERTED = "converted"  # the item is in the output, changed (re-encoded, alpha dropped, ...)
ANNOTATION_DROPPED = "annotation_dropped"  # the image is kept, a bad annotation is not
IGNORED = "ignored"  # a file that is not part of the dataset (stray .mat, README, ...)
DUPLICATE_KEPT = "duplicate_kept"  # a duplicate found and reported, left in (--dedupe=report)


@dataclasses.dataclass
class Entry:
  path: str
  reason: str
  action: str


class RejectsReport:
  """Collects (file, reason, action) rows; written as CSV under the run's reports/ folder."""

  def __init__(self):
    self.entries: List[Entry] = []

  def add(self, path: str, reason: str, action: str = SKIPPED) -> None:
    self.entries.append(Entry(str(path), reason, action))

  def extend(self, other: "RejectsReport") -> None:
    self.entries.extend(other.entries)

  def paths(self, action: str = SKIPPED) -> List[str]:
    return [e.path for e in self.entries if e.action == action]

  def counts(self) -> collections.Counter:
    return collections.Counter(e.action for e in self.entries)

  def __len__(self) -> int:
    return len(self.entries)

  def write_csv(self, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["file", "reason", "action"])
      for e in self.entries:
        writer.writerow([e.path, e.reason, e.action])
    return path

  def summary(self) -> str:
    c = self.counts()
    if not c:
      return "no file skipped or changed"
    return ", ".join(f"{n} {action.replace('_', ' ')}" for action, n in sorted(c.items()))
