"""One StyleGAN2-ADA training iteration under any tf.distribute strategy.

The iteration of NVlabs/stylegan2-ada-pytorch (`training/training_loop.py`, with the terms of
`training/loss.py`, here `tfpets.gan.loss`): the phases Gmain, Greg (every `g_reg_interval`
iterations), Dmain and Dreg (every `d_reg_interval`), each with fresh latents and its own random
draws, each an Adam update of its network; then the G_ema update and, every `ada_interval`
iterations, the ADA adjustment of the augmentation probability p from the signs of D on the reals.
Lazy regularisation (Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR
2020, §4): a regularisation loss is multiplied by its interval, and Adam's learning rate and betas
are pre-scaled by I / (I + 1) (`lazy_adam_hparams`), the main and the regularisation phase of a
network sharing one Adam.

API:
  PHASES: ('Gmain', 'Greg', 'Dmain', 'Dreg'), the order of one iteration.
  TrainSettings: the optimisation settings; `TrainSettings.from_training_config(preset config)`.
  GanTrainer(network_config, settings, strategy=None, augment_pipe=None, seed=0): builds G, D,
    G_ema, one `Adam` per network and the training state under `strategy.scope()`.
    trainer.train_step(reals, real_c=None, gen_c=None, phases=None) -> {name: scalar tensor}: one
      iteration; it reads batch_idx on the host to pick the phases (`trainer.phases_at(i)`), and
      `phases` (e.g. ['Dmain']) overrides that choice.
      reals: the GLOBAL batch, a plain tensor [batch, res, res, C] float32 in [-1, 1] (every
        worker passes the same one); real_c: its labels [batch, c_dim] (conditional networks);
        gen_c: labels of the fakes [len(PHASES), batch, c_dim], one row per phase, drawn by the
        caller from the dataset's labels; None uses real_c.
      Returns Loss/G/loss, Loss/scores/fake, Loss/signs/fake (Gmain); Loss/pl_penalty, Loss/G/reg
      (Greg); Loss/D/loss, Loss/scores/real, Loss/signs/real (Dmain); Loss/r1_penalty,
      Loss/D/reg (Dreg); Progress/augment (p after the step), Progress/kimg,
      Progress/skipped_updates (cumulative). Means over the global batch; a phase that did not
      run this iteration has no entries.
    trainer.checkpoint_items() -> {name: trackable}: the whole training state (networks, Adam
      states, pl_mean, p, ADA statistics, counters), for `tf.train.Checkpoint(**items)`.
    trainer.G, trainer.D, trainer.G_ema; trainer.cur_nimg, trainer.batch_idx (int64 variables).
  Adam: Adam as torch.optim.Adam computes it, whose update a non-finite gradient skips.
  lazy_adam_hparams(lr, beta1, beta2, interval), ema_beta(batch, ema_kimg, ema_rampup, cur_nimg).

Distribution and accumulation. The global batch is cut into chunks of `batch_gpu` samples (at most
batch / replicas); replica r processes chunks r * rounds ... r * rounds + rounds - 1 one after the
other (gradient accumulation, as the official `batch_gpu`), and the gradients are summed over
rounds and replicas. Each phase's loss is the sum of its per-sample terms divided by the phase's
global sample count, so the update is that of the global-batch mean whatever the device count.
(The official code sums one mean per round, scaling the gradient by the round count, which only
Adam's epsilon sees.) Statistics computed within a chunk are as in the official code: minibatch
stddev groups, one style-mixing cutoff per generator call, and the in-batch term of the path-length
mean use the chunk, and the augmentation draws with one seed per chunk; so a result depends on
`batch_gpu` but not on how chunks are spread over devices. The path-length running mean and the
generator's W average are each updated once per phase from the global batch (the official code
updates them per chunk and per GPU process).

Random draws. Latents, path-length noise and augmentation seeds are stateless draws keyed by
(seed, batch_idx, phase, purpose) and, for latents and noise, the sample's index in the global
batch, drawn outside XLA; so jit and non-jit steps, every device layout and a resumed run (the
counters are in the checkpoint) draw the same numbers. The generator's noise inputs and style
mixing draw from `tfpets.gan.rng` with a seed per (step, phase, chunk), which XLA draws alike too.

Compilation and guards. Each phase is a `tf.function`; the per-chunk forward and backward pass is
a nested `tf.function(jit_compile=settings.jit_compile)`, and the Adam update runs outside XLA
(it also compiles under MirroredStrategy on logical CPUs that way). Mixed precision follows the
networks' per-block float16 without loss scaling; as in the official TF code, an update whose
summed gradients are not all finite is skipped whole (weights, Adam state, pl_mean, W average,
ADA statistics) and counted in `skipped_updates`, one count per skipped phase.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import tensorflow as tf

from tfpets.errors import ArgumentError
from tfpets.gan import loss as loss_lib
from tfpets.gan import networks
from tfpets.gan.presets import NetworkConfig, TrainingConfig

PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
AUG_MODES = ("ada", "fixed", "noaug")
NOISE_MODES = ("random", "const")
# Streams of one phase's seed.
_LATENTS, _PL_NOISE, _AUGMENT, _GENERATOR = 0, 1, 2, 3


def _freeze_layers(discriminator: networks.Discriminator, count: int) -> None:
  """Freeze-D: the first `count` layers of D from the top resolution stop training."""
  layers = []
  for block in discriminator.blocks:
    layers += [x for x in (block.fromrgb, block.conv0, block.conv1, block.skip) if x is not None]
  if count > len(layers):
    raise ArgumentError("freezed", count, f"D has only {len(layers)} layers above its epilogue")
  for layer in layers[:count]:
    layer.trainable = False


def lazy_adam_hparams(
  learning_rate: float, beta1: float, beta2: float, interval: int
) -> tuple[float, float, float]:
  """Adam's (lr, beta1, beta2) for lazy regularisation every `interval` steps: each scaled by
  mb_ratio = I / (I + 1) (lr * r, beta ** r), as the official training loop does."""
  ratio = interval / (interval + 1)
  return learning_rate * ratio, beta1**ratio, beta2**ratio


def ema_beta(batch: int, ema_kimg: float, ema_rampup: float | None, cur_nimg: Any) -> tf.Tensor:
  """G_ema decay per step: 0.5 ** (batch / max(ema_nimg, 1e-8)) with ema_nimg = ema_kimg * 1000,
  or with ramp-up min(ema_nimg, cur_nimg * ema_rampup); float64 scalar."""
  ema_nimg = tf.constant(ema_kimg * 1000.0, tf.float64)
  if ema_rampup is not None:
    ema_nimg = tf.minimum(ema_nimg, tf.cast(cur_nimg, tf.float64) * ema_rampup)
  return tf.pow(tf.constant(0.5, tf.float64), batch / tf.maximum(ema_nimg, 1e-8))


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """Optimisation settings of a StyleGAN2-ADA training run.

  Attributes:
    batch: Global batch size.
    batch_gpu: Samples per replica and accumulation round (capped at batch / replicas).
    learning_rate: Adam learning rate of G and D before the lazy-regularisation scaling.
    r1_gamma: R1 weight gamma (the loss is r1 * gamma / 2); 0 = no Dreg phase.
    pl_weight: Path-length weight; 0 = no Greg phase.
    pl_decay: Decay of the path-length running mean.
    pl_batch_shrink: Greg uses batch_gpu // pl_batch_shrink samples per chunk.
    style_mixing_prob: Style-mixing probability, None = the network config's.
    g_reg_interval, d_reg_interval: Lazy-regularisation intervals (>= 1).
    ema_kimg: G_ema half-life in thousands of images.
    ema_rampup: G_ema ramp-up ratio (half-life at most cur_nimg * ramp-up), None = none.
    aug: 'ada' (p adapted), 'fixed' (p constant) or 'noaug'.
    p: Augmentation probability: initial ('ada') or constant ('fixed').
    ada_target, ada_interval, ada_kimg: The ADA controller (target r_t, adjust every
      `ada_interval` steps, p moves by at most 1 per `ada_kimg` thousand images).
    adam_betas, adam_epsilon: Adam's betas and epsilon before the lazy scaling.
    jit_compile: Compile each chunk's forward and backward pass with XLA.
    noise_mode: The generator's noise inputs: 'random' (training); 'const' only where runs must
      repeat exactly (tests), until the networks draw their noise from a seed.
  """

  batch: int = 32
  batch_gpu: int = 32
  learning_rate: float = 0.0025
  r1_gamma: float = 10.0
  pl_weight: float = 2.0
  pl_decay: float = 0.01
  pl_batch_shrink: int = 2
  style_mixing_prob: float | None = None
  g_reg_interval: int = 4
  d_reg_interval: int = 16
  ema_kimg: float = 10.0
  ema_rampup: float | None = 0.05
  aug: str = "ada"
  p: float = 0.0
  ada_target: float = 0.6
  ada_interval: int = 4
  ada_kimg: float = 500.0
  adam_betas: tuple[float, float] = (0.0, 0.99)
  adam_epsilon: float = 1e-8
  jit_compile: bool = False
  noise_mode: str = "random"

  def __post_init__(self):
    object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
    if self.aug not in AUG_MODES:
      raise ValueError(f"aug must be one of {', '.join(AUG_MODES)}, got {self.aug!r}")
    if self.noise_mode not in NOISE_MODES:
      raise ValueError(
        f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {self.noise_mode!r}"
      )
    for name in (
      "batch",
      "batch_gpu",
      "pl_batch_shrink",
      "g_reg_interval",
      "d_reg_interval",
      "ada_interval",
    ):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name in ("r1_gamma", "pl_weight", "p", "learning_rate"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
    if self.ema_kimg <= 0 or self.ada_kimg <= 0:
      raise ValueError("ema_kimg and ada_kimg must be > 0")

  @classmethod
  def from_training_config(cls, config: TrainingConfig, **overrides: Any) -> "TrainSettings":
    """Settings of a preset (`presets.training_config`): batch_gpu = batch // ref_gpus."""
    fields = dict(
      batch=config.batch,
      batch_gpu=max(config.batch // config.ref_gpus, 1),
      learning_rate=config.learning_rate,
      r1_gamma=config.r1_gamma,
      pl_weight=config.pl_weight,
      style_mixing_prob=config.style_mixing_prob,
      ema_kimg=config.ema_kimg,
      ema_rampup=config.ema_rampup,
    )
    fields.update(overrides)
    return cls(**fields)


def _tf_variable(variable: Any) -> Any:
  """The tf.Variable behind a Keras variable (what tf.distribute's update machinery takes)."""
  return getattr(variable, "value", variable) if not isinstance(variable, tf.Variable) else variable


class Adam(tf.Module):
  """Adam as torch.optim.Adam computes it, with an update that a false `ok` skips whole.

  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t <- t + 1;
  x <- x - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
  Create it under the strategy's scope (it updates through that strategy); `apply` runs in
  cross-replica context (or without a strategy) and takes per-replica gradients that are already
  summed over replicas.
  """

  def __init__(
    self,
    variables: Sequence[Any],
    learning_rate: float,
    beta1: float,
    beta2: float,
    epsilon: float = 1e-8,
    name: str = "adam",
  ):
    super().__init__(name=name)
    self._strategy = tf.distribute.get_strategy()
    self.learning_rate, self.beta1, self.beta2 = float(learning_rate), float(beta1), float(beta2)
    self.epsilon = float(epsilon)
    with self.name_scope:
      self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
      self.m = [self._slot(v, f"m_{i}") for i, v in enumerate(variables)]
      self.v = [self._slot(v, f"v_{i}") for i, v in enumerate(variables)]

  @staticmethod
  def _slot(variable: Any, name: str) -> tf.Variable:
    return tf.Variable(tf.zeros(variable.shape, variable.dtype), trainable=False, name=name)

  def apply(self, variables: Sequence[Any], grads: Sequence[Any], ok: Any) -> None:
    """One update of `variables` by `grads` where `ok` (a scalar bool) holds; none otherwise."""
    step = tf.cast(self.iterations + 1, tf.float32)
    step_size = self.learning_rate / (1.0 - tf.pow(self.beta1, step))
    bias2 = tf.sqrt(1.0 - tf.pow(self.beta2, step))

    def update(var, grad, m, v, ok):
      grad = tf.cast(grad, var.dtype)
      m_new = self.beta1 * m + (1.0 - self.beta1) * grad
      v_new = self.beta2 * v + (1.0 - self.beta2) * tf.square(grad)
      x_new = var - step_size * m_new / (tf.sqrt(v_new) / bias2 + self.epsilon)
      return tf.group(
        var.assign(tf.where(ok, x_new, var)),
        m.assign(tf.where(ok, m_new, m)),
        v.assign(tf.where(ok, v_new, v)),
      )

    for var, grad, m, v in zip(variables, grads, self.m, self.v):
      self._strategy.extended.update(_tf_variable(var), update, args=(grad, m, v, ok), group=True)
    self.iterations.assign_add(tf.cast(_first(self._strategy, ok), tf.int64))


def _first(strategy: tf.distribute.Strategy, value: Any) -> Any:
  """One replica's copy of a value that every replica holds identically."""
  return strategy.experimental_local_results(value)[0]


def _fold(seed: tf.Tensor, data: Any) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, data, alg="philox")


