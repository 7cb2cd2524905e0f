/* Unit tests for http/h1.c: each request smuggling shape refused with its reason (and
 * first, what Debian's lenient http-parser does with them on its own), keep-alive and
 * pipelining, chunked uploads, 100-continue, HTTP/1.0, upgrades, path normalization, the
 * bounds, pausing, and the error writer. Every request is also fed one byte at a time and
 * split at every boundary: the events must be the same. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <http_parser.h>

#include "core/errors.h"
#include "http/detect.h"
#include "http/h1.h"

/* Events rendered as text, so that two ways of feeding compare with one strcmp. Body
 * pieces are merged: how a body is split is not an event. */
struct rec {
    char log[65536];
    size_t len;
    bool in_body;
    int pause_on; /* 1: pause after every head */
};

static void logf_(struct rec *rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(struct rec *rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    int n = vsnprintf(rc->log + rc->len, sizeof(rc->log) - rc->len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof(rc->log) - rc->len);
    rc->len += (size_t)n;
}

static int rec_head(void *ud, const struct tt_h1_head *h)
{
    struct rec *rc = ud;

    logf_(rc,
          "HEAD %s %s path=%s query=%s auth=%s 1.%d ka=%d up=%d conn=%d exp=%d chunked=%d cl=%lld "
          "host=%s\n",
          h->method, h->target, h->path ? h->path : "-", h->query ? h->query : "-",
          h->authority ? h->authority : "-", h->minor, h->keep_alive, h->upgrade, h->connect,
          h->expect_continue, h->chunked, (long long)h->content_length, h->host ? h->host : "-");
    for (size_t i = 0; i < h->n_headers; i++) {
        assert_int_equal(strlen(h->headers[i].name), h->headers[i].name_len);
        assert_int_equal(strlen(h->headers[i].value), h->headers[i].value_len);
        logf_(rc, " [%s]=[%s]\n", h->headers[i].name, h->headers[i].value);
    }
    rc->in_body = false;
    return rc->pause_on ? TT_H1_PAUSE : 0;
}

static int rec_body(void *ud, const char *data, size_t len)
{
    struct rec *rc = ud;

    if (!rc->in_body)
        logf_(rc, "BODY ");
    rc->in_body = true;
    logf_(rc, "%.*s", (int)len, data);
    return 0;
}

static int rec_end(void *ud, const struct tt_h1_header *tr, size_t n)
{
    struct rec *rc = ud;

    if (rc->in_body)
        logf_(rc, "\n");
    rc->in_body = false;
    for (size_t i = 0; i < n; i++)
        logf_(rc, " trailer [%s]=[%s]\n", tr[i].name, tr[i].value);
    logf_(rc, "END\n");
    return 0;
}

static const struct tt_h1_callbacks rec_cb = {rec_head, rec_body, rec_end};

/* Feeds s in pieces of at most `step` bytes (0: all at once), re-feeding what a paused
 * callback left; appends "ERROR <reason>" or "DONE"/"UPGRADED" to the log. */
static void run(struct rec *rc, const char *s, size_t len, size_t step, const struct tt_h1_opts *o)
{
    struct tt_h1 *r = tt_h1_new(o, &rec_cb, rc);
    size_t off = 0;

    assert_non_null(r);
    memset(rc->log, 0, sizeof(rc->log));
    rc->len = 0;
    rc->in_body = false;
    while (off < len) {
        size_t n = step == 0 || step > len - off ? len - off : step;
        long got = tt_h1_feed(r, s + off, n);

        if (got < 0) {
            assert_int_equal(got, TT_E_HTTP);
            logf_(rc, "ERROR %s %d\n", tt_h1_reason_name(tt_h1_reason(r)), tt_h1_status(r));
            /* A failed reader stays failed. */
            assert_int_equal(tt_h1_feed(r, "GET", 3), TT_E_HTTP);
            tt_h1_free(r);
            return;
        }
        off += (size_t)got;
        if ((size_t)got < n && tt_h1_done(r))
            break;
    }
    if (tt_h1_upgraded(r))
        logf_(rc, "UPGRADED at %zu\n", off);
    else if (tt_h1_done(r))
        logf_(rc, "DONE at %zu\n", off);
    else if (tt_h1_finish(r) != 0)
        logf_(rc, "CUT %s\n", tt_h1_reason_name(tt_h1_reason(r)));
    tt_h1_free(r);
}

/* A body is streamed as it arrives, so a framing error behind a body piece may come
 * after that piece was delivered or, fed at once, before it: the caller drops a request
 * that fails either way. Logs compare without an unfinished body before an error. */
static void canon(char *log)
{
    char *err = strstr(log, "ERROR "), *line;

    if (err == NULL || err == log || err[-1] == '\n')
        return;
    for (line = err; line > log && line[-1] != '\n'; line--)
        ;
    if (strncmp(line, "BODY ", 5) == 0)
        memmove(line, err, strlen(err) + 1);
}

/* Runs s whole, then one byte at a time, then split in two at every boundary, and
 * returns the log of the whole run after checking that every other run logged the same. */
static const char *events(const char *s)
{
    static struct rec whole, other;
    size_t len = strlen(s);

    run(&whole, s, len, 0, NULL);
    run(&other, s, len, 1, NULL);
    canon(whole.log);
    canon(other.log);
    if (strcmp(whole.log, other.log) != 0)
        fail_msg("byte at a time differs:\n%s---\n%s", whole.log, other.log);
    for (size_t cut = 1; cut < len; cut++) {
        struct tt_h1 *r = tt_h1_new(NULL, &rec_cb, &other);
        long a, b = 0;

        memset(other.log, 0, sizeof(other.log));
        other.len = 0;
        other.in_body = false;
        a = tt_h1_feed(r, s, cut);
        if (a >= 0)
            b = tt_h1_feed(r, s + a, len - (size_t)a);
        if (a < 0 || b < 0) {
            logf_(&other, "ERROR %s %d\n", tt_h1_reason_name(tt_h1_reason(r)), tt_h1_status(r));
        } else if (tt_h1_upgraded(r)) {
            logf_(&other, "UPGRADED at %ld\n", a + b);
        } else if (tt_h1_done(r)) {
            logf_(&other, "DONE at %ld\n", a + b);
        } else if (tt_h1_finish(r) != 0) {
            logf_(&other, "CUT %s\n", tt_h1_reason_name(tt_h1_reason(r)));
        }
        tt_h1_free(r);
        canon(other.log);
        if (strcmp(whole.log, other.log) != 0)
            fail_msg("split at %zu differs:\n%s---\n%s", cut, whole.log, other.log);
    }
    return whole.log;
}

/* Asserts that s is refused with `reason` after the events in `before` (a prefix). */
static void refused(const char *s, const char *reason)
{
    const char *log = events(s);
    char want[128];

    snprintf(want, sizeof(want), "ERROR %s ", reason);
    if (strstr(log, want) == NULL)
        fail_msg("expected refusal %s for %s\ngot:\n%s", reason, s, log);
}

/* What Debian's http-parser does by itself: the reasons the reader has its own checks.
 * If a newer build refuses these, the checks stay (they cost little); if this test
 * fails, update the header comment of h1.h. */
static void test_h1_parser_is_lenient(void **state)
{
    static const char *const accepted[] = {
        "GET / HTTP/1.1\nHost: a\n\n",                          /* bare LF */
        "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",                 /* obs-fold */
        "GET / HTTP/1.1\r\nX : a\r\n\r\n",                      /* space before colon */
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" /* junk after chunk data */
        "5\r\nhello!!0\r\n\r\n",
        "GET  / HTTP/1.1\r\n\r\n", /* two spaces */
        "GET / HTTP/2.0\r\n\r\n",  /* a version other than 1.x */
    };
    http_parser_settings st = {0};

    for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
        http_parser p;
        size_t n;

        http_parser_init(&p, HTTP_REQUEST);
        n = http_parser_execute(&p, &st, accepted[i], strlen(accepted[i]));
        if (n != strlen(accepted[i]) || HTTP_PARSER_ERRNO(&p) != HPE_OK)
            fail_msg("http-parser refused %s (%s): it is stricter than h1.h says", accepted[i],
                     http_errno_name(HTTP_PARSER_ERRNO(&p)));
    }
}

