"""Check a converted dataset folder (every record decodes, counts) and draw contact sheets."""

from __future__ import annotations

import json
import pathlib

from absl import flags

from tfpets.data import inspect as inspect_lib
from tfpets.errors import UsageError
from tfpets.runtime import context

NEEDS_STRATEGY = False

CONTACT_PER_CLASS = flags.DEFINE_integer(
  "contact_per_class", 6, "Images per class on the contact sheet.", lower_bound=1
)


def records_root(path: str) -> pathlib.Path:
  """Accepts the data stage's workdir, its records/ folder, or a shards/stylegan folder."""
  root = pathlib.Path(path)
  for candidate in (root / "records", root):
    if (candidate / "shards").is_dir() or (candidate / "stylegan").is_dir():
      return candidate
  if (root / "manifest.json").is_file():
    return root.parent
  raise UsageError(
    f"--records={path}: no converted dataset there (expected records/shards/"
    "manifest.json or records/stylegan/); run --stage=data first"
  )


def run(ctx: context.RunContext) -> None:
  root = records_root(ctx.flags.records)
  report = {}
  if (root / "shards").is_dir():
    report["shards"] = inspect_lib.inspect_shards(root / "shards")
    for split in report["shards"]["counts"]:
      sheet = inspect_lib.contact_sheet(root / "shards", split, CONTACT_PER_CLASS.value)
      inspect_lib.write_png(ctx.workdir.images / f"contact_sheet_{split}.png", sheet)
  if (root / "stylegan").is_dir():
    report["stylegan"] = inspect_lib.inspect_multires(root / "stylegan")
    inspect_lib.write_png(
      ctx.workdir.images / "stylegan_levels.png", inspect_lib.multires_sheet(root / "stylegan")
    )
  problems = [p for part in report.values() for p in part["problems"]]
  (ctx.workdir.reports / "inspect.json").write_text(json.dumps(report, indent=2) + "\n")
  print(
    json.dumps(
      {k: {kk: v for kk, v in part.items() if kk != "class_names"} for k, part in report.items()},
      indent=2,
    )
  )
  print(f"contact sheets: {ctx.workdir.images}")
  if problems:
    raise UsageError(
      f"{len(problems)} problem(s) in {root}, first: {problems[0]}; "
      f"see {ctx.workdir.reports / 'inspect.json'}"
    )
