/* The workload identity (see identity.h): parses the certificate chain, key and trust
 * bundle, checks that they form a usable SPIFFE identity, and builds the two SSL_CTXs.
 *
 * The contexts use TLS_with_buffers_method(): certificates stay DER CRYPTO_BUFFERs
 * inside BoringSSL instead of parsed X509 objects, which keeps every connection lean;
 * tls.c parses the peer chain once, during verification. */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base.h>

#ifndef OPENSSL_IS_BORINGSSL
#error "identity.c must be compiled against BoringSSL (-I/usr/include/android)"
#endif

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/obj.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/pool.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/errors.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"
#include "core/spiffe.h"
#include "core/util.h"

#define PEM_FILE_MAX  (1024 * 1024) /* larger "PEM files" are refused unread */
#define MAX_CERT_LIST (32 * 1024)   /* largest peer chain a handshake accepts */

/* TLS 1.2 suites: ECDHE key exchange with an AEAD only (DESIGN.md). TLS 1.3 suites are
 * fixed by BoringSSL and all AEAD. */
#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
#define CURVES        "X25519:P-256"

/* Signature algorithms, both the ones we sign with and the ones we accept from a peer
 * (DESIGN.md: no SHA-1). BoringSSL's default verify list still ends in RSA-PKCS1-SHA1 and
 * lacks Ed25519: a TLS 1.2 client could sign its CertificateVerify with SHA-1, and an
 * Ed25519 peer found nothing it could sign with in our CertificateRequest. The same list
 * goes into the ClientHello, the CertificateRequest and our own signing choice, in order
 * of preference. */
static const uint16_t sigalgs[] = {
    SSL_SIGN_ECDSA_SECP256R1_SHA256, SSL_SIGN_ED25519,
    SSL_SIGN_RSA_PSS_RSAE_SHA256,    SSL_SIGN_RSA_PKCS1_SHA256,
    SSL_SIGN_ECDSA_SECP384R1_SHA384, SSL_SIGN_RSA_PSS_RSAE_SHA384,
    SSL_SIGN_RSA_PKCS1_SHA384,       SSL_SIGN_ECDSA_SECP521R1_SHA512,
    SSL_SIGN_RSA_PSS_RSAE_SHA512,    SSL_SIGN_RSA_PKCS1_SHA512,
};
#define N_SIGALGS (sizeof(sigalgs) / sizeof(sigalgs[0]))

struct tt_identity {
    int refs; /* atomic */
    SSL_CTX *server_ctx;
    SSL_CTX *client_ctx;
    X509_STORE *store; /* the trust bundle, shared by every handshake's verification */
    struct tt_cert_info leaf;
    struct tt_cert_info *roots;
    size_t n_roots;
};

/* Copies src into dst[0..cap) NUL-terminated, truncating. */
static void copy_trunc(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* Serial as `openssl x509 -serial` prints it, without leading zeros (DESIGN.md). */
static void format_serial(const ASN1_INTEGER *ai, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    const uint8_t *p = ASN1_STRING_get0_data(ai);
    size_t n = (size_t)ASN1_STRING_length(ai), pos = 0;
    int started = 0;

    if (ASN1_STRING_type(ai) == V_ASN1_NEG_INTEGER && pos + 1 < cap)
        out[pos++] = '-';
    for (size_t i = 0; i < n; i++) {
        uint8_t nib[2] = {p[i] >> 4, p[i] & 0xf};
        for (int k = 0; k < 2; k++) {
            if (!started && nib[k] == 0)
                continue;
            started = 1;
            if (pos + 1 < cap)
                out[pos++] = hex[nib[k]];
        }
    }
    if (!started && pos + 1 < cap)
        out[pos++] = '0';
    out[pos] = '\0';
}

/* One-line RFC 2253 DN; control and non-ASCII bytes are escaped by the flags. */
static int format_name(const X509_NAME *name, char *out, size_t cap)
{
    BIO *bio = BIO_new(BIO_s_mem());
    const uint8_t *data;
    size_t len;

    if (bio == NULL)
        return -ENOMEM;
    if (X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253) < 0 ||
        !BIO_mem_contents(bio, &data, &len)) {
        BIO_free(bio);
        return -ENOMEM;
    }
    copy_trunc(out, cap, (const char *)data, len);
    BIO_free(bio);
    return 0;
}

