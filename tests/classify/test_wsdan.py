"""WS-DAN (both variants) against numpy references written here from the two sources' rules."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpets.classify import wsdan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_SIZE = 75  # Inception-V3's minimum input
CARS_SIZE = 64
IMAGENET_MEAN_255 = np.array([0.485, 0.456, 0.406]) * 255


def _config(variant, **kwargs):
  size = PAPER_SIZE if variant == "paper" else CARS_SIZE
  values = dict(variant=variant, num_classes=3, image_size=size, num_maps=4)
  values.update(kwargs)
  return wsdan.WSDANConfig(**values)


@pytest.fixture(scope="module")
def paper_model():
  return wsdan.build_wsdan(_config("paper"))


@pytest.fixture(scope="module")
def cars_model():
  return wsdan.build_wsdan(_config("cars"))


def _images(size, batch=4, seed=0):
  return np.random.RandomState(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def tiny_extractor(variant, size, source_channels=6):
  """A two-conv stand-in for the backbone: XLA and distribution checks compile in seconds."""
  images = keras.Input((size, size, 3))
  x = keras.layers.Rescaling(1 / 127.5, offset=-1)(images)
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
  x = keras.layers.BatchNormalization()(x)
  features = keras.layers.ReLU()(x)
  if variant == "cars":
    return keras.Model(images, features, name="tiny")
  a = keras.layers.Conv2D(source_channels, 1, use_bias=False)(features)
  source = keras.layers.ReLU()(keras.layers.BatchNormalization(scale=False)(a))
  return keras.Model(images, [features, source], name="tiny")


# numpy references ------------------------------------------------------------------------------


def np_bap(features, maps, signed_sqrt_l2):
  b, h, w, c = features.shape
  phi = np.einsum("bhwc,bhwm->bmc", features.astype(np.float64), maps.astype(np.float64)) / (h * w)
  if signed_sqrt_l2:
    phi = np.sign(phi) * np.sqrt(np.abs(phi) + 1e-12)
    phi = phi / np.sqrt((phi**2).sum(axis=(1, 2), keepdims=True))
  return phi


def np_box(map2d, threshold, padding, variant):
  """Boxes as the official numpy code (`np.where`) and GrabAI torch code (`nonzero`) draw them."""
  h, w = map2d.shape
  if variant == "paper":
    if map2d.max() <= 0:
      return np.array([0, 0, 1, 1.0])
    rows, cols = np.where(map2d >= map2d.max() * threshold)
    return np.array(
      [
        rows.min() / h - padding,
        cols.min() / w - padding,
        rows.max() / h + padding,
        cols.max() / w + padding,
      ]
    )
  rows, cols = np.nonzero(map2d > threshold)
  if rows.size == 0:
    return np.array([0, 0, 1, 1.0])
  rmin, rmax, cmin, cmax = rows.min(), rows.max(), cols.min(), cols.max()
  return np.array(
    [rmin / (h - 1), cmin / (w - 1), max(rmax - 1, rmin) / (h - 1), max(cmax - 1, cmin) / (w - 1)]
  )


def np_resize_align_corners(image, out_h, out_w):
  """PyTorch `upsample_bilinear` (align_corners=True) of an [h, w, c] array."""
  h, w = image.shape[:2]
  ys = np.arange(out_h) * ((h - 1) / (out_h - 1) if out_h > 1 else 0)
  xs = np.arange(out_w) * ((w - 1) / (out_w - 1) if out_w > 1 else 0)
  return np_bilinear_at(image, ys, xs)


def np_resize_legacy(image, out_h, out_w):
  """TF1 `resize_bilinear` (align_corners=False, half_pixel_centers=False) of an [h, w, c] array."""
  h, w = image.shape[:2]
  return np_bilinear_at(image, np.arange(out_h) * h / out_h, np.arange(out_w) * w / out_w)


def np_bilinear_at(image, ys, xs):
  """Bilinear samples of an [h, w, c] array at source rows `ys` and columns `xs` (edge-clamped)."""
  h, w = image.shape[:2]
  y0 = np.floor(ys).astype(int)
  x0 = np.floor(xs).astype(int)
  y1 = np.minimum(y0 + 1, h - 1)
  x1 = np.minimum(x0 + 1, w - 1)
  ly = (ys - y0)[:, None, None]
  lx = (xs - x0)[None, :, None]
  top = image[y0][:, x0] * (1 - lx) + image[y0][:, x1] * lx
  bottom = image[y1][:, x0] * (1 - lx) + image[y1][:, x1] * lx
  return top * (1 - ly) + bottom * ly


def np_softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


# pure functions --------------------------------------------------------------------------------


@pytest.mark.parametrize("signed_sqrt_l2", [True, False])
def test_bilinear_attention_pooling_matches_numpy(signed_sqrt_l2):
  rng = np.random.RandomState(1)
  features = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  maps = rng.uniform(size=(2, 3, 4, 6)).astype(np.float32)
  got = wsdan.bilinear_attention_pooling(features, maps, signed_sqrt_l2=signed_sqrt_l2)
  assert got.dtype == tf.float32 and got.shape == (2, 6, 5)
  np.testing.assert_allclose(got, np_bap(features, maps, signed_sqrt_l2), rtol=1e-5, atol=1e-6)
  # float16 inputs (mixed precision) still pool in float32.
  half = wsdan.bilinear_attention_pooling(
    tf.cast(features, tf.float16), tf.cast(maps, tf.float16), signed_sqrt_l2=signed_sqrt_l2
  )
  assert half.dtype == tf.float32


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_centre_loss_and_update_accumulate_duplicate_labels(variant):
  rng = np.random.RandomState(2)
  num_classes, maps, channels = 4, 3, 5
  features = rng.normal(size=(5, maps, channels)).astype(np.float32)
  labels = np.array([1, 3, 1, 0, 1])
  if variant == "paper":
    centres = rng.normal(size=(num_classes, maps * channels)).astype(np.float32)
    centres[2] = 0  # a zero centre normalises to zero
  else:
    centres = rng.normal(size=(num_classes, maps, channels)).astype(np.float32)
  rate = 0.05 if variant == "paper" else 1e-4

  expected = centres.astype(np.float64).copy()
  if variant == "paper":
    f = features.reshape(5, -1).astype(np.float64)
    c = centres[labels].astype(np.float64)
    norms = np.sqrt((c**2).sum(-1, keepdims=True))
    c_b = np.where(norms > 0, c / np.maximum(norms, 1e-12), 0)
    loss = ((f - c_b) ** 2).sum(-1).mean()
    for i, y in enumerate(labels):  # tf.scatter_sub: every duplicate applies
      expected[y] -= rate * (c_b[i] - f[i])
  else:
    f = features.astype(np.float64)
    c_b = centres[labels].astype(np.float64)
    loss = ((f - c_b) ** 2).mean()
    for i, y in enumerate(labels):
      expected[y] += rate * (f[i] - c_b[i])

  got_loss, delta = wsdan.centre_loss_and_update(
    features, labels, centres, variant=variant, rate=rate
  )
  np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
  np.testing.assert_allclose(centres + delta.numpy(), expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(delta.numpy()[2], 0)  # class 2 is not in the batch


def test_attention_boxes_paper_hand_computed():
  h = w = 10
  block = np.zeros((h, w), np.float32)
  block[2:6, 3:8] = 1.0  # rows 2..5, cols 3..7
  block[8, 0] = 0.3  # below the threshold 0.5
  negative = -np.ones((h, w), np.float32)
  empty = np.zeros((h, w), np.float32)
  maps = np.stack([block, negative, empty])[..., None]
  boxes = wsdan.attention_boxes(maps, [0.5, 0.5, 0.5], 0.1, "paper").numpy()
  np.testing.assert_allclose(boxes[0], [0.2 - 0.1, 0.3 - 0.1, 0.5 + 0.1, 0.7 + 0.1], atol=1e-6)
  np.testing.assert_array_equal(boxes[1:], [[0, 0, 1, 1], [0, 0, 1, 1]])
  # Low threshold reaches the 0.3 pixel: the box grows to row 8, col 0 (not clipped below 0).
  low = wsdan.attention_boxes(maps[:1], 0.2, 0.1, "paper").numpy()[0]
  np.testing.assert_allclose(low, [0.1, -0.1, 0.9, 0.8], atol=1e-6)


def test_attention_boxes_cars_hand_computed_and_one_row():
  h = w = 10
  block = np.zeros((h, w), np.float32)
  block[2:6, 3:8] = 1.0
  one_row = np.zeros((h, w), np.float32)
  one_row[4, 3:8] = 1.0
  one_pixel = np.zeros((h, w), np.float32)
  one_pixel[7, 1] = 1.0
  empty = np.full((h, w), 0.5, np.float32)  # nothing strictly above 0.5
  maps = np.stack([block, one_row, one_pixel, empty])
  boxes = wsdan.attention_boxes(maps, 0.5, 0.0, "cars").numpy()
  np.testing.assert_allclose(boxes[0], [2 / 9, 3 / 9, 4 / 9, 6 / 9], atol=1e-6)
  np.testing.assert_allclose(boxes[1], [4 / 9, 3 / 9, 4 / 9, 6 / 9], atol=1e-6)
  np.testing.assert_allclose(boxes[2], [7 / 9, 1 / 9, 7 / 9, 1 / 9], atol=1e-6)
  np.testing.assert_array_equal(boxes[3], [0, 0, 1, 1])


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_attention_boxes_random_maps_match_numpy(variant):
  rng = np.random.RandomState(3)
  maps = rng.uniform(-0.2, 1, size=(6, 12, 9)).astype(np.float32) ** 3
  thresholds = rng.uniform(0.4, 0.6, size=6).astype(np.float32)
  padding = 0.1 if variant == "paper" else 0.0
  got = wsdan.attention_boxes(maps, thresholds, padding, variant).numpy()
  expected = [np_box(m, t, padding, variant) for m, t in zip(maps, thresholds)]
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_cars_crop_equals_slice_then_align_corners_resize():
  """The cars box + crop reproduce GrabAI's X[:, hmin:hmax, wmin:wmax] + upsample_bilinear."""
  rng = np.random.RandomState(4)
  size = 16
  images = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
  maps = np.zeros((2, size, size), np.float32)
  maps[0, 3:9, 5:14] = 1
  maps[1, 10:15, 2:5] = 1
  boxes = wsdan.attention_boxes(maps, 0.5, 0.0, "cars")
  crops = wsdan.crop_images(images, boxes, size, "cars").numpy()
  for image, crop, (r0, r1, c0, c1) in zip(images, crops, [(3, 8, 5, 13), (10, 14, 2, 4)]):
    expected = np_resize_align_corners(image[r0:r1, c0:c1], size, size)
    np.testing.assert_allclose(crop, expected, atol=2e-3)


