/* The connection state machine (conn.h). Data path rules:
 * - ciphertext from the TLS side's socket is read straight into the TLS engine's input
 *   buffer (tt_tls_input_tail), which the engine's BIO hands to BoringSSL: no copy of ours;
 * - plaintext-side reads land in the worker's scratch buffer, at most TT_CONN_PLAIN_READ
 *   bytes, so that their ciphertext fits one pooled slab, and are encrypted before the
 *   callback returns;
 * - writes first try the socket directly; what the kernel does not take is handed to the
 *   side's queue: the TLS engine's output buffer itself is moved there (tt_buf_move), never
 *   copied, and decrypted plaintext is appended only while it fits the queue's slab;
 * - so relaying allocates nothing once the thread's slab pool is warm (the pool's counters
 *   in /stats show it), and a side stops reading while the other side's queue is full
 *   (backpressure).
 * No SSL_ calls here: tls.c does the TLS, this file moves its bytes. */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
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
#include "net/listener-t.h"
#include "net/origdst.h"
#include "net/pool.h"
#include "net/worker-t.h"
#include "policy/policy.h"
#include "snapshot/services.h"
#include "snapshot/snapshot.h"
#include "tls/crl.h"
#include "tls/identity.h"
#include "tls/revocations.h"
#include "tls/tls.h"

#define TT_CONN_QUEUE_MAX (64 * 1024) /* bytes queued for a side before its source pauses */
/* TLS 1.3 adds 22 bytes per record of at most 16 KiB (RFC 8446 §5.2): a plaintext read of
 * this size encrypts into two records that fit one slab. */
#define TT_CONN_PLAIN_READ       (TT_BUF_SLAB - 128)
#define TT_TLS_RECORD_MAX        16384 /* most plaintext one tt_tls_read returns */
#define TT_CONN_CONNECT_ATTEMPTS 4     /* endpoints a balanced connection tries at most */
#define TT_CONN_REFUSED_RETRIES  1     /* a tunnel the peer did not process is retried once */
#define TT_CONN_REFUSAL_WAIT_MS  500   /* a refused app connection: its first bytes, at most */

/* A gRPC request stream's workload half: an h2c session (prior knowledge) to the workload
 * carrying that one request. gRPC needs HTTP/2 end to end (trailers carry its status), so
 * such a stream is relayed stream to stream instead of translated (http/h2h1.h serves
 * the other requests). */
struct tt_h2_upstream {
    struct tt_h2 *session;
    struct tt_h2_stream *stream; /* the request on it */
    int status;                  /* the workload's :status, 0 before its head */
    bool responded;              /* the caller's stream was answered */
    bool request_ended;          /* END_STREAM went to the workload */
    bool done;                   /* the response ended towards the caller */
    uint64_t start_us, request_bytes, response_bytes;
};

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void on_flush_idle(uv_idle_t *idle);
static void conn_free(struct tt_conn *c);
static int h2up_start(struct tt_conn *c);
static int h2up_request_body(struct tt_conn *c, const uint8_t *data, size_t n);
static int h2up_request_end(struct tt_conn *c);
static int h2up_from_workload(struct tt_conn *c, const uint8_t *data, size_t n);
static int h2up_pump(struct tt_conn *c);
static void h2up_free(struct tt_h2_upstream *up);
static void relay_progress(struct tt_conn *c);
static void workload_park_check(struct tt_conn *c);
static void conn_close(struct tt_conn *c, int err, bool reset);
static void conn_connect_failed(struct tt_conn *c, int status);
static bool conn_refusal_start(struct tt_conn *c, int err, bool reset);
static void h1_app_read(struct tt_conn *c, const uint8_t *data, size_t n);
static void h1_app_eof(struct tt_conn *c);
static void h1_progress(struct tt_conn *c);
static void h1_settle(struct tt_conn *c);
static void h1_fail(struct tt_conn *c, int err);
static void h1_lost(struct tt_conn *c, int err);
static void h1_timed_out(struct tt_conn *c);
static int conn_send_early(struct tt_conn *c);
static void outbound_detect(struct tt_conn *c, const uint8_t *data, size_t n, bool final);
static void refusal_read(struct tt_conn *c, const uint8_t *data, size_t n);
static void detect_done(struct tt_conn *c, const uint8_t *data, size_t n);
static bool outbound_detects(struct tt_conn *c);
static void h1_start(struct tt_conn *c);
static void conn_gate_settle(struct tt_conn *c);
static bool port_listed(const uint16_t *ports, size_t n, uint16_t port);
static void conn_start_connect(struct tt_conn *c);
static void conn_start_relay(struct tt_conn *c);
static void carrier_progress(struct tt_conn *c);
static void conn_tunnel_leave(struct tt_conn *c);
static void conn_pool_attach(struct tt_conn *c);
static void conn_tunnel_end(struct tt_conn *c, int err, bool reset);
static void on_untracked_closed(uv_handle_t *handle);
static void conn_track(struct tt_conn *c, struct tt_snapshot *snapshot, bool counted);
static struct tt_conn *conn_new(struct tt_listener *l);

static struct tt_listener_counters *conn_counters(struct tt_conn *c)
{
    return &c->worker->metrics->listeners[c->listener->index];
}

static const struct tt_worker_settings *conn_settings(struct tt_conn *c)
{
    return c->worker->settings;
}

static bool conn_is_inbound(const struct tt_conn *c)
{
    return c->listener->cfg->kind == TT_LISTENER_INBOUND;
}

/* The verified SPIFFE ID of the TLS-side peer: the session's, or a tunnel's carrier's;
 * "" when there is none (plaintext). */
static const char *conn_peer_id(const struct tt_conn *c)
{
    if (c->tls != NULL)
        return tt_tls_peer_id(c->tls);
    return c->tunnel_peer_id != NULL ? c->tunnel_peer_id : "";
}

static size_t side_queue_len(const struct tt_side *s)
{
    return s->inflight.len + s->queued.len;
}

static void touch(struct tt_conn *c)
{
    c->last_activity_ms = uv_now(&c->worker->loop);
}

/* The access line's name of side s. */
static const char *side_name(const struct tt_conn *c, const struct tt_side *s)
{
    return s == &c->down ? "client" : "upstream";
}

/* Side s ended its stream (FIN) or failed (reset_err: a read or write error it caused,
 * e.g. UV_ECONNRESET; 0 for a FIN): the first such event says who closed the connection. */
static void side_ended(struct tt_conn *c, const struct tt_side *s, int reset_err)
{
    if (c->closed_by == NULL)
        c->closed_by = side_name(c, s);
    if (c->reset_by == NULL &&
        (reset_err == UV_ECONNRESET || reset_err == UV_ECONNREFUSED || reset_err == UV_EPIPE))
        c->reset_by = side_name(c, s);
}

/* The handshake failed for `reason`: counted with what the peer presented, and kept for
 * the access line. */
static void conn_hs_failed(struct tt_conn *c, enum tt_hs_reason reason)
{
    c->hs_reason = (int)reason;
    tt_metrics_hs_failure(c->worker->metrics, c->listener->index, reason, c->peer_addr,
                          tt_tls_peer_id(c->tls), tt_tls_peer_serial(c->tls),
                          tt_tls_peer_issuer(c->tls));
}

/* ---- timers ------------------------------------------------------------------------ */

static void on_timer(uv_timer_t *timer)
{
    struct tt_conn *c = tt_container_of(timer, struct tt_conn, timer);
    uint64_t now = uv_now(&c->worker->loop);

    switch (c->state) {
    case TT_CONN_S_HANDSHAKE:
        conn_hs_failed(c, TT_HS_TIMEOUT);
        conn_close(c, TT_E_TIMEOUT, true);
        break;
    case TT_CONN_S_CONNECTING:
        if (c->reused_up) {
            c->reused_up = false; /* a kept workload connection: no connect to wait for */
            conn_start_relay(c);
            break;
        }
        conn_connect_failed(c, UV_ETIMEDOUT);
        break;
    case TT_CONN_S_DETECT:
        detect_done(c, NULL, 0); /* said nothing: a server-first protocol, plaintext */
        break;
    case TT_CONN_S_REFUSING:
        conn_close(c, c->refusal_err, true); /* said nothing that reads as HTTP/1.x */
        break;
    case TT_CONN_S_RELAY: {
        if (c->h1_kicked) {
            c->h1_kicked = false;
            h1_settle(c);
            relay_progress(c);
            if (c->state != TT_CONN_S_RELAY)
                break;
        }
        if (c->carrier) {
            int r = tt_link_tick(c->link, now);
            if (r < 0)
                conn_close(c, r, true);
            else if (r == 1)
                carrier_progress(c); /* closes once the GOAWAY is out */
            if (c->state == TT_CONN_S_RELAY)
                uv_timer_start(&c->timer, on_timer, tt_link_tick_ms(c->link), 0);
            break;
        }
        if (c->h1_deadline_ms != 0 && now >= c->h1_deadline_ms) {
            h1_timed_out(c);
            if (c->state != TT_CONN_S_RELAY || c->h1_kicked)
                break;
        }
        /* The idle deadline slides with activity; re-arm for what is left of it (or for
         * the request's deadline, when that comes first). */
        uint64_t idle = conn_settings(c)->idle_timeout_ms;
        uint64_t since = now - c->last_activity_ms;
        if (since >= idle) {
            conn_close(c, UV_ETIMEDOUT, true);
        } else {
            uint64_t wait = idle - since;
            if (c->h1_deadline_ms != 0 && c->h1_deadline_ms - now < wait)
                wait = c->h1_deadline_ms - now;
            uv_timer_start(&c->timer, on_timer, wait, 0);
        }
        break;
    }
    default:
        break;
    }
}

