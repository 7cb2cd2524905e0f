/* The control plane's state (DESIGN.md "Control plane"): tokens, policy, revocations,
 * service entries and issued-certificate records, one JSON file per collection in the
 * state directory, each written atomically (temporary file, fsync, rename, fsync of the
 * directory). Tokens and issued certificates change on every Sign, so their changes are
 * instead appended to a journal, one fsync'd line each, and folded into their files when
 * the journal has grown to a few times the live records: creating or using a token costs
 * the same with 10,000 stored as with 10. The in-memory model sits behind one mutex: the
 * gRPC thread and the API loop may call any function here concurrently. Start-up refuses
 * a corrupt file with a message naming it and never overwrites it.
 *
 * A change that cannot be saved (a full disk) is not made: the function returns -errno,
 * the files keep what they held, and memory matches them.
 *
 * Files: tokens.json, policy.json (the document itself), revocations.json,
 * services.json, issued.json, state.json (the snapshot version and the bundle digest),
 * journal.log (token and issue records since tokens.json and issued.json were written).
 *
 * `version` counts changes to what sidecars receive (bundle, policy, services,
 * revocations); it only grows, survives restarts, and every bump calls the change
 * callback after the mutex is released. */
#ifndef CP_STORE_H
#define CP_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "store_file.h" /* cp_atomic_write, which every state file goes through */

#define CP_TOKEN_SECRET_MAX 64 /* base64url of 32 bytes is 43 characters */
/* A token's lifetime when its creator gives none (the API's default; 0 means none). */
#define CP_TOKEN_TTL_DEFAULT_MS (24ULL * 3600 * 1000)
/* The shortest token id prefix cp_store_token_delete takes (as git takes 4 digits). */
#define CP_TOKEN_ID_MIN 4
/* The file that token and issue changes are saved in, for callers' messages. */
#define CP_STORE_JOURNAL "journal.log"

/* Why a bootstrap token was refused. */
enum cp_token_err {
    CP_TOKEN_OK = 0,
    CP_TOKEN_UNKNOWN,  /* "unknown_token": no token with that secret */
    CP_TOKEN_EXPIRED,  /* "expired_token" */
    CP_TOKEN_USED_UP,  /* "token_used_up": no uses left */
    CP_TOKEN_MISMATCH, /* "identity_mismatch": issued for another SPIFFE ID */
};

/* The reason's name as above; "ok" for CP_TOKEN_OK. */
const char *cp_token_err_name(enum cp_token_err e);

struct cp_store;

/* Called after a change to what sidecars receive, with the new version, on the thread
 * that made the change, with no store lock held. */
typedef void (*cp_store_change_cb)(void *ud, uint64_t version);

/* Loads the state directory (created with mode 0700 if missing). Returns the store or
 * NULL with a message in err such as "DIR/tokens.json: line 3: ..." or "DIR/issued.json:
 * issued[2].serial: expected a string". Missing files are empty collections. */
struct cp_store *cp_store_open(const char *dir, char *err, size_t errlen);

/* Frees the store (no writes). Accepts NULL. */
void cp_store_free(struct cp_store *s);

const char *cp_store_dir(const struct cp_store *s);

/* Installs the change callback (NULL to remove). */
void cp_store_set_change_cb(struct cp_store *s, cp_store_change_cb cb, void *ud);

uint64_t cp_store_version(struct cp_store *s);

/* ---- trust bundle ---- */

/* Sets the bundle sidecars receive (PEM; the CA's roots). Bumps the version when it
 * differs from the one recorded in state.json. Returns 0 or -errno. */
int cp_store_bundle_set(struct cp_store *s, const char *pem);

/* A copy of the bundle PEM ("" when none was set; caller frees), NULL when out of memory. */
char *cp_store_bundle_get(struct cp_store *s);

/* ---- tokens ---- */

/* Creates a bootstrap token for spiffe_id (checked with tt_spiffe_check), valid for
 * ttl_ms (0: no expiry) and `uses` uses (0 is taken as 1). Writes the secret (base64url
 * of 32 random bytes, no padding) into secret[secret_len >= CP_TOKEN_SECRET_MAX]; it is
 * shown once and only its SHA-256 is stored. *expires_unix gets the expiry (0: none).
 * Returns 0, TT_E_SPIFFE, -EINVAL or -errno when persisting failed (nothing kept). */
int cp_store_token_create(struct cp_store *s, const char *spiffe_id, uint64_t ttl_ms, unsigned uses,
                          char *secret, size_t secret_len, int64_t *expires_unix);

