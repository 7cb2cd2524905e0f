/* Per-worker counters and their summing for /stats. Each worker writes only its own
 * struct tt_metrics; plain counters use the single-writer macros of metrics.h, the
 * string-keyed parts (peers, recent failures) are guarded by the worker's mutex, which
 * only connection close, handshake failure, a finished HTTP request (once each) and the
 * /stats reader take. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/errors.h"
#include "core/util.h"
#include "metrics/metrics.h"
#include "policy/policy.h"

const uint64_t tt_hist_bounds_us[TT_HIST_BUCKETS - 1] = {
    100,   250,    500,    1000,   2500,    5000,    10000,   25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000,
};

static const char *const hs_reason_names[TT_HS__COUNT] = {
    [TT_HS_NO_CERT] = "no_cert",   [TT_HS_UNKNOWN_CA] = "unknown_ca",
    [TT_HS_EXPIRED] = "expired",   [TT_HS_NOT_YET_VALID] = "not_yet_valid",
    [TT_HS_BAD_SAN] = "bad_san",   [TT_HS_WRONG_IDENTITY] = "wrong_identity",
    [TT_HS_REVOKED] = "revoked",   [TT_HS_TIMEOUT] = "timeout",
    [TT_HS_PROTOCOL] = "protocol", [TT_HS_BAD_USAGE] = "bad_usage",
};

static const char *const req_method_names[TT_REQ_METHOD__COUNT] = {
    [TT_REQ_GET] = "GET",         [TT_REQ_HEAD] = "HEAD",       [TT_REQ_POST] = "POST",
    [TT_REQ_PUT] = "PUT",         [TT_REQ_DELETE] = "DELETE",   [TT_REQ_PATCH] = "PATCH",
    [TT_REQ_OPTIONS] = "OPTIONS", [TT_REQ_CONNECT] = "CONNECT", [TT_REQ_OTHER] = "other",
};

static const char *const req_class_names[TT_REQ_STATUS_CLASSES] = {
    "none", "1xx", "2xx", "3xx", "4xx", "5xx",
};

/* The peer entry that collects identities once the table is full. */
#define PEER_OTHER "other"
/* Connections whose peer presented no identity (e.g. refused before the handshake). */
#define PEER_UNKNOWN "unknown"
/* HTTP requests from a caller without an identity (a plaintext caller). */
#define PEER_NONE "none"

/* Returns the /stats name of `reason`; "protocol" for an out-of-range value. */
const char *tt_hs_reason_name(enum tt_hs_reason reason)
{
    if ((unsigned)reason >= TT_HS__COUNT)
        return hs_reason_names[TT_HS_PROTOCOL];
    return hs_reason_names[reason];
}

/* Maps a handshake error code to its reason; unknown codes are TT_HS_PROTOCOL. */
enum tt_hs_reason tt_hs_reason_from_err(int err)
{
    switch (err) {
    case TT_E_NO_CERT:
        return TT_HS_NO_CERT;
    case TT_E_UNKNOWN_CA:
        return TT_HS_UNKNOWN_CA;
    case TT_E_EXPIRED:
        return TT_HS_EXPIRED;
    case TT_E_NOT_YET_VALID:
        return TT_HS_NOT_YET_VALID;
    case TT_E_BAD_SAN:
        return TT_HS_BAD_SAN;
    case TT_E_WRONG_IDENTITY:
        return TT_HS_WRONG_IDENTITY;
    case TT_E_REVOKED:
        return TT_HS_REVOKED;
    case TT_E_BAD_USAGE:
        return TT_HS_BAD_USAGE;
    case TT_E_TIMEOUT:
    case -ETIMEDOUT:
        return TT_HS_TIMEOUT;
    default:
        return TT_HS_PROTOCOL;
    }
}

/* The method's counter index: an exact, case-sensitive match, else TT_REQ_OTHER. */
enum tt_req_method tt_req_method_of(const char *method)
{
    if (method == NULL)
        return TT_REQ_OTHER;
    for (int i = 0; i < TT_REQ_OTHER; i++) {
        if (strcmp(method, req_method_names[i]) == 0)
            return (enum tt_req_method)i;
    }
    return TT_REQ_OTHER;
}

