"""Stratified nested subsets, stratified splits and duplicate removal for lists of ImageRecords.

Subsets (the pet paper's 10 / 50 / 100 %, arXiv 2109.00891): per class, the class's records are put
in a fixed order (sorted by path, then permuted by a generator seeded with the seed and the class
name) and a prefix is taken. Because only the prefix length depends on the fraction, for one seed
the 10 % subset lies inside the 50 % subset, which lies inside 100 %.
k = round-half-up(fraction * n_class), at least 1; an integer N takes min(N, n_class) per class.

Splits: the same per-class order is cut into consecutive pieces whose sizes follow the fractions
(largest-remainder rounding, so the pieces always cover the class exactly).

Duplicates: exact duplicates share the sha256 of their decoded pixels; near duplicates have 64-bit
DCT perceptual hashes within a Hamming distance. Candidate pairs come from hash bands (if two
64-bit hashes differ in at most d bits, then split into d + 1 bands they agree exactly on at least
one band), so the work is near-linear instead of comparing every pair.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import zlib
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.fft
from absl import logging
from PIL import Image

from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.errors import ArgumentError

SubsetSize = Union[float, int]
DEFAULT_MAX_HAMMING = 10
_BLOCK_ROWS = 512  # rows of a bucket's distance matrix computed at once


# ---------------------------------------------------------------------------------------------
# Subsets


def parse_subset(text: str) -> SubsetSize:
  """'0.1' / '10%' -> 0.1 (fraction of each class); '20' -> 20 (images per class).

  A whole number is a count: '1' is one image per class, '1.0' is every image.
  """
  value = str(text).strip()
  error = ArgumentError(
    "subset",
    text,
    "invalid subset: expected a fraction in (0, 1] such as 0.1, 0.5, 1.0 (or 10%), or a whole "
    "number of images per class such as 20",
  )
  try:
    if value.endswith("%"):
      fraction = float(value[:-1]) / 100.0
    elif value.isdigit():
      count = int(value)
      if count <= 0:
        raise error
      return count
    else:
      fraction = float(value)
  except ValueError:
    raise error from None
  if not 0.0 < fraction <= 1.0 or math.isnan(fraction):
    raise error
  return fraction


def stratified_subset(
  records: Sequence[ImageRecord], fraction_or_count: SubsetSize, seed: int
) -> List[ImageRecord]:
  """Per-class nested subset, returned in the input order (see the module docstring)."""
  take = _take_rule(fraction_or_count)
  chosen = set()
  for class_key, indices in _class_orders(records, seed).items():
    k = take(len(indices))
    if isinstance(fraction_or_count, int) and k < fraction_or_count:
      logging.warning(
        "class %s has only %d images, fewer than the %d requested",
        class_key[1],
        len(indices),
        fraction_or_count,
      )
    chosen.update(indices[:k])
  return [r for i, r in enumerate(records) if i in chosen]


def _take_rule(fraction_or_count: SubsetSize) -> Callable[[int], int]:
  if isinstance(fraction_or_count, bool):
    raise TypeError(f"subset must be a float fraction or an int count, got {fraction_or_count!r}")
  if isinstance(fraction_or_count, (int, np.integer)):
    if fraction_or_count <= 0:
      raise ValueError(f"subset count must be positive, got {fraction_or_count}")
    return lambda n: min(int(fraction_or_count), n)
  fraction = float(fraction_or_count)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(
      f"subset fraction must be in (0, 1], got {fraction_or_count!r}; "
      "pass an int for a per-class count"
    )
  # Half-up, not Python's banker's rounding: 10 % of 25 images is 3, not 2.
  return lambda n: min(n, max(1, math.floor(fraction * n + 0.5)))


def _class_orders(records: Sequence[ImageRecord], seed: int) -> Dict[Tuple[int, str], List[int]]:
  """(label, class name) -> record indices in the class's seeded order.

  The order depends only on the seed, the class name and the class's paths, not on the input order,
  the label index or the other classes, so subsets and splits stay put when records are re-listed or
  classes are added.
  """
  by_class: Dict[Tuple[int, str], List[int]] = collections.defaultdict(list)
  for i, record in enumerate(records):
    by_class[(record.label, record.class_name)].append(i)
  orders = {}
  for key in sorted(by_class):
    indices = sorted(by_class[key], key=lambda i: (records[i].path, i))
    rng = np.random.default_rng([seed, zlib.crc32(key[1].encode("utf-8"))])
    orders[key] = [indices[j] for j in rng.permutation(len(indices))]
  return orders


# ---------------------------------------------------------------------------------------------
# Splits


def split_records(
  records: Sequence[ImageRecord], fractions: Mapping[str, float], seed: int
) -> Dict[str, List[ImageRecord]]:
  """Per-class stratified, disjoint split covering every record, e.g. {'train': .75, 'val': .25}.

  Each list keeps the input order. Per class, piece sizes use largest-remainder rounding of
  fraction * n_class (ties to the earlier split), so they sum to n_class.
  """
  names = list(fractions)
  weights = np.array([fractions[n] for n in names], np.float64)
  if (
    not names
    or np.any(~np.isfinite(weights))
    or np.any(weights < 0)
    or not math.isclose(weights.sum(), 1.0, abs_tol=1e-6)
  ):
    raise ValueError(f"split fractions must be non-negative and sum to 1, got {dict(fractions)}")
  assignment = {}
  for indices in _class_orders(records, seed).values():
    start = 0
    for name, size in zip(names, _largest_remainder(weights, len(indices))):
      for i in indices[start : start + size]:
        assignment[i] = name
      start += size
  return {name: [r for i, r in enumerate(records) if assignment[i] == name] for name in names}


def _largest_remainder(weights: np.ndarray, n: int) -> List[int]:
  exact = weights * n
  sizes = np.floor(exact).astype(int)
  order = sorted(range(len(weights)), key=lambda j: (-(exact[j] - sizes[j]), j))
  for j in order[: n - int(sizes.sum())]:
    sizes[j] += 1
  return sizes.tolist()


def split_by_source(
  records: Sequence[ImageRecord], mapping: Mapping[str, Optional[str]]
) -> Dict[str, List[ImageRecord]]:
  """Groups records by their source split renamed through mapping, e.g. {'trainval': 'train',
  'test': 'test'}; a None target drops that split. An unmapped source split is a ValueError."""
  unmapped = collections.Counter(r.split for r in records if r.split not in mapping)
  if unmapped:
    listing = ", ".join(f"{split or '(none)'!s}: {n}" for split, n in sorted(unmapped.items()))
    raise ValueError(f"records with source splits not in the mapping {dict(mapping)}: {listing}")
  result: Dict[str, List[ImageRecord]] = {t: [] for t in mapping.values() if t is not None}
  for record in records:
    target = mapping[record.split]
    if target is not None:
      result[target].append(record)
  return result


# ---------------------------------------------------------------------------------------------
# Duplicates


def phash(pixels: np.ndarray) -> int:
  """64-bit DCT perceptual hash of an RGB or grayscale uint8 image.

  Luma (ITU-R BT.601 weights), area-averaged to 32x32, 2-D DCT-II; the 8x8 lowest frequencies
  after the DC row and column (coefficients [1:9, 1:9], as the original pHash does) are compared
  with their median; bit 63 - (8 * row + col) is set where a coefficient is above it.
  """
  array = np.asarray(pixels)
  if array.ndim == 3:
    luma = array[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  elif array.ndim == 2:
    luma = array.astype(np.float32)
  else:
    raise ValueError(f"phash needs an [H, W] or [H, W, C] image, got shape {array.shape}")
  small = np.asarray(Image.fromarray(luma).resize((32, 32), Image.Resampling.BOX), np.float64)
  coefficients = scipy.fft.dctn(small, type=2, norm="ortho")[1:9, 1:9].reshape(-1)
  bits = coefficients > np.median(coefficients)
  return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
  return (a ^ b).bit_count()


def pixel_digest(pixels: np.ndarray) -> str:
  """sha256 of the shape and bytes of a decoded array (identical pixels <=> identical digest)."""
  array = np.ascontiguousarray(pixels)
  digest = hashlib.sha256(repr((array.shape, array.dtype.str)).encode())
  digest.update(array.tobytes())
  return digest.hexdigest()


@dataclasses.dataclass
class Duplicate:
  record: ImageRecord  # the removed record
  original: ImageRecord  # the kept record it duplicates
  distance: int  # Hamming distance of the hashes; 0 for exact duplicates
  reason: str


@dataclasses.dataclass
class DuplicateReport:
  kept: List[ImageRecord]
  removed: List[Duplicate]

  def rejects(self) -> rejects_lib.RejectsReport:
    report = rejects_lib.RejectsReport()
    for dup in self.removed:
      report.add(dup.record.path, dup.reason, rejects_lib.SKIPPED)
    return report


def fingerprint(pixels: np.ndarray) -> Tuple[str, int]:
  """(exact pixel digest, perceptual hash) of a decoded image: what duplicate search compares."""
  return pixel_digest(pixels), phash(pixels)


def find_duplicates(
  records: Sequence[ImageRecord],
  pixels_fn: Callable[[ImageRecord], np.ndarray],
  max_hamming: Optional[int] = DEFAULT_MAX_HAMMING,
) -> DuplicateReport:
  """Removes exact and near duplicates; pixels_fn(record) returns the decoded uint8 array."""
  return find_duplicates_by_fingerprint(
    records, [fingerprint(pixels_fn(r)) for r in records], max_hamming
  )


def find_duplicates_by_fingerprint(
  records: Sequence[ImageRecord],
  fingerprints: Sequence[Tuple[str, int]],
  max_hamming: Optional[int] = DEFAULT_MAX_HAMMING,
) -> DuplicateReport:
  """Removes exact and near duplicates, keeping the first record of each group.

  A record is removed as a near duplicate of the earliest kept record within max_hamming bits
  (None: exact duplicates only); chains do not propagate, every removal names a kept record. The
  default 10 lies between re-encoded copies and the closest distinct photos of real Oxford pets;
  flat synthetic renderings of distinct pets can be closer, so search those for exact duplicates
  only.
  """
  if max_hamming is not None and not 0 <= max_hamming < 64:
    raise ArgumentError("max_hamming", max_hamming, "must be in [0, 63] or None")
  digests = [d for d, _ in fingerprints]
  hashes = [h for _, h in fingerprints]
  removed: Dict[int, Duplicate] = {}
  first_with: Dict[str, int] = {}
  for i, digest in enumerate(digests):
    j = first_with.setdefault(digest, i)
    if j != i:
      removed[i] = Duplicate(records[i], records[j], 0, f"exact duplicate of {records[j].path}")
  if max_hamming is not None:
    survivors = [i for i in range(len(records)) if i not in removed]
    hash_array = np.array([hashes[i] for i in survivors], np.uint64)
    for a, b, d in near_duplicate_pairs(hash_array, max_hamming):
      i, j = survivors[a], survivors[b]  # a < b, so i comes first
      if j not in removed and i not in removed:
        removed[j] = Duplicate(
          records[j], records[i], d, f"near duplicate of {records[i].path} (hamming {d})"
        )
  kept = [r for i, r in enumerate(records) if i not in removed]
  return DuplicateReport(kept, [removed[i] for i in sorted(removed)])


def near_duplicate_pairs(hashes: np.ndarray, max_hamming: int) -> List[Tuple[int, int, int]]:
  """(a, b, distance) for indices a < b of uint64 hashes within max_hamming bits.

  Sorted by b then a, so that scanning the pairs meets each record's earliest match first.
  """
  n = len(hashes)
  if n < 2:
    return []
  candidates = set()
  for mask, shift in _bands(max_hamming + 1):
    keys = (hashes >> np.uint64(shift)) & np.uint64(mask)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    boundaries = np.flatnonzero(np.diff(sorted_keys)) + 1
    for group in np.split(order, boundaries):
      if len(group) > 1:
        candidates.update(_close_in_group(hashes, np.sort(group), max_hamming))
  return sorted(candidates, key=lambda pair: (pair[1], pair[0]))


def _bands(count: int) -> List[Tuple[int, int]]:
  """(mask, shift) of `count` contiguous bit bands covering 64 bits."""
  edges = np.linspace(0, 64, count + 1).round().astype(int)
  return [((1 << int(hi - lo)) - 1, int(lo)) for lo, hi in zip(edges[:-1], edges[1:])]


def _close_in_group(
  hashes: np.ndarray, group: np.ndarray, max_hamming: int
) -> List[Tuple[int, int, int]]:
  """Pairs within one bucket, checked with vectorised popcounts in row blocks (bounded memory)."""
  sub = hashes[group]
  pairs = []
  for start in range(0, len(group), _BLOCK_ROWS):
    rows = sub[start : start + _BLOCK_ROWS]
    distances = np.bitwise_count(rows[:, None] ^ sub[None, :])
    row_ids = np.arange(start, start + len(rows))[:, None]
    a, b = np.nonzero((distances <= max_hamming) & (np.arange(len(group))[None, :] > row_ids))
    pairs.extend((int(group[start + x]), int(group[y]), int(distances[x, y])) for x, y in zip(a, b))
  return pairs
