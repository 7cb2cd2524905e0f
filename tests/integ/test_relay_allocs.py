#!/usr/bin/env python3
"""A long transfer through a sidecar pair allocates nothing once the buffers are warm.

client -> outbound (web) -> mTLS -> inbound (api) -> echo backend, one worker each.
After a warm-up transfer, 100 MB each way (30 MB under AddressSanitizer) go through;
/stats server.buffers of both sidecars must show a handful of slabs taken from malloc at
most (a buffer per read would be thousands), and no oversize buffer ever: ciphertext is read straight into the
TLS engine, handed to the write queue without a copy, and no queue outgrows its slab. Both
with pooling (the default: the bytes ride a tunnel on a link, whose HTTP/2 stream buffers are
queues of slabs too, core/buf.h tt_bufq) and without (--pool off: one mTLS connection).
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


def check_pair(env, ok, echo, label, extra):
    """One sidecar pair (`extra` flags on both), warmed up, then the big transfer: the
    buffers' slab pool is reused and nothing outgrows a slab."""
    web_sc, api_sc, out_port = env.sidecar_pair(echo.addr, extra=extra, prefix=label)
    big = (30 if under_asan() else 100) * MB

    # Warm-up long enough for the pooled path's stream windows (512 KiB each way, in slabs)
    # to have filled once.
    ok(transfer(out_port, 24 * MB, 1), "%s: warm-up: 24 MB each way intact" % label)
    before = {n: buffers(s) for n, s in (("web", web_sc), ("api", api_sc))}
    ok(transfer(out_port, big, 2), "%s: %d MB each way intact" % (label, big // MB))
    after = {n: buffers(s) for n, s in (("web", web_sc), ("api", api_sc))}
    for n in ("web", "api"):
        b, a = before[n], after[n]
        grew = a["slabs_allocated"] - b["slabs_allocated"]
        # A buffer per read would be thousands of slabs (100 MB / 32 KiB = 3200); the pool
        # only grows when a few more buffers happen to be live at once than in the warm-up:
        # a few for a direct relay, up to a stream window's worth (512 KiB: 16 slabs) more
        # when a pooled stream's buffer filled further than in the warm-up.
        ok(grew <= (8 if extra else 24), "%s: %s: %d MB took %d new slabs from malloc (before %d, after %d): the "
           "pool is reused" % (label, n, big // MB, grew, b["slabs_allocated"],
                               a["slabs_allocated"]))
        ok(a["oversize_allocations"] == 0,
           "%s: %s: no buffer ever outgrew its slab (%d oversize allocations)" % (
               label, n, a["oversize_allocations"]))
        ok(a["slabs_allocated"] <= 32, "%s: %s: %d slabs in all" % (label, n,
                                                                   a["slabs_allocated"]))
    for sc in (web_sc, api_sc):
        for e in sc.access_logs():
            if e.get("error"):
                h.log("%s: connection ended with an error: %s" % (sc.name, e))
    ok(web_sc.alive() and api_sc.alive(), "%s: both sidecars still running" % label)
    web_sc.stop()
    api_sc.stop()


def test(env):
    ok = h.Checks()
    echo = env.echo("echo")
    check_pair(env, ok, echo, "pooled", ())
    check_pair(env, ok, echo, "direct", ("--pool", "off"))
    ok.done()


if __name__ == "__main__":
    h.require_sidecar()
    h.main(test, "relay-allocs")
