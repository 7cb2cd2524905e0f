#!/usr/bin/env python3
"""The control plane's sidecar port under a connection flood (issue 7 item 5), as the
attacker does it:

1. 1,000 silent TCP connections and 1,000 TLS connections that complete the handshake
   (anonymously, as a bootstrapping sidecar may) and then say nothing, from 20 source
   addresses (127.0.1.x, 127.0.2.x). While they are held, a real sidecar already watching
   keeps its stream and a new sidecar gets a certificate (Identity.Sign with a token) and
   a snapshot (Discovery.Watch): it becomes ready. The process keeps a bounded number of
   threads. At the deadlines the silent ones are closed (handshake) and the idle TLS ones
   too (first call), each counted in GET /stats, logged once per episode.
2. 1,000 more silent connections from other addresses take the total over
   --sidecar-max-connections: the oldest connections without a call (the attacker's) are
   evicted, the sidecars' Watch connections are not, and another new sidecar is served.
3. 2,000 connections from 127.0.0.2 (on loopback every sidecar comes from 127.0.0.1): the
   per-source bound refuses the attacker's, and a new sidecar from 127.0.0.1 is served.

Counts are scaled down under ASan; the shape stays."""

import os
import resource
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

DEADLINE = 15  # --sidecar-handshake-timeout and --sidecar-first-call-timeout, seconds
MAX_THREADS = 40


def under_asan():
    out = subprocess.run(["ldd", os.environ["TT_CONTROL"]], capture_output=True,
                         text=True).stdout
    return "libasan" in out


def sources(prefix, n):
    return ["%s.%d" % (prefix, i + 1) for i in range(n)]


def silent(port, n, srcs):
    """n TCP connections spread over the source addresses; returns the sockets."""
    out = []
    for i in range(n):
        s = socket.socket()
        s.bind((srcs[i % len(srcs)], 0))
        try:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            out.append(s)
        except OSError:
            s.close()
    return out


