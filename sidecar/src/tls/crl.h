/* Certificate revocation lists from files (--crl, DESIGN.md "Threads and snapshots": the
 * trust member's CRLs): parsed once, immutable and refcounted, one snapshot member of
 * their own so a reload that changes only CRLs keeps the identity's SSL_CTXs.
 *
 * A peer's chain is checked certificate by certificate, the trust anchor excepted: a
 * certificate is revoked when a CRL whose issuer name is its issuer's lists its serial
 * and that CRL's signature verifies with the public key of the issuer in the verified
 * chain (a CRL that does not verify is somebody else's and is ignored). A CA that
 * published no CRL fails nothing (X509_V_FLAG_CRL_CHECK_ALL semantics without its "every
 * issuer must have a CRL"). An expired CRL (nextUpdate passed) still refuses the serials
 * it lists; the runtime and /stats warn about it (README "Revocation lists"). No libuv;
 * BoringSSL stays inside this layer. */
#ifndef TT_CRL_H
#define TT_CRL_H

#include <stddef.h>
#include <stdint.h>

struct tt_crls;
struct tt_identity;
struct stack_st_X509; /* BoringSSL's STACK_OF(X509), for tls.c only */

/* What /stats shows of one CRL. */
struct tt_crl_info {
    char source[512];    /* file name, with " #N" for the Nth CRL of a file holding several */
    char issuer[256];    /* RFC 2253 one-line DN */
    int64_t this_update; /* unix seconds */
    int64_t next_update; /* unix seconds; 0 when the CRL has no nextUpdate */
    size_t revoked;      /* serials listed */
};

/* Reads the CRL files paths[0..n): each PEM (one or more "X509 CRL" blocks) or DER (one
 * CRL). A CRL whose issuer is a root of `trust` (may be NULL) must verify with that root's
 * key. Returns the set with one reference (n == 0 gives an empty set); NULL on failure
 * with one line in err naming the file and what is wrong with it (unreadable, not a CRL,
 * a block that does not parse, a critical extension this code does not implement, such
 * as a delta CRL's, a bad signature by a trusted root). */
struct tt_crls *tt_crls_load(const char *const *paths, size_t n, const struct tt_identity *trust,
                             char *err, size_t errlen);

struct tt_crls *tt_crls_ref(struct tt_crls *crls);
void tt_crls_unref(struct tt_crls *crls); /* accepts NULL */

/* Number of CRLs (0 for NULL) and what /stats shows of the i-th (NULL out of range). */
size_t tt_crls_count(const struct tt_crls *crls);
const struct tt_crl_info *tt_crls_info(const struct tt_crls *crls, size_t i);

/* Number of CRLs whose nextUpdate is before `now` (unix seconds). */
size_t tt_crls_expired(const struct tt_crls *crls, int64_t now);

/* Checks a verified chain (leaf first, trust anchor last) as the header comment says.
 * Returns 0, or TT_E_REVOKED with a one-line reason in detail[0..cap) naming the serial,
 * the certificate's depth and the CRL. NULL crls revoke nothing. */
int tt_crls_check_chain(const struct tt_crls *crls, const struct stack_st_X509 *chain, char *detail,
                        size_t cap);

#endif
