"""Tests of tfpets.superres.metrics against MATLAB's published outputs and direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tfpets.superres import metrics

# MATLAB's own `imresize(A, [rows cols], 'bicubic', 'antialiasing', aa)` outputs, as saved by
# MATLAB (MAT-files written on GLNXA64, 2020-07-13) in sanghyun-son/bicubic_pytorch,
# `test_answer/*.mat` (quoted to 12 decimals where longer), for the inputs of
# `test_answer/gen_test.m`: RAMP8 = the 8x8 matrix of 0 ... 63 row by row, RAMP4 = 4x4 of
# 0 ... 15, RAMP15 = 15x15 of 0 ... 224, TOP_LEFT below.
RAMP4 = np.arange(16, dtype=np.float64).reshape(4, 4)
RAMP8 = np.arange(64, dtype=np.float64).reshape(8, 8)
RAMP15 = np.arange(225, dtype=np.float64).reshape(15, 15)
TOP_LEFT = np.zeros((4, 4))
TOP_LEFT[0, 0], TOP_LEFT[1, 0], TOP_LEFT[0, 1], TOP_LEFT[0, 3] = 100, 10, 1, 100

MATLAB_DOWN_X2_AA = np.array(  # down_down_x2_aa.mat: RAMP8 to [4, 4], antialiasing on
  [
    [4.04296875, 6.08203125, 8.10546875, 10.14453125],
    [20.35546875, 22.39453125, 24.41796875, 26.45703125],
    [36.54296875, 38.58203125, 40.60546875, 42.64453125],
    [52.85546875, 54.89453125, 56.91796875, 58.95703125],
  ]
)
MATLAB_DOWN_X4_AA = np.array(  # down_down_x4_aa.mat: RAMP8 to [2, 2]
  [[12.3837890625, 16.6318359375], [46.3681640625, 50.6162109375]]
)
MATLAB_DOWN_3X4_AA = np.array(  # down_down_aa.mat: RAMP8 to [3, 4] (two different scales)
  [
    [6.472528773310022, 8.511591273310021, 10.535028773310023, 12.57409127331002],
    [28.44921875, 30.48828125, 32.51171875, 34.55078125],
    [50.42590872668998, 52.46497122668998, 54.48840872668998, 56.52747122668998],
  ]
)
MATLAB_DOWN_X3_AA = np.array(  # down_down_x3_aa.mat: RAMP15 to [5, 5]
  [
    [14.41975308642, 17.506172839506, 20.518518518519, 23.530864197531, 26.617283950617],
    [60.716049382716, 63.802469135802, 66.814814814815, 69.827160493827, 72.913580246914],
    [105.901234567901, 108.987654320988, 112.0, 115.012345679012, 118.098765432099],
    [151.086419753086, 154.172839506173, 157.185185185185, 160.197530864198, 163.283950617284],
    [197.382716049383, 200.469135802469, 203.481481481481, 206.493827160494, 209.58024691358],
  ]
)
MATLAB_DOWN_SMALL_NOAA = np.array(  # down_down_small_noaa.mat: RAMP4 to [3, 3], antialiasing off
  [
    [0.5439814814814781, 1.9351851851851825, 3.3263888888888866],
    [6.108796296296295, 7.5, 8.891203703703704],
    [11.67361111111111, 13.064814814814817, 14.456018518518519],
  ]
)
MATLAB_UP_TOP_LEFT = np.array(  # up_up_topleft_noaa.mat: TOP_LEFT to [5, 5]
  [
    [108.685225, 27.6970975, -12.4465625, 26.8841925, 109.2025],
    [35.471365, 8.970789, -3.5895625, 6.637437, 26.961],
    [-0.6503125, -0.21221875, 0.39453125, -1.60790625, -6.53125],
    [-0.768075, -0.18963, 0.0459375, 0.0, 0.0],
    [0.0, 0.0, 0.0, 0.0, 0.0],
  ]
)
# up_up_irregular_aa.mat: RAMP8 to [11, 13] (upscaling: antialiasing changes nothing); corners
# and the centre of the MATLAB output.
MATLAB_UP_IRREGULAR = {
  (0, 0): -0.5487371020587932,
  (0, 12): 6.606588341728188,
  (5, 6): 31.5,
  (10, 0): 56.3934116582718,
  (10, 12): 63.54873710205878,
  (3, 4): 18.632867132867137,
}


@pytest.mark.parametrize(
  "image, shape, antialiasing, expected",
  [
    (RAMP8, (4, 4), True, MATLAB_DOWN_X2_AA),
    (RAMP8, (2, 2), True, MATLAB_DOWN_X4_AA),
    (RAMP8, (3, 4), True, MATLAB_DOWN_3X4_AA),
    (RAMP15, (5, 5), True, MATLAB_DOWN_X3_AA),
    (RAMP4, (3, 3), False, MATLAB_DOWN_SMALL_NOAA),
    (TOP_LEFT, (5, 5), False, MATLAB_UP_TOP_LEFT),
  ],
)
def test_imresize_matches_matlab_outputs(image, shape, antialiasing, expected):
  out = metrics.imresize(image, output_shape=shape, antialiasing=antialiasing)
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-10)


def test_imresize_by_scale_matches_matlab_outputs():
  np.testing.assert_allclose(metrics.imresize(RAMP8, 0.5), MATLAB_DOWN_X2_AA, atol=1e-10)
  np.testing.assert_allclose(metrics.imresize(RAMP8, 0.25), MATLAB_DOWN_X4_AA, atol=1e-10)
  np.testing.assert_allclose(metrics.imresize(RAMP15, 1 / 3), MATLAB_DOWN_X3_AA, atol=1e-10)
  up = metrics.imresize(RAMP8, output_shape=(11, 13))
  for (row, col), value in MATLAB_UP_IRREGULAR.items():
    assert up[row, col] == pytest.approx(value, abs=1e-10)


def test_imresize_1d_downscale_by_hand():
  # 8 -> 4, scale 1/2, antialiased: kernel 0.5 * cubic(0.5 t), 8 taps around u = 2x - 0.5 at
  # distances +-0.5, +-1.5, +-2.5, +-3.5, where cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625,
  # cubic(1.25) = -0.0703125, cubic(1.75) = -0.0234375 (each halved, then normalised by their sum
  # 1): weights -3, -9, 29, 111, 111, 29, -9, -3 over 256, on inputs 2x-4 ... 2x+3 (1-based).
  weights = np.array([-3, -9, 29, 111, 111, 29, -9, -3]) / 256.0
  v = np.array([10.0, 20.0, 0.0, 40.0, 80.0, 30.0, 60.0, 5.0])
  # Mirrored borders: index 0 is v1, -1 is v2, -2 is v3; 9 is v8, 10 is v7, 11 is v6.
  padded = np.concatenate([[v[2], v[1], v[0]], v, [v[7], v[6], v[5]]])  # padded[i + 2] = v(i)
  expected = [weights @ padded[(2 * x - 4) + 2 : (2 * x + 3) + 2 + 1] for x in range(1, 5)]
  out = metrics.imresize(v[None, :], output_shape=(1, 4))
  np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-12)
  # The first output reads v3, v2, v1 (mirrored), v1 ... v5.
  first = -3 * 0 - 9 * 20 + 29 * 10 + 111 * 10 + 111 * 20 + 29 * 0 - 9 * 40 - 3 * 80
  assert out[0, 0] == pytest.approx(first / 256, abs=1e-12)


def test_imresize_reproduces_a_ramp_in_the_interior():
  # A symmetric kernel whose weights sum to 1 reproduces linear functions away from the borders:
  # output pixel x (1-based) takes the ramp's value at u = x / scale + 0.5 (1 - 1 / scale).
  ramp = np.arange(32, dtype=np.float64)[None, :]  # value i - 1 at 1-based pixel i
  for scale, out_length in ((2.0, 64), (0.25, 8), (0.5, 16)):
    out = metrics.imresize(ramp, output_shape=(1, out_length))[0]
    x = np.arange(1, out_length + 1)
    u = x / scale + 0.5 * (1 - 1 / scale)
    width = 4 / min(scale, 1.0)
    interior = (u - width / 2 >= 1) & (u + width / 2 <= 32)
    assert interior.sum() >= 3
    np.testing.assert_allclose(out[interior], u[interior] - 1, atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2, 3, 4])
def test_imresize_keeps_constant_images_and_sizes(scale):
  image = np.full((13, 17, 3), 77, np.uint8)
  out = metrics.imresize(image, scale)
  assert out.dtype == np.uint8
  assert out.shape == (math.ceil(13 * scale), math.ceil(17 * scale), 3)
  assert np.all(out == 77)
  floats = metrics.imresize(np.full((13, 17), 0.3, np.float32), scale)
  assert floats.dtype == np.float32
  np.testing.assert_allclose(floats, 0.3, atol=1e-6)


def test_imresize_up_then_down_stays_close_to_a_smooth_image():
  y, x = np.mgrid[0:24, 0:32]
  smooth = 100 + 40 * np.sin(x / 5.0) * np.cos(y / 7.0)
  round_trip = metrics.imresize(metrics.imresize(smooth, 2), 0.5)
  assert round_trip.shape == smooth.shape
  assert np.abs(round_trip - smooth)[3:-3, 3:-3].max() < 0.5


def test_matlab_uint8_rounds_half_away_from_zero_and_saturates():
  values = np.array([0.5, 1.5, 2.5, 2.49, -0.4, -3.0, 254.5, 300.0])
  np.testing.assert_array_equal(metrics.matlab_uint8(values), [1, 2, 3, 2, 0, 0, 255, 255])
  # Two pixels 2, 3 shrunk to one: the mirrored kernel is symmetric about their middle, so the
  # value is exactly 2.5, which MATLAB rounds up (numpy's rint would give 2).
  out = metrics.imresize(np.array([[2, 3]], np.uint8), output_shape=(1, 1))
  assert out.dtype == np.uint8 and out[0, 0] == 3
  assert metrics.imresize(np.array([[2.0, 3.0]]), output_shape=(1, 1))[0, 0] == 2.5


def test_imresize_uint8_rounds_after_each_axis_smaller_scale_first():
  image = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
  floats = image.astype(np.float64)
  rounded = lambda a: np.clip(np.floor(a + 0.5), 0, 255)  # noqa: E731
  # Columns shrink more (30 -> 9, 0.3) than rows (20 -> 8, 0.4): columns first, then rows.
  columns_first = rounded(metrics.imresize(floats, output_shape=(20, 9)))
  expected = rounded(metrics.imresize(columns_first, output_shape=(8, 9)))
  out = metrics.imresize(image, output_shape=(8, 9))
  np.testing.assert_array_equal(out, expected)
  rows_first = rounded(metrics.imresize(floats, output_shape=(8, 30)))
  other_order = rounded(metrics.imresize(rows_first, output_shape=(8, 9)))
  once = rounded(metrics.imresize(floats, output_shape=(8, 9)))
  assert np.any(out != other_order) and np.any(out != once)


def test_imresize_rejects_bad_arguments():
  with pytest.raises(ValueError, match="exactly one"):
    metrics.imresize(RAMP8, 0.5, output_shape=(4, 4))
  with pytest.raises(ValueError, match="exactly one"):
    metrics.imresize(RAMP8)
  with pytest.raises(ValueError, match="uint8 or float"):
    metrics.imresize(RAMP8.astype(np.int16), 0.5)
  with pytest.raises(ValueError, match="shape"):
    metrics.imresize(np.zeros((2, 2, 2, 2)), 0.5)


def test_rgb_to_y_by_hand():
  image = np.array([[[255, 0, 0], [0, 0, 0], [255, 255, 255], [10, 200, 30]]], np.uint8)
  expected = [
    16 + 65.481,
    16.0,
    16 + 65.481 + 128.553 + 24.966,  # 235
    16 + 65.481 * 10 / 255 + 128.553 * 200 / 255 + 24.966 * 30 / 255,
  ]
  np.testing.assert_allclose(metrics.rgb_to_y(image)[0], expected, rtol=0, atol=1e-12)
  np.testing.assert_allclose(metrics.rgb_to_y(image / 255.0)[0], expected, rtol=0, atol=1e-12)
  assert metrics.rgb_to_y(image)[0, 2] == pytest.approx(235.0)


def test_shave():
  image = np.arange(7 * 9).reshape(7, 9)
  np.testing.assert_array_equal(metrics.shave(image, 2), image[2:5, 2:7])
  np.testing.assert_array_equal(metrics.shave(image, 0), image)
  with pytest.raises(ValueError, match="cannot shave 4"):
    metrics.shave(image, 4)


def test_psnr_against_direct_computation():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 256, size=(9, 11)).astype(np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-9, 10, size=a.shape), 0, 255).astype(np.uint8)
  diff = a.astype(np.float64) - b.astype(np.float64)
  mse = sum(float(d) ** 2 for d in diff.ravel()) / diff.size
  assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-10)
  assert metrics.psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(
    10 * math.log10(255**2 / mse), abs=1e-9
  )
  assert metrics.psnr(a, a) == math.inf
  with pytest.raises(ValueError, match="differ in shape"):
    metrics.psnr(a, a[:-1])


def _ssim_by_loops(a, b, size=11, sigma=1.5, data_range=255.0):
  """Mean SSIM over every 'valid' window, each window's statistics summed pixel by pixel."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  half = size // 2
  window = np.zeros((size, size))
  for i in range(size):
    for j in range(size):
      window[i, j] = math.exp(-((i - half) ** 2 + (j - half) ** 2) / (2 * sigma**2))
  window /= window.sum()
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  values = []
  for top in range(a.shape[0] - size + 1):
    for left in range(a.shape[1] - size + 1):
      mu_a = mu_b = saa = sbb = sab = 0.0
      for i in range(size):
        for j in range(size):
          w, x, y = window[i, j], a[top + i, left + j], b[top + i, left + j]
          mu_a += w * x
          mu_b += w * y
          saa += w * x * x
          sbb += w * y * y
          sab += w * x * y
      var_a, var_b, cov = saa - mu_a**2, sbb - mu_b**2, sab - mu_a * mu_b
      values.append(
        (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
      )
  return sum(values) / len(values)


def test_ssim_against_loop_computation():
  rng = np.random.default_rng(2)
  y, x = np.mgrid[0:15, 0:18]
  a = 120 + 60 * np.sin(x / 3.0) + rng.normal(0, 10, size=x.shape)
  b = a + rng.normal(0, 15, size=a.shape)
  assert metrics.ssim(a, b) == pytest.approx(_ssim_by_loops(a, b), abs=1e-12)
  assert metrics.ssim(b, a) == pytest.approx(metrics.ssim(a, b), abs=1e-15)
  assert metrics.ssim_map(a, b).shape == (5, 8)
  assert metrics.ssim(a, b) < 0.99


def test_ssim_properties():
  rng = np.random.default_rng(3)
  a = rng.integers(0, 256, size=(20, 23)).astype(np.float64)
  assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
  assert metrics.ssim(a, a + 20) < 1.0
  assert metrics.ssim(a, 255 - a) < 0
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(a[:10], a[:10])
  with pytest.raises(ValueError, match=r"\[H, W\]"):
    metrics.ssim(np.zeros((12, 12, 3)), np.zeros((12, 12, 3)))


def test_gaussian_window_is_fspecial():
  taps = metrics.gaussian_window()
  window = np.outer(taps, taps)
  assert window.sum() == pytest.approx(1.0)
  # fspecial('gaussian', 11, 1.5): exp(-(x^2 + y^2) / 4.5), normalised; ratio centre / corner.
  assert window[5, 5] / window[0, 0] == pytest.approx(math.exp(50 / 4.5))


def test_sr_scores_on_shaved_y():
  rng = np.random.default_rng(4)
  hr = rng.integers(0, 256, size=(24, 26, 3), dtype=np.uint8)
  sr = np.clip(hr.astype(int) + rng.integers(-20, 21, size=hr.shape), 0, 255).astype(np.uint8)
  weights = np.array([65.481, 128.553, 24.966]) / 255
  y_sr = (16 + sr.astype(np.float64) @ weights)[3:-3, 3:-3]
  y_hr = (16 + hr.astype(np.float64) @ weights)[3:-3, 3:-3]
  scores = metrics.sr_scores(sr, hr, 3)
  mse = np.mean((y_sr - y_hr) ** 2)
  assert scores["psnr"] == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-10)
  assert scores["ssim"] == pytest.approx(_ssim_by_loops(y_sr, y_hr), abs=1e-12)
  with pytest.raises(ValueError, match="uint8"):
    metrics.sr_scores(sr.astype(np.float32), hr, 3)
