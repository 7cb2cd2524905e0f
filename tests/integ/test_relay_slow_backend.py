#!/usr/bin/env python3
"""Nothing is lost when the caller's FIN arrives while the backend is not reading.

client -> outbound (web) -> mTLS -> inbound (api) -> a backend that reads nothing for half a
second and then slowly, through a small receive window. The client sends a MB or two in
pieces of uneven size and half-closes at once, so the inbound sidecar's queue towards the
backend is full when the FIN arrives behind the last TLS records: those records must still
be decrypted and delivered, and only then the FIN. A relay that took the socket's FIN as the
end of the stream dropped what it had not decrypted yet (seen once as 13,636 bytes missing
in test_relay_allocs' echo traffic). That loss needs a narrow timing, so this test is a
stress on the ordering rather than a sure reproduction: in tries on the faulty code it did
not catch it; it would catch any loss it does see.
"""

import hashlib
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MB = 1 << 20
ROUNDS = 10


def send_then_close(port, payload, seed):
    """Sends payload in pieces of uneven sizes (so the outbound sidecar makes TLS records
    of every size, and the inbound one's queue sits at odd fill levels), then half-closes."""
    s = h.connect(port, timeout=60)
    s.settimeout(60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rnd = random.Random(seed)
    pos = 0
    while pos < len(payload):
        n = rnd.choice((1, 700, 5000, 16000, 17000, 40000))
        s.sendall(payload[pos:pos + n])
        pos += n
        if rnd.random() < 0.05:
            time.sleep(0.001)
    s.shutdown(socket.SHUT_WR)
    answer = h.read_all(s)
    s.close()
    return answer


def test(env):
    ok = h.Checks()
    sink = env.echo("slowsink:0.1")
    web_sc, api_sc, out_port = env.sidecar_pair(sink.addr)
    for i in range(ROUNDS):
        payload = h.pattern_bytes(MB + i * 40961 + 7, seed=40 + i)
        want = b"RECEIVED:%d:%s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
        got = send_then_close(out_port, payload, i)
        ok(got == want, "round %d: the backend received all %d bytes before the FIN (%r)" % (
            i + 1, len(payload), got[:120]))
    ok(web_sc.alive() and api_sc.alive(), "both sidecars still running")
    ok.done()


if __name__ == "__main__":
    h.require_sidecar()
    h.main(test, "relay-slow-backend")
