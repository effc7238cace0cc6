"""Flags shared by every stage. Stage-specific flags live in their stage module."""

from __future__ import annotations

from absl import flags

from tfpets.runtime.precision import PRECISIONS
from tfpets.runtime.strategy import STRATEGIES

DATA = flags.DEFINE_string(
  "data",
  "synthetic",
  "Dataset spec for conversion: synthetic | folder:DIR | csv:FILE | oxford_pets:DIR | "
  "stanford_cars:DIR | cat:DIR | tfds:oxford_iiit_pet | tfds:cars196.",
)
RECORDS = flags.DEFINE_string(
  "records",
  "tfrecords/synthetic",
  "A converted dataset folder (the workdir of --stage=data) that training stages read.",
)
WORKDIR = flags.DEFINE_string(
  "workdir",
  "",
  "Folder for every output of the run (flags.txt, logs/, checkpoints/, records/, reports/, "
  "images/). Default: tfrecords/<dataset> for --stage=data, runs/<stage> otherwise.",
)
SEED = flags.DEFINE_integer("seed", 0, "Random seed for data order, subsets, splits and weights.")
STRATEGY = flags.DEFINE_enum(
  "strategy",
  "auto",
  STRATEGIES,
  "Distribution: auto (TPU if --tpu, all GPUs, else CPU), cpu (one device), mirrored "
  "(all GPUs, or --num_cpu_replicas logical CPUs), multiworker (TF_CONFIG), tpu.",
)
TPU = flags.DEFINE_string("tpu", "", "TPU name or grpc:// address ('local' for a TPU VM).")
NUM_CPU_REPLICAS = flags.DEFINE_integer(
  "num_cpu_replicas",
  2,
  "Logical CPU devices for --strategy=mirrored on a host without GPUs.",
  lower_bound=1,
)
INTRA_OP_THREADS = flags.DEFINE_integer(
  "intra_op_threads",
  0,
  "Threads one TensorFlow op may use (0: one per core). 1 suits small "
  "models on a CPU, whose ops are too short to split.",
  lower_bound=0,
)
INTER_OP_THREADS = flags.DEFINE_integer(
  "inter_op_threads",
  0,
  "Threads that run independent TensorFlow ops at once (0: one per core).",
  lower_bound=0,
)
PRECISION = flags.DEFINE_enum("precision", "float32", PRECISIONS, "Keras dtype policy.")
BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", 32, "Global batch size (all replicas).", lower_bound=1
)
IMAGE_SIZE = flags.DEFINE_integer(
  "image_size", 128, "Square image size models see, in pixels.", lower_bound=4
)
SUBSET = flags.DEFINE_string(
  "subset",
  "1.0",
  "Stratified, seeded subset of the training data: a fraction in (0, 1] (0.1, 0.5, 1.0) or a "
  "count per class (20). Subsets of one seed nest: the 10%% subset lies inside the 50%%.",
)
STRICT = flags.DEFINE_boolean(
  "strict",
  False,
  "Fail (non-zero exit) when any input file is skipped, not only when nothing usable remains.",
)
TFDS_MANUAL_DIR = flags.DEFINE_string(
  "tfds_manual_dir",
  "",
  "Folder with the original archives for tfds:* datasets (prepared offline, no download).",
)
TFDS_DATA_DIR = flags.DEFINE_string(
  "tfds_data_dir", "", "tensorflow-datasets data_dir (default: ~/tensorflow_datasets)."
)
