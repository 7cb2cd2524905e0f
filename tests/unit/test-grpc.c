/* Unit tests for the control transport: tlspipe.c (BoringSSL mTLS on a real loopback TCP
 * connection, relayed to a socketpair) and the generic gRPC glue (proto/glue) running
 * over it: a unary Identity.Sign whose handler sees the client's SPIFFE ID, error
 * statuses, a bidirectional Discovery.Watch, receive timeouts, anonymous (bootstrap)
 * clients, refusals, forced close and half-close. */
#include <errno.h>
#include <netinet/in.h>
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
#include <unistd.h>

#include <cmocka.h>

#include "core/buf.h"
#include "certgen.h"
#include "core/errors.h"
#include "grpc_glue.h"
#include "tls/identity.h"
#include "tether/v1/tether.pb-c.h"
#include "tls/tls.h"
#include "control/tlspipe.h"
#include "core/util.h"

#define CONTROL_ID "spiffe://td/control"
#define CLIENT_ID  "spiffe://td/ns/web/sa/frontend"
#define SIGN_PATH  "/tether.v1.Identity/Sign"
#define WATCH_PATH "/tether.v1.Discovery/Watch"
#define TIMEOUT_MS 5000

static struct tt_certgen_cert *root, *control_leaf, *client_leaf;
static struct tt_identity *control_id, *client_id;
static struct tt_certgen_cert *other_root, *stranger_leaf;
static struct tt_identity *stranger_id; /* its root is not in the control plane's bundle */

/* --- What the server saw, shared with the CQ thread ----------------------------------- */

struct seen {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct tt_grpc_stream *stream; /* referenced */
    char open_peer[256];
    int open_peer_null;
    int hellos;
    uint64_t acks[8];
    int n_acks;
    int closed;
    grpc_status_code close_code;
    char unary_peer[256];
    char unary_addr[64];
    int unary_peer_null;
};

static struct seen seen;

static void seen_reset(void)
{
    pthread_mutex_lock(&seen.lock);
    seen.stream = NULL;
    seen.open_peer[0] = '\0';
    seen.open_peer_null = 0;
    seen.hellos = 0;
    seen.n_acks = 0;
    seen.closed = 0;
    seen.close_code = GRPC_STATUS_UNKNOWN;
    seen.unary_peer[0] = '\0';
    seen.unary_peer_null = 0;
    pthread_mutex_unlock(&seen.lock);
}

/* Waits until cond_fn() holds (checked under the lock), at most 5 s. */
static int seen_wait(int (*cond_fn)(void))
{
    uint64_t deadline = tt_now_ms() + TIMEOUT_MS;
    int ok;

    pthread_mutex_lock(&seen.lock);
    while (!(ok = cond_fn()) && tt_now_ms() < deadline) {
        pthread_mutex_unlock(&seen.lock);
        usleep(2000);
        pthread_mutex_lock(&seen.lock);
    }
    pthread_mutex_unlock(&seen.lock);
    return ok;
}

static int have_stream(void)
{
    return seen.stream != NULL;
}

static int have_3_acks(void)
{
    return seen.n_acks >= 3;
}

static int have_close(void)
{
    return seen.closed;
}

/* Identity.Sign for the tests: answers with the caller's identity as the server saw it
 * (cert_chain_pem = peer SPIFFE ID or "<none>", serial = peer serial); a request for
 * "spiffe://td/deny" is refused with PERMISSION_DENIED. */
static void on_sign(void *ud, const struct tt_grpc_peer *peer, const ProtobufCMessage *req,
                    struct tt_grpc_reply *reply)
{
    const Tether__V1__SignRequest *r = (const Tether__V1__SignRequest *)req;
    Tether__V1__SignResponse resp = TETHER__V1__SIGN_RESPONSE__INIT;

    assert_ptr_equal(req->descriptor, &tether__v1__sign_request__descriptor);
    assert_ptr_equal(ud, &seen);
    pthread_mutex_lock(&seen.lock);
    seen.unary_peer_null = peer->spiffe_id == NULL;
    snprintf(seen.unary_peer, sizeof(seen.unary_peer), "%s",
             peer->spiffe_id != NULL ? peer->spiffe_id : "");
    snprintf(seen.unary_addr, sizeof(seen.unary_addr), "%s", peer->address);
    pthread_mutex_unlock(&seen.lock);
    if (strcmp(r->spiffe_id, "spiffe://td/deny") == 0) {
        tt_grpc_reply_error(reply, GRPC_STATUS_PERMISSION_DENIED, "token refused for %s",
                            r->spiffe_id);
        return;
    }
    resp.cert_chain_pem = (char *)(peer->spiffe_id != NULL ? peer->spiffe_id : "<none>");
    resp.serial = (char *)peer->serial;
    resp.trust_bundle_pem = r->spiffe_id; /* the request, echoed */
    resp.not_after_unix = (int64_t)r->csr_der.len;
    tt_grpc_reply_message(reply, &resp.base);
}

