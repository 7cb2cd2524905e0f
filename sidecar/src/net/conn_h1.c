/* Outbound HTTP/1.x apps (pooling on, detected by their first bytes): each request is a
 * stream of its own on a link (http/h1h2.h translates), so that many app connections
 * share a few mTLS connections; and an app whose connection could not get through is told
 * why in an HTTP/1.x answer when its first bytes read as a request. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/util.h"
#include "http/detect.h"
#include "http/gate.h"
#include "http/h1.h"
#include "http/h1h2.h"
#include "http/h2.h"
#include "metrics/metrics.h"
#include "net/balancer.h"
#include "net/conn.h"
#include "net/conn_int.h"
#include "net/listener-t.h"
#include "net/pool.h"
#include "snapshot/snapshot.h"

static void h1_answer(struct tt_conn *c, int status, const char *reason, int err);

/* The status and x-tether-reason an app gets for a connection that ended with err before
 * it got through. */
static int refusal_answer(int err, const char **reason)
{
    if (err == TT_E_DENIED) {
        *reason = "policy_denied"; /* the peer sidecar's policy */
        return 403;
    }
    if (err == TT_E_NO_ENDPOINT)
        *reason = "no_endpoint"; /* every endpoint of the service failed or is ejected */
    else if (err == TT_E_TUNNEL_REFUSED)
        *reason = "upstream_unavailable"; /* the peer sidecar could not reach its workload */
    else if (err <= TT_E_TLS && err > TT_E_DENIED)
        *reason = "upstream_handshake_failed"; /* mTLS with the peer failed (identity...) */
    else
        *reason = "upstream_connect_failed";
    return 503;
}

/* Outbound: instead of the close tt__conn_close(err, reset) would give, an app connection that
 * never got through waits (TT_CONN_S_REFUSING, at most TT_CONN_REFUSAL_WAIT_MS) for its first
 * bytes: an HTTP/1.x request is answered with why (tt__refusal_read), anything else is reset
 * as before. What was set up towards the upstream is given up now. Returns true when it
 * took the connection over. */
bool tt__conn_refusal_start(struct tt_conn *c, int err, bool reset)
{
    if (c->refusal_err != 0 || conn_is_inbound(c) || c->carrier || c->plain || c->h1h2 != NULL ||
        (c->state != TT_CONN_S_CONNECTING && c->state != TT_CONN_S_HANDSHAKE) || !c->down.open ||
        !c->down.connected || c->down.read_eof || err == -ENOMEM || err == TT_E_CONN_LIMIT ||
        (c->closed_by != NULL && strcmp(c->closed_by, "client") == 0))
        return false;
    c->refusal_err = err;
    c->refusal_up_reset = reset; /* a failed handshake's alert still goes out */
    if (c->balancer_active) {
        tt_balancer_released(c->worker->balancer, &c->target);
        c->balancer_active = false;
    }
    if (c->tunnel) {
        tt__conn_tunnel_end(c, err, true);
        c->tunnel = false;
    }
    tt__side_set_reading(c, &c->up, false);
    tt__conn_enter(c, TT_CONN_S_REFUSING);
    if (c->early.len > 0) {
        /* Detection read the app's first bytes already: they are what is looked at. */
        tt_buf_move(&c->refusal_held, &c->early);
        tt__refusal_read(c, NULL, 0);
        if (c->state != TT_CONN_S_REFUSING)
            return true;
    }
    tt__side_set_reading(c, &c->down, true);
    return true;
}

/* REFUSING: the app's first bytes. An HTTP/1.x request line gets the answer (and the
 * connection closes after it, the bytes read so far consumed, so that the close is a FIN
 * and not a reset that could destroy the answer); anything else, or too long a wait for a
 * whole request line, is reset. The bytes are held apart from both sides' queues (the
 * upstream's may still hold handshake records being written): nothing of the app's ever
 * goes anywhere. */
