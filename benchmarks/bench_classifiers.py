"""Classifier speed on this machine, side by side in one run: training images/s of every model at
its standard input size, WS-DAN's train step as a ratio to its backbone's plain step (the same
backbone, pooled and classified without attention), and evaluation images/s with and without
WS-DAN's test-time refinement.

Run: python benchmarks/bench_classifiers.py [--batch 8 --steps 3 --rounds 2] > bench.json
Cost: about 15 minutes on 2 cores with the defaults (the standard sizes reach 512 px).
Prints JSON; the figures go to benchmarks/RESULTS.md (section 9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfpets.classify import train  # noqa: E402

NUM_CLASSES = 37  # Oxford-IIIT Pet
MODELS = {
  "wsdan_paper": dict(model="wsdan", wsdan_variant="paper"),
  "wsdan_cars": dict(model="wsdan", wsdan_variant="cars"),
  "vit_b16": dict(model="vit", vit_size="base"),
  "efficientnet_b0": dict(model="efficientnet", efficientnet_variant="b0"),
  "efficientnet_b3": dict(model="efficientnet", efficientnet_variant="b3"),
  "xception": dict(model="xception", augment="none"),
}


def build(name: str, **overrides) -> tuple:
  """(compiled model, one-hot labels?) of `name` with its recipe's optimiser."""
  keras.utils.set_random_seed(0)
  config = train.recipe(train.ClassifyConfig(**MODELS[name], **overrides))
  model = train.build_model(config, NUM_CLASSES)
  one_hot = not train.uses_attention(config)
  train.compile_model(model, train.make_optimizer(config), config, one_hot=one_hot)
  return model, one_hot


def batch(model, size: int, one_hot: bool) -> tuple:
  side = train.model_image_size(model)
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (size, side, side, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size).astype(np.int32)
  return images, (np.eye(NUM_CLASSES, dtype=np.float32)[labels] if one_hot else labels)


def time_train(model, images, labels, steps: int, warmups: int) -> float:
  """Seconds per train step (after `warmups` steps that trace and warm the caches)."""
  for _ in range(warmups):
    model.train_on_batch(images, labels)
  start = time.perf_counter()
  for _ in range(steps):
    model.train_on_batch(images, labels)
  return (time.perf_counter() - start) / steps


def time_eval(function, images, steps: int, warmups: int) -> float:
  for _ in range(warmups):
    tf.nest.map_structure(np.asarray, function(images))
  start = time.perf_counter()
  for _ in range(steps):
    tf.nest.map_structure(np.asarray, function(images))
  return (time.perf_counter() - start) / steps


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmups", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per pair")
  args = parser.parse_args()
  names = args.models.split(",")
  results = {}
  for name in names:
    model, one_hot = build(name)
    images, labels = batch(model, args.batch, one_hot)
    seconds = [time_train(model, images, labels, args.steps, args.warmups)]
    entry = {"image_size": int(images.shape[1]), "parameters": int(model.count_params())}
    if name.startswith("wsdan"):
      plain, plain_one_hot = build(name, wsdan_attention=False)
      _, plain_labels = batch(plain, args.batch, plain_one_hot)
      plain_seconds = []
      for _ in range(args.rounds):  # alternate, so that drift hits both alike
        plain_seconds.append(time_train(plain, images, plain_labels, args.steps, args.warmups))
        seconds.append(time_train(model, images, labels, args.steps, 0))
      entry["backbone_step_s"] = float(np.median(plain_seconds))
      raw = tf.function(lambda x, m=model: m(x, training=False))
      refined = tf.function(lambda x, m=model: m.refine(x))
      raw_s = time_eval(raw, images, args.steps, 1)
      refined_s = time_eval(refined, images, args.steps, 1)
      entry.update(
        eval_images_per_s_raw=args.batch / raw_s,
        eval_images_per_s_refined=args.batch / refined_s,
        refined_over_raw_eval_time=refined_s / raw_s,
      )
      del plain
    else:
      plain_eval = tf.function(lambda x, m=model: m(x, training=False))
      entry["eval_images_per_s"] = args.batch / time_eval(plain_eval, images, args.steps, 1)
    step = float(np.median(seconds))
    entry.update(train_step_s=step, train_images_per_s=args.batch / step)
    if "backbone_step_s" in entry:
      entry["step_over_backbone_step"] = step / entry["backbone_step_s"]
    results[name] = entry
    print(json.dumps({name: entry}), flush=True)
    del model
    keras.backend.clear_session()
  print(
    json.dumps(
      {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or "unknown"},
        "tensorflow": tf.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "results": results,
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  main()
