#!/usr/bin/env python3
"""deploy/iptables/tether-iptables, proven by connections rather than by reading rules.

Two "pods" (network namespaces named with this process's pid, joined by a veth pair,
10.77.0.0/24 and fd00:77::/64) run small Python servers that answer every connection
with the namespace, the port that accepted it and the original destination read with
SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST. Pod A gets the capture rules; clients run in the
pods as a workload user (uid 4242) or as the proxy (uid/gid 1337) through setpriv, and
each case asserts which listener a connection landed on. The whole set runs once per
iptables backend (nft, legacy); a backend the kernel lacks is skipped with a SKIP line.
Fixed ports are fine here: they live in the test's own namespaces. Needs root, ip and
iptables; exits 77 (skip) without them. Everything started is stopped by pid and every
namespace deleted on the way out."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SCRIPT = os.environ.get("TT_IPTABLES") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy", "iptables", "tether-iptables")

A4, B4, B4_EXCLUDED = "10.77.0.1", "10.77.0.2", "10.77.0.3"
A6, B6, B6_EXCLUDED = "fd00:77::1", "fd00:77::2", "fd00:77::3"
WORKLOAD = ["setpriv", "--reuid", "4242", "--regid", "4242", "--clear-groups"]
PROXY = ["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups"]
PROXY_GID_ONLY = ["setpriv", "--reuid", "4242", "--regid", "1337", "--clear-groups"]
A_PORTS = [15001, 15006, 8080, 9090, 7070, 15020, 15021]
B_PORTS = [8080, 9090, 5432]
# The options of the main install: one of each exclusion, both families' CIDRs.
OPTS = ["--exclude-inbound-ports", "7070", "--exclude-outbound-ports", "5432",
        "--exclude-outbound-cidrs", "%s/32,%s" % (B4_EXCLUDED, B6_EXCLUDED)]

# The servers and the client, run inside the namespaces (standard library only).
HELPER = r'''
import json, selectors, socket, struct, sys

def odst(c, fam):
    try:
        if fam == socket.AF_INET:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)           # SO_ORIGINAL_DST
            port, addr = struct.unpack("!2xH4s8x", raw)
            return "%s:%d" % (socket.inet_ntop(socket.AF_INET, addr), port)
        raw = c.getsockopt(41, 80, 28)                          # SOL_IPV6, IP6T_SO_ORIGINAL_DST
        port, addr = struct.unpack("!2xH4x16s4x", raw)
        return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, addr), port)
    except OSError as e:
        return "none(%s)" % e.errno

def serve(name, ports):
    sel = selectors.DefaultSelector()
    for port in ports:
        for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((host, port))
            s.listen(64)
            sel.register(s, selectors.EVENT_READ, (fam, port))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            fam, port = key.data
            c, peer = key.fileobj.accept()
            with c:
                msg = {"ns": name, "port": port, "odst": odst(c, fam), "peer": peer[0]}
                c.sendall((json.dumps(msg) + "\n").encode())

def connect(host, port):
    try:
        c = socket.create_connection((host, int(port)), timeout=3)
        data = b""
        while not data.endswith(b"\n"):
            d = c.recv(4096)
            if not d:
                break
            data += d
        c.close()
        return data.decode().strip() or json.dumps({"error": "empty answer"})
    except OSError as e:
        return json.dumps({"error": str(e)})

def agent():
    # One connection per line "HOST PORT" on stdin, one answer line on stdout.
    print("ready", flush=True)
    for line in sys.stdin:
        host, port = line.split()
        print(connect(host, port), flush=True)

if sys.argv[1] == "serve":
    serve(sys.argv[2], [int(p) for p in sys.argv[3].split(",")])
else:
    agent()
'''


def run(cmd, check_rc=True, timeout=30):
    """Runs cmd; returns (rc, stdout, stderr). Fails the test on a non-zero rc when asked."""
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise h.TestFailure("%s exited %d: %s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return p.returncode, p.stdout, p.stderr


class Pods:
    """Two namespaces joined by a veth pair, with servers in both; close() removes all."""

    def __init__(self, workdir, tag):
        pid = os.getpid()
        self.a, self.b = "tt-ipt-a%s-%d" % (tag, pid), "tt-ipt-b%s-%d" % (tag, pid)
        self.va, self.vb = "tta%s%d" % (tag, pid), "ttb%s%d" % (tag, pid)
        self.workdir = workdir
        self.procs = []
        self.agents = {}
        self.made = []

    def open(self):
        for ns in (self.a, self.b):
            run(["ip", "netns", "add", ns])
            self.made.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        run(["ip", "link", "add", self.va, "netns", self.a, "type", "veth", "peer", "name",
             self.vb, "netns", self.b])
        for ns, dev, addrs in ((self.a, self.va, [A4 + "/24", A6 + "/64"]),
                               (self.b, self.vb, [B4 + "/24", B4_EXCLUDED + "/24",
                                                  B6 + "/64", B6_EXCLUDED + "/64"])):
            for ad in addrs:
                extra = ["nodad"] if ":" in ad else []
                run(["ip", "-n", ns, "addr", "add", ad, "dev", dev] + extra)
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        self.serve(self.a, "A", A_PORTS)
        self.serve(self.b, "B", B_PORTS)

    def start(self, cmd, what):
        """Starts cmd (its pid is kept for close) and waits for its "ready" line."""
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.kill()
            raise h.TestFailure("%s did not start: %r %s" % (what, line, p.stderr.read()))
        return p

    def serve(self, ns, name, ports):
        self.start(["ip", "netns", "exec", ns, PY, self.helper(), "serve", name,
                    ",".join(str(x) for x in ports)], "server in %s" % ns)

    def helper(self):
        return os.path.join(self.workdir, "helper.py")

    def connect(self, ns, who, host, port):
        """Connects from namespace ns as who (a setpriv prefix, or [] for root) and returns
        the answer: {"ns", "port", "odst"} from the listener reached, or {"error"}. Each
        (namespace, user) has one client process, started on first use."""
        key = (ns, tuple(who))
        if key not in self.agents:
            self.agents[key] = self.start(["ip", "netns", "exec", ns] + who + [
                PY, self.helper(), "agent"], "client in %s as %s" % (ns, who))
        p = self.agents[key]
        p.stdin.write("%s %d\n" % (host, port))
        p.stdin.flush()
        line = p.stdout.readline()  # the client's own timeout (3 s) bounds this
        try:
            return json.loads(line)
        except ValueError:
            return {"error": "no answer: %r" % line}

    def ipt(self, *args, check_rc=True):
        """Runs tether-iptables in pod A; returns (rc, stdout, stderr)."""
        return run(["ip", "netns", "exec", self.a, SCRIPT] + list(args), check_rc=check_rc)

    def save(self, fam, backend):
        """The tables of family fam (iptables|ip6tables) in pod A, without comment lines
        and packet counters (legacy counts packets on the built-in chains)."""
        _, out, _ = run(["ip", "netns", "exec", self.a, "%s-%s-save" % (fam, backend)])
        return "\n".join(re.sub(r"\[\d+:\d+\]$", "[0:0]", ln) for ln in out.splitlines()
                         if not ln.startswith("#"))

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=5)
            for f in (p.stdin, p.stdout, p.stderr):
                f.close()
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def landed(ans, ns, port, odst=None):
    """True when answer ans came from namespace ns's listener on port (with original
    destination odst when given)."""
    if ans.get("ns") != ns or ans.get("port") != port:
        return False
    return odst is None or ans.get("odst") == odst


def backend_usable(backend, ns):
    """None when backend's nat table works in namespace ns, else why not."""
    if shutil.which("iptables-%s" % backend) is None:
        return "iptables-%s is not installed" % backend
    if backend == "legacy" and shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", "ip_tables"], capture_output=True)
        subprocess.run(["modprobe", "-q", "ip6_tables"], capture_output=True)
    for fam in ("iptables", "ip6tables"):
        rc, out, err = run(["ip", "netns", "exec", ns, "%s-%s" % (fam, backend), "-t", "nat",
                            "-S"], check_rc=False)
        if rc != 0:
            return "%s-%s -t nat fails: %s" % (fam, backend, (err or out).strip())
    return None