/* Enters `state` and arms its deadline. */
static void conn_enter(struct tt_conn *c, enum tt_conn_state state)
{
    const struct tt_worker_settings *cfg = conn_settings(c);
    uint64_t timeout = 0;

    c->state = state;
    c->phase_ms = uv_now(&c->worker->loop);
    switch (state) {
    case TT_CONN_S_HANDSHAKE:
        timeout = cfg->handshake_timeout_ms;
        break;
    case TT_CONN_S_CONNECTING:
        /* An outbound tunnel may wait for its link's connect and handshake too. */
        timeout = cfg->connect_timeout_ms +
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
    if (timeout > 0)
        uv_timer_start(&c->timer, on_timer, timeout, 0);
}

/* ---- writing ----------------------------------------------------------------------- */

static void side_start_write(struct tt_conn *c, struct tt_side *s);

static void on_write(uv_write_t *req, int status)
{
    struct tt_side *s = tt_container_of(req, struct tt_side, write_req);
    struct tt_conn *c = s->tcp->data;

    if (c->state == TT_CONN_S_CLOSING)
        return; /* cancelled by uv_close; buffers are freed with the connection */
    s->bytes_written += s->inflight.len;
    if (s == &c->down)
        TT_COUNTER_ADD(conn_counters(c)->bytes_out, s->inflight.len);
    tt_buf_consume(&s->inflight, s->inflight.len);
    if (status < 0) {
        side_ended(c, s, status);
        conn_close(c, status, true);
        return;
    }
    side_start_write(c, s);
    relay_progress(c);
}

/* Hands the queued bytes to uv_write unless a write is already in flight. */
static void side_start_write(struct tt_conn *c, struct tt_side *s)
{
    if (s->inflight.len > 0 || s->queued.len == 0)
        return;
    struct tt_buf tmp = s->inflight;
    s->inflight = s->queued;
    s->queued = tmp;

    uv_buf_t b = uv_buf_init((char *)tt_buf_head(&s->inflight), (unsigned)s->inflight.len);
    int r = uv_write(&s->write_req, (uv_stream_t *)s->tcp, &b, 1, on_write);
    if (r < 0)
        conn_close(c, r, true);
}

/* Writes data[0..len) on side s straight to the socket when nothing is queued there (a
 * queued byte must go first). Returns the bytes the kernel took (0 when it took none or
 * a queue waits), or <0 (the caller closes the connection). */
static ssize_t side_try_write(struct tt_conn *c, struct tt_side *s, const uint8_t *data, size_t len)
{
    if (s->inflight.len > 0 || s->queued.len > 0)
        return 0;
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int r = uv_try_write((uv_stream_t *)s->tcp, &b, 1);
    if (r == UV_EAGAIN)
        return 0;
    if (r < 0)
        return r;
    s->bytes_written += (uint64_t)r;
    if (s == &c->down)
        TT_COUNTER_ADD(conn_counters(c)->bytes_out, (uint64_t)r);
    return r;
}

/* Sends data on side s: straight to the socket when nothing is queued, the rest copied
 * into the queue. Returns 0 or <0 (the caller closes the connection). */
static int side_send(struct tt_conn *c, struct tt_side *s, const uint8_t *data, size_t len)
{
    ssize_t r = side_try_write(c, s, data, len);

    if (r < 0)
        return (int)r;
    if ((size_t)r == len)
        return 0;
    if (tt_buf_append(&s->queued, data + r, len - (size_t)r) < 0)
        return -ENOMEM;
    side_start_write(c, s);
    return 0;
}

static int side_send_buf(struct tt_conn *c, struct tt_side *s, struct tt_buf *buf);

/* Has on_flush_idle run before the worker's loop next waits for events: the apps' gathered
 * bytes and the links' deferred flushes. An active idle handle also keeps the loop from
 * blocking in its next poll when this is asked outside the I/O callbacks (a timer, a
 * close callback). */
static void worker_defer_writes(struct tt_worker *w)
{
    (void)uv_idle_start(&w->flush_idle, on_flush_idle);
}

/* Gathers bytes for an HTTP/1.x app: what is appended to its side's queue during one loop
 * iteration (a response's head, body pieces, chunk framing, the next answer) is written
 * at once before the loop waits (on_flush_idle), one write instead of one per piece. */
static void app_push_soon(struct tt_conn *c)
{
    struct tt_worker *w = c->worker;

    if (c->push_queued)
        return;
    c->push_queued = true;
    c->push_prev = NULL;
    c->push_next = w->push_conns;
    if (w->push_conns != NULL)
        w->push_conns->push_prev = c;
    w->push_conns = c;
    worker_defer_writes(w);
}

/* Takes c off its worker's push list (app_push_soon) if it is there. */
static void app_push_unqueue(struct tt_conn *c)
{
    if (!c->push_queued)
        return;
    if (c->push_prev != NULL)
        c->push_prev->push_next = c->push_next;
    else
        c->worker->push_conns = c->push_next;
    if (c->push_next != NULL)
        c->push_next->push_prev = c->push_prev;
    c->push_next = c->push_prev = NULL;
    c->push_queued = false;
}

/* Writes what waits in side s's queue (bytes appended there while gathered): straight to
 * the socket when no write is in flight, the rest handed to uv_write. Returns 0 or <0
 * (the caller closes the connection). */
static int side_push(struct tt_conn *c, struct tt_side *s)
{
    struct tt_buf gathered;
    int r;

    if (c->state == TT_CONN_S_CLOSING || s->inflight.len > 0 || s->queued.len == 0)
        return 0;
    tt_buf_init(&gathered);
    tt_buf_move(&gathered, &s->queued); /* no copy; the queue is empty for side_send_buf */
    r = side_send_buf(c, s, &gathered);
    tt_buf_done(&gathered); /* empty unless it failed */
    return r;
}

/* Sends the bytes of *buf on side s like side_send, but what the kernel does not take is
 * moved into an empty queue with its storage, not copied; *buf is empty afterwards.
 * Returns 0 or <0 (the caller closes the connection). */
static int side_send_buf(struct tt_conn *c, struct tt_side *s, struct tt_buf *buf)
{
    ssize_t r = side_try_write(c, s, tt_buf_head(buf), buf->len);

    if (r < 0)
        return (int)r;
    tt_buf_consume(buf, (size_t)r);
    if (buf->len == 0)
        return 0;
    if (s->queued.len == 0) {
        tt_buf_move(&s->queued, buf);
    } else {
        /* Rare: more ciphertext while a queue waits (an alert, a KeyUpdate answer). */
        int ar = tt_buf_append(&s->queued, tt_buf_head(buf), buf->len);
        tt_buf_consume(buf, buf->len);
        if (ar < 0)
            return -ENOMEM;
    }
    side_start_write(c, s);
    return 0;
}

/* Moves the TLS engine's pending ciphertext to the TLS side's socket or its queue. */
static int tls_flush(struct tt_conn *c)
{
    struct tt_buf *out = tt_tls_output(c->tls);

    return out->len > 0 ? side_send_buf(c, c->tls_side, out) : 0;
}

/* ---- the TLS side: a TLS session, or a tunnel's stream -------------------------------- */

/* Counts n plaintext bytes that crossed a tunnel's virtual side s (read or written), for
 * its access line; the listener's byte counters count its carrier's socket. */
static void tunnel_count(struct tt_side *s, size_t n, bool read)
{
    if (read)
        s->bytes_read += n;
    else
        s->bytes_written += n;
}

/* Bytes queued on a tunnel's stream, counted. Returns 0 or <0. */
static int stream_write(struct tt_conn *c, const void *data, size_t len)
{
    int r;

    if (c->stream == NULL)
        return TT_E_LINK_CLOSED;
    r = tt_h2_stream_write(c->stream, data, len);
    if (r == 0)
        tunnel_count(c->tls_side, len, false);
    return r;
}

/* Plaintext for the TLS-side peer: encrypted, or queued on the tunnel's stream, or (a
 * request stream) read as the workload's HTTP/1.1 response and answered on the stream.
 * The caller follows with secure_flush(). Returns 0 or <0. */
static int secure_write(struct tt_conn *c, const void *data, size_t len)
{
    if (!c->tunnel)
        return tt_tls_write(c->tls, data, len);
    if (c->h2h1 != NULL)
        return tt_h2h1_from_server(c->h2h1, data, len);
    return stream_write(c, data, len);
}

/* Sends what secure_write() and secure_read() produced: the TLS output on the socket, or
 * the link's pending frames. Returns 0 or <0. */
static int secure_flush(struct tt_conn *c)
{
    if (!c->tunnel)
        return tls_flush(c);
    if (c->member.link != NULL)
        tt_link_flush_soon(c->member.link);
    return 0;
}

/* Plaintext from the TLS-side peer into buf: as tt_tls_read() (TT_TLS_EOF at the end). */
static int secure_read(struct tt_conn *c, void *buf, size_t len)
{
    size_t n;

    if (!c->tunnel)
        return tt_tls_read(c->tls, buf, len);
    if (c->stream == NULL)
        return TT_TLS_EOF;
    /* A record's worth at most, as the TLS engine gives: the plaintext side's queue then
     * stays within its slab (tls_pump). */
    n = tt_h2_stream_read(c->stream, buf, len < TT_TLS_RECORD_MAX ? len : TT_TLS_RECORD_MAX);
    if (n > 0) {
        tunnel_count(c->tls_side, n, true);
        touch(c);
        return (int)n;
    }
    return tt_h2_stream_eof(c->stream) ? TT_TLS_EOF : 0;
}

/* Whether the TLS side holds input to read (bytes, or a tunnel's end). */
static bool secure_input_pending(struct tt_conn *c)
{
    if (!c->tunnel)
        return tt_tls_input_len(c->tls) > 0;
    return c->stream != NULL &&
           (tt_h2_stream_readable(c->stream) > 0 || tt_h2_stream_eof(c->stream));
}

/* Whether the TLS side takes more plaintext now; a tunnel that must wait for its stream's
 * queue to drain is marked blocked, so that its link wakes it (pool.h). */
static bool secure_writable(struct tt_conn *c)
{
    if (!c->tunnel)
        return c->tls_side->queued.len == 0;
    if (c->stream == NULL)
        return false;
    if (tt_h2_stream_queued(c->stream) < TT_CONN_QUEUE_MAX)
        return true;
    c->member.blocked = true;
    return false;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct tt_side *s = tt_container_of(req, struct tt_side, shutdown_req);
    struct tt_conn *c = s->tcp->data;

    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (status < 0) {
        conn_close(c, status, true);
        return;
    }
    s->shutdown_done = true;
    relay_progress(c);
}

/* Sends FIN on s once everything queued for it has been written. */
static void side_maybe_shutdown(struct tt_conn *c, struct tt_side *s)
{
    if (!s->want_shutdown || s->shutdown_sent || side_queue_len(s) > 0)
        return;
    s->shutdown_sent = true;
    if (c->tunnel && s == c->tls_side) {
        s->shutdown_done = true; /* a tunnel's END_STREAM went with its close_notify */
        return;
    }
    int r = uv_shutdown(&s->shutdown_req, (uv_stream_t *)s->tcp, on_shutdown);
    if (r < 0)
        conn_close(c, r, true);
}

/* ---- reading ----------------------------------------------------------------------- */

/* The TLS side reads into the engine's input buffer, the plaintext side into the worker's
 * scratch buffer. A zero-length buffer makes libuv report UV_ENOBUFS. */
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct tt_conn *c = handle->data;
    size_t avail = 0;

    if (c == NULL) { /* a workload connection kept at rest (net/idleconns.h) */
        struct tt_worker *w = tt_container_of(handle->loop, struct tt_worker, loop);
        *buf = uv_buf_init((char *)w->read_buf, 1);
        return;
    }
    if (c->tls_side != NULL && handle == (uv_handle_t *)c->tls_side->tcp) {
        uint8_t *p = tt_tls_input_tail(c->tls, &avail);
        *buf = uv_buf_init((char *)p, p != NULL ? (unsigned)avail : 0);
        return;
    }
    *buf = uv_buf_init((char *)c->worker->read_buf, TT_CONN_PLAIN_READ);
}

static void side_set_reading(struct tt_conn *c, struct tt_side *s, bool want)
{
    if (want == s->reading || (!want && s == &c->up && c->park_up))
        return;
    if (c->tunnel && s == c->tls_side) {
        s->reading = want; /* a stream: its flow control holds the peer back */
        return;
    }
    int r = want ? uv_read_start((uv_stream_t *)s->tcp, on_alloc, on_read)
                 : uv_read_stop((uv_stream_t *)s->tcp);
    if (r < 0) {
        conn_close(c, r, true);
        return;
    }
    s->reading = want;
}

static uint64_t conn_now_us(struct tt_conn *c)
{
    return uv_now(&c->worker->loop) * 1000;
}

/* Our half-close towards the TLS-side peer: close_notify (a tunnel: END_STREAM) once,
 * then a FIN once its queue drained. Returns 0 or <0 (the caller closes the connection). */
static int tls_close_notify_once(struct tt_conn *c)
{
    int r;

    c->tls_side->want_shutdown = true;
    if (c->close_notify_sent)
        return 0;
    if (c->h2h1 != NULL) {
        /* A response delimited by the workload's close is complete now (its END_STREAM
         * goes out in h2h1_end); one cut short, or none at all, is an error. */
        r = tt_h2h1_server_eof(c->h2h1);
        return r == 0 ? secure_flush(c) : r;
    }
    if (c->h2up != NULL)
        return TT_E_HTTP; /* the workload's session ended before the answer did */
    c->close_notify_sent = true;
    if (c->tunnel)
        r = c->stream != NULL ? tt_h2_stream_end(c->stream) : 0; /* END_STREAM */
    else
        r = tt_tls_close_notify(c->tls);
    return r == 0 ? secure_flush(c) : r;
}

/* The client's input over the TLS side has ended (close_notify, or a FIN once everything
 * before it was decrypted): the workload gets a FIN. Returns 0, or <0 when the gate found
 * a request cut short. */
static int tls_side_input_over(struct tt_conn *c)
{
    int r = 0;

    c->tls_side->read_eof = true;
    /* A request stream's workload gets its FIN once the response is complete (h2h1_end):
     * servers may take an early one for a caller that went away. */
    if (c->h2h1 != NULL)
        r = tt_h2h1_request_end(c->h2h1);
    else if (c->h2up != NULL)
        r = h2up_request_end(c);
    else
        c->plain_side->want_shutdown = true;
    return r == 0 && c->gate != NULL ? tt_gate_client_eof(c->gate) : r;
}

/* Decrypts what the TLS engine holds into the plaintext side while that side's queue has
 * room. Returns 1 when it stopped for backpressure (input may be left), 0 when the input
 * is used up or the peer's close_notify arrived, or <0. */
static int tls_pump(struct tt_conn *c)
{
    struct tt_side *plain = c->plain_side;
    uint8_t *buf = c->worker->plain_buf;
    int stopped = 1, r;

    /* Decrypted bytes the socket does not take are appended to the plaintext side's queue:
     * only while one more record still fits its slab, so the queue never outgrows it. */
    while (!c->tls_side->read_eof && plain->queued.len <= TT_BUF_SLAB - TT_TLS_RECORD_MAX &&
           side_queue_len(plain) < TT_CONN_QUEUE_MAX &&
           (c->gate == NULL || tt_gate_wants_client(c->gate)) &&
           (c->h2up == NULL || (c->h2up->stream != NULL &&
                                tt_h2_stream_queued(c->h2up->stream) < TT_CONN_QUEUE_MAX))) {
        r = secure_read(c, buf, sizeof(c->worker->plain_buf));
        if (r == 0) {
            stopped = 0;
            break;
        }
        if (r == TT_TLS_EOF) {
            /* close_notify: the peer's half-close; pass it on as a FIN. */
            side_ended(c, c->tls_side, 0);
            r = tls_side_input_over(c);
            if (r < 0)
                return r;
            stopped = 0;
            break;
        }
        if (r < 0)
            return r;
        if (c->carrier)
            r = tt_link_feed(c->link, buf, (size_t)r);
        else if (c->h2h1 != NULL)
            r = tt_h2h1_request_body(c->h2h1, (const char *)buf, (size_t)r);
        else if (c->h2up != NULL)
            r = h2up_request_body(c, buf, (size_t)r);
        else if (c->gate != NULL)
            r = tt_gate_from_client(c->gate, (const char *)buf, (size_t)r, conn_now_us(c));
        else
            r = side_send(c, plain, buf, (size_t)r);
        if (r < 0)
            return r;
    }
    if (c->tls_side->read_eof)
        stopped = 0;
    r = secure_flush(c);
    return r < 0 ? r : stopped;
}

/* After the TLS side's FIN: once everything it sent before is decrypted, its input is over
 * (also when the FIN cut a record short: nothing more can complete it). */
static int tls_side_eof_settle(struct tt_conn *c, int pumped)
{
    struct tt_side *ts = c->tls_side;

    if (ts->sock_eof && !ts->read_eof && pumped == 0)
        return tls_side_input_over(c);
    return 0;
}

static struct tt_side *other_side(struct tt_conn *c, const struct tt_side *s)
{
    return s == &c->down ? &c->up : &c->down;
}

