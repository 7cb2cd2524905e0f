/* One I/O-free TLS session (see tls.h).
 *
 * BoringSSL talks to a custom BIO that reads ciphertext from `in` and appends ciphertext
 * to `out`, two slab-pooled tt_bufs that hold no memory while empty. The BIO never
 * blocks on write; a read with nothing buffered sets the retry flag, which BoringSSL
 * reports as SSL_ERROR_WANT_READ and we as "need more input".
 *
 * Peer verification is our own (SSL_set_custom_verify): the chain against the identity's
 * trust bundle with validity dates, exactly one valid spiffe:// URI SAN, the revocation
 * set and, for clients, the expected SPIFFE ID. The verifier records the precise
 * failure in the session, found from the SSL through ex_data, so that
 * tt_tls_handshake() returns it rather than a generic "verify failed". */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base.h>

#ifndef OPENSSL_IS_BORINGSSL
#error "tls.c must be compiled against BoringSSL (-I/usr/include/android)"
#endif

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pool.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/util.h"
#include "tls/crl.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"
#include "tls/revocations.h"
#include "tls/tls.h"

#define VERIFY_MODE (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT)

static int role_is_client(enum tt_tls_role role)
{
    return role == TT_TLS_CLIENT || role == TT_TLS_CLIENT_ANONYMOUS;
}

