#!/usr/bin/env python3
"""The relay's limits: --max-connections, --idle-timeout, --connect-timeout,
backpressure with a client that does not read, and one connection's failure leaving the
others alone.

client -> outbound sidecar (web) -> mTLS -> inbound sidecar (api) -> echo backend.
"""

import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MB = 1 << 20


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def under_asan(pid):
    """ASan's allocator keeps freed memory in quarantine: RSS says nothing there."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def closed_soon(sock, timeout):
    """True when the peer closes (EOF or reset) within timeout seconds."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def roundtrip(port, n=4096, seed=1):
    payload = h.pattern_bytes(n, seed=seed)
    echoed, _ = h.echo_roundtrip(port, payload, timeout=20)
    return echoed == payload


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", ca, [api_id])
    echo = env.echo("echo")

    # A backend that never accepts: its backlog is full, so further SYNs go unanswered
    # and a connect to it can only time out.
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    stuck_port = stuck.getsockname()[1]
    fillers = []
    for _ in range(4):
        f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", stuck_port))
        fillers.append(f)
    time.sleep(0.2)

    in_port, in_stuck, out_port, out_limited = (h.free_port() for _ in range(4))
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, echo.addr),
                                                  (in_stuck, "127.0.0.1:%d" % stuck_port)],
                         extra=["--idle-timeout", "3s", "--connect-timeout", "700ms"])
    out_stuck = h.free_port()
    web_sc = env.sidecar("web", web, ca, outbound=[
        (out_port, "127.0.0.1:%d" % in_port, api_id),
        (out_stuck, "127.0.0.1:%d" % in_stuck, api_id)], workers=1)
    lim_sc = env.sidecar("limited", web, ca, outbound=[
        (out_limited, "127.0.0.1:%d" % in_port, api_id)],
        extra=["--max-connections", "3"], workers=1)

    # 1. --max-connections 3: three held connections, the fourth is closed at once and
    #    counted; once one closes, a new one is served.
    held = [h.connect(out_limited, 5) for _ in range(3)]
    for i, s in enumerate(held):
        s.sendall(b"hello %d\n" % i)
        s.settimeout(5)
        ok(s.recv(64).startswith(b"hello %d" % i), "held connection %d is relayed" % i)
    try:
        extra = h.connect(out_limited, 5)
        refused = closed_soon(extra, 3)
        extra.close()
    except ConnectionResetError:
        refused = True  # on loopback the reset can beat connect() itself
    ok(refused, "a fourth connection over --max-connections 3 is closed")
    li = lim_sc.listener("outbound:127.0.0.1:%d" % out_limited)
    ok(li["refused_limit"] == 1, "refused_limit counts it (%r)" % li["refused_limit"])
    held.pop().close()
    h.wait_for(lambda: lim_sc.listener("outbound:127.0.0.1:%d" % out_limited)["active"] <= 2,
               5, what="the closed connection to be gone")
    ok(roundtrip(out_limited, seed=3), "below the limit again, a new connection is served")
    for s in held:
        s.close()

    # 2. --idle-timeout 3s on the api sidecar: a relayed connection with no traffic is
    #    closed after about that long, not before.
    s = h.connect(out_port, 5)
    s.sendall(b"ping\n")
    s.settimeout(5)
    ok(s.recv(16).startswith(b"ping"), "idle test connection relayed")
    t0 = time.monotonic()
    closed = closed_soon(s, 8)
    took = time.monotonic() - t0
    ok(closed and 2.7 <= took <= 6.0,
       "an idle connection is closed after --idle-timeout 3s (%.2fs)" % took)
    s.close()
    # Activity keeps a connection open past the timeout.
    s = h.connect(out_port, 5)
    s.settimeout(5)
    alive = True
    for i in range(9):
        s.sendall(b"tick\n")
        alive = alive and s.recv(16).startswith(b"tick")
        time.sleep(0.5)
    ok(alive, "a connection with traffic every 0.5 s outlives the 3 s idle timeout")
    s.close()

    # 3. --connect-timeout 700ms: the api sidecar's upstream never answers the SYN.
    failures_before = api_sc.listener("inbound:127.0.0.1:%d" % in_stuck)[
        "upstream_connect_failures"]
    s = h.connect(out_stuck, 5)
    t0 = time.monotonic()
    s.sendall(b"anyone?\n")
    closed = closed_soon(s, 6)
    took = time.monotonic() - t0
    ok(closed and took < 4.0, "an unanswered upstream connect is given up (%.2fs)" % took)
    s.close()
    h.wait_for(lambda: api_sc.listener("inbound:127.0.0.1:%d" % in_stuck)[
        "upstream_connect_failures"] > failures_before, 5, what="the connect failure count")
    ok(True, "upstream_connect_failures counts the connect timeout")

    # 4. Backpressure: a client that writes 48 MB and reads nothing. The echo backend
    #    blocks on its replies, the sidecars stop reading, and the client's writes stall;
    #    the sidecars' memory stays bounded. Then the client reads: everything arrives.
    #    (Stalled for less than the idle timeout: a connection that moves no byte either
    #    way for that long is idle and closed, as Envoy's TCP proxy does.)
    rss0 = (rss_kib(web_sc.pid), rss_kib(api_sc.pid))
    total = 48 * MB
    payload = h.pattern_bytes(MB, seed=21)
    s = h.connect(out_port, 5)
    s.settimeout(1)
    sent = 0
    try:
        while sent < total:
            sent += s.send(payload[: min(MB, total - sent)])
    except socket.timeout:
        pass
    stalled_at = sent
    rss1 = (rss_kib(web_sc.pid), rss_kib(api_sc.pid))
    ok(stalled_at < total, "the writer stalls when nobody reads (%d of %d MB sent)" % (
        stalled_at // MB, total // MB))
    growth = max(rss1[0] - rss0[0], rss1[1] - rss0[1])
    if under_asan(web_sc.pid):
        h.log("memory bound not checked under AddressSanitizer (+%d KiB)" % growth)
    else:
        ok(growth < 16 * 1024,
           "sidecar memory stays bounded under backpressure (+%d KiB)" % growth)

    # Now read and keep writing: every byte comes back in order.
    received = bytearray()
    done = threading.Event()

    def reader():
        s.settimeout(30)
        try:
            while len(received) < total:
                d = s.recv(1 << 16)
                if not d:
                    break
                received.extend(d)
        except OSError:
            pass
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    s.settimeout(30)
    while sent < total:
        chunk = payload[sent % MB:]
        sent += s.send(chunk[: min(len(chunk), total - sent)])
    done.wait(60)
    want_ok = len(received) == total and all(
        received[i * MB:(i + 1) * MB] == payload for i in range(total // MB))
    ok(want_ok, "after the stall, all %d MB come back intact (%d bytes)" % (
        total // MB, len(received)))

    # 5. One connection's failure never touches another: a transfer in progress while a
    #    second connection is reset mid-stream.
    result = {}

    def long_transfer():
        result["ok"] = roundtrip(out_port, n=8 * MB, seed=31)

    t = threading.Thread(target=long_transfer, daemon=True)
    t.start()
    for _ in range(5):
        v = h.connect(out_port, 5)
        v.sendall(h.pattern_bytes(256 * 1024, seed=5))
        v.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        v.close()  # RST with data in flight
    t.join(60)
    ok(result.get("ok") is True, "an 8 MB transfer completes while other connections are "
       "reset mid-stream")
    ok(web_sc.alive() and api_sc.alive() and lim_sc.alive(), "the sidecars still run")
    s.close()
    for f in fillers:
        f.close()
    stuck.close()
    ok.done()


if __name__ == "__main__":
    h.main(test, "limits")