static void test_h1_smuggling(void **state)
{
    /* Both framings. */
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
            "\r\n\r\n0\r\n\r\n",
            "content_length_and_transfer_encoding");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3"
            "\r\n\r\n0\r\n\r\n",
            "content_length_and_transfer_encoding");
    /* Two Content-Length fields, equal or not, or one with a list. */
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "duplicate_content_length");
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "duplicate_content_length");
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc", "bad_content_length");
    refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", "bad_content_length");
    /* Transfer-Encoding other than one final chunked. */
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
            "bad_transfer_encoding");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "bad_transfer_encoding");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "bad_transfer_encoding");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding");
    refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "bad_transfer_encoding");
    /* Bare LF: in the request line, a header, the last line; and in chunk framing. */
    refused("GET / HTTP/1.1\nHost: a\r\n\r\n", "bare_lf");
    refused("GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", "bare_lf");
    refused("GET / HTTP/1.1\r\nHost: a\r\n\n", "bare_lf");
    refused("\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "bare_lf");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\n0\r\n\r\n",
            "bad_chunk");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n0\r\n\n",
            "bare_lf");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n0\r\nX: y\n\r\n",
            "bare_lf");
    /* Bare CR. */
    refused("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "bare_cr");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5;x=1\rX\nhello\r\n0\r\n\r\n",
            "bare_cr");
    /* Anything but CRLF after chunk data (http-parser takes any two bytes). */
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello!!0\r\n\r\n",
            "bad_chunk");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\rX0\r\n\r\n",
            "bad_chunk");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "a\r\n0123456789\r\001"
            "0\r\n\r\n",
            "bad_chunk");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "2\r\nabc\r\n0\r\n\r\n",
            "bad_chunk");
    /* Trailers are checked as header fields are. */
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\nX : a\r\n\r\n",
            "bad_trailer");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\nX: a\001\r\n\r\n",
            "bad_trailer");
    /* obs-fold, in the head and in trailers. */
    refused("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "obs_fold");
    refused("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", "obs_fold");
    refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\nX: a\r\n b\r\n\r\n",
            "obs_fold");
    /* Field names that are not tokens, values with control characters. */
    refused("GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 5\r\n\r\nhello", "bad_header_name");
    refused("GET / HTTP/1.1\r\nHost: a\r\nX@y: 1\r\n\r\n", "bad_header_name");
    refused("GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", "bad_header_name");
    refused("GET / HTTP/1.1\r\nHost: a\r\nX: a\001b\r\n\r\n", "bad_header_value");
    refused("GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", "bad_header_value");
    /* Request line spacing, versions, Host. */
    refused("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "bad_request_line");
    refused("GET / HTTP/1.1 \r\nHost: a\r\n\r\n", "bad_request_line");
    refused("GET /\r\n\r\n", "bad_request_line");
    refused("GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", "bad_request_line");
    refused("GET / HTTP/2.0\r\nHost: a\r\n\r\n", "bad_version");
    refused("GET / HTTP/1.2\r\nHost: a\r\n\r\n", "bad_version");
    refused("GET / HTTP/1.1\r\n\r\n", "bad_host");
    refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "bad_host");
    /* Targets. */
    refused("GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target");
    refused("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target");
    refused("GET * HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target");
    refused("GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target");
    refused("GET /%4 HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target");
    refused("GET ftp://a/b HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target");
    refused("GET http://u@a/b HTTP/1.1\r\nHost: a\r\n\r\n", "bad_target");
}

