#!/usr/bin/env python3
"""Identities of every supported key type work end to end between two sidecars.

The attack this guards against: an Ed25519 identity was accepted at start, and then every
sidecar-to-sidecar handshake failed with a bare "TLS protocol error", because the
CertificateRequest (and the ClientHello) did not offer ed25519. For RSA-2048, P-256,
P-384 and Ed25519 leaves, and for a pair that mixes key types, a client's bytes go
client -> outbound sidecar -> mTLS -> inbound sidecar -> echo backend and back, both
sidecars count a completed handshake and no handshake failure, and the inbound sidecar
saw the caller's SPIFFE ID. A TLS 1.2 client with an Ed25519 certificate (python ssl) is
admitted too: the TLS 1.2 CertificateRequest offers ed25519 as well.
"""

import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PAIRS = [("rsa2048", "rsa2048"), ("p256", "p256"), ("p384", "p384"), ("ed25519", "ed25519"),
         ("ed25519", "rsa2048"), ("p384", "ed25519")]


def hs_failures(li):
    return sum(li.get("handshake_failures", {}).values())


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    echo = env.echo("echo")
    for web_kt, api_kt in PAIRS:
        tag = "%s-to-%s" % (web_kt, api_kt)
        web_id, api_id = h.spiffe("shop", "web-" + web_kt), h.spiffe("shop", "api-" + api_kt)
        web = env.certs.leaf("web-" + tag, ca, [web_id], key_type=web_kt)
        api = env.certs.leaf("api-" + tag, ca, [api_id], key_type=api_kt)
        in_port, out_port = h.free_port(), h.free_port()
        api_sc = env.sidecar("api-" + tag, api, ca, inbound=[(in_port, echo.addr)], workers=1)
        web_sc = env.sidecar("web-" + tag, web, ca, workers=1,
                             outbound=[(out_port, "127.0.0.1:%d" % in_port, api_id)])
        payload = h.pattern_bytes(4096, seed=3)
        try:
            got, _ = h.echo_roundtrip(out_port, payload, timeout=10)
        except (OSError, h.TestFailure) as e:
            got = b""
            h.log("%s: %r" % (tag, e))
        ok(got == payload, "%s: bytes echoed through the pair (%d of %d)" % (
            tag, len(got), len(payload)))
        lin, lout = api_sc.listener("inbound:"), web_sc.listener("outbound:")
        ok(lin["handshakes"] >= 1 and hs_failures(lin) == 0,
           "%s: inbound handshakes %d, failures %s" % (tag, lin["handshakes"],
                                                      lin.get("handshake_failures")))
        ok(lout["handshakes"] >= 1 and hs_failures(lout) == 0,
           "%s: outbound handshakes %d, failures %s" % (tag, lout["handshakes"],
                                                       lout.get("handshake_failures")))
        peers = [a.get("peer_id") for a in api_sc.access_logs()]
        ok(web_id in peers, "%s: the inbound access line names the caller %s (%s)" % (
            tag, web_id, peers))
        if web_kt == "ed25519" and api_kt == "ed25519":
            # TLS 1.2 as well: a python client with an Ed25519 certificate.
            ctx = h.tls_client_ctx(web, ca)
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            raw = h.connect(in_port, 5)
            try:
                s = ctx.wrap_socket(raw)
                s.sendall(b"tls12\n")
                version = s.version()
                data = s.recv(100)
                s.close()
            except (ssl.SSLError, OSError) as e:
                version, data = repr(e), b""
                raw.close()
            ok(version == "TLSv1.2" and data == b"tls12\n",
               "ed25519 over TLS 1.2 from python ssl: %s, echoed %r" % (version, data))
        web_sc.stop()
        api_sc.stop()
    ok.done()


if __name__ == "__main__":
    h.main(test, "tls-keytypes")
