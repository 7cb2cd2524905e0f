#!/bin/bash
# Tether's benchmark (not part of the test run). One command, one run, alternating rounds:
#
#   wrk/curl -> [outbound proxy] -> mTLS -> [inbound proxy] -> nginx HTTP backend
#
# for six chains: tether (two tether-sidecars, pooled: app connections ride HTTP/2 tunnels
# on a few mTLS links), tether-direct (the same with --pool off: one mTLS connection per app
# connection), tether-l7 (the same with a policy whose
# rules name methods and paths, so the inbound reads every request: http/gate.c), nginx (two nginx stream proxies with
# proxy_ssl / ssl_verify_client, TLS 1.3 pinned), haproxy (two haproxies, ssl verify
# required both ways, TLS 1.3 pinned) and direct (no proxy); and, unless EXTRA=0, three
# more: nginx-default and haproxy-default (the same pairs without the TLS 1.3 pin: nginx
# 1.22 then negotiates TLS 1.2, HAProxy 2.6 still TLS 1.3), and nginx-l7 (two nginx HTTP
# proxies: proxy_pass https:// with a client certificate over keepalive upstream
# connections, an inbound `listen ssl` with ssl_verify_client on). Per chain: requests/s
# and p50/p99 latency at 50 keep-alive connections, requests/s with a new connection per
# request (Connection: close), MB/s for one 100 MB download; then each pair's RSS idle and
# with 5,000 idle mTLS connections between its two proxies, and the Tether pair's RSS per
# active pooled stream (ACTIVE_CONNS app connections that each carried a request and its
# answer and stay open). Prints a table (medians over the rounds). Unless H2=0, h2load
# (h2c, prior knowledge) through the Tether pair and through an nghttpx pair (mTLS between
# them) to an nghttpd h2c backend, in alternating rounds, in a second table. Then the
# control plane's RSS per held sidecar Watch connection and its thread count with 500 and
# 2,000 held (control_conns.py; CONTROL_CONNS to change the counts).
#
# Usage: tests/bench/run.sh [BUILD_DIR]      (default build-bench, --buildtype=release)
# Environment: ROUNDS (3), DURATION (wrk seconds per measurement, 5), CONNS (50),
#   MANY_CONNS (200: keep-alive again at that many connections, tether, nginx and haproxy
#   only; 0 skips), POST_BODY (4096: keep-alive POSTs with a body of that many bytes,
#   the same three chains; 0 skips), IDLE_CONNS (5000), ACTIVE_CONNS (1000; 0 skips),
#   WORKERS (worker threads/processes per proxy, 1), EXTRA (1), H2 (1), H2_CLIENTS (10), H2_STREAMS (10 per connection),
#   BENCH_PORT (21000), SKIP_BUILD=1, SKIP_INSTALL=1, SKIP_CONTROL=1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build-bench}
case $build in /*) ;; *) build=$root/$build ;; esac
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} CONNS=${CONNS:-50} IDLE_CONNS=${IDLE_CONNS:-5000}
MANY_CONNS=${MANY_CONNS:-200} POST_BODY=${POST_BODY:-4096}
WORKERS=${WORKERS:-1} base=${BENCH_PORT:-21000} ACTIVE_CONNS=${ACTIVE_CONNS:-1000}
EXTRA=${EXTRA:-1} H2=${H2:-1} H2_CLIENTS=${H2_CLIENTS:-10} H2_STREAMS=${H2_STREAMS:-10}

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=cpu.sh
. "$here/cpu.sh"

# --- tools and build ------------------------------------------------------------------
# The tools the run calls, each with the package that brings it.
tools=(wrk:wrk nginx:nginx haproxy:haproxy curl:curl)
[ "$H2" = 1 ] && tools+=(h2load:nghttp2-client nghttpx:nghttp2-proxy nghttpd:nghttp2-server)
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    need=()
    for t in "${tools[@]}"; do command -v "${t%%:*}" >/dev/null || need+=("${t#*:}"); done
    [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
    /usr/bin/python3 -c 'import grpc, grpc_tools' 2>/dev/null || need+=(python3-grpcio python3-grpc-tools)
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    fi
fi
# With SKIP_INSTALL=1 a missing tool would only show when its part of the run comes, minutes
# in, and the run would end without its table: refuse at once, naming what is missing.
missing=()
for t in "${tools[@]}"; do command -v "${t%%:*}" >/dev/null || missing+=("${t%%:*}"); done
if [ ${#missing[@]} -gt 0 ]; then
    say "missing: ${missing[*]} (run without SKIP_INSTALL=1 to install them; H2=0 skips the h2load part)"
    exit 2
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if [ ! -f "$build/build.ninja" ]; then
        meson setup "$build" "$root" --buildtype=release >/dev/null
    fi
    bt=$(meson introspect --buildoptions "$build" | python3 -c \
        'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="buildtype"][0])')
    [ "$bt" = release ] || { say "$build has buildtype=$bt; want release (meson configure $build --buildtype=release)"; exit 2; }
    ninja -C "$build" sidecar/tether-sidecar control/tether-control control/tetherctl >/dev/null
fi
sidecar=$build/sidecar/tether-sidecar
[ -x "$sidecar" ] || { say "$sidecar missing"; exit 2; }
ulimit -n 20000 || ulimit -n "$(ulimit -Hn)"

# --- processes, cleaned up by pid -----------------------------------------------------
work=$(mktemp -d /tmp/tether-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    local rc=$?
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    if [ "${KEEP:-0}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { # NAME CMD...: starts in the background, stderr to $work/NAME.log
    local name=$1; shift
    "$@" >"$work/$name.out" 2>"$work/$name.log" &
    pids+=($!)
    eval "pid_$name=$!"
}
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    say "port $1 not listening"; return 1
}

# Ports.
be=$((base)) t_out=$((base + 1)) t_in=$((base + 2)) t_adm_out=$((base + 3)) t_adm_in=$((base + 4))
l_out=$((base + 5)) l_in=$((base + 6)) l_adm_out=$((base + 7)) l_adm_in=$((base + 8))
n_out=$((base + 11)) n_in=$((base + 12)) h_out=$((base + 21)) h_in=$((base + 22))
d_out=$((base + 31)) d_in=$((base + 32)) d_adm_out=$((base + 33)) d_adm_in=$((base + 34))
nd_out=$((base + 41)) nd_in=$((base + 42)) hd_out=$((base + 43)) hd_in=$((base + 44))
n7_out=$((base + 51)) n7_in=$((base + 52))
h2_be=$((base + 60)) h2t_out=$((base + 61)) h2t_in=$((base + 62)) h2t_adm_out=$((base + 63))
h2t_adm_in=$((base + 64)) h2x_out=$((base + 65)) h2x_in=$((base + 66))

say "certificates"
DNS_SUFFIX=mesh.local "$root/deploy/local/mkcerts.sh" "$work/certs" web api >/dev/null
chmod 644 "$work"/certs/*.key
c=$work/certs
cat "$c/web.crt" "$c/web.key" >"$c/web.pem"
cat "$c/api.crt" "$c/api.key" >"$c/api.pem"
api_id=spiffe://cluster.local/ns/shop/sa/api

say "backend: nginx HTTP on $be (small body on /, 100 MB on /big)"
mkdir -p "$work/www" "$work/nginx-be" "$work/nginx-out" "$work/nginx-in"
dd if=/dev/zero of="$work/www/big" bs=1M count=100 status=none
chmod 644 "$work/www/big"
cat >"$work/nginx-be/nginx.conf" <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $work/nginx-be/nginx.pid;
error_log $work/nginx-be/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    sendfile on;
    server {
        listen 127.0.0.1:$be backlog=4096;
        location = / { default_type text/plain; return 200 "hello, world\n"; }
        location = /big { alias $work/www/big; }
    }
}
EOF
start nginx_be nginx -p "$work/nginx-be" -e "$work/nginx-be/error.log" -c "$work/nginx-be/nginx.conf"
wait_port $be

say "tether pair: outbound :$t_out -> mTLS -> inbound :$t_in -> backend"
start t_in "$sidecar" --identity-cert "$c/api.crt" --identity-key "$c/api.key" \
    --trust-bundle "$c/ca.crt" --inbound "127.0.0.1:$t_in=127.0.0.1:$be" \
    --admin "127.0.0.1:$t_adm_in" --workers "$WORKERS" --log-level warn --max-connections 19000
start t_out "$sidecar" --identity-cert "$c/web.crt" --identity-key "$c/web.key" \
    --trust-bundle "$c/ca.crt" --outbound "127.0.0.1:$t_out=127.0.0.1:$t_in@$api_id" \
    --admin "127.0.0.1:$t_adm_out" --workers "$WORKERS" --log-level warn --max-connections 19000

say "tether-direct pair (--pool off): outbound :$d_out -> mTLS per connection -> inbound :$d_in -> backend"
start d_in "$sidecar" --identity-cert "$c/api.crt" --identity-key "$c/api.key" \
    --trust-bundle "$c/ca.crt" --inbound "127.0.0.1:$d_in=127.0.0.1:$be" --pool off \
    --admin "127.0.0.1:$d_adm_in" --workers "$WORKERS" --log-level warn --max-connections 19000
start d_out "$sidecar" --identity-cert "$c/web.crt" --identity-key "$c/web.key" \
    --trust-bundle "$c/ca.crt" --outbound "127.0.0.1:$d_out=127.0.0.1:$d_in@$api_id" --pool off \
    --admin "127.0.0.1:$d_adm_out" --workers "$WORKERS" --log-level warn --max-connections 19000

say "tether-l7 pair: outbound :$l_out -> mTLS -> inbound :$l_in (per-request policy) -> backend"
cat >"$work/l7-policy.json" <<EOF
{"default": "deny", "rules": [
  {"name": "no-admin", "action": "deny", "from": ["*"], "paths": ["/admin*"]},
  {"name": "web-gets", "action": "allow", "from": ["spiffe://cluster.local/ns/shop/sa/web"],
   "methods": ["GET", "HEAD"], "paths": ["/*"]}]}
EOF
start l_in "$sidecar" --identity-cert "$c/api.crt" --identity-key "$c/api.key" \
    --trust-bundle "$c/ca.crt" --inbound "127.0.0.1:$l_in=127.0.0.1:$be" --policy "$work/l7-policy.json" \
    --admin "127.0.0.1:$l_adm_in" --workers "$WORKERS" --log-level warn --max-connections 19000 \
    --request-log-sample 1000000
start l_out "$sidecar" --identity-cert "$c/web.crt" --identity-key "$c/web.key" \
    --trust-bundle "$c/ca.crt" --outbound "127.0.0.1:$l_out=127.0.0.1:$l_in@$api_id" \
    --admin "127.0.0.1:$l_adm_out" --workers "$WORKERS" --log-level warn --max-connections 19000

say "nginx pair: stream :$n_out -> proxy_ssl -> stream ssl :$n_in (ssl_verify_client) -> backend"
nginx_stream() { # DIR LISTEN BODY
    cat >"$1/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 20000; }
stream {
    server {
        $2
        proxy_timeout 600s;
        $3
    }
}
EOF
}
nginx_stream "$work/nginx-out" "listen 127.0.0.1:$n_out backlog=4096;" "
        proxy_pass 127.0.0.1:$n_in;
        proxy_ssl on;
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_certificate $c/web.crt;
        proxy_ssl_certificate_key $c/web.key;
        proxy_ssl_trusted_certificate $c/ca.crt;
        proxy_ssl_verify on;
        proxy_ssl_name api.mesh.local;
        proxy_ssl_session_reuse on;"
nginx_stream "$work/nginx-in" "listen 127.0.0.1:$n_in ssl backlog=4096;" "
        ssl_protocols TLSv1.3;
        ssl_certificate $c/api.crt;
        ssl_certificate_key $c/api.key;
        ssl_client_certificate $c/ca.crt;
        ssl_verify_client on;
        ssl_session_cache shared:S:10m;
        proxy_pass 127.0.0.1:$be;"
start nginx_out nginx -p "$work/nginx-out" -e "$work/nginx-out/error.log" -c "$work/nginx-out/nginx.conf"
start nginx_in nginx -p "$work/nginx-in" -e "$work/nginx-in/error.log" -c "$work/nginx-in/nginx.conf"

if [ "$EXTRA" = 1 ]; then
    say "nginx-default pair: the nginx pair without ssl_protocols pins (nginx 1.22: TLS 1.2)"
    mkdir -p "$work/nginxd-out" "$work/nginxd-in" "$work/nginx7-out" "$work/nginx7-in"
    nginx_stream "$work/nginxd-out" "listen 127.0.0.1:$nd_out backlog=4096;" "
        proxy_pass 127.0.0.1:$nd_in;
        proxy_ssl on;
        proxy_ssl_certificate $c/web.crt;
        proxy_ssl_certificate_key $c/web.key;
        proxy_ssl_trusted_certificate $c/ca.crt;
        proxy_ssl_verify on;
        proxy_ssl_name api.mesh.local;
        proxy_ssl_session_reuse on;"
    nginx_stream "$work/nginxd-in" "listen 127.0.0.1:$nd_in ssl backlog=4096;" "
        ssl_certificate $c/api.crt;
        ssl_certificate_key $c/api.key;
        ssl_client_certificate $c/ca.crt;
        ssl_verify_client on;
        ssl_session_cache shared:SD:10m;
        proxy_pass 127.0.0.1:$be;"
    start nginxd_out nginx -p "$work/nginxd-out" -e "$work/nginxd-out/error.log" -c "$work/nginxd-out/nginx.conf"
    start nginxd_in nginx -p "$work/nginxd-in" -e "$work/nginxd-in/error.log" -c "$work/nginxd-in/nginx.conf"

    say "nginx-l7 pair: http :$n7_out -> proxy_pass https (client cert, keepalive upstream) -> listen ssl :$n7_in (ssl_verify_client) -> backend"
    nginx_http() { # DIR SERVER-AND-UPSTREAM-BLOCKS
        cat >"$1/nginx.conf" <<EOF
daemon off;
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_header_timeout 600s;
    proxy_read_timeout 600s;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_max_temp_file_size 0;
$2
}
EOF
    }
    # TLS 1.3 pinned like the nginx stream pair; the upstream connections stay open, so
    # handshakes are rare whatever the protocol.
    nginx_http "$work/nginx7-out" "
    upstream inbound {
        server 127.0.0.1:$n7_in;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 600s;
    }
    server {
        listen 127.0.0.1:$n7_out backlog=4096;
        location / {
            proxy_pass https://inbound;
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_certificate $c/web.crt;
            proxy_ssl_certificate_key $c/web.key;
            proxy_ssl_trusted_certificate $c/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_name api.mesh.local;
            proxy_ssl_session_reuse on;
        }
    }"
    nginx_http "$work/nginx7-in" "
    upstream backend {
        server 127.0.0.1:$be;
        keepalive 64;
        keepalive_requests 10000000;
        keepalive_timeout 600s;
    }
    server {
        listen 127.0.0.1:$n7_in ssl backlog=4096;
        ssl_protocols TLSv1.3;
        ssl_certificate $c/api.crt;
        ssl_certificate_key $c/api.key;
        ssl_client_certificate $c/ca.crt;
        ssl_verify_client on;
        ssl_session_cache shared:S7:10m;
        location / { proxy_pass http://backend; }
    }"
    start nginx7_out nginx -p "$work/nginx7-out" -e "$work/nginx7-out/error.log" -c "$work/nginx7-out/nginx.conf"
    start nginx7_in nginx -p "$work/nginx7-in" -e "$work/nginx7-in/error.log" -c "$work/nginx7-in/nginx.conf"
fi

say "haproxy pair: :$h_out -> ssl verify required -> :$h_in (verify required) -> backend"
haproxy_cfg() { # FILE FRONTEND-BIND SERVER-LINE [PIN]: PIN 0 leaves HAProxy's TLS defaults
    local pin="    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3"
    [ "${4:-1}" = 1 ] || pin="    # no ssl-min-ver: HAProxy's defaults"
    cat >"$1" <<EOF
global
    maxconn 9000
    nbthread $WORKERS
$pin
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
frontend fe
    bind 127.0.0.1:$2
    maxconn 9000
    default_backend be
backend be
    $3
EOF
}
haproxy_cfg "$work/haproxy-out.cfg" "$h_out" \
    "server in 127.0.0.1:$h_in ssl crt $c/web.pem ca-file $c/ca.crt verify required verifyhost api.mesh.local"
haproxy_cfg "$work/haproxy-in.cfg" "$h_in ssl crt $c/api.pem ca-file $c/ca.crt verify required" \
    "server be 127.0.0.1:$be"
start haproxy_out haproxy -db -f "$work/haproxy-out.cfg"
start haproxy_in haproxy -db -f "$work/haproxy-in.cfg"
listen_ports="$t_in $t_out $d_in $d_out $l_in $l_out $n_out $n_in $h_out $h_in"
chain_ports="$t_out $d_out $l_out $n_out $h_out $be"
if [ "$EXTRA" = 1 ]; then
    say "haproxy-default pair: the haproxy pair without ssl-min-ver TLSv1.3"
    haproxy_cfg "$work/haproxyd-out.cfg" "$hd_out" \
        "server in 127.0.0.1:$hd_in ssl crt $c/web.pem ca-file $c/ca.crt verify required verifyhost api.mesh.local" 0
    haproxy_cfg "$work/haproxyd-in.cfg" "$hd_in ssl crt $c/api.pem ca-file $c/ca.crt verify required" \
        "server be 127.0.0.1:$be" 0
    start haproxyd_out haproxy -db -f "$work/haproxyd-out.cfg"
    start haproxyd_in haproxy -db -f "$work/haproxyd-in.cfg"
    listen_ports+=" $nd_out $nd_in $n7_out $n7_in $hd_out $hd_in"
    chain_ports+=" $nd_out $n7_out $hd_out"
fi

for p in $listen_ports; do wait_port "$p"; done
for p in $chain_ports; do
    out=$(curl -sS --max-time 5 "http://127.0.0.1:$p/") || { say "chain on port $p does not answer"; exit 1; }
    [ "$out" = "hello, world" ] || { say "chain on port $p answered '$out'"; exit 1; }
done
say "all chains answer"

# tls_of PORT: the protocol an mTLS client (web's certificate) negotiates with a pair's
# inbound, and whether that inbound lets a second connection resume the first one's session
# (the stdin sleeps give TLS 1.3's session ticket time to arrive before s_client quits).
tls_of() {
    local proto again
    proto=$(sleep 0.3 | openssl s_client -connect "127.0.0.1:$1" -servername api.mesh.local \
        -cert "$c/web.crt" -key "$c/web.key" -CAfile "$c/ca.crt" -sess_out "$work/sess-$1" \
        2>/dev/null | awk '/^New, / {sub(",", "", $2); print $2; exit}')
    again=$(sleep 0.3 | openssl s_client -connect "127.0.0.1:$1" -servername api.mesh.local \
        -cert "$c/web.crt" -key "$c/web.key" -CAfile "$c/ca.crt" -sess_in "$work/sess-$1" \
        2>/dev/null | grep -c '^Reused' || true)
    if [ "${again:-0}" -ge 1 ]; then echo "${proto:-?}, resumes"; else echo "${proto:-?}, no resumption"; fi
}
tls_notes="nginx $(tls_of "$n_in"); haproxy $(tls_of "$h_in")"
if [ "$EXTRA" = 1 ]; then
    tls_notes+="; nginx-default $(tls_of "$nd_in"); haproxy-default $(tls_of "$hd_in")"
    tls_notes+="; nginx-l7 $(tls_of "$n7_in")"
fi
say "TLS between each pair's proxies (openssl s_client to the inbound): $tls_notes"

rss_kb() { # PID...: sum of VmRSS in KiB (nginx: the pid's children, i.e. its workers, too)
    local total=0 p kids
    for p in "$@"; do
        kids=$(cat /proc/"$p"/task/*/children 2>/dev/null || true)
        for q in $p $kids; do
            total=$((total + $(awk '/^VmRSS:/ {print $2}' /proc/"$q"/status 2>/dev/null || echo 0)))
        done
    done
    echo $total
}
declare -A idle_rss
idle_rss[tether]=$(rss_kb "$pid_t_out" "$pid_t_in")
idle_rss[tether_in]=$(rss_kb "$pid_t_in")
idle_rss[tether_out]=$(rss_kb "$pid_t_out")
idle_rss[nginx]=$(rss_kb "$pid_nginx_out" "$pid_nginx_in")
idle_rss[haproxy]=$(rss_kb "$pid_haproxy_out" "$pid_haproxy_in")

