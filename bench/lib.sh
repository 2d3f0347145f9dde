# shellcheck shell=bash
# Shared by bench/sidecar.sh, bench/interleave.sh, bench/sched.sh and
# bench/profile.sh (sourced, not run): the names, ports and start lines of
# the servers under test and the measured run, so a change to idgate's
# benchmark flags or to a result's columns is made once. Needs ROOT, OUT,
# SERVER_CPU; for start_server, TOKEN (a token the server must answer 200
# to); for wrk_run, measure_run and fixed_rate_run, BENCH, CLIENT_CPU,
# DURATION and RESULTS, and for rate_load and fixed_rate_run OHA, RATE,
# CONNS and TOKEN too.

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

# nginx_hop DIR PORT [LINES]: the http block of nginx's plain proxy hop
# run from DIR, listening on PORT, to the upstream with keep-alive; LINES
# (directives, one per line) go in its location after the proxy's own.
nginx_hop() {
  local nl=$'\n'
  cat <<EOF
$(nginx_main "$1")
http {
  access_log off;
  keepalive_requests 100000000; keepalive_timeout 300s;
  upstream app { server 127.0.0.1:$P_UP; keepalive 1024; keepalive_requests 100000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:$2 backlog=4096;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";${3:+$nl$3}
    }
  }
}
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

