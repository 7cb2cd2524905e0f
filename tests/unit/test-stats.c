/* Unit tests for stats.c: the /stats JSON document, the Prometheus text and /certs,
 * rendered from crafted views.
 *
 * The identity and policy getters are replaced by weak stubs over fake objects defined
 * here, so these tests pin down the rendering alone (the stubs are weak: the linker
 * does not pull identity.o or policy.o for them, and the real modules have their own
 * tests). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tls/crl.h"
#include "tls/identity.h"
#include "policy/policy.h"
#include "control/cpclient.h"
#include "admin/stats.h"
#include "core/util.h"

/* ---- fakes ---- */

struct tt_identity {
    struct tt_cert_info leaf;
    struct tt_cert_info roots[2];
    size_t n_roots;
};

struct tt_policy {
    const char *version;
    bool default_allows;
    struct tt_policy_rule_info rules[3];
    size_t n_rules;
};

__attribute__((weak)) const struct tt_cert_info *tt_identity_leaf(const struct tt_identity *id)
{
    return &id->leaf;
}

__attribute__((weak)) size_t tt_identity_root_count(const struct tt_identity *id)
{
    return id->n_roots;
}

__attribute__((weak)) const struct tt_cert_info *tt_identity_root(const struct tt_identity *id,
                                                                  size_t i)
{
    return i < id->n_roots ? &id->roots[i] : NULL;
}

/* No CRLs in these views: fakes keep the CRL module (and through it the real identity
 * module, whose functions would replace the fakes above) out of the link. */
__attribute__((weak)) size_t tt_crls_count(const struct tt_crls *crls)
{
    return 0;
}

__attribute__((weak)) const struct tt_crl_info *tt_crls_info(const struct tt_crls *crls, size_t i)
{
    return NULL;
}

__attribute__((weak)) const char *tt_policy_version(const struct tt_policy *p)
{
    return p->version;
}

__attribute__((weak)) bool tt_policy_default_allows(const struct tt_policy *p)
{
    return p->default_allows;
}

__attribute__((weak)) size_t tt_policy_rule_count(const struct tt_policy *p)
{
    return p->n_rules;
}

__attribute__((weak)) void tt_policy_rule_info(const struct tt_policy *p, size_t i,
                                               struct tt_policy_rule_info *out)
{
    *out = p->rules[i];
}

/* ---- fixture: 2 listeners, 2 workers, counters set ---- */

struct fixture {
    struct tt_listener_cfg cfg[2];
    struct tt_metrics *workers[2];
    struct tt_stats_view view;
    struct tt_identity identity;
    struct tt_policy policy;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct tt_listener_counters *a, *b;

    assert_non_null(f);
    f->cfg[0].kind = TT_LISTENER_INBOUND;
    snprintf(f->cfg[0].name, sizeof(f->cfg[0].name), "inbound:127.0.0.1:16006");
    assert_int_equal(tt_addr_parse("127.0.0.1:16006", 0, &f->cfg[0].listen), 0);
    assert_int_equal(tt_addr_parse("127.0.0.1:8080", 0, &f->cfg[0].target), 0);
    f->cfg[1].kind = TT_LISTENER_OUTBOUND;
    snprintf(f->cfg[1].name, sizeof(f->cfg[1].name), "outbound:127.0.0.1:16001");
    assert_int_equal(tt_addr_parse("127.0.0.1:16001", 0, &f->cfg[1].listen), 0);
    assert_int_equal(tt_addr_parse("127.0.0.1:9443", 0, &f->cfg[1].target), 0);
    f->cfg[1].expected_id = "spiffe://td/ns/shop/sa/api";

    f->workers[0] = tt_metrics_new(2);
    f->workers[1] = tt_metrics_new(2);
    assert_non_null(f->workers[0]);
    assert_non_null(f->workers[1]);

    a = &f->workers[0]->listeners[0];
    b = &f->workers[1]->listeners[0];
    a->accepted = 10;
    a->closed = 4;
    b->accepted = 5;
    b->closed = 5;
    a->bytes_in = 1000;
    b->bytes_in = 234;
    a->bytes_out = 77;
    a->handshakes = 9;
    b->handshakes = 4;
    a->allowed = 7;
    b->allowed = 1;
    a->denied = 2;
    f->workers[1]->listeners[1].denied = 1;
    f->workers[1]->listeners[1].refused_limit = 3;
    f->workers[0]->listeners[1].upstream_connect_failures = 6;
    a->accept_failures = 4;
    b->accept_failures = 1;
    b->refused_fd_shortage = 2;
    tt_metrics_observe(&a->handshake_us, 90);   /* bucket le=100 */
    tt_metrics_observe(&b->handshake_us, 200);  /* le=250 */
    tt_metrics_observe(&b->handshake_us, 3000); /* le=5000 */

    tt_metrics_hs_failure(f->workers[0], 0, TT_HS_EXPIRED, "10.0.0.9:4000",
                          "spiffe://td/ns/old/sa/x", "0ABC", "CN=root");
    tt_metrics_hs_failure(f->workers[1], 1, TT_HS_UNKNOWN_CA, "10.0.0.8:4001", "", "", "");
    tt_metrics_hs_failure(f->workers[1], 0, TT_HS_UNKNOWN_CA, "10.0.0.7:4002", NULL, NULL, NULL);
    /* Make the order deterministic: worker 1's last failure is the newest. */
    f->workers[0]->failures[0].unix_ms = 1700000000000LL;
    f->workers[1]->failures[0].unix_ms = 1700000001000LL;
    f->workers[1]->failures[1].unix_ms = 1700000002500LL;

    tt_metrics_peer_add(f->workers[0], "spiffe://td/ns/shop/sa/web", 100, 200, false);
    tt_metrics_peer_add(f->workers[1], "spiffe://td/ns/shop/sa/web", 1, 2, true);

    f->view.listeners = f->cfg;
    f->view.n_listeners = 2;
    f->view.workers = f->workers;
    f->view.n_workers = 2;
    f->view.started_unix = tt_now_unix() - 100;
    f->view.snapshot_unix = tt_now_unix() - 10;
    f->view.snapshot_generation = 3;
    f->view.rotations = 2;
    f->view.reloads_failed = 1;
    f->view.ready = true;
    f->view.control_state = "none";
    f->view.max_connections = 94;
    f->view.open_files_limit = 256;

    snprintf(f->identity.leaf.spiffe_id, sizeof(f->identity.leaf.spiffe_id),
             "spiffe://td/ns/shop/sa/api");
    snprintf(f->identity.leaf.serial, sizeof(f->identity.leaf.serial), "01AB");
    snprintf(f->identity.leaf.subject, sizeof(f->identity.leaf.subject), "O=td");
    snprintf(f->identity.leaf.issuer, sizeof(f->identity.leaf.issuer), "CN=td root");
    f->identity.leaf.not_before = tt_now_unix() - 60;
    f->identity.leaf.not_after = tt_now_unix() + 3600;
    snprintf(f->identity.roots[0].serial, sizeof(f->identity.roots[0].serial), "01");
    snprintf(f->identity.roots[0].subject, sizeof(f->identity.roots[0].subject), "CN=td root");
    f->identity.roots[0].not_after = tt_now_unix() + 86400;
    snprintf(f->identity.roots[1].serial, sizeof(f->identity.roots[1].serial), "02");
    f->identity.n_roots = 2;

