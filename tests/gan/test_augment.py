"""ADA: each augmentation against the NumPy reference, the sampler's adjoint, second-order
gradients, gate statistics, XLA, the p controller and its statistics across replicas."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tests.gan import augment_reference as ref
from tfpets.gan import augment, rng

# The float64 path still uses tfpets.ops' float32 sym6 taps, so the warp matches the reference to
# float32 rounding of the filter, not to float64 precision.
WARP_ATOL = 1e-6


def _tf(params: dict, dtype=tf.float64) -> dict:
  return {k: tf.constant(np.asarray(v), dtype) for k, v in params.items()}


def _images(n, size, channels=3, seed=0, height=None) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, [n, height or size, size, channels])


def _geom_params(n: int, seed: int = 1) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "xflip": np.arange(n) % 2.0,
    "rotate90": np.arange(n) % 4.0,
    "xint": rng.uniform(-0.125, 0.125, [n, 2]),
    "scale": 2 ** rng.normal(0, 0.2, n),
    "rotate_pre": rng.uniform(-np.pi, np.pi, n),
    "aniso": 2 ** rng.normal(0, 0.2, n),
    "rotate_post": rng.uniform(-np.pi, np.pi, n),
    "xfrac": rng.normal(0, 0.125, [n, 2]),
  }


def _color_params(n: int, seed: int = 2) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "brightness": rng.normal(0, 0.2, n),
    "contrast": 2 ** rng.normal(0, 0.5, n),
    "lumaflip": np.arange(n) % 2.0,
    "hue": rng.uniform(-np.pi, np.pi, n),
    "saturation": 2 ** rng.normal(0, 1, n),
  }


# --- configuration ------------------------------------------------------------------------------


def test_presets_are_the_official_ones():
  blit = {"xflip", "rotate90", "xint"}
  geom = {"scale", "rotate", "aniso", "xfrac"}
  color = {"brightness", "contrast", "lumaflip", "hue", "saturation"}
  expected = {
    "blit": blit,
    "geom": geom,
    "color": color,
    "filter": {"imgfilter"},
    "noise": {"noise"},
    "cutout": {"cutout"},
    "bg": blit | geom,
    "bgc": blit | geom | color,
    "bgcf": blit | geom | color | {"imgfilter"},
    "bgcfn": blit | geom | color | {"imgfilter", "noise"},
    "bgcfnc": blit | geom | color | {"imgfilter", "noise", "cutout"},
  }
  assert {k: set(v) for k, v in augment.AUGPIPES.items()} == expected
  cfg = augment.AugmentPipe().config
  assert {k for k, v in cfg.items() if k in augment.DEFAULTS and v == 1.0} >= expected["bgc"]
  assert cfg["imgfilter"] == cfg["noise"] == cfg["cutout"] == 0
  assert (cfg["scale_std"], cfg["xfrac_std"], cfg["contrast_std"], cfg["xint_max"]) == (
    0.2,
    0.125,
    0.5,
    0.125,
  )
  assert augment.AugmentPipe("blit", xflip=0.5, scale_std=0.3).config["xflip"] == 0.5


def test_unknown_names_raise_value_errors():
  with pytest.raises(ValueError, match="augpipe must be one of .*bgcfnc.*'bgx'"):
    augment.AugmentPipe("bgx")
  with pytest.raises(ValueError, match="unknown augmentation option.*flip_prob, xflp"):
    augment.AugmentPipe("bgc", xflp=1, flip_prob=0.5)
  with pytest.raises(ValueError, match="imgfilter_bands must have 4"):
    augment.AugmentPipe("bgcf", imgfilter_bands=[1, 1])
  with pytest.raises(ValueError, match="seed must be an int tensor of shape \\[2\\]"):
    augment.AugmentPipe()(tf.zeros([1, 8, 8, 3]), 0.5, tf.constant([1, 2, 3]))


def test_threefry_known_answers():
  # Random123's known-answer vectors for Threefry-2x32-20 (key, counter) -> output.
  cases = [
    ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
  ]
  u32 = lambda v: tf.constant(v, tf.uint32)
  for key, counter, expected in cases:
    out = rng.threefry2x32((u32(key[0]), u32(key[1])), (u32(counter[0]), u32(counter[1])))
    assert (int(out[0]), int(out[1])) == expected


# --- each step at fixed parameters ----------------------------------------------------------------


def test_geometric_matrix_matches_reference():
  params = _geom_params(8)
  got = augment.geometric_matrix(_tf(params), 24, 16, tf.float64).numpy()
  np.testing.assert_allclose(got, ref.geometric_matrix(params, 24, 16), atol=1e-12)
  single = {"xint": params["xint"]}
  got = augment.geometric_matrix(_tf(single), 24, 16, tf.float64).numpy()
  np.testing.assert_allclose(got[:, :2, 2], -np.round(params["xint"] * [24, 16]), atol=0)


def test_color_matrix_matches_reference():
  params = _color_params(6)
  got = augment.color_matrix(_tf(params), tf.float64).numpy()
  np.testing.assert_allclose(got, ref.color_matrix(params), atol=1e-12)
  # Saturation 0 maps every colour onto its luma.
  grey = augment.color_matrix(_tf({"saturation": [0.0]}), tf.float64).numpy()[0]
  np.testing.assert_allclose(grey[:3, :3], np.full([3, 3], 1 / 3), atol=1e-12)


def test_bilinear_sample_matches_reference_with_zero_fill():
  rng = np.random.default_rng(3)
  images = rng.normal(size=[2, 5, 6, 2])
  x = rng.uniform(-1.5, 6.5, [2, 4, 7])
  y = rng.uniform(-1.5, 5.5, [2, 4, 7])
  x[0, 0, :4], y[0, 0, :4] = [0, 5, 2, 5], [0, 4, 3, 0]  # exact pixel centres and the far edge
  got = augment.bilinear_sample(tf.constant(images), tf.constant(x), tf.constant(y)).numpy()
  np.testing.assert_allclose(got, ref.bilinear_sample(images, x, y), atol=1e-12)
  np.testing.assert_allclose(got[0, 0, :4], images[0, [0, 4, 3, 0], [0, 5, 2, 5]], atol=1e-12)


def test_bilinear_sample_gradient_is_the_exact_adjoint():
  rng = np.random.default_rng(4)
  h, w = 5, 6
  x = rng.uniform(-1.5, 6.5, [1, 4, 7])
  y = rng.uniform(-1.5, 5.5, [1, 4, 7])
  images = tf.constant(rng.normal(size=[1, h, w, 1]))
  upstream = tf.constant(rng.normal(size=[1, 4, 7, 1]))
  with tf.GradientTape() as tape:
    tape.watch(images)
    out = augment.bilinear_sample(images, tf.constant(x), tf.constant(y))
    inner = tf.reduce_sum(out * upstream)
  adjoint = tape.gradient(inner, images)
  # <A x, y> = <x, A^T y>, and A^T y is the transposed sampling matrix applied to y.
  np.testing.assert_allclose(float(inner), float(tf.reduce_sum(images * adjoint)), rtol=1e-12)
  matrix = ref.bilinear_operator(h, w, x, y)
  np.testing.assert_allclose(
    adjoint.numpy().ravel(), matrix.T @ upstream.numpy().ravel(), atol=1e-12
  )


def test_bilinear_sample_gradient_matches_finite_differences():
  rng = np.random.default_rng(5)
  x = tf.constant(rng.uniform(-1, 6, [2, 3, 4]))
  y = tf.constant(rng.uniform(-1, 5, [2, 3, 4]))
  images = tf.constant(rng.normal(size=[2, 5, 6, 3]))
  weights = tf.constant(rng.normal(size=[2, 3, 4, 3]))
  f = lambda im: tf.reduce_sum(tf.sin(augment.bilinear_sample(im, x, y)) * weights)
  with tf.GradientTape() as tape:
    tape.watch(images)
    value = f(images)
  grad = tape.gradient(value, images)
  for _ in range(3):
    direction = tf.constant(rng.normal(size=images.shape))
    eps = 1e-6
    numeric = (f(images + eps * direction) - f(images - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(tf.reduce_sum(grad * direction)), float(numeric), rtol=1e-7)


@pytest.mark.parametrize(
  "case", ["identity", "xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "all"]
)
def test_warp_matches_reference(case):
  n = 4
  params = _geom_params(n)
  if case == "identity":
    params = {"scale": np.ones(n)}
  elif case == "rotate":
    params = {"rotate_pre": params["rotate_pre"], "rotate_post": params["rotate_post"]}
  elif case != "all":
    params = {case: params[case]}
  images = _images(n, 12)
  g = ref.geometric_matrix(params, 12, 12)
  got = augment.warp(tf.constant(images), tf.constant(g)).numpy()
  np.testing.assert_allclose(got, ref.warp(images, g), atol=WARP_ATOL)
  if case == "identity":  # sym6 up/down reconstructs perfectly.
    np.testing.assert_allclose(got, images, atol=WARP_ATOL)


def test_warp_margins_clip_and_non_square_images():
  # A strong zoom-out needs the largest margin (clipped to W - 1, H - 1); a zoom-in the smallest.
  g = ref.geometric_matrix({"scale": np.array([0.3, 3.0]), "rotate_pre": np.array([0.5, 0])}, 10, 8)
  images = _images(2, 10, height=8)
  np.testing.assert_array_equal(augment.warp_margin(tf.constant(g), 10, 8).numpy(), [9, 7, 9, 7])
  got = augment.warp(tf.constant(images), tf.constant(g)).numpy()
  np.testing.assert_allclose(got, ref.warp(images, g), atol=WARP_ATOL)
  g = ref.geometric_matrix({"scale": np.array([3.0])}, 10, 8)
  # Corners at (4.5, 3.5) / 3, plus 2 * Hz_pad = 6, minus the centre (4.5, 3.5), rounded up.
  np.testing.assert_array_equal(augment.warp_margin(tf.constant(g), 10, 8).numpy(), [3, 4, 3, 4])
  np.testing.assert_allclose(
    augment.warp(tf.constant(images[:1]), tf.constant(g)).numpy(),
    ref.warp(images[:1], g),
    atol=WARP_ATOL,
  )


def test_warp_blits_move_pixels_the_official_way_on_smooth_images():
  # The sym6 filter is not symmetric, so flips and quarter turns are close to, not exactly,
  # pixel permutations; integer translations are exact.
  h = 16
  yy, xx = np.mgrid[0:h, 0:h] / h
  image = np.stack([np.sin(2 * xx + 1) * np.cos(3 * yy), xx * yy, np.cos(xx - 2 * yy)], -1)
  images = np.stack([image] * 4)
  params = {"rotate90": np.arange(4.0)}
  got = augment.warp(tf.constant(images), tf.constant(ref.geometric_matrix(params, h, h))).numpy()
  for k in range(4):
    np.testing.assert_allclose(got[k], np.rot90(image, k), atol=0.03)
  flipped = augment.warp(
    tf.constant(images[:1]), tf.constant(ref.geometric_matrix({"xflip": np.ones(1)}, h, h))
  ).numpy()[0]
  np.testing.assert_allclose(flipped, image[:, ::-1], atol=0.03)
  params = {"xint": np.array([[2 / h, 1 / h]])}
  moved = augment.warp(tf.constant(images[:1]), tf.constant(ref.geometric_matrix(params, h, h)))
  expected = np.roll(image, (1, 2), (0, 1))[3:-3, 3:-3]  # content moves right 2, down 1
  np.testing.assert_allclose(moved.numpy()[0, 3:-3, 3:-3], expected, atol=WARP_ATOL)


def test_warp_in_float32_is_close_to_the_reference():
  params = _geom_params(3)
  images = _images(3, 16)
  g = ref.geometric_matrix(params, 16, 16)
  got = augment.warp(tf.constant(images, tf.float32), tf.constant(g, tf.float32)).numpy()
  np.testing.assert_allclose(got, ref.warp(images, g), atol=2e-5)


@pytest.mark.parametrize("channels", [3, 1])
def test_apply_color_matches_reference(channels):
  c = ref.color_matrix(_color_params(4))
  images = _images(4, 6, channels)
  got = augment.apply_color(tf.constant(images), tf.constant(c)).numpy()
  np.testing.assert_allclose(got, ref.apply_color(images, c), atol=1e-12)


def test_imgfilter_matches_reference():
  np.testing.assert_allclose(augment.filter_bank(), ref.filter_bank(), atol=1e-15)
  unit_pulse = np.zeros(43)
  unit_pulse[21] = 1
  np.testing.assert_allclose(augment.filter_bank().sum(axis=0), unit_pulse, atol=1e-12)
  rng = np.random.default_rng(6)
  t = np.where(rng.uniform(size=[4, 4]) < 0.6, 2 ** rng.normal(0, 1, [4, 4]), 1.0)
  gains = augment.imgfilter_gains(tf.constant(t)).numpy()
  np.testing.assert_allclose(gains, ref.imgfilter_gains(t), atol=1e-12)
  images = _images(4, 16)  # smaller than the 43 taps: the reflection repeats
  got = augment.imgfilter(tf.constant(images), tf.constant(gains)).numpy()
  np.testing.assert_allclose(got, ref.imgfilter(images, gains), atol=1e-12)
  same = augment.imgfilter(tf.constant(images), tf.ones([4, 4], tf.float64)).numpy()
  np.testing.assert_allclose(same, images, atol=1e-11)


def test_noise_and_cutout_match_reference():
  rng = np.random.default_rng(7)
  images = _images(4, 8)
  sigma, noise = np.abs(rng.normal(0, 0.1, 4)), rng.normal(size=images.shape)
  got = augment.add_noise(tf.constant(images), tf.constant(sigma), tf.constant(noise)).numpy()
  np.testing.assert_allclose(got, ref.add_noise(images, sigma, noise), atol=1e-12)
  size, center = np.array([0.5, 0.0, 0.5, 0.25]), rng.uniform(size=[4, 2])
  center[2] = [0.0, 1.0]  # a corner: only a quarter of the rectangle lies inside
  got = augment.cutout(tf.constant(images), tf.constant(size), tf.constant(center)).numpy()
  np.testing.assert_array_equal(got, ref.cutout(images, size, center))
  assert np.count_nonzero(got[2] == 0) == 2 * 2 * 3
  np.testing.assert_array_equal(got[1], images[1])


@pytest.mark.parametrize("channels", [3, 1])
def test_whole_pipeline_matches_reference(channels):
  pipe = augment.AugmentPipe("bgcfnc")
  images = _images(4, 12, channels)
  params = pipe.sample_params(images.shape, 0.7, tf.constant([5, 6]))
  got = pipe.apply(tf.constant(images), params).numpy()
  expected = ref.pipeline(images, {k: v.numpy() for k, v in params.items()})
  np.testing.assert_allclose(got, expected, atol=WARP_ATOL * 10)
  assert not np.allclose(got, images, atol=0.05)


# --- gradients ------------------------------------------------------------------------------------


def test_pipeline_gradient_is_the_adjoint():
  # The pipeline is affine in the images: f(x) = A x + b, so <f(x) - f(0), y> = <x, A^T y>.
  pipe = augment.AugmentPipe("bgcfnc")
  images = tf.constant(_images(3, 12))
  params = pipe.sample_params(images.shape, 1.0, tf.constant([1, 9]))
  upstream = tf.constant(np.random.default_rng(8).normal(size=images.shape))
  with tf.GradientTape() as tape:
    tape.watch(images)
    out = pipe.apply(images, params)
    inner = tf.reduce_sum(out * upstream)
  adjoint = tape.gradient(inner, images)
  offset = pipe.apply(tf.zeros_like(images), params)
  lhs = float(tf.reduce_sum((out - offset) * upstream))
  np.testing.assert_allclose(lhs, float(tf.reduce_sum(images * adjoint)), rtol=1e-10)


def _r1_penalty_and_grads(pipe, params, images, weights):
  """R1 = |d D(aug(x)) / dx|^2 with D(y) = sum(weights * softplus(y)); returns R1 and its
  gradients with respect to the weights and the images (second order through the pipeline)."""
  with tf.GradientTape(persistent=True) as outer:
    outer.watch([weights, images])
    with tf.GradientTape() as inner:
      inner.watch(images)
      logits = tf.reduce_sum(weights * tf.nn.softplus(pipe.apply(images, params)))
    r1 = tf.reduce_sum(tf.square(inner.gradient(logits, images)))
  return r1, outer.gradient(r1, weights), outer.gradient(r1, images)


def test_r1_second_order_gradients_match_finite_differences():
  pipe = augment.AugmentPipe("bgcf")
  rng = np.random.default_rng(9)
  images = tf.constant(_images(2, 12))
  weights = tf.constant(rng.normal(size=[1, 12, 12, 3]))
  params = pipe.sample_params(images.shape, 1.0, tf.constant([3, 4]))
  r1, d_weights, d_images = _r1_penalty_and_grads(pipe, params, images, weights)
  assert float(r1) > 0

  def r1_at(w, x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      logits = tf.reduce_sum(w * tf.nn.softplus(pipe.apply(x, params)))
    return float(tf.reduce_sum(tf.square(tape.gradient(logits, x))))

  eps = 1e-5
  dw = tf.constant(rng.normal(size=weights.shape))
  numeric = (r1_at(weights + eps * dw, images) - r1_at(weights - eps * dw, images)) / (2 * eps)
  np.testing.assert_allclose(float(tf.reduce_sum(d_weights * dw)), numeric, rtol=1e-6)
  dx = tf.constant(rng.normal(size=images.shape))
  numeric = (r1_at(weights, images + eps * dx) - r1_at(weights, images - eps * dx)) / (2 * eps)
  np.testing.assert_allclose(float(tf.reduce_sum(d_images * dx)), numeric, rtol=1e-6)


# --- random draws and gates -----------------------------------------------------------------------


# Statistical checks run on fixed seeds; each tolerance is about 4-6 standard errors of the
# estimate (binomial for gate fractions), so a correct pipeline passes for any seed.
def _binomial_ok(fraction: float, q: float, n: int, sigmas: float = 5.0) -> bool:
  return abs(fraction - q) <= sigmas * math.sqrt(q * (1 - q) / n) + 1e-12


def test_gates_and_distributions_follow_p():
  n, p = 20000, 0.3
  pipe = augment.AugmentPipe("bgcfnc")
  params = {k: v.numpy() for k, v in pipe.sample_params([n, 1, 1, 1], p, [11, 12]).items()}
  on = lambda key, identity: np.any(
    (params[key] != identity).reshape(n, -1), axis=1
  )  # gate open (and a non-identity value drawn)
  expected = {
    ("xflip", 0): p / 2,  # gate p, then i ~ U{0, 1}
    ("rotate90", 0): p * 3 / 4,
    ("xint", 0): p,
    ("scale", 1): p,
    ("aniso", 1): p,
    ("xfrac", 0): p,
    ("brightness", 0): p,
    ("contrast", 1): p,
    ("lumaflip", 0): p / 2,
    ("hue", 0): p,
    ("saturation", 1): p,
    ("noise_sigma", 0): p,
    ("cutout_size", 0): p,
  }
  for (key, identity), q in expected.items():
    fraction = on(key, identity).mean()
    assert _binomial_ok(fraction, q, n), (key, fraction, q)
  p_rot = 1 - math.sqrt(1 - p)
  assert _binomial_ok(on("rotate_pre", 0).mean(), p_rot, n)
  assert _binomial_ok((on("rotate_pre", 0) | on("rotate_post", 0)).mean(), p, n)
  for band in range(4):
    assert _binomial_ok((params["imgfilter"][:, band] != 1).mean(), p, n)
  # Gates are independent across augmentations.
  both = (on("scale", 1) & on("brightness", 0)).mean()
  assert _binomial_ok(both, p * p, n)

  def gated(key, identity):
    values = params[key][on(key, identity)]
    return values, math.sqrt(2 / len(values))  # relative standard error of a std estimate

  for key, std in (("scale", 0.2), ("aniso", 0.2), ("contrast", 0.5), ("saturation", 1.0)):
    values, rel = gated(key, 1)
    assert abs(np.log2(values).std() / std - 1) < 5 * rel, key
    assert abs(np.log2(values).mean()) < 5 * std / math.sqrt(len(values)), key
  values, rel = gated("brightness", 0)
  assert abs(values.std() / 0.2 - 1) < 5 * rel
  values, rel = gated("xfrac", 0)
  assert abs(values.std() / 0.125 - 1) < 5 * rel
  values, _ = gated("xint", 0)
  assert np.abs(values).max() <= 0.125 and abs(np.abs(values).mean() - 0.0625) < 0.003
  for key in ("hue", "rotate_pre"):
    values, _ = gated(key, 0)
    assert np.abs(values).max() <= np.pi and abs(np.abs(values).mean() - np.pi / 2) < 0.06
  assert set(np.unique(params["rotate90"])) == {0, 1, 2, 3}
  sigma, _ = gated("noise_sigma", 0)
  assert abs(sigma.mean() - 0.1 * math.sqrt(2 / math.pi)) < 0.003
  center = params["cutout_center"]
  assert center.min() > 0 and center.max() < 1 and abs(center.mean() - 0.5) < 0.01


def test_gates_saturate_above_one_and_scale_with_multipliers():
  n = 4000
  params = augment.AugmentPipe("bgc", xflip=0.5).sample_params([n, 1, 1, 1], 1.5, [1, 2])
  assert np.all(params["scale"].numpy() != 1) and np.all(params["rotate_pre"].numpy() != 0)
  assert np.all(params["rotate_post"].numpy() != 0)
  # xflip at multiplier 0.5 and p 1.5: gate 0.75, flipped 0.375.
  assert _binomial_ok(params["xflip"].numpy().mean(), 0.375, n)


def test_same_seed_same_draws_other_seed_other_draws():
  pipe = augment.AugmentPipe("bgc")
  images = tf.constant(_images(4, 8), tf.float32)
  a = pipe(images, 0.8, tf.constant([7, 8], tf.int64))
  b = pipe(images, 0.8, tf.constant([7, 8], tf.int32))
  c = pipe(images, 0.8, tf.constant([7, 9]))
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert np.abs(a.numpy() - c.numpy()).max() > 0.1


def test_xflip_flips_a_fraction_p_over_2_of_images():
  n, p, h = 2000, 0.5, 8
  yy, xx = np.mgrid[0:h, 0:h] / h
  image = np.stack([xx, yy, xx * yy], -1)  # not symmetric under a flip
  images = tf.constant(np.stack([image] * n), tf.float32)
  out = augment.AugmentPipe("blit", rotate90=0, xint=0)(images, p, tf.constant([2, 3])).numpy()
  to_flipped = np.abs(out - image[:, ::-1]).reshape(n, -1).max(axis=1)
  to_original = np.abs(out - image).reshape(n, -1).max(axis=1)
  flipped = to_flipped < to_original
  assert np.all(np.minimum(to_flipped, to_original) < 0.05)
  assert _binomial_ok(flipped.mean(), p / 2, n, sigmas=4)


def test_p_zero_returns_the_images_unchanged():
  pipe = augment.AugmentPipe("bgc")
  images = tf.constant(_images(2, 12), tf.float32)
  seed = tf.constant([1, 2])
  np.testing.assert_array_equal(pipe(images, 0.0, seed).numpy(), images.numpy())
  np.testing.assert_array_equal(pipe(images, tf.constant(0.0), seed).numpy(), images.numpy())
  p = tf.Variable(0.0)
  graph = tf.function(lambda x: pipe(x, p, seed))
  np.testing.assert_array_equal(graph(images).numpy(), images.numpy())
  p.assign(0.5)
  assert np.abs(graph(images).numpy() - images.numpy()).max() > 0.05


# --- XLA ----------------------------------------------------------------------------------------


def test_jit_compile_gives_the_same_images_and_r1_gradients():
  pipe = augment.AugmentPipe("bgcfnc")
  h = 16
  yy, xx = np.mgrid[0:h, 0:h] / h
  smooth = np.stack([np.sin(3 * xx + yy), np.cos(2 * yy - xx), xx * yy], -1)
  images = tf.constant(np.stack([smooth, -smooth, smooth[::-1], smooth[:, ::-1]]), tf.float32)
  weights = tf.constant(np.random.default_rng(10).normal(size=[1, h, h, 3]), tf.float32)
  p = tf.Variable(0.9)

  def step(x, seed):
    with tf.GradientTape() as outer:
      outer.watch(weights)
      with tf.GradientTape() as inner:
        inner.watch(x)
        out = pipe(x, p, seed)
        logits = tf.reduce_sum(weights * tf.nn.softplus(out))
      r1 = tf.reduce_sum(tf.square(inner.gradient(logits, x)))
    return out, r1, outer.gradient(r1, weights)

  seed = tf.constant([21, 22])
  eager = step(images, seed)
  compiled = tf.function(step, jit_compile=True)
  jit = compiled(images, seed)
  # Tolerance: float32 rounding (XLA sums the filter taps in another order); images reach 3.
  np.testing.assert_allclose(jit[0].numpy(), eager[0].numpy(), atol=1e-5)
  np.testing.assert_allclose(float(jit[1]), float(eager[1]), rtol=1e-5)
  np.testing.assert_allclose(jit[2].numpy(), eager[2].numpy(), rtol=1e-4, atol=1e-5)
  assert np.abs(eager[0].numpy() - images.numpy()).max() > 0.1
  p.assign(0.0)  # The same compiled function skips the augmentation.
  np.testing.assert_array_equal(compiled(images, seed)[0].numpy(), images.numpy())


# --- the controller -------------------------------------------------------------------------------


def test_adjust_p_moves_by_the_exact_step():
  step = 64 * 4 / (500 * 1000)
  right = augment.adjust_p(0.2, 100.0, 100.0, batch_size=64)
  np.testing.assert_allclose(float(right), np.float32(0.2) + np.float32(step), rtol=1e-7)
  wrong = augment.adjust_p(0.2, -100.0, 100.0, batch_size=64)
  np.testing.assert_allclose(float(wrong), np.float32(0.2) - np.float32(step), rtol=1e-7)
  assert float(augment.adjust_p(step / 2, -100.0, 100.0, batch_size=64)) == 0.0
  # No upper clamp; other interval, target and ada_kimg.
  above = augment.adjust_p(1.0, 10.0, 10.0, batch_size=32, interval=2, target=0.5, ada_kimg=100)
  np.testing.assert_allclose(float(above), 1.0 + 32 * 2 / 100_000, rtol=1e-7)
  # r_t exactly at the target or no statistics: p stays.
  assert float(augment.adjust_p(0.3, 6.0, 10.0, batch_size=64)) == np.float32(0.3)
  assert float(augment.adjust_p(0.3, 0.0, 0.0, batch_size=64)) == np.float32(0.3)
  # An always-right discriminator raises p linearly.
  p = 0.0
  for _ in range(10):
    p = augment.adjust_p(p, 8.0, 8.0, batch_size=64)
  np.testing.assert_allclose(float(p), 10 * step, rtol=1e-5)


def test_ada_stats_accumulate_and_reset():
  stats = augment.AdaStats()
  stats.update(tf.constant([[1.5], [-0.2], [3.0], [0.0]]))
  tf.function(stats.update, jit_compile=True)(tf.constant([2.0, 1.0]))
  sign_sum, count = stats.read_and_reset()
  assert (float(sign_sum), float(count)) == (3.0, 6.0)
  assert [float(v) for v in stats.result()] == [0.0, 0.0]
  assert not stats.trainable_variables


ADA_STATS_MIRRORED = textwrap.dedent("""
  import tensorflow as tf
  from tfpets.gan import augment
  from tfpets.runtime.strategy import make_strategy
  strategy = make_strategy("mirrored", num_cpu_replicas=2)
  with strategy.scope():
    stats = augment.AdaStats()
  @tf.function
  def step():
    def replica():
      rid = tf.distribute.get_replica_context().replica_id_in_sync_group
      # Replica 0 sees 3 positive logits of 3, replica 1 two positive of 5.
      logits = tf.where(tf.equal(rid, 0), [1.0, 2.0, 3.0, -9.0, -9.0], [1.0, 1, -1, -1, -1])
      size = tf.where(tf.equal(rid, 0), 3, 5)
      stats.update(logits[:size])
    strategy.run(replica)
  step()
  step()
  sign_sum, count = stats.read_and_reset()
  after = stats.result()
  print("RESULT", float(sign_sum), float(count), float(after[0]), float(after[1]))
""")


def test_ada_stats_sum_over_replicas():
  proc = subprocess.run(
    [sys.executable, "-c", ADA_STATS_MIRRORED],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
  assert lines, proc.stderr[-3000:]
  # Per step: replica 0 adds (+3, 3), replica 1 adds (2 - 3 = -1, 5); two steps.
  assert lines[0].split()[1:] == ["4.0", "16.0", "0.0", "0.0"]
