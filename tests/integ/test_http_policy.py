#!/usr/bin/env python3
"""Per-request policy on the inbound (issue 10): rules with methods and paths decide each
request, with real clients (curl, Python's ssl) nobody here wrote.

An api sidecar (inbound) in front of an HTTP/1.1 backend that records every request it
gets, a web sidecar (outbound) in front of it. The policy: deny /admin* to anyone, GET/HEAD
on /api* and /ws* for web and curl, POST/PUT on /api* for web only, default deny, and an
audit rule watching DELETE.

Each attack is performed and must fail: a denied request on a keep-alive connection gets
403 (reason header, JSON body naming the rule) while the requests around it succeed on the
same connection; the backend never sees a denied request nor its body; the same request
sent by curl --cert straight to the inbound, sent after waiting longer than a detection
timeout, hidden behind dot segments or percent-encodings, or smuggled (Content-Length
with Transfer-Encoding) is refused too; bytes that are not HTTP are refused with 400 and
never reach the backend. What must work does: chunked uploads, Expect: 100-continue,
HTTP/1.0, pipelining, a workload that cuts its answer short (everything it sent reaches
the caller, then a close, not a reset), a WebSocket-style upgrade after its 101, and
HAProxy in HTTP mode as a caller from outside the mesh reusing its mTLS connections across
requests. Per-rule
counts, per-request counts and request lines follow each request.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class RecordingBackend:
    """HTTP/1.1 server recording (method, path, body sha256) of every request; answers
    JSON {"method", "path", "length", "sha256"}. /ws* with Upgrade: 101, then echoes.
    /api/whole: 60 KiB of "w"; /api/cut: 50,000 bytes of a 100,000-byte answer, then the
    close."""

    def __init__(self):
        outer = self
        self.seen = []
        self.lock = threading.Lock()

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length", "0"))
                return self.rfile.read(n) if n else b""

            def _answer(self):
                body = self._body()
                with outer.lock:
                    outer.seen.append((self.command, self.path, len(body)))
                if self.path in ("/api/whole", "/api/cut"):
                    # 60 KiB whole, or 50,000 bytes of a 100,000-byte answer, then the close.
                    n = 60 << 10 if self.path == "/api/whole" else 100000
                    self.send_response(200)
                    self.send_header("Content-Length", str(n))
                    self.end_headers()
                    self.wfile.write(b"w" * n if n == 60 << 10 else b"c" * 50000)
                    self.close_connection = n != 60 << 10
                    return
                if self.path.startswith("/ws") and self.headers.get("Upgrade"):
                    self.send_response(101)
                    self.send_header("Upgrade", "websocket")
                    self.send_header("Connection", "Upgrade")
                    self.end_headers()
                    self.wfile.flush()
                    while True:
                        chunk = self.connection.recv(65536)
                        if not chunk:
                            break
                        self.connection.sendall(b"echo:" + chunk)
                    self.close_connection = True
                    return
                out = json.dumps({"method": self.command, "path": self.path,
                                  "length": len(body),
                                  "sha256": hashlib.sha256(body).hexdigest()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def paths(self):
        with self.lock:
            return [p for _, p, _ in self.seen]

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def curl(args, timeout=30):
    r = subprocess.run(["curl", "-sS", "--max-time", "20"] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def statuses(out):
    """The status codes curl printed with -w '%{http_code}\\n' after each body."""
    return [int(x) for x in re.findall(rb"##(\d{3})", out)]


def tls_client(port, cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert.crt, cert.key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw)


def read_all(s, timeout=10):
    s.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ssl.SSLError, ConnectionResetError):
        pass
    return data


def rule_hits(sc, name):
    for r in sc.stats().get("policy", {}).get("rules", []):
        if r.get("name") == name:
            return r.get("hits", 0), r.get("audit_would_deny", 0)
    return 0, 0


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    curl_id, api_id, web_id = (h.spiffe("tools", "curl"), h.spiffe("shop", "api"),
                               h.spiffe("shop", "web"))
    hp_id = h.spiffe("edge", "haproxy")
    cc = env.certs.leaf("curl", ca, [curl_id])
    hp = env.certs.leaf("haproxy", ca, [hp_id])
    api = env.certs.leaf("api", ca, [api_id])
    web = env.certs.leaf("web", ca, [web_id])
    backend = RecordingBackend()
    in_port, out_port = h.free_port(), h.free_port()
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "no-admin", "action": "deny", "from": ["*"], "paths": ["/admin*"]},
        {"name": "reads", "action": "allow", "from": [curl_id, web_id, hp_id],
         "methods": ["GET", "HEAD"], "paths": ["/api*", "/ws*"]},
        {"name": "writes", "action": "allow", "from": [web_id], "methods": ["POST", "PUT"],
         "paths": ["/api*"]},
        {"name": "watch-delete", "action": "deny", "mode": "audit", "from": ["*"],
         "methods": ["DELETE"]}]})
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, backend.addr)], policy=policy)
    env.sidecar("web", web, ca, outbound=[(out_port, "127.0.0.1:%d" % in_port, api_id)])
    o = "http://127.0.0.1:%d" % out_port
    i = "https://127.0.0.1:%d" % in_port
    w = ["-w", "##%{http_code}"]

    # One keep-alive connection: allowed, denied, allowed.
    rc, out, err = curl(w + [o + "/api/1", o + "/admin/users", o + "/api/2"])
    codes = statuses(out)
    ok(rc == 0 and codes == [200, 403, 200],
       "GET /api/1, /admin/users, /api/2 on one connection: 200, 403, 200 (%r %s)" % (
           codes, err.strip()))
    rc, out, err = curl(["-D", "-", o + "/admin/users"])
    text = out.decode(errors="replace")
    ok("x-tether-reason: policy_denied" in text and '"rule": "no-admin"' in text,
       "the 403 has x-tether-reason and a JSON body naming the rule:\n" + text[:400])
    rc, out, err = curl(["-v", o + "/api/a", o + "/admin/b", o + "/api/c"])
    ok(err.count("Re-using existing connection") + err.count("Reusing existing connection") >= 2,
       "curl reused its connection across the denied request:\n" + err[-600:])
    ok(not any(p.startswith("/admin") for p in backend.paths()),
       "the backend never saw /admin (%r)" % backend.paths()[-5:])

    # Bodies: a denied POST's body never reaches the backend; allowed uploads do, intact.
    body = h.pattern_bytes(300000, seed=7)
    bf = env.path("upload.bin")
    with open(bf, "wb") as f:
        f.write(body)
    want = hashlib.sha256(body).hexdigest()
    rc, out, err = curl(["-X", "POST", "-H", "Transfer-Encoding: chunked", "--data-binary",
                         "@" + bf, o + "/api/upload"])
    ok(rc == 0 and json.loads(out or b"{}").get("sha256") == want,
       "chunked upload of 300 KB through the pair arrives intact (%s %r)" % (err, out[:200]))
    rc, out, err = curl(["-X", "PUT", "-H", "Expect: 100-continue", "--data-binary",
                         "@" + bf, o + "/api/put"])
    ok(rc == 0 and json.loads(out or b"{}").get("sha256") == want,
       "Expect: 100-continue upload arrives intact (%s %r)" % (err, out[:200]))
    rc, out, err = curl(w + ["-X", "POST", "--data-binary", "@" + bf, o + "/admin/upload"])
    ok(statuses(out) == [403] and not any(p == "/admin/upload" for p in backend.paths()),
       "a denied 300 KB POST: 403, the backend saw nothing (%r)" % statuses(out))
    rc, out, err = curl(w + ["-0", o + "/api/old"])
    ok(statuses(out) == [200], "HTTP/1.0 request: 200 (%r %s)" % (statuses(out), err))
    rc, out, err = curl(w + ["-I", o + "/api/head"])
    ok(rc == 0 and b"200" in out, "HEAD: 200 without a body (%r)" % out[:100])

    # Method rules: DELETE is not allowed (default deny), and the audit rule counts it.
    before = rule_hits(api_sc, "watch-delete")
    rc, out, err = curl(w + ["-X", "DELETE", o + "/api/x"])
    ok(statuses(out) == [403], "DELETE /api/x: 403 by the default (%r)" % statuses(out))
    after = h.wait_for(lambda: (lambda a: a if a[1] > before[1] else None)(
        rule_hits(api_sc, "watch-delete")), 5, what="audit would-deny count")
    ok(after[1] == before[1] + 1, "audit rule watch-delete counted one would-deny (%r -> %r)"
       % (before, after))

    # Straight to the inbound with curl's certificate: reads yes, writes and /admin no.
    cert = ["-k", "--cert", cc.crt, "--key", cc.key]
    rc, out, err = curl(cert + w + [i + "/api/direct", i + "/admin/direct"])
    ok(statuses(out) == [200, 403],
       "curl --cert straight to the inbound: /api 200, /admin 403 (%r %s)" % (
           statuses(out), err))
    rc, out, err = curl(cert + w + ["-X", "POST", "-d", "x", i + "/api/direct"])
    ok(statuses(out) == [403], "curl's POST is not in its rules: 403 (%r)" % statuses(out))
    for path in ("/api/../admin", "/%61dmin/x", "/api/%2e%2e/admin"):
        s = tls_client(in_port, cc)
        s.sendall(("GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n" % path).encode())
        ans = read_all(s)
        s.close()
        ok(ans.startswith(b"HTTP/1.1 403") or ans.startswith(b"HTTP/1.1 400"),
           "GET %s cannot walk around the /admin rule (%r)" % (path, ans[:40]))
    ok(not any("admin" in p for p in backend.paths()),
       "the backend never saw an admin path (%r)" % backend.paths()[-5:])

    # After longer than any detection timeout, the request is still read and refused.
    s = tls_client(in_port, cc)
    time.sleep(1.5)
    s.sendall(b"POST /admin/late HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    s.settimeout(10)
    ans = s.recv(4096)
    ok(ans.startswith(b"HTTP/1.1 403"), "a request sent after 1.5 s of silence: 403 (%r)"
       % ans[:40])
    s.close()

    # Not HTTP: refused with 400, nothing reaches the backend.
    n_seen = len(backend.paths())
    for raw, reason in ((b"SSH-2.0-OpenSSH_9.2\r\n", b"x-tether-reason"),
                        (b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n"
                         b"Host: a\r\n\r\n", b"content_length_and_transfer_encoding"),
                        (b"GET /api/x HTTP/1.1\nHost: a\n\n", b"bare_lf")):
        s = tls_client(in_port, cc)
        s.sendall(raw)
        ans = read_all(s)
        s.close()
        ok(ans.startswith(b"HTTP/1.1 400") and reason in ans,
           "%r...: 400 naming %s (%r)" % (raw[:24], reason.decode(), ans[:160]))
    time.sleep(0.3)
    ok(len(backend.paths()) == n_seen, "none of them reached the backend (%r)"
       % backend.paths()[n_seen:])

    # Pipelining straight to the inbound: answers in request order.
    s = tls_client(in_port, cc)
    s.sendall(b"GET /api/p1 HTTP/1.1\r\nHost: a\r\n\r\n"
              b"GET /admin/p2 HTTP/1.1\r\nHost: a\r\n\r\n"
              b"GET /api/p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    ans = read_all(s).decode(errors="replace")
    s.close()
    order = [ans.find('"/api/p1"'), ans.find("403 Forbidden"), ans.find('"/api/p3"')]
    ok(all(x >= 0 for x in order) and order == sorted(order),
       "pipelined 200, 403, 200 come back in request order (%r)" % order)

    # The workload cuts its answer to the second of two pipelined requests short: the
    # first answer and the cut one's part reach the caller, then a close (close_notify),
    # not a reset that would destroy what the caller has not read yet.
    s = tls_client(in_port, cc)
    s.sendall(b"GET /api/whole HTTP/1.1\r\nHost: a\r\n\r\nGET /api/cut HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(1)
    s.settimeout(10)
    ans, reset = b"", None
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            ans += chunk
    except (ConnectionResetError, ssl.SSLError, socket.timeout) as e:
        reset = e
    s.close()
    whole = ans.find(b"w" * (60 << 10))
    cut = ans[ans.find(b"\r\n\r\n", whole) + 4:] if whole > 0 else b""
    ok(reset is None and whole > 0 and b"Content-Length: 100000" in ans[whole:]
       and cut == b"c" * 50000,
       "a cut answer behind a whole one straight to the inbound: the whole one intact, all "
       "50000 bytes the workload sent of the cut one (%d), then a close, not a reset (%r; "
       "%d bytes)" % (len(cut), reset, len(ans)))

    # A WebSocket-style upgrade: after the 101 the bytes flow both ways unread.
    s = tls_client(in_port, cc)
    s.sendall(b"GET /ws/chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\n\r\n")
    s.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    s.sendall(b"POST /admin not-http-any-more")
    got = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""
    deadline = time.time() + 5
    while b"not-http-any-more" not in got and time.time() < deadline:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    ok(head.startswith(b"HTTP/1.1 101") and got == b"echo:POST /admin not-http-any-more",
       "upgrade: 101, then raw bytes echoed through (%r %r)" % (head[:20], got[:60]))

    # HAProxy in HTTP mode as a caller from outside the mesh, reusing its mTLS
    # connections to the inbound across requests (http-reuse always).
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    hp_port = h.free_port()
    cfg = env.write("haproxy.cfg", """
