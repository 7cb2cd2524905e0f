/* The service table from the cluster: list/watch of Services, EndpointSlices and Pods,
 * and the webhook's caBundle (see k8s_watch.h). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/spiffe.h"
#include "core/util.h"
#include "k8s_client.h"
#include "k8s_watch.h"
#include "store.h"
#include "tls/crypto.h"

/* Bounds on what the API server sends. */
#define MAX_OBJECTS    100000            /* objects of one resource kept */
#define MAX_PAGES      1000              /* pages of one list */
#define MAX_EVENT_LEN  (2 * 1024 * 1024) /* one watch event line */
#define MAX_NAME       253               /* a namespace, name or label value */
#define MAX_PORTS      256               /* ports of a Service or a slice */
#define MAX_SLICE_EPS  1000              /* endpoints of one slice (the API's own limit) */
#define MAX_EP_ADDRS   100               /* addresses of one endpoint */
#define MAX_RV         128               /* a resourceVersion */
#define LIST_LIMIT     500
#define SVC_NAME_LABEL "kubernetes.io/service-name"
/* A watch event's sentinel returns from the stream callback. */
#define GONE    (-ESTALE)  /* 410: list again */
#define BAD_EVT (-EBADMSG) /* another ERROR event, or not an event: list again */

struct cp_k8s_watch;

/* Turns one object of a kind into what the table needs (a small JSON object), or NULL
 * when it does not fit (why in *why). *key gets "namespace/name". */
typedef json_t *(*extract_fn)(json_t *obj, char *key, size_t keylen, const char **why);

/* One watched resource: its cache of extracted objects by "namespace/name" and the
 * list/watch state. cache, rv, synced and the counters are guarded by w->mu. */
struct informer {
    struct cp_k8s_watch *w;
    const char *name; /* "services" */
    const char *path; /* "/api/v1/services" */
    extract_fn extract;
    json_t *cache;
    char rv[MAX_RV];
    bool synced;
    uint64_t lists, watches, gone, errors, events;
    char last_error[256];
    struct cp_k8s_slot slot;
    pthread_t th;
    bool started;
    /* The watch stream being read (this thread only). */
    char *line;      /* the event being assembled (watch thread) */
    size_t line_len; /* bytes in line */
    size_t line_cap; /* bytes allocated, grown by doubling */
    int event_rc;    /* a GONE or error that ended the stream */
    bool changed;    /* an event changed the cache since the table was built */
    bool streamed;   /* the watch was answered 200 (a later drop starts the backoff over) */
};

enum { INF_SERVICES, INF_SLICES, INF_PODS, INF__COUNT };

struct cp_k8s_watch {
    struct cp_k8s_client *client;
    struct cp_store *store;
    char td[256];
    unsigned watch_timeout_s;
    uint64_t backoff_min_ms, backoff_max_ms;
    pthread_mutex_t mu; /* the caches, the stop flag */
    pthread_cond_t cv;  /* signalled on stop */
    bool stopping;
    struct informer inf[INF__COUNT];
    uint64_t tables; /* how many tables were pushed that changed what sidecars receive */
    size_t last_services, last_endpoints, last_dropped;
    /* The webhook's caBundle (its own lock: the store's change callback takes it while
     * another thread may hold mu inside cp_store_kubernetes_set). */
    char *webhook;
    pthread_mutex_t wh_mu;
    pthread_cond_t wh_cv;
    bool wh_dirty;
    bool wh_stop;
    char *wh_patched; /* the bundle last accepted by the server */
    uint64_t wh_patches, wh_failures;
    char wh_error[256];
    struct cp_k8s_slot wh_slot;
    pthread_t wh_th;
    bool wh_started;
};

/* ---- small helpers ---- */

/* A string member that is at most max bytes, or NULL. */
static const char *str_at(json_t *o, const char *key, size_t max)
{
    json_t *v = json_object_get(o, key);

    if (!json_is_string(v) || json_string_length(v) > max)
        return NULL;
    return json_string_value(v);
}

/* The metadata's namespace and name as "namespace/name" in key. Returns false when
 * either is missing or too long. */
static bool meta_key(json_t *obj, char *key, size_t keylen, const char **ns, const char **name)
{
    json_t *md = json_object_get(obj, "metadata");

    *ns = str_at(md, "namespace", MAX_NAME);
    *name = str_at(md, "name", MAX_NAME);
    /* Names as the API server allows them: a '/' would confuse keys and identities. */
    if (!cp_k8s_name_valid(*ns, 63, false) || !cp_k8s_name_valid(*name, MAX_NAME, true))
        return false;
    return (size_t)snprintf(key, keylen, "%s/%s", *ns, *name) < keylen;
}

/* A port number 1..65535 from v, or 0. */
static int port_of(json_t *v)
{
    json_int_t p = json_is_integer(v) ? json_integer_value(v) : 0;

    return p >= 1 && p <= 65535 ? (int)p : 0;
}

/* Sleeps ms unless the watcher stops first. Returns false when stopping. */
static bool nap(struct cp_k8s_watch *w, uint64_t ms)
{
    struct timespec ts;
    bool stop;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    while (!w->stopping && pthread_cond_timedwait(&w->cv, &w->mu, &ts) != ETIMEDOUT)
        ;
    stop = w->stopping;
    pthread_mutex_unlock(&w->mu);
    return !stop;
}

static bool stopping(struct cp_k8s_watch *w)
{
    bool s;

    pthread_mutex_lock(&w->mu);
    s = w->stopping;
    pthread_mutex_unlock(&w->mu);
    return s;
}

