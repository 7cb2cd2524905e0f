/* Unit tests of the inbound request gate (http/gate.h): bytes in, bytes out, no sockets.
 * Per-request verdicts, answers in pipelined order, bodies framed anew, smuggling shapes
 * and non-HTTP bytes refused, audit-only relays, upgrades and the pipeline bound. */
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
#include "http/gate.h"
#include "policy/policy.h"

#define CALLER "spiffe://td/ns/shop/sa/web"
#define SELF   "spiffe://td/ns/shop/sa/api"

struct sink {
    char up[65536];
    size_t up_len;
    char client[65536];
    size_t client_len;
    int verdicts;
    int n_requests;
    struct {
        char method[24];
        char path[256];
        int status;
        uint64_t request_bytes;
        uint64_t response_bytes;
        bool denied;
        char rule[64];
        char reason[64];
    } requests[64];
};

static int put(char *buf, size_t *len, const char *data, size_t n)
{
    assert_true(*len + n <= 65536);
    memcpy(buf + *len, data, n);
    *len += n;
    return 0;
}

static int to_up(void *ud, const char *data, size_t len)
{
    struct sink *s = ud;
    return put(s->up, &s->up_len, data, len);
}

static int to_client(void *ud, const char *data, size_t len)
{
    struct sink *s = ud;
    return put(s->client, &s->client_len, data, len);
}

static void on_verdict(void *ud, const struct tt_policy_verdict *v)
{
    struct sink *s = ud;
    (void)v;
    s->verdicts++;
}

static void on_request(void *ud, const struct tt_gate_request *rq)
{
    struct sink *s = ud;
    int i = s->n_requests++;

    assert_true(i < 64);
    snprintf(s->requests[i].method, sizeof(s->requests[i].method), "%s", rq->method);
    snprintf(s->requests[i].path, sizeof(s->requests[i].path), "%s", rq->path);
    snprintf(s->requests[i].rule, sizeof(s->requests[i].rule), "%s", rq->rule ? rq->rule : "");
    snprintf(s->requests[i].reason, sizeof(s->requests[i].reason), "%s",
             rq->reason ? rq->reason : "");
    s->requests[i].status = rq->status;
    s->requests[i].request_bytes = rq->request_bytes;
    s->requests[i].response_bytes = rq->response_bytes;
    s->requests[i].denied = rq->denied;
}

static const char *enforce_doc =
    "{\"default\": \"deny\", \"rules\": ["
    "{\"name\": \"no-admin\", \"action\": \"deny\", \"from\": [\"*\"], \"paths\": [\"/admin*\"]},"
    "{\"name\": \"api\", \"action\": \"allow\", \"from\": [\"" CALLER "\"],"
    " \"methods\": [\"GET\", \"POST\", \"HEAD\"], \"paths\": [\"/api*\"]}]}";

static const char *audit_doc =
    "{\"default\": \"allow\", \"rules\": ["
    "{\"name\": \"watch-admin\", \"action\": \"deny\", \"mode\": \"audit\", \"from\": [\"*\"],"
    " \"paths\": [\"/admin*\"]}]}";

struct fixture {
    struct tt_policy *policy;
    struct tt_gate *gate;
    struct sink sink;
};

static struct fixture *fixture_new_cfg(const char *doc, bool enforce, size_t pipeline_max,
                                       bool caller_reads_responses)
{
    char err[256];
    struct fixture *f = calloc(1, sizeof(*f));
    struct tt_gate_config cfg = {.caller = CALLER,
                                 .self = SELF,
                                 .port = 8080,
                                 .enforce = enforce,
                                 .pipeline_max = pipeline_max,
                                 .caller_reads_responses = caller_reads_responses};
    struct tt_gate_io io = {.to_upstream = to_up,
                            .to_client = to_client,
                            .on_verdict = on_verdict,
                            .on_request = on_request};

    assert_non_null(f);
    f->policy = tt_policy_parse(doc, strlen(doc), "test", err, sizeof(err));
    assert_non_null(f->policy);
    cfg.policy = f->policy;
    io.ud = &f->sink;
    f->gate = tt_gate_new(&cfg, &io);
    assert_non_null(f->gate);
    return f;
}

