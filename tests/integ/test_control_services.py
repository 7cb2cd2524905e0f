#!/usr/bin/env python3
"""The control plane's service table (issue 8), attacked through the sidecar port with a
standard gRPC client (Debian's python3-grpcio, stubs generated from tether.proto at test
time, as test_control_grpc_interop.py does), each client a "sidecar" with its own
certificate from Identity.Sign and a Discovery.Watch whose Hello registers addresses of
the test's choice:

- a registration for an IP that is not the one the connection comes from is refused,
  counted (registration_refused) and shown by `tetherctl sidecars` with the reason; a
  wildcard IP is registered at the observed one;
- a second identity's registration of an address held by an open stream is refused; once
  that stream has ended, the second identity's open stream takes it over at once (no new
  Hello, no grace wait), while the old stream's other address stays for the grace period
  (--registration-grace) and then goes;
- an operator service address with two endpoints is pushed to a watching sidecar as two
  entries under that service address, and `tetherctl service list` shows them with their
  source; `tetherctl service add ADDR SPIFFE_ID` still works and wins over a registration
  for that address;
- a Tether sidecar's own registration (its inbound listener) is accepted, and it
  acknowledges the snapshot that carries the VIP.

Against the old code the first two attacks succeed (any address was accepted, and the
first claim kept it forever) and the VIP cannot be expressed."""

import json
import os
import queue
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

DEBIAN_PYTHON = h.DEBIAN_PYTHON
GRACE_S = 3


def client(args):
    """One watching "sidecar", run under Debian's Python: signs with a token, opens a Watch
    whose Hello registers `addresses` (comma-separated), prints every snapshot's service
    entries as a JSON line and acknowledges it; ends the stream when stdin closes."""
    import grpc  # noqa: E402 - only in the client process

    stubs, target, bundle, token, spiffe_id, key_file, csr_file, addresses = args
    sys.path.insert(0, stubs)
    from tether.v1 import tether_pb2, tether_pb2_grpc  # noqa: E402

    root = open(bundle, "rb").read()
    ch = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
    resp = tether_pb2_grpc.IdentityStub(ch).Sign(
        tether_pb2.SignRequest(csr_der=open(csr_file, "rb").read(), spiffe_id=spiffe_id,
                               bootstrap_token=token), timeout=10)
    ch.close()
    creds = grpc.ssl_channel_credentials(root_certificates=root,
                                         private_key=open(key_file, "rb").read(),
                                         certificate_chain=resp.cert_chain_pem.encode())
    ch = grpc.secure_channel(target, creds)
    acks = queue.Queue()
    done = threading.Event()

    def requests():
        yield tether_pb2.WatchRequest(hello=tether_pb2.Hello(
            node="svc-test", inbound_addresses=[a for a in addresses.split(",") if a]))
        while not done.is_set():
            try:
                yield acks.get(timeout=0.1)
            except queue.Empty:
                pass

    it = tether_pb2_grpc.DiscoveryStub(ch).Watch(requests(), timeout=60)

    def stop():
        sys.stdin.read()
        done.set()
        it.cancel()

    threading.Thread(target=stop, daemon=True).start()
    try:
        for snap in it:
            print(json.dumps({"version": snap.version, "services": [
                {"address": s.address, "spiffe_id": s.spiffe_id,
                 "service_address": s.service_address} for s in snap.services]}), flush=True)
            acks.put(tether_pb2.WatchRequest(ack=tether_pb2.Ack(version=snap.version,
                                                                accepted=True)))
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            print(json.dumps({"error": "%s: %s" % (e.code().name, e.details())}), flush=True)
    ch.close()


