/* Worker threads (DESIGN.md "Threads"): each owns a uv_loop_t, its own SO_REUSEPORT
 * listeners (one per configured listener), its connections and its counters; nothing on
 * the data path is shared or locked. The runtime wakes a worker with uv_async_send to
 * hand it a new snapshot, to drain or to stop. */
#ifndef TT_WORKER_H
#define TT_WORKER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "metrics.h"
#include "tls.h"

struct tt_identity;
struct tt_policy;
struct tt_runtime;
struct tt_conn;

/* What a connection needs from the control side, immutable and refcounted: a
 * connection keeps the snapshot it started with. */
struct tt_snapshot {
    int refs;
    uint64_t generation;
    int64_t created_unix;
    struct tt_identity *identity;
    struct tt_policy *policy; /* NULL: any authenticated caller is allowed */
};

/* Builds a snapshot with one reference, taking ownership of identity and policy. NULL
 * when out of memory (ownership then stays with the caller). */
struct tt_snapshot *tt_snapshot_new(struct tt_identity *identity, struct tt_policy *policy,
                                    uint64_t generation);
struct tt_snapshot *tt_snapshot_ref(struct tt_snapshot *s);
void tt_snapshot_unref(struct tt_snapshot *s); /* accepts NULL */

/* A listening socket of one worker. */
struct tt_listener {
    uv_tcp_t tcp;
    struct tt_worker *worker;
    int index;                         /* into cfg->listeners and the metrics arrays */
    const struct tt_listener_cfg *cfg; /* owned by the runtime's config */
    struct tt_tls_resume resume;       /* outbound: the upstream's newest session ticket */
    bool open;
};

#define TT_WORKER_READ_BUF (64 * 1024)

struct tt_worker {
    unsigned index;
    struct tt_runtime *rt;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;
    struct tt_listener *listeners; /* rt->cfg->n_listeners */
    int *listen_fds;               /* bound by the runtime, opened by the worker */
    struct tt_metrics *metrics;
    struct tt_snapshot *snapshot; /* newest snapshot this worker has taken */
    struct tt_conn *conns;        /* every live connection, for drain and stop */
    size_t n_conns;
    bool draining; /* listeners closed, waiting for connections */
    bool stopping; /* closing everything, then the loop ends */
    /* Scratch space for the loop's single running callback: socket reads land in
     * read_buf, decrypted TLS plaintext in plain_buf. Never held across callbacks. */
    uint8_t read_buf[TT_WORKER_READ_BUF];
    uint8_t plain_buf[TT_WORKER_READ_BUF];
};

/* Prepares worker `index` of rt: loop, async handle, counters. The listener fds in
 * listen_fds (one per configured listener) become the worker's. Returns 0 or <0. */
int tt_worker_init(struct tt_worker *w, struct tt_runtime *rt, unsigned index, int *listen_fds);

/* Starts the worker's thread; it runs its loop until tt_worker_stop. Returns 0 or <0. */
int tt_worker_start(struct tt_worker *w);

/* Asks the worker (from any thread) to pick up the runtime's current snapshot, drain or
 * stop, according to the runtime's state. Thread-safe. */
void tt_worker_wake(struct tt_worker *w);

/* Joins the thread and frees what tt_worker_init allocated (call after the thread ends). */
void tt_worker_done(struct tt_worker *w);

/* Number of live connections, readable from any thread. */
size_t tt_worker_conn_count(const struct tt_worker *w);

#endif
