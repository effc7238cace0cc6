"""Builds the tfpets custom op library (`FusedBiasAct`, `UpFirDn2D`).

`build_ops(out_dir)` compiles `kernels/*.cc` (and, where nvcc and the CUDA
headers exist, `kernels/*.cu.cc`) against the installed TensorFlow wheel with
the flags TensorFlow reports (`tf.sysconfig`, C++17, ABI 1), into
`<out_dir>/tfpets_ops_<key>.so`, where the key hashes the sources, the flags,
the TensorFlow version and the compilers. An existing library with the same
key is reused; a new one is written under a temporary name and renamed into
place, so concurrent builds never expose half-written files. It also writes
`<out_dir>/tfpets_ops.json`, which `tfpets.ops` reads to find the library.

`python -m tfpets.ops.build [--out_dir DIR] [--cuda auto|yes|no]` builds in
place into `tfpets/ops/_lib/`. `BuildTFOps` is setup.py's `build_ext`: it does
the same during `pip install .` (into the wheel) and `pip install -e .` (into
the source tree). A failed build there only logs a warning, since every op
has a reference path; `TFPETS_BUILD_OPS=0` skips it, `TFPETS_BUILD_CUDA=
auto|1|0` chooses the CUDA kernels.

Environment: `CXX` (default g++), `NVCC` (default nvcc on PATH, then
`$CUDA_HOME/bin/nvcc`), `TFPETS_OPS_CXXFLAGS` (extra compiler flags, e.g.
`-march=native`), `TFPETS_CUDA_ARCHS` (default "80,90": sm_80 and sm_90 plus
compute_90 PTX).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tempfile

from absl import logging

try:
  from setuptools.command import build_ext
except ImportError:  # Only BuildTFOps needs setuptools; building does not.
  build_ext = None

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
KERNEL_DIR = PACKAGE_DIR / "kernels"
DEFAULT_OUT_DIR = PACKAGE_DIR / "_lib"
MANIFEST_NAME = "tfpets_ops.json"
CPU_SOURCES = ("fused_bias_act.cc", "upfirdn2d.cc")
GPU_SOURCES = ("fused_bias_act.cu.cc", "upfirdn2d.cu.cc")
HEADERS = ("bias_act_math.h", "cpu_stream.h", "tfpets_ops.h")
BASE_CXXFLAGS = (
  "-std=c++17",
  "-shared",
  "-fPIC",
  "-O3",
  "-fno-trapping-math",
  "-fno-math-errno",
  "-Wno-deprecated-declarations",
  "-Wno-interference-size",
)


class BuildError(RuntimeError):
  """A compiler or linker step failed; the message holds its output."""


def sources_present() -> bool:
  return all((KERNEL_DIR / name).is_file() for name in CPU_SOURCES + GPU_SOURCES + HEADERS)


def source_hash() -> str:
  """SHA-256 of the kernel sources and headers (names and contents)."""
  digest = hashlib.sha256()
  for name in sorted(CPU_SOURCES + GPU_SOURCES + HEADERS):
    digest.update(name.encode())
    digest.update((KERNEL_DIR / name).read_bytes())
  return digest.hexdigest()


def _tf_flags() -> tuple[list[str], list[str], str, str]:
  """TF's compile flags, link flags, version and wheel directory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return (
    list(tf.sysconfig.get_compile_flags()),
    list(tf.sysconfig.get_link_flags()),
    tf.__version__,
    tf.sysconfig.get_lib(),
  )


def find_nvcc() -> pathlib.Path | None:
  """nvcc from $NVCC, PATH or $CUDA_HOME, if the CUDA headers exist too."""
  candidates = [os.environ.get("NVCC"), shutil.which("nvcc")]
  cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
  candidates.append(os.path.join(cuda_home, "bin", "nvcc"))
  for candidate in candidates:
    if candidate and os.access(candidate, os.X_OK):
      nvcc = pathlib.Path(candidate)
      if _cuda_home(nvcc) is not None:
        return nvcc
  return None


