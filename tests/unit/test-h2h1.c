/* Unit tests for http/h2h1.c: an HTTP/2 request's fields written as an HTTP/1.1 request
 * (Host from :authority, cookie crumbs joined, connection-specific fields, te and expect
 * left out, chunked bodies of unknown length, Content-Length: 0 for an empty POST), and
 * the server's response turned back into a status, HTTP/2 fields and a de-chunked body
 * (Content-Length, chunked, close-delimited, bodiless HEAD and 204, interim 100 dropped,
 * fields the Connection field names dropped), fed whole and one byte at a time; and the
 * refusals: no :path, CONNECT, a response cut short, none at all, bytes after it. And
 * tt_h2h1_plain: which heads it lets skip the gate, and, over thousands of generated
 * heads, that the gate passes every one it accepts on unchanged but for the framing
 * fields' spelling. */
#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "core/errors.h"
#include "http/gate.h"
#include "http/h2h1.h"

/* What the translator produced, as text. */
struct rec {
    char server[8192]; /* bytes towards the server */
    size_t server_len;
    char events[8192]; /* respond/body/end, one per line */
    size_t events_len;
};

static void put(char *buf, size_t *len, size_t cap, const char *data, size_t n)
{
    assert_true(*len + n < cap);
    memcpy(buf + *len, data, n);
    *len += n;
    buf[*len] = '\0';
}

static int to_server(void *ud, const char *data, size_t len)
{
    struct rec *r = ud;

    put(r->server, &r->server_len, sizeof(r->server), data, len);
    return 0;
}

static int respond(void *ud, int status, const struct tt_h2_header *fields, size_t n, bool end)
{
    struct rec *r = ud;
    char line[1024];
    int k = snprintf(line, sizeof(line), "respond %d end=%d", status, end);

    for (size_t i = 0; i < n; i++)
        k += snprintf(line + k, sizeof(line) - (size_t)k, " %.*s=%.*s", (int)fields[i].name_len,
                      fields[i].name, (int)fields[i].value_len, fields[i].value);
    k += snprintf(line + k, sizeof(line) - (size_t)k, "\n");
    put(r->events, &r->events_len, sizeof(r->events), line, (size_t)k);
    return 0;
}

static int body(void *ud, const char *data, size_t len)
{
    struct rec *r = ud;

    put(r->events, &r->events_len, sizeof(r->events), "body ", 5);
    put(r->events, &r->events_len, sizeof(r->events), data, len);
    put(r->events, &r->events_len, sizeof(r->events), "\n", 1);
    return 0;
}

static int end(void *ud)
{
    struct rec *r = ud;

    put(r->events, &r->events_len, sizeof(r->events), "end\n", 4);
    return 0;
}

static struct tt_h2h1 *make(struct rec *r)
{
    struct tt_h2h1_io io = {r, to_server, respond, body, end};

    memset(r, 0, sizeof(*r));
    struct tt_h2h1 *x = tt_h2h1_new(&io);
    assert_non_null(x);
    return x;
}

#define F(n, v)                                                                                    \
    {                                                                                              \
        n, sizeof(n) - 1, v, sizeof(v) - 1                                                         \
    }

/* Feeds a response whole or one byte at a time; returns the last result. */
static int feed(struct tt_h2h1 *x, const char *resp, bool bytewise)
{
    size_t len = strlen(resp);
    int r = 0;

    if (!bytewise)
        return tt_h2h1_from_server(x, resp, len);
    for (size_t i = 0; i < len && r == 0; i++)
        r = tt_h2h1_from_server(x, resp + i, 1);
    return r;
}

/* A GET: Host from :authority, crumbs joined, connection-specific fields and te left out;
 * the response's fields lower-cased, Connection and what it names left out. */
