/* Unit tests for policy.c: evaluation order, wildcards, conditions, audit mode, counters,
 * normalization, and every validation error with its message. Documents are written with
 * single quotes for readability and turned into JSON by q(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/errors.h"
#include "metrics/metrics.h"
#include "policy/policy.h"
#include "policy/policy_json.h"

#define SHOP_WEB "spiffe://td/ns/shop/sa/web"
#define SHOP_API "spiffe://td/ns/shop/sa/api"
#define SHOPPING "spiffe://td/ns/shopping/sa/x"
#define BATCH    "spiffe://td/ns/batch/sa/job"

static char errbuf[512];

/* Returns a heap copy of s with every ' replaced by ". */
static char *q(const char *s)
{
    char *out = strdup(s), *c;

    assert_non_null(out);
    for (c = out; *c != '\0'; c++) {
        if (*c == '\'')
            *c = '"';
    }
    return out;
}

static struct tt_policy *parse(const char *text)
{
    char *doc = q(text);
    struct tt_policy *p;

    p = tt_policy_parse(doc, strlen(doc), "policy.json", errbuf, sizeof(errbuf));
    free(doc);
    return p;
}

static struct tt_policy *parse_ok(const char *text)
{
    struct tt_policy *p = parse(text);

    if (p == NULL)
        fail_msg("unexpected parse error: %s", errbuf);
    return p;
}

