"""TF Serving warmup requests: `<version>/assets.extra/tf_serving_warmup_requests`.

TF Serving replays these requests when it loads a version, before serving it, so that the first
client does not pay for graph optimisation and memory allocation (TF Serving documentation,
"SavedModel Warmup"). The file is a TFRecord file of `PredictionLog` protos, each holding one
`PredictRequest` of the `tensorflow_serving.apis` package.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Dict, List, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


@dataclasses.dataclass
class WarmupRequest:
  """One Predict call: a signature and its inputs by name."""

  signature_name: str
  inputs: Dict[str, np.ndarray]


def predict_request(model_name: str, request: WarmupRequest) -> predict_pb2.PredictRequest:
  """The Predict API request of `request` for model `model_name`."""
  proto = predict_pb2.PredictRequest()
  proto.model_spec.name = model_name
  proto.model_spec.signature_name = request.signature_name
  for name, value in request.inputs.items():
    proto.inputs[name].CopyFrom(tf.make_tensor_proto(value))
  return proto


def warmup_path(version_dir: str | os.PathLike) -> pathlib.Path:
  return pathlib.Path(version_dir) / WARMUP_DIR / WARMUP_FILE


def write_warmup(
  version_dir: str | os.PathLike, model_name: str, requests: Sequence[WarmupRequest]
) -> pathlib.Path:
  """Writes `requests` as the warmup file of a version folder; returns its path."""
  path = warmup_path(version_dir)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for request in requests:
      log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=predict_request(model_name, request))
      )
      writer.write(log.SerializeToString())
  return path


def read_warmup(path: str | os.PathLike) -> List[predict_pb2.PredictRequest]:
  """The PredictRequests of a warmup file, in order."""
  requests = []
  for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
    requests.append(prediction_log_pb2.PredictionLog.FromString(record).predict_log.request)
  return requests


def request_inputs(request: predict_pb2.PredictRequest) -> Dict[str, np.ndarray]:
  """The inputs of a PredictRequest as numpy arrays (strings as object arrays of bytes)."""
  return {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}


def as_tensors(inputs: Mapping[str, np.ndarray]) -> Dict[str, tf.Tensor]:
  return {name: tf.constant(value) for name, value in inputs.items()}