def _cuda_home(nvcc: pathlib.Path) -> pathlib.Path | None:
  """The toolkit directory holding include/cuda_runtime.h for this nvcc."""
  for home in (
    pathlib.Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")),
    nvcc.resolve().parent.parent,
  ):
    if (home / "include" / "cuda_runtime.h").is_file():
      return home
  return None


def _tool_version(command: list[str]) -> str:
  try:
    result = subprocess.run(command + ["--version"], capture_output=True, text=True, check=False)
  except OSError:
    return ""  # A missing tool fails later, in _run, with a clear message.
  return result.stdout.strip()


def _nvcc_major(nvcc: pathlib.Path) -> int:
  text = _tool_version([str(nvcc)])
  marker = "release "
  if marker not in text:
    return 0
  return int(text.split(marker, 1)[1].split(".", 1)[0])


def _run(command: list[str], what: str) -> None:
  logging.info("tfpets.ops.build: %s", shlex.join(command))
  try:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
  except OSError as error:
    raise BuildError(f"{what} failed: cannot run {command[0]}: {error}") from error
  if result.returncode != 0:
    raise BuildError(
      f"{what} failed (exit {result.returncode}):\n{shlex.join(command)}\n"
      f"{result.stdout}{result.stderr}"
    )


def _gencode_flags() -> list[str]:
  archs = os.environ.get("TFPETS_CUDA_ARCHS", "80,90").split(",")
  flags = []
  for arch in archs:
    flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
  flags += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
  return flags


def _compile_cuda(nvcc: pathlib.Path, tf_cflags: list[str], work_dir: pathlib.Path) -> list[str]:
  objects = []
  for name in GPU_SOURCES:
    obj = work_dir / (name + ".o")
    _run(
      [
        str(nvcc),
        "-std=c++17",
        "-c",
        str(KERNEL_DIR / name),
        "-o",
        str(obj),
        *tf_cflags,
        "-DGOOGLE_CUDA=1",
        "-DNDEBUG",
        "-x",
        "cu",
        "-Xcompiler",
        "-fPIC",
        "--expt-relaxed-constexpr",
        "-w",
        *_gencode_flags(),
      ],
      f"nvcc {name}",
    )
    objects.append(str(obj))
  return objects


def _cuda_link_flags(nvcc: pathlib.Path) -> list[str]:
  """How to link the CUDA runtime (docs/ops.md, "Building the op library").

  nvcc 12 matches TensorFlow's CUDA 12 runtime, which TF's framework library
  already exports; any other version gets its own static runtime with hidden
  symbols so that it cannot clash with TensorFlow's.
  """
  lib_dir = _cuda_home(nvcc) / "lib64"
  if _nvcc_major(nvcc) == 12:
    return [f"-L{lib_dir}", "-Wl,--no-as-needed", "-lcudart"]
  return [
    f"-L{lib_dir}",
    "-l:libcudart_static.a",
    "-ldl",
    "-lrt",
    "-lpthread",
    "-Wl,--exclude-libs,ALL",
  ]


def _build_key(
  tf_cflags: list[str],
  tf_lflags: list[str],
  tf_version: str,
  tf_dir: str,
  cxx: str,
  extra: list[str],
  nvcc: pathlib.Path | None,
) -> str:
  """Hash of everything the library depends on except TF's location.

  The wheel directory is left out because pip's isolated build environment
  has a new path on every install; the same TF version has the same headers,
  so `pip install -e .` can reuse a library built by earlier installs.
  """

  def portable(flags: list[str]) -> str:
    return shlex.join(flags).replace(tf_dir, "<tensorflow>")

  digest = hashlib.sha256()
  for part in (
    source_hash(),
    tf_version,
    portable(tf_cflags),
    portable(tf_lflags),
    shlex.join(BASE_CXXFLAGS),
    shlex.join(extra),
    _tool_version([cxx]),
    _tool_version([str(nvcc)]) if nvcc else "cpu-only",
    os.environ.get("TFPETS_CUDA_ARCHS", "80,90") if nvcc else "",
  ):
    digest.update(part.encode())
    digest.update(b"\0")
  return digest.hexdigest()[:16]


