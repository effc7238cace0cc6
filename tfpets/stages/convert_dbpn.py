"""Convert an official DBPN checkpoint (alterzero/DBPN-Pytorch `.pth`) into a Keras model.

Reads the state dict in either of PyTorch's file formats without PyTorch, through a restricted
unpickler that runs nothing from the file; infers the network (D-DBPN, DBPN-LL, DBPN-RES-MR64-3 or
DBPN-S) and its scale from the tensors and says so, or names the keys that fit none. Writes
models/dbpn.keras and models/dbpn.weights.h5 (docs/superres.md) and reports/convert_dbpn.json.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags, logging

from tfpets.errors import UsageError
from tfpets.importers.safe_unpickle import PickleFormatError
from tfpets.runtime import context
from tfpets.superres import convert, dbpn

NEEDS_STRATEGY = False

CHECKPOINT = flags.DEFINE_string(
  "dbpn_checkpoint",
  "",
  "Official DBPN checkpoint to convert (models/DBPN_x4.pth and the like): a state dict saved by "
  "torch.save in its zip or legacy format, with or without DataParallel's 'module.' prefix.",
)
VARIANT = flags.DEFINE_enum(
  "dbpn_variant",
  "auto",
  ["auto", *dbpn.VARIANTS],
  "Network the checkpoint holds: auto (inferred from its tensors), dbpn (D-DBPN, T = 7), dbpnll "
  "(T = 10), dbpn_res_mr64_3 (recurrent, residual) or dbpns (DBPN-S).",
)
# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {"checkpoint": "dbpn_checkpoint", "variant": "dbpn_variant"}


def run(ctx: context.RunContext) -> None:
  if not CHECKPOINT.value:
    raise UsageError("--dbpn_checkpoint is required: the official .pth file to convert")
  path = pathlib.Path(CHECKPOINT.value)
  if not path.is_file():
    raise UsageError(f"--dbpn_checkpoint={path}: no such file")
  variant = None if VARIANT.value == "auto" else VARIANT.value
  try:
    result = convert.convert_checkpoint(path, ctx.workdir.root / "models", variant=variant)
  except PickleFormatError as e:
    raise UsageError(str(e)) from e
  report = {
    "checkpoint": str(path),
    "network": convert.describe(result.variant, result.scale, result.residual, result.parameters),
    "variant": result.variant,
    "scale": result.scale,
    "residual": result.residual,
    "parameters": result.parameters,
    "keras": str(result.keras_path),
    "weights": str(result.weights_path),
    "notes": result.notes,
  }
  (ctx.workdir.reports / "convert_dbpn.json").write_text(json.dumps(report, indent=2) + "\n")
  logging.info(
    "wrote %s; next: --stage=superres --sr_model=%s", result.keras_path, ctx.workdir.root
  )
  print(json.dumps(report, indent=2))
