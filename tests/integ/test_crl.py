#!/usr/bin/env python3
"""CRLs given with --crl refuse the certificates they list, for every certificate of a
peer's chain, with a real client (python ssl) as the attacker.

Before: no CRL could be used at all; a CRL appended to the trust bundle was skipped
without a word and the revoked client got through. Now:
1. a client whose leaf the root's CRL (PEM) lists is refused, counted as `revoked` in
   /stats, and its access line says reason "revoked" with the CRL in the detail; a client
   the CRL does not list is admitted;
2. an intermediate's CRL (DER) revokes a leaf under it; the root's CRL revokes an
   intermediate, and every leaf under it is refused (chain depth 1);
3. a CA that published no CRL fails nothing (its leaves are admitted);
4. a CRL that names the intermediate but is signed by another key (a forgery with the
   same DN) is ignored: it cannot revoke;
5. SIGHUP loads a new CRL: a live connection whose client it lists is closed, a new
   connection from that client is refused, other clients still pass;
6. an expired CRL (nextUpdate passed) keeps refusing what it lists and is a warning in
   /stats and in the log; a corrupt CRL on SIGHUP is refused and the last good CRLs stay;
7. at start: a trust bundle with an "X509 CRL" block is refused (exit 2) pointing to
   --crl; a CRL file that is not a CRL, or a CRL whose signature does not verify with the
   bundle's root of that name, is refused naming the file.
"""

import os
import signal
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def attempt(port, cert, ca):
    """A python ssl client with cert: (its line came back through the echo backend, error)."""
    raw = h.connect(port, 5)
    try:
        s = h.tls_client_ctx(cert, ca).wrap_socket(raw)
        s.sendall(b"crl-check\n")
        got = h.read_exact(s, 10)
        s.close()
        return got == b"crl-check\n", ""
    except (ssl.SSLError, OSError) as e:
        raw.close()
        return False, repr(e)


def revoked_count(sc):
    return sc.listener("inbound:")["handshake_failures"]["revoked"]


