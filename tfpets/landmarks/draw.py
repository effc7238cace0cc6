"""Drawing detections on images: annotated predictions and predicted-versus-true overlays."""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

PREDICTED = (255, 220, 0)  # yellow
TRUE = (230, 30, 30)  # red
ROI = (90, 160, 255)  # light blue
NO_HEAD = (255, 0, 255)


def _scale(image: np.ndarray) -> int:
  return max(1, int(round(max(image.shape[:2]) / 256)))


def draw_box(
  image: np.ndarray, box: Sequence[float], color, thickness: Optional[int] = None
) -> None:
  x0, y0, x1, y1 = [int(round(v)) for v in box]
  cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness or _scale(image), cv2.LINE_AA)


def draw_points(image: np.ndarray, points: np.ndarray, color, labels: bool = False) -> None:
  radius = max(1, _scale(image) + 1)
  for k, (x, y) in enumerate(np.asarray(points, np.float32)):
    centre = (int(round(x)), int(round(y)))
    cv2.circle(image, centre, radius, color, -1, cv2.LINE_AA)
    if labels:
      cv2.putText(
        image,
        str(k),
        (centre[0] + radius + 1, centre[1]),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.3 * _scale(image),
        color,
        1,
        cv2.LINE_AA,
      )


def overlay(
  image,
  predicted_points=None,
  predicted_box=None,
  true_points=None,
  true_box=None,
  roi=None,
  labels: bool = False,
  zoom: int = 1,
) -> np.ndarray:
  """A uint8 copy of image with the truth in red under the prediction in yellow.

  `zoom` enlarges the image by an integer factor (nearest neighbour) first, so that small model
  frames stay readable; coordinates are given in the original image either way.
  """
  canvas = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
  if zoom > 1:
    canvas = np.repeat(np.repeat(canvas, zoom, axis=0), zoom, axis=1)
  canvas = np.ascontiguousarray(canvas)

  def z(values):
    # Centre coordinates: pixel j becomes pixels j*zoom .. j*zoom + zoom - 1.
    return None if values is None else (np.asarray(values, np.float32) + 0.5) * zoom - 0.5

  if roi is not None:
    draw_box(canvas, z(roi), ROI, 1)
  if true_box is not None:
    draw_box(canvas, z(true_box), TRUE)
  if true_points is not None:
    draw_points(canvas, z(true_points), TRUE)
  if predicted_box is not None:
    draw_box(canvas, z(predicted_box), PREDICTED)
  if predicted_points is not None:
    draw_points(canvas, z(predicted_points), PREDICTED, labels)
  return canvas
