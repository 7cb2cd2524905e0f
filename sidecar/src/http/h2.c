/* One I/O-free HTTP/2 session over nghttp2 (see h2.h).
 *
 * nghttp2 runs with automatic WINDOW_UPDATEs off: received DATA is copied into the
 * stream's `recv` buffer (pooled slabs) and its stream window is given back
 * (nghttp2_session_consume_stream) only when the application takes the bytes. The
 * connection window is given back at once while the session buffers less than
 * `recv_buffer_max` unread bytes in all, and otherwise when readers catch up (`conn_owed`),
 * so memory stays bounded and one stalled stream does not stall its neighbours.
 *
 * Outgoing body and tunnel bytes wait in the stream's `send` buffer; nghttp2 pulls them
 * through a data provider (on_data_read) as the peer's windows allow, and the provider is
 * deferred while the buffer is empty and resumed by the next write.
 *
 * Stream memory: a stream is referenced by the application (until tt_h2_stream_release)
 * and by nghttp2 (until on_stream_close); the second to let go frees it. Frees never
 * happen under a callback that still uses the stream: releases made inside feed/pending
 * are swept when the call returns. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <nghttp2/nghttp2.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/util.h"
#include "http/h2.h"

#define DEFAULT_MAX_STREAMS     100
#define DEFAULT_MAX_HEADER_LIST (64 * 1024)
#define DEFAULT_STREAM_WINDOW   (4 * 1024 * 1024)
#define DEFAULT_CONN_WINDOW     (16 * 1024 * 1024)
#define MAX_WINDOW              0x7fffffff /* RFC 9113 §6.9.1 */
#define HEADER_OVERHEAD         32         /* per field in the header list size, RFC 9113 §6.5.2 */

/* Received header fields: each name and value NUL-terminated in one allocation. */
struct fields {
    struct tt_h2_header *v;
    size_t n, cap;
    size_t bytes; /* header list size so far (RFC 9113 §6.5.2) */
};

struct tt_h2_stream {
    struct tt_h2 *h2;
    struct tt_h2_stream *next, *prev; /* the session's list of every stream */
    int32_t id;
    struct tt_h2_stream_callbacks cbs;
    void *ud;
    struct fields head;        /* the received request or (final) response head */
    struct fields trailers;    /* the received trailers */
    nghttp2_nv *send_trailers; /* ours (one allocation), sent once the queue drains */
    size_t nsend_trailers;
    int status;                 /* client: the response's :status */
    struct tt_bufq recv;        /* peer bytes not yet taken by the application (slabs) */
    struct tt_bufq send;        /* our bytes not yet framed (slabs) */
    unsigned released : 1;      /* the application gave up its reference */
    unsigned closed : 1;        /* nghttp2 closed the stream */
    unsigned local_end : 1;     /* tt_h2_stream_end (or a head with end_stream) */
    unsigned peer_end : 1;      /* the peer's END_STREAM arrived */
    unsigned deferred : 1;      /* the data provider waits for tt_h2_stream_write */
    unsigned responded : 1;     /* server: the head was submitted */
    unsigned announced : 1;     /* server: on_stream fired */
    unsigned peer_rst : 1;      /* the peer's RST_STREAM arrived */
    unsigned incoming : 1;      /* opened by the peer */
    unsigned sent : 1;          /* client: our HEADERS went out */
    unsigned dead : 1;          /* on_reset was reported: no more callbacks, no more sending */
    unsigned rst_queued : 1;    /* our RST_STREAM was submitted (stream_rst) */
    unsigned head_done : 1;     /* the head (request, or final response) is complete */
    unsigned end_sent : 1;      /* our END_STREAM went out */
    unsigned rst_after_end : 1; /* released with our side ended first: RST_STREAM NO_ERROR
                                   follows the END_STREAM (RFC 9113 §8.1) */
};

struct tt_h2 {
    nghttp2_session *session;
    enum tt_h2_role role;
    struct tt_h2_config cfg;
    struct tt_h2_callbacks cbs;
    void *ud;
    struct tt_h2_stream *streams; /* every stream not yet freed */
    size_t recv_buffered;         /* unread bytes of all streams */
    size_t conn_owed;             /* connection window not yet given back */
    const uint8_t *out;           /* the chunk of the last mem_send */
    size_t out_len, out_off;
    int busy;            /* inside an nghttp2 call: frees wait for the sweep */
    bool sweep_wanted;   /* a stream released meanwhile waits for the sweep */
    int failed;          /* sticky tt_err of feed */
    int32_t goaway_last; /* the last stream id our GOAWAY gave */
    unsigned pings_out;  /* our PINGs not yet acknowledged */
    unsigned goaway_recv : 1;
    unsigned goaway_sent : 1; /* ours is queued (or due: no new stream either way) */
    unsigned goaway_due : 1;  /* client: ours goes out once the request heads queued have */
    unsigned notice_out : 1;  /* server: our shutdown notice's PING awaits its ack */
};

/* The opaque data of the PING that follows a server's shutdown notice (tt_h2_goaway). A
 * keepalive PING carries its send time in microseconds, which never reads as this. */
static const uint8_t NOTICE_PING[8] = {'t', 't', '-', 'd', 'r', 'a', 'i', 'n'};

static int goaway_final(struct tt_h2 *h2, uint32_t h2_code);

/* --- streams ------------------------------------------------------------------------ */

/* Allocates a stream and links it into the session's list. Returns NULL when out of memory. */
static struct tt_h2_stream *stream_new(struct tt_h2 *h2)
{
    struct tt_h2_stream *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->h2 = h2;
    tt_bufq_init(&s->recv);
    tt_bufq_init(&s->send);
    s->next = h2->streams;
    if (h2->streams != NULL)
        h2->streams->prev = s;
    h2->streams = s;
    return s;
}

/* Appends a copy of one field, counting it against `max` bytes of header list. Returns 0,
 * TT_E_H2_HEADERS over the bound, or -ENOMEM. */
