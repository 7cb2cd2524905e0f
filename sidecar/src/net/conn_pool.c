/* Pooling between sidecars (net/pool.h), the connection's side: links' carriers (the
 * mTLS connections under links), tunnels (app connections whose TLS side is a stream on a
 * link), and the pool's callbacks into connections (tt_conn_pool_ops). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/util.h"
#include "http/gate.h"
#include "http/h1.h"
#include "http/h1h2.h"
#include "http/h2.h"
#include "metrics/metrics.h"
#include "net/conn.h"
#include "net/conn_int.h"
#include "net/pool.h"
#include "snapshot/snapshot.h"
#include "tls/tls.h"

/* An app connection that became a link's carrier is no longer counted as one (the
 * tunnels on it are): out of n_conns, and counted closed so that accepted - closed stays
 * the app connections open. */
static void conn_uncount(struct tt_conn *c)
{
    if (!c->counted)
        return;
    c->counted = false;
    __atomic_store_n(&c->worker->n_conns, c->worker->n_conns - 1, __ATOMIC_RELAXED);
    TT_COUNTER_ADD(conn_counters(c)->closed, 1);
}

/* Inbound: whether the handshake selected the pool's token or, from a caller outside the
 * mesh, "h2" (only selected with --pool on): either way the connection carries HTTP/2. */
bool tt__carrier_negotiated(struct tt_conn *c)
{
    char alpn[16];

    if (!conn_settings(c)->pool)
        return false;
    tt_tls_alpn(c->tls, alpn, sizeof(alpn));
    return strcmp(alpn, TT_POOL_ALPN) == 0 || strcmp(alpn, "h2") == 0;
}

/* Inbound: the verified connection carries a link from another sidecar. Policy is asked
 * for each tunnel on it (tt__pool_accept), not here. */
void tt__carrier_accept(struct tt_conn *c)
{
    c->link = tt_link_accept(c->worker->pool, c, conn_counters(c), uv_now(&c->worker->loop));
    if (c->link == NULL) {
        tt__conn_close(c, -ENOMEM, true);
        return;
    }
    c->carrier = true;
    c->route = "link";
    c->verdict = "allow";
    conn_uncount(c);
    tt__conn_start_relay(c);
}

/* Outbound: the carrier's handshake is done: the link comes up, or (the server did not
 * select the token) its waiting connections go direct and the carrier closes. */
void tt__carrier_up(struct tt_conn *c)
{
    char alpn[16];
    int r;

    tt_tls_alpn(c->tls, alpn, sizeof(alpn));
    c->verdict = "allow";
    tt__conn_enter(c, TT_CONN_S_RELAY);
    r = tt_link_up(c->link, c, strcmp(alpn, TT_POOL_ALPN) == 0, uv_now(&c->worker->loop));
    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }
    if (r == 1) {
        c->route = "link_declined";
        r = tt__tls_close_notify_once(c);
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
    }
    tt__carrier_progress(c);
}

/* Outbound: c's destination does not pool: one mTLS connection of its own, as before. */
static void conn_go_direct(struct tt_conn *c)
{
    if (c->h1h2 != NULL) {
        /* An HTTP/1.x app: the rest of its connection, from its current request's first
         * byte, is relayed as bytes over that connection (tt__conn_send_early). */
        int r = tt_h1h2_take_raw(c->h1h2, &c->early);
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
        tt_h1h2_free(c->h1h2);
        c->h1h2 = NULL;
        c->route = "pool";
        tt__side_set_reading(c, &c->down, false);
    }
    c->tunnel = false;
    c->direct = true;
    if (strcmp(c->route, "pool") == 0)
        c->route = "direct";
    tt__conn_start_connect(c);
}

/* The identity links are made with now: the worker's newest, whatever snapshot the app
 * connection started with. An app connection kept open across a rotation that asked for
 * links with its own, older identity would retire the links made with the new one, and
 * every new connection the links it made: the pool would churn while both kinds exist. */
const void *tt__pool_identity(const struct tt_conn *c)
{
    return c->worker->snapshot->identity;
}

/* Outbound: puts c in the pool for its target (tt__conn_start_connect): it rides a link now,
 * waits for one, or goes direct. */
