#!/usr/bin/env python3
"""Nobody can become the control plane, and a control plane cannot un-revoke (issue 7,
item 1 and item 3). Each step performs an attack and asserts that it fails:

1. A local user who cannot read the state directory (`nobody`) runs tetherctl: it can
   read the bundle, but minting a token for the control plane's own identity, setting an
   allow-all policy and revoking all get 401 naming the missing credential, and nothing
   changed afterwards.
2. The operator, credential in hand, cannot mint a token for any identity in the reserved
   namespace ns/tether-system either.
3. State from before the fix: a certificate for the control plane's identity that the
   signing path issued (its record has no "via"), and a token for that identity. At the
   next start the certificate is revoked, and Identity.Sign refuses the token.
4. A fake control plane with that (revoked) certificate takes over the control plane's
   address: the sidecar completes TLS, sees the revoked serial and hangs up before it
   sends a single gRPC byte (so no snapshot of the attacker's can reach it).
5. The real control plane comes back from a backup taken before an intruder's certificate
   was revoked: the sidecar accepts the snapshot but keeps the revocation, and the
   intruder stays out.
"""

import hashlib
import json
import os
import shutil
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

TD = "cluster.local"
CONTROL_ID = "spiffe://%s/ns/tether-system/sa/tether-control" % TD
ADMIN_ID = "spiffe://%s/ns/tether-system/sa/tether-admin" % TD


def tls_echo(port, cert):
    """One line through the inbound listener with a client certificate; returns what came
    back up to the first newline (b"" when refused)."""
    try:
        with h.connect(port, timeout=5) as raw:
            with h.tls_client_ctx(cert).wrap_socket(raw) as s:
                s.sendall(b"hello through the mesh\n")
                got = b""
                while b"\n" not in got:
                    d = s.recv(4096)
                    if not d:
                        break
                    got += d
                return got
    except (OSError, ssl.SSLError):
        return b""


def add_legacy_records(state_dir, rogue, token_secret):
    """What the signing path left behind before the fix: an issue record without "via"
    for a control-plane certificate, and a token for the control plane's identity."""
    now = int(time.time())
    path = os.path.join(state_dir, "issued.json")
    doc = json.load(open(path)) if os.path.exists(path) else {"issued": []}
    doc["issued"].append({"serial": rogue.serial(), "spiffe_id": CONTROL_ID,
                          "not_after": now + 30 * 86400, "issued_at": now})
    with open(path, "w") as f:
        json.dump(doc, f)
    path = os.path.join(state_dir, "tokens.json")
    doc = json.load(open(path)) if os.path.exists(path) else {"tokens": []}
    doc["tokens"].append({"sha256": hashlib.sha256(token_secret.encode()).hexdigest(),
                          "spiffe_id": CONTROL_ID, "uses_left": 5, "expires_unix": None,
                          "created_unix": now})
    with open(path, "w") as f:
        json.dump(doc, f)