static void on_watch_open(void *ud, struct tt_grpc_stream *st, const struct tt_grpc_peer *peer)
{
    pthread_mutex_lock(&seen.lock);
    seen.stream = tt_grpc_stream_ref(st);
    seen.open_peer_null = peer->spiffe_id == NULL;
    snprintf(seen.open_peer, sizeof(seen.open_peer), "%s",
             peer->spiffe_id != NULL ? peer->spiffe_id : "");
    pthread_mutex_unlock(&seen.lock);
}

static void on_watch_message(void *ud, struct tt_grpc_stream *st, const ProtobufCMessage *msg)
{
    const Tether__V1__WatchRequest *w = (const Tether__V1__WatchRequest *)msg;

    assert_ptr_equal(msg->descriptor, &tether__v1__watch_request__descriptor);
    pthread_mutex_lock(&seen.lock);
    if (w->kind_case == TETHER__V1__WATCH_REQUEST__KIND_HELLO)
        seen.hellos++;
    else if (w->kind_case == TETHER__V1__WATCH_REQUEST__KIND_ACK && seen.n_acks < 8)
        seen.acks[seen.n_acks++] = w->ack->version;
    pthread_mutex_unlock(&seen.lock);
}

static void on_watch_close(void *ud, struct tt_grpc_stream *st, grpc_status_code code)
{
    pthread_mutex_lock(&seen.lock);
    seen.closed = 1;
    seen.close_code = code;
    pthread_mutex_unlock(&seen.lock);
}

/* --- One control connection: loopback TCP, tlspipe on both ends, gRPC on top ------------ */

struct fixture {
    struct tt_grpc_server *srv;
    int lfd;
    struct tt_addr addr;
    struct tt_grpc_channel *ch;
    struct tt_tlspipe *server_pipe, *client_pipe;
    struct tt_identity *client_identity; /* NULL: client_id */
};

/* The server's half of a connection, run in a thread while the client connects. */
struct accept_job {
    struct fixture *f;
    enum tt_tls_role role;
    int result;
};

static void *accept_server(struct accept_job *j);

static void *accept_main(void *arg)
{
    accept_server(arg);
    tt_buf_pool_drain(); /* the handshake's slabs, cached by this thread */
    return NULL;
}

static void *accept_server(struct accept_job *j)
{
    struct tt_tls *tls;
    char id[2049], serial[TT_SERIAL_MAX];
    int fd, app;

    fd = accept4(j->f->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        j->result = -errno;
        return NULL;
    }
    tls = tt_tls_new(control_id, j->role, NULL);
    if (tls == NULL) {
        close(fd);
        j->result = -ENOMEM;
        return NULL;
    }
    j->result = tt_tlspipe_handshake(fd, tls, TIMEOUT_MS);
    if (j->result < 0) {
        tt_tls_free(tls);
        close(fd);
        return NULL;
    }
    snprintf(id, sizeof(id), "%s", tt_tls_peer_id(tls));
    snprintf(serial, sizeof(serial), "%s", tt_tls_peer_serial(tls));
    j->result = tt_tlspipe_new(fd, tls, &app, &j->f->server_pipe);
    if (j->result == 0)
        j->result =
            tt_grpc_server_add_fd(j->f->srv, app, id[0] != '\0' ? id : NULL, serial, "127.0.0.1:1");
    return NULL;
}

/* Connects a client of `client_role` (expecting `expect` as the server's ID) to a server
 * of `server_role`. Returns 0 with f->ch set, or the first failure; *server_result gets
 * the server side's outcome. */
static int connect_client(struct fixture *f, enum tt_tls_role server_role,
                          enum tt_tls_role client_role, const char *expect, int *server_result)
{
    struct accept_job job = {.f = f, .role = server_role};
    struct tt_tls *tls;
    pthread_t t;
    int fd, app, r;

