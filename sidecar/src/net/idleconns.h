/* Idle keep-alive connections to the workload, kept by an inbound worker for reuse
 * (Tether issue 10): a request stream served over HTTP/1.1 (http/h2h1.h) whose response
 * left the workload's connection open parks it here, and the next request stream to the
 * same address takes it instead of opening a TCP connection.
 *
 * What is kept is the connection's libuv handle itself (heap-allocated, see
 * tt_idle_conn_new), still reading with the connection module's callbacks: reuse changes
 * no epoll registration and costs no system call (one check for a request that cannot
 * be sent again). A kept handle's `data` is NULL; the read callbacks that find it so hand
 * the handle to tt_idle_conns_drop() (the workload closed it, or spoke out of turn). A
 * handle idle longer than TT_IDLE_CONN_MS (under common servers' keep-alive timeouts,
 * such as Node's 5 s) is closed instead of handed out, and so is one whose peer closed or
 * spoke just before a checked take. One worker's thread only. */
#ifndef TT_IDLECONNS_H
#define TT_IDLECONNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/util.h"
#include "snapshot/services.h" /* struct tt_addr_key */

/* The most handles a worker keeps (its share of --max-connections, if fewer): as many as
 * its busiest moment had request streams in flight to the workload, up to Envoy's default
 * circuit breaker for connections to one upstream cluster. */
#define TT_IDLE_CONNS_MAX 1024
#define TT_IDLE_CONN_MS   2000

struct tt_idle_conn; /* a kept handle's entry (idleconns.c) */

/* The kept handles in the order they were parked: taken from the newest end, expired and
 * evicted from the oldest; every operation costs O(1) but a take that passes entries for
 * other addresses. Set up by tt_idle_conns_init. */
struct tt_idle_conns {
    struct tt_idle_conn *oldest, *newest;
    size_t n;   /* parked now */
    size_t max; /* at most this many: tt_idle_conns_init */
};

/* Sets the cache up empty, keeping at most `max` handles (at least 1). */
void tt_idle_conns_init(struct tt_idle_conns *c, size_t max);

/* A heap-allocated TCP handle on `loop` (uv_tcp_init done) that can be parked here; NULL
 * when out of memory. Close it with tt_idle_conn_close() unless it is parked. */
uv_tcp_t *tt_idle_conn_new(uv_loop_t *loop);

/* Closes such a handle, with a reset (RST) when `reset` and the socket allows it; `cb`
 * (may be NULL) runs before its memory is freed. */
void tt_idle_conn_close(uv_tcp_t *tcp, bool reset, uv_close_cb cb);

/* Parks `tcp`, a handle from tt_idle_conn_new connected to `target`, at rest between
 * responses and reading (owned from here on; its data is set to NULL). Entries idle for
 * TT_IDLE_CONN_MS or longer are closed first, then the oldest if the cache is still full;
 * a target that has no address key is closed at once. */
void tt_idle_conns_put(struct tt_idle_conns *c, const struct tt_addr *target, uv_tcp_t *tcp,
                       uint64_t now_ms);

/* A parked handle to `target`, the newest first, idle for less than TT_IDLE_CONN_MS (the
 * caller owns it and sets its data); or NULL. Expired entries are closed on the way. With
 * `check`, the handle must also have nothing to read that the loop has not delivered yet
 * (a recv with MSG_PEEK, one system call): those closed or holding unexpected bytes are
 * closed on the way. A caller that can send its request again on a new connection when
 * the workload closed this one meanwhile does without the check. */
uv_tcp_t *tt_idle_conns_take(struct tt_idle_conns *c, const struct tt_addr *target, uint64_t now_ms,
                             bool check);

/* A parked handle's peer closed it or sent something: it leaves the cache and closes.
 * Accepts any handle from tt_idle_conn_new that is not parked (nothing happens). */
void tt_idle_conns_drop(struct tt_idle_conns *c, uv_tcp_t *tcp);

/* Closes every parked handle (a stopping worker, before its loop's last run). */
void tt_idle_conns_close_all(struct tt_idle_conns *c);

#endif
