#!/usr/bin/env bash
# How the server and the upstream share their core: context switches per
# request, and how much of the core's time goes to runs of 200 µs or more
# (batches of requests) rather than one request per wake-up. See
# BENCHMARKS.md, "The scheduler".
#
#   bench/sched.sh [idgate|nginx]     # default idgate; cached, one token
#   SERVER_NICE=-5 bench/sched.sh     # an experiment: the server at another
#                                     # nice level (root), to see the effect
#   SERVER_SCHED=batch bench/sched.sh # the same, under SCHED_BATCH (chrt)
#   TOP=40 IDGATE=build/idgate bench/sched.sh   # more symbols, another build
#   PERF_SECS=5 SECS=14 bench/sched.sh  # record the CPU split for 5 s, not 1
#                                     # (steadier per-symbol figures; SECS
#                                     # at least 7 + PERF_SECS)
#   TOKENS=target/bench/sidecar/1000-tokens.txt bench/sched.sh   # tokens in rotation
#   TOKENS=target/bench/sidecar/1000-tokens.txt SERVER_ARGS="--token-cache-capacity 0" \
#     bench/sched.sh                  # idgate's extra flags (not nginx's):
#                                     # here, every request verifies its signature
#   CONNS=1000 bench/sched.sh         # wrk's connections (default 50)
#   PERF_OF=upstream bench/sched.sh   # the CPU split of the upstream (the
#                                     # nginx behind the server) instead of
#                                     # the server's: what each server's
#                                     # requests cost the upstream
#   RUNS=200 bench/sched.sh           # also the first 200 runs on the core,
#                                     # in order: s (server) or u (upstream),
#                                     # then µs off the core / µs from wake-up
#                                     # to run / µs run
#   SERVER_SHARES=20 UPSTREAM_SHARES=102 bench/sched.sh   # server and upstream
#                                     # in CPU cgroups of those weights, as
#                                     # Kubernetes makes CPU requests of 20m
#                                     # and 100m (root; bench/lib.sh cpu_share;
#                                     # bench/sidecar.sh takes them too)
#
# Needs the files bench/sidecar.sh leaves in OUT (run it first, at least
# with ONLY=none), the release binary, wrk, and perf (Debian linux-perf)
# for the run lengths and the CPU split (kernel, binary, libc: µs per
# request, and the top symbols in µs per request; the recording stays in
# OUT/cpu.data);
# without perf only the switch counts are printed.
# Loopback only; bounded in time (SECS of load, default 10, at least 8).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/target/bench/sidecar}
SERVER=${1:-idgate}
SECS=${SECS:-10}
PERF_SECS=${PERF_SECS:-1}
SERVER_CPU=${SERVER_CPU:-0} CLIENT_CPU=${CLIENT_CPU:-1}
tokens=${TOKENS:-$OUT/one-token.txt}
[[ -f $tokens ]] || { echo "run bench/sidecar.sh first (no $tokens)" >&2; exit 1; }
TOKEN=$(head -n 1 "$tokens")
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
trap cleanup EXIT

# The measured window runs from 2 s to about 7 s into the load.
(( SECS >= 7 + PERF_SECS )) || die "SECS=$SECS: at least 7 + PERF_SECS ($PERF_SECS), so the load outlasts the measured window"
case $SERVER in
  idgate|nginx) ;;
  *) die "unknown server $SERVER (idgate or nginx)" ;;
esac
start_upstream
# shellcheck disable=SC2086 # SERVER_ARGS: words on purpose
start_server "$SERVER" ${SERVER_ARGS:-}

taskset -c "$CLIENT_CPU" wrk -t 1 -c "${CONNS:-50}" -d "${SECS}s" -s "$ROOT/bench/wrk-tokens.lua" \
  "http://127.0.0.1:$SERVER_PORT/" -- "$tokens" > "$OUT/sched-wrk.txt" &
