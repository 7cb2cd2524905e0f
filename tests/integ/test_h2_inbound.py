#!/usr/bin/env python3
"""HTTP/2 callers outside the mesh, straight to an inbound sidecar (Tether issue 10: "the
inbound listener also negotiates ALPN for callers outside the mesh"), with real clients
nobody here wrote: curl --http2 --cert and nghttp --cert. The workload speaks HTTP/1.1
only; the inbound serves each HTTP/2 request to it as an HTTP/1.1 request and answers the
stream with its response.

- ALPN: curl offering h2 gets h2 (curl reports HTTP version 2), and curl --http1.1 still
  gets the one-connection HTTP/1.1 path; on a port declared opaque (relayed unread) no
  h2 is selected, so curl speaks HTTP/1.1 there, and a request on a link (tether-h2) to
  it gets 501 opaque_port;
- GET, a 1 MiB POST echoed intact (sha256), a response the workload chunks and one it
  delimits by closing, HEAD with its Content-Length, all through the translation;
- per-request policy on one HTTP/2 connection: /api allowed, /admin denied with 403,
  x-tether-reason policy_denied and a JSON body naming the rule, and the requests after it
  on the same connection still answered (nghttp multiplexes them on one connection); the
  denied request never reaches the workload; counted per rule and in /stats requests;
- a caller the policy denies outright gets 403 on every stream, and the workload sees
  nothing;
- a workload that closes without answering gives 502 upstream_bad_response;
- flow control per stream: a 4 MiB answer the caller does not read (hyper-h2, its window
  never given back) stalls only its own stream: a second request on the same connection
  is answered meanwhile, and the first completes once the caller reads;
- a request smuggling attempt cannot ride the translation: a header value carrying a
  second request (CR LF inside a value) is refused by the HTTP/2 layer, never written;
- where no rule reads methods or paths (a second inbound, without a policy), a request
  whose head the gate would pass on unchanged skips it (http/h2h1.h tt_h2h1_plain) and
  reaches the workload as curl sent it, query included, while one whose path the gate
  normalizes (a dot segment, an encoded unreserved character) still reaches it
  normalized; each is counted once in /stats and has its request line (rule no-policy,
  the path without its query), and a workload that hangs up is logged as on the inbound
  with rules (status 0, the caller got 502).
"""
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class Backend:
    """An HTTP/1.1 workload: /echo returns the request body; /chunked answers chunked;
    /close answers without length and closes; /hangup closes without answering;
    anything else says which path it saw. Records every path it served."""

    def __init__(self):
        outer = self
        self.paths = []
        self.versions = []
        self.lock = threading.Lock()

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
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
                return self.rfile.read(n) if n else b""

            def _answer(self):
                with outer.lock:
                    outer.paths.append(self.path)
                    outer.versions.append(self.request_version)
                body = self._body()
                if self.path.startswith("/hangup"):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.path.startswith("/echo"):
                    out = body
                elif self.path.startswith("/chunked"):
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"chunk-one ", b"chunk-two ", b"chunk-three"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                    return
                elif self.path.startswith("/big/"):
                    out = h.pattern_bytes(int(self.path[5:]), seed=3)
                elif self.path.startswith("/close"):
                    self.send_response(200)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(b"delimited by the close")
                    self.close_connection = True
                    return
                else:
                    out = ("seen %s %s" % (self.command, self.path)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(out)))
                self.send_header("X-Backend", "yes")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _answer

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def seen(self):
        with self.lock:
            return list(self.paths)

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def stall_client(port, crt, key, ca):
    """hyper-h2 over mTLS (ALPN h2): GET /big/4194304 on stream 1 without giving its stream
    window back (the connection's is given back), then GET /hello on stream 3; prints JSON:
    whether stream 3 ended while stream 1 was stalled, and how many bytes stream 1 had by
    then and in the end."""
    import socket
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    hdrs = [(":method", "GET"), (":scheme", "https"), (":authority", "api")]
    conn.send_headers(1, hdrs + [(":path", "/big/4194304")], end_stream=True)
    s.sendall(conn.data_to_send())
    got = {1: 0, 3: 0}
    ended, res, held = set(), {}, []

    def pump(until, ack):
        while not until():
            data = s.recv(65536)
            if not data:
                raise RuntimeError("connection closed")
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.DataReceived):
                    got[ev.stream_id] += len(ev.data)
                    if ack or ev.stream_id != 1:
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif ev.flow_controlled_length > 0:
                        # The connection's window goes back (other streams may flow), the
                        # stream's does not: stream 1 stalls at its own window.
                        conn.increment_flow_control_window(ev.flow_controlled_length)
                        held.append(ev.flow_controlled_length)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.add(ev.stream_id)
            s.sendall(conn.data_to_send())

    pump(lambda: got[1] >= 65535 or 1 in ended, ack=False)  # its window is used up
    conn.send_headers(3, hdrs + [(":path", "/hello")], end_stream=True)
    s.sendall(conn.data_to_send())
    pump(lambda: 3 in ended, ack=False)
    res["second_done_while_first_stalled"] = 1 not in ended
    res["first_bytes_meanwhile"] = got[1]
    for n in held:  # now read stream 1: give its window back
        conn.increment_flow_control_window(n, stream_id=1)
    s.sendall(conn.data_to_send())
    pump(lambda: 1 in ended, ack=True)
    res["first_bytes"] = got[1]
    print(json.dumps(res))


