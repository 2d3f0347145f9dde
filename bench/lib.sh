# Shared by bench/sidecar.sh, bench/sched.sh and bench/profile.sh
# (sourced, not run): the names, ports and start lines of the servers
# under test, so a change to idgate's benchmark flags is made once. Needs
# ROOT, OUT, SERVER_CPU and, for start_server, TOKEN (a token the server
# must answer 200 to).

AUD=https://bench.idgate.test
EMAIL=invoker@bench-project.iam.gserviceaccount.com
P_UP=18081 P_JWKS=18082 P_NGINX=18080 P_IDGATE=18090 P_IDGATE_ADMIN=18091 P_ENVOY=18100 P_ENVOY_ADMIN=18101 P_BARE=18110
IDGATE=${IDGATE:-$ROOT/target/release/idgate}
BARE_PROXY=${BARE_PROXY:-$ROOT/target/release/bare-proxy}
ENVOY=$OUT/envoy-wheel/envoy/_bin/envoy
SERVER_PID=
UPSTREAM_PID=

TICK=$(getconf CLK_TCK)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# cpu_ticks PID: user + system CPU of a process so far, in TICKs.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# status_kib PID FIELD: a /proc/PID/status field (VmRSS, VmHWM) in KiB.
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
die() { log "error: $*"; exit 1; }

