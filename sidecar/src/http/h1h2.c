/* An app's HTTP/1.x connection served by HTTP/2 requests (see h1h2.h). Every byte the app
 * sent that this module has not let go of lives in one buffer, `in`: from `req_start` (the
 * current request's first byte, while its raw bytes are retained) through `fed` (what the
 * strict reader of http/h1.h consumed) to its end (bytes held unread). The reader is
 * paused after each complete request, and at a head whose stream waits, so that one
 * request is served at a time; a rewind gives a fresh reader the bytes from req_start
 * again, and take_raw hands in[req_start..] to a byte relay. Bytes before req_start are
 * dropped only outside the reader's feed, whose callbacks point into the buffer. */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/util.h"
#include "http/h1h2.h"

#define H1H2_HOLD_LIMIT    (4 * TT_H1H2_HOLD_MAX) /* held bytes past which from_app fails */
#define H1H2_RESP_HEAD_MAX (128 * 1024)           /* a response head as written */
#define H1H2_ANSWER_MAX    4096                   /* the sidecar's own answers */

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* Where the reading of the current request stands. */
enum rq_state {
    RQ_HEAD,    /* its head is read (or its first byte awaited): the reader runs */
    RQ_WAIT,    /* on_request returned TT_H1H2_WAIT: the reader is paused until resume */
    RQ_BODY,    /* its stream takes the body: the reader runs */
    RQ_END,     /* complete (on_end ran): the reader is paused until the response is */
    RQ_UPGRADE, /* CONNECT or Upgrade: nothing more is read (take_raw) */
};

/* Where the current request's response stands. */
enum rs_state {
    RS_NONE, /* no byte of it written */
    RS_BODY, /* the head is written: body pieces until response_end */
    RS_END,  /* complete */
};

/* How the response body is framed towards the app. */
enum framing {
    FR_NONE,    /* no body (HEAD, 204, 304): pieces given are dropped */
    FR_LENGTH,  /* Content-Length: `left` bytes to come */
    FR_CHUNKED, /* Transfer-Encoding: chunked */
    FR_CLOSE,   /* delimited by the connection's close */
};

struct tt_h1h2 {
    struct tt_h1h2_io io;
    char *default_authority;
    struct tt_h1 *h1;

    struct tt_buf in; /* the app's bytes from req_start on */
    size_t req_start; /* offset in `in` of the current request's first byte */
    size_t fed;       /* offset in `in` up to which the reader consumed */
    bool retained;    /* in[req_start..fed) is all of the current request read so far */

    enum rq_state rq;
    enum rs_state rs;
    enum framing framing;
    uint64_t left;       /* FR_LENGTH: body bytes still owed */
    int64_t resp_length; /* the Content-Length written, -1 for none */
    bool body_closed;    /* respond said end_stream: no body piece may follow */

    /* The current request. */
    bool begun;           /* a byte of it was read */
    bool head_seen;       /* on_request ran: a response is owed */
    bool keep_alive;      /* the reader's verdict: another request may follow */
    bool is_head;         /* method HEAD: its response has no body */
    bool upgrade;         /* CONNECT or Upgrade */
    int minor;            /* HTTP/1.<minor> */
    bool expect_continue; /* HTTP/1.1, Expect: 100-continue and a body */
    bool continued;       /* 100 Continue was written (kept across a rewind) */
    bool responded;       /* a byte of its response went to the app */
    bool close_after;     /* its response ends the connection */

    bool in_feed;   /* inside the reader: its callbacks point into `in` */
    bool advance;   /* the response completed inside a feed: next request once it returns */
    bool eof;       /* the app closed its side */
    bool done;      /* the connection is over once written bytes reach the app */
    bool stopped;   /* take_raw ran: nothing more is translated */
    int error;      /* sticky: a callback's error, -ENOBUFS, or TT_E_HTTP */
    bool cb_failed; /* `error` is a callback's (the reader failed with it) */
    enum tt_h1_reason reason;
};

