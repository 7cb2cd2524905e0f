/* The connection's life (conn.h): accepting a socket and routing it (explicit listeners,
 * or the original destination in transparent mode), the outbound's protocol detection,
 * connecting upstream with endpoint retries, the TLS handshake and what follows it (the
 * allow list is asked in conn_gate.c), the timers, and closing with the access line and
 * the counters. The other conn_*.c files are parts of this one state machine (conn_int.h
 * says which does what). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/util.h"
#include "http/detect.h"
#include "http/gate.h"
#include "http/h1.h"
#include "http/h1h2.h"
#include "http/h2.h"
#include "http/h2h1.h"
#include "metrics/metrics.h"
#include "net/balancer.h"
#include "net/canary.h"
#include "net/conn.h"
#include "net/conn_int.h"
#include "net/listener-t.h"
#include "net/origdst.h"
#include "net/pool.h"
#include "net/worker-t.h"
#include "policy/policy.h"
#include "snapshot/services.h"
#include "snapshot/snapshot.h"
#include "tls/revocations.h"
#include "tls/tls.h"

static void conn_start_handshake(struct tt_conn *c);
static void conn_free(struct tt_conn *c);

/* ---- who and what ---------------------------------------------------------------- */

/* The verified SPIFFE ID of the TLS-side peer: the session's, or a tunnel's carrier's;
 * "" when there is none (plaintext). */
const char *tt__conn_peer_id(const struct tt_conn *c)
{
    if (c->tls != NULL)
        return tt_tls_peer_id(c->tls);
    return c->tunnel_peer_id != NULL ? c->tunnel_peer_id : "";
}

/* The access line's name of side s. */
static const char *side_name(const struct tt_conn *c, const struct tt_side *s)
{
    return s == &c->down ? "client" : "upstream";
}

/* Side s ended its stream (FIN) or failed (reset_err: a read or write error it caused,
 * e.g. UV_ECONNRESET; 0 for a FIN): the first such event says who closed the connection. */
void tt__side_ended(struct tt_conn *c, const struct tt_side *s, int reset_err)
{
    if (c->closed_by == NULL)
        c->closed_by = side_name(c, s);
    if (c->reset_by == NULL &&
        (reset_err == UV_ECONNRESET || reset_err == UV_ECONNREFUSED || reset_err == UV_EPIPE))
        c->reset_by = side_name(c, s);
}

/* The handshake failed for `reason`: counted with what the peer presented, and kept for
 * the access line. */
void tt__conn_hs_failed(struct tt_conn *c, enum tt_hs_reason reason)
{
    c->hs_reason = (int)reason;
    tt_metrics_hs_failure(c->worker->metrics, c->listener->index, reason, c->peer_addr,
                          tt_tls_peer_id(c->tls), tt_tls_peer_serial(c->tls),
                          tt_tls_peer_issuer(c->tls));
}

/* ---- timers and states ----------------------------------------------------------- */

void tt__on_timer(uv_timer_t *timer)
{
    struct tt_conn *c = tt_container_of(timer, struct tt_conn, timer);
    uint64_t now = uv_now(&c->worker->loop);

    switch (c->state) {
    case TT_CONN_S_HANDSHAKE:
        tt__conn_hs_failed(c, TT_HS_TIMEOUT);
        tt__conn_close(c, TT_E_TIMEOUT, true);
        break;
    case TT_CONN_S_CONNECTING:
        tt__conn_connect_failed(c, UV_ETIMEDOUT);
        break;
    case TT_CONN_S_DETECT:
        tt__detect_done(c, NULL, 0); /* said nothing: a server-first protocol, plaintext */
        break;
    case TT_CONN_S_REFUSING:
        tt__conn_close(c, c->refusal_err, true); /* said nothing that reads as HTTP/1.x */
        break;
    case TT_CONN_S_RELAY: {
        if (c->h1_kicked) {
            tt__conn_kicked(c); /* due before its queued kick ran */
            if (c->state != TT_CONN_S_RELAY)
                break;
        }
        if (c->carrier && c->lingering) {
            tt__conn_close(c, 0, false); /* the peer did not end its side in time */
            break;
        }
        if (c->carrier) {
            int r = tt_link_tick(c->link, now);
            if (r < 0)
                tt__conn_close(c, r, true);
            else if (r == 1)
                tt__carrier_progress(c); /* closes once the GOAWAY is out */
            if (c->state == TT_CONN_S_RELAY)
                uv_timer_start(&c->timer, tt__on_timer, tt_link_tick_ms(c->link), 0);
            break;
        }
        if (c->h1_deadline_ms != 0 && now >= c->h1_deadline_ms) {
            tt__h1_timed_out(c);
            if (c->state != TT_CONN_S_RELAY || c->h1_kicked)
                break;
        }
        /* The idle deadline slides with activity; re-arm for what is left of it (or for
         * the request's deadline, when that comes first). */
        uint64_t idle = conn_settings(c)->idle_timeout_ms;
        uint64_t since = now - c->last_activity_ms;
        if (since >= idle) {
            tt__conn_close(c, UV_ETIMEDOUT, true);
        } else {
            uint64_t wait = idle - since;
            if (c->h1_deadline_ms != 0 && c->h1_deadline_ms - now < wait)
                wait = c->h1_deadline_ms - now;
            uv_timer_start(&c->timer, tt__on_timer, wait, 0);
        }
        break;
    }
    default:
        break;
    }
}

/* A kick (tt__conn_kick) runs: a request stream on a kept workload connection relays as
 * after a connect; an HTTP/1.x app's request settles (tt__h1_settle) and its answer goes
 * on. Does nothing when the kick's reason went meanwhile. */
void tt__conn_kicked(struct tt_conn *c)
{
    if (c->state == TT_CONN_S_CONNECTING && c->reused_up) {
        c->reused_up = false; /* a kept workload connection: no connect to wait for */
        tt__conn_start_relay(c);
    } else if (c->state == TT_CONN_S_RELAY && c->h1_kicked) {
        c->h1_kicked = false;
        tt__h1_settle(c);
        tt__relay_progress(c);
    }
}

