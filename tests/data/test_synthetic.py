"""Tests of the embedded synthetic pets (tfpets/data/synthetic.py)."""

from __future__ import annotations

import csv
import math
import os
import random

import cv2
import numpy as np
import pytest

from tfpets.data import decode, synthetic
from tfpets.data.decode import read_image
from tfpets.data.records import LANDMARK_NAMES_9

LEFT_EYE, RIGHT_EYE, MOUTH = 0, 1, 2
LEFT_EAR, RIGHT_EAR = (3, 4, 5), (6, 7, 8)  # Kaggle order: left ear 1-3, right ear 1-3


def tree_bytes(root) -> dict:
  """Relative path -> file bytes for every file under root."""
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def parse_cat_sidecar(path) -> np.ndarray:
  with open(path) as f:
    tokens = f.read().split()
  count = int(tokens[0])
  assert len(tokens) == 1 + 2 * count, path
  return np.array([float(t) for t in tokens[1:]]).reshape(count, 2)


def head_frame(landmarks: np.ndarray) -> np.ndarray:
  """Landmarks rotated so that the eye line is horizontal (undoes the roll), eye midpoint at 0."""
  pts = np.asarray(landmarks, np.float64)
  d = pts[RIGHT_EYE] - pts[LEFT_EYE]
  a = -math.atan2(d[1], d[0])
  rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
  return (pts - (pts[LEFT_EYE] + pts[RIGHT_EYE]) / 2) @ rot.T


def eye_roll_degrees(landmarks: np.ndarray) -> float:
  d = landmarks[RIGHT_EYE] - landmarks[LEFT_EYE]
  return math.degrees(math.atan2(float(d[1]), float(d[0])))


@pytest.fixture(scope="module")
def all_breeds_pets():
  """8 images of each of the 37 breeds at 128 px."""
  return list(synthetic.render_pets(num_breeds=37, images_per_breed=8, size=128, seed=11))


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("pets")
  calls = []
  csv_path = synthetic.write_dataset(
    str(out),
    num_breeds=12,
    images_per_breed=2,
    size=64,
    seed=5,
    progress=lambda done, total: calls.append((done, total)),
  )
  return out, csv_path, calls


# --- breed table -------------------------------------------------------------------------------


def test_breed_table_is_balanced_and_named_like_oxford_pets():
  assert len(synthetic.BREEDS) == 37
  assert len({b.name for b in synthetic.BREEDS}) == 37
  for breed in synthetic.BREEDS:
    assert breed.species in ("cat", "dog")
    # Oxford-IIIT Pet: cat breeds capitalised, dog breeds lowercase.
    assert breed.name[0].isupper() == (breed.species == "cat"), breed.name
    assert breed.marking in synthetic.MARKINGS and breed.ear_kind in synthetic.EAR_KINDS
  for n, cats in [(1, 1), (2, 1), (12, 6), (13, 7), (24, 12), (30, 12), (37, 12)]:
    table = synthetic.breed_table(n)
    assert len(table) == n
    assert sum(b.species == "cat" for b in table) == cats
    assert list(table) == sorted(table, key=lambda b: b.name.lower())
  assert set(synthetic.breed_table(12)) <= set(synthetic.breed_table(37))


def test_default_breeds_differ_pairwise_in_several_head_cues():
  cues = ("eye_color", "marking", "ear_kind", "ear_height", "ear_tilt", "muzzle_color")
  table = synthetic.breed_table(12)
  for i, a in enumerate(table):
    for b in table[i + 1 :]:
      if a.species == b.species:
        differing = [c for c in cues if getattr(a, c) != getattr(b, c)]
        assert len(differing) >= 2, (a.name, b.name, differing)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"num_breeds": 0}, "num_breeds must be between 1 and 37"),
    ({"num_breeds": 38}, "num_breeds must be between 1 and 37"),
    ({"size": 16}, "size must be at least 32"),
    ({"images_per_breed": 0}, "images_per_breed must be at least 1"),
    ({"workers": 0}, "workers must be at least 1"),
    ({"aspect_range": (1.5, 1.0)}, "aspect range must satisfy"),
  ],
)
def test_write_dataset_rejects_bad_arguments(tmp_path, kwargs, message):
  with pytest.raises(ValueError, match=message):
    synthetic.write_dataset(str(tmp_path), **kwargs)


