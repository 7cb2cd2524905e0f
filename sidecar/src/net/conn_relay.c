/* The connection's data path (conn.h): reading, writing and relaying. Rules:
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

#include <errno.h>

#include "core/errors.h"
#include "http/gate.h"
#include "http/h2.h"
#include "http/h2h1.h"
#include "metrics/metrics.h"
#include "net/conn.h"
#include "net/conn_int.h"
#include "net/pool.h"
#include "net/worker-t.h"
#include "tls/tls.h"

static void on_flush_idle(uv_idle_t *idle);
static int side_send_buf(struct tt_conn *c, struct tt_side *s, struct tt_buf *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void conn_gate_settle(struct tt_conn *c);

/* ---- writing --------------------------------------------------------------------- */

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
    if (status < 0 && s == &c->up && tt__workload_retry(c))
        return;
    if (status < 0) {
        tt__side_ended(c, s, status);
        tt__conn_close(c, status, true);
        return;
    }
    tt__side_start_write(c, s);
    tt__relay_progress(c);
}

/* Hands the queued bytes to uv_write unless a write is already in flight (or the side is
 * corked). */
void tt__side_start_write(struct tt_conn *c, struct tt_side *s)
{
    if (s->inflight.len > 0 || s->queued.len == 0 || s->corked)
        return;
    struct tt_buf tmp = s->inflight;
    s->inflight = s->queued;
    s->queued = tmp;

    uv_buf_t b = uv_buf_init((char *)tt_buf_head(&s->inflight), (unsigned)s->inflight.len);
    int r = uv_write(&s->write_req, (uv_stream_t *)s->tcp, &b, 1, on_write);
    if (r < 0)
        tt__conn_close(c, r, true);
}

/* Writes data[0..len) on side s straight to the socket when nothing is queued there (a
 * queued byte must go first). Returns the bytes the kernel took (0 when it took none or
 * a queue waits), or <0 (the caller closes the connection). */
static ssize_t side_try_write(struct tt_conn *c, struct tt_side *s, const uint8_t *data, size_t len)
{
    if (s->inflight.len > 0 || s->queued.len > 0 || s->corked)
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

/* Keeps what a request stream sends to a kept workload connection for tt__workload_retry,
 * while that is allowed and small enough. */
static void replay_keep(struct tt_conn *c, const uint8_t *data, size_t len)
{
    if (c->up_replay.len + len > TT_CONN_REPLAY_MAX ||
        tt_buf_append(&c->up_replay, data, len) < 0) {
        c->up_replay_armed = false;
        tt_buf_done(&c->up_replay);
    }
}

/* Sends data on side s: straight to the socket when nothing is queued, the rest copied
 * into the queue. Returns 0 or <0 (the caller closes the connection). */
int tt__side_send(struct tt_conn *c, struct tt_side *s, const uint8_t *data, size_t len)
{
    if (c->up_replay_armed && s == &c->up)
        replay_keep(c, data, len);
    ssize_t r = side_try_write(c, s, data, len);

    if (r < 0)
        return s == &c->up && tt__workload_retry(c) ? 0 : (int)r;
    if ((size_t)r == len)
        return 0;
    if (tt_buf_append(&s->queued, data + r, len - (size_t)r) < 0)
        return -ENOMEM;
    tt__side_start_write(c, s);
    return 0;
}

/* Has on_flush_idle run before the worker's loop next waits for events: the apps' gathered
 * bytes and the links' deferred flushes. An active idle handle also keeps the loop from
 * blocking in its next poll when this is asked outside the I/O callbacks (a timer, a
 * close callback). */
void tt__worker_defer_writes(struct tt_worker *w)
{
    (void)uv_idle_start(&w->flush_idle, on_flush_idle);
}

/* Gathers bytes for an HTTP/1.x app: what is appended to its side's queue during one loop
 * iteration (a response's head, body pieces, chunk framing, the next answer) is written
 * at once before the loop waits (on_flush_idle), one write instead of one per piece. */
void tt__app_push_soon(struct tt_conn *c)
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
    tt__worker_defer_writes(w);
}

/* Takes c off its worker's push list (tt__app_push_soon) if it is there. */
void tt__app_push_unqueue(struct tt_conn *c)
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

