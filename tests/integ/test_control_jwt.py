#!/usr/bin/env python3
"""Kubernetes projected service-account tokens as the third proof of identity (issue 9).

EC P-256 and RSA-2048 keys are made here (python3-cryptography); their JWK Set is the
control plane's --jwks, with --jwt-audience and --jwt-issuer. Tokens are shaped exactly as
Kubernetes projects them (aud, exp, iat, nbf, iss, kubernetes.io {namespace, pod,
serviceaccount}, sub).

1. Start-up: --jwks without --jwt-audience, and a JWK Set with a bad key, exit 2 with a
   message naming the flag, the file and the key.
2. A sidecar with --jwt-file (ES256) gets spiffe://TD/ns/shop/sa/web and /ready; an RS256
   token gets ns/shop/sa/api through a raw Sign (tt-sign); the same token signs again (a
   service-account token is not single-use); the issue record says via k8s-jwt.
3. Each attack, sent as a raw Identity.Sign, is refused and counted in the control plane's
   /stats by its reason, exactly once each: another audience, another issuer, a bad
   signature, alg none, HS256 keyed with the RSA public key's PEM, an expired exp, a
   future nbf, an unknown kid, the reserved namespace (asked for, and a tether-system
   token asking for a workload identity), and a token for sa web asking for sa api.
4. The JWK Set is read again when it changes: without the EC key, the ES256 token is
   refused (jwt_unknown_key); restored, it works.
5. The sidecar reads the file afresh: its first token expires soon after start; the file
   gets a fresh token; the sidecar is stopped (SIGSTOP) past its certificate's expiry and
   resumed: it signs again with the fresh token (an expired certificate falls back to the
   JWT), never with the expired one. Then its certificate is revoked: the refused renewal
   falls back to the token too, and the sidecar is ready with a new certificate.
6. Sidecar flags: --join-token with --jwt-file, and an unreadable --jwt-file, are refused
   at start with messages naming them.
"""

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

try:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
except ImportError:
    # Debian's python3-cryptography lives with the system python (DEPS.md).
    if os.path.realpath(sys.executable) != os.path.realpath(h.DEBIAN_PYTHON) and \
            os.access(h.DEBIAN_PYTHON, os.X_OK) and not os.environ.get("TT_JWT_REEXEC"):
        os.environ["TT_JWT_REEXEC"] = "1"
        os.execv(h.DEBIAN_PYTHON, [h.DEBIAN_PYTHON] + sys.argv)
    print("SKIP: python3-cryptography is missing (deploy/install-deps.sh installs it)")
    sys.exit(h.SKIP)

AUD = "tether-%d" % os.getpid()
ISS = "https://kubernetes.default.svc.cluster.local"
TD = "cluster.local"


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def int_bytes(n, width=None):
    return n.to_bytes(width or (n.bit_length() + 7) // 8, "big")


def jwk_ec(key, kid):
    nums = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64u(int_bytes(nums.x, 32)), "y": b64u(int_bytes(nums.y, 32))}


def jwk_rsa(key, kid):
    nums = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64u(int_bytes(nums.n)), "e": b64u(int_bytes(nums.e))}


def jwt(header, claims, alg, key=None, secret=None):
    """A compact JWS: header.claims.signature with alg ES256, RS256, HS256 or none."""
    signing_input = (b64u(json.dumps(header).encode()) + "." +
                     b64u(json.dumps(claims).encode())).encode()
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        sig = int_bytes(r, 32) + int_bytes(s, 32)
    elif alg == "RS256":
        sig = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "HS256":
        sig = hmac.new(secret, signing_input, hashlib.sha256).digest()
    else:
        sig = b""
    return signing_input.decode() + "." + b64u(sig)


def k8s_claims(ns="shop", sa="web", aud=AUD, iss=ISS, exp=None, nbf=None, iat=None):
    """Claims as the API server writes them into a projected token."""
    now = int(time.time())
    return {"aud": [aud], "exp": now + 3600 if exp is None else exp,
            "iat": now - 5 if iat is None else iat, "iss": iss,
            "kubernetes.io": {"namespace": ns,
                              "pod": {"name": "%s-7d9f8b6c5-x2x4q" % sa, "uid": str(uuid.uuid4())},
                              "serviceaccount": {"name": sa, "uid": str(uuid.uuid4())}},
            "nbf": now - 5 if nbf is None else nbf,
            "sub": "system:serviceaccount:%s:%s" % (ns, sa)}


