#!/usr/bin/env python3
"""Fails when Tether's layering breaks (DESIGN.md "Parts and layout", STYLE.md):

1. an include cycle between modules (a module is a .c/.h pair) of sidecar/, control/ or
   proto/;
2. a sidecar layer that includes a header of a layer above it (sidecar/src/<layer>/,
   lowest first: core tls policy http snapshot metrics net control admin app);
3. a third-party header reaching a source file outside that library's owners, directly or
   through any other header. This uses the compiler itself: every sidecar/, control/ and
   proto/ command of the build's compile_commands.json is re-run with -M, which lists
   every header the file really includes.

Usage: check-layers.py SOURCE_ROOT BUILD_DIR. Prints each violation; exits 1 if any."""
import json, os, re, shlex, subprocess, sys

LAYERS = ["core", "tls", "policy", "http", "snapshot", "metrics", "net", "control", "admin", "app"]

# Library -> (how its headers are recognized, which source files may see them). Paths are
# relative to the source root; a trailing "/" owns a folder.
LIBS = {
    "BoringSSL": (re.compile(r"/android/openssl/"),
                  ["sidecar/src/tls/", "control/ca.c", "control/store_tokens.c",
                   "control/jwks.c"]),
    "libuv": (re.compile(r"/uv\.h$|/uv/"),
              ["sidecar/src/net/", "sidecar/src/admin/", "sidecar/src/app/", "sidecar/main.c",
               "control/main.c", "control/api.c", "control/tls_acceptor.c", "control/webhook.c",
               "control/sidecar_api.c"]),
    "jansson": (re.compile(r"/jansson(_config)?\.h$"),
                ["sidecar/src/policy/", "sidecar/src/admin/", "sidecar/src/app/",
                 "control/"]),
    "gRPC": (re.compile(r"/grpc/|/grpc_glue\.h$"),
             ["proto/", "sidecar/src/control/cpclient.c", "control/sidecar_api.c"]),
    "protobuf-c": (re.compile(r"/protobuf-c/|\.pb-c\.h$"),
                   ["proto/", "sidecar/src/control/cpclient.c", "control/sidecar_api.c"]),
    "http-parser": (re.compile(r"/http_parser\.h$"),
                    ["sidecar/src/admin/httpd.c", "sidecar/src/admin/admin.c", "control/api.c",
                     "control/httpc.c", "sidecar/src/http/h1.c", "sidecar/src/http/h1resp.c"]),
    "nghttp2": (re.compile(r"/nghttp2/"), ["sidecar/src/http/"]),
    "libyaml": (re.compile(r"/include/yaml\.h$"), ["control/yaml.c"]),
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def sources(root, tops):
    for top in tops:
        for d, _, names in os.walk(os.path.join(root, top)):
            for n in names:
                if n.endswith((".c", ".h")):
                    yield os.path.relpath(os.path.join(d, n), root)


def module_graph(root, files):
    """Module -> modules it includes, resolving quoted names against the including
    file's folder, sidecar/src, proto/ and proto/glue (the build's include dirs)."""
    mods = {os.path.splitext(f)[0] for f in files}
    edges = {m: set() for m in mods}
    for f in files:
        for name in INCLUDE.findall(open(os.path.join(root, f), errors="replace").read()):
            for base in (os.path.dirname(f), "sidecar/src", "proto", "proto/glue", "control"):
                target = os.path.splitext(os.path.normpath(os.path.join(base, name)))[0]
                if target in mods:
                    if target != os.path.splitext(f)[0]:
                        edges[os.path.splitext(f)[0]].add(target)
                    break
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer_of(path):
    parts = path.split("/")
    if len(parts) >= 4 and parts[0] == "sidecar" and parts[1] == "src" and parts[2] in LAYERS:
        return LAYERS.index(parts[2])
    return None


def owned(path, owners):
    return any(path.startswith(o) if o.endswith("/") else path == o for o in owners)


def header_deps(entry):
    """The headers a compile command's file includes, from the compiler's -M output."""
    args = entry.get("arguments") or shlex.split(entry["command"])
    cmd, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-o", "-MF", "-MQ", "-MT"):
            skip = True
            continue
        if a in ("-c", "-MD", "-MMD") or a.startswith("-fsanitize"):
            continue
        cmd.append(a)
    r = subprocess.run(cmd + ["-M"], cwd=entry["directory"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("%s: %s" % (entry["file"], r.stderr.strip()[:500]))
    text = r.stdout.replace("\\\n", " ")
    return [os.path.normpath(os.path.join(entry["directory"], p))
            for p in text.split(":", 1)[1].split()]


def main():
    root, build = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    problems = []
    files = sorted(sources(root, ["sidecar", "control", "proto"]))

    for comp in cycles(module_graph(root, files)):
        problems.append("include cycle: " + " -> ".join(comp))

    for f in files:
        lf = layer_of(f)
        if lf is None:
            continue
        for name in INCLUDE.findall(open(os.path.join(root, f), errors="replace").read()):
            lt = layer_of("sidecar/src/" + name)
            if lt is not None and lt > lf:
                problems.append("%s (layer %s) includes %s from the higher layer %s" % (
                    f, LAYERS[lf], name, LAYERS[lt]))

    checked = 0
    for entry in json.load(open(os.path.join(build, "compile_commands.json"))):
        src = os.path.relpath(os.path.normpath(os.path.join(entry["directory"], entry["file"])),
                              root)
        if not src.startswith(("sidecar/", "control/", "proto/")) or src.startswith("proto/tether/"):
            continue
        checked += 1
        for dep in header_deps(entry):
            for lib, (pattern, owners) in LIBS.items():
                if pattern.search(dep) and not owned(src, owners):
                    problems.append("%s sees %s through %s" % (src, lib, dep))
                    break
    if checked == 0:
        problems.append("no sidecar/control/proto sources in %s/compile_commands.json" % build)

    seen = set()
    for p in problems:
        if p not in seen:
            seen.add(p)
            print("LAYERING: " + p)
    print("%d source files checked with -M, %d modules, %d problem(s)" % (
        checked, len({os.path.splitext(f)[0] for f in files}), len(seen)))
    return 1 if seen else 0


if __name__ == "__main__":
    sys.exit(main())
