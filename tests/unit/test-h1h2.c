/* Unit tests for http/h1h2.c: an app's HTTP/1.x requests become stream requests
 * (:authority from absolute-form, Host or the default; :path with the query; fields
 * lower-cased without the connection-specific ones, those Connection names, host, expect
 * and a te other than trailers), bodies de-chunked, one request at a time (a pipelined one
 * waits for the response before it), 100 Continue when the stream takes the body, and the
 * responses written back as HTTP/1.1 (Content-Length, chunked, close-delimited, bodiless
 * HEAD/204/304, Connection: close or keep-alive). Also the turns a connection can take:
 * WAIT and resume, rewind for a retry, take_raw for an upgrade or a relay, the sidecar's
 * own answers, refusals (smuggling shapes), EOFs, callback errors, the bounds and the
 * -EINVAL cases. No sockets: the io callbacks record what comes out. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"
#include "core/errors.h"
#include "http/h1h2.h"

/* What the translator produced, as text, and what its callbacks answer. */
struct rec {
    struct tt_h1h2 *x;
    char app[16384]; /* bytes for the app */
    size_t app_len;
    char ev[16384]; /* request/body/end, one per line */
    size_t ev_len;
    size_t body_bytes; /* on_body bytes, counted (quiet: not logged) */
    bool quiet;
    int requests;
    int rq_ret, body_ret, end_ret, app_ret;
    /* Runs inside on_request (before it returns rq_ret) or on_end. */
    int (*in_request)(struct rec *r, const struct tt_h1h2_request *rq);
    int (*in_end)(struct rec *r);
};

static void put(char *buf, size_t *len, size_t cap, const char *data, size_t n)
{
    assert_true(*len + n < cap);
    memcpy(buf + *len, data, n);
    *len += n;
    buf[*len] = '\0';
}

static void ev(struct rec *r, const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(line));
    put(r->ev, &r->ev_len, sizeof(r->ev), line, (size_t)n);
}

static int on_request(void *ud, const struct tt_h1h2_request *rq)
{
    struct rec *r = ud;

    r->requests++;
    ev(r, "req %s %s %s body=%d idem=%d up=%d", rq->method, rq->authority,
       rq->path ? rq->path : "(null)", rq->has_body, rq->idempotent, rq->upgrade);
    for (size_t i = 0; i < rq->n_fields; i++)
        ev(r, " %.*s=%.*s", (int)rq->fields[i].name_len, rq->fields[i].name,
           (int)rq->fields[i].value_len, rq->fields[i].value);
    ev(r, "\n");
    if (r->in_request != NULL) {
        int k = r->in_request(r, rq);
        if (k != 0)
            return k;
    }
    return r->rq_ret;
}

static int on_body(void *ud, const char *data, size_t len)
{
    struct rec *r = ud;

    r->body_bytes += len;
    if (!r->quiet)
        ev(r, "body %.*s\n", (int)len, data);
    return r->body_ret;
}

static int on_end(void *ud)
{
    struct rec *r = ud;

    ev(r, "end\n");
    if (r->in_end != NULL) {
        int k = r->in_end(r);
        if (k != 0)
            return k;
    }
    return r->end_ret;
}

static int to_app(void *ud, const char *data, size_t len)
{
    struct rec *r = ud;

    if (r->app_ret != 0)
        return r->app_ret;
    put(r->app, &r->app_len, sizeof(r->app), data, len);
    return 0;
}

static struct tt_h1h2 *make(struct rec *r)
{
    struct tt_h1h2_io io = {r, on_request, on_body, on_end, to_app};

    memset(r, 0, sizeof(*r));
    r->x = tt_h1h2_new(&io, "default.svc:8080");
    assert_non_null(r->x);
    return r->x;
}

/* Clears what was recorded. */
static void clear(struct rec *r)
{
    r->app_len = r->ev_len = 0;
    r->app[0] = r->ev[0] = '\0';
}

static int feed(struct tt_h1h2 *x, const char *s)
{
    return tt_h1h2_from_app(x, s, strlen(s));
}

/* Feeds one byte at a time; returns the first non-zero result. */
static int feed_bytewise(struct tt_h1h2 *x, const char *s)
{
    int r = 0;

    for (size_t i = 0; s[i] != '\0' && r == 0; i++)
        r = tt_h1h2_from_app(x, s + i, 1);
    return r;
}

#define F(n, v)                                                                                    \
    {                                                                                              \
        n, sizeof(n) - 1, v, sizeof(v) - 1                                                         \
    }

static const struct tt_h2_header len5[] = {F(":status", "200"), F("content-length", "5"),
                                           F("x-a", "1")};

/* A GET: its fields translated, the path normalized with its query, the response framed
 * by the stream's Content-Length; whole and one byte at a time. */
