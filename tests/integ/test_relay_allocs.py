#!/usr/bin/env python3
"""A long transfer through a sidecar pair allocates nothing once the buffers are warm.

client -> outbound (web) -> mTLS -> inbound (api) -> echo backend, one worker each.
After a warm-up transfer, 100 MB each way (30 MB under AddressSanitizer) go through;
/stats server.buffers of both sidecars must show a handful of slabs taken from malloc at
most (a buffer per read would be thousands), and no oversize buffer ever: ciphertext is read straight into the
TLS engine, handed to the write queue without a copy, and no queue outgrows its slab.
"""

import hashlib
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MB = 1 << 20


def under_asan():
    out = subprocess.run(["ldd", h.sidecar_path()], capture_output=True, text=True).stdout
    return "libasan" in out


def buffers(sc):
    return sc.stats()["server"]["buffers"]


def transfer(port, size, seed):
    payload = h.pattern_bytes(size, seed=seed)
    echoed, _ = h.echo_roundtrip(port, payload, timeout=300)
    if echoed != payload:
        h.log("sent %d bytes, got %d back" % (len(payload), len(echoed)))
    return hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


def test(env):
    ok = h.Checks()
    echo = env.echo("echo")
    web_sc, api_sc, out_port = env.sidecar_pair(echo.addr)
    big = (30 if under_asan() else 100) * MB

    ok(transfer(out_port, 8 * MB, 1), "warm-up: 8 MB each way intact")
    before = {n: buffers(s) for n, s in (("web", web_sc), ("api", api_sc))}
    ok(transfer(out_port, big, 2), "%d MB each way intact" % (big // MB))
    after = {n: buffers(s) for n, s in (("web", web_sc), ("api", api_sc))}
    for n in ("web", "api"):
        b, a = before[n], after[n]
        grew = a["slabs_allocated"] - b["slabs_allocated"]
        # A buffer per read would be thousands of slabs (100 MB / 32 KiB = 3200); the pool
        # only grows when a few more buffers happen to be live at once than in the warm-up.
        ok(grew <= 8, "%s: %d MB took %d new slabs from malloc (before %d, after %d): the "
           "pool is reused" % (n, big // MB, grew, b["slabs_allocated"], a["slabs_allocated"]))
        ok(a["oversize_allocations"] == 0,
           "%s: no buffer ever outgrew its slab (%d oversize allocations)" % (
               n, a["oversize_allocations"]))
        ok(a["slabs_allocated"] <= 32, "%s: %d slabs in all" % (n, a["slabs_allocated"]))
    for sc in (web_sc, api_sc):
        for e in sc.access_logs():
            if e.get("error"):
                h.log("%s: connection ended with an error: %s" % (sc.name, e))
    ok(web_sc.alive() and api_sc.alive(), "both sidecars still running")
    ok.done()


if __name__ == "__main__":
    h.require_sidecar()
    h.main(test, "relay-allocs")
