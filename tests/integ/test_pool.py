#!/usr/bin/env python3
"""Pooling between sidecars (issue 10), as an app and an attacker see it.

client -> outbound sidecar -> a few pooled HTTP/2 mTLS links (tether-h2) -> inbound
sidecar -> backend. Proves, each on its own pair of sidecars:

1. 50 sequential echoes ride at most one link per worker: outbound handshakes <= 2,
   pool.streams_total >= 50, inbound pool.connections <= 2; access lines say route pool.
2. 20 concurrent connections of 256 KiB each arrive intact with few handshakes (<= 4).
3. 100 MB (20 MB under ASan) echoed both ways through one tunnel intact.
4. Half-close: the backend's EOF-SHA256 trailer arrives after the client's SHUT_WR.
5. A stalled stream (its client never reads while the backend sends 50 MB) does not block
   10 echoes on the same link (one worker, so one link).
6. An inbound with --pool off: echo works direct, one handshake per app connection,
   pool.fallback_direct counts them, access lines say route direct.
7. An outbound with --pool off: one handshake per app connection, no stream.
8. Policy per stream: a denied caller's stream gets nothing from the backend (which never
   sees a connection), EOF or reset at the client, inbound "denied" grows; an allowed
   identity through the same inbound still works.
9. --idle-timeout 2s on both: the outbound's links close once idle; a new connection
   afterwards works on a new link.
"""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

KB, MB = 1 << 10, 1 << 20
SOURCE_CMD = b"SOURCE\n"
STALL_BYTES = 50 * MB


def under_asan():
    """Whether the sidecar binary carries AddressSanitizer (linked libasan, or the runtime
    built in: its __asan_init symbol)."""
    path = h.sidecar_path()
    out = subprocess.run(["ldd", path], capture_output=True, text=True).stdout
    if "libasan" in out:
        return True
    with open(path, "rb") as f:
        return b"__asan_init" in f.read()


class MuxBackend(h.EchoServer):
    """An "echo" EchoServer, except that a connection whose first bytes are SOURCE_CMD is
    answered with STALL_BYTES pseudo-random bytes (`sent` counts how far that got). Both
    behind one inbound port, so a stalled source and echoes share one link."""

    def __init__(self):
        self.sent = 0
        super().__init__("echo")

    def _serve(self, c):
        c.settimeout(120)
        try:
            head = c.recv(len(SOURCE_CMD), socket.MSG_PEEK)
        except OSError:
            c.close()
            return
        if head != SOURCE_CMD:
            return super()._serve(c)
        try:
            h.read_exact(c, len(SOURCE_CMD))
            block = h.pattern_bytes(256 * KB, seed=5)
            while self.sent < STALL_BYTES and not self.stopping:
                c.sendall(block)
                self.sent += len(block)
        except OSError:
            pass
        finally:
            c.close()


class World:
    """The test's CA, identities and a way to start pairs of sidecars."""

    def __init__(self, env):
        self.env = env
        self.ca = env.certs.ca("ca")
        self.ids = {}
        self.certs = {}

    def cert(self, sa):
        """The leaf of spiffe://cluster.local/ns/shop/sa/<sa> (made once)."""
        if sa not in self.certs:
            self.ids[sa] = h.spiffe("shop", sa)
            self.certs[sa] = self.env.certs.leaf(sa, self.ca, [self.ids[sa]])
        return self.certs[sa]

    def inbound(self, name, sa, backend, extra=(), policy=None, workers=2):
        """An inbound sidecar of identity sa in front of backend; returns (sidecar, port)."""
        port = h.free_port()
        sc = self.env.sidecar(name, self.cert(sa), self.ca, inbound=[(port, backend.addr)],
                              extra=extra, policy=policy, workers=workers)
        return sc, port

    def outbound(self, name, sa, in_port, in_sa, extra=(), workers=2):
        """An outbound sidecar of identity sa to 127.0.0.1:in_port (identity in_sa);
        returns (sidecar, port)."""
        port = h.free_port()
        self.cert(in_sa)
        sc = self.env.sidecar(name, self.cert(sa), self.ca, outbound=[
            (port, "127.0.0.1:%d" % in_port, self.ids[in_sa])], extra=extra, workers=workers)
        return sc, port

    def pair(self, tag, backend, in_extra=(), out_extra=(), workers=2):
        """client -> <tag>-out (web) -> <tag>-in (api) -> backend. Returns
        (outbound sidecar, inbound sidecar, outbound port, inbound port)."""
        in_sc, in_port = self.inbound(tag + "-in", "api", backend, in_extra, workers=workers)
        out_sc, out_port = self.outbound(tag + "-out", "web", in_port, "api", out_extra,
                                         workers=workers)
        return out_sc, in_sc, out_port, in_port


