/* The outbound balancer of transparent mode (DESIGN.md "How a connection flows"): picks
 * one endpoint of a service by the power of two choices over a cost that grows with the
 * endpoint's active connections and its moving average of connect latency, and ejects an
 * endpoint whose connect failed for a backoff period (doubling with each consecutive
 * failure, up to a bound). One balancer per worker, used only by its thread: no locks on
 * the data path. /stats reads the per-endpoint figures from another thread through
 * relaxed atomics; entries are never moved or removed, so such a read is always of a
 * whole, live entry. Each entry also keeps the endpoint's newest session ticket. No
 * sockets, no libuv. */
#ifndef TT_BALANCER_H
#define TT_BALANCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

struct tt_service;
struct tt_tls_resume;

#define TT_BALANCER_ENDPOINTS_MAX 1024 /* endpoints remembered per worker */
#define TT_BALANCER_BACKOFF_MS    1000 /* first ejection; doubles per consecutive failure */
#define TT_BALANCER_BACKOFF_MAX   30000
#define TT_BALANCER_LATENCY_FLOOR 5000 /* us: latencies under this count as equal */
#define TT_BALANCER_DECAY_MS      1000 /* an unfed latency average halves this often */

/* What /stats shows of one endpoint on one worker. */
struct tt_balancer_stats {
    struct tt_addr addr;
    uint64_t active;           /* connections picked and not yet released */
    uint64_t picks;            /* times chosen */
    uint64_t connect_failures; /* connects that failed */
    uint64_t ejections;        /* times ejected (a failure while not ejected) */
    uint64_t ewma_connect_us;  /* moving average of connect latency; 0: none measured */
    uint64_t ejected_until_ms; /* tt_now_ms() clock; in the past: not ejected */
};

struct tt_balancer;

/* A balancer whose random choices start from `seed` (tests pass a fixed one). NULL when
 * out of memory. */
struct tt_balancer *tt_balancer_new(uint64_t seed);
void tt_balancer_free(struct tt_balancer *b); /* accepts NULL */

/* Picks an endpoint of svc for a new connection at time now_ms, among those whose bit is
 * not set in `tried` (bit i: endpoint i, for the first 64; later ones are never excluded):
 * endpoints that are not ejected first (power of two choices, cheaper cost wins, a tie is
 * broken at random); when every untried endpoint is ejected, the one whose ejection ends
 * first (a service is never left without a try). Counts the pick and one active
 * connection on it. Returns the endpoint's index, or -1 when every endpoint was tried or
 * the table of endpoints is full. */
int tt_balancer_pick(struct tt_balancer *b, const struct tt_service *svc, uint64_t tried,
                     uint64_t now_ms);

/* The connection to endpoint `ep` (as picked) connected after latency_us: feeds the
 * moving average and ends an ejection streak. */
void tt_balancer_connected(struct tt_balancer *b, const struct tt_addr *ep, uint64_t latency_us);

/* The connect to `ep` failed at now_ms: releases its active count, counts the failure and
 * ejects it for the backoff unless it is ejected already. */
void tt_balancer_failed(struct tt_balancer *b, const struct tt_addr *ep, uint64_t now_ms);

/* A connection to `ep` that connected has ended: releases its active count. */
void tt_balancer_released(struct tt_balancer *b, const struct tt_addr *ep);

/* The session-ticket slot of endpoint `ep` (tls.h), created with the endpoint's entry:
 * transparent outbound resumes TLS per endpoint, as explicit outbound does per listener.
 * Worker thread only; valid until tt_balancer_free(). NULL when the table of endpoints is
 * full. */
struct tt_tls_resume *tt_balancer_resume_slot(struct tt_balancer *b, const struct tt_addr *ep);

/* For releasing every ticket before tt_balancer_free() (the balancer itself calls nothing
 * of the TLS layer): slot i's ticket slot, i in [0, tt_balancer_capacity()), or NULL for
 * a slot not in use. */
struct tt_tls_resume *tt_balancer_resume_at(struct tt_balancer *b, size_t i);

/* Endpoints known to this balancer, for /stats (any thread): i in [0, count). Fills *out
 * and returns true for a slot in use. */
size_t tt_balancer_capacity(const struct tt_balancer *b);
bool tt_balancer_stats_at(const struct tt_balancer *b, size_t i, struct tt_balancer_stats *out);

#endif
