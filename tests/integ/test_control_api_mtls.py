#!/usr/bin/env python3
"""The operator API off loopback: mTLS with an admin certificate, nothing else.

tether-control runs with two --listen-api: 127.0.0.1 (plaintext, as always) and 0.0.0.0
(not loopback: mTLS only), reached at 127.0.0.1:PORT. Proves: the admin certificate is
bootstrapped on the control host with `tetherctl admin-cert create` over the loopback API
(key 0600, made by tetherctl, recorded as an issued identity), and refused over mTLS;
over https:// with it every command works (token create, policy set/get, bundle get,
identities); http:// to the mTLS port fails with a hint; https:// without --cert/--key/
--cacert is a usage-clear error; a client certificate from a foreign CA is refused; an
admin certificate that is no longer an --admin-id (restart with another one) gets 403
naming the identity; a revoked admin certificate is refused; SIGTERM stops cleanly.
"""

import json
import os
import signal
import stat
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

ADMIN = "spiffe://cluster.local/ns/tether-system/sa/tether-admin"
OPS = "spiffe://cluster.local/ns/tether-system/sa/ops-alice"


STATE_DIR = None  # the control plane's, once it runs


def ctl(env, api, *args, creds=None, extra_env=None):
    """tetherctl --api api [--cert --key --cacert] ARGS -> CompletedProcess (decoded)."""
    argv = [env.tetherctl_bin, "--api", api]
    if creds:
        argv += ["--cert", creds[0], "--key", creds[1], "--cacert", creds[2]]
    argv += [str(a) for a in args]
    e = dict(os.environ)
    for k in ("TETHER_API", "TETHER_CERT", "TETHER_KEY", "TETHER_CACERT"):
        e.pop(k, None)
    if STATE_DIR:  # the loopback API's credential (https:// ignores it)
        e["TETHER_STATE_DIR"] = STATE_DIR
    e.update(extra_env or {})
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30,
                       env=e)
    r.stdout = r.stdout.decode(errors="replace")
    r.stderr = r.stderr.decode(errors="replace")
    h.log("tetherctl %s -> %d %s" % (" ".join(map(str, args)), r.returncode,
                                     r.stderr.strip()[:300]))
    return r


def admin_cert(env, control, spiffe_id, prefix):
    r = ctl(env, control.api, "admin-cert", "create", "--spiffe-id", spiffe_id, "--out",
            env.path(prefix))
    h.check(r.returncode == 0, "admin-cert create failed: %s" % r.stderr)
    p = env.path(prefix)
    return (p + ".crt", p + ".key", p + ".ca.crt"), r


