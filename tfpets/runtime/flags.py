"""Flags shared by every stage, and the deprecated spellings of renamed flags.

The rule (CONTRIBUTING.md): every stage's flags share absl's one namespace, so a flag that more than
one stage reads is defined here once, and a stage's own flag carries the stage's prefix (`lm_`,
`crop_`, `data_`, `gan_`, ...). A renamed flag keeps its old spelling as a deprecated alias.
"""

from __future__ import annotations

from typing import Mapping

from absl import flags, logging

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
  "image_size",
  128,
  "Square image size models see, in pixels (classifiers: their standard size unless given).",
  lower_bound=4,
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
# Read by --stage=predict_landmarks, --stage=crop and --stage=export.
DETECTOR = flags.DEFINE_string(
  "detector",
  "runs/landmarks",
  "A trained landmark detector: the workdir of --stage=landmarks or its models/ folder "
  "(detector.json, bbox.keras, landmarks.keras).",
)
# Read by --stage=crop, and by --stage=landmarks to check that its crops would hold the head.
CROP_MARGIN = flags.DEFINE_float(
  "crop_margin",
  0.2,
  "Head crops: margin on each side, as a fraction of the longer side of the head (the union of "
  "the landmarks' box and the head box).",
  lower_bound=0.0,
)

# Read by --stage=metrics, --stage=generate and --stage=export: the generator to use.
NETWORK = flags.DEFINE_string(
  "network",
  "",
  "StyleGAN2-ADA networks: a tfpets run folder (its newest snapshot), a snapshot folder "
  "(config.json + <net>.weights.h5) or an official network pickle, TF1 or PyTorch, read without "
  "running code embedded in it. G_ema is used if present, else G.",
)

# Read by --stage=metrics, and by --stage=gan for the metrics of its snapshots (both flags).
INCEPTION_GRAPH = flags.DEFINE_string(
  "inception_graph",
  "",
  "classify_image_graph_def.pb from TensorFlow's inception-2015-12-05.tgz, for standard FID/KID "
  "(docs/metrics.md; never downloaded). Empty: a seeded random CNN, whose figures are named "
  "*_seeded and are not FID.",
)

METRICS_CACHE = flags.DEFINE_string(
  "metrics_cache",
  "",
  "Folder of cached real-image features. Default: $XDG_CACHE_HOME/tfpets/metrics "
  "(~/.cache/tfpets/metrics).",
)


# Read by --stage=classify: the classifier to train and where its weights come from.
MODEL = flags.DEFINE_enum(
  "model",
  "efficientnet",
  ["wsdan", "vit", "efficientnet", "xception"],
  "Classifier: wsdan (WS-DAN, --cls_wsdan_variant), vit (keras-hub ViT, --preset), efficientnet "
  "(B0-B7, --cls_efficientnet) or xception (GrabAI's baseline).",
)
PRESET = flags.DEFINE_string(
  "preset",
  "",
  "--model=vit: a local keras-hub preset folder (config.json, model.weights.h5, ...; never "
  "downloaded). Empty: random initialisation (--cls_vit_size).",
)
BACKBONE_WEIGHTS = flags.DEFINE_string(
  "backbone_weights",
  "",
  "Classifier backbone weights: a local keras.applications weights file, 'imagenet' for the file "
  "Keras keeps in $KERAS_HOME/models (never downloaded), or empty for random initialisation.",
)
# Read by --stage=evaluate, --stage=predict and --stage=export: a trained classifier.
CLASSIFIER = flags.DEFINE_string(
  "classifier",
  "runs/classify",
  "A trained classifier: the workdir of --stage=classify or its models/ folder "
  "(classifier.json, classifier.weights.h5).",
)


# Read by --stage=superres, --stage=superres_eval and --stage=export; --stage=superres_train starts
# from it.
SR_MODEL = flags.DEFINE_string(
  "sr_model",
  "",
  "A DBPN super-resolution network: a .keras file written by --stage=convert_dbpn or "
  "--stage=superres_train, or the workdir of either (models/dbpn.keras). --stage=superres_train "
  "fine-tunes it; empty there: Kaiming initialisation.",
)
# Read by --stage=superres and --stage=superres_eval: which images are upscaled, and how.
SR_MAX_AREA = flags.DEFINE_integer(
  "sr_max_area",
  128 * 256,
  "Upscale only images whose width x height is below this many pixels (GrabAI's rule for "
  "Stanford Cars); larger ones are kept as they are.",
  lower_bound=1,
)
SR_SELF_ENSEMBLE = flags.DEFINE_boolean(
  "sr_self_ensemble",
  False,
  "Average the network over the 8 flips and transposes of each image (8x the time; the "
  "official eval.py's self-ensemble).",
)
SR_TILE = flags.DEFINE_integer(
  "sr_tile",
  0,
  "Largest tile side, in input pixels, for tiled inference. 0: whole images when they fit "
  "--sr_memory_mb, else the largest tiles that do.",
  lower_bound=0,
)
SR_TILE_OVERLAP = flags.DEFINE_integer(
  "sr_tile_overlap",
  16,
  "Input pixels of context around each tile, discarded when the tiles are stitched.",
  lower_bound=0,
)
SR_MEMORY_MB = flags.DEFINE_integer(
  "sr_memory_mb",
  2048,
  "Activation memory one network call may use, in MiB: sets tile sizes and batches.",
  lower_bound=1,
)

# Library arguments of the shared super-resolution flags, for the stages' ARGUMENT_FLAGS.
UPSCALER_ARGUMENT_FLAGS = {
  "model": "sr_model",
  "max_area": "sr_max_area",
  "tile": "sr_tile",
  "overlap": "sr_tile_overlap",
  "memory_mb": "sr_memory_mb",
}


def upscaler_options(flag_values: flags.FlagValues = flags.FLAGS) -> dict:
  """`tfpets.superres.upscale.Upscaler` keyword arguments from the shared --sr_* flags."""
  return dict(
    tile=flag_values.sr_tile,
    overlap=flag_values.sr_tile_overlap,
    memory_mb=flag_values.sr_memory_mb,
    self_ensemble=flag_values.sr_self_ensemble,
  )


_DEPRECATED_ALIASES: dict[str, str] = {}


def define_deprecated_alias(old: str, new: str, module_name: str) -> None:
  """Keeps `--old` working as a spelling of `--new` (listed under `module_name` in --helpfull)."""
  flags.DEFINE_alias(old, new, module_name=module_name)
  flags.FLAGS[old].help = f"Deprecated spelling of --{new}."
  _DEPRECATED_ALIASES[old] = new


def define_deprecated_aliases(old_to_new: Mapping[str, str], module_name: str) -> None:
  for old, new in old_to_new.items():
    define_deprecated_alias(old, new, module_name)


def deprecated_aliases() -> Mapping[str, str]:
  """{old spelling: new name} of every deprecated alias defined so far."""
  return dict(_DEPRECATED_ALIASES)


def warn_deprecated_spellings(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Logs one warning per deprecated spelling the command line or flagfile used; returns them."""
  used = [old for old in _DEPRECATED_ALIASES if old in flag_values and flag_values[old].present]
  for old in used:
    logging.warning("--%s is deprecated; use --%s", old, _DEPRECATED_ALIASES[old])
  return used
