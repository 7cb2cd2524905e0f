#!/usr/bin/env python3
"""gRPC callers outside the mesh, straight to an inbound sidecar with their mesh
certificate (Tether issue 10: "gRPC works end to end"; "the inbound listener also
negotiates ALPN for callers outside the mesh"). gRPC needs HTTP/2 to the workload: a
request stream whose content-type is application/grpc is relayed to the workload over h2c,
stream to stream, where other HTTP/2 requests are served to it as HTTP/1.1.

With a grpcio client (ALPN h2, client certificate) and a grpcio h2c server as workload:
- a unary call, a 1 MiB unary call and a 100-message bidirectional stream succeed; an
  unknown method comes back UNIMPLEMENTED (the workload's trailers-only answer), and an
  error status after initial metadata comes back as sent (headers, then trailers);
- per-request policy on the gRPC method: tt.Echo/Unary and Bidi allowed, tt.Echo/Admin
  denied: the client gets PERMISSION_DENIED and the workload never sees the call (the
  workload answers Admin with OK if it is reached); counted on the rule;
- a gRPC request whose :path would need normalizing (percent-encoding, dot segments) is
  refused with 400 bad_target before any policy or workload sees it (curl --http2);
- the requests have request lines, and access lines with route grpc.
"""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_app_protocols.py")
MB = 1 << 20


