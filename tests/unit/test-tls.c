/* Unit tests for tls.c: in-memory handshakes between two sessions (bytes pumped by hand,
 * no sockets), every refusal with its exact code, data both ways, close_notify, a large
 * transfer, hostile input, resumption and the memory an idle session keeps. */
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/buf.h"
#include "certgen.h"
#include "core/errors.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"
#include "tls/revocations.h"
#include "tls/tls.h"

#define SERVER_ID "spiffe://td/ns/a/sa/server"
#define CLIENT_ID "spiffe://td/ns/b/sa/client"

/* Shared material, generated once: two roots, an intermediate, and leaves. */
/* The revocations the helpers apply to every server session (NULL: none). */
static struct tt_revocations *server_revocations;

static struct tt_certgen_cert *root, *other_root, *inter;
static struct tt_certgen_cert *server_leaf, *client_leaf;
static struct tt_identity *server_id, *client_id;

static struct tt_identity *make_identity(const struct tt_certgen_cert *leaf, const char *bundle)
{
    char err[512] = "";
    struct tt_identity *id = tt_identity_from_pem(leaf->chain_pem, strlen(leaf->chain_pem),
                                                  leaf->key_pem, strlen(leaf->key_pem), bundle,
                                                  strlen(bundle), "test", err, sizeof(err));
    if (id == NULL)
        fail_msg("identity: %s", err);
    return id;
}

/* A leaf with the given URIs and validity, signed by issuer. */
static struct tt_certgen_cert *make_leaf(const struct tt_certgen_cert *issuer, const char *uri1,
                                         const char *uri2, int64_t nb, int64_t na)
{
    struct tt_certgen_opts o = {
        .cn = "workload", .uris = {uri1, uri2}, .not_before = nb, .not_after = na};
    struct tt_certgen_cert *c = tt_certgen_new(&o, issuer);
    assert_non_null(c);
    return c;
}

static int setup(void **state)
{
    root = tt_certgen_ca("test root", NULL);
    other_root = tt_certgen_ca("other root", NULL);
    inter = tt_certgen_ca("test intermediate", root);
    server_leaf = tt_certgen_leaf(root, SERVER_ID);
    client_leaf = tt_certgen_leaf(inter, CLIENT_ID); /* chain: leaf + intermediate */
    if (!root || !other_root || !inter || !server_leaf || !client_leaf)
        return -1;
    server_id = make_identity(server_leaf, root->cert_pem);
    client_id = make_identity(client_leaf, root->cert_pem);
    return 0;
}

static int teardown(void **state)
{
    tt_identity_unref(server_id);
    tt_identity_unref(client_id);
    tt_certgen_free(server_leaf);
    tt_certgen_free(client_leaf);
    tt_certgen_free(inter);
    tt_certgen_free(other_root);
    tt_certgen_free(root);
    tt_buf_pool_drain();
    return 0;
}

/* Moves everything `from` has pending into `to`; returns the byte count. */
static size_t pump(struct tt_tls *from, struct tt_tls *to)
{
    const uint8_t *data;
    size_t n = tt_tls_pending(from, &data);

    if (n > 0) {
        assert_int_equal(tt_tls_feed(to, data, n), 0);
        tt_tls_consume(from, n);
    }
    return n;
}

/* Drives both handshakes until each side has an answer and no bytes move. */
static void handshake(struct tt_tls *c, struct tt_tls *s, int *rc, int *rs)
{
    *rc = 0;
    *rs = 0;
    for (int i = 0; i < 32; i++) {
        if (*rc == 0)
            *rc = tt_tls_handshake(c);
        size_t moved = pump(c, s);
        if (*rs == 0)
            *rs = tt_tls_handshake(s);
        moved += pump(s, c);
        if (*rc != 0 && *rs != 0 && moved == 0)
            return;
    }
}

/* A connected pair on the given identities; asserts both handshakes succeed. */
static void connect_pair(struct tt_identity *cid, struct tt_identity *sid, const char *expect,
                         struct tt_tls **c, struct tt_tls **s)
{
    int rc, rs;

    *c = tt_tls_new(cid, TT_TLS_CLIENT, expect);
    *s = tt_tls_new(sid, TT_TLS_SERVER, NULL);
    tt_tls_set_revocations(*s, server_revocations);
    assert_non_null(*c);
    assert_non_null(*s);
    handshake(*c, *s, &rc, &rs);
    if (rc != 1 || rs != 1)
        fail_msg("handshake: client %d (%s), server %d (%s)", rc, tt_strerror(rc), rs,
                 tt_strerror(rs));
}

/* Reads from r until `len` bytes arrived (pumping w -> r); asserts they equal `want`. */
static void expect_data(struct tt_tls *w, struct tt_tls *r, const void *want, size_t len)
{
    uint8_t *got = malloc(len + 1);
    size_t have = 0;

    assert_non_null(got);
    pump(w, r);
    while (have < len) {
        int n = tt_tls_read(r, got + have, len - have);
        assert_true(n > 0);
        have += (size_t)n;
    }
    assert_memory_equal(got, want, len);
    /* Nothing more than what was written. */
    assert_int_equal(tt_tls_read(r, got, 1), 0);
    free(got);
}