/* Unix seconds of an ASN1_TIME, relative to a UTCTime epoch. */
static int64_t asn1_time_unix(const ASN1_TIME *t, const ASN1_TIME *epoch)
{
    int days = 0, secs = 0;

    if (t == NULL || epoch == NULL || !ASN1_TIME_diff(&days, &secs, epoch, t))
        return 0;
    return (int64_t)days * 86400 + secs;
}

/* Looks at the URI SANs: sets *n_uri to their number (2 when the certificate has
 * several SAN extensions, which is ambiguous) and copies the first spiffe:// one into
 * id (truncated), "" when none. Sets *valid when there is exactly one URI SAN and it is
 * a valid SPIFFE ID with a path. */
static void scan_uri_sans(X509 *x, char *id, size_t cap, int *n_uri, int *valid)
{
    int crit = -1;
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, &crit, NULL);

    id[0] = '\0';
    *n_uri = 0;
    *valid = 0;
    if (names == NULL) {
        if (crit == -2)
            *n_uri = 2;
        return;
    }
    const char *first = NULL;
    size_t first_len = 0;
    for (size_t i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI)
            continue;
        const ASN1_IA5STRING *s = gn->d.uniformResourceIdentifier;
        const char *data = (const char *)ASN1_STRING_get0_data(s);
        size_t len = (size_t)ASN1_STRING_length(s);
        (*n_uri)++;
        if (first == NULL && len >= 9 && memcmp(data, "spiffe://", 9) == 0) {
            first = data;
            first_len = len;
        }
    }
    if (first != NULL) {
        /* A NUL inside the name would truncate what we show: show nothing past it. */
        const char *nul = memchr(first, '\0', first_len);
        copy_trunc(id, cap, first, nul != NULL ? (size_t)(nul - first) : first_len);
        *valid = *n_uri == 1 && tt_spiffe_check(first, first_len, false) == 0;
    }
    GENERAL_NAMES_free(names);
}

/* Fills info from x; see identity.h. */
int tt_cert_info_fill(struct tt_cert_info *info, X509 *x)
{
    int n_uri, valid;
    ASN1_TIME *epoch;

    memset(info, 0, sizeof(*info));
    format_serial(X509_get0_serialNumber(x), info->serial, sizeof(info->serial));
    if (format_name(X509_get_subject_name(x), info->subject, sizeof(info->subject)) < 0 ||
        format_name(X509_get_issuer_name(x), info->issuer, sizeof(info->issuer)) < 0)
        return -ENOMEM;
    epoch = ASN1_TIME_set(NULL, 0);
    if (epoch == NULL)
        return -ENOMEM;
    info->not_before = asn1_time_unix(X509_get0_notBefore(x), epoch);
    info->not_after = asn1_time_unix(X509_get0_notAfter(x), epoch);
    ASN1_TIME_free(epoch);
    scan_uri_sans(x, info->spiffe_id, sizeof(info->spiffe_id), &n_uri, &valid);
    return valid ? 0 : TT_E_BAD_SAN;
}

/* Parses every certificate in pem[0..len) into a new stack. Returns 0, TT_E_PEM for
 * corrupt PEM, TT_E_IDENTITY when there is no certificate, or -ENOMEM. */
static int parse_certs(const char *pem, size_t len, STACK_OF(X509) * *out)
{
    BIO *bio = NULL;
    STACK_OF(X509) *certs = NULL;
    int r = -ENOMEM;

    if (len > INT_MAX)
        return TT_E_PEM;
    bio = BIO_new_mem_buf(pem, (int)len);
    certs = sk_X509_new_null();
    if (bio == NULL || certs == NULL)
        goto err;
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (x == NULL) {
            uint32_t e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
                /* End of input: only text without further PEM blocks was left. */
                r = sk_X509_num(certs) > 0 ? 0 : TT_E_IDENTITY;
            } else {
                r = TT_E_PEM;
            }
            ERR_clear_error();
            break;
        }
        if (!sk_X509_push(certs, x)) {
            X509_free(x);
            goto err;
        }
    }
    if (r < 0)
        goto err;
    BIO_free(bio);
    *out = certs;
    return 0;
err:
    BIO_free(bio);
    sk_X509_pop_free(certs, X509_free);
    return r;
}

