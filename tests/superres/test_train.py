"""Tests of tfpets.superres.train: the patch stream, the schedule, training that lowers the loss, a
killed run that resumes, residual training, fine-tuning, and the folder checks."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import REPO
from tests.keras_callbacks import KillAtEpoch, Killed, Record
from tests.landmarks.test_tensorboard_events import read_events
from tests.superres.images import smooth_image
from tfpets.errors import ArgumentError
from tfpets.runtime import training
from tfpets.runtime.tensorboard import SummaryWriter
from tfpets.superres import train

SCALE, PATCH = 2, 8
HR_PATCH = SCALE * PATCH
TINY = dict(variant="dbpns", scale=SCALE, patch_size=PATCH, batch_size=4, val_images=2)

# The four transforms of dataset.py's augment(): its three coins compose to one of these.
TRANSFORMS = {
  "identity": lambda x: x,
  "flip_up_down": lambda x: x[::-1],
  "flip_left_right": lambda x: x[:, ::-1],
  "rotate_180": lambda x: x[::-1, ::-1],
}


def _image(height, width, seed):
  """Smooth colour waves with mild noise, kept within [40, 215] (where TF and PIL agree)."""
  return smooth_image(height, width, seed, centre=128, amplitude=60, low=40, high=215)


@pytest.fixture
def hr_images(tmp_path):
  """Six PNGs of 20 to 30 pixels a side, one of them in a subfolder: {path: pixels}."""
  folder = tmp_path / "hr"
  (folder / "more").mkdir(parents=True)
  images = {}
  for i in range(6):
    path = (folder / "more" if i == 5 else folder) / f"image{i}.png"
    images[str(path)] = _image(20 + 2 * i, 30 - 2 * i, seed=i)
    Image.fromarray(images[str(path)]).save(path)
  return folder, images


def _write_rejects(folder):
  """Two images smaller than the 16 px HR patch and a file that is no image."""
  Image.fromarray(_image(12, 40, seed=9)).save(folder / "thin.png")
  Image.fromarray(_image(10, 10, seed=10)).save(folder / "more" / "tiny.png")
  (folder / "broken.jpg").write_bytes(b"not an image at all")


def _stream(paths, augment, batches, seed=3, start=0):
  dataset = train.training_pairs(
    paths,
    scale=SCALE,
    patch_size=PATCH,
    batch_size=4,
    augment=augment,
    seed=seed,
    start=start,
  )
  pairs = [(lr.numpy(), hr.numpy()) for lr, hr in dataset.take(batches)]
  return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


def _as_uint8(patches):
  scaled = np.asarray(patches, np.float64) * 255.0
  np.testing.assert_allclose(scaled, np.rint(scaled), atol=1e-3)  # 8-bit values exactly
  return np.rint(scaled).astype(np.uint8)


def _crop_sources(patch, images):
  """The (path, top, left) places where `patch` (uint8) occurs in `images`."""
  size = patch.shape[0]
  places = []
  for path, image in images.items():
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size, 3))[:, :, 0]
    hits = np.argwhere(np.all(windows == patch, axis=(2, 3, 4)))
    places.extend((path, int(top), int(left)) for top, left in hits)
  return places


def test_patches_pair_each_hr_crop_with_its_bicubic_downscale(hr_images):
  folder, images = hr_images
  paths = train.list_hr_images(str(folder))
  assert sorted(paths) == sorted(images)  # the subfolder's image too
  lr, hr = _stream(paths, augment=False, batches=6)
  assert lr.shape == (24, PATCH, PATCH, 3) and hr.shape == (24, HR_PATCH, HR_PATCH, 3)
  assert lr.dtype == hr.dtype == np.float32
  hr_uint8, lr_uint8 = _as_uint8(hr), _as_uint8(lr)
  sources = [_crop_sources(patch, images) for patch in hr_uint8]
  assert all(sources), "every HR patch is a crop of one of the images"
  # 24 patches are four passes over the six images: each image is used once per pass.
  for chunk in range(4):
    used = {places[0][0] for places in sources[6 * chunk : 6 * chunk + 6]}
    assert used == set(images)
  assert len({places[0][1:] for places in sources}) > 12  # crop places vary

  # The official dataset.py shrinks with PIL's BICUBIC, the same antialiased Keys kernel. PIL also
  # rounds to 8 bits between its horizontal and vertical passes: up to half a level more error,
  # which tips the final rounding of some pixels (about one in six here) by one level. Only values
  # the first pass pushes past 0 or 255, which PIL clips there, could differ more; these images
  # stay within [40, 215].
  pil = np.stack(
    [np.asarray(Image.fromarray(p).resize((PATCH, PATCH), Image.BICUBIC)) for p in hr_uint8]
  )
  difference = np.abs(lr_uint8.astype(int) - pil.astype(int))
  assert difference.max() <= 1
  assert np.mean(difference == 0) > 0.75


def test_augmentation_is_one_flip_or_half_turn_of_the_whole_pair(hr_images):
  folder, _ = hr_images
  paths = train.list_hr_images(str(folder))
  plain_lr, plain_hr = _stream(paths, augment=False, batches=8)
  lr, hr = _stream(paths, augment=True, batches=8)
  seen = set()
  for i in range(len(lr)):
    matches = [
      name
      for name, t in TRANSFORMS.items()
      if np.array_equal(t(plain_hr[i]), hr[i]) and np.array_equal(t(plain_lr[i]), lr[i])
    ]
    assert matches, f"patch {i}: LR and HR are not the same flip or half turn of the crop"
    seen.update(matches)
  assert seen == set(TRANSFORMS)  # 32 draws of four equally likely transforms


def test_the_stream_restarts_at_any_element(hr_images):
  folder, _ = hr_images
  paths = train.list_hr_images(str(folder))
  lr, hr = _stream(paths, augment=True, batches=5)
  later_lr, later_hr = _stream(paths, augment=True, batches=2, start=12)
  np.testing.assert_array_equal(later_lr, lr[12:20])
  np.testing.assert_array_equal(later_hr, hr[12:20])
  other_lr, _ = _stream(paths, augment=True, batches=5, seed=4)
  assert not np.array_equal(other_lr, lr)


def test_learning_rate_is_a_tenth_from_half_the_steps():
  schedule = train.learning_rate_schedule(1e-4, total_steps=10)
  rates = [float(schedule(step)) for step in range(10)]
  np.testing.assert_allclose(rates, [1e-4] * 5 + [1e-5] * 5, rtol=1e-6)
  optimizer = train.make_optimizer(schedule)
  assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.999, 1e-8)


class _Rates(keras.callbacks.Callback):
  """The learning rate each training step uses, and each epoch's loss."""

  def __init__(self):
    super().__init__()
    self.rates, self.losses = [], []

  def on_train_batch_begin(self, batch, logs=None):
    self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

  def on_epoch_end(self, epoch, logs=None):
    self.losses.append(logs["loss"])


