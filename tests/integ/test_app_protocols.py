#!/usr/bin/env python3
"""Application protocols through a pooled sidecar pair, driven by clients nobody here
wrote.

client -> outbound sidecar (web) -> pooled HTTP/2 mTLS link (tether-h2) -> inbound sidecar
(api) -> backend. With pooling on (the default) an HTTP/1.x app's requests ride the link
as request streams, one each (integ-http-streams), and every other app connection as an
opaque extended-CONNECT tunnel; each case proves a protocol survives that end to end:

1. gRPC (Debian's python3-grpcio, generic handlers, bytes in and out): a unary call, a
   1 MiB unary call, an unknown method answered UNIMPLEMENTED (a trailers-only answer),
   and a bidirectional stream of 200 messages in lock step (each sent only after the
   previous one's echo came back), echoed in order.
2. HTTP/2 with prior knowledge (h2c, no upgrade): nghttpd --no-tls as the backend; nghttp
   fetches a 1 MiB file intact, uploads one (--echo-upload) intact, sends 10 requests on
   one connection; h2load -n 200 -c 4 -m 10: all 200 succeeded, all 2xx.
3. curl over HTTP/1.1 to a threaded http.server backend: keep-alive (3 URLs on one curl
   connection: three request streams), 20 URLs with Connection: close (20 app
   connections, each answered), a 300 KiB chunked upload echoed intact, an
   `Expect: 100-continue` upload (curl gets its 100 Continue from the outbound once the
   request's stream takes the body), HTTP/1.0 (`curl -0`) GET and POST.
4. A WebSocket-style upgrade: GET with Upgrade: websocket answered 101 Switching
   Protocols (Sec-WebSocket-Accept checked), then 1 MiB of raw bytes echoed both ways:
   the outbound hands the connection from that request on to a tunnel.
5. A server-first protocol: an SMTP-like banner ("220 ready") reaches a client that sends
   nothing within 2 s, on a cold pool (the link must be dialled) and on a warm one; then
   lines echo and the half-close trailer arrives.
6. (Not here: 100 MB echoed both ways through one tunnel is integ-pool's case 3.)

Then the outbound's /stats: every destination's app connections rode streams
(streams_total == the tunnels and requests the clients made, fallback_direct 0, access
lines route pool or http) on at most 2 links per destination (one per worker) while the
clients made dozens of app connections.

The gRPC client and server run under Debian's python (h.DEBIAN_PYTHON), where
python3-grpcio lives; nghttp, h2load and nghttpd come from nghttp2-client and
nghttp2-server (deploy/install-deps.sh). Under ASan the h2load and bulk sizes shrink.
"""

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KB, MB = 1 << 10, 1 << 20
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
BANNER = b"220 ready\r\n"
CLOSE_CONNS = 20


def sha(b):
    """Hex SHA-256 of b."""
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------------------------
# gRPC server and client: run as `DEBIAN_PYTHON this-file grpc-server|grpc-client PORT`.


