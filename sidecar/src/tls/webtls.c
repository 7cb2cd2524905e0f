/* Web-style TLS client sessions over a blocking fd (see webtls.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base.h>
#ifndef OPENSSL_IS_BORINGSSL
#error "webtls.c must be compiled against BoringSSL (-I/usr/include/android)"
#endif
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/util.h"
#include "tls/webtls.h"

struct tt_webtls {
    SSL_CTX *ctx;
    SSL *ssl;
};

/* Adds every certificate of pem[0..len) to the context's trust store. Returns how many. */
static int load_roots(SSL_CTX *ctx, const char *pem, size_t len)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    X509 *x;
    int n = 0;

    if (bio == NULL)
        return 0;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (X509_STORE_add_cert(store, x) == 1)
            n++;
        X509_free(x);
    }
    ERR_clear_error(); /* the end of the PEM data */
    BIO_free(bio);
    return n;
}

/* Sets the client certificate (leaf then chain) and key. Returns 0 or -1 with err set. */
static int load_client(SSL_CTX *ctx, const struct tt_webtls_opts *o, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(o->cert_pem, (int)o->cert_len);
    BIO *kbio = BIO_new_mem_buf(o->key_pem, (int)o->key_len);
    EVP_PKEY *key = NULL;
    X509 *x;
    int rc = -1, n = 0;

    if (bio == NULL || kbio == NULL)
        goto out;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        int ok = n == 0 ? SSL_CTX_use_certificate(ctx, x) : SSL_CTX_add1_chain_cert(ctx, x);

        X509_free(x);
        if (ok != 1)
            break;
        n++;
    }
    ERR_clear_error();
    if (n == 0) {
        tt_errf(err, errlen, "no certificate in the client certificate data");
        goto out;
    }
    key = PEM_read_bio_PrivateKey(kbio, NULL, NULL, NULL);
    if (key == NULL || SSL_CTX_use_PrivateKey(ctx, key) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        tt_errf(err, errlen, "the client key is not a PEM private key matching the certificate");
        goto out;
    }
    rc = 0;
out:
    EVP_PKEY_free(key);
    BIO_free(bio);
    BIO_free(kbio);
    ERR_clear_error();
    return rc;
}

/* Handshakes on fd (see webtls.h). */
struct tt_webtls *tt_webtls_connect(int fd, const struct tt_webtls_opts *o, char *err,
                                    size_t errlen)
{
    struct tt_webtls *t = calloc(1, sizeof(*t));
    X509_VERIFY_PARAM *param;
    unsigned char bin[16];
    bool ip;
    int r;

    if (t == NULL) {
        tt_errf(err, errlen, "out of memory");
        return NULL;
    }
    t->ctx = SSL_CTX_new(TLS_method());
    if (t->ctx == NULL || SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION) != 1) {
        tt_errf(err, errlen, "out of memory");
        goto fail;
    }
    if (o->ca_pem == NULL || load_roots(t->ctx, o->ca_pem, o->ca_len) == 0) {
        tt_errf(err, errlen, "no certificate in the CA bundle");
        goto fail;
    }
    if (o->cert_pem != NULL && load_client(t->ctx, o, err, errlen) != 0)
        goto fail;
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    t->ssl = SSL_new(t->ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, fd) != 1) {
        tt_errf(err, errlen, "out of memory");
        goto fail;
    }
    param = SSL_get0_param(t->ssl);
    ip = inet_pton(AF_INET, o->host, bin) == 1 || inet_pton(AF_INET6, o->host, bin) == 1;
    if (ip ? X509_VERIFY_PARAM_set1_ip_asc(param, o->host) != 1
           : (X509_VERIFY_PARAM_set1_host(param, o->host, strlen(o->host)) != 1 ||
              SSL_set_tlsext_host_name(t->ssl, o->host) != 1)) {
        tt_errf(err, errlen, "cannot check the server against \"%s\"", o->host);
        goto fail;
    }
    r = SSL_connect(t->ssl);
    if (r != 1) {
        long vr = SSL_get_verify_result(t->ssl);
        int e = SSL_get_error(t->ssl, r);

        if (vr != X509_V_OK)
            tt_errf(err, errlen, "certificate verify failed: %s",
                    X509_verify_cert_error_string(vr));
        else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_WANT_READ)
            tt_errf(err, errlen, "TLS handshake: %s",
                    errno == EAGAIN ? "timed out"
                    : errno         ? strerror(errno)
                                    : "connection closed");
        else
            tt_errf(err, errlen, "TLS handshake failed: %s",
                    ERR_reason_error_string(ERR_peek_last_error())
                        ? ERR_reason_error_string(ERR_peek_last_error())
                        : "protocol error");
        goto fail;
    }
    ERR_clear_error();
    return t;
fail:
    ERR_clear_error();
    tt_webtls_free(t);
    return NULL;
}

/* Reads plaintext (see webtls.h). */
ssize_t tt_webtls_read(struct tt_webtls *t, void *buf, size_t len)
{
    int n = SSL_read(t->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);

    if (n > 0)
        return n;
    switch (SSL_get_error(t->ssl, n)) {
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        return errno == 0 || n == 0 ? 0 : -errno;
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        ERR_clear_error();
        return -EAGAIN;
    default:
        ERR_clear_error();
        return -EPROTO;
    }
}

/* Writes all of buf (see webtls.h). */
int tt_webtls_write(struct tt_webtls *t, const void *buf, size_t len)
{
    const char *p = buf;

    while (len > 0) {
        int n = SSL_write(t->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);

        if (n <= 0) {
            int e = SSL_get_error(t->ssl, n);

            ERR_clear_error();
            return e == SSL_ERROR_SYSCALL && errno ? -errno
                   : e == SSL_ERROR_WANT_WRITE     ? -EAGAIN
                                                   : -EPIPE;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Frees the session and its context. Accepts NULL. */
void tt_webtls_free(struct tt_webtls *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl);
    SSL_CTX_free(t->ctx);
    free(t);
}
