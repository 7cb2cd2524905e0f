/* Unit tests for control/tls_acceptor.c: a real TLS client on loopback against the
 * acceptor in both server roles, with and without a client certificate, and attackers
 * against its bounds: handshake and first-call deadlines, connections per source and in
 * all (eviction of the oldest connection without a call), revocation sweeps. */
#include <errno.h>
#include <poll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "certgen.h"
#include "tls/identity.h"
#include "tls/tls.h"
#include "tls_acceptor.h"
#include "control/tlspipe.h"
#include "core/util.h"

#define SERVER_ID "spiffe://td.test/ns/tether-system/sa/tether-control"
#define CLIENT_ID "spiffe://td.test/ns/tether-system/sa/tether-admin"

struct fixture {
    struct tt_certgen_cert *root, *server, *client;
    struct tt_identity *server_id, *client_id, *anon_id;
    bool fail_identity;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    int accepted;
    int app_fd;      /* the newest connection's plaintext end */
    int app_fds[16]; /* every one handed over, closed at teardown */
    char peer_id[256];
    bool peer_null;
    char serial[80];
    char peer_addr[64];
    char counted[32][64]; /* reasons counted, in order */
    int n_counted;
    const char *revoked_serial;
};

static struct tt_identity *make_id(const struct tt_certgen_cert *leaf,
                                   const struct tt_certgen_cert *root)
{
    char err[512];
    struct tt_identity *id = tt_identity_from_pem(
        leaf->chain_pem, strlen(leaf->chain_pem), leaf->key_pem, strlen(leaf->key_pem),
        root->cert_pem, strlen(root->cert_pem), "test", err, sizeof(err));
    assert_non_null(id);
    return id;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char err[256];

    assert_non_null(f);
    f->root = tt_certgen_ca("root", NULL);
    f->server = tt_certgen_leaf(f->root, SERVER_ID);
    f->client = tt_certgen_leaf(f->root, CLIENT_ID);
    assert_non_null(f->client);
    f->server_id = make_id(f->server, f->root);
    f->client_id = make_id(f->client, f->root);
    f->anon_id = tt_identity_trust_only(f->root->cert_pem, strlen(f->root->cert_pem), "bundle", err,
                                        sizeof(err));
    assert_non_null(f->anon_id);
    f->app_fd = -1;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->cond, NULL);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    for (int i = 0; i < f->accepted && i < 16; i++)
        if (f->app_fds[i] >= 0)
            close(f->app_fds[i]);
    tt_identity_unref(f->server_id);
    tt_identity_unref(f->client_id);
    tt_identity_unref(f->anon_id);
    tt_certgen_free(f->client);
    tt_certgen_free(f->server);
    tt_certgen_free(f->root);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->lock);
    free(f);
    return 0;
}

static struct tt_identity *get_identity(void *ud, char *err, size_t errlen)
{
    struct fixture *f = ud;

    if (f->fail_identity) {
        snprintf(err, errlen, "no serving certificate (test)");
        return NULL;
    }
    return tt_identity_ref(f->server_id);
}

static void on_accept(void *ud, int app_fd, const char *peer_id, const char *serial,
                      const char *peer_addr)
{
    struct fixture *f = ud;

    pthread_mutex_lock(&f->lock);
    if (f->accepted < 16)
        f->app_fds[f->accepted] = app_fd;
    else
        close(app_fd);
    f->accepted++;
    f->app_fd = app_fd;
    f->peer_null = peer_id == NULL;
    snprintf(f->peer_id, sizeof(f->peer_id), "%s", peer_id ? peer_id : "");
    snprintf(f->serial, sizeof(f->serial), "%s", serial);
    snprintf(f->peer_addr, sizeof(f->peer_addr), "%s", peer_addr);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

static void on_count(void *ud, const char *reason)
{
    struct fixture *f = ud;

    pthread_mutex_lock(&f->lock);
    if (f->n_counted < 32)
        snprintf(f->counted[f->n_counted++], sizeof(f->counted[0]), "%s", reason);
    pthread_mutex_unlock(&f->lock);
}

/* How many times `reason` was counted. */
static int counted(struct fixture *f, const char *reason)
{
    int n = 0;

    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < f->n_counted; i++)
        n += strcmp(f->counted[i], reason) == 0;
    pthread_mutex_unlock(&f->lock);
    return n;
}

static bool is_revoked(void *ud, const char *serial)
{
    struct fixture *f = ud;

    return f->revoked_serial != NULL && strcmp(serial, f->revoked_serial) == 0;
}

