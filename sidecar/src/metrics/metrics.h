/* Counters, one set per worker thread, each written by its worker only and summed when
 * /stats is read (DESIGN.md "Threads"). Plain counters use single-writer relaxed
 * atomics (no lock prefix on the hot path); the string-keyed parts (per-peer counters,
 * recent handshake failures, per-rule policy counters) sit behind a per-worker mutex
 * that the worker takes only to add an entry and /stats takes to read. Per-rule counters
 * are keyed by rule name, outside the policy, so they survive every push that keeps the
 * rule. This is the one place where a metric is counted. */
#ifndef TT_METRICS_H
#define TT_METRICS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/h1.h" /* enum tt_h1_reason: metrics is above http in the layer order */
#include "tls/identity.h"

struct tt_policy;
struct tt_policy_verdict;

enum tt_hs_reason {
    TT_HS_NO_CERT,
    TT_HS_UNKNOWN_CA,
    TT_HS_EXPIRED,
    TT_HS_NOT_YET_VALID,
    TT_HS_BAD_SAN,
    TT_HS_WRONG_IDENTITY,
    TT_HS_REVOKED,
    TT_HS_TIMEOUT,
    TT_HS_PROTOCOL,
    TT_HS_BAD_USAGE, /* leaf not fit for its TLS role (key usage, extended key usage) */
    TT_HS__COUNT,
};

/* "no_cert", "unknown_ca", ... as /stats spells them. */
const char *tt_hs_reason_name(enum tt_hs_reason reason);

/* Maps a tt_tls_handshake() error to its reason (anything unknown is TT_HS_PROTOCOL). */
enum tt_hs_reason tt_hs_reason_from_err(int err);