static void test_tls_handshake_and_data(void **state)
{
    struct tt_tls *c, *s;
    const uint8_t *data;
    uint8_t buf[64];

    connect_pair(client_id, server_id, SERVER_ID, &c, &s);
    assert_string_equal(tt_tls_version(c), "TLSv1.3");
    assert_string_equal(tt_tls_version(s), "TLSv1.3");
    assert_false(tt_tls_resumed(s));
    /* Each side saw the other's identity, serial and issuer. */
    assert_string_equal(tt_tls_peer_id(c), SERVER_ID);
    assert_string_equal(tt_tls_peer_id(s), CLIENT_ID);
    const struct tt_cert_info *ci = tt_identity_leaf(client_id);
    assert_string_equal(tt_tls_peer_serial(s), ci->serial);
    assert_string_equal(tt_tls_peer_issuer(s), ci->issuer);
    assert_non_null(strstr(tt_tls_peer_issuer(s), "CN=test intermediate"));
    assert_non_null(strstr(tt_tls_peer_issuer(c), "CN=test root"));

    assert_int_equal(tt_tls_write(c, "hello server", 12), 0);
    expect_data(c, s, "hello server", 12);
    assert_int_equal(tt_tls_write(s, "hello client", 12), 0);
    expect_data(s, c, "hello client", 12);

    /* Half-close from the client: the server sees EOF, then can still answer. */
    assert_int_equal(tt_tls_close_notify(c), 0);
    pump(c, s);
    assert_int_equal(tt_tls_read(s, buf, sizeof(buf)), TT_TLS_EOF);
    assert_int_equal(tt_tls_read(s, buf, sizeof(buf)), TT_TLS_EOF);
    /* The end of the stream is no errno (it was -1, which -EPERM is too). */
    assert_true(TT_TLS_EOF < -1000 && TT_TLS_EOF != -EPERM);
    assert_non_null(strstr(tt_strerror(TT_TLS_EOF), "closed"));
    assert_int_equal(tt_tls_write(s, "bye", 3), 0);
    expect_data(s, c, "bye", 3);
    assert_int_equal(tt_tls_close_notify(s), 0);
    pump(s, c);
    assert_int_equal(tt_tls_read(c, buf, sizeof(buf)), TT_TLS_EOF);

    /* Idle: nothing buffered on either side. */
    assert_int_equal(tt_tls_pending(c, &data), 0);
    assert_null(data);
    assert_int_equal(tt_tls_input_len(s), 0);
    assert_int_equal(tt_tls_input_len(c), 0);
    tt_tls_free(c);
    tt_tls_free(s);
}

/* ALPN between the pool's two ends: a client offering "tether-h2" gets it from a server
 * that selects it; a server that selects nothing, or another token, completes the
 * handshake without ALPN (the outbound then falls back to one connection per app
 * connection). An inbound serving "tether-h2,h2" gives a mesh peer the pool's token
 * whatever the order of its offer, an h2 client outside the mesh (curl) "h2", and an
 * HTTP/1.1-only client no ALPN. Bad names are refused. */
static void test_tls_alpn_offer_select(void **state)
{
    static const struct {
        const char *offer, *server, *want;
    } cases[] = {
        {"tether-h2,http/1.1", "tether-h2", "tether-h2"},
        {"tether-h2,http/1.1", NULL, ""},
        {"tether-h2,http/1.1", "h2", ""},
        {"tether-h2,http/1.1", "http/1.1", "http/1.1"},
        {"tether-h2,http/1.1", "tether-h2,h2", "tether-h2"},
        {"h2,tether-h2", "tether-h2,h2", "tether-h2"},
        {"h2,http/1.1", "tether-h2,h2", "h2"},
        {"http/1.1", "tether-h2,h2", ""},
    };
    char got[32];
    int rc, rs;

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tt_tls *c = tt_tls_new(client_id, TT_TLS_CLIENT, SERVER_ID);
        struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
        assert_non_null(c);
        assert_non_null(s);
        assert_int_equal(tt_tls_set_alpn(c, cases[i].offer), 0);
        if (cases[i].server != NULL)
            assert_int_equal(tt_tls_set_alpn(s, cases[i].server), 0);
        handshake(c, s, &rc, &rs);
        assert_int_equal(rc, 1);
        assert_int_equal(rs, 1);
        tt_tls_alpn(c, got, sizeof(got));
        assert_string_equal(got, cases[i].want);
        tt_tls_alpn(s, got, sizeof(got));
        assert_string_equal(got, cases[i].want);
        tt_tls_free(c);
        tt_tls_free(s);
    }
    struct tt_tls *c = tt_tls_new(client_id, TT_TLS_CLIENT, SERVER_ID);
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(tt_tls_set_alpn(c, ""), -EINVAL);
    assert_int_equal(tt_tls_set_alpn(c, NULL), -EINVAL);
    assert_int_equal(tt_tls_set_alpn(c, "a,,b"), -EINVAL);
    assert_int_equal(tt_tls_set_alpn(c, "a,"), -EINVAL);
    assert_int_equal(tt_tls_set_alpn(c, ",a"), -EINVAL);
    assert_int_equal(tt_tls_set_alpn(c, longname), -EINVAL);
    tt_tls_free(c);
}