/* An inbound request stream whose answer went out whole and left the workload's
 * connection open, with the request written whole: that connection is kept for the next
 * request stream to the same address (net/idleconns.h) instead of getting our FIN; the
 * stream's connection then ends as if the workload's side had. */
static void workload_park_check(struct tt_conn *c)
{
    struct tt_side *ps = c->plain_side;

    if (c->h2h1 == NULL || c->park_up || !c->close_notify_sent || ps->shutdown_sent ||
        ps->read_eof || side_queue_len(ps) > 0 || !tt_h2h1_reusable(c->h2h1))
        return;
    c->park_up = true;
    ps->want_shutdown = false;
    ps->read_eof = true;
    ps->shutdown_sent = true;
    ps->shutdown_done = true;
    /* It goes on reading (side_set_reading leaves it): a kept handle must see the
     * workload's FIN while at rest, and a read stopped and started costs epoll changes. */
}

/* relay_progress() of a relay without TLS (passthrough, a permissive plaintext caller):
 * each side is read while the other's queue has room, and its FIN passed on once the
 * other's queue drained. */
static void plain_relay_progress(struct tt_conn *c)
{
    struct tt_side *sides[2] = {&c->down, &c->up};

    for (int i = 0; i < 2 && c->state == TT_CONN_S_RELAY; i++)
        side_maybe_shutdown(c, sides[i]);
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (c->down.read_eof && c->up.read_eof && c->down.shutdown_done && c->up.shutdown_done) {
        conn_close(c, 0, false);
        return;
    }
    for (int i = 0; i < 2 && c->state == TT_CONN_S_RELAY; i++) {
        struct tt_side *s = sides[i];
        side_set_reading(c, s,
                         !s->read_eof && side_queue_len(other_side(c, s)) < TT_CONN_QUEUE_MAX);
    }
}

/* Re-evaluates reading, FINs and completion after any event while relaying. */
static void relay_progress(struct tt_conn *c)
{
    struct tt_side *ts = c->tls_side, *ps = c->plain_side;

    if (c->state != TT_CONN_S_RELAY)
        return;
    if (c->plain) {
        plain_relay_progress(c);
        return;
    }
    if (c->carrier) {
        carrier_progress(c);
        return;
    }
    if (c->h1h2 != NULL) {
        h1_progress(c);
        return;
    }
    if (c->h2up != NULL) {
        int r = h2up_pump(c); /* the caller's stream may have room again */
        if (r == 0)
            r = secure_flush(c);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    }
    if ((secure_input_pending(c) || ts->sock_eof) && !ts->read_eof) {
        int r = tls_pump(c);
        if (r >= 0)
            r = tls_side_eof_settle(c, r);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    }
    if (c->state != TT_CONN_S_RELAY)
        return;
    conn_gate_settle(c);
    workload_park_check(c);
    side_maybe_shutdown(c, ps);
    side_maybe_shutdown(c, ts);
    if (c->state != TT_CONN_S_RELAY)
        return;

    /* Both directions over: each side's input ended and its FIN reached the other. */
    if (ps->read_eof && ts->shutdown_done && ts->read_eof && ps->shutdown_done) {
        conn_close(c, 0, false);
        return;
    }
    /* Plaintext is read while the TLS side has no queue waiting behind its write in
     * flight (each read's ciphertext becomes that queue); ciphertext while the plaintext
     * side has room and the engine's input slab is at most half full. */
    side_set_reading(c, ps, !ps->read_eof && secure_writable(c));
    if (c->state == TT_CONN_S_RELAY && !c->tunnel)
        side_set_reading(c, ts,
                         !ts->read_eof && !ts->sock_eof && side_queue_len(ps) < TT_CONN_QUEUE_MAX &&
                             tt_tls_input_len(c->tls) <= TT_BUF_SLAB / 2);
}

/* relay_progress() of a link's carrier: its plaintext feeds the link's session, whose
 * answers go back out; it closes once the link is done (after GOAWAY, no stream left) or
 * the peer closed. The session's own flow control bounds what it buffers, so the socket
 * is read whenever the TLS engine has room. */
static void carrier_progress(struct tt_conn *c)
{
    struct tt_side *ts = c->tls_side;
    int r;

    if (c->state != TT_CONN_S_RELAY)
        return;
    if ((tt_tls_input_len(c->tls) > 0 || ts->sock_eof) && !ts->read_eof) {
        r = tls_pump(c);
        if (r >= 0)
            r = tls_side_eof_settle(c, r);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    }
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (ts->read_eof) {
        conn_close(c, 0, false); /* the peer closed the link: its tunnels are lost */
        return;
    }
    r = tt_link_flush(c->link);
    if (r < 0) {
        conn_close(c, r, true);
        return;
    }
    if (tt_link_done(c->link)) {
        r = tls_close_notify_once(c);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    }
    side_maybe_shutdown(c, ts);
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (ts->shutdown_done) {
        conn_close(c, 0, false);
        return;
    }
    side_set_reading(c, ts, !ts->sock_eof && tt_tls_input_len(c->tls) <= TT_BUF_SLAB / 2);
}

/* The gate wrote its last answer (a refusal that ends the connection): the client gets
 * close_notify and a FIN once that answer is written, the workload a FIN; what either
 * sends afterwards is dropped. */
static void conn_gate_settle(struct tt_conn *c)
{
    int r;

    if (c->gate == NULL || c->gate_ended || !tt_gate_finished(c->gate))
        return;
    c->gate_ended = true;
    c->tls_side->read_eof = true;
    side_set_reading(c, c->tls_side, false);
    c->plain_side->want_shutdown = true;
    r = tls_close_notify_once(c);
    if (r < 0)
        conn_close(c, r, true);
}

static void handshake_progress(struct tt_conn *c);

/* Bytes read on side s of a plaintext relay: to the other side. */
static void plain_relay_read(struct tt_conn *c, struct tt_side *s, const uint8_t *data, size_t n)
{
    int r = side_send(c, other_side(c, s), data, n);

    if (r < 0) {
        conn_close(c, r, true);
        return;
    }
    relay_progress(c);
}

/* Ciphertext from the TLS side's socket, already in the engine's input buffer. */
static void tls_side_read(struct tt_conn *c)
{
    int r;

    if (c->state == TT_CONN_S_HANDSHAKE) {
        handshake_progress(c);
        return;
    }
    r = tls_pump(c);
    if (r < 0) {
        conn_close(c, r, true);
        return;
    }
    relay_progress(c);
}

/* Bytes from the plaintext side's socket: encrypt and send. */
static void plain_side_read(struct tt_conn *c, const uint8_t *data, size_t n)
{
    int r = c->h2up != NULL ? h2up_from_workload(c, data, n)
            : c->gate != NULL && c->h2h1 == NULL
                ? tt_gate_from_upstream(c->gate, (const char *)data, n, conn_now_us(c))
                : secure_write(c, data, n); /* a request stream's gate hears h2h1's reading */
    if (r == 0)
        r = secure_flush(c);
    if (r < 0) {
        conn_close(c, r, true);
        return;
    }
    relay_progress(c);
}

/* End of input on side s (a FIN, or a TLS connection closed without close_notify). */
static void side_read_eof(struct tt_conn *c, struct tt_side *s)
{
    side_set_reading(c, s, false);
    side_ended(c, s, 0);
    if (c->h1h2 != NULL) {
        h1_app_eof(c);
        return;
    }
    if (c->state == TT_CONN_S_REFUSING) {
        conn_close(c, c->refusal_err, false);
        return;
    }
    if (c->state == TT_CONN_S_HANDSHAKE || c->state == TT_CONN_S_CONNECTING) {
        if (c->state == TT_CONN_S_HANDSHAKE)
            conn_hs_failed(c, TT_HS_PROTOCOL);
        conn_close(c, UV_EOF, false);
        return;
    }
    if (c->state == TT_CONN_S_DETECT && !conn_is_inbound(c)) {
        s->read_eof = true; /* passed on after what was read (conn_send_early) */
        outbound_detect(c, NULL, 0, true);
        return;
    }
    if (c->state == TT_CONN_S_DETECT) {
        detect_done(c, NULL, 0); /* a FIN first: no TLS; the relay sees the FIN next */
        if (c->state != TT_CONN_S_CLOSING) {
            s->read_eof = true;
            c->up.want_shutdown = true;
        }
        return;
    }
    if (c->plain) {
        s->read_eof = true;
        other_side(c, s)->want_shutdown = true;
    } else if (s == c->plain_side) {
        s->read_eof = true;
        if (c->gate != NULL) {
            /* A response delimited by the close ends now; answers the gate owes go out. */
            int r = tt_gate_upstream_eof(c->gate, conn_now_us(c));
            if (r < 0) {
                conn_close(c, r, true);
                return;
            }
        }
        int r = tls_close_notify_once(c);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    } else {
        /* The stream ends once what arrived before the FIN is decrypted, which may wait
         * for the plaintext side's queue to drain (relay_progress goes on pumping). */
        s->sock_eof = true;
        int r = tls_pump(c);
        if (r >= 0)
            r = tls_side_eof_settle(c, r);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    }
    relay_progress(c);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct tt_conn *c = stream->data;

    if (c == NULL) { /* kept at rest, the workload closed it or spoke out of turn */
        if (nread != 0) {
            struct tt_worker *w = tt_container_of(stream->loop, struct tt_worker, loop);
            tt_idle_conns_drop(&w->idle_conns, (uv_tcp_t *)stream);
        }
        return;
    }
    struct tt_side *s = (uv_tcp_t *)stream == c->down.tcp ? &c->down : &c->up;

    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (s == &c->up && c->park_up && nread != 0) {
        c->park_up = false; /* it spoke after its response: not kept */
        return;
    }
    if (s == c->tls_side)
        tt_tls_input_commit(c->tls, nread > 0 ? (size_t)nread : 0);
    if (nread == UV_EOF) {
        side_read_eof(c, s);
        return;
    }
    if (nread < 0) {
        side_ended(c, s, (int)nread);
        if (c->state == TT_CONN_S_HANDSHAKE)
            conn_hs_failed(c, TT_HS_PROTOCOL);
        conn_close(c, (int)nread, true);
        return;
    }
    if (nread == 0)
        return;
    s->bytes_read += (uint64_t)nread;
    if (s == &c->down)
        TT_COUNTER_ADD(conn_counters(c)->bytes_in, (uint64_t)nread);
    touch(c);
    if (c->h1h2 != NULL)
        h1_app_read(c, (const uint8_t *)buf->base, (size_t)nread);
    else if (c->state == TT_CONN_S_DETECT)
        detect_done(c, (const uint8_t *)buf->base, (size_t)nread);
    else if (c->state == TT_CONN_S_REFUSING)
        refusal_read(c, (const uint8_t *)buf->base, (size_t)nread);
    else if (c->plain)
        plain_relay_read(c, s, (const uint8_t *)buf->base, (size_t)nread);
    else if (s == c->tls_side)
        tls_side_read(c);
    else
        plain_side_read(c, (const uint8_t *)buf->base, (size_t)nread);
}

/* ---- telling an HTTP/1.x app why its connection could not get through --------------- */

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

/* Outbound: instead of the close conn_close(err, reset) would give, an app connection that
 * never got through waits (TT_CONN_S_REFUSING, at most TT_CONN_REFUSAL_WAIT_MS) for its first
 * bytes: an HTTP/1.x request is answered with why (refusal_read), anything else is reset
 * as before. What was set up towards the upstream is given up now. Returns true when it
 * took the connection over. */
static bool conn_refusal_start(struct tt_conn *c, int err, bool reset)
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
        conn_tunnel_end(c, err, true);
        c->tunnel = false;
    }
    side_set_reading(c, &c->up, false);
    conn_enter(c, TT_CONN_S_REFUSING);
    if (c->early.len > 0) {
        /* Detection read the app's first bytes already: they are what is looked at. */
        tt_buf_move(&c->refusal_held, &c->early);
        refusal_read(c, NULL, 0);
        if (c->state != TT_CONN_S_REFUSING)
            return true;
    }
    side_set_reading(c, &c->down, true);
    return true;
}

/* REFUSING: the app's first bytes. An HTTP/1.x request line gets the answer (and the
 * connection closes after it, the bytes read so far consumed, so that the close is a FIN
 * and not a reset that could destroy the answer); anything else, or too long a wait for a
 * whole request line, is reset. The bytes are held apart from both sides' queues (the
 * upstream's may still hold handshake records being written): nothing of the app's ever
 * goes anywhere. */
static void refusal_read(struct tt_conn *c, const uint8_t *data, size_t n)
{
    struct tt_buf *held = &c->refusal_held;
    enum tt_detect_proto p;
    const char *reason = NULL;
    char answer[512];
    int status, len;

    if (n > 0 && tt_buf_append(held, data, n) < 0) {
        conn_close(c, -ENOMEM, true);
        return;
    }
    p = tt_detect_check(tt_buf_head(held), held->len, TT_DETECT_LIMIT);
    if (p == TT_DETECT_MORE)
        return;
    if (p != TT_DETECT_HTTP1) {
        conn_close(c, c->refusal_err, true);
        return;
    }
    status = refusal_answer(c->refusal_err, &reason);
    len = tt_h1_write_error(answer, sizeof(answer), status, reason, NULL, true);
    if (len < 0 || side_send(c, &c->down, (const uint8_t *)answer, (size_t)len) < 0) {
        conn_close(c, c->refusal_err, true);
        return;
    }
    TT_COUNTER_ADD(conn_counters(c)->refusals_answered, 1);
    conn_close(c, c->refusal_err, false);
}

