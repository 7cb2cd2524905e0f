#!/usr/bin/env python3
"""An outbound HTTP/1.x app served request by request (issue 10): each request of an app
connection is a stream of its own on the pool, and its response comes back as HTTP/1.1.

client -> outbound sidecar (web) -> pooled link (tether-h2) -> inbound sidecar (api) ->
backend. Each case on the same pair unless it says otherwise:

1. Keep-alive: one connection of Python's http.client sends 40 GETs; all answered in
   order; the outbound accepted ONE app connection and opened 40 streams (per-request
   streams, not one tunnel); the inbound counted 40 requests and served them over at most
   2 keep-alive backend connections (kept between request streams); the outbound's access
   line says route "http".
2. Pipelining: three requests written at once come back as three responses, in order.
3. Bodies: a chunked upload and a Content-Length upload echoed intact on one connection;
   a response without Content-Length reaches an HTTP/1.1 client chunked and an HTTP/1.0
   client delimited by the close.
4. Smuggling from the app: Content-Length with Transfer-Encoding is answered 400 with an
   x-tether-reason by the outbound itself; the backend never sees it.
5. No way through: an outbound whose peer sidecar is down answers each request 503
   (x-tether-reason upstream_connect_failed) and keeps the app's connection for the next
   one (two answers on one connection), counted in refusals_answered.
6. Not HTTP: an echo protocol on the same outbound still rides a tunnel (route pool).
7. A peer that does not pool (an inbound with --pool off): three keep-alive requests go
   over one direct mTLS connection (fallback_direct, route direct), answered in order.
8. Retries, against a peer nobody here wrote (Python's h2 over ssl, under Debian's python,
   speaking tether-h2 as a sidecar would): a stream it refuses (REFUSED_STREAM) is sent
   again, a GET and a POST alike, and answered; a link it drops under an unanswered GET
   is replaced and the GET sent again; a POST whose link dropped is not sent again: 502
   upstream_reset, and the app's next request still works. requests_retried counts them.
9. A caller no rule lets in (default deny): its request stream is refused 403
   policy_denied by the inbound, counted as a denied connection and a denied request,
   and the backend sees nothing.
10. --request-timeout 1s: a request the backend answers after 4 s gets 504
   request_timeout from the outbound within about a second, the app's connection kept for
   its next request; an outbound listener whose file entry says "request_timeout": "0s"
   waits for the slow answer.
11. --http-streams off: three keep-alive requests ride ONE tunnel stream (route pool), as
   any other protocol's connection.
12. Many at once: 200 keep-alive app connections send 4 rounds of requests that the
   backend holds 0.3 s, so that each round has 200 request streams in flight on the
   inbound; the inbound keeps the backend connections of a round for the next ones, so
   the backend sees about 200 connections in all, not 200 plus a new one for every
   request past a fixed cache (it kept 64 per worker once: 400 and more), and /stats
   counts them (pool workload_connections_opened, workload_connections_reused).
13. A workload that closes a kept connection as the next request arrives (a raw server
   that answers the first request of each connection and closes the connection on the
   second without answering, as one whose keep-alive timeout fires just then): a GET on
   the kept connection is sent again on a new one and answered 200 (the server saw it
   twice: the first was never answered), counted in the inbound's requests_retried; a
   POST in the same spot is not sent again (the server may have acted on it): 502, the
   server saw it once; a PUT with a body (idempotent) goes again whole, body included. A
   POST whose kept connection the workload resets (not closes) as it arrives gets 502
   upstream_reset: the inbound no longer calls that a failed connect, which the outbound
   takes for "nothing went through" (503 upstream_unavailable, or another endpoint tried).
14. A response cut short (the workload closes in the middle of its body): an app that
   pipelined a GET with a whole answer and a GET whose answer is cut, and reads nothing
   for a second, still gets the whole first answer, then the cut one's head and part of
   its body, then a FIN: its framing (Content-Length not reached) shows the cut, and a
   reset would have destroyed the first answer unread in the app's socket. An HTTP/1.0
   app whose answer is delimited by the close gets a reset instead: only that tells its
   cut body from a whole one. The same cut ends an answer still under way when its
   --request-timeout passes (its server stalls in the middle of the body): a FIN within
   about the timeout, the whole answer before it intact.
15. An answer whose head is too big for one HTTP/2 header block (400 fields, 64 KB: the
   inbound's nghttp2 will not send it) gets 502 upstream_reset at once: the inbound resets
   the stream; it used to leave it open, and the app waited for an answer forever.
16. The outbound's certificate rotates while a request waits for the first link to its
   peer (the inbound stopped with SIGSTOP in the middle of the handshake): once up, the
   link made with the old certificate is retired as the request rides it, before its
   stream opened; the request goes on another link and is answered 200 (it was reset).
"""

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
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
                if self.path == "/slow":
                    time.sleep(4)
                    self._send(b"slow answer\n")
                elif self.path.startswith("/hold/"):
                    time.sleep(0.3)
                    self._send(("k=%s\n" % self.path.rsplit("/", 1)[-1]).encode())
                elif self.path == "/bighead":
                    # 400 fields of 160 bytes: above nghttp2's 64 KiB bound for a header
                    # block to send, below the inbound's bound for reading a head.
                    outer.lines.append(self.requestline)
                    self.send_response(200)
                    for i in range(400):
                        self.send_header("x-big-%d" % i, "v" * 150)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                elif self.path == "/nolen":
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