/* The next backoff after `cur`: doubled up to the cap, then a random 50..100% of it
 * (jitter, so many control planes do not reconnect in step). *cur keeps the un-jittered
 * value; the return is what to wait. */
static uint64_t backoff_next(struct cp_k8s_watch *w, uint64_t *cur)
{
    uint32_t r;

    *cur = *cur == 0 ? w->backoff_min_ms : *cur * 2;
    if (*cur > w->backoff_max_ms)
        *cur = w->backoff_max_ms;
    tt_crypto_random(&r, sizeof(r));
    return *cur / 2 + (r % (*cur / 2 + 1));
}

/* Percent-encodes s (RFC 3986 unreserved characters kept) into out. False when too long. */
static bool query_escape(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        bool keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || strchr("-._~", ch) != NULL;

        if (o + 4 >= outlen)
            return false;
        if (keep) {
            out[o++] = (char)ch;
        } else {
            out[o++] = '%';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        }
    }
    out[o] = '\0';
    return true;
}

/* ---- what each kind gives ---- */

/* The TCP ports of a Service's spec.ports or an EndpointSlice's ports, appended to `ports`
 * as {"name", "port"} (other protocols and ports without a number are skipped). Returns
 * false with *why set when there are more than MAX_PORTS. */
static bool tcp_ports(json_t *list, json_t *ports, const char **why)
{
    size_t i;
    json_t *p;

    if (json_array_size(list) > MAX_PORTS) {
        *why = "too many ports";
        return false;
    }
    json_array_foreach(list, i, p)
    {
        const char *proto = str_at(p, "protocol", 16), *pname = str_at(p, "name", MAX_NAME);
        int port = port_of(json_object_get(p, "port"));

        if ((proto != NULL && strcmp(proto, "TCP") != 0) || port == 0)
            continue;
        json_array_append_new(ports,
                              json_pack("{s:s,s:i}", "name", pname ? pname : "", "port", port));
    }
    return true;
}

/* A Service: {"ns", "name", "ips": [cluster IPs], "headless", "ports": [{"name", "port"}]}
 * (TCP ports only). NULL for a Service without a cluster IP that is not headless
 * (ExternalName, or not allocated yet). */
static json_t *extract_service(json_t *obj, char *key, size_t keylen, const char **why)
{
    json_t *spec = json_object_get(obj, "spec"), *ips = json_array(), *ports = json_array(), *v;
    const char *ns, *name, *cip = str_at(spec, "clusterIP", 64);
    json_t *list = json_object_get(spec, "clusterIPs");
    size_t i;
    bool headless = cip != NULL && strcmp(cip, "None") == 0;

    if (ips == NULL || ports == NULL)
        goto fail;
    if (!meta_key(obj, key, keylen, &ns, &name)) {
        *why = "metadata.namespace and metadata.name must be valid names";
        goto fail;
    }
    if (!headless && json_is_array(list) && json_array_size(list) <= 2) {
        json_array_foreach(list, i, v)
        {
            if (json_is_string(v) && json_string_length(v) <= 64)
                json_array_append(ips, v);
        }
    } else if (!headless && cip != NULL && cip[0] != '\0') {
        json_array_append_new(ips, json_string(cip));
    }
    if (!headless && json_array_size(ips) == 0) {
        *why = "no cluster IP";
        goto fail;
    }
    if (!tcp_ports(json_object_get(spec, "ports"), ports, why))
        goto fail;
    return json_pack("{s:s,s:s,s:o,s:b,s:o}", "ns", ns, "name", name, "ips", ips, "headless",
                     headless, "ports", ports);
fail:
    json_decref(ips);
    json_decref(ports);
    return NULL;
}

/* An EndpointSlice: {"ns", "service", "ports": [{"name", "port"}], "endpoints":
 * [{"addresses": [...], "pod": "namespace/name"}]} with only the ready endpoints whose
 * target is a Pod (conditions.ready absent means ready, as the API documents). NULL for
 * a slice of another address type (FQDN) or without its Service's label. */
static json_t *extract_slice(json_t *obj, char *key, size_t keylen, const char **why)
{
    json_t *labels = json_object_get(json_object_get(obj, "metadata"), "labels");
    const char *ns, *name, *svc = str_at(labels, SVC_NAME_LABEL, MAX_NAME);
    const char *type = str_at(obj, "addressType", 16);
    json_t *ports = json_array(), *eps = json_array(), *list, *e;
    size_t i, j;

    if (ports == NULL || eps == NULL)
        goto fail;
    if (!meta_key(obj, key, keylen, &ns, &name)) {
        *why = "metadata.namespace and metadata.name must be valid names";
        goto fail;
    }
    if (svc == NULL || type == NULL || (strcmp(type, "IPv4") != 0 && strcmp(type, "IPv6") != 0)) {
        *why = "not an IPv4 or IPv6 slice of a Service";
        goto fail;
    }
    if (!tcp_ports(json_object_get(obj, "ports"), ports, why))
        goto fail;
    list = json_object_get(obj, "endpoints");
    if (json_array_size(list) > MAX_SLICE_EPS) {
        *why = "too many endpoints";
        goto fail;
    }
    json_array_foreach(list, i, e)
    {
        json_t *ready = json_object_get(json_object_get(e, "conditions"), "ready");
        json_t *ref = json_object_get(e, "targetRef"), *addrs = json_object_get(e, "addresses");
        const char *kind = str_at(ref, "kind", 64), *pns = str_at(ref, "namespace", MAX_NAME);
        const char *pod = str_at(ref, "name", MAX_NAME);
        json_t *out, *a;
        char pk[2 * MAX_NAME + 2];

        if (json_is_false(ready) || kind == NULL || strcmp(kind, "Pod") != 0 ||
            !cp_k8s_name_valid(pod, MAX_NAME, true) ||
            (pns != NULL && !cp_k8s_name_valid(pns, 63, false)) || !json_is_array(addrs) ||
            json_array_size(addrs) > MAX_EP_ADDRS)
            continue;
        snprintf(pk, sizeof(pk), "%s/%s", pns ? pns : ns, pod);
        out = json_array();
        json_array_foreach(addrs, j, a)
        {
            if (json_is_string(a) && json_string_length(a) <= 64)
                json_array_append(out, a);
        }
        json_array_append_new(eps, json_pack("{s:o,s:s}", "addresses", out, "pod", pk));
    }
    return json_pack("{s:s,s:s,s:o,s:o}", "ns", ns, "service", svc, "ports", ports, "endpoints",
                     eps);
fail:
    json_decref(ports);
    json_decref(eps);
    return NULL;
}