    assert_int_equal(pthread_create(&t, NULL, accept_main, &job), 0);
    r = tt_tlspipe_connect(&f->addr, TIMEOUT_MS, &fd);
    assert_int_equal(r, 0);
    tls = tt_tls_new(f->client_identity != NULL ? f->client_identity : client_id, client_role,
                     expect);
    assert_non_null(tls);
    r = tt_tlspipe_handshake(fd, tls, TIMEOUT_MS);
    if (r == 0) {
        r = tt_tlspipe_new(fd, tls, &app, &f->client_pipe);
        if (r == 0) {
            f->ch = tt_grpc_channel_new_from_fd(app);
            assert_non_null(f->ch);
        }
    } else {
        tt_tls_free(tls);
        close(fd);
    }
    pthread_join(t, NULL);
    if (server_result != NULL)
        *server_result = job.result;
    return r;
}

static int listen_loopback(struct tt_addr *addr)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    memset(addr, 0, sizeof(*addr));
    memcpy(&addr->ss, &sin, sizeof(sin));
    addr->len = sizeof(sin);
    tt_sockaddr_format((struct sockaddr *)&sin, addr->text, sizeof(addr->text));
    return fd;
}

static int fixture_setup(void **state)
{
    static const struct tt_grpc_stream_cbs cbs = {
        .on_open = on_watch_open, .on_message = on_watch_message, .on_close = on_watch_close};
    struct fixture *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return -1;
    seen_reset();
    f->srv = tt_grpc_server_new();
    if (f->srv == NULL ||
        tt_grpc_server_add_unary(f->srv, SIGN_PATH, &tether__v1__sign_request__descriptor, on_sign,
                                 &seen) != 0 ||
        tt_grpc_server_add_stream(f->srv, WATCH_PATH, &tether__v1__watch_request__descriptor, &cbs,
                                  &seen) != 0 ||
        tt_grpc_server_start(f->srv) != 0)
        return -1;
    f->lfd = listen_loopback(&f->addr);
    *state = f;
    return 0;
}

static int fixture_teardown(void **state)
{
    struct fixture *f = *state;

    tt_grpc_channel_free(f->ch);
    tt_grpc_server_shutdown(f->srv);
    pthread_mutex_lock(&seen.lock);
    struct tt_grpc_stream *st = seen.stream;
    seen.stream = NULL;
    pthread_mutex_unlock(&seen.lock);
    tt_grpc_stream_unref(st);
    tt_grpc_server_free(f->srv);
    tt_tlspipe_release(f->server_pipe);
    tt_tlspipe_release(f->client_pipe);
    close(f->lfd);
    free(f);
    return 0;
}

static grpc_status_code call_sign(struct fixture *f, const char *spiffe_id,
                                  Tether__V1__SignResponse **resp, char *details, size_t dlen)
{
    Tether__V1__SignRequest req = TETHER__V1__SIGN_REQUEST__INIT;
    ProtobufCMessage *out = NULL;
    grpc_status_code code;
    uint8_t csr[3] = {1, 2, 3};

    req.spiffe_id = (char *)spiffe_id;
    req.csr_der.data = csr;
    req.csr_der.len = sizeof(csr);
    assert_int_equal(tt_grpc_call_unary(f->ch, SIGN_PATH, &req.base,
                                        &tether__v1__sign_response__descriptor, TIMEOUT_MS, &out,
                                        &code, details, dlen),
                     0);
    *resp = (Tether__V1__SignResponse *)out;
    return code;
}

/* --- Tests ------------------------------------------------------------------------------ */

/* A unary call over mutual TLS: the handler sees the client certificate's SPIFFE ID and
 * serial, and its response comes back intact. */
static void test_grpc_unary_sees_peer_identity(void **state)
{
    struct fixture *f = *state;
    Tether__V1__SignResponse *resp = NULL;
    char details[TT_GRPC_DETAILS_MAX];

    assert_int_equal(
        connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, CONTROL_ID, NULL), 0);
    assert_int_equal(call_sign(f, CLIENT_ID, &resp, details, sizeof(details)), GRPC_STATUS_OK);
    assert_non_null(resp);
    assert_string_equal(resp->cert_chain_pem, CLIENT_ID);
    assert_string_equal(resp->serial, tt_identity_leaf(client_id)->serial);
    assert_string_equal(resp->trust_bundle_pem, CLIENT_ID);
    assert_int_equal(resp->not_after_unix, 3);
    assert_string_equal(seen.unary_peer, CLIENT_ID);
    /* The network address given to add_fd, not gRPC's "fd:N". */
    assert_string_equal(seen.unary_addr, "127.0.0.1:1");
    protobuf_c_message_free_unpacked(&resp->base, NULL);

    /* A second call on the same connection works too. */
    assert_int_equal(call_sign(f, "spiffe://td/x", &resp, details, sizeof(details)),
                     GRPC_STATUS_OK);
    assert_string_equal(resp->trust_bundle_pem, "spiffe://td/x");
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* A handler's error status and details reach the client; no response message. */
static void test_grpc_unary_error_status(void **state)
{
    struct fixture *f = *state;
    Tether__V1__SignResponse *resp = (void *)1;
    char details[TT_GRPC_DETAILS_MAX];

    assert_int_equal(
        connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, CONTROL_ID, NULL), 0);
    assert_int_equal(call_sign(f, "spiffe://td/deny", &resp, details, sizeof(details)),
                     GRPC_STATUS_PERMISSION_DENIED);
    assert_null(resp);
    assert_string_equal(details, "token refused for spiffe://td/deny");
}