class GanTrainer:
  """StyleGAN2-ADA training state and its compiled iteration (see the module docstring).

  Args:
    network_config: The networks' configuration (`presets.network_config`).
    settings: `TrainSettings`.
    strategy: A tf.distribute strategy; None = the current (default) one.
    augment_pipe: `augment(images, p, seed)`, e.g. `tfpets.gan.augment.AugmentPipe()`; required
      unless settings.aug == 'noaug'.
    seed: Base seed of every random draw of the training step.
    freezed: Freeze-D (official `--freezed`): the first `freezed` layers of D from the top
      resolution (FromRGB, Conv0, Conv1, Skip of each block) stay as they are; D's Adam holds
      only the weights that train.
  """

  def __init__(
    self,
    network_config: NetworkConfig | Mapping[str, Any],
    settings: TrainSettings,
    strategy: tf.distribute.Strategy | None = None,
    augment_pipe: Any = None,
    seed: int = 0,
    freezed: int = 0,
  ):
    self.config = (
      network_config
      if isinstance(network_config, NetworkConfig)
      else NetworkConfig.from_dict(network_config)
    )
    self.settings = settings
    self.strategy = strategy or tf.distribute.get_strategy()
    self.seed = int(seed)
    self.freezed = int(freezed)
    self._check_layout()
    if settings.aug != "noaug" and augment_pipe is None:
      raise ValueError(f"aug={settings.aug!r} needs an augment_pipe (or use aug='noaug')")
    self.augment = None if settings.aug == "noaug" else augment_pipe
    self.style_mixing_prob = (
      self.config.style_mixing_prob
      if settings.style_mixing_prob is None
      else float(settings.style_mixing_prob)
    )
    self._build_state()
    # No data-dependent Python control flow anywhere: autograph would only add tracing time.
    compiled = functools.partial(tf.function, autograph=False)
    jit = settings.jit_compile
    self._grad_fns = {
      "Gmain": compiled(self._gmain_grads, jit_compile=jit),
      "Greg": compiled(self._greg_grads, jit_compile=jit),
      "Dmain": compiled(self._dmain_grads, jit_compile=jit),
      "Dreg": compiled(self._dreg_grads, jit_compile=jit),
    }
    self._phase_fns = {p: compiled(functools.partial(self._run_phase, p)) for p in PHASES}
    self._finish_fns = {a: compiled(functools.partial(self._finish_step, a)) for a in (0, 1)}

  # -- construction ------------------------------------------------------------------------------

  def _check_layout(self) -> None:
    settings, replicas = self.settings, self.strategy.num_replicas_in_sync
    self.batch_gpu = min(settings.batch_gpu, settings.batch // replicas)
    if self.batch_gpu < 1 or settings.batch % (self.batch_gpu * replicas):
      raise ValueError(
        f"batch {settings.batch} must be a multiple of batch_gpu x replicas "
        f"({settings.batch_gpu} x {replicas})"
      )
    self.num_chunks = settings.batch // self.batch_gpu
    self.rounds = self.num_chunks // replicas
    self.pl_chunk = max(self.batch_gpu // settings.pl_batch_shrink, 1)

  def _build_state(self) -> None:
    s = self.settings
    beta1, beta2 = s.adam_betas
    with self.strategy.scope():
      self.G, self.D, self.G_ema = networks.build_networks(self.config)
      _freeze_layers(self.D, self.freezed)
      self.G_opt = Adam(
        self.G.trainable_variables,
        *lazy_adam_hparams(s.learning_rate, beta1, beta2, s.g_reg_interval),
        epsilon=s.adam_epsilon,
        name="G_opt",
      )
      self.D_opt = Adam(
        self.D.trainable_variables,
        *lazy_adam_hparams(s.learning_rate, beta1, beta2, s.d_reg_interval),
        epsilon=s.adam_epsilon,
        name="D_opt",
      )
      self.pl_mean = tf.Variable(0.0, trainable=False, name="pl_mean")
      self.augment_p = tf.Variable(
        s.p if s.aug != "noaug" else 0.0, trainable=False, name="augment_p"
      )
      self.ada_stats = self._adjust_p = None
      if s.aug == "ada":
        # Imported here: only the adaptive mode needs the controller and its statistics.
        from tfpets.gan import augment as augment_lib  # pylint: disable=g-import-not-at-top

        self.ada_stats, self._adjust_p = augment_lib.AdaStats(), augment_lib.adjust_p
      self.cur_nimg = tf.Variable(0, dtype=tf.int64, trainable=False, name="cur_nimg")
      self.batch_idx = tf.Variable(0, dtype=tf.int64, trainable=False, name="batch_idx")
      self.skipped_updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped")

  def checkpoint_items(self) -> dict[str, Any]:
    """Everything a resumed run needs, as trackables for `tf.train.Checkpoint(**items)`."""
    items = dict(
      G=self.G,
      D=self.D,
      G_ema=self.G_ema,
      G_opt=self.G_opt,
      D_opt=self.D_opt,
      pl_mean=self.pl_mean,
      augment_p=self.augment_p,
      cur_nimg=self.cur_nimg,
      batch_idx=self.batch_idx,
      skipped_updates=self.skipped_updates,
    )
    if self.ada_stats is not None:
      items["ada_stats"] = self.ada_stats
    return items

  # -- the iteration -----------------------------------------------------------------------------

  def phases_at(self, batch_idx: int) -> list[str]:
    """The phases iteration `batch_idx` runs."""
    s = self.settings
    runs = {
      "Gmain": True,
      "Greg": s.pl_weight != 0 and batch_idx % s.g_reg_interval == 0,
      "Dmain": True,
      "Dreg": s.r1_gamma != 0 and batch_idx % s.d_reg_interval == 0,
    }
    return [p for p in PHASES if runs[p]]

  def train_step(
    self,
    reals: Any,
    real_c: Any = None,
    gen_c: Any = None,
    phases: Sequence[str] | None = None,
  ) -> dict[str, tf.Tensor]:
    """One training iteration on the global batch `reals` (see the module docstring).

    `phases` None runs the schedule (`phases_at(batch_idx)`); a list runs exactly those phases
    (e.g. ['Dmain'] to train D alone), followed as always by G_ema, the counters and ADA.
    """
    reals, real_c, gen_c = self._check_inputs(reals, real_c, gen_c)
    batch_idx = int(self.batch_idx.numpy())
    if phases is None:
      phases = self.phases_at(batch_idx)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
      raise ValueError(f"unknown phases {unknown}; expected some of {', '.join(PHASES)}")
    results: dict[str, tf.Tensor] = {}
    for phase in [p for p in PHASES if p in phases]:
      results.update(self._phase_fns[phase](reals, real_c, gen_c))
    adjust = int(self.ada_stats is not None and (batch_idx + 1) % self.settings.ada_interval == 0)
    results.update(self._finish_fns[adjust]())
    return results

  def _check_inputs(self, reals: Any, real_c: Any, gen_c: Any) -> tuple[Any, Any, Any]:
    cfg, batch = self.config, self.settings.batch
    reals = tf.convert_to_tensor(reals, tf.float32)
    expected = [batch, cfg.resolution, cfg.resolution, cfg.img_channels]
    if reals.shape.as_list() != expected:
      raise ValueError(f"reals must have shape {expected} (the global batch), got {reals.shape}")
    if not cfg.c_dim:
      return reals, None, None
    if real_c is None:
      raise ValueError(f"the networks are conditional (c_dim={cfg.c_dim}) and need real_c")
    real_c = tf.convert_to_tensor(real_c, tf.float32)
    if real_c.shape.as_list() != [batch, cfg.c_dim]:
      raise ValueError(f"real_c must have shape {[batch, cfg.c_dim]}, got {real_c.shape}")
    if gen_c is not None:
      gen_c = tf.convert_to_tensor(gen_c, tf.float32)
      if gen_c.shape.as_list() != [len(PHASES), batch, cfg.c_dim]:
        raise ValueError(
          f"gen_c must have shape {[len(PHASES), batch, cfg.c_dim]}, got {gen_c.shape}"
        )
    return reals, real_c, gen_c

  def _run_phase(self, phase: str, reals, real_c, gen_c) -> dict[str, tf.Tensor]:
    """One phase in cross-replica context: per-replica gradients, then the guarded update."""
    seed = _fold(_fold(tf.constant([self.seed, 0], tf.int64), self.batch_idx), PHASES.index(phase))
    args = (reals, real_c, gen_c, seed, tf.identity(self.augment_p), tf.identity(self.pl_mean))
    grads, sums, ok = self.strategy.run(functools.partial(self._replica_phase, phase), args=args)
    sums = {k: _first(self.strategy, v) for k, v in sums.items()}
    network = self.G if phase.startswith("G") else self.D
    optimizer = self.G_opt if phase.startswith("G") else self.D_opt
    optimizer.apply(network.trainable_variables, grads, ok)
    ok = _first(self.strategy, ok)
    self.skipped_updates.assign_add(1 - tf.cast(ok, tf.int64))
    if "w" in sums:
      self._update_w_avg(sums["w"] / sums["count"], ok)
    if phase == "Greg":
      mean = sums["pl_lengths"] / sums["count"]
      decayed = self.pl_mean + self.settings.pl_decay * (mean - self.pl_mean)
      self.pl_mean.assign(tf.where(ok, decayed, self.pl_mean))
    return self._phase_results(phase, sums)

  def _update_w_avg(self, w_mean: tf.Tensor, ok: tf.Tensor) -> None:
    """The W average the mapping network tracks (official MappingNetwork), from the phase batch."""
    if self.G.mapping.w_avg is not None:
      self.G.mapping.update_w_avg(w_mean, apply=ok)

  def _phase_results(self, phase: str, sums: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    s, n = self.settings, sums["count"]
    if phase == "Gmain":
      return {
        "Loss/G/loss": sums["loss"] / n,
        "Loss/scores/fake": sums["fake_scores"] / n,
        "Loss/signs/fake": sums["fake_signs"] / n,
      }
    if phase == "Greg":
      return {
        "Loss/pl_penalty": sums["penalty"] / n,
        "Loss/G/reg": sums["penalty"] / n * s.pl_weight,
      }
    if phase == "Dmain":
      return {
        "Loss/D/loss": sums["loss"] / n,
        "Loss/scores/real": sums["real_scores"] / n,
        "Loss/signs/real": sums["real_signs"] / n,
      }
    return {
      "Loss/r1_penalty": sums["penalty"] / n,
      "Loss/D/reg": sums["penalty"] / n * s.r1_gamma / 2,
    }

  def _replica_phase(self, phase: str, reals, real_c, gen_c, seed, p, pl_mean):
    """Accumulates one replica's chunks, then sums gradients and statistics over replicas."""
    context = tf.distribute.get_replica_context()
    replica = context.replica_id_in_sync_group
    grads, sums, real_logits = None, None, []
    for k in range(self.rounds):
      chunk = replica * self.rounds + k
      inputs = self._chunk_inputs(phase, chunk, reals, real_c, gen_c, seed, p, pl_mean)
      chunk_grads, chunk_sums, chunk_logits = self._grad_fns[phase](*inputs)
      if chunk_logits is not None:
        real_logits.append(chunk_logits)
      if grads is None:
        grads, sums = chunk_grads, chunk_sums
      else:
        grads = [a + b for a, b in zip(grads, chunk_grads)]
        sums = {key: sums[key] + chunk_sums[key] for key in sums}
    grads, sums = context.all_reduce(tf.distribute.ReduceOp.SUM, (grads, sums))
    ok = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
    if real_logits and self.ada_stats is not None:
      self._record_signs(tf.concat(real_logits, axis=0), ok)
    return grads, sums, ok

  def _record_signs(self, real_logits: tf.Tensor, ok: tf.Tensor) -> None:
    """Adds the signs of D on the reals to the ADA statistics, unless the update was skipped."""

    def record():
      self.ada_stats.update(real_logits)
      return tf.constant(True)

    tf.cond(ok, record, lambda: tf.constant(False))

  # -- per-chunk inputs (drawn outside XLA, keyed by global sample index) -------------------------

  def _normal(
    self, seed, stream: int, samples_per_chunk: int, shape: list[int], chunk
  ) -> tf.Tensor:
    """Unit Gaussians of global samples chunk * n ... chunk * n + n - 1 (n = samples_per_chunk)."""
    total = self.num_chunks * samples_per_chunk
    draws = tf.random.stateless_normal([total, *shape], _fold(seed, stream), alg="philox")
    return tf.gather(tf.reshape(draws, [self.num_chunks, samples_per_chunk, *shape]), chunk)

  def _rows(self, values: tf.Tensor | None, samples_per_chunk: int, chunk) -> tf.Tensor | None:
    """Rows chunk * n ... chunk * n + n - 1 of a global-batch tensor."""
    if values is None:
      return None
    values = values[: self.num_chunks * samples_per_chunk]
    shape = [self.num_chunks, samples_per_chunk, *values.shape[1:]]
    return tf.gather(tf.reshape(values, shape), chunk)

  def _chunk_inputs(self, phase, chunk, reals, real_c, gen_c, seed, p, pl_mean) -> tuple:
    per_chunk = self.pl_chunk if phase == "Greg" else self.batch_gpu
    fake_c = real_c if gen_c is None else gen_c[PHASES.index(phase)]
    fake_c = self._rows(fake_c, per_chunk, chunk)
    aug_seed = _fold(_fold(seed, _AUGMENT), chunk)
    gen_seed = _fold(_fold(seed, _GENERATOR), chunk)
    if phase == "Greg":
      res, channels = self.config.resolution, self.config.img_channels
      z = self._normal(seed, _LATENTS, per_chunk, [self.config.z_dim], chunk)
      noise = self._normal(seed, _PL_NOISE, per_chunk, [res, res, channels], chunk)
      return z, fake_c, noise, pl_mean, gen_seed
    real_rows = self._rows(reals, per_chunk, chunk), self._rows(real_c, per_chunk, chunk)
    if phase == "Dreg":
      return (*real_rows, aug_seed, p)
    z = self._normal(seed, _LATENTS, per_chunk, [self.config.z_dim], chunk)
    if phase == "Gmain":
      return z, fake_c, aug_seed, p, gen_seed
    return (z, fake_c, *real_rows, aug_seed, p, gen_seed)

  # -- per-chunk gradients (the part compiled with jit_compile) ----------------------------------

  def _gradients(self, tape: tf.GradientTape, total: tf.Tensor, network: Any) -> list[tf.Tensor]:
    # Zeros for unconnected weights (e.g. D's output bias under R1): Adam then still decays their
    # moments, as the official code (which connects every weight with `* 0`) does.
    variables = [_tf_variable(v) for v in network.trainable_variables]
    return tape.gradient(total, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)

  def _gmain_grads(self, z, c, aug_seed, p, gen_seed):
    with tf.GradientTape() as tape:
      loss, logits, ws = loss_lib.generator_main_loss(
        self.G,
        self.D,
        z,
        c,
        self.augment,
        p,
        aug_seed,
        self.style_mixing_prob,
        self.settings.noise_mode,
        gen_seed,
      )
      total = tf.reduce_sum(loss) / self.settings.batch
    sums = {
      "loss": tf.reduce_sum(loss),
      "fake_scores": tf.reduce_sum(logits),
      "fake_signs": tf.reduce_sum(tf.sign(logits)),
      "w": tf.reduce_sum(ws[:, 0], axis=0),
      "count": tf.cast(tf.size(loss), tf.float32),
    }
    return self._gradients(tape, total, self.G), sums, None

  def _greg_grads(self, z, c, noise, pl_mean, gen_seed):
    s = self.settings
    with tf.GradientTape() as tape:
      penalty, lengths, ws = loss_lib.path_length_penalty(
        self.G, z, c, pl_mean, noise, s.pl_decay, self.style_mixing_prob, s.noise_mode, gen_seed
      )
      scale = s.pl_weight * s.g_reg_interval / (self.num_chunks * self.pl_chunk)
      total = tf.reduce_sum(penalty) * scale
    sums = {
      "penalty": tf.reduce_sum(penalty),
      "pl_lengths": tf.reduce_sum(lengths),
      "w": tf.reduce_sum(ws[:, 0], axis=0),
      "count": tf.cast(tf.size(penalty), tf.float32),
    }
    return self._gradients(tape, total, self.G), sums, None

  def _dmain_grads(self, z, c, reals, real_c, aug_seed, p, gen_seed):
    fakes, ws = loss_lib.generate(
      self.G, z, c, self.style_mixing_prob, self.settings.noise_mode, gen_seed
    )
    with tf.GradientTape() as tape:
      loss, real_logits, _ = loss_lib.discriminator_main_loss(
        self.D, fakes, c, reals, real_c, self.augment, p, aug_seed
      )
      total = tf.reduce_sum(loss) / self.settings.batch
    sums = {
      "loss": tf.reduce_sum(loss),
      "real_scores": tf.reduce_sum(real_logits),
      "real_signs": tf.reduce_sum(tf.sign(real_logits)),
      "w": tf.reduce_sum(ws[:, 0], axis=0),
      "count": tf.cast(tf.size(loss), tf.float32),
    }
    return self._gradients(tape, total, self.D), sums, real_logits

  def _dreg_grads(self, reals, real_c, aug_seed, p):
    s = self.settings
    with tf.GradientTape() as tape:
      penalty, real_logits = loss_lib.r1_penalty(self.D, reals, real_c, self.augment, p, aug_seed)
      total = tf.reduce_sum(penalty) * (s.r1_gamma / 2) * s.d_reg_interval / s.batch
    sums = {"penalty": tf.reduce_sum(penalty), "count": tf.cast(tf.size(penalty), tf.float32)}
    return self._gradients(tape, total, self.D), sums, real_logits

  # -- after the phases --------------------------------------------------------------------------

  def _finish_step(self, adjust_augment: int) -> dict[str, tf.Tensor]:
    """G_ema update, counters, and (every ada_interval steps) the ADA adjustment of p."""
    s = self.settings
    beta = tf.cast(ema_beta(s.batch, s.ema_kimg, s.ema_rampup, self.cur_nimg), tf.float32)
    for source, target in zip(self.G.weights, self.G_ema.weights):
      if source.trainable:
        target.assign(source + (target - source) * beta)
      else:
        target.assign(source)  # W average and constant noise are copied, not averaged
    self.cur_nimg.assign_add(s.batch)
    self.batch_idx.assign_add(1)
    if adjust_augment:
      sign_sum, count = self.ada_stats.read_and_reset()
      new_p = self._adjust_p(
        self.augment_p, sign_sum, count, s.batch, s.ada_interval, s.ada_target, s.ada_kimg
      )
      self.augment_p.assign(new_p)
    return {
      "Progress/augment": tf.identity(self.augment_p),
      "Progress/kimg": tf.cast(self.cur_nimg, tf.float64) / 1000.0,
      "Progress/skipped_updates": tf.identity(self.skipped_updates),
    }