/* Enters `state` and arms its deadline. Staying in RELAY (an HTTP/1.x app's next request)
 * leaves an armed timer alone when it is due no later than the new deadline: the idle
 * deadline slides by itself (tt__on_timer re-arms for what is left of it). */
void tt__conn_enter(struct tt_conn *c, enum tt_conn_state state)
{
    const struct tt_worker_settings *cfg = conn_settings(c);
    bool relaying = c->state == TT_CONN_S_RELAY && state == TT_CONN_S_RELAY;
    uint64_t timeout = 0;

    c->state = state;
    c->phase_ms = uv_now(&c->worker->loop);
    switch (state) {
    case TT_CONN_S_HANDSHAKE:
        timeout = cfg->handshake_timeout_ms;
        break;
    case TT_CONN_S_CONNECTING:
        /* An outbound tunnel may wait for its link's connect and handshake too; a kept
         * workload connection waits for nothing (its kick relays it). */
        timeout = c->reused_up
                      ? 0
                      : cfg->connect_timeout_ms +
                            (c->tunnel && !conn_is_inbound(c) ? cfg->handshake_timeout_ms : 0);
        break;
    case TT_CONN_S_DETECT:
        timeout = conn_is_inbound(c) ? cfg->transparent->detect_ms : cfg->outbound_detect_ms;
        break;
    case TT_CONN_S_REFUSING:
        timeout = TT_CONN_REFUSAL_WAIT_MS;
        break;
    case TT_CONN_S_RELAY:
        timeout = c->carrier ? tt_link_tick_ms(c->link) : cfg->idle_timeout_ms;
        if (c->h1_deadline_ms != 0) /* an HTTP/1.x request's deadline may come first */
            timeout = c->h1_deadline_ms <= c->phase_ms            ? 1
                      : c->h1_deadline_ms - c->phase_ms < timeout ? c->h1_deadline_ms - c->phase_ms
                                                                  : timeout;
        touch(c);
        break;
    default:
        break;
    }
    if (timeout == 0)
        return;
    if (relaying && uv_is_active((uv_handle_t *)&c->timer) &&
        uv_timer_get_due_in(&c->timer) <= timeout)
        return;
    uv_timer_start(&c->timer, tt__on_timer, timeout, 0);
}

/* ---- establishing: connecting upstream ------------------------------------------- */

/* Both sockets are up and the TLS session verified: relay. */
void tt__conn_start_relay(struct tt_conn *c)
{
    tt__conn_enter(c, TT_CONN_S_RELAY);
    if (c->h2up != NULL) {
        int r = tt__h2up_start(c); /* the response head answers the stream (tt__h2up_pump) */
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
    } else if (c->h2h1 != NULL) {
        /* The workload answered the connect: the request goes to it; the response head
         * answers the stream (tt__h2h1_respond). Corked until the body the stream holds
         * already is pumped below: head and body in one write. */
        size_t n = 0;
        const struct tt_h2_header *fields = tt_h2_stream_headers(c->stream, &n);
        c->up.corked = true;
        int r = tt_h2h1_request(c->h2h1, fields, n, !tt_h2_stream_eof(c->stream));
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
    } else if (c->tunnel && conn_is_inbound(c)) {
        /* The workload answered the connect: the tunnel is open (RFC 8441 §4). */
        int r =
            c->stream != NULL ? tt_h2_respond(c->stream, 200, NULL, 0, false) : TT_E_LINK_CLOSED;
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
        c->answered = true;
    }
    if (c->plain) {
        tt__side_start_write(c, &c->up); /* what a plaintext caller sent while detected */
        tt__relay_progress(c);
        return;
    }
    int r = tt__conn_send_early(c);
    if (r == 0)
        r = tt__tls_pump(c); /* application data that arrived with the handshake */
    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }
    if (c->up.corked) {
        /* Straight to the socket, as uncorked bytes would have gone (a write handed to
         * libuv stays in flight until the next loop iteration, and a kept connection
         * found closed meanwhile could not be retried: tt__workload_retry). */
        c->up.corked = false;
        r = tt__side_push(c, &c->up);
        if (r < 0 && !tt__workload_retry(c)) {
            tt__conn_close(c, r, true);
            return;
        }
    }
    tt__relay_progress(c);
}

/* libuv: the upstream connect finished: the connect time is counted (and told to the
 * balancer), then the relay starts (inbound, plaintext) or the TLS handshake does; a
 * failed connect goes to tt__conn_connect_failed (another endpoint, or the end). */
void tt__on_connect(uv_connect_t *req, int status)
{
    struct tt_conn *c = tt_container_of(req, struct tt_conn, connect_req);

    /* Cancelled: the socket was closed by us (the connection ends, or a timed-out
     * connect moves on to another endpoint), which already decided what follows; or the
     * connection gave up on it while it was pending (REFUSING after a timeout). */
    if (c->state != TT_CONN_S_CONNECTING || status == UV_ECANCELED)
        return;
    if (status < 0) {
        tt__conn_connect_failed(c, status);
        return;
    }
    uint64_t connect_us = tt__conn_now_us(c) - c->connect_start_us;
    tt_metrics_observe(&conn_counters(c)->connect_us, connect_us);
    /* The balancer compares endpoints by their TCP connect time: a direct connection's,
     * or for pooled ones the connect of the link to that endpoint (its tunnels only ride). */
    if (c->balancer_active || (c->carrier && c->worker->balancer != NULL))
        tt_balancer_connected(c->worker->balancer, &c->target, connect_us);
    c->up.connected = true;
    uv_tcp_nodelay(c->up.tcp, 1);
    if (c->h2h1 != NULL)
        TT_COUNTER_ADD(conn_counters(c)->pool.workload_opened, 1);
    if (c->up_retrying) { /* the request went ahead in the queue (tt__workload_retry) */
        c->up_retrying = false;
        tt__conn_enter(c, TT_CONN_S_RELAY);
        tt__side_start_write(c, &c->up);
        tt__relay_progress(c);
        return;
    }
    if (conn_is_inbound(c) || c->plain)
        tt__conn_start_relay(c);
    else
        conn_start_handshake(c);
}