def check_keepalive(ok, w, web, api, out_port, in_port, backend):
    """1: 40 requests on one app connection, 40 streams."""
    o0 = web.listener("outbound:127.0.0.1:%d" % out_port)
    conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=10)
    conns_before = backend.connections
    bad = []
    for k in range(40):
        conn.request("GET", "/n/%d" % k)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or body != b"k=%d\n" % k:
            bad.append((k, r.status, body[:40]))
    conn.close()
    ok(not bad, "1: 40 GETs on one keep-alive connection answered in order (bad %s)" % bad[:3])
    ok(backend.connections - conns_before <= 2,
       "1: the inbound kept its keep-alive connection to the backend between requests: %d "
       "backend connection(s) for 40 requests" % (backend.connections - conns_before))
    o = h.wait_for(lambda: (lambda x: x["active"] == 0 and x)(
        web.listener("outbound:127.0.0.1:%d" % out_port)), 10, what="outbound idle")
    ok(o["accepted"] - o0["accepted"] == 1,
       "1: the outbound accepted one app connection (got %d)" % (o["accepted"] - o0["accepted"]))
    streams = o["pool"]["streams_total"] - o0["pool"]["streams_total"]
    ok(streams == 40, "1: ... and opened one stream per request: 40 (got %d)" % streams)
    i = api.listener("inbound:127.0.0.1:%d" % in_port)
    ok(i["requests"]["total"] >= 40, "1: the inbound counted the requests (%r)" % i["requests"])
    rq = o["requests"]
    ok(rq["total"] - o0["requests"]["total"] == 40 and rq["by_status"]["2xx"] >= 40
       and rq["by_method"].get("GET", 0) >= 40,
       "1: so did the outbound, by method and status (total %r, by_status %r)" % (
           rq["total"], rq["by_status"]))
    lines = [r for r in web.logs() if r.get("event") == "request"]
    ok(len(lines) >= 40 and lines[-1].get("path") == "/n/39" and lines[-1].get("status") == 200
       and lines[-1].get("upstream") == "127.0.0.1:%d" % in_port
       and lines[-1].get("peer_id") == w.api_id,
       "1: the outbound writes a request line per request, naming where it went (%r)"
       % (lines[-1:],))
    durations = [r.get("duration_us") for r in lines[-40:]]
    ok(all(isinstance(d, int) and 0 < d < 5_000_000 for d in durations) and
       any(d % 1000 for d in durations),
       "1: request durations are measured in microseconds, not whole milliseconds "
       "(%r)" % durations[:8])
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


def check_smuggling(ok, web, out_port, backend):
    """4: CL + TE from the app: 400 by the outbound, nothing reaches the backend."""
    before = len(backend.lines)
    raw = raw_exchange(out_port, b"POST /echo HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /n/smuggled HTTP/1.1\r\n"
                       b"Host: api\r\n\r\n")
    ok(raw.startswith(b"HTTP/1.1 400") and b"x-tether-reason: content_length_and_transfer_"
       b"encoding" in raw.lower(), "4: CL+TE answered 400 with its reason (%r)" % raw[:200])
    ok(len(backend.lines) == before, "4: the backend saw nothing (%s)" % backend.lines[before:])
    refused = h.wait_for(lambda: web.listener("outbound:")["requests"]["refused"].get(
        "content_length_and_transfer_encoding"), 5, what="the refusal counted")
    ok(refused == 1, "4: the outbound counted the refusal by reason (%r)" % refused)


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


