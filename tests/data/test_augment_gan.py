"""A dataset grown with generated images (`tfpets.data.augment_gan`, `--stage=augment`): counts per
class and split, the synthetic marks, untouched originals, the three label sources (the classifier's
kept and rejected samples against a numpy reference), the pipeline and the stage end to end."""

from __future__ import annotations

import csv
import io
import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.conftest import launch
from tests.data.source_fixtures import image_array
from tfpets.data import augment_gan, convert, pipeline
from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult
from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError
from tfpets.gan import generate, networks, presets

CLASSES = ["abyssinian", "bengal", "birman"]
PER_CLASS_IMAGES = 8  # -> train 4, val 2, test 2 per class
SPLITS = {"train": 4, "val": 2, "test": 2}
ABSL_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+\.py:\d+\] ")


def read_examples(shards_dir, split) -> list[dict]:
  files = shards.split_files(shards_dir, split)
  ds = tf.data.TFRecordDataset(files).map(lambda s: shards.parse(s, decode_image=False))
  return list(ds.as_numpy_iterator())


def png_pixels(path) -> np.ndarray:
  return np.asarray(Image.open(path).convert("RGB"))


def jpeg_pixels(encoded: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def save_generator(directory, c_dim: int, seed: int):
  """A 16 px demo generator saved as a snapshot folder; returns the folder and the generator."""
  keras.utils.set_random_seed(seed)
  config = presets.network_config("demo", 16, c_dim=c_dim, channel_base=256, channel_max=16)
  _, _, generator_ema = networks.build_networks(config)
  networks.save_networks(directory, config, {"G_ema": generator_ema})
  return str(directory), generator_ema


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """Class folders of small PNGs converted into train / val / test (4 / 2 / 2 per class)."""
  root = tmp_path_factory.mktemp("pets")
  for label, name in enumerate(CLASSES):
    (root / "folders" / name).mkdir(parents=True)
    for i in range(PER_CLASS_IMAGES):
      pixels = image_array(20 + i, 18 + label, seed=100 * label + i)
      Image.fromarray(pixels).save(root / "folders" / name / f"{name}_{i}.png")
  options = convert.ConvertOptions(
    splits="train=0.5,val=0.25,test=0.25", dedupe="off", gan_resolution=0, workers=1
  )
  convert.convert_dataset(f"folder:{root / 'folders'}", root, options)
  return root / "records" / "shards"


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
  return save_generator(tmp_path_factory.mktemp("conditional"), len(CLASSES), seed=1)


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
  return [save_generator(tmp_path_factory.mktemp(f"plain{i}"), 0, seed=2 + i) for i in range(2)]


@pytest.fixture(scope="module")
def grown(dataset, conditional, tmp_path_factory):
  out = tmp_path_factory.mktemp("grown")
  options = augment_gan.AugmentOptions(per_class=3, network=conditional[0], seed_start=40)
  return out, augment_gan.augment_dataset(dataset, out, options)


# --- Counts, marks, names -----------------------------------------------------------------------


def test_counts_per_class_and_split_match_the_request(dataset, grown):
  out, result = grown
  before = shards.read_manifest(dataset)
  after = shards.read_manifest(out / "records" / "shards")
  assert after["class_names"] == before["class_names"] == CLASSES
  for split, n in SPLITS.items():
    added = 3 if split == "train" else 0
    assert after["splits"][split]["per_class"] == {c: n + added for c in CLASSES}
    assert after["synthetic"][split]["per_class"] == {c: added for c in CLASSES}
    assert after["synthetic"][split]["num_examples"] == 3 * added
  assert after["augmentation"]["requested_per_class"] == {c: 3 for c in CLASSES}
  assert result.written == result.requested == {c: 3 for c in CLASSES}


def test_generated_images_are_marked_named_in_train_and_are_the_generators(grown, conditional):
  out, _ = grown
  shards_dir = out / "records" / "shards"
  for split in ("val", "test"):
    assert not any(ex["synthetic"] for ex in read_examples(shards_dir, split))
  synthetic = [ex for ex in read_examples(shards_dir, "train") if ex["synthetic"]]
  assert len(synthetic) == 9
  generator = conditional[1]
  for label, name in enumerate(CLASSES):
    mine = sorted(
      (ex for ex in synthetic if ex["label"] == label), key=lambda ex: ex["id"].decode()
    )
    assert [ex["id"].decode() for ex in mine] == [f"gan_{name}_seed{s:06d}" for s in (40, 41, 42)]
    want = generate.generate_images(generator, [40, 41, 42], class_index=label)
    for ex, pixels in zip(mine, want):
      path = out / "images" / "synthetic" / name / f"{ex['id'].decode()}.png"
      assert ex["source_path"].decode() == str(path) and ex["class_name"].decode() == name
      np.testing.assert_array_equal(png_pixels(path), pixels)
      # The shards hold the same image as JPEG: close, not bit-equal.
      assert np.abs(jpeg_pixels(ex["encoded"]).astype(int) - pixels).mean() < 12


def test_originals_are_unchanged_in_their_splits(dataset, grown):
  out, _ = grown
  for split in SPLITS:
    before = {ex["id"]: ex for ex in read_examples(dataset, split)}
    after = {
      ex["id"]: ex for ex in read_examples(out / "records" / "shards", split) if not ex["synthetic"]
    }
    assert sorted(after) == sorted(before)
    for key, ex in before.items():
      assert after[key]["encoded"] == ex["encoded"]
      np.testing.assert_array_equal(jpeg_pixels(after[key]["encoded"]), jpeg_pixels(ex["encoded"]))
      assert after[key]["label"] == ex["label"] and after[key]["source_path"] == ex["source_path"]


def test_the_pipeline_reads_the_grown_dataset_and_its_marks(grown):
  out, _ = grown
  shards_dir = str(out / "records" / "shards")
  ds = pipeline.shard_dataset(shards_dir, "train", batch_size=5, image_size=16, training=False)
  batches = list(ds)
  assert sum(int(b["label"].shape[0]) for b in batches) == 3 * (4 + 3)
  assert sum(int(tf.reduce_sum(tf.cast(b["synthetic"], tf.int32))) for b in batches) == 9
  assert batches[0]["image"].shape[1:] == (16, 16, 3)


def test_shards_written_without_the_mark_read_as_real(grown):
  out, _ = grown
  files = shards.split_files(out / "records" / "shards", "train")
  for serialized in tf.data.TFRecordDataset(files).take(20):
    example = tf.train.Example.FromString(serialized.numpy())
    del example.features.feature["image/synthetic"]
    assert not bool(shards.parse(tf.constant(example.SerializeToString()))["synthetic"])


def test_a_grown_dataset_grows_again_and_keeps_its_marks(grown, conditional, tmp_path):
  out, _ = grown
  options = augment_gan.AugmentOptions(per_class=1, network=conditional[0], seed_start=90)
  augment_gan.augment_dataset(out / "records" / "shards", tmp_path, options)
  manifest = shards.read_manifest(tmp_path / "records" / "shards")
  assert manifest["synthetic"]["train"]["per_class"] == {c: 4 for c in CLASSES}
  assert manifest["splits"]["train"]["per_class"] == {c: 8 for c in CLASSES}


# --- The data layer: generated images only ever train ------------------------------------------


def test_synthetic_records_go_to_train_whatever_the_split_fractions(tmp_path):
  records = []
  for i in range(12):
    path = tmp_path / f"img_{i}.png"
    Image.fromarray(image_array(12, 12, seed=i)).save(path)
    records.append(ImageRecord(str(path), i % 2, f"c{i % 2}", synthetic=i >= 8))
  options = convert.ConvertOptions(
    splits="train=0.5,val=0.5", subset="0.5", dedupe="off", gan_resolution=0, workers=1
  )
  convert.convert(
    SourceResult(records, ["c0", "c1"], rejects_lib.RejectsReport()),
    tmp_path / "records",
    tmp_path / "reports",
    options,
  )
  shards_dir = tmp_path / "records" / "shards"
  train = read_examples(shards_dir, "train")
  synthetic = sorted(ex["id"].decode() for ex in train if ex["synthetic"])
  assert synthetic == sorted(f"img_{i}" for i in range(8, 12))
  assert not any(ex["synthetic"] for ex in read_examples(shards_dir, "val"))
  # The subset (half of each class's two training images) applies to the real images only.
  assert sum(not ex["synthetic"] for ex in train) == 2
  assert shards.read_manifest(shards_dir)["synthetic"]["val"]["num_examples"] == 0


# --- Per-class generators and ratios -----------------------------------------------------------


def test_per_class_generators_and_a_ratio_of_the_training_counts(dataset, unconditional, tmp_path):
  (first, g_first), (second, g_second) = unconditional
  options = augment_gan.AugmentOptions(
    ratio=0.5, label_from="per_class", class_networks={"abyssinian": first, "birman": second}
  )
  result = augment_gan.augment_dataset(dataset, tmp_path, options)
  # 0.5 x 4 training images = 2; bengal has no generator.
  assert result.requested == result.written == {"abyssinian": 2, "bengal": 0, "birman": 2}
  manifest = shards.read_manifest(tmp_path / "records" / "shards")
  assert manifest["synthetic"]["train"]["per_class"] == result.written
  for name, generator in (("abyssinian", g_first), ("birman", g_second)):
    want = generate.generate_images(generator, [0, 1])
    for seed in (0, 1):
      path = tmp_path / "images" / "synthetic" / name / f"gan_{name}_seed{seed:06d}.png"
      np.testing.assert_array_equal(png_pixels(path), want[seed])


# --- Classifier labels -------------------------------------------------------------------------


def red_mean_classifier(path, centre: float, scale: float) -> str:
  """softmax([0, scale * (mean red - centre), -50]): bengal when red, abyssinian when not, never
  birman."""
  inputs = keras.Input((16, 16, 3))
  dense = keras.layers.Dense(3, activation="softmax")
  outputs = dense(keras.layers.GlobalAveragePooling2D()(inputs))
  kernel = np.zeros((3, 3), np.float32)
  kernel[0, 1] = scale
  dense.set_weights([kernel, np.array([0.0, -scale * centre, -50.0], np.float32)])
  keras.Model(inputs, outputs).save(str(path))
  return str(path)


def expected_decisions(probabilities, threshold, quota):
  """The rule the docs state, in order of seeds: low probability, full class, or kept."""
  needed, decisions = [quota] * 3, []
  for row in probabilities:
    if not sum(needed):
      break
    label = int(np.argmax(row))
    if row[label] < threshold:
      decisions.append((label, "below"))
    elif not needed[label]:
      decisions.append((label, "full"))
    else:
      needed[label] -= 1
      decisions.append((label, "kept"))
  return decisions


def test_classifier_keeps_confident_samples_and_reports_every_rejection(
  dataset, unconditional, tmp_path
):
  network, generator = unconditional[0]
  seeds = list(range(12))
  red = generate.generate_images(generator, seeds)[..., 0].astype(np.float64).mean(axis=(1, 2))
  centre, scale = float(np.median(red)), 3.0 / max(float(red.std()), 1e-3)
  logits = np.stack([np.zeros(12), scale * (red - centre), np.full(12, -50.0)], axis=1)
  probabilities = np.exp(logits - logits.max(1, keepdims=True))
  probabilities /= probabilities.sum(1, keepdims=True)
  top = np.sort(probabilities.max(1))
  # Midway across the widest gap among the middle samples, far from any float32 rounding.
  gap = max(range(3, 8), key=lambda i: top[i + 1] - top[i])
  threshold = float(top[gap] + top[gap + 1]) / 2
  want = expected_decisions(probabilities, threshold, quota=2)
  assert {d for _, d in want} == {"below", "full", "kept"}

  classifier = red_mean_classifier(tmp_path / "red.keras", centre, scale)
  options = augment_gan.AugmentOptions(
    per_class=2,
    label_from="classifier",
    network=network,
    classifier=classifier,
    threshold=threshold,
    max_draws=12,
    batch_size=5,
  )
  result = augment_gan.augment_dataset(dataset, tmp_path / "out", options)
  got = [
    (s.label, "kept" if not s.reason else "below" if "below" in s.reason else "full")
    for s in result.samples
  ]
  assert got == want
  np.testing.assert_allclose(
    [s.probability for s in result.samples], probabilities.max(1)[: len(want)], atol=1e-4
  )
  kept = {CLASSES[label]: 0 for label in range(3)}
  for label, decision in want:
    kept[CLASSES[label]] += decision == "kept"
  manifest = shards.read_manifest(tmp_path / "out" / "records" / "shards")
  assert manifest["synthetic"]["train"]["per_class"] == kept
  with open(result.conversion.rejects_csv) as f:
    rows = [row for row in csv.DictReader(f) if row["file"].startswith("gan_seed")]
  rejected = [(seed, d) for seed, (_, d) in enumerate(want) if d != "kept"]
  assert [row["file"] for row in rows] == [f"gan_seed{seed:06d}" for seed, _ in rejected]
  for row, (seed, decision) in zip(rows, rejected):
    assert row["action"] == rejects_lib.SKIPPED
    assert CLASSES[int(np.argmax(probabilities[seed]))] in row["reason"]
    assert ("below the threshold" in row["reason"]) == (decision == "below")
  with open(result.samples_csv) as f:
    assert len(list(csv.DictReader(f))) == len(want)


def test_keras_files_and_savedmodels_of_uint8_or_float_inputs_give_the_same_probabilities(
  tmp_path,
):
  images = np.stack([image_array(16, 16, seed=s) for s in range(4)])
  red = images[..., 0].astype(np.float64).mean(axis=(1, 2))
  logits = np.stack([np.zeros(4), 0.05 * (red - 128.0), np.full(4, -50.0)], axis=1)
  want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  keras_file = red_mean_classifier(tmp_path / "red.keras", 128.0, 0.05)
  keras.saving.load_model(keras_file).export(str(tmp_path / "saved"), verbose=False)
  # A uint8 input of another size: the images are resized to it, which keeps their mean colour.
  inputs = keras.Input((8, 8, 3), dtype="uint8")
  pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1.0)(inputs))
  dense = keras.layers.Dense(3, activation="softmax")
  keras.Model(inputs, dense(pooled)).save(str(tmp_path / "small.keras"))
  for path in (keras_file, str(tmp_path / "saved")):
    np.testing.assert_allclose(augment_gan.Classifier(path, 3)(images), want, atol=1e-5)
  small = augment_gan.Classifier(str(tmp_path / "small.keras"), 3)
  assert small.model_input(images).dtype == tf.uint8
  assert small.model_input(images).shape == (4, 8, 8, 3)
  mean_after = small.model_input(images).numpy()[..., 0].astype(np.float64).mean(axis=(1, 2))
  np.testing.assert_allclose(mean_after, red, atol=1.0)


