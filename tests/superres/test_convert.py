"""Official DBPN state dicts (both torch.save formats, written without torch) -> Keras models that
match the independent NumPy forward pass; inference of the variant and scale; refusals."""

from __future__ import annotations

import collections
import functools
import logging

import numpy as np
import pytest
import tensorflow as tf

from tests import torch_files as tw
from tests.superres import numpy_dbpn
from tfpets.errors import ArgumentError
from tfpets.importers import torch_file
from tfpets.importers.safe_unpickle import PickleFormatError, UnsafePickleError
from tfpets.superres import convert

WRITERS = {"zip": tw.write_state_dict_zip, "legacy": tw.write_state_dict_legacy}
TOLERANCE = 1e-4


def _images(size, seed=1, batch=2):
  return np.random.default_rng(seed).uniform(0, 1, (batch, *size, 3)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _case(variant, scale, size):
  """(state dict, LR images, NumPy output without residual)."""
  state = numpy_dbpn.random_state_dict(variant, scale, seed=scale)
  images = _images(size)
  want = numpy_dbpn.forward(state, variant, scale, images)
  assert 0.1 < np.abs(want).max() < 10  # Activations neither vanish nor blow up.
  return state, images, want


def _write(tmp_path, state, fmt, prefix="", name="net"):
  path = tmp_path / f"{name}_{fmt}.pth"
  WRITERS[fmt](path, {prefix + k: v for k, v in state.items()})
  return path


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_read_state_dict_reads_both_formats_and_strips_module(tmp_path, fmt):
  state = numpy_dbpn.random_state_dict("dbpns", 2)
  path = _write(tmp_path, state, fmt, prefix="module.")
  got = convert.read_state_dict(path)
  assert list(got) == list(state)
  raw = torch_file.load_torch_file(path.read_bytes())  # The file's own object, from bytes.
  assert list(raw) == [f"module.{key}" for key in state]
  for key, value in state.items():
    assert got[key].dtype == np.float32
    np.testing.assert_array_equal(got[key], value)
    np.testing.assert_array_equal(raw[f"module.{key}"], value)


def test_state_dict_nested_in_a_training_checkpoint_is_read(tmp_path):
  state = numpy_dbpn.random_state_dict("dbpns", 2)
  path = tmp_path / "checkpoint.pth"
  checkpoint = {"epoch": 3, "state_dict": tw.state_dict_object(state)}
  path.write_bytes(tw.legacy_save_bytes(checkpoint))
  got = convert.read_state_dict(path)
  assert list(got) == list(state)
  np.testing.assert_array_equal(
    got["up2.up_conv3.deconv.weight"], state["up2.up_conv3.deconv.weight"]
  )


@pytest.mark.parametrize(
  "variant,scale,size",
  [
    ("dbpn", 4, (7, 10)),  # LR size not a multiple of the scale
    ("dbpns", 2, (5, 7)),
    ("dbpns", 8, (3, 5)),
    ("dbpnll", 2, (5, 6)),
  ],
)
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_converted_model_matches_numpy_forward(tmp_path, variant, scale, size, fmt):
  state, images, want = _case(variant, scale, size)
  path = _write(tmp_path, state, fmt, prefix="module." if fmt == "zip" else "")
  model = convert.convert_state_dict(convert.read_state_dict(path))
  got = model(images).numpy()
  assert got.shape == (2, size[0] * scale, size[1] * scale, 3)
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_recurrent_residual_variant_matches_numpy_forward_plus_bicubic(tmp_path, fmt):
  state, images, want = _case("dbpn_res_mr64_3", 2, (5, 7))
  state_dict = convert.read_state_dict(_write(tmp_path, state, fmt, prefix="module."))
  body = convert.convert_state_dict(state_dict, residual=False)
  np.testing.assert_allclose(body(images).numpy(), want, rtol=0, atol=TOLERANCE)
  residual = convert.convert_state_dict(state_dict)  # The variant's official setting.
  bicubic = tf.image.resize(images, (10, 14), "bicubic").numpy()
  np.testing.assert_allclose(residual(images).numpy(), want + bicubic, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("variant", sorted(numpy_dbpn.NETWORKS))
def test_variant_and_scale_are_inferred_from_the_tensors(variant, scale):
  shapes = numpy_dbpn.state_dict_shapes(variant, scale)
  state = {f"module.{k}": np.zeros(shape, np.float32) for k, shape in shapes.items()}
  assert convert.infer_architecture(state) == (variant, scale)


def _one_line(error):
  message = str(error)
  assert "\n" not in message
  return message


def test_dbpn_checkpoint_forced_to_dbpnll_names_missing_units_and_width(tmp_path):
  """alterzero/DBPN-Pytorch issue #38: DBPN_x4.pth loaded with eval.py's default DBPNLL."""
  shapes = numpy_dbpn.state_dict_shapes("dbpn", 4)
  path = tmp_path / "DBPN_x4.pth"
  tw.write_state_dict_legacy(
    path, {f"module.{k}": np.zeros(s, np.float32) for k, s in shapes.items()}
  )
  with pytest.raises(ArgumentError) as error:
    convert.convert_checkpoint(path, tmp_path / "out", variant="dbpnll")
  message = _one_line(error.value)
  assert error.value.argument == "variant" and error.value.value == "dbpnll"
  assert "DBPN_x4.pth does not fit dbpnll x4" in message
  assert "missing 72 keys (down7.conv.conv.weight, down7.conv.conv.bias" in message
  assert "+67 more" in message
  assert "output_conv.conv.weight is [3, 448, 3, 3] in the checkpoint, [3, 640, 3, 3]" in message
  assert "it fits dbpn x4" in message
  assert not (tmp_path / "out").exists()


def test_unknown_layout_is_measured_against_the_closest_variant():
  state = {k: np.zeros(s, np.float32) for k, s in numpy_dbpn.state_dict_shapes("dbpn", 2).items()}
  del state["up5.up_conv2.conv.bias"]
  state["up5.extra.weight"] = np.zeros(3, np.float32)
  state["down3.conv.conv.weight"] = np.zeros((64, 128, 1, 1), np.float32)
  with pytest.raises(ArgumentError) as error:
    convert.infer_architecture(state, source="odd.pth")
  message = _one_line(error.value)
  assert error.value.argument == "checkpoint" and error.value.value == "odd.pth"
  assert "closest is dbpn x2" in message
  assert "missing 1 key (up5.up_conv2.conv.bias)" in message
  assert "unexpected 1 key (up5.extra.weight)" in message
  assert "down3.conv.conv.weight is [64, 128, 1, 1] in the checkpoint, [64, 192, 1, 1]" in message


def test_given_scale_must_match_the_projection_kernels():
  state = {k: np.zeros(s, np.float32) for k, s in numpy_dbpn.state_dict_shapes("dbpns", 2).items()}
  with pytest.raises(ArgumentError, match=r"holds x2 projections \(kernel 6\), not x4") as error:
    convert.convert_state_dict(state, scale=4)
  assert error.value.argument == "scale"
  model = convert.convert_state_dict(state, variant="dbpns", scale=2)
  assert model.name == "dbpns_x2"


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_truncated_file_is_one_line_naming_it(tmp_path, fmt):
  state = numpy_dbpn.random_state_dict("dbpns", 2)
  whole = _write(tmp_path, state, fmt, name="whole").read_bytes()
  for cut in (len(whole) // 2, len(whole) - 7, 40):
    path = tmp_path / f"cut{cut}.pth"
    path.write_bytes(whole[:cut])
    with pytest.raises(PickleFormatError) as error:
      convert.read_state_dict(path)
    assert not isinstance(error.value, UnsafePickleError)
    assert _one_line(error.value).startswith(f"{path}: ")


def test_garbage_and_missing_files_are_refused(tmp_path):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"definitely not a checkpoint")
  with pytest.raises(PickleFormatError, match=r"garbage.pth: not a torch.save file"):
    convert.read_state_dict(garbage)
  with pytest.raises(ArgumentError, match="no such file") as error:
    convert.read_state_dict(tmp_path / "absent.pth")
  assert error.value.argument == "checkpoint"


@pytest.mark.parametrize(
  "content,problem",
  [
    ([np.zeros(3, np.float32)], "holds list, not a state dict"),
    ({}, "holds an empty state dict"),
    ({"feat0.conv.weight": np.zeros(3, np.int64)}, "'feat0.conv.weight' has dtype int64"),
    ({"epoch": 3}, "entry 'epoch' holds int, not a tensor"),
  ],
)
def test_anything_but_float_tensors_by_name_is_refused(tmp_path, content, problem):
  def tensors(value):
    if isinstance(value, np.ndarray):
      return tw.Tensor(value)
    if isinstance(value, dict):
      return collections.OrderedDict((k, tensors(v)) for k, v in value.items())
    if isinstance(value, list):
      return [tensors(v) for v in value]
    return value

  path = tmp_path / "odd.pth"
  tw.write_torch_zip(path, tensors(content))
  with pytest.raises(ArgumentError) as error:
    convert.read_state_dict(path)
  assert error.value.argument == "checkpoint" and error.value.value == str(path)
  assert problem in _one_line(error.value)


@pytest.mark.parametrize(
  "module,name,code",
  [
    ("posix", "system", "touch {marker}"),
    ("os", "system", "touch {marker}"),
    ("builtins", "exec", "open({marker!r}, 'w').close()"),
  ],
)
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_pickle_that_runs_code_is_refused_without_running_it(tmp_path, fmt, module, name, code):
  marker = tmp_path / "ran"
  state = tw.state_dict_object({"feat0.conv.bias": np.zeros(4, np.float32)})
  state["feat0.conv.weight"] = tw.Call(module, name, code.format(marker=str(marker)))
  path = tmp_path / "evil.pth"
  if fmt == "zip":
    tw.write_torch_zip(path, state)
  else:
    path.write_bytes(tw.legacy_save_bytes(state))
  with pytest.raises(UnsafePickleError) as error:
    convert.read_state_dict(path)
  assert _one_line(error.value).startswith(f"{path}: refusing to load global '{module}.{name}'")
  assert "nothing from the file was executed" in str(error.value)
  assert not marker.exists()


def test_convert_checkpoint_writes_models_that_reload_to_the_same_outputs(tmp_path, caplog):
  state, images, want = _case("dbpns", 2, (5, 7))
  path = _write(tmp_path, state, "legacy", prefix="module.", name="DBPNS_x2")
  caplog.set_level(logging.INFO)
  converted = convert.convert_checkpoint(path, tmp_path / "out", name="sr")
  assert (converted.variant, converted.scale, converted.residual) == ("dbpns", 2, False)
  parameters = sum(int(np.prod(s)) for s in numpy_dbpn.state_dict_shapes("dbpns", 2).values())
  assert converted.parameters == parameters == converted.model.count_params()
  assert converted.keras_path == tmp_path / "out" / "sr.keras"
  assert converted.weights_path == tmp_path / "out" / "sr.weights.h5"
  assert converted.notes == ["stripped the DataParallel prefix 'module.' from 35 keys"]
  count = f"{parameters:,}".replace(",", " ")
  assert f"DBPNS_x2_legacy: DBPN-S (T = 2), x2, not residual, {count} parameters" in caplog.text
  got = converted.model(images).numpy()
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
  reloaded = convert.load_dbpn(converted.keras_path)
  np.testing.assert_array_equal(reloaded(images).numpy(), got)
  from_weights = convert.load_dbpn(converted.weights_path, variant="dbpns", scale=2)
  np.testing.assert_array_equal(from_weights(images).numpy(), got)


def test_residual_model_reloads_from_keras_file(tmp_path):
  state, images, _ = _case("dbpn_res_mr64_3", 2, (5, 7))
  path = _write(tmp_path, state, "zip", name="res")
  converted = convert.convert_checkpoint(path, tmp_path / "out")
  assert converted.residual and converted.variant == "dbpn_res_mr64_3"
  reloaded = convert.load_dbpn(converted.keras_path)
  np.testing.assert_array_equal(reloaded(images).numpy(), converted.model(images).numpy())


def test_load_dbpn_refuses_what_it_cannot_rebuild(tmp_path):
  weights = tmp_path / "sr.weights.h5"
  weights.write_bytes(b"")
  with pytest.raises(ArgumentError, match="needs its variant and scale"):
    convert.load_dbpn(weights)
  other = tmp_path / "sr.h5"
  other.write_bytes(b"")
  with pytest.raises(ArgumentError, match=r"expected a \.keras or a \.weights\.h5 file"):
    convert.load_dbpn(other)
  with pytest.raises(ArgumentError, match="no such file"):
    convert.load_dbpn(tmp_path / "absent.keras")
