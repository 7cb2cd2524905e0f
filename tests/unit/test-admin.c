/* Unit tests for admin.c: a real admin server on 127.0.0.1 port 0, its loop running in
 * a thread of its own, and plain blocking sockets in the test thread as clients.
 *
 * The identity and policy getters are weak stubs (the views here carry a fake policy
 * or none), so the test does not depend on identity.o or policy.o. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "admin/admin.h"
#include "tls/identity.h"
#include "policy/policy.h"
#include "policy/policy_json.h"
#include "httpfix.h"

/* ---- stubs ---- */

struct tt_policy {
    int marker;
};

__attribute__((weak)) json_t *tt_policy_to_json(const struct tt_policy *p)
{
    return json_pack("{s:s,s:i}", "default", "deny", "marker", p->marker);
}

__attribute__((weak)) const char *tt_policy_version(const struct tt_policy *p)
{
    return "stub";
}

__attribute__((weak)) bool tt_policy_default_allows(const struct tt_policy *p)
{
    return false;
}

__attribute__((weak)) size_t tt_policy_rule_count(const struct tt_policy *p)
{
    return 0;
}

__attribute__((weak)) void tt_policy_rule_info(const struct tt_policy *p, size_t i,
                                               struct tt_policy_rule_info *out)
{
    memset(out, 0, sizeof(*out));
}

__attribute__((weak)) const struct tt_cert_info *tt_identity_leaf(const struct tt_identity *id)
{
    return NULL;
}

__attribute__((weak)) size_t tt_identity_root_count(const struct tt_identity *id)
{
    return 0;
}

__attribute__((weak)) const struct tt_cert_info *tt_identity_root(const struct tt_identity *id,
                                                                  size_t i)
{
    return NULL;
}

/* ---- the server side, in its own thread ---- */

struct harness {
    struct tt_httpfix_loop lp;
    struct tt_admin *admin;
    int port;
    int ready;       /* what /ready answers; read on the loop thread */
    int quit_calls;  /* atomics: written on the loop thread */
    int quit_closes; /* quit calls tt_admin_close, as the runtime does */
    int get_views;
    int put_views;
    struct tt_policy policy;
    int with_policy;
    struct tt_listener_cfg cfg;
    struct tt_metrics *metrics;
};

static void ops_get_view(void *ud, struct tt_stats_view *view)
{
    struct harness *h = ud;

    __atomic_add_fetch(&h->get_views, 1, __ATOMIC_SEQ_CST);
    view->listeners = &h->cfg;
    view->n_listeners = 1;
    view->workers = &h->metrics;
    view->n_workers = 1;
    view->ready = __atomic_load_n(&h->ready, __ATOMIC_SEQ_CST);
    view->policy = __atomic_load_n(&h->with_policy, __ATOMIC_SEQ_CST) ? &h->policy : NULL;
    view->snapshot_generation = 1;
    view->control_state = "none";
}

static void ops_put_view(void *ud, struct tt_stats_view *view)
{
    struct harness *h = ud;

    __atomic_add_fetch(&h->put_views, 1, __ATOMIC_SEQ_CST);
}

static void ops_quit(void *ud)
{
    struct harness *h = ud;

    __atomic_add_fetch(&h->quit_calls, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&h->quit_closes, __ATOMIC_SEQ_CST)) {
        tt_admin_close(h->admin);
        tt_admin_close(h->admin); /* a second call does nothing */
        h->admin = NULL;          /* freed once its handles are closed */
    }
}

static const struct tt_admin_ops ops = {ops_get_view, ops_put_view, ops_quit};

static void on_stop(void *ud)
{
    struct harness *h = ud;

    tt_admin_close(h->admin);
}

