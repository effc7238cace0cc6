"""Importers of official StyleGAN2-ADA network pickles (TF1 and PyTorch) into tfpets networks.

`read_network_pickle(path)` loads either format with the restricted unpickler
(`tfpets.importers.safe_unpickle`: no embedded source is ever executed, only allow-listed globals
resolve) and returns the Keras networks with their inferred configuration;
`convert_network_pickle(path, out_dir)` also writes them with `tfpets.gan.networks.save_networks`.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from tfpets.gan import networks
from tfpets.gan.importers import tf_pickle, torch_pickle
from tfpets.gan.importers.common import ConvertedNetworks
from tfpets.importers import torch_file
from tfpets.importers.safe_unpickle import PickleFormatError, UnsafePickleError, restricted_load

__all__ = [
  "ConvertedNetworks",
  "PickleFormatError",
  "UnsafePickleError",
  "convert_network_pickle",
  "load_pickle",
  "read_network_pickle",
]


def load_pickle(path: str | os.PathLike) -> Any:
  """The restricted-unpickled content of a TF1 or PyTorch network file (stubs, arrays)."""
  source = str(path)
  try:
    with open(path, "rb") as f:
      head = f.read(4)
      f.seek(0)
      if head[:2] == b"PK":
        return torch_file.load_torch_zip(f, torch_pickle.torch_globals(source), source)
      allowed = {**tf_pickle.TF_GLOBALS, **torch_pickle.torch_globals(source)}
      return restricted_load(f, allowed, source)
  except IsADirectoryError as e:
    raise PickleFormatError(f"{source}: is a directory, not a network pickle") from e


def read_network_pickle(path: str | os.PathLike) -> ConvertedNetworks:
  """Official TF1 (G, D, Gs) or PyTorch {G, D, G_ema} pickle -> tfpets networks."""
  source = str(path)
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"{source}: no such network pickle")
  data = load_pickle(path)
  if tf_pickle.is_tf_pickle(data):
    return tf_pickle.convert_tf(data, source)
  if torch_pickle.is_torch_pickle(data):
    return torch_pickle.convert_torch(data, source)
  raise PickleFormatError(
    f"{source}: neither a TF1 (G, D, Gs) tuple of dnnlib Networks nor a "
    f"PyTorch dict with G/D/G_ema modules (found {type(data).__name__})"
  )


def convert_network_pickle(
  path: str | os.PathLike, out_dir: str | os.PathLike
) -> ConvertedNetworks:
  """Reads `path` and writes <name>.weights.h5 per network plus config.json into `out_dir`."""
  converted = read_network_pickle(path)
  extra = {
    "source": {
      "pickle": str(path),
      "format": converted.source_format,
      "notes": converted.notes,
      **converted.extra,
    }
  }
  networks.save_networks(out_dir, converted.config, converted.networks, extra=extra)
  return converted