def link_get(port, crt, key, ca):
    """hyper-h2 offering only the pool's token (a sidecar's link) sends GET /x; prints its
    :status and x-tether-reason as JSON."""
    import socket
    import ssl

    import h2.config
    import h2.connection
    import h2.events

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["tether-h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "api"),
                          (":path", "/x")], end_stream=True)
    s.sendall(conn.data_to_send())
    res = {"alpn": s.selected_alpn_protocol()}
    while "status" not in res:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                hd = {k.decode(): v.decode() for k, v in ev.headers}
                res["status"], res["reason"] = hd.get(":status"), hd.get("x-tether-reason")
        s.sendall(conn.data_to_send())
    print(json.dumps(res))


def curl(args, timeout=40):
    r = subprocess.run(["curl", "-sS", "--max-time", "30"] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def rule_hits(sc, name):
    for r in sc.stats().get("policy", {}).get("rules", []):
        if r.get("name") == name:
            return r.get("hits", 0)
    return 0


def test(env):
    ok = h.Checks()
    if subprocess.run(["sh", "-c", "command -v nghttp"], capture_output=True).returncode != 0:
        print("SKIP: nghttp missing (apt-get install nghttp2-client; deploy/install-deps.sh "
              "does)")
        sys.exit(77)
    ca = env.certs.ca("ca")
    curl_id, evil_id, api_id = (h.spiffe("tools", "curl"), h.spiffe("tools", "evil"),
                                h.spiffe("shop", "api"))
    cc = env.certs.leaf("curl", ca, [curl_id])
    evil = env.certs.leaf("evil", ca, [evil_id])
    api = env.certs.leaf("api", ca, [api_id])
    backend = Backend()
    in_port = h.free_port()
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "no-admin", "action": "deny", "from": ["*"], "paths": ["/admin*"],
         "ports": [backend.port]},
        {"name": "curl-reads-writes", "action": "allow", "from": [curl_id]}]})
    # A second workload port, declared opaque: relayed unread, so no h2 is served there.
    opaque_backend = Backend()
    opaque_in = h.free_port()
    api_sc = env.sidecar("api", api, ca, policy=policy,
                         inbound=[(in_port, backend.addr), (opaque_in, opaque_backend.addr)],
                         extra=["--opaque-ports", str(opaque_backend.port)])
    base = "https://127.0.0.1:%d" % in_port
    cert = ["-k", "--cert", cc.crt, "--key", cc.key]
    fmt = ["-w", "##%{http_code} v%{http_version}\\n"]

    # ALPN: h2 for an h2 client, HTTP/1.1 still for one that only speaks it.
    rc, out, err = curl(cert + fmt + [base + "/hello"])
    ok(rc == 0 and out.endswith(b"##200 v2\n") and b"seen GET /hello" in out,
       "curl --http2 --cert gets h2 and the workload's answer (%r %s)" % (out[-80:], err[-300:]))
    rc, out, err = curl(cert + fmt + ["--http1.1", base + "/old"])
    ok(rc == 0 and out.endswith(b"##200 v1.1\n") and b"seen GET /old" in out,
       "curl --http1.1 --cert still gets HTTP/1.1 (%r %s)" % (out[-80:], err[-300:]))
    ok(all(v == "HTTP/1.1" for v in backend.versions),
       "the workload was spoken to in HTTP/1.1 (%r)" % backend.versions)

    # On the opaque port the same client gets HTTP/1.1 (no ALPN h2), relayed unread.
    rc, out, err = curl(cert + fmt + [("https://127.0.0.1:%d" % opaque_in) + "/raw"])
    ok(rc == 0 and out.endswith(b"##200 v1.1\n") and b"seen GET /raw" in out,
       "an opaque port selects no h2: curl falls back to HTTP/1.1 (%r %s)"
       % (out[-80:], err[-300:]))

    # A request on a link to the opaque port is not served: only tunnels reach it.
    if subprocess.run([h.DEBIAN_PYTHON, "-c", "import h2.connection"],
                      capture_output=True).returncode == 0:
        seen = len(opaque_backend.seen())
        r = subprocess.run([h.DEBIAN_PYTHON, os.path.abspath(__file__), "link-get",
                            str(opaque_in), cc.crt, cc.key, ca.crt], capture_output=True,
                           text=True, timeout=60)
        res = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {}
        ok(res.get("alpn") == "tether-h2" and res.get("status") == "501" and
           res.get("reason") == "opaque_port" and len(opaque_backend.seen()) == seen,
           "a request on a link to an opaque port gets 501 opaque_port (%r %s)"
           % (res, r.stderr[-500:]))

    # Bodies and framings through the translation.
    body = h.pattern_bytes(1 << 20, seed=7)
    bf = os.path.join(env.dir, "body.bin")
    with open(bf, "wb") as f:
        f.write(body)
    rc, out, err = curl(cert + ["--data-binary", "@" + bf, base + "/echo"])
    ok(rc == 0 and hashlib.sha256(out).hexdigest() == hashlib.sha256(body).hexdigest(),
       "a 1 MiB POST over h2 is echoed intact (%d bytes back, %s)" % (len(out), err[-300:]))
    rc, out, err = curl(cert + ["-H", "Transfer-Encoding: chunked", "--data-binary", "@" + bf,
                                base + "/echo/again"])
    ok(rc == 0 and hashlib.sha256(out).hexdigest() == hashlib.sha256(body).hexdigest(),
       "the same body sent without a length is echoed intact (%d bytes, %s)"
       % (len(out), err[-300:]))
    rc, out, err = curl(cert + [base + "/chunked"])
    ok(rc == 0 and out == b"chunk-one chunk-two chunk-three",
       "a chunked response arrives de-chunked (%r %s)" % (out, err[-300:]))
    rc, out, err = curl(cert + [base + "/close"])
    ok(rc == 0 and out == b"delimited by the close",
       "a response delimited by the close arrives whole (%r %s)" % (out, err[-300:]))
    rc, out, err = curl(cert + ["-I", base + "/head"])
    ok(rc == 0 and re.search(rb"(?im)^HTTP/2 200", out) and
       re.search(rb"(?im)^content-length: 15", out) and
       re.search(rb"(?im)^x-backend: yes", out),
       "HEAD keeps the workload's Content-Length and fields (%r)" % out[:300])

    # Per-request policy on one h2 connection, with nghttp (one connection, multiplexed).
    before_hits = rule_hits(api_sc, "no-admin")
    r = subprocess.run(["nghttp", "-v", "--cert", cc.crt, "--key", cc.key,
                        base + "/api/1", base + "/admin/users", base + "/api/2"],
                       capture_output=True, text=True, timeout=40)
    statuses = re.findall(r"recv \(stream_id=(\d+)\) :status: (\d+)", r.stdout)
    by_stream = {int(s): int(c) for s, c in statuses}
    ok(sorted(by_stream.values()) == [200, 200, 403],
       "nghttp on one connection: two 200 and one 403 (%r)" % by_stream)
    ok(len(re.findall(r"recv SETTINGS frame", r.stdout)) >= 1 and
       r.stdout.count("send HEADERS frame") == 3,
       "the three requests went over one HTTP/2 connection")
    ok("/admin/users" not in backend.seen(),
       "the denied request never reached the workload (%r)" % backend.seen())
    rc, out, err = curl(cert + ["-D", "-", base + "/admin/x"])
    ok(re.search(rb"(?im)^HTTP/2 403", out) and
       re.search(rb"(?im)^x-tether-reason: policy_denied", out),
       "the denial is 403 with x-tether-reason policy_denied (%r)" % out[:300])
    doc = json.loads(out.split(b"\r\n\r\n", 1)[1] or b"{}")
    ok(doc.get("rule") == "no-admin", "its JSON body names the rule (%r)" % doc)
    after_hits = h.wait_for(lambda: (lambda n: n if n >= before_hits + 2 else None)(
        rule_hits(api_sc, "no-admin")), 5, what="no-admin hits")
    ok(after_hits == before_hits + 2, "both denials counted on no-admin (%d -> %d)"
       % (before_hits, after_hits))
    reqs = api_sc.listener("inbound:").get("requests", {})
    ok(reqs.get("denied", 0) >= 2, "/stats requests count the denials (%r)" % reqs)

    # A caller the policy denies outright: 403 on the stream, nothing reaches the workload.
    n_seen = len(backend.seen())
    rc, out, err = curl(["-k", "--cert", evil.crt, "--key", evil.key, "-D", "-",
                         base + "/api/evil"])
    ok(re.search(rb"(?im)^HTTP/2 403", out) and
       re.search(rb"(?im)^x-tether-reason: policy_denied", out),
       "a denied caller's request is answered 403 policy_denied (%r)" % out[:200])
    ok(len(backend.seen()) == n_seen, "the workload saw nothing of it")

    # A workload that hangs up without answering.
    rc, out, err = curl(cert + ["-D", "-", base + "/hangup"])
    ok(re.search(rb"(?im)^HTTP/2 502", out) and
       re.search(rb"(?im)^x-tether-reason: upstream_bad_response", out),
       "a workload closing without an answer gives 502 upstream_bad_response (%r %s)"
       % (out[:200], err[-200:]))

    # A header value carrying a second request: refused by HTTP/2 itself, never written.
    n_seen = len(backend.seen())
    rc, out, err = curl(cert + ["-H", "X-Sneak: a\r\n\r\nGET /admin/smuggled HTTP/1.1",
                                base + "/api/sneak"])
    ok("/admin/smuggled" not in backend.seen(),
       "no smuggled request reached the workload (%r)" % backend.seen()[n_seen:])

    # A stalled stream does not hold up the others on its connection.
    if subprocess.run([h.DEBIAN_PYTHON, "-c", "import h2.connection"],
                      capture_output=True).returncode == 0:
        r = subprocess.run([h.DEBIAN_PYTHON, os.path.abspath(__file__), "stall", str(in_port),
                            cc.crt, cc.key, ca.crt], capture_output=True, text=True, timeout=60)
        if ok(r.returncode == 0, "the hyper-h2 client ran: %s" % r.stderr[-1500:]):
            res = json.loads(r.stdout.strip().splitlines()[-1])
            ok(res["second_done_while_first_stalled"] and res["first_bytes_meanwhile"] < 1 << 20,
               "a second request is answered while the first stream is stalled at its window "
               "(%r)" % res)
            ok(res["first_bytes"] == 4194304, "the stalled stream completes once read (%r)"
               % res)

    # No rule reads paths: plain heads skip the gate, the others are still normalized by it.
    plain_in = h.free_port()
    plain_sc = env.sidecar("api-plain", api, ca, inbound=[(plain_in, backend.addr)])
    pbase = "https://127.0.0.1:%d" % plain_in
    sent = {"/x/a-b_c~d;p=1?q=1&r=%20/?s": "/x/a-b_c~d;p=1?q=1&r=%20/?s",
            "/x/../y/%61?q": "/y/a?q", "/x/./%7Ez": "/x/~z"}
    for path, want in sent.items():
        rc, out, err = curl(cert + ["--path-as-is", pbase + path])
        ok(rc == 0 and out == ("seen GET %s" % want).encode(),
           "no policy: %s reaches the workload as %s (%r %s)" % (path, want, out[:120],
                                                                  err[-200:]))
    rc, out, err = curl(cert + ["-D", "-", pbase + "/hangup/plain"])
    ok(re.search(rb"(?im)^HTTP/2 502", out), "no policy: /hangup/plain gets 502 (%r)" % out[:120])
    reqs = h.wait_for(lambda: (lambda r: r if r.get("total", 0) >= 4 else None)(
        plain_sc.listener("inbound:").get("requests", {})), 5, what="the requests counted")
    ok(reqs.get("total") == 4 and reqs.get("by_status", {}).get("2xx") == 3,
       "no policy: /stats counts each request once (%r)" % reqs)
    lines = {r.get("path"): r for r in plain_sc.events("request")}
    for path in ("/x/a-b_c~d;p=1", "/y/a", "/x/~z"):
        r = lines.get(path, {})
        ok(r.get("status") == 200 and r.get("rule") == "no-policy" and r.get("method") == "GET"
           and r.get("verdict") == "allow" and r.get("peer_id") == curl_id,
           "no policy: %s has its request line (%r)" % (path, r))
    gated = [r for r in api_sc.events("request") if r.get("path") == "/hangup"]
    r = lines.get("/hangup/plain", {})
    ok(gated and r and r.get("status") == gated[0].get("status") == 0,
       "a workload hanging up is logged alike with and without the gate (%r / %r)"
       % (r, gated[:1]))
    ok(plain_sc.alive(), "the inbound without a policy is alive")
    clean, reports = plain_sc.stop_clean()
    ok(clean, "... and exits 0 on SIGTERM without sanitizer reports (%r)" % reports)

    # The requests are logged as such.
    lines = [r for r in api_sc.events("request") if r.get("path") == "/admin/users"]
    ok(lines and lines[0].get("status") == 403 and lines[0].get("rule") == "no-admin",
       "the denied request has its request line (%r)" % lines[:1])
    ok(api_sc.alive(), "the inbound sidecar is alive")
    clean, reports = api_sc.stop_clean()
    ok(clean, "the inbound sidecar exits 0 on SIGTERM without sanitizer reports (%r)" % reports)
    backend.stop()
    opaque_backend.stop()
    ok.done()


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "stall":
        stall_client(int(sys.argv[2]), *sys.argv[3:6])
    elif len(sys.argv) >= 6 and sys.argv[1] == "link-get":
        link_get(int(sys.argv[2]), *sys.argv[3:6])
    else:
        h.main(test, "h2_inbound")
