/* Unit tests for http/h2.c: a client session and a server session pumping bytes to each
 * other in memory (no sockets). Request/response, many concurrent streams, per-stream flow
 * control (a stalled stream does not block its neighbour), an extended CONNECT tunnel
 * carrying megabytes both ways, CONNECT refused without the peer's setting, a server's
 * graceful drain (notice, PING, final GOAWAY) and GOAWAY at once, RST_STREAM both ways, the
 * concurrency limit, the header list bound, hostile input and PING. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/errors.h"
#include "http/h2.h"

/* --- the in-memory pair ---------------------------------------------------------------- */

/* What the server application does with each new stream. */
enum server_mode {
    SRV_ECHO_PATH, /* read the body to its end, then answer 200 with the path as body */
    SRV_HOLD,      /* keep the stream and answer nothing (the test answers) */
    SRV_TUNNEL,    /* answer 200 without ending: a tunnel */
};

#define MAX_SRV 512

struct sstream {
    struct tt_h2_stream *st;
    size_t body_len; /* bytes read (SRV_ECHO_PATH) */
    int ends, resets, reset_err;
    uint32_t reset_code;
    bool reset_by_peer;
};

/* The server application's state (one pair per test; tests run one at a time). */
struct pair {
    struct tt_h2 *c, *s;
    enum server_mode mode;
    bool server_reads; /* bodies are read as they arrive */
    struct sstream srv[MAX_SRV];
    size_t nsrv;
    uint32_t goaway_last, goaway_code;
    int goaways, pings, settings;
    size_t nsrv_at_goaway; /* server streams when the last GOAWAY arrived */
    uint64_t rtt_us;
};

static struct pair P;

/* Per client stream: what came back. */
struct cstream {
    struct tt_h2_stream *st;
    int headers, ends, resets;
    int reset_err;
    uint32_t reset_code;
    bool reset_by_peer;
    char body[4096];
    size_t body_len;
};

static void c_on_headers(struct tt_h2_stream *s, void *ud)
{
    ((struct cstream *)ud)->headers++;
}

static void c_on_data(struct tt_h2_stream *s, void *ud)
{
    struct cstream *cs = ud;
    cs->body_len += tt_h2_stream_read(s, cs->body + cs->body_len, sizeof(cs->body) - cs->body_len);
}

static void c_on_end(struct tt_h2_stream *s, void *ud)
{
    ((struct cstream *)ud)->ends++;
}

static void c_on_reset(struct tt_h2_stream *s, int err, uint32_t code, bool by_peer, void *ud)
{
    struct cstream *cs = ud;
    cs->resets++;
    cs->reset_err = err;
    cs->reset_code = code;
    cs->reset_by_peer = by_peer;
}

static const struct tt_h2_stream_callbacks client_cbs = {c_on_headers, c_on_data, c_on_end,
                                                         c_on_reset};

static void s_answer(struct sstream *ss)
{
    const char *path = tt_h2_stream_header(ss->st, ":path");
    struct tt_h2_header h = {"x-len", 5, NULL, 0};
    char len[32];
    snprintf(len, sizeof(len), "%zu", ss->body_len);
    h.value = len;
    h.value_len = strlen(len);
    assert_int_equal(tt_h2_respond(ss->st, 200, &h, 1, false), 0);
    assert_int_equal(tt_h2_stream_write(ss->st, path, strlen(path)), 0);
    assert_int_equal(tt_h2_stream_end(ss->st), 0);
}

static void s_on_data(struct tt_h2_stream *s, void *ud)
{
    struct sstream *ss = ud;
    uint8_t buf[65536];
    size_t n;

    if (!P.server_reads)
        return;
    while ((n = tt_h2_stream_read(s, buf, sizeof(buf))) > 0)
        ss->body_len += n;
}

static void s_on_end(struct tt_h2_stream *s, void *ud)
{
    struct sstream *ss = ud;
    ss->ends++;
    if (P.mode == SRV_ECHO_PATH && P.server_reads)
        s_answer(ss);
}

static void s_on_reset(struct tt_h2_stream *s, int err, uint32_t code, bool by_peer, void *ud)
{
    struct sstream *ss = ud;
    ss->resets++;
    ss->reset_err = err;
    ss->reset_code = code;
    ss->reset_by_peer = by_peer;
}

static const struct tt_h2_stream_callbacks server_cbs = {NULL, s_on_data, s_on_end, s_on_reset};

static void on_stream(struct tt_h2 *h2, struct tt_h2_stream *s, void *ud)
{
    assert_true(P.nsrv < MAX_SRV);
    struct sstream *ss = &P.srv[P.nsrv++];
    ss->st = s;
    tt_h2_stream_set_callbacks(s, &server_cbs, ss);
    if (P.mode == SRV_TUNNEL)
        assert_int_equal(tt_h2_respond(s, 200, NULL, 0, false), 0);
    else if (P.mode == SRV_ECHO_PATH && tt_h2_stream_eof(s))
        s_answer(ss); /* a request without body: END_STREAM came with the headers */
}

static void on_goaway(struct tt_h2 *h2, uint32_t last, uint32_t code, void *ud)
{
    P.goaways++;
    P.nsrv_at_goaway = P.nsrv;
    P.goaway_last = last;
    P.goaway_code = code;
}

static void on_ping(struct tt_h2 *h2, uint64_t rtt_us, void *ud)
{
    P.pings++;
    P.rtt_us = rtt_us;
}

static void on_settings(struct tt_h2 *h2, void *ud)
{
    P.settings++;
}

static const struct tt_h2_callbacks session_cbs = {on_stream, on_settings, on_goaway, on_ping};

static void pair_init(const struct tt_h2_config *ccfg, const struct tt_h2_config *scfg)
{
    memset(&P, 0, sizeof(P));
    P.server_reads = true;
    P.c = tt_h2_new(TT_H2_CLIENT, ccfg, &session_cbs, NULL);
    P.s = tt_h2_new(TT_H2_SERVER, scfg, &session_cbs, NULL);
    assert_non_null(P.c);
    assert_non_null(P.s);
}

static void pair_done(void)
{
    for (size_t i = 0; i < P.nsrv; i++)
        tt_h2_stream_release(P.srv[i].st);
    tt_h2_free(P.c);
    tt_h2_free(P.s);
}

/* Moves what `from` has for `to`: half through the zero-copy pending/consume path, half
 * through tt_h2_fill, to exercise both. Returns the byte count. */
static size_t move(struct tt_h2 *from, struct tt_h2 *to, bool zero_copy)
{
    static uint8_t buf[128 * 1024];
    size_t total = 0;

    for (;;) {
        if (zero_copy) {
            const uint8_t *d;
            size_t n;
            assert_int_equal(tt_h2_pending(from, &d, &n), 0);
            if (n == 0)
                break;
            /* Take it in two parts, as a short write would. */
            size_t half = n > 1 ? n / 2 : n;
            assert_int_equal(tt_h2_feed(to, d, half), 0);
            tt_h2_consume(from, half);
            total += half;
        } else {
            long n = tt_h2_fill(from, buf, sizeof(buf));
            assert_true(n >= 0);
            if (n == 0)
                break;
            assert_int_equal(tt_h2_feed(to, buf, (size_t)n), 0);
            total += (size_t)n;
        }
    }
    return total;
}

/* Pumps both ways until neither side has anything to say. */
static void pump(void)
{
    static int round;
    for (;;) {
        round++;
        size_t n = move(P.c, P.s, round % 2) + move(P.s, P.c, round % 3 == 0);
        if (n == 0)
            break;
    }
}

static struct tt_h2_stream *get(const char *path, struct cstream *cs)
{
    struct tt_h2_request req = {"GET", "https", "10.0.0.1:8080", path, NULL, 0, true};
    int err = -1;
    cs->st = tt_h2_open(P.c, &req, &client_cbs, cs, &err);
    assert_non_null(cs->st);
    assert_int_equal(err, 0);
    return cs->st;
}

/* --- tests ------------------------------------------------------------------------------- */