static int parse_key(const char *pem, size_t len, EVP_PKEY **out)
{
    BIO *bio;
    int r;

    if (len > INT_MAX)
        return TT_E_PEM;
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        return -ENOMEM;
    /* No password callback: an encrypted key fails instead of prompting. */
    *out = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    if (*out != NULL) {
        r = 0;
    } else {
        uint32_t e = ERR_peek_last_error();
        r = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE
                ? TT_E_IDENTITY
                : TT_E_PEM;
    }
    ERR_clear_error();
    BIO_free(bio);
    return r;
}

/* During the load-time chain check only: an expired or not-yet-valid certificate of our
 * own still loads (identity.h), so those two errors are ignored. */
static int on_verify_ignore_dates(int ok, X509_STORE_CTX *sctx)
{
    if (!ok) {
        int e = X509_STORE_CTX_get_error(sctx);
        if (e == X509_V_ERR_CERT_HAS_EXPIRED || e == X509_V_ERR_CERT_NOT_YET_VALID)
            return 1;
    }
    return ok;
}

/* Verifies that the leaf chains to the store through the given intermediates. Returns
 * X509_V_OK or the X509_V_ERR_* code. */
static int check_chain(X509_STORE *store, STACK_OF(X509) * chain)
{
    X509_STORE_CTX *sctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = sk_X509_dup(chain);
    int e = X509_V_ERR_OUT_OF_MEM;

    if (sctx == NULL || untrusted == NULL)
        goto out;
    sk_X509_shift(untrusted); /* the leaf itself */
    if (!X509_STORE_CTX_init(sctx, store, sk_X509_value(chain, 0), untrusted))
        goto out;
    X509_STORE_CTX_set_verify_cb(sctx, on_verify_ignore_dates);
    if (X509_verify_cert(sctx) == 1) {
        e = X509_V_OK;
    } else {
        e = X509_STORE_CTX_get_error(sctx);
        if (e == X509_V_OK) /* an internal failure that set no verify error */
            e = X509_V_ERR_UNSPECIFIED;
    }
out:
    ERR_clear_error();
    X509_STORE_CTX_free(sctx);
    sk_X509_free(untrusted);
    return e;
}

/* Until tls.c attaches its own verifier to a session (tt_tls_new), the contexts fail
 * every peer: an SSL made from these contexts by anything else cannot skip verification. */
static enum ssl_verify_result_t on_verify_unattached(SSL *ssl, uint8_t *out_alert)
{
    *out_alert = SSL_AD_INTERNAL_ERROR;
    return ssl_verify_invalid;
}

static SSL_CTX *build_ctx(CRYPTO_BUFFER *const *chain, size_t n, EVP_PKEY *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_with_buffers_method());

    if (ctx == NULL)
        return NULL;
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_strict_cipher_list(ctx, TLS12_CIPHERS) ||
        !SSL_CTX_set1_curves_list(ctx, CURVES) ||
        !SSL_CTX_set_verify_algorithm_prefs(ctx, sigalgs, N_SIGALGS) ||
        !SSL_CTX_set_signing_algorithm_prefs(ctx, sigalgs, N_SIGALGS) ||
        (chain != NULL && !SSL_CTX_set_chain_and_key(ctx, chain, n, key, NULL)))
        goto err;
    /* Both sides present a certificate and require one from the peer (mTLS). */
    SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                              on_verify_unattached);
    /* A resumed session is checked again (expiry, revocation, identity), from the chain
     * its ticket carries. */
    SSL_CTX_set_reverify_on_resume(ctx, 1);
    SSL_CTX_set_max_cert_list(ctx, MAX_CERT_LIST);
    /* Resumption uses session tickets (on by default, BoringSSL's own rotating ticket
     * keys for now). No server-side session cache: it would be shared, locked, growing
     * state, and tickets make it unnecessary. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
err:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

/* Makes the bundle's certificates the identity's trust store and /certs list. Returns 0
 * or -ENOMEM. */
static int trust_roots(struct tt_identity *id, STACK_OF(X509) * bundle)
{
    id->store = X509_STORE_new();
    id->n_roots = sk_X509_num(bundle);
    id->roots = calloc(id->n_roots, sizeof(*id->roots));
    if (id->store == NULL || id->roots == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < id->n_roots; i++) {
        X509 *x = sk_X509_value(bundle, i);
        if (tt_cert_info_fill(&id->roots[i], x) == -ENOMEM || !X509_STORE_add_cert(id->store, x))
            return -ENOMEM;
    }
    return 0;
}

