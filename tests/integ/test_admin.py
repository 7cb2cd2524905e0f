#!/usr/bin/env python3
"""The admin endpoint: /live, /ready, /certs, /policy, /stats (JSON and Prometheus),
unknown paths, hostile requests, POST /quitquitquit; explicit mode binds only the
listeners it is given and the admin address."""

import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? -?[0-9.eE+-]+(\s+\d+)?$|'
                       r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? (NaN|[+-]Inf)$')


def raw_request(port, data, timeout=3):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        s.settimeout(timeout)
        out = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except OSError:
        pass
    finally:
        s.close()
    return out


def listening_ports(pid):
    """TCP ports in LISTEN state owned by pid (from /proc/<pid>/fd and /proc/net/tcp*)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", t)
        if m:
            inodes.add(m.group(1))
    ports = set()
    for f in ("/proc/%d/net/tcp" % pid, "/proc/%d/net/tcp6" % pid):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if parts[3] == "0A" and parts[9] in inodes:
                addr, port = parts[1].split(":")
                ports.add((addr, int(port, 16)))
    return ports


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    api_id, web_id = h.spiffe("shop", "api"), h.spiffe("shop", "web")
    api = env.certs.leaf("api", ca, [api_id], not_after=7200)
    web = env.certs.leaf("web", ca, [web_id])
    echo = env.echo("echo")
    in_port, out_port = h.free_port(), h.free_port()
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "ports": [echo.port]},
        {"name": "audit-batch", "action": "deny", "from": [h.TD + "/ns/batch/*"],
         "mode": "audit"}]})
    sc = env.sidecar("api", api, ca, inbound=[(in_port, echo.addr)], policy=policy)
    web_sc = env.sidecar("web", web, ca, outbound=[(out_port, "127.0.0.1:%d" % in_port,
                                                     api_id)])
    ap = sc.admin_port

    st, body = sc.get("/live")
    ok(st == 200, "/live 200 (%r)" % st)
    st, body = sc.get("/ready")
    ok(st == 200, "/ready 200 (%r)" % st)

    st, body = sc.get("/certs")
    ok(st == 200, "/certs 200")
    certs = json.loads(body)
    txt = json.dumps(certs)
    ok(api_id in txt and api.serial() in txt.upper().replace(":", ""),
       "/certs shows the leaf's SPIFFE ID and serial (%s)" % txt[:300])
    ok("tether-test" in txt or "CN=ca" in txt or "ca" in txt.lower(),
       "/certs mentions the trust bundle roots")

    st, body = sc.get("/policy")
    ok(st == 200, "/policy 200")
    ptxt = body.decode()
    ok("web-to-api" in ptxt and "audit-batch" in ptxt, "/policy shows the rules (%s)" %
       ptxt[:200])

    # Make some traffic so that counters are non-zero.
    for i in range(3):
        e, d = h.echo_roundtrip(out_port, b"x" * 100)
        ok(e == b"x" * 100, "relay %d works" % i)

    s = sc.stats()
    for k in ("identity", "listeners", "policy", "peers", "recent_handshake_failures"):
        ok(k in s, "/stats has %s" % k)
    ident = s["identity"]
    ok(ident.get("spiffe_id") == api_id, "identity.spiffe_id")
    ok(h.norm_serial(ident.get("serial")) == api.serial(), "identity.serial (%r vs %s)" % (
        ident.get("serial"), api.serial()))
    ok(isinstance(ident.get("seconds_to_expiry"), (int, float)) and
       7100 - 30 <= ident["seconds_to_expiry"] <= 7200,
       "identity.seconds_to_expiry ~ 7200 (%r)" % ident.get("seconds_to_expiry"))
    ok("not_after" in ident, "identity.not_after (%r)" % ident.get("not_after"))
    li = sc.listener("inbound:127.0.0.1:%d" % in_port, s)
    for k in ("name", "kind", "accepted", "active", "bytes_in", "bytes_out", "handshakes",
              "handshake_failures", "allowed", "denied"):
        ok(k in li, "listener has %s" % k)
    rq = li.get("requests") or {}
    ok(rq.get("total") == 0 and rq.get("by_method") == {} and rq.get("refused") == {} and
       rq.get("by_status") == {c: 0 for c in ("none", "1xx", "2xx", "3xx", "4xx", "5xx")} and
       rq.get("latency_us", {}).get("count") == 0,
       "listener has requests, zeros before any HTTP-aware request (%r)" % (rq,))
    rules = {r["name"]: r for r in s["policy"]["rules"]}
    ok(all("hits" in r and "audit_would_deny" in r for r in rules.values()),
       "every rule has hits and audit_would_deny")
    ok("version" in s["policy"] and "allowed" in s["policy"] and "denied" in s["policy"],
       "policy has version, allowed, denied")

    # An audit rule: a batch caller is refused by default deny, audit rule counts.
    batch = env.certs.leaf("batch", ca, [h.spiffe("batch", "job")])
    h.tls_attempt(in_port, batch, ca)
    time.sleep(0.3)
    rules = {r["name"]: r for r in sc.stats()["policy"]["rules"]}
    ok(rules["audit-batch"]["audit_would_deny"] == 1,
       "audit rule counts audit_would_deny (%r)" % rules["audit-batch"])

    # Prometheus.
    st, body = sc.get("/stats?format=prometheus")
    text = body.decode(errors="replace")
    ok(st == 200, "/stats?format=prometheus 200")
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    bad = [ln for ln in lines if not PROM_LINE.match(ln)]
    ok(lines and not bad, "every sample line parses (%d lines, bad: %r)" % (len(lines),
                                                                             bad[:3]))
    ok(all(ln.split("{")[0].split()[0].startswith("tether_") for ln in lines),
       "every metric is prefixed tether_")
    ok("# TYPE" in text and "# HELP" in text, "TYPE and HELP comments present")
    li = sc.listener("inbound:127.0.0.1:%d" % in_port)
    acc = [ln for ln in lines if "accepted" in ln and str(in_port) in ln]
    ok(acc and float(acc[0].rsplit(" ", 1)[1]) == li["accepted"],
       "prometheus accepted for the inbound listener == JSON's %r (%r)" % (li["accepted"],
                                                                            acc[:1]))
    ok(any("no_cert" in ln for ln in lines), "handshake failure reasons present")
    # Per-request HTTP metrics (issue 10): announced and valid with no request seen.
    for fam in ("tether_http_requests_total", "tether_http_request_duration_seconds",
                "tether_http_request_bytes_total", "tether_http_response_bytes_total",
                "tether_http_requests_denied_total", "tether_http_requests_refused_total",
                "tether_peer_http_requests_total"):
        ok(text.count("# TYPE %s " % fam) == 1, "prometheus announces %s once" % fam)
    ok(any(ln.startswith("tether_http_request_duration_seconds_count{") and
           str(in_port) in ln for ln in lines), "request duration histogram per listener")

    # Unknown path, hostile requests; the endpoint survives them.
    st, _ = sc.get("/nope")
    ok(st == 404, "unknown path -> 404 (%r)" % st)
    r = raw_request(ap, b"GARBAGE\r\n\r\n")
    ok(r == b"" or r.startswith(b"HTTP/1.1 4"), "garbage request -> 4xx or close (%r)" %
       r[:40])
    r = raw_request(ap, b"GET /stats HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200000 +
                    b"\r\n\r\n")
    ok(not r.startswith(b"HTTP/1.1 200"), "200 kB header refused (%r)" % r[:40])
    slow = [socket.create_connection(("127.0.0.1", ap), timeout=3) for _ in range(50)]
    st, _ = sc.get("/live")
    ok(st == 200, "50 idle admin connections do not block /live")
    for c in slow:
        c.close()
    r = raw_request(ap, b"GET /live HTTP/1.1\r\nHost: localhost\r\n\r\nGET /ready HTTP/1.1\r\n"
                    b"Host: localhost\r\nConnection: close\r\n\r\n")
    ok(r.count(b"HTTP/1.1 200") == 2, "two pipelined requests answered (%r)" % r[:200])

    # Explicit mode binds only the listeners it is given and the admin address.
    ports = listening_ports(sc.pid)
    want = {("0100007F", in_port), ("0100007F", ap)}
    ok(ports == want, "api listens on exactly its inbound and admin ports (%r)" % (
        sorted((a, p) for a, p in ports),))

    # /quitquitquit: GET does not quit; POST does, exit 0.
    st, _ = sc.get("/quitquitquit")
    time.sleep(0.3)
    ok(st in (404, 405) and sc.alive(), "GET /quitquitquit refused (%r), still running" % st)
    st, _ = h.http_post(ap, "/quitquitquit")
    ok(st == 200, "POST /quitquitquit -> 200 (%r)" % st)
    rc = sc.wait(10)
    ok(rc == 0, "exit code 0 after /quitquitquit (%r)" % rc)
    ok(web_sc.alive(), "web unaffected")
    ok.done()


if __name__ == "__main__":
    h.main(test, "admin")
