/* core/buf.h: the slab queue (tt_bufq) keeps any amount of bytes in pooled slabs, never
 * in an oversize block, in order, across slab boundaries, and gives every slab back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/buf.h"

static void fill(uint8_t *p, size_t n, size_t off)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)((off + i) * 131 + 7);
}

/* 1 MiB appended in odd-sized pieces comes out whole, in order, read in other odd-sized
 * pieces, with peek never longer than one slab; no oversize block is made, and once empty
 * the queue holds nothing (its slabs are reused by the next round: no new slab). */
static void test_bufq_roundtrip(void **state)
{
    enum { TOTAL = 1 << 20 };
    uint8_t *in = malloc(TOTAL), *out = malloc(TOTAL);
    struct tt_buf_pool_stats st0, st1, st2;
    struct tt_bufq q;
    size_t put = 0, got = 0;

    (void)state;
    assert_non_null(in);
    assert_non_null(out);
    fill(in, TOTAL, 0);
    tt_bufq_init(&q);
    tt_buf_pool_stats(&st0);
    for (int round = 0; round < 2; round++) {
        put = got = 0;
        while (put < TOTAL) {
            size_t k = 1 + (put * 7 + 4093) % 50000;
            if (k > TOTAL - put)
                k = TOTAL - put;
            assert_int_equal(tt_bufq_append(&q, in + put, k), 0);
            put += k;
            assert_int_equal(q.len, put - got);
            if (put % 3 == 0) { /* read some while appending */
                const uint8_t *p;
                size_t n = tt_bufq_peek(&q, &p);
                assert_true(n > 0 && n <= TT_BUF_SLAB);
                assert_memory_equal(p, in + got, n);
                size_t take = n / 2 + 1;
                memcpy(out + got, p, take);
                tt_bufq_consume(&q, take);
                got += take;
            }
        }
        while (q.len > 0) {
            size_t n = tt_bufq_read(&q, out + got, 12345);
            assert_true(n > 0);
            got += n;
        }
        assert_int_equal(got, TOTAL);
        assert_memory_equal(out, in, TOTAL);
        const uint8_t *p = (const uint8_t *)1;
        assert_int_equal(tt_bufq_peek(&q, &p), 0);
        assert_null(p);
        if (round == 0)
            tt_buf_pool_stats(&st1);
    }
    tt_buf_pool_stats(&st2);
    assert_int_equal(st2.oversize_allocations, st0.oversize_allocations);
    assert_int_equal(st2.slabs_allocated, st1.slabs_allocated); /* round 2 reused them */
    tt_bufq_done(&q);
    free(in);
    free(out);
}

/* Consuming more than queued empties it; done on a filled queue gives everything back
 * and leaves it reusable; an empty append changes nothing. */
static void test_bufq_edges(void **state)
{
    static uint8_t big[3 * TT_BUF_SLAB];
    struct tt_bufq q;
    uint8_t b[4];

    (void)state;
    tt_bufq_init(&q);
    assert_int_equal(tt_bufq_append(&q, big, 0), 0);
    assert_int_equal(q.len, 0);
    assert_int_equal(tt_bufq_read(&q, b, sizeof(b)), 0);
    assert_int_equal(tt_bufq_append(&q, big, sizeof(big)), 0);
    assert_int_equal(q.len, sizeof(big));
    tt_bufq_consume(&q, sizeof(big) + 100);
    assert_int_equal(q.len, 0);
    assert_null(q.head);
    assert_int_equal(tt_bufq_append(&q, "abcd", 4), 0);
    assert_int_equal(tt_bufq_append(&q, big, sizeof(big)), 0);
    tt_bufq_done(&q);
    assert_int_equal(q.len, 0);
    assert_int_equal(tt_bufq_append(&q, "wxyz", 4), 0);
    assert_int_equal(tt_bufq_read(&q, b, sizeof(b)), 4);
    assert_memory_equal(b, "wxyz", 4);
    tt_bufq_done(&q);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bufq_roundtrip),
        cmocka_unit_test(test_bufq_edges),
    };
    int r = cmocka_run_group_tests(tests, NULL, NULL);
    tt_buf_pool_drain();
    return r;
}
