/* The workload's identity: its certificate chain, private key, the trust bundle, and
 * the SSL_CTXs built from them. Immutable and refcounted: a snapshot that new
 * connections take a reference to; a reload builds a new one. BoringSSL lives here and
 * in tls.c only. */
#ifndef TT_IDENTITY_H
#define TT_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>

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
struct tt_identity *tt_identity_from_pem(const char *cert_pem, size_t cert_len,
                                         const char *key_pem, size_t key_len,
                                         const char *bundle_pem, size_t bundle_len,
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

/* SSL_CTXs owned by the identity; valid while a reference is held. */
SSL_CTX *tt_identity_server_ctx(const struct tt_identity *id);
SSL_CTX *tt_identity_client_ctx(const struct tt_identity *id);

/* For tls.c's peer verifier; other modules have no use for these. The X509_STORE holding
 * the trust bundle, valid while a reference is held. */
X509_STORE *tt_identity_trust_store(const struct tt_identity *id);

/* Returns 1 when `serial` (formatted as tt_cert_info.serial) is in the identity's set of
 * revoked serial numbers, else 0. */
int tt_identity_revoked(const struct tt_identity *id, const char *serial);

/* Fills `info` from certificate `x`: the serial (upper-case hex, no colons, no leading
 * zeros), subject and issuer (RFC 2253 one-line DNs, truncated to fit), validity and
 * the SPIFFE ID (the first spiffe:// URI SAN, else ""). Returns 0 when `x` carries
 * exactly one URI SAN and it is a valid SPIFFE ID with a path, else TT_E_BAD_SAN (info
 * is filled either way), or -ENOMEM. */
int tt_cert_info_fill(struct tt_cert_info *info, X509 *x);

#endif