/* Asserts that text is refused and that the message contains `want`. */
static void parse_fails(const char *text, const char *want)
{
    struct tt_policy *p = parse(text);

    if (p != NULL) {
        tt_policy_unref(p);
        fail_msg("accepted: %s", text);
    }
    if (strstr(errbuf, want) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", errbuf, want);
    if (strchr(errbuf, '\n') != NULL)
        fail_msg("message is not one line: %s", errbuf);
}

static void check(const struct tt_policy *p, const char *caller, const char *self, uint16_t port,
                  struct tt_policy_verdict *v)
{
    tt_policy_check(p, caller, self, port, NULL, NULL, v);
}

static void test_policy_wildcards(void **state)
{
    struct tt_policy *p = parse_ok("{'rules': [{'name': 'shop', 'action': 'allow',"
                                   " 'from': ['spiffe://td/ns/shop/*']}]}");
    struct tt_policy_verdict v;

    check(p, SHOP_WEB, SHOP_API, 8080, &v);
    assert_true(v.allowed);
    assert_int_equal(v.rule, 0);
    assert_string_equal(v.rule_name, "shop");

    /* Segment boundary: "shop/" + "*" is not a string prefix of "shopping". */
    check(p, SHOPPING, SHOP_API, 8080, &v);
    assert_false(v.allowed);
    assert_int_equal(v.rule, TT_POLICY_RULE_DEFAULT);
    assert_string_equal(v.rule_name, "default");

    check(p, "spiffe://td/ns/shop", SHOP_API, 8080, &v);
    assert_false(v.allowed);
    check(p, "spiffe://other/ns/shop/sa/web", SHOP_API, 8080, &v);
    assert_false(v.allowed);
    tt_policy_unref(p);
}

static void test_policy_any(void **state)
{
    struct tt_policy *p =
        parse_ok("{'rules': [{'name': 'all', 'action': 'allow', 'from': ['*']}]}");
    struct tt_policy_verdict v;

    check(p, "spiffe://anything/at/all", SHOP_API, 1, &v);
    assert_true(v.allowed);
    /* No identity is not "any identity". */
    check(p, NULL, SHOP_API, 1, &v);
    assert_false(v.allowed);
    tt_policy_unref(p);
}

static void test_policy_to_filtering(void **state)
{
    struct tt_policy *p = parse_ok("{'rules': [{'name': 'web-to-api', 'action': 'allow',"
                                   " 'to': ['" SHOP_API "'], 'from': ['" SHOP_WEB "']},"
                                   " {'name': 'to-batch', 'action': 'allow',"
                                   " 'to': ['spiffe://td/ns/batch/*'], 'from': ['*']}]}");
    struct tt_policy_verdict v;

    check(p, SHOP_WEB, SHOP_API, 8080, &v);
    assert_true(v.allowed);
    assert_int_equal(v.rule, 0);

    /* Same caller, another workload: the rule does not apply there. */
    check(p, SHOP_WEB, "spiffe://td/ns/shop/sa/db", 8080, &v);
    assert_false(v.allowed);
    assert_int_equal(v.rule, TT_POLICY_RULE_DEFAULT);

    /* "to" with a wildcard. */
    check(p, SHOPPING, BATCH, 8080, &v);
    assert_true(v.allowed);
    assert_int_equal(v.rule, 1);

    /* Without an identity of its own, a workload evaluates only rules without "to". */
    check(p, SHOP_WEB, NULL, 8080, &v);
    assert_false(v.allowed);
    tt_policy_unref(p);
}

static void test_policy_ports(void **state)
{
    struct tt_policy *p = parse_ok("{'rules': [{'name': 'p', 'action': 'allow',"
                                   " 'from': ['*'], 'ports': [8080, 9090, 65535]}]}");
    struct tt_policy_verdict v;

    check(p, SHOP_WEB, SHOP_API, 8080, &v);
    assert_true(v.allowed);
    check(p, SHOP_WEB, SHOP_API, 9090, &v);
    assert_true(v.allowed);
    check(p, SHOP_WEB, SHOP_API, 65535, &v);
    assert_true(v.allowed);
    check(p, SHOP_WEB, SHOP_API, 80, &v);
    assert_false(v.allowed);
    check(p, SHOP_WEB, SHOP_API, 0, &v);
    assert_false(v.allowed);
    tt_policy_unref(p);
}

static void test_policy_deny_before_allow(void **state)
{
    /* The allow rule comes first in the document; the deny rule still wins. */
    struct tt_policy *p = parse_ok("{'default': 'allow', 'rules': ["
                                   " {'name': 'allow-shop', 'action': 'allow',"
                                   "  'from': ['spiffe://td/ns/shop/*']},"
                                   " {'name': 'deny-web', 'action': 'deny',"
                                   "  'from': ['" SHOP_WEB "']}]}");
    struct tt_policy_verdict v;

    check(p, SHOP_WEB, SHOP_API, 80, &v);
    assert_false(v.allowed);
    assert_int_equal(v.rule, 1);
    assert_string_equal(v.rule_name, "deny-web");

    check(p, "spiffe://td/ns/shop/sa/other", SHOP_API, 80, &v);
    assert_true(v.allowed);
    assert_int_equal(v.rule, 0);
    tt_policy_unref(p);
}

static void test_policy_first_enforce_wins(void **state)
{
    struct tt_policy *p = parse_ok("{'rules': ["
                                   " {'name': 'a1', 'action': 'allow', 'from': ['*']},"
                                   " {'name': 'd1', 'action': 'deny', 'from': ['*'],"
                                   "  'ports': [1]},"
                                   " {'name': 'a2', 'action': 'allow', 'from': ['" SHOP_WEB "']},"
                                   " {'name': 'd2', 'action': 'deny', 'from': ['*']}]}");
    struct tt_policy_verdict v;

    /* Both deny rules match port 1: the first in document order decides. */
    check(p, SHOP_WEB, SHOP_API, 1, &v);
    assert_false(v.allowed);
    assert_string_equal(v.rule_name, "d1");
    assert_int_equal(v.rule, 1);
    /* Only d2 matches port 2. */
    check(p, SHOP_WEB, SHOP_API, 2, &v);
    assert_string_equal(v.rule_name, "d2");
    assert_int_equal(v.rule, 3);
    tt_policy_unref(p);

    p = parse_ok("{'rules': ["
                 " {'name': 'a1', 'action': 'allow', 'from': ['" SHOP_WEB "']},"
                 " {'name': 'a2', 'action': 'allow', 'from': ['*']}]}");
    check(p, SHOP_WEB, SHOP_API, 2, &v);
    assert_true(v.allowed);
    assert_string_equal(v.rule_name, "a1");
    check(p, BATCH, SHOP_API, 2, &v);
    assert_string_equal(v.rule_name, "a2");
    tt_policy_unref(p);
}

static void test_policy_default(void **state)
{
    struct tt_policy_verdict v;
    struct tt_policy *p;

    p = parse_ok("{'rules': []}");
    assert_false(tt_policy_default_allows(p));
    assert_int_equal(tt_policy_rule_count(p), 0);
    check(p, SHOP_WEB, SHOP_API, 80, &v);
    assert_false(v.allowed);
    assert_int_equal(v.rule, TT_POLICY_RULE_DEFAULT);
    tt_policy_unref(p);

    p = parse_ok("{'default': 'allow', 'rules': []}");
    assert_true(tt_policy_default_allows(p));
    check(p, SHOP_WEB, SHOP_API, 80, &v);
    assert_true(v.allowed);
    assert_string_equal(v.rule_name, "default");
    tt_policy_unref(p);

    p = parse_ok("{'default': 'deny', 'rules': []}");
    check(p, SHOP_WEB, SHOP_API, 80, &v);
    assert_false(v.allowed);
    tt_policy_unref(p);
}

/* Verdicts are counted the way a worker counts them: in its metrics, by rule name. */
static struct tt_rule_sum rule_counts(struct tt_metrics *mc, const char *name)
{
    struct tt_metrics_sum sum;
    struct tt_rule_sum out = {0};
    const struct tt_rule_sum *r;

    assert_int_equal(tt_metrics_sum(&mc, 1, &sum), 0);
    r = tt_metrics_sum_rule(&sum, name);
    if (r != NULL) {
        out.hits = r->hits;
        out.audit_would_deny = r->audit_would_deny;
    }
    tt_metrics_sum_done(&sum);
    return out;
}

static uint64_t rule_hits(struct tt_metrics *mc, const char *name)
{
    return rule_counts(mc, name).hits;
}

static uint64_t rule_would_deny(struct tt_metrics *mc, const char *name)
{
    return rule_counts(mc, name).audit_would_deny;
}

/* Counts live outside the document: a new document that keeps a rule keeps its count, even
 * after a document without it (a push that changed something else, or a rollback). */
static void test_policy_counts_survive_new_document(void **state)
{
    const char *doc_a = "{'rules': [{'name': 'web', 'action': 'allow', 'from': ['" SHOP_WEB "']}]}";
    const char *doc_b = "{'version': 'b', 'rules': ["
                        " {'name': 'batch', 'action': 'deny', 'from': ['" BATCH "']},"
                        " {'name': 'web', 'action': 'allow', 'from': ['" SHOP_WEB "']}]}";
    struct tt_metrics *mc = tt_metrics_new(0);
    struct tt_policy *a = parse_ok(doc_a), *b, *c;
    struct tt_policy_verdict v;

    assert_int_equal(tt_metrics_policy_prepare(mc, a), 0);
    for (int i = 0; i < 3; i++) {
        check(a, SHOP_WEB, SHOP_API, 80, &v);
        tt_metrics_policy_count(mc, a, &v);
    }
    b = parse_ok(doc_b); /* 'web' is now rule 1, not rule 0 */
    assert_int_equal(tt_metrics_policy_prepare(mc, b), 0);
    tt_policy_unref(a);
    assert_int_equal(rule_hits(mc, "web"), 3);
    assert_int_equal(rule_hits(mc, "batch"), 0);
    check(b, SHOP_WEB, SHOP_API, 80, &v);
    tt_metrics_policy_count(mc, b, &v);
    check(b, BATCH, SHOP_API, 80, &v);
    tt_metrics_policy_count(mc, b, &v);
    assert_int_equal(rule_hits(mc, "web"), 4);
    assert_int_equal(rule_hits(mc, "batch"), 1);
    /* Back to a document without 'batch' and back again: nothing lost. */
    c = parse_ok(doc_a);
    assert_int_equal(tt_metrics_policy_prepare(mc, c), 0);
    assert_int_equal(rule_hits(mc, "web"), 4);
    tt_policy_unref(c);
    tt_policy_unref(b);
    b = parse_ok(doc_b);
    assert_int_equal(rule_hits(mc, "batch"), 1);
    tt_policy_unref(b);
    tt_metrics_free(mc);
}

static void test_policy_audit(void **state)
{
    struct tt_metrics *mc = tt_metrics_new(0);
    struct tt_policy *p = parse_ok("{'default': 'allow', 'rules': ["
                                   " {'name': 'no-batch', 'action': 'deny', 'mode': 'audit',"
                                   "  'from': ['spiffe://td/ns/batch/*']},"
                                   " {'name': 'deny-x', 'action': 'deny',"
                                   "  'from': ['spiffe://td/ns/x/sa/x']},"
                                   " {'name': 'maybe-web', 'action': 'allow', 'mode': 'audit',"
                                   "  'from': ['" SHOP_WEB "']}]}");
    struct tt_policy_rule_info info;
    struct tt_policy_verdict v;

    /* An audit deny match does not block, but says it would have. */
    check(p, BATCH, SHOP_API, 80, &v);
    assert_true(v.allowed);
    assert_int_equal(v.rule, TT_POLICY_RULE_DEFAULT);
    assert_int_equal(v.n_audit, 1);
    assert_int_equal(v.audit[0], 0);
    assert_true(v.audit_would_deny);
    tt_metrics_policy_count(mc, p, &v);
    tt_metrics_policy_count(mc, p, &v);
    tt_policy_rule_info(p, 0, &info);
    assert_string_equal(info.name, "no-batch");
    assert_int_equal(info.action, TT_POLICY_DENY);
    assert_int_equal(info.mode, TT_POLICY_AUDIT);
    assert_int_equal(rule_hits(mc, info.name), 2);
    assert_int_equal(rule_would_deny(mc, info.name), 2);

    /* An audit allow match is reported but is no would-deny and does not decide. */
    check(p, SHOP_WEB, SHOP_API, 80, &v);
    assert_true(v.allowed);
    assert_int_equal(v.rule, TT_POLICY_RULE_DEFAULT);
    assert_int_equal(v.n_audit, 1);
    assert_int_equal(v.audit[0], 2);
    assert_false(v.audit_would_deny);
    tt_metrics_policy_count(mc, p, &v);
    tt_policy_rule_info(p, 2, &info);
    assert_int_equal(rule_hits(mc, info.name), 1);
    assert_int_equal(rule_would_deny(mc, info.name), 0);

    /* No match at all: nothing reported. */
    check(p, SHOPPING, SHOP_API, 80, &v);
    assert_int_equal(v.n_audit, 0);
    assert_false(v.audit_would_deny);
    tt_policy_unref(p);

    /* Audit rules are reported even when an enforce rule decides. */
    p = parse_ok("{'rules': ["
                 " {'name': 'deny-all', 'action': 'deny', 'from': ['*']},"
                 " {'name': 'shadow', 'action': 'allow', 'mode': 'audit', 'from': ['*']}]}");
    check(p, BATCH, SHOP_API, 80, &v);
    assert_false(v.allowed);
    assert_int_equal(v.rule, 0);
    assert_int_equal(v.n_audit, 1);
    assert_int_equal(v.audit[0], 1);
    tt_policy_unref(p);

    /* With default deny, an audit allow rule never lets anything in. */
    p = parse_ok("{'rules': [{'name': 'shadow', 'action': 'allow', 'mode': 'audit',"
                 " 'from': ['*']}]}");
    check(p, BATCH, SHOP_API, 80, &v);
    assert_false(v.allowed);
    assert_int_equal(v.n_audit, 1);
    tt_policy_unref(p);
    tt_metrics_free(mc);
}

static void test_policy_audit_limit(void **state)
{
    struct tt_metrics *mc = tt_metrics_new(0);
    char doc[4096];
    struct tt_policy_verdict v;
    struct tt_policy_rule_info info;
    struct tt_policy *p;
    size_t n = 0;
    int i;

    n += (size_t)snprintf(doc + n, sizeof(doc) - n, "{'rules': [");
    for (i = 0; i < TT_POLICY_MAX_AUDIT + 3; i++) {
        n += (size_t)snprintf(doc + n, sizeof(doc) - n,
                              "%s{'name': 'r%d', 'action': 'deny', 'mode': 'audit',"
                              " 'from': ['*']}",
                              i ? ", " : "", i);
    }
    snprintf(doc + n, sizeof(doc) - n, "]}");
    p = parse_ok(doc);
    check(p, BATCH, SHOP_API, 80, &v);
    assert_int_equal(v.n_audit, TT_POLICY_MAX_AUDIT);
    for (i = 0; i < TT_POLICY_MAX_AUDIT; i++)
        assert_int_equal(v.audit[i], i);
    assert_true(v.allowed == false && v.audit_would_deny);
    tt_metrics_policy_count(mc, p, &v);
    tt_policy_rule_info(p, TT_POLICY_MAX_AUDIT - 1, &info);
    assert_int_equal(rule_hits(mc, info.name), 1);
    tt_policy_rule_info(p, TT_POLICY_MAX_AUDIT, &info); /* dropped: not counted */
    assert_int_equal(rule_hits(mc, info.name), 0);
    tt_policy_unref(p);
    tt_metrics_free(mc);
}

static void test_policy_methods_paths(void **state)
{
    struct tt_policy *p = parse_ok("{'rules': [{'name': 'api', 'action': 'allow',"
                                   " 'from': ['*'], 'methods': ['GET', 'HEAD'],"
                                   " 'paths': ['/api/*', '/health']}]}");
    struct tt_policy_verdict v;

    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "GET", "/api/items", &v);
    assert_true(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "HEAD", "/health", &v);
    assert_true(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "GET", "/health?verbose=1", &v);
    assert_true(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "POST", "/api/items", &v);
    assert_false(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "get", "/api/items", &v);
    assert_false(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "GET", "/healthz", &v);
    assert_false(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "GET", "/api", &v);
    assert_false(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "GET", "/apix/1", &v);
    assert_false(v.allowed);
    /* Plain TCP (no method or path) never matches an HTTP rule. */
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, NULL, "/api/items", &v);
    assert_false(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, "GET", NULL, &v);
    assert_false(v.allowed);
    tt_policy_check(p, SHOP_WEB, SHOP_API, 80, NULL, NULL, &v);
    assert_false(v.allowed);
    tt_policy_unref(p);
}