def outl(sc, port):
    return sc.listener("outbound:127.0.0.1:%d" % port)


def inl(sc, port):
    return sc.listener("inbound:127.0.0.1:%d" % port)


def echo_ok(port, payload, timeout=30):
    """One echo through port; (intact and trailer right, description)."""
    try:
        echoed, digest = h.echo_roundtrip(port, payload, timeout)
    except Exception as e:  # noqa: BLE001 - any error is a failed echo
        return False, repr(e)
    good = echoed == payload and digest == hashlib.sha256(payload).hexdigest()
    return good, "%d of %d bytes back, trailer %s" % (
        len(echoed), len(payload), "ok" if digest == hashlib.sha256(payload).hexdigest()
        else repr(digest))


def settle(pred, timeout=5):
    """pred()'s value once true, else its last value (counters lag the client a bit)."""
    try:
        return h.wait_for(pred, timeout, what="counters")
    except h.TestFailure:
        return None


def read_for(sock, seconds):
    """Everything sock delivers until EOF, an error or `seconds` pass (logged)."""
    deadline = time.monotonic() + seconds
    got = bytearray()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                h.log("read_for: still open after %.0fs (%d bytes)" % (seconds, len(got)))
                break
            sock.settimeout(left)
            d = sock.recv(1 << 16)
            if not d:
                break
            got += d
    except OSError as e:
        h.log("read_for: %r after %d bytes" % (e, len(got)))
    return bytes(got)


def check_sequential(ok, w, echo):
    """1 and 4: sequential echoes on one pair; few handshakes, many streams; half-close."""
    out_sc, in_sc, out_port, in_port = w.pair("seq", echo)
    bad = []
    for i in range(50):
        p = h.pattern_bytes(4 * KB + i, seed=100 + i)
        good, why = echo_ok(out_port, p)
        if not good:
            bad.append((i, why))
    ok(not bad, "1: 50 sequential echoes through the pool intact (bad: %s)" % bad[:5])
    settle(lambda: outl(out_sc, out_port)["pool"]["streams_total"] >= 50)
    o, i = outl(out_sc, out_port), inl(in_sc, in_port)
    h.log("seq outbound:", o)
    h.log("seq inbound:", i)
    ok(o["handshakes"] <= 2, "1: outbound handshakes <= 2 after 50 connections (got %r)"
       % o["handshakes"])
    ok(o["pool"]["streams_total"] >= 50, "1: outbound pool.streams_total >= 50 (got %r)"
       % o["pool"]["streams_total"])
    ok(1 <= i["pool"]["connections"] <= 2, "1: inbound pool.connections in 1..2 (got %r)"
       % i["pool"]["connections"])
    ok(o["pool"]["fallback_direct"] == 0, "1: no fallback_direct (got %r)"
       % o["pool"]["fallback_direct"])
    routes = {a.get("route") for a in out_sc.access_logs()}
    ok(routes == {"pool"},
       "1: outbound access lines all route pool (routes %s)" % sorted(map(str, routes)))

    # 4. Half-close: a small payload, SHUT_WR, then the backend's trailer (sent only after
    #    it saw our EOF) must still come back through the tunnel.
    p = b"half-close through a tunnel\n"
    echoed, digest = h.echo_roundtrip(out_port, p, 10)
    ok(echoed == p and digest == hashlib.sha256(p).hexdigest(),
       "4: half-close: trailer after SHUT_WR arrived (echo %r, trailer %r)" % (
           echoed[:40], digest))
    return out_sc, in_sc, out_port, in_port