/* A Pod: {"sa": spec.serviceAccountName, "default" when absent}. */
static json_t *extract_pod(json_t *obj, char *key, size_t keylen, const char **why)
{
    json_t *spec = json_object_get(obj, "spec");
    const char *ns, *name, *sa = str_at(spec, "serviceAccountName", MAX_NAME);

    if (!meta_key(obj, key, keylen, &ns, &name)) {
        *why = "metadata.namespace and metadata.name must be valid names";
        return NULL;
    }
    if (sa == NULL || sa[0] == '\0')
        sa = str_at(spec, "serviceAccount", MAX_NAME); /* the deprecated alias */
    if (sa == NULL || sa[0] == '\0')
        sa = "default";
    if (!cp_k8s_name_valid(sa, MAX_NAME, true)) {
        *why = "spec.serviceAccountName is not a valid name";
        return NULL;
    }
    return json_pack("{s:s}", "sa", sa);
}

/* ---- the table ---- */

struct table {
    struct cp_service_spec *svcs;
    size_t n, cap;
    struct cp_endpoint_spec *eps; /* every service's endpoints, one after another */
    size_t n_eps, cap_eps;
    char **strs; /* what the specs point to */
    size_t n_strs, cap_strs;
    bool nomem;
};

static void *grow(void *v, size_t *cap, size_t n, size_t size, bool *nomem)
{
    void *nv;
    size_t c;

    if (n < *cap)
        return v;
    c = *cap ? *cap * 2 : 16;
    nv = realloc(v, c * size);
    if (nv == NULL) {
        *nomem = true;
        return NULL;
    }
    *cap = c;
    return nv;
}

/* Keeps a copy of s in the table. NULL when out of memory. */
static const char *keep(struct table *t, const char *s)
{
    char **v = grow(t->strs, &t->cap_strs, t->n_strs, sizeof(*v), &t->nomem);
    char *d;

    if (v == NULL)
        return NULL;
    t->strs = v;
    if ((d = strdup(s)) == NULL) {
        t->nomem = true;
        return NULL;
    }
    t->strs[t->n_strs++] = d;
    return d;
}

static void table_done(struct table *t)
{
    for (size_t i = 0; i < t->n_strs; i++)
        free(t->strs[i]);
    free(t->strs);
    free(t->svcs);
    free(t->eps);
}

/* "IP:PORT" or "[IPv6]:PORT" into out. */
static void ip_port(const char *ip, int port, char *out, size_t outlen)
{
    bool v6 = strchr(ip, ':') != NULL;

    snprintf(out, outlen, "%s%s%s:%d", v6 ? "[" : "", ip, v6 ? "]" : "", port);
}

/* Adds one endpoint to the table's endpoint array. */
static void add_ep(struct table *t, const char *addr, const char *id)
{
    struct cp_endpoint_spec *v = grow(t->eps, &t->cap_eps, t->n_eps, sizeof(*v), &t->nomem);
    const char *a, *i;

    if (v == NULL)
        return;
    t->eps = v; /* at once: realloc may have moved it */
    a = keep(t, addr);
    i = keep(t, id);
    if (a == NULL || i == NULL)
        return;
    t->eps[t->n_eps].address = a;
    t->eps[t->n_eps].spiffe_id = i;
    t->n_eps++;
}

/* Adds a service whose endpoints are eps[first..first + n) (indices: the array moves). */
static void add_svc(struct table *t, const char *addr, const char *name, bool bare, size_t first,
                    size_t n)
{
    struct cp_service_spec *v = grow(t->svcs, &t->cap, t->n, sizeof(*v), &t->nomem);
    const char *a, *nm;

    if (v == NULL)
        return;
    t->svcs = v; /* at once: realloc may have moved it */
    a = keep(t, addr);
    nm = keep(t, name);
    if (a == NULL || nm == NULL)
        return;
    t->svcs[t->n] = (struct cp_service_spec){a, nm, bare, (void *)(uintptr_t)first, n};
    t->n++;
}

/* The endpoints of Service port `port` (its name pname) from the slices of the Service,
 * appended to t: each ready endpoint of a known pod, at the slice port of the same name,
 * with its pod's identity. Pods not seen yet are left out. Lock held. */
