/* The sidecar process: publishes the first snapshot (from files, or from the control
 * client), binds the listeners, runs the workers and, on the main thread's loop, the
 * admin endpoint and the signals (SIGHUP reload, SIGTERM drain). The one place that knows
 * the configuration: it hands each part what it needs. main.c calls it and only it. */
#ifndef TT_RUNTIME_H
#define TT_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app/config.h"

#define TT_EXIT_OK      0
#define TT_EXIT_RUNTIME 1
#define TT_EXIT_CONFIG  2

/* Descriptors kept out of the connections' reach: for the process (stdio, the main loop
 * and its signal pipes, the admin listener and a few of its clients, the control client
 * with gRPC's own, files read at a reload) and for each worker (its loop's epoll, eventfd
 * and signal pipe, libuv's and the acceptor's reserves, one being refused) besides its
 * listening sockets. Measured: 23 descriptors for 2 workers and a listener in file mode,
 * 30 with a control plane. */
#define TT_FD_RESERVE_BASE       48
#define TT_FD_RESERVE_PER_WORKER 8

/* Each worker's share of `requested` connections (--max-connections) when the process may
 * hold `nofile` descriptors (its soft RLIMIT_NOFILE; UINT64_MAX for no limit): every
 * connection holds two sockets, and TT_FD_RESERVE_BASE + workers *
 * (TT_FD_RESERVE_PER_WORKER + n_listeners) descriptors stay for the rest (written to
 * *reserve when it is not NULL). Returns ceil(requested / workers) when that fits, else
 * the largest share that does, at least 1; *capped says whether it was lowered. */
unsigned tt_runtime_worker_share(unsigned requested, uint64_t nofile, unsigned workers,
                                 size_t n_listeners, uint64_t *reserve, bool *capped);

/* Raises the soft RLIMIT_NOFILE to the hard limit and caps each worker's share of
 * --max-connections to what it allows (tt_runtime_worker_share; logged once as
 * max_connections_capped), loads the identity and policy named by cfg (or starts the
 * control client), binds every listener and the admin address, starts the workers and
 * runs until drained or stopped.
 * Errors before serving print one line on stderr and return TT_EXIT_CONFIG; returns
 * TT_EXIT_OK after a clean drain. cfg must outlive the call. */
int tt_runtime_run(const struct tt_config *cfg);

#endif
