#!/usr/bin/env bash
# Instruction counts per request for `idgate serve`, repeatable on a busy
# machine: the sidecar runs under valgrind's callgrind, wrk sends requests
# for a bounded time, and the counters cover only the measured window
# (zeroed after a warm-up). Prints Ir per request and the top functions.
#
#   bench/profile.sh [one-token|1000-tokens|1000-tokens-nocache]
#   bench/profile.sh public           # one token, no auth (--public-path /):
#                                     # idgate's proxy without the gate
#   bench/profile.sh bare             # loadkit's bare-proxy instead of idgate:
#                                     # what hyper and tokio cost alone
#   bench/profile.sh forward-auth     # idgate --mode forward-auth, asked
#                                     # directly (no front proxy, no
#                                     # upstream): one token, answered 200;
#                                     # plain GETs, without the X-Original-*
#                                     # headers a front proxy adds
#   bench/profile.sh heap-1000conn    # the heap with 1,000 connections
#                                     # open (valgrind's massif): its peak
#                                     # and where it was allocated
#   CALLERS='Timespec>::now' bench/profile.sh one-token   # also the calls
#                                     # per request into that function, by
#                                     # caller (bench/callers.py; here: the
#                                     # clock reads)
#   CACHE_SIM=1 bench/profile.sh public   # also L1 misses per request
#   bench/profile.sh allocs           # allocations per request on the
#                                     # cached path (valgrind's dhat), by
#                                     # site (needs python3)
#
# Needs the files bench/sidecar.sh leaves in OUT (tokens, nginx configs):
# run that first, at least with ONLY=none. Minted tokens last an hour: the
# script stops with an error when the first one is refused, or when any
# request of a measured run fails, rather than count the rejection path.
# Loopback only; bounded in time.
#
# Callgrind counts user-space instructions only (no kernel), and under
# valgrind aws-lc takes other paths than on the real CPU (AVX for SHA-256
# instead of SHA-NI, which weighed the cache key several times more here
# before stop 42), so its counts are for comparing builds, not for
# predicting CPU time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/bench/sidecar}
VARIANT=${1:-one-token}
SECS=${SECS:-10}
# The sidecar (under valgrind) and the upstream pinned to one core, as in
# bench/sidecar.sh: idgate picks its runtime by the CPUs it may use, and on
# one it is single-threaded. Unpinned, it would see every core and run the
# multi-threaded runtime, which the load benchmark never measures.
SERVER_CPU=${SERVER_CPU:-0}
# The ports, audience, member, upstream and cleanup (the sidecar has its
# own start line: under valgrind).
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
PROF=$OUT/profile
mkdir -p "$PROF"

# CACHE_SIM=1: callgrind also models the caches (32 KiB L1i and 48 KiB L1d
# as on the benchmark host's EPYC, 1 MiB L2 as the last level) and the
# script prints L1 misses per request too: what a request's code and data
# cost the caches, on a VM that exposes no hardware counters.
cache=()
# shellcheck disable=SC2054 # valgrind's sizes are comma-separated, one word each
[[ ${CACHE_SIM:-0} == 1 ]] && cache=(--cache-sim=yes --I1=32768,8,64 --D1=49152,12,64 --LL=1048576,16,64)
tool=(--tool=callgrind "${cache[@]}" --callgrind-out-file="$PROF/callgrind.out")
case $VARIANT in
  one-token|bare|forward-auth) tokens=$OUT/one-token.txt extra=() ;;
  public) tokens=$OUT/one-token.txt extra=(--public-path /) ;;
  1000-tokens) tokens=$OUT/1000-tokens.txt extra=() ;;
  1000-tokens-nocache) tokens=$OUT/1000-tokens.txt extra=(--token-cache-capacity 0) ;;
  heap-1000conn) tokens=$OUT/one-token.txt extra=()
    tool=(--tool=massif --massif-out-file="$PROF/massif.out" --depth=30 --threshold=1.0) ;;
  allocs) tokens=$OUT/one-token.txt extra=()
    tool=(--tool=dhat --dhat-out-file="$PROF/dhat.out") ;;
  *) echo "unknown variant $VARIANT" >&2; exit 2 ;;
esac
[[ -f $tokens ]] || { echo "run bench/sidecar.sh first (no $tokens)" >&2; exit 1; }

trap cleanup EXIT
start_upstream
rm -f "$PROF"/callgrind.out* "$PROF"/massif.out "$PROF"/dhat.out
if [[ $VARIANT == bare ]]; then
  port=$P_BARE
  server=("$BARE_PROXY" "127.0.0.1:$P_BARE" "127.0.0.1:$P_UP")
else
  port=$P_IDGATE
  if [[ $VARIANT == forward-auth ]]; then
    idgate_line --mode forward-auth
  else
    idgate_line --upstream "http://127.0.0.1:$P_UP" "${extra[@]}"
  fi
  server=("${IDGATE_LINE[@]}")