def test(env):
    ok = h.Checks()
    f = env.certs
    root = f.ca("root", cn="CRL test root")
    inter = f.ca("inter", parent=root)
    inter_bad = f.ca("inter-bad", parent=root)
    other = f.ca("other", cn="CRL test other root")  # publishes no CRL
    sid = lambda n: h.spiffe("crl", n)  # noqa: E731
    good = f.leaf("good", root, [sid("good")])
    bad = f.leaf("bad", root, [sid("bad")])
    later = f.leaf("later", root, [sid("later")])
    igood = f.leaf("igood", inter, [sid("igood")])
    ibad = f.leaf("ibad", inter, [sid("ibad")])
    under_bad = f.leaf("under-bad", inter_bad, [sid("under-bad")])
    oleaf = f.leaf("oleaf", other, [sid("oleaf")])
    api = f.leaf("api", root, [sid("api")])
    bundle = env.bundle("bundle.pem", root, other)

    root_crl = f.crl("root", root, [bad.serial(), inter_bad.serial()])
    inter_crl = f.crl("inter", inter, [ibad.serial()], der=True)
    # A forgery: an intermediate with the same name but another key "revokes" igood.
    forger = h.CertFactory(env.path("forger")).ca("inter", parent=root)
    forged_crl = h.CertFactory(env.path("forger")).crl("forged", forger, [igood.serial()])

    echo = env.echo("echo")
    port = h.free_port()
    crl_args = ["--crl", root_crl, "--crl", inter_crl, "--crl", forged_crl]
    sc = env.sidecar("api", api, bundle, inbound=[(port, echo.addr)], extra=crl_args)

    # 1-4
    for cert, want, what in [(good, True, "root leaf not listed"),
                             (bad, False, "root leaf listed in the root's PEM CRL"),
                             (igood, True, "intermediate's leaf not listed (forged CRL ignored)"),
                             (ibad, False, "leaf listed in the intermediate's DER CRL"),
                             (under_bad, False, "leaf under an intermediate the root revoked"),
                             (oleaf, True, "leaf of a CA without a CRL")]:
        passed, err = attempt(port, cert, root)
        ok(passed == want, "%s: %s (%s)" % (what, "admitted" if passed else "refused", err))
    ok(revoked_count(sc) == 3, "/stats counts 3 handshake failures as revoked: %s" %
       sc.listener("inbound:")["handshake_failures"])
    lines = [a for a in sc.access_logs() if a.get("reason") == "revoked"]
    ok(len(lines) == 3 and all(a.get("verdict") == "error" for a in lines),
       "three access lines with reason revoked, verdict error")
    ok(any(bad.serial() in (a.get("detail") or "") and root_crl in a.get("detail", "")
           for a in lines), "the access line's detail names the serial and the CRL file: %s" %
       [a.get("detail") for a in lines])
    ok(any("depth 1" in (a.get("detail") or "") for a in lines),
       "the revoked intermediate is reported at chain depth 1")
    stats = sc.stats()
    ok(len(stats.get("crls", [])) == 3 and stats.get("warnings") == [],
       "/stats lists the 3 CRLs and no warning: %s" % stats.get("crls"))

    # 5. SIGHUP with a new root CRL that also lists `later`, which holds a live connection.
    ctx = h.tls_client_ctx(later, root)
    live = ctx.wrap_socket(h.connect(port, 5))
    live.sendall(b"live\n")
    ok(h.read_exact(live, 5) == b"live\n", "live connection from `later` relays before SIGHUP")
    f.crl("root", root, [bad.serial(), inter_bad.serial(), later.serial()])
    sc.signal(signal.SIGHUP)
    h.wait_for(lambda: sc.events("revoked_connection_closed"), 5, 0.05,
               "the live revoked connection to close")
    live.settimeout(3)
    try:
        d = live.recv(100)
        closed = d == b""
    except (OSError, ssl.SSLError):
        closed = True
    live.close()
    ok(closed, "the live connection of the newly revoked client was closed")
    passed, err = attempt(port, later, root)
    ok(not passed, "a new connection from the newly revoked client is refused (%s)" % err)
    passed, _ = attempt(port, good, root)
    ok(passed, "the unlisted client still passes after SIGHUP")

    # 6. An expired CRL keeps refusing what it lists, with a warning; a corrupt one is
    #    refused on SIGHUP and the last good CRLs stay.
    f.crl("root", root, [bad.serial(), inter_bad.serial(), later.serial()],
          this_update=-7200, next_update=-60)
    sc.signal(signal.SIGHUP)
    h.wait_for(lambda: sc.events("crl_expired"), 5, 0.05, "crl_expired in the log")
    stats = sc.stats()
    ok(any(c.get("expired") for c in stats.get("crls", [])) and stats.get("warnings"),
       "/stats marks the CRL expired and warns: %s" % stats.get("warnings"))
    passed, _ = attempt(port, bad, root)
    ok(not passed, "the expired CRL still refuses the serial it lists")
    passed, _ = attempt(port, good, root)
    ok(passed, "the expired CRL does not refuse unlisted clients")
    with open(root_crl, "w") as out:
        out.write("-----BEGIN X509 CRL-----\nnot base64 at all\n-----END X509 CRL-----\n")
    before = len(sc.events("reload_refused"))
    sc.signal(signal.SIGHUP)
    h.wait_for(lambda: len(sc.events("reload_refused")) > before, 5, 0.05, "reload_refused")
    msg = sc.events("reload_refused")[-1].get("error", "")
    ok(root_crl in msg, "the refused reload names the CRL file: %r" % msg)
    passed, _ = attempt(port, bad, root)
    ok(not passed, "after the refused reload the last good CRL still refuses")
    ok(sc.alive(), "the sidecar still runs")

    # 7. Start-up refusals.
    f.crl("root", root, [bad.serial()])
    with open(bundle) as b, open(root_crl) as c:
        mixed = env.write("bundle-with-crl.pem", b.read() + c.read())
    garbage = env.write("garbage.crl", "hello\n")
    wrong_key = h.CertFactory(env.path("forger")).crl("wrong", h.CertFactory(
        env.path("forger")).ca("imposter-root", cn="CRL test root"), [good.serial()])
    for args, bundle_path, want in [
            ([], mixed, "--crl"), (["--crl", garbage], bundle, garbage),
            (["--crl", env.path("missing.crl")], bundle, "missing.crl"),
            (["--crl", wrong_key], bundle, wrong_key)]:
        p = env.sidecar("bad-start-%d" % len(want), api, bundle_path,
                        inbound=[(h.free_port(), echo.addr)], extra=args, wait=False)
        rc = p.wait(10)
        err = p.stderr()
        ok(rc == 2 and want in err, "start refused (rc %s) naming %s: %s" % (
            rc, want, err.strip()[-300:]))
    ok.done()


if __name__ == "__main__":
    h.main(test, "crl")
