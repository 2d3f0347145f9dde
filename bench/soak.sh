#!/usr/bin/env bash
# Soak: sustained load against the real `idgate serve` on loopback while the
# issuer rotates its signing key every minute and the policy file is
# rewritten every 30 s. Not run in CI. See RELIABILITY.md, "Faults and soak".
#
#   bench/soak.sh                     # 10 minutes, debug binary
#   SOAK_SECS=180 bench/soak.sh       # a shorter run
#   SOAK_RELEASE=1 bench/soak.sh      # build and soak the release binary
#
# It runs the ignored test `soak` in tests/tests/sidecar_faults.rs: an
# in-process testkit issuer, an echo upstream, the sidecar as a child
# process, and CLIENTS request loops paced to RPS in total, each request one
# of: Alice (allowed), Mallory (403 not_allowed), Bob (allowed only by every
# other policy generation; not checked for 3 s after a rewrite), no token
# (401 missing_token), a token for another audience (401
# audience_mismatch), a never-seen token (a full signature check).
#
# Every SAMPLE_SECS it prints requests, wrong decisions, 5xx, requests with
# no answer, the sidecar's RSS and peak (/proc/PID/status), its open fds and
# the latency p50/p99 of the period. It fails on any wrong decision, any 5xx
# (none is injected), any request without an answer, or RSS growing after
# the first minute by more than 20 % (at least 8 MiB).
#
# Settings (environment):
#   SOAK_SECS=600        how long
#   RPS=200 CLIENTS=8    total request rate, concurrent request loops
#   ROTATE_SECS=60       key rotation period (the sidecar's forced-refresh
#                        interval is set to half of it, at most 30 s)
#   POLICY_SECS=30       policy rewrite period
#   SAMPLE_SECS=30       report period
#   TOKEN_CACHE=1000     the sidecar's --token-cache-capacity: small enough to
#                        fill in the first minute, so later growth is a leak
#                        (the default 10,000 takes ~5 min at 200 req/s and
#                        adds ~10 MiB before RSS levels off)
#   SOAK_RELEASE=1       cargo build --release the binary and soak that
#   IDGATE_BIN=path      soak this binary instead
#   LOG=target/soak.log  where the report is also written
set -euo pipefail
cd "$(dirname "$0")/.."

export IDGATE_SOAK_SECS="${SOAK_SECS:-600}"
export IDGATE_SOAK_RPS="${RPS:-200}"
export IDGATE_SOAK_CLIENTS="${CLIENTS:-8}"
export IDGATE_SOAK_ROTATE_SECS="${ROTATE_SECS:-60}"
export IDGATE_SOAK_POLICY_SECS="${POLICY_SECS:-30}"
export IDGATE_SOAK_SAMPLE_SECS="${SAMPLE_SECS:-30}"
export IDGATE_SOAK_TOKEN_CACHE="${TOKEN_CACHE:-1000}"
log="${LOG:-target/soak.log}"

if [[ "${SOAK_RELEASE:-0}" == 1 && -z "${IDGATE_BIN:-}" ]]; then
    cargo build --release -p idgate-sidecar --bin idgate
    export IDGATE_BIN="$PWD/target/release/idgate"
fi

mkdir -p "$(dirname "$log")"
echo "soak: $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$log"
# The sidecar's JSON log lines appear only if the run fails.
cargo test -p idgate-e2e --test sidecar_faults -- --ignored --exact soak --nocapture 2>&1 \
    | grep --line-buffered -v '^{"' | tee -a "$log"