# readme_block LANG NEEDLE: the one block of README.md fenced as LANG that
# contains NEEDLE (a plain string), as written there; fails, saying so,
# unless exactly one does. The same rule as readme_block in
# tests/tests/sidecar_forward_auth.rs, which runs the same recipes.
readme_block() {
  awk -v lang="$1" -v needle="$2" '
    $0 == "```" lang { block = 1; text = ""; next }
    block && /^```$/ {
      block = 0
      if (index(text, needle)) { found++; out = text }
      next
    }
    block { text = text $0 "\n" }
    END {
      if (found != 1) {
        print "README.md: not one " lang " block with " needle " (" found + 0 ")" > "/dev/stderr"
        exit 1
      }
      printf "%s", out
    }' "$ROOT/README.md"
}

# authreq_conf DIR PORT IDGATE_PORT [DROP [IN]]: the nginx.conf of a front
# nginx run from DIR on PORT, with README.md's forward-auth recipe (its one
# nginx block with auth_request: the lines before `location / {` in
# `http`, the rest in the `server`), idgate on IDGATE_PORT for the
# recipe's 127.0.0.1:8080 and the upstream for its app at 127.0.0.1:8081.
# DROP, an awk regex: the recipe's lines it matches are left out (the
# recipe without keep-alive, say), only within the blocks whose first line
# matches IN when given (`^upstream idgate`); it must match one line at
# least.
authreq_conf() {
  local dir=$1 port=$2 idgate=$3 drop=${4:-} in=${5:-} block
  block=$(readme_block nginx auth_request) || return 1
  nginx_main "$dir"
  echo "http {"
  echo "  access_log off;"
  echo "  keepalive_requests 100000000; keepalive_timeout 300s;"
  DROP=$drop WITHIN=$in awk -v port="$port" -v idgate="127.0.0.1:$idgate" -v app="127.0.0.1:$P_UP" '
    function fail(msg) { print "README.md recipe: " msg > "/dev/stderr"; exit 1 }
    BEGIN { drop = ENVIRON["DROP"]; within = ENVIRON["WITHIN"] }
    {
      line = $0
      if (line ~ /^[^ #].*\{/) block_head = line
      if (line ~ /^\}/) block_head = ""
      if (drop != "" && line ~ drop && (within == "" || block_head ~ within)) { dropped++; next }
      if (!server && line ~ /^location \/ \{/) { server = 1; printf "  server {\n    listen 127.0.0.1:%s backlog=4096;\n", port }
      if (!server && sub(/server 127\.0\.0\.1:8080;/, "server " idgate ";", line)) to_idgate++
      if (!server && sub(/server 127\.0\.0\.1:8081;/, "server " app ";", line)) to_app++
      print (server ? "    " : "  ") line
    }
    END {
      if (!server) fail("no location /")
      if (to_idgate != 1 || to_app != 1) fail("not one upstream server 127.0.0.1:8080 and one 127.0.0.1:8081")
      if (drop != "" && !dropped) fail("no line matches " drop)
      print "  }"
      print "}"
    }' <<<"$block"
}

# extauthz_conf PORT IDGATE_PORT [MODE]: the envoy.yaml of a front Envoy on
# PORT, README.md's Envoy forward-auth recipe as written there (its one
# yaml block with envoy.filters.http.ext_authz), idgate on IDGATE_PORT for
# the recipe's 8080 and the upstream (APP_PORT if set) for its app's 8081.
# MODE h1: the recipe with HTTP/1.1 to idgate instead of its h2c; hop:
# without its two auth filters (ext_authz and the header_mutation before
# it), Envoy's plain proxy hop; pass-token: that hop passing the token on
# (for idgate's proxy behind it).
extauthz_conf() {
  local port=$1 idgate=$2 mode=${3:-} block
  block=$(readme_block yaml envoy.filters.http.ext_authz) || return 1
  awk -v port="$port" -v idgate="$idgate" -v app="${APP_PORT:-$P_UP}" -v mode="$mode" '
    function fail(msg) { print "README.md recipe: " msg > "/dev/stderr"; exit 1 }
    { out = out $0 "\n" }
    END {
      n1 = gsub(/address: 0\.0\.0\.0, port_value: 8000 /, "address: 127.0.0.1, port_value: " port " ", out)
      n2 = gsub(/address: 127\.0\.0\.1, port_value: 8080 /, "address: 127.0.0.1, port_value: " idgate " ", out)
      n3 = gsub(/address: 127\.0\.0\.1, port_value: 8081 /, "address: 127.0.0.1, port_value: " app " ", out)
      if (n1 != 1 || n2 != 1 || n3 != 1) fail("not one listener on 0.0.0.0:8000, one idgate on 127.0.0.1:8080 and one app on 127.0.0.1:8081")
      if (mode == "h1" && gsub(/http2_protocol_options: \{\}/, "http_protocol_options: {}", out) != 1)
        fail("not one http2_protocol_options for idgate")
      if (mode != "hop" && mode != "pass-token") { printf "%s", out; exit }
      # hop: leave out each of the two filters, from its "- name:" line to
      # the next line as little indented (the next filter, or what follows).
      k = split(out, lines, "\n"); skip = -1; left_out = 0; kept = 0
      for (j = 1; j < k; j++) {
        line = lines[j]; match(line, /^ */); indent = RLENGTH
        if (skip >= 0 && indent <= skip && line !~ /^ *#/) skip = -1
        if (skip < 0 && line ~ /^ *- name: envoy\.filters\.http\.(ext_authz|header_mutation)$/) { skip = indent; left_out++ }
        if (mode == "pass-token" && line ~ /^ *request_headers_to_remove: \[authorization,/) { kept++; continue }
        if (skip < 0) print line
      }
      if (left_out != 2) fail("not the two auth filters (" left_out ")")
      if (mode == "pass-token" && kept != 1) fail("not one request_headers_to_remove for the token")
    }' <<<"$block"
}

# idgate_line [FLAGS...]: sets IDGATE_LINE to `IDGATE serve` on P_IDGATE
# (admin on P_IDGATE_ADMIN) with the bench's JWKS, audience and member,
# then FLAGS (`--upstream URL`, or `--mode forward-auth`, and the rest).
idgate_line() {
  IDGATE_LINE=("$IDGATE" serve --listen "127.0.0.1:$P_IDGATE" --admin-listen "127.0.0.1:$P_IDGATE_ADMIN"
    --jwks-url "http://127.0.0.1:$P_JWKS/jwks.json" --audience "$AUD" --member "serviceAccount:$EMAIL" "$@")
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
# hyper floor, with its gate's JWKS URL, audience and member as ARGS;
# idgate-fa, idgate in forward-auth mode, and front, a front nginx with
# its directory and port as ARGS, for forward-auth), pinned to SERVER_CPU at nice
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
    idgate|idgate-fa)
      if [[ $name == idgate ]]; then
        idgate_line --upstream "${IDGATE_UPSTREAM:-http://127.0.0.1:$P_UP}" "$@"
      else
        idgate_line --mode forward-auth "$@"
      fi
      "${pin[@]}" "${IDGATE_LINE[@]}" 2>>"$OUT/idgate.log" &
      port=$P_IDGATE ;;
    envoy)
      "${pin[@]}" "$ENVOY" -c "$1" --concurrency 1 --disable-hot-restart -l error \
        --base-id $RANDOM 2>>"$OUT/envoy.log" &
      port=$P_ENVOY ;;
    bare)
      "${pin[@]}" "$BARE_PROXY" "127.0.0.1:$P_BARE" "127.0.0.1:$P_UP" "$@" 2>>"$OUT/bare-proxy.log" &
      port=$P_BARE ;;
    front)
      "${pin[@]}" nginx -p "$1" -c "$1/nginx.conf" -e "$1/error.log" &
      port=$2 ;;
    *) die "unknown server $name (nginx, idgate, idgate-fa, front, envoy or bare)" ;;
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

# envoy_config CACHE_SIZE [h2]: Envoy's config for the envoy variants,
# listening on P_ENVOY (admin on P_ENVOY_ADMIN), jwt_authn with the same
# JWKS (a file), issuer and audience as idgate's; CACHE_SIZE 0 turns its
# JWT cache off. With h2, it speaks h2c (prior knowledge) to the upstream
# at P_UP, as idgate does for HTTP/2 callers.
envoy_config() {
  local cache="" h2=""
  [[ $1 -gt 0 ]] && cache="jwt_cache_config: { jwt_cache_size: $1 }"
  [[ ${2:-} == h2 ]] && h2='typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } } }'
  cat <<EOF
# Envoy with jwt_authn: same JWKS (inline file), issuer and audience.
admin: { address: { socket_address: { address: 127.0.0.1, port_value: $P_ENVOY_ADMIN } } }
static_resources:
  listeners:
  - name: ingress
    address: { socket_address: { address: 127.0.0.1, port_value: $P_ENVOY } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [ { match: { prefix: "/" }, route: { cluster: app } } ]
          http_filters:
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                google:
                  issuer: https://accounts.google.com
                  audiences: [ "$AUD" ]
                  local_jwks: { filename: "$OUT/jwks.json" }
                  forward: true
                  $cache
              rules: [ { match: { prefix: "/" }, requires: { provider_name: google } } ]
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: app
    type: STATIC
    connect_timeout: 5s
    circuit_breakers: { thresholds: [ { max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 } ] }
    $h2
    load_assignment:
      cluster_name: app
      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $P_UP } } } } ] } ]
EOF
}

# busy_ticks: every core's busy time so far (user, nice, system, irq,
# softirq, steal), in TICKs.
busy_ticks() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
load1() { cut -d' ' -f1 /proc/loadavg; }

# wrk_run SECONDS CONNS TOKENS_FILE: prints wrk's BENCH line. Every
# request is a POST with BODY_BYTES of body if that is set and not 0.
wrk_run() {
  local secs=$1 conns=$2 tokens=$3
  ( ulimit -n "$(ulimit -Hn)"
    taskset -c "$CLIENT_CPU" wrk -t 1 -c "$conns" -d "${secs}s" --timeout 10s \
      -s "$BENCH/wrk-tokens.lua" "http://127.0.0.1:$SERVER_PORT/" -- "$tokens" "${BODY_BYTES:-0}" ) |
    grep '^BENCH' || true
}

# body_args: oha's arguments for a POST of BODY_BYTES (none for 0 or
# unset), the body in OUT/body-BODY_BYTES.bin.
body_args() {
  local n=${BODY_BYTES:-0} file
  [[ $n =~ ^[0-9]+$ ]] || die "BODY_BYTES=$n is not a count of bytes"
  (( n > 0 )) || return 0
  file=$OUT/body-$n.bin
  [[ -f $file ]] || head -c "$n" /dev/zero | tr '\0' x >"$file"
  BODY_ARGS=(-m POST -T application/octet-stream -D "$file")
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# idgate's verified-token cache counters: "HITS MISSES HOT_HITS" (empty
# for others; a front proxy's, EXTRA_PID set, are its idgate's).
cache_counters() {
  [[ $1 == idgate || -n ${EXTRA_PID:-} ]] || return 0
  curl -s "http://127.0.0.1:$P_IDGATE_ADMIN/metrics" |
    awk '/^[a-z_]*token_cache_hits_total/ {h = $2} /^[a-z_]*token_cache_misses_total/ {m = $2}
      /^[a-z_]*token_cache_hot_hits_total/ {t = $2} END {print h + 0, m + 0, t + 0}'
}
# hit_pct "H0 M0 T0" "H1 M1 T1": hits in % of lookups, then the hot slots'
# share in % of hits, between the two readings.
hit_pct() {
  [[ -n $1 ]] || { printf '\t'; return 0; }
  awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); h = y[1] - x[1]; m = y[2] - x[2]; t = y[3] - x[3];
    if (h + m > 0) printf "%.1f", h * 100 / (h + m); printf "\t"; if (h > 0) printf "%.1f", t * 100 / h}'
}

header() {
  printf 'variant\tserver\trps\tp50_us\tp99_us\tp999_us\terrors\tcpu_us_per_req\tserver_core_pct\tupstream_cpu_us_per_req\tvm_hwm_kib\tvm_rss_kib\tbusy_before_pct\tforeign_cpu_pct\tload1\tcache_hit_pct\thot_hit_pct\tserver_cs_per_req\tupstream_cs_per_req\textra_cpu_us_per_req\n' > "$RESULTS"
}

# server_sum FUNC: FUNC (cpu_ticks or switches) of the server under test,
# SERVER_PID, plus EXTRA_PID's when set (forward-auth: the front nginx and
# idgate together). Dies when either process is gone.
server_sum() {
  local pid n total=0
  for pid in "$SERVER_PID" ${EXTRA_PID:+"$EXTRA_PID"}; do
    [[ -r /proc/$pid/stat ]] || die "server process $pid is gone"
    n=$("$1" "$pid")
    total=$((total + n))
  done
  echo "$total"
}

# measure_run VARIANT SERVER TOKENS_FILE CONNS BUSY: one measured run of
# DURATION seconds against SERVER_PID on SERVER_PORT (idgate's admin on
# P_IDGATE_ADMIN), a row of RESULTS (header) with BUSY as busy_before_pct.
# CPU and switches count EXTRA_PID's too, when set, and its CPU alone is
# the last column; memory is SERVER_PID's.
measure_run() {
  local variant=$1 server=$2 tokens=$3 conns=$4 busy=$5
  local c0 u0 b0 e0 c1 u1 b1 e1 k0 k1 line reqs secs cpu_us up_us total_us ours_us s0 s1 v0 v1
  k0=$(cache_counters "$server")
  c0=$(server_sum cpu_ticks); u0=$(cpu_ticks "$UPSTREAM_PID"); b0=$(busy_ticks) e0=${EXTRA_PID:+$(cpu_ticks "$EXTRA_PID")}
  s0=$(server_sum switches); v0=$(switches "$UPSTREAM_PID")
  log "$variant: measuring ${DURATION}s, $conns connections"
  line=$(wrk_run "$DURATION" "$conns" "$tokens")
  c1=$(server_sum cpu_ticks); u1=$(cpu_ticks "$UPSTREAM_PID"); b1=$(busy_ticks) e1=${EXTRA_PID:+$(cpu_ticks "$EXTRA_PID")}
  s1=$(server_sum switches); v1=$(switches "$UPSTREAM_PID")
  k1=$(cache_counters "$server")
  [[ -n $line ]] || die "$variant: wrk printed no result"
  reqs=$(field requests "$line"); secs=$(awk -v d="$(field duration_us "$line")" 'BEGIN {print d / 1e6}')
  cpu_us=$(( (c1 - c0) * 1000000 / TICK ))
  up_us=$(( (u1 - u0) * 1000000 / TICK ))
  total_us=$(( (b1 - b0) * 1000000 / TICK ))
  # wrk's own CPU is about one core's share when saturated: what is left
  # beyond server + upstream + one client core is someone else's.
  ours_us=$(awk -v s="$secs" 'BEGIN {print int(s * 1e6)}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.0f\t%.1f\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%s\n' \
    "$variant" "$server" "$(field rps "$line")" "$(field p50_us "$line")" "$(field p99_us "$line")" \
    "$(field p999_us "$line")" "$(field errors "$line")" \
    "$(awk -v c="$cpu_us" -v r="$reqs" 'BEGIN {print c / r}')" \
    "$(awk -v c="$cpu_us" -v s="$secs" 'BEGIN {print c / s / 1e4}')" \
    "$(awk -v c="$up_us" -v r="$reqs" 'BEGIN {print c / r}')" \
    "$(status_kib "$SERVER_PID" VmHWM)" "$(status_kib "$SERVER_PID" VmRSS)" "$busy" \
    "$(awk -v t="$total_us" -v c="$cpu_us" -v u="$up_us" -v o="$ours_us" -v s="$secs" \
        'BEGIN {f = (t - c - u - o) / (s * 1e6 * 2) * 100; print (f < 0 ? 0 : int(f))}')" \
    "$(load1)" "$(hit_pct "$k0" "$k1")" \
    "$(awk -v a="$s0" -v b="$s1" -v r="$reqs" 'BEGIN {print (b - a) / r}')" \
    "$(awk -v a="$v0" -v b="$v1" -v r="$reqs" 'BEGIN {print (b - a) / r}')" \
    "$(awk -v a="$e0" -v b="$e1" -v r="$reqs" -v t="$TICK" 'BEGIN {if (a != "") printf "%.1f", (b - a) * 1e6 / t / r}')" |
    tee -a "$RESULTS" >&2
}

# rate_load SECONDS [OHA ARGS...]: oha (OHA) at RATE req/s with CONNS
# connections and TOKEN against SERVER_PORT, on the client's core.
# With NEWCONN=1, as fast as it goes instead, each request on a connection
# of its own (oha's --disable-keepalive): what a client that keeps no
# connection open costs the server. POSTs BODY_BYTES if set (body_args).
rate_load() {
  local secs=$1; shift
  local pace=(-q "$RATE")
  [[ ${NEWCONN:-0} == 1 ]] && pace=(--disable-keepalive)
  BODY_ARGS=()
  body_args
  taskset -c "$CLIENT_CPU" "$OHA" --no-tui "$@" "${BODY_ARGS[@]}" -z "${secs}s" "${pace[@]}" -c "$CONNS" \
    -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$SERVER_PORT/"
}

# fixed_rate_run VARIANT SERVER BUSY: oha (OHA) at RATE req/s for DURATION
# seconds with CONNS connections and TOKEN, latency corrected for
# coordinated omission (measured from when each request was due); its
# JSON in OUT/VARIANT.json, a row of RESULTS.
fixed_rate_run() {
  local variant=$1 server=$2 busy=$3 c0 c1
  c0=$(cpu_ticks "$SERVER_PID")
  log "$variant: measuring ${DURATION}s $([[ ${NEWCONN:-0} == 1 ]] && echo "a connection per request" || echo "at $RATE req/s")"
  rate_load "$DURATION" --output-format json --latency-correction > "$OUT/$variant.json"
  c1=$(cpu_ticks "$SERVER_PID")
  local rps p50 p99 p999 errors cpu
  IFS=$'\t' read -r rps p50 p99 p999 errors cpu < <(python3 "$BENCH/oha.py" "$OUT/$variant.json" \
    "$(( (c1 - c0) * 1000000 / TICK ))")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\t\t%s\t%s\t%s\t\t%s\t\n' "$variant" "$server" "$rps" "$p50" \
    "$p99" "$p999" "$errors" "$cpu" "$(status_kib "$SERVER_PID" VmHWM)" "$(status_kib "$SERVER_PID" VmRSS)" \
    "$busy" "$(load1)" | tee -a "$RESULTS" >&2
}
