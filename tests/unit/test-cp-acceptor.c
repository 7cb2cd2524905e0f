/* Unit tests for control/tls_acceptor.c: a real TLS client on loopback against the
 * acceptor in both server roles, with and without a client certificate. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    int app_fd;
    struct tt_tlspipe *pipe;
    char peer_id[256];
    bool peer_null;
    char serial[80];
    char peer_addr[64];
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

    if (f->app_fd >= 0)
        close(f->app_fd);
    tt_tlspipe_close(f->pipe);
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

static void on_accept(void *ud, int app_fd, struct tt_tlspipe *pipe, const char *peer_id,
                      const char *serial, const char *peer_addr)
{
    struct fixture *f = ud;

    pthread_mutex_lock(&f->lock);
    f->accepted++;
    f->app_fd = app_fd;
    f->pipe = pipe;
    f->peer_null = peer_id == NULL;
    snprintf(f->peer_id, sizeof(f->peer_id), "%s", peer_id ? peer_id : "");
    snprintf(f->serial, sizeof(f->serial), "%s", serial);
    snprintf(f->peer_addr, sizeof(f->peer_addr), "%s", peer_addr);
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
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

static struct cp_tls_acceptor *start(struct fixture *f, enum tt_tls_role role)
{
    struct tt_addr addr;
    struct cp_tls_acceptor_opts o = {.listen = &addr,
                                     .role = role,
                                     .identity = get_identity,
                                     .on_accept = on_accept,
                                     .ud = f,
                                     .name = "test",
                                     .flag = "--listen-test",
                                     .handshake_ms = 2000};
    char err[256];
    struct cp_tls_acceptor *a;

    assert_int_equal(tt_addr_parse("127.0.0.1:0", 1, &addr), 0);
    a = cp_tls_acceptor_new(&o, err, sizeof(err));
    assert_non_null(a);
    assert_true(cp_tls_acceptor_port(a) > 0);
    return a;
}

/* Connects a TLS client with `id` (role `role`); returns the handshake result and, on
 * success, the plaintext fd and pipe. */
static int client(struct cp_tls_acceptor *a, struct tt_identity *id, enum tt_tls_role role,
                  int *app_fd, struct tt_tlspipe **pipe)
{
    char text[64];
    struct tt_addr addr;
    struct tt_tls *tls;
    int fd, r;

    snprintf(text, sizeof(text), "127.0.0.1:%d", cp_tls_acceptor_port(a));
    assert_int_equal(tt_addr_parse(text, 0, &addr), 0);
    assert_int_equal(tt_tlspipe_connect(&addr, 2000, &fd), 0);
    tls = tt_tls_new(id, role, SERVER_ID);
    assert_non_null(tls);
    r = tt_tlspipe_handshake(fd, tls, 2000);
    if (r != 0) {
        tt_tls_free(tls);
        close(fd);
        return r;
    }
    assert_int_equal(tt_tlspipe_new(fd, tls, app_fd, pipe), 0);
    return 0;
}

/* Reads up to len bytes within ms; returns the count, 0 at EOF, <0 on error/timeout. */
static ssize_t read_within(int fd, char *buf, size_t len, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};

    if (poll(&p, 1, ms) <= 0)
        return -ETIMEDOUT;
    return read(fd, buf, len);
}

static void test_acceptor_client_certificate(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER);
    struct tt_tlspipe *cpipe = NULL;
    char buf[16];
    int cfd;

    assert_int_equal(client(a, f->client_id, TT_TLS_CLIENT, &cfd, &cpipe), 0);
    assert_int_equal(wait_accepted(f, 3000), 1);
    assert_false(f->peer_null);
    assert_string_equal(f->peer_id, CLIENT_ID);
    assert_string_equal(f->serial, tt_identity_leaf(f->client_id)->serial);
    assert_non_null(strstr(f->peer_addr, "127.0.0.1:"));
    /* Plaintext flows both ways through the two relays. */
    assert_int_equal(write(cfd, "ping", 4), 4);
    assert_int_equal(read_within(f->app_fd, buf, sizeof(buf), 3000), 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(write(f->app_fd, "pong", 4), 4);
    assert_int_equal(read_within(cfd, buf, sizeof(buf), 3000), 4);
    assert_memory_equal(buf, "pong", 4);
    close(cfd);
    tt_tlspipe_close(cpipe);
    cp_tls_acceptor_free(a);
}

static void test_acceptor_requires_client_certificate(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER);
    struct tt_tlspipe *cpipe = NULL;
    char buf[16];
    int cfd = -1, r;

    /* TLS 1.3: the client may finish its side before the server refuses it. */
    r = client(a, f->anon_id, TT_TLS_CLIENT_ANONYMOUS, &cfd, &cpipe);
    if (r == 0) {
        assert_true(read_within(cfd, buf, sizeof(buf), 3000) <= 0);
        close(cfd);
        tt_tlspipe_close(cpipe);
    }
    assert_int_equal(wait_accepted(f, 300), 0);
    cp_tls_acceptor_free(a);
}

static void test_acceptor_optional_client_certificate(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER_OPTIONAL_CLIENT);
    struct tt_tlspipe *cpipe = NULL;
    int cfd;

    assert_int_equal(client(a, f->anon_id, TT_TLS_CLIENT_ANONYMOUS, &cfd, &cpipe), 0);
    assert_int_equal(wait_accepted(f, 3000), 1);
    assert_true(f->peer_null);
    assert_string_equal(f->serial, "");
    close(cfd);
    tt_tlspipe_close(cpipe);
    cp_tls_acceptor_free(a);
}

static void test_acceptor_no_serving_identity(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a;
    struct tt_tlspipe *cpipe = NULL;
    int cfd = -1;

    f->fail_identity = true;
    a = start(f, TT_TLS_SERVER);
    assert_true(client(a, f->client_id, TT_TLS_CLIENT, &cfd, &cpipe) < 0);
    assert_int_equal(wait_accepted(f, 200), 0);
    cp_tls_acceptor_free(a);
}

/* Plaintext garbage instead of a ClientHello: refused, nothing handed over, and stop()
 * does not hang on a client that never speaks (the handshake timeout bounds it). */
static void test_acceptor_garbage_and_silent_clients(void **state)
{
    struct fixture *f = *state;
    struct cp_tls_acceptor *a = start(f, TT_TLS_SERVER);
    char text[64], buf[64];
    struct tt_addr addr;
    int g, s;

    snprintf(text, sizeof(text), "127.0.0.1:%d", cp_tls_acceptor_port(a));
    assert_int_equal(tt_addr_parse(text, 0, &addr), 0);
    assert_int_equal(tt_tlspipe_connect(&addr, 2000, &g), 0);
    assert_int_equal(tt_tlspipe_connect(&addr, 2000, &s), 0);
    assert_int_equal(write(g, "GET /stats HTTP/1.1\r\n\r\n", 23), 23);
    /* Whatever comes back (an alert, or nothing) it is not HTTP, then the close. */
    for (;;) {
        ssize_t n = read_within(g, buf, sizeof(buf), 3000);

        assert_true(n != -ETIMEDOUT);
        if (n <= 0)
            break;
        assert_true(memcmp(buf, "HTTP", n < 4 ? (size_t)n : 4) != 0);
    }
    assert_int_equal(wait_accepted(f, 200), 0);
    cp_tls_acceptor_free(a); /* waits for the silent client's handshake to time out */
    close(g);
    close(s);
    assert_int_equal(f->accepted, 0);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_acceptor_client_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acceptor_requires_client_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acceptor_optional_client_certificate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acceptor_no_serving_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acceptor_garbage_and_silent_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acceptor_bad_options, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