def keepalive_gets(port, tag, count=3):
    """count GETs of /n/<tag><k> on one keep-alive connection: [(status, body)], and the
    answers they should get."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    got = []
    for k in range(count):
        conn.request("GET", "/n/%s%d" % (tag, k))
        r = conn.getresponse()
        got.append((r.status, r.read()))
    conn.close()
    return got, [(200, b"k=%s%d\n" % (tag.encode(), k)) for k in range(count)]


def check_direct(ok, w):
    """7: a peer without tether-h2: the requests ride one direct connection."""
    got, want = keepalive_gets(w.direct_out, "d")
    ok(got == want,
       "7: three keep-alive requests through a peer with --pool off answered (%s)" % got)
    o = w.direct_web.listener("outbound:")
    ok(o["pool"]["fallback_direct"] >= 1 and o["accepted"] == 1,
       "7: one app connection, sent direct (fallback_direct %r, accepted %r)" % (
           o["pool"]["fallback_direct"], o["accepted"]))
    h.wait_for(lambda: w.direct_web.access_logs(), 5, what="the direct access line")
    routes = [a.get("route") for a in w.direct_web.access_logs()]
    ok(routes == ["direct"], "7: its access line says route direct (%s)" % routes)


# ---------------------------------------------------------------------------------------
# 8. A fake peer sidecar: Python's h2 over ssl, selecting tether-h2.


def peer(port, crt, key, ca, mode, log_path):
    """Serves tether-h2 on 127.0.0.1:port with the given identity, requiring a client
    certificate of ca. Request streams are numbered across connections (attempts); mode
    "refuse" resets attempts 1 and 3 with REFUSED_STREAM, mode "drop" closes the
    connection when attempts 1 and 3 arrive, mode "goaway" answers attempt 1 with GOAWAY
    naming no stream processed (then reads and drops what comes until the caller closes)
    and takes a second to accept each later connection; every other attempt is answered
    200 with "attempt=N METHOD PATH body=LEN". Each attempt is appended to log_path."""
    import ssl
    import threading

    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.settings

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["tether-h2"])
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(16)
    lock = threading.Lock()
    attempts = [0]
    accepted = [0]

    def serve(raw):
        with lock:
            accepted[0] += 1
            later = accepted[0] > 1
        if mode == "goaway" and later:
            time.sleep(1.0)  # the caller's retry waits for this link
        try:
            s = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1})
        s.sendall(conn.data_to_send())
        streams = {}
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        hd = {k.decode(): v.decode() for k, v in ev.headers}
                        with lock:
                            attempts[0] += 1
                            n = attempts[0]
                        with open(log_path, "a") as f:
                            f.write(json.dumps([n, hd.get(":method"), hd.get(":path")]) + "\n")
                        if n in (1, 3) and mode == "drop":
                            s.close()
                            return
                        if n == 1 and mode == "goaway":
                            conn.close_connection(last_stream_id=0)
                            s.sendall(conn.data_to_send())
                            while s.recv(65536):
                                pass
                            return
                        if n in (1, 3) and mode == "refuse":
                            conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                            continue
                        streams[ev.stream_id] = [n, hd, 0]
                    elif isinstance(ev, h2.events.DataReceived):
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                        if ev.stream_id in streams:
                            streams[ev.stream_id][2] += len(ev.data)
                    if isinstance(ev, h2.events.StreamEnded) and ev.stream_id in streams:
                        n, hd, blen = streams.pop(ev.stream_id)
                        body = ("attempt=%d %s %s body=%d\n" % (
                            n, hd.get(":method"), hd.get(":path"), blen)).encode()
                        conn.send_headers(ev.stream_id, [(":status", "200"),
                                                         ("content-length", str(len(body)))])
                        conn.send_data(ev.stream_id, body, end_stream=True)
                out = conn.data_to_send()
                if out:
                    s.sendall(out)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            s.close()

    print("ready", flush=True)
    while True:
        c, _ = lsock.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def start_peer(w, mode):
    """A fake peer in `mode` and an outbound sidecar to it; returns (sidecar, port,
    attempts log path)."""
    port, out_port = h.free_port(), h.free_port()
    log_path = w.env.path("peer-%s.log" % mode)
    open(log_path, "w").close()
    p = w.env.proc("peer-" + mode, [h.DEBIAN_PYTHON, os.path.abspath(__file__), "peer",
                                    str(port), w.api.crt, w.api.key, w.ca.crt, mode, log_path])
    h.wait_for(lambda: "ready" in open(p.out_path).read(), 10, what="fake peer " + mode)
    sc = w.env.sidecar("out-" + mode, w.web, w.ca, outbound=[
        (out_port, "127.0.0.1:%d" % port, w.api_id)], workers=1)
    return sc, out_port, log_path


def request(port, method, path, body=None):
    """One request on a new connection: (status, x-tether-reason, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body)
        r = conn.getresponse()
        return r.status, r.getheader("x-tether-reason"), r.read()
    finally:
        conn.close()


def attempts(log_path):
    with open(log_path) as f:
        return [json.loads(ln) for ln in f if ln.strip()]