def test(env):
    ok = h.Checks()
    ctl = env.control(cert_ttl="1h")

    # 1. A local user without the credential.
    r = ctl.ctl("bundle", "get", user="nobody", check_rc=False)
    ok(r.returncode == 0 and "BEGIN CERTIFICATE" in r.stdout,
       "nobody can still read the trust bundle (%d %r)" % (r.returncode, r.stderr[-200:]))
    # In /tmp: nobody cannot enter the test's own directory.
    policy = "/tmp/tether-reserved-allow-all-%d.json" % os.getpid()
    with open(policy, "w") as f:
        json.dump({"default": "allow", "rules": []}, f)
    os.chmod(policy, 0o644)
    for args in (("token", "create", "--spiffe-id", CONTROL_ID),
                 ("token", "create", "--spiffe-id", h.spiffe("shop", "web")),
                 ("policy", "set", policy),
                 ("revoke", "0A")):
        r = ctl.ctl(*args, user="nobody", check_rc=False)
        ok(r.returncode == 1 and "401" in r.stderr and "operator credential" in r.stderr
           and "operator.token" in r.stderr,
           "nobody: tetherctl %s is refused with 401 naming the credential (%d %r)" % (
               args[0] + " " + args[1], r.returncode, r.stderr.strip()[-300:]))
    os.unlink(policy)
    ok(ctl.ctl("token", "list", as_json=True).get("tokens") == [], "no token was created")
    r = ctl.ctl("policy", "get", check_rc=False)
    ok(r.returncode != 0 or '"allow"' not in r.stdout, "the policy is unchanged: %r" %
       r.stdout[:200])
    ok(ctl.ctl("revocations", as_json=True).get("revocations") == [], "nothing was revoked")
    st, _ = h.http_get(ctl.api_port, "/v1/tokens", timeout=5,
                       headers={"Authorization": "Bearer " + "0" * 64})
    ok(st == 401, "a wrong credential gets 401 (%d)" % st)

    # 2. The operator cannot mint a reserved identity either.
    for sid in (CONTROL_ID, ADMIN_ID, "spiffe://%s/ns/tether-system/sa/anything" % TD):
        r = ctl.ctl("token", "create", "--spiffe-id", sid, check_rc=False)
        ok(r.returncode == 1 and "reserved" in r.stderr,
           "token create for %s is refused as reserved (%d %r)" % (sid, r.returncode,
                                                                 r.stderr.strip()[-200:]))

    # 3. State from before the fix.
    ctl.stop()
    ca = h.Cert("control-ca", os.path.join(ctl.state_dir, "ca.crt"),
                os.path.join(ctl.state_dir, "ca.key"))
    rogue = env.certs.leaf("rogue-control", ca, [CONTROL_ID])
    secret = "legacy-token-for-the-control-plane-identity-0123456789"
    add_legacy_records(ctl.state_dir, rogue, secret)
    ctl.restart()
    ok(any(e.get("count") == 1 for e in ctl.events("reserved_certificates_revoked")),
       "the start logs one reserved certificate revoked")
    revoked = [x["serial"] for x in ctl.ctl("revocations", as_json=True)["revocations"]]
    ok(revoked == [rogue.serial()], "the control-plane certificate issued through the "
       "signing path is revoked: %r" % revoked)
    tok = env.write("legacy.token", secret + "\n", mode=0o600)
    impostor = env.cp_sidecar("impostor", ctl, CONTROL_ID, tok, wait=False, outbound=[
        (h.free_port(), "127.0.0.1:9", h.spiffe("shop", "web"))])
    try:
        h.wait_for(lambda: any("reserved" in e.get("error", "") for e in
                               impostor.events("certificate_request_failed")), 15,
                   what="Identity.Sign to refuse the legacy token for the reserved identity")
    finally:
        h.log("impostor: " + impostor.stderr()[-1500:])
    ok(any(e.get("reason") == "reserved_identity" for e in ctl.events("sign_refused")),
       "the control plane refused Sign with reason reserved_identity")
    ok(not impostor.events("certificate_issued"), "no certificate was issued to the impostor")
    impostor.stop()

    # A mesh: the api sidecar, and a caller that gets through until it is revoked.
    ctl.set_policy({"default": "allow", "rules": []})
    echo = env.echo("echo")
    in_port = h.free_port()
    api_id = h.spiffe("shop", "api")
    api = env.cp_sidecar("api", ctl, api_id, ctl.token(api_id, "api"),
                         inbound=[(in_port, echo.addr)], workers=1)
    intruder = env.certs.leaf("intruder", ca, [h.spiffe("shop", "intruder")])
    got = h.wait_for(lambda: tls_echo(in_port, intruder) or None, 10,
                     what="the caller to get through before its revocation")
    ok(got.startswith(b"hello through the mesh"), "before the revocation it gets through")
    ctl.stop()
    backup = env.path("state-backup")
    shutil.copytree(ctl.state_dir, backup)
    ctl.restart()
    ctl.ctl("revoke", intruder.serial())
    version = ctl.stats()["version"]
    h.wait_for(lambda: any(e.get("spiffe_id") == api_id and
                           (e.get("acked_version") or 0) >= version for e in ctl.sidecars()),
               15, what="the revocation to be acked")
    ok(tls_echo(in_port, intruder) == b"", "revoked, the intruder is refused")

    # 4. A fake control plane with the revoked certificate on the control plane's address.
    ctl.stop()
    # It records whether a client that finished the handshake sent any bytes (a gRPC
    # client starts with the HTTP/2 preface "PRI * HTTP/2.0").
    fake = h.TlsServer(rogue, greeting=b"", port=ctl.sidecar_port)
    try:
        h.wait_for(lambda: any("revoked" in e.get("error", "") and rogue.serial() in
                               e.get("error", "") for e in api.events("control_unreachable")),
                   20, what="the sidecar to refuse the revoked control-plane certificate")
        time.sleep(0.5)
        ok(fake.handshakes >= 1, "the sidecar did reach the fake control plane (%d handshakes)"
           % fake.handshakes)
        ok(fake.received == b"", "and sent it nothing after the handshake (%r)" %
           fake.received[:40])
    finally:
        fake.stop()

    # 5. The control plane back from a backup that predates the intruder's revocation.
    shutil.rmtree(ctl.state_dir)
    shutil.copytree(backup, ctl.state_dir)
    connected = len(api.events("control_connected"))
    ctl.restart()
    h.wait_for(lambda: len(api.events("control_connected")) > connected, 20,
               what="the sidecar to reconnect to the restored control plane")
    version = ctl.stats()["version"]
    h.wait_for(lambda: any(e.get("spiffe_id") == api_id and
                           (e.get("acked_version") or 0) >= version for e in ctl.sidecars()),
               15, what="the restored snapshot to be acked")
    ok(intruder.serial() not in [x["serial"] for x in
                                 ctl.ctl("revocations", as_json=True)["revocations"]],
       "the restored control plane has forgotten the intruder's revocation")
    ok(tls_echo(in_port, intruder) == b"",
       "the sidecar still refuses the intruder: its revocations only grow")
    ok(api.alive() and ctl.alive(), "all processes still running")
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-reserved")
