/* CRL sets (crl.h). Each CRL keeps its parsed X509_CRL (for the signature check, done only
 * when it lists a serial of the chain, so a handshake that no CRL concerns costs no
 * signature operation) and its serials as a revocation set (the same normalized form and
 * lookup as the control plane's revocations). */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base.h>

#ifndef OPENSSL_IS_BORINGSSL
#error "crl.c must be compiled against BoringSSL (-I/usr/include/android)"
#endif

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "core/errors.h"
#include "core/util.h"
#include "tls/crl.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"
#include "tls/revocations.h"

#define CRL_FILE_MAX (64 * 1024 * 1024) /* larger files are refused unread */

struct crl_entry {
    X509_CRL *crl;
    struct tt_revocations *serials;
    struct tt_crl_info info;
};

struct tt_crls {
    int refs; /* atomic */
    size_t n;
    struct crl_entry *e;
};

static void crls_free(struct tt_crls *crls)
{
    for (size_t i = 0; i < crls->n; i++) {
        X509_CRL_free(crls->e[i].crl);
        tt_revocations_unref(crls->e[i].serials);
    }
    free(crls->e);
    free(crls);
}

/* Parses every "X509 CRL" PEM block of data, or data as one DER CRL when it holds no PEM
 * header, onto `out`. Returns 0, or TT_E_PEM with the reason in err (prefixed by `path`). */
static int parse_file(const char *path, const char *data, size_t len, STACK_OF(X509_CRL) * out,
                      char *err, size_t errlen)
{
    if (len == 0) {
        tt_errf(err, errlen, "%s: empty file, expected a CRL (PEM or DER)", path);
        return TT_E_PEM;
    }
    if (memmem(data, len, "-----BEGIN", 10) == NULL) {
        const uint8_t *p = (const uint8_t *)data;
        X509_CRL *crl = len <= LONG_MAX ? d2i_X509_CRL(NULL, &p, (long)len) : NULL;

        if (crl == NULL || p != (const uint8_t *)data + len) {
            X509_CRL_free(crl);
            tt_errf(err, errlen, "%s: not a CRL (expected PEM \"-----BEGIN X509 CRL-----\" or DER)",
                    path);
            return TT_E_PEM;
        }
        if (!sk_X509_CRL_push(out, crl)) {
            X509_CRL_free(crl);
            tt_errf(err, errlen, "%s: out of memory", path);
            return -ENOMEM;
        }
        return 0;
    }
    if (len > INT_MAX) {
        tt_errf(err, errlen, "%s: file too large", path);
        return TT_E_PEM;
    }
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    int r = 0;

    if (bio == NULL) {
        tt_errf(err, errlen, "%s: out of memory", path);
        return -ENOMEM;
    }
    for (;;) {
        X509_CRL *crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
        if (crl == NULL) {
            uint32_t e = ERR_peek_last_error();
            if (ERR_GET_LIB(e) != ERR_LIB_PEM || ERR_GET_REASON(e) != PEM_R_NO_START_LINE) {
                tt_errf(err, errlen, "%s: CRL #%zu is not a valid X509 CRL PEM block", path,
                        sk_X509_CRL_num(out) + 1);
                r = TT_E_PEM;
            } else if (sk_X509_CRL_num(out) == 0) {
                tt_errf(err, errlen, "%s: no \"-----BEGIN X509 CRL-----\" block in this PEM file",
                        path);
                r = TT_E_PEM;
            }
            break;
        }
        if (!sk_X509_CRL_push(out, crl)) {
            X509_CRL_free(crl);
            tt_errf(err, errlen, "%s: out of memory", path);
            r = -ENOMEM;
            break;
        }
    }
    ERR_clear_error();
    BIO_free(bio);
    return r;
}

/* True when crl's signature verifies with the public key of certificate x. */
static bool signed_by(X509_CRL *crl, X509 *x)
{
    EVP_PKEY *key = X509_get_pubkey(x);
    bool ok = key != NULL && X509_CRL_verify(crl, key) == 1;

    EVP_PKEY_free(key);
    ERR_clear_error();
    return ok;
}

/* Whether a root of `trust` is named as crl's issuer (*named) and whether one of those
 * roots signed it: several roots may share a name (root rotation), any of them may. */
