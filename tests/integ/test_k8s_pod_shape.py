#!/usr/bin/env python3
"""The injected pod, rehearsed on this machine the way kubelet would run it (issue 9).

Two Pods (shop/api serving 8080, shop/web a Job-like app with restartPolicy Never) are
injected by `tetherctl inject`; then this test plays kubelet with exactly what the
injector wrote, nothing added:
- one network namespace per pod on a bridge (test_transparent's), tether-control in the
  hub with --jwks/--jwt-audience/--jwt-issuer (the JWT proof) and the Service name the
  injector dials, resolved through the pod's /etc/hosts (ip netns exec's /etc/netns);
- the init container tether-init: its command and args, as root with only the
  capabilities its securityContext adds (setpriv --bounding-set), to completion;
- the native sidecar tether-proxy: its command and args with $(VAR) expanded from its
  env (downward API: namespace, service account, pod IP) as kubelet does, as its
  runAsUser/runAsGroup with every capability dropped and no_new_privs, in a mount
  namespace where its volumes are mounted where its volumeMounts say (the projected
  service-account token: a JWT shaped as Kubernetes issues it, for the volume's audience;
  the downwardAPI file of the pod's tether.io/control-bundle annotation) and the root
  filesystem is read-only; the app container is started only once the startup probe
  (GET POD_IP:15021/ready, from the node's side) passes;
- web's app calls api's pod IP and port unchanged and gets api's answer through the
  sidecars' mTLS, with identities from the JWTs (web's /stats says
  spiffe://cluster.local/ns/shop/sa/web, api's policy counts the allow); then web's app
  exits, kubelet runs the preStop hook and sends SIGTERM: the sidecar exits 0 (the Job
  completes); api's sidecar ends through POST /quitquitquit (clusters without native
  sidecars) with exit 0.
Needs root, ip, iptables, setpriv, unshare, mount and curl (exit 77 without). Stops
everything by pid, deletes its namespaces and the /etc/netns entries and mount points it
made."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
import test_control_jwt as tj  # noqa: E402  (JWT and JWK makers; re-execs Debian's python)
import test_transparent as tp  # noqa: E402

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

PODS = {"api": "10.88.0.31", "web": "10.88.0.32"}
CONTROL_NAME = "tether-control.tether-system.svc"
ISSUER = "https://kubernetes.default.svc.cluster.local"
CP_SIDECARS, CP_API = 15012, 15014


def pod_object(name, sa, ports, restart="Always"):
    """A Pod as the API server hands it to the webhook (the fields injection looks at)."""
    ctr = {"name": "app", "image": "example/%s:1" % name, "resources": {},
           "ports": [{"containerPort": p, "protocol": "TCP"} for p in ports]}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"serviceAccountName": sa, "restartPolicy": restart, "containers": [ctr]}}


def field_value(pod, pod_ip, path):
    """What the downward API gives for fieldPath (the ones an injected pod may use)."""
    m = re.fullmatch(r"metadata\.annotations\['([^']+)'\]", path)
    if m:
        return pod["metadata"]["annotations"][m.group(1)]
    values = {"metadata.namespace": pod["metadata"]["namespace"],
              "metadata.name": pod["metadata"]["name"],
              "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
              "status.podIP": pod_ip}
    if path not in values:
        raise h.TestFailure("the injector used fieldPath %s, which this kubelet does not know"
                            % path)
    return values[path]


def container_env(pod, pod_ip, ctr):
    """The container's environment as kubelet builds it (value or fieldRef only)."""
    out = {}
    for e in ctr.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        else:
            out[e["name"]] = field_value(pod, pod_ip, e["valueFrom"]["fieldRef"]["fieldPath"])
    return out