    f->policy.version = "v7";
    f->policy.default_allows = false;
    f->policy.rules[0] =
        (struct tt_policy_rule_info){"web-to-api", TT_POLICY_ALLOW, TT_POLICY_ENFORCE};
    f->policy.rules[1] =
        (struct tt_policy_rule_info){"no-\"batch\"", TT_POLICY_DENY, TT_POLICY_AUDIT};
    f->policy.n_rules = 2;
    /* Rule counters live in the workers' metrics, by name, and are summed: 5 + 3 hits of
     * the enforce rule, one audit would-deny on each worker. */
    struct tt_policy_verdict decide = {.allowed = true, .rule = 0};
    struct tt_policy_verdict audit = {.allowed = true, .rule = -1, .n_audit = 1, .audit = {1}};
    for (int i = 0; i < 8; i++)
        tt_metrics_policy_count(f->workers[i < 5 ? 0 : 1], &f->policy, &decide);
    tt_metrics_policy_count(f->workers[0], &f->policy, &audit);
    tt_metrics_policy_count(f->workers[1], &f->policy, &audit);

    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    tt_metrics_free(f->workers[0]);
    tt_metrics_free(f->workers[1]);
    free(f);
    return 0;
}

static json_int_t jget_int(json_t *o, const char *path)
{
    json_t *v = json_object_get(o, path);

    assert_non_null(v);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

/* ---- tests ---- */

static void test_stats_json_listeners(void **state)
{
    struct fixture *f = *state;
    json_t *doc = tt_stats_json(&f->view);
    json_t *ls, *l0, *l1, *hf, *lat, *hs, *buckets;

    assert_non_null(doc);
    ls = json_object_get(doc, "listeners");
    assert_true(json_is_array(ls));
    assert_int_equal(json_array_size(ls), 2);
    l0 = json_array_get(ls, 0);
    l1 = json_array_get(ls, 1);
    assert_string_equal(json_string_value(json_object_get(l0, "name")), "inbound:127.0.0.1:16006");
    assert_string_equal(json_string_value(json_object_get(l0, "kind")), "inbound");
    assert_string_equal(json_string_value(json_object_get(l1, "kind")), "outbound");
    assert_string_equal(json_string_value(json_object_get(l0, "listen")), "127.0.0.1:16006");
    assert_string_equal(json_string_value(json_object_get(l0, "target")), "127.0.0.1:8080");
    assert_true(json_is_null(json_object_get(l0, "expected_id")));
    assert_string_equal(json_string_value(json_object_get(l1, "expected_id")),
                        "spiffe://td/ns/shop/sa/api");
    assert_int_equal(jget_int(l0, "accepted"), 15);
    assert_int_equal(jget_int(l0, "active"), 6);
    assert_int_equal(jget_int(l0, "bytes_in"), 1234);
    assert_int_equal(jget_int(l0, "bytes_out"), 77);
    assert_int_equal(jget_int(l0, "handshakes"), 13);
    assert_int_equal(jget_int(l0, "allowed"), 8);
    assert_int_equal(jget_int(l0, "denied"), 2);
    assert_int_equal(jget_int(l1, "denied"), 1);
    assert_int_equal(jget_int(l1, "refused_limit"), 3);
    assert_int_equal(jget_int(l1, "upstream_connect_failures"), 6);
    assert_int_equal(jget_int(l0, "accept_failures"), 5);
    assert_int_equal(jget_int(l0, "refused_fd_shortage"), 2);
    assert_int_equal(jget_int(l1, "accept_failures"), 0);

    hf = json_object_get(l0, "handshake_failures");
    assert_int_equal(jget_int(hf, "expired"), 1);
    assert_int_equal(jget_int(hf, "unknown_ca"), 1);
    assert_int_equal(jget_int(hf, "no_cert"), 0);
    assert_int_equal(json_object_size(hf), TT_HS__COUNT);
    hf = json_object_get(l1, "handshake_failures");
    assert_int_equal(jget_int(hf, "unknown_ca"), 1);

    /* Totals over listeners. */
    hf = json_object_get(doc, "handshake_failures");
    assert_int_equal(jget_int(hf, "unknown_ca"), 2);
    assert_int_equal(jget_int(hf, "expired"), 1);
    assert_int_equal(jget_int(hf, "revoked"), 0);

    lat = json_object_get(l0, "latency");
    hs = json_object_get(lat, "handshake_us");
    assert_non_null(json_object_get(lat, "connect_us"));
    assert_non_null(json_object_get(lat, "duration_us"));
    assert_int_equal(jget_int(hs, "count"), 3);
    assert_int_equal(jget_int(hs, "sum_us"), 3290);
    buckets = json_object_get(hs, "buckets");
    assert_int_equal(json_array_size(buckets), TT_HIST_BUCKETS);
    assert_int_equal(jget_int(json_array_get(buckets, 0), "le"), 100);
    assert_int_equal(jget_int(json_array_get(buckets, 0), "count"), 1);
    assert_int_equal(jget_int(json_array_get(buckets, 1), "count"), 2); /* cumulative */
    assert_int_equal(jget_int(json_array_get(buckets, 4), "count"), 2); /* le=2500 */
    assert_int_equal(jget_int(json_array_get(buckets, 5), "count"), 3); /* le=5000 */
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(buckets, TT_HIST_BUCKETS - 1), "le")),
        "+Inf");
    assert_int_equal(jget_int(json_array_get(buckets, TT_HIST_BUCKETS - 1), "count"), 3);
    /* p50: rank 1.5 falls in (100, 250] holding 1 of the first 2: 100 + 150 * 0.5 */
    assert_int_equal(jget_int(hs, "p50_us"), 175);
    /* p90: rank 2.7 in (2500, 5000]: 2500 + 2500 * 0.7 */
    assert_int_equal(jget_int(hs, "p90_us"), 4250);
    /* p99: rank 2.97 in (2500, 5000]: 2500 + 2500 * 0.97 */
    assert_int_equal(jget_int(hs, "p99_us"), 4925);
    /* An empty histogram has no percentiles. */
    assert_true(json_is_null(json_object_get(json_object_get(lat, "connect_us"), "p50_us")));
    json_decref(doc);
}

static void test_stats_json_control(void **state)
{
    struct fixture *f = *state;
    struct tt_cp_status cp = {.state = TT_CP_S_UNREACHABLE,
                              .state_name = "unreachable",
                              .version_applied = 7,
                              .version_refused = 8,
                              .rotations = 3,
                              .last_contact_unix = tt_now_unix() - 5};
    json_t *doc, *control;

    /* Explicit mode: no control block. */
    doc = tt_stats_json(&f->view);
    assert_null(json_object_get(json_object_get(doc, "server"), "control"));
    json_decref(doc);

    snprintf(cp.last_error, sizeof(cp.last_error), "connect 127.0.0.1:15012: refused");
    f->view.control = &cp;
    f->view.control_state = cp.state_name;
    doc = tt_stats_json(&f->view);
    control = json_object_get(json_object_get(doc, "server"), "control");
    assert_non_null(control);
    assert_string_equal(json_string_value(json_object_get(control, "state")), "unreachable");
    assert_int_equal(jget_int(control, "version_applied"), 7);
    assert_int_equal(jget_int(control, "version_refused"), 8);
    assert_int_equal(jget_int(control, "rotations"), 3);
    assert_true(jget_int(control, "seconds_since_contact") >= 5);
    assert_string_equal(json_string_value(json_object_get(control, "last_error")),
                        "connect 127.0.0.1:15012: refused");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(doc, "server"), "control_plane")),
        "unreachable");
    json_decref(doc);
    f->view.control = NULL;
}