/* A pipelined request behind a smuggling attempt is never reported: the refusal ends the
 * reader before it. */
static void test_h1_smuggled_request_not_seen(void **state)
{
    const char *log = events("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "5\r\nhello!!0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n");

    assert_null(strstr(log, "/admin"));
    assert_non_null(strstr(log, "ERROR bad_chunk 400"));
}

static void test_h1_bounds(void **state)
{
    static struct rec rc;
    struct tt_h1_opts o = {.head_max = 256, .max_headers = 4};
    char big[1024];
    int n;

    /* At the bounds: accepted; one over: refused with 431. */
    n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nHost: a\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n");
    run(&rc, big, (size_t)n, 0, &o);
    assert_non_null(strstr(rc.log, "END\n"));
    n = snprintf(big, sizeof(big),
                 "GET / HTTP/1.1\r\nHost: a\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n");
    run(&rc, big, (size_t)n, 0, &o);
    assert_non_null(strstr(rc.log, "ERROR too_many_headers 431"));
    run(&rc, big, (size_t)n, 1, &o);
    assert_non_null(strstr(rc.log, "ERROR too_many_headers 431"));

    memset(big, 'a', sizeof(big));
    memcpy(big, "GET / HTTP/1.1\r\nHost: a\r\nX: ", 28);
    memcpy(big + 256 - 4, "\r\n\r\n", 4); /* exactly 256 bytes */
    run(&rc, big, 256, 0, &o);
    assert_non_null(strstr(rc.log, "END\n"));
    memcpy(big + 256 - 4, "a\r\n\r\n", 5); /* 257 */
    run(&rc, big, 257, 0, &o);
    assert_non_null(strstr(rc.log, "ERROR header_section_too_large 431"));
    /* A head that never ends is refused once it passes the bound, not buffered. */
    memset(big + 28, 'a', sizeof(big) - 28);
    run(&rc, big, sizeof(big), 7, &o);
    assert_non_null(strstr(rc.log, "ERROR header_section_too_large 431"));

    /* Many chunks are fine however much framing they add up to... */
    {
        char up[2048];
        size_t pos = (size_t)snprintf(up, sizeof(up),
                                      "POST / HTTP/1.1\r\nHost: a\r\n"
                                      "Transfer-Encoding: chunked\r\n\r\n");
        for (int i = 0; i < 200; i++)
            pos += (size_t)snprintf(up + pos, sizeof(up) - pos, "1\r\nx\r\n");
        pos += (size_t)snprintf(up + pos, sizeof(up) - pos, "0\r\n\r\n");
        run(&rc, up, pos, 0, &o);
        assert_non_null(strstr(rc.log, "END\n"));
    }
    /* ...but one framing line counts against the head's bound: an endless extension. */
    n = snprintf(big, sizeof(big),
                 "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked"
                 "\r\n\r\n5;");
    memset(big + n, 'x', sizeof(big) - (size_t)n);
    run(&rc, big, sizeof(big), 0, &o);
    assert_non_null(strstr(rc.log, "ERROR header_section_too_large 431"));

    /* The default: 64 KiB, 100 fields. */
    {
        size_t len = 70 * 1024;
        char *huge = malloc(len);

        assert_non_null(huge);
        memset(huge, 'a', len);
        memcpy(huge, "GET / HTTP/1.1\r\nHost: a\r\nX: ", 28);
        run(&rc, huge, len, 4096, NULL);
        assert_non_null(strstr(rc.log, "ERROR header_section_too_large 431"));
        free(huge);
    }
    {
        char many[4096];
        size_t pos = (size_t)snprintf(many, sizeof(many), "GET / HTTP/1.1\r\nHost: a\r\n");

        for (int i = 0; i < 100; i++)
            pos += (size_t)snprintf(many + pos, sizeof(many) - pos, "X%d: 1\r\n", i);
        pos += (size_t)snprintf(many + pos, sizeof(many) - pos, "\r\n");
        run(&rc, many, pos, 0, NULL);
        assert_non_null(strstr(rc.log, "ERROR too_many_headers 431"));
    }
}

static void test_h1_keepalive_pipelining(void **state)
{
    const char *log = events("GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                             "\r\n" /* an empty line between requests is allowed (RFC 9112 §2.2) */
                             "POST /b?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                             "GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                             "GET /never HTTP/1.1\r\nHost: x\r\n\r\n");

    assert_string_equal(
        log,
        "HEAD GET /a path=/a query=- auth=- 1.1 ka=1 up=0 conn=0 exp=0 chunked=0 cl=-1 host=x\n"
        " [Host]=[x]\n"
        "END\n"
        "HEAD POST /b?q=1 path=/b query=q=1 auth=- 1.1 ka=1 up=0 conn=0 exp=0 chunked=0 cl=5 "
        "host=x\n"
        " [Host]=[x]\n"
        " [Content-Length]=[5]\n"
        "BODY hello\n"
        "END\n"
        "HEAD GET /c path=/c query=- auth=- 1.1 ka=0 up=0 conn=0 exp=0 chunked=0 cl=-1 host=x\n"
        " [Host]=[x]\n"
        " [Connection]=[close]\n"
        "END\n"
        "DONE at 134\n");
}

static void test_h1_chunked_upload(void **state)
{
    const char *log = events("PUT /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n"
                             "Expect: 100-continue\r\n\r\n"
                             "5\r\nhello\r\n"
                             "1;ext=\"v\"\r\n \r\n"
                             "a\r\n0123456789\r\n"
                             "0\r\nChecksum:  abc \r\nX-T: 1\r\n\r\n"
                             "GET /next HTTP/1.1\r\nHost: x\r\n\r\n");

    assert_string_equal(
        log,
        "HEAD PUT /up path=/up query=- auth=- 1.1 ka=1 up=0 conn=0 exp=1 chunked=1 cl=-1 host=x\n"
        " [Host]=[x]\n"
        " [Transfer-Encoding]=[Chunked]\n"
        " [Expect]=[100-continue]\n"
        "BODY hello 0123456789\n"
        " trailer [Checksum]=[abc]\n"
        " trailer [X-T]=[1]\n"
        "END\n"
        "HEAD GET /next path=/next query=- auth=- 1.1 ka=1 up=0 conn=0 exp=0 chunked=0 cl=-1 "
        "host=x\n"
        " [Host]=[x]\n"
        "END\n");
}

static void test_h1_http10(void **state)
{
    const char *log = events("GET /old HTTP/1.0\r\n\r\n");

    assert_string_equal(
        log, "HEAD GET /old path=/old query=- auth=- 1.0 ka=0 up=0 conn=0 exp=0 chunked=0 cl=-1 "
             "host=-\nEND\nDONE at 21\n");
    log = events("POST /k HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
                 "GET /k2 HTTP/1.0\r\n\r\n");
    assert_non_null(strstr(log, "HEAD POST /k path=/k query=- auth=- 1.0 ka=1"));
    assert_non_null(strstr(log, "BODY hi\nEND\nHEAD GET /k2"));
    assert_non_null(strstr(log, "DONE at "));
}

static void test_h1_upgrade_connect(void **state)
{
    const char *log =
        events("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
               "\x81\x05hello");

    assert_non_null(strstr(log, "HEAD GET /ws path=/ws query=- auth=- 1.1 ka=1 up=1 conn=0"));
    assert_non_null(strstr(log, "END\nUPGRADED at 70\n"));
    log = events("CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n\x00\x01");
    assert_non_null(strstr(log, "HEAD CONNECT db.internal:5432 path=- query=- "
                                "auth=db.internal:5432 1.1 ka=1 up=1 conn=1"));
    assert_non_null(strstr(log, "UPGRADED at 61\n"));
    log = events("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_non_null(strstr(log, "HEAD OPTIONS * path=* query=- auth=-"));
}

static void test_h1_paths(void **state)
{
    static const struct {
        const char *target, *path, *query, *auth;
    } cases[] = {
        {"/", "/", "-", "-"},
        {"/a/b/c", "/a/b/c", "-", "-"},
        {"/a/./b/../c", "/a/c", "-", "-"},
        {"/../../etc/passwd", "/etc/passwd", "-", "-"},
        {"/public/..", "/", "-", "-"},
        {"/a/b/.", "/a/b/", "-", "-"},
        {"/%61dmin", "/admin", "-", "-"},
        {"/%2e%2e/admin", "/admin", "-", "-"},
        {"/x/%2E%2E/admin/", "/admin/", "-", "-"},
        {"/a%2fb", "/a%2Fb", "-", "-"},
        {"/a%2F..%2Fb", "/a%2F..%2Fb", "-", "-"},
        {"//a//b", "//a//b", "-", "-"},
        {"/s?x=/../y&z", "/s", "x=/../y&z", "-"},
        {"http://Example.com:8080/p/../q?r", "/q", "r", "Example.com:8080"},
        {"http://example.com", "/", "-", "example.com"},
        {"http://[::1]:80/x", "/x", "-", "[::1]:80"},
    };
    static struct rec rc;
    char req[512], want[512];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", cases[i].target);

        run(&rc, req, (size_t)n, 0, NULL);
        snprintf(want, sizeof(want), "HEAD GET %s path=%s query=%s auth=%s ", cases[i].target,
                 cases[i].path, cases[i].query, cases[i].auth);
        if (strncmp(rc.log, want, strlen(want)) != 0)
            fail_msg("%s: got %s", cases[i].target, rc.log);
    }
}

/* A callback that pauses: feed returns early, the rest fed again goes on; the head stays
 * valid meanwhile. */
static void test_h1_pause(void **state)
{
    static struct rec rc;
    const char *s = "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /q HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t len = strlen(s), off = 0;
    struct tt_h1 *r;
    int rounds = 0;

    memset(&rc, 0, sizeof(rc));
    rc.pause_on = 1;
    r = tt_h1_new(NULL, &rec_cb, &rc);
    while (off < len) {
        long got = tt_h1_feed(r, s + off, len - off);

        assert_true(got >= 0);
        off += (size_t)got;
        rounds++;
        assert_true(rounds < 10);
    }
    assert_int_equal(rounds, 3);
    assert_non_null(strstr(rc.log, "BODY abc\nEND\nHEAD GET /q"));
    assert_int_equal(tt_h1_finish(r), 0);
    tt_h1_free(r);

    /* The same with a chunked body: the head's last byte, left by the pause, is not taken
     * for chunk framing. */
    s = "POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        "GET /q HTTP/1.1\r\nHost: x\r\n\r\n";
    len = strlen(s);
    off = 0;
    rounds = 0;
    memset(&rc, 0, sizeof(rc));
    rc.pause_on = 1;
    r = tt_h1_new(NULL, &rec_cb, &rc);
    while (off < len) {
        long got = tt_h1_feed(r, s + off, len - off);

        assert_true(got >= 0);
        off += (size_t)got;
        assert_true(++rounds < 10);
    }
    assert_int_equal(rounds, 3);
    assert_non_null(strstr(rc.log, "BODY abc\nEND\nHEAD GET /q"));
    assert_int_equal(tt_h1_finish(r), 0);
    tt_h1_free(r);
}

static int fail_head(void *ud, const struct tt_h1_head *h)
{
    return -EIO;
}

static void test_h1_callback_error_and_finish(void **state)
{
    struct tt_h1_callbacks cb = {.on_head = fail_head};
    struct tt_h1 *r = tt_h1_new(NULL, &cb, NULL);
    static struct rec rc;

    assert_int_equal(tt_h1_feed(r, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27), -EIO);
    assert_int_equal(tt_h1_feed(r, "x", 1), -EIO);
    tt_h1_free(r);

    /* EOF in the middle of a head or a body is an error, between requests it is not. */
    run(&rc, "GET / HTTP/1.1\r\nHost", 20, 0, NULL);
    assert_non_null(strstr(rc.log, "CUT malformed"));
    run(&rc, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nabc", 49, 0, NULL);
    assert_non_null(strstr(rc.log, "CUT malformed"));
    r = tt_h1_new(NULL, &rec_cb, &rc);
    assert_int_equal(tt_h1_feed(r, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27), 27);
    assert_int_equal(tt_h1_finish(r), 0);
    tt_h1_free(r);
}

/* Every method detection calls HTTP/1 is one the reader parses. */
static void test_h1_detect_methods_parse(void **state)
{
    static const char *const ms[] = {
        "GET",         "HEAD",       "POST",       "PUT",   "DELETE",   "CONNECT", "OPTIONS",
        "TRACE",       "PATCH",      "COPY",       "LOCK",  "MKCOL",    "MOVE",    "PROPFIND",
        "PROPPATCH",   "SEARCH",     "UNLOCK",     "BIND",  "REBIND",   "UNBIND",  "ACL",
        "REPORT",      "MKACTIVITY", "CHECKOUT",   "MERGE", "M-SEARCH", "NOTIFY",  "SUBSCRIBE",
        "UNSUBSCRIBE", "PURGE",      "MKCALENDAR", "LINK",  "UNLINK",   "SOURCE",
    };
    static struct rec rc;
    char req[128];

    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        bool connect = strcmp(ms[i], "CONNECT") == 0;
        int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: h\r\n\r\n", ms[i],
                         connect ? "h:1" : "/");

        assert_true(tt_detect_method_known(ms[i], strlen(ms[i])));
        assert_int_equal(tt_detect_check((const uint8_t *)req, (size_t)n, TT_DETECT_LIMIT),
                         TT_DETECT_HTTP1);
        run(&rc, req, (size_t)n, 0, NULL);
        if (strncmp(rc.log, "HEAD ", 5) != 0 || strncmp(rc.log + 5, ms[i], strlen(ms[i])) != 0 ||
            rc.log[5 + strlen(ms[i])] != ' ')
            fail_msg("%s: %s", ms[i], rc.log);
    }
}

