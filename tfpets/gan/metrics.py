"""FID and KID of a generator against real images, as the official StyleGAN2-ADA metrics compute
them (`metrics/frechet_inception_distance.py`, `metrics/kernel_inception_distance.py`; Heusel et
al. 2017, Binkowski et al. 2018).

Metric names: `fid<N>` / `kid<N>` with N a count (`500`) or thousands (`2k`, `50k`) of generated
images, optionally `_full`:
- `fid<N>_full`: N generated images against every real image;
- `kid<N>_full`: N generated images against at most 1,000,000 real images;
- without `_full` (the legacy `fid50k`, `kid50k`): N generated images against the first N real
  images.
Reals are read in stored order (no shuffle, no x-flip). Values are written under the name plus the
feature network's suffix (`fid2k_seeded` for the seeded random CNN), next to
`"feature_network"`.

Generated images come from a `Generator` (z ~ N(0, I), uniform random one-hot labels when
conditional, no truncation, float32, random noise) converted to uint8 as
`saturate_cast(x * 127.5 + 127.5 + 0.5)`, or from any `generate(batch_size) -> uint8 NHWC`.
Real features are cached in `cache_dir`, keyed by the dataset, its resolution, the number of reals
and the feature network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
import re
import tempfile
import time
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.data import pipeline
from tfpets.data.tfrecord import multires
from tfpets.gan.inception import FeatureNetwork
from tfpets.gan.networks import Generator

KID_FULL_MAX_REALS = 1_000_000
_NAME = re.compile(r"(fid|kid)([1-9][0-9]*)(k?)(_full)?")
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """A parsed metric name: kind ('fid' or 'kid'), generated images, real images (None = all)."""

  name: str
  kind: str
  num_gen: int
  max_reals: Optional[int]


def parse_metric_name(name: str) -> MetricSpec:
  """`fid50k_full` -> MetricSpec('fid50k_full', 'fid', 50000, None); ValueError on a bad name."""
  match = _NAME.fullmatch(name)
  if not match:
    raise ValueError(
      f"unknown metric {name!r}: expected fid<N> or kid<N> with N a count or thousands (500, 2k, "
      "50k), optionally followed by _full (fid50k_full, kid50k_full, fid2k)"
    )
  kind, count, thousands, full = match.groups()
  num_gen = int(count) * (1000 if thousands else 1)
  if full:
    max_reals = None if kind == "fid" else KID_FULL_MAX_REALS
  else:
    max_reals = num_gen
  return MetricSpec(name, kind, num_gen, max_reals)


# --- The distances -------------------------------------------------------------------------------


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance (float64) of features [N, D]."""
  features = np.asarray(features, np.float64)
  if len(features) < 2:
    raise ValueError(f"statistics need at least 2 feature vectors, got {len(features)}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def default_cache_dir() -> pathlib.Path:
  """Where real-image statistics are cached unless told otherwise: $XDG_CACHE_HOME/tfpets/metrics."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "tfpets" / "metrics"


def frechet_distance(
  mu_real: np.ndarray, sigma_real: np.ndarray, mu_gen: np.ndarray, sigma_gen: np.ndarray
) -> float:
  """||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 sqrtm(S_g S_r)), as the official code defines it.

  Tr sqrtm(S_g S_r) is computed as the sum of the square roots of the eigenvalues of the symmetric
  S_r^1/2 S_g S_r^1/2 (the same matrix up to similarity): two `eigh` calls, several times faster
  than a general `sqrtm` on 2048-d features, and with no complex round-off to discard.
  """
  mean_term = np.square(np.asarray(mu_gen, np.float64) - mu_real).sum()
  root_real = _psd_sqrt(np.asarray(sigma_real, np.float64))
  inner = root_real @ np.asarray(sigma_gen, np.float64) @ root_real
  trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
  return float(mean_term + np.trace(sigma_gen) + np.trace(sigma_real) - 2.0 * trace_root)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a covariance matrix (negative round-off eigenvalues as 0)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def kernel_distance(
  real_features: np.ndarray,
  gen_features: np.ndarray,
  num_subsets: int = 100,
  max_subset_size: int = 1000,
  seed: int = 0,
) -> float:
  """Unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over random subsets.

  Each subset draws m = min(len(real), len(gen), max_subset_size) vectors from each set without
  replacement.
  """
  real = np.asarray(real_features, np.float64)
  gen = np.asarray(gen_features, np.float64)
  dim = real.shape[1]
  m = min(len(real), len(gen), max_subset_size)
  if m < 2:
    raise ValueError(f"KID needs at least 2 feature vectors in each set, got {m}")
  rng = np.random.RandomState(seed)
  kernel = lambda a, b: (a @ b.T / dim + 1.0) ** 3
  total = 0.0
  for _ in range(num_subsets):
    x = gen[rng.choice(len(gen), m, replace=False)]
    y = real[rng.choice(len(real), m, replace=False)]
    within = kernel(x, x) + kernel(y, y)
    off_diagonal = within.sum() - np.trace(within)
    total += off_diagonal / (m * (m - 1)) - 2.0 * kernel(x, y).sum() / (m * m)
  return float(total / num_subsets)


# --- Image sources -------------------------------------------------------------------------------


def to_uint8(images: tf.Tensor) -> tf.Tensor:
  """Generator output in [-1, 1] -> uint8 as the official metric_utils.py and generate.py
  (NVlabs/stylegan2-ada-pytorch) convert it: clip(x * 127.5 + 128, 0, 255), truncated."""
  scaled = tf.cast(images, tf.float32) * 127.5 + 128.0
  return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def generator_sampler(generator: Generator, seed: int = 0) -> Callable[[int], np.ndarray]:
  """`generate(batch_size) -> uint8 NHWC` drawing z ~ N(0, I) (and labels) from `seed`."""
  config = generator.config
  rng = np.random.RandomState(seed)

  @tf.function(reduce_retracing=True)
  def synthesize(z, c):
    images = generator(
      (z, c), training=False, truncation_psi=1.0, noise_mode="random", force_fp32=True
    )
    return to_uint8(images)

  def generate(batch_size: int) -> np.ndarray:
    z = rng.standard_normal([batch_size, config.z_dim]).astype(np.float32)
    c = np.zeros([batch_size, config.c_dim], np.float32)
    if config.c_dim:
      c[np.arange(batch_size), rng.randint(config.c_dim, size=batch_size)] = 1.0
    return synthesize(tf.constant(z), tf.constant(c)).numpy()

  return generate


@dataclasses.dataclass(frozen=True)
class RealImages:
  """Real images in a fixed order, and the identity their cached features are keyed by.

  Attributes:
    batches: batch_size -> iterator of uint8 NHWC batches, always in the same order.
    dataset: Identity of the images (path and file stamp for records); None = never cached.
    resolution: Image size, part of the cache key.
  """

  batches: Callable[[int], Iterator[np.ndarray]]
  dataset: Optional[str]
  resolution: Optional[int]


def records_images(directory: str | os.PathLike, resolution: Optional[int] = None) -> RealImages:
  """The StyleGAN multi-resolution records in `directory` in stored order: the level at
  `resolution` (a power of two the records hold), or the top level when None."""
  directory = os.path.abspath(str(directory))
  levels = multires.level_files(directory)
  resolution = resolution or 2 ** int(levels[0][-12:-10])
  level = multires.level_path(directory, int(math.log2(resolution)))
  if level not in levels:
    raise ValueError(f"{directory}: no {resolution} px level ({os.path.basename(level)})")
  stat = os.stat(level)

  def batches(batch_size: int) -> Iterator[np.ndarray]:
    ds = pipeline.multires_dataset(
      directory,
      batch_size=batch_size,
      training=False,
      cache=False,
      deterministic=True,
      resolution=resolution,
    )
    for images, _ in ds:
      # The reader scales uint8 u to u * 2/255 - 1; rounding recovers u exactly.
      yield tf.cast(tf.round((images + 1.0) * 127.5), tf.uint8).numpy()

  return RealImages(batches, f"{level}|{stat.st_size}|{stat.st_mtime_ns}", resolution)


def batch_images(
  batches: Iterable[np.ndarray], dataset: Optional[str] = None, resolution: Optional[int] = None
) -> RealImages:
  """Wraps an iterable of uint8 NHWC batches (read once); `dataset` names it for the cache."""
  return RealImages(lambda batch_size: iter(batches), dataset, resolution)


def _as_real_images(source) -> RealImages:
  if isinstance(source, RealImages):
    return source
  if isinstance(source, (str, os.PathLike)):
    return records_images(source)
  return batch_images(source)


# --- Features ------------------------------------------------------------------------------------


def _features_of(
  batches: Iterator[np.ndarray],
  network: FeatureNetwork,
  limit: Optional[int],
  what: str,
  log_every: int,
) -> np.ndarray:
  """Features of the first `limit` images (all when None) of `batches`."""
  parts, count, start = [], 0, time.time()
  for index, batch in enumerate(batches):
    if limit is not None:
      batch = batch[: limit - count]
    if len(batch) == 0:
      break
    parts.append(network.features(batch))
    count += len(batch)
    if (index + 1) % log_every == 0:
      total = "?" if limit is None else str(limit)
      logging.info(
        "metrics: %s features %d/%s images (%.1f s)", what, count, total, time.time() - start
      )
    if limit is not None and count >= limit:
      break
  if not parts:
    raise ValueError(f"no {what} images to compute features of")
  return np.concatenate(parts).astype(np.float32)


def _generated_batches(generate: Callable[[int], np.ndarray], batch_size: int) -> Iterator:
  while True:
    yield np.asarray(generate(batch_size))


@dataclasses.dataclass
class RealStatistics:
  """Features of the reals and their mean and covariance (float64)."""

  features: np.ndarray
  mu: np.ndarray
  sigma: np.ndarray

  @classmethod
  def of(cls, features: np.ndarray) -> "RealStatistics":
    return cls(features, *feature_statistics(features))


def cache_key(real: RealImages, max_reals: Optional[int], network: FeatureNetwork) -> dict:
  return {
    "version": _CACHE_VERSION,
    "dataset": real.dataset,
    "resolution": real.resolution,
    "max_reals": max_reals,
    "feature_network": network.id,
  }


def cache_path(cache_dir: str | os.PathLike, key: Mapping) -> pathlib.Path:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return pathlib.Path(cache_dir) / f"reals-{key['feature_network']}-{digest}.npz"


def _load_cached(path: pathlib.Path, key: Mapping) -> Optional[RealStatistics]:
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as data:
      if json.loads(str(data["key"])) != dict(key):
        return None
      return RealStatistics(data["features"], data["mu"], data["sigma"])
  except (OSError, ValueError, KeyError) as e:
    logging.warning("metrics: ignoring unreadable cache %s (%s)", path, e)
    return None


def _save_cached(path: pathlib.Path, key: Mapping, stats: RealStatistics) -> None:
  """Writes to a temporary file in the same folder, then renames it: readers never see a part."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(
        f,
        key=np.array(json.dumps(dict(key), sort_keys=True)),
        features=stats.features,
        mu=stats.mu,
        sigma=stats.sigma,
      )
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def real_statistics(
  real_source,
  network: FeatureNetwork,
  max_reals_values: Sequence[Optional[int]],
  cache_dir: Optional[str | os.PathLike] = None,
  batch_size: int = 32,
  log_every: int = 50,
) -> dict[Optional[int], RealStatistics]:
  """{max_reals: statistics of the first max_reals reals (None = all)}, cached when possible.

  The reals are read at most once: the largest missing count is computed and the others are its
  prefixes.
  """
  real = _as_real_images(real_source)
  cacheable = cache_dir is not None and real.dataset is not None
  if cache_dir is not None and not cacheable:
    logging.info("metrics: real images without a dataset name; their features are not cached")
  found: dict[Optional[int], RealStatistics] = {}
  missing = []
  for max_reals in dict.fromkeys(max_reals_values):
    key = cache_key(real, max_reals, network)
    cached = _load_cached(cache_path(cache_dir, key), key) if cacheable else None
    if cached is not None:
      logging.info("metrics: real statistics from %s", cache_path(cache_dir, key))
      found[max_reals] = cached
    else:
      missing.append(max_reals)
  if not missing:
    return found
  limit = None if None in missing else max(missing)
  features = _features_of(real.batches(batch_size), network, limit, "real", log_every)
  for max_reals in missing:
    stats = RealStatistics.of(features[:max_reals])
    found[max_reals] = stats
    if cacheable:
      key = cache_key(real, max_reals, network)
      _save_cached(cache_path(cache_dir, key), key, stats)
  return found


