/* net/idleconns.h: parked workload connections (libuv handles that go on reading) are
 * handed back only for their address, newest first, while still idle and fresh; closed,
 * stale or chatty ones are closed instead, a parked one whose peer closes is dropped from
 * the read callback, expired ones are closed when the next one is parked, and a full
 * cache makes room by closing its oldest. Sockets are socketpair ends adopted by libuv;
 * "closed" is what the peer end sees (EOF). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net/idleconns.h"

static uv_loop_t loop;
static struct tt_idle_conns cache;
static char scratch[64];

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(scratch, sizeof(scratch));
}

/* What conn.c's read callback does for a handle at rest (data NULL). */
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    assert_null(stream->data);
    if (nread != 0)
        tt_idle_conns_drop(&cache, (uv_tcp_t *)stream);
}

/* A parked-to-be handle reading one end of a pair; *peer is the workload's end. */
static uv_tcp_t *handle_pair(int *peer)
{
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    uv_tcp_t *h = tt_idle_conn_new(&loop);
    assert_non_null(h);
    assert_int_equal(uv_tcp_open(h, sv[0]), 0);
    assert_int_equal(uv_read_start((uv_stream_t *)h, on_alloc, on_read), 0);
    *peer = sv[1];
    return h;
}

/* Whether our end of the pair was closed: the peer reads EOF, or a reset when our end
 * closed with bytes unread. */
static bool peer_sees_close(int peer)
{
    char b;

    uv_run(&loop, UV_RUN_NOWAIT);
    ssize_t r = recv(peer, &b, 1, MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno == ECONNRESET);
}

static struct tt_addr addr(const char *text)
{
    struct tt_addr a;

    assert_int_equal(tt_addr_parse(text, TT_ADDR_NUMERIC, &a), 0);
    return a;
}

#define CACHE_MAX 4

static int setup(void **state)
{
    (void)state;
    tt_idle_conns_init(&cache, CACHE_MAX);
    return uv_loop_init(&loop);
}

/* Everything closed and freed: the loop closes cleanly (ASan checks the memory). */
static int teardown(void **state)
{
    (void)state;
    tt_idle_conns_close_all(&cache);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    return 0;
}

static void close_taken(uv_tcp_t *h)
{
    tt_idle_conn_close(h, false, NULL);
}

/* The newest handle for the address comes back, with its data NULL until the taker sets
 * it; another address gets none. */
static void test_idleconns_take_by_address(void **state)
{
    struct tt_addr a = addr("127.0.0.1:8080"), b = addr("127.0.0.1:8081");
    int p1, p2;

    (void)state;
    uv_tcp_t *h1 = handle_pair(&p1), *h2 = handle_pair(&p2);
    h1->data = h2->data = &cache; /* what a connection had set: cleared when parked */
    tt_idle_conns_put(&cache, &a, h1, 1000);
    tt_idle_conns_put(&cache, &a, h2, 1100);
    assert_null(h1->data);
    assert_null(tt_idle_conns_take(&cache, &b, 1200, true));
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 1200, true), h2);
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 1200, true), h1);
    assert_null(tt_idle_conns_take(&cache, &a, 1200, true));
    assert_false(peer_sees_close(p1));
    close_taken(h1);
    close_taken(h2);
    assert_true(peer_sees_close(p1));
    assert_true(peer_sees_close(p2));
    close(p1);
    close(p2);
}

/* Stale, closed by the workload, or holding bytes nobody asked for (not yet seen by the
 * loop): closed at take, not handed out. */
static void test_idleconns_dead_ones_closed(void **state)
{
    struct tt_addr a = addr("[::1]:9000");
    int p1, p2, p3;

    (void)state;
    uv_tcp_t *stale = handle_pair(&p1), *closed = handle_pair(&p2), *chatty = handle_pair(&p3);
    tt_idle_conns_put(&cache, &a, stale, 0);
    tt_idle_conns_put(&cache, &a, closed, 5000);
    tt_idle_conns_put(&cache, &a, chatty, 5001);
    close(p2);
    assert_int_equal(write(p3, "x", 1), 1);
    assert_null(tt_idle_conns_take(&cache, &a, 5000 + TT_IDLE_CONN_MS - 1, true));
    assert_int_equal(cache.n, 0);
    assert_true(peer_sees_close(p1));
    assert_true(peer_sees_close(p3));
    close(p1);
    close(p3);
}

/* Unchecked (a request that can be sent again), the same closed and chatty handles are
 * handed out as they are, newest first: what the loop has not delivered is not looked at. */
static void test_idleconns_unchecked_take(void **state)
{
    struct tt_addr a = addr("[::1]:9001");
    int p1, p2;

    (void)state;
    uv_tcp_t *closed = handle_pair(&p1), *chatty = handle_pair(&p2);
    tt_idle_conns_put(&cache, &a, closed, 5000);
    tt_idle_conns_put(&cache, &a, chatty, 5001);
    close(p1);
    assert_int_equal(write(p2, "x", 1), 1);
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 5002, false), chatty);
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 5002, false), closed);
    assert_int_equal(cache.n, 0);
    close_taken(closed);
    close_taken(chatty);
    close(p2);
}

/* The workload closes a parked connection: the read callback drops it at once, before
 * anyone asks for it. Bytes out of turn do the same. */
