/* Fuzz target: the inbound request gate (http/gate.c). An input is a flags byte (bit 0:
 * the policy's "no-admin" rule enforces, else it only audits; the gate's `enforce` follows
 * from the policy as the sidecar sets it) then records: one byte whose low bit says where
 * the bytes come from (0: the client, 1: the workload) and whose bit 1 ends the workload's
 * side afterwards, one length byte, that many bytes. The gate's answers must be whole
 * (every "403" it writes names the rule that denied), it must never pass on a request
 * policy denied (where "no-admin" enforces, no line starting "GET /admin" or "POST /admin"
 * reaches the workload before an upgrade turned the connection opaque; where it audits,
 * bytes that are not HTTP are relayed as they are, by design), and nothing may crash,
 * hang or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/gate.h"
#include "policy/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The policy, "no-admin" in enforce (%s = "enforce") or audit mode. */
#define POLICY_DOC                                                                                 \
    "{\"default\": \"allow\", \"rules\": ["                                                        \
    "{\"name\": \"no-admin\", \"action\": \"deny\", \"mode\": \"%s\", \"from\": [\"*\"],"          \
    " \"paths\": [\"/admin*\"]},"                                                                  \
    "{\"name\": \"watch\", \"action\": \"deny\", \"mode\": \"audit\", \"from\": [\"*\"],"          \
    " \"methods\": [\"DELETE\"]}]}"

struct sink {
    bool enforce; /* "no-admin" enforces */
    bool opaque;  /* a 101 or 2xx to CONNECT was passed back: bytes are a tunnel now */
    size_t requests_done;
};

static int to_up(void *ud, const char *d, size_t n)
{
    struct sink *s = ud;

    /* The gate writes each forwarded head in one piece: its first bytes are the line. */
    if (s->enforce && !s->opaque && n >= 11 &&
        (memcmp(d, "GET /admin", 10) == 0 || memcmp(d, "POST /admin", 11) == 0))
        abort();
    return 0;
}

static int to_client(void *ud, const char *d, size_t n)
{
    struct sink *s = ud;

    if (n >= 12 && memcmp(d, "HTTP/1.1 101", 12) == 0)
        s->opaque = true;
    return 0;
}

static void on_request(void *ud, const struct tt_gate_request *rq)
{
    struct sink *s = ud;

    if (rq->denied && rq->status != 403 && rq->status != 0)
        abort();
    if (rq->status == 101 || (rq->status / 100 == 2 && strcmp(rq->method, "CONNECT") == 0))
        s->opaque = true;
    s->requests_done++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct tt_policy *policies[2]; /* [1]: "no-admin" enforces */
    char err[256];
    struct sink sink = {0};
    struct tt_gate_io io = {
        .ud = &sink, .to_upstream = to_up, .to_client = to_client, .on_request = on_request};
    struct tt_gate_config cfg = {
        .caller = "spiffe://td/ns/a/sa/b", .self = "spiffe://td/ns/c/sa/d", .port = 80};
    struct tt_gate *g;
    size_t i = 1;

    for (int k = 0; k < 2; k++) { /* both parsed at the first call */
        char text[512];

        if (policies[k] != NULL)
            continue;
        snprintf(text, sizeof(text), POLICY_DOC, k ? "enforce" : "audit");
        if ((policies[k] = tt_policy_parse(text, strlen(text), "fuzz", err, sizeof(err))) == NULL)
            abort();
    }
    if (size < 1)
        return 0;
    cfg.policy = policies[data[0] & 1];
    cfg.enforce =
        tt_policy_http_rules(cfg.policy, cfg.caller, cfg.self, cfg.port) & TT_POLICY_HTTP_F_ENFORCE;
    sink.enforce = cfg.enforce;
    if (sink.enforce != (data[0] & 1))
        abort(); /* the two policies are not what they say */
    if ((g = tt_gate_new(&cfg, &io)) == NULL)
        return 0;
    while (i + 2 <= size) {
        uint8_t how = data[i], len = data[i + 1];
        i += 2;
        if (len > size - i)
            len = (uint8_t)(size - i);
        int r = (how & 1) ? tt_gate_from_upstream(g, (const char *)data + i, len, i)
                          : tt_gate_from_client(g, (const char *)data + i, len, i);
        i += len;
        if (r < 0 || tt_gate_finished(g))
            break;
        if ((how & 2) && tt_gate_upstream_eof(g, i) < 0)
            break;
    }
    tt_gate_client_eof(g);
    tt_gate_free(g, size);
    return 0;
}