def start_errors(env, ok, jwks_path, ec_key):
    """tether-control refuses bad JWT flags and files at start, with exit status 2."""
    def start(name, extra):
        argv = [env.control_bin, "--state-dir", env.path(name), "--listen-sidecars",
                "127.0.0.1:%d" % h.free_port(), "--listen-api", "127.0.0.1:%d" % h.free_port()]
        return h.run(argv + extra, timeout=15, check_rc=False)

    r = start("err1-state", ["--jwks", jwks_path])
    ok(r.returncode == 2 and b"--jwt-audience" in r.stderr,
       "--jwks without --jwt-audience: exit 2 naming --jwt-audience (%d, %r)" % (
           r.returncode, r.stderr[-300:]))
    bad = jwk_ec(ec_key, "short")
    bad["x"] = b64u(b"\x01" * 31)  # a coordinate one byte short
    bad_path = env.write("bad-jwks.json", json.dumps({"keys": [bad]}))
    r = start("err2-state", ["--jwks", bad_path, "--jwt-audience", AUD])
    err = r.stderr.decode(errors="replace")
    ok(r.returncode == 2 and bad_path in err and 'keys[0] (kid "short")' in err and
       "32 bytes" in err,
       "a JWK Set with a short EC coordinate: exit 2 naming the file and the key (%d, %r)" % (
           r.returncode, err[-400:]))
    r = start("err3-state", ["--jwt-issuer", ISS])
    ok(r.returncode == 2 and b"needs --jwks" in r.stderr,
       "--jwt-issuer without --jwks: exit 2 (%d, %r)" % (r.returncode, r.stderr[-300:]))


