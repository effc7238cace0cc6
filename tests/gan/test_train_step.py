"""The StyleGAN2-ADA training step: constants, Adam, the guard, directions, ADA, resume, and its
equality across gradient accumulation, jit_compile and MirroredStrategy over 2 logical CPUs.

One reference trainer (8 px, batch 8 in chunks of 4) runs iteration 0, which has all four phases;
the other layouts restore its initial checkpoint, run the same iteration and must end in the same
state. Determinism needs the generator's noise inputs constant and style mixing off: both still
draw from TensorFlow's stateful generator inside tfpets.gan.networks. Minibatch stddev is
per-sample (group size 1) so that chunks of 4 and of 8 see the same statistics.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO
from tfpets.gan import loss as loss_lib
from tfpets.gan import presets
from tfpets.gan import train_step as ts

BATCH = 8


def seeded_flip(images, p, seed):
  """A differentiable, seed-dependent augmentation computed with integer arithmetic only, so that
  it draws the same with and without XLA: where p > 0, mirror when the hash is odd and scale by
  1 + p * u; the identity at p = 0."""
  p = tf.cast(p, tf.float32)
  h = tf.math.floormod(seed[0] * 7919 + seed[1], 1009)
  mirror = tf.logical_and(tf.equal(h % 2, 1), p > 0)
  flipped = tf.where(mirror, images[:, :, ::-1, :], images)
  return flipped * (1.0 + p * tf.cast(h, tf.float32) / 1009.0)


def network_config():
  return presets.network_config(
    "demo", 8, channel_max=16, z_dim=16, w_dim=16, mapping_layers=1, mbstd_group_size=1
  )


def settings(**overrides):
  fields = dict(
    batch=BATCH,
    batch_gpu=4,
    learning_rate=0.0025,
    r1_gamma=1.0,
    style_mixing_prob=0.0,
    ema_kimg=0.01,
    ema_rampup=None,
    aug="ada",
    p=0.2,
    ada_kimg=0.1,
    noise_mode="const",
  )
  fields.update(overrides)
  return ts.TrainSettings(**fields)


def build_trainer(strategy=None, freezed=0, **overrides):
  return ts.GanTrainer(
    network_config(), settings(**overrides), strategy, seeded_flip, seed=3, freezed=freezed
  )


def reference_batch():
  return np.random.default_rng(5).uniform(-1, 1, [BATCH, 8, 8, 3]).astype(np.float32)


def state_arrays(trainer):
  """Every variable of the training state, by a stable name: 'G/<index>', 'G_opt/<name>',
  'pl_mean', ..."""
  state = {}
  for key, item in trainer.checkpoint_items().items():
    if hasattr(item, "weights"):  # Keras models, in construction order
      named = [(f"{key}/{i}", v) for i, v in enumerate(item.weights)]
    elif isinstance(item, tf.Module):
      named = [(f"{key}/{v.name.split('/')[-1].split(':')[0]}", v) for v in item.variables]
    else:
      named = [(key, item)]
    for name, v in named:
      state[name] = np.asarray(tf.convert_to_tensor(v))
  return state


def assert_same_state(actual, expected, rtol, atol, outlier_atol=0.0, max_outlier_fraction=0.0):
  """Every element within atol + rtol |expected|, except that up to `max_outlier_fraction` of all
  elements may differ by up to `outlier_atol`: Adam's normalisation turns float32 rounding in a
  gradient element near zero into an update difference of up to a few percent of the lr."""
  assert sorted(actual) == sorted(expected)
  outliers, total = 0, 0
  for name in expected:
    a, e = np.asarray(actual[name], np.float64), np.asarray(expected[name], np.float64)
    excess = np.abs(a - e) > atol + rtol * np.abs(e)
    outliers, total = outliers + int(excess.sum()), total + e.size
    np.testing.assert_allclose(a, e, rtol=rtol, atol=max(atol, outlier_atol), err_msg=name)
  assert outliers <= max_outlier_fraction * total, (outliers, total)


def assert_same_results(actual, expected, rtol, atol=0.0):
  assert sorted(actual) == sorted(expected)
  for name in expected:
    np.testing.assert_allclose(actual[name], expected[name], rtol=rtol, atol=atol, err_msg=name)


def as_numpy(results):
  return {k: np.asarray(v) for k, v in results.items()}


WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    from tfpets.runtime.strategy import make_strategy
    kind, jit, checkpoint, out = sys.argv[1:]
    strategy = make_strategy(kind, num_cpu_replicas=2)
    from tests.gan.test_train_step import build_trainer, reference_batch, state_arrays
    trainer = build_trainer(strategy, jit_compile=jit == "1")
    tf.train.Checkpoint(**trainer.checkpoint_items()).read(checkpoint).assert_consumed()
    results = trainer.train_step(reference_batch())
    arrays = {"result:" + k: np.asarray(v) for k, v in results.items()}
    arrays.update(state_arrays(trainer))
    arrays["replicas"] = np.array(strategy.num_replicas_in_sync)
    np.savez(out, **arrays)
""")


