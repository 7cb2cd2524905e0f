#!/usr/bin/env python3
"""Bad start-up input: exit code 2 and exactly one line on stderr that names the problem.
--help: exit 0, stdout mentions every flag of issue 2."""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

FLAGS = ["--config", "--identity-cert", "--identity-key", "--trust-bundle", "--inbound",
         "--outbound", "--policy", "--admin", "--workers", "--log-level",
         "--max-connections", "--handshake-timeout", "--connect-timeout", "--idle-timeout",
         "--drain-timeout", "--help"]


def test(env):
    ok = h.Checks()
    sc = env.sidecar_bin
    ca = env.certs.ca("ca")
    other_ca = env.certs.ca("other")
    cert = env.certs.leaf("web", ca, [h.spiffe("shop", "web")])
    other = env.certs.leaf("other", other_ca, [h.spiffe("shop", "other")])
    garbage = env.write("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n"
                                       "-----END CERTIFICATE-----\n")
    empty = env.write("empty.pem", "")
    noperm = env.write("noperm.key", open(cert.key).read(), mode=0o000)
    good_policy = env.policy("good-policy.json", {"default": "deny", "rules": [
        {"name": "r", "action": "allow", "from": [h.spiffe("shop", "web")]}]})
    bad_json = env.write("bad-json.json", '{"default": "deny", "rules": [ {"name": ')
    unknown_field = env.policy("unknown-field.json", {"default": "deny", "rules": [
        {"name": "r", "action": "allow", "from": [h.spiffe("a", "b")], "colour": "red"}]})
    bad_action = env.policy("bad-action.json", {"rules": [
        {"name": "r", "action": "maybe", "from": [h.spiffe("a", "b")]}]})
    bad_id = env.policy("bad-id.json", {"rules": [
        {"name": "r", "action": "allow", "from": ["http://not-spiffe/x"]}]})
    in_port, admin_port = h.free_port(), h.free_port()
    inbound = "127.0.0.1:%d=127.0.0.1:9" % in_port

    def base(**over):
        a = {"--identity-cert": cert.crt, "--identity-key": cert.key,
             "--trust-bundle": ca.crt, "--admin": "127.0.0.1:%d" % admin_port,
             "--inbound": inbound}
        a.update(over)
        argv = []
        for k, v in a.items():
            if v is not None:
                argv += [k, v]
        return argv

    def run(argv, timeout=10):
        try:
            r = subprocess.run([sc] + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, b"", "<still running after %ds: did not refuse>" % timeout
        return r.returncode, r.stdout, r.stderr.decode(errors="replace")

    # The good base must start (sanity), so the failures below are about the one change.
    p = env.sidecar("sanity", cert, ca, inbound=[(in_port, "127.0.0.1:9")],
                    admin_port=admin_port)
    p.stop()

    cases = [
        ("unknown flag", ["--bogus-flag"] + base(), ["bogus-flag"]),
        ("flag missing its value", base() + ["--workers"], ["workers"]),
        ("missing certificate file", base(**{"--identity-cert": "/nonexistent/w.crt"}),
         ["/nonexistent/w.crt"]),
        ("missing key file", base(**{"--identity-key": "/nonexistent/w.key"}),
         ["/nonexistent/w.key"]),
        ("missing trust bundle", base(**{"--trust-bundle": "/nonexistent/ca.crt"}),
         ["/nonexistent/ca.crt"]),
        ("garbage PEM certificate", base(**{"--identity-cert": garbage}), ["garbage.pem"]),
        ("empty trust bundle", base(**{"--trust-bundle": empty}), ["empty.pem"]),
        ("a certificate as the key", base(**{"--identity-key": cert.crt}), ["web.crt"]),
        ("key does not match the certificate", base(**{"--identity-key": other.key}),
         ["key"]),
        ("no identity certificate", base(**{"--identity-cert": None}), ["identity-cert"]),
        ("no listener", base(**{"--inbound": None}), ["listener"]),
        ("inbound port out of range", base(**{"--inbound": "127.0.0.1:99999=127.0.0.1:80"}),
         ["99999"]),
        ("inbound without =FORWARD", base(**{"--inbound": "127.0.0.1:%d" % in_port}),
         ["--inbound"]),
        ("outbound without @SPIFFE_ID", base(**{"--outbound": "127.0.0.1:1=127.0.0.1:2"}),
         ["--outbound"]),
        ("outbound with a non-SPIFFE ID",
         base(**{"--outbound": "127.0.0.1:1=127.0.0.1:2@http://x/y"}), ["http://x/y"]),
        ("bad duration", base(**{"--idle-timeout": "10x"}), ["idle-timeout"]),
        ("negative workers", base(**{"--workers": "-3"}), ["workers"]),
        ("bad log level", base(**{"--log-level": "chatty"}), ["log-level"]),
        ("bad max-connections", base(**{"--max-connections": "lots"}), ["max-connections"]),
        ("bad admin address", base(**{"--admin": "nowhere"}), ["admin"]),
        ("missing policy file", base(**{"--policy": "/nonexistent/p.json"}),
         ["/nonexistent/p.json"]),
        ("policy: JSON syntax error", base(**{"--policy": bad_json}), ["bad-json.json"]),
        ("policy: unknown field", base(**{"--policy": unknown_field}),
         ["unknown-field.json", "colour"]),
        ("policy: bad action", base(**{"--policy": bad_action}), ["bad-action.json", "action"]),
        ("policy: non-SPIFFE caller", base(**{"--policy": bad_id}), ["bad-id.json"]),
    ]
    if os.geteuid() != 0:
        cases.append(("unreadable key", base(**{"--identity-key": noperm}), ["noperm.key"]))
    for what, argv, words in cases:
        rc, out, err = run(argv)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        ok(rc == 2, "%s: exit code 2 (got %r)" % (what, rc))
        ok(len(lines) == 1, "%s: exactly one line on stderr (got %d: %r)" % (
            what, len(lines), lines[:3]))
        ok(all(w.lower() in err.lower() for w in words),
           "%s: the line names %s (%r)" % (what, words, err.strip()[:200]))

    # The admin address in use: refused as well (exit 2, one line naming the address).
    import socket
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    busy = s.getsockname()[1]
    rc, out, err = run(base(**{"--admin": "127.0.0.1:%d" % busy}))
    ok(rc not in (0, None) and str(busy) in err,
       "admin address in use: non-zero exit naming the port (rc %r, %r)" % (rc, err[:200]))
    s.close()

    # A listen address another process holds (even one that set SO_REUSEPORT, as another
    # sidecar would): refused, exit 2, never shared silently.
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    busy = s.getsockname()[1]
    rc, out, err = run(base(**{"--inbound": "127.0.0.1:%d=127.0.0.1:9" % busy}))
    ok(rc == 2 and str(busy) in err and "in use" in err and len(err.strip().splitlines()) == 1,
       "listen address held by another process: exit 2 naming it (rc %r, %r)" % (
           rc, err[:200]))
    s.close()

    # A good policy file passes (so the failures above are about their content).
    p = env.sidecar("good-policy", cert, ca, inbound=[(in_port, "127.0.0.1:9")],
                    admin_port=admin_port, policy=good_policy)
    p.stop()

    rc, out, err = run(["--help"])
    text = out.decode(errors="replace")
    ok(rc == 0, "--help exits 0 (got %r)" % rc)
    missing = [f for f in FLAGS if f not in text]
    ok(not missing, "--help mentions every flag (missing %s)" % missing)
    for word in ("1h", "16384", "15000"):
        ok(word in text, "--help shows the default %s" % word)
    ok.done()


if __name__ == "__main__":
    h.main(test, "config-errors")