fi
taskset -c "$SERVER_CPU" valgrind "${tool[@]}" "${server[@]}" 2>"$PROF/valgrind.log" &
vg=$!
SERVER_PID=$vg # for lib.sh's cleanup
token=$(head -n 1 "$tokens")
code=
for _ in $(seq 300); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/" || true)
  [[ $code == 200 || $code == 401 || $code == 403 ]] && break
  sleep 0.2
done
# A refused token (the minted ones expire after an hour) would have the
# counts below measure the rejection path instead.
[[ $code == 200 ]] || { echo "the sidecar answered $code, not 200, to $tokens's first token: expired? Mint new ones with ONLY=none NO_BUILD=1 bench/sidecar.sh" >&2; exit 1; }
run() { wrk -t 1 -c "${2:-10}" -d "${1}s" --timeout 10s -s "$ROOT/bench/wrk-tokens.lua" "http://127.0.0.1:$port/" -- "$tokens" | grep '^BENCH'; }
# A measured run's line, refused if any request failed: per-request figures
# must be of answered requests only.
measured() {
  local line
  line=$(run "$@")
  [[ $line == *" errors=0"* ]] || { echo "failed requests in the measured run: $line" >&2; return 1; }
  echo "$line"
}
if [[ $VARIANT == heap-1000conn ]]; then
  conns=1000
  run "$SECS" "$conns"
  # Massif writes its snapshots when the process exits (SIGTERM: a clean
  # shutdown). Then the peak snapshot's tree, five levels deep, with each
  # site's bytes per connection (the upstream side has fewer than 1,000).
  kill -TERM "$vg"; wait "$vg" || true
  # shellcheck disable=SC2034 # read by lib.sh's cleanup trap
  SERVER_PID=
  ms_print "$PROF/massif.out" > "$PROF/massif.txt"
  awk '/^ Detailed snapshots:/ {peak = $0; sub(/ \(peak\).*/, "", peak); sub(/.*[[ ]/, "", peak); next}
       /^ +[0-9]+ +[0-9,]+ +[0-9,]+ +[0-9,]+ +[0-9,]+ +[0-9,]+ *$/ {if (p) exit; p = ($1 == peak); next}
       p && /^[| ]*->/ && !/below .*threshold/ && index($0, "->") < 10 {
         b = $0; sub(/^[^(]*\(/, "", b); sub(/B\).*/, "", b); gsub(",", "", b)
         f = $0; sub(/ \(in .*/, "", f); sub(/^[| ]*->[0-9.]+% \([0-9,]+B\) (0x[0-9A-F]+: )?/, "", f)
         printf "%8d B/conn  %s%s\n", b / conns, substr($0, 1, index($0, "->") - 1), f
       }' conns="$conns" "$PROF/massif.txt" | cut -c1-170
  echo "peak heap: $(awk '/^ *mem_heap_B=/ {sub(/.*=/, ""); if ($0 > m) m = $0} END {printf "%.1f MiB", m / 1048576}' "$PROF/massif.out") (details: $PROF/massif.txt)"
  exit 0
fi
if [[ $VARIANT == allocs ]]; then
  # dhat writes its profile when the process exits. Start-up's one-time
  # allocations fall under the half-a-block-per-request cut.
  line=$(measured "$SECS")
  kill -TERM "$vg"; wait "$vg" || true
  # shellcheck disable=SC2034 # read by lib.sh's cleanup trap
  SERVER_PID=
  python3 "$ROOT/bench/dhat-sites.py" "$PROF/dhat.out" "$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")"
  exit 0
fi
run 5 >/dev/null
callgrind_control --zero "$vg" >/dev/null
line=$(measured "$SECS")
callgrind_control --dump "$vg" >/dev/null
reqs=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")
dump=$(ls -t "$PROF"/callgrind.out.* | head -n 1)
total=$(callgrind_annotate --show=Ir "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "variant=$VARIANT requests=$reqs Ir_total=$total Ir_per_request=$(( total / reqs ))"
if [[ ${CACHE_SIM:-0} == 1 ]]; then
  callgrind_annotate --show=I1mr,D1mr,D1mw "$dump" 2>/dev/null | awk -v r="$reqs" '/PROGRAM TOTALS/ {
    for (i = 1; i <= 3; i++) { n[i] = $(2 * i - 1); gsub(",", "", n[i]) }
    printf "L1i_misses_per_request=%d L1d_misses_per_request=%d\n", n[1] / r, (n[2] + n[3]) / r }'
fi
if [[ -n ${CALLERS:-} ]]; then
  python3 "$ROOT/bench/callers.py" "$dump" "$CALLERS" "$reqs"
fi
callgrind_annotate --inclusive=yes --show=Ir --threshold=100 "$dump" 2>/dev/null |
  sed 's/([ 0-9.]*%)//' | awk -v r="$reqs" '/^ *[0-9,]+ / {n = $1; gsub(",", "", n); $1 = ""; printf "%8d Ir/req %s\n", n / r, $0}' |
  grep -v -e 'tokio::runtime' -e 'std::sys' -e 'clone' -e 'start_thread' -e 'call_once' | awk -v n="${TOP:-45}" 'NR <= n' | cut -c1-170