void tt__refusal_read(struct tt_conn *c, const uint8_t *data, size_t n)
{
    struct tt_buf *held = &c->refusal_held;
    enum tt_detect_proto p;
    const char *reason = NULL;
    char answer[512];
    int status, len;

    if (n > 0 && tt_buf_append(held, data, n) < 0) {
        tt__conn_close(c, -ENOMEM, true);
        return;
    }
    p = tt_detect_check(tt_buf_head(held), held->len, TT_DETECT_LIMIT);
    if (p == TT_DETECT_MORE)
        return;
    if (p != TT_DETECT_HTTP1) {
        tt__conn_close(c, c->refusal_err, true);
        return;
    }
    status = refusal_answer(c->refusal_err, &reason);
    len = tt_h1_write_error(answer, sizeof(answer), status, reason, NULL, true);
    if (len < 0 || tt__side_send(c, &c->down, (const uint8_t *)answer, (size_t)len) < 0) {
        tt__conn_close(c, c->refusal_err, true);
        return;
    }
    TT_COUNTER_ADD(conn_counters(c)->refusals_answered, 1);
    tt__conn_close(c, c->refusal_err, false);
}

static const struct tt_h2_stream_callbacks h1_stream_callbacks;
static void h1_leave(struct tt_conn *c);

/* The current request of an HTTP/1.x app, for its request line and counters. */
struct h1_request {
    char method[16];
    char path[256];          /* truncated for the log */
    uint64_t start_us;       /* its head arrived */
    uint64_t request_bytes;  /* body bytes sent on its (last) stream */
    uint64_t response_bytes; /* body bytes given to the app */
    int status;              /* its response's status, 0 before */
    bool active;             /* begun and not recorded yet */
};

/* The current request is over with `status` (0: none went out), `reason` when the
 * sidecar answered it: counted on the outbound listener for the identity that answered
 * (README "Per-request metrics"), logged with the endpoint it went to. */
void tt__h1_record(struct tt_conn *c, int status, const char *reason)
{
    struct h1_request *q = c->h1_rq;
    struct tt_gate_request rq;

    if (q == NULL || !q->active)
        return;
    q->active = false;
    rq = (struct tt_gate_request){
        .method = q->method,
        .path = q->path,
        .status = status,
        .request_bytes = q->request_bytes,
        .response_bytes = q->response_bytes,
        .duration_us = tt__conn_now_us(c) - q->start_us,
        .reason = reason,
    };
    tt__request_over(c, c->expected_id, &rq);
}

/* The translator refused the app's bytes (400/431, already answered): counted and logged
 * as a refused request. */
static void h1_refused(struct tt_conn *c)
{
    enum tt_h1_reason why = tt_h1h2_reason(c->h1h2);
    struct tt_gate_request rq = {
        .method = c->h1_rq->active ? c->h1_rq->method : "",
        .path = c->h1_rq->active ? c->h1_rq->path : "",
        .status = tt_h1_reason_status(why),
        .reason = tt_h1_reason_name(why),
        .refused_reason = (int)why,
    };

    c->h1_rq->active = false;
    tt__request_over(c, c->expected_id, &rq);
}

/* Has tt__h1_settle and tt__h1_progress run before the loop next waits, outside the pool's
 * and the session's calls under way (tt__conn_kick). Only while relaying: in CONNECTING
 * tt__pool_ride kicks when the link comes. */
void tt__h1_kick(struct tt_conn *c)
{
    if (c->state != TT_CONN_S_RELAY)
        return;
    c->h1_kicked = true;
    tt__conn_kick(c);
}

/* Sends what the link's session has queued after a stream was touched. Returns 0 or <0. */
static int h1_flush(struct tt_conn *c)
{
    if (c->member.link != NULL)
        tt_link_flush_soon(c->member.link);
    return 0;
}

/* The current request's --request-timeout deadline, when there is one, starts now (a
 * retry keeps the first); tt__conn_enter(RELAY) arms the timer for it. */
static void h1_arm_deadline(struct tt_conn *c)
{
    uint64_t timeout = c->listener->cfg->request_timeout_ms;

    if (timeout == 0)
        timeout = conn_settings(c)->request_timeout_ms;
    if (timeout != 0 && timeout != TT_REQUEST_TIMEOUT_NONE && c->h1_deadline_ms == 0)
        c->h1_deadline_ms = uv_now(&c->worker->loop) + timeout;
}

/* Inside h1_on_request, the common case: a link to the request's destination is up with
 * room, so the request rides it at once (tt__pool_ride leaves the session in h1_session) and
 * its stream opens in the same call, without tt__h1_settle reading the request a second time.
 * A balanced service picks its endpoint first. Anything more (no endpoint, a link to dial
 * or wait for, a destination gone direct) is left to tt__h1_settle: returns false. */