static void test_h2_request_response(void **state)
{
    struct tt_h2_header hdr[] = {{"x-caller", 8, "web", 3}, {"content-type", 12, "text/plain", 10}};
    struct tt_h2_request req = {"POST", "https", "api.shop:8080", "/orders?id=7", hdr, 2, false};
    struct cstream cs = {0};
    int err;

    pair_init(NULL, NULL);
    cs.st = tt_h2_open(P.c, &req, &client_cbs, &cs, &err);
    assert_non_null(cs.st);
    assert_int_equal(tt_h2_stream_write(cs.st, "hello ", 6), 0);
    assert_int_equal(tt_h2_stream_write(cs.st, "world", 5), 0);
    assert_int_equal(tt_h2_stream_end(cs.st), 0);
    assert_int_equal(tt_h2_stream_write(cs.st, "x", 1), TT_E_H2_CLOSED);
    pump();

    assert_int_equal(P.nsrv, 1);
    struct tt_h2_stream *ss = P.srv[0].st;
    assert_string_equal(tt_h2_stream_header(ss, ":method"), "POST");
    assert_string_equal(tt_h2_stream_header(ss, ":path"), "/orders?id=7");
    assert_string_equal(tt_h2_stream_header(ss, ":authority"), "api.shop:8080");
    assert_string_equal(tt_h2_stream_header(ss, "x-caller"), "web");
    assert_string_equal(tt_h2_stream_header(ss, "content-type"), "text/plain");
    assert_null(tt_h2_stream_header(ss, "x-absent"));
    assert_int_equal(P.srv[0].body_len, 11);
    assert_int_equal(P.srv[0].ends, 1);

    assert_int_equal(cs.headers, 1);
    assert_int_equal(tt_h2_stream_status(cs.st), 200);
    assert_string_equal(tt_h2_stream_header(cs.st, "x-len"), "11");
    assert_int_equal(cs.ends, 1);
    assert_int_equal(cs.resets, 0);
    assert_int_equal(cs.body_len, strlen("/orders?id=7"));
    assert_memory_equal(cs.body, "/orders?id=7", cs.body_len);
    assert_true(tt_h2_stream_eof(cs.st));
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    assert_int_equal(tt_h2_active_streams(P.s), 0);
    assert_int_equal(tt_h2_streams_held(P.c), 1); /* closed, not yet released */
    tt_h2_stream_release(cs.st);
    tt_h2_stream_release(P.srv[0].st);
    P.srv[0].st = NULL;
    assert_int_equal(tt_h2_streams_held(P.c), 0);
    assert_int_equal(tt_h2_streams_held(P.s), 0);
    pair_done();
}

/* The server writes the body and ends it before the head: all goes out after the head. */
static void test_h2_body_before_head(void **state)
{
    struct cstream cs = {0};

    pair_init(NULL, NULL);
    P.mode = SRV_HOLD;
    get("/early", &cs);
    pump();
    assert_int_equal(P.nsrv, 1);
    struct tt_h2_stream *ss = P.srv[0].st;
    assert_int_equal(tt_h2_stream_write(ss, "early body", 10), 0);
    assert_int_equal(tt_h2_stream_end(ss), 0);
    pump();
    assert_int_equal(cs.headers, 0); /* nothing before the head */
    assert_int_equal(tt_h2_respond(ss, 103, NULL, 0, false), -EINVAL);
    assert_int_equal(tt_h2_respond(ss, 200, NULL, 0, false), 0);
    assert_int_equal(tt_h2_respond(ss, 200, NULL, 0, false), TT_E_H2_CLOSED);
    pump();
    assert_int_equal(tt_h2_stream_status(cs.st), 200);
    assert_int_equal(cs.ends, 1);
    assert_int_equal(cs.body_len, 10);
    assert_memory_equal(cs.body, "early body", 10);
    tt_h2_stream_release(cs.st);
    pair_done();
}

/* gRPC-shaped: a request body ending with trailers, a response body ending with trailers
 * (grpc-status), each seen whole by the other side. */
static void test_h2_trailers(void **state)
{
    struct tt_h2_header ct = {"content-type", 12, "application/grpc", 16};
    struct tt_h2_request req = {"POST", "http", "svc:50051", "/pkg.Svc/Call", &ct, 1, false};
    struct tt_h2_header rt[] = {{"x-req-trailer", 13, "done", 4}};
    struct tt_h2_header st[] = {{"grpc-status", 11, "0", 1}, {"grpc-message", 12, "ok", 2}};
    struct tt_h2_header bad = {":status", 7, "200", 3};
    struct cstream cs = {0};
    int err;
    size_t n;

    pair_init(NULL, NULL);
    P.mode = SRV_HOLD;
    cs.st = tt_h2_open(P.c, &req, &client_cbs, &cs, &err);
    assert_non_null(cs.st);
    assert_int_equal(tt_h2_stream_write(cs.st, "\0\0\0\0\3abc", 8), 0);
    assert_int_equal(tt_h2_stream_end_trailers(cs.st, &bad, 1), TT_E_H2_HEADERS);
    assert_int_equal(tt_h2_stream_end_trailers(cs.st, rt, 1), 0);
    assert_int_equal(tt_h2_stream_end_trailers(cs.st, rt, 1), TT_E_H2_CLOSED);
    pump();
    assert_int_equal(P.nsrv, 1);
    struct tt_h2_stream *ss = P.srv[0].st;
    assert_int_equal(P.srv[0].ends, 1);
    assert_int_equal(P.srv[0].body_len, 8);
    assert_string_equal(tt_h2_stream_trailer(ss, "x-req-trailer"), "done");
    assert_null(tt_h2_stream_header(ss, "x-req-trailer")); /* the head stays the head */
    assert_string_equal(tt_h2_stream_header(ss, "content-type"), "application/grpc");
    tt_h2_stream_trailers(ss, &n);
    assert_int_equal(n, 1);

    /* The trailers are given before the head: they wait for it and the body. */
    assert_int_equal(tt_h2_stream_write(ss, "\0\0\0\0\2hi", 7), 0);
    assert_int_equal(tt_h2_stream_end_trailers(ss, st, 2), 0);
    assert_int_equal(tt_h2_respond(ss, 200, &ct, 1, false), 0);
    pump();
    assert_int_equal(tt_h2_stream_status(cs.st), 200);
    assert_int_equal(cs.ends, 1);
    assert_int_equal(cs.resets, 0);
    assert_int_equal(cs.body_len, 7);
    assert_memory_equal(cs.body, "\0\0\0\0\2hi", 7);
    assert_string_equal(tt_h2_stream_trailer(cs.st, "grpc-status"), "0");
    assert_string_equal(tt_h2_stream_trailer(cs.st, "grpc-message"), "ok");
    assert_null(tt_h2_stream_header(cs.st, "grpc-status"));
    assert_string_equal(tt_h2_stream_header(cs.st, "content-type"), "application/grpc");
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    tt_h2_stream_release(cs.st);

    /* Trailers with no body at all, given before the head. */
    struct cstream c2 = {0};
    get("/empty", &c2);
    pump();
    assert_int_equal(P.nsrv, 2);
    assert_int_equal(tt_h2_stream_end_trailers(P.srv[1].st, st, 1), 0);
    assert_int_equal(tt_h2_respond(P.srv[1].st, 200, NULL, 0, false), 0);
    pump();
    assert_int_equal(c2.ends, 1);
    assert_int_equal(c2.body_len, 0);
    assert_string_equal(tt_h2_stream_trailer(c2.st, "grpc-status"), "0");
    tt_h2_stream_release(c2.st);
    pair_done();
}

/* Fields HTTP/2 forbids are refused before they reach the wire (the peer would reset the
 * stream), in requests, responses and trailers. */
