#!/usr/bin/env bash
# curves.sh - how Zeolite's cost grows with the work, one fresh server per
# point, on 127.0.0.1 (the tables in README "Performance: curves").
#
# Usage: benches/curves.sh [sessions|keys|values|txn|all]   (from the repository root)
#   env: ZEOLITE_BENCH_PORT (default 17447); CURVE_MAX_KEYS (default 10000000)
#        TMPDIR = where the data directories go (the 10M-key point needs ~4 GB).
# Builds release binaries; everything it starts, it stops.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
cargo build --release --quiet -p store-server -p store-benches
PORT=${ZEOLITE_BENCH_PORT:-17447}
MAX_KEYS=${CURVE_MAX_KEYS:-10000000}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/zeolite-curves.XXXXXX")
SERVER_PID=
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT

bench() {
  target/release/store-bench --server "127.0.0.1:$PORT" --tls-dir "$WORK/data/tls" "$@"
}

# A fresh server on an empty data directory.
start_server() {
  stop_server
  rm -rf "$WORK/data"
  RUST_LOG=warn target/release/store-server --data-dir "$WORK/data" \
    --listen "127.0.0.1:$PORT" --max-sessions 20000 --metrics-listen off 2>"$WORK/server.log" &
  SERVER_PID=$!
  for _ in $(seq 100); do
    kill -0 "$SERVER_PID" || { cat "$WORK/server.log" >&2; exit 1; }
    [ -f "$WORK/data/tls/client.key" ] && bench --workload commit --ops 1 --timeout 2s >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "server did not come up" >&2; exit 1
}

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER_PID/status"; }
disk_mib() { du -sm "$WORK/data" | cut -f1; }

if [[ $WHAT == sessions || $WHAT == all ]]; then
  echo "# idle sessions: server CPU and memory (pinging every second, then resting)"
  for n in 1000 5000 10000; do
    start_server
    echo "pinging $(bench --workload idle --clients "$n" --duration 20s --server-pid "$SERVER_PID" --idle-after never --timeout 60s)"
    start_server
    echo "resting $(bench --workload idle --clients "$n" --settle 15s --duration 20s --server-pid "$SERVER_PID" --timeout 60s)"
  done
fi

if [[ $WHAT == keys || $WHAT == all ]]; then
  echo "# keys in the store: cold reads of 10,000 of them (100-byte values)"
  for n in 10000 1000000 "$MAX_KEYS"; do
    start_server
    line=$(bench --workload read-cold --keys "$n" --ops 10000 --value-size 100 --timeout 120s)
    echo "$line server_rss_mib=$(rss_mib) data_mib=$(disk_mib)"
  done
fi

if [[ $WHAT == values || $WHAT == all ]]; then
  echo "# value size: cold reads and single-key commits"
  for size_ops in 100:20000 65536:2000 1048576:200; do
    size=${size_ops%:*}; ops=${size_ops#*:}
    start_server
    bench --workload read-cold --ops "$ops" --value-size "$size" --timeout 60s
    bench --workload commit --ops "$ops" --value-size "$size" --timeout 60s
  done
fi

if [[ $WHAT == txn || $WHAT == all ]]; then
  echo "# operations per transaction: commits of 100-byte values from one client"
  for per_ops in 1:2000 100:500 1000:100; do
    per=${per_ops%:*}; ops=${per_ops#*:}
    start_server
    bench --workload commit --ops "$ops" --ops-per-txn "$per" --value-size 100 --timeout 60s
  done
fi
