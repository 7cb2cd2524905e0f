#!/usr/bin/env python3
"""HTTP/1.1 through a sidecar pair, differentially: random request and answer shapes that
the backend's answers describe, checked byte for byte on the client (issue 10's HTTP
translation and request gate, the pool, their error paths).

client threads -> outbound sidecar (web) -> mTLS -> inbound sidecar (api) -> FuzzBackend

Each request names the answer it wants in its query: status (200, 201, 204, 304, 404, 500,
503), body length (0 to 300,000), framing (Content-Length, chunked, delimited by the close,
or cut short: the backend closes, or resets, in the middle of the body), extra fields, a
delay, a 103 Early Hints first. Requests vary in method (GET, HEAD, POST, PUT, DELETE,
PATCH, OPTIONS), body (none, Content-Length, chunked, Expect: 100-continue), and come one
after another or pipelined on keep-alive connections. The backend answers with the body's
length and digest as it received it, and the client checks every answer: status, fields,
body; an answer cut short must arrive visibly short (never complete-looking), and the
answers before it intact. A fifth of the connections misbehave (a request cut short, an
answer left unread, a close or a reset at a random point): nothing is checked on them, but
the well-behaved connections around them must not notice.

Five pairs, one after another, each with its own seed: pooled (request streams on a
tether-h2 link), pooled with a policy whose rules name methods and paths (the inbound's
request gate on every stream), --pool off with that policy (the gate reading the
workload's answers on a raw mTLS connection), pooled in front of a workload whose
keep-alive timeout (1 to 50 ms) fires after a third of its answers: a request the inbound
may send again (idempotent, at most 16 KiB) must still be answered as asked, any other may
get 502 upstream_reset or upstream_bad_response and nothing else; and pooled while both
sidecars' certificates are rotated twice a second (issue 10: "a rotation recycles pool
connections without a failed request"): every request answered as asked, each rotation
taken, links recycled. Then: no link ended in an HTTP/2 protocol error, every sidecar
still runs and stops cleanly (no sanitizer report).

What it found when it was written: an answer cut short reset the app's connection and
destroyed the whole answers before it; the gate lost the part of a cut answer it had not
written yet; a queued request reset twice put an RST_STREAM on a stream the peer never
saw, and the peer ended the link with every other app's stream on it; a POST whose kept
workload connection was reset under it was called a failed connect (503
upstream_unavailable; another endpoint would have been tried). With rotations: a request
given a link just retired was reset; one waiting on a link retired before the peer's
SETTINGS, or given one the peer then closed, got 503; connections kept across a rotation
retired the new links and new ones the old (the pool churned); a complete answer the app
had not read to its end was cut when the peer closed the retired link under it.
"""

import hashlib
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

THREADS = 8
CHAOS = 0.2  # share of misbehaving connections
ROTATE_EVERY = 0.5  # seconds between certificate rotations in the rotating pair