static void test_h2_bad_fields(void **state)
{
    static const struct tt_h2_header bad[] = {
        {"connection", 10, "close", 5}, {"transfer-encoding", 17, "chunked", 7},
        {"upgrade", 7, "websocket", 9}, {"keep-alive", 10, "5", 1},
        {"te", 2, "gzip", 4},           {"X-Upper", 7, "v", 1},
        {":path", 5, "/", 1},           {"x-crlf", 6, "a\r\nb: c", 8},
        {"bad name", 8, "v", 1},        {"", 0, "v", 1},
    };
    struct tt_h2_header ok[] = {{"te", 2, "trailers", 8}, {"x-fine", 6, "", 0}};
    struct cstream cs = {0};
    int err;

    pair_init(NULL, NULL);
    P.mode = SRV_HOLD;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct tt_h2_request req = {"GET", "https", "a:1", "/", &bad[i], 1, true};
        err = 0;
        assert_null(tt_h2_open(P.c, &req, NULL, NULL, &err));
        assert_int_equal(err, TT_E_H2_HEADERS);
    }
    struct tt_h2_request nopath = {"GET", "https", "a:1", "", NULL, 0, true};
    assert_null(tt_h2_open(P.c, &nopath, NULL, NULL, &err));
    assert_int_equal(err, TT_E_H2_HEADERS);
    struct tt_h2_request req = {"POST", "https", "a:1", "/", ok, 2, false};
    cs.st = tt_h2_open(P.c, &req, &client_cbs, &cs, &err);
    assert_non_null(cs.st);
    pump();
    assert_int_equal(P.nsrv, 1);
    assert_string_equal(tt_h2_stream_header(P.srv[0].st, "te"), "trailers");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(tt_h2_respond(P.srv[0].st, 200, &bad[i], 1, false), TT_E_H2_HEADERS);
        assert_int_equal(tt_h2_stream_end_trailers(cs.st, &bad[i], 1), TT_E_H2_HEADERS);
    }
    assert_int_equal(tt_h2_respond(P.srv[0].st, 200, ok + 1, 1, true), 0);
    pump();
    assert_int_equal(tt_h2_stream_status(cs.st), 200);
    assert_int_equal(cs.resets, 0);
    tt_h2_stream_release(cs.st);
    pair_done();
}

static void test_h2_many_streams(void **state)
{
    enum { N = 300 };
    static struct cstream cs[N];
    char path[N][32];

    pair_init(NULL, NULL); /* the server allows 100 at once: the rest wait for slots */
    pump();
    memset(cs, 0, sizeof(cs));
    for (int i = 0; i < N; i++) {
        snprintf(path[i], sizeof(path[i]), "/item/%d", i);
        get(path[i], &cs[i]);
    }
    pump();
    assert_int_equal(P.nsrv, N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(cs[i].resets, 0);
        assert_int_equal(tt_h2_stream_status(cs[i].st), 200);
        assert_int_equal(cs[i].ends, 1);
        assert_int_equal(cs[i].body_len, strlen(path[i]));
        assert_memory_equal(cs[i].body, path[i], cs[i].body_len);
        tt_h2_stream_release(cs[i].st);
    }
    pair_done();
}

static void fill_pattern(uint8_t *buf, size_t n, size_t off, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)((off + i) * 131 + seed + ((off + i) >> 12));
}

static void test_h2_stalled_stream(void **state)
{
    /* Small windows so the numbers are exact: 256 KiB per stream and per connection. The
     * receiver buffers up to 8 MiB before the connection window waits for readers. */
    struct tt_h2_config cfg = {
        .stream_window = 256 * 1024, .conn_window = 256 * 1024, .recv_buffer_max = 8 * 1024 * 1024};
    struct tt_h2_request a = {"POST", "https", "svc:80", "/a", NULL, 0, false};
    struct tt_h2_request b = {"POST", "https", "svc:80", "/b", NULL, 0, false};
    struct cstream ca = {0}, cb = {0};
    enum { BODY = 1024 * 1024 };
    static uint8_t body[BODY];
    int err;

    pair_init(&cfg, &cfg);
    P.mode = SRV_HOLD;
    P.server_reads = false; /* nobody reads stream A */
    pump();
    fill_pattern(body, BODY, 0, 1);
    ca.st = tt_h2_open(P.c, &a, &client_cbs, &ca, &err);
    assert_non_null(ca.st);
    assert_int_equal(tt_h2_stream_write(ca.st, body, BODY), 0);
    assert_int_equal(tt_h2_stream_end(ca.st), 0);
    pump();
    assert_int_equal(P.nsrv, 1);
    /* A stalls at its stream window: exactly 256 KiB arrived, the rest waits. */
    assert_int_equal(tt_h2_stream_readable(P.srv[0].st), 256 * 1024);
    assert_int_equal(tt_h2_stream_queued(ca.st), BODY - 256 * 1024);

    /* B on the same connection completes while A is still stalled. */
    cb.st = tt_h2_open(P.c, &b, &client_cbs, &cb, &err);
    assert_non_null(cb.st);
    assert_int_equal(tt_h2_stream_write(cb.st, body, BODY), 0);
    assert_int_equal(tt_h2_stream_end(cb.st), 0);
    for (int rounds = 0; rounds < 1000 && P.srv[1].ends == 0; rounds++) {
        pump();
        assert_int_equal(P.nsrv, 2);
        uint8_t buf[65536];
        size_t n;
        while ((n = tt_h2_stream_read(P.srv[1].st, buf, sizeof(buf))) > 0) {
            uint8_t want[65536];
            fill_pattern(want, n, P.srv[1].body_len, 1);
            assert_memory_equal(buf, want, n);
            P.srv[1].body_len += n;
        }
    }
    assert_int_equal(P.srv[1].body_len, BODY);
    assert_int_equal(P.srv[1].ends, 1);
    s_answer(&P.srv[1]);
    pump();
    assert_int_equal(tt_h2_stream_status(cb.st), 200);
    assert_int_equal(cb.ends, 1);
    /* A still stalled. */
    assert_int_equal(tt_h2_stream_readable(P.srv[0].st), 256 * 1024);
    assert_int_equal(P.srv[0].ends, 0);

    /* Now A's reader catches up (zero-copy path) and A completes with the right bytes. */
    for (int rounds = 0; rounds < 1000 && !tt_h2_stream_eof(P.srv[0].st); rounds++) {
        const uint8_t *d;
        size_t n;
        while ((n = tt_h2_stream_peek(P.srv[0].st, &d)) > 0) {
            uint8_t want[8192];
            size_t take = n < sizeof(want) ? n : sizeof(want);
            fill_pattern(want, take, P.srv[0].body_len, 1);
            assert_memory_equal(d, want, take);
            tt_h2_stream_consume(P.srv[0].st, take);
            P.srv[0].body_len += take;
        }
        pump();
    }
    assert_int_equal(P.srv[0].body_len, BODY);
    assert_int_equal(P.srv[0].ends, 1);
    assert_int_equal(tt_h2_stream_queued(ca.st), 0);
    tt_h2_stream_release(ca.st);
    tt_h2_stream_release(cb.st);
    pair_done();
}

/* Moves up to `chunk` bytes of pattern `seed` into the stream while under `bound` queued. */
static void tunnel_send(struct tt_h2_stream *s, size_t *sent, size_t total, uint8_t seed)
{
    static uint8_t buf[65536];
    while (*sent < total && tt_h2_stream_queued(s) < 512 * 1024) {
        size_t n = total - *sent < sizeof(buf) ? total - *sent : sizeof(buf);
        fill_pattern(buf, n, *sent, seed);
        assert_int_equal(tt_h2_stream_write(s, buf, n), 0);
        *sent += n;
    }
    if (*sent == total && tt_h2_stream_queued(s) == 0)
        tt_h2_stream_end(s);
}

static void tunnel_recv(struct tt_h2_stream *s, size_t *got, uint8_t seed)
{
    static uint8_t buf[65536], want[65536];
    size_t n;
    while ((n = tt_h2_stream_read(s, buf, sizeof(buf))) > 0) {
        fill_pattern(want, n, *got, seed);
        assert_memory_equal(buf, want, n);
        *got += n;
    }
}

