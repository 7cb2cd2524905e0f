/* Unit tests for metrics.c: buckets, per-worker summing, peers and the failure ring. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/errors.h"
#include "metrics/metrics.h"

static void test_metrics_reason_names(void **state)
{
    assert_string_equal(tt_hs_reason_name(TT_HS_NO_CERT), "no_cert");
    assert_string_equal(tt_hs_reason_name(TT_HS_UNKNOWN_CA), "unknown_ca");
    assert_string_equal(tt_hs_reason_name(TT_HS_EXPIRED), "expired");
    assert_string_equal(tt_hs_reason_name(TT_HS_NOT_YET_VALID), "not_yet_valid");
    assert_string_equal(tt_hs_reason_name(TT_HS_BAD_SAN), "bad_san");
    assert_string_equal(tt_hs_reason_name(TT_HS_WRONG_IDENTITY), "wrong_identity");
    assert_string_equal(tt_hs_reason_name(TT_HS_REVOKED), "revoked");
    assert_string_equal(tt_hs_reason_name(TT_HS_TIMEOUT), "timeout");
    assert_string_equal(tt_hs_reason_name(TT_HS_PROTOCOL), "protocol");
    assert_string_equal(tt_hs_reason_name((enum tt_hs_reason)99), "protocol");
    assert_string_equal(tt_hs_reason_name((enum tt_hs_reason) - 1), "protocol");
}

static void test_metrics_reason_from_err(void **state)
{
    assert_int_equal(tt_hs_reason_from_err(TT_E_NO_CERT), TT_HS_NO_CERT);
    assert_int_equal(tt_hs_reason_from_err(TT_E_UNKNOWN_CA), TT_HS_UNKNOWN_CA);
    assert_int_equal(tt_hs_reason_from_err(TT_E_EXPIRED), TT_HS_EXPIRED);
    assert_int_equal(tt_hs_reason_from_err(TT_E_NOT_YET_VALID), TT_HS_NOT_YET_VALID);
    assert_int_equal(tt_hs_reason_from_err(TT_E_BAD_SAN), TT_HS_BAD_SAN);
    assert_int_equal(tt_hs_reason_from_err(TT_E_WRONG_IDENTITY), TT_HS_WRONG_IDENTITY);
    assert_int_equal(tt_hs_reason_from_err(TT_E_REVOKED), TT_HS_REVOKED);
    assert_int_equal(tt_hs_reason_from_err(TT_E_TIMEOUT), TT_HS_TIMEOUT);
    assert_int_equal(tt_hs_reason_from_err(TT_E_PROTOCOL), TT_HS_PROTOCOL);
    assert_int_equal(tt_hs_reason_from_err(TT_E_TLS), TT_HS_PROTOCOL);
    assert_int_equal(tt_hs_reason_from_err(-12345), TT_HS_PROTOCOL);
    assert_int_equal(tt_hs_reason_from_err(0), TT_HS_PROTOCOL);
}

static void test_metrics_new_zeroed(void **state)
{
    struct tt_metrics *m = tt_metrics_new(3);

    assert_non_null(m);
    assert_int_equal(m->n_listeners, 3);
    assert_int_equal(m->listeners[2].accepted, 0);
    assert_int_equal(m->n_peers, 0);
    assert_int_equal(m->failures_total, 0);
    tt_metrics_free(m);
    tt_metrics_free(NULL);

    m = tt_metrics_new(0);
    assert_non_null(m);
    assert_int_equal(m->n_listeners, 0);
    tt_metrics_free(m);
}

static void test_metrics_observe_buckets(void **state)
{
    struct tt_hist h = {0};

    assert_int_equal(tt_hist_bounds_us[0], 100);
    assert_int_equal(tt_hist_bounds_us[TT_HIST_BUCKETS - 2], 10000000);
    tt_metrics_observe(&h, 0);        /* bucket 0 */
    tt_metrics_observe(&h, 100);      /* bucket 0: bounds are inclusive */
    tt_metrics_observe(&h, 101);      /* bucket 1 (<= 250) */
    tt_metrics_observe(&h, 999999);   /* bucket 12 (<= 1000000) */
    tt_metrics_observe(&h, 10000000); /* bucket 15 */
    tt_metrics_observe(&h, 10000001); /* +Inf */
    assert_int_equal(h.buckets[0], 2);
    assert_int_equal(h.buckets[1], 1);
    assert_int_equal(h.buckets[12], 1);
    assert_int_equal(h.buckets[15], 1);
    assert_int_equal(h.buckets[16], 1);
    assert_int_equal(h.count, 6);
    assert_int_equal(h.sum_us, 0 + 100 + 101 + 999999 + 10000000 + 10000001);
}