void tt__conn_pool_attach(struct tt_conn *c)
{
    int r;

    c->tunnel = true;
    if (c->route == NULL)
        c->route = "pool";
    tt__conn_enter(c, TT_CONN_S_CONNECTING);
    r = tt_pool_attach(c->worker->pool, &c->member, &c->target, c->expected_id,
                       tt__pool_identity(c), uv_now(&c->worker->loop));
    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (r == TT_POOL_GO_DIRECT) {
        conn_go_direct(c);
    } else if (r < 0) {
        tt__conn_close(c, r, true);
    } else if (r == 1 && c->member.link != NULL) {
        tt_link_flush_soon(c->member.link); /* the tunnel's HEADERS */
    }
}

/* A tunnel gives its stream and place in the pool up (its link failed, or it retries). */
void tt__conn_tunnel_leave(struct tt_conn *c)
{
    struct tt_link *link = c->member.link;

    if (c->stream != NULL) {
        tt_h2_stream_release(c->stream);
        c->stream = NULL;
    }
    tt_pool_detach(&c->member);
    if (link != NULL)
        tt_link_flush_soon(link);
    c->tunnel = false;
}

/* Inbound: the answer to a tunnel or request stream the workload never answered, by why
 * it ended (err). One whose request reached the workload (bytes of it were written there)
 * before its connection failed is 502 upstream_reset, never upstream_connect_failed: the
 * outbound takes that for "nothing went through" and may send the request to another
 * endpoint, which for a POST the workload may have acted on would run it twice. */
static int tunnel_refusal(const struct tt_conn *c, int err, const char **reason)
{
    switch (err) {
    case TT_E_DENIED:
        *reason = "policy_denied";
        return 403;
    case TT_E_CONN_LIMIT:
        *reason = "connection_limit";
        return 503;
    case TT_E_HTTP:
    case TT_E_H2_HEADERS:
        *reason = "upstream_bad_response"; /* a request stream's workload broke HTTP */
        return 502;
    default:
        *reason = c->up.bytes_written > 0 ? "upstream_reset" : "upstream_connect_failed";
        return 502;
    }
}

/* Answers inbound stream s that never reached the workload, by why it ended (err): the
 * status and x-tether-reason; a request stream (not a tunnel, not gRPC) also gets the JSON
 * body an HTTP/1.x caller would get, naming the rule. Returns 0 or <0. */
static int tunnel_refuse(struct tt_conn *c, struct tt_h2_stream *s, int err)
{
    const char *why = NULL;
    int status = tunnel_refusal(c, err, &why);
    char body[512], len_text[16];
    int len = c->h2h1 != NULL ? tt_h1_error_body(body, sizeof(body), why, c->rule) : -1;
    struct tt_h2_header h[] = {
        {"x-tether-reason", 15, why, strlen(why)},
        {"content-type", 12, "application/json", 16},
        {"content-length", 14, len_text, 0},
    };
    int r;

    if (len < 0)
        return tt_h2_respond(s, status, h, 1, true);
    h[2].value_len = (size_t)snprintf(len_text, sizeof(len_text), "%d", len);
    r = tt_h2_respond(s, status, h, 3, false);
    r = r ?: tt_h2_stream_write(s, body, (size_t)len);
    return r ?: tt_h2_stream_end(s);
}

/* A tunnel ends (tt__conn_close): an inbound one never answered gets its refusal, one cut
 * short is reset, and the stream and place in the pool are given up. */
void tt__conn_tunnel_end(struct tt_conn *c, int err, bool reset)
{
    struct tt_link *link = c->member.link;
    struct tt_h2_stream *s = c->stream;

    if (s != NULL) {
        if (conn_is_inbound(c) && !c->answered) {
            if (tunnel_refuse(c, s, err) < 0)
                (void)tt_h2_stream_reset(s, TT_H2_REFUSED_STREAM);
        } else if (reset) {
            (void)tt_h2_stream_reset(s, TT_H2_CANCEL);
        }
        tt_h2_stream_release(s);
        c->stream = NULL;
    }
    tt_pool_detach(&c->member);
    if (link != NULL)
        tt_link_flush_soon(link);
}

