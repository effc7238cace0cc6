"""The head verifier: a small CNN that scores how well a box fits a head (not in the seed paper).

Stage 1 puts the head at the soft-argmax of its centre heatmap. On a few images (small heads
beside head-like clutter) that lands on background, or on a box far too big for a small head, and
those images carry most of the landmark error; the true head is then usually at one of the next
peaks of the same heatmap, or inside a smaller box. With more than one candidate the detector runs
stage 2 from every candidate (`predict.candidate_boxes`) and keeps the one whose final box this
model scores highest (`predict.run_pipeline`).

Its target is a box's quality, its IoU with the true head mapped linearly from QUALITY_IOU to
0..1 (sigmoid cross-entropy against that soft label), not head-or-not, so that among candidates
that all found the head it also prefers the best-fitting box. It trains after stage 1, on square
ROIs (`predict.VERIFIER_MARGIN`) of the training split: the true head box with scale and shift
jitter, every stage-1 candidate (the very confusions it must catch), a head-sized box beside the
head (body and tail) and random ones elsewhere.
"""

from __future__ import annotations

import pathlib
import time
from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfpets.errors import UsageError
from tfpets.landmarks import data, evaluate, predict
from tfpets.landmarks import model as model_lib
from tfpets.runtime import training

QUALITY_IOU = (0.3, 0.9)  # IoUs whose quality is 0 and 1; linear in between
NEGATIVE_IOU = 0.1  # background boxes overlap the head at most this much
JITTERED_BOXES = 4  # jittered true boxes per image,
JITTER_SHIFT = 0.25  # their centre moved by up to this x the box size
JITTER_SCALE = 0.4  # and their size scaled by exp(U[-s, s])
# Negatives next to the head, in head sizes: the body and tail, which look most like it.
NEAR_MISS_DISTANCE = (1.0, 2.0)
STATE_DIR = "verifier"


def box_quality(iou: np.ndarray) -> np.ndarray:
  """The verifier's target for boxes of these IoUs with the head."""
  low, high = QUALITY_IOU
  return np.clip((np.asarray(iou, np.float32) - low) / (high - low), 0.0, 1.0)


def example_boxes(
  truth: np.ndarray, candidates: np.ndarray, width: float, height: float, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
  """Boxes [M, 4] and their quality labels [M] for one image with head box `truth` and stage-1
  candidates [K, 4]: JITTERED_BOXES jittered true boxes, the candidates, then a head-sized box
  beside the head and two anywhere, those of them that miss it (quality 0)."""
  size = truth[2:] - truth[:2]
  centre = (truth[:2] + truth[2:]) / 2
  boxes = []
  for _ in range(JITTERED_BOXES):
    side = size * np.exp(rng.uniform(-JITTER_SCALE, JITTER_SCALE))
    middle = centre + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, 2) * size
    boxes.append(np.concatenate([middle - side / 2, middle + side / 2]))
  boxes.extend(candidates)
  angle = rng.uniform(0, 2 * np.pi)
  near = centre + rng.uniform(*NEAR_MISS_DISTANCE) * size * np.array([np.cos(angle), np.sin(angle)])
  anywhere = [rng.uniform(0, 1, 2) * np.array([width, height]) for _ in range(2)]
  for middle in [near] + anywhere:
    side = size * np.exp(rng.uniform(-0.4, 0.4))
    box = np.concatenate([middle - side / 2, middle + side / 2])
    if evaluate.box_iou(box, truth) <= NEGATIVE_IOU:
      boxes.append(box)
  boxes = np.asarray(boxes, np.float32)
  return boxes, box_quality(evaluate.box_iou(boxes, truth))