def check_retries(ok, w):
    """8: refused streams and dropped links under a request."""
    sc, port, log = start_peer(w, "refuse")
    got = [request(port, "GET", "/r1"), request(port, "POST", "/r2", b"x" * 1000)]
    ok(got[0][:2] == (200, None) and got[0][2] == b"attempt=2 GET /r1 body=0\n",
       "8: a GET whose stream the peer refused is sent again and answered (%r)" % (got[0],))
    ok(got[1][:2] == (200, None) and got[1][2] == b"attempt=4 POST /r2 body=1000\n",
       "8: so is a POST: a refused stream was never processed (%r)" % (got[1],))
    ok([a[1:] for a in attempts(log)] == [["GET", "/r1"]] * 2 + [["POST", "/r2"]] * 2,
       "8: the peer saw each request twice (%s)" % attempts(log))
    o = sc.listener("outbound:")
    ok(o["pool"]["requests_retried"] == 2 and o["pool"]["streams_refused"] >= 2,
       "8: requests_retried 2, streams_refused %r (%r)" % (o["pool"]["streams_refused"],
                                                          o["pool"]["requests_retried"]))

    sc, port, log = start_peer(w, "drop")
    first = request(port, "GET", "/d1")
    ok(first[:2] == (200, None) and first[2] == b"attempt=2 GET /d1 body=0\n",
       "8: a GET whose link the peer dropped is sent again on a new link (%r)" % (first,))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("POST", "/d2", body=b"y" * 500)
    r = conn.getresponse()
    second = (r.status, r.getheader("x-tether-reason"), r.read())
    ok(second[:2] == (502, "upstream_reset") and b"upstream_reset" in second[2],
       "8: a POST whose link dropped is not sent again: 502 upstream_reset (%r)" % (second,))
    conn.request("GET", "/d3")
    r = conn.getresponse()
    third = (r.status, r.read())
    conn.close()
    ok(third == (200, b"attempt=4 GET /d3 body=0\n"),
       "8: the same app connection's next request is answered (%r)" % (third,))
    ok([a[1:] for a in attempts(log)] == [["GET", "/d1"], ["GET", "/d1"], ["POST", "/d2"],
                                          ["GET", "/d3"]],
       "8: the peer saw the POST once (%s)" % attempts(log))
    o = sc.listener("outbound:")
    ok(o["pool"]["requests_retried"] == 1, "8: requests_retried 1 (%r)"
       % o["pool"]["requests_retried"])


def check_retry_waits(ok, w):
    """8: a request whose stream the peer did not process while the app was still sending
    its body: the retry waits for a new link (the peer takes a second to accept it) and
    sends the whole body again; the app's later bytes wait meanwhile."""
    sc, port, log = start_peer(w, "goaway")
    body = bytes(i % 251 for i in range(60000))
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        s.sendall(b"POST /g1 HTTP/1.1\r\nhost: g\r\ncontent-length: %d\r\n\r\n" % len(body)
                  + body[:20000])
        for part in (body[20000:40000], body[40000:]):
            time.sleep(0.4)  # the peer's GOAWAY came; the new link is on its way
            s.sendall(part)
        raw = b""
        while b"body=" not in raw or not raw.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
        got = raw.decode("latin-1")
    except OSError as e:
        got = repr(e)
    finally:
        s.close()
    ok(got.startswith("HTTP/1.1 200") and got.endswith("attempt=2 POST /g1 body=60000\n"),
       "8: a POST refused by the peer's GOAWAY while its body was still coming is sent "
       "again, whole, on a new link (%r)" % got[-200:])
    o = sc.listener("outbound:")
    ok(o["pool"]["requests_retried"] == 1, "8: requests_retried 1 (%r)"
       % o["pool"]["requests_retried"])


def check_denied(ok, w, backend):
    """9: a request from a caller the policy does not let in."""
    before = len(backend.lines)
    got = request(w.deny_out, "GET", "/n/denied")
    ok(got[:2] == (403, "policy_denied") and json.loads(got[2]) == {
        "error": "policy_denied", "rule": "default"},
       "9: refused 403 policy_denied, the JSON body naming the rule (%r)" % (got,))
    i = h.wait_for(lambda: (lambda x: x["denied"] >= 1 and x)(
        w.deny_api.listener("inbound:")), 5, what="the denial counted")
    ok(i["denied"] == 1 and i["allowed"] == 0 and i["requests"]["denied"] == 1,
       "9: counted as a denied connection and a denied request (denied %r, allowed %r, "
       "requests.denied %r)" % (i["denied"], i["allowed"], i["requests"]["denied"]))
    ok(len(backend.lines) == before, "9: the backend saw nothing (%s)" % backend.lines[before:])


