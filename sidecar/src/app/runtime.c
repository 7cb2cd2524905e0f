/* The sidecar process (runtime.h): start-up checks, the snapshot slot and its first
 * publish, the workers, and the main thread's loop with the admin endpoint, SIGHUP reload
 * and SIGTERM drain. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

#include "admin/admin.h"
#include "app/capture.h"
#include "app/runtime.h"
#include "control/cpclient.h"
#include "core/buf.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/util.h"
#include "net/listener.h"
#include "net/worker.h"
#include "policy/policy.h"
#include "snapshot/services.h"
#include "snapshot/snapshot.h"
#include "tls/crl.h"
#include "tls/identity.h"

#define TT_ERR_MAX       512
#define TT_DRAIN_POLL_MS 100

struct tt_runtime {
    const struct tt_config *cfg;
    uv_loop_t loop; /* main thread: admin, signals, drain timer */
    struct tt_snapshot_slot slot;
    struct tt_worker_settings settings; /* what every worker is handed */
    struct tt_worker *workers;          /* cfg->workers */
    struct tt_metrics **worker_metrics; /* the started workers' counters, for /stats */
    struct tt_balancer **balancers;     /* transparent: the started workers' balancers */
    unsigned n_workers;                 /* workers initialized so far */
    unsigned n_wakeable;                /* atomic: workers the publish callback may wake */
    bool workers_started;               /* main thread: start_workers ran */
    uint64_t reloads_failed;
    int64_t started_unix;
    uint64_t nofile; /* soft RLIMIT_NOFILE after start-up raised it; UINT64_MAX: none */
    bool draining;   /* SIGTERM or /quitquitquit received (main thread) */
    bool stopping;   /* workers must close everything and exit (main thread) */
    int *listen_fds; /* bound at start-up, workers x listeners */
    int exit_code;
    struct tt_cpclient *cpclient;        /* control mode only */
    struct tt_cp_status admin_cp_status; /* filled for one admin request */
    uv_async_t first_snapshot;           /* control mode: start the workers */
    struct tt_admin *admin;
    struct tt_admin *health;                 /* transparent: POD_IP:15021, /ready and /live */
    struct tt_admin *metrics;                /* transparent: POD_IP:15020, /stats */
    struct tt_capture *capture;              /* transparent: the capture check, or NULL */
    struct tt_capture_status capture_status; /* filled for one admin request */
    struct tt_snapshot *admin_view_snapshot; /* held between get_view and put_view */
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    uv_timer_t drain_poll;
};

/* Says once per load that a CRL is past its nextUpdate (README "Revocation lists": its
 * serials stay refused, but it should be replaced). */
static void warn_expired_crls(const struct tt_crls *crls)
{
    int64_t now = tt_now_unix();

    for (size_t i = 0; i < tt_crls_count(crls); i++) {
        const struct tt_crl_info *ci = tt_crls_info(crls, i);
        if (ci->next_update != 0 && ci->next_update < now)
            tt_log(TT_LOG_WARN, "crl_expired", TT_LS("crl", ci->source),
                   TT_LS("issuer", ci->issuer), TT_LI("next_update", ci->next_update),
                   TT_LS("effect", "its serials stay refused; replace the CRL and send SIGHUP"));
    }
}

