"""AutoAugment operations against PIL (DeepVoltaire's reference ops), the policy's wiring and
statistics, random erasing against a numpy transcription of the paper's Algorithm 1, the factories."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps
from scipy import stats

from tfpets.classify import augment
from tfpets.classify.augment import AutoAugment, RandomErasing

FILL = (128, 128, 128)


# --- PIL references: DeepVoltaire's ImageNetPolicy operations, magnitudes from the bins. -------


def pil_rotate(image, degrees):
  rotated = image.convert("RGBA").rotate(degrees)
  fill = Image.new("RGBA", rotated.size, (128,) * 4)
  return Image.composite(rotated, fill, rotated).convert(image.mode)


def pil_operation(image, name, magnitude_bin, sign):
  shear = np.linspace(0, 0.3, 10)[magnitude_bin] * sign
  shift = np.linspace(0, 150 / 331, 10)[magnitude_bin] * sign
  enhance = 1 + np.linspace(0, 0.9, 10)[magnitude_bin] * sign
  bits = int(np.round(np.linspace(8, 4, 10), 0).astype(int)[magnitude_bin])
  threshold = np.linspace(256, 0, 10)[magnitude_bin]
  w, h = image.size
  affine = lambda matrix, resample: image.transform(
    image.size, Image.AFFINE, matrix, resample, fillcolor=FILL
  )
  operations = {
    "shearX": lambda: affine((1, shear, 0, 0, 1, 0), Image.BICUBIC),
    "shearY": lambda: affine((1, 0, 0, shear, 1, 0), Image.BICUBIC),
    "translateX": lambda: affine((1, 0, shift * w, 0, 1, 0), Image.NEAREST),
    "translateY": lambda: affine((1, 0, 0, 0, 1, shift * h), Image.NEAREST),
    "rotate": lambda: pil_rotate(image, np.linspace(0, 30, 10)[magnitude_bin] * sign),
    "color": lambda: ImageEnhance.Color(image).enhance(enhance),
    "contrast": lambda: ImageEnhance.Contrast(image).enhance(enhance),
    "sharpness": lambda: ImageEnhance.Sharpness(image).enhance(enhance),
    "brightness": lambda: ImageEnhance.Brightness(image).enhance(enhance),
    "posterize": lambda: ImageOps.posterize(image, bits),
    "solarize": lambda: ImageOps.solarize(image, threshold),
    "autocontrast": lambda: ImageOps.autocontrast(image),
    "equalize": lambda: ImageOps.equalize(image),
    "invert": lambda: ImageOps.invert(image),
  }
  return operations[name]()


def pil_batch(images, name, magnitude_bin, sign):
  out = [
    np.asarray(pil_operation(Image.fromarray(image), name, magnitude_bin, sign))
    for image in images.astype(np.uint8)
  ]
  return np.stack(out).astype(np.float32)


def noise_images():
  """A noise image and a low-contrast one (autocontrast and equalize stretch it)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 29, 36, 3))
  images[1] = images[1] // 5 + 70
  return images.astype(np.float32)


def smooth_image():
  """A smooth image: bilinear and PIL's bicubic resampling agree on it away from the edges."""
  y, x = np.mgrid[0:40, 0:48].astype(np.float32)
  image = np.stack([128 + 100 * np.sin(x / 5) * np.cos(y / 7), 2 * x + 3 * y, 250 - 4 * x], -1)
  return np.clip(np.round(image), 0, 255)[None]


EXACT = ["posterize", "solarize", "autocontrast", "equalize", "invert", "contrast", "brightness"]


@pytest.mark.parametrize("name", EXACT)
def test_pixel_operations_equal_pil(name):
  images = noise_images()
  for magnitude_bin in range(10):
    for sign in (1, -1):
      got = augment.apply_operation(images, name, magnitude_bin, sign).numpy()
      want = pil_batch(images, name, magnitude_bin, sign)
      np.testing.assert_array_equal(got, want, err_msg=f"{name} bin {magnitude_bin} sign {sign}")