/* Outbound: the peer sidecar answered the tunnel. 200: relay; anything else is its
 * refusal: 502 (its workload unreachable) and 503 (busy) count as a failed connect (a
 * balanced service tries another endpoint), 403 (policy) ends the connection; the app
 * sees a reset, as from a direct connection, or an HTTP answer (tt__conn_refusal_start). */
static void tunnel_on_headers(struct tt_h2_stream *s, void *ud)
{
    struct tt_conn *c = ud;
    int status = tt_h2_stream_status(s);

    if (conn_is_inbound(c) || c->state != TT_CONN_S_CONNECTING)
        return;
    if (status == 200) {
        c->verdict = "allow";
        tt__conn_start_relay(c); /* the balancer timed the link's connect (tt__on_connect) */
        return;
    }
    TT_COUNTER_ADD(conn_counters(c)->pool.streams_refused, 1);
    if (status == 502 || status == 503) {
        /* The peer's workload could not be reached (or it is full): nothing of ours went
         * through, so a balanced service tries another endpoint, as after a connect. */
        tt__conn_connect_failed(c, TT_E_TUNNEL_REFUSED);
        return;
    }
    tt__side_ended(c, c->tls_side, UV_ECONNRESET);
    if (status == 403)
        c->verdict = "deny";
    tt__conn_close(c, status == 403 ? TT_E_DENIED : TT_E_TUNNEL_REFUSED, true);
}

/* Bytes or the end arrived on the tunnel's stream. */
void tt__tunnel_on_data(struct tt_h2_stream *s, void *ud)
{
    (void)s;
    tt__relay_progress(ud);
}

/* The tunnel's stream was reset. One the peer never processed (REFUSED_STREAM, above its
 * GOAWAY) is retried once on another link; anything else ends the connection. */
static void tunnel_on_reset(struct tt_h2_stream *s, int err, uint32_t h2_code, bool by_peer,
                            void *ud)
{
    struct tt_conn *c = ud;

    (void)s;
    (void)h2_code;
    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (!conn_is_inbound(c) && c->state == TT_CONN_S_CONNECTING && err == TT_E_H2_REFUSED &&
        c->refused_retries < TT_CONN_REFUSED_RETRIES) {
        c->refused_retries++;
        TT_COUNTER_ADD(conn_counters(c)->pool.streams_refused, 1);
        tt__conn_tunnel_leave(c);
        tt__conn_pool_attach(c);
        return;
    }
    tt_h2_stream_release(c->stream);
    c->stream = NULL;
    if (by_peer)
        tt__side_ended(c, c->tls_side, UV_ECONNRESET);
    tt__conn_close(c, err, true);
}

const struct tt_h2_stream_callbacks tt__tunnel_callbacks = {
    .on_headers = tunnel_on_headers,
    .on_data = tt__tunnel_on_data,
    .on_end = tt__tunnel_on_data,
    .on_reset = tunnel_on_reset,
};

/* pool ops: opens an outbound link's carrier to `target`, like an outbound connection of
 * `like`'s listener, with the worker's newest snapshot (tt__pool_identity). */
static int pool_dial(struct tt_link *link, struct tt_conn *like, const struct tt_addr *target,
                     const char *expected_id)
{
    struct tt_conn *c = tt__conn_new(like->listener);

    if (c == NULL)
        return -ENOMEM;
    c->carrier = true;
    c->link = link;
    c->target = *target;
    c->expected_id = expected_id; /* the pool's destination keeps it */
    c->route = "link";
    snprintf(c->peer_addr, sizeof(c->peer_addr), "%.63s", target->text);
    tt__conn_track(c, like->worker->snapshot, false);
    tt__conn_start_connect(c);
    return 0;
}

/* pool ops: encrypts session bytes onto the carrier's socket. */
static int pool_send(struct tt_conn *c, const uint8_t *data, size_t len)
{
    int r = tt_tls_write(c->tls, data, len);

    return r == 0 ? tt__tls_flush(c) : r;
}

