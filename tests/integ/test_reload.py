#!/usr/bin/env python3
"""SIGHUP reloads identity and policy files.

web (outbound) -> api (inbound) -> HTTP backend. A thread makes requests in a loop (a new
connection each) and a long-lived echo connection stays open. Then:
1. new certificate+key for api (same ID, new serial), SIGHUP: no request fails, /stats
   shows the new serial, a new handshake presents the new certificate, the long-lived
   connection still works; the same for web (the client side).
2. a bad new key (garbage) and a key that does not match: refused, old serial stays,
   traffic still works, the refusal is logged.
3. policy reload: a rule change turns web's verdict from allow to deny; a bad policy
   file is refused and the last good one stays.
"""

import os
import shutil
import ssl
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


class Traffic(threading.Thread):
    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.ok = 0
        self.failed = []
        self.stop_flag = False

    def run(self):
        while not self.stop_flag:
            try:
                st, body = h.http_get(self.port, "/", timeout=5)
                if st == 200 and body == b"hello from backend\n":
                    self.ok += 1
                else:
                    self.failed.append((time.time(), st, body[:50]))
            except Exception as e:  # noqa: BLE001
                self.failed.append((time.time(), repr(e)))

    def stop(self):
        self.stop_flag = True
        self.join(15)


def install(env, src, dst_cert, dst_key):
    """Atomically replaces the files the sidecar reads with src's certificate and key."""
    shutil.copy(src.crt, dst_cert + ".new")
    shutil.copy(src.key, dst_key + ".new")
    os.replace(dst_cert + ".new", dst_cert)
    os.replace(dst_key + ".new", dst_key)


def presented_serial(port, ca, client):
    """Serial of the certificate the inbound listener presents now."""
    ctx = h.tls_client_ctx(client, ca)
    raw = h.connect(port, 5)
    s = ctx.wrap_socket(raw)
    der = s.getpeercert(binary_form=True)
    s.close()
    import subprocess
    pem = ssl.DER_cert_to_PEM_cert(der)
    r = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem.encode(),
                       stdout=subprocess.PIPE, timeout=10)
    return h.norm_serial(r.stdout.decode().strip().split("=", 1)[1])