def usage_errors(ck):
    """Bad options exit 2 naming the option and what was expected; --help exits 0."""
    # (arguments, word the message must name, whether it must say what was expected)
    cases = [
        (["install", "--exclude-inbound-ports", "70000"], "--exclude-inbound-ports", True),
        (["install", "--include-inbound-ports", "80,x"], "--include-inbound-ports", True),
        (["install", "--exclude-outbound-cidrs", "10.0.0.0/33"], "--exclude-outbound-cidrs", True),
        (["install", "--exclude-outbound-cidrs", "fd00:::1"], "--exclude-outbound-cidrs", True),
        (["install", "--backend", "iptables"], "--backend", True),
        (["install", "--proxy-uid", "nobody"], "--proxy-uid", True),
        (["install", "--inbound-port", "15001"], "--inbound-port", True),
        (["install", "--exclude-outbound-ports"], "--exclude-outbound-ports", False),
        (["install", "--no-such-option"], "--no-such-option", False),
        (["install", "--ipv4-only", "--ipv6-only"], "--ipv4-only", False),
        (["frobnicate"], "frobnicate", True),
        ([], "no command", True),
    ]
    for args, word, expected in cases:
        rc, _, err = run([SCRIPT] + args, check_rc=False)
        ck(rc == 2 and word in err and ("expected" in err or not expected),
           "tether-iptables %s: exit 2 naming %s (rc %d: %s)" % (
               " ".join(args), word, rc, err.strip().splitlines()[0] if err.strip() else ""))
    rc, out, _ = run([SCRIPT, "--help"], check_rc=False)
    ck(rc == 0 and "--exclude-outbound-cidrs" in out, "--help exits 0 and lists the options")