/* A request that is not a SignRequest is refused INVALID_ARGUMENT before the handler; an
 * unknown method is UNIMPLEMENTED; a call whose deadline passes is DEADLINE_EXCEEDED. */
static void test_grpc_unary_bad_request_and_unknown_method(void **state)
{
    struct fixture *f = *state;
    Tether__V1__Snapshot bad = TETHER__V1__SNAPSHOT__INIT;
    ProtobufCMessage *out = (void *)1;
    grpc_status_code code;
    char details[TT_GRPC_DETAILS_MAX];

    assert_int_equal(
        connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, CONTROL_ID, NULL), 0);
    /* Field 1 as a varint where SignRequest has bytes: not a valid SignRequest. */
    bad.version = 7;
    assert_int_equal(tt_grpc_call_unary(f->ch, SIGN_PATH, &bad.base,
                                        &tether__v1__sign_response__descriptor, TIMEOUT_MS, &out,
                                        &code, details, sizeof(details)),
                     0);
    assert_int_equal(code, GRPC_STATUS_INVALID_ARGUMENT);
    assert_null(out);
    assert_non_null(strstr(details, "tether.v1.SignRequest"));
    assert_string_equal(seen.unary_peer, ""); /* the handler never ran */

    assert_int_equal(tt_grpc_call_unary(f->ch, "/tether.v1.Identity/Nope", &bad.base,
                                        &tether__v1__sign_response__descriptor, TIMEOUT_MS, &out,
                                        &code, details, sizeof(details)),
                     0);
    assert_int_equal(code, GRPC_STATUS_UNIMPLEMENTED);
    assert_null(out);
}

static Tether__V1__Snapshot *recv_snapshot(struct tt_grpc_client_stream *cs, uint64_t timeout)
{
    ProtobufCMessage *m = NULL;

    assert_int_equal(tt_grpc_client_stream_recv(cs, timeout, &m), 1);
    assert_non_null(m);
    assert_ptr_equal(m->descriptor, &tether__v1__snapshot__descriptor);
    return (Tether__V1__Snapshot *)m;
}

static void send_ack(struct tt_grpc_client_stream *cs, uint64_t version)
{
    Tether__V1__WatchRequest w = TETHER__V1__WATCH_REQUEST__INIT;
    Tether__V1__Ack ack = TETHER__V1__ACK__INIT;

    ack.version = version;
    ack.accepted = 1;
    w.kind_case = TETHER__V1__WATCH_REQUEST__KIND_ACK;
    w.ack = &ack;
    assert_int_equal(tt_grpc_client_stream_send(cs, &w.base, TIMEOUT_MS), 0);
}

/* Discovery.Watch both ways: Hello up, three snapshots down (sent from this thread, not
 * the CQ thread), an Ack up for each, then the server finishes with a status the client
 * reads, and on_close reports it. */
