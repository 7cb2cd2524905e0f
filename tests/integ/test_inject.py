#!/usr/bin/env python3
"""Sidecar injection (issue 9): the admission webhook of a running tether-control over
HTTPS, and `tetherctl inject -f`.

- tether-control --listen-webhook serves POST /inject with the serving certificate: the
  client verifies it against the control plane's bundle under the Service's DNS name (as
  the API server does with the webhook's caBundle); a client trusting another CA fails.
- AdmissionReviews shaped as the API server sends them (k8s/review-*.json: the Pods that
  the controllers of k8s/workloads.yaml create, with the API server's defaults and the
  service-account volume) get the exact patch in k8s/expected/*.patch.json (the bundle
  stands there as @BUNDLE@); an already injected pod, an opted-out pod and a host-network
  pod are allowed with no patch; a body that is not JSON is HTTP 400, a wrong apiVersion,
  an object that is not a Pod and a bad annotation are refused with a message that says
  why; GET is 405, another path 404.
- `tetherctl inject -f` (bundle fetched from the API) of the same pods gives exactly the
  pods the webhook's patches make; of k8s/workloads.yaml (multi-document YAML, and the
  same as JSON) it gives the same kinds in the same order, other kinds unchanged, and for
  each workload the same injected containers, volumes and annotations as the webhook gave
  its controller's pod; one bad document writes nothing.
- Every object either path outputs validates against the Kubernetes 1.29+ schemas of
  kubernetes-models@4.5.1 with unknown fields as errors (tests/tools/k8s-validate.js),
  and the validator does fail on an unknown field and a wrong type.

TT_INJECT_REGEN=1 rewrites k8s/expected/ from what the webhook answers (review the diff).
"""
import base64
import copy
import glob
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
K8S = os.path.join(HERE, "k8s")
VALIDATE = os.path.join(HERE, "..", "tools", "k8s-validate.js")
IMAGE = "registry.example/tether/sidecar:1.0"
CONTROL_ADDR = "tether-control.tether-system.svc.cluster.local:15012"
AUDIENCE = "tether-test"
SNI = "tether-control.tether-system.svc"
INJECTED = ("tether-init", "tether-proxy")
NO_PATCH = ("injected", "optout", "hostnetwork")


def ensure_tools():
    """PyYAML (an independent YAML reader for tetherctl's output) and npm, from Debian
    when missing."""
    missing = []
    try:
        import yaml  # noqa: F401
    except ImportError:
        missing.append("python3-yaml")
    if shutil.which("npm") is None:
        missing += ["nodejs", "npm"]
    if missing:
        h.log("installing", missing)
        h.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing,
              timeout=600)