static void test_h2h1_get(void **state)
{
    static const struct tt_h2_header req[] = {
        F(":method", "GET"),      F(":scheme", "https"),       F(":authority", "api:8080"),
        F(":path", "/a/b?c=d"),   F("cookie", "a=1"),          F("te", "trailers"),
        F("x-trace", "t1"),       F("cookie", "b=2"),          F("host", "evil"),
        F("connection", "close"), F("expect", "100-continue"),
    };
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct rec r;
        struct tt_h2h1 *x = make(&r);

        assert_int_equal(tt_h2h1_request(x, req, sizeof(req) / sizeof(req[0]), false), 0);
        assert_string_equal(r.server, "GET /a/b?c=d HTTP/1.1\r\nhost: api:8080\r\n"
                                      "x-trace: t1\r\ncookie: a=1; b=2\r\n\r\n");
        assert_false(tt_h2h1_responded(x));
        assert_int_equal(feed(x,
                              "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, X-Hop\r\n"
                              "X-Hop: 1\r\nX-App:  v \r\nKeep-Alive: timeout=5\r\n\r\nhello",
                              bytewise),
                         0);
        assert_true(tt_h2h1_responded(x));
        assert_true(tt_h2h1_response_done(x));
        assert_false(tt_h2h1_reusable(x)); /* the server said Connection: close */
        const char *want = "respond 200 end=0 content-length=5 x-app=v\nbody hello\nend\n";
        if (bytewise)
            want = "respond 200 end=0 content-length=5 x-app=v\nbody h\nbody e\nbody l\nbody l\n"
                   "body o\nend\n";
        assert_string_equal(r.events, want);
        /* Nothing may follow the response. */
        assert_int_equal(tt_h2h1_from_server(x, "H", 1), TT_E_HTTP);
        assert_int_equal(tt_h2h1_server_eof(x), 0);
        tt_h2h1_free(x);
    }
}

/* A body of unknown length is chunked towards the server; a chunked response comes back
 * de-chunked, without its framing fields. */
static void test_h2h1_chunked_both_ways(void **state)
{
    static const struct tt_h2_header req[] = {
        F(":method", "POST"),
        F(":path", "/up"),
        F(":authority", "a"),
        F("transfer-encoding", "chunked"),
    };
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct rec r;
        struct tt_h2h1 *x = make(&r);

        assert_int_equal(tt_h2h1_request(x, req, 4, true), 0);
        assert_int_equal(tt_h2h1_request_body(x, "hello", 5), 0);
        assert_int_equal(tt_h2h1_request_body(x, "", 0), 0); /* nothing: no empty chunk */
        assert_int_equal(tt_h2h1_request_body(x, "0123456789abcdefX", 17), 0);
        assert_int_equal(tt_h2h1_request_end(x), 0);
        assert_string_equal(r.server,
                            "POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n"
                            "\r\n5\r\nhello\r\n11\r\n"
                            "0123456789abcdefX\r\n0\r\n\r\n");
        assert_int_equal(feed(x,
                              "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
                              "\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nT: x\r\n\r\n",
                              bytewise),
                         0);
        assert_true(strncmp(r.events, "respond 201 end=0\n", 18) == 0);
        assert_non_null(strstr(r.events, "end\n"));
        assert_null(strstr(r.events, "T=")); /* trailers are not passed on */
        tt_h2h1_free(x);
    }
    /* Both framings at once is a broken response: refused, nothing passed on. */
    struct rec r;
    struct tt_h2h1 *x = make(&r);
    assert_int_equal(tt_h2h1_request(x, req, 4, false), 0);
    assert_int_equal(feed(x,
                          "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n"
                          "\r\n3\r\nabc\r\n0\r\n\r\n",
                          false),
                     TT_E_HTTP);
    assert_false(tt_h2h1_responded(x));
    tt_h2h1_free(x);
}