static void test_policy_count(void **state)
{
    struct tt_metrics *mc = tt_metrics_new(0);
    struct tt_policy *p = parse_ok("{'rules': ["
                                   " {'name': 'allow-web', 'action': 'allow',"
                                   "  'from': ['" SHOP_WEB "']},"
                                   " {'name': 'deny-batch', 'action': 'deny',"
                                   "  'from': ['spiffe://td/ns/batch/*']}]}");
    struct tt_policy_rule_info info;
    struct tt_policy_verdict v;
    int i;

    for (i = 0; i < 3; i++) {
        check(p, SHOP_WEB, SHOP_API, 80, &v);
        tt_metrics_policy_count(mc, p, &v);
    }
    check(p, BATCH, SHOP_API, 80, &v);
    tt_metrics_policy_count(mc, p, &v);
    check(p, SHOPPING, SHOP_API, 80, &v); /* default: counts no rule */
    tt_metrics_policy_count(mc, p, &v);

    /* tt_policy_check alone touches no counter. */
    check(p, SHOP_WEB, SHOP_API, 80, &v);

    tt_policy_rule_info(p, 0, &info);
    assert_string_equal(info.name, "allow-web");
    assert_int_equal(info.action, TT_POLICY_ALLOW);
    assert_int_equal(info.mode, TT_POLICY_ENFORCE);
    assert_int_equal(rule_hits(mc, info.name), 3);
    assert_int_equal(rule_would_deny(mc, info.name), 0);
    tt_policy_rule_info(p, 1, &info);
    assert_int_equal(rule_hits(mc, info.name), 1);
    assert_int_equal(rule_would_deny(mc, info.name), 0); /* enforce deny: no would-deny */

    /* A verdict with indices that are not this policy's is ignored, not trusted. */
    memset(&v, 0, sizeof(v));
    v.rule = 7;
    v.n_audit = 1;
    v.audit[0] = -5;
    tt_metrics_policy_count(mc, p, &v);
    tt_policy_rule_info(p, 0, &info);
    assert_int_equal(rule_hits(mc, info.name), 3);
    tt_policy_unref(p);
    tt_metrics_free(mc);
}