def test_training_lowers_the_loss_and_reports_what_it_skipped(hr_images, tmp_path):
  folder, _ = hr_images
  _write_rejects(folder)
  config = train.SuperResConfig(**TINY, residual=False, epochs=4, steps_per_epoch=5)
  workdir = tmp_path / "run"
  rates = _Rates()
  writer = SummaryWriter(workdir / "logs")
  summary = train.train_superres(
    str(folder), workdir, config, writer=writer, extra_callbacks=[rates]
  )
  writer.close()
  # The network starts far from the target (it is not residual) and learns it.
  assert rates.losses[-1] < 0.6 * rates.losses[0], rates.losses
  np.testing.assert_allclose(rates.rates, [1e-4] * 10 + [1e-5] * 10, rtol=1e-6)
  assert summary["optimizer_steps"] == 20 and summary["decay_step"] == 10
  assert (summary["train_images"], summary["val_images"]) == (4, 2)
  assert (summary["skipped_too_small"], summary["skipped_undecodable"]) == (2, 1)
  with open(workdir / "reports" / train.REJECTS_FILE, newline="") as f:
    rejected = {row["file"].rsplit("/", 1)[-1]: row["reason"] for row in csv.DictReader(f)}
  assert set(rejected) == {"thin.png", "tiny.png", "broken.jpg"}
  assert "40x12 is smaller than the 16x16 HR patch" in rejected["thin.png"]
  report = json.loads((workdir / "reports" / train.REPORT_FILE).read_text())
  assert report["best_val_psnr"] == summary["best_val_psnr"]
  assert report["last_epoch"]["val_psnr"] == pytest.approx(summary["last_epoch"]["val_psnr"])

  events = read_events(workdir / "logs")
  assert [step for step, _ in events["superres/val_psnr"]] == [1, 2, 3, 4]
  best_psnr = max(value for _, value in events["superres/val_psnr"])
  assert best_psnr == pytest.approx(summary["best_val_psnr"], rel=1e-6)
  logged_rates = [value for _, value in events["superres/learning_rate"]]
  np.testing.assert_allclose(logged_rates, [1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)
  grids = events["superres/lr_bicubic_sr_hr"]
  assert len(grids) == 4
  # Two validation patches as rows of three 16 px tiles with 2 px gaps.
  assert grids[-1][1].shape == (2 * 18 + 2, 3 * 18 + 2, 3)


def _build(config, output_zero):
  keras.utils.set_random_seed(0)
  model = train.build_model(config)
  if output_zero:
    layer = model.get_layer("output_conv_conv")
    layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
  return model


def test_residual_training_adds_the_bicubic_upscale():
  lr = np.random.default_rng(0).uniform(0, 1, (2, 5, 7, 3)).astype(np.float32)
  bicubic = tf.image.resize(lr, (10, 14), "bicubic").numpy()
  residual = _build(train.SuperResConfig(**TINY, residual=True), output_zero=True)
  np.testing.assert_allclose(residual(lr), bicubic, atol=1e-6)
  plain = _build(train.SuperResConfig(**TINY, residual=False), output_zero=True)
  np.testing.assert_array_equal(plain(lr), np.zeros_like(bicubic))
  # None takes the variant's setting: the shipped DBPN weights are plain, DBPN-RES-MR64-3 residual.
  assert not train.SuperResConfig(variant="dbpn").uses_residual
  assert train.SuperResConfig(variant="dbpn_res_mr64_3").uses_residual


def test_a_killed_run_resumes_to_the_model_of_an_uninterrupted_run(hr_images, tmp_path):
  folder, _ = hr_images
  config = train.SuperResConfig(**TINY, residual=True, epochs=3, steps_per_epoch=2)
  killed_dir = tmp_path / "killed"
  kill = KillAtEpoch(2)
  with pytest.raises(Killed):
    train.train_superres(str(folder), killed_dir, config, extra_callbacks=[kill])
  checkpoints, models_dir, _ = train.paths(killed_dir)
  state = training.read_state(checkpoints)
  assert state["epoch"] == 2 and not state.get("done") and "best" in state
  assert not (models_dir / train.MODEL_FILE).exists()

  record = Record()
  summary = train.train_superres(str(folder), killed_dir, config, extra_callbacks=[record])
  assert record.epochs == [2] and record.start_iterations == 4
  for restored, saved in zip(record.start_weights, kill.weights_before_kill):
    np.testing.assert_array_equal(restored, saved)
  assert summary["optimizer_steps"] == 6 and summary["epochs_run"] == 3

  whole = train.train_superres(str(folder), tmp_path / "whole", config)
  assert whole["optimizer_steps"] == 6 and whole["best_epoch"] == summary["best_epoch"]
  assert whole["best_val_psnr"] == pytest.approx(summary["best_val_psnr"], abs=1e-4)

  model = keras.saving.load_model(models_dir / train.MODEL_FILE)
  whole_model = keras.saving.load_model(tmp_path / "whole" / "models" / train.MODEL_FILE)
  for resumed, straight in zip(model.get_weights(), whole_model.get_weights()):
    np.testing.assert_allclose(resumed, straight, atol=1e-5)
  from_weights = train.build_model(config)
  from_weights.load_weights(str(models_dir / train.WEIGHTS_FILE))
  lr = np.random.default_rng(1).uniform(0, 1, (1, 6, 9, 3)).astype(np.float32)
  upscaled = np.asarray(model(lr))
  assert upscaled.shape == (1, 12, 18, 3) and upscaled.dtype == np.float32
  np.testing.assert_allclose(upscaled, from_weights(lr), atol=1e-6)
  assert "bicubic" in [layer.name for layer in model.layers]  # trained residual, saved residual

  again = Record()
  assert train.train_superres(str(folder), killed_dir, config, extra_callbacks=[again])
  assert again.epochs == []  # done: nothing trains


def test_fine_tuning_starts_from_the_given_weights(hr_images, tmp_path):
  folder, _ = hr_images
  config = train.SuperResConfig(**dict(TINY, val_images=0), epochs=1, steps_per_epoch=1)
  # A residual source for a plain run: the bicubic adds no weights. Trained a step, so that its
  # files carry Adam's state too, which the fine-tuning run must not take over.
  source = _build(dataclasses.replace(config, residual=True), output_zero=False)
  source.compile(optimizer="adam", loss="mae")
  source.fit(np.ones((1, 8, 8, 3)), np.ones((1, 16, 16, 3)), epochs=1, verbose=0)
  source.save(tmp_path / "source.keras")
  source.save_weights(tmp_path / "source.weights.h5")
  for name in ("source.keras", "source.weights.h5"):
    record = Record()
    tuned = dataclasses.replace(config, init=str(tmp_path / name))
    workdir = tmp_path / f"from_{name}"
    summary = train.train_superres(str(folder), workdir, tuned, extra_callbacks=[record])
    for started, given in zip(record.start_weights, source.get_weights()):
      np.testing.assert_array_equal(started, given)
    assert record.start_iterations == 0 and summary["optimizer_steps"] == 1
    assert summary["init"].endswith(name) and summary["best_epoch"] is None

  other = _build(dataclasses.replace(config, scale=4), output_zero=False)
  other.save(tmp_path / "x4.keras")
  other.save_weights(tmp_path / "x4.weights.h5")
  wrong = dataclasses.replace(config, init=str(tmp_path / "x4.keras"))
  with pytest.raises(ArgumentError, match=r"init=.*x4\.keras.*up1_up_conv1_deconv holds shapes"):
    train.train_superres(str(folder), tmp_path / "wrong", wrong)
  wrong = dataclasses.replace(config, init=str(tmp_path / "x4.weights.h5"))
  with pytest.raises(ArgumentError, match=r"init=.*x4\.weights\.h5'?: does not fit dbpns_x2"):
    train.train_superres(str(folder), tmp_path / "wrong", wrong)
  missing = dataclasses.replace(config, init=str(tmp_path / "missing.weights.h5"))
  with pytest.raises(ArgumentError, match="missing.weights.h5'?: no such file"):
    train.train_superres(str(folder), tmp_path / "missing", missing)


def test_small_images_are_counted_and_listed_as_skipped(hr_images):
  folder, images = hr_images
  _write_rejects(folder)
  scan = train.scan_images(train.list_hr_images(str(folder)), HR_PATCH)
  assert sorted(scan.usable) == sorted(images)
  assert (scan.too_small, scan.undecodable) == (2, 1)
  reasons = {e.path.rsplit("/", 1)[-1]: e.reason for e in scan.rejects.entries}
  assert "10x10 is smaller than the 16x16 HR patch" in reasons["tiny.png"]
  assert "not an image" in reasons["broken.jpg"]


def test_a_folder_without_usable_images_is_named(tmp_path):
  folder = tmp_path / "useless"
  folder.mkdir()
  config = train.SuperResConfig(**TINY)
  with pytest.raises(ArgumentError, match=r"hr_dir=.*useless'?: no usable images \(0 image"):
    train.train_superres(str(folder), tmp_path / "run", config)
  Image.fromarray(_image(10, 40, seed=0)).save(folder / "small.png")
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  with pytest.raises(ArgumentError, match=r"useless.*2 image files: 1 smaller .*, 1 undecodable"):
    train.train_superres(str(folder), tmp_path / "run", config)
  with pytest.raises(ArgumentError, match="hr_dir=.*nowhere'?: no such folder"):
    train.train_superres(str(tmp_path / "nowhere"), tmp_path / "run", config)


def test_bad_settings_name_their_argument():
  with pytest.raises(ArgumentError, match="variant='edsr': is not one of"):
    train.SuperResConfig(variant="edsr")
  with pytest.raises(ArgumentError, match="scale=3: is not one of 2, 4, 8"):
    train.SuperResConfig(scale=3)
  with pytest.raises(ArgumentError, match="init='model.pth': must be a .keras"):
    train.SuperResConfig(init="model.pth")
  with pytest.raises(ArgumentError, match="patch_size=4: too small to validate"):
    train.SuperResConfig(scale=2, patch_size=4)
  assert train.SuperResConfig(scale=2, patch_size=4, val_images=0).hr_patch == 8


def test_training_under_mixed_precision_saves_a_float32_model(hr_images, tmp_path):
  folder, _ = hr_images
  before = keras.config.dtype_policy().name
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    config = train.SuperResConfig(**TINY, epochs=1, steps_per_epoch=2)
    summary = train.train_superres(str(folder), tmp_path, config)
  finally:
    keras.mixed_precision.set_global_policy(before)
  assert np.isfinite(summary["last_epoch"]["loss"]) and np.isfinite(summary["best_val_psnr"])
  model = keras.saving.load_model(tmp_path / "models" / train.MODEL_FILE)
  assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
  assert model(np.zeros((1, 8, 8, 3), np.float32)).dtype == "float32"


# A tiny training under MirroredStrategy over two logical CPUs, which exist only if configured
# before TensorFlow starts, hence a subprocess; prints the summary as JSON.
MIRRORED_RUN = textwrap.dedent(
  """
  import json, sys
  import tensorflow as tf
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from tfpets.runtime import strategy as strategy_lib
  from tfpets.superres import train
  strategy = strategy_lib.make_strategy("mirrored", num_cpu_replicas=2)
  config = train.SuperResConfig(**json.loads(sys.argv[3]))
  summary = train.train_superres(sys.argv[1], sys.argv[2], config, strategy=strategy)
  print(json.dumps(summary))
  """
)


def test_training_runs_under_a_two_replica_mirrored_strategy(hr_images, tmp_path):
  folder, _ = hr_images
  config = dict(TINY, epochs=2, steps_per_epoch=2)
  result = subprocess.run(
    [sys.executable, "-c", MIRRORED_RUN, str(folder), str(tmp_path / "run"), json.dumps(config)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["optimizer_steps"] == 4 and np.isfinite(summary["last_epoch"]["loss"])
  model = keras.saving.load_model(tmp_path / "run" / "models" / train.MODEL_FILE)
  assert model(np.zeros((1, 8, 8, 3), np.float32)).shape == (1, 16, 16, 3)
