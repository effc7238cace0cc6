"""Classifier training: recipes, schedules, a run that is killed and resumed, the saved classifier,
and one step under MirroredStrategy against the single-device step."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.classify.conftest import CLASSES
from tests.classify.test_wsdan import tiny_extractor
from tests.conftest import REPO
from tests.keras_callbacks import KillAtEpoch, Killed, Record
from tfpets.classify import train, wsdan
from tfpets.errors import ArgumentError
from tfpets.runtime import training

TINY = dict(model="vit", vit_size="tiny", image_size=32, batch_size=4, epochs=3, steps_per_epoch=2)


def test_recipes_fill_only_what_the_config_leaves_unset():
  paper = train.recipe(train.ClassifyConfig(model="wsdan", wsdan_variant="paper"))
  assert (paper.optimizer, paper.learning_rate, paper.schedule) == ("sgd", 1e-3, "exponential")
  cars = train.recipe(train.ClassifyConfig(model="wsdan", wsdan_variant="cars"))
  assert (cars.schedule, cars.plateau_factor, cars.plateau_patience) == ("plateau", 0.1, 10)
  xception = train.recipe(train.ClassifyConfig(model="xception"))
  assert (xception.optimizer, xception.augment, xception.class_weights) == (
    "adabound",
    "erasing_grabai",
    True,
  )
  assert (xception.plateau_factor, xception.plateau_patience) == (0.2, 5)
  mine = train.recipe(
    train.ClassifyConfig(model="xception", optimizer="sgd", learning_rate=0.5, class_weights=False)
  )
  assert (mine.optimizer, mine.learning_rate, mine.class_weights) == ("sgd", 0.5, False)


def test_schedules_follow_their_formulas():
  config = train.ClassifyConfig(learning_rate=0.1, schedule="exponential", decay_epochs=2)
  assert [train.learning_rate_at(config, e) for e in range(5)] == pytest.approx(
    [0.1, 0.1, 0.09, 0.09, 0.081]
  )
  cosine = train.ClassifyConfig(learning_rate=0.1, schedule="cosine", epochs=4)
  expected = [0.05 * (1 + math.cos(math.pi * e / 4)) for e in range(5)]
  assert [train.learning_rate_at(cosine, e) for e in range(5)] == pytest.approx(expected)


def test_bad_settings_name_their_argument():
  with pytest.raises(ArgumentError, match="mixing='mixup': WS-DAN"):
    train.ClassifyConfig(model="wsdan", mixing="mixup")
  with pytest.raises(ArgumentError, match="schedule='linear': is not one of"):
    train.ClassifyConfig(schedule="linear")


@pytest.mark.slow
def test_killed_training_resumes_and_saves_a_loadable_classifier(class_records, tmp_path):
  config = train.ClassifyConfig(**TINY, schedule="plateau", plateau_patience=1)
  kill = KillAtEpoch(2)
  with pytest.raises(Killed):
    train.train_classifier(class_records, tmp_path, config, extra_callbacks=[kill])
  checkpoints, models_dir = train.paths(tmp_path)
  state = training.read_state(checkpoints)
  assert state["epoch"] == 2 and not state.get("done") and "plateau" in state

  record = Record()
  summary = train.train_classifier(class_records, tmp_path, config, extra_callbacks=[record])
  assert record.epochs == [2] and record.start_iterations == 4  # two epochs of two steps came back
  for restored, saved in zip(record.start_weights, kill.weights_before_kill):
    np.testing.assert_array_equal(restored, saved)
  assert summary["epochs_run"] == 3 and 1 <= summary["best_epoch"] <= 3

  model, names, loaded_config = train.load_classifier(tmp_path)
  assert names == list(CLASSES) and loaded_config.image_size == 32
  images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  best = train.build_model(loaded_config, len(CLASSES))
  best.load_weights(str(tmp_path / "checkpoints" / "classify" / training.BEST_WEIGHTS_FILE))
  np.testing.assert_allclose(model(images), best(images), atol=1e-5)

  again = Record()
  assert train.train_classifier(class_records, tmp_path, config, extra_callbacks=[again])
  assert again.epochs == []  # done: nothing trains
  description = json.loads((models_dir / train.CONFIG_FILE).read_text())
  assert description["class_names"] == list(CLASSES)


def test_load_classifier_names_the_folder(tmp_path):
  with pytest.raises(ArgumentError, match="classifier=.*no classifier.json"):
    train.load_classifier(tmp_path)


# One fit step of a classifier on a fixed batch, single-device and under MirroredStrategy over two
# logical CPUs (BatchNorm synchronised); printed as JSON. Logical CPUs exist only if configured
# before TensorFlow starts, hence a subprocess. `noise` is how far two single-device steps of the
# same maths land apart (synchronised BatchNorm computes its moments in another order): the
# float32 rounding that deep BatchNorm stacks amplify, the yardstick for the mirrored difference.
MIRRORED_STEP = textwrap.dedent(
  """
  import json, sys
  import numpy as np, tensorflow as tf, keras
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from tfpets.classify import models, train
  config = train.recipe(train.ClassifyConfig(**json.loads(sys.argv[1])))
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (4, config.image_size, config.image_size, 3)).astype(np.float32)
  labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
  def step(strategy, synchronized):
    keras.utils.set_random_seed(1)
    with strategy.scope():
      model = train.build_model(config, 3)
      if synchronized:
        models.sync_batch_norm(model)
      train.compile_model(model, train.make_optimizer(config), config, one_hot=True)
    before = model.get_weights()
    model.fit(tf.data.Dataset.from_tensors((images, labels)), epochs=1, verbose=0)
    return before, model.get_weights()
  largest = lambda xs, ys: max(float(np.max(np.abs(x - y))) for x, y in zip(xs, ys))
  start, one = step(tf.distribute.get_strategy(), False)
  _, same = step(tf.distribute.get_strategy(), True)
  _, two = step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), True)
  print(json.dumps({"max_difference": largest(one, two), "noise": largest(one, same),
                    "step_size": largest(one, start)}))
  """
)


@pytest.mark.slow
def test_one_mirrored_step_equals_the_single_device_step():
  """A tiny ViT through Keras `fit`; BatchNorm's synchronised statistics are checked the same way
  on WS-DAN (tests/classify/test_wsdan.py), whose step is the one with its own maths."""
  config = dict(model="vit", vit_size="tiny", image_size=32, optimizer="sgd", learning_rate=0.1)
  result = subprocess.run(
    [sys.executable, "-c", MIRRORED_STEP, json.dumps(config)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures["step_size"] > 1e-3, figures  # the step trained
  assert figures["max_difference"] < 2e-5 + 4 * figures["noise"], figures


def test_attention_overlays_pair_each_image_with_its_mean_map():
  config = wsdan.WSDANConfig(variant="paper", num_classes=3, image_size=16, num_maps=4)
  model = wsdan.build_wsdan(config, extractor=tiny_extractor("paper", 16))
  images = np.random.default_rng(0).uniform(0, 255, (3, 16, 16, 3)).astype(np.float32)
  pairs = train.attention_overlays(model, images)
  assert pairs.shape == (6, 16, 16, 3) and pairs.dtype == np.uint8
  np.testing.assert_array_equal(pairs[0::2], np.rint(images).astype(np.uint8))
  # Overlay = half the image plus half the min-max normalised mean map in red.
  maps = model.attention_maps(images).numpy().mean(axis=-1, keepdims=True)
  low, high = maps.min(axis=(1, 2, 3), keepdims=True), maps.max(axis=(1, 2, 3), keepdims=True)
  heat = tf.image.resize((maps - low) / (high - low + 1e-6), [16, 16]).numpy()
  expected = 0.5 * images
  expected[..., :1] += 0.5 * 255.0 * heat
  np.testing.assert_allclose(pairs[1::2], np.clip(np.rint(expected), 0, 255), atol=1)


@pytest.mark.slow
def test_training_under_mixed_precision_keeps_float32_logits(class_records, tmp_path):
  before = keras.config.dtype_policy().name
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    config = train.ClassifyConfig(**dict(TINY, epochs=1))
    summary = train.train_classifier(class_records, tmp_path, config)
    model, _, _ = train.load_classifier(tmp_path)
    assert model(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"
  finally:
    keras.mixed_precision.set_global_policy(before)
  assert np.isfinite(summary["last_epoch"]["loss"])
