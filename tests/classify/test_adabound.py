"""AdaBound against a numpy transcription of the released code's update rule."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfpets.classify.adabound import AdaBound


def reference_adabound(
  params,
  grads_per_step,
  lrs,
  base_lr,
  beta_1=0.9,
  beta_2=0.999,
  final_lr=0.1,
  gamma=1e-3,
  eps=1e-8,
  l2=0.0,
  amsbound=False,
  follow_schedule=True,
):
  """Luolc/AdaBound `AdaBound.step`, in float64 numpy; returns the parameters after each step."""
  p = np.array(params, np.float64)
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  v_max = np.zeros_like(p)
  history = []
  for step, (grad, lr) in enumerate(zip(grads_per_step, lrs), start=1):
    grad = np.asarray(grad, np.float64) + l2 * p
    m = beta_1 * m + (1 - beta_1) * grad
    v = beta_2 * v + (1 - beta_2) * grad**2
    if amsbound:
      v_max = np.maximum(v_max, v)
      denom = np.sqrt(v_max) + eps
    else:
      denom = np.sqrt(v) + eps
    step_size = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    final = final_lr * lr / base_lr if follow_schedule else final_lr
    lower = final * (1 - 1 / (gamma * step + 1))
    upper = final * (1 + 1 / (gamma * step))
    p = p - np.clip(step_size / denom, lower, upper) * m
    history.append(p.copy())
  return history


def run_optimizer(optimizer, params, grads_per_step):
  variable = keras.Variable(np.asarray(params, np.float32))
  history = []
  for grad in grads_per_step:
    optimizer.apply_gradients([(tf.constant(grad, tf.float32), variable)])
    history.append(variable.numpy().astype(np.float64))
  return history


def gradients(steps, size, seed=0):
  rng = np.random.default_rng(seed)
  # Mixed scales so that some coordinates hit the lower bound, some the upper, some neither.
  scales = np.logspace(-4, 1, size)
  return [rng.normal(size=size) * scales for _ in range(steps)]


@pytest.mark.parametrize("amsbound", [False, True])
def test_steps_match_reference(amsbound):
  params = np.linspace(-1.0, 1.0, 12)
  grads = gradients(8, 12)
  # Gradients shrinking after step 4 make v fall, so AMSBound's maximum differs from v.
  grads = [g * (1.0 if i < 4 else 0.05) for i, g in enumerate(grads)]
  optimizer = AdaBound(learning_rate=1e-2, final_lr=0.05, gamma=1e-3, amsbound=amsbound)
  got = run_optimizer(optimizer, params, grads)
  want = reference_adabound(
    params, grads, [1e-2] * 8, 1e-2, final_lr=0.05, gamma=1e-3, amsbound=amsbound
  )
  for step, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=f"step {step + 1}")
  if amsbound:
    plain = reference_adabound(params, grads, [1e-2] * 8, 1e-2, final_lr=0.05, gamma=1e-3)
    assert np.abs(plain[-1] - want[-1]).max() > 1e-5  # the test distinguishes the two variants


def test_bounds_are_active():
  """With gamma large the bounds pinch around final_lr: the step is final_lr * m."""
  params = np.zeros(4)
  grads = [np.array([1e-6, 1e-3, 1.0, 100.0])]
  optimizer = AdaBound(learning_rate=1e-3, final_lr=0.1, gamma=1e6)
  (got,) = run_optimizer(optimizer, params, grads)
  m = 0.1 * grads[0]
  np.testing.assert_allclose(got, -0.1 * m, rtol=1e-4)


def test_coupled_l2_matches_reference():
  params = np.linspace(-2.0, 2.0, 6)
  grads = gradients(5, 6, seed=1)
  optimizer = AdaBound(learning_rate=3e-3, l2=0.1)
  got = run_optimizer(optimizer, params, grads)
  want = reference_adabound(params, grads, [3e-3] * 5, 3e-3, l2=0.1)
  np.testing.assert_allclose(got[-1], want[-1], rtol=2e-5, atol=1e-6)
  no_decay = reference_adabound(params, grads, [3e-3] * 5, 3e-3)
  assert np.abs(no_decay[-1] - want[-1]).max() > 1e-4


def test_schedule_scales_final_lr():
  boundaries, values = [2, 4], [1e-2, 1e-3, 1e-4]
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
  params = np.linspace(-1.0, 1.0, 10)
  grads = gradients(6, 10, seed=2)
  optimizer = AdaBound(learning_rate=schedule, final_lr=0.1, gamma=0.1)
  assert optimizer.base_lr == pytest.approx(1e-2)
  got = run_optimizer(optimizer, params, grads)
  # Keras evaluates the schedule at `iterations` before the increment: step k uses schedule(k - 1).
  lrs = [float(schedule(k)) for k in range(6)]
  want = reference_adabound(params, grads, lrs, 1e-2, final_lr=0.1, gamma=0.1)
  for step, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7, err_msg=f"step {step + 1}")
  # Had final_lr stayed at 0.1 the later steps would differ: the schedule reached the bounds.
  fixed = reference_adabound(
    params, grads, lrs, 1e-2, final_lr=0.1, gamma=0.1, follow_schedule=False
  )
  assert np.abs(fixed[-1] - want[-1]).max() > 1e-5


def test_serialization_round_trip():
  schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, 100, 0.5)
  optimizer = AdaBound(
    learning_rate=schedule, final_lr=0.2, gamma=2e-3, epsilon=1e-7, l2=1e-4, amsbound=True
  )
  restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
  assert isinstance(restored, AdaBound)
  for key in ("beta_1", "beta_2", "final_lr", "gamma", "epsilon", "l2", "amsbound", "base_lr"):
    assert getattr(restored, key) == getattr(optimizer, key), key
  assert isinstance(restored._learning_rate, keras.optimizers.schedules.ExponentialDecay)
  assert restored.get_config() == optimizer.get_config()


def test_keras_weight_decay_is_the_decoupled_one():
  params = np.ones(3)
  grads = [np.zeros(3)]
  (got,) = run_optimizer(AdaBound(learning_rate=0.1, weight_decay=0.5), params, grads)
  np.testing.assert_allclose(got, 1 - 0.1 * 0.5, rtol=1e-6)  # zero gradient: only the decay acts
  (coupled,) = run_optimizer(AdaBound(learning_rate=0.1, l2=0.5), params, grads)
  assert np.all(coupled < 1.0) and not np.allclose(coupled, got)


def test_invalid_arguments():
  with pytest.raises(ValueError, match="final_lr must be positive"):
    AdaBound(final_lr=0)
  with pytest.raises(ValueError, match="beta_2 must be in"):
    AdaBound(beta_2=1.0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_step_on_tiny_model(jit_compile):
  """One `fit` step of a linear least-squares model equals the reference from the exact gradient."""
  rng = np.random.default_rng(3)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  y = rng.normal(size=(8, 1)).astype(np.float32)
  w0 = rng.normal(size=(4, 1)).astype(np.float32)
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, use_bias=False)])
    model.layers[0].kernel.assign(w0)
    model.compile(
      optimizer=AdaBound(learning_rate=1e-2, l2=1e-3, amsbound=True),
      loss="mse",
      jit_compile=jit_compile,
    )
  model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
  grad = 2.0 / 8 * x.T.astype(np.float64) @ (x @ w0 - y)
  (want,) = reference_adabound(w0, [grad], [1e-2], 1e-2, l2=1e-3, amsbound=True)
  np.testing.assert_allclose(model.layers[0].kernel.numpy(), want, rtol=1e-4, atol=1e-6)
