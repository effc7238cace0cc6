"""StyleGAN2-ADA fused ops for TensorFlow (NHWC): `fused_bias_act`, `upfirdn2d`.

Each op has a reference path in plain TensorFlow (any-order gradients, works
under `jit_compile=True`) and a custom C++/CUDA path (`FusedBiasAct`,
`UpFirDn2D`, built by `python -m tfpets.ops.build`). The custom library is
loaded here, at import, because it must be loaded before the first XLA
compilation in the process; see `_impl` for how `impl='auto'` chooses.
"""

from __future__ import annotations

from tfpets.ops import _impl
from tfpets.ops._impl import in_xla_context, library_loaded, library_path, load_library, set_xla
from tfpets.ops.bias_act import ACTIVATIONS, fused_bias_act
from tfpets.ops.conv2d_resample import conv2d_resample
from tfpets.ops.upfirdn2d import downsample2d, filter2d, setup_filter, upfirdn2d, upsample2d

_impl.load_library()

__all__ = [
  "ACTIVATIONS",
  "conv2d_resample",
  "downsample2d",
  "filter2d",
  "fused_bias_act",
  "in_xla_context",
  "library_loaded",
  "library_path",
  "load_library",
  "set_xla",
  "setup_filter",
  "upfirdn2d",
  "upsample2d",
]
