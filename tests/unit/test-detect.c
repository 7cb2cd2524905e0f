/* Unit tests for http/detect.c: every prefix length of each kind of first bytes gives
 * "more" until the deciding byte and the right answer from there on; near misses are
 * opaque; the byte bound ends the wait. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http/detect.h"

/* Feeds every prefix of data[0..len) and asserts: "more" for lengths below `decide`,
 * `want` for every length from `decide` to len (the answer never changes once given). */
static void prefixes(const char *what, const void *data, size_t len, size_t decide,
                     enum tt_detect_proto want)
{
    for (size_t k = 0; k <= len; k++) {
        enum tt_detect_proto got = tt_detect_check(data, k, TT_DETECT_LIMIT);
        enum tt_detect_proto exp = k < decide ? TT_DETECT_MORE : want;

        if (got != exp)
            fail_msg("%s: %zu of %zu bytes: got %s, expected %s", what, k, len, tt_detect_name(got),
                     tt_detect_name(exp));
    }
}

#define PREFIXES(what, lit, decide, want) prefixes(what, lit, sizeof(lit) - 1, decide, want)

static void test_detect_http1(void **state)
{
    static const char get[] = "GET /index.html?q=1 HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char post10[] = "POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
    static const char bare_lf[] = "DELETE /a HTTP/1.1\nHost: a\n\n";
    static const char connect[] = "CONNECT db.example:5432 HTTP/1.1\r\n\r\n";
    static const char options[] = "OPTIONS * HTTP/1.1\r\n\r\n";
    static const char absolute[] = "GET http://a.example/x HTTP/1.1\r\n\r\n";
    static const char msearch[] = "M-SEARCH * HTTP/1.1\r\n\r\n";

    /* Decided at the byte after "HTTP/1.x": the CR (or a bare LF, for the reader to
     * refuse with 400). */
    PREFIXES("GET", get, strlen("GET /index.html?q=1 HTTP/1.1") + 1, TT_DETECT_HTTP1);
    PREFIXES("POST 1.0", post10, strlen("POST /x HTTP/1.0") + 1, TT_DETECT_HTTP1);
    PREFIXES("bare LF", bare_lf, strlen("DELETE /a HTTP/1.1") + 1, TT_DETECT_HTTP1);
    PREFIXES("CONNECT", connect, strlen("CONNECT db.example:5432 HTTP/1.1") + 1, TT_DETECT_HTTP1);
    PREFIXES("OPTIONS *", options, strlen("OPTIONS * HTTP/1.1") + 1, TT_DETECT_HTTP1);
    PREFIXES("absolute-form", absolute, strlen("GET http://a.example/x HTTP/1.1") + 1,
             TT_DETECT_HTTP1);
    PREFIXES("M-SEARCH", msearch, strlen("M-SEARCH * HTTP/1.1") + 1, TT_DETECT_HTTP1);
}

static void test_detect_h2(void **state)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00";

    /* Only the whole 24-byte preface decides. */
    PREFIXES("preface", preface, 24, TT_DETECT_H2);
    /* A near miss in its last byte is not HTTP/2 (and "PRI" is no HTTP/1 method). */
    assert_int_equal(
        tt_detect_check((const uint8_t *)"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r", 24, TT_DETECT_LIMIT),
        TT_DETECT_OPAQUE);
    assert_int_equal(tt_detect_check((const uint8_t *)"PRI * HTTP/1.1\r\n", 16, TT_DETECT_LIMIT),
                     TT_DETECT_OPAQUE);
}

static void test_detect_tls(void **state)
{
    /* A TLS 1.2 record header and the start of a ClientHello, as curl sends it. */
    static const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03};
    static const uint8_t ssl3[] = {0x16, 0x03, 0x00, 0x00, 0x30, 0x01};
    uint8_t bad[sizeof(hello)];

    prefixes("ClientHello", hello, sizeof(hello), 6, TT_DETECT_TLS);
    prefixes("SSL 3 record", ssl3, sizeof(ssl3), 6, TT_DETECT_TLS);
    /* Each field wrong in turn: another record type, version, length 0 or too large, and
     * a handshake message other than ClientHello (a ServerHello: 2). */
    static const struct {
        size_t at;
        uint8_t v;
    } flips[] = {{0, 0x17}, {1, 0x02}, {2, 0x05}, {3, 0x00}, {3, 0x49}, {5, 0x02}};
    for (size_t i = 0; i < sizeof(flips) / sizeof(flips[0]); i++) {
        memcpy(bad, hello, sizeof(hello));
        bad[flips[i].at] = flips[i].v;
        if (flips[i].at == 3 && flips[i].v == 0)
            bad[4] = 0; /* length 0 */
        assert_int_equal(tt_detect_check(bad, sizeof(bad), TT_DETECT_LIMIT), TT_DETECT_OPAQUE);
        /* Up to the wrong byte it was still a prefix. */
        assert_int_equal(tt_detect_check(bad, flips[i].at, TT_DETECT_LIMIT), TT_DETECT_MORE);
    }
}

