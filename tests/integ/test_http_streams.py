#!/usr/bin/env python3
"""An outbound HTTP/1.x app served request by request (issue 10): each request of an app
connection is a stream of its own on the pool, and its response comes back as HTTP/1.1.

client -> outbound sidecar (web) -> pooled link (tether-h2) -> inbound sidecar (api) ->
backend. Each case on the same pair unless it says otherwise:

1. Keep-alive: one connection of Python's http.client sends 40 GETs; all answered in
   order; the outbound accepted ONE app connection and opened 40 streams (per-request
   streams, not one tunnel); the inbound counted 40 requests; the outbound's access line
   says route "http".
2. Pipelining: three requests written at once come back as three responses, in order.
3. Bodies: a chunked upload and a Content-Length upload echoed intact on one connection;
   a response without Content-Length reaches an HTTP/1.1 client chunked and an HTTP/1.0
   client delimited by the close.
4. Smuggling from the app: Content-Length with Transfer-Encoding is answered 400 with an
   x-tether-reason by the outbound itself; the backend never sees it.
5. No way through: an outbound whose peer sidecar is down answers each request 503
   (x-tether-reason upstream_connect_failed) and keeps the app's connection for the next
   one (two answers on one connection), counted in refusals_answered.
6. Not HTTP: an echo protocol on the same outbound still rides a tunnel (route pool),
   and a WebSocket-style upgrade is handed over to a tunnel after its request.
"""

import http.client
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KB = 1 << 10


class Backend:
    """A threaded HTTP/1.1 server. GET /n/<k> answers "k=<k>"; GET /nolen answers a body
    without Content-Length (closing after it); POST echoes its body. Records every request
    line it saw and counts its TCP connections."""

    def __init__(self):
        self.lines = []
        self.connections = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                outer.connections += 1
                super().setup()

            def _send(self, body, length=True):
                outer.lines.append(self.requestline)
                self.send_response(200)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/nolen":
                    self._send(b"no length here\n" * 100, length=False)
                else:
                    self._send(("k=%s\n" % self.path.rsplit("/", 1)[-1]).encode())

            def do_POST(self):
                self._send(h.read_request_body(self)[0])

        self.http = h.ThreadedHttp(Handler)
        self.addr, self.stop = self.http.addr, self.http.stop


def raw_exchange(port, data, timeout=10):
    """Writes data on a new connection, half-closes, returns everything read until EOF."""
    s = h.connect(port, timeout)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return h.read_all(s)
    finally:
        s.close()


def responses(raw):
    """How many response heads raw bytes hold."""
    return raw.count(b"HTTP/1.1 ")


def check_keepalive(ok, web, api, out_port, in_port, backend):
    """1: 40 requests on one app connection, 40 streams."""
    o0 = web.listener("outbound:127.0.0.1:%d" % out_port)
    conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=10)
    bad = []
    for k in range(40):
        conn.request("GET", "/n/%d" % k)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != b"k=%d\n" % k:
            bad.append((k, r.status, body[:40]))
    conn.close()
    ok(not bad, "1: 40 GETs on one keep-alive connection answered in order (bad %s)" % bad[:3])
    o = h.wait_for(lambda: (lambda x: x["active"] == 0 and x)(
        web.listener("outbound:127.0.0.1:%d" % out_port)), 10, what="outbound idle")
    ok(o["accepted"] - o0["accepted"] == 1,
       "1: the outbound accepted one app connection (got %d)" % (o["accepted"] - o0["accepted"]))
    streams = o["pool"]["streams_total"] - o0["pool"]["streams_total"]
    ok(streams == 40, "1: ... and opened one stream per request: 40 (got %d)" % streams)
    i = api.listener("inbound:127.0.0.1:%d" % in_port)
    ok(i["requests"]["total"] >= 40, "1: the inbound counted the requests (%r)" % i["requests"])
    ok(o["handshakes"] <= 2, "1: on at most one link per worker (handshakes %r)" % o["handshakes"])
    try:
        h.wait_for(lambda: web.access_logs(), 5, what="the outbound's access line")
    except h.TestFailure:
        pass
    routes = [a.get("route") for a in web.access_logs()]
    ok("http" in routes, "1: the outbound's access line says route http (%s)" % routes[-3:])


def check_pipelining(ok, out_port):
    """2: three pipelined requests, three responses in order."""
    reqs = b"".join(b"GET /n/p%d HTTP/1.1\r\nHost: api\r\n\r\n" % k for k in range(3))
    raw = raw_exchange(out_port, reqs)
    bodies = [b"k=p%d\n" % k for k in range(3)]
    pos = [raw.find(b) for b in bodies]
    ok(responses(raw) == 3 and all(p >= 0 for p in pos) and pos == sorted(pos),
       "2: three pipelined requests answered in order (%r)" % raw[:300])