static void test_h2_tunnel(void **state)
{
    struct tt_h2_config scfg = {.enable_connect = true};
    struct tt_h2_header h = {"x-tether-caller", 15, "spiffe://td/ns/a/sa/web", 23};
    struct cstream cs = {0};
    enum { TOTAL = 5 * 1024 * 1024 + 123 };
    size_t c_sent = 0, c_got = 0, s_sent = 0, s_got = 0;
    int err;

    pair_init(NULL, &scfg);
    P.mode = SRV_TUNNEL;
    P.server_reads = false;
    assert_false(tt_h2_connect_allowed(P.c));
    pump();
    assert_true(P.settings >= 1);
    assert_true(tt_h2_connect_allowed(P.c));
    cs.st = tt_h2_open_tunnel(P.c, "tether-tcp", "10.1.2.3:8080", &h, 1, NULL, NULL, &err);
    assert_non_null(cs.st);
    pump();
    assert_int_equal(P.nsrv, 1);
    struct tt_h2_stream *ss = P.srv[0].st;
    assert_string_equal(tt_h2_stream_header(ss, ":method"), "CONNECT");
    assert_string_equal(tt_h2_stream_header(ss, ":protocol"), "tether-tcp");
    assert_string_equal(tt_h2_stream_header(ss, ":authority"), "10.1.2.3:8080");
    assert_string_equal(tt_h2_stream_header(ss, "x-tether-caller"), "spiffe://td/ns/a/sa/web");
    assert_int_equal(tt_h2_stream_status(cs.st), 200);

    for (int rounds = 0; rounds < 100000; rounds++) {
        tunnel_send(cs.st, &c_sent, TOTAL, 7);
        tunnel_send(ss, &s_sent, TOTAL, 9);
        pump();
        tunnel_recv(ss, &s_got, 7);
        tunnel_recv(cs.st, &c_got, 9);
        if (tt_h2_stream_eof(ss) && tt_h2_stream_eof(cs.st))
            break;
    }
    assert_int_equal(s_got, TOTAL);
    assert_int_equal(c_got, TOTAL);
    assert_true(tt_h2_stream_eof(ss));
    assert_true(tt_h2_stream_eof(cs.st));
    pump();
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    tt_h2_stream_release(cs.st);
    pair_done();
}

/* A server that answers a stream completely (a 403, 501) and releases it while the client
 * still sends: the answer arrives whole (status and body, END_STREAM), and the stream then
 * ends with RST_STREAM NO_ERROR, never CANCEL; the session stays usable. */
static void test_h2_answer_then_release(void **state)
{
    struct tt_h2_config scfg = {.enable_connect = true};
    struct cstream cs = {0}, cs2 = {0};
    int err;

    pair_init(NULL, &scfg);
    P.mode = SRV_HOLD;
    P.server_reads = false;
    pump();
    cs.st = tt_h2_open_tunnel(P.c, "tether-tcp", "10.1.2.3:8080", NULL, 0, &client_cbs, &cs, &err);
    assert_non_null(cs.st);
    assert_int_equal(tt_h2_stream_write(cs.st, "still sending", 13), 0);
    pump();
    assert_int_equal(P.nsrv, 1);
    struct tt_h2_stream *ss = P.srv[0].st;
    assert_int_equal(tt_h2_respond(ss, 403, NULL, 0, false), 0);
    assert_int_equal(tt_h2_stream_write(ss, "denied", 6), 0);
    assert_int_equal(tt_h2_stream_end(ss), 0);
    tt_h2_stream_release(ss); /* before the answer went out */
    P.srv[0].st = NULL;
    pump();
    assert_int_equal(cs.headers, 1);
    assert_int_equal(tt_h2_stream_status(cs.st), 403);
    assert_int_equal(cs.body_len, 6);
    assert_memory_equal(cs.body, "denied", 6);
    assert_int_equal(cs.ends, 1);
    assert_int_equal(cs.resets, 1);
    assert_int_equal(cs.reset_code, TT_H2_NO_ERROR);
    assert_true(cs.reset_by_peer);
    tt_h2_stream_release(cs.st);

    /* Released after the answer went out: the same ending. */
    cs2.st =
        tt_h2_open_tunnel(P.c, "tether-tcp", "10.1.2.3:8080", NULL, 0, &client_cbs, &cs2, &err);
    assert_non_null(cs2.st);
    assert_int_equal(tt_h2_stream_write(cs2.st, "x", 1), 0);
    pump();
    assert_int_equal(P.nsrv, 2);
    ss = P.srv[1].st;
    assert_int_equal(tt_h2_respond(ss, 501, NULL, 0, true), 0);
    pump();
    assert_int_equal(cs2.ends, 1);
    tt_h2_stream_release(ss);
    P.srv[1].st = NULL;
    pump();
    assert_int_equal(tt_h2_stream_status(cs2.st), 501);
    assert_int_equal(cs2.resets, 1);
    assert_int_equal(cs2.reset_code, TT_H2_NO_ERROR);
    tt_h2_stream_release(cs2.st);
    pump();
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    assert_int_equal(tt_h2_active_streams(P.s), 0);
    assert_int_equal(tt_h2_error(P.c), 0);
    assert_int_equal(tt_h2_error(P.s), 0);
    pair_done();
}

static void test_h2_connect_refused(void **state)
{
    struct cstream cs = {0};
    int err = 0;

    pair_init(NULL, NULL); /* the server does not enable extended CONNECT */
    /* Before the peer's SETTINGS: not yet allowed. */
    assert_null(
        tt_h2_open_tunnel(P.c, "tether-tcp", "10.1.2.3:80", NULL, 0, &client_cbs, &cs, &err));
    assert_int_equal(err, TT_E_H2_NO_CONNECT);
    pump();
    assert_true(P.settings >= 1);
    err = 0;
    assert_null(
        tt_h2_open_tunnel(P.c, "websocket", "10.1.2.3:80", NULL, 0, &client_cbs, &cs, &err));
    assert_int_equal(err, TT_E_H2_NO_CONNECT);
    assert_int_equal(P.nsrv, 0);
    /* The server role opens nothing. */
    assert_null(tt_h2_open_tunnel(P.s, "websocket", "10.1.2.3:80", NULL, 0, NULL, NULL, &err));
    assert_int_equal(err, -EINVAL);
    pair_done();
}

/* The server drains with GOAWAY code h2_code while the client has /1 and /3 open, and
 * the client opens /5 and /7 before the server's first frame about it arrives: cs[0..4). */
static void drain_under_requests(struct cstream *cs, uint32_t h2_code, bool notice)
{
    pair_init(NULL, NULL);
    P.mode = SRV_HOLD;
    pump();
    get("/1", &cs[0]);
    get("/3", &cs[1]);
    pump();
    assert_int_equal(P.nsrv, 2);
    assert_int_equal(tt_h2_goaway(P.s, h2_code), 0);
    assert_int_equal(tt_h2_notice_pending(P.s), notice);
    get("/5", &cs[2]);
    get("/7", &cs[3]);
    pump();
}

/* The server answers its first n streams: each ends 200 on the client, and both sessions
 * are done; then every stream of cs[0..4) is released. */
static void finish_drain(struct cstream *cs, int n)
{
    for (int i = 0; i < n; i++) {
        P.srv[i].body_len = 0;
        s_answer(&P.srv[i]);
    }
    pump();
    for (int i = 0; i < n; i++) {
        assert_int_equal(cs[i].resets, 0);
        assert_int_equal(tt_h2_stream_status(cs[i].st), 200);
        assert_int_equal(cs[i].ends, 1);
    }
    assert_true(tt_h2_done(P.s));
    assert_true(tt_h2_done(P.c));
    for (int i = 0; i < 4; i++)
        tt_h2_stream_release(cs[i].st);
    pair_done();
}

/* A server's graceful drain: the shutdown notice, then (once the client answered its
 * PING) the final GOAWAY. Requests the client opened before the notice reached it are
 * served, not refused; no new one after it; the session is done once all are answered. */
static void test_h2_goaway(void **state)
{
    struct cstream cs[4] = {{0}};
    int err;

    drain_under_requests(cs, TT_H2_NO_ERROR, true);
    assert_false(tt_h2_notice_pending(P.s));
    assert_int_equal(P.goaways, 2); /* the notice, then the final one */
    assert_int_equal(P.goaway_last, tt_h2_stream_id(cs[3].st));
    assert_int_equal(P.goaway_code, 0);
    assert_int_equal(P.nsrv, 4); /* 5 and 7 reached the server application */
    /* No new stream on a session going away. */
    struct tt_h2_request req = {"GET", "https", "a:1", "/9", NULL, 0, true};
    assert_null(tt_h2_open(P.c, &req, NULL, NULL, &err));
    assert_int_equal(err, TT_E_H2_GOAWAY);
    assert_false(tt_h2_done(P.s));
    finish_drain(cs, 4);
}

/* A drain whose notice goes unanswered: the session is not done meanwhile (a stream may
 * still arrive), even with no stream active; called again, the final GOAWAY goes at once,
 * and a request that arrives after it is refused (REFUSED_STREAM: retryable). */
