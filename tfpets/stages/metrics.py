"""FID/KID of a network snapshot against the StyleGAN records of --records (docs/metrics.md).

Reads a snapshot written by `tfpets.gan.networks.save_networks` (G_ema if present, else G), writes
reports/metrics.json and appends one line per metric to reports/metric-<name>.jsonl.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags

from tfpets.data.tfrecord import multires
from tfpets.errors import UsageError
from tfpets.gan import inception, networks
from tfpets.gan import metrics as metrics_lib
from tfpets.runtime import context

NEEDS_STRATEGY = False

NETWORK = flags.DEFINE_string(
  "metrics_network",
  "",
  "Network snapshot folder to evaluate (config.json + <net>.weights.h5, as --stage=convert and "
  "training write them); G_ema is used if present, else G.",
)
NAMES = flags.DEFINE_list(
  "metrics_names",
  ["fid50k_full"],
  "Metrics: fid<N> / kid<N> with N generated images (500, 2k, 50k) against the first N reals, "
  "or fid<N>_full / kid<N>_full against all reals (kid: at most 1M), e.g. fid50k_full,kid50k_full.",
)


# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {"records": "records"}


def _load_generator(directory: str):
  """(generator, kimg or None) from a snapshot folder."""
  try:
    _, models = networks.load_networks(directory)
  except (ValueError, OSError) as e:
    raise UsageError(f"--metrics_network={directory}: {e}") from e
  generator = models.get("G_ema", models.get("G"))
  if generator is None:
    raise UsageError(f"--metrics_network={directory}: the snapshot holds no G_ema or G")
  payload = json.loads((pathlib.Path(directory) / networks.CONFIG_FILE).read_text())
  return generator, payload.get("kimg")


def run(ctx: context.RunContext) -> None:
  if not NETWORK.value:
    raise UsageError("--metrics_network is required: a network snapshot folder")
  if not NAMES.value:
    raise UsageError("--metrics_names is empty: name at least one metric, e.g. fid50k_full")
  try:
    for name in NAMES.value:
      metrics_lib.parse_metric_name(name)
    network = inception.load_feature_network(ctx.flags.inception_graph or None)
  except inception.FeatureNetworkError as e:
    raise UsageError(f"--inception_graph={e}") from e
  except ValueError as e:
    raise UsageError(f"--metrics_names: {e}") from e
  records = multires.find_directory(ctx.flags.records)
  generator, kimg = _load_generator(NETWORK.value)
  reals = metrics_lib.records_images(records)
  if reals.resolution != generator.config.resolution:
    raise UsageError(
      f"--metrics_network={NETWORK.value} makes {generator.config.resolution} px images but "
      f"--records={ctx.flags.records} holds {reals.resolution} px images"
    )
  results = metrics_lib.compute_metrics(
    NAMES.value,
    generator,
    reals,
    network,
    cache_dir=ctx.flags.metrics_cache or metrics_lib.default_cache_dir(),
    batch_size=ctx.flags.batch_size,
    seed=ctx.seed,
  )
  report = {"network": NETWORK.value, "records": str(records), "kimg": kimg, **results}
  (ctx.workdir.reports / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
  metrics_lib.append_metric_lines(ctx.workdir.reports, results, NETWORK.value, kimg)
  print(json.dumps(report, indent=2))
