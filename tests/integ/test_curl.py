#!/usr/bin/env python3
"""curl as an mTLS client of an inbound listener, and as a plaintext client of the
outbound -> inbound chain, both in front of an HTTP backend.

curl -k --cert --key https://inbound -> 200 from the backend, the access line names
curl's identity; curl without a certificate fails and is counted as no_cert; curl with
the CA (--cacert) still needs -k (URI-SAN-only certificates) but verifies the chain;
curl http://outbound -> 200 through both sidecars, several requests on one keep-alive
connection, and a 2 MB body intact.
"""

import hashlib
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def curl(args, timeout=20):
    r = subprocess.run(["curl", "-sS", "--max-time", "10"] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    curl_id, api_id, web_id = (h.spiffe("tools", "curl"), h.spiffe("shop", "api"),
                               h.spiffe("shop", "web"))
    cc = env.certs.leaf("curl", ca, [curl_id])
    api = env.certs.leaf("api", ca, [api_id])
    web = env.certs.leaf("web", ca, [web_id])
    backend = env.http()
    in_port, out_port = h.free_port(), h.free_port()
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "callers", "action": "allow", "from": [curl_id, web_id],
         "ports": [backend.port]}]})
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, backend.addr)], policy=policy)
    web_sc = env.sidecar("web", web, ca, outbound=[(out_port, "127.0.0.1:%d" % in_port,
                                                     api_id)])
    url = "https://127.0.0.1:%d/" % in_port

    rc, out, err = curl(["-k", "--cert", cc.crt, "--key", cc.key, "-w", "\n%{http_code}",
                         url])
    ok(rc == 0 and out == b"hello from backend\n\n200",
       "curl -k --cert --key https://inbound -> 200 and the body (rc %d, %r, %s)" % (
           rc, out[-60:], err.strip()))
    rc, out, err = curl(["-k", "--cacert", ca.crt, "--cert", cc.crt, "--key", cc.key, url])
    ok(rc == 0 and out == b"hello from backend\n", "with --cacert too (rc %d %s)" % (
        rc, err.strip()))
    rc, out, err = curl(["-k", "--tlsv1.2", "--tls-max", "1.2", "--cert", cc.crt, "--key",
                         cc.key, url])
    ok(rc == 0 and out == b"hello from backend\n", "TLS 1.2 client works (rc %d %s)" % (
        rc, err.strip()))
    rc, out, err = curl(["-k", "--tlsv1.2", "--tls-max", "1.2", "--ciphers",
                         "ECDHE-ECDSA-AES128-SHA", "--cert", cc.crt, "--key", cc.key, url])
    ok(rc != 0 and b"hello" not in out,
       "TLS 1.2 with a CBC (non-AEAD) suite is refused (rc %d %s)" % (rc, err.strip()[:80]))
    rc, out, err = curl(["-k", url])
    ok(rc != 0 and b"hello" not in out, "curl without a client cert is refused (rc %d)" % rc)

    def no_cert_counted():
        li = api_sc.listener("inbound:127.0.0.1:%d" % in_port)
        return li["handshake_failures"].get("no_cert", 0) >= 1
    try:
        h.wait_for(no_cert_counted, 5, what="no_cert")
        ok(True, "curl without a cert counted as no_cert")
    except h.TestFailure:
        ok(False, "curl without a cert counted as no_cert (%r)" % api_sc.listener(
            "inbound:")["handshake_failures"])

    acc = h.wait_for(lambda: [a for a in api_sc.access_logs() if a.get("peer_id") == curl_id],
                     5, what="curl's access line")
    ok(acc[0].get("verdict") == "allow" and acc[0].get("rule") == "callers",
       "access line for curl: allow by rule callers (%r)" % acc[0])

    # Through the outbound sidecar: plain HTTP in, mTLS between the sidecars.
    purl = "http://127.0.0.1:%d" % out_port
    rc, out, err = curl(["-w", "\n%{http_code}", purl + "/"])
    ok(rc == 0 and out == b"hello from backend\n\n200", "curl http://outbound -> 200 (%d %r %s)"
       % (rc, out[-40:], err.strip()))
    rc, out, err = curl(["-w", "%{num_connects}\n", purl + "/", purl + "/", purl + "/"])
    ok(rc == 0 and out.count(b"hello from backend") == 3 and out.endswith(b"0\n"),
       "three requests on one keep-alive connection (%r)" % out[-80:])
    rc, out, err = curl([purl + "/bytes/2097152"], timeout=60)
    ok(rc == 0 and hashlib.sha256(out).digest() ==
       hashlib.sha256(h.pattern_bytes(2097152)).digest(), "2 MB body intact (%d bytes)" %
       len(out))
    ok(backend.requests == 3 + 1 + 3 + 1, "the backend served 8 requests (%d)" %
       backend.requests)
    ok(web_sc.alive() and api_sc.alive(), "sidecars alive")
    ok.done()


if __name__ == "__main__":
    h.main(test, "curl")
