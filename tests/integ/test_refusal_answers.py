#!/usr/bin/env python3
"""An outbound app connection that cannot get through is told why, when the app speaks
HTTP/1.x (Tether issue 10: "503 with a reason when no endpoint can take the request"),
with curl as the app, pooled and with --pool off:

- the upstream address refuses the connect: 503, x-tether-reason upstream_connect_failed;
- the peer sidecar cannot reach its workload (it answers the tunnel 502, or the direct
  connection ends): 503 upstream_unavailable when pooled;
- the peer sidecar's policy denies this workload: 403 policy_denied (pooled: the tunnel's
  refusal; direct: the peer's handshake refusal, 503 upstream_handshake_failed);
- the peer presents another identity than the one required: 503 upstream_handshake_failed;
- every answer is a JSON body naming the reason, the connection closes cleanly after it, and
  /stats counts it in refusals_answered;
- an app that does not speak HTTP gets what it got before: the connection ends with no
  byte, whether it sent other bytes or nothing at all (after the detection wait).
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def curl(port, timeout=30):
    """curl's status line, headers and body for GET / through the outbound at port."""
    r = subprocess.run(["curl", "-sS", "-i", "--max-time", "20",
                        "http://127.0.0.1:%d/orders" % port],
                       capture_output=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def raw(port, payload, wait=5.0):
    """Sends payload (maybe nothing) and returns what came back before the close."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    if payload:
        s.sendall(payload)
    data = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    return data


def answered(ok, port, status, reason, what):
    rc, out, err = curl(port)
    ok(rc == 0 and re.match(rb"HTTP/1.1 %d " % status, out) is not None and
       re.search(rb"(?im)^x-tether-reason: %s\r$" % reason.encode(), out) is not None,
       "%s: curl gets %d %s (rc %d, %r %s)" % (what, status, reason, rc, out[:200], err[-200:]))
    body = out.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in out else b""
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {}
    ok(doc.get("error") == reason, "%s: its JSON body names %s (%r)" % (what, reason, body[:200]))


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    web_id, api_id, other_id = (h.spiffe("shop", "web"), h.spiffe("shop", "api"),
                                h.spiffe("shop", "other"))
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", ca, [api_id])
    backend = env.http()
    closed = h.free_port()  # nothing listens here
    in_ok, in_dead, in_deny = h.free_port(), h.free_port(), h.free_port()
    allow = env.policy("allow.json", {"default": "deny", "rules": [
        {"name": "web", "action": "allow", "from": [web_id]}]})
    deny = env.policy("deny.json", {"default": "deny", "rules": []})
    env.sidecar("api", api, ca, policy=allow,
                inbound=[(in_ok, backend.addr), (in_dead, "127.0.0.1:%d" % closed)])
    env.sidecar("api-deny", api, ca, policy=deny, inbound=[(in_deny, backend.addr)])
    for pool in ("on", "off"):
        ports = {k: h.free_port() for k in ("ok", "closed", "dead", "deny", "wrong")}
        out = [(ports["ok"], "127.0.0.1:%d" % in_ok, api_id),
               (ports["closed"], "127.0.0.1:%d" % closed, api_id),
               (ports["dead"], "127.0.0.1:%d" % in_dead, api_id),
               (ports["deny"], "127.0.0.1:%d" % in_deny, api_id),
               (ports["wrong"], "127.0.0.1:%d" % in_ok, other_id)]
        sc = env.sidecar("web-pool-" + pool, web, ca, outbound=out, extra=["--pool", pool])
        what = "pool %s" % pool

        rc, body, err = curl(ports["ok"])
        ok(rc == 0 and body.startswith(b"HTTP/1.1 200"), "%s: a reachable upstream answers "
           "200 (%r %s)" % (what, body[:80], err[-200:]))
        answered(ok, ports["closed"], 503, "upstream_connect_failed", what + ", connect refused")
        if pool == "on":
            answered(ok, ports["dead"], 503, "upstream_unavailable",
                     what + ", the peer's workload is down")
            answered(ok, ports["deny"], 403, "policy_denied", what + ", the peer denies us")
        else:
            # Direct: the peer's policy refuses the handshake (TLS 1.3: after ours completed),
            # and a dead workload ends a connection that already relayed: a reset, as before.
            rc, body, err = curl(ports["dead"])
            ok(not body.startswith(b"HTTP/1.1 200"), "%s: the dead workload gives no 200 (%r)"
               % (what, body[:80]))
        answered(ok, ports["wrong"], 503, "upstream_handshake_failed",
                 what + ", the peer is not the identity required")

        # Apps that do not speak HTTP: no byte, as before.
        got = raw(ports["closed"], b"\x00\x01binary protocol hello\n")
        ok(got == b"", "%s: a non-HTTP app gets no byte (%r)" % (what, got[:80]))
        t0 = time.monotonic()
        got = raw(ports["closed"], b"")
        ok(got == b"" and time.monotonic() - t0 < 4.0,
           "%s: a silent app is closed without a byte after the wait (%r, %.1f s)"
           % (what, got[:80], time.monotonic() - t0))

        li = sc.listener("outbound:127.0.0.1:%d" % ports["closed"])
        ok(li.get("refusals_answered") == 1,
           "%s: refusals_answered counts the answered one only (%r)"
           % (what, li.get("refusals_answered")))
        prom = sc.get("/stats?format=prometheus")[1].decode()
        ok("tether_listener_refusals_answered_total" in prom,
           "%s: Prometheus has tether_listener_refusals_answered_total" % what)
        ok(sc.alive(), "%s: the outbound sidecar is alive" % what)
        clean, reports = sc.stop_clean()
        ok(clean, "%s: it exits 0 on SIGTERM without sanitizer reports (%r)" % (what, reports))
    backend.stop()
    ok.done()


if __name__ == "__main__":
    h.main(test, "refusal_answers")
