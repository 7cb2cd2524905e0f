/* The control plane's sidecar API (DESIGN.md "Control plane"): gRPC over our own mutual
 * TLS on --listen-sidecars (15012). Identity.Sign issues a certificate for the identity
 * that the caller's proof supports (a bootstrap token, a Kubernetes service-account token
 * verified with the --jwks keys (jwt.h), or the caller's current valid, unrevoked
 * certificate on this connection); Discovery.Watch pushes versioned snapshots
 * (trust bundle, policy, service table, revocations) and records each sidecar's ACK or
 * NACK. Connections come through a cp_tls_acceptor (tls_acceptor.h: TLS on one event-loop
 * thread, with handshake and first-call deadlines and bounds on connections per source
 * and in all; ALPN h2); a call that succeeds (a certificate signed, a Watch opened) marks
 * its connection as called. The gRPC completion queue has its own thread. */
#ifndef CP_SIDECAR_API_H
#define CP_SIDECAR_API_H

#include <stddef.h>
#include <stdint.h>

struct cp_ca;
struct cp_jwks_file;
struct cp_store;
struct tt_addr;
struct tt_identity;
struct cp_sidecar_api;

struct cp_sidecar_api_opts {
    const struct tt_addr *listen; /* port 0 picks one: see cp_sidecar_api_port() */
    struct cp_ca *ca;
    struct cp_store *store;
    uint64_t cert_ttl_ms; /* lifetime of the certificates it issues */
    /* DNS names and IP literals the serving certificate carries besides its SPIFFE ID
     * (cp_ca_issue_serving; copied). */
    const char *const *serving_names;
    size_t n_serving_names;
    /* The transport's bounds (tls_acceptor.h; 0: its defaults, no first-call deadline). */
    uint64_t handshake_ms, first_call_ms;
    unsigned max_conns, max_per_source;
    /* Kubernetes service-account tokens (jwt.h): accepted when jwks is set (it must
     * outlive the API), for jwt_audience (required then) and, when set, jwt_issuer; they
     * map into trust_domain. Strings are copied. */
    struct cp_jwks_file *jwks;
    const char *jwt_audience, *jwt_issuer;
    const char *trust_domain;
};

/* Binds the address, issues the serving certificate and starts serving. The CA and the
 * store must outlive the API. Returns NULL with one line in err on failure. */
struct cp_sidecar_api *cp_sidecar_api_new(const struct cp_sidecar_api_opts *opts, char *err,
                                          size_t errlen);

/* The port actually bound. */
int cp_sidecar_api_port(const struct cp_sidecar_api *api);

/* A reference to the control plane's current serving identity
 * (spiffe://<td>/ns/tether-system/sa/tether-control), re-issued once half of its lifetime
 * has passed: other listeners (the operator API off loopback) present the same
 * certificate. The caller unrefs it. Returns NULL with one line in err on failure. Any
 * thread. */
struct tt_identity *cp_sidecar_api_serving_identity(struct cp_sidecar_api *api, char *err,
                                                    size_t errlen);

/* Pushes the store's current snapshot to every watching sidecar, and cuts the
 * connections whose certificate is now revoked. Any thread (the store's change
 * callback). */
void cp_sidecar_api_push(struct cp_sidecar_api *api);

/* Stops accepting, ends every stream and connection and frees the API. Accepts NULL. */
void cp_sidecar_api_free(struct cp_sidecar_api *api);

#endif