def test_render_pet_rejects_unknown_breed():
  with pytest.raises(ValueError, match=r"breed_id must be in \[0, 12\), got 12"):
    synthetic.render_pet(0, 0, 12, 64, 12)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path, small_dataset):
  first, _, _ = small_dataset
  again = tmp_path / "again"
  synthetic.write_dataset(str(again), num_breeds=12, images_per_breed=2, size=64, seed=5)
  a, b = tree_bytes(first), tree_bytes(again)
  assert len(a) == 12 * 2 * 2 + 1
  assert a == b
  other = tmp_path / "other_seed"
  synthetic.write_dataset(str(other), num_breeds=12, images_per_breed=2, size=64, seed=6)
  c = tree_bytes(other)
  assert c.keys() == a.keys()
  assert sum(a[k] != c[k] for k in a if k.endswith(".jpg")) == 24


def test_images_do_not_depend_on_rendering_order(small_dataset):
  out, _, _ = small_dataset
  files = tree_bytes(out)
  order = list(range(24))
  random.Random(0).shuffle(order)
  for index in order:
    pet = synthetic.render_pet(5, index, index % 12, 64, 12)
    name = f"{pet.class_name}/{pet.class_name}_{index}.jpg"
    assert decode.encode_jpeg(pet.image) == files[name], name
  forward = synthetic.render_pet(5, 7, 7, 64, 12).image
  assert np.array_equal(forward, synthetic.render_pet(5, 7, 7, 64, 12).image)


def test_parallel_workers_write_the_same_files(tmp_path, small_dataset):
  out, _, _ = small_dataset
  synthetic.write_dataset(
    str(tmp_path), num_breeds=12, images_per_breed=2, size=64, seed=5, workers=2
  )
  assert tree_bytes(tmp_path) == tree_bytes(out)


# --- files -------------------------------------------------------------------------------------