static void identity_free(struct tt_identity *id)
{
    SSL_CTX_free(id->server_ctx);
    SSL_CTX_free(id->client_ctx);
    X509_STORE_free(id->store);
    free(id->roots);
    free(id);
}

/* A trust bundle holds certificates only. A CRL appended to it used to be skipped without
 * a word (and the certificates it revoked got through), so a bundle with a CRL block is
 * refused, pointing to where CRLs go. Returns 0, or TT_E_PEM with the message in err. */
static int refuse_crl_blocks(const char *pem, size_t len, const char *name, char *err,
                             size_t errlen)
{
    static const char crl_begin[] = "-----BEGIN X509 CRL-----";

    if (memmem(pem, len, crl_begin, sizeof(crl_begin) - 1) == NULL)
        return 0;
    tt_errf(err, errlen,
            "%s: the trust bundle holds a CRL (\"%s\"); a bundle holds root certificates only: "
            "give CRLs with --crl FILE (identity.crls in the config file)",
            name, crl_begin);
    return TT_E_PEM;
}

/* parse_certs() with the message for a failure written into err, naming `name`. Returns
 * 0, -ENOMEM (no message), or TT_E_IDENTITY / TT_E_PEM with the message. */
static int parse_certs_named(const char *pem, size_t len, const char *name, STACK_OF(X509) * *out,
                             char *err, size_t errlen)
{
    int r = parse_certs(pem, len, out);

    if (r == TT_E_IDENTITY)
        tt_errf(err, errlen, "%s: no certificate found", name);
    else if (r == TT_E_PEM)
        tt_errf(err, errlen, "%s: invalid certificate PEM", name);
    return r;
}

/* The work of tt_identity_from_pem() and tt_identity_load(), with a name for each input
 * to use in errors. */