static void test_policy_version(void **state)
{
    struct tt_policy *p, *p2, *p3;
    const char *ver;
    size_t i;

    p = parse_ok("{'version': 'v42', 'rules': []}");
    assert_string_equal(tt_policy_version(p), "v42");
    tt_policy_unref(p);

    /* Without a version: a hex digest of the text, stable for the same text. */
    p = parse_ok("{'rules': []}");
    p2 = parse_ok("{'rules': []}");
    p3 = parse_ok("{'rules': [], 'default': 'deny'}");
    ver = tt_policy_version(p);
    assert_true(strlen(ver) >= 8);
    for (i = 0; ver[i] != '\0'; i++)
        assert_non_null(strchr("0123456789abcdef", ver[i]));
    assert_string_equal(ver, tt_policy_version(p2));
    assert_string_not_equal(ver, tt_policy_version(p3));
    tt_policy_unref(p);
    tt_policy_unref(p2);
    tt_policy_unref(p3);
}

static void test_policy_to_json(void **state)
{
    struct tt_policy *p = parse_ok("{'version': '7', 'rules': ["
                                   " {'name': 'a', 'action': 'allow', 'from': ['*']},"
                                   " {'name': 'b', 'action': 'deny', 'mode': 'audit',"
                                   "  'from': ['spiffe://td/ns/x/*', '" SHOP_WEB "'],"
                                   "  'to': ['" SHOP_API "'], 'ports': [80, 443],"
                                   "  'methods': ['GET'], 'paths': ['/a/*', '/b']}]}");
    struct tt_policy *p2;
    json_t *doc, *doc2, *r;
    char *text;

    doc = tt_policy_to_json(p);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "version")), "7");
    assert_string_equal(json_string_value(json_object_get(doc, "default")), "deny");
    assert_int_equal(json_array_size(json_object_get(doc, "rules")), 2);
    r = json_array_get(json_object_get(doc, "rules"), 0);
    assert_string_equal(json_string_value(json_object_get(r, "mode")), "enforce");
    assert_string_equal(json_string_value(json_object_get(r, "action")), "allow");
    assert_null(json_object_get(r, "to"));
    r = json_array_get(json_object_get(doc, "rules"), 1);
    assert_string_equal(json_string_value(json_object_get(r, "mode")), "audit");
    assert_string_equal(json_string_value(json_array_get(json_object_get(r, "from"), 0)),
                        "spiffe://td/ns/x/*");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(r, "ports"), 1)), 443);
    assert_string_equal(json_string_value(json_array_get(json_object_get(r, "paths"), 0)), "/a/*");

    /* The normalized document parses back to the same normalized document. */
    text = json_dumps(doc, JSON_COMPACT);
    assert_non_null(text);
    p2 = tt_policy_parse(text, strlen(text), "round-trip", errbuf, sizeof(errbuf));
    if (p2 == NULL)
        fail_msg("normalized document refused: %s", errbuf);
    doc2 = tt_policy_to_json(p2);
    assert_true(json_equal(doc, doc2));
    free(text);
    json_decref(doc);
    json_decref(doc2);
    tt_policy_unref(p2);
    tt_policy_unref(p);
}