static void test_detect_opaque(void **state)
{
    static const struct {
        const char *s;
        size_t decide; /* the first length at which it is opaque */
    } cases[] = {
        {"SSH-2.0-OpenSSH_9.2\r\n", 2},          /* "S" could start SEARCH */
        {"\x00\x00\x00\x08\x04\xd2\x16\x2f", 1}, /* PostgreSQL SSLRequest */
        {"get / HTTP/1.1\r\n", 1},               /* methods are case-sensitive */
        {"GETS / HTTP/1.1\r\n", 4},
        {"GE / HTTP/1.1\r\n", 3},
        {"GET  / HTTP/1.1\r\n", 5},    /* empty target */
        {"GET / HTTP/2.0\r\n", 12},    /* not 1.x */
        {"GET / HTTP/1.2\r\n", 14},    /* neither 1.0 nor 1.1 */
        {"GET / HTTP/1.1 \r\n", 15},   /* junk after the version */
        {"GET / http/1.1\r\n", 7},     /* the version is case-sensitive */
        {"GET /a\tb HTTP/1.1\r\n", 7}, /* a tab in the target */
        {"GET /\r\n", 6},              /* HTTP/0.9 */
        {"PRI * HTTP/2.0\r\n\r\nXX", 19},
        {"HELO example\r\n", 3}, /* "HE" could start HEAD */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        prefixes(cases[i].s, cases[i].s, strlen(cases[i].s), cases[i].decide, TT_DETECT_OPAQUE);
    assert_int_equal(tt_detect_check((const uint8_t *)"", 0, TT_DETECT_LIMIT), TT_DETECT_MORE);
}

/* A request line longer than the bound is not waited for; within it, it is. */
static void test_detect_limit(void **state)
{
    static char line[TT_DETECT_LIMIT + 64];
    size_t n;

    memset(line, 'a', sizeof(line));
    memcpy(line, "GET /", 5);
    n = TT_DETECT_LIMIT - 1;
    assert_int_equal(tt_detect_check((const uint8_t *)line, n, TT_DETECT_LIMIT), TT_DETECT_MORE);
    assert_int_equal(tt_detect_check((const uint8_t *)line, n + 1, TT_DETECT_LIMIT),
                     TT_DETECT_OPAQUE);
    assert_int_equal(tt_detect_check((const uint8_t *)line, sizeof(line), TT_DETECT_LIMIT),
                     TT_DETECT_OPAQUE);
    /* A small bound: "GET /abc" at 8 bytes is still undecided, so opaque. */
    assert_int_equal(tt_detect_check((const uint8_t *)"GET /abc HTTP/1.1\r\n", 7, 8),
                     TT_DETECT_MORE);
    assert_int_equal(tt_detect_check((const uint8_t *)"GET /abc HTTP/1.1\r\n", 8, 8),
                     TT_DETECT_OPAQUE);
    /* A decided answer does not depend on the bound. */
    assert_int_equal(tt_detect_check((const uint8_t *)"GET / HTTP/1.1\r\n", 16, 4),
                     TT_DETECT_HTTP1);
    assert_int_equal(tt_detect_check((const uint8_t *)"", 0, 0), TT_DETECT_OPAQUE);
}

static void test_detect_methods(void **state)
{
    assert_true(tt_detect_method_known("GET", 3));
    assert_true(tt_detect_method_known("PATCH", 5));
    assert_false(tt_detect_method_known("PRI", 3));
    assert_false(tt_detect_method_known("GE", 2));
    assert_false(tt_detect_method_known("get", 3));
    assert_string_equal(tt_detect_name(TT_DETECT_HTTP1), "http1");
    assert_string_equal(tt_detect_name(TT_DETECT_OPAQUE), "opaque");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect_http1), cmocka_unit_test(test_detect_h2),
        cmocka_unit_test(test_detect_tls),   cmocka_unit_test(test_detect_opaque),
        cmocka_unit_test(test_detect_limit), cmocka_unit_test(test_detect_methods),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
