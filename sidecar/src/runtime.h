/* The sidecar process: loads the snapshot, binds the listeners, runs the workers and,
 * on the main thread's loop, the admin endpoint and the signals (SIGHUP reload, SIGTERM
 * drain). main.c calls it and only it. */
#ifndef TT_RUNTIME_H
#define TT_RUNTIME_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "worker.h"

struct tt_admin;

struct tt_runtime {
    const struct tt_config *cfg;
    uv_loop_t loop; /* main thread: admin, signals, drain timer */
    struct tt_worker *workers;
    unsigned n_workers;
    pthread_mutex_t snapshot_lock; /* guards `snapshot` for the workers' pick-up */
    struct tt_snapshot *snapshot;
    uint64_t generation;
    uint64_t reloads_failed;
    int64_t started_unix;
    unsigned live_conns; /* all workers, atomic; for --max-connections */
    bool draining;       /* atomic: SIGTERM or /quitquitquit received */
    bool stopping;       /* atomic: workers must close everything and exit */
    struct tt_admin *admin;
    struct tt_snapshot *admin_view_snapshot; /* held between get_view and put_view */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    uv_timer_t drain_poll;
};

#define TT_EXIT_OK 0
#define TT_EXIT_RUNTIME 1
#define TT_EXIT_CONFIG 2

/* Loads the identity and policy named by cfg, binds every listener and the admin
 * address, starts the workers and runs until drained or stopped. Errors before serving
 * print one line on stderr and return TT_EXIT_CONFIG; returns TT_EXIT_OK after a clean
 * drain. cfg must outlive the call. */
int tt_runtime_run(const struct tt_config *cfg);

/* Returns a new reference to the current snapshot (any thread). */
struct tt_snapshot *tt_runtime_snapshot(struct tt_runtime *rt);

#endif
