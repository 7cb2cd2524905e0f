#!/bin/bash
# The transparent-mode benchmark (not part of the test run). Two pods as network namespaces
# on a bridge (deploy/local/netns.sh), capture rules (deploy/iptables/tether-iptables) in
# both; wrk in pod A (UID 4242) against an nginx HTTP backend in pod B (0.0.0.0:8080),
# through three proxy pairs, one pair at a time, each proxy with WORKERS workers, as UID
# 1337:
#
#   tether-transparent  wrk -> B_IP:8080, captured -> A's tether-sidecar --transparent
#                       (:15001, B_IP:8080 in its service table) == mTLS ==> captured ->
#                       B's tether-sidecar --transparent (:15006) -> 127.0.0.1:8080
#   tether-explicit     wrk -> 127.0.0.1:15101 (A's --outbound) == mTLS ==> B_IP:15106
#                       (B's --inbound, a port the capture leaves alone) -> 127.0.0.1:8080
#   haproxy-transparent wrk -> B_IP:8080, captured -> A's HAProxy (:15001, server
#                       0.0.0.0:0: the original destination; ssl verify required with a
#                       client certificate) == mTLS ==> captured -> B's HAProxy (:15006,
#                       ssl verify required) -> 127.0.0.1:8080
#
# Per pair and round: requests/s and p50/p99 at CONNS keep-alive connections, requests/s
# with a new connection per request (Connection: close). Rounds alternate the order; the
# table shows medians. Everything it starts is stopped by pid, its namespaces deleted by
# name, on exit.
#
# Usage: tests/bench/transparent.sh [BUILD_DIR]   (default build-bench, --buildtype=release)
# Environment: ROUNDS (3), DURATION (wrk seconds, 5), CONNS (50), WORKERS (1),
#   BENCH_PREFIX (namespace names, tbench-), BENCH_NET (the pods' /24, 10.86.0),
#   TW_REUSE (net.ipv4.tcp_tw_reuse in both pods, 1; see below), SKIP_BUILD=1,
#   SKIP_INSTALL=1, KEEP=1 (keep the work directory).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build-bench}
case $build in /*) ;; *) build=$root/$build ;; esac
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-5} CONNS=${CONNS:-50} WORKERS=${WORKERS:-1}
prefix=${BENCH_PREFIX:-tbench-} net=${BENCH_NET:-10.86.0}
hub=${prefix}hub pod_a=${prefix}a pod_b=${prefix}b
hub_ip=$net.254 a_ip=$net.1 b_ip=$net.2
iptables_script=$root/deploy/iptables/tether-iptables
WORKLOAD=(setpriv --reuid 4242 --regid 4242 --clear-groups)
PROXY=(setpriv --reuid 1337 --regid 1337 --clear-groups)
# shellcheck source=../../deploy/local/netns.sh
. "$root/deploy/local/netns.sh"

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=cpu.sh
. "$here/cpu.sh"

# --- tools and build ------------------------------------------------------------------
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    need=()
    command -v wrk >/dev/null || need+=(wrk)
    command -v nginx >/dev/null || need+=(nginx)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v curl >/dev/null || need+=(curl)
    command -v iptables >/dev/null || need+=(iptables)
    command -v ss >/dev/null || need+=(iproute2)
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
    fi
fi
if ! why=$(netns_usable "${prefix}probe"); then
    say "cannot run pods in namespaces here: $why"
    exit 2
fi
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    if [ ! -f "$build/build.ninja" ]; then
        meson setup "$build" "$root" --buildtype=release >/dev/null
    fi
    bt=$(meson introspect --buildoptions "$build" | python3 -c \
        'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="buildtype"][0])')
    [ "$bt" = release ] || { say "$build has buildtype=$bt; want release (meson configure $build --buildtype=release)"; exit 2; }
    ninja -C "$build" sidecar/tether-sidecar >/dev/null
fi
sidecar=$build/sidecar/tether-sidecar
[ -x "$sidecar" ] || { say "$sidecar missing"; exit 2; }
ulimit -n 20000 || ulimit -n "$(ulimit -Hn)"

# --- state, cleaned up by pid and namespace name --------------------------------------
work=$(mktemp -d /tmp/tether-bench-tp.XXXXXX)
chmod 755 "$work"
NETNS_STATE=$work/state
mkdir -p "$NETNS_STATE"
cleanup() {
    local rc=$?
    netns_teardown
    if [ "${KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then say "kept $work"; else rm -rf "$work"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_listen NS PORT: waits up to 10 s for a listening TCP socket on PORT in NS (looked
# up, not connected to: a connection to a transparent listener's port would loop).
wait_listen() {
    for _ in $(seq 100); do
        [ -n "$(nsx "$1" ss -Hltn "sport = :$2")" ] && return 0
        sleep 0.1
    done
    say "nothing listens on $2 in $1"
    return 1
}

say "pods: $pod_a $a_ip (wrk), $pod_b $b_ip (nginx :8080) on br0 in $hub; capture rules in both"
netns_hub "$hub" "$hub_ip/24"
netns_pod "$hub" "$pod_a" a "$a_ip/24" "$hub_ip"
netns_pod "$hub" "$pod_b" b "$b_ip/24" "$hub_ip"
# TIME_WAIT: a new-connection run leaves up to ~30,000 sockets in TIME_WAIT in pod A. The
# explicit pair's wrk dials 127.0.0.1, where the kernel's default tcp_tw_reuse=2 lets a
# connect() reuse such a port; the transparent pairs' wrk (and HAProxy's per-connection
# dial) goes to B_IP:8080, where it does not, so each connect() searches an exhausted
# ephemeral range and a run after another one measures that search. TW_REUSE (default 1)
# is set in both pods so that all three pairs connect alike; TW_REUSE=2 keeps the default.
TW_REUSE=${TW_REUSE:-1}
nsx "$pod_a" sysctl -qw net.ipv4.tcp_tw_reuse="$TW_REUSE"
nsx "$pod_b" sysctl -qw net.ipv4.tcp_tw_reuse="$TW_REUSE"
# 15106 is the explicit pair's inbound port: the capture leaves it to that sidecar.
netns_capture "$pod_a" "$iptables_script" --exclude-inbound-ports 15106
netns_capture "$pod_b" "$iptables_script" --exclude-inbound-ports 15106

say "certificates"
DNS_SUFFIX=mesh.local "$root/deploy/local/mkcerts.sh" "$work/certs" web api >/dev/null
c=$work/certs
chmod 755 "$c"
chmod 644 "$c"/*
cat "$c/web.crt" "$c/web.key" >"$c/web.pem"
cat "$c/api.crt" "$c/api.key" >"$c/api.pem"
chmod 644 "$c"/*.pem
web_id=spiffe://cluster.local/ns/shop/sa/web api_id=spiffe://cluster.local/ns/shop/sa/api
cat >"$work/policy.json" <<EOF
{"default": "deny", "rules": [{"name": "web-to-api", "action": "allow", "from": ["$web_id"]}]}
EOF
chmod 644 "$work/policy.json"

say "backend: nginx HTTP on $b_ip 0.0.0.0:8080 in $pod_b"
mkdir -p "$work/nginx-be"
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
    server {
        listen 0.0.0.0:8080 backlog=4096;
        location = / { default_type text/plain; return 200 "hello, world\n"; }
    }
}
EOF
netns_spawn nginx_be ip netns exec "$pod_b" nginx -p "$work/nginx-be" \
    -e "$work/nginx-be/error.log" -c "$work/nginx-be/nginx.conf"
wait_listen "$pod_b" 8080

haproxy_cfg() { # FILE BIND BACKEND-SERVER-LINE
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
    bind $2
    maxconn 9000
    default_backend be
backend be
    $3
EOF
    chmod 644 "$1"
}
haproxy_cfg "$work/haproxy-a.cfg" "0.0.0.0:15001" \
    "server s 0.0.0.0:0 ssl crt $c/web.pem ca-file $c/ca.crt verify required verifyhost api.mesh.local"
haproxy_cfg "$work/haproxy-b.cfg" "0.0.0.0:15006 ssl crt $c/api.pem ca-file $c/ca.crt verify required" \
    "server be 127.0.0.1:8080"

tls=(--identity-cert "$c/web.crt" --identity-key "$c/web.key" --trust-bundle "$c/ca.crt")
tls_b=(--identity-cert "$c/api.crt" --identity-key "$c/api.key" --trust-bundle "$c/ca.crt")
common=(--workers "$WORKERS" --log-level warn --max-connections 19000)

# start_pair CHAIN: starts that chain's two proxies and waits for them. Sets url.
start_pair() { # also sets pid_a and pid_b, the two proxies' processes
    case $1 in
        tether-transparent)
            netns_spawn "$1-b" ip netns exec "$pod_b" "${PROXY[@]}" "$sidecar" --transparent \
                "${tls_b[@]}" --policy "$work/policy.json" "${common[@]}"
            netns_spawn "$1-a" ip netns exec "$pod_a" "${PROXY[@]}" "$sidecar" --transparent \
                "${tls[@]}" --service "$b_ip:8080=$api_id" "${common[@]}"
            netns_wait_http "$pod_a" http://127.0.0.1:15000/ready
            netns_wait_http "$pod_b" http://127.0.0.1:15000/ready
            url=http://$b_ip:8080/
            ;;
        tether-explicit)
            netns_spawn "$1-b" ip netns exec "$pod_b" "${PROXY[@]}" "$sidecar" \
                "${tls_b[@]}" --policy "$work/policy.json" --admin 127.0.0.1:15100 \
                --inbound "0.0.0.0:15106=127.0.0.1:8080" "${common[@]}"
            netns_spawn "$1-a" ip netns exec "$pod_a" "${PROXY[@]}" "$sidecar" \
                "${tls[@]}" --admin 127.0.0.1:15100 \
                --outbound "127.0.0.1:15101=$b_ip:15106@$api_id" "${common[@]}"
            netns_wait_http "$pod_a" http://127.0.0.1:15100/ready
            netns_wait_http "$pod_b" http://127.0.0.1:15100/ready
            url=http://127.0.0.1:15101/
            ;;
        haproxy-transparent)
            netns_spawn "$1-b" ip netns exec "$pod_b" "${PROXY[@]}" haproxy -db -f "$work/haproxy-b.cfg"
            netns_spawn "$1-a" ip netns exec "$pod_a" "${PROXY[@]}" haproxy -db -f "$work/haproxy-a.cfg"
            wait_listen "$pod_a" 15001
            wait_listen "$pod_b" 15006
            url=http://$b_ip:8080/
            ;;
    esac
    pid_a=$(cut -d' ' -f1 "$NETNS_STATE/pids/$1-a") pid_b=$(cut -d' ' -f1 "$NETNS_STATE/pids/$1-b")
    local out
    out=$(nsx "$pod_a" "${WORKLOAD[@]}" curl -sS --max-time 5 "$url") ||
        { say "$1 does not answer at $url"; return 1; }
    [ "$out" = "hello, world" ] || { say "$1 answered '$out'"; return 1; }
}

res=$work/results.txt diag=$work/diag.txt
: >"$res"
: >"$diag"
run_wrk() { # CHAIN ROUND KIND: appends "chain kind round rps p50_ms p99_ms errors", and
    # "chain cpu round US_PER_REQUEST nan nan 0" for the keep-alive load ("cpu_close" for the
    # new-connection one): the CPU time both proxies spent per request (user + system; the
    # capture's NAT on their sockets counts).
    local chain=$1 round=$2 kind=$3 extra=() f=$work/wrk-$1-$3-$2.txt before
    [ "$kind" = close ] && extra=(-H "Connection: close")
    before=$(cpu_ticks "$pid_a" "$pid_b")
    nsx "$pod_a" "${WORKLOAD[@]}" wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency \
        "${extra[@]}" "$url" >"$f" 2>&1 || true
    record_cpu "$res" "$chain" "$kind" "$round" "$before" "$(cpu_ticks "$pid_a" "$pid_b")" "$f"
    echo "$chain $kind $round $(python3 "$here/wrk_result.py" "$f")" >>"$res"
}

chains=(tether-transparent tether-explicit haproxy-transparent)
for round in $(seq "$ROUNDS"); do
    order=()
    for i in 0 1 2; do order+=("${chains[$(((i + round - 1) % 3))]}"); done
    say "round $round/$ROUNDS: ${order[*]}"
    for chain in "${order[@]}"; do
        start_pair "$chain"
        run_wrk "$chain" "$round" keepalive
        run_wrk "$chain" "$round" close
        # Sockets in TIME_WAIT in pod A after the new-connection run: wrk's own (to B_IP:8080
        # or to 127.0.0.1:15101) and, for a pair that dials per connection, the proxy's.
        tw=$(nsx "$pod_a" ss -Htan state time-wait | wc -l)
        echo "$chain $round time_wait $tw" >>"$diag"
        if [ "$chain" != haproxy-transparent ]; then
            # A's pool counters: did app connections ride tunnels, or go direct?
            adm=15000
            [ "$chain" = tether-explicit ] && adm=15100
            nsx "$pod_a" curl -fsS --max-time 2 "http://127.0.0.1:$adm/stats" | python3 -c '
import json, sys
ls = [l for l in json.load(sys.stdin)["listeners"] if "pool" in l]
t = {k: sum(l["pool"][k] for l in ls) for k in ("connections", "streams_total", "fallback_direct")}
print(" ".join("%s %d" % kv for kv in t.items()))' | sed "s/^/$chain $round /" >>"$diag" || true
        fi
        if [ "$chain" = tether-transparent ]; then
            # The captured path really was mTLS between the two sidecars.
            hs=$(nsx "$pod_b" curl -fsS --max-time 2 http://127.0.0.1:15000/stats | python3 -c \
                'import json,sys; print(sum(l["handshakes"] for l in json.load(sys.stdin)["listeners"] if l["name"].startswith("transparent-inbound")))')
            [ "$hs" -ge 1 ] || { say "B's transparent sidecar saw no mTLS handshake"; exit 1; }
        fi
        netns_stop "$chain-a" "$chain-b"
        sleep 1
    done
done

TW_REUSE=$TW_REUSE python3 - "$res" "$ROUNDS" "$DURATION" "$CONNS" "$WORKERS" <<'PY'
import collections, os, platform, statistics, sys, time
res, rounds, dur, conns, workers = sys.argv[1:6]
d = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(res):
    chain, kind, rnd, a, b, c, err = line.split()
    d[chain][kind].append((float(a), float(b), float(c), int(err)))
def med(xs):
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")
cpu = "?"
for ln in open("/proc/cpuinfo"):
    if ln.startswith("model name"):
        cpu = ln.split(":", 1)[1].strip()
        break
print()
print("Tether transparent-mode benchmark, %s, %d CPUs (%s), kernel %s" % (
    time.strftime("%Y-%m-%d"), os.cpu_count(), cpu, platform.release()))
print("pods in network namespaces with capture rules; %s rounds x %ss wrk runs, %s "
      "connections, %s worker(s) per proxy; medians; errors summed; tcp_tw_reuse=%s in the "
      "pods" % (rounds, dur, conns, workers, os.environ.get("TW_REUSE", "?")))
print()
hdr = ("pair", "keep-alive req/s", "p50 ms", "p99 ms", "CPU us/req", "new-conn req/s",
       "CPU us/conn", "errors")
rows = []
for chain in ("tether-transparent", "tether-explicit", "haproxy-transparent"):
    ka, cl = d[chain]["keepalive"], d[chain]["close"]
    cpu_us = med([x[0] for x in d[chain]["cpu"]])
    cpu_conn = med([x[0] for x in d[chain]["cpu_close"]])
    rows.append((chain, "%.0f" % med([x[0] for x in ka]), "%.2f" % med([x[1] for x in ka]),
                 "%.2f" % med([x[2] for x in ka]), "%.1f" % cpu_us if cpu_us == cpu_us else "-",
                 "%.0f" % med([x[0] for x in cl]),
                 "%.1f" % cpu_conn if cpu_conn == cpu_conn else "-",
                 str(sum(x[3] for x in ka + cl))))
w = [max(len(r[i]) for r in rows + [hdr]) for i in range(len(hdr))]
fmt = " | ".join("%%-%ds" % x for x in w)
print(fmt % hdr)
print("-+-".join("-" * x for x in w))
for r in rows:
    print(fmt % r)
print()
print("per round (keep-alive req/s): " + "; ".join(
    "%s %s" % (c, ", ".join("%.0f" % x[0] for x in d[c]["keepalive"])) for c in d))
t, e, h = (float(r[1]) for r in rows)
print("targets: transparent >= explicit: %s (%.2fx); transparent > haproxy: %s (%.2fx)" % (
    "yes" if t >= e else "NO", t / e if e else 0, "yes" if t > h else "NO", t / h if h else 0))


def ratios(kind, a, b):
    """Median over rounds of a/b, each round's pair measured minutes apart at most: steadier
    than a ratio of medians when other work on the machine comes and goes."""
    ra = {i: x[0] for i, x in enumerate(d[a][kind])}
    rb = {i: x[0] for i, x in enumerate(d[b][kind])}
    rs = [ra[i] / rb[i] for i in ra if i in rb and rb[i] > 0]
    return med(rs), rs


for kind in ("keepalive", "close", "cpu", "cpu_close"):  # proxy CPU per request, per connection
    for other in ("tether-explicit", "haproxy-transparent"):
        m, rs = ratios(kind, "tether-transparent", other)
        print("%s: tether-transparent / %s per round: %s; median %.2fx" % (
            kind, other, ", ".join("%.2f" % r for r in rs), m))
PY
echo
echo "after each new-connection run: TIME_WAIT sockets in pod A; A's pool counters (since start)"
sed 's/^/  /' "$diag"
