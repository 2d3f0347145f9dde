#!/usr/bin/env bash
# Builds `idgate` with profile-guided optimization (PGO): an instrumented
# build serves the load benchmark's own traffic for 36 s, and the
# release build is then laid out and inlined by what that run executed.
# Result: target/pgo/idgate (BENCHMARKS.md, "Profile-guided build").
#
#   bench/pgo.sh
#   IDGATE=target/pgo/idgate NO_BUILD=1 bench/sidecar.sh      # measure it
#   BINS="target/release/idgate target/pgo/idgate" ROUNDS=3 NO_BUILD=1 bench/sidecar.sh
#   BOLT=1 bench/pgo.sh   # then laid out again by llvm-bolt (Debian's
#                         # bolt-N): target/pgo/idgate, and the PGO build
#                         # alone as target/pgo/idgate-nobolt (BENCHMARKS.md,
#                         # "Stop 38"; not what the image ships)
#
# Needs nginx and wrk (Debian packages), curl and taskset, and an
# llvm-profdata of the same LLVM major version as rustc (`rustc -vV`):
# rustup's `llvm-tools` component, or Debian's llvm-N package (llvm-22 for
# rustc 1.95). Nothing else: it mints its own tokens (bench/sidecar.sh with
# ONLY=none, which fetches nothing), so the image build runs it too
# (deploy/docker/Dockerfile). The training traffic is the benchmark's (one
# token, 1,000 tokens, the cache off, a public path; 50 connections and
# one), so on that benchmark the PGO build shows its best case.
# The server and upstream go on one CPU and wrk on another, of those this
# process may use; with only one (a container build), all three share it.
# Loopback only; bounded in time (about 10 minutes, two release builds;
# BOLT=1 adds about 2 minutes).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BOLT=${BOLT:-0}
OUT=${OUT:-$ROOT/target/bench/sidecar}
PGO=${PGO:-$ROOT/target/pgo}
SECS=${SECS:-4}
# The CPUs this process may use ("0-3,6" in taskset's list).
cpus=()
for part in $(taskset -cp $$ | sed 's/.*: //; s/,/ /g'); do
  if [[ $part == *-* ]]; then
    mapfile -t -O "${#cpus[@]}" cpus < <(seq "${part%-*}" "${part#*-}")
  else
    cpus+=("$part")
  fi
done
SERVER_CPU=${SERVER_CPU:-${cpus[0]}} CLIENT_CPU=${CLIENT_CPU:-${cpus[1]:-${cpus[0]}}}

# llvm-profdata for rustc's LLVM: a newer or older major reads or writes
# another profile format.
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=
for c in "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata" \
  "llvm-profdata-$llvm" "/usr/lib/llvm-$llvm/bin/llvm-profdata" llvm-profdata; do
  if command -v "$c" >/dev/null && "$c" --version 2>/dev/null | grep -q "LLVM version $llvm\."; then
    profdata=$c; break
  fi
done
[[ -n $profdata ]] || {
  echo "no llvm-profdata for LLVM $llvm: rustup component add llvm-tools, or apt-get install llvm-$llvm" >&2
  exit 1
}
# BOLT=1: llvm-bolt and merge-fdata, looked for before any build.
bolt='' merge=''
if [[ $BOLT == 1 ]]; then
  for d in "/usr/lib/llvm-$llvm/bin/" ""; do
    if command -v "${d}llvm-bolt" >/dev/null && command -v "${d}merge-fdata" >/dev/null; then
      bolt=${d}llvm-bolt merge=${d}merge-fdata; break
    fi
  done
  [[ -n $bolt ]] || { echo "BOLT=1: no llvm-bolt and merge-fdata (apt-get install bolt-$llvm)" >&2; exit 1; }
fi

build() { # target-dir rustflags package binary
  (cd "$ROOT" && RUSTFLAGS=$2 CARGO_TARGET_DIR=$1 cargo build --release --locked --quiet \
    -p "$3" --bin "$4")
}

