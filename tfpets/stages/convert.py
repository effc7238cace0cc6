"""Convert an official StyleGAN2-ADA network pickle (TF1 or PyTorch) into tfpets networks.

Reads the pickle with a restricted unpickler that never executes the source embedded in it, infers
the network configuration, and writes <workdir>/config.json plus one <name>.weights.h5 per network
(G, D, G_ema, whichever the pickle holds), loadable with `tfpets.gan.networks.load_networks`.
A summary (configuration, parameter counts, ignored variables) goes to reports/convert.json.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import flags, logging

from tfpets.errors import UsageError
from tfpets.gan import importers
from tfpets.runtime import context

NEEDS_STRATEGY = False

PICKLE = flags.DEFINE_string(
  "pickle",
  "",
  "Official StyleGAN2-ADA network pickle for --stage=convert: a TF1 snapshot (tuple G, D, Gs) "
  "or a PyTorch snapshot (dict with G, D, G_ema; a plain pickle or a torch.save zip). Read "
  "without TensorFlow 1, torch or the embedded code; written to --workdir as config.json and "
  "<net>.weights.h5.",
)


def run(ctx: context.RunContext) -> None:
  if not PICKLE.value:
    raise UsageError("--pickle is required: the network pickle to convert")
  path = pathlib.Path(PICKLE.value)
  if not path.is_file():
    raise UsageError(f"--pickle={path}: no such file")
  try:
    converted = importers.convert_network_pickle(path, ctx.workdir.root)
  except importers.PickleFormatError as e:
    raise UsageError(str(e)) from e
  report = {
    "pickle": str(path),
    "format": converted.source_format,
    "network": converted.config.to_dict(),
    "notes": converted.notes,
    "parameters": {
      name: {
        "trainable": sum(int(np.prod(v.shape)) for v in model.trainable_weights),
        "total": int(model.count_params()),
      }
      for name, model in converted.networks.items()
    },
  }
  (ctx.workdir.reports / "convert.json").write_text(json.dumps(report, indent=2) + "\n")
  for note in converted.notes:
    logging.warning("%s", note)
  logging.info(
    "converted %s (%s, %d px, networks %s) into %s",
    path,
    converted.source_format,
    converted.config.resolution,
    ", ".join(sorted(converted.networks)),
    ctx.workdir.root,
  )