static struct fixture *fixture_new_piped(const char *doc, bool enforce, size_t pipeline_max)
{
    return fixture_new_cfg(doc, enforce, pipeline_max, false);
}

static struct fixture *fixture_new(const char *doc, bool enforce)
{
    return fixture_new_piped(doc, enforce, 0);
}

static void fixture_free(struct fixture *f)
{
    tt_gate_free(f->gate, 0);
    tt_policy_unref(f->policy);
    free(f);
}

static void client(struct fixture *f, const char *s)
{
    assert_int_equal(tt_gate_from_client(f->gate, s, strlen(s), 1000), 0);
}

static void upstream(struct fixture *f, const char *s)
{
    assert_int_equal(tt_gate_from_upstream(f->gate, s, strlen(s), 2000), 0);
}

static void assert_up(struct fixture *f, const char *want)
{
    f->sink.up[f->sink.up_len] = '\0';
    assert_string_equal(f->sink.up, want);
}

static void assert_client(struct fixture *f, const char *want)
{
    f->sink.client[f->sink.client_len] = '\0';
    assert_string_equal(f->sink.client, want);
}

#define OK_RESPONSE(body) "HTTP/1.1 200 OK\r\nContent-Length: " #body "\r\n\r\n"

/* An allowed request reaches the workload with its normalized path; the answer comes
 * back byte for byte and completes the request. */