static void test_metrics_sum_two_workers(void **state)
{
    struct tt_metrics *w[2] = {tt_metrics_new(2), tt_metrics_new(2)};
    struct tt_metrics_sum sum;

    assert_non_null(w[0]);
    assert_non_null(w[1]);
    TT_COUNTER_ADD(w[0]->listeners[0].accepted, 5);
    TT_COUNTER_ADD(w[1]->listeners[0].accepted, 7);
    TT_COUNTER_ADD(w[0]->listeners[1].bytes_in, 1000);
    TT_COUNTER_ADD(w[1]->listeners[1].bytes_in, 24);
    TT_COUNTER_ADD(w[1]->listeners[1].denied, 3);
    tt_metrics_observe(&w[0]->listeners[0].handshake_us, 200);
    tt_metrics_observe(&w[1]->listeners[0].handshake_us, 300);
    tt_metrics_hs_failure(w[0], 1, TT_HS_EXPIRED, "10.0.0.1:5", NULL, NULL, NULL);
    tt_metrics_hs_failure(w[1], 1, TT_HS_EXPIRED, "10.0.0.2:5", NULL, NULL, NULL);

    assert_int_equal(tt_metrics_sum(w, 2, &sum), 0);
    assert_int_equal(sum.n_listeners, 2);
    assert_int_equal(sum.listeners[0].accepted, 12);
    assert_int_equal(sum.listeners[1].accepted, 0);
    assert_int_equal(sum.listeners[1].bytes_in, 1024);
    assert_int_equal(sum.listeners[1].denied, 3);
    assert_int_equal(sum.listeners[0].handshake_us.count, 2);
    assert_int_equal(sum.listeners[0].handshake_us.sum_us, 500);
    assert_int_equal(sum.listeners[0].handshake_us.buckets[1], 1); /* 200 <= 250 */
    assert_int_equal(sum.listeners[0].handshake_us.buckets[2], 1); /* 300 <= 500 */
    assert_int_equal(sum.listeners[1].hs_failures[TT_HS_EXPIRED], 2);
    assert_int_equal(sum.listeners[0].hs_failures[TT_HS_EXPIRED], 0);
    assert_int_equal(sum.n_failures, 2);
    tt_metrics_sum_done(&sum);
    assert_null(sum.listeners);
    assert_int_equal(sum.n_listeners, 0);

    tt_metrics_free(w[0]);
    tt_metrics_free(w[1]);
}

static void test_metrics_sum_no_workers(void **state)
{
    struct tt_metrics_sum sum;

    assert_int_equal(tt_metrics_sum(NULL, 0, &sum), 0);
    assert_int_equal(sum.n_listeners, 0);
    assert_int_equal(sum.n_peers, 0);
    assert_int_equal(sum.n_failures, 0);
    tt_metrics_sum_done(&sum);
}

