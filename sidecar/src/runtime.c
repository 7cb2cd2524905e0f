/* The sidecar process (runtime.h): start-up checks, the workers, and the main thread's
 * loop with the admin endpoint, SIGHUP reload and SIGTERM drain. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "errors.h"
#include "identity.h"
#include "listener.h"
#include "log.h"
#include "policy.h"
#include "runtime.h"
#include "util.h"

#define TT_ERR_MAX 512
#define TT_DRAIN_POLL_MS 100

/* Current snapshot with a new reference (any thread). */
struct tt_snapshot *tt_runtime_snapshot(struct tt_runtime *rt)
{
    pthread_mutex_lock(&rt->snapshot_lock);
    struct tt_snapshot *s = tt_snapshot_ref(rt->snapshot);
    pthread_mutex_unlock(&rt->snapshot_lock);
    return s;
}

/* Loads identity and policy files into a new snapshot, or NULL with err set. */
static struct tt_snapshot *load_snapshot(const struct tt_config *cfg, uint64_t generation,
                                         char *err, size_t errlen)
{
    struct tt_identity *id = tt_identity_load(cfg->cert_path, cfg->key_path, cfg->bundle_path,
                                              err, errlen);
    struct tt_policy *policy = NULL;
    struct tt_snapshot *s;

    if (id == NULL)
        return NULL;
    if (cfg->policy_path != NULL) {
        policy = tt_policy_load_file(cfg->policy_path, err, errlen);
        if (policy == NULL)
            goto err_identity;
    }
    s = tt_snapshot_new(id, policy, generation);
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        goto err_policy;
    }
    return s;

err_policy:
    tt_policy_unref(policy);
err_identity:
    tt_identity_unref(id);
    return NULL;
}

static void wake_workers(struct tt_runtime *rt)
{
    for (unsigned i = 0; i < rt->n_workers; i++)
        tt_worker_wake(&rt->workers[i]);
}

/* SIGHUP: rebuild the snapshot from the files; a bad file keeps the old one. */
static void runtime_reload(struct tt_runtime *rt)
{
    char err[TT_ERR_MAX];
    struct tt_snapshot *s = load_snapshot(rt->cfg, rt->generation + 1, err, sizeof(err));

    if (s == NULL) {
        rt->reloads_failed++;
        tt_log(TT_LOG_ERROR, "reload_refused", TT_LS("error", err),
               TT_LU("generation", rt->generation));
        return;
    }
    rt->generation++;
    pthread_mutex_lock(&rt->snapshot_lock);
    struct tt_snapshot *old = rt->snapshot;
    rt->snapshot = s;
    pthread_mutex_unlock(&rt->snapshot_lock);
    tt_snapshot_unref(old);
    wake_workers(rt);

    const struct tt_cert_info *leaf = tt_identity_leaf(s->identity);
    tt_log(TT_LOG_INFO, "reloaded", TT_LU("generation", rt->generation),
           TT_LS("spiffe_id", leaf->spiffe_id), TT_LS("serial", leaf->serial),
           TT_LS("policy_version", s->policy != NULL ? tt_policy_version(s->policy) : NULL));
}

static size_t live_connections(struct tt_runtime *rt)
{
    size_t n = 0;
    for (unsigned i = 0; i < rt->n_workers; i++)
        n += tt_worker_conn_count(&rt->workers[i]);
    return n;
}