static void test_h1h2_get(void **state)
{
    const char *req = "GET /a/./b/%7E?x=1&y HTTP/1.1\r\nHost: api:80\r\nUser-Agent: t\r\n"
                      "Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\nTE: Trailers\r\n"
                      "Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nX-B: 2\r\n\r\n";
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct rec r;
        struct tt_h1h2 *x = make(&r);

        assert_false(tt_h1h2_busy(x));
        assert_int_equal(bytewise ? feed_bytewise(x, req) : feed(x, req), 0);
        assert_string_equal(r.ev, "req GET api:80 /a/b/~?x=1&y body=0 idem=1 up=0 user-agent=t "
                                  "te=trailers x-b=2\nend\n");
        assert_true(tt_h1h2_busy(x));
        assert_false(tt_h1h2_responded(x));
        assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
        assert_true(tt_h1h2_responded(x));
        assert_int_equal(tt_h1h2_response_body(x, "hel", 3), 0);
        assert_int_equal(tt_h1h2_response_body(x, "lo", 2), 0);
        assert_int_equal(tt_h1h2_response_end(x), 0);
        assert_string_equal(r.app, "HTTP/1.1 200 OK\r\nx-a: 1\r\nContent-Length: 5\r\n\r\nhello");
        assert_false(tt_h1h2_busy(x));
        assert_false(tt_h1h2_done(x));
        assert_false(tt_h1h2_responded(x)); /* the next request has no response yet */
        assert_int_equal(tt_h1h2_reason(x), TT_H1_R_NONE);
        tt_h1h2_free(x);
    }
}

/* :authority from absolute-form before Host; "*" for OPTIONS *; a te other than trailers,
 * host and expect left out; a POST is not idempotent. */
static void test_h1h2_authority_and_fields(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "GET http://h.example:81/p?q HTTP/1.1\r\nHost: other\r\n"
                             "TE: gzip\r\nExpect: 100-continue\r\nX-Up: A\r\n\r\n"),
                     0);
    assert_string_equal(r.ev, "req GET h.example:81 /p?q body=0 idem=1 up=0 x-up=A\nend\n");
    assert_int_equal(tt_h1h2_respond(x, 204, NULL, 0, true), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    clear(&r);
    assert_int_equal(feed(x, "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_string_equal(r.ev, "req OPTIONS h * body=0 idem=1 up=0\nend\n");
    assert_int_equal(tt_h1h2_answer(x, 403, "policy_denied", NULL), 0);
    clear(&r);
    assert_int_equal(feed(x, "POST /f HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"), 0);
    assert_string_equal(r.ev, "req POST h /f body=0 idem=0 up=0 content-length=0\nend\n");
    tt_h1h2_free(x);
}

/* HTTP/1.1 without a Content-Length from the stream: chunked; an empty piece writes
 * nothing; response fields the app must not see are left out. */
static void test_h1h2_chunked_response(void **state)
{
    static const struct tt_h2_header fields[] = {
        F(":status", "200"),
        F("connection", "x"),
        F("transfer-encoding", "chunked"),
        F("x-bad", "a\r\nInjected: 1"),
        F("bad name", "v"),
        F("upgrade", "h2c"),
        F("set-cookie", "a=1"),
        F("set-cookie", "b=2"),
    };
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, fields, 8, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
    assert_int_equal(tt_h1h2_response_body(x, "", 0), 0);
    assert_int_equal(tt_h1h2_response_body(x, "0123456789abcdefX", 17), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n11\r\n"
                               "0123456789abcdefX\r\n0\r\n\r\n");
    assert_false(tt_h1h2_done(x));
    /* end_stream without a length: known empty, Content-Length: 0. */
    clear(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 404, NULL, 0, true), 0);
    assert_int_equal(tt_h1h2_response_body(x, "x", 1), -EINVAL); /* end_stream said none */
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    tt_h1h2_free(x);
}

/* HTTP/1.0 without Host: the default authority, a close-delimited body, done after its
 * end. */
static void test_h1h2_http10_close(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "GET /old HTTP/1.0\r\nAccept: */*\r\n\r\n"), 0);
    assert_string_equal(r.ev, "req GET default.svc:8080 /old body=0 idem=1 up=0 accept=*/*\nend\n");
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "abc", 3), 0);
    assert_false(tt_h1h2_done(x));
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc");
    assert_true(tt_h1h2_done(x));
    assert_false(tt_h1h2_busy(x));
    /* Bytes after the end are dropped. */
    clear(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.0\r\n\r\n"), 0);
    assert_int_equal(r.ev_len, 0);
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    tt_h1h2_free(x);
}

/* HTTP/1.0 keep-alive: a response of known length says keep-alive and the next request
 * is read; one of unknown length is close-delimited. */
static void test_h1h2_http10_keep_alive(void **state)
{
    static const struct tt_h2_header len2[] = {F("content-length", "2")};
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                             "GET /2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
                     0);
    assert_int_equal(r.requests, 1);
    assert_int_equal(tt_h1h2_respond(x, 200, len2, 1, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "ok", 2), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app,
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
    assert_false(tt_h1h2_done(x));
    assert_int_equal(r.requests, 2);
    clear(&r);
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "xyz", 3), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nxyz");
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

/* Pipelined requests in one feed: the second is read only once the first's response is
 * complete (inside response_end); whole and one byte at a time. */