def test_a_classify_run_labels_with_the_softmax_of_its_evaluation_view(tmp_path):
  from tfpets.classify import data, train

  keras.utils.set_random_seed(0)
  config = train.recipe(train.ClassifyConfig(model="vit", vit_size="tiny", image_size=32))
  model = train.build_model(config, len(CLASSES))
  train.save_classifier(model, tmp_path / "run" / "models", config, CLASSES, 32)
  images = np.stack([image_array(40, 40, seed=s) for s in range(3)])
  logits = model(data.eval_images(tf.constant(images), 32)).numpy().astype(np.float64)
  want = np.exp(logits - logits.max(1, keepdims=True))
  want /= want.sum(1, keepdims=True)
  for run in (tmp_path / "run", tmp_path / "run" / "models"):
    classifier = augment_gan.Classifier(str(run), len(CLASSES))
    assert classifier.model_input(images).shape == images.shape  # no resize before its own
    np.testing.assert_allclose(classifier(images), want, atol=1e-5)


def test_a_classifier_without_probabilities_is_refused(dataset, unconditional, tmp_path):
  inputs = keras.Input((16, 16, 3))
  logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs))
  keras.Model(inputs, logits).save(str(tmp_path / "logits.keras"))
  options = augment_gan.AugmentOptions(
    per_class=1,
    label_from="classifier",
    network=unconditional[0][0],
    classifier=str(tmp_path / "logits.keras"),
    max_draws=2,
  )
  with pytest.raises(ArgumentError, match="softmax") as info:
    augment_gan.augment_dataset(dataset, tmp_path / "out", options)
  assert info.value.argument == "classifier"