static bool signed_by_trusted_root(X509_CRL *crl, const struct tt_identity *trust, bool *named)
{
    X509_STORE *store = trust != NULL ? tt_identity_trust_store(trust) : NULL;
    STACK_OF(X509_OBJECT) *objs = store != NULL ? X509_STORE_get0_objects(store) : NULL;

    *named = false;
    for (size_t i = 0; objs != NULL && i < sk_X509_OBJECT_num(objs); i++) {
        X509 *x = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
        if (x == NULL || X509_NAME_cmp(X509_get_subject_name(x), X509_CRL_get_issuer(crl)) != 0)
            continue;
        *named = true;
        if (signed_by(crl, x))
            return true;
    }
    return false;
}

/* Fills entry e from crl (taking it), checking what can be checked without a peer: no
 * critical extension (delta CRLs, issuing distribution points) and, when a root of `trust`
 * issued it, its signature. Returns 0, or <0 with err set. */
static int entry_init(struct crl_entry *e, X509_CRL *crl, const char *source,
                      const struct tt_identity *trust, char *err, size_t errlen)
{
    const STACK_OF(X509_EXTENSION) *exts = X509_CRL_get0_extensions(crl);
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);
    size_t n = sk_X509_REVOKED_num(revoked), bad;
    char **serials = NULL;
    bool named;
    int r = -ENOMEM;

    e->crl = crl;
    snprintf(e->info.source, sizeof(e->info.source), "%s", source);
    if (tt_name_format(X509_CRL_get_issuer(crl), e->info.issuer, sizeof(e->info.issuer)) < 0)
        goto nomem;
    e->info.this_update = tt_asn1_time_unix(X509_CRL_get0_lastUpdate(crl));
    e->info.next_update = tt_asn1_time_unix(X509_CRL_get0_nextUpdate(crl));
    e->info.revoked = n;
    for (size_t i = 0; i < sk_X509_EXTENSION_num(exts); i++) {
        if (X509_EXTENSION_get_critical(sk_X509_EXTENSION_value(exts, i))) {
            tt_errf(err, errlen,
                    "%s: CRL of %s has a critical extension Tether does not implement "
                    "(a delta CRL or an issuing distribution point): give a complete CRL",
                    source, e->info.issuer);
            return TT_E_PEM;
        }
    }
    if (!signed_by_trusted_root(crl, trust, &named) && named) {
        tt_errf(err, errlen,
                "%s: the CRL's signature does not verify with the key of %s from the trust "
                "bundle",
                source, e->info.issuer);
        return TT_E_PEM;
    }
    serials = calloc(n > 0 ? n : 1, sizeof(*serials));
    if (serials == NULL)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        const X509_REVOKED *rev = sk_X509_REVOKED_value(revoked, i);
        char s[TT_SERIAL_MAX];

        tt_serial_format(X509_REVOKED_get0_serialNumber(rev), s, sizeof(s));
        if ((serials[i] = strdup(s)) == NULL)
            goto out;
    }
    e->serials = tt_revocations_new((const char *const *)serials, n, &bad);
    if (e->serials == NULL && bad < n) {
        tt_errf(err, errlen, "%s: CRL of %s lists serial %s that is not a valid serial", source,
                e->info.issuer, serials[bad]);
        r = TT_E_PEM;
        goto out;
    }
    r = e->serials != NULL ? 0 : -ENOMEM;
out:
    for (size_t i = 0; serials != NULL && i < n; i++)
        free(serials[i]);
    free(serials);
    if (r == -ENOMEM)
        goto nomem;
    return r;
nomem:
    tt_errf(err, errlen, "%s: out of memory", source);
    return -ENOMEM;
}