def start_worker(kind, jit, checkpoint, out):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.Popen(
    [sys.executable, "-c", WORKER, kind, jit, checkpoint, str(out)],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def finish_worker(proc, out):
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-4000:]
  with np.load(out) as data:
    arrays = dict(data)
  results = {k[len("result:") :]: v for k, v in arrays.items() if k.startswith("result:")}
  state = {k: v for k, v in arrays.items() if not k.startswith("result:") and k != "replicas"}
  return int(arrays["replicas"]), results, state


SUBPROCESS_TESTS = {
  "jit": ("test_jit_compiled_iteration_gives_the_same_losses_and_state", "cpu", "1"),
  "mirrored": ("test_mirrored_over_two_logical_cpus_equals_one_device", "mirrored", "0"),
}


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory):
  """Iteration 0 of the reference trainer. The jit and mirrored runs (of selected tests) start
  in subprocesses first, so that they overlap with this process's tracing."""
  directory = tmp_path_factory.mktemp("train_step")
  trainer = build_trainer()
  checkpoint = tf.train.Checkpoint(**trainer.checkpoint_items()).write(str(directory / "init"))
  selected = {item.name for item in request.session.items}
  workers = {}
  for name, (test, kind, jit) in SUBPROCESS_TESTS.items():
    if test in selected:
      out = directory / f"{name}.npz"
      workers[name] = start_worker(kind, jit, checkpoint, out), out
  initial = state_arrays(trainer)
  results = as_numpy(trainer.train_step(reference_batch()))
  yield dict(
    trainer=trainer,
    checkpoint=checkpoint,
    initial=initial,
    results=results,
    state=state_arrays(trainer),
    workers=workers,
  )
  for proc, _ in workers.values():
    if proc.poll() is None:
      proc.kill()
      proc.communicate()


def restore(reference):
  trainer = reference["trainer"]
  tf.train.Checkpoint(**trainer.checkpoint_items()).read(reference["checkpoint"]).assert_consumed()
  return trainer


def test_lazy_regularisation_pre_scales_adam():
  lr, beta1, beta2 = ts.lazy_adam_hparams(0.0025, 0.0, 0.99, 4)
  assert (lr, beta1, beta2) == pytest.approx((0.0025 * 4 / 5, 0.0, 0.99 ** (4 / 5)), rel=1e-12)
  assert ts.lazy_adam_hparams(0.002, 0.5, 0.99, 16) == pytest.approx(
    (0.002 * 16 / 17, 0.5 ** (16 / 17), 0.99 ** (16 / 17)), rel=1e-12
  )
  trainer = build_trainer(aug="noaug", learning_rate=0.01)
  g, d = trainer.G_opt, trainer.D_opt
  assert (g.learning_rate, g.beta1, g.beta2, g.epsilon) == pytest.approx(
    (0.008, 0.0, 0.99**0.8, 1e-8), rel=1e-12
  )
  assert (d.learning_rate, d.beta2) == pytest.approx((0.01 * 16 / 17, 0.99 ** (16 / 17)), rel=1e-12)


def test_ema_beta_with_and_without_ramp_up():
  def official(batch, ema_kimg, ema_rampup, cur_nimg):
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
      ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))

  assert float(ts.ema_beta(32, 10, None, 0)) == pytest.approx(0.997784, abs=1e-6)  # auto, 1 GPU
  for args in [
    (32, 10, None, 123456),
    (32, 10, 0.05, 0),
    (32, 10, 0.05, 64_000),
    (64, 20, 0.05, 1e7),
  ]:
    assert float(ts.ema_beta(*args)) == pytest.approx(official(*args), rel=1e-12, abs=1e-300)
  assert float(ts.ema_beta(32, 10, 0.05, 0)) == 0.0  # G_ema = G at the start of a ramp-up
  assert float(ts.ema_beta(32, 10, 0.05, 64_000)) == pytest.approx(0.5 ** (32 / 3200))