struct tt_tls {
    SSL *ssl;
    struct tt_identity *id; /* referenced for the session's lifetime */
    struct tt_buf in;       /* ciphertext fed, not yet read by BoringSSL */
    struct tt_buf out;      /* ciphertext produced, not yet consumed by the caller */
    char *expected_peer;    /* clients: the SPIFFE ID the server must present */
    char *peer_id;          /* what the peer presented; NULL until verification ran */
    char *peer_issuer;
    int verify_err; /* the verifier's verdict when it refused the peer, else 0 */
    int failed;     /* the handshake's failure code, sticky */
    enum tt_tls_role role;
    struct tt_tls_resume *resume;       /* clients: where new session tickets are kept */
    struct tt_revocations *revocations; /* referenced; NULL: nothing revoked */
    struct tt_crls *crls;               /* referenced; NULL: no CRLs */
    const char *alpn;                   /* servers: the protocol to select, or NULL */
    unsigned done : 1;                  /* handshake complete */
    unsigned verified : 1;              /* our verifier ran in this handshake */
    unsigned oom : 1;                   /* the BIO could not buffer output */
    unsigned confirmed : 1;             /* the peer sent a record after the handshake */
    char peer_serial[TT_SERIAL_MAX];
    char detail[TT_TLS_DETAIL_MAX]; /* why the handshake failed, "" until it did */
    int peer_alert;                 /* the fatal alert the peer sent, -1 for none */
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int ex_index = -1;
static BIO_METHOD *bio_method;

/* --- BIO over the two tt_bufs -------------------------------------------------------- */

static int bio_read(BIO *bio, char *out, int len)
{
    struct tt_tls *tls = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (len <= 0)
        return 0;
    if (tls->in.len == 0) {
        BIO_set_retry_read(bio);
        return -1;
    }
    size_t n = tls->in.len < (size_t)len ? tls->in.len : (size_t)len;
    memcpy(out, tt_buf_head(&tls->in), n);
    tt_buf_consume(&tls->in, n); /* the slab goes back to the pool once empty */
    return (int)n;
}

static int bio_write(BIO *bio, const char *data, int len)
{
    struct tt_tls *tls = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (len <= 0)
        return 0;
    if (tt_buf_append(&tls->out, data, (size_t)len) < 0) {
        tls->oom = 1;
        return -1;
    }
    return len;
}

static long bio_ctrl(BIO *bio, int cmd, long larg, void *parg)
{
    /* BoringSSL flushes after each flight; there is nothing to flush. */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void global_init(void)
{
    ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    bio_method = BIO_meth_new(BIO_TYPE_SOURCE_SINK | BIO_get_new_index(), "tt_tls");
    if (bio_method != NULL &&
        (!BIO_meth_set_read(bio_method, bio_read) || !BIO_meth_set_write(bio_method, bio_write) ||
         !BIO_meth_set_ctrl(bio_method, bio_ctrl))) {
        BIO_meth_free(bio_method);
        bio_method = NULL;
    }
}

/* --- Peer verification ---------------------------------------------------------------- */

static int map_x509_error(int e)
{
    switch (e) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return TT_E_EXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return TT_E_NOT_YET_VALID;
    case X509_V_ERR_OUT_OF_MEM:
        return -ENOMEM;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
        return TT_E_UNKNOWN_CA;
    case X509_V_ERR_INVALID_PURPOSE:
        return TT_E_BAD_USAGE;
    default:
        /* A bad signature, a non-CA issuer, a path length violation...: in every case
         * the chain does not validly lead to a trusted root. */
        return TT_E_UNKNOWN_CA;
    }
}

static uint8_t alert_for(int err)
{
    switch (err) {
    case TT_E_NO_CERT:
        return SSL_AD_CERTIFICATE_REQUIRED;
    case TT_E_UNKNOWN_CA:
        return SSL_AD_UNKNOWN_CA;
    case TT_E_EXPIRED:
        return SSL_AD_CERTIFICATE_EXPIRED;
    case TT_E_REVOKED:
        return SSL_AD_CERTIFICATE_REVOKED;
    case TT_E_BAD_USAGE:
        return SSL_AD_UNSUPPORTED_CERTIFICATE;
    case -ENOMEM:
        return SSL_AD_INTERNAL_ERROR;
    default: /* not yet valid, bad SAN, wrong identity, unparsable certificate */
        return SSL_AD_BAD_CERTIFICATE;
    }
}

/* Keeps what the peer presented for the getters (and /stats' recent failures). */
static int record_peer(struct tt_tls *tls, const struct tt_cert_info *info)
{
    free(tls->peer_id);
    free(tls->peer_issuer);
    tls->peer_id = strdup(info->spiffe_id);
    tls->peer_issuer = strdup(info->issuer);
    memcpy(tls->peer_serial, info->serial, sizeof(tls->peer_serial));
    return tls->peer_id != NULL && tls->peer_issuer != NULL ? 0 : -ENOMEM;
}

/* A verified peer chain: what verify_chain() builds and chain_done() releases. */
struct peer_chain {
    X509 *leaf;
    STACK_OF(X509) * untrusted;
    X509_STORE_CTX *sctx;
};

static void chain_done(struct peer_chain *pc)
{
    X509_STORE_CTX_free(pc->sctx);
    sk_X509_pop_free(pc->untrusted, X509_free);
    X509_free(pc->leaf);
    memset(pc, 0, sizeof(*pc));
}

/* Parses the peer's certificates (certs, leaf first, at least one) and verifies the chain
 * against the trust bundle, with dates and the key usage of the peer's TLS role. Returns 0
 * (X509_STORE_CTX_get0_chain(pc->sctx) is the verified chain), or the tt_err that refuses
 * it with tls->detail set. pc is filled in either way: release it with chain_done(). */
static int verify_chain(struct tt_tls *tls, const STACK_OF(CRYPTO_BUFFER) * certs,
                        struct peer_chain *pc)
{
    memset(pc, 0, sizeof(*pc));
    pc->leaf = X509_parse_from_buffer(sk_CRYPTO_BUFFER_value(certs, 0));
    if (pc->leaf == NULL) {
        /* BoringSSL accepted the DER but it is no usable X.509 */
        tt_errf(tls->detail, sizeof(tls->detail), "the peer's certificate does not parse");
        return TT_E_PROTOCOL;
    }
    /* The rest of the peer's chain may supply intermediates, never trust. */
    pc->untrusted = sk_X509_new_null();
    pc->sctx = X509_STORE_CTX_new();
    if (pc->untrusted == NULL || pc->sctx == NULL)
        return -ENOMEM;
    for (size_t i = 1; i < sk_CRYPTO_BUFFER_num(certs); i++) {
        X509 *x = X509_parse_from_buffer(sk_CRYPTO_BUFFER_value(certs, i));
        if (x == NULL) {
            tt_errf(tls->detail, sizeof(tls->detail),
                    "certificate %zu of the peer's chain does not parse", i);
            return TT_E_PROTOCOL;
        }
        if (!sk_X509_push(pc->untrusted, x)) {
            X509_free(x);
            return -ENOMEM;
        }
    }
    if (!X509_STORE_CTX_init(pc->sctx, tt_identity_trust_store(tls->id), pc->leaf, pc->untrusted))
        return -ENOMEM;
    /* The leaf must be fit for its side of TLS: a server's certificate for serverAuth, a
     * client's for clientAuth (extended and plain key usage, when present). */
    X509_STORE_CTX_set_purpose(pc->sctx, role_is_client(tls->role) ? X509_PURPOSE_SSL_SERVER
                                                                   : X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(pc->sctx) != 1) {
        int e = X509_STORE_CTX_get_error(pc->sctx);
        tt_errf(tls->detail, sizeof(tls->detail), "%s (chain depth %d)",
                X509_verify_cert_error_string(e), X509_STORE_CTX_get_error_depth(pc->sctx));
        return map_x509_error(e);
    }
    return 0;
}

/* Verifies the peer's chain; returns 0 or the tt_err that refuses it, with tls->detail
 * saying why. */
static int verify_peer(struct tt_tls *tls)
{
    const STACK_OF(CRYPTO_BUFFER) *certs = SSL_get0_peer_certificates(tls->ssl);
    struct peer_chain pc;
    X509 *leaf;
    struct tt_cert_info info;
    int r, san;

    if (certs == NULL || sk_CRYPTO_BUFFER_num(certs) == 0) {
        if (tls->role == TT_TLS_SERVER_OPTIONAL_CLIENT)
            return 0;
        tt_errf(tls->detail, sizeof(tls->detail), "the peer sent no certificate");
        return TT_E_NO_CERT;
    }
    r = verify_chain(tls, certs, &pc);
    leaf = pc.leaf;
    if (leaf == NULL)
        goto out;
    san = tt_cert_info_fill(&info, leaf);
    if (san == -ENOMEM || record_peer(tls, &info) < 0) {
        r = -ENOMEM;
        goto out;
    }
    if (r != 0)
        goto out;
    if (san != 0) {
        tt_errf(tls->detail, sizeof(tls->detail),
                "the leaf lacks exactly one spiffe:// URI SAN with a valid SPIFFE ID");
        r = TT_E_BAD_SAN;
        goto out;
    }
    /* Revocations name workload certificates the mesh CA issued: the leaf. */
    if (tt_revocations_check(tls->revocations, info.serial)) {
        tt_errf(tls->detail, sizeof(tls->detail), "serial %s is revoked by the control plane",
                info.serial);
        r = TT_E_REVOKED;
        goto out;
    }
    /* CRLs may revoke any certificate of the chain, intermediates included. */
    r = tt_crls_check_chain(tls->crls,
                            (const struct stack_st_X509 *)X509_STORE_CTX_get0_chain(pc.sctx),
                            tls->detail, sizeof(tls->detail));
    if (r != 0)
        goto out;
    if (role_is_client(tls->role) &&
        (tls->expected_peer == NULL || strcmp(info.spiffe_id, tls->expected_peer) != 0)) {
        tt_errf(tls->detail, sizeof(tls->detail), "the server is %s, expected %s",
                info.spiffe_id[0] != '\0' ? info.spiffe_id : "(no SPIFFE ID)",
                tls->expected_peer != NULL ? tls->expected_peer : "(none)");
        r = TT_E_WRONG_IDENTITY; /* secure naming: not the workload this address must be */
        goto out;
    }
    r = 0;
out:
    chain_done(&pc);
    return r;
}

static enum ssl_verify_result_t on_verify_peer(SSL *ssl, uint8_t *out_alert)
{
    struct tt_tls *tls = SSL_get_ex_data(ssl, ex_index);
    int r = verify_peer(tls);

