#!/usr/bin/env bash
# postern's benchmark (SPEC §10): postern and its peers (nginx stream and mail, HAProxy, stunnel,
# hitch, from Debian) side by side in front of one sink backend, one worker each, on loopback.
# Prints a table of medians with spread and postern/peer ratios and writes it as markdown.
#
#   bash tests/bench/run.sh [--quick] [--rounds N] [--peers "postern nginx ..."]
#                           [--figures "hs_ecdsa bulk_up ..."] [--out FILE] [--no-install] [--keep]
#                           [--profile]
#
# Run as root on Debian 12. Every process it starts is stopped when it ends, however it ends.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

quick=0
rounds=""
# `ceiling` is no peer: TLS terminated inside the sink's own process (issue 18), the in-process
# limit of this OpenSSL on this machine, which every proxy's figures are compared with.
peers_wanted="postern ceiling nginx haproxy stunnel hitch"
figures_wanted="hs_ecdsa hs_rsa hs_login starttls starttls_login bulk_up bulk_down latency setup idle"
out="$repo/build/bench/results.md"
install=1
keep=0
# --profile: perf samples every proxy during every load figure of the same run, so that each
# figure's cost per session (or per MB) splits into OpenSSL, kernel, libc, event library and the
# proxy's own code (issue 18: which part of the gap to the ceiling is whose).
profile=0
port_base="${BENCH_PORT_BASE:-24000}"

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --rounds) rounds="$2"; shift ;;
    --peers) peers_wanted="$2"; shift ;;
    --figures) figures_wanted="$2"; shift ;;
    --out) out="$2"; shift ;;
    --no-install) install=0 ;;
    --keep) keep=1 ;;
    --profile) profile=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$(id -u)" -ne 0 ]; then
  echo "run.sh: run as root (it installs packages and starts the peers)" >&2
  exit 2
fi

# Bounds of one run once built: full ~9 minutes, --quick ~1.5 minutes.
if [ $quick -eq 1 ]; then
  rounds="${rounds:-1}"; load_s=1.5; setup_count=150; idle_sessions=2000; bulk_chunk=$((16 << 20))
else
  rounds="${rounds:-3}"; load_s=4; setup_count=400; idle_sessions=5000; bulk_chunk=$((32 << 20))
fi
concurrency=32

run_dir="$(mktemp -d /tmp/postern-bench.XXXXXX)"
declare -A PID=()        # root process of each thing started, by name
policy=/usr/sbin/policy-rc.d
made_policy=0

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

stop_pid() {
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do
    stop_pid "${PID[$name]}"
  done
  if [ $made_policy -eq 1 ]; then
    rm -f "$policy"
  fi
  if [ $status -ne 0 ]; then
    log "failed (status $status); logs and configs are in $run_dir"
  elif [ $keep -eq 0 ]; then
    rm -rf "$run_dir"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------------------------
# Packages, without letting their maintainer scripts start any daemon

install_packages() {
  local packages=(build-essential cmake pkg-config libuv1-dev libssl-dev libtomlplusplus-dev
                  prometheus-cpp-dev openssl python3 procps iproute2
                  nginx libnginx-mod-mail libnginx-mod-stream haproxy stunnel4 hitch)
  [ $profile -eq 1 ] && packages+=(linux-perf)
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$run_dir/apt.log" 2>&1 || {
    tail -20 "$run_dir/apt.log" >&2; return 1; }
  if [ $made_policy -eq 1 ]; then
    rm -f "$policy"
    made_policy=0
  fi
}

[ $install -eq 1 ] && install_packages

# ------------------------------------------------------------------------------------------------
# Builds: postern Release and the bench tools, in their own folders under build/bench

