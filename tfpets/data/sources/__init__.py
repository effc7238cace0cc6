"""Dataset sources: every on-disk format becomes a list of ImageRecords plus a rejects report.

A dataset is named by a spec string, `KIND` or `KIND:LOCATION`:

  synthetic                      the embedded synthetic pets (rendered into the run's workdir)
  folder:DIR                     class folders DIR/<class>/<image>
  csv:FILE                       CSV with columns path,label[,xmin,ymin,xmax,ymax][,x0,y0,...]
  oxford_pets:DIR                Oxford-IIIT Pet official layout (images/, annotations/)
  stanford_cars:DIR              Stanford Cars devkit layout (devkit/, cars_train/, cars_test/)
  cat:DIR                        Kaggle CAT layout (.jpg + .jpg.cat / .animal sidecars)
  tfds:oxford_iiit_pet|cars196   tensorflow-datasets builders, prepared offline from local archives
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, List, Tuple

from tfpets.data.records import ImageRecord
from tfpets.data.rejects import RejectsReport
from tfpets.errors import ArgumentError


@dataclasses.dataclass
class SourceResult:
  records: List[ImageRecord]
  class_names: List[str]
  rejects: RejectsReport


# kind -> "module:function"; each function takes (location: str, **options) -> SourceResult.
_LOADERS: Dict[str, str] = {
  "folder": "tfpets.data.sources.folders:load_folders",
  "csv": "tfpets.data.sources.csv_source:load_csv",
  "oxford_pets": "tfpets.data.sources.oxford_pets:load_oxford_pets",
  "stanford_cars": "tfpets.data.sources.stanford_cars:load_stanford_cars",
  "cat": "tfpets.data.sources.cat_landmarks:load_cat_dataset",
  "tfds": "tfpets.data.sources.tfds_source:load_tfds",
}
KINDS = ("synthetic",) + tuple(_LOADERS)


def parse_spec(spec: str) -> Tuple[str, str]:
  """'kind:location' -> (kind, location); raises ValueError listing the valid kinds."""
  kind, _, location = spec.partition(":")
  if kind not in KINDS:
    raise ArgumentError(
      "data", spec, f"unknown dataset kind {kind!r}; valid kinds: {', '.join(KINDS)}"
    )
  if kind != "synthetic" and not location:
    raise ArgumentError("data", spec, f"needs a location: {kind}:PATH")
  return kind, location


def loader_for(kind: str) -> Callable[..., SourceResult]:
  module_name, fn_name = _LOADERS[kind].split(":")
  return getattr(importlib.import_module(module_name), fn_name)


def load_source(spec: str, **options) -> SourceResult:
  """Loads a non-synthetic dataset spec (the synthetic one is rendered first, then read as csv)."""
  kind, location = parse_spec(spec)
  if kind == "synthetic":
    raise ValueError(
      "render the synthetic dataset with tfpets.data.synthetic first, "
      "then load its CSV with load_source('csv:...')"
    )
  return loader_for(kind)(location, **options)
