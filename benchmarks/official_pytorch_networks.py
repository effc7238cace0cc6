"""Throughput of the official StyleGAN2-ADA PyTorch networks on this machine, for side-by-side runs.

Builds the official `training.networks.Generator` and `Discriminator` with the `auto` preset at
batch 8 (as in benchmarks/RESULTS.md section 3: z_dim = w_dim = 512, no labels, 2 mapping layers,
channel_base 16384,
channel_max 512, fp32 everywhere (num_fp16_res 0), conv_clamp 256, G 'skip', D 'resnet', minibatch
std group 4 with 1 channel) and times, per resolution:

  G_fwd      G(z, c) in training mode (the official default forward, noise_mode 'random'), under
             torch.no_grad(): like the tfpets G forward, no gradient tape is recorded.
  G_fwd_bwd  sum of the images, gradients with respect to all G parameters (torch.autograd.grad).
  D_fwd_bwd  random images in [-1, 1], sum of the logits, gradients with respect to all D
             parameters.

Timing is bench_gan_networks.py's `time_step`: 2 warm-ups, then the median wall time of
`--repeats` steps, and the mean process CPU seconds per step. `img_per_s_from_cpu` is
batch / (CPU seconds / --threads): with the default 2 threads, the throughput with both cores to
itself, which stays meaningful when other processes share the machine. On CPU the official custom
ops fall back to their reference implementations.

The official code is not part of tfpets and is not shipped with it: point `--repo` at your own
checkout of NVlabs/stylegan2-ada-pytorch (its `dnnlib/util.py` imports `requests`, which the
official README lists among its dependencies). Run it with a Python that has PyTorch:

  python benchmarks/official_pytorch_networks.py --repo PATH [--resolutions 32,64,128]
      [--repeats 5] [--threads 2]

Prints one JSON line: {"<res>": {"G_fwd": {...}, "G_fwd_bwd": {...}, "D_fwd_bwd": {...}},
"params": {"<res>": {"G": n, "D": n}}, "torch": version}.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import types
from typing import Any

from bench_gan_networks import time_step

BATCH = 8
Z_DIM = 512
W_DIM = 512
IMG_CHANNELS = 3


def _import_official_networks(repo: pathlib.Path) -> types.ModuleType:
  """The official `training.networks` module from the checkout at `repo`."""
  networks_file = repo / "training" / "networks.py"
  if not networks_file.is_file():
    raise SystemExit(
      f"--repo {repo}: no training/networks.py there; expected a checkout of "
      "NVlabs/stylegan2-ada-pytorch"
    )
  sys.path.insert(0, str(repo))
  from training import networks  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  return networks


def build_networks(networks: types.ModuleType, resolution: int) -> tuple[Any, Any]:
  """Official G and D with the `auto` preset at batch 8."""
  common = dict(channel_base=16384, channel_max=512, num_fp16_res=0, conv_clamp=256)
  generator = networks.Generator(
    z_dim=Z_DIM,
    c_dim=0,
    w_dim=W_DIM,
    img_resolution=resolution,
    img_channels=IMG_CHANNELS,
    mapping_kwargs=dict(num_layers=2),
    synthesis_kwargs=dict(architecture="skip", **common),
  )
  discriminator = networks.Discriminator(
    c_dim=0,
    img_resolution=resolution,
    img_channels=IMG_CHANNELS,
    architecture="resnet",
    epilogue_kwargs=dict(mbstd_group_size=4, mbstd_num_channels=1),
    **common,
  )
  return generator, discriminator


def _parameter_count(module: Any) -> int:
  return sum(p.numel() for p in module.parameters())


def measure(
  networks: types.ModuleType, resolution: int, repeats: int, threads: int
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
  """Figures for G forward, G forward+backward and D forward+backward at one resolution."""
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  generator, discriminator = build_networks(networks, resolution)
  # Modules start in training mode, the mode the tfpets benchmark uses (training=True).
  g_params = list(generator.parameters())
  d_params = list(discriminator.parameters())
  z = torch.randn([BATCH, Z_DIM])
  c = torch.zeros([BATCH, 0])
  images = torch.rand([BATCH, IMG_CHANNELS, resolution, resolution]) * 2 - 1

  def g_forward():
    with torch.no_grad():
      return generator(z, c)

  def g_forward_backward():
    return torch.autograd.grad(generator(z, c).sum(), g_params)

  def d_forward_backward():
    return torch.autograd.grad(discriminator(images, c).sum(), d_params)

  results = {}
  for name, step in (
    ("G_fwd", g_forward),
    ("G_fwd_bwd", g_forward_backward),
    ("D_fwd_bwd", d_forward_backward),
  ):
    wall, cpu = time_step(step, repeats)
    results[name] = {
      "img_per_s": round(BATCH / wall, 4),
      "img_per_s_from_cpu": round(BATCH / (cpu / threads), 4),
      "cpu_s_per_step": round(cpu, 4),
    }
  params = {"G": _parameter_count(generator), "D": _parameter_count(discriminator)}
  return results, params


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--repo", required=True, type=pathlib.Path, help="checkout of NVlabs/stylegan2-ada-pytorch"
  )
  parser.add_argument(
    "--resolutions", default="32,64,128", type=lambda s: [int(v) for v in s.split(",")]
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  networks = _import_official_networks(args.repo.resolve())
  report: dict[str, Any] = {}
  params = {}
  for resolution in args.resolutions:
    report[str(resolution)], params[str(resolution)] = measure(
      networks, resolution, args.repeats, args.threads
    )
  report["params"] = params
  report["torch"] = torch.__version__
  print(json.dumps(report))


if __name__ == "__main__":
  main()