declare -A port=([tether]=$t_out [tether-direct]=$d_out [tether-l7]=$l_out [nginx]=$n_out
    [haproxy]=$h_out [direct]=$be [nginx-default]=$nd_out [haproxy-default]=$hd_out
    [nginx-l7]=$n7_out)
chains=(tether tether-direct tether-l7 nginx haproxy direct)
[ "$EXTRA" = 1 ] && chains+=(nginx-default haproxy-default nginx-l7)
res=$work/results.txt
: >"$res"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = string.rep("x", $POST_BODY)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

# The processes of each pair (nginx: the masters, whose workers cpu_ticks adds).
declare -A pair_pids=([tether]="$pid_t_out $pid_t_in" [tether-direct]="$pid_d_out $pid_d_in"
    [tether-l7]="$pid_l_out $pid_l_in" [nginx]="$pid_nginx_out $pid_nginx_in"
    [haproxy]="$pid_haproxy_out $pid_haproxy_in" [direct]=""
    [nginx-default]="${pid_nginxd_out:-} ${pid_nginxd_in:-}"
    [haproxy-default]="${pid_haproxyd_out:-} ${pid_haproxyd_in:-}"
    [nginx-l7]="${pid_nginx7_out:-} ${pid_nginx7_in:-}")

run_wrk() { # CHAIN ROUND KIND: appends "chain kind round rps p50_ms p99_ms errors", and
    # for a chain with proxies "chain cpu round US_PER_REQUEST nan nan 0" (cpu_KIND for a
    # load other than keepalive): the CPU time both proxies of the pair spent per request
    # (user + system), a figure the machine's noise moves less than requests/s, since it
    # leaves out the client, the backend and the wait.
    local chain=$1 round=$2 kind=$3 extra=() conns=$CONNS before f=$work/wrk-$1-$3-$2.txt
    [ "$kind" = close ] && extra=(-H "Connection: close")
    [ "$kind" = many ] && conns=$MANY_CONNS
    [ "$kind" = post ] && extra=(-s "$work/post.lua")
    # shellcheck disable=SC2086 # a list of pids
    before=$(cpu_ticks ${pair_pids[$chain]})
    wrk -t2 -c"$conns" -d"${DURATION}s" --latency "${extra[@]}" \
        "http://127.0.0.1:${port[$chain]}/" >"$f" 2>&1 || true
    # shellcheck disable=SC2086
    [ -z "${pair_pids[$chain]// /}" ] ||
        record_cpu "$res" "$chain" "$kind" "$round" "$before" "$(cpu_ticks ${pair_pids[$chain]})" "$f"
    echo "$chain $kind $round $(python3 "$here/wrk_result.py" "$f")" >>"$res"
}
run_transfer() { # CHAIN ROUND
    local chain=$1 round=$2 out
    out=$(curl -sS --max-time 120 -o /dev/null -w '%{speed_download} %{size_download}' \
        "http://127.0.0.1:${port[$chain]}/big" 2>&1) || out="0 0"
    set -- $out
    local err=0
    [ "${2:-0}" = 104857600 ] || err=1
    echo "$chain xfer $round $(python3 -c "print(${1:-0} / 1048576)") nan nan $err" >>"$res"
}

