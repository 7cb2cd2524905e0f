/* Worker threads (worker.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/util.h"
#include "metrics/metrics.h"
#include "net/balancer.h"
#include "net/conn.h"
#include "net/listener.h"
#include "net/pool.h"
#include "net/worker.h"
#include "snapshot/snapshot.h"

void (*tt_worker_test_start_hook)(struct tt_worker *w);

/* Takes the slot's newest snapshot if it is newer than ours: new connections use it,
 * live ones keep theirs, except that a revocation ends the live connections whose peer
 * it revokes. */
static void worker_refresh_snapshot(struct tt_worker *w)
{
    struct tt_snapshot *s;

    if (tt_snapshot_slot_generation(w->settings->slot) == w->generation)
        return;
    s = tt_snapshot_slot_get(w->settings->slot);
    if (s == NULL || (w->snapshot != NULL && s->generation == w->snapshot->generation)) {
        tt_snapshot_unref(s);
        return;
    }
    struct tt_snapshot *old = w->snapshot;
    w->snapshot = s;
    __atomic_store_n(&w->generation, s->generation, __ATOMIC_RELEASE);
    if (old == NULL || s->policy != old->policy)
        (void)tt_metrics_policy_prepare(w->metrics, s->policy);
    if (old == NULL || s->revocations != old->revocations) {
        for (struct tt_conn *c = w->conns, *next; c != NULL; c = next) {
            next = c->next;
            tt_conn_close_if_revoked(c, s->revocations);
        }
    }
    if (old != NULL && s->crls != old->crls) {
        for (struct tt_conn *c = w->conns, *next; c != NULL; c = next) {
            next = c->next;
            tt_conn_close_if_crl_revoked(c, s->crls);
        }
    }
    tt_snapshot_unref(old);
}

static void worker_close_listeners(struct tt_worker *w)
{
    for (size_t i = 0; i < w->settings->n_listeners; i++)
        tt_listener_close(&w->listeners[i]);
}

static void on_walk_close(uv_handle_t *handle, void *arg)
{
    if (!uv_is_closing(handle))
        uv_close(handle, NULL);
}

/* A wake-up: a new snapshot, a drain or a stop. */
static void on_wakeup(uv_async_t *async)
{
    struct tt_worker *w = tt_container_of(async, struct tt_worker, wakeup);

    if (w->stopping)
        return;
    worker_refresh_snapshot(w);
    if (__atomic_load_n(&w->drain_requested, __ATOMIC_ACQUIRE) && !w->draining) {
        w->draining = true;
        worker_close_listeners(w);
        tt_pool_drain(w->pool); /* GOAWAY on every link; they close when idle */
    }
    if (__atomic_load_n(&w->stop_requested, __ATOMIC_ACQUIRE)) {
        w->stopping = true;
        worker_close_listeners(w);
        while (w->conns != NULL)
            tt_conn_abort(w->conns);
        tt_idle_conns_close_all(&w->idle_conns);
        /* Every connection handle is now closing; close what remains (the async handle
         * among them) so the loop ends. */
        uv_walk(&w->loop, on_walk_close, NULL);
    }
}

/* Prepares a worker (see worker.h). */
int tt_worker_init(struct tt_worker *w, unsigned index, const struct tt_worker_settings *settings,
                   int *listen_fds)
{
    size_t n = settings->n_listeners;
    int r;

    w->index = index;
    w->settings = settings;
    w->listen_fds = listen_fds;
    r = uv_loop_init(&w->loop);
    if (r < 0)
        return r;
    r = uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    if (r < 0)
        goto err_loop;
    (void)uv_idle_init(&w->loop, &w->flush_idle); /* cannot fail */
    /* A kept workload connection is one more socket; a worker's share of --max-connections
     * budgets two per connection and a request stream holds one (its other side is a
     * stream), so keeping up to the share stays within the descriptors. */
    tt_idle_conns_init(&w->idle_conns, settings->max_connections < TT_IDLE_CONNS_MAX
                                           ? settings->max_connections
                                           : TT_IDLE_CONNS_MAX);
    w->metrics = tt_metrics_new(n);
    w->listeners = calloc(n ? n : 1, sizeof(*w->listeners));
    w->pool = tt_pool_new(&tt_conn_pool_ops, settings->idle_timeout_ms);
    if (settings->transparent != NULL && settings->transparent->enabled)
        w->balancer = tt_balancer_new(tt_now_ms() * 2654435761u + index + 1);
    if (w->metrics == NULL || w->listeners == NULL || w->pool == NULL ||
        (settings->transparent != NULL && settings->transparent->enabled && w->balancer == NULL)) {
        r = -ENOMEM;
        goto err_mem;
    }
    return 0;

err_mem:
    tt_pool_free(w->pool);
    w->pool = NULL;
    tt_balancer_free(w->balancer);
    w->balancer = NULL;
    tt_metrics_free(w->metrics);
    free(w->listeners);
    w->metrics = NULL;
    w->listeners = NULL;
    uv_close((uv_handle_t *)&w->wakeup, NULL);
    uv_close((uv_handle_t *)&w->flush_idle, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT);
err_loop:
    uv_loop_close(&w->loop);
    return r;
}

