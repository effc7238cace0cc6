"""Images from a trained StyleGAN2-ADA generator, seeded as the official scripts seed them.

Two conventions give a seed its latent and noise (docs/generate.md):

* `pytorch` (NVlabs/stylegan2-ada-pytorch, `generate.py`): z = RandomState(seed).randn(1, z_dim);
  the noise comes from `noise_mode` ('const': the stored `noise_const` buffers); truncation psi 1.
* `tf1` (NVlabs/stylegan2-ada, `generate.py`): rnd = RandomState(seed), z = rnd.randn(1, z_dim),
  then every noise buffer of the synthesis network, in layer order (4x4 first, then conv0 and conv1
  of each resolution), is drawn from the same rnd with its [1, 1, R, R] shape and used as constant
  noise; truncation psi 0.5.

Both turn images into uint8 as clip(x * 127.5 + 128, 0, 255), truncated. Style mixing follows the
official `style_mixing.py` of both codes: latents RandomState(seed).randn(z_dim), the stored noise
buffers, and ws truncated on every layer.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import re
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError
from tfpets.gan import layers, metrics, networks, snapshot

CONVENTIONS = ("pytorch", "tf1")
DEFAULT_TRUNCATION = {"pytorch": 1.0, "tf1": 0.5}
NOISE_MODES = layers.NoiseInjection.NOISE_MODES
# Style layers named as in the StyleGAN paper (Karras et al., CVPR 2019, section 3.1 and Figure 3):
# coarse 4-8 px, middle 16-32 px, fine 64 px and above. End None: up to the last layer.
STYLE_RANGES = {"coarse": (0, 4), "middle": (4, 8), "fine": (8, None)}
MAX_SEED = 2**32 - 1  # numpy RandomState seeds are unsigned 32-bit
_RANGE = re.compile(r"(\d+)-(\d+)")


def _parse_ranges(text: str, argument: str, names: dict[str, range] | None = None) -> list[int]:
  """'50-70,1,5,9' -> [50, ..., 70, 1, 5, 9]; `names` maps words to ranges."""
  values: list[int] = []
  parts = [part.strip() for part in str(text).split(",")]
  if not any(parts):
    raise ArgumentError(argument, text, "empty; give numbers and ranges such as 0-3,7")
  for part in parts:
    match = _RANGE.fullmatch(part)
    if names is not None and part.lower() in names:
      values.extend(names[part.lower()])
    elif match:
      start, stop = int(match.group(1)), int(match.group(2))
      if start > stop:
        raise ArgumentError(argument, text, f"{part!r} is a range from high to low")
      values.extend(range(start, stop + 1))
    elif part.isdecimal():
      values.append(int(part))
    else:
      words = f", a name ({', '.join(names)})" if names else ""
      raise ArgumentError(
        argument, text, f"{part!r} is not a number, a range a-b{words} (e.g. 0-3,7)"
      )
  return values


def parse_seeds(text: str, argument: str = "seeds") -> list[int]:
  """Seeds from 'a,b,c', 'a-b' or a mix ('50-70,1,5,9'), in the order given."""
  seeds = _parse_ranges(text, argument)
  too_big = [seed for seed in seeds if seed > MAX_SEED]
  if too_big:
    raise ArgumentError(argument, text, f"seed {too_big[0]} is above {MAX_SEED}")
  return seeds


def parse_styles(text: str, num_ws: int, argument: str = "styles") -> list[int]:
  """Style layers (ws indices) from numbers, ranges and the names coarse, middle, fine."""
  named = {
    name: range(start, num_ws if stop is None else min(stop, num_ws))
    for name, (start, stop) in STYLE_RANGES.items()
  }
  styles = _parse_ranges(text, argument, named)
  if not styles:
    raise ArgumentError(argument, text, f"names no layer of a network with {num_ws} ws")
  beyond = [style for style in styles if style >= num_ws]
  if beyond:
    raise ArgumentError(
      argument, text, f"layer {beyond[0]} is beyond the network's {num_ws} ws (0-{num_ws - 1})"
    )
  return sorted(set(styles))


def parse_psis(values: Sequence[str] | str, argument: str = "psis") -> list[float]:
  """Truncation psi values from strings ('1', '0.7', '-0.5')."""
  parts = values.split(",") if isinstance(values, str) else list(values)
  psis = []
  for part in parts:
    try:
      psi = float(part)
    except ValueError:
      psi = math.nan
    if not math.isfinite(psi):
      raise ArgumentError(argument, ",".join(parts), f"{part!r} is not a number")
    psis.append(psi)
  if not psis:
    raise ArgumentError(argument, "", "empty; give psi values such as 1,0.7,0.5,0")
  return psis


def parse_mode_arguments(
  mode: str, seeds: str, psis, row_seeds: str, col_seeds: str, styles: str
) -> dict:
  """The seeds (and psis, or rows, columns and styles) a mode of `RENDERERS` reads, parsed before
  any network is read; styles stay text, parsed against the network's ws count."""
  if mode == "style_mixing":
    return {
      "row_seeds": parse_seeds(row_seeds, "row_seeds"),
      "col_seeds": parse_seeds(col_seeds, "col_seeds"),
      "styles": styles,
    }
  parsed = {"seeds": parse_seeds(seeds, "seeds")}
  if mode == "truncation_sweep":
    parsed["psis"] = parse_psis(psis, "psis")
  return parsed


