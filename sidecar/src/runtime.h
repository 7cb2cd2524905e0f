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
#include "cpclient.h"
#include "worker.h"

struct tt_admin;
struct tt_identity;
struct tt_policy;

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
    unsigned live_conns;  /* all workers, atomic; for --max-connections */
    bool draining;        /* atomic: SIGTERM or /quitquitquit received */
    bool stopping;        /* atomic: workers must close everything and exit */
    int *listen_fds;      /* bound at start-up, n_workers x n_listeners */
    bool workers_started; /* atomic */
    uint64_t rotations;   /* atomic: leaf certificate changes */
    int exit_code;
    struct tt_cpclient *cpclient;        /* control mode only */
    struct tt_cp_status admin_cp_status; /* filled for one admin request */
    uv_async_t first_snapshot;           /* control mode: start workers */
    struct tt_admin *admin;
    struct tt_snapshot *admin_view_snapshot; /* held between get_view and put_view */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    uv_timer_t drain_poll;
};

#define TT_EXIT_OK      0
#define TT_EXIT_RUNTIME 1
#define TT_EXIT_CONFIG  2

/* Loads the identity and policy named by cfg, binds every listener and the admin
 * address, starts the workers and runs until drained or stopped. Errors before serving
 * print one line on stderr and return TT_EXIT_CONFIG; returns TT_EXIT_OK after a clean
 * drain. cfg must outlive the call. */
int tt_runtime_run(const struct tt_config *cfg);

/* Returns a new reference to the current snapshot (any thread), or NULL before the first
 * one (control mode, while the first certificate is awaited). */
struct tt_snapshot *tt_runtime_snapshot(struct tt_runtime *rt);

/* Makes (identity, policy) the snapshot for new connections, from any thread (the
 * control client's). Takes ownership of both references (policy may be NULL). Workers
 * pick it up at once; connections whose peer certificate is revoked in the new identity
 * are closed. The first snapshot in control mode starts the workers. Returns 0 or
 * -ENOMEM (both references dropped). */
int tt_runtime_publish(struct tt_runtime *rt, struct tt_identity *identity,
                       struct tt_policy *policy);

#endif