static int fields_add(struct fields *f, const uint8_t *name, size_t namelen, const uint8_t *value,
                      size_t valuelen, size_t max)
{
    f->bytes += namelen + valuelen + HEADER_OVERHEAD;
    if (f->bytes > max)
        return TT_E_H2_HEADERS;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct tt_h2_header *v = realloc(f->v, cap * sizeof(*v));
        if (v == NULL)
            return -ENOMEM;
        f->v = v;
        f->cap = cap;
    }
    char *copy = malloc(namelen + valuelen + 2);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, name, namelen);
    copy[namelen] = '\0';
    memcpy(copy + namelen + 1, value, valuelen);
    copy[namelen + 1 + valuelen] = '\0';
    f->v[f->n++] = (struct tt_h2_header){copy, namelen, copy + namelen + 1, valuelen};
    return 0;
}

/* Forgets every field; the array's storage is freed too unless `keep`. */
static void fields_clear(struct fields *f, bool keep)
{
    for (size_t i = 0; i < f->n; i++)
        free((char *)f->v[i].name);
    f->n = 0;
    f->bytes = 0;
    if (!keep) {
        free(f->v);
        f->v = NULL;
        f->cap = 0;
    }
}

/* The value of the first field named `name`, or NULL. */
static const char *fields_get(const struct fields *f, const char *name)
{
    size_t len = strlen(name);

    for (size_t i = 0; i < f->n; i++)
        if (f->v[i].name_len == len && memcmp(f->v[i].name, name, len) == 0)
            return f->v[i].value;
    return NULL;
}

/* Gives the connection window back for `n` unread bytes that leave the buffer. */
static void recv_drop(struct tt_h2 *h2, size_t n)
{
    h2->recv_buffered -= n;
    if (h2->conn_owed > 0) {
        size_t pay = n < h2->conn_owed ? n : h2->conn_owed;
        h2->conn_owed -= pay;
        nghttp2_session_consume_connection(h2->session, pay);
    }
}

/* Unlinks and frees a stream, giving back the connection window of its unread bytes and
 * detaching it from nghttp2 if nghttp2 still knows it. */
static void stream_free(struct tt_h2_stream *s)
{
    struct tt_h2 *h2 = s->h2;

    if (s->recv.len > 0 && h2->session != NULL)
        recv_drop(h2, s->recv.len);
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        h2->streams = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    if (s->id > 0 && !s->closed && h2->session != NULL)
        nghttp2_session_set_stream_user_data(h2->session, s->id, NULL);
    fields_clear(&s->head, false);
    fields_clear(&s->trailers, false);
    free(s->send_trailers);
    tt_bufq_done(&s->recv);
    tt_bufq_done(&s->send);
    free(s);
}

/* Frees every stream both sides let go of (after an nghttp2 call returned), when one was
 * released inside a call (tt_h2_stream_release): the walk is not paid on every call. */
static void sweep(struct tt_h2 *h2)
{
    struct tt_h2_stream *s = h2->streams, *next;

    if (!h2->sweep_wanted || h2->busy)
        return;
    h2->sweep_wanted = false;
    for (; s != NULL; s = next) {
        next = s->next;
        if (s->released && s->closed)
            stream_free(s);
    }
}

/* An nghttp2 error code as a tt_err (or -ENOMEM). */
static int map_nghttp2(int rv)
{
    if (rv == NGHTTP2_ERR_NOMEM)
        return -ENOMEM;
    if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC || rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_PROTO)
        return TT_E_H2_PROTOCOL;
    return TT_E_H2_INTERNAL;
}

/* The monotonic clock in microseconds (PING round trips). */
static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* --- nghttp2 callbacks --------------------------------------------------------------- */

/* Our stream for an nghttp2 stream id, NULL for stream 0 or a stream we do not track. */
static struct tt_h2_stream *stream_of(nghttp2_session *session, int32_t id)
{
    return id > 0 ? nghttp2_session_get_stream_user_data(session, id) : NULL;
}

/* nghttp2: a HEADERS frame begins. Server: a request opens a stream of ours, unless our
 * GOAWAY has already named a lower last stream id. */
static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct tt_h2 *h2 = ud;

    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST ||
        h2->role != TT_H2_SERVER)
        return 0;
    /* nghttp2 ignores streams above our GOAWAY's last id only once the GOAWAY went out;
     * one that arrives between tt_h2_goaway() and then is refused as well. */
    if (h2->goaway_sent && frame->hd.stream_id > h2->goaway_last) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    struct tt_h2_stream *s = stream_new(h2);
    if (s == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->id = frame->hd.stream_id;
    s->incoming = 1;
    nghttp2_session_set_stream_user_data(session, s->id, s);
    return 0;
}

/* nghttp2: one decoded header field. Kept (copied) for the first head of a request or
 * response, within the header list bound; over it, the stream is reset. */
static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct tt_h2_stream *s = stream_of(session, frame->hd.stream_id);

    (void)flags;
    (void)ud;
    if (s == NULL || s->released)
        return 0;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    /* Until the head is complete every block is the head (a 1xx head is dropped when it
     * ends); after it, a block is the trailers. */
    struct fields *f = s->head_done ? &s->trailers : &s->head;
    if (fields_add(f, name, namelen, value, valuelen, s->h2->cfg.max_header_list) < 0) {
        /* Over the bound we announced, or out of memory: nghttp2 resets the stream
         * (INTERNAL_ERROR). */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (!s->incoming && !s->head_done && namelen == 7 && memcmp(name, ":status", 7) == 0)
        s->status = atoi(f->v[f->n - 1].value);
    return 0;
}

/* nghttp2: DATA payload. Buffered for the application, which is told by on_data; the
 * connection window is returned at once while the session's unread bytes stay under
 * recv_buffer_max, the stream window only when the application takes the bytes. */