static void test_metrics_peer_merge(void **state)
{
    struct tt_metrics *w[2] = {tt_metrics_new(1), tt_metrics_new(1)};
    struct tt_metrics_sum sum;

    tt_metrics_peer_add(w[0], "spiffe://td/ns/b/sa/b", 10, 20, false);
    tt_metrics_peer_add(w[0], "spiffe://td/ns/a/sa/a", 1, 2, true);
    tt_metrics_peer_add(w[1], "spiffe://td/ns/b/sa/b", 5, 6, true);
    tt_metrics_peer_add(w[1], "spiffe://td/ns/b/sa/b", 0, 0, false);
    tt_metrics_peer_add(w[1], NULL, 7, 7, true);
    tt_metrics_peer_add(w[1], "", 1, 1, false);
    assert_int_equal(w[0]->n_peers, 2);
    assert_int_equal(w[1]->n_peers, 2);

    assert_int_equal(tt_metrics_sum(w, 2, &sum), 0);
    assert_int_equal(sum.n_peers, 3);
    /* sorted by id */
    assert_string_equal(sum.peers[0].id, "spiffe://td/ns/a/sa/a");
    assert_int_equal(sum.peers[0].connections, 1);
    assert_int_equal(sum.peers[0].denied, 1);
    assert_string_equal(sum.peers[1].id, "spiffe://td/ns/b/sa/b");
    assert_int_equal(sum.peers[1].connections, 3);
    assert_int_equal(sum.peers[1].denied, 1);
    assert_int_equal(sum.peers[1].bytes_in, 15);
    assert_int_equal(sum.peers[1].bytes_out, 26);
    assert_string_equal(sum.peers[2].id, "unknown");
    assert_int_equal(sum.peers[2].connections, 2);
    assert_int_equal(sum.peers[2].denied, 1);
    assert_int_equal(sum.peers[2].bytes_in, 8);
    tt_metrics_sum_done(&sum);
    tt_metrics_free(w[0]);
    tt_metrics_free(w[1]);
}

static void test_metrics_peer_overflow_other(void **state)
{
    struct tt_metrics *m = tt_metrics_new(1);
    struct tt_metrics *w[1] = {m};
    struct tt_metrics_sum sum;
    char id[64];
    bool found_other = false;

    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof(id), "spiffe://td/ns/n/sa/s%03d", i);
        tt_metrics_peer_add(m, id, 1, 1, i % 2 == 0);
    }
    /* An identity that got a slot keeps it after the table filled up. */
    tt_metrics_peer_add(m, "spiffe://td/ns/n/sa/s000", 100, 0, false);
    assert_int_equal(m->n_peers, TT_METRICS_PEERS);

    assert_int_equal(tt_metrics_sum(w, 1, &sum), 0);
    assert_int_equal(sum.n_peers, TT_METRICS_PEERS);
    for (size_t i = 0; i < sum.n_peers; i++) {
        if (strcmp(sum.peers[i].id, "other") == 0) {
            found_other = true;
            /* 300 identities, TT_METRICS_PEERS - 1 with their own slot */
            assert_int_equal(sum.peers[i].connections, 300 - (TT_METRICS_PEERS - 1));
        }
        if (strcmp(sum.peers[i].id, "spiffe://td/ns/n/sa/s000") == 0) {
            assert_int_equal(sum.peers[i].connections, 2);
            assert_int_equal(sum.peers[i].bytes_in, 101);
        }
        assert_string_not_equal(sum.peers[i].id, "spiffe://td/ns/n/sa/s299");
    }
    assert_true(found_other);
    tt_metrics_sum_done(&sum);
    tt_metrics_free(m);
}

static void test_metrics_peer_truncated(void **state)
{
    struct tt_metrics *m = tt_metrics_new(1);
    char id[600];

    memset(id, 'x', sizeof(id) - 1);
    id[sizeof(id) - 1] = '\0';
    tt_metrics_peer_add(m, id, 1, 1, false);
    tt_metrics_peer_add(m, id, 1, 1, false);
    assert_int_equal(m->n_peers, 1);
    assert_int_equal(strlen(m->peers[0].id), sizeof(m->peers[0].id) - 1);
    assert_int_equal(m->peers[0].connections, 2);
    tt_metrics_free(m);
}

