/* net/idlefds.h: parked workload connections are handed back only for their address,
 * newest first, while still idle and fresh; closed, stale or chatty ones are closed
 * instead, and a full cache makes room by closing its oldest. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "net/idlefds.h"

/* A connected pair: *mine is what would be parked, *peer the workload's end. */
static void pair(int *mine, int *peer)
{
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    *mine = sv[0];
    *peer = sv[1];
}

static bool is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

static struct tt_addr addr(const char *text)
{
    struct tt_addr a;

    assert_int_equal(tt_addr_parse(text, TT_ADDR_NUMERIC, &a), 0);
    return a;
}

/* The newest socket for the address comes back; another address gets none. */
static void test_idlefds_take_by_address(void **state)
{
    static struct tt_idle_fds c;
    struct tt_addr a = addr("127.0.0.1:8080"), b = addr("127.0.0.1:8081");
    int m1, p1, m2, p2;

    (void)state;
    pair(&m1, &p1);
    pair(&m2, &p2);
    tt_idle_fds_put(&c, &a, m1, 1000);
    tt_idle_fds_put(&c, &a, m2, 1100);
    assert_int_equal(tt_idle_fds_take(&c, &b, 1200), -1);
    assert_int_equal(tt_idle_fds_take(&c, &a, 1200), m2);
    assert_int_equal(tt_idle_fds_take(&c, &a, 1200), m1);
    assert_int_equal(tt_idle_fds_take(&c, &a, 1200), -1);
    close(m1);
    close(m2);
    close(p1);
    close(p2);
}

/* Stale, closed by the workload, or holding bytes nobody asked for: closed, not reused. */
static void test_idlefds_dead_ones_closed(void **state)
{
    static struct tt_idle_fds c;
    struct tt_addr a = addr("[::1]:9000");
    int stale, p1, closed, p2, chatty, p3;

    (void)state;
    pair(&stale, &p1);
    pair(&closed, &p2);
    pair(&chatty, &p3);
    tt_idle_fds_put(&c, &a, stale, 0);
    tt_idle_fds_put(&c, &a, closed, 5000);
    tt_idle_fds_put(&c, &a, chatty, 5001);
    close(p2);
    assert_int_equal(write(p3, "x", 1), 1);
    assert_int_equal(tt_idle_fds_take(&c, &a, 5000 + TT_IDLE_FD_MS - 1), -1);
    assert_false(is_open(stale));
    assert_false(is_open(closed));
    assert_false(is_open(chatty));
    assert_int_equal(c.n, 0);
    close(p1);
    close(p3);
}

/* A full cache closes its oldest to park one more; close_all closes the rest. */
static void test_idlefds_full_and_close_all(void **state)
{
    static struct tt_idle_fds c;
    struct tt_addr a = addr("10.0.0.1:80");
    int mine[TT_IDLE_FDS_MAX + 1], peer[TT_IDLE_FDS_MAX + 1];

    (void)state;
    for (int i = 0; i <= TT_IDLE_FDS_MAX; i++) {
        pair(&mine[i], &peer[i]);
        tt_idle_fds_put(&c, &a, mine[i], 100 + (uint64_t)i);
    }
    assert_int_equal(c.n, TT_IDLE_FDS_MAX);
    assert_false(is_open(mine[0]));
    assert_int_equal(tt_idle_fds_take(&c, &a, 200), mine[TT_IDLE_FDS_MAX]);
    close(mine[TT_IDLE_FDS_MAX]);
    tt_idle_fds_close_all(&c);
    assert_int_equal(c.n, 0);
    for (int i = 1; i < TT_IDLE_FDS_MAX; i++)
        assert_false(is_open(mine[i]));
    for (int i = 0; i <= TT_IDLE_FDS_MAX; i++)
        close(peer[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idlefds_take_by_address),
        cmocka_unit_test(test_idlefds_dead_ones_closed),
        cmocka_unit_test(test_idlefds_full_and_close_all),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
