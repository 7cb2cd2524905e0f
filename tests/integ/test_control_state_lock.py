#!/usr/bin/env python3
"""One tether-control per state directory (issue 7, item 4).

The attack: a second tether-control on the same state directory used to start as well;
the last writer won (a token created through one vanished) and, started together on an
empty directory, two of them could leave ca.key not matching ca.crt. Now the second one
exits 2 at once with a message naming the directory and the holder's pid, the first keeps
serving, and two started at the same moment on an empty directory leave exactly one
running with a CA whose key matches its certificate.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def second(env, state_dir, name):
    c = env.control(name=name, state_dir=state_dir, wait=False)
    rc = c.wait(10)
    return c, rc


def key_matches(state_dir):
    crt = subprocess.run(["openssl", "x509", "-in", os.path.join(state_dir, "ca.crt"),
                          "-noout", "-pubkey"], capture_output=True).stdout
    key = subprocess.run(["openssl", "pkey", "-in", os.path.join(state_dir, "ca.key"),
                          "-pubout"], capture_output=True).stdout
    return crt != b"" and crt == key


def test(env):
    ok = h.Checks()
    first = env.control(name="first")
    c2, rc = second(env, first.state_dir, "second")
    err = c2.stderr()
    ok(rc == 2, "a second tether-control on the same state directory exits 2 (rc %r)" % rc)
    ok(first.state_dir in err and str(first.pid) in err,
       "its message names the directory and the holder's pid %d: %r" % (first.pid, err[-300:]))
    token = first.token(h.spiffe("shop", "web"), "web")
    ok(os.path.exists(token) and first.alive(), "the first one still serves (token created)")
    listed = first.ctl("token", "list", as_json=True)
    ok(len(listed) == 1, "and keeps its state: %d token(s) listed" % len(listed))

    # Two at the same moment on an empty directory: one wins, one CA, key matching.
    for i in range(3):
        d = env.path("race-%d-state" % i)
        a = env.control(name="race-%d-a" % i, state_dir=d, wait=False)
        b = env.control(name="race-%d-b" % i, state_dir=d, wait=False)
        time.sleep(1.5)
        alive = [p for p in (a, b) if p.alive()]
        ok(len(alive) == 1, "race %d: exactly one tether-control runs (%d)" % (i, len(alive)))
        h.wait_for(lambda: os.path.exists(os.path.join(d, "ca.crt")), 10, what="the CA")
        ok(key_matches(d), "race %d: ca.key matches ca.crt" % i)
        for p in (a, b):
            p.stop()
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-state-lock")
