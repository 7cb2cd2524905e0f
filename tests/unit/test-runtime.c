/* Unit tests for runtime.c's start-up cap: each worker's share of --max-connections under
 * an open-files limit (two sockets per connection, a reserve for everything else). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "app/runtime.h"

/* The reserve, as runtime.h defines it. */
static uint64_t reserve_for(unsigned workers, size_t listeners)
{
    return TT_FD_RESERVE_BASE + workers * (TT_FD_RESERVE_PER_WORKER + listeners);
}

/* ulimit -n 256, the default 16384, 2 workers, one listener: capped so that two sockets
 * per connection and the reserve fit in 256. */
static void test_runtime_share_capped(void **state)
{
    uint64_t reserve = 0;
    bool capped = false;
    unsigned share = tt_runtime_worker_share(16384, 256, 2, 1, &reserve, &capped);

    assert_true(capped);
    assert_int_equal(reserve, reserve_for(2, 1));
    assert_int_equal(share, (256 - reserve) / 2 / 2);
    assert_true(2 * (uint64_t)share * 2 + reserve <= 256);
    /* Not needlessly low: one more connection per worker would not fit. */
    assert_true(2 * (uint64_t)(share + 1) * 2 + reserve > 256);

    /* A limit of 1024 with 1,100 wanted: capped below 512. */
    share = tt_runtime_worker_share(1100, 1024, 2, 1, &reserve, &capped);
    assert_true(capped);
    assert_true(share * 2 < 512);
    assert_true(4 * (uint64_t)share + reserve <= 1024);
}

/* Enough descriptors: the share is ceil(requested / workers), as before the cap. */
static void test_runtime_share_fits(void **state)
{
    bool capped = true;

    assert_int_equal(tt_runtime_worker_share(16384, 1048576, 2, 1, NULL, &capped), 8192);
    assert_false(capped);
    assert_int_equal(tt_runtime_worker_share(3, 256, 2, 1, NULL, &capped), 2);
    assert_false(capped);
    assert_int_equal(tt_runtime_worker_share(5, 20000, 1, 4, NULL, &capped), 5);
    assert_false(capped);
    assert_int_equal(tt_runtime_worker_share(16384, UINT64_MAX, 4, 2, NULL, &capped), 4096);
    assert_false(capped);
    /* Exactly at the edge: 2 * 100 * 1 + reserve == limit. */
    assert_int_equal(tt_runtime_worker_share(100, 200 + reserve_for(1, 1), 1, 1, NULL, &capped),
                     100);
    assert_false(capped);
    assert_int_equal(tt_runtime_worker_share(101, 200 + reserve_for(1, 1), 1, 1, NULL, &capped),
                     100);
    assert_true(capped);
}

/* A limit below the reserve still admits one connection per worker (and says capped). */
static void test_runtime_share_tiny_limit(void **state)
{
    bool capped = false;

    assert_int_equal(tt_runtime_worker_share(16384, 32, 4, 3, NULL, &capped), 1);
    assert_true(capped);
    assert_int_equal(tt_runtime_worker_share(16384, 0, 1, 1, NULL, &capped), 1);
    assert_true(capped);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runtime_share_capped),
        cmocka_unit_test(test_runtime_share_fits),
        cmocka_unit_test(test_runtime_share_tiny_limit),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