static void test_stats_json_server_and_nulls(void **state)
{
    struct fixture *f = *state;
    json_t *doc = tt_stats_json(&f->view);
    json_t *server, *pol;

    assert_non_null(doc);
    server = json_object_get(doc, "server");
    assert_int_equal(jget_int(server, "snapshot_generation"), 3);
    assert_int_equal(jget_int(server, "reloads_failed"), 1);
    assert_int_equal(jget_int(server, "workers"), 2);
    assert_true(jget_int(server, "uptime_seconds") >= 100);
    assert_true(jget_int(server, "uptime_seconds") <= 102);
    assert_true(json_is_true(json_object_get(server, "ready")));
    assert_true(json_is_false(json_object_get(server, "draining")));
    assert_int_equal(jget_int(server, "max_connections"), 94);
    assert_int_equal(jget_int(server, "open_files_limit"), 256);
    json_decref(doc);
    f->view.open_files_limit = UINT64_MAX; /* no limit at all */
    doc = tt_stats_json(&f->view);
    assert_non_null(doc);
    server = json_object_get(doc, "server");
    assert_true(json_is_null(json_object_get(server, "open_files_limit")));

    /* No identity, no policy. */
    assert_true(json_is_null(json_object_get(doc, "identity")));
    pol = json_object_get(doc, "policy");
    assert_non_null(pol);
    assert_true(json_is_null(json_object_get(pol, "version")));
    assert_string_equal(json_string_value(json_object_get(pol, "default")), "allow-authenticated");
    assert_int_equal(jget_int(pol, "allowed"), 8);
    assert_int_equal(jget_int(pol, "denied"), 3);
    assert_int_equal(json_array_size(json_object_get(pol, "rules")), 0);
    json_decref(doc);
}

static void test_stats_json_identity(void **state)
{
    struct fixture *f = *state;
    json_t *doc, *id;
    json_int_t left;

    f->view.identity = &f->identity;
    f->view.control_state = "connected";
    doc = tt_stats_json(&f->view);
    assert_non_null(doc);
    id = json_object_get(doc, "identity");
    assert_true(json_is_object(id));
    assert_string_equal(json_string_value(json_object_get(id, "spiffe_id")),
                        "spiffe://td/ns/shop/sa/api");
    assert_string_equal(json_string_value(json_object_get(id, "serial")), "01AB");
    assert_int_equal(jget_int(id, "not_after"), f->identity.leaf.not_after);
    assert_int_equal(jget_int(id, "not_before"), f->identity.leaf.not_before);
    left = jget_int(id, "seconds_to_expiry");
    assert_true(left >= 3598 && left <= 3600);
    assert_int_equal(jget_int(id, "rotations"), 2);
    assert_string_equal(json_string_value(json_object_get(id, "control_plane")), "connected");
    json_decref(doc);

    /* An expired certificate shows a negative time to expiry. */
    f->identity.leaf.not_after = tt_now_unix() - 50;
    doc = tt_stats_json(&f->view);
    left = jget_int(json_object_get(doc, "identity"), "seconds_to_expiry");
    assert_true(left <= -49 && left >= -51);
    json_decref(doc);
}

static void test_stats_json_policy(void **state)
{
    struct fixture *f = *state;
    json_t *doc, *pol, *rules, *r;

    f->view.policy = &f->policy;
    doc = tt_stats_json(&f->view);
    assert_non_null(doc);
    pol = json_object_get(doc, "policy");
    assert_string_equal(json_string_value(json_object_get(pol, "version")), "v7");
    assert_string_equal(json_string_value(json_object_get(pol, "default")), "deny");
    assert_int_equal(jget_int(pol, "allowed"), 8);
    assert_int_equal(jget_int(pol, "denied"), 3);
    rules = json_object_get(pol, "rules");
    assert_int_equal(json_array_size(rules), 2);
    r = json_array_get(rules, 0);
    assert_string_equal(json_string_value(json_object_get(r, "name")), "web-to-api");
    assert_string_equal(json_string_value(json_object_get(r, "action")), "allow");
    assert_string_equal(json_string_value(json_object_get(r, "mode")), "enforce");
    assert_int_equal(jget_int(r, "hits"), 8);
    r = json_array_get(rules, 1);
    assert_string_equal(json_string_value(json_object_get(r, "action")), "deny");
    assert_string_equal(json_string_value(json_object_get(r, "mode")), "audit");
    assert_int_equal(jget_int(r, "audit_would_deny"), 2);
    json_decref(doc);

    f->policy.default_allows = true;
    doc = tt_stats_json(&f->view);
    pol = json_object_get(doc, "policy");
    assert_string_equal(json_string_value(json_object_get(pol, "default")), "allow");
    json_decref(doc);
}

static void test_stats_json_peers_and_failures(void **state)
{
    struct fixture *f = *state;
    json_t *doc = tt_stats_json(&f->view);
    json_t *peers, *p, *fails, *x;

    assert_non_null(doc);
    peers = json_object_get(doc, "peers");
    assert_int_equal(json_array_size(peers), 1);
    p = json_array_get(peers, 0);
    assert_string_equal(json_string_value(json_object_get(p, "spiffe_id")),
                        "spiffe://td/ns/shop/sa/web");
    assert_int_equal(jget_int(p, "connections"), 2);
    assert_int_equal(jget_int(p, "denied"), 1);
    assert_int_equal(jget_int(p, "bytes_in"), 101);
    assert_int_equal(jget_int(p, "bytes_out"), 202);

    fails = json_object_get(doc, "recent_handshake_failures");
    assert_int_equal(json_array_size(fails), 3);
    x = json_array_get(fails, 0); /* newest: worker 1's second */
    assert_string_equal(json_string_value(json_object_get(x, "peer_addr")), "10.0.0.7:4002");
    assert_string_equal(json_string_value(json_object_get(x, "reason")), "unknown_ca");
    assert_string_equal(json_string_value(json_object_get(x, "listener")),
                        "inbound:127.0.0.1:16006");
    assert_string_equal(json_string_value(json_object_get(x, "time")), "2023-11-14T22:13:22.500Z");
    assert_int_equal(jget_int(x, "unix_ms"), 1700000002500LL);
    assert_true(json_is_null(json_object_get(x, "spiffe_id")));
    x = json_array_get(fails, 1);
    assert_string_equal(json_string_value(json_object_get(x, "listener")),
                        "outbound:127.0.0.1:16001");
    assert_true(json_is_null(json_object_get(x, "serial")));
    x = json_array_get(fails, 2);
    assert_string_equal(json_string_value(json_object_get(x, "spiffe_id")),
                        "spiffe://td/ns/old/sa/x");
    assert_string_equal(json_string_value(json_object_get(x, "serial")), "0ABC");
    assert_string_equal(json_string_value(json_object_get(x, "issuer")), "CN=root");
    assert_string_equal(json_string_value(json_object_get(x, "reason")), "expired");
    json_decref(doc);
}

