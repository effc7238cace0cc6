"""Writes the machine-specific paths of the Bazel build into local_config.bzl.

The Bazel build needs two absolute paths that differ per machine: the
TensorFlow wheel directory (headers and `libtensorflow_framework.so.2`) and
the Python interpreter that has TensorFlow installed. Both come from the
interpreter itself (`tf.sysconfig`, `sys.executable`), together with the
compile flags TensorFlow reports, and go into the git-ignored
`tools/bazel/local_config.bzl` that WORKSPACE and the BUILD files load.

Usage, from the repository root:

  python tools/bazel/configure.py [--python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

CONFIG_PATH = pathlib.Path(__file__).resolve().parent / "local_config.bzl"

# Runs inside the chosen interpreter; prints what the build needs as JSON.
_PROBE = """
import json, sys
import tensorflow as tf
print(json.dumps({
    'python': sys.executable,
    'tf_version': tf.__version__,
    'tf_lib_dir': tf.sysconfig.get_lib(),
    'compile_flags': tf.sysconfig.get_compile_flags(),
    'link_flags': tf.sysconfig.get_link_flags(),
}))
"""


class ConfigureError(RuntimeError):
  """The interpreter or its TensorFlow install cannot be used."""


def probe(python: str) -> dict[str, object]:
  """Asks `python` for its TensorFlow install; returns the probe's JSON."""
  quiet_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  try:
    result = subprocess.run(
      [python, "-c", _PROBE], capture_output=True, text=True, check=False, env=quiet_env
    )
  except OSError as error:
    raise ConfigureError(f"{python}: cannot run it ({error})") from error
  if result.returncode != 0:
    raise ConfigureError(
      f"{python}: importing tensorflow failed (exit {result.returncode}):\n{result.stderr.strip()}"
    )
  # TensorFlow may log to stdout before the JSON line; the JSON is the last.
  return json.loads(result.stdout.strip().splitlines()[-1])


def split_flags(info: dict[str, object]) -> dict[str, object]:
  """Sorts TensorFlow's compile/link flags into what the BUILD files use.

  `-I` must point at the wheel's include directory (the BUILD file for the
  wheel exposes it as a header library), `-D` flags become defines, all other
  compile flags are copts; the link flags must name exactly one library in
  the wheel directory.
  """
  lib_dir = pathlib.Path(str(info["tf_lib_dir"]))
  defines, copts = [], []
  for flag in info["compile_flags"]:
    if flag.startswith("-I"):
      if pathlib.Path(flag[2:]) != lib_dir / "include":
        raise ConfigureError(f"tf.sysconfig include flag {flag!r} is not {lib_dir}/include")
    elif flag.startswith("-D"):
      defines.append(flag[2:])
    else:
      copts.append(flag)
  libraries = [flag[3:] for flag in info["link_flags"] if flag.startswith("-l:")]
  if len(libraries) != 1 or not (lib_dir / libraries[0]).is_file():
    raise ConfigureError(
      f"tf.sysconfig link flags {info['link_flags']} do not name one library in {lib_dir}"
    )
  return {"TF_DEFINES": defines, "TF_COPTS": copts, "TF_FRAMEWORK_LIBRARY": libraries[0]}


def render(info: dict[str, object]) -> str:
  """The text of local_config.bzl (JSON strings/lists are valid Starlark)."""
  values = {
    "PYTHON_INTERPRETER": info["python"],
    "TF_VERSION": info["tf_version"],
    "TF_LIB_DIR": info["tf_lib_dir"],
    **split_flags(info),
  }
  lines = [
    '"""Machine-specific Bazel settings; written by '
    'tools/bazel/configure.py, do not edit or commit."""',
    "",
  ]
  lines += [f"{name} = {json.dumps(value)}" for name, value in values.items()]
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument(
    "--python",
    default=sys.executable,
    help="interpreter with TensorFlow installed (default: this one)",
  )
  args = parser.parse_args(argv)
  try:
    text = render(probe(args.python))
  except ConfigureError as error:
    print(f"configure: {error}", file=sys.stderr)
    return 1
  CONFIG_PATH.write_text(text)
  print(f"configure: wrote {CONFIG_PATH}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
