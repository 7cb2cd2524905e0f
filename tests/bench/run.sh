#!/bin/bash
# Tether's benchmark (not part of the test run). One command, one run, alternating rounds:
#
#   wrk/curl -> [outbound proxy] -> mTLS -> [inbound proxy] -> nginx HTTP backend
#
# for six chains: tether (two tether-sidecars, pooled: app connections ride HTTP/2 tunnels
# on a few mTLS links), tether-direct (the same with --pool off: one mTLS connection per app
# connection), tether-l7 (the same with a policy whose
# rules name methods and paths, so the inbound reads every request: http/gate.c), nginx (two nginx stream proxies with
# proxy_ssl / ssl_verify_client), haproxy (two haproxies, ssl verify required both ways)
# and direct (no proxy). Per chain: requests/s and p50/p99 latency at 50 keep-alive
# connections, requests/s with a new connection per request (Connection: close), MB/s
# for one 100 MB download; then each pair's RSS idle and with 5,000 idle mTLS
# connections between its two proxies. Prints a table (medians over the rounds). Then the
# control plane's RSS per held sidecar Watch connection and its thread count with 500 and
# 2,000 held (control_conns.py; CONTROL_CONNS to change the counts).
#
# Usage: tests/bench/run.sh [BUILD_DIR]      (default build-bench, --buildtype=release)
# Environment: ROUNDS (3), DURATION (wrk seconds per measurement, 5), CONNS (50),
#   IDLE_CONNS (5000), WORKERS (worker threads/processes per proxy, 1), BENCH_PORT (21000),
#   SKIP_BUILD=1, SKIP_INSTALL=1.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build-bench}
case $build in /*) ;; *) build=$root/$build ;; esac
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} CONNS=${CONNS:-50} IDLE_CONNS=${IDLE_CONNS:-5000}
WORKERS=${WORKERS:-1} base=${BENCH_PORT:-21000}

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# --- tools and build ------------------------------------------------------------------
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    need=()
    command -v wrk >/dev/null || need+=(wrk)
    command -v nginx >/dev/null || need+=(nginx)
    [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v curl >/dev/null || need+=(curl)
    /usr/bin/python3 -c 'import grpc, grpc_tools' 2>/dev/null || need+=(python3-grpcio python3-grpc-tools)
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    fi
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

say "haproxy pair: :$h_out -> ssl verify required -> :$h_in (verify required) -> backend"
haproxy_cfg() { # FILE FRONTEND-BIND SERVER-LINE
    cat >"$1" <<EOF
global
    maxconn 9000
    nbthread $WORKERS
    ssl-default-bind-options ssl-min-ver TLSv1.3
    ssl-default-server-options ssl-min-ver TLSv1.3
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

for p in $t_in $t_out $d_in $d_out $l_in $l_out $n_out $n_in $h_out $h_in; do wait_port "$p"; done
for p in $t_out $d_out $l_out $n_out $h_out $be; do
    out=$(curl -sS --max-time 5 "http://127.0.0.1:$p/") || { say "chain on port $p does not answer"; exit 1; }
    [ "$out" = "hello, world" ] || { say "chain on port $p answered '$out'"; exit 1; }
done
say "all six chains answer"

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
    [haproxy]=$h_out [direct]=$be)
chains=(tether tether-direct tether-l7 nginx haproxy direct)
res=$work/results.txt
: >"$res"

run_wrk() { # CHAIN ROUND KIND: appends "chain kind round rps p50_ms p99_ms errors"
    local chain=$1 round=$2 kind=$3 extra=() out
    [ "$kind" = close ] && extra=(-H "Connection: close")
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${extra[@]}" \
        "http://127.0.0.1:${port[$chain]}/" 2>&1) || true
    echo "$out" >"$work/wrk-$chain-$kind-$round.txt"
    echo "$chain $kind $round $(python3 "$here/wrk_result.py" "$work/wrk-$chain-$kind-$round.txt")" >>"$res"
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
    for chain in "${order[@]}"; do run_wrk "$chain" "$round" close; done
    for chain in "${order[@]}"; do run_transfer "$chain" "$round"; done
done

say "idle connections: $IDLE_CONNS through each pair"
cat >"$work/idle.py" <<'PY'
import resource, socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
socks = []
for i in range(n):
    for attempt in range(50):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
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

# --- the table ------------------------------------------------------------------------
{
    for k in "${!idle_rss[@]}"; do echo "rss_idle $k ${idle_rss[$k]}"; done
    for k in "${!busy_rss[@]}"; do echo "rss_busy $k ${busy_rss[$k]}"; done
    for k in "${!opened[@]}"; do echo "opened $k ${opened[$k]}"; done
} >"$work/rss.txt"
python3 - "$res" "$work/rss.txt" "$IDLE_CONNS" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" <<'PY'
import statistics, sys, collections, platform, os, time
res, rssf, idle_n = sys.argv[1], sys.argv[2], int(sys.argv[3])
rounds, dur, conns, workers = sys.argv[4:8]
d = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(res):
    chain, kind, rnd, a, b, c, err = line.split()
    d[chain][kind].append((float(a), float(b), float(c), int(err)))
rss = collections.defaultdict(dict)
for line in open(rssf):
    k, name, v = line.split()
    rss[k][name] = int(v)
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
hdr = ("chain", "keep-alive req/s", "p50 ms", "p99 ms", "new-conn req/s", "100 MB MB/s",
       "errors", "RSS idle MiB", "RSS %d idle MiB" % idle_n, "KiB/conn")
rows = []
for chain in ("tether", "tether-direct", "tether-l7", "nginx", "haproxy", "direct"):
    ka, cl, xf = d[chain]["keepalive"], d[chain]["close"], d[chain]["xfer"]
    errs = sum(x[3] for x in ka + cl + xf)
    ri, rb = rss["rss_idle"].get(chain), rss["rss_busy"].get(chain)
    per = ("%.1f" % ((rb - ri) / idle_n)) if ri and rb else "-"
    rows.append((chain, "%.0f" % med([x[0] for x in ka]), "%.2f" % med([x[1] for x in ka]),
                 "%.2f" % med([x[2] for x in ka]), "%.0f" % med([x[0] for x in cl]),
                 "%.0f" % med([x[0] for x in xf]), str(errs),
                 "%.1f" % (ri / 1024) if ri else "-", "%.1f" % (rb / 1024) if rb else "-", per))
w = [max(len(str(r[i])) for r in rows + [hdr]) for i in range(len(hdr))]
fmt = " | ".join("%%-%ds" % x for x in w)
print(fmt % hdr)
print("-+-".join("-" * x for x in w))
for r in rows:
    print(fmt % r)
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
t, n = rows[0], rows[3]
print()
print("targets: tether req/s >= nginx: %s; tether p99 <= nginx: %s; idle RSS per sidecar "
      "< 12 MiB: %s; < 20 KiB per idle mTLS connection: %s" % (
          "yes" if float(t[1]) >= float(n[1]) else "NO",
          "yes" if float(t[3]) <= float(n[3]) else "NO",
          "yes" if all(rss["rss_idle"].get(s, 1 << 30) < 12 * 1024
                       for s in ("tether_in", "tether_out")) else "NO",
          "yes" if all(rss["rss_busy"].get(s) and (rss["rss_busy"][s] - rss["rss_idle"][s])
                       / idle_n < 20 for s in ("tether_in", "tether_out")) else "NO"))
PY

say "control plane: RSS per held sidecar connection"
# shellcheck disable=SC2086 # CONTROL_CONNS is a list of counts
/usr/bin/python3 "$here/control_conns.py" "$build" ${CONTROL_CONNS:-500 2000} ||
    say "control plane figures failed"