static void test_stats_json_hostile_strings(void **state)
{
    struct fixture *f = *state;
    json_t *doc, *x;
    char *text;

    /* Invalid UTF-8 from a peer, and a listener index nobody knows. */
    tt_metrics_hs_failure(f->workers[0], 9, TT_HS_BAD_SAN, "1.1.1.1:1",
                          "spiffe://td/\xff\xfe\xc0\x80", "\xed\xa0\x80", "CN=\"x\"\n");
    tt_metrics_peer_add(f->workers[0], "spiffe://td/\x80zz", 1, 1, false);
    doc = tt_stats_json(&f->view);
    assert_non_null(doc);
    x = json_array_get(json_object_get(doc, "recent_handshake_failures"), 0);
    assert_string_equal(json_string_value(json_object_get(x, "spiffe_id")), "spiffe://td/????");
    assert_string_equal(json_string_value(json_object_get(x, "serial")), "???");
    assert_string_equal(json_string_value(json_object_get(x, "issuer")), "CN=\"x\"\n");
    assert_true(json_is_null(json_object_get(x, "listener")));
    /* Sorted by the raw bytes: 0x80 comes after "ns/...". */
    x = json_array_get(json_object_get(doc, "peers"), 1);
    assert_string_equal(json_string_value(json_object_get(x, "spiffe_id")), "spiffe://td/?zz");
    text = json_dumps(doc, 0);
    assert_non_null(text);
    free(text);
    json_decref(doc);
}

static void test_stats_json_quantile_edges(void **state)
{
    struct fixture *f = *state;
    struct tt_listener_counters *c = &f->workers[0]->listeners[1];
    json_t *doc, *h;

    for (int i = 0; i < 100; i++)
        tt_metrics_observe(&c->connect_us, 50);
    for (int i = 0; i < 4; i++)
        tt_metrics_observe(&c->duration_us, 60000000); /* all beyond the last bound */
    doc = tt_stats_json(&f->view);
    h = json_object_get(
        json_object_get(json_array_get(json_object_get(doc, "listeners"), 1), "latency"),
        "connect_us");
    assert_int_equal(jget_int(h, "p50_us"), 50); /* 0 + 100 * 50/100 */
    assert_int_equal(jget_int(h, "p99_us"), 99);
    h = json_object_get(
        json_object_get(json_array_get(json_object_get(doc, "listeners"), 1), "latency"),
        "duration_us");
    assert_int_equal(jget_int(h, "p50_us"), 10000000); /* +Inf answers the last bound */
    json_decref(doc);
}

static void test_stats_json_empty_view(void **state)
{
    struct tt_stats_view view = {0};
    json_t *doc = tt_stats_json(&view);

    assert_non_null(doc);
    assert_int_equal(json_array_size(json_object_get(doc, "listeners")), 0);
    assert_int_equal(json_array_size(json_object_get(doc, "peers")), 0);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(doc, "server"), "control_plane")),
        "none");
    json_decref(doc);
}

/* Requests on listener 0 of both workers, from two callers, two refused. */
static void add_requests(struct fixture *f)
{
    const char *web = "spiffe://td/ns/shop/sa/web";
    struct tt_request_record get = {
        .method = "GET", .status = 200, .response_bytes = 100, .duration_us = 90};
    struct tt_request_record post = {.method = "POST",
                                     .status = 503,
                                     .request_bytes = 1000,
                                     .response_bytes = 50,
                                     .duration_us = 3000};
    struct tt_request_record del = {
        .method = "DELETE", .status = 403, .response_bytes = 7, .duration_us = 10, .denied = true};

    tt_metrics_request(f->workers[0], 0, web, &get);
    tt_metrics_request(f->workers[0], 0, web, &get);
    tt_metrics_request(f->workers[1], 0, web, &post);
    tt_metrics_request(f->workers[1], 0, NULL, &del);
    tt_metrics_request_refused(f->workers[0], 0, NULL, TT_H1_R_CL_AND_TE);
    tt_metrics_request_refused(f->workers[1], 0, "", TT_H1_R_HEAD_TOO_LARGE);
}

/* Asserts o is {"none": c[0], "1xx": c[1], ..., "5xx": c[5]} and nothing else. */
static void assert_classes(json_t *o, const json_int_t c[TT_REQ_STATUS_CLASSES])
{
    static const char *const names[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};

    assert_true(json_is_object(o));
    assert_int_equal(json_object_size(o), TT_REQ_STATUS_CLASSES);
    for (int k = 0; k < TT_REQ_STATUS_CLASSES; k++)
        assert_int_equal(jget_int(o, names[k]), c[k]);
}

static void test_stats_json_requests(void **state)
{
    struct fixture *f = *state;
    const json_int_t l0_classes[] = {0, 0, 2, 0, 3, 1};
    const json_int_t none_classes[] = {0, 0, 0, 0, 3, 0}, web_classes[] = {0, 0, 2, 0, 0, 1};
    json_t *doc, *rq, *o, *lat, *peers, *p;

    add_requests(f);
    doc = tt_stats_json(&f->view);
    assert_non_null(doc);
    rq = json_object_get(json_array_get(json_object_get(doc, "listeners"), 0), "requests");
    assert_true(json_is_object(rq));
    assert_int_equal(json_object_size(rq), 8);
    assert_int_equal(jget_int(rq, "total"), 6);
    o = json_object_get(rq, "by_method");
    assert_int_equal(json_object_size(o), 4); /* non-zero methods only */
    assert_int_equal(jget_int(o, "GET"), 2);
    assert_int_equal(jget_int(o, "POST"), 1);
    assert_int_equal(jget_int(o, "DELETE"), 1);
    assert_int_equal(jget_int(o, "other"), 2); /* the refused ones */
    assert_classes(json_object_get(rq, "by_status"), l0_classes);
    assert_int_equal(jget_int(rq, "request_bytes"), 1000);
    assert_int_equal(jget_int(rq, "response_bytes"), 257);
    assert_int_equal(jget_int(rq, "denied"), 1);
    o = json_object_get(rq, "refused");
    assert_int_equal(json_object_size(o), 2); /* non-zero reasons only */
    assert_int_equal(jget_int(o, "content_length_and_transfer_encoding"), 1);
    assert_int_equal(jget_int(o, "header_section_too_large"), 1);
    lat = json_object_get(rq, "latency_us");
    assert_int_equal(jget_int(lat, "count"), 4);
    assert_int_equal(jget_int(lat, "sum_us"), 3190);
    assert_int_equal(jget_int(lat, "p50_us"), 67);   /* rank 2 of 3 in [0, 100] */
    assert_int_equal(jget_int(lat, "p90_us"), 4000); /* rank 3.6: 2500 + 2500 * 0.6 */
    assert_int_equal(jget_int(lat, "p99_us"), 4900); /* rank 3.96 */
    assert_int_equal(jget_int(json_array_get(json_object_get(lat, "buckets"), 0), "count"), 3);

    /* The other listener saw nothing: zeros, empty objects, no percentiles. */
    rq = json_object_get(json_array_get(json_object_get(doc, "listeners"), 1), "requests");
    assert_int_equal(jget_int(rq, "total"), 0);
    assert_int_equal(json_object_size(json_object_get(rq, "by_method")), 0);
    assert_int_equal(json_object_size(json_object_get(rq, "refused")), 0);

    /* Peers: "none" for callers without identity, sorted before the SPIFFE IDs. */
    peers = json_object_get(doc, "peers");
    assert_int_equal(json_array_size(peers), 2);
    p = json_array_get(peers, 0);
    assert_string_equal(json_string_value(json_object_get(p, "spiffe_id")), "none");
    assert_int_equal(jget_int(p, "requests"), 3);
    assert_int_equal(jget_int(p, "connections"), 0);
    assert_classes(json_object_get(p, "requests_by_status"), none_classes);
    p = json_array_get(peers, 1);
    assert_string_equal(json_string_value(json_object_get(p, "spiffe_id")),
                        "spiffe://td/ns/shop/sa/web");
    assert_int_equal(jget_int(p, "requests"), 3);
    assert_int_equal(jget_int(p, "connections"), 2); /* the fixture's, unchanged */
    assert_classes(json_object_get(p, "requests_by_status"), web_classes);
    json_decref(doc);
}