global
    pidfile {d}/haproxy.pid
    maxconn 200
defaults
    mode http
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend web
    bind 127.0.0.1:{port}
    default_backend api
backend api
    server api 127.0.0.1:{in_port} ssl crt {pem} ca-file {ca} verify none
""".format(d=env.dir, port=hp_port, in_port=in_port, pem=hp.pem_bundle(env.path("hp.pem")),
           ca=ca.crt))
    env.proc("haproxy", [haproxy, "-db", "-f", cfg])
    h.wait_for(lambda: h.connect(hp_port, 1).close() or True, 10, what="haproxy listening")
    hurl = "http://127.0.0.1:%d" % hp_port
    codes = []
    for n in range(3):
        rc, out, err = curl(w + [hurl + "/api/hp%d" % n, hurl + "/admin/hp%d" % n])
        codes += statuses(out)
    ok(codes == [200, 403] * 3,
       "curl -> HAProxy (mode http, reused mTLS) -> inbound: /api 200, /admin 403 (%r)" % codes)
    hp_lines = [e for e in api_sc.events("request") if e.get("peer_id") == hp_id]
    ok(len(hp_lines) == 6 and len({e.get("peer_addr") for e in hp_lines}) < 6,
       "HAProxy's 6 requests were read on reused connections (%d lines, %d connections)" % (
           len(hp_lines), len({e.get("peer_addr") for e in hp_lines})))

    # Counts per rule and per request.
    hits, _ = rule_hits(api_sc, "no-admin")
    ok(hits >= 8, "no-admin counted every denied request (%d)" % hits)
    li = api_sc.listener("inbound:")
    req = li.get("requests", {})
    ok(req.get("total", 0) >= 20 and req.get("denied", 0) >= 8 and
       req.get("refused", {}).get("content_length_and_transfer_encoding", 0) >= 1,
       "/stats counts requests, denials and refusals by reason (%r)" % {
           k: req.get(k) for k in ("total", "denied", "refused", "by_status")})
    lines = [e for e in api_sc.events("request") if e.get("path") == "/admin/users"]
    ok(lines and lines[0].get("status") == 403 and lines[0].get("rule") == "no-admin" and
       lines[0].get("peer_id") == web_id,
       "a request line per request: caller, path, status, rule (%r)" % (lines[:1],))
    ok(api_sc.alive(), "the api sidecar is still running")
    backend.stop()
    ok.done()


if __name__ == "__main__":
    h.main(test, "http-policy")