/* Handshake fed one byte at a time: every partial record must be "need more". */
static void test_tls_handshake_byte_by_byte(void **state)
{
    struct tt_tls *c = tt_tls_new(client_id, TT_TLS_CLIENT, SERVER_ID);
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    int rc = 0, rs = 0, rounds = 0;
    const uint8_t *data;

    assert_non_null(c);
    assert_non_null(s);
    while ((rc != 1 || rs != 1) && rounds++ < 100000) {
        if (rc == 0)
            rc = tt_tls_handshake(c);
        if (rs == 0)
            rs = tt_tls_handshake(s);
        assert_true(rc >= 0 && rs >= 0);
        if (tt_tls_pending(c, &data) > 0) {
            assert_int_equal(tt_tls_feed(s, data, 1), 0);
            tt_tls_consume(c, 1);
        }
        if (tt_tls_pending(s, &data) > 0) {
            assert_int_equal(tt_tls_feed(c, data, 1), 0);
            tt_tls_consume(s, 1);
        }
    }
    assert_int_equal(rc, 1);
    assert_int_equal(rs, 1);
    assert_string_equal(tt_tls_peer_id(s), CLIENT_ID);
    pump(s, c); /* session tickets */
    assert_int_equal(tt_tls_write(s, "x", 1), 0);
    expect_data(s, c, "x", 1);
    tt_tls_free(c);
    tt_tls_free(s);
}

static void test_tls_large_transfer(void **state)
{
    const size_t total = 1024 * 1024;
    uint8_t *src = malloc(total), *dst = malloc(total);
    struct tt_tls *c, *s;

    assert_non_null(src);
    assert_non_null(dst);
    for (size_t i = 0; i < total; i++)
        src[i] = (uint8_t)(i * 131 + (i >> 8));
    connect_pair(client_id, server_id, SERVER_ID, &c, &s);

    /* Both directions, written in 10000-byte chunks, read in 7777-byte chunks. */
    for (int dir = 0; dir < 2; dir++) {
        struct tt_tls *w = dir == 0 ? c : s, *r = dir == 0 ? s : c;
        size_t sent = 0, got = 0;
        memset(dst, 0, total);
        while (got < total) {
            if (sent < total) {
                size_t n = total - sent < 10000 ? total - sent : 10000;
                assert_int_equal(tt_tls_write(w, src + sent, n), 0);
                sent += n;
            }
            pump(w, r);
            for (;;) {
                size_t want = total - got < 7777 ? total - got : 7777;
                if (want == 0)
                    break;
                int n = tt_tls_read(r, dst + got, want);
                assert_true(n >= 0);
                if (n == 0)
                    break;
                got += (size_t)n;
            }
        }
        assert_int_equal(sent, total);
        assert_memory_equal(src, dst, total);
    }
    tt_tls_free(c);
    tt_tls_free(s);
    free(src);
    free(dst);
}

/* Refusals between two tt_tls sessions: the verifying side returns `want`, and the
 * other side fails too, in the handshake or (TLS 1.3 client) on its first read. */
static void expect_refused(struct tt_identity *cid, struct tt_identity *sid, const char *expect,
                           int want_client, int want_server)
{
    struct tt_tls *c = tt_tls_new(cid, TT_TLS_CLIENT, expect);
    struct tt_tls *s = tt_tls_new(sid, TT_TLS_SERVER, NULL);
    tt_tls_set_revocations(s, server_revocations);
    uint8_t buf[16];
    int rc, rs;

    assert_non_null(c);
    assert_non_null(s);
    handshake(c, s, &rc, &rs);
    if (want_client != 0) {
        assert_int_equal(rc, want_client);
        assert_int_equal(rs, TT_E_PROTOCOL); /* our alert */
        /* Sticky: asking again gives the same answer. */
        assert_int_equal(tt_tls_handshake(c), want_client);
    }
    if (want_server != 0) {
        assert_int_equal(rs, want_server);
        assert_int_equal(tt_tls_handshake(s), want_server);
        if (rc == 1) /* TLS 1.3: the client finished first and learns on reading */
            assert_int_equal(tt_tls_read(c, buf, sizeof(buf)), TT_E_PROTOCOL);
        else
            assert_int_equal(rc, TT_E_PROTOCOL);
        assert_int_not_equal(tt_tls_read(s, buf, sizeof(buf)), 0);
    }
    tt_tls_free(c);
    tt_tls_free(s);
}

static void test_tls_refuse_unknown_ca(void **state)
{
    /* The client's leaf comes from a root the server does not trust; the client itself
     * trusts both roots. */
    struct tt_certgen_cert *leaf = make_leaf(other_root, CLIENT_ID, NULL, 0, 0);
    char bundle[8192];
    snprintf(bundle, sizeof(bundle), "%s%s", root->cert_pem, other_root->cert_pem);
    struct tt_identity *cid = make_identity(leaf, bundle);
    expect_refused(cid, server_id, SERVER_ID, 0, TT_E_UNKNOWN_CA);
    tt_identity_unref(cid);
    tt_certgen_free(leaf);

    /* And the other way: the client does not trust the server's root. */
    leaf = make_leaf(other_root, SERVER_ID, NULL, 0, 0);
    struct tt_identity *sid = make_identity(leaf, bundle);
    expect_refused(client_id, sid, SERVER_ID, TT_E_UNKNOWN_CA, 0);
    tt_identity_unref(sid);
    tt_certgen_free(leaf);
}