def check_timeout(ok, w):
    """10: the request deadline, global and per listener."""
    conn = http.client.HTTPConnection("127.0.0.1", w.slow_out, timeout=15)
    t0 = time.monotonic()
    conn.request("GET", "/slow")
    r = conn.getresponse()
    got = (r.status, r.getheader("x-tether-reason"), r.read())
    took = time.monotonic() - t0
    ok(got[:2] == (504, "request_timeout") and took < 3.5,
       "10: a 4 s answer with --request-timeout 1s: 504 request_timeout after %.1f s (%r)"
       % (took, got))
    conn.request("GET", "/n/after")
    r = conn.getresponse()
    after = (r.status, r.read())
    conn.close()
    ok(after == (200, b"k=after\n"), "10: the same connection's next request (%r)" % (after,))
    got = request(w.slow_none, "GET", "/slow")
    ok(got == (200, None, b"slow answer\n"),
       "10: a listener with request_timeout \"0s\" waits for it (%r)" % (got,))


def check_streams_off(ok, w):
    """11: --http-streams off: the HTTP/1.x connection is one tunnel."""
    got, want = keepalive_gets(w.tunnel_out, "t")
    ok(got == want,
       "11: three keep-alive requests answered with --http-streams off (%s)" % got)
    o = h.wait_for(lambda: (lambda x: x["active"] == 0 and x)(w.tunnel_web.listener(
        "outbound:")), 10, what="the tunnel over")
    ok(o["accepted"] == 1 and o["pool"]["streams_total"] == 1 and o["requests"]["total"] == 0,
       "11: one app connection, one tunnel stream, no request streams (streams %r, "
       "requests %r)" % (o["pool"]["streams_total"], o["requests"]["total"]))
    h.wait_for(lambda: w.tunnel_web.access_logs(), 5, what="the tunnel's access line")
    routes = [a.get("route") for a in w.tunnel_web.access_logs()]
    ok(routes == ["pool"], "11: its access line says route pool (%s)" % routes)


MANY_CONNS, MANY_ROUNDS = 200, 4