static void test_grpc_watch_bidi(void **state)
{
    struct fixture *f = *state;
    Tether__V1__WatchRequest hello_req = TETHER__V1__WATCH_REQUEST__INIT;
    Tether__V1__Hello hello = TETHER__V1__HELLO__INIT;
    char *addrs[1] = {"127.0.0.1:15006"};
    struct tt_grpc_client_stream *cs;
    ProtobufCMessage *m = NULL;
    char details[TT_GRPC_DETAILS_MAX];

    assert_int_equal(
        connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, CONTROL_ID, NULL), 0);
    cs = tt_grpc_client_stream_open(f->ch, WATCH_PATH, &tether__v1__snapshot__descriptor);
    assert_non_null(cs);
    hello.n_inbound_addresses = 1;
    hello.inbound_addresses = addrs;
    hello_req.kind_case = TETHER__V1__WATCH_REQUEST__KIND_HELLO;
    hello_req.hello = &hello;
    assert_int_equal(tt_grpc_client_stream_send(cs, &hello_req.base, TIMEOUT_MS), 0);
    assert_true(seen_wait(have_stream));
    assert_string_equal(seen.open_peer, CLIENT_ID);
    assert_string_equal(tt_grpc_stream_peer(seen.stream)->spiffe_id, CLIENT_ID);

    for (uint64_t v = 1; v <= 3; v++) {
        Tether__V1__Snapshot snap = TETHER__V1__SNAPSHOT__INIT;
        snap.version = v;
        snap.policy_json = "{\"version\":1}";
        assert_int_equal(tt_grpc_stream_send(seen.stream, &snap.base), 0);
    }
    for (uint64_t v = 1; v <= 3; v++) {
        Tether__V1__Snapshot *s = recv_snapshot(cs, TIMEOUT_MS);
        assert_int_equal(s->version, v);
        assert_string_equal(s->policy_json, "{\"version\":1}");
        protobuf_c_message_free_unpacked(&s->base, NULL);
        send_ack(cs, v);
    }
    assert_true(seen_wait(have_3_acks));
    assert_int_equal(seen.hellos, 1);
    assert_int_equal(seen.acks[0], 1);
    assert_int_equal(seen.acks[1], 2);
    assert_int_equal(seen.acks[2], 3);

    assert_int_equal(tt_grpc_stream_finish(seen.stream, GRPC_STATUS_UNAVAILABLE, "going away"), 0);
    assert_int_equal(tt_grpc_stream_finish(seen.stream, GRPC_STATUS_OK, NULL), -EPIPE);
    assert_int_equal(tt_grpc_client_stream_recv(cs, TIMEOUT_MS, &m), -EPIPE);
    assert_null(m);
    assert_int_equal(tt_grpc_client_stream_status(cs, details, sizeof(details)),
                     GRPC_STATUS_UNAVAILABLE);
    assert_string_equal(details, "going away");
    assert_true(seen_wait(have_close));
    assert_int_equal(seen.close_code, GRPC_STATUS_UNAVAILABLE);
    Tether__V1__Snapshot late = TETHER__V1__SNAPSHOT__INIT;
    assert_int_equal(tt_grpc_stream_send(seen.stream, &late.base), -EPIPE);
    tt_grpc_client_stream_close(cs);
}

/* A receive that times out leaves the stream usable: the next one gets the message. */
static void test_grpc_stream_recv_timeout_then_message(void **state)
{
    struct fixture *f = *state;
    Tether__V1__Snapshot snap = TETHER__V1__SNAPSHOT__INIT;
    struct tt_grpc_client_stream *cs;
    ProtobufCMessage *m = (void *)1;
    uint64_t t0;

    assert_int_equal(
        connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, CONTROL_ID, NULL), 0);
    cs = tt_grpc_client_stream_open(f->ch, WATCH_PATH, &tether__v1__snapshot__descriptor);
    assert_non_null(cs);
    t0 = tt_now_ms();
    assert_int_equal(tt_grpc_client_stream_recv(cs, 150, &m), 0);
    assert_null(m);
    assert_true(tt_now_ms() - t0 >= 140);
    assert_true(seen_wait(have_stream));
    assert_int_equal(tt_grpc_client_stream_recv(cs, 50, &m), 0); /* still nothing */
    snap.version = 42;
    assert_int_equal(tt_grpc_stream_send(seen.stream, &snap.base), 0);
    Tether__V1__Snapshot *s = recv_snapshot(cs, TIMEOUT_MS);
    assert_int_equal(s->version, 42);
    protobuf_c_message_free_unpacked(&s->base, NULL);

    /* Closing with a receive still posted collects it; the server sees CANCELLED. */
    assert_int_equal(tt_grpc_client_stream_recv(cs, 20, &m), 0);
    tt_grpc_client_stream_close(cs);
    assert_true(seen_wait(have_close));
    assert_int_equal(seen.close_code, GRPC_STATUS_CANCELLED);
}

/* Bootstrap: a client without a certificate reaches a server that allows it, and the
 * handler sees no identity (NULL), not an empty or stale one. */
static void test_grpc_anonymous_client_has_no_identity(void **state)
{
    struct fixture *f = *state;
    Tether__V1__SignResponse *resp = NULL;
    char details[TT_GRPC_DETAILS_MAX];

    assert_int_equal(
        connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT_ANONYMOUS, CONTROL_ID, NULL),
        0);
    assert_int_equal(call_sign(f, CLIENT_ID, &resp, details, sizeof(details)), GRPC_STATUS_OK);
    assert_string_equal(resp->cert_chain_pem, "<none>");
    assert_string_equal(resp->serial, "");
    assert_true(seen.unary_peer_null);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
}