static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    struct tt_h2 *h2 = ud;
    struct tt_h2_stream *s = stream_of(session, id);

    (void)flags;
    if (s == NULL || s->released) {
        /* Nobody reads it: give both windows back now. */
        nghttp2_session_consume(session, id, len);
        return 0;
    }
    if (tt_bufq_append(&s->recv, data, len) < 0) {
        /* The stream is reset; its bytes must not keep the connection window. */
        nghttp2_session_consume_connection(session, len);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    h2->recv_buffered += len;
    if (h2->recv_buffered <= h2->cfg.recv_buffer_max)
        nghttp2_session_consume_connection(session, len);
    else
        h2->conn_owed += len;
    if (s->cbs.on_data != NULL)
        s->cbs.on_data(s, s->ud);
    return 0;
}

/* Submits RST_STREAM with h2_code for s, once: a second one for a request whose HEADERS
 * still waited for a concurrency slot would go out on its own, on a stream the peer never
 * saw (the first one only cancelled the queued HEADERS), and the peer ends the whole
 * connection for that ("RST_STREAM: stream in idle", RFC 9113 §6.4). Returns 0 or an
 * nghttp2 error. */
static int stream_rst(struct tt_h2_stream *s, uint32_t h2_code)
{
    if (s->rst_queued || s->closed)
        return 0;
    s->rst_queued = 1;
    return nghttp2_submit_rst_stream(s->h2->session, NGHTTP2_FLAG_NONE, s->id, h2_code);
}

/* After the peer's GOAWAY: nghttp2 closes the streams above its last id that went out
 * (REFUSED_STREAM, on_stream_close), but requests still queued for a concurrency slot stay
 * queued until a slot frees, which may be long. They are reported not processed now, and
 * cancelled (nghttp2 drops the queued HEADERS; its on_stream_close comes later and frees
 * them once released). */
static void refuse_unsent(struct tt_h2 *h2)
{
    for (struct tt_h2_stream *s = h2->streams; s != NULL; s = s->next) {
        if (s->incoming || s->sent || s->closed || s->dead)
            continue;
        s->dead = 1;
        (void)stream_rst(s, NGHTTP2_CANCEL);
        if (!s->released && s->cbs.on_reset != NULL)
            s->cbs.on_reset(s, TT_E_H2_REFUSED, NGHTTP2_REFUSED_STREAM, true, s->ud);
    }
}

/* nghttp2: a frame went out. Notes that a client stream's HEADERS left the queue, and
 * that our END_STREAM did (ending a released stream the peer still sends on). */
static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct tt_h2_stream *s = stream_of(session, frame->hd.stream_id);

    (void)ud;
    if (s == NULL)
        return 0;
    if (frame->hd.type == NGHTTP2_HEADERS)
        s->sent = 1;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
        s->end_sent = 1;
        if (s->rst_after_end)
            (void)stream_rst(s, NGHTTP2_NO_ERROR);
    }
    return 0;
}

/* nghttp2: a frame could not go out. A response head (or trailers) above nghttp2's bound
 * for a header block (64 KiB, NGHTTP2_ERR_FRAME_SIZE_ERROR) leaves the stream open on both
 * sides with nothing sent: the peer must learn that it ended, or its caller waits for an
 * answer forever. A request head that could not go out is closed by nghttp2 itself, and
 * the peer never saw that stream: nothing is sent for it. */
static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame,
                             int lib_error_code, void *ud)
{
    struct tt_h2_stream *s = stream_of(session, frame->hd.stream_id);

    (void)lib_error_code;
    (void)ud;
    if (s != NULL && frame->hd.type == NGHTTP2_HEADERS &&
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        (void)stream_rst(s, NGHTTP2_INTERNAL_ERROR);
    return 0;
}

/* nghttp2: a whole frame arrived. SETTINGS, PING acks and GOAWAY go to the session's
 * callbacks; a request head announces a stream (on_stream), a response head fires
 * on_headers; END_STREAM on a HEADERS or DATA frame fires on_end. */
static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct tt_h2 *h2 = ud;
    struct tt_h2_stream *s = stream_of(session, frame->hd.stream_id);

    switch (frame->hd.type) {
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK) && h2->cbs.on_settings != NULL)
            h2->cbs.on_settings(h2, h2->ud);
        return 0;
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && h2->notice_out &&
            memcmp(frame->ping.opaque_data, NOTICE_PING, sizeof(NOTICE_PING)) == 0)
            return goaway_final(h2, NGHTTP2_NO_ERROR) == 0 ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
        /* An acknowledgement nobody asked for (a peer's stray PING ACK) is not a round trip. */
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && h2->pings_out > 0) {
            h2->pings_out--;
            if (h2->cbs.on_ping == NULL)
                return 0;
            uint64_t sent;
            memcpy(&sent, frame->ping.opaque_data, sizeof(sent));
            uint64_t now = now_us();
            h2->cbs.on_ping(h2, now >= sent ? now - sent : 0, h2->ud);
        }
        return 0;
    case NGHTTP2_GOAWAY:
        h2->goaway_recv = 1;
        if (h2->cbs.on_goaway != NULL)
            h2->cbs.on_goaway(h2, (uint32_t)frame->goaway.last_stream_id, frame->goaway.error_code,
                              h2->ud);
        refuse_unsent(h2);
        return 0;
    case NGHTTP2_RST_STREAM:
        if (s != NULL)
            s->peer_rst = 1;
        return 0;
    case NGHTTP2_HEADERS:
        if (s == NULL || s->released)
            return 0;
        if (s->head_done) {
            /* Trailers: kept; their END_STREAM fires on_end below. */
        } else if (s->incoming) {
            s->head_done = 1;
            s->announced = 1;
            if (h2->cbs.on_stream != NULL) {
                h2->cbs.on_stream(h2, s, h2->ud);
            } else {
                s->released = 1;
                (void)stream_rst(s, NGHTTP2_REFUSED_STREAM);
            }
        } else if (s->status >= 200) {
            s->head_done = 1;
            if (s->cbs.on_headers != NULL)
                s->cbs.on_headers(s, s->ud);
        } else {
            /* An informational (1xx) head: forget it, the final one follows. */
            fields_clear(&s->head, true);
            s->status = 0;
        }
        break;
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    if (s != NULL && !s->released && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) && !s->peer_end) {
        s->peer_end = 1;
        if (s->cbs.on_end != NULL)
            s->cbs.on_end(s, s->ud);
    }
    return 0;
}

