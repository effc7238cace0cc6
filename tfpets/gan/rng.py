"""Counter-based random numbers that XLA and plain TensorFlow draw alike.

TensorFlow's stateless random ops draw other numbers under `jit_compile=True` than without it, so a
training step would not repeat itself across the two. Threefry-2x32 (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC 2011) in plain integer ops gives the same bits everywhere: the
augmentation pipeline and the generator's noise inputs draw from it, keyed by an int [2] seed.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

# Rotation distances of the even and the odd groups of four rounds.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _u32(value: int) -> tf.Tensor:
  return tf.constant(value & 0xFFFFFFFF, tf.uint32)


@tf.autograph.experimental.do_not_convert
def threefry2x32(
  key: tuple[tf.Tensor, tf.Tensor], counter: tuple[tf.Tensor, tf.Tensor]
) -> tuple[tf.Tensor, tf.Tensor]:
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011) on uint32 tensors; returns two words.

  The five groups of four rounds run as a loop, which keeps the graph small.
  """
  k0, k1 = key
  schedule = tf.stack(
    [k0, k1, tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(k0, k1), _u32(0x1BD11BDA))]
  )
  rotations = tf.constant(_ROTATIONS, tf.uint32)

  def group(index, x0, x1):
    distances = tf.unstack(rotations[index % 2])
    for r in distances:
      x0 = x0 + x1
      rotated = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(x1, r), tf.bitwise.right_shift(x1, 32 - r)
      )
      x1 = tf.bitwise.bitwise_xor(rotated, x0)
    x0 = x0 + schedule[(index + 1) % 3]
    x1 = x1 + schedule[(index + 2) % 3] + tf.cast(index + 1, tf.uint32)
    return index + 1, x0, x1

  start = (tf.constant(0), counter[0] + k0, counter[1] + k1)
  _, x0, x1 = tf.while_loop(lambda index, *_: index < 5, group, start, maximum_iterations=5)
  return x0, x1


def seed_key(seed: Any) -> tuple[tf.Tensor, tf.Tensor]:
  """All 128 bits of an int [2] seed, hashed into a Threefry key."""
  seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
  if seed.shape.rank != 1 or seed.shape[0] != 2:
    raise ValueError(f"seed must be an int tensor of shape [2], got shape {seed.shape}")
  low = tf.cast(seed, tf.uint32)
  high = tf.cast(tf.bitwise.right_shift(seed, tf.constant(32, tf.int64)), tf.uint32)
  return threefry2x32((high[0], high[1]), (low[0], low[1]))


def to_uniform(bits: tf.Tensor) -> tf.Tensor:
  """uint32 -> U(0, 1) with 24 bits, never exactly 0 or 1."""
  top = tf.bitwise.right_shift(bits, _u32(8))
  return tf.cast(top, tf.float32) * (2.0**-24) + 2.0**-25


def uniform(seed: Any, shape: Any, stream: int = 0) -> tf.Tensor:
  """U(0, 1) of `shape` (float32, 24 bits, never exactly 0 or 1); `stream` as in `normal`."""
  return _bits(seed, shape, stream, to_uniform)


def normal(seed: Any, shape: Any, stream: int = 0) -> tf.Tensor:
  """Standard normals of `shape` (float32): inverse normal CDF of 24-bit uniforms.

  `stream` separates independent draws under one seed (e.g. one per network layer).
  """
  return _bits(seed, shape, stream, lambda bits: tf.math.ndtri(to_uniform(bits)))


def _bits(seed: Any, shape: Any, stream: int, transform) -> tf.Tensor:
  """`transform` of count(shape) random uint32 words, two per Threefry evaluation."""
  shape = tf.cast(tf.stack(shape) if isinstance(shape, (list, tuple)) else shape, tf.int32)
  count = tf.reduce_prod(shape)
  index = tf.cast(tf.range((count + 1) // 2), tf.uint32)
  x0, x1 = threefry2x32(seed_key(seed), (index, 0 * index + _u32(stream)))
  return tf.reshape(transform(tf.concat([x0, x1], 0)[:count]), shape)