/* A server that requires a certificate refuses the anonymous client (TT_E_NO_CERT), and
 * the client verifies the server's identity (TT_E_WRONG_IDENTITY). */
static void test_tlspipe_handshake_refusals(void **state)
{
    struct fixture *f = *state;
    int srv_r = 0;

    /* In TLS 1.3 the client finishes its handshake before the server has checked its
     * (absent) certificate: the refusal reaches the client as a dead connection. */
    int r = connect_client(f, TT_TLS_SERVER, TT_TLS_CLIENT_ANONYMOUS, CONTROL_ID, &srv_r);
    assert_int_equal(srv_r, TT_E_NO_CERT);
    if (r == 0) {
        Tether__V1__SignResponse *resp = NULL;
        char details[TT_GRPC_DETAILS_MAX];
        assert_int_equal(call_sign(f, CLIENT_ID, &resp, details, sizeof(details)),
                         GRPC_STATUS_UNAVAILABLE);
        assert_null(resp);
        tt_tlspipe_release(f->client_pipe);
        f->client_pipe = NULL;
        tt_grpc_channel_free(f->ch);
        f->ch = NULL;
    } else {
        assert_true(r < 0);
    }

    /* "Optional" still verifies a certificate that is presented. */
    f->client_identity = stranger_id;
    r = connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, CONTROL_ID, &srv_r);
    assert_int_equal(srv_r, TT_E_UNKNOWN_CA);
    if (r == 0) {
        Tether__V1__SignResponse *resp = NULL;
        char details[TT_GRPC_DETAILS_MAX];
        assert_int_equal(call_sign(f, CLIENT_ID, &resp, details, sizeof(details)),
                         GRPC_STATUS_UNAVAILABLE);
        tt_tlspipe_release(f->client_pipe);
        f->client_pipe = NULL;
        tt_grpc_channel_free(f->ch);
        f->ch = NULL;
    }
    f->client_identity = NULL;

    r = connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, "spiffe://td/not-control",
                       &srv_r);
    assert_int_equal(r, TT_E_WRONG_IDENTITY);
    assert_true(srv_r < 0);
    assert_null(f->ch);
}

/* A peer that never speaks TLS: the handshake gives up at its deadline. */
static void test_tlspipe_handshake_timeout(void **state)
{
    struct fixture *f = *state;
    struct tt_tls *tls = tt_tls_new(client_id, TT_TLS_CLIENT, CONTROL_ID);
    uint64_t t0 = tt_now_ms();
    int fd;

    assert_int_equal(tt_tlspipe_connect(&f->addr, TIMEOUT_MS, &fd), 0); /* never accepted */
    assert_int_equal(tt_tlspipe_handshake(fd, tls, 200), TT_E_TIMEOUT);
    assert_true(tt_now_ms() - t0 >= 190);
    tt_tls_free(tls);
    close(fd);
}

/* Connecting to a closed port fails with its errno. */
static void test_tlspipe_connect_refused(void **state)
{
    struct tt_addr addr;
    int fd = -1, lfd = listen_loopback(&addr);

    close(lfd); /* nothing listens there any more */
    assert_int_equal(tt_tlspipe_connect(&addr, TIMEOUT_MS, &fd), -ECONNREFUSED);
    assert_int_equal(fd, -1);
}

/* Forcing the server's pipe closed (a revoked peer) ends the connection: the relay stops
 * and the client's next call fails UNAVAILABLE. */
static void test_tlspipe_close_cuts_connection(void **state)
{
    struct fixture *f = *state;
    Tether__V1__SignResponse *resp = NULL;
    char details[TT_GRPC_DETAILS_MAX];
    uint64_t deadline;

    assert_int_equal(
        connect_client(f, TT_TLS_SERVER_OPTIONAL_CLIENT, TT_TLS_CLIENT, CONTROL_ID, NULL), 0);
    assert_int_equal(call_sign(f, CLIENT_ID, &resp, details, sizeof(details)), GRPC_STATUS_OK);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    assert_int_equal(tt_tlspipe_running(f->server_pipe), 1);

    tt_tlspipe_close(f->server_pipe);
    f->server_pipe = NULL;
    deadline = tt_now_ms() + TIMEOUT_MS;
    while (tt_tlspipe_running(f->client_pipe) && tt_now_ms() < deadline)
        usleep(2000);
    assert_int_equal(tt_tlspipe_running(f->client_pipe), 0);
    assert_int_equal(call_sign(f, CLIENT_ID, &resp, details, sizeof(details)),
                     GRPC_STATUS_UNAVAILABLE);
    assert_null(resp);
}