/* A sidecar that has seen no request renders "requests" with zeros, not missing. */
static void test_stats_json_requests_idle(void **state)
{
    struct fixture *f = *state;
    const json_int_t zero[TT_REQ_STATUS_CLASSES] = {0};
    json_t *doc = tt_stats_json(&f->view);
    json_t *ls = json_object_get(doc, "listeners"), *rq, *lat, *p;

    assert_non_null(doc);
    for (size_t i = 0; i < json_array_size(ls); i++) {
        rq = json_object_get(json_array_get(ls, i), "requests");
        assert_true(json_is_object(rq));
        assert_int_equal(jget_int(rq, "total"), 0);
        assert_true(json_is_object(json_object_get(rq, "by_method")));
        assert_int_equal(json_object_size(json_object_get(rq, "by_method")), 0);
        assert_classes(json_object_get(rq, "by_status"), zero);
        assert_int_equal(jget_int(rq, "request_bytes"), 0);
        assert_int_equal(jget_int(rq, "response_bytes"), 0);
        assert_int_equal(jget_int(rq, "denied"), 0);
        assert_true(json_is_object(json_object_get(rq, "refused")));
        assert_int_equal(json_object_size(json_object_get(rq, "refused")), 0);
        lat = json_object_get(rq, "latency_us");
        assert_int_equal(jget_int(lat, "count"), 0);
        assert_int_equal(jget_int(lat, "sum_us"), 0);
        assert_true(json_is_null(json_object_get(lat, "p50_us")));
        assert_true(json_is_null(json_object_get(lat, "p90_us")));
        assert_true(json_is_null(json_object_get(lat, "p99_us")));
        assert_int_equal(json_array_size(json_object_get(lat, "buckets")), TT_HIST_BUCKETS);
    }
    assert_int_equal(json_array_size(ls), 2);
    p = json_array_get(json_object_get(doc, "peers"), 0);
    assert_int_equal(jget_int(p, "requests"), 0);
    assert_classes(json_object_get(p, "requests_by_status"), zero);
    json_decref(doc);
}

static void assert_contains(const char *text, const char *needle)
{
    if (strstr(text, needle) == NULL) {
        print_error("missing line: %s\n", needle);
        fail();
    }
}

static void assert_lacks(const char *text, const char *needle)
{
    if (strstr(text, needle) != NULL) {
        print_error("unexpected line: %s\n", needle);
        fail();
    }
}

static size_t count_of(const char *text, const char *needle)
{
    size_t n = 0;

    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

/* The text format's rules (exposition format 0.0.4) as a small parser checks them: every
 * line is a comment "# HELP name text" / "# TYPE name type" or a sample "name{labels}
 * value"; each family has one HELP and one TYPE, before its samples, and its samples are
 * contiguous; a sample's name is its family's (or, for a histogram, the family's _bucket,
 * _sum, _count); label values are quoted with \\, \" and \n the only escapes; values are
 * numbers. */
static void assert_prometheus_valid(const char *text)
{
    char family[128] = "", type[16] = "", seen[8192] = " ";
    const char *line = text;

    assert_true(text[0] != '\0' && text[strlen(text) - 1] == '\n');
    while (*line != '\0') {
        const char *end = strchr(line, '\n'), *p = line;
        char name[128], fam_key[140];
        size_t n = 0;

        assert_non_null(end);
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            bool is_type = line[2] == 'T';

            p = line + 7;
            while (p < end && *p != ' ')
                name[n++] = *p++;
            name[n] = '\0';
            assert_true(n > 0 && p < end);
            if (strcmp(name, family) != 0) { /* a new family: never seen before */
                snprintf(fam_key, sizeof(fam_key), " %s ", name);
                if (strstr(seen, fam_key) != NULL) {
                    print_error("family %s announced twice or split\n", name);
                    fail();
                }
                assert_true(strlen(seen) + strlen(fam_key) < sizeof(seen));
                strcat(seen, fam_key + 1);
                snprintf(family, sizeof(family), "%s", name);
                type[0] = '\0';
            } else if (is_type) {
                assert_true(type[0] == '\0'); /* one TYPE per family */
            }
            if (is_type) {
                snprintf(type, sizeof(type), "%.*s", (int)(end - p - 1), p + 1);
                assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                            strcmp(type, "histogram") == 0);
            }
            line = end + 1;
            continue;
        }
        assert_true(line[0] != '#');
        /* name */
        while (p < end && (*p == '_' || *p == ':' || (*p >= 'a' && *p <= 'z') ||
                           (*p >= 'A' && *p <= 'Z') || (n > 0 && *p >= '0' && *p <= '9')))
            name[n++] = *p++;
        name[n] = '\0';
        assert_true(n > 0);
        assert_true(type[0] != '\0'); /* TYPE came before the samples */
        if (strcmp(name, family) != 0) {
            char want[160];
            bool ok = false;

            for (int s = 0; strcmp(type, "histogram") == 0 && s < 3 && !ok; s++) {
                snprintf(want, sizeof(want), "%s%s", family,
                         (const char *[]){"_bucket", "_sum", "_count"}[s]);
                ok = strcmp(name, want) == 0;
            }
            if (!ok) {
                print_error("sample %s outside its family (current %s)\n", name, family);
                fail();
            }
        }
        /* labels */
        if (p < end && *p == '{') {
            p++;
            while (p < end && *p != '}') {
                assert_true((*p >= 'a' && *p <= 'z') || *p == '_');
                while (p < end && *p != '=')
                    p++;
                assert_true(p + 1 < end && p[1] == '"');
                p += 2;
                while (p < end && *p != '"') {
                    if (*p == '\\') {
                        assert_true(p[1] == '\\' || p[1] == '"' || p[1] == 'n');
                        p++;
                    }
                    p++;
                }
                assert_true(p < end);
                p++;
                if (*p == ',')
                    p++;
                else
                    assert_true(*p == '}');
            }
            assert_true(p < end);
            p++;
        }
        /* value */
        assert_true(*p == ' ');
        p++;
        {
            char num[64];
            char *stop;

            assert_true(end - p > 0 && (size_t)(end - p) < sizeof(num));
            memcpy(num, p, (size_t)(end - p));
            num[end - p] = '\0';
            strtod(num, &stop);
            assert_true(*stop == '\0');
        }
        line = end + 1;
    }
}