def check_concurrent(ok, pair):
    """2: 20 concurrent connections of 256 KiB on the same pair."""
    out_sc, _, out_port, _ = pair
    results = [None] * 20

    def one(k):
        results[k] = echo_ok(out_port, h.pattern_bytes(256 * KB, seed=500 + k), 60)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    bad = [(k, r) for k, r in enumerate(results) if not r or not r[0]]
    ok(not bad, "2: 20 concurrent 256 KiB echoes intact (bad: %s)" % bad[:5])
    o = outl(out_sc, out_port)
    ok(o["handshakes"] <= 4, "2: outbound handshakes <= 4 after 71 connections (got %r)"
       % o["handshakes"])


def check_large(ok, pair):
    """3: one big transfer echoed both ways."""
    out_sc, in_sc, out_port, in_port = pair
    size = 20 * MB if under_asan() else 100 * MB
    payload = h.pattern_bytes(size, seed=77)
    t0 = time.monotonic()
    good, why = echo_ok(out_port, payload, 30)
    h.log("3: %d MB echoed in %.1fs" % (size // MB, time.monotonic() - t0))
    if not good:
        cpu = {sc.name: sc.cpu_seconds() for sc in (out_sc, in_sc)}
        time.sleep(1)
        h.log("3: CPU seconds used in the last second: %s; outbound %s; inbound %s" % (
            {k: round(sc.cpu_seconds() - cpu[k], 2) for k, sc in (
                (out_sc.name, out_sc), (in_sc.name, in_sc))},
            outl(out_sc, out_port)["pool"], inl(in_sc, in_port)["pool"]))
    ok(good, "3: %d MB echoed both ways through a tunnel intact (%s)" % (size // MB, why))


def check_stall(ok, w):
    """5: a stalled stream does not hold up others on its link (one worker: one link)."""
    mux = MuxBackend()
    w.env._servers.append(mux)
    out_sc, in_sc, out_port, _ = w.pair("stall", mux, workers=1)
    good, why = echo_ok(out_port, b"warm up the link\n")
    ok(good, "5: first echo on the one-worker pair (%s)" % why)
    stalled = h.connect(out_port, 30)
    stalled.sendall(SOURCE_CMD)
    # Let the source fill every buffer between it and our unread socket.
    last = -1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.5)
        if mux.sent == last:
            break
        last = mux.sent
    h.log("5: stalled source stopped after %d bytes" % mux.sent)
    ok(0 < mux.sent < STALL_BYTES, "5: the source is stalled (%d of %d bytes sent)" % (
        mux.sent, STALL_BYTES))
    t0 = time.monotonic()
    results = []
    for k in range(10):
        results.append(echo_ok(out_port, h.pattern_bytes(64 * KB, seed=900 + k), 5))
    took = time.monotonic() - t0
    bad = [(k, r) for k, r in enumerate(results) if not r[0]]
    ok(not bad and took < 5, "5: 10 echoes on the stalled stream's link intact in %.1fs "
       "(bad: %s)" % (took, bad[:3]))
    o = outl(out_sc, out_port)
    ok(o["pool"]["connections"] == 1 and o["pool"]["streams_active"] >= 1,
       "5: all of that on one link with the stalled stream still open "
       "(connections %r, streams_active %r)" % (o["pool"]["connections"],
                                                o["pool"]["streams_active"]))
    # The stalled stream itself still delivers everything once read.
    got = read_for(stalled, 20)
    h.log("5: after reading: source sent %d; outbound %s; inbound %s" % (
        mux.sent, outl(out_sc, out_port)["pool"], in_sc.listener("inbound:")["pool"]))
    stalled.close()
    ok(len(got) == STALL_BYTES and got == h.pattern_bytes(256 * KB, seed=5) * (
        STALL_BYTES // (256 * KB)), "5: the stalled stream, read at last, is intact "
       "(%d of %d bytes)" % (len(got), STALL_BYTES))


def check_inbound_off(ok, w, echo):
    """6: the inbound does not select tether-h2: direct, one handshake per connection.

    Each worker's pool learns the refusal on its own (its first dial is a handshake that
    declines the token and carries nothing), so with one worker the first round costs at
    most one extra handshake and after that every app connection is exactly one."""
    workers = 1
    out_sc, in_sc, out_port, in_port = w.pair("inoff", echo, in_extra=["--pool", "off"],
                                              workers=workers)

    def echoes(first, count):
        """Echoes number first..first+count-1; (failures, outbound stats once settled)."""
        bad = []
        for k in range(first, first + count):
            good, why = echo_ok(out_port, h.pattern_bytes(8 * KB, seed=3000 + k), 10)
            if not good:
                bad.append((k, why))
        done = settle(lambda: (lambda x: x["accepted"] == first + count and x["active"] == 0
                               and x)(outl(out_sc, out_port)))
        return bad, done or outl(out_sc, out_port)

    n, m = 5, 4
    bad, o1 = echoes(0, n)
    ok(not bad, "6: %d echoes through an inbound with --pool off intact (bad: %s)" % (
        n, bad[:3]))
    bad, o = echoes(n, m)
    ok(not bad, "6: %d more echoes intact (bad: %s)" % (m, bad[:3]))
    i = inl(in_sc, in_port)
    h.log("inoff outbound:", o)
    h.log("inoff inbound:", i)
    ok(o["pool"]["fallback_direct"] == n + m, "6: outbound pool.fallback_direct == %d "
       "(got %r)" % (n + m, o["pool"]["fallback_direct"]))
    ok(n <= o1["handshakes"] <= n + workers, "6: first %d connections: %d..%d outbound "
       "handshakes (one each, plus at most one declined dial per worker; got %r)" % (
           n, n, n + workers, o1["handshakes"]))
    ok(o["handshakes"] - o1["handshakes"] == m, "6: then exactly one handshake per app "
       "connection: %d more for %d connections (got %r)" % (
           m, m, o["handshakes"] - o1["handshakes"]))
    ok(i["handshakes"] == o["handshakes"] and i["pool"]["connections"] == 0
       and i["pool"]["streams_total"] == 0,
       "6: inbound: the same %r handshakes, no link, no stream (got %r, %r, %r)" % (
           o["handshakes"], i["handshakes"], i["pool"]["connections"],
           i["pool"]["streams_total"]))
    routes = [a.get("route") for a in out_sc.access_logs()]
    ok(routes == ["direct"] * (n + m), "6: outbound access lines all route direct (%s)" % (
        routes))


def check_outbound_off(ok, w, echo):
    """7: --pool off on the outbound: a handshake per app connection, no stream."""
    out_sc, in_sc, out_port, in_port = w.pair("outoff", echo, out_extra=["--pool", "off"])
    n = 6
    bad = []
    for k in range(n):
        good, why = echo_ok(out_port, h.pattern_bytes(8 * KB, seed=400 + k), 10)
        if not good:
            bad.append((k, why))
    ok(not bad, "7: %d echoes from an outbound with --pool off intact (bad: %s)" % (
        n, bad[:3]))
    o = settle(lambda: (lambda x: x["accepted"] == n and x["active"] == 0 and x)(
        outl(out_sc, out_port))) or outl(out_sc, out_port)
    h.log("outoff outbound:", o)
    ok(o["handshakes"] == n, "7: outbound handshakes == %d connections (got %r)" % (
        n, o["handshakes"]))
    ok(o["pool"]["streams_total"] == 0 and o["pool"]["connections"] == 0,
       "7: no link and no stream (streams_total %r, connections %r)" % (
           o["pool"]["streams_total"], o["pool"]["connections"]))
    i = inl(in_sc, in_port)
    ok(i["pool"]["streams_total"] == 0, "7: the inbound carried no stream (got %r)" % (
        i["pool"]["streams_total"]))


def denied_attempt(port, timeout=10):
    """Sends a line and half-closes, as an app would, then reads what comes back.
    Returns (bytes received, how it ended: "EOF", "reset" or "timeout")."""
    s = h.connect(port, timeout)
    got = bytearray()
    end = "EOF"
    try:
        s.sendall(b"let me in\n")
        s.shutdown(socket.SHUT_WR)
        while True:
            d = s.recv(1 << 16)
            if not d:
                break
            got += d
    except socket.timeout:
        end = "timeout"
    except OSError:
        end = "reset"
    finally:
        s.close()
    return bytes(got), end


def check_policy(ok, w):
    """8: a denied caller's stream reaches nothing; an allowed caller still works."""
    guarded = w.env.echo("echo")
    w.cert("api")
    w.cert("good")
    policy = w.env.policy("pool-policy.json", {"default": "deny", "rules": [
        {"name": "good-to-api", "action": "allow", "from": [w.ids["good"]],
         "to": [w.ids["api"]]}]})
    in_sc, in_port = w.inbound("pol-in", "api", guarded, policy=policy)
    bad_sc, bad_port = w.outbound("pol-bad", "web", in_port, "api")
    for k in range(2):
        got, end = denied_attempt(bad_port)
        ok(got == b"" and end in ("EOF", "reset"), "8: denied caller (try %d) gets no "
           "byte, then EOF or reset (got %d bytes, then %s)" % (k + 1, len(got), end))
    i = settle(lambda: (lambda x: x["denied"] >= 2 and x)(inl(in_sc, in_port))) or inl(
        in_sc, in_port)
    h.log("pol inbound:", i)
    ok(i["denied"] >= 2, "8: inbound denied counter grew (got %r)" % i["denied"])
    b = outl(bad_sc, bad_port)
    ok(b["pool"]["streams_total"] >= 1 and b["pool"]["fallback_direct"] == 0,
       "8: the denied caller went through the pool (streams_total %r, fallback_direct %r)"
       % (b["pool"]["streams_total"], b["pool"]["fallback_direct"]))
    good_sc, good_port = w.outbound("pol-good", "good", in_port, "api")
    good, why = echo_ok(good_port, b"allowed through the pool\n", 10)
    ok(good, "8: allowed identity through the same inbound works (%s)" % why)
    ok(guarded.accepted == 1, "8: the backend saw only the allowed connection "
       "(accepted %d)" % guarded.accepted)


def check_idle(ok, w, echo):
    """9: idle links close after --idle-timeout; a later connection opens a new one."""
    idle = ["--idle-timeout", "2s"]
    out_sc, _, out_port, _ = w.pair("idle", echo, in_extra=idle, out_extra=idle)
    for k in range(3):
        good, why = echo_ok(out_port, h.pattern_bytes(4 * KB, seed=700 + k), 10)
        ok(good, "9: echo %d before idling (%s)" % (k + 1, why))
    before = outl(out_sc, out_port)
    ok(before["pool"]["connections"] >= 1, "9: a link is up right after the traffic (%r)"
       % before["pool"]["connections"])
    t0 = time.monotonic()
    gone = settle(lambda: outl(out_sc, out_port)["pool"]["connections"] == 0, 8)
    took = time.monotonic() - t0
    ok(gone and took < 6, "9: outbound pool.connections 0 after %.1fs idle (got %r)" % (
        took, outl(out_sc, out_port)["pool"]["connections"]))
    good, why = echo_ok(out_port, b"after the links closed\n", 10)
    ok(good, "9: a connection after the idle close works (%s)" % why)
    after = outl(out_sc, out_port)
    ok(after["handshakes"] > before["handshakes"] and after["pool"]["connections"] >= 1,
       "9: on a new link (handshakes %r -> %r, connections %r)" % (
           before["handshakes"], after["handshakes"], after["pool"]["connections"]))


def test(env):
    ok = h.Checks()
    w = World(env)
    echo = env.echo("echo")
    pair = check_sequential(ok, w, echo)
    check_concurrent(ok, pair)
    check_stall(ok, w)
    check_inbound_off(ok, w, echo)
    check_outbound_off(ok, w, echo)
    check_policy(ok, w)
    check_idle(ok, w, echo)
    check_large(ok, pair)  # last: when it hangs, nothing after it waits for the CPU
    for sc in env._procs:
        ok(sc.alive(), "%s still running" % sc.name)
    ok.done()


if __name__ == "__main__":
    h.main(test, "pool")