/* Connection's tokens, case-insensitive, among several Connection fields; a token is
 * not matched by a prefix or a longer name. */
static void test_h1_connection_names(void **state)
{
    const struct tt_h1_header f[] = {
        {"Host", 4, "h", 1},
        {"Connection", 10, "keep-alive, X-Foo", 17},
        {"connection", 10, " ,upgrade\t", 10},
    };

    (void)state;
    assert_true(tt_h1_connection_names(f, 3, "x-foo", 5));
    assert_true(tt_h1_connection_names(f, 3, "Keep-Alive", 10));
    assert_true(tt_h1_connection_names(f, 3, "UPGRADE", 7));
    assert_false(tt_h1_connection_names(f, 3, "x-fo", 4));
    assert_false(tt_h1_connection_names(f, 3, "x-foo-bar", 9));
    assert_false(tt_h1_connection_names(f, 1, "x-foo", 5));
    assert_false(tt_h1_connection_names(f, 0, "host", 4));
}

/* Whether Connection names more than keep-alive: not for none, keep-alive alone (any
 * case, however spaced) or empty tokens; yes for close, upgrade or a field's name. */
static void test_h1_connection_names_others(void **state)
{
    const struct tt_h1_header ka[] = {
        {"Host", 4, "h", 1},
        {"Connection", 10, " Keep-Alive ,, ", 15},
        {"connection", 10, "keep-alive", 10},
    };
    const struct tt_h1_header close[] = {{"Connection", 10, "keep-alive, close", 17}};
    const struct tt_h1_header hop[] = {{"X-Hop", 5, "1", 1}, {"connection", 10, "X-Hop", 5}};
    const struct tt_h1_header other[] = {{"X-Connection", 12, "x-foo", 5}};

    (void)state;
    assert_false(tt_h1_connection_names_others(ka, 0));
    assert_false(tt_h1_connection_names_others(ka, 3));
    assert_true(tt_h1_connection_names_others(close, 1));
    assert_true(tt_h1_connection_names_others(hop, 2));
    assert_false(tt_h1_connection_names_others(other, 1)); /* not a Connection field */
}