def test_crop_outside_the_image_takes_the_fill_colour():
  images = np.full((1, 8, 8, 3), 10.0, np.float32)
  crops = wsdan.crop_images(images, np.array([[-1.0, -1.0, 2.0, 2.0]]), 7, "paper").numpy()
  np.testing.assert_allclose(crops[0, 0, 0], 127.5)  # y = -1 * 7 is outside
  np.testing.assert_allclose(crops[0, 3, 3], 10.0)  # the centre is inside


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_upsample_maps_match_numpy(variant):
  maps = np.random.RandomState(5).uniform(size=(2, 3, 4, 2)).astype(np.float32)
  got = wsdan.upsample_maps(maps, 10, variant).numpy()
  resize = np_resize_legacy if variant == "paper" else np_resize_align_corners
  for m, g in zip(maps, got):
    np.testing.assert_allclose(g, resize(m, 10, 10), atol=1e-6)


def test_drop_masks_and_fill():
  h = w = 6
  ramp = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
  negative = -ramp
  maps = np.stack([ramp, negative, ramp])
  thresholds = np.array([0.3, 0.3, 0.5], np.float32)
  paper = wsdan.drop_masks(maps, thresholds, "paper").numpy()[..., 0]
  np.testing.assert_array_equal(paper[0], ramp < 0.3 * ramp.max())
  np.testing.assert_array_equal(paper[1], np.ones((h, w)))  # max <= 0 keeps everything
  cars = wsdan.drop_masks(maps, thresholds, "cars").numpy()[..., 0]
  for m, t, c in zip(maps, thresholds, cars):
    np.testing.assert_array_equal(c, m <= t)
  images = np.full((3, h, w, 3), 200.0, np.float32)
  dropped = wsdan.apply_drop(images, cars[..., None], "cars").numpy()
  np.testing.assert_allclose(dropped[2][ramp > 0.5], np.tile(IMAGENET_MEAN_255, (18, 1)), rtol=1e-6)
  np.testing.assert_allclose(dropped[2][ramp <= 0.5], 200.0)
  dropped = wsdan.apply_drop(images, paper[..., None], "paper").numpy()
  np.testing.assert_allclose(dropped[0][ramp >= 0.3], 127.5)


