#!/usr/bin/env python3
"""A snapshot a sidecar cannot apply is refused (NACK), the last good one stays, and the
refusal is visible in `tetherctl sidecars`.

The real case: a valid mesh policy with a deny rule conditioned on HTTP methods, aimed at
a workload whose port is declared opaque (--opaque-ports: relayed unread, as a
server-first protocol must be). That sidecar could never see a method there, so the rule
would let the requests it names through; it refuses the snapshot instead. The
control plane accepts the document (it is valid), the web sidecar (the rule does not
apply to it) acknowledges it, the api sidecar NACKs it with the reason, keeps enforcing
the previous policy, and acknowledges the next good version.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def allow_doc(web_id, api_id, port, extra=()):
    return {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "to": [api_id],
         "ports": [port]}] + list(extra)}


def one_request(port, seed):
    payload = h.pattern_bytes(256, seed=seed)
    try:
        echoed, _ = h.echo_roundtrip(port, payload, timeout=3)
    except OSError:
        return False
    return echoed == payload


def test(env):
    ok = h.Checks()
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    echo = env.echo("echo")
    in_port, out_port = h.free_port(), h.free_port()

    ctl = env.control(cert_ttl="1h")
    bundle = ctl.bundle()
    ctl.set_policy(allow_doc(web_id, api_id, echo.port))
    api = env.cp_sidecar("api", ctl, api_id, ctl.token(api_id, "api"), bundle=bundle,
                         inbound=[(in_port, echo.addr)],
                         extra=["--opaque-ports", str(echo.port)])
    web = env.cp_sidecar("web", ctl, web_id, ctl.token(web_id, "web"), bundle=bundle,
                         outbound=[(out_port, "127.0.0.1:%d" % in_port, api_id)])
    h.wait_for(lambda: one_request(out_port, 1), 10, what="first request web -> api")
    good_version = ctl.stats()["version"]

    # The unenforceable document: valid, so the control plane stores and pushes it.
    bad = allow_doc(web_id, api_id, echo.port, extra=[
        {"name": "no-deletes", "action": "deny", "from": ["*"], "to": [api_id],
         "methods": ["DELETE"]}])
    ctl.set_policy(bad, "unenforceable.json")
    bad_version = ctl.stats()["version"]
    ok(bad_version > good_version, "the control plane accepted the document as version %d"
       % bad_version)

    def entries():
        return {e.get("spiffe_id"): e for e in ctl.sidecars()}

    sc = h.wait_for(lambda: (lambda e: e if e.get(api_id, {}).get("nacked_version") ==
                             bad_version and e.get(web_id, {}).get("acked_version") ==
                             bad_version else None)(entries()),
                    5, what="api to NACK and web to ACK version %d" % bad_version)
    reason = sc[api_id].get("nack_reason") or ""
    ok("no-deletes" in reason and "HTTP method on port %d" % echo.port in reason,
       "tetherctl sidecars --json shows api's NACK with the reason (%r)" % reason)
    ok(sc[api_id].get("acked_version") == good_version,
       "api still acknowledges the last good version %d (%r)" % (
           good_version, sc[api_id].get("acked_version")))
    table = ctl.ctl("sidecars").stdout
    ok("no-deletes" in table, "the sidecars table shows the NACK reason:\n" + table)

    st = api.stats()["server"]["control"]
    ok(st["version_refused"] == bad_version and st["version_applied"] == good_version,
       "api /stats: refused %r, applied %r" % (st["version_refused"], st["version_applied"]))
    ok(one_request(out_port, 2), "traffic still flows under the last good policy")
    ok(any(e.get("version") == bad_version for e in api.events("snapshot_refused")),
       "the api sidecar logged snapshot_refused for version %d" % bad_version)
    ok(any(e.get("version") == bad_version for e in ctl.events("snapshot_nacked")),
       "the control plane logged snapshot_nacked")

    # A good document again: acknowledged by both.
    ctl.set_policy(allow_doc(web_id, api_id, echo.port), "fixed.json")
    fixed = ctl.stats()["version"]
    h.wait_for(lambda: all(e.get("acked_version") == fixed for k, e in entries().items()
                           if k in (api_id, web_id)), 5,
               what="both sidecars to ACK version %d" % fixed)
    ok(True, "both sidecars acknowledge the fixed version %d" % fixed)
    ok(api.alive() and web.alive() and ctl.alive(), "all processes still running")
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-nack")
