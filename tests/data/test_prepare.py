from __future__ import annotations

import numpy as np
import pytest

from tfpets.data import prepare, rejects
from tfpets.data.records import ImageRecord


def test_points_slightly_outside_are_kept_far_outside_dropped():
  near = ImageRecord("a.jpg", 0, "c", landmarks=[[-5, 10], [50, 20]] + [[10, 10]] * 7)
  assert prepare.check_annotations(near, height=100, width=100) == []
  assert near.landmarks is not None
  far = ImageRecord("b.jpg", 0, "c", landmarks=[[10, 10]] * 4 + [[400, 10]] + [[10, 10]] * 4)
  issues = prepare.check_annotations(far, height=100, width=100)
  assert far.landmarks is None
  assert issues == [
    (
      "landmark 4 at (400.0, 10.0) lies outside the 100x100 image; landmarks dropped",
      rejects.ANNOTATION_DROPPED,
    )
  ]


def test_wrong_landmark_count_is_dropped_with_reason():
  record = ImageRecord("c.jpg", 0, "c", landmarks=np.zeros((7, 2)))
  ((reason, action),) = prepare.check_annotations(record, 10, 10)
  assert "7 landmarks, expected 9 or 5" in reason and action == rejects.ANNOTATION_DROPPED


def test_boxes_are_clipped_or_dropped():
  over = ImageRecord("d.jpg", 0, "c", box=[-4, 5, 120, 60])
  ((reason, action),) = prepare.check_annotations(over, height=80, width=100)
  np.testing.assert_array_equal(over.box, [0, 5, 100, 60])
  assert action == rejects.CONVERTED and "clipped" in reason
  outside = ImageRecord("e.jpg", 0, "c", box=[200, 5, 220, 60])
  prepare.check_annotations(outside, 80, 100)
  assert outside.box is None
  flipped = ImageRecord("f.jpg", 0, "c", box=[30, 5, 10, 60])
  ((reason, _),) = prepare.check_annotations(flipped, 80, 100)
  assert flipped.box is None and "degenerate" in reason


@pytest.mark.parametrize(
  "policy, expected",
  [
    ("center", (20, 0, 60)),  # 100x60 image: centred 60-square
    ("pad", (0, -20, 100)),  # padded to 100, image centred vertically
  ],
)
def test_square_windows(policy, expected):
  assert prepare.square_window(60, 100, policy) == expected


def test_head_window_is_centred_on_the_head_and_shifted_into_the_frame():
  # Head 20x10 at (40..60, 20..30): side = 20 * 1.4 = 28, centred at (50, 25).
  assert prepare.square_window(60, 100, "head", np.array([40, 20, 60, 30]), 0.2) == (36, 11, 28)
  # A head at the left edge: the window is moved right to stay inside the image.
  assert prepare.square_window(60, 100, "head", np.array([0, 20, 20, 30]), 0.2) == (0, 11, 28)


def test_cut_square_pads_outside_with_black():
  pixels = np.full((4, 6, 3), 200, np.uint8)
  out = prepare.cut_square(pixels, left=-1, top=2, side=4)
  assert out.shape == (4, 4, 3)
  np.testing.assert_array_equal(out[:2, 1:], 200)  # rows 2-3, cols 0-2 of the image
  np.testing.assert_array_equal(out[:, 0], 0)  # column -1 is outside
  np.testing.assert_array_equal(out[2:], 0)  # rows 4-5 are outside
