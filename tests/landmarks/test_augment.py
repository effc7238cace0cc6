"""Augmentations move landmarks and boxes exactly as they move pixels; the flip relabels left and
right correctly."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tfpets.landmarks import augment, geometry

HEIGHT, WIDTH = 84, 100
POINTS = np.array(
  [
    [40.3, 38.6],
    [58.7, 40.2],
    [49.5, 52.8],
    [34.1, 30.2],
    [36.4, 22.7],
    [42.9, 29.1],
    [55.2, 30.4],
    [62.8, 23.5],
    [64.6, 31.7],
  ],
  np.float32,
)
BOX = np.array([31.0, 20.0, 67.0, 57.0], np.float32)
SIGMA = 1.6


def _example(image, has_box=True):
  return {
    "image": tf.constant(image),
    "box": tf.constant(BOX),
    "has_box": tf.constant(has_box),
    "landmarks": tf.constant(POINTS),
    "num_landmarks": tf.constant(9),
  }


def _blob(point):
  """One smooth blob centred on point (centre coordinates), as uint8 RGB."""
  yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
  blob = 255 * np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * SIGMA**2))
  return np.repeat(np.rint(blob).astype(np.uint8)[..., None], 3, -1)


def _centroid(frame):
  weight = np.asarray(frame, np.float64)[..., 0]
  weight = np.where(weight > 8, weight, 0)  # ignore interpolation dust far from the blob
  yy, xx = np.mgrid[0 : weight.shape[0], 0 : weight.shape[1]]
  return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


def _locate_each(make_frame, seed):
  """Transforms one image per point with the same seed (hence the same random transform) and
  finds each blob again."""
  located, outputs = [], None
  for point in POINTS:
    frame, *rest = make_frame(_example(_blob(point)), tf.constant(seed, tf.int64))
    located.append(_centroid(frame.numpy()))
    outputs = [r.numpy() for r in rest]
  return np.array(located), outputs


@pytest.mark.parametrize("seed", [[0, 1], [0, 2], [7, 3]])
def test_rotation_crop_and_flip_move_landmarks_with_the_pixels(seed):
  options = augment.AugmentOptions(
    flip_horizontal=True, rotate_n=40.0, roi_margin=0.3, roi_jitter=0.15
  )
  make = lambda ex, s: augment.landmarks_frame(ex, s, 96, 9, options)
  located, (points, _) = _locate_each(make, seed)
  straight = np.abs(located - points).max()
  # With a flip, output point j is the mirror image of input point FLIP_PERMUTATION[j].
  swapped = np.abs(located[list(augment.FLIP_PERMUTATION[9])] - points).max()
  assert min(straight, swapped) < 0.1, (straight, swapped)


def test_flip_happens_about_half_the_time():
  options = augment.AugmentOptions(flip_horizontal=True)
  flips = 0
  for i in range(40):
    example = _example(_blob(POINTS[0]))
    plain = augment.landmarks_frame(
      example, tf.constant([1, i], tf.int64), 64, 9, augment.AugmentOptions()
    )
    maybe = augment.landmarks_frame(example, tf.constant([1, i], tf.int64), 64, 9, options)
    if not np.allclose(plain[0].numpy(), maybe[0].numpy()):
      # Same seed, same ROI: a flipped frame is the mirror image, with relabelled mirrored points.
      np.testing.assert_allclose(maybe[0].numpy(), plain[0].numpy()[:, ::-1], atol=1e-3)
      mirrored = np.stack([63.0 - plain[1].numpy()[:, 0], plain[1].numpy()[:, 1]], -1)
      np.testing.assert_allclose(
        maybe[1].numpy(), mirrored[list(augment.FLIP_PERMUTATION[9])], atol=1e-4
      )
      flips += 1
  assert 10 <= flips <= 30


def test_balanced_crop_and_negatives_move_the_box_with_the_pixels():
  """Stage 1: a bright head box drawn in the image lands where the returned box says."""
  image = np.zeros((2 * HEIGHT, 2 * WIDTH, 3), np.uint8)  # room for crops that miss the head
  x0, y0, x1, y1 = BOX.astype(int)
  image[y0 : y1 + 1, x0 : x1 + 1] = 255
  options = augment.AugmentOptions(
    flip_horizontal=True, crop_scale_balanced=True, head_negative_fraction=0.5
  )
  heads = 0
  for i in range(12):
    frame, box, _, is_head, _ = augment.bbox_frame(
      _example(image), tf.constant([3, i], tf.int64), 64, 9, options
    )
    bright = np.argwhere(frame.numpy()[..., 0] > 127.5)
    if float(is_head) == 0.0:
      assert bright.size == 0  # a negative frame misses the head entirely
      continue
    heads += 1
    drawn = [bright[:, 1].min(), bright[:, 0].min(), bright[:, 1].max(), bright[:, 0].max()]
    np.testing.assert_allclose(box.numpy(), drawn, atol=1.0)
  assert 2 <= heads <= 10


def test_rotated_box_is_the_box_of_the_rotated_inscribed_ellipse():
  matrix, _, _ = geometry.rotation_expand(30.0, WIDTH, HEIGHT)
  box = geometry.transform_box(matrix, BOX).numpy()
  a, b = (BOX[2] - BOX[0]) / 2, (BOX[3] - BOX[1]) / 2
  t = np.linspace(0, 2 * np.pi, 3601)
  ellipse = np.stack(
    [(BOX[0] + BOX[2]) / 2 + a * np.cos(t), (BOX[1] + BOX[3]) / 2 + b * np.sin(t)], -1
  )
  moved = geometry.transform_points(matrix, ellipse).numpy()
  np.testing.assert_allclose(box, np.concatenate([moved.min(0), moved.max(0)]), atol=1e-2)


def test_rotation_matches_pil_convention():
  """A point right of centre goes up (counter-clockwise on screen) and the canvas grows."""
  matrix, width, height = geometry.rotation_expand(90.0, WIDTH, HEIGHT)
  assert (float(width), float(height)) == pytest.approx((HEIGHT, WIDTH), abs=1e-3)
  right_of_centre = np.array([[WIDTH / 2 - 0.5 + 10, HEIGHT / 2 - 0.5]], np.float32)
  moved = geometry.transform_points(matrix, right_of_centre).numpy()[0]
  np.testing.assert_allclose(moved, [HEIGHT / 2 - 0.5, WIDTH / 2 - 0.5 - 10], atol=1e-3)


def _upright_face():
  """Named 9-point layout of an upright face, following the records' documented order."""
  return np.array(
    [
      [30, 50],
      [70, 50],
      [50, 70],  # left eye, right eye, mouth
      [20, 30],
      [25, 5],
      [40, 25],  # left ear: outer base, tip, inner base
      [60, 25],
      [75, 5],
      [80, 30],
    ],  # right ear: inner base, tip, outer base
    np.float32,
  )