/* The /stats name of a method index; "other" when out of range. */
const char *tt_req_method_name(enum tt_req_method m)
{
    if ((unsigned)m >= TT_REQ_METHOD__COUNT)
        return req_method_names[TT_REQ_OTHER];
    return req_method_names[m];
}

/* The status class of `status`: 1..5 for 100..599, else 0 ("none"). */
int tt_req_status_class(int status)
{
    return status >= 100 && status <= 599 ? status / 100 : 0;
}

/* The /stats name of a status class; "none" when out of range. */
const char *tt_req_status_class_name(int cls)
{
    if (cls < 0 || cls >= TT_REQ_STATUS_CLASSES)
        return req_class_names[0];
    return req_class_names[cls];
}

/* Allocates zeroed counters for n_listeners listeners; NULL when out of memory. */
struct tt_metrics *tt_metrics_new(size_t n_listeners)
{
    struct tt_metrics *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    /* calloc(0) may return NULL; one spare entry keeps the pointer valid. */
    m->listeners = calloc(n_listeners ? n_listeners : 1, sizeof(*m->listeners));
    if (m->listeners == NULL)
        goto err_free_m;
    if (pthread_mutex_init(&m->lock, NULL) != 0)
        goto err_free_listeners;
    m->n_listeners = n_listeners;
    return m;

err_free_listeners:
    free(m->listeners);
err_free_m:
    free(m);
    return NULL;
}

/* Frees counters made by tt_metrics_new(); accepts NULL. */
void tt_metrics_free(struct tt_metrics *m)
{
    if (m == NULL)
        return;
    pthread_mutex_destroy(&m->lock);
    for (size_t i = 0; i < m->rules_cap; i++)
        free(m->rules[i]);
    free(m->rules);
    free(m->listeners);
    free(m);
}

/* Adds one observation of `us` microseconds to h (single writer). */
void tt_metrics_observe(struct tt_hist *h, uint64_t us)
{
    size_t b = TT_HIST_BUCKETS - 1; /* +Inf */

    for (size_t i = 0; i < TT_HIST_BUCKETS - 1; i++) {
        if (us <= tt_hist_bounds_us[i]) {
            b = i;
            break;
        }
    }
    TT_COUNTER_ADD(h->buckets[b], 1);
    TT_COUNTER_ADD(h->count, 1);
    TT_COUNTER_ADD(h->sum_us, us);
}

static int64_t now_unix_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Counts the failure on listener li (ignored when li is out of range) and records it,
 * overwriting the oldest entry of the ring. */
void tt_metrics_hs_failure(struct tt_metrics *m, int li, enum tt_hs_reason reason,
                           const char *peer_addr, const char *spiffe_id, const char *serial,
                           const char *issuer)
{
    struct tt_hs_failure *f;

    if ((unsigned)reason >= TT_HS__COUNT)
        reason = TT_HS_PROTOCOL;
    if (li >= 0 && (size_t)li < m->n_listeners)
        TT_COUNTER_ADD(m->listeners[li].hs_failures[reason], 1);

    pthread_mutex_lock(&m->lock);
    f = &m->failures[m->failures_next];
    f->unix_ms = now_unix_ms();
    f->listener = li;
    f->reason = reason;
    tt_str_copy(f->peer_addr, sizeof(f->peer_addr), peer_addr);
    tt_str_copy(f->spiffe_id, sizeof(f->spiffe_id), spiffe_id);
    tt_str_copy(f->serial, sizeof(f->serial), serial);
    tt_str_copy(f->issuer, sizeof(f->issuer), issuer);
    m->failures_next = (m->failures_next + 1) % TT_METRICS_FAILURES;
    m->failures_total++;
    pthread_mutex_unlock(&m->lock);
}

/* Finds the slot for `id` (already truncated) or claims a free one. The last slot is
 * kept for "other", so at most TT_METRICS_PEERS - 1 distinct identities get their own
 * entry. Called with the lock held. */
static struct tt_peer_counters *peer_slot(struct tt_metrics *m, const char *id)
{
    const char *want = id;

