#!/usr/bin/env python3
"""Bootstrap tokens, attacked (issue 7 item 8).

1. A refused CSR must not burn a single-use token: Sign with a CSR whose signature does
   not verify (refused, bad_csr_signature), then Sign again with the same token and a good
   CSR: issued. A third Sign with it is refused (token_used_up): the token was used once,
   by the Sign that succeeded, and its certificate is listed by `tetherctl identities`.
2. `tetherctl token delete ID` (the id `token list` shows, or a prefix): the deleted
   token is refused by Sign (unknown_token) and no longer listed; deleting it again and
   an id that names nothing fail with a message.
3. Expiry: a token created with --ttl 1s is refused after 1.5 s (expired_token) and no
   longer listed; without --ttl a token expires in 24 h; --ttl 0 never expires.
4. Restart: every token and use survives (the journal is replayed), and used-up and
   expired tokens stay gone.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def listed(ctl):
    return {t["id"]: t for t in ctl.ctl("token", "list", as_json=True)["tokens"]}


def test(env):
    ok = h.Checks()
    ctl = env.control()
    bundle = ctl.bundle()
    sid = h.spiffe("shop", "api")

    # 1. The attack: a refused CSR, then the real request with the same single-use token.
    once = ctl.token(sid, "once", uses=1)
    r = h.tt_sign(ctl, sid, token=once, bad_csr=True, bundle=bundle)
    ok(r["code"] == 3 and "bad_csr_signature" in r["details"],
       "a CSR whose signature does not verify is refused: %r" % r)
    r = h.tt_sign(ctl, sid, token=once, bundle=bundle)
    ok(r["code"] == 0 and r["serial"],
       "the retry with the same single-use token is signed (the refusal cost no use): %r" % r)
    serial = r.get("serial")
    r = h.tt_sign(ctl, sid, token=once, bundle=bundle)
    ok(r["code"] == 7 and "token_used_up" in r["details"],
       "a third Sign with it is refused (token_used_up): %r" % r)
    ids = ctl.ctl("identities", as_json=True)["identities"]
    ok(any(h.norm_serial(i["serial"]) == h.norm_serial(serial) for i in ids),
       "the certificate is recorded (tetherctl identities lists %s)" % serial)
    ok(not listed(ctl), "the used-up token is no longer listed")

    # 2. Delete.
    doomed = ctl.token(sid, "doomed", uses=5)
    keep = ctl.token(sid, "keep", uses=5)
    ok(len(listed(ctl)) == 2, "two tokens listed")
    ok(h.tt_sign(ctl, sid, token=keep, bundle=bundle)["code"] == 0, "the kept token works")
    # The list shows no secrets: the doomed one is the one still at 5 uses.
    doomed_id = [i for i, t in listed(ctl).items() if t["uses_left"] == 5]
    ok(len(doomed_id) == 1, "the unused token is told apart by its uses (%r)" % doomed_id)
    doomed_id = doomed_id[0]
    r = ctl.ctl("token", "delete", doomed_id[:6])
    ok(r.returncode == 0 and doomed_id in r.stdout,
       "tetherctl token delete %s (a prefix) deletes it: %r" % (doomed_id[:6], r.stdout))
    r = h.tt_sign(ctl, sid, token=doomed, bundle=bundle)
    ok(r["code"] == 7 and "unknown_token" in r["details"],
       "the deleted token is refused by Sign (unknown_token): %r" % r)
    ok(doomed_id not in listed(ctl) and len(listed(ctl)) == 1, "and no longer listed")
    r = ctl.ctl("token", "delete", doomed_id, check_rc=False)
    ok(r.returncode == 1 and "no token with id" in r.stderr,
       "deleting it again fails with a message: %r" % r.stderr.strip())
    r = ctl.ctl("token", "delete", "xyz!", check_rc=False)
    ok(r.returncode == 1 and "hex digits" in r.stderr,
       "a malformed id is refused with a message: %r" % r.stderr.strip())
    ok(h.tt_sign(ctl, sid, token=keep, bundle=bundle)["code"] == 0,
       "the other token still works")

    # 3. Expiry and the default lifetime.
    late = ctl.token(sid, "late", ttl="1s")
    forever = ctl.token(h.spiffe("shop", "forever"), "forever", ttl="0")
    toks = list(listed(ctl).values())
    ok(any(t["spiffe_id"] == h.spiffe("shop", "forever") and t["expires_unix"] is None
           for t in toks), "--ttl 0: no expiry")
    ok(any(t["spiffe_id"] == sid and t["expires_unix"] and
           abs(t["expires_unix"] - (t["created_unix"] + 86400)) <= 1 for t in toks),
       "no --ttl: expires 24 h after creation")
    time.sleep(1.6)
    r = h.tt_sign(ctl, sid, token=late, bundle=bundle)
    ok(r["code"] == 7 and "expired_token" in r["details"],
       "a token past its --ttl is refused (expired_token): %r" % r)
    ok(not any(t["expires_unix"] and t["expires_unix"] <= time.time()
               for t in listed(ctl).values()),
       "and pruned from the list (%d listed)" % len(listed(ctl)))

    # 4. Restart: the journal is replayed.
    want = listed(ctl)
    ctl.stop()
    ctl.restart()
    got = listed(ctl)
    ok(got == want, "after a restart the same live tokens, same uses (%d)" % len(got))
    r = h.tt_sign(ctl, sid, token=once, bundle=bundle)
    ok(r["code"] == 7 and ("unknown_token" in r["details"] or "token_used_up" in r["details"]),
       "the used-up token stays refused after the restart: %r" % r)
    ok(h.tt_sign(ctl, h.spiffe("shop", "forever"), token=forever, bundle=bundle)["code"] == 0,
       "the token made before the restart works after it")
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-tokens")
