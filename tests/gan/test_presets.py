"""Preset resolution (the official train.py) and NetworkConfig behaviour."""

from __future__ import annotations

import pytest

from tfpets.gan import presets


def test_channel_tables_of_spec_2_1():
  full = [512, 512, 512, 512, 512, 256, 128, 64, 32]
  half = [512, 512, 512, 512, 256, 128, 64]
  resolutions = [2**i for i in range(2, 11)]
  config = presets.network_config("stylegan2", 1024)
  assert [config.channels(r) for r in resolutions] == full
  config = presets.network_config("paper256", 256)
  assert [config.channels(r) for r in resolutions[:7]] == half
  assert presets.network_config("auto", 512).channel_base == 32768
  assert presets.network_config("auto", 256).channel_base == 16384


def test_pet_project_configuration_is_auto_at_128():
  config = presets.network_config("auto", 128)
  assert (
    config.mapping_layers,
    config.mbstd_group_size,
    config.num_fp16_res,
    config.conv_clamp,
    config.channel_base,
    config.channel_max,
  ) == (2, 4, 4, 256, 16384, 512)
  assert (config.g_architecture, config.d_architecture, config.c_dim) == ("skip", "resnet", 0)
  assert config.num_ws == 12
  # fp16 in the top 4 resolutions only: 16, 32, 64, 128 (the official num_fp16_res=4).
  assert [r for r in config.block_resolutions() if config.use_fp16(r)] == [16, 32, 64, 128]
  train = presets.training_config("auto", 128)
  assert (train.batch, train.mbstd_group_size, train.learning_rate, train.ema_kimg) == (
    32,
    4,
    0.0025,
    10,
  )
  assert train.r1_gamma == pytest.approx(0.1024)


@pytest.mark.parametrize(
  "resolution,batch,gamma,ema",
  [
    (32, 32, 0.0064, 10),
    (64, 32, 0.0256, 10),
    (256, 16, 0.8192, 5),
    (512, 8, 6.5536, 2.5),
    (1024, 4, 52.4288, 1.25),
  ],
)
def test_auto_formulas_for_one_gpu(resolution, batch, gamma, ema):
  train = presets.training_config("auto", resolution)
  assert train.batch == batch and train.ema_kimg == pytest.approx(ema)
  assert train.r1_gamma == pytest.approx(gamma)
  assert train.learning_rate == (0.002 if resolution >= 1024 else 0.0025)


def test_auto_with_eight_gpus():
  train = presets.training_config("auto", 256, gpus=8)
  assert (train.batch, train.r1_gamma) == (64, pytest.approx(0.2048))


def test_fixed_presets():
  cifar = presets.network_config("cifar", 32, c_dim=10)
  assert cifar.d_architecture == "orig" and cifar.mbstd_group_size == 32
  assert cifar.style_mixing_prob == 0
  assert presets.training_config("cifar", 32).pl_weight == 0
  paper256 = presets.training_config("paper256", 256)
  assert (paper256.batch, paper256.mbstd_group_size, paper256.r1_gamma) == (64, 8, 1.0)
  assert presets.network_config("paper512", 512).mapping_layers == 8


def test_demo_preset_is_small():
  config = presets.network_config("demo", 64)
  assert config.channel_max <= 128 and config.num_fp16_res == 0
  assert config.z_dim == config.w_dim == 128


def test_fp16_resolution_never_includes_4x4_or_8x8_when_small():
  assert presets.network_config("auto", 32).fp16_resolution == 8
  assert presets.network_config("auto", 1024).fp16_resolution == 128
  assert not presets.network_config("auto", 16).use_fp16(4)


def test_config_round_trips_through_a_dict():
  config = presets.network_config("auto", 64, c_dim=5, conv_clamp=None)
  assert presets.NetworkConfig.from_dict(config.to_dict()) == config


def test_config_errors_name_the_problem():
  with pytest.raises(ValueError, match="power of two"):
    presets.NetworkConfig(resolution=48)
  with pytest.raises(ValueError, match="g_architecture"):
    presets.NetworkConfig(g_architecture="fancy")
  with pytest.raises(ValueError, match=r"config.json: unknown network config keys \['colour'\]"):
    presets.NetworkConfig.from_dict({"colour": 1}, source="config.json")
  with pytest.raises(ValueError, match="unknown GAN preset 'big'"):
    presets.network_config("big", 64)