def _write_manifest(
  out_dir: pathlib.Path, library: pathlib.Path, tf_version: str, cuda: bool
) -> None:
  manifest = {
    "library": library.name,
    "source_hash": source_hash(),
    "tf_version": tf_version,
    "cuda": cuda,
  }
  with tempfile.NamedTemporaryFile("w", dir=out_dir, suffix=".tmp", delete=False) as handle:
    json.dump(manifest, handle, indent=2)
  os.chmod(handle.name, 0o644)
  os.replace(handle.name, out_dir / MANIFEST_NAME)


def _link(
  out_path: pathlib.Path,
  cxx: str,
  extra: list[str],
  tf_cflags: list[str],
  tf_lflags: list[str],
  nvcc: pathlib.Path | None,
  work_dir: pathlib.Path,
) -> None:
  sources = [str(KERNEL_DIR / name) for name in CPU_SOURCES]
  if nvcc is None:
    _run(
      [
        cxx,
        *BASE_CXXFLAGS,
        *extra,
        *sources,
        "-o",
        str(out_path),
        *tf_cflags,
        *tf_lflags,
        "-Wl,--no-undefined",
      ],
      "C++ build",
    )
    return
  objects = _compile_cuda(nvcc, tf_cflags, work_dir)
  cuda_include = _cuda_home(nvcc) / "include"
  # The static CUDA runtime must come before TF's libraries, whose exported CUDA stubs would
  # otherwise bind the kernels' calls to TensorFlow's runtime.
  _run(
    [
      cxx,
      *BASE_CXXFLAGS,
      *extra,
      "-DGOOGLE_CUDA=1",
      f"-I{cuda_include}",
      *sources,
      *objects,
      "-o",
      str(out_path),
      *_cuda_link_flags(nvcc),
      *tf_cflags,
      *tf_lflags,
      "-Wl,--no-undefined",
    ],
    "C++/CUDA link",
  )


def build_ops(
  out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR, cuda: str | bool = "auto"
) -> pathlib.Path:
  """Builds (or reuses) the op library in `out_dir`; returns its path.

  Args:
    out_dir: Directory for the library and its manifest (created).
    cuda: 'auto' (CUDA kernels if nvcc and the CUDA headers exist; falls back
      to a CPU-only build if the CUDA build fails), True (required) or False.

  Raises:
    BuildError: a compile or link step failed (or CUDA was required but is
      unavailable).
  """
  if cuda not in ("auto", True, False):
    raise ValueError(f"build_ops: cuda must be 'auto', True or False, got {cuda!r}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  if not sources_present():
    raise BuildError(f"kernel sources missing under {KERNEL_DIR}")
  tf_cflags, tf_lflags, tf_version, tf_dir = _tf_flags()
  cxx = os.environ.get("CXX", "g++")
  extra = shlex.split(os.environ.get("TFPETS_OPS_CXXFLAGS", ""))
  nvcc = find_nvcc() if cuda in ("auto", True) else None
  if cuda is True and nvcc is None:
    raise BuildError("cuda=True but no nvcc with CUDA headers was found")
  try:
    return _build_variant(out_dir, cxx, extra, tf_cflags, tf_lflags, tf_version, tf_dir, nvcc)
  except BuildError:
    if cuda != "auto" or nvcc is None:
      raise
    logging.warning("tfpets.ops.build: CUDA build failed; building CPU only", exc_info=True)
    return _build_variant(out_dir, cxx, extra, tf_cflags, tf_lflags, tf_version, tf_dir, None)


def _build_variant(
  out_dir: pathlib.Path,
  cxx: str,
  extra: list[str],
  tf_cflags: list[str],
  tf_lflags: list[str],
  tf_version: str,
  tf_dir: str,
  nvcc: pathlib.Path | None,
) -> pathlib.Path:
  key = _build_key(tf_cflags, tf_lflags, tf_version, tf_dir, cxx, extra, nvcc)
  target = out_dir / f"tfpets_ops_{key}.so"
  if not target.is_file():
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".build-") as work:
      work_dir = pathlib.Path(work)
      partial = work_dir / target.name
      _link(partial, cxx, extra, tf_cflags, tf_lflags, nvcc, work_dir)
      os.replace(partial, target)
  _write_manifest(out_dir, target, tf_version, nvcc is not None)
  return target