static void test_h1h2_pipelined(void **state)
{
    const char *two = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
                      "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                      "GET /3 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct rec r;
        struct tt_h1h2 *x = make(&r);

        assert_int_equal(bytewise ? feed_bytewise(x, two) : feed(x, two), 0);
        assert_string_equal(r.ev, "req GET h /1 body=0 idem=1 up=0\nend\n");
        assert_true(tt_h1h2_wants_app(x));
        clear(&r);
        assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
        assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
        assert_int_equal(r.ev_len, 0);
        assert_int_equal(tt_h1h2_response_end(x), 0);
        assert_string_equal(r.ev, "req POST h /2 body=1 idem=0 up=0 content-length=3\n"
                                  "body abc\nend\n");
        clear(&r);
        assert_int_equal(tt_h1h2_answer(x, 503, "no_upstream", NULL), 0);
        assert_non_null(strstr(r.app, "Connection: keep-alive\r\n"));
        assert_string_equal(r.ev, "req GET h /3 body=0 idem=1 up=0\nend\n");
        clear(&r);
        assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
        assert_non_null(strstr(r.app, "Connection: close\r\n"));
        assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
        assert_int_equal(tt_h1h2_response_end(x), 0);
        assert_true(tt_h1h2_done(x));
        tt_h1h2_free(x);
    }
}

/* A chunked upload is given de-chunked, its trailers dropped; the stream's fields carry
 * no transfer-encoding. */
static void test_h1h2_chunked_upload(void **state)
{
    const char *req = "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct rec r;
        struct tt_h1h2 *x = make(&r);

        assert_int_equal(bytewise ? feed_bytewise(x, req) : feed(x, req), 0);
        if (bytewise)
            assert_string_equal(r.ev, "req POST h /u body=1 idem=0 up=0\nbody a\nbody b\n"
                                      "body c\nbody d\nbody e\nend\n");
        else
            assert_string_equal(r.ev, "req POST h /u body=1 idem=0 up=0\nbody abc\nbody de\n"
                                      "end\n");
        tt_h1h2_free(x);
    }
}

/* Expect: 100-continue: answered when on_request takes the body, or at resume after a
 * wait, never for HTTP/1.0 or a request without a body. */