static void test_metrics_failure_ring_order(void **state)
{
    struct tt_metrics *m = tt_metrics_new(2);
    struct tt_metrics *w[1] = {m};
    struct tt_metrics_sum sum;
    char id[64];
    char longv[1000];

    for (int i = 0; i < 40; i++) {
        snprintf(id, sizeof(id), "spiffe://td/id%d", i);
        tt_metrics_hs_failure(m, 0, TT_HS_REVOKED, "1.2.3.4:1", id, "0A", "CN=ca");
    }
    assert_int_equal(m->failures_total, 40);
    assert_int_equal(m->listeners[0].hs_failures[TT_HS_REVOKED], 40);

    assert_int_equal(tt_metrics_sum(w, 1, &sum), 0);
    assert_int_equal(sum.n_failures, TT_METRICS_FAILURES);
    assert_string_equal(sum.failures[0].spiffe_id, "spiffe://td/id39");
    assert_string_equal(sum.failures[1].spiffe_id, "spiffe://td/id38");
    assert_string_equal(sum.failures[TT_METRICS_FAILURES - 1].spiffe_id, "spiffe://td/id8");
    assert_string_equal(sum.failures[0].serial, "0A");
    assert_string_equal(sum.failures[0].issuer, "CN=ca");
    assert_string_equal(sum.failures[0].peer_addr, "1.2.3.4:1");
    assert_int_equal(sum.failures[0].reason, TT_HS_REVOKED);
    assert_true(sum.failures[0].unix_ms > 1500000000000LL);
    tt_metrics_sum_done(&sum);

    /* Out-of-range listener: recorded but not counted; bad reason becomes protocol;
     * over-long strings are cut, NULLs become "". */
    memset(longv, 'y', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    tt_metrics_hs_failure(m, 7, (enum tt_hs_reason)42, longv, NULL, longv, longv);
    tt_metrics_hs_failure(m, -1, TT_HS_TIMEOUT, NULL, NULL, NULL, NULL);
    assert_int_equal(m->listeners[0].hs_failures[TT_HS_PROTOCOL], 0);
    assert_int_equal(m->listeners[1].hs_failures[TT_HS_PROTOCOL], 0);
    assert_int_equal(tt_metrics_sum(w, 1, &sum), 0);
    assert_int_equal(sum.failures[0].listener, -1);
    assert_int_equal(sum.failures[0].reason, TT_HS_TIMEOUT);
    assert_string_equal(sum.failures[0].peer_addr, "");
    assert_int_equal(sum.failures[1].listener, 7);
    assert_int_equal(sum.failures[1].reason, TT_HS_PROTOCOL);
    assert_int_equal(strlen(sum.failures[1].peer_addr), sizeof(sum.failures[1].peer_addr) - 1);
    assert_int_equal(strlen(sum.failures[1].serial), TT_SERIAL_MAX - 1);
    assert_string_equal(sum.failures[1].spiffe_id, "");
    tt_metrics_sum_done(&sum);
    tt_metrics_free(m);
}

static void test_metrics_failure_merge_by_time(void **state)
{
    struct tt_metrics *w[2] = {tt_metrics_new(1), tt_metrics_new(1)};
    struct tt_metrics_sum sum;
    const char *order[] = {"w1-b", "w0-b", "w1-a", "w0-a"};

    tt_metrics_hs_failure(w[0], 0, TT_HS_NO_CERT, NULL, "w0-a", NULL, NULL);
    tt_metrics_hs_failure(w[0], 0, TT_HS_NO_CERT, NULL, "w0-b", NULL, NULL);
    tt_metrics_hs_failure(w[1], 0, TT_HS_NO_CERT, NULL, "w1-a", NULL, NULL);
    tt_metrics_hs_failure(w[1], 0, TT_HS_NO_CERT, NULL, "w1-b", NULL, NULL);
    /* Craft the times so the two rings interleave. */
    w[0]->failures[0].unix_ms = 1000;
    w[0]->failures[1].unix_ms = 3000;
    w[1]->failures[0].unix_ms = 2000;
    w[1]->failures[1].unix_ms = 4000;

    assert_int_equal(tt_metrics_sum(w, 2, &sum), 0);
    assert_int_equal(sum.n_failures, 4);
    for (size_t i = 0; i < 4; i++)
        assert_string_equal(sum.failures[i].spiffe_id, order[i]);
    tt_metrics_sum_done(&sum);

    /* More than TT_METRICS_FAILURES in total: only the newest are kept. */
    for (int i = 0; i < TT_METRICS_FAILURES; i++)
        tt_metrics_hs_failure(w[1], 0, TT_HS_NO_CERT, NULL, "new", NULL, NULL);
    assert_int_equal(tt_metrics_sum(w, 2, &sum), 0);
    assert_int_equal(sum.n_failures, TT_METRICS_FAILURES);
    for (size_t i = 0; i < sum.n_failures; i++)
        assert_string_equal(sum.failures[i].spiffe_id, "new");
    tt_metrics_sum_done(&sum);
    tt_metrics_free(w[0]);
    tt_metrics_free(w[1]);
}

static void test_metrics_request_names(void **state)
{
    static const char *const names[] = {"GET",    "HEAD",  "POST",    "PUT",
                                        "DELETE", "PATCH", "OPTIONS", "CONNECT"};

    for (int i = 0; i < 8; i++) {
        assert_int_equal(tt_req_method_of(names[i]), i);
        assert_string_equal(tt_req_method_name(i), names[i]);
    }
    assert_int_equal(TT_REQ_CONNECT, 7);
    /* Exact and case-sensitive (RFC 9110 §9.1): anything else is "other". */
    assert_int_equal(tt_req_method_of("get"), TT_REQ_OTHER);
    assert_int_equal(tt_req_method_of("GETX"), TT_REQ_OTHER);
    assert_int_equal(tt_req_method_of("GE"), TT_REQ_OTHER);
    assert_int_equal(tt_req_method_of("PROPFIND"), TT_REQ_OTHER);
    assert_int_equal(tt_req_method_of(""), TT_REQ_OTHER);
    assert_int_equal(tt_req_method_of(NULL), TT_REQ_OTHER);
    assert_string_equal(tt_req_method_name(TT_REQ_OTHER), "other");
    assert_string_equal(tt_req_method_name(TT_REQ_METHOD__COUNT), "other");
    assert_string_equal(tt_req_method_name((enum tt_req_method) - 1), "other");

    assert_string_equal(tt_req_status_class_name(0), "none");
    assert_string_equal(tt_req_status_class_name(1), "1xx");
    assert_string_equal(tt_req_status_class_name(2), "2xx");
    assert_string_equal(tt_req_status_class_name(3), "3xx");
    assert_string_equal(tt_req_status_class_name(4), "4xx");
    assert_string_equal(tt_req_status_class_name(5), "5xx");
    assert_string_equal(tt_req_status_class_name(6), "none");
    assert_string_equal(tt_req_status_class_name(-1), "none");
    assert_int_equal(tt_req_status_class(0), 0);
    assert_int_equal(tt_req_status_class(99), 0);
    assert_int_equal(tt_req_status_class(100), 1);
    assert_int_equal(tt_req_status_class(204), 2);
    assert_int_equal(tt_req_status_class(399), 3);
    assert_int_equal(tt_req_status_class(431), 4);
    assert_int_equal(tt_req_status_class(599), 5);
    assert_int_equal(tt_req_status_class(600), 0);
    assert_int_equal(tt_req_status_class(-200), 0);
}

static void test_metrics_request_counts(void **state)
{
    struct tt_metrics *m = tt_metrics_new(2);
    struct tt_request_counters *c = &m->listeners[1].requests;
    struct tt_request_record r = {.method = "GET",
                                  .status = 200,
                                  .request_bytes = 0,
                                  .response_bytes = 120,
                                  .duration_us = 90};

    assert_non_null(m);
    tt_metrics_request(m, 1, "spiffe://td/ns/shop/sa/web", &r);
    tt_metrics_request(m, 1, "spiffe://td/ns/shop/sa/web", &r);
    r = (struct tt_request_record){.method = "POST",
                                   .status = 503,
                                   .request_bytes = 1000,
                                   .response_bytes = 50,
                                   .duration_us = 3000};
    tt_metrics_request(m, 1, "spiffe://td/ns/shop/sa/web", &r);
    r = (struct tt_request_record){
        .method = "DELETE", .status = 403, .response_bytes = 7, .duration_us = 10, .denied = true};
    tt_metrics_request(m, 1, "spiffe://td/ns/batch/sa/job", &r);
    r = (struct tt_request_record){.method = "BREW", .status = 0, .duration_us = 30000000};
    tt_metrics_request(m, 1, NULL, &r); /* no response: reset, timeout */
    r = (struct tt_request_record){.method = "get", .status = 101, .duration_us = 1};
    tt_metrics_request(m, 1, "", &r);

    assert_int_equal(c->by_method_status[TT_REQ_GET][2], 2);
    assert_int_equal(c->by_method_status[TT_REQ_POST][5], 1);
    assert_int_equal(c->by_method_status[TT_REQ_DELETE][4], 1);
    assert_int_equal(c->by_method_status[TT_REQ_OTHER][0], 1);
    assert_int_equal(c->by_method_status[TT_REQ_OTHER][1], 1);
    assert_int_equal(c->by_method_status[TT_REQ_GET][0], 0);
    assert_int_equal(c->request_bytes, 1000);
    assert_int_equal(c->response_bytes, 120 + 120 + 50 + 7);
    assert_int_equal(c->denied, 1);
    assert_int_equal(c->latency_us.count, 6);
    assert_int_equal(c->latency_us.sum_us, 90 + 90 + 3000 + 10 + 30000000 + 1);
    assert_int_equal(c->latency_us.buckets[0], 4);                   /* <= 100 us */
    assert_int_equal(c->latency_us.buckets[5], 1);                   /* <= 5 ms */
    assert_int_equal(c->latency_us.buckets[TT_HIST_BUCKETS - 1], 1); /* +Inf */
    /* Listener 0 untouched; connection counters untouched. */
    assert_int_equal(m->listeners[0].requests.by_method_status[TT_REQ_GET][2], 0);
    assert_int_equal(m->listeners[1].accepted, 0);
    assert_int_equal(m->listeners[1].denied, 0);

    /* Peers: one slot each, "none" for a caller without identity (NULL and ""). */
    assert_int_equal(m->n_peers, 3);
    assert_string_equal(m->peers[0].id, "spiffe://td/ns/shop/sa/web");
    assert_int_equal(m->peers[0].requests, 3);
    assert_int_equal(m->peers[0].requests_by_status[2], 2);
    assert_int_equal(m->peers[0].requests_by_status[5], 1);
    assert_int_equal(m->peers[0].connections, 0); /* requests are not connections */
    assert_string_equal(m->peers[1].id, "spiffe://td/ns/batch/sa/job");
    assert_int_equal(m->peers[1].requests_by_status[4], 1);
    assert_string_equal(m->peers[2].id, "none");
    assert_int_equal(m->peers[2].requests, 2);
    assert_int_equal(m->peers[2].requests_by_status[0], 1);
    assert_int_equal(m->peers[2].requests_by_status[1], 1);

    /* Out-of-range listener: nothing at all is counted. */
    r = (struct tt_request_record){.method = "GET", .status = 200, .response_bytes = 5};
    tt_metrics_request(m, 2, "spiffe://td/ns/x/sa/x", &r);
    tt_metrics_request(m, -1, "spiffe://td/ns/x/sa/x", &r);
    tt_metrics_request_refused(m, 2, NULL, TT_H1_R_BAD_CHUNK);
    assert_int_equal(m->n_peers, 3);
    assert_int_equal(m->peers[2].requests, 2);
    assert_int_equal(c->response_bytes, 297);
    tt_metrics_free(m);
}

static void test_metrics_request_refused(void **state)
{
    struct tt_metrics *m = tt_metrics_new(1);
    struct tt_request_counters *c = &m->listeners[0].requests;

    assert_non_null(m);
    assert_int_equal(TT_H1_R__COUNT, TT_H1_R_BAD_TRAILER + 1);
    tt_metrics_request_refused(m, 0, NULL, TT_H1_R_CL_AND_TE);
    tt_metrics_request_refused(m, 0, NULL, TT_H1_R_CL_AND_TE);
    tt_metrics_request_refused(m, 0, "spiffe://td/ns/a/sa/a", TT_H1_R_HEAD_TOO_LARGE); /* 431 */
    /* Not a refusal reason, or out of range: counted as "malformed". */
    tt_metrics_request_refused(m, 0, NULL, TT_H1_R_NONE);
    tt_metrics_request_refused(m, 0, NULL, TT_H1_R__COUNT);
    tt_metrics_request_refused(m, 0, NULL, (enum tt_h1_reason) - 3);

    assert_int_equal(c->refused[TT_H1_R_CL_AND_TE], 2);
    assert_int_equal(c->refused[TT_H1_R_HEAD_TOO_LARGE], 1);
    assert_int_equal(c->refused[TT_H1_R_MALFORMED], 3);
    assert_int_equal(c->refused[TT_H1_R_NONE], 0);
    /* Every refusal is also a request answered 4xx, under method "other". */
    assert_int_equal(c->by_method_status[TT_REQ_OTHER][4], 6);
    for (int k = 0; k < TT_REQ_STATUS_CLASSES; k++) {
        if (k != 4)
            assert_int_equal(c->by_method_status[TT_REQ_OTHER][k], 0);
    }
    assert_int_equal(c->latency_us.count, 0);
    assert_int_equal(c->denied, 0);
    assert_int_equal(m->n_peers, 2);
    assert_string_equal(m->peers[0].id, "none");
    assert_int_equal(m->peers[0].requests, 5);
    assert_int_equal(m->peers[0].requests_by_status[4], 5);
    assert_string_equal(m->peers[1].id, "spiffe://td/ns/a/sa/a");
    assert_int_equal(m->peers[1].requests_by_status[4], 1);
    tt_metrics_free(m);
}

static void test_metrics_request_sum_two_workers(void **state)
{
    struct tt_metrics *w[2] = {tt_metrics_new(2), tt_metrics_new(2)};
    struct tt_request_record get = {
        .method = "GET", .status = 200, .response_bytes = 10, .duration_us = 200};
    struct tt_request_record put = {
        .method = "PUT", .status = 404, .request_bytes = 3, .duration_us = 300};
    struct tt_metrics_sum sum;
    const struct tt_request_counters *c;

    assert_non_null(w[0]);
    assert_non_null(w[1]);
    tt_metrics_request(w[0], 0, "spiffe://td/ns/a/sa/a", &get);
    tt_metrics_request(w[1], 0, "spiffe://td/ns/a/sa/a", &get);
    tt_metrics_request(w[1], 0, NULL, &put);
    tt_metrics_request(w[0], 1, NULL, &put);
    tt_metrics_request_refused(w[0], 0, NULL, TT_H1_R_BAD_HOST);
    tt_metrics_request_refused(w[1], 0, NULL, TT_H1_R_BAD_HOST);
    tt_metrics_peer_add(w[1], "spiffe://td/ns/a/sa/a", 1, 2, false); /* a connection too */

    assert_int_equal(tt_metrics_sum(w, 2, &sum), 0);
    c = &sum.listeners[0].requests;
    assert_int_equal(c->by_method_status[TT_REQ_GET][2], 2);
    assert_int_equal(c->by_method_status[TT_REQ_PUT][4], 1);
    assert_int_equal(c->by_method_status[TT_REQ_OTHER][4], 2);
    assert_int_equal(c->refused[TT_H1_R_BAD_HOST], 2);
    assert_int_equal(c->request_bytes, 3);
    assert_int_equal(c->response_bytes, 20);
    assert_int_equal(c->latency_us.count, 3);
    assert_int_equal(c->latency_us.sum_us, 700);
    assert_int_equal(c->latency_us.buckets[1], 2); /* 200 <= 250 */
    assert_int_equal(c->latency_us.buckets[2], 1); /* 300 <= 500 */
    c = &sum.listeners[1].requests;
    assert_int_equal(c->by_method_status[TT_REQ_PUT][4], 1);
    assert_int_equal(c->by_method_status[TT_REQ_GET][2], 0);
    assert_int_equal(c->refused[TT_H1_R_BAD_HOST], 0);

    /* Peers merged by id across workers, the request counters with the rest. */
    assert_int_equal(sum.n_peers, 2);
    assert_string_equal(sum.peers[0].id, "none");
    assert_int_equal(sum.peers[0].requests, 4);
    assert_int_equal(sum.peers[0].requests_by_status[4], 4);
    assert_string_equal(sum.peers[1].id, "spiffe://td/ns/a/sa/a");
    assert_int_equal(sum.peers[1].requests, 2);
    assert_int_equal(sum.peers[1].requests_by_status[2], 2);
    assert_int_equal(sum.peers[1].connections, 1);
    assert_int_equal(sum.peers[1].bytes_out, 2);
    tt_metrics_sum_done(&sum);
    tt_metrics_free(w[0]);
    tt_metrics_free(w[1]);
}

/* A worker counting while another thread sums: the totals come out exact at the end
 * and never go backwards in between. */
struct writer_arg {
    struct tt_metrics *m;
    int n;
};

static void *writer(void *p)
{
    struct writer_arg *a = p;

    for (int i = 0; i < a->n; i++) {
        TT_COUNTER_ADD(a->m->listeners[0].accepted, 1);
        if (i % 100 == 0)
            tt_metrics_peer_add(a->m, "spiffe://td/x", 1, 0, false);
    }
    return NULL;
}

static void test_metrics_concurrent_sum(void **state)
{
    struct tt_metrics *m = tt_metrics_new(1);
    struct tt_metrics *w[1] = {m};
    struct writer_arg arg = {m, 200000};
    struct tt_metrics_sum sum;
    uint64_t last = 0;
    pthread_t t;

    assert_int_equal(pthread_create(&t, NULL, writer, &arg), 0);
    for (int i = 0; i < 200; i++) {
        assert_int_equal(tt_metrics_sum(w, 1, &sum), 0);
        assert_true(sum.listeners[0].accepted >= last);
        last = sum.listeners[0].accepted;
        tt_metrics_sum_done(&sum);
    }
    pthread_join(t, NULL);
    assert_int_equal(tt_metrics_sum(w, 1, &sum), 0);
    assert_int_equal(sum.listeners[0].accepted, 200000);
    assert_int_equal(sum.n_peers, 1);
    assert_int_equal(sum.peers[0].connections, 2000);
    tt_metrics_sum_done(&sum);
    tt_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_reason_names),
        cmocka_unit_test(test_metrics_reason_from_err),
        cmocka_unit_test(test_metrics_new_zeroed),
        cmocka_unit_test(test_metrics_observe_buckets),
        cmocka_unit_test(test_metrics_sum_two_workers),
        cmocka_unit_test(test_metrics_sum_no_workers),
        cmocka_unit_test(test_metrics_peer_merge),
        cmocka_unit_test(test_metrics_peer_overflow_other),
        cmocka_unit_test(test_metrics_peer_truncated),
        cmocka_unit_test(test_metrics_failure_ring_order),
        cmocka_unit_test(test_metrics_failure_merge_by_time),
        cmocka_unit_test(test_metrics_concurrent_sum),
        cmocka_unit_test(test_metrics_request_names),
        cmocka_unit_test(test_metrics_request_counts),
        cmocka_unit_test(test_metrics_request_refused),
        cmocka_unit_test(test_metrics_request_sum_two_workers),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