static bool h1_ride_now(struct tt_conn *c)
{
    int r;

    if (c->state != TT_CONN_S_RELAY || c->direct || c->member.link != NULL)
        return false;
    if (c->service != NULL && !c->balancer_active && !tt__conn_pick_endpoint(c))
        return false;
    c->h1_settling = true; /* tt__pool_ride: the stream opens here, no timer */
    r = tt_pool_attach_up(c->worker->pool, &c->member, &c->target, c->expected_id,
                          tt__pool_identity(c), uv_now(&c->worker->loop));
    c->h1_settling = false;
    if (r != 1 || c->h1_session == NULL)
        return false;
    c->tunnel = true;
    h1_arm_deadline(c);
    tt__conn_enter(c, TT_CONN_S_RELAY); /* (re)armed for the deadline */
    return true;
}

/* h1h2: a request's head is complete. It opens its stream on the link tt__pool_ride gave (or
 * one up now: h1_ride_now), or waits for tt__h1_settle: to find it a link, or to relay the
 * rest as bytes (upgrade). */
static int h1_on_request(void *ud, const struct tt_h1h2_request *rq)
{
    struct tt_conn *c = ud;
    struct tt_h2_request req = {
        .method = rq->method,
        .scheme = "http",
        .authority = rq->authority,
        .path = rq->path,
        .headers = rq->fields,
        .nheaders = rq->n_fields,
        .end_stream = !rq->has_body,
    };
    int err = 0;

    c->h1_idempotent = rq->idempotent;
    c->h1_has_body = rq->has_body;
    if (!c->h1_rq->active) {
        c->h1_rq->active = true;
        c->h1_rq->start_us = tt__conn_now_us(c);
        c->h1_rq->response_bytes = 0;
        tt_str_copy(c->h1_rq->method, sizeof(c->h1_rq->method), rq->method);
        tt_str_copy(c->h1_rq->path, sizeof(c->h1_rq->path),
                    rq->path != NULL ? rq->path : rq->authority);
    }
    c->h1_rq->request_bytes = 0; /* a retry sends the body again */
    if (c->h1_sink)
        return 0; /* read to its end and dropped: the sidecar answers it (h1_answer) */
    if (rq->upgrade) {
        c->h1_upgrade = true;
        return TT_H1H2_WAIT;
    }
    if (c->h1_session == NULL && !h1_ride_now(c)) {
        c->h1_need_link = true;
        return TT_H1H2_WAIT;
    }
    c->stream = tt_h2_open(c->h1_session, &req, &h1_stream_callbacks, c, &err);
    c->h1_session = NULL;
    if (c->stream == NULL && err == TT_E_H2_GOAWAY) {
        /* The link stopped taking streams since it was given (a GOAWAY, sent or received:
         * a rotation retired it): nothing of the request went out, so it waits for another
         * link. Unbounded, as no retired link is given again. */
        h1_leave(c);
        c->h1_need_link = true;
        return TT_H1H2_WAIT;
    }
    if (c->stream == NULL)
        return err < 0 ? err : TT_E_LINK_CLOSED;
    return 0;
}

/* h1h2: a piece of the request body, onto its stream. */
static int h1_on_body(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    if (c->h1_sink || c->h1_retrying)
        return 0;
    c->h1_rq->request_bytes += len;
    return tt__stream_write(c, data, len);
}

/* h1h2: the request is complete: a body's stream is ended (one without a body was opened
 * ended). */
static int h1_on_end(void *ud)
{
    struct tt_conn *c = ud;

    if (c->h1_sink || !c->h1_has_body || c->h1_retrying)
        return 0;
    return c->stream != NULL ? tt_h2_stream_end(c->stream) : TT_E_LINK_CLOSED;
}

/* h1h2: bytes for the app. */
static int h1_to_app(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    touch(c);
    if (tt_buf_append(&c->down.queued, data, len) < 0)
        return -ENOMEM;
    tt__app_push_soon(c);
    return 0;
}

/* The current request's stream and place in the pool are given up (its response is
 * complete, or it failed): the next request, or a retry, picks its endpoint and link
 * anew. */
static void h1_leave(struct tt_conn *c)
{
    if (c->balancer_active) {
        tt_balancer_released(c->worker->balancer, &c->target);
        c->balancer_active = false;
    }
    if (c->tunnel)
        tt__conn_tunnel_leave(c); /* releases the stream: a CANCEL unless our side ended */
    else if (c->stream != NULL)
        tt_h2_stream_release(c->stream);
    c->stream = NULL;
    c->h1_session = NULL;
    c->h1_head = false;
}

