#!/usr/bin/env python3
"""A standard gRPC client that nobody here wrote reaches the control plane (issue 7 item
10): Debian's python3-grpcio, with stubs generated at test time from
proto/tether/v1/tether.proto by python3-grpc-tools, over TLS to localhost:PORT (so gRPC's
own host-name check runs against the serving certificate's DNS names, and its ALPN check
wants h2), no tunnel:

- Identity.Sign with a bootstrap token over server-authenticated TLS (the bundle from
  `tetherctl bundle get` as root; the control plane lets a client without a certificate
  ask with a token);
- Discovery.Watch over mutual TLS with the key and the certificate Sign returned: a Hello,
  then a Snapshot carrying the trust bundle, acknowledged (tetherctl sidecars shows the
  ACK);
- the same at 127.0.0.1 (an IP SAN);
- as an attacker would check: a name the certificate does not carry fails gRPC's check,
  and Watch without a client certificate is refused (UNAUTHENTICATED).
With python ssl: ALPN h2 is selected when offered; no ALPN, or only http/1.1, still
completes the handshake, without ALPN (today's sidecars offer none).

Against the old serving certificate (a URI SAN only, no ALPN) the Sign call fails."""

import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

DEBIAN_PYTHON = h.DEBIAN_PYTHON


def client(args):
    """The gRPC client, run under Debian's Python: prints one JSON object of results."""
    import grpc  # noqa: E402 - only in the client process
    import time

    stubs, target, bundle, token, spiffe_id, key_file, csr_file = args
    sys.path.insert(0, stubs)
    from tether.v1 import tether_pb2, tether_pb2_grpc  # noqa: E402

    out = {}
    root = open(bundle, "rb").read()
    key = open(key_file, "rb").read()
    csr = open(csr_file, "rb").read()

    def sign(creds, options=()):
        ch = grpc.secure_channel(target, creds, options=list(options))
        try:
            return tether_pb2_grpc.IdentityStub(ch).Sign(
                tether_pb2.SignRequest(csr_der=csr, spiffe_id=spiffe_id,
                                       bootstrap_token=token), timeout=10)
        finally:
            ch.close()

    # A name the certificate does not carry: gRPC's own check must refuse it.
    try:
        sign(grpc.ssl_channel_credentials(root_certificates=root),
             [("grpc.ssl_target_name_override", "not-in-the-certificate.example")])
        out["wrong_name"] = "OK"
    except grpc.RpcError as e:
        out["wrong_name"] = e.code().name
    try:
        resp = sign(grpc.ssl_channel_credentials(root_certificates=root))
        out["sign"] = "OK"
        out["serial"] = resp.serial
        chain = resp.cert_chain_pem.encode()
    except grpc.RpcError as e:
        out["sign"] = "%s: %s" % (e.code().name, e.details())
        print(json.dumps(out))
        return

    # Watch without a client certificate: refused by the control plane.
    ch = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
    try:
        it = tether_pb2_grpc.DiscoveryStub(ch).Watch(
            iter([tether_pb2.WatchRequest(hello=tether_pb2.Hello(node="interop"))]), timeout=10)
        next(it)
        out["watch_anonymous"] = "OK"
    except grpc.RpcError as e:
        out["watch_anonymous"] = e.code().name
    ch.close()

    # Watch over mTLS with the certificate just signed: Hello, Snapshot, Ack.
    creds = grpc.ssl_channel_credentials(root_certificates=root, private_key=key,
                                         certificate_chain=chain)
    ch = grpc.secure_channel(target, creds)
    acks = []

    def requests():
        yield tether_pb2.WatchRequest(hello=tether_pb2.Hello(node="interop"))
        while not acks:
            time.sleep(0.05)
        yield acks[0]
        sys.stdin.readline()  # the test has seen the ACK recorded: the stream may end

    try:
        it = tether_pb2_grpc.DiscoveryStub(ch).Watch(requests(), timeout=30)
        snap = next(it)
        out["watch"] = "OK"
        out["version"] = snap.version
        out["bundle_in_snapshot"] = "BEGIN CERTIFICATE" in snap.trust_bundle_pem
        acks.append(tether_pb2.WatchRequest(ack=tether_pb2.Ack(version=snap.version,
                                                               accepted=True)))
        print("acked %d" % snap.version, flush=True)
        sys.stdin.readline()
        it.cancel()
    except grpc.RpcError as e:
        out["watch"] = "%s: %s" % (e.code().name, e.details())
    ch.close()
    print(json.dumps(out))


