#!/usr/bin/env python3
"""The access line says what happened (README "Logs").

1. A refused handshake names its reason in the /stats vocabulary and the library's detail,
   not a bare "TLS protocol error": a client of an unknown CA (unknown_ca, with the X.509
   error and depth), a client that speaks no TLS (protocol, with the TLS library's
   reason), a revoked client (revoked, naming the CRL).
2. An outbound connection that the upstream sidecar refuses after our side of a TLS 1.3
   handshake completed (its CRL revokes us; it answers with an alert) is verdict "error"
   with reason and the alert in the detail, counted as a handshake failure; never
   "allow". Its closed_by is "upstream".
3. A connection refused by --max-connections says "connection limit", not "Too many open
   files".
4. closed_by / reset_by: a client that resets (SO_LINGER 0) is closed_by and reset_by
   "client"; an upstream that resets is "upstream"; a policy refusal is reset by the
   "proxy"; a client that ends with a FIN is closed_by "client" and reset_by null.
"""

import os
import socket
import ssl
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class ResettingBackend:
    """Accepts, reads one chunk, then closes with SO_LINGER 0 (an RST)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.recv(100)
            except OSError:
                pass
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    def stop(self):
        self.sock.close()


def new_lines(sc, before):
    return sc.access_logs()[before:]


def wait_line(sc, before, what):
    return h.wait_for(lambda: new_lines(sc, before), 5, 0.05, what)[-1]


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca", cn="access log CA")
    other = env.certs.ca("other", cn="access log other CA")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", ca, [api_id])
    good = env.certs.leaf("good", ca, [h.spiffe("shop", "good")])
    stranger = env.certs.leaf("stranger", other, [h.spiffe("shop", "stranger")])
    crl = env.certs.crl("ca", ca, [web.serial()])
    echo = env.echo("echo")
    resetter = ResettingBackend()
    in_port, reset_port, out_port = h.free_port(), h.free_port(), h.free_port()
    policy = env.policy("policy.json", {"default": "allow", "rules": [
        {"name": "no-stranger-port", "action": "deny", "from": [h.spiffe("shop", "denied")]}]})
    api_sc = env.sidecar("api", api, ca, workers=1, policy=policy, extra=["--crl", crl],
                         inbound=[(in_port, echo.addr), (reset_port, resetter.addr)])
    web_sc = env.sidecar("web", web, ca, workers=1,
                         outbound=[(out_port, "127.0.0.1:%d" % in_port, api_id)])

    # 1. Refused handshakes say why.
    n = len(api_sc.access_logs())
    h.tls_attempt(in_port, stranger, None, timeout=3)
    line = wait_line(api_sc, n, "unknown CA line")
    ok(line.get("reason") == "unknown_ca" and "depth 0" in (line.get("detail") or "") and
       line.get("verdict") == "error",
       "unknown CA: reason %r, detail %r" % (line.get("reason"), line.get("detail")))
    n = len(api_sc.access_logs())
    s = h.connect(in_port, 3)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        s.recv(100)
    except OSError:
        pass
    s.close()
    line = wait_line(api_sc, n, "protocol line")
    ok(line.get("reason") == "protocol" and (line.get("detail") or "").startswith(
        "TLS library: ") and line.get("error") != line.get("detail"),
       "plaintext to a TLS port: reason %r, detail %r" % (line.get("reason"),
                                                          line.get("detail")))

    # 2. The outbound side of a handshake the upstream refuses (our cert is in its CRL).
    n_web, n_api = len(web_sc.access_logs()), len(api_sc.access_logs())
    got = h.echo_exact(out_port, b"refused?\n", timeout=5)
    ok(got == b"", "the revoked web gets nothing through (%r)" % got)
    wline = wait_line(web_sc, n_web, "web's access line")
    aline = wait_line(api_sc, n_api, "api's access line")
    ok(aline.get("reason") == "revoked" and crl in (aline.get("detail") or ""),
       "inbound: reason %r, detail %r" % (aline.get("reason"), aline.get("detail")))
    ok(wline.get("verdict") == "error" and wline.get("reason") == "protocol" and
       "certificate revoked" in (wline.get("detail") or ""),
       "outbound: verdict %r (not allow), reason %r, detail %r" % (
           wline.get("verdict"), wline.get("reason"), wline.get("detail")))
    ok(wline.get("closed_by") == "upstream",
       "outbound: closed_by %r (the upstream's alert ended it)" % wline.get("closed_by"))
    lo = web_sc.listener("outbound:")
    ok(lo["handshake_failures"]["protocol"] >= 1,
       "outbound: counted as a handshake failure (%s)" % lo["handshake_failures"])

    # 4. Who closed, who reset.
    n = len(api_sc.access_logs())
    s = h.tls_client_ctx(good, ca).wrap_socket(h.connect(in_port, 5))
    s.sendall(b"hello\n")
    h.read_exact(s, 6)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    line = wait_line(api_sc, n, "client reset line")
    ok(line.get("closed_by") == "client" and line.get("reset_by") == "client",
       "client reset: closed_by %r, reset_by %r" % (line.get("closed_by"),
                                                    line.get("reset_by")))
    n = len(api_sc.access_logs())
    s = h.tls_client_ctx(good, ca).wrap_socket(h.connect(reset_port, 5))
    s.sendall(b"hello\n")
    try:
        s.recv(100)
    except (OSError, ssl.SSLError):
        pass
    s.close()
    line = wait_line(api_sc, n, "upstream reset line")
    ok(line.get("closed_by") == "upstream" and line.get("reset_by") == "upstream",
       "upstream reset: closed_by %r, reset_by %r" % (line.get("closed_by"),
                                                      line.get("reset_by")))
    denied = env.certs.leaf("denied", ca, [h.spiffe("shop", "denied")])
    n = len(api_sc.access_logs())
    h.tls_attempt(in_port, denied, ca, timeout=3)
    line = wait_line(api_sc, n, "policy line")
    ok(line.get("verdict") == "deny" and line.get("closed_by") == "proxy" and
       line.get("reset_by") == "proxy",
       "policy refusal: verdict %r, closed_by %r, reset_by %r" % (
           line.get("verdict"), line.get("closed_by"), line.get("reset_by")))
    n = len(api_sc.access_logs())
    s = h.tls_client_ctx(good, ca).wrap_socket(h.connect(in_port, 5))
    s.sendall(b"bye\n")
    h.read_exact(s, 4)
    s.shutdown(socket.SHUT_WR)
    h.read_all(s)
    s.close()
    line = wait_line(api_sc, n, "clean close line")
    ok(line.get("closed_by") == "client" and line.get("reset_by") is None and
       line.get("verdict") == "allow",
       "clean close: closed_by %r, reset_by %r" % (line.get("closed_by"), line.get("reset_by")))

    # 3. --max-connections.
    lim_port = h.free_port()
    lim = env.sidecar("lim", api, ca, workers=1, inbound=[(lim_port, echo.addr)],
                      extra=["--max-connections", "1"])
    hold = h.connect(lim_port, 5)
    time.sleep(0.2)
    n = len(lim.access_logs())
    try:
        h.connect(lim_port, 5).close()
    except OSError:
        pass  # the reset may already answer the connect
    line = wait_line(lim, n, "limit line")
    hold.close()
    ok(line.get("error") == "connection limit",
       "refused by --max-connections: error %r" % line.get("error"))
    resetter.stop()
    ok.done()


if __name__ == "__main__":
    h.main(test, "access-log")