def test_csv_rows_match_files_and_sidecars(small_dataset):
  out, csv_path, calls = small_dataset
  assert csv_path == os.path.join(str(out), "pets.csv")
  with open(csv_path, newline="") as f:
    header = f.readline().strip()
    rows = list(csv.DictReader(f, fieldnames=header.split(",")))
  expected = "path,label,species,split,xmin,ymin,xmax,ymax," + ",".join(
    f"lm{k}_x,lm{k}_y" for k in range(9)
  )
  assert header == expected
  assert len(rows) == 24
  table = synthetic.breed_table(12)
  jpgs = {p for p in tree_bytes(out) if p.endswith(".jpg")}
  assert {row["path"] for row in rows} == jpgs
  for row in rows:
    folder, name = row["path"].split("/")
    index = int(name[len(folder) + 1 : -len(".jpg")])
    assert folder == row["label"] == table[index % 12].name
    assert row["species"] == table[index % 12].species
    assert row["split"] == ""
    box = np.array([float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")])
    landmarks = np.array([[float(row[f"lm{k}_x"]), float(row[f"lm{k}_y"])] for k in range(9)])
    sidecar = parse_cat_sidecar(os.path.join(out, row["path"] + ".cat"))
    assert np.allclose(sidecar, landmarks, atol=1e-9)
    pet = synthetic.render_pet(5, index, index % 12, 64, 12)
    assert np.allclose(sidecar, pet.landmarks, atol=1e-3)
    assert np.allclose(box, pet.box, atol=1e-3)
  assert calls[-1] == (24, 24)


def test_sidecar_is_kaggle_cat_format(small_dataset):
  out, _, _ = small_dataset
  name = synthetic.breed_table(12)[0].name  # image 0 has breed 0
  path = os.path.join(out, name, f"{name}_0.jpg.cat")
  with open(path) as f:
    text = f.read()
  assert text.endswith("\n") and text.count("\n") == 1
  tokens = text.split()
  assert tokens[0] == "9" and len(tokens) == 19
  assert all("." in t for t in tokens[1:])  # coordinates written as floats


def test_decoded_jpeg_matches_in_memory_image(small_dataset):
  out, _, _ = small_dataset
  for index in (0, 5, 13):
    pet = synthetic.render_pet(5, index, index % 12, 64, 12)
    decoded = read_image(os.path.join(out, pet.class_name, f"{pet.class_name}_{index}.jpg"))
    assert decoded.format == "JPEG" and decoded.pixels.shape == pet.image.shape
    diff = np.abs(decoded.pixels.astype(np.int32) - pet.image.astype(np.int32)).mean()
    assert diff < 3.0, (index, diff)


# --- geometry ----------------------------------------------------------------------------------


def test_landmark_order_follows_kaggle_cat(all_breeds_pets):
  # The indices used below name the same points as the shared Kaggle CAT order.
  assert [LANDMARK_NAMES_9[i] for i in (LEFT_EYE, RIGHT_EYE, MOUTH, LEFT_EAR[1], RIGHT_EAR[1])] == [
    "left_eye",
    "right_eye",
    "mouth",
    "left_ear_2",
    "right_ear_2",
  ]
  breeds = {b.name: b for b in synthetic.BREEDS}
  for pet in all_breeds_pets:
    lm = pet.landmarks
    assert lm.shape == (9, 2) and lm.dtype == np.float32
    # Viewer's left: with |roll| <= 30 degrees the left eye has the smaller x in the image.
    assert lm[LEFT_EYE, 0] < lm[RIGHT_EYE, 0]
    head = head_frame(lm)
    eye_y = head[LEFT_EYE, 1]
    iod = head[RIGHT_EYE, 0] - head[LEFT_EYE, 0]
    assert head[MOUTH, 1] > eye_y + 0.3 * iod, pet.class_name  # mouth below the eyes
    assert abs(head[MOUTH, 0]) < 0.15 * iod  # ... and between them
    for ear in (LEFT_EAR, RIGHT_EAR):
      tip = head[ear[1]]
      assert tip[1] < eye_y - 0.2 * iod, pet.class_name  # tip above the eyes
      corners = [head[ear[0]], head[ear[2]]]
      assert min(np.linalg.norm(tip - c) for c in corners) > 0.15 * iod
      if breeds[pet.class_name].ear_kind == "erect":  # a standing ear points away from the face
        assert np.linalg.norm(tip) > max(np.linalg.norm(c) for c in corners), pet.class_name
    # Points run left to right across the head: left ear outer, inner; right ear inner, outer.
    assert head[3, 0] < head[5, 0] < head[6, 0] < head[8, 0], pet.class_name
    assert head[4, 0] < 0 < head[7, 0]
    assert head[3, 0] < head[LEFT_EYE, 0] and head[8, 0] > head[RIGHT_EYE, 0]


def test_roll_angle_matches_eye_line_and_spans_thirty_degrees(all_breeds_pets):
  rolls = np.array([eye_roll_degrees(p.landmarks) for p in all_breeds_pets])
  stated = np.array([p.roll_degrees for p in all_breeds_pets])
  assert np.allclose(rolls, stated, atol=0.05)
  assert np.abs(rolls).max() <= 30.0 + 1e-3
  assert rolls.min() < -26.0 and rolls.max() > 26.0
  assert np.histogram(rolls, bins=6, range=(-30, 30))[0].min() >= 20  # roughly uniform


def test_box_holds_landmarks_and_image_holds_box(all_breeds_pets):
  for pet in all_breeds_pets:
    height, width = pet.image.shape[:2]
    xmin, ymin, xmax, ymax = pet.box
    assert 0 <= xmin < xmax <= width - 1 and 0 <= ymin < ymax <= height - 1
    lm = pet.landmarks
    assert np.all(lm[:, 0] >= xmin - 1e-3) and np.all(lm[:, 0] <= xmax + 1e-3)
    assert np.all(lm[:, 1] >= ymin - 1e-3) and np.all(lm[:, 1] <= ymax + 1e-3)
    side = max(xmax - xmin, ymax - ymin) / min(height, width)
    assert 0.10 - 1e-4 <= side <= 0.35 + 1e-4  # the head is small: cropping matters


def test_non_square_images_keep_annotations_inside():
  shapes = set()
  for index in range(24):
    pet = synthetic.render_pet(2, index, index % 12, 96, 12, aspect_range=(0.6, 1.6))
    height, width = pet.image.shape[:2]
    shapes.add((height, width))
    assert max(height, width) == 96 and 0.55 <= width / height <= 1.7
    xmin, ymin, xmax, ymax = pet.box
    assert 0 <= xmin and xmax <= width - 1 and 0 <= ymin and ymax <= height - 1
  assert len(shapes) > 10
  assert any(h > w for h, w in shapes) and any(w > h for h, w in shapes)


# --- appearance --------------------------------------------------------------------------------


def test_pixels_at_eye_landmarks_have_the_breed_eye_colour():
  """The iris around each eye landmark is nearest (in chromaticity, which survives the random
  lighting gain) to the breed's own eye colour among all eye colours of the table."""
  table = synthetic.breed_table(12)
  palette = sorted({b.eye_color for b in table})
  chroma = np.array(palette, np.float64)
  chroma /= chroma.sum(axis=1, keepdims=True)
  checked = 0
  for index in range(72):
    pet = synthetic.render_pet(7, index, index % 12, 512, 12)
    breed = table[index % 12]
    iod = np.linalg.norm(pet.landmarks[RIGHT_EYE] - pet.landmarks[LEFT_EYE])
    radius = breed.eye_radius * iod
    if radius < 3.0:
      continue  # too few iris pixels for a stable median
    for x, y in pet.landmarks[:2]:
      x0, y0 = int(x - radius) - 1, int(y - radius) - 1
      patch = pet.image[y0 : y0 + int(2 * radius) + 3, x0 : x0 + int(2 * radius) + 3].astype(float)
      yy, xx = np.mgrid[: patch.shape[0], : patch.shape[1]]
      dist = np.hypot(xx + x0 - x, yy + y0 - y)
      ring = patch[(dist >= 0.5 * radius) & (dist <= 0.8 * radius)]  # iris, around the pupil
      colour = np.median(ring, axis=0)
      nearest = np.argmin(np.linalg.norm(chroma - colour / colour.sum(), axis=1))
      assert palette[nearest] == breed.eye_color, (index, breed.name, colour)
      checked += 1
  assert checked >= 60


def _eye_aligned_crop(pet, size: int = 32, eye_distance: float = 8.0) -> np.ndarray:
  """Head crop with the eyes levelled, centred and `eye_distance` pixels apart."""
  left, right = pet.landmarks[LEFT_EYE].astype(float), pet.landmarks[RIGHT_EYE].astype(float)
  d = right - left
  scale, angle = eye_distance / np.linalg.norm(d), -math.atan2(d[1], d[0])
  linear = scale * np.array(
    [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
  )
  shift = np.array([size / 2, size / 2]) - linear @ ((left + right) / 2)
  matrix = np.concatenate([linear, shift[:, None]], axis=1)
  return cv2.warpAffine(pet.image, matrix, (size, size), flags=cv2.INTER_AREA).astype(np.float32)


def _nearest_mean_accuracy(features: np.ndarray, labels: np.ndarray, classes: int) -> float:
  """Class means from the first half, accuracy of nearest-mean labelling on the second half."""
  train = np.arange(len(labels)) < len(labels) // 2
  means = np.stack([features[train & (labels == c)].mean(axis=0) for c in range(classes)])
  dist = ((features[~train][:, None, :] - means[None]) ** 2).sum(axis=-1)
  return float((dist.argmin(axis=1) == labels[~train]).mean())


def test_breeds_differ_on_the_head_not_on_the_rest_of_the_image():
  """A nearest-mean classifier tells breeds apart from eye-aligned head crops (coat colour
  removed), but not from the whole image: the breed lives on the head."""
  num_breeds, per_breed = 12, 30
  head, whole, labels = [], [], []
  for pet in synthetic.render_pets(num_breeds, per_breed, size=128, seed=3):
    crop = _eye_aligned_crop(pet)
    head.append((crop - np.median(crop.reshape(-1, 3), axis=0)).ravel())
    whole.append(cv2.resize(pet.image, (32, 32), interpolation=cv2.INTER_AREA).ravel())
    labels.append(pet.breed_id)
  labels = np.array(labels)
  head_accuracy = _nearest_mean_accuracy(np.stack(head), labels, num_breeds)
  whole_accuracy = _nearest_mean_accuracy(np.stack(whole).astype(np.float32), labels, num_breeds)
  assert head_accuracy >= 0.55, head_accuracy  # chance is 1/12
  assert whole_accuracy <= 0.25, whole_accuracy
  assert head_accuracy > whole_accuracy + 0.3