def alpn(port, bundle, offer):
    """The protocol the server selects when python ssl offers `offer` (None: no ALPN
    extension); raises on a failed handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(bundle)
    if offer is not None:
        ctx.set_alpn_protocols(offer)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            return t.selected_alpn_protocol()


def wait_acked(cp, sid, version):
    """True once `tetherctl sidecars` lists sid with `version` acknowledged (5 s)."""
    def acked():
        sc = {e.get("spiffe_id"): e for e in cp.sidecars()}
        return sc.get(sid, {}).get("acked_version") == version
    try:
        h.wait_for(acked, 5, 0.1, "the ACK recorded")
        return True
    except h.TestFailure:
        h.log("sidecars: %s" % cp.sidecars())
        return False


def test(env):
    check = h.Checks()
    stubs = h.grpc_stubs(env)

    # Bad names and bounds are refused at start, naming the flag (exit 2).
    for args, flag in ((["--serving-name", "*.example.org"], "--serving-name"),
                       (["--serving-name", "a..b"], "--serving-name"),
                       (["--sidecar-max-connections", "0"], "--sidecar-max-connections"),
                       (["--sidecar-max-per-source", "many"], "--sidecar-max-per-source"),
                       (["--sidecar-handshake-timeout", "0"], "--sidecar-handshake-timeout"),
                       (["--sidecar-first-call-timeout", "soon"],
                        "--sidecar-first-call-timeout")):
        r = subprocess.run([env.control_bin, "--state-dir", env.path("bad-state")] + args,
                           capture_output=True, text=True, timeout=10)
        check(r.returncode == 2 and flag in r.stderr,
              "%s: exit %d, %r" % (" ".join(args), r.returncode, r.stderr.strip()[:160]))

    cp = env.control()
    bundle = cp.bundle()
    for target, name in (("localhost:%d" % cp.sidecar_port, "interop"),
                         ("127.0.0.1:%d" % cp.sidecar_port, "interop-ip")):
        sid = h.spiffe("interop", name)
        key, csr = env.path(name + ".key"), env.path(name + ".csr")
        h.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
               "ec_paramgen_curve:P-256", "-out", key])
        h.run(["openssl", "req", "-new", "-key", key, "-subj", "/O=interop",
               "-addext", "subjectAltName=URI:" + sid, "-outform", "DER", "-out", csr])
        with open(cp.token(sid)) as f:
            token = f.read().strip()
        p = subprocess.Popen([DEBIAN_PYTHON, os.path.abspath(__file__), "client", stubs,
                              target, bundle, token, sid, key, csr], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        acked_version = None
        try:
            first = p.stdout.readline()
            if first.startswith("acked "):
                acked_version = int(first.split()[1])
                check(wait_acked(cp, sid, acked_version),
                      "%s: tetherctl sidecars shows the ACK of version %d while the stream "
                      "is open" % (target, acked_version))
                p.stdin.write("\n\n")
                p.stdin.flush()
                last = p.stdout.read()
            else:
                last = first + p.stdout.read()
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        err = p.stderr.read()
        h.log("client %s: rc %s %s %s" % (target, p.returncode, last.strip(), err[-1500:]))
        try:
            out = json.loads(last.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise h.TestFailure("the gRPC client printed no result: %s" % err[-2000:])
        check(out.get("sign") == "OK", "%s: Identity.Sign with a token: %s"
              % (target, out.get("sign")))
        check(out.get("watch") == "OK" and out.get("version", 0) > 0
              and out.get("bundle_in_snapshot"),
              "%s: Discovery.Watch over mTLS receives a snapshot: %s" % (target, out))
        check(out.get("wrong_name") == "UNAVAILABLE",
              "%s: a name not in the certificate fails gRPC's check: %s"
              % (target, out.get("wrong_name")))
        check(out.get("watch_anonymous") == "UNAUTHENTICATED",
              "%s: Watch without a certificate is refused: %s"
              % (target, out.get("watch_anonymous")))
        if out.get("serial"):
            issued = cp.ctl("identities", as_json=True)
            check(h.norm_serial(out["serial"]) in json.dumps(issued).upper(),
                  "%s: the certificate is on record" % target)
        check(acked_version is not None and acked_version == out.get("version"),
              "%s: the client acknowledged the snapshot" % target)

    check(alpn(cp.sidecar_port, bundle, ["h2"]) == "h2", "ALPN h2 selected when offered")
    check(alpn(cp.sidecar_port, bundle, ["http/1.1", "h2"]) == "h2", "h2 among others")
    check(alpn(cp.sidecar_port, bundle, None) is None, "no ALPN offered: handshake completes")
    check(alpn(cp.sidecar_port, bundle, ["http/1.1"]) is None,
          "only http/1.1 offered: handshake completes without ALPN")
    # A sidecar of ours (no ALPN) still works on the same port.
    sid = h.spiffe("interop", "sidecar")
    sc = env.cp_sidecar("sidecar", cp, sid, cp.token(sid), workers=1,
                        inbound=[(h.free_port(), "127.0.0.1:9")])
    check(sc.get("/ready")[0] == 200, "a Tether sidecar (no ALPN) is served too")
    check.done()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2:])
        sys.exit(0)
    h.require_control()
    h.main(test, "control-grpc-interop")