/* ---- establishing ------------------------------------------------------------------ */

/* Both sockets are up and the TLS session verified: relay. */
static void conn_start_relay(struct tt_conn *c)
{
    conn_enter(c, TT_CONN_S_RELAY);
    if (c->h2up != NULL) {
        int r = h2up_start(c); /* the response head answers the stream (h2up_pump) */
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    } else if (c->h2h1 != NULL) {
        /* The workload answered the connect: the request goes to it; the response head
         * answers the stream (h2h1_respond). */
        size_t n = 0;
        const struct tt_h2_header *fields = tt_h2_stream_headers(c->stream, &n);
        int r = tt_h2h1_request(c->h2h1, fields, n, !tt_h2_stream_eof(c->stream));
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    } else if (c->tunnel && conn_is_inbound(c)) {
        /* The workload answered the connect: the tunnel is open (RFC 8441 §4). */
        int r =
            c->stream != NULL ? tt_h2_respond(c->stream, 200, NULL, 0, false) : TT_E_LINK_CLOSED;
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
        c->answered = true;
    }
    if (c->plain) {
        side_start_write(c, &c->up); /* what a plaintext caller sent while detected */
        relay_progress(c);
        return;
    }
    int r = conn_send_early(c);
    if (r == 0)
        r = tls_pump(c); /* application data that arrived with the handshake */
    if (r < 0) {
        conn_close(c, r, true);
        return;
    }
    relay_progress(c);
}

static void conn_start_handshake(struct tt_conn *c);

static void on_connect(uv_connect_t *req, int status)
{
    struct tt_conn *c = tt_container_of(req, struct tt_conn, connect_req);

    /* Cancelled: the socket was closed by us (the connection ends, or a timed-out
     * connect moves on to another endpoint), which already decided what follows; or the
     * connection gave up on it while it was pending (REFUSING after a timeout). */
    if (c->state != TT_CONN_S_CONNECTING || status == UV_ECANCELED)
        return;
    if (status < 0) {
        conn_connect_failed(c, status);
        return;
    }
    uint64_t connect_us = (uv_now(&c->worker->loop) - c->phase_ms) * 1000;
    tt_metrics_observe(&conn_counters(c)->connect_us, connect_us);
    /* The balancer compares endpoints by their TCP connect time: a direct connection's,
     * or for pooled ones the connect of the link to that endpoint (its tunnels only ride). */
    if (c->balancer_active || (c->carrier && c->worker->balancer != NULL))
        tt_balancer_connected(c->worker->balancer, &c->target, connect_us);
    c->up.connected = true;
    uv_tcp_nodelay(c->up.tcp, 1);
    if (conn_is_inbound(c) || c->plain)
        conn_start_relay(c);
    else
        conn_start_handshake(c);
}

/* Transparent outbound to a service: picks the endpoint to try next into c->target and
 * c->expected_id. Returns false when none is left (every endpoint tried). */
static bool conn_pick_endpoint(struct tt_conn *c)
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

static void conn_start_connect(struct tt_conn *c);

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
        conn_start_connect(c);
}

/* The upstream connect failed (status) or timed out: counted; a balanced connection
 * ejects that endpoint and tries another one (its socket is closed first), anything else
 * is closed. */
static void conn_connect_failed(struct tt_conn *c, int status)
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
        if (conn_pick_endpoint(c)) {
            TT_COUNTER_ADD(conn_counters(c)->endpoint_retries, 1);
            uv_timer_stop(&c->timer);
            if (c->tunnel) {
                conn_tunnel_leave(c); /* its link failed: the next endpoint's pool */
                conn_start_connect(c);
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
        h1_fail(c, status); /* the app hears why; its next request tries again */
        return;
    }
    side_ended(c, &c->up, status);
    conn_close(c, status, true);
}

/* Opens the TCP connection to c->target (a balanced service picks it first); an outbound
 * app connection to another sidecar rides the pool instead, unless it goes direct. */
static void conn_start_connect(struct tt_conn *c)
{
    const struct tt_addr *target;
    int r;

    if (c->service != NULL && !c->balancer_active && !conn_pick_endpoint(c)) {
        if (c->h1h2 != NULL)
            h1_fail(c, TT_E_NO_ENDPOINT);
        else
            conn_close(c, TT_E_NO_ENDPOINT, true);
        return;
    }
    if (!conn_is_inbound(c) && !c->plain && !c->carrier && !c->direct && conn_settings(c)->pool) {
        conn_pool_attach(c);
        return;
    }
    target = &c->target;
    if (c->h2h1 != NULL) {
        /* A request stream: a keep-alive connection to the workload at rest, if any (its
         * handle still reads with our callbacks), else a handle that can be kept. */
        uv_tcp_t *kept =
            tt_idle_conns_take(&c->worker->idle_conns, target, uv_now(&c->worker->loop));
        if (kept != NULL) {
            /* Relayed from the timer, as after a connect: the stream's END_STREAM, which
             * says whether a body follows, comes after the call that opened it. */
            kept->data = c;
            c->up.tcp = kept;
            c->up.open = true;
            c->up.connected = true;
            c->up.reading = true;
            c->reused_up = true;
            conn_enter(c, TT_CONN_S_CONNECTING);
            uv_timer_start(&c->timer, on_timer, 0, 0);
            return;
        }
        c->up.tcp = tt_idle_conn_new(&c->worker->loop);
        if (c->up.tcp == NULL) {
            c->up.tcp = &c->up.own;
            conn_close(c, -ENOMEM, true);
            return;
        }
    } else {
        r = uv_tcp_init(&c->worker->loop, c->up.tcp);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    }
    c->up.tcp->data = c;
    c->up.open = true;
    conn_enter(c, TT_CONN_S_CONNECTING);
    r = uv_tcp_connect(&c->connect_req, c->up.tcp, (const struct sockaddr *)&target->ss,
                       on_connect);
    if (r < 0)
        conn_connect_failed(c, r);
}

/* Logs the audit rules that matched verdict v of a connection or request. */
static void conn_log_audit(struct tt_conn *c, const char *caller, const struct tt_policy_verdict *v)
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

/* ---- the request gate's side of the connection ------------------------------------- */

static int gate_to_upstream(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    return side_send(c, c->plain_side, (const uint8_t *)data, len);
}

/* Encrypted now; the caller of the gate flushes the TLS output. */
static int gate_to_client(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    return secure_write(c, data, len);
}

/* A request's verdict: counted per rule, audit matches logged. */
static void gate_on_verdict(void *ud, const struct tt_policy_verdict *v)
{
    struct tt_conn *c = ud;

    if (c->snapshot->policy == NULL)
        return; /* no rule to count */
    tt_metrics_policy_count(c->worker->metrics, c->snapshot->policy, v);
    conn_log_audit(c, conn_peer_id(c), v);
}

/* A request is over: counted on c's listener for peer_id (inbound: the caller; outbound:
 * the sidecar that answered), and its access line written (DESIGN.md "HTTP between
 * sidecars"; README "Logs"). This is where every request is counted. */
static void request_over(struct tt_conn *c, const char *peer_id, const struct tt_gate_request *rq)
{
    struct tt_request_record rec = {
        .method = rq->method,
        .status = rq->status,
        .request_bytes = rq->request_bytes,
        .response_bytes = rq->response_bytes,
        .duration_us = rq->duration_us,
        .denied = rq->denied,
    };

    unsigned sample = conn_settings(c)->request_log_sample;
    bool failed = rq->status == 0 || rq->status >= 500; /* unanswered, or a server error */
    bool notable = failed || rq->reason != NULL;        /* always logged */

    if (rq->refused_reason != 0)
        tt_metrics_request_refused(c->worker->metrics, c->listener->index, peer_id,
                                   (enum tt_h1_reason)rq->refused_reason);
    else
        tt_metrics_request(c->worker->metrics, c->listener->index, peer_id, &rec);
    if (++c->worker->requests_done % (sample > 0 ? sample : 1) != 0 && !notable)
        return;
    tt_log(failed ? TT_LOG_WARN : TT_LOG_INFO, "request", TT_LS("listener", c->listener->cfg->name),
           TT_LS("peer_addr", c->peer_addr), TT_LS("peer_id", peer_id), TT_LS("method", rq->method),
           TT_LS("path", rq->path), TT_LU("status", (uint64_t)rq->status),
           TT_LU("request_bytes", rq->request_bytes), TT_LU("response_bytes", rq->response_bytes),
           TT_LU("duration_us", rq->duration_us),
           TT_LS("verdict", rq->denied                               ? "deny"
                            : rq->rule == NULL && rq->reason != NULL ? "refused"
                                                                     : "allow"),
           TT_LS("rule", rq->rule), TT_LS("reason", rq->reason), TT_LS("upstream", c->target.text));
}

/* The gate's (or an inbound request stream's) request is over. */
static void gate_on_request(void *ud, const struct tt_gate_request *rq)
{
    struct tt_conn *c = ud;

    request_over(c, conn_peer_id(c), rq);
}

/* Puts the request gate between the verified caller and the workload. Returns 0 or
 * -ENOMEM. */
static int conn_gate_start(struct tt_conn *c, const char *caller, bool enforce)
{
    struct tt_gate_config cfg = {
        .policy = c->snapshot->policy,
        .caller = caller,
        .self = tt_identity_spiffe_id(c->snapshot->identity),
        .port = tt_addr_port(&c->target),
        .enforce = enforce,
        .pipeline_max = c->h2h1 != NULL ? 2 : 0, /* a request stream is one request */
        /* and its translator reads the response: h2h1_response_over tells the gate */
        .caller_reads_responses = c->h2h1 != NULL,
    };
    struct tt_gate_io io = {
        .ud = c,
        .to_upstream = gate_to_upstream,
        .to_client = gate_to_client,
        .on_verdict = gate_on_verdict,
        .on_request = gate_on_request,
    };

    c->gate = tt_gate_new(&cfg, &io);
    return c->gate != NULL ? 0 : -ENOMEM;
}

/* Inbound: consults the allow list for the verified caller. This is the one place a
 * connection is admitted or refused by policy; where rules with methods or paths apply
 * to the caller and port, the connection is admitted to the request gate, which asks
 * the same policy for each request (conn_gate_start); a gRPC request stream (c->h2up) is
 * one request, decided here with its method and path. Returns true when allowed. */
static bool conn_authorize(struct tt_conn *c)
{
    struct tt_snapshot *snap = c->snapshot;
    /* A plaintext caller (permissive mode) has no identity: no rule's "from" matches. */
    const char *caller = c->tls != NULL || c->tunnel ? conn_peer_id(c) : NULL;
    const char *self = tt_identity_spiffe_id(snap->identity);
    uint16_t port = tt_addr_port(&c->target);
    struct tt_listener_counters *lc = conn_counters(c);
    bool allowed = true;

    if (snap->policy != NULL) {
        const struct tt_transparent_cfg *t = conn_settings(c)->transparent;
        struct tt_policy_verdict v;
        /* Opaque ports are relayed unread (policies that would need them read are refused
         * at start and by NACK: tt_policy_check_opaque_enforceable). */
        unsigned http = caller != NULL && c->h2up == NULL &&
                                !port_listed(t->opaque_ports, t->n_opaque_ports, port)
                            ? tt_policy_http_rules(snap->policy, caller, self, port)
                            : 0;

        if (c->h2up != NULL)
            /* A gRPC call is one request, decided here with its method and canonical path
             * (grpc_path_canonical): no gate reads it. */
            tt_policy_check_request(snap->policy, caller, self, port,
                                    tt_h2_stream_header(c->stream, ":method"),
                                    tt_h2_stream_header(c->stream, ":path"), &v);
        else
            tt_policy_check(snap->policy, caller, self, port, NULL, NULL, &v);
        if ((http != 0 && (v.allowed || v.rule == TT_POLICY_RULE_DEFAULT)) ||
            (c->h2h1 != NULL && v.allowed)) {
            /* Each request is decided (and counted) by the gate; a rule without HTTP
             * conditions that denies the caller still refuses the whole connection. An
             * allowed request stream is one request: it passes the gate, which counts and
             * logs it, and its bytes are always HTTP; one whose caller no rule lets in on
             * this port is refused here, as a connection would be. */
            bool enforce = (http & TT_POLICY_HTTP_F_ENFORCE) != 0 || c->h2h1 != NULL;
            if (conn_gate_start(c, caller, enforce) < 0)
                return false;
            c->rule = http != 0 ? "per-request" : v.rule_name;
            TT_COUNTER_ADD(lc->allowed, 1);
            c->verdict = "allow";
            return true;
        }
        tt_metrics_policy_count(c->worker->metrics, snap->policy, &v);
        allowed = v.allowed;
        c->rule = v.rule_name;
        conn_log_audit(c, caller, &v);
    } else {
        c->rule = "no-policy";
        /* A request stream is still one request, counted and logged by the gate. */
        if (c->h2h1 != NULL && conn_gate_start(c, caller, true) < 0)
            return false;
    }
    if (allowed)
        TT_COUNTER_ADD(lc->allowed, 1);
    else
        TT_COUNTER_ADD(lc->denied, 1);
    c->verdict = allowed ? "allow" : "deny";
    if (!allowed && (c->h2up != NULL || c->h2h1 != NULL)) {
        /* The refused call is a request too: counted and logged as the gate would. */
        struct tt_gate_request rq = {.method = tt_h2_stream_header(c->stream, ":method"),
                                     .path = tt_h2_stream_header(c->stream, ":path"),
                                     .status = 403,
                                     .rule = c->rule,
                                     .reason = "policy_denied",
                                     .denied = true};
        gate_on_request(c, &rq);
    }
    return allowed;
}