static int setup(void **state)
{
    struct harness *h = calloc(1, sizeof(*h));
    struct tt_addr addr;
    int err = 0;

    assert_non_null(h);
    h->ready = 1;
    h->policy.marker = 42;
    snprintf(h->cfg.name, sizeof(h->cfg.name), "inbound:127.0.0.1:16006");
    h->metrics = tt_metrics_new(1);
    assert_non_null(h->metrics);
    TT_COUNTER_ADD(h->metrics->listeners[0].accepted, 17);
    tt_httpfix_loop_init(&h->lp, on_stop, h);
    assert_int_equal(tt_addr_parse("127.0.0.1:0", 1, &addr), 0);
    h->admin = tt_admin_new(&h->lp.loop, &addr, &ops, h, 0, &err);
    assert_non_null(h->admin);
    assert_int_equal(err, 0);
    h->port = tt_admin_port(h->admin);
    assert_true(h->port > 0);
    tt_httpfix_loop_start(&h->lp);
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    struct harness *h = *state;

    /* Every handle closed and every client freed, or this fails with UV_EBUSY. */
    assert_int_equal(tt_httpfix_loop_stop(&h->lp), 0);
    assert_int_equal(h->get_views, h->put_views);
    tt_metrics_free(h->metrics);
    free(h);
    return 0;
}

/* One request on a fresh connection. */
static void roundtrip(struct harness *h, const char *req, struct tt_httpfix_response *r)
{
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);

    tt_httpfix_sends(c, req);
    assert_true(tt_httpfix_read_response(c, r, false));
    tt_httpfix_client_free(c);
}

#define GET(path) "GET " path " HTTP/1.1\r\nHost: localhost\r\n\r\n"

/* ---- tests ---- */

static void test_admin_live(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;

    tt_httpfix_sends(c, GET("/live"));
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "live\n");
    assert_non_null(strstr(r.head, "Connection: keep-alive\r\n"));
    assert_non_null(strstr(r.head, "Content-Type: text/plain"));
    tt_httpfix_response_done(&r);
    /* Keep-alive: the same connection serves a second request. */
    tt_httpfix_sends(c, GET("/live"));
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
    tt_httpfix_client_free(c);
}

static void test_admin_ready_states(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_response r;

    roundtrip(h, GET("/ready"), &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ready\n");
    tt_httpfix_response_done(&r);

    __atomic_store_n(&h->ready, 0, __ATOMIC_SEQ_CST);
    roundtrip(h, GET("/ready"), &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "not ready\n");
    tt_httpfix_response_done(&r);
}

static void test_admin_stats_json(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_response r;
    json_error_t jerr;
    json_t *doc, *ls;

    roundtrip(h, GET("/stats"), &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "Content-Type: application/json\r\n"));
    doc = json_loads(r.body, 0, &jerr);
    assert_non_null(doc);
    ls = json_object_get(doc, "listeners");
    assert_true(json_is_array(ls));
    assert_int_equal(json_array_size(ls), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(ls, 0), "accepted")), 17);
    assert_non_null(strchr(r.body, '\n')); /* pretty-printed */
    json_decref(doc);
    tt_httpfix_response_done(&r);

    /* format=json says the same explicitly, among other parameters. */
    roundtrip(h, GET("/stats?x=1&format=json"), &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "application/json"));
    tt_httpfix_response_done(&r);
}

static void test_admin_stats_prometheus(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_response r;

    roundtrip(h, GET("/stats?format=prometheus"), &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "Content-Type: text/plain; version=0.0.4"));
    assert_non_null(strstr(r.body, "tether_listener_connections_accepted_total{listener=\"inbound:"
                                   "127.0.0.1:16006\",kind=\"inbound\"} 17\n"));
    tt_httpfix_response_done(&r);

    roundtrip(h, GET("/stats?format=xml"), &r);
    assert_int_equal(r.status, 400);
    tt_httpfix_response_done(&r);

    /* The target is split by http-parser: another parameter first, a percent-encoded
     * value, a fragment, the absolute form. */
    static const char *const prom[] = {
        GET("/stats?x=1&format=prometheus"),
        GET("/stats?format=%70rometheus"),
        GET("/stats?format=prometheus#frag"),
        GET("http://localhost/stats?format=prometheus"),
    };
    for (size_t i = 0; i < sizeof(prom) / sizeof(prom[0]); i++) {
        roundtrip(h, prom[i], &r);
        if (r.status != 200 || strstr(r.head, "text/plain") == NULL)
            fail_msg("%s: %d %s", prom[i], r.status, r.head);
        tt_httpfix_response_done(&r);
    }
    /* The path alone decides the route: a query never leaks into it. */
    roundtrip(h, GET("/live?stats"), &r);
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
    /* Malformed: a bad escape, a repeated key, a target that is no URL. */
    roundtrip(h, GET("/stats?format=%zz"), &r);
    assert_int_equal(r.status, 400);
    tt_httpfix_response_done(&r);
    roundtrip(h, GET("/stats?format=json&format=prometheus"), &r);
    assert_int_equal(r.status, 400);
    tt_httpfix_response_done(&r);
    roundtrip(h, GET("?format=json"), &r);
    assert_int_equal(r.status, 400);
    tt_httpfix_response_done(&r);
}