for round in $(seq "$ROUNDS"); do
    # Rotate the order each round so that no chain always runs first or last.
    order=()
    for i in "${!chains[@]}"; do order+=("${chains[$(((i + round - 1) % ${#chains[@]}))]}"); done
    say "round $round/$ROUNDS: ${order[*]}"
    for chain in "${order[@]}"; do run_wrk "$chain" "$round" keepalive; done
    # The extra loads, on the Tether, nginx and HAProxy pairs only.
    for kind in many post; do
        case $kind in
            many) [ "$MANY_CONNS" -gt 0 ] || continue ;;
            post) [ "$POST_BODY" -gt 0 ] || continue ;;
        esac
        for chain in "${order[@]}"; do
            case $chain in tether | nginx | haproxy) run_wrk "$chain" "$round" "$kind" ;; esac
        done
    done
    for chain in "${order[@]}"; do run_wrk "$chain" "$round" close; done
    for chain in "${order[@]}"; do run_transfer "$chain" "$round"; done
done

say "idle connections: $IDLE_CONNS through each pair"
cat >"$work/idle.py" <<'PY'
# Holds N connections to PORT open; writes how many to HOLD. MODE "idle" sends nothing;
# "active" sends one keep-alive GET / on each and reads its whole answer first (so each
# carried a request both ways), and counts only connections that got it.
import resource, socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mode = sys.argv[4] if len(sys.argv) > 4 else "idle"
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
socks = []
def answered(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    got = b""
    while not got.endswith(b"hello, world\n"):
        d = s.recv(4096)
        if not d:
            return False
        got += d
    return True
for i in range(n):
    for attempt in range(50):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if mode == "active" and not answered(s):
                s.close()
                raise OSError("no answer")
            socks.append(s)
            break
        except OSError:
            time.sleep(0.05)
    if i % 500 == 499:
        time.sleep(0.2)  # let the handshakes behind us catch up
print(len(socks), flush=True)
open(hold, "w").write(str(len(socks)))
time.sleep(600)
PY
declare -A busy_rss opened
for chain in tether nginx haproxy; do
    rm -f "$work/idle-hold"
    python3 "$work/idle.py" "${port[$chain]}" "$IDLE_CONNS" "$work/idle-hold" >/dev/null 2>&1 &
    idle_pid=$!
    pids+=($idle_pid)
    for _ in $(seq 600); do [ -f "$work/idle-hold" ] && break; sleep 0.1; done
    if [ "$chain" = tether ]; then
        # Wait until the inbound sidecar holds every connection (mTLS done, backend open).
        for _ in $(seq 300); do
            active=$(curl -sS --max-time 2 "http://127.0.0.1:$t_adm_in/stats" | python3 -c \
                'import json,sys; print(sum(l["active"] for l in json.load(sys.stdin)["listeners"]))' 2>/dev/null || echo 0)
            [ "$active" -ge "$IDLE_CONNS" ] && break
            sleep 0.1
        done
        opened[tether]=$active
        busy_rss[tether_in]=$(rss_kb "$pid_t_in")
        busy_rss[tether_out]=$(rss_kb "$pid_t_out")
    else
        sleep 3
        opened[$chain]=$(cat "$work/idle-hold" 2>/dev/null || echo 0)
    fi
    case $chain in
        tether) busy_rss[tether]=$(rss_kb "$pid_t_out" "$pid_t_in") ;;
        nginx) busy_rss[nginx]=$(rss_kb "$pid_nginx_out" "$pid_nginx_in") ;;
        haproxy) busy_rss[haproxy]=$(rss_kb "$pid_haproxy_out" "$pid_haproxy_in") ;;
    esac
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
    sleep 2