    for (;;) {
        for (size_t i = 0; i < m->n_peers; i++) {
            if (strcmp(m->peers[i].id, want) == 0)
                return &m->peers[i];
        }
        if (m->n_peers < TT_METRICS_PEERS - 1 ||
            (m->n_peers == TT_METRICS_PEERS - 1 && strcmp(want, PEER_OTHER) == 0)) {
            struct tt_peer_counters *p = &m->peers[m->n_peers++];

            memset(p, 0, sizeof(*p));
            tt_str_copy(p->id, sizeof(p->id), want);
            return p;
        }
        want = PEER_OTHER; /* full: fold into "other" (claimed by the branch above) */
    }
}

/* Adds a connection's figures to its peer identity; NULL or "" counts as "unknown". */
void tt_metrics_peer_add(struct tt_metrics *m, const char *spiffe_id, uint64_t bytes_in,
                         uint64_t bytes_out, bool denied)
{
    char id[sizeof(((struct tt_peer_counters *)0)->id)];
    struct tt_peer_counters *p;

    tt_str_copy(id, sizeof(id), spiffe_id && *spiffe_id ? spiffe_id : PEER_UNKNOWN);
    pthread_mutex_lock(&m->lock);
    p = peer_slot(m, id);
    p->connections++;
    p->bytes_in += bytes_in;
    p->bytes_out += bytes_out;
    if (denied)
        p->denied++;
    pthread_mutex_unlock(&m->lock);
}

/* Counts one request of status class `cls` for the caller (NULL or "" is "none"), under
 * the worker's lock, taken once. */
static void peer_request(struct tt_metrics *m, const char *caller_id, int cls)
{
    char id[sizeof(((struct tt_peer_counters *)0)->id)];
    struct tt_peer_counters *p;

    tt_str_copy(id, sizeof(id), caller_id && *caller_id ? caller_id : PEER_NONE);
    pthread_mutex_lock(&m->lock);
    p = peer_slot(m, id);
    p->requests++;
    p->requests_by_status[cls]++;
    pthread_mutex_unlock(&m->lock);
}

/* Counts a finished request (metrics.h). */
void tt_metrics_request(struct tt_metrics *m, int li, const char *caller_id,
                        const struct tt_request_record *r)
{
    struct tt_request_counters *c;
    int cls = tt_req_status_class(r->status);

    if (li < 0 || (size_t)li >= m->n_listeners)
        return;
    c = &m->listeners[li].requests;
    TT_COUNTER_ADD(c->by_method_status[tt_req_method_of(r->method)][cls], 1);
    TT_COUNTER_ADD(c->request_bytes, r->request_bytes);
    TT_COUNTER_ADD(c->response_bytes, r->response_bytes);
    if (r->denied)
        TT_COUNTER_ADD(c->denied, 1);
    tt_metrics_observe(&c->latency_us, r->duration_us);
    peer_request(m, caller_id, cls);
}

/* Counts a request refused as malformed (metrics.h). */
void tt_metrics_request_refused(struct tt_metrics *m, int li, const char *caller_id,
                                enum tt_h1_reason reason)
{
    struct tt_request_counters *c;
    int cls;

    if (li < 0 || (size_t)li >= m->n_listeners)
        return;
    if ((unsigned)reason >= TT_H1_R__COUNT || reason == TT_H1_R_NONE)
        reason = TT_H1_R_MALFORMED;
    cls = tt_req_status_class(tt_h1_reason_status(reason)); /* 400 or 431: 4xx */
    c = &m->listeners[li].requests;
    TT_COUNTER_ADD(c->refused[reason], 1);
    TT_COUNTER_ADD(c->by_method_status[TT_REQ_OTHER][cls], 1);
    peer_request(m, caller_id, cls);
}

/* Counts a destination event (metrics.h). */
void tt_metrics_dest_add(struct tt_metrics *m, const char *key, enum tt_dest_event event)
{
    char k[sizeof(((struct tt_dest_counters *)0)->key)];
    struct tt_dest_counters *d = NULL;

    tt_str_copy(k, sizeof(k), key);
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n_dests && d == NULL; i++) {
        if (strcmp(m->dests[i].key, k) == 0)
            d = &m->dests[i];
    }
    if (d == NULL && m->n_dests >= TT_METRICS_DESTS - 1) {
        tt_str_copy(k, sizeof(k), PEER_OTHER);
        for (size_t i = 0; i < m->n_dests && d == NULL; i++) {
            if (strcmp(m->dests[i].key, k) == 0)
                d = &m->dests[i];
        }
    }
    if (d == NULL) {
        d = &m->dests[m->n_dests++];
        memset(d, 0, sizeof(*d));
        tt_str_copy(d->key, sizeof(d->key), k);
    }
    d->counts[event]++;
    pthread_mutex_unlock(&m->lock);
}

