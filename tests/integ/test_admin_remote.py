#!/usr/bin/env python3
"""The admin endpoint on an address other than loopback (issue 7 item 9): an attacker on
the network, played by curl in a network namespace that this test creates (a veth pair,
10.x addresses derived from the pid, removed at the end), tries to stop the sidecar and
read what it keeps.

- --admin <veth address>: /ready, /live and /stats answer (also with whatever Host a
  kubelet probe sends), /certs, /policy and POST /quitquitquit get 403 with a JSON error,
  the sidecar keeps running, and it said so at start in one log line;
- --admin 0.0.0.0: the same through the veth address, while 127.0.0.1 keeps every route
  (with the Host check);
- --admin-allow-remote-control (and admin_allow_remote_control in a --config file): every
  route there, still refusing a rebinding Host and a cross-site POST, and a plain POST
  /quitquitquit from the namespace stops it.
Needs root (ip netns); skipped otherwise."""

import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class Netns:
    """A namespace joined to this one by a veth pair: self.host_ip here, self.peer_ip there."""

    def __init__(self):
        pid = os.getpid()
        self.ns = "ttadm%d" % pid
        self.host_if, self.peer_if = "ttah%d" % pid, "ttap%d" % pid
        net = "10.%d.%d" % (200 + pid % 50, (pid // 50) % 250)
        self.host_ip, self.peer_ip = net + ".1", net + ".2"
        self.made = False

    def ip(self, *args):
        h.run(["ip"] + list(args))

    def __enter__(self):
        self.ip("netns", "add", self.ns)
        self.made = True
        self.ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        self.ip("link", "set", self.peer_if, "netns", self.ns)
        self.ip("addr", "add", self.host_ip + "/30", "dev", self.host_if)
        self.ip("link", "set", self.host_if, "up")
        self.ip("-n", self.ns, "addr", "add", self.peer_ip + "/30", "dev", self.peer_if)
        self.ip("-n", self.ns, "link", "set", self.peer_if, "up")
        self.ip("-n", self.ns, "link", "set", "lo", "up")
        h.log("netns %s: %s (%s) <-> %s (%s)" % (self.ns, self.host_if, self.host_ip,
                                                  self.peer_if, self.peer_ip))
        return self

    def __exit__(self, *exc):
        # Deleting the namespace deletes the peer end and with it the pair.
        subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "link", "del", self.host_if], stderr=subprocess.DEVNULL)
        return False

    def curl(self, url, *args):
        """(status, body) of curl run inside the namespace; status 0 when it failed."""
        r = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-s", "--max-time", "5",
                            "-o", "-", "-w", "\n%{http_code}"] + list(args) + [url],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        body, _, code = r.stdout.rpartition(b"\n")
        return int(code or b"0"), body


def local_curl(url, *args):
    r = subprocess.run(["curl", "-s", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"] +
                       list(args) + [url], stdout=subprocess.PIPE, timeout=20)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or b"0"), body


def error_of(body):
    try:
        return json.loads(body).get("error", "")
    except ValueError:
        return None


def start(env, name, cert, ca, echo, admin, extra=()):
    """A sidecar with --admin <admin ip>:<free port>; waits for /ready over that address."""
    port = h.free_port()
    sc = env.sidecar(name, cert, ca, inbound=[(h.free_port(), echo.addr)], admin_port=port,
                     extra=["--admin", "%s:%d" % (admin, port)] + list(extra), wait=False,
                     workers=1)
    target = "127.0.0.1" if admin == "0.0.0.0" else admin

    def ready():
        if not sc.alive():
            raise h.TestFailure("%s exited: %s" % (name, sc.stderr()[-2000:]))
        try:
            return h.http_get(port, "/ready", timeout=1, host=target)[0] == 200
        except OSError:
            return False
    h.wait_for(ready, 15, 0.05, "%s /ready" % name)
    return sc, port


def remote_only(ok, ns, sc, url, label, spiffe_id):
    """The checks of a non-loopback address without remote control."""
    for path, host in (("/ready", None), ("/ready", "pod.example:15021"), ("/live", None),
                       ("/stats", None), ("/stats", "evil.example")):
        st, body = ns.curl(url + path, *(["-H", "Host: " + host] if host else []))
        ok(st == 200, "%s: GET %s%s from the network -> 200 (%r)" % (
            label, path, " with Host " + host if host else "", st))
    st, body = ns.curl(url + "/stats")
    ok(st == 200 and spiffe_id.encode() in body, "%s: /stats is the real thing" % label)
    for method, path in (("GET", "/certs"), ("GET", "/policy"), ("POST", "/quitquitquit")):
        st, body = ns.curl(url + path, "-X", method)
        err = error_of(body)
        ok(st == 403 and err and "--admin-allow-remote-control" in err and
           b"BEGIN CERTIFICATE" not in body and spiffe_id.encode() not in body,
           "%s: %s %s from the network -> 403 with a JSON error (%r %r)" % (
               label, method, path, st, body[:120]))
    st, body = ns.curl(url + "/quitquitquit", "-X", "POST", "-H", "Host: evil.example")
    ok(st in (403, 421), "%s: POST /quitquitquit with a rebinding Host -> %r" % (label, st))
    time.sleep(0.5)
    ok(sc.alive(), "%s: the sidecar is still running" % label)


