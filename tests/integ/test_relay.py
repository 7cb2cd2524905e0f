#!/usr/bin/env python3
"""client -> outbound sidecar (web) -> mTLS -> inbound sidecar (api) -> echo backend.

Proves: 1 MB each way arrives intact (sha256 from the backend's side too); half-close
(the client's SHUT_WR reaches the backend, which then still sends its trailer back);
data from the backend without any client input (a 1 MB source backend); many concurrent
connections each intact; /stats counters (accepted, handshakes, bytes, allowed, peers)
match what was sent; an access log line per connection; a chain with an intermediate CA;
the app connections share a few pooled mTLS connections (links) between the sidecars.
"""

import hashlib
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MB = 1 << 20
CONCURRENT = 100


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    inter = env.certs.ca("intermediate", parent=ca)
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", inter, [api_id])  # leaf + intermediate in api.crt

    echo = env.echo("echo")
    source = env.echo("source:%d" % MB)
    in_port, in2_port, out_port, out2_port = (h.free_port() for _ in range(4))
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "to": [api_id],
         "ports": [echo.port, source.port]}]})

    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, echo.addr),
                                                  (in2_port, source.addr)], policy=policy)
    web_sc = env.sidecar("web", web, ca, outbound=[
        (out_port, "127.0.0.1:%d" % in_port, api_id),
        (out2_port, "127.0.0.1:%d" % in2_port, api_id)])

    # 1. 1 MB up and back, with half-close: the trailer only comes after the backend saw
    #    our EOF, and it must still reach us after our SHUT_WR.
    payload = h.pattern_bytes(MB, seed=11)
    echoed, digest = h.echo_roundtrip(out_port, payload)
    ok(len(echoed) == MB and echoed == payload,
       "1 MB echoed intact (got %d bytes, equal=%s)" % (len(echoed), echoed == payload))
    ok(digest == hashlib.sha256(payload).hexdigest(),
       "half-close: backend saw EOF and its trailer (sha256 of what it got) arrived "
       "after our SHUT_WR (got %r)" % digest)

    # 2. 1 MB from the backend with no client input at all (server-first, then EOF).
    s = h.connect(out2_port, 30)
    got = h.read_all(s)
    s.close()
    ok(got == h.pattern_bytes(MB, seed=7),
       "1 MB from a server-first backend intact (got %d bytes)" % len(got))

    # 3. Many concurrent connections, each with its own payload.
    results = [None] * CONCURRENT

    def one(i):
        p = h.pattern_bytes(32 * 1024 + i * 97, seed=1000 + i)
        try:
            e, d = h.echo_roundtrip(out_port, p)
            results[i] = (e == p and d == hashlib.sha256(p).hexdigest(), len(p))
        except Exception as ex:  # noqa: BLE001
            results[i] = (False, repr(ex))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bad = [(i, r) for i, r in enumerate(results) if not r or not r[0]]
    ok(not bad, "%d concurrent connections intact (bad: %s)" % (CONCURRENT, bad[:5]))
    conc_bytes = sum(32 * 1024 + i * 97 for i in range(CONCURRENT))

    n_echo = 1 + CONCURRENT
    trailer = len(b"\nEOF-SHA256:") + 64 + 1
    sent = MB + conc_bytes
    recv_echo = sent + n_echo * trailer

    def settled():
        o = web_sc.listener("outbound:127.0.0.1:%d" % out_port)
        i = api_sc.listener("inbound:127.0.0.1:%d" % in_port)
        return (o["accepted"] == n_echo and o["active"] == 0 and i["active"] == 0
                and o["bytes_out"] == recv_echo) and (o, i)

    try:
        o, i = h.wait_for(settled, 10, what="counters to settle")
    except h.TestFailure:
        o = web_sc.listener("outbound:127.0.0.1:%d" % out_port)
        i = api_sc.listener("inbound:127.0.0.1:%d" % in_port)
    h.log("outbound stats:", o)
    h.log("inbound stats:", i)
    ok(o.get("kind") == "outbound" and i.get("kind") == "inbound",
       "listener kinds (%r, %r)" % (o.get("kind"), i.get("kind")))
    ok(o["accepted"] == n_echo, "outbound accepted == %d (got %r)" % (n_echo, o["accepted"]))
    # Pooled (README "Pooling between sidecars"): the app connections ride a few links, at
    # most 2 per worker here; the inbound accepted those links' TCP connections and one
    # tunnel per app connection.
    ok(1 <= o["handshakes"] <= 4,
       "outbound handshakes: a few links, not one per connection (got %r)" % o["handshakes"])
    ok(i["handshakes"] == o["handshakes"],
       "inbound handshakes == outbound's (%r, %r)" % (i["handshakes"], o["handshakes"]))
    ok(i["accepted"] == n_echo + i["handshakes"],
       "inbound accepted == %d tunnels + %d links (got %r)" % (n_echo, i["handshakes"],
                                                               i["accepted"]))
    ok(o["pool"]["streams_total"] == n_echo and i["pool"]["streams_total"] == n_echo,
       "every app connection was a tunnel (%r, %r)" % (o["pool"], i["pool"]))
    ok(o["active"] == 0 and i["active"] == 0, "active back to 0 (%r, %r)" % (
        o["active"], i["active"]))
    ok(o["bytes_in"] == sent, "outbound bytes_in == %d sent by clients (got %r)" % (
        sent, o["bytes_in"]))
    ok(o["bytes_out"] == recv_echo, "outbound bytes_out == %d received by clients (got %r)" % (
        recv_echo, o["bytes_out"]))
    # Inbound bytes: plaintext (exact) is what we expect; TLS record bytes would be a
    # little more. Anything below the plaintext is wrong.
    ok(i["bytes_in"] == sent or sent < i["bytes_in"] < sent * 1.1 + 65536,
       "inbound bytes_in ~ %d (got %r%s)" % (sent, i["bytes_in"], "" if i["bytes_in"] == sent
                                             else ", not the exact plaintext count"))
    ok(i["bytes_out"] == recv_echo or recv_echo < i["bytes_out"] < recv_echo * 1.1 + 65536,
       "inbound bytes_out ~ %d (got %r)" % (recv_echo, i["bytes_out"]))
    ok(sum(f for f in i["handshake_failures"].values()) == 0
       and sum(f for f in o["handshake_failures"].values()) == 0,
       "no handshake failures (%r / %r)" % (i["handshake_failures"], o["handshake_failures"]))
    ok(i.get("allowed") == n_echo and i.get("denied") == 0,
       "inbound allowed == %d, denied 0 (%r, %r)" % (n_echo, i.get("allowed"), i.get("denied")))

    st = api_sc.stats()
    rules = {r["name"]: r for r in st["policy"]["rules"]}
    ok(rules.get("web-to-api", {}).get("hits") == n_echo + 1,
       "rule web-to-api hits == %d (got %r)" % (n_echo + 1, rules.get("web-to-api")))
    ok(st["policy"]["allowed"] == n_echo + 1, "policy.allowed == %d (got %r)" % (
        n_echo + 1, st["policy"]["allowed"]))
    peers = {p["spiffe_id"]: p for p in st["peers"]}
    ok(peers.get(web_id, {}).get("connections") == n_echo + 1,
       "peers[web].connections == %d (got %r)" % (n_echo + 1, peers.get(web_id)))
    ok(st["identity"]["spiffe_id"] == api_id and
       h.norm_serial(st["identity"]["serial"]) == api.serial(),
       "identity is api's (%r, %r)" % (st["identity"]["spiffe_id"], st["identity"]["serial"]))

    # Access log lines: one per connection, with the caller's identity and verdict.
    def acc():
        a = [r for r in api_sc.access_logs()]
        return len(a) >= n_echo + 1 and a
    try:
        acc_lines = h.wait_for(acc, 5, what="access lines")
    except h.TestFailure:
        acc_lines = api_sc.access_logs()
    ok(len(acc_lines) == n_echo + 1, "api: %d access lines (got %d)" % (n_echo + 1,
                                                                        len(acc_lines)))
    if acc_lines:
        a = acc_lines[0]
        h.log("access line:", a)
        ok(all(k in a for k in ("listener", "peer_id", "verdict", "rule", "bytes_in",
                                "bytes_out", "duration_ms")),
           "access line has listener, peer_id, verdict, rule, bytes_in, bytes_out, "
           "duration_ms (keys %s)" % sorted(a))
        ok(all(x.get("peer_id") == web_id and x.get("verdict") == "allow"
               and x.get("rule") == "web-to-api" for x in acc_lines),
           "every api access line: peer_id web, verdict allow, rule web-to-api")
        # Inbound bytes_in/out count the TLS side; the plaintext relayed to the backend is
        # upstream_bytes_out.
        big = [x for x in acc_lines if x.get("upstream_bytes_out") == MB]
        ok(len(big) == 1, "one api access line with upstream_bytes_out == 1 MB")
    wacc = web_sc.access_logs()
    big = [x for x in wacc if x.get("bytes_in") == MB and x.get("bytes_out") == MB + trailer]
    ok(len(big) == 1, "one web access line with bytes_in 1 MB, bytes_out 1 MB + trailer")
    ok(len(wacc) == n_echo + 1, "web: %d access lines (got %d)" % (n_echo + 1, len(wacc)))
    ok(api_sc.alive() and web_sc.alive(), "both sidecars still running")
    ok.done()


if __name__ == "__main__":
    h.main(test, "relay")
