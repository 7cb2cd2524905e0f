/* The sidecar process (runtime.h): start-up checks, the workers, and the main thread's
 * loop with the admin endpoint, SIGHUP reload and SIGTERM drain. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "admin.h"
#include "cpclient.h"
#include "errors.h"
#include "identity.h"
#include "listener.h"
#include "log.h"
#include "policy.h"
#include "runtime.h"
#include "util.h"

#define TT_ERR_MAX       512
#define TT_DRAIN_POLL_MS 100

/* Current snapshot with a new reference (any thread). */
struct tt_snapshot *tt_runtime_snapshot(struct tt_runtime *rt)
{
    pthread_mutex_lock(&rt->snapshot_lock);
    struct tt_snapshot *s = rt->snapshot != NULL ? tt_snapshot_ref(rt->snapshot) : NULL;
    pthread_mutex_unlock(&rt->snapshot_lock);
    return s;
}

/* Loads identity and policy files into a new snapshot, or NULL with err set. */
static struct tt_snapshot *load_snapshot(const struct tt_config *cfg, uint64_t generation,
                                         char *err, size_t errlen)
{
    struct tt_identity *id =
        tt_identity_load(cfg->cert_path, cfg->key_path, cfg->bundle_path, err, errlen);
    struct tt_policy *policy = NULL;
    struct tt_snapshot *s;

    if (id == NULL)
        return NULL;
    if (cfg->policy_path != NULL) {
        policy = tt_policy_load_file(cfg->policy_path, err, errlen);
        if (policy == NULL)
            goto err_identity;
        int n = snprintf(err, errlen, "%s: ", cfg->policy_path);
        if (n > 0 && (size_t)n < errlen &&
            tt_policy_check_tcp_enforceable(policy, tt_identity_spiffe_id(id), err + n,
                                            errlen - (size_t)n) < 0)
            goto err_policy;
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

/* Wakes every running worker; before they start (control mode, no snapshot yet) there
 * is nobody to wake. */
static void wake_workers(struct tt_runtime *rt)
{
    if (!__atomic_load_n(&rt->workers_started, __ATOMIC_ACQUIRE))
        return;
    for (unsigned i = 0; i < rt->n_workers; i++)
        tt_worker_wake(&rt->workers[i]);
}

/* Installs s as the current snapshot (generation assigned here) and wakes whoever must
 * pick it up. Counts a rotation when the leaf certificate changed. */
static void runtime_install(struct tt_runtime *rt, struct tt_snapshot *s)
{
    pthread_mutex_lock(&rt->snapshot_lock);
    struct tt_snapshot *old = rt->snapshot;
    s->generation = ++rt->generation;
    if (old != NULL &&
        strcmp(tt_identity_leaf(old->identity)->serial, tt_identity_leaf(s->identity)->serial) != 0)
        __atomic_fetch_add(&rt->rotations, 1, __ATOMIC_RELAXED);
    rt->snapshot = s;
    pthread_mutex_unlock(&rt->snapshot_lock);
    tt_snapshot_unref(old);
    if (__atomic_load_n(&rt->workers_started, __ATOMIC_ACQUIRE))
        wake_workers(rt);
    else
        uv_async_send(&rt->first_snapshot);

    const struct tt_cert_info *leaf = tt_identity_leaf(s->identity);
    tt_log(TT_LOG_INFO, "snapshot_applied", TT_LU("generation", s->generation),
           TT_LS("spiffe_id", leaf->spiffe_id), TT_LS("serial", leaf->serial),
           TT_LI("not_after", leaf->not_after),
           TT_LS("policy_version", s->policy != NULL ? tt_policy_version(s->policy) : NULL));
}

/* Publishes a snapshot built elsewhere (see runtime.h). */
int tt_runtime_publish(struct tt_runtime *rt, struct tt_identity *identity,
                       struct tt_policy *policy)
{
    struct tt_snapshot *s = tt_snapshot_new(identity, policy, 0);

    if (s == NULL) {
        tt_identity_unref(identity);
        tt_policy_unref(policy);
        return -ENOMEM;
    }
    runtime_install(rt, s);
    return 0;
}

/* SIGHUP: rebuild the snapshot from the files; a bad file keeps the old one. */
static void runtime_reload(struct tt_runtime *rt)
{
    char err[TT_ERR_MAX];
    struct tt_snapshot *s;

    if (rt->cfg->has_control) {
        tt_log(TT_LOG_INFO, "reload_ignored",
               TT_LS("reason", "identity and policy come from the control plane"));
        return;
    }
    s = load_snapshot(rt->cfg, 0, err, sizeof(err));
    if (s == NULL) {
        rt->reloads_failed++;
        tt_log(TT_LOG_ERROR, "reload_refused", TT_LS("error", err),
               TT_LU("generation", rt->generation));
        return;
    }
    runtime_install(rt, s);
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
    uv_close((uv_handle_t *)&rt->first_snapshot, NULL);
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
    tt_log(TT_LOG_INFO, "draining", TT_LS("cause", why), TT_LU("connections", live_connections(rt)),
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
    static __thread struct tt_metrics *workers[256];
    bool started = __atomic_load_n(&rt->workers_started, __ATOMIC_ACQUIRE);

    memset(v, 0, sizeof(*v));
    for (unsigned i = 0; started && i < rt->n_workers && i < 256; i++)
        workers[i] = rt->workers[i].metrics;
    v->listeners = rt->cfg->listeners;
    v->n_listeners = rt->cfg->n_listeners;
    v->workers = workers;
    v->n_workers = started ? rt->n_workers : 0;
    v->started_unix = rt->started_unix;
    v->reloads_failed = rt->reloads_failed;
    v->rotations = __atomic_load_n(&rt->rotations, __ATOMIC_RELAXED);
    v->draining = __atomic_load_n(&rt->draining, __ATOMIC_RELAXED);
    if (s != NULL) {
        v->identity = s->identity;
        v->policy = s->policy;
        v->snapshot_unix = s->created_unix;
        v->snapshot_generation = s->generation;
        /* Ready while not draining and the certificate can still be presented: an
         * unreachable control plane does not make a serving sidecar unready. */
        v->ready =
            !v->draining && started && tt_now_unix() < tt_identity_leaf(s->identity)->not_after;
    }
    v->control_state = "none";
    if (rt->cpclient != NULL) {
        tt_cpclient_status(rt->cpclient, &rt->admin_cp_status);
        v->control_state = rt->admin_cp_status.state_name;
        v->control = &rt->admin_cp_status;
    }
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
            int r =
                tt_listener_bind(&cfg->listeners[l].listen, w == 0, &fds[w * cfg->n_listeners + l]);
            if (r < 0) {
                fprintf(stderr, "tether-sidecar: cannot listen on %s (%s): %s\n",
                        cfg->listeners[l].listen.text, cfg->listeners[l].name, tt_strerror(r));
                return r;
            }
        }
    }
    return 0;
}

/* Starts every worker on the current snapshot. A failure stops the process. */
static void start_workers(struct tt_runtime *rt)
{
    const struct tt_config *cfg = rt->cfg;
    unsigned started;

    for (started = 0; started < rt->n_workers; started++) {
        struct tt_worker *w = &rt->workers[started];
        int r = tt_worker_init(w, rt, started, &rt->listen_fds[started * cfg->n_listeners]);
        if (r == 0)
            r = tt_worker_start(w);
        if (r < 0) {
            tt_log(TT_LOG_ERROR, "worker_failed", TT_LU("worker", started),
                   TT_LS("error", tt_strerror(r)));
            break;
        }
    }
    rt->n_workers = started; /* only running workers are woken and joined */
    __atomic_store_n(&rt->workers_started, true, __ATOMIC_RELEASE);
    if (started < cfg->workers) {
        rt->exit_code = TT_EXIT_RUNTIME;
        runtime_stop(rt);
        return;
    }
    for (size_t l = 0; l < cfg->n_listeners; l++)
        tt_log(TT_LOG_INFO, "listening", TT_LS("listener", cfg->listeners[l].name),
               TT_LS("listen", cfg->listeners[l].listen.text),
               TT_LS("target", cfg->listeners[l].target.text),
               TT_LS("expected_id", cfg->listeners[l].expected_id));
}

/* Control mode: the first snapshot arrived; the listeners can serve. */
static void on_first_snapshot(uv_async_t *async)
{
    struct tt_runtime *rt = tt_container_of(async, struct tt_runtime, first_snapshot);

    if (!__atomic_load_n(&rt->workers_started, __ATOMIC_ACQUIRE) &&
        !__atomic_load_n(&rt->stopping, __ATOMIC_ACQUIRE))
        start_workers(rt);
}

/* Binds every listener for every worker into rt->listen_fds (worker-major). Prints the
 * failure. */
static int bind_all(struct tt_runtime *rt)
{
    struct tt_config *cfg = (struct tt_config *)rt->cfg; /* kernel-chosen ports written back */
    size_t n = cfg->n_listeners * rt->n_workers;

    rt->listen_fds = malloc(n * sizeof(*rt->listen_fds));
    if (rt->listen_fds == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        rt->listen_fds[i] = -1;
    return bind_listeners(cfg, rt->n_workers, rt->listen_fds);
}

/* Runs the sidecar (see runtime.h). */
int tt_runtime_run(const struct tt_config *cfg)
{
    struct tt_runtime rt_storage, *rt = &rt_storage;
    char err[TT_ERR_MAX];
    int r;

    memset(rt, 0, sizeof(*rt));
    rt->cfg = cfg;
    rt->n_workers = cfg->workers;
    rt->started_unix = tt_now_unix();
    rt->exit_code = TT_EXIT_CONFIG;
    pthread_mutex_init(&rt->snapshot_lock, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (!cfg->has_control) {
        rt->snapshot = load_snapshot(cfg, ++rt->generation, err, sizeof(err));
        if (rt->snapshot == NULL) {
            fprintf(stderr, "tether-sidecar: %s\n", err);
            goto out;
        }
    }
    if (bind_all(rt) < 0)
        goto out_fds;
    rt->workers = calloc(rt->n_workers, sizeof(*rt->workers));
    if (rt->workers == NULL || uv_loop_init(&rt->loop) < 0)
        goto out_fds;
    rt->admin = tt_admin_start(&rt->loop, &cfg->admin, &admin_ops, rt, &r);
    if (rt->admin == NULL) {
        fprintf(stderr, "tether-sidecar: cannot serve --admin %s: %s\n", cfg->admin.text,
                tt_strerror(r));
        goto out_loop;
    }
    uv_async_init(&rt->loop, &rt->first_snapshot, on_first_snapshot);
    uv_signal_init(&rt->loop, &rt->sig_term);
    uv_signal_init(&rt->loop, &rt->sig_int);
    uv_signal_init(&rt->loop, &rt->sig_hup);
    rt->sig_term.data = rt->sig_int.data = rt->sig_hup.data = rt;
    uv_timer_init(&rt->loop, &rt->drain_timer);
    uv_timer_init(&rt->loop, &rt->drain_poll);
    uv_signal_start(&rt->sig_term, on_signal, SIGTERM);
    uv_signal_start(&rt->sig_int, on_signal, SIGINT);
    uv_signal_start(&rt->sig_hup, on_signal, SIGHUP);

    if (cfg->has_control) {
        rt->cpclient = tt_cpclient_start(rt, err, sizeof(err));
        if (rt->cpclient == NULL) {
            fprintf(stderr, "tether-sidecar: %s\n", err);
            runtime_stop(rt);
            uv_run(&rt->loop, UV_RUN_DEFAULT);
            goto out_loop;
        }
    }
    rt->exit_code = TT_EXIT_OK;
    if (rt->snapshot != NULL && rt->snapshot->policy == NULL)
        tt_log(TT_LOG_WARN, "no_policy",
               TT_LS("effect", "every caller with a valid mesh certificate is allowed"));
    tt_log(TT_LOG_INFO, "started", TT_LS("admin", cfg->admin.text),
           TT_LU("admin_port", (uint64_t)tt_admin_port(rt->admin)), TT_LU("workers", rt->n_workers),
           TT_LU("listeners", cfg->n_listeners),
           TT_LS("mode", cfg->has_control ? "control" : "files"),
           TT_LS("control", cfg->has_control ? cfg->control.text : NULL));
    if (!cfg->has_control)
        start_workers(rt);
    uv_run(&rt->loop, UV_RUN_DEFAULT);

    tt_cpclient_stop(rt->cpclient);
    if (__atomic_load_n(&rt->workers_started, __ATOMIC_ACQUIRE)) {
        for (unsigned i = 0; i < rt->n_workers; i++) {
            tt_worker_wake(&rt->workers[i]);
            tt_worker_done(&rt->workers[i]);
        }
    }
    if (rt->exit_code == TT_EXIT_OK)
        tt_log(TT_LOG_INFO, "stopped", TT_LS("result", "ok"));

out_loop:
    uv_loop_close(&rt->loop);
out_fds:
    for (size_t i = 0; rt->listen_fds != NULL && i < cfg->n_listeners * cfg->workers; i++) {
        if (rt->listen_fds[i] >= 0)
            close(rt->listen_fds[i]);
    }
    free(rt->listen_fds);
    free(rt->workers);
out:
    tt_snapshot_unref(rt->snapshot);
    pthread_mutex_destroy(&rt->snapshot_lock);
    return rt->exit_code;
}
