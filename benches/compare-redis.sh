#!/usr/bin/env bash
# compare-redis.sh - Redis reference figures for Zeolite's benchmarks, measured
# on this machine with the same shape of workload (1 KiB values):
#   set_c1_durable / set_c50_durable : SET, AOF with fsync on every write, 1 and 50 clients
#   get_c1_tls                       : GET over mutual TLS, 1 client
#   get_c1_tls_p64                   : the same, 64 GETs in flight (pipelined)
# Prints one line per workload: `redis <workload> ops_per_sec=N p50_ms=X`,
# to put side by side with the output of our own store-bench.
#
# Usage:  benches/compare-redis.sh
#   env:  REDIS_N1 (default 15000), REDIS_N50 (300000), REDIS_NTLS (100000) = requests per run
#         REDIS_PORT (16379), REDIS_TLS_PORT (16380) = first port tried (next free one is used)
#         TMPDIR = where the scratch dir (AOF, certs) goes; put it on the disk you measure.
# Installs redis-server/redis-tools/openssl with apt-get if missing (needs root).
# Everything binds to 127.0.0.1 and is stopped/removed on exit.
set -euo pipefail

N1=${REDIS_N1:-15000}
N50=${REDIS_N50:-300000}
NTLS=${REDIS_NTLS:-100000}
HOST=127.0.0.1

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
   || ! command -v redis-cli >/dev/null || ! command -v openssl >/dev/null; then
  echo "# installing redis-server redis-tools openssl" >&2
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools openssl
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/compare-redis.XXXXXX")
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# First port >= $1 that nothing listens on.
free_port() {
  local p=$1
  while ss -Htln "sport = :$p" | grep -q .; do p=$((p + 1)); done
  echo "$p"
}

# start_server NAME CLI_ARGS... -- SERVER_ARGS... ; returns 1 if it does not come up.
start_server() {
  local name=$1; shift
  local cli=() ; while [[ $1 != -- ]]; do cli+=("$1"); shift; done; shift
  mkdir -p "$WORK/$name"
  redis-server --bind "$HOST" --save '' --dir "$WORK/$name" \
    --logfile "$WORK/$name/redis.log" --daemonize no "$@" &
  PIDS+=($!)
  local i
  for i in $(seq 100); do
    kill -0 "$!" 2>/dev/null || return 1
    redis-cli -h "$HOST" "${cli[@]}" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  return 1
}

# bench LABEL REDIS_BENCHMARK_ARGS... ; prints `redis LABEL ops_per_sec=N p50_ms=X`
bench() {
  local label=$1; shift
  local line
  line=$(redis-benchmark -h "$HOST" -q "$@" 2>&1 | tr '\r' '\n' | grep 'requests per second' | tail -n1) \
    || { echo "redis $label FAILED (no result from redis-benchmark)" >&2; return 1; }
  local rps p50
  rps=$(sed -n 's/^[A-Z]*: *\([0-9.]*\) requests per second.*/\1/p' <<<"$line")
  p50=$(sed -n 's/.*p50=\([0-9.]*\) msec.*/\1/p' <<<"$line")
  echo "redis $label ops_per_sec=${rps%.*}${p50:+ p50_ms=$p50}"
}

echo "redis version $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
echo "# scratch dir $WORK ($(df -PT "$WORK" | awk 'NR==2 {print $2}')), $(nproc) cores" >&2

# --- Workload 1: durable SET (AOF, appendfsync always) -------------------------
P1=$(free_port "${REDIS_PORT:-16379}")
start_server aof -p "$P1" -- --port "$P1" --appendonly yes --appendfsync always \
  || { echo "redis-server (AOF) failed to start:" >&2; cat "$WORK/aof/redis.log" >&2; exit 1; }
bench set_c1_durable  -p "$P1" -t set -c 1  -d 1024 -r 10000 -n "$N1"
bench set_c50_durable -p "$P1" -t set -c 50 -d 1024 -r 10000 -n "$N50"

# --- Workload 2: GET over TLS ---------------------------------------------------
C=$WORK/certs; mkdir -p "$C"
{
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=compare-redis CA" \
    -keyout "$C/ca.key" -out "$C/ca.crt"
  for who in server client; do
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$C/$who.key" -out "$C/$who.csr"
    openssl x509 -req -in "$C/$who.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial \
      -days 2 -out "$C/$who.crt" \
      -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n')
  done
} >"$C/openssl.log" 2>&1 || { echo "openssl failed:" >&2; cat "$C/openssl.log" >&2; exit 1; }

P2=$(free_port "${REDIS_TLS_PORT:-16380}")
[[ $P2 == "$P1" ]] && P2=$(free_port $((P1 + 1)))
TLS_CLI=(--tls --cert "$C/client.crt" --key "$C/client.key" --cacert "$C/ca.crt")
if start_server tls -p "$P2" "${TLS_CLI[@]}" -- --port 0 --tls-port "$P2" \
     --tls-cert-file "$C/server.crt" --tls-key-file "$C/server.key" --tls-ca-cert-file "$C/ca.crt"; then
  # Prefill key:0..9999 with 1 KiB values so every GET returns 1 KiB.
  redis-benchmark -h "$HOST" -p "$P2" "${TLS_CLI[@]}" -t set -c 50 -d 1024 -r 10000 -n 100000 -q >/dev/null 2>&1
  bench get_c1_tls -p "$P2" "${TLS_CLI[@]}" -t get -c 1 -d 1024 -r 10000 -n "$NTLS"
  bench get_c1_tls_p64 -p "$P2" "${TLS_CLI[@]}" -t get -c 1 -P 64 -d 1024 -r 10000 -n $((NTLS * 4))
else
  echo "redis get_c1_tls SKIPPED: redis-server did not start with TLS (built without TLS support?)"
  tail -n 5 "$WORK/tls/redis.log" >&2 2>/dev/null || true
fi