/* nghttp2: a stream closed. A reset (an error code, or the peer's RST_STREAM) fires
 * on_reset once; the stream is freed if the application already released it. */
static int on_stream_close(nghttp2_session *session, int32_t id, uint32_t code, void *ud)
{
    struct tt_h2_stream *s = stream_of(session, id);

    (void)ud;
    if (s == NULL)
        return 0;
    s->closed = 1;
    tt_bufq_done(&s->send);
    if (!s->released && !s->dead && (code != NGHTTP2_NO_ERROR || s->peer_rst)) {
        s->dead = 1;
        int err = code == NGHTTP2_REFUSED_STREAM ? TT_E_H2_REFUSED : TT_E_H2_RESET;
        if (s->cbs.on_reset != NULL)
            s->cbs.on_reset(s, err, code, s->peer_rst, s->ud);
    }
    /* A peer's stream closed before its headers were complete (reset, over the header
     * bound) was never handed to the application: nobody else will release it. */
    if (s->incoming && !s->announced)
        s->released = 1;
    if (s->released)
        stream_free(s);
    return 0;
}

/* nghttp2 answers most connection errors of the peer's making (a DATA frame on stream 0,
 * a bad frame size, a broken header block) by queueing GOAWAY with an error code and
 * ignoring all further input, without a return code: the GOAWAY on its way out is where
 * we learn of it. */
static int on_before_send(nghttp2_session *session, const nghttp2_frame *frame, void *ud)
{
    struct tt_h2 *h2 = ud;

    (void)session;
    if (frame->hd.type == NGHTTP2_GOAWAY && !h2->goaway_sent && h2->failed == 0 &&
        frame->goaway.error_code != NGHTTP2_NO_ERROR)
        h2->failed = TT_E_H2_PROTOCOL;
    return 0;
}

/* nghttp2's data provider: copies up to `length` queued bytes into the DATA frame; ends
 * the stream once the queue is empty after tt_h2_stream_end(), and defers (until the next
 * write) when the queue is empty otherwise. */
static ssize_t on_data_read(nghttp2_session *session, int32_t id, uint8_t *buf, size_t length,
                            uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
    struct tt_h2_stream *s = source->ptr;
    size_t n = s->send.len < length ? s->send.len : length;

    (void)ud;
    if (n > 0)
        (void)tt_bufq_read(&s->send, buf, n);
    if (s->send.len == 0 && s->local_end) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->send_trailers != NULL) {
            /* The trailers' HEADERS frame carries END_STREAM instead (nghttp2 copies them). */
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            int rv = nghttp2_submit_trailer(session, id, s->send_trailers, s->nsend_trailers);
            free(s->send_trailers);
            s->send_trailers = NULL;
            if (rv != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return (ssize_t)n;
    }
    if (n == 0) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* --- session ------------------------------------------------------------------------- */

/* Creates a session and queues our preface and SETTINGS (see h2.h). */
struct tt_h2 *tt_h2_new(enum tt_h2_role role, const struct tt_h2_config *config,
                        const struct tt_h2_callbacks *callbacks, void *ud)
{
    struct tt_h2 *h2 = calloc(1, sizeof(*h2));
    nghttp2_session_callbacks *cbs = NULL;
    nghttp2_option *opt = NULL;

    if (h2 == NULL)
        return NULL;
    h2->role = role;
    h2->ud = ud;
    if (config != NULL)
        h2->cfg = *config;
    if (callbacks != NULL)
        h2->cbs = *callbacks;
    if (h2->cfg.max_streams == 0)
        h2->cfg.max_streams = DEFAULT_MAX_STREAMS;
    if (h2->cfg.max_header_list == 0)
        h2->cfg.max_header_list = DEFAULT_MAX_HEADER_LIST;
    if (h2->cfg.stream_window == 0 || h2->cfg.stream_window > MAX_WINDOW)
        h2->cfg.stream_window = DEFAULT_STREAM_WINDOW;
    if (h2->cfg.conn_window == 0 || h2->cfg.conn_window > MAX_WINDOW)
        h2->cfg.conn_window = DEFAULT_CONN_WINDOW;
    if (h2->cfg.recv_buffer_max == 0)
        h2->cfg.recv_buffer_max = h2->cfg.conn_window;

    if (nghttp2_session_callbacks_new(&cbs) != 0)
        goto err_free_h2;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_before_frame_send_callback(cbs, on_before_send);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    if (nghttp2_option_new(&opt) != 0)
        goto err_free_cbs;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_send_header_block_length(opt, h2->cfg.max_header_list);
    int rv = role == TT_H2_SERVER ? nghttp2_session_server_new2(&h2->session, cbs, h2, opt)
                                  : nghttp2_session_client_new2(&h2->session, cbs, h2, opt);
    if (rv != 0)
        goto err_free_opt;

    nghttp2_settings_entry iv[6];
    size_t niv = 0;
    iv[niv++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, h2->cfg.max_streams};
    iv[niv++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, h2->cfg.stream_window};
    iv[niv++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, h2->cfg.max_header_list};
    if (role == TT_H2_CLIENT)
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    else if (h2->cfg.enable_connect)
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    if (nghttp2_submit_settings(h2->session, NGHTTP2_FLAG_NONE, iv, niv) != 0 ||
        nghttp2_session_set_local_window_size(h2->session, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)h2->cfg.conn_window) != 0)
        goto err_free_session;
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    return h2;

err_free_session:
    nghttp2_session_del(h2->session);
err_free_opt:
    nghttp2_option_del(opt);
err_free_cbs:
    nghttp2_session_callbacks_del(cbs);
err_free_h2:
    free(h2);
    return NULL;
}