def grpc_server(port):
    """tt.Echo as in test_app_protocols.py, plus Admin, which answers b"admin-reached"."""
    from concurrent import futures

    import grpc

    def unary(req, ctx):
        return b"echo:" + req

    def bidi(it, ctx):
        for m in it:
            yield m

    def admin(req, ctx):
        print("ADMIN-REACHED", flush=True)
        return b"admin-reached"

    def fail(req, ctx):
        """Initial metadata, then an error status: headers and trailers, no message."""
        ctx.send_initial_metadata((("x-meta", "1"),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "nothing here")

    handler = grpc.method_handlers_generic_handler("tt.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Admin": grpc.unary_unary_rpc_method_handler(admin),
        "Fail": grpc.unary_unary_rpc_method_handler(fail)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 8 * MB)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()


def grpc_client(port, ca, crt, key):
    """Calls the inbound at 127.0.0.1:port over mTLS (name api.mesh.test); prints JSON."""
    import grpc

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(read(ca), read(key), read(crt))
    ch = grpc.secure_channel("127.0.0.1:%d" % port, creds, options=[
        ("grpc.ssl_target_name_override", "api.mesh.test"), ("grpc.enable_http_proxy", 0),
        ("grpc.max_receive_message_length", 8 * MB)])
    res = {}
    unary = ch.unary_unary("/tt.Echo/Unary")
    res["unary"] = unary(b"hello from outside", timeout=20).decode()
    big = bytes(range(256)) * (MB // 256)
    res["big_ok"] = unary(big, timeout=30) == b"echo:" + big
    for name in ("Missing", "Admin", "Fail"):
        try:
            ch.unary_unary("/tt.Echo/" + name)(b"x", timeout=20)
            res[name] = "OK"
        except grpc.RpcError as e:
            res[name] = e.code().name
            if name == "Fail":
                res["fail_details"] = e.details()
    msgs = [b"m-%03d" % i * (i + 1) for i in range(100)]
    got = list(ch.stream_stream("/tt.Echo/Bidi")(iter(msgs), timeout=60))
    res["bidi_ok"] = got == msgs
    ch.close()
    print(json.dumps(res))


def rule_hits(sc, name):
    for r in sc.stats().get("policy", {}).get("rules", []):
        if r.get("name") == name:
            return r.get("hits", 0)
    return 0


def test(env):
    ok = h.Checks()
    r = subprocess.run([h.DEBIAN_PYTHON, "-c", "import grpc"], capture_output=True)
    if r.returncode != 0:
        print("SKIP: %s cannot import grpc (deploy/install-deps.sh installs python3-grpcio)"
              % h.DEBIAN_PYTHON)
        sys.exit(77)
    ca = env.certs.ca("ca")
    client_id, api_id = h.spiffe("edge", "gateway"), h.spiffe("shop", "api")
    cc = env.certs.leaf("gateway", ca, [client_id])
    api = env.certs.leaf("api", ca, [api_id], dns=["api.mesh.test"])
    grpc_port, in_port = h.free_port(), h.free_port()
    server = env.proc("grpc-server", [h.DEBIAN_PYTHON, os.path.abspath(__file__), "server",
                                      str(grpc_port)])
    h.wait_for(lambda: "listening" in open(server.out_path).read(), 20, what="grpc server")
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "no-admin", "action": "deny", "from": ["*"], "paths": ["/tt.Echo/Admin"]},
        {"name": "echo", "action": "allow", "from": [client_id], "methods": ["POST"],
         "paths": ["/tt.Echo/*"]}]})
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, "127.0.0.1:%d" % grpc_port)],
                         policy=policy)

    before = rule_hits(api_sc, "no-admin")
    r = subprocess.run([h.DEBIAN_PYTHON, os.path.abspath(__file__), "client", str(in_port),
                        ca.crt, cc.crt, cc.key], capture_output=True, text=True, timeout=120)
    if ok(r.returncode == 0, "the grpc client ran (rc %d): %s" % (r.returncode,
                                                                   r.stderr[-1500:])):
        res = json.loads(r.stdout.strip().splitlines()[-1])
        h.log("grpc:", res)
        ok(res["unary"] == "echo:hello from outside", "unary call answered (%r)" % res["unary"])
        ok(res["big_ok"], "a 1 MiB unary call echoed intact")
        ok(res["bidi_ok"], "a 100-message bidirectional stream echoed in order")
        ok(res["Missing"] == "UNIMPLEMENTED",
           "an unknown method is UNIMPLEMENTED, the workload's trailers-only answer (%s)"
           % res["Missing"])
        ok(res["Fail"] == "NOT_FOUND" and res.get("fail_details") == "nothing here",
           "a status sent after initial metadata arrives in the trailers (%s %r)"
           % (res["Fail"], res.get("fail_details")))
        ok(res["Admin"] == "PERMISSION_DENIED",
           "tt.Echo/Admin denied by policy: PERMISSION_DENIED (%s)" % res["Admin"])
    ok("ADMIN-REACHED" not in open(server.out_path).read(),
       "the denied call never reached the workload")
    after = h.wait_for(lambda: (lambda n: n if n > before else None)(
        rule_hits(api_sc, "no-admin")), 5, what="no-admin hits")
    ok(after == before + 1, "the denial is counted on no-admin (%d -> %d)" % (before, after))

    # A path that would need normalizing is not a gRPC path: 400 before policy.
    for path in ("/tt.Echo/%41dmin", "/tt.Echo/../tt.Echo/Admin", "/tt.Echo/./Admin"):
        r = subprocess.run(["curl", "-sS", "--http2", "-k", "--path-as-is", "--cert", cc.crt,
                            "--key", cc.key, "-D", "-", "-o", "/dev/null",
                            "-X", "POST", "-H", "content-type: application/grpc",
                            "-H", "te: trailers",
                            "https://127.0.0.1:%d%s" % (in_port, path)],
                           capture_output=True, timeout=30)
        ok(re.search(rb"(?im)^HTTP/2 400", r.stdout) and
           re.search(rb"(?im)^x-tether-reason: bad_target", r.stdout),
           "gRPC path %s is refused 400 bad_target (%r %r)" % (path, r.stdout[:200], r.stderr[-300:]))
    ok("ADMIN-REACHED" not in open(server.out_path).read(),
       "no spelling of Admin reached the workload")

    lines = api_sc.events("request")
    ok(any(l.get("path") == "/tt.Echo/Unary" and l.get("status") == 200 for l in lines),
       "the calls have request lines (%r)" % lines[:2])
    ok(any(l.get("path") == "/tt.Echo/Admin" and l.get("verdict") == "deny" for l in lines),
       "the denied call has its request line")
    routes = {a.get("route") for a in api_sc.access_logs()}
    ok("grpc" in routes, "access lines say route grpc (%r)" % routes)
    ok(api_sc.alive(), "the inbound sidecar is alive")
    clean, reports = api_sc.stop_clean()
    ok(clean, "the inbound sidecar exits 0 on SIGTERM without sanitizer reports (%r)" % reports)
    ok.done()


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "server":
        grpc_server(int(sys.argv[2]))
    elif len(sys.argv) >= 6 and sys.argv[1] == "client":
        grpc_client(int(sys.argv[2]), *sys.argv[3:6])
    else:
        h.main(test, "grpc_inbound")