def capture_cases(ck, pods, be):
    """The main install: what is captured, what is not, for both families."""
    A, B = "A", "B"
    ck(landed(pods.connect(pods.a, WORKLOAD, B4, 8080), A, 15001, "%s:8080" % B4),
       "[%s] (1) workload -> B:8080 lands on A's 15001 with original dst B:8080" % be)
    ck(landed(pods.connect(pods.a, PROXY, B4, 8080), B, 8080),
       "[%s] (2) uid/gid 1337 -> B:8080 is not captured and reaches B" % be)
    ck(landed(pods.connect(pods.a, PROXY_GID_ONLY, B4, 8080), B, 8080),
       "[%s] (2) gid 1337 alone (uid 4242) -> B:8080 is not captured" % be)
    ck(landed(pods.connect(pods.a, [], B4, 8080), A, 15001, "%s:8080" % B4),
       "[%s] (1) root (not the proxy) -> B:8080 is captured too" % be)
    ck(landed(pods.connect(pods.b, [], A4, 8080), A, 15006, "%s:8080" % A4),
       "[%s] (3) B -> A:8080 lands on A's 15006 with original dst A:8080" % be)
    for port in (15021, 15020):
        ck(landed(pods.connect(pods.b, [], A4, port), A, port),
           "[%s] (4) B -> A:%d (kubelet/scrape) is not captured" % (be, port))
    ck(landed(pods.connect(pods.b, [], A4, 7070), A, 7070),
       "[%s] (5) excluded inbound port 7070 is not captured" % be)
    ck(landed(pods.connect(pods.b, [], A4, 9090), A, 15006, "%s:9090" % A4),
       "[%s] (5) inbound 9090 (not excluded) is captured" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, B4, 5432), B, 5432),
       "[%s] (5) excluded outbound port 5432 reaches B directly" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, B4, 9090), A, 15001, "%s:9090" % B4),
       "[%s] (5) outbound 9090 (not excluded) is captured" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, B4_EXCLUDED, 8080), B, 8080),
       "[%s] (5) excluded CIDR %s/32 reaches B directly" % (be, B4_EXCLUDED))
    # (6) loopback and calls to the pod's own address.
    ck(landed(pods.connect(pods.a, WORKLOAD, A4, 8080), A, 15001, "%s:8080" % A4),
       "[%s] (6) workload -> own pod IP:8080 is captured outbound" % be)
    ck(landed(pods.connect(pods.a, PROXY, A4, 8080), A, 15006, "%s:8080" % A4),
       "[%s] (6) proxy -> own pod IP:8080 goes to the inbound listener, not back to 15001" % be)
    ck(landed(pods.connect(pods.a, PROXY, A4, 15021), A, 15021),
       "[%s] (6) proxy -> own pod IP:15021 is not captured" % be)
    ck(landed(pods.connect(pods.a, PROXY, "127.0.0.1", 8080), A, 8080),
       "[%s] (6) proxy -> 127.0.0.1:8080 (the inbound relay) reaches the workload" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, "127.0.0.1", 8080), A, 8080),
       "[%s] (6) workload -> 127.0.0.1:8080 is not captured" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, "127.0.0.2", 8080), A, 8080),
       "[%s] (6) workload -> 127.0.0.2:8080 is not captured either (all of 127/8)" % be)
    # (7) IPv6.
    ck(landed(pods.connect(pods.a, WORKLOAD, B6, 8080), A, 15001, "[%s]:8080" % B6),
       "[%s] (7) IPv6 workload -> [B]:8080 lands on A's 15001 with original dst" % be)
    ck(landed(pods.connect(pods.b, [], A6, 8080), A, 15006, "[%s]:8080" % A6),
       "[%s] (7) IPv6 B -> [A]:8080 lands on A's 15006 with original dst" % be)
    ck(landed(pods.connect(pods.a, PROXY, B6, 8080), B, 8080),
       "[%s] (7) IPv6 proxy -> [B]:8080 is not captured" % be)
    ck(landed(pods.connect(pods.b, [], A6, 15021), A, 15021),
       "[%s] (7) IPv6 B -> [A]:15021 is not captured" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, B6_EXCLUDED, 8080), B, 8080),
       "[%s] (7) IPv6 excluded CIDR %s reaches B directly" % (be, B6_EXCLUDED))
    ck(landed(pods.connect(pods.a, PROXY, A6, 8080), A, 15006, "[%s]:8080" % A6),
       "[%s] (7) IPv6 proxy -> own pod IP goes to the inbound listener" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, "::1", 8080), A, 8080),
       "[%s] (7) IPv6 workload -> [::1]:8080 is not captured" % be)


