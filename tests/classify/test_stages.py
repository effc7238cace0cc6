"""The classifier stages as a user runs them: classify, evaluate, predict and export a tiny ViT, and
the exported SavedModel against the Keras model in a process that imports only TensorFlow."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests.classify.conftest import CLASSES, class_image
from tests.conftest import REPO, launch, loopback_worker_env
from tests.runtime.test_strategy import free_port
from tfpets.classify import data, train

TINY = ["--model=vit", "--cls_vit_size=tiny", "--image_size=32", "--batch_size=4"]


@pytest.fixture(scope="module")
def trained(class_records, tmp_path_factory):
  """The workdir of a two-epoch classify run on the tiny records."""
  workdir = tmp_path_factory.mktemp("classify_run")
  result = launch(
    "--stage=classify",
    f"--records={class_records}",
    f"--workdir={workdir}",
    *TINY,
    "--cls_epochs=2",
    "--cls_steps_per_epoch=2",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "backbone weights: random initialisation; nothing downloaded" in result.stderr
  summary = json.loads((workdir / "reports" / "classify.json").read_text())
  assert summary["epochs_run"] == 2 and summary["model"] == "vit"
  assert list((workdir / "logs" / "train").glob("events.out.tfevents.*"))
  return workdir


@pytest.mark.slow
def test_evaluate_writes_the_reports(trained, class_records, tmp_path):
  result = launch(
    "--stage=evaluate",
    f"--classifier={trained}",
    f"--records={class_records}",
    f"--workdir={tmp_path}",
    "--batch_size=4",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  headline = json.loads((tmp_path / "reports" / "evaluate.json").read_text())
  assert headline["split"] == "test" and 0.0 <= headline["top1"] <= 1.0
  assert headline["top1"] <= headline["top3"] == 1.0  # three classes
  assert (tmp_path / "reports").glob("*confusion_matrix.png")


@pytest.mark.slow
def test_predict_classifies_a_folder_and_reports_a_bad_file(trained, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(class_image(i, 50 + i)).save(folder / f"pet{i}.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  result = launch(
    "--stage=predict",
    f"--classifier={trained}",
    f"--cls_images={folder}",
    f"--workdir={tmp_path / 'run'}",
    "--batch_size=2",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  output = tmp_path / "run" / "predictions"
  with open(output / "predictions.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert sorted(row["path"].rsplit("/", 1)[-1] for row in rows) == [
    "pet0.png",
    "pet1.png",
    "pet2.png",
  ]
  probabilities = np.load(next(output.glob("*_PredictedProbabilities.npy")))
  assert probabilities.shape == (3, len(CLASSES))
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
  assert "broken.jpg" in "".join(p.read_text() for p in output.rglob("*rejects*"))


def test_stage_errors_are_one_line(class_records, tmp_path):
  result = launch("--stage=evaluate", f"--classifier={tmp_path}", f"--records={class_records}")
  assert result.returncode == 2
  assert (
    result.stderr.strip().splitlines()[-1].startswith(f"tfpets: error: --classifier={tmp_path}")
  )
  result = launch("--stage=classify", f"--records={class_records}", "--cls_val_split=holdout")
  assert result.returncode == 2
  assert "--cls_val_split=holdout: no such split" in result.stderr.strip().splitlines()[-1]


# Loads the exported SavedModel with TensorFlow alone and prints its outputs for the image files.
SERVE = textwrap.dedent(
  """
  import json, sys
  import tensorflow as tf
  assert not any(m.startswith(("tfpets", "keras_hub")) for m in sys.modules)
  loaded = tf.saved_model.load(sys.argv[1])
  serve = loaded.signatures["serving_default"]
  images = [open(p, "rb").read() for p in sys.argv[2:]]
  out = serve(image_bytes=tf.constant(images))
  assert not any(m.startswith(("tfpets", "keras_hub")) for m in sys.modules)
  print(json.dumps({k: v.numpy().tolist() for k, v in out.items() if v.dtype != tf.string}))
  """
)


@pytest.mark.slow
def test_export_serves_the_keras_models_probabilities(trained, tmp_path):
  result = launch(
    "--stage=export",
    "--export_model=classifier",
    f"--classifier={trained}",
    f"--workdir={tmp_path}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  version = tmp_path / "models" / "classifier" / "1"
  assert (version / "assets" / "labels.txt").read_text().split() == list(CLASSES)
  files = []
  for i, suffix in enumerate(("png", "jpg")):
    path = tmp_path / f"pet{i}.{suffix}"
    Image.fromarray(class_image(i, 70 + i, size=45)).save(path)
    files.append(str(path))
  served = subprocess.run(
    [sys.executable, "-c", SERVE, str(version), *files],
    capture_output=True,
    text=True,
    timeout=300,
    env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
  )
  assert served.returncode == 0, served.stderr[-3000:]
  outputs = json.loads(served.stdout.strip().splitlines()[-1])

  model, _, config = train.load_classifier(trained)
  pixels = np.stack([_decode_like_serving(p) for p in files])
  expected = []
  for image in pixels:
    view = data.eval_images(image[None], config.image_size)
    expected.append(np.exp(model(view).numpy()[0]) / np.exp(model(view).numpy()[0]).sum())
  np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
  assert outputs["top_k_classes"][0][0] == int(np.argmax(expected[0]))


def _decode_like_serving(path) -> np.ndarray:
  """Pillow's pixels: the PNG exactly, the JPEG with the accurate IDCT the export uses."""
  return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.slow
def test_classify_trains_under_mirrored_and_on_two_workers(class_records, tmp_path):
  args = [f"--records={class_records}", *TINY, "--cls_epochs=1", "--cls_steps_per_epoch=2"]
  result = launch(
    "--stage=classify", f"--workdir={tmp_path / 'mirrored'}", "--strategy=mirrored", *args
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "MirroredStrategy with 2 replica(s)" in result.stderr
  ports = [free_port() for _ in range(2)]
  run = tmp_path / "workers"
  command = [sys.executable, "-m", "tfpets.launch", "--stage=classify", f"--workdir={run}"]
  workers = [
    subprocess.Popen(
      [*command, "--strategy=multiworker", *args],
      cwd=REPO,
      env=loopback_worker_env(ports, index),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for index in range(2)
  ]
  outputs = [worker.communicate(timeout=600) for worker in workers]
  for worker, (_, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
  assert "num_workers = 2" in outputs[0][1]
  summary = json.loads((run / "reports" / "classify.json").read_text())
  assert summary["epochs_run"] == 1
  model, names, _ = train.load_classifier(run)
  assert names == list(CLASSES) and model.count_params() == summary["parameters"]
