/* Unit tests for acceptor.c: accepting on a loopback socket, and what happens when the
 * process has no descriptor left (the test lowers its own RLIMIT_NOFILE and fills the
 * table): no spinning, one waiting connection reset or served on the reserve, a bounded
 * number of retries, recovery once descriptors are free again. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "net/acceptor.h"

#define MAX_FDS 64

struct fixture {
    uv_loop_t loop;
    struct tt_acceptor a;
    int port;
    int accepted[MAX_FDS];
    int n_accepted;
    int closed_calls;
    uint64_t failures, dropped;
    int fillers[4096];
    int n_fillers;
    struct rlimit saved;
};

/* The running test's fixture: static, so that the teardown can give the descriptors back
 * when a test fails with the table full (the next tests would fail too). */
static struct fixture fx;

static void on_accept(struct tt_acceptor *a, int fd)
{
    struct fixture *f = a->data;

    assert_true(f->n_accepted < MAX_FDS);
    f->accepted[f->n_accepted++] = fd;
}

static void on_closed(struct tt_acceptor *a)
{
    struct fixture *f = a->data;

    f->closed_calls++;
}

static int listen_socket(int *port)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 64), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}

/* A client whose connection the kernel completes at once (it waits in the backlog). */
static int client(int port)
{
    struct sockaddr_in sin = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons(port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return fd;
}

/* 1 when the server reset or closed the client, 0 while it waits, without blocking. */
static int client_refused(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_DONTWAIT);

    if (n == 0 || (n < 0 && errno == ECONNRESET))
        return 1;
    assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    return 0;
}

static void on_stop_timer(uv_timer_t *t)
{
    uv_stop(t->loop);
}

/* Runs the loop for ms milliseconds of wall time. */
static void run_for(uv_loop_t *loop, uint64_t ms)
{
    uv_timer_t t;

    uv_timer_init(loop, &t);
    uv_timer_start(&t, on_stop_timer, ms, 0);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void fixture_start(struct fixture *f, enum tt_acceptor_shortage shortage)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->a.name = "test";
    f->a.worker = 3;
    f->a.shortage = shortage;
    f->a.on_accept = on_accept;
    f->a.on_closed = on_closed;
    f->a.data = f;
    f->a.failures = &f->failures;
    f->a.dropped = &f->dropped;
    assert_int_equal(tt_acceptor_start(&f->a, &f->loop, listen_socket(&f->port)), 0);
    assert_true(f->a.reserve_fd >= 0);
}

/* Leaves no free descriptor: a soft limit of 256, then the table filled. */
static void fill_table(struct fixture *f)
{
    struct rlimit low;

    assert_int_equal(getrlimit(RLIMIT_NOFILE, &f->saved), 0);
    low = f->saved;
    low.rlim_cur = 256;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    for (;;) {
        int fd = dup(0);
        if (fd < 0) {
            assert_int_equal(errno, EMFILE);
            break;
        }
        assert_true(f->n_fillers < (int)(sizeof(f->fillers) / sizeof(f->fillers[0])));
        f->fillers[f->n_fillers++] = fd;
    }
}

static void free_table(struct fixture *f)
{
    if (f->n_fillers == 0)
        return;
    while (f->n_fillers > 0)
        close(f->fillers[--f->n_fillers]);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &f->saved), 0);
}

static int teardown(void **state)
{
    free_table(&fx);
    return 0;
}