/* The current request is over (answered): the next one starts with fresh retry budgets. */
static void h1_request_over(struct tt_conn *c)
{
    h1_leave(c);
    c->h1_retrying = false;
    c->tried = 0;
    c->attempts = 0;
    c->refused_retries = 0;
    c->h1_deadline_ms = 0;
}

/* What a call into the translator returned: 0 goes on; TT_E_HTTP means the app's bytes
 * were refused and answered (400/431: counted; the connection ends after the answer);
 * anything else ends the connection now. Returns false when it did. */
static bool h1_check(struct tt_conn *c, int r)
{
    if (r == TT_E_HTTP) {
        h1_refused(c);
        r = 0;
    }
    if (r == 0)
        r = h1_flush(c);
    if (r < 0) {
        tt__conn_close(c, r, true);
        return false;
    }
    return true;
}

/* The sidecar answers the current request itself with status and reason (no stream can
 * take it): its stream and place in the pool are given up first, and the request is read
 * again to its end without being sent (h1_sink), so that a complete one leaves the
 * connection open for the next. A response already begun can only be cut: the connection
 * is reset. */
static void h1_answer(struct tt_conn *c, int status, const char *reason, int err)
{
    int r;

    h1_request_over(c);
    c->h1_need_link = false;
    if (c->state != TT_CONN_S_RELAY)
        tt__conn_enter(c, TT_CONN_S_RELAY);
    c->h1_sink = true;
    r = tt_h1h2_rewind(c->h1h2);
    c->h1_sink = false;
    if (r < 0 && r != -EAGAIN) { /* -EAGAIN: not retained; the answer closes */
        tt__conn_close(c, r, true);
        return;
    }
    r = tt_h1h2_answer(c->h1h2, status, reason, NULL);
    if (r == -EINVAL) {
        tt__conn_close(c, err, true);
        return;
    }
    tt__h1_record(c, status, reason);
    TT_COUNTER_ADD(conn_counters(c)->refusals_answered, 1);
    if (!h1_check(c, r))
        return;
    tt__h1_kick(c); /* the next request, read by the answer, may wait for a link */
    tt__relay_progress(c);
}

/* No endpoint or link could take the current request (err, as for a connection that could
 * not get through: refusal_answer): the app is told why, and may send the next one. */
void tt__h1_fail(struct tt_conn *c, int err)
{
    const char *reason = NULL;
    int status = refusal_answer(err, &reason);

    tt_log(TT_LOG_WARN, "request_failed", TT_LS("listener", c->listener->cfg->name),
           TT_LS("upstream", c->target.text), TT_LS("error", tt_strerror(err)),
           TT_LS("reason", reason));
    h1_answer(c, status, reason, err);
}

/* The current request's response was cut short (err) after a byte of it went to the app:
 * the connection ends with a FIN after the bytes the app was sent when the response's
 * framing shows the cut (a reset could destroy earlier answers the app has not read yet:
 * pipelined ones, a POST's), the app's further bytes read and dropped until it closes;
 * with a reset when the body was delimited by the close. */
static void h1_cut(struct tt_conn *c, int err)
{
    if (!tt_h1h2_cut(c->h1h2)) {
        tt__conn_close(c, err, true);
        return;
    }
    tt__h1_record(c, 0, NULL); /* unanswered, as when the connection ends under it */
    h1_request_over(c);        /* its stream, if any, is cancelled */
    c->h1_need_link = false;
    if (c->state != TT_CONN_S_RELAY)
        tt__conn_enter(c, TT_CONN_S_RELAY);
    tt__relay_progress(c); /* tt__h1_progress: the FIN once the queue has drained */
}

/* The current request is sent again from its first byte on a new stream (counted against
 * TT_CONN_REFUSED_RETRIES): its endpoint and link are picked anew on the kick. */
static void h1_retry(struct tt_conn *c)
{
    c->h1_retrying = true;
    c->refused_retries++;
    TT_COUNTER_ADD(conn_counters(c)->pool.requests_retried, 1);
    h1_leave(c);
    c->h1_need_link = true;
    if (c->state != TT_CONN_S_RELAY)
        tt__conn_enter(c, TT_CONN_S_RELAY);
    tt__h1_kick(c);
}

