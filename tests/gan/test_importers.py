"""Official TF1 and PyTorch pickles (built here in the official formats) -> tfpets networks, checked against
the independent NumPy forward pass on the same variables."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from tests import torch_files as tw
from tests.gan import numpy_reference as ref
from tests.gan import pickle_writers as pw
from tfpets.gan import importers, networks

RES = 16
TOLERANCE = 1e-3  # max abs difference, images and logits (D sees images in [-1, 1])

# (G architecture, D architecture, labels, conv_clamp): clamp 1.0 keeps the clamp active.
VARIANTS = {
  "skip_resnet": ("skip", "resnet", 0, 1.0),
  "resnet_skip_cond": ("resnet", "skip", 3, 1.0),
  "orig_orig": ("orig", "orig", 0, 256),
}


def tf_kwargs(g_arch, d_arch, labels, clamp, fp16=0):
  common = dict(
    label_size=labels,
    resolution=RES,
    num_channels=3,
    fmap_base=128,
    fmap_max=32,
    num_fp16_res=fp16,
    conv_clamp=clamp,
  )
  g = dict(
    common,
    latent_size=32,
    dlatent_size=32,
    mapping_layers=2,
    architecture=g_arch,
    truncation_psi=0.5,
    style_mixing_prob=0.9,
  )
  d = dict(
    common,
    architecture=d_arch,
    mbstd_group_size=2,
    mapping_layers=1 if labels else 0,
    freeze_layers=0,
  )
  return g, d


def torch_kwargs(g_arch, d_arch, labels, clamp, fp16=0):
  e = pw.EasyDict
  g = e(
    z_dim=32,
    c_dim=labels,
    w_dim=32,
    img_resolution=RES,
    img_channels=3,
    mapping_kwargs=e(num_layers=2),
    synthesis_kwargs=e(
      channel_base=256, channel_max=32, num_fp16_res=fp16, conv_clamp=clamp, architecture=g_arch
    ),
  )
  d = e(
    c_dim=labels,
    img_resolution=RES,
    img_channels=3,
    architecture=d_arch,
    channel_base=256,
    channel_max=32,
    num_fp16_res=fp16,
    conv_clamp=clamp,
    block_kwargs=e(freeze_layers=0),
    mapping_kwargs=e(num_layers=1, lr_multiplier=0.1),
    epilogue_kwargs=e(mbstd_group_size=2),
  )
  return g, d


class Fixture:
  """A pickle on disk plus the TF-named variables and kwargs the reference needs."""

  def __init__(self, path, g_kwargs, d_kwargs, gs_params, d_params, g_params, labels, marker):
    self.path, self.g_kwargs, self.d_kwargs = path, g_kwargs, d_kwargs
    self.gs_params, self.d_params, self.g_params = gs_params, d_params, g_params
    self.labels, self.marker = labels, marker


def make_fixture(directory: pathlib.Path, variant: str, fmt: str, fp16: int = 0) -> Fixture:
  g_arch, d_arch, labels, clamp = VARIANTS[variant]
  marker = directory / f"executed_{variant}_{fmt}"
  source = pw.embedded_source(str(marker))
  g_kwargs, d_kwargs = tf_kwargs(g_arch, d_arch, labels, clamp, fp16)
  nets, gs_params, d_params, g_params = pw.tf_networks(g_kwargs, d_kwargs, 3, source)
  path = directory / f"{variant}_{fp16}.{fmt}"
  if fmt == "tf.pkl":
    path.write_bytes(tw.dumps(nets, protocol=3))
  else:
    snapshot = pw.torch_snapshot(
      *torch_kwargs(g_arch, d_arch, labels, clamp, fp16), g_params, d_params, gs_params, source
    )
    if fmt == "torch.pkl":
      pw.write_torch_pickle(path, snapshot, protocol=4)
    else:
      tw.write_torch_zip(path, snapshot)
  return Fixture(path, g_kwargs, d_kwargs, gs_params, d_params, g_params, labels, marker)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp("pickles")


def inputs(labels, batch=4):
  rng = np.random.default_rng(11)
  z = rng.standard_normal([batch, 32]).astype(np.float32)
  c = np.eye(labels, dtype=np.float32)[np.arange(batch) % labels] if labels else None
  images = rng.uniform(-1, 1, [batch, RES, RES, 3]).astype(np.float32)
  return z, c, images


def check_networks(fixture: Fixture, converted, relative: float | None = None):
  """G (EMA and raw) images and D logits against the reference: max abs diff < TOLERANCE, or
  `relative` x the reference's largest magnitude (float16 networks)."""
  z, c, images = inputs(fixture.labels)
  g_in, d_in = ((z, c), (images, c)) if fixture.labels else (z, images)

  def close(got, want, what):
    bound = TOLERANCE if relative is None else relative * np.abs(want).max()
    assert np.abs(got - want).max() < bound, what

  for key, params in (("G_ema", fixture.gs_params), ("G", fixture.g_params)):
    got = converted.networks[key](
      g_in, noise_mode="const", truncation_psi=0.7, truncation_cutoff=3
    ).numpy()
    want = ref.generator(
      ref.Params(params), fixture.g_kwargs, z, c, truncation_psi=0.7, truncation_cutoff=3
    )
    assert got.shape == want.shape == (4, RES, RES, 3)
    close(got, want, key)
  got = converted.networks["D"](d_in).numpy()
  close(got, ref.discriminator(ref.Params(fixture.d_params), fixture.d_kwargs, images, c), "D")