def test_adam_is_torch_adam_and_a_false_ok_skips_everything():
  rng = np.random.default_rng(1)
  x0 = rng.standard_normal([3, 2]).astype(np.float32)
  var = tf.Variable(x0)
  adam = ts.Adam([var], 0.01, 0.5, 0.9, 1e-8)
  x, m, v = x0.astype(np.float64), np.zeros_like(x0, np.float64), np.zeros_like(x0, np.float64)
  t = 0
  for step in range(4):
    g = rng.standard_normal([3, 2]).astype(np.float32)
    ok = step != 2
    adam.apply([var], [tf.constant(g)], tf.constant(ok))
    if ok:  # torch.optim.Adam
      t += 1
      m = 0.5 * m + 0.5 * g
      v = 0.9 * v + 0.1 * g.astype(np.float64) ** 2
      x = x - 0.01 / (1 - 0.5**t) * m / (np.sqrt(v) / np.sqrt(1 - 0.9**t) + 1e-8)
    np.testing.assert_allclose(var.numpy(), x, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(adam.v[0].numpy(), v, rtol=1e-5, atol=1e-9)
  assert int(adam.iterations.numpy()) == 3


def test_settings_and_layout_errors():
  with pytest.raises(ValueError, match="aug must be one of ada, fixed, noaug"):
    ts.TrainSettings(aug="sometimes")
  with pytest.raises(ValueError, match="d_reg_interval must be >= 1"):
    ts.TrainSettings(d_reg_interval=0)
  with pytest.raises(
    ValueError, match=r"batch 8 must be a multiple of batch_gpu x replicas \(3 x 1\)"
  ):
    build_trainer(batch_gpu=3)
  with pytest.raises(ValueError, match="aug='fixed' needs an augment_pipe"):
    ts.GanTrainer(network_config(), settings(aug="fixed"))
  auto = ts.TrainSettings.from_training_config(presets.training_config("paper256", 256))
  assert (auto.batch, auto.batch_gpu, auto.r1_gamma, auto.ema_kimg) == (64, 8, 1.0, 20.0)
  assert auto.ema_rampup is None and auto.learning_rate == 0.0025 and auto.pl_weight == 2.0
  trainer = build_trainer(aug="noaug", batch_gpu=2)
  assert (trainer.num_chunks, trainer.rounds, trainer.pl_chunk) == (4, 4, 1)
  assert trainer.phases_at(0) == list(ts.PHASES) and trainer.phases_at(4) == [
    "Gmain",
    "Greg",
    "Dmain",
  ]
  assert trainer.phases_at(17) == ["Gmain", "Dmain"]


def test_freeze_d_leaves_the_top_layers_out_of_training_and_of_adam():
  whole, frozen = build_trainer(aug="noaug"), build_trainer(aug="noaug", freezed=2)
  top = frozen.D.blocks[0]
  assert not top.fromrgb.trainable and not top.conv0.trainable and top.conv1.trainable
  kept = {v.path for v in frozen.D.trainable_variables}
  assert kept == {v.path for v in whole.D.trainable_variables} - {
    v.path for layer in (top.fromrgb, top.conv0) for v in layer.weights
  }
  assert len(frozen.D_opt.m) == len(kept) < len(whole.D_opt.m)
  layers = sum(4 - [b.fromrgb, b.skip].count(None) for b in whole.D.blocks)
  with pytest.raises(ValueError, match=f"D has only {layers} layers above its epilogue"):
    build_trainer(aug="noaug", freezed=layers + 1)


def test_draws_and_labels_follow_the_global_sample_index():
  config = presets.network_config(
    "demo", 8, c_dim=3, channel_max=8, z_dim=4, w_dim=4, mapping_layers=1
  )
  four, eight = (ts.GanTrainer(config, settings(aug="noaug", batch_gpu=b)) for b in (4, 8))
  rng = np.random.default_rng(2)
  reals = tf.constant(reference_batch())
  real_c = tf.constant(rng.standard_normal([BATCH, 3]).astype(np.float32))
  gen_c = tf.constant(rng.standard_normal([4, BATCH, 3]).astype(np.float32))
  seed = tf.constant([1, 2], tf.int64)

  def inputs(trainer, phase, chunk, labels=gen_c):
    args = (reals, real_c, labels, seed, 0.0, 0.0)
    return [np.asarray(x) for x in trainer._chunk_inputs(phase, chunk, *args)]

  for phase, row in (("Gmain", 0), ("Greg", 1), ("Dmain", 2)):
    whole = inputs(eight, phase, 0)
    halves = [inputs(four, phase, k) for k in (0, 1)]
    n = len(whole[0])  # 8, or 4 path-length samples
    np.testing.assert_array_equal(whole[0], np.concatenate([h[0] for h in halves]))  # z
    np.testing.assert_array_equal(whole[1], gen_c[row, :n])  # labels of the fakes
    np.testing.assert_array_equal(halves[1][1], gen_c[row, n // 2 : n])
    if phase == "Greg":  # path-length noise, also by sample
      np.testing.assert_array_equal(whole[2], np.concatenate([h[2] for h in halves]))
    if phase == "Dmain":  # reals and their labels by chunk; one augmentation seed per chunk
      np.testing.assert_array_equal(halves[1][2], reference_batch()[4:])
      np.testing.assert_array_equal(halves[1][3], real_c[4:])
      assert not np.array_equal(halves[0][4], halves[1][4])
  np.testing.assert_array_equal(inputs(four, "Gmain", 1, labels=None)[1], real_c[4:])


def test_iteration_zero_runs_every_phase_and_updates_the_state(reference):
  results, initial, state = reference["results"], reference["initial"], reference["state"]
  for name in ("Loss/G/loss", "Loss/pl_penalty", "Loss/D/loss", "Loss/r1_penalty"):
    assert np.isfinite(results[name]) and results[name] > 0, name
  assert results["Progress/kimg"] == pytest.approx(0.008)
  assert results["Progress/skipped_updates"] == 0
  assert state["batch_idx"] == 1 and state["cur_nimg"] == BATCH
  # Two updates of each network: main and regularisation share one Adam.
  assert state["G_opt/iterations"] == 2 and state["D_opt/iterations"] == 2
  assert state["pl_mean"] > 0  # 0.01 * the mean path length
  trainer = reference["trainer"]
  # G_ema = lerp(G, G_ema, beta) with beta = 0.5 ** (8 / 10) (ema_kimg 0.01, no ramp-up).
  beta = 0.5 ** (BATCH / 10)
  for i, v in enumerate(trainer.G.weights):
    new, old = state[f"G/{i}"], initial[f"G_ema/{i}"]
    expected = new + (old - new) * beta if v.trainable else new
    np.testing.assert_allclose(state[f"G_ema/{i}"], expected, rtol=1e-5, atol=1e-7, err_msg=v.path)


def test_a_restored_checkpoint_repeats_the_iteration_exactly(reference):
  trainer = restore(reference)
  results = as_numpy(trainer.train_step(reference_batch()))
  assert_same_results(results, reference["results"], rtol=0)
  assert_same_state(state_arrays(trainer), reference["state"], rtol=0, atol=0)


def test_a_non_finite_batch_skips_the_d_updates_and_counts_them(reference):
  trainer = restore(reference)
  reals = reference_batch()
  reals[1, 3, 4, 0] = np.nan
  initial = reference["initial"]
  results = trainer.train_step(reals)  # iteration 0: Gmain, Greg, Dmain, Dreg
  assert int(results["Progress/skipped_updates"]) == 2  # Dmain and Dreg
  state = state_arrays(trainer)
  for name in initial:
    if name.startswith(("D/", "D_opt/", "ada_stats/")):
      np.testing.assert_array_equal(state[name], initial[name], err_msg=name)
  # G trained as usual: the generator phases never see the reals. (Its W average misses the
  # update of the skipped Dmain phase.)
  trained = [f"G/{i}" for i, v in enumerate(trainer.G.weights) if v.trainable]
  trained += [k for k in state if k.startswith("G_opt/")]
  assert_same_state(
    {k: state[k] for k in trained}, {k: reference["state"][k] for k in trained}, 1e-6, 1e-7
  )
  results = trainer.train_step(reals)  # iteration 1: Gmain, Dmain
  assert int(results["Progress/skipped_updates"]) == 3
  assert int(trainer.batch_idx.numpy()) == 2


def test_d_steps_lower_the_d_loss_and_g_steps_the_g_loss(reference):
  trainer = restore(reference)
  reals = tf.constant(reference_batch())
  z = tf.constant(np.random.default_rng(8).standard_normal([BATCH, 16]).astype(np.float32))
  fakes, _ = loss_lib.generate(trainer.G, z, None, noise_mode="const")

  def d_loss():
    value, _, _ = loss_lib.discriminator_main_loss(trainer.D, fakes, None, reals, None)
    return float(tf.reduce_mean(value))

  def g_loss():
    value, _, _ = loss_lib.generator_main_loss(trainer.G, trainer.D, z, None, noise_mode="const")
    return float(tf.reduce_mean(value))

  before = d_loss()
  for _ in range(3):
    trainer.train_step(reals, phases=["Dmain"])
  after = d_loss()
  assert after < before - 1e-3, (before, after)
  before = g_loss()
  for _ in range(3):
    trainer.train_step(reals, phases=["Gmain"])
  after = g_loss()
  assert after < before - 1e-3, (before, after)


def test_ada_moves_p_from_the_signs_on_the_reals(reference):
  trainer = restore(reference)
  reals = reference_batch()
  for _ in range(3):
    results = trainer.train_step(reals)
    assert float(results["Progress/augment"]) == pytest.approx(0.2)
  sign_sum, count = (float(x) for x in trainer.ada_stats.result())
  assert count == 4 * BATCH  # Dmain of iterations 0-2 and Dreg of iteration 0
  results = trainer.train_step(reals)  # iteration 3: Gmain, Dmain, then the adjustment
  sign_sum += float(results["Loss/signs/real"]) * BATCH
  r_t = sign_sum / (count + BATCH)
  expected = max(0.0, 0.2 + np.sign(r_t - 0.6) * BATCH * 4 / (0.1 * 1000))
  assert float(results["Progress/augment"]) == pytest.approx(expected, abs=1e-6)
  assert [float(x) for x in trainer.ada_stats.result()] == [0.0, 0.0]


@pytest.mark.slow
def test_batch_gpu_4_accumulated_equals_batch_gpu_8(reference):
  # Left out, because they are drawn or computed per chunk: Greg (the in-batch term of the
  # path-length mean, as in the official code) and the augmentation (one seed per chunk; p = 0).
  phases = ["Gmain", "Dmain", "Dreg"]
  trainer = restore(reference)
  trainer.augment_p.assign(0.0)
  expected = as_numpy(trainer.train_step(reference_batch(), phases=phases))
  expected_state = state_arrays(trainer)
  other = build_trainer(batch_gpu=8)
  tf.train.Checkpoint(**other.checkpoint_items()).read(reference["checkpoint"]).assert_consumed()
  other.augment_p.assign(0.0)
  assert other.rounds == 1 and trainer.rounds == 2
  results = as_numpy(other.train_step(reference_batch(), phases=phases))
  assert_same_results(results, expected, rtol=1e-5, atol=1e-7)
  assert_same_state(state_arrays(other), expected_state, 1e-5, 1e-6, 0.05 * 0.0025, 1e-3)


@pytest.mark.slow
def test_jit_compiled_iteration_gives_the_same_losses_and_state(reference):
  proc, out = reference["workers"]["jit"]
  replicas, results, state = finish_worker(proc, out)
  assert replicas == 1
  # XLA fuses and reorders float32 sums and uses the ops' reference paths.
  assert_same_results(results, reference["results"], rtol=1e-5, atol=1e-7)
  assert_same_state(state, reference["state"], 1e-5, 1e-6, 0.05 * 0.0025, 1e-3)


@pytest.mark.slow
def test_mirrored_over_two_logical_cpus_equals_one_device(reference):
  proc, out = reference["workers"]["mirrored"]
  replicas, results, state = finish_worker(proc, out)
  assert replicas == 2
  # Same chunks, draws and sums; only the order of float32 additions may differ.
  assert_same_results(results, reference["results"], rtol=1e-5, atol=1e-7)
  assert_same_state(state, reference["state"], rtol=1e-5, atol=1e-6)