/* Waits up to ms for an accepted connection; returns the count. */
static int wait_accepted(struct fixture *f, int ms)
{
    int n;

    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < ms / 10 && f->accepted == 0; i++) {
        pthread_mutex_unlock(&f->lock);
        usleep(10000);
        pthread_mutex_lock(&f->lock);
    }
    n = f->accepted;
    pthread_mutex_unlock(&f->lock);
    return n;
}

/* The bounds a test starts the acceptor with (0: the acceptor's defaults). */
struct bounds {
    uint64_t handshake_ms, first_call_ms;
    unsigned max_conns, max_per_source;
};

static struct cp_tls_acceptor *start_with(struct fixture *f, enum tt_tls_role role,
                                          const struct bounds *b)
{
    struct tt_addr addr;
    struct cp_tls_acceptor_opts o = {.listen = &addr,
                                     .role = role,
                                     .identity = get_identity,
                                     .on_accept = on_accept,
                                     .revoked = is_revoked,
                                     .count = on_count,
                                     .ud = f,
                                     .name = "test",
                                     .flag = "--listen-test",
                                     .handshake_ms = b->handshake_ms ? b->handshake_ms : 2000,
                                     .first_call_ms = b->first_call_ms,
                                     .max_conns = b->max_conns,
                                     .max_per_source = b->max_per_source};
    char err[256];
    struct cp_tls_acceptor *a;

    assert_int_equal(tt_addr_parse("127.0.0.1:0", 1, &addr), 0);
    a = cp_tls_acceptor_new(&o, err, sizeof(err));
    assert_non_null(a);
    assert_true(cp_tls_acceptor_port(a) > 0);
    return a;
}

static struct cp_tls_acceptor *start(struct fixture *f, enum tt_tls_role role)
{
    const struct bounds none = {0};

    return start_with(f, role, &none);
}

/* A TLS client connection (the test's end, relayed by a tlspipe of its own). */
struct client {
    int fd;
    struct tt_tlspipe *pipe;
    char local[64]; /* "127.0.0.1:PORT" as the acceptor sees it */
};

static void client_close(struct client *c)
{
    if (c->fd >= 0)
        close(c->fd);
    tt_tlspipe_close(c->pipe);
    c->fd = -1;
    c->pipe = NULL;
}

/* Connects a TLS client with `id` (role `role`); returns the handshake result and, on
 * success, fills *out. */
static int client(struct cp_tls_acceptor *a, struct tt_identity *id, enum tt_tls_role role,
                  struct client *out)
{
    char text[64];
    struct tt_addr addr;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    struct tt_tls *tls;
    int fd, r;

    memset(out, 0, sizeof(*out));
    out->fd = -1;
    snprintf(text, sizeof(text), "127.0.0.1:%d", cp_tls_acceptor_port(a));
    assert_int_equal(tt_addr_parse(text, 0, &addr), 0);
    /* A server that refuses at once (no identity) may reset before connect() returns. */
    r = tt_tlspipe_connect(&addr, 2000, &fd);
    if (r != 0)
        return r;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &sslen), 0);
    tt_sockaddr_format((struct sockaddr *)&ss, out->local, sizeof(out->local));
    tls = tt_tls_new(id, role, SERVER_ID);
    assert_non_null(tls);
    r = tt_tlspipe_handshake(fd, tls, 2000);
    if (r != 0) {
        tt_tls_free(tls);
        close(fd);
        return r;
    }
    assert_int_equal(tt_tlspipe_new(fd, tls, &out->fd, &out->pipe), 0);
    return 0;
}

/* A TCP connection from source address `src` that says nothing. */
static int silent_from(struct cp_tls_acceptor *a, const char *src)
{
    struct sockaddr_in local = {.sin_family = AF_INET}, to = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(inet_pton(AF_INET, src, &local.sin_addr), 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&local, sizeof(local)), 0);
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    to.sin_port = htons((uint16_t)cp_tls_acceptor_port(a));
    assert_int_equal(connect(fd, (struct sockaddr *)&to, sizeof(to)), 0);
    return fd;
}

/* Reads up to len bytes within ms; returns the count, 0 at EOF, <0 on error/timeout. */
static ssize_t read_within(int fd, char *buf, size_t len, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t n;

    if (poll(&p, 1, ms) <= 0)
        return -ETIMEDOUT;
    n = read(fd, buf, len);
    return n < 0 ? -errno : n;
}