/* Has tt__conn_kicked(c) run once the callbacks under way are over, before the worker's loop
 * next waits (on_flush_idle): for what must not run inside the pool's or the session's
 * call that asked for it, and needs no deadline. A connection is on the list once however
 * often it is kicked; a kick asked for while the kicks run waits for the next round. No
 * timer heap work, and the connection's deadline timer stays armed. */
void tt__conn_kick(struct tt_conn *c)
{
    struct tt_worker *w = c->worker;

    if (c->kick_queued)
        return;
    c->kick_queued = true;
    c->kick_round = w->kick_round;
    c->kick_next = NULL;
    c->kick_prev = w->kick_tail;
    if (w->kick_tail != NULL)
        w->kick_tail->kick_next = c;
    else
        w->kick_head = c;
    w->kick_tail = c;
    tt__worker_defer_writes(w);
}

/* Takes c off its worker's kick list (tt__conn_kick) if it is there. */
void tt__conn_kick_unqueue(struct tt_conn *c)
{
    struct tt_worker *w = c->worker;

    if (!c->kick_queued)
        return;
    if (c->kick_prev != NULL)
        c->kick_prev->kick_next = c->kick_next;
    else
        w->kick_head = c->kick_next;
    if (c->kick_next != NULL)
        c->kick_next->kick_prev = c->kick_prev;
    else
        w->kick_tail = c->kick_prev;
    c->kick_next = c->kick_prev = NULL;
    c->kick_queued = false;
}

/* Runs the kicks queued before this round, oldest first, one at a time off the list: a
 * kicked connection may close others, which leave the list as they close. */
static void run_kicks(struct tt_worker *w)
{
    uint64_t round = w->kick_round++;

    while (w->kick_head != NULL && w->kick_head->kick_round == round) {
        struct tt_conn *c = w->kick_head;
        tt__conn_kick_unqueue(c);
        tt__conn_kicked(c);
    }
}

/* Writes what waits in side s's queue (bytes appended there while gathered): straight to
 * the socket when no write is in flight, the rest handed to uv_write. Returns 0 or <0
 * (the caller closes the connection). */
int tt__side_push(struct tt_conn *c, struct tt_side *s)
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

/* Sends the bytes of *buf on side s like tt__side_send, but what the kernel does not take is
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
    tt__side_start_write(c, s);
    return 0;
}

/* Moves the TLS engine's pending ciphertext to the TLS side's socket or its queue. */
int tt__tls_flush(struct tt_conn *c)
{
    struct tt_buf *out = tt_tls_output(c->tls);

    return out->len > 0 ? side_send_buf(c, c->tls_side, out) : 0;
}

/* ---- the TLS side: a TLS session, or a tunnel's stream --------------------------- */

/* Counts n plaintext bytes that crossed a tunnel's virtual side s (read or written), for
 * its access line; the listener's byte counters count its carrier's socket. */
void tt__tunnel_count(struct tt_side *s, size_t n, bool read)
{
    if (read)
        s->bytes_read += n;
    else
        s->bytes_written += n;
}

/* Bytes queued on a tunnel's stream, counted. Returns 0 or <0. */
int tt__stream_write(struct tt_conn *c, const void *data, size_t len)
{
    int r;

    if (c->stream == NULL)
        return TT_E_LINK_CLOSED;
    r = tt_h2_stream_write(c->stream, data, len);
    if (r == 0)
        tt__tunnel_count(c->tls_side, len, false);
    return r;
}

/* Plaintext for the TLS-side peer: encrypted, or queued on the tunnel's stream, or (a
 * request stream) read as the workload's HTTP/1.1 response and answered on the stream.
 * The caller follows with tt__secure_flush(). Returns 0 or <0. */
int tt__secure_write(struct tt_conn *c, const void *data, size_t len)
{
    if (!c->tunnel)
        return tt_tls_write(c->tls, data, len);
    if (c->h2h1 != NULL)
        return tt_h2h1_from_server(c->h2h1, data, len);
    return tt__stream_write(c, data, len);
}

