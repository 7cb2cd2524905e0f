/* Rendering of /stats (JSON and Prometheus text), /certs and /policy from a consistent
 * view of the sidecar's state. Pure functions over the view: no I/O. */
#ifndef TT_STATS_H
#define TT_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "net/listener-t.h"
#include "metrics/metrics.h"

struct tt_identity;
struct tt_crls;
struct tt_cp_status;
struct tt_policy;
struct tt_balancer;

/* Transparent mode's capture check (the readiness probe's latest result). */
struct tt_capture_status {
    bool ready;           /* both directions captured at the last check */
    const char *outbound; /* "ok", "failed" or "unchecked" */
    const char *inbound;
    int64_t checked_unix; /* 0: not yet */
};

/* What the admin endpoint renders; filled by the sidecar runtime for one request. */
struct tt_stats_view {
    const struct tt_listener_cfg *listeners; /* n_listeners, same order as the counters */
    size_t n_listeners;
    struct tt_metrics *const *workers;
    size_t n_workers;
    const struct tt_identity *identity; /* current snapshot's identity */
    const struct tt_policy *policy;     /* NULL when no policy is configured */
    int64_t started_unix;               /* process start */
    int64_t snapshot_unix;              /* when the current snapshot was built */
    uint64_t snapshot_generation;       /* 1 at start, +1 per successful reload */
    uint64_t reloads_failed;            /* reloads refused (bad new files) */
    bool ready;                         /* what /ready answers */
    bool draining;                      /* SIGTERM received */
    uint64_t max_connections;           /* admitted at once: the workers' shares summed */
    uint64_t open_files_limit;          /* soft RLIMIT_NOFILE; UINT64_MAX: none */
    const char *control_state;          /* "none" in explicit mode without control */
    uint64_t rotations;                 /* leaf certificate changes since start */
    uint64_t buffer_slabs_allocated;    /* core/buf.h: tt_buf_pool_stats */
    uint64_t buffer_oversize_allocations;
    const struct tt_cp_status *control;           /* control mode: the client's status, else NULL */
    const struct tt_crls *crls;                   /* the snapshot's CRLs (--crl), NULL for none */
    const struct tt_transparent_cfg *transparent; /* transparent mode, else NULL */
    struct tt_balancer *const *balancers;         /* n_workers, transparent mode */
    const struct tt_capture_status *capture;      /* transparent mode, else NULL */
};

/* Builds the /stats document: {"server":{..., max_connections, open_files_limit},
 * "identity":{spiffe_id, serial,
 * not_before, not_after, seconds_to_expiry, rotations, control_plane},
 * "listeners":[{name, kind, listen, target, accepted, active, refused_limit, bytes_in,
 * bytes_out, handshakes, handshake_failures:{no_cert:..,...}, upstream_connect_failures,
 * allowed, denied, latency:{handshake_us, connect_us, duration_us}, accept_failures,
 * refused_fd_shortage, requests:{...}, pool:{connections, streams_active, streams_total,
 * streams_refused, connections_recycled, fallback_direct, requests_retried}}],
 * "handshake_failures":{reason: total}, "policy":{version, default, allowed, denied,
 * rules:[{name, action, mode, hits, audit_would_deny}]}, "peers":[{spiffe_id,
 * connections, denied, bytes_in, bytes_out}], "recent_handshake_failures":[{time,
 * listener, peer_addr, spiffe_id, serial, issuer, reason}], "crls":[{source, issuer,
 * this_update, next_update, revoked, expired}], "warnings":["..."]} (warnings: one line
 * per CRL past its nextUpdate). Returns a new reference or NULL when out of memory. */
json_t *tt_stats_json(const struct tt_stats_view *view);

/* Renders the same figures in Prometheus text exposition format (metric names prefixed
 * "tether_"). Returns a malloc'ed NUL-terminated string (caller frees) or NULL. */
char *tt_stats_prometheus(const struct tt_stats_view *view);

/* The /certs document: the leaf (spiffe_id, serial, subject, issuer, not_before,
 * not_after, seconds_to_expiry) and the trust bundle's roots. */
json_t *tt_stats_certs_json(const struct tt_identity *identity);

#endif