static void test_h2_goaway_unanswered(void **state)
{
    struct cstream cs[1] = {{0}};
    uint8_t held[4096];

    pair_init(NULL, NULL);
    pump();
    get("/1", &cs[0]);
    long n = tt_h2_fill(P.c, held, sizeof(held)); /* its HEADERS, still on the way */
    assert_true(n > 0);
    assert_int_equal(tt_h2_goaway(P.s, 0), 0);
    move(P.s, P.c, false); /* the client reads the notice; its answer is not delivered */
    assert_int_equal(P.goaways, 1);
    assert_int_equal(P.goaway_last, 0x7fffffff);
    assert_true(tt_h2_notice_pending(P.s));
    assert_false(tt_h2_done(P.s));
    assert_int_equal(tt_h2_goaway(P.s, 0), 0); /* the caller stops waiting */
    assert_false(tt_h2_notice_pending(P.s));
    assert_int_equal(tt_h2_feed(P.s, held, (size_t)n), 0);
    pump();
    assert_int_equal(P.nsrv, 0);
    assert_int_equal(P.goaways, 2);
    assert_int_equal(P.goaway_last, 0);
    assert_int_equal(cs[0].resets, 1);
    assert_int_equal(cs[0].reset_err, TT_E_H2_REFUSED);
    assert_true(tt_h2_done(P.s));
    assert_true(tt_h2_done(P.c));
    tt_h2_stream_release(cs[0].st);
    pair_done();
}

/* GOAWAY with an error code goes at once: the requests the client opened while it was on
 * its way are refused (not processed: retryable); the active ones finish. */
static void test_h2_goaway_error(void **state)
{
    struct cstream cs[4] = {{0}};

    drain_under_requests(cs, TT_H2_INTERNAL_ERROR, false);
    assert_int_equal(P.goaways, 1);
    assert_int_equal(P.goaway_last, tt_h2_stream_id(cs[1].st));
    assert_int_equal(P.goaway_code, TT_H2_INTERNAL_ERROR);
    assert_int_equal(P.nsrv, 2); /* 5 and 7 never reached the server application */
    for (int i = 2; i < 4; i++) {
        assert_true(tt_h2_stream_id(cs[i].st) > P.goaway_last);
        assert_int_equal(cs[i].resets, 1);
        assert_int_equal(cs[i].reset_err, TT_E_H2_REFUSED);
        assert_true(cs[i].reset_by_peer || cs[i].reset_code == TT_H2_REFUSED_STREAM);
    }
    finish_drain(cs, 2);
}

/* Requests still queued for a concurrency slot when GOAWAY arrives were never sent: they
 * are reported not processed (retryable) too. */
static void test_h2_goaway_queued(void **state)
{
    struct tt_h2_config scfg = {.max_streams = 1};
    struct cstream cs[3] = {{0}};

    pair_init(NULL, &scfg);
    P.mode = SRV_HOLD;
    pump();
    for (int i = 0; i < 3; i++)
        get("/q", &cs[i]);
    pump();
    assert_int_equal(P.nsrv, 1); /* one slot: the other two wait in the client */
    assert_int_equal(tt_h2_goaway(P.s, 0), 0);
    pump();
    assert_int_equal(P.goaways, 2); /* the notice (the client refuses its queue), the final */
    assert_int_equal(P.goaway_last, tt_h2_stream_id(cs[0].st));
    assert_int_equal(cs[0].resets, 0);
    for (int i = 1; i < 3; i++) {
        assert_int_equal(cs[i].resets, 1);
        assert_int_equal(cs[i].reset_err, TT_E_H2_REFUSED);
    }
    assert_int_equal(tt_h2_respond(P.srv[0].st, 204, NULL, 0, true), 0);
    pump();
    assert_int_equal(tt_h2_stream_status(cs[0].st), 204);
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    assert_true(tt_h2_done(P.c));
    /* Released before and after: no leak, no double free (ASan run). */
    for (int i = 0; i < 3; i++)
        tt_h2_stream_release(cs[i].st);
    pump();
    assert_int_equal(tt_h2_streams_held(P.c), 0);
    pair_done();
}

/* The client drains (its identity rotated) right after opening two requests whose HEADERS
 * have not gone out yet: they still reach the server, then the GOAWAY (nghttp2 would send a
 * GOAWAY submitted at once ahead of them and then refuse them). No new request after. */
static void test_h2_client_goaway_after_queued_heads(void **state)
{
    struct cstream cs[2] = {{0}};
    int err;

    (void)state;
    pair_init(NULL, NULL);
    P.mode = SRV_HOLD;
    pump();
    get("/1", &cs[0]);
    get("/3", &cs[1]);
    assert_int_equal(tt_h2_goaway(P.c, 0), 0);
    struct tt_h2_request req = {"GET", "https", "a:1", "/5", NULL, 0, true};
    assert_null(tt_h2_open(P.c, &req, NULL, NULL, &err));
    assert_int_equal(err, TT_E_H2_GOAWAY);
    pump();
    assert_int_equal(P.nsrv, 2);
    assert_int_equal(P.goaways, 1);
    assert_int_equal(P.nsrv_at_goaway, 2); /* the server got it after the two */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(cs[i].resets, 0);
        assert_int_equal(tt_h2_respond(P.srv[i].st, 204, NULL, 0, true), 0);
    }
    pump();
    for (int i = 0; i < 2; i++) {
        assert_int_equal(tt_h2_stream_status(cs[i].st), 204);
        tt_h2_stream_release(cs[i].st);
    }
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    pair_done();
}

/* A server that takes one stream at a time (max_streams 1) and holds it: three requests,
 * the first served, the other two queued for its slot. */
static void three_requests_one_slot(struct cstream cs[3])
{
    struct tt_h2_config scfg = {.max_streams = 1};

    pair_init(NULL, &scfg);
    P.mode = SRV_HOLD;
    pump();
    for (int i = 0; i < 3; i++)
        get("/r", &cs[i]);
    pump();
    assert_int_equal(P.nsrv, 1);
}

/* A request still waiting for a concurrency slot that is reset (a tunnel ending) and then
 * released: its HEADERS never go out and neither does any RST_STREAM for it, since the
 * server would take one on a stream it never saw for a connection error ("stream in
 * idle") and end every other stream with it. The session goes on. */
static void test_h2_reset_then_release_queued(void **state)
{
    struct cstream cs[3] = {{0}};

    (void)state;
    three_requests_one_slot(cs);
    assert_int_equal(tt_h2_stream_reset(cs[1].st, TT_H2_CANCEL), 0);
    tt_h2_stream_release(cs[1].st);
    pump();
    assert_int_equal(tt_h2_error(P.s), 0);
    assert_int_equal(tt_h2_error(P.c), 0);
    assert_int_equal(P.goaways, 0);
    assert_int_equal(tt_h2_respond(P.srv[0].st, 204, NULL, 0, true), 0);
    pump();
    assert_int_equal(P.nsrv, 2);
    assert_int_equal(tt_h2_stream_id(P.srv[1].st), tt_h2_stream_id(cs[2].st));
    assert_int_equal(tt_h2_respond(P.srv[1].st, 204, NULL, 0, true), 0);
    pump();
    assert_int_equal(tt_h2_stream_status(cs[0].st), 204);
    assert_int_equal(tt_h2_stream_status(cs[2].st), 204);
    assert_int_equal(tt_h2_error(P.s), 0);
    tt_h2_stream_release(cs[0].st);
    tt_h2_stream_release(cs[2].st);
    pair_done();
}

/* A request released while it still waits for a slot never goes out. */
static void test_h2_release_queued(void **state)
{
    struct cstream cs[3] = {{0}};

    three_requests_one_slot(cs);
    tt_h2_stream_release(cs[1].st);
    assert_int_equal(tt_h2_respond(P.srv[0].st, 204, NULL, 0, true), 0);
    pump();
    assert_int_equal(P.nsrv, 2);
    assert_string_equal(tt_h2_stream_header(P.srv[1].st, ":path"), "/r");
    assert_int_equal(tt_h2_stream_id(P.srv[1].st), tt_h2_stream_id(cs[2].st));
    assert_int_equal(tt_h2_respond(P.srv[1].st, 204, NULL, 0, true), 0);
    pump();
    assert_int_equal(tt_h2_stream_status(cs[2].st), 204);
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    tt_h2_stream_release(cs[0].st);
    tt_h2_stream_release(cs[2].st);
    assert_int_equal(tt_h2_streams_held(P.c), 0);
    pair_done();
}

