"""A tiny converted dataset of synthetic pets with landmarks, shared by the landmark tests."""

from __future__ import annotations

import pathlib

import pytest

from tfpets.data import convert, sources, synthetic


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> pathlib.Path:
  """20 synthetic pets (2 breeds, 64 px, aspect 0.8..1.25) split 12/4/4, as shard records."""
  root = tmp_path_factory.mktemp("landmark_records")
  csv_path = synthetic.write_dataset(
    str(root / "source"),
    num_breeds=2,
    images_per_breed=10,
    size=64,
    seed=1,
    workers=1,
    aspect_range=(0.8, 1.25),
  )
  options = convert.ConvertOptions(
    splits="train=0.6,val=0.2,test=0.2", dedupe="off", gan_resolution=0, workers=1
  )
  convert.convert(
    sources.load_source(f"csv:{csv_path}"), root / "records", root / "reports", options
  )
  return root / "records" / "shards"