static void test_admin_certs_and_policy(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_response r;
    json_t *doc;

    roundtrip(h, GET("/certs"), &r);
    assert_int_equal(r.status, 200);
    doc = json_loads(r.body, 0, NULL);
    assert_non_null(doc);
    assert_true(json_is_null(json_object_get(doc, "leaf")));
    json_decref(doc);
    tt_httpfix_response_done(&r);

    roundtrip(h, GET("/policy"), &r);
    assert_int_equal(r.status, 200);
    doc = json_loads(r.body, 0, NULL);
    assert_non_null(doc);
    assert_non_null(json_object_get(doc, "policy"));
    assert_true(json_is_null(json_object_get(doc, "policy")));
    json_decref(doc);
    tt_httpfix_response_done(&r);

    __atomic_store_n(&h->with_policy, 1, __ATOMIC_SEQ_CST);
    roundtrip(h, GET("/policy"), &r);
    assert_int_equal(r.status, 200);
    doc = json_loads(r.body, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(doc, "marker")), 42);
    json_decref(doc);
    tt_httpfix_response_done(&r);
}

static void test_admin_not_found(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_response r;
    char req[4096];

    roundtrip(h, GET("/nope"), &r);
    assert_int_equal(r.status, 404);
    tt_httpfix_response_done(&r);
    roundtrip(h, GET("/stats/"), &r);
    assert_int_equal(r.status, 404);
    tt_httpfix_response_done(&r);

    /* A URL longer than any route. */
    snprintf(req, sizeof(req), "GET /%03000d HTTP/1.1\r\n\r\n", 1);
    roundtrip(h, req, &r);
    assert_int_equal(r.status, 414);
    tt_httpfix_response_done(&r);
}

static void test_admin_wrong_method(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_response r;

    roundtrip(h, "POST /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n", &r);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.head, "\r\nAllow: GET, HEAD\r\n"));
    tt_httpfix_response_done(&r);

    roundtrip(h, GET("/quitquitquit"), &r);
    assert_int_equal(r.status, 405);
    assert_non_null(strstr(r.head, "\r\nAllow: POST\r\n"));
    tt_httpfix_response_done(&r);
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 0);

    roundtrip(h, "DELETE /live HTTP/1.1\r\n\r\n", &r);
    assert_int_equal(r.status, 405);
    tt_httpfix_response_done(&r);
}

static void test_admin_head(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;

    /* HEAD answers the headers only; the next response follows right after them. */
    tt_httpfix_sends(c, "HEAD /live HTTP/1.1\r\n\r\n" GET("/ready"));
    assert_true(tt_httpfix_read_response(c, &r, true));
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "Content-Length: 5\r\n"));
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_string_equal(r.body, "ready\n");
    tt_httpfix_response_done(&r);
    tt_httpfix_client_free(c);
}

static void wait_for(int *counter, int value)
{
    for (int i = 0; i < 500 && __atomic_load_n(counter, __ATOMIC_SEQ_CST) < value; i++)
        usleep(10000);
}

static void test_admin_quit(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_response r;

    roundtrip(h, "POST /quitquitquit HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    tt_httpfix_response_done(&r);
    wait_for(&h->quit_calls, 1);
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 1);
}

