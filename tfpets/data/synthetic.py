"""Embedded synthetic pets: procedurally rendered cat and dog heads for offline runs and tests.

Every image shows one pet (a head on a body) over a cluttered background, with the 9 Kaggle CAT
landmarks, a tight head box, the species and the breed. Breeds differ only by cues that live on the
head (ear shape, eye colour, muzzle, marking pattern); coat colour, body, pose (in-plane roll up to
30 degrees), scale (head box 10-35 % of the shorter image side), position, lighting and background
are drawn at random for every image, so the task is fine-grained and cropping to the head helps.

Conventions:
  * Coordinates are pixels, x to the right and y down, with integer values at pixel centres (the
    OpenCV drawing convention, so a landmark at (3.0, 5.0) is the centre of pixel column 3, row 5).
  * Landmarks follow `tfpets.data.records.LANDMARK_NAMES_9`. "Left" and "right" are seen from the
    viewer, as in the Kaggle CAT files: on an upright head the left eye has the smaller x. Each ear
    is listed along the top of the head from the viewer's left to right: the left ear as outer base
    corner, tip, inner base corner; the right ear as inner base corner, tip, outer base corner.
    Ear point 2 is always the tip, points 1 and 3 the base corners where the ear meets the face.
  * Ear tips are above the eyes in the head's own frame for every breed (erect, rose and folded
    ears; no pendant ears), so that "undo the roll, tips above eyes" holds for all images.
  * The roll is the angle of the line from the left eye to the right eye, atan2(dy, dx) in image
    coordinates (positive = clockwise on screen); it is uniform in [-30, 30] degrees.
  * An image's content depends only on (seed, index, breed, size, aspect range): each image has
    its own random generator seeded with (seed, index), so rendering in parallel or in any order
    gives byte-identical files.

Layout written by `write_dataset`: `<out>/<class_name>/<class_name>_<i>.jpg` (i = global image
index; image i has breed i % num_breeds), a Kaggle CAT sidecar `<file>.jpg.cat` per image, and
`<out>/pets.csv` (see `CSV_HEADER`).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import multiprocessing
import os
from concurrent import futures
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from absl import logging

from tfpets.data import decode

RGB = Tuple[int, int, int]

CSV_NAME = "pets.csv"
CSV_HEADER = ["path", "label", "species", "split", "xmin", "ymin", "xmax", "ymax"] + [
  f"lm{k}_{axis}" for k in range(9) for axis in ("x", "y")
]
MIN_SIZE = 32
ROLL_LIMIT_DEGREES = 30.0
HEAD_FRACTION_RANGE = (0.10, 0.35)  # head box side / shorter image side
_LOG_EVERY = 500
_SEED_SALT = 0x9E75  # keeps these streams apart from other users of the same seed

# Fixed-point precision of the OpenCV drawing calls (coordinates * 2**_SHIFT).
_SHIFT = 4
_ONE = 1 << _SHIFT
_GAIN_ONE = 128.0  # fixed-point unit of the 8-bit illumination gain map

EYE_COLORS: Dict[str, RGB] = {  # chosen at least 0.09 apart in chromaticity (rgb / sum)
  "amber": (230, 165, 25),
  "blue": (60, 120, 235),
  "copper": (215, 80, 25),
  "green": (100, 185, 50),
  "aqua": (60, 195, 185),
  "gold": (225, 210, 40),
  "brown": (120, 58, 30),
  "hazel": (130, 125, 60),
  "ice": (165, 205, 240),
  "dark": (60, 40, 38),
}
_WHITE: RGB = (240, 238, 232)
_DARK: RGB = (45, 35, 30)
_TAN: RGB = (200, 140, 70)
_GREY: RGB = (120, 120, 125)
_PINK: RGB = (225, 140, 150)
_BRICK: RGB = (170, 80, 70)
_BLACK: RGB = (25, 22, 22)
_CREAM: RGB = (235, 215, 175)
_GINGER: RGB = (205, 115, 45)

# Coat colours are drawn per image, independent of the breed, so the body says nothing about it.
_COATS: Tuple[RGB, ...] = (
  (230, 210, 175),
  (205, 160, 110),
  (210, 125, 60),
  (125, 85, 55),
  (90, 62, 45),
  (140, 140, 145),
  (105, 110, 125),
  (55, 50, 50),
  (185, 185, 190),
  (200, 180, 140),
)

MARKINGS = (
  "none",
  "tabby",
  "mask",
  "blaze",
  "spots",
  "patch_left",
  "patch_right",
  "eyebrows",
  "bib",
  "spectacles",
  "cap",
  "split",
)
EAR_KINDS = ("erect", "folded")


@dataclasses.dataclass(frozen=True)
class BreedSpec:
  """The head cues of one synthetic breed (head-frame units: half the face width = 1).

  Attributes:
    name: class name; capitalised for cats, lowercase for dogs (the Oxford-IIIT Pet convention).
    species: 'cat' or 'dog'.
    eye_color: iris colour, RGB.
    marking: one of MARKINGS, drawn inside the face.
    mark_color: colour of the marking, RGB.
    ear_kind: 'erect' (drawn behind the face) or 'folded' (flap folded forward over the face).
    ear_height: ear length from the middle of its base.
    ear_span: half the angle (degrees) between the base corners, seen from the face centre.
    ear_tilt: outward lean of the ear axis from vertical, degrees (erect ears only; a folded
      ear's flap points at the face centre).
    ear_round: 0 for a sharp tip, up to ~0.5 for a rounded one.
    ear_position: angle (degrees from the top) of the middle of the ear base on the face outline.
    eye_radius: iris radius as a fraction of the distance between the eye centres.
    muzzle_color: muzzle (dogs) or whisker-pad (cats) colour; None means the coat colour.
    muzzle_length: vertical half-axis of a dog's muzzle (cats: whisker-pad size).
    nose_color: RGB.
    inner_ear_color: RGB of the inside of erect ears.
    face_ry: vertical half-axis of the face ellipse.
  """

  name: str
  species: str
  eye_color: RGB
  marking: str
  mark_color: RGB
  ear_kind: str = "erect"
  ear_height: float = 0.8
  ear_span: float = 20.0
  ear_tilt: float = 18.0
  ear_round: float = 0.1
  ear_position: float = 40.0
  eye_radius: float = 0.22
  muzzle_color: Optional[RGB] = None
  muzzle_length: float = 0.35
  nose_color: RGB = _PINK
  inner_ear_color: RGB = _PINK
  face_ry: float = 0.88


def _cat(name: str, eye: str, marking: str, mark: RGB = _DARK, **cues) -> BreedSpec:
  return BreedSpec(
    name=name, species="cat", eye_color=EYE_COLORS[eye], marking=marking, mark_color=mark, **cues
  )


def _dog(name: str, eye: str, marking: str, mark: RGB = _DARK, **cues) -> BreedSpec:
  cues = {
    "eye_radius": 0.17,
    "nose_color": _BLACK,
    "inner_ear_color": (150, 105, 95),
    "face_ry": 0.98,
    "ear_round": 0.25,
    **cues,
  }
  return BreedSpec(
    name=name, species="dog", eye_color=EYE_COLORS[eye], marking=marking, mark_color=mark, **cues
  )


_FOLD = {"ear_kind": "folded"}
# 12 cats + 25 dogs, as in Oxford-IIIT Pet. The first 6 of each species form the default table and
# are chosen so that every pair differs in several head cues.
_CATS = (
  _cat("Amber_Tabby", "amber", "tabby", nose_color=_BRICK),
  _cat("Bluepoint", "blue", "mask", ear_height=0.95, ear_span=16, ear_tilt=12),
  _cat("Copper_Fold", "copper", "none", ear_height=0.35, ear_span=17, ear_position=36, **_FOLD),
  _cat("Emerald_Spotted", "green", "spots", ear_round=0.3, ear_height=0.7),
  _cat(
    "Frost_Rex",
    "aqua",
    "bib",
    mark=_WHITE,
    ear_height=1.0,
    ear_span=26,
    ear_tilt=28,
    ear_round=0.35,
    face_ry=0.84,
  ),
  _cat(
    "Golden_Lynx",
    "gold",
    "blaze",
    mark=_WHITE,
    ear_height=1.05,
    ear_span=15,
    ear_tilt=8,
    ear_position=34,
    muzzle_color=_WHITE,
  ),
  _cat("Harbor_Mau", "green", "tabby", mark=_GREY, ear_height=0.85, ear_tilt=14),
  _cat("Ivory_Angora", "blue", "none", muzzle_color=_WHITE, ear_height=0.9, ear_round=0.2),
  _cat("Juniper_Shorthair", "copper", "patch_left", ear_height=0.6, ear_round=0.45, face_ry=0.92),
  _cat("Maple_Curl", "amber", "spots", mark=_GINGER, ear_tilt=35, ear_height=0.75),
  _cat("Onyx_Bombay", "gold", "mask", mark=_BLACK, ear_round=0.3, nose_color=_BLACK),
  _cat("Sable_Burmilla", "green", "eyebrows", mark=_CREAM, ear_height=0.7, ear_span=24),
)
_DOGS = (
  _dog(
    "alpine_shepherd",
    "brown",
    "mask",
    ear_height=1.05,
    ear_span=17,
    ear_tilt=14,
    ear_round=0.05,
    muzzle_color=_BLACK,
    muzzle_length=0.42,
  ),
  _dog(
    "bramble_terrier",
    "dark",
    "eyebrows",
    mark=_TAN,
    ear_height=0.4,
    ear_span=18,
    ear_position=42,
    muzzle_color=_GREY,
    muzzle_length=0.4,
    **_FOLD,
  ),
  _dog(
    "copper_corgi",
    "hazel",
    "blaze",
    mark=_WHITE,
    ear_height=1.0,
    ear_span=28,
    ear_tilt=24,
    ear_round=0.35,
    muzzle_color=_WHITE,
  ),
  _dog(
    "frost_husky",
    "ice",
    "spectacles",
    mark=_WHITE,
    ear_height=0.75,
    ear_span=20,
    ear_tilt=10,
    ear_round=0.15,
    muzzle_color=_WHITE,
    muzzle_length=0.36,
  ),
  _dog(
    "ember_spitz",
    "amber",
    "none",
    ear_height=0.55,
    ear_span=16,
    ear_tilt=6,
    ear_round=0.0,
    muzzle_length=0.28,
  ),
  _dog(
    "glen_bulldog",
    "brown",
    "patch_right",
    ear_height=0.45,
    ear_span=16,
    ear_tilt=65,
    ear_position=52,
    muzzle_color=_CREAM,
    muzzle_length=0.26,
  ),
  _dog(
    "harbor_retriever",
    "hazel",
    "none",
    ear_height=0.45,
    ear_tilt=68,
    ear_position=55,
    muzzle_length=0.45,
  ),
  _dog(
    "island_pinscher",
    "brown",
    "eyebrows",
    mark=_TAN,
    ear_height=1.15,
    ear_span=13,
    ear_tilt=10,
    ear_round=0.0,
    muzzle_color=_TAN,
    muzzle_length=0.45,
  ),
  _dog(
    "juniper_beagle", "brown", "blaze", mark=_WHITE, ear_height=0.45, muzzle_color=_WHITE, **_FOLD
  ),
  _dog(
    "kettle_boxer",
    "brown",
    "mask",
    mark=_BLACK,
    ear_height=0.4,
    ear_tilt=62,
    ear_position=50,
    muzzle_color=_BLACK,
    muzzle_length=0.25,
  ),
  _dog(
    "lantern_collie",
    "amber",
    "blaze",
    mark=_WHITE,
    ear_height=0.42,
    ear_span=15,
    muzzle_color=_WHITE,
    muzzle_length=0.46,
    **_FOLD,
  ),
  _dog(
    "meadow_schnauzer", "dark", "eyebrows", mark=_GREY, ear_height=0.35, muzzle_color=_GREY, **_FOLD
  ),
  _dog(
    "nugget_pug",
    "dark",
    "mask",
    mark=_BLACK,
    ear_height=0.38,
    ear_tilt=60,
    ear_position=50,
    muzzle_color=_BLACK,
    muzzle_length=0.22,
  ),
  _dog("oak_hound", "hazel", "cap", ear_height=0.45, ear_span=22, **_FOLD),
  _dog(
    "pebble_papillon",
    "brown",
    "split",
    ear_height=1.2,
    ear_span=27,
    ear_tilt=35,
    ear_round=0.4,
    muzzle_length=0.3,
  ),
  _dog(
    "quill_whippet",
    "amber",
    "none",
    ear_height=0.42,
    ear_tilt=70,
    ear_position=48,
    muzzle_length=0.48,
  ),
  _dog(
    "river_malamute",
    "brown",
    "cap",
    ear_height=0.7,
    ear_span=20,
    ear_tilt=16,
    ear_round=0.2,
    muzzle_color=_WHITE,
  ),
  _dog(
    "saffron_shiba",
    "brown",
    "bib",
    mark=_CREAM,
    ear_height=0.6,
    ear_span=18,
    ear_tilt=12,
    muzzle_color=_CREAM,
    muzzle_length=0.3,
  ),
  _dog(
    "thistle_westie",
    "dark",
    "none",
    ear_height=0.55,
    ear_span=14,
    ear_round=0.0,
    muzzle_color=_WHITE,
    muzzle_length=0.3,
  ),
  _dog(
    "umber_dachshund",
    "brown",
    "eyebrows",
    mark=_TAN,
    ear_height=0.48,
    ear_span=22,
    muzzle_color=_TAN,
    **_FOLD,
  ),
  _dog("velvet_weimaraner", "ice", "none", ear_height=0.44, ear_span=22, **_FOLD),
  _dog(
    "willow_setter",
    "hazel",
    "spots",
    ear_height=0.45,
    ear_tilt=66,
    ear_position=52,
    muzzle_length=0.42,
  ),
  _dog(
    "yarrow_spaniel",
    "brown",
    "patch_left",
    ear_height=0.46,
    ear_span=24,
    muzzle_color=_WHITE,
    **_FOLD,
  ),
  _dog(
    "zephyr_greyhound",
    "hazel",
    "blaze",
    mark=_WHITE,
    ear_height=0.4,
    ear_tilt=72,
    ear_position=50,
    muzzle_length=0.5,
  ),
  _dog(
    "birch_akita",
    "dark",
    "spectacles",
    mark=_CREAM,
    ear_height=0.6,
    ear_span=19,
    ear_tilt=14,
    ear_round=0.3,
    muzzle_color=_CREAM,
    muzzle_length=0.32,
  ),
)
BREEDS: Tuple[BreedSpec, ...] = _CATS + _DOGS


@functools.lru_cache(maxsize=None)
def breed_table(num_breeds: int = 12) -> Tuple[BreedSpec, ...]:
  """The first `num_breeds` breeds, half cats (up to 12) and the rest dogs.

  Returned in case-insensitive alphabetical order of the names, as Oxford-IIIT Pet numbers its
  classes; breed id = position in this tuple.
  """
  if not 1 <= num_breeds <= len(BREEDS):
    raise ValueError(f"num_breeds must be between 1 and {len(BREEDS)}, got {num_breeds}")
  num_cats = min(len(_CATS), (num_breeds + 1) // 2)
  chosen = _CATS[:num_cats] + _DOGS[: num_breeds - num_cats]
  return tuple(sorted(chosen, key=lambda breed: breed.name.lower()))


@dataclasses.dataclass
class RenderedPet:
  """One rendered image and its annotations (pixels, x right, y down).

  Attributes:
    image: [H, W, 3] uint8 RGB.
    landmarks: [9, 2] float32 (x, y), Kaggle CAT order (`LANDMARK_NAMES_9`).
    box: [4] float32 head box xmin, ymin, xmax, ymax (tight around face, ears and muzzle).
    species: 'cat' or 'dog'.
    class_name: the breed name.
    breed_id: index into `breed_table(num_breeds)`.
    roll_degrees: in-plane rotation of the head (see the module docstring for the sign).
  """

  image: np.ndarray
  landmarks: np.ndarray
  box: np.ndarray
  species: str
  class_name: str
  breed_id: int
  roll_degrees: float


# ----------------------------------------------------------------------------------------------
# Head geometry, in the head frame: origin at the face centre, x right, y down, unit = half the
# face width. A head is a list of drawing operations plus its silhouette and landmarks.


@dataclasses.dataclass
class _Op:
  points: np.ndarray  # [N, 2] head-frame (or image-frame, for the body) polygon/polyline
  color: Tuple[float, ...]
  width: float = 0.0  # 0 = filled polygon, else stroke width in the same units
  closed: bool = False


@dataclasses.dataclass
class _Head:
  ops: List[_Op]
  silhouette: np.ndarray  # [N, 2] points whose bounding box is the head box
  landmarks: np.ndarray  # [9, 2]


_CIRCLES: Dict[int, np.ndarray] = {}


def _unit_circle(n: int) -> np.ndarray:
  if n not in _CIRCLES:
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    _CIRCLES[n] = np.stack([np.cos(t), np.sin(t)], axis=1)
  return _CIRCLES[n]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
  return _unit_circle(n) * (rx, ry) + (cx, cy)


_BEZIER_WEIGHTS: Dict[int, np.ndarray] = {}


def _bezier(p0: np.ndarray, ctrl: np.ndarray, p1: np.ndarray, n: int) -> np.ndarray:
  """n points of the quadratic Bezier curve from p0 to p1 pulled towards ctrl."""
  if n not in _BEZIER_WEIGHTS:
    t = np.linspace(0.0, 1.0, n)
    _BEZIER_WEIGHTS[n] = np.stack([(1 - t) ** 2, 2 * (1 - t) * t, t**2], axis=1)
  return _BEZIER_WEIGHTS[n] @ np.array([p0, ctrl, p1], np.float64)


def _shade(color: Sequence[float], factor: float) -> Tuple[float, ...]:
  return tuple(min(255.0, c * factor) for c in color)


def _inside_face(points: np.ndarray, face_ry: float, limit: float) -> np.ndarray:
  """Pulls points radially into the face ellipse scaled by `limit` (the ellipse is convex, so
  polygons whose vertices are inside stay inside)."""
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  radius = np.sqrt(pts[:, 0] ** 2 + (pts[:, 1] / face_ry) ** 2)
  scale = np.minimum(1.0, limit / np.maximum(radius, 1e-9))
  return pts * scale[:, None]


def _on_face(angle_degrees: float, face_ry: float) -> np.ndarray:
  """Point of the face outline at `angle_degrees` from the top, towards the viewer's left."""
  a = math.radians(angle_degrees)
  return np.array([-math.sin(a), -face_ry * math.cos(a)])


@dataclasses.dataclass
class _EarPose:
  height: float
  span: float
  tilt: float
  position: float


_Feature = Tuple[List[_Op], np.ndarray, np.ndarray]  # (ops, silhouette, landmark points)


def _erect_ear(spec: BreedSpec, pose: _EarPose, face_ry: float, coat) -> _Feature:
  """Left ear standing behind the face: (ops, polygon, [outer base, tip, inner base])."""
  outer = _on_face(pose.position + pose.span, face_ry)
  inner = _on_face(pose.position - pose.span, face_ry)
  mid = (outer + inner) / 2
  tilt = math.radians(pose.tilt)
  tip = mid + pose.height * np.array([-math.sin(tilt), -math.cos(tilt)])
  near_outer = tip + spec.ear_round * (outer - tip)
  near_inner = tip + spec.ear_round * (inner - tip)
  side = near_outer - outer
  bulge = 0.12 * np.array([side[1], -side[0]])  # the outer edge bows outwards (to the left)
  if bulge[0] > 0:
    bulge = -bulge
  polygon = np.concatenate(
    [
      _bezier(outer, (outer + near_outer) / 2 + bulge, near_outer, 6),
      _bezier(near_outer, tip, near_inner, 5)[1:],
      inner[None],
    ]
  )
  apex = 0.25 * near_outer + 0.5 * tip + 0.25 * near_inner  # the rounded tip's outermost point
  centre = mid + 0.3 * (apex - mid)
  ops = [
    _Op(polygon, coat),
    _Op(centre + 0.55 * (polygon - centre), spec.inner_ear_color),
    _Op(polygon, _shade(coat, 0.6), width=0.03),
  ]
  return ops, polygon, np.stack([outer, apex, inner])


def _folded_ear(spec: BreedSpec, pose: _EarPose, face_ry: float, coat) -> _Feature:
  """Left ear folded forward over the face: a crease above the outline, the flap tip below it."""
  outer = _on_face(pose.position + pose.span, face_ry)
  inner = _on_face(pose.position - pose.span, face_ry)
  mid = (outer + inner) / 2
  outward = mid / np.linalg.norm(mid)
  crease = _bezier(outer, mid + 0.9 * pose.height * outward, inner, 8)
  # The flap folds forward and down towards the face centre; 0.8 keeps its tip above the eyes.
  lean = math.radians(pose.tilt - spec.ear_tilt)  # only the per-image jitter
  inward = -outward @ _rotation(math.degrees(lean)).T
  tip = mid + 0.8 * pose.height * inward
  polygon = np.concatenate([crease, tip[None]])
  ops = [
    _Op(polygon, _shade(coat, 0.82)),
    _Op(polygon, _shade(coat, 0.5), width=0.035, closed=True),
  ]
  return ops, polygon, np.stack([outer, tip, inner])


def _mirror(points: np.ndarray) -> np.ndarray:
  return points * (-1.0, 1.0)


def _mirror_ops(ops: List[_Op]) -> List[_Op]:
  return [dataclasses.replace(op, points=_mirror(op.points)) for op in ops]


def _ear_pose(spec: BreedSpec, rng: np.random.Generator) -> _EarPose:
  return _EarPose(
    height=spec.ear_height * rng.uniform(0.9, 1.1),
    span=spec.ear_span * rng.uniform(0.92, 1.08),
    tilt=spec.ear_tilt + rng.uniform(-5.0, 5.0),
    position=spec.ear_position + rng.uniform(-3.0, 3.0),
  )


def _ears(spec: BreedSpec, rng: np.random.Generator, face_ry: float, coat):
  """(ops behind the face, ops in front of it, silhouette points, the 6 ear landmarks)."""
  left = _ear_pose(spec, rng)
  right = _ear_pose(spec, rng)
  if spec.ear_kind == "folded":
    left_ops, left_poly, left_pts = _folded_ear(spec, left, face_ry, coat)
    right_ops, right_poly, right_pts = _folded_ear(spec, right, face_ry, coat)
  else:
    left_ops, left_poly, left_pts = _erect_ear(spec, left, face_ry, coat)
    right_ops, right_poly, right_pts = _erect_ear(spec, right, face_ry, coat)
  ops = left_ops + _mirror_ops(right_ops)
  # Mirroring turns (outer, tip, inner) into the right ear's (outer, tip, inner); the Kaggle order
  # runs left to right across the head, so the right ear is listed inner, tip, outer.
  landmarks = np.concatenate([left_pts, _mirror(right_pts)[::-1]])
  silhouette = np.concatenate([left_poly, _mirror(right_poly)])
  behind, front = (ops, []) if spec.ear_kind == "erect" else ([], ops)
  return behind, front, silhouette, landmarks


def _marking_ops(
  spec: BreedSpec,
  rng: np.random.Generator,
  face_ry: float,
  eye_x: float,
  eye_y: float,
  eye_r: float,
) -> List[_Op]:
  """The breed's marking pattern, kept inside the face outline."""
  color, kind = spec.mark_color, spec.marking

  def fill(points: np.ndarray, limit: float = 0.9) -> _Op:
    return _Op(_inside_face(points, face_ry, limit), color)

  if kind == "tabby":
    stripes = [
      ((-0.2, -0.72), (-0.13, -0.42)),
      ((0.0, -0.8), (0.0, -0.45)),
      ((0.2, -0.72), (0.13, -0.42)),
      ((-0.88, 0.08), (-0.62, 0.05)),
      ((-0.84, 0.24), (-0.6, 0.19)),
      ((0.88, 0.08), (0.62, 0.05)),
      ((0.84, 0.24), (0.6, 0.19)),
    ]
    return [_Op(_inside_face(np.array(s), face_ry, 0.85), color, width=0.07) for s in stripes]
  if kind == "mask":
    return [fill(_ellipse(0.0, 0.1, 0.68, 0.55))]
  if kind == "blaze":
    return [fill(np.array([(-0.07, -0.9), (0.07, -0.9), (0.17, 0.2), (-0.17, 0.2)]))]
  if kind == "spots":
    centres = rng.uniform((-0.7, -0.7), (0.7, 0.55), size=(6, 2))
    return [
      fill(_ellipse(x, y, r, r, 12), 0.88) for (x, y), r in zip(centres, rng.uniform(0.05, 0.09, 6))
    ]
  if kind in ("patch_left", "patch_right"):
    x = -eye_x if kind == "patch_left" else eye_x
    return [fill(_ellipse(x, eye_y, 0.3, 0.27))]
  if kind == "eyebrows":
    return [fill(_ellipse(x, eye_y - 2.0 * eye_r, 0.1, 0.065, 12)) for x in (-eye_x, eye_x)]
  if kind == "bib":
    return [fill(_ellipse(0.0, 0.5, 0.72, 0.4), 0.95)]
  if kind == "spectacles":
    return [fill(_ellipse(x, eye_y, 1.9 * eye_r, 1.8 * eye_r)) for x in (-eye_x, eye_x)]
  if kind == "cap":
    top = _ellipse(0.0, 0.0, 1.0, face_ry, 40)
    return [fill(top[top[:, 1] < -0.4 * face_ry], 0.97)]
  if kind == "split":
    half = _ellipse(0.0, 0.0, 1.0, face_ry, 40)
    return [fill(np.concatenate([half[half[:, 0] <= 0.0], [(0.0, -face_ry)]]), 0.97)]
  return []


def _eye_ops(
  spec: BreedSpec, rng: np.random.Generator, centres: np.ndarray, radius: float
) -> List[_Op]:
  iris = tuple(float(np.clip(c + rng.uniform(-5, 5), 0, 255)) for c in spec.eye_color)
  pupil_rx = 0.2 * radius if spec.species == "cat" else 0.4 * radius
  pupil_ry = 0.8 * radius if spec.species == "cat" else 0.4 * radius
  ops = []
  for x, y in centres:
    ops += [
      _Op(_ellipse(x, y, 1.2 * radius, 1.08 * radius), (30, 24, 24)),
      _Op(_ellipse(x, y, radius, 0.92 * radius), iris),
      _Op(_ellipse(x, y, pupil_rx, pupil_ry, 16), (12, 10, 10)),
      _Op(
        _ellipse(x - 0.35 * radius, y - 0.38 * radius, 0.14 * radius, 0.14 * radius, 8),
        (250, 250, 250),
      ),
    ]
  return ops


def _line_color(background: Sequence[float]) -> Tuple[float, ...]:
  """Mouth-line colour that stays visible: dark on light fur, pale pink on dark fur."""
  luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
  return (35.0, 28.0, 28.0) if luminance > 90 else (185.0, 120.0, 115.0)


def _cat_mouth(spec: BreedSpec, face_ry: float, coat) -> _Feature:
  """Whisker pads, nose, whiskers and mouth of a cat: (ops, silhouette, mouth centre)."""
  line = _line_color(coat if spec.muzzle_color is None else spec.muzzle_color)
  mouth = np.array([0.0, 0.35])
  ops = []
  if spec.muzzle_color is not None:
    pad = spec.muzzle_length * 0.4
    ops += [_Op(_ellipse(x, 0.31, pad, 0.7 * pad), spec.muzzle_color) for x in (-0.11, 0.11)]
  for sign in (-1.0, 1.0):
    for dy in (0.0, 0.06, 0.12):
      whisker = np.array([(sign * 0.24, 0.26 + dy), (sign * 0.85, 0.18 + 1.6 * dy)])
      ops.append(_Op(_inside_face(whisker, face_ry, 0.9), (235, 232, 225), width=0.015))
  ops += [
    _Op(np.array([(-0.1, 0.13), (0.1, 0.13), (0.0, 0.23)]), spec.nose_color),
    _Op(np.array([(0.0, 0.23), mouth]), line, width=0.035),
    _Op(_bezier(mouth, np.array([-0.07, 0.42]), np.array([-0.16, 0.35]), 5), line, width=0.035),
    _Op(_bezier(mouth, np.array([0.07, 0.42]), np.array([0.16, 0.35]), 5), line, width=0.035),
  ]
  return ops, np.zeros((0, 2)), mouth


def _dog_mouth(spec: BreedSpec, rng: np.random.Generator, coat) -> _Feature:
  """Muzzle, nose and mouth of a dog: (ops, silhouette, mouth centre)."""
  length = spec.muzzle_length * rng.uniform(0.92, 1.08)
  cy = 0.3 + length
  muzzle = _ellipse(0.0, cy, 0.44, length, 32)
  color = spec.muzzle_color if spec.muzzle_color is not None else _shade(coat, 1.1)
  nose_y = cy - 0.45 * length
  mouth = np.array([0.0, cy + 0.5 * length])
  line = _line_color(color)
  ops = [
    _Op(muzzle, color),
    _Op(muzzle, _shade(coat, 0.6), width=0.03, closed=True),
    _Op(_ellipse(0.0, nose_y, 0.16, 0.1, 16), spec.nose_color),
    _Op(_ellipse(-0.04, nose_y - 0.04, 0.06, 0.03, 8), (150.0, 150.0, 155.0)),  # wet shine
    _Op(np.array([(0.0, nose_y + 0.08), mouth]), line, width=0.035),
  ]
  for sign in (-1.0, 1.0):
    corner = np.array([sign * 0.24, cy + 0.3 * length])
    ops.append(
      _Op(_bezier(mouth, np.array([sign * 0.12, cy + 0.65 * length]), corner, 5), line, width=0.035)
    )
  return ops, muzzle, mouth


def _build_head(spec: BreedSpec, rng: np.random.Generator, coat) -> _Head:
  face_ry = spec.face_ry * rng.uniform(0.96, 1.04)
  eye_x = (0.40 if spec.species == "cat" else 0.37) * rng.uniform(0.95, 1.05)
  eye_y = (-0.05 if spec.species == "cat" else -0.12) + rng.uniform(-0.03, 0.03)
  eye_r = spec.eye_radius * 2.0 * eye_x
  eyes = np.array([(-eye_x, eye_y), (eye_x, eye_y)])
  behind, front, ear_silhouette, ear_points = _ears(spec, rng, face_ry, coat)
  face = _ellipse(0.0, 0.0, 1.0, face_ry, 48)
  if spec.species == "cat":
    mouth_ops, mouth_silhouette, mouth = _cat_mouth(spec, face_ry, coat)
  else:
    mouth_ops, mouth_silhouette, mouth = _dog_mouth(spec, rng, coat)
  ops = (
    behind
    + [_Op(face, coat), _Op(face, _shade(coat, 0.6), width=0.03, closed=True)]
    + _marking_ops(spec, rng, face_ry, eye_x, eye_y, eye_r)
    + mouth_ops
    + _eye_ops(spec, rng, eyes, eye_r)
    + front
  )
  landmarks = np.concatenate([eyes, mouth[None], ear_points])
  silhouette = np.concatenate([face, ear_silhouette, mouth_silhouette])
  return _Head(ops=ops, silhouette=silhouette, landmarks=landmarks)


# ----------------------------------------------------------------------------------------------
# Drawing.


def _fixed(points: np.ndarray) -> np.ndarray:
  return np.round(np.asarray(points) * _ONE).astype(np.int32)


def _draw_all(
  canvas: np.ndarray, ops: List[_Op], to_image: Callable[[np.ndarray], np.ndarray], scale: float
) -> None:
  """Draws ops in order after mapping all their points to image pixels in one go; stroke widths
  are in units of `scale` pixels."""
  lengths = [len(op.points) for op in ops]
  fixed = _fixed(to_image(np.concatenate([op.points for op in ops])))
  start = 0
  for op, length in zip(ops, lengths):
    pts = fixed[start : start + length]
    start += length
    if op.width == 0.0:
      cv2.fillPoly(canvas, [pts], op.color, cv2.LINE_AA, _SHIFT)
    else:
      thickness = max(1, int(round(op.width * scale)))
      cv2.polylines(canvas, [pts], op.closed, op.color, thickness, cv2.LINE_AA, _SHIFT)


# Clutter shapes take a centre in pixels, a colour, 7 uniform numbers in [0, 1) and the image side.
# Plain Python arithmetic here: these run ~20 times per image on tiny inputs.


def _px(value: float) -> int:
  return int(round(value * _ONE))


def _clutter_box(canvas, centre, color, p, side) -> None:
  """Rotated box (furniture, frames)."""
  half_w, half_h = (0.04 + 0.31 * p[0]) * side, (0.04 + 0.31 * p[1]) * side
  cos, sin = math.cos(math.pi * p[2]), math.sin(math.pi * p[2])
  corners = [
    (
      _px(centre[0] + sx * half_w * cos - sy * half_h * sin),
      _px(centre[1] + sx * half_w * sin + sy * half_h * cos),
    )
    for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))
  ]
  cv2.fillPoly(canvas, [np.array(corners, np.int32)], color, cv2.LINE_AA, _SHIFT)