def test_part_sampling_weights_and_choice():
  rng = np.random.RandomState(6)
  maps = rng.uniform(size=(3, 4, 5, 6)).astype(np.float32)
  maps[2] = 0  # all-zero maps: uniform
  paper = wsdan.part_sampling_weights(maps, "paper").numpy()
  w = np.sqrt(maps[:2].mean(axis=(1, 2)))
  np.testing.assert_allclose(paper[:2], w / w.sum(axis=1, keepdims=True), rtol=1e-5)
  np.testing.assert_allclose(paper[2], np.full(6, 1 / 6), rtol=1e-6)
  # The official code averages the map resized to the input size (TF1 resize_bilinear).
  resized = wsdan.part_sampling_weights(maps, "paper", upsampled_size=13).numpy()
  w = np.sqrt(np.stack([np_resize_legacy(m, 13, 13).mean(axis=(0, 1)) for m in maps[:2]]))
  np.testing.assert_allclose(resized[:2], w / w.sum(axis=1, keepdims=True), rtol=1e-5)
  assert not np.allclose(resized[:2], paper[:2], rtol=1e-3)
  np.testing.assert_allclose(wsdan.part_sampling_weights(maps, "cars"), np.full((3, 6), 1 / 6))
  uniforms = np.array([0.0, 0.5, 0.999999], np.float32)
  chosen = wsdan.choose_parts(paper, uniforms).numpy()
  expected = [np.searchsorted(np.cumsum(p), u, side="right") for p, u in zip(paper, uniforms)]
  np.testing.assert_array_equal(chosen, np.minimum(expected, 5))