static void test_admin_quit_closes_admin(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *idle = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;

    /* The runtime's quit closes the admin: the answer still arrives, every client is
     * closed and the loop runs out of handles (teardown joins it). */
    tt_httpfix_sends(idle, GET("/live"));
    assert_true(tt_httpfix_read_response(idle, &r, false));
    tt_httpfix_response_done(&r);
    __atomic_store_n(&h->quit_closes, 1, __ATOMIC_SEQ_CST);
    roundtrip(h, "POST /quitquitquit HTTP/1.1\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok\n");
    tt_httpfix_response_done(&r);
    wait_for(&h->quit_calls, 1);
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 1);
    assert_true(tt_httpfix_closed_by_server(idle));
    tt_httpfix_client_free(idle);
}

static void test_admin_garbage(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;
    static const char junk[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n";

    tt_httpfix_send(c, junk, sizeof(junk) - 1);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.head, "Connection: close\r\n"));
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_closed_by_server(c));
    tt_httpfix_client_free(c);

    /* A bad header line after a good request line. */
    c = tt_httpfix_connect(h->port, 0);
    tt_httpfix_sends(c, "GET /live HTTP/1.1\r\nBad Header\r\n\r\n");
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 400);
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_closed_by_server(c));
    tt_httpfix_client_free(c);

    /* The server survives both. */
    roundtrip(h, GET("/live"), &r);
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
}

static void test_admin_oversized_headers(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;
    static char req[24000];
    const size_t big = 20000;
    static const char prefix[] = "GET /live HTTP/1.1\r\nX-Big: ";
    const size_t off = sizeof(prefix) - 1;
    int n;

    memcpy(req, prefix, off);
    memset(req + off, 'a', big);
    strcpy(req + off + big, "\r\n\r\n");
    tt_httpfix_sends(c, req);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 431);
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_closed_by_server(c));
    tt_httpfix_client_free(c);

    /* Too many header lines, each small. */
    c = tt_httpfix_connect(h->port, 0);
    n = sprintf(req, "GET /live HTTP/1.1\r\n");
    for (int i = 0; i < 150; i++)
        n += sprintf(req + n, "X-%d: v\r\n", i);
    strcpy(req + n, "\r\n");
    tt_httpfix_sends(c, req);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 431);
    tt_httpfix_response_done(&r);
    tt_httpfix_client_free(c);
}

static void test_admin_body_too_large(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;
    char chunk[8192 + 32];
    int n;

    tt_httpfix_sends(c, "POST /quitquitquit HTTP/1.1\r\nContent-Length: 100000\r\n\r\n");
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 413);
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_closed_by_server(c));
    tt_httpfix_client_free(c);

    /* Chunked, so the size is only known while it arrives. */
    c = tt_httpfix_connect(h->port, 0);
    tt_httpfix_sends(c, "POST /quitquitquit HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    n = sprintf(chunk, "2000\r\n");
    memset(chunk + n, 'z', 8192);
    strcpy(chunk + n + 8192, "\r\n");
    for (int i = 0; i < 9; i++)
        tt_httpfix_sends(c, chunk);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 413);
    tt_httpfix_response_done(&r);
    tt_httpfix_client_free(c);
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 0);
}

static void test_admin_pipelined(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;

    tt_httpfix_sends(c, GET("/live") GET("/ready") GET("/nope"));
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_string_equal(r.body, "live\n");
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_string_equal(r.body, "ready\n");
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 404);
    tt_httpfix_response_done(&r);
    tt_httpfix_client_free(c);
}

struct sender {
    struct tt_httpfix_client *c;
    const char *data;
    size_t len;
};

static void *sender_thread(void *p)
{
    struct sender *snd = p;

    tt_httpfix_send(snd->c, snd->data, snd->len);
    return NULL;
}

