#!/usr/bin/env python3
"""A full disk under tether-control's state directory (issue 7 item 7).

The state directory is a 1 MiB tmpfs the test mounts (root only; unmounted at the end).
Some state is made (tokens, a certificate, a revocation, a policy), then the tmpfs is
filled with a file. While it is full:
- creating tokens fails, at the latest once the journal needs a new page, with the errno's
  text ("No space left on device"), and every token that was answered 201 is kept;
- Sign with a valid token answers UNAVAILABLE naming the errno and hands out no
  certificate; the token's use is not counted;
- a renewal (certificate as proof) answers the same and issues nothing;
- revoke and policy set fail with the errno's text, and change nothing;
- the listings still answer and show exactly what was stored.
Then the file is removed: the same token and the renewal work again, and after a restart
everything stored before and during the episode is there; every certificate handed out
is listed by `tetherctl identities` (none was issued without its record).
"""

import errno
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

NOSPACE = "No space left on device"


def fill(path):
    """Writes path until the file system refuses a single byte more."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break


def snapshot(ctl):
    return {
        "tokens": sorted((t["id"], t["uses_left"]) for t in
                         ctl.ctl("token", "list", as_json=True)["tokens"]),
        "identities": sorted(h.norm_serial(i["serial"]) for i in
                             ctl.ctl("identities", as_json=True)["identities"]),
        "revocations": sorted(h.norm_serial(r["serial"]) for r in
                              ctl.ctl("revocations", as_json=True)["revocations"]),
        "policy": ctl.ctl("policy", "get").stdout,
    }


def run_full(env, ok, mnt):
    state = os.path.join(mnt, "state")
    ctl = env.control(state_dir=state)
    bundle = ctl.bundle()
    sid = h.spiffe("shop", "api")
    many = ctl.token(sid, "many", uses=1000)
    r = h.tt_sign(ctl, sid, token=many, bundle=bundle, out=env.path("leaf"))
    ok(r["code"] == 0, "a certificate before the disk fills: %r" % r)
    leaf = (env.path("leaf.crt"), env.path("leaf.key"))
    issued = {h.norm_serial(r["serial"])}
    ctl.ctl("revoke", "0A0B0C")
    ctl.set_policy({"default": "deny", "rules": []})
    before = snapshot(ctl)

    filler = os.path.join(mnt, "filler")
    fill(filler)
    h.log("tmpfs full: %s" % subprocess.run(["df", "-k", mnt], stdout=subprocess.PIPE)
          .stdout.decode().splitlines()[-1])

    # Tokens: what was answered 201 is kept; the refusal names the errno.
    created, refusal = [], None
    for i in range(64):
        r = ctl.ctl("token", "create", "--spiffe-id", sid, check_rc=False)
        if r.returncode != 0:
            refusal = r.stderr.strip()
            break
        created.append(r.stdout.strip())
    ok(refusal is not None and NOSPACE in refusal and "journal.log" in refusal,
       "token create on a full disk fails naming the file and the errno: %r (after %d "
       "created)" % (refusal, len(created)))

    # Sign with a valid token: UNAVAILABLE with the reason, nothing handed out unrecorded.
    signed, refused = 0, None
    for i in range(64):
        r = h.tt_sign(ctl, sid, token=many, bundle=bundle)
        if r["code"] != 0:
            refused = r
            break
        signed += 1
        issued.add(h.norm_serial(r["serial"]))
    ok(refused is not None and refused["code"] == 14 and NOSPACE in refused["details"],
       "Sign with a valid token answers UNAVAILABLE naming the errno: %r" % refused)
    # A renewal's record is shorter: it may still fit in the journal's last page.
    for i in range(64):
        r = h.tt_sign(ctl, sid, cert=leaf, bundle=bundle)
        if r["code"] != 0:
            break
        issued.add(h.norm_serial(r["serial"]))
    ok(r["code"] == 14 and NOSPACE in r["details"] and not r["serial"],
       "a renewal answers UNAVAILABLE and gets no certificate: %r" % r)

    r = ctl.ctl("revoke", "0D0E0F", check_rc=False)
    ok(r.returncode == 1 and NOSPACE in r.stderr,
       "revoke fails with the errno's text: %r" % r.stderr.strip())
    r = ctl.ctl("policy", "set", env.write("allow.json", '{"default": "allow", "rules": []}'),
                check_rc=False)
    ok(r.returncode == 1 and NOSPACE in r.stderr,
       "policy set fails with the errno's text: %r" % r.stderr.strip())
    during = snapshot(ctl)
    ok(during["revocations"] == before["revocations"] and during["policy"] == before["policy"],
       "the refused revocation and policy changed nothing")
    ok(set(during["identities"]) == issued,
       "identities lists exactly the certificates handed out (%d)" % len(issued))

    # Space again.
    os.unlink(filler)
    r = h.tt_sign(ctl, sid, token=many, bundle=bundle)
    ok(r["code"] == 0, "with space again the same token works: %r" % r)
    issued.add(h.norm_serial(r["serial"]))
    r = h.tt_sign(ctl, sid, cert=leaf, bundle=bundle)
    ok(r["code"] == 0, "and the renewal: %r" % r)
    issued.add(h.norm_serial(r["serial"]))
    uses = [t["uses_left"] for t in ctl.ctl("token", "list", as_json=True)["tokens"]
            if t["uses_left"] > 100]
    ok(uses == [1000 - 1 - signed - 1],
       "the token counted only the Signs that succeeded (%r left, %d succeeded)" % (
           uses, 1 + signed + 1))

    ctl.stop()
    ctl.restart()
    after = snapshot(ctl)
    ok(set(after["identities"]) == issued,
       "after a restart every certificate handed out is listed (%d), no other" % len(issued))
    ok(after["revocations"] == before["revocations"] and after["policy"] == before["policy"],
       "the revocation and the policy stored before are there")
    want_tokens = len(before["tokens"]) + len(created)
    ok(len(after["tokens"]) == want_tokens,
       "every token answered 201 is there (%d, want %d)" % (len(after["tokens"]), want_tokens))
    for tok in created[:3]:
        p = env.write("created.token", tok + "\n", mode=0o600)
        ok(h.tt_sign(ctl, sid, token=p, bundle=bundle)["code"] == 0,
           "a token created while the disk was filling works after the restart")
    ctl.stop()


def test(env):
    if os.geteuid() != 0:
        print("SKIP: mounting a tmpfs needs root")
        sys.exit(h.SKIP)
    ok = h.Checks()
    mnt = env.path("tmpfs")
    os.makedirs(mnt)
    h.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mnt])
    try:
        run_full(env, ok, mnt)
    finally:
        for p in env._procs:
            if p.alive():
                p.stop()
        r = h.run(["umount", mnt], check_rc=False)
        if r.returncode != 0:
            h.run(["umount", "-l", mnt], check_rc=False)
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-full-disk")
