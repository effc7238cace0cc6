"""Images/s of the official DBPN PyTorch network (alterzero/DBPN-Pytorch), as its eval.py runs it.

The official side of bench_superres.py, run in a separate Python that has PyTorch. Builds the
network `eval.py` builds for a `--model_type` (DBPN: `dbpn.Net(num_channels=3, base_filter=64,
feat=256, num_stages=7, scale_factor)`) with its own Kaiming initialisation, in `eval()` mode, and
times `model(input)` under `torch.no_grad()` on float32 [1, 3, H, W] inputs in [0, 1] followed by
eval.py's `clamp(0, 1)`, as one call per image (eval.py's `testBatchSize` is 1). The official
modules star-import `torchvision.transforms` without using it; when torchvision is absent an empty
stand-in module is registered so they import. The official code is not part of tfpets:
`--official-repo` is the user's own checkout.

With `--save DIR` it also writes what the tfpets side checks the converter against: the network's
state dict wrapped in `torch.nn.DataParallel` as the official main.py saves it (`module.` keys), in
both of torch.save's formats (`state_dict_zip.pth`, `state_dict_legacy.pth`), one input
(`input.npy`, NHWC) and the official output for it (`output.npy`, NHWC).

  python benchmarks/official_pytorch_dbpn.py --official-repo PATH [--model-type DBPN] [--scale 4]
      [--sizes 64x64,128x185] [--seconds 5] [--warmups 1] [--threads 2] [--save DIR]

Prints one JSON line: {"figures": {"<h>x<w>": {"img_per_s", ...}}, "params", "torch", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import types

from bench_generate import time_calls

MODEL_TYPES = {  # eval.py: --model_type -> (module, num_stages)
  "DBPN": ("dbpn", 7),
  "DBPNLL": ("dbpn_v1", 10),
  "DBPN-RES-MR64-3": ("dbpn_iterative", 3),
  "DBPN-S": ("dbpns", 2),
}


def import_official_net(repo: pathlib.Path, module_name: str):
  """`Net` of one official module; torchvision.transforms stubbed when it is not installed."""
  try:
    import torchvision.transforms  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = types.ModuleType("torchvision.transforms")
    sys.modules.update(
      torchvision=torchvision, **{"torchvision.transforms": torchvision.transforms}
    )
  sys.path.insert(0, str(repo))
  module = __import__(module_name)
  return module.Net


def parse_sizes(text: str) -> list[tuple[int, int]]:
  return [tuple(int(v) for v in size.split("x")) for size in text.split(",")]


def save_reference(model, directory: pathlib.Path, size: tuple[int, int]) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  directory.mkdir(parents=True, exist_ok=True)
  state = torch.nn.DataParallel(model).state_dict()
  torch.save(state, directory / "state_dict_zip.pth")
  torch.save(state, directory / "state_dict_legacy.pth", _use_new_zipfile_serialization=False)
  image = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
  with torch.no_grad():
    output = model(torch.from_numpy(image)).numpy()
  np.save(directory / "input.npy", image.transpose(0, 2, 3, 1))
  np.save(directory / "output.npy", output.transpose(0, 2, 3, 1))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--official-repo", required=True, type=pathlib.Path)
  parser.add_argument("--model-type", default="DBPN", choices=sorted(MODEL_TYPES))
  parser.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
  parser.add_argument("--sizes", default="64x64,128x185", type=parse_sizes, help="LR HxW list")
  parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per figure")
  parser.add_argument("--warmups", type=int, default=1, help="untimed calls first")
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  parser.add_argument("--save", type=pathlib.Path, help="write the state dict and a reference")
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  load_before = os.getloadavg()[0]
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  module_name, stages = MODEL_TYPES[args.model_type]
  net_class = import_official_net(args.official_repo.resolve(), module_name)
  model = net_class(
    num_channels=3, base_filter=64, feat=256, num_stages=stages, scale_factor=args.scale
  ).eval()
  if args.save:
    save_reference(model, args.save, args.sizes[0])
  figures = {}
  for height, width in args.sizes:
    image = torch.rand(1, 3, height, width)

    def call(image=image):
      with torch.no_grad():
        return model(image).clamp(0, 1).numpy()

    figures[f"{height}x{width}"] = time_calls(call, 1, args.seconds, args.warmups)
  report = {
    "figures": figures,
    "params": sum(p.numel() for p in model.parameters()),
    "torch": torch.__version__,
    "load_average_1min": [load_before, os.getloadavg()[0]],
  }
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