def check_many_at_once(ok, api, out_port, in_port, backend):
    """12: 200 request streams in flight at once, 4 rounds: the backend connections kept."""
    before = api.listener("inbound:127.0.0.1:%d" % in_port)["pool"]
    conns_before = backend.connections
    start = threading.Barrier(MANY_CONNS)
    bad, lock = [], threading.Lock()

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=30)
        try:
            for r in range(MANY_ROUNDS):
                start.wait(timeout=60)
                conn.request("GET", "/hold/%d-%d" % (i, r))
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or body != b"k=%d-%d\n" % (i, r):
                    raise ValueError("%d %r" % (resp.status, body[:40]))
        except Exception as e:  # noqa: BLE001 - any failure is the case's failure
            with lock:
                bad.append((i, repr(e)[:80]))
            start.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(MANY_CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    n = MANY_CONNS * MANY_ROUNDS
    ok(not bad, "12: %d requests from %d connections at once answered (bad %s)"
       % (n, MANY_CONNS, bad[:3]))
    opened = backend.connections - conns_before
    ok(opened <= MANY_CONNS + MANY_CONNS // 4,
       "12: the inbound kept the backend connections between rounds: %d backend "
       "connections for %d requests, %d at a time (at most %d)"
       % (opened, n, MANY_CONNS, MANY_CONNS + MANY_CONNS // 4))
    p = api.listener("inbound:127.0.0.1:%d" % in_port)["pool"]
    o = p["workload_connections_opened"] - before["workload_connections_opened"]
    r = p["workload_connections_reused"] - before["workload_connections_reused"]
    ok(o == opened and o + r == n,
       "12: /stats counts them: workload_connections_opened %d (the backend saw %d), "
       "workload_connections_reused %d, together the %d requests" % (o, opened, r, n))


class CloseOnSecond(h.RawServer):
    """A raw HTTP/1.1 server: answers the first request of each connection (keep-alive,
    body "first <request line>\n" and the request's body) and closes the connection when a
    second one arrives, without answering it (reset=True: resets it). .seen: (connection
    number, request line) per request read."""

    def __init__(self, reset=False):
        self.seen, self.lock, self.reset = [], threading.Lock(), reset
        super().__init__()

    def _read_request(self, s, buf):
        """One request (head and Content-Length body) from s: (line, body, rest), or
        (None, b"", b"")."""
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                return None, b"", b""
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = 0
        for f in head.split(b"\r\n")[1:]:
            k, _, v = f.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            d = s.recv(65536)
            if not d:
                return None, b"", b""
            rest += d
        return head.split(b"\r\n")[0].decode(), rest[:length], rest[length:]

    def _serve(self, s, n):
        with s:
            line, body, rest = self._read_request(s, b"")
            if line is None:
                return
            with self.lock:
                self.seen.append((n, line))
            body = ("first %s\n" % line).encode() + body
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            line, _, _ = self._read_request(s, rest)
            if line is not None:
                with self.lock:
                    self.seen.append((n, line))
            if self.reset:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def check_reset_under_post(ok, out_port, server):
    """13: a POST whose kept connection the workload resets as it arrives: 502
    upstream_reset, not a failed connect (which the outbound may send to another endpoint:
    the workload may have acted on it), and the workload saw it once."""
    conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=15)
    got = []
    for path in ("/a", "/c"):
        conn.request("POST", path, body=b"x")
        r = conn.getresponse()
        got.append((r.status, r.getheader("x-tether-reason"), r.read()))
    conn.close()
    posts = [n for n, line in server.seen if line.startswith("POST /c ")]
    ok(got[0][0] == 200 and got[1][:2] == (502, "upstream_reset") and len(posts) == 1,
       "13: a POST on a kept connection the workload resets under it: 502 upstream_reset, "
       "not a failed connect (%r), the workload saw it %d time(s)" % (got, len(posts)))


def check_closed_under_request(ok, api, out_port, in_port, server):
    """13: the kept connection closed as a request arrives: a GET again, a POST not."""
    before = api.listener("inbound:127.0.0.1:%d" % in_port)["pool"]["requests_retried"]
    conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=15)
    got = []
    bodies = {"POST": b"x", "PUT": b"put body, sent twice"}
    for method, path in (("GET", "/a"), ("GET", "/b"), ("POST", "/c"), ("GET", "/e"),
                         ("PUT", "/d")):
        conn.request(method, path, body=bodies.get(method))
        r = conn.getresponse()
        got.append((r.status, r.getheader("x-tether-reason"), r.read()))
        if r.getheader("connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=15)
    conn.close()
    seen = list(server.seen)
    ok(got[0][0] == 200 and got[1][0] == 200 and got[1][2] == b"first GET /b HTTP/1.1\n",
       "13: a GET on a kept connection the workload closed under it is answered from a new "
       "connection (%r)" % got[:2])
    gets = [n for n, line in seen if line.startswith("GET /b ")]
    ok(len(gets) == 2 and gets[0] != gets[1],
       "13: ... the workload saw it on the kept connection, then on a new one (%r)" % seen)
    after = api.listener("inbound:127.0.0.1:%d" % in_port)["pool"]["requests_retried"]
    ok(after - before == 2, "13: ... counted in the inbound's requests_retried, with the PUT "
       "below: %d" % (after - before))
    posts = [n for n, line in seen if line.startswith("POST /c ")]
    ok(got[2][0] == 502 and got[2][1] in ("upstream_bad_response", "upstream_reset")
       and len(posts) == 1,
       "13: a POST in the same spot is not sent again: %r, the workload saw it %d time(s)"
       % (got[2][:2], len(posts)))
    puts = [n for n, line in seen if line.startswith("PUT /d ")]
    ok(got[4][0] == 200 and got[4][2] == b"first PUT /d HTTP/1.1\nput body, sent twice"
       and len(puts) == 2 and puts[0] != puts[1],
       "13: a PUT with a body in the same spot goes again whole on a new connection (%r, "
       "seen on connections %r)" % (got[4], puts))


class CutServer(h.RawServer):
    """A raw HTTP/1.1 server: GET /whole answers 60 KiB of "w" under its Content-Length;
    GET /cut a Content-Length of 100,000 and 1,000 bytes of "c", then closes (GET /stall
    the same, then waits 6 s before closing); GET /cut-chunked a chunked body whose first
    1,000-byte chunk is followed by the close."""

    WHOLE = 60 * KB

    def _serve(self, s, n):
        with s:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1]
                if path == b"/whole":
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.WHOLE
                              + b"w" * self.WHOLE)
                    continue
                if path in (b"/cut", b"/stall"):
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"c" * 1000)
                    if path == b"/stall":
                        time.sleep(6)
                else:
                    s.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"3e8\r\n" + b"c" * 1000 + b"\r\n")
                s.shutdown(socket.SHUT_WR)
                time.sleep(0.5)
                return


def send_then_read(port, data, wait):
    """Writes data on a new connection, reads nothing for `wait` seconds (what arrives,
    or a reset, waits in the socket), then everything until the end: (bytes, the reset or
    None, seconds until the end)."""
    s = h.connect(port, 15)
    start = time.monotonic()
    try:
        s.sendall(data)
        time.sleep(wait)
        try:
            raw, err = h.read_all(s), None
        except ConnectionResetError as e:
            raw, err = b"", e
    finally:
        s.close()
    return raw, err, time.monotonic() - start


def pipelined_cut(port, path, wait):
    """GET /whole and GET <path> pipelined on one connection: as send_then_read."""
    return send_then_read(port, b"GET /whole HTTP/1.1\r\nHost: api\r\n\r\n"
                          b"GET %s HTTP/1.1\r\nHost: api\r\n\r\n" % path, wait)