static void test_tls_refuse_revoked(void **state)
{
    const char *client_serial = tt_identity_leaf(client_id)->serial;
    const char *unrelated[] = {"1", "ABCDEF"};
    const char *with_client[] = {"abcdef", client_serial, "01"};
    struct tt_identity *sid = make_identity(server_leaf, root->cert_pem);
    size_t bad;
    struct tt_tls *c, *s;

    /* Serials that are not the client's change nothing. */
    server_revocations = tt_revocations_new(unrelated, 2, &bad);
    assert_non_null(server_revocations);
    assert_false(tt_revocations_check(server_revocations, client_serial));
    connect_pair(client_id, sid, SERVER_ID, &c, &s);
    tt_tls_free(c);
    tt_tls_free(s);
    tt_revocations_unref(server_revocations);

    /* The client's serial among others (any accepted spelling): refused on the server. */
    server_revocations = tt_revocations_new(with_client, 3, &bad);
    assert_non_null(server_revocations);
    assert_int_equal(tt_revocations_count(server_revocations), 3);
    assert_true(tt_revocations_check(server_revocations, client_serial));
    expect_refused(client_id, sid, SERVER_ID, 0, TT_E_REVOKED);
    tt_revocations_unref(server_revocations);

    /* No set (NULL) revokes nothing. */
    server_revocations = NULL;
    connect_pair(client_id, sid, SERVER_ID, &c, &s);
    tt_tls_free(c);
    tt_tls_free(s);
    tt_identity_unref(sid);
}

static void test_tls_revocations_set(void **state)
{
    const char *good[] = {"0A:bc", "FF", "abc"};
    const char *bad_one[] = {"AB", "not-hex", "CD"};
    size_t bad = 99;
    struct tt_revocations *a = tt_revocations_new(good, 3, &bad), *b;

    assert_non_null(a);
    assert_int_equal(tt_revocations_count(a), 2); /* 0A:bc and abc are one serial */
    assert_true(tt_revocations_check(a, "ABC"));
    assert_true(tt_revocations_check(a, "FF"));
    assert_false(tt_revocations_check(a, "F"));
    assert_false(tt_revocations_check(a, ""));
    assert_false(tt_revocations_check(NULL, "ABC"));
    b = tt_revocations_new(good + 1, 2, &bad);
    assert_true(tt_revocations_equal(a, b));
    tt_revocations_unref(b);
    b = tt_revocations_new(good, 1, &bad);
    assert_false(tt_revocations_equal(a, b));
    tt_revocations_unref(b);
    b = tt_revocations_new(NULL, 0, &bad);
    assert_true(tt_revocations_equal(b, NULL));
    assert_false(tt_revocations_equal(a, NULL));
    tt_revocations_unref(b);
    assert_null(tt_revocations_new(bad_one, 3, &bad));
    assert_int_equal(bad, 1);
    tt_revocations_unref(a);
    tt_revocations_unref(NULL);
}

static void test_tls_refuse_bad_usage(void **state)
{
    /* A client certificate good only for servers, and a server's good only for clients. */
    struct tt_certgen_opts co = {.cn = "c", .uris = {CLIENT_ID}, .eku = "serverAuth"};
    struct tt_certgen_opts so = {.cn = "s", .uris = {SERVER_ID}, .eku = "clientAuth"};
    struct tt_certgen_cert *cl = tt_certgen_new(&co, root), *sl = tt_certgen_new(&so, root);
    assert_non_null(cl);
    assert_non_null(sl);
    struct tt_identity *cid = make_identity(cl, root->cert_pem);
    struct tt_identity *sid = make_identity(sl, root->cert_pem);

    expect_refused(cid, server_id, SERVER_ID, 0, TT_E_BAD_USAGE);
    expect_refused(client_id, sid, SERVER_ID, TT_E_BAD_USAGE, 0);
    tt_identity_unref(cid);
    tt_identity_unref(sid);
    tt_certgen_free(cl);
    tt_certgen_free(sl);
}

static void test_tls_refuse_expired(void **state)
{
    struct tt_certgen_cert *leaf = make_leaf(root, CLIENT_ID, NULL, -7200, -3600);
    struct tt_identity *cid = make_identity(leaf, root->cert_pem); /* loads anyway */
    struct tt_tls *c = tt_tls_new(cid, TT_TLS_CLIENT, SERVER_ID);
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    int rc, rs;

    handshake(c, s, &rc, &rs);
    assert_int_equal(rs, TT_E_EXPIRED);
    /* What the peer presented is kept for /stats even though it was refused. */
    assert_string_equal(tt_tls_peer_id(s), CLIENT_ID);
    assert_string_equal(tt_tls_peer_serial(s), tt_identity_leaf(cid)->serial);
    assert_non_null(strstr(tt_tls_peer_issuer(s), "CN=test root"));
    tt_tls_free(c);
    tt_tls_free(s);

    /* An expired server is refused by the client. */
    struct tt_identity *sid = make_identity(leaf, root->cert_pem);
    expect_refused(client_id, sid, CLIENT_ID, TT_E_EXPIRED, 0);
    tt_identity_unref(sid);
    tt_identity_unref(cid);
    tt_certgen_free(leaf);
}

static void test_tls_refuse_not_yet_valid(void **state)
{
    struct tt_certgen_cert *leaf = make_leaf(root, CLIENT_ID, NULL, 3600, 7200);
    struct tt_identity *cid = make_identity(leaf, root->cert_pem);
    expect_refused(cid, server_id, SERVER_ID, 0, TT_E_NOT_YET_VALID);
    tt_identity_unref(cid);
    tt_certgen_free(leaf);
}

