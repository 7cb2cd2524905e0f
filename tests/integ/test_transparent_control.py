#!/usr/bin/env python3
"""Transparent sidecars with a control plane, pods in network namespaces (issue 8).

tether-control runs in the hub namespace on the bridge's address; pods A, B and C reach it
through the bridge, so the control plane observes each sidecar's own pod address. Proves:
- B's sidecar (--transparent --workload-ports 8080) registers POD_B:8080 under B's
  identity, accepted because it comes from B's address; `tetherctl service list` shows it
  with source registration;
- A's workload calls B's IP:8080 unchanged and gets B's answer: A's sidecar found the
  registered endpoint in the pushed service table and required B's identity (B's policy
  counts it);
- an operator's VIP listing B's address shadows B's registration; A still reaches B by
  B's address (an endpoint dialled directly requires its identity) and through the VIP,
  both over mTLS;
- C's sidecar claims an address that is not its own (an --inbound listener on
  127.0.0.1:9090): refused, counted as registration_refused, and shown with its reason
  in `tetherctl sidecars`; the address never reaches the service table.
Reuses test_transparent's namespaces and helpers; needs the same tools (exit 77 without).
"""

import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import test_transparent as tp  # noqa: E402

CP_SIDECARS = 15012
CP_API = 15014


def ctl(env, state, *args):
    """tetherctl in the hub namespace, where the operator API listens on loopback."""
    r = tp.in_ns(tp.HUB, env.tetherctl_bin, "--api", "http://127.0.0.1:%d" % CP_API,
                 "--state-dir", state, *[str(a) for a in args], check=False)
    if r.returncode != 0:
        raise h.TestFailure("tetherctl %s: %s" % (" ".join(map(str, args)),
                                                 r.stderr.decode(errors="replace")))
    return r.stdout.decode(errors="replace")


def sidecars_regs(env, state, address):
    """The service list's registration entries for address."""
    listed = json.loads(ctl(env, state, "--json", "service", "list"))
    items = listed.get("services", listed) if isinstance(listed, dict) else listed
    return [e for e in items if e.get("source") == "registration" and e.get("address") == address]


def start_cp_sidecar(env, pod, sid, token, bundle, extra):
    argv = ["ip", "netns", "exec", tp.ns(pod)] + tp.PROXY + [
        env.sidecar_bin, "--control", "%s:%d" % (tp.HUB_IP, CP_SIDECARS), "--control-bundle",
        bundle, "--join-token", token, "--spiffe-id", sid, "--workers", "1"] + extra
    p = h.Proc(env, "sidecar-" + pod, argv)
    h.wait_for(lambda: tp.http(tp.ns(pod), "http://127.0.0.1:15000/ready")[0] == "200", 20,
               what="sidecar %s ready" % pod)
    return p


