"""TF Serving's model folder layout: `<export_dir>/<model_name>/<version>/`, versions never reused.

TF Serving watches `<export_dir>/<model_name>` and serves the integer-named sub-folders (by default
the highest); see the TF Serving documentation, "TensorFlow Serving with Docker" and
"SavedModel Warmup". An export is written into a hidden staging folder beside the versions (a
name TF Serving does not take for a version) and renamed to its version only once complete, so a
server never loads half an export; an existing version is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import tempfile
from typing import Iterator, List

from tfpets.errors import ArgumentError

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def model_dir(export_dir: str | os.PathLike, name: str) -> pathlib.Path:
  """`<export_dir>/<name>`, the folder TF Serving's --model_base_path points at."""
  if not _MODEL_NAME.fullmatch(name or ""):
    raise ArgumentError(
      "name", name, "must be a folder name of letters, digits, '.', '_' or '-' (TF Serving's model)"
    )
  return pathlib.Path(export_dir) / name


def versions(model_path: str | os.PathLike) -> List[int]:
  """The versions under a model folder, ascending: its sub-folders named by an integer."""
  path = pathlib.Path(model_path)
  if not path.is_dir():
    return []
  return sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_path: str | os.PathLike) -> int:
  """One more than the highest version, 1 for a new model."""
  return max(versions(model_path), default=0) + 1


def resolve_version(model_path: str | os.PathLike, version: int | None) -> int:
  """`version`, or the next free one when None; an existing version is refused."""
  if version is None:
    return next_version(model_path)
  if isinstance(version, bool) or not isinstance(version, int) or version < 1:
    raise ArgumentError("version", version, "must be a positive integer (TF Serving's versions)")
  if (pathlib.Path(model_path) / str(version)).exists():
    raise ArgumentError(
      "version",
      version,
      f"{pathlib.Path(model_path) / str(version)} exists; an export never overwrites a version "
      "(leave the version out to take the next free one)",
    )
  return version


def version_dir(path: str | os.PathLike, name: str = "") -> pathlib.Path:
  """The version folder `path` names: a version folder itself, else the highest version of the
  model folder `path` or, failing that, of `path`/`name`."""
  path = pathlib.Path(path)
  if (path / "saved_model.pb").is_file():
    return path
  for model_path in (path, path / name) if name else (path,):
    found = versions(model_path)
    if found:
      return model_path / str(found[-1])
  raise ArgumentError(
    "directory", str(path), "holds no exported version (<model_name>/<version>/saved_model.pb)"
  )


@contextlib.contextmanager
def staged_version(model_path: str | os.PathLike, version: int) -> Iterator[pathlib.Path]:
  """Yields an empty staging folder; on success it becomes `<model_path>/<version>` in one
  rename, on failure it is removed."""
  model_path = pathlib.Path(model_path)
  model_path.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_path))
  try:
    yield staging
    publish(staging, model_path / str(version))
  finally:
    if staging.exists():
      shutil.rmtree(staging)


def publish(staging: pathlib.Path, target: pathlib.Path) -> None:
  """Renames `staging` to `target`, refusing to replace anything there."""
  if target.exists():
    raise ArgumentError("version", int(target.name), f"{target} appeared while exporting")
  staging.chmod(0o755)  # mkdtemp makes it private; a server often runs as another user
  # A rename onto an existing non-empty folder fails on POSIX, so a race cannot replace a version.
  os.rename(staging, target)