static void test_h1h2_expect_continue(void **state)
{
    const char *req = "PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                      "Content-Length: 4\r\n\r\n";
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, req), 0);
    assert_string_equal(r.app, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(feed(x, "data"), 0);
    assert_string_equal(r.ev, "req PUT h /e body=1 idem=1 up=0 content-length=4\nbody data\nend\n");
    assert_false(tt_h1h2_responded(x)); /* a 100 is not the response */
    tt_h1h2_free(x);

    x = make(&r);
    r.rq_ret = TT_H1H2_WAIT;
    assert_int_equal(feed(x, req), 0);
    assert_int_equal(r.app_len, 0);
    assert_int_equal(tt_h1h2_resume(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_int_equal(tt_h1h2_resume(x), -EINVAL); /* not waiting any more */
    tt_h1h2_free(x);

    x = make(&r);
    assert_int_equal(
        feed(x, "PUT /e HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"), 0);
    assert_int_equal(feed(x, "GET /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"), 0);
    assert_int_equal(r.app_len, 0);
    tt_h1h2_free(x);
}

/* WAIT: the body stays held (whole or in pieces) until resume passes it on. */
static void test_h1h2_wait_holds_body(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    r.rq_ret = TT_H1H2_WAIT;
    assert_int_equal(feed(x, "POST /w HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nhello"), 0);
    assert_int_equal(feed(x, "wor"), 0);
    assert_string_equal(r.ev, "req POST h /w body=1 idem=0 up=0 content-length=10\n");
    assert_true(tt_h1h2_busy(x));
    clear(&r);
    assert_int_equal(tt_h1h2_resume(x), 0);
    assert_string_equal(r.ev, "body hellowor\n");
    assert_int_equal(feed(x, "ld"), 0);
    assert_string_equal(r.ev, "body hellowor\nbody ld\nend\n");
    assert_int_equal(r.app_len, 0);
    tt_h1h2_free(x);
}

/* Rewind replays the request and its body as the app sent them, as often as no response
 * byte was written; then it is refused. */
static void test_h1h2_rewind(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);
    char first[1024];

    (void)state;
    assert_int_equal(tt_h1h2_rewind(x), -EAGAIN); /* nothing begun */
    assert_int_equal(feed(x, "PUT /r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "4\r\nbody\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n"),
                     0);
    strcpy(first, r.ev);
    assert_string_equal(first, "req PUT h /r body=1 idem=1 up=0\nbody body\nend\n");
    clear(&r);
    assert_int_equal(tt_h1h2_rewind(x), 0);
    assert_string_equal(r.ev, first);
    clear(&r);
    assert_int_equal(tt_h1h2_rewind(x), 0);
    assert_string_equal(r.ev, first);
    assert_int_equal(r.requests, 3);
    assert_int_equal(tt_h1h2_respond(x, 201, len5, 3, false), 0);
    assert_int_equal(tt_h1h2_rewind(x), -EAGAIN);
    assert_int_equal(tt_h1h2_take_raw(x, NULL), -EINVAL);
    assert_int_equal(tt_h1h2_response_body(x, "12345", 5), 0);
    clear(&r);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.ev, "req GET h /next body=0 idem=1 up=0\nend\n");
    tt_h1h2_free(x);

    /* A rewind while the stream waits: on_request again, then the held body. */
    x = make(&r);
    r.rq_ret = TT_H1H2_WAIT;
    assert_int_equal(feed(x, "POST /w HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"), 0);
    r.rq_ret = 0;
    clear(&r);
    assert_int_equal(tt_h1h2_rewind(x), 0);
    assert_string_equal(r.ev, "req POST h /w body=1 idem=0 up=0 content-length=2\nbody ab\nend\n");
    tt_h1h2_free(x);
}

/* Raw bytes past TT_H1H2_RETAIN_MAX are not retained: neither rewind nor take_raw. */
static void test_h1h2_retain_bound(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);
    size_t big = TT_H1H2_RETAIN_MAX + 1000, sent = 0;
    char head[128], chunk[8192];
    struct tt_buf out;

    (void)state;
    r.quiet = true;
    snprintf(head, sizeof(head), "POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: %zu\r\n\r\n",
             big);
    assert_int_equal(feed(x, head), 0);
    memset(chunk, 'z', sizeof(chunk));
    assert_int_equal(tt_h1h2_rewind(x), 0); /* still retained */
    while (sent < big) {
        size_t n = big - sent < sizeof(chunk) ? big - sent : sizeof(chunk);
        assert_int_equal(tt_h1h2_from_app(x, chunk, n), 0);
        sent += n;
    }
    assert_int_equal(r.body_bytes, big);
    assert_non_null(strstr(r.ev, "end\n"));
    assert_int_equal(tt_h1h2_rewind(x), -EAGAIN);
    tt_buf_init(&out);
    assert_int_equal(tt_h1h2_take_raw(x, &out), -EAGAIN);
    assert_int_equal(out.len, 0);
    /* The next request is retained again. */
    assert_int_equal(tt_h1h2_answer(x, 413, "too_large", NULL), 0);
    assert_false(tt_h1h2_done(x));
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_take_raw(x, &out), 0);
    assert_int_equal(out.len, strlen("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
    tt_buf_done(&out);
    tt_h1h2_free(x);
}

/* An upgrade request: on_request says so, nothing else fires, and take_raw hands over
 * every byte from the request's first on; CONNECT too (no :path). */
static void test_h1h2_upgrade_take_raw(void **state)
{
    const char *req = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n";
    const char tail[] = "\x81\x85\x00\r\n\0x";
    struct rec r;
    struct tt_h1h2 *x = make(&r);
    struct tt_buf out;
    char all[512];
    size_t len;

    (void)state;
    assert_int_equal(feed(x, req), 0);
    assert_int_equal(tt_h1h2_from_app(x, tail, sizeof(tail) - 1), 0);
    assert_string_equal(r.ev, "req GET h /ws body=0 idem=1 up=1 sec-websocket-key=k\n");
    assert_true(tt_h1h2_busy(x));
    tt_buf_init(&out);
    assert_int_equal(tt_buf_append(&out, "P", 1), 0); /* take_raw appends */
    assert_int_equal(tt_h1h2_take_raw(x, &out), 0);
    len = strlen(req);
    all[0] = 'P';
    memcpy(all + 1, req, len);
    memcpy(all + 1 + len, tail, sizeof(tail) - 1);
    assert_int_equal(out.len, 1 + len + sizeof(tail) - 1);
    assert_memory_equal(tt_buf_head(&out), all, out.len);
    /* Stopped: every later call fails, no callback fires. */
    clear(&r);
    assert_int_equal(feed(x, "more"), -EINVAL);
    assert_int_equal(tt_h1h2_app_eof(x), -EINVAL);
    assert_int_equal(tt_h1h2_resume(x), -EINVAL);
    assert_int_equal(tt_h1h2_rewind(x), -EINVAL);
    assert_int_equal(tt_h1h2_take_raw(x, &out), -EINVAL);
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, true), -EINVAL);
    assert_int_equal(tt_h1h2_response_body(x, "x", 1), -EINVAL);
    assert_int_equal(tt_h1h2_response_end(x), -EINVAL);
    assert_int_equal(tt_h1h2_answer(x, 502, "x", NULL), -EINVAL);
    assert_false(tt_h1h2_wants_app(x));
    assert_int_equal(r.ev_len + r.app_len, 0);
    tt_buf_done(&out);
    tt_h1h2_free(x);

    x = make(&r);
    assert_int_equal(feed(x, "CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x16\x03"), 0);
    assert_string_equal(r.ev, "req CONNECT db:5432 (null) body=0 idem=0 up=1\n");
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    tt_buf_init(&out);
    assert_int_equal(tt_h1h2_take_raw(x, &out), 0);
    assert_int_equal(out.len, strlen("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x16\x03"));
    tt_buf_done(&out);
    tt_h1h2_free(x);
}

/* take_raw inside on_request (the natural place for an upgrade): no callback after it. */
static int take_in_request(struct rec *r, const struct tt_h1h2_request *rq)
{
    struct tt_buf out;
    int k;

    (void)rq;
    tt_buf_init(&out);
    k = tt_h1h2_take_raw(r->x, &out);
    assert_int_equal(k, 0);
    ev(r, "raw %zu\n", out.len);
    tt_buf_done(&out);
    return 0;
}

static void test_h1h2_take_raw_inside(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);
    const char *req = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET";
    char want[128];

    (void)state;
    r.in_request = take_in_request;
    assert_int_equal(feed(x, req), 0);
    snprintf(want, sizeof(want), "req POST h /x body=1 idem=0 up=0 content-length=3\nraw %zu\n",
             strlen(req));
    assert_string_equal(r.ev, want);
    tt_h1h2_free(x);
}