@pytest.mark.parametrize("name", ["color", "sharpness"])
def test_blend_operations_match_pil_to_one_level(name):
  """Keras' float greyscale / smoothing is not rounded as PIL's uint8 one is: off by one at most."""
  images = noise_images()
  for magnitude_bin in (0, 3, 6, 9):
    for sign in (1, -1):
      got = augment.apply_operation(images, name, magnitude_bin, sign).numpy()
      want = pil_batch(images, name, magnitude_bin, sign)
      np.testing.assert_allclose(got, want, atol=1.0, err_msg=f"{name} {magnitude_bin} {sign}")
      assert np.mean(got != want) < 0.3
  # The magnitude matters: bin 9 moves pixels much further than bin 1.
  assert np.abs(augment.apply_operation(images, name, 9).numpy() - images).mean() > 10


@pytest.mark.parametrize("name", ["rotate", "translateX", "translateY"])
def test_nearest_geometric_operations_match_pil(name):
  """Nearest-neighbour resampling: identical but for rare ties decided the other way in float32."""
  images = noise_images()
  for magnitude_bin in (1, 3, 8, 9):
    for sign in (1, -1):
      got = augment.apply_operation(images, name, magnitude_bin, sign).numpy()
      want = pil_batch(images, name, magnitude_bin, sign)
      assert np.mean(got != want) < 0.01, (name, magnitude_bin, sign)
      assert np.mean(got != images) > 0.3  # and the image did move


def test_rotate_sign_is_pil_counter_clockwise():
  image = np.zeros((1, 21, 21, 3), np.float32)
  image[0, 10, 15:] = 255  # a bar to the right of the centre
  rotated = augment.rotate(image, 90.0).numpy()[0, ..., 0]
  assert rotated[:6, 10].min() == 255 and rotated[10, 15:].max() == 0  # now above the centre


@pytest.mark.parametrize("name", ["shearX", "shearY"])
def test_shear_matches_pil_within_interpolation(name):
  """Bilinear here, bicubic in PIL: close on a smooth image except at the filled edges."""
  image = smooth_image()
  for magnitude_bin in (2, 5, 9):
    for sign in (1, -1):
      got = augment.apply_operation(image, name, magnitude_bin, sign).numpy()
      want = pil_batch(image, name, magnitude_bin, sign)
      diff = np.abs(got - want)
      assert diff.mean() < 1.5 and np.mean(diff > 3) < 0.05, (name, magnitude_bin, sign)
      # The opposite sign is far off: the direction is PIL's.
      other = pil_batch(image, name, magnitude_bin, -sign)
      assert np.abs(got - other).mean() > 4 * diff.mean()


def test_per_image_signs_and_unknown_operation():
  images = noise_images()
  got = augment.apply_operation(images, "rotate", 9, tf.constant([1.0, -1.0])).numpy()
  np.testing.assert_array_equal(got[0], augment.apply_operation(images[:1], "rotate", 9, 1)[0])
  np.testing.assert_array_equal(got[1], augment.apply_operation(images[1:], "rotate", 9, -1)[0])
  with pytest.raises(ValueError, match="operation must be one of"):
    augment.apply_operation(images, "cutout", 3)
  with pytest.raises(ValueError, match="magnitude_bin must be in 0..9"):
    augment.apply_operation(images, "rotate", 10)


# --- The policy. --------------------------------------------------------------------------------

# Cubuk et al. 2019, Table 9 (ImageNet), written as in the paper; "-" for no magnitude.
PAPER_TABLE = """
Posterize 0.4 8, Rotate 0.6 9 | Solarize 0.6 5, AutoContrast 0.6 - | Equalize 0.8 -, Equalize 0.6 -
Posterize 0.6 7, Posterize 0.6 6 | Equalize 0.4 -, Solarize 0.2 4 | Equalize 0.4 -, Rotate 0.8 8
Solarize 0.6 3, Equalize 0.6 - | Posterize 0.8 5, Equalize 1.0 - | Rotate 0.2 3, Solarize 0.6 8
Equalize 0.6 -, Posterize 0.4 6 | Rotate 0.8 8, Color 0.4 0 | Rotate 0.4 9, Equalize 0.6 -
Equalize 0.0 -, Equalize 0.8 - | Invert 0.6 -, Equalize 1.0 - | Color 0.6 4, Contrast 1.0 8
Rotate 0.8 8, Color 1.0 2 | Color 0.8 8, Solarize 0.8 7 | Sharpness 0.4 7, Invert 0.6 -
ShearX 0.6 5, Equalize 1.0 - | Color 0.4 0, Equalize 0.6 - | Equalize 0.4 -, Solarize 0.2 4
Solarize 0.6 5, AutoContrast 0.6 - | Invert 0.6 -, Equalize 1.0 - | Color 0.6 4, Contrast 1.0 8
Equalize 0.8 -, Equalize 0.6 -
"""