/* A body of known length goes as it is; an empty POST says Content-Length: 0. */
static void test_h2h1_lengths(void **state)
{
    static const struct tt_h2_header sized[] = {
        F(":method", "PUT"),
        F(":path", "/x"),
        F(":authority", "a"),
        F("content-length", "3"),
    };
    static const struct tt_h2_header empty[] = {
        F(":method", "POST"),
        F(":path", "/x"),
        F(":authority", "a"),
    };
    static const struct tt_h2_header get[] = {F(":method", "GET"), F(":path", "/")};
    struct rec r;
    struct tt_h2h1 *x = make(&r);

    (void)state;
    assert_int_equal(tt_h2h1_request(x, sized, 4, true), 0);
    assert_int_equal(tt_h2h1_request_body(x, "abc", 3), 0);
    assert_int_equal(tt_h2h1_request_end(x), 0);
    assert_string_equal(r.server, "PUT /x HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n"
                                  "\r\nabc");
    tt_h2h1_free(x);

    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, empty, 3, false), 0);
    assert_string_equal(r.server, "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n"
                                  "\r\n");
    tt_h2h1_free(x);

    /* No :authority: no Host is made up (the gate refuses an HTTP/1.1 request without
     * one with 400). */
    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, get, 2, false), 0);
    assert_string_equal(r.server, "GET / HTTP/1.1\r\n\r\n");
    tt_h2h1_free(x);
}

/* HEAD and 204 answers end with their head; an interim 100 is not passed on. */
static void test_h2h1_bodiless_and_interim(void **state)
{
    static const struct tt_h2_header head[] = {F(":method", "HEAD"), F(":path", "/"),
                                               F(":authority", "a")};
    static const struct tt_h2_header get[] = {F(":method", "GET"), F(":path", "/"),
                                              F(":authority", "a")};
    struct rec r;
    struct tt_h2h1 *x = make(&r);

    (void)state;
    assert_int_equal(tt_h2h1_request(x, head, 3, false), 0);
    assert_int_equal(feed(x, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false), 0);
    assert_string_equal(r.events, "respond 200 end=1 content-length=10\n");
    assert_true(tt_h2h1_response_done(x));
    tt_h2h1_free(x);

    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, get, 3, false), 0);
    assert_int_equal(feed(x, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", true),
                     0);
    assert_string_equal(r.events, "respond 204 end=1\n");
    tt_h2h1_free(x);
}

/* A body delimited by the close ends at the server's EOF; cut short, or no response at
 * all, is an error. */
static void test_h2h1_close_delimited_and_cut(void **state)
{
    static const struct tt_h2_header get[] = {F(":method", "GET"), F(":path", "/"),
                                              F(":authority", "a")};
    struct rec r;
    struct tt_h2h1 *x = make(&r);

    (void)state;
    assert_int_equal(tt_h2h1_request(x, get, 3, false), 0);
    assert_int_equal(feed(x, "HTTP/1.0 200 OK\r\n\r\nuntil close", false), 0);
    assert_false(tt_h2h1_response_done(x));
    assert_int_equal(tt_h2h1_server_eof(x), 0);
    assert_string_equal(r.events, "respond 200 end=0\nbody until close\nend\n");
    assert_false(tt_h2h1_reusable(x)); /* delimited by the close */
    tt_h2h1_free(x);

    /* A keep-alive response to a request written whole leaves the connection reusable;
     * not before the response is complete, nor while the request's body is still owed. */
    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, get, 3, false), 0);
    assert_int_equal(feed(x, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", false), 0);
    assert_false(tt_h2h1_reusable(x));
    assert_int_equal(feed(x, "c", false), 0);
    assert_true(tt_h2h1_reusable(x));
    tt_h2h1_free(x);
    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, get, 3, true), 0);
    assert_int_equal(feed(x, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false), 0);
    assert_false(tt_h2h1_reusable(x));
    assert_int_equal(tt_h2h1_request_end(x), 0);
    assert_true(tt_h2h1_reusable(x));
    tt_h2h1_free(x);

    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, get, 3, false), 0);
    assert_int_equal(feed(x, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false), 0);
    assert_int_equal(tt_h2h1_server_eof(x), TT_E_HTTP);
    assert_false(tt_h2h1_response_done(x));
    tt_h2h1_free(x);

    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, get, 3, false), 0);
    assert_int_equal(tt_h2h1_server_eof(x), TT_E_HTTP);
    assert_false(tt_h2h1_responded(x));
    tt_h2h1_free(x);

    x = make(&r);
    assert_int_equal(tt_h2h1_request(x, get, 3, false), 0);
    assert_true(feed(x, "SSH-2.0-OpenSSH\r\n", false) < 0);
    assert_false(tt_h2h1_responded(x));
    tt_h2h1_free(x);
}

