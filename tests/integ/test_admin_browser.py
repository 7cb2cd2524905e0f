#!/usr/bin/env python3
"""A web page attacks the sidecar's admin endpoint on 127.0.0.1 through the victim's
browser (issue 7 items 9 and 3), played with curl sending what the browser would send:

- a cross-origin HTML form POSTing to /quitquitquit (Origin and a form content type), a
  fetch() in no-cors mode (text/plain), a multipart form, a fetch() with JSON (Origin):
  403 with a JSON error, and the sidecar keeps running;
- DNS rebinding (evil.example re-pointed at 127.0.0.1, so the browser sends
  Host: evil.example:PORT): reading /certs, /policy, /stats and POST /quitquitquit get 421
  with a JSON error and no data, and the sidecar keeps running.

Then curl's plain POST, as an operator's preStop hook sends it, still stops the sidecar:
the refusals above are not refusals of everything."""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def curl(url, *args):
    """(status, body bytes) of curl url with args; status 0 when curl failed."""
    r = subprocess.run(["curl", "-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"] +
                       list(args) + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or b"0"), body


def error_of(body):
    try:
        return json.loads(body).get("error", "")
    except ValueError:
        return None


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    api_id = h.spiffe("shop", "api")
    api = env.certs.leaf("api", ca, [api_id])
    echo = env.echo("echo")
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [h.spiffe("shop", "web")]}]})
    sc = env.sidecar("api", api, ca, inbound=[(h.free_port(), echo.addr)], policy=policy,
                     workers=1)
    base = "http://127.0.0.1:%d" % sc.admin_port
    quit_url = base + "/quitquitquit"

    # Cross-site request forgery: what a page on http://evil.example can make a browser send.
    forged = [
        ("an HTML form (urlencoded)", ["-X", "POST", "-H", "Origin: http://evil.example",
                                       "--data", "x=1"]),
        ("an HTML form (text/plain)", ["-X", "POST", "-H", "Origin: http://evil.example",
                                       "-H", "Content-Type: text/plain", "--data", "x"]),
        ("an HTML form (multipart)", ["-X", "POST", "-H", "Origin: http://evil.example",
                                      "-F", "x=1"]),
        ("a form from a browser that omits Origin", ["-X", "POST", "-H",
                                                            "Content-Type: text/plain;charset=UTF-8",
                                                            "--data", "x"]),
        ("fetch() with a JSON body", ["-X", "POST", "-H", "Origin: http://evil.example", "-H",
                                      "Content-Type: application/json", "--data", "{}"]),
        ("a sandboxed iframe's form (Origin: null)", ["-X", "POST", "-H", "Origin: null",
                                                      "--data", "x=1"]),
    ]
    for what, args in forged:
        st, body = curl(quit_url, *args)
        err = error_of(body)
        ok(st == 403 and err and "changes state" in err,
           "%s to /quitquitquit -> 403 with a JSON error (%r %r)" % (what, st, body[:160]))
    time.sleep(0.5)
    ok(sc.alive(), "the sidecar is still running after the forged POSTs")
    ok(sc.events("admin_refused"), "the refusals are logged (admin_refused)")

    # DNS rebinding: the browser names the attacker's host.
    for path in ("/certs", "/policy", "/stats", "/ready"):
        st, body = curl(base + path, "-H", "Host: evil.example:%d" % sc.admin_port)
        err = error_of(body)
        ok(st == 421 and err and "DNS rebinding" in err and api_id.encode() not in body and
           b"web-to-api" not in body,
           "GET %s with Host evil.example -> 421, a JSON error and no data (%r %r)" % (
               path, st, body[:160]))
    for host in ("evil.example", "evil.example:%d" % sc.admin_port, "127.0.0.1.nip.io",
                 "10.0.0.1"):
        st, body = curl(quit_url, "-X", "POST", "-H", "Host: " + host)
        ok(st == 421 and error_of(body), "POST /quitquitquit with Host %s -> 421 (%r %r)" % (
            host, st, body[:120]))
    time.sleep(0.5)
    ok(sc.alive(), "the sidecar is still running after the rebinding attempts")
    ok(sc.events("http_host_refused"), "the refused Hosts are logged (http_host_refused)")

    # What is allowed stays allowed: localhost, loopback addresses, HTTP/1.0 without Host.
    for host in ("localhost:%d" % sc.admin_port, "127.0.0.1", "[::1]:%d" % sc.admin_port):
        st, body = curl(base + "/certs", "-H", "Host: " + host)
        ok(st == 200 and api_id.encode() in body, "GET /certs with Host %s -> 200 (%r)" % (
            host, st))
    st, body = curl(base + "/ready", "-0", "-H", "Host:")
    ok(st == 200, "HTTP/1.0 without Host -> 200 (%r)" % st)

    # The operator's way: a plain POST (curl -X POST, no body) stops it, exit 0.
    st, body = curl(quit_url, "-X", "POST")
    ok(st == 200, "curl -X POST /quitquitquit -> 200 (%r %r)" % (st, body[:80]))
    rc = sc.wait(10)
    ok(rc == 0, "the sidecar exited 0 after the operator's POST (%r)" % rc)
    ok.done()


if __name__ == "__main__":
    h.main(test, "admin-browser")