/* Loads the identity, CRL and policy files as a snapshot update, or fails with err set. */
static int load_files(const struct tt_config *cfg, struct tt_snapshot_update *u, char *err,
                      size_t errlen)
{
    struct tt_identity *id =
        tt_identity_load(cfg->cert_path, cfg->key_path, cfg->bundle_path, err, errlen);
    struct tt_policy *policy = NULL;
    struct tt_crls *crls = NULL;

    if (id == NULL)
        return TT_E_IDENTITY;
    crls = tt_crls_load((const char *const *)cfg->crl_paths, cfg->n_crls, id, err, errlen);
    if (crls == NULL) {
        tt_identity_unref(id);
        return TT_E_IDENTITY;
    }
    if (cfg->policy_path != NULL) {
        policy = tt_policy_load_file(cfg->policy_path, err, errlen);
        if (policy == NULL)
            goto err_identity;
        int n = snprintf(err, errlen, "%s: ", cfg->policy_path);
        if (n > 0 && (size_t)n < errlen &&
            tt_policy_check_opaque_enforceable(
                policy, tt_identity_spiffe_id(id), cfg->transparent.opaque_ports,
                cfg->transparent.n_opaque_ports, err + n, errlen - (size_t)n) < 0)
            goto err_policy;
    }
    memset(u, 0, sizeof(*u));
    u->replace = TT_SNAP_IDENTITY | TT_SNAP_POLICY | TT_SNAP_CRLS;
    u->identity = id;
    u->policy = policy;
    u->crls = crls;
    if (cfg->n_services > 0) {
        /* Checked by the configuration already; a failure here is memory. */
        u->services = tt_services_new(cfg->services, cfg->n_services, NULL, err, errlen);
        if (u->services == NULL)
            goto err_policy;
        u->replace |= TT_SNAP_SERVICES;
    }
    warn_expired_crls(crls);
    return 0;

err_policy:
    tt_policy_unref(policy);
err_identity:
    tt_crls_unref(crls);
    tt_identity_unref(id);
    return TT_E_POLICY;
}

/* The slot's wake callback, on the publisher's thread with the slot locked: logs the new
 * snapshot and wakes every worker that can be woken; before any can (control mode, first
 * certificate), asks the main loop to start them. */
static void on_published(void *arg, const struct tt_snapshot *s)
{
    struct tt_runtime *rt = arg;
    unsigned n = __atomic_load_n(&rt->n_wakeable, __ATOMIC_ACQUIRE);
    const struct tt_cert_info *leaf = tt_identity_leaf(s->identity);

    tt_log(TT_LOG_INFO, "snapshot_applied", TT_LU("generation", s->generation),
           TT_LS("spiffe_id", leaf->spiffe_id), TT_LS("serial", leaf->serial),
           TT_LI("not_after", leaf->not_after),
           TT_LS("policy_version", s->policy != NULL ? tt_policy_version(s->policy) : NULL));
    if (n == 0)
        uv_async_send(&rt->first_snapshot);
    for (unsigned i = 0; i < n; i++)
        tt_worker_wake(&rt->workers[i]);
}

/* SIGHUP: rebuild identity and policy from the files; a bad file keeps the old ones. */
static void runtime_reload(struct tt_runtime *rt)
{
    struct tt_snapshot_update u;
    char err[TT_ERR_MAX];

    if (rt->cfg->has_control) {
        tt_log(TT_LOG_INFO, "reload_ignored",
               TT_LS("reason", "identity and policy come from the control plane"));
        return;
    }
    if (load_files(rt->cfg, &u, err, sizeof(err)) < 0 ||
        tt_snapshot_slot_publish(&rt->slot, &u) < 0) {
        rt->reloads_failed++;
        tt_log(TT_LOG_ERROR, "reload_refused", TT_LS("error", err),
               TT_LU("generation", tt_snapshot_slot_generation(&rt->slot)));
    }
}

static size_t live_connections(struct tt_runtime *rt)
{
    size_t n = 0;
    for (unsigned i = 0; i < rt->n_workers; i++)
        n += tt_worker_conn_count(&rt->workers[i]);
    return n;
}

/* Ends the process's serving: nothing is woken any more, the workers close everything,
 * the main loop's handles close. */