static void test_idleconns_dropped_on_read(void **state)
{
    struct tt_addr a = addr("10.0.0.2:80");
    int p1, p2;

    (void)state;
    uv_tcp_t *h1 = handle_pair(&p1), *h2 = handle_pair(&p2);
    tt_idle_conns_put(&cache, &a, h1, 10);
    tt_idle_conns_put(&cache, &a, h2, 11);
    shutdown(p1, SHUT_WR);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(cache.n, 1);
    assert_int_equal(write(p2, "y", 1), 1);
    uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(cache.n, 0);
    assert_true(peer_sees_close(p1));
    assert_true(peer_sees_close(p2));
    close(p1);
    close(p2);
}

/* A handle that was taken is not parked: dropping it leaves it and the cache alone. */
static void test_idleconns_drop_not_parked(void **state)
{
    struct tt_addr a = addr("10.0.0.3:80");
    int p1, p2;

    (void)state;
    uv_tcp_t *h1 = handle_pair(&p1), *h2 = handle_pair(&p2);
    tt_idle_conns_put(&cache, &a, h1, 10);
    tt_idle_conns_put(&cache, &a, h2, 11);
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 12, true), h2);
    tt_idle_conns_drop(&cache, h2);
    assert_int_equal(cache.n, 1);
    assert_false(peer_sees_close(p2));
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 13, true), h1);
    close_taken(h1);
    close_taken(h2);
    close(p1);
    close(p2);
}

/* Parking one closes those idle TT_IDLE_CONN_MS or longer (oldest first), whatever their
 * address, so a burst's surplus does not stay open for a workload's whole keep-alive
 * timeout; the fresh ones stay. */
static void test_idleconns_expired_closed_on_put(void **state)
{
    struct tt_addr a = addr("10.0.0.4:80"), b = addr("10.0.0.5:80");
    int p1, p2, p3, p4;

    (void)state;
    uv_tcp_t *h1 = handle_pair(&p1), *h2 = handle_pair(&p2), *h3 = handle_pair(&p3);
    uv_tcp_t *h4 = handle_pair(&p4);
    tt_idle_conns_put(&cache, &a, h1, 100);
    tt_idle_conns_put(&cache, &b, h2, 200);
    tt_idle_conns_put(&cache, &a, h3, 1500);
    tt_idle_conns_put(&cache, &b, h4, 200 + TT_IDLE_CONN_MS);
    assert_int_equal(cache.n, 2);
    assert_true(peer_sees_close(p1));
    assert_true(peer_sees_close(p2));
    assert_false(peer_sees_close(p3));
    assert_false(peer_sees_close(p4));
    assert_ptr_equal(tt_idle_conns_take(&cache, &b, 2300, true), h4);
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 2300, true), h3);
    close_taken(h3);
    close_taken(h4);
    close(p1);
    close(p2);
    close(p3);
    close(p4);
}

/* A clock behind the entry's (the caller's loop time should not go back) expires
 * nothing: the handle is handed out, not closed as idle for ~2^64 ms. */
static void test_idleconns_clock_behind(void **state)
{
    struct tt_addr a = addr("10.0.0.6:80");
    int p;

    (void)state;
    uv_tcp_t *h = handle_pair(&p);
    tt_idle_conns_put(&cache, &a, h, 1000);
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 900, true), h);
    assert_false(peer_sees_close(p));
    close_taken(h);
    close(p);
}

/* A full cache closes its oldest to park one more; close_all closes the rest. */
static void test_idleconns_full_and_close_all(void **state)
{
    struct tt_addr a = addr("10.0.0.1:80");
    int peer[CACHE_MAX + 1];
    uv_tcp_t *h[CACHE_MAX + 1];

    (void)state;
    for (int i = 0; i <= CACHE_MAX; i++) {
        h[i] = handle_pair(&peer[i]);
        tt_idle_conns_put(&cache, &a, h[i], 100 + (uint64_t)i);
    }
    assert_int_equal(cache.n, CACHE_MAX);
    assert_true(peer_sees_close(peer[0]));
    assert_false(peer_sees_close(peer[1]));
    assert_ptr_equal(tt_idle_conns_take(&cache, &a, 200, true), h[CACHE_MAX]);
    close_taken(h[CACHE_MAX]);
    tt_idle_conns_close_all(&cache);
    assert_int_equal(cache.n, 0);
    for (int i = 1; i < CACHE_MAX; i++)
        assert_true(peer_sees_close(peer[i]));
    for (int i = 0; i <= CACHE_MAX; i++)
        close(peer[i]);
}

/* A target without an address key is not kept: closed at once. */
static void test_idleconns_unkeyed_closed(void **state)
{
    struct tt_addr none;
    int p;

    (void)state;
    memset(&none, 0, sizeof(none));
    uv_tcp_t *h = handle_pair(&p);
    tt_idle_conns_put(&cache, &none, h, 1);
    assert_int_equal(cache.n, 0);
    assert_true(peer_sees_close(p));
    close(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_idleconns_take_by_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_dead_ones_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_unchecked_take, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_dropped_on_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_drop_not_parked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_expired_closed_on_put, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_clock_behind, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_full_and_close_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idleconns_unkeyed_closed, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