def test(env):
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("curl") is None:
        print("SKIP: needs root, ip and curl")
        sys.exit(h.SKIP)
    ok = h.Checks()
    ca = env.certs.ca("ca")
    api_id = h.spiffe("shop", "api")
    api = env.certs.leaf("api", ca, [api_id])
    echo = env.echo("echo")
    with Netns() as ns:
        # 1. --admin on the veth address.
        sc, port = start(env, "on-veth", api, ca, echo, ns.host_ip)
        url = "http://%s:%d" % (ns.host_ip, port)
        remote_only(ok, ns, sc, url, "--admin %s" % ns.host_ip, api_id)
        said = sc.events("admin_not_loopback")
        ok(len(said) == 1 and "only /ready, /live and /stats" in said[0].get("effect", ""),
           "it said so at start, in one line (%r)" % said)
        sc.stop()

        # 2. --admin 0.0.0.0: the network gets the same; loopback keeps every route.
        sc, port = start(env, "on-any", api, ca, echo, "0.0.0.0")
        remote_only(ok, ns, sc, "http://%s:%d" % (ns.host_ip, port), "--admin 0.0.0.0", api_id)
        st, body = local_curl("http://127.0.0.1:%d/certs" % port)
        ok(st == 200 and api_id.encode() in body, "0.0.0.0: /certs over 127.0.0.1 -> 200 (%r)"
           % st)
        st, body = local_curl("http://127.0.0.1:%d/certs" % port, "-H", "Host: evil.example")
        ok(st == 421, "0.0.0.0: /certs over 127.0.0.1 with Host evil.example -> 421 (%r)" % st)
        ok(len(sc.events("admin_not_loopback")) == 1, "0.0.0.0: it said so at start")
        sc.stop()

        # 3. --admin-allow-remote-control: every route, with the browser checks.
        sc, port = start(env, "remote-control", api, ca, echo, ns.host_ip,
                         extra=["--admin-allow-remote-control"])
        url = "http://%s:%d" % (ns.host_ip, port)
        said = sc.events("admin_not_loopback")
        ok(len(said) == 1 and "/quitquitquit included" in said[0].get("effect", ""),
           "remote control: it said so at start (%r)" % said)
        st, body = ns.curl(url + "/certs")
        ok(st == 200 and api_id.encode() in body, "remote control: /certs -> 200 (%r)" % st)
        st, body = ns.curl(url + "/certs", "-H", "Host: evil.example:%d" % port)
        ok(st == 421, "remote control: /certs with a rebinding Host -> 421 (%r)" % st)
        st, body = ns.curl(url + "/quitquitquit", "-X", "POST", "-H", "Host: evil.example")
        ok(st == 421, "remote control: POST with a rebinding Host -> 421 (%r)" % st)
        st, body = ns.curl(url + "/quitquitquit", "-X", "POST", "-H",
                           "Origin: http://evil.example", "--data", "x=1")
        ok(st == 403, "remote control: a cross-site form POST -> 403 (%r)" % st)
        time.sleep(0.3)
        ok(sc.alive(), "remote control: still running after the refused POSTs")
        st, body = ns.curl(url + "/quitquitquit", "-X", "POST")
        ok(st == 200, "remote control: a plain POST /quitquitquit -> 200 (%r)" % st)
        ok(sc.wait(10) == 0, "remote control: exited 0")

        # 4. The same switch in a --config file.
        cfg = env.write("remote.json", json.dumps({"admin_allow_remote_control": True}))
        sc, port = start(env, "remote-config", api, ca, echo, ns.host_ip,
                         extra=["--config", cfg])
        st, body = ns.curl("http://%s:%d/policy" % (ns.host_ip, port))
        ok(st == 200, "admin_allow_remote_control in --config: /policy -> 200 (%r)" % st)
        sc.stop()
    ok.done()


if __name__ == "__main__":
    h.main(test, "admin-remote")
