#!/usr/bin/env python3
"""tether-control out of file descriptors (issue 7 items 2 and 5, the control plane's
half), as the attacker does it: started with RLIMIT_NOFILE 256 (soft and hard, so raising
the soft limit gains nothing) and an explicit --sidecar-max-connections far above what that
allows, 400 silent connections from 127.0.0.2 take every descriptor, and a client keeps
reconnecting meanwhile. Then:

- the acceptor does not spin: the process uses little CPU while the flood is held;
- the log is bounded: one accept_failed line for the episode (not one per failure), and
  an accept_resumed line with the count once it is over;
- the sidecar already watching keeps its stream;
- after the flood ends, a new sidecar gets a certificate and a snapshot within a few
  seconds (the acceptor resumed by itself);
- GET /stats counts the failures (refusals sidecar_accept_failed).
Against the old acceptor this spun at 100% CPU without a line (and its tlspipe threads
failed with "Too many open files")."""

import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

NOFILE = 256
RECONNECT_EVERY = 0.3


def under_asan():
    out = subprocess.run(["ldd", os.environ["TT_CONTROL"]], capture_output=True,
                         text=True).stdout
    return "libasan" in out


def flood(port, n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            socks.append(s)
        except OSError:
            s.close()
    return socks


def test(env):
    check = h.Checks()
    n_flood = 300 if under_asan() else 400
    cp = env.control(nofile=(NOFILE, NOFILE), extra=[
        "--sidecar-max-connections", "5000", "--sidecar-max-per-source", "5000",
        "--sidecar-handshake-timeout", "60s"])
    check(len(cp.events("max_connections_above_open_files")) == 1,
          "the explicit bound above the open-files limit is said once at start")
    sid = h.spiffe("shop", "before")
    before = env.cp_sidecar("before", cp, sid, cp.token(sid), workers=1,
                            inbound=[(h.free_port(), "127.0.0.1:9")])
    sid_after = h.spiffe("shop", "after")
    token_after = cp.token(sid_after)  # made now: tetherctl needs no descriptor later

    socks = flood(cp.sidecar_port, n_flood)
    h.log("flood: %d connections held" % len(socks))
    cpu0, t0 = cp.cpu_seconds(), time.monotonic()
    reconnects = 0
    while time.monotonic() - t0 < 5:
        try:
            s = socket.create_connection(("127.0.0.1", cp.sidecar_port), timeout=1)
            s.close()
        except OSError:
            pass
        reconnects += 1
        time.sleep(RECONNECT_EVERY)
    cpu = (cp.cpu_seconds() - cpu0) / (time.monotonic() - t0)
    check(cpu < 0.5, "no spinning while descriptors are exhausted: %.0f%% CPU" % (cpu * 100))
    failed = cp.events("accept_failed")
    check(1 <= len(failed) <= 3, "accept_failed logged once per episode: %d lines"
          % len(failed))
    check(before.alive() and before.get("/ready")[0] == 200,
          "the watching sidecar stays ready during the flood")

    for s in socks:
        s.close()
    t_end = time.monotonic()
    after = env.cp_sidecar("after", cp, sid_after, token_after, workers=1, wait=False,
                           inbound=[(h.free_port(), "127.0.0.1:9")])
    after.wait_ready(timeout=10)
    took = time.monotonic() - t_end
    check(took < 5, "a new sidecar served %.2fs after the flood ended" % took)
    h.wait_for(lambda: cp.events("accept_resumed"), 10, 0.2, "accept_resumed")
    resumed = cp.events("accept_resumed")
    check(len(resumed) == 1 and resumed[0].get("failures", 0) >= 1,
          "one accept_resumed line with the count: %s" % resumed)
    r = cp.stats().get("refusals", {})
    check(r.get("sidecar_accept_failed", 0) >= 1,
          "accept failures counted in /stats: %s" % r.get("sidecar_accept_failed"))
    size = os.path.getsize(cp.err_path)
    check(size < 200 * 1024, "bounded log: %d bytes" % size)
    check(before.alive() and before.get("/ready")[0] == 200, "the first sidecar is ready")
    check.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-fd-exhaustion")
