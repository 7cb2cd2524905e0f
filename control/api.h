/* The operator API (DESIGN.md "Control plane"): HTTP/1.1 + JSON on --listen-api
 * (default 127.0.0.1:15014), served by the shared HTTP core (sidecar/src/httpd.h) on a
 * libuv loop.
 *
 *   GET  /v1/policy                  the document as stored (404 when none)
 *   PUT  /v1/policy                  validated by the sidecar's parser; 400 {"error"}
 *   POST /v1/tokens                  {"spiffe_id", "ttl"?: "1h", "uses"?: 1} -> 201
 *                                    {"token", "spiffe_id", "expires_unix", "uses"};
 *                                    ttl defaults to 24h, "0" means no expiry
 *   GET  /v1/tokens                  {"tokens": [...]} the live ones (never the secrets;
 *                                    used-up and expired tokens are pruned)
 *   DELETE /v1/tokens?id=ID          200 {"deleted": id}: the live token whose id (as
 *                                    listed) starts with ID (4..64 hex digits); 404 none,
 *                                    409 ambiguous (nothing deleted), 400 malformed
 *   GET  /v1/identities              {"identities": [...]} issued certificates
 *   POST /v1/revocations             {"serial"} -> 201 (200 when already revoked)
 *   GET  /v1/revocations             {"revocations": [...]}
 *   POST /v1/services                {"address", "spiffe_id"}: one endpoint at address;
 *                                    or {"address", "endpoints": [{"address",
 *                                    "spiffe_id"}, ...]} (1..CP_API_MAX_ENDPOINTS): a
 *                                    service (VIP) with those endpoints -> 201
 *   DELETE /v1/services?address=A    200, or 404; 400 when address is missing, given twice
 *                                    or holds a malformed %-escape (query.h)
 *   POST /v1/services/endpoints      {"service", "address", "spiffe_id"} -> 201: adds an
 *                                    endpoint (the service is created when missing)
 *   DELETE /v1/services/endpoints?service=S&address=A  200, or 404
 *   GET  /v1/services                {"services": [...]} operator entries and
 *                                    registrations, each with "source" and "endpoints"
 *   GET  /v1/bundle                  the roots, PEM, text/plain
 *   GET  /v1/crl[?format=der]        the revocations as a CRL signed by the CA (valid 24 h,
 *                                    CP_CA_CRL_VALIDITY_S), PEM text/plain, or DER
 *                                    application/pkix-crl; open like the bundle
 *   GET  /v1/sidecars                {"sidecars": [...]}, each with "registered" (the
 *                                    endpoints its registration holds) and "refused"
 *                                    ([{"address", "reason", "detail"}])
 *   POST /v1/admin-certs             {"csr": base64 DER PKCS#10, "spiffe_id"?: an admin
 *                                    identity (default the first), "ttl"?} -> 201
 *                                    {"spiffe_id", "serial", "not_after_unix",
 *                                    "cert_chain_pem", "bundle_pem"}; loopback API only
 *                                    (403 over mTLS): bootstraps remote admin access
 *   GET  /stats                      counters: refusals by reason, issued, sidecars...
 *
 * Bodies are JSON: a POST or PUT (or any request with a body) must say
 * `Content-Type: application/json` (parameters such as charset allowed), else 415.
 * A body may be at most CP_API_BODY_MAX, 64 KiB, else 413.
 *
 * Errors are {"error": "..."}, the server's own refusals (400, 413, 414, 431) included,
 * with 400 (bad input; unknown JSON keys are named), 401 (plaintext without the operator
 * credential, with WWW-Authenticate: Bearer), 403 (mTLS without an admin identity: the
 * message names the peer's identity), 404, 405 (with Allow), 409, 413 (bodies over
 * 64 KiB), 415, 500, 503 (no CA; or a change that could not be saved, e.g. on a full
 * disk: "saving journal.log: No space left on device (nothing was changed)").
 *
 * Authentication. On a loopback address every request except GET /v1/bundle and GET
 * /v1/crl carries the operator credential (operator_token.h): loopback alone proves
 * nothing, since every local user can connect there. Any other
 * address needs mutual TLS with an admin identity, and TLS termination is NOT done
 * here: tether-control's main terminates mTLS (a cp_tls_acceptor, tls_acceptor.h) and
 * hands each plaintext connection to cp_api_adopt_fd() with the client's verified
 * SPIFFE ID on the loop thread; the API then answers only when cp_api_admin_allowed()
 * says yes. cp_api_new() refuses a non-loopback address unless the caller declares
 * that bridge wired (opts->mtls), so the API is never exposed in plaintext by
 * accident. */
#ifndef CP_API_H
#define CP_API_H

#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "ca.h"
#include "store.h"
#include "core/util.h"

#define CP_API_BODY_MAX      (64 * 1024) /* request bodies; more is answered 413 */
#define CP_API_MAX_ADMINS    8
#define CP_API_MAX_ENDPOINTS 256 /* endpoints in one POST /v1/services */

struct cp_api;

struct cp_api_opts {
    const char *listen; /* "ADDR:PORT" as given (for messages and the loopback check) */
    /* true: mTLS termination is wired by the caller. The API then does not listen
     * itself; connections arrive through cp_api_adopt_fd() and each needs an admin
     * identity. false: listen on `listen` in plaintext, loopback only. */
    bool mtls;
    /* Plaintext only, required there: the operator credential every request but GET
     * /v1/bundle and GET /v1/crl must carry as "Authorization: Bearer" (operator_token.h);
     * copied. */
    const char *operator_token;
    /* SPIFFE IDs allowed to administer over mTLS; none given:
     * spiffe://<trust domain>/ns/tether-system/sa/tether-admin. */
    const char *admin_ids[CP_API_MAX_ADMINS];
    size_t n_admin_ids;
    /* Optional: more of GET /stats, called on the loop's thread; each key of the object
     * it returns (a new reference, or NULL) is added to the document. */
    json_t *(*stats_extra)(void *ud);
    void *stats_ud;
};

/* Starts the API on loop over `store` and `ca` (both outlive the API; ca may be NULL,
 * then /v1/bundle answers 503). Returns the API or NULL with err set, e.g.
 * "--listen-api 0.0.0.0:15014: non-loopback addresses need mTLS (not yet wired)" or
 * "--listen-api 127.0.0.1:15014: address already in use". */
struct cp_api *cp_api_new(uv_loop_t *loop, const struct cp_api_opts *opts, struct cp_store *store,
                          struct cp_ca *ca, char *err, size_t errlen);

/* Serves one connection whose mTLS the caller terminated: fd is the plaintext side
 * (e.g. a socketpair end), peer_spiffe_id the client's verified identity (NULL when it
 * presented none). Takes ownership of fd. Returns 0 or -errno. On the loop's thread
 * only (a bridge on another thread hands the fd over with a uv_async_t). */
int cp_api_adopt_fd(struct cp_api *api, int fd, const char *peer_spiffe_id);

/* True when peer_spiffe_id is one of the API's admin identities. Pure. */
bool cp_api_admin_allowed(const struct cp_api *api, const char *peer_spiffe_id);

/* True when addr is a loopback address (127.0.0.0/8, ::1, ::ffff:127.x). */
bool cp_api_addr_is_loopback(const struct tt_addr *addr);

/* The bound port (0 with mtls). */
int cp_api_port(const struct cp_api *api);

/* Stops serving; memory is released once the loop runs the close callbacks. Accepts
 * NULL. */
void cp_api_close(struct cp_api *api);

#endif