def check_cut_pair(ok, what, raw, err):
    """The whole answer intact, then the cut one's head and part of its body, then a FIN."""
    whole = b"w" * CutServer.WHOLE
    first_ok = raw.startswith(b"HTTP/1.1 200 ") and whole in raw
    second = raw[raw.find(whole) + len(whole):] if first_ok else b""
    ok(err is None and first_ok,
       "14: %s: the whole answer before the cut one reaches the app intact, then a FIN, not "
       "a reset (%r; %d bytes read)" % (what, err, len(raw)))
    head, _, body = second.partition(b"\r\n\r\n")
    ok(head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: 100000" in head
       and 0 < len(body) < 100000 and body == b"c" * len(body),
       "14: %s: ... then the cut answer's head and %d of its 100000 bytes: its "
       "Content-Length shows the cut (%r)" % (what, len(body), head[:120]))


def check_head_too_big(ok, out_port):
    """15: an answer whose head cannot go out as one HTTP/2 header block: 502 at once, not
    an app waiting forever."""
    conn = http.client.HTTPConnection("127.0.0.1", out_port, timeout=10)
    start = time.monotonic()
    try:
        conn.request("GET", "/bighead")
        r = conn.getresponse()
        got = (r.status, r.getheader("x-tether-reason"))
        r.read()
    except OSError as e:
        got = e
    finally:
        conn.close()
    took = time.monotonic() - start
    ok(got == (502, "upstream_reset") and took < 5,
       "15: an answer with 64 KB of fields: 502 upstream_reset in %.1f s (%r)" % (took, got))


def check_cut_response(ok, out_port, timeout_port):
    """14: a response cut short ends the app's connection with a FIN, the answers before
    it intact; one delimited by the close ends it with a reset."""
    raw, err, _ = pipelined_cut(out_port, b"/cut", 1)
    check_cut_pair(ok, "the workload closed", raw, err)
    raw, err, took = pipelined_cut(timeout_port, b"/stall", 2)
    check_cut_pair(ok, "--request-timeout 1s", raw, err)
    ok(took < 4.5, "14: --request-timeout 1s: ... within %.1f s, before the server's own close "
       "at 6 s" % took)

    raw, err, _ = send_then_read(out_port, b"GET /cut-chunked HTTP/1.0\r\nHost: api\r\n\r\n", 1)
    ok(err is not None,
       "14: an HTTP/1.0 app whose cut answer is delimited by the close gets a reset, not a "
       "FIN that would make the part look whole (read %r)" % raw[:120])