/* take_raw between requests hands over what is held; during a request, its bytes. */
static void test_h1h2_take_raw_between(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);
    struct tt_buf out;

    (void)state;
    tt_buf_init(&out);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_answer(x, 404, "not_found", NULL), 0);
    assert_false(tt_h1h2_busy(x));
    assert_int_equal(tt_h1h2_take_raw(x, &out), 0);
    assert_int_equal(out.len, 0);
    tt_h1h2_free(x);

    /* A pipelined request behind a response under way: take_raw waits for a response
     * byte not to have been written. */
    x = make(&r);
    assert_int_equal(feed(x, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_int_equal(tt_h1h2_take_raw(x, &out), -EAGAIN);
    assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_true(tt_h1h2_busy(x)); /* the second has begun */
    assert_int_equal(tt_h1h2_take_raw(x, &out), 0);
    assert_int_equal(out.len, strlen("GET /2 HTTP/1.1\r\n"));
    assert_memory_equal(tt_buf_head(&out), "GET /2 HTTP/1.1\r\n", out.len);
    tt_buf_done(&out);
    tt_h1h2_free(x);
}

/* Smuggling shapes are refused with the reader's reason: 400, Connection: close, done. */
static void test_h1h2_refused(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
                     TT_E_HTTP);
    assert_int_equal(r.requests, 0);
    assert_true(strncmp(r.app, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    assert_non_null(strstr(r.app, "x-tether-reason: content_length_and_transfer_encoding\r\n"));
    assert_non_null(strstr(r.app, "Connection: close\r\n"));
    assert_true(tt_h1h2_done(x));
    assert_int_equal(tt_h1h2_reason(x), TT_H1_R_CL_AND_TE);
    assert_int_equal(feed(x, "GET"), TT_E_HTTP);
    assert_int_equal(tt_h1h2_answer(x, 500, "x", NULL), -EINVAL);
    tt_h1h2_free(x);

    /* The second request of a connection, bare LF. */
    x = make(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\nHost: h\n\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
    clear(&r);
    assert_int_equal(tt_h1h2_response_end(x), TT_E_HTTP);
    assert_non_null(strstr(r.app, "x-tether-reason: bare_lf\r\n"));
    assert_int_equal(tt_h1h2_reason(x), TT_H1_R_BARE_LF);
    tt_h1h2_free(x);

    /* A bad chunk while the response is under way: nothing is added to the response. */
    x = make(&r);
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"),
                     0);
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, false), 0);
    clear(&r);
    assert_int_equal(feed(x, "zz\r\n"), TT_E_HTTP);
    assert_int_equal(r.app_len, 0);
    assert_true(tt_h1h2_done(x));
    assert_int_equal(tt_h1h2_response_body(x, "x", 1), -EINVAL);
    tt_h1h2_free(x);

    /* An oversized head: 431. */
    x = make(&r);
    {
        static char huge[70000];
        memset(huge, 'a', sizeof(huge) - 1);
        memcpy(huge, "GET /", 5);
        assert_int_equal(feed(x, huge), TT_E_HTTP);
    }
    assert_true(strncmp(r.app, "HTTP/1.1 431 ", 13) == 0);
    tt_h1h2_free(x);
}

/* The sidecar's own answer: keep-alive after a complete keep-alive request, close
 * otherwise; its -EINVAL cases. */
static void test_h1h2_answer(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(tt_h1h2_answer(x, 503, "no_upstream", NULL), -EINVAL); /* no request */
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_answer(x, 403, "Bad Reason", NULL), -EINVAL);
    assert_int_equal(tt_h1h2_answer(x, 100, "x", NULL), -EINVAL);
    assert_int_equal(tt_h1h2_answer(x, 600, "x", NULL), -EINVAL);
    assert_int_equal(r.app_len, 0);
    assert_int_equal(tt_h1h2_answer(x, 403, "policy_denied", "rule-\"1\""), 0);
    assert_true(strncmp(r.app, "HTTP/1.1 403 Forbidden\r\n", 24) == 0);
    assert_non_null(strstr(r.app, "Connection: keep-alive\r\n"));
    assert_non_null(strstr(r.app, "{\"error\": \"policy_denied\", \"rule\": \"rule-\\\"1\\\"\"}"));
    assert_false(tt_h1h2_done(x));
    assert_false(tt_h1h2_busy(x));

    /* A request whose body has not all come: close. */
    clear(&r);
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc"), 0);
    assert_int_equal(tt_h1h2_answer(x, 502, "upstream_failed", NULL), 0);
    assert_non_null(strstr(r.app, "Connection: close\r\n"));
    assert_true(tt_h1h2_done(x));
    clear(&r);
    assert_int_equal(feed(x, "defGET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(r.ev_len, 0); /* never read */
    tt_h1h2_free(x);

    /* After a response head: -EINVAL. Connection: close asked: close. */
    x = make(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, false), 0);
    assert_int_equal(tt_h1h2_answer(x, 502, "x", NULL), -EINVAL);
    tt_h1h2_free(x);
    x = make(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_answer(x, 502, "upstream_failed", NULL), 0);
    assert_non_null(strstr(r.app, "Connection: close\r\n"));
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);

    /* A head not complete yet (a timeout, say): close. */
    x = make(&r);
    assert_int_equal(feed(x, "GET / HTT"), 0);
    assert_true(tt_h1h2_busy(x));
    assert_int_equal(tt_h1h2_answer(x, 408, "request_timeout", NULL), 0);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

