#!/usr/bin/env python3
"""The control plane killed (SIGKILL) under traffic, then restarted.

web (outbound) ==mTLS==> api (inbound) -> echo backend, control mode, --cert-ttl 20s.
Continuous traffic (sequential requests, each a new connection) runs the whole time.
tether-control is killed when a renewal is a few seconds away, so the renewal falls in
the outage. Proves: traffic continues with zero failures; both sidecars' /stats say
"unreachable" within a few seconds; /ready stays 200 during the outage; tether-control
restarted (same state directory, same ports) a few seconds later: the sidecars reconnect
("connected") and renew by themselves before their certificates expire (a new serial
signed by the restarted control plane, with the current certificate as proof).
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

OUTAGE = 5.0


def test(env):
    ok = h.Checks()
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    echo = env.echo("echo")
    in_port, out_port = h.free_port(), h.free_port()

    ctl = env.control(cert_ttl="20s")
    bundle = ctl.bundle()
    ctl.set_policy({"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "to": [api_id],
         "ports": [echo.port]}]})
    api = env.cp_sidecar("api", ctl, api_id, ctl.token(api_id, "api"), bundle=bundle,
                         inbound=[(in_port, echo.addr)])
    web = env.cp_sidecar("web", ctl, web_id, ctl.token(web_id, "web"), bundle=bundle,
                         outbound=[(out_port, "127.0.0.1:%d" % in_port, api_id)])
    sidecars = (("api", api), ("web", web))
    traffic = h.Traffic(out_port, size=1024, timeout=10)
    h.wait_for(lambda: traffic.ok > 20, 10, what="traffic to flow")

    # Kill when the web sidecar's renewal (at half of 20 s, +-10%) is a few seconds away,
    # right after a fresh certificate: seconds_to_expiry in 13..15.
    def near_renewal():
        e = web.stats()["identity"]["seconds_to_expiry"]
        return 13 <= e <= 15
    h.wait_for(near_renewal, 25, 0.1, "web's certificate to be 5..7 s old")
    before = {n: sc.stats()["identity"] for n, sc in sidecars}
    h.log("killing tether-control; serials %s" % {n: i["serial"] for n, i in before.items()})
    ok_before = traffic.ok
    ctl.kill()
    t_kill = time.monotonic()

    # During the outage: unreachable within a few seconds, /ready 200, traffic flows.
    for name, sc in sidecars:
        try:
            took = h.wait_for(lambda sc=sc: sc.stats()["server"]["control"]["state"] ==
                              "unreachable" and time.monotonic() - t_kill, 4.0, 0.05,
                              "%s to report the control plane unreachable" % name)
            ok(True, "%s: /stats control state 'unreachable' after %.2fs" % (name, took))
        except h.TestFailure as e:
            ok(False, str(e))
    readies = []
    while time.monotonic() - t_kill < OUTAGE:
        for name, sc in sidecars:
            readies.append((name, sc.get("/ready", timeout=1)[0]))
        time.sleep(0.1)
    ok(all(s == 200 for _, s in readies), "/ready stays 200 during the outage (%s)" % sorted(
        set(readies)))
    st = web.stats()
    ok(st["server"]["control"]["state"] == "unreachable"
       and st["server"].get("control_plane") == "unreachable"
       and st["server"]["control"]["seconds_since_contact"] >= 3,
       "web /stats during the outage: %r, control_plane %r" % (
           st["server"]["control"], st["server"].get("control_plane")))
    ok(st["server"]["control"].get("last_error"),
       "web /stats last_error says why (%r)" % st["server"]["control"].get("last_error"))
    ok(st["identity"]["seconds_to_expiry"] > 0, "web's certificate still valid")
    ok(traffic.ok > ok_before + 20 and not traffic.failures,
       "traffic continues during the outage (%d requests, %d failures)" % (
           traffic.ok - ok_before, len(traffic.failures)))

    # Restart on the same state and ports.
    ctl.restart()
    t_restart = time.monotonic()
    for name, sc in sidecars:
        try:
            took = h.wait_for(lambda sc=sc: sc.stats()["server"]["control"]["state"] ==
                              "connected" and time.monotonic() - t_restart, 6.0, 0.1,
                              "%s to reconnect" % name)
            ok(True, "%s reconnected %.2fs after the restart" % (name, took))
        except h.TestFailure as e:
            ok(False, str(e))

    # Renewal by itself, before expiry, signed by the restarted control plane.
    for name, sc in sidecars:
        old = before[name]

        def renewed(sc=sc, old=old):
            i = sc.stats()["identity"]
            return i["serial"] != old["serial"] and i
        try:
            now = h.wait_for(renewed, max(1.0, old["not_after"] - time.time()), 0.1,
                             "%s to renew before its certificate expires" % name)
            ok(now["not_after"] > old["not_after"],
               "%s renewed before expiry: %s -> %s (old one had %ds left at kill time, "
               "renewed %.1fs before it expired)" % (
                   name, old["serial"], now["serial"], old["seconds_to_expiry"],
                   old["not_after"] - time.time()))
        except h.TestFailure as e:
            ok(False, str(e))
    signed_after = [r for r in h.json_lines(ctl.stderr().split('"control_started"')[-1])
                    if r.get("event") == "certificate_signed"]
    for name, sid in (("api", api_id), ("web", web_id)):
        cur = {"api": api, "web": web}[name].stats()["identity"]["serial"]
        recs = [r for r in signed_after if r.get("spiffe_id") == sid]
        ok(any(h.norm_serial(r.get("serial")) == h.norm_serial(cur) for r in recs),
           "%s: the current serial %s was signed by the restarted control plane (%s)" % (
               name, cur, [r.get("serial") for r in recs]))
        ok(all(r.get("proof") != "bootstrap_token" for r in recs),
           "%s: the renewal's proof is the current certificate, not a token (%s)" % (
               name, [r.get("proof") for r in recs]))
    time.sleep(1.0)
    traffic.stop()
    ok(not traffic.failures, "zero failed requests across kill, outage and restart "
       "(%d ok, %d failed: %s)" % (traffic.ok, len(traffic.failures),
                                  [f for _, f in traffic.failures[:5]]))
    for name, sc in sidecars:
        c = sc.stats()["server"]["control"]
        ok(c["state"] == "connected" and c["version_applied"] >= 1,
           "%s: connected, version %r applied after the restart" % (name,
                                                                   c["version_applied"]))
    ok(ctl.stats()["sidecars_connected"] == 2, "control sees both sidecars again (%r)" %
       ctl.stats()["sidecars_connected"])
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-outage")