/* Frees the session and every stream, released or not. */
void tt_h2_free(struct tt_h2 *h2)
{
    if (h2 == NULL)
        return;
    /* nghttp2_session_del calls no stream-close callback; free ours after it. */
    nghttp2_session_del(h2->session);
    h2->session = NULL;
    while (h2->streams != NULL)
        stream_free(h2->streams);
    free(h2);
}

/* Hands the peer's bytes to nghttp2; errors are sticky. */
int tt_h2_feed(struct tt_h2 *h2, const uint8_t *data, size_t len)
{
    if (h2->failed)
        return h2->failed;
    h2->busy++;
    ssize_t r = nghttp2_session_mem_recv(h2->session, data, len);
    h2->busy--;
    sweep(h2);
    if (r < 0)
        return h2->failed = map_nghttp2((int)r);
    /* A connection error the peer caused does not come back as a return code: nghttp2
     * queues GOAWAY and ignores further input. A client session shows it at once (no
     * request allowed any more although nobody sent or received a GOAWAY); a server
     * session when the GOAWAY goes out (on_before_send). */
    if (!h2->goaway_recv && !h2->goaway_sent &&
        (!nghttp2_session_want_read(h2->session) ||
         (h2->role == TT_H2_CLIENT && !nghttp2_session_check_request_allowed(h2->session))))
        return h2->failed = TT_E_H2_PROTOCOL;
    return 0;
}

/* The sticky error, 0 while none. */
int tt_h2_error(const struct tt_h2 *h2)
{
    return h2->failed;
}

/* The rest of the current output chunk, or the next one from nghttp2 (no copy). A client's
 * GOAWAY that was due goes out once nothing else is queued. */
int tt_h2_pending(struct tt_h2 *h2, const uint8_t **data, size_t *len)
{
    if (h2->out_off >= h2->out_len) {
        const uint8_t *p;
        h2->busy++;
        ssize_t r = nghttp2_session_mem_send(h2->session, &p);
        if (r == 0 && h2->goaway_due && nghttp2_session_get_outbound_queue_size(h2->session) == 0) {
            r = goaway_final(h2, NGHTTP2_NO_ERROR);
            if (r == 0)
                r = nghttp2_session_mem_send(h2->session, &p);
        }
        h2->busy--;
        sweep(h2);
        if (r < 0) {
            *data = NULL;
            *len = 0;
            return map_nghttp2((int)r);
        }
        h2->out = p;
        h2->out_len = (size_t)r;
        h2->out_off = 0;
    }
    /* Nothing pending: NULL, not NULL + 0 (undefined behaviour, which clang's UBSan flags). */
    *data = h2->out != NULL ? h2->out + h2->out_off : NULL;
    *len = h2->out_len - h2->out_off;
    return 0;
}

/* Marks output bytes as taken. */
void tt_h2_consume(struct tt_h2 *h2, size_t n)
{
    h2->out_off += n;
    if (h2->out_off > h2->out_len)
        h2->out_off = h2->out_len;
}

/* Copies pending output into a caller buffer, several chunks at once. */
long tt_h2_fill(struct tt_h2 *h2, uint8_t *buf, size_t cap)
{
    size_t total = 0;

    while (total < cap) {
        const uint8_t *p;
        size_t n;
        int r = tt_h2_pending(h2, &p, &n);
        if (r < 0)
            return total > 0 ? (long)total : r;
        if (n == 0)
            break;
        if (n > cap - total)
            n = cap - total;
        memcpy(buf + total, p, n);
        tt_h2_consume(h2, n);
        total += n;
    }
    return (long)total;
}

/* Whether neither side has anything left to say. */
bool tt_h2_done(struct tt_h2 *h2)
{
    return h2->out_off >= h2->out_len && !nghttp2_session_want_read(h2->session) &&
           !nghttp2_session_want_write(h2->session);
}

/* Whether the peer announced SETTINGS_ENABLE_CONNECT_PROTOCOL=1. */
bool tt_h2_connect_allowed(struct tt_h2 *h2)
{
    return nghttp2_session_get_remote_settings(h2->session,
                                               NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL) == 1;
}

/* Streams neither closed nor reset. */
size_t tt_h2_active_streams(const struct tt_h2 *h2)
{
    size_t n = 0;

    for (const struct tt_h2_stream *s = h2->streams; s != NULL; s = s->next)
        n += !s->closed && !s->dead;
    return n;
}

/* Stream objects still allocated. */
size_t tt_h2_streams_held(const struct tt_h2 *h2)
{
    size_t n = 0;

    for (const struct tt_h2_stream *s = h2->streams; s != NULL; s = s->next)
        n++;
    return n;
}

/*
 * The connection-specific fields RFC 9113 §8.2.2 forbids; see h2.h.
 */
bool tt_h2_connection_specific(const char *name, size_t len)
{
    /* By length first: this runs for every field of every head. */
    switch (len) {
    case 7:
        return strncasecmp(name, "upgrade", 7) == 0;
    case 10:
        return strncasecmp(name, "connection", 10) == 0 || strncasecmp(name, "keep-alive", 10) == 0;
    case 16:
        return strncasecmp(name, "proxy-connection", 16) == 0;
    case 17:
        return strncasecmp(name, "transfer-encoding", 17) == 0;
    default:
        return false;
    }
}

/* Whether `n` caller fields may go into an HTTP/2 head or trailers: lower-case token
 * names (no pseudo-headers), values without CR, LF or NUL (nghttp2's checks), and none of
 * the connection-specific fields RFC 9113 §8.2.2 forbids ("te" only as "trailers"). A peer
 * would reset a stream that carries one; an HTTP/1 head must be cleaned before. */