def training_examples(
  samples: Sequence[dict],
  config: model_lib.DetectorConfig,
  bbox_fn,
  rng: np.random.Generator,
  batch_size: int = 128,
) -> Tuple[np.ndarray, np.ndarray]:
  """Verifier frames and labels from samples of `evaluate.collect` that have a head box, with
  stage-1 candidates from `bbox_fn`; same-size images are run together."""
  by_shape: Dict[tuple, List[dict]] = {}
  for sample in samples:
    if sample["box"] is not None:
      by_shape.setdefault(sample["image"].shape, []).append(sample)
  # Compiled: eager calls of stage 1 take several times longer.
  stage_one = tf.function(
    lambda images: predict.stage_one_candidates(images, config, bbox_fn), reduce_retracing=True
  )
  all_frames, all_labels = [], []
  for shape, group in by_shape.items():
    for start in range(0, len(group), batch_size):
      chunk = group[start : start + batch_size]
      images = tf.constant(np.stack([s["image"] for s in chunk]), tf.float32)
      candidates = stage_one(images).numpy()
      boxes, labels, owners = [], [], []
      for i, sample in enumerate(chunk):
        b, label = example_boxes(sample["box"], candidates[i], shape[1], shape[0], rng)
        boxes.append(b)
        labels.append(label)
        owners.append(np.full(len(label), i))
      owners = np.concatenate(owners)
      frames = predict.verifier_frames(
        tf.gather(images, owners), np.concatenate(boxes), config.verifier_size
      )
      all_frames.append(np.rint(frames.numpy()).astype(np.uint8))  # a quarter of the memory
      all_labels.append(np.concatenate(labels))
  if not all_labels:
    return np.zeros((0, config.verifier_size, config.verifier_size, 3), np.uint8), np.zeros([0])
  return np.concatenate(all_frames), np.concatenate(all_labels)


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, for_training: bool):
  def flip(frame, label):
    return tf.image.random_flip_left_right(frame, seed=seed), label

  def to_model(frame, label):
    return tf.cast(frame, tf.float32), {"head": label[None]}

  if for_training:  # shuffled here once, so that a small buffer suffices (a full one takes seconds)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
  ds = tf.data.Dataset.from_tensor_slices((x, y))
  if for_training:
    ds = ds.shuffle(4096, seed=seed).repeat().map(flip)
  return data.without_autotune_thread(ds.map(to_model).batch(batch_size).prefetch(tf.data.AUTOTUNE))


def train_verifier(
  config: model_lib.DetectorConfig,
  train_samples: Sequence[dict],
  val_samples: Sequence[dict],
  bbox_fn,
  models_dir: pathlib.Path,
  checkpoints_dir: pathlib.Path,
  seconds: float,
  seed: int = 0,
  batch_size: int = 64,
  steps_per_epoch: int = 50,
  extra_callbacks: Sequence = (),
) -> Tuple[keras.Model, dict]:
  """Trains the verifier within about `seconds` from now (or loads it when a previous run
  finished it); returns (model, summary). It trains in one go, without checkpoints: it is short
  enough that a killed run trains it again."""
  directory = checkpoints_dir / STATE_DIR
  model_path = models_dir / model_lib.MODEL_FILES["verifier"]
  summary = training.finished_summary(directory)
  if summary is not None and model_path.is_file():
    logging.info("verifier: already trained (%s); loading it", model_path)
    return model_lib.load_model(model_path), summary
  start = time.time()
  rng = np.random.default_rng(seed)
  x, y = training_examples(train_samples, config, bbox_fn, rng)
  val_x, val_y = training_examples(val_samples, config, bbox_fn, rng)
  if len(y) == 0 or y.min() == y.max():
    raise UsageError(
      "the head verifier (more than one candidate) needs training images with head boxes and "
      f"background around them; the training split gave {len(y)} examples, "
      f"{int(np.sum(y > 0))} of them on a head"
    )
  logging.info(
    "verifier: %d training ROIs (mean quality %.2f), %d validation ROIs, built in %.0f s",
    len(y),
    y.mean(),
    len(val_y),
    time.time() - start,
  )
  model = model_lib.build_model("verifier", config)
  model.compile(
    keras.optimizers.Adam(2e-3), loss={"head": keras.losses.BinaryCrossentropy(from_logits=True)}
  )
  # Validated once at the end: within seconds, every step is worth more than a curve.
  budget = training.TimeBudget(training.seconds_until(start + seconds))
  history = model.fit(
    _dataset(x, y, batch_size, seed, True),
    epochs=1000,
    steps_per_epoch=steps_per_epoch,
    callbacks=[budget, *extra_callbacks],
    verbose=2,
  )
  fitted = time.time()
  logging.info(
    "verifier: fit returned %.0f s after its start; BatchNorm statistics, saving, validation",
    fitted - start,
  )
  training.recompute_batch_norm(model, _dataset(x, y, batch_size, seed, True), 20)
  models_dir.mkdir(parents=True, exist_ok=True)
  model.save(model_path)
  summary = {
    "training_rois": int(len(y)),
    "mean_quality": round(float(y.mean()), 3),
    "epochs_run": len(history.epoch),
    "seconds": round(time.time() - start, 1),
  }
  if len(val_y):
    logits = model.predict(_dataset(val_x, val_y, batch_size, seed, False), verbose=0)["head"]
    quality = 1 / (1 + np.exp(-logits[:, 0].astype(np.float64)))
    summary["val_quality_mae"] = round(float(np.mean(np.abs(quality - val_y))), 4)
  summary["finish_seconds"] = round(time.time() - fitted, 1)
  training.mark_done(directory, summary)
  return model, summary