def _clutter_disc(canvas, centre, color, p, side) -> None:
  """Round things; some in eye colours, as distractors away from the head."""
  if p[0] < 0.3:
    color = _EYE_PALETTE[int(p[1] * len(_EYE_PALETTE))]
  radius = (0.01 + 0.14 * p[2]) * side
  cv2.circle(canvas, (_px(centre[0]), _px(centre[1])), _px(radius), color, -1, cv2.LINE_AA, _SHIFT)


def _clutter_pole(canvas, centre, color, p, side) -> None:
  """Poles, cables."""
  end = (_px(centre[0] + (p[0] - 0.5) * 1.2 * side), _px(centre[1] + (p[1] - 0.5) * 1.2 * side))
  thickness = max(1, int((0.005 + 0.035 * p[2]) * side))
  cv2.line(canvas, (_px(centre[0]), _px(centre[1])), end, color, thickness, cv2.LINE_AA, _SHIFT)


def _clutter_stripes(canvas, centre, color, p, side) -> None:
  """Striped textile."""
  cos, sin = math.cos(2.0 * math.pi * p[0]), math.sin(2.0 * math.pi * p[0])
  gap, length = (0.02 + 0.04 * p[1]) * side, (0.1 + 0.3 * p[2]) * side
  lines = []
  for k in range(3 + int(5 * p[3])):
    x, y = centre[0] - k * gap * sin, centre[1] + k * gap * cos
    lines.append(
      np.array([(_px(x), _px(y)), (_px(x + length * cos), _px(y + length * sin))], np.int32)
    )
  cv2.polylines(canvas, lines, False, color, max(1, int(gap * 0.4)), cv2.LINE_AA, _SHIFT)