class _Conn(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with the server name the API server would use (SNI and the
    certificate check)."""

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def post(port, cafile, body, path="/inject", method="POST"):
    """One request to the webhook; returns (status, parsed JSON body)."""
    ctx = ssl.create_default_context(cafile=cafile)
    conn = _Conn(SNI, port, context=ctx, timeout=10)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data if method == "POST" else None,
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def pointer_tokens(path):
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]]


def apply_patch(doc, patch):
    """RFC 6902 "add" (the only operation the injector makes; anything else fails)."""
    doc = copy.deepcopy(doc)
    for op in patch:
        h.check(op.get("op") == "add", "patch operation %r is not add" % op)
        toks = pointer_tokens(op["path"])
        node = doc
        for t in toks[:-1]:
            node = node[int(t)] if isinstance(node, list) else node[t]
        last = toks[-1]
        if isinstance(node, list):
            if last == "-":
                node.append(copy.deepcopy(op["value"]))
            else:
                node.insert(int(last), copy.deepcopy(op["value"]))
        else:
            h.check(last not in node, "patch adds %s, which exists" % op["path"])
            node[last] = copy.deepcopy(op["value"])
    return doc


def with_bundle(obj, pem, reverse=False):
    """Replaces @BUNDLE@ by pem in every string of obj (or pem by @BUNDLE@)."""
    a, b = (pem, "@BUNDLE@") if reverse else ("@BUNDLE@", pem)
    if isinstance(obj, dict):
        return {k: with_bundle(v, pem, reverse) for k, v in obj.items()}
    if isinstance(obj, list):
        return [with_bundle(v, pem, reverse) for v in obj]
    if isinstance(obj, str) and obj == a:
        return b
    return obj


def injected_parts(meta, spec):
    """What injection adds to a pod: tether containers, tether volumes, annotations."""
    ann = (meta or {}).get("annotations") or {}
    return {
        "init": [c for c in spec.get("initContainers", []) if c["name"] in INJECTED],
        "init_order": [c["name"] for c in spec.get("initContainers", [])
                       if c["name"] in INJECTED],
        "first": [c["name"] for c in spec.get("initContainers", [])][:2],
        "volumes": [v for v in spec.get("volumes", []) if v["name"].startswith("tether-")],
        "annotations": {k: v for k, v in ann.items()
                        if k.startswith("tether.io/") or k.startswith("prometheus.io/")},
    }


def pod_template(obj):
    """(metadata, spec) of the pod a workload object holds."""
    kind = obj["kind"]
    if kind == "Pod":
        return obj.get("metadata"), obj["spec"]
    t = obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" \
        else obj["spec"]["template"]
    return t.get("metadata"), t["spec"]


def validate(env, objects, name):
    """Runs k8s-validate.js on objects; returns (rc, output). Exits 77 (skip) when
    kubernetes-models cannot be installed."""
    path = env.write(name, json.dumps(objects, indent=1))
    r = subprocess.run(["node", VALIDATE, path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=600)
    out = r.stdout.decode(errors="replace")
    if r.returncode == 77:
        print("SKIP: kubernetes-models cannot be installed (npm registry unreachable):\n" + out)
        sys.exit(77)
    return r.returncode, out


def test(env):
    import yaml

    ensure_tools()
    ok = h.Checks()
    wport = h.free_port()
    c = env.control(extra=["--listen-webhook", "127.0.0.1:%d" % wport,
                           "--sidecar-image", IMAGE, "--inject-control-address", CONTROL_ADDR,
                           "--jwt-audience", AUDIENCE])
    h.wait_for(lambda: h.connect(wport, 1).close() or True, 10, 0.05, "the webhook port")
    bundle = c.bundle()
    with open(bundle) as f:
        pem = f.read()

    # The webhook's certificate is the control plane's, for the Service's name.
    other = env.certs.ca("other-ca")
    try:
        post(wport, other.crt, {})
        ok(False, "a client trusting another CA completed a handshake with the webhook")
    except ssl.SSLError as e:
        ok("CERTIFICATE_VERIFY_FAILED" in str(e), "another CA does not verify the webhook: %s" % e)

    # Real AdmissionReviews.
    regen = os.environ.get("TT_INJECT_REGEN") == "1"
    patched, reviews = {}, {}
    for path in sorted(glob.glob(os.path.join(K8S, "review-*.json"))):
        name = os.path.basename(path)[len("review-"):-len(".json")]
        with open(path) as f:
            review = json.load(f)
        reviews[name] = review
        st, ans = post(wport, bundle, review)
        ok(st == 200, "%s: HTTP %d" % (name, st))
        if st != 200:
            continue
        resp = ans.get("response", {})
        ok(ans.get("apiVersion") == "admission.k8s.io/v1" and ans.get("kind") ==
           "AdmissionReview", "%s: the answer is an admission.k8s.io/v1 AdmissionReview" % name)
        ok(resp.get("uid") == review["request"]["uid"], "%s: uid echoed" % name)
        ok(resp.get("allowed") is True, "%s: allowed (%r)" % (name, resp.get("status")))
        pod = review["request"]["object"]
        if name in NO_PATCH:
            ok("patch" not in resp and "patchType" not in resp, "%s: no patch" % name)
            patched[name] = pod
            continue
        ok(resp.get("patchType") == "JSONPatch", "%s: patchType JSONPatch" % name)
        patch = json.loads(base64.b64decode(resp.get("patch", "")))
        exp_path = os.path.join(K8S, "expected", name + ".patch.json")
        if regen:
            os.makedirs(os.path.dirname(exp_path), exist_ok=True)
            with open(exp_path, "w") as f:
                json.dump(with_bundle(patch, pem, reverse=True), f, indent=2)
                f.write("\n")
        with open(exp_path) as f:
            expected = with_bundle(json.load(f), pem)
        ok(patch == expected, "%s: the patch is exactly %s" % (name, exp_path))
        patched[name] = apply_patch(pod, patch)
        inits = [x["name"] for x in patched[name]["spec"]["initContainers"]]
        ok(inits[:2] == list(INJECTED), "%s: tether-init then tether-proxy first (%s)" % (
            name, inits))

    # What the webhook refuses, and how.
    base = reviews["pod"]
    st, ans = post(wport, bundle, b"{\"apiVersion\": \"admission.k8s.io/v1\", ")
    ok(st == 400 and "not JSON" in (ans or {}).get("error", ""), "unparsable body: 400 (%s)" % ans)
    bad = copy.deepcopy(base)
    bad["apiVersion"] = "admission.k8s.io/v1beta1"
    st, ans = post(wport, bundle, bad)
    r = (ans or {}).get("response", {})
    ok(st == 200 and r.get("allowed") is False and r.get("uid") == base["request"]["uid"] and
       "expected apiVersion admission.k8s.io/v1" in r.get("status", {}).get("message", ""),
       "wrong apiVersion: refused saying why (%s)" % r)
    bad = copy.deepcopy(base)
    bad["request"]["object"] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                                "spec": {}}
    st, ans = post(wport, bundle, bad)
    r = (ans or {}).get("response", {})
    ok(r.get("allowed") is False and "not a Pod" in r.get("status", {}).get("message", ""),
       "an object that is not a Pod: refused saying why (%s)" % r)
    bad = copy.deepcopy(base)
    bad["request"]["object"]["metadata"]["annotations"] = {
        "tether.io/exclude-outbound-cidrs": "10.0.0.0/8 --exclude-inbound-ports=*"}
    st, ans = post(wport, bundle, bad)
    r = (ans or {}).get("response", {})
    ok(r.get("allowed") is False and "annotation tether.io/exclude-outbound-cidrs" in
       r.get("status", {}).get("message", "") and "patch" not in r,
       "an annotation smuggling an option: refused naming it (%s)" % r)
    bad = copy.deepcopy(base)
    bad["request"]["object"]["spec"]["containers"][0]["securityContext"] = {"runAsUser": 1337}
    st, ans = post(wport, bundle, bad)
    r = (ans or {}).get("response", {})
    ok(r.get("allowed") is False and "1337" in r.get("status", {}).get("message", ""),
       "a container running as the proxy's UID (capture bypass): refused (%s)" % r)
    bad = copy.deepcopy(base)
    bad["request"]["object"]["spec"]["containers"] = "app"
    st, ans = post(wport, bundle, bad)
    r = (ans or {}).get("response", {})
    ok(r.get("allowed") is False and "spec.containers" in r.get("status", {}).get("message", ""),
       "a pod it does not understand: refused, not mangled (%s)" % r)
    st, ans = post(wport, bundle, None, method="GET")
    ok(st == 405, "GET /inject: 405 (%d)" % st)
    st, ans = post(wport, bundle, base, path="/mutate")
    ok(st == 404, "POST /mutate: 404 (%d)" % st)
    ok(any(e.get("status") == 200 and e.get("result") == "injected"
           for e in c.events("webhook_review")), "the control plane logs each review")

    # tetherctl inject on the same pods gives the same pods (bundle from the API).
    names = sorted(reviews)
    pods_yaml = env.write("pods.yaml", yaml.safe_dump_all(
        [reviews[n]["request"]["object"] for n in names], sort_keys=False))
    r = c.ctl("inject", "-f", pods_yaml, "--sidecar-image", IMAGE, "--control-address",
              CONTROL_ADDR, "--jwt-audience", AUDIENCE, "--trust-domain", "cluster.local")
    out = list(yaml.safe_load_all(r.stdout))
    ok(len(out) == len(names), "tetherctl: one document out per pod in")
    for n, got in zip(names, out):
        ok(got == patched[n], "tetherctl inject of the %s pod == the webhook's patch applied" % n)
    ok("Pod shop/debug: opted out" in r.stderr and "already injected" in r.stderr and
       "host network" in r.stderr, "tetherctl names the pods it left alone: %r" % r.stderr)

    # The workloads: YAML in and out, JSON in and out.
    wl_path = os.path.join(K8S, "workloads.yaml")
    with open(wl_path) as f:
        wl_in = [d for d in yaml.safe_load_all(f) if d is not None]
    args = ["--sidecar-image", IMAGE, "--control-address", CONTROL_ADDR, "--jwt-audience",
            AUDIENCE, "--bundle", bundle]
    r = c.ctl("inject", "-f", wl_path, *args)
    wl_out = list(yaml.safe_load_all(r.stdout))
    ok(r.stdout.count("\n---\n") == len(wl_in) - 1, "YAML out: one document per document in")
    ok([(d["kind"], d["metadata"]["name"]) for d in wl_out] ==
       [(d["kind"], d["metadata"]["name"]) for d in wl_in], "same kinds, names and order")
    ok("node-exporter: host network" in r.stderr and "debug: opted out" in r.stderr,
       "skipped workloads are named on stderr: %r" % r.stderr)
    wl_json = env.write("workloads.json", json.dumps(wl_in))
    rj = c.ctl("inject", "-f", wl_json, *args)
    ok(json.loads(rj.stdout) == wl_out, "JSON in gives the same objects, as JSON")
    rs = subprocess.run([env.tetherctl_bin, "inject", "-f", "-"] + args,
                        input=open(wl_path, "rb").read(), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=30)
    ok(rs.returncode == 0 and rs.stdout.decode() == r.stdout, "-f - reads stdin")
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in wl_out}
    for d in wl_in:
        key = (d["kind"], d["metadata"]["name"])
        if d["kind"] in ("Service", "ConfigMap") or key in (("Pod", "debug"),
                                                            ("DaemonSet", "node-exporter")):
            ok(by_key[key] == d, "%s %s passes through unchanged" % key)
    twin = {("Deployment", "web"): "deployment", ("StatefulSet", "db"): "statefulset",
            ("DaemonSet", "agent"): "daemonset", ("Job", "migrate"): "job",
            ("CronJob", "report"): "cronjob", ("Pod", "plain"): "pod"}
    for key, n in twin.items():
        meta, spec = pod_template(by_key[key])
        ok(injected_parts(meta, spec) == injected_parts(patched[n]["metadata"],
                                                        patched[n]["spec"]),
           "%s %s: tetherctl injects what the webhook injects into its pod" % key)
        ok(key[0] == "Pod" or by_key[key]["metadata"] == [d for d in wl_in if (d["kind"], d["metadata"]["name"])
                                       == key][0]["metadata"],
           "%s %s: the workload's own metadata is untouched" % key)
    # Injecting the output again changes nothing.
    again_path = env.write("again.yaml", r.stdout)
    r2 = c.ctl("inject", "-f", again_path, *args)
    ok(list(yaml.safe_load_all(r2.stdout)) == wl_out, "tetherctl inject is idempotent")

    # One bad document: nothing written, the reason on stderr.
    bad_docs = wl_in + [{"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "bad", "annotations": {"tether.io/proxy-cpu": "lots"}},
        "spec": {"containers": [{"name": "a", "image": "b"}]}}]
    bad_path = env.write("bad.yaml", yaml.safe_dump_all(bad_docs))
    rb = c.ctl("inject", "-f", bad_path, *args, check_rc=False)
    ok(rb.returncode == 1 and rb.stdout == "" and "Pod bad: annotation tether.io/proxy-cpu" in
       rb.stderr, "a bad document: exit 1, nothing written (%d, %r)" % (rb.returncode,
                                                                    rb.stderr))
    rb = c.ctl("inject", "-f", env.write("broken.yaml", "a: [1,\n"), *args, check_rc=False)
    ok(rb.returncode == 1 and "broken.yaml:2:1" in rb.stderr,
       "malformed YAML: exit 1 with file:line:col (%r)" % rb.stderr)

    # Every injected object validates against the Kubernetes schemas.
    objects = [d for d in wl_out] + [patched[n] for n in names]
    rc, out = validate(env, objects, "injected.json")
    ok(rc == 0, "every injected object validates (1.29+ schemas, unknown fields are "
                "errors):\n" + out)
    broken = copy.deepcopy(patched["deployment"])
    broken["spec"]["initContainers"][1]["sidecarMode"] = "native"
    broken["spec"]["initContainers"][0]["securityContext"]["runAsUser"] = "root"
    rc, out = validate(env, [broken], "broken.json")
    ok(rc == 1 and "/spec/initContainers/1/sidecarMode: unknown field" in out and
       "/spec/initContainers/0/securityContext/runAsUser" in out,
       "the validator fails an unknown field and a wrong type:\n" + out)
    # Under ASan: no report from the control plane on its way out (leaks included).
    c.stop(timeout=15)
    err = c.stderr()
    ok("Sanitizer" not in err and "runtime error:" not in err,
       "tether-control exits clean: %s" % err[err.find("Sanitizer") - 200:][:1500])
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "inject")
