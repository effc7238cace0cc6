"""The super-resolution stages as a user runs them (`python -m tfpets.launch`): convert_dbpn on an
official-layout checkpoint, superres on a folder, superres_eval's two protocols, superres_train,
and their one-line errors."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import re

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from tests import conftest
from tests import torch_files as tw
from tests.superres import numpy_dbpn
from tests.superres.images import smooth_image
from tfpets.classify import data as classify_data
from tfpets.classify import train as classify_train
from tfpets.data.decode import read_image
from tfpets.export import serving
from tfpets.superres import metrics

SCALE = 2
# A Python absl log record ("I1207 16:03:52.603678 1399 cli.py:58] ..."): progress, not an error.
ABSL_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [\w.]+\.py:\d+\] ")
Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0  # BT.601 luma of 8-bit RGB, plus 16
CLASSES = ("amber", "jade", "cobalt")  # class folders; sorted: amber 0, cobalt 1, jade 2
COLOURS = {"amber": (220, 150, 30), "jade": (40, 190, 110), "cobalt": (30, 60, 210)}


def launch(*args: str):
  """The launcher as a user runs it, with TensorFlow's start-up lines hidden by default."""
  return conftest.launch(*args, env={"TF_CPP_MIN_LOG_LEVEL": None})


def error_lines(result) -> list[str]:
  """stderr less absl log records: what the user reads as the error."""
  return [line for line in result.stderr.strip().splitlines() if not ABSL_RECORD.match(line)]


def one_error_line(result) -> str:
  assert result.returncode == 2, result.stderr[-3000:]
  lines = error_lines(result)
  assert len(lines) == 1, lines
  assert lines[0].startswith("tfpets: error: ") and "Traceback" not in result.stderr
  return lines[0]


def save(path: pathlib.Path, pixels: np.ndarray, **options) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path, **options)
  return path


def model_uint8(model, pixels: np.ndarray) -> np.ndarray:
  """The network on uint8 RGB as [0, 1] floats, clipped and rounded back to uint8."""
  out = model(pixels[None].astype(np.float32) / 255.0, training=False).numpy()[0]
  return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def psnr_on_y(sr: np.ndarray, hr: np.ndarray, shave: int) -> float:
  """PSNR of the Y channel with `shave` pixels cropped per border, written out directly."""
  y_sr, y_hr = (16 + image.astype(np.float64) @ Y_WEIGHTS for image in (sr, hr))
  crop = (slice(shave, -shave), slice(shave, -shave))
  return 10 * math.log10(255.0**2 / np.mean((y_sr[crop] - y_hr[crop]) ** 2))


def read_csv(path) -> list[dict]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


# --- convert_dbpn ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(path, state dict): a DBPN-S x2 state dict in torch's legacy format, DataParallel keys."""
  state = numpy_dbpn.random_state_dict("dbpns", SCALE, seed=11)
  path = tmp_path_factory.mktemp("checkpoint") / "DBPNS_x2.pth"
  tw.write_state_dict_legacy(path, {f"module.{key}": value for key, value in state.items()})
  return path, state