/* The current request's stream ended before its response did (err): one the peer never
 * processed (refused), or an idempotent one with no byte answered yet, is sent again on a
 * new stream (h1_retry); anything else unanswered gets 502; a response under way is cut
 * (h1_cut). */
static void h1_stream_failed(struct tt_conn *c, int err, bool refused)
{
    bool answered = tt_h1h2_responded(c->h1h2);

    if (!answered && (refused || c->h1_idempotent) &&
        c->refused_retries < TT_CONN_REFUSED_RETRIES) {
        h1_retry(c);
        return;
    }
    if (answered) {
        tt__side_ended(c, c->tls_side, UV_ECONNRESET);
        h1_cut(c, err);
        return;
    }
    h1_answer(c, 502, "upstream_reset", err);
}

static int h1_pump_response(struct tt_conn *c, bool whole);

/* pool ops lost, for an HTTP/1.x app: the link under its request is gone (its stream, if
 * any, is still readable: the session is freed after). A response that had arrived whole
 * goes to the app all at once: a peer closes a retired link once its streams are over,
 * before the app may have read the end of one. Before the request's stream opened it is a
 * failed connect (another endpoint, or the app is told); after, h1_stream_failed
 * decides. */
void tt__h1_lost(struct tt_conn *c, int err)
{
    bool opened = c->state == TT_CONN_S_RELAY && c->h1_session == NULL;

    c->h1_session = NULL;
    if (opened && c->stream != NULL && c->h1_head && tt_h2_stream_peer_ended(c->stream)) {
        if (h1_check(c, h1_pump_response(c, true)))
            tt__relay_progress(c);
        return;
    }
    if (opened)
        h1_stream_failed(c, err, false);
    else
        tt__conn_connect_failed(c, err);
}

/* The current request's stream opens on the link tt__pool_ride gave: the request is read again
 * from its first byte (tt_h1h2_rewind), h1_on_request opens the stream this time, and its
 * body follows. */
static void h1_open(struct tt_conn *c)
{
    int r;

    h1_arm_deadline(c);
    tt__conn_enter(c, TT_CONN_S_RELAY); /* (re)armed for the deadline */
    c->h1_retrying = false;
    r = tt_h1h2_rewind(c->h1h2);
    c->h1_session = NULL;
    if (r == -EAGAIN) {
        h1_answer(c, 502, "upstream_reset", TT_E_LINK_CLOSED); /* too long to send again */
        return;
    }
    (void)h1_check(c, r);
}

/* The current request's deadline (--request-timeout) passed: one not answered yet gets
 * 504 request_timeout; a response under way is cut (h1_cut). Its stream is cancelled. */
void tt__h1_timed_out(struct tt_conn *c)
{
    c->h1_deadline_ms = 0;
    tt_log(TT_LOG_WARN, "request_timeout", TT_LS("listener", c->listener->cfg->name),
           TT_LS("upstream", c->target.text),
           TT_LS("answered", tt_h1h2_responded(c->h1h2) ? "partly" : "no"));
    if (tt_h1h2_responded(c->h1h2)) {
        h1_cut(c, TT_E_TIMEOUT);
        return;
    }
    h1_answer(c, 504, "request_timeout", TT_E_TIMEOUT);
}

/* The current request upgrades (CONNECT, WebSocket), or the peer serves its port opaque:
 * the rest of the connection, from that request's first byte, is relayed as bytes over a
 * tunnel (or a direct connection), as any other protocol is. */
static void h1_hand_over(struct tt_conn *c)
{
    int r = tt_h1h2_take_raw(c->h1h2, &c->early);

    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }
    h1_leave(c);
    tt_h1h2_free(c->h1h2);
    c->h1h2 = NULL;
    c->h1_upgrade = false;
    c->h1_need_link = false;
    c->route = "pool";
    tt__side_set_reading(c, &c->down, false);
    tt__conn_start_connect(c);
}

/* Does what the translator's callbacks left to do, outside any pool or session call: a
 * request that waits for a link gets one (riding at once opens its stream here), an
 * upgrade hands the connection over. Loops while each step lets the next request start
 * (an answer of the sidecar's own reads the next one). */
