"""A converted dataset grown with generated images (docs/augment.md).

As in the pet paper (Darvish et al., arXiv 2109.00891), StyleGAN2-ADA images are added to the
classifier's training set. The new dataset holds every original image in its own split, unchanged,
plus generated images in the train split only. Labels come from a class-conditional generator, from
one generator per class, or from a classifier that keeps a sample of an unconditional generator only
when its top class probability reaches a threshold. Everything goes through the same conversion as
any dataset (`tfpets.data.convert.convert`); generated images are marked in the shards
(`image/synthetic`), in the manifest (`synthetic` counts) and in their names
(`gan_<class>_seed000123`).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from tfpets.data import convert
from tfpets.data import rejects as rejects_lib
from tfpets.data.records import ImageRecord
from tfpets.data.sources import SourceResult
from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError
from tfpets.gan import generate, snapshot

LABEL_SOURCES = ("conditional", "per_class", "classifier")
SOURCE_KIND = "gan"  # ImageRecord.source of a generated image
SYNTHETIC_DIR = "synthetic"  # under the output's images/ folder, one sub-folder per class
DEFAULT_DRAWS_PER_IMAGE = 20  # classifier labels: seeds drawn per requested image, at most
_SEEDS_PER_CALL = 256  # bounds the memory of one generate_images call


@dataclasses.dataclass
class AugmentOptions:
  """What to generate and how to label it; arguments are named as the errors name them."""

  per_class: int = 0  # generated images per class
  ratio: float = 0.0  # or this times each class's training count (rounded half up)
  label_from: str = "conditional"
  network: str = ""  # conditional and classifier labels: the one generator
  class_networks: Mapping[str, str] = dataclasses.field(default_factory=dict)  # per_class labels
  classifier: str = ""  # classifier labels: a Keras model file or a SavedModel folder
  threshold: float = 0.9  # classifier labels: the least top class probability kept
  truncation_psi: Optional[float] = None  # None: the convention's default
  seed_start: int = 0
  max_draws: int = 0  # classifier labels: seeds tried at most; 0: 20 per requested image
  noise_mode: str = "const"
  convention: str = "pytorch"
  batch_size: int = 32
  records_per_shard: int = 1024
  workers: int = 0
  seed: int = 0  # order of the written training split

  def __post_init__(self):
    # Every check that needs no file, so a bad option fails before any network is read.
    if self.label_from not in LABEL_SOURCES:
      raise ArgumentError("label_from", self.label_from, f"not one of {', '.join(LABEL_SOURCES)}")
    if self.per_class < 0 or self.ratio < 0 or not math.isfinite(self.ratio):
      bad = ("per_class", self.per_class) if self.per_class < 0 else ("ratio", self.ratio)
      raise ArgumentError(*bad, "must be >= 0")
    if self.per_class and self.ratio:
      raise ArgumentError("ratio", self.ratio, "give images per class or a ratio, not both")
    if not self.per_class and not self.ratio:
      raise ArgumentError(
        "per_class",
        self.per_class,
        "nothing to generate: give images per class, or a ratio of each class's training images",
      )
    if not 0.0 < self.threshold <= 1.0:
      raise ArgumentError("threshold", self.threshold, "must be in (0, 1]")
    if not 0 <= self.seed_start <= generate.MAX_SEED:
      raise ArgumentError("seed_start", self.seed_start, f"must be in [0, {generate.MAX_SEED}]")
    if self.max_draws < 0:
      raise ArgumentError("max_draws", self.max_draws, "must be >= 0")
    generate.check_noise_mode(self.noise_mode)
    generate.check_convention(self.convention)
    if self.label_from == "per_class":
      if not self.class_networks:
        raise ArgumentError("class_networks", "", "name a generator per class: NAME=NETWORK,...")
      if self.network:
        raise ArgumentError(
          "network", self.network, "not read with per-class generators; name them per class"
        )
    else:
      if self.class_networks:
        raise ArgumentError(
          "class_networks",
          ",".join(f"{k}={v}" for k, v in self.class_networks.items()),
          "only read with per-class labels",
        )
      if not self.network:
        raise ArgumentError("network", "", f"{self.label_from} labels need a generator")
    if (self.label_from == "classifier") != bool(self.classifier):
      problem = "classifier labels need a model file or SavedModel"
      if self.classifier:
        problem = "only read with classifier labels"
      raise ArgumentError("classifier", self.classifier, problem)

  @property
  def psi(self) -> float:
    return generate.truncation_or_default(self.truncation_psi, self.convention)


@dataclasses.dataclass
class Sample:
  """One generated image, kept (written as `file`) or rejected (`reason`)."""

  seed: int
  label: int
  class_name: str
  network: str
  probability: Optional[float] = None  # top class probability (classifier labels)
  file: str = ""
  reason: str = ""


@dataclasses.dataclass
class AugmentResult:
  conversion: convert.ConvertResult
  requested: Dict[str, int]  # class -> generated images asked for
  written: Dict[str, int]  # class -> generated images in the new dataset
  samples: List[Sample]
  samples_csv: str


# ------------------------------------------------------------------------------------------------
# Options from text.
# ------------------------------------------------------------------------------------------------


def parse_class_networks(text: str) -> Dict[str, str]:
  """'Bengal=runs/gan_bengal,Birman=runs/gan_birman' -> {class name: network source}."""
  mapping: Dict[str, str] = {}
  for part in (p.strip() for p in str(text).split(",")):
    name, equals, source = (s.strip() for s in part.partition("="))
    if not part:
      continue
    if not equals or not name or not source:
      raise ArgumentError("class_networks", text, f"{part!r} is not NAME=NETWORK")
    if name in mapping:
      raise ArgumentError("class_networks", text, f"class {name!r} is named twice")
    mapping[name] = source
  return mapping


def safe_name(class_name: str) -> str:
  """A class name as a file-name part: letters, digits, '-' and '_' (others become '_')."""
  return re.sub(r"[^A-Za-z0-9_-]+", "_", class_name).strip("_") or "class"


def class_file_names(class_names: Sequence[str]) -> List[str]:
  """`safe_name` of each class; a name two classes share gets the label appended."""
  names = [safe_name(name) for name in class_names]
  return [f"{n}_{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def sample_name(class_file_name: str, seed: int) -> str:
  return f"gan_{class_file_name}_seed{seed:06d}"


# ------------------------------------------------------------------------------------------------
# The original dataset.
# ------------------------------------------------------------------------------------------------


def read_originals(shards_dir: str | os.PathLike) -> Tuple[List[ImageRecord], dict]:
  """(records with their encoded bytes and split, manifest) of every split of a converted dataset.

  Each record keeps the stored JPEG, annotations, species, source path and synthetic mark, so
  converting it again writes the same example.
  """
  manifest = shards.read_manifest(shards_dir)
  records = []
  for split in manifest["splits"]:
    files = shards.split_files(shards_dir, split)
    dataset = tf.data.TFRecordDataset(files).map(lambda s: shards.parse(s, decode_image=False))
    for example in dataset.as_numpy_iterator():
      records.append(_original_record(example, split))
  return records, manifest


def _original_record(example: dict, split: str) -> ImageRecord:
  num_landmarks = int(example["num_landmarks"])
  return ImageRecord(
    path=example["source_path"].decode(),
    label=int(example["label"]),
    class_name=example["class_name"].decode(),
    box=example["box"] if example["has_box"] else None,
    landmarks=example["landmarks"][:num_landmarks] if num_landmarks else None,
    species=example["species"].decode(),
    source="records",
    split=split,
    image_bytes=bytes(example["encoded"]),
    synthetic=bool(example["synthetic"]),
  )


def class_quotas(manifest: dict, options: AugmentOptions) -> Dict[str, int]:
  """Class name -> images to generate: `per_class`, or `ratio` x the class's training count.

  With per-class generators, a class without one gets none.
  """
  names = list(manifest["class_names"])
  if options.per_class:
    quotas = {name: int(options.per_class) for name in names}
  else:
    train = manifest["splits"].get("train")
    if train is None:
      raise ArgumentError("ratio", options.ratio, "the dataset has no train split to take it of")
    # Half up, as subsets round: a ratio of 0.5 of 5 images is 3.
    quotas = {
      name: int(math.floor(options.ratio * int(train["per_class"].get(name, 0)) + 0.5))
      for name in names
    }
  if options.label_from == "per_class":
    quotas = {name: n if name in options.class_networks else 0 for name, n in quotas.items()}
  return quotas


# ------------------------------------------------------------------------------------------------
# Generators and the classifier.
# ------------------------------------------------------------------------------------------------


def load_generator(source: str, argument: str = "network", value: str | None = None):
  """The generator of `source` (`snapshot.read_generator`); errors name `argument`."""
  try:
    generator, _ = snapshot.read_generator(source)
  except (ValueError, OSError) as e:
    raise ArgumentError(argument, value or source, str(e).partition(": ")[2] or str(e)) from e
  return generator


class Classifier:
  """A loaded Keras model file or SavedModel that maps images to class probabilities.

  Images reach it in its declared input dtype: uint8 as generated, any float type as values in
  [0, 255] (as `tfpets.data.pipeline` gives them); a model that wants another range rescales inside
  itself. They are resized (antialiased) to its declared height and width when it declares them.
  """

  def __init__(self, path: str, num_classes: int):
    self.path, self.num_classes = path, num_classes
    self._call, self.dtype, self.shape = _load_model(path)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """Probabilities [B, num_classes] float64 of uint8 NHWC images."""
    outputs = self._call(self.model_input(images))
    if isinstance(outputs, Mapping):
      if len(outputs) != 1:
        raise ArgumentError("classifier", self.path, f"has {len(outputs)} outputs; expected one")
      outputs = next(iter(outputs.values()))
    probabilities = np.asarray(outputs, np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != self.num_classes:
      raise ArgumentError(
        "classifier",
        self.path,
        f"returns shape {list(probabilities.shape)}; expected [batch, {self.num_classes}], the "
        "dataset's classes in its order",
      )
    if (
      np.any(~np.isfinite(probabilities))
      or np.any(probabilities < -1e-6)
      or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    ):
      raise ArgumentError(
        "classifier",
        self.path,
        "returns no probabilities (rows >= 0 summing to 1); end with a softmax",
      )
    return probabilities

  def model_input(self, images: np.ndarray) -> tf.Tensor:
    x = tf.convert_to_tensor(np.asarray(images, np.uint8))
    if len(self.shape) == 4 and self.shape[3] == 3 and x.shape[-1] == 1:
      x = tf.tile(x, [1, 1, 1, 3])
    size = tuple(self.shape[1:3]) if len(self.shape) == 4 else (None, None)
    if None not in size and size != tuple(x.shape[1:3]):
      resized = tf.image.resize(tf.cast(x, tf.float32), size, antialias=True)
      x = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return x if self.dtype == tf.uint8 else tf.cast(x, self.dtype)


def _classify_run(location: pathlib.Path):
  """(call, input dtype, input shape) of a --stage=classify run: its logits as probabilities, the
  images prepared as its evaluation prepares them."""
  from tfpets.classify import data, train  # deferred: only this label source needs them

  model, _, config = train.load_classifier(location)

  def call(images):
    prepared = data.eval_images(tf.cast(images, tf.float32), config.image_size)
    return tf.nn.softmax(tf.cast(model(prepared, training=False), tf.float32))

  return call, tf.float32, (None, None, None, 3)


def _load_model(path: str):
  """(call, input dtype, input shape) of a Keras model file, a SavedModel folder or a
  --stage=classify run folder."""
  location = pathlib.Path(path)
  if location.is_dir() and not (location / "saved_model.pb").is_file():
    if any((location / sub / "classifier.json").is_file() for sub in ("", "models")):
      return _classify_run(location)
    raise ArgumentError(
      "classifier",
      path,
      "a folder without saved_model.pb or classifier.json (give a SavedModel, a --stage=classify "
      "workdir or a .keras file)",
    )
  if location.is_dir():
    loaded = tf.saved_model.load(str(location))
    function = loaded.signatures.get("serving_default")
    if function is None:
      raise ArgumentError("classifier", path, "the SavedModel has no serving_default signature")
    inputs = function.structured_input_signature[1]
    if len(inputs) != 1:
      raise ArgumentError(
        "classifier", path, f"takes {len(inputs)} inputs; expected one image batch"
      )
    ((name, spec),) = inputs.items()

    def call(x):
      return function(**{name: x})

    return call, spec.dtype, tuple(spec.shape)
  if not location.is_file():
    raise ArgumentError("classifier", path, "no such Keras model file or SavedModel folder")
  import keras  # deferred: only this label source needs it

  try:
    model = keras.saving.load_model(str(location), compile=False)
  except (ValueError, OSError, TypeError, KeyError) as e:
    raise ArgumentError("classifier", path, f"not a loadable Keras model ({e})") from e
  if len(model.inputs) != 1:
    raise ArgumentError(
      "classifier", path, f"takes {len(model.inputs)} inputs; expected one image batch"
    )
  spec = model.inputs[0]
  return (lambda x: model(x, training=False)), tf.as_dtype(spec.dtype), tuple(spec.shape)


# ------------------------------------------------------------------------------------------------
# Generation.
# ------------------------------------------------------------------------------------------------


def _render(generator, seeds: Sequence[int], class_index, options: AugmentOptions) -> np.ndarray:
  return generate.generate_images(
    generator,
    seeds,
    truncation_psi=options.psi,
    class_index=class_index,
    noise_mode=options.noise_mode,
    convention=options.convention,
    batch_size=options.batch_size,
  )


class PngWriter:
  """Writes kept samples as images_dir/<class>/gan_<class>_seed000123.png."""

  def __init__(self, images_dir: pathlib.Path, class_names: Sequence[str]):
    self.images_dir, self.file_names = pathlib.Path(images_dir), class_file_names(class_names)

  def __call__(self, sample: Sample, image: np.ndarray) -> None:
    name = self.file_names[sample.label]
    folder = self.images_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{sample_name(name, sample.seed)}.png"
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    sample.file = str(path)


def _check_seeds(options: AugmentOptions, count: int) -> None:
  if count and options.seed_start + count - 1 > generate.MAX_SEED:
    raise ArgumentError(
      "seed_start", options.seed_start, f"{count} seeds from it pass {generate.MAX_SEED}"
    )


def _generate_fixed(
  generator,
  network: str,
  classes: Mapping[int, Tuple[str, int]],
  class_index_of,
  options: AugmentOptions,
  write: PngWriter,
) -> List[Sample]:
  """`classes` {label: (name, count)}: seeds seed_start, seed_start + 1, ... of each class."""
  samples = []
  for label, (name, count) in classes.items():
    _check_seeds(options, count)
    seeds = list(range(options.seed_start, options.seed_start + count))
    for start in range(0, count, _SEEDS_PER_CALL):
      chunk = seeds[start : start + _SEEDS_PER_CALL]
      for seed, image in zip(chunk, _render(generator, chunk, class_index_of(label), options)):
        sample = Sample(seed, label, name, network)
        write(sample, image)
        samples.append(sample)
    if count:
      logging.info("generated %d images of class %s with %s", count, name, network)
  return samples


def generate_conditional(
  class_names: Sequence[str], quotas: Mapping[str, int], options: AugmentOptions, write: PngWriter
) -> List[Sample]:
  """Class i from the conditional generator with class index i."""
  generator = load_generator(options.network)
  c_dim = generator.config.c_dim
  if c_dim != len(class_names):
    problem = (
      "the network is unconditional; label its images per class or with a classifier"
      if not c_dim
      else f"the network has {c_dim} classes, the dataset {len(class_names)}"
    )
    raise ArgumentError("network", options.network, problem)
  classes = {i: (name, quotas[name]) for i, name in enumerate(class_names)}
  return _generate_fixed(generator, options.network, classes, lambda i: i, options, write)


def generate_per_class(
  class_names: Sequence[str], quotas: Mapping[str, int], options: AugmentOptions, write: PngWriter
) -> List[Sample]:
  """Each named class from its own unconditional generator; unnamed classes get none."""
  unknown = [name for name in options.class_networks if name not in class_names]
  if unknown:
    raise ArgumentError(
      "class_networks",
      ",".join(f"{k}={v}" for k, v in options.class_networks.items()),
      f"{unknown[0]!r} is not a class of the dataset ({', '.join(class_names)})",
    )
  missing = [name for name in class_names if name not in options.class_networks]
  if missing:
    logging.warning("no generator for classes %s: none of their images is generated", missing)
  samples = []
  for name, source in options.class_networks.items():
    generator = load_generator(source, "class_networks", f"{name}={source}")
    if generator.config.c_dim:
      raise ArgumentError(
        "class_networks", f"{name}={source}", "a conditional network; use conditional labels"
      )
    label = list(class_names).index(name)
    classes = {label: (name, quotas[name])}
    samples += _generate_fixed(generator, source, classes, lambda _: None, options, write)
  return samples


def generate_classified(
  class_names: Sequence[str], quotas: Mapping[str, int], options: AugmentOptions, write: PngWriter
) -> List[Sample]:
  """Seeds from seed_start on, labelled by the classifier's top class; a sample is kept when that
  class's probability is at least the threshold and the class still needs images. Stops when every
  class has its images or after max_draws seeds."""
  generator = load_generator(options.network)
  if generator.config.c_dim:
    raise ArgumentError(
      "network", options.network, "a conditional network; use conditional labels for it"
    )
  classifier = Classifier(options.classifier, len(class_names))
  needed = [quotas[name] for name in class_names]
  max_draws = options.max_draws or DEFAULT_DRAWS_PER_IMAGE * sum(needed)
  _check_seeds(options, max_draws)
  samples: List[Sample] = []
  seed = options.seed_start
  while sum(needed) and seed < options.seed_start + max_draws:
    chunk = list(range(seed, min(seed + options.batch_size, options.seed_start + max_draws)))
    seed = chunk[-1] + 1
    images = _render(generator, chunk, None, options)
    for s, image, row in zip(chunk, images, classifier(images)):
      if not sum(needed):
        break
      sample = _classified_sample(s, row, class_names, needed, options)
      if not sample.reason:
        needed[sample.label] -= 1
        write(sample, image)
      samples.append(sample)
  if sum(needed):
    short = {name: n for name, n in zip(class_names, needed) if n}
    logging.warning(
      "after %d seeds the classifier still lacks images of %s (the threshold %.3f may be high)",
      seed - options.seed_start,
      short,
      options.threshold,
    )
  return samples


def _classified_sample(
  seed: int, row: np.ndarray, class_names: Sequence[str], needed: List[int], options
) -> Sample:
  label = int(np.argmax(row))
  probability = float(row[label])
  sample = Sample(seed, label, class_names[label], options.network, probability)
  if probability < options.threshold:
    sample.reason = (
      f"classifier: top class {class_names[label]} with probability {probability:.4f}, below the "
      f"threshold {options.threshold:g}"
    )
  elif not needed[label]:
    sample.reason = (
      f"classifier: class {class_names[label]} (probability {probability:.4f}) already has all "
      "its images"
    )
  return sample


GENERATORS = {
  "conditional": generate_conditional,
  "per_class": generate_per_class,
  "classifier": generate_classified,
}


# ------------------------------------------------------------------------------------------------
# The new dataset.
# ------------------------------------------------------------------------------------------------


def synthetic_record(sample: Sample) -> ImageRecord:
  return ImageRecord(
    path=sample.file,
    label=sample.label,
    class_name=sample.class_name,
    source=SOURCE_KIND,
    split="train",
    synthetic=True,
  )


def rejected_path(sample: Sample) -> str:
  """The rejects report's file column for a sample never written: the seed, as names carry it."""
  return f"gan_seed{sample.seed:06d}"


