/* Where the allow list is checked (tt__conn_authorize) and, when rules with methods or paths
 * apply to the caller and port, the request gate's side of the connection: every request
 * passes http/gate.h, which asks policy per request, and is counted when it is over. An
 * inbound request stream that no such rule reads, and whose head the gate would pass on
 * unchanged, skips the gate and is counted by its meter. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "http/gate.h"
#include "http/h1.h"
#include "http/h2.h"
#include "http/h2h1.h"
#include "metrics/metrics.h"
#include "net/conn.h"
#include "net/conn_int.h"
#include "net/listener-t.h"
#include "policy/policy.h"
#include "snapshot/snapshot.h"
#include "tls/identity.h"

static int gate_to_upstream(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    return tt__side_send(c, c->plain_side, (const uint8_t *)data, len);
}

/* Encrypted now; the caller of the gate flushes the TLS output. */
static int gate_to_client(void *ud, const char *data, size_t len)
{
    struct tt_conn *c = ud;

    return tt__secure_write(c, data, len);
}

/* A request's verdict: counted per rule, audit matches logged. */
static void gate_on_verdict(void *ud, const struct tt_policy_verdict *v)
{
    struct tt_conn *c = ud;

    if (c->snapshot->policy == NULL)
        return; /* no rule to count */
    tt_metrics_policy_count(c->worker->metrics, c->snapshot->policy, v);
    tt__conn_log_audit(c, tt__conn_peer_id(c), v);
}

/* A request is over: counted on c's listener for peer_id (inbound: the caller; outbound:
 * the sidecar that answered), and its access line written (DESIGN.md "HTTP between
 * sidecars"; README "Logs"). This is where every request is counted. */
void tt__request_over(struct tt_conn *c, const char *peer_id, const struct tt_gate_request *rq)
{
    struct tt_request_record rec = {
        .method = rq->method,
        .status = rq->status,
        .request_bytes = rq->request_bytes,
        .response_bytes = rq->response_bytes,
        .duration_us = rq->duration_us,
        .denied = rq->denied,
    };

    unsigned sample = conn_settings(c)->request_log_sample;
    bool failed = rq->status == 0 || rq->status >= 500; /* unanswered, or a server error */
    bool notable = failed || rq->reason != NULL;        /* always logged */

    if (rq->refused_reason != 0)
        tt_metrics_request_refused(c->worker->metrics, c->listener->index, peer_id,
                                   (enum tt_h1_reason)rq->refused_reason);
    else
        tt_metrics_request(c->worker->metrics, c->listener->index, peer_id, &rec);
    if (++c->worker->requests_done % (sample > 0 ? sample : 1) != 0 && !notable)
        return;
    tt_log(failed ? TT_LOG_WARN : TT_LOG_INFO, "request", TT_LS("listener", c->listener->cfg->name),
           TT_LS("peer_addr", c->peer_addr), TT_LS("peer_id", peer_id), TT_LS("method", rq->method),
           TT_LS("path", rq->path), TT_LU("status", (uint64_t)rq->status),
           TT_LU("request_bytes", rq->request_bytes), TT_LU("response_bytes", rq->response_bytes),
           TT_LU("duration_us", rq->duration_us),
           TT_LS("verdict", rq->denied                               ? "deny"
                            : rq->rule == NULL && rq->reason != NULL ? "refused"
                                                                     : "allow"),
           TT_LS("rule", rq->rule), TT_LS("reason", rq->reason), TT_LS("upstream", c->target.text));
}

/* The gate's (or an inbound request stream's) request is over. */
void tt__gate_on_request(void *ud, const struct tt_gate_request *rq)
{
    struct tt_conn *c = ud;

    tt__request_over(c, tt__conn_peer_id(c), rq);
}

/* Puts the request gate between the verified caller and the workload. Returns 0 or
 * -ENOMEM. */
static int conn_gate_start(struct tt_conn *c, const char *caller, bool enforce)
{
    struct tt_gate_config cfg = {
        .policy = c->snapshot->policy,
        .caller = caller,
        .self = tt_identity_spiffe_id(c->snapshot->identity),
        .port = tt_addr_port(&c->target),
        .enforce = enforce,
        .pipeline_max = c->h2h1 != NULL ? 2 : 0, /* a request stream is one request */
        /* and its translator reads the response: tt__h2h1_response_over tells the gate */
        .caller_reads_responses = c->h2h1 != NULL,
    };
    struct tt_gate_io io = {
        .ud = c,
        .to_upstream = gate_to_upstream,
        .to_client = gate_to_client,
        .on_verdict = gate_on_verdict,
        .on_request = tt__gate_on_request,
    };

    c->gate = tt_gate_new(&cfg, &io);
    return c->gate != NULL ? 0 : -ENOMEM;
}

/* A request stream let through without the gate: what its access line needs once the
 * stream's fields may be gone. */
struct tt_request_meter {
    uint64_t start_us;
    char method[24];
    char path[256]; /* without the query, truncated: as the gate logs it */
};

/* Whether an allowed inbound request stream can skip the gate: no rule that applies to its
 * caller and port reads methods or paths (http == 0), and the gate would pass its head on
 * as it is (tt_h2h1_plain), so it could refuse or change nothing. */
static bool stream_skips_gate(struct tt_conn *c, unsigned http)
{
    size_t n = 0;
    const struct tt_h2_header *fields;

    if (c->h2h1 == NULL || http != 0 || c->stream == NULL)
        return false;
    fields = tt_h2_stream_headers(c->stream, &n);
    return tt_h2h1_plain(fields, n);
}

/* Meters a request stream that skips the gate: its verdict v (the connection's; no rule
 * that applies reads the request, so the gate's would be the same; NULL without a policy)
 * is counted now as the gate counts each request's, and the request when it is over
 * (tt__request_meter_end), under the connection's rule (c->rule, the same verdict's).
 * Returns 0 or -ENOMEM. */