static void test_h2_reset_both_ways(void **state)
{
    struct cstream cs[3] = {{0}};

    pair_init(NULL, NULL);
    P.mode = SRV_HOLD;
    struct tt_h2_request req = {"POST", "https", "a:1", "/up", NULL, 0, false};
    int err;
    for (int i = 0; i < 3; i++) {
        cs[i].st = tt_h2_open(P.c, &req, &client_cbs, &cs[i], &err);
        assert_non_null(cs[i].st);
        assert_int_equal(tt_h2_stream_write(cs[i].st, "abc", 3), 0);
    }
    pump();
    assert_int_equal(P.nsrv, 3);

    /* Client -> server: CANCEL. */
    assert_int_equal(tt_h2_stream_reset(cs[0].st, TT_H2_CANCEL), 0);
    /* Server -> client: REFUSED_STREAM (retryable) and INTERNAL_ERROR. */
    assert_int_equal(tt_h2_stream_reset(P.srv[1].st, TT_H2_REFUSED_STREAM), 0);
    assert_int_equal(tt_h2_stream_reset(P.srv[2].st, TT_H2_INTERNAL_ERROR), 0);
    pump();

    assert_int_equal(P.srv[0].resets, 1);
    assert_true(P.srv[0].reset_by_peer);
    assert_int_equal(P.srv[0].reset_err, TT_E_H2_RESET);
    assert_int_equal(P.srv[0].reset_code, TT_H2_CANCEL);
    assert_int_equal(cs[0].resets, 1);
    assert_false(cs[0].reset_by_peer);
    assert_int_equal(cs[0].reset_code, TT_H2_CANCEL);

    assert_int_equal(cs[1].resets, 1);
    assert_true(cs[1].reset_by_peer);
    assert_int_equal(cs[1].reset_err, TT_E_H2_REFUSED);
    assert_int_equal(cs[1].reset_code, TT_H2_REFUSED_STREAM);
    assert_int_equal(P.srv[1].resets, 1);
    assert_false(P.srv[1].reset_by_peer);

    assert_int_equal(cs[2].resets, 1);
    assert_true(cs[2].reset_by_peer);
    assert_int_equal(cs[2].reset_err, TT_E_H2_RESET);
    assert_int_equal(cs[2].reset_code, TT_H2_INTERNAL_ERROR);

    /* A reset stream takes no more bytes and cannot be answered. */
    assert_int_equal(tt_h2_stream_write(cs[1].st, "x", 1), TT_E_H2_CLOSED);
    assert_int_equal(tt_h2_respond(P.srv[0].st, 200, NULL, 0, true), TT_E_H2_CLOSED);
    assert_int_equal(tt_h2_active_streams(P.c), 0);
    assert_int_equal(tt_h2_active_streams(P.s), 0);
    for (int i = 0; i < 3; i++)
        tt_h2_stream_release(cs[i].st);
    pair_done();
}

static void test_h2_max_streams_refused(void **state)
{
    struct tt_h2_config scfg = {.max_streams = 2};
    struct cstream cs[5] = {{0}};

    pair_init(NULL, &scfg);
    P.mode = SRV_HOLD;
    /* A pooled client opens streams right after its preface, before the server's SETTINGS
     * arrive: the ones beyond the limit are refused, retryable. */
    for (int i = 0; i < 5; i++)
        get("/x", &cs[i]);
    pump();
    assert_int_equal(P.nsrv, 2);
    int refused = 0;
    for (int i = 0; i < 5; i++) {
        if (cs[i].resets) {
            assert_int_equal(cs[i].reset_err, TT_E_H2_REFUSED);
            assert_int_equal(cs[i].reset_code, TT_H2_REFUSED_STREAM);
            refused++;
        }
    }
    assert_int_equal(refused, 3);
    /* Afterwards the client knows the limit and queues instead: two more wait, then run
     * once the first two are answered. */
    struct cstream more[2] = {{0}};
    get("/y", &more[0]);
    get("/z", &more[1]);
    pump();
    assert_int_equal(P.nsrv, 2);
    for (int i = 0; i < 2; i++)
        assert_int_equal(tt_h2_respond(P.srv[i].st, 204, NULL, 0, true), 0);
    pump();
    assert_int_equal(P.nsrv, 4);
    assert_int_equal(more[0].resets + more[1].resets, 0);
    for (int i = 0; i < 5; i++)
        tt_h2_stream_release(cs[i].st);
    tt_h2_stream_release(more[0].st);
    tt_h2_stream_release(more[1].st);
    pair_done();
}

/* A raw frame into buf at *n: 9-byte header (RFC 9113 §4.1) and payload. */
static void raw_frame(uint8_t *buf, size_t *n, uint8_t type, uint8_t flags, uint32_t id,
                      const void *payload, size_t len)
{
    uint8_t *p = buf + *n;
    p[0] = (uint8_t)(len >> 16);
    p[1] = (uint8_t)(len >> 8);
    p[2] = (uint8_t)len;
    p[3] = type;
    p[4] = flags;
    p[5] = (uint8_t)(id >> 24);
    p[6] = (uint8_t)(id >> 16);
    p[7] = (uint8_t)(id >> 8);
    p[8] = (uint8_t)id;
    if (len > 0)
        memcpy(p + 9, payload, len);
    *n += 9 + len;
}

/* An HPACK literal field without indexing, new name (RFC 7541 §6.2.2), short strings. */
static void hpack_lit(uint8_t *buf, size_t *n, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    buf[(*n)++] = 0x00;
    buf[(*n)++] = (uint8_t)nl;
    memcpy(buf + *n, name, nl);
    *n += nl;
    buf[(*n)++] = (uint8_t)vl;
    memcpy(buf + *n, value, vl);
    *n += vl;
}

/* A client that ignores the limit it acknowledged is broken, not racing: nghttp2 ends the
 * connection (GOAWAY PROTOCOL_ERROR naming stream 1 as the last processed, so the client
 * knows stream 3 never ran) and the session reports the protocol error. */
static void test_h2_max_streams_after_ack(void **state)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    struct tt_h2_config scfg = {.max_streams = 1};
    uint8_t in[1024], block[256], out[65536];
    size_t n = 0, bn = 0;

    pair_init(NULL, &scfg);
    P.mode = SRV_HOLD;
    assert_true(tt_h2_fill(P.s, out, sizeof(out)) > 0); /* the server's SETTINGS */
    memcpy(in, preface, sizeof(preface) - 1);
    n = sizeof(preface) - 1;
    raw_frame(in, &n, 0x4, 0, 0, NULL, 0);   /* our SETTINGS */
    raw_frame(in, &n, 0x4, 0x1, 0, NULL, 0); /* ACK of the server's: the limit now applies */
    hpack_lit(block, &bn, ":method", "GET");
    hpack_lit(block, &bn, ":scheme", "https");
    hpack_lit(block, &bn, ":authority", "a:1");
    hpack_lit(block, &bn, ":path", "/");
    raw_frame(in, &n, 0x1, 0x4, 1, block, bn); /* HEADERS, END_HEADERS, stream 1 */
    raw_frame(in, &n, 0x1, 0x4, 3, block, bn); /* stream 3: over the limit of 1 */
    int r = tt_h2_feed(P.s, in, n);
    assert_true(r == 0 || r == TT_E_H2_PROTOCOL);
    assert_int_equal(P.nsrv, 1); /* stream 3 never reached the application */
    long got = tt_h2_fill(P.s, out, sizeof(out));
    bool goaway = false;
    for (long off = 0; off + 9 <= got;) {
        size_t flen = ((size_t)out[off] << 16) | ((size_t)out[off + 1] << 8) | out[off + 2];
        if (out[off + 3] == 0x7) {
            const uint8_t *g = out + off + 9;
            goaway = true;
            assert_int_equal(((uint32_t)g[0] << 24 | g[1] << 16 | g[2] << 8 | g[3]) & 0x7fffffff,
                             1);
            assert_int_equal(g[7], TT_H2_PROTOCOL_ERROR);
        }
        off += 9 + (long)flen;
    }
    assert_true(goaway);
    assert_int_equal(tt_h2_error(P.s), TT_E_H2_PROTOCOL);
    pair_done();
}

