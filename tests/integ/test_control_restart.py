#!/usr/bin/env python3
"""tether-control's state survives restarts; a corrupt state file stops start-up.

Proves: after SIGTERM and a restart, and after SIGKILL and a restart (same state
directory), the CA is the same (identical `tetherctl bundle get` PEM, ca.key still 0600),
a token created before the restart still works after it (its remaining uses are kept),
the policy document, the revocations and the service entries are kept; a certificate
issued before the restart still renews after it. A state file with garbage in it
(tokens.json) makes tether-control refuse to start with a message naming the file and a
non-zero exit, and leaves every state file byte for byte as it was.
"""

import hashlib
import json
import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def state_digest(d):
    """Digests of the state files. "lock" is left out: it is no state but the running
    process's lock, holding its pid, rewritten by every start (docs/decisions.md)."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        if name == "lock":
            continue
        if os.path.isfile(p):
            with open(p, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def test(env):
    ok = h.Checks()
    api_id, web_id = h.spiffe("shop", "api"), h.spiffe("shop", "web")
    policy = {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "to": [api_id]}]}

    ctl = env.control(cert_ttl="1h")
    bundle_pem = ctl.ctl("bundle", "get").stdout
    bundle = ctl.bundle()
    key_mode = stat.S_IMODE(os.stat(os.path.join(ctl.state_dir, "ca.key")).st_mode)
    ok(key_mode == 0o600, "ca.key is 0600 (%o)" % key_mode)
    tok = ctl.token(api_id, "api", uses=3)          # used once before, once after each restart
    tok_web = ctl.token(web_id, "web-unused")        # never used before the restart
    ctl.set_policy(policy)
    policy_text = ctl.ctl("policy", "get").stdout
    ctl.ctl("revoke", "0A:1B:2C:3D")
    svc = "127.0.0.1:%d" % h.free_port()
    ctl.ctl("service", "add", svc, api_id)
    api1 = env.cp_sidecar("api-before", ctl, api_id, tok, bundle=bundle,
                          inbound=[(h.free_port(), "127.0.0.1:9")])
    serial1 = api1.stats()["identity"]["serial"]
    version = ctl.stats()["version"]

    def same_state(when):
        ok(ctl.ctl("bundle", "get").stdout == bundle_pem,
           "%s: the same CA (bundle PEM identical)" % when)
        got = ctl.ctl("policy", "get").stdout
        ok(json.loads(got) == json.loads(policy_text), "%s: policy kept" % when)
        rv = ctl.ctl("revocations").stdout
        ok("A1B2C3D" in rv, "%s: revocation kept:\n%s" % (when, rv))
        sv = ctl.ctl("service", "list").stdout
        ok(svc in sv and api_id in sv, "%s: service entry kept:\n%s" % (when, sv))
        ids = ctl.ctl("identities").stdout
        ok(serial1 in ids, "%s: the issued-certificate record %s kept" % (when, serial1))
        toks = ctl.ctl("token", "list").stdout
        ok(web_id in toks and open(tok_web).read().strip() not in toks,
           "%s: tokens kept, secrets never shown:\n%s" % (when, toks))
        ok(ctl.stats()["version"] >= version, "%s: version %d did not go back (was %d)" % (
            when, ctl.stats()["version"], version))

    # 1. SIGTERM, restart.
    ctl.stop()
    ok(ctl.p.returncode == 0, "tether-control exits 0 on SIGTERM (%r)" % ctl.p.returncode)
    ctl.restart()
    same_state("after SIGTERM + restart")
    api2 = env.cp_sidecar("api-after", ctl, api_id, tok, bundle=bundle,
                          inbound=[(h.free_port(), "127.0.0.1:9")], wait=False)
    try:
        api2.wait_ready(10)
        ok(True, "a token created before the restart works after it")
    except h.TestFailure as e:
        ok(False, "token from before the restart refused: %s" % str(e)[:400])
    # The sidecar from before reconnects with its certificate from before.
    h.wait_for(lambda: api1.stats()["server"]["control"]["state"] == "connected", 10, 0.1,
               "api-before to reconnect")
    ok(True, "a sidecar with a certificate issued before the restart reconnects")

    # 2. SIGKILL, restart: nothing lost either.
    ctl.kill()
    ctl.restart()
    same_state("after SIGKILL + restart")
    api3 = env.cp_sidecar("api-third", ctl, api_id, tok, bundle=bundle,
                          inbound=[(h.free_port(), "127.0.0.1:9")], wait=False)
    try:
        api3.wait_ready(10)
        ok(True, "the token's third use works after SIGKILL (uses were persisted)")
    except h.TestFailure as e:
        ok(False, "third use refused: %s" % str(e)[:400])
    api4 = env.cp_sidecar("api-fourth", ctl, api_id, tok, bundle=bundle,
                          inbound=[(h.free_port(), "127.0.0.1:9")], wait=False)
    h.wait_for(lambda: any(r.get("reason") == "token_used_up" for r in
                           ctl.events("sign_refused")), 8, 0.1, "a fourth use to be refused")
    ok(True, "a fourth use is refused (token_used_up): used-up counts survive restarts")
    for sc in (api1, api2, api3, api4):
        sc.stop()

    # 3. A corrupt state file: refuse to start, name the file, touch nothing.
    ctl.stop()
    tokens = os.path.join(ctl.state_dir, "tokens.json")
    with open(tokens, "w") as f:
        f.write("{\"tokens\": [ this is not JSON \x01\x02")
    before = state_digest(ctl.state_dir)
    ctl.restart(wait=False)
    rc = ctl.wait(15)
    err = ctl.stderr().split('"control_stopped"')[-1]
    ok(rc is not None and rc != 0, "tether-control with a corrupt tokens.json exits non-zero "
       "(rc %r)" % rc)
    ok("tokens.json" in err, "the message names the file: %r" % err.strip()[-400:])
    ok(state_digest(ctl.state_dir) == before,
       "every state file is untouched (%d files; changed: %s)" % (
           len(before), [k for k, v in state_digest(ctl.state_dir).items()
                         if before.get(k) != v]))
    ok(not os.path.exists(tokens + ".tmp") and
       sorted(n for n in os.listdir(ctl.state_dir) if n != "lock") == sorted(before), "no new or temporary files in the state directory (%s)" %
       sorted(os.listdir(ctl.state_dir)))

    # 4. Same for an empty file (a crash in the middle of a non-atomic write looks so).
    with open(tokens, "w"):
        pass
    before = state_digest(ctl.state_dir)
    ctl.restart(wait=False)
    rc = ctl.wait(15)
    ok(rc is not None and rc != 0, "an empty tokens.json is refused too (rc %r)" % rc)
    ok(state_digest(ctl.state_dir) == before, "and left as it was")
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-restart")