/* Sends what tt__secure_write() and secure_read() produced: the TLS output on the socket, or
 * the link's pending frames. Returns 0 or <0. */
int tt__secure_flush(struct tt_conn *c)
{
    if (!c->tunnel)
        return tt__tls_flush(c);
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
     * stays within its slab (tt__tls_pump). */
    n = tt_h2_stream_read(c->stream, buf, len < TT_TLS_RECORD_MAX ? len : TT_TLS_RECORD_MAX);
    if (n > 0) {
        tt__tunnel_count(c->tls_side, n, true);
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
        tt__conn_close(c, status, true);
        return;
    }
    s->shutdown_done = true;
    tt__relay_progress(c);
}

/* Sends FIN on s once everything queued for it has been written. */
void tt__side_maybe_shutdown(struct tt_conn *c, struct tt_side *s)
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
        tt__conn_close(c, r, true);
}

/* ---- reading and relaying -------------------------------------------------------- */

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

/* Starts or stops reading side s (a tunnel's stream side only records it: its flow
 * control holds the peer back; a kept workload connection goes on reading). Closes the
 * connection when libuv refuses. */
void tt__side_set_reading(struct tt_conn *c, struct tt_side *s, bool want)
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
        tt__conn_close(c, r, true);
        return;
    }
    s->reading = want;
}

/* The monotonic clock in microseconds, read now (the request durations and connect
 * latencies that /stats and the access lines report): the loop's cached clock counts
 * whole milliseconds, and on a local network most requests take less than one. */
uint64_t tt__conn_now_us(struct tt_conn *c)
{
    (void)c;
    return uv_hrtime() / 1000;
}

/* Our half-close towards the TLS-side peer: close_notify (a tunnel: END_STREAM) once,
 * then a FIN once its queue drained. Returns 0 or <0 (the caller closes the connection). */
int tt__tls_close_notify_once(struct tt_conn *c)
{
    int r;

    c->tls_side->want_shutdown = true;
    if (c->close_notify_sent)
        return 0;
    if (c->h2h1 != NULL) {
        /* A response delimited by the workload's close is complete now (its END_STREAM
         * goes out in tt__h2h1_end); one cut short, or none at all, is an error. */
        r = tt_h2h1_server_eof(c->h2h1);
        return r == 0 ? tt__secure_flush(c) : r;
    }
    if (c->h2up != NULL)
        return TT_E_HTTP; /* the workload's session ended before the answer did */
    c->close_notify_sent = true;
    if (c->tunnel)
        r = c->stream != NULL ? tt_h2_stream_end(c->stream) : 0; /* END_STREAM */
    else
        r = tt_tls_close_notify(c->tls);
    return r == 0 ? tt__secure_flush(c) : r;
}

/* The client's input over the TLS side has ended (close_notify, or a FIN once everything
 * before it was decrypted): the workload gets a FIN. Returns 0, or <0 when the gate found
 * a request cut short. */
static int tls_side_input_over(struct tt_conn *c)
{
    int r = 0;

    c->tls_side->read_eof = true;
    /* A request stream's workload gets its FIN once the response is complete (tt__h2h1_end):
     * servers may take an early one for a caller that went away. */
    if (c->h2h1 != NULL)
        r = tt_h2h1_request_end(c->h2h1);
    else if (c->h2up != NULL)
        r = tt__h2up_request_end(c);
    else
        c->plain_side->want_shutdown = true;
    return r == 0 && c->gate != NULL ? tt_gate_client_eof(c->gate) : r;
}

/* Decrypts what the TLS engine holds into the plaintext side while that side's queue has
 * room. Returns 1 when it stopped for backpressure (input may be left), 0 when the input
 * is used up or the peer's close_notify arrived, or <0. */
