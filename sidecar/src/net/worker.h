/* Worker threads (DESIGN.md "Threads and snapshots"): each owns a uv_loop_t, its own
 * SO_REUSEPORT listeners (one per configured listener), its connections and its
 * counters; nothing on the data path is shared or locked. A worker is handed everything
 * it needs at init (tt_worker_settings): it never reaches up to the runtime. It takes the
 * newest snapshot from the slot when its thread starts and whenever it is woken, and
 * drains or stops when asked, from any thread. */
#ifndef TT_WORKER_H
#define TT_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "net/worker-t.h"

/* Tests only: called on the worker's thread after it started and before it takes the
 * newest snapshot, to publish in that window. NULL in production. */
extern void (*tt_worker_test_start_hook)(struct tt_worker *w);

/* Prepares worker `index`: loop, async handle, counters, and the newest snapshot of
 * settings->slot (NULL before the first publish). The listener fds in listen_fds (one
 * per configured listener) become the worker's. After this returns, tt_worker_wake may
 * be called from any thread. Returns 0 or <0 (nothing to undo). */
int tt_worker_init(struct tt_worker *w, unsigned index, const struct tt_worker_settings *settings,
                   int *listen_fds);

/* Starts the worker's thread: it opens its listeners, takes the newest snapshot and runs
 * its loop until stopped. Requires a published snapshot. Returns 0 or <0. */
int tt_worker_start(struct tt_worker *w);

/* Asks the worker to take the slot's newest snapshot. Any thread; cheap (an async send). */
void tt_worker_wake(struct tt_worker *w);

/* Asks the worker to stop accepting and let its connections finish. Any thread. */
void tt_worker_drain(struct tt_worker *w);

/* Asks the worker to close everything and end its loop. Any thread. */
void tt_worker_stop(struct tt_worker *w);

/* Joins the thread (after tt_worker_stop; immediately if it never started) and frees
 * what tt_worker_init allocated. */
void tt_worker_done(struct tt_worker *w);

/* Number of live connections, readable from any thread. */
size_t tt_worker_conn_count(const struct tt_worker *w);

/* The snapshot generation the worker runs, readable from any thread. */
uint64_t tt_worker_generation(const struct tt_worker *w);

#endif