# --- Errors --------------------------------------------------------------------------------------


def test_options_are_checked_before_any_file_is_read():
  with pytest.raises(ArgumentError, match="nothing to generate") as info:
    augment_gan.AugmentOptions(network="g")
  assert info.value.argument == "per_class"
  with pytest.raises(ArgumentError, match="not both") as info:
    augment_gan.AugmentOptions(per_class=2, ratio=0.5, network="g")
  assert info.value.argument == "ratio"
  with pytest.raises(ArgumentError) as info:
    augment_gan.AugmentOptions(per_class=2, label_from="classifier", network="g")
  assert info.value.argument == "classifier"
  with pytest.raises(ArgumentError, match="'x' is not NAME=NETWORK"):
    augment_gan.parse_class_networks("a=b,x")
  assert augment_gan.parse_class_networks(" a = r/1 ,b=r/2") == {"a": "r/1", "b": "r/2"}


def test_a_generator_of_the_wrong_kind_names_the_flag_argument(dataset, unconditional, tmp_path):
  plain = augment_gan.AugmentOptions(per_class=1, network=unconditional[0][0])
  with pytest.raises(ArgumentError, match="unconditional") as info:
    augment_gan.augment_dataset(dataset, tmp_path, plain)
  assert info.value.argument == "network"
  unknown = augment_gan.AugmentOptions(
    per_class=1, label_from="per_class", class_networks={"sphynx": unconditional[0][0]}
  )
  with pytest.raises(ArgumentError, match="'sphynx' is not a class") as info:
    augment_gan.augment_dataset(dataset, tmp_path, unknown)
  assert info.value.argument == "class_networks"