/* Padded DATA (RFC 9113 §6.1): the padding counts against the windows and must be given
 * back too, or a peer that pads would run the connection dry. 180 KB of padded frames
 * through 64 KiB windows: every byte of payload arrives, no flow-control error. */
static void test_h2_padding_window(void **state)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    struct tt_h2_config scfg = {.stream_window = 65535, .conn_window = 65535};
    static uint8_t in[16384], out[65536];
    uint8_t block[256], payload[301], buf[4096];
    size_t n = 0, bn = 0, got = 0;

    pair_init(NULL, &scfg);
    P.mode = SRV_HOLD;
    P.server_reads = false;
    assert_true(tt_h2_fill(P.s, out, sizeof(out)) > 0);
    memcpy(in, preface, sizeof(preface) - 1);
    n = sizeof(preface) - 1;
    raw_frame(in, &n, 0x4, 0, 0, NULL, 0);
    raw_frame(in, &n, 0x4, 0x1, 0, NULL, 0);
    hpack_lit(block, &bn, ":method", "POST");
    hpack_lit(block, &bn, ":scheme", "https");
    hpack_lit(block, &bn, ":authority", "a:1");
    hpack_lit(block, &bn, ":path", "/pad");
    raw_frame(in, &n, 0x1, 0x4, 1, block, bn);
    assert_int_equal(tt_h2_feed(P.s, in, n), 0);
    assert_int_equal(P.nsrv, 1);
    payload[0] = 200; /* pad length */
    memset(payload + 1, 'd', 100);
    memset(payload + 101, 0, 200);
    for (int round = 0; round < 30; round++) {
        n = 0;
        for (int f = 0; f < 20; f++)
            raw_frame(in, &n, 0x0, 0x8, 1, payload, sizeof(payload)); /* DATA, PADDED */
        assert_int_equal(tt_h2_feed(P.s, in, n), 0);
        size_t r;
        while ((r = tt_h2_stream_read(P.srv[0].st, buf, sizeof(buf))) > 0) {
            for (size_t i = 0; i < r; i++)
                assert_int_equal(buf[i], 'd');
            got += r;
        }
        long o = tt_h2_fill(P.s, out, sizeof(out)); /* the WINDOW_UPDATEs */
        assert_true(o >= 0);
        assert_int_equal(tt_h2_error(P.s), 0);
    }
    assert_int_equal(got, 30 * 20 * 100);
    pair_done();
}

/* A client that sends extended CONNECT anyway, to a server that did not enable it: the
 * stream is reset and never reaches the application. A plain CONNECT (RFC 9113 §8.5, no
 * :protocol) is valid HTTP/2: it reaches the application, which tells the two apart by
 * :protocol and decides. */
static void test_h2_connect_refused_by_server(void **state)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    uint8_t in[1024], b1[256], b3[256], out[65536];
    size_t n = 0, n1 = 0, n3 = 0;

    pair_init(NULL, NULL);
    P.mode = SRV_TUNNEL;
    assert_true(tt_h2_fill(P.s, out, sizeof(out)) > 0);
    memcpy(in, preface, sizeof(preface) - 1);
    n = sizeof(preface) - 1;
    raw_frame(in, &n, 0x4, 0, 0, NULL, 0);
    raw_frame(in, &n, 0x4, 0x1, 0, NULL, 0);
    hpack_lit(b1, &n1, ":method", "CONNECT");
    hpack_lit(b1, &n1, ":protocol", "tether-tcp");
    hpack_lit(b1, &n1, ":scheme", "https");
    hpack_lit(b1, &n1, ":path", "/");
    hpack_lit(b1, &n1, ":authority", "10.1.2.3:8080");
    raw_frame(in, &n, 0x1, 0x4, 1, b1, n1);
    hpack_lit(b3, &n3, ":method", "CONNECT");
    hpack_lit(b3, &n3, ":authority", "10.1.2.3:8080");
    raw_frame(in, &n, 0x1, 0x4, 3, b3, n3);
    int r = tt_h2_feed(P.s, in, n);
    assert_int_equal(r, 0);
    assert_int_equal(P.nsrv, 1);
    assert_int_equal(tt_h2_stream_id(P.srv[0].st), 3);
    assert_null(tt_h2_stream_header(P.srv[0].st, ":protocol"));
    assert_int_equal(tt_h2_stream_reset(P.srv[0].st, TT_H2_REFUSED_STREAM), 0);
    long got = tt_h2_fill(P.s, out, sizeof(out));
    int resets = 0;
    for (long off = 0; off + 9 <= got;) {
        size_t flen = ((size_t)out[off] << 16) | ((size_t)out[off + 1] << 8) | out[off + 2];
        assert_int_not_equal(out[off + 3], 0x1); /* no response head */
        resets += out[off + 3] == 0x3;
        off += 9 + (long)flen;
    }
    assert_int_equal(resets, 2); /* stream 1 by nghttp2, stream 3 by the application */
    assert_int_equal(tt_h2_error(P.s), 0);
    pair_done();
}

static void test_h2_header_list_bound(void **state)
{
    struct tt_h2_config scfg = {.max_header_list = 1024};
    static char big[2000];
    struct cstream cs = {0};
    int err;

    memset(big, 'v', sizeof(big));
    struct tt_h2_header h = {"x-big", 5, big, sizeof(big)};
    struct tt_h2_request req = {"GET", "https", "a:1", "/big", &h, 1, true};
    pair_init(NULL, &scfg);
    pump();
    cs.st = tt_h2_open(P.c, &req, &client_cbs, &cs, &err);
    assert_non_null(cs.st);
    pump();
    assert_int_equal(P.nsrv, 0); /* never shown to the application */
    assert_int_equal(cs.resets, 1);
    assert_true(cs.reset_by_peer);
    assert_int_equal(cs.reset_err, TT_E_H2_RESET);
    /* The connection survives: a normal request still works. */
    struct cstream ok = {0};
    get("/small", &ok);
    pump();
    assert_int_equal(tt_h2_stream_status(ok.st), 200);
    tt_h2_stream_release(cs.st);
    tt_h2_stream_release(ok.st);
    tt_h2_stream_release(P.srv[0].st);
    P.srv[0].st = NULL;
    /* The refused stream was never the application's: the session freed it itself. */
    assert_int_equal(tt_h2_streams_held(P.s), 0);
    assert_int_equal(tt_h2_streams_held(P.c), 0);
    pair_done();
}

/* A response head above nghttp2's 64 KiB bound for a header block cannot go out: the
 * stream is reset (INTERNAL_ERROR), so that the caller is not left waiting for an answer
 * that never comes, and the session goes on. The client's own bound is raised so that
 * only the server's applies. */
static void test_h2_response_head_too_big(void **state)
{
    struct tt_h2_config ccfg = {.max_header_list = 1 << 20};
    static struct tt_h2_header fields[80];
    static char value[1000];
    struct cstream cs = {0}, ok = {0};

    (void)state;
    memset(value, 'v', sizeof(value));
    for (size_t i = 0; i < 80; i++) {
        static char names[80][8];
        snprintf(names[i], sizeof(names[i]), "x-%zu", i);
        fields[i] = (struct tt_h2_header){names[i], strlen(names[i]), value, sizeof(value)};
    }
    pair_init(&ccfg, NULL);
    P.mode = SRV_HOLD;
    pump();
    get("/big", &cs);
    pump();
    assert_int_equal(P.nsrv, 1);
    assert_int_equal(tt_h2_respond(P.srv[0].st, 200, fields, 80, true), 0);
    pump();
    assert_int_equal(cs.headers, 0);
    assert_int_equal(cs.resets, 1);
    assert_true(cs.reset_by_peer);
    assert_int_equal(cs.reset_code, TT_H2_INTERNAL_ERROR);
    assert_int_equal(tt_h2_error(P.s), 0);
    assert_int_equal(tt_h2_error(P.c), 0);
    get("/small", &ok);
    pump();
    assert_int_equal(P.nsrv, 2);
    assert_int_equal(tt_h2_respond(P.srv[1].st, 204, NULL, 0, true), 0);
    pump();
    assert_int_equal(tt_h2_stream_status(ok.st), 204);
    tt_h2_stream_release(cs.st);
    tt_h2_stream_release(ok.st);
    pair_done();
}