static void test_policy_refcount(void **state)
{
    struct tt_policy *p = parse_ok("{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*']}]}");
    struct tt_policy_verdict v;

    assert_ptr_equal(tt_policy_ref(p), p);
    tt_policy_unref(p);
    /* Still alive after one unref: (ASan would catch a use after free here.) */
    check(p, SHOP_WEB, SHOP_API, 80, &v);
    assert_true(v.allowed);
    tt_policy_unref(p);
    tt_policy_unref(NULL);
}

/* Every validation error, with the key path the message must name. */
static void test_policy_validation_errors(void **state)
{
    static const struct {
        const char *doc;
        const char *want;
    } cases[] = {
        /* JSON itself */
        {"{'rules': [", "policy.json: line 1, column"},
        {"{'rules': [], 'rules': []}", "invalid JSON: duplicate object key"},
        {"{'rules': [{'name': 'a', 'name': 'b', 'action': 'allow', 'from': ['*']}]}",
         "duplicate object key"},
        {"{'rules': [{'name': 'a\\u0000b', 'action': 'allow', 'from': ['*']}]}", "invalid JSON"},
        {"", "invalid JSON"},
        {"[]", "policy.json: expected a JSON object"},
        {"'rules'", "invalid JSON"},
        /* top level */
        {"{'rules': [], 'defualt': 'deny'}", "policy.json: defualt: unknown key"},
        {"{}", "policy.json: rules: missing"},
        {"{'rules': {}}", "policy.json: rules: expected an array"},
        {"{'rules': null}", "policy.json: rules: expected an array"},
        {"{'rules': [], 'default': 'maybe'}", "policy.json: default: expected \"allow\" or"},
        {"{'rules': [], 'default': true}", "policy.json: default: expected"},
        {"{'rules': [], 'default': 'Allow'}", "policy.json: default: expected"},
        {"{'rules': [], 'version': 1}", "policy.json: version: expected a non-empty string"},
        {"{'rules': [], 'version': ''}", "policy.json: version: expected"},
        /* rule shape */
        {"{'rules': [1]}", "policy.json: rules[0]: expected an object"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'form': ['*']}]}",
         "policy.json: rules[0].form: unknown key"},
        {"{'rules': [{'action': 'allow', 'from': ['*']}]}", "policy.json: rules[0].name: missing"},
        {"{'rules': [{'name': '', 'action': 'allow', 'from': ['*']}]}",
         "policy.json: rules[0].name: expected a non-empty string"},
        {"{'rules': [{'name': 5, 'action': 'allow', 'from': ['*']}]}",
         "policy.json: rules[0].name: expected"},
        {"{'rules': [{'name': 'a\\nb', 'action': 'allow', 'from': ['*']}]}",
         "policy.json: rules[0].name: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*']},"
         " {'name': 'b', 'action': 'allow', 'from': ['*']},"
         " {'name': 'a', 'action': 'deny', 'from': ['*']}]}",
         "policy.json: rules[2].name: duplicate rule name \"a\" (also rules[0])"},
        {"{'rules': [{'name': 'a', 'from': ['*']}]}", "policy.json: rules[0].action: missing"},
        {"{'rules': [{'name': 'a', 'action': 'permit', 'from': ['*']}]}",
         "policy.json: rules[0].action: expected \"allow\" or \"deny\""},
        {"{'rules': [{'name': 'a', 'action': true, 'from': ['*']}]}",
         "policy.json: rules[0].action: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'mode': 'dry-run'}]}",
         "policy.json: rules[0].mode: expected \"enforce\" or \"audit\""},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'mode': 1}]}",
         "policy.json: rules[0].mode: expected"},
        /* from / to */
        {"{'rules': [{'name': 'a', 'action': 'allow'}]}", "policy.json: rules[0].from: missing"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': []}]}",
         "policy.json: rules[0].from: expected a non-empty array"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': '*'}]}",
         "policy.json: rules[0].from: expected a non-empty array"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*', 3]}]}",
         "policy.json: rules[0].from[1]: expected a SPIFFE ID pattern string"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['spiffe://td/ns/shop*']}]}",
         "policy.json: rules[0].from[0]: expected a SPIFFE ID pattern"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['SPIFFE://td/a']}]}",
         "policy.json: rules[0].from[0]: expected a SPIFFE ID pattern"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['spiffe://td/a/../b']}]}",
         "policy.json: rules[0].from[0]: expected a SPIFFE ID pattern"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'to': []}]}",
         "policy.json: rules[0].to: expected a non-empty array"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'],"
         " 'to': ['spiffe://td/a', 'spiffe://td:80/b']}]}",
         "policy.json: rules[0].to[1]: expected a SPIFFE ID pattern"},
        /* ports */
        {"{'rules': [{'name': 'z', 'action': 'allow', 'from': ['*']},"
         " {'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': [0]}]}",
         "policy.json: rules[1].ports[0]: expected an integer 1..65535"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': [80, 70000]}]}",
         "policy.json: rules[0].ports[1]: expected an integer 1..65535"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': ['80']}]}",
         "policy.json: rules[0].ports[0]: expected an integer 1..65535"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': [80.0]}]}",
         "policy.json: rules[0].ports[0]: expected an integer 1..65535"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': [-1]}]}",
         "policy.json: rules[0].ports[0]: expected an integer 1..65535"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'],"
         " 'ports': [4294967376]}]}",
         "policy.json: rules[0].ports[0]: expected an integer 1..65535"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': []}]}",
         "policy.json: rules[0].ports: expected a non-empty array"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': 80}]}",
         "policy.json: rules[0].ports: expected a non-empty array"},
        /* methods and paths */
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'methods': ['get']}]}",
         "policy.json: rules[0].methods[0]: expected an upper-case HTTP method"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'methods': ['GET', '']}]}",
         "policy.json: rules[0].methods[1]: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'methods': ['G T']}]}",
         "policy.json: rules[0].methods[0]: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'methods': [1]}]}",
         "policy.json: rules[0].methods[0]: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'methods': 'GET'}]}",
         "policy.json: rules[0].methods: expected a non-empty array"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'methods': []}]}",
         "policy.json: rules[0].methods: expected a non-empty array"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'paths': ['api']}]}",
         "policy.json: rules[0].paths[0]: expected a path starting with \"/\""},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'paths': ['/a*b']}]}",
         "policy.json: rules[0].paths[0]: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'paths': ['/', '/a?b']}]}",
         "policy.json: rules[0].paths[1]: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'paths': ['/a b']}]}",
         "policy.json: rules[0].paths[0]: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'paths': [true]}]}",
         "policy.json: rules[0].paths[0]: expected"},
        {"{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'paths': []}]}",
         "policy.json: rules[0].paths: expected a non-empty array"},
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        parse_fails(cases[i].doc, cases[i].want);
}