def test(env):
    ok = h.Checks()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_other = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = [jwk_ec(ec_key, "ec1"), jwk_rsa(rsa_key, "rsa1")]
    jwks_path = env.write("jwks.json", json.dumps({"keys": keys}))

    # --- 1. start-up errors ---------------------------------------------------------
    start_errors(env, ok, jwks_path, ec_key)

    ctl = env.control(cert_ttl="6s", extra=["--jwks", jwks_path, "--jwt-audience", AUD,
                                            "--jwt-issuer", ISS])
    bundle = ctl.bundle()
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")

    # --- 2. a sidecar with --jwt-file -----------------------------------------------
    es_hdr = {"alg": "ES256", "kid": "ec1"}
    web_tok = env.write("web.jwt", jwt(es_hdr, k8s_claims(), "ES256", ec_key) + "\n", 0o600)
    web = env.cp_sidecar("web", ctl, web_id, None, jwt=web_tok, bundle=bundle,
                         inbound=[(h.free_port(), "127.0.0.1:9")])
    ident = web.stats()["identity"]
    ok(ident.get("spiffe_id") == web_id, "the sidecar with --jwt-file is ready as %s (%r)" % (
        web_id, ident.get("spiffe_id")))
    signed = [r for r in ctl.events("certificate_signed") if r.get("spiffe_id") == web_id]
    ok(signed and signed[0].get("proof") == "k8s_sa_token",
       "the control plane signed it with proof k8s_sa_token (%r)" % signed[:1])
    idents = ctl.ctl("identities", as_json=True)
    rec = [i for i in idents.get("identities", []) if
           h.norm_serial(i.get("serial")) == h.norm_serial(ident.get("serial"))]
    ok(rec and rec[0].get("via") == "k8s-jwt",
       "the issue record says via k8s-jwt (%r)" % rec[:1])

    rs_tok = env.write("api.jwt", jwt({"alg": "RS256", "kid": "rsa1"}, k8s_claims(sa="api"),
                                      "RS256", rsa_key))
    for i in range(2):
        r = h.tt_sign(ctl, api_id, jwt=rs_tok, bundle=bundle)
        ok(r["code"] == 0 and r["serial"], "RS256 token for sa api, Sign #%d: OK (%r)" % (
            i + 1, r))
    nokid = env.write("nokid.jwt", jwt({"alg": "ES256"}, k8s_claims(), "ES256", ec_key))
    r = h.tt_sign(ctl, web_id, jwt=nokid, bundle=bundle)
    ok(r["code"] == 0, "an ES256 token without kid is tried against the keys: OK (%r)" % r)

    # --- 3. attacks, each refused and counted by reason ------------------------------
    now = int(time.time())
    pub_pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    reserved_id = "spiffe://%s/ns/tether-system/sa/tether-admin" % TD
    attacks = [
        ("other audience", web_id, jwt(es_hdr, k8s_claims(aud="vault"), "ES256", ec_key),
         "jwt_audience"),
        ("other issuer", web_id, jwt(es_hdr, k8s_claims(iss="https://evil.example"), "ES256",
                                     ec_key), "jwt_issuer"),
        ("bad signature", web_id, jwt(es_hdr, k8s_claims(), "ES256", ec_other), "jwt_signature"),
        ("alg none", web_id, jwt({"alg": "none", "kid": "ec1"}, k8s_claims(), "none"),
         "jwt_alg"),
        ("HS256 keyed with the public key PEM", web_id,
         jwt({"alg": "HS256", "kid": "rsa1"}, k8s_claims(), "HS256", secret=pub_pem),
         "jwt_alg"),
        ("expired exp", web_id, jwt(es_hdr, k8s_claims(exp=now - 3600, nbf=now - 7200,
                                                       iat=now - 7200), "ES256", ec_key),
         "jwt_expired"),
        ("future nbf", web_id, jwt(es_hdr, k8s_claims(nbf=now + 600), "ES256", ec_key),
         "jwt_not_yet_valid"),
        ("unknown kid", web_id, jwt({"alg": "ES256", "kid": "gone"}, k8s_claims(), "ES256",
                                    ec_key), "jwt_unknown_key"),
        ("reserved namespace", reserved_id,
         jwt(es_hdr, k8s_claims(ns="tether-system", sa="tether-admin"), "ES256", ec_key),
         "reserved_identity"),
        ("tether-system token for a workload id", web_id,
         jwt(es_hdr, k8s_claims(ns="tether-system", sa="tether-admin"), "ES256", ec_key),
         "reserved_identity"),
        ("sa web token asking for sa api", api_id, jwt(es_hdr, k8s_claims(), "ES256", ec_key),
         "identity_mismatch"),
    ]
    for i, (what, sid, tok, reason) in enumerate(attacks):
        path = env.write("attack-%d.jwt" % i, tok, 0o600)
        before = ctl.stats().get("refusals", {}).get(reason, 0)
        r = h.tt_sign(ctl, sid, jwt=path, bundle=bundle)
        after = ctl.stats().get("refusals", {}).get(reason, 0)
        ok(r["code"] != 0 and not r["serial"] and r["details"].startswith(reason + ":"),
           "%s: refused with %s (%r)" % (what, reason, r))
        ok(after == before + 1, "%s: /stats refusals[%s] went %d -> %d" % (what, reason, before,
                                                                         after))
    logged = {r.get("reason") for r in ctl.events("sign_refused")}
    ok({a[3] for a in attacks} <= logged, "every reason is logged as sign_refused (%r)" % logged)
    ok(not any(("eyJ" in str(r)) for r in ctl.logs()), "no token text in the control's log")

    # --- 4. the JWK Set is read again when it changes --------------------------------
    good = env.write("good.jwt", jwt(es_hdr, k8s_claims(), "ES256", ec_key))
    env.write("jwks.json", json.dumps({"keys": [keys[1]]}))
    os.utime(jwks_path, (now + 5, now + 5))
    r = h.tt_sign(ctl, web_id, jwt=good, bundle=bundle)
    ok(r["details"].startswith("jwt_unknown_key:"),
       "without the EC key in the JWK Set, the ES256 token is refused (%r)" % r)
    env.write("jwks.json", json.dumps({"keys": keys}))
    os.utime(jwks_path, (now + 10, now + 10))
    r = h.tt_sign(ctl, web_id, jwt=good, bundle=bundle)
    ok(r["code"] == 0, "with the key back, it is accepted again (%r)" % r)
    ok(len(ctl.events("jwks_reloaded")) >= 2, "the control logged jwks_reloaded")
    web.stop()

    # --- 5. the sidecar reads the file afresh ------------------------------------------
    # The first token stops being accepted (exp + 60 s skew) about 8 s from now.
    now = int(time.time())
    short = jwt(es_hdr, k8s_claims(exp=now - 52, iat=now - 60, nbf=now - 60), "ES256", ec_key)
    tok_path = env.write("rotating.jwt", short, 0o600)
    sc = env.cp_sidecar("web2", ctl, web_id, None, jwt=tok_path, bundle=bundle,
                        inbound=[(h.free_port(), "127.0.0.1:9")])
    first_serial = sc.stats()["identity"]["serial"]
    # kubelet rotates the token: a fresh one, written the way kubelet does (rename).
    env.write("rotating.jwt", jwt(es_hdr, k8s_claims(), "ES256", ec_key) + "\n", 0o600)
    expired_before = ctl.stats().get("refusals", {}).get("jwt_expired", 0)
    # Stopped past the certificate's expiry (6 s) and the first token's (about 8 s).
    sc.signal(signal.SIGSTOP)
    time.sleep(max(0.0, now + 9 - time.time()))
    sc.signal(signal.SIGCONT)

    def resigned():
        s = sc.stats()["identity"].get("serial")
        return s if s and s != first_serial else False
    try:
        h.wait_for(resigned, 30, 0.2, "a new certificate after the expired one")
        jwt_signed = [r for r in ctl.events("certificate_signed")
                      if r.get("spiffe_id") == web_id and
                      h.norm_serial(r.get("serial")) == h.norm_serial(sc.stats()["identity"]
                                                                      ["serial"])]
        ok(jwt_signed and jwt_signed[0].get("proof") == "k8s_sa_token",
           "with its certificate expired the sidecar signed again with the token (%r)" %
           jwt_signed[:1])
    except h.TestFailure as e:
        ok(False, "no new certificate after expiry: %s; sidecar control: %r" % (
            e, sc.stats()["server"]["control"]))
    expired_after = ctl.stats().get("refusals", {}).get("jwt_expired", 0)
    ok(expired_after == expired_before,
       "the expired first token was never sent again (jwt_expired %d -> %d): the file is "
       "read afresh" % (expired_before, expired_after))
    sc.wait_ready(15)

    # Revoked: renewal with the certificate is refused, the token still proves web.
    serial = sc.stats()["identity"]["serial"]
    revoked_not_after = sc.stats()["identity"]["not_after"]
    ctl.ctl("revoke", serial)
    try:
        h.wait_for(lambda: sc.stats()["identity"].get("serial") not in (None, "", serial),
                   30, 0.2, "a new certificate after revocation")
        new = h.norm_serial(sc.stats()["identity"]["serial"])
        via = [r.get("proof") for r in ctl.events("certificate_signed")
               if h.norm_serial(r.get("serial")) == new]
        ok(via == ["k8s_sa_token"], "after revocation the sidecar was re-issued with the token "
           "(proof %r)" % via)
        ok(any(r.get("event") == "certificate_renewal_failed" for r in sc.logs()),
           "the sidecar logged certificate_renewal_failed and fell back to the token")
        # At the renewal time, not only once the revoked certificate has expired.
        rec = [i for i in ctl.ctl("identities", as_json=True).get("identities", [])
               if h.norm_serial(i.get("serial")) == new]
        ok(rec and rec[0].get("via") == "k8s-jwt" and
           rec[0].get("issued_at", 1 << 62) < revoked_not_after,
           "the token was used at once, before the revoked certificate expired (%r, not_after "
           "%r)" % (rec[:1], revoked_not_after))
        sc.wait_ready(15)
    except h.TestFailure as e:
        ok(False, "no new certificate after revocation: %s; control: %r" % (
            e, sc.stats()["server"]["control"]))
    sc.stop()

    # --- 6. sidecar flags ----------------------------------------------------------------
    join = ctl.token(web_id)
    base = [env.sidecar_bin, "--control", ctl.addr, "--control-bundle", bundle, "--spiffe-id",
            web_id, "--inbound", "127.0.0.1:%d=127.0.0.1:9" % h.free_port(), "--admin",
            "127.0.0.1:%d" % h.free_port()]
    r = subprocess.run(base + ["--join-token", join, "--jwt-file", tok_path],
                       capture_output=True, timeout=15)
    ok(r.returncode != 0 and b"exclude each other" in r.stderr,
       "--join-token with --jwt-file is refused (%d, %r)" % (r.returncode, r.stderr[-300:]))
    missing = env.path("no-such.jwt")
    r = subprocess.run(base + ["--jwt-file", missing], capture_output=True, timeout=15)
    ok(r.returncode != 0 and missing.encode() in r.stderr and b"--jwt-file" in r.stderr,
       "an unreadable --jwt-file is refused at start, naming it (%d, %r)" % (
           r.returncode, r.stderr[-300:]))
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-jwt")