static void test_admin_pipelined_backpressure(void **state)
{
    struct harness *h = *state;
    /* A small receive window keeps the kernel from absorbing all the answers. */
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 16384);
    struct tt_httpfix_response r;
    const int n = 400;
    size_t len = strlen(GET("/stats"));
    char *reqs = malloc(len * n + 1);
    struct sender snd = {c, reqs, len * n};
    int seen = -1, stable = 0;
    pthread_t t;

    assert_non_null(reqs);
    for (int i = 0; i < n; i++)
        memcpy(reqs + (size_t)i * len, GET("/stats"), len);
    /* 200 peers make each answer about 30 KB: 12 MB in all, more than the kernel's
     * buffers (4 MiB at most here) and the admin's 1 MiB write-queue bound together. */
    for (int i = 0; i < 200; i++) {
        char id[64];

        snprintf(id, sizeof(id), "spiffe://td/ns/n/sa/peer-%d", i);
        tt_metrics_peer_add(h->metrics, id, 1, 1, false);
    }
    /* The requests go from another thread: the server stops reading them while it
     * waits for its answers to drain, so a single thread would deadlock. */
    assert_int_equal(pthread_create(&t, NULL, sender_thread, &snd), 0);

    /* Without reading anything, wait for the server to stop rendering: it must stop
     * well before the last request, which it has not even read yet. */
    for (int i = 0; i < 400 && stable < 5; i++) {
        int now = __atomic_load_n(&h->get_views, __ATOMIC_SEQ_CST);

        stable = now == seen ? stable + 1 : 0;
        seen = now;
        usleep(100000);
    }
    assert_int_equal(stable, 5);
    assert_true(seen > 0);
    assert_true(seen < n);

    /* Reading lets it resume: every request is answered, in order. */
    for (int i = 0; i < n; i++) {
        assert_true(tt_httpfix_read_response(c, &r, false));
        assert_int_equal(r.status, 200);
        assert_true(r.body_len > 20000);
        tt_httpfix_response_done(&r);
    }
    pthread_join(t, NULL);
    free(reqs);
    tt_httpfix_sends(c, GET("/live"));
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_string_equal(r.body, "live\n");
    tt_httpfix_response_done(&r);
    tt_httpfix_client_free(c);
}

static void test_admin_connection_close(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;

    /* The request after "Connection: close" is not answered. */
    tt_httpfix_sends(c, "GET /live HTTP/1.1\r\nConnection: close\r\n\r\n" GET("/ready"));
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "Connection: close\r\n"));
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_closed_by_server(c));
    assert_int_equal(c->len, 0);
    tt_httpfix_client_free(c);

    /* HTTP/1.0 closes, even when it asks for keep-alive. */
    c = tt_httpfix_connect(h->port, 0);
    tt_httpfix_sends(c, "GET /live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.head, "Connection: close\r\n"));
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_closed_by_server(c));
    tt_httpfix_client_free(c);
}

static void test_admin_half_close(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *c = tt_httpfix_connect(h->port, 0);
    struct tt_httpfix_response r;

    /* A client that sends its requests and shuts its side still gets its answers. */
    tt_httpfix_sends(c, GET("/live") GET("/stats"));
    shutdown(c->fd, SHUT_WR);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_string_equal(r.body, "live\n");
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
    assert_true(tt_httpfix_closed_by_server(c));
    tt_httpfix_client_free(c);
}

/* A client connected to the admin from the loopback address src (e.g. "127.0.0.2"), so
 * that a test can play several sources. */
static struct tt_httpfix_client *connect_from(int port, const char *src)
{
    struct sockaddr_in from = {.sin_family = AF_INET};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(inet_pton(AF_INET, src, &from.sin_addr), 1);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&from, sizeof(from)), 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0);
    return tt_httpfix_client_adopt(fd);
}

/* True when the server closes c (EOF or reset) within ms milliseconds; c must have no
 * answer left unread. */
static bool closed_within(struct tt_httpfix_client *c, int ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};

    if (poll(&p, 1, ms) <= 0)
        return false;
    return tt_httpfix_closed_by_server(c);
}

/* GET /live on c answers 200. */
static void assert_live(struct tt_httpfix_client *c)
{
    struct tt_httpfix_response r;

    tt_httpfix_sends(c, GET("/live"));
    assert_true(tt_httpfix_read_response(c, &r, false));
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
}