def test_stateless_draws_depend_only_on_seed_step_and_global_index():
  full = wsdan.stateless_draws(7, 3, tf.range(8)).numpy()
  second_replica = wsdan.stateless_draws(7, 3, tf.range(4, 8)).numpy()
  np.testing.assert_array_equal(full[4:], second_replica)
  np.testing.assert_array_equal(full, wsdan.stateless_draws(7, 3, tf.range(8)).numpy())
  assert full.shape == (8, 4) and (full >= 0).all() and (full < 1).all()
  assert not np.allclose(full, wsdan.stateless_draws(7, 4, tf.range(8)).numpy())
  assert not np.allclose(full, wsdan.stateless_draws(8, 3, tf.range(8)).numpy())
  assert len(np.unique(full[:, 0])) == 8  # samples get different draws


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_combine_refined(variant):
  rng = np.random.RandomState(8)
  raw, crop = rng.normal(size=(2, 3, 5)).astype(np.float32)
  got = wsdan.combine_refined(raw, crop, variant).numpy()
  if variant == "paper":
    expected = 0.5 * np_softmax(raw) + 0.5 * np_softmax(crop)
  else:
    expected = np_softmax((raw + crop) / 2)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_config_defaults_and_errors():
  paper = wsdan.WSDANConfig().resolved()
  assert (paper.image_size, paper.num_maps, paper.centre_rate) == (448, 32, 0.05)
  assert paper.crop_thresholds == (0.4, 0.6) and paper.drop_thresholds == (0.2, 0.5)
  assert (paper.crop_padding, paper.refine_threshold, paper.refine_padding) == (0.1, 0.1, 0.05)
  cars = wsdan.WSDANConfig(variant="cars").resolved()
  assert (cars.image_size, cars.num_maps, cars.centre_rate) == (512, 64, 1e-4)
  assert cars.crop_thresholds == (0.5, 0.5) and cars.refine_threshold == 0.5
  with pytest.raises(ValueError, match="variant must be one of paper, cars"):
    wsdan.WSDANConfig(variant="x").resolved()
  with pytest.raises(ValueError, match="num_maps=200: at most 192"):
    wsdan.WSDANConfig(num_maps=200).resolved()
  with pytest.raises(ValueError, match="image_size=.*: at least 75"):
    wsdan.build_wsdan(wsdan.WSDANConfig(image_size=64))
  with pytest.raises(ValueError, match="extractor must have 2 output"):
    wsdan.build_wsdan(_config("paper", image_size=16), extractor=tiny_extractor("cars", 16))


# models --------------------------------------------------------------------------------------