static void test_h1_write_error(void **state)
{
    char buf[1024];
    int n = tt_h1_write_error(buf, sizeof(buf), 403, "policy_denied", "no-\"admin\"", true);
    const char *body;

    assert_true(n > 0);
    buf[n] = '\0';
    body = strstr(buf, "\r\n\r\n") + 4;
    assert_true(strncmp(buf, "HTTP/1.1 403 Forbidden\r\n", 24) == 0);
    assert_non_null(strstr(buf, "\r\nx-tether-reason: policy_denied\r\n"));
    assert_non_null(strstr(buf, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(buf, "\r\nContent-Type: application/json\r\n"));
    assert_string_equal(body, "{\"error\": \"policy_denied\", \"rule\": \"no-\\\"admin\\\"\"}\n");
    {
        char cl[64];
        snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n", strlen(body));
        assert_non_null(strstr(buf, cl));
    }
    n = tt_h1_write_error(buf, sizeof(buf), 400, tt_h1_reason_name(TT_H1_R_BARE_LF), NULL, false);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(buf, "Connection: keep-alive\r\n"));
    assert_non_null(strstr(buf, "{\"error\": \"bare_lf\", \"rule\": null}\n"));
    n = tt_h1_write_error(buf, sizeof(buf), 503, "no_upstream", NULL, true);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "HTTP/1.1 503 Service Unavailable\r\n"));
    /* A reason that could inject a header, a bad status, a small buffer. */
    assert_int_equal(tt_h1_write_error(buf, sizeof(buf), 403, "x\r\nSet-Cookie: a", NULL, true),
                     -EINVAL);
    assert_int_equal(tt_h1_write_error(buf, sizeof(buf), 403, "", NULL, true), -EINVAL);
    assert_int_equal(tt_h1_write_error(buf, sizeof(buf), 99, "x", NULL, true), -EINVAL);
    assert_int_equal(tt_h1_write_error(buf, 40, 403, "policy_denied", "r", true), -ENOSPC);
    assert_string_equal(tt_h1_status_text(431), "Request Header Fields Too Large");
    /* A rule name longer than the body's room is cut inside its quotes: still JSON. */
    {
        char rule[3000], big[4096];

        memset(rule, 'r', sizeof(rule) - 1);
        rule[sizeof(rule) - 1] = '\0';
        n = tt_h1_write_error(big, sizeof(big), 403, "policy_denied", rule, true);
        assert_true(n > 0 && (size_t)n < sizeof(big));
        big[n] = '\0';
        assert_non_null(strstr(big, "rrr\"}\n"));
        assert_int_equal(big[n - 1], '\n');
    }
}