static bool fields_ok(const struct tt_h2_header *h, size_t n)
{
    if (n > 0 && h == NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (h[i].name == NULL || (h[i].value == NULL && h[i].value_len > 0) || h[i].name_len == 0 ||
            h[i].name[0] == ':' ||
            !nghttp2_check_header_name((const uint8_t *)h[i].name, h[i].name_len) ||
            !nghttp2_check_header_value((const uint8_t *)h[i].value, h[i].value_len))
            return false;
        for (size_t j = 0; j < h[i].name_len; j++)
            if (h[i].name[j] >= 'A' && h[i].name[j] <= 'Z')
                return false;
        if (tt_h2_connection_specific(h[i].name, h[i].name_len))
            return false;
        if (h[i].name_len == 2 && memcmp(h[i].name, "te", 2) == 0 &&
            !(h[i].value_len == 8 && memcmp(h[i].value, "trailers", 8) == 0))
            return false;
    }
    return true;
}

/* Builds nghttp2's field array: `npseudo` pseudo-headers then the caller's fields. */
static nghttp2_nv *nv_build(const struct tt_h2_header *pseudo, size_t npseudo,
                            const struct tt_h2_header *headers, size_t nheaders)
{
    nghttp2_nv *nv = calloc(npseudo + nheaders, sizeof(*nv));

    if (nv == NULL)
        return NULL;
    for (size_t i = 0; i < npseudo + nheaders; i++) {
        const struct tt_h2_header *h = i < npseudo ? &pseudo[i] : &headers[i - npseudo];
        nv[i] = (nghttp2_nv){(uint8_t *)h->name, (uint8_t *)h->value, h->name_len, h->value_len,
                             NGHTTP2_NV_FLAG_NONE};
    }
    return nv;
}

#define HDR(n, v) ((struct tt_h2_header){(n), strlen(n), (v), strlen(v)})

/* Client: queues a request head (pseudo-headers then `headers`) with a data provider
 * unless `end_stream`, and returns its new stream, or NULL with *err. */
static struct tt_h2_stream *submit(struct tt_h2 *h2, const struct tt_h2_header *pseudo,
                                   size_t npseudo, const struct tt_h2_header *headers,
                                   size_t nheaders, bool end_stream,
                                   const struct tt_h2_stream_callbacks *cbs, void *ud, int *err)
{
    if (h2->failed) {
        *err = h2->failed;
        return NULL;
    }
    if (!fields_ok(headers, nheaders)) {
        *err = TT_E_H2_HEADERS;
        return NULL;
    }
    if (h2->goaway_sent || h2->goaway_recv || !nghttp2_session_check_request_allowed(h2->session)) {
        *err = TT_E_H2_GOAWAY;
        return NULL;
    }
    nghttp2_nv *nv = nv_build(pseudo, npseudo, headers, nheaders);
    struct tt_h2_stream *s = nv != NULL ? stream_new(h2) : NULL;
    if (s == NULL) {
        free(nv);
        *err = -ENOMEM;
        return NULL;
    }
    if (cbs != NULL)
        s->cbs = *cbs;
    s->ud = ud;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = on_data_read};
    s->local_end = end_stream;
    int32_t id = nghttp2_submit_request(h2->session, NULL, nv, npseudo + nheaders,
                                        end_stream ? NULL : &prd, s);
    free(nv);
    if (id < 0) {
        s->closed = 1;
        stream_free(s);
        *err = map_nghttp2(id);
        return NULL;
    }
    s->id = id;
    *err = 0;
    return s;
}

/* Whether a required string is missing. */
static bool empty(const char *v)
{
    return v == NULL || v[0] == '\0';
}

/* Client: opens a request stream. */
struct tt_h2_stream *tt_h2_open(struct tt_h2 *h2, const struct tt_h2_request *req,
                                const struct tt_h2_stream_callbacks *cbs, void *ud, int *err)
{
    if (h2->role != TT_H2_CLIENT) {
        *err = -EINVAL;
        return NULL;
    }
    if (empty(req->method) || empty(req->scheme) || empty(req->authority) || empty(req->path)) {
        *err = TT_E_H2_HEADERS;
        return NULL;
    }
    struct tt_h2_header pseudo[] = {HDR(":method", req->method), HDR(":scheme", req->scheme),
                                    HDR(":authority", req->authority), HDR(":path", req->path)};
    return submit(h2, pseudo, 4, req->headers, req->nheaders, req->end_stream, cbs, ud, err);
}

/* Client: opens an extended CONNECT tunnel (RFC 8441). */
struct tt_h2_stream *tt_h2_open_tunnel(struct tt_h2 *h2, const char *protocol,
                                       const char *authority, const struct tt_h2_header *headers,
                                       size_t nheaders, const struct tt_h2_stream_callbacks *cbs,
                                       void *ud, int *err)
{
    if (h2->role != TT_H2_CLIENT) {
        *err = -EINVAL;
        return NULL;
    }
    if (empty(protocol) || empty(authority)) {
        *err = TT_E_H2_HEADERS;
        return NULL;
    }
    /* RFC 8441 §4: only after the peer's SETTINGS_ENABLE_CONNECT_PROTOCOL=1. */
    if (!tt_h2_connect_allowed(h2)) {
        *err = TT_E_H2_NO_CONNECT;
        return NULL;
    }
    struct tt_h2_header pseudo[] = {HDR(":method", "CONNECT"), HDR(":protocol", protocol),
                                    HDR(":scheme", "https"), HDR(":path", "/"),
                                    HDR(":authority", authority)};
    return submit(h2, pseudo, 5, headers, nheaders, false, cbs, ud, err);
}