static void test_policy_error_message_exact(void **state)
{
    struct tt_policy *p;
    char small[12];

    p = parse("{'rules': [{'name': 'z', 'action': 'allow', 'from': ['*']},"
              " {'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': [0]}]}");
    assert_null(p);
    assert_string_equal(errbuf, "policy.json: rules[1].ports[0]: expected an integer 1..65535");

    /* Line and column from the JSON parser. */
    p = parse("{\n  'rules': [\n    x\n  ]\n}");
    assert_null(p);
    assert_non_null(strstr(errbuf, "policy.json: line 3, column 5: invalid JSON"));

    /* A hostile unknown key is shortened and kept on one line. */
    p = parse("{'rules': [], 'a\\nb\\u0001cccccccccccccccccccccccccccccccccccccccccccccccccccccc"
              "ccccccccccccccccccccccccccccccccccccccccccccccccccc': 1}");
    assert_null(p);
    assert_null(strchr(errbuf, '\n'));
    assert_non_null(strstr(errbuf, "policy.json: a?b?ccc"));
    assert_non_null(strstr(errbuf, "...: unknown key"));

    /* A short or absent error buffer is never overrun. */
    memset(small, 'x', sizeof(small));
    p = tt_policy_parse("{}", 2, "policy.json", small, sizeof(small) - 2);
    assert_null(p);
    assert_int_equal(strlen(small), sizeof(small) - 3);
    assert_int_equal(small[sizeof(small) - 1], 'x');
    assert_null(tt_policy_parse("{}", 2, "policy.json", NULL, 0));
    assert_null(tt_policy_parse(NULL, 0, "policy.json", errbuf, sizeof(errbuf)));
}

static void test_policy_limits(void **state)
{
    static const char rule[] = "{'name': 'r%05d', 'action': 'allow', 'from': ['*']}";
    size_t cap = 10001 * (sizeof(rule) + 4) + 64, n = 0;
    char *doc = malloc(cap), *big;
    struct tt_policy *p;
    int i;

    assert_non_null(doc);
    n += (size_t)snprintf(doc + n, cap - n, "{'rules': [");
    for (i = 0; i < 10000; i++)
        n += (size_t)snprintf(doc + n, cap - n,
                              "%s"
                              "{'name': 'r%05d', 'action': 'allow',"
                              " 'from': ['*']}",
                              i ? "," : "", i);
    snprintf(doc + n, cap - n, "]}");
    p = parse_ok(doc);
    assert_int_equal(tt_policy_rule_count(p), 10000);
    tt_policy_unref(p);

    /* One rule more is refused. */
    snprintf(doc + n, cap - n, ",{'name': 'r10000', 'action': 'allow', 'from': ['*']}]}");
    parse_fails(doc, "policy.json: rules: expected at most 10000 rules");
    free(doc);

    /* A document over 1 MiB is refused before it is parsed (whitespace is valid JSON). */
    big = malloc(1024 * 1024 + 2);
    assert_non_null(big);
    memset(big, ' ', 1024 * 1024 + 1);
    memcpy(big, "{\"rules\": []}", 13);
    p = tt_policy_parse(big, 1024 * 1024, "big.json", errbuf, sizeof(errbuf));
    assert_non_null(p);
    tt_policy_unref(p);
    p = tt_policy_parse(big, 1024 * 1024 + 1, "big.json", errbuf, sizeof(errbuf));
    assert_null(p);
    assert_non_null(strstr(errbuf, "big.json: document larger than"));
    free(big);
}

static char *write_temp(const char *data, size_t len)
{
    char *path = strdup("/tmp/test-policy-XXXXXX");
    int fd;

    assert_non_null(path);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
    return path;
}

static void test_policy_load_file(void **state)
{
    char *doc = q("{'default': 'allow', 'rules': [{'name': 'a', 'action': 'deny',"
                  " 'from': ['*']}]}");
    struct tt_policy *p;
    char *path, *big, want[128];

    path = write_temp(doc, strlen(doc));
    p = tt_policy_load_file(path, errbuf, sizeof(errbuf));
    if (p == NULL)
        fail_msg("load failed: %s", errbuf);
    assert_true(tt_policy_default_allows(p));
    assert_int_equal(tt_policy_rule_count(p), 1);
    tt_policy_unref(p);
    unlink(path);
    free(path);
    free(doc);

    /* Errors name the path. */
    doc = q("{'rules': [{'name': 'a', 'action': 'allow', 'from': ['*'], 'ports': [0]}]}");
    path = write_temp(doc, strlen(doc));
    assert_null(tt_policy_load_file(path, errbuf, sizeof(errbuf)));
    snprintf(want, sizeof(want), "%s: rules[0].ports[0]: expected an integer 1..65535", path);
    assert_string_equal(errbuf, want);
    unlink(path);
    free(path);
    free(doc);

    assert_null(tt_policy_load_file("/nonexistent/policy.json", errbuf, sizeof(errbuf)));
    assert_non_null(strstr(errbuf, "/nonexistent/policy.json: cannot open"));

    big = malloc(1024 * 1024 + 1);
    assert_non_null(big);
    memset(big, ' ', 1024 * 1024 + 1);
    memcpy(big, "{\"rules\": []}", 13);
    path = write_temp(big, 1024 * 1024 + 1);
    assert_null(tt_policy_load_file(path, errbuf, sizeof(errbuf)));
    assert_non_null(strstr(errbuf, "document larger than"));
    unlink(path);
    free(path);
    free(big);
}