int tt__tls_pump(struct tt_conn *c)
{
    struct tt_side *plain = c->plain_side;
    uint8_t *buf = c->worker->plain_buf;
    int stopped = 1, r;

    /* Decrypted bytes the socket does not take are appended to the plaintext side's queue:
     * only while one more record still fits its slab, so the queue never outgrows it. */
    while (!c->tls_side->read_eof && plain->queued.len <= TT_BUF_SLAB - TT_TLS_RECORD_MAX &&
           side_queue_len(plain) < TT_CONN_QUEUE_MAX &&
           (c->gate == NULL || tt_gate_wants_client(c->gate)) &&
           (c->h2up == NULL || tt__h2up_request_room(c))) {
        r = secure_read(c, buf, sizeof(c->worker->plain_buf));
        if (r == 0) {
            stopped = 0;
            break;
        }
        if (r == TT_TLS_EOF) {
            /* close_notify: the peer's half-close; pass it on as a FIN. */
            tt__side_ended(c, c->tls_side, 0);
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
            r = tt__h2up_request_body(c, buf, (size_t)r);
        else if (c->gate != NULL)
            r = tt_gate_from_client(c->gate, (const char *)buf, (size_t)r, tt__conn_now_us(c));
        else
            r = tt__side_send(c, plain, buf, (size_t)r);
        if (r < 0)
            return r;
    }
    if (c->tls_side->read_eof)
        stopped = 0;
    r = tt__secure_flush(c);
    return r < 0 ? r : stopped;
}

/* Decrypts what the TLS side sent (tt__tls_pump) and, after its FIN, ends its input once
 * everything sent before is decrypted (also when the FIN cut a record short: nothing more
 * can complete it). Returns 0, or <0 after closing the connection. */
static int tls_pump_settle(struct tt_conn *c)
{
    struct tt_side *ts = c->tls_side;
    int r = tt__tls_pump(c);

    if (r == 0 && ts->sock_eof && !ts->read_eof)
        r = tls_side_input_over(c);
    if (r < 0) {
        tt__conn_close(c, r, true);
        return r;
    }
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
    /* It goes on reading (tt__side_set_reading leaves it): a kept handle must see the
     * workload's FIN while at rest, and a read stopped and started costs epoll changes. */
}

/* tt__relay_progress() of a relay without TLS (passthrough, a permissive plaintext caller):
 * each side is read while the other's queue has room, and its FIN passed on once the
 * other's queue drained. */
static void plain_relay_progress(struct tt_conn *c)
{
    struct tt_side *sides[2] = {&c->down, &c->up};

    for (int i = 0; i < 2 && c->state == TT_CONN_S_RELAY; i++)
        tt__side_maybe_shutdown(c, sides[i]);
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (c->down.read_eof && c->up.read_eof && c->down.shutdown_done && c->up.shutdown_done) {
        tt__conn_close(c, 0, false);
        return;
    }
    for (int i = 0; i < 2 && c->state == TT_CONN_S_RELAY; i++) {
        struct tt_side *s = sides[i];
        tt__side_set_reading(c, s,
                             !s->read_eof && side_queue_len(other_side(c, s)) < TT_CONN_QUEUE_MAX);
    }
}

/* Re-evaluates reading, FINs and completion after any event while relaying. */
void tt__relay_progress(struct tt_conn *c)
{
    struct tt_side *ts = c->tls_side, *ps = c->plain_side;

    if (c->state != TT_CONN_S_RELAY)
        return;
    if (c->plain) {
        plain_relay_progress(c);
        return;
    }
    if (c->carrier) {
        tt__carrier_progress(c);
        return;
    }
    if (c->h1h2 != NULL) {
        tt__h1_progress(c);
        return;
    }
    if (c->h2up != NULL) {
        int r = tt__h2up_pump(c); /* the caller's stream may have room again */
        if (r == 0)
            r = tt__secure_flush(c);
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
    }
    if ((secure_input_pending(c) || ts->sock_eof) && !ts->read_eof && tls_pump_settle(c) < 0)
        return;
    if (c->state != TT_CONN_S_RELAY)
        return;
    conn_gate_settle(c);
    workload_park_check(c);
    tt__side_maybe_shutdown(c, ps);
    tt__side_maybe_shutdown(c, ts);
    if (c->state != TT_CONN_S_RELAY)
        return;

    /* Both directions over: each side's input ended and its FIN reached the other. */
    if (ps->read_eof && ts->shutdown_done && ts->read_eof && ps->shutdown_done) {
        tt__conn_close(c, 0, false);
        return;
    }
    /* Plaintext is read while the TLS side has no queue waiting behind its write in
     * flight (each read's ciphertext becomes that queue); ciphertext while the plaintext
     * side has room and the engine's input slab is at most half full. */
    tt__side_set_reading(c, ps, !ps->read_eof && secure_writable(c));
    if (c->state == TT_CONN_S_RELAY && !c->tunnel)
        tt__side_set_reading(c, ts,
                             !ts->read_eof && !ts->sock_eof &&
                                 side_queue_len(ps) < TT_CONN_QUEUE_MAX &&
                                 tt_tls_input_len(c->tls) <= TT_BUF_SLAB / 2);
}

/* tt__relay_progress() of a link's carrier: its plaintext feeds the link's session, whose
 * answers go back out; once the link is done (after GOAWAY, no stream left) it sends
 * close_notify and FIN, then lingers, reading, until the peer's end (at most
 * TT_CONN_LINGER_MS: the timer): closed at once, the socket would answer what the peer
 * still sends (window updates, its own GOAWAY) with a reset, which can make the peer lose
 * the end of answers it has received but not read yet. It closes when the peer's end
 * comes. The session's own flow control bounds what it buffers, so the socket is read
 * whenever the TLS engine has room. */
void tt__carrier_progress(struct tt_conn *c)
{
    struct tt_side *ts = c->tls_side;
    int r;

    if (c->state != TT_CONN_S_RELAY)
        return;
    if ((tt_tls_input_len(c->tls) > 0 || ts->sock_eof) && !ts->read_eof && tls_pump_settle(c) < 0)
        return;
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (ts->read_eof) {
        tt__conn_close(c, 0, false); /* the peer closed the link: its tunnels are lost */
        return;
    }
    r = tt_link_flush(c->link);
    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }
    if (tt_link_done(c->link)) {
        r = tt__tls_close_notify_once(c);
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
    }
    tt__side_maybe_shutdown(c, ts);
    if (c->state != TT_CONN_S_RELAY)
        return;
    if (ts->shutdown_done && !c->lingering) {
        c->lingering = true;
        uv_timer_start(&c->timer, tt__on_timer, TT_CONN_LINGER_MS, 0);
    }
    tt__side_set_reading(c, ts, !ts->sock_eof && tt_tls_input_len(c->tls) <= TT_BUF_SLAB / 2);
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
    tt__side_set_reading(c, c->tls_side, false);
    c->plain_side->want_shutdown = true;
    r = tt__tls_close_notify_once(c);
    if (r < 0)
        tt__conn_close(c, r, true);
}