/* Checks a presented secret (trailing whitespace ignored) for spiffe_id without using
 * it: Sign checks first, signs, then uses the token with cp_store_issued_add_token, so
 * a refused CSR costs no use. Returns 0 (*reason CP_TOKEN_OK) or TT_E_DENIED with
 * *reason set. */
int cp_store_token_check(struct cp_store *s, const char *secret, const char *spiffe_id,
                         enum cp_token_err *reason);

/* Checks a presented secret as cp_store_token_check and, when it is good, uses it once,
 * persisted (journal) before returning. Atomic against concurrent consumers. Returns 0
 * (*reason CP_TOKEN_OK), TT_E_DENIED with *reason set, or -errno when persisting failed
 * (the use is then not counted and the caller must refuse). */
int cp_store_token_consume(struct cp_store *s, const char *secret, const char *spiffe_id,
                           enum cp_token_err *reason);

/* Deletes the live token whose id (hex digits of its hash, as the listing shows them)
 * starts with `prefix` (CP_TOKEN_ID_MIN..64 hex digits, any case). Writes the token's
 * listed id into id_out[>= 13] on success. Returns 0, -EINVAL (not such a prefix),
 * -ENOENT (no live token matches), -EEXIST (more than one does; nothing deleted), or
 * -errno when persisting failed (nothing deleted). */
int cp_store_token_delete(struct cp_store *s, const char *prefix, char *id_out, size_t id_len);

/* The live tokens: [{"id" (first 12 hex digits of the hash), "spiffe_id", "uses_left",
 * "expires_unix" (null: never), "created_unix", "expired": false}]; no secrets. Used-up
 * and expired tokens are not listed (they are pruned). New reference. */
json_t *cp_store_tokens_json(struct cp_store *s);

/* Folds the journal into tokens.json and issued.json now (it also happens by itself as
 * the journal grows). Returns 0 or -errno (the journal is kept; nothing is lost). */
int cp_store_compact(struct cp_store *s);

/* ---- revocations ---- */

/* Revokes a serial (any form tt_serial_normalize accepts). Returns 0 when added, 1 when
 * it was already revoked, -EINVAL for a malformed serial, or -errno. Bumps the version. */
int cp_store_revoke(struct cp_store *s, const char *serial);

/* True when the serial (any accepted form) is revoked. */
bool cp_store_is_revoked(struct cp_store *s, const char *serial);

/* [{"serial", "revoked_unix"}]. New reference. */
json_t *cp_store_revocations_json(struct cp_store *s);

/* ---- service table ---- */

/* A service is an address and port workloads dial (a VIP such as a Kubernetes ClusterIP)
 * with endpoints, each an address and the SPIFFE ID that must answer there; a bare
 * endpoint is a service of one. Operator services are persisted (services.json; an
 * entry of the older form {"address", "spiffe_id", "source"} is a bare endpoint, and
 * registrations older versions saved there are dropped at load: sidecars register again
 * when they reconnect). Registrations are runtime only. Operator entries win: a
 * registration for an address an operator entry names (as a service or as an endpoint)
 * is kept but not pushed. */

#define CP_SOURCE_OPERATOR     "operator"
#define CP_SOURCE_REGISTRATION "registration"
#define CP_SOURCE_KUBERNETES   "kubernetes"
/* How long a registration outlives its Watch stream unless set otherwise. */
#define CP_REG_GRACE_DEFAULT_MS (60ULL * 1000)
/* The refusal counter (cp_store_stats_json "refusals") of refused registrations. */
#define CP_REFUSAL_REGISTRATION "registration_refused"

/* One endpoint as callers give it. */
struct cp_endpoint_spec {
    const char *address;
    const char *spiffe_id;
};

/* Adds or replaces the bare endpoint `address` -> spiffe_id from `source` (a service of
 * one). The address is checked with tt_addr_parse (its text kept as given) and the
 * identity with tt_spiffe_check. Returns 0, -EINVAL / -ENOENT (address), TT_E_SPIFFE, or
 * -errno; a message in err. Bumps the version on change. */
int cp_store_service_add(struct cp_store *s, const char *address, const char *spiffe_id,
                         const char *source, char *err, size_t errlen);

/* Adds or replaces the service `address` from `source` with endpoints eps[0..n) (n >= 1;
 * an endpoint listed twice must have one identity). Checked and persisted as
 * cp_store_service_add; err names the bad endpoint ("endpoints[1].address: ..."). */
int cp_store_service_set(struct cp_store *s, const char *address,
                         const struct cp_endpoint_spec *eps, size_t n, const char *source,
                         char *err, size_t errlen);

/* Adds (or changes the identity of) endpoint `ep` of service `address` from `source`,
 * creating the service when there is none. Adding to a bare endpoint's address makes it
 * a service whose first endpoint is the old bare one. Returns as cp_store_service_set. */