def test(env):
    ok = h.Checks()
    mport = h.free_port()
    mtls = "https://127.0.0.1:%d" % mport
    global STATE_DIR
    control = env.control(extra=["--listen-api", "0.0.0.0:%d" % mport,
                                 "--admin-id", ADMIN, "--admin-id", OPS])
    STATE_DIR = control.state_dir
    h.wait_for(lambda: h.connect(mport, 1).close() is None, 10, 0.05, "the mTLS port")
    started = [e for e in control.events("api_listening")]
    ok(any(e.get("transport") == "mtls" and e.get("port") == mport for e in started) and
       any(e.get("transport") == "plaintext" for e in started),
       "both listeners are up, one plaintext, one mTLS: %s" % started)

    # 1. Bootstrap on the control host: the loopback API signs tetherctl's CSR.
    creds, r = admin_cert(env, control, ADMIN, "admin")
    ok(all(os.path.exists(p) for p in creds), "PREFIX.crt/.key/.ca.crt are written")
    ok(stat.S_IMODE(os.stat(creds[1]).st_mode) == 0o600, "the key is mode 0600")
    ok("BEGIN CERTIFICATE" in open(creds[0]).read(), "PREFIX.crt holds a certificate")
    ok(open(creds[2]).read().strip() == control.ctl("bundle", "get").stdout.strip(),
       "PREFIX.ca.crt is the trust bundle")
    admin_serial = r.stdout.rsplit("serial ", 1)[-1].strip(" )\n")
    idents = control.ctl("identities", as_json=True)["identities"]
    ok(any(i.get("spiffe_id") == ADMIN and h.norm_serial(i.get("serial", "")) ==
           h.norm_serial(admin_serial) for i in idents),
       "the admin certificate is recorded as an issued identity (%s)" % admin_serial)
    ops_creds, _ = admin_cert(env, control, OPS, "ops")
    r = ctl(env, control.api, "admin-cert", "create", "--spiffe-id",
            "spiffe://cluster.local/ns/shop/sa/web", "--out", env.path("web"))
    ok(r.returncode == 1 and "not an admin identity" in r.stderr and
       not os.path.exists(env.path("web.key")),
       "a non-admin identity is refused and nothing is written: %r" % r.stderr.strip())

    # 2. Over mTLS with the admin certificate everything works.
    r = ctl(env, mtls, "token", "create", "--spiffe-id", "spiffe://cluster.local/ns/a/sa/b",
            creds=creds)
    ok(r.returncode == 0 and len(r.stdout.split()) == 1, "token create over https works")
    doc = {"default": "deny", "rules": []}
    pol = env.write("p.json", json.dumps(doc))
    r = ctl(env, mtls, "policy", "set", pol, creds=creds)
    ok(r.returncode == 0, "policy set over https works: %s" % r.stderr.strip())
    r = ctl(env, mtls, "policy", "get", creds=creds)
    ok(r.returncode == 0 and json.loads(r.stdout) == doc, "policy get returns it")
    r = ctl(env, mtls, "bundle", "get", extra_env={
        "TETHER_CERT": creds[0], "TETHER_KEY": creds[1], "TETHER_CACERT": creds[2]})
    ok(r.returncode == 0 and "BEGIN CERTIFICATE" in r.stdout,
       "TETHER_CERT/TETHER_KEY/TETHER_CACERT work as the flags do")
    r = ctl(env, mtls, "stats", creds=ops_creds)
    ok(r.returncode == 0, "a second --admin-id is an admin too")
    r = ctl(env, mtls, "admin-cert", "create", "--spiffe-id", ADMIN, "--out",
            env.path("again"), creds=creds)
    ok(r.returncode == 1 and "loopback" in r.stderr and "403" in r.stderr,
       "admin certificates are not minted over mTLS: %r" % r.stderr.strip())

    # 3. Everything else on the mTLS port is refused.
    r = ctl(env, "http://127.0.0.1:%d" % mport, "stats")
    ok(r.returncode == 1 and "https" in r.stderr,
       "plaintext http:// to the mTLS port fails with a hint: %r" % r.stderr.strip())
    r = ctl(env, mtls, "stats")
    ok(r.returncode != 0 and "https:// needs --cert, --key and --cacert" in r.stderr,
       "https:// without credentials: %r" % r.stderr.strip())
    try:
        st, _ = h.http_get(mport, "/stats", timeout=3)
    except OSError:
        st = None
    ok(st is None or st == 0, "a raw plaintext GET gets no HTTP answer (%r)" % st)
    foreign = env.certs.ca("foreign")
    fleaf = env.certs.leaf("foreign-admin", foreign, [ADMIN])
    both = env.write("both.pem", open(creds[2]).read() + open(foreign.crt).read())
    r = ctl(env, mtls, "stats", creds=(fleaf.crt, fleaf.key, both))
    ok(r.returncode == 1 and "certificate was refused" in r.stderr,
       "an admin identity from a foreign CA is refused: %r" % r.stderr.strip())
    r = ctl(env, mtls, "stats", creds=(creds[0], creds[1], foreign.crt))
    ok(r.returncode == 1 and ("chain" in r.stderr or "bundle" in r.stderr),
       "a bundle that does not hold the control plane's root is refused: %r" %
       r.stderr.strip())
    r = ctl(env, "https://127.0.0.1:%d" % control.api_port, "stats", creds=creds)
    ok(r.returncode == 1 and "TLS handshake" in r.stderr,
       "https:// to the plaintext port names the TLS failure: %r" % r.stderr.strip())

    # 4. Revoking the ops certificate cuts its access.
    ops_serial = [i["serial"] for i in control.ctl("identities", as_json=True)["identities"]
                  if i.get("spiffe_id") == OPS][0]
    control.ctl("revoke", ops_serial)
    r = ctl(env, mtls, "stats", creds=ops_creds)
    ok(r.returncode == 1 and "refused" in r.stderr,
       "a revoked admin certificate is refused: %r" % r.stderr.strip())
    ok(any(e.get("serial") == h.norm_serial(ops_serial) or
           h.norm_serial(e.get("serial", "")) == h.norm_serial(ops_serial)
           for e in control.events("api_revoked_certificate")),
       "and logged as api_revoked_certificate")

    # 5. Restart with only OPS as admin: the ADMIN certificate is now a non-admin
    # workload certificate of the same CA and gets a clear 403.
    control.signal(signal.SIGTERM)
    rc = control.wait(10)
    ok(rc == 0, "SIGTERM stops tether-control cleanly (rc %r)" % rc)
    ok(control.events("control_stopped"), "control_stopped is logged")
    mport2 = h.free_port()
    c2 = env.control(name="control2", state_dir=control.state_dir,
                     extra=["--listen-api", "0.0.0.0:%d" % mport2, "--admin-id", OPS])
    h.wait_for(lambda: h.connect(mport2, 1).close() is None, 10, 0.05, "the mTLS port")
    r = ctl(env, "https://127.0.0.1:%d" % mport2, "stats", creds=creds)
    ok(r.returncode == 1 and "403" in r.stderr and ADMIN in r.stderr and
       "not" in r.stderr and "admin" in r.stderr,
       "a certificate whose identity is not an --admin-id gets 403 naming it: %r" %
       r.stderr.strip())
    ok(any(e.get("peer") == ADMIN for e in c2.events("api_forbidden")),
       "the refusal is logged as api_forbidden with the identity")

    # 6. Bad flags.
    r = subprocess.run([env.control_bin, "--state-dir", env.path("x"), "--admin-id",
                        "spiffe://other.td/ns/a/sa/b"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=10)
    ok(r.returncode == 2 and b"--admin-id" in r.stderr,
       "an --admin-id outside the trust domain is a usage error")
    # Outside the reserved namespace any workload could be issued the admin identity.
    r = subprocess.run([env.control_bin, "--state-dir", env.path("x"), "--admin-id",
                        "spiffe://cluster.local/ns/ops/sa/alice"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=10)
    ok(r.returncode == 2 and b"--admin-id" in r.stderr and b"tether-system" in r.stderr,
       "an --admin-id outside ns/tether-system is a usage error: %r" % r.stderr[-300:])
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-api-mtls")