static void worker_main(void *arg)
{
    struct tt_worker *w = arg;
    const struct tt_worker_settings *st = w->settings;

    if (tt_worker_test_start_hook != NULL)
        tt_worker_test_start_hook(w);
    /* Whatever was published before this point, the wake included or not, is taken now;
     * anything later wakes us. */
    worker_refresh_snapshot(w);
    for (size_t i = 0; i < st->n_listeners; i++) {
        int r = tt_listener_start(&w->listeners[i], w, (int)i, &st->listeners[i], w->listen_fds[i]);
        w->listen_fds[i] = -1;
        if (r < 0) {
            tt_log(TT_LOG_ERROR, "listen_failed", TT_LS("listener", st->listeners[i].name),
                   TT_LS("error", tt_strerror(r)));
        }
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    tt_buf_pool_drain();
}

/* Starts the worker thread. */
int tt_worker_start(struct tt_worker *w)
{
    int r = uv_thread_create(&w->thread, worker_main, w);

    if (r == 0)
        w->thread_started = true;
    return r;
}

/* Wakes the worker from any thread. */
void tt_worker_wake(struct tt_worker *w)
{
    uv_async_send(&w->wakeup);
}

/* Requests a drain (first call only; nothing after a stop). */
void tt_worker_drain(struct tt_worker *w)
{
    if (__atomic_load_n(&w->stop_requested, __ATOMIC_ACQUIRE) ||
        __atomic_exchange_n(&w->drain_requested, true, __ATOMIC_ACQ_REL))
        return;
    uv_async_send(&w->wakeup);
}

/* Requests a stop (first call only: the worker closes its async handle after it). */
void tt_worker_stop(struct tt_worker *w)
{
    if (__atomic_exchange_n(&w->stop_requested, true, __ATOMIC_ACQ_REL))
        return;
    uv_async_send(&w->wakeup);
}

/* Joins the thread and releases the worker's resources. */
void tt_worker_done(struct tt_worker *w)
{
    if (w->thread_started) {
        uv_thread_join(&w->thread);
    } else {
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->flush_idle, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
    }
    uv_loop_close(&w->loop);
    tt_snapshot_unref(w->snapshot);
    w->snapshot = NULL;
    tt_metrics_free(w->metrics);
    tt_pool_free(w->pool); /* its links closed with their carriers */
    w->pool = NULL;
    for (size_t i = 0; i < tt_balancer_capacity(w->balancer); i++) {
        struct tt_tls_resume *ticket = tt_balancer_resume_at(w->balancer, i);
        if (ticket != NULL)
            tt_tls_resume_done(ticket);
    }
    tt_balancer_free(w->balancer);
    w->balancer = NULL;
    for (size_t i = 0; i < w->settings->n_listeners; i++) {
        tt_tls_resume_done(&w->listeners[i].resume);
        if (w->listen_fds[i] >= 0)
            close(w->listen_fds[i]);
        w->listen_fds[i] = -1;
    }
    free(w->listeners);
}

/* Live connections of this worker. */
size_t tt_worker_conn_count(const struct tt_worker *w)
{
    return __atomic_load_n(&w->n_conns, __ATOMIC_RELAXED);
}

/* The generation this worker runs. */
uint64_t tt_worker_generation(const struct tt_worker *w)
{
    return __atomic_load_n(&w->generation, __ATOMIC_ACQUIRE);
}
