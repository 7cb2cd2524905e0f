#!/usr/bin/env python3
"""nginx (Debian's, stream module) as an mTLS peer on both sides of Tether.

1. nginx as an mTLS client of our inbound: client -> nginx stream (proxy_ssl with a
   client certificate, verifying our certificate's chain and its DNS name) -> our
   inbound -> echo.
2. nginx as an mTLS server behind our outbound (ssl_verify_client on): client -> our
   outbound -> nginx -> echo; nginx's log shows it verified our certificate (serial).
3. Secure naming against nginx: an outbound expecting another ID is refused.
nginx runs in the foreground (daemon off, master_process off) with its own prefix,
config, error log and pid file in the temp dir, stopped by pid.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def test(env):
    ok = h.Checks()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK) or not os.path.exists(MODULE):
        raise h.TestFailure("nginx or its stream module is missing "
                            "(apt-get install -y nginx libnginx-mod-stream)")
    ca = env.certs.ca("ca")
    ng_id, api_id, web_id = (h.spiffe("edge", "nginx"), h.spiffe("shop", "api"),
                             h.spiffe("shop", "web"))
    ng = env.certs.leaf("nginx", ca, [ng_id])
    # The api certificate also carries a DNS name so that nginx can verify it by name.
    api = env.certs.leaf("api", ca, [api_id], dns=["api.shop.svc"])
    web = env.certs.leaf("web", ca, [web_id])
    echo = env.echo("echo")
    in_port, out_port, out_wrong_port = h.free_port(), h.free_port(), h.free_port()
    ng_plain, ng_tls = h.free_port(), h.free_port()
    os.makedirs(env.path("nginx"), exist_ok=True)
    cfg = env.write("nginx/nginx.conf", """
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx/nginx.pid;
error_log {d}/nginx/error.log info;
events {{ worker_connections 1024; }}
stream {{
    log_format mtls 'mtls-client verify=$ssl_client_verify serial=$ssl_client_serial';
    server {{
        listen 127.0.0.1:{ng_plain};
        proxy_pass 127.0.0.1:{in_port};
        proxy_ssl on;
        proxy_ssl_certificate {crt};
        proxy_ssl_certificate_key {key};
        proxy_ssl_trusted_certificate {ca};
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 3;
        proxy_ssl_name api.shop.svc;
        proxy_ssl_protocols TLSv1.2 TLSv1.3;
    }}
    server {{
        listen 127.0.0.1:{ng_tls} ssl;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        access_log {d}/nginx/mtls.log mtls;
        proxy_pass 127.0.0.1:{echo};
    }}
}}
""".format(module=MODULE, d=env.dir, ng_plain=ng_plain, ng_tls=ng_tls, in_port=in_port,
           crt=ng.crt, key=ng.key, ca=ca.crt, echo=echo.port))
    base = [nginx, "-p", env.path("nginx"), "-e", env.path("nginx", "error.log"), "-c", cfg]
    r = h.run(base + ["-t"], check_rc=False)
    ok(r.returncode == 0, "nginx -t accepts the config (%s)" % r.stderr.decode()[-400:])

    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "nginx-in", "action": "allow", "from": [ng_id], "ports": [echo.port]}]})
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, echo.addr)], policy=policy)
    web_sc = env.sidecar("web", web, ca, outbound=[
        (out_port, "127.0.0.1:%d" % ng_tls, ng_id),
        (out_wrong_port, "127.0.0.1:%d" % ng_tls, api_id)])
    ng_proc = env.proc("nginx", base)
    h.wait_for(lambda: h.connect(ng_plain, 1).close() or True, 10, what="nginx listening")

    # 1. nginx -> our inbound.
    payload = h.pattern_bytes(300000, seed=5)
    got = h.echo_exact(ng_plain, payload)
    ok(got == payload, "client -> nginx -> mTLS -> inbound -> echo: 300 kB intact (%d)" %
       len(got))
    for i in range(5):
        p = b"msg-%d\n" % i
        ok(h.echo_exact(ng_plain, p) == p, "nginx -> inbound connection %d" % i)
    acc = h.wait_for(lambda: [a for a in api_sc.access_logs() if a.get("peer_id") == ng_id],
                     5, what="access line for nginx")
    ok(all(a.get("verdict") == "allow" and a.get("rule") == "nginx-in" for a in acc),
       "access lines show nginx's identity, allow, rule nginx-in")
    peers = {p["spiffe_id"]: p for p in api_sc.stats()["peers"]}
    ok(peers.get(ng_id, {}).get("connections", 0) >= 6, "peers has nginx (%r)" %
       peers.get(ng_id))

    # 2. our outbound -> nginx (requires our client certificate).
    got = h.echo_exact(out_port, payload)
    ok(got == payload, "client -> outbound -> mTLS -> nginx -> echo: 300 kB intact (%d)" %
       len(got))
    mtls_log = env.path("nginx", "mtls.log")
    lines = h.wait_for(lambda: os.path.exists(mtls_log) and open(mtls_log).read().splitlines(),
                       5, what="nginx's mtls log")
    web_serial = web.serial()
    ok(any("verify=SUCCESS" in ln and h.norm_serial(ln.split("serial=")[1]) == web_serial
           for ln in lines),
       "nginx verified our client certificate, serial %s (%r)" % (web_serial, lines[:2]))

    # 3. secure naming.
    got = h.echo_exact(out_wrong_port, b"should-not-pass\n", timeout=5)
    ok(got == b"", "outbound expecting api_id refuses nginx (%r)" % got)
    wi = h.wait_for(lambda: web_sc.listener("outbound:127.0.0.1:%d" % out_wrong_port)[
        "handshake_failures"].get("wrong_identity", 0), 5, what="wrong_identity")
    ok(wi == 1, "wrong_identity == 1 (%r)" % wi)
    ok(ng_proc.alive() and api_sc.alive() and web_sc.alive(), "all processes alive")
    ok.done()


if __name__ == "__main__":
    h.main(test, "nginx")