/* ---- small helpers ---- */

/* The bytes at offset off of `in` (which must hold more than off bytes). */
static const char *in_at(const struct tt_h1h2 *x, size_t off)
{
    return (const char *)tt_buf_head(&x->in) + off;
}

/* Bytes the app sent that the reader has not consumed. */
static size_t held(const struct tt_h1h2 *x)
{
    return x->in.len - x->fed;
}

/* Writes bytes for the app (nothing for none). Returns to_app's answer. */
static int to_app(struct tt_h1h2 *x, const char *data, size_t len)
{
    return len > 0 ? x->io.to_app(x->io.ud, data, len) : 0;
}

/* Whether name[0..len) is `want`, in any case. */
static bool name_eq(const char *name, size_t len, const char *want)
{
    return len == strlen(want) && strncasecmp(name, want, len) == 0;
}

/* ---- the request, translated ---- */

/* Whether a request field stays out of the stream (h1h2.h): connection-specific ones,
 * those the Connection field names (asked when it names more than keep-alive: `named`),
 * host (it is :authority), expect (answered here) and a te other than "trailers". */
static bool request_field_dropped(const struct tt_h1_head *h, const struct tt_h1_header *f,
                                  bool named)
{
    return tt_h2_connection_specific(f->name, f->name_len) ||
           (named && tt_h1_connection_names(h->headers, h->n_headers, f->name, f->name_len)) ||
           name_eq(f->name, f->name_len, "host") || name_eq(f->name, f->name_len, "expect") ||
           (name_eq(f->name, f->name_len, "te") && strcasecmp(f->value, "trailers") != 0);
}

/* Fills out[] with the fields the stream gets, names lower-cased into `names` (room for
 * every name and a NUL after each). Returns how many. */
static size_t translate_fields(const struct tt_h1_head *h, struct tt_h2_header *out, char *names)
{
    size_t n = 0;
    bool named = tt_h1_connection_names_others(h->headers, h->n_headers);

    for (size_t i = 0; i < h->n_headers; i++) {
        const struct tt_h1_header *f = &h->headers[i];
        bool te = name_eq(f->name, f->name_len, "te");

        if (request_field_dropped(h, f, named))
            continue;
        tt_ascii_lower(names, f->name, f->name_len);
        names[f->name_len] = '\0';
        /* HTTP/2 takes te only as the exact, lower-case "trailers" (RFC 9113 §8.2.2). */
        out[n++] = (struct tt_h2_header){names, f->name_len, te ? "trailers" : f->value,
                                         te ? 8 : f->value_len};
        names += f->name_len + 1;
    }
    return n;
}

/* :authority: absolute-form's (or CONNECT's) authority, else Host, else the default. */
static const char *request_authority(const struct tt_h1h2 *x, const struct tt_h1_head *h)
{
    if (h->authority != NULL)
        return h->authority;
    if (h->host != NULL && h->host[0] != '\0')
        return h->host;
    return x->default_authority;
}

/* :path: the normalized path, then "?" and the query as sent. A malloc'd string, or NULL
 * when the request has no path (CONNECT) or memory is short (*err = -ENOMEM). */