/* Answers from inside the callbacks: in on_request the request is not complete (close);
 * in on_end it is, and the next pipelined request is read in the same feed. */
static int answer_in_request(struct rec *r, const struct tt_h1h2_request *rq)
{
    (void)rq;
    assert_int_equal(tt_h1h2_answer(r->x, 403, "policy_denied", NULL), 0);
    return 0;
}

static int answer_in_end(struct rec *r)
{
    assert_int_equal(tt_h1h2_answer(r->x, 404, "not_found", NULL), 0);
    return 0;
}

/* The sidecar's own answer to HEAD is its head alone (RFC 9110 §9.3.2), so that the
 * connection stays in step for the next request. */
static void test_h1h2_answer_head(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_answer(x, 503, "no_endpoint", NULL), 0);
    assert_non_null(strstr(r.app, "HTTP/1.1 503 "));
    assert_non_null(strstr(r.app, "Connection: keep-alive\r\n"));
    assert_int_equal(strlen(r.app) - 4, (size_t)(strstr(r.app, "\r\n\r\n") - r.app));
    assert_false(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

static void test_h1h2_answer_inside(void **state)
{
    const char *two = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n";
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    r.in_request = answer_in_request;
    assert_int_equal(feed(x, two), 0);
    assert_string_equal(r.ev, "req GET h /1 body=0 idem=1 up=0\n");
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);

    x = make(&r);
    r.in_end = answer_in_end;
    assert_int_equal(feed(x, two), 0);
    assert_string_equal(r.ev, "req GET h /1 body=0 idem=1 up=0\nend\n"
                              "req GET h /2 body=0 idem=1 up=0\nend\n");
    assert_false(tt_h1h2_done(x));
    assert_false(tt_h1h2_busy(x));
    assert_non_null(strstr(strstr(r.app, "404") + 3, "404")); /* two answers */
    assert_int_equal(feed(x, "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(r.requests, 3);
    tt_h1h2_free(x);
}

/* Held bytes: wants_app turns false at TT_H1H2_HOLD_MAX; a caller that goes on feeding
 * far past it gets -ENOBUFS. */
static void test_h1h2_hold_bound(void **state)
{
    static char block[TT_H1H2_HOLD_MAX];
    struct rec r;
    struct tt_h1h2 *x = make(&r);
    int k = 0, i;

    (void)state;
    r.rq_ret = TT_H1H2_WAIT;
    memset(block, 'b', sizeof(block));
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n"), 0);
    assert_true(tt_h1h2_wants_app(x));
    assert_int_equal(tt_h1h2_from_app(x, block, sizeof(block) - 10), 0);
    assert_true(tt_h1h2_wants_app(x));
    assert_int_equal(tt_h1h2_from_app(x, block, 10), 0);
    assert_false(tt_h1h2_wants_app(x));
    for (i = 0; i < 8 && k == 0; i++)
        k = tt_h1h2_from_app(x, block, sizeof(block));
    assert_int_equal(k, -ENOBUFS);
    assert_true(i <= 4);
    assert_int_equal(feed(x, "x"), -ENOBUFS);
    tt_h1h2_free(x);

    /* Resuming drains what was held. */
    x = make(&r);
    r.rq_ret = TT_H1H2_WAIT;
    r.quiet = true;
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_from_app(x, block, sizeof(block)), 0);
    assert_false(tt_h1h2_wants_app(x));
    assert_int_equal(tt_h1h2_resume(x), 0);
    assert_true(tt_h1h2_wants_app(x));
    assert_int_equal(r.body_bytes, sizeof(block));
    tt_h1h2_free(x);
}

/* HEAD, 204 and 304 responses carry no body; HEAD's and 304's Content-Length is kept,
 * 204's dropped. */
static void test_h1h2_bodiless(void **state)
{
    static const struct tt_h2_header len100[] = {F("content-length", "100")};
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len100, 1, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "xx", 2), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    assert_false(tt_h1h2_done(x));
    clear(&r);
    assert_int_equal(feed(x, "GET /n HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 204, len100, 1, true), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 204 No Content\r\n\r\n");
    clear(&r);
    assert_int_equal(feed(x, "GET /m HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 304, len100, 1, false), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_string_equal(r.app, "HTTP/1.1 304 Unknown\r\nContent-Length: 100\r\n"
                               "Connection: keep-alive\r\n\r\n");
    assert_false(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

/* The app's EOF: mid-request TT_E_HTTP; between requests done; while a request waits for
 * its response, done once the response is complete. */
static void test_h1h2_app_eof(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\nabc"), 0);
    assert_int_equal(tt_h1h2_app_eof(x), TT_E_HTTP);
    assert_true(tt_h1h2_done(x));
    assert_int_equal(tt_h1h2_reason(x), TT_H1_R_MALFORMED);
    tt_h1h2_free(x);

    x = make(&r);
    assert_int_equal(feed(x, "GET / HT"), 0);
    assert_int_equal(tt_h1h2_app_eof(x), TT_E_HTTP);
    tt_h1h2_free(x);

    x = make(&r);
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);

    x = make(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_answer(x, 404, "not_found", NULL), 0);
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);

    x = make(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    assert_false(tt_h1h2_done(x));
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_non_null(strstr(r.app, "Connection: close\r\n"));
    assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);

    /* EOF after two pipelined requests: both are served, in order; the connection is done
     * after the second. */
    x = make(&r);
    assert_int_equal(
        feed(x, "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_null(strstr(r.app, "Connection: close\r\n"));
    assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
    clear(&r);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_false(tt_h1h2_done(x));
    assert_string_equal(r.ev, "req GET h /2 body=0 idem=1 up=0\nend\n");
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_non_null(strstr(r.app, "Connection: close\r\n"));
    assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);

    /* EOF while the stream waits: the body held is complete, so nothing was cut short;
     * one that is not is found at resume. */
    x = make(&r);
    r.rq_ret = TT_H1H2_WAIT;
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"), 0);
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    assert_int_equal(tt_h1h2_resume(x), 0);
    assert_non_null(strstr(r.ev, "body ab\nend\n"));
    tt_h1h2_free(x);
    x = make(&r);
    r.rq_ret = TT_H1H2_WAIT;
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab"), 0);
    assert_int_equal(tt_h1h2_app_eof(x), 0);
    assert_int_equal(tt_h1h2_resume(x), TT_E_HTTP);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

/* A response complete before its request: the connection is done, the rest of the body
 * never read. */
static void test_h1h2_response_before_request(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc"), 0);
    assert_int_equal(tt_h1h2_respond(x, 413, NULL, 0, true), 0);
    assert_non_null(strstr(r.app, "Connection: close\r\n"));
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_true(tt_h1h2_done(x));
    assert_false(tt_h1h2_busy(x));
    clear(&r);
    assert_int_equal(feed(x, "defGET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(r.ev_len, 0);
    assert_int_equal(tt_h1h2_response_end(x), -EINVAL);
    tt_h1h2_free(x);

    /* Without end_stream the close is only known at the end: no Connection field. */
    x = make(&r);
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\nabc"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_null(strstr(r.app, "Connection"));
    assert_int_equal(tt_h1h2_response_body(x, "hello", 5), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

/* A callback's error is what the feeding call returns, every time after; a rewind starts
 * afresh. */
static void test_h1h2_callback_errors(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    r.rq_ret = -EIO;
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), -EIO);
    assert_int_equal(feed(x, "x"), -EIO);
    assert_int_equal(r.app_len, 0); /* no 400: the app did nothing wrong */
    assert_false(tt_h1h2_done(x));
    r.rq_ret = 0;
    assert_int_equal(tt_h1h2_rewind(x), 0);
    assert_int_equal(r.requests, 2);
    assert_non_null(strstr(r.ev, "end\n"));
    tt_h1h2_free(x);

    x = make(&r);
    r.body_ret = -EPIPE;
    assert_int_equal(feed(x, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"), -EPIPE);
    assert_int_equal(tt_h1h2_answer(x, 502, "upstream_failed", NULL), 0);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);

    x = make(&r);
    r.end_ret = -ECONNRESET;
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), -ECONNRESET);
    tt_h1h2_free(x);

    /* to_app's error: from respond, from the 100 Continue, from the refusal. */
    x = make(&r);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    r.app_ret = -EPIPE;
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), -EPIPE);
    tt_h1h2_free(x);
    x = make(&r);
    r.app_ret = -EPIPE;
    assert_int_equal(feed(x, "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                             "Content-Length: 1\r\n\r\n"),
                     -EPIPE);
    tt_h1h2_free(x);
    x = make(&r);
    r.app_ret = -EPIPE;
    assert_int_equal(feed(x, "GET / HTTP/1.1\nHost: h\n\n"), -EPIPE);
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

/* respond, response_body and response_end refuse what does not fit. */
static void test_h1h2_einval(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, false), -EINVAL); /* no request */
    assert_int_equal(tt_h1h2_response_body(x, "x", 1), -EINVAL);
    assert_int_equal(tt_h1h2_response_end(x), -EINVAL);
    assert_int_equal(tt_h1h2_resume(x), -EINVAL);
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 199, NULL, 0, false), -EINVAL);
    assert_int_equal(tt_h1h2_respond(x, 101, NULL, 0, false), -EINVAL);
    assert_int_equal(tt_h1h2_respond(x, 600, NULL, 0, false), -EINVAL);
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 3, false), -EINVAL);
    {
        /* A head past its bound (128 KiB as written): nothing is written. */
        static char big[140 * 1024];
        struct tt_h2_header f = {"x-big", 5, big, sizeof(big)};

        memset(big, 'v', sizeof(big));
        assert_int_equal(tt_h1h2_respond(x, 200, &f, 1, false), -ENOMEM);
        assert_false(tt_h1h2_responded(x));
    }
    assert_int_equal(tt_h1h2_response_body(x, "x", 1), -EINVAL); /* no head */
    assert_int_equal(tt_h1h2_response_end(x), -EINVAL);
    assert_int_equal(r.app_len, 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), -EINVAL); /* twice */
    assert_int_equal(tt_h1h2_response_body(x, NULL, 1), -EINVAL);
    assert_int_equal(tt_h1h2_response_body(x, "abcdef", 6), -EINVAL); /* past the length */
    assert_int_equal(tt_h1h2_response_body(x, "abcde", 5), 0);
    assert_int_equal(tt_h1h2_response_body(x, "f", 1), -EINVAL);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_int_equal(tt_h1h2_response_end(x), -EINVAL); /* complete */
    assert_int_equal(tt_h1h2_response_body(x, "x", 1), -EINVAL);
    assert_int_equal(tt_h1h2_from_app(x, NULL, 1), -EINVAL);
    tt_h1h2_free(x);
    tt_h1h2_free(NULL);
}

