#!/usr/bin/env python3
"""DNS rebinding against the control plane's loopback operator API (issue 7 item 3): a web
page at evil.example, re-pointed at 127.0.0.1, makes the operator's browser call the API
with Host: evil.example:PORT. Played with curl: creating a token, setting a
`default: allow` policy, revoking a serial and reading the token list are each answered
421 with a JSON error, and afterwards tetherctl shows the tokens, the policy and the
revocations unchanged. The Host check comes before the operator credential: the attack
is refused even when it carries the right Authorization (sent when the state directory
has an operator.token). The same requests with Host 127.0.0.1:PORT or localhost:PORT
work (so the refusals are the Host check's, not something else's)."""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def bearer_args(ctl):
    """The operator credential, as curl arguments, when the control plane made one."""
    path = os.path.join(ctl.state_dir, "operator.token")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return ["-H", "Authorization: Bearer " + f.read().strip()]


def api_call(ctl, method, path, host, body=None, credential=True):
    """(status, body bytes) of one raw API request through curl with that Host."""
    args = ["curl", "-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", "-X", method,
            "-H", "Host: " + host] + (bearer_args(ctl) if credential else [])
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data", json.dumps(body)]
    args.append(ctl.api + path)
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    out, _, code = r.stdout.rpartition(b"\n")
    return int(code or b"0"), out


def state(ctl):
    """What the attack would change, as tetherctl shows it."""
    return tuple(json.dumps(ctl.ctl(*cmd, as_json=True), sort_keys=True)
                 for cmd in (("token", "list"), ("policy", "get"), ("revocations",)))


def test(env):
    h.require_control()
    ok = h.Checks()
    ctl = env.control()
    ctl.set_policy({"default": "deny", "rules": []})
    before = state(ctl)
    evil = "evil.example:%d" % ctl.api_port
    attacks = [
        ("POST", "/v1/tokens", {"spiffe_id": h.spiffe("shop", "evil")}),
        ("PUT", "/v1/policy", {"default": "allow", "rules": []}),
        ("POST", "/v1/revocations", {"serial": "0A1B2C"}),
        ("GET", "/v1/tokens", None),
        ("GET", "/v1/bundle", None),
    ]
    for method, path, body in attacks:
        for host in (evil, "evil.example", "10.0.0.1:%d" % ctl.api_port):
            st, out = api_call(ctl, method, path, host, body)
            try:
                doc = json.loads(out)
            except ValueError:
                doc = {}
            ok(st == 421 and list(doc) == ["error"] and "DNS rebinding" in doc["error"],
               "%s %s with Host %s -> 421 and only a JSON error (%r %r)" % (
                   method, path, host, st, out[:140]))
    # Without the credential too: the Host is refused first, so the page learns nothing
    # (not even that a credential is wanted).
    st, out = api_call(ctl, "POST", "/v1/tokens", evil, {"spiffe_id": h.spiffe("shop", "x")},
                       credential=False)
    ok(st == 421, "POST /v1/tokens with Host %s and no credential -> 421 (%r %r)" % (
        evil, st, out[:100]))
    ok(state(ctl) == before, "tokens, policy and revocations unchanged after the rebinding "
       "attempts (tetherctl)")
    ok(ctl.events("http_host_refused"), "the refused Hosts are logged (http_host_refused)")

    # The same request with a loopback Host is the API's business (the check can fail).
    for host in ("127.0.0.1:%d" % ctl.api_port, "localhost:%d" % ctl.api_port):
        st, out = api_call(ctl, "POST", "/v1/tokens", host,
                           {"spiffe_id": h.spiffe("shop", "web")})
        ok(st == 201, "POST /v1/tokens with Host %s -> 201 (%r %r)" % (host, st, out[:120]))
    ok(state(ctl)[0] != before[0], "tetherctl lists the tokens made with a loopback Host")
    ok.done()


if __name__ == "__main__":
    h.main(test, "admin-api-host")