/* ---- pooling: links' carriers and tunnels (net/pool.h) ------------------------------- */

static const struct tt_h2_stream_callbacks tunnel_callbacks;

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
static bool carrier_negotiated(struct tt_conn *c)
{
    char alpn[16];

    if (!conn_settings(c)->pool)
        return false;
    tt_tls_alpn(c->tls, alpn, sizeof(alpn));
    return strcmp(alpn, TT_POOL_ALPN) == 0 || strcmp(alpn, "h2") == 0;
}

/* Inbound: the verified connection carries a link from another sidecar. Policy is asked
 * for each tunnel on it (pool_accept), not here. */
static void carrier_accept(struct tt_conn *c)
{
    c->link = tt_link_accept(c->worker->pool, c, conn_counters(c), uv_now(&c->worker->loop));
    if (c->link == NULL) {
        conn_close(c, -ENOMEM, true);
        return;
    }
    c->carrier = true;
    c->route = "link";
    c->verdict = "allow";
    conn_uncount(c);
    conn_start_relay(c);
}

/* Outbound: the carrier's handshake is done: the link comes up, or (the server did not
 * select the token) its waiting connections go direct and the carrier closes. */
static void carrier_up(struct tt_conn *c)
{
    char alpn[16];
    int r;

    tt_tls_alpn(c->tls, alpn, sizeof(alpn));
    c->verdict = "allow";
    conn_enter(c, TT_CONN_S_RELAY);
    r = tt_link_up(c->link, c, strcmp(alpn, TT_POOL_ALPN) == 0, uv_now(&c->worker->loop));
    if (r < 0) {
        conn_close(c, r, true);
        return;
    }
    if (r == 1) {
        c->route = "link_declined";
        r = tls_close_notify_once(c);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
    }
    carrier_progress(c);
}

/* Outbound: c's destination does not pool: one mTLS connection of its own, as before. */
static void conn_go_direct(struct tt_conn *c)
{
    if (c->h1h2 != NULL) {
        /* An HTTP/1.x app: the rest of its connection, from its current request's first
         * byte, is relayed as bytes over that connection (conn_send_early). */
        int r = tt_h1h2_take_raw(c->h1h2, &c->early);
        if (r < 0) {
            conn_close(c, r, true);
            return;
        }
        tt_h1h2_free(c->h1h2);
        c->h1h2 = NULL;
        c->route = "pool";
        side_set_reading(c, &c->down, false);
    }
    c->tunnel = false;
    c->direct = true;
    if (strcmp(c->route, "pool") == 0)
        c->route = "direct";
    conn_start_connect(c);
}

/* Outbound: puts c in the pool for its target (conn_start_connect): it rides a link now,
 * waits for one, or goes direct. */
static void conn_pool_attach(struct tt_conn *c)
{
    int r;

    c->tunnel = true;
    if (c->route == NULL)
        c->route = "pool";
    conn_enter(c, TT_CONN_S_CONNECTING);
    r = tt_pool_attach(c->worker->pool, &c->member, &c->target, c->expected_id,
                       c->snapshot->identity, uv_now(&c->worker->loop));
    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (r == TT_POOL_GO_DIRECT) {
        conn_go_direct(c);
    } else if (r < 0) {
        conn_close(c, r, true);
    } else if (r == 1 && c->member.link != NULL) {
        tt_link_flush_soon(c->member.link); /* the tunnel's HEADERS */
    }
}

/* A tunnel gives its stream and place in the pool up (its link failed, or it retries). */
static void conn_tunnel_leave(struct tt_conn *c)
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

/* Inbound: the answer to a tunnel that never reached the workload, by why it ended. */
static int tunnel_refusal(int err, const char **reason)
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
        *reason = "upstream_connect_failed";
        return 502;
    }
}

/* Answers inbound stream s that never reached the workload, by why it ended (err): the
 * status and x-tether-reason; a request stream (not a tunnel, not gRPC) also gets the JSON
 * body an HTTP/1.x caller would get, naming the rule. Returns 0 or <0. */
static int tunnel_refuse(struct tt_conn *c, struct tt_h2_stream *s, int err)
{
    const char *why = NULL;
    int status = tunnel_refusal(err, &why);
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

/* A tunnel ends (conn_close): an inbound one never answered gets its refusal, one cut
 * short is reset, and the stream and place in the pool are given up. */
static void conn_tunnel_end(struct tt_conn *c, int err, bool reset)
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
 * sees a reset, as from a direct connection, or an HTTP answer (conn_refusal_start). */
static void tunnel_on_headers(struct tt_h2_stream *s, void *ud)
{
    struct tt_conn *c = ud;
    int status = tt_h2_stream_status(s);

    if (conn_is_inbound(c) || c->state != TT_CONN_S_CONNECTING)
        return;
    if (status == 200) {
        c->verdict = "allow";
        conn_start_relay(c); /* the balancer timed the link's connect (on_connect) */
        return;
    }
    TT_COUNTER_ADD(conn_counters(c)->pool.streams_refused, 1);
    if (status == 502 || status == 503) {
        /* The peer's workload could not be reached (or it is full): nothing of ours went
         * through, so a balanced service tries another endpoint, as after a connect. */
        conn_connect_failed(c, TT_E_TUNNEL_REFUSED);
        return;
    }
    side_ended(c, c->tls_side, UV_ECONNRESET);
    if (status == 403)
        c->verdict = "deny";
    conn_close(c, status == 403 ? TT_E_DENIED : TT_E_TUNNEL_REFUSED, true);
}

/* Bytes or the end arrived on the tunnel's stream. */
static void tunnel_on_data(struct tt_h2_stream *s, void *ud)
{
    (void)s;
    relay_progress(ud);
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
        conn_tunnel_leave(c);
        conn_pool_attach(c);
        return;
    }
    tt_h2_stream_release(c->stream);
    c->stream = NULL;
    if (by_peer)
        side_ended(c, c->tls_side, UV_ECONNRESET);
    conn_close(c, err, true);
}

static const struct tt_h2_stream_callbacks tunnel_callbacks = {
    .on_headers = tunnel_on_headers,
    .on_data = tunnel_on_data,
    .on_end = tunnel_on_data,
    .on_reset = tunnel_on_reset,
};

/* ---- inbound request streams: HTTP/2 requests served to an HTTP/1.1 workload ---------- */

/* h2h1: the request's bytes for the workload pass the gate (conn_authorize always puts
 * one on a request stream). */
static int h2h1_to_server(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    if (c->gate != NULL)
        return tt_gate_from_client(c->gate, data, len, conn_now_us(c));
    return side_send(c, c->plain_side, (const uint8_t *)data, len);
}

/* A request stream's response is complete: the gate, which does not read responses of
 * request streams (caller_reads_responses), is told its status and the workload's bytes,
 * and counts the request. Returns 0 or <0. */
static int h2h1_response_over(struct tt_conn *c)
{
    if (c->gate == NULL)
        return 0;
    return tt_gate_response_done(c->gate, c->answer_status, c->plain_side->bytes_read,
                                 conn_now_us(c));
}

/* A request stream's response is complete and its END_STREAM queued: our side of the
 * stream is over, the workload gets its FIN (its request said "Connection: close", or its
 * h2c session carried that one stream), and what the caller may still send is not read:
 * releasing the stream then resets it with NO_ERROR (RFC 9113 §8.1). */
static void request_answered(struct tt_conn *c)
{
    c->close_notify_sent = true;
    c->tls_side->want_shutdown = true;
    c->tls_side->read_eof = true;
    c->plain_side->want_shutdown = true;
}

/* h2h1: the workload's response head answers the stream. */
static int h2h1_respond(void *ud, int status, const struct tt_h2_header *fields, size_t n,
                        bool end_stream)
{
    struct tt_conn *c = ud;
    int r = c->stream != NULL ? tt_h2_respond(c->stream, status, fields, n, end_stream)
                              : TT_E_LINK_CLOSED;

    if (r < 0)
        return r;
    c->answered = true;
    c->answer_status = status;
    if (end_stream) {
        request_answered(c);
        return h2h1_response_over(c);
    }
    return 0;
}

/* h2h1: a piece of the response body. */
static int h2h1_body(void *ud, const char *data, size_t len)
{
    return stream_write(ud, data, len);
}

/* h2h1: the response body is complete. */
static int h2h1_end(void *ud)
{
    struct tt_conn *c = ud;
    int r = c->stream != NULL ? tt_h2_stream_end(c->stream) : TT_E_LINK_CLOSED;

    if (r < 0)
        return r;
    request_answered(c);
    return h2h1_response_over(c);
}

/* ---- inbound gRPC request streams: HTTP/2 to the workload, stream to stream --------- */

/* Whether a request stream is gRPC: its content-type is application/grpc[+proto|;...]. */
static bool stream_is_grpc(struct tt_h2_stream *s)
{
    const char *ct = tt_h2_stream_header(s, "content-type");

    return ct != NULL && strncmp(ct, "application/grpc", 16) == 0 &&
           (ct[16] == '\0' || ct[16] == '+' || ct[16] == ';');
}

/* Whether a gRPC :path is canonical, "/Service/Method" with name characters only
 * (letters, digits, '_', '.', '-'; no "." or ".." segment, no %-encoding): the path the
 * policy sees is then the one the workload serves, with nothing to normalize. */
static bool grpc_path_canonical(const char *path)
{
    int slashes = 0;
    const char *seg = path;

    if (path == NULL || path[0] != '/')
        return false;
    for (const char *p = path;; p++) {
        if (*p == '/' || *p == '\0') {
            size_t n = (size_t)(p - seg);
            if (p != path &&
                (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.')))
                return false;
            if (*p == '\0')
                break;
            slashes++;
            seg = p + 1;
            continue;
        }
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '.' || *p == '-'))
            return false;
    }
    return slashes == 2;
}

/* Sends what the workload's session has queued (our frames) on the plaintext side.
 * Returns 0 or <0. */
static int h2up_flush(struct tt_conn *c)
{
    for (;;) {
        const uint8_t *data;
        size_t len;
        int r = tt_h2_pending(c->h2up->session, &data, &len);

        if (r < 0 || len == 0)
            return r;
        r = side_send(c, c->plain_side, data, len);
        if (r < 0)
            return r;
        tt_h2_consume(c->h2up->session, len);
    }
}

/* The regular fields of stream s's received head (its pseudo-headers, and "host" when
 * drop_host, left out) in a new array the caller frees, *k of them; NULL when out of
 * memory. */
static struct tt_h2_header *regular_fields(const struct tt_h2_stream *s, bool drop_host, size_t *k)
{
    size_t n = 0;
    const struct tt_h2_header *f = tt_h2_stream_headers(s, &n);
    struct tt_h2_header *out = malloc((n > 0 ? n : 1) * sizeof(*out));

    *k = 0;
    for (size_t i = 0; out != NULL && i < n; i++) {
        if (f[i].name_len > 0 && f[i].name[0] != ':' &&
            !(drop_host && strcmp(f[i].name, "host") == 0))
            out[(*k)++] = f[i];
    }
    return out;
}

/* The caller's answer: the workload's status and fields (its pseudo-headers left out);
 * end_stream for a response that is its head alone (gRPC's trailers-only answer). */
static int h2up_respond(struct tt_conn *c, bool end_stream)
{
    struct tt_h2_upstream *up = c->h2up;
    size_t k = 0;
    struct tt_h2_header *fields = regular_fields(up->stream, false, &k);
    int r;

    if (fields == NULL)
        return -ENOMEM;
    r = c->stream != NULL ? tt_h2_respond(c->stream, up->status, fields, k, end_stream)
                          : TT_E_LINK_CLOSED;
    free(fields);
    if (r < 0)
        return r;
    up->responded = true;
    c->answered = true;
    return 0;
}

/* The response is over towards the caller: counted and logged as a request. */
static void h2up_done(struct tt_conn *c)
{
    struct tt_h2_upstream *up = c->h2up;
    struct tt_gate_request rq = {
        .method = tt_h2_stream_header(c->stream, ":method"),
        .path = tt_h2_stream_header(c->stream, ":path"),
        .status = up->status,
        .request_bytes = up->request_bytes,
        .response_bytes = up->response_bytes,
        .duration_us = conn_now_us(c) - up->start_us,
        .rule = c->rule,
    };

    up->done = true;
    request_answered(c);
    gate_on_request(c, &rq);
}

/* Moves what the workload answered to the caller's stream while it has room: the head
 * first, the body, then the end (with the workload's trailers, which carry grpc-status).
 * Returns 0 or <0. */