static void test_tls_refuse_expired_intermediate(void **state)
{
    struct tt_certgen_opts o = {
        .cn = "old intermediate", .not_before = -7200, .not_after = -3600, .is_ca = 1};
    struct tt_certgen_cert *old = tt_certgen_new(&o, root);
    assert_non_null(old);
    struct tt_certgen_cert *leaf = make_leaf(old, CLIENT_ID, NULL, 0, 0);
    struct tt_identity *cid = make_identity(leaf, root->cert_pem);
    expect_refused(cid, server_id, SERVER_ID, 0, TT_E_EXPIRED);
    tt_identity_unref(cid);
    tt_certgen_free(leaf);
    tt_certgen_free(old);
}

static void test_tls_refuse_wrong_identity(void **state)
{
    struct tt_tls *c = tt_tls_new(client_id, TT_TLS_CLIENT, "spiffe://td/ns/a/sa/other");
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    int rc, rs;

    handshake(c, s, &rc, &rs);
    assert_int_equal(rc, TT_E_WRONG_IDENTITY);
    assert_int_equal(rs, TT_E_PROTOCOL);
    /* The client knows whom it actually reached. */
    assert_string_equal(tt_tls_peer_id(c), SERVER_ID);
    tt_tls_free(c);
    tt_tls_free(s);

    /* A prefix of the expected ID is not the ID. */
    expect_refused(client_id, server_id, SERVER_ID "x", TT_E_WRONG_IDENTITY, 0);
    expect_refused(client_id, server_id, "spiffe://td/ns/a/sa", TT_E_WRONG_IDENTITY, 0);
}

/* --- A raw BoringSSL client, for what a tt_identity cannot be: no certificate, a bad
 * SAN, old protocol versions. It accepts any server certificate. ---------------------- */

struct raw {
    SSL *ssl;
    BIO *net; /* our end of the BIO pair */
};

static enum ssl_verify_result_t on_verify_any(SSL *ssl, uint8_t *out_alert)
{
    return ssl_verify_ok;
}

static SSL_CTX *raw_ctx(const struct tt_certgen_cert *cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    assert_non_null(ctx);
    SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, on_verify_any);
    if (cert != NULL) {
        assert_int_equal(SSL_CTX_use_certificate(ctx, cert->x509), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey(ctx, cert->key), 1);
    }
    return ctx;
}

static void raw_init(struct raw *r, SSL_CTX *ctx)
{
    BIO *inner;

    r->ssl = SSL_new(ctx);
    assert_non_null(r->ssl);
    assert_int_equal(BIO_new_bio_pair(&inner, 0, &r->net, 0), 1);
    SSL_set_bio(r->ssl, inner, inner);
    SSL_set_connect_state(r->ssl);
}

static void raw_done(struct raw *r)
{
    SSL_free(r->ssl);
    BIO_free(r->net);
}

/* Moves bytes both ways between the raw client and a tt_tls server. */
static size_t raw_pump(struct raw *r, struct tt_tls *s)
{
    uint8_t buf[4096];
    const uint8_t *data;
    size_t moved = 0;
    int n;

    while ((n = BIO_read(r->net, buf, sizeof(buf))) > 0) {
        assert_int_equal(tt_tls_feed(s, buf, (size_t)n), 0);
        moved += (size_t)n;
    }
    size_t len = tt_tls_pending(s, &data);
    if (len > 0) {
        n = BIO_write(r->net, data, (int)len);
        assert_true(n > 0);
        tt_tls_consume(s, (size_t)n);
        moved += (size_t)n;
    }
    return moved;
}

/* Runs a raw client against a new tt_tls server; returns the server's handshake result
 * and the client's in *rc (1 ok, 0 failed). */
static int raw_handshake(struct raw *r, struct tt_tls *s, int *rc)
{
    int rs = 0;

    *rc = -1;
    for (int i = 0; i < 32; i++) {
        if (*rc < 0) {
            int x = SSL_do_handshake(r->ssl);
            if (x == 1)
                *rc = 1;
            else if (SSL_get_error(r->ssl, x) != SSL_ERROR_WANT_READ)
                *rc = 0;
        }
        size_t moved = raw_pump(r, s);
        if (rs == 0)
            rs = tt_tls_handshake(s);
        moved += raw_pump(r, s);
        if (*rc >= 0 && rs != 0 && moved == 0)
            break;
    }
    ERR_clear_error();
    return rs;
}

/* The raw client presents `cert` (or nothing) to a tt_tls server; returns the server's
 * handshake result after asserting the client learned of the refusal. */
static int raw_attempt(const struct tt_certgen_cert *cert, struct tt_tls **server_out)
{
    SSL_CTX *ctx = raw_ctx(cert);
    struct raw r;
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    uint8_t buf[16];
    int rc, rs;

    assert_non_null(s);
    raw_init(&r, ctx);
    rs = raw_handshake(&r, s, &rc);
    if (rs < 0 && rc == 1) {
        /* TLS 1.3 client: done before the server's verdict; the alert comes next. */
        int n = SSL_read(r.ssl, buf, sizeof(buf));
        assert_true(n <= 0);
        assert_int_equal(SSL_get_error(r.ssl, n), SSL_ERROR_SSL);
        ERR_clear_error();
    }
    raw_done(&r);
    SSL_CTX_free(ctx);
    if (server_out != NULL)
        *server_out = s;
    else
        tt_tls_free(s);
    return rs;
}