/* pool ops: the carrier takes more while nothing waits behind its write in flight: each
 * batch's ciphertext (one record) then moves into the queue whole, never outgrowing its
 * slab, as a plaintext read's does in a direct relay. Nothing after its close_notify. */
static bool pool_writable(struct tt_conn *c)
{
    return c->state == TT_CONN_S_RELAY && c->tls_side->queued.len == 0 && !c->close_notify_sent;
}

/* pool ops: the link is up: open the tunnel (its HEADERS go with the link's next flush). */
int tt__pool_ride(struct tt_conn *c, struct tt_h2 *h2)
{
    int err = 0;

    if (c->h1h2 != NULL) {
        /* An HTTP/1.x app's request: its stream opens in tt__h1_settle, outside the pool's
         * call (now, when the link was up at once; else on the kick). */
        c->h1_session = h2;
        if (!c->h1_settling) {
            tt__conn_enter(c, TT_CONN_S_RELAY);
            tt__h1_kick(c);
        }
        return 0;
    }
    c->stream = tt_h2_open_tunnel(h2, TT_POOL_PROTOCOL, c->target.text, NULL, 0,
                                  &tt__tunnel_callbacks, c, &err);
    if (c->stream == NULL) {
        tt__conn_close(c, err < 0 ? err : TT_E_LINK_CLOSED, true);
        return err < 0 ? err : TT_E_LINK_CLOSED;
    }
    return 0;
}

/* pool ops: the link c waited for failed (err), or its peer does not speak the token
 * (err 0): go direct, or fail as a connect would (a balanced service tries another
 * endpoint). */
static void pool_wait_failed(struct tt_conn *c, struct tt_conn *carrier, int err)
{
    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (carrier != NULL && carrier->hs_reason >= 0 && err != 0) {
        /* The link's handshake failed: the app connection's line says why. */
        c->hs_reason = carrier->hs_reason;
        free(c->link_detail);
        c->link_detail = strdup(tt_tls_error_detail(carrier->tls));
    }
    if (err == 0) {
        conn_go_direct(c);
        return;
    }
    tt__conn_connect_failed(c, err);
}

/* pool ops: the link under c's tunnel is gone (an HTTP/1.x app's stream is left to
 * tt__h1_lost, which may still read it). */
static void pool_lost(struct tt_conn *c, int err)
{
    if (c->h1h2 != NULL && c->state != TT_CONN_S_CLOSING) {
        tt__h1_lost(c, err);
        return;
    }
    if (c->stream != NULL) {
        tt_h2_stream_release(c->stream);
        c->stream = NULL;
    }
    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (!conn_is_inbound(c) && c->state == TT_CONN_S_CONNECTING) {
        tt__conn_connect_failed(c, err);
        return;
    }
    tt__side_ended(c, c->tls_side, UV_ECONNRESET);
    tt__conn_close(c, err, true);
}

/* pool ops: the carrier's link may be done: its tick runs on the next loop iteration. */
static void pool_wake(struct tt_conn *c)
{
    if (c->state == TT_CONN_S_RELAY)
        uv_timer_start(&c->timer, tt__on_timer, 0, 0);
}

/* pool ops: a link of the carrier's worker wants its deferred flush before the loop
 * waits. */
static void pool_defer(struct tt_conn *carrier)
{
    tt__worker_defer_writes(carrier->worker);
}

/* pool ops: a deferred flush failed: the carrier closes (its link with it). */
static void pool_broken(struct tt_conn *carrier, int err)
{
    if (carrier->state != TT_CONN_S_CLOSING)
        tt__conn_close(carrier, err, true);
}

/* pool ops: c's stream queue drained: it may read its app side again. */
void tt__pool_progress(struct tt_conn *c)
{
    tt__relay_progress(c);
}

const struct tt_pool_ops tt_conn_pool_ops = {
    .dial = pool_dial,
    .send = pool_send,
    .writable = pool_writable,
    .ride = tt__pool_ride,
    .wait_failed = pool_wait_failed,
    .lost = pool_lost,
    .wake = pool_wake,
    .progress = tt__pool_progress,
    .accept = tt__pool_accept,
    .defer = pool_defer,
    .broken = pool_broken,
};
