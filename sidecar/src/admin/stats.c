/* Renders /stats (JSON and Prometheus text), /certs from a view of the sidecar's state.
 * Pure functions: they read counters (through tt_metrics_sum), the identity and the
 * policy, and build a document; no I/O, no logging. Strings that come from peers
 * (presented SPIFFE IDs, issuers) may be arbitrary bytes, so every string is made valid
 * UTF-8 before it reaches jansson or the Prometheus text. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "control/cpclient.h"
#include "tls/crl.h"
#include "tls/identity.h"
#include "policy/policy.h"
#include "admin/stats.h"
#include "net/balancer.h"
#include "core/util.h"

/* Length of the valid UTF-8 sequence at p (RFC 3629 §4: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0 when the bytes there are not one. */
static size_t utf8_len(const unsigned char *p)
{
    unsigned char c = p[0];

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        return (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;

        return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 ? 3 : 0;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;

        return p[1] >= lo && p[1] <= hi && (p[2] & 0xc0) == 0x80 && (p[3] & 0xc0) == 0x80 ? 4 : 0;
    }
    return 0;
}

/* A JSON string for s: null for NULL (or "" when empty_null), invalid bytes as '?'. */
static json_t *jstr_(const char *s, bool empty_null)
{
    json_t *v;
    char *copy;
    size_t n;

    if (s == NULL || (empty_null && *s == '\0'))
        return json_null();
    v = json_string(s);
    if (v != NULL)
        return v;
    /* json_string() refuses invalid UTF-8 (and fails on OOM): repair a copy. */
    n = strlen(s);
    copy = malloc(n + 1);
    if (copy == NULL)
        return NULL;
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len((const unsigned char *)s + i);

        if (l == 0) {
            copy[i++] = '?';
        } else {
            memcpy(copy + i, s + i, l);
            i += l;
        }
    }
    copy[n] = '\0';
    v = json_string(copy);
    free(copy);
    return v;
}

static json_t *jstr(const char *s)
{
    return jstr_(s, false);
}

static json_t *jstr_opt(const char *s)
{
    return jstr_(s, true);
}