/* Transparent outbound to a service: picks the endpoint to try next into c->target and
 * c->expected_id. Returns false when none is left (every endpoint tried). */
bool tt__conn_pick_endpoint(struct tt_conn *c)
{
    int k = tt_balancer_pick(c->worker->balancer, c->service, c->tried, tt_now_ms());

    if (k < 0)
        return false;
    c->endpoint = k;
    c->balancer_active = true;
    c->target = c->service->endpoints[k].addr;
    c->expected_id = c->service->endpoints[k].spiffe_id;
    return true;
}

/* The failed upstream socket is closed: connect to the next endpoint, unless the
 * connection ended meanwhile. */
static void on_retry_closed(uv_handle_t *handle)
{
    struct tt_conn *c = handle->data;

    if (--c->pending_closes == 0 && c->state == TT_CONN_S_CLOSING) {
        conn_free(c);
        return;
    }
    if (c->state != TT_CONN_S_CLOSING)
        tt__conn_start_connect(c);
}

/* The upstream connect failed (status) or timed out: counted; a balanced connection
 * ejects that endpoint and tries another one (its socket is closed first), anything else
 * is closed. */
void tt__conn_connect_failed(struct tt_conn *c, int status)
{
    TT_COUNTER_ADD(conn_counters(c)->upstream_connect_failures, 1);
    if (c->balancer_active) {
        tt_balancer_failed(c->worker->balancer, &c->target, tt_now_ms());
        c->balancer_active = false;
        if (c->endpoint < 64)
            c->tried |= 1ull << c->endpoint;
        /* Bounded: endpoints past the 64th cannot be marked tried. */
        if (++c->attempts >= TT_CONN_CONNECT_ATTEMPTS)
            goto give_up;
        tt_log(TT_LOG_WARN, "endpoint_connect_failed", TT_LS("listener", c->listener->cfg->name),
               TT_LS("endpoint", c->target.text), TT_LS("spiffe_id", c->expected_id),
               TT_LS("error", tt_strerror(status)));
        if (tt__conn_pick_endpoint(c)) {
            TT_COUNTER_ADD(conn_counters(c)->endpoint_retries, 1);
            uv_timer_stop(&c->timer);
            if (c->tunnel) {
                tt__conn_tunnel_leave(c); /* its link failed: the next endpoint's pool */
                tt__conn_start_connect(c);
                return;
            }
            c->up.open = false;
            c->pending_closes++;
            uv_close((uv_handle_t *)c->up.tcp, on_retry_closed);
            return;
        }
    give_up:
        status = TT_E_NO_ENDPOINT;
    }
    if (c->h1h2 != NULL) {
        tt__h1_fail(c, status); /* the app hears why; its next request tries again */
        return;
    }
    tt__side_ended(c, &c->up, status);
    tt__conn_close(c, status, true);
}

/* Opens the TCP connection to c->target (a balanced service picks it first); an outbound
 * app connection to another sidecar rides the pool instead, unless it goes direct. */
void tt__conn_start_connect(struct tt_conn *c)
{
    const struct tt_addr *target;
    int r;

    if (c->service != NULL && !c->balancer_active && !tt__conn_pick_endpoint(c)) {
        if (c->h1h2 != NULL)
            tt__h1_fail(c, TT_E_NO_ENDPOINT);
        else
            tt__conn_close(c, TT_E_NO_ENDPOINT, true);
        return;
    }
    if (!conn_is_inbound(c) && !c->plain && !c->carrier && !c->direct && conn_settings(c)->pool) {
        tt__conn_pool_attach(c);
        return;
    }
    target = &c->target;
    if (c->h2h1 != NULL) {
        /* A request stream: a keep-alive connection to the workload at rest, if any (its
         * handle still reads with our callbacks), else a handle that can be kept. A request
         * that may be sent again takes one unchecked: should the workload have closed it
         * just now, tt__workload_retry sends the request again on a new connection. */
        const char *method = tt_h2_stream_header(c->stream, ":method");
        bool replayable = method != NULL && tt_h1_method_idempotent(method);
        uv_tcp_t *kept = tt_idle_conns_take(&c->worker->idle_conns, target,
                                            uv_now(&c->worker->loop), !replayable);
        if (kept != NULL) {
            /* Relayed from the kick, as after a connect: the stream's END_STREAM, which
             * says whether a body follows, comes after the call that opened it. */
            TT_COUNTER_ADD(conn_counters(c)->pool.workload_reused, 1);
            c->up_replay_armed = replayable;
            kept->data = c;
            c->up.tcp = kept;
            c->up.open = true;
            c->up.connected = true;
            c->up.reading = true;
            c->reused_up = true;
            tt__conn_enter(c, TT_CONN_S_CONNECTING);
            tt__conn_kick(c);
            return;
        }
        c->up.tcp = tt_idle_conn_new(&c->worker->loop);
        if (c->up.tcp == NULL) {
            c->up.tcp = &c->up.own;
            tt__conn_close(c, -ENOMEM, true);
            return;
        }
    } else {
        r = uv_tcp_init(&c->worker->loop, c->up.tcp);
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
    }
    c->up.tcp->data = c;
    c->up.open = true;
    tt__conn_enter(c, TT_CONN_S_CONNECTING);
    c->connect_start_us = tt__conn_now_us(c);
    r = uv_tcp_connect(&c->connect_req, c->up.tcp, (const struct sockaddr *)&target->ss,
                       tt__on_connect);
    if (r < 0)
        tt__conn_connect_failed(c, r);
}

/* The kept workload connection an inbound request stream took failed before the
 * workload's first byte back (it closed the connection as it was taken, or reset it).
 * Before the stream's kick nothing was sent on it: a new connection to the same address
 * takes its place, whatever the method, and the request goes there once connected. After
 * that, when the request may be sent again and up_replay still holds all that was sent,
 * that goes again, once, on a new connection, ahead of anything the stream sends after
 * (RFC 9112 §9.3.1: an idempotent request on a connection closed under it); the
 * workload's first answer decided nothing yet, so neither the gate nor the translator
 * knows. Returns true when the new connect began (the caller drops the failure), false
 * when the caller fails the stream as usual. */