def pattern(n, seed):
    """n deterministic bytes for a seed."""
    base = hashlib.sha256(str(seed).encode()).digest()
    return (base * (n // len(base) + 1))[:n]


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]


class Reader:
    """Buffered reads from a socket: lines, exact counts, the rest until EOF."""

    def __init__(self, sock):
        self.s, self.buf = sock, b""

    def fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        d, self.buf = self.buf[:n], self.buf[n:]
        return d

    def rest(self):
        try:
            while True:
                self.fill()
        except EOFError:
            pass
        d, self.buf = self.buf, b""
        return d


def read_head(r):
    """(start line, [(lower-case name, value)])."""
    start = r.line()
    fields = []
    while True:
        ln = r.line()
        if ln == b"":
            return start.decode(), fields
        k, v = ln.split(b":", 1)
        fields.append((k.strip().lower().decode(), v.strip().decode()))


def field(fields, name):
    for k, v in fields:
        if k == name:
            return v
    return None


def read_body(r, fields):
    """The body its framing delimits (chunked or Content-Length; none: b"")."""
    te = field(fields, "transfer-encoding")
    if te and "chunked" in te.lower():
        out = b""
        while True:
            size = int(r.line().split(b";")[0], 16)
            if size == 0:
                while r.line() != b"":
                    pass
                return out
            out += r.exact(size)
            r.line()
    n = field(fields, "content-length")
    return r.exact(int(n)) if n is not None else b""


# ---- the backend ----------------------------------------------------------------------

class FuzzBackend(h.RawServer):
    """Answers each request as its query says (st, n, fr, nx, d, seed, hints), with
    x-req-len / x-req-sum / x-method telling what it received. idle_close: the share of
    answers after which a keep-alive timeout of 0.5 to 20 ms fires (a kept connection
    closed between requests, as the next one may be on its way)."""

    def __init__(self, idle_close=0.0):
        self.idle_close = idle_close
        super().__init__(backlog=512)

    def _serve(self, sock, n):
        r, rnd = Reader(sock), random.Random()
        try:
            while self._answer(sock, r):
                if rnd.random() < self.idle_close and not r.buf:
                    sock.settimeout(rnd.choice([0.0005, 0.002, 0.005, 0.02]))
                    try:
                        r.fill()
                    except socket.timeout:
                        return
                    sock.settimeout(None)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            sock.close()

    def _answer(self, sock, r):
        """Reads one request and answers it; False when the connection ends."""
        start, fields = read_head(r)
        method, target, _ = start.split(" ", 2)
        q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))
        if field(fields, "expect") == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = read_body(r, fields)
        status, n, frame = int(q["st"]), int(q["n"]), q["fr"]
        if q.get("hints") == "1":
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n")
        time.sleep(float(q["d"]))
        payload = pattern(n, q["seed"])
        if frame.startswith("abort"):
            if frame == "abortc":
                head = "HTTP/1.1 %d X\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n" % (status, n)
            else:
                head = "HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (status, n)
            sock.sendall(head.encode() + payload[:n // 2])
            if frame == "abortrst":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        head = "HTTP/1.1 %d X\r\nx-req-len: %d\r\nx-req-sum: %s\r\nx-method: %s\r\n" % (
            status, len(body), digest(body), method)
        for i in range(int(q["nx"])):
            head += "x-extra-%d: %s\r\n" % (i, "v" * (i * 37 % 300))
        if method == "HEAD" or status in (204, 304) or frame == "cl":
            if status != 204:
                head += "content-length: %d\r\n" % n
            bodiless = method == "HEAD" or status in (204, 304)
            sock.sendall(head.encode() + b"\r\n" + (b"" if bodiless else payload))
            return True
        if frame == "chunked":
            out, i, rnd = head.encode() + b"transfer-encoding: chunked\r\n\r\n", 0, random.Random(n)
            while i < n:
                k = min(n - i, rnd.choice([1, 7, 100, 4096, 20000]))
                out += b"%x\r\n" % k + payload[i:i + k] + b"\r\n"
                i += k
            sock.sendall(out + b"0\r\n\r\n")
            return True
        # Delimited by the close: a lingering close, so that nothing is reset.
        sock.sendall(head.encode() + b"connection: close\r\n\r\n" + payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        while sock.recv(65536):
            pass
        return False


# ---- the client -----------------------------------------------------------------------

class Fail(Exception):
    pass


class Aborted(Exception):
    """An answer cut short, as asked: nothing more on that connection."""


def make_request(rnd, seq):
    method = rnd.choice(["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
    st = rnd.choice([200, 200, 200, 201, 204, 304, 404, 500, 503])
    n = rnd.choice([0, 0, 1, 13, 1000, 16384, 70000, 300000])
    fr = rnd.choice(["cl", "cl", "cl", "chunked", "chunked", "close", "abort", "abortc",
                     "abortrst"])
    if fr.startswith("abort") and (method == "HEAD" or st in (204, 304)):
        fr = "cl"
    if fr.startswith("abort") and n < 2:
        n = 1000
    q = {"st": st, "n": n, "fr": fr, "nx": rnd.choice([0, 0, 3, 40]),
         "d": rnd.choice([0, 0, 0, 0.01, 0.2]), "seed": "%d" % seq,
         "hints": "1" if rnd.random() < 0.1 else "0"}
    body, chunked, expect = b"", False, False
    if method in ("POST", "PUT", "PATCH") or rnd.random() < 0.05:
        body = pattern(rnd.choice([0, 1, 100, 5000, 70000, 500000]), seq + 1)
        chunked = rnd.random() < 0.3
        expect = rnd.random() < 0.2 and len(body) > 0
    head = "%s /f?%s HTTP/1.1\r\nhost: fuzz\r\nuser-agent: fz\r\n" % (
        method, urllib.parse.urlencode(q))
    if expect:
        head += "expect: 100-continue\r\n"
    if chunked:
        head += "transfer-encoding: chunked\r\n"
        wire, i = b"", 0
        while i < len(body):
            k = min(len(body) - i, rnd.choice([1, 10, 1000, 30000]))
            wire += b"%x\r\n" % k + body[i:i + k] + b"\r\n"
            i += k
        wire += b"0\r\n\r\n"
    elif body or method in ("POST", "PUT", "PATCH"):
        head += "content-length: %d\r\n" % len(body)
        wire = body
    else:
        wire = b""
    return {"method": method, "q": q, "body": body, "expect": expect,
            "head": head.encode() + b"\r\n", "wire": wire,
            "last": fr == "close" or fr.startswith("abort")}


def replayable(req):
    """Whether the inbound may send req again on a new workload connection (README
    "Retries of requests"): idempotent, and at most 16 KiB."""
    return (req["method"] in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
            and len(req["head"]) + len(req["wire"]) <= 16 << 10)


def check_response(r, req, racy):
    """Reads and checks req's answer; True when the connection ends after it. Raises
    Aborted for an answer cut short as asked (checked to look short), Fail otherwise.
    racy: the workload closes kept connections, so a request that may not be sent again
    may get 502 upstream_reset (its connection reset under it) or upstream_bad_response
    (closed under it with no answer), never a failed connect."""
    q = req["q"]
    cut = q["fr"].startswith("abort")
    try:
        status = 100
        while 100 <= status < 200:
            start, fields = read_head(r)
            status = int(start.split(" ", 2)[1])
        if cut and q["fr"] == "abortrst" and status in (502, 503) and status != q["st"]:
            raise Aborted()  # the reset may take the head with it
        if racy and status == 502 and status != q["st"] and not replayable(req):
            why = field(fields, "x-tether-reason")
            if why not in ("upstream_reset", "upstream_bad_response"):
                raise Fail("502 %s, want upstream_reset or upstream_bad_response" % why)
            raise Aborted()
        if status != q["st"]:
            raise Fail("status %d, want %d" % (status, q["st"]))
        bodiless = req["method"] == "HEAD" or status in (204, 304)
        framed = field(fields, "transfer-encoding") or field(fields, "content-length")
        body = b"" if bodiless else read_body(r, fields) if framed else r.rest()
    except (EOFError, ConnectionResetError):
        if cut:
            raise Aborted()
        raise
    want = b"" if bodiless else pattern(q["n"], q["seed"])
    if cut:
        if body == want:
            raise Fail("an answer cut short arrived complete")
        raise Aborted()
    if body != want:
        raise Fail("body of %d bytes, want %d" % (len(body), len(want)))
    if (field(fields, "x-req-len"), field(fields, "x-req-sum"), field(fields, "x-method")) != (
            str(len(req["body"])), digest(req["body"]), req["method"]):
        raise Fail("the backend got %s/%s/%s" % (field(fields, "x-method"),
                                                  field(fields, "x-req-len"),
                                                  field(fields, "x-req-sum")))
    for i in range(int(q["nx"])):
        if field(fields, "x-extra-%d" % i) != "v" * (i * 37 % 300):
            raise Fail("x-extra-%d" % i)
    return "close" in (field(fields, "connection") or "").lower() or not (bodiless or framed)


def misbehave(port, rnd, seq):
    """A connection that sends part of a request, or leaves its answer (partly) unread,
    then closes or resets."""
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    try:
        req = make_request(rnd, seq)
        how = rnd.choice(["head-part", "body-part", "answer-part", "answer-unread"])
        if how == "head-part":
            s.sendall(req["head"][:rnd.randrange(1, len(req["head"]))])
        elif how == "body-part" and req["wire"]:
            s.sendall(req["head"] + req["wire"][:rnd.randrange(0, len(req["wire"]))])
        else:
            s.sendall(req["head"] + req["wire"])
            if how == "answer-part":
                s.settimeout(2)
                try:
                    s.recv(rnd.choice([1, 100, 5000]))
                except OSError:
                    pass
        time.sleep(rnd.choice([0, 0, 0.01, 0.1]))
        if rnd.random() < 0.5:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        s.close()


def one_connection(port, rnd, seq, racy):
    """Requests on one connection, one after another or pipelined; returns how many were
    answered as asked. Raises Aborted or Fail (with the connection's requests)."""
    reqs = []
    for i in range(rnd.choice([1, 2, 5, 20])):
        reqs.append(make_request(rnd, seq + i))
        if reqs[-1]["last"] or reqs[-1]["expect"]:
            break
    pipelined = rnd.random() < 0.3 and not any(q["expect"] for q in reqs)
    if pipelined:  # a reset would destroy answers still unread before it: a FIN instead
        for q in reqs:
            if q["q"]["fr"] == "abortrst":
                q["q"]["fr"] = "abort"
                q["head"] = q["head"].replace(b"fr=abortrst", b"fr=abort")
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    r, done = Reader(s), 0
    try:
        if pipelined:
            s.sendall(b"".join(q["head"] + q["wire"] for q in reqs))
        for q in reqs:
            if not pipelined:
                s.sendall(q["head"])
                if q["expect"]:  # the 100 (or the answer) within a second, else send anyway
                    s.settimeout(1)
                    try:
                        r.fill()
                    except socket.timeout:
                        pass
                    s.settimeout(20)
                try:
                    if q["wire"]:
                        s.sendall(q["wire"])
                except ConnectionResetError:
                    if q["q"]["fr"].startswith("abort"):
                        raise Aborted()
                    raise
            ends = check_response(r, q, racy)
            done += 1
            if ends:
                break
        return done
    except Aborted:
        raise
    except (Fail, OSError, EOFError, ValueError) as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise Fail("%r at line %d, %s: %s" % (e, where.lineno, "pipelined" if pipelined else
                                              "in turn", "; ".join(
            "%s %s body=%d" % (q["method"], q["q"], len(q["body"])) for q in reqs)))
    finally:
        s.close()


def run_clients(port, seconds, seed, racy):
    """THREADS clients for `seconds`: (answers checked, cut as asked, misbehaving
    connections, failures). racy: as for check_response."""
    lock = threading.Lock()
    tally = {"ok": 0, "cut": 0, "chaos": 0}
    failures = []
    end = time.monotonic() + seconds

    def client(k):
        rnd = random.Random(seed * 1000 + k)
        seq = k * 10_000_000
        while time.monotonic() < end:
            seq += 100
            if rnd.random() < CHAOS:
                misbehave(port, rnd, seq)
                with lock:
                    tally["chaos"] += 1
                continue
            try:
                n = one_connection(port, rnd, seq, racy)
                with lock:
                    tally["ok"] += n
            except Aborted:
                with lock:
                    tally["cut"] += 1
            except Exception as e:  # noqa: BLE001 - every failure is reported
                with lock:
                    failures.append("client %d: %s" % (k, e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally["ok"], tally["cut"], tally["chaos"], failures


class Rotator:
    """Writes each sidecar's certificate and key anew (same identity, new key and serial)
    and sends it SIGHUP, every ROTATE_EVERY seconds, until stopped: rotations in the middle
    of the traffic, as a control plane's renewals do, often enough that one lands under a
    large answer the app is still reading (once a second, a run missed that half the
    time)."""

    def __init__(self, env, ca, sidecars):
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(env, ca, sidecars))
        self._thread.start()

    def _run(self, env, ca, sidecars):
        while not self._stop.wait(ROTATE_EVERY):
            for sc, name, spiffe_id in sidecars:
                env.certs.leaf(name, ca, [spiffe_id])
                sc.signal(signal.SIGHUP)
            self.count += 1

    def stop(self):
        self._stop.set()
        self._thread.join()
        time.sleep(0.5)  # the last SIGHUP is taken


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web, api = env.certs.leaf("web", ca, [web_id]), env.certs.leaf("api", ca, [api_id])
    backend, closing = FuzzBackend(), FuzzBackend(idle_close=0.5)
    env._servers += [backend, closing]
    policy = env.policy("l7.json", {"default": "deny", "rules": [
        {"name": "no-admin", "action": "deny", "from": ["*"], "paths": ["/admin*"]},
        {"name": "web-all", "action": "allow", "from": [web_id],
         "methods": ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"],
         "paths": ["/*"]}]})
    seconds = 8 if h.sidecar_under_asan() else 12
    pairs = (("pooled", None, [], backend, False),
             ("pooled, per-request policy", policy, [], backend, False),
             ("--pool off, per-request policy", policy, ["--pool", "off"], backend, False),
             ("pooled, a workload closing kept connections", None, [], closing, False),
             ("pooled, both certificates rotated twice a second", None, [], backend, True))
    for seed, (name, pol, extra, be, rotating) in enumerate(pairs, start=1):
        in_port, out_port = h.free_port(), h.free_port()
        tag = "p%d" % seed
        api_cert, web_cert = api, web
        if rotating:  # files of their own, written anew on each rotation
            api_cert = env.certs.leaf("api-" + tag, ca, [api_id])
            web_cert = env.certs.leaf("web-" + tag, ca, [web_id])
        in_sc = env.sidecar("api-" + tag, api_cert, ca, inbound=[(in_port, be.addr)],
                            policy=pol, extra=extra, log_level="warn")
        out_sc = env.sidecar("web-" + tag, web_cert, ca, extra=extra, log_level="warn",
                             outbound=[(out_port, "127.0.0.1:%d" % in_port, api_id)])
        rotator = Rotator(env, ca, ((in_sc, "api-" + tag, api_id), (out_sc, "web-" + tag,
                                                                      web_id))) if rotating else None
        answered, cut, chaos, failures = run_clients(out_port, seconds, seed, be is closing)
        if rotator is not None:
            rotator.stop()
            for sc in (in_sc, out_sc):
                rotations = sc.stats()["identity"].get("rotations", 0)
                ok(rotations >= rotator.count >= seconds,
                   "%s: %s took every new certificate (%d rotations, %d written)" % (
                       name, sc.name, rotations, rotator.count))
            recycled = out_sc.listener("outbound:")["pool"]["connections_recycled"]
            # Each rotation retires the few links up then (22-36 for 15-24 rotations); an
            # app connection from before a rotation that asked for links with its own old
            # identity retired the new ones, and new connections the old: 387.
            ok(rotator.count // 2 <= recycled <= 4 * rotator.count,
               "%s: links made with an old certificate were recycled, each once (%d for %d "
               "rotations)" % (name, recycled, rotator.count))
        ok(not failures and answered > 200 and cut > 10 and chaos > 10,
           "%s: %d answers checked byte for byte, %d cut short as asked, %d misbehaving "
           "connections beside them; failures: %d%s" % (
               name, answered, cut, chaos, len(failures),
               "".join("\n  " + f[:700] for f in failures[:5])))
        broken = [e for sc in (in_sc, out_sc) for e in sc.events("link")
                  if "protocol error" in (e.get("error") or "")]
        ok(not broken, "%s: no link ended in an HTTP/2 protocol error (%r)" % (name, broken[:2]))
        for sc in (in_sc, out_sc):
            ok(sc.alive(), "%s: %s still running" % (name, sc.name))
            clean, reports = sc.stop_clean()
            ok(clean, "%s: %s exited 0 on SIGTERM without sanitizer reports (rc %r): %s"
               % (name, sc.name, sc.p.returncode, reports[:5]))
    ok.done()


if __name__ == "__main__":
    h.main(test, "http-fuzz")