echo "[pgo] instrumented build ($PGO/gen)" >&2
build "$PGO/gen" "-Cprofile-generate=$PGO/data" idgate-sidecar idgate
# loadkit mints the tokens. Built apart, so idgate's dependencies are
# built with idgate's features alone, as in the optimized build; in the
# same target directory, so what the two share is built once.
build "$PGO/gen" "-Cprofile-generate=$PGO/data" idgate-loadkit loadkit
# Tokens and the upstream's config, minted afresh unless under 20 minutes
# old (they live an hour).
NO_BUILD=1 ONLY=none CACHE_TOKENS=1000 LOADKIT=$PGO/gen/release/loadkit "$ROOT/bench/sidecar.sh"
# Build scripts and loadkit ran instrumented too and left their profiles here.
rm -rf "$PGO/data"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
trap cleanup EXIT
IDGATE=$PGO/gen/release/idgate
TOKEN=$(head -n 1 "$OUT/one-token.txt")
load() { # label connections tokens-file
  taskset -c "$CLIENT_CPU" wrk -t 1 -c "$2" -d "${SECS}s" -s "$ROOT/bench/wrk-tokens.lua" \
    "http://127.0.0.1:$SERVER_PORT/" -- "$3" | grep '^BENCH' | sed "s|^|[pgo] $1: |" >&2
}
# train: the training traffic, through IDGATE, one server process per
# set of flags; each writes its profile as it exits.
train() {
  start_upstream
  for args in "" "--token-cache-capacity 0" "--public-path /"; do
    label="idgate serve ${args:-(defaults)}"
    # shellcheck disable=SC2086 # the flags are words
    start_server idgate $args
    load "$label" 50 "$OUT/one-token.txt"
    load "$label" 50 "$OUT/1000-tokens.txt"
    load "$label" 1 "$OUT/one-token.txt"
    stop_server # SIGTERM: a clean exit writes the profile
  done
  cleanup
}
train
trap - EXIT
profiles=("$PGO"/data/*.profraw)
[[ -e ${profiles[0]} ]] || { echo "the instrumented idgate wrote no profile in $PGO/data" >&2; exit 1; }
"$profdata" merge -o "$PGO/idgate.profdata" "${profiles[@]}"
# Cargo rebuilds when the flags change, not when the file they name does:
# the profile goes by its hash, so a new one makes a new build.
used=$PGO/idgate-$(sha256sum "$PGO/idgate.profdata" | cut -c1-16).profdata
cp "$PGO/idgate.profdata" "$used"

echo "[pgo] optimized build ($PGO/use)" >&2
relocs=
# BOLT lays the linked binary out again, and needs its relocations kept.
[[ $BOLT == 1 ]] && relocs=" -Clink-arg=-Wl,--emit-relocs"
build "$PGO/use" "-Cprofile-use=$used$relocs" idgate-sidecar idgate
install -m 0755 "$PGO/use/release/idgate" "$PGO/idgate"
echo "[pgo] $PGO/idgate" >&2
[[ $BOLT == 1 ]] || exit 0

# BOLT=1: then llvm-bolt instruments the PGO build, which serves the same
# training traffic, and lays it out again by what ran: functions ordered,
# and split into the parts that ran and those that did not; blocks
# ordered. The PGO build alone stays as $PGO/idgate-nobolt.
mkdir -p "$PGO/bolt"
rm -f "$PGO/bolt/"*.fdata
"$bolt" "$PGO/idgate" --instrument -o "$PGO/bolt/idgate-inst" --instrumentation-file-append-pid \
  --instrumentation-file="$PGO/bolt/train" >"$PGO/bolt/instrument.log" 2>&1 ||
  { cat "$PGO/bolt/instrument.log" >&2; exit 1; }
IDGATE=$PGO/bolt/idgate-inst
trap cleanup EXIT
train
trap - EXIT
fdata=("$PGO"/bolt/train*.fdata)
[[ -e ${fdata[0]} ]] || { echo "the instrumented idgate wrote no BOLT profile in $PGO/bolt" >&2; exit 1; }
"$merge" "${fdata[@]}" >"$PGO/bolt/idgate.fdata"
"$bolt" "$PGO/idgate" -o "$PGO/bolt/idgate" --data="$PGO/bolt/idgate.fdata" \
  --reorder-blocks=ext-tsp --reorder-functions=cdsort --split-functions --split-all-cold \
  --split-eh --icf=all --use-gnu-stack --dyno-stats >"$PGO/bolt/optimize.log" 2>&1 ||
  { cat "$PGO/bolt/optimize.log" >&2; exit 1; }
mv "$PGO/idgate" "$PGO/idgate-nobolt"
install -m 0755 "$PGO/bolt/idgate" "$PGO/idgate"
echo "[pgo] $PGO/idgate (BOLT; the PGO build alone: $PGO/idgate-nobolt)" >&2
