#!/usr/bin/env python3
"""deploy/kubernetes: what an operator applies to a cluster (issue 9). No cluster runs here;
this checks everything that can be checked without one:
- `kubectl kustomize deploy/kubernetes` builds (kubectl from Debian's kubernetes-client
  where none is installed);
- every object it outputs validates against the Kubernetes API schemas of a version with
  native sidecars (tests/tools/k8s-validate.js, kubernetes-models), unknown fields
  counted as errors;
- the objects say what the README promises: namespace tether-system, one tether-control
  replica with strategy Recreate on a persistent volume, Services for 15012, 15014 and
  443 -> 15017, a PodDisruptionBudget with maxUnavailable 1, the webhook selecting
  namespaces labelled tether-injection=enabled with an explicit failure policy, and a
  ClusterRole with exactly the least rights (read services, pods and endpointslices;
  patch the injector's own MutatingWebhookConfiguration by name) and nothing more;
- every flag the Deployment passes to tether-control is one tether-control knows (its
  --help), so a renamed flag breaks this test, not a cluster;
- each container build file installs, as runtime packages, every package that provides a
  library the built binary links directly (readelf NEEDED -> dpkg -S), so an image never
  lacks a library this build gained."""

import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
KDIR = os.path.join(ROOT, "deploy", "kubernetes")
VALIDATE = os.path.join(ROOT, "tests", "tools", "k8s-validate.js")
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
# Packages every Debian image has (libc, the C++ runtime gRPC core pulls in), and the
# sanitizer runtimes a test build links (never in a release image).
BASE_PACKAGES = {"libc6", "libstdc++6", "libgcc-s1"}
SANITIZER_PACKAGE = re.compile(r"^lib(asan|ubsan|lsan|tsan)[0-9]*$")
LEAST_RULES = sorted([
    ("", "pods", "list,watch", ""),
    ("", "services", "list,watch", ""),
    ("discovery.k8s.io", "endpointslices", "list,watch", ""),
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch",
     "tether-sidecar-injector"),
])


def ensure_tools():
    """Installs kubectl (Debian's kubernetes-client), node/npm and PyYAML where missing."""
    need = []
    if shutil.which("kubectl") is None:
        need.append("kubernetes-client")
    if shutil.which("npm") is None:
        need += ["nodejs", "npm"]
    if subprocess.run([PY, "-c", "import yaml"], capture_output=True).returncode != 0:
        need.append("python3-yaml")
    if need:
        h.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + need, timeout=600,
              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def kustomize():
    """The objects `kubectl kustomize deploy/kubernetes` outputs, as dicts."""
    r = h.run(["kubectl", "kustomize", KDIR], timeout=60)
    out = subprocess.run([PY, "-c", "import json,sys,yaml; "
                          "print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"],
                         input=r.stdout, capture_output=True, timeout=30)
    h.check(out.returncode == 0, "kustomize output is not YAML: %s" % out.stderr.decode()[-400:])
    return json.loads(out.stdout)


def by_kind(objs, kind, name):
    """The one object of that kind and name; fails the test when it is missing."""
    found = [o for o in objs if o.get("kind") == kind and o["metadata"].get("name") == name]
    h.check(len(found) == 1, "expected one %s %s, found %d" % (kind, name, len(found)))
    return found[0]


