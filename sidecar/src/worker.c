/* Worker threads and snapshots (worker.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "conn.h"
#include "identity.h"
#include "listener.h"
#include "errors.h"
#include "log.h"
#include "policy.h"
#include "runtime.h"
#include "util.h"
#include "worker.h"

/* Builds a snapshot owning identity and policy. */
struct tt_snapshot *tt_snapshot_new(struct tt_identity *identity, struct tt_policy *policy,
                                    uint64_t generation)
{
    struct tt_snapshot *s = calloc(1, sizeof(*s));

    if (s == NULL)
        return NULL;
    s->refs = 1;
    s->generation = generation;
    s->created_unix = tt_now_unix();
    s->identity = identity;
    s->policy = policy;
    return s;
}

/* Takes a reference; any thread. */
struct tt_snapshot *tt_snapshot_ref(struct tt_snapshot *s)
{
    __atomic_fetch_add(&s->refs, 1, __ATOMIC_RELAXED);
    return s;
}

/* Drops a reference; the last one frees the identity and policy references. */
void tt_snapshot_unref(struct tt_snapshot *s)
{
    if (s == NULL || __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    tt_identity_unref(s->identity);
    tt_policy_unref(s->policy);
    free(s);
}

/* Takes the runtime's current snapshot if it is newer than ours. */
static void worker_refresh_snapshot(struct tt_worker *w)
{
    struct tt_snapshot *s = tt_runtime_snapshot(w->rt);

    if (w->snapshot != NULL && w->snapshot->generation == s->generation) {
        tt_snapshot_unref(s);
        return;
    }
    tt_snapshot_unref(w->snapshot);
    w->snapshot = s;
    /* A revocation also ends the live connections that use the revoked certificate. */
    for (struct tt_conn *c = w->conns, *next; c != NULL; c = next) {
        next = c->next;
        tt_conn_close_if_revoked(c, s->identity);
    }
}

static void worker_close_listeners(struct tt_worker *w)
{
    for (size_t i = 0; i < w->rt->cfg->n_listeners; i++)
        tt_listener_stop(&w->listeners[i]);
}

static void on_walk_close(uv_handle_t *handle, void *arg)
{
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

/* The runtime's wake-up: new snapshot, drain or stop. */
static void on_wakeup(uv_async_t *async)
{
    struct tt_worker *w = tt_container_of(async, struct tt_worker, wakeup);
    struct tt_runtime *rt = w->rt;

    worker_refresh_snapshot(w);
    if (__atomic_load_n(&rt->draining, __ATOMIC_ACQUIRE) && !w->draining) {
        w->draining = true;
        worker_close_listeners(w);
    }
    if (__atomic_load_n(&rt->stopping, __ATOMIC_ACQUIRE) && !w->stopping) {
        w->stopping = true;
        worker_close_listeners(w);
        while (w->conns != NULL)
            tt_conn_abort(w->conns);
        /* Every connection handle is now closing; close what remains so the loop ends. */
        uv_walk(&w->loop, on_walk_close, NULL);
    }
}

/* Prepares a worker (see worker.h). */
int tt_worker_init(struct tt_worker *w, struct tt_runtime *rt, unsigned index, int *listen_fds)
{
    size_t n = rt->cfg->n_listeners;
    int r;

    w->index = index;
    w->rt = rt;
    w->listen_fds = listen_fds;
    r = uv_loop_init(&w->loop);
    if (r < 0)
        return r;
    r = uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    if (r < 0)
        goto err_loop;
    w->metrics = tt_metrics_new(n);
    w->listeners = calloc(n, sizeof(*w->listeners));
    if (w->metrics == NULL || w->listeners == NULL) {
        r = -ENOMEM;
        goto err_mem;
    }
    w->snapshot = tt_runtime_snapshot(rt);
    return 0;

err_mem:
    tt_metrics_free(w->metrics);
    free(w->listeners);
    w->metrics = NULL;
    w->listeners = NULL;
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT);
err_loop:
    uv_loop_close(&w->loop);
    return r;
}

static void worker_main(void *arg)
{
    struct tt_worker *w = arg;
    struct tt_runtime *rt = w->rt;

    for (size_t i = 0; i < rt->cfg->n_listeners; i++) {
        int r = tt_listener_start(&w->listeners[i], w, (int)i, w->listen_fds[i]);
        w->listen_fds[i] = -1;
        if (r < 0) {
            tt_log(TT_LOG_ERROR, "listen_failed", TT_LS("listener", rt->cfg->listeners[i].name),
                   TT_LS("error", tt_strerror(r)));
        }
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    tt_buf_pool_drain();
}

/* Starts the worker thread. */
int tt_worker_start(struct tt_worker *w)
{
    return uv_thread_create(&w->thread, worker_main, w);
}

/* Wakes the worker from any thread. */
void tt_worker_wake(struct tt_worker *w)
{
    uv_async_send(&w->wakeup);
}

/* Joins the thread and releases the worker's resources. */
void tt_worker_done(struct tt_worker *w)
{
    uv_thread_join(&w->thread);
    uv_loop_close(&w->loop);
    tt_snapshot_unref(w->snapshot);
    tt_metrics_free(w->metrics);
    for (size_t i = 0; i < w->rt->cfg->n_listeners; i++)
        tt_tls_resume_done(&w->listeners[i].resume);
    free(w->listeners);
    for (size_t i = 0; i < w->rt->cfg->n_listeners; i++) {
        if (w->listen_fds[i] >= 0)
            close(w->listen_fds[i]);
        w->listen_fds[i] = -1;
    }
}

/* Live connections of this worker. */
size_t tt_worker_conn_count(const struct tt_worker *w)
{
    return __atomic_load_n(&w->n_conns, __ATOMIC_RELAXED);
}
