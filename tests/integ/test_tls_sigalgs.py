#!/usr/bin/env python3
"""No SHA-1 signatures, on either side of a sidecar's TLS (DESIGN.md "Certificates and
trust"), checked with OpenSSL's own client and server.

Attacks, each of which must fail:
1. A TLS 1.2 client with an RSA certificate that will sign its CertificateVerify only with
   RSA-PKCS1-SHA1 (`openssl s_client -tls1_2 -client_sigalgs RSA+SHA1`) connects to an
   inbound listener. Before the fix the CertificateRequest offered rsa_pkcs1_sha1 and the
   client was admitted; now it finds nothing it may sign with and is refused.
2. A TLS 1.2 server that accepts only a SHA-1 client signature
   (`openssl s_server -client_sigalgs RSA+SHA1`) is dialled by an outbound sidecar with an
   RSA identity: the sidecar must not sign with SHA-1, so no connection gets through.
And what the peers see: the CertificateRequest (TLS 1.2 and 1.3) and the sidecar's
ClientHello list no SHA-1 algorithm and do list ed25519 (`-trace`). A control client that
may sign with RSA+SHA256 is admitted, so the refusal is about SHA-1 alone.
"""

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

SHA1 = re.compile(r"\b(rsa_pkcs1_sha1|ecdsa_sha1|dsa_sha1)\b|\(0x0[23]0[123]\)")


def s_client(port, cert, *args):
    """openssl s_client with cert (SHA-1 allowed on its side: security level 0); returns
    (stdout+stderr text, handshake completed). -brief prints CONNECTION ESTABLISHED only
    once the handshake completed."""
    cmd = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-cert", cert.crt,
           "-key", cert.key, "-cipher", "DEFAULT:@SECLEVEL=0", "-brief"] + list(args)
    r = subprocess.run(cmd, input=b"ping\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=15)
    out = r.stdout.decode(errors="replace")
    return out, "CONNECTION ESTABLISHED" in out


def sigalg_list(trace, message):
    """The signature algorithms listed after `message` in an openssl -trace output."""
    i = trace.find(message)
    if i < 0:
        return []
    block = trace[i:]
    j = block.find("signature_algorithms")
    if j < 0:
        return []
    names = []
    for line in block[j:].splitlines()[1:]:
        m = re.match(r"\s+([a-z0-9_]+) \(0x[0-9a-f]{4}\)$", line)
        if not m:
            break
        names.append(m.group(1))
    return names


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    api_id, web_id = h.spiffe("shop", "api"), h.spiffe("shop", "web")
    api = env.certs.leaf("api", ca, [api_id])
    web_rsa = env.certs.leaf("web-rsa", ca, [web_id], key_type="rsa2048")
    echo = env.echo("echo")
    in_port = h.free_port()
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, echo.addr)], workers=1)

    # What the CertificateRequest offers, in TLS 1.2 and 1.3.
    for version in ("-tls1_2", "-tls1_3"):
        out, _ = s_client(in_port, web_rsa, version, "-trace")
        algs = sigalg_list(out, "CertificateRequest")
        ok(algs and not any(SHA1.search(a + " ") for a in algs) and "ed25519" in algs,
           "%s CertificateRequest offers no SHA-1 and offers ed25519: %s" % (version, algs))

    # 1. The SHA-1-only client is refused; the same client allowed SHA-256 is admitted.
    before = api_sc.listener("inbound:")
    allowed_before = len([a for a in api_sc.access_logs() if a.get("verdict") == "allow"])
    out, established = s_client(in_port, web_rsa, "-tls1_2", "-client_sigalgs", "RSA+SHA1")
    ok(not established, "TLS 1.2 client signing only RSA-PKCS1-SHA1 is refused (%s)" %
       out.strip().splitlines()[-1:])
    h.wait_for(lambda: api_sc.listener("inbound:")["closed"] > before["closed"], 5, 0.05,
               "the refused connection to close")
    li = api_sc.listener("inbound:")
    ok(li["handshakes"] == before["handshakes"] and sum(li["handshake_failures"].values()) >
       sum(before["handshake_failures"].values()),
       "the refusal is a handshake failure, no handshake: %s" % li["handshake_failures"])
    allowed = [a for a in api_sc.access_logs() if a.get("verdict") == "allow"]
    ok(len(allowed) == allowed_before, "no access line allows the SHA-1 client")
    out, established = s_client(in_port, web_rsa, "-tls1_2", "-client_sigalgs", "RSA+SHA256")
    ok(established, "the same client signing with RSA+SHA256 is admitted")

    # 2. The outbound sidecar with an RSA identity against a server that wants SHA-1.
    srv_port, out_port = h.free_port(), h.free_port()
    srv = env.proc("s_server", [
        "openssl", "s_server", "-accept", "127.0.0.1:%d" % srv_port, "-tls1_2",
        "-cert", api.crt, "-key", api.key, "-CAfile", ca.crt, "-Verify", "2",
        "-client_sigalgs", "RSA+SHA1", "-cipher", "DEFAULT:@SECLEVEL=0", "-trace"],
        stdin=subprocess.PIPE)
    h.wait_for(lambda: _listening(srv_port), 10, 0.05, "s_server to listen")
    web_sc = env.sidecar("web", web_rsa, ca, workers=1,
                         outbound=[(out_port, "127.0.0.1:%d" % srv_port, api_id)])
    s = h.connect(out_port, 5)
    try:
        s.sendall(b"ping\n")
        s.settimeout(5)
        got = h.read_all(s)
    except OSError:
        got = b""
    finally:
        s.close()
    time.sleep(0.3)
    with open(srv.out_path, "rb") as f:
        trace = f.read().decode(errors="replace")
    hello = sigalg_list(trace, "ClientHello")
    ok(hello and not any(SHA1.search(a + " ") for a in hello) and "ed25519" in hello,
       "the sidecar's ClientHello offers no SHA-1 and offers ed25519: %s" % hello)
    ok("CertificateVerify" not in trace or not re.search(
        r"CertificateVerify.*?\n\s+Signature Algorithm: rsa_pkcs1_sha1", trace, re.S),
       "the sidecar never signed a CertificateVerify with rsa_pkcs1_sha1")
    lo = web_sc.listener("outbound:")
    ok(lo["handshakes"] == 0 and sum(lo["handshake_failures"].values()) >= 1,
       "outbound: no handshake completed against the SHA-1-only server (%d, %s)" % (
           lo["handshakes"], lo["handshake_failures"]))
    ok(got == b"", "no bytes came back through the refused connection (%r)" % got[:80])
    ok.done()


def _listening(port):
    try:
        h.connect(port, 1).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    h.main(test, "tls-sigalgs")
