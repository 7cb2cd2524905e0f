/* The per-worker balancer (net/balancer.h): spread over equal endpoints, preference for
 * fewer active connections and lower connect latency, ejection after a failed connect and
 * return after the backoff. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "net/balancer.h"
#include "snapshot/services.h"

struct fixture {
    struct tt_services *table;
    const struct tt_service *svc;
    struct tt_balancer *b;
};

/* A service 10.96.0.10:80 with n endpoints 10.0.0.{1..n}:8080. */
static void make(struct fixture *f, size_t n)
{
    struct tt_service_entry e[4];
    char eps[4][48];
    char err[256];
    struct tt_addr va;

    for (size_t i = 0; i < n; i++) {
        snprintf(eps[i], sizeof(eps[i]), "10.0.0.%zu:8080", i + 1);
        e[i] = (struct tt_service_entry){"10.96.0.10:80", eps[i], "spiffe://t/ep"};
    }
    f->table = tt_services_new(e, n, NULL, err, sizeof(err));
    assert_non_null(f->table);
    assert_int_equal(tt_addr_parse("10.96.0.10:80", TT_ADDR_NUMERIC, &va), 0);
    f->svc = tt_services_lookup(f->table, (const struct sockaddr *)&va.ss);
    assert_non_null(f->svc);
    assert_int_equal(f->svc->n_endpoints, n);
    f->b = tt_balancer_new(42);
    assert_non_null(f->b);
}

static void done(struct fixture *f)
{
    tt_balancer_free(f->b);
    tt_services_unref(f->table);
}

static const struct tt_addr *ep(struct fixture *f, int i)
{
    return &f->svc->endpoints[i].addr;
}

/* Sequential connections (each released before the next) to two equally fast endpoints
 * go to both, neither getting less than a third. */
static void test_spread_over_two(void **state)
{
    struct fixture f;
    int count[2] = {0, 0};

    (void)state;
    make(&f, 2);
    for (int i = 0; i < 1000; i++) {
        int k = tt_balancer_pick(f.b, f.svc, 0, 1000);
        assert_true(k == 0 || k == 1);
        count[k]++;
        tt_balancer_connected(f.b, ep(&f, k), 200 + (uint64_t)(i % 7) * 50);
        tt_balancer_released(f.b, ep(&f, k));
    }
    assert_true(count[0] > 333 && count[1] > 333);
    done(&f);
}

/* With one endpoint holding open connections, new ones go to the idle endpoint. */
static void test_prefers_fewer_active(void **state)
{
    struct fixture f;

    (void)state;
    make(&f, 2);
    /* Endpoint 0 gets three long-lived connections (picks forced by `tried`). */
    for (int i = 0; i < 3; i++)
        assert_int_equal(tt_balancer_pick(f.b, f.svc, 1u << 1, 0), 0);
    for (int i = 0; i < 50; i++) {
        int k = tt_balancer_pick(f.b, f.svc, 0, 0);
        assert_int_equal(k, 1);
        tt_balancer_released(f.b, ep(&f, k));
    }
    done(&f);
}

/* An endpoint whose connects take 20 ms loses to one taking 0.1 ms. */
static void test_prefers_lower_latency(void **state)
{
    struct fixture f;
    int slow = 0;

    (void)state;
    make(&f, 2);
    tt_balancer_connected(f.b, ep(&f, 0), 20000);
    tt_balancer_connected(f.b, ep(&f, 1), 100);
    /* Entries exist only once picked: pick each once to create them, then feed again. */
    tt_balancer_released(f.b, ep(&f, tt_balancer_pick(f.b, f.svc, 2, 0)));
    tt_balancer_released(f.b, ep(&f, tt_balancer_pick(f.b, f.svc, 1, 0)));
    tt_balancer_connected(f.b, ep(&f, 0), 20000);
    tt_balancer_connected(f.b, ep(&f, 1), 100);
    for (int i = 0; i < 100; i++) {
        int k = tt_balancer_pick(f.b, f.svc, 0, 0);
        slow += k == 0;
        tt_balancer_released(f.b, ep(&f, k));
    }
    assert_int_equal(slow, 0);
    done(&f);
}

/* A failed connect ejects the endpoint: every pick avoids it until the backoff ends, then
 * it takes connections again; a second failure doubles the backoff. */
static void test_ejection_and_return(void **state)
{
    struct fixture f;
    struct tt_balancer_stats st;
    uint64_t now = 5000;
    bool seen = false;

    (void)state;
    make(&f, 2);
    int k = tt_balancer_pick(f.b, f.svc, 1u << 1, now); /* endpoint 0 */
    assert_int_equal(k, 0);
    tt_balancer_failed(f.b, ep(&f, 0), now);
    /* The same connection tries the other endpoint. */
    assert_int_equal(tt_balancer_pick(f.b, f.svc, 1u << 0, now), 1);
    tt_balancer_released(f.b, ep(&f, 1));
    for (int i = 0; i < 100; i++) {
        assert_int_equal(tt_balancer_pick(f.b, f.svc, 0, now + TT_BALANCER_BACKOFF_MS - 1), 1);
        tt_balancer_released(f.b, ep(&f, 1));
    }
    for (size_t i = 0; i < tt_balancer_capacity(f.b); i++) {
        if (tt_balancer_stats_at(f.b, i, &st) && strcmp(st.addr.text, "10.0.0.1:8080") == 0) {
            seen = true;
            assert_int_equal(st.ejections, 1);
            assert_int_equal(st.connect_failures, 1);
            assert_int_equal(st.active, 0);
            assert_int_equal(st.ejected_until_ms, now + TT_BALANCER_BACKOFF_MS);
        }
    }
    assert_true(seen);
    /* After the backoff endpoint 0 is chosen again. */
    int zero = 0;
    for (int i = 0; i < 100; i++) {
        k = tt_balancer_pick(f.b, f.svc, 0, now + TT_BALANCER_BACKOFF_MS);
        zero += k == 0;
        tt_balancer_released(f.b, ep(&f, k));
    }
    assert_true(zero > 20);
    /* Failing again right away: twice the backoff. */
    now += TT_BALANCER_BACKOFF_MS;
    assert_int_equal(tt_balancer_pick(f.b, f.svc, 1u << 1, now), 0);
    tt_balancer_failed(f.b, ep(&f, 0), now);
    assert_int_equal(tt_balancer_pick(f.b, f.svc, 0, now + 2 * TT_BALANCER_BACKOFF_MS - 1), 1);
    done(&f);
}

/* Every endpoint ejected: the one whose ejection ends first is still tried; every
 * endpoint tried: -1. */
static void test_all_ejected_and_all_tried(void **state)
{
    struct fixture f;

    (void)state;
    make(&f, 2);
    assert_int_equal(tt_balancer_pick(f.b, f.svc, 2, 100), 0);
    tt_balancer_failed(f.b, ep(&f, 0), 100);
    assert_int_equal(tt_balancer_pick(f.b, f.svc, 1, 200), 1);
    tt_balancer_failed(f.b, ep(&f, 1), 200);
    assert_int_equal(tt_balancer_pick(f.b, f.svc, 0, 300), 0);
    assert_int_equal(tt_balancer_pick(f.b, f.svc, 3, 300), -1);
    done(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spread_over_two),
        cmocka_unit_test(test_prefers_fewer_active),
        cmocka_unit_test(test_prefers_lower_latency),
        cmocka_unit_test(test_ejection_and_return),
        cmocka_unit_test(test_all_ejected_and_all_tried),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
