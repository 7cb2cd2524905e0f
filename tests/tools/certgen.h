/* Test certificate generator: CAs (roots and intermediates) and leaves with chosen key
 * type (EC P-256 by default, P-384, RSA-2048, Ed25519), URI SANs, validity window and
 * issuer, as PEM text and as BoringSSL objects; and CRLs signed by a generated CA.
 * For tests and tt-certgen only; never linked into the sidecar. */
#ifndef TT_CERTGEN_H
#define TT_CERTGEN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

#define TT_CERTGEN_MAX_URIS 2

/* One generated (or loaded) certificate with its private key. */
struct tt_certgen_cert {
    X509 *x509;
    EVP_PKEY *key;
    char *cert_pem;  /* this certificate alone */
    char *key_pem;   /* the private key, PKCS#8 */
    char *chain_pem; /* this certificate followed by its issuers, the root excluded */
    int is_root;     /* self-signed */
};

/* What tt_certgen_new() builds. Zero-initialize, then set what matters. */
struct tt_certgen_opts {
    const char *cn;                        /* subject CN; NULL gives "tether test" */
    const char *uris[TT_CERTGEN_MAX_URIS]; /* URI SANs in this order; NULL entries skipped */
    int64_t not_before; /* seconds relative to now; when both are 0: -300 and +3600 */
    int64_t not_after;
    uint64_t serial;      /* 0: 16 random bytes (a positive number) */
    int is_ca;            /* CA:TRUE, keyCertSign; leaves get serverAuth and clientAuth */
    const char *eku;      /* leaves: extendedKeyUsage value instead of "serverAuth,clientAuth" */
    const char *key_type; /* "p256" (NULL), "p384", "rsa2048" or "ed25519" */
};

/* Generates a key of opts->key_type and a certificate per `opts`, signed by `issuer`
 * (NULL: self-signed). Returns NULL on failure (also for an unknown key type). Free with
 * tt_certgen_free(). */
struct tt_certgen_cert *tt_certgen_new(const struct tt_certgen_opts *opts,
                                       const struct tt_certgen_cert *issuer);

/* A CA valid from an hour ago for ten years: a root when `issuer` is NULL, else an
 * intermediate signed by `issuer`. Returns NULL on failure. */
struct tt_certgen_cert *tt_certgen_ca(const char *cn, const struct tt_certgen_cert *issuer);

/* A leaf with one URI SAN `uri` (none when NULL) and the default validity, signed by
 * `issuer`. Returns NULL on failure. */
struct tt_certgen_cert *tt_certgen_leaf(const struct tt_certgen_cert *issuer, const char *uri);

/* A CRL signed by `issuer`, listing serials[0..n) (hexadecimal, as tt-certgen --serial
 * takes them), with thisUpdate and nextUpdate in seconds relative to now (next_update 0:
 * no nextUpdate). Returns malloc'ed PEM text, or NULL on failure (a serial that is not
 * hexadecimal included). */
char *tt_certgen_crl(const struct tt_certgen_cert *issuer, const char *const *serials, size_t n,
                     int64_t this_update, int64_t next_update);

/* Frees everything. Accepts NULL. */
void tt_certgen_free(struct tt_certgen_cert *c);

/* Writes PREFIX.crt (chain_pem) and PREFIX.key (key_pem, mode 0600). Returns 0 or
 * -errno. */
int tt_certgen_write(const struct tt_certgen_cert *c, const char *prefix);

/* Loads PREFIX.crt (first certificate is this one, the rest its chain) and PREFIX.key
 * as written by tt_certgen_write(), e.g. to issue more certificates from a CA. Returns
 * NULL on failure. */
struct tt_certgen_cert *tt_certgen_read(const char *prefix);

#endif