static void test_stats_prometheus_lines(void **state)
{
    struct fixture *f = *state;
    char *text;

    f->view.identity = &f->identity;
    f->view.policy = &f->policy;
    tt_metrics_peer_add(f->workers[0], "we\"ird\\id\nx", 1, 2, false);
    text = tt_stats_prometheus(&f->view);
    assert_non_null(text);
    assert_prometheus_valid(text);
    assert_contains(text, "# HELP tether_listener_connections_accepted_total ");
    assert_contains(text, "# TYPE tether_listener_connections_accepted_total counter\n");
    assert_contains(text, "\ntether_listener_connections_accepted_total{listener=\"inbound:"
                          "127.0.0.1:16006\",kind=\"inbound\"} 15\n");
    assert_contains(text, "\ntether_listener_connections_active{listener=\"inbound:127.0.0.1:"
                          "16006\",kind=\"inbound\"} 6\n");
    assert_contains(text, "# TYPE tether_listener_connections_active gauge\n");
    assert_contains(text, "\ntether_listener_bytes_in_total{listener=\"inbound:127.0.0.1:16006\","
                          "kind=\"inbound\"} 1234\n");
    assert_contains(text, "\ntether_listener_handshake_failures_total{listener=\"inbound:127.0.0."
                          "1:16006\",reason=\"expired\"} 1\n");
    assert_contains(text, "\ntether_listener_handshake_failures_total{listener=\"outbound:127.0."
                          "0.1:16001\",reason=\"unknown_ca\"} 1\n");
    assert_contains(text, "# TYPE tether_listener_handshake_duration_seconds histogram\n");
    assert_contains(text, "\ntether_listener_handshake_duration_seconds_bucket{listener=\"inbound:"
                          "127.0.0.1:16006\",le=\"0.0001\"} 1\n");
    assert_contains(text, "\ntether_listener_handshake_duration_seconds_bucket{listener=\"inbound:"
                          "127.0.0.1:16006\",le=\"0.00025\"} 2\n");
    assert_contains(text, "\ntether_listener_handshake_duration_seconds_bucket{listener=\"inbound:"
                          "127.0.0.1:16006\",le=\"10\"} 3\n");
    assert_contains(text, "\ntether_listener_handshake_duration_seconds_bucket{listener=\"inbound:"
                          "127.0.0.1:16006\",le=\"+Inf\"} 3\n");
    assert_contains(text, "\ntether_listener_handshake_duration_seconds_sum{listener=\"inbound:"
                          "127.0.0.1:16006\"} 0.003290\n");
    assert_contains(text, "\ntether_listener_handshake_duration_seconds_count{listener=\"inbound:"
                          "127.0.0.1:16006\"} 3\n");
    assert_contains(text, "\ntether_policy_rule_hits_total{rule=\"web-to-api\",action=\"allow\","
                          "mode=\"enforce\"} 8\n");
    assert_contains(text, "\ntether_policy_rule_audit_would_deny_total{rule=\"no-\\\"batch\\\"\"} "
                          "2\n");
    assert_contains(text, "\ntether_policy_allowed_total 8\n");
    assert_contains(text, "\ntether_policy_denied_total 3\n");
    assert_contains(text, "\ntether_policy_info{version=\"v7\",default=\"deny\"} 1\n");
    assert_contains(text, "\ntether_peer_connections_total{peer=\"spiffe://td/ns/shop/sa/web\"} "
                          "2\n");
    assert_contains(text, "\ntether_peer_bytes_out_total{peer=\"we\\\"ird\\\\id\\nx\"} 2\n");
    assert_contains(text, "\ntether_identity_info{spiffe_id=\"spiffe://td/ns/shop/sa/api\","
                          "serial=\"01AB\"} 1\n");
    assert_contains(text, "\ntether_up 1\n");
    assert_contains(text, "\ntether_snapshot_generation 3\n");
    assert_contains(text, "\ntether_reloads_failed_total 1\n");
    assert_contains(text, "\ntether_identity_rotations_total 2\n");
    assert_contains(text, "\ntether_max_connections 94\n");
    assert_contains(text, "\ntether_open_files_limit 256\n");
    assert_contains(text, "\ntether_listener_accept_failures_total{listener=\"inbound:127.0.0.1:"
                          "16006\",kind=\"inbound\"} 5\n");
    assert_contains(text,
                    "\ntether_listener_connections_refused_fd_shortage_total{listener=\"inbound:"
                    "127.0.0.1:16006\",kind=\"inbound\"} 2\n");
    /* Every family is announced once. */
    {
        const char *p = text;
        int n = 0;

        while ((p = strstr(p, "# TYPE tether_peer_connections_total ")) != NULL) {
            n++;
            p++;
        }
        assert_int_equal(n, 1);
    }
    free(text);
}