/* Copies the destination counters (metrics.h). */
size_t tt_metrics_dests_copy(struct tt_metrics *m, struct tt_dest_counters *out, size_t max)
{
    size_t n;

    pthread_mutex_lock(&m->lock);
    n = m->n_dests < max ? m->n_dests : max;
    memcpy(out, m->dests, n * sizeof(*out));
    pthread_mutex_unlock(&m->lock);
    return n;
}

/* struct tt_listener_counters is made of uint64_t only (tt_hist included), so summing
 * it word by word covers every field, including ones added later. */
_Static_assert(sizeof(struct tt_listener_counters) % sizeof(uint64_t) == 0,
               "tt_listener_counters must hold uint64_t fields only");

static void listener_add(struct tt_listener_counters *dst, struct tt_listener_counters *src)
{
    uint64_t *d = (uint64_t *)dst;
    uint64_t *s = (uint64_t *)src;

    for (size_t i = 0; i < sizeof(*dst) / sizeof(uint64_t); i++)
        d[i] += TT_COUNTER_GET(s[i]);
}

/* Adds every counter of src into dst (same identity, another worker). */
static void peer_merge(struct tt_peer_counters *dst, const struct tt_peer_counters *src)
{
    dst->connections += src->connections;
    dst->denied += src->denied;
    dst->bytes_in += src->bytes_in;
    dst->bytes_out += src->bytes_out;
    dst->requests += src->requests;
    for (int k = 0; k < TT_REQ_STATUS_CLASSES; k++)
        dst->requests_by_status[k] += src->requests_by_status[k];
}

static int peer_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tt_peer_counters *)a)->id,
                  ((const struct tt_peer_counters *)b)->id);
}

/* A failure with its rank in its worker's ring (0 newest), to keep sorting stable. */
struct failure_ord {
    struct tt_hs_failure f;
    size_t rank;
    size_t worker;
};

static int failure_cmp(const void *a, const void *b)
{
    const struct failure_ord *x = a, *y = b;

    if (x->f.unix_ms != y->f.unix_ms)
        return x->f.unix_ms > y->f.unix_ms ? -1 : 1;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    return x->worker < y->worker ? -1 : (x->worker > y->worker);
}

/* ---- per-rule policy counters ------------------------------------------------------ */

/* FNV-1a: rule names are short and few; any decent spread will do. */
static size_t name_hash(const char *name)
{
    uint64_t h = 1469598103934665603ULL;

    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    return (size_t)h;
}

/* The slot that holds `name`, or the empty slot where it would go. rules_cap > 0. */
static size_t rule_slot(struct tt_rule_counters *const *table, size_t cap, const char *name)
{
    size_t i = name_hash(name) & (cap - 1);

    while (table[i] != NULL && strcmp(table[i]->name, name) != 0)
        i = (i + 1) & (cap - 1);
    return i;
}

/* Doubles the table (16 slots at first), under the lock readers take. */
static int rules_grow(struct tt_metrics *m)
{
    size_t cap = m->rules_cap ? m->rules_cap * 2 : 16;
    struct tt_rule_counters **table = calloc(cap, sizeof(*table));

    if (table == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < m->rules_cap; i++) {
        if (m->rules[i] != NULL)
            table[rule_slot(table, cap, m->rules[i]->name)] = m->rules[i];
    }
    pthread_mutex_lock(&m->lock);
    free(m->rules);
    m->rules = table;
    m->rules_cap = cap;
    pthread_mutex_unlock(&m->lock);
    return 0;
}

/* The counters of rule `name`, created when missing; NULL when out of memory. Only the
 * owning worker calls this, so finding needs no lock; adding takes it. */
static struct tt_rule_counters *rule_counters(struct tt_metrics *m, const char *name)
{
    size_t i, len;
    struct tt_rule_counters *rc;