def _clutter_blob(canvas, centre, color, p, side) -> None:
  """Irregular blob (plants, cushions)."""
  blob = _unit_circle(7) * ((0.03 + 0.09 * np.asarray(p)) * side)[:, None] + centre
  cv2.fillPoly(canvas, [_fixed(blob)], color, cv2.LINE_AA, _SHIFT)


_EYE_PALETTE = tuple(tuple(float(c) for c in rgb) for rgb in EYE_COLORS.values())
_CLUTTER = (_clutter_box, _clutter_disc, _clutter_pole, _clutter_stripes, _clutter_blob)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Smooth colour field plus random clutter, slightly out of focus."""
  field = rng.integers(20, 236, size=(3, 3, 3), dtype=np.uint8)
  canvas = cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)
  count = int(rng.integers(10, 26))
  kinds = rng.integers(0, len(_CLUTTER), count).tolist()
  colors = rng.uniform(10, 245, (count, 3)).tolist()
  params = rng.random((count, 9)).tolist()
  side = max(height, width)
  for kind, color, p in zip(kinds, colors, params):
    centre = ((p[0] * 1.2 - 0.1) * width, (p[1] * 1.2 - 0.1) * height)
    _CLUTTER[kind](canvas, centre, tuple(color), p[2:], side)
  sigma = rng.uniform(0.0, 1.3)
  if sigma > 0.4:
    canvas = cv2.GaussianBlur(canvas, (5, 5), sigma)
  return canvas


def _body_ops(rng: np.random.Generator, centre: np.ndarray, scale: float, coat) -> List[_Op]:
  """Torso, neck, legs and tail in image pixels; upright whatever the head roll."""
  body = _shade(coat, rng.uniform(0.85, 1.0))
  outline = _shade(coat, 0.55)
  if rng.random() < 0.5:  # sitting: torso below the head, front legs down
    torso_c = centre + scale * np.array([rng.uniform(-0.4, 0.4), 2.0])
    rx, ry = scale * rng.uniform(1.1, 1.5), scale * rng.uniform(1.6, 2.2)
    legs = [
      np.stack([torso_c + scale * np.array([dx, 0.6]), torso_c + scale * np.array([dx, 2.6])])
      for dx in (-0.55, 0.55)
    ]
  else:  # lying: torso to one side, front legs forward
    side = 1.0 if rng.random() < 0.5 else -1.0
    torso_c = centre + scale * np.array([side * 1.7, 1.4])
    rx, ry = scale * rng.uniform(2.2, 3.0), scale * rng.uniform(0.9, 1.2)
    legs = [
      np.stack(
        [
          torso_c + scale * np.array([-side * 1.0, dy]),
          torso_c + scale * np.array([-side * 3.2, dy + 0.1]),
        ]
      )
      for dy in (0.5, 0.85)
    ]
  angle = math.radians(rng.uniform(-15, 15))
  torso = (
    _unit_circle(40)
    * (rx, ry)
    @ np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    + torso_c
  )
  tail_root = torso_c + np.array([rx * rng.choice([-0.9, 0.9]), ry * 0.5])
  tail = _bezier(
    tail_root,
    tail_root + scale * rng.uniform(-2.0, 2.0, 2),
    tail_root + scale * rng.uniform(-2.5, 2.5, 2),
    8,
  )
  ops = [
    _Op(tail, body, width=0.32),
    _Op(np.stack([centre, torso_c]), body, width=1.1),
    _Op(torso, body),
    _Op(torso, outline, width=0.03, closed=True),
  ]
  ops += [_Op(leg, body, width=0.42) for leg in legs]
  if rng.random() < 0.35:  # a pale chest patch, breed-independent
    ops.append(
      _Op(
        _unit_circle(20) * (rx * 0.45, ry * 0.35) + torso_c - (0.0, ry * 0.3), _shade(_WHITE, 0.97)
      )
    )
  return ops


def _relight(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
  """Uneven, slightly coloured illumination and sensor noise, all in 8-bit arithmetic (float
  images of this size cost more in allocation than in arithmetic)."""
  height, width = canvas.shape[:2]
  corners = rng.uniform(0.82, 1.15, (2, 2, 1)) * rng.uniform(0.8, 1.15) * rng.uniform(0.97, 1.03, 3)
  gain = cv2.resize(
    np.round(corners * _GAIN_ONE).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR
  )
  lit = cv2.multiply(canvas, gain.reshape(canvas.shape), scale=1.0 / _GAIN_ONE)
  # Uniform noise of 2**bits levels from raw random bytes: much cheaper than Gaussian draws.
  bits = int(rng.integers(0, 5))
  if bits:
    noise = np.frombuffer(rng.bytes(canvas.size), np.uint8).reshape(canvas.shape)
    noise = np.bitwise_and(noise, (1 << bits) - 1)
    lit = cv2.subtract(cv2.add(lit, noise), (float(1 << (bits - 1)),) * 3 + (0.0,))
  return lit


def _image_shape(rng: np.random.Generator, size: int, aspect_range: Tuple[float, float]):
  """(height, width): the longer side is `size`, width / height drawn log-uniformly."""
  low, high = aspect_range
  aspect = math.exp(rng.uniform(math.log(low), math.log(high))) if low != high else low
  if aspect >= 1.0:
    return max(MIN_SIZE // 2, int(round(size / aspect))), size
  return size, max(MIN_SIZE // 2, int(round(size * aspect)))


def _rotation(degrees: float) -> np.ndarray:
  a = math.radians(degrees)
  return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _place_head(rng: np.random.Generator, silhouette: np.ndarray, height: int, width: int):
  """Random roll, scale and position of the head: (roll degrees, rotation matrix, pixels per
  head unit, centre). The head box side is HEAD_FRACTION_RANGE of the shorter image side and
  the whole head stays at least one pixel inside the image."""
  roll = rng.uniform(-ROLL_LIMIT_DEGREES, ROLL_LIMIT_DEGREES)
  rotation = _rotation(roll)
  turned = silhouette @ rotation.T
  extent = turned.max(axis=0) - turned.min(axis=0)
  scale = rng.uniform(*HEAD_FRACTION_RANGE) * min(height, width) / extent.max()
  low = 1.0 - scale * turned.min(axis=0)
  high = np.array([width - 2.0, height - 2.0]) - scale * turned.max(axis=0)
  return roll, rotation, scale, rng.uniform(low, high)


def _check_image_args(size: int, aspect_range: Tuple[float, float]) -> None:
  if size < MIN_SIZE:
    raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
  low, high = aspect_range
  if not 0.25 <= low <= high <= 4.0:
    raise ValueError(f"aspect range must satisfy 0.25 <= low <= high <= 4, got {aspect_range}")


def render_pet(
  seed: int,
  index: int,
  breed_id: int,
  size: int = 128,
  num_breeds: int = 12,
  aspect_range: Tuple[float, float] = (1.0, 1.0),
) -> RenderedPet:
  """Renders image `index` of the dataset with `seed`, showing breed `breed_id` of
  `breed_table(num_breeds)`. The longer image side is `size`; width / height is drawn from
  `aspect_range` (default square)."""
  _check_image_args(size, aspect_range)
  table = breed_table(num_breeds)
  if not 0 <= breed_id < num_breeds:
    raise ValueError(f"breed_id must be in [0, {num_breeds}), got {breed_id}")
  spec = table[breed_id]
  rng = np.random.default_rng([_SEED_SALT, seed, index])
  height, width = _image_shape(rng, size, aspect_range)
  canvas = _background(rng, height, width)
  coat = tuple(
    float(np.clip(c + rng.uniform(-12, 12), 0, 255)) for c in _COATS[int(rng.integers(len(_COATS)))]
  )
  head = _build_head(spec, rng, coat)
  roll, rotation, scale, centre = _place_head(rng, head.silhouette, height, width)
  _draw_all(canvas, _body_ops(rng, centre, scale, coat), lambda pts: pts, scale)

  def to_image(points: np.ndarray) -> np.ndarray:
    return points @ rotation.T * scale + centre

  _draw_all(canvas, head.ops, to_image, scale)
  box_points = to_image(head.silhouette)
  box = np.concatenate([box_points.min(axis=0), box_points.max(axis=0)])
  return RenderedPet(
    image=_relight(rng, canvas),
    landmarks=to_image(head.landmarks).astype(np.float32),
    box=box.astype(np.float32),
    species=spec.species,
    class_name=spec.name,
    breed_id=breed_id,
    roll_degrees=float(roll),
  )


def render_pets(
  num_breeds: int = 12,
  images_per_breed: int = 10,
  size: int = 128,
  seed: int = 0,
  aspect_range: Tuple[float, float] = (1.0, 1.0),
) -> Iterator[RenderedPet]:
  """In-memory version of `write_dataset`: image i has breed i % num_breeds."""
  for index in range(num_breeds * images_per_breed):
    yield render_pet(seed, index, index % num_breeds, size, num_breeds, aspect_range)


# ----------------------------------------------------------------------------------------------
# Files.


def _number(value: float) -> str:
  """Python float text rounded to 1/1000 pixel, e.g. '37.523'."""
  return repr(round(float(value), 3))


def image_relpath(class_name: str, index: int) -> str:
  """Path of image `index` relative to the dataset folder."""
  return f"{class_name}/{class_name}_{index}.jpg"


def cat_sidecar_text(landmarks: np.ndarray) -> str:
  """Kaggle CAT sidecar line: `9 x1 y1 ... x9 y9`."""
  pts = np.asarray(landmarks).reshape(-1, 2)
  return " ".join([str(len(pts))] + [_number(v) for v in pts.reshape(-1)]) + "\n"


def _write_one(
  out_dir: str, seed: int, index: int, num_breeds: int, size: int, aspect_range: Tuple[float, float]
) -> List[str]:
  pet = render_pet(seed, index, index % num_breeds, size, num_breeds, aspect_range)
  relpath = image_relpath(pet.class_name, index)
  path = os.path.join(out_dir, relpath)
  with open(path, "wb") as f:
    f.write(decode.encode_jpeg(pet.image))
  with open(path + ".cat", "w", encoding="ascii") as f:
    f.write(cat_sidecar_text(pet.landmarks))
  return (
    [relpath, pet.class_name, pet.species, ""]
    + [_number(v) for v in pet.box]
    + [_number(v) for v in pet.landmarks.reshape(-1)]
  )


def _write_chunk(args) -> List[List[str]]:
  out_dir, seed, indices, num_breeds, size, aspect_range = args
  return [_write_one(out_dir, seed, i, num_breeds, size, aspect_range) for i in indices]


def _init_worker() -> None:
  cv2.setNumThreads(1)  # one process per core already; extra OpenCV threads only contend


def write_dataset(
  out_dir: str,
  num_breeds: int = 12,
  images_per_breed: int = 50,
  size: int = 128,
  seed: int = 0,
  workers: int = 1,
  progress: Optional[Callable[[int, int], None]] = None,
  aspect_range: Tuple[float, float] = (1.0, 1.0),
) -> str:
  """Renders the dataset as JPEG class folders with `.jpg.cat` sidecars and `pets.csv`.

  Args:
    out_dir: output folder (created; existing files with the same names are overwritten).
    num_breeds: 1..37 breeds from `breed_table`.
    images_per_breed: images per breed; the dataset has num_breeds * images_per_breed images.
    size: longer image side in pixels.
    seed: dataset seed; the same arguments always give byte-identical files.
    workers: processes used for rendering (the output does not depend on it).
    progress: optional callback(done, total) called after each chunk of images.
    aspect_range: (low, high) range of width / height; default square.

  Returns:
    The path of pets.csv, written last (atomically) so that its presence marks a complete run.
  """
  classes = breed_table(num_breeds)
  if images_per_breed < 1:
    raise ValueError(f"images_per_breed must be at least 1, got {images_per_breed}")
  if workers < 1:
    raise ValueError(f"workers must be at least 1, got {workers}")
  _check_image_args(size, aspect_range)
  for breed in classes:
    os.makedirs(os.path.join(out_dir, breed.name), exist_ok=True)
  total = num_breeds * images_per_breed
  chunk = 64
  jobs = [
    (out_dir, seed, range(start, min(total, start + chunk)), num_breeds, size, tuple(aspect_range))
    for start in range(0, total, chunk)
  ]
  rows: List[List[str]] = []
  logging.info(
    "Rendering %d synthetic pets (%d breeds, %d px, seed %d) into %s",
    total,
    num_breeds,
    size,
    seed,
    out_dir,
  )
  if workers == 1:
    _collect(map(_write_chunk, jobs), rows, total, progress)
  else:
    # Spawned, not forked: the parent may hold TensorFlow or OpenCV threads.
    with futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
    ) as pool:
      _collect(pool.map(_write_chunk, jobs), rows, total, progress)
  return _write_csv(out_dir, rows)


def _collect(
  results, rows: List[List[str]], total: int, progress: Optional[Callable[[int, int], None]]
) -> None:
  next_log = _LOG_EVERY
  for chunk_rows in results:
    rows.extend(chunk_rows)
    if len(rows) >= next_log or len(rows) == total:
      logging.info("Synthetic pets: %d / %d images written", len(rows), total)
      next_log = (len(rows) // _LOG_EVERY + 1) * _LOG_EVERY
    if progress is not None:
      progress(len(rows), total)


def _write_csv(out_dir: str, rows: List[List[str]]) -> str:
  csv_path = os.path.join(out_dir, CSV_NAME)
  partial = csv_path + ".partial"
  with open(partial, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(rows)
  os.replace(partial, csv_path)
  return csv_path