def _cuda_choice() -> str | bool:
  choice = os.environ.get("TFPETS_BUILD_CUDA", "auto")
  if choice not in ("auto", "1", "0"):
    raise ValueError(f"TFPETS_BUILD_CUDA must be auto, 1 or 0, got {choice!r}")
  return {"auto": "auto", "1": True, "0": False}[choice]


def _remove_earlier_builds(out_dir: pathlib.Path, keep: pathlib.Path | None) -> None:
  """Drops what earlier installs left in pip's reused build/ directory."""
  for stale in out_dir.glob("tfpets_ops_*.so"):
    if stale != keep:
      stale.unlink()
  if keep is None:
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)


def build_for_install(
  out_dir: str | os.PathLike[str], exclusive: bool = False
) -> pathlib.Path | None:
  """Builds the library during an install; never raises for a failed build.

  The custom ops are optional (every op has a reference path), so a missing
  compiler or broken TensorFlow headers must not fail `pip install`: this
  logs a warning that says so and how to build later, and returns None.
  Returns None without building when `TFPETS_BUILD_OPS=0`.

  Args:
    out_dir: Directory for the library and its manifest.
    exclusive: `out_dir` must end up holding only this build's library (or
      nothing, if there is none): for the wheel's build directory, which
      pip reuses between installs.
  """
  path = None
  if os.environ.get("TFPETS_BUILD_OPS", "1") == "0":
    logging.info("tfpets.ops.build: TFPETS_BUILD_OPS=0, not building the custom op library")
  else:
    cuda = _cuda_choice()
    try:
      path = build_ops(out_dir, cuda=cuda)
      logging.info("tfpets.ops.build: built %s", path)
    # An isolation point: whatever goes wrong, the install must succeed.
    except Exception as error:  # pylint: disable=broad-except
      logging.warning(
        "tfpets.ops.build: could not build the custom op library, so "
        "tfpets.ops will use its reference (plain TensorFlow) ops. Build "
        "it later with `python -m tfpets.ops.build` (needs a C++17 "
        "compiler). Cause: %s: %s",
        type(error).__name__,
        error,
      )
  if exclusive and pathlib.Path(out_dir).is_dir():
    _remove_earlier_builds(pathlib.Path(out_dir), path)
  return path


if build_ext is not None:

  class BuildTFOps(build_ext.build_ext):
    """setuptools `build_ext` that builds the op library into the package.

    It builds into `<build_lib>/tfpets/ops/_lib` for `pip install .` and into
    the source tree for editable installs (`pip install -e .`, or
    `setup.py build_ext --inplace`), where `tfpets.ops` looks for it. The
    placeholder Extension in setup.py only makes setuptools run this command
    (and tag the wheel as platform specific); it is not compiled.
    """

    def library_dir(self) -> pathlib.Path:
      if self.inplace or self.editable_mode:
        return DEFAULT_OUT_DIR
      return pathlib.Path(self.build_lib) / "tfpets" / "ops" / "_lib"

    def run(self) -> None:
      in_source = self.inplace or self.editable_mode
      build_for_install(self.library_dir(), exclusive=not in_source)

    def get_outputs(self) -> list[str]:
      return []

    def get_output_mapping(self) -> dict[str, str]:
      return {}  # Nothing for editable installs to copy: it builds in place.


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--out_dir", default=str(DEFAULT_OUT_DIR))
  parser.add_argument("--cuda", choices=("auto", "yes", "no"), default="auto")
  args = parser.parse_args(argv)
  cuda = {"auto": "auto", "yes": True, "no": False}[args.cuda]
  try:
    path = build_ops(args.out_dir, cuda=cuda)
  except BuildError as error:
    print(f"tfpets.ops.build: {error}", file=sys.stderr)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
