/* Inbound request streams: an HTTP/2 request that arrived on a link (not a CONNECT) is a
 * connection of its own to the workload: served as HTTP/1.1 through http/h2h1.h, or, for
 * gRPC (which needs trailers), relayed over HTTP/2 (h2c, prior knowledge) stream to
 * stream. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/util.h"
#include "http/gate.h"
#include "http/h2.h"
#include "http/h2h1.h"
#include "metrics/metrics.h"
#include "net/conn.h"
#include "net/conn_int.h"
#include "net/listener-t.h"
#include "net/pool.h"
#include "net/worker-t.h"
#include "snapshot/snapshot.h"
#include "tls/tls.h"

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

/* h2h1: the request's bytes for the workload pass the gate (tt__conn_authorize always puts
 * one on a request stream). */
static int h2h1_to_server(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    if (c->gate != NULL)
        return tt_gate_from_client(c->gate, data, len, tt__conn_now_us(c));
    return tt__side_send(c, c->plain_side, (const uint8_t *)data, len);
}

/* A request stream's response is complete: its meter, or the gate, which does not read
 * responses of request streams (caller_reads_responses), is told its status and the
 * workload's bytes, and counts the request. Returns 0 or <0. */
int tt__h2h1_response_over(struct tt_conn *c)
{
    tt__request_meter_end(c, c->answer_status, c->plain_side->bytes_read);
    if (c->gate == NULL)
        return 0;
    return tt_gate_response_done(c->gate, c->answer_status, c->plain_side->bytes_read,
                                 tt__conn_now_us(c));
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
int tt__h2h1_respond(void *ud, int status, const struct tt_h2_header *fields, size_t n,
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
        return tt__h2h1_response_over(c);
    }
    return 0;
}

/* h2h1: a piece of the response body. */
static int h2h1_body(void *ud, const char *data, size_t len)
{
    return tt__stream_write(ud, data, len);
}

/* h2h1: the response body is complete. */
int tt__h2h1_end(void *ud)
{
    struct tt_conn *c = ud;
    int r = c->stream != NULL ? tt_h2_stream_end(c->stream) : TT_E_LINK_CLOSED;

    if (r < 0)
        return r;
    request_answered(c);
    return tt__h2h1_response_over(c);
}

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
bool tt__grpc_path_canonical(const char *path)
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
        r = tt__side_send(c, c->plain_side, data, len);
        if (r < 0)
            return r;
        tt_h2_consume(c->h2up->session, len);
    }
}

/* The regular fields of stream s's received head (its pseudo-headers, and "host" when
 * drop_host, left out) in a new array the caller frees, *k of them; NULL when out of
 * memory. */
struct tt_h2_header *tt__regular_fields(const struct tt_h2_stream *s, bool drop_host, size_t *k)
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
    struct tt_h2_header *fields = tt__regular_fields(up->stream, false, &k);
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
        .duration_us = tt__conn_now_us(c) - up->start_us,
        .rule = c->rule,
    };

    up->done = true;
    request_answered(c);
    tt__gate_on_request(c, &rq);
}

/* Moves what the workload answered to the caller's stream while it has room: the head
 * first, the body, then the end (with the workload's trailers, which carry grpc-status).
 * Returns 0 or <0. */
int tt__h2up_pump(struct tt_conn *c)
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

        r = tt__stream_write(c, data, n);
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
 * move on in tt__h2up_pump; a reset ends the caller's stream. */
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
        tt__conn_close(c, TT_E_HTTP, true); /* unanswered: 502 upstream_bad_response */
}

static const struct tt_h2_stream_callbacks h2up_stream_callbacks = {
    .on_headers = h2up_on_headers,
    .on_reset = h2up_on_reset,
};

/* The workload answered the connect: an h2c session to it carries the caller's request,
 * its fields as they came (the pseudo-headers given as such, :scheme http). Returns 0 or
 * <0. */
