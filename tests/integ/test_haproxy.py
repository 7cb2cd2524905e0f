#!/usr/bin/env python3
"""HAProxy (Debian's) as an mTLS peer on both sides of Tether.

1. HAProxy as an mTLS client of our inbound: client -> haproxy (plain frontend) ->
   mTLS (haproxy presents its certificate, verifies ours against the CA) -> our inbound
   -> echo. Our /stats and access log must show HAProxy's SPIFFE ID.
2. HAProxy as an mTLS server behind our outbound: client -> our outbound -> mTLS
   (`verify required` at HAProxy, so our certificate must be presented; we require
   HAProxy's SPIFFE URI SAN) -> haproxy -> echo.
3. Secure naming against HAProxy: an outbound that expects another SPIFFE ID is refused
   and counted as wrong_identity.
HAProxy runs in the foreground (-db) with its own config and pid file, stopped by pid.
"""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def test(env):
    ok = h.Checks()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(haproxy, os.X_OK):
        raise h.TestFailure("haproxy is not installed (apt-get install -y haproxy)")
    ca = env.certs.ca("ca")
    hp_id, api_id, web_id = (h.spiffe("edge", "haproxy"), h.spiffe("shop", "api"),
                             h.spiffe("shop", "web"))
    hp = env.certs.leaf("haproxy", ca, [hp_id])
    api = env.certs.leaf("api", ca, [api_id])
    web = env.certs.leaf("web", ca, [web_id])
    hp_pem = hp.pem_bundle(env.path("haproxy.pem"))
    echo = env.echo("echo")
    in_port, out_port, out_wrong_port = h.free_port(), h.free_port(), h.free_port()
    hp_plain, hp_tls = h.free_port(), h.free_port()

    cfg = env.write("haproxy.cfg", """
global
    pidfile {d}/haproxy.pid
    maxconn 2000
    log stderr format raw local0 info
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend plain_in
    bind 127.0.0.1:{hp_plain}
    default_backend tether_inbound
backend tether_inbound
    server api 127.0.0.1:{in_port} ssl crt {pem} ca-file {ca} verify required
frontend mtls_in
    bind 127.0.0.1:{hp_tls} ssl crt {pem} ca-file {ca} verify required
    log-format "mtls-client verify=%[ssl_c_verify] serial=%[ssl_c_serial,hex] used=%[ssl_c_used]"
    default_backend echo
backend echo
    server e1 127.0.0.1:{echo}
""".format(d=env.dir, hp_plain=hp_plain, hp_tls=hp_tls, in_port=in_port, pem=hp_pem,
           ca=ca.crt, echo=echo.port))
    r = h.run([haproxy, "-c", "-f", cfg], check_rc=False)
    ok(r.returncode == 0, "haproxy -c accepts the config (%s)" % r.stderr.decode()[-300:])

    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "haproxy-in", "action": "allow", "from": [hp_id], "ports": [echo.port]}]})
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, echo.addr)], policy=policy)
    web_sc = env.sidecar("web", web, ca, outbound=[
        (out_port, "127.0.0.1:%d" % hp_tls, hp_id),
        (out_wrong_port, "127.0.0.1:%d" % hp_tls, api_id)])
    hp_proc = env.proc("haproxy", [haproxy, "-db", "-f", cfg])
    h.wait_for(lambda: h.connect(hp_plain, 1).close() or True, 10, what="haproxy listening")

    # 1. HAProxy -> our inbound.
    payload = h.pattern_bytes(300000, seed=3)
    got = h.echo_exact(hp_plain, payload)
    ok(got == payload, "client -> haproxy -> mTLS -> inbound -> echo: 300 kB intact (%d)" %
       len(got))
    for i in range(5):
        p = b"msg-%d\n" % i
        ok(h.echo_exact(hp_plain, p) == p, "haproxy -> inbound connection %d" % i)
    acc = h.wait_for(lambda: [a for a in api_sc.access_logs() if a.get("peer_id") == hp_id],
                     5, what="access line for haproxy")
    ok(all(a.get("verdict") == "allow" and a.get("rule") == "haproxy-in" for a in acc),
       "access lines show haproxy's identity, allow, rule haproxy-in")
    li = api_sc.listener("inbound:127.0.0.1:%d" % in_port)
    ok(li["handshakes"] >= 6, "inbound counted haproxy's handshakes (%d)" % li["handshakes"])
    peers = {p["spiffe_id"]: p for p in api_sc.stats()["peers"]}
    ok(peers.get(hp_id, {}).get("connections", 0) >= 6, "peers has haproxy (%r)" %
       peers.get(hp_id))

    # 2. our outbound -> HAProxy (mTLS server that requires our certificate).
    got = h.echo_exact(out_port, payload)
    ok(got == payload, "client -> outbound -> mTLS -> haproxy -> echo: 300 kB intact (%d)" %
       len(got))
    lo = web_sc.listener("outbound:127.0.0.1:%d" % out_port)
    ok(lo["handshakes"] >= 1, "outbound handshake with haproxy counted (%d)" %
       lo["handshakes"])
    web_serial = web.serial()
    hp_log = h.wait_for(lambda: "mtls-client" in hp_proc.stderr() and hp_proc.stderr(),
                        5, what="haproxy's log line")
    lines = [ln for ln in hp_log.splitlines() if "mtls-client" in ln]
    ok(any("verify=0" in ln and "used=1" in ln and
           h.norm_serial(ln.split("serial=")[1].split()[0]) == web_serial for ln in lines),
       "haproxy saw and verified our client certificate, serial %s (%r)" % (
           web_serial, lines[:2]))

    # 3. secure naming: HAProxy's valid certificate is for another ID.
    got = h.echo_exact(out_wrong_port, b"should-not-pass\n", timeout=5)
    ok(got == b"", "outbound expecting api_id refuses haproxy (%r)" % got)
    wi = h.wait_for(lambda: web_sc.listener("outbound:127.0.0.1:%d" % out_wrong_port)[
        "handshake_failures"].get("wrong_identity", 0), 5, what="wrong_identity")
    ok(wi == 1, "wrong_identity == 1 (%r)" % wi)
    ok(hp_proc.alive() and api_sc.alive() and web_sc.alive(), "all processes alive")
    ok.done()


if __name__ == "__main__":
    h.main(test, "haproxy")
