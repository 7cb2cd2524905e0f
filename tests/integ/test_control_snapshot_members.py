#!/usr/bin/env python3
"""A push replaces only the snapshot member it changes (DESIGN.md "Threads and snapshots").

Attack on the old behaviour, as an operator would hit it: every push (an unrelated
`tetherctl service add`, a policy change that keeps a rule) used to rebuild both SSL_CTXs,
which threw away the session-ticket keys, so the next connection between the sidecars
paid a full handshake, and it reset every per-rule hit counter to 0. Here:

- requests web -> api resume TLS sessions (the outbound keeps the inbound's ticket);
- an unrelated service-table push, then a policy push that keeps the rule: after each, the
  next connection still RESUMES (same identity, same server context, same ticket keys),
  and the api sidecar says it did not rebuild its identity;
- the rule's hit count keeps growing across both pushes instead of starting over.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def policy(web_id, api_id, port, extra=()):
    return {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "to": [api_id],
         "ports": [port]}] + list(extra)}


def one_request(port, seed):
    """One connection that reads the answer before closing: BoringSSL ignores session
    tickets that arrive after our close_notify, so a client that half-closes first never
    leaves a ticket behind (docs/decisions.md)."""
    payload = h.pattern_bytes(512, seed=seed)
    try:
        return h.echo_exact(port, payload, timeout=5) == payload
    except OSError:
        return False


def rule_hits(sidecar, name):
    for r in sidecar.stats()["policy"]["rules"]:
        if r["name"] == name:
            return r["hits"]
    return None


def test(env):
    ok = h.Checks()
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    echo = env.echo("echo")
    in_port, out_port = h.free_port(), h.free_port()

    ctl = env.control(cert_ttl="1h")
    bundle = ctl.bundle()
    ctl.set_policy(policy(web_id, api_id, echo.port))
    # One worker each: the resumption slot is per worker and outbound listener. The web
    # sidecar does not pool (--pool off): every connection does its own handshake, which is
    # what this test watches resume.
    api = env.cp_sidecar("api", ctl, api_id, ctl.token(api_id, "api"), bundle=bundle,
                         inbound=[(in_port, echo.addr)], workers=1)
    web = env.cp_sidecar("web", ctl, web_id, ctl.token(web_id, "web"), bundle=bundle,
                         outbound=[(out_port, "127.0.0.1:%d" % in_port, api_id)],
                         extra=["--workers", "1", "--pool", "off"])
    h.wait_for(lambda: one_request(out_port, 1), 15, what="first request web -> api")
    for i in range(2):
        ok(one_request(out_port, 10 + i), "request %d web -> api" % (i + 2))

    def inbound():
        return api.listener("inbound")

    def acked_by_both(version):
        e = {s.get("spiffe_id"): s for s in ctl.sidecars()}
        return all(e.get(i, {}).get("acked_version") == version for i in (api_id, web_id))

    resumed = inbound()["handshakes_resumed"]
    ok(resumed >= 2, "connections 2 and 3 resumed the first one's session (%d)" % resumed)
    hits = rule_hits(api, "web-to-api")
    ok(hits == 3, "web-to-api counted 3 connections (%r)" % hits)

    steps = [
        ("an unrelated service-table push",
         lambda: ctl.ctl("service", "add", "127.0.0.1:%d" % h.free_port(),
                         h.spiffe("shop", "db"))),
        ("a policy push that keeps the rule",
         lambda: ctl.set_policy(policy(web_id, api_id, echo.port, extra=[
             {"name": "no-batch", "action": "deny", "from": [h.spiffe("batch", "job")]}]),
             "policy-2.json")),
    ]
    for n, (what, push) in enumerate(steps):
        before_version = ctl.stats()["version"]
        push()
        version = ctl.stats()["version"]
        ok(version > before_version, "%s made version %d" % (what, version))
        h.wait_for(lambda: acked_by_both(version), 10,
                   what="both sidecars to ACK version %d" % version)
        acks = [e for e in api.events("snapshot_acked") if e.get("version") == version]
        ok(acks and acks[-1].get("rebuilt_identity") == "no",
           "after %s the api sidecar kept its identity (%r)" % (what, acks[-1:] or None))
        before = inbound()
        ok(one_request(out_port, 20 + n), "a request after %s" % what)
        after = inbound()
        ok(after["handshakes"] == before["handshakes"] + 1 and
           after["handshakes_resumed"] == before["handshakes_resumed"] + 1,
           "after %s the next connection still resumed its session (handshakes %d -> %d, "
           "resumed %d -> %d)" % (what, before["handshakes"], after["handshakes"],
                                  before["handshakes_resumed"], after["handshakes_resumed"]))
        hits = rule_hits(api, "web-to-api")
        ok(hits == 4 + n, "after %s web-to-api's count went on to %d (got %r)" % (
            what, 4 + n, hits))
    ok(rule_hits(api, "no-batch") == 0, "the new rule starts at 0")
    ok(api.alive() and web.alive() and ctl.alive(), "all processes still running")
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-snapshot-members")
