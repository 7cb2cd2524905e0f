/* Transparent mode's capture check (DESIGN.md "How a connection flows"; README
 * "Transparent mode"): the sidecar runs without capabilities and cannot read the rule
 * table, so it checks the capture by its effect. At start and every interval it connects,
 * as itself (UID 1337), to the outbound canary (192.0.2.1:15009, which tether-iptables
 * sends through the workload's own capture rules to 15001) and to its own pod
 * address on the inbound canary port (15008, sent through the REDIRECT to 15006); the
 * sidecar's listeners answer a canary connection with TT_CANARY_ANSWER. A direction whose
 * probe does not get that answer within the timeout has failed, and /ready fails with
 * it. Runs on the main thread's loop. */
#ifndef TT_CAPTURE_H
#define TT_CAPTURE_H

#include <stdint.h>

#include <uv.h>

#include "admin/stats.h"
#include "core/util.h"

struct tt_capture;

/* Starts checking on loop: the first round 200 ms from now (the workers start
 * listening meanwhile), then every interval_ms; each probe fails after timeout_ms (at
 * most 3/4 of the interval, so that it ends before the next round). NULL when out of
 * memory. */
struct tt_capture *tt_capture_start(uv_loop_t *loop, const struct tt_addr *outbound_canary,
                                    const struct tt_addr *inbound_canary, uint64_t interval_ms,
                                    uint64_t timeout_ms);

/* The latest results (ready only when both directions answered in the last round). */
void tt_capture_status(const struct tt_capture *c, struct tt_capture_status *out);

/* Stops checking; the memory goes once libuv closed the handles. Accepts NULL. */
void tt_capture_close(struct tt_capture *c);

#endif
