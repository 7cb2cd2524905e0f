#!/usr/bin/env python3
"""The control plane publishes its revocations as a signed CRL that nginx enforces.

nginx (Debian's, stream module) serves mTLS with `ssl_verify_client on`, the control
plane's bundle as `ssl_client_certificate` and `tetherctl crl get` as `ssl_crl`; its own
certificate comes from the control plane too (`tetherctl admin-cert create`). Two
workload sidecars in control mode (web, batch) dial it through their outbound listeners.
1. With the CRL of no revocation both get through.
2. `tetherctl revoke` web's serial, fetch the CRL again, restart nginx on it: web is
   refused (nginx's log says the certificate is revoked), batch still gets through. The
   attack is the revoked identity connecting: it must fail.
3. web's outbound access line for the refused connection says that nginx closed it
   (closed_by "upstream") and that no byte reached the client. nginx completes the TLS
   handshake whatever its verification found and then closes without an alert, so the
   outbound side cannot tell a refusal from a server that closes at once; the verdict of
   a handshake refused with an alert is tested in integ-access-log.
4. The CRL itself, read by the openssl CLI: issued by the CA, signature verifying with the
   bundle, lists exactly the revoked serial, nextUpdate about 24 h after thisUpdate;
   GET /v1/crl?format=der serves the same CRL in DER, and GET /v1/crl needs no credential.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
ADMIN_ID = "spiffe://cluster.local/ns/tether-system/sa/tether-admin"


def start_nginx(env, nginx, cfg, port):
    base = [nginx, "-p", env.path("nginx"), "-e", env.path("nginx", "error.log"), "-c", cfg]
    r = h.run(base + ["-t"], check_rc=False)
    h.check(r.returncode == 0, "nginx -t: %s" % r.stderr.decode()[-400:])
    p = env.proc("nginx-%d" % int(time.monotonic() * 1000), base)
    h.wait_for(lambda: h.connect(port, 1).close() or True, 10, what="nginx listening")
    return p


def through(port):
    """A line sent through an outbound listener comes back from the echo behind nginx."""
    try:
        return h.echo_exact(port, b"crl-probe\n", timeout=5) == b"crl-probe\n"
    except OSError:
        return False


def test(env):
    h.require_control()
    ok = h.Checks()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK) or not os.path.exists(MODULE):
        raise h.TestFailure("nginx or its stream module is missing "
                            "(apt-get install -y nginx libnginx-mod-stream)")
    control = env.control()
    bundle = control.bundle()
    control.ctl("admin-cert", "create", "--spiffe-id", ADMIN_ID, "--out", env.path("ng"))
    echo = env.echo("echo")
    ng_port, web_out, batch_out = h.free_port(), h.free_port(), h.free_port()
    crl_path = env.write("crl.pem", control.ctl("crl", "get").stdout)
    os.makedirs(env.path("nginx"), exist_ok=True)
    cfg = env.write("nginx/nginx.conf", """
load_module {module};
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx/nginx.pid;
error_log {d}/nginx/error.log info;
events {{ worker_connections 64; }}
stream {{
    log_format mtls 'verify=$ssl_client_verify serial=$ssl_client_serial';
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/ng.crt;
        ssl_certificate_key {d}/ng.key;
        ssl_client_certificate {bundle};
        ssl_crl {crl};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        access_log {d}/nginx/mtls.log mtls;
        proxy_pass 127.0.0.1:{echo};
    }}
}}
""".format(module=MODULE, d=env.dir, port=ng_port, bundle=bundle, crl=crl_path,
           echo=echo.port))
    ng = start_nginx(env, nginx, cfg, ng_port)

    web_id, batch_id = h.spiffe("shop", "web"), h.spiffe("batch", "nightly")
    web = env.cp_sidecar("web", control, web_id, control.token(web_id), workers=1,
                         outbound=[(web_out, "127.0.0.1:%d" % ng_port, ADMIN_ID)])
    batch = env.cp_sidecar("batch", control, batch_id, control.token(batch_id), workers=1,
                           outbound=[(batch_out, "127.0.0.1:%d" % ng_port, ADMIN_ID)])

    # 1. Nothing revoked: both pass.
    ok(through(web_out), "before revocation: web gets through nginx")
    ok(through(batch_out), "before revocation: batch gets through nginx")

    # 2. Revoke web, publish the CRL to nginx (a restart: it reads ssl_crl at start).
    web_serial = web.stats()["identity"]["serial"]
    control.ctl("revoke", web_serial)
    crl_text = control.ctl("crl", "get").stdout
    env.write("crl.pem", crl_text)
    ng.stop()
    ng = start_nginx(env, nginx, cfg, ng_port)
    ok(not through(web_out), "the revoked identity (web, serial %s) is refused by nginx" %
       web_serial)
    ok(through(batch_out), "batch, not revoked, still gets through nginx")
    with open(env.path("nginx", "error.log")) as f:
        errlog = f.read()
    ok("certificate revoked" in errlog,
       "nginx's log says the client certificate is revoked (%s)" % [
           ln for ln in errlog.splitlines() if "verify" in ln][-1:])

    # 3. web's access line for the refused connection.
    last = h.wait_for(lambda: web.access_logs()[-1:], 5, what="web's access line")[0]
    ok(last.get("closed_by") == "upstream" and last.get("bytes_out") == 0,
       "web's access line for the refused connection: closed_by %r, bytes_out %r" % (
           last.get("closed_by"), last.get("bytes_out")))

    # 4. The CRL as the openssl CLI reads it.
    r = h.run(["openssl", "crl", "-noout", "-text", "-CAfile", bundle], input=crl_text.encode(),
              check_rc=False)
    text = r.stdout.decode() + r.stderr.decode()
    ok(r.returncode == 0 and "verify OK" in text, "openssl verifies the CRL with the bundle")
    listed = [h.norm_serial(ln.split(":", 1)[1]) for ln in text.splitlines()
              if ln.strip().startswith("Serial Number:")]
    ok(listed == [h.norm_serial(web_serial)], "the CRL lists exactly web's serial (%s)" % listed)
    dates = {}
    for key in ("lastupdate", "nextupdate"):
        out = h.run(["openssl", "crl", "-noout", "-" + key], input=crl_text.encode()).stdout
        value = out.decode().strip().split("=", 1)[1]
        dates[key] = time.mktime(time.strptime(value, "%b %d %H:%M:%S %Y GMT"))
    span = dates["nextupdate"] - dates["lastupdate"]
    ok(abs(span - 86400) < 5 and abs(dates["lastupdate"] - time.mktime(time.gmtime())) < 120,
       "thisUpdate is now and nextUpdate 24 h later (%d s)" % span)
    with urllib.request.urlopen(control.api + "/v1/crl?format=der", timeout=5) as resp:
        der, ctype = resp.read(), resp.headers.get("Content-Type")
    r = h.run(["openssl", "crl", "-inform", "DER", "-noout", "-text"], input=der,
              check_rc=False)
    ok(ctype == "application/pkix-crl" and r.returncode == 0 and
       h.norm_serial(web_serial) in r.stdout.decode().replace(":", "").upper(),
       "GET /v1/crl?format=der without a credential: a DER CRL (%s) with the serial" % ctype)
    ok(ng.alive() and web.alive() and batch.alive(), "everything still runs")
    ok.done()


if __name__ == "__main__":
    h.main(test, "control-crl")