done

# tether_active_streams: inbound listeners' "active" of the Tether pair (0 if unreadable).
tether_active_streams() {
    curl -sS --max-time 2 "http://127.0.0.1:$t_adm_in/stats" | python3 -c \
        'import json,sys; print(sum(l["active"] for l in json.load(sys.stdin)["listeners"]))' 2>/dev/null || echo 0
}
# tether_pool: "LINKS STREAMS_ACTIVE" of the Tether pair's outbound.
tether_pool() {
    curl -sS --max-time 2 "http://127.0.0.1:$t_adm_out/stats" | python3 -c '
import json, sys
ls = json.load(sys.stdin)["listeners"]
print(sum(l["pool"]["connections"] for l in ls), sum(l["pool"]["streams_active"] for l in ls))' 2>/dev/null || echo "? ?"
}
declare -A act_rss
if [ "$ACTIVE_CONNS" -gt 0 ]; then
    # A fresh pooled pair (the measured pair's sidecars would reuse what the idle
    # connections above left in their allocators, and show less than a stream costs), under
    # the measured pair's ports and pids; its link is up (one request) before the baseline.
    say "active pooled streams: $ACTIVE_CONNS app connections through a fresh tether pair, each answered once, held open"
    for p in "$pid_t_out" "$pid_t_in"; do kill -TERM "$p"; done
    for p in "$pid_t_out" "$pid_t_in"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid_t_out" "$pid_t_in" 2>/dev/null || true
    # Forget the old pids, so that the cleanup never signals a recycled one.
    kept=()
    for p in "${pids[@]}"; do [ "$p" = "$pid_t_out" ] || [ "$p" = "$pid_t_in" ] || kept+=("$p"); done
    pids=("${kept[@]}")
    start t_in "$sidecar" --identity-cert "$c/api.crt" --identity-key "$c/api.key" \
        --trust-bundle "$c/ca.crt" --inbound "127.0.0.1:$t_in=127.0.0.1:$be" \
        --admin "127.0.0.1:$t_adm_in" --workers "$WORKERS" --log-level warn --max-connections 19000
    start t_out "$sidecar" --identity-cert "$c/web.crt" --identity-key "$c/web.key" \
        --trust-bundle "$c/ca.crt" --outbound "127.0.0.1:$t_out=127.0.0.1:$t_in@$api_id" \
        --admin "127.0.0.1:$t_adm_out" --workers "$WORKERS" --log-level warn --max-connections 19000
    for p in $t_in $t_out; do wait_port "$p"; done
    curl -sS --max-time 5 -o /dev/null "http://127.0.0.1:$t_out/" || say "fresh tether pair does not answer"
    sleep 1
    act_rss[before_out]=$(rss_kb "$pid_t_out") act_rss[before_in]=$(rss_kb "$pid_t_in")
    rm -f "$work/idle-hold"
    python3 "$work/idle.py" "$t_out" "$ACTIVE_CONNS" "$work/idle-hold" active >/dev/null 2>&1 &
    idle_pid=$!
    pids+=("$idle_pid")
    for _ in $(seq 1200); do [ -f "$work/idle-hold" ] && break; sleep 0.1; done
    sleep 1
    act_rss[held]=$(cat "$work/idle-hold" 2>/dev/null || echo 0)
    act_rss[streams]=$(tether_active_streams)
    act_rss[pool]=$(tether_pool)
    act_rss[with_out]=$(rss_kb "$pid_t_out") act_rss[with_in]=$(rss_kb "$pid_t_in")
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
fi