def grpc_server(port):
    """A grpcio server on 127.0.0.1:port with service tt.Echo: Unary answers b"echo:" +
    the request, Bidi echoes each message as it comes. Bytes in and out (no serializers,
    no .proto). Runs until killed."""
    from concurrent import futures

    import grpc

    def unary(req, ctx):
        """tt.Echo/Unary: b"echo:" + the request."""
        return b"echo:" + req

    def bidi(it, ctx):
        """tt.Echo/Bidi: each message back as it comes."""
        for m in it:
            yield m

    handler = grpc.method_handlers_generic_handler("tt.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 8 * MB)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def grpc_client(port, count):
    """Calls tt.Echo through 127.0.0.1:port (plaintext HTTP/2, as an app talks to its
    outbound sidecar); prints a JSON result: unary, big unary, an unknown method's status,
    and a lock-step bidi stream of count messages."""
    import queue

    import grpc

    res = {}
    ch = grpc.insecure_channel("127.0.0.1:%d" % port, options=[
        ("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 8 * MB)])
    grpc.channel_ready_future(ch).result(timeout=20)
    unary = ch.unary_unary("/tt.Echo/Unary")
    res["unary"] = unary(b"hello through the pool", timeout=20).decode()
    big = h.pattern_bytes(MB, seed=31)
    got = unary(big, timeout=30)
    res["big_ok"] = got == b"echo:" + big
    res["big_len"] = len(got)
    try:
        ch.unary_unary("/tt.Echo/Missing")(b"x", timeout=20)
        res["missing"] = "OK"
    except grpc.RpcError as e:
        res["missing"] = e.code().name

    q = queue.Queue()

    def requests():
        """The bidi call's requests: what the loop below puts on q, until None."""
        while True:
            m = q.get()
            if m is None:
                return
            yield m

    msgs = [b"msg-%04d:" % i + h.pattern_bytes(100 + i * 7, seed=i) for i in range(count)]
    call = ch.stream_stream("/tt.Echo/Bidi")(requests(), timeout=60)
    echoed, in_order = 0, True
    q.put(msgs[0])
    for i, m in enumerate(call):
        if m != msgs[i]:
            in_order = False
            call.cancel()
            break
        echoed += 1
        q.put(msgs[i + 1] if i + 1 < count else None)
    res["bidi_echoed"] = echoed
    res["bidi_in_order"] = in_order
    res["bidi_status"] = call.code().name
    ch.close()
    print(json.dumps(res))


def check_grpc(ok, env, port, count):
    """1: a grpcio client through the outbound to a grpcio server behind the inbound."""
    r = subprocess.run([h.DEBIAN_PYTHON, os.path.abspath(__file__), "grpc-client", str(port),
                        str(count)], capture_output=True, text=True, timeout=120)
    if not ok(r.returncode == 0, "1: grpc client ran (rc %d): %s" % (
            r.returncode, r.stderr[-1500:])):
        return
    res = json.loads(r.stdout.strip().splitlines()[-1])
    h.log("1: grpc:", res)
    ok(res["unary"] == "echo:hello through the pool", "1: gRPC unary call answered (%r)"
       % res["unary"])
    ok(res["big_ok"], "1: gRPC 1 MiB unary call echoed intact (%d bytes back)"
       % res["big_len"])
    ok(res["missing"] == "UNIMPLEMENTED", "1: unknown method: UNIMPLEMENTED through the "
       "tunnel (trailers-only answer; got %s)" % res["missing"])
    ok(res["bidi_echoed"] == count and res["bidi_in_order"] and res["bidi_status"] == "OK",
       "1: gRPC bidi stream: %d lock-step messages echoed in order, status OK (echoed %d, "
       "in order %s, status %s)" % (count, res["bidi_echoed"], res["bidi_in_order"],
                                   res["bidi_status"]))


# ---------------------------------------------------------------------------------------
# 2. h2c with prior knowledge: nghttpd, nghttp, h2load.


def start_nghttpd(env, docroot):
    """nghttpd --no-tls serving docroot (POST/PUT bodies echoed) on a free port; returns
    the port once it accepts."""
    port = h.free_port()
    env.proc("nghttpd", ["nghttpd", "--no-tls", "--echo-upload", "-a", "127.0.0.1", "-d",
                         docroot, str(port)])
    h.wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True,
               10, what="nghttpd listening")
    return port


def check_h2c(ok, env, port, docroot, big, n_h2load):
    """2: nghttp and h2load speak HTTP/2 with prior knowledge through the tunnel."""
    url = "http://127.0.0.1:%d" % port
    r = h.run(["nghttp", "-v", "-n", url + "/small.txt"], timeout=30, check_rc=False)
    out = r.stdout.decode(errors="replace")
    good = (r.returncode == 0 and ":status: 200" in out and "recv SETTINGS frame" in out
            and "HTTP Upgrade" not in out)
    ok(good, "2: nghttp (prior knowledge, no upgrade) GET: HTTP/2 frames, :status 200%s" % (
        "" if good else " (rc %d): %s" % (r.returncode, out[-600:] +
                                          r.stderr.decode(errors="replace")[-300:])))

    r = h.run(["nghttp", url + "/big.bin"], timeout=60, check_rc=False)
    ok(r.returncode == 0 and sha(r.stdout) == sha(big),
       "2: nghttp GET of a %d KiB file intact (rc %d, %d bytes)" % (
           len(big) // KB, r.returncode, len(r.stdout)))

    r = h.run(["nghttp", "-d", os.path.join(docroot, "big.bin"), url + "/upload"],
              timeout=60, check_rc=False)
    ok(r.returncode == 0 and sha(r.stdout) == sha(big),
       "2: nghttp POST of %d KiB echoed intact (rc %d, %d bytes)" % (
           len(big) // KB, r.returncode, len(r.stdout)))

    r = h.run(["nghttp", "-v", "-n", "-m", "10", url + "/small.txt"], timeout=30,
              check_rc=False)
    out = r.stdout.decode(errors="replace")
    ok(r.returncode == 0 and out.count(":status: 200") == 10,
       "2: nghttp: 10 requests on one HTTP/2 connection, all 200 (got %d)"
       % out.count(":status: 200"))

    r = h.run(["h2load", "-n", str(n_h2load), "-c", "4", "-m", "10", url + "/small.txt"],
              timeout=120, check_rc=False)
    out = r.stdout.decode(errors="replace")
    h.log("2: h2load:", " | ".join(ln.strip() for ln in out.splitlines()
                                    if ln.startswith(("finished", "requests", "status",
                                                      "traffic"))))
    req = [ln for ln in out.splitlines() if ln.startswith("requests:")]
    st = [ln for ln in out.splitlines() if ln.startswith("status codes:")]
    good = ("requests: %d total, %d started, %d done, %d succeeded, 0 failed, 0 errored"
            % ((n_h2load,) * 4))
    ok(r.returncode == 0 and req and req[0].startswith(good),
       "2: h2load -n %d -c 4 -m 10: all succeeded (%s)" % (n_h2load, req or out[-500:]))
    ok(st and st[0].startswith("status codes: %d 2xx, 0 3xx, 0 4xx, 0 5xx" % n_h2load),
       "2: h2load: all %d answers 2xx (%s)" % (n_h2load, st))
    return 4 + 4  # app connections made: the four nghttp runs and h2load's four clients


# ---------------------------------------------------------------------------------------
# 3. curl over HTTP/1.1 and 1.0.


class H1Backend:
    """A threaded HTTP/1.1 server: GET answers "path=<path> version=<request version>";
    POST echoes the body (Content-Length or chunked), its headers saying how it came
    (X-Got-Chunked, X-Got-Expect). Counts TCP connections it accepted."""

    def __init__(self):
        self.connections = 0
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                outer.connections += 1
                super().setup()

            def _answer(self, body, extra=()):
                outer.requests.append((self.command, self.path, self.request_version))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._answer(b"path=%s version=%s\n" % (self.path.encode(),
                                                        self.request_version.encode()))

            def do_POST(self):
                body, chunked = h.read_request_body(self)
                self._answer(body, [("X-Got-Chunked", "yes" if chunked else "no"),
                                    ("X-Got-Expect", self.headers.get("Expect", "none"))])

        self.http = h.ThreadedHttp(Handler)
        self.addr, self.stop = self.http.addr, self.http.stop


def curl(args, timeout=60):
    """Runs curl -sS -v with args; returns (rc, stdout bytes, stderr text)."""
    r = h.run(["curl", "-sS", "-v", "--noproxy", "*", "--max-time", str(timeout)] + args,
              timeout=timeout + 10, check_rc=False)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def check_curl(ok, env, port, backend, upload_path, upload):
    """3: curl keep-alive, chunked upload, Expect: 100-continue, HTTP/1.0."""
    url = "http://127.0.0.1:%d" % port
    before = backend.connections
    rc, out, err = curl([url + "/a", url + "/b", url + "/c"])
    ok(rc == 0 and out == b"".join(b"path=/%s version=HTTP/1.1\n" % p for p in
                                   (b"a", b"b", b"c")),
       "3: curl keep-alive: three GETs answered (rc %d): %r" % (rc, out[:200]))
    ok(err.count("Re-using existing connection") == 2,
       "3: curl reused its one connection through the outbound for the 2nd and 3rd GET%s"
       % ("" if "Re-using existing connection" in err else ": " + err[-400:]))
    ok(backend.requests[-3:] == [("GET", "/%s" % p, "HTTP/1.1") for p in "abc"],
       "3: keep-alive: the backend saw the three requests (%s)" % backend.requests[-3:])

    # Many short app connections on the same destination: the server closes after each
    # answer (the request says Connection: close), so curl opens a new one for each URL.
    before = backend.connections
    rc, out, err = curl(["-H", "Connection: close"] +
                        [url + "/close%d" % k for k in range(CLOSE_CONNS)])
    want = b"".join(b"path=/close%d version=HTTP/1.1\n" % k for k in range(CLOSE_CONNS))
    # (The app's Connection: close is for its hop: the inbound keeps its own keep-alive
    # connection to the backend, so the backend may see as few as one.)
    ok(rc == 0 and out == want,
       "3: Connection: close: %d requests answered on %d app connections (rc %d, %d bytes, "
       "backend connections %d)" % (CLOSE_CONNS, CLOSE_CONNS, rc, len(out),
                                    backend.connections - before))

    rc, out, err = curl(["-H", "Transfer-Encoding: chunked", "--data-binary",
                         "@" + upload_path, url + "/echo"])
    ok(rc == 0 and sha(out) == sha(upload),
       "3: chunked upload of %d KiB echoed intact (rc %d, %d bytes)"
       % (len(upload) // KB, rc, len(out)))

    rc, out, err = curl(["-H", "Expect: 100-continue", "--data-binary", "@" + upload_path,
                         url + "/echo"])
    ok(rc == 0 and sha(out) == sha(upload),
       "3: Expect: 100-continue upload echoed intact (rc %d, %d bytes)" % (rc, len(out)))
    ok("HTTP/1.1 100 Continue" in err,
       "3: curl got a 100 Continue: %s" % [
           ln for ln in err.splitlines() if "100" in ln or "xpect" in ln][:6])

    rc, out, err = curl(["-0", url + "/old"])
    # The request crosses the link as an HTTP/2 stream: the backend gets it as HTTP/1.1.
    ok(rc == 0 and out == b"path=/old version=HTTP/1.1\n" and "> GET /old HTTP/1.0" in err,
       "3: HTTP/1.0 GET (curl -0) answered (rc %d): %r" % (rc, out[:100]))
    rc, out, err = curl(["-0", "--data-binary", "@" + upload_path, url + "/echo"])
    ok(rc == 0 and sha(out) == sha(upload),
       "3: HTTP/1.0 POST of %d KiB echoed intact (rc %d, %d bytes)" % (
           len(upload) // KB, rc, len(out)))
    return 5 + CLOSE_CONNS, 7 + CLOSE_CONNS  # app connections, requests (streams)


# ---------------------------------------------------------------------------------------
# 4. WebSocket-style upgrade.


class UpgradeBackend:
    """Answers a GET carrying Upgrade: websocket with 101 Switching Protocols (and the
    Sec-WebSocket-Accept of its key), then echoes raw bytes until EOF; anything else gets
    400 and a close."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.upgraded = 0
        threading.Thread(target=self._loop, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(60)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = c.recv(4096)
                if not d:
                    return
                buf += d
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                hdrs[k.strip().lower()] = v.strip()
            if not (lines[0].startswith(b"GET ") and hdrs.get(b"upgrade", b"").lower()
                    == b"websocket" and b"sec-websocket-key" in hdrs):
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                          b"Connection: close\r\n\r\n")
                return
            accept = base64.b64encode(hashlib.sha1(hdrs[b"sec-websocket-key"] + WS_GUID)
                                      .digest())
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                      b"\r\n\r\n")
            self.upgraded += 1
            if rest:
                c.sendall(rest)
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        try:
            self.sock.close()
        except OSError:
            pass


def check_upgrade(ok, port, size):
    """4: an Upgrade: websocket handshake answered 101, then raw bytes echoed both ways."""
    key = base64.b64encode(os.urandom(16))
    want = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    s = h.connect(port, 30)
    try:
        s.sendall(b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key +
                  b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                break
            buf += d
        head, _, rest = buf.partition(b"\r\n\r\n")
        ok(head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: " + want in head,
           "4: upgrade answered 101 Switching Protocols with the right accept key: %r"
           % head[:200])
        payload = h.pattern_bytes(size, seed=44)
        err = []

        def sender():
            """Sends the payload, then half-closes (errors go to err)."""
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got = rest + h.read_all(s)
        t.join(30)
        ok(not err and got == payload,
           "4: %d KiB of raw bytes after the 101 echoed intact, then EOF (%d bytes back, "
           "errors %r)" % (size // KB, len(got), err))
    finally:
        s.close()


# ---------------------------------------------------------------------------------------
# 5. Server speaks first.


def check_banner(ok, port, what):
    """5: the backend's banner reaches a client that has sent nothing, within 2 s; then a
    line echoes and the half-close trailer arrives."""
    s = h.connect(port, 10)
    try:
        t0 = time.monotonic()
        s.settimeout(2.0)
        buf = b""
        try:
            while len(buf) < len(BANNER):
                d = s.recv(len(BANNER) - len(buf))
                if not d:
                    break
                buf += d
        except socket.timeout:
            pass
        took = time.monotonic() - t0
        ok(buf == BANNER, "5: %s: banner %r arrived before the client sent anything (got "
           "%r after %.2fs)" % (what, BANNER, buf, took))
        s.settimeout(10)
        line = b"HELO client.example\r\n"
        s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        rest = h.read_all(s)
        want = line + b"\nEOF-SHA256:" + sha(line).encode() + b"\n"
        ok(rest == want, "5: %s: a line echoed after the banner, then the trailer (%r)"
           % (what, rest[:120]))
    finally:
        s.close()


# ---------------------------------------------------------------------------------------


def test(env):
    ok = h.Checks()
    for tool, pkg in (("nghttp", "nghttp2-client"), ("h2load", "nghttp2-client"),
                      ("nghttpd", "nghttp2-server"), ("curl", "curl")):
        if shutil.which(tool) is None and not os.path.exists("/usr/sbin/" + tool):
            print("SKIP: %s is missing (apt-get install %s; deploy/install-deps.sh does)"
                  % (tool, pkg))
            sys.exit(h.SKIP)
    r = subprocess.run([h.DEBIAN_PYTHON, "-c", "import grpc"], capture_output=True)
    if r.returncode != 0:
        print("SKIP: %s cannot import grpc (apt-get install python3-grpcio; "
              "deploy/install-deps.sh does)" % h.DEBIAN_PYTHON)
        sys.exit(h.SKIP)
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
    asan = h.sidecar_under_asan()
    n_h2load = 200
    bulk = 256 * KB if asan else MB
    h.log("ASan build: %s" % asan)

    # Backends.
    grpc_port = h.free_port()
    env.proc("grpc-server", [h.DEBIAN_PYTHON, os.path.abspath(__file__), "grpc-server",
                             str(grpc_port)])
    docroot = env.path("htdocs")
    os.makedirs(docroot)
    big = h.pattern_bytes(bulk, seed=21)
    with open(os.path.join(docroot, "big.bin"), "wb") as f:
        f.write(big)
    with open(os.path.join(docroot, "small.txt"), "wb") as f:
        f.write(b"small file from nghttpd\n")
    h2_port = start_nghttpd(env, docroot)
    h1 = H1Backend()
    env._servers.append(h1)
    upg = UpgradeBackend()
    env._servers.append(upg)
    banner = h.EchoServer("banner", banner=BANNER)
    env._servers.append(banner)
    h.wait_for(lambda: socket.create_connection(("127.0.0.1", grpc_port), 1).close() or True,
               30, what="grpc server listening")
    upload = h.pattern_bytes(300 * KB, seed=9)
    upload_path = env.write("upload.bin", upload)

    # One pair of sidecars, one listener each way per backend: five destinations.
    ca = env.certs.ca("ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", ca, [api_id])
    names = ["grpc", "h2c", "h1", "upgrade", "banner"]
    backends = {"grpc": "127.0.0.1:%d" % grpc_port, "h2c": "127.0.0.1:%d" % h2_port,
                "h1": h1.addr, "upgrade": upg.addr, "banner": banner.addr}
    in_ports = {n: h.free_port() for n in names}
    out_ports = {n: h.free_port() for n in names}
    api_sc = env.sidecar("api", api, ca, inbound=[(in_ports[n], backends[n]) for n in names])
    web_sc = env.sidecar("web", web, ca, outbound=[
        (out_ports[n], "127.0.0.1:%d" % in_ports[n], api_id) for n in names])

    made = {}  # app connections each case's clients made through the outbound
    streams = {}  # streams they rode, where not one per app connection
    check_banner(ok, out_ports["banner"], "cold pool")
    check_banner(ok, out_ports["banner"], "warm pool")
    made["banner"] = 2
    check_grpc(ok, env, out_ports["grpc"], 200)
    made["grpc"] = 1
    made["h2c"] = check_h2c(ok, env, out_ports["h2c"], docroot, big, n_h2load)
    made["h1"], streams["h1"] = check_curl(ok, env, out_ports["h1"], h1, upload_path, upload)
    check_upgrade(ok, out_ports["upgrade"], bulk)
    made["upgrade"] = 1

    # The pool carried them all: tunnels, few links.
    def listener(sc, name):
        """sc's /stats entry of the listener called exactly name."""
        for li in sc.stats().get("listeners", []):
            if li.get("name", "") == name or li.get("name", "").startswith(name + "="):
                return li
        raise h.TestFailure("%s: no listener %s" % (sc.name, name))

    def settled():
        """Whether no tunnel of the outbound is open any more."""
        return all(listener(web_sc, "outbound:127.0.0.1:%d" % out_ports[n])["pool"]
                   ["streams_active"] == 0 for n in names)

    try:
        h.wait_for(settled, 10, what="tunnels to close")
    except h.TestFailure as e:
        h.log("tunnels still open:", e)
    total_streams, total_links = 0, 0
    for n in names:
        o = listener(web_sc, "outbound:127.0.0.1:%d" % out_ports[n])
        i = listener(api_sc, "inbound:127.0.0.1:%d" % in_ports[n])
        h.log("%s: outbound accepted %d, handshakes %d, pool %s; inbound pool %s" % (
            n, o["accepted"], o["handshakes"], o["pool"], i["pool"]))
        p = o["pool"]
        total_streams += p["streams_total"]
        total_links += p["connections"]
        want = streams.get(n, made[n])
        ok(o["accepted"] == made[n] and p["streams_total"] == want,
           "stats: %s: %d app connections rode %d streams (accepted %r, "
           "pool.streams_total %r)" % (n, made[n], want, o["accepted"], p["streams_total"]))
        ok(1 <= p["connections"] <= 2, "stats: %s: outbound pool.connections in 1..2 (one "
           "link per worker; got %r)" % (n, p["connections"]))
        ok(o["handshakes"] <= 2, "stats: %s: outbound handshakes <= 2 (got %r)"
           % (n, o["handshakes"]))
        ok(p["fallback_direct"] == 0 and p["streams_refused"] == 0,
           "stats: %s: no fallback_direct, no refused stream (%r, %r)" % (
               n, p["fallback_direct"], p["streams_refused"]))
        ok(1 <= i["pool"]["connections"] <= 2, "stats: %s: inbound pool.connections in 1..2 "
           "(got %r)" % (n, i["pool"]["connections"]))
    want = sum(streams.get(n, made[n]) for n in names)
    ok(total_links <= 2 * len(names) and total_streams == want,
       "stats: %d app connections rode %d streams on %d links" % (
           sum(made.values()), total_streams, total_links))
    routes = {a.get("route") for a in web_sc.access_logs()}
    ok(routes == {"pool", "http"}, "stats: outbound access lines route pool (tunnels) or "
       "http (requests as streams) (%s)" % sorted(map(str, routes)))
    # Both sidecars end cleanly on SIGTERM, with nothing from the sanitizers (an ASan
    # build reports leaks and undefined behaviour on stderr and exits non-zero).
    for sc in (web_sc, api_sc):
        ok(sc.alive(), "%s still running after the cases" % sc.name)
        clean, reports = sc.stop_clean()
        ok(clean, "%s exited 0 on SIGTERM without sanitizer reports (rc %r): %s"
           % (sc.name, sc.p.returncode, reports[:5]))
    ok.done()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "grpc-server":
        grpc_server(int(sys.argv[2]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "grpc-client":
        grpc_client(int(sys.argv[2]), int(sys.argv[3]))
    else:
        h.main(test, "app-protocols")
