"""What a StyleGAN2-ADA run writes at a snapshot, and the networks a run can start from.

Image grids follow the official training loop (NVlabs/stylegan2-ada-pytorch,
`training/training_loop.py`, `setup_snapshot_image_grid` and `save_image_grid`): a grid of
`gw x gh` images with gw = clip(7680 // W, 7, 32) and gh = clip(4320 // H, 4, 32), no padding, the
fakes drawn by G_ema from latents fixed for the whole run (so that snapshots compare), with
constant noise, and named by the images seen: `fakes%06d.png` % kimg.

Network snapshots are folders `snapshots/network-snapshot-%06d/` (kimg) in the form
`tfpets.gan.networks.save_networks` writes (G, D, G_ema and config.json), which
`tfpets.gan.networks.load_networks`, `--stage=metrics` and the generation stage read.

`read_start_networks` reads the networks a run starts from (`--gan_resume`): a snapshot folder, a
run folder (its newest snapshot) or an official TF1 or PyTorch pickle, read by
`tfpets.gan.importers` without executing anything embedded in it.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfpets.gan import importers, networks
from tfpets.gan.presets import NetworkConfig
from tfpets.runtime.tensorboard import make_grid

SNAPSHOTS_DIR = "snapshots"
_SNAPSHOT = re.compile(r"network-snapshot-(\d{6,})")


def grid_shape(resolution: int) -> tuple[int, int]:
  """(columns, rows) of the official snapshot grid for square images of side `resolution`."""
  columns = int(np.clip(7680 // resolution, 7, 32))
  rows = int(np.clip(4320 // resolution, 4, 32))
  return columns, rows


def fixed_latents(count: int, z_dim: int, seed: int) -> np.ndarray:
  """The grid's latents [count, z_dim], the same for every snapshot of a run with `seed`."""
  return np.random.RandomState(seed).standard_normal([count, z_dim]).astype(np.float32)


def generate_images(
  generator: networks.Generator, z: np.ndarray, c: np.ndarray | None, batch_size: int = 64
) -> np.ndarray:
  """uint8 NHWC images of `generator` at latents z (labels c), constant noise, no truncation."""
  synthesize = tf.function(
    lambda z, c: generator((z, c), training=False, noise_mode="const"), reduce_retracing=True
  )
  images = []
  for start in range(0, len(z), batch_size):
    c_part = None if c is None else tf.constant(c[start : start + batch_size])
    out = synthesize(tf.constant(z[start : start + batch_size]), c_part)
    images.append(to_uint8(out))
  return np.concatenate(images)


def to_uint8(images: Any) -> np.ndarray:
  """Images in [-1, 1] -> uint8 as the official `save_image_grid`: rint((x + 1) * 127.5), clipped."""
  images = np.asarray(tf.cast(images, tf.float32))
  return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_grid(path: str | os.PathLike, images: np.ndarray, columns: int) -> np.ndarray:
  """Tiles uint8 NHWC `images` row-major into a PNG at `path` (atomically); returns the grid."""
  grid = make_grid(images, columns=columns, pad=0)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(tf.io.encode_png(grid).numpy())
  os.replace(tmp, path)
  return grid


def fakes_name(cur_nimg: int) -> str:
  return f"fakes{cur_nimg // 1000:06d}.png"


def snapshot_dir(run_dir: str | os.PathLike, cur_nimg: int) -> pathlib.Path:
  return pathlib.Path(run_dir) / SNAPSHOTS_DIR / f"network-snapshot-{cur_nimg // 1000:06d}"


def save_snapshot(
  run_dir: str | os.PathLike,
  cur_nimg: int,
  config: NetworkConfig,
  models: Mapping[str, Any],
  extra: Mapping[str, Any],
) -> pathlib.Path:
  """Writes G, D, G_ema and config.json (with kimg and `extra`) into the snapshot folder."""
  directory = snapshot_dir(run_dir, cur_nimg)
  networks.save_networks(directory, config, models, {"kimg": cur_nimg / 1000, **extra})
  return directory


def latest_snapshot(run_dir: str | os.PathLike) -> pathlib.Path | None:
  """The snapshot folder of `run_dir` with the most images seen, or None."""
  found = []
  for path in (pathlib.Path(run_dir) / SNAPSHOTS_DIR).glob("network-snapshot-*"):
    match = _SNAPSHOT.fullmatch(path.name)
    if match and (path / networks.CONFIG_FILE).is_file():
      found.append((int(match.group(1)), path))
  return max(found)[1] if found else None


def read_start_networks(source: str | os.PathLike) -> tuple[NetworkConfig, dict[str, Any], str]:
  """(config, {name: model}, what was read) of a snapshot folder, a run folder or a pickle.

  A run folder stands for its newest snapshot. Raises FileNotFoundError when `source` does not
  exist and ValueError when it holds no networks.
  """
  path = pathlib.Path(source)
  if not path.exists():
    raise FileNotFoundError(f"{source}: no such snapshot folder, run folder or network pickle")
  if path.is_dir():
    if not (path / networks.CONFIG_FILE).is_file():
      latest = latest_snapshot(path)
      if latest is None:
        raise ValueError(
          f"{source}: neither a network snapshot (config.json) nor a run folder with snapshots/"
        )
      path = latest
    config, models = networks.load_networks(path)
    return config, models, str(path)
  converted = importers.read_network_pickle(path)
  return converted.config, converted.networks, f"{path} ({converted.source_format} pickle)"


def read_generator(source: str | os.PathLike) -> tuple[networks.Generator, str]:
  """(generator, what was read) of a snapshot folder, a run folder or a pickle: its G_ema if it has
  one, else its G. Raises as `read_start_networks` does, and ValueError without a generator."""
  _, models, what = read_start_networks(source)
  generator = models.get("G_ema", models.get("G"))
  if generator is None:
    raise ValueError(f"{source}: {what} holds no G_ema or G")
  return generator, what


def copy_weights(source: networks.Generator | Any, target: Any) -> None:
  """Assigns every weight of `source` to the same weight of `target` (the same architecture)."""
  pairs: Sequence[tuple[Any, Any]] = list(zip(source.weights, target.weights))
  if len(source.weights) != len(target.weights) or any(
    tuple(s.shape) != tuple(t.shape) for s, t in pairs
  ):
    raise ValueError(f"{source.name}: its weights do not fit the network being trained")
  for s, t in pairs:
    t.assign(s)