int cp_store_service_endpoint_add(struct cp_store *s, const char *address, const char *ep,
                                  const char *spiffe_id, const char *source, char *err,
                                  size_t errlen);

/* Removes endpoint `ep` from service `address` of `source`; the service goes with its
 * last endpoint. Returns 0, -ENOENT (no such service or endpoint), or -errno. */
int cp_store_service_endpoint_remove(struct cp_store *s, const char *address, const char *ep,
                                     const char *source);

/* Removes the service (or bare endpoint) `address` of `source` and persists the table.
 * Returns 0, -ENOENT when there is no such entry, or -errno when saving failed. */
int cp_store_service_remove(struct cp_store *s, const char *address, const char *source);

/* One service as the Kubernetes watcher gives it: the address workloads dial
 * (ClusterIP:port; for a headless Service an endpoint's own address, `bare`), the
 * endpoints that are ready, and the Service's "namespace/name" for listings. */
struct cp_service_spec {
    const char *address;
    const char *name;
    bool bare;
    const struct cp_endpoint_spec *eps;
    size_t n_eps;
};

/* Replaces every entry of source CP_SOURCE_KUBERNETES with svcs[0..n) as a whole set
 * (runtime only, never persisted). Addresses must be IP literals with a port and identities
 * valid SPIFFE IDs: an entry or endpoint that is not is left out (counted in *dropped when
 * not NULL). The version bumps, and sidecars are pushed, only when what they receive
 * changes (order does not matter). An operator entry for the same service address wins;
 * a registration for an address a Kubernetes entry names is kept but not pushed. Returns
 * 1 when what sidecars receive changed, 0 when not, or -errno (nothing changed). */
int cp_store_kubernetes_set(struct cp_store *s, const struct cp_service_spec *svcs, size_t n,
                            size_t *dropped);

/* How long a registration outlives its stream (default CP_REG_GRACE_DEFAULT_MS). */
void cp_store_set_registration_grace(struct cp_store *s, uint64_t ms);

/* The registrations' clock, in milliseconds (default tt_now_ms); tests inject one. */
void cp_store_set_clock(struct cp_store *s, uint64_t (*now_ms)(void *ud), void *ud);

/* Sidecar stream `holder` (as cp_store_sidecar_seen's id), whose certificate proves
 * spiffe_id and whose connection comes from `observed` ("IP:PORT" as the acceptor saw
 * it), registers addresses[0..n) as the endpoints it serves; this replaces what the
 * stream registered before. Each address must be an IP literal with a port; a wildcard
 * IP (0.0.0.0, ::) stands for the observed IP; any other IP than the observed one is
 * refused ("not_observed_ip"). An address another identity holds is refused
 * ("held_by_other") while that identity's stream is open; once that stream has ended
 * (grace or not) the claim replaces it, at once for a stream still open (its claims are
 * kept and tried again) or at its next Hello; the same identity takes its address back
 * seamlessly. Each
 * refusal counts CP_REFUSAL_REGISTRATION; the sidecar's record lists what it holds and
 * what was refused, with the reason. Returns the number of addresses refused, or -ENOMEM.
 * Bumps the version when what sidecars receive changes. */
int cp_store_registration_set(struct cp_store *s, const char *holder, const char *spiffe_id,
                              const char *observed, const char *const *addresses, size_t n);

/* Drops registrations whose stream ended more than the grace period ago. Returns how
 * many were dropped (the version is bumped when any was). */
size_t cp_store_registrations_expire(struct cp_store *s);

/* [{"address", "spiffe_id" (null for a service with endpoints), "source", "endpoints":
 * [{"address", "spiffe_id"}]}] operator services first, then Kubernetes ones (which add
 * "kubernetes": "namespace/name" and "shadowed": true when an operator entry has the same
 * address), then registrations, which add
 * "sidecar" (the stream), "state" ("live" or "grace"), "grace_left_ms" and "shadowed"
 * (true when an operator or Kubernetes entry covers the address). New reference. */
json_t *cp_store_services_json(struct cp_store *s);

/* ---- policy ---- */

/* Validates text with tt_policy_parse (source "policy") and, when valid, stores and
 * persists it and bumps the version. Returns 0, TT_E_POLICY with the parser's message
 * in err (nothing stored), or -errno. */
int cp_store_policy_set(struct cp_store *s, const char *text, size_t len, char *err, size_t errlen);

/* The current policy document as text (caller frees), or NULL when none was set. */
char *cp_store_policy_get(struct cp_store *s);

/* ---- issued certificates ---- */

