"""The StyleGAN2-ADA training loop (tfpets.gan.training_loop): what a run writes, resuming after a
kill, transfer learning, multi-worker runs, preset resolution and the resumable data stream.

The runs are tiny (8 px from 16 px records, 16 channels, batch 4, a few iterations); each run pays
for tracing the training step, so one module-scoped run serves most checks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tests.gan import pickle_writers
from tests.runtime.test_strategy import free_port
from tfpets.data import pipeline
from tfpets.data.prepare import lod_pyramid
from tfpets.data.tfrecord import multires
from tfpets.errors import ArgumentError
from tfpets.gan import networks, snapshot, training_loop
from tfpets.runtime.tensorboard import make_grid

RES = 8  # the training resolution, a level below the records' 16 px
GRID = (3, 2)


def write_records(directory, count=24, size=16, num_classes=0, seed=0):
  """`count` images of coloured rectangles on a gradient, as StyleGAN multi-resolution records."""
  rng = np.random.RandomState(seed)
  writer = multires.MultiResWriter(directory, size)
  y, x = np.mgrid[0:size, 0:size]
  for _ in range(count):
    image = np.stack([x * 255 / size, y * 255 / size, rng.uniform(0, 255) + 0 * x], -1)
    x0, y0 = rng.randint(0, size // 2, 2)
    image[y0 : y0 + size // 2, x0 : x0 + size // 2] = rng.uniform(0, 255, 3)
    writer.write(lod_pyramid(image.astype(np.uint8)))
  labels = rng.randint(0, num_classes, count) if num_classes else None
  writer.close(None if labels is None else multires.one_hot(labels, num_classes))
  return directory


def tiny_options(records_dir, network=None, settings=None, **overrides):
  """The demo preset at 8 px, narrowed to 16 channels, batch 4, no metrics unless asked."""
  arguments = dict(
    resolution=RES, batch=4, kimg=0.024, kimg_per_tick=0.008, snap=1, metrics=["none"], grid=GRID
  )
  arguments.update(overrides)
  info = training_loop.records_info(records_dir)
  options = training_loop.resolve_options("demo", info, **arguments)
  network = dict(channel_base=256, channel_max=16, z_dim=16, w_dim=16, **(network or {}))
  return dataclasses.replace(
    options,
    network=dataclasses.replace(options.network, **network),
    settings=dataclasses.replace(options.settings, **(settings or {})),
  )


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return write_records(tmp_path_factory.mktemp("records") / "stylegan")


@pytest.fixture(scope="module")
def labelled_records(tmp_path_factory):
  return write_records(tmp_path_factory.mktemp("labelled") / "stylegan", num_classes=3)


@pytest.fixture(scope="module")
def run(labelled_records, tmp_path_factory):
  """A conditional run of 6 iterations: ticks end after iterations 1, 3, 5 and 6 (0.008 kimg
  each); snapshots every 2 ticks and at the end; fid24 on each; the top D layer frozen; mirrored."""
  workdir = tmp_path_factory.mktemp("run")
  options = tiny_options(
    labelled_records,
    snap=2,
    metrics=["fid24"],
    freezed=1,
    mirror=True,
    cond=True,
    keep_checkpoints=10,
  )
  summary = training_loop.train(options, labelled_records, workdir)
  return options, workdir, summary


def decode_png(path):
  return tf.io.decode_png(tf.io.read_file(str(path))).numpy()


def checkpoint_values(path):
  reader = tf.train.load_checkpoint(str(path))
  names = [k for k in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in k]
  return {k.replace("/.ATTRIBUTES/VARIABLE_VALUE", ""): reader.get_tensor(k) for k in names}


def test_grids_are_the_fixed_latents_of_g_ema_and_the_first_reals(run, labelled_records):
  options, workdir, summary = run
  columns, rows = GRID
  reals = decode_png(workdir / "images" / "reals.png")
  assert reals.shape == (rows * RES, columns * RES, 3)
  stream = pipeline.multires_dataset(
    str(labelled_records), batch_size=columns * rows, resolution=RES, mirror=True, seed=0, start=0
  )
  first, labels = next(iter(stream))
  np.testing.assert_array_equal(reals, make_grid(snapshot.to_uint8(first), columns, pad=0))

  fakes = decode_png(summary["last_grid"])
  assert summary["last_grid"] == str(workdir / "images" / "fakes000000.png")
  assert fakes.shape == (rows * RES, columns * RES, 3)
  _, models = networks.load_networks(summary["last_snapshot"])
  z = snapshot.fixed_latents(columns * rows, options.network.z_dim, options.seed)
  # Conditional: the fakes take the labels of the reals shown, as the official grid does.
  expected = snapshot.generate_images(models["G_ema"], z, labels.numpy())
  np.testing.assert_array_equal(fakes, make_grid(expected, columns, pad=0))
  assert len(np.unique(fakes.reshape(-1, 3), axis=0)) > 10  # not a blank image


def test_snapshot_holds_the_trained_networks_of_the_last_checkpoint(run):
  options, workdir, summary = run
  config, models = networks.load_networks(summary["last_snapshot"])
  assert config == options.network and sorted(models) == ["D", "G", "G_ema"]
  assert config.c_dim == 3
  payload = json.loads((workdir / summary["last_snapshot"] / "config.json").read_text())
  assert (payload["kimg"], payload["tick"]) == (0.024, 3)
  latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  for name, model in models.items():
    fresh = networks.Discriminator(config) if name == "D" else networks.Generator(config)
    before = [w.numpy().copy() for w in fresh.weights]
    tf.train.Checkpoint(**{name: fresh}).restore(latest).expect_partial()
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, fresh.weights))
    for restored, saved in zip(fresh.weights, model.weights):
      np.testing.assert_array_equal(restored.numpy(), saved.numpy())


def test_checkpoints_hold_counters_data_position_and_a_frozen_layer(run):
  _, workdir, _ = run
  state = tf.train.get_checkpoint_state(str(workdir / "checkpoints"))
  names = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
  assert names == ["ckpt-4", "ckpt-20", "ckpt-24"]  # snapshot ticks 0, 2 and the end
  first = checkpoint_values(workdir / "checkpoints" / "ckpt-4")
  last = checkpoint_values(workdir / "checkpoints" / "ckpt-24")
  counters = ("cur_nimg", "batch_idx", "data_position", "tick")
  assert [int(last[k]) for k in counters] == [24, 6, 24, 4]
  assert [int(first[k]) for k in counters] == [4, 1, 4, 1]
  # Freeze-D 1: the top block's FromRGB never moves and has no Adam slots; conv0 trains.
  np.testing.assert_array_equal(first["D/b8/fromrgb/weight"], last["D/b8/fromrgb/weight"])
  assert not np.array_equal(first["D/b8/conv0/weight"], last["D/b8/conv0/weight"])
  d_weights = [k for k in last if k.startswith("D/")]
  d_slots = [k for k in last if k.startswith("D_opt/m/")]
  assert len(d_slots) == len(d_weights) - 2
  assert {"G_opt/iterations", "pl_mean", "augment_p", "G_ema/mapping/w_avg"} <= set(last)


def test_tensorboard_has_tick_scalars_metrics_and_grids(run):
  _, workdir, _ = run
  events = [
    e
    for path in (workdir / "logs" / "train").glob("events.out.tfevents.*")
    for e in tf.compat.v1.train.summary_iterator(str(path))
  ]
  counts = {}
  for event in events:
    for value in event.summary.value:
      counts[value.tag] = counts.get(value.tag, 0) + 1
  per_tick = [
    "Loss/G/loss",
    "Loss/D/loss",
    "Loss/signs/real",
    "Progress/augment",
    "Progress/kimg",
    "Progress/tick",
    "Timing/sec_per_kimg",
    "Timing/sec_per_tick",
    "Resources/peak_host_mem_gb",
  ]
  assert {tag: counts.get(tag) for tag in per_tick} == {tag: 4 for tag in per_tick}
  assert counts.get("Loss/r1_penalty") == 1 and counts.get("Loss/pl_penalty") == 2
  assert counts.get("Metrics/fid24_seeded") == 3
  assert counts.get("Images/fakes") == 3 and counts.get("Images/reals") == 1


def test_metric_lines_name_their_snapshot_and_feature_network(run):
  _, workdir, summary = run
  lines = (workdir / "reports" / "metric-fid24_seeded.jsonl").read_text().splitlines()
  rows = [json.loads(line) for line in lines]
  assert [row["kimg"] for row in rows] == [0.004, 0.02, 0.024]
  assert all(row["feature_network"] == "seeded-random-cnn (not standard FID)" for row in rows)
  assert all(row["results"]["fid24_seeded"] > 0 for row in rows)
  assert summary["metric_files"] == [str(workdir / "reports" / "metric-fid24_seeded.jsonl")]
  assert summary["metrics"] == rows[-1]["results"]


def test_a_finished_run_is_not_trained_again(run, labelled_records):
  options, workdir, summary = run
  state = workdir / "checkpoints" / "checkpoint"
  before = state.read_text()
  again = training_loop.train(options, labelled_records, workdir)
  assert again["kimg"] == 0.024 and again["last_snapshot"] == summary["last_snapshot"]
  assert state.read_text() == before
  lines = (workdir / "reports" / "metric-fid24_seeded.jsonl").read_text().splitlines()
  assert len(lines) == 3


def test_resuming_drops_metric_lines_after_the_checkpoint(tmp_path):
  path = tmp_path / "metric-fid2k_seeded.jsonl"
  path.write_text("".join(json.dumps({"kimg": k, "results": {}}) + "\n" for k in (0, 4, 8)))
  training_loop._forget_metric_lines_after(tmp_path, 4.0)  # pylint: disable=protected-access
  assert [json.loads(line)["kimg"] for line in path.read_text().splitlines()] == [0, 4]


# --- Resuming after kill -9 -----------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys
    args = json.loads(sys.argv[1])
    from tfpets.runtime.strategy import make_strategy
    strategy = make_strategy(args["strategy"])
    import keras
    keras.utils.set_random_seed(0)
    from tests.gan.test_training_loop import tiny_options
    from tfpets.gan import training_loop
    options = tiny_options(args["records"], **args["options"])
    summary = training_loop.train(options, args["records"], args["workdir"], strategy)
    print("SUMMARY", json.dumps(summary), flush=True)
""")