/* Slowloris from four addresses fills all 64 slots (16 each, the per-source bound) with
 * connections that never finish a request: a newcomer is still answered at once, and
 * each newcomer closes the slow connection that has waited longest. */
static void test_admin_slots_total(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *slow[64], *c[3];
    char src[32];

    for (int i = 0; i < 64; i++) {
        snprintf(src, sizeof(src), "127.0.0.%d", 2 + i / 16);
        slow[i] = connect_from(h->port, src);
        tt_httpfix_sends(slow[i], "GET /live HTTP/1.1\r\n"); /* and never the rest */
    }
    usleep(200000);
    for (int i = 0; i < 64; i++)
        assert_false(closed_within(slow[i], 0)); /* all held: within both bounds */

    /* Newcomers that stay (keep-alive): each needs a slot of its own. */
    for (int k = 0; k < 3; k++) {
        snprintf(src, sizeof(src), "127.0.0.%d", 10 + k);
        c[k] = connect_from(h->port, src);
        assert_live(c[k]);
        assert_true(closed_within(slow[k], 1000)); /* the oldest made room */
    }
    assert_false(closed_within(slow[3], 0));
    assert_false(closed_within(slow[63], 0));
    for (int k = 0; k < 3; k++) {
        assert_live(c[k]);
        tt_httpfix_client_free(c[k]);
    }
    for (int i = 0; i < 64; i++)
        tt_httpfix_client_free(slow[i]);
}

/* 50 slow connections from one address: it keeps 16 slots (its newest), the others are
 * closed, and another address's keep-alive connection is never pushed out. */
static void test_admin_slots_per_source(void **state)
{
    struct harness *h = *state;
    struct tt_httpfix_client *slow[50], *mine = connect_from(h->port, "127.0.0.1");
    int open = 0;

    assert_live(mine); /* then idle between requests: a connection others may not take */
    for (int i = 0; i < 50; i++) {
        slow[i] = connect_from(h->port, "127.0.0.2");
        tt_httpfix_sends(slow[i], "G");
    }
    usleep(300000);
    for (int i = 0; i < 50; i++) {
        bool closed = closed_within(slow[i], 0);

        open += !closed;
        assert_true(closed == (i < 34)); /* the oldest 34 made room, in order */
    }
    assert_int_equal(open, 16);
    assert_live(mine);
    for (int i = 0; i < 50; i++)
        tt_httpfix_client_free(slow[i]);
    tt_httpfix_client_free(mine);
}

/* Seconds since t0. */
static double since(const struct timeval *t0)
{
    struct timeval t1;

    gettimeofday(&t1, NULL);
    return (double)(t1.tv_sec - t0->tv_sec) + (double)(t1.tv_usec - t0->tv_usec) / 1e6;
}

/* The deadlines, with every client trickling a byte every 300 ms so that none is ever
 * idle: a request head within 5 s of the accept (silent, or trickled), a body within
 * 10 s of its head, a client that had its answer and lingers within 2 s, and a keep-alive
 * connection between requests after 10 s without a byte (the idle time). */