build() {
  log "building postern (Release) and the bench tools"
  # -O3 makes GCC 12 report a false -Wrestrict in std::string code, which -Werror turns fatal.
  cmake -S "$repo" -B "$repo/build/bench/postern" -DCMAKE_BUILD_TYPE=Release -DPOSTERN_TESTS=OFF \
        -DCMAKE_CXX_FLAGS=-Wno-restrict >"$run_dir/build.log" 2>&1
  cmake --build "$repo/build/bench/postern" -j2 --target postern >>"$run_dir/build.log" 2>&1 || {
    tail -30 "$run_dir/build.log" >&2; return 1; }
  cmake -S "$here" -B "$repo/build/bench/tools" -DCMAKE_BUILD_TYPE=Release >>"$run_dir/build.log" 2>&1
  cmake --build "$repo/build/bench/tools" -j2 >>"$run_dir/build.log" 2>&1 || {
    tail -30 "$run_dir/build.log" >&2; return 1; }
}
build
postern_bin="$repo/build/bench/postern/postern"
loadgen="$repo/build/bench/tools/loadgen"
sink_bin="$repo/build/bench/tools/sink"
ceiling_bin="$repo/build/bench/tools/ceiling"

# ------------------------------------------------------------------------------------------------
# Certificates: one ECDSA P-256 and one RSA-2048, both for bench.test

certs="$run_dir/certs"
mkdir -p "$certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$certs/ecdsa.key" -out "$certs/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 7 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test \
  -keyout "$certs/rsa.key" -out "$certs/rsa.pem" 2>/dev/null