    if (m->rules_cap > 0) {
        i = rule_slot(m->rules, m->rules_cap, name);
        if (m->rules[i] != NULL)
            return m->rules[i];
    }
    if ((m->n_rules + 1) * 2 > m->rules_cap && rules_grow(m) < 0)
        return NULL;
    len = strlen(name);
    rc = calloc(1, sizeof(*rc) + len + 1);
    if (rc == NULL)
        return NULL;
    memcpy(rc->name, name, len + 1);
    i = rule_slot(m->rules, m->rules_cap, name);
    pthread_mutex_lock(&m->lock);
    m->rules[i] = rc;
    m->n_rules++;
    pthread_mutex_unlock(&m->lock);
    return rc;
}

/* Gives every rule of p its counters now (see metrics.h). */
int tt_metrics_policy_prepare(struct tt_metrics *m, const struct tt_policy *p)
{
    size_t n = p != NULL ? tt_policy_rule_count(p) : 0;

    for (size_t i = 0; i < n; i++) {
        struct tt_policy_rule_info ri;
        tt_policy_rule_info(p, i, &ri);
        if (rule_counters(m, ri.name) == NULL)
            return -ENOMEM;
    }
    return 0;
}

/* Counts one verdict by rule name (see metrics.h). Indices out of range (a verdict from
 * another policy) are ignored rather than trusted. */
void tt_metrics_policy_count(struct tt_metrics *m, const struct tt_policy *p,
                             const struct tt_policy_verdict *v)
{
    size_t n_rules = tt_policy_rule_count(p);
    struct tt_policy_rule_info ri;
    struct tt_rule_counters *rc;
    int n = v->n_audit < TT_POLICY_MAX_AUDIT ? v->n_audit : TT_POLICY_MAX_AUDIT;

    if (v->rule >= 0 && (size_t)v->rule < n_rules) {
        tt_policy_rule_info(p, (size_t)v->rule, &ri);
        if ((rc = rule_counters(m, ri.name)) != NULL)
            TT_COUNTER_ADD(rc->hits, 1);
    }
    for (int i = 0; i < n; i++) {
        if (v->audit[i] < 0 || (size_t)v->audit[i] >= n_rules)
            continue;
        tt_policy_rule_info(p, (size_t)v->audit[i], &ri);
        if ((rc = rule_counters(m, ri.name)) == NULL)
            continue;
        TT_COUNTER_ADD(rc->hits, 1);
        if (ri.action == TT_POLICY_DENY)
            TT_COUNTER_ADD(rc->audit_would_deny, 1);
    }
}

static int rule_sum_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tt_rule_sum *)a)->name, ((const struct tt_rule_sum *)b)->name);
}

/* Collects every worker's rule counters into out->rules, merged by name. */
static int rules_sum(struct tt_metrics *const *workers, size_t n_workers,
                     struct tt_metrics_sum *out)
{
    size_t total = 0, n = 0;

    for (size_t w = 0; w < n_workers; w++) {
        pthread_mutex_lock(&workers[w]->lock);
        total += workers[w]->n_rules;
        pthread_mutex_unlock(&workers[w]->lock);
    }
    out->rules = calloc(total ? total : 1, sizeof(*out->rules));
    if (out->rules == NULL)
        return -ENOMEM;
    for (size_t w = 0; w < n_workers; w++) {
        struct tt_metrics *m = workers[w];
        pthread_mutex_lock(&m->lock);
        for (size_t i = 0; i < m->rules_cap && n < total; i++) {
            struct tt_rule_counters *rc = m->rules[i];
            if (rc == NULL)
                continue;
            out->rules[n].name = strdup(rc->name);
            if (out->rules[n].name == NULL) {
                pthread_mutex_unlock(&m->lock);
                out->n_rules = n;
                return -ENOMEM;
            }
            out->rules[n].hits = TT_COUNTER_GET(rc->hits);
            out->rules[n].audit_would_deny = TT_COUNTER_GET(rc->audit_would_deny);
            n++;
        }
        pthread_mutex_unlock(&m->lock);
    }
    qsort(out->rules, n, sizeof(*out->rules), rule_sum_cmp);
    out->n_rules = 0;
    for (size_t i = 0; i < n; i++) {
        struct tt_rule_sum *r = &out->rules[i];
        if (out->n_rules > 0 && strcmp(out->rules[out->n_rules - 1].name, r->name) == 0) {
            out->rules[out->n_rules - 1].hits += r->hits;
            out->rules[out->n_rules - 1].audit_would_deny += r->audit_would_deny;
            free(r->name);
        } else {
            out->rules[out->n_rules++] = *r;
        }
    }
    return 0;
}

