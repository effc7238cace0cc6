"""The Java rules that @bazel_tools loads from @rules_java, as Bazel's own.

@bazel_tools//tools/jdk loads these while Bazel resolves toolchains, even for
C++ and Python builds. Each macro forwards to the rule built into Bazel 4.2.
tfpets has no Java targets; building one would still try to download the
remote JDK and java_tools.
"""

def java_binary(**kwargs):
    native.java_binary(**kwargs)

def java_import(**kwargs):
    native.java_import(**kwargs)

def java_library(**kwargs):
    native.java_library(**kwargs)

def java_proto_library(**kwargs):
    native.java_proto_library(**kwargs)

def java_runtime(**kwargs):
    native.java_runtime(**kwargs)

def java_toolchain(**kwargs):
    native.java_toolchain(**kwargs)