load=$!
sleep 2 # into the load; the window below is timed by its own reads
s0=$(switches "$SERVER_PID"); u0=$(switches "$UPSTREAM_PID"); t0=$(date +%s.%N)
# The kinds that tell who gave way: the server preempted, the upstream
# going to sleep when it has nothing left (BENCHMARKS.md, "Memory after a
# burst", last paragraph).
si0=$(switches "$SERVER_PID" nonvoluntary_); uv0=$(switches "$UPSTREAM_PID" voluntary_)
if command -v perf >/dev/null; then
  perf sched record -q -C "$SERVER_CPU" -o "$OUT/sched.data" -- sleep 1 >/dev/null 2>&1 || true
  # Where the server's own CPU time goes (or the upstream's, PERF_OF):
  # kernel, its binary, libc.
  case ${PERF_OF:-server} in
    server) of=$SERVER_PID ;;
    upstream) of=$UPSTREAM_PID ;;
    *) die "PERF_OF=$PERF_OF: server or upstream" ;;
  esac
  perf record -q -e cpu-clock -F 4999 -p "$of" -o "$OUT/cpu.data" -- sleep "$PERF_SECS" >/dev/null 2>&1 || true
fi
sleep 2
s1=$(switches "$SERVER_PID"); u1=$(switches "$UPSTREAM_PID"); t1=$(date +%s.%N)
si1=$(switches "$SERVER_PID" nonvoluntary_); uv1=$(switches "$UPSTREAM_PID" voluntary_)
wait "$load"
rps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' "$OUT/sched-wrk.txt")
awk -v s="$((s1 - s0))" -v u="$((u1 - u0))" -v si="$((si1 - si0))" -v uv="$((uv1 - uv0))" \
  -v t="$(echo "$t1 - $t0" | bc)" -v r="$rps" -v n="$SERVER" \
  'BEGIN {q = t * r; printf "server=%s rps=%s server_cs_per_req=%.2f (involuntary %.2f) upstream_cs_per_req=%.2f (voluntary %.2f)\n", n, r, s / q, si / q, u / q, uv / q}'
if [[ -f $OUT/sched.data ]]; then
  # One line per run on the core; its last three columns (ms) are the
  # time off the core before it (asleep or runnable), the scheduling delay
  # (from a wake-up to running: perf 6.1, Debian's, prints 0 for a task
  # that was preempted rather than woken), and the run's length. An
  # upstream run under 25 µs answered one request (13-17 µs each here):
  # the upstream woke, preempted the server for that request, and slept
  # (BENCHMARKS.md, "Stop 34: why the uncached path stops short of 3x
  # Envoy"). Requests per upstream run: the rate over the 1 s recorded,
  # whose window is not the switch counts' (so the two need not agree).
  perf sched timehist -i "$OUT/sched.data" 2>/dev/null |
    awk -v s="$SERVER_PID" -v u="$UPSTREAM_PID" -v show="${RUNS:-0}" -v r="$rps" '$3 ~ "\\[(" s "|" u ")\\]" {
        n++; t += $NF; if ($NF >= 0.2) {b++; bt += $NF}
        up = $3 ~ "\\[" u "\\]"
        if (up) {un++; if ($NF < 0.025) us++}
        if (shown < show) {
          printf "%s:%d/%d/%d%s", (up ? "u" : "s"), $(NF - 2) * 1000, $(NF - 1) * 1000, $NF * 1000, (++shown % 10 ? "  " : "\n")
        }
      } END {
        if (shown % 10) print ""
        if (n) printf "runs=%d mean_run_us=%.1f runs_200us_or_more=%d share_of_time_in_them=%.0f%%\n", n, t / n * 1000, b, bt / t * 100
        if (un) printf "upstream_runs=%d under_25us=%d (%.0f%%) requests_per_upstream_run=%.2f\n", un, us, us / un * 100, r / un
      }'
  rm -f "$OUT/sched.data"
fi
if [[ -f $OUT/cpu.data ]]; then
  # cpu-clock counts nanoseconds; over PERF_SECS at rps requests per
  # second each share divides into microseconds per request. By dso, one
  # line (kernel, binary, libc); by symbol, the top ones.
  per_request() {
    perf report -i "$OUT/cpu.data" --stdio --sort "$1" 2>/dev/null |
      awk -v r="$rps" -v secs="$PERF_SECS" -v by="$1" '/^# Event count/ {ns = $NF} /^ +[0-9.]+%/ && ns {
          sub("%", "", $1); us = ns * $1 / 100 / 1000 / r / secs
          if (by == "dso") { d = $2; gsub(/[][]|\.kallsyms|\.so.*/, "", d); printf "%s_us_per_req=%.1f ", d, us }
          else printf "%7.2f us/req %s\n", us, substr($0, index($0, $2))
        } END {if (by == "dso") print ""}'
  }
  per_request dso
  per_request sym | head -n "${TOP:-12}" || true
  # Kept for a closer look: perf report -i OUT/cpu.data --sort dso,sym
fi