void tt__h1_settle(struct tt_conn *c)
{
    while (c->h1h2 != NULL && c->state != TT_CONN_S_CLOSING) {
        if (c->h1_upgrade) {
            h1_hand_over(c);
            return;
        }
        if (c->h1_session != NULL) {
            h1_open(c);
            continue;
        }
        if (!c->h1_need_link || c->state != TT_CONN_S_RELAY)
            return;
        c->h1_need_link = false;
        c->h1_settling = true;
        tt__conn_start_connect(c); /* picks the endpoint; attaches; tt__pool_ride may run inside */
        c->h1_settling = false;
    }
}

/* After the translator took the app's bytes or end (r): refusals counted, errors end the
 * connection, then what the callbacks asked for is done. */
static void h1_after(struct tt_conn *c, int r)
{
    if (!h1_check(c, r))
        return;
    tt__h1_settle(c);
    tt__relay_progress(c);
    /* Waiting for a link (no tt__relay_progress then): the app is not read past what the
     * translator holds, nor at all for a retry (h1_retrying). */
    if (c->state == TT_CONN_S_CONNECTING && c->h1h2 != NULL &&
        (c->h1_retrying || !tt_h1h2_wants_app(c->h1h2)))
        tt__side_set_reading(c, &c->down, false);
}

/* Bytes from the app (read in RELAY and while a request waits for its link; dropped once
 * the translator is done). */
void tt__h1_app_read(struct tt_conn *c, const uint8_t *data, size_t n)
{
    if (tt_h1h2_done(c->h1h2)) {
        tt__relay_progress(c); /* read until the app closes: no reset destroys the answer */
        return;
    }
    h1_after(c, tt_h1h2_from_app(c->h1h2, (const char *)data, n));
}

/* The app closed its side: the current response still goes out, then our FIN; a request
 * it cut short is given up. */
void tt__h1_app_eof(struct tt_conn *c)
{
    int r;

    c->down.read_eof = true;
    if (tt_h1h2_done(c->h1h2)) {
        tt__relay_progress(c);
        return;
    }
    r = tt_h1h2_app_eof(c->h1h2);
    if (r == TT_E_HTTP) {
        tt__conn_close(c, r, true);
        return;
    }
    h1_after(c, r);
}

/* Moves the current response to the app while its queue has room (all of what the stream
 * holds when `whole`): the head once it is known whether a body follows, the body, and at
 * the stream's end the response's end, after which the next request may start (inside).
 * Returns 0, or as tt_h1h2_response_end() (TT_E_HTTP: the next request was refused and
 * answered), or <0. */
static int h1_pump_response(struct tt_conn *c, bool whole)
{
    struct tt_h2_stream *s = c->stream;
    int r;

    if (s == NULL || !c->h1_head)
        return 0;
    if (!tt_h1h2_responded(c->h1h2)) {
        size_t k = 0;
        struct tt_h2_header *fields = tt__regular_fields(s, false, &k);
        if (fields == NULL)
            return -ENOMEM;
        r = tt_h1h2_respond(c->h1h2, tt_h2_stream_status(s), fields, k, tt_h2_stream_eof(s));
        free(fields);
        if (r < 0)
            return r;
    }
    while (tt_h2_stream_readable(s) > 0 &&
           (whole || side_queue_len(&c->down) < TT_CONN_QUEUE_MAX)) {
        const uint8_t *data;
        size_t n = tt_h2_stream_peek(s, &data);
        r = tt_h1h2_response_body(c->h1h2, (const char *)data, n);
        if (r < 0)
            return r;
        c->h1_rq->response_bytes += n;
        tt_h2_stream_consume(s, n);
        tt__tunnel_count(c->tls_side, n, true);
    }
    if (!tt_h2_stream_eof(s))
        return 0;
    tt__h1_record(c, tt_h2_stream_status(s), NULL);
    h1_request_over(c);
    return tt_h1h2_response_end(c->h1h2);
}

/* tt__relay_progress() of an HTTP/1.x app: the response moves on; what needs a link or a
 * hand-over waits for the kick (this may run inside a session's call); the app is read
 * while the translator wants its bytes and the stream's queue has room; once the
 * translator is done the app gets our FIN, and the connection closes when the app's side
 * has ended too. */