static void test_tls_refuse_no_client_cert(void **state)
{
    struct tt_tls *s;

    assert_int_equal(raw_attempt(NULL, &s), TT_E_NO_CERT);
    assert_string_equal(tt_tls_peer_id(s), "");
    assert_string_equal(tt_tls_peer_serial(s), "");
    tt_tls_free(s);
}

static void test_tls_refuse_bad_sans(void **state)
{
    struct {
        const char *uri1, *uri2, *shown;
    } cases[] = {
        {CLIENT_ID, "spiffe://td/ns/c/sa/other", CLIENT_ID}, /* two URI SANs */
        {CLIENT_ID, "https://example.com/", CLIENT_ID},      /* a second, non-SPIFFE URI */
        {NULL, NULL, ""},                                    /* no URI SAN */
        {"https://td/ns/b/sa/client", NULL, ""},             /* non-spiffe URI */
        {"spiffe://TD/ns/b", NULL, "spiffe://TD/ns/b"},      /* invalid SPIFFE ID */
        {"spiffe://td", NULL, "spiffe://td"},                /* no path */
        {"spiffe://td/a/../b", NULL, "spiffe://td/a/../b"},  /* dot segments */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tt_certgen_cert *leaf = make_leaf(root, cases[i].uri1, cases[i].uri2, 0, 0);
        struct tt_tls *s;
        assert_int_equal(raw_attempt(leaf, &s), TT_E_BAD_SAN);
        assert_string_equal(tt_tls_peer_id(s), cases[i].shown);
        assert_true(strlen(tt_tls_peer_serial(s)) > 0);
        tt_tls_free(s);
        tt_certgen_free(leaf);
    }
}

/* A URI SAN with an embedded NUL must not pass as the ID before the NUL. */
static void test_tls_refuse_san_with_nul(void **state)
{
    static const char id[] = "spiffe://td/ns/b/sa/client\0.evil";
    struct tt_certgen_opts o = {.uris = {"x"}};
    struct tt_certgen_cert *leaf = tt_certgen_new(&o, root);
    assert_non_null(leaf);
    /* Rewrite the SAN by hand with the NUL inside, then re-sign. */
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *s = ASN1_IA5STRING_new();
    assert_int_equal(ASN1_STRING_set(s, id, sizeof(id) - 1), 1);
    GENERAL_NAME_set0_value(gn, GEN_URI, s);
    sk_GENERAL_NAME_push(names, gn);
    assert_int_equal(
        X509_add1_ext_i2d(leaf->x509, NID_subject_alt_name, names, 0, X509V3_ADD_REPLACE), 1);
    GENERAL_NAMES_free(names);
    assert_true(X509_sign(leaf->x509, root->key, EVP_sha256()) > 0);

    struct tt_tls *srv;
    assert_int_equal(raw_attempt(leaf, &srv), TT_E_BAD_SAN);
    assert_string_equal(tt_tls_peer_id(srv), "spiffe://td/ns/b/sa/client");
    tt_tls_free(srv);
    tt_certgen_free(leaf);
}

/* A raw client presenting a good certificate is accepted: the baseline that makes the
 * refusals above meaningful. Without the intermediate in its chain it is refused. */
static void test_tls_raw_client_baseline(void **state)
{
    struct tt_certgen_cert *leaf = make_leaf(root, CLIENT_ID, NULL, 0, 0);
    struct tt_tls *s;
    assert_int_equal(raw_attempt(leaf, &s), 1);
    assert_string_equal(tt_tls_peer_id(s), CLIENT_ID);
    tt_tls_free(s);
    tt_certgen_free(leaf);

    /* client_leaf is issued by the intermediate; presented alone it does not chain. */
    assert_int_equal(raw_attempt(client_leaf, NULL), TT_E_UNKNOWN_CA);
}

static void test_tls_tls12_client(void **state)
{
    /* A client identity whose context allows TLS 1.2 at most. */
    struct tt_identity *cid = make_identity(client_leaf, root->cert_pem);
    assert_int_equal(SSL_CTX_set_max_proto_version(tt_identity_client_ctx(cid), TLS1_2_VERSION), 1);
    struct tt_tls *c, *s;
    connect_pair(cid, server_id, SERVER_ID, &c, &s);
    assert_string_equal(tt_tls_version(c), "TLSv1.2");
    assert_string_equal(tt_tls_version(s), "TLSv1.2");
    assert_string_equal(tt_tls_peer_id(s), CLIENT_ID);
    assert_string_equal(tt_tls_peer_id(c), SERVER_ID);
    assert_int_equal(tt_tls_write(c, "ping", 4), 0);
    expect_data(c, s, "ping", 4);
    assert_int_equal(tt_tls_write(s, "pong", 4), 0);
    expect_data(s, c, "pong", 4);
    tt_tls_free(c);
    tt_tls_free(s);

    /* TLS 1.2 refusals carry the same precise codes. */
    struct tt_certgen_cert *old = make_leaf(root, CLIENT_ID, NULL, -7200, -3600);
    struct tt_identity *oid = make_identity(old, root->cert_pem);
    SSL_CTX_set_max_proto_version(tt_identity_client_ctx(oid), TLS1_2_VERSION);
    expect_refused(oid, server_id, SERVER_ID, 0, TT_E_EXPIRED);
    expect_refused(cid, server_id, CLIENT_ID, TT_E_WRONG_IDENTITY, 0);
    tt_identity_unref(oid);
    tt_certgen_free(old);
    tt_identity_unref(cid);
}

