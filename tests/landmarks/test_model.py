"""The coordinate layers against numpy, and the stage models' inputs, outputs and round trip."""

from __future__ import annotations

import numpy as np
import pytest

from tfpets.landmarks import model as model_lib


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _reference_soft_argmax(logits, frame):
  """numpy: expected cell centre under the softmax of each channel."""
  grid = logits.shape[0]
  stride = frame / grid
  centres = (np.arange(grid) + 0.5) * stride - 0.5
  out = []
  for c in range(logits.shape[-1]):
    p = _softmax(logits[..., c].reshape(-1)).reshape(grid, grid)
    out.append([(p.sum(0) * centres).sum(), (p.sum(1) * centres).sum()])
  return np.array(out)


def test_soft_argmax_against_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (2, 8, 8, 3)).astype(np.float32)
  logits[0, 5, 2, 0] = 60.0  # one dominant cell: its centre exactly
  logits[0, :, :, 1] = -60.0
  logits[0, 1, 1, 1] = logits[0, 1, 6, 1] = 60.0  # two equal peaks: their midpoint
  out = np.asarray(model_lib.SoftArgmax(64)(logits))
  assert out.shape == (2, 3, 2)
  np.testing.assert_allclose(out[0, 0], [2 * 8 + 3.5, 5 * 8 + 3.5], atol=1e-4)
  np.testing.assert_allclose(out[0, 1], [(1 + 6) / 2 * 8 + 3.5, 1 * 8 + 3.5], atol=1e-4)
  for b in range(2):
    np.testing.assert_allclose(out[b], _reference_soft_argmax(logits[b], 64), atol=1e-3)


def test_centre_size_box_against_numpy():
  rng = np.random.default_rng(1)
  maps = rng.normal(0, 1, (3, 4, 4, 3)).astype(np.float32)
  out = np.asarray(model_lib.CentreSizeBox(32)(maps))
  for b in range(3):
    p = _softmax(maps[b, ..., 0].reshape(-1))
    centre = _reference_soft_argmax(maps[b, ..., :1], 32)[0]
    size = 8 * (p[:, None] * np.exp(maps[b, ..., 1:].reshape(-1, 2))).sum(0)
    np.testing.assert_allclose(
      out[b], np.concatenate([centre - size / 2, centre + size / 2]), rtol=1e-4
    )


@pytest.mark.parametrize("head,stride", [("heatmap", 8), ("heatmap", 4), ("dense", 8)])
def test_stage_models_outputs_and_save_round_trip(head, stride, tmp_path):
  config = model_lib.DetectorConfig(
    image_size=32, roi_size=48, num_landmarks=5, head=head, units=16, heatmap_stride=stride
  )
  rng = np.random.default_rng(2)
  for stage, size in (("bbox", 32), ("landmarks", 48)):
    model = model_lib.build_model(stage, config)
    frames = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    out = {k: np.asarray(v) for k, v in model(frames).items()}
    expected = (
      {"box": (2, 4), "head": (2, 1)}
      if stage == "bbox"
      else {"box": (2, 4), "landmarks": (2, 5, 2)}
    )
    if head == "heatmap":  # the maps training supervises, at the stride; stage 1 landmarks too
      grid = size // stride
      expected.update(
        centre_map=(2, grid, grid, 1), landmark_maps=(2, grid, grid, 5), landmarks=(2, 5, 2)
      )
    assert {k: v.shape for k, v in out.items()} == expected
    path = tmp_path / f"{head}_{stride}_{stage}.keras"
    model.save(path)
    again = {k: np.asarray(v) for k, v in model_lib.load_model(path)(frames).items()}
    for k in out:
      np.testing.assert_allclose(again[k], out[k], atol=1e-5)


def test_config_round_trip_and_refusals(tmp_path):
  config = model_lib.DetectorConfig(
    image_size=96, roi_size=64, num_landmarks=5, roi_margin=0.2, roi_candidate_scales=[0.7, 1.2]
  )
  assert config.roi_candidate_scales == (0.7, 1.2) and config.num_candidates == 3
  config.save(tmp_path)
  assert model_lib.DetectorConfig.load(tmp_path) == config
  assert model_lib.DetectorConfig(image_size=96, roi_size=0).roi_size == 96
  with pytest.raises(ValueError, match=r"^num_landmarks=7: must be 9 \(Kaggle CAT\) or 5$"):
    model_lib.DetectorConfig(num_landmarks=7)
  with pytest.raises(ValueError, match="^heatmap_stride=2: must be one of 4, 8$"):
    model_lib.DetectorConfig(heatmap_stride=2)
  with pytest.raises(ValueError, match="^head='sparse': must be one of heatmap, dense$"):
    model_lib.DetectorConfig(head="sparse")
  with pytest.raises(ValueError, match="^roi_candidate_scales='0.7,0.0': must be positive$"):
    model_lib.DetectorConfig(roi_candidate_scales=(0.7, 0))
  with pytest.raises(ValueError, match="^roi_candidate_scales='0.7,x': must be numbers$"):
    model_lib.DetectorConfig(roi_candidate_scales=["0.7", "x"])
  with pytest.raises(
    ValueError,
    match="^roi_size=72: must be at least 32 pixels, and a multiple of 16 with head 'heatmap'$",
  ):
    model_lib.DetectorConfig(roi_size=72)
  with pytest.raises(ValueError, match="^backbone_weights='.*missing.h5': no such file"):
    model_lib.build_model("bbox", config, backbone_weights=str(tmp_path / "missing.h5"))