@pytest.fixture(scope="module")
def converted(checkpoint, tmp_path_factory):
  """(workdir of --stage=convert_dbpn on the checkpoint, its stdout)."""
  workdir = tmp_path_factory.mktemp("convert_dbpn")
  result = launch(
    "--stage=convert_dbpn", f"--dbpn_checkpoint={checkpoint[0]}", f"--workdir={workdir}"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


@pytest.fixture(scope="module")
def sr_network(converted):
  return keras.saving.load_model(converted[0] / "models" / "dbpn.keras", compile=False)


def test_convert_dbpn_writes_the_official_network_and_its_report(checkpoint, converted, sr_network):
  path, state = checkpoint
  workdir, stdout = converted
  images = np.random.default_rng(2).uniform(0, 1, (2, 5, 7, 3)).astype(np.float32)
  want = numpy_dbpn.forward(state, "dbpns", SCALE, images)
  assert 0.1 < np.abs(want).max() < 10
  got = sr_network(images).numpy()
  assert got.shape == (2, 10, 14, 3)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

  report = json.loads((workdir / "reports" / "convert_dbpn.json").read_text())
  assert json.loads(stdout) == report
  assert report["checkpoint"] == str(path)
  assert (report["variant"], report["scale"], report["residual"]) == ("dbpns", SCALE, False)
  parameters = sum(int(np.prod(s)) for s in numpy_dbpn.state_dict_shapes("dbpns", SCALE).values())
  assert report["parameters"] == parameters == sr_network.count_params()
  assert report["network"].startswith("DBPN-S (T = 2), x2, not residual")
  assert report["keras"] == str(workdir / "models" / "dbpn.keras")
  assert (workdir / "models" / "dbpn.weights.h5").is_file()
  assert report["notes"] == [f"stripped the DataParallel prefix 'module.' from {len(state)} keys"]


def test_convert_dbpn_with_the_wrong_variant_names_the_file_and_missing_keys(checkpoint, tmp_path):
  path, state = checkpoint
  result = launch(
    "--stage=convert_dbpn",
    f"--dbpn_checkpoint={path}",
    "--dbpn_variant=dbpnll",
    f"--workdir={tmp_path}",
  )
  line = one_error_line(result)
  missing = [k for k in numpy_dbpn.state_dict_shapes("dbpnll", SCALE) if k not in state]
  assert line.startswith(f"tfpets: error: --dbpn_variant=dbpnll: {path} does not fit dbpnll x2")
  assert f"missing {len(missing)} keys ({', '.join(missing[:5])}, +{len(missing) - 5} more)" in line
  assert "it fits dbpns x2" in line
  assert not (tmp_path / "models" / "dbpn.keras").exists()


def test_convert_dbpn_refuses_a_pickle_that_runs_code_without_running_it(tmp_path):
  marker = tmp_path / "ran"
  state = tw.state_dict_object({"feat0.conv.bias": np.zeros(4, np.float32)})
  state["feat0.conv.weight"] = tw.Call("os", "system", f"touch {marker}")
  path = tmp_path / "evil.pth"
  path.write_bytes(tw.legacy_save_bytes(state))
  result = launch(
    "--stage=convert_dbpn", f"--dbpn_checkpoint={path}", f"--workdir={tmp_path / 'w'}"
  )
  line = one_error_line(result)
  assert line.startswith(f"tfpets: error: {path}: refusing to load global 'os.system'")
  assert "nothing from the file was executed" in line
  assert not marker.exists()
  assert not (tmp_path / "w" / "models" / "dbpn.keras").exists()


def test_convert_dbpn_without_a_checkpoint_says_which_flag(tmp_path):
  result = launch("--stage=convert_dbpn", f"--workdir={tmp_path}")
  assert one_error_line(result).startswith("tfpets: error: --dbpn_checkpoint is required")


# --- superres -------------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path):
  """(folder, {name: bytes}): a small PNG (99 px), a large JPEG (480 px) and a corrupt file."""
  folder = tmp_path / "images"
  save(folder / "small.png", smooth_image(9, 11, 0))
  save(folder / "large.jpg", smooth_image(20, 24, 1), quality=95)
  (folder / "broken.png").write_bytes(b"not an image at all")
  return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


def test_superres_upscales_small_images_keeps_large_ones_and_rejects_corrupt_ones(
  converted, sr_network, image_folder, tmp_path
):
  folder, originals = image_folder
  workdir = tmp_path / "run"
  result = launch(
    "--stage=superres",
    f"--sr_model={converted[0]}",
    f"--sr_images={folder}",
    "--sr_max_area=300",
    f"--workdir={workdir}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  output = workdir / "upscaled"
  summary = json.loads((workdir / "reports" / "superres.json").read_text())
  assert (summary["upscaled"], summary["kept"], summary["rejected"]) == (1, 1, 1)
  assert summary["scale"] == SCALE
  assert summary["files"] == {
    "manifest": str(output / "manifest.csv"),
    "rejects": str(output / "rejects.csv"),
  }

  rows = {pathlib.Path(row["path"]).name: row for row in read_csv(output / "manifest.csv")}
  assert (
    rows["small.png"]["action"] == "upscaled" and rows["small.png"]["reason"] == "area 99 < 300"
  )
  assert rows["small.png"]["output_path"] == str(output / "small.png")
  assert (rows["small.png"]["output_width"], rows["small.png"]["output_height"]) == ("22", "18")
  assert rows["large.jpg"]["action"] == "kept" and rows["large.jpg"]["reason"] == "area 480 >= 300"
  assert rows["broken.png"]["action"] == "rejected" and rows["broken.png"]["output_path"] == ""
  (reject,) = read_csv(output / "rejects.csv")
  assert reject["file"] == str(folder / "broken.png") and reject["action"] == "skipped"

  small = read_image(str(folder / "small.png")).pixels
  expected = model_uint8(sr_network, small)
  assert len(np.unique(expected)) > 20  # not a clipped block
  upscaled = read_image(str(output / "small.png"))
  assert upscaled.format == "PNG"
  np.testing.assert_array_equal(upscaled.pixels, expected)
  assert (output / "large.jpg").read_bytes() == originals["large.jpg"]
  assert not (output / "broken.png").exists()
  assert sorted(p.name for p in folder.iterdir()) == sorted(originals)  # inputs untouched


def test_superres_in_place_rewrites_only_the_small_image(
  converted, sr_network, image_folder, tmp_path
):
  folder, originals = image_folder
  small = read_image(str(folder / "small.png")).pixels
  manifests = tmp_path / "manifests"
  result = launch(
    "--stage=superres",
    f"--sr_model={converted[0]}",
    f"--sr_images={folder}",
    "--sr_max_area=300",
    "--sr_in_place",
    f"--sr_output={manifests}",
    f"--workdir={tmp_path / 'run'}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(p.name for p in folder.iterdir()) == sorted(originals)
  np.testing.assert_array_equal(
    read_image(str(folder / "small.png")).pixels, model_uint8(sr_network, small)
  )
  assert (folder / "large.jpg").read_bytes() == originals["large.jpg"]
  assert (folder / "broken.png").read_bytes() == originals["broken.png"]
  rows = {pathlib.Path(row["path"]).name: row for row in read_csv(manifests / "manifest.csv")}
  assert rows["small.png"]["output_path"] == str(folder / "small.png")
  assert [rows[name]["action"] for name in ("small.png", "large.jpg", "broken.png")] == [
    "upscaled",
    "kept",
    "rejected",
  ]


def test_superres_with_max_area_one_keeps_every_image(converted, image_folder, tmp_path):
  folder, originals = image_folder
  output = tmp_path / "out"
  result = launch(
    "--stage=superres",
    f"--sr_model={converted[0]}",
    f"--sr_images={folder}",
    "--sr_max_area=1",
    f"--sr_output={output}",
    f"--workdir={tmp_path / 'run'}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((tmp_path / "run" / "reports" / "superres.json").read_text())
  assert (summary["upscaled"], summary["kept"], summary["rejected"]) == (0, 2, 1)
  for name in ("small.png", "large.jpg"):
    assert (output / name).read_bytes() == originals[name]
  rows = read_csv(output / "manifest.csv")
  assert sorted(row["action"] for row in rows) == ["kept", "kept", "rejected"]


def test_export_stage_writes_the_converted_upscaler_or_names_sr_model(converted, tmp_path):
  workdir = tmp_path / "run"
  result = launch(
    "--stage=export",
    "--export_model=superres",
    f"--sr_model={converted[0]}",
    f"--workdir={workdir}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "reports" / "export.json").read_text())
  version = workdir / "models" / "superres" / "1"
  assert report["export_model"] == "superres" and report["source"] == str(converted[0])
  assert report["path"] == str(version) and report["version"] == 1
  metadata = serving.load_metadata(version)
  assert metadata["kind"] == "superres" and metadata["details"]["scale"] == SCALE

  missing = launch("--stage=export", "--export_model=superres", f"--workdir={tmp_path / 'none'}")
  assert one_error_line(missing).startswith("tfpets: error: --sr_model is required")


# --- superres_eval --------------------------------------------------------------------------------


def test_superres_eval_scores_the_model_and_bicubic_as_the_benchmarks(
  converted, sr_network, tmp_path
):
  hr_images = {"a.png": smooth_image(31, 38, 3), "b.png": smooth_image(34, 29, 4)}
  for name, pixels in hr_images.items():
    save(tmp_path / "hr" / name, pixels)
  workdir = tmp_path / "run"
  result = launch(
    "--stage=superres_eval",
    f"--sr_model={converted[0]}",
    f"--sr_eval_hr={tmp_path / 'hr'}",
    f"--workdir={workdir}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "reports" / "superres_eval.json").read_text())
  assert report["scale"] == SCALE and report["num_images"] == 2 and report["rejects"] == []

  bicubic, model = [], []
  for name, hr in sorted(hr_images.items()):
    cropped = hr[: hr.shape[0] // SCALE * SCALE, : hr.shape[1] // SCALE * SCALE]
    lr = metrics.imresize(cropped, 1 / SCALE)
    assert lr.dtype == np.uint8 and lr.shape[:2] == (cropped.shape[0] // 2, cropped.shape[1] // 2)
    bicubic.append(psnr_on_y(metrics.imresize(lr, SCALE), cropped, SCALE))
    model.append(psnr_on_y(model_uint8(sr_network, lr), cropped, SCALE))
  assert report["bicubic"]["psnr"] == pytest.approx(np.mean(bicubic), abs=1e-9)
  assert report["model"]["psnr"] == pytest.approx(np.mean(model), abs=1e-3)
  assert abs(report["model"]["psnr"] - report["bicubic"]["psnr"]) > 1  # two different figures
  for key in ("model", "bicubic"):
    assert 0 < report[key]["ssim"] <= 1
  summary = json.loads((workdir / "reports" / "superres_eval_summary.json").read_text())
  assert summary["benchmark"]["bicubic"] == report["bicubic"]
  assert summary["benchmark"]["model"] == report["model"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  """(Keras model, its classify run folder): a random tiny ViT at 32 px over CLASSES, whose
  logits, unlike a random EfficientNet's vanishing ones, differ clearly from image to image."""
  keras.utils.set_random_seed(0)
  config = classify_train.recipe(
    classify_train.ClassifyConfig(model="vit", vit_size="tiny", image_size=32)
  )
  model = classify_train.build_model(config, len(CLASSES))
  run = tmp_path_factory.mktemp("classify_run")
  classify_train.save_classifier(model, run / "models", config, sorted(CLASSES), 32)
  return model, run


def labelled_folder(root: pathlib.Path) -> list[tuple[pathlib.Path, int]]:
  """Two images per class folder of different shapes; [(path, label)] in class order."""
  shapes = {"amber": [(40, 46), (40, 100)], "jade": [(48, 40), (30, 90)], "cobalt": [(36, 50)]}
  shapes["cobalt"].append((64, 32))
  found = []
  for label, name in enumerate(sorted(CLASSES)):
    for i, (height, width) in enumerate(shapes[name]):
      rng = np.random.default_rng(10 * label + i)
      pixels = np.clip(COLOURS[name] + rng.normal(0, 40, (height, width, 3)), 0, 255)
      found.append((save(root / name / f"{i}.png", pixels.astype(np.uint8)), label))
  return found


def test_superres_eval_small_image_protocol_accuracies(converted, sr_network, classifier, tmp_path):
  model, run = classifier
  files = labelled_folder(tmp_path / "labelled")
  short_side, max_area = 16, 400
  workdir = tmp_path / "run"
  result = launch(
    "--stage=superres_eval",
    f"--sr_model={converted[0]}",
    f"--sr_eval_labelled={tmp_path / 'labelled'}",
    f"--classifier={run}",
    f"--sr_eval_short_side={short_side}",
    f"--sr_max_area={max_area}",
    "--batch_size=4",
    f"--workdir={workdir}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "reports" / "superres_small_images.json").read_text())

  def predicted(pixels):
    return int(np.argmax(model(classify_data.eval_images(pixels[None], 32)).numpy()[0]))

  correct = {"original": [], "downscaled": [], "upscaled": []}
  upscaled_files, predictions = [], {}
  for path, label in files:
    original = read_image(str(path)).pixels
    ratio = short_side / min(original.shape[:2])
    small = cv2.resize(original, None, fx=ratio, fy=ratio, interpolation=cv2.INTER_AREA)
    assert min(small.shape[:2]) == short_side
    is_small = small.shape[0] * small.shape[1] < max_area
    upscaled = model_uint8(sr_network, small) if is_small else small
    if is_small:
      upscaled_files.append(str(path))
    views = {"original": original, "downscaled": small, "upscaled": upscaled}
    predictions[str(path)] = {key: predicted(view) for key, view in views.items()}
    for key in correct:
      correct[key].append(predictions[str(path)][key] == label)
  expected = {key: float(np.mean(values)) for key, values in correct.items()}
  assert len(set(expected.values())) > 1  # the three conditions are told apart

  assert report["num_images"] == 6 and report["num_upscaled"] == len(upscaled_files) == 3
  assert report["num_kept"] == 3 and report["classes"] == 3 and report["rejects"] == []
  for key, accuracy in expected.items():
    assert report[f"{key}_top1"] == pytest.approx(accuracy, abs=1e-9), key
  rows = {row["file"]: row for row in report["images"]}
  assert sorted(rows) == sorted(str(path) for path, _ in files)
  assert sorted(f for f, row in rows.items() if row["upscaled"]) == sorted(upscaled_files)
  for file, row in rows.items():
    assert {key: row[f"{key}_prediction"] for key in correct} == predictions[file], file


def test_superres_eval_on_an_unlabelled_folder_names_the_flag(converted, classifier, tmp_path):
  save(tmp_path / "flat" / "a.png", smooth_image(20, 20, 5))
  result = launch(
    "--stage=superres_eval",
    f"--sr_model={converted[0]}",
    f"--sr_eval_labelled={tmp_path / 'flat'}",
    f"--classifier={classifier[1]}",
    f"--workdir={tmp_path / 'run'}",
  )
  line = one_error_line(result)
  assert line.startswith(f"tfpets: error: --sr_eval_labelled={tmp_path / 'flat'}: needs labels")


@pytest.mark.parametrize(
  "stage,args",
  [
    ("superres", ["--sr_images=/nonexistent/images"]),
    ("superres_eval", ["--sr_eval_hr=/nonexistent/hr"]),
    ("superres_train", ["--sr_train_images=/nonexistent/hr"]),
  ],
)
def test_a_missing_model_names_sr_model(stage, args, tmp_path):
  result = launch(f"--stage={stage}", "--sr_model=/nonexistent", *args, f"--workdir={tmp_path}")
  assert one_error_line(result).startswith("tfpets: error: --sr_model=/nonexistent: ")


# --- superres_train -------------------------------------------------------------------------------


TRAIN = [
  "--stage=superres_train",
  "--sr_train_variant=dbpns",
  "--sr_train_scale=2",
  "--sr_train_patch=12",
  "--sr_train_epochs=2",
  "--sr_train_val_count=1",
  "--batch_size=4",
]


@pytest.mark.slow
def test_superres_train_trains_finds_itself_done_and_fine_tunes(tmp_path):
  for i in range(6):
    save(tmp_path / "hr" / f"{i}.png", smooth_image(64, 64, 20 + i))
  workdir = tmp_path / "run"
  args = [*TRAIN, f"--sr_train_images={tmp_path / 'hr'}"]
  result = launch(*args, f"--workdir={workdir}")
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "reports" / "superres_train.json").read_text())
  # 5 training images (1 held out) in batches of 4: 2 steps per epoch, 2 epochs.
  assert (report["train_images"], report["val_images"], report["steps_per_epoch"]) == (5, 1, 2)
  assert report["planned_steps"] == report["optimizer_steps"] == 4 and report["decay_step"] == 2
  assert report["model"] == "dbpns x2" and report["init"] == "kaiming"
  assert (report["lr_patch"], report["hr_patch"]) == (12, 24)
  model_file = workdir / "models" / "dbpn.keras"
  trained = keras.saving.load_model(model_file, compile=False)
  lr = np.random.default_rng(0).uniform(0, 1, (1, 6, 7, 3)).astype(np.float32)
  assert trained(lr).shape == (1, 12, 14, 3)
  assert trained.count_params() == report["parameters"]

  stamp = model_file.stat().st_mtime_ns
  again = launch(*args, f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already trained" in again.stderr
  assert model_file.stat().st_mtime_ns == stamp
  assert json.loads((workdir / "reports" / "superres_train.json").read_text()) == report

  # Fine-tuning at a zero learning rate keeps exactly the weights it starts from.
  tuned_dir = tmp_path / "tuned"
  tuned = launch(
    *args, f"--sr_model={workdir}", "--sr_train_learning_rate=0", f"--workdir={tuned_dir}"
  )
  assert tuned.returncode == 0, tuned.stderr[-3000:]
  tuned_report = json.loads((tuned_dir / "reports" / "superres_train.json").read_text())
  assert tuned_report["init"] == str(model_file)
  assert tuned_report["optimizer_steps"] == 4
  tuned_model = keras.saving.load_model(tuned_dir / "models" / "dbpn.keras", compile=False)
  for got, want in zip(tuned_model.get_weights(), trained.get_weights()):
    np.testing.assert_array_equal(got, want)