h2res=$work/h2-results.txt
: >"$h2res"
if [ "$H2" = 1 ]; then
    say "h2c: h2load -> tether pair / nghttpx pair (mTLS) -> nghttpd h2c backend on $h2_be"
    mkdir -p "$work/h2www"
    echo "hello, world" >"$work/h2www/index.html"
    start h2_be nghttpd --no-tls -d "$work/h2www" "$h2_be"
    start h2t_in "$sidecar" --identity-cert "$c/api.crt" --identity-key "$c/api.key" \
        --trust-bundle "$c/ca.crt" --inbound "127.0.0.1:$h2t_in=127.0.0.1:$h2_be" \
        --admin "127.0.0.1:$h2t_adm_in" --workers "$WORKERS" --log-level warn --max-connections 19000
    start h2t_out "$sidecar" --identity-cert "$c/web.crt" --identity-key "$c/web.key" \
        --trust-bundle "$c/ca.crt" --outbound "127.0.0.1:$h2t_out=127.0.0.1:$h2t_in@$api_id" \
        --admin "127.0.0.1:$h2t_adm_out" --workers "$WORKERS" --log-level warn --max-connections 19000
    # nghttpx: the outbound takes h2c (prior knowledge) and speaks h2 over TLS with web's
    # certificate to the inbound, verifying api.mesh.local against the CA; the inbound
    # requires and verifies a client certificate and speaks h2c to nghttpd.
    start h2x_in nghttpx --conf=/dev/null --no-ocsp --workers="$WORKERS" \
        --frontend="127.0.0.1,$h2x_in" --backend="127.0.0.1,$h2_be;;proto=h2" \
        --verify-client --verify-client-cacert="$c/ca.crt" --tls-min-proto-version=TLSv1.3 \
        --errorlog-file="$work/h2x_in.err" "$c/api.key" "$c/api.crt"
    start h2x_out nghttpx --conf=/dev/null --no-ocsp --workers="$WORKERS" \
        --frontend="127.0.0.1,$h2x_out;no-tls" \
        --backend="127.0.0.1,$h2x_in;;tls;proto=h2;sni=api.mesh.local" \
        --client-private-key-file="$c/web.key" --client-cert-file="$c/web.crt" \
        --cacert="$c/ca.crt" --errorlog-file="$work/h2x_out.err"
    for p in $h2_be $h2t_in $h2t_out $h2x_in $h2x_out; do wait_port "$p"; done
    declare -A h2port=([tether]=$h2t_out [nghttpx]=$h2x_out [direct]=$h2_be)
    for chain in tether nghttpx direct; do
        out=$(curl -sS --max-time 5 --http2-prior-knowledge "http://127.0.0.1:${h2port[$chain]}/") ||
            { say "h2c chain $chain does not answer"; exit 1; }
        [ "$out" = "hello, world" ] || { say "h2c chain $chain answered '$out'"; exit 1; }
    done
    # The nghttpx pair is mTLS: its inbound refuses a client without a certificate.
    if curl -sk --max-time 5 --http2 "https://127.0.0.1:$h2x_in/" >/dev/null 2>&1; then
        say "the nghttpx inbound answered a client without a certificate"; exit 1
    fi
    h2chains=(tether nghttpx direct)
    for round in $(seq "$ROUNDS"); do
        order=()
        for i in 0 1 2; do order+=("${h2chains[$(((i + round - 1) % 3))]}"); done
        say "h2 round $round/$ROUNDS: ${order[*]}"
        for chain in "${order[@]}"; do
            f=$work/h2load-$chain-$round.txt
            h2load -t 2 -c "$H2_CLIENTS" -m "$H2_STREAMS" -D "$DURATION" \
                "http://127.0.0.1:${h2port[$chain]}/" >"$f" 2>&1 || true
            echo "$chain $round $(python3 - "$f" <<'PY'