/* The summed counters of one rule, by name. */
const struct tt_rule_sum *tt_metrics_sum_rule(const struct tt_metrics_sum *sum, const char *name)
{
    struct tt_rule_sum key = {.name = (char *)name};

    if (sum->n_rules == 0)
        return NULL;
    return bsearch(&key, sum->rules, sum->n_rules, sizeof(*sum->rules), rule_sum_cmp);
}

/* Sums every worker's counters into out (zeroed first): listeners by index (the
 * first worker's count), peers merged by id and sorted by id, failures merged newest
 * first by time and cut to TT_METRICS_FAILURES. Returns 0 or -ENOMEM (out then holds
 * nothing to free). Release with tt_metrics_sum_done(). */
int tt_metrics_sum(struct tt_metrics *const *workers, size_t n_workers, struct tt_metrics_sum *out)
{
    struct failure_ord *ford = NULL;
    size_t n_ford = 0, n_peers = 0;

    memset(out, 0, sizeof(*out));
    out->n_listeners = n_workers ? workers[0]->n_listeners : 0;
    out->listeners = calloc(out->n_listeners ? out->n_listeners : 1, sizeof(*out->listeners));
    out->peers = calloc(n_workers ? n_workers * TT_METRICS_PEERS : 1, sizeof(*out->peers));
    ford = calloc(n_workers ? n_workers * TT_METRICS_FAILURES : 1, sizeof(*ford));
    out->failures = calloc(TT_METRICS_FAILURES, sizeof(*out->failures));
    if (!out->listeners || !out->peers || !ford || !out->failures)
        goto err_free;

    for (size_t w = 0; w < n_workers; w++) {
        struct tt_metrics *m = workers[w];
        size_t nl = m->n_listeners < out->n_listeners ? m->n_listeners : out->n_listeners;
        size_t nf;

        for (size_t i = 0; i < nl; i++)
            listener_add(&out->listeners[i], &m->listeners[i]);

        pthread_mutex_lock(&m->lock);
        memcpy(&out->peers[n_peers], m->peers, m->n_peers * sizeof(*m->peers));
        n_peers += m->n_peers;
        nf = m->failures_total < TT_METRICS_FAILURES ? (size_t)m->failures_total
                                                     : TT_METRICS_FAILURES;
        for (size_t k = 0; k < nf; k++) {
            size_t idx = (m->failures_next + TT_METRICS_FAILURES - 1 - k) % TT_METRICS_FAILURES;

            ford[n_ford].f = m->failures[idx];
            ford[n_ford].rank = k;
            ford[n_ford].worker = w;
            n_ford++;
        }
        pthread_mutex_unlock(&m->lock);
    }

    /* Merge peers: sort by id, then fold runs of equal ids into their first entry. */
    qsort(out->peers, n_peers, sizeof(*out->peers), peer_cmp);
    for (size_t i = 0; i < n_peers; i++) {
        struct tt_peer_counters *p = &out->peers[i];

        if (out->n_peers > 0 && strcmp(out->peers[out->n_peers - 1].id, p->id) == 0) {
            struct tt_peer_counters *d = &out->peers[out->n_peers - 1];

            peer_merge(d, p);
        } else {
            if (out->n_peers != i)
                out->peers[out->n_peers] = *p;
            out->n_peers++;
        }
    }

    qsort(ford, n_ford, sizeof(*ford), failure_cmp);
    for (size_t i = 0; i < n_ford && i < TT_METRICS_FAILURES; i++)
        out->failures[out->n_failures++] = ford[i].f;
    free(ford);
    ford = NULL;
    if (rules_sum(workers, n_workers, out) < 0)
        goto err_free;
    return 0;

err_free:
    free(ford);
    tt_metrics_sum_done(out);
    return -ENOMEM;
}

/* Frees what tt_metrics_sum() allocated and zeroes sum. */
void tt_metrics_sum_done(struct tt_metrics_sum *sum)
{
    for (size_t i = 0; i < sum->n_rules; i++)
        free(sum->rules[i].name);
    free(sum->rules);
    free(sum->listeners);
    free(sum->peers);
    free(sum->failures);
    memset(sum, 0, sizeof(*sum));
}