def write_samples_csv(path: pathlib.Path, samples: Sequence[Sample]) -> str:
  """Every generated sample, kept or not: file, seed, class, network, probability, reason."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["file", "seed", "label", "class_name", "network", "probability", "kept"])
    for s in samples:
      probability = "" if s.probability is None else f"{s.probability:.6f}"
      name = s.file or rejected_path(s)
      writer.writerow(
        [name, s.seed, s.label, s.class_name, s.network, probability, int(not s.reason)]
      )
  return str(path)


def _provenance(shards_dir, options: AugmentOptions, quotas: Mapping[str, int]) -> dict:
  labels = {"label_from": options.label_from}
  if options.label_from == "per_class":
    labels["class_networks"] = dict(options.class_networks)
  else:
    labels["network"] = options.network
  if options.label_from == "classifier":
    labels.update(classifier=options.classifier, threshold=options.threshold)
  return {
    "augmented_from": str(shards_dir),
    "augmentation": {
      **labels,
      "per_class": options.per_class,
      "ratio": options.ratio,
      "requested_per_class": dict(quotas),
      "truncation_psi": options.psi,
      "convention": options.convention,
      "noise_mode": options.noise_mode,
      "seed_start": options.seed_start,
    },
  }


def augment_dataset(
  shards_dir: str | os.PathLike, out_root: str | os.PathLike, options: AugmentOptions
) -> AugmentResult:
  """Writes out_root/records/shards (the originals plus generated training images),
  out_root/images/synthetic/<class>/*.png and out_root/reports/ (rejects.csv, synthetic.csv)."""
  shards_dir, out_root = pathlib.Path(shards_dir), pathlib.Path(out_root)
  out_shards = out_root / "records" / "shards"
  if out_shards.resolve() == shards_dir.resolve():
    raise ArgumentError("out_root", str(out_root), "holds the dataset being read; write elsewhere")
  originals, manifest = read_originals(shards_dir)
  class_names = list(manifest["class_names"])
  quotas = class_quotas(manifest, options)
  write = PngWriter(out_root / "images" / SYNTHETIC_DIR, class_names)
  samples = GENERATORS[options.label_from](class_names, quotas, options, write)
  kept = [s for s in samples if not s.reason]
  report = rejects_lib.RejectsReport()
  for s in samples:
    if s.reason:
      report.add(rejected_path(s), s.reason, rejects_lib.SKIPPED)
  source = SourceResult(originals + [synthetic_record(s) for s in kept], class_names, report)
  conversion_options = convert.ConvertOptions(
    splits="source",
    dedupe="off",
    gan_resolution=0,
    records_per_shard=options.records_per_shard,
    workers=options.workers,
    seed=options.seed,
  )
  conversion = convert.convert(
    source,
    out_root / "records",
    out_root / "reports",
    conversion_options,
    _provenance(shards_dir, options, quotas),
  )
  samples_csv = write_samples_csv(out_root / "reports" / "synthetic.csv", samples)
  written = {name: 0 for name in class_names}
  for s in kept:
    written[s.class_name] += 1
  return AugmentResult(conversion, dict(quotas), written, samples, samples_csv)