static struct tt_identity *identity_build(const char *cert_pem, size_t cert_len,
                                          const char *key_pem, size_t key_len,
                                          const char *bundle_pem, size_t bundle_len,
                                          const char *cert_name, const char *key_name,
                                          const char *bundle_name, char *err, size_t errlen)
{
    struct tt_identity *id = calloc(1, sizeof(*id));
    STACK_OF(X509) *chain = NULL, *bundle = NULL;
    EVP_PKEY *key = NULL;
    CRYPTO_BUFFER **bufs = NULL;
    size_t n_chain = 0;
    int r;

    if (id == NULL)
        goto err_nomem;
    id->refs = 1;

    r = parse_certs_named(cert_pem, cert_len, cert_name, &chain, err, errlen);
    if (r == -ENOMEM)
        goto err_nomem;
    if (r < 0)
        goto err;
    r = parse_key(key_pem, key_len, &key);
    if (r == TT_E_IDENTITY) {
        tt_errf(err, errlen, "%s: no private key found", key_name);
        goto err;
    } else if (r < 0) {
        tt_errf(err, errlen, "%s: cannot parse the private key (corrupt or encrypted PEM)",
                key_name);
        goto err;
    }
    if (refuse_crl_blocks(bundle_pem, bundle_len, bundle_name, err, errlen) < 0)
        goto err;
    r = parse_certs_named(bundle_pem, bundle_len, bundle_name, &bundle, err, errlen);
    if (r == -ENOMEM)
        goto err_nomem;
    if (r < 0)
        goto err;

    X509 *leaf = sk_X509_value(chain, 0);
    if (!X509_check_private_key(leaf, key)) {
        ERR_clear_error();
        tt_errf(err, errlen, "%s: key does not match certificate %s", key_name, cert_name);
        goto err;
    }

    r = tt_cert_info_fill(&id->leaf, leaf);
    if (r == -ENOMEM)
        goto err_nomem;
    if (r < 0) {
        int n_uri, valid;
        char first[64];
        scan_uri_sans(leaf, first, sizeof(first), &n_uri, &valid);
        if (n_uri == 0)
            tt_errf(err, errlen, "%s: leaf has no spiffe:// URI SAN", cert_name);
        else if (n_uri > 1)
            tt_errf(err, errlen, "%s: leaf has %d URI SANs, expected exactly one spiffe:// ID",
                    cert_name, n_uri);
        else if (first[0] == '\0')
            tt_errf(err, errlen, "%s: leaf has no spiffe:// URI SAN", cert_name);
        else
            tt_errf(err, errlen, "%s: leaf URI SAN is not a valid SPIFFE ID", cert_name);
        goto err;
    }

    if (trust_roots(id, bundle) < 0)
        goto err_nomem;

    int v = check_chain(id->store, chain);
    if (v == X509_V_ERR_OUT_OF_MEM)
        goto err_nomem;
    if (v != X509_V_OK) {
        tt_errf(err, errlen, "%s: leaf does not chain to the trust bundle %s: %s", cert_name,
                bundle_name, X509_verify_cert_error_string(v));
        goto err;
    }

    /* The chain we present: the leaf and the intermediates, as DER buffers. */
    n_chain = sk_X509_num(chain);
    bufs = calloc(n_chain, sizeof(*bufs));
    if (bufs == NULL)
        goto err_nomem;
    for (size_t i = 0; i < n_chain; i++) {
        uint8_t *der = NULL;
        int len = i2d_X509(sk_X509_value(chain, i), &der);
        if (len <= 0)
            goto err_nomem;
        bufs[i] = CRYPTO_BUFFER_new(der, (size_t)len, NULL);
        OPENSSL_free(der);
        if (bufs[i] == NULL)
            goto err_nomem;
    }
    id->server_ctx = build_ctx(bufs, n_chain, key);
    id->client_ctx = build_ctx(bufs, n_chain, key);
    if (id->client_ctx != NULL) {
        /* Clients keep the tickets they receive, for resumption (tt_tls_set_resume). */
        SSL_CTX_set_session_cache_mode(id->client_ctx,
                                       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
        SSL_CTX_sess_set_new_cb(id->client_ctx, tt_tls_on_new_session);
    }
    if (id->server_ctx != NULL) /* ALPN only for sessions that ask (tt_tls_set_alpn) */
        SSL_CTX_set_alpn_select_cb(id->server_ctx, tt_tls_on_alpn_select, NULL);
    if (id->server_ctx == NULL || id->client_ctx == NULL) {
        tt_errf(err, errlen, "%s: cannot build the TLS contexts from this certificate and key",
                cert_name);
        goto err;
    }

    for (size_t i = 0; i < n_chain; i++)
        CRYPTO_BUFFER_free(bufs[i]);
    free(bufs);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(bundle, X509_free);
    return id;

err_nomem:
    tt_errf(err, errlen, "%s: out of memory", cert_name);
err:
    ERR_clear_error();
    if (bufs != NULL) {
        for (size_t i = 0; i < n_chain; i++)
            CRYPTO_BUFFER_free(bufs[i]);
        free(bufs);
    }
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(bundle, X509_free);
    if (id != NULL)
        identity_free(id);
    return NULL;
}

/* Builds a trust-only identity (bundle, anonymous client context); see identity.h. */
struct tt_identity *tt_identity_trust_only(const char *bundle_pem, size_t bundle_len,
                                           const char *source, char *err, size_t errlen)
{
    struct tt_identity *id = calloc(1, sizeof(*id));
    STACK_OF(X509) *bundle = NULL;
    int r;

    if (id == NULL)
        goto err_nomem;
    id->refs = 1;
    if (refuse_crl_blocks(bundle_pem, bundle_len, source, err, errlen) < 0)
        goto err;
    r = parse_certs_named(bundle_pem, bundle_len, source, &bundle, err, errlen);
    if (r == -ENOMEM)
        goto err_nomem;
    if (r < 0)
        goto err;
    if (trust_roots(id, bundle) < 0)
        goto err_nomem;
    id->client_ctx = build_ctx(NULL, 0, NULL);
    if (id->client_ctx == NULL)
        goto err_nomem;
    sk_X509_pop_free(bundle, X509_free);
    return id;

err_nomem:
    tt_errf(err, errlen, "%s: out of memory", source);
err:
    ERR_clear_error();
    sk_X509_pop_free(bundle, X509_free);
    if (id != NULL)
        identity_free(id);
    return NULL;
}

/* Builds an identity from PEM text; see identity.h. Errors name "<source> cert",
 * "<source> key" or "<source> bundle". */
struct tt_identity *tt_identity_from_pem(const char *cert_pem, size_t cert_len, const char *key_pem,
                                         size_t key_len, const char *bundle_pem, size_t bundle_len,
                                         const char *source, char *err, size_t errlen)
{
    char names[3][512];
    const char *src = source != NULL ? source : "identity";

    snprintf(names[0], sizeof(names[0]), "%s cert", src);
    snprintf(names[1], sizeof(names[1]), "%s key", src);
    snprintf(names[2], sizeof(names[2]), "%s bundle", src);
    return identity_build(cert_pem, cert_len, key_pem, key_len, bundle_pem, bundle_len, names[0],
                          names[1], names[2], err, errlen);
}

/* Reads the three files and builds the identity; errors start with the file's path. */
struct tt_identity *tt_identity_load(const char *cert_path, const char *key_path,
                                     const char *bundle_path, char *err, size_t errlen)
{
    const char *paths[3] = {cert_path, key_path, bundle_path};
    char *data[3] = {NULL, NULL, NULL};
    size_t len[3] = {0, 0, 0};
    struct tt_identity *id = NULL;

    for (int i = 0; i < 3; i++) {
        int r = tt_file_read(paths[i], PEM_FILE_MAX, &data[i], &len[i]);
        if (r < 0) {
            tt_errf(err, errlen, "%s: %s", paths[i],
                    r == -EFBIG ? "file too large for PEM" : tt_strerror(r));
            goto out;
        }
    }
    id = identity_build(data[0], len[0], data[1], len[1], data[2], len[2], cert_path, key_path,
                        bundle_path, err, errlen);
out:
    for (int i = 0; i < 3; i++) {
        /* The key's bytes are secret: wipe them before the memory goes back. */
        if (data[i] != NULL)
            OPENSSL_cleanse(data[i], len[i]);
        free(data[i]);
    }
    return id;
}

/* Takes a reference. */
struct tt_identity *tt_identity_ref(struct tt_identity *id)
{
    __atomic_fetch_add(&id->refs, 1, __ATOMIC_RELAXED);
    return id;
}

/* Drops a reference; the last one frees the identity and its contexts. */
void tt_identity_unref(struct tt_identity *id)
{
    if (id == NULL)
        return;
    if (__atomic_sub_fetch(&id->refs, 1, __ATOMIC_ACQ_REL) == 0)
        identity_free(id);
}

/* The leaf's SPIFFE ID. */
const char *tt_identity_spiffe_id(const struct tt_identity *id)
{
    return id->leaf.spiffe_id;
}

/* What /certs shows of the leaf. */
const struct tt_cert_info *tt_identity_leaf(const struct tt_identity *id)
{
    return &id->leaf;
}

/* Number of trusted roots in the bundle. */
size_t tt_identity_root_count(const struct tt_identity *id)
{
    return id->n_roots;
}

/* Root i of the bundle, or NULL when i is out of range. */
const struct tt_cert_info *tt_identity_root(const struct tt_identity *id, size_t i)
{
    return i < id->n_roots ? &id->roots[i] : NULL;
}

/* The server context (client certificate required). */
SSL_CTX *tt_identity_server_ctx(const struct tt_identity *id)
{
    return id->server_ctx;
}

/* The client context (presents our certificate). */
SSL_CTX *tt_identity_client_ctx(const struct tt_identity *id)
{
    return id->client_ctx;
}

/* The trust bundle as an X509_STORE, for tls.c's verifier. */
X509_STORE *tt_identity_trust_store(const struct tt_identity *id)
{
    return id->store;
}

/* Copies a memory BIO's contents into a NUL-terminated heap string, then wipes the BIO's
 * copy (it may hold a private key). */
static char *bio_take_string(BIO *bio, size_t *len_out)
{
    const uint8_t *data;
    size_t len;
    char *s;

    if (!BIO_mem_contents(bio, &data, &len))
        return NULL;
    s = malloc(len + 1);
    if (s != NULL) {
        memcpy(s, data, len);
        s[len] = '\0';
        if (len_out != NULL)
            *len_out = len;
    }
    OPENSSL_cleanse((void *)data, len);
    return s;
}

/* PEM text of a certificate. */
char *tt_pem_from_cert(X509 *x)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *s = NULL;

    if (bio != NULL && PEM_write_bio_X509(bio, x))
        s = bio_take_string(bio, NULL);
    BIO_free(bio);
    ERR_clear_error();
    return s;
}

