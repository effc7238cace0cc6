"""One folder per run: flags, logs, checkpoints, records, reports and images (DESIGN.md)."""

from __future__ import annotations

import os
import pathlib
from typing import Iterable

from absl import flags

_SUBDIRS = ("logs", "checkpoints", "records", "reports", "images")


class Workdir:
  """Paths of a run; sub-folders are created on first access."""

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)

  def __getattr__(self, name: str) -> pathlib.Path:
    if name not in _SUBDIRS:
      raise AttributeError(name)
    path = self.root / name
    path.mkdir(parents=True, exist_ok=True)
    return path

  def save_flags(self, flag_values: flags.FlagValues, modules: Iterable[str] = ("tfpets",)) -> str:
    """Writes every tfpets flag with its resolved value, as a flagfile that reproduces the run."""
    from tfpets.runtime.flags import deprecated_aliases

    skip = deprecated_aliases()  # each alias repeats the value its flag already holds
    self.root.mkdir(parents=True, exist_ok=True)
    lines = []
    for module, module_flags in sorted(flag_values.flags_by_module_dict().items()):
      if not any(m in module for m in modules):
        continue
      for flag in sorted(module_flags, key=lambda f: f.name):
        if flag.name not in skip:
          lines.append(flag.serialize())
    path = self.root / "flags.txt"
    tmp = path.with_suffix(".txt.tmp")
    tmp.write_text("\n".join(line for line in lines if line) + "\n")
    os.replace(tmp, path)
    return str(path)