/* True when the server ended the connection on fd (EOF or reset) within ms. */
static bool closed_within(int fd, int ms)
{
    char buf[256];
    ssize_t n;

    do
        n = read_within(fd, buf, sizeof(buf), ms);
    while (n > 0);
    return n != -ETIMEDOUT;
}

/* Waits up to ms for `reason` to be counted n times. */
static bool counted_within(struct fixture *f, const char *reason, int n, int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        if (counted(f, reason) >= n)
            return true;
        usleep(10000);
    }
    return counted(f, reason) >= n;
}

static void test_acceptor_client_certificate(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER);
    struct cp_tls_acceptor_load load;
    struct client c;
    char buf[16];

    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &c), 0);
    assert_int_equal(wait_accepted(f, 3000), 1);
    assert_false(f->peer_null);
    assert_string_equal(f->peer_id, CLIENT_ID);
    assert_string_equal(f->serial, tt_identity_leaf(f->client_id)->serial);
    assert_string_equal(f->peer_addr, c.local);
    cp_tls_acceptor_load(a, &load);
    assert_int_equal(load.conns, 1);
    assert_int_equal(load.handshaking, 0);
    /* Plaintext flows both ways through the relay on the loop. */
    assert_int_equal(write(c.fd, "ping", 4), 4);
    assert_int_equal(read_within(f->app_fd, buf, sizeof(buf), 3000), 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(write(f->app_fd, "pong", 4), 4);
    assert_int_equal(read_within(c.fd, buf, sizeof(buf), 3000), 4);
    assert_memory_equal(buf, "pong", 4);
    /* The owner closing its end closes the client's connection. */
    close(f->app_fd);
    f->app_fds[0] = -1;
    assert_true(closed_within(c.fd, 3000));
    client_close(&c);
    cp_tls_acceptor_free(a);
}

/* 1 MiB each way at once: backpressure between the two sides loses and reorders nothing. */
static void test_acceptor_bulk_both_ways(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER);
    size_t total = 1 << 20, sent_c = 0, sent_a = 0, got_c = 0, got_a = 0;
    uint8_t *pat = malloc(total), buf[8192];
    struct client c;

    assert_non_null(pat);
    for (size_t i = 0; i < total; i++)
        pat[i] = (uint8_t)(i * 7 + i / 251);
    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &c), 0);
    assert_int_equal(wait_accepted(f, 3000), 1);
    while (got_c < total || got_a < total) {
        struct pollfd p[2] = {{.fd = c.fd, .events = POLLIN | (sent_c < total ? POLLOUT : 0)},
                              {.fd = f->app_fd, .events = POLLIN | (sent_a < total ? POLLOUT : 0)}};
        ssize_t n;

        assert_true(poll(p, 2, 5000) > 0);
        if ((p[0].revents & POLLOUT) && (n = write(c.fd, pat + sent_c, total - sent_c)) > 0)
            sent_c += (size_t)n;
        if ((p[1].revents & POLLOUT) && (n = write(f->app_fd, pat + sent_a, total - sent_a)) > 0)
            sent_a += (size_t)n;
        if ((p[0].revents & POLLIN) && (n = read(c.fd, buf, sizeof(buf))) > 0) {
            assert_true(got_a + (size_t)n <= total);
            assert_memory_equal(buf, pat + got_a, (size_t)n);
            got_a += (size_t)n;
        }
        if ((p[1].revents & POLLIN) && (n = read(f->app_fd, buf, sizeof(buf))) > 0) {
            assert_true(got_c + (size_t)n <= total);
            assert_memory_equal(buf, pat + got_c, (size_t)n);
            got_c += (size_t)n;
        }
    }
    free(pat);
    client_close(&c);
    cp_tls_acceptor_free(a);
}

static void test_acceptor_requires_client_certificate(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER);
    struct client c;
    char buf[16];

    /* TLS 1.3: the client may finish its side before the server refuses it. */
    if (client(a, f->anon_id, TT_TLS_CLIENT_ANONYMOUS, &c) == 0) {
        assert_true(read_within(c.fd, buf, sizeof(buf), 3000) <= 0);
        client_close(&c);
    }
    assert_int_equal(wait_accepted(f, 300), 0);
    cp_tls_acceptor_free(a);
}

