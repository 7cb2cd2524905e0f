#!/usr/bin/env python3
"""IPv6 end to end: listeners and targets written [IPv6]:PORT (DESIGN.md's address
convention), client -> outbound [::1] -> mTLS -> inbound [::1] -> an IPv6 echo backend,
and the peer address in /stats' recent failures and the access line in bracket form."""

import os
import socket
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def free_port6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind(("::1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def echo6():
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.bind(("::1", 0))
    srv.listen(16)

    def serve(c):
        with c:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                c.sendall(d)

    def loop():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return srv, srv.getsockname()[1]


def test(env):
    ok = h.Checks()
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).bind(("::1", 0))
    except OSError:
        print("SKIP: no IPv6 loopback here")
        sys.exit(77)
    ca = env.certs.ca("ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", ca, [api_id])
    srv, backend_port = echo6()
    in_port, out_port = free_port6(), free_port6()
    api_sc = env.sidecar("api", api, ca, extra=[
        "--inbound", "[::1]:%d=[::1]:%d" % (in_port, backend_port)])
    web_sc = env.sidecar("web", web, ca, extra=[
        "--outbound", "[::1]:%d=[::1]:%d@%s" % (out_port, in_port, api_id)])

    c = socket.create_connection(("::1", out_port), timeout=10)
    payload = h.pattern_bytes(256 * 1024, seed=6)
    c.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        d = c.recv(65536)
        if not d:
            break
        got.extend(d)
    c.close()
    ok(bytes(got) == payload, "256 KiB echoed intact over IPv6 through both sidecars")
    li = api_sc.listener("inbound:[::1]:%d" % in_port)
    ok(li["handshakes"] >= 1 and li["listen"] == "[::1]:%d" % in_port,
       "the inbound listener is named and listed in bracket form (%r)" % li["listen"])
    h.wait_for(lambda: any(r.get("peer_addr", "").startswith("[::1]:")
                           for r in api_sc.access_logs()), 5,
               what="an access line with an IPv6 peer address")
    ok(True, "the access line shows the IPv6 peer as [::1]:PORT")

    # A caller without a certificate over IPv6: refused and recorded with its address.
    raw = socket.create_connection(("::1", in_port), timeout=5)
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with ctx.wrap_socket(raw) as t:
            t.sendall(b"x")
            t.recv(1)
    except (ssl.SSLError, OSError):
        pass
    fails = h.wait_for(lambda: [f for f in api_sc.stats()["recent_handshake_failures"]
                                if f.get("reason") == "no_cert"], 5,
                       what="the no_cert failure to be recorded")
    ok(fails[0]["peer_addr"].startswith("[::1]:"),
       "recent_handshake_failures names the IPv6 peer (%r)" % fails[0]["peer_addr"])
    ok(web_sc.alive() and api_sc.alive(), "both sidecars still running")
    srv.close()
    ok.done()


if __name__ == "__main__":
    h.main(test, "ipv6")