# h2load's output: "REQS_PER_S MEAN_MS MAX_MS ERRORS" (errors: failed, errored, timed out
# and non-2xx requests; nan where h2load printed no figure).
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)$", v)
    return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else float("nan")
rps = re.search(r"finished in \S+, ([\d.]+) req/s", t)
req = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, "
                r"(\d+) errored, (\d+) timeout", t)
st = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", t)
lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)", t)
err = (sum(map(int, req.groups())) if req else 1) + (sum(map(int, st.groups())) if st else 0)
print(rps.group(1) if rps else "nan", ms(lat.group(3)) if lat else "nan",
      ms(lat.group(2)) if lat else "nan", err)
PY
)" >>"$h2res"
        done
    done
    h2_links=$(curl -sS --max-time 2 "http://127.0.0.1:$h2t_adm_out/stats" | python3 -c '
import json, sys
ls = json.load(sys.stdin)["listeners"]
print("links %d, streams carried %d, fallback_direct %d" % tuple(sum(l["pool"][k] for l in ls)
      for k in ("connections", "streams_total", "fallback_direct")))' 2>/dev/null || echo "?")
fi

# --- the table ------------------------------------------------------------------------
{
    for k in "${!idle_rss[@]}"; do echo "rss_idle $k ${idle_rss[$k]}"; done
    for k in "${!busy_rss[@]}"; do echo "rss_busy $k ${busy_rss[$k]}"; done
    for k in "${!opened[@]}"; do echo "opened $k ${opened[$k]}"; done
    for k in "${!act_rss[@]}"; do echo "active $k ${act_rss[$k]// /_}"; done
} >"$work/rss.txt"
TLS_NOTES=$tls_notes H2_LINKS=${h2_links:-} H2_CLIENTS=$H2_CLIENTS H2_STREAMS=$H2_STREAMS \
python3 - "$res" "$work/rss.txt" "$IDLE_CONNS" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" "$h2res" \
    "$MANY_CONNS" "$POST_BODY" <<'PY'
import statistics, sys, collections, platform, os, time
res, rssf, idle_n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rounds, dur, conns, workers = sys.argv[4:8]
h2res, many_conns, post_body = sys.argv[8], sys.argv[9], sys.argv[10]
d = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(res):
    chain, kind, rnd, a, b, c, err = line.split()
    d[chain][kind].append((float(a), float(b), float(c), int(err)))
rss = collections.defaultdict(dict)
for line in open(rssf):
    k, name, v = line.split()
    rss[k][name] = int(v) if v.lstrip("-").isdigit() else v.replace("_", " ")
def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")
cpu = "?"
try:
    for ln in open("/proc/cpuinfo"):
        if ln.startswith("model name"):
            cpu = ln.split(":", 1)[1].strip(); break
except OSError:
    pass
print()
print("Tether benchmark, %s, %s, %d CPUs (%s), kernel %s" % (
    time.strftime("%Y-%m-%d"), platform.node(), os.cpu_count(), cpu, platform.release()))
print("%s rounds x %ss wrk runs, %s connections, %s worker(s) per proxy; medians; "
      "errors summed" % (rounds, dur, conns, workers))
print()
hdr = ("chain", "keep-alive req/s", "p50 ms", "p99 ms", "CPU us/req", "new-conn req/s",
       "100 MB MB/s", "errors", "RSS idle MiB", "RSS %d idle MiB" % idle_n, "KiB/conn")
rows = []
for chain in ("tether", "tether-direct", "tether-l7", "nginx", "haproxy", "direct",
              "nginx-default", "haproxy-default", "nginx-l7"):
    if chain not in d:
        continue
    ka, cl, xf = d[chain]["keepalive"], d[chain]["close"], d[chain]["xfer"]
    errs = sum(x[3] for x in ka + cl + xf + d[chain]["many"] + d[chain]["post"])
    ri, rb = rss["rss_idle"].get(chain), rss["rss_busy"].get(chain)
    per = ("%.1f" % ((rb - ri) / idle_n)) if ri and rb else "-"
    cpu_us = med([x[0] for x in d[chain]["cpu"]])
    rows.append((chain, "%.0f" % med([x[0] for x in ka]), "%.2f" % med([x[1] for x in ka]),
                 "%.2f" % med([x[2] for x in ka]), "%.1f" % cpu_us if cpu_us == cpu_us else "-",
                 "%.0f" % med([x[0] for x in cl]),
                 "%.0f" % med([x[0] for x in xf]), str(errs),
                 "%.1f" % (ri / 1024) if ri else "-", "%.1f" % (rb / 1024) if rb else "-", per))
w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
fmt = " | ".join("%%-%ds" % x for x in w)
print(fmt % hdr)
print("-+-".join("-" * x for x in w))
for r in rows:
    print(fmt % r)
# The keep-alive target is a ratio to the nginx stream pair: each round's, in run order.
if "tether" in d and "nginx" in d:
    t = [x[0] for x in d["tether"]["keepalive"]]
    n = [x[0] for x in d["nginx"]["keepalive"]]
    print("  keep-alive per round, tether / nginx: %s; median of the ratios %.2fx" % (
        ", ".join("%.0f / %.0f = %.2fx" % (a, b, a / b) for a, b in zip(t, n)),
        med([a / b for a, b in zip(t, n)])))
    t, n = [x[0] for x in d["tether"]["cpu"]], [x[0] for x in d["nginx"]["cpu"]]
    if t and n:
        print("  proxy CPU per keep-alive request (both proxies, user + system), per round, "
              "tether / nginx: %s; median of the ratios %.2fx" % (
                  ", ".join("%.1f / %.1f us" % (a, b) for a, b in zip(t, n)),
                  med([a / b for a, b in zip(t, n)])))
def extra_load(kind, title):
    """The medians of an extra load (run on tether, nginx, haproxy) and, per round, the
    tether / nginx ratio."""
    if not d["tether"].get(kind):
        return
    print("  %s (req/s, p99 ms): %s" % (title, "; ".join(
        "%s %.0f, %.2f" % (ch, med([x[0] for x in d[ch][kind]]), med([x[2] for x in d[ch][kind]]))
        for ch in ("tether", "nginx", "haproxy") if d[ch].get(kind))))
    if d["nginx"].get(kind):
        print("    per round, tether / nginx: %s" % ", ".join(
            "%.2fx" % (a[0] / b[0]) for a, b in zip(d["tether"][kind], d["nginx"][kind])))
extra_load("many", "keep-alive at %s connections" % many_conns)
extra_load("post", "keep-alive POSTs with a %s-byte body" % post_body)
print()
print("RSS figures are both proxies of a pair together (nginx: masters and workers).")
for side in ("tether_out", "tether_in"):
    ri, rb = rss["rss_idle"].get(side), rss["rss_busy"].get(side)
    if ri and rb:
        print("  %s sidecar: idle %.1f MiB, with %s connections %.1f MiB (%.1f KiB/conn)" % (
            side.split("_")[1], ri / 1024, rss["opened"].get("tether", "?"), rb / 1024,
            (rb - ri) / idle_n))
print("  idle connections held: %s" % ", ".join("%s %s" % kv for kv in sorted(
    rss["opened"].items())))
a = rss["active"]
if a.get("held"):
    n_act = a["held"]
    print("  active pooled streams: %d app connections through the tether pair, each answered "
          "once and held open (inbound counts %s active; outbound links, streams: %s): "
          "outbound %.1f -> %.1f MiB (%.1f KiB/stream), inbound %.1f -> %.1f MiB "
          "(%.1f KiB/stream)" % (
              n_act, a.get("streams"), a.get("pool"), a["before_out"] / 1024,
              a["with_out"] / 1024, (a["with_out"] - a["before_out"]) / n_act,
              a["before_in"] / 1024, a["with_in"] / 1024,
              (a["with_in"] - a["before_in"]) / n_act))
print("  TLS between the proxies of each pair (openssl s_client to the inbound): %s" %
      os.environ.get("TLS_NOTES", "?"))
t, n = rows[0], [r for r in rows if r[0] == "nginx"][0]
print()
print("targets: tether req/s >= nginx: %s; tether p99 <= nginx: %s; idle RSS per sidecar "
      "< 12 MiB: %s; < 20 KiB per idle mTLS connection: %s" % (
          "yes" if float(t[1]) >= float(n[1]) else "NO",
          "yes" if float(t[3]) <= float(n[3]) else "NO",
          "yes" if all(rss["rss_idle"].get(s, 1 << 30) < 12 * 1024
                       for s in ("tether_in", "tether_out")) else "NO",
          "yes" if all(rss["rss_busy"].get(s) and (rss["rss_busy"][s] - rss["rss_idle"][s])
                       / idle_n < 20 for s in ("tether_in", "tether_out")) else "NO"))

h2 = collections.defaultdict(list)
if os.path.exists(h2res):
    for line in open(h2res):
        chain, rnd, a, b, c, err = line.split()
        h2[chain].append((float(a), float(b), float(c), int(err)))
if h2:
    print()
    print("h2c through each pair to an nghttpd h2c backend: h2load -t 2 -c %s -m %s, %s rounds x "
          "%ss, medians; errors summed" % (os.environ.get("H2_CLIENTS"),
                                           os.environ.get("H2_STREAMS"), rounds, dur))
    print()
    hdr = ("pair", "req/s", "mean ms", "max ms", "errors")
    rows = [(ch, "%.0f" % med([x[0] for x in h2[ch]]), "%.2f" % med([x[1] for x in h2[ch]]),
             "%.2f" % med([x[2] for x in h2[ch]]), str(sum(x[3] for x in h2[ch])))
            for ch in ("tether", "nghttpx", "direct") if ch in h2]
    w = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
    fmt = " | ".join("%%-%ds" % x for x in w)
    print(fmt % hdr)
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(fmt % r)
    print("  per round req/s: " + "; ".join("%s %s" % (ch, ", ".join("%.0f" % x[0] for x in h2[ch]))
                                          for ch in ("tether", "nghttpx", "direct") if ch in h2))
    print("  tether outbound pool after the h2 rounds: %s" % os.environ.get("H2_LINKS", "?"))
PY

if [ "${SKIP_CONTROL:-0}" != 1 ]; then
    say "control plane: RSS per held sidecar connection"
    # shellcheck disable=SC2086 # CONTROL_CONNS is a list of counts
    /usr/bin/python3 "$here/control_conns.py" "$build" ${CONTROL_CONNS:-500 2000} ||
        say "control plane figures failed"
fi