static void test_stats_prometheus_requests(void **state)
{
    struct fixture *f = *state;
    char *text;

    add_requests(f);
    text = tt_stats_prometheus(&f->view);
    assert_non_null(text);
    assert_prometheus_valid(text);
#define IN  "listener=\"inbound:127.0.0.1:16006\""
#define OUT "listener=\"outbound:127.0.0.1:16001\""
    assert_contains(text, "# HELP tether_http_requests_total ");
    assert_contains(text, "\n# TYPE tether_http_requests_total counter\n");
    assert_contains(text, "\ntether_http_requests_total{" IN ",method=\"GET\","
                          "status_class=\"2xx\"} 2\n");
    assert_contains(text, "\ntether_http_requests_total{" IN ",method=\"POST\","
                          "status_class=\"5xx\"} 1\n");
    assert_contains(text, "\ntether_http_requests_total{" IN ",method=\"DELETE\","
                          "status_class=\"4xx\"} 1\n");
    assert_contains(text, "\ntether_http_requests_total{" IN ",method=\"other\","
                          "status_class=\"4xx\"} 2\n");
    /* Only non-zero series. */
    assert_int_equal(count_of(text, "\ntether_http_requests_total{"), 4);
    assert_lacks(text, "\ntether_http_requests_total{" OUT);

    assert_contains(text, "\n# TYPE tether_http_request_duration_seconds histogram\n");
    assert_contains(text, "\ntether_http_request_duration_seconds_bucket{" IN ",le=\"0.0001\"} "
                          "3\n");
    assert_contains(text, "\ntether_http_request_duration_seconds_bucket{" IN ",le=\"0.0025\"} "
                          "3\n");
    assert_contains(text, "\ntether_http_request_duration_seconds_bucket{" IN ",le=\"0.005\"} "
                          "4\n");
    assert_contains(text, "\ntether_http_request_duration_seconds_bucket{" IN ",le=\"+Inf\"} "
                          "4\n");
    assert_contains(text, "\ntether_http_request_duration_seconds_sum{" IN "} 0.003190\n");
    assert_contains(text, "\ntether_http_request_duration_seconds_count{" IN "} 4\n");
    assert_contains(text, "\ntether_http_request_duration_seconds_count{" OUT "} 0\n");

    assert_contains(text, "\n# TYPE tether_http_request_bytes_total counter\n");
    assert_contains(text, "\ntether_http_request_bytes_total{" IN ",kind=\"inbound\"} 1000\n");
    assert_contains(text, "\ntether_http_request_bytes_total{" OUT ",kind=\"outbound\"} 0\n");
    assert_contains(text, "\n# TYPE tether_http_response_bytes_total counter\n");
    assert_contains(text, "\ntether_http_response_bytes_total{" IN ",kind=\"inbound\"} 257\n");
    assert_contains(text, "\n# TYPE tether_http_requests_denied_total counter\n");
    assert_contains(text, "\ntether_http_requests_denied_total{" IN ",kind=\"inbound\"} 1\n");
    assert_contains(text, "\ntether_http_requests_denied_total{" OUT ",kind=\"outbound\"} 0\n");

    assert_contains(text, "\n# TYPE tether_http_requests_refused_total counter\n");
    assert_contains(text, "\ntether_http_requests_refused_total{" IN ","
                          "reason=\"content_length_and_transfer_encoding\"} 1\n");
    assert_contains(text, "\ntether_http_requests_refused_total{" IN ","
                          "reason=\"header_section_too_large\"} 1\n");
    assert_int_equal(count_of(text, "\ntether_http_requests_refused_total{"), 2);

    assert_contains(text, "\n# TYPE tether_peer_http_requests_total counter\n");
    assert_contains(text, "\ntether_peer_http_requests_total{peer=\"none\",status_class=\"4xx\"} "
                          "3\n");
    assert_contains(text, "\ntether_peer_http_requests_total{peer=\"spiffe://td/ns/shop/sa/web\","
                          "status_class=\"2xx\"} 2\n");
    assert_contains(text, "\ntether_peer_http_requests_total{peer=\"spiffe://td/ns/shop/sa/web\","
                          "status_class=\"5xx\"} 1\n");
    assert_int_equal(count_of(text, "\ntether_peer_http_requests_total{"), 3);
#undef IN
#undef OUT
    free(text);
}

/* Sets pool counters on both workers: the outbound listener dialled 3 links (1 closed, 1
 * recycled) carrying 10 tunnels (4 over, 2 refused) and sent 5 connections direct; the
 * inbound one accepted 2 links, both closed, after 7 tunnels, all over. */
static void add_pool(struct fixture *f)
{
    struct tt_pool_counters *o0 = &f->workers[0]->listeners[1].pool;
    struct tt_pool_counters *o1 = &f->workers[1]->listeners[1].pool;
    struct tt_pool_counters *i1 = &f->workers[1]->listeners[0].pool;

    o0->links_opened = 2;
    o0->links_closed = 1;
    o0->streams_opened = 6;
    o0->streams_closed = 3;
    o0->streams_refused = 2;
    o0->links_recycled = 1;
    o0->fallback_direct = 4;
    o1->links_opened = 1;
    o1->streams_opened = 4;
    o1->streams_closed = 1;
    o1->fallback_direct = 1;
    o1->requests_retried = 3;
    i1->links_opened = 2;
    i1->links_closed = 2;
    i1->streams_opened = 7;
    i1->streams_closed = 7;
    i1->workload_opened = 2;
    i1->workload_reused = 5;
}

#define POOL_KEYS 9

/* Asserts o is the "pool" object {connections, streams_active, streams_total,
 * streams_refused, connections_recycled, fallback_direct, requests_retried,
 * workload_connections_opened, workload_connections_reused} with these values and no
 * more. */
static void assert_pool(json_t *o, const json_int_t want[POOL_KEYS])
{
    static const char *const keys[POOL_KEYS] = {"connections",
                                                "streams_active",
                                                "streams_total",
                                                "streams_refused",
                                                "connections_recycled",
                                                "fallback_direct",
                                                "requests_retried",
                                                "workload_connections_opened",
                                                "workload_connections_reused"};

    assert_true(json_is_object(o));
    assert_int_equal(json_object_size(o), POOL_KEYS);
    for (int k = 0; k < POOL_KEYS; k++)
        assert_int_equal(jget_int(o, keys[k]), want[k]);
}

/* The pool's figures per listener, summed over the workers, in both formats; open links
 * and streams are opened - closed. */
static void test_stats_pool(void **state)
{
    struct fixture *f = *state;
    const json_int_t in[POOL_KEYS] = {0, 0, 7, 0, 0, 0, 0, 2, 5};
    const json_int_t out[POOL_KEYS] = {2, 6, 10, 2, 1, 5, 3, 0, 0};
    json_t *doc, *ls;
    char *text;

    add_pool(f);
    doc = tt_stats_json(&f->view);
    assert_non_null(doc);
    ls = json_object_get(doc, "listeners");
    assert_pool(json_object_get(json_array_get(ls, 0), "pool"), in);
    assert_pool(json_object_get(json_array_get(ls, 1), "pool"), out);
    json_decref(doc);

    text = tt_stats_prometheus(&f->view);
    assert_non_null(text);
    assert_prometheus_valid(text);
#define IN  "{listener=\"inbound:127.0.0.1:16006\",kind=\"inbound\"} "
#define OUT "{listener=\"outbound:127.0.0.1:16001\",kind=\"outbound\"} "
    assert_contains(text, "\n# TYPE tether_pool_connections gauge\n");
    assert_contains(text, "\ntether_pool_connections" OUT "2\n");
    assert_contains(text, "\ntether_pool_connections" IN "0\n");
    assert_contains(text, "\n# TYPE tether_pool_streams_active gauge\n");
    assert_contains(text, "\ntether_pool_streams_active" OUT "6\n");
    assert_contains(text, "\ntether_pool_streams_active" IN "0\n");
    assert_contains(text, "\n# TYPE tether_pool_streams_total counter\n");
    assert_contains(text, "\ntether_pool_streams_total" OUT "10\n");
    assert_contains(text, "\ntether_pool_streams_total" IN "7\n");
    assert_contains(text, "\n# TYPE tether_pool_streams_refused_total counter\n");
    assert_contains(text, "\ntether_pool_streams_refused_total" OUT "2\n");
    assert_contains(text, "\n# TYPE tether_pool_connections_recycled_total counter\n");
    assert_contains(text, "\ntether_pool_connections_recycled_total" OUT "1\n");
    assert_contains(text, "\ntether_pool_connections_recycled_total" IN "0\n");
    assert_contains(text, "\n# TYPE tether_pool_fallback_direct_total counter\n");
    assert_contains(text, "\ntether_pool_fallback_direct_total" OUT "5\n");
    assert_contains(text, "\n# TYPE tether_pool_requests_retried_total counter\n");
    assert_contains(text, "\ntether_pool_requests_retried_total" OUT "3\n");
    assert_contains(text, "\n# TYPE tether_pool_workload_connections_opened_total counter\n");
    assert_contains(text, "\ntether_pool_workload_connections_opened_total" IN "2\n");
    assert_contains(text, "\n# TYPE tether_pool_workload_connections_reused_total counter\n");
    assert_contains(text, "\ntether_pool_workload_connections_reused_total" IN "5\n");
    assert_int_equal(count_of(text, "\n# TYPE tether_pool_"), 9);
    assert_int_equal(count_of(text, "\ntether_pool_"), 18); /* 9 families, 2 listeners */
#undef IN
#undef OUT
    free(text);
}