bool tt__workload_retry(struct tt_conn *c)
{
    struct tt_side *s = &c->up;
    bool unsent = c->state == TT_CONN_S_CONNECTING && c->reused_up;

    /* A write in flight on the failed socket would come back cancelled onto the new one. */
    if (s->tcp == &s->own || (!unsent && (!c->up_replay_armed || c->state != TT_CONN_S_RELAY ||
                                          s->bytes_read > 0 || s->inflight.len > 0)))
        return false;
    c->up_replay_armed = false;
    uv_tcp_t *fresh = tt_idle_conn_new(&c->worker->loop);
    if (fresh == NULL)
        return false;
    fresh->data = c;
    c->connect_start_us = tt__conn_now_us(c);
    if (uv_tcp_connect(&c->connect_req, fresh, (const struct sockaddr *)&c->target.ss,
                       tt__on_connect) < 0) {
        tt_idle_conn_close(fresh, false, NULL);
        return false;
    }
    s->tcp->data = NULL; /* the failed handle goes on its own */
    tt_idle_conn_close(s->tcp, s->connected, NULL);
    s->tcp = fresh;
    s->connected = false;
    s->reading = false;
    s->read_eof = false;
    s->bytes_written = 0;
    if (unsent) {
        c->reused_up = false; /* its kick finds nothing to do; the connect relays it */
    } else {
        tt_buf_move(&s->queued, &c->up_replay); /* what waited in the queue is in it too */
        c->up_retrying = true;
        TT_COUNTER_ADD(conn_counters(c)->pool.requests_retried, 1);
    }
    tt__conn_enter(c, TT_CONN_S_CONNECTING);
    return true;
}

/* Logs the audit rules that matched verdict v of a connection or request. */
void tt__conn_log_audit(struct tt_conn *c, const char *caller, const struct tt_policy_verdict *v)
{
    for (int i = 0; i < v->n_audit; i++) {
        struct tt_policy_rule_info info;
        tt_policy_rule_info(c->snapshot->policy, (size_t)v->audit[i], &info);
        tt_log(TT_LOG_INFO, "policy_audit", TT_LS("listener", c->listener->cfg->name),
               TT_LS("peer_id", caller), TT_LS("rule", info.name),
               TT_LS("would", info.action == TT_POLICY_DENY ? "deny" : "allow"),
               TT_LS("verdict", v->allowed ? "allow" : "deny"));
    }
}

/* ---- the handshake --------------------------------------------------------------- */

/* The TLS session is verified: check it against revocations that arrived during the
 * handshake, count it, then authorize (inbound) or relay (outbound). */
static void handshake_done(struct tt_conn *c)
{
    struct tt_listener_counters *lc = conn_counters(c);
    const struct tt_snapshot *newest = c->worker->snapshot;

    /* The session was verified against the revocations and CRLs of the snapshot it
     * started with; newer ones may revoke the peer already (DESIGN.md "Threads and
     * snapshots"). */
    if ((newest->revocations != c->snapshot->revocations &&
         tt_revocations_check(newest->revocations, tt_tls_peer_serial(c->tls))) ||
        (newest->crls != c->snapshot->crls && tt_tls_check_crls(c->tls, newest->crls) < 0)) {
        tt__conn_hs_failed(c, TT_HS_REVOKED);
        tt__conn_close(c, TT_E_REVOKED, true);
        return;
    }

    TT_COUNTER_ADD(lc->handshakes, 1);
    if (tt_tls_resumed(c->tls))
        TT_COUNTER_ADD(lc->handshakes_resumed, 1);
    tt_metrics_observe(&lc->handshake_us, (uv_now(&c->worker->loop) - c->phase_ms) * 1000);
    if (c->carrier) {
        tt__carrier_up(c);
        return;
    }
    if (conn_is_inbound(c) && tt__carrier_negotiated(c)) {
        tt__carrier_accept(c);
        return;
    }
    if (!conn_is_inbound(c)) {
        c->verdict = "allow";
        tt__conn_start_relay(c);
        return;
    }
    if (!tt__conn_authorize(c)) {
        /* A refused caller gets a reset and never a byte from the backend. */
        tt__conn_close(c, TT_E_DENIED, true);
        return;
    }
    /* Hold the caller's early data in the kernel until the upstream answers. */
    tt__side_set_reading(c, c->tls_side, false);
    if (c->state != TT_CONN_S_CLOSING)
        tt__conn_start_connect(c);
}

/* Drives the handshake after new input; finishes or fails it. */
void tt__handshake_progress(struct tt_conn *c)
{
    int r = tt_tls_handshake(c->tls);
    int fr = tt__tls_flush(c);

    if (r < 0) {
        tt__conn_hs_failed(c, tt_hs_reason_from_err(r));
        /* Close gracefully so the alert tt__tls_flush sent reaches the peer. */
        tt__conn_close(c, r, false);
        return;
    }
    if (fr < 0) {
        tt__conn_close(c, fr, true);
        return;
    }
    if (r == 1)
        handshake_done(c);
}

/* Starts the TLS handshake on the TLS side (inbound: server; outbound: client), with
 * early[0..n) the first bytes the client sent, already read (permissive detection). */