static int conn_meter_start(struct tt_conn *c, const struct tt_policy_verdict *v)
{
    struct tt_request_meter *m = malloc(sizeof(*m));
    const char *path = tt_h2_stream_header(c->stream, ":path");
    size_t len = strcspn(path, "?");

    if (m == NULL)
        return -ENOMEM;
    m->start_us = tt__conn_now_us(c);
    tt_str_copy(m->method, sizeof(m->method), tt_h2_stream_header(c->stream, ":method"));
    if (len >= sizeof(m->path))
        len = sizeof(m->path) - 1;
    memcpy(m->path, path, len);
    m->path[len] = '\0';
    c->meter = m;
    if (v != NULL)
        gate_on_verdict(c, v);
    return 0;
}

/* A metered request stream is over: answered with `status` and the workload's
 * `response_bytes` (head included), or (status 0) ended without an answer. Counted and
 * logged as the gate reports its requests; nothing without a meter. */
void tt__request_meter_end(struct tt_conn *c, int status, uint64_t response_bytes)
{
    struct tt_request_meter *m = c->meter;
    uint64_t now_us;

    if (m == NULL)
        return;
    c->meter = NULL;
    now_us = tt__conn_now_us(c);
    struct tt_gate_request rq = {
        .method = m->method,
        .path = m->path,
        .status = status,
        .request_bytes = c->tls_side->bytes_read,
        .response_bytes = response_bytes,
        .duration_us = now_us > m->start_us ? now_us - m->start_us : 0,
        .rule = c->rule,
    };
    tt__gate_on_request(c, &rq);
    free(m);
}

/* Inbound: consults the allow list for the verified caller. This is the one place a
 * connection is admitted or refused by policy; where rules with methods or paths apply
 * to the caller and port, the connection is admitted to the request gate, which asks
 * the same policy for each request (conn_gate_start); a gRPC request stream (c->h2up) is
 * one request, decided here with its method and path. Returns true when allowed. */
bool tt__conn_authorize(struct tt_conn *c)
{
    struct tt_snapshot *snap = c->snapshot;
    /* A plaintext caller (permissive mode) has no identity: no rule's "from" matches. */
    const char *caller = c->tls != NULL || c->tunnel ? tt__conn_peer_id(c) : NULL;
    const char *self = tt_identity_spiffe_id(snap->identity);
    uint16_t port = tt_addr_port(&c->target);
    struct tt_listener_counters *lc = conn_counters(c);
    bool allowed = true;

    if (snap->policy != NULL) {
        const struct tt_transparent_cfg *t = conn_settings(c)->transparent;
        struct tt_policy_verdict v;
        /* Opaque ports are relayed unread (policies that would need them read are refused
         * at start and by NACK: tt_policy_check_opaque_enforceable). */
        unsigned http = caller != NULL && c->h2up == NULL &&
                                !tt__port_listed(t->opaque_ports, t->n_opaque_ports, port)
                            ? tt_policy_http_rules(snap->policy, caller, self, port)
                            : 0;

        if (c->h2up != NULL)
            /* A gRPC call is one request, decided here with its method and canonical path
             * (tt__grpc_path_canonical): no gate reads it. */
            tt_policy_check_request(snap->policy, caller, self, port,
                                    tt_h2_stream_header(c->stream, ":method"),
                                    tt_h2_stream_header(c->stream, ":path"), &v);
        else
            tt_policy_check(snap->policy, caller, self, port, NULL, NULL, &v);
        if ((http != 0 && (v.allowed || v.rule == TT_POLICY_RULE_DEFAULT)) ||
            (c->h2h1 != NULL && v.allowed)) {
            /* Each request is decided (and counted) by the gate; a rule without HTTP
             * conditions that denies the caller still refuses the whole connection. An
             * allowed request stream is one request: it passes the gate, which counts and
             * logs it, and its bytes are always HTTP; one whose caller no rule lets in on
             * this port is refused here, as a connection would be. */
            bool enforce = (http & TT_POLICY_HTTP_F_ENFORCE) != 0 || c->h2h1 != NULL;
            int r = stream_skips_gate(c, http) ? conn_meter_start(c, &v)
                                               : conn_gate_start(c, caller, enforce);
            if (r < 0)
                return false;
            c->rule = http != 0 ? "per-request" : v.rule_name;
            TT_COUNTER_ADD(lc->allowed, 1);
            c->verdict = "allow";
            return true;
        }
        tt_metrics_policy_count(c->worker->metrics, snap->policy, &v);
        allowed = v.allowed;
        c->rule = v.rule_name;
        tt__conn_log_audit(c, caller, &v);
    } else {
        c->rule = "no-policy";
        /* A request stream is still one request, counted and logged by its meter or the
         * gate. */
        if (c->h2h1 != NULL && (stream_skips_gate(c, 0) ? conn_meter_start(c, NULL)
                                                        : conn_gate_start(c, caller, true)) < 0)
            return false;
    }
    if (allowed)
        TT_COUNTER_ADD(lc->allowed, 1);
    else
        TT_COUNTER_ADD(lc->denied, 1);
    c->verdict = allowed ? "allow" : "deny";
    if (!allowed && (c->h2up != NULL || c->h2h1 != NULL)) {
        /* The refused call is a request too: counted and logged as the gate would. */
        struct tt_gate_request rq = {.method = tt_h2_stream_header(c->stream, ":method"),
                                     .path = tt_h2_stream_header(c->stream, ":path"),
                                     .status = 403,
                                     .rule = c->rule,
                                     .reason = "policy_denied",
                                     .denied = true};
        tt__gate_on_request(c, &rq);
    }
    return allowed;
}
