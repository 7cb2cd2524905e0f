#!/usr/bin/env python3
"""Every refusal, each counted under its reason in /stats.

Inbound (api sidecar, --handshake-timeout 1s, backend sends a banner on accept so any
leak shows): no client cert -> no_cert; a cert from another CA -> unknown_ca; expired ->
expired; not yet valid -> not_yet_valid; two SPIFFE URI SANs -> bad_san; no URI SAN ->
bad_san; a non-spiffe URI SAN -> bad_san; silence -> timeout; garbage -> protocol.
Outbound (web sidecar): an upstream with a valid certificate for another SPIFFE ID ->
wrong_identity. Policy: a caller hit by a deny rule and one matching no rule get no byte
from the backend, policy.denied and the deny rule's hits count them, the access log says
deny. recent_handshake_failures lists the failures with reason and peer address.
"""

import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

BANNER = b"BANNER-FROM-BACKEND"


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    other_ca = env.certs.ca("other-ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    evil_id, stranger_id = h.spiffe("evil", "mallory"), h.spiffe("misc", "stranger")
    web = env.certs.leaf("web", ca, [web_id])
    api = env.certs.leaf("api", ca, [api_id])
    evil = env.certs.leaf("evil", ca, [evil_id])
    stranger = env.certs.leaf("stranger", ca, [stranger_id])
    foreign = env.certs.leaf("foreign", other_ca, [web_id])
    expired = env.certs.leaf("expired", ca, [web_id], not_before=-2 * 86400,
                             not_after=-86400)
    future = env.certs.leaf("future", ca, [web_id], not_before=86400, not_after=2 * 86400)
    two_sans = env.certs.leaf("two-sans", ca, [web_id, stranger_id])
    no_san = env.certs.leaf("no-san", ca, [], dns=["web.example"])
    http_san = env.certs.leaf("http-san", ca, [], uris=["https://web.example/x"])
    impostor = env.certs.leaf("impostor", ca, [h.spiffe("shop", "not-api")])

    backend = env.echo("banner")
    in_port, out_port, out_bad_port = h.free_port(), h.free_port(), h.free_port()
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "to": [api_id],
         "ports": [backend.port]},
        {"name": "no-evil", "action": "deny", "from": [h.TD + "/ns/evil/*"]},
        {"name": "evil-allowed-too", "action": "allow", "from": [evil_id]}]})
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, backend.addr)], policy=policy,
                         extra=["--handshake-timeout", "1s"])
    imp_srv = env.tls_server(impostor, ca)
    web_sc = env.sidecar("web", web, ca, outbound=[
        (out_port, "127.0.0.1:%d" % in_port, api_id),
        (out_bad_port, imp_srv.addr, api_id)])

    def inbound():
        return api_sc.listener("inbound:127.0.0.1:%d" % in_port)

    def failures_now():
        return dict(inbound()["handshake_failures"])

    expected = {}
    client_ports = {}

    def expect_refusal(reason, what, attempt):
        before = failures_now()
        result = attempt()
        expected[reason] = expected.get(reason, 0) + 1

        def counted():
            return failures_now().get(reason, 0) >= before.get(reason, 0) + 1
        try:
            h.wait_for(counted, 5, what="%s counted" % reason)
            ok(True, "%s -> handshake_failures.%s" % (what, reason))
        except h.TestFailure:
            ok(False, "%s -> handshake_failures.%s (counters before %s, after %s)" % (
                what, reason, before, failures_now()))
        return result

    def tls_refused(cert, what, reason, send=b"ping\n"):
        def attempt():
            raw = h.connect(in_port, 5)
            client_ports[reason] = raw.getsockname()[1]
            raw.settimeout(5)
            got = b""
            try:
                s = h.tls_client_ctx(cert).wrap_socket(raw)
                s.sendall(send)
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
            except (OSError, Exception):  # noqa: BLE001 - alert, reset or timeout
                pass
            finally:
                raw.close()
            return got
        got = expect_refusal(reason, what, attempt)
        ok(BANNER not in got, "%s: no byte from the backend (got %r)" % (what, got[:60]))

    # A good caller first: proves the set-up works and gives the banner.
    good_ok, got, err = h.tls_attempt(in_port, web, ca)
    ok(good_ok and got.startswith(BANNER) and b"ping\n" in got,
       "a good caller gets the banner and its echo (%r %s)" % (got[:40], err))

    # TLS session resumption (HAProxy and nginx resume by default): the resumed
    # connection must still carry the caller's identity and be allowed.
    ctx = h.tls_client_ctx(web, ca)
    s1 = ctx.wrap_socket(h.connect(in_port, 5))
    first = s1.recv(100)
    sess = s1.session
    s1.close()
    s2 = ctx.wrap_socket(h.connect(in_port, 5), session=sess)
    s2.settimeout(5)
    try:
        second = s2.recv(100)
    except OSError as e:
        second = repr(e).encode()
    reused = s2.session_reused
    s2.close()
    ok(first.startswith(BANNER), "first connection of the resumption pair allowed")
    ok(second.startswith(BANNER), "a resumed TLS session (reused=%s) keeps the caller's "
       "identity and is allowed (got %r)" % (reused, second[:60]))
    time.sleep(0.2)
    backend_base = backend.accepted

    tls_refused(None, "no client certificate", "no_cert")
    tls_refused(foreign, "certificate from an unknown CA", "unknown_ca")
    tls_refused(expired, "expired certificate", "expired")
    tls_refused(future, "not-yet-valid certificate", "not_yet_valid")
    tls_refused(two_sans, "two SPIFFE URI SANs", "bad_san")
    tls_refused(no_san, "no URI SAN", "bad_san")
    tls_refused(http_san, "a non-spiffe URI SAN", "bad_san")

    # openssl s_client without -cert, as the brief asks (a second no_cert).
    def s_client():
        try:
            r = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % in_port,
                                "-quiet"], input=b"ping\n", stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=10)
        except subprocess.TimeoutExpired:
            return b"<s_client still connected after 10s>"
        return r.stdout
    got = expect_refusal("no_cert", "openssl s_client without -cert", s_client)
    ok(BANNER not in got, "s_client without cert: no byte from the backend (%r)" % got[:60])

    # Timeout: connect, send nothing; the sidecar must close within ~1s (+margin).
    def silent():
        s = h.connect(in_port, 10)
        client_ports["timeout"] = s.getsockname()[1]
        s.settimeout(8)
        t0 = time.monotonic()
        try:
            d = s.recv(100)
        except socket.timeout:
            d = b"<still open after 8s>"
        except OSError:
            d = b""
        dt = time.monotonic() - t0
        s.close()
        return d, dt
    (d, dt) = expect_refusal("timeout", "silent client with --handshake-timeout 1s", silent)
    ok(d == b"" and 0.7 < dt < 4, "silent client closed after %.2fs (got %r)" % (dt, d[:40]))

    # Garbage instead of a ClientHello.
    def garbage():
        s = h.connect(in_port, 5)
        client_ports["protocol"] = s.getsockname()[1]
        s.settimeout(5)
        got = b""
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
            got = h.read_all(s)
        except OSError:
            pass
        s.close()
        return got
    got = expect_refusal("protocol", "garbage bytes", garbage)
    ok(BANNER not in got, "garbage: no byte from the backend (%r)" % got[:60])

    # Policy refusals: a completed handshake, then a denial.
    st0 = api_sc.stats()
    for cert, what, rule in ((evil, "caller hit by deny rule no-evil", "no-evil"),
                             (stranger, "caller matching no rule (default deny)", None)):
        hs_ok, got, err = h.tls_attempt(in_port, cert, ca)
        ok(BANNER not in got, "%s gets no byte from the backend (got %r, %s)" % (
            what, got[:40], err))
    backend_accepts_before = backend.accepted
    time.sleep(0.3)

    def denied_settled():
        st = api_sc.stats()
        return st["policy"]["denied"] >= st0["policy"]["denied"] + 2 and st
    try:
        st = h.wait_for(denied_settled, 5, what="policy.denied += 2")
    except h.TestFailure:
        st = api_sc.stats()
    ok(st["policy"]["denied"] == st0["policy"]["denied"] + 2,
       "policy.denied += 2 (%r -> %r)" % (st0["policy"]["denied"], st["policy"]["denied"]))
    rules = {r["name"]: r for r in st["policy"]["rules"]}
    ok(rules["no-evil"]["hits"] == 1, "rule no-evil hits == 1 (%r)" % rules["no-evil"])
    ok(rules["evil-allowed-too"]["hits"] == 0,
       "deny before allow: evil-allowed-too hits == 0 (%r)" % rules["evil-allowed-too"])
    li = api_sc.listener("inbound:127.0.0.1:%d" % in_port, st)
    li0 = api_sc.listener("inbound:127.0.0.1:%d" % in_port, st0)
    ok(li["denied"] == li0["denied"] + 2, "listener denied += 2 (%r -> %r)" % (
        li0["denied"], li["denied"]))
    ok(backend.accepted == backend_accepts_before == backend_base,
       "the backend was never even connected for refused callers (accepts %d)" %
       backend.accepted)
    peers = {p["spiffe_id"]: p for p in st["peers"]}
    ok(peers.get(evil_id, {}).get("denied") == 1, "peers[evil].denied == 1 (%r)" %
       peers.get(evil_id))
    acc = [a for a in api_sc.access_logs() if a.get("peer_id") in (evil_id, stranger_id)]
    ok(len(acc) == 2 and all(a.get("verdict") == "deny" for a in acc),
       "two access lines with verdict deny (%r)" % acc)
    ok(any(a.get("rule") == "no-evil" and a.get("peer_id") == evil_id for a in acc),
       "evil's access line names rule no-evil")

    # Outbound: secure naming.
    before = web_sc.listener("outbound:127.0.0.1:%d" % out_bad_port)["handshake_failures"]
    s = h.connect(out_bad_port, 5)
    s.settimeout(5)
    got = b""
    try:
        s.sendall(b"hello\n")
        got = h.read_all(s)
    except OSError:
        pass
    s.close()
    ok(b"HELLO-FROM-TLS-SERVER" not in got and b"hello" not in got,
       "outbound to an impostor: client gets nothing from it (%r)" % got[:60])

    def wrong_counted():
        f = web_sc.listener("outbound:127.0.0.1:%d" % out_bad_port)["handshake_failures"]
        return f.get("wrong_identity", 0) == before.get("wrong_identity", 0) + 1 and f
    try:
        f = h.wait_for(wrong_counted, 5, what="wrong_identity")
        ok(True, "impostor upstream -> outbound handshake_failures.wrong_identity")
    except h.TestFailure:
        ok(False, "impostor upstream -> outbound handshake_failures.wrong_identity (%r)" %
           web_sc.listener("outbound:127.0.0.1:%d" % out_bad_port)["handshake_failures"])
    wst = web_sc.stats()
    rec = [r for r in wst.get("recent_handshake_failures", [])
           if r.get("reason") == "wrong_identity"]
    ok(rec and rec[0].get("spiffe_id") == impostor.id and
       h.norm_serial(rec[0].get("serial")) == impostor.serial(),
       "web's recent failure shows the impostor's id and serial (%r)" % rec[:1])

    # The totals, exactly.
    final = failures_now()
    h.log("inbound handshake_failures:", final)
    for reason, n in expected.items():
        ok(final.get(reason) == n, "handshake_failures.%s == %d (got %r)" % (
            reason, n, final.get(reason)))
    for reason in ("wrong_identity", "revoked"):
        ok(final.get(reason, 0) == 0, "inbound %s == 0 (got %r)" % (reason, final.get(reason)))
    for reason in ("no_cert", "unknown_ca", "expired", "not_yet_valid", "bad_san",
                   "wrong_identity", "timeout", "protocol", "revoked"):
        ok(reason in final, "handshake_failures has key %s" % reason)
    tot = st.get("handshake_failures") or {}
    if tot:
        ok(all(tot.get(r, 0) >= n for r, n in expected.items()),
           "top-level handshake_failures totals cover the inbound ones (%r)" % tot)

    # recent_handshake_failures: reason, peer address (our client port where we know it).
    st = api_sc.stats()
    rec = st.get("recent_handshake_failures", [])
    h.log("recent_handshake_failures (first 3):", rec[:3])
    reasons = [r.get("reason") for r in rec]
    for reason in expected:
        ok(reason in reasons, "recent_handshake_failures has a %s entry" % reason)
    for reason, port in client_ports.items():
        ent = [r for r in rec if r.get("reason") == reason]
        ok(any(r.get("peer_addr") == "127.0.0.1:%d" % port for r in ent),
           "recent %s entry has peer_addr 127.0.0.1:%d (%r)" % (
               reason, port, [r.get("peer_addr") for r in ent]))
    exp_ent = [r for r in rec if r.get("reason") == "expired"]
    ok(exp_ent and h.norm_serial(exp_ent[0].get("serial")) == expired.serial() and
       exp_ent[0].get("spiffe_id") == web_id,
       "expired entry shows the presented serial and SPIFFE ID (%r)" % exp_ent[:1])
    bs = [r for r in rec if r.get("reason") == "bad_san"]
    ok(bs and all(r.get("serial") for r in bs), "bad_san entries carry the serial")
    ok(len(rec) <= 64 * 8, "recent_handshake_failures is bounded (%d)" % len(rec))

    # Still healthy afterwards.
    good_ok, got, err = h.tls_attempt(in_port, web, ca)
    ok(good_ok and got.startswith(BANNER), "a good caller still works afterwards")
    e, d = h.echo_roundtrip(out_port, b"x" * 1000)
    ok(e.startswith(BANNER) and e.endswith(b"x" * 1000),
       "web -> api relay still works afterwards")
    ok.done()


if __name__ == "__main__":
    h.main(test, "refusals")