/* Bytes read on side s of a plaintext relay: to the other side. */
static void plain_relay_read(struct tt_conn *c, struct tt_side *s, const uint8_t *data, size_t n)
{
    int r = tt__side_send(c, other_side(c, s), data, n);

    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }
    tt__relay_progress(c);
}

/* Ciphertext from the TLS side's socket, already in the engine's input buffer. */
static void tls_side_read(struct tt_conn *c)
{
    int r;

    if (c->state == TT_CONN_S_HANDSHAKE) {
        tt__handshake_progress(c);
        return;
    }
    r = tt__tls_pump(c);
    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }
    tt__relay_progress(c);
}

/* Bytes from the plaintext side's socket: encrypt and send. */
static void plain_side_read(struct tt_conn *c, const uint8_t *data, size_t n)
{
    int r = c->h2up != NULL ? tt__h2up_from_workload(c, data, n)
            : c->gate != NULL && c->h2h1 == NULL
                ? tt_gate_from_upstream(c->gate, (const char *)data, n, tt__conn_now_us(c))
                : tt__secure_write(c, data, n); /* a request stream's gate hears h2h1's reading */
    if (r == 0)
        r = tt__secure_flush(c);
    if (r < 0) {
        tt__conn_close(c, r, true);
        return;
    }
    tt__relay_progress(c);
}