cat "$certs/ecdsa.pem" "$certs/ecdsa.key" >"$certs/ecdsa-bundle.pem"
cat "$certs/rsa.pem" "$certs/rsa.key" >"$certs/rsa-bundle.pem"
chmod 644 "$certs"/*

# ------------------------------------------------------------------------------------------------
# Ports and configurations (all on 127.0.0.1; below the ephemeral range)

sink_port=$((port_base + 143))
postern_tls=$((port_base + 993));  postern_starttls=$((port_base + 144)); postern_metrics=$((port_base + 464))
nginx_tls=$((port_base + 1993));   nginx_starttls=$((port_base + 1144));  nginx_auth=$((port_base + 1080))
haproxy_tls=$((port_base + 2993))
stunnel_tls=$((port_base + 3993)); stunnel_rsa=$((port_base + 3994));     stunnel_starttls=$((port_base + 3144))
hitch_tls=$((port_base + 4993));   hitch_rsa=$((port_base + 4994))
ceiling_tls=$((port_base + 5993)); ceiling_starttls=$((port_base + 5144))

# Port of a peer for a figure; empty when the peer cannot do it.
port_for() {
  local peer="$1" figure="$2"
  case "$figure" in
    starttls|starttls_login)
      case "$peer" in
        postern) echo $postern_starttls ;; nginx) echo $nginx_starttls ;;
        stunnel) echo $stunnel_starttls ;; ceiling) echo $ceiling_starttls ;; *) echo "" ;;
      esac ;;
    hs_rsa)
      case "$peer" in
        postern) echo $postern_tls ;; nginx) echo $nginx_tls ;; haproxy) echo $haproxy_tls ;;
        stunnel) echo $stunnel_rsa ;; hitch) echo $hitch_rsa ;; ceiling) echo $ceiling_tls ;;
      esac ;;
    *)
      case "$peer" in
        postern) echo $postern_tls ;; nginx) echo $nginx_tls ;; haproxy) echo $haproxy_tls ;;
        stunnel) echo $stunnel_tls ;; hitch) echo $hitch_tls ;; ceiling) echo $ceiling_tls ;;
      esac ;;
  esac
}

write_configs() {
  # postern: both certificates in one identity; the client's signature algorithms choose.
  cat >"$run_dir/postern.toml" <<EOF
[global]
workers = 1
log_level = "warn"
max_connections = 20000
shutdown_grace = "1s"

[metrics]
listen = "127.0.0.1:$postern_metrics"

[limits]
preauth_timeout = "10m"
per_ip_max_connections = 1000000
per_ip_connect_rate = 1000000

[tls]
certificates = [
  { cert = "certs/ecdsa.pem", key = "certs/ecdsa.key" },
  { cert = "certs/rsa.pem", key = "certs/rsa.key" },
]

[[listener]]
name = "imaps"
protocol = "imap"
listen = "127.0.0.1:$postern_tls"
tls = "implicit"
backend = "sink"

[[listener]]
name = "imap"
protocol = "imap"
listen = "127.0.0.1:$postern_starttls"
tls = "starttls"
backend = "sink"

[[backend]]
name = "sink"
servers = ["127.0.0.1:$sink_port"]
EOF

  # nginx: stream terminates TLS; mail does IMAP STARTTLS and asks its own http block where
  # the user lives (auth_http is mandatory for nginx mail).
  mkdir -p "$run_dir/nginx"
  cat >"$run_dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 19000;
pid $run_dir/nginx/nginx.pid;
error_log $run_dir/nginx/error.log warn;
events { worker_connections 18000; }

stream {
  server {
    listen 127.0.0.1:$nginx_tls ssl;
    ssl_certificate $certs/ecdsa.pem;
    ssl_certificate_key $certs/ecdsa.key;
    ssl_certificate $certs/rsa.pem;
    ssl_certificate_key $certs/rsa.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    proxy_pass 127.0.0.1:$sink_port;
    proxy_timeout 10m;
  }
}

mail {
  server_name bench.test;
  auth_http 127.0.0.1:$nginx_auth/auth;
  imap_capabilities IMAP4rev1;
  server {
    listen 127.0.0.1:$nginx_starttls;
    protocol imap;
    starttls only;
    ssl_certificate $certs/ecdsa.pem;
    ssl_certificate_key $certs/ecdsa.key;
    ssl_certificate $certs/rsa.pem;
    ssl_certificate_key $certs/rsa.key;
    ssl_protocols TLSv1.2 TLSv1.3;
  }
}

http {
  access_log off;
  client_body_temp_path $run_dir/nginx/body;
  proxy_temp_path $run_dir/nginx/proxy;
  fastcgi_temp_path $run_dir/nginx/fastcgi;
  uwsgi_temp_path $run_dir/nginx/uwsgi;
  scgi_temp_path $run_dir/nginx/scgi;
  server {
    listen 127.0.0.1:$nginx_auth;
    location = /auth {
      add_header Auth-Status OK;
      add_header Auth-Server 127.0.0.1;
      add_header Auth-Port $sink_port;
      return 204;
    }
  }
}
EOF

  # HAProxy: TCP mode with TLS on the bind line; two crt of the same name are chosen between
  # by the client's signature algorithms.
  cat >"$run_dir/haproxy.cfg" <<EOF
global
  maxconn 9000
  nbthread 1

defaults
  mode tcp
  timeout connect 5s
  timeout client 10m
  timeout server 10m

frontend imaps
  bind 127.0.0.1:$haproxy_tls ssl crt $certs/ecdsa-bundle.pem crt $certs/rsa-bundle.pem
  default_backend sink

backend sink
  server sink 127.0.0.1:$sink_port
EOF

  # stunnel: one service per certificate, and IMAP STARTTLS in server mode (protocol = imap).
  cat >"$run_dir/stunnel.conf" <<EOF
foreground = yes
pid =
output = $run_dir/stunnel.log
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1

[imaps-ecdsa]
accept = 127.0.0.1:$stunnel_tls
connect = 127.0.0.1:$sink_port
cert = $certs/ecdsa.pem
key = $certs/ecdsa.key

[imaps-rsa]
accept = 127.0.0.1:$stunnel_rsa
connect = 127.0.0.1:$sink_port
cert = $certs/rsa.pem
key = $certs/rsa.key

[imap-starttls]
accept = 127.0.0.1:$stunnel_starttls
connect = 127.0.0.1:$sink_port
protocol = imap
cert = $certs/ecdsa.pem
key = $certs/ecdsa.key
EOF

  # hitch: one frontend per certificate; it refuses to run its worker as root.
  local hitch_user=nobody hitch_group=nogroup
  if id _hitch >/dev/null 2>&1; then
    hitch_user=_hitch
    hitch_group="$(id -gn _hitch)"
  fi
  mkdir -p "$run_dir/hitch-ocsp"
  cat >"$run_dir/hitch.conf" <<EOF
frontend = {
  host = "127.0.0.1"
  port = "$hitch_tls"
  pem-file = "$certs/ecdsa-bundle.pem"
}
frontend = {
  host = "127.0.0.1"
  port = "$hitch_rsa"
  pem-file = "$certs/rsa-bundle.pem"
}
backend = "[127.0.0.1]:$sink_port"
workers = 1
daemon = off
user = "$hitch_user"
group = "$hitch_group"
tls-protos = TLSv1.2 TLSv1.3
ocsp-dir = "$run_dir/hitch-ocsp"
quiet = on
EOF
}
write_configs

# ------------------------------------------------------------------------------------------------
# Starting and stopping

start_named() {
  local name="$1"; shift
  "$@" >>"$run_dir/$name.out" 2>&1 &
  PID[$name]=$!
}

# Waits until a TLS (or plain) session through the port works; false after ~10 s.
wait_ready() {
  local port="$1" plain="${2:-}"
  for _ in $(seq 1 50); do
    if timeout 5 "$loadgen" --mode setup --port "$port" --count 1 --timeout 2 $plain \
        >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  return 1
}

start_peer() {
  local peer="$1"
  case "$peer" in
    postern) start_named postern "$postern_bin" --config "$run_dir/postern.toml" ;;
    nginx) start_named nginx nginx -c "$run_dir/nginx.conf" -p "$run_dir/nginx/" -e "$run_dir/nginx/error.log" ;;
    haproxy) start_named haproxy haproxy -db -f "$run_dir/haproxy.cfg" ;;
    stunnel) start_named stunnel stunnel4 "$run_dir/stunnel.conf" ;;
    hitch) start_named hitch hitch --config="$run_dir/hitch.conf" ;;
    ceiling) start_named ceiling "$ceiling_bin" --port "$ceiling_tls" --starttls-port "$ceiling_starttls" \
               --cert "$certs/ecdsa.pem" --key "$certs/ecdsa.key" --cert "$certs/rsa.pem" --key "$certs/rsa.key" ;;
  esac
  if ! wait_ready "$(port_for "$peer" hs_ecdsa)"; then
    log "$peer did not come up; see $run_dir/$peer.out"
    stop_peer "$peer"
    return 1
  fi
}

stop_peer() {
  local peer="$1"
  if [ -n "${PID[$peer]:-}" ]; then
    stop_pid "${PID[$peer]}"
    unset "PID[$peer]"
  fi
}

# A port something else already listens on would take part of a figure's sessions (SO_REUSEPORT
# lets postern and HAProxy share one silently): refuse to measure rather than mix processes.
for port in $sink_port $postern_tls $postern_starttls $postern_metrics $nginx_tls $nginx_starttls \
    $nginx_auth $haproxy_tls $stunnel_tls $stunnel_rsa $stunnel_starttls $hitch_tls $hitch_rsa \
    $ceiling_tls $ceiling_starttls; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    log "port $port is already in use (BENCH_PORT_BASE moves every port): $(ss -Hltnp "sport = :$port")"
    exit 1
  fi
done

start_named sink "$sink_bin" --port "$sink_port"
wait_ready "$sink_port" --plain || { log "the sink did not start"; exit 1; }

peers=()
for peer in $peers_wanted; do
  if start_peer "$peer"; then
    peers+=("$peer")
  fi
done
[ ${#peers[@]} -gt 0 ] || { log "no proxy started"; exit 1; }
log "running: ${peers[*]} (rounds=$rounds, load=${load_s}s each, idle=$idle_sessions sessions)"

# ------------------------------------------------------------------------------------------------
# Measurements

results="$run_dir/results.jsonl"
: >"$results"

record() { # figure peer round json
  printf '{"figure":"%s","peer":"%s","round":%s,"result":%s}\n' "$1" "$2" "$3" "$4" >>"$results"
}

# The process and its children (nginx's and hitch's workers), comma-separated for perf -p.
process_tree() {
  local pid="$1"
  { echo "$pid"; pgrep -P "$pid" || true; } | paste -sd, -
}

# perf's samples by library, as {"libcrypto.so.3": 47.1, "[kernel.kallsyms]": 29.4, ...} (%).
profile_json() {
  perf report -i "$1" --sort dso --stdio -q 2>/dev/null | python3 -c '
import json, re, sys
shares = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
    if m:
        shares[m.group(2)] = shares.get(m.group(2), 0.0) + float(m.group(1))
print(json.dumps(shares))'
}

# One loadgen run bounded by time (and by `timeout` should anything hang). With --profile and
# `profile_pid` set, perf samples that process tree for the length of the run.
measure() { # figure peer round loadgen-args...
  local figure="$1" peer="$2" round="$3"; shift 3
  local json perf_pid=""
  if [ $profile -eq 1 ] && [ -n "${profile_pid:-}" ]; then
    perf record -q -e cpu-clock -F 1999 -p "$(process_tree "$profile_pid")" \
      -o "$run_dir/perf.data" >/dev/null 2>>"$run_dir/perf.err" &
    perf_pid=$!
    PID[perf]=$perf_pid
    sleep 0.3
  fi
  # In the background so that the trap can stop it too; bounded by its own limits and `timeout`.
  timeout 300 "$loadgen" --label "$peer" --watch "sink=${PID[sink]}" "$@" \
    >"$run_dir/loadgen.json" 2>>"$run_dir/loadgen.err" &
  PID[loadgen]=$!
  wait "${PID[loadgen]}" || true
  unset "PID[loadgen]"
  json="$(tail -1 "$run_dir/loadgen.json")"
  if [ -z "$json" ]; then
    json='{"error":"no result"}'
  fi
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    unset "PID[perf]"
    json="$(python3 -c 'import json, sys
result = json.loads(sys.argv[1])
if isinstance(result, dict) and "error" not in result:
    result["profile"] = json.loads(sys.argv[2] or "{}")
print(json.dumps(result))' "$json" "$(profile_json "$run_dir/perf.data")")"
  fi
  record "$figure" "$peer" "$round" "$json"
}

crypto_floor() {
  log "openssl speed (crypto floor)"
  # Signatures per core, and X25519 (the key exchange every handshake here uses) to price the
  # whole public-key part of a server handshake: one signature, one key generation, one derive.
  openssl speed -seconds 2 ecdsap256 rsa2048 ecdhx25519 >"$run_dir/speed.txt" 2>/dev/null || true
  python3 - "$run_dir/speed.txt" >>"$results" <<'EOF'
import re, sys, json
text = open(sys.argv[1]).read()
out = {}
for line in text.splitlines():
    m = re.match(r'\s*rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)', line)
    if m:
        out["rsa2048_sign_per_s"] = float(m.group(1)); out["rsa2048_verify_per_s"] = float(m.group(2))
    m = re.match(r'\s*256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)', line)
    if m:
        out["ecdsap256_sign_per_s"] = float(m.group(1)); out["ecdsap256_verify_per_s"] = float(m.group(2))
    m = re.match(r'\s*253 bits ecdh \(X25519\)\s+\S+s\s+([\d.]+)', line)
    if m:
        out["x25519_per_s"] = float(m.group(1))
x = out.get("x25519_per_s")
for name in ("ecdsap256", "rsa2048"):
    sign = out.get(name + "_sign_per_s")
    if sign and x:
        out[name + "_handshake_floor_per_s"] = 1.0 / (1.0 / sign + 2.0 / x)
print(json.dumps({"figure": "crypto_floor", "peer": "openssl", "round": 0, "result": out}))
EOF
}

in_list() { local item="$1"; shift; for x in "$@"; do [ "$x" = "$item" ] && return 0; done; return 1; }

# Peers in this round's order: rotated by one each round so nobody always goes first.
rotated_peers() {
  local round="$1" n=${#peers[@]}
  for i in $(seq 0 $((n - 1))); do
    printf '%s ' "${peers[$(( (i + round) % n ))]}"
  done
}

run_figure() { # figure peer round
  local figure="$1" peer="$2" round="$3" port
  port="$(port_for "$peer" "$figure")"
  [ -n "$port" ] || return 0
  local watch=(--watch "proxy=${PID[$peer]}")
  profile_pid=""
  case "$figure" in
    hs_*|starttls*|bulk_*) profile_pid="${PID[$peer]}" ;;
  esac
  case "$figure" in
    hs_ecdsa) measure "$figure" "$peer" "$round" --mode handshake --port "$port" --sigalgs ecdsa \
                --concurrency $concurrency --duration $load_s "${watch[@]}" ;;
    hs_rsa) measure "$figure" "$peer" "$round" --mode handshake --port "$port" --sigalgs rsa \
                --concurrency $concurrency --duration $load_s "${watch[@]}" ;;
    hs_login) measure "$figure" "$peer" "$round" --mode handshake --login --port "$port" --sigalgs ecdsa \
                --concurrency $concurrency --duration $load_s "${watch[@]}" ;;
    starttls) measure "$figure" "$peer" "$round" --mode starttls --port "$port" --sigalgs ecdsa \
                --concurrency $concurrency --duration $load_s "${watch[@]}" ;;
    starttls_login) measure "$figure" "$peer" "$round" --mode starttls --login --port "$port" \
                --sigalgs ecdsa --concurrency $concurrency --duration $load_s "${watch[@]}" ;;
    bulk_up) measure "$figure" "$peer" "$round" --mode bulk --direction up --port "$port" \
                --chunk $bulk_chunk --duration $load_s "${watch[@]}" ;;
    bulk_down) measure "$figure" "$peer" "$round" --mode bulk --direction down --port "$port" \
                --chunk $bulk_chunk --duration $load_s "${watch[@]}" ;;
    latency) measure "$figure" "$peer" "$round" --mode latency --port "$port" --sessions 2 \
                --baseline-port "$sink_port" --rate 1000 --duration $load_s "${watch[@]}" ;;
    setup) measure "$figure" "$peer" "$round" --mode setup --port "$port" --sigalgs ecdsa \
                --count $setup_count --gap-ms 5 "${watch[@]}" ;;
    idle)
      # A fresh process, warmed by a few sessions, so earlier figures leave no heap behind.
      stop_peer "$peer"
      if ! start_peer "$peer"; then
        record "$figure" "$peer" "$round" '{"error":"restart failed"}'
        return 0
      fi
      "$loadgen" --mode setup --port "$port" --count 20 --gap-ms 0 >/dev/null 2>&1 || true
      sleep 0.5
      measure "$figure" "$peer" "$round" --mode idle --port "$port" --sigalgs ecdsa \
        --idle $idle_sessions --concurrency 64 --settle 1 --timeout 30 --watch "proxy=${PID[$peer]}"
      ;;
  esac
}

all_figures=(hs_ecdsa hs_rsa hs_login starttls starttls_login bulk_up bulk_down latency setup idle)
crypto_floor
started_at=$(date +%s)
for round in $(seq 1 "$rounds"); do
  order="$(rotated_peers "$round")"
  log "round $round/$rounds, order: $order"
  for figure in "${all_figures[@]}"; do
    in_list "$figure" $figures_wanted || continue
    for peer in $order; do
      run_figure "$figure" "$peer" "$round"
    done
  done
done
log "measured in $(( $(date +%s) - started_at )) s"

# ------------------------------------------------------------------------------------------------
# Report

mkdir -p "$(dirname "$out")"
cp "$results" "${out%.md}.jsonl"
python3 "$here/report.py" --results "$results" --markdown "$out" \
  --machine "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)" \
  --mode "$([ $quick -eq 1 ] && echo quick || echo full), $rounds round(s), ${load_s}s per load figure, $idle_sessions idle sessions"
log "markdown table: $out; raw results: ${out%.md}.jsonl"
[ $keep -eq 1 ] && log "configs and logs: $run_dir"
exit 0
