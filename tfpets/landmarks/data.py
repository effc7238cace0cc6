"""Converted shard records -> tf.data datasets of detector training frames.

The images are read at their stored resolution and each frame is sampled straight from it with one
affine warp (augment.py); `tfpets.data.pipeline.shard_dataset` squashes every image to one size
first, which would change aspect ratios and lose the head's resolution before the crop.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Dict

import tensorflow as tf

from tfpets.data.tfrecord import shards
from tfpets.errors import ArgumentError
from tfpets.landmarks import augment

AUTOTUNE = tf.data.AUTOTUNE
STAGES = ("bbox", "landmarks")


def split_size(shards_dir: pathlib.Path, split: str) -> int:
  manifest = shards.read_manifest(shards_dir)
  if split not in manifest["splits"]:
    raise ArgumentError(
      "split", split, f"no such split in {shards_dir} (its splits: {', '.join(manifest['splits'])})"
    )
  return int(manifest["splits"][split]["num_examples"])


@dataclasses.dataclass(frozen=True)
class FrameSpec:
  """What a stage's frames look like: the model input size, the number of landmarks, and whether
  the model's heatmaps get targets of their own (the heatmap head; its stage 1 also predicts the
  landmarks, as an auxiliary task)."""

  stage: str
  size: int
  num_points: int
  heatmaps: bool = False


def usable(example: Dict[str, tf.Tensor], spec: FrameSpec) -> tf.Tensor:
  """Stage 1 needs a head box (annotated or from >= 3 landmarks); stage 2 needs the landmarks."""
  _, has_points = augment.select_points(
    example["landmarks"], example["num_landmarks"], spec.num_points
  )
  if spec.stage == "bbox":
    return example["has_box"] | has_points
  return has_points


def count_usable(shards_dir: pathlib.Path, split: str, spec: FrameSpec) -> int:
  """Examples of `split` that the stage can train on (reads the annotations only)."""
  ds = tf.data.TFRecordDataset(shards.split_files(shards_dir, split))
  ds = ds.map(lambda s: shards.parse(s, decode_image=False), num_parallel_calls=AUTOTUNE)
  return int(ds.reduce(0, lambda n, ex: n + tf.cast(usable(ex, spec), tf.int32)).numpy())


def examples(
  shards_dir: pathlib.Path,
  split: str,
  spec: FrameSpec | None = None,
  *,
  shuffle: bool = False,
  seed: int = 0,
) -> tf.data.Dataset:
  """Parsed records with decoded images, optionally only those `spec`'s stage can use."""
  files = shards.split_files(shards_dir, split)
  ds = tf.data.Dataset.from_tensor_slices(files)
  ds = ds.interleave(
    tf.data.TFRecordDataset,
    cycle_length=min(len(files), 4),
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )
  if shuffle:
    ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
  ds = ds.map(lambda s: shards.parse(s, decode_image=False), num_parallel_calls=AUTOTUNE)
  if spec is not None:
    ds = ds.filter(lambda ex: usable(ex, spec))
  return ds.map(_decode, num_parallel_calls=AUTOTUNE)


def _decode(example: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  example = dict(example)
  example["image"] = tf.ensure_shape(
    tf.io.decode_jpeg(example.pop("encoded"), channels=3), [None, None, 3]
  )
  return example


def to_frame(
  example: Dict[str, tf.Tensor], seed: tf.Tensor, spec: FrameSpec, options: augment.AugmentOptions
):
  """(frame, targets, sample weights) as Keras `fit` takes them."""
  if spec.stage == "bbox":
    frame, box, points, is_head, has_points = augment.bbox_frame(
      example, seed, spec.size, spec.num_points, options
    )
    targets = {"box": box, "head": is_head[None]}
    weights = {"box": is_head, "head": tf.ones([])}
    if spec.heatmaps:
      targets.update(centre_map=_centre(box), landmarks=points, landmark_maps=points)
      weights.update(
        centre_map=is_head, landmarks=is_head * has_points, landmark_maps=is_head * has_points
      )
    return frame, targets, weights
  frame, points, box = augment.landmarks_frame(example, seed, spec.size, spec.num_points, options)
  targets = {"landmarks": points, "box": box}
  if spec.heatmaps:
    targets.update(centre_map=_centre(box), landmark_maps=points)
  return frame, targets


def _centre(box: tf.Tensor) -> tf.Tensor:
  """[1, 2] centre of a box, the target of the box-centre heatmap."""
  return ((box[:2] + box[2:]) / 2)[None]


def frames(
  shards_dir: pathlib.Path,
  split: str,
  spec: FrameSpec,
  *,
  batch_size: int,
  training: bool,
  options: augment.AugmentOptions = augment.EVAL,
  seed: int = 0,
) -> tf.data.Dataset:
  """Batches of stage frames. Training data repeats forever, shuffled and augmented; evaluation
  data is one deterministic pass without augmentation, with ROIs of exactly `roi_margin`."""
  if spec.stage not in STAGES:
    raise ValueError(f"spec.stage must be one of {', '.join(STAGES)}, got {spec.stage!r}")
  ds = examples(shards_dir, split, spec, shuffle=training, seed=seed)
  if training:
    ds = ds.repeat()
  else:
    options = augment.AugmentOptions(roi_margin=options.roi_margin, roi_jitter=0.0)
  ds = ds.enumerate()
  ds = ds.map(
    lambda i, ex: to_frame(ex, tf.stack([tf.cast(seed, tf.int64), i]), spec, options),
    num_parallel_calls=AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(batch_size, drop_remainder=training)
  return without_autotune_thread(ds.prefetch(AUTOTUNE))


def without_autotune_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
  """The dataset without tf.data's autotuning thread. An iterator's destructor waits for that
  thread to wake, and its sleeps grow long, so Keras `fit` could return long after its last epoch;
  parallel maps then use every core, which is as fast for these pipelines."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)