def check_convention(convention: str) -> str:
  if convention not in CONVENTIONS:
    raise ArgumentError("convention", convention, f"must be one of {', '.join(CONVENTIONS)}")
  return convention


def check_noise_mode(noise_mode: str) -> str:
  if noise_mode not in NOISE_MODES:
    raise ArgumentError("noise_mode", noise_mode, f"must be one of {', '.join(NOISE_MODES)}")
  return noise_mode


def truncation_or_default(truncation_psi: float | None, convention: str) -> float:
  """`truncation_psi`, or the convention's default (pytorch 1, tf1 0.5) when None."""
  check_convention(convention)
  return DEFAULT_TRUNCATION[convention] if truncation_psi is None else float(truncation_psi)


# ------------------------------------------------------------------------------------------------
# Classes.
# ------------------------------------------------------------------------------------------------


def dataset_class_names(records: str | os.PathLike, c_dim: int | None = None) -> list[str]:
  """The class names of a converted dataset, from `records/shards/manifest.json`.

  `records` is the data stage's workdir, its records/ folder, its shards/ or stylegan/ folder: the
  StyleGAN records' one-hot labels use the manifest's class order. With `c_dim`, the dataset must
  have that many classes.
  """
  root = pathlib.Path(records)
  for candidate in (root / "records" / "shards", root / "shards", root, root.parent / "shards"):
    if (candidate / shards.MANIFEST).is_file():
      try:
        names = [str(name) for name in shards.read_manifest(candidate)["class_names"]]
      except (ValueError, KeyError) as e:
        raise ArgumentError("records", str(records), f"unreadable class names ({e})") from e
      if c_dim is not None and len(names) != c_dim:
        raise ArgumentError(
          "records", str(records), f"{len(names)} classes, but the network has {c_dim}"
        )
      return names
  raise ArgumentError(
    "records",
    str(records),
    f"no class names there (records/shards/{shards.MANIFEST}, which --stage=data writes)",
  )


def resolve_class(
  class_value: int | str | None, c_dim: int, class_names: Sequence[str] | None = None
) -> int | None:
  """The class index of `class_value` (an index or, with `class_names`, a name) for a network with
  `c_dim` classes; None for an unconditional network.

  As in the official PyTorch generate.py, a conditional network needs a class; unlike there, a
  class given to an unconditional network is an error rather than a warning.
  """
  given = class_value is not None and str(class_value).strip() != ""
  if not c_dim:
    if given:
      raise ArgumentError(
        "class_index", class_value, "the network is unconditional; leave the class out"
      )
    return None
  if class_names is not None and len(class_names) != c_dim:
    raise ValueError(f"{len(class_names)} class names for a network with {c_dim} classes")
  listing = _class_listing(c_dim, class_names)
  if not given:
    raise ArgumentError("class_index", "", f"the network is conditional; name a class: {listing}")
  text = str(class_value).strip()
  if text.isdecimal():
    index = int(text)
    if index >= c_dim:
      raise ArgumentError("class_index", class_value, f"not a class of the network: {listing}")
    return index
  if class_names is None:
    raise ArgumentError(
      "class_index",
      class_value,
      f"a class name needs the dataset's class names (records); or give an index 0-{c_dim - 1}",
    )
  folded = [name.casefold() for name in class_names]
  if text in class_names:
    return list(class_names).index(text)
  if folded.count(text.casefold()) == 1:
    return folded.index(text.casefold())
  raise ArgumentError("class_index", class_value, f"no such class; the classes: {listing}")


