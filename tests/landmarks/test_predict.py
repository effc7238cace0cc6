"""The two-stage detector returns original-image coordinates (letterbox and ROI crop undone), for
images of any size, EXIF orientation, grayscale or RGBA, and writes one annotated image and one
JSON record per input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfpets.data import decode
from tfpets.landmarks import augment, predict
from tfpets.landmarks import model as model_lib

from .handmade import draw_head, handmade_models

CONFIG = model_lib.DetectorConfig(image_size=64, roi_size=64, num_landmarks=9, roi_margin=0.15)


@pytest.fixture(scope="module")
def detector():
  return predict.Detector.from_models(CONFIG, *handmade_models(CONFIG))


# (height, width, head bounds, blob centres): wide, tall and larger-than-frame / smaller-than-frame.
CASES = [
  (90, 150, (88, 20, 127, 59), [[100.3, 31.6], [115.8, 44.2], [104.5, 52.0]]),
  (160, 70, (10, 95, 49, 134), [[20.7, 104.1], [38.2, 110.9], [29.0, 126.4]]),
  (48, 40, (12, 10, 31, 29), [[17.2, 15.5], [26.6, 17.9], [21.4, 24.8]]),
]


@pytest.mark.parametrize("height,width,head,blobs", CASES)
def test_detection_is_in_original_pixels(detector, height, width, head, blobs):
  blobs = np.array(blobs, np.float32)
  found = detector.detect(draw_head(height, width, head, blobs))
  # Centroids survive resampling; only the letterbox/ROI maps decide where they land.
  np.testing.assert_allclose(found.landmarks[:3], blobs, atol=0.3)
  np.testing.assert_allclose(found.landmarks[3:6], blobs, atol=0.3)
  # A thresholded edge moves by at most about one frame pixel.
  np.testing.assert_allclose(found.box, head, atol=1.2)
  # The ROI is the stage-1 box grown by roi_margin of its longer side, squared about its centre.
  x0, y0, x1, y1 = found.stage1_box
  side = max(x1 - x0, y1 - y0) * (1 + 2 * CONFIG.roi_margin)
  cx, cy = (x0 + x1) / 2 + 0.5, (y0 + y1) / 2 + 0.5
  np.testing.assert_allclose(
    found.roi, [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], atol=1e-3
  )
  assert found.head_found and found.head_score > 0.99


def test_cascade_with_a_wide_first_roi_keeps_original_pixels():
  config = model_lib.DetectorConfig(
    image_size=64, roi_size=64, roi_margin=0.2, roi_passes=3, roi_first_margin=0.8
  )
  cascade = predict.Detector.from_models(config, *handmade_models(config))
  height, width, head, blobs = CASES[0]
  found = cascade.detect(draw_head(height, width, head, np.array(blobs, np.float32)))
  np.testing.assert_allclose(found.landmarks[:3], blobs, atol=0.3)
  np.testing.assert_allclose(found.box, head, atol=1.2)
  # The reported ROI is the last pass's: margin 0.2 around a box close to the head.
  side = found.roi[2] - found.roi[0]
  assert side == pytest.approx((head[2] - head[0]) * 1.4, abs=2.0)


def test_mixed_sizes_in_one_call_match_single_calls(detector):
  images = [draw_head(h, w, head, np.array(b, np.float32)) for h, w, head, b in CASES]
  together = detector.detect_many(images + images[:1])
  for image, det in zip(images + images[:1], together):
    np.testing.assert_allclose(det.landmarks, detector.detect(image).landmarks, atol=1e-4)


def test_low_head_score_means_no_head():
  bbox, landmarks = handmade_models(CONFIG, head_logit=-3.0)
  det = predict.Detector.from_models(CONFIG, bbox, landmarks).detect(
    draw_head(90, 150, *CASES[0][2:3], np.array(CASES[0][3], np.float32))
  )
  assert not det.head_found and det.head_score == pytest.approx(1 / (1 + np.exp(3)), rel=1e-4)


def _write_inputs(folder):
  """A JPEG stored rotated with EXIF orientation 6, a grayscale PNG, an RGBA PNG, a broken file."""
  folder.mkdir()
  head, blobs = (60, 30, 99, 69), np.array([[70.4, 41.2], [88.9, 47.5], [79.0, 60.6]], np.float32)
  shown = draw_head(120, 160, head, blobs)
  exif = Image.Exif()
  exif[0x0112] = 6  # stored turned 90 degrees counter-clockwise: viewers turn it back clockwise
  Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90).save(
    folder / "rotated.jpg", quality=100, subsampling=0, exif=exif
  )
  Image.fromarray(shown).convert("L").save(folder / "gray.png")
  rgba = np.concatenate([shown, np.full(shown.shape[:2] + (1,), 200, np.uint8)], -1)
  Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  return head, blobs, shown


def test_predict_files_writes_annotated_image_and_json(detector, tmp_path):
  head, blobs, shown = _write_inputs(tmp_path / "in")
  paths = predict.list_images(str(tmp_path / "in"))
  assert [p.rsplit("/", 1)[-1] for p in paths] == [
    "alpha.png",
    "broken.jpg",
    "gray.png",
    "rotated.jpg",
  ]
  results = {
    r["path"].rsplit("/", 1)[-1]: r
    for r in predict.predict_files(detector, paths, tmp_path / "images", tmp_path / "json")
  }

  assert "broken.jpg" in results and "error" in results["broken.jpg"]
  for name in ("rotated.jpg", "gray.png", "alpha.png"):
    record = json.loads((tmp_path / "json" / f"{name.split('.')[0]}.json").read_text())
    assert (record["width"], record["height"]) == (160, 120)  # the oriented image
    np.testing.assert_allclose(record["box"], head, atol=1.5)
    picture = decode.read_image(record["annotated_image"])
    assert (picture.width, picture.height) == (160, 120)
    assert list(record["landmarks"]) == list(CONFIG.point_names)
  assert any("EXIF orientation 6" in n for n in results["rotated.jpg"]["decoder_notes"])
  for name in ("rotated.jpg", "alpha.png"):  # colour survives; grayscale has no colour blobs
    points = np.array(list(results[name]["landmarks"].values())[:3])
    np.testing.assert_allclose(points, blobs, atol=0.5)


def test_list_images_accepts_glob_and_rejects_nothing_found(tmp_path):
  _write_inputs(tmp_path / "in")
  assert len(predict.list_images(str(tmp_path / "in" / "*.png"))) == 2
  with pytest.raises(ValueError, match=r"^images='.*\*\.bmp': no image files there$"):
    predict.list_images(str(tmp_path / "in" / "*.bmp"))
  with pytest.raises(
    ValueError, match="^images='': must name an image file, a folder or a glob pattern$"
  ):
    predict.list_images("")
  with pytest.raises(ValueError, match=r"^directory='.*': no trained detector there"):
    predict.Detector.from_directory(tmp_path)


def test_flip_averaging_maps_the_mirror_back_and_cancels_a_horizontal_bias():
  """A stage that sees a bright square, answers with its box and points at fixed left/right
  offsets from its centre, and adds 1 px to every x. On the mirror image that bias points the
  other way, so the average is exact; a wrong point swap or a mirror formula off by a pixel
  (x -> size - x) would show."""
  config = model_lib.DetectorConfig(image_size=64, roi_size=64, num_landmarks=9)
  # Mirror pairs (0, 1), (3, 8), (4, 7), (5, 6) get opposite offsets; point 2 maps to itself.
  offsets = np.array([-3, 3, 0, -5, -2, -1, 1, 2, 5], np.float32)
  assert np.allclose(offsets[list(augment.flip_permutation(9))], -offsets)

  def biased_stage(frames):
    mask = tf.cast(tf.reduce_max(frames, axis=-1) > 128, tf.float32)

    def extent(profile):  # first and last bright index of each frame
      first = tf.argmax(profile, axis=-1)
      last = profile.shape[-1] - 1 - tf.argmax(profile[:, ::-1], axis=-1)
      return tf.cast(first, tf.float32), tf.cast(last, tf.float32)

    x0, x1 = extent(tf.reduce_max(mask, axis=1))
    y0, y1 = extent(tf.reduce_max(mask, axis=2))
    box = tf.stack([x0 + 1, y0, x1 + 1, y1], -1)
    xs = (x0 + x1)[:, None] / 2 + 1 + offsets
    ys = tf.tile((y0 + y1)[:, None] / 2, [1, 9])
    return {"box": box, "landmarks": tf.stack([xs, ys], -1)}

  frame = np.zeros((1, 64, 64, 3), np.float32)
  frame[:, 20:31, 9:24] = 255.0  # x 9..23, y 20..30: well off the frame's centre
  out = predict.flip_averaged(biased_stage, config)(tf.constant(frame))
  np.testing.assert_allclose(out["box"].numpy()[0], [9, 20, 23, 30], atol=1e-5)
  want = np.stack([16 + offsets, np.full(9, 25.0)], -1)
  np.testing.assert_allclose(out["landmarks"].numpy()[0], want, atol=1e-5)


def test_flip_averaged_detector_keeps_original_pixels():
  """With --roi_flip the whole pipeline still lands on the drawn head (the hand-made stage is
  mirror-symmetric in its box)."""
  config = model_lib.DetectorConfig(image_size=64, roi_size=64, roi_margin=0.15, roi_flip=True)
  flipped = predict.Detector.from_models(config, *handmade_models(config))
  height, width, head, blobs = CASES[0]
  found = flipped.detect(draw_head(height, width, head, np.array(blobs, np.float32)))
  np.testing.assert_allclose(found.box, head, atol=1.2)