/* PKCS#8 PEM text of a private key. */
char *tt_pem_from_key(EVP_PKEY *key, size_t *len)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *s = NULL;

    if (bio != NULL && PEM_write_bio_PKCS8PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL))
        s = bio_take_string(bio, len);
    BIO_free(bio);
    ERR_clear_error();
    return s;
}

/* The shared PEM readers (identity.h): this module's own parsers, exported. */
int tt_pem_parse_certs(const char *pem, size_t len, STACK_OF(X509) * *out)
{
    return parse_certs(pem, len, out);
}

/* See tt_pem_parse_certs. */
int tt_pem_parse_key(const char *pem, size_t len, EVP_PKEY **out)
{
    return parse_key(pem, len, out);
}

/* The serial format of tt_cert_info (identity_bssl.h). */
void tt_serial_format(const ASN1_INTEGER *serial, char *out, size_t cap)
{
    format_serial(serial, out, cap);
}

/* The DN format of tt_cert_info (identity_bssl.h). */
int tt_name_format(const X509_NAME *name, char *out, size_t cap)
{
    return format_name(name, out, cap);
}

/* Unix seconds of t: its distance from the epoch as an ASN1_TIME. 0 when t is NULL or the
 * epoch cannot be allocated. */
int64_t tt_asn1_time_unix(const ASN1_TIME *t)
{
    ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
    int64_t v = asn1_time_unix(t, epoch);

    ASN1_TIME_free(epoch);
    return v;
}