static json_t *jint(uint64_t v)
{
    return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/* Appends v to arr, stealing the reference; false (and arr untouched) on failure. */
static bool append(json_t *arr, json_t *v)
{
    return v != NULL && json_array_append_new(arr, v) == 0;
}

/* Estimates the q-quantile of h from its buckets as Prometheus' histogram_quantile()
 * does: linear interpolation inside the bucket that holds the rank, the lower bound of
 * the first bucket being 0 and the +Inf bucket answering the highest finite bound.
 * Returns false when h is empty. */
static bool hist_quantile(const struct tt_hist *h, double q, uint64_t *out)
{
    uint64_t b[TT_HIST_BUCKETS], total = 0, cum = 0;
    double rank;

    for (size_t i = 0; i < TT_HIST_BUCKETS; i++) {
        b[i] = TT_COUNTER_GET(h->buckets[i]);
        total += b[i];
    }
    if (total == 0)
        return false;
    rank = q * (double)total;
    for (size_t i = 0; i < TT_HIST_BUCKETS; i++) {
        double lower, upper;

        if (b[i] == 0 || (double)(cum + b[i]) < rank) {
            cum += b[i];
            continue;
        }
        if (i == TT_HIST_BUCKETS - 1) {
            *out = tt_hist_bounds_us[TT_HIST_BUCKETS - 2];
            return true;
        }
        lower = i == 0 ? 0.0 : (double)tt_hist_bounds_us[i - 1];
        upper = (double)tt_hist_bounds_us[i];
        *out = (uint64_t)(lower + (upper - lower) * (rank - (double)cum) / (double)b[i] + 0.5);
        return true;
    }
    *out = tt_hist_bounds_us[TT_HIST_BUCKETS - 2];
    return true;
}

static json_t *quantile_json(const struct tt_hist *h, double q)
{
    uint64_t v;

    return hist_quantile(h, q, &v) ? jint(v) : json_null();
}

/* {"count","sum_us","p50_us","p90_us","p99_us","buckets":[{"le":bound,"count":cumulative}]} */
static json_t *hist_json(const struct tt_hist *h)
{
    json_t *buckets = json_array();
    uint64_t cum = 0;

    if (buckets == NULL)
        return NULL;
    for (size_t i = 0; i < TT_HIST_BUCKETS; i++) {
        json_t *le = i < TT_HIST_BUCKETS - 1 ? jint(tt_hist_bounds_us[i]) : json_string("+Inf");

        cum += h->buckets[i];
        if (!append(buckets, json_pack("{s:o,s:I}", "le", le, "count", (json_int_t)cum))) {
            json_decref(buckets);
            return NULL;
        }
    }
    return json_pack("{s:I,s:I,s:o,s:o,s:o,s:o}", "count", (json_int_t)h->count, "sum_us",
                     (json_int_t)h->sum_us, "p50_us", quantile_json(h, 0.50), "p90_us",
                     quantile_json(h, 0.90), "p99_us", quantile_json(h, 0.99), "buckets", buckets);
}

/* {"none": n, "1xx": n, ..., "5xx": n}: every class, zeros included. */
static json_t *status_classes_json(const uint64_t counts[TT_REQ_STATUS_CLASSES])
{
    json_t *o = json_object();

    for (int k = 0; o != NULL && k < TT_REQ_STATUS_CLASSES; k++) {
        if (json_object_set_new(o, tt_req_status_class_name(k), jint(counts[k])) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* Adds name: count to o when count is not zero; false on failure. */
static bool set_nonzero(json_t *o, const char *name, uint64_t count)
{
    return count == 0 || json_object_set_new(o, name, jint(count)) == 0;
}

/* A listener's "requests": {"total", "by_method" (non-zero methods), "by_status" (every
 * class), "request_bytes", "response_bytes", "denied", "refused" (non-zero reasons),
 * "latency_us"}. NULL when out of memory. */
static json_t *requests_json(const struct tt_request_counters *c)
{
    uint64_t total = 0, by_status[TT_REQ_STATUS_CLASSES] = {0};
    json_t *by_method = json_object(), *refused = json_object();

    if (by_method == NULL || refused == NULL)
        goto err_free;
    for (int m = 0; m < TT_REQ_METHOD__COUNT; m++) {
        uint64_t n = 0;

        for (int k = 0; k < TT_REQ_STATUS_CLASSES; k++) {
            n += c->by_method_status[m][k];
            by_status[k] += c->by_method_status[m][k];
        }
        total += n;
        if (!set_nonzero(by_method, tt_req_method_name(m), n))
            goto err_free;
    }
    /* Reason 0 is TT_H1_R_NONE ("not refused"), never counted. */
    for (int r = 1; r < TT_H1_R__COUNT; r++) {
        if (!set_nonzero(refused, tt_h1_reason_name(r), c->refused[r]))
            goto err_free;
    }
    /* json_pack steals every "o" reference, on failure too. */
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "total", jint(total), "by_method",
                     by_method, "by_status", status_classes_json(by_status), "request_bytes",
                     jint(c->request_bytes), "response_bytes", jint(c->response_bytes), "denied",
                     jint(c->denied), "refused", refused, "latency_us", hist_json(&c->latency_us));

err_free:
    json_decref(by_method);
    json_decref(refused);
    return NULL;
}

static json_t *reasons_json(const uint64_t *counts)
{
    json_t *o = json_object();

    if (o == NULL)
        return NULL;
    for (int r = 0; r < TT_HS__COUNT; r++) {
        if (json_object_set_new(o, tt_hs_reason_name(r), jint(counts[r])) != 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* What is open now of a gauge kept as an opened/closed pair (metrics.h): opened - closed,
 * 0 should a sum over workers ever see closed ahead of opened. */
static uint64_t open_now(uint64_t opened, uint64_t closed)
{
    return opened > closed ? opened - closed : 0;
}

/* A listener's "pool" (net/pool.h): {"connections" (links open now), "streams_active",
 * "streams_total", "streams_refused", "connections_recycled", "fallback_direct",
 * "requests_retried", "workload_connections_opened", "workload_connections_reused"}. NULL
 * when out of memory. */
static json_t *pool_json(const struct tt_pool_counters *p)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "connections",
                     jint(open_now(p->links_opened, p->links_closed)), "streams_active",
                     jint(open_now(p->streams_opened, p->streams_closed)), "streams_total",
                     jint(p->streams_opened), "streams_refused", jint(p->streams_refused),
                     "connections_recycled", jint(p->links_recycled), "fallback_direct",
                     jint(p->fallback_direct), "requests_retried", jint(p->requests_retried),
                     "workload_connections_opened", jint(p->workload_opened),
                     "workload_connections_reused", jint(p->workload_reused));
}

static const char *kind_name(enum tt_listener_kind kind)
{
    return kind == TT_LISTENER_INBOUND ? "inbound" : "outbound";
}

static json_t *listener_json(const struct tt_listener_cfg *cfg,
                             const struct tt_listener_counters *c)
{
    uint64_t active = open_now(c->accepted, c->closed);
    json_t *latency;

    latency = json_pack("{s:o,s:o,s:o}", "handshake_us", hist_json(&c->handshake_us), "connect_us",
                        hist_json(&c->connect_us), "duration_us", hist_json(&c->duration_us));
    return json_pack("{s:o,s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}",
                     "name", jstr(cfg->name), "kind", kind_name(cfg->kind), "listen",
                     jstr(cfg->listen.text), "target", jstr(cfg->target.text), "expected_id",
                     jstr(cfg->expected_id), "accepted", jint(c->accepted), "active", jint(active),
                     "closed", jint(c->closed), "refused_limit", jint(c->refused_limit), "bytes_in",
                     jint(c->bytes_in), "bytes_out", jint(c->bytes_out), "handshakes",
                     jint(c->handshakes), "handshakes_resumed", jint(c->handshakes_resumed),
                     "handshake_failures", reasons_json(c->hs_failures),
                     "upstream_connect_failures", jint(c->upstream_connect_failures), "allowed",
                     jint(c->allowed), "denied", jint(c->denied), "latency", latency);
}

/* The control connection's state, versions and timing (control mode only). */
static json_t *control_json(const struct tt_cp_status *cp, int64_t now)
{
    return json_pack(
        "{s:s,s:I,s:I,s:I,s:o,s:o,s:o}", "state", cp->state_name, "version_applied",
        (json_int_t)cp->version_applied, "version_refused", (json_int_t)cp->version_refused,
        "rotations", (json_int_t)cp->rotations, "last_contact_unix",
        cp->last_contact_unix > 0 ? json_integer(cp->last_contact_unix) : json_null(),
        "seconds_since_contact",
        cp->last_contact_unix > 0 ? json_integer(now - cp->last_contact_unix) : json_null(),
        "last_error", cp->last_error[0] ? jstr(cp->last_error) : json_null());
}

static json_t *identity_json(const struct tt_stats_view *view, int64_t now)
{
    const struct tt_cert_info *leaf;

    if (view->identity == NULL || (leaf = tt_identity_leaf(view->identity)) == NULL)
        return json_null();
    return json_pack("{s:o,s:o,s:I,s:I,s:I,s:I,s:o}", "spiffe_id", jstr(leaf->spiffe_id), "serial",
                     jstr(leaf->serial), "not_before", (json_int_t)leaf->not_before, "not_after",
                     (json_int_t)leaf->not_after, "seconds_to_expiry",
                     (json_int_t)(leaf->not_after - now), "rotations", (json_int_t)view->rotations,
                     "control_plane", jstr(view->control_state ? view->control_state : "none"));
}

/* A rule's counters summed over the workers, by name (zero when no worker counted it). */
static struct tt_rule_sum rule_sum(const struct tt_metrics_sum *sum, const char *name)
{
    const struct tt_rule_sum *r = tt_metrics_sum_rule(sum, name);
    struct tt_rule_sum zero = {0};

    return r != NULL ? *r : zero;
}

static json_t *policy_json(const struct tt_policy *p, const struct tt_metrics_sum *sum,
                           uint64_t allowed, uint64_t denied)
{
    json_t *rules = json_array();
    size_t n = p ? tt_policy_rule_count(p) : 0;

    if (rules == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        struct tt_policy_rule_info ri = {0};

        tt_policy_rule_info(p, i, &ri);
        struct tt_rule_sum rs = rule_sum(sum, ri.name);
        if (!append(rules,
                    json_pack("{s:o,s:s,s:s,s:o,s:o}", "name", jstr(ri.name), "action",
                              ri.action == TT_POLICY_ALLOW ? "allow" : "deny", "mode",
                              ri.mode == TT_POLICY_AUDIT ? "audit" : "enforce", "hits",
                              jint(rs.hits), "audit_would_deny", jint(rs.audit_would_deny)))) {
            json_decref(rules);
            return NULL;
        }
    }
    return json_pack("{s:o,s:s,s:o,s:o,s:o}", "version",
                     p ? jstr(tt_policy_version(p)) : json_null(), "default",
                     p ? (tt_policy_default_allows(p) ? "allow" : "deny") : "allow-authenticated",
                     "allowed", jint(allowed), "denied", jint(denied), "rules", rules);
}

/* RFC 3339 UTC time with milliseconds, e.g. "2024-05-01T12:00:00.123Z". */
static void format_time_ms(int64_t unix_ms, char *buf, size_t len)
{
    time_t secs = (time_t)(unix_ms / 1000);
    struct tm tm;

    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(buf, len, "%" PRId64, unix_ms);
        return;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
}

static json_t *failure_json(const struct tt_stats_view *view, const struct tt_hs_failure *f)
{
    char when[64];
    json_t *listener;

    format_time_ms(f->unix_ms, when, sizeof(when));
    if (f->listener >= 0 && (size_t)f->listener < view->n_listeners && view->listeners)
        listener = jstr(view->listeners[f->listener].name);
    else
        listener = json_null();
    return json_pack("{s:s,s:I,s:o,s:o,s:o,s:o,s:o,s:s}", "time", when, "unix_ms",
                     (json_int_t)f->unix_ms, "listener", listener, "peer_addr",
                     jstr_opt(f->peer_addr), "spiffe_id", jstr_opt(f->spiffe_id), "serial",
                     jstr_opt(f->serial), "issuer", jstr_opt(f->issuer), "reason",
                     tt_hs_reason_name(f->reason));
}

/* Counters of listener i, or zeros when the counters have fewer listeners than the
 * configuration (never expected, but the view comes from elsewhere). */
static const struct tt_listener_counters *counters_at(const struct tt_metrics_sum *sum, size_t i)
{
    static const struct tt_listener_counters zero;

    return i < sum->n_listeners ? &sum->listeners[i] : &zero;
}

/* Adds "crls" (what each CRL is) and "warnings" (the CRLs past their nextUpdate) to doc. */
static void add_crls(json_t *doc, const struct tt_crls *crls, int64_t now)
{
    json_t *list = json_array(), *warnings = json_array();

    for (size_t i = 0; list != NULL && warnings != NULL && i < tt_crls_count(crls); i++) {
        const struct tt_crl_info *ci = tt_crls_info(crls, i);
        bool expired = ci->next_update != 0 && ci->next_update < now;

        append(list, json_pack("{s:o,s:o,s:I,s:o,s:I,s:b}", "source", jstr(ci->source), "issuer",
                               jstr(ci->issuer), "this_update", (json_int_t)ci->this_update,
                               "next_update",
                               ci->next_update != 0 ? jint((uint64_t)ci->next_update) : json_null(),
                               "revoked", (json_int_t)ci->revoked, "expired", (int)expired));
        if (expired)
            append(warnings, json_sprintf("CRL %s of %s is past its nextUpdate (%" PRId64
                                          "s ago): its serials stay refused; replace it",
                                          ci->source, ci->issuer, now - ci->next_update));
    }
    json_object_set_new(doc, "crls", list != NULL ? list : json_null());
    json_object_set_new(doc, "warnings", warnings != NULL ? warnings : json_null());
}

/* Adds one worker's figures of endpoint st into the "endpoints" object. */
static void endpoint_add(json_t *endpoints, const struct tt_balancer_stats *st, uint64_t now_ms)
{
    json_t *e = json_object_get(endpoints, st->addr.text);
    bool ejected = st->ejected_until_ms > now_ms;

    if (e == NULL) {
        e = json_pack("{s:I,s:I,s:I,s:I,s:I,s:b,s:I}", "active", (json_int_t)0, "picks",
                      (json_int_t)0, "connect_failures", (json_int_t)0, "ejections", (json_int_t)0,
                      "ewma_connect_us", (json_int_t)0, "ejected", 0, "ejected_ms_left",
                      (json_int_t)0);
        if (e == NULL || json_object_set_new(endpoints, st->addr.text, e) < 0)
            return;
    }
#define ADD(key, v)                                                                                \
    json_object_set_new(e, key, jint((uint64_t)json_integer_value(json_object_get(e, key)) + (v)))
    ADD("active", st->active);
    ADD("picks", st->picks);
    ADD("connect_failures", st->connect_failures);
    ADD("ejections", st->ejections);
#undef ADD
    if (st->ewma_connect_us > (uint64_t)json_integer_value(json_object_get(e, "ewma_connect_us")))
        json_object_set_new(e, "ewma_connect_us", jint(st->ewma_connect_us));
    if (ejected) {
        json_object_set_new(e, "ejected", json_true());
        uint64_t left = st->ejected_until_ms - now_ms;
        if (left > (uint64_t)json_integer_value(json_object_get(e, "ejected_ms_left")))
            json_object_set_new(e, "ejected_ms_left", jint(left));
    }
}

/* Transparent mode's parts of /stats: "transparent" {outbound_unknown, inbound_mode,
 * pod_ip, capture:{ready, outbound, inbound, checked_unix}}, "endpoints" {ADDR:
 * {active, picks, connect_failures, ejections, ewma_connect_us, ejected,
 * ejected_ms_left}} summed over the workers (an endpoint counts as ejected when any
 * worker ejected it), and "destinations" {KEY: {passthrough, denied, plaintext}}
 * (outbound keys are IP:PORT, inbound plaintext keys are ports). */
static void add_transparent(json_t *doc, const struct tt_stats_view *view)
{
    const struct tt_transparent_cfg *t = view->transparent;
    json_t *endpoints = json_object(), *dests = json_object(), *tj;
    struct tt_dest_counters *buf = malloc(TT_METRICS_DESTS * sizeof(*buf));
    uint64_t now_ms = tt_now_ms();

    tj = json_pack("{s:s,s:s,s:o}", "outbound_unknown", t->outbound_deny ? "deny" : "passthrough",
                   "inbound_mode", t->permissive ? "permissive" : "strict", "pod_ip",
                   jstr(t->pod_ip.text));
    if (tj != NULL && view->capture != NULL)
        json_object_set_new(tj, "capture",
                            json_pack("{s:b,s:s,s:s,s:I}", "ready", (int)view->capture->ready,
                                      "outbound", view->capture->outbound, "inbound",
                                      view->capture->inbound, "checked_unix",
                                      (json_int_t)view->capture->checked_unix));
    for (size_t w = 0; w < view->n_workers && endpoints != NULL; w++) {
        const struct tt_balancer *b = view->balancers != NULL ? view->balancers[w] : NULL;
        struct tt_balancer_stats st;
        for (size_t i = 0; i < tt_balancer_capacity(b); i++) {
            if (tt_balancer_stats_at(b, i, &st))
                endpoint_add(endpoints, &st, now_ms);
        }
    }
    static const char *const names[TT_DEST__COUNT] = {"passthrough", "denied", "plaintext"};
    for (size_t w = 0; w < view->n_workers && buf != NULL && dests != NULL; w++) {
        size_t n = tt_metrics_dests_copy(view->workers[w], buf, TT_METRICS_DESTS);
        for (size_t i = 0; i < n; i++) {
            json_t *d = json_object_get(dests, buf[i].key);
            if (d == NULL) {
                d = json_pack("{s:I,s:I,s:I}", "passthrough", (json_int_t)0, "denied",
                              (json_int_t)0, "plaintext", (json_int_t)0);
                if (d == NULL || json_object_set_new(dests, buf[i].key, d) < 0)
                    continue;
            }
            for (int k = 0; k < TT_DEST__COUNT; k++)
                json_object_set_new(
                    d, names[k],
                    jint((uint64_t)json_integer_value(json_object_get(d, names[k])) +
                         buf[i].counts[k]));
        }
    }
    free(buf);
    json_object_set_new(doc, "transparent", tj != NULL ? tj : json_null());
    json_object_set_new(doc, "endpoints", endpoints != NULL ? endpoints : json_null());
    json_object_set_new(doc, "destinations", dests != NULL ? dests : json_null());
}

/* Builds the /stats document described in stats.h; NULL when out of memory. */
json_t *tt_stats_json(const struct tt_stats_view *view)
{
    struct tt_metrics_sum sum;
    uint64_t reasons[TT_HS__COUNT] = {0}, allowed = 0, denied = 0;
    json_t *server, *listeners = NULL, *peers = NULL, *failures = NULL, *doc = NULL;
    int64_t now = tt_now_unix();

    if (tt_metrics_sum(view->workers, view->n_workers, &sum) != 0)
        return NULL;

    server = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:I,s:o}", "started_unix",
                       (json_int_t)view->started_unix, "uptime_seconds",
                       (json_int_t)(now - view->started_unix), "snapshot_unix",
                       (json_int_t)view->snapshot_unix, "snapshot_age_seconds",
                       (json_int_t)(now - view->snapshot_unix), "snapshot_generation",
                       (json_int_t)view->snapshot_generation, "reloads_failed",
                       (json_int_t)view->reloads_failed, "ready", (int)view->ready, "draining",
                       (int)view->draining, "workers", (json_int_t)view->n_workers, "control_plane",
                       jstr(view->control_state ? view->control_state : "none"));
    listeners = json_array();
    peers = json_array();
    failures = json_array();
    if (!server || !listeners || !peers || !failures)
        goto err_free;

    for (size_t i = 0; i < view->n_listeners; i++) {
        const struct tt_listener_counters *c = counters_at(&sum, i);

        for (int r = 0; r < TT_HS__COUNT; r++)
            reasons[r] += c->hs_failures[r];
        allowed += c->allowed;
        denied += c->denied;
        json_t *lj = listener_json(&view->listeners[i], c);

        /* Descriptor shortages (net/acceptor.h), after the keys /stats always had. */
        if (lj != NULL) {
            json_object_set_new(lj, "accept_failures", jint(c->accept_failures));
            json_object_set_new(lj, "refused_fd_shortage", jint(c->refused_fd_shortage));
            json_object_set_new(lj, "refusals_answered", jint(c->refusals_answered));
            if (view->listeners[i].transparent) {
                json_object_set_new(lj, "transparent", json_true());
                json_object_set_new(lj, "not_redirected", jint(c->not_redirected));
                json_object_set_new(lj, "passthrough", jint(c->passthrough));
                json_object_set_new(lj, "unknown_denied", jint(c->unknown_denied));
                json_object_set_new(lj, "plaintext", jint(c->plaintext));
                json_object_set_new(lj, "endpoint_retries", jint(c->endpoint_retries));
                json_object_set_new(lj, "canary", jint(c->canary));
            }
            /* json_object_set_new() steals the value and fails on NULL (out of memory). */
            if (json_object_set_new(lj, "requests", requests_json(&c->requests)) != 0 ||
                json_object_set_new(lj, "pool", pool_json(&c->pool)) != 0) {
                json_decref(lj);
                goto err_free;
            }
        }
        if (!append(listeners, lj))
            goto err_free;
    }
    for (size_t i = 0; i < sum.n_peers; i++) {
        const struct tt_peer_counters *p = &sum.peers[i];

        if (!append(peers,
                    json_pack("{s:o,s:I,s:I,s:I,s:I,s:o,s:o}", "spiffe_id", jstr(p->id),
                              "connections", (json_int_t)p->connections, "denied",
                              (json_int_t)p->denied, "bytes_in", (json_int_t)p->bytes_in,
                              "bytes_out", (json_int_t)p->bytes_out, "requests", jint(p->requests),
                              "requests_by_status", status_classes_json(p->requests_by_status))))
            goto err_free;
    }
    for (size_t i = 0; i < sum.n_failures; i++) {
        if (!append(failures, failure_json(view, &sum.failures[i])))
            goto err_free;
    }

    /* json_pack steals every "o" reference, on failure too. */
    if (server != NULL && view->control != NULL)
        json_object_set_new(server, "control", control_json(view->control, now));
    if (server != NULL) {
        json_object_set_new(server, "max_connections", jint(view->max_connections));
        json_object_set_new(server, "open_files_limit",
                            view->open_files_limit == UINT64_MAX ? json_null()
                                                                 : jint(view->open_files_limit));
    }
    if (server != NULL)
        json_object_set_new(
            server, "buffers",
            json_pack("{s:I,s:I}", "slabs_allocated", (json_int_t)view->buffer_slabs_allocated,
                      "oversize_allocations", (json_int_t)view->buffer_oversize_allocations));
    doc =
        json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "server", server, "identity",
                  identity_json(view, now), "listeners", listeners, "handshake_failures",
                  reasons_json(reasons), "policy", policy_json(view->policy, &sum, allowed, denied),
                  "peers", peers, "recent_handshake_failures", failures);
    if (doc != NULL)
        add_crls(doc, view->crls, now);
    if (doc != NULL && view->transparent != NULL)
        add_transparent(doc, view);
    tt_metrics_sum_done(&sum);
    return doc;

err_free:
    json_decref(server);
    json_decref(listeners);
    json_decref(peers);
    json_decref(failures);
    tt_metrics_sum_done(&sum);
    return NULL;
}

static json_t *cert_json(const struct tt_cert_info *c, int64_t now)
{
    return json_pack("{s:o,s:o,s:o,s:o,s:I,s:I,s:I}", "spiffe_id", jstr_opt(c->spiffe_id), "serial",
                     jstr(c->serial), "subject", jstr(c->subject), "issuer", jstr(c->issuer),
                     "not_before", (json_int_t)c->not_before, "not_after", (json_int_t)c->not_after,
                     "seconds_to_expiry", (json_int_t)(c->not_after - now));
}

/* Builds the /certs document: {"leaf": {...} or null, "roots": [...]}. NULL on OOM. */
json_t *tt_stats_certs_json(const struct tt_identity *identity)
{
    const struct tt_cert_info *leaf = identity ? tt_identity_leaf(identity) : NULL;
    size_t n = identity ? tt_identity_root_count(identity) : 0;
    int64_t now = tt_now_unix();
    json_t *roots = json_array();

    if (roots == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const struct tt_cert_info *r = tt_identity_root(identity, i);

        if (r != NULL && !append(roots, cert_json(r, now))) {
            json_decref(roots);
            return NULL;
        }
    }
    return json_pack("{s:o,s:o}", "leaf", leaf ? cert_json(leaf, now) : json_null(), "roots",
                     roots);
}

/* ---- Prometheus text exposition format (version 0.0.4) ---- */

/* A growing output string; `oom` sticks once an allocation failed. */
struct sbuf {
    char *p;
    size_t len;
    size_t cap;
    bool oom;
};

static bool sb_reserve(struct sbuf *sb, size_t more)
{
    size_t cap;
    char *p;

    if (sb->oom)
        return false;
    if (sb->len + more + 1 <= sb->cap)
        return true;
    cap = sb->cap ? sb->cap : 4096;
    while (cap < sb->len + more + 1)
        cap *= 2;
    p = realloc(sb->p, cap);
    if (p == NULL) {
        sb->oom = true;
        return false;
    }
    sb->p = p;
    sb->cap = cap;
    return true;
}

static void sb_putn(struct sbuf *sb, const char *s, size_t n)
{
    if (!sb_reserve(sb, n))
        return;
    memcpy(sb->p + sb->len, s, n);
    sb->len += n;
    sb->p[sb->len] = '\0';
}

static void sb_puts(struct sbuf *sb, const char *s)
{
    sb_putn(sb, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *sb, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    /* Only short, fixed-shape lines go through here; labels use sb_label(). */
    if (n > 0)
        sb_putn(sb, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Appends a label value escaped as the exposition format requires (backslash, double
 * quote and line feed), with invalid UTF-8 bytes replaced by '?'. */
static void sb_label_value(struct sbuf *sb, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");

    while (*p) {
        size_t l = utf8_len(p);

        if (*p == '\\') {
            sb_puts(sb, "\\\\");
        } else if (*p == '"') {
            sb_puts(sb, "\\\"");
        } else if (*p == '\n') {
            sb_puts(sb, "\\n");
        } else if (l == 0) {
            sb_puts(sb, "?");
            l = 1;
        } else {
            sb_putn(sb, (const char *)p, l);
        }
        p += l ? l : 1;
    }
}

/* name="value" preceded by a comma unless first. */
static void sb_label(struct sbuf *sb, bool first, const char *name, const char *value)
{
    if (!first)
        sb_puts(sb, ",");
    sb_puts(sb, name);
    sb_puts(sb, "=\"");
    sb_label_value(sb, value);
    sb_puts(sb, "\"");
}

static void sb_family(struct sbuf *sb, const char *name, const char *type, const char *help)
{
    sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Microseconds as seconds, exactly: "1.000250". */
static void sb_seconds(struct sbuf *sb, uint64_t us)
{
    sb_printf(sb, "%" PRIu64 ".%06" PRIu64, us / 1000000, us % 1000000);
}

/* Per-listener values rendered from struct tt_listener_counters: a counter field, or a
 * gauge kept as an opened/closed pair of fields (the value is what is open now). */
struct listener_metric {
    const char *name;
    const char *type;
    const char *help;
    size_t off;        /* offset of the uint64_t field (of a pair, the opened one) */
    size_t closed_off; /* of a pair, offset of the closed field; SIZE_MAX for a counter */
};

#define LC_OFF(f)               offsetof(struct tt_listener_counters, f)
#define LC_FIELD(f)             LC_OFF(f), SIZE_MAX
#define LC_PAIR(opened, closed) LC_OFF(opened), LC_OFF(closed)

static const struct listener_metric listener_metrics[] = {
    {"tether_listener_connections_accepted_total", "counter", "Connections accepted.",
     LC_FIELD(accepted)},
    {"tether_listener_connections_active", "gauge", "Connections open now.",
     LC_PAIR(accepted, closed)},
    {"tether_listener_connections_refused_limit_total", "counter",
     "Connections closed at once because the connection limit was reached.",
     LC_FIELD(refused_limit)},
    {"tether_listener_bytes_in_total", "counter", "Bytes received from downstream clients.",
     LC_FIELD(bytes_in)},
    {"tether_listener_bytes_out_total", "counter", "Bytes sent to downstream clients.",
     LC_FIELD(bytes_out)},
    {"tether_listener_handshakes_total", "counter", "TLS handshakes completed.",
     LC_FIELD(handshakes)},
    {"tether_listener_handshakes_resumed_total", "counter",
     "TLS handshakes that resumed a session.", LC_FIELD(handshakes_resumed)},
    {"tether_listener_upstream_connect_failures_total", "counter",
     "Upstream TCP connects that failed.", LC_FIELD(upstream_connect_failures)},
    {"tether_listener_policy_allowed_total", "counter", "Inbound connections allowed by policy.",
     LC_FIELD(allowed)},
    {"tether_listener_policy_denied_total", "counter", "Inbound connections denied by policy.",
     LC_FIELD(denied)},
    {"tether_listener_accept_failures_total", "counter",
     "Accepts that failed for want of file descriptors or memory (each pauses accepting).",
     LC_FIELD(accept_failures)},
    {"tether_listener_connections_refused_fd_shortage_total", "counter",
     "Connections reset at once on the reserved descriptor during a descriptor shortage.",
     LC_FIELD(refused_fd_shortage)},
    {"tether_listener_not_redirected_total", "counter",
     "Transparent: connections refused for want of an original destination.",
     LC_FIELD(not_redirected)},
    {"tether_listener_passthrough_total", "counter",
     "Transparent: outbound connections outside the mesh relayed in plaintext.",
     LC_FIELD(passthrough)},
    {"tether_listener_unknown_denied_total", "counter",
     "Transparent: outbound connections outside the mesh refused.", LC_FIELD(unknown_denied)},
    {"tether_listener_plaintext_total", "counter",
     "Transparent, permissive: inbound callers without TLS let in.", LC_FIELD(plaintext)},
    {"tether_listener_endpoint_retries_total", "counter",
     "Transparent: connects retried on another endpoint after a failure.",
     LC_FIELD(endpoint_retries)},
    {"tether_listener_refusals_answered_total", "counter",
     "Outbound: connections that could not get through, answered with an HTTP status.",
     LC_FIELD(refusals_answered)},
};

/* Per-listener figures of the HTTP-aware data path, labelled as the families above. */
static const struct listener_metric http_listener_metrics[] = {
    {"tether_http_request_bytes_total", "counter", "HTTP request body bytes received.",
     LC_FIELD(requests.request_bytes)},
    {"tether_http_response_bytes_total", "counter",
     "HTTP response bytes (heads and bodies) relayed to clients.",
     LC_FIELD(requests.response_bytes)},
    {"tether_http_requests_denied_total", "counter", "HTTP requests answered 403 by policy.",
     LC_FIELD(requests.denied)},
};

/* Per-listener figures of the pool of HTTP/2 links between sidecars (net/pool.h). */
static const struct listener_metric pool_listener_metrics[] = {
    {"tether_pool_connections", "gauge",
     "Pooled HTTP/2 mTLS connections to or from other sidecars open now.",
     LC_PAIR(pool.links_opened, pool.links_closed)},
    {"tether_pool_streams_active", "gauge",
     "Tunnel streams (app connections) on pooled connections now.",
     LC_PAIR(pool.streams_opened, pool.streams_closed)},
    {"tether_pool_streams_total", "counter",
     "Tunnel streams (app connections) carried on pooled connections.",
     LC_FIELD(pool.streams_opened)},
    {"tether_pool_streams_refused_total", "counter",
     "Tunnel streams refused by the peer (REFUSED_STREAM, GOAWAY, 4xx or 5xx).",
     LC_FIELD(pool.streams_refused)},
    {"tether_pool_connections_recycled_total", "counter",
     "Pooled connections retired because the workload identity rotated.",
     LC_FIELD(pool.links_recycled)},
    {"tether_pool_fallback_direct_total", "counter",
     "Outbound app connections sent on their own mTLS connection: the peer did not select "
     "tether-h2.",
     LC_FIELD(pool.fallback_direct)},
    {"tether_pool_requests_retried_total", "counter",
     "Outbound HTTP/1.x requests sent again on another stream: refused by the peer, or "
     "idempotent and their pooled connection lost before an answer.",
     LC_FIELD(pool.requests_retried)},
    {"tether_pool_workload_connections_opened_total", "counter",
     "Inbound: TCP connections to the workload opened for request streams.",
     LC_FIELD(pool.workload_opened)},
    {"tether_pool_workload_connections_reused_total", "counter",
     "Inbound: request streams that took a kept keep-alive connection to the workload.",
     LC_FIELD(pool.workload_reused)},
};

/* The uint64_t field of c at offset off. */
static uint64_t field_at(const struct tt_listener_counters *c, size_t off)
{
    return *(const uint64_t *)((const char *)c + off);
}

/* The value of lm for counters c: its field, or what is open now of its pair. */
static uint64_t listener_value(const struct tt_listener_counters *c,
                               const struct listener_metric *lm)
{
    if (lm->closed_off == SIZE_MAX)
        return field_at(c, lm->off);
    return open_now(field_at(c, lm->off), field_at(c, lm->closed_off));
}

static void prom_hist(struct sbuf *sb, const char *name, const char *help,
                      const struct tt_stats_view *view, const struct tt_metrics_sum *sum,
                      size_t hist_off)
{
    sb_family(sb, name, "histogram", help);
    for (size_t i = 0; i < view->n_listeners; i++) {
        const struct tt_hist *h =
            (const struct tt_hist *)((const char *)counters_at(sum, i) + hist_off);
        const char *lname = view->listeners[i].name;
        uint64_t cum = 0;

        for (size_t b = 0; b < TT_HIST_BUCKETS; b++) {
            cum += h->buckets[b];
            sb_printf(sb, "%s_bucket{", name);
            sb_label(sb, true, "listener", lname);
            sb_puts(sb, ",le=\"");
            if (b < TT_HIST_BUCKETS - 1)
                sb_printf(sb, "%g", (double)tt_hist_bounds_us[b] / 1e6);
            else
                sb_puts(sb, "+Inf");
            sb_printf(sb, "\"} %" PRIu64 "\n", cum);
        }
        sb_printf(sb, "%s_sum{", name);
        sb_label(sb, true, "listener", lname);
        sb_puts(sb, "} ");
        sb_seconds(sb, h->sum_us);
        sb_printf(sb, "\n%s_count{", name);
        sb_label(sb, true, "listener", lname);
        sb_printf(sb, "} %" PRIu64 "\n", h->count);
    }
}

/* One family of per-listener values, a sample per listener labelled listener and kind. */
static void prom_listener_family(struct sbuf *sb, const struct listener_metric *lm,
                                 const struct tt_stats_view *view, const struct tt_metrics_sum *sum)
{
    sb_family(sb, lm->name, lm->type, lm->help);
    for (size_t i = 0; i < view->n_listeners; i++) {
        sb_printf(sb, "%s{", lm->name);
        sb_label(sb, true, "listener", view->listeners[i].name);
        sb_label(sb, false, "kind", kind_name(view->listeners[i].kind));
        sb_printf(sb, "} %" PRIu64 "\n", listener_value(counters_at(sum, i), lm));
    }
}

static void prom_listeners(struct sbuf *sb, const struct tt_stats_view *view,
                           const struct tt_metrics_sum *sum)
{
    for (size_t m = 0; m < TT_ARRAY_SIZE(listener_metrics); m++)
        prom_listener_family(sb, &listener_metrics[m], view, sum);

    sb_family(sb, "tether_listener_handshake_failures_total", "counter",
              "TLS handshakes that failed, by reason.");
    for (size_t i = 0; i < view->n_listeners; i++) {
        for (int r = 0; r < TT_HS__COUNT; r++) {
            sb_puts(sb, "tether_listener_handshake_failures_total{");
            sb_label(sb, true, "listener", view->listeners[i].name);
            sb_label(sb, false, "reason", tt_hs_reason_name(r));
            sb_printf(sb, "} %" PRIu64 "\n", counters_at(sum, i)->hs_failures[r]);
        }
    }

    prom_hist(sb, "tether_listener_handshake_duration_seconds", "TLS handshake duration.", view,
              sum, LC_OFF(handshake_us));
    prom_hist(sb, "tether_listener_upstream_connect_duration_seconds",
              "Upstream TCP connect duration.", view, sum, LC_OFF(connect_us));
    prom_hist(sb, "tether_listener_connection_duration_seconds", "Connection lifetime.", view, sum,
              LC_OFF(duration_us));
}

/* The HTTP request families: requests by method and status class and refusals by reason
 * (non-zero series only: most of the product is never seen), the request duration
 * histogram, and the per-listener byte and denial counters. */
static void prom_requests(struct sbuf *sb, const struct tt_stats_view *view,
                          const struct tt_metrics_sum *sum)
{
    sb_family(sb, "tether_http_requests_total", "counter",
              "HTTP requests, by method and response status class (none: no response).");
    for (size_t i = 0; i < view->n_listeners; i++) {
        const struct tt_request_counters *c = &counters_at(sum, i)->requests;

        for (int m = 0; m < TT_REQ_METHOD__COUNT; m++) {
            for (int k = 0; k < TT_REQ_STATUS_CLASSES; k++) {
                if (c->by_method_status[m][k] == 0)
                    continue;
                sb_puts(sb, "tether_http_requests_total{");
                sb_label(sb, true, "listener", view->listeners[i].name);
                sb_label(sb, false, "method", tt_req_method_name(m));
                sb_label(sb, false, "status_class", tt_req_status_class_name(k));
                sb_printf(sb, "} %" PRIu64 "\n", c->by_method_status[m][k]);
            }
        }
    }
    prom_hist(sb, "tether_http_request_duration_seconds",
              "HTTP request duration, request head received to response complete.", view, sum,
              LC_OFF(requests.latency_us));
    for (size_t m = 0; m < TT_ARRAY_SIZE(http_listener_metrics); m++)
        prom_listener_family(sb, &http_listener_metrics[m], view, sum);
    sb_family(sb, "tether_http_requests_refused_total", "counter",
              "Malformed HTTP requests refused (400, 431), by reason.");
    for (size_t i = 0; i < view->n_listeners; i++) {
        const struct tt_request_counters *c = &counters_at(sum, i)->requests;

        for (int r = 1; r < TT_H1_R__COUNT; r++) { /* 0 is TT_H1_R_NONE, never counted */
            if (c->refused[r] == 0)
                continue;
            sb_puts(sb, "tether_http_requests_refused_total{");
            sb_label(sb, true, "listener", view->listeners[i].name);
            sb_label(sb, false, "reason", tt_h1_reason_name(r));
            sb_printf(sb, "} %" PRIu64 "\n", c->refused[r]);
        }
    }
}

static void prom_policy(struct sbuf *sb, const struct tt_stats_view *view,
                        const struct tt_metrics_sum *sum)
{
    const struct tt_policy *p = view->policy;
    size_t n = p ? tt_policy_rule_count(p) : 0;
    uint64_t allowed = 0, denied = 0;

    for (size_t i = 0; i < view->n_listeners; i++) {
        allowed += counters_at(sum, i)->allowed;
        denied += counters_at(sum, i)->denied;
    }
    sb_family(sb, "tether_policy_info", "gauge", "The policy in force (value always 1).");
    sb_puts(sb, "tether_policy_info{");
    sb_label(sb, true, "version", p ? tt_policy_version(p) : "");
    sb_label(sb, false, "default",
             p ? (tt_policy_default_allows(p) ? "allow" : "deny") : "allow-authenticated");
    sb_puts(sb, "} 1\n");
    sb_family(sb, "tether_policy_allowed_total", "counter", "Connections allowed by policy.");
    sb_printf(sb, "tether_policy_allowed_total %" PRIu64 "\n", allowed);
    sb_family(sb, "tether_policy_denied_total", "counter", "Connections denied by policy.");
    sb_printf(sb, "tether_policy_denied_total %" PRIu64 "\n", denied);

    sb_family(sb, "tether_policy_rule_hits_total", "counter", "Times a policy rule matched.");
    for (size_t i = 0; i < n; i++) {
        struct tt_policy_rule_info ri = {0};

        tt_policy_rule_info(p, i, &ri);
        sb_puts(sb, "tether_policy_rule_hits_total{");
        sb_label(sb, true, "rule", ri.name);
        sb_label(sb, false, "action", ri.action == TT_POLICY_ALLOW ? "allow" : "deny");
        sb_label(sb, false, "mode", ri.mode == TT_POLICY_AUDIT ? "audit" : "enforce");
        sb_printf(sb, "} %" PRIu64 "\n", rule_sum(sum, ri.name).hits);
    }
    sb_family(sb, "tether_policy_rule_audit_would_deny_total", "counter",
              "Times an audit deny rule would have refused a connection.");
    for (size_t i = 0; i < n; i++) {
        struct tt_policy_rule_info ri = {0};

        tt_policy_rule_info(p, i, &ri);
        sb_puts(sb, "tether_policy_rule_audit_would_deny_total{");
        sb_label(sb, true, "rule", ri.name);
        sb_printf(sb, "} %" PRIu64 "\n", rule_sum(sum, ri.name).audit_would_deny);
    }
}

static void prom_peers(struct sbuf *sb, const struct tt_metrics_sum *sum)
{
    static const struct {
        const char *name;
        const char *help;
        size_t off;
    } fams[] = {
        {"tether_peer_connections_total", "Connections per peer identity.",
         offsetof(struct tt_peer_counters, connections)},
        {"tether_peer_denied_total", "Connections denied per peer identity.",
         offsetof(struct tt_peer_counters, denied)},
        {"tether_peer_bytes_in_total", "Bytes received per peer identity.",
         offsetof(struct tt_peer_counters, bytes_in)},
        {"tether_peer_bytes_out_total", "Bytes sent per peer identity.",
         offsetof(struct tt_peer_counters, bytes_out)},
    };

    for (size_t f = 0; f < TT_ARRAY_SIZE(fams); f++) {
        sb_family(sb, fams[f].name, "counter", fams[f].help);
        for (size_t i = 0; i < sum->n_peers; i++) {
            sb_printf(sb, "%s{", fams[f].name);
            sb_label(sb, true, "peer", sum->peers[i].id);
            sb_printf(sb, "} %" PRIu64 "\n",
                      *(const uint64_t *)((const char *)&sum->peers[i] + fams[f].off));
        }
    }
    sb_family(sb, "tether_peer_http_requests_total", "counter",
              "HTTP requests per peer identity (none: plaintext callers), by status class.");
    for (size_t i = 0; i < sum->n_peers; i++) {
        for (int k = 0; k < TT_REQ_STATUS_CLASSES; k++) {
            if (sum->peers[i].requests_by_status[k] == 0)
                continue;
            sb_puts(sb, "tether_peer_http_requests_total{");
            sb_label(sb, true, "peer", sum->peers[i].id);
            sb_label(sb, false, "status_class", tt_req_status_class_name(k));
            sb_printf(sb, "} %" PRIu64 "\n", sum->peers[i].requests_by_status[k]);
        }
    }
}

/* Renders the view in Prometheus text format 0.0.4; malloc'ed string or NULL. */
char *tt_stats_prometheus(const struct tt_stats_view *view)
{
    struct tt_metrics_sum sum;
    struct sbuf sb = {0};
    int64_t now = tt_now_unix();
    const struct tt_cert_info *leaf = view->identity ? tt_identity_leaf(view->identity) : NULL;

    if (tt_metrics_sum(view->workers, view->n_workers, &sum) != 0)
        return NULL;

    sb_family(&sb, "tether_up", "gauge", "Whether /ready answers 200 (1) or 503 (0).");
    sb_printf(&sb, "tether_up %d\n", view->ready ? 1 : 0);
    sb_family(&sb, "tether_draining", "gauge", "1 once SIGTERM was received.");
    sb_printf(&sb, "tether_draining %d\n", view->draining ? 1 : 0);
    sb_family(&sb, "tether_start_time_seconds", "gauge", "Process start, unix seconds.");
    sb_printf(&sb, "tether_start_time_seconds %" PRId64 "\n", view->started_unix);
    sb_family(&sb, "tether_snapshot_age_seconds", "gauge", "Age of the current snapshot.");
    sb_printf(&sb, "tether_snapshot_age_seconds %" PRId64 "\n", now - view->snapshot_unix);
    sb_family(&sb, "tether_snapshot_generation", "gauge",
              "Snapshot generation: 1 at start, +1 per reload.");
    sb_printf(&sb, "tether_snapshot_generation %" PRIu64 "\n", view->snapshot_generation);
    sb_family(&sb, "tether_reloads_failed_total", "counter", "Reloads refused.");
    sb_printf(&sb, "tether_reloads_failed_total %" PRIu64 "\n", view->reloads_failed);
    sb_family(&sb, "tether_workers", "gauge", "Worker threads.");
    sb_printf(&sb, "tether_workers %zu\n", view->n_workers);
    sb_family(&sb, "tether_max_connections", "gauge",
              "Connections admitted at once (--max-connections, capped to the open-files limit).");
    sb_printf(&sb, "tether_max_connections %" PRIu64 "\n", view->max_connections);
    if (view->open_files_limit != UINT64_MAX) {
        sb_family(&sb, "tether_open_files_limit", "gauge", "Soft RLIMIT_NOFILE of the process.");
        sb_printf(&sb, "tether_open_files_limit %" PRIu64 "\n", view->open_files_limit);
    }
    sb_family(&sb, "tether_control_plane_info", "gauge",
              "Control plane connection state (value always 1).");
    sb_puts(&sb, "tether_control_plane_info{");
    sb_label(&sb, true, "state", view->control_state ? view->control_state : "none");
    sb_puts(&sb, "} 1\n");

    if (leaf != NULL) {
        sb_family(&sb, "tether_identity_info", "gauge",
                  "The workload certificate in use (value always 1).");
        sb_puts(&sb, "tether_identity_info{");
        sb_label(&sb, true, "spiffe_id", leaf->spiffe_id);
        sb_label(&sb, false, "serial", leaf->serial);
        sb_puts(&sb, "} 1\n");
        sb_family(&sb, "tether_identity_expiry_timestamp_seconds", "gauge",
                  "Workload certificate notAfter, unix seconds.");
        sb_printf(&sb, "tether_identity_expiry_timestamp_seconds %" PRId64 "\n", leaf->not_after);
        sb_family(&sb, "tether_identity_seconds_to_expiry", "gauge",
                  "Seconds until the workload certificate expires.");
        sb_printf(&sb, "tether_identity_seconds_to_expiry %" PRId64 "\n", leaf->not_after - now);
    }
    sb_family(&sb, "tether_identity_rotations_total", "counter",
              "Workload certificates replaced since start.");
    sb_printf(&sb, "tether_identity_rotations_total %" PRIu64 "\n", view->rotations);

    prom_listeners(&sb, view, &sum);
    prom_requests(&sb, view, &sum);
    for (size_t m = 0; m < TT_ARRAY_SIZE(pool_listener_metrics); m++)
        prom_listener_family(&sb, &pool_listener_metrics[m], view, &sum);
    prom_policy(&sb, view, &sum);
    prom_peers(&sb, &sum);
    tt_metrics_sum_done(&sum);

    if (sb.oom || sb.p == NULL) {
        free(sb.p);
        return NULL;
    }
    return sb.p;
}