static void test_admin_deadlines(void **state)
{
    enum { SILENT, HEAD, BODY, LINGER, IDLE, N };
    /* A silent connection is accepted only after the kernel's TCP_DEFER_ACCEPT (about
     * 1 to 3 s), and its head deadline runs from there. */
    static const double lo[N] = {5.0, 5.0, 10.0, 1.9, 10.0};
    static const double hi[N] = {9.5, 6.5, 11.5, 3.5, 11.5};
    struct harness *h = *state;
    struct tt_httpfix_client *c[N];
    struct tt_httpfix_response r;
    struct timeval t0;
    double closed_at[N] = {0};
    int left = N;

    for (int i = 0; i < N; i++)
        c[i] = tt_httpfix_connect(h->port, 0);
    gettimeofday(&t0, NULL);
    tt_httpfix_sends(c[HEAD], "GET /live HTTP/1.1\r\nX-Slow: ");
    tt_httpfix_sends(c[BODY], "POST /quitquitquit HTTP/1.1\r\nHost: localhost\r\n"
                              "Content-Length: 1000\r\n\r\n");
    tt_httpfix_sends(c[LINGER], "GARBAGE\r\n\r\n");
    assert_true(tt_httpfix_read_response(c[LINGER], &r, false));
    assert_int_equal(r.status, 400);
    tt_httpfix_response_done(&r);
    assert_live(c[IDLE]);

    while (left > 0 && since(&t0) < 14.0) {
        usleep(300000);
        for (int i = 0; i < N; i++) {
            if (closed_at[i] != 0)
                continue;
            /* A lingering client already has the server's FIN: it learns of the close
             * when a byte it sends meets a reset. */
            if (i != SILENT && i != IDLE && send(c[i]->fd, "a", 1, MSG_NOSIGNAL) < 0 &&
                (errno == EPIPE || errno == ECONNRESET)) {
                closed_at[i] = since(&t0);
                left--;
            } else if (i != LINGER && closed_within(c[i], 0)) {
                closed_at[i] = since(&t0);
                left--;
            }
        }
    }
    for (int i = 0; i < N; i++) {
        print_message("client %d closed after %.2f s\n", i, closed_at[i]);
        if (closed_at[i] < lo[i] || closed_at[i] > hi[i])
            fail_msg("client %d closed at %.2f s, expected %.1f..%.1f", i, closed_at[i], lo[i],
                     hi[i]);
        tt_httpfix_client_free(c[i]);
    }
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 0);
}

/* DNS rebinding: on a loopback address only requests for localhost or a loopback
 * address are answered; a page at evil.example re-pointed at 127.0.0.1 gets 421 and a
 * JSON error, before any route runs (its POST /quitquitquit does nothing). */
static void test_admin_host_check(void **state)
{
    static const char *const good[] = {
        "localhost",   "localhost:15000", "LocalHost", "localhost.", "127.0.0.1",
        "127.0.0.1:1", "127.9.8.7:65535", "[::1]",     "[::1]:80",   "[::ffff:127.0.0.1]:80",
    };
    static const char *const bad[] = {
        "evil.example",
        "evil.example:15000",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "10.0.0.1",
        "192.0.2.1:15000",
        "[::2]",
        "[fe80::1]:80",
        "0x7f.0.0.1",
        "2130706433",
        "127.1",
        "localhost:",
        "localhost:x",
        "localhost:123456",
        "[::1",
        "[::1]x",
        "",
        "[]",
        "a:1:2",
        "::1",
    };
    struct harness *h = *state;
    struct tt_httpfix_response r;
    char req[512];

    for (size_t i = 0; i < TT_ARRAY_SIZE(good); i++) {
        snprintf(req, sizeof(req), "GET /policy HTTP/1.1\r\nHost: %s\r\n\r\n", good[i]);
        roundtrip(h, req, &r);
        if (r.status != 200)
            fail_msg("Host %s: %d", good[i], r.status);
        tt_httpfix_response_done(&r);
    }
    for (size_t i = 0; i < TT_ARRAY_SIZE(bad); i++) {
        snprintf(req, sizeof(req), "GET /ready HTTP/1.1\r\nHost: %s\r\n\r\n", bad[i]);
        roundtrip(h, req, &r);
        if (r.status != 421)
            fail_msg("Host \"%s\": %d, expected 421", bad[i], r.status);
        assert_non_null(strstr(r.head, "Content-Type: application/json\r\n"));
        assert_non_null(strstr(r.body, "\"error\": \"Host header"));
        assert_non_null(strstr(r.body, "DNS rebinding"));
        tt_httpfix_response_done(&r);
    }
    /* The refused value is shown, escaped: the answer stays JSON. */
    roundtrip(h, "GET /ready HTTP/1.1\r\nHost: \"evil\\\r\n\r\n", &r);
    assert_int_equal(r.status, 421);
    assert_non_null(strstr(r.body, "\"error\": \"Host header \\\"\\\"evil\\\\\\\" refused"));
    tt_httpfix_response_done(&r);

    /* The attack that matters, and two Hosts (which one would count?). */
    roundtrip(h, "POST /quitquitquit HTTP/1.1\r\nHost: evil.example:15000\r\n\r\n", &r);
    assert_int_equal(r.status, 421);
    tt_httpfix_response_done(&r);
    roundtrip(h, "POST /quitquitquit HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
              &r);
    assert_int_equal(r.status, 400);
    tt_httpfix_response_done(&r);
    usleep(100000);
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 0);

    /* HTTP/1.0 without Host: no browser sends it, so it passes. */
    roundtrip(h, "GET /ready HTTP/1.0\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
}

