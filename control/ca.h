/* The control plane's certificate authority (DESIGN.md "Control plane", "Certificates
 * and trust"): a root it creates on first start (ECDSA P-256, in the state directory,
 * key 0600) or a root or intermediate an operator gives it; it signs workload CSRs for
 * the one SPIFFE ID the caller was authorized for, issues the control plane's own serving
 * certificate, and hands out the trust bundle. BoringSSL only. After cp_ca_open() the CA
 * is immutable: signing may happen on any thread. */
#ifndef CP_CA_H
#define CP_CA_H

#include <stddef.h>
#include <stdint.h>

#include "core/errors.h"  /* the TT_E_CSR... codes it returns */
#include "core/spiffe.h"  /* TT_SPIFFE_RESERVED_NS */
#include "tls/identity.h" /* TT_SERIAL_MAX */

/* Why a CSR was refused, or signing failed: the project's error codes TT_E_CSR,
 * TT_E_CSR_SIGNATURE, TT_E_CSR_KEY, TT_E_CSR_SAN, TT_E_CSR_IDENTITY and TT_E_CA_INTERNAL
 * (errors.h; tt_strerror() describes them). Their reason names for logs and /stats:
 * "bad_csr", "bad_csr_signature", "weak_key", "bad_san", "identity_mismatch",
 * "internal"; "unknown" for any other code. Static strings. */
const char *cp_ca_err_reason(int err);

/* The answer to a request for a reserved identity (tt_spiffe_reserved()) on the workload
 * signing path: token creation, Identity.Sign and renewals all refuse them. */
#define CP_RESERVED_REFUSAL                                                                        \
    "spiffe_id: ns/" TT_SPIFFE_RESERVED_NS " is reserved for the control plane (its serving "      \
    "identity and the admin identities): no token or workload certificate is issued for it; "      \
    "admin certificates come only from `tetherctl admin-cert create` on the control host"

struct cp_ca;

struct cp_ca_opts {
    const char *state_dir;    /* where ca.crt and ca.key are created/kept */
    const char *trust_domain; /* e.g. "cluster.local" */
    /* Optional: use this CA instead of the state directory's. cert_file holds the CA
     * certificate (further certificates in it are taken as its chain), key_file its
     * private key, chain_file (optional) the issuers up to and including the root. A
     * root needs no chain; an intermediate's chain must end at a self-signed root. */
    const char *cert_file;
    const char *key_file;
    const char *chain_file;
    uint64_t max_ttl_ms; /* --cert-ttl: cap on every leaf's lifetime (0: 1 h) */
};

/* Opens the CA: with opts->cert_file, loads that CA (and checks the key matches and the
 * chain links up to a self-signed root); else loads STATE_DIR/ca.crt and ca.key if
 * both exist, or creates a new root there (ca.key mode 0600; the two files are created
 * together, cp_atomic_create_set, so a crash leaves no CA or both). A key without its
 * certificate, or one that does not match it, is an error naming both files.
 * Returns the CA, or NULL with a message naming the file and the problem in err. */
struct cp_ca *cp_ca_open(const struct cp_ca_opts *opts, char *err, size_t errlen);

/* Frees the CA. Accepts NULL. */
void cp_ca_free(struct cp_ca *ca);

/* An issued certificate. Heap strings owned by the struct; release with
 * cp_ca_cert_done(). */
struct cp_ca_cert {
    char *chain_pem;            /* the leaf, then the intermediates (no root) */
    char *key_pem;              /* only for cp_ca_issue_serving(): the new key, PKCS#8 PEM */
    char serial[TT_SERIAL_MAX]; /* upper-case hex, no colons, no leading zeros */
    int64_t not_before;         /* unix seconds */
    int64_t not_after;
};

void cp_ca_cert_done(struct cp_ca_cert *c);

