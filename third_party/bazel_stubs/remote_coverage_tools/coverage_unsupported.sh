#!/bin/sh
# Stands in for Bazel's downloadable coverage tools in the offline build.
echo "tfpets: 'bazel coverage' is not supported by the offline Bazel build" >&2
exit 1
