#!/usr/bin/env python3
"""The inbound's pool endpoint, attacked with a real HTTP/2 client nobody here wrote
(hyper-h2, Debian's python3-h2) holding a valid mesh certificate and offering the
`tether-h2` ALPN token, as a rogue workload that stole a sidecar's key, or a confused
client, would:

- a plain request (GET) on a link is served as HTTP/1.1 to the port the link was dialled
  on, never to the backend its :authority names; that port's echo backend answers with
  bytes that are not an HTTP response, so the caller gets 502 `upstream_bad_response`;
- an extended CONNECT for another protocol (websocket) is answered 501 `not_a_tunnel`, and
  so is a plain CONNECT (RFC 9113 §8.5) to any address;
- a tunnel whose :authority names another port (a secret backend on this machine) still
  reaches only the port the link was dialled on: the secret backend accepts nothing;
- an identity the policy denies gets 403 `policy_denied` per tunnel and the backend
  accepts nothing;
- the server announces SETTINGS_MAX_CONCURRENT_STREAMS 100 and ENABLE_CONNECT_PROTOCOL 1;
- garbage after the preface ends that link with a GOAWAY naming the error and the
  sidecar goes on serving;
- tunnels and the request count as streams (the refused CONNECTs do not), none is left
  open;
- a caller that says GOAWAY and then holds its socket open forever gets the link's end
  (close_notify, FIN) at once and loses the socket about 2 s later (the lingering close
  waits that long for the caller's end, no longer).
The client runs under Debian's python (h.DEBIAN_PYTHON), where python3-h2 lives."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402

HOLD_SECONDS = 6  # goaway_hold: how long the caller keeps its socket after the server's end


def client(port, crt, key, ca, scenario, authority):
    """Runs one scenario against 127.0.0.1:port; prints a JSON result."""
    import socket
    import ssl

    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["tether-h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw)
    result = {"alpn": s.selected_alpn_protocol(), "streams": {}, "events": []}
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=scenario != "connect"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())

    def pump(until, limit=200):
        for _ in range(limit):
            if until():
                return
            try:
                data = s.recv(65536)
            except (socket.timeout, ConnectionError, ssl.SSLError):
                result["events"].append("recv_error")
                return
            if not data:
                result["events"].append("eof")
                return
            for ev in conn.receive_data(data):
                name = type(ev).__name__
                sid = getattr(ev, "stream_id", None)
                st = result["streams"].setdefault(str(sid), {"body": ""}) if sid else None
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    for k, v in ev.changed_settings.items():
                        result.setdefault("settings", {})[str(int(k))] = v.new_value
                elif isinstance(ev, h2.events.ResponseReceived):
                    st["headers"] = {k.decode(): v.decode() for k, v in ev.headers}
                elif isinstance(ev, h2.events.DataReceived):
                    st["body"] += ev.data.decode(errors="replace")
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded):
                    st["ended"] = True
                elif isinstance(ev, h2.events.StreamReset):
                    st["reset"] = int(ev.error_code)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    result["goaway"] = int(ev.error_code)
                result["events"].append(name)
            out = conn.data_to_send()
            if out:
                s.sendall(out)

    pump(lambda: "settings" in result)

    def connect_headers(protocol, auth):
        return [(":method", "CONNECT"), (":protocol", protocol), (":scheme", "https"),
                (":path", "/"), (":authority", auth)]

    def done(sid):
        st = result["streams"].get(str(sid), {})
        return st.get("ended") or "reset" in st

    if scenario == "get":
        conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":path", "/"),
                              (":authority", authority)], end_stream=True)
        s.sendall(conn.data_to_send())
        pump(lambda: done(1))
    elif scenario == "websocket":
        conn.send_headers(1, connect_headers("websocket", authority))
        s.sendall(conn.data_to_send())
        pump(lambda: done(1))
    elif scenario == "connect":
        conn.send_headers(1, [(":method", "CONNECT"), (":authority", authority)])
        s.sendall(conn.data_to_send())
        pump(lambda: done(1))
    elif scenario == "tunnel":
        conn.send_headers(1, connect_headers("tether-tcp", authority))
        conn.send_data(1, b"hello through the pool\n")
        conn.end_stream(1)
        s.sendall(conn.data_to_send())
        pump(lambda: done(1))
    elif scenario == "garbage":
        s.sendall(b"\x00\x00\x04\x42\x00\x00\x00\x00\x07garbage-frame" * 4)
        pump(lambda: "goaway" in result)
    elif scenario == "goaway_hold":
        # Says GOAWAY, reads the server's end, then holds its own socket open.
        conn.close_connection()
        s.sendall(conn.data_to_send())
        try:  # the bytes as they come (h2 takes no frame once it said GOAWAY)
            while s.recv(65536):
                pass
            result["events"].append("eof")
        except (socket.timeout, ConnectionError, ssl.SSLError):
            result["events"].append("recv_error")
        print(json.dumps(result), flush=True)
        time.sleep(HOLD_SECONDS)
        return
    print(json.dumps(result))


def attack(env, port, cert, ca, scenario, authority):
    r = subprocess.run([h.DEBIAN_PYTHON, os.path.abspath(__file__), "client", str(port),
                        cert.crt, cert.key, ca.crt, scenario, authority],
                       capture_output=True, text=True, timeout=60)
    h.check(r.returncode == 0, "h2 client (%s) failed: %s" % (scenario, r.stderr[-2000:]))
    return json.loads(r.stdout)


def test(env):
    ok = h.Checks()
    r = subprocess.run([h.DEBIAN_PYTHON, "-c", "import h2.connection"], capture_output=True)
    if r.returncode != 0:
        print("SKIP: %s cannot import h2 (apt-get install python3-h2; deploy/install-deps.sh "
              "does)" % h.DEBIAN_PYTHON)
        sys.exit(77)
    ca = env.certs.ca("ca")
    web_id, api_id = h.spiffe("shop", "web"), h.spiffe("shop", "api")
    evil_id = h.spiffe("shop", "evil")
    web = env.certs.leaf("web", ca, [web_id])
    evil = env.certs.leaf("evil", ca, [evil_id])
    api = env.certs.leaf("api", ca, [api_id])

    echo = env.echo("echo")
    secret = env.echo("banner")  # a backend on this machine the caller must never reach
    in_port = h.free_port()
    policy = env.policy("policy.json", {"default": "deny", "rules": [
        {"name": "web-to-api", "action": "allow", "from": [web_id], "to": [api_id],
         "ports": [echo.port]}]})
    api_sc = env.sidecar("api", api, ca, inbound=[(in_port, echo.addr)], policy=policy)
    authority = "127.0.0.1:%d" % echo.port

    # Settings and ALPN.
    res = attack(env, in_port, web, ca, "get", secret.addr)
    ok(res["alpn"] == "tether-h2", "the inbound selects tether-h2 (got %r)" % res["alpn"])
    settings = res.get("settings", {})
    ok(settings.get("3") == 100, "MAX_CONCURRENT_STREAMS 100 announced (%r)" % settings)
    ok(settings.get("8") == 1, "ENABLE_CONNECT_PROTOCOL 1 announced (%r)" % settings)

    # 1. A plain GET on a link naming the secret backend: served to the dialled port,
    # whose echo answers with the request itself, which is not a response: 502.
    st = res["streams"].get("1", {})
    ok(st.get("headers", {}).get(":status") == "502" and
       st["headers"].get("x-tether-reason") == "upstream_bad_response",
       "a GET on a link is served to the dialled port; its non-HTTP answer is a 502 "
       "upstream_bad_response (%r)" % st)
    ok(echo.accepted == 1 and secret.accepted == 0,
       "the GET reached the dialled port's backend only (echo %d, secret %d accepted)"
       % (echo.accepted, secret.accepted))
    # 2. Extended CONNECT for another protocol, and a plain CONNECT: 501.
    for scenario in ("websocket", "connect"):
        res = attack(env, in_port, web, ca, scenario, secret.addr)
        st = res["streams"].get("1", {})
        ok(st.get("headers", {}).get(":status") == "501" and
           st["headers"].get("x-tether-reason") == "not_a_tunnel",
           "CONNECT (%s) is answered 501 not_a_tunnel (%r)" % (scenario, st))
    ok(echo.accepted == 1 and secret.accepted == 0,
       "no CONNECT reached a backend (echo %d, secret %d accepted)"
       % (echo.accepted, secret.accepted))

    # 3. A tunnel naming the secret backend in :authority reaches the dialled port only.
    res = attack(env, in_port, web, ca, "tunnel", secret.addr)
    st = res["streams"].get("1", {})
    ok(st.get("headers", {}).get(":status") == "200", "the tunnel opens (%r)" % st)
    ok("hello through the pool" in st.get("body", "") and "EOF-SHA256" in st.get("body", ""),
       "its bytes were echoed by the dialled port's backend, half-close included (%r)"
       % st.get("body"))
    ok(secret.accepted == 0,
       "the backend named by :authority was never contacted (%d accepted)" % secret.accepted)
    accepted_before = echo.accepted

    # 4. An identity the policy denies: 403 per tunnel, the backend sees nothing.
    res = attack(env, in_port, evil, ca, "tunnel", authority)
    st = res["streams"].get("1", {})
    ok(st.get("headers", {}).get(":status") == "403" and
       st["headers"].get("x-tether-reason") == "policy_denied",
       "a denied caller's tunnel is answered 403 policy_denied (%r)" % st)
    ok("hello" not in st.get("body", ""), "no byte came back from the backend")
    ok(echo.accepted == accepted_before,
       "the backend accepted nothing for the denied caller (%d -> %d)"
       % (accepted_before, echo.accepted))
    li = api_sc.listener("inbound:")
    ok(li["denied"] >= 1, "the refusal is counted (denied=%d)" % li["denied"])

    # 5. Garbage frames after the preface: GOAWAY PROTOCOL_ERROR, the sidecar lives on.
    res = attack(env, in_port, web, ca, "garbage", authority)
    ok(res.get("goaway", 0) != 0,
       "garbage ends the link with a GOAWAY naming an error (%r, events %r)"
       % (res.get("goaway"), res["events"][-3:]))
    res = attack(env, in_port, web, ca, "tunnel", authority)
    ok(res["streams"].get("1", {}).get("headers", {}).get(":status") == "200",
       "the sidecar still serves tunnels afterwards")
    ok(api_sc.alive(), "the inbound sidecar is alive")
    li = api_sc.listener("inbound:")
    ok(li["pool"]["streams_total"] == 4 and li["pool"]["streams_active"] == 0,
       "tunnels are counted and none is left open (%r)" % li["pool"])

    # 6. A caller that says GOAWAY and then never closes its side: the inbound ends the
    # link (close_notify and FIN), waits for the caller's end at most 2 s (the lingering
    # close, net/conn_int.h TT_CONN_LINGER_MS), then closes its socket anyway.
    hold = subprocess.Popen([h.DEBIAN_PYTHON, os.path.abspath(__file__), "client",
                             str(in_port), web.crt, web.key, ca.crt, "goaway_hold",
                             authority], stdout=subprocess.PIPE, text=True)
    try:
        res = json.loads(hold.stdout.readline() or "{}")
        t0 = time.monotonic()
        ok("eof" in res.get("events", []),
           "the inbound answers the caller's GOAWAY with its end (%r)" % res.get("events"))
        try:
            gone = h.wait_for(lambda: api_sc.listener("inbound:")["pool"]["connections"] == 0,
                              HOLD_SECONDS - 1, what="the held link's close")
        except h.TestFailure:
            gone = False
        took = time.monotonic() - t0
        ok(gone and hold.poll() is None,
           "the link is closed %.1f s after its end while the caller still holds its "
           "socket (connections %r)" % (took, api_sc.listener("inbound:")["pool"][
               "connections"]))
    finally:
        hold.kill()
        hold.wait()
    ok.done()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client(int(sys.argv[2]), *sys.argv[3:8])
    else:
        h.main(test, "pool_attacks")