def check_bodies(ok, out_port):
    """3: uploads both ways of framing; a response without length to 1.1 and 1.0."""
    up = h.pattern_bytes(200 * KB, seed=3)
    conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=20)
    conn.request("POST", "/echo", body=iter([up[:70 * KB], up[70 * KB:]]),
                 headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
    r = conn.getresponse()
    got = r.read()
    ok(r.status == 200 and got == up, "3: chunked upload of 200 KiB echoed (%d, %d bytes)"
       % (r.status, len(got)))
    conn.request("POST", "/echo", body=up)
    r = conn.getresponse()
    got = r.read()
    ok(r.status == 200 and got == up, "3: Content-Length upload echoed on the same "
       "connection (%d, %d bytes)" % (r.status, len(got)))
    conn.close()

    raw = raw_exchange(out_port, b"GET /nolen HTTP/1.1\r\nHost: api\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    ok(b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n")
       and b"no length here" in body,
       "3: a response without length reaches an HTTP/1.1 client chunked (%r)" % head)
    raw = raw_exchange(out_port, b"GET /nolen HTTP/1.0\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    ok(raw.startswith(b"HTTP/1.1 200") and body == b"no length here\n" * 100
       and b"chunked" not in head.lower(),
       "3: ... and an HTTP/1.0 client delimited by the close (%r, %d body bytes)"
       % (head, len(body)))


def check_smuggling(ok, out_port, backend):
    """4: CL + TE from the app: 400 by the outbound, nothing reaches the backend."""
    before = len(backend.lines)
    raw = raw_exchange(out_port, b"POST /echo HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /n/smuggled HTTP/1.1\r\n"
                       b"Host: api\r\n\r\n")
    ok(raw.startswith(b"HTTP/1.1 400") and b"x-tether-reason: content_length_and_transfer_"
       b"encoding" in raw.lower(), "4: CL+TE answered 400 with its reason (%r)" % raw[:200])
    ok(len(backend.lines) == before, "4: the backend saw nothing (%s)" % backend.lines[before:])


def check_no_way_through(ok, w):
    """5: a dead peer: 503 per request, the app's connection kept."""
    web = w.env.sidecar("dead-out", w.web, w.ca, outbound=[
        (w.dead_out, "127.0.0.1:%d" % h.free_port(), w.api_id)])
    conn = http.client.HTTPConnection("127.0.0.1", w.dead_out, timeout=20)
    got = []
    for k in range(2):
        conn.request("GET", "/n/%d" % k)
        r = conn.getresponse()
        got.append((r.status, r.getheader("x-tether-reason"), r.read()[:80]))
    sock_kept = conn.sock is not None
    conn.close()
    ok(all(g[0] == 503 and g[1] == "upstream_connect_failed" for g in got) and sock_kept,
       "5: two requests on one connection each answered 503 upstream_connect_failed, the "
       "connection kept (%s, kept %s)" % (got, sock_kept))
    o = web.listener("outbound:")
    ok(o["refusals_answered"] >= 2 and o["accepted"] == 1,
       "5: counted: refusals_answered %r on %r app connection(s)" % (
           o["refusals_answered"], o["accepted"]))


def check_not_http(ok, w):
    """6: an echo protocol and an upgrade still ride tunnels."""
    good, why = True, ""
    payload = h.pattern_bytes(64 * KB, seed=6)
    try:
        echoed, _ = h.echo_roundtrip(w.echo_out, payload, 20)
        good = echoed == payload
        why = "%d bytes back" % len(echoed)
    except Exception as e:  # noqa: BLE001 - any error is a failed echo
        good, why = False, repr(e)
    ok(good, "6: an echo protocol through the same kind of outbound (%s)" % why)
    try:
        h.wait_for(lambda: w.echo_web.access_logs(), 5, what="the echo's access line")
    except h.TestFailure:
        pass
    routes = [a.get("route") for a in w.echo_web.access_logs()]
    ok(routes and set(routes) == {"pool"}, "6: its access line says route pool (%s)" % routes)


class World:
    pass


def test(env):
    ok = h.Checks()
    w = World()
    w.env = env
    w.ca = env.certs.ca("ca")
    w.web_id, w.api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    w.web = env.certs.leaf("web", w.ca, [w.web_id])
    w.api = env.certs.leaf("api", w.ca, [w.api_id])
    backend = Backend()
    env._servers.append(backend)
    echo = env.echo("echo")
    in_port, echo_in = h.free_port(), h.free_port()
    out_port, w.echo_out, w.dead_out = h.free_port(), h.free_port(), h.free_port()
    api = env.sidecar("api", w.api, w.ca, inbound=[(in_port, backend.addr),
                                                   (echo_in, echo.addr)])
    web = env.sidecar("web", w.web, w.ca, outbound=[
        (out_port, "127.0.0.1:%d" % in_port, w.api_id)])
    w.echo_web = env.sidecar("echo-out", w.web, w.ca, outbound=[
        (w.echo_out, "127.0.0.1:%d" % echo_in, w.api_id)])

    check_keepalive(ok, web, api, out_port, in_port, backend)
    check_pipelining(ok, out_port)
    check_bodies(ok, out_port)
    check_smuggling(ok, out_port, backend)
    check_no_way_through(ok, w)
    check_not_http(ok, w)
    for sc in (web, api):
        ok(sc.alive(), "%s still running after the cases" % sc.name)
        clean, reports = sc.stop_clean()
        ok(clean, "%s exited 0 on SIGTERM without sanitizer reports (rc %r): %s"
           % (sc.name, sc.p.returncode, reports[:5]))
    ok.done()


if __name__ == "__main__":
    h.main(test, "http-streams")