/* An idle sidecar (or --pool off) renders "pool" with zeros on every listener. */
static void test_stats_pool_idle(void **state)
{
    struct fixture *f = *state;
    const json_int_t zero[POOL_KEYS] = {0};
    json_t *doc = tt_stats_json(&f->view), *ls;

    assert_non_null(doc);
    ls = json_object_get(doc, "listeners");
    for (size_t i = 0; i < json_array_size(ls); i++)
        assert_pool(json_object_get(json_array_get(ls, i), "pool"), zero);
    json_decref(doc);
}

/* Every refusal reason renders under its tt_h1_reason_name, in both formats. */
static void test_stats_requests_every_reason(void **state)
{
    struct fixture *f = *state;
    json_t *doc, *refused;
    char *text, needle[160];

    for (int r = 1; r < TT_H1_R__COUNT; r++)
        tt_metrics_request_refused(f->workers[r % 2], 1, NULL, r);
    doc = tt_stats_json(&f->view);
    assert_non_null(doc);
    refused = json_object_get(
        json_object_get(json_array_get(json_object_get(doc, "listeners"), 1), "requests"),
        "refused");
    assert_int_equal(json_object_size(refused), TT_H1_R__COUNT - 1);
    for (int r = 1; r < TT_H1_R__COUNT; r++)
        assert_int_equal(jget_int(refused, tt_h1_reason_name(r)), 1);
    assert_int_equal(jget_int(refused, "bad_trailer"), 1);
    assert_null(json_object_get(refused, "none"));
    json_decref(doc);

    text = tt_stats_prometheus(&f->view);
    assert_non_null(text);
    assert_prometheus_valid(text);
    for (int r = 1; r < TT_H1_R__COUNT; r++) {
        snprintf(needle, sizeof(needle),
                 "\ntether_http_requests_refused_total{listener=\"outbound:127.0.0.1:16001\","
                 "reason=\"%s\"} 1\n",
                 tt_h1_reason_name(r));
        assert_contains(text, needle);
    }
    snprintf(needle, sizeof(needle),
             "\ntether_http_requests_total{listener=\"outbound:127.0.0.1:16001\","
             "method=\"other\",status_class=\"4xx\"} %d\n",
             TT_H1_R__COUNT - 1);
    assert_contains(text, needle);
    free(text);
}

/* Idle: every family is announced and the text stays valid without a single request. */
static void test_stats_prometheus_requests_idle(void **state)
{
    struct fixture *f = *state;
    static const char *const families[] = {
        "tether_http_requests_total",        "tether_http_request_duration_seconds",
        "tether_http_request_bytes_total",   "tether_http_response_bytes_total",
        "tether_http_requests_denied_total", "tether_http_requests_refused_total",
        "tether_peer_http_requests_total",
    };
    char *text, needle[128];

    f->view.identity = &f->identity;
    f->view.policy = &f->policy;
    text = tt_stats_prometheus(&f->view);
    assert_non_null(text);
    assert_prometheus_valid(text);
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        snprintf(needle, sizeof(needle), "\n# HELP %s ", families[i]);
        assert_int_equal(count_of(text, needle), 1);
        snprintf(needle, sizeof(needle), "\n# TYPE %s ", families[i]);
        assert_int_equal(count_of(text, needle), 1);
    }
    assert_lacks(text, "\ntether_http_requests_total{");
    assert_lacks(text, "\ntether_peer_http_requests_total{");
    assert_contains(text, "\ntether_http_request_duration_seconds_count{listener=\"inbound:127.0."
                          "0.1:16006\"} 0\n");
    free(text);

    /* An empty view is valid too. */
    {
        struct tt_stats_view view = {0};

        text = tt_stats_prometheus(&view);
        assert_non_null(text);
        assert_prometheus_valid(text);
        free(text);
    }
}

static void test_stats_prometheus_no_identity_no_policy(void **state)
{
    struct fixture *f = *state;
    char *text = tt_stats_prometheus(&f->view);

    assert_non_null(text);
    assert_null(strstr(text, "tether_identity_info"));
    assert_contains(text, "\ntether_policy_info{version=\"\",default=\"allow-authenticated\"} 1\n");
    assert_contains(text, "\ntether_control_plane_info{state=\"none\"} 1\n");
    free(text);

    f->view.ready = false;
    f->view.draining = true;
    text = tt_stats_prometheus(&f->view);
    assert_contains(text, "\ntether_up 0\n");
    assert_contains(text, "\ntether_draining 1\n");
    free(text);
}

static void test_stats_certs_json(void **state)
{
    struct fixture *f = *state;
    json_t *doc = tt_stats_certs_json(&f->identity);
    json_t *leaf, *roots;
    json_int_t left;

    assert_non_null(doc);
    leaf = json_object_get(doc, "leaf");
    assert_string_equal(json_string_value(json_object_get(leaf, "spiffe_id")),
                        "spiffe://td/ns/shop/sa/api");
    assert_string_equal(json_string_value(json_object_get(leaf, "serial")), "01AB");
    assert_string_equal(json_string_value(json_object_get(leaf, "subject")), "O=td");
    assert_string_equal(json_string_value(json_object_get(leaf, "issuer")), "CN=td root");
    left = jget_int(leaf, "seconds_to_expiry");
    assert_true(left >= 3598 && left <= 3600);
    roots = json_object_get(doc, "roots");
    assert_int_equal(json_array_size(roots), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(roots, 0), "serial")),
                        "01");
    assert_true(json_is_null(json_object_get(json_array_get(roots, 0), "spiffe_id")));
    assert_string_equal(json_string_value(json_object_get(json_array_get(roots, 1), "serial")),
                        "02");
    json_decref(doc);

    doc = tt_stats_certs_json(NULL);
    assert_non_null(doc);
    assert_true(json_is_null(json_object_get(doc, "leaf")));
    assert_int_equal(json_array_size(json_object_get(doc, "roots")), 0);
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stats_json_listeners, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_server_and_nulls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_control, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_policy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_peers_and_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_hostile_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_quantile_edges, setup, teardown),
        cmocka_unit_test(test_stats_json_empty_view),
        cmocka_unit_test_setup_teardown(test_stats_prometheus_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_prometheus_no_identity_no_policy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_stats_certs_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_json_requests_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_prometheus_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_prometheus_requests_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_requests_every_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_pool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_pool_idle, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