/* Signs a CSR (DER PKCS#10, der[0..len)) for `spiffe_id`, the identity the caller's
 * proof supports. The CSR must verify under its own key, use EC P-256 or RSA >= 2048,
 * and carry exactly one SAN, a URI equal to spiffe_id. The leaf has that URI SAN only,
 * digitalSignature (plus keyEncipherment for RSA), serverAuth + clientAuth, CA:FALSE,
 * SKI/AKI, a random 128-bit serial, not_before now - 60 s, and not_after now +
 * min(ttl_ms or the cap, the cap) but never after the CA's own not_after. spiffe_id
 * must belong to the CA's trust domain (else TT_E_CSR_IDENTITY). Returns 0 and fills
 * *out, or a tt_err code of the CA (see cp_ca_err_reason) with a one-line reason in err. */
int cp_ca_sign_csr(struct cp_ca *ca, const uint8_t *der, size_t len, const char *spiffe_id,
                   uint64_t ttl_ms, struct cp_ca_cert *out, char *err, size_t errlen);

/* Issues the control plane's own serving certificate with a fresh P-256 key, valid for
 * ttl_ms (capped by the CA's not_after). Its subjectAltName holds the URI
 * spiffe://<td>/ns/tether-system/sa/tether-control (what sidecars check), then
 * names[0..n_names) as DNS names, or IP addresses for those that are IPv4/IPv6 literals
 * (what a standard TLS client such as gRPC's checks; each must pass
 * cp_ca_check_serving_name). Returns 0 and fills *out (key_pem set) or TT_E_CA_INTERNAL. */
int cp_ca_issue_serving(struct cp_ca *ca, uint64_t ttl_ms, const char *const *names, size_t n_names,
                        struct cp_ca_cert *out, char *err, size_t errlen);

/* Whether `name` may be a serving-certificate name: an IPv4 or IPv6 literal (no brackets),
 * or a host name of letters, digits and hyphens in dot-separated labels (RFC 1123; no
 * wildcard, no trailing dot, at most 253 bytes). Returns 0 or -EINVAL. Pure. */
int cp_ca_check_serving_name(const char *name);

/* One revoked certificate for cp_ca_crl(): its serial (any form tt_serial_normalize
 * accepts) and when it was revoked (unix seconds). */
struct cp_ca_revoked {
    const char *serial;
    int64_t revoked_unix;
};

/* How long a CRL from cp_ca_crl() is valid: nextUpdate = thisUpdate + this. Whoever
 * consumes it (nginx ssl_crl, HAProxy crl-file) must fetch a new one before then, or
 * refuses every client of this CA ("CRL has expired"). */
#define CP_CA_CRL_VALIDITY_S (24 * 3600)

/* Signs a CRL (RFC 5280 §5, version 2) listing revoked[0..n), issued by the CA's signing
 * certificate (the root, or the intermediate given with --ca-cert): thisUpdate now,
 * nextUpdate now + CP_CA_CRL_VALIDITY_S, a CRL number (thisUpdate in unix seconds, so it
 * grows) and the authority key identifier. *pem (NUL-terminated) and *der are malloc'ed,
 * the caller frees them; either pointer may be NULL when that form is not wanted. Returns
 * 0, or TT_E_CA_INTERNAL with a reason in err (a serial that does not parse included). */
int cp_ca_crl(struct cp_ca *ca, const struct cp_ca_revoked *revoked, size_t n, char **pem,
              uint8_t **der, size_t *der_len, char *err, size_t errlen);

/* The serving identity for `trust_domain` written into buf. */
void cp_ca_serving_id(const char *trust_domain, char *buf, size_t len);

/* The trust bundle: the root(s) as PEM. Valid while the CA lives. */
const char *cp_ca_bundle_pem(const struct cp_ca *ca);

/* The CA certificate (root or intermediate) as PEM. Valid while the CA lives. */
const char *cp_ca_cert_pem(const struct cp_ca *ca);

const char *cp_ca_trust_domain(const struct cp_ca *ca);
uint64_t cp_ca_max_ttl_ms(const struct cp_ca *ca);

#endif
