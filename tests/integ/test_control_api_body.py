#!/usr/bin/env python3
"""The operator API's request bodies, with curl (issue 7 item 11).

- A POST whose body is not declared JSON is refused with 415 and a JSON error: curl's
  form post (`-d`, application/x-www-form-urlencoded: what a cross-site form sends),
  text/plain, and no Content-Type at all; no token is created by them.
- `Content-Type: application/json` (also with a charset) is accepted; tetherctl, which
  sends it, keeps working.
- A body over 64 KiB is refused with 413 and a JSON error that says the limit, both with a
  Content-Length and chunked; a body just under it is parsed.
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

LIMIT = 64 * 1024


def curl(ctl, args, body_file=None):
    """curl against the operator API; returns (status, content type, body)."""
    argv = ["curl", "-sS", "--max-time", "10", "-o", "-", "-w",
            "\n%{http_code} %{content_type}"]
    tok = os.path.join(ctl.state_dir, "operator.token")
    if os.path.exists(tok):
        with open(tok) as f:
            argv += ["-H", "Authorization: Bearer " + f.read().strip()]
    r = subprocess.run(argv + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20)
    out = r.stdout.decode(errors="replace")
    body, _, tail = out.rpartition("\n")
    status, _, ctype = tail.partition(" ")
    return int(status or 0), ctype, body


def test(env):
    ok = h.Checks()
    ctl = env.control()
    url = ctl.api + "/v1/tokens"
    body = json.dumps({"spiffe_id": h.spiffe("shop", "api")})

    for what, args in (
            ("a form post (curl -d)", ["-d", body, url]),
            ("text/plain", ["-H", "Content-Type: text/plain", "--data-binary", body, url]),
            ("no Content-Type", ["-H", "Content-Type:", "--data-binary", body, url])):
        st, ctype, text = curl(ctl, args)
        try:
            err = json.loads(text).get("error", "")
        except ValueError:
            err = None
        ok(st == 415 and ctype.startswith("application/json") and err and
           "application/json" in err,
           "%s: 415 with a JSON error (%d %s %r)" % (what, st, ctype, text[:200]))
    ok(ctl.ctl("token", "list", as_json=True)["tokens"] == [],
       "no token was created by the refused requests")

    for ct in ("application/json", "application/json; charset=utf-8"):
        st, _, text = curl(ctl, ["-H", "Content-Type: " + ct, "--data-binary", body, url])
        ok(st == 201 and "token" in json.loads(text), "Content-Type: %s -> 201" % ct)
    ok(ctl.ctl("token", "create", "--spiffe-id", h.spiffe("shop", "web")).returncode == 0,
       "tetherctl token create still works")
    pol = env.write("p.json", json.dumps({"default": "deny", "rules": []}))
    ok(ctl.ctl("policy", "set", pol).returncode == 0, "tetherctl policy set still works")

    big = env.write("big.json", "{" + " " * (LIMIT + 100) + "}")
    for what, extra in (("with Content-Length", []),
                        ("chunked", ["-H", "Transfer-Encoding: chunked"])):
        st, ctype, text = curl(ctl, ["-X", "PUT", "-H", "Content-Type: application/json",
                                     "--data-binary", "@" + big] + extra +
                               [ctl.api + "/v1/policy"])
        try:
            err = json.loads(text).get("error", "")
        except ValueError:
            err = None
        ok(st == 413 and ctype.startswith("application/json") and err and "64 KiB" in err,
           "a body over 64 KiB (%s): 413 with a JSON error naming the limit (%d %s %r)" % (
               what, st, ctype, text[:200]))
    under = env.write("under.json", "{" + " " * (LIMIT - 2) + "}")
    st, _, text = curl(ctl, ["-X", "PUT", "-H", "Content-Type: application/json",
                             "--data-binary", "@" + under, ctl.api + "/v1/policy"])
    ok(st == 400 and "rules" in text,
       "a body just under the limit is parsed (refused as a policy, not for its size): %d %r"
       % (st, text[:200]))
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-api-body")
