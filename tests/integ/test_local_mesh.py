#!/usr/bin/env python3
"""deploy/local/mesh up|down against the test build (issue 8: the README's main command).

Runs `deploy/local/mesh up BUILD` with its own prefix, pod range and service range
(MESH_PREFIX tm<pid>-, MESH_NET 10.90.N, MESH_VIP_NET 10.98.N), so it never meets a user's
mesh (tmesh-, 10.89.0) or the transparent tests (tp<pid>, 10.88.0). Proves:
- `up` exits 0 and its labelled output reports every step as done: the pod-to-pod call by
  plain IP, the service address balanced over two replicas, a call to a third service,
  the refused caller, the policy change (denied, then allowed again), a rotation (old
  serial -> new), the killed replica with 0 failed calls, a bridge capture with TLS
  records and no marker, /stats;
- the mesh is left running: its namespaces exist and its recorded processes live;
- a second `up` takes the first mesh down (every process of the first is gone) and
  succeeds again;
- `down` leaves no namespace with the prefix, no state directory, and no process that
  either `up` started (by recorded pid, and by a scan of every process's command line for
  the state directory).
The script asserts each step itself (it exits non-zero when one fails); this test checks
the exit status and the output. Needs root, ip, iptables, setpriv, tcpdump and curl: exits
77 (skip) without them.
"""

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MESH = os.path.join(HERE, "..", "..", "deploy", "local", "mesh")
N = os.getpid() % 250
PREFIX = "tm%d-" % (os.getpid() % 100000)
STATE = "/run/%sstate" % PREFIX
ENV = dict(os.environ, MESH_PREFIX=PREFIX, MESH_NET="10.90.%d" % N,
           MESH_VIP_NET="10.98.%d" % N, MESH_STATE=STATE, MESH_CERT_TTL="10s")

# What `up` prints when each step succeeded (the script exits non-zero otherwise).
STEPS = [
    ("pod to pod by plain IP", "answer: hello from api-1 (mTLS between the sidecars"),
    ("service address over two replicas", "all 10 answered: api-1 "),
    ("a third service", "and api-1's workload calls the db service http://"),
    ("refused caller", "  refused; api-1 counts "),
    ("policy change", "s after tetherctl policy set"),
    ("policy restored", "  allowed again: hello from api-1"),
    ("certificate rotation", "a call with the new certificate: hello from api-"),
    ("replica killed, no failed call", " calls, 0 failed; web's balancer: api-2 "),
    ("bridge capture holds only TLS", 'the marker and "GET /": 0 times'),
    ("/stats figures", "tether-control: issued "),
    ("left running", "the mesh keeps running"),
]


def mesh(cmd, build, timeout=200):
    r = subprocess.run([MESH, cmd, build], env=ENV, capture_output=True, timeout=timeout)
    out = r.stdout.decode(errors="replace")
    err = r.stderr.decode(errors="replace")
    h.log("mesh %s: rc %d\n%s%s" % (cmd, r.returncode, out, err[-3000:]))
    return r.returncode, out


def namespaces():
    r = subprocess.run(["ip", "netns", "list"], capture_output=True)
    return [ln.split()[0] for ln in r.stdout.decode().splitlines()
            if ln.startswith(PREFIX)]


def recorded_pids():
    pids = []
    d = os.path.join(STATE, "pids")
    for name in (os.listdir(d) if os.path.isdir(d) else []):
        pids.append(int(open(os.path.join(d, name)).read().split()[0]))
    return pids


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def processes_naming_state():
    """Pids of processes whose command line holds the state directory (any leak)."""
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open("/proc/%s/cmdline" % p, "rb").read()
        except OSError:
            continue
        if STATE.encode() in cmd and int(p) != os.getpid():
            found.append(int(p))
    return found


def check_up(ok, rc, out, which):
    ok(rc == 0, "%s up exits 0 (%d)" % (which, rc))
    for what, text in STEPS:
        ok(text in out, "%s up: %s (%r in the output)" % (which, what, text))
    ok(len(namespaces()) == 6, "%s up leaves the hub and 5 pods (%r)" % (which, namespaces()))
    pids = recorded_pids()
    ok(len(pids) >= 9 and all(alive(p) for p in pids),
       "%s up leaves its processes running (%d recorded)" % (which, len(pids)))
    return pids


def test(env):
    ok = h.Checks()
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "iptables", "setpriv",
                                                                "tcpdump", "curl")):
        print("SKIP: needs root, ip, iptables, setpriv, tcpdump and curl")
        sys.exit(77)
    build = sys.argv[1] if len(sys.argv) > 1 else None
    if not build or not os.path.exists(os.path.join(build, "control", "tetherctl")):
        print("SKIP: give the build directory (with tether-control and tetherctl)")
        sys.exit(77)
    r = subprocess.run([MESH, "check", build], env=ENV, capture_output=True)
    if r.returncode != 0:
        print("SKIP: deploy/local/mesh check: %s" % r.stdout.decode().strip())
        sys.exit(77)
    try:
        rc, out = mesh("up", build)
        first = check_up(ok, rc, out, "first")

        rc, out = mesh("up", build)
        ok("running" in out and "taking it down first" in out,
           "the second up finds the first mesh and takes it down first")
        ok(not any(alive(p) for p in first),
           "no process of the first up survives the second (%r)" %
           [p for p in first if alive(p)])
        second = check_up(ok, rc, out, "second")

        rc, out = mesh("down", build, timeout=60)
        ok(rc == 0 and "down" in out, "down exits 0")
        ok(namespaces() == [], "no namespace %s* remains (%r)" % (PREFIX, namespaces()))
        ok(not os.path.exists(STATE), "the state directory is gone")
        ok(not any(alive(p) for p in first + second),
           "no process either up started is alive (%r)" % [p for p in first + second
                                                             if alive(p)])
        ok(processes_naming_state() == [],
           "no process names the state directory (%r)" % processes_naming_state())
        rc, out = mesh("down", build, timeout=60)
        ok(rc == 0 and "nothing to take down" in out, "a second down is harmless")
    finally:
        if os.path.isdir(STATE):
            subprocess.run([MESH, "down", build], env=ENV, capture_output=True, timeout=60)
        for n in namespaces():
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
    ok.done()


if __name__ == "__main__":
    h.main(test, "local-mesh", need_sidecar=False)