def _class_listing(c_dim: int, class_names: Sequence[str] | None) -> str:
  if class_names is None:
    return f"indices 0-{c_dim - 1}"
  return ", ".join(f"{i} {name}" for i, name in enumerate(class_names))


def class_labels(c_dim: int, class_index: int | None, count: int) -> np.ndarray | None:
  """One-hot labels [count, c_dim] float32 (official: label[:, class_idx] = 1), None if c_dim 0."""
  if not c_dim:
    return None
  labels = np.zeros([count, c_dim], np.float32)
  labels[:, class_index] = 1.0
  return labels


# ------------------------------------------------------------------------------------------------
# Latents and noise of a seed.
# ------------------------------------------------------------------------------------------------


def noise_layers(generator: networks.Generator) -> list[layers.NoiseInjection]:
  """The synthesis network's noise inputs in TF1 order: b4.conv1, then conv0, conv1 per block."""
  found = []
  for block in generator.synthesis.blocks:
    for layer in (block.conv0, block.conv1):
      if layer is not None and layer.noise is not None:
        found.append(layer.noise)
  return found


def seed_latents(
  seed: int, z_dim: int, convention: str, noise_shapes: Sequence[tuple[int, int]] = ()
) -> tuple[np.ndarray, list[np.ndarray] | None]:
  """(z [z_dim] float64, noise) of `seed`; noise is a [R, R] array per noise shape for the tf1
  convention (drawn after z from the same RandomState), None for the pytorch one."""
  check_convention(convention)
  rnd = np.random.RandomState(seed)
  z = rnd.randn(1, z_dim)[0]
  if convention == "pytorch":
    return z, None
  noise = [rnd.randn(1, 1, *shape).reshape(shape) for shape in noise_shapes]
  return z, noise


@contextlib.contextmanager
def noise_buffers(generator: networks.Generator, values: Sequence[np.ndarray]) -> Iterator[None]:
  """Sets the constant noise buffers (in `noise_layers` order) for the block, then restores them."""
  targets = noise_layers(generator)
  if len(values) != len(targets):
    raise ValueError(f"{len(values)} noise arrays for {len(targets)} noise layers")
  saved = [target.noise_const.numpy() for target in targets]
  try:
    for target, value in zip(targets, values):
      target.noise_const.assign(np.asarray(value, np.float32))
    yield
  finally:
    for target, value in zip(targets, saved):
      target.noise_const.assign(value)


def to_uint8(images: tf.Tensor | np.ndarray) -> np.ndarray:
  """Images in [-1, 1] -> uint8 as the official generate.py (`metrics.to_uint8`); truncated, not
  rounded as the training snapshots' grids are."""
  return metrics.to_uint8(images).numpy()


# ------------------------------------------------------------------------------------------------
# Mapping and synthesis.
# ------------------------------------------------------------------------------------------------


def map_latents(
  generator: networks.Generator, z: np.ndarray, c: np.ndarray | None, psi: float
) -> np.ndarray:
  """ws [B, num_ws, w_dim] of latents `z`, truncated towards the tracked W average by `psi` on
  every layer (official: w_avg + (w - w_avg) * psi)."""
  if float(psi) != 1 and generator.mapping.w_avg is None:
    raise ArgumentError("truncation_psi", psi, "the network tracks no W average; use 1")
  z = tf.constant(np.asarray(z, np.float32))
  c = None if c is None else tf.constant(c)
  return generator.mapping(z, c, truncation_psi=float(psi)).numpy()


class _Synthesizer:
  """The synthesis network of one generator as a traced function, fed in batches."""

  def __init__(self, generator: networks.Generator, noise_mode: str, batch_size: int):
    check_noise_mode(noise_mode)
    self.generator = generator
    self.batch_size = max(int(batch_size), 1)
    self._synthesize = tf.function(
      lambda ws: generator.synthesis(ws, noise_mode=noise_mode), reduce_retracing=True
    )

  def __call__(self, ws: np.ndarray) -> np.ndarray:
    """uint8 NHWC images of `ws` [B, num_ws, w_dim]."""
    out = []
    for start in range(0, len(ws), self.batch_size):
      batch = tf.constant(np.asarray(ws[start : start + self.batch_size], np.float32))
      out.append(to_uint8(self._synthesize(batch)))
    return np.concatenate(out)