def test_parameter_counts_paper(paper_model):
  app = keras.applications.InceptionV3(
    include_top=False, weights=None, input_shape=(PAPER_SIZE, PAPER_SIZE, 3)
  )
  backbone = keras.Model(app.input, app.get_layer("mixed7").output).count_params()
  attention = 768 * 192 + 3 * 192  # 1x1 conv without bias + BN(scale=False): beta, mean, var
  head = 4 * 768 * 3 + 3
  centres = 3 * 4 * 768
  assert paper_model.extractor.count_params() == backbone + attention
  assert paper_model.head.count_params() == head
  assert tuple(paper_model.centres.shape) == (3, 4 * 768)
  assert paper_model.count_params() == backbone + attention + head + centres
  counts = wsdan.parameter_count("paper", 3, 4)
  assert counts == dict(
    backbone=backbone,
    attention=attention,
    head=head,
    centres=centres,
    total=backbone + attention + head + centres,
  )
  # Published size: 32 maps x 768 channels, 200 CUB classes.
  assert wsdan.parameter_count("paper", 200, 32)["head"] == 32 * 768 * 200 + 200


def test_parameter_counts_cars(cars_model):
  app = keras.applications.EfficientNetB3(
    include_top=False, weights=None, input_shape=(CARS_SIZE, CARS_SIZE, 3)
  )
  backbone = keras.Model(app.input, app.get_layer("block6d_add").output).count_params()
  attention = 232 * 4  # linear 1x1 conv, no bias
  head = 4 * 232 * 3 + 3
  centres = 3 * 4 * 232
  assert cars_model.extractor.count_params() == backbone
  assert cars_model.attention_conv.count_params() == attention
  assert tuple(cars_model.centres.shape) == (3, 4, 232)
  assert cars_model.count_params() == backbone + attention + head + centres
  assert wsdan.parameter_count("cars", 3, 4)["total"] == backbone + attention + head + centres
  assert wsdan.parameter_count("cars", 196, 64)["head"] == 64 * 232 * 196 + 196
  assert all(
    layer.rate == 0 for layer in cars_model.extractor.layers if layer.name.endswith("_drop")
  )