def check_rotation_while_dialling(ok, w, backend):
    """16: the outbound's certificate rotates while a request waits for the first link to
    its peer (the inbound is stopped in the middle of the handshake): the link comes up
    made with the old certificate, the request rides it and the link is retired at once;
    the request, whose stream had not opened yet, goes on a link with the new certificate
    and is answered."""
    in_port, out_port = h.free_port(), h.free_port()
    api = w.env.sidecar("api-rot", w.api, w.ca, inbound=[(in_port, backend.addr)],
                        workers=1)
    web_cert = w.env.certs.leaf("web-rot", w.ca, [w.web_id])
    web = w.env.sidecar("web-rot", web_cert, w.ca, workers=1, outbound=[
        (out_port, "127.0.0.1:%d" % in_port, w.api_id)])
    got = {}

    def call(key):
        try:
            got[key] = request(out_port, "GET", "/n/" + key)
        except Exception as e:  # noqa: BLE001 - reported below
            got[key] = e

    threads = [threading.Thread(target=call, args=(k,)) for k in ("before", "after")]
    api.signal(signal.SIGSTOP)  # the link's TCP connect completes, its handshake waits
    try:
        threads[0].start()
        time.sleep(0.5)
        w.env.certs.leaf("web-rot", w.ca, [w.web_id])
        web.signal(signal.SIGHUP)
        h.wait_for(lambda: web.stats()["identity"].get("rotations", 0) >= 1, 5,
                   what="web-rot's rotation")
        threads[1].start()  # asks for a link with the new certificate: the old one retires
        time.sleep(0.5)
    finally:
        api.signal(signal.SIGCONT)
    for t in threads:
        t.join(20)
    pool = web.listener("outbound:")["pool"]
    for key in ("before", "after"):
        ok(got.get(key) == (200, None, ("k=%s\n" % key).encode()),
           "16: the request from %s the rotation is answered (%r)" % (key, got.get(key)))
    ok(pool["connections_recycled"] == 1,
       "16: the link made with the old certificate was retired (%r)" % pool)


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
    closer = CloseOnSecond()
    env._servers.append(closer)
    in_port, echo_in, closer_in = h.free_port(), h.free_port(), h.free_port()
    out_port, w.echo_out, w.dead_out = h.free_port(), h.free_port(), h.free_port()
    closer_out = h.free_port()
    cutter = CutServer()
    env._servers.append(cutter)
    cut_in, cut_out, cut_slow_out = h.free_port(), h.free_port(), h.free_port()
    resetter = CloseOnSecond(reset=True)
    env._servers.append(resetter)
    reset_in, reset_out = h.free_port(), h.free_port()
    api = env.sidecar("api", w.api, w.ca, inbound=[(in_port, backend.addr),
                                                   (echo_in, echo.addr),
                                                   (closer_in, closer.addr),
                                                   (cut_in, cutter.addr),
                                                   (reset_in, resetter.addr)])
    web = env.sidecar("web", w.web, w.ca, outbound=[
        (out_port, "127.0.0.1:%d" % in_port, w.api_id),
        (closer_out, "127.0.0.1:%d" % closer_in, w.api_id),
        (cut_out, "127.0.0.1:%d" % cut_in, w.api_id),
        (reset_out, "127.0.0.1:%d" % reset_in, w.api_id)])
    w.echo_web = env.sidecar("echo-out", w.web, w.ca, outbound=[
        (w.echo_out, "127.0.0.1:%d" % echo_in, w.api_id)])
    deny_in, w.deny_out = h.free_port(), h.free_port()
    pol = env.policy("deny.json", {"default": "deny", "rules": [
        {"name": "only-admin", "action": "allow", "from": [h.spiffe("shop", "admin")]}]})
    w.deny_api = env.sidecar("api-deny", w.api, w.ca, inbound=[(deny_in, backend.addr)],
                             policy=pol)
    env.sidecar("deny-out", w.web, w.ca, outbound=[
        (w.deny_out, "127.0.0.1:%d" % deny_in, w.api_id)], workers=1)
    w.slow_out, w.slow_none = h.free_port(), h.free_port()
    conf = env.write("slow-out.json", json.dumps({"outbound": [
        {"listen": "127.0.0.1:%d" % w.slow_out, "upstream": "127.0.0.1:%d" % in_port,
         "spiffe_id": w.api_id},
        {"listen": "127.0.0.1:%d" % w.slow_none, "upstream": "127.0.0.1:%d" % in_port,
         "spiffe_id": w.api_id, "request_timeout": "0s"},
        {"listen": "127.0.0.1:%d" % cut_slow_out, "upstream": "127.0.0.1:%d" % cut_in,
         "spiffe_id": w.api_id}]}))
    env.sidecar("slow-out", w.web, w.ca, extra=["--config", conf, "--request-timeout", "1s"],
                workers=1)
    w.tunnel_out = h.free_port()
    w.tunnel_web = env.sidecar("tunnel-out", w.web, w.ca, outbound=[
        (w.tunnel_out, "127.0.0.1:%d" % in_port, w.api_id)], extra=["--http-streams", "off"],
        workers=1)
    direct_in, w.direct_out = h.free_port(), h.free_port()
    env.sidecar("api-nopool", w.api, w.ca, inbound=[(direct_in, backend.addr)],
                extra=["--pool", "off"])
    w.direct_web = env.sidecar("direct-out", w.web, w.ca, outbound=[
        (w.direct_out, "127.0.0.1:%d" % direct_in, w.api_id)], workers=1)

    check_keepalive(ok, w, web, api, out_port, in_port, backend)
    check_pipelining(ok, out_port)
    check_bodies(ok, out_port)
    check_smuggling(ok, web, out_port, backend)
    check_no_way_through(ok, w)
    check_not_http(ok, w)
    check_direct(ok, w)
    check_denied(ok, w, backend)
    check_timeout(ok, w)
    check_streams_off(ok, w)
    check_many_at_once(ok, api, out_port, in_port, backend)
    check_closed_under_request(ok, api, closer_out, closer_in, closer)
    check_reset_under_post(ok, reset_out, resetter)
    check_cut_response(ok, cut_out, cut_slow_out)
    check_head_too_big(ok, out_port)
    check_rotation_while_dialling(ok, w, backend)
    r = subprocess.run([h.DEBIAN_PYTHON, "-c", "import h2.connection"], capture_output=True)
    ok(r.returncode == 0, "8: %s imports h2 (python3-h2; deploy/install-deps.sh installs "
       "it)" % h.DEBIAN_PYTHON)
    if r.returncode == 0:
        check_retries(ok, w)
        check_retry_waits(ok, w)
    for sc in (web, api):
        ok(sc.alive(), "%s still running after the cases" % sc.name)
        clean, reports = sc.stop_clean()
        ok(clean, "%s exited 0 on SIGTERM without sanitizer reports (rc %r): %s"
           % (sc.name, sc.p.returncode, reports[:5]))
    ok.done()


if __name__ == "__main__":
    if len(sys.argv) >= 8 and sys.argv[1] == "peer":
        peer(int(sys.argv[2]), *sys.argv[3:8])
    else:
        h.main(test, "http-streams")