/* Loads the CRL files (see crl.h). */
struct tt_crls *tt_crls_load(const char *const *paths, size_t n, const struct tt_identity *trust,
                             char *err, size_t errlen)
{
    struct tt_crls *crls = calloc(1, sizeof(*crls));
    STACK_OF(X509_CRL) *parsed = NULL;
    char *data = NULL;
    size_t len;

    if (crls == NULL) {
        tt_errf(err, errlen, "out of memory");
        return NULL;
    }
    crls->refs = 1;
    for (size_t f = 0; f < n; f++) {
        int r = tt_file_read(paths[f], CRL_FILE_MAX, &data, &len);
        if (r < 0) {
            tt_errf(err, errlen, "%s: cannot read the CRL: %s", paths[f],
                    r == -EFBIG ? "larger than 64 MiB" : tt_strerror(r));
            goto err;
        }
        parsed = sk_X509_CRL_new_null();
        if (parsed == NULL)
            goto err_nomem;
        if (parse_file(paths[f], data, len, parsed, err, errlen) < 0)
            goto err;
        size_t k = sk_X509_CRL_num(parsed);
        struct crl_entry *grown = realloc(crls->e, (crls->n + k) * sizeof(*grown));
        if (grown == NULL)
            goto err_nomem;
        crls->e = grown;
        for (size_t i = 0; i < k; i++) {
            char source[512];
            if (k > 1)
                snprintf(source, sizeof(source), "%s #%zu", paths[f], i + 1);
            else
                snprintf(source, sizeof(source), "%s", paths[f]);
            memset(&crls->e[crls->n], 0, sizeof(crls->e[crls->n]));
            /* The entry owns its CRL from here, also when it is refused. */
            X509_CRL *crl = sk_X509_CRL_value(parsed, i);
            sk_X509_CRL_set(parsed, i, NULL);
            crls->n++;
            if (entry_init(&crls->e[crls->n - 1], crl, source, trust, err, errlen) < 0)
                goto err;
        }
        sk_X509_CRL_pop_free(parsed, X509_CRL_free);
        parsed = NULL;
        free(data);
        data = NULL;
    }
    return crls;
err_nomem:
    tt_errf(err, errlen, "%s: out of memory", paths[0]);
err:
    ERR_clear_error();
    sk_X509_CRL_pop_free(parsed, X509_CRL_free);
    free(data);
    crls_free(crls);
    return NULL;
}

/* Takes a reference; any thread. */
struct tt_crls *tt_crls_ref(struct tt_crls *crls)
{
    __atomic_fetch_add(&crls->refs, 1, __ATOMIC_RELAXED);
    return crls;
}

/* Drops a reference; the last one frees the set. */
void tt_crls_unref(struct tt_crls *crls)
{
    if (crls != NULL && __atomic_sub_fetch(&crls->refs, 1, __ATOMIC_ACQ_REL) == 0)
        crls_free(crls);
}

/* Number of CRLs. */
size_t tt_crls_count(const struct tt_crls *crls)
{
    return crls != NULL ? crls->n : 0;
}

/* What /stats shows of CRL i. */
const struct tt_crl_info *tt_crls_info(const struct tt_crls *crls, size_t i)
{
    return i < tt_crls_count(crls) ? &crls->e[i].info : NULL;
}

/* CRLs past their nextUpdate. */
size_t tt_crls_expired(const struct tt_crls *crls, int64_t now)
{
    size_t n = 0;

    for (size_t i = 0; i < tt_crls_count(crls); i++) {
        if (crls->e[i].info.next_update != 0 && crls->e[i].info.next_update < now)
            n++;
    }
    return n;
}

/* Checks every certificate of the chain but its anchor against its issuer's CRLs. */
int tt_crls_check_chain(const struct tt_crls *crls, const struct stack_st_X509 *chain_in,
                        char *detail, size_t cap)
{
    const STACK_OF(X509) *chain = (const STACK_OF(X509) *)chain_in;
    size_t n = chain != NULL ? sk_X509_num(chain) : 0;

    if (tt_crls_count(crls) == 0)
        return 0;
    for (size_t depth = 0; depth + 1 < n; depth++) {
        X509 *cert = sk_X509_value(chain, depth);
        X509 *issuer = sk_X509_value(chain, depth + 1);
        char serial[TT_SERIAL_MAX];

        tt_serial_format(X509_get0_serialNumber(cert), serial, sizeof(serial));
        for (size_t i = 0; i < crls->n; i++) {
            const struct crl_entry *e = &crls->e[i];
            if (X509_NAME_cmp(X509_CRL_get_issuer(e->crl), X509_get_issuer_name(cert)) != 0 ||
                !tt_revocations_check(e->serials, serial))
                continue;
            /* Listed: count it only when the chain's issuer signed this CRL. */
            if (!signed_by(e->crl, issuer))
                continue;
            tt_errf(detail, cap, "serial %s (chain depth %zu) is listed in the CRL %s of %s",
                    serial, depth, e->info.source, e->info.issuer);
            return TT_E_REVOKED;
        }
    }
    return 0;
}