def test(env):
    ok = h.Checks()
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "iptables", "setpriv",
                                                                "curl")):
        print("SKIP: needs root, ip, iptables, setpriv and curl")
        sys.exit(77)
    h.require_control()
    script = next((s for s in tp.SCRIPT_CANDIDATES if s and os.path.exists(s)), None)
    if script is None:
        print("SKIP: deploy/iptables/tether-iptables not found (set TT_IPTABLES)")
        sys.exit(77)
    probe = subprocess.run(["ip", "netns", "add", tp.TAG + "-probe"], capture_output=True)
    if probe.returncode != 0:
        print("SKIP: cannot create network namespaces")
        sys.exit(77)
    subprocess.run(["ip", "netns", "del", tp.TAG + "-probe"], capture_output=True)

    ids = {p: h.spiffe("mesh", p) for p in ("a", "b", "c")}
    state = env.path("control-state")
    env.write("helper.py", tp.HELPER)
    tp.FAM.append("--ipv4-only")
    try:
        tp.setup_net(script)
        cp = h.Proc(env, "control", ["ip", "netns", "exec", tp.HUB, env.control_bin,
                                     "--state-dir", state, "--trust-domain", "cluster.local",
                                     "--listen-sidecars", "%s:%d" % (tp.HUB_IP, CP_SIDECARS),
                                     "--listen-api", "127.0.0.1:%d" % CP_API,
                                     "--registration-grace", "2s"])
        h.wait_for(lambda: "BEGIN CERTIFICATE" in ctl(env, state, "bundle", "get"), 15,
                   what="the control plane in the hub")
        bundle = env.write("bundle.pem", ctl(env, state, "bundle", "get"))
        ctl(env, state, "policy", "set", env.write("policy.json", json.dumps({
            "default": "deny", "rules": [{"name": "a-to-b", "action": "allow",
                                          "from": [ids["a"]], "to": [ids["b"]]}]})))
        tokens = {p: env.write("%s.token" % p, ctl(env, state, "token", "create",
                                                     "--spiffe-id", ids[p]))
                  for p in ids}
        # The sidecars (UID 1337) and the workloads (4242) read these files.
        for root, dirs, files in os.walk(env.dir):
            os.chmod(root, 0o755)
            for f in files:
                if not f.endswith(".key"):
                    os.chmod(os.path.join(root, f), 0o644)
        os.chmod(state, 0o700)
        w = h.Proc(env, "workload-b", ["ip", "netns", "exec", tp.ns("b")] + tp.WORKLOAD + [
            tp.PY, "-u", env.path("helper.py"), "serve", "b", "8080:echo"])
        h.wait_for(lambda: "ready" in open(w.out_path).read(), 10, what="workload b")
        start_cp_sidecar(env, "b", ids["b"], tokens["b"], bundle,
                         ["--transparent", "--workload-ports", "8080"])
        start_cp_sidecar(env, "a", ids["a"], tokens["a"], bundle, ["--transparent"])
        start_cp_sidecar(env, "c", ids["c"], tokens["c"], bundle,
                         ["--inbound", "127.0.0.1:9090=127.0.0.1:9"])

        b_addr = "%s:8080" % tp.PODS["b"]

        def sidecars():
            doc = json.loads(ctl(env, state, "--json", "sidecars"))
            return doc.get("sidecars", doc) if isinstance(doc, dict) else doc

        def entry(pod):
            return next((s for s in sidecars() if s.get("spiffe_id") == ids[pod]), None)

        b = h.wait_for(lambda: (lambda e: e if e and b_addr in json.dumps(
            e.get("registered")) else None)(entry("b")), 15, what="B's registration")
        ok(b_addr in json.dumps(b.get("registered")),
           "B's sidecar registered %s from its own address (%r)" % (b_addr, b.get("registered")))
        listed = json.loads(ctl(env, state, "--json", "service", "list"))
        svc = json.dumps(listed)
        ok(b_addr in svc and "registration" in svc and ids["b"] in svc,
           "the service table holds %s for %s, source registration" % (b_addr, ids["b"]))

        c = h.wait_for(lambda: (lambda e: e if e and e.get("refused") else None)(entry("c")),
                       15, what="C's refused registration")
        refused = c.get("refused") or []
        ok(any(r.get("address") == "127.0.0.1:9090" and r.get("reason") == "not_observed_ip"
               for r in refused),
           "C's claim on an address that is not its own is refused as not_observed_ip (%r)" %
           refused)
        ok("127.0.0.1:9090" not in svc, "and never reaches the service table")
        code, body = tp.http(tp.HUB, "http://127.0.0.1:%d/stats" % CP_API, "-H",
                             "Authorization: Bearer " + open(os.path.join(
                                 state, "operator.token")).read().strip())
        refusals = json.loads(body).get("refusals", {}) if code == "200" else {}
        ok(refusals.get("registration_refused", 0) >= 1,
           "counted as registration_refused (%r)" % refusals)

        # A's workload dials B's plain address; the pushed table makes it mTLS to B.
        def call_b():
            good, answer = tp.call(env, "a", tp.PODS["b"], 8080, "via-control")
            return answer if good and answer else None
        answer = h.wait_for(call_b, 15, what="A's call to B through the mesh")
        ok(answer == "from b: via-control", "A's workload gets B's answer (%r)" % answer)
        st_b = tp.stats("b")
        rules = json.dumps((st_b or {}).get("policy", {}))
        ok('"a-to-b"' in rules and st_b and any(
            li.get("handshakes", 0) >= 1 for li in st_b["listeners"]
            if li["name"].startswith("transparent-inbound")),
           "B saw an mTLS handshake and counted rule a-to-b (%s)" % rules[:300])

        # An operator's VIP over B's address shadows B's registration; dialled directly,
        # B's address is still an endpoint with B's identity, so A's call stays mTLS.
        hs_before = sum(li.get("handshakes", 0) + li.get("pool", {}).get("streams_total", 0)
                        for li in tp.stats("b")["listeners"]
                        if li["name"].startswith("transparent-inbound"))
        ctl(env, state, "service", "add", "%s:80" % tp.VIP, "--endpoint",
            "%s=%s" % (b_addr, ids["b"]))
        h.wait_for(lambda: any(e.get("shadowed") for e in sidecars_regs(env, state, b_addr)),
                   10, what="B's registration shadowed by the operator's VIP")

        def direct_and_vip():
            good, d = tp.call(env, "a", tp.PODS["b"], 8080, "direct")
            good2, v = tp.call(env, "a", tp.VIP, 80, "vip")
            return (d, v) if good and good2 and d and v else None
        got = h.wait_for(direct_and_vip, 15, what="A's calls to B's address and to the VIP")
        ok(got == ("from b: direct", "from b: vip"),
           "with the VIP in place A still reaches B by address and through the VIP (%r)" % (got,))
        # Over mTLS: each call is a tunnel on a pooled link (an mTLS connection) or an mTLS
        # connection of its own.
        hs_after = sum(li.get("handshakes", 0) + li.get("pool", {}).get("streams_total", 0)
                       for li in tp.stats("b")["listeners"]
                       if li["name"].startswith("transparent-inbound"))
        ok(hs_after >= hs_before + 2,
           "both calls arrived over mTLS at B (handshakes + tunnels %d -> %d)"
           % (hs_before, hs_after))
        ok(cp.alive(), "the control plane is still running")
    finally:
        tp.teardown_net()
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "transparent-control")