def check_cases(ck, pods, be):
    """check passes when in place, names a deleted redirect rule, passes after install."""
    bopt = ["--backend", be]
    rc, out, _ = pods.ipt("check", *(OPTS + bopt), check_rc=False)
    ck(rc == 0 and len(out.strip().splitlines()) <= 1,
       "[%s] (8) check passes after install, at most one line (rc %d: %s)" % (be, rc, out.strip()))
    for fam, chain, name, label in (("iptables", "TETHER_REDIRECT", "outbound-redirect", "ipv4"),
                                    ("iptables", "TETHER_IN_REDIRECT", "inbound-redirect", "ipv4"),
                                    ("ip6tables", "TETHER_REDIRECT", "outbound-redirect", "ipv6")):
        run(["ip", "netns", "exec", pods.a, "%s-%s" % (fam, be), "-t", "nat", "-D", chain, "1"])
        rc, out, _ = pods.ipt("check", *(OPTS + bopt), check_rc=False)
        ck(rc == 1 and "missing rule %s (%s)" % (name, label) in out
           and len(out.strip().splitlines()) == 1,
           "[%s] (8) check fails naming %s (%s) after it was deleted (rc %d: %s)" % (
               be, name, label, rc, out.strip()))
        if name == "outbound-redirect" and label == "ipv4":
            ck(landed(pods.connect(pods.a, WORKLOAD, B4, 8080), "B", 8080),
               "[%s] (8) ... and the deletion really stopped the capture" % be)
        pods.ipt("install", *(OPTS + bopt))
        rc, out, _ = pods.ipt("check", *(OPTS + bopt), check_rc=False)
        ck(rc == 0, "[%s] (8) check passes again after install (rc %d: %s)" % (be, rc, out.strip()))
    # A rule added to a Tether chain by someone else is reported too.
    run(["ip", "netns", "exec", pods.a, "iptables-%s" % be, "-t", "nat", "-I", "TETHER_OUTPUT",
         "1", "-j", "RETURN"])
    rc, out, _ = pods.ipt("check", *(OPTS + bopt), check_rc=False)
    ck(rc == 1 and "unexpected rule (ipv4): -A TETHER_OUTPUT -j RETURN" in out,
       "[%s] (8) check reports a foreign rule in TETHER_OUTPUT (rc %d: %s)" % (be, rc, out.strip()))
    rc, out, _ = pods.ipt("check", *OPTS, check_rc=False)
    ck(rc == 1 and "unexpected rule (ipv4)" in out,
       "[%s] (8) check without --backend reports it too (rc %d)" % (be, rc))
    pods.ipt("install", *(OPTS + bopt))
    rc, out, _ = pods.ipt("check", *OPTS, check_rc=False)
    ck(rc == 0 and "%s backend" % be in out,
       "[%s] (10) check without --backend finds the %s rules (%s)" % (be, be, out.strip()))