def _noise_shapes(generator: networks.Generator) -> list[tuple[int, int]]:
  return [(noise.resolution, noise.resolution) for noise in noise_layers(generator)]


def _seed_images(
  synthesize: _Synthesizer,
  seed: int,
  psis: Sequence[float],
  c: np.ndarray | None,
  convention: str,
) -> np.ndarray:
  """The images of one seed at each psi [len(psis), H, W, C] (the tf1 noise set for the seed)."""
  generator = synthesize.generator
  z, noise = seed_latents(seed, generator.config.z_dim, convention, _noise_shapes(generator))
  ws = np.concatenate([map_latents(generator, z[np.newaxis], c, psi) for psi in psis])
  if noise is None:
    return synthesize(ws)
  with noise_buffers(generator, noise):
    return synthesize(ws)


def seed_ws(
  generator: networks.Generator,
  seeds: Sequence[int],
  truncation_psi: float = 1.0,
  class_index: int | None = None,
) -> np.ndarray:
  """ws [len(seeds), num_ws, w_dim] of the seeds' latents RandomState(seed).randn(z_dim)
  (both conventions' z), truncated by `truncation_psi` on every layer."""
  z = np.stack([seed_latents(seed, generator.config.z_dim, "pytorch")[0] for seed in seeds])
  c = class_labels(generator.config.c_dim, class_index, len(seeds))
  return map_latents(generator, z, c, truncation_psi)


def generate_images(
  generator: networks.Generator,
  seeds: Sequence[int],
  truncation_psi: float | None = None,
  class_index: int | str | None = None,
  noise_mode: str = "const",
  convention: str = "pytorch",
  batch_size: int = 32,
) -> np.ndarray:
  """uint8 NHWC images, one per seed, as the official generate.py of `convention` makes them.

  The pytorch convention renders the seeds in batches of `batch_size`; the tf1 one renders each seed
  with its own noise buffers and restores the stored buffers afterwards. `truncation_psi` None is
  the convention's default; `class_index` is required exactly when the network is conditional.
  """
  psi = truncation_or_default(truncation_psi, convention)
  synthesize = _Synthesizer(generator, noise_mode, batch_size)
  class_index = resolve_class(class_index, generator.config.c_dim)
  if convention == "tf1":
    c = class_labels(generator.config.c_dim, class_index, 1)
    return np.concatenate([_seed_images(synthesize, seed, [psi], c, convention) for seed in seeds])
  return synthesize(seed_ws(generator, seeds, psi, class_index))


def truncation_sweep(
  generator: networks.Generator,
  seeds: Sequence[int],
  psis: Sequence[float],
  class_index: int | str | None = None,
  noise_mode: str = "const",
  convention: str = "pytorch",
  batch_size: int = 32,
) -> np.ndarray:
  """uint8 images [len(seeds), len(psis), H, W, C]: row i is seed i at every psi, each cell what
  `generate_images` gives for that seed and psi."""
  check_convention(convention)
  if not len(psis):
    raise ArgumentError("psis", "", "empty; give psi values such as 1,0.7,0.5,0")
  synthesize = _Synthesizer(generator, noise_mode, batch_size)
  class_index = resolve_class(class_index, generator.config.c_dim)
  c = class_labels(generator.config.c_dim, class_index, 1)
  psis = [float(psi) for psi in psis]
  return np.stack([_seed_images(synthesize, seed, psis, c, convention) for seed in seeds])


