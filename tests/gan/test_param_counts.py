"""Parameter counts of the official networks for every preset (as the official train.py builds
them, stylegan2-ada-pytorch training/networks.py), from built, never-run models."""

from __future__ import annotations

import numpy as np
import pytest

from tfpets.gan import networks, presets


def _trainable(model) -> int:
  return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _non_trainable(model) -> int:
  return sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)


# (preset, resolution, c_dim, num_ws, G trainable, D trainable); as the official code counts them.
SPEC_2_6 = [
  ("stylegan2", 1024, 0, 18, 30_370_060, 29_012_513),
  ("paper512", 512, 0, 16, 30_276_583, 28_982_849),
  ("paper256", 256, 0, 14, 24_767_458, 24_001_089),
  ("auto", 256, 0, 14, 23_191_522, 24_001_089),
  ("auto", 128, 0, 12, 22_949_277, 23_882_369),
  ("cifar", 32, 10, 8, 20_215_315, 20_988_416),
]


@pytest.mark.parametrize("preset,resolution,c_dim,num_ws,g_params,d_params", SPEC_2_6)
def test_parameter_counts_match_spec_table(preset, resolution, c_dim, num_ws, g_params, d_params):
  config = presets.network_config(preset, resolution, c_dim=c_dim)
  generator = networks.Generator(config)
  discriminator = networks.Discriminator(config)
  assert generator.num_ws == config.num_ws == num_ws
  assert _trainable(generator) == g_params
  assert _trainable(discriminator) == d_params
  assert _non_trainable(discriminator) == 0


def test_pet_project_generator_non_trainable_is_w_avg_plus_noise_buffers():
  generator = networks.Generator(presets.network_config("auto", 128))
  # The official count: 22,993,453 including the W average and the 11 noise buffers.
  assert generator.count_params() == 22_993_453
  noise = sum((2 ** ((i + 5) // 2)) ** 2 for i in range(2 * 7 - 3))
  assert _non_trainable(generator) == 512 + noise


def test_paper1024_has_the_stylegan2_networks():
  assert presets.network_config("paper1024", 1024) == presets.network_config("stylegan2", 1024)


# The networks of benchmarks/RESULTS.md (G and D against the official code), channel_base 16384: (preset, resolution, G); D does not depend on the mapping.
SPEC_15_6_G = [
  ("auto", 32, 19_947_539),
  ("auto", 64, 22_243_608),
  ("paper256", 32, 21_523_475),
  ("paper256", 64, 23_819_544),
  ("paper256", 128, 24_525_213),
]
SPEC_15_6_D = [(32, 21_507_073), (64, 23_407_361)]


@pytest.mark.parametrize("preset,resolution,g_params", SPEC_15_6_G)
def test_generator_counts_of_the_cpu_benchmark_table(preset, resolution, g_params):
  assert _trainable(networks.Generator(presets.network_config(preset, resolution))) == g_params


@pytest.mark.parametrize("resolution,d_params", SPEC_15_6_D)
def test_discriminator_counts_of_the_cpu_benchmark_table(resolution, d_params):
  for preset in ("auto", "paper256"):
    config = presets.network_config(preset, resolution)
    assert _trainable(networks.Discriminator(config)) == d_params
