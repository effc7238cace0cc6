"""tfpets launcher: `python -m tfpets.launch --stage=NAME [--flagfile=FILE] [flags]`.

Every stage shares the common flags (--data, --records, --workdir, --seed, --strategy, --tpu,
--precision, ...) and adds its own; `--helpfull` documents them all. Outputs of a run go under
--workdir, with the resolved flags saved as <workdir>/flags.txt (usable as --flagfile).
"""

from __future__ import annotations

import os
from typing import MutableMapping

# TensorFlow's CPU allocator hands large tensors to malloc, which maps fresh zero-filled pages for
# each: on CPU that page faulting costs more than the math of element-wise ops (benchmarks/
# bench_ops.py: 5x on fused_bias_act at StyleGAN shapes). TensorFlow's own BFC pool reuses memory.
# It must be chosen before TensorFlow starts; a value the user set wins.
ALLOCATOR_DEFAULTS = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}


def set_allocator_defaults(environ: MutableMapping[str, str]) -> None:
  for key, value in ALLOCATOR_DEFAULTS.items():
    environ.setdefault(key, value)


# Everything else lives in tfpets.cli: worker processes started with 'spawn' re-import this module,
# and must not pay for TensorFlow and every stage when they do.
if __name__ == "__main__":
  set_allocator_defaults(os.environ)
  from tfpets import cli

  cli.run()