    ERR_clear_error();
    tls->verified = 1;
    if (r == 0)
        return ssl_verify_ok;
    tls->verify_err = r;
    *out_alert = alert_for(r);
    return ssl_verify_invalid;
}

/* --- Sessions ------------------------------------------------------------------------- */

/* Creates a session; see tls.h. */
struct tt_tls *tt_tls_new(struct tt_identity *id, enum tt_tls_role role, const char *expected_peer)
{
    struct tt_tls *tls;
    BIO *bio;

    assert(role_is_client(role) == (expected_peer != NULL));
    if (pthread_once(&global_once, global_init) != 0 || ex_index < 0 || bio_method == NULL)
        return NULL;
    tls = calloc(1, sizeof(*tls));
    if (tls == NULL)
        return NULL;
    tls->role = role;
    tls->peer_alert = -1;
    tt_buf_init(&tls->in);
    tt_buf_init(&tls->out);
    if (expected_peer != NULL && (tls->expected_peer = strdup(expected_peer)) == NULL)
        goto err_free_tls;

    tls->ssl =
        SSL_new(role_is_client(role) ? tt_identity_client_ctx(id) : tt_identity_server_ctx(id));
    if (tls->ssl == NULL)
        goto err_free_tls;
    if (!SSL_set_ex_data(tls->ssl, ex_index, tls))
        goto err_free_ssl;
    /* Without FAIL_IF_NO_PEER_CERT a client may send an empty Certificate message; the
     * verifier still runs on any certificate it does send. */
    SSL_set_custom_verify(tls->ssl,
                          role == TT_TLS_SERVER_OPTIONAL_CLIENT ? SSL_VERIFY_PEER : VERIFY_MODE,
                          on_verify_peer);
    if (role == TT_TLS_CLIENT_ANONYMOUS)
        SSL_certs_clear(tls->ssl); /* answer a CertificateRequest with no certificate */
    /* After the handshake BoringSSL may drop the configuration it no longer needs:
     * part of keeping an idle connection small. */
    SSL_set_shed_handshake_config(tls->ssl, 1);
    if (role_is_client(role))
        SSL_set_connect_state(tls->ssl);
    else
        SSL_set_accept_state(tls->ssl);