struct hs_job {
    int fd;
    struct tt_tls *tls;
    int r;
};

static void *hs_main(void *arg)
{
    struct hs_job *h = arg;

    h->r = tt_tlspipe_handshake(h->fd, h->tls, TIMEOUT_MS);
    tt_buf_pool_drain();
    return NULL;
}

/* Half-close both ways without gRPC: data then EOF from each side, in order, and both
 * relays end on their own. */
static void test_tlspipe_relay_half_close(void **state)
{
    struct fixture *f = *state;
    struct tt_tls *stls, *ctls;
    struct tt_tlspipe *sp, *cp;
    int sfd, cfd, sapp, capp;
    char buf[64];
    static char big[200000];

    cfd = -1;
    assert_int_equal(tt_tlspipe_connect(&f->addr, TIMEOUT_MS, &cfd), 0);
    sfd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
    assert_true(sfd >= 0);
    stls = tt_tls_new(control_id, TT_TLS_SERVER, NULL);
    ctls = tt_tls_new(client_id, TT_TLS_CLIENT, CONTROL_ID);
    /* Both handshakes block: run the server's in a thread. */
    struct hs_job h = {.fd = sfd, .tls = stls, .r = 1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hs_main, &h), 0);
    assert_int_equal(tt_tlspipe_handshake(cfd, ctls, TIMEOUT_MS), 0);
    pthread_join(t, NULL);
    assert_int_equal(h.r, 0);
    assert_string_equal(tt_tls_peer_id(stls), CLIENT_ID);
    assert_int_equal(tt_tlspipe_new(sfd, stls, &sapp, &sp), 0);
    assert_int_equal(tt_tlspipe_new(cfd, ctls, &capp, &cp), 0);

    /* Client -> server: a large write (more than the relay's buffers) then EOF. */
    memset(big, 'x', sizeof(big));
    size_t sent = 0, got = 0;
    int eof = 0;
    while (!eof) {
        if (sent < sizeof(big)) {
            ssize_t w = send(capp, big + sent, sizeof(big) - sent, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            if (sent == sizeof(big))
                shutdown(capp, SHUT_WR);
        }
        ssize_t n = recv(sapp, buf, sizeof(buf), 0);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            eof = 1;
        else if (errno == EAGAIN)
            usleep(500);
        else
            fail_msg("recv: %s", strerror(errno));
    }
    assert_int_equal(got, sizeof(big));

    /* The server side can still answer after the client's half-close. */
    assert_int_equal(send(sapp, "world", 5, MSG_NOSIGNAL), 5);
    close(sapp);
    size_t off = 0;
    uint64_t deadline = tt_now_ms() + TIMEOUT_MS;
    for (;;) {
        ssize_t n = recv(capp, buf + off, sizeof(buf) - off, 0);
        if (n > 0)
            off += (size_t)n;
        else if (n == 0)
            break;
        else if (errno == EAGAIN && tt_now_ms() < deadline)
            usleep(500);
        else
            fail_msg("recv: %s", strerror(errno));
    }
    assert_int_equal(off, 5);
    assert_memory_equal(buf, "world", 5);
    close(capp);
    deadline = tt_now_ms() + TIMEOUT_MS;
    while ((tt_tlspipe_running(sp) || tt_tlspipe_running(cp)) && tt_now_ms() < deadline)
        usleep(2000);
    assert_int_equal(tt_tlspipe_running(sp), 0);
    assert_int_equal(tt_tlspipe_running(cp), 0);
    tt_tlspipe_release(sp);
    tt_tlspipe_release(cp);
}