int tt__h2up_start(struct tt_conn *c)
{
    struct tt_h2_upstream *up = c->h2up;
    size_t k = 0;
    struct tt_h2_header *regular = tt__regular_fields(c->stream, true, &k);
    const char *authority = tt_h2_stream_header(c->stream, ":authority");
    struct tt_h2_request req = {
        .method = tt_h2_stream_header(c->stream, ":method"),
        .scheme = "http",
        .authority = authority != NULL ? authority : c->target.text,
        .path = tt_h2_stream_header(c->stream, ":path"),
        .end_stream = tt_h2_stream_eof(c->stream),
    };
    int err = 0;

    up->start_us = tt__conn_now_us(c);
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

/* Whether the gRPC request's stream to the workload can take more of the caller's body:
 * it is open and what waits on it is under TT_CONN_QUEUE_MAX (the TLS side's pump stops
 * reading otherwise). */
bool tt__h2up_request_room(struct tt_conn *c)
{
    return c->h2up->stream != NULL && tt_h2_stream_queued(c->h2up->stream) < TT_CONN_QUEUE_MAX;
}

/* A piece of the caller's request body, to the workload's stream. Returns 0 or <0. */
int tt__h2up_request_body(struct tt_conn *c, const uint8_t *data, size_t n)
{
    struct tt_h2_upstream *up = c->h2up;
    int r = up->stream != NULL ? tt_h2_stream_write(up->stream, data, n) : TT_E_LINK_CLOSED;

    up->request_bytes += n;
    return r == 0 ? h2up_flush(c) : r;
}

/* The caller ended its request: so does the workload's stream. Returns 0 or <0. */
int tt__h2up_request_end(struct tt_conn *c)
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
int tt__h2up_from_workload(struct tt_conn *c, const uint8_t *data, size_t n)
{
    int r = tt_h2_feed(c->h2up->session, data, n);

    if (r == 0)
        r = tt__h2up_pump(c);
    if (r == 0)
        r = h2up_flush(c);
    return r;
}

/* Frees the workload half. */
void tt__h2up_free(struct tt_h2_upstream *up)
{
    if (up == NULL)
        return;
    tt_h2_free(up->session); /* its stream with it */
    free(up);
}

/* pool ops: inbound: a tunnel arrived on the carrier's link. It is an app connection of
 * the carrier's listener, from the caller the carrier verified, to the port the carrier
 * was dialled on (never where :authority points): authorized now, with the newest
 * snapshot, then connected to the workload; the 200 goes out once that connect succeeds
 * (tt__conn_start_relay), a refusal otherwise (tt__conn_tunnel_end). */
int tt__pool_accept(struct tt_conn *carrier, struct tt_link *link, struct tt_h2_stream *s)
{
    struct tt_worker *w = carrier->worker;
    bool request = strcmp(tt_h2_stream_header(s, ":method"), "CONNECT") != 0;
    bool grpc = request && stream_is_grpc(s);
    const struct tt_transparent_cfg *t = conn_settings(carrier)->transparent;
    struct tt_conn *c;

    if (request &&
        tt__port_listed(t->opaque_ports, t->n_opaque_ports, tt_addr_port(&carrier->target))) {
        /* An opaque port's bytes are relayed unread: only tunnels reach it. */
        static const struct tt_h2_header why = {"x-tether-reason", 15, "opaque_port", 11};
        (void)tt_h2_respond(s, 501, &why, 1, true);
        tt_h2_stream_release(s);
        return 0;
    }

    if (grpc && !tt__grpc_path_canonical(tt_h2_stream_header(s, ":path"))) {
        /* Nothing to normalize in a gRPC path: one that would need it is refused. */
        static const struct tt_h2_header why = {"x-tether-reason", 15, "bad_target", 10};
        (void)tt_h2_respond(s, 400, &why, 1, true);
        tt_h2_stream_release(s);
        return 0;
    }
    c = tt__conn_new(carrier->listener);
    if (c != NULL) {
        struct tt_h2h1_io io = {c, h2h1_to_server, tt__h2h1_respond, h2h1_body, tt__h2h1_end};
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
            uv_close((uv_handle_t *)&c->timer, tt__on_untracked_closed);
        }
        return -ENOMEM;
    }
    c->tunnel = true;
    c->stream = s;
    c->target = carrier->target;
    c->route = c->h2up != NULL ? "grpc" : c->h2h1 != NULL ? "h2" : "pool";
    memcpy(c->peer_addr, carrier->peer_addr, sizeof(c->peer_addr));
    tt_h2_stream_set_callbacks(s, &tt__tunnel_callbacks, c);
    tt__conn_track(c, w->snapshot, true);
    tt_link_add_tunnel(link, &c->member);
    if (carrier->snapshot->identity != w->snapshot->identity) {
        /* Our identity rotated since the link was made: this tunnel is served, the next
         * ones go to a link with the new certificate. */
        TT_COUNTER_ADD(conn_counters(carrier)->pool.links_recycled, 1);
        tt_link_retire(link);
    }
    if (w->n_conns > w->settings->max_connections) {
        TT_COUNTER_ADD(conn_counters(c)->refused_limit, 1);
        tt__conn_close(c, TT_E_CONN_LIMIT, true);
        return 0;
    }
    if (!tt__conn_authorize(c)) {
        tt__conn_close(c, TT_E_DENIED, true);
        return 0;
    }
    tt__conn_start_connect(c);
    return 0;
}