def check_objects(c, objs):
    """The promised shape of each object (module docstring)."""
    ns = by_kind(objs, "Namespace", "tether-system")
    c("tether-injection" not in ns["metadata"].get("labels", {}),
      "tether-system must never be injected")
    dep = by_kind(objs, "Deployment", "tether-control")
    spec = dep["spec"]
    c(spec.get("replicas") == 1, "tether-control replicas %r, want 1" % spec.get("replicas"))
    c(spec.get("strategy", {}).get("type") == "Recreate", "strategy %r" % spec.get("strategy"))
    pod = spec["template"]["spec"]
    c(pod.get("serviceAccountName") == "tether-control", "service account")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    pvc_vols = [v for v in vols.values() if "persistentVolumeClaim" in v]
    c(len(pvc_vols) == 1, "state on one persistent volume: %r" % list(vols))
    if pvc_vols:
        by_kind(objs, "PersistentVolumeClaim", pvc_vols[0]["persistentVolumeClaim"]["claimName"])
    ctr = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in ctr.get("volumeMounts", [])}
    state_arg = [a for a in ctr["args"] if a.startswith("--state-dir=")]
    c(state_arg and pvc_vols and mounts.get(pvc_vols[0]["name"]) == state_arg[0].split("=", 1)[1],
      "--state-dir is the persistent volume's mount: %r %r" % (state_arg, mounts))
    sc = ctr.get("securityContext", {})
    c(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
      and sc.get("capabilities", {}).get("drop") == ["ALL"], "control container hardening %r" % sc)
    c(pod.get("securityContext", {}).get("runAsNonRoot") is True, "runAsNonRoot")

    svc = by_kind(objs, "Service", "tether-control")
    ports = {p["port"]: p.get("targetPort") for p in svc["spec"]["ports"]}
    c(ports == {15012: 15012, 15014: 15014, 443: 15017}, "service ports %r" % ports)
    sel = svc["spec"]["selector"]
    labels = spec["template"]["metadata"]["labels"]
    c(all(labels.get(k) == v for k, v in sel.items()), "service selects the control pod")

    pdb = by_kind(objs, "PodDisruptionBudget", "tether-control")
    c(pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"],
      "PDB %r" % pdb["spec"])
    c(all(labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()),
      "PDB selects the control pod")

    mwc = by_kind(objs, "MutatingWebhookConfiguration", "tether-sidecar-injector")
    hooks = mwc["webhooks"]
    c([w["name"] for w in hooks] == ["inject.tether.io"], "webhook names %r" % hooks)
    w = hooks[0]
    c(w.get("failurePolicy") in ("Fail", "Ignore"), "explicit failure policy")
    c(w.get("namespaceSelector") == {"matchLabels": {"tether-injection": "enabled"}},
      "namespace selector %r" % w.get("namespaceSelector"))
    c(w["clientConfig"].get("service") == {"name": "tether-control", "namespace": "tether-system",
                                           "path": "/inject", "port": 443},
      "webhook service %r" % w["clientConfig"])
    c(w["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                      "resources": ["pods"], "scope": "Namespaced"}], "webhook rules %r" % w["rules"])

    role = by_kind(objs, "ClusterRole", "tether-control")
    got = sorted((g, r, ",".join(sorted(rule["verbs"])), ",".join(rule.get("resourceNames", [])))
                 for rule in role["rules"] for g in rule.get("apiGroups", ["<none>"])
                 for r in rule.get("resources", ["<none>"]))
    c(got == LEAST_RULES, "ClusterRole rules %r, want exactly %r" % (got, LEAST_RULES))
    kinds = sorted({o["kind"] for o in objs})
    c(not {"Role", "RoleBinding", "Secret"} & set(kinds), "unexpected kinds %r" % kinds)
    binding = by_kind(objs, "ClusterRoleBinding", "tether-control")
    c(binding["subjects"] == [{"kind": "ServiceAccount", "name": "tether-control",
                               "namespace": "tether-system"}], "binding %r" % binding["subjects"])
    return ctr["args"]


def check_flags(c, args):
    """Every --flag in args appears in tether-control --help."""
    paths = h.control_paths()
    if paths is None:
        c(False, "TT_CONTROL is not set: cannot check the Deployment's flags")
        return
    r = subprocess.run([paths[0], "--help"], capture_output=True, timeout=10)
    text = (r.stdout + r.stderr).decode()
    known = set(re.findall(r"(--[a-z][a-z0-9-]*)", text))
    for a in args:
        flag = a.split("=", 1)[0]
        c(flag in known, "the Deployment's %s is a flag tether-control --help knows" % flag)


def dockerfile_packages(path):
    """The package names of the runtime stage's apt-get install in a Dockerfile."""
    text = open(path).read().replace("\\\n", " ")
    stages = text.split("\nFROM ")
    runtime = stages[-1]
    m = re.search(r"apt-get install ([^&]*)", runtime)
    return set(t for t in m.group(1).split() if not t.startswith("-")) if m else set()


def needed_packages(binary):
    """The Debian packages that provide the libraries binary links directly."""
    dyn = h.run(["readelf", "-d", binary]).stdout.decode()
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn)
    ldd = h.run(["ldd", binary]).stdout.decode()
    paths = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
    pkgs = set()
    for lib in needed:
        path = paths.get(lib)
        if path is None:
            continue
        r = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True)
        if r.returncode != 0:
            r = subprocess.run(["dpkg", "-S", path], capture_output=True)
        if r.returncode == 0:
            pkgs.add(r.stdout.decode().split(":")[0])
    return pkgs


def check_images(c):
    """Each image's runtime stage installs every package its binary links directly."""
    images = os.path.join(KDIR, "images")
    binaries = {"sidecar.Dockerfile": [h.sidecar_path()]}
    paths = h.control_paths()
    if paths:
        binaries["control.Dockerfile"] = [paths[0], paths[1]]
    for name, bins in binaries.items():
        have = dockerfile_packages(os.path.join(images, name))
        c(have, "%s: the runtime stage installs packages with apt-get" % name)
        for b in bins:
            missing = {p for p in needed_packages(b) - have - BASE_PACKAGES
                       if not SANITIZER_PACKAGE.match(p)}
            c(not missing, "%s: every package %s links from is installed (missing: %s)" % (
                name, os.path.basename(b), sorted(missing)))


def test(env):
    ensure_tools()
    c = h.Checks()
    objs = kustomize()
    c(len(objs) >= 9, "kustomize gave %d objects" % len(objs))
    path = env.write("manifests.json", json.dumps(objs))
    r = subprocess.run(["node", VALIDATE, path], capture_output=True, timeout=600)
    c(r.returncode == 0, "schema validation failed:\n%s%s" % (r.stdout.decode()[-3000:],
                                                              r.stderr.decode()[-2000:]))
    args = check_objects(c, objs)
    check_flags(c, args)
    check_images(c)
    c.done()


if __name__ == "__main__":
    h.main(test, "k8s-manifests")
