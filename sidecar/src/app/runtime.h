/* The sidecar process: publishes the first snapshot (from files, or from the control
 * client), binds the listeners, runs the workers and, on the main thread's loop, the
 * admin endpoint and the signals (SIGHUP reload, SIGTERM drain). The one place that knows
 * the configuration: it hands each part what it needs. main.c calls it and only it. */
#ifndef TT_RUNTIME_H
#define TT_RUNTIME_H

#include "app/config.h"

#define TT_EXIT_OK      0
#define TT_EXIT_RUNTIME 1
#define TT_EXIT_CONFIG  2

/* Loads the identity and policy named by cfg (or starts the control client), binds every
 * listener and the admin address, starts the workers and runs until drained or stopped.
 * Errors before serving print one line on stderr and return TT_EXIT_CONFIG; returns
 * TT_EXIT_OK after a clean drain. cfg must outlive the call. */
int tt_runtime_run(const struct tt_config *cfg);

#endif