static void test_acceptor_optional_client_certificate(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER_OPTIONAL_CLIENT);
    struct client c;

    assert_int_equal(client(a, f->anon_id, TT_TLS_CLIENT_ANONYMOUS, &c), 0);
    assert_int_equal(wait_accepted(f, 3000), 1);
    assert_true(f->peer_null);
    assert_string_equal(f->serial, "");
    client_close(&c);
    cp_tls_acceptor_free(a);
}

static void test_acceptor_no_serving_identity(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a;
    struct client c;

    f->fail_identity = true;
    a = start(f, TT_TLS_SERVER);
    assert_true(client(a, f->client_id, TT_TLS_CLIENT, &c) < 0);
    assert_int_equal(wait_accepted(f, 200), 0);
    cp_tls_acceptor_free(a);
}

/* Plaintext garbage instead of a ClientHello is refused; a client that never speaks is
 * closed at the handshake deadline and counted; nothing is handed over. */
static void test_acceptor_garbage_and_silent_clients(void **state)
{
    struct fixture *f = *state;
    const struct bounds b = {.handshake_ms = 300};
    struct cp_tls_acceptor *a = start_with(f, TT_TLS_SERVER, &b);
    char buf[64];
    int g = silent_from(a, "127.0.0.1"), s = silent_from(a, "127.0.0.1");

    assert_int_equal(write(g, "GET /stats HTTP/1.1\r\n\r\n", 23), 23);
    /* Whatever comes back (an alert, or nothing) it is not HTTP, then the close. */
    for (;;) {
        ssize_t n = read_within(g, buf, sizeof(buf), 3000);

        assert_true(n != -ETIMEDOUT);
        if (n <= 0)
            break;
        assert_true(memcmp(buf, "HTTP", n < 4 ? (size_t)n : 4) != 0);
    }
    assert_true(closed_within(s, 3000));
    assert_int_equal(counted(f, "test_handshake_timeout"), 1);
    assert_int_equal(f->accepted, 0);
    close(g);
    close(s);
    cp_tls_acceptor_free(a);
}

/* A verified connection that makes no call is closed at the first-call deadline; one the
 * owner marked as called is kept. */
static void test_acceptor_first_call_deadline(void **state)
{
    struct fixture *f = *state;
    const struct bounds b = {.first_call_ms = 300};
    struct cp_tls_acceptor *a = start_with(f, TT_TLS_SERVER_OPTIONAL_CLIENT, &b);
    struct cp_tls_acceptor_load load;
    struct client idle, busy;
    char buf[8];

    assert_int_equal(client(a, f->anon_id, TT_TLS_CLIENT_ANONYMOUS, &idle), 0);
    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &busy), 0);
    cp_tls_acceptor_mark_called(a, busy.local);
    cp_tls_acceptor_mark_called(a, "192.0.2.1:1"); /* unknown: ignored */
    assert_true(closed_within(idle.fd, 3000));
    assert_int_equal(counted(f, "test_first_call_timeout"), 1);
    assert_int_equal(read_within(busy.fd, buf, sizeof(buf), 500), -ETIMEDOUT); /* still open */
    cp_tls_acceptor_load(a, &load);
    assert_int_equal(load.conns, 1);
    client_close(&idle);
    client_close(&busy);
    cp_tls_acceptor_free(a);
}

/* One source at its bound is refused; another source is still served. */
static void test_acceptor_per_source_bound(void **state)
{
    struct fixture *f = *state;
    const struct bounds b = {.max_per_source = 3, .handshake_ms = 5000};
    struct cp_tls_acceptor *a = start_with(f, TT_TLS_SERVER, &b);
    struct cp_tls_acceptor_load load;
    struct client c;
    int held[3], extra;

    for (int i = 0; i < 3; i++)
        held[i] = silent_from(a, "127.0.0.2");
    extra = silent_from(a, "127.0.0.2");
    assert_true(closed_within(extra, 2000));
    assert_int_equal(counted(f, "test_conn_limit_per_source"), 1);
    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &c), 0);
    assert_int_equal(wait_accepted(f, 3000), 1);
    cp_tls_acceptor_load(a, &load);
    assert_int_equal(load.conns, 4);
    assert_int_equal(load.handshaking, 3);
    for (int i = 0; i < 3; i++) {
        char buf[8];

        assert_int_equal(read_within(held[i], buf, sizeof(buf), 50), -ETIMEDOUT);
        close(held[i]);
    }
    close(extra);
    client_close(&c);
    cp_tls_acceptor_free(a);
}

/* At the total bound the oldest connection without a call makes room; when every one has
 * a call, the newcomer is refused. */
