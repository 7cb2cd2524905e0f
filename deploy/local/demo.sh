#!/bin/bash
# A small Tether mesh on this machine, in explicit mode (no iptables, no root needed):
#
#   curl --> web sidecar (outbound 127.0.0.1:15001) ==mTLS==> api sidecar (inbound
#   127.0.0.1:15006) --> backend (python3 -m http.server on 127.0.0.1:18080)
#
# Certificates come from mkcerts.sh (CA + web, api, intruder); the api sidecar's policy
# allows only web to port 18080, so the intruder (a valid certificate of the same mesh)
# is refused. Prints the /stats figures of both sidecars at the end and stops everything
# it started, by pid, on exit.
#
# Usage: deploy/local/demo.sh [BUILD_DIR]   (default build-release; it builds nothing)
# Environment: DEMO_BASE_PORT shifts every port (default 15000 -> admins 15000/15100).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build-release}
case $build in /*) ;; *) build=$root/$build ;; esac
bin=$build/sidecar/tether-sidecar
[ -x "$bin" ] || { echo "demo: $bin not found: build first (meson setup $build --buildtype=release && ninja -C $build)" >&2; exit 2; }

base=${DEMO_BASE_PORT:-15000}
web_admin=$base api_admin=$((base + 100))
web_out=$((base + 1)) api_in=$((base + 6)) backend_port=$((base + 3080))
td=cluster.local
web_id=spiffe://$td/ns/shop/sa/web api_id=spiffe://$td/ns/shop/sa/api

work=$(mktemp -d "${TMPDIR:-/tmp}/tether-demo.XXXXXX")
pids=()
cleanup() {
    local rc=$?
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ $rc -ne 0 ]; then
        echo "demo: failed (exit $rc); last log lines:" >&2
        tail -n 5 "$work"/*.log >&2 2>/dev/null || true
    fi
    rm -rf "$work"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() { # URL: waits up to 10 s for a 200
    for _ in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: $1 did not answer" >&2
    return 1
}

echo "== certificates"
"$here/mkcerts.sh" "$work/certs" web api intruder

echo "== backend on 127.0.0.1:$backend_port"
mkdir -p "$work/www"
echo "hello from the api backend" >"$work/www/index.html"
python3 -m http.server "$backend_port" --bind 127.0.0.1 --directory "$work/www" \
    >"$work/backend.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$backend_port/"

cat >"$work/policy.json" <<POLICY
{
  "default": "deny",
  "rules": [
    {"name": "web-to-api", "action": "allow", "to": ["$api_id"],
     "from": ["$web_id"], "ports": [$backend_port]},
    {"name": "flag-intruder", "action": "deny", "from": ["spiffe://$td/ns/shop/sa/intruder"],
     "mode": "audit"}
  ]
}
POLICY

echo "== api sidecar: inbound 127.0.0.1:$api_in -> 127.0.0.1:$backend_port, admin :$api_admin"
"$bin" --identity-cert "$work/certs/api.crt" --identity-key "$work/certs/api.key" \
    --trust-bundle "$work/certs/ca.crt" --policy "$work/policy.json" \
    --inbound "127.0.0.1:$api_in=127.0.0.1:$backend_port" \
    --admin "127.0.0.1:$api_admin" --workers 2 2>"$work/api.log" &
pids+=($!)
echo "== web sidecar: outbound 127.0.0.1:$web_out -> 127.0.0.1:$api_in as $api_id, admin :$web_admin"
"$bin" --identity-cert "$work/certs/web.crt" --identity-key "$work/certs/web.key" \
    --trust-bundle "$work/certs/ca.crt" \
    --outbound "127.0.0.1:$web_out=127.0.0.1:$api_in@$api_id" \
    --admin "127.0.0.1:$web_admin" --workers 2 2>"$work/web.log" &
pids+=($!)
wait_http "http://127.0.0.1:$api_admin/ready"
wait_http "http://127.0.0.1:$web_admin/ready"

echo "== requests: curl -> web sidecar -> mTLS -> api sidecar -> backend"
for i in 1 2 3 4 5; do
    printf '  request %d: ' "$i"
    curl -fsS --max-time 5 "http://127.0.0.1:$web_out/"
done

echo "== a refused caller: the intruder (valid mesh certificate, not allowed by the policy)"
if out=$(curl -sS -k --max-time 5 --cert "$work/certs/intruder.crt" \
        --key "$work/certs/intruder.key" "https://127.0.0.1:$api_in/" 2>&1); then
    echo "demo: the intruder got through: $out" >&2
    exit 1
else
    echo "  refused as expected: ${out:-connection closed}"
fi
echo "== a caller without any certificate"
if curl -sS -k --max-time 5 "https://127.0.0.1:$api_in/" >/dev/null 2>&1; then
    echo "demo: a caller without a certificate got through" >&2
    exit 1
else
    echo "  refused as expected"
fi
sleep 0.3

echo "== /stats"
for side in web:$web_admin api:$api_admin; do
    name=${side%%:*} port=${side##*:}
    curl -fsS --max-time 5 "http://127.0.0.1:$port/stats" >"$work/$name-stats.json"
    python3 - "$name" "$work/$name-stats.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
i = s.get("identity", {})
print("%s sidecar: %s, serial %s, expires in %ss" % (
    name, i.get("spiffe_id"), i.get("serial"), i.get("seconds_to_expiry")))
for li in s.get("listeners", []):
    fails = {k: v for k, v in li.get("handshake_failures", {}).items() if v}
    print("  %-32s accepted %-4s handshakes %-4s allowed %-4s denied %-4s bytes in/out %s/%s" % (
        li.get("name"), li.get("accepted"), li.get("handshakes"), li.get("allowed", "-"),
        li.get("denied", "-"), li.get("bytes_in"), li.get("bytes_out")))
    if fails:
        print("  %-32s handshake failures %s" % ("", ", ".join("%s=%s" % kv for kv in fails.items())))
p = s.get("policy")
if p:
    print("  policy: allowed %s, denied %s" % (p.get("allowed"), p.get("denied")))
    for r in p.get("rules", []):
        print("    rule %-14s %-5s %-7s hits %-4s audit would-deny %s" % (
            r.get("name"), r.get("action", ""), r.get("mode", ""), r.get("hits"),
            r.get("audit_would_deny")))
for peer in s.get("peers", []):
    print("  peer %s: connections %s, denied %s" % (peer.get("spiffe_id"),
          peer.get("connections"), peer.get("denied", 0)))
PY
done
echo "== access log of the api sidecar (last 3 lines)"
grep '"access"' "$work/api.log" | tail -n 3 | sed 's/^/  /' || true
echo "== done; stopping the mesh"