static void conn_start_handshake_with(struct tt_conn *c, const uint8_t *early, size_t n)
{
    bool inbound = conn_is_inbound(c);

    c->tls = tt_tls_new(c->snapshot->identity, inbound ? TT_TLS_SERVER : TT_TLS_CLIENT,
                        inbound ? NULL : c->expected_id);
    if (c->tls == NULL) {
        tt__conn_close(c, -ENOMEM, true);
        return;
    }
    tt_tls_set_revocations(c->tls, c->snapshot->revocations);
    tt_tls_set_crls(c->tls, c->snapshot->crls);
    /* Links between sidecars: a carrier offers the pool's token, an inbound with pooling
     * on selects it (net/pool.h), and "h2" for callers outside the mesh, except on an
     * opaque port, whose bytes are relayed unread (an h2 caller's requests would be
     * translated); anyone else shakes hands without ALPN, as before. */
    const struct tt_transparent_cfg *t = conn_settings(c)->transparent;
    const char *serve =
        tt__port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&c->target))
            ? TT_POOL_ALPN
            : TT_POOL_ALPN_SERVE;
    if ((c->carrier && tt_tls_set_alpn(c->tls, TT_POOL_ALPN_OFFER) < 0) ||
        (inbound && conn_settings(c)->pool && tt_tls_set_alpn(c->tls, serve) < 0)) {
        tt__conn_close(c, -ENOMEM, true);
        return;
    }
    /* Outbound: resume with the upstream's last ticket; a full handshake otherwise. A
     * transparent listener reaches many upstreams: its tickets are kept per endpoint, in
     * the worker's balancer, never shared between endpoints. */
    if (!inbound && !c->listener->cfg->transparent) {
        tt_tls_set_resume(c->tls, &c->listener->resume);
    } else if (!inbound && c->balancer_active) {
        struct tt_tls_resume *slot = tt_balancer_resume_slot(c->worker->balancer, &c->target);
        if (slot != NULL)
            tt_tls_set_resume(c->tls, slot);
    }
    if (n > 0) {
        size_t avail = 0;
        uint8_t *p = tt_tls_input_tail(c->tls, &avail);
        if (p == NULL || avail < n) {
            tt_tls_input_commit(c->tls, 0);
            tt__conn_close(c, -ENOMEM, true);
            return;
        }
        memcpy(p, early, n);
        tt_tls_input_commit(c->tls, n);
    }
    tt__conn_enter(c, TT_CONN_S_HANDSHAKE);
    tt__side_set_reading(c, c->tls_side, true);
    if ((!inbound || n > 0) && c->state == TT_CONN_S_HANDSHAKE)
        tt__handshake_progress(c); /* our ClientHello, or the client's read already */
}

static void conn_start_handshake(struct tt_conn *c)
{
    conn_start_handshake_with(c, NULL, 0);
}

/* ---- routing and detection ------------------------------------------------------- */

/* True when a and b are one IP and port (IPv4-mapped IPv6 equal to its IPv4). */
static bool same_address(const struct tt_addr *a, const struct tt_addr *b)
{
    struct tt_addr_key ka, kb;

    return tt_addr_key_of((const struct sockaddr *)&a->ss, &ka) &&
           tt_addr_key_of((const struct sockaddr *)&b->ss, &kb) &&
           memcmp(&ka, &kb, sizeof(ka)) == 0;
}

/* Whether port is among ports[0..n). */
bool tt__port_listed(const uint16_t *ports, size_t n, uint16_t port)
{
    for (size_t i = 0; i < n; i++) {
        if (ports[i] == port)
            return true;
    }
    return false;
}

/* Outbound with pooling and --http-streams on: whether the app's first bytes are read to
 * choose between requests as streams (an HTTP/1.x app) and a tunnel. Not for a port
 * declared opaque (server-first: the app would wait for the server while we wait for the
 * app). */
static bool outbound_detects(struct tt_conn *c)
{
    const struct tt_transparent_cfg *t = conn_settings(c)->transparent;

    return !conn_is_inbound(c) && !c->plain && conn_settings(c)->pool &&
           conn_settings(c)->http_streams &&
           !tt__port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&c->target));
}

/* Outbound detection: data[0..n) the app's next bytes (kept in c->early until they are
 * relayed or translated); `final` when no more will be waited for (the timer, the app's
 * FIN). An HTTP/1.x request line makes the connection an HTTP/1.x app's (tt__h1_start);
 * anything else (an HTTP/2 preface, TLS, another protocol, or silence: a server-first
 * protocol) rides a tunnel with those bytes first (tt__conn_send_early). */
void tt__outbound_detect(struct tt_conn *c, const uint8_t *data, size_t n, bool final)
{
    enum tt_detect_proto p = TT_DETECT_OPAQUE;

    if (c->state != TT_CONN_S_DETECT)
        return;
    if (n > 0 && tt_buf_append(&c->early, data, n) < 0) {
        tt__conn_close(c, -ENOMEM, true);
        return;
    }
    if (c->early.len > 0)
        p = tt_detect_check(tt_buf_head(&c->early), c->early.len, TT_DETECT_LIMIT);
    if (p == TT_DETECT_MORE && !final)
        return;
    uv_timer_stop(&c->timer);
    tt__side_set_reading(c, &c->down, false);
    c->detected = true;
    c->state = TT_CONN_S_ACCEPTED;
    if (p == TT_DETECT_HTTP1)
        tt__h1_start(c);
    else
        tt__conn_start_connect(c);
}

/* Outbound: what the app sent while its protocol was detected (or before its requests
 * were handed over to a byte relay) goes first on the new relay, and its FIN if it came
 * then. Returns 0 or <0. */
int tt__conn_send_early(struct tt_conn *c)
{
    int r = 0;

    if (conn_is_inbound(c) || !c->detected)
        return 0;
    if (c->early.len > 0) {
        r = tt__secure_write(c, tt_buf_head(&c->early), c->early.len);
        tt_buf_consume(&c->early, c->early.len);
        if (r == 0)
            r = tt__secure_flush(c);
    }
    if (r == 0 && c->down.read_eof)
        r = tt__tls_close_notify_once(c);
    return r;
}

/* Permissive inbound: the first bytes (none: the client said nothing within the
 * detection timeout, or sent a FIN) tell TLS from plaintext. A TLS record of type
 * handshake (0x16, version 0x03..) is a ClientHello: the handshake proceeds with the
 * bytes read. Anything else is a plaintext caller: counted per port, admitted by the
 * policy's default alone (it has no identity), and relayed with those bytes first. */
