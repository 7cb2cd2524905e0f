"""Shared machinery for Tether's integration tests (Python 3 standard library only).

Each test script builds an Env (a context manager): a temporary directory, certificates
(made with tt-certgen from $TT_CERTGEN when it is usable, else with the openssl CLI), free
loopback ports, plaintext backends running in threads, and sidecar processes
($TT_SIDECAR) whose stderr goes to a file. Everything the Env starts is stopped by pid and
the directory removed on exit, on an exception, and from atexit; every wait is bounded.

Exit codes follow meson: 0 pass, 1 fail, 77 skip (the sidecar binary is missing).
"""

import atexit
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SKIP = 77
TD = "spiffe://cluster.local"


def spiffe(ns, sa):
    return "%s/ns/%s/sa/%s" % (TD, ns, sa)


class TestFailure(Exception):
    pass


def check(cond, msg):
    """Fails the test with msg when cond is false."""
    if not cond:
        raise TestFailure(msg)


def log(*args):
    print("[%s]" % time.strftime("%H:%M:%S"), *args, flush=True)


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    """Polls pred() until it returns a true value; returns it or raises TestFailure."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the predicate may race with start-up
            last_exc = e
        if time.monotonic() > deadline:
            raise TestFailure("timed out after %.1fs waiting for %s%s" % (
                timeout, what, (" (last error: %r)" % last_exc) if last_exc else ""))
        time.sleep(interval)


def sidecar_path():
    p = os.environ.get("TT_SIDECAR", "")
    if not p or not os.access(p, os.X_OK):
        return None
    return p


def sidecar_under_asan():
    """Whether the sidecar binary carries AddressSanitizer (linked libasan, or the runtime
    built in: its __asan_init symbol): loads are scaled down under it."""
    path = sidecar_path()
    if path is None:
        return False
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    if "libasan" in out:
        return True
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()


def require_sidecar():
    p = sidecar_path()
    if p is None:
        print("SKIP: TT_SIDECAR=%r is not an executable" % os.environ.get("TT_SIDECAR"))
        sys.exit(SKIP)
    return p


_ports_given = set()


# free_port() hands out ports below the kernel's ephemeral range (32768-60999 here): a port
# bind(0) returned could be taken by some outgoing connection's ephemeral port before the
# test binds it (seen: a sidecar's --admin 0.0.0.0:PORT refused with EADDRINUSE).
_FREE_PORT_RANGE = (20000, 28000)


def free_port():
    """A port that was free a moment ago on 127.0.0.1 and on the wildcard address, outside
    the ephemeral range (so no outgoing connection can take it meanwhile), and never handed
    out before by this process."""
    for _ in range(400):
        port = random.randrange(*_FREE_PORT_RANGE)
        if port in _ports_given:
            continue
        free = True
        for addr in ("127.0.0.1", "0.0.0.0"):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind((addr, port))
            except OSError:
                free = False
            finally:
                s.close()
            if not free:
                break
        if free:
            _ports_given.add(port)
            return port
    raise TestFailure("no fresh free port after 400 tries")


def run(cmd, timeout=30, check_rc=True, **kw):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       **kw)
    if check_rc and r.returncode != 0:
        raise TestFailure("%s failed (%d): %s" % (" ".join(map(str, cmd)), r.returncode,
                                                   r.stderr.decode(errors="replace")[-2000:]))
    return r


def norm_serial(s):
    """Serial as DESIGN.md writes it on output: upper-case hex, no colons, no leading 0s."""
    s = (s or "").replace(":", "").strip().upper().lstrip("0")
    return s or "0"


# ---------------------------------------------------------------------------------------
# Certificates


class Cert:
    def __init__(self, name, crt, key, ids=(), ca=None, chain=None):
        self.name = name
        self.crt = crt        # PEM: leaf (plus intermediates when chain is set)
        self.key = key
        self.ids = list(ids)
        self.ca = ca          # the issuing Cert (None for a root)
        self.chain = chain    # path of leaf+chain PEM (same as crt when no intermediates)

    @property
    def id(self):
        return self.ids[0] if self.ids else None

    def serial(self):
        out = run(["openssl", "x509", "-in", self.crt, "-noout", "-serial"]).stdout.decode()
        return norm_serial(out.strip().split("=", 1)[1])

    def pem_bundle(self, path):
        """Writes cert(+chain) and key into one PEM file (HAProxy's crt format)."""
        with open(path, "w") as out:
            for p in (self.crt, self.key):
                with open(p) as f:
                    out.write(f.read())
        return path


def _asn1_time(offset_secs):
    t = time.gmtime(time.time() + offset_secs)
    return time.strftime("%Y%m%d%H%M%SZ", t)


class CertFactory:
    """Makes CAs and SPIFFE leaf certificates (ECDSA P-256) in dir.

    Uses the openssl CLI; tt-certgen ($TT_CERTGEN) is used for plain CAs and leaves when
    it is present and TT_CERTS=openssl is not set, falling back to openssl on any error.
    """

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.certgen = os.environ.get("TT_CERTGEN", "")
        if os.environ.get("TT_CERTS") == "openssl" or not (
                self.certgen and os.access(self.certgen, os.X_OK)):
            self.certgen = None

    def _p(self, name, ext):
        return os.path.join(self.dir, name + "." + ext)

    def ca(self, name, parent=None, days=3650, cn=None):
        """A root CA, or an intermediate signed by parent. cn: the subject's CN (roots from
        tt-certgen are all "Tether test CA" otherwise; openssl ones are named by name)."""
        crt, key = self._p(name, "crt"), self._p(name, "key")
        if parent is None and self.certgen:
            r = run([self.certgen, "ca", "--out", os.path.join(self.dir, name)] +
                    (["--cn", cn] if cn else []), check_rc=False)
            if r.returncode == 0 and os.path.exists(crt) and os.path.exists(key):
                return Cert(name, crt, key)
            log("tt-certgen ca failed (%d), using openssl: %s" % (
                r.returncode, r.stderr.decode(errors="replace").strip()[:300]))
        ext = ("basicConstraints=critical,CA:TRUE\n"
               "keyUsage=critical,keyCertSign,cRLSign\n"
               "subjectKeyIdentifier=hash\n")
        if parent is None:
            run(["openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", crt,
                 "-days", str(days), "-subj", "/O=tether-test/CN=" + (cn or name), "-sha256",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            return Cert(name, crt, key)
        self._sign(name, parent, [], ext, 0, days * 86400, is_ca=True)
        # An intermediate's "chain" for leaves: the intermediate itself.
        return Cert(name, crt, key, ca=parent)

    # Key types of leaves: tt-certgen's --key-type and the openssl req -newkey arguments.
    KEY_TYPES = {
        "p256": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "p384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "rsa2048": ["-newkey", "rsa:2048"],
        "ed25519": ["-newkey", "ed25519"],
    }

    def leaf(self, name, ca, ids, not_before=-3600, not_after=30 * 86400, uris=None,
             dns=None, key_type="p256"):
        """A leaf signed by ca with URI SANs ids (list; [] for none). not_before/not_after
        are offsets in seconds from now. When ca is an intermediate, the .crt file holds
        leaf + intermediate. uris: extra non-SPIFFE URI SANs. key_type: one of KEY_TYPES."""
        crt, key = self._p(name, "crt"), self._p(name, "key")
        ids = list(ids)
        check(key_type in self.KEY_TYPES, "unknown key type %r" % key_type)
        simple = (self.certgen and ca.ca is None and 1 <= len(ids) and not uris and not dns)
        if simple:
            cmd = [self.certgen, "leaf", "--ca", os.path.splitext(ca.crt)[0],
                   "--key-type", key_type]
            for i in ids:
                cmd += ["--spiffe-id", i]
            cmd += ["--not-before", str(not_before), "--not-after", str(not_after),
                    "--out", os.path.join(self.dir, name)]
            r = run(cmd, check_rc=False)
            if r.returncode == 0 and os.path.exists(crt) and os.path.exists(key):
                return Cert(name, crt, key, ids, ca=ca, chain=crt)
            log("tt-certgen leaf failed (%d), using openssl: %s" % (
                r.returncode, r.stderr.decode(errors="replace").strip()[:300]))
        sans = ["URI:" + i for i in ids] + ["URI:" + u for u in (uris or [])] + [
            "DNS:" + d for d in (dns or [])]
        ext = ("basicConstraints=critical,CA:FALSE\n"
               "keyUsage=critical,digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth,clientAuth\n")
        if sans:
            ext += "subjectAltName=" + ",".join(sans) + "\n"
        self._sign(name, ca, ids, ext, not_before, not_after, is_ca=False,
                   newkey=self.KEY_TYPES[key_type])
        if ca.ca is not None:  # intermediate: append it to the leaf
            with open(crt, "a") as out, open(ca.crt) as f:
                out.write(f.read())
        return Cert(name, crt, key, ids, ca=ca, chain=crt)

    def _sign(self, name, ca, ids, ext, not_before, not_after, is_ca, newkey=None):
        crt, key = self._p(name, "crt"), self._p(name, "key")
        work = tempfile.mkdtemp(prefix="ca-", dir=self.dir)
        csr = os.path.join(work, "req.csr")
        run(["openssl", "req", "-new"] + (newkey or self.KEY_TYPES["p256"]) +
            ["-nodes", "-keyout", key, "-out", csr, "-subj", "/O=tether-test/CN=" + name])
        open(os.path.join(work, "index.txt"), "w").close()
        cfg = os.path.join(work, "ca.cnf")
        with open(cfg, "w") as f:
            f.write("[ca]\ndefault_ca=tt\n[tt]\n"
                    "database=%s/index.txt\nnew_certs_dir=%s\nrand_serial=yes\n"
                    "default_md=sha256\npolicy=pol\nunique_subject=no\n"
                    "copy_extensions=none\n[pol]\ncommonName=supplied\n"
                    "organizationName=optional\n[ext]\n%s" % (work, work, ext))
        ca_crt = ca.crt
        if ca.ca is not None:
            # The issuer's own certificate only (its .crt holds just itself).
            pass
        run(["openssl", "ca", "-batch", "-notext", "-config", cfg, "-cert", ca_crt, "-keyfile",
             ca.key, "-in", csr, "-out", crt, "-extensions", "ext", "-startdate",
             _asn1_time(not_before), "-enddate", _asn1_time(not_after)])
        shutil.rmtree(work, ignore_errors=True)


    def crl(self, name, ca, serials=(), this_update=-3600, next_update=7 * 86400, der=False):
        """A CRL signed by ca (a Cert with its key) listing serials (hex strings), made by
        the openssl CLI; this_update/next_update are offsets in seconds from now. Writes
        name.crl (PEM, or DER when der) and returns its path."""
        out = self._p(name, "crl")
        work = tempfile.mkdtemp(prefix="crl-", dir=self.dir)
        # openssl ca reads the revoked serials from its database (index.txt).
        with open(os.path.join(work, "index.txt"), "w") as f:
            for s in serials:
                hexs = norm_serial(s)
                hexs = "0" * (len(hexs) % 2) + hexs  # openssl wants whole bytes
                f.write("R\t%s\t%s\t%s\tunknown\t/CN=revoked-%s\n" % (
                    _asn1_time(86400)[2:], _asn1_time(-7200)[2:], hexs, hexs))
        cfg = os.path.join(work, "ca.cnf")
        with open(cfg, "w") as f:
            f.write("[ca]\ndefault_ca=tt\n[tt]\ndatabase=%s/index.txt\n"
                    "default_md=sha256\ncrlnumber=%s/crlnumber\n" % (work, work))
        with open(os.path.join(work, "crlnumber"), "w") as f:
            f.write("01\n")
        pem = os.path.join(work, "crl.pem")
        run(["openssl", "ca", "-gencrl", "-batch", "-config", cfg, "-cert", ca.crt,
             "-keyfile", ca.key, "-out", pem,
             "-crl_lastupdate", _asn1_time(this_update),
             "-crl_nextupdate", _asn1_time(next_update)])
        run(["openssl", "crl", "-in", pem, "-out", out] + (["-outform", "DER"] if der else []))
        shutil.rmtree(work, ignore_errors=True)
        return out


# ---------------------------------------------------------------------------------------
# Backends (threads)


class EchoServer:
    """TCP backend. mode "echo": echoes everything; after the client's EOF it sends
    b"\\nEOF-SHA256:" + sha256(received) + b"\\n" and closes (proves half-close both
    ways). mode "banner": sends banner on accept, then echoes (a leak detector). mode
    "source:N": sends N pseudo-random bytes (seeded) then closes. mode "slowsink:S": a small
    receive window, nothing read for S seconds, then reads of 8 KiB with a pause after each
    (the relay in front stays backed up until the end), to EOF; answers b"RECEIVED:" +
    count + b":" + sha256 + b"\n"."""

    def __init__(self, mode="echo", banner=b"BANNER-FROM-BACKEND\n"):
        self.mode = mode
        self.banner = banner
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mode.startswith("slowsink:"):
            # A small receive window (inherited by accepted sockets) so the relay in front
            # backs up at once instead of the kernel absorbing megabytes.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.eofs = 0
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def _accept_loop(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(120)
        try:
            if self.mode.startswith("source:"):
                n = int(self.mode.split(":")[1])
                c.sendall(pattern_bytes(n, seed=7))
                c.shutdown(socket.SHUT_WR)
                while c.recv(65536):
                    pass
                return
            if self.mode.startswith("slowsink:"):
                time.sleep(float(self.mode.split(":")[1]))
                h, n = hashlib.sha256(), 0
                while True:
                    d = c.recv(8192)
                    if not d:
                        break
                    h.update(d)
                    n += len(d)
                    time.sleep(0.0005)
                c.sendall(b"RECEIVED:%d:%s\n" % (n, h.hexdigest().encode()))
                c.shutdown(socket.SHUT_WR)
                return
            if self.mode == "banner":
                c.sendall(self.banner)
            h = hashlib.sha256()
            while True:
                d = c.recv(65536)
                if not d:
                    break
                h.update(d)
                c.sendall(d)
            with self.lock:
                self.eofs += 1
            c.sendall(b"\nEOF-SHA256:" + h.hexdigest().encode() + b"\n")
            c.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass


def pattern_bytes(n, seed=1):
    """n deterministic pseudo-random bytes (cheap: repeated sha256 blocks)."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    i = 0
    while len(out) < n:
        block = hashlib.sha256(block + i.to_bytes(4, "little")).digest()
        out += block * 64  # 2 KiB per step
        i += 1
    return bytes(out[:n])


class HttpBackend:
    """A tiny HTTP/1.1 server: GET / -> 200 "hello from backend\\n"; GET /bytes/N -> N
    bytes; records the number of requests."""

    def __init__(self, body=b"hello from backend\n"):
        outer = self
        self.requests = 0
        self.lock = threading.Lock()

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.requests += 1
                b = body
                m = re.match(r"^/bytes/(\d+)$", self.path)
                if m:
                    b = pattern_bytes(int(m.group(1)))
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={
            "poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()


def read_request_body(handler):
    """The body of the request a BaseHTTPRequestHandler is serving: de-chunked (trailers
    skipped) when it came chunked, else its Content-Length bytes. Returns (body, chunked)."""
    if "chunked" not in handler.headers.get("Transfer-Encoding", "").lower():
        return handler.rfile.read(int(handler.headers.get("Content-Length", "0"))), False
    body = bytearray()
    while True:
        size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(body), True
        body += handler.rfile.read(size)
        handler.rfile.readline()


class _HttpServer(ThreadingHTTPServer):
    """Listens with a backlog for bursts of connections (socketserver's default is 5: a
    burst past it waits a second for the client's SYN to be sent again)."""
    request_queue_size = 256


class ThreadedHttp:
    """A ThreadingHTTPServer on 127.0.0.1 serving handler_cls in a thread: .addr, .port,
    .stop()."""

    def __init__(self, handler_cls):
        self.server = _HttpServer(("127.0.0.1", 0), handler_cls)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class TlsServer:
    """A TLS server (Python ssl) with a given certificate: for wrong-identity tests and
    fake peers. Requires a client certificate when ca is given. Sends `greeting` after the
    handshake, echoes, and keeps in `received` every byte a client sent after its
    handshake. Listens on 127.0.0.1:port (0: any free port)."""

    def __init__(self, cert, ca=None, greeting=b"HELLO-FROM-TLS-SERVER\n", port=0):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert.crt, cert.key)
        if ca:
            self.ctx.load_verify_locations(ca.crt)
            self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.greeting = greeting
        self.handshakes = 0
        self.received = b""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
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
        c.settimeout(10)
        try:
            s = self.ctx.wrap_socket(c, server_side=True)
            self.handshakes += 1
            s.sendall(self.greeting)
            while True:
                d = s.recv(65536)
                if not d:
                    break
                self.received += d
                s.sendall(d)
        except (OSError, ssl.SSLError):
            pass
        finally:
            c.close()

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() so the port is free
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Client helpers


def connect(port, timeout=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


class RawServer:
    """A raw TCP server on 127.0.0.1 (.addr): each connection is served by the subclass's
    _serve(sock, n) in a thread of its own, n counting the connections from 1."""

    def __init__(self, backlog=16):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        n = 0
        while True:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self._serve, args=(s, n), daemon=True).start()

    def stop(self):
        self.sock.close()


def read_all(sock, limit=1 << 30):
    chunks = []
    n = 0
    while n < limit:
        d = sock.recv(1 << 16)
        if not d:
            break
        chunks.append(d)
        n += len(d)
    return b"".join(chunks)


def read_exact(sock, n):
    """Reads n bytes (fewer when the connection ends first)."""
    got = bytearray()
    while len(got) < n:
        d = sock.recv(n - len(got))
        if not d:
            break
        got += d
    return bytes(got)


def echo_roundtrip(port, payload, timeout=60):
    """Sends payload through port to an "echo" EchoServer while reading, then shuts down
    the write side; returns (echoed, trailer_digest or None). Raises on errors."""
    s = connect(port, timeout)
    err = []

    def sender():
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        data = read_all(s)
    finally:
        t.join(timeout)
        s.close()
    if err:
        raise err[0]
    marker = b"\nEOF-SHA256:"
    i = data.rfind(marker)
    if i < 0:
        return data, None
    return data[:i], data[i + len(marker):].strip().decode(errors="replace")


def echo_exact(port, payload, timeout=30, expect_prefix=b""):
    """Sends payload to an echo backend and reads back exactly len(expect_prefix) +
    len(payload) bytes without half-closing (for peers whose half-close handling is
    not under test). Returns what was read (shorter when the connection ended; empty when
    it was reset before connect() returned, as a sidecar that refuses at once may)."""
    try:
        s = connect(port, timeout)
    except ConnectionResetError:
        return b""
    want = len(expect_prefix) + len(payload)
    got = bytearray()
    err = []

    def sender():
        try:
            s.sendall(payload)
        except OSError as e:
            err.append(e)

    t = threading.Thread(target=sender, daemon=True)
    t.start()
    try:
        while len(got) < want:
            d = s.recv(min(1 << 16, want - len(got)))
            if not d:
                break
            got += d
    except OSError as e:
        err.append(e)
    finally:
        t.join(timeout)
        s.close()
    return bytes(got)


def http_get(port, path="/", timeout=10, host="127.0.0.1", headers=None):
    """GET http://host:port/path -> (status, body bytes). Status 0 for a connection error."""
    req = urllib.request.Request("http://%s:%d%s" % (host, port, path), headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(port, path, timeout=10):
    """POST with no body (and so no Content-Type: the admin endpoint refuses form types)."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tls_client_ctx(cert=None, ca=None):
    """A client context for talking to an inbound listener directly. Mesh certificates
    carry only URI SANs, so hostname checks are off; the server chain is verified when
    ca is given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if ca:
        ctx.load_verify_locations(ca.crt)
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert.crt, cert.key)
    return ctx


def tls_attempt(port, cert=None, ca=None, send=b"ping\n", timeout=5):
    """Connects with TLS (optionally a client cert), sends `send`, and reads until EOF,
    error or timeout. Returns (handshake_ok, received bytes, error string)."""
    raw = connect(port, timeout)
    raw.settimeout(timeout)
    got = b""
    try:
        s = tls_client_ctx(cert, ca).wrap_socket(raw)
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return False, b"", repr(e)
    try:
        if send:
            s.sendall(send)
        while True:
            d = s.recv(65536)
            if not d:
                return True, got, ""
            got += d
    except (ssl.SSLError, OSError) as e:
        return True, got, repr(e)
    finally:
        s.close()


# ---------------------------------------------------------------------------------------
# Processes


class Proc:
    """A process started by the Env: stdout and stderr in files; stopped by pid.

    nofile=(soft, hard) starts it with that RLIMIT_NOFILE (through prlimit(1), which
    execs the command: the pid is the process's own)."""

    def __init__(self, env, name, argv, cwd=None, stdin=subprocess.DEVNULL, nofile=None):
        self.env = env
        self.name = name
        self.argv = argv
        self.out_path = os.path.join(env.dir, name + ".stdout")
        self.err_path = os.path.join(env.dir, name + ".stderr")
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        if nofile is not None:
            argv = ["prlimit", "--nofile=%d:%d" % tuple(nofile), "--"] + list(argv)
        self.p = subprocess.Popen(argv, stdout=self._out, stderr=self._err, stdin=stdin,
                                  cwd=cwd or env.dir, start_new_session=True)
        self.pid = self.p.pid
        env._procs.append(self)

    def alive(self):
        return self.p.poll() is None

    def wait(self, timeout):
        """Exit code, or None if still running after timeout."""
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout=5):
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(timeout) is None:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.wait(5)
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass

    def stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop_clean(self, timeout=20):
        """Stops the process with SIGTERM; returns (exited 0, the sanitizer report lines of
        its stderr): an ASan/UBSan build reports leaks and undefined behaviour there and
        exits non-zero."""
        self.stop(timeout=timeout)
        reports = [ln for ln in self.stderr().splitlines()
                   if "Sanitizer" in ln or "runtime error:" in ln]
        return self.p.returncode == 0 and not reports, reports

    def fds(self):
        """{fd number: what it points to} of the running process."""
        d = "/proc/%d/fd" % self.pid
        out = {}
        for n in os.listdir(d):
            try:
                out[int(n)] = os.readlink(os.path.join(d, n))
            except OSError:
                pass  # closed meanwhile
        return out

    def cpu_seconds(self):
        """User + system CPU time the process has used so far."""
        with open("/proc/%d/stat" % self.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sidecar(Proc):
    def __init__(self, env, name, argv, admin_port, nofile=None):
        super().__init__(env, name, argv, nofile=nofile)
        self.admin_port = admin_port

    def get(self, path, timeout=5):
        return http_get(self.admin_port, path, timeout)

    def stats(self):
        st, body = self.get("/stats")
        check(st == 200, "%s: /stats returned %d: %r" % (self.name, st, body[:200]))
        return json.loads(body)

    def listener(self, name_prefix, stats=None):
        """The /stats entry of the listener whose name starts with name_prefix
        ("inbound:" or "outbound:127.0.0.1:1234")."""
        st = stats or self.stats()
        for li in st.get("listeners", []):
            if li.get("name", "").startswith(name_prefix):
                return li
        raise TestFailure("%s: no listener %r in /stats: %s" % (
            self.name, name_prefix, [li.get("name") for li in st.get("listeners", [])]))

    def wait_ready(self, timeout=15):
        def ready():
            if not self.alive():
                raise TestFailure("%s exited with %s before ready; stderr:\n%s" % (
                    self.name, self.p.returncode, self.stderr()[-3000:]))
            try:
                st, _ = self.get("/ready", timeout=1)
            except OSError:
                return False
            return st == 200
        try:
            wait_for(ready, timeout, 0.05, "%s /ready" % self.name)
        except TestFailure:
            if self.alive():
                raise TestFailure("%s not ready after %ss; stderr:\n%s" % (
                    self.name, timeout, self.stderr()[-3000:]))
            raise

    def logs(self):
        """The JSON lines of stderr, parsed (other lines are skipped)."""
        out = []
        for line in self.stderr().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out

    def access_logs(self):
        return [r for r in self.logs() if r.get("event") == "access"
                or r.get("msg") == "access"]

    def events(self, name):
        return [r for r in self.logs() if r.get("event") == name]


class Traffic:
    """Sequential requests in a thread, each on a new connection: connect to port, send
    a payload, half-close, read the echo and the EchoServer's trailer, check both. Counts
    ok and failed requests (with the time and the error of each failure)."""

    def __init__(self, port, size=2048, timeout=10, pause=0.0):
        self.port = port
        self.size = size
        self.timeout = timeout
        self.pause = pause
        self.ok = 0
        self.failures = []  # (monotonic time, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        i = 0
        while not self._stop.is_set():
            i += 1
            payload = pattern_bytes(self.size, seed=i)
            try:
                echoed, digest = echo_roundtrip(self.port, payload, self.timeout)
                if echoed != payload or digest != hashlib.sha256(payload).hexdigest():
                    raise OSError("bad echo: %d bytes back, trailer %r" % (len(echoed), digest))
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - any error is a failed request
                self.failures.append((time.monotonic(), repr(e)))
            if self.pause:
                self._stop.wait(self.pause)

    def stop(self):
        self._stop.set()
        self._thread.join(self.timeout + 5)
        return self


# ---------------------------------------------------------------------------------------
# The control plane: tether-control ($TT_CONTROL) and tetherctl ($TT_TETHERCTL)

CONTROL_SA = "ns/tether-system/sa/tether-control"


def control_paths():
    """(tether-control, tetherctl) from the environment, or None when either is missing."""
    c, t = os.environ.get("TT_CONTROL", ""), os.environ.get("TT_TETHERCTL", "")
    if not (c and os.access(c, os.X_OK) and t and os.access(t, os.X_OK)):
        return None
    return c, t


def require_control():
    """Exits with SKIP when tether-control, tetherctl or the sidecar is missing."""
    require_sidecar()
    if control_paths() is None:
        print("SKIP: TT_CONTROL=%r / TT_TETHERCTL=%r are not executables" % (
            os.environ.get("TT_CONTROL"), os.environ.get("TT_TETHERCTL")))
        sys.exit(SKIP)


def json_lines(text):
    """The JSON objects among the lines of text (other lines are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


class Control(Proc):
    """A tether-control process with its state directory and its two ports. restart()
    starts it again with the same arguments (same state, same ports)."""

    def __init__(self, env, name, argv, state_dir, sidecar_port, api_port, nofile=None):
        super().__init__(env, name, argv, nofile=nofile)
        self.state_dir = state_dir
        self.sidecar_port = sidecar_port
        self.api_port = api_port
        self.starts = 1

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.sidecar_port

    @property
    def api(self):
        return "http://127.0.0.1:%d" % self.api_port

    def wait_up(self, timeout=15):
        """Waits until the operator API answers and the sidecar port accepts."""
        def up():
            if not self.alive():
                raise TestFailure("%s exited with %s; stderr:\n%s" % (
                    self.name, self.p.returncode, self.stderr()[-3000:]))
            st, _ = http_get(self.api_port, "/stats", timeout=1, headers=self.auth())
            if st != 200:
                return False
            connect(self.sidecar_port, 1).close()
            return True
        wait_for(up, timeout, 0.05, "%s to listen" % self.name)

    def restart(self, wait=True):
        """Starts the same command line again (the old process must be gone)."""
        check(not self.alive(), "%s: restart while still running" % self.name)
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass
        self.starts += 1
        # Keep earlier runs' output: append to the same files.
        self._out = open(self.out_path, "ab")
        self._err = open(self.err_path, "ab")
        self.p = subprocess.Popen(self.argv, stdout=self._out, stderr=self._err,
                                  stdin=subprocess.DEVNULL, cwd=self.env.dir,
                                  start_new_session=True)
        self.pid = self.p.pid
        log("restarted %s pid %d" % (self.name, self.pid))
        if wait:
            self.wait_up()

    def kill(self):
        """SIGKILL, then reaps it."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        check(self.wait(5) is not None, "%s did not die on SIGKILL" % self.name)

    def operator_token(self):
        """The loopback API's credential (<state-dir>/operator.token), or None."""
        try:
            with open(os.path.join(self.state_dir, "operator.token")) as f:
                return f.read().strip()
        except OSError:
            return None

    def auth(self):
        """Headers that carry the operator credential, for raw HTTP to the API."""
        t = self.operator_token()
        return {"Authorization": "Bearer " + t} if t else {}

    def ctl(self, *args, check_rc=True, timeout=15, as_json=False, user=None):
        """Runs tetherctl --api <this control> --state-dir <its state> [--json] ARGS (as
        `user` with runuser when given); returns the CompletedProcess (stdout/stderr
        decoded), or the parsed JSON stdout when as_json."""
        argv = [self.env.tetherctl_bin, "--api", self.api, "--state-dir", self.state_dir]
        argv += (["--json"] if as_json else []) + [str(a) for a in args]
        if user is not None:
            argv = ["runuser", "-u", user, "--"] + argv
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout)
        r.stdout = r.stdout.decode(errors="replace")
        r.stderr = r.stderr.decode(errors="replace")
        if check_rc and r.returncode != 0:
            raise TestFailure("tetherctl %s failed (%d): %s" % (
                " ".join(map(str, args)), r.returncode, r.stderr[-2000:]))
        if as_json:
            return json.loads(r.stdout)
        return r

    def token(self, spiffe_id, name=None, ttl=None, uses=None):
        """tetherctl token create; writes the token into a file and returns its path."""
        args = ["token", "create", "--spiffe-id", spiffe_id]
        if ttl:
            args += ["--ttl", ttl]
        if uses:
            args += ["--uses", str(uses)]
        out = self.ctl(*args).stdout
        lines = out.splitlines()
        check(len(lines) == 1 and lines[0].strip() and " " not in lines[0].strip(),
              "token create printed %r, not one token alone on one line" % out)
        name = name or "token-%s-%d" % (spiffe_id.rsplit("/", 1)[-1], int(time.monotonic()
                                                                         * 1e6))
        return self.env.write(name + ".token", out, mode=0o600)

    def bundle(self, name="control-bundle.pem"):
        """tetherctl bundle get, into a file; returns its path."""
        out = self.ctl("bundle", "get").stdout
        check("BEGIN CERTIFICATE" in out, "bundle get printed no certificate: %r" % out[:200])
        return self.env.write(name, out)

    def set_policy(self, doc, name="cp-policy.json"):
        path = self.env.write(name, json.dumps(doc, indent=1))
        return self.ctl("policy", "set", path)

    def stats(self):
        st, body = http_get(self.api_port, "/stats", timeout=5, headers=self.auth())
        check(st == 200, "%s: /stats returned %d: %r" % (self.name, st, body[:200]))
        return json.loads(body)

    def sidecars(self):
        """tetherctl --json sidecars -> list of entries."""
        doc = self.ctl("sidecars", as_json=True)
        return doc.get("sidecars", doc) if isinstance(doc, dict) else doc

    def logs(self):
        return json_lines(self.stderr())

    def events(self, name):
        return [r for r in self.logs() if r.get("event") == name]


# Debian's python3-grpcio and python3-grpc-tools (DEPS.md) live with the system python,
# which is not necessarily the one running the tests.
DEBIAN_PYTHON = "/usr/bin/python3"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def grpc_stubs(env):
    """Python gRPC stubs generated from proto/tether/v1/tether.proto into the Env's
    directory; returns that directory (for DEBIAN_PYTHON's sys.path). Exits with SKIP when
    DEBIAN_PYTHON cannot import grpc and grpc_tools."""
    r = subprocess.run([DEBIAN_PYTHON, "-c", "import grpc, grpc_tools.protoc"],
                       capture_output=True)
    if r.returncode != 0:
        print("SKIP: %s cannot import grpc and grpc_tools (apt-get install python3-grpcio "
              "python3-grpc-tools; deploy/install-deps.sh does)" % DEBIAN_PYTHON)
        sys.exit(SKIP)
    stubs = env.path("stubs")
    os.makedirs(stubs)
    proto = os.path.join(REPO_ROOT, "proto")
    run([DEBIAN_PYTHON, "-m", "grpc_tools.protoc", "-I", proto, "--python_out", stubs,
         "--grpc_python_out", stubs, os.path.join(proto, "tether", "v1", "tether.proto")])
    return stubs


class Env:
    def __init__(self, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="tether-%s-" % name)
        self.certs = CertFactory(os.path.join(self.dir, "certs"))
        self._procs = []
        self._servers = []
        self._closed = False
        self.sidecar_bin = sidecar_path()
        cp = control_paths()
        self.control_bin, self.tetherctl_bin = cp if cp else (None, None)
        atexit.register(self.close)

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is not None and os.environ.get("TT_KEEP_LOGS"):
            log("keeping", self.dir)
        self.close(keep=bool(et is not None and os.environ.get("TT_KEEP_LOGS")))
        return False

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def write(self, name, content, mode=0o644):
        p = self.path(name)
        tmp = p + ".tmp"
        with open(tmp, "w" if isinstance(content, str) else "wb") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, p)
        return p

    def policy(self, name, doc):
        return self.write(name, json.dumps(doc, indent=1))

    def echo(self, mode="echo"):
        s = EchoServer(mode)
        self._servers.append(s)
        return s

    def http(self, body=b"hello from backend\n"):
        s = HttpBackend(body)
        self._servers.append(s)
        return s

    def tls_server(self, cert, ca=None):
        s = TlsServer(cert, ca)
        self._servers.append(s)
        return s

    def bundle(self, name, *cas):
        """A trust-bundle file with the given roots."""
        data = ""
        for c in cas:
            with open(c.crt) as f:
                data += f.read()
        return self.write(name, data)

    def sidecar(self, name, cert, bundle, inbound=(), outbound=(), policy=None, extra=(),
                admin_port=None, wait=True, workers=2, log_level="info", key=None,
                nofile=None):
        """Starts tether-sidecar. inbound: [(listen_port, forward_addr)]; outbound:
        [(listen_port, upstream_addr, spiffe_id)]. bundle: a path or a root Cert.
        nofile: (soft, hard) RLIMIT_NOFILE to start it with."""
        if self.sidecar_bin is None:
            raise TestFailure("TT_SIDECAR is not set")
        admin_port = admin_port or free_port()
        if isinstance(bundle, Cert):
            bundle = bundle.crt
        argv = [self.sidecar_bin, "--identity-cert", cert.crt if isinstance(cert, Cert)
                else cert, "--identity-key", key or cert.key, "--trust-bundle", bundle,
                "--admin", "127.0.0.1:%d" % admin_port, "--workers", str(workers),
                "--log-level", log_level]
        for lp, fwd in inbound:
            argv += ["--inbound", "127.0.0.1:%d=%s" % (lp, fwd)]
        for lp, up, sid in outbound:
            argv += ["--outbound", "127.0.0.1:%d=%s@%s" % (lp, up, sid)]
        if policy:
            argv += ["--policy", policy]
        argv += list(extra)
        sc = Sidecar(self, name, argv, admin_port, nofile=nofile)
        log("started %s pid %d%s: %s" % (name, sc.pid, " (nofile %d:%d)" % tuple(nofile)
                                         if nofile else "", " ".join(argv[1:])))
        if wait:
            sc.wait_ready()
        return sc

    def control(self, name="control", cert_ttl="1h", trust_domain="cluster.local",
                state_dir=None, extra=(), wait=True, nofile=None):
        """Starts tether-control on two free loopback ports with a state directory (a new
        one under the Env's directory unless state_dir is given). nofile: (soft, hard)
        RLIMIT_NOFILE to start it with (not kept by restart())."""
        if self.control_bin is None:
            raise TestFailure("TT_CONTROL / TT_TETHERCTL are not set")
        state_dir = state_dir or self.path(name + "-state")
        sp, ap = free_port(), free_port()
        argv = [self.control_bin, "--state-dir", state_dir, "--trust-domain", trust_domain,
                "--listen-sidecars", "127.0.0.1:%d" % sp, "--listen-api", "127.0.0.1:%d" % ap,
                "--cert-ttl", cert_ttl] + list(extra)
        c = Control(self, name, argv, state_dir, sp, ap, nofile=nofile)
        log("started %s pid %d: %s" % (name, c.pid, " ".join(argv[1:])))
        if wait:
            c.wait_up()
        return c

    def sidecar_pair(self, backend_addr, workers=1, extra=(), prefix=""):
        """client -> web (outbound, port returned) -> mTLS -> api (inbound) -> backend_addr,
        with certificates from a new root and no policy; `extra` flags go to both sidecars,
        `prefix` names this pair's files and processes apart from another pair's. Returns
        (web, api, out_port)."""
        p = prefix + "-" if prefix else ""
        ca = self.certs.ca(p + "pair-ca")
        web_id, api_id = spiffe("shop", "web"), spiffe("shop", "api")
        web = self.certs.leaf(p + "web", ca, [web_id])
        api = self.certs.leaf(p + "api", ca, [api_id])
        in_port, out_port = free_port(), free_port()
        api_sc = self.sidecar(p + "api", api, ca, inbound=[(in_port, backend_addr)],
                              workers=workers, extra=extra)
        web_sc = self.sidecar(p + "web", web, ca, outbound=[(out_port, "127.0.0.1:%d" % in_port,
                                                             api_id)], workers=workers,
                              extra=extra)
        return web_sc, api_sc, out_port

    def cp_sidecar(self, name, control, spiffe_id, token, inbound=(), outbound=(),
                   bundle=None, extra=(), admin_port=None, wait=True, workers=2,
                   log_level="info", jwt=None):
        """Starts tether-sidecar in control mode (--control, --control-bundle, --join-token,
        --spiffe-id). control: a Control (or an "ADDR:PORT" string, then bundle is
        required); token: a token file path (or None with jwt: a service-account token
        file, given as --jwt-file instead); inbound: [(listen_port, forward_addr)];
        outbound: [(listen_port, upstream_addr, spiffe_id)]."""
        if self.sidecar_bin is None:
            raise TestFailure("TT_SIDECAR is not set")
        admin_port = admin_port or free_port()
        addr = control.addr if isinstance(control, Control) else control
        if bundle is None:
            bundle = control.bundle()
        proof = ["--jwt-file", jwt] if jwt else ["--join-token", token]
        argv = [self.sidecar_bin, "--control", addr, "--control-bundle", bundle] + proof + [
                "--spiffe-id", spiffe_id,
                "--admin", "127.0.0.1:%d" % admin_port, "--workers", str(workers),
                "--log-level", log_level]
        for lp, fwd in inbound:
            argv += ["--inbound", "127.0.0.1:%d=%s" % (lp, fwd)]
        for lp, up, sid in outbound:
            argv += ["--outbound", "127.0.0.1:%d=%s@%s" % (lp, up, sid)]
        argv += list(extra)
        sc = Sidecar(self, name, argv, admin_port)
        log("started %s pid %d: %s" % (name, sc.pid, " ".join(argv[1:])))
        if wait:
            sc.wait_ready()
        return sc

    def proc(self, name, argv, **kw):
        p = Proc(self, name, argv, **kw)
        log("started %s pid %d" % (name, p.pid))
        return p

    def close(self, keep=False):
        if self._closed:
            return
        self._closed = True
        for p in reversed(self._procs):
            try:
                p.stop()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for s in self._servers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001
                pass
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def dump_logs(self):
        for p in self._procs:
            try:
                err = p.stderr()
            except OSError:
                continue
            print("----- %s (pid %d, rc %s) stderr, last 15 lines -----" % (
                p.name, p.pid, p.p.returncode))
            print("\n".join([ln for ln in err.splitlines() if "\"access\"" not in ln][-15:]))


def main(test_fn, name, need_sidecar=True):
    """Runs test_fn(env) with an Env; prints PASS/FAIL; exits 0, 1 or 77. A watchdog ends
    the process if the test hangs past TT_TEST_DEADLINE seconds (default 280)."""
    if need_sidecar:
        require_sidecar()
    deadline = float(os.environ.get("TT_TEST_DEADLINE", "280"))
    env = Env(name)

    def watchdog():
        print("FAIL: %s: watchdog fired after %ss" % (name, deadline), flush=True)
        try:
            env.dump_logs()
            env.close()
        finally:
            os._exit(1)

    t = threading.Timer(deadline, watchdog)
    t.daemon = True
    t.start()
    rc = 1
    try:
        test_fn(env)
        print("PASS: %s" % name, flush=True)
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except TestFailure as e:
        print("FAIL: %s: %s" % (name, e), flush=True)
        env.dump_logs()
    except Exception:  # noqa: BLE001 - any error is a failure with its traceback
        print("FAIL: %s: unexpected error" % name, flush=True)
        traceback.print_exc()
        env.dump_logs()
    finally:
        t.cancel()
        env.close(keep=bool(rc != 0 and os.environ.get("TT_KEEP_LOGS")))
    sys.stdout.flush()
    os._exit(rc)


class Checks:
    """Collects soft failures so one run reports every broken case, then fails once."""

    def __init__(self):
        self.failures = []

    def __call__(self, cond, msg):
        if cond:
            log("ok:", msg)
        else:
            log("NOT OK:", msg)
            self.failures.append(msg)
        return cond

    def done(self):
        if self.failures:
            raise TestFailure("%d check(s) failed:\n  - %s" % (
                len(self.failures), "\n  - ".join(self.failures)))


def tt_sign(control, spiffe_id, token=None, cert=None, bad_csr=False, out=None, count=0,
            bundle=None, timeout=30, jwt=None):
    """Calls Identity.Sign with tests/tools/tt-sign ($TT_SIGN): with a token file, a
    service-account token file (jwt=PATH, sent as k8s_sa_token), or with
    cert=(crt, key) for a renewal; bad_csr sends a CSR whose signature does not verify;
    out=PREFIX writes PREFIX.crt/.key. Returns the parsed JSON line ({"code", "details",
    "serial"}, or with count the benchmark summary)."""
    tool = os.environ.get("TT_SIGN", "")
    check(tool and os.access(tool, os.X_OK), "TT_SIGN=%r is not an executable" % tool)
    argv = [tool, "--control", control.addr, "--bundle", bundle or control.bundle(),
            "--spiffe-id", spiffe_id]
    if token:
        argv += ["--token-file", token]
    if jwt:
        argv += ["--jwt-file", jwt]
    if cert:
        argv += ["--cert", cert[0], "--key", cert[1]]
    if bad_csr:
        argv.append("--bad-csr")
    if out:
        argv += ["--out", out]
    if count:
        argv += ["--count", str(count)]
    r = run(argv, timeout=timeout, check_rc=False)
    lines = [ln for ln in r.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
    check(r.returncode in (0, 1) and lines, "tt-sign failed (%d): %s" % (
        r.returncode, r.stderr.decode(errors="replace")[-1000:]))
    return json.loads(lines[-1])
