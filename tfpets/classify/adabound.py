"""AdaBound / AMSBound (Luo et al., "Adaptive Gradient Methods with Dynamic Bound of Learning Rate",
ICLR 2019) as a Keras 3 optimizer.

The update is the one of the authors' released code (`Luolc/AdaBound`, `adabound/adabound.py`,
`AdaBound.step`), which differs from the paper's Algorithm 2: the bounds use `gamma` in place of
`1 - beta_2`, the step size is bias-corrected Adam's, and there is no extra `1/sqrt(t)`. Per step
`t = iterations + 1` and per variable `p` with gradient `g`:

    g         = g + l2 * p                                   (coupled L2, as the code's weight_decay)
    m         = beta_1 * m + (1 - beta_1) * g
    v         = beta_2 * v + (1 - beta_2) * g**2             (AMSBound: v_hat = max(v_hat, v))
    step_size = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    final     = final_lr * lr / base_lr                      (so final_lr follows a schedule)
    lower     = final * (1 - 1 / (gamma * t + 1))
    upper     = final * (1 + 1 / (gamma * t))
    p         = p - clip(step_size / (sqrt(v) + epsilon), lower, upper) * m
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfpets")
class AdaBound(keras.optimizers.Optimizer):
  """AdaBound (or AMSBound with `amsbound=True`), the released code's update rule.

  Args:
    learning_rate: float, `keras.optimizers.schedules.LearningRateSchedule` or callable.
    beta_1, beta_2: decay rates of the first and second moment estimates.
    final_lr: the SGD learning rate both bounds converge to, for `learning_rate == base_lr`.
    gamma: convergence speed of the bounds.
    epsilon: added to `sqrt(v)` in the denominator.
    l2: coupled L2 penalty added to the gradient before the moments (the reference code's
      `weight_decay`). Keras' own `weight_decay` argument stays available and is the decoupled
      (AdamW-style, `p -= lr * weight_decay * p`) decay applied by the base class; the two are
      different regularisers, hence two names.
    amsbound: use the running maximum of `v` (AMSBound).
    base_lr: the learning rate `final_lr` refers to. `None` takes the learning rate at
      construction (a schedule's value at step 0), as the reference code stores the initial
      learning rate; later learning rates scale the bounds by `lr / base_lr`.
    **kwargs: the base `keras.optimizers.Optimizer` arguments (`weight_decay`, `clipnorm`,
      `global_clipnorm`, `use_ema`, `loss_scale_factor`, `gradient_accumulation_steps`, ...).
  """

  def __init__(
    self,
    learning_rate=1e-3,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    final_lr: float = 0.1,
    gamma: float = 1e-3,
    epsilon: float = 1e-8,
    l2: float = 0.0,
    amsbound: bool = False,
    base_lr: float | None = None,
    name: str = "adabound",
    **kwargs,
  ):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    _check_range("beta_1", beta_1, 0.0, 1.0)
    _check_range("beta_2", beta_2, 0.0, 1.0)
    if final_lr <= 0:
      raise ValueError(f"final_lr must be positive, got {final_lr}")
    if gamma <= 0:
      raise ValueError(f"gamma must be positive, got {gamma}")
    if epsilon < 0:
      raise ValueError(f"epsilon must be non-negative, got {epsilon}")
    if l2 < 0:
      raise ValueError(f"l2 must be non-negative, got {l2}")
    self.beta_1 = beta_1
    self.beta_2 = beta_2
    self.final_lr = final_lr
    self.gamma = gamma
    self.epsilon = epsilon
    self.l2 = l2
    self.amsbound = amsbound
    self.base_lr = float(base_lr) if base_lr is not None else _initial_learning_rate(learning_rate)
    if self.base_lr <= 0:
      raise ValueError(f"base_lr must be positive, got {self.base_lr}")

  def build(self, var_list):
    if self.built:
      return
    super().build(var_list)
    self._momentums, self._velocities = self.add_optimizer_variables(
      var_list, ["momentum", "velocity"]
    )
    if self.amsbound:
      self._velocity_hats = self.add_optimizer_variables(var_list, "velocity_hat")

  def update_step(self, gradient, variable, learning_rate):
    dtype = variable.dtype
    lr = ops.cast(learning_rate, dtype)
    gradient = ops.cast(gradient, dtype)
    if self.l2:
      gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, dtype), variable))
    t = ops.cast(self.iterations + 1, dtype)
    index = self._get_variable_index(variable)
    m = self._momentums[index]
    v = self._velocities[index]
    self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
    self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
    if self.amsbound:
      v_hat = self._velocity_hats[index]
      self.assign(v_hat, ops.maximum(v_hat, v))
      v = v_hat
    denom = ops.add(ops.sqrt(v), ops.cast(self.epsilon, dtype))
    bias_1 = 1 - ops.power(ops.cast(self.beta_1, dtype), t)
    bias_2 = 1 - ops.power(ops.cast(self.beta_2, dtype), t)
    step_size = lr * ops.sqrt(bias_2) / bias_1
    final_lr = ops.cast(self.final_lr / self.base_lr, dtype) * lr
    gamma_t = ops.cast(self.gamma, dtype) * t
    lower = final_lr * (1 - 1 / (gamma_t + 1))
    upper = final_lr * (1 + 1 / gamma_t)
    bounded = ops.clip(ops.divide(step_size, denom), lower, upper)
    self.assign_sub(variable, ops.multiply(bounded, m))

  def get_config(self):
    config = super().get_config()
    config.update(
      {
        "beta_1": self.beta_1,
        "beta_2": self.beta_2,
        "final_lr": self.final_lr,
        "gamma": self.gamma,
        "epsilon": self.epsilon,
        "l2": self.l2,
        "amsbound": self.amsbound,
        "base_lr": self.base_lr,
      }
    )
    return config


def _check_range(name: str, value: float, low: float, high: float) -> None:
  if not low <= value < high:
    raise ValueError(f"{name} must be in [{low}, {high}), got {value}")


def _initial_learning_rate(learning_rate) -> float:
  """The learning rate at step 0: a schedule or callable is evaluated once, eagerly."""
  if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
    return float(learning_rate(0))
  if callable(learning_rate):
    return float(learning_rate())
  return float(learning_rate)