static void test_policy_tcp_enforceable(void **state)
{
    char err[512] = "";
    struct tt_policy *p =
        parse_ok("{\"rules\": ["
                 "{\"name\": \"no-posts\", \"action\": \"deny\", \"from\": [\"*\"],"
                 " \"to\": [\"spiffe://td/ns/shop/sa/api\"], \"methods\": [\"POST\"]},"
                 "{\"name\": \"watch-admin\", \"action\": \"deny\", \"mode\": \"audit\","
                 " \"from\": [\"*\"], \"paths\": [\"/admin*\"]},"
                 "{\"name\": \"gets\", \"action\": \"allow\", \"from\": [\"*\"],"
                 " \"methods\": [\"GET\"]}]}");

    const uint16_t opaque[] = {25, 3306};
    const uint16_t only_smtp[] = {25};

    /* The api workload with opaque ports cannot enforce "no-posts" (no "ports": it covers
     * them): refused, naming the rule and the port. */
    assert_int_equal(tt_policy_check_opaque_enforceable(p, "spiffe://td/ns/shop/sa/api", opaque, 2,
                                                        err, sizeof(err)),
                     TT_E_POLICY);
    assert_non_null(strstr(err, "rule \"no-posts\" denies by HTTP method on port 25"));
    /* Without opaque ports every port reads requests: enforceable. */
    assert_int_equal(tt_policy_check_opaque_enforceable(p, "spiffe://td/ns/shop/sa/api", NULL, 0,
                                                        err, sizeof(err)),
                     0);
    /* Another workload: the deny rule does not apply; the audit rule and the allow rule
     * with HTTP conditions are harmless (they never let anything extra through). */
    assert_int_equal(tt_policy_check_opaque_enforceable(p, "spiffe://td/ns/shop/sa/web", opaque, 2,
                                                        err, sizeof(err)),
                     0);
    tt_policy_unref(p);

    /* A rule limited to ports that are not opaque is enforceable; one that names an
     * opaque port is not. */
    p = parse_ok("{\"rules\": [{\"name\": \"no-admin\", \"action\": \"deny\", \"from\": [\"*\"],"
                 " \"ports\": [8080], \"paths\": [\"/admin*\"]}]}");
    assert_int_equal(tt_policy_check_opaque_enforceable(p, "spiffe://td/ns/shop/sa/api", only_smtp,
                                                        1, err, sizeof(err)),
                     0);
    assert_int_equal(tt_policy_check_opaque_enforceable(p, "spiffe://td/ns/shop/sa/api",
                                                        (const uint16_t[]){8080}, 1, err,
                                                        sizeof(err)),
                     TT_E_POLICY);
    assert_non_null(strstr(err, "denies by HTTP path on port 8080"));
    tt_policy_unref(p);
}

/* Per-request verdicts: exact and prefix paths, methods, deny before allow whatever the
 * document order, connection-level rules matching every request, audit would-deny per
 * rule, and a caller without identity. */
static void test_policy_request(void **state)
{
    struct tt_metrics *mc = tt_metrics_new(0);
    struct tt_policy *p =
        parse_ok("{'rules': ["
                 " {'name': 'reads', 'action': 'allow', 'from': ['spiffe://td/ns/shop/*'],"
                 "  'to': ['" SHOP_API "'], 'ports': [8080], 'methods': ['GET', 'HEAD'],"
                 "  'paths': ['/api/*', '/health']},"
                 " {'name': 'no-admin', 'action': 'deny', 'from': ['*'], 'paths': ['/api/admin*']},"
                 " {'name': 'web-posts', 'action': 'allow', 'from': ['" SHOP_WEB "'],"
                 "  'methods': ['POST'], 'paths': ['/api/orders']},"
                 " {'name': 'no-batch', 'action': 'deny', 'from': ['spiffe://td/ns/batch/*']},"
                 " {'name': 'watch-delete', 'action': 'deny', 'mode': 'audit', 'from': ['*'],"
                 "  'methods': ['DELETE']},"
                 " {'name': 'watch-orders', 'action': 'deny', 'mode': 'audit', 'from': ['*'],"
                 "  'paths': ['/api/orders']}]}");
    struct tt_policy_rule_info info;
    struct tt_policy_verdict v;

    /* Prefix and exact paths; the query is not part of the path. */
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/api/items/7", &v);
    assert_true(v.allowed);
    assert_string_equal(v.rule_name, "reads");
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/api/", &v);
    assert_true(v.allowed);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "HEAD", "/health", &v);
    assert_true(v.allowed);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/health?x=1", &v);
    assert_true(v.allowed);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/health/", &v);
    assert_false(v.allowed);
    assert_string_equal(v.rule_name, "default");
    assert_int_equal(v.rule, TT_POLICY_RULE_DEFAULT);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/api", &v);
    assert_false(v.allowed);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/", &v);
    assert_false(v.allowed);
    /* Methods are case-sensitive tokens. */
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "PUT", "/api/items/7", &v);
    assert_false(v.allowed);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "get", "/api/items/7", &v);
    assert_false(v.allowed);
    /* "to" and "ports" still apply. */
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 9090, "GET", "/api/items/7", &v);
    assert_false(v.allowed);
    tt_policy_check_request(p, SHOP_WEB, SHOPPING, 8080, "GET", "/api/items/7", &v);
    assert_false(v.allowed);

    /* The deny rule comes after "reads" in the document but is evaluated first. */
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/api/admin/users", &v);
    assert_false(v.allowed);
    assert_string_equal(v.rule_name, "no-admin");
    assert_int_equal(v.rule, 1);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/api/administrator", &v);
    assert_false(v.allowed);
    assert_string_equal(v.rule_name, "no-admin");

    /* A rule without HTTP conditions matches every request of its caller. */
    tt_policy_check_request(p, BATCH, SHOP_API, 8080, "GET", "/health", &v);
    assert_false(v.allowed);
    assert_string_equal(v.rule_name, "no-batch");

    /* Audit rules never decide; each matching one is listed, would-deny counted per rule. */
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "POST", "/api/orders", &v);
    assert_true(v.allowed);
    assert_string_equal(v.rule_name, "web-posts");
    assert_int_equal(v.n_audit, 1);
    assert_int_equal(v.audit[0], 5);
    assert_true(v.audit_would_deny);
    tt_metrics_policy_count(mc, p, &v);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "DELETE", "/api/orders", &v);
    assert_false(v.allowed);
    assert_string_equal(v.rule_name, "default");
    assert_int_equal(v.n_audit, 2);
    assert_int_equal(v.audit[0], 4);
    assert_int_equal(v.audit[1], 5);
    tt_metrics_policy_count(mc, p, &v);
    tt_policy_rule_info(p, 4, &info);
    assert_int_equal(rule_would_deny(mc, info.name), 1);
    tt_policy_rule_info(p, 5, &info);
    assert_int_equal(rule_would_deny(mc, info.name), 2);
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/api/items", &v);
    assert_int_equal(v.n_audit, 0);
    assert_false(v.audit_would_deny);

    /* No verified identity: no rule matches, not even "*" ones; the default decides. */
    tt_policy_check_request(p, NULL, SHOP_API, 8080, "GET", "/api/admin", &v);
    assert_false(v.allowed);
    assert_int_equal(v.rule, TT_POLICY_RULE_DEFAULT);
    assert_int_equal(v.n_audit, 0);
    tt_policy_unref(p);

    p = parse_ok("{'default': 'allow', 'rules': [{'name': 'no-admin', 'action': 'deny',"
                 " 'from': ['*'], 'paths': ['/admin*']}]}");
    tt_policy_check_request(p, NULL, SHOP_API, 8080, "GET", "/admin", &v);
    assert_true(v.allowed); /* "*" matches identified callers only */
    tt_policy_check_request(p, SHOP_WEB, SHOP_API, 8080, "GET", "/admin", &v);
    assert_false(v.allowed);
    tt_policy_unref(p);
    tt_metrics_free(mc);
}