static void port_endpoints(struct cp_k8s_watch *w, struct table *t, json_t *slices,
                           const char *pname)
{
    json_t *pods = w->inf[INF_PODS].cache, *sl, *sp, *e, *a;
    size_t i, j, k, l;

    json_array_foreach(slices, i, sl)
    {
        int tport = 0;

        json_array_foreach(json_object_get(sl, "ports"), j, sp)
        {
            if (strcmp(json_string_value(json_object_get(sp, "name")), pname) == 0)
                tport = (int)json_integer_value(json_object_get(sp, "port"));
        }
        if (tport == 0)
            continue;
        json_array_foreach(json_object_get(sl, "endpoints"), k, e)
        {
            const char *pk = json_string_value(json_object_get(e, "pod"));
            json_t *pod = json_object_get(pods, pk);
            char id[TT_SPIFFE_MAX + 1], addr[TT_ADDR_TEXT_MAX];
            const char *slash = strchr(pk, '/');

            if (pod == NULL || slash == NULL)
                continue;
            snprintf(id, sizeof(id), "spiffe://%s/ns/%.*s/sa/%s", w->td, (int)(slash - pk), pk,
                     json_string_value(json_object_get(pod, "sa")));
            if (tt_spiffe_check(id, strlen(id), false) != 0 || tt_spiffe_reserved(id))
                continue;
            json_array_foreach(json_object_get(e, "addresses"), l, a)
            {
                ip_port(json_string_value(a), tport, addr, sizeof(addr));
                add_ep(t, addr, id);
            }
        }
    }
}

/* Builds the table from the caches: per Service, per TCP port, per cluster IP a service
 * of the ready endpoints (a headless Service: each endpoint a bare entry). Lock held. */
static void table_build(struct cp_k8s_watch *w, struct table *t)
{
    json_t *by_svc = json_object(), *sl, *svc, *p, *ip;
    const char *key;
    char k[2 * MAX_NAME + 2], addr[TT_ADDR_TEXT_MAX];
    size_t i, j;

    if (by_svc == NULL) {
        t->nomem = true;
        return;
    }
    /* Slices by their Service's "namespace/name". */
    json_object_foreach(w->inf[INF_SLICES].cache, key, sl)
    {
        json_t *arr;

        snprintf(k, sizeof(k), "%s/%s", json_string_value(json_object_get(sl, "ns")),
                 json_string_value(json_object_get(sl, "service")));
        arr = json_object_get(by_svc, k);
        if (arr == NULL) {
            arr = json_array();
            json_object_set_new(by_svc, k, arr);
        }
        json_array_append(arr, sl);
    }
    json_object_foreach(w->inf[INF_SERVICES].cache, key, svc)
    {
        json_t *slices = json_object_get(by_svc, key);
        bool headless = json_is_true(json_object_get(svc, "headless"));

        json_array_foreach(json_object_get(svc, "ports"), i, p)
        {
            const char *pname = json_string_value(json_object_get(p, "name"));
            int port = (int)json_integer_value(json_object_get(p, "port"));
            size_t first = t->n_eps;

            port_endpoints(w, t, slices, pname);
            if (headless) {
                for (size_t e = first; e < t->n_eps && !t->nomem; e++)
                    add_svc(t, t->eps[e].address, key, true, e, 1);
                continue;
            }
            json_array_foreach(json_object_get(svc, "ips"), j, ip)
            {
                ip_port(json_string_value(ip), port, addr, sizeof(addr));
                add_svc(t, addr, key, false, first, t->n_eps - first);
            }
        }
    }
    json_decref(by_svc);
    /* Indices into pointers, now that the endpoint array has stopped moving. */
    for (size_t s = 0; s < t->n; s++)
        t->svcs[s].eps = t->eps + (uintptr_t)t->svcs[s].eps;
}

/* Pushes the table built from the caches once every resource has listed. Called by an
 * informer thread without the lock. */
static void table_push(struct cp_k8s_watch *w)
{
    struct table t = {0};
    size_t dropped = 0, n_eps = 0;
    bool ready = true;
    int rc;

    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < INF__COUNT; i++)
        ready = ready && w->inf[i].synced;
    if (!ready) {
        pthread_mutex_unlock(&w->mu);
        return;
    }
    table_build(w, &t);
    if (t.nomem) {
        pthread_mutex_unlock(&w->mu);
        tt_log(TT_LOG_ERROR, "kubernetes_table_failed", TT_LS("error", "out of memory"));
        table_done(&t);
        return;
    }
    for (size_t i = 0; i < t.n; i++)
        n_eps += t.svcs[i].n_eps;
    /* Under mu, so two threads' tables reach the store in the order they were built. */
    rc = cp_store_kubernetes_set(w->store, t.svcs, t.n, &dropped);
    if (rc > 0)
        w->tables++;
    w->last_services = t.n;
    w->last_endpoints = n_eps;
    w->last_dropped = dropped;
    pthread_mutex_unlock(&w->mu);
    if (rc < 0)
        tt_log(TT_LOG_ERROR, "kubernetes_table_failed", TT_LS("error", strerror(-rc)));
    else if (rc > 0)
        tt_log(TT_LOG_INFO, "kubernetes_table", TT_LU("services", t.n), TT_LU("endpoints", n_eps),
               TT_LU("left_out", dropped));
    table_done(&t);
}

/* ---- list and watch ---- */

/* Records an error of inf (for status and logs). */
static void inf_error(struct informer *inf, const char *what, const char *err)
{
    pthread_mutex_lock(&inf->w->mu);
    inf->errors++;
    snprintf(inf->last_error, sizeof(inf->last_error), "%s: %.240s", what, err);
    pthread_mutex_unlock(&inf->w->mu);
    tt_log(TT_LOG_WARN, "kubernetes_error", TT_LS("resource", inf->name), TT_LS("step", what),
           TT_LS("error", err));
}

