"""Nested stratified subsets, stratified splits, and exact/near duplicate removal."""

from __future__ import annotations

import collections
import io
import math
import random

import numpy as np
import pytest
import source_fixtures as sf
from PIL import Image

from tfpets.data import decode, subsets
from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources.oxford_pets import load_oxford_pets

CLASS_SIZES = {"Abyssinian": 200, "Bengal": 37, "pug": 25, "beagle": 5, "boxer": 1}


def make_records(shuffle_seed: int = 0):
  records = []
  for label, (name, n) in enumerate(CLASS_SIZES.items()):
    for i in range(n):
      records.append(
        ImageRecord(
          path=f"/data/{name}_{i}.jpg",
          label=label,
          class_name=name,
          split="trainval" if i % 3 else "test",
        )
      )
  random.Random(shuffle_seed).shuffle(records)
  return records


def paths(records):
  return [r.path for r in records]


def per_class(records):
  return collections.Counter(r.class_name for r in records)


def half_up(x: float) -> int:
  return int(math.floor(x + 0.5))


# ---------------------------------------------------------------------------------------------
# Subsets


def test_subsets_are_nested_for_one_seed():
  records = make_records()
  for seed in (0, 1, 448):
    ten = set(paths(subsets.stratified_subset(records, 0.1, seed)))
    half = set(paths(subsets.stratified_subset(records, 0.5, seed)))
    full = set(paths(subsets.stratified_subset(records, 1.0, seed)))
    assert ten < half < full == set(paths(records))
    small = set(paths(subsets.stratified_subset(records, 3, seed)))
    large = set(paths(subsets.stratified_subset(records, 20, seed)))
    assert small < large


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.25, 1.0])
def test_subset_per_class_counts(fraction):
  counts = per_class(subsets.stratified_subset(make_records(), fraction, seed=3))
  assert counts == {name: max(1, half_up(fraction * n)) for name, n in CLASS_SIZES.items()}


def test_subset_rounding_is_half_up_and_at_least_one():
  counts = per_class(subsets.stratified_subset(make_records(), 0.1, seed=0))
  assert counts["pug"] == 3  # 2.5 -> 3 (banker's rounding would give 2)
  assert counts["beagle"] == 1 and counts["boxer"] == 1


def test_subset_int_count_per_class():
  counts = per_class(subsets.stratified_subset(make_records(), 20, seed=0))
  assert counts == {name: min(20, n) for name, n in CLASS_SIZES.items()}


def test_subset_deterministic_order_independent_and_seed_sensitive():
  a = subsets.stratified_subset(make_records(0), 0.1, seed=7)
  b = subsets.stratified_subset(make_records(1), 0.1, seed=7)
  assert set(paths(a)) == set(paths(b))  # same selection whatever the input order
  again = make_records(0)
  assert paths(subsets.stratified_subset(again, 0.1, seed=7)) == paths(a)
  other = subsets.stratified_subset(make_records(0), 0.1, seed=8)
  assert set(paths(other)) != set(paths(a))
  # The result keeps the input order.
  order = {p: i for i, p in enumerate(paths(again))}
  assert [order[p] for p in paths(a)] == sorted(order[p] for p in paths(a))


def test_subset_selection_is_spread_over_the_class():
  """The 10 % of a 200-image class is not simply its first 20 paths in sorted order."""
  chosen = [
    r.path
    for r in subsets.stratified_subset(make_records(), 0.1, seed=0)
    if r.class_name == "Abyssinian"
  ]
  first_sorted = sorted(f"/data/Abyssinian_{i}.jpg" for i in range(200))[:20]
  assert sorted(chosen) != first_sorted


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1, 0, -3])
def test_subset_rejects_bad_sizes(bad):
  with pytest.raises(ValueError, match="subset"):
    subsets.stratified_subset(make_records(), bad, seed=0)


def test_subset_rejects_bool():
  with pytest.raises(TypeError, match="float fraction or an int count"):
    subsets.stratified_subset(make_records(), True, seed=0)


@pytest.mark.parametrize(
  "text, expected", [("0.1", 0.1), ("0.5", 0.5), ("1.0", 1.0), ("20", 20), (" 7 ", 7), ("10%", 0.1)]
)
def test_parse_subset(text, expected):
  value = subsets.parse_subset(text)
  assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["0", "1.5", "abc", "-3", "", "0.0", "nan", "150%"])
def test_parse_subset_errors(text):
  with pytest.raises(
    ValueError, match=r"^subset=.*: invalid subset: .*fraction in \(0, 1\]"
  ) as info:
    subsets.parse_subset(text)
  assert info.value.argument == "subset" and info.value.value == text


# ---------------------------------------------------------------------------------------------
# Splits