/* Misuse of the server API is refused: methods after start, fds before start. */
static void test_grpc_server_api_misuse(void **state)
{
    struct tt_grpc_server *srv = tt_grpc_server_new();
    int sv[2];

    assert_non_null(srv);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(tt_grpc_server_add_fd(srv, sv[0], NULL, NULL, NULL),
                     -EINVAL); /* not started */
    assert_int_equal(tt_grpc_server_add_unary(srv, SIGN_PATH, &tether__v1__sign_request__descriptor,
                                              on_sign, &seen),
                     0);
    assert_int_equal(tt_grpc_server_add_unary(srv, SIGN_PATH, &tether__v1__sign_request__descriptor,
                                              on_sign, &seen),
                     -EINVAL); /* twice */
    assert_int_equal(tt_grpc_server_start(srv), 0);
    assert_int_equal(tt_grpc_server_add_unary(srv, "/x.Y/Z", &tether__v1__sign_request__descriptor,
                                              on_sign, &seen),
                     -EINVAL);
    tt_grpc_server_shutdown(srv);
    tt_grpc_server_shutdown(srv); /* idempotent */
    tt_grpc_server_free(srv);
    /* sv[0] was taken (and closed): its peer sees EOF. */
    char c;
    assert_int_equal(recv(sv[1], &c, 1, 0), 0);
    close(sv[1]);

    tt_grpc_server_free(tt_grpc_server_new()); /* never started */
    tt_grpc_server_free(NULL);
}

/* DEPS.md: libgrpc (OpenSSL 3) and BoringSSL in one process crash; only grpc_unsecure
 * may be linked. Fails when OpenSSL 3 is mapped into this process. */
static void test_grpc_no_openssl3_in_process(void **state)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[1024];
    int bssl = 0;

    assert_non_null(maps);
    while (fgets(line, sizeof(line), maps) != NULL) {
        assert_null(strstr(line, "libssl.so.3"));
        assert_null(strstr(line, "libcrypto.so.3"));
        if (strstr(line, "android/libssl.so") != NULL)
            bssl = 1;
    }
    fclose(maps);
    assert_true(bssl); /* and BoringSSL is what TLS runs on */
}

static int global_setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    pthread_mutex_init(&seen.lock, NULL);
    root = tt_certgen_ca("test root", NULL);
    if (root == NULL)
        return -1;
    control_leaf = tt_certgen_leaf(root, CONTROL_ID);
    client_leaf = tt_certgen_leaf(root, CLIENT_ID);
    if (control_leaf == NULL || client_leaf == NULL)
        return -1;
    char err[512] = "";
    control_id =
        tt_identity_from_pem(control_leaf->chain_pem, strlen(control_leaf->chain_pem),
                             control_leaf->key_pem, strlen(control_leaf->key_pem), root->cert_pem,
                             strlen(root->cert_pem), "control", err, sizeof(err));
    client_id =
        tt_identity_from_pem(client_leaf->chain_pem, strlen(client_leaf->chain_pem),
                             client_leaf->key_pem, strlen(client_leaf->key_pem), root->cert_pem,
                             strlen(root->cert_pem), "client", err, sizeof(err));
    other_root = tt_certgen_ca("other root", NULL);
    stranger_leaf = other_root != NULL ? tt_certgen_leaf(other_root, CLIENT_ID) : NULL;
    if (stranger_leaf == NULL)
        return -1;
    char both[16384];
    snprintf(both, sizeof(both), "%s%s", other_root->cert_pem, root->cert_pem);
    stranger_id = tt_identity_from_pem(stranger_leaf->chain_pem, strlen(stranger_leaf->chain_pem),
                                       stranger_leaf->key_pem, strlen(stranger_leaf->key_pem), both,
                                       strlen(both), "stranger", err, sizeof(err));
    if (control_id == NULL || client_id == NULL || stranger_id == NULL) {
        fprintf(stderr, "identity: %s\n", err);
        return -1;
    }
    return 0;
}

static int global_teardown(void **state)
{
    tt_identity_unref(control_id);
    tt_identity_unref(client_id);
    tt_identity_unref(stranger_id);
    tt_certgen_free(stranger_leaf);
    tt_certgen_free(other_root);
    tt_certgen_free(control_leaf);
    tt_certgen_free(client_leaf);
    tt_certgen_free(root);
    return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_grpc_unary_sees_peer_identity),
        T(test_grpc_unary_error_status),
        T(test_grpc_unary_bad_request_and_unknown_method),
        T(test_grpc_watch_bidi),
        T(test_grpc_stream_recv_timeout_then_message),
        T(test_grpc_anonymous_client_has_no_identity),
        T(test_tlspipe_handshake_refusals),
        T(test_tlspipe_handshake_timeout),
        cmocka_unit_test(test_tlspipe_connect_refused),
        T(test_tlspipe_close_cuts_connection),
        T(test_tlspipe_relay_half_close),
        cmocka_unit_test(test_grpc_server_api_misuse),
        cmocka_unit_test(test_grpc_no_openssl3_in_process),
    };
    return cmocka_run_group_tests(tests, global_setup, global_teardown);
}