/* The message of a Status body (its "message"), or the status line's meaning. */
static void status_message(const struct cp_httpc_response *r, char *out, size_t outlen)
{
    json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
    const char *msg = json_string_value(json_object_get(doc, "message"));

    snprintf(out, outlen, "HTTP %d%s%.200s", r->status, msg ? ": " : "", msg ? msg : "");
    json_decref(doc);
}

/* Adds obj (an item of a list or a watch event's object) to cache through inf's
 * extractor; an object that does not fit is removed (it may have fitted before). */
static void cache_put(struct informer *inf, json_t *cache, json_t *obj)
{
    char key[2 * MAX_NAME + 2];
    const char *why = "unusable";
    json_t *x = inf->extract(obj, key, sizeof(key), &why);

    if (x == NULL) {
        json_t *md = json_object_get(obj, "metadata");
        const char *ns = str_at(md, "namespace", MAX_NAME), *name = str_at(md, "name", MAX_NAME);

        if (ns != NULL && name != NULL &&
            (size_t)snprintf(key, sizeof(key), "%s/%s", ns, name) < sizeof(key))
            json_object_del(cache, key);
        tt_log(TT_LOG_DEBUG, "kubernetes_object_left_out", TT_LS("resource", inf->name),
               TT_LS("namespace", ns), TT_LS("name", name), TT_LS("why", why));
        return;
    }
    if (json_object_get(cache, key) == NULL && json_object_size(cache) >= MAX_OBJECTS) {
        json_decref(x);
        tt_log(TT_LOG_WARN, "kubernetes_object_left_out", TT_LS("resource", inf->name),
               TT_LS("key", key), TT_LS("why", "too many objects"));
        return;
    }
    json_object_set_new(cache, key, x);
}

/* Lists every object (pages of LIST_LIMIT, following metadata.continue) into a new
 * cache, then swaps it in with the list's resourceVersion. Returns 0 or <0 after
 * inf_error. */
static int do_list(struct informer *inf)
{
    struct cp_k8s_watch *w = inf->w;
    json_t *cache = json_object();
    char path[2048], cont[1024] = "", esc[1200], err[512], rv[MAX_RV] = "";
    int rc = -ENOMEM;

    if (cache == NULL)
        return rc;
    for (int page = 0; page < MAX_PAGES; page++) {
        struct cp_httpc_response r;
        json_t *doc, *items, *item, *md;
        const char *c, *v;
        size_t i;

        if (!query_escape(cont, esc, sizeof(esc))) {
            inf_error(inf, "list", "continue token too long");
            rc = -EPROTO;
            goto out;
        }
        snprintf(path, sizeof(path), "%s?limit=%d%s%s", inf->path, LIST_LIMIT,
                 cont[0] ? "&continue=" : "", esc);
        rc = cp_k8s_request(w->client, &inf->slot, "GET", path, NULL, NULL, 0, NULL, NULL, 0, &r,
                            err, sizeof(err));
        if (rc != 0) {
            if (rc != -ECANCELED)
                inf_error(inf, "list", err);
            goto out;
        }
        if (r.status == 410 && cont[0]) { /* the continue token expired: start over */
            cp_httpc_response_done(&r);
            json_object_clear(cache);
            cont[0] = '\0';
            continue;
        }
        if (r.status != 200) {
            status_message(&r, err, sizeof(err));
            cp_httpc_response_done(&r);
            inf_error(inf, "list", err);
            rc = -EPROTO;
            goto out;
        }
        doc = json_loadb(r.body, r.body_len, 0, NULL);
        cp_httpc_response_done(&r);
        md = json_object_get(doc, "metadata");
        items = json_object_get(doc, "items");
        v = str_at(md, "resourceVersion", MAX_RV - 1);
        c = str_at(md, "continue", sizeof(cont) - 1);
        if (doc == NULL || v == NULL || (!json_is_array(items) && !json_is_null(items) && items)) {
            json_decref(doc);
            inf_error(inf, "list", "the answer is not a list (metadata.resourceVersion, items)");
            rc = -EPROTO;
            goto out;
        }
        json_array_foreach(items, i, item)
        {
            cache_put(inf, cache, item);
        }
        snprintf(rv, sizeof(rv), "%s", v);
        snprintf(cont, sizeof(cont), "%s", c ? c : "");
        json_decref(doc);
        if (cont[0] == '\0') {
            pthread_mutex_lock(&w->mu);
            json_decref(inf->cache);
            inf->cache = cache;
            cache = NULL;
            snprintf(inf->rv, sizeof(inf->rv), "%s", rv);
            inf->synced = true;
            inf->lists++;
            pthread_mutex_unlock(&w->mu);
            tt_log(TT_LOG_INFO, "kubernetes_listed", TT_LS("resource", inf->name),
                   TT_LS("resource_version", rv), TT_LU("pages", (uint64_t)page + 1));
            rc = 0;
            goto out;
        }
    }
    inf_error(inf, "list", "too many pages");
    rc = -EPROTO;
out:
    json_decref(cache);
    return rc;
}

/* One watch event line: updates the cache and the resourceVersion. Returns 0, GONE (an
 * ERROR event with code 410) or BAD_EVT (another ERROR, or a line that is not an event). */