/* Server: submits the response head, with the body to follow unless ended. */
int tt_h2_respond(struct tt_h2_stream *s, int status, const struct tt_h2_header *headers,
                  size_t nheaders, bool end_stream)
{
    struct tt_h2 *h2 = s->h2;
    char code[4];

    /* Informational (1xx) heads are not offered: the final head only. */
    if (!s->incoming || status < 200 || status > 999)
        return -EINVAL;
    if (!fields_ok(headers, nheaders))
        return TT_E_H2_HEADERS;
    if (s->closed || s->responded || s->peer_rst)
        return TT_E_H2_CLOSED;
    tt_u64_text((uint64_t)status, code); /* 200..999: fits */
    struct tt_h2_header pseudo[] = {HDR(":status", code)};
    nghttp2_nv *nv = nv_build(pseudo, 1, headers, nheaders);
    if (nv == NULL)
        return -ENOMEM;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = on_data_read};
    /* Bytes written before the head, or an end asked for before it, go out after it. */
    s->local_end |= end_stream;
    bool no_body = s->local_end && s->send.len == 0 && s->send_trailers == NULL;
    int rv = nghttp2_submit_response(h2->session, s->id, nv, 1 + nheaders, no_body ? NULL : &prd);
    free(nv);
    if (rv != 0)
        return map_nghttp2(rv);
    s->responded = 1;
    return 0;
}

/* Replaces a stream's callbacks and user pointer. */
void tt_h2_stream_set_callbacks(struct tt_h2_stream *s, const struct tt_h2_stream_callbacks *cbs,
                                void *ud)
{
    if (cbs != NULL)
        s->cbs = *cbs;
    else
        memset(&s->cbs, 0, sizeof(s->cbs));
    s->ud = ud;
}

/* Puts a deferred data provider back in nghttp2's queue. */
static void resume(struct tt_h2_stream *s)
{
    if (s->deferred && !s->closed && (!s->incoming || s->responded)) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->h2->session, s->id);
    }
}

/* Queues bytes for the peer and wakes a deferred data provider. */
int tt_h2_stream_write(struct tt_h2_stream *s, const void *data, size_t len)
{
    if (s->closed || s->dead || s->local_end || s->peer_rst || s->released)
        return TT_E_H2_CLOSED;
    if (tt_bufq_append(&s->send, data, len) < 0)
        return -ENOMEM;
    resume(s);
    return 0;
}

/* Bytes written, not yet framed. */
size_t tt_h2_stream_queued(const struct tt_h2_stream *s)
{
    return s->send.len;
}

/* Ends our side after the queued bytes. */
int tt_h2_stream_end(struct tt_h2_stream *s)
{
    if (s->closed || s->dead || s->local_end || s->peer_rst)
        return TT_E_H2_CLOSED;
    s->local_end = 1;
    resume(s);
    return 0;
}

/* Ends our side with trailers: copies them into one allocation nghttp2 reads when the
 * data provider drains the queue. */
int tt_h2_stream_end_trailers(struct tt_h2_stream *s, const struct tt_h2_header *trailers, size_t n)
{
    size_t bytes = n * sizeof(nghttp2_nv);

    if (n == 0 || !fields_ok(trailers, n))
        return TT_E_H2_HEADERS;
    if (s->closed || s->dead || s->local_end || s->peer_rst || s->released)
        return TT_E_H2_CLOSED;
    for (size_t i = 0; i < n; i++)
        bytes += trailers[i].name_len + trailers[i].value_len;
    nghttp2_nv *nv = malloc(bytes);
    if (nv == NULL)
        return -ENOMEM;
    uint8_t *p = (uint8_t *)(nv + n);
    for (size_t i = 0; i < n; i++) {
        nv[i] = (nghttp2_nv){p, p + trailers[i].name_len, trailers[i].name_len,
                             trailers[i].value_len, NGHTTP2_NV_FLAG_NONE};
        memcpy(p, trailers[i].name, trailers[i].name_len);
        p += trailers[i].name_len;
        memcpy(p, trailers[i].value, trailers[i].value_len);
        p += trailers[i].value_len;
    }
    s->send_trailers = nv;
    s->nsend_trailers = n;
    s->local_end = 1;
    resume(s);
    return 0;
}

/* Queues RST_STREAM with `h2_code`. */
int tt_h2_stream_reset(struct tt_h2_stream *s, uint32_t h2_code)
{
    if (s->closed || s->dead)
        return TT_E_H2_CLOSED;
    int rv = stream_rst(s, h2_code);
    return rv == 0 ? 0 : map_nghttp2(rv);
}

/* Received bytes not yet taken. */
size_t tt_h2_stream_readable(const struct tt_h2_stream *s)
{
    return s->recv.len;
}

/* The received bytes, without a copy. */
size_t tt_h2_stream_peek(const struct tt_h2_stream *s, const uint8_t **data)
{
    return tt_bufq_peek(&s->recv, data);
}

/* Takes `n` received bytes and returns their stream window to the peer. */
void tt_h2_stream_consume(struct tt_h2_stream *s, size_t n)
{
    struct tt_h2 *h2 = s->h2;

    if (n > s->recv.len)
        n = s->recv.len;
    if (n == 0)
        return;
    tt_bufq_consume(&s->recv, n);
    recv_drop(h2, n);
    /* The window goes back only now that the application took the bytes. */
    if (!s->closed)
        nghttp2_session_consume_stream(h2->session, s->id, n);
}

/* Copies received bytes out and returns their window. */
size_t tt_h2_stream_read(struct tt_h2_stream *s, void *buf, size_t len)
{
    size_t n = s->recv.len < len ? s->recv.len : len;

    for (size_t done = 0; done < n;) { /* slab by slab; each part's window goes back */
        const uint8_t *p;
        size_t k = tt_h2_stream_peek(s, &p);
        if (k > n - done)
            k = n - done;
        memcpy((uint8_t *)buf + done, p, k);
        tt_h2_stream_consume(s, k);
        done += k;
    }
    return n;
}

/* Whether the peer ended and every byte was taken. */
bool tt_h2_stream_eof(const struct tt_h2_stream *s)
{
    return s->peer_end && s->recv.len == 0;
}

/* Whether END_STREAM arrived (bytes may wait to be read). */
bool tt_h2_stream_peer_ended(const struct tt_h2_stream *s)
{
    return s->peer_end;
}

