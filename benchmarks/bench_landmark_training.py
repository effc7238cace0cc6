"""Landmark detector training throughput on this CPU: the two stages in turn or concurrently.

`--lm_concurrent_stages` trains stage 2 in a second thread beside stage 1, with one thread per
TensorFlow op (`--intra_op_threads=1 --inter_op_threads=2`). This benchmark measures why: each
setting runs in its own process (TensorFlow's thread pools are fixed when it starts), trains both
stages of the standard synthetic configuration (96 px stage 1, 64 px stage 2, MobileNetV2 width
0.35, heatmap head, batch 16) on the real augmented input pipelines with Keras `fit`, and reports
the median step time of each stage. The ratio that matters is the steps each stage gets in the
same wall time: in turn a stage has half of it, concurrently all of it.

  python benchmarks/bench_landmark_training.py [--records tfrecords/synthetic_landmarks]
      [--steps 120]

Without --records, 240 synthetic pets are rendered and converted into a temporary folder.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = {  # name: (intra-op threads, inter-op threads, concurrent)
  "in_turn_default_threads": (0, 0, False),
  "in_turn_one_thread_per_op": (1, 2, False),
  "concurrent_one_thread_per_op": (1, 2, True),
}
STAGE_FRAMES = {"bbox": 96, "landmarks": 64}
WARM_UP_STEPS = 10


def _worker(records: str, steps: int, intra: int, inter: int, concurrent: bool) -> dict:
  """Runs in a fresh process: median milliseconds per training step of each stage."""
  import numpy as np

  from tfpets.runtime import strategy, training

  strategy.set_op_threads(intra, inter)
  import keras

  from tfpets.data.tfrecord import shards as shards_lib
  from tfpets.landmarks import augment, data, train
  from tfpets.landmarks import model as model_lib

  config = model_lib.DetectorConfig(
    image_size=96, roi_size=64, width_multiplier=0.35, head="heatmap", heatmap_stride=8
  )
  options = augment.AugmentOptions(
    flip_horizontal=True, roi_margin=0.45, roi_first_margin=0.8, roi_jitter=0.2
  )
  shards = shards_lib.find_shards(records)
  step_ms = {}

  class StepTimes(keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.times = []

    def on_train_batch_begin(self, batch, logs=None):
      self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
      self.times.append(time.perf_counter() - self.start)

  def job(stage):
    def fit(extra_callbacks=()):
      spec = data.FrameSpec(stage, STAGE_FRAMES[stage], 9, heatmaps=True)
      dataset = data.frames(shards, "train", spec, batch_size=16, training=True, options=options)
      model = model_lib.build_model(stage, config)
      train.compile_stage(model, keras.optimizers.Adam(1e-3), spec, "mse", 10.0)
      timer = StepTimes()
      model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=steps + WARM_UP_STEPS,
        verbose=0,
        callbacks=[timer, *extra_callbacks],
      )
      step_ms[stage] = round(1000 * float(np.median(timer.times[WARM_UP_STEPS:])), 1)

    return fit

  if concurrent:
    training.train_concurrently(job("bbox"), job("landmarks"))
  else:
    job("bbox")()
    job("landmarks")()
  return step_ms


def _synthetic_records(root: pathlib.Path) -> str:
  from tfpets.data import convert, sources, synthetic

  csv_path = synthetic.write_dataset(
    str(root / "source"), num_breeds=4, images_per_breed=60, size=128, seed=0, workers=1
  )
  convert.convert(
    sources.load_source(f"csv:{csv_path}"),
    root / "records",
    root / "reports",
    convert.ConvertOptions(dedupe="off", gan_resolution=0, workers=1),
  )
  return str(root / "records")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--records", default="", help="a converted dataset with landmarks")
  parser.add_argument("--steps", type=int, default=120, help="timed steps per stage")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    intra, inter, concurrent = SETTINGS[args.worker]
    print(json.dumps(_worker(args.records, args.steps, intra, inter, concurrent)))
    return
  with tempfile.TemporaryDirectory() as tmp:
    records = args.records or _synthetic_records(pathlib.Path(tmp))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    results = {}
    for name in SETTINGS:
      out = subprocess.run(
        [
          sys.executable,
          __file__,
          "--worker",
          name,
          "--records",
          records,
          "--steps",
          str(args.steps),
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
      ).stdout
      results[name] = {"ms_per_step": json.loads(out.strip().splitlines()[-1])}
  base = results["in_turn_default_threads"]["ms_per_step"]
  for name, result in results.items():
    share = 1.0 if SETTINGS[name][2] else 0.5  # of the wall time each stage trains for
    result["steps_in_equal_wall_time_vs_in_turn_default"] = {
      stage: round(share / 0.5 * base[stage] / ms, 2) for stage, ms in result["ms_per_step"].items()
    }
  print(
    json.dumps(
      {
        "benchmark": "landmark_training",
        "steps": args.steps,
        "batch_size": 16,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "settings": results,
      },
      indent=2,
    )
  )


if __name__ == "__main__":
  main()