/* What is not a request this serves is refused before anything goes to the server. */
static void test_h2h1_refused_requests(void **state)
{
    static const struct tt_h2_header connect[] = {F(":method", "CONNECT"), F(":authority", "a:1"),
                                                  F(":path", "/")};
    static const struct tt_h2_header nopath[] = {F(":method", "GET"), F(":authority", "a")};
    struct rec r;
    struct tt_h2h1 *x = make(&r);

    (void)state;
    assert_int_equal(tt_h2h1_request(x, connect, 3, true), TT_E_HTTP);
    assert_int_equal(tt_h2h1_request(x, nopath, 2, false), TT_E_HTTP);
    assert_int_equal(r.server_len, 0);
    tt_h2h1_free(x);
    tt_h2h1_free(NULL);
}

/* ---- tt_h2h1_plain ---- */

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Heads that skip the gate, and heads left to it, each for the reason its name says. */
static void test_h2h1_plain_cases(void **state)
{
    static const struct tt_h2_header get[] = {F(":method", "GET"),         F(":scheme", "https"),
                                              F(":authority", "api:8080"), F(":path", "/a/b-c_d~e"),
                                              F("accept", "*/*"),          F("cookie", "a=1"),
                                              F("x-v", "a b\tc")};
    static const struct tt_h2_header query[] = {F(":method", "POST"), F(":authority", "[::1]:80"),
                                                F(":path", "/x?q=a%20b&r=/?s"),
                                                F("content-length", "12")};
    static const struct tt_h2_header root[] = {F(":method", "DELETE"), F(":authority", "a"),
                                               F(":path", "/")};
    (void)state;
    assert_true(tt_h2h1_plain(get, COUNT(get)));
    assert_true(tt_h2h1_plain(query, COUNT(query)));
    assert_true(tt_h2h1_plain(root, COUNT(root)));

    /* Each: the GET above with one field changed. */
    static const struct {
        const char *name, *value;
    } left[] = {
        {":path", "/a/../b"}, /* a dot segment the gate would remove */
        {":path", "/a/./b"},
        {":path", "/a/.."},
        {":path", "/%61"}, /* an encoding the gate would decode */
        {":path", "/a b"}, /* not a target at all */
        {":path", "/a\"b"},
        {":path", "/a#f"},
        {":path", "/a?"}, /* an empty query */
        {":path", "/a?b c"},
        {":path", "*"},
        {":path", "http://x/a"}, /* absolute-form */
        {":path", ""},
        {":path", "/\xc3\xa9"},
        {":method", "FOO"}, /* a method http-parser does not know */
        {":method", "get"},
        {":method", "CONNECT"},
        {":authority", ""},
        {":authority", "u@api"},
        {":authority", "a b"},
        {":authority", "api/x"},
        {"x-v", " lead"}, /* surrounding whitespace the gate would trim */
        {"x-v", "trail\t"},
        {"x-v", "obs\x80text"},
        {"x-v", "ctl\x01"},
        {"cookie", "a=1 "},
        {"X-Up", "v"}, /* a name nghttp2 would not pass */
        {"x sp", "v"},
        {"content-length", "1x"},
        {"content-length", ""},
        {"content-length", "1234567890123456789"},
        {":protocol", "websocket"}, /* another pseudo-field */
    };
    for (size_t i = 0; i < COUNT(left); i++) {
        struct tt_h2_header h[COUNT(get) + 1];
        size_t n = COUNT(get);
        bool replaced = false;

        memcpy(h, get, sizeof(get));
        for (size_t k = 0; k < n; k++) {
            if (strcmp(h[k].name, left[i].name) == 0) {
                h[k].value = left[i].value;
                h[k].value_len = strlen(left[i].value);
                replaced = true;
            }
        }
        if (!replaced)
            h[n++] = (struct tt_h2_header){left[i].name, strlen(left[i].name), left[i].value,
                                           strlen(left[i].value)};
        if (tt_h2h1_plain(h, n))
            fail_msg("%s: %s was let past the gate", left[i].name, left[i].value);
    }

    /* Two Content-Lengths; no :authority; too many fields. */
    static const struct tt_h2_header two_cl[] = {F(":method", "PUT"), F(":authority", "a"),
                                                 F(":path", "/"), F("content-length", "1"),
                                                 F("content-length", "1")};
    static const struct tt_h2_header no_authority[] = {F(":method", "GET"), F(":path", "/"),
                                                       F("host", "a")};
    struct tt_h2_header many[80];
    memcpy(many, root, sizeof(root));
    for (size_t i = COUNT(root); i < COUNT(many); i++)
        many[i] = (struct tt_h2_header)F("x-f", "v");
    /* A NUL inside the method (nghttp2 refuses one; checked here all the same). */
    static const struct tt_h2_header nul_method[] = {
        {":method", 7, "GET\0x", 5}, {":authority", 10, "a", 1}, {":path", 5, "/", 1}};
    assert_false(tt_h2h1_plain(nul_method, COUNT(nul_method)));
    assert_false(tt_h2h1_plain(two_cl, COUNT(two_cl)));
    assert_false(tt_h2h1_plain(no_authority, COUNT(no_authority)));
    assert_false(tt_h2h1_plain(many, COUNT(many)));
    assert_true(tt_h2h1_plain(many, 60));
}