static char *request_path(const struct tt_h1_head *h, int *err)
{
    size_t plen, qlen;
    char *p;

    *err = 0;
    if (h->path == NULL)
        return NULL;
    plen = strlen(h->path);
    qlen = h->query != NULL ? strlen(h->query) + 1 : 0;
    p = malloc(plen + qlen + 1);
    if (p == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    memcpy(p, h->path, plen);
    if (h->query != NULL) {
        p[plen] = '?';
        memcpy(p + plen + 1, h->query, qlen - 1);
    }
    p[plen + qlen] = '\0';
    return p;
}

/* Builds the request for the stream from the reader's head and calls on_request. Returns
 * its answer, or -ENOMEM. */
static int call_on_request(struct tt_h1h2 *x, const struct tt_h1_head *h)
{
    struct tt_h1h2_request rq;
    struct tt_h2_header *fields;
    size_t names_len = 1;
    char *names, *path;
    int r;

    for (size_t i = 0; i < h->n_headers; i++)
        names_len += h->headers[i].name_len + 1;
    fields = malloc((h->n_headers > 0 ? h->n_headers : 1) * sizeof(*fields));
    names = malloc(names_len);
    path = request_path(h, &r);
    if (fields == NULL || names == NULL || r < 0) {
        r = -ENOMEM;
        goto out;
    }
    rq = (struct tt_h1h2_request){
        .method = h->method,
        .authority = request_authority(x, h),
        .path = path,
        .fields = fields,
        .n_fields = translate_fields(h, fields, names),
        .has_body = h->chunked || h->content_length > 0,
        .idempotent = tt_h1_method_idempotent(h->method),
        .upgrade = h->upgrade || h->connect,
    };
    r = x->io.on_request(x->io.ud, &rq);
out:
    free(path);
    free(names);
    free(fields);
    return r;
}

/* Writes the 100 Continue the request asked for, once, and never after a response byte. */
static int send_continue(struct tt_h1h2 *x)
{
    if (!x->expect_continue || x->continued || x->responded)
        return 0;
    x->continued = true;
    return to_app(x, continue_line, sizeof(continue_line) - 1);
}

/* ---- the reader's callbacks ---- */

/* A callback failed: the reader fails with its value, which from_app returns. */
static int callback_failed(struct tt_h1h2 *x, int r)
{
    x->error = r;
    x->cb_failed = true;
    return r;
}

/* A request head: its stream is opened (on_request); the reader pauses when the stream
 * waits, at an upgrade, or when a call inside on_request ended the translation. */
static int on_h1_head(void *ud, const struct tt_h1_head *h)
{
    struct tt_h1h2 *x = ud;
    int r;

    if (x->stopped || x->done)
        return TT_H1_PAUSE;
    x->begun = true;
    x->head_seen = true;
    x->keep_alive = h->keep_alive;
    x->minor = h->minor;
    x->is_head = strcmp(h->method, "HEAD") == 0;
    x->upgrade = h->upgrade || h->connect;
    /* No 1xx goes to an HTTP/1.0 client (RFC 9110 §15.2), nor for a request without a
     * body (§10.1.1 lets a server omit it). */
    x->expect_continue =
        h->expect_continue && h->minor >= 1 && (h->chunked || h->content_length > 0);
    r = call_on_request(x, h);
    if (r < 0)
        return callback_failed(x, r);
    if (x->upgrade)
        x->rq = RQ_UPGRADE;
    else if (r > 0)
        x->rq = RQ_WAIT;
    else
        x->rq = RQ_BODY;
    if (x->stopped || x->done || x->rq != RQ_BODY)
        return TT_H1_PAUSE;
    r = send_continue(x);
    return r < 0 ? callback_failed(x, r) : 0;
}

/* A piece of the de-chunked body: to the stream. */
static int on_h1_body(void *ud, const char *data, size_t len)
{
    struct tt_h1h2 *x = ud;
    int r;

    if (x->stopped || x->done)
        return TT_H1_PAUSE;
    r = x->io.on_body != NULL ? x->io.on_body(x->io.ud, data, len) : 0;
    return r < 0 ? callback_failed(x, r) : 0;
}

/* The request is complete: the reader always pauses here, so that the next request waits
 * for this one's response. Trailers are dropped. */
static int on_h1_end(void *ud, const struct tt_h1_header *trailers, size_t n_trailers)
{
    struct tt_h1h2 *x = ud;
    int r;

    (void)trailers;
    (void)n_trailers;
    if (x->stopped || x->done)
        return TT_H1_PAUSE;
    x->rq = RQ_END;
    r = x->io.on_end != NULL ? x->io.on_end(x->io.ud) : 0;
    return r < 0 ? callback_failed(x, r) : TT_H1_PAUSE;
}

static const struct tt_h1_callbacks reader_callbacks = {
    .on_head = on_h1_head,
    .on_body = on_h1_body,
    .on_end = on_h1_end,
};

/* ---- the input buffer ---- */

/* Resets the per-request state for the request that begins at `fed`. */
static void next_request(struct tt_h1h2 *x)
{
    x->req_start = x->fed;
    x->retained = true;
    x->rq = RQ_HEAD;
    x->rs = RS_NONE;
    x->framing = FR_NONE;
    x->left = 0;
    x->resp_length = -1;
    x->body_closed = false;
    x->begun = false;
    x->head_seen = false;
    x->keep_alive = false;
    x->is_head = false;
    x->upgrade = false;
    x->minor = 1;
    x->expect_continue = false;
    x->continued = false;
    x->responded = false;
    x->close_after = false;
}

/* Drops the bytes before req_start (never inside a feed: the reader points into them). */
static void compact(struct tt_h1h2 *x)
{
    if (x->in_feed || x->req_start == 0)
        return;
    tt_buf_consume(&x->in, x->req_start);
    x->fed -= x->req_start;
    x->req_start = 0;
}

/* After a feed: starts the next request if the response completed inside it, and lets go
 * of the current request's raw bytes once they pass TT_H1H2_RETAIN_MAX. */
static void settle(struct tt_h1h2 *x)
{
    if (x->advance) {
        x->advance = false;
        next_request(x);
    }
    if (x->retained && x->fed - x->req_start > TT_H1H2_RETAIN_MAX)
        x->retained = false;
    if (!x->retained)
        x->req_start = x->fed;
    compact(x);
}

/* ---- reading ---- */

/* Whether the reader may take bytes now. */
static bool reading(const struct tt_h1h2 *x)
{
    return !x->stopped && !x->done && x->error == 0 && !x->advance &&
           (x->rq == RQ_HEAD || x->rq == RQ_BODY);
}

/* The reader refused the app's bytes: the refusal's 400 or 431 goes to the app (unless a
 * response is under way: nothing can be added to it) and the connection is done. */
/* How much of an answer of ours (tt_h1_write_error's n bytes in buf) goes to the app: all
 * of it, or for a HEAD request its head alone (RFC 9110 §9.3.2: no content, even though
 * its Content-Length says what a GET would have got). */
static size_t own_answer_len(const struct tt_h1h2 *x, const char *buf, int n)
{
    const char *end = x->is_head ? memmem(buf, (size_t)n, "\r\n\r\n", 4) : NULL;

    return end != NULL ? (size_t)(end + 4 - buf) : (size_t)n;
}

static int refuse(struct tt_h1h2 *x)
{
    char buf[H1H2_ANSWER_MAX];
    int n, r = 0;

    x->reason = tt_h1_reason(x->h1);
    x->error = TT_E_HTTP;
    x->done = true;
    if (x->rs != RS_NONE) {
        x->rs = RS_END; /* what was written of a response stays cut short */
        return TT_E_HTTP;
    }
    x->rs = RS_END;
    x->responded = true;
    n = tt_h1_write_error(buf, sizeof(buf), tt_h1_status(x->h1), tt_h1_reason_name(x->reason), NULL,
                          true);
    if (n > 0)
        r = to_app(x, buf, own_answer_len(x, buf, n));
    return r < 0 ? r : TT_E_HTTP;
}

/* The app's EOF with every byte read and the reader running: a request cut short is
 * TT_E_HTTP; between requests the connection is done. */
static int finish(struct tt_h1h2 *x)
{
    int r;

    x->in_feed = true;
    r = tt_h1_finish(x->h1);
    x->in_feed = false;
    if (r < 0) {
        x->reason = tt_h1_reason(x->h1);
        x->error = TT_E_HTTP;
        x->done = true;
        if (x->rs == RS_BODY)
            x->rs = RS_END; /* a response under way stays cut short */
        return TT_E_HTTP;
    }
    if (x->rq == RQ_HEAD)
        x->done = true;
    return 0;
}

/* Feeds the reader what it may take now. Returns 0, TT_E_HTTP (refused or cut short), or
 * a callback's error. */
static int pump(struct tt_h1h2 *x)
{
    while (reading(x) && x->fed < x->in.len) {
        long n;

        x->in_feed = true;
        n = tt_h1_feed(x->h1, in_at(x, x->fed), x->in.len - x->fed);
        x->in_feed = false;
        if (n < 0)
            return x->cb_failed ? x->error : refuse(x);
        x->fed += (size_t)n;
        if (n > 0 && x->rq == RQ_HEAD)
            x->begun = true;
        if (x->stopped)
            return 0;
        settle(x);
        if (n == 0 && reading(x))
            break; /* the reader takes nothing more (cannot happen: it pauses at each end) */
    }
    if (reading(x) && x->eof && x->fed == x->in.len)
        return finish(x);
    return 0;
}

/* Whether the app closed its side and every byte it sent before was read: no request may
 * follow (bytes received before the EOF, pipelined requests, are still served). */
static bool input_over(const struct tt_h1h2 *x)
{
    return x->eof && x->fed == x->in.len;
}

/* The current response is complete: the next request is read if one may follow, else the
 * connection is done. */
static int complete_response(struct tt_h1h2 *x)
{
    x->rs = RS_END;
    if (x->close_after || input_over(x) || x->error != 0 || x->rq != RQ_END) {
        x->done = true;
        return 0;
    }
    if (x->in_feed) {
        x->advance = true; /* pump() starts it once the reader returns */
        return 0;
    }
    next_request(x);
    compact(x);
    return pump(x);
}

/* ---- the response ---- */

/* The Content-Length among the stream's fields: -1 when absent, not a decimal number, or
 * given twice with different values. */
static int64_t response_length(const struct tt_h2_header *fields, size_t n)
{
    int64_t len = -1;

    for (size_t i = 0; i < n; i++) {
        const struct tt_h2_header *f = &fields[i];
        int64_t v = 0;

        if (!name_eq(f->name, f->name_len, "content-length"))
            continue;
        if (f->value_len == 0 || f->value_len > 18)
            return -1;
        for (size_t k = 0; k < f->value_len; k++) {
            if (f->value[k] < '0' || f->value[k] > '9')
                return -1;
            v = v * 10 + (f->value[k] - '0');
        }
        if (len >= 0 && v != len)
            return -1;
        len = v;
    }
    return len;
}

/* Decides the response's framing and whether it ends the connection (h1h2.h). */
static void plan_response(struct tt_h1h2 *x, int status, const struct tt_h2_header *fields,
                          size_t n, bool end_stream)
{
    bool bodiless = x->is_head || status == 204 || status == 304;
    int64_t len = response_length(fields, n);

    /* A 204 carries no Content-Length (RFC 9110 §8.6); HEAD's and 304's say what the
     * body would be. */
    x->resp_length = status == 204 ? -1 : len;
    if (bodiless) {
        x->framing = FR_NONE;
    } else if (len >= 0) {
        x->framing = FR_LENGTH;
        x->left = (uint64_t)len;
    } else if (end_stream) {
        x->framing = FR_LENGTH; /* known empty: "Content-Length: 0", not an empty chunked body */
        x->left = 0;
        x->resp_length = 0;
    } else if (x->minor >= 1) {
        x->framing = FR_CHUNKED;
    } else {
        x->framing = FR_CLOSE;
    }
    /* A response that will be complete before its request is ends the connection: say so
     * when that is known now. */
    x->close_after = !x->keep_alive || input_over(x) || x->error != 0 || x->framing == FR_CLOSE ||
                     x->upgrade || (end_stream && x->rq != RQ_END);
}

/* Whether a stream field may be written into an HTTP/1.1 head: a token name, a value
 * without CR, LF or NUL (no response splitting whatever the caller passes). */
static bool field_writable(const struct tt_h2_header *f)
{
    if (f->name == NULL || !tt_h1_is_token(f->name, f->name_len) ||
        (f->value == NULL && f->value_len > 0))
        return false;
    for (size_t i = 0; i < f->value_len; i++) {
        if (f->value[i] == '\r' || f->value[i] == '\n' || f->value[i] == '\0')
            return false;
    }
    return true;
}

/* Writes the response head planned by plan_response into b. Returns 0 or -ENOMEM. */
static int build_head(const struct tt_h1h2 *x, struct tt_buf *b, int status,
                      const struct tt_h2_header *fields, size_t n)
{
    char num[TT_U64_TEXT_MAX];
    size_t num_len = tt_u64_text((uint64_t)status, num);
    const char *text = tt_h1_status_text(status);
    size_t text_len = strlen(text);
    size_t line_len = 9 + num_len + 1 + text_len + 2; /* "HTTP/1.1 200 OK\r\n" */
    uint8_t *p = tt_buf_reserve(b, line_len);
    int r = 0;

    if (p == NULL)
        return -ENOMEM;
    memcpy(p, "HTTP/1.1 ", 9);
    memcpy(p + 9, num, num_len);
    p[9 + num_len] = ' ';
    memcpy(p + 10 + num_len, text, text_len);
    memcpy(p + 10 + num_len + text_len, "\r\n", 2);
    tt_buf_commit(b, line_len);

    for (size_t i = 0; i < n && r == 0; i++) {
        const struct tt_h2_header *f = &fields[i];

        if (!field_writable(f) || f->name[0] == ':' ||
            tt_h2_connection_specific(f->name, f->name_len) ||
            name_eq(f->name, f->name_len, "content-length"))
            continue;
        r = tt_h1_put_field(b, f->name, f->name_len, f->value, f->value_len);
    }
    if (r == 0 && x->resp_length >= 0)
        r = tt_h1_put_field(b, "Content-Length", 14, num,
                            tt_u64_text((uint64_t)x->resp_length, num));
    if (r == 0 && x->framing == FR_CHUNKED)
        r = tt_buf_append(b, "Transfer-Encoding: chunked\r\n", 28);
    if (r == 0 && x->close_after)
        r = tt_buf_append(b, "Connection: close\r\n", 19);
    else if (r == 0 && x->minor == 0)
        r = tt_buf_append(b, "Connection: keep-alive\r\n", 24);
    return r ?: tt_buf_append(b, "\r\n", 2);
}

/*
 * The response head; see h1h2.h. The head is built whole (bounded by H1H2_RESP_HEAD_MAX,
 * reported as -ENOMEM) and written with one to_app call.
 */
int tt_h1h2_respond(struct tt_h1h2 *x, int status, const struct tt_h2_header *fields, size_t n,
                    bool end_stream)
{
    struct tt_buf b;
    int r;

    if (x->stopped || x->done || !x->head_seen || x->rs != RS_NONE || status < 200 ||
        status > 599 || (fields == NULL && n > 0))
        return -EINVAL;
    plan_response(x, status, fields, n, end_stream);
    tt_buf_init(&b);
    r = build_head(x, &b, status, fields, n);
    if (r == 0 && b.len > H1H2_RESP_HEAD_MAX)
        r = -ENOMEM;
    if (r == 0) {
        x->rs = RS_BODY;
        x->responded = true;
        x->body_closed = end_stream;
        r = to_app(x, (const char *)tt_buf_head(&b), b.len);
    }
    tt_buf_done(&b);
    return r;
}

/*
 * A piece of the response body; see h1h2.h. Bytes beyond the Content-Length given are
 * refused (-EINVAL): they would be read as the next response.
 */
int tt_h1h2_response_body(struct tt_h1h2 *x, const char *data, size_t len)
{
    char size[24];
    int r;

    if (x->stopped || x->rs != RS_BODY || x->body_closed || (data == NULL && len > 0))
        return -EINVAL;
    if (len == 0)
        return 0;
    switch (x->framing) {
    case FR_NONE:
        return 0;
    case FR_LENGTH:
        if (len > x->left)
            return -EINVAL;
        x->left -= len;
        return to_app(x, data, len);
    case FR_CHUNKED:
        r = to_app(x, size, (size_t)snprintf(size, sizeof(size), "%zx\r\n", len));
        r = r ?: to_app(x, data, len);
        return r ?: to_app(x, "\r\n", 2);
    case FR_CLOSE:
        break;
    }
    return to_app(x, data, len);
}

/*
 * The end of the response; see h1h2.h. A body shorter than its Content-Length can only
 * be told to the app by the connection's close.
 */
int tt_h1h2_response_end(struct tt_h1h2 *x)
{
    int r = 0;

    if (x->stopped || x->rs != RS_BODY)
        return -EINVAL;
    if (x->framing == FR_CHUNKED)
        r = to_app(x, "0\r\n\r\n", 5);
    else if (x->framing == FR_LENGTH && x->left > 0)
        x->close_after = true;
    if (r < 0) {
        x->rs = RS_END;
        x->done = true;
        return r;
    }
    return complete_response(x);
}

/*
 * A response cut short; see h1h2.h. Its last chunk is never written, so a chunked body
 * stays visibly incomplete.
 */
bool tt_h1h2_cut(struct tt_h1h2 *x)
{
    bool close_tells = x->rs != RS_BODY || x->framing != FR_CLOSE;

    if (x->rs == RS_BODY)
        x->rs = RS_END;
    x->done = true;
    return close_tells;
}

/*
 * The sidecar's own answer; see h1h2.h. A request that has begun but whose head is not
 * complete (a timeout, say) may be answered too; it closes the connection.
 */
int tt_h1h2_answer(struct tt_h1h2 *x, int status, const char *reason, const char *rule)
{
    char buf[H1H2_ANSWER_MAX];
    bool keep;
    int n, r;

    if (x->stopped || x->done || x->rs != RS_NONE || !x->begun || status < 200 || status > 599)
        return -EINVAL;
    keep = x->rq == RQ_END && x->keep_alive && !input_over(x) && x->error == 0;
    n = tt_h1_write_error(buf, sizeof(buf), status, reason, rule, !keep);
    if (n < 0)
        return n;
    x->rs = RS_BODY;
    x->responded = true;
    x->close_after = !keep;
    r = to_app(x, buf, own_answer_len(x, buf, n));
    if (r < 0) {
        x->rs = RS_END;
        x->done = true;
        return r;
    }
    return complete_response(x);
}

/* ---- the connection ---- */

/*
 * Allocates a translator; see h1h2.h. A NULL default_authority is taken as "".
 */
struct tt_h1h2 *tt_h1h2_new(const struct tt_h1h2_io *io, const char *default_authority)
{
    struct tt_h1h2 *x = calloc(1, sizeof(*x));

    assert(io->on_request != NULL && io->to_app != NULL);
    if (x == NULL)
        return NULL;
    x->io = *io;
    x->default_authority = strdup(default_authority != NULL ? default_authority : "");
    if (x->default_authority == NULL)
        goto err_free_x;
    x->h1 = tt_h1_new(NULL, &reader_callbacks, x);
    if (x->h1 == NULL)
        goto err_free_authority;
    tt_buf_init(&x->in);
    next_request(x);
    return x;

err_free_authority:
    free(x->default_authority);
err_free_x:
    free(x);
    return NULL;
}

/*
 * Frees a translator and everything it holds. Accepts NULL.
 */
void tt_h1h2_free(struct tt_h1h2 *x)
{
    if (x == NULL)
        return;
    tt_h1_free(x->h1);
    tt_buf_done(&x->in);
    free(x->default_authority);
    free(x);
}

/*
 * The app's bytes; see h1h2.h. They are appended to `in` and the reader takes what it may
 * now; once the connection is done, what the app still sends is dropped.
 */
int tt_h1h2_from_app(struct tt_h1h2 *x, const char *data, size_t len)
{
    int r;

    if (x->stopped || x->in_feed || (data == NULL && len > 0))
        return -EINVAL;
    if (x->error != 0)
        return x->error;
    if (x->done || x->eof || len == 0)
        return 0;
    if (tt_buf_append(&x->in, data, len) < 0)
        return -ENOMEM;
    r = pump(x);
    if (r == 0 && !x->done && held(x) > H1H2_HOLD_LIMIT)
        r = x->error = -ENOBUFS;
    return r;
}

/*
 * The app's EOF; see h1h2.h. While the reader is paused (a request waits for its stream
 * or its response), the check for a request cut short comes when it runs again.
 */
int tt_h1h2_app_eof(struct tt_h1h2 *x)
{
    if (x->stopped || x->in_feed)
        return -EINVAL;
    x->eof = true;
    if (x->done)
        return 0;
    if (x->error != 0)
        return x->error;
    return pump(x);
}

/*
 * The stream takes the body now; see h1h2.h.
 */
int tt_h1h2_resume(struct tt_h1h2 *x)
{
    int r;

    if (x->stopped || x->in_feed || x->done || x->rq != RQ_WAIT)
        return -EINVAL;
    if (x->error != 0)
        return x->error;
    x->rq = RQ_BODY;
    r = send_continue(x);
    return r < 0 ? r : pump(x);
}

/*
 * The current request again from its first byte; see h1h2.h. A fresh reader reads the
 * retained bytes (and what is held after them); a callback's earlier error is forgotten
 * with the reader that saw it.
 */
int tt_h1h2_rewind(struct tt_h1h2 *x)
{
    struct tt_h1 *h1;

    if (x->stopped)
        return -EINVAL;
    if (x->in_feed || x->done || !x->begun || x->responded || !x->retained ||
        (x->error != 0 && !x->cb_failed))
        return -EAGAIN;
    h1 = tt_h1_new(NULL, &reader_callbacks, x);
    if (h1 == NULL)
        return -ENOMEM;
    tt_h1_free(x->h1);
    x->h1 = h1;
    x->fed = x->req_start;
    x->error = 0;
    x->cb_failed = false;
    x->rq = RQ_HEAD;
    x->rs = RS_NONE;
    x->head_seen = false;
    return pump(x);
}

/*
 * Hands the connection to a byte relay; see h1h2.h. Allowed inside a callback (the
 * buffer is then released by tt_h1h2_free).
 */
int tt_h1h2_take_raw(struct tt_h1h2 *x, struct tt_buf *out)
{
    if (x->stopped || out == NULL)
        return -EINVAL;
    if (x->done || x->responded || !x->retained)
        return -EAGAIN;
    if (x->in.len > x->req_start &&
        tt_buf_append(out, in_at(x, x->req_start), x->in.len - x->req_start) < 0)
        return -ENOMEM;
    x->stopped = true;
    if (!x->in_feed) {
        tt_buf_done(&x->in);
        x->req_start = x->fed = 0;
    }
    return 0;
}

/* The accessors; see h1h2.h. */
bool tt_h1h2_wants_app(const struct tt_h1h2 *x)
{
    return !x->stopped && held(x) < TT_H1H2_HOLD_MAX;
}

bool tt_h1h2_busy(const struct tt_h1h2 *x)
{
    return !x->stopped && !x->done && x->begun && x->rs != RS_END;
}

bool tt_h1h2_responded(const struct tt_h1h2 *x)
{
    return x->responded;
}

bool tt_h1h2_done(const struct tt_h1h2 *x)
{
    return x->done;
}

enum tt_h1_reason tt_h1h2_reason(const struct tt_h1h2 *x)
{
    return x->reason;
}