void tt__detect_done(struct tt_conn *c, const uint8_t *data, size_t n)
{
    struct tt_listener_counters *lc = conn_counters(c);
    char port[8];

    if (!conn_is_inbound(c)) {
        tt__outbound_detect(c, data, n, data == NULL); /* the timer fired: no more is waited */
        return;
    }
    uv_timer_stop(&c->timer);
    tt__side_set_reading(c, &c->down, false);
    if (c->state != TT_CONN_S_DETECT)
        return;
    if (n > 0 && data[0] == 0x16 && (n < 2 || data[1] == 0x03)) {
        c->tls_side = &c->down;
        c->plain_side = &c->up;
        c->state = TT_CONN_S_ACCEPTED;
        conn_start_handshake_with(c, data, n);
        return;
    }
    c->plain = true;
    c->route = "plaintext";
    c->state = TT_CONN_S_ACCEPTED;
    TT_COUNTER_ADD(lc->plaintext, 1);
    snprintf(port, sizeof(port), "%u", (unsigned)tt_addr_port(&c->target));
    tt_metrics_dest_add(c->worker->metrics, port, TT_DEST_PLAINTEXT);
    if (n > 0 && tt_buf_append(&c->up.queued, data, n) < 0) {
        tt__conn_close(c, -ENOMEM, true);
        return;
    }
    if (!tt__conn_authorize(c)) {
        tt__conn_close(c, TT_E_DENIED, true);
        return;
    }
    tt__conn_start_connect(c);
}

/* Transparent mode: routes c by its original destination (DESIGN.md "How a connection
 * flows"). Inbound goes to the workload at that address (the pod's, on the port the caller
 * dialled), after detection in permissive mode; outbound to a service is balanced over
 * its endpoints, to an endpoint dialled as is, each with its identity required; anything
 * else passes through in plaintext or is refused (--outbound-unknown). A connection that
 * was not redirected (the capture port dialled directly) is refused: relaying it would
 * loop into the sidecar. Returns false when c was refused (closed). */
static bool conn_route_transparent(struct tt_conn *c, int fd)
{
    const struct tt_transparent_cfg *t = conn_settings(c)->transparent;
    struct tt_listener_counters *lc = conn_counters(c);
    bool redirected = false;
    int r = tt_origdst_get(fd, &c->target, &redirected);

    if (r < 0 || !redirected) {
        TT_COUNTER_ADD(lc->not_redirected, 1);
        tt__conn_close(c, TT_E_NOT_REDIRECTED, true);
        return false;
    }
    if (conn_is_inbound(c) ? tt_addr_port(&c->target) == TT_CANARY_INBOUND_PORT
                           : same_address(&c->target, &t->canary_outbound)) {
        /* The capture check's probe (app/capture.h): the rules work in this direction. */
        uv_buf_t b = uv_buf_init((char *)TT_CANARY_ANSWER, (unsigned)strlen(TT_CANARY_ANSWER));
        TT_COUNTER_ADD(lc->canary, 1);
        c->route = "canary";
        c->verdict = "allow";
        (void)uv_try_write((uv_stream_t *)c->down.tcp, &b, 1);
        tt__conn_close(c, 0, false);
        return false;
    }
    if (conn_is_inbound(c)) {
        /* The workload on the port the caller dialled, over loopback: the capture rules
         * send the proxy's own connections to its pod address back into 15006 (a pod
         * calling itself), so relaying to the pod address would loop (README). */
        uint16_t port = tt_addr_port(&c->target);
        char text[32];
        snprintf(text, sizeof(text),
                 c->target.ss.ss_family == AF_INET6 ? "[::1]:%u" : "127.0.0.1:%u", (unsigned)port);
        if (tt_addr_parse(text, TT_ADDR_NUMERIC, &c->target) < 0) {
            tt__conn_close(c, -EINVAL, true);
            return false;
        }
        c->route = "mesh";
        if (t->permissive &&
            !tt__port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&c->target))) {
            c->tls_side = c->plain_side = NULL; /* until the first bytes tell */
            tt__conn_enter(c, TT_CONN_S_DETECT);
            tt__side_set_reading(c, &c->down, true);
        }
        return c->state != TT_CONN_S_CLOSING;
    }
    c->service = tt_services_lookup(c->snapshot->services, (const struct sockaddr *)&c->target.ss);
    if (c->service != NULL) {
        c->route = "mesh";
        return true;
    }
    if (t->outbound_deny) {
        TT_COUNTER_ADD(lc->unknown_denied, 1);
        tt_metrics_dest_add(c->worker->metrics, c->target.text, TT_DEST_DENIED);
        c->verdict = "deny";
        c->route = "denied";
        tt__conn_close(c, TT_E_UNKNOWN_DEST, true);
        return false;
    }
    TT_COUNTER_ADD(lc->passthrough, 1);
    tt_metrics_dest_add(c->worker->metrics, c->target.text, TT_DEST_PASSTHROUGH);
    c->plain = true;
    c->route = "passthrough";
    c->verdict = "allow";
    c->tls_side = c->plain_side = NULL;
    return true;
}

/* ---- accepting ------------------------------------------------------------------- */

/* A new connection of listener l on its worker, with nothing open but its timer:
 * sides, buffers and the listener's target set. NULL when out of memory. */
struct tt_conn *tt__conn_new(struct tt_listener *l)
{
    struct tt_worker *w = l->worker;
    struct tt_conn *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->worker = w;
    c->listener = l;
    c->start_ms = uv_now(&w->loop);
    c->verdict = "error";
    c->hs_reason = -1;
    c->tls_side = l->cfg->kind == TT_LISTENER_INBOUND ? &c->down : &c->up;
    c->plain_side = l->cfg->kind == TT_LISTENER_INBOUND ? &c->up : &c->down;
    c->target = l->cfg->target;
    c->expected_id = l->cfg->expected_id;
    c->endpoint = -1;
    c->member.conn = c;
    c->member.counters = &w->metrics->listeners[l->index];
    tt_buf_init(&c->down.inflight);
    tt_buf_init(&c->down.queued);
    tt_buf_init(&c->up.inflight);
    tt_buf_init(&c->up.queued);
    tt_buf_init(&c->early);
    uv_timer_init(&w->loop, &c->timer);
    c->down.tcp = &c->down.own;
    c->up.tcp = &c->up.own;
    c->down.own.data = c;
    c->up.own.data = c;
    return c;
}