/* The received header fields. */
const struct tt_h2_header *tt_h2_stream_headers(const struct tt_h2_stream *s, size_t *n)
{
    *n = s->head.n;
    return s->head.v;
}

/* The first field of the head named `name`, or NULL. */
const char *tt_h2_stream_header(const struct tt_h2_stream *s, const char *name)
{
    return fields_get(&s->head, name);
}

/* The received trailers. */
const struct tt_h2_header *tt_h2_stream_trailers(const struct tt_h2_stream *s, size_t *n)
{
    *n = s->trailers.n;
    return s->trailers.v;
}

/* The first trailer named `name`, or NULL. */
const char *tt_h2_stream_trailer(const struct tt_h2_stream *s, const char *name)
{
    return fields_get(&s->trailers, name);
}

/* Client: the response's :status, 0 before it. */
int tt_h2_stream_status(const struct tt_h2_stream *s)
{
    return s->status;
}

/* The stream id. */
uint32_t tt_h2_stream_id(const struct tt_h2_stream *s)
{
    return (uint32_t)s->id;
}

/* The stream's session. */
struct tt_h2 *tt_h2_stream_session(const struct tt_h2_stream *s)
{
    return s->h2;
}

/* Gives up the application's reference (cancelling an open stream). */
void tt_h2_stream_release(struct tt_h2_stream *s)
{
    if (s == NULL || s->released)
        return;
    s->released = 1;
    memset(&s->cbs, 0, sizeof(s->cbs));
    if (s->recv.len > 0) {
        recv_drop(s->h2, s->recv.len);
        tt_bufq_done(&s->recv);
    }
    if (!s->closed) {
        /* A complete answer (a 403, the end of a tunnel) is never cut by a CANCEL: the
         * peer's rest is refused with NO_ERROR once our END_STREAM is out. A request still
         * waiting for a slot is cancelled: it never goes out. */
        if (s->local_end && !s->dead && (s->incoming || s->sent)) {
            if (s->end_sent && !s->peer_end)
                (void)stream_rst(s, NGHTTP2_NO_ERROR);
            else if (!s->end_sent)
                s->rst_after_end = !s->peer_end;
            return;
        }
        (void)stream_rst(s, NGHTTP2_CANCEL);
        return;
    }
    if (!s->h2->busy)
        stream_free(s);
    else
        s->h2->sweep_wanted = true;
}

/* Queues a PING carrying the send time. */
int tt_h2_ping(struct tt_h2 *h2)
{
    uint8_t opaque[8];
    uint64_t now = now_us();

    memcpy(opaque, &now, sizeof(opaque));
    int rv = nghttp2_submit_ping(h2->session, NGHTTP2_FLAG_NONE, opaque);
    if (rv != 0)
        return map_nghttp2(rv);
    h2->pings_out++;
    return 0;
}

/* Submits GOAWAY with the last stream id processed. Returns 0 or an nghttp2 error. */
static int goaway_submit(struct tt_h2 *h2, uint32_t h2_code)
{
    int32_t last = nghttp2_session_get_last_proc_stream_id(h2->session);
    int rv = nghttp2_submit_goaway(h2->session, NGHTTP2_FLAG_NONE, last, h2_code, NULL, 0);

    if (rv == 0)
        h2->goaway_last = last;
    return rv;
}

/* Our final GOAWAY (not a notice): submitted now; no stream above its last id is taken
 * from here on. Returns 0 or an nghttp2 error. */
static int goaway_final(struct tt_h2 *h2, uint32_t h2_code)
{
    int rv = goaway_submit(h2, h2_code);

    if (rv != 0)
        return rv;
    h2->goaway_sent = 1;
    h2->goaway_due = 0;
    h2->notice_out = 0;
    return 0;
}

/*
 * Drains the session; see h2.h. A server's graceful drain is RFC 9113 §6.8's two steps:
 * a GOAWAY naming the highest possible stream id (nghttp2's shutdown notice: the client
 * opens no new stream) and a PING; the client answers the PING after it read the notice,
 * so every stream it opened before has arrived by the answer, and the final GOAWAY names
 * the true last one. A single GOAWAY would refuse the streams the client opened while it
 * was on its way, and the server may close the connection under them once its own are
 * over: the client could lose them, or learn of the refusal only after a request body it
 * can no longer send again. A client's graceful GOAWAY waits while request heads are
 * queued (tt_h2_pending submits it once they went out): nghttp2 would send it ahead of
 * them, and a server takes streams that arrive after a client's GOAWAY for ones it need
 * not serve (nghttp2 ignores them when no other stream is active), so our own retirement
 * would lose the requests just given the link.
 */
int tt_h2_goaway(struct tt_h2 *h2, uint32_t h2_code)
{
    int rv;

    if (h2->goaway_sent && h2_code == NGHTTP2_NO_ERROR)
        return 0;
    if (h2->role == TT_H2_CLIENT && h2_code == NGHTTP2_NO_ERROR &&
        nghttp2_session_get_outbound_queue_size(h2->session) > 0) {
        h2->goaway_sent = 1;
        h2->goaway_due = 1;
        return 0;
    }
    if (h2->role == TT_H2_SERVER && h2_code == NGHTTP2_NO_ERROR && !h2->notice_out &&
        !h2->goaway_recv) {
        rv = nghttp2_submit_shutdown_notice(h2->session);
        if (rv == 0)
            rv = nghttp2_submit_ping(h2->session, NGHTTP2_FLAG_NONE, NOTICE_PING);
        if (rv != 0)
            return map_nghttp2(rv);
        h2->notice_out = 1;
        return 0;
    }
    rv = goaway_final(h2, h2_code);
    return rv != 0 ? map_nghttp2(rv) : 0;
}

/* Whether a server's shutdown notice still waits for its round trip (see h2.h). */
bool tt_h2_notice_pending(const struct tt_h2 *h2)
{
    return h2->notice_out;
}
