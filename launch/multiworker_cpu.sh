#!/usr/bin/env bash
# Runs N workers of one stage on this machine with MultiWorkerMirroredStrategy over loopback, the
# stand-in for a multi-host run. Each worker gets TF_CONFIG with its index; all share one --workdir
# (the chief writes it, every worker resumes from its checkpoints). On real hosts set the cluster
# list to the hosts' addresses, start one worker per host and give them a --workdir every host sees
# (a shared file system).
# Usage: launch/multiworker_cpu.sh N --stage=NAME [flags...]
set -euo pipefail
n=${1:?usage: $0 N --stage=NAME [flags...]}; shift
ports=()
for _ in $(seq "$n"); do
  ports+=("$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")
done
cluster=$(printf '"127.0.0.1:%s",' "${ports[@]}"); cluster="[${cluster%,}]"
pids=()
for i in $(seq 0 $((n - 1))); do
  TF_CONFIG="{\"cluster\": {\"worker\": ${cluster}}, \"task\": {\"type\": \"worker\", \"index\": ${i}}}" \
    python -m tfpets.launch --strategy=multiworker "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