def _conventions_hold(points):
  x = points[:, 0]
  return bool(x[0] < x[1] and x[3] < x[4] < x[5] < x[6] < x[7] < x[8])


@pytest.mark.parametrize("num_points", [9, 5])
def test_flip_permutation_restores_left_and_right(num_points):
  face = _upright_face()
  if num_points == 5:
    face = face[list(augment.FIVE_OF_NINE)]
  mirrored = np.stack([99.0 - face[:, 0], face[:, 1]], -1)
  relabelled = mirrored[list(augment.flip_permutation(num_points))]
  if num_points == 9:
    assert not _conventions_hold(mirrored) and _conventions_hold(relabelled)
  x = relabelled[:, 0]
  left_eye, right_eye, left_tip, right_tip = (0, 1, 4, 7) if num_points == 9 else (0, 1, 3, 4)
  assert x[left_eye] < x[right_eye] and x[left_tip] < x[right_tip]
  np.testing.assert_allclose(relabelled[2], mirrored[2])  # the mouth keeps its index


def test_select_points_takes_five_of_nine_and_rejects_too_few():
  padded = tf.constant(POINTS)
  five, ok = augment.select_points(padded, tf.constant(9), 5)
  np.testing.assert_array_equal(five.numpy(), POINTS[[0, 1, 2, 4, 7]])
  assert bool(ok)
  _, ok = augment.select_points(padded, tf.constant(5), 9)
  assert not bool(ok)