def generated_features(
  generator: Generator | Callable[[int], np.ndarray],
  network: FeatureNetwork,
  num_images: int,
  batch_size: int = 32,
  seed: int = 0,
  log_every: int = 50,
) -> np.ndarray:
  """Features of `num_images` generated images [num_images, dim]."""
  generate = generator_sampler(generator, seed) if isinstance(generator, Generator) else generator
  batches = _generated_batches(generate, batch_size)
  return _features_of(batches, network, num_images, "generated", log_every)


# --- Named metrics -------------------------------------------------------------------------------


def compute_metrics(
  names: Sequence[str],
  generator: Generator | Callable[[int], np.ndarray],
  real_source,
  feature_network: FeatureNetwork,
  cache_dir: Optional[str | os.PathLike] = None,
  batch_size: int = 32,
  seed: int = 0,
  num_subsets: int = 100,
  max_subset_size: int = 1000,
  log_every: int = 50,
) -> dict:
  """{name + feature suffix: value, ..., "feature_network": description}.

  `real_source` is a StyleGAN records folder, a `RealImages` or an iterable of uint8 NHWC batches
  (not cached). One set of generated images (the largest N asked for) serves every metric.
  """
  specs = [parse_metric_name(name) for name in names]
  if not specs:
    raise ValueError("no metric names given")
  reals = real_statistics(
    real_source,
    feature_network,
    [spec.max_reals for spec in specs],
    cache_dir,
    batch_size,
    log_every,
  )
  generated = generated_features(
    generator, feature_network, max(s.num_gen for s in specs), batch_size, seed, log_every
  )
  results: dict = {}
  for spec in specs:
    real, gen = reals[spec.max_reals], generated[: spec.num_gen]
    if spec.kind == "fid":
      value = frechet_distance(real.mu, real.sigma, *feature_statistics(gen))
    else:
      value = kernel_distance(real.features, gen, num_subsets, max_subset_size, seed)
    results[spec.name + feature_network.metric_suffix] = value
    logging.info("metrics: %s%s = %.6g", spec.name, feature_network.metric_suffix, value)
  results["feature_network"] = feature_network.description
  return results


def append_metric_lines(
  reports_dir: str | os.PathLike,
  results: Mapping,
  snapshot: str,
  kimg: Optional[float] = None,
) -> list[pathlib.Path]:
  """Appends one JSON line per metric to `reports_dir/metric-<name>.jsonl` (as the official
  `metric-fid50k_full.jsonl`): results, metric, feature_network, snapshot, kimg, timestamp."""
  reports_dir = pathlib.Path(reports_dir)
  reports_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for name, value in results.items():
    if name == "feature_network":
      continue
    line = {
      "results": {name: value},
      "metric": name,
      "feature_network": results.get("feature_network"),
      "snapshot": snapshot,
      "kimg": kimg,
      "timestamp": time.time(),
    }
    path = reports_dir / f"metric-{name}.jsonl"
    with open(path, "a") as f:
      f.write(json.dumps(line) + "\n")
    written.append(path)
  return written