/* The timer of a connection refused before it was tracked is closed: free it. */
void tt__on_untracked_closed(uv_handle_t *handle)
{
    free(tt_container_of((uv_timer_t *)handle, struct tt_conn, timer));
}

/* Puts c on its worker's list with `snapshot`; an app connection (`counted`) is also
 * counted as accepted and in n_conns. From here on c ends in tt__conn_close. */
void tt__conn_track(struct tt_conn *c, struct tt_snapshot *snapshot, bool counted)
{
    struct tt_worker *w = c->worker;

    c->snapshot = tt_snapshot_ref(snapshot);
    c->next = w->conns;
    if (w->conns != NULL)
        w->conns->prev = c;
    w->conns = c;
    c->counted = counted;
    if (counted) {
        __atomic_store_n(&w->n_conns, w->n_conns + 1, __ATOMIC_RELAXED);
        TT_COUNTER_ADD(conn_counters(c)->accepted, 1);
    }
}

/* Adopts one accepted connection from the listener (see conn.h). */
void tt_conn_accept(struct tt_listener *l, int fd)
{
    struct tt_worker *w = l->worker;
    struct tt_listener_counters *lc = &w->metrics->listeners[l->index];
    struct tt_conn *c = w->snapshot != NULL ? tt__conn_new(l) : NULL;
    uv_tcp_t *tcp;
    int r;

    if (c == NULL)
        goto err_refuse;
    tcp = c->down.tcp;
    if (uv_tcp_init(&w->loop, tcp) < 0)
        goto err_refuse;
    c->down.open = true;

    r = uv_tcp_open(tcp, fd);
    if (r < 0)
        close(fd); /* not adopted: the handle closes without it */
    tt__conn_track(c, w->snapshot, true);
    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }

    c->down.connected = true;
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &sslen) == 0)
        tt_sockaddr_format((struct sockaddr *)&ss, c->peer_addr, sizeof(c->peer_addr));
    uv_tcp_nodelay(tcp, 1);

    if (w->n_conns > w->settings->max_connections) {
        TT_COUNTER_ADD(lc->refused_limit, 1);
        tt__conn_close(c, TT_E_CONN_LIMIT, true);
        return;
    }
    if (l->cfg->transparent && !conn_route_transparent(c, fd))
        return;
    if (c->state == TT_CONN_S_DETECT)
        return;
    if (l->cfg->kind == TT_LISTENER_INBOUND && !c->plain) {
        conn_start_handshake(c);
    } else if (outbound_detects(c)) {
        /* Its first bytes tell an HTTP/1.x app (requests as streams) from anything else. */
        tt__conn_enter(c, TT_CONN_S_DETECT);
        tt__side_set_reading(c, &c->down, true);
    } else {
        tt__conn_start_connect(c);
    }
    return;

err_refuse:
    /* Without memory for a connection (or before the first snapshot), drop the client. */
    if (c != NULL)
        uv_close((uv_handle_t *)&c->timer, tt__on_untracked_closed);
    close(fd);
    TT_COUNTER_ADD(lc->refused_limit, 1);
}

/* ---- closing --------------------------------------------------------------------- */

static void conn_free(struct tt_conn *c)
{
    /* Here, not in tt__conn_close: a close may start inside one of the gate's callbacks. */
    tt_gate_free(c->gate, tt__conn_now_us(c)); /* reports requests left unanswered */
    tt__request_meter_end(c, 0, 0);            /* and a metered one */
    tt_h2h1_free(c->h2h1);
    tt_h1h2_free(c->h1h2);
    free(c->h1_rq);
    tt__h2up_free(c->h2up);
    tt_tls_free(c->tls);
    tt_buf_done(&c->down.inflight);
    tt_buf_done(&c->down.queued);
    tt_buf_done(&c->up.inflight);
    tt_buf_done(&c->up.queued);
    tt_buf_done(&c->refusal_held);
    tt_buf_done(&c->up_replay);
    tt_buf_done(&c->early);
    tt_snapshot_unref(c->snapshot);
    free(c->tunnel_peer_id);
    free(c->link_detail);
    free(c);
}

static void on_close(uv_handle_t *handle)
{
    struct tt_conn *c = handle->data;

    if (--c->pending_closes == 0)
        conn_free(c);
}

/* Writes the access line and the per-connection counters. */
static void conn_account(struct tt_conn *c, int err)
{
    struct tt_listener_counters *lc = conn_counters(c);
    uint64_t dur_ms = uv_now(&c->worker->loop) - c->start_ms;
    const char *peer_id = tt__conn_peer_id(c);
    const char *detail = c->tls != NULL           ? tt_tls_error_detail(c->tls)
                         : c->link_detail != NULL ? c->link_detail
                                                  : "";
    bool inbound = conn_is_inbound(c);

    if (c->counted) {
        TT_COUNTER_ADD(lc->closed, 1);
        tt_metrics_observe(&lc->duration_us, dur_ms * 1000);
    }
    if (c->route != NULL && strcmp(c->route, "canary") == 0)
        return; /* the capture check's probes, every few seconds: counted, not logged */
    if (peer_id[0] != '\0' && !c->carrier) /* a link is no app connection of its peer */
        tt_metrics_peer_add(c->worker->metrics, peer_id, c->down.bytes_read, c->down.bytes_written,
                            strcmp(c->verdict, "deny") == 0);
    /* A link's carrier gets a line of its own kind: the app connections on it have theirs. */
    tt_log(
        err == 0 || err == UV_EOF ? TT_LOG_INFO : TT_LOG_WARN, c->carrier ? "link" : "access",
        TT_LS("listener", c->listener->cfg->name),
        TT_LS("direction", inbound ? "inbound" : "outbound"), TT_LS("peer_addr", c->peer_addr),
        TT_LS("peer_id", peer_id), TT_LS("verdict", c->verdict), TT_LS("rule", c->rule),
        TT_LU("bytes_in", c->down.bytes_read), TT_LU("bytes_out", c->down.bytes_written),
        TT_LU("upstream_bytes_in", c->up.bytes_read),
        TT_LU("upstream_bytes_out", c->up.bytes_written), TT_LU("duration_ms", dur_ms),
        TT_LS("error", err == 0 || err == UV_EOF ? NULL : tt_strerror(err)),
        TT_LS("reason", c->hs_reason >= 0 ? tt_hs_reason_name(c->hs_reason) : NULL),
        TT_LS("detail", detail[0] != '\0' ? detail : NULL),
        TT_LS("closed_by", c->closed_by != NULL ? c->closed_by : "proxy"),
        TT_LS("reset_by", c->reset_by), TT_LS("route", c->route),
        TT_LS("upstream", c->listener->cfg->transparent || c->carrier ? c->target.text : NULL),
        TT_LS("upstream_id", c->listener->cfg->transparent || c->carrier ? c->expected_id : NULL));
}