def expand(arg, env):
    """Kubelet's $(VAR) expansion: a defined variable is replaced, $$ is a $, anything else
    stays as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), arg)


def capability_names(ctr):
    sc = ctr.get("securityContext", {})
    return [c.lower() for c in sc.get("capabilities", {}).get("add", [])]


class Kubelet:
    """Runs one pod's containers as kubelet would, in the pod's namespace."""

    def __init__(self, env, pod, pod_ip, jwt_key, made):
        self.env, self.pod, self.ip, self.key, self.made = env, pod, pod_ip, jwt_key, made
        self.name = pod["metadata"]["name"]
        self.root = env.path("pods", self.name)
        os.makedirs(self.root, exist_ok=True)
        self.bin = env.path("image-bin")  # the sidecar image's PATH

    def init(self, name):
        return next(c for c in self.pod["spec"]["initContainers"] if c["name"] == name)

    def volume_dir(self, vol):
        """Materialises one volume of the pod in a directory (the kinds the injector uses)."""
        d = os.path.join(self.root, "vol-" + vol["name"])
        os.makedirs(d, exist_ok=True)
        if "projected" in vol:
            for src in vol["projected"]["sources"]:
                tok = src.get("serviceAccountToken")
                h.check(tok is not None, "projected source %r is not a token" % src)
                claims = tj.k8s_claims(ns=self.pod["metadata"]["namespace"],
                                       sa=self.pod["spec"]["serviceAccountName"],
                                       aud=tok["audience"], iss=ISSUER)
                claims["kubernetes.io"]["pod"]["name"] = self.name
                claims["exp"] = int(time.time()) + tok.get("expirationSeconds", 3600)
                with open(os.path.join(d, tok["path"]), "w") as f:
                    f.write(tj.jwt({"alg": "ES256", "kid": "cluster-key"}, claims, "ES256",
                                   key=self.key))
        elif "downwardAPI" in vol:
            for item in vol["downwardAPI"]["items"]:
                with open(os.path.join(d, item["path"]), "w") as f:
                    f.write(field_value(self.pod, self.ip, item["fieldRef"]["fieldPath"]))
        else:
            raise h.TestFailure("volume %s: a kind this kubelet does not make" % vol["name"])
        for root, dirs, files in os.walk(d):
            os.chmod(root, 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        return d

    def mount_script(self, ctr):
        """Shell lines that mount ctr's volumes at their mountPaths in a private mount
        namespace, then make the root filesystem read-only when the container asks."""
        vols = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        lines = []
        for m in ctr.get("volumeMounts", []):
            src = self.volume_dir(vols[m["name"]])
            target = m["mountPath"]
            if not os.path.isdir(target):  # a mount point on the host; removed at the end
                top = target
                while not os.path.isdir(os.path.dirname(top)):
                    top = os.path.dirname(top)
                os.makedirs(target)
                self.made.append(top)
            lines.append("mount --bind %s %s" % (src, target))
            if m.get("readOnly"):
                lines.append("mount -o remount,bind,ro %s" % target)
        if ctr.get("securityContext", {}).get("readOnlyRootFilesystem"):
            lines.append("mount -o remount,bind,ro /")
        return lines

    def run_init(self, name):
        """Runs the init container to completion as root with only its added capabilities."""
        ctr = self.init(name)
        sc = ctr.get("securityContext", {})
        h.check(sc.get("runAsUser") == 0, "%s runs as root" % name)
        caps = ",".join(["-all"] + ["+" + c for c in capability_names(ctr)])
        cenv = container_env(self.pod, self.ip, ctr)
        argv = [expand(a, cenv) for a in ctr["command"] + ctr.get("args", [])]
        r = tp.in_ns(tp.ns(self.name), "env", "PATH=%s:%s" % (self.bin, os.environ["PATH"]),
                     *["%s=%s" % kv for kv in cenv.items()],
                     "setpriv", "--bounding-set", caps, "--inh-caps", "-all", *argv,
                     check=False, timeout=60)
        return r

    def start_sidecar(self, name):
        """Starts the native sidecar with exactly its command, args and env."""
        ctr = self.init(name)
        sc = ctr["securityContext"]
        h.check(ctr.get("restartPolicy") == "Always", "%s is a native sidecar" % name)
        h.check(sc["capabilities"]["drop"] == ["ALL"] and not capability_names(ctr),
                "%s drops every capability" % name)
        cenv = container_env(self.pod, self.ip, ctr)
        argv = [expand(a, cenv) for a in ctr["command"] + ctr.get("args", [])]
        self.sidecar_argv = argv
        exports = " ".join("%s=%s" % (k, sh_quote(v)) for k, v in cenv.items())
        script = "\n".join(["set -e"] + self.mount_script(ctr) + [
            "exec env -i PATH=%s:/usr/bin:/bin %s setpriv --reuid %d --regid %d --clear-groups"
            " --bounding-set -all --inh-caps -all --no-new-privs %s" % (
                self.bin, exports, sc["runAsUser"], sc["runAsGroup"],
                " ".join(sh_quote(a) for a in argv))])
        return h.Proc(self.env, "%s-%s" % (self.name, name),
                      ["ip", "netns", "exec", tp.ns(self.name), "unshare", "--mount",
                       "--propagation", "private", "sh", "-c", script])

    def probe(self, ctr_name, which):
        """kubelet's HTTP probe from the node's side (the hub): True on 2xx."""
        p = self.init(ctr_name)[which]["httpGet"]
        code, _ = tp.http(tp.HUB, "http://%s:%d%s" % (self.ip, p["port"], p["path"]))
        return code.startswith("2")


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def test(env):
    ok = h.Checks()
    tools = ("ip", "iptables", "setpriv", "unshare", "mount", "curl")
    if os.geteuid() != 0 or not all(shutil.which(t) for t in tools):
        print("SKIP: needs root and %s" % ", ".join(tools))
        sys.exit(77)
    h.require_control()
    script = next((s for s in tp.SCRIPT_CANDIDATES if s and os.path.exists(s)), None)
    if script is None:
        print("SKIP: deploy/iptables/tether-iptables not found (set TT_IPTABLES)")
        sys.exit(77)

    # The sidecar image's PATH: tether-sidecar and tether-iptables, as the Dockerfile puts them.
    os.makedirs(env.path("image-bin"))
    os.symlink(env.sidecar_bin, env.path("image-bin", "tether-sidecar"))
    os.symlink(os.path.abspath(script), env.path("image-bin", "tether-iptables"))
    key = ec.generate_private_key(ec.SECP256R1())
    jwks = env.write("jwks.json", json.dumps({"keys": [tj.jwk_ec(key, "cluster-key")]}))
    state = env.path("control-state")
    env.write("helper.py", tp.HELPER)
    tp.FAM.append("--ipv4-only")
    made = []  # host paths this test created (mount points, /etc/netns entries)
    procs = []
    try:
        tp.setup_net(script, pods=PODS, capture=False)
        cp = h.Proc(env, "control", [
            "ip", "netns", "exec", tp.HUB, env.control_bin, "--state-dir", state,
            "--trust-domain", "cluster.local", "--listen-sidecars",
            "%s:%d" % (tp.HUB_IP, CP_SIDECARS), "--listen-api", "127.0.0.1:%d" % CP_API,
            "--serving-name", CONTROL_NAME, "--jwks", jwks, "--jwt-audience", "tether",
            "--jwt-issuer", ISSUER])
        procs.append(cp)

        def ctl(*args):
            r = tp.in_ns(tp.HUB, env.tetherctl_bin, "--api", "http://127.0.0.1:%d" % CP_API,
                         "--state-dir", state, *args, check=False)
            if r.returncode != 0:
                raise h.TestFailure("tetherctl %s: %s" % (" ".join(args), r.stderr.decode()))
            return r.stdout.decode()

        h.wait_for(lambda: "BEGIN CERTIFICATE" in ctl("bundle", "get"), 15,
                   what="the control plane in the hub")
        bundle = env.write("bundle.pem", ctl("bundle", "get"))
        ctl("policy", "set", env.write("policy.json", json.dumps({
            "default": "deny", "rules": [{
                "name": "web-to-api", "action": "allow",
                "from": ["spiffe://cluster.local/ns/shop/sa/web"],
                "to": ["spiffe://cluster.local/ns/shop/sa/api"], "ports": [8080]}]})))

        # The injector's output, used as is from here on.
        pods = {}
        for name, sa, ports, restart in (("api", "api", [8080], "Always"),
                                         ("web", "web", [], "Never")):
            src = env.write("%s-pod.json" % name, json.dumps(pod_object(name, sa, ports, restart)))
            r = h.run([env.tetherctl_bin, "inject", "-f", src, "--bundle", bundle], timeout=15)
            pods[name] = json.loads(r.stdout)
            names = [c["name"] for c in pods[name]["spec"].get("initContainers", [])]
            ok(names == ["tether-init", "tether-proxy"],
               "%s injected with tether-init then tether-proxy (%r)" % (name, names))
        if not os.path.isdir("/etc/netns"):
            made.append("/etc/netns")
        for name in PODS:  # the Service name resolves as the cluster's DNS would
            d = "/etc/netns/%s" % tp.ns(name)
            os.makedirs(d, exist_ok=True)
            made.append(d)
            with open(os.path.join(d, "hosts"), "w") as f:
                f.write("127.0.0.1 localhost\n%s %s\n" % (tp.HUB_IP, CONTROL_NAME))
        for root, dirs, files in os.walk(env.dir):  # the workload user reads helper.py
            os.chmod(root, 0o755)
            for f in files:
                if f == "helper.py":
                    os.chmod(os.path.join(root, f), 0o644)
        os.chmod(state, 0o700)

        kl = {n: Kubelet(env, pods[n], PODS[n], key, made) for n in PODS}
        for n in ("api", "web"):
            r = kl[n].run_init("tether-init")
            ok(r.returncode == 0, "%s: tether-init completes with NET_ADMIN and NET_RAW only "
               "(rc %d, %s)" % (n, r.returncode, r.stderr.decode(errors="replace")[-300:]))
            chk = tp.in_ns(tp.ns(n), script, "check", check=False)
            ok(chk.returncode == 0, "%s: the capture rules it installed pass tether-iptables "
               "check (%s)" % (n, chk.stdout.decode(errors="replace")[-300:]))
            side = kl[n].start_sidecar("tether-proxy")
            procs.append(side)
            kl[n].proc = side
            t0 = time.monotonic()
            h.wait_for(lambda: not side.alive() or kl[n].probe("tether-proxy", "startupProbe"),
                       40, what="%s's startup probe" % n)
            ok(side.alive(), "%s's sidecar runs with the injected arguments %r" % (
                n, kl[n].sidecar_argv))
            ok(kl[n].probe("tether-proxy", "readinessProbe"),
               "%s: startup probe passed after %.1f s, readiness probe passes" % (
                   n, time.monotonic() - t0))
            st = json.loads(tp.http(tp.ns(n), "http://127.0.0.1:15000/stats")[1])
            want = "spiffe://cluster.local/ns/shop/sa/%s" % n
            ok(st["identity"]["spiffe_id"] == want,
               "%s's certificate, from its service-account token, is %s (%s)" % (
                   n, want, st["identity"]["spiffe_id"]))
            if n == "api":  # the app container starts after the probe
                app = h.Proc(env, "api-app", ["ip", "netns", "exec", tp.ns("api")] + tp.WORKLOAD
                             + [tp.PY, "-u", env.path("helper.py"), "serve", "api", "8080:echo"])
                procs.append(app)
                h.wait_for(lambda: "ready" in open(app.out_path).read(), 10, what="api's app")

        # web's app: one call to api's pod address, then it exits (a Job).
        job = tp.in_ns(tp.ns("web"), *tp.WORKLOAD, tp.PY, env.path("helper.py"), "call",
                       PODS["api"], "8080", "job-payload", "write", check=False)
        ok(job.returncode == 0 and job.stdout == b"from api: job-payload",
           "web's app reached api's IP:8080 unchanged through the sidecars (rc %d, %r)" % (
               job.returncode, job.stdout))
        st_api = json.loads(tp.http(tp.ns("api"), "http://127.0.0.1:15000/stats")[1])
        hits = {r["name"]: r.get("hits") for r in st_api.get("policy", {}).get("rules", [])}
        ok(hits.get("web-to-api", 0) >= 1, "api's policy allowed web by its identity (%r)" % hits)

        # The Job's app is done: kubelet runs the preStop hook, then SIGTERM.
        pre = kl["web"].init("tether-proxy").get("lifecycle", {}).get("preStop", {})
        time.sleep(min(pre.get("sleep", {}).get("seconds", 0), 5))
        web_side = kl["web"].proc
        web_side.signal(15)
        rc = web_side.wait(35)
        ok(rc == 0, "web's sidecar exits 0 after SIGTERM, so the Job completes (rc %r)" % rc)
        # api's sidecar, told to quit as a Job without native sidecars would.
        code, _ = tp.http(tp.ns("api"), "http://127.0.0.1:15000/quitquitquit", "-X", "POST")
        rc = kl["api"].proc.wait(35)
        ok(code == "200" and rc == 0, "POST /quitquitquit: %s, sidecar exit %r" % (code, rc))
        for p in (web_side, kl["api"].proc):
            ok("ERROR: AddressSanitizer" not in p.stderr(), "no sanitizer report from %s" % p.name)
    finally:
        for p in procs:
            p.stop()
        tp.teardown_net(PODS)
        for path in reversed(made):
            shutil.rmtree(path, ignore_errors=True)
    ok.done()


if __name__ == "__main__":
    h.main(test, "k8s-pod-shape")
