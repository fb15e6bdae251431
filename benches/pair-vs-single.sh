#!/usr/bin/env bash
# pair-vs-single.sh - commit throughput of an HA pair (synchronous
# replication to the backup) against a single node, in one run on this
# machine (1 KiB values), then failover and catch-up times.
#
# Usage: benches/pair-vs-single.sh [ROUNDS]   (from the repository root)
#   env: ZEOLITE_BENCH_PORT (default 17447; the pair uses the next three).
# Builds release binaries, starts a single store-server and a pair
# (witness + two data nodes) on 127.0.0.1 in temporary directories, runs
# the commit workloads against each ROUNDS times (default 2), alternating,
# stops everything, then runs store-failover. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p store-server -p store-client -p store-benches
ROUNDS=${1:-2}
PORT=${ZEOLITE_BENCH_PORT:-17447}
A1=127.0.0.1:$((PORT + 1)); A2=127.0.0.1:$((PORT + 2)); W=127.0.0.1:$((PORT + 3))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zeolite-pair.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

server() { RUST_LOG=warn target/release/store-server "$@" 2>>"$WORK/servers.log" & PIDS+=($!); }
# (Data nodes are given --metrics-listen off: two on one host would share 9447.)
server --data-dir "$WORK/single" --listen "127.0.0.1:$PORT" --tls-dir "$WORK/tls" --metrics-listen off
server witness --data-dir "$WORK/w" --listen "$W" --cluster "$A1,$A2" --tls-dir "$WORK/tls"
server --data-dir "$WORK/a1" --listen "$A1" --cluster "$A1,$A2" --witness "$W" --tls-dir "$WORK/tls" --metrics-listen off
server --data-dir "$WORK/a2" --listen "$A2" --cluster "$A1,$A2" --witness "$W" --tls-dir "$WORK/tls" --metrics-listen off

bench() { target/release/store-bench --tls-dir "$WORK/tls" "$@"; }
for target in "127.0.0.1:$PORT" "$A1,$A2"; do
  for _ in $(seq 100); do
    [ -f "$WORK/tls/client.key" ] && bench --server "$target" --workload commit --ops 1 >/dev/null 2>&1 && break
    sleep 0.1
  done
done
# Let the backup join and be recorded in sync before measuring.
sleep 3

echo "zeolite $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
for round in $(seq "$ROUNDS"); do
  for target in single pair; do
    servers="127.0.0.1:$PORT"; [ "$target" = pair ] && servers="$A1,$A2"
    echo "round=$round target=$target $(bench --server "$servers" --workload commit --ops 2000)"
    echo "round=$round target=$target $(bench --server "$servers" --workload commit-concurrent --clients 50 --ops 20000)"
  done
done
target/release/store-cli --server "$A1,$A2" --tls-dir "$WORK/tls" status
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()

[ "${SKIP_FAILOVER:-}" ] || target/release/store-failover --trials 10
