/* The workload's identity: its certificate chain, private key, the trust bundle, and
 * the SSL_CTXs built from them. Immutable and refcounted: a snapshot that new
 * connections take a reference to; a reload builds a new one. BoringSSL lives in this
 * layer only; this header shows none of its types (identity_bssl.h has the parts that
 * need them, for tls.c, the control plane's CA and the test tools). */
#ifndef TT_IDENTITY_H
#define TT_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

struct tt_identity;

#define TT_SERIAL_MAX 130 /* upper-case hex without colons, NUL included */

/* What /certs and /stats show of one certificate. */
struct tt_cert_info {
    char spiffe_id[2049]; /* empty for CA certificates without a SPIFFE URI SAN */
    char serial[TT_SERIAL_MAX];
    char subject[256];
    char issuer[256];
    int64_t not_before; /* unix seconds */
    int64_t not_after;
};

/* Builds an identity from PEM text: `cert_pem` holds the leaf followed by any
 * intermediates, `key_pem` the private key (EC or RSA, PKCS#8 or traditional),
 * `bundle_pem` one or more trusted roots. Checks that the key matches the leaf, that
 * the leaf carries exactly one valid spiffe:// URI SAN and that the leaf chains to the
 * bundle (validity dates are not enforced here: an expired own certificate still loads,
 * and /stats reports it). Builds the server SSL_CTX (client certificate required,
 * verified by tls.c's verifier) and the client SSL_CTX. TLS 1.3 preferred, TLS 1.2 with
 * ECDHE-AEAD suites only; session tickets enabled. `source` names the input in errors
 * (for files: "cert FILE", ...). On error returns NULL and writes one line into err
 * naming the file and the problem. Returns an identity with one reference. */
struct tt_identity *tt_identity_from_pem(const char *cert_pem, size_t cert_len, const char *key_pem,
                                         size_t key_len, const char *bundle_pem, size_t bundle_len,
                                         const char *source, char *err, size_t errlen);

/* Reads the three PEM files and calls tt_identity_from_pem(); errors name the file. */
struct tt_identity *tt_identity_load(const char *cert_path, const char *key_path,
                                     const char *bundle_path, char *err, size_t errlen);

struct tt_identity *tt_identity_ref(struct tt_identity *id);
void tt_identity_unref(struct tt_identity *id); /* accepts NULL */

const char *tt_identity_spiffe_id(const struct tt_identity *id);
const struct tt_cert_info *tt_identity_leaf(const struct tt_identity *id);
size_t tt_identity_root_count(const struct tt_identity *id);
const struct tt_cert_info *tt_identity_root(const struct tt_identity *id, size_t i);

/* Builds an identity that holds only a trust bundle: no certificate, no key, no server
 * context; its client context presents nothing. For TT_TLS_CLIENT_ANONYMOUS sessions
 * (asking the control plane for a first certificate). tt_identity_leaf() is all zero.
 * Errors name `source`. Returns NULL with err set on failure. */
struct tt_identity *tt_identity_trust_only(const char *bundle_pem, size_t bundle_len,
                                           const char *source, char *err, size_t errlen);

/* Generates a new ECDSA P-256 private key in memory; *key_pem (PKCS#8 PEM, NUL-terminated,
 * caller frees after wiping it with OPENSSL_cleanse-like care) and *key_len. The key is
 * never written anywhere else. Returns 0 or <0. */
int tt_identity_keygen(char **key_pem, size_t *key_len);

/* Builds a PKCS#10 certificate request (DER) for `spiffe_id` (one URI SAN, empty subject),
 * signed by the key in key_pem. *der is allocated with malloc (the caller frees it). Returns 0,
 * TT_E_SPIFFE for an invalid ID, TT_E_PEM, or <0. */
int tt_identity_csr(const char *key_pem, size_t key_len, const char *spiffe_id, uint8_t **der,
                    size_t *der_len);

#endif