def test_split_records_disjoint_covering_stratified():
  records = make_records()
  parts = subsets.split_records(records, {"train": 0.75, "val": 0.25}, seed=448)
  train, val = set(paths(parts["train"])), set(paths(parts["val"]))
  assert not train & val and train | val == set(paths(records))
  for name, n in CLASS_SIZES.items():
    n_train = per_class(parts["train"])[name]
    n_val = per_class(parts["val"])[name]
    assert n_train + n_val == n
    assert abs(n_train - 0.75 * n) < 1 and abs(n_val - 0.25 * n) < 1


def test_split_records_three_way_and_deterministic():
  records = make_records()
  fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
  a = subsets.split_records(records, fractions, seed=1)
  b = subsets.split_records(make_records(5), fractions, seed=1)
  assert {k: set(paths(v)) for k, v in a.items()} == {k: set(paths(v)) for k, v in b.items()}
  assert sum(len(v) for v in a.values()) == len(records)
  assert per_class(a["val"])["Abyssinian"] == 20 and per_class(a["test"])["Abyssinian"] == 20
  c = subsets.split_records(records, fractions, seed=2)
  assert set(paths(c["val"])) != set(paths(a["val"]))


@pytest.mark.parametrize("fractions", [{"train": 0.7, "val": 0.2}, {"train": 1.2, "val": -0.2}, {}])
def test_split_records_bad_fractions(fractions):
  with pytest.raises(ValueError, match="sum to 1"):
    subsets.split_records(make_records(), fractions, seed=0)


def test_split_by_source():
  records = make_records()
  parts = subsets.split_by_source(records, {"trainval": "train", "test": "test"})
  assert set(paths(parts["train"])) == {r.path for r in records if r.split == "trainval"}
  assert set(paths(parts["test"])) == {r.path for r in records if r.split == "test"}
  only_train = subsets.split_by_source(records, {"trainval": "train", "test": None})
  assert list(only_train) == ["train"]
  with pytest.raises(ValueError, match="not in the mapping.*test: "):
    subsets.split_by_source(records, {"trainval": "train"})


# ---------------------------------------------------------------------------------------------
# Perceptual hash


def reference_phash(pixels: np.ndarray) -> int:
  """Independent pHash for images whose sides are multiples of 32: block means + DCT matrix."""
  luma = pixels.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  h, w = luma.shape
  small = luma.reshape(32, h // 32, 32, w // 32).mean(axis=(1, 3))
  k = np.arange(32)[:, None]
  basis = np.cos(np.pi * (2 * np.arange(32)[None, :] + 1) * k / 64)  # DCT-II rows
  coefficients = (basis @ small @ basis.T)[1:9, 1:9].reshape(-1)
  bits = coefficients > np.median(coefficients)
  return sum(1 << (63 - i) for i, bit in enumerate(bits) if bit)


def natural_image(seed: int, width: int = 320, height: int = 256) -> np.ndarray:
  """Smooth blobs plus fine texture: structure at several scales, like a photo."""
  rng = np.random.default_rng(seed)
  coarse = sf.image_array(width, height, seed).astype(np.float64)
  mid = np.asarray(
    Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).resize(
      (width, height), Image.Resampling.BICUBIC
    ),
    np.float64,
  )
  noise = rng.normal(0, 6, (height, width, 3))
  return np.clip(0.6 * coarse + 0.4 * mid + noise, 0, 255).astype(np.uint8)


