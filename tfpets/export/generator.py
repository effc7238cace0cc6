"""The StyleGAN2-ADA generator for TF Serving (docs/export.md).

Signatures; every input holds one row per image, so that TF Serving's REST "instances" form and
its request batching work:

  serving_default     seeds int64 [N], truncation_psi float32 [N]   (+ class_index int64 [N])
                      -> images uint8 [N, H, W, 3], png_bytes string [N] (PNG files),
                         z float32 [N, z_dim] (the latents used)
  from_latents        z float32 [N, z_dim], truncation_psi float32 [N] (+ class_index) -> the same
  from_latents_float  the same inputs -> images_float float32 [N, H, W, 3], the network's output
                      in about [-1, 1], before the conversion to pixels

`class_index` is an input only of conditional generators (one class per image, as a one-hot
label). `truncation_psi` = 1 means no truncation; it applies to every layer. The PNG output's name
ends in `_bytes` because TF Serving's REST API base64-encodes exactly the string outputs so named.
Noise inputs are constant (`noise_mode='const'`, the default of the official `generate.py`,
NVlabs/stylegan2-ada-pytorch) and every layer computes in float32, so an image depends only on its
latents, class and psi. Pixels are clip(x * 127.5 + 128, 0, 255) truncated to uint8, as the
official `generate.py` and `--stage=generate` make them (docs/generate.md): the official z of a
seed, sent to `from_latents`, gives that seed's official image.

A seed maps to its latents in the graph by a stateless counter-based draw:
z = `tfpets.gan.rng.normal([seed, 0], [z_dim])` (Threefry-2x32 in plain integer ops, the same bits
on any device and under XLA). This is NOT the official `generate.py` convention,
`np.random.RandomState(seed).randn(1, z_dim)`: to reproduce an official image, compute that z on
the client and call `from_latents`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tfpets.errors import ArgumentError
from tfpets.export import serving, warmup
from tfpets.gan import metrics, networks, rng, snapshot

LATENTS_SIGNATURE = "from_latents"
FLOAT_SIGNATURE = "from_latents_float"
DESCRIPTIONS = {
  "seeds": "one image per seed; z = tfpets.gan.rng.normal([seed, 0], [z_dim]), not numpy's "
  "RandomState(seed) of the official generate.py",
  "z": "latents, one row per image (the official generate.py draws "
  "np.random.RandomState(seed).randn(1, z_dim))",
  "truncation_psi": "per image, truncation of W towards its average: 1 = none, 0.5..0.7 typical",
  "class_index": "per image, its class (conditional generators only), 0 <= index < c_dim",
  "images": "RGB images, clip(x * 127.5 + 128, 0, 255) truncated, as the official generate.py",
  "png_bytes": "each image as a PNG file",
  "images_float": "the network's output in about [-1, 1], before the conversion to pixels",
}


def load_generator(source: str | os.PathLike) -> networks.Generator:
  """G_ema (else G) of a tfpets run folder, snapshot folder or official network pickle."""
  try:
    generator, _ = snapshot.read_generator(source)
  except (ValueError, OSError) as e:
    message, prefix = str(e), f"{source}: "
    problem = message[len(prefix) :] if message.startswith(prefix) else message
    raise ArgumentError("source", str(source), problem) from e
  return generator


def seed_latents(seeds: tf.Tensor, z_dim: int) -> tf.Tensor:
  """Latents [N, z_dim] of int64 seeds [N]: tfpets.gan.rng.normal([seed, 0], [z_dim]) each."""
  seeds = tf.cast(seeds, tf.int64)
  draw = lambda seed: rng.normal(tf.stack([seed, tf.constant(0, tf.int64)]), [z_dim])
  return tf.map_fn(draw, seeds, fn_output_signature=tf.TensorSpec([z_dim], tf.float32))


class GeneratorSignatures:
  """The generator's signatures (`signatures()`), closures over the Keras model; see the module
  docstring."""

  def __init__(self, generator: networks.Generator):
    config = generator.config
    if config.img_channels not in (1, 3):
      raise ValueError(f"generator: img_channels must be 1 or 3, got {config.img_channels}")
    self.generator = generator
    self.z_dim, self.c_dim = config.z_dim, config.c_dim
    seeds = tf.TensorSpec([None], tf.int64, name="seeds")
    z = tf.TensorSpec([None, self.z_dim], tf.float32, name="z")
    self.from_seeds = self._function(
      seeds, lambda s, psi, c: self.encoded(self.synthesize(self.seed_latents(s), psi, c))
    )
    self.from_latents = self._function(
      z, lambda z, psi, c: self.encoded(self.synthesize(z, psi, c))
    )
    self.from_latents_float = self._function(
      z, lambda z, psi, c: {"images_float": self.synthesize(z, psi, c)[0]}
    )

  def signatures(self) -> dict:
    return {
      serving.DEFAULT_SIGNATURE: self.from_seeds,
      LATENTS_SIGNATURE: self.from_latents,
      FLOAT_SIGNATURE: self.from_latents_float,
    }

  def _function(self, first: tf.TensorSpec, body):
    """A tf.function of (first, truncation_psi[, class_index]) -> body(first, psi, class or None)."""
    specs = [first, tf.TensorSpec([None], tf.float32, name="truncation_psi")]
    if self.c_dim:
      specs.append(tf.TensorSpec([None], tf.int64, name="class_index"))

    def signature(*inputs):
      return body(inputs[0], inputs[1], inputs[2] if self.c_dim else None)

    # No tensor-dependent Python control flow here, so no AutoGraph (which cannot parse lambdas).
    return tf.function(signature, input_signature=specs, autograph=False)

  def seed_latents(self, seeds: tf.Tensor) -> tf.Tensor:
    return seed_latents(seeds, self.z_dim)

  def synthesize(self, z: tf.Tensor, truncation_psi: tf.Tensor, class_index: Any) -> tuple:
    """(images float32 [N, H, W, 3] in about [-1, 1], z) for one psi and class per image."""
    count = tf.shape(z)[0]
    checks = [_same_count(truncation_psi, count, "truncation_psi")]
    if self.generator.mapping.w_avg is None:  # nothing to truncate towards
      checks.append(
        tf.debugging.assert_equal(
          truncation_psi, 1.0, message="this generator has no W average: truncation_psi must be 1"
        )
      )
    c = self._labels(class_index, count)
    with tf.control_dependencies(checks):
      z = tf.identity(z)
    psi = tf.reshape(truncation_psi, [-1, 1, 1])  # one per image, over [N, num_ws, w_dim]
    if self.generator.mapping.w_avg is None:
      psi = 1.0
    x = self.generator(
      (z, c), training=False, truncation_psi=psi, noise_mode="const", force_fp32=True
    )
    x = tf.cast(x, tf.float32)
    if x.shape[-1] == 1:
      x = tf.tile(x, [1, 1, 1, 3])
    return x, z

  @staticmethod
  def encoded(synthesized: tuple) -> dict:
    images, z = synthesized
    pixels = metrics.to_uint8(images)
    png = tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.TensorSpec([], tf.string))
    return {"images": pixels, "png_bytes": png, "z": z}

  def _labels(self, class_index: Any, count: tf.Tensor) -> Optional[tf.Tensor]:
    if not self.c_dim:
      return None
    checks = [
      _same_count(class_index, count, "class_index"),
      tf.debugging.assert_non_negative(class_index, message="class_index must be >= 0"),
      tf.debugging.assert_less(
        class_index,
        tf.constant(self.c_dim, tf.int64),
        message=f"class_index must be < {self.c_dim}",
      ),
    ]
    with tf.control_dependencies(checks):
      return tf.one_hot(class_index, self.c_dim)


def _same_count(values: tf.Tensor, count: tf.Tensor, name: str):
  return tf.debugging.assert_equal(
    tf.shape(values)[0], count, message=f"{name} needs one value per image"
  )


def warmup_requests(z_dim: int, c_dim: int) -> list:
  """Small requests, one per signature."""
  classes = {"class_index": np.zeros([2], np.int64)} if c_dim else {}
  latents = np.random.RandomState(0).standard_normal([2, z_dim]).astype(np.float32)
  return [
    warmup.WarmupRequest(
      serving.DEFAULT_SIGNATURE,
      {"seeds": np.array([0, 1], np.int64), "truncation_psi": np.ones([2], np.float32), **classes},
    ),
    *(
      warmup.WarmupRequest(
        name, {"z": latents, "truncation_psi": np.full([2], 0.7, np.float32), **classes}
      )
      for name in (LATENTS_SIGNATURE, FLOAT_SIGNATURE)
    ),
  ]


def serving_model(generator: networks.Generator, source: str) -> serving.ServingModel:
  config = generator.config
  return serving.ServingModel(
    kind="generator",
    source=source,
    signatures=GeneratorSignatures(generator).signatures(),
    descriptions=DESCRIPTIONS,
    warmup_requests=warmup_requests(config.z_dim, config.c_dim),
    details={
      "network": config.to_dict(),
      "noise_mode": "const",
      "seed_to_z": "tfpets.gan.rng.normal([seed, 0], [z_dim])",
    },
  )


def export_generator(
  source: str | os.PathLike,
  export_dir: str | os.PathLike,
  name: str = "generator",
  version: Optional[int] = None,
) -> serving.ExportResult:
  """The generator of `source` (see `load_generator`) as a new version of `export_dir`/`name`."""
  serving.check_destination(export_dir, name, version)  # before reading a large pickle
  generator = load_generator(source)
  return serving.export(serving_model(generator, str(source)), export_dir, name, version)
