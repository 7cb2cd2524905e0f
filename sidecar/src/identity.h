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

/* SSL_CTXs owned by the identity; valid while a reference is held. */
SSL_CTX *tt_identity_server_ctx(const struct tt_identity *id);
SSL_CTX *tt_identity_client_ctx(const struct tt_identity *id);

/* For tls.c's peer verifier; other modules have no use for these. The X509_STORE holding
 * the trust bundle, valid while a reference is held. */
X509_STORE *tt_identity_trust_store(const struct tt_identity *id);

/* tls.c's new-session callback, which identity.c installs on every client context so
 * that tickets reach the session's resumption slot (tls.h: tt_tls_set_resume). */
int tt_tls_on_new_session(SSL *ssl, SSL_SESSION *session);

/* Returns 1 when `serial` (formatted as tt_cert_info.serial) is in the identity's set of
 * revoked serial numbers, else 0. */
int tt_identity_revoked(const struct tt_identity *id, const char *serial);

/* Fills `info` from certificate `x`: the serial (upper-case hex, no colons, no leading
 * zeros), subject and issuer (RFC 2253 one-line DNs, truncated to fit), validity and
 * the SPIFFE ID (the first spiffe:// URI SAN, else ""). Returns 0 when `x` carries
 * exactly one URI SAN and it is a valid SPIFFE ID with a path, else TT_E_BAD_SAN (info
 * is filled either way), or -ENOMEM. */
int tt_cert_info_fill(struct tt_cert_info *info, X509 *x);

/* Builds an identity that holds only a trust bundle: no certificate, no key, no server
 * context; its client context presents nothing. For TT_TLS_CLIENT_ANONYMOUS sessions
 * (asking the control plane for a first certificate). tt_identity_leaf() is all zero.
 * Errors name `source`. Returns NULL with err set on failure. */
struct tt_identity *tt_identity_trust_only(const char *bundle_pem, size_t bundle_len,
                                           const char *source, char *err, size_t errlen);

/* Replaces the set of revoked serial numbers (upper-case hex, no colons, as
 * tt_serial_normalize() writes them) that handshakes verified with this identity refuse
 * with TT_E_REVOKED. Only for an identity not yet shared (one reference, before it is
 * published). Returns 0 or -ENOMEM (the old set stays). */
int tt_identity_set_revoked(struct tt_identity *id, const char *const *serials, size_t n);

/* PEM text of certificate `x`, or of private key `key` (PKCS#8; *len gets its length
 * when len is not NULL), as a malloc'ed NUL-terminated string the caller frees (wipe a
 * key's text first). The intermediate buffer is wiped. NULL on failure. Shared by the
 * sidecar, the control plane's CA and the test certificate generator. */
char *tt_pem_from_cert(X509 *x);
char *tt_pem_from_key(EVP_PKEY *key, size_t *len);

/* The one PEM reader of certificates and keys, shared by the sidecar, the control plane's
 * CA and the test tools; neither reads a file nor prompts for a password (an encrypted
 * key fails). tt_pem_parse_certs parses every certificate in pem[0..len) into a new
 * STACK_OF(X509) in *out that the caller frees with sk_X509_pop_free(.., X509_free); text
 * between and after the PEM blocks is ignored. Returns 0, TT_E_PEM for a block that does
 * not parse, TT_E_IDENTITY when there is no certificate at all, or -ENOMEM; *out is
 * untouched on failure. tt_pem_parse_key parses the first private key (EC or RSA, PKCS#8
 * or traditional) into *out, the caller's to EVP_PKEY_free. Returns 0, TT_E_IDENTITY when
 * there is none, TT_E_PEM when it does not parse, or -ENOMEM. */
struct stack_st_X509; /* STACK_OF(X509), without including <openssl/stack.h> here */
int tt_pem_parse_certs(const char *pem, size_t len, struct stack_st_X509 **out);
int tt_pem_parse_key(const char *pem, size_t len, EVP_PKEY **out);

/* Unix seconds of an ASN1_TIME (a certificate's notBefore or notAfter), computed without
 * the local clock or time zone. 0 when t is NULL or cannot be read. */
int64_t tt_asn1_time_unix(const ASN1_TIME *t);

/* Generates a new ECDSA P-256 private key in memory; *key_pem (PKCS#8 PEM, NUL-terminated,
 * caller frees after wiping it with OPENSSL_cleanse-like care) and *key_len. The key is
 * never written anywhere else. Returns 0 or <0. */
int tt_identity_keygen(char **key_pem, size_t *key_len);

/* Builds a PKCS#10 certificate request (DER) for `spiffe_id` (one URI SAN, empty subject),
 * signed by the key in key_pem. *der is allocated with OPENSSL_malloc (free with
 * OPENSSL_free). Returns 0, TT_E_SPIFFE for an invalid ID, TT_E_PEM, or <0. */
int tt_identity_csr(const char *key_pem, size_t key_len, const char *spiffe_id, uint8_t **der,
                    size_t *der_len);

#endif
