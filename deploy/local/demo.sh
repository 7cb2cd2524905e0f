#!/bin/bash
# A small Tether mesh on this machine, in explicit mode (no iptables, no root needed),
# with its control plane:
#
#   tether-control (CA, policy, trust bundle; sidecar API :BASE+12, operator API :BASE+14)
#        |  certificates, bundle, policy, revocations (gRPC over mTLS)
#        v
#   curl --> web sidecar (outbound 127.0.0.1:BASE+1) ==mTLS==> api sidecar (inbound
#   127.0.0.1:BASE+6) --> backend (python3 -m http.server on 127.0.0.1:BASE+3080)
#
# No certificate is made by hand: each sidecar gets a bootstrap token from
# `tetherctl token create` and asks tether-control for its certificate, then renews it by
# itself (--cert-ttl 20s here, so a rotation happens while you watch). The demo shows
# refused callers (a mesh workload the policy does not allow, a caller without a
# certificate, a token used for the wrong identity), a policy change taking effect, a
# rotation (old -> new serial), and the /stats figures. Everything it started is stopped
# by pid on exit. About 30 seconds.
#
# Usage: deploy/local/demo.sh [BUILD_DIR]   (default build-release; it builds nothing)
# Environment: DEMO_BASE_PORT shifts every port (default 15000 -> control 15012/15014,
# sidecar admins 15000/15100/15200).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-build-release}
case $build in /*) ;; *) build=$root/$build ;; esac
bin=$build/sidecar/tether-sidecar
control=$build/control/tether-control
tetherctl=$build/control/tetherctl
for b in "$bin" "$control" "$tetherctl"; do
    [ -x "$b" ] || { echo "demo: $b not found: build first (meson setup $build --buildtype=release && ninja -C $build)" >&2; exit 2; }
done

base=${DEMO_BASE_PORT:-15000}
web_admin=$base api_admin=$((base + 100)) intruder_admin=$((base + 200))
web_out=$((base + 1)) intruder_out=$((base + 2)) api_in=$((base + 6))
cp_sidecars=$((base + 12)) cp_api=$((base + 14)) backend_port=$((base + 3080))
td=cluster.local
web_id=spiffe://$td/ns/shop/sa/web api_id=spiffe://$td/ns/shop/sa/api
intruder_id=spiffe://$td/ns/shop/sa/intruder

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

# The operator credential is the state directory's operator.token (tetherctl --state-dir).
ctl() { "$tetherctl" --api "http://127.0.0.1:$cp_api" --state-dir "$work/control-state" "$@"; }

wait_http() { # URL: waits up to 10 s for a 200
    for _ in $(seq 100); do
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "demo: $1 did not answer" >&2
    return 1
}

stat_field() { # ADMIN_PORT PYTHON_EXPR(s): prints a value from that sidecar's /stats
    curl -fsS --max-time 2 "http://127.0.0.1:$1/stats" |
        python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}

# sidecar NAME ADMIN_PORT SPIFFE_ID TOKEN_FILE LISTENER_ARGS...: starts one in control mode
sidecar() {
    local name=$1 admin=$2 id=$3 token=$4
    shift 4
    "$bin" --control "127.0.0.1:$cp_sidecars" --control-bundle "$work/bundle.pem" \
        --join-token "$token" --spiffe-id "$id" --admin "127.0.0.1:$admin" --workers 2 \
        "$@" 2>"$work/$name.log" &
    pids+=($!)
}

policy() { # FILE [extra rule JSON]: the mesh policy: web -> api on the backend port
    cat >"$1" <<POLICY
{
  "default": "deny",
  "rules": [
    {"name": "web-to-api", "action": "allow", "to": ["$api_id"],
     "from": ["$web_id"], "ports": [$backend_port]}${2:+,
    $2}
  ]
}
POLICY
}

echo "== control plane: tether-control (sidecar API 127.0.0.1:$cp_sidecars, operator API 127.0.0.1:$cp_api, certificates live 20s)"
"$control" --state-dir "$work/control-state" --trust-domain "$td" \
    --listen-sidecars "127.0.0.1:$cp_sidecars" --listen-api "127.0.0.1:$cp_api" \
    --cert-ttl 20s 2>"$work/control.log" &
pids+=($!)
wait_http "http://127.0.0.1:$cp_api/v1/bundle" # open without the credential
ctl bundle get >"$work/bundle.pem"
echo "  trust bundle: $(openssl x509 -in "$work/bundle.pem" -noout -subject 2>/dev/null)"
policy "$work/policy.json"
ctl policy set "$work/policy.json" >/dev/null
echo "  policy set: only $web_id may call $api_id (port $backend_port)"

echo "== bootstrap tokens (tetherctl token create; single use)"
for n in web api intruder; do
    ctl token create --spiffe-id "spiffe://$td/ns/shop/sa/$n" >"$work/$n.token"
    echo "  $n: $(cut -c1-12 "$work/$n.token")..."
done

echo "== backend on 127.0.0.1:$backend_port"
mkdir -p "$work/www"
echo "hello from the api backend" >"$work/www/index.html"
python3 -m http.server "$backend_port" --bind 127.0.0.1 --directory "$work/www" \
    >"$work/backend.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$backend_port/"

echo "== sidecars (each asks tether-control for its certificate with its token)"
sidecar api "$api_admin" "$api_id" "$work/api.token" \
    --inbound "127.0.0.1:$api_in=127.0.0.1:$backend_port"
sidecar web "$web_admin" "$web_id" "$work/web.token" \
    --outbound "127.0.0.1:$web_out=127.0.0.1:$api_in@$api_id"
sidecar intruder "$intruder_admin" "$intruder_id" "$work/intruder.token" \
    --outbound "127.0.0.1:$intruder_out=127.0.0.1:$api_in@$api_id"
for side in api:$api_admin web:$web_admin intruder:$intruder_admin; do
    wait_http "http://127.0.0.1:${side##*:}/ready"
    echo "  ${side%%:*}: ready, $(stat_field "${side##*:}" '"%s serial %s, expires in %ss" % (s["identity"]["spiffe_id"], s["identity"]["serial"], s["identity"]["seconds_to_expiry"])')"
done
ctl sidecars | sed 's/^/  /'

echo "== requests: curl -> web sidecar -> mTLS -> api sidecar -> backend"
for i in 1 2 3; do
    printf '  request %d: ' "$i"
    curl -fsS --max-time 5 "http://127.0.0.1:$web_out/"
done

echo "== refused callers"
if out=$(curl -fsS --max-time 5 "http://127.0.0.1:$intruder_out/" 2>&1); then
    echo "demo: the intruder got through: $out" >&2
    exit 1
fi
echo "  intruder (a valid mesh certificate, not allowed by the policy): refused"
if curl -sS -k --max-time 5 "https://127.0.0.1:$api_in/" >/dev/null 2>&1; then
    echo "demo: a caller without a certificate got through" >&2
    exit 1
fi
echo "  a caller without any certificate: refused"
ctl token create --spiffe-id "$web_id" >"$work/stolen.token"
sidecar impostor $((base + 300)) "spiffe://$td/ns/shop/sa/admin" "$work/stolen.token" \
    --inbound "127.0.0.1:$((base + 306))=127.0.0.1:9"
for _ in $(seq 50); do grep -q identity_mismatch "$work/control.log" && break; sleep 0.1; done
echo "  a token made for web used to ask for .../sa/admin: $(grep -o '"reason":"[a-z_]*"' "$work/control.log" | tail -n 1), /ready $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$((base + 300))/ready")"

echo "== policy change: deny web (tetherctl policy set), then allow it again"
policy "$work/policy-deny.json" "{\"name\": \"maintenance\", \"action\": \"deny\", \"from\": [\"$web_id\"]}"
t0=$(date +%s.%N)
ctl policy set "$work/policy-deny.json" >/dev/null
for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$web_out/" 2>/dev/null || break
    sleep 0.02
done
t1=$(date +%s.%N)
if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$web_out/" 2>/dev/null; then
    echo "demo: web is still allowed after the policy change" >&2
    exit 1
fi
echo "  web denied $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') s after tetherctl policy set"
ctl policy set "$work/policy.json" >/dev/null
for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$web_out/" 2>/dev/null && break
    sleep 0.02
done
printf '  allowed again: '
curl -fsS --max-time 5 "http://127.0.0.1:$web_out/"

echo "== rotation: waiting for the web sidecar to renew its certificate (20 s lifetime, renewal at about half)"
old=$(stat_field "$web_admin" 's["identity"]["serial"]')
new=$old
for _ in $(seq 200); do
    new=$(stat_field "$web_admin" 's["identity"]["serial"]')
    [ "$new" != "$old" ] && break
    curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$web_out/" # traffic meanwhile
    sleep 0.1
done
if [ "$new" = "$old" ]; then
    echo "demo: no rotation within 20 s" >&2
    exit 1
fi
echo "  web serial $old -> $new (rotations: $(stat_field "$web_admin" 's["identity"]["rotations"]'))"
printf '  a request with the new certificate: '
curl -fsS --max-time 5 "http://127.0.0.1:$web_out/"
sleep 0.3

echo "== /stats"
for side in web:$web_admin api:$api_admin intruder:$intruder_admin; do
    name=${side%%:*} port=${side##*:}
    curl -fsS --max-time 5 "http://127.0.0.1:$port/stats" >"$work/$name-stats.json"
    python3 - "$name" "$work/$name-stats.json" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
s = json.load(open(path))
i = s.get("identity") or {}
c = s.get("server", {}).get("control", {})
print("%s sidecar: %s, serial %s, expires in %ss, rotations %s" % (
    name, i.get("spiffe_id"), i.get("serial"), i.get("seconds_to_expiry"), i.get("rotations")))
print("  control plane: %s, snapshot version %s applied, %s refused" % (
    c.get("state"), c.get("version_applied"), c.get("version_refused")))
for li in s.get("listeners", []):
    fails = {k: v for k, v in li.get("handshake_failures", {}).items() if v}
    print("  %-32s accepted %-4s handshakes %-4s allowed %-4s denied %-4s bytes in/out %s/%s" % (
        li.get("name"), li.get("accepted"), li.get("handshakes"), li.get("allowed", "-"),
        li.get("denied", "-"), li.get("bytes_in"), li.get("bytes_out")))
    if fails:
        print("  %-32s handshake failures %s" % ("", ", ".join("%s=%s" % kv for kv in fails.items())))
p = s.get("policy")
if p and name == "api":
    print("  policy: allowed %s, denied %s" % (p.get("allowed"), p.get("denied")))
    for r in p.get("rules", []):
        print("    rule %-14s %-5s %-7s hits %s" % (r.get("name"), r.get("action", ""),
                                                  r.get("mode", ""), r.get("hits")))
for peer in s.get("peers", []):
    print("  peer %s: connections %s, denied %s" % (peer.get("spiffe_id"),
          peer.get("connections"), peer.get("denied", 0)))
PY
done
echo "== tether-control: issued certificates and refusals"
ctl stats | python3 -c 'import json,sys; s=json.load(sys.stdin); print("  issued %s, snapshot version %s, sidecars connected %s, refusals %s" % (s.get("issued"), s.get("version"), s.get("sidecars_connected"), s.get("refusals")))'
echo "== access log of the api sidecar (last 3 lines)"
grep '"access"' "$work/api.log" | tail -n 3 | sed 's/^/  /' || true
echo "== done; stopping the mesh"