/* tt_h1_is_token: one tchar or more; nothing else (an empty string, a space, a colon, a
 * separator, a byte above 0x7f) is one. */
static void test_h1_is_token(void **state)
{
    assert_true(tt_h1_is_token("Content-Type", 12));
    assert_true(tt_h1_is_token("x-a!#$%&'*+.^_`|~9", 18));
    assert_false(tt_h1_is_token("", 0));
    assert_false(tt_h1_is_token("bad name", 8));
    assert_false(tt_h1_is_token("a:b", 3));
    assert_false(tt_h1_is_token("a(b)", 4));
    assert_false(tt_h1_is_token("caf\xc3\xa9", 5));
    assert_true(tt_h1_is_token("ab\0cd", 2)); /* only the n bytes given */
    assert_false(tt_h1_is_token("ab\0cd", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h1_parser_is_lenient),
        cmocka_unit_test(test_h1_smuggling),
        cmocka_unit_test(test_h1_smuggled_request_not_seen),
        cmocka_unit_test(test_h1_bounds),
        cmocka_unit_test(test_h1_keepalive_pipelining),
        cmocka_unit_test(test_h1_chunked_upload),
        cmocka_unit_test(test_h1_http10),
        cmocka_unit_test(test_h1_upgrade_connect),
        cmocka_unit_test(test_h1_paths),
        cmocka_unit_test(test_h1_pause),
        cmocka_unit_test(test_h1_callback_error_and_finish),
        cmocka_unit_test(test_h1_detect_methods_parse),
        cmocka_unit_test(test_h1_connection_names),
        cmocka_unit_test(test_h1_connection_names_others),
        cmocka_unit_test(test_h1_write_error),
        cmocka_unit_test(test_h1_is_token),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