# --- The stage ------------------------------------------------------------------------------------


def test_stage_end_to_end_and_a_bad_flag(dataset, conditional, tmp_path):
  records = dataset.parents[1]  # the data stage's workdir
  result = launch(
    "--stage=augment",
    f"--records={records}",
    f"--network={conditional[0]}",
    "--aug_per_class=2",
    f"--workdir={tmp_path / 'run'}",
  )
  assert result.returncode == 0, result.stderr[-2000:]
  manifest = shards.read_manifest(tmp_path / "run" / "records" / "shards")
  assert manifest["synthetic"]["train"]["per_class"] == {c: 2 for c in CLASSES}
  summary = json.loads((tmp_path / "run" / "reports" / "augment.json").read_text())
  assert summary["synthetic_per_class"] == {c: 2 for c in CLASSES}

  bad = launch(
    "--stage=augment",
    f"--records={records}",
    f"--network={conditional[0]}",
    "--aug_per_class=2",
    "--aug_ratio=0.5",
    f"--workdir={tmp_path / 'bad'}",
    env={"TF_CPP_MIN_LOG_LEVEL": None},  # the user's default, which the launcher keeps quiet
  )
  lines = [line for line in bad.stderr.strip().splitlines() if not ABSL_RECORD.match(line)]
  assert bad.returncode == 2 and len(lines) == 1, bad.stderr
  assert lines[0].startswith("tfpets: error: --aug_ratio=0.5: give images per class or a ratio")