def test_policy_is_the_papers_table():
  rows = [sub for line in PAPER_TABLE.strip().splitlines() for sub in line.split(" | ")]
  assert len(rows) == len(augment.IMAGENET_POLICY) == 25
  for row, sub_policy in zip(rows, augment.IMAGENET_POLICY):
    for text, (name, probability, magnitude_bin) in zip(row.split(", "), sub_policy):
      paper_name, paper_probability, paper_bin = text.split()
      assert name.lower() == paper_name.lower()
      assert probability == float(paper_probability)
      if paper_bin != "-":
        assert magnitude_bin == int(paper_bin)


def test_every_sub_policy_applies_its_two_operations_in_order():
  """Forced choices: image i gets sub-policy i % 25 with the drawn apply flags and signs; the
  output is op2(op1(x)) from `apply_operation`, each only where its flag is set."""
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (50, 12, 14, 3)).astype(np.float32)
  indices = np.arange(50) % 25
  apply = np.concatenate([np.ones((25, 2), bool), rng.random((25, 2)) < 0.5])
  signs = np.where(rng.random((50, 2)) < 0.5, -1.0, 1.0)
  layer = AutoAugment(seed=0)
  got = layer.apply_policy(images, indices, apply, signs).numpy()
  for i in range(50):
    want = images[i : i + 1]
    for k, (name, _, magnitude_bin) in enumerate(augment.IMAGENET_POLICY[indices[i]]):
      if apply[i, k]:
        want = augment.apply_operation(want, name, magnitude_bin, signs[i, k]).numpy()
    np.testing.assert_array_equal(got[i], want[0], err_msg=f"image {i}")
  # Color then solarize (sub-policy 17) differs from solarize then color: the order is tested.
  (color_op, solarize_op) = augment.IMAGENET_POLICY[16]
  swapped = augment.apply_operation(images[16:17], solarize_op[0], solarize_op[2])
  swapped = augment.apply_operation(swapped, color_op[0], color_op[2], signs[16, 0]).numpy()
  assert not np.array_equal(got[16], swapped[0])


def test_choices_are_uniform_with_the_policy_probabilities():
  layer = AutoAugment(seed=5)
  n = 20000
  indices, apply, signs = (t.numpy() for t in layer.sample_choices(n))
  counts = np.bincount(indices, minlength=25)
  assert stats.chisquare(counts).pvalue > 1e-3
  probabilities = np.array([[op[1] for op in sub] for sub in augment.IMAGENET_POLICY])
  for i in range(25):
    rate = apply[indices == i].mean(axis=0)
    bound = 5 * np.sqrt(0.25 / counts[i])
    np.testing.assert_allclose(rate, probabilities[i], atol=bound)
  assert set(np.unique(signs)) == {-1.0, 1.0} and abs(signs.mean()) < 0.03


def test_layer_honours_choices_end_to_end_in_tf_data():
  """Two sub-policies whose outcomes tell the path apart on a constant image of 100: (invert 0.25;
  identity) gives 155 or 100, (posterize to 4 bits; invert 0.5) gives 96 or 159."""
  policy = (
    (("invert", 0.25, 0), ("brightness", 1.0, 0)),
    (("posterize", 1.0, 9), ("invert", 0.5, 0)),
  )
  images = np.full((600, 2, 2, 3), 100.0, np.float32)
  dataset = tf.data.Dataset.from_tensor_slices(images).batch(200).map(AutoAugment(policy, seed=2))
  out = np.concatenate([batch.numpy() for batch in dataset])
  values = out[:, 0, 0, 0]
  assert np.all(out == values[:, None, None, None])  # one outcome per image
  counts = [np.sum(values == v) for v in (100, 155, 96, 159)]
  assert sum(counts) == 600
  assert stats.chisquare(counts, 600 * np.array([0.375, 0.125, 0.25, 0.25])).pvalue > 1e-3
  # The same seed in a fresh pipeline replays the same augmentations.
  again = tf.data.Dataset.from_tensor_slices(images).batch(200).map(AutoAugment(policy, seed=2))
  np.testing.assert_array_equal(np.concatenate([b.numpy() for b in again]), out)