/* Generates an ECDSA P-256 key as PKCS#8 PEM in memory. */
int tt_identity_keygen(char **key_pem, size_t *key_len)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *pkey = EVP_PKEY_new();
    int r = TT_E_TLS;

    if (ec == NULL || pkey == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(pkey, ec))
        goto out;
    ec = NULL; /* owned by pkey */
    *key_pem = tt_pem_from_key(pkey, key_len);
    r = *key_pem != NULL ? 0 : -ENOMEM;
out:
    EC_KEY_free(ec);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return r;
}

/* Builds a DER PKCS#10 request for spiffe_id signed by the key in key_pem. */
int tt_identity_csr(const char *key_pem, size_t key_len, const char *spiffe_id, uint8_t **der,
                    size_t *der_len)
{
    EVP_PKEY *pkey = NULL;
    X509_REQ *req = NULL;
    GENERAL_NAMES *names = NULL;
    GENERAL_NAME *gn = NULL;
    ASN1_IA5STRING *uri = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    X509_EXTENSION *ext = NULL;
    uint8_t *out = NULL;
    int n, r;

    if (tt_spiffe_check(spiffe_id, strlen(spiffe_id), false) < 0)
        return TT_E_SPIFFE;
    r = parse_key(key_pem, key_len, &pkey);
    if (r < 0)
        return r;
    r = TT_E_TLS;
    req = X509_REQ_new();
    names = GENERAL_NAMES_new();
    gn = GENERAL_NAME_new();
    uri = ASN1_IA5STRING_new();
    exts = sk_X509_EXTENSION_new_null();
    if (req == NULL || names == NULL || gn == NULL || uri == NULL || exts == NULL)
        goto out;
    if (!X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, pkey) ||
        !ASN1_STRING_set(uri, spiffe_id, (int)strlen(spiffe_id)))
        goto out;
    GENERAL_NAME_set0_value(gn, GEN_URI, uri);
    uri = NULL;
    if (!sk_GENERAL_NAME_push(names, gn))
        goto out;
    gn = NULL;
    ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, names);
    if (ext == NULL || !sk_X509_EXTENSION_push(exts, ext))
        goto out;
    ext = NULL;
    if (!X509_REQ_add_extensions(req, exts) || !X509_REQ_sign(req, pkey, EVP_sha256()))
        goto out;
    n = i2d_X509_REQ(req, &out);
    if (n <= 0)
        goto out;
    /* Handed out as plain heap memory: callers need no BoringSSL allocator. */
    *der = malloc((size_t)n);
    if (*der == NULL) {
        r = -ENOMEM;
        goto out;
    }
    memcpy(*der, out, (size_t)n);
    *der_len = (size_t)n;
    r = 0;
out:
    OPENSSL_free(out);
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    ASN1_IA5STRING_free(uri);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    X509_REQ_free(req);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return r;
}
