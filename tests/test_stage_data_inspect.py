"""`--stage=data` then `--stage=inspect` end to end, as a user runs them (small settings)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from tests.runtime.test_launch import launch


def test_data_then_inspect_on_the_synthetic_pets(tmp_path):
  data_dir, inspect_dir = tmp_path / "data", tmp_path / "inspect"
  result = launch(
    "--stage=data",
    f"--workdir={data_dir}",
    "--synthetic_breeds=4",
    "--synthetic_per_breed=10",
    "--synthetic_size=64",
    "--data_gan_resolution=32",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  manifest = json.loads((data_dir / "records" / "shards" / "manifest.json").read_text())
  assert manifest["num_classes"] == 4
  assert sum(s["num_examples"] for s in manifest["splits"].values()) == 40
  assert manifest["splits"]["train"]["num_examples"] == 32  # 80 % of 10 per breed
  assert len(list((data_dir / "source").glob("*/*.jpg"))) == 40
  assert (data_dir / "records" / "stylegan" / "stylegan-r05.tfrecords").is_file()

  result = launch("--stage=inspect", f"--records={data_dir}", f"--workdir={inspect_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((inspect_dir / "reports" / "inspect.json").read_text())
  assert report["shards"]["counts"] == {"train": 32, "val": 4, "test": 4}
  assert report["stylegan"]["count"] == 32 and report["stylegan"]["resolution"] == 32
  sheet = np.asarray(Image.open(inspect_dir / "images" / "contact_sheet_train.png"))
  assert sheet.shape == (4 * 98 + 2, 6 * 98 + 2, 3)  # a row of 6 96-px tiles per class
  levels = np.asarray(Image.open(inspect_dir / "images" / "stylegan_levels.png"))
  assert levels.shape[2] == 3 and levels.std() > 10


def test_inspect_reports_a_corrupt_record_file(tmp_path):
  data_dir = tmp_path / "data"
  assert (
    launch(
      "--stage=data",
      f"--workdir={data_dir}",
      "--synthetic_breeds=2",
      "--synthetic_per_breed=5",
      "--synthetic_size=32",
      "--data_gan_resolution=0",
    ).returncode
    == 0
  )
  shard = next((data_dir / "records" / "shards").glob("train-*.tfrecord"))
  raw = bytearray(shard.read_bytes())
  raw[len(raw) // 2] ^= 0xFF  # flip one byte mid-file
  shard.write_bytes(bytes(raw))
  result = launch("--stage=inspect", f"--records={data_dir}", f"--workdir={tmp_path / 'i'}")
  assert result.returncode == 2
  assert "problem(s)" in result.stderr and "Traceback" not in result.stderr
