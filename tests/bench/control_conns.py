#!/usr/bin/python3
"""Control plane RSS per held sidecar connection (issue 7, benchmark figures).

Starts tether-control, gets one workload certificate with Identity.Sign (Debian's
python3-grpcio, stubs generated from proto/), then holds N Watch-like connections: each is
mutual TLS with that certificate, HTTP/2 by hand (preface, SETTINGS, a HEADERS frame for
/tether.v1.Discovery/Watch, a DATA frame with a Hello), and stays open after the first
Snapshot arrived, answering SETTINGS and PING as a client must. Sources are spread over
127.0.1.1-50 (the per-source bound is 256). Prints, for each N, the control plane's RSS
before and with N held, the RSS per connection and its thread count.

Usage: tests/bench/control_conns.py BUILD_DIR [N ...]   (default N: 500 2000)"""

import os
import resource
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "integ"))
import harness as h  # noqa: E402


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def literal(name, value):
    """An HPACK literal header field without indexing, new name, no Huffman (RFC 7541
    §6.2.2); names and values here are shorter than 127 bytes."""
    n, v = name.encode(), value.encode()
    return bytes([0x00, len(n)]) + n + bytes([len(v)]) + v


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def watch_open_bytes():
    headers = b"".join(literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", "/tether.v1.Discovery/Watch"),
        (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers")))
    hello = b"\x12\x05bench"                            # Hello{node: "bench"}
    req = b"\x0a" + bytes([len(hello)]) + hello         # WatchRequest{hello: ...}
    msg = b"\x00" + struct.pack(">I", len(req)) + req   # gRPC length-prefixed message
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") +
            frame(1, 0x4, 1, headers) + frame(0, 0, 1, msg))


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.data_frames = 0

    def on_readable(self):
        """Reads what arrived; answers SETTINGS and PING. False once the server closed."""
        try:
            d = self.sock.recv(65536)
        except ssl.SSLWantReadError:
            return True
        except OSError:
            return False
        if not d:
            return False
        self.buf += d
        while len(self.buf) >= 9:
            length = struct.unpack(">I", b"\x00" + self.buf[:3])[0]
            if len(self.buf) < 9 + length:
                break
            ftype, flags = self.buf[3], self.buf[4]
            payload = self.buf[9:9 + length]
            self.buf = self.buf[9 + length:]
            if ftype == 4 and not flags & 1:
                self.sock.sendall(frame(4, 1, 0, b""))
            elif ftype == 6 and not flags & 1:
                self.sock.sendall(frame(6, 1, 0, payload))
            elif ftype == 0:
                self.data_frames += 1
        return True


def sign(env, cp, stubs):
    """A certificate for spiffe://cluster.local/ns/bench/sa/watcher: (cert, key) files."""
    sid = h.spiffe("bench", "watcher")
    key, csr = env.path("w.key"), env.path("w.csr")
    h.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-out", key])
    h.run(["openssl", "req", "-new", "-key", key, "-subj", "/O=bench", "-addext",
           "subjectAltName=URI:" + sid, "-outform", "DER", "-out", csr])
    with open(cp.token(sid)) as f:
        token = f.read().strip()
    code = """
import sys, grpc
sys.path.insert(0, %r)
from tether.v1 import tether_pb2 as p, tether_pb2_grpc as g
ch = grpc.secure_channel("localhost:%d", grpc.ssl_channel_credentials(open(%r, "rb").read()))
r = g.IdentityStub(ch).Sign(p.SignRequest(csr_der=open(%r, "rb").read(), spiffe_id=%r,
                                          bootstrap_token=%r), timeout=10)
sys.stdout.write(r.cert_chain_pem)
""" % (stubs, cp.sidecar_port, cp.bundle(), csr, sid, token)
    chain = subprocess.run(["/usr/bin/python3", "-c", code], check=True, capture_output=True,
                           text=True).stdout
    return env.write("w.crt", chain), key


def hold(cp, n, ctx, conns, sel):
    """Opens connections until n are held and each has its first Snapshot."""
    opening = watch_open_bytes()
    while len(conns) < n:
        s = socket.socket()
        s.bind(("127.0.1.%d" % (len(conns) % 50 + 1), 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", cp.sidecar_port))
        t = ctx.wrap_socket(s, server_hostname="localhost")
        t.sendall(opening)
        t.setblocking(False)
        c = Conn(t)
        conns.append(c)
        sel.register(t, selectors.EVENT_READ, c)
        pump(sel, 0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(c.data_frames == 0 for c in conns):
        pump(sel, 0.2)
    return sum(1 for c in conns if c.data_frames > 0)


def pump(sel, timeout):
    for key, _ in sel.select(timeout):
        if not key.data.on_readable():
            sel.unregister(key.fileobj)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build-bench"
    counts = [int(a) for a in sys.argv[2:]] or [500, 2000]
    os.environ.setdefault("TT_SIDECAR", os.path.join(build, "sidecar", "tether-sidecar"))
    os.environ.setdefault("TT_CONTROL", os.path.join(build, "control", "tether-control"))
    os.environ.setdefault("TT_TETHERCTL", os.path.join(build, "control", "tetherctl"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    with h.Env("bench-control") as env:
        stubs = env.path("stubs")
        os.makedirs(stubs)
        h.run(["/usr/bin/python3", "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
               "--python_out", stubs, "--grpc_python_out", stubs,
               os.path.join(ROOT, "proto", "tether", "v1", "tether.proto")])
        for n in counts:
            cp = env.control(name="control-%d" % n, extra=["--log-level", "warn"])
            crt, key = sign(env, cp, stubs)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(cp.bundle())
            ctx.load_cert_chain(crt, key)
            ctx.set_alpn_protocols(["h2"])
            time.sleep(0.5)
            before = rss_kb(cp.pid)
            conns, sel = [], selectors.DefaultSelector()
            t0 = time.monotonic()
            got = hold(cp, n, ctx, conns, sel)
            took = time.monotonic() - t0
            pump(sel, 1.0)
            time.sleep(1.0)
            pump(sel, 0.2)
            with_n = rss_kb(cp.pid)
            rows.append((n, got, before, with_n, (with_n - before) / max(n, 1),
                         threads(cp.pid), took))
            for c in conns:
                c.sock.close()
            cp.stop()
    print("control plane: RSS per held Watch connection (mTLS + HTTP/2 + gRPC stream)")
    print("%8s %10s %12s %12s %12s %8s %8s" % ("held", "snapshots", "RSS idle MiB",
                                               "RSS held MiB", "KiB/conn", "threads",
                                               "open s"))
    for n, got, before, with_n, per, thr, took in rows:
        print("%8d %10d %12.1f %12.1f %12.1f %8d %8.1f" % (n, got, before / 1024, with_n / 1024,
                                                           per, thr, took))


if __name__ == "__main__":
    main()