def jpeg_round_trip(pixels: np.ndarray, quality: int, scale: float = 1.0) -> np.ndarray:
  img = Image.fromarray(pixels)
  if scale != 1.0:
    img = img.resize(
      (round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR
    )
  buffer = io.BytesIO()
  img.save(buffer, format="JPEG", quality=quality)
  return decode.decode_image(buffer.getvalue()).pixels


def test_phash_matches_independent_reference():
  for seed in range(8):
    pixels = natural_image(seed)
    assert subsets.phash(pixels) == reference_phash(pixels), seed


def test_phash_near_for_recompressed_or_resized_copy_far_for_other_image():
  for seed in range(6):
    pixels = natural_image(seed)
    h = subsets.phash(pixels)
    assert subsets.hamming(h, subsets.phash(jpeg_round_trip(pixels, 70))) <= 4
    assert subsets.hamming(h, subsets.phash(jpeg_round_trip(pixels, 85, scale=0.6))) <= 4
    other = subsets.phash(natural_image(seed + 100))
    assert subsets.hamming(h, other) > subsets.DEFAULT_MAX_HAMMING + 4


def test_phash_of_grayscale_equals_rgb_of_equal_channels():
  gray = natural_image(3)[..., 0]
  assert subsets.phash(gray) == subsets.phash(np.repeat(gray[..., None], 3, axis=-1))


def test_near_duplicate_pairs_equal_brute_force():
  rng = np.random.default_rng(0)
  bases = rng.integers(0, 2**63, 40, dtype=np.uint64) * np.uint64(2)
  hashes = bases[rng.integers(0, 40, 700)]
  for _ in range(6):  # flip up to 6 random bits per hash: clusters with spread distances
    hashes = hashes ^ (np.uint64(1) << rng.integers(0, 64, len(hashes)).astype(np.uint64))
  for max_hamming in (0, 3, 10):
    found = subsets.near_duplicate_pairs(hashes, max_hamming)
    expected = []
    as_int = [int(h) for h in hashes]
    for b in range(len(as_int)):
      for a in range(b):
        d = bin(as_int[a] ^ as_int[b]).count("1")
        if d <= max_hamming:
          expected.append((a, b, d))
    assert found == expected
    assert expected or max_hamming == 0


# ---------------------------------------------------------------------------------------------
# Duplicate removal


def test_find_duplicates_exact_and_near_keep_first():
  a, b, c = natural_image(1), natural_image(2), natural_image(3)
  images = {
    "a.jpg": a,
    "b.jpg": b,
    "a_copy.png": a.copy(),
    "a_small.jpg": jpeg_round_trip(a, 80, scale=0.5),
    "c.jpg": c,
    "b_again.jpg": b.copy(),
  }
  records = [ImageRecord(path=p, label=0, class_name="x") for p in images]
  report = subsets.find_duplicates(records, lambda r: images[r.path])
  assert paths(report.kept) == ["a.jpg", "b.jpg", "c.jpg"]
  removed = {d.record.path: d for d in report.removed}
  assert removed["a_copy.png"].reason == "exact duplicate of a.jpg"
  assert removed["b_again.jpg"].reason == "exact duplicate of b.jpg"
  near = removed["a_small.jpg"]
  assert near.original.path == "a.jpg"
  assert near.reason == f"near duplicate of a.jpg (hamming {near.distance})"
  assert near.distance == subsets.hamming(subsets.phash(a), subsets.phash(images["a_small.jpg"]))
  rejects = report.rejects()
  assert rejects.paths(rejects_lib.SKIPPED) == ["a_copy.png", "a_small.jpg", "b_again.jpg"]
  exact_only = subsets.find_duplicates(records, lambda r: images[r.path], max_hamming=None)
  assert "a_small.jpg" in paths(exact_only.kept) and len(exact_only.removed) == 2


def test_find_duplicates_first_in_order_wins():
  a = natural_image(1)
  images = {"late.jpg": a, "early.jpg": a.copy()}
  records = [ImageRecord(path=p, label=0, class_name="x") for p in ("early.jpg", "late.jpg")]
  report = subsets.find_duplicates(records, lambda r: images[r.path])
  assert paths(report.kept) == ["early.jpg"]
  assert report.removed[0].reason == "exact duplicate of early.jpg"


def test_find_duplicates_on_real_slice(oxford_pets_3class):
  """Pairs below were checked by eye as the same photo; one crosses the official split."""
  result = load_oxford_pets(str(oxford_pets_3class))
  report = subsets.find_duplicates(result.records, lambda r: decode.read_image(r.path).pixels)
  pairs = {(d.original.image_id, d.record.image_id) for d in report.removed}
  same_photo = {
    ("Abyssinian_122", "Abyssinian_172"),
    ("Abyssinian_151", "Abyssinian_99"),
    ("Abyssinian_24", "Abyssinian_56"),
    ("Abyssinian_24", "Abyssinian_80"),
  }
  assert same_photo <= pairs
  assert all(d.distance <= subsets.DEFAULT_MAX_HAMMING for d in report.removed)
  assert len(report.kept) + len(report.removed) == len(result.records)


def test_source_splits_with_a_held_out_val_part_of_train():
  from tfpets.data import convert
  from tfpets.errors import ArgumentError

  records = [
    ImageRecord(path=f"{split}_{c}_{i}.jpg", label=c, class_name=f"c{c}", split=split)
    for split in ("trainval", "test")
    for c in range(3)
    for i in range(20)
  ]
  out = convert.assign_splits(records, "source,val=0.25", seed=1)
  assert sorted(out) == ["test", "train", "val"]
  assert [r.path for r in out["test"]] == [r.path for r in records if r.split == "test"]
  for c in range(3):  # stratified: a quarter of each class's trainval images
    assert sum(r.label == c for r in out["val"]) == 5
    assert sum(r.label == c for r in out["train"]) == 15
  assert not {r.path for r in out["val"]} & {r.path for r in out["train"]}
  assert {r.split for r in out["train"] + out["val"]} == {"trainval"}
  for bad in ("source,val=0", "source,val=1.5", "source,val=x"):
    with pytest.raises(ArgumentError, match="fraction F between 0 and 1"):
      convert.assign_splits(records, bad, seed=1)