static void test_gate_allowed(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "GET /api/./v1/%61bc?x=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n");
    assert_up(f, "GET /api/v1/abc?x=1 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n");
    assert_int_equal(f->sink.n_requests, 0);
    upstream(f, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_client(f, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    assert_int_equal(f->sink.n_requests, 1);
    assert_string_equal(f->sink.requests[0].method, "GET");
    assert_string_equal(f->sink.requests[0].path, "/api/v1/abc");
    assert_int_equal(f->sink.requests[0].status, 200);
    assert_string_equal(f->sink.requests[0].rule, "api");
    assert_false(tt_gate_finished(f->gate));
    fixture_free(f);
}

/* Three pipelined requests, the middle one denied: the workload never sees it (nor its
 * body), and the 403 reaches the client between the two answers, in request order. */
static void test_gate_denied_in_pipeline_order(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n"
              "POST /admin/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nrm!"
              "GET /api/2 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_up(f, "GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /api/2 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(f->sink.client_len, 0); /* the 403 waits for the first answer */
    upstream(f, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1");
    f->sink.client[f->sink.client_len] = '\0';
    const char *forbidden = strstr(f->sink.client, "HTTP/1.1 403 Forbidden\r\n");
    assert_non_null(forbidden);
    assert_true(strncmp(f->sink.client, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1", 38) == 0);
    assert_non_null(strstr(forbidden, "x-tether-reason: policy_denied\r\n"));
    assert_non_null(strstr(forbidden, "Connection: keep-alive\r\n"));
    assert_non_null(strstr(forbidden, "\"rule\": \"no-admin\""));
    upstream(f, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2");
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(forbidden, "}\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"));
    assert_int_equal(f->sink.n_requests, 3);
    assert_int_equal(f->sink.requests[0].status, 200);
    assert_int_equal(f->sink.requests[1].status, 403);
    assert_true(f->sink.requests[1].denied);
    assert_int_equal(f->sink.requests[1].request_bytes, 3);
    assert_string_equal(f->sink.requests[1].rule, "no-admin");
    assert_int_equal(f->sink.requests[2].status, 200);
    assert_int_equal(f->sink.verdicts, 3);
    assert_false(tt_gate_finished(f->gate));
    fixture_free(f);
}

/* Dot segments and encodings cannot walk around a path rule. */
static void test_gate_normalized_path_denied(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "GET /api/../%61dmin HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(f->sink.up_len, 0);
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(f->sink.client, "403 Forbidden"));
    assert_string_equal(f->sink.requests[0].path, "/admin");
    fixture_free(f);
}

/* A chunked upload is framed anew: extensions dropped, trailers kept. */
static void test_gate_chunked_reframed(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "POST /api/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
              "5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n");
    assert_up(f, "POST /api/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n");
    fixture_free(f);
}

/* Smuggling shapes get 400 and end the connection; nothing reaches the workload. */
static void test_gate_smuggling_refused(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
              "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(f->sink.up_len, 0);
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(f->sink.client, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(
        strstr(f->sink.client, "x-tether-reason: content_length_and_transfer_encoding"));
    assert_non_null(strstr(f->sink.client, "Connection: close\r\n"));
    assert_true(tt_gate_finished(f->gate));
    assert_false(tt_gate_wants_client(f->gate));
    assert_int_equal(f->sink.n_requests, 1);
    assert_int_equal(f->sink.requests[0].status, 400);
    /* Later bytes are dropped. */
    client(f, "GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(f->sink.up_len, 0);
    fixture_free(f);
}

/* Where an enforce rule applies, bytes that are not HTTP are refused, not relayed. */
static void test_gate_enforce_refuses_opaque(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "SSH-2.0-OpenSSH_9.2\r\n");
    assert_int_equal(f->sink.up_len, 0);
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(f->sink.client, "HTTP/1.1 400 Bad Request\r\n"));
    assert_true(tt_gate_finished(f->gate));
    fixture_free(f);
}

/* Audit only: bytes that are not HTTP pass both ways untouched. */
static void test_gate_audit_opaque_relay(void **state)
{
    struct fixture *f = fixture_new(audit_doc, false);
    (void)state;

    client(f, "SSH-2.0-OpenSSH_9.2\r\n");
    assert_up(f, "SSH-2.0-OpenSSH_9.2\r\n");
    upstream(f, "SSH-2.0-server\r\n");
    assert_client(f, "SSH-2.0-server\r\n");
    fixture_free(f);
}

/* Audit only: HTTP is read and counted, and the would-deny request is let through. */
static void test_gate_audit_http_counts(void **state)
{
    struct fixture *f = fixture_new(audit_doc, false);
    (void)state;

    client(f, "GE");
    assert_int_equal(f->sink.up_len, 0); /* not decided yet */
    client(f, "T /admin HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_up(f, "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_int_equal(f->sink.verdicts, 1);
    upstream(f, OK_RESPONSE(0));
    assert_int_equal(f->sink.n_requests, 1);
    assert_false(f->sink.requests[0].denied);
    fixture_free(f);
}

/* An accepted upgrade turns the connection into an opaque relay both ways; the client's
 * bytes after the upgrade request wait for the answer. */
static void test_gate_upgrade(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "GET /api/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
              "frame1");
    assert_up(
        f, "GET /api/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    assert_false(tt_gate_wants_client(f->gate));
    f->sink.up_len = 0;
    upstream(f,
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
             "srv1");
    assert_client(f, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: "
                     "Upgrade\r\n\r\nsrv1");
    assert_up(f, "frame1");
    assert_true(tt_gate_wants_client(f->gate));
    client(f, "GET /admin HTTP/1.1\r\n"); /* not a request any more: just bytes */
    assert_up(f, "frame1GET /admin HTTP/1.1\r\n");
    assert_int_equal(f->sink.n_requests, 1);
    assert_int_equal(f->sink.requests[0].status, 101);
    fixture_free(f);
}

/* A declined upgrade: the bytes after it are read as requests again. */
static void test_gate_upgrade_declined(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "GET /api/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
              "GET /admin HTTP/1.1\r\nHost: a\r\n\r\n");
    f->sink.up_len = 0;
    upstream(f, "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n");
    assert_int_equal(f->sink.up_len, 0); /* /admin was read, and denied */
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(f->sink.client, "426 Upgrade Required"));
    assert_non_null(strstr(f->sink.client, "403 Forbidden"));
    fixture_free(f);
}

/* A denied request that waits for 100 Continue: 403 and the end of the connection (its
 * body may or may not follow). */
static void test_gate_denied_expect_continue_closes(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f,
           "POST /admin HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(f->sink.client, "403 Forbidden"));
    assert_non_null(strstr(f->sink.client, "Connection: close"));
    assert_true(tt_gate_finished(f->gate));
    assert_int_equal(f->sink.up_len, 0);
    fixture_free(f);
}

/* At most TT_GATE_PIPELINE_MAX requests wait for answers; the rest is held (the client is
 * not read) until answers make room. */
static void test_gate_pipeline_bound(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    char all[64 * 40];
    size_t len = 0;
    (void)state;

    for (int i = 0; i < 40; i++)
        len += (size_t)snprintf(all + len, sizeof(all) - len,
                                "GET /api/%d HTTP/1.1\r\nHost: a\r\n\r\n", i);
    assert_int_equal(tt_gate_from_client(f->gate, all, len, 1), 0);
    assert_false(tt_gate_wants_client(f->gate));
    int seen = 0;
    for (size_t i = 0; i + 3 < f->sink.up_len; i++)
        seen += memcmp(f->sink.up + i, "GET ", 4) == 0;
    assert_int_equal(seen, TT_GATE_PIPELINE_MAX);
    for (int i = 0; i < 40; i++)
        upstream(f, OK_RESPONSE(0));
    assert_int_equal(f->sink.n_requests, 40);
    assert_true(tt_gate_wants_client(f->gate));
    fixture_free(f);
}

/* A gate made small (an inbound request stream's: 2) passes a request and its body
 * whole, reads one more head, holds the rest until an answer makes room, and still
 * answers a refusal in its spare slot. */
static void test_gate_small_pipeline(void **state)
{
    struct fixture *f = fixture_new_piped(enforce_doc, true, 2);
    (void)state;

    client(f, "POST /api/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
              "GET /api/2 HTTP/1.1\r\nHost: a\r\n\r\nGET /api/3 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_false(tt_gate_wants_client(f->gate));
    f->sink.up[f->sink.up_len] = '\0';
    assert_non_null(strstr(f->sink.up, "\r\n\r\nhello"));
    assert_non_null(strstr(f->sink.up, "/api/2"));
    assert_null(strstr(f->sink.up, "/api/3"));
    upstream(f, OK_RESPONSE(0));
    f->sink.up[f->sink.up_len] = '\0';
    assert_non_null(strstr(f->sink.up, "/api/3"));
    upstream(f, OK_RESPONSE(0));
    upstream(f, OK_RESPONSE(0));
    assert_int_equal(f->sink.n_requests, 3);

    client(f, "POST /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(f->sink.client, "403 Forbidden"));
    fixture_free(f);
}

/* caller_reads_responses (an inbound request stream): the gate parses and decides the
 * request, never reads the workload's bytes (tt_gate_from_upstream refuses them), and
 * counts the request when told its response is over; a request it refused and answered
 * itself is not completed again by that call. */
static void test_gate_caller_reads_responses(void **state)
{
    struct fixture *f = fixture_new_cfg(enforce_doc, true, 2, true);
    (void)state;

    client(f, "POST /api/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    f->sink.up[f->sink.up_len] = '\0';
    assert_non_null(strstr(f->sink.up, "POST /api/1 HTTP/1.1\r\n"));
    assert_non_null(strstr(f->sink.up, "\r\n\r\nhello"));
    assert_int_equal(tt_gate_from_upstream(f->gate, OK_RESPONSE(0), strlen(OK_RESPONSE(0)), 2),
                     -EINVAL);
    assert_int_equal(f->sink.n_requests, 0);
    assert_int_equal(tt_gate_upstream_eof(f->gate, 2), 0);
    assert_int_equal(tt_gate_response_done(f->gate, 201, 77, 5), 0);
    assert_int_equal(f->sink.n_requests, 1);
    assert_int_equal(f->sink.requests[0].status, 201);
    assert_int_equal(f->sink.requests[0].response_bytes, 77);
    assert_int_equal(f->sink.requests[0].request_bytes, 5);
    assert_string_equal(f->sink.requests[0].rule, "api");
    assert_int_equal(tt_gate_response_done(f->gate, 200, 1, 6), 0); /* nothing waits */
    assert_int_equal(f->sink.n_requests, 1);

    client(f, "POST /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    f->sink.client[f->sink.client_len] = '\0';
    assert_non_null(strstr(f->sink.client, "403 Forbidden"));
    assert_int_equal(f->sink.n_requests, 2);
    assert_true(f->sink.requests[1].denied);
    assert_int_equal(tt_gate_response_done(f->gate, 403, 100, 7), 0);
    assert_int_equal(f->sink.n_requests, 2);
    fixture_free(f);

    /* Without the flag the call is refused. */
    f = fixture_new(enforce_doc, true);
    assert_int_equal(tt_gate_response_done(f->gate, 200, 1, 1), -EINVAL);
    fixture_free(f);
}

/* The workload answering what nobody asked is an error, and requests left unanswered at
 * the end are reported without a status. */
static void test_gate_unsolicited_and_unanswered(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    assert_true(tt_gate_from_upstream(f->gate, "HTTP/1.1 200 OK\r\n\r\n", 19, 1) < 0);
    fixture_free(f);

    f = fixture_new(enforce_doc, true);
    client(f, "GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n");
    struct sink *s = &f->sink;
    tt_gate_free(f->gate, 5);
    f->gate = NULL;
    assert_int_equal(s->n_requests, 1);
    assert_int_equal(s->requests[0].status, 0);
    tt_policy_unref(f->policy);
    free(f);
}

/* The workload closes in the middle of its answer to the second of three pipelined
 * requests, one of them denied: the first answer and the cut one's bytes were passed on,
 * the gate stops without error and writes nothing more (not the 403 owed after the cut
 * one), and the cut request is reported unanswered. */
static void test_gate_response_cut_by_close(void **state)
{
    struct fixture *f = fixture_new(enforce_doc, true);
    (void)state;

    client(f, "GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n"
              "GET /api/2 HTTP/1.1\r\nHost: a\r\n\r\n"
              "POST /admin/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    upstream(f, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ncut");
    assert_int_equal(tt_gate_upstream_eof(f->gate, 3000), 0);
    assert_true(tt_gate_finished(f->gate));
    assert_client(f, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                     "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\ncut");
    assert_int_equal(f->sink.n_requests, 1);
    tt_gate_free(f->gate, 4000);
    f->gate = NULL;
    assert_int_equal(f->sink.n_requests, 3);
    assert_string_equal(f->sink.requests[1].path, "/api/2");
    assert_int_equal(f->sink.requests[1].status, 0);
    assert_int_equal(f->sink.requests[1].response_bytes, 42);
    tt_policy_unref(f->policy);
    free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gate_allowed),
        cmocka_unit_test(test_gate_denied_in_pipeline_order),
        cmocka_unit_test(test_gate_normalized_path_denied),
        cmocka_unit_test(test_gate_chunked_reframed),
        cmocka_unit_test(test_gate_smuggling_refused),
        cmocka_unit_test(test_gate_enforce_refuses_opaque),
        cmocka_unit_test(test_gate_audit_opaque_relay),
        cmocka_unit_test(test_gate_audit_http_counts),
        cmocka_unit_test(test_gate_upgrade),
        cmocka_unit_test(test_gate_upgrade_declined),
        cmocka_unit_test(test_gate_denied_expect_continue_closes),
        cmocka_unit_test(test_gate_pipeline_bound),
        cmocka_unit_test(test_gate_small_pipeline),
        cmocka_unit_test(test_gate_caller_reads_responses),
        cmocka_unit_test(test_gate_unsolicited_and_unanswered),
        cmocka_unit_test(test_gate_response_cut_by_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