static void side_close(struct tt_conn *c, struct tt_side *s, bool reset)
{
    if (!s->open)
        return;
    s->open = false;
    if (s->tcp != &s->own && c->park_up && !reset && c->error == 0 && s->reading) {
        /* Kept for the next request stream, reading on (net/idleconns.h). */
        tt_idle_conns_put(&c->worker->idle_conns, &c->target, s->tcp, uv_now(&c->worker->loop));
        s->tcp = &s->own;
        return;
    }
    c->pending_closes++;
    /* A reset needs a connected socket; anything else is closed plainly. */
    if (s->tcp != &s->own)
        tt_idle_conn_close(s->tcp, reset && s->connected, on_close);
    else if (!reset || !s->connected || uv_tcp_close_reset(s->tcp, on_close) < 0)
        uv_close((uv_handle_t *)s->tcp, on_close);
}

/* Ends the connection: accounting, unlinking, then asynchronous close of every handle;
 * the memory goes in the last close callback. `reset` sends RST instead of FIN. */
void tt__conn_close(struct tt_conn *c, int err, bool reset)
{
    struct tt_worker *w = c->worker;

    if (c->state == TT_CONN_S_CLOSING || tt__conn_refusal_start(c, err, reset))
        return;
    /* Outbound over TLS 1.3, our handshake completes before the upstream has checked our
     * certificate: a TLS failure before it confirmed (its alert) is a refused handshake,
     * not an allowed connection (README "Logs"). */
    if (c->state == TT_CONN_S_RELAY && !conn_is_inbound(c) && c->tls != NULL && err <= TT_E_TLS &&
        err >= TT_E_TLS_CLOSED && !tt_tls_peer_confirmed(c->tls)) {
        c->verdict = "error";
        tt__conn_hs_failed(c, tt_hs_reason_from_err(err));
    }
    if (c->hs_reason >= 0 && c->tls != NULL && tt_tls_peer_alert(c->tls) >= 0)
        tt__side_ended(c, c->tls_side, 0); /* the peer's alert ended it */
    if (reset && c->reset_by == NULL)
        c->reset_by = "proxy";
    if (c->h1h2 != NULL)
        tt__h1_record(c, 0, NULL); /* a request the connection ended under, unanswered */
    if (c->push_queued) {          /* what was gathered for the app (an answer) goes first */
        tt__app_push_unqueue(c);
        (void)tt__side_push(c, &c->down);
    }
    tt__conn_kick_unqueue(c);
    c->state = TT_CONN_S_CLOSING;
    c->error = err;
    if (c->balancer_active) {
        tt_balancer_released(w->balancer, &c->target);
        c->balancer_active = false;
    }
    conn_account(c, err);

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    if (c->counted)
        __atomic_store_n(&w->n_conns, w->n_conns - 1, __ATOMIC_RELAXED);
    if (c->tunnel)
        tt__conn_tunnel_end(c, err, reset);
    if (c->link != NULL) {
        /* A carrier: its link's waiting connections fail and its tunnels are lost. */
        struct tt_link *link = c->link;
        c->link = NULL;
        tt_link_closed(link, c, err);
    }

    c->timer.data = c;
    c->pending_closes++;
    uv_close((uv_handle_t *)&c->timer, on_close);
    side_close(c, &c->down, reset);
    side_close(c, &c->up, c->refusal_err != 0 ? c->refusal_up_reset : reset);
}

/* Closes the connection if its verified peer's certificate is in `revocations`. */
bool tt_conn_close_if_revoked(struct tt_conn *c, const struct tt_revocations *revocations)
{
    const char *serial;

    if (c->tls == NULL || c->state == TT_CONN_S_HANDSHAKE || c->state == TT_CONN_S_CLOSING)
        return false;
    serial = tt_tls_peer_serial(c->tls);
    if (!tt_revocations_check(revocations, serial))
        return false;
    tt_log(TT_LOG_WARN, "revoked_connection_closed", TT_LS("listener", c->listener->cfg->name),
           TT_LS("peer_addr", c->peer_addr), TT_LS("peer_id", tt_tls_peer_id(c->tls)),
           TT_LS("serial", serial));
    tt__conn_close(c, TT_E_REVOKED, true);
    return true;
}

/* Closes the connection if a CRL of `crls` revokes its verified peer's chain. */
bool tt_conn_close_if_crl_revoked(struct tt_conn *c, const struct tt_crls *crls)
{
    if (c->tls == NULL || c->state == TT_CONN_S_HANDSHAKE || c->state == TT_CONN_S_CLOSING ||
        tt_tls_check_crls(c->tls, crls) != TT_E_REVOKED)
        return false;
    tt_log(TT_LOG_WARN, "revoked_connection_closed", TT_LS("listener", c->listener->cfg->name),
           TT_LS("peer_addr", c->peer_addr), TT_LS("peer_id", tt_tls_peer_id(c->tls)),
           TT_LS("serial", tt_tls_peer_serial(c->tls)),
           TT_LS("detail", tt_tls_error_detail(c->tls)));
    tt__conn_close(c, TT_E_REVOKED, true);
    return true;
}

/* Resets both sockets now. */
void tt_conn_abort(struct tt_conn *c)
{
    if (c->refusal_err == 0)
        c->refusal_err = UV_ECANCELED; /* at once: no app is told anything */
    tt__conn_close(c, UV_ECANCELED, true);
}