class Watcher:
    """A client process and the snapshots it printed."""

    def __init__(self, env, cp, stubs, bundle, name, spiffe_id, addresses):
        self.name, self.spiffe_id = name, spiffe_id
        key, csr = env.path(name + ".key"), env.path(name + ".csr")
        h.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-out", key])
        h.run(["openssl", "req", "-new", "-key", key, "-subj", "/O=svc", "-addext",
               "subjectAltName=URI:" + spiffe_id, "-outform", "DER", "-out", csr])
        with open(cp.token(spiffe_id, name=name)) as f:
            token = f.read().strip()
        self.p = subprocess.Popen(
            [DEBIAN_PYTHON, os.path.abspath(__file__), "client", stubs,
             "127.0.0.1:%d" % cp.sidecar_port, bundle, token, spiffe_id, key, csr,
             ",".join(addresses)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        h.log("started client %s pid %d: %s %s" % (name, self.p.pid, spiffe_id, addresses))
        self.lines = queue.Queue()
        self.last = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass

    def snapshot(self, pred, timeout=10):
        """The first snapshot (from the last one seen on) for which pred(services) holds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.last is not None and pred(self.last.get("services", [])):
                return self.last
            left = deadline - time.monotonic()
            if left <= 0:
                raise h.TestFailure("%s: no snapshot as expected; last %s" % (self.name,
                                                                               self.last))
            try:
                self.last = self.lines.get(timeout=left)
            except queue.Empty:
                pass
            if "error" in (self.last or {}):
                raise h.TestFailure("%s: %s" % (self.name, self.last["error"]))

    def stop(self):
        """Ends the stream (the client cancels it) and the process, by pid."""
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
                self.p.wait(10)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.p.kill()
                self.p.wait()
        err = self.p.stderr.read()
        if err.strip():
            h.log("client %s stderr: %s" % (self.name, err[-1500:]))


def entry(services, address, spiffe_id=None, service_address=""):
    return any(s["address"] == address and s["service_address"] == service_address and
               (spiffe_id is None or s["spiffe_id"] == spiffe_id) for s in services)


def sidecar_rec(cp, spiffe_id):
    return next((s for s in cp.sidecars() if s.get("spiffe_id") == spiffe_id), None)


def listed(cp, address, source):
    """The `tetherctl service list` entries for address from source."""
    doc = cp.ctl("service", "list", as_json=True)
    return [e for e in doc["services"] if e["address"] == address and e["source"] == source]


def test(env):
    check = h.Checks()
    stubs = h.grpc_stubs(env)

    r = subprocess.run([env.control_bin, "--state-dir", env.path("bad-state"),
                        "--registration-grace", "soon"], capture_output=True, text=True,
                       timeout=10)
    check(r.returncode == 2 and "--registration-grace" in r.stderr,
          "a bad --registration-grace exits 2 naming the flag: %d %r" % (r.returncode,
                                                                        r.stderr[:200]))

    cp = env.control(extra=["--registration-grace", "%ds" % GRACE_S])
    bundle = cp.bundle()
    id_a, id_b = h.spiffe("svc", "a"), h.spiffe("svc", "b")
    held, spare = "127.0.0.1:28080", "127.0.0.1:28081"
    watchers = []
    try:
        # Attack 1: register an address that is not the connection's IP.
        a = Watcher(env, cp, stubs, bundle, "a", id_a, [held, "10.9.9.9:8080", "0.0.0.0:28081"])
        watchers.append(a)
        snap = a.snapshot(lambda s: entry(s, held, id_a))
        check(not any(s["address"].startswith("10.9.9.9") for s in snap["services"]),
              "an address at another IP is not pushed: %s" % snap["services"])
        check(entry(snap["services"], spare, id_a),
              "a wildcard IP is registered at the observed IP: %s" % snap["services"])
        rec = sidecar_rec(cp, id_a)
        refused = {e["address"]: e for e in (rec or {}).get("refused", [])}
        check(rec is not None and sorted(rec.get("registered", [])) == [held, spare],
              "tetherctl sidecars lists what a registered: %s" % rec)
        check(refused.get("10.9.9.9:8080", {}).get("reason") == "not_observed_ip"
              and "127.0.0.1" in refused["10.9.9.9:8080"].get("detail", ""),
              "tetherctl sidecars shows the refusal with its reason: %s" % refused)
        text = cp.ctl("sidecars").stdout
        check("refused    10.9.9.9:8080: not_observed_ip" in text,
              "the table form shows it too: %r" % text[-600:])
        n1 = cp.stats()["refusals"].get("registration_refused", 0)
        check(n1 == 1, "the refusal is counted: %s" % cp.stats()["refusals"])

        # Attack 2: another identity claims the address a's open stream holds.
        b = Watcher(env, cp, stubs, bundle, "b", id_b, [held])
        watchers.append(b)
        snap = b.snapshot(lambda s: entry(s, held))
        check(entry(snap["services"], held, id_a) and not entry(snap["services"], held, id_b),
              "the second identity does not get the address: %s" % snap["services"])
        h.wait_for(lambda: (sidecar_rec(cp, id_b) or {}).get("refused"), 5, 0.1,
                   "b's refusal listed")
        rec = sidecar_rec(cp, id_b)
        check(rec["refused"][0]["reason"] == "held_by_other" and id_a in
              rec["refused"][0]["detail"], "refused as held by a: %s" % rec["refused"])
        check(cp.stats()["refusals"].get("registration_refused", 0) == n1 + 1,
              "counted: %s" % cp.stats()["refusals"])
        check([e["spiffe_id"] for e in listed(cp, held, "registration")] == [id_a],
              "service list still maps %s to a" % held)

        # a's stream ends: b, whose stream is still open, takes the address over at once
        # (no new Hello, no grace wait); a's other address stays for the grace period, then
        # goes.
        t_gone = time.monotonic()
        a.stop()
        snap = b.snapshot(lambda s: entry(s, held, id_b))
        check(time.monotonic() - t_gone < GRACE_S,
              "the takeover did not wait for the grace period")
        check(entry(snap["services"], spare, id_a),
              "a's other address is kept during the grace: %s" % snap["services"])
        rec = sidecar_rec(cp, id_b)
        check(rec.get("registered") == [held] and rec.get("refused") == [],
              "tetherctl sidecars shows b holding it now: %s" % rec)
        check(cp.stats()["refusals"].get("registration_refused", 0) == n1 + 1,
              "the retried claim is not counted again: %s" % cp.stats()["refusals"])
        st = listed(cp, spare, "registration")
        check(st and st[0].get("state") == "grace", "listed in its grace period: %s" % st)
        snap = b.snapshot(lambda s: not entry(s, spare), timeout=GRACE_S + 5)
        check(not listed(cp, spare, "registration"), "gone from the service list after the grace")

        # An operator service address with two endpoints reaches the watching sidecar.
        vip, e1, e2 = "10.96.0.10:80", "127.0.0.1:28090", "127.0.0.1:28091"
        id_x, id_y = h.spiffe("svc", "x"), h.spiffe("svc", "y")
        r = cp.ctl("service", "add", vip, "--endpoint", "%s=%s" % (e1, id_x), "--endpoint",
                   "%s=%s" % (e2, id_y))
        check("2 endpoint" in r.stdout, "service add VIP --endpoint ...: %r" % r.stdout)
        snap = b.snapshot(lambda s: entry(s, e1, id_x, vip) and entry(s, e2, id_y, vip))
        h.log("snapshot with the VIP: %s" % snap)
        text = cp.ctl("service", "list").stdout
        check(all(x in text for x in (vip, e1, e2, "operator", "registration (live)")),
              "service list shows the VIP's endpoints and each source: %r" % text)
        r = cp.ctl("service", "endpoint", "remove", vip, e1)
        snap = b.snapshot(lambda s: not entry(s, e1, None, vip) and entry(s, e2, id_y, vip))
        cp.ctl("service", "endpoint", "add", vip, e1, id_x)
        snap = b.snapshot(lambda s: entry(s, e1, id_x, vip))
        r = cp.ctl("service", "add", vip, "--endpoint", "nope", check_rc=False)
        check(r.returncode == 2 and "--endpoint IP:PORT=SPIFFE_ID" in r.stderr,
              "a malformed --endpoint is a usage error: %d %r" % (r.returncode, r.stderr))

        # Today's form still works, and the operator's entry wins over the registration.
        id_op = h.spiffe("svc", "operator")
        r = cp.ctl("service", "add", held, id_op)
        check(r.stdout.strip() == "service %s -> %s" % (held, id_op), "service add: %r" % r.stdout)
        snap = b.snapshot(lambda s: entry(s, held, id_op))
        check(not entry(snap["services"], held, id_b),
              "the registration is not pushed beside the operator's entry: %s" % snap)
        reg = listed(cp, held, "registration")
        check(reg and reg[0].get("shadowed") is True, "listed as shadowed: %s" % reg)
        cp.ctl("service", "remove", held)
        b.snapshot(lambda s: entry(s, held, id_b))
    finally:
        for w in watchers:
            w.stop()

    # A Tether sidecar's own registration (its inbound listener) is accepted.
    sid = h.spiffe("svc", "sidecar")
    env.cp_sidecar("sidecar", cp, sid, cp.token(sid), workers=1,
                   inbound=[(h.free_port(), "127.0.0.1:9")])
    h.wait_for(lambda: (sidecar_rec(cp, sid) or {}).get("registered"), 10, 0.1,
               "the sidecar's registration")
    rec = sidecar_rec(cp, sid)
    check(rec.get("refused") == [], "nothing of a real sidecar's registration refused: %s" % rec)
    # It builds the table with the VIP (cpclient maps service_address): ACK, no NACK.
    version = cp.stats()["version"]
    try:
        h.wait_for(lambda: (sidecar_rec(cp, sid) or {}).get("acked_version") == version, 10,
                   0.1, "the sidecar's ACK of version %d" % version)
    except h.TestFailure as e:
        check(False, "%s: %s" % (e, sidecar_rec(cp, sid)))
    check(sidecar_rec(cp, sid).get("nacked_version") is None,
          "the snapshot with the VIP is not refused: %s" % sidecar_rec(cp, sid))
    # Under ASan: no report from the control plane on its way out (leaks included).
    cp.stop(timeout=15)
    err = cp.stderr()
    check("Sanitizer" not in err and "runtime error:" not in err,
          "tether-control exits clean: %s" % err[err.find("Sanitizer") - 200:][:1500])
    check.done()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client(sys.argv[2:])
        sys.exit(0)
    h.require_control()
    h.main(test, "control-services")
