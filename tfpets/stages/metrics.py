"""FID/KID of a generator against the StyleGAN records of --records (docs/metrics.md).

Reads --network (a run, a snapshot or an official pickle; G_ema if present, else G), writes
reports/metrics.json and appends one line per metric to reports/metric-<name>.jsonl.
"""

from __future__ import annotations

import json
import pathlib

from absl import flags

from tfpets.data.tfrecord import multires
from tfpets.errors import UsageError
from tfpets.gan import inception, networks, snapshot
from tfpets.gan import metrics as metrics_lib
from tfpets.runtime import context
from tfpets.runtime import flags as shared_flags

NEEDS_STRATEGY = False

NAMES = flags.DEFINE_list(
  "metrics_names",
  ["fid50k_full"],
  "Metrics: fid<N> / kid<N> with N generated images (500, 2k, 50k) against the first N reals, "
  "or fid<N>_full / kid<N>_full against all reals (kid: at most 1M), e.g. fid50k_full,kid50k_full.",
)


shared_flags.define_deprecated_alias("metrics_network", "network", __name__)

# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {"records": "records"}


def _load_generator(source: str):
  """(generator, kimg or None) of a run, snapshot or pickle."""
  try:
    generator, what = snapshot.read_generator(source)
  except (ValueError, OSError) as e:
    raise UsageError(f"--network={source}: {str(e).partition(': ')[2] or e}") from e
  config_file = pathlib.Path(what) / networks.CONFIG_FILE
  kimg = json.loads(config_file.read_text()).get("kimg") if config_file.is_file() else None
  return generator, kimg


def run(ctx: context.RunContext) -> None:
  network_flag = ctx.flags.network
  if not network_flag:
    raise UsageError("--network is required: a run folder, snapshot folder or network pickle")
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
  generator, kimg = _load_generator(network_flag)
  try:
    reals = metrics_lib.records_images(records, generator.config.resolution)
  except ValueError as e:
    raise UsageError(
      f"--network={network_flag} makes {generator.config.resolution} px images but "
      f"--records={ctx.flags.records} has no level of that size: {e}"
    ) from e
  results = metrics_lib.compute_metrics(
    NAMES.value,
    generator,
    reals,
    network,
    cache_dir=ctx.flags.metrics_cache or metrics_lib.default_cache_dir(),
    batch_size=ctx.flags.batch_size,
    seed=ctx.seed,
  )
  report = {"network": network_flag, "records": str(records), "kimg": kimg, **results}
  (ctx.workdir.reports / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
  metrics_lib.append_metric_lines(ctx.workdir.reports, results, network_flag, kimg)
  print(json.dumps(report, indent=2))