/* End of input on side s (a FIN, or a TLS connection closed without close_notify). */
static void side_read_eof(struct tt_conn *c, struct tt_side *s)
{
    tt__side_set_reading(c, s, false);
    tt__side_ended(c, s, 0);
    if (c->h1h2 != NULL) {
        tt__h1_app_eof(c);
        return;
    }
    if (c->state == TT_CONN_S_REFUSING) {
        tt__conn_close(c, c->refusal_err, false);
        return;
    }
    if (c->state == TT_CONN_S_HANDSHAKE || c->state == TT_CONN_S_CONNECTING) {
        if (c->state == TT_CONN_S_HANDSHAKE)
            tt__conn_hs_failed(c, TT_HS_PROTOCOL);
        tt__conn_close(c, UV_EOF, false);
        return;
    }
    if (c->state == TT_CONN_S_DETECT && !conn_is_inbound(c)) {
        s->read_eof = true; /* passed on after what was read (tt__conn_send_early) */
        tt__outbound_detect(c, NULL, 0, true);
        return;
    }
    if (c->state == TT_CONN_S_DETECT) {
        tt__detect_done(c, NULL, 0); /* a FIN first: no TLS; the relay sees the FIN next */
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
            int r = tt_gate_upstream_eof(c->gate, tt__conn_now_us(c));
            if (r < 0) {
                tt__conn_close(c, r, true);
                return;
            }
        }
        int r = tt__tls_close_notify_once(c);
        if (r < 0) {
            tt__conn_close(c, r, true);
            return;
        }
    } else {
        /* The stream ends once what arrived before the FIN is decrypted, which may wait
         * for the plaintext side's queue to drain (tt__relay_progress goes on pumping). */
        s->sock_eof = true;
        if (tls_pump_settle(c) < 0)
            return;
    }
    tt__relay_progress(c);
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
    if (s == &c->up && (c->up_replay_armed || c->reused_up)) {
        if (nread < 0 && tt__workload_retry(c))
            return;       /* the kept connection was closed under the request: a new one */
        if (nread != 0) { /* the workload answered (or failed for good): nothing to resend */
            c->up_replay_armed = false;
            tt_buf_done(&c->up_replay);
        }
    }
    if (s == c->tls_side)
        tt_tls_input_commit(c->tls, nread > 0 ? (size_t)nread : 0);
    if (nread == UV_EOF) {
        side_read_eof(c, s);
        return;
    }
    if (nread < 0) {
        tt__side_ended(c, s, (int)nread);
        if (c->state == TT_CONN_S_HANDSHAKE)
            tt__conn_hs_failed(c, TT_HS_PROTOCOL);
        tt__conn_close(c, (int)nread, true);
        return;
    }
    if (nread == 0)
        return;
    s->bytes_read += (uint64_t)nread;
    if (s == &c->down)
        TT_COUNTER_ADD(conn_counters(c)->bytes_in, (uint64_t)nread);
    touch(c);
    if (c->h1h2 != NULL)
        tt__h1_app_read(c, (const uint8_t *)buf->base, (size_t)nread);
    else if (c->state == TT_CONN_S_DETECT)
        tt__detect_done(c, (const uint8_t *)buf->base, (size_t)nread);
    else if (c->state == TT_CONN_S_REFUSING)
        tt__refusal_read(c, (const uint8_t *)buf->base, (size_t)nread);
    else if (c->plain)
        plain_relay_read(c, s, (const uint8_t *)buf->base, (size_t)nread);
    else if (s == c->tls_side)
        tls_side_read(c);
    else
        plain_side_read(c, (const uint8_t *)buf->base, (size_t)nread);
}

/* ---- once per loop iteration ----------------------------------------------------- */

/* The worker's loop is about to wait again: the kicked connections run (tt__conn_kick), HTTP/1.x
 * apps get what was gathered for them (tt__app_push_soon), then the links flush what their
 * streams queued. */
static void on_flush_idle(uv_idle_t *idle)
{
    struct tt_worker *w = tt_container_of(idle, struct tt_worker, flush_idle);

    (void)uv_idle_stop(idle);
    run_kicks(w);
    while (w->push_conns != NULL) {
        struct tt_conn *c = w->push_conns;
        tt__app_push_unqueue(c);
        int r = tt__side_push(c, &c->down);
        if (r < 0)
            tt__conn_close(c, r, true);
        else
            tt__relay_progress(c); /* a drained queue: more of the response, or our FIN */
    }
    tt_pool_run_flushes(w->pool);
}