static int h2up_pump(struct tt_conn *c)
{
    struct tt_h2_upstream *up = c->h2up;
    int r = 0;

    if (up->stream == NULL || up->done || up->status == 0 || c->stream == NULL)
        return 0;
    if (!up->responded) {
        /* A head with END_STREAM and neither body nor trailers behind it is the whole
         * answer (gRPC's trailers-only); trailers that came in the same read still go
         * out as trailers, below. */
        size_t nt = 0;
        bool whole;

        (void)tt_h2_stream_trailers(up->stream, &nt);
        whole = tt_h2_stream_eof(up->stream) && nt == 0;
        r = h2up_respond(c, whole);
        if (r < 0 || whole) {
            if (r == 0)
                h2up_done(c);
            return r;
        }
    }
    while (tt_h2_stream_readable(up->stream) > 0 &&
           tt_h2_stream_queued(c->stream) < TT_CONN_QUEUE_MAX) {
        const uint8_t *data;
        size_t n = tt_h2_stream_peek(up->stream, &data);

        r = stream_write(c, data, n);
        if (r < 0)
            return r;
        up->response_bytes += n;
        tt_h2_stream_consume(up->stream, n);
    }
    if (tt_h2_stream_eof(up->stream)) {
        size_t nt = 0;
        const struct tt_h2_header *t = tt_h2_stream_trailers(up->stream, &nt);
        r = nt > 0 ? tt_h2_stream_end_trailers(c->stream, t, nt) : tt_h2_stream_end(c->stream);
        if (r == 0)
            h2up_done(c);
    }
    return r < 0 ? r : h2up_flush(c); /* window given back to the workload */
}

/* The workload's stream: its head (kept until the caller can be answered), body and end
 * move on in h2up_pump; a reset ends the caller's stream. */
static void h2up_on_headers(struct tt_h2_stream *s, void *ud)
{
    struct tt_conn *c = ud;

    c->h2up->status = tt_h2_stream_status(s);
}

static void h2up_on_reset(struct tt_h2_stream *s, int err, uint32_t h2_code, bool by_peer, void *ud)
{
    struct tt_conn *c = ud;

    (void)err;
    (void)h2_code;
    (void)by_peer;
    tt_h2_stream_release(s);
    c->h2up->stream = NULL;
    if (c->state != TT_CONN_S_CLOSING)
        conn_close(c, TT_E_HTTP, true); /* unanswered: 502 upstream_bad_response */
}

static const struct tt_h2_stream_callbacks h2up_stream_callbacks = {
    .on_headers = h2up_on_headers,
    .on_reset = h2up_on_reset,
};

/* The workload answered the connect: an h2c session to it carries the caller's request,
 * its fields as they came (the pseudo-headers given as such, :scheme http). Returns 0 or
 * <0. */
static int h2up_start(struct tt_conn *c)
{
    struct tt_h2_upstream *up = c->h2up;
    size_t k = 0;
    struct tt_h2_header *regular = regular_fields(c->stream, true, &k);
    const char *authority = tt_h2_stream_header(c->stream, ":authority");
    struct tt_h2_request req = {
        .method = tt_h2_stream_header(c->stream, ":method"),
        .scheme = "http",
        .authority = authority != NULL ? authority : c->target.text,
        .path = tt_h2_stream_header(c->stream, ":path"),
        .end_stream = tt_h2_stream_eof(c->stream),
    };
    int err = 0;

    up->start_us = conn_now_us(c);
    up->session = tt_h2_new(TT_H2_CLIENT, NULL, NULL, c);
    if (regular == NULL || up->session == NULL) {
        free(regular);
        return -ENOMEM;
    }
    req.headers = regular;
    req.nheaders = k;
    up->stream = tt_h2_open(up->session, &req, &h2up_stream_callbacks, c, &err);
    free(regular);
    if (up->stream == NULL)
        return err < 0 ? err : TT_E_HTTP;
    up->request_ended = req.end_stream;
    return h2up_flush(c);
}

/* A piece of the caller's request body, to the workload's stream. Returns 0 or <0. */
static int h2up_request_body(struct tt_conn *c, const uint8_t *data, size_t n)
{
    struct tt_h2_upstream *up = c->h2up;
    int r = up->stream != NULL ? tt_h2_stream_write(up->stream, data, n) : TT_E_LINK_CLOSED;

    up->request_bytes += n;
    return r == 0 ? h2up_flush(c) : r;
}

/* The caller ended its request: so does the workload's stream. Returns 0 or <0. */
static int h2up_request_end(struct tt_conn *c)
{
    struct tt_h2_upstream *up = c->h2up;
    int r = 0;

    if (!up->request_ended && up->stream != NULL) {
        up->request_ended = true;
        r = tt_h2_stream_end(up->stream);
    }
    return r == 0 ? h2up_flush(c) : r;
}

/* Bytes from the workload: its session's frames. Returns 0 or <0. */
static int h2up_from_workload(struct tt_conn *c, const uint8_t *data, size_t n)
{
    int r = tt_h2_feed(c->h2up->session, data, n);

    if (r == 0)
        r = h2up_pump(c);
    if (r == 0)
        r = h2up_flush(c);
    return r;
}

/* Frees the workload half. */
static void h2up_free(struct tt_h2_upstream *up)
{
    if (up == NULL)
        return;
    tt_h2_free(up->session); /* its stream with it */
    free(up);
}

/* ---- outbound HTTP/1.x apps: each request a stream on the pool ------------------------ */

/* With pooling on, an outbound app whose first bytes are an HTTP/1.x request is served
 * request by request (http/h1h2.h): each request opens a stream of its own on a link to
 * an endpoint picked for it (balanced per request), its response goes back as HTTP/1.1,
 * and the next request, read only then, starts over. A request that waits for a link
 * (TT_H1H2_WAIT) opens its stream in h1_settle, which runs where no pool or session call
 * is under way: after the app's bytes are fed, or on the timer (h1_kick). The connection
 * stays in RELAY between requests (its idle deadline), in CONNECTING while a request
 * waits for its link. An upgrade (CONNECT, WebSocket), a destination that does not pool
 * (direct) and a port the peer declares opaque turn the rest of the connection into
 * bytes relayed as before, from the current request's first byte. */

static const struct tt_h2_stream_callbacks h1_stream_callbacks;

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
static void h1_record(struct tt_conn *c, int status, const char *reason)
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
        .duration_us = conn_now_us(c) - q->start_us,
        .reason = reason,
    };
    request_over(c, c->expected_id, &rq);
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
    request_over(c, c->expected_id, &rq);
}

/* Has h1_settle and h1_progress run on the next loop iteration, outside the pool's and
 * the session's calls under way. Only while relaying: in CONNECTING the timer is the
 * connect deadline, and pool_ride kicks when the link comes. */
static void h1_kick(struct tt_conn *c)
{
    if (c->state != TT_CONN_S_RELAY)
        return;
    c->h1_kicked = true;
    uv_timer_start(&c->timer, on_timer, 0, 0);
}

/* Sends what the link's session has queued after a stream was touched. Returns 0 or <0. */
static int h1_flush(struct tt_conn *c)
{
    if (c->member.link != NULL)
        tt_link_flush_soon(c->member.link);
    return 0;
}

/* The current request's --request-timeout deadline, when there is one, starts now (a
 * retry keeps the first); conn_enter(RELAY) arms the timer for it. */
static void h1_arm_deadline(struct tt_conn *c)
{
    uint64_t timeout = c->listener->cfg->request_timeout_ms;

    if (timeout == 0)
        timeout = conn_settings(c)->request_timeout_ms;
    if (timeout != 0 && timeout != TT_REQUEST_TIMEOUT_NONE && c->h1_deadline_ms == 0)
        c->h1_deadline_ms = uv_now(&c->worker->loop) + timeout;
}

/* Inside h1_on_request, the common case: a link to the request's destination is up with
 * room, so the request rides it at once (pool_ride leaves the session in h1_session) and
 * its stream opens in the same call, without h1_settle reading the request a second time.
 * A balanced service picks its endpoint first. Anything more (no endpoint, a link to dial
 * or wait for, a destination gone direct) is left to h1_settle: returns false. */
static bool h1_ride_now(struct tt_conn *c)
{
    int r;

    if (c->state != TT_CONN_S_RELAY || c->direct || c->member.link != NULL)
        return false;
    if (c->service != NULL && !c->balancer_active && !conn_pick_endpoint(c))
        return false;
    c->h1_settling = true; /* pool_ride: the stream opens here, no timer */
    r = tt_pool_attach_up(c->worker->pool, &c->member, &c->target, c->expected_id,
                          c->snapshot->identity, uv_now(&c->worker->loop));
    c->h1_settling = false;
    if (r != 1 || c->h1_session == NULL)
        return false;
    c->tunnel = true;
    h1_arm_deadline(c);
    conn_enter(c, TT_CONN_S_RELAY); /* (re)armed for the deadline */
    return true;
}

/* h1h2: a request's head is complete. It opens its stream on the link pool_ride gave (or
 * one up now: h1_ride_now), or waits for h1_settle: to find it a link, or to relay the
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
        c->h1_rq->start_us = conn_now_us(c);
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
    if (c->stream == NULL)
        return err < 0 ? err : TT_E_LINK_CLOSED;
    return 0;
}

/* h1h2: a piece of the request body, onto its stream. */
static int h1_on_body(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    if (c->h1_sink)
        return 0;
    c->h1_rq->request_bytes += len;
    return stream_write(c, data, len);
}

/* h1h2: the request is complete: a body's stream is ended (one without a body was opened
 * ended). */
static int h1_on_end(void *ud)
{
    struct tt_conn *c = ud;

    if (c->h1_sink || !c->h1_has_body)
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
    app_push_soon(c);
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
        conn_tunnel_leave(c); /* releases the stream: a CANCEL unless our side ended */
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
        conn_close(c, r, true);
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
        conn_enter(c, TT_CONN_S_RELAY);
    c->h1_sink = true;
    r = tt_h1h2_rewind(c->h1h2);
    c->h1_sink = false;
    if (r < 0 && r != -EAGAIN) { /* -EAGAIN: not retained; the answer closes */
        conn_close(c, r, true);
        return;
    }
    r = tt_h1h2_answer(c->h1h2, status, reason, NULL);
    if (r == -EINVAL) {
        conn_close(c, err, true);
        return;
    }
    h1_record(c, status, reason);
    TT_COUNTER_ADD(conn_counters(c)->refusals_answered, 1);
    if (!h1_check(c, r))
        return;
    h1_kick(c); /* the next request, read by the answer, may wait for a link */
    relay_progress(c);
}

/* No endpoint or link could take the current request (err, as for a connection that could
 * not get through: refusal_answer): the app is told why, and may send the next one. */
static void h1_fail(struct tt_conn *c, int err)
{
    const char *reason = NULL;
    int status = refusal_answer(err, &reason);

    tt_log(TT_LOG_WARN, "request_failed", TT_LS("listener", c->listener->cfg->name),
           TT_LS("upstream", c->target.text), TT_LS("error", tt_strerror(err)),
           TT_LS("reason", reason));
    h1_answer(c, status, reason, err);
}

/* The current request's stream ended before its response did (err): one the peer never
 * processed (refused), or an idempotent one with no byte answered yet, is sent again on a
 * new stream, once; anything else unanswered gets 502; a response cut short resets the
 * connection. */
static void h1_stream_failed(struct tt_conn *c, int err, bool refused)
{
    bool answered = tt_h1h2_responded(c->h1h2);

    if (!answered && (refused || c->h1_idempotent) &&
        c->refused_retries < TT_CONN_REFUSED_RETRIES) {
        c->refused_retries++;
        TT_COUNTER_ADD(conn_counters(c)->pool.requests_retried, 1);
        h1_leave(c);
        c->h1_need_link = true;
        if (c->state != TT_CONN_S_RELAY)
            conn_enter(c, TT_CONN_S_RELAY);
        h1_kick(c);
        return;
    }
    if (answered) {
        side_ended(c, c->tls_side, UV_ECONNRESET);
        conn_close(c, err, true);
        return;
    }
    h1_answer(c, 502, "upstream_reset", err);
}

/* pool ops lost, for an HTTP/1.x app: the link under its request is gone. Before the
 * request's stream opened it is a failed connect (another endpoint, or the app is told);
 * after, h1_stream_failed decides. */
static void h1_lost(struct tt_conn *c, int err)
{
    bool opened = c->state == TT_CONN_S_RELAY && c->h1_session == NULL;

    c->h1_session = NULL;
    if (opened)
        h1_stream_failed(c, err, false);
    else
        conn_connect_failed(c, err);
}

/* The current request's stream opens on the link pool_ride gave: the request is read again
 * from its first byte (tt_h1h2_rewind), h1_on_request opens the stream this time, and its
 * body follows. */
static void h1_open(struct tt_conn *c)
{
    int r;

    h1_arm_deadline(c);
    conn_enter(c, TT_CONN_S_RELAY); /* (re)armed for the deadline */
    r = tt_h1h2_rewind(c->h1h2);
    c->h1_session = NULL;
    if (r == -EAGAIN) {
        h1_answer(c, 502, "upstream_reset", TT_E_LINK_CLOSED); /* too long to send again */
        return;
    }
    (void)h1_check(c, r);
}

/* The current request's deadline (--request-timeout) passed: one not answered yet gets
 * 504 request_timeout (its stream is cancelled); a response under way is cut: the
 * connection is reset. */
static void h1_timed_out(struct tt_conn *c)
{
    c->h1_deadline_ms = 0;
    tt_log(TT_LOG_WARN, "request_timeout", TT_LS("listener", c->listener->cfg->name),
           TT_LS("upstream", c->target.text),
           TT_LS("answered", tt_h1h2_responded(c->h1h2) ? "partly" : "no"));
    if (tt_h1h2_responded(c->h1h2)) {
        conn_close(c, TT_E_TIMEOUT, true);
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
        conn_close(c, r, true);
        return;
    }
    h1_leave(c);
    tt_h1h2_free(c->h1h2);
    c->h1h2 = NULL;
    c->h1_upgrade = false;
    c->h1_need_link = false;
    c->route = "pool";
    side_set_reading(c, &c->down, false);
    conn_start_connect(c);
}