static void fixture_done(struct fixture *f)
{
    for (int i = 0; i < f->n_accepted; i++)
        close(f->accepted[i]);
    tt_acceptor_close(&f->a);
    tt_acceptor_close(&f->a); /* twice is harmless */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed_calls, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void test_acceptor_accepts(void **state)
{
    struct fixture *f = &fx;
    int c[3];

    fixture_start(f, TT_ACCEPTOR_DROP);
    for (int i = 0; i < 3; i++)
        c[i] = client(f->port);
    run_for(&f->loop, 100);
    assert_int_equal(f->n_accepted, 3);
    for (int i = 0; i < 3; i++) {
        int fl = fcntl(f->accepted[i], F_GETFL), fdfl = fcntl(f->accepted[i], F_GETFD);
        assert_true(fl & O_NONBLOCK);
        assert_true(fdfl & FD_CLOEXEC);
        close(c[i]);
    }
    assert_int_equal(f->failures, 0);
    assert_false(tt_acceptor_in_shortage(&f->a));
    fixture_done(f);
}

/* With no descriptor left: a handful of failures in 700 ms, not a spin; the reserve
 * resets one waiting client per failure; the others wait in the backlog and are accepted
 * once descriptors are free; the episode ends after a quiet time. */
static void test_acceptor_shortage_drop(void **state)
{
    struct fixture *f = &fx;
    int c[6], refused = 0;

    fixture_start(f, TT_ACCEPTOR_DROP);
    for (int i = 0; i < 6; i++)
        c[i] = client(f->port);
    fill_table(f);
    /* Failures at about 0, 100, 300 and 700 ms (the backoff doubles). */
    run_for(&f->loop, 650);
    free_table(f);
    assert_int_equal(f->n_accepted, 0);
    assert_true(f->failures >= 2 && f->failures <= 4);
    assert_int_equal(f->dropped, f->failures);
    assert_true(tt_acceptor_in_shortage(&f->a));
    assert_int_equal(f->a.state, TT_ACCEPTOR_S_PAUSED);
    for (int i = 0; i < 6; i++)
        refused += client_refused(c[i]);
    assert_int_equal(refused, (int)f->dropped);

    /* Descriptors are free again: at the end of the backoff (at most 1 s) the rest is
     * accepted, and after TT_ACCEPTOR_QUIET_MS more the episode is over. */
    run_for(&f->loop, TT_ACCEPTOR_BACKOFF_MAX_MS + 100);
    assert_int_equal(f->n_accepted, 6 - (int)f->dropped);
    assert_true(f->a.reserve_fd >= 0);
    assert_int_equal(f->a.state, TT_ACCEPTOR_S_RECOVERING);
    run_for(&f->loop, TT_ACCEPTOR_QUIET_MS + 100);
    assert_int_equal(f->a.state, TT_ACCEPTOR_S_WATCHING);
    assert_false(tt_acceptor_in_shortage(&f->a));
    for (int i = 0; i < 6; i++)
        close(c[i]);
    fixture_done(f);
}

/* TT_ACCEPTOR_SERVE: the waiting client is handed over on the reserve's descriptor; once
 * the owner closes it, tt_acceptor_replenish() takes the number back as the reserve. */
static void test_acceptor_shortage_serve(void **state)
{
    struct fixture *f = &fx;
    int c;

    fixture_start(f, TT_ACCEPTOR_SERVE);
    c = client(f->port);
    fill_table(f);
    run_for(&f->loop, 50);
    assert_int_equal(f->n_accepted, 1);
    assert_int_equal(f->failures, 1);
    assert_int_equal(f->dropped, 0);
    assert_int_equal(f->a.reserve_fd, -1);
    assert_int_equal(client_refused(c), 0);
    assert_int_equal(send(f->accepted[0], "x", 1, 0), 1); /* a working connection */
    close(f->accepted[0]);
    f->n_accepted = 0;
    tt_acceptor_replenish(&f->a);
    assert_true(f->a.reserve_fd >= 0);
    free_table(f);
    close(c);
    fixture_done(f);
}

/* Closing during a pause closes both handles once; nothing fires afterwards. */
static void test_acceptor_close_while_paused(void **state)
{
    struct fixture *f = &fx;
    int c;

    fixture_start(f, TT_ACCEPTOR_DROP);
    c = client(f->port);
    fill_table(f);
    run_for(&f->loop, 30);
    free_table(f);
    assert_int_equal(f->a.state, TT_ACCEPTOR_S_PAUSED);
    close(c);
    fixture_done(f);
    assert_int_equal(f->n_accepted, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_acceptor_accepts, teardown),
        cmocka_unit_test_teardown(test_acceptor_shortage_drop, teardown),
        cmocka_unit_test_teardown(test_acceptor_shortage_serve, teardown),
        cmocka_unit_test_teardown(test_acceptor_close_while_paused, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