/* Which callers and ports have rules with HTTP conditions: from, to and ports decide,
 * methods and paths do not; audit and enforce are told apart. */
static void test_policy_http_rules(void **state)
{
    struct tt_policy *p =
        parse_ok("{'rules': ["
                 " {'name': 'tcp', 'action': 'allow', 'from': ['*']},"
                 " {'name': 'reads', 'action': 'allow', 'from': ['spiffe://td/ns/shop/*'],"
                 "  'to': ['" SHOP_API "'], 'ports': [8080], 'methods': ['GET']},"
                 " {'name': 'watch', 'action': 'deny', 'mode': 'audit', 'from': ['" BATCH "'],"
                 "  'paths': ['/x']}]}");

    assert_int_equal(tt_policy_http_rules(p, SHOP_WEB, SHOP_API, 8080), TT_POLICY_HTTP_F_ENFORCE);
    assert_int_equal(tt_policy_http_rules(p, SHOP_WEB, SHOP_API, 9090), 0);
    assert_int_equal(tt_policy_http_rules(p, SHOP_WEB, SHOPPING, 8080), 0);
    assert_int_equal(tt_policy_http_rules(p, SHOP_WEB, NULL, 8080), 0);
    assert_int_equal(tt_policy_http_rules(p, BATCH, SHOP_API, 8080), TT_POLICY_HTTP_F_AUDIT);
    assert_int_equal(tt_policy_http_rules(p, BATCH, SHOPPING, 1), TT_POLICY_HTTP_F_AUDIT);
    assert_int_equal(tt_policy_http_rules(p, SHOPPING, SHOP_API, 8080), 0); /* not in shop/ */
    assert_int_equal(tt_policy_http_rules(p, NULL, SHOP_API, 8080), 0);
    tt_policy_unref(p);

    p = parse_ok("{'rules': [{'name': 'a', 'action': 'deny', 'from': ['*'], 'methods': ['GET']},"
                 " {'name': 'b', 'action': 'allow', 'mode': 'audit', 'from': ['*'],"
                 "  'paths': ['/']}]}");
    assert_int_equal(tt_policy_http_rules(p, SHOP_WEB, SHOP_API, 1),
                     TT_POLICY_HTTP_F_ENFORCE | TT_POLICY_HTTP_F_AUDIT);
    tt_policy_unref(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_wildcards),
        cmocka_unit_test(test_policy_tcp_enforceable),
        cmocka_unit_test(test_policy_any),
        cmocka_unit_test(test_policy_to_filtering),
        cmocka_unit_test(test_policy_ports),
        cmocka_unit_test(test_policy_deny_before_allow),
        cmocka_unit_test(test_policy_first_enforce_wins),
        cmocka_unit_test(test_policy_default),
        cmocka_unit_test(test_policy_audit),
        cmocka_unit_test(test_policy_audit_limit),
        cmocka_unit_test(test_policy_methods_paths),
        cmocka_unit_test(test_policy_request),
        cmocka_unit_test(test_policy_http_rules),
        cmocka_unit_test(test_policy_count),
        cmocka_unit_test(test_policy_counts_survive_new_document),
        cmocka_unit_test(test_policy_version),
        cmocka_unit_test(test_policy_to_json),
        cmocka_unit_test(test_policy_refcount),
        cmocka_unit_test(test_policy_validation_errors),
        cmocka_unit_test(test_policy_error_message_exact),
        cmocka_unit_test(test_policy_limits),
        cmocka_unit_test(test_policy_load_file),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