def idle_tls(port, n, srcs, bundle):
    """n anonymous TLS connections that complete the handshake, then say nothing; returns
    those whose handshake completed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(bundle)
    out = []
    for i in range(n):
        s = socket.socket()
        s.bind((srcs[i % len(srcs)], 0))
        try:
            s.settimeout(5)
            s.connect(("127.0.0.1", port))
            t = ctx.wrap_socket(s)
            out.append(t)
        except (OSError, ssl.SSLError):
            s.close()
    return out


def closed_by_server(sock):
    """True when the server has ended the connection (EOF, reset or an alert). What it
    sent before (gRPC's SETTINGS on a TLS connection) is read and dropped."""
    sock.settimeout(0.01)
    try:
        while True:
            if sock.recv(4096) == b"":
                return True
    except (socket.timeout, ssl.SSLWantReadError):
        return False
    except (OSError, ssl.SSLError):
        return True


def threads(pid):
    return len(os.listdir("/proc/%d/task" % pid))


def refusals(cp):
    return cp.stats().get("refusals", {})


def new_sidecar(env, cp, name):
    """A sidecar that must get a certificate and a snapshot now: ready within 20 s."""
    sid = h.spiffe("shop", name)
    t0 = time.monotonic()
    sc = env.cp_sidecar(name, cp, sid, cp.token(sid), wait=False, workers=1,
                        inbound=[(h.free_port(), "127.0.0.1:9")])
    sc.wait_ready(timeout=20)
    h.log("%s ready in %.2fs" % (name, time.monotonic() - t0))
    return sc


def test(env):
    check = h.Checks()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = 300 if under_asan() else 1000
    max_conns = 2 * n + n // 4
    cp = env.control(extra=["--sidecar-handshake-timeout", "%ds" % DEADLINE,
                            "--sidecar-first-call-timeout", "%ds" % DEADLINE,
                            "--sidecar-max-connections", str(max_conns)])
    bundle = cp.bundle()
    first = new_sidecar(env, cp, "first")
    base_threads = threads(cp.pid)

    # 1. n silent + n idle-after-TLS, from 20 addresses: all held.
    t0 = time.monotonic()
    quiet = silent(cp.sidecar_port, n, sources("127.0.1", 10))
    idle = idle_tls(cp.sidecar_port, n, sources("127.0.2", 10), bundle)
    held_at = time.monotonic()
    h.log("held %d silent + %d idle TLS in %.1fs" % (len(quiet), len(idle), held_at - t0))
    check(len(quiet) >= n * 0.95 and len(idle) >= n * 0.95,
          "the attacker holds its connections (%d silent, %d idle TLS of %d each)"
          % (len(quiet), len(idle), n))
    during = new_sidecar(env, cp, "during")
    peak_threads = threads(cp.pid)
    check(peak_threads <= MAX_THREADS,
          "threads bounded while %d connections are held: %d (idle: %d)"
          % (len(quiet) + len(idle), peak_threads, base_threads))
    check(first.alive() and first.get("/ready")[0] == 200, "the first sidecar stays ready")

    # 2. Over the total bound: the oldest connections without a call make room.
    extra = silent(cp.sidecar_port, n // 2, sources("127.0.3", 10))
    overflow = new_sidecar(env, cp, "overflow")
    r = refusals(cp)
    check(r.get("sidecar_conn_evicted", 0) >= n // 4,
          "connections without a call evicted at the bound: %s" % r.get("sidecar_conn_evicted"))
    evicted_quiet = sum(1 for s in quiet[: n // 4] if closed_by_server(s))
    check(evicted_quiet >= n // 5, "the oldest (silent) ones went first: %d of the first %d"
          % (evicted_quiet, n // 4))
    watching = {s.get("spiffe_id") for s in cp.sidecars()}
    check({h.spiffe("shop", x) for x in ("first", "during", "overflow")} <= watching,
          "every sidecar still watches: %s" % sorted(watching))

    # The deadlines end what is left of the attack.
    wait = held_at + DEADLINE + 5 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    left_quiet = sum(1 for s in quiet + extra if not closed_by_server(s))
    left_idle = sum(1 for s in idle if not closed_by_server(s))
    check(left_quiet == 0, "silent connections closed by the handshake deadline (%d left)"
          % left_quiet)
    check(left_idle == 0, "idle TLS connections closed by the first-call deadline (%d left)"
          % left_idle)
    r = refusals(cp)
    check(r.get("sidecar_first_call_timeout", 0) >= n // 2,
          "first-call timeouts counted: %s" % r.get("sidecar_first_call_timeout"))
    check(r.get("sidecar_handshake_timeout", 0) >= n // 2,
          "handshake timeouts counted: %s" % r.get("sidecar_handshake_timeout"))
    for s in quiet + idle + extra:
        s.close()

    # 3. One source, 127.0.0.2: the per-source bound (256) hits the attacker only.
    one = idle_tls(cp.sidecar_port, n, ["127.0.0.2"], bundle)
    one += silent(cp.sidecar_port, n, ["127.0.0.2"])
    time.sleep(0.5)
    alive = sum(1 for s in one if not closed_by_server(s))
    check(alive <= 256, "127.0.0.2 holds at most 256 connections: %d" % alive)
    same_host = new_sidecar(env, cp, "same-host")
    r = refusals(cp)
    check(r.get("sidecar_conn_limit_per_source", 0) >= n // 2,
          "per-source refusals counted: %s" % r.get("sidecar_conn_limit_per_source"))
    for s in one:
        s.close()

    # Logged once per episode, not per connection.
    shed = cp.events("connections_shed")
    check(1 <= len(shed) <= 6, "connections_shed lines: %d" % len(shed))
    check(len(cp.events("handshake_failed")) < 20,
          "handshake_failed lines: %d" % len(cp.events("handshake_failed")))
    for sc in (first, during, overflow, same_host):
        check(sc.alive() and sc.get("/ready")[0] == 200, "%s is ready at the end" % sc.name)
    check.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-conn-flood")