static int on_event(struct informer *inf, const char *line, size_t len)
{
    json_t *ev = json_loadb(line, len, 0, NULL), *obj = json_object_get(ev, "object");
    const char *type = str_at(ev, "type", 16);
    const char *rv = str_at(json_object_get(obj, "metadata"), "resourceVersion", MAX_RV - 1);
    int rc = 0;

    if (type == NULL || !json_is_object(obj)) {
        rc = BAD_EVT;
        inf_error(inf, "watch", "an event that is not {type, object}");
        goto out;
    }
    if (strcmp(type, "ERROR") == 0) {
        json_int_t code = json_integer_value(json_object_get(obj, "code"));
        const char *msg = str_at(obj, "message", 1000);

        if (code == 410) {
            rc = GONE;
        } else {
            char e[300];

            snprintf(e, sizeof(e), "ERROR event %d: %.200s", (int)code, msg ? msg : "");
            inf_error(inf, "watch", e);
            rc = BAD_EVT;
        }
        goto out;
    }
    pthread_mutex_lock(&inf->w->mu);
    if (strcmp(type, "ADDED") == 0 || strcmp(type, "MODIFIED") == 0) {
        cache_put(inf, inf->cache, obj);
        inf->changed = true;
    } else if (strcmp(type, "DELETED") == 0) {
        char key[2 * MAX_NAME + 2];
        const char *ns, *name;

        if (meta_key(obj, key, sizeof(key), &ns, &name))
            json_object_del(inf->cache, key);
        inf->changed = true;
    } else if (strcmp(type, "BOOKMARK") != 0) {
        rv = NULL; /* an event type of a later API: skipped */
    }
    if (rv != NULL)
        snprintf(inf->rv, sizeof(inf->rv), "%s", rv);
    inf->events++;
    pthread_mutex_unlock(&inf->w->mu);
out:
    json_decref(ev);
    return rc;
}

/* The watch body as it arrives: newline-delimited events, each handled when whole. The
 * table is pushed after the last whole event of each piece. */
static int on_watch_body(void *ud, const char *data, size_t len)
{
    struct informer *inf = ud;

    inf->streamed = true;
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        char *b;
        int rc;

        if (inf->line_len + take > MAX_EVENT_LEN) {
            inf_error(inf, "watch", "an event larger than 2 MiB");
            return -EFBIG;
        }
        if (inf->line_len + take + 1 > inf->line_cap) {
            /* Doubling: an event arriving in many small pieces is copied O(n) times. */
            size_t cap = inf->line_cap ? inf->line_cap : 4096;
            while (cap < inf->line_len + take + 1)
                cap *= 2;
            b = realloc(inf->line, cap);
            if (b == NULL)
                return -ENOMEM;
            inf->line = b;
            inf->line_cap = cap;
        }
        memcpy(inf->line + inf->line_len, data, take);
        inf->line_len += take;
        data += take;
        len -= take;
        if (nl == NULL)
            break;
        data++;
        len--;
        if (inf->line_len > 0) {
            rc = on_event(inf, inf->line, inf->line_len);
            inf->line_len = 0;
            if (rc != 0)
                return rc;
        }
    }
    if (inf->changed) {
        inf->changed = false;
        table_push(inf->w);
    }
    return 0;
}

/* One watch from the current resourceVersion until the server ends it or it fails.
 * Returns 0 (ended: watch again), GONE or BAD_EVT (list again) or <0 (a dropped stream,
 * an error status: wait, then watch again from the last resourceVersion). */
static int do_watch(struct informer *inf)
{
    struct cp_k8s_watch *w = inf->w;
    struct cp_httpc_response r;
    char path[512], esc[MAX_RV * 3 + 1], rv[MAX_RV], err[512];
    int rc;

    pthread_mutex_lock(&w->mu);
    snprintf(rv, sizeof(rv), "%s", inf->rv);
    inf->watches++;
    pthread_mutex_unlock(&w->mu);
    query_escape(rv, esc, sizeof(esc));
    snprintf(path, sizeof(path),
             "%s?watch=1&resourceVersion=%s&allowWatchBookmarks=true&timeoutSeconds=%u", inf->path,
             esc, w->watch_timeout_s);
    inf->line_len = 0;
    inf->changed = false;
    inf->streamed = false;
    /* A server that goes quiet past its own timeout (plus slack) is gone. */
    rc = cp_k8s_request(w->client, &inf->slot, "GET", path, NULL, NULL, 0, on_watch_body, inf,
                        (int)(w->watch_timeout_s + 30) * 1000, &r, err, sizeof(err));
    if (rc == GONE)
        return GONE;
    if (rc != 0) {
        /* The callback has said why for its own stops. */
        if (rc != -ECANCELED && rc != -EFBIG && rc != BAD_EVT)
            inf_error(inf, "watch", err);
        if (inf->changed) { /* what came before the failure stands */
            inf->changed = false;
            table_push(w);
        }
        return rc;
    }
    if (r.status == 410) {
        cp_httpc_response_done(&r);
        return GONE;
    }
    if (r.status != 200) {
        status_message(&r, err, sizeof(err));
        cp_httpc_response_done(&r);
        inf_error(inf, "watch", err);
        return -EPROTO;
    }
    cp_httpc_response_done(&r);
    return 0;
}

/* An informer's thread: list, then watch until stopped; 410 lists again, failures wait
 * a backoff. */