    bio = BIO_new(bio_method);
    if (bio == NULL)
        goto err_free_ssl;
    BIO_set_data(bio, tls);
    BIO_set_init(bio, 1);
    SSL_set_bio(tls->ssl, bio, bio); /* one reference, now owned by the SSL */

    tls->id = tt_identity_ref(id);
    return tls;

err_free_ssl:
    SSL_free(tls->ssl);
err_free_tls:
    ERR_clear_error();
    free(tls->expected_peer);
    free(tls);
    return NULL;
}

/* Frees the session and drops the identity reference. */
void tt_tls_free(struct tt_tls *tls)
{
    if (tls == NULL)
        return;
    SSL_free(tls->ssl);
    tt_buf_done(&tls->in);
    tt_buf_done(&tls->out);
    free(tls->expected_peer);
    free(tls->peer_id);
    free(tls->peer_issuer);
    tt_revocations_unref(tls->revocations);
    tt_crls_unref(tls->crls);
    tt_identity_unref(tls->id);
    free(tls);
}

/* Makes `revocations` the set this session's peer is checked against. */
void tt_tls_set_revocations(struct tt_tls *tls, struct tt_revocations *revocations)
{
    if (revocations != NULL)
        tt_revocations_ref(revocations);
    tt_revocations_unref(tls->revocations);
    tls->revocations = revocations;
}

/* Makes `crls` the CRLs this session's peer chain is checked against. */
void tt_tls_set_crls(struct tt_tls *tls, struct tt_crls *crls)
{
    if (crls != NULL)
        tt_crls_ref(crls);
    tt_crls_unref(tls->crls);
    tls->crls = crls;
}

/* Checks the verified peer's chain against `crls` again (see tls.h). */
int tt_tls_check_crls(struct tt_tls *tls, const struct tt_crls *crls)
{
    const STACK_OF(CRYPTO_BUFFER) *certs = SSL_get0_peer_certificates(tls->ssl);
    struct peer_chain pc;
    char detail[TT_TLS_DETAIL_MAX];
    int r;

    if (tt_crls_count(crls) == 0 || certs == NULL || sk_CRYPTO_BUFFER_num(certs) == 0)
        return 0;
    /* The chain is rebuilt as the handshake built it (same trust store); a chain that no
     * longer verifies (it expired meanwhile) is not this function's business. */
    memcpy(detail, tls->detail, sizeof(detail));
    r = verify_chain(tls, certs, &pc);
    if (r == 0)
        r = tt_crls_check_chain(crls,
                                (const struct stack_st_X509 *)X509_STORE_CTX_get0_chain(pc.sctx),
                                detail, sizeof(detail));
    else
        r = r == -ENOMEM ? -ENOMEM : 0;
    chain_done(&pc);
    ERR_clear_error();
    memcpy(tls->detail, detail, sizeof(detail));
    return r;
}

/* Empties a resumption slot. */
void tt_tls_resume_done(struct tt_tls_resume *slot)
{
    SSL_SESSION_free(slot->session);
    tt_identity_unref(slot->identity);
    slot->session = NULL;
    slot->identity = NULL;
}

/* Offers the slot's session (when it was made with the same identity) and keeps the
 * tickets this session receives in the slot. */
int tt_tls_set_resume(struct tt_tls *tls, struct tt_tls_resume *slot)
{
    if (!role_is_client(tls->role) || tls->role == TT_TLS_CLIENT_ANONYMOUS)
        return -EINVAL;
    tls->resume = slot;
    if (slot->session != NULL && slot->identity == tls->id &&
        !SSL_set_session(tls->ssl, slot->session)) {
        ERR_clear_error();
        return TT_E_TLS;
    }
    return 0;
}

/* The client context's new-session callback (installed by identity.c): keeps the newest
 * ticket in the session's resumption slot. Returns 1 when it took the reference. */
int tt_tls_on_new_session(SSL *ssl, SSL_SESSION *session)
{
    struct tt_tls *tls = SSL_get_ex_data(ssl, ex_index);
    struct tt_tls_resume *slot = tls != NULL ? tls->resume : NULL;

    if (tls != NULL)
        tls->confirmed = 1; /* a ticket: the server accepted our half of the handshake */
    if (slot == NULL)
        return 0;
    SSL_SESSION_free(slot->session);
    if (slot->identity != tls->id) {
        tt_identity_unref(slot->identity);
        slot->identity = tt_identity_ref(tls->id);
    }
    slot->session = session;
    return 1;
}

/* Sets the ALPN protocol a session offers (client) or selects (server) (see tls.h). */
int tt_tls_set_alpn(struct tt_tls *tls, const char *proto)
{
    size_t n = proto != NULL ? strlen(proto) : 0, w = 0;
    uint8_t wire[512];

    if (n == 0 || n > 255)
        return -EINVAL;
    if (!role_is_client(tls->role)) {
        tls->alpn = proto;
        return 0;
    }
    /* RFC 7301 §3.1: a list of length-prefixed names, from the comma-separated list. */
    for (const char *p = proto; *p != '\0';) {
        size_t len = strcspn(p, ",");
        if (len == 0 || w + 1 + len > sizeof(wire))
            return -EINVAL;
        wire[w++] = (uint8_t)len;
        memcpy(wire + w, p, len);
        w += len;
        p += len;
        if (*p == ',' && *++p == '\0')
            return -EINVAL;
    }
    /* SSL_set_alpn_protos returns 0 on success (unlike most of the API). */
    return SSL_set_alpn_protos(tls->ssl, wire, (unsigned)w) == 0 ? 0 : -ENOMEM;
}

/* Whether the client's ALPN list in[0..inlen) (RFC 7301 §3.1) offers name[0..len); sets
 * *at to the offered copy. */
static bool alpn_offered(const uint8_t *in, unsigned inlen, const char *name, size_t len,
                         const uint8_t **at)
{
    for (unsigned i = 0; i < inlen;) {
        unsigned n = in[i];

        if (i + 1 + n > inlen)
            return false;
        if (n == len && memcmp(in + i + 1, name, n) == 0) {
            *at = in + i + 1;
            return true;
        }
        i += 1 + n;
    }
    return false;
}

/* The server contexts' ALPN callback (identity_bssl.h): selects the first protocol of the
 * session's list, in its order of preference, that the client offers; otherwise the
 * handshake goes on without ALPN, as it does for a client that offers none (RFC 7301 §3.2
 * allows a server to ignore the extension). */
int tt_tls_on_alpn_select(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
                          unsigned inlen, void *arg)
{
    struct tt_tls *tls = SSL_get_ex_data(ssl, ex_index);

    (void)arg;
    for (const char *p = tls != NULL ? tls->alpn : NULL; p != NULL && *p != '\0';) {
        size_t len = strcspn(p, ",");

        if (len > 0 && len <= 255 && alpn_offered(in, inlen, p, len, out)) {
            *outlen = (uint8_t)len;
            return SSL_TLSEXT_ERR_OK;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* The negotiated ALPN protocol (see tls.h). */
void tt_tls_alpn(const struct tt_tls *tls, char *buf, size_t len)
{
    const uint8_t *p = NULL;
    unsigned n = 0;

    SSL_get0_alpn_selected(tls->ssl, &p, &n);
    if (len == 0)
        return;
    if (n >= len)
        n = (unsigned)len - 1;
    if (n > 0)
        memcpy(buf, p, n);
    buf[n] = '\0';
}

/* Appends ciphertext from the peer. */
int tt_tls_feed(struct tt_tls *tls, const void *data, size_t len)
{
    return tt_buf_append(&tls->in, data, len);
}

/* The input buffer's free tail, for a socket read. */
uint8_t *tt_tls_input_tail(struct tt_tls *tls, size_t *avail)
{
    return tt_buf_tail(&tls->in, avail);
}

/* Accounts bytes read into the input tail. */
void tt_tls_input_commit(struct tt_tls *tls, size_t n)
{
    tt_buf_commit(&tls->in, n);
    tt_buf_settle(&tls->in);
}

/* The pending ciphertext buffer itself. */
struct tt_buf *tt_tls_output(struct tt_tls *tls)
{
    return &tls->out;
}

/* Bytes fed but not yet read by BoringSSL. */
size_t tt_tls_input_len(const struct tt_tls *tls)
{
    return tls->in.len;
}

/* Says in tls->detail what the TLS library reported: the alert the peer sent, else the
 * library's reason (e.g. NO_COMMON_SIGNATURE_ALGORITHMS), lower-cased. */
static void record_library_error(struct tt_tls *tls, uint32_t e)
{
    int reason = ERR_GET_REASON(e);
    const char *text = ERR_reason_error_string(e);
    char lower[96];
    size_t i;

    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
        tls->peer_alert = reason - SSL_AD_REASON_OFFSET;
        tt_errf(tls->detail, sizeof(tls->detail), "the peer sent the alert \"%s\"",
                SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET));
        return;
    }
    for (i = 0; text != NULL && text[i] != '\0' && i + 1 < sizeof(lower); i++)
        lower[i] = text[i] >= 'A' && text[i] <= 'Z' ? (char)(text[i] - 'A' + 'a') : text[i];
    lower[i] = '\0';
    tt_errf(tls->detail, sizeof(tls->detail), "TLS library: %s",
            text != NULL ? lower : "unknown error");
}

/* Classifies the thread's error queue after SSL_ERROR_SSL and says why in tls->detail. The
 * queue may start with another library's entry (a failed AEAD open puts
 * CIPHER_R_BAD_DECRYPT before SSL's bad-record-MAC), so every entry is looked at. */
static int queue_error(struct tt_tls *tls)
{
    int ssl = 0, nomem = 0, no_cert = 0;
    uint32_t e;

    while ((e = ERR_get_error()) != 0) {
        if (ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE) {
            nomem = 1;
        } else if (ERR_GET_LIB(e) == ERR_LIB_SSL &&
                   ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
            no_cert = 1; /* BoringSSL refuses this before calling the verifier */
            tt_errf(tls->detail, sizeof(tls->detail), "the peer sent no certificate");
        } else if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
            if (!ssl && !no_cert)
                record_library_error(tls, e);
            ssl = 1;
        }
    }
    if (no_cert)
        return TT_E_NO_CERT;
    if (nomem)
        return -ENOMEM;
    /* Bad record, version, cipher, handshake message, or the peer's alert. */
    return ssl ? TT_E_PROTOCOL : TT_E_TLS;
}

/* Turns the outcome of a failed SSL_* call into 0 (need more input) or a code, and
 * empties the thread's error queue. */
static int map_ssl_error(struct tt_tls *tls, int ret)
{
    int r;

    switch (SSL_get_error(tls->ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        r = 0;
        break;
    case SSL_ERROR_ZERO_RETURN:
        r = TT_TLS_EOF;
        break;
    case SSL_ERROR_SSL:
        r = tls->verify_err != 0 ? tls->verify_err : tls->oom ? -ENOMEM : queue_error(tls);
        break;
    default:
        /* SSL_ERROR_SYSCALL: our BIO failed, which only happens when out of memory. */
        r = tls->oom ? -ENOMEM : TT_E_TLS;
        break;
    }
    ERR_clear_error();
    return r;
}

/* Advances the handshake; see tls.h. */
int tt_tls_handshake(struct tt_tls *tls)
{
    int r;

    if (tls->failed != 0)
        return tls->failed;
    if (tls->done)
        return 1;
    ERR_clear_error();
    r = SSL_do_handshake(tls->ssl);
    if (r == 1) {
        /* A resumed session skips the verifier on the server side (BoringSSL honours
         * reverify-on-resume only for clients): check the chain the ticket carried now,
         * so expiry, revocation and the recorded peer identity hold for resumptions too. */
        if (!tls->verified && (r = verify_peer(tls)) != 0) {
            ERR_clear_error();
            tls->verify_err = r;
            tls->failed = r;
            SSL_send_fatal_alert(tls->ssl, alert_for(r));
            ERR_clear_error();
            return r;
        }
        tls->done = 1;
        /* A BoringSSL server holds its NewSessionTickets back until the first write; a
         * write of nothing sends them now, so they reach the client before it might
         * close its side, and never ride on top of a full-slab write later. */
        if (!role_is_client(tls->role)) {
            (void)SSL_write(tls->ssl, "", 0);
            ERR_clear_error();
        }
        return 1;
    }
    r = map_ssl_error(tls, r);
    if (r == TT_TLS_EOF) {
        r = TT_E_PROTOCOL; /* close_notify before the handshake finished */
        tt_errf(tls->detail, sizeof(tls->detail), "the peer closed TLS during the handshake");
    }
    if (r < 0)
        tls->failed = r;
    return r;
}

/* Decrypts into buf; see tls.h. */
int tt_tls_read(struct tt_tls *tls, void *buf, size_t len)
{
    int r;

    if (tls->failed != 0)
        return tls->failed;
    if (len == 0)
        return 0;
    if (len > INT_MAX)
        len = INT_MAX;
    ERR_clear_error();
    r = SSL_read(tls->ssl, buf, (int)len);
    if (r > 0) {
        tls->confirmed = 1;
        return r;
    }
    return map_ssl_error(tls, r);
}

/* Encrypts all of buf into the pending output. SSL_write writes everything it is given
 * (as several records) because our BIO never refuses a write; the loop only matters for
 * lengths above INT_MAX. */
int tt_tls_write(struct tt_tls *tls, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    if (tls->failed != 0)
        return tls->failed;
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        ERR_clear_error();
        int r = SSL_write(tls->ssl, p, chunk);
        if (r <= 0) {
            r = map_ssl_error(tls, r);
            return r < 0 && r != TT_TLS_EOF ? r : TT_E_TLS;
        }
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

/* Queues our close_notify. */
int tt_tls_close_notify(struct tt_tls *tls)
{
    ERR_clear_error();
    int r = SSL_shutdown(tls->ssl);
    if (r >= 0)
        return 0;
    r = map_ssl_error(tls, r);
    return r < 0 && r != TT_TLS_EOF ? r : TT_E_TLS;
}

/* Ciphertext waiting to be sent. */
size_t tt_tls_pending(struct tt_tls *tls, const uint8_t **data)
{
    *data = tls->out.len > 0 ? tt_buf_head(&tls->out) : NULL;
    return tls->out.len;
}

/* Marks n pending bytes as sent; the slab returns to the pool once all are. */
void tt_tls_consume(struct tt_tls *tls, size_t n)
{
    assert(n <= tls->out.len);
    tt_buf_consume(&tls->out, n);
}

/* The peer's SPIFFE ID as presented, "" when unknown. */
const char *tt_tls_peer_id(const struct tt_tls *tls)
{
    return tls->peer_id != NULL ? tls->peer_id : "";
}

/* The peer leaf's serial, "" when unknown. */
const char *tt_tls_peer_serial(const struct tt_tls *tls)
{
    return tls->peer_serial;
}

/* The peer leaf's issuer DN, "" when unknown. */
const char *tt_tls_peer_issuer(const struct tt_tls *tls)
{
    return tls->peer_issuer != NULL ? tls->peer_issuer : "";
}

/* The negotiated protocol version, e.g. "TLSv1.3". */
const char *tt_tls_version(const struct tt_tls *tls)
{
    return SSL_get_version(tls->ssl);
}

/* Why the handshake failed, "" when it did not (see tls.h). */
const char *tt_tls_error_detail(const struct tt_tls *tls)
{
    return tls->detail;
}

/* The alert the peer ended the session with, -1 for none. */
int tt_tls_peer_alert(const struct tt_tls *tls)
{
    return tls->peer_alert;
}

/* Whether the peer has shown that it accepted the handshake (see tls.h). */
bool tt_tls_peer_confirmed(const struct tt_tls *tls)
{
    if (!tls->done)
        return false;
    /* In TLS 1.2 the server's Finished comes after it checked our certificate. */
    return tls->confirmed || !role_is_client(tls->role) || SSL_version(tls->ssl) < TLS1_3_VERSION;
}

/* 1 when the handshake resumed a session (a ticket). */
int tt_tls_resumed(const struct tt_tls *tls)
{
    return SSL_session_reused(tls->ssl);
}