def start_worker(records, workdir, options, strategy="cpu", env=None):
  arguments = dict(records=str(records), workdir=str(workdir), options=options, strategy=strategy)
  return subprocess.Popen(
    [sys.executable, "-c", WORKER, json.dumps(arguments)],
    env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", **(env or {})),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def finish(process):
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
  (line,) = [line for line in out.splitlines() if line.startswith("SUMMARY ")]
  return json.loads(line.split(" ", 1)[1])


def checkpoint_count(workdir):
  state = workdir / "checkpoints" / "checkpoint"
  return state.read_text().count("all_model_checkpoint_paths") if state.is_file() else 0


@pytest.mark.slow
def test_kill_9_then_the_same_command_ends_bit_identical(records, tmp_path):
  # 16 iterations, a checkpoint at every tick (after iterations 1, 3, 5, ...), ADA moving p fast,
  # random noise inputs and style mixing on: every random draw of a step is keyed by the seed and
  # the iteration, and the data stream by the seed and the images read.
  options = dict(
    kimg=0.064,
    keep_checkpoints=20,
    settings=dict(ada_kimg=0.5),
  )
  whole, killed = tmp_path / "whole", tmp_path / "killed"
  uninterrupted = start_worker(records, whole, options)
  victim = start_worker(records, killed, options)
  deadline = time.time() + 600
  while checkpoint_count(killed) < 2 and victim.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  os.kill(victim.pid, signal.SIGKILL)
  victim.communicate()
  assert victim.returncode == -signal.SIGKILL
  killed_at = tf.train.latest_checkpoint(str(killed / "checkpoints"))
  assert killed_at is not None and not killed_at.endswith("ckpt-64")
  resumed = finish(start_worker(records, killed, options))
  expected = finish(uninterrupted)
  assert resumed["kimg"] == expected["kimg"] == 0.064

  a = checkpoint_values(whole / "checkpoints" / "ckpt-64")
  b = checkpoint_values(killed / "checkpoints" / "ckpt-64")
  assert sorted(a) == sorted(b)
  different = [name for name in a if not np.array_equal(a[name], b[name])]
  assert different == [], different  # weights, Adam, G_ema, p, ADA statistics, counters: all equal
  assert float(a["augment_p"]) > 0 and int(a["data_position"]) == 64
  state = tf.train.get_checkpoint_state(str(killed / "checkpoints"))
  assert os.path.basename(state.model_checkpoint_path) == "ckpt-64"


# --- Transfer learning from an official pickle --------------------------------------------------


@pytest.mark.slow
def test_transfer_learning_from_a_tf1_pickle_with_freeze_d(records, tmp_path):
  common = dict(resolution=RES, num_channels=3, fmap_base=64, fmap_max=16, label_size=0)
  common.update(num_fp16_res=0, conv_clamp=256)
  g_kwargs = dict(common, latent_size=8, dlatent_size=8, mapping_layers=2, architecture="skip")
  d_kwargs = dict(common, architecture="resnet", mbstd_group_size=4, mapping_layers=0)
  pickle_path = tmp_path / "network-snapshot-000480.pkl"
  _, d_params, _ = pickle_writers.write_tf_pickle(pickle_path, g_kwargs, d_kwargs)
  options = tiny_options(records, kimg=0.008, resume=str(pickle_path), freezed=1)
  assert (options.settings.ada_kimg, options.settings.ema_rampup) == (100.0, None)
  summary = training_loop.train(options, records, tmp_path / "run")
  run_file = json.loads((tmp_path / "run" / "checkpoints" / "run.json").read_text())
  assert (run_file["network"]["z_dim"], run_file["network"]["channel_max"]) == (8, 16)
  last = checkpoint_values(tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")))
  # The frozen FromRGB still holds the pickle's weights after training; what trains moved.
  np.testing.assert_array_equal(last["D/b8/fromrgb/weight"], d_params["8x8/FromRGB/weight"])
  assert not np.array_equal(last["D/b8/conv0/weight"], d_params["8x8/Conv0/weight"])
  assert int(last["cur_nimg"]) == 8 and summary["kimg"] == 0.008


def test_resume_source_errors_name_the_source(records, tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="neither a network snapshot"):
    snapshot.read_start_networks(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no such snapshot folder"):
    snapshot.read_start_networks(tmp_path / "missing.pkl")


# --- Multi-worker -------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_on_loopback_share_a_workdir_only_the_chief_writes_and_both_resume(
  records, tmp_path
):
  ports = [free_port() for _ in range(2)]
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  options = dict(kimg=0.012, metrics=["fid24"])
  envs = []
  for index in range(2):
    (tmp_path / f"tmp{index}").mkdir()
    task = {"type": "worker", "index": index}
    envs.append(
      {
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": task}),
        "TMPDIR": str(tmp_path / f"tmp{index}"),
      }
    )

  def run_workers(workdirs, kimg):
    return [
      start_worker(records, workdir, dict(options, kimg=kimg), "multiworker", env)
      for workdir, env in zip(workdirs, envs)
    ]

  run = tmp_path / "run"
  chief, other = [finish(w) for w in run_workers([run, run], 0.012)]
  assert chief["kimg"] == 0.012 and other == {"workdir": str(run), "kimg": 0.012, "chief": False}
  assert (run / "checkpoints" / "checkpoint").is_file()
  assert (run / "images" / "reals.png").is_file() and (run / "images" / "fakes000000.png").is_file()
  assert networks.load_networks(chief["last_snapshot"])[0].resolution == RES
  assert (run / "reports" / "metric-fid24_seeded.jsonl").is_file()
  assert list((run / "logs" / "train").glob("events.out.tfevents.*"))
  # The other worker saved its checkpoints into a temporary folder and deleted it.
  assert list((tmp_path / "tmp1").iterdir()) == []

  # The same command with a longer run: both restore the chief's checkpoint (workers that restore
  # different ones stop, as below) and go on.
  chief, other = [finish(w) for w in run_workers([run, run], 0.016)]
  assert chief["kimg"] == other["kimg"] == 0.016 and not other["chief"]

  # A worker pointed at another workdir finds no checkpoint: both stop rather than drift apart.
  workers = run_workers([run, tmp_path / "elsewhere"], 0.020)
  for worker in workers:
    _, err = worker.communicate(timeout=600)
    assert worker.returncode != 0 and "resumed from different checkpoints" in err, err[-2000:]


# --- Options --------------------------------------------------------------------------------------


def test_the_pet_papers_run_resolves_to_auto_at_128_px():
  options = training_loop.resolve_options("auto", training_loop.RecordsInfo(128, 37, 7349))
  s, n = options.settings, options.network
  assert (s.batch, s.batch_gpu, s.learning_rate, s.ema_kimg, s.ema_rampup) == (
    32,
    32,
    0.0025,
    10,
    0.05,
  )
  assert s.r1_gamma == pytest.approx(0.1024) and (s.aug, s.ada_target, s.ada_kimg) == (
    "ada",
    0.6,
    500,
  )
  assert (n.resolution, n.c_dim, n.channel_base, n.mapping_layers, n.mbstd_group_size) == (
    128,
    0,
    16384,
    2,
    4,
  )
  assert (options.total_kimg, options.snap, options.metrics, options.augpipe) == (
    25000,
    50,
    ("fid50k_full",),
    "bgc",
  )
  eight = training_loop.resolve_options("auto", training_loop.RecordsInfo(256, 0, 7349), gpus=8)
  assert (eight.settings.batch, eight.settings.batch_gpu) == (64, 8)
  assert eight.settings.r1_gamma == pytest.approx(0.2048)


def test_the_cpu_preset_and_overrides():
  info = training_loop.RecordsInfo(128, 12, 960)
  cpu = training_loop.resolve_options("cpu", info)
  assert (cpu.network.resolution, cpu.network.channel_max, cpu.settings.batch) == (32, 32, 16)
  assert cpu.metrics == ("fid2k_full",) and cpu.snap == 3
  assert cpu.settings.r1_gamma == pytest.approx(0.0002 * 32**2 / 16)
  custom = training_loop.resolve_options(
    "paper256",
    info,
    resolution=64,
    gamma=5,
    kimg=100,
    batch=16,
    snap=4,
    cond=True,
    metrics=["none"],
  )
  assert (custom.settings.r1_gamma, custom.settings.batch, custom.settings.batch_gpu) == (5, 16, 16)
  assert (custom.total_kimg, custom.snap, custom.metrics, custom.network.c_dim) == (100, 4, (), 12)
  fixed = training_loop.resolve_options("cifar", info, aug="fixed", p=0.2, resolution=32)
  assert (fixed.settings.aug, fixed.settings.p, fixed.network.d_architecture) == (
    "fixed",
    0.2,
    "orig",
  )


@pytest.mark.parametrize(
  "arguments, argument",
  [
    (dict(preset="big"), "preset"),
    (dict(resolution=24), "resolution"),
    (dict(resolution=256), "resolution"),
    (dict(p=0.3), "p"),
    (dict(aug="fixed", target=0.5), "target"),
    (dict(batch=6, gpus=4), "batch"),
    (dict(batch=16, batch_gpu=6), "batch_gpu"),
    (dict(metrics=["fid"]), "metrics"),
    (dict(snap=-1), "snap"),
    (dict(augpipe="xyz"), "augpipe"),
    (dict(cond=True), "cond"),
  ],
)
def test_bad_arguments_name_themselves(arguments, argument):
  arguments = dict(arguments)
  preset = arguments.pop("preset", "cpu")
  with pytest.raises(ArgumentError) as raised:
    training_loop.resolve_options(preset, training_loop.RecordsInfo(128, 0, 10), **arguments)
  assert raised.value.argument == argument


# --- The resumable data stream -----------------------------------------------------------------


def test_the_stream_resumes_at_any_image_and_each_epoch_is_a_permutation(records):
  def stream(start, batches, seed=3):
    ds = pipeline.multires_dataset(
      str(records), batch_size=5, resolution=RES, mirror=True, seed=seed, start=start
    )
    return np.concatenate([images.numpy() for images, _ in ds.take(batches)])

  whole = stream(0, 12)  # 60 images: two and a half epochs of 24
  np.testing.assert_array_equal(stream(35, 5), whole[35:60])
  level = pipeline.multires_dataset(
    str(records), batch_size=24, resolution=RES, training=False, cache=False
  )
  level = next(iter(level))[0].numpy()  # the 24 images in stored order

  def index_in_level(image):
    matches = [i for i, real in enumerate(level) if np.array_equal(image, real)]
    return matches[0] if matches else None

  flipped = 0
  for epoch in (whole[:24], whole[24:48]):
    order = []
    for image in epoch:
      index = index_in_level(image)
      if index is None:  # a mirror image
        index, flipped = index_in_level(image[:, ::-1]), flipped + 1
      order.append(index)
    assert sorted(order) == list(range(24))
  assert 0 < flipped < 48
  assert not np.array_equal(whole[:24], whole[24:48])
  assert not np.array_equal(whole, stream(0, 12, seed=4))