static void *inf_main(void *arg)
{
    struct informer *inf = arg;
    struct cp_k8s_watch *w = inf->w;
    bool need_list = true;
    uint64_t backoff = 0;

    while (!stopping(w)) {
        int rc;

        if (need_list) {
            if (do_list(inf) != 0) {
                if (!nap(w, backoff_next(w, &backoff)))
                    break;
                continue;
            }
            need_list = false;
            backoff = 0;
            table_push(w);
        }
        rc = do_watch(inf);
        if (rc == GONE) {
            pthread_mutex_lock(&w->mu);
            inf->gone++;
            pthread_mutex_unlock(&w->mu);
            tt_log(TT_LOG_INFO, "kubernetes_relist", TT_LS("resource", inf->name),
                   TT_LS("why", "410 Gone: the resourceVersion is too old"));
            need_list = true;
            continue;
        }
        if (rc == 0) {
            backoff = 0;
            continue;
        }
        if (inf->streamed) /* it was up: a drop, not a server that keeps failing */
            backoff = 0;
        if (rc == -ECANCELED || !nap(w, backoff_next(w, &backoff)))
            break;
        /* An ERROR event other than 410 leaves us unsure of what we missed. */
        if (rc == BAD_EVT || rc == -EFBIG)
            need_list = true;
    }
    free(inf->line);
    inf->line = NULL;
    inf->line_cap = 0;
    return NULL;
}

/* ---- the webhook's caBundle ---- */

/* One PATCH of the caBundle to bundle. Returns 0 or <0 with err set. */
static int webhook_patch(struct cp_k8s_watch *w, const char *bundle, char *err, size_t errlen)
{
    char *b64 = tt_crypto_base64_encode((const uint8_t *)bundle, strlen(bundle)), *body = NULL;
    char path[512];
    struct cp_httpc_response r;
    json_t *doc;
    int rc = -ENOMEM;

    if (b64 == NULL)
        goto out;
    doc = json_pack("{s:[{s:s,s:{s:s}}]}", "webhooks", "name", CP_K8S_WEBHOOK_ENTRY, "clientConfig",
                    "caBundle", b64);
    body = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (body == NULL)
        goto out;
    snprintf(path, sizeof(path),
             "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/%s", w->webhook);
    rc = cp_k8s_request(w->client, &w->wh_slot, "PATCH", path,
                        "application/strategic-merge-patch+json", body, strlen(body), NULL, NULL, 0,
                        &r, err, errlen);
    if (rc != 0)
        goto out;
    if (r.status / 100 != 2) {
        status_message(&r, err, errlen);
        rc = -EPROTO;
    }
    cp_httpc_response_done(&r);
out:
    if (rc == -ENOMEM)
        tt_errf(err, errlen, "out of memory");
    free(b64);
    free(body);
    return rc;
}

/* The webhook thread: waits for a bundle change (or a retry), patches when the bundle
 * differs from the last one the server accepted. */
static void *wh_main(void *arg)
{
    struct cp_k8s_watch *w = arg;
    uint64_t backoff = 0, wait_ms = 0;

    for (;;) {
        char err[512], *bundle;
        int rc;

        pthread_mutex_lock(&w->wh_mu);
        if (wait_ms > 0 && !w->wh_dirty && !w->wh_stop) {
            struct timespec ts;

            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += (time_t)(wait_ms / 1000);
            ts.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&w->wh_cv, &w->wh_mu, &ts);
        }
        while (wait_ms == 0 && !w->wh_dirty && !w->wh_stop)
            pthread_cond_wait(&w->wh_cv, &w->wh_mu);
        if (w->wh_stop) {
            pthread_mutex_unlock(&w->wh_mu);
            break;
        }
        w->wh_dirty = false;
        pthread_mutex_unlock(&w->wh_mu);
        wait_ms = 0;
        bundle = cp_store_bundle_get(w->store);
        if (bundle == NULL) {
            wait_ms = backoff_next(w, &backoff);
            continue;
        }
        /* wh_patched is this thread's own: read without the lock. */
        if (bundle[0] == '\0' || (w->wh_patched != NULL && strcmp(w->wh_patched, bundle) == 0)) {
            free(bundle);
            continue;
        }
        rc = webhook_patch(w, bundle, err, sizeof(err));
        pthread_mutex_lock(&w->wh_mu);
        if (rc == 0) {
            free(w->wh_patched);
            w->wh_patched = bundle;
            bundle = NULL;
            w->wh_patches++;
            w->wh_error[0] = '\0';
        } else {
            w->wh_failures++;
            snprintf(w->wh_error, sizeof(w->wh_error), "%.250s", err);
        }
        pthread_mutex_unlock(&w->wh_mu);
        free(bundle);
        if (rc == 0) {
            backoff = 0;
            tt_log(TT_LOG_INFO, "webhook_ca_bundle_set", TT_LS("webhook_config", w->webhook),
                   TT_LS("webhook", CP_K8S_WEBHOOK_ENTRY));
        } else if (rc != -ECANCELED) {
            wait_ms = backoff_next(w, &backoff);
            tt_log(TT_LOG_WARN, "webhook_ca_bundle_failed", TT_LS("webhook_config", w->webhook),
                   TT_LS("error", err), TT_LU("retry_ms", wait_ms));
        }
    }
    return NULL;
}

/* The bundle may have changed: wake the webhook thread (see k8s_watch.h). */
void cp_k8s_watch_bundle_changed(struct cp_k8s_watch *w)
{
    if (w == NULL || w->webhook == NULL)
        return;
    pthread_mutex_lock(&w->wh_mu);
    w->wh_dirty = true;
    pthread_cond_signal(&w->wh_cv);
    pthread_mutex_unlock(&w->wh_mu);
}