static void test_acceptor_total_bound_evicts_oldest_uncalled(void **state)
{
    struct fixture *f = *state;
    const struct bounds b = {.max_conns = 3, .handshake_ms = 5000};
    struct cp_tls_acceptor *a = start_with(f, TT_TLS_SERVER, &b);
    struct client called, c2, c3;
    char buf[8];
    int old1, old2, late;

    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &called), 0);
    assert_int_equal(wait_accepted(f, 3000), 1);
    cp_tls_acceptor_mark_called(a, called.local);
    old1 = silent_from(a, "127.0.0.3");
    usleep(50000);
    old2 = silent_from(a, "127.0.0.4");
    usleep(50000);
    /* Full: a legitimate newcomer gets in, the oldest silent one goes. */
    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &c2), 0);
    assert_true(closed_within(old1, 2000));
    assert_int_equal(read_within(old2, buf, sizeof(buf), 50), -ETIMEDOUT);
    assert_int_equal(counted(f, "test_conn_evicted"), 1);
    cp_tls_acceptor_mark_called(a, c2.local);
    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &c3), 0);
    assert_true(closed_within(old2, 2000));
    cp_tls_acceptor_mark_called(a, c3.local);
    /* Every connection has a call: the next one is refused, the others stay. */
    late = silent_from(a, "127.0.0.5");
    assert_true(closed_within(late, 2000));
    assert_true(counted_within(f, "test_conn_limit", 1, 1000));
    assert_int_equal(read_within(called.fd, buf, sizeof(buf), 50), -ETIMEDOUT);
    close(old1);
    close(old2);
    close(late);
    client_close(&called);
    client_close(&c2);
    client_close(&c3);
    cp_tls_acceptor_free(a);
}

/* A sweep closes the verified connections whose certificate is now revoked. */
static void test_acceptor_sweep_revoked(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER_OPTIONAL_CLIENT);
    struct client cert, anon;
    char buf[8];

    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &cert), 0);
    assert_int_equal(client(a, f->anon_id, TT_TLS_CLIENT_ANONYMOUS, &anon), 0);
    cp_tls_acceptor_sweep(a); /* nothing revoked yet */
    assert_int_equal(read_within(cert.fd, buf, sizeof(buf), 200), -ETIMEDOUT);
    f->revoked_serial = tt_identity_leaf(f->client_id)->serial;
    cp_tls_acceptor_sweep(a);
    assert_true(closed_within(cert.fd, 2000));
    assert_int_equal(read_within(anon.fd, buf, sizeof(buf), 200), -ETIMEDOUT);
    client_close(&cert);
    client_close(&anon);
    cp_tls_acceptor_free(a);
}

static void test_acceptor_bad_options(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER), *b;
    struct tt_addr addr;
    struct cp_tls_acceptor_opts o = {.listen = &addr,
                                     .role = TT_TLS_CLIENT,
                                     .identity = get_identity,
                                     .on_accept = on_accept,
                                     .ud = f,
                                     .flag = "--listen-test"};
    char text[64], err[256] = "";

    assert_int_equal(tt_addr_parse("127.0.0.1:0", 1, &addr), 0);
    assert_null(cp_tls_acceptor_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "bad options"));
    o.role = TT_TLS_SERVER;
    o.identity = NULL;
    assert_null(cp_tls_acceptor_new(&o, err, sizeof(err)));
    /* An address not on this host (TEST-NET-1): the flag and the address are named. */
    o.identity = get_identity;
    snprintf(text, sizeof(text), "192.0.2.1:%d", cp_tls_acceptor_port(a));
    assert_int_equal(tt_addr_parse(text, 0, &addr), 0);
    b = cp_tls_acceptor_new(&o, err, sizeof(err));
    assert_null(b);
    assert_non_null(strstr(err, "--listen-test 192.0.2.1:"));
    cp_tls_acceptor_free(a);
    cp_tls_acceptor_free(NULL);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_acceptor_client_certificate),
        T(test_acceptor_bulk_both_ways),
        T(test_acceptor_requires_client_certificate),
        T(test_acceptor_optional_client_certificate),
        T(test_acceptor_no_serving_identity),
        T(test_acceptor_garbage_and_silent_clients),
        T(test_acceptor_first_call_deadline),
        T(test_acceptor_per_source_bound),
        T(test_acceptor_total_bound_evicts_oldest_uncalled),
        T(test_acceptor_sweep_revoked),
        T(test_acceptor_bad_options),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
