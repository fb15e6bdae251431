#!/usr/bin/env bash
# side-by-side.sh - Zeolite's store-bench figures and Redis's reference
# figures, measured in one run on this machine (1 KiB values).
#
# Usage: benches/side-by-side.sh          (from the repository root)
#   env: ZEOLITE_BENCH_PORT (default 17447), and those of compare-redis.sh.
# Builds release binaries, starts a store-server on 127.0.0.1 in a temporary
# data directory, runs the store-bench workloads, stops the server, then runs
# compare-redis.sh. Everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet -p store-server -p store-benches
PORT=${ZEOLITE_BENCH_PORT:-17447}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zeolite-bench.XXXXXX")
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

RUST_LOG=warn target/release/store-server --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --metrics-listen off \
  2>"$WORK/server.log" &
SERVER_PID=$!
bench() {
  target/release/store-bench --server "127.0.0.1:$PORT" --tls-dir "$WORK/data/tls" "$@"
}
for _ in $(seq 100); do
  [ -f "$WORK/data/tls/client.key" ] && bench --workload commit --ops 1 >/dev/null 2>&1 && break
  sleep 0.1
done

echo "zeolite $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
bench --workload read-cold --ops 10000
bench --workload read-pipelined --ops 200000 --depth 64
bench --workload commit --ops 2000
bench --workload commit-concurrent --clients 50 --ops 20000
kill "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=

benches/compare-redis.sh