def lifecycle_cases(ck, pods, be):
    """Idempotent install, replacement by other options, dry run, remove."""
    bopt = ["--backend", be]
    before = (pods.save("iptables", be), pods.save("ip6tables", be))
    pods.ipt("install", *(OPTS + bopt))
    after = (pods.save("iptables", be), pods.save("ip6tables", be))
    ck(before == after, "[%s] (9) a second install leaves exactly the same iptables-save" % be)
    n = after[0].count("\n-A ")
    rc, out, _ = pods.ipt("install", "--dry-run", *(OPTS + bopt), check_rc=False)
    ck(rc == 0 and "*nat" in out and "COMMIT" in out and "tether:outbound-redirect" in out
       and (pods.save("iptables", be), pods.save("ip6tables", be)) == after,
       "[%s] --dry-run prints the iptables-restore input and changes nothing" % be)
    # Installing with the other backend moves the rules there (none left behind here).
    other = "legacy" if be == "nft" else "nft"
    if backend_usable(other, pods.a) is None:
        pods.ipt("install", "--backend", other, *OPTS)
        here = pods.save("iptables", be) + pods.save("ip6tables", be)
        rc, out, _ = pods.ipt("check", *OPTS, check_rc=False)
        ck("TETHER_" not in here and rc == 0 and "%s backend" % other in out,
           "[%s] (10) install --backend %s moves the rules to %s (check: %s)" % (
               be, other, other, out.strip()))
        pods.ipt("install", "--backend", be, *OPTS)
        ck("TETHER_" not in pods.save("iptables", other) + pods.save("ip6tables", other),
           "[%s] (10) ... and back, leaving nothing in %s" % (be, other))
    # Other options replace the set: only 8080 captured inbound.
    pods.ipt("install", "--include-inbound-ports", "8080", *bopt)
    ck(landed(pods.connect(pods.b, [], A4, 8080), "A", 15006, "%s:8080" % A4),
       "[%s] (5) --include-inbound-ports 8080 captures 8080" % be)
    ck(landed(pods.connect(pods.b, [], A4, 9090), "A", 9090),
       "[%s] (5) --include-inbound-ports 8080 does not capture 9090" % be)
    ck(landed(pods.connect(pods.b, [], A6, 9090), "A", 9090),
       "[%s] (5) ... nor [A]:9090 over IPv6" % be)
    ck(landed(pods.connect(pods.a, WORKLOAD, B4, 5432), "A", 15001),
       "[%s] (9) the earlier --exclude-outbound-ports is gone after the new install" % be)
    rc, out, _ = pods.ipt("check", "--include-inbound-ports", "8080", *bopt, check_rc=False)
    ck(rc == 0, "[%s] (9) check with the new options passes: nothing of the old set is left (%s)"
       % (be, out.strip()))
    rc, out, _ = pods.ipt("check", *(OPTS + bopt), check_rc=False)
    ck(rc == 1 and "missing rule inbound-capture (ipv4)" in out
       and "unexpected rule inbound-capture-port-8080 (ipv4)" in out,
       "[%s] (9) check with the old options names what differs" % be)
    ck(pods.save("iptables", be).count("\n-A ") < n, "[%s] (9) the new set is smaller" % be)
    # remove, twice.
    for i in (1, 2):
        rc, out, err = pods.ipt("remove", check_rc=False)
        v4, v6 = pods.save("iptables", be), pods.save("ip6tables", be)
        ck(rc == 0 and "TETHER_" not in v4 and "TETHER_" not in v6,
           "[%s] (9) remove #%d exits 0 and leaves no TETHER_ in iptables-save and "
           "ip6tables-save (rc %d %s)" % (be, i, rc, err.strip()))
    ck(landed(pods.connect(pods.a, WORKLOAD, B4, 8080), "B", 8080)
       and landed(pods.connect(pods.b, [], A4, 8080), "A", 8080),
       "[%s] (9) after remove nothing is captured" % be)
    rc, out, _ = pods.ipt("check", *bopt, check_rc=False)
    ck(rc == 1 and "missing chain TETHER_OUTPUT (ipv4)" in out and "missing rule outbound-redirect"
       in out, "[%s] (8) check after remove fails and names what is missing" % be)