def style_mixing(
  generator: networks.Generator,
  row_seeds: Sequence[int],
  col_seeds: Sequence[int],
  styles: str | Sequence[int],
  truncation_psi: float | None = None,
  class_index: int | str | None = None,
  noise_mode: str = "const",
  convention: str = "pytorch",
  batch_size: int = 32,
) -> np.ndarray:
  """The official style-mixing matrix, uint8 [len(row_seeds) + 1, len(col_seeds) + 1, H, W, C].

  Cell [0, 0] is black; row 0 holds the column seeds' images, column 0 the row seeds' images, and
  cell [i, j] the row seed's ws with the layers `styles` (indices or a `parse_styles` text) taken
  from the column seed's ws. Both official style_mixing.py scripts use the stored noise buffers, so
  `convention` only sets the default psi (pytorch 1, tf1 0.5).
  """
  psi = truncation_or_default(truncation_psi, convention)
  for argument, seeds in (("row_seeds", row_seeds), ("col_seeds", col_seeds)):
    if not len(seeds):
      raise ArgumentError(argument, "", "empty; give at least one seed")
  num_ws = generator.num_ws
  if isinstance(styles, str):
    styles = parse_styles(styles, num_ws)
  styles = [int(style) for style in styles]
  if not styles or any(not 0 <= style < num_ws for style in styles):
    text = ",".join(map(str, styles))
    raise ArgumentError("styles", text, f"give layers in 0-{num_ws - 1}")
  synthesize = _Synthesizer(generator, noise_mode, batch_size)
  class_index = resolve_class(class_index, generator.config.c_dim)
  seeds = list(dict.fromkeys([*row_seeds, *col_seeds]))
  ws_of = dict(zip(seeds, seed_ws(generator, seeds, psi, class_index)))
  mixed = []
  for row_seed in row_seeds:
    for col_seed in col_seeds:
      ws = ws_of[row_seed].copy()
      ws[styles] = ws_of[col_seed][styles]
      mixed.append(ws)
  plain = dict(zip(seeds, synthesize(np.stack([ws_of[seed] for seed in seeds]))))
  cells = synthesize(np.stack(mixed))
  rows, cols = len(row_seeds), len(col_seeds)
  grid = np.zeros((rows + 1, cols + 1, *cells.shape[1:]), np.uint8)
  grid[0, 1:] = [plain[seed] for seed in col_seeds]
  grid[1:, 0] = [plain[seed] for seed in row_seeds]
  grid[1:, 1:] = cells.reshape(rows, cols, *cells.shape[1:])
  return grid


# ------------------------------------------------------------------------------------------------
# Writing the images of a mode: (details for the report, files, grid tiles, grid columns).
# ------------------------------------------------------------------------------------------------


def _write_png(images_dir: pathlib.Path, name: str, image: np.ndarray) -> str:
  snapshot.write_grid(images_dir / name, image[np.newaxis], columns=1)
  return f"{images_dir.name}/{name}"


def write_images(images_dir: pathlib.Path, generator, parsed: dict, options: dict) -> tuple:
  """`generate_images` of parsed['seeds'], one `seed%04d.png` each (official names)."""
  seeds = parsed["seeds"]
  images = generate_images(generator, seeds, **options)
  files = [_write_png(images_dir, f"seed{s:04d}.png", image) for s, image in zip(seeds, images)]
  return parsed, files, images, math.ceil(math.sqrt(len(images)))


def write_truncation_sweep(images_dir: pathlib.Path, generator, parsed: dict, options: dict):
  """`truncation_sweep` of parsed['seeds'] x parsed['psis'], one `seed%04d-psi<psi>.png` each."""
  seeds, psis = parsed["seeds"], parsed["psis"]
  options = {k: v for k, v in options.items() if k != "truncation_psi"}
  cells = truncation_sweep(generator, seeds, psis, **options)
  files = [
    _write_png(images_dir, f"seed{seed:04d}-psi{psi:g}.png", cells[i, j])
    for i, seed in enumerate(seeds)
    for j, psi in enumerate(psis)
  ]
  return parsed, files, cells.reshape(-1, *cells.shape[2:]), len(psis)


def write_style_mixing(images_dir: pathlib.Path, generator, parsed: dict, options: dict):
  """`style_mixing` of parsed['row_seeds'] x parsed['col_seeds'] at parsed['styles'], named as
  the official style_mixing.py names them: `<row seed>-<column seed>.png`."""
  rows, cols = parsed["row_seeds"], parsed["col_seeds"]
  styles = parse_styles(parsed["styles"], generator.num_ws, "styles")
  grid = style_mixing(generator, rows, cols, styles, **options)
  files = [_write_png(images_dir, f"{s}-{s}.png", grid[0, j + 1]) for j, s in enumerate(cols)]
  files += [_write_png(images_dir, f"{s}-{s}.png", grid[i + 1, 0]) for i, s in enumerate(rows)]
  for i, row_seed in enumerate(rows):
    for j, col_seed in enumerate(cols):
      files.append(_write_png(images_dir, f"{row_seed}-{col_seed}.png", grid[i + 1, j + 1]))
  details = {**parsed, "styles": styles}
  return details, list(dict.fromkeys(files)), grid.reshape(-1, *grid.shape[2:]), len(cols) + 1


RENDERERS = {
  "images": write_images,
  "truncation_sweep": write_truncation_sweep,
  "style_mixing": write_style_mixing,
}