/* TLS 1.2 without an ECDHE-AEAD suite, and TLS 1.1, are refused. */
static void test_tls_refuse_weak_protocol(void **state)
{
    struct tt_certgen_cert *leaf = make_leaf(root, CLIENT_ID, NULL, 0, 0);
    struct {
        int max_version;
        const char *ciphers;
    } cases[] = {
        {TLS1_2_VERSION, "ECDHE-ECDSA-AES128-SHA"}, /* CBC */
        {TLS1_2_VERSION, "AES128-GCM-SHA256"},      /* no ECDHE */
        {TLS1_1_VERSION, "ALL"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        SSL_CTX *ctx = raw_ctx(leaf);
        struct raw r;
        int rc;
        SSL_CTX_set_min_proto_version(ctx, TLS1_1_VERSION);
        SSL_CTX_set_max_proto_version(ctx, (uint16_t)cases[i].max_version);
        assert_int_equal(SSL_CTX_set_cipher_list(ctx, cases[i].ciphers), 1);
        struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
        raw_init(&r, ctx);
        assert_int_equal(raw_handshake(&r, s, &rc), TT_E_PROTOCOL);
        assert_int_equal(rc, 0);
        raw_done(&r);
        SSL_CTX_free(ctx);
        tt_tls_free(s);
    }
    tt_certgen_free(leaf);
}

static void test_tls_garbage_input(void **state)
{
    static const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    const uint8_t *data;
    uint8_t buf[16];

    assert_int_equal(tt_tls_feed(s, junk, sizeof(junk) - 1), 0);
    assert_int_equal(tt_tls_handshake(s), TT_E_PROTOCOL);
    assert_int_equal(tt_tls_handshake(s), TT_E_PROTOCOL);
    assert_int_equal(tt_tls_read(s, buf, sizeof(buf)), TT_E_PROTOCOL);
    assert_int_equal(tt_tls_write(s, "x", 1), TT_E_PROTOCOL);
    tt_tls_free(s);

    /* Garbage after a good handshake: a bad record MAC is a protocol error. */
    struct tt_tls *c;
    connect_pair(client_id, server_id, SERVER_ID, &c, &s);
    assert_int_equal(tt_tls_write(c, "data", 4), 0);
    size_t n = tt_tls_pending(c, &data);
    assert_true(n > 5);
    uint8_t *copy = malloc(n);
    memcpy(copy, data, n);
    copy[n - 1] ^= 0x55; /* flip bits in the record's tag */
    tt_tls_consume(c, n);
    assert_int_equal(tt_tls_feed(s, copy, n), 0);
    assert_int_equal(tt_tls_read(s, buf, sizeof(buf)), TT_E_PROTOCOL);
    free(copy);

    /* Nothing fed: need more input, no error. */
    assert_int_equal(tt_tls_read(c, buf, sizeof(buf)), 0);
    assert_int_equal(tt_tls_read(c, buf, 0), 0);
    tt_tls_free(c);
    tt_tls_free(s);
    tt_tls_free(NULL);
}

static SSL_SESSION *ticket_session;

/* Keeps the first ticket the raw client receives (the callback takes ownership). */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    if (ticket_session != NULL)
        return 0;
    ticket_session = sess;
    return 1;
}

/* Session tickets: a raw client resumes with the ticket the tt_tls server issued; the
 * resumed server still knows (and re-verified) the caller's identity. */
static void test_tls_resumption(void **state)
{
    struct tt_certgen_cert *leaf = make_leaf(root, CLIENT_ID, NULL, 0, 0);
    SSL_CTX *ctx = raw_ctx(leaf);
    struct raw r;
    uint8_t buf[16];
    int rc;

    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    raw_init(&r, ctx);
    assert_int_equal(raw_handshake(&r, s, &rc), 1);
    assert_int_equal(rc, 1);
    /* TLS 1.3 tickets arrive after the handshake: let the client read them. */
    assert_int_equal(tt_tls_write(s, "t", 1), 0);
    raw_pump(&r, s);
    assert_int_equal(SSL_read(r.ssl, buf, sizeof(buf)), 1);
    SSL_SESSION *sess = ticket_session;
    ticket_session = NULL;
    assert_non_null(sess);
    assert_true(SSL_SESSION_is_resumable(sess));
    raw_done(&r);
    tt_tls_free(s);

    s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    raw_init(&r, ctx);
    assert_int_equal(SSL_set_session(r.ssl, sess), 1);
    assert_int_equal(raw_handshake(&r, s, &rc), 1);
    assert_true(tt_tls_resumed(s));
    assert_string_equal(tt_tls_peer_id(s), CLIENT_ID);
    raw_done(&r);
    tt_tls_free(s);

    SSL_SESSION_free(sess);
    SSL_CTX_free(ctx);
    tt_certgen_free(leaf);
}

/* An idle, established session is small: measured with mallinfo2() over many pairs.
 * Sanitizers replace malloc, so the figure only means something without them. */