/* Does what the translator's callbacks left to do, outside any pool or session call: a
 * request that waits for a link gets one (riding at once opens its stream here), an
 * upgrade hands the connection over. Loops while each step lets the next request start
 * (an answer of the sidecar's own reads the next one). */
static void h1_settle(struct tt_conn *c)
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
        conn_start_connect(c); /* picks the endpoint; attaches; pool_ride may run inside */
        c->h1_settling = false;
    }
}

/* After the translator took the app's bytes or end (r): refusals counted, errors end the
 * connection, then what the callbacks asked for is done. */
static void h1_after(struct tt_conn *c, int r)
{
    if (!h1_check(c, r))
        return;
    h1_settle(c);
    relay_progress(c);
    /* Waiting for a link (no relay_progress then): the app is not read past what the
     * translator holds. */
    if (c->state == TT_CONN_S_CONNECTING && c->h1h2 != NULL && !tt_h1h2_wants_app(c->h1h2))
        side_set_reading(c, &c->down, false);
}

/* Bytes from the app (read in RELAY and while a request waits for its link; dropped once
 * the translator is done). */
static void h1_app_read(struct tt_conn *c, const uint8_t *data, size_t n)
{
    if (tt_h1h2_done(c->h1h2)) {
        relay_progress(c); /* read until the app closes: no reset destroys the answer */
        return;
    }
    h1_after(c, tt_h1h2_from_app(c->h1h2, (const char *)data, n));
}

/* The app closed its side: the current response still goes out, then our FIN; a request
 * it cut short is given up. */
static void h1_app_eof(struct tt_conn *c)
{
    int r;

    c->down.read_eof = true;
    if (tt_h1h2_done(c->h1h2)) {
        relay_progress(c);
        return;
    }
    r = tt_h1h2_app_eof(c->h1h2);
    if (r == TT_E_HTTP) {
        conn_close(c, r, true);
        return;
    }
    h1_after(c, r);
}

/* Moves the current response to the app while its queue has room: the head once it is
 * known whether a body follows, the body, and at the stream's end the response's end,
 * after which the next request may start (inside). Returns 0, or as
 * tt_h1h2_response_end() (TT_E_HTTP: the next request was refused and answered), or
 * <0. */
static int h1_pump_response(struct tt_conn *c)
{
    struct tt_h2_stream *s = c->stream;
    int r;

    if (s == NULL || !c->h1_head)
        return 0;
    if (!tt_h1h2_responded(c->h1h2)) {
        size_t k = 0;
        struct tt_h2_header *fields = regular_fields(s, false, &k);
        if (fields == NULL)
            return -ENOMEM;
        r = tt_h1h2_respond(c->h1h2, tt_h2_stream_status(s), fields, k, tt_h2_stream_eof(s));
        free(fields);
        if (r < 0)
            return r;
    }
    while (tt_h2_stream_readable(s) > 0 && side_queue_len(&c->down) < TT_CONN_QUEUE_MAX) {
        const uint8_t *data;
        size_t n = tt_h2_stream_peek(s, &data);
        r = tt_h1h2_response_body(c->h1h2, (const char *)data, n);
        if (r < 0)
            return r;
        c->h1_rq->response_bytes += n;
        tt_h2_stream_consume(s, n);
        tunnel_count(c->tls_side, n, true);
    }
    if (!tt_h2_stream_eof(s))
        return 0;
    h1_record(c, tt_h2_stream_status(s), NULL);
    h1_request_over(c);
    return tt_h1h2_response_end(c->h1h2);
}

/* relay_progress() of an HTTP/1.x app: the response moves on; what needs a link or a
 * hand-over waits for the timer (this may run inside a session's call); the app is read
 * while the translator wants its bytes and the stream's queue has room; once the
 * translator is done the app gets our FIN, and the connection closes when the app's side
 * has ended too. */
static void h1_progress(struct tt_conn *c)
{
    struct tt_side *app = &c->down;
    bool room, done;

    if (!h1_check(c, h1_pump_response(c)) || c->state != TT_CONN_S_RELAY)
        return; /* h1_check flushed the window given back */
    if (c->h1_need_link || c->h1_upgrade || c->h1_session != NULL)
        h1_kick(c);
    done = tt_h1h2_done(c->h1h2);
    if (done)
        app->want_shutdown = true;
    side_maybe_shutdown(c, app);
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (done && app->shutdown_done && app->read_eof) {
        conn_close(c, 0, false);
        return;
    }
    room = c->stream == NULL || tt_h2_stream_queued(c->stream) < TT_CONN_QUEUE_MAX;
    if (!room)
        c->member.blocked = true; /* the link wakes it (pool_progress) */
    side_set_reading(c, app, !app->read_eof && (done || (room && tt_h1h2_wants_app(c->h1h2))));
}

/* The response head arrived. A peer that could not reach its workload processed nothing:
 * a balanced service tries another endpoint, as after a failed connect, and the app is
 * told 503 upstream_unavailable when none is left, as for a tunnel; a peer that serves
 * the port opaque takes the rest as a tunnel. Otherwise the head goes to the app: now when
 * its length frames it, else once it is known whether a body follows (on_end may come next
 * in the same frame): on the timer, or at on_end. */
static void h1_stream_on_headers(struct tt_h2_stream *s, void *ud)
{
    struct tt_conn *c = ud;
    const char *why = tt_h2_stream_header(s, "x-tether-reason");
    int status = tt_h2_stream_status(s);

    if (why != NULL && !tt_h1h2_responded(c->h1h2)) {
        if ((status == 502 || status == 503) &&
            (strcmp(why, "upstream_connect_failed") == 0 || strcmp(why, "connection_limit") == 0)) {
            TT_COUNTER_ADD(conn_counters(c)->pool.streams_refused, 1);
            conn_connect_failed(c, TT_E_TUNNEL_REFUSED);
            return;
        }
        if (status == 501 && strcmp(why, "opaque_port") == 0) {
            h1_leave(c);
            c->h1_upgrade = true; /* h1_settle hands the connection over */
            h1_kick(c);
            return;
        }
    }
    c->h1_head = true;
    if (status == 204 || status == 304 || tt_h2_stream_header(s, "content-length") != NULL)
        relay_progress(c); /* framed by its length already: the head goes now */
    else
        h1_kick(c);
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
    .on_data = tunnel_on_data, /* relay_progress: the response moves on */
    .on_end = tunnel_on_data,
    .on_reset = h1_stream_on_reset,
};

/* Outbound: the app's first bytes are an HTTP/1.x request: its requests become streams.
 * The connection relays from now on. */
static void h1_start(struct tt_conn *c)
{
    struct tt_h1h2_io io = {c, h1_on_request, h1_on_body, h1_on_end, h1_to_app};
    int r;

    c->h1h2 = tt_h1h2_new(&io, c->target.text);
    c->h1_rq = calloc(1, sizeof(*c->h1_rq));
    if (c->h1h2 == NULL || c->h1_rq == NULL) {
        conn_close(c, -ENOMEM, true);
        return;
    }
    c->route = "http";
    c->verdict = "allow";
    conn_enter(c, TT_CONN_S_RELAY);
    r = tt_h1h2_from_app(c->h1h2, (const char *)tt_buf_head(&c->early), c->early.len);
    tt_buf_consume(&c->early, c->early.len);
    if (r == 0 && c->down.read_eof)
        r = tt_h1h2_app_eof(c->h1h2);
    h1_after(c, r);
}

/* pool ops: opens an outbound link's carrier to `target`, like an outbound connection of
 * `like`'s listener. */
static int pool_dial(struct tt_link *link, struct tt_conn *like, const struct tt_addr *target,
                     const char *expected_id)
{
    struct tt_conn *c = conn_new(like->listener);

    if (c == NULL)
        return -ENOMEM;
    c->carrier = true;
    c->link = link;
    c->target = *target;
    c->expected_id = expected_id; /* the pool's destination keeps it */
    c->route = "link";
    snprintf(c->peer_addr, sizeof(c->peer_addr), "%.63s", target->text);
    conn_track(c, like->snapshot, false);
    conn_start_connect(c);
    return 0;
}

/* pool ops: encrypts session bytes onto the carrier's socket. */
static int pool_send(struct tt_conn *c, const uint8_t *data, size_t len)
{
    int r = tt_tls_write(c->tls, data, len);

    return r == 0 ? tls_flush(c) : r;
}

/* pool ops: the carrier takes more while nothing waits behind its write in flight: each
 * batch's ciphertext (one record) then moves into the queue whole, never outgrowing its
 * slab, as a plaintext read's does in a direct relay. */
static bool pool_writable(struct tt_conn *c)
{
    return c->state == TT_CONN_S_RELAY && c->tls_side->queued.len == 0;
}

/* pool ops: the link is up: open the tunnel (its HEADERS go with the link's next flush). */
static int pool_ride(struct tt_conn *c, struct tt_h2 *h2)
{
    int err = 0;

    if (c->h1h2 != NULL) {
        /* An HTTP/1.x app's request: its stream opens in h1_settle, outside the pool's
         * call (now, when the link was up at once; else on the next timer tick). */
        c->h1_session = h2;
        if (!c->h1_settling) {
            conn_enter(c, TT_CONN_S_RELAY);
            c->h1_kicked = true;
            uv_timer_start(&c->timer, on_timer, 0, 0);
        }
        return 0;
    }
    c->stream = tt_h2_open_tunnel(h2, TT_POOL_PROTOCOL, c->target.text, NULL, 0, &tunnel_callbacks,
                                  c, &err);
    if (c->stream == NULL) {
        conn_close(c, err < 0 ? err : TT_E_LINK_CLOSED, true);
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
    conn_connect_failed(c, err);
}

/* pool ops: the link under c's tunnel is gone. */
static void pool_lost(struct tt_conn *c, int err)
{
    if (c->stream != NULL) {
        tt_h2_stream_release(c->stream);
        c->stream = NULL;
    }
    if (c->state == TT_CONN_S_CLOSING)
        return;
    if (c->h1h2 != NULL) {
        h1_lost(c, err);
        return;
    }
    if (!conn_is_inbound(c) && c->state == TT_CONN_S_CONNECTING) {
        conn_connect_failed(c, err);
        return;
    }
    side_ended(c, c->tls_side, UV_ECONNRESET);
    conn_close(c, err, true);
}

/* pool ops: the carrier's link may be done: its tick runs on the next loop iteration. */
static void pool_wake(struct tt_conn *c)
{
    if (c->state == TT_CONN_S_RELAY)
        uv_timer_start(&c->timer, on_timer, 0, 0);
}

/* The worker's loop is about to wait again: HTTP/1.x apps get what was gathered for them
 * (app_push_soon), then the links flush what their streams queued. */
static void on_flush_idle(uv_idle_t *idle)
{
    struct tt_worker *w = tt_container_of(idle, struct tt_worker, flush_idle);

    (void)uv_idle_stop(idle);
    while (w->push_conns != NULL) {
        struct tt_conn *c = w->push_conns;
        app_push_unqueue(c);
        int r = side_push(c, &c->down);
        if (r < 0)
            conn_close(c, r, true);
        else
            relay_progress(c); /* a drained queue: more of the response, or our FIN */
    }
    tt_pool_run_flushes(w->pool);
}

/* pool ops: a link of the carrier's worker wants its deferred flush before the loop
 * waits. */
static void pool_defer(struct tt_conn *carrier)
{
    worker_defer_writes(carrier->worker);
}

/* pool ops: a deferred flush failed: the carrier closes (its link with it). */
static void pool_broken(struct tt_conn *carrier, int err)
{
    if (carrier->state != TT_CONN_S_CLOSING)
        conn_close(carrier, err, true);
}

/* pool ops: c's stream queue drained: it may read its app side again. */
static void pool_progress(struct tt_conn *c)
{
    relay_progress(c);
}

/* pool ops: inbound: a tunnel arrived on the carrier's link. It is an app connection of
 * the carrier's listener, from the caller the carrier verified, to the port the carrier
 * was dialled on (never where :authority points): authorized now, with the newest
 * snapshot, then connected to the workload; the 200 goes out once that connect succeeds
 * (conn_start_relay), a refusal otherwise (conn_tunnel_end). */
static int pool_accept(struct tt_conn *carrier, struct tt_link *link, struct tt_h2_stream *s)
{
    struct tt_worker *w = carrier->worker;
    bool request = strcmp(tt_h2_stream_header(s, ":method"), "CONNECT") != 0;
    bool grpc = request && stream_is_grpc(s);
    const struct tt_transparent_cfg *t = conn_settings(carrier)->transparent;
    struct tt_conn *c;

    if (request &&
        port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&carrier->target))) {
        /* An opaque port's bytes are relayed unread: only tunnels reach it. */
        static const struct tt_h2_header why = {"x-tether-reason", 15, "opaque_port", 11};
        (void)tt_h2_respond(s, 501, &why, 1, true);
        tt_h2_stream_release(s);
        return 0;
    }

    if (grpc && !grpc_path_canonical(tt_h2_stream_header(s, ":path"))) {
        /* Nothing to normalize in a gRPC path: one that would need it is refused. */
        static const struct tt_h2_header why = {"x-tether-reason", 15, "bad_target", 10};
        (void)tt_h2_respond(s, 400, &why, 1, true);
        tt_h2_stream_release(s);
        return 0;
    }
    c = conn_new(carrier->listener);
    if (c != NULL) {
        struct tt_h2h1_io io = {c, h2h1_to_server, h2h1_respond, h2h1_body, h2h1_end};
        c->tunnel_peer_id = strdup(tt_tls_peer_id(carrier->tls));
        c->h2h1 = request && !grpc ? tt_h2h1_new(&io) : NULL;
        c->h2up = grpc ? calloc(1, sizeof(*c->h2up)) : NULL;
    }
    if (c == NULL || c->tunnel_peer_id == NULL || (request && c->h2h1 == NULL && c->h2up == NULL)) {
        if (c != NULL) {
            tt_h2h1_free(c->h2h1);
            c->h2h1 = NULL;
            free(c->h2up);
            c->h2up = NULL;
            uv_close((uv_handle_t *)&c->timer, on_untracked_closed);
        }
        return -ENOMEM;
    }
    c->tunnel = true;
    c->stream = s;
    c->target = carrier->target;
    c->route = c->h2up != NULL ? "grpc" : c->h2h1 != NULL ? "h2" : "pool";
    memcpy(c->peer_addr, carrier->peer_addr, sizeof(c->peer_addr));
    tt_h2_stream_set_callbacks(s, &tunnel_callbacks, c);
    conn_track(c, w->snapshot, true);
    tt_link_add_tunnel(link, &c->member);
    if (carrier->snapshot->identity != w->snapshot->identity) {
        /* Our identity rotated since the link was made: this tunnel is served, the next
         * ones go to a link with the new certificate. */
        TT_COUNTER_ADD(conn_counters(carrier)->pool.links_recycled, 1);
        tt_link_retire(link);
    }
    if (w->n_conns > w->settings->max_connections) {
        TT_COUNTER_ADD(conn_counters(c)->refused_limit, 1);
        conn_close(c, TT_E_CONN_LIMIT, true);
        return 0;
    }
    if (!conn_authorize(c)) {
        conn_close(c, TT_E_DENIED, true);
        return 0;
    }
    conn_start_connect(c);
    return 0;
}