def test_paper_attention_source_is_mixed_7a_branch_0(paper_model):
  """The maps come from the 1x1 conv feeding branch3x3 of mixed8 (slim Mixed_7a/Branch_0)."""
  app = keras.applications.InceptionV3(
    include_top=False, weights=None, input_shape=(PAPER_SIZE, PAPER_SIZE, 3)
  )
  target = wsdan._mixed_7a_branch_0(app)
  mixed7 = app.get_layer("mixed7").output
  assert tuple(target.shape[1:]) == tuple(mixed7.shape[1:3]) + (192,)
  consumers = [
    layer
    for layer in app.layers
    if isinstance(layer, keras.layers.Conv2D) and layer.input is target
  ]
  # Only the 3x3 stride-2 conv of branch3x3 (the 1x1 of branch7x7x3 feeds a 1x7 conv).
  assert [(c.filters, tuple(c.kernel_size), tuple(c.strides)) for c in consumers] == [
    (320, (3, 3), (2, 2))
  ]
  assert paper_model.extractor.outputs[1].shape[1:] == target.shape[1:]


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_refine_follows_the_variant_rule(variant, paper_model, cars_model):
  model = paper_model if variant == "paper" else cars_model
  size = model.config.image_size
  images = _images(size, batch=3, seed=9)
  out = model.refine(images)
  raw = model(images, training=False).numpy()
  np.testing.assert_allclose(out["raw_logits"], raw, rtol=1e-4, atol=1e-5)
  maps = model.attention_maps(images).numpy()
  assert maps.dtype == np.float32 and maps.shape == (3, *model.feature_size, 4)
  mean = maps.mean(axis=-1)
  boxes = []
  for m in mean:
    if variant == "paper":
      up = np_resize_legacy(m[..., None], size, size)[..., 0]
      boxes.append(np_box(up, 0.1, 0.05, "paper"))
    else:
      m = (m - m.min()) / (m.max() - m.min() + 1e-6)
      up = np_resize_align_corners(m[..., None], size, size)[..., 0]
      boxes.append(np_box(up, 0.5, 0.0, "cars"))
  np.testing.assert_allclose(model.refinement_boxes(maps), boxes, atol=1e-5)
  crops = wsdan.crop_images(images, np.array(boxes, np.float32), size, variant)
  crop = model(crops, training=False).numpy()
  if variant == "paper":
    expected = 0.5 * np_softmax(raw) + 0.5 * np_softmax(crop)
  else:
    expected = np_softmax((raw + crop) / 2)
  np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["raw_probabilities"], np_softmax(raw), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_one_fit_step_updates_centres_by_the_numpy_rule(variant, paper_model, cars_model, tmp_path):
  model = paper_model if variant == "paper" else cars_model
  size = model.config.image_size
  images = _images(size, batch=4, seed=10)
  labels = np.array([2, 0, 2, 2])  # duplicates accumulate
  model.centres.assign(np.zeros(model.centres.shape, np.float32))
  before = [w.numpy() for w in model.trainable_weights]
  # Training-mode BN uses batch statistics, so this equals the step's raw pass (lr 0).
  _, pooled, _ = model._forward(images, True)
  f = pooled.numpy().astype(np.float64)
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), metrics=["accuracy"])
  model.run_eagerly = True  # tracing the three-pass step costs far more than running it
  logs = model.fit(images, labels, batch_size=4, epochs=1, verbose=0, shuffle=False).history
  assert set(logs) == {"loss", "accuracy", "centre_loss", "crop_accuracy", "drop_accuracy"}
  assert np.isfinite(logs["loss"][0])
  expected = np.zeros(model.centres.shape)
  if variant == "paper":
    f = f.reshape(4, -1)
    for i, y in enumerate(labels):  # zero centres normalise to zero: c[y] += 0.05 f
      expected[y] += 0.05 * f[i]
    centre_loss = (f**2).sum(-1).mean()  # = 1: f is L2-normalised
  else:
    for i, y in enumerate(labels):
      expected[y] += 1e-4 * f[i]
    centre_loss = (f**2).mean()
  np.testing.assert_allclose(model.centres.numpy(), expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(logs["centre_loss"][0], centre_loss, rtol=1e-4)
  for old, new in zip(before, model.trainable_weights):
    np.testing.assert_array_equal(old, new.numpy())

  # The centres are part of the model's checkpoint.
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
  saved = model.centres.numpy()
  model.centres.assign(np.zeros(model.centres.shape, np.float32))
  tf.train.Checkpoint(model=model).read(path).expect_partial()
  np.testing.assert_array_equal(model.centres.numpy(), saved)


def test_evaluate_reports_raw_and_refined_accuracy(paper_model):
  images = _images(PAPER_SIZE, batch=4, seed=11)
  labels = np.array([0, 1, 2, 1])
  paper_model.compile(optimizer=keras.optimizers.SGD(0.0), metrics=["accuracy"], run_eagerly=True)
  logs = paper_model.evaluate(images, labels, batch_size=4, verbose=0, return_dict=True)
  assert set(logs) == {"loss", "accuracy", "refined_accuracy"}
  out = paper_model.refine(images)
  raw = out["raw_logits"].numpy()
  assert logs["accuracy"] == pytest.approx(np.mean(raw.argmax(-1) == labels))
  refined = np.mean(out["probabilities"].numpy().argmax(-1) == labels)
  assert logs["refined_accuracy"] == pytest.approx(refined)
  ce = -np.log(np_softmax(raw.astype(np.float64))[np.arange(4), labels]).mean()
  assert logs["loss"] == pytest.approx(ce, rel=1e-4)


def test_mixed_float16_step_is_finite():
  policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = wsdan.build_wsdan(_config("paper"))
    model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    images = _images(PAPER_SIZE, batch=2, seed=12)
    logs = model.fit(images, np.array([0, 1]), batch_size=2, verbose=0).history
    assert "accuracy" in logs  # logged without compiled metrics
    assert np.isfinite(logs["loss"][0]) and np.isfinite(logs["centre_loss"][0])
    assert model(images).dtype == tf.float32
    assert np.isfinite(model.centres.numpy()).all() and np.abs(model.centres.numpy()).sum() > 0
  finally:
    keras.mixed_precision.set_global_policy(policy)


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_sample_weights_scale_the_cross_entropies(variant):
  """Without centre loss and weight decay, the step loss is a sum of cross-entropies, so sample
  weights of 2 double it (same draws: both optimisers start at step 0; lr 0)."""
  size = 24
  config = _config(variant, image_size=size, centre_weight=0.0, weight_decay=0.0)
  images = _images(size, batch=4, seed=14)
  labels = np.array([0, 1, 2, 1])
  losses = []
  initial = None
  for weights in (None, np.full(4, 2.0, np.float32)):
    model = wsdan.build_wsdan(config, tiny_extractor(variant, size))
    initial = initial or model.get_weights()
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    fit = dict(sample_weight=weights, batch_size=4, verbose=0, shuffle=False)
    logs = model.fit(images, labels, **fit).history
    losses.append(logs["loss"][0])
  assert losses[1] == pytest.approx(2 * losses[0], rel=1e-5)


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_jit_compiled_train_step_runs(variant):
  """Every op of the step (crop, drop, draws, BAP, centres) compiles with XLA; a tiny extractor
  stands in for the backbone, whose standard layers XLA compiles as well."""
  size = 24
  model = wsdan.build_wsdan(_config(variant, image_size=size), tiny_extractor(variant, size))
  model.compile(optimizer=keras.optimizers.SGD(1e-2), metrics=["accuracy"], jit_compile=True)
  images = _images(size, batch=4, seed=13)
  labels = np.array([0, 1, 2, 1])
  logs = model.fit(images, labels, batch_size=4, epochs=2, verbose=0).history
  assert all(np.isfinite(logs["loss"]))
  steps_per_batch = 1 if variant == "paper" else 3
  assert int(model.optimizer.iterations.numpy()) == 2 * steps_per_batch
  assert np.abs(model.centres.numpy()).sum() > 0
  logs = model.evaluate(images, labels, batch_size=4, verbose=0, return_dict=True)
  assert 0 <= logs["refined_accuracy"] <= 1


_MIRRORED_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfpets.classify import wsdan

{tiny_extractor}

variant, size = sys.argv[1], 16
config = wsdan.WSDANConfig(variant=variant, num_classes=3, image_size=size, num_maps=4, seed=5)
images = np.random.RandomState(0).uniform(0, 255, (8, size, size, 3)).astype(np.float32)
labels = np.array([1, 0, 1, 2, 2, 2, 0, 1])
initial = None


def one_step(strategy):
  global initial
  with strategy.scope():
    model = wsdan.build_wsdan(config, tiny_extractor(variant, size))
    if initial is None:
      initial = model.get_weights()
    model.set_weights(initial)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
  model.fit(images, labels, batch_size=8, epochs=1, verbose=0, shuffle=False)
  return model.get_weights(), model.centres.numpy()


single, single_centres = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
mirrored, mirrored_centres = one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print("RESULT " + json.dumps({{
  "max_diff": max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored)),
  "centres_diff": float(np.abs(single_centres - mirrored_centres).max()),
  "centres_size": float(np.abs(single_centres).max()),
  "moved": max(float(np.abs(a - b).max()) for a, b in zip(single, initial)),
}}))
"""


@pytest.mark.parametrize("variant", wsdan.VARIANTS)
def test_mirrored_step_equals_single_device_step(variant):
  """One step over 2 logical CPUs (4 samples each) equals the step on one device: the draws are
  keyed by the global sample index, batch statistics and gradients are summed over replicas and
  the centre deltas add up. (A tiny extractor: the random-init Inception-V3 at its minimum size is
  so ill-conditioned that merely reordering a batch changes its gradients by percents.)"""
  script = _MIRRORED_SCRIPT.format(tiny_extractor=inspect.getsource(tiny_extractor))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
  result = subprocess.run(
    [sys.executable, "-c", script, variant], capture_output=True, text=True, env=env, timeout=600
  )
  lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
  assert lines, result.stderr[-3000:]
  report = json.loads(lines[0][len("RESULT ") :])
  assert report["moved"] > 1e-3  # the step changed the weights
  assert report["centres_size"] > 0
  assert report["centres_diff"] < 1e-5
  assert report["max_diff"] < 1e-5


def test_backbone_classifier_is_the_pooled_backbone_and_one_linear_layer():
  config = wsdan.WSDANConfig(variant="cars", num_classes=5, image_size=32)
  plain = wsdan.build_backbone_classifier(config)
  counts = wsdan.parameter_count("cars", 5)
  assert plain.count_params() == counts["backbone"] + 232 * 5 + 5
  logits = plain(np.zeros((2, 32, 32, 3), np.float32))
  assert logits.shape == (2, 5) and logits.dtype == "float32"