static void runtime_stop(struct tt_runtime *rt)
{
    if (rt->stopping)
        return;
    rt->stopping = true;
    /* After this no publish touches a worker's async handle or first_snapshot, both of
     * which close below. */
    tt_snapshot_slot_set_wake(&rt->slot, NULL, NULL);
    for (unsigned i = 0; i < rt->n_workers; i++)
        tt_worker_stop(&rt->workers[i]);
    tt_capture_close(rt->capture);
    rt->capture = NULL;
    tt_admin_close(rt->admin);
    tt_admin_close(rt->health);
    tt_admin_close(rt->metrics);
    rt->admin = rt->health = rt->metrics = NULL;
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
    if (rt->draining || rt->stopping)
        return;
    rt->draining = true;
    tt_log(TT_LOG_INFO, "draining", TT_LS("cause", why), TT_LU("connections", live_connections(rt)),
           TT_LU("drain_timeout_ms", rt->cfg->drain_timeout_ms));
    for (unsigned i = 0; i < rt->n_workers; i++)
        tt_worker_drain(&rt->workers[i]);
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
    struct tt_snapshot *s = tt_snapshot_slot_get(&rt->slot);
    bool started = rt->workers_started;

    memset(v, 0, sizeof(*v));
    v->listeners = rt->cfg->listeners;
    v->n_listeners = rt->cfg->n_listeners;
    v->workers = rt->worker_metrics;
    v->n_workers = started ? rt->n_workers : 0;
    v->started_unix = rt->started_unix;
    v->reloads_failed = rt->reloads_failed;
    v->rotations = tt_snapshot_slot_rotations(&rt->slot);
    struct tt_buf_pool_stats pool;
    tt_buf_pool_stats(&pool);
    v->buffer_slabs_allocated = pool.slabs_allocated;
    v->buffer_oversize_allocations = pool.oversize_allocations;
    v->draining = rt->draining;
    v->max_connections = (uint64_t)rt->settings.max_connections * rt->cfg->workers;
    v->open_files_limit = rt->nofile;
    if (rt->cfg->transparent.enabled) {
        v->transparent = &rt->cfg->transparent;
        v->balancers = rt->balancers;
    }
    if (s != NULL) {
        v->identity = s->identity;
        v->policy = s->policy;
        v->crls = s->crls;
        v->snapshot_unix = s->created_unix;
        v->snapshot_generation = s->generation;
        /* Ready while not draining and the certificate can still be presented: an
         * unreachable control plane does not make a serving sidecar unready. */
        v->ready =
            !v->draining && started && tt_now_unix() < tt_identity_leaf(s->identity)->not_after;
    }
    if (rt->capture != NULL) {
        tt_capture_status(rt->capture, &rt->capture_status);
        v->capture = &rt->capture_status;
        /* A pod whose capture does not work must not take traffic (DESIGN.md). */
        v->ready = v->ready && rt->capture_status.ready;
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

/* Each worker's share of the connections (see runtime.h). */
unsigned tt_runtime_worker_share(unsigned requested, uint64_t nofile, unsigned workers,
                                 size_t n_listeners, uint64_t *reserve, bool *capped)
{
    uint64_t kept =
        TT_FD_RESERVE_BASE + (uint64_t)workers * (TT_FD_RESERVE_PER_WORKER + n_listeners);
    uint64_t share = ((uint64_t)requested + workers - 1) / workers;
    uint64_t fits;

    if (reserve != NULL)
        *reserve = kept;
    *capped = false;
    if (nofile == UINT64_MAX)
        return (unsigned)share;
    fits = nofile > kept ? (nofile - kept) / 2 / workers : 0;
    if (share > fits) {
        share = fits > 0 ? fits : 1;
        *capped = true;
    }
    return (unsigned)share;
}

/* Raises the soft RLIMIT_NOFILE to the hard limit (tt_nofile_raise) and returns the soft
 * limit now in force, UINT64_MAX for none. A refusal is logged and the old limit kept. */
static uint64_t raise_nofile(void)
{
    uint64_t soft, hard;
    int err = tt_nofile_raise(&soft, &hard);

    if (err < 0)
        tt_log(TT_LOG_WARN, "open_files_limit_kept", TT_LU("open_files_limit", soft),
               TT_LU("hard_limit", hard), TT_LS("error", tt_strerror(err)));
    return soft;
}

/* Each worker's share of --max-connections, capped to what the descriptors allow; says
 * so once when it caps. */
static unsigned connection_share(struct tt_runtime *rt)
{
    const struct tt_config *cfg = rt->cfg;
    uint64_t reserve;
    bool capped;
    unsigned share = tt_runtime_worker_share(cfg->max_connections, rt->nofile, cfg->workers,
                                             cfg->n_listeners, &reserve, &capped);

    if (capped)
        tt_log(TT_LOG_WARN, "max_connections_capped", TT_LU("requested", cfg->max_connections),
               TT_LU("max_connections", (uint64_t)share * cfg->workers),
               TT_LU("open_files_limit", rt->nofile), TT_LU("reserved_fds", reserve),
               TT_LU("workers", cfg->workers),
               TT_LS("reason", "each connection holds two sockets; raise the hard open-files "
                               "limit (ulimit -Hn, LimitNOFILE=) to admit more"));
    return share;
}

/* Starts every worker; the slot holds a snapshot. A failure stops the process. */
static void start_workers(struct tt_runtime *rt)
{
    const struct tt_config *cfg = rt->cfg;

    rt->workers_started = true;
    for (unsigned i = 0; i < cfg->workers; i++) {
        struct tt_worker *w = &rt->workers[i];
        int r = tt_worker_init(w, i, &rt->settings, &rt->listen_fds[i * cfg->n_listeners]);
        if (r < 0) {
            tt_log(TT_LOG_ERROR, "worker_failed", TT_LU("worker", i),
                   TT_LS("error", tt_strerror(r)));
            break;
        }
        rt->worker_metrics[i] = w->metrics;
        rt->balancers[i] = w->balancer;
        rt->n_workers = i + 1;
        /* Wakeable from here on: a publish from now wakes it; one before is taken when
         * its thread starts. */
        __atomic_store_n(&rt->n_wakeable, i + 1, __ATOMIC_RELEASE);
        r = tt_worker_start(w);
        if (r < 0) {
            tt_log(TT_LOG_ERROR, "worker_failed", TT_LU("worker", i),
                   TT_LS("error", tt_strerror(r)));
            break;
        }
    }
    if (rt->n_workers < cfg->workers || !rt->workers[rt->n_workers - 1].thread_started) {
        rt->exit_code = TT_EXIT_RUNTIME;
        runtime_stop(rt);
        return;
    }
    if (cfg->transparent.enabled && cfg->transparent.check_interval_ms > 0) {
        rt->capture = tt_capture_start(
            &rt->loop, &cfg->transparent.canary_outbound, &cfg->transparent.canary_inbound,
            cfg->transparent.check_interval_ms, TT_CAPTURE_PROBE_TIMEOUT_MS);
        if (rt->capture == NULL) {
            rt->exit_code = TT_EXIT_RUNTIME;
            runtime_stop(rt);
            return;
        }
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

    if (!rt->workers_started && !rt->stopping)
        start_workers(rt);
}

/* Binds every listener for every worker into rt->listen_fds (worker-major). Port 0 is
 * resolved by the first bind so every worker shares the port. Prints the failure. */
static int bind_all(struct tt_runtime *rt)
{
    struct tt_config *cfg = (struct tt_config *)rt->cfg; /* kernel-chosen ports written back */
    size_t n = cfg->n_listeners * cfg->workers;

    rt->listen_fds = malloc((n ? n : 1) * sizeof(*rt->listen_fds));
    if (rt->listen_fds == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        rt->listen_fds[i] = -1;
    for (size_t l = 0; l < cfg->n_listeners; l++) {
        for (unsigned w = 0; w < cfg->workers; w++) {
            int r = tt_listener_bind(&cfg->listeners[l].listen, w == 0,
                                     &rt->listen_fds[w * cfg->n_listeners + l]);
            if (r < 0) {
                fprintf(stderr, "tether-sidecar: cannot listen on %s (%s): %s\n",
                        cfg->listeners[l].listen.text, cfg->listeners[l].name, tt_strerror(r));
                return r;
            }
        }
    }
    return 0;
}

/* Control mode: the control client, registering the inbound listeners' addresses. */
static struct tt_cpclient *make_cpclient(struct tt_runtime *rt, char *err, size_t errlen)
{
    const struct tt_config *cfg = rt->cfg;
    size_t n_workload = cfg->transparent.enabled ? cfg->transparent.n_workload_ports : 0;
    const char **inbound = calloc(cfg->n_listeners + n_workload + 1, sizeof(*inbound));
    char(*workload)[TT_ADDR_TEXT_MAX] = calloc(n_workload + 1, sizeof(*workload));
    struct tt_cpclient_opts opts = {
        .control = &cfg->control,
        .control_bundle_path = cfg->control_bundle_path,
        .join_token_path = cfg->join_token_path,
        .jwt_path = cfg->jwt_path,
        .spiffe_id = cfg->spiffe_id,
        .inbound_addresses = inbound,
        .slot = &rt->slot,
        .opaque_ports = cfg->transparent.opaque_ports,
        .n_opaque_ports = cfg->transparent.n_opaque_ports,
    };
    struct tt_cpclient *cp;

    if (inbound == NULL || workload == NULL) {
        free(inbound);
        free(workload);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        if (cfg->listeners[i].kind == TT_LISTENER_INBOUND && !cfg->listeners[i].transparent)
            inbound[opts.n_inbound_addresses++] = cfg->listeners[i].listen.text;
    }
    /* Transparent mode registers the workload's ports at the pod address: what callers
     * dial, which the capture sends to 15006. */
    for (size_t i = 0; i < n_workload; i++) {
        const struct tt_addr *ip = &cfg->transparent.pod_ip;
        char host[TT_ADDR_TEXT_MAX - 8];
        snprintf(host, sizeof(host), "%.*s", (int)sizeof(host) - 1, ip->text);
        char *colon = strrchr(host, ':'); /* "10.0.0.2:0" or "[fd00::2]:0" */
        if (colon != NULL)
            *colon = '\0';
        snprintf(workload[i], sizeof(workload[i]), "%s:%u", host,
                 (unsigned)cfg->transparent.workload_ports[i]);
        inbound[opts.n_inbound_addresses++] = workload[i];
    }
    cp = tt_cpclient_new(&opts, err, errlen);
    free(inbound);
    free(workload);
    if (cp != NULL && tt_cpclient_start(cp) < 0) {
        snprintf(err, errlen, "cannot start the control thread");
        tt_cpclient_free(cp);
        cp = NULL;
    }
    return cp;
}

/* Transparent mode: health (/ready, /live) and metrics (/stats) at the pod address, for
 * kubelet and scrapers (tether-iptables never captures 15020 and 15021). Prints the
 * failure. */
static int start_pod_servers(struct tt_runtime *rt)
{
    const struct tt_config *cfg = rt->cfg;
    int r = 0;

    rt->health =
        tt_admin_new_scoped(&rt->loop, &cfg->health, &admin_ops, rt, 0, TT_ADMIN_ROUTES_HEALTH, &r);
    if (rt->health == NULL) {
        fprintf(stderr, "tether-sidecar: cannot serve health on %s: %s\n", cfg->health.text,
                tt_strerror(r));
        return r;
    }
    rt->metrics = tt_admin_new_scoped(&rt->loop, &cfg->metrics, &admin_ops, rt, 0,
                                      TT_ADMIN_ROUTES_METRICS, &r);
    if (rt->metrics == NULL) {
        fprintf(stderr, "tether-sidecar: cannot serve metrics on %s: %s\n", cfg->metrics.text,
                tt_strerror(r));
        return r;
    }
    return 0;
}

/* Runs the sidecar (see runtime.h). */
int tt_runtime_run(const struct tt_config *cfg)
{
    struct tt_runtime rt_storage, *rt = &rt_storage;
    struct tt_snapshot_update first;
    char err[TT_ERR_MAX];
    int r;

    memset(rt, 0, sizeof(*rt));
    rt->cfg = cfg;
    rt->started_unix = tt_now_unix();
    rt->exit_code = TT_EXIT_CONFIG;
    tt_snapshot_slot_init(&rt->slot);
    signal(SIGPIPE, SIG_IGN);

    rt->settings = (struct tt_worker_settings){
        .listeners = cfg->listeners,
        .n_listeners = cfg->n_listeners,
        .slot = &rt->slot,
        .handshake_timeout_ms = cfg->handshake_timeout_ms,
        .connect_timeout_ms = cfg->connect_timeout_ms,
        .idle_timeout_ms = cfg->idle_timeout_ms,
        .request_timeout_ms = cfg->request_timeout_ms,
        .request_log_sample = cfg->request_log_sample,
        .pool = cfg->pool,
        .http_streams = cfg->http_streams,
        .outbound_detect_ms = cfg->transparent.detect_ms != 0 ? cfg->transparent.detect_ms
                                                              : TT_DEFAULT_DETECT_TIMEOUT_MS,
        .transparent = &cfg->transparent,
    };
    if (!cfg->has_control) {
        if (load_files(cfg, &first, err, sizeof(err)) < 0) {
            fprintf(stderr, "tether-sidecar: %s\n", err);
            goto out;
        }
        if (tt_snapshot_slot_publish(&rt->slot, &first) < 0) {
            fprintf(stderr, "tether-sidecar: out of memory\n");
            goto out;
        }
    }
    if (bind_all(rt) < 0)
        goto out_fds;
    rt->workers = calloc(cfg->workers, sizeof(*rt->workers));
    rt->worker_metrics = calloc(cfg->workers, sizeof(*rt->worker_metrics));
    rt->balancers = calloc(cfg->workers, sizeof(*rt->balancers));
    if (rt->workers == NULL || rt->worker_metrics == NULL || rt->balancers == NULL ||
        uv_loop_init(&rt->loop) < 0)
        goto out_fds;
    rt->admin = tt_admin_new(&rt->loop, &cfg->admin, &admin_ops, rt,
                             cfg->admin_remote_control ? TT_ADMIN_F_REMOTE_CONTROL : 0, &r);
    if (rt->admin == NULL) {
        fprintf(stderr, "tether-sidecar: cannot serve --admin %s: %s\n", cfg->admin.text,
                tt_strerror(r));
        uv_run(&rt->loop, UV_RUN_DEFAULT); /* the failed server's closes free it */
        goto out_loop;
    }
    if (cfg->transparent.enabled && start_pod_servers(rt) < 0) {
        tt_admin_close(rt->admin);
        tt_admin_close(rt->health);
        tt_admin_close(rt->metrics);
        uv_run(&rt->loop, UV_RUN_DEFAULT);
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
    tt_snapshot_slot_set_wake(&rt->slot, on_published, rt);

    if (cfg->has_control) {
        rt->cpclient = make_cpclient(rt, err, sizeof(err));
        if (rt->cpclient == NULL) {
            fprintf(stderr, "tether-sidecar: %s\n", err);
            runtime_stop(rt);
            uv_run(&rt->loop, UV_RUN_DEFAULT);
            goto out_loop;
        }
    }
    /* Once nothing can fail any more (a configuration error stays one line on stderr) and
     * before any worker starts: each admits its share, so no counter is shared. */
    rt->nofile = raise_nofile();
    rt->settings.max_connections = connection_share(rt);
    rt->exit_code = TT_EXIT_OK;
    if (!cfg->has_control && cfg->policy_path == NULL)
        tt_log(TT_LOG_WARN, "no_policy",
               TT_LS("effect", "every caller with a valid mesh certificate is allowed"));
    if (tt_admin_addr_is_remote(&cfg->admin))
        tt_log(TT_LOG_WARN, "admin_not_loopback", TT_LS("admin", cfg->admin.text),
               TT_LS("effect", cfg->admin_remote_control
                                   ? "every admin route, /quitquitquit included, is served to "
                                     "anyone who can reach this address "
                                     "(--admin-allow-remote-control)"
                                   : "only /ready, /live and /stats are served on addresses "
                                     "other than loopback (--admin-allow-remote-control serves "
                                     "the rest there too)"));
    tt_log(TT_LOG_INFO, "started", TT_LS("admin", cfg->admin.text),
           TT_LU("admin_port", (uint64_t)tt_admin_port(rt->admin)), TT_LU("workers", cfg->workers),
           TT_LU("listeners", cfg->n_listeners),
           TT_LS("mode", cfg->has_control ? "control" : "files"),
           TT_LS("control", cfg->has_control ? cfg->control.text : NULL),
           TT_LU("max_connections", (uint64_t)rt->settings.max_connections * cfg->workers),
           TT_LU("open_files_limit", rt->nofile), TT_LS("pool", cfg->pool ? "on" : "off"),
           TT_LS("malloc", cfg->allocator != NULL ? cfg->allocator : "libc"));
    if (!cfg->has_control)
        start_workers(rt);
    uv_run(&rt->loop, UV_RUN_DEFAULT);

    /* The workers were stopped with the wake detached (runtime_stop); the control thread
     * may still publish into the slot, which wakes nobody now. */
    tt_cpclient_free(rt->cpclient);
    for (unsigned i = 0; i < rt->n_workers; i++)
        tt_worker_done(&rt->workers[i]);
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
    free(rt->worker_metrics);
    free(rt->balancers);
out:
    tt_snapshot_slot_done(&rt->slot);
    return rt->exit_code;
}
