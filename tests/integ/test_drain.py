#!/usr/bin/env python3
"""SIGTERM drains.

1. web (outbound) -> api (inbound) -> echo, one connection open, SIGTERM to web with
   --drain-timeout 10s: /ready turns 503 (or the admin port closes), new connections
   to the listener are refused, the open connection still carries data both ways and
   half-closes cleanly, and once it ends web exits 0 well before the drain timeout.
2. the same with SIGTERM to api (the inbound side).
3. a connection that never ends: the sidecar exits 0 at about the drain timeout (2s)
   and closes it.
"""

import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def ready_status(sc):
    try:
        st, _ = sc.get("/ready", timeout=2)
        return st
    except OSError:
        return "closed"


def refused(port):
    """True when a new connection to port is refused, or accepted and closed at once
    without data."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError:
        return True
    except OSError:
        return True
    try:
        s.settimeout(2)
        s.sendall(b"x")
        d = s.recv(10)
        return d == b""
    except OSError:
        return True
    finally:
        s.close()


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", ca, [api_id])
    echo = env.echo("echo")

    def pair(drain_web="10s", drain_api="10s"):
        in_port, out_port = h.free_port(), h.free_port()
        api_sc = env.sidecar("api-%d" % in_port, api, ca, inbound=[(in_port, echo.addr)],
                             extra=["--drain-timeout", drain_api])
        web_sc = env.sidecar("web-%d" % out_port, web, ca, outbound=[
            (out_port, "127.0.0.1:%d" % in_port, api_id)], extra=["--drain-timeout",
                                                                   drain_web])
        return api_sc, web_sc, in_port, out_port

    for side in ("web", "api"):
        api_sc, web_sc, in_port, out_port = pair()
        target, port = (web_sc, out_port) if side == "web" else (api_sc, in_port)
        c = h.connect(out_port, 10)
        c.sendall(b"one\n")
        ok(c.recv(100) == b"one\n", "%s: connection open and working" % side)
        t0 = time.monotonic()
        target.signal(signal.SIGTERM)
        st = h.wait_for(lambda: ready_status(target) != 200 and ready_status(target), 3,
                        what="/ready to fail")
        ok(st in (503, "closed"), "%s: /ready fails while draining (%r)" % (side, st))
        if st == 503:
            ok(target.stats().get("server", {}).get("draining", True),
               "%s: /stats says draining" % side)
        ok(target.alive(), "%s: still running while a connection is open" % side)
        ok(refused(port), "%s: new connections are refused while draining" % side)
        c.sendall(b"two\n")
        ok(c.recv(100) == b"two\n", "%s: the open connection still works" % side)
        c.shutdown(socket.SHUT_WR)
        rest = h.read_all(c)
        ok(rest.startswith(b"\nEOF-SHA256:"), "%s: half-close completes during the drain "
           "(%r)" % (side, rest[:40]))
        c.close()
        rc = target.wait(8)
        dt = time.monotonic() - t0
        ok(rc == 0, "%s: exit code 0 after the drain (got %r)" % (side, rc))
        ok(dt < 8, "%s: exited %.2fs after SIGTERM, once its last connection ended "
           "(drain timeout 10s)" % (side, dt))
        drained = [r for r in target.access_logs()]
        ok(len(drained) == 1, "%s: the drained connection has its access line (%d)" % (
            side, len(drained)))
        api_sc.stop()
        web_sc.stop()

    # 3. The drain timeout bounds the wait.
    api_sc, web_sc, in_port, out_port = pair(drain_web="2s")
    c = h.connect(out_port, 10)
    c.sendall(b"hold\n")
    ok(c.recv(100) == b"hold\n", "timeout case: connection open")
    t0 = time.monotonic()
    web_sc.signal(signal.SIGTERM)
    rc = web_sc.wait(10)
    dt = time.monotonic() - t0
    ok(rc == 0, "timeout case: exit 0 (got %r)" % rc)
    ok(1.5 <= dt <= 4.5, "timeout case: exited after %.2fs (drain timeout 2s)" % dt)
    c.settimeout(3)
    try:
        d = c.recv(100)
    except OSError:
        d = b""
    ok(d == b"", "timeout case: the held connection was closed (%r)" % d)
    c.close()
    ok(api_sc.alive(), "api unaffected")

    # 4. SIGTERM with no connections: exits promptly.
    t0 = time.monotonic()
    api_sc.signal(signal.SIGTERM)
    rc = api_sc.wait(10)
    ok(rc == 0 and time.monotonic() - t0 < 2, "idle sidecar exits 0 at once on SIGTERM "
       "(rc %r, %.2fs)" % (rc, time.monotonic() - t0))
    ok.done()


if __name__ == "__main__":
    h.main(test, "drain")
