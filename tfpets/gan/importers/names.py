"""The variables of tfpets' networks under the official PyTorch state-dict names.

The TF1 side follows the official stylegan2-ada-pytorch legacy.py, convert_tf_generator() and
convert_tf_discriminator().

Both importers go through these names: the PyTorch importer reads the same names from a pickle,
the TF importer translates each name into its TF1 variable (see `tf_pickle`). Layout conversions
into tfpets' storage (Keras layout, NHWC flatten, TF1 orientation of up-sampling kernels) live
here too, so that both directions are written once.
"""

from __future__ import annotations

import re
from typing import Any

import keras
import numpy as np

from tfpets.gan import layers, networks


def _weight_and_bias(
  out: dict[str, Any], prefix: str, layer: layers.EqualizedDense | layers.EqualizedConv2D | None
) -> None:
  if layer is None:
    return
  out[f"{prefix}.weight"] = layer.weight
  if layer.bias is not None:
    out[f"{prefix}.bias"] = layer.bias


def _mapping(out: dict[str, Any], prefix: str, mapping: networks.MappingNetwork | None) -> None:
  if mapping is None:
    return
  if mapping.w_avg is not None:
    out[f"{prefix}.w_avg"] = mapping.w_avg
  _weight_and_bias(out, f"{prefix}.embed", mapping.embed)
  for idx in range(mapping.num_layers):
    _weight_and_bias(out, f"{prefix}.fc{idx}", getattr(mapping, f"fc{idx}"))


def _synthesis_layer(out: dict[str, Any], prefix: str, layer: layers.SynthesisLayer) -> None:
  out[f"{prefix}.weight"] = layer.conv.weight
  _weight_and_bias(out, f"{prefix}.affine", layer.conv.affine)
  out[f"{prefix}.bias"] = layer.bias
  if layer.noise is not None:
    out[f"{prefix}.noise_const"] = layer.noise.noise_const
    out[f"{prefix}.noise_strength"] = layer.noise.noise_strength


def generator_variables(generator: networks.Generator) -> dict[str, keras.Variable]:
  """{official PyTorch name: variable} covering every variable of `generator`."""
  out: dict[str, Any] = {}
  _mapping(out, "mapping", generator.mapping)
  for block in generator.synthesis.blocks:
    prefix = f"synthesis.b{block.resolution}"
    if block.const is not None:
      out[f"{prefix}.const"] = block.const
    for name in ("conv0", "conv1"):
      layer = getattr(block, name)
      if layer is not None:
        _synthesis_layer(out, f"{prefix}.{name}", layer)
    if block.torgb is not None:
      out[f"{prefix}.torgb.weight"] = block.torgb.conv.weight
      _weight_and_bias(out, f"{prefix}.torgb.affine", block.torgb.conv.affine)
      out[f"{prefix}.torgb.bias"] = block.torgb.bias
    _weight_and_bias(out, f"{prefix}.skip", block.skip)
  return out


def discriminator_variables(discriminator: networks.Discriminator) -> dict[str, keras.Variable]:
  """{official PyTorch name: variable} covering every variable of `discriminator`."""
  out: dict[str, Any] = {}
  for block in discriminator.blocks:
    prefix = f"b{block.resolution}"
    for name in ("fromrgb", "conv0", "conv1", "skip"):
      _weight_and_bias(out, f"{prefix}.{name}", getattr(block, name))
  _mapping(out, "mapping", discriminator.mapping)
  epilogue = discriminator.b4
  _weight_and_bias(out, "b4.fromrgb", epilogue.fromrgb)
  _weight_and_bias(out, "b4.conv", epilogue.conv)
  _weight_and_bias(out, "b4.fc", epilogue.fc)
  _weight_and_bias(out, "b4.out", epilogue.out)
  return out


def nchw_to_nhwc_dense(weight: np.ndarray, channels: int, resolution: int) -> np.ndarray:
  """[C*H*W, out] rows in NCHW flatten order (both official codes) -> rows in NHWC flatten order."""
  out = weight.shape[1]
  weight = weight.reshape(channels, resolution, resolution, out).transpose(1, 2, 0, 3)
  return weight.reshape(channels * resolution * resolution, out)


_FLIPPED_UP_KERNEL = re.compile(r"synthesis\.b\d+\.(conv0|skip)\.weight")


def from_torch_layout(
  name: str, value: np.ndarray, is_generator: bool, epilogue_channels: int = 0
) -> np.ndarray:
  """A PyTorch-layout value of official variable `name` in tfpets' storage layout.

  Dense [out, in] -> [in, out]; conv [out, in, k, k] -> [k, k, in, out], spatially flipped for the
  generator's up-sampling kernels (PyTorch uses the transposed-conv orientation, tfpets TF1's);
  const [C, H, W] -> [H, W, C]; the discriminator's b4.fc rows reordered from NCHW to NHWC.
  """
  if name.endswith("const") and value.ndim == 3:
    return value.transpose(1, 2, 0)
  if name.endswith(".weight") and value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
    if is_generator and _FLIPPED_UP_KERNEL.fullmatch(name):
      value = value[::-1, ::-1]
    return value
  if name.endswith(".weight") and value.ndim == 2:
    value = value.T
    if not is_generator and name == "b4.fc.weight":
      value = nchw_to_nhwc_dense(value, epilogue_channels, 4)
    return value
  return value