def ipv6_disabled(ck):
    """A namespace with IPv6 disabled: IPv4 rules only, with a note; --ipv6-only refused."""
    ns = "tt-ipt-v4only-%d" % os.getpid()
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
        ipt = ["ip", "netns", "exec", ns, SCRIPT]
        rc, out, err = run(ipt + ["install"], check_rc=False)
        ck(rc == 0 and "ipv4;" in out and "IPv6 is disabled" in err,
           "IPv6 disabled: install does IPv4 and says why not IPv6 (rc %d: %s %s)" % (
               rc, out.strip(), err.strip()))
        rc, out, _ = run(ipt + ["check"], check_rc=False)
        ck(rc == 0 and len(out.strip().splitlines()) == 1 and "IPv6 is disabled" in out,
           "IPv6 disabled: check passes in one line that says so (%s)" % out.strip())
        rc, _, err = run(ipt + ["install", "--ipv6-only"], check_rc=False)
        ck(rc == 1 and "IPv6 is disabled" in err, "IPv6 disabled: --ipv6-only is refused (%s)"
           % err.strip())
        rc, _, _ = run(ipt + ["remove"], check_rc=False)
        _, v4, _ = run(["ip", "netns", "exec", ns, "iptables-save"])
        ck(rc == 0 and "TETHER_" not in v4, "IPv6 disabled: remove leaves no TETHER_")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def one_backend(ck, workdir, be, tag):
    pods = Pods(workdir, tag)
    try:
        pods.open()
        why = backend_usable(be, pods.a)
        if why:
            print("SKIP: %s backend: %s" % (be, why), flush=True)
            return False
        t0 = time.monotonic()
        # Nothing is captured before install.
        ck(landed(pods.connect(pods.a, WORKLOAD, B4, 8080), "B", 8080),
           "[%s] before install, A -> B:8080 reaches B" % be)
        rc, out, err = pods.ipt("install", "--backend", be, *OPTS, check_rc=False)
        ck(rc == 0 and "%s backend" % be in out, "[%s] install exits 0 (%s%s)" % (be, out, err))
        capture_cases(ck, pods, be)
        check_cases(ck, pods, be)
        capture_cases(ck, pods, be)  # the reinstalled rules capture as the first ones did
        lifecycle_cases(ck, pods, be)
        h.log("[%s] took %.1fs" % (be, time.monotonic() - t0))
        return True
    finally:
        pods.close()


def test(env):
    if os.geteuid() != 0:
        print("SKIP: needs root (network namespaces and iptables)")
        sys.exit(h.SKIP)
    for tool in ("ip", "setpriv", "iptables-nft-restore", "iptables-legacy-restore"):
        if shutil.which(tool) is None:
            print("SKIP: %s is not installed (deploy/install-deps.sh installs iptables)" % tool)
            sys.exit(h.SKIP)
    if not os.access(SCRIPT, os.X_OK):
        raise h.TestFailure("%s is not an executable" % SCRIPT)
    workdir = tempfile.mkdtemp(prefix="tether-ipt-")
    try:
        os.chmod(workdir, 0o755)  # the clients run as uid 4242 and 1337
        with open(os.path.join(workdir, "helper.py"), "w") as f:
            f.write(HELPER)
        os.chmod(os.path.join(workdir, "helper.py"), 0o644)
        ck = h.Checks()
        usage_errors(ck)
        ipv6_disabled(ck)
        ran = [be for tag, be in (("n", "nft"), ("l", "legacy")) if one_backend(ck, workdir, be, tag)]
        ck(len(ran) > 0, "at least one backend ran (%s)" % ", ".join(ran))
        ck.done()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    h.main(test, "iptables", need_sidecar=False)