/* Cross-site request forgery: what a web page can make a browser send to
 * POST /quitquitquit (a form, or fetch() in no-cors mode; both carry Origin) is refused
 * with 403 and a JSON error, and the sidecar does not quit; curl's plain POST works. */
static void test_admin_csrf(void **state)
{
    static const char *const forged[] = {
        "Origin: http://evil.example\r\n",
        "Origin: null\r\n",
        "Origin: http://localhost:15000\r\n", /* even the same origin: a browser's */
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\na=b",
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 0\r\n",
        "Content-Type: TEXT/PLAIN;charset=UTF-8\r\nContent-Length: 1\r\n\r\nx",
        "Content-Type:  text/plain \r\n",
    };
    struct harness *h = *state;
    struct tt_httpfix_response r;
    char req[512];

    for (size_t i = 0; i < TT_ARRAY_SIZE(forged); i++) {
        bool has_body = strstr(forged[i], "\r\n\r\n") != NULL;

        snprintf(req, sizeof(req), "POST /quitquitquit HTTP/1.1\r\nHost: localhost:%d\r\n%s%s",
                 h->port, forged[i], has_body ? "" : "\r\n");
        roundtrip(h, req, &r);
        if (r.status != 403)
            fail_msg("forged POST %zu: %d, expected 403", i, r.status);
        assert_non_null(strstr(r.head, "Content-Type: application/json\r\n"));
        assert_non_null(strstr(r.body, "\"error\": \"refused: a request that changes state"));
        tt_httpfix_response_done(&r);
    }
    usleep(100000);
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 0);

    /* A read with Origin is fine (nothing changes), and so is a JSON POST. */
    roundtrip(h, "GET /ready HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
    roundtrip(h,
              "POST /quitquitquit HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
              "application/json\r\nContent-Length: 2\r\n\r\n{}",
              &r);
    assert_int_equal(r.status, 200);
    tt_httpfix_response_done(&r);
    wait_for(&h->quit_calls, 1);
    assert_int_equal(__atomic_load_n(&h->quit_calls, __ATOMIC_SEQ_CST), 1);
}

static void test_admin_start_errors(void **state)
{
    struct harness *h = *state;
    uv_loop_t loop;
    struct tt_addr addr;
    char text[64];
    int err = 0;

    /* The harness' port is taken. */
    assert_int_equal(uv_loop_init(&loop), 0);
    snprintf(text, sizeof(text), "127.0.0.1:%d", h->port);
    assert_int_equal(tt_addr_parse(text, 0, &addr), 0);
    assert_null(tt_admin_new(&loop, &addr, &ops, h, 0, &err));
    assert_int_equal(err, UV_EADDRINUSE);
    /* The failed server's memory goes with its close callback. */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    /* An address that is not ours. */
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(tt_addr_parse("192.0.2.1:0", 1, &addr), 0);
    err = 0;
    assert_null(tt_admin_new(&loop, &addr, &ops, h, 0, &err));
    assert_int_equal(err, UV_EADDRNOTAVAIL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);

    tt_admin_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_admin_live, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_ready_states, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_stats_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_stats_prometheus, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_certs_and_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_wrong_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_quit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_quit_closes_admin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_oversized_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_body_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_pipelined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_pipelined_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_connection_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_slots_total, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_slots_per_source, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_deadlines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_host_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_csrf, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admin_start_errors, setup, teardown),
    };

    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