/* Single-writer increment: a relaxed load and store, atomic for readers. */
#define TT_COUNTER_ADD(c, n)                                                                       \
    __atomic_store_n(&(c), __atomic_load_n(&(c), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define TT_COUNTER_GET(c) __atomic_load_n(&(c), __ATOMIC_RELAXED)

/* Upper bounds of the latency buckets in microseconds; the last bucket is +Inf. */
#define TT_HIST_BUCKETS 17
extern const uint64_t tt_hist_bounds_us[TT_HIST_BUCKETS - 1];

struct tt_hist {
    uint64_t buckets[TT_HIST_BUCKETS];
    uint64_t count;
    uint64_t sum_us;
};

/* HTTP request methods counted on their own; every other method is TT_REQ_OTHER, so a
 * client cannot grow the metrics by inventing methods. */
enum tt_req_method {
    TT_REQ_GET,
    TT_REQ_HEAD,
    TT_REQ_POST,
    TT_REQ_PUT,
    TT_REQ_DELETE,
    TT_REQ_PATCH,
    TT_REQ_OPTIONS,
    TT_REQ_CONNECT,
    TT_REQ_OTHER,
    TT_REQ_METHOD__COUNT,
};

/* The method named exactly (case-sensitive, RFC 9110 §9.1) by `method`; TT_REQ_OTHER for
 * anything else, NULL included. */
enum tt_req_method tt_req_method_of(const char *method);

/* "GET", "HEAD", ..., "CONNECT", and "other" (also for an out-of-range value). */
const char *tt_req_method_name(enum tt_req_method m);

/* Status classes: index 0 is "none" (no response was sent: reset, timeout, closed),
 * 1..5 are 1xx..5xx. */
#define TT_REQ_STATUS_CLASSES 6

/* The class of a status sent to a client: status / 100 for 100..599, 0 ("none") for 0 and
 * for anything outside 100..599 (not a status a response can carry). */
int tt_req_status_class(int status);

/* "none", "1xx", ..., "5xx" for classes 0..5; "none" for an out-of-range class. */
const char *tt_req_status_class_name(int cls);

/* Per listener, per worker: requests seen by the HTTP-aware data path. Made of uint64_t
 * only, like tt_listener_counters that holds it. */
struct tt_request_counters {
    uint64_t by_method_status[TT_REQ_METHOD__COUNT][TT_REQ_STATUS_CLASSES];
    uint64_t request_bytes;           /* request bodies, bytes */
    uint64_t response_bytes;          /* response bodies+heads as relayed, bytes */
    uint64_t denied;                  /* answered 403 by policy (also in by_method_status as 4xx) */
    uint64_t refused[TT_H1_R__COUNT]; /* malformed requests refused (400/431), by reason (also in
                                         by_method_status, as method "other", 4xx) */
    struct tt_hist latency_us;        /* request head received -> response complete */
};

/* Per listener, per worker: the pool of HTTP/2 connections between sidecars (net/pool.h,
 * net/link.h). Gauges are kept as opened/closed pairs so that workers' counters add up.
 * Outbound listeners count the links they dial and the tunnels their app connections
 * ride; inbound listeners count the links they accept and the tunnels carried on them. */
struct tt_pool_counters {
    uint64_t links_opened;     /* mTLS connections that became pool links */
    uint64_t links_closed;     /* of which closed (open now = opened - closed) */
    uint64_t streams_opened;   /* tunnel streams (app connections) carried */
    uint64_t streams_closed;   /* of which over (in flight = opened - closed) */
    uint64_t streams_refused;  /* refused by the peer (REFUSED_STREAM, GOAWAY, 4xx/5xx) */
    uint64_t links_recycled;   /* links retired because the identity rotated */
    uint64_t fallback_direct;  /* outbound: app connections sent direct because the
                                  peer did not select the tether-h2 ALPN token */
    uint64_t requests_retried; /* outbound: HTTP/1.x requests sent again on another stream
                                  (refused, or an idempotent one whose link was lost) */
    uint64_t workload_opened;  /* inbound: TCP connections to the workload that request
                                  streams opened (net/conn.c) */
    uint64_t workload_reused;  /* inbound: request streams that took a kept one instead
                                  (net/idleconns.h) */
};

/* Per listener, per worker. */
struct tt_listener_counters {
    uint64_t accepted;           /* connections accepted */
    uint64_t closed;             /* connections finished (active = accepted - closed) */
    uint64_t refused_limit;      /* closed at once: --max-connections reached */
    uint64_t bytes_in;           /* bytes received from the downstream client */
    uint64_t bytes_out;          /* bytes sent to the downstream client */
    uint64_t handshakes;         /* TLS handshakes completed */
    uint64_t handshakes_resumed; /* of which resumed a session (ticket) */
    uint64_t hs_failures[TT_HS__COUNT];
    uint64_t upstream_connect_failures;
    uint64_t allowed;            /* inbound: policy allowed */
    uint64_t denied;             /* inbound: policy denied */
    struct tt_hist handshake_us; /* TLS handshake duration */
    struct tt_hist connect_us;   /* upstream TCP connect duration */
    struct tt_hist duration_us;  /* whole connection lifetime */

    /* Descriptor shortages (net/acceptor.h). */
    uint64_t accept_failures;     /* accept(2) failed: no descriptor (EMFILE, ENFILE) or memory */
    uint64_t refused_fd_shortage; /* accepted on the reserved descriptor and reset meanwhile */

    /* Transparent mode (15001, 15006). */
    uint64_t not_redirected;    /* dialled the capture port directly, or no original dst: refused */
    uint64_t passthrough;       /* outbound to a destination outside the mesh, relayed plaintext */
    uint64_t unknown_denied;    /* outbound to a destination outside the mesh, refused */
    uint64_t plaintext;         /* inbound, permissive: callers without TLS let in */
    uint64_t endpoint_retries;  /* outbound: a failed connect retried on another endpoint */
    uint64_t refusals_answered; /* outbound: an HTTP/1.x app told why (403/503), not reset */
    uint64_t canary;            /* readiness probe connections answered */

    /* HTTP-aware data path (Tether issue 10). */
    struct tt_request_counters requests;
    struct tt_pool_counters pool;
};

#define TT_METRICS_PEERS    256 /* distinct peer identities tracked per worker */
#define TT_METRICS_FAILURES 32  /* recent handshake failures kept per worker */
#define TT_METRICS_DESTS    256 /* distinct destinations (or ports) counted per worker */

/* What happened to a connection for a destination outside the mesh, or on a port. */
enum tt_dest_event {
    TT_DEST_PASSTHROUGH, /* outbound, relayed plaintext: keyed by IP:PORT */
    TT_DEST_DENIED,      /* outbound, refused (--outbound-unknown deny): keyed by IP:PORT */
    TT_DEST_PLAINTEXT,   /* inbound, plaintext caller (permissive): keyed by port */
    TT_DEST__COUNT,
};

struct tt_dest_counters {
    char key[64]; /* "10.0.0.9:80" or "8080"; "other" once the table is full */
    uint64_t counts[TT_DEST__COUNT];
};

struct tt_peer_counters {
    char id[256]; /* SPIFFE ID, truncated; "" marks a free slot; "other" overflow */
    uint64_t connections;
    uint64_t denied;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t requests;                                  /* HTTP requests (tt_metrics_request*) */
    uint64_t requests_by_status[TT_REQ_STATUS_CLASSES]; /* of which by status class */
};

struct tt_hs_failure {
    int64_t unix_ms;
    int listener;
    enum tt_hs_reason reason;
    char peer_addr[64];
    char spiffe_id[256];
    char serial[TT_SERIAL_MAX];
    char issuer[256];
};

/* One policy rule's counters on one worker. */
struct tt_rule_counters {
    uint64_t hits;             /* matched: decided, or observed by an audit rule */
    uint64_t audit_would_deny; /* an audit deny rule: times it would have refused */
    char name[];
};

struct tt_metrics {
    size_t n_listeners;
    struct tt_listener_counters *listeners;
    pthread_mutex_t lock; /* guards peers, failures and the rules table's shape */
    struct tt_peer_counters peers[TT_METRICS_PEERS];
    size_t n_peers;
    struct tt_dest_counters dests[TT_METRICS_DESTS]; /* under lock */
    size_t n_dests;
    struct tt_hs_failure failures[TT_METRICS_FAILURES]; /* ring */
    size_t failures_next;
    uint64_t failures_total;
    /* Per-rule counters: open addressing by name hash, never more than half full; the
     * entries are never removed (a rule dropped by one push and restored by the next keeps
     * its count). */
    struct tt_rule_counters **rules;
    size_t rules_cap; /* 0 or a power of two */
    size_t n_rules;
};

/* Allocates zeroed counters for n_listeners listeners. NULL when out of memory. */
struct tt_metrics *tt_metrics_new(size_t n_listeners);
void tt_metrics_free(struct tt_metrics *m); /* accepts NULL */

/* Records a duration in a histogram (single writer). */
void tt_metrics_observe(struct tt_hist *h, uint64_t us);

/* Counts a failed handshake on listener `li` under `reason` and records it in the
 * recent-failures ring with what is known of the peer (any string may be "" or NULL). */
void tt_metrics_hs_failure(struct tt_metrics *m, int li, enum tt_hs_reason reason,
                           const char *peer_addr, const char *spiffe_id, const char *serial,
                           const char *issuer);

/* Adds a finished (or refused) connection's figures to the peer identity's counters
 * (an identity beyond TT_METRICS_PEERS distinct ones is counted under "other"). */
void tt_metrics_peer_add(struct tt_metrics *m, const char *spiffe_id, uint64_t bytes_in,
                         uint64_t bytes_out, bool denied);

/* A finished HTTP request, as the data path saw it. */
struct tt_request_record {
    const char *method; /* as sent */
    int status;         /* final status sent to the client, 0 when none */
    uint64_t request_bytes, response_bytes, duration_us;
    bool denied; /* policy answered 403 */
};

/* Counts a finished request on listener li: by method and status class, its bytes, its
 * duration in the listener's latency_us, a denial; and for the caller identity (NULL or
 * "": counted under "none" -- a plaintext caller -- in the peer table) its status class.
 * An out-of-range li counts nothing at all. Takes the worker's lock once (the peer
 * table). Worker thread only. */
void tt_metrics_request(struct tt_metrics *m, int li, const char *caller_id,
                        const struct tt_request_record *r);

/* Counts a request refused as malformed (status 400/431) on listener li with its reason
 * (TT_H1_R_NONE or an out-of-range reason counts as "malformed"), in by_method_status as
 * method "other" (a refused request's method is not to be trusted) and class 4xx, and for
 * the caller identity as tt_metrics_request() does. Call it instead of
 * tt_metrics_request() for such a request, not as well (it would be counted twice). An
 * out-of-range li counts nothing. Worker thread only. */
void tt_metrics_request_refused(struct tt_metrics *m, int li, const char *caller_id,
                                enum tt_h1_reason reason);

/* Counts `event` for destination or port `key` (truncated to fit; beyond
 * TT_METRICS_DESTS distinct keys counted under "other"). */
void tt_metrics_dest_add(struct tt_metrics *m, const char *key, enum tt_dest_event event);

/* Copies this worker's destination counters into out[0..max) under its lock; returns how
 * many. Any thread. */
size_t tt_metrics_dests_copy(struct tt_metrics *m, struct tt_dest_counters *out, size_t max);

/* Makes sure every rule of `p` has counters on this worker, so that counting its verdicts
 * allocates nothing; the worker calls it when it takes a snapshot with a new policy.
 * Worker thread only. Returns 0 or -ENOMEM (counting then allocates lazily). */
int tt_metrics_policy_prepare(struct tt_metrics *m, const struct tt_policy *p);

/* Counts verdict `v` of policy `p`: one hit for the deciding rule (not the default) and
 * for each audit rule that matched, and a would-deny for each audit deny rule among them.
 * Worker thread only; a rule without counters (p not prepared) gets them now, and is not
 * counted if that allocation fails. */
void tt_metrics_policy_count(struct tt_metrics *m, const struct tt_policy *p,
                             const struct tt_policy_verdict *v);

/* A rule's counters summed over the workers. */
struct tt_rule_sum {
    char *name;
    uint64_t hits;
    uint64_t audit_would_deny;
};

/* Sums of every worker's counters, for rendering. Takes each worker's lock briefly. */
struct tt_metrics_sum {
    size_t n_listeners;
    struct tt_listener_counters *listeners; /* n_listeners entries */
    struct tt_peer_counters *peers;         /* merged by id */
    size_t n_peers;
    struct tt_hs_failure *failures; /* newest first, at most TT_METRICS_FAILURES */
    size_t n_failures;
    struct tt_rule_sum *rules; /* sorted by name */
    size_t n_rules;
};
int tt_metrics_sum(struct tt_metrics *const *workers, size_t n_workers, struct tt_metrics_sum *out);
void tt_metrics_sum_done(struct tt_metrics_sum *sum);

/* The summed counters of the rule called `name`, or NULL when no worker counted it. */
const struct tt_rule_sum *tt_metrics_sum_rule(const struct tt_metrics_sum *sum, const char *name);

#endif
