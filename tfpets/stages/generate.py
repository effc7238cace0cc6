"""Images of a trained generator: per-seed PNGs, truncation sweeps, style mixing (docs/generate.md).

Reads --network (a run, a snapshot or an official pickle; G_ema if present, else G) and writes
images/*.png, images/grid.png and reports/generate.json into --workdir.
"""

from __future__ import annotations

import json

from absl import flags

from tfpets.errors import UsageError
from tfpets.gan import generate, snapshot
from tfpets.runtime import context

NEEDS_STRATEGY = False

MODE = flags.DEFINE_enum(
  "gen_mode",
  "images",
  ["images", "truncation_sweep", "style_mixing"],
  "images: one image per --gen_seeds (official generate.py); truncation_sweep: a row per seed, a "
  "column per --gen_psis value; style_mixing: the official style_mixing.py matrix of "
  "--gen_row_seeds x --gen_col_seeds.",
)
SEEDS = flags.DEFINE_string(
  "gen_seeds",
  "0-7",
  "Seeds for --gen_mode=images and truncation_sweep (official --seeds): numbers and ranges, "
  "e.g. 50-70,1,5,9.",
)
TRUNC = flags.DEFINE_float(
  "gen_trunc",
  None,
  "Truncation psi on every layer (official --trunc). Default: the convention's, 1 for "
  "--gen_convention=pytorch, 0.5 for tf1.",
)
CLASS = flags.DEFINE_string(
  "gen_class",
  "",
  "Class of a conditional network (official --class): an index, or a class name of the dataset "
  "in --records. Required for a conditional network, refused for an unconditional one.",
)
NOISE_MODE = flags.DEFINE_enum(
  "gen_noise_mode",
  "const",
  list(generate.NOISE_MODES),
  "Noise inputs (official PyTorch --noise-mode): const (the stored buffers; with "
  "--gen_convention=tf1 the ones drawn from each seed), random (fresh noise), none.",
)
CONVENTION = flags.DEFINE_enum(
  "gen_convention",
  "pytorch",
  list(generate.CONVENTIONS),
  "How a seed becomes latents and noise: pytorch (stylegan2-ada-pytorch generate.py: z from "
  "the seed, stored noise, --gen_trunc 1) or tf1 (stylegan2-ada generate.py: z and then every "
  "noise buffer from the seed, --gen_trunc 0.5).",
)
PSIS = flags.DEFINE_list(
  "gen_psis",
  ["1", "0.7", "0.5", "0", "-0.5", "-1"],
  "Truncation psi of each column of --gen_mode=truncation_sweep (the StyleGAN paper's Figure 8).",
)
ROW_SEEDS = flags.DEFINE_string("gen_row_seeds", "0-4", "Style-mixing rows (official --rows).")
COL_SEEDS = flags.DEFINE_string("gen_col_seeds", "5-8", "Style-mixing columns (official --cols).")
STYLES = flags.DEFINE_string(
  "gen_styles",
  "0-6",
  "Style layers (ws indices) a column seed gives each cell in --gen_mode=style_mixing (official "
  "--styles): numbers, ranges and the names coarse (0-3), middle (4-7), fine (8 to the last).",
)

# The flag each library argument comes from, so that the launcher words their errors as flags.
ARGUMENT_FLAGS = {
  "seeds": "gen_seeds",
  "row_seeds": "gen_row_seeds",
  "col_seeds": "gen_col_seeds",
  "styles": "gen_styles",
  "psis": "gen_psis",
  "truncation_psi": "gen_trunc",
  "class_index": "gen_class",
  "noise_mode": "gen_noise_mode",
  "convention": "gen_convention",
  "records": "records",
}


def _load_generator(source: str):
  try:
    return snapshot.read_generator(source)
  except (ValueError, OSError) as e:
    raise UsageError(f"--network={source}: {str(e).partition(': ')[2] or e}") from e


def _class(ctx: context.RunContext, c_dim: int) -> tuple[int | None, str | None]:
  """(class index, class name or None); names come from --records when given or needed."""
  value = CLASS.value.strip()
  names = None
  if c_dim and (ctx.flags["records"].present or (value and not value.isdecimal())):
    names = generate.dataset_class_names(ctx.flags.records, c_dim)
  index = generate.resolve_class(value or None, c_dim, names)
  return index, None if names is None or index is None else names[index]


def run(ctx: context.RunContext) -> None:
  parsed = generate.parse_mode_arguments(
    MODE.value, SEEDS.value, PSIS.value, ROW_SEEDS.value, COL_SEEDS.value, STYLES.value
  )
  network_flag = ctx.flags.network
  if not network_flag:
    raise UsageError("--network is required: a run folder, snapshot folder or network pickle")
  generator, what = _load_generator(network_flag)
  class_index, class_name = _class(ctx, generator.config.c_dim)
  convention = CONVENTION.value
  options = dict(
    truncation_psi=generate.truncation_or_default(TRUNC.value, convention),
    class_index=class_index,
    noise_mode=NOISE_MODE.value,
    convention=convention,
    batch_size=ctx.flags.batch_size,
  )
  render = generate.RENDERERS[MODE.value]
  details, files, tiles, columns = render(ctx.workdir.images, generator, parsed, options)
  grid_path = ctx.workdir.images / "grid.png"
  snapshot.write_grid(grid_path, tiles, columns)
  report = {
    "network": network_flag,
    "read": what,
    "mode": MODE.value,
    "convention": convention,
    "noise_mode": NOISE_MODE.value,
    "class_index": class_index,
    "class_name": class_name,
    **({} if MODE.value == "truncation_sweep" else {"truncation_psi": options["truncation_psi"]}),
    **details,
    "grid": f"{grid_path.parent.name}/{grid_path.name}",
    "files": files,
  }
  report_path = ctx.workdir.reports / "generate.json"
  report_path.write_text(json.dumps(report, indent=2) + "\n")
  print(f"generate: {len(files)} images in {ctx.workdir.images}")
  print(f"generate: grid {grid_path}")
  print(f"generate: report {report_path}")