void tt__h1_progress(struct tt_conn *c)
{
    struct tt_side *app = &c->down;
    bool room, done;

    if (!h1_check(c, h1_pump_response(c, false)) || c->state != TT_CONN_S_RELAY)
        return; /* h1_check flushed the window given back */
    if (c->h1_need_link || c->h1_upgrade || c->h1_session != NULL)
        tt__h1_kick(c);
    done = tt_h1h2_done(c->h1h2);
    if (done)
        app->want_shutdown = true;
    tt__side_maybe_shutdown(c, app);
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (done && app->shutdown_done && app->read_eof) {
        tt__conn_close(c, 0, false);
        return;
    }
    /* A retry waiting for its link reads no more of the app: what it holds must stay
     * within the bytes the translator retains to send again. */
    room = c->stream != NULL ? tt_h2_stream_queued(c->stream) < TT_CONN_QUEUE_MAX : !c->h1_retrying;
    if (!room)
        c->member.blocked = true; /* the link wakes it (tt__pool_progress) */
    tt__side_set_reading(c, app, !app->read_eof && (done || (room && tt_h1h2_wants_app(c->h1h2))));
}

/* The response head arrived. A peer that could not reach its workload processed nothing:
 * a balanced service tries another endpoint, as after a failed connect, and the app is
 * told 503 upstream_unavailable when none is left, as for a tunnel; a peer that serves
 * the port opaque takes the rest as a tunnel. Otherwise the head goes to the app: now when
 * its length frames it, else once it is known whether a body follows (on_end may come next
 * in the same frame): on the kick, or at on_end. */
static void h1_stream_on_headers(struct tt_h2_stream *s, void *ud)
{
    struct tt_conn *c = ud;
    const char *why = tt_h2_stream_header(s, "x-tether-reason");
    int status = tt_h2_stream_status(s);

    if (why != NULL && !tt_h1h2_responded(c->h1h2)) {
        if ((status == 502 || status == 503) &&
            (strcmp(why, "upstream_connect_failed") == 0 || strcmp(why, "connection_limit") == 0)) {
            TT_COUNTER_ADD(conn_counters(c)->pool.streams_refused, 1);
            tt__conn_connect_failed(c, TT_E_TUNNEL_REFUSED);
            return;
        }
        if (status == 501 && strcmp(why, "opaque_port") == 0) {
            h1_leave(c);
            c->h1_upgrade = true; /* tt__h1_settle hands the connection over */
            tt__h1_kick(c);
            return;
        }
    }
    c->h1_head = true;
    if (status == 204 || status == 304 || tt_h2_stream_header(s, "content-length") != NULL)
        tt__relay_progress(c); /* framed by its length already: the head goes now */
    else
        tt__h1_kick(c);
}

/* The request's stream was reset (err TT_E_H2_REFUSED: the peer did not process it). */
static void h1_stream_on_reset(struct tt_h2_stream *s, int err, uint32_t h2_code, bool by_peer,
                               void *ud)
{
    struct tt_conn *c = ud;

    (void)h2_code;
    (void)by_peer;
    tt_h2_stream_release(s);
    c->stream = NULL;
    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (err == TT_E_H2_REFUSED)
        TT_COUNTER_ADD(conn_counters(c)->pool.streams_refused, 1);
    h1_stream_failed(c, err, err == TT_E_H2_REFUSED);
}

static const struct tt_h2_stream_callbacks h1_stream_callbacks = {
    .on_headers = h1_stream_on_headers,
    .on_data = tt__tunnel_on_data, /* tt__relay_progress: the response moves on */
    .on_end = tt__tunnel_on_data,
    .on_reset = h1_stream_on_reset,
};

/* Outbound: the app's first bytes are an HTTP/1.x request: its requests become streams.
 * The connection relays from now on. */
void tt__h1_start(struct tt_conn *c)
{
    struct tt_h1h2_io io = {c, h1_on_request, h1_on_body, h1_on_end, h1_to_app};
    int r;

    c->h1h2 = tt_h1h2_new(&io, c->target.text);
    c->h1_rq = calloc(1, sizeof(*c->h1_rq));
    if (c->h1h2 == NULL || c->h1_rq == NULL) {
        tt__conn_close(c, -ENOMEM, true);
        return;
    }
    c->route = "http";
    c->verdict = "allow";
    tt__conn_enter(c, TT_CONN_S_RELAY);
    r = tt_h1h2_from_app(c->h1h2, (const char *)tt_buf_head(&c->early), c->early.len);
    tt_buf_consume(&c->early, c->early.len);
    if (r == 0 && c->down.read_eof)
        r = tt_h1h2_app_eof(c->h1h2);
    h1_after(c, r);
}