#define feed_all(h2, data, len, want)                                                              \
    assert_int_equal(tt_h2_feed((h2), (const uint8_t *)(data), (len)), (want))

static void test_h2_malformed(void **state)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    uint8_t garbage[4096];
    uint8_t out[65536];

    for (size_t i = 0; i < sizeof(garbage); i++)
        garbage[i] = (uint8_t)(i * 7919 + 13);

    /* Garbage instead of a preface. */
    struct tt_h2 *s = tt_h2_new(TT_H2_SERVER, NULL, NULL, NULL);
    assert_non_null(s);
    feed_all(s, garbage, sizeof(garbage), TT_E_H2_PROTOCOL);
    feed_all(s, preface, sizeof(preface) - 1, TT_E_H2_PROTOCOL); /* sticky */
    assert_true(tt_h2_fill(s, out, sizeof(out)) >= 0);
    tt_h2_free(s);

    /* HTTP/1.1 spoken to an HTTP/2 server. */
    s = tt_h2_new(TT_H2_SERVER, NULL, NULL, NULL);
    static const char h1[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    feed_all(s, h1, sizeof(h1) - 1, TT_E_H2_PROTOCOL);
    tt_h2_free(s);

    /* A good preface, then a DATA frame on stream 0 (RFC 9113 §6.1: connection error):
     * the server queues a GOAWAY(PROTOCOL_ERROR), reported once it is taken out. */
    s = tt_h2_new(TT_H2_SERVER, NULL, NULL, NULL);
    uint8_t bad[sizeof(preface) - 1 + 9 + 9 + 4];
    size_t n = 0;
    memcpy(bad, preface, sizeof(preface) - 1);
    n += sizeof(preface) - 1;
    memcpy(bad + n, "\x00\x00\x00\x04\x00\x00\x00\x00\x00", 9); /* empty SETTINGS */
    n += 9;
    memcpy(bad + n, "\x00\x00\x04\x00\x00\x00\x00\x00\x00", 9); /* DATA, stream 0 */
    n += 9;
    memcpy(bad + n, "abcd", 4);
    n += 4;
    int r = tt_h2_feed(s, bad, n);
    assert_true(r == 0 || r == TT_E_H2_PROTOCOL);
    long got = tt_h2_fill(s, out, sizeof(out));
    assert_true(got > 0);
    assert_int_equal(tt_h2_error(s), TT_E_H2_PROTOCOL);
    feed_all(s, preface, 3, TT_E_H2_PROTOCOL); /* no more input */
    bool goaway = false;
    for (long off = 0; off + 9 <= got;) {
        size_t flen = ((size_t)out[off] << 16) | ((size_t)out[off + 1] << 8) | out[off + 2];
        if (out[off + 3] == 0x7 && off + 9 + 8 <= got) {
            goaway = true;
            assert_int_equal(out[off + 9 + 7], TT_H2_PROTOCOL_ERROR);
        }
        off += 9 + (long)flen;
    }
    assert_true(goaway);
    assert_true(tt_h2_done(s));
    tt_h2_free(s);

    /* The client side: garbage from a "server". */
    struct tt_h2 *c = tt_h2_new(TT_H2_CLIENT, NULL, NULL, NULL);
    assert_true(tt_h2_fill(c, out, sizeof(out)) > 0);
    feed_all(c, garbage, sizeof(garbage), TT_E_H2_PROTOCOL);
    tt_h2_free(c);

    /* Every split of a valid client stream is accepted (no error on partial frames). */
    pair_init(NULL, NULL);
    struct cstream cs = {0};
    get("/split", &cs);
    long m = tt_h2_fill(P.c, out, sizeof(out));
    assert_true(m > 0);
    for (long i = 0; i < m; i++)
        assert_int_equal(tt_h2_feed(P.s, out + i, 1), 0);
    assert_int_equal(P.nsrv, 1);
    tt_h2_stream_release(cs.st);
    pair_done();
}

static void test_h2_ping(void **state)
{
    pair_init(NULL, NULL);
    pump();
    assert_int_equal(P.pings, 0);
    assert_int_equal(tt_h2_ping(P.c), 0);
    pump();
    assert_int_equal(P.pings, 1); /* only the client's ack callback: the server just acks */
    assert_true(P.rtt_us < 1000000);
    assert_int_equal(tt_h2_ping(P.s), 0);
    assert_int_equal(tt_h2_ping(P.s), 0);
    pump();
    assert_int_equal(P.pings, 3);
    /* A PING ACK nobody asked for is no round trip. */
    static const uint8_t stray[] = {0, 0, 8, 6, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(tt_h2_feed(P.c, stray, sizeof(stray)), 0);
    assert_int_equal(P.pings, 3);
    pair_done();
}

/* A stream released early: the rest of its body is dropped without stalling the
 * connection, and the peer sees CANCEL. */
static void test_h2_release_early(void **state)
{
    struct tt_h2_config cfg = {.stream_window = 64 * 1024, .conn_window = 128 * 1024};
    struct tt_h2_request req = {"POST", "https", "a:1", "/big", NULL, 0, false};
    static uint8_t body[512 * 1024];
    struct cstream cs = {0}, ok = {0};
    int err;

    pair_init(&cfg, &cfg);
    P.mode = SRV_HOLD;
    P.server_reads = false;
    pump();
    cs.st = tt_h2_open(P.c, &req, &client_cbs, &cs, &err);
    assert_int_equal(tt_h2_stream_write(cs.st, body, sizeof(body)), 0);
    pump();
    assert_int_equal(P.nsrv, 1);
    assert_int_equal(tt_h2_stream_readable(P.srv[0].st), 64 * 1024);
    tt_h2_stream_release(P.srv[0].st);
    P.srv[0].st = NULL;
    pump();
    assert_int_equal(cs.resets, 1);
    assert_int_equal(cs.reset_code, TT_H2_CANCEL);
    /* The connection window came back: another request runs to its end. */
    P.mode = SRV_ECHO_PATH;
    P.server_reads = true;
    struct tt_h2_request r2 = {"POST", "https", "a:1", "/after", NULL, 0, false};
    ok.st = tt_h2_open(P.c, &r2, &client_cbs, &ok, &err);
    assert_int_equal(tt_h2_stream_write(ok.st, body, sizeof(body)), 0);
    assert_int_equal(tt_h2_stream_end(ok.st), 0);
    pump();
    assert_int_equal(tt_h2_stream_status(ok.st), 200);
    assert_string_equal(tt_h2_stream_header(ok.st, "x-len"), "524288");
    tt_h2_stream_release(cs.st);
    tt_h2_stream_release(ok.st);
    pair_done();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h2_request_response),
        cmocka_unit_test(test_h2_body_before_head),
        cmocka_unit_test(test_h2_trailers),
        cmocka_unit_test(test_h2_bad_fields),
        cmocka_unit_test(test_h2_many_streams),
        cmocka_unit_test(test_h2_stalled_stream),
        cmocka_unit_test(test_h2_tunnel),
        cmocka_unit_test(test_h2_connect_refused),
        cmocka_unit_test(test_h2_answer_then_release),
        cmocka_unit_test(test_h2_goaway),
        cmocka_unit_test(test_h2_goaway_unanswered),
        cmocka_unit_test(test_h2_goaway_error),
        cmocka_unit_test(test_h2_goaway_queued),
        cmocka_unit_test(test_h2_client_goaway_after_queued_heads),
        cmocka_unit_test(test_h2_release_queued),
        cmocka_unit_test(test_h2_reset_then_release_queued),
        cmocka_unit_test(test_h2_reset_both_ways),
        cmocka_unit_test(test_h2_max_streams_refused),
        cmocka_unit_test(test_h2_max_streams_after_ack),
        cmocka_unit_test(test_h2_padding_window),
        cmocka_unit_test(test_h2_connect_refused_by_server),
        cmocka_unit_test(test_h2_header_list_bound),
        cmocka_unit_test(test_h2_response_head_too_big),
        cmocka_unit_test(test_h2_malformed),
        cmocka_unit_test(test_h2_ping),
        cmocka_unit_test(test_h2_release_early),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
