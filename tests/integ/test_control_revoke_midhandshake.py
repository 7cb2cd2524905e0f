#!/usr/bin/env python3
"""A revocation that arrives while a caller's handshake is in flight still keeps it out
(issue 7, item 6: "a connection whose handshake started before the revocation arrived is
admitted and never closed").

The attack: a client with a valid mesh certificate (signed by the control plane's CA)
connects to the api sidecar's inbound listener and stops half-way through TLS 1.3: it has
sent its ClientHello and read the server's flight, but not yet its Certificate. The
operator revokes that certificate and the api sidecar acknowledges the new snapshot. The
client then finishes the handshake and sends a request. It must get nothing from the
backend: the connection is refused (the sidecar checks the newest revocations when the
handshake completes, not only the set it had when the connection was accepted).
"""

import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402


def pump_out(sock, bio):
    data = bio.read()
    if data:
        sock.sendall(data)


def read_into(sock, bio, timeout=5.0):
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except socket.timeout:
        return True
    except OSError:
        return False
    if not data:
        return False
    bio.write(data)
    return True


def attempt(port, cert, ca_crt, pause=None):
    """A TLS 1.3 client driven by hand; `pause` runs after the server's flight is read and
    before the client's Certificate is sent. Returns what the backend sent back (b"" when
    the connection was refused) and the handshake error, if any."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert.crt, cert.key)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_side=False)
    sock = h.connect(port, timeout=10)
    try:
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        pump_out(sock, out)  # ClientHello
        # Read the server's whole flight (ServerHello .. Finished) without answering it.
        deadline = time.time() + 5
        while time.time() < deadline:
            if not read_into(sock, inc, timeout=0.3):
                break
        if pause is not None:
            pause()
        error = None
        try:
            tls.do_handshake()  # Certificate, CertificateVerify, Finished
        except ssl.SSLError as e:
            error = e
        pump_out(sock, out)
        if error is not None:
            return b"", error
        got = b""
        try:
            tls.write(b"ping through the mesh\n")
            pump_out(sock, out)
        except OSError as e:  # reset by the sidecar: refused
            return got, e
        deadline = time.time() + 5
        while time.time() < deadline and b"\n" not in got:
            if not read_into(sock, inc, timeout=1.0):
                break
            try:
                got += tls.read(65536)
            except ssl.SSLWantReadError:
                continue
            except ssl.SSLError as e:
                return got, e
        return got, None
    finally:
        sock.close()


def test(env):
    ok = h.Checks()
    api_id = h.spiffe("shop", "api")
    caller_id = h.spiffe("shop", "caller")
    echo = env.echo("echo")
    in_port = h.free_port()
    ctl = env.control(cert_ttl="1h")
    ctl.set_policy({"default": "allow", "rules": []})
    api = env.cp_sidecar("api", ctl, api_id, ctl.token(api_id, "api"), inbound=[
        (in_port, echo.addr)], workers=1)
    ca = h.Cert("control-ca", os.path.join(ctl.state_dir, "ca.crt"),
                os.path.join(ctl.state_dir, "ca.key"))
    caller = env.certs.leaf("caller", ca, [caller_id])
    ca_crt = ca.crt

    got, err = h.wait_for(lambda: (lambda r: r if r[0] else None)(
        attempt(in_port, caller, ca_crt)), 10, what="a first request from the caller")
    ok(got.startswith(b"ping through the mesh"), "before the revocation the caller gets "
       "through (%r, %r)" % (got[:40], err))

    def revoke():
        ctl.ctl("revoke", caller.serial())
        version = ctl.stats()["version"]
        h.wait_for(lambda: any(e.get("spiffe_id") == api_id and
                               e.get("acked_version") == version for e in ctl.sidecars()),
                   10, what="the api sidecar to acknowledge the revocation")

    got, err = attempt(in_port, caller, ca_crt, pause=revoke)
    ok(got == b"", "revoked while its handshake was in flight, the caller gets no byte "
       "from the backend (got %r, error %r)" % (got[:60], err))
    h.wait_for(lambda: api.listener("inbound")["handshake_failures"]["revoked"] >= 1, 5,
               what="the refusal to be counted")
    ok(True, "counted as a handshake failure 'revoked'")
    got, err = attempt(in_port, caller, ca_crt)
    ok(got == b"", "a new attempt after the revocation is refused too (%r)" % (got[:40],))
    ok(api.alive() and ctl.alive(), "all processes still running")
    ok.done()


if __name__ == "__main__":
    h.require_control()
    h.main(test, "control-revoke-midhandshake")