/* What the gate passed on towards the workload, and whether it answered anything itself. */
struct gate_rec {
    char up[8192];
    size_t up_len;
    bool answered;
};

static int gate_up(void *ud, const char *data, size_t len)
{
    struct gate_rec *g = ud;

    put(g->up, &g->up_len, sizeof(g->up), data, len);
    return 0;
}

static int gate_client(void *ud, const char *data, size_t len)
{
    (void)data, (void)len;
    ((struct gate_rec *)ud)->answered = true;
    return 0;
}

static int cmp_line(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A request head with its field names lower-cased and its field lines sorted, in place:
 * the request line first. Returns the number of lines. */
static size_t canonical_head(char *head, char **lines, size_t max)
{
    size_t n = 0;
    char *end = strstr(head, "\r\n\r\n");

    assert_non_null(end);
    end[2] = '\0';
    for (char *p = head; *p != '\0' && n < max;) {
        char *eol = strstr(p, "\r\n");
        *eol = '\0';
        lines[n++] = p;
        for (char *c = p; n > 1 && *c != ':' && *c != '\0'; c++)
            *c = (char)tolower((unsigned char)*c);
        p = eol + 2;
    }
    qsort(lines + 1, n - 1, sizeof(*lines), cmp_line);
    return n;
}

/* Characters the generated heads are made of: plain ones and every kind the check must
 * refuse (encodings, dots, spaces, tabs, quotes, controls, obs-text, separators). */
static const char gen_chars[] = "aZ09-._~!$&'()*+,;=:@/?%#. \t\"\\<>{}|^`[]\x01\x7f\x80\xff";

static char *gen_string(char *buf, size_t cap, const char *prefix, size_t max_len)
{
    size_t len = strlen(prefix), n = (size_t)rand() % (max_len + 1);

    memcpy(buf, prefix, len);
    for (size_t i = 0; i < n && len + 1 < cap; i++) {
        /* Mostly letters and slashes, so that many heads come out plain. */
        int pick = rand() % 40;
        buf[len++] = pick < 24   ? "abcxyz"[rand() % 6]
                     : pick < 32 ? '/'
                     : pick < 36 ? '.'
                                 : gen_chars[(size_t)rand() % (sizeof(gen_chars) - 1)];
    }
    buf[len] = '\0';
    return buf;
}

/* Thousands of generated heads: each one tt_h2h1_plain accepts is written by the
 * translator and read by the gate (no policy, as for a request stream), which must pass it
 * on with the same request line and the same fields (names compared without case: the
 * gate spells its framing fields "Content-Length", "Transfer-Encoding") and answer nothing
 * itself. Plain and non-plain heads must both come up often enough for this to mean
 * something. */
static void test_h2h1_plain_matches_gate(void **state)
{
    static const char *const methods[] = {"GET",     "HEAD",  "POST", "PUT", "DELETE",
                                          "OPTIONS", "PATCH", "FOO",  "get"};
    static const char *const authorities[] = {"api", "api:8080", "[::1]:80", "10.0.0.1:9",
                                              "a b", "",         "u@h",      "x/y"};
    static const char *const names[] = {"x-a",        "accept", "content-length",
                                        "cookie",     "host",   "te",
                                        "user-agent", "X-Up",   "content-type"};
    size_t plain = 0, left = 0;

    (void)state;
    srand(20261207);
    for (int round = 0; round < 20000; round++) {
        char path[64], values[6][32];
        struct tt_h2_header h[10];
        size_t n = 0;
        const char *m = methods[rand() % (int)COUNT(methods)];
        const char *a = authorities[rand() % (int)COUNT(authorities)];
        bool body = rand() % 3 == 0;

        h[n++] = (struct tt_h2_header){":method", 7, m, strlen(m)};
        h[n++] = (struct tt_h2_header){":scheme", 7, "https", 5};
        h[n++] = (struct tt_h2_header){":authority", 10, a, strlen(a)};
        gen_string(path, sizeof(path), rand() % 8 == 0 ? "" : "/", 20);
        h[n++] = (struct tt_h2_header){":path", 5, path, strlen(path)};
        for (int k = rand() % 6; k > 0; k--) {
            const char *name = names[rand() % (int)COUNT(names)];
            char *v = values[n - 4];
            if (strcmp(name, "content-length") == 0)
                snprintf(v, sizeof(values[0]), "%d", rand() % 1000);
            else
                gen_string(v, sizeof(values[0]), "", 12);
            h[n++] = (struct tt_h2_header){name, strlen(name), v, strlen(v)};
        }
        if (!tt_h2h1_plain(h, n)) {
            left++;
            continue;
        }
        plain++;

        struct rec r;
        struct tt_h2h1 *x = make(&r);
        assert_int_equal(tt_h2h1_request(x, h, n, body), 0);
        tt_h2h1_free(x);

        struct gate_rec gr = {0};
        struct tt_gate_config cfg = {.caller = "spiffe://t/ns/a/sa/web",
                                     .self = "spiffe://t/ns/a/sa/api",
                                     .port = 80,
                                     .enforce = true,
                                     .pipeline_max = 2,
                                     .caller_reads_responses = true};
        struct tt_gate_io io = {.ud = &gr, .to_upstream = gate_up, .to_client = gate_client};
        struct tt_gate *g = tt_gate_new(&cfg, &io);
        assert_non_null(g);
        assert_int_equal(tt_gate_from_client(g, r.server, r.server_len, 1), 0);
        if (gr.answered || gr.up_len == 0)
            fail_msg("the gate refused a plain head:\n%s", r.server);
        tt_gate_free(g, 2);

        char *want[16], *got[16];
        size_t nw = canonical_head(r.server, want, COUNT(want));
        size_t ng = canonical_head(gr.up, got, COUNT(got));
        assert_int_equal(nw, ng);
        for (size_t i = 0; i < nw; i++)
            assert_string_equal(want[i], got[i]);
    }
    print_message("plain %zu, left to the gate %zu\n", plain, left);
    assert_true(plain > 2000);
    assert_true(left > 2000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h2h1_get),
        cmocka_unit_test(test_h2h1_chunked_both_ways),
        cmocka_unit_test(test_h2h1_lengths),
        cmocka_unit_test(test_h2h1_bodiless_and_interim),
        cmocka_unit_test(test_h2h1_close_delimited_and_cut),
        cmocka_unit_test(test_h2h1_refused_requests),
        cmocka_unit_test(test_h2h1_plain_cases),
        cmocka_unit_test(test_h2h1_plain_matches_gate),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