/* How a certificate was issued, as its record says ("via"). */
#define CP_VIA_TOKEN      "token"      /* Identity.Sign with a bootstrap token */
#define CP_VIA_RENEWAL    "renewal"    /* Identity.Sign with the current certificate */
#define CP_VIA_ADMIN_CERT "admin-cert" /* POST /v1/admin-certs on the loopback API */
#define CP_VIA_K8S_JWT    "k8s-jwt"    /* Identity.Sign with a service-account token */

/* Records an issue made `via` one of the CP_VIA_* paths, persisted (journal) before
 * returning: a certificate whose record could not be saved must not be handed out.
 * Records expired for more than a day are pruned. Returns 0, -EINVAL for a malformed
 * serial or via, or -errno (nothing recorded). */
int cp_store_issued_add(struct cp_store *s, const char *serial, const char *spiffe_id,
                        int64_t not_after, int64_t issued_at, const char *via);

/* Revokes every unexpired certificate for a reserved identity (tt_spiffe_reserved()) that
 * was not issued through the authenticated admin-cert path: those the signing path issued
 * before it refused the reserved namespace, and records too old to say how they were
 * issued. Sets *n_revoked. Returns 0 or -errno (what was revoked before stays revoked). */
int cp_store_revoke_reserved(struct cp_store *s, size_t *n_revoked);

/* Records an issue (via CP_VIA_TOKEN) and uses the bootstrap token `secret` once, in one
 * journal record, so either both are saved or neither. The token is checked again here (another
 * Sign may have used it up since cp_store_token_check). Returns 0, TT_E_DENIED with *reason set
 * (nothing recorded: the certificate must not be handed out), -EINVAL for a malformed
 * serial, or -errno when persisting failed (nothing recorded, no use counted). */
int cp_store_issued_add_token(struct cp_store *s, const char *serial, const char *spiffe_id,
                              int64_t not_after, int64_t issued_at, const char *secret,
                              enum cp_token_err *reason);

/* [{"serial", "spiffe_id", "not_after", "issued_at", "revoked": bool}], without records
 * expired for more than a day. New ref. */
json_t *cp_store_issued_json(struct cp_store *s);

/* ---- what a sidecar receives ---- */

struct cp_service_entry {
    char *address;         /* the endpoint */
    char *spiffe_id;       /* the identity that must answer there */
    char *service_address; /* the service it belongs to; "" for a bare endpoint */
};

/* An immutable copy of everything a Discovery snapshot carries. */
struct cp_snapshot {
    uint64_t version;
    char *bundle_pem;                  /* "" when no bundle was set */
    char *policy_json;                 /* NULL when no policy was set */
    struct cp_service_entry *services; /* operator entries win over registrations */
    size_t n_services;
    char **revoked;             /* normalized serials */
    int64_t *revoked_not_after; /* [n_revoked]: each certificate's not-after; 0: unknown */
    size_t n_revoked;
};

/* Takes a consistent copy. NULL on allocation failure. */
struct cp_snapshot *cp_store_snapshot(struct cp_store *s);
void cp_snapshot_free(struct cp_snapshot *snap); /* accepts NULL */

/* ---- connected sidecars (runtime only) ---- */

/* A Watch stream is open (or still alive) for sidecar `id` (an opaque key the handler
 * chooses, unique per stream): records its identity, peer address and node name and
 * the time. Returns 0 or -ENOMEM. */
int cp_store_sidecar_seen(struct cp_store *s, const char *id, const char *spiffe_id,
                          const char *peer, const char *node);

/* The sidecar acknowledged `version`. */
void cp_store_sidecar_acked(struct cp_store *s, const char *id, uint64_t version);

/* The sidecar refused `version` with `reason`. */
void cp_store_sidecar_nacked(struct cp_store *s, const char *id, uint64_t version,
                             const char *reason);

/* The stream ended: its registrations start their grace period, and other streams'
 * claims refused because this one held the address take it (the version bumps). */
void cp_store_sidecar_gone(struct cp_store *s, const char *id);

/* [{"id", "spiffe_id", "peer", "node", "acked_version", "nacked_version",
 * "nack_reason", "last_seen_unix", "registered": [address], "refused": [{"address",
 * "reason", "detail"}]}]. New reference. */
json_t *cp_store_sidecars_json(struct cp_store *s);

/* ---- counters ---- */

/* Counts one refused Sign request by reason ("unknown_token", "identity_mismatch",
 * "revoked", ...). */
void cp_store_count_refusal(struct cp_store *s, const char *reason);

/* {"version", "issued", "tokens", "sidecars_connected", "services", "revocations",
 * "refusals": {reason: n}}. New reference. */
json_t *cp_store_stats_json(struct cp_store *s);

#endif