/* A body shorter than the stream's Content-Length: only the close tells the app. */
static void test_h1h2_short_body(void **state)
{
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
                     0);
    assert_int_equal(tt_h1h2_respond(x, 200, len5, 3, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "hel", 3), 0);
    assert_int_equal(tt_h1h2_response_end(x), 0);
    assert_true(tt_h1h2_done(x));
    assert_int_equal(r.requests, 1);
    tt_h1h2_free(x);
}

/* A response cut short: a chunked one gets no last chunk and a FIN shows the cut, as for
 * one short of its Content-Length or one already whole; the pipelined request behind it
 * is never served and later bytes are dropped. A close-delimited one needs a reset. */
static void test_h1h2_cut(void **state)
{
    static const struct tt_h2_header len10[] = {F(":status", "200"), F("content-length", "10")};
    struct rec r;
    struct tt_h1h2 *x = make(&r);

    (void)state;
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"),
                     0);
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "hel", 3), 0);
    assert_true(tt_h1h2_cut(x));
    assert_string_equal(r.app, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n");
    assert_true(tt_h1h2_done(x));
    assert_false(tt_h1h2_busy(x));
    assert_int_equal(tt_h1h2_response_body(x, "lo", 2), -EINVAL);
    assert_int_equal(tt_h1h2_response_end(x), -EINVAL);
    assert_int_equal(feed(x, "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(r.requests, 1);
    tt_h1h2_free(x);

    x = make(&r); /* short of its Content-Length */
    assert_int_equal(feed(x, "GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, len10, 2, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "hel", 3), 0);
    assert_true(tt_h1h2_cut(x));
    tt_h1h2_free(x);

    x = make(&r); /* HTTP/1.0, no length: delimited by the close */
    assert_int_equal(feed(x, "GET / HTTP/1.0\r\n\r\n"), 0);
    assert_int_equal(tt_h1h2_respond(x, 200, NULL, 0, false), 0);
    assert_int_equal(tt_h1h2_response_body(x, "hel", 3), 0);
    assert_false(tt_h1h2_cut(x));
    assert_true(tt_h1h2_done(x));
    tt_h1h2_free(x);
}

/* Whatever the app sends, in whatever pieces, nothing breaks: every result is 0 or an
 * error, and the bytes held stay bounded. */
static void test_h1h2_garbage(void **state)
{
    static const char *const inputs[] = {
        "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n Folded: x\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    };
    (void)state;
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        for (size_t step = 1; step <= 7; step += 3) {
            struct rec r;
            struct tt_h1h2 *x = make(&r);
            const char *s = inputs[i];
            size_t len = strlen(s);
            int k = 0;

            for (size_t off = 0; off < len && k == 0; off += step)
                k = tt_h1h2_from_app(x, s + off, off + step <= len ? step : len - off);
            assert_true(k == 0 || k == TT_E_HTTP);
            if (k == TT_E_HTTP)
                assert_true(tt_h1h2_done(x) && r.app_len > 0);
            (void)tt_h1h2_app_eof(x);
            tt_h1h2_free(x);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h1h2_get),
        cmocka_unit_test(test_h1h2_authority_and_fields),
        cmocka_unit_test(test_h1h2_chunked_response),
        cmocka_unit_test(test_h1h2_http10_close),
        cmocka_unit_test(test_h1h2_http10_keep_alive),
        cmocka_unit_test(test_h1h2_pipelined),
        cmocka_unit_test(test_h1h2_chunked_upload),
        cmocka_unit_test(test_h1h2_expect_continue),
        cmocka_unit_test(test_h1h2_wait_holds_body),
        cmocka_unit_test(test_h1h2_rewind),
        cmocka_unit_test(test_h1h2_retain_bound),
        cmocka_unit_test(test_h1h2_upgrade_take_raw),
        cmocka_unit_test(test_h1h2_take_raw_inside),
        cmocka_unit_test(test_h1h2_take_raw_between),
        cmocka_unit_test(test_h1h2_refused),
        cmocka_unit_test(test_h1h2_answer),
        cmocka_unit_test(test_h1h2_answer_head),
        cmocka_unit_test(test_h1h2_answer_inside),
        cmocka_unit_test(test_h1h2_hold_bound),
        cmocka_unit_test(test_h1h2_bodiless),
        cmocka_unit_test(test_h1h2_app_eof),
        cmocka_unit_test(test_h1h2_response_before_request),
        cmocka_unit_test(test_h1h2_callback_errors),
        cmocka_unit_test(test_h1h2_einval),
        cmocka_unit_test(test_h1h2_short_body),
        cmocka_unit_test(test_h1h2_cut),
        cmocka_unit_test(test_h1h2_garbage),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
