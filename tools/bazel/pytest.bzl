"""py_test targets that run one test file under pytest on the Bazel-built op library."""

_OPS_LIBRARY = "//:tfpets/ops/_lib/libtfpets_ops.so"
_RUNNER = "//:tests/bazel/pytest_runner.py"

def pytest_test(src, size = "medium", pytest_args = [], data = [], **kwargs):
    """A py_test that runs the test file `src` with tests/bazel/pytest_runner.py.

    The target is named after the file (tests/ops/test_x.py is
    //:tests/ops/test_x). TFPETS_OPS_LIBRARY points tfpets.ops at the Bazel
    library; the interpreter is the one tools/bazel/configure.py recorded.

    Args:
      src: the test file, relative to the repository root.
      size: Bazel's test size; it sets the timeout (medium: 300 s).
      pytest_args: more pytest arguments; Bazel splits each as a shell
        would, so quote spaces: `["-m", "'not slow'"]`.
      data: more files the test reads, so that changing them reruns it.
      **kwargs: passed on to py_test (tags, timeout, ...).
    """
    if not src.endswith(".py"):
        fail("pytest_test: src must be a .py file, got " + src)
    native.py_test(
        name = src[:-len(".py")],
        size = size,
        srcs = [_RUNNER, src],
        main = _RUNNER,
        args = [src] + pytest_args,
        data = [_OPS_LIBRARY, "//:pytest.ini"] + data,
        env = {"TFPETS_OPS_LIBRARY": "$(rootpath %s)" % _OPS_LIBRARY},
        deps = ["//:tfpets", "//:test_helpers"],
        **kwargs
    )