@pytest.mark.parametrize("fmt", ["tf.pkl", "torch.pkl", "torch.zip"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_converted_networks_match_the_numpy_reference(workdir, variant, fmt):
  fixture = make_fixture(workdir, variant, fmt)
  converted = importers.read_network_pickle(fixture.path)
  assert converted.source_format == fmt.split(".")[0]
  g_arch, d_arch, labels, clamp = VARIANTS[variant]
  config = converted.config
  assert (config.resolution, config.c_dim, config.channel_base, config.channel_max) == (
    RES,
    labels,
    256,
    32,
  )
  assert (config.g_architecture, config.d_architecture, config.conv_clamp) == (
    g_arch,
    d_arch,
    clamp,
  )
  assert (config.mapping_layers, config.mbstd_group_size, config.d_mapping_layers) == (
    2,
    2,
    1 if labels else (0 if fmt == "tf.pkl" else 1),
  )
  check_networks(fixture, converted)
  assert not fixture.marker.exists()  # the embedded source was never executed


@pytest.mark.parametrize("fmt", ["tf.pkl", "torch.pkl"])
def test_mixed_precision_networks_stay_close_to_the_reference(workdir, fmt):
  fixture = make_fixture(workdir, "skip_resnet", fmt, fp16=2)
  converted = importers.read_network_pickle(fixture.path)
  assert converted.config.num_fp16_res == 2
  assert [b.use_fp16 for b in converted.networks["G"].synthesis.blocks] == [False, True, True]
  check_networks(fixture, converted, relative=0.05)


def test_convert_writes_weights_and_config(workdir, tmp_path):
  fixture = make_fixture(workdir, "resnet_skip_cond", "torch.pkl")
  converted = importers.convert_network_pickle(fixture.path, tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["network"]["resolution"] == RES and config["network"]["c_dim"] == 3
  assert config["networks"] == ["D", "G", "G_ema"]
  assert config["source"]["format"] == "torch" and config["source"]["augment_p"] == 0.25
  assert config["source"]["training_set_kwargs"] == {"resolution": RES, "use_labels": False}
  loaded_config, models = networks.load_networks(tmp_path)
  assert loaded_config == converted.config
  check_networks(fixture, type(converted)(loaded_config, models, "torch"))


def test_single_gs_tf_pickle_gives_only_g_ema(tmp_path):
  g_kwargs, d_kwargs = tf_kwargs("skip", "resnet", 0, 256)
  nets, gs_params, _, _ = pw.tf_networks(g_kwargs, d_kwargs, 5, "")
  path = tmp_path / "gs.pkl"
  path.write_bytes(tw.dumps(nets[2]))
  converted = importers.read_network_pickle(path)
  assert sorted(converted.networks) == ["G_ema"]
  z, _, _ = inputs(0)
  want = ref.generator(ref.Params(gs_params), g_kwargs, z)
  got = converted.networks["G_ema"](z, noise_mode="const").numpy()
  assert np.abs(got - want).max() < TOLERANCE


def _tf_pickle_with(tmp_path, g_kwargs, d_kwargs, edit=None, version=5):
  nets, _, _, _ = pw.tf_networks(g_kwargs, d_kwargs, 0, "")
  if edit:
    edit(nets)
  for net in nets:
    net._state["version"] = version  # pylint: disable=protected-access
  path = tmp_path / "edited.pkl"
  path.write_bytes(tw.dumps(nets))
  return path


def test_unknown_tf_kwarg_is_refused_by_name(tmp_path):
  g_kwargs, d_kwargs = tf_kwargs("skip", "resnet", 0, 256)
  path = _tf_pickle_with(tmp_path, dict(g_kwargs, fancy_layers=3), d_kwargs)
  with pytest.raises(
    importers.PickleFormatError,
    match=r"edited.pkl: network Gs? has unknown TensorFlow kwarg 'fancy_layers'",
  ):
    importers.read_network_pickle(path)


def test_unsupported_tf_setting_is_named(tmp_path):
  g_kwargs, d_kwargs = tf_kwargs("skip", "resnet", 0, 256)
  path = _tf_pickle_with(tmp_path, g_kwargs, dict(d_kwargs, use_spectral_norm=True))
  with pytest.raises(importers.PickleFormatError, match="use_spectral_norm=True"):
    importers.read_network_pickle(path)


def test_missing_and_misshapen_variables_are_named(tmp_path):
  g_kwargs, d_kwargs = tf_kwargs("skip", "resnet", 0, 256)

  def drop(nets):
    variables = nets[1]._state["variables"]  # pylint: disable=protected-access
    nets[1]._state["variables"] = [(n, v) for n, v in variables if n != "8x8/Conv0/bias"]

  with pytest.raises(importers.PickleFormatError, match=r"lacks variable '8x8/Conv0/bias'"):
    importers.read_network_pickle(_tf_pickle_with(tmp_path, g_kwargs, d_kwargs, drop))
  # Settings that disagree with the stored variables: fmap_max 16 instead of 32.
  path = _tf_pickle_with(
    tmp_path, g_kwargs, d_kwargs, lambda nets: nets[1]._state["static_kwargs"].update(fmap_max=16)
  )
  with pytest.raises(importers.PickleFormatError, match="disagree on channel_max"):
    importers.read_network_pickle(path)


def test_old_tf_pickle_version_is_refused(tmp_path):
  g_kwargs, d_kwargs = tf_kwargs("skip", "resnet", 0, 256)
  with pytest.raises(importers.PickleFormatError, match="pickle version 3"):
    importers.read_network_pickle(_tf_pickle_with(tmp_path, g_kwargs, d_kwargs, version=3))


def test_files_that_are_not_network_pickles(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such network pickle"):
    importers.read_network_pickle(tmp_path / "missing.pkl")
  plain = tmp_path / "plain.pkl"
  plain.write_bytes(tw.dumps({"numbers": [1, 2, 3]}))
  with pytest.raises(importers.PickleFormatError, match="neither a TF1 .* nor a PyTorch dict"):
    importers.read_network_pickle(plain)
  truncated = tmp_path / "truncated.pkl"
  truncated.write_bytes(tw.dumps({"numbers": [1, 2, 3]})[:-5])
  with pytest.raises(importers.PickleFormatError, match="truncated.pkl: not a readable pickle"):
    importers.read_network_pickle(truncated)