const struct tt_pool_ops tt_conn_pool_ops = {
    .dial = pool_dial,
    .send = pool_send,
    .writable = pool_writable,
    .ride = pool_ride,
    .wait_failed = pool_wait_failed,
    .lost = pool_lost,
    .wake = pool_wake,
    .progress = pool_progress,
    .accept = pool_accept,
    .defer = pool_defer,
    .broken = pool_broken,
};

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
        conn_hs_failed(c, TT_HS_REVOKED);
        conn_close(c, TT_E_REVOKED, true);
        return;
    }

    TT_COUNTER_ADD(lc->handshakes, 1);
    if (tt_tls_resumed(c->tls))
        TT_COUNTER_ADD(lc->handshakes_resumed, 1);
    tt_metrics_observe(&lc->handshake_us, (uv_now(&c->worker->loop) - c->phase_ms) * 1000);
    if (c->carrier) {
        carrier_up(c);
        return;
    }
    if (conn_is_inbound(c) && carrier_negotiated(c)) {
        carrier_accept(c);
        return;
    }
    if (!conn_is_inbound(c)) {
        c->verdict = "allow";
        conn_start_relay(c);
        return;
    }
    if (!conn_authorize(c)) {
        /* A refused caller gets a reset and never a byte from the backend. */
        conn_close(c, TT_E_DENIED, true);
        return;
    }
    /* Hold the caller's early data in the kernel until the upstream answers. */
    side_set_reading(c, c->tls_side, false);
    if (c->state != TT_CONN_S_CLOSING)
        conn_start_connect(c);
}

/* Drives the handshake after new input; finishes or fails it. */
static void handshake_progress(struct tt_conn *c)
{
    int r = tt_tls_handshake(c->tls);
    int fr = tls_flush(c);

    if (r < 0) {
        conn_hs_failed(c, tt_hs_reason_from_err(r));
        /* Close gracefully so the alert tls_flush sent reaches the peer. */
        conn_close(c, r, false);
        return;
    }
    if (fr < 0) {
        conn_close(c, fr, true);
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
        conn_close(c, -ENOMEM, true);
        return;
    }
    tt_tls_set_revocations(c->tls, c->snapshot->revocations);
    tt_tls_set_crls(c->tls, c->snapshot->crls);
    /* Links between sidecars: a carrier offers the pool's token, an inbound with pooling
     * on selects it (net/pool.h), and "h2" for callers outside the mesh, except on an
     * opaque port, whose bytes are relayed unread (an h2 caller's requests would be
     * translated); anyone else shakes hands without ALPN, as before. */
    const struct tt_transparent_cfg *t = conn_settings(c)->transparent;
    const char *serve = port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&c->target))
                            ? TT_POOL_ALPN
                            : TT_POOL_ALPN_SERVE;
    if ((c->carrier && tt_tls_set_alpn(c->tls, TT_POOL_ALPN_OFFER) < 0) ||
        (inbound && conn_settings(c)->pool && tt_tls_set_alpn(c->tls, serve) < 0)) {
        conn_close(c, -ENOMEM, true);
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
            conn_close(c, -ENOMEM, true);
            return;
        }
        memcpy(p, early, n);
        tt_tls_input_commit(c->tls, n);
    }
    conn_enter(c, TT_CONN_S_HANDSHAKE);
    side_set_reading(c, c->tls_side, true);
    if ((!inbound || n > 0) && c->state == TT_CONN_S_HANDSHAKE)
        handshake_progress(c); /* our ClientHello, or the client's read already */
}

static void conn_start_handshake(struct tt_conn *c)
{
    conn_start_handshake_with(c, NULL, 0);
}

/* True when a and b are one IP and port (IPv4-mapped IPv6 equal to its IPv4). */
static bool same_address(const struct tt_addr *a, const struct tt_addr *b)
{
    struct tt_addr_key ka, kb;

    return tt_addr_key_of((const struct sockaddr *)&a->ss, &ka) &&
           tt_addr_key_of((const struct sockaddr *)&b->ss, &kb) &&
           memcmp(&ka, &kb, sizeof(ka)) == 0;
}

static bool port_listed(const uint16_t *ports, size_t n, uint16_t port)
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
           !port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&c->target));
}

/* Outbound detection: data[0..n) the app's next bytes (kept in c->early until they are
 * relayed or translated); `final` when no more will be waited for (the timer, the app's
 * FIN). An HTTP/1.x request line makes the connection an HTTP/1.x app's (h1_start);
 * anything else (an HTTP/2 preface, TLS, another protocol, or silence: a server-first
 * protocol) rides a tunnel with those bytes first (conn_send_early). */
static void outbound_detect(struct tt_conn *c, const uint8_t *data, size_t n, bool final)
{
    enum tt_detect_proto p = TT_DETECT_OPAQUE;

    if (c->state != TT_CONN_S_DETECT)
        return;
    if (n > 0 && tt_buf_append(&c->early, data, n) < 0) {
        conn_close(c, -ENOMEM, true);
        return;
    }
    if (c->early.len > 0)
        p = tt_detect_check(tt_buf_head(&c->early), c->early.len, TT_DETECT_LIMIT);
    if (p == TT_DETECT_MORE && !final)
        return;
    uv_timer_stop(&c->timer);
    side_set_reading(c, &c->down, false);
    c->detected = true;
    c->state = TT_CONN_S_ACCEPTED;
    if (p == TT_DETECT_HTTP1)
        h1_start(c);
    else
        conn_start_connect(c);
}

/* Outbound: what the app sent while its protocol was detected (or before its requests
 * were handed over to a byte relay) goes first on the new relay, and its FIN if it came
 * then. Returns 0 or <0. */
static int conn_send_early(struct tt_conn *c)
{
    int r = 0;

    if (conn_is_inbound(c) || !c->detected)
        return 0;
    if (c->early.len > 0) {
        r = secure_write(c, tt_buf_head(&c->early), c->early.len);
        tt_buf_consume(&c->early, c->early.len);
        if (r == 0)
            r = secure_flush(c);
    }
    if (r == 0 && c->down.read_eof)
        r = tls_close_notify_once(c);
    return r;
}

/* Permissive inbound: the first bytes (none: the client said nothing within the
 * detection timeout, or sent a FIN) tell TLS from plaintext. A TLS record of type
 * handshake (0x16, version 0x03..) is a ClientHello: the handshake proceeds with the
 * bytes read. Anything else is a plaintext caller: counted per port, admitted by the
 * policy's default alone (it has no identity), and relayed with those bytes first. */
static void detect_done(struct tt_conn *c, const uint8_t *data, size_t n)
{
    struct tt_listener_counters *lc = conn_counters(c);
    char port[8];

    if (!conn_is_inbound(c)) {
        outbound_detect(c, data, n, data == NULL); /* the timer fired: no more is waited */
        return;
    }
    uv_timer_stop(&c->timer);
    side_set_reading(c, &c->down, false);
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
        conn_close(c, -ENOMEM, true);
        return;
    }
    if (!conn_authorize(c)) {
        conn_close(c, TT_E_DENIED, true);
        return;
    }
    conn_start_connect(c);
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
        conn_close(c, TT_E_NOT_REDIRECTED, true);
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
        conn_close(c, 0, false);
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
            conn_close(c, -EINVAL, true);
            return false;
        }
        c->route = "mesh";
        if (t->permissive &&
            !port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&c->target))) {
            c->tls_side = c->plain_side = NULL; /* until the first bytes tell */
            conn_enter(c, TT_CONN_S_DETECT);
            side_set_reading(c, &c->down, true);
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
        conn_close(c, TT_E_UNKNOWN_DEST, true);
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

/* A new connection of listener l on its worker, with nothing open but its timer:
 * sides, buffers and the listener's target set. NULL when out of memory. */
static struct tt_conn *conn_new(struct tt_listener *l)
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
static void on_untracked_closed(uv_handle_t *handle)
{
    free(tt_container_of((uv_timer_t *)handle, struct tt_conn, timer));
}

/* Puts c on its worker's list with `snapshot`; an app connection (`counted`) is also
 * counted as accepted and in n_conns. From here on c ends in conn_close. */
static void conn_track(struct tt_conn *c, struct tt_snapshot *snapshot, bool counted)
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
    struct tt_conn *c = w->snapshot != NULL ? conn_new(l) : NULL;
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
    conn_track(c, w->snapshot, true);
    if (r < 0) {
        conn_close(c, r, true);
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
        conn_close(c, TT_E_CONN_LIMIT, true);
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
        conn_enter(c, TT_CONN_S_DETECT);
        side_set_reading(c, &c->down, true);
    } else {
        conn_start_connect(c);
    }
    return;

err_refuse:
    /* Without memory for a connection (or before the first snapshot), drop the client. */
    if (c != NULL)
        uv_close((uv_handle_t *)&c->timer, on_untracked_closed);
    close(fd);
    TT_COUNTER_ADD(lc->refused_limit, 1);
}

/* ---- closing ----------------------------------------------------------------------- */

static void conn_free(struct tt_conn *c)
{
    /* Here, not in conn_close: a close may start inside one of the gate's callbacks. */
    tt_gate_free(c->gate, conn_now_us(c)); /* reports requests left unanswered */
    tt_h2h1_free(c->h2h1);
    tt_h1h2_free(c->h1h2);
    free(c->h1_rq);
    h2up_free(c->h2up);
    tt_tls_free(c->tls);
    tt_buf_done(&c->down.inflight);
    tt_buf_done(&c->down.queued);
    tt_buf_done(&c->up.inflight);
    tt_buf_done(&c->up.queued);
    tt_buf_done(&c->refusal_held);
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
    const char *peer_id = conn_peer_id(c);
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
static void conn_close(struct tt_conn *c, int err, bool reset)
{
    struct tt_worker *w = c->worker;

    if (c->state == TT_CONN_S_CLOSING || conn_refusal_start(c, err, reset))
        return;
    /* Outbound over TLS 1.3, our handshake completes before the upstream has checked our
     * certificate: a TLS failure before it confirmed (its alert) is a refused handshake,
     * not an allowed connection (README "Logs"). */
    if (c->state == TT_CONN_S_RELAY && !conn_is_inbound(c) && c->tls != NULL && err <= TT_E_TLS &&
        err >= TT_E_TLS_CLOSED && !tt_tls_peer_confirmed(c->tls)) {
        c->verdict = "error";
        conn_hs_failed(c, tt_hs_reason_from_err(err));
    }
    if (c->hs_reason >= 0 && c->tls != NULL && tt_tls_peer_alert(c->tls) >= 0)
        side_ended(c, c->tls_side, 0); /* the peer's alert ended it */
    if (reset && c->reset_by == NULL)
        c->reset_by = "proxy";
    if (c->h1h2 != NULL)
        h1_record(c, 0, NULL); /* a request the connection ended under, unanswered */
    if (c->push_queued) {      /* what was gathered for the app (an answer) goes first */
        app_push_unqueue(c);
        (void)side_push(c, &c->down);
    }
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
        conn_tunnel_end(c, err, reset);
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
    conn_close(c, TT_E_REVOKED, true);
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
    conn_close(c, TT_E_REVOKED, true);
    return true;
}

/* Resets both sockets now. */
void tt_conn_abort(struct tt_conn *c)
{
    if (c->refusal_err == 0)
        c->refusal_err = UV_ECANCELED; /* at once: no app is told anything */
    conn_close(c, UV_ECANCELED, true);
}
