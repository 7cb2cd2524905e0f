/* The parts of the identity module that speak BoringSSL types: its SSL_CTXs and trust
 * store for tls.c, and certificate/key helpers for the control plane's CA and the test
 * certificate generator. Only the tls/ layer and those BoringSSL owners (DESIGN.md
 * "Parts and layout") include this header; everyone else uses identity.h. */
#ifndef TT_IDENTITY_BSSL_H
#define TT_IDENTITY_BSSL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/base.h>
#include <openssl/x509.h>

struct tt_cert_info;
struct tt_identity;

/* SSL_CTXs owned by the identity; valid while a reference is held. */
SSL_CTX *tt_identity_server_ctx(const struct tt_identity *id);
SSL_CTX *tt_identity_client_ctx(const struct tt_identity *id);

/* For tls.c's peer verifier; other modules have no use for these. The X509_STORE holding
 * the trust bundle, valid while a reference is held. */
X509_STORE *tt_identity_trust_store(const struct tt_identity *id);

/* tls.c's new-session callback, which identity.c installs on every client context so
 * that tickets reach the session's resumption slot (tls.h: tt_tls_set_resume). */
int tt_tls_on_new_session(SSL *ssl, SSL_SESSION *session);

/* tls.c's ALPN selection, which identity.c installs on every server context: it selects
 * the protocol a session was given with tt_tls_set_alpn() and ignores ALPN otherwise. */
int tt_tls_on_alpn_select(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in,
                          unsigned inlen, void *arg);

/* Fills `info` from certificate `x`: the serial (upper-case hex, no colons, no leading
 * zeros), subject and issuer (RFC 2253 one-line DNs, truncated to fit), validity and
 * the SPIFFE ID (the first spiffe:// URI SAN, else ""). Returns 0 when `x` carries
 * exactly one URI SAN and it is a valid SPIFFE ID with a path, else TT_E_BAD_SAN (info
 * is filled either way), or -ENOMEM. */
int tt_cert_info_fill(struct tt_cert_info *info, X509 *x);

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
int tt_pem_parse_certs(const char *pem, size_t len, STACK_OF(X509) * *out);
int tt_pem_parse_key(const char *pem, size_t len, EVP_PKEY **out);

/* A serial number as Tether prints it (`openssl x509 -serial`: upper-case hex, no colons,
 * no leading zeros) into out[0..cap), and a name as a one-line RFC 2253 DN (truncated to
 * fit; returns 0 or -ENOMEM). The formats of tt_cert_info, shared with the CRL module. */
void tt_serial_format(const ASN1_INTEGER *serial, char *out, size_t cap);
int tt_name_format(const X509_NAME *name, char *out, size_t cap);

/* Unix seconds of an ASN1_TIME (a certificate's notBefore or notAfter), computed without
 * the local clock or time zone. 0 when t is NULL or cannot be read. */
int64_t tt_asn1_time_unix(const ASN1_TIME *t);

#endif
