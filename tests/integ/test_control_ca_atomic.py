#!/usr/bin/env python3
"""The CA's key and certificate are created together (issue 7 item 4).

Before, a crash between writing ca.key and ca.crt on a first start left a key without its
certificate and the CA was lost (2 runs in 5 when two started together). Now:
1. tether-control is killed (SIGKILL, through the test hook TETHER_TEST_HOOK_KILL_AT_STEP)
   at every step of creating the two files: after the staging directory, after each file,
   after the commit, after each file is moved into place. The next start must either make
   a new CA (crash before the commit) or finish and load the staged one (after it), with
   ca.key matching ca.crt and no staging directory left.
2. The same with SIGKILL at random moments of a first start, in a loop.
3. Damage that no crash of this code leaves is refused with a message naming both files,
   never answered with a silent new CA: a key without its certificate, a certificate
   without its key, and a key that does not match the certificate.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HOOK = "TETHER_TEST_HOOK_KILL_AT_STEP"
STEPS = {1: "staging directory made", 2: "ca.key staged", 3: "ca.crt staged",
         9: "committed (ca.new)", 10: "ca.key moved into place", 11: "ca.crt moved"}
COMMIT = 9


def under_asan():
    out = subprocess.run(["ldd", os.environ["TT_CONTROL"]], capture_output=True,
                         text=True).stdout
    return "libasan" in out


def pubkey(args):
    return subprocess.run(["openssl"] + args, capture_output=True, check=True).stdout


def pair_matches(state):
    crt, key = os.path.join(state, "ca.crt"), os.path.join(state, "ca.key")
    if not (os.path.exists(crt) and os.path.exists(key)):
        return False
    return (pubkey(["x509", "-noout", "-pubkey", "-in", crt]) ==
            pubkey(["pkey", "-pubout", "-in", key]))


def leftovers(state):
    if not os.path.isdir(state):
        return []
    return [n for n in os.listdir(state) if n.startswith("ca.new")]


def start(env, name, state, hook=None):
    if hook is not None:
        os.environ[HOOK] = str(hook)
    try:
        return env.control(name, state_dir=state, wait=False)
    finally:
        os.environ.pop(HOOK, None)


def staged_cert(state):
    p = os.path.join(state, "ca.new", "ca.crt")
    if os.path.exists(p):
        with open(p) as f:
            return f.read()
    return None


def test(env):
    ok = h.Checks()

    # 1. Killed at every step of the creation.
    for step, what in sorted(STEPS.items()):
        state = env.path("step%d" % step)
        c = start(env, "hook%d" % step, state, hook=step)
        rc = c.wait(20)
        ok(rc == -signal.SIGKILL, "step %d (%s): the hook killed it (rc %r)" % (step, what, rc))
        staged = staged_cert(state)
        moved = os.path.exists(os.path.join(state, "ca.crt")) and open(
            os.path.join(state, "ca.crt")).read()
        c2 = start(env, "after%d" % step, state)
        try:
            c2.wait_up()
            up = True
        except h.TestFailure as e:
            up = False
            ok(False, "step %d: the next start fails: %s" % (step, str(e)[-300:]))
        if up:
            ok(pair_matches(state) and not leftovers(state),
               "step %d (%s): the next start runs with a matching pair and no staging left"
               % (step, what))
            now = open(os.path.join(state, "ca.crt")).read()
            if step >= COMMIT:
                ok(now == (staged or moved),
                   "step %d: the committed CA is the one kept, not a new one" % step)
            bundle = c2.ctl("bundle", "get").stdout
            ok(bundle.strip() == now.strip(), "step %d: the bundle is that CA" % step)
        c2.stop()

    # 2. SIGKILL at random moments of first starts.
    rounds = 8 if under_asan() else 20
    rng = random.Random(os.getpid())
    outcomes = {}
    for i in range(rounds):
        state = env.path("random%d" % i)
        c = start(env, "rnd%d" % i, state)
        time.sleep(rng.uniform(0.0, 0.06))
        c.kill()
        seen = ("staging" if leftovers(state) else
                "pair" if os.path.exists(os.path.join(state, "ca.crt")) else
                "nothing" if not os.path.exists(os.path.join(state, "ca.key")) else "key-only")
        outcomes[seen] = outcomes.get(seen, 0) + 1
        c2 = start(env, "rnd%d-next" % i, state)
        try:
            c2.wait_up()
            ok(pair_matches(state) and not leftovers(state),
               "random kill %d (left: %s): next start runs with a matching pair" % (i, seen))
        except h.TestFailure as e:
            ok(False, "random kill %d (left: %s): next start fails: %s" % (i, seen,
                                                                           str(e)[-300:]))
        c2.stop()
    h.log("what random kills left behind: %r" % outcomes)

    # 3. Damage is refused, naming both files.
    good = env.path("step11")
    other = env.path("step1")
    cases = []
    d = env.path("key-only")
    os.makedirs(d)
    shutil.copy(os.path.join(good, "ca.key"), d)
    cases.append(("a key without its certificate", d))
    d = env.path("crt-only")
    os.makedirs(d)
    shutil.copy(os.path.join(good, "ca.crt"), d)
    cases.append(("a certificate without its key", d))
    d = env.path("mismatch")
    os.makedirs(d)
    shutil.copy(os.path.join(good, "ca.crt"), d)
    shutil.copy(os.path.join(other, "ca.key"), d)
    cases.append(("a key that does not match the certificate", d))
    for what, d in cases:
        before = sorted(os.listdir(d))
        c = start(env, "damaged-" + os.path.basename(d), d)
        rc = c.wait(15)
        err = c.stderr()
        ok(rc is not None and rc != 0 and "ca.key" in err and "ca.crt" in err,
           "%s: refused, naming both files (rc %r): %s" % (
               what, rc, err.strip().splitlines()[-1][-300:] if err.strip() else ""))
        ok(sorted(n for n in os.listdir(d) if n != "lock") == before,
           "%s: no new CA was made" % what)
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-ca-atomic")