cleanup() {
  [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
  [[ -n $UPSTREAM_PID ]] && kill "$UPSTREAM_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}

# nginx_main DIR: the top of the nginx.conf of a server run from DIR: one
# process in the foreground, with room for many connections.
nginx_main() {
  cat <<EOF
daemon off; master_process off; worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 16384; }
EOF
}

# nginx_jwks: the server block that serves OUT/jwks.json on P_JWKS.
nginx_jwks() {
  cat <<EOF
  server {
    listen 127.0.0.1:$P_JWKS;
    location = /jwks.json { root $OUT; default_type application/json; add_header Cache-Control "max-age=3600"; }
  }
EOF
}

# The upstream nginx (also serving the JWKS), pinned to SERVER_CPU, in a
# CPU cgroup of UPSTREAM_SHARES if set (cpu_share).
start_upstream() {
  taskset -c "$SERVER_CPU" nginx -p "$OUT/nginx-up" -c "$OUT/nginx-up/nginx.conf" -e "$OUT/nginx-up/error.log" &
  UPSTREAM_PID=$!
  for _ in $(seq 50); do
    if curl -fs "http://127.0.0.1:$P_UP/" >/dev/null; then
      if [[ -n ${UPSTREAM_SHARES:-} ]]; then cpu_share upstream "$UPSTREAM_SHARES" "$UPSTREAM_PID"; fi
      return
    fi
    sleep 0.1
  done
  die "upstream did not start"
}

# start_server NAME [ARGS...]: the server under test (nginx, idgate,
# envoy with its config file as ARGS, or bare: loadkit's bare-proxy, the
# hyper floor, with its gate's JWKS URL, audience and member as ARGS), pinned to SERVER_CPU at nice
# SERVER_NICE (default 0), under the scheduling policy SERVER_SCHED (other,
# the default, or batch: chrt's names), with SERVER_SLICE_US, if set, as
# the EEVDF slice of its threads (bench/slice.py), in a CPU cgroup of
# SERVER_SHARES if set (cpu_share). Sets SERVER_PID and SERVER_PORT
# once the server answers TOKEN with 200. IDGATE_UPSTREAM points idgate at
# another upstream URL; PROBE_FLAGS are curl's for that probe
# (--http2-prior-knowledge for an h2c-only chain).
start_server() {
  local name=$1; shift
  local port
  local pin=(taskset -c "$SERVER_CPU" chrt "--${SERVER_SCHED:-other}" 0 nice -n "${SERVER_NICE:-0}")
  case $name in
    nginx)
      "${pin[@]}" nginx -p "$OUT/nginx-proxy" -c "$OUT/nginx-proxy/nginx.conf" -e "$OUT/nginx-proxy/error.log" &
      port=$P_NGINX ;;
    idgate)
      "${pin[@]}" "$IDGATE" serve --listen "127.0.0.1:$P_IDGATE" --admin-listen "127.0.0.1:$P_IDGATE_ADMIN" \
        --upstream "${IDGATE_UPSTREAM:-http://127.0.0.1:$P_UP}" --jwks-url "http://127.0.0.1:$P_JWKS/jwks.json" \
        --audience "$AUD" --member "serviceAccount:$EMAIL" "$@" 2>>"$OUT/idgate.log" &
      port=$P_IDGATE ;;
    envoy)
      "${pin[@]}" "$ENVOY" -c "$1" --concurrency 1 --disable-hot-restart -l error \
        --base-id $RANDOM 2>>"$OUT/envoy.log" &
      port=$P_ENVOY ;;
    bare)
      "${pin[@]}" "$BARE_PROXY" "127.0.0.1:$P_BARE" "127.0.0.1:$P_UP" "$@" 2>>"$OUT/bare-proxy.log" &
      port=$P_BARE ;;
    *) die "unknown server $name (nginx, idgate, envoy or bare)" ;;
  esac
  SERVER_PID=$!
  for _ in $(seq 100); do
    # shellcheck disable=SC2086 # PROBE_FLAGS: words on purpose
    if [[ $(curl -s -o /dev/null -w '%{http_code}' ${PROBE_FLAGS:-} -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$port/") == 200 ]]; then
      SERVER_PORT=$port
      if [[ -n ${SERVER_SLICE_US:-} ]]; then
        python3 "$(dirname "${BASH_SOURCE[0]}")/slice.py" "$SERVER_PID" "$SERVER_SLICE_US"
      fi
      if [[ -n ${SERVER_SHARES:-} ]]; then cpu_share server "$SERVER_SHARES" "$SERVER_PID"; fi
      return
    fi
    sleep 0.1
  done
  die "$name did not answer 200 on :$port (see $OUT)"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# cpu_share NAME SHARES PID: moves process PID into its own CPU cgroup
# (bench-NAME, under the root) of weight SHARES, in cgroup v1's
# `cpu.shares` units: what Kubernetes gives a container per CPU request
# (1,024 a core: 20m is 20, 100m is 102). Under cgroup v2 the weight is the
# OCI runtime's older linear conversion of those shares, 1 + (SHARES - 2) *
# 9999 / 262142 (runc 1.3.2 and crun 1.23 on convert by a curve: 20m and
# 100m come out nearer to each other). On a shared core the scheduler
# divides time between the groups by these weights (BENCHMARKS.md, "The
# sidecar's CPU request"). Root only; the groups stay, empty. A process
# left out stays in the root group, as a group of 1,024 would weigh it.
cpu_share() {
  local name=$1 shares=$2 pid=$3 dir
  [[ $shares =~ ^[0-9]+$ ]] && ((shares >= 2)) || die "$name: shares must be a whole number, 2 or more (not $shares)"
  if [[ -f /sys/fs/cgroup/cpu/cpu.shares ]]; then
    dir=/sys/fs/cgroup/cpu/bench-$name
    mkdir -p "$dir" && echo "$shares" >"$dir/cpu.shares"
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    dir=/sys/fs/cgroup/bench-$name
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control ||
      echo +cpu >/sys/fs/cgroup/cgroup.subtree_control ||
      die "cannot enable the cpu controller for the root's children (root only; a root with processes of its own refuses)"
    mkdir -p "$dir" && echo $((1 + (shares - 2) * 9999 / 262142)) >"$dir/cpu.weight"
  else
    die "no cgroup cpu controller to put $name in (neither v1's /sys/fs/cgroup/cpu nor cpu in v2's cgroup.controllers)"
  fi || die "cannot make the cgroup $dir (root only)"
  echo "$pid" >"$dir/cgroup.procs" || die "cannot move $name ($pid) into $dir"
}

# switches PID [voluntary_|nonvoluntary_]: context switches of every
# thread of process PID, all of them or only those of one kind.
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk -v k="${2:-}" '(k == "" && $1 ~ /ctxt_switches:$/) || $1 == k "ctxt_switches:" {n += $2} END {print n + 0}'
}