/* Ends the process's serving: workers close everything, the main loop's handles close. */
static void runtime_stop(struct tt_runtime *rt)
{
    if (__atomic_load_n(&rt->stopping, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&rt->stopping, true, __ATOMIC_RELEASE);
    wake_workers(rt);
    tt_admin_close(rt->admin);
    rt->admin = NULL;
    uv_close((uv_handle_t *)&rt->sig_term, NULL);
    uv_close((uv_handle_t *)&rt->sig_int, NULL);
    uv_close((uv_handle_t *)&rt->sig_hup, NULL);
    uv_close((uv_handle_t *)&rt->drain_timer, NULL);
    uv_close((uv_handle_t *)&rt->drain_poll, NULL);
}

static void on_drain_timeout(uv_timer_t *timer)
{
    struct tt_runtime *rt = tt_container_of(timer, struct tt_runtime, drain_timer);

    tt_log(TT_LOG_WARN, "drain_timeout", TT_LU("connections_reset", live_connections(rt)));
    runtime_stop(rt);
}

static void on_drain_poll(uv_timer_t *timer)
{
    struct tt_runtime *rt = tt_container_of(timer, struct tt_runtime, drain_poll);

    if (live_connections(rt) == 0) {
        tt_log(TT_LOG_INFO, "drained", TT_LS("result", "all connections finished"));
        runtime_stop(rt);
    }
}

/* SIGTERM, SIGINT or /quitquitquit: stop accepting, fail /ready, wait for connections. */
static void runtime_drain(struct tt_runtime *rt, const char *why)
{
    if (__atomic_load_n(&rt->draining, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&rt->draining, true, __ATOMIC_RELEASE);
    tt_log(TT_LOG_INFO, "draining", TT_LS("cause", why),
           TT_LU("connections", live_connections(rt)),
           TT_LU("drain_timeout_ms", rt->cfg->drain_timeout_ms));
    wake_workers(rt);
    uv_timer_start(&rt->drain_timer, on_drain_timeout, rt->cfg->drain_timeout_ms, 0);
    uv_timer_start(&rt->drain_poll, on_drain_poll, 0, TT_DRAIN_POLL_MS);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    struct tt_runtime *rt = sig->data;

    if (signum == SIGHUP)
        runtime_reload(rt);
    else
        runtime_drain(rt, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* ---- admin view -------------------------------------------------------------------- */

static void admin_get_view(void *ud, struct tt_stats_view *v)
{
    struct tt_runtime *rt = ud;
    struct tt_snapshot *s = tt_runtime_snapshot(rt);
    const struct tt_cert_info *leaf = tt_identity_leaf(s->identity);
    static __thread struct tt_metrics *workers[256];

    memset(v, 0, sizeof(*v));
    for (unsigned i = 0; i < rt->n_workers && i < 256; i++)
        workers[i] = rt->workers[i].metrics;
    v->listeners = rt->cfg->listeners;
    v->n_listeners = rt->cfg->n_listeners;
    v->workers = workers;
    v->n_workers = rt->n_workers;
    v->identity = s->identity;
    v->policy = s->policy;
    v->started_unix = rt->started_unix;
    v->snapshot_unix = s->created_unix;
    v->snapshot_generation = s->generation;
    v->reloads_failed = rt->reloads_failed;
    v->draining = __atomic_load_n(&rt->draining, __ATOMIC_RELAXED);
    /* Ready while not draining and the certificate can still be presented. */
    v->ready = !v->draining && tt_now_unix() < leaf->not_after;
    v->control_state = "none";
    /* Keep the snapshot alive until put_view: stash it in the view's identity owner. */
    rt->admin_view_snapshot = s;
}

static void admin_put_view(void *ud, struct tt_stats_view *v)
{
    struct tt_runtime *rt = ud;

    tt_snapshot_unref(rt->admin_view_snapshot);
    rt->admin_view_snapshot = NULL;
}

static void admin_quit(void *ud)
{
    runtime_drain(ud, "quitquitquit");
}

static const struct tt_admin_ops admin_ops = {
    .get_view = admin_get_view,
    .put_view = admin_put_view,
    .quit = admin_quit,
};

/* ---- start-up ---------------------------------------------------------------------- */

/* Binds n_workers sockets per listener; fds[w * n_listeners + l]. Port 0 is resolved by
 * the first bind so every worker shares the port. Prints the failure. */
static int bind_listeners(struct tt_config *cfg, unsigned n_workers, int *fds)
{
    for (size_t l = 0; l < cfg->n_listeners; l++) {
        for (unsigned w = 0; w < n_workers; w++) {
            int r = tt_listener_bind(&cfg->listeners[l].listen, &fds[w * cfg->n_listeners + l]);
            if (r < 0) {
                fprintf(stderr, "tether-sidecar: cannot listen on %s (%s): %s\n",
                        cfg->listeners[l].listen.text, cfg->listeners[l].name, tt_strerror(r));
                return r;
            }
        }
    }
    return 0;
}

/* Runs the sidecar (see runtime.h). */
int tt_runtime_run(const struct tt_config *cfg_in)
{
    struct tt_runtime rt_storage, *rt = &rt_storage;
    /* The listener addresses may be updated with kernel-chosen ports. */
    struct tt_config *cfg = (struct tt_config *)cfg_in;
    char err[TT_ERR_MAX];
    size_t n_fds;
    int *fds = NULL;
    int exit_code = TT_EXIT_CONFIG;
    unsigned started = 0;
    int r;

    memset(rt, 0, sizeof(*rt));
    rt->cfg = cfg;
    rt->n_workers = cfg->workers;
    rt->started_unix = tt_now_unix();
    rt->generation = 1;
    pthread_mutex_init(&rt->snapshot_lock, NULL);
    signal(SIGPIPE, SIG_IGN);

    rt->snapshot = load_snapshot(cfg, rt->generation, err, sizeof(err));
    if (rt->snapshot == NULL) {
        fprintf(stderr, "tether-sidecar: %s\n", err);
        goto out;
    }
    if (rt->snapshot->policy == NULL)
        tt_log(TT_LOG_WARN, "no_policy",
               TT_LS("effect", "every caller with a valid mesh certificate is allowed"));

    n_fds = cfg->n_listeners * rt->n_workers;
    fds = malloc(n_fds * sizeof(*fds));
    if (fds == NULL)
        goto out;
    for (size_t i = 0; i < n_fds; i++)
        fds[i] = -1;
    if (bind_listeners(cfg, rt->n_workers, fds) < 0)
        goto out_fds;

    r = uv_loop_init(&rt->loop);
    if (r < 0)
        goto out_fds;
    rt->admin = tt_admin_start(&rt->loop, &cfg->admin, &admin_ops, rt, &r);
    if (rt->admin == NULL) {
        fprintf(stderr, "tether-sidecar: cannot serve --admin %s: %s\n", cfg->admin.text,
                tt_strerror(r));
        goto out_loop;
    }

    rt->workers = calloc(rt->n_workers, sizeof(*rt->workers));
    if (rt->workers == NULL)
        goto out_admin;
    for (started = 0; started < rt->n_workers; started++) {
        struct tt_worker *w = &rt->workers[started];
        r = tt_worker_init(w, rt, started, &fds[started * cfg->n_listeners]);
        if (r == 0)
            r = tt_worker_start(w);
        if (r < 0) {
            fprintf(stderr, "tether-sidecar: cannot start worker %u: %s\n", started,
                    tt_strerror(r));
            exit_code = TT_EXIT_RUNTIME;
            break;
        }
    }

    uv_signal_init(&rt->loop, &rt->sig_term);
    uv_signal_init(&rt->loop, &rt->sig_int);
    uv_signal_init(&rt->loop, &rt->sig_hup);
    rt->sig_term.data = rt->sig_int.data = rt->sig_hup.data = rt;
    uv_timer_init(&rt->loop, &rt->drain_timer);
    uv_timer_init(&rt->loop, &rt->drain_poll);
    if (started == rt->n_workers) {
        uv_signal_start(&rt->sig_term, on_signal, SIGTERM);
        uv_signal_start(&rt->sig_int, on_signal, SIGINT);
        uv_signal_start(&rt->sig_hup, on_signal, SIGHUP);
        const struct tt_cert_info *leaf = tt_identity_leaf(rt->snapshot->identity);
        tt_log(TT_LOG_INFO, "started", TT_LS("spiffe_id", leaf->spiffe_id),
               TT_LS("serial", leaf->serial), TT_LS("admin", cfg->admin.text),
               TT_LU("admin_port", (uint64_t)tt_admin_port(rt->admin)),
               TT_LU("workers", rt->n_workers), TT_LU("listeners", cfg->n_listeners));
        for (size_t l = 0; l < cfg->n_listeners; l++)
            tt_log(TT_LOG_INFO, "listening", TT_LS("listener", cfg->listeners[l].name),
                   TT_LS("listen", cfg->listeners[l].listen.text),
                   TT_LS("target", cfg->listeners[l].target.text),
                   TT_LS("expected_id", cfg->listeners[l].expected_id));
        exit_code = TT_EXIT_OK;
    } else {
        rt->n_workers = started; /* only running workers are woken and joined */
        runtime_stop(rt);
    }
    uv_run(&rt->loop, UV_RUN_DEFAULT);

    for (unsigned i = 0; i < started; i++) {
        tt_worker_wake(&rt->workers[i]);
        tt_worker_done(&rt->workers[i]);
    }
    free(rt->workers);
    if (exit_code == TT_EXIT_OK)
        tt_log(TT_LOG_INFO, "stopped", TT_LS("result", "ok"));
    goto out_loop;

out_admin:
    tt_admin_close(rt->admin);
    uv_run(&rt->loop, UV_RUN_DEFAULT);
out_loop:
    uv_loop_close(&rt->loop);
out_fds:
    for (size_t i = 0; fds != NULL && i < n_fds; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
    }
    free(fds);
out:
    tt_snapshot_unref(rt->snapshot);
    pthread_mutex_destroy(&rt->snapshot_lock);
    return exit_code;
}
