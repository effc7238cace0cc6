"""tfpets launcher: `python -m tfpets.launch --stage=NAME [--flagfile=FILE] [flags]`.

Every stage shares the common flags (--data, --records, --workdir, --seed, --strategy, --tpu,
--precision, ...) and adds its own; `--helpfull` documents them all. Outputs of a run go under
--workdir, with the resolved flags saved as <workdir>/flags.txt (usable as --flagfile).
"""

# Everything lives in tfpets.cli: worker processes started with 'spawn' re-import this module, and
# must not pay for TensorFlow and every stage when they do.
if __name__ == "__main__":
  from tfpets import cli
  cli.run()
