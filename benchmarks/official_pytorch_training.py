"""Seconds per phase of the official StyleGAN2-ADA PyTorch training iteration on this machine.

The official side of bench_gan_training.py, run in a separate Python that has PyTorch. Builds,
from a checkout of NVlabs/stylegan2-ada-pytorch, what its `train.py --cfg=auto --batch=8
--aug=ada --augpipe=bgc` builds at one resolution, in float32 (`num_fp16_res=0`, conv_clamp 256;
official_pytorch_networks.py's `build_networks`): G, D, G_ema, `training.augment.AugmentPipe`
(the `bgc` transforms, p set to `--p`, the ADA controller on), `training.loss.StyleGAN2Loss` (R1
gamma 0.0002 res^2 / 32, the auto formula; path length, style mixing 0.9) and one Adam per network
with the lazy-regularisation scaling of `training/training_loop.py`. Each timed iteration then
runs, as `training_loop.py` does, the phases Gmain, Greg, Dmain, Dreg (each `opt.zero_grad`,
`loss.accumulate_gradients`, `nan_to_num` of the gradients, `opt.step`) and Gema (the G_ema update
and, every 4th iteration, the ADA adjustment of p), every phase in every iteration, so that each
has its own median. Reals and latents are random tensors drawn before the timing.

On CPU the official custom ops fall back to their reference implementations. The official code is
not part of tfpets and is not shipped with it: `--official-repo` is the user's own checkout (its
`dnnlib/util.py` imports `requests`; `training/augment.py` imports `scipy`).

  python benchmarks/official_pytorch_training.py --official-repo PATH --resolution 32
      [--iterations 5] [--warmups 2] [--blocks 0] [--threads 2] [--p 0.2]

Prints one JSON line: {"phases": {phase: {"wall_s", "cpu_s"}}, "sec_per_kimg",
"sec_per_kimg_from_cpu", "block_sec_per_kimg", "params", "r1_gamma", "torch"}.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import sys
from typing import Any

from bench_gan_training import (
  ADA_INTERVAL,
  ADA_KIMG,
  ADA_TARGET,
  BLOCK,
  PHASES,
  amortised_figures,
  time_blocks,
  time_phases,
)
from official_pytorch_networks import BATCH, _import_official_networks, build_networks

# train.py's `bgc` pipeline (augpipe_specs).
BGC = dict(
  xflip=1,
  rotate90=1,
  xint=1,
  scale=1,
  rotate=1,
  aniso=1,
  xfrac=1,
  brightness=1,
  contrast=1,
  lumaflip=1,
  hue=1,
  saturation=1,
)
REG_INTERVALS = {"G": 4, "D": 16}


def auto_settings(resolution: int) -> dict[str, float]:
  """train.py's `auto` preset at one GPU (its batch 32 enters gamma and ema before --batch=8)."""
  preset_batch = max(min(4096 // resolution, 32), 1)
  return dict(
    r1_gamma=0.0002 * resolution**2 / preset_batch,
    ema_kimg=preset_batch * 10 / 32,
    ema_rampup=0.05,
    learning_rate=0.0025,
  )


class OfficialIteration:
  """The official training state at one resolution and its phases, run as training_loop.py does."""

  def __init__(self, repo: pathlib.Path, resolution: int, p: float):
    import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

    networks = _import_official_networks(repo)
    from torch_utils import misc, training_stats  # pylint: disable=import-outside-toplevel
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix  # noqa: I001
    from training import augment, loss  # pylint: disable=import-outside-toplevel

    self.torch, self.misc = torch, misc
    conv2d_gradfix.enabled = True  # As training_loop.py sets them; both fall back on CPU.
    grid_sample_gradfix.enabled = True
    self.settings = auto_settings(resolution)
    generator, discriminator = build_networks(networks, resolution)
    self.G = generator.train().requires_grad_(False)
    self.D = discriminator.train().requires_grad_(False)
    self.G_ema = copy.deepcopy(self.G).eval()
    self.augment_pipe = augment.AugmentPipe(**BGC).train().requires_grad_(False)
    self.augment_pipe.p.copy_(torch.as_tensor(p))
    self.ada_stats = training_stats.Collector(regex="Loss/signs/real")
    self.loss = loss.StyleGAN2Loss(
      device=torch.device("cpu"),
      G_mapping=self.G.mapping,
      G_synthesis=self.G.synthesis,
      D=self.D,
      augment_pipe=self.augment_pipe,
      r1_gamma=self.settings["r1_gamma"],
    )
    self.optimizers = {
      name: self._lazy_adam(module, REG_INTERVALS[name])
      for name, module in (("G", self.G), ("D", self.D))
    }
    self.real_img = torch.rand([BATCH, self.G.img_channels, resolution, resolution]) * 2 - 1
    self.real_c = torch.zeros([BATCH, 0])
    self.gen_c = torch.zeros([BATCH, 0])
    self.cur_nimg = 0
    self.batch_idx = 0

  def _lazy_adam(self, module: Any, interval: int) -> Any:
    mb_ratio = interval / (interval + 1)
    return self.torch.optim.Adam(
      module.parameters(),
      lr=self.settings["learning_rate"] * mb_ratio,
      betas=[0**mb_ratio, 0.99**mb_ratio],
      eps=1e-8,
    )

  def run_phase(self, phase: str) -> None:
    if phase == "Gema":
      self._update_ema_and_p()
      return
    name = phase[0]
    module, optimizer = (self.G, self.D)[name == "D"], self.optimizers[name]
    interval = REG_INTERVALS[name] if phase.endswith("reg") else 1
    gen_z = self.torch.randn([BATCH, self.G.z_dim])
    optimizer.zero_grad(set_to_none=True)
    module.requires_grad_(True)
    self.loss.accumulate_gradients(
      phase=phase,
      real_img=self.real_img,
      real_c=self.real_c,
      gen_z=gen_z,
      gen_c=self.gen_c,
      sync=True,
      gain=interval,
    )
    module.requires_grad_(False)
    for param in module.parameters():
      if param.grad is not None:
        self.misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
    optimizer.step()

  def _update_ema_and_p(self) -> None:
    torch = self.torch
    ema_nimg = min(self.settings["ema_kimg"] * 1000, self.cur_nimg * self.settings["ema_rampup"])
    ema_beta = 0.5 ** (BATCH / max(ema_nimg, 1e-8))
    with torch.no_grad():
      for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
        p_ema.copy_(p.lerp(p_ema, ema_beta))
      for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
        b_ema.copy_(b)
    self.cur_nimg += BATCH
    self.batch_idx += 1
    if self.batch_idx % ADA_INTERVAL == 0:
      self.ada_stats.update()
      sign = float(torch.sign(torch.as_tensor(self.ada_stats["Loss/signs/real"] - ADA_TARGET)))
      adjust = sign * (BATCH * ADA_INTERVAL) / (ADA_KIMG * 1000)
      self.augment_pipe.p.copy_((self.augment_pipe.p + adjust).max(torch.zeros([])))

  def run_iteration(self) -> None:
    """One iteration of training_loop.py: Greg every 4th, Dreg every 16th."""
    for phase in PHASES:
      interval = REG_INTERVALS.get(phase[0], 1) if phase.endswith("reg") else 1
      if self.batch_idx % interval == 0:
        self.run_phase(phase)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--official-repo",
    required=True,
    type=pathlib.Path,
    help="checkout of NVlabs/stylegan2-ada-pytorch",
  )
  parser.add_argument("--resolution", type=int, required=True)
  parser.add_argument("--iterations", type=int, default=5, help="timed iterations")
  parser.add_argument("--warmups", type=int, default=2)
  parser.add_argument(
    "--blocks", type=int, default=0, help=f"also time this many blocks of {BLOCK} iterations"
  )
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  parser.add_argument("--p", type=float, default=0.2, help="initial augmentation probability")
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  load_before = os.getloadavg()[0]
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  state = OfficialIteration(args.official_repo.resolve(), args.resolution, args.p)
  phases = time_phases(state.run_phase, args.iterations, args.warmups)
  report: dict[str, Any] = {"phases": phases, **amortised_figures(phases, args.threads)}
  if args.blocks:
    report["block_sec_per_kimg"] = time_blocks(state.run_iteration, args.blocks, args.threads)
  report["augment_p"] = float(state.augment_pipe.p)
  report["params"] = {
    "G": sum(p.numel() for p in state.G.parameters()),
    "D": sum(p.numel() for p in state.D.parameters()),
  }
  report["r1_gamma"] = state.settings["r1_gamma"]
  report["torch"] = torch.__version__
  report["load_average_1min"] = [load_before, os.getloadavg()[0]]
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