def test(env):
    ok = h.Checks()
    ca = env.certs.ca("ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    web1 = env.certs.leaf("web1", ca, [web_id])
    web2 = env.certs.leaf("web2", ca, [web_id])
    api1 = env.certs.leaf("api1", ca, [api_id])
    api2 = env.certs.leaf("api2", ca, [api_id])
    other = env.certs.leaf("other", ca, [api_id])
    tester = env.certs.leaf("tester", ca, [h.spiffe("test", "probe")])
    # The files the sidecars read; replaced in place.
    api_crt, api_key = env.path("api.crt"), env.path("api.key")
    web_crt, web_key = env.path("web.crt"), env.path("web.key")
    install(env, api1, api_crt, api_key)
    install(env, web1, web_crt, web_key)
    api_files = h.Cert("api", api_crt, api_key, [api_id])
    web_files = h.Cert("web", web_crt, web_key, [web_id])

    backend = env.http()
    echo = env.echo("echo")
    in_port, in_echo, out_port, out_echo = (h.free_port() for _ in range(4))
    allow = {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id]},
        {"name": "probe", "action": "allow", "from": [h.spiffe("test", "probe")]}]}
    pol = env.policy("policy.json", allow)
    api_sc = env.sidecar("api", api_files, ca, policy=pol,
                         inbound=[(in_port, backend.addr), (in_echo, echo.addr)])
    web_sc = env.sidecar("web", web_files, ca, outbound=[
        (out_port, "127.0.0.1:%d" % in_port, api_id),
        (out_echo, "127.0.0.1:%d" % in_echo, api_id)])
    ok(h.norm_serial(api_sc.stats()["identity"]["serial"]) == api1.serial(),
       "api starts with serial %s" % api1.serial())

    long_conn = h.connect(out_echo, 10)
    long_conn.sendall(b"before\n")
    ok(long_conn.recv(100) == b"before\n", "long-lived connection works before the reload")

    traffic = Traffic(out_port)
    traffic.start()
    h.wait_for(lambda: traffic.ok >= 20, 10, what="traffic flowing")

    # 1. api gets a new certificate.
    install(env, api2, api_crt, api_key)
    api_sc.signal(signal.SIGHUP)
    try:
        h.wait_for(lambda: h.norm_serial(api_sc.stats()["identity"]["serial"]) ==
                   api2.serial(), 5, what="api's new serial in /stats")
        ok(True, "api /stats shows the new serial %s" % api2.serial())
    except h.TestFailure:
        ok(False, "api /stats shows the new serial %s (still %s)" % (
            api2.serial(), api_sc.stats()["identity"]["serial"]))
    n = traffic.ok
    h.wait_for(lambda: traffic.ok >= n + 20, 10, what="traffic after the reload")
    ok(presented_serial(in_port, ca, tester) == api2.serial(),
       "new handshakes present the new certificate")

    # web gets a new certificate too (the client side of the mTLS).
    install(env, web2, web_crt, web_key)
    web_sc.signal(signal.SIGHUP)
    try:
        h.wait_for(lambda: h.norm_serial(web_sc.stats()["identity"]["serial"]) ==
                   web2.serial(), 5, what="web's new serial")
        ok(True, "web /stats shows the new serial")
    except h.TestFailure:
        ok(False, "web /stats shows the new serial %s" % web2.serial())
    n = traffic.ok
    h.wait_for(lambda: traffic.ok >= n + 20, 10, what="traffic after web's reload")

    long_conn.sendall(b"after\n")
    ok(long_conn.recv(100) == b"after\n", "the long-lived connection survived both reloads")

    # 2. bad new keys are refused; the old snapshot stays.
    gen = api_sc.stats().get("server", {}).get("snapshot_generation")
    shutil.copy(api1.crt, api_crt)
    env.write("api.key", "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    api_sc.signal(signal.SIGHUP)
    time.sleep(1.0)
    ok(api_sc.alive(), "api alive after a bad key")
    ok(h.norm_serial(api_sc.stats()["identity"]["serial"]) == api2.serial(),
       "bad key refused: serial stays %s (got %s)" % (
           api2.serial(), api_sc.stats()["identity"]["serial"]))
    shutil.copy(other.key, api_key)  # a real key, but not api1's
    api_sc.signal(signal.SIGHUP)
    time.sleep(1.0)
    ok(h.norm_serial(api_sc.stats()["identity"]["serial"]) == api2.serial(),
       "mismatched key refused: serial stays %s" % api2.serial())
    ok(presented_serial(in_port, ca, tester) == api2.serial(),
       "handshakes still present the old good certificate")
    if gen is not None:
        ok(api_sc.stats()["server"].get("snapshot_generation") == gen,
           "snapshot_generation unchanged by refused reloads")
    refusals = [r for r in api_sc.logs() if r.get("level") in ("error", "warn") and
                "reload" in str(r).lower()]
    ok(len(refusals) >= 2, "the refused reloads are logged (%d lines: %r)" % (
        len(refusals), refusals[:2]))
    n = traffic.ok
    h.wait_for(lambda: traffic.ok >= n + 20, 10, what="traffic after refused reloads")
    traffic.stop()
    ok(not traffic.failed, "no request lost during reloads: %d ok, %d failed %r" % (
        traffic.ok, len(traffic.failed), traffic.failed[:3]))
    ok(traffic.ok >= 80, "enough requests ran (%d)" % traffic.ok)

    # 3. policy reload.
    install(env, api2, api_crt, api_key)  # good files again
    st0 = api_sc.stats()["policy"]
    deny = {"default": "deny", "rules": [
        {"name": "probe", "action": "allow", "from": [h.spiffe("test", "probe")]},
        {"name": "block-web", "action": "deny", "from": [web_id]}]}
    env.policy("policy.json", deny)
    api_sc.signal(signal.SIGHUP)

    time.sleep(0.5)
    h.wait_for(lambda: "block-web" in [r["name"] for r in api_sc.stats()["policy"]["rules"]],
               5, what="the new policy in /stats")
    try:
        st, body = h.http_get(out_port, "/", timeout=5)
    except Exception as e:  # noqa: BLE001 - a reset is the expected outcome
        st, body = 0, repr(e).encode()
    ok(st != 200 and b"hello" not in body, "after the policy reload web is denied (%r %r)" % (
        st, body[:60]))
    st1 = api_sc.stats()["policy"]
    rules = {r["name"]: r for r in st1["rules"]}
    ok(st1["denied"] >= st0["denied"] + 1 and rules["block-web"]["hits"] >= 1,
       "denial counted (denied %r -> %r, block-web %r)" % (st0["denied"], st1["denied"],
                                                           rules["block-web"]))
    ok(st1.get("version") != st0.get("version"), "policy version changed (%r -> %r)" % (
        st0.get("version"), st1.get("version")))
    long_conn.sendall(b"still\n")
    ok(long_conn.recv(100) == b"still\n",
       "the connection opened under the old policy keeps its snapshot")

    env.write("policy.json", '{"default": "deny", "rules": [{"name": "x", "bogus": 1}]}')
    api_sc.signal(signal.SIGHUP)
    time.sleep(1.0)
    ok(api_sc.alive(), "api alive after a bad policy")
    names = [r["name"] for r in api_sc.stats()["policy"]["rules"]]
    ok("block-web" in names and "x" not in names, "bad policy refused, last good stays (%r)"
       % names)
    try:
        st, body = h.http_get(out_port, "/", timeout=5)
    except Exception as e:  # noqa: BLE001
        st, body = 0, repr(e).encode()
    ok(st != 200, "web still denied under the kept policy (%r)" % st)
    env.policy("policy.json", allow)
    api_sc.signal(signal.SIGHUP)
    h.wait_for(lambda: "web-to-api" in [r["name"] for r in api_sc.stats()["policy"]["rules"]],
               5, what="the allow policy back")
    st, body = h.http_get(out_port, "/", timeout=5)
    ok(st == 200, "allowed again after reloading the allow policy (%r)" % st)
    long_conn.close()
    ok.done()


if __name__ == "__main__":
    h.main(test, "reload")
