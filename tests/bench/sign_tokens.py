#!/usr/bin/env python3
"""Benchmark (not a test): what a stored token costs tether-control (issue 7 item 8).

For each count of stored tokens (default 10 and 10,000), a fresh state directory is made
with that many tokens in tokens.json (the format every version reads: the benchmark runs
against older builds too), tether-control is started on it, and then
- `Sign` requests/s: tests/tools/tt-sign calls Identity.Sign --count times on one
  connection with one multi-use token (each call checks the token, signs, records the
  certificate and the token's use);
- token creations/s: POST /v1/tokens on one keep-alive connection.
Both are sequential (one client), so they measure the time per operation, fsync included.
Prints a table, one row per count.

Usage: tests/bench/sign_tokens.py [BUILD_DIR [SIGN_TOOL_BUILD_DIR]]
  BUILD_DIR holds control/tether-control (default build-bench); tt-sign is taken from
  SIGN_TOOL_BUILD_DIR (default BUILD_DIR), so an older control can be measured with
  today's client. Environment: COUNTS ("10 10000"), SIGNS (500), CREATES (200),
  STATE_BASE (a directory on the disk to measure; default /var/tmp).
"""

import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SID = "spiffe://cluster.local/ns/bench/sa/client"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def write_state(state, n, secret):
    """tokens.json with n tokens: n-1 random ones and the one whose secret we hold."""
    os.makedirs(state, mode=0o700)
    now = int(time.time())
    toks = [{"sha256": hashlib.sha256(secrets.token_bytes(32)).hexdigest(), "spiffe_id": SID,
             "uses_left": 1, "expires_unix": None, "created_unix": now} for _ in range(n - 1)]
    toks.append({"sha256": hashlib.sha256(secret.encode()).hexdigest(), "spiffe_id": SID,
                 "uses_left": 1000000, "expires_unix": None, "created_unix": now})
    with open(os.path.join(state, "tokens.json"), "w") as f:
        json.dump({"tokens": toks}, f)


def wait_port(port, proc, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit("tether-control exited: %s" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("tether-control did not listen on %d" % port)


def measure(control, tt_sign, n, signs, creates, base):
    work = tempfile.mkdtemp(prefix="tether-bench-tokens-", dir=base)
    state = os.path.join(work, "state")
    secret = secrets.token_urlsafe(32)
    write_state(state, n, secret)
    tok = os.path.join(work, "token")
    with open(tok, "w") as f:
        f.write(secret + "\n")
    sp, ap = free_port(), free_port()
    proc = subprocess.Popen([control, "--state-dir", state, "--listen-sidecars",
                             "127.0.0.1:%d" % sp, "--listen-api", "127.0.0.1:%d" % ap],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"),
                                                                   "w"))
    try:
        wait_port(ap, proc)
        wait_port(sp, proc)
        headers = {"Content-Type": "application/json"}
        optok = os.path.join(state, "operator.token")
        if os.path.exists(optok):
            headers["Authorization"] = "Bearer " + open(optok).read().strip()
        conn = http.client.HTTPConnection("127.0.0.1", ap, timeout=10)
        conn.request("GET", "/v1/bundle", headers=headers)
        bundle = os.path.join(work, "bundle.pem")
        with open(bundle, "wb") as f:
            f.write(conn.getresponse().read())
        r = subprocess.run([tt_sign, "--control", "127.0.0.1:%d" % sp, "--bundle", bundle,
                            "--spiffe-id", SID, "--token-file", tok, "--count", str(signs)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        res = json.loads(r.stdout.decode().splitlines()[-1])
        if res["ok"] != res["calls"]:
            raise SystemExit("Sign refused (code %s): %s" % (res["last_code"], r.stderr))
        body = json.dumps({"spiffe_id": SID, "ttl": "1h"})
        t0 = time.monotonic()
        for _ in range(creates):
            conn.request("POST", "/v1/tokens", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise SystemExit("token create answered %d" % resp.status)
        create_s = time.monotonic() - t0
        conn.close()
        return res["per_second"], creates / create_s
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build-bench")
    tool_build = sys.argv[2] if len(sys.argv) > 2 else build
    control = os.path.join(build, "control", "tether-control")
    tt_sign = os.path.join(tool_build, "tests", "tools", "tt-sign")
    for p in (control, tt_sign):
        if not os.access(p, os.X_OK):
            raise SystemExit("%s missing (build it: ninja -C %s)" % (p, build))
    counts = [int(x) for x in os.environ.get("COUNTS", "10 10000").split()]
    signs, creates = int(os.environ.get("SIGNS", "500")), int(os.environ.get("CREATES", "200"))
    base = os.environ.get("STATE_BASE", "/var/tmp")
    rows = []
    for n in counts:
        s, c = measure(control, tt_sign, n, signs, creates, base)
        rows.append((str(n), "%.0f" % s, "%.0f" % c))
    print()
    print("tether-control %s, state on %s; %d Signs and %d token creations per row, one "
          "client" % (control, base, signs, creates))
    hdr = ("tokens stored", "Sign req/s", "token creates/s")
    w = [max(len(r[i]) for r in rows + [hdr]) for i in range(3)]
    fmt = " | ".join("%%-%ds" % x for x in w)
    print(fmt % hdr)
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(fmt % r)


if __name__ == "__main__":
    main()