def test_layer_on_single_images_value_range_and_inference():
  images = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
  layer = AutoAugment(value_range=(0, 1), seed=1)
  dataset = tf.data.Dataset.from_tensor_slices(images / 255.0).map(layer)
  outputs = np.stack([image.numpy() for image in dataset])
  assert outputs.shape == images.shape and outputs.min() >= 0 and outputs.max() <= 1
  np.testing.assert_allclose(outputs * 255, np.round(outputs * 255), atol=1e-3)  # PIL's levels
  np.testing.assert_array_equal(layer(images / 255.0, training=False), images / 255.0)
  restored = AutoAugment.from_config(layer.get_config())
  assert restored.policy == layer.policy and restored.value_range == (0.0, 1.0)


# --- Random erasing. ----------------------------------------------------------------------------


def paper_boxes(n, height, width, p, scale, ratio, rng):
  """Zhong et al. Algorithm 1 (yu4u's `get_random_eraser`): redraw until the box fits."""
  boxes = []
  for _ in range(n):
    if rng.random() > p:
      continue
    while True:
      area = rng.uniform(*scale) * height * width
      aspect = rng.uniform(*ratio)
      h, w = int(np.sqrt(area * aspect)), int(np.sqrt(area / aspect))
      left, top = rng.integers(0, width), rng.integers(0, height)
      if left + w <= width and top + h <= height:
        boxes.append((h, w))
        break
  return np.array(boxes)


@pytest.mark.parametrize("settings", [{}, RandomErasing.GRABAI], ids=["paper", "grabai"])
def test_erasing_boxes_follow_the_paper(settings):
  height, width, n = 60, 80, 6000
  layer = RandomErasing(seed=4, **settings)
  boxes = {k: v.numpy() for k, v in layer.sample_boxes(n, height, width).items()}
  erase = boxes["erase"]
  assert abs(erase.mean() - layer.probability) < 5 * np.sqrt(0.25 / n)
  h, w = boxes["height"][erase], boxes["width"][erase]
  assert np.all(boxes["top"][erase] + h <= height) and np.all(boxes["left"][erase] + w <= width)
  reference = paper_boxes(
    n, height, width, layer.probability, layer.scale, layer.ratio, np.random.default_rng(0)
  )
  area, ref_area = h * w / (height * width), reference[:, 0] * reference[:, 1] / (height * width)
  assert stats.ks_2samp(area, ref_area).pvalue > 1e-3
  assert (
    stats.ks_2samp(h / np.maximum(w, 1), reference[:, 0] / np.maximum(reference[:, 1], 1)).pvalue
    > 1e-3
  )
  # Not a different sampler that happens to match: Keras' side-by-side one gives other areas.
  keras_like = np.sqrt(np.random.default_rng(1).uniform(0.02, 0.33, (2, 4000))).prod(axis=0)
  assert stats.ks_2samp(area, keras_like).pvalue < 1e-6


def test_erasing_images(tmp_path):
  n = 400
  images = np.full((n, 24, 30, 3), -1.0, np.float32)  # outside the fill range: erased pixels show
  dataset = tf.data.Dataset.from_tensor_slices(images).batch(100).map(RandomErasing(seed=7))
  out = np.concatenate([b.numpy() for b in dataset])
  erased = out != -1.0
  per_image = erased.any(axis=(1, 2, 3))
  assert abs(per_image.mean() - 0.5) < 5 * np.sqrt(0.25 / n)
  for image, mask in zip(out[per_image], erased[per_image]):
    rows, cols = np.where(mask.any(axis=(1, 2)))[0], np.where(mask.any(axis=(0, 2)))[0]
    box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert box.all() and box.sum() == mask.sum()  # one full rectangle, every channel
    values = image[mask]
    assert len(np.unique(values)) == 1 and 0 <= values[0] <= 255  # one value
  grabai = RandomErasing.grabai(seed=8)
  out = grabai(images[:100]).numpy()
  erased = out != -1.0
  assert abs(erased.any(axis=(1, 2, 3)).mean() - 0.8) < 0.2
  values = out[erased]
  assert values.min() >= 0 and values.max() <= 255
  assert len(np.unique(values)) > 0.9 * values.size  # a value per pixel and channel
  assert np.abs(values.mean() - 127.5) < 5  # uniform over [0, 255]
  single = grabai(images[0]).numpy()
  assert single.shape == images[0].shape
  np.testing.assert_array_equal(grabai(images, training=False), images)


