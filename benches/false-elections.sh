#!/usr/bin/env bash
# False elections under stress: runs an HA pair at default timers with a
# client committing back to back while both cores are saturated (two busy
# loops) and fsync latency is raised (a writer that fsyncs 1 MiB blocks
# without pause on the same disk), and counts elections (there should be
# none) and the longest time without a successful commit.
#
#   cargo build --release -p store-server -p store-benches
#   benches/false-elections.sh [SECONDS]     # default 600
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
scratch="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
for _ in 1 2; do
  sh -c 'while :; do :; done' &
  pids+=($!)
done
sh -c "while :; do dd if=/dev/zero of='$scratch/fsync' bs=1M count=16 oflag=dsync status=none; done" &
pids+=($!)
target/release/store-failover --quiet-for "$seconds"
