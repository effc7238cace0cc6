"""The TF Serving warmup file: PredictionLog records that parse back into the requests written."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from tfpets.export import warmup


def test_the_warmup_file_holds_the_requests_written(tmp_path):
  requests = [
    warmup.WarmupRequest(
      "serving_default", {"image_bytes": np.array([b"\xff\xd8\xff\x00jpeg", b"\x89PNG"], object)}
    ),
    warmup.WarmupRequest(
      "from_latents",
      {
        "z": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "truncation_psi": np.array([0.5, 1.0], np.float32),
        "class_index": np.array([2, 0], np.int64),
      },
    ),
  ]
  path = warmup.write_warmup(tmp_path / "1", "pets", requests)
  assert path == tmp_path / "1" / "assets.extra" / "tf_serving_warmup_requests"

  # Read back independently of tfpets.export: a TFRecord file of PredictionLog protos.
  records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
  assert len(records) == 2
  for record, written in zip(records, requests):
    request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
    assert request.model_spec.name == "pets"
    assert request.model_spec.signature_name == written.signature_name
    assert sorted(request.inputs) == sorted(written.inputs)
    for name, value in written.inputs.items():
      read = tf.make_ndarray(request.inputs[name])
      assert read.dtype == value.dtype and read.shape == value.shape
      assert (read == value).all()
  first = prediction_log_pb2.PredictionLog.FromString(records[0]).predict_log.request
  assert first.inputs["image_bytes"].dtype == tf.string.as_datatype_enum

  parsed = warmup.read_warmup(path)
  assert [r.model_spec.signature_name for r in parsed] == ["serving_default", "from_latents"]
  np.testing.assert_array_equal(warmup.request_inputs(parsed[1])["z"], requests[1].inputs["z"])