def test_erasing_leaves_images_where_no_box_fits():
  layer = RandomErasing(probability=1.0, scale=(0.9, 1.0), ratio=(4.0, 5.0), max_attempts=5)
  images = np.zeros((20, 10, 10, 3), np.float32) - 1
  np.testing.assert_array_equal(layer(images).numpy(), images)  # the box is taller than the image


def test_erasing_config_and_errors():
  layer = RandomErasing.grabai(seed=3)
  restored = RandomErasing.from_config(layer.get_config())
  assert (restored.probability, restored.scale, restored.pixel_level) == (0.8, (0.02, 0.3), True)
  with pytest.raises(ValueError, match="probability must be in"):
    RandomErasing(probability=1.5)
  with pytest.raises(ValueError, match="scale must be"):
    RandomErasing(scale=(0.5, 0.2))


# --- Factories. ---------------------------------------------------------------------------------


def test_augmentation_factory():
  assert augment.augmentation("none") is None
  assert isinstance(augment.augmentation("autoaugment"), AutoAugment)
  assert isinstance(augment.augmentation("randaugment"), keras.layers.RandAugment)
  paper, grabai = augment.augmentation("erasing"), augment.augmentation("erasing_grabai")
  assert (paper.probability, paper.scale[1], paper.pixel_level) == (0.5, 0.4, False)
  assert (grabai.probability, grabai.scale[1], grabai.pixel_level) == (0.8, 0.3, True)
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
  out = augment.augmentation("randaugment", seed=1)(images).numpy()
  assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
  with pytest.raises(ValueError, match="augmentation must be one of"):
    augment.augmentation("autoaugment_v0")


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_batch_mixing_mixes_images_and_labels_alike(name):
  """Image i is constant i * 10: every mixed pixel is a combination of two images' values, and
  for MixUp the image value equals the labels' weighted value."""
  values = np.arange(8, dtype=np.float32) * 10
  images = np.broadcast_to(values[:, None, None, None], (8, 16, 16, 3)).copy()
  labels = tf.one_hot(np.arange(8), 8)
  mixed_images, mixed_labels = augment.batch_mixing(name, seed=3)(images, labels)
  mixed_images, mixed_labels = mixed_images.numpy(), mixed_labels.numpy()
  np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-5)
  assert (mixed_labels > 0).sum(axis=1).max() <= 2
  if name == "mixup":
    np.testing.assert_allclose(mixed_images[:, 0, 0, 0], mixed_labels @ values, atol=1e-3)
    assert np.all(mixed_images == mixed_images[:, :1, :1, :])
  else:
    for image, label in zip(mixed_images, mixed_labels):
      assert set(np.unique(image)) <= set(values[label > 0])
  assert augment.batch_mixing("none") is None
  with pytest.raises(ValueError, match="batch mixing must be one of"):
    augment.batch_mixing("augmix")


def test_pipeline_under_mixed_precision_in_tf_data():
  """The augmentations keep float32 under a float16 global policy, batched in a tf.data map."""
  images = np.random.default_rng(2).integers(0, 256, (8, 24, 24, 3)).astype(np.float32)
  labels = tf.one_hot(np.arange(8) % 3, 3)
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    autoaugment, erasing = (
      augment.augmentation("autoaugment", 1),
      augment.augmentation("erasing", 1),
    )
    mix = augment.batch_mixing("mixup", seed=1)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    dataset = dataset.map(lambda x, y: (erasing(autoaugment(x)), y)).map(mix)
    for batch_images, batch_labels in dataset:
      assert batch_images.dtype == tf.float32 and batch_images.shape == (4, 24, 24, 3)
      np.testing.assert_allclose(batch_labels.numpy().sum(axis=1), 1.0, rtol=1e-5)
      assert 0 <= batch_images.numpy().min() and batch_images.numpy().max() <= 255
  finally:
    keras.mixed_precision.set_global_policy(previous)