/* ---- start, status, stop ---- */

/* Starts the informers and the webhook thread (see k8s_watch.h). */
struct cp_k8s_watch *cp_k8s_watch_start(const struct cp_k8s_watch_opts *o, char *err, size_t errlen)
{
    static const struct {
        const char *name, *path;
        extract_fn fn;
    } kinds[INF__COUNT] = {
        {"services", "/api/v1/services", extract_service},
        {"endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", extract_slice},
        {"pods", "/api/v1/pods", extract_pod},
    };
    struct cp_k8s_watch *w = calloc(1, sizeof(*w));

    if (w == NULL) {
        cp_k8s_client_free(o->client);
        tt_errf(err, errlen, "out of memory");
        return NULL;
    }
    w->client = o->client;
    w->store = o->store;
    snprintf(w->td, sizeof(w->td), "%s", o->trust_domain);
    w->watch_timeout_s = o->watch_timeout_s ? o->watch_timeout_s : 300;
    w->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : 200;
    w->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : 30000;
    if (w->backoff_max_ms < w->backoff_min_ms)
        w->backoff_max_ms = w->backoff_min_ms;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    pthread_mutex_init(&w->wh_mu, NULL);
    pthread_cond_init(&w->wh_cv, NULL);
    w->wh_slot = (struct cp_k8s_slot)CP_K8S_SLOT_INIT;
    for (int i = 0; i < INF__COUNT; i++) {
        struct informer *inf = &w->inf[i];

        inf->w = w;
        inf->name = kinds[i].name;
        inf->path = kinds[i].path;
        inf->extract = kinds[i].fn;
        inf->slot = (struct cp_k8s_slot)CP_K8S_SLOT_INIT;
        inf->cache = json_object();
        if (inf->cache == NULL)
            goto nomem;
    }
    if (o->webhook_config != NULL) {
        w->webhook = strdup(o->webhook_config);
        if (w->webhook == NULL)
            goto nomem;
        w->wh_dirty = true;
        if (pthread_create(&w->wh_th, NULL, wh_main, w) != 0)
            goto nothread;
        w->wh_started = true;
    }
    for (int i = 0; i < INF__COUNT; i++) {
        if (pthread_create(&w->inf[i].th, NULL, inf_main, &w->inf[i]) != 0)
            goto nothread;
        w->inf[i].started = true;
    }
    return w;
nomem:
    tt_errf(err, errlen, "out of memory");
    cp_k8s_watch_stop(w);
    return NULL;
nothread:
    tt_errf(err, errlen, "cannot start the Kubernetes watcher's threads");
    cp_k8s_watch_stop(w);
    return NULL;
}

/* The watcher's state (see k8s_watch.h). */
json_t *cp_k8s_watch_status_json(struct cp_k8s_watch *w)
{
    json_t *res = json_object(), *doc;
    bool synced = true;

    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < INF__COUNT; i++) {
        struct informer *inf = &w->inf[i];

        synced = synced && inf->synced;
        json_object_set_new(res, inf->name,
                            json_pack("{s:I,s:s,s:I,s:I,s:I,s:I,s:I,s:s?}", "objects",
                                      (json_int_t)json_object_size(inf->cache), "resource_version",
                                      inf->rv, "lists", (json_int_t)inf->lists, "watches",
                                      (json_int_t)inf->watches, "gone", (json_int_t)inf->gone,
                                      "errors", (json_int_t)inf->errors, "events",
                                      (json_int_t)inf->events, "last_error",
                                      inf->last_error[0] ? inf->last_error : NULL));
    }
    doc = json_pack("{s:b,s:o,s:I,s:I,s:I,s:I}", "synced", synced, "resources", res, "tables",
                    (json_int_t)w->tables, "services", (json_int_t)w->last_services, "endpoints",
                    (json_int_t)w->last_endpoints, "left_out", (json_int_t)w->last_dropped);
    pthread_mutex_unlock(&w->mu);
    if (doc != NULL && w->webhook != NULL) {
        pthread_mutex_lock(&w->wh_mu);
        json_object_set_new(doc, "webhook",
                            json_pack("{s:s,s:I,s:I,s:b,s:s?}", "name", w->webhook, "patches",
                                      (json_int_t)w->wh_patches, "failures",
                                      (json_int_t)w->wh_failures, "ca_bundle_set",
                                      w->wh_patched != NULL, "last_error",
                                      w->wh_error[0] ? w->wh_error : NULL));
        pthread_mutex_unlock(&w->wh_mu);
    }
    return doc;
}

/* Stops and frees the watcher (see k8s_watch.h). */
void cp_k8s_watch_stop(struct cp_k8s_watch *w)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_mutex_lock(&w->wh_mu);
    w->wh_stop = true;
    pthread_cond_broadcast(&w->wh_cv);
    pthread_mutex_unlock(&w->wh_mu);
    for (int i = 0; i < INF__COUNT; i++)
        cp_k8s_slot_cancel(&w->inf[i].slot);
    cp_k8s_slot_cancel(&w->wh_slot);
    for (int i = 0; i < INF__COUNT; i++) {
        if (w->inf[i].started)
            pthread_join(w->inf[i].th, NULL);
        json_decref(w->inf[i].cache);
        free(w->inf[i].line);
    }
    if (w->wh_started)
        pthread_join(w->wh_th, NULL);
    cp_k8s_client_free(w->client);
    free(w->webhook);
    free(w->wh_patched);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->wh_mu);
    pthread_cond_destroy(&w->wh_cv);
    free(w);
}