/* One client-side resumption round: a fresh pair whose client uses `slot`. Returns
 * whether the handshake resumed; asserts it succeeded and the server saw `want_peer`. */
static int resume_round(struct tt_identity *cid, struct tt_tls_resume *slot, const char *want_peer)
{
    struct tt_tls *c = tt_tls_new(cid, TT_TLS_CLIENT, SERVER_ID);
    struct tt_tls *s = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    uint8_t buf[16];
    int rc, rs, resumed;

    assert_int_equal(tt_tls_set_resume(c, slot), 0);
    handshake(c, s, &rc, &rs);
    assert_int_equal(rc, 1);
    assert_int_equal(rs, 1);
    /* TLS 1.3 tickets arrive after the handshake: let the client read them. */
    assert_int_equal(tt_tls_write(s, "x", 1), 0);
    pump(s, c);
    assert_int_equal(tt_tls_read(c, buf, sizeof(buf)), 1);
    assert_string_equal(tt_tls_peer_id(s), want_peer);
    assert_string_equal(tt_tls_peer_id(c), SERVER_ID);
    resumed = tt_tls_resumed(c);
    assert_int_equal(resumed, tt_tls_resumed(s));
    tt_tls_free(c);
    tt_tls_free(s);
    return resumed;
}

static void test_tls_client_resume_slot(void **state)
{
    struct tt_tls_resume slot = {0};
    struct tt_identity *other = make_identity(client_leaf, root->cert_pem);
    struct tt_tls *anon;

    /* First connection: full handshake; it fills the slot. */
    assert_int_equal(resume_round(client_id, &slot, CLIENT_ID), 0);
    assert_non_null(slot.session);
    /* Second: resumed, and the server still knows who the client is. */
    assert_int_equal(resume_round(client_id, &slot, CLIENT_ID), 1);
    /* Another identity (a rotated certificate) never offers the old ticket. */
    assert_non_null(other);
    assert_int_equal(resume_round(other, &slot, CLIENT_ID), 0);
    /* Only client roles with a certificate take a slot. */
    anon = tt_tls_new(server_id, TT_TLS_SERVER, NULL);
    assert_int_equal(tt_tls_set_resume(anon, &slot), -EINVAL);
    tt_tls_free(anon);
    tt_tls_resume_done(&slot);
    assert_null(slot.session);
    tt_identity_unref(other);
}

static void test_tls_idle_memory(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
    skip();
#else
    enum { N = 64 };
    struct tt_tls *c[N], *s[N];
    uint8_t buf[16];

    /* Warm up lazily initialized library state first. */
    connect_pair(client_id, server_id, SERVER_ID, &c[0], &s[0]);
    tt_tls_free(c[0]);
    tt_tls_free(s[0]);
    tt_buf_pool_drain();

    size_t before = mallinfo2().uordblks;
    for (int i = 0; i < N; i++) {
        connect_pair(client_id, server_id, SERVER_ID, &c[i], &s[i]);
        assert_int_equal(tt_tls_write(c[i], "x", 1), 0);
        expect_data(c[i], s[i], "x", 1);
        assert_int_equal(tt_tls_write(s[i], "y", 1), 0);
        expect_data(s[i], c[i], "y", 1);
        assert_int_equal(tt_tls_read(s[i], buf, sizeof(buf)), 0);
    }
    tt_buf_pool_drain(); /* idle sessions hold no slab; the pool's cache is not theirs */
    size_t after = mallinfo2().uordblks;
    size_t per_session = (after - before) / (2 * N);
    print_message("idle TLS session: %zu bytes (%zu -> %zu)\n", per_session, before, after);
    /* Budget: < 20 KiB per idle mTLS connection including everything, so the TLS state
     * itself must stay well below. */
    assert_true(per_session < 12 * 1024);
    for (int i = 0; i < N; i++) {
        tt_tls_free(c[i]);
        tt_tls_free(s[i]);
    }
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_handshake_and_data),
        cmocka_unit_test(test_tls_handshake_byte_by_byte),
        cmocka_unit_test(test_tls_alpn_offer_select),
        cmocka_unit_test(test_tls_large_transfer),
        cmocka_unit_test(test_tls_refuse_unknown_ca),
        cmocka_unit_test(test_tls_refuse_revoked),
        cmocka_unit_test(test_tls_revocations_set),
        cmocka_unit_test(test_tls_refuse_bad_usage),
        cmocka_unit_test(test_tls_refuse_expired),
        cmocka_unit_test(test_tls_refuse_not_yet_valid),
        cmocka_unit_test(test_tls_refuse_expired_intermediate),
        cmocka_unit_test(test_tls_refuse_wrong_identity),
        cmocka_unit_test(test_tls_refuse_no_client_cert),
        cmocka_unit_test(test_tls_refuse_bad_sans),
        cmocka_unit_test(test_tls_refuse_san_with_nul),
        cmocka_unit_test(test_tls_raw_client_baseline),
        cmocka_unit_test(test_tls_tls12_client),
        cmocka_unit_test(test_tls_refuse_weak_protocol),
        cmocka_unit_test(test_tls_garbage_input),
        cmocka_unit_test(test_tls_resumption),
        cmocka_unit_test(test_tls_client_resume_slot),
        cmocka_unit_test(test_tls_idle_memory),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
