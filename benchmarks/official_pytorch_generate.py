"""Images/s of the official StyleGAN2-ADA PyTorch generator, run as its generate.py runs it.

The official side of bench_generate.py, run in a separate Python that has PyTorch. Builds, from a
checkout of NVlabs/stylegan2-ada-pytorch, the generator its `train.py --cfg=auto` builds at one
resolution, in float32 (`num_fp16_res=0`, conv_clamp 256; official_pytorch_networks.py's
`build_networks`), with random weights, in the state generate.py gets it from a pickle's G_ema
(`eval()`, no parameter requiring gradients, as training_loop.py keeps G_ema). Each timed call then
does what generate.py does for its images:

  img = G(z, label, truncation_psi=1, noise_mode='const')
  img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
  img.cpu().numpy()

with z float64 [batch, z_dim] drawn before the timing as generate.py draws it
(`torch.from_numpy(np.random.RandomState(seed).randn(...))`) and label zeros [batch, 0]. PNG
writing is not timed. On CPU the official custom ops fall back to their reference
implementations. The official code is not part of tfpets and is not shipped with it:
`--official-repo` is the user's own checkout (its `dnnlib/util.py` imports `requests`).

  python benchmarks/official_pytorch_generate.py --official-repo PATH --resolution 32
      [--seconds 5] [--warmups 2] [--threads 2]

Prints one JSON line: {"figures": {"official": {"<batch>": {"img_per_s", "img_per_s_from_cpu",
"ms_per_call", "cpu_over_wall", "calls"}}}, "params", "torch", "load_average_1min"}.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from typing import Any, Callable

from bench_generate import BATCHES, generate_py_latents, time_calls
from official_pytorch_networks import _import_official_networks, build_networks


def generate_call(generator: Any, z: Any, label: Any) -> Callable[[], Any]:
  """One generate.py step on a batch: the generator, then the uint8 conversion."""
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  def call() -> Any:
    img = generator(z, label, truncation_psi=1, noise_mode="const")
    img = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return img.cpu().numpy()

  return call


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--official-repo",
    required=True,
    type=pathlib.Path,
    help="checkout of NVlabs/stylegan2-ada-pytorch",
  )
  parser.add_argument("--resolution", type=int, required=True)
  parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per figure")
  parser.add_argument("--warmups", type=int, default=2, help="untimed calls first")
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  load_before = os.getloadavg()[0]
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  networks = _import_official_networks(args.official_repo.resolve())
  generator, _ = build_networks(networks, args.resolution)
  generator = generator.eval().requires_grad_(False)
  figures = {}
  for batch in BATCHES:
    z = torch.from_numpy(generate_py_latents(batch, generator.z_dim))
    label = torch.zeros([batch, generator.c_dim])
    call = generate_call(generator, z, label)
    figures[str(batch)] = time_calls(call, batch, args.seconds, args.warmups)
  report = {
    "figures": {"official": figures},
    "params": sum(p.numel() for p in generator.parameters()),
    "torch": torch.__version__,
    "load_average_1min": [load_before, os.getloadavg()[0]],
  }
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
