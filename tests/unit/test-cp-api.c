/* Unit tests for control/api.c: a real operator API on 127.0.0.1 port 0 with its loop in
 * a thread of its own, over a real store and CA in a temporary directory; the test
 * thread is the client (tetherctl's blocking HTTP client). The mTLS path is tested by
 * adopting one end of a socketpair, as the TLS bridge will. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "ca.h"
#include "core/errors.h"
#include "cpapifix.h"
#include "httpc.h"
#include "operator_token.h"
#include "store.h"

#define ID_A "spiffe://example.org/ns/shop/sa/web"
#define ID_B "spiffe://example.org/ns/shop/sa/api"
#define POLICY_OK                                                                                  \
    "{\"default\": \"deny\", \"rules\": [{\"name\": \"r1\", \"action\": \"allow\", \"from\": "     \
    "[\"" ID_A "\"], \"ports\": [8080]}]}"

static int setup(void **state)
{
    struct cp_apifix *h = calloc(1, sizeof(*h));

    assert_non_null(h);
    cp_apifix_start(h, "test-cp-api", NULL);
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    cp_apifix_stop(*state);
    free(*state);
    return 0;
}

/* One request; returns the parsed JSON body (or NULL when not JSON) and the status. */
static json_t *req(struct cp_apifix *h, const char *method, const char *path, const char *body,
                   int *status, struct cp_httpc_response *raw)
{
    struct cp_httpc_response r;
    char err[256] = "";
    json_t *doc;

    if (cp_httpc_call(h->url, &h->creds, method, path, body ? "application/json" : NULL, body,
                      body ? strlen(body) : 0, 5000, &r, err, sizeof(err)) != 0)
        fail_msg("%s %s: %s", method, path, err);
    *status = r.status;
    doc = json_loadb(r.body, r.body_len, 0, NULL);
    if (raw)
        *raw = r;
    else
        cp_httpc_response_done(&r);
    return doc;
}

static const char *err_of(json_t *doc)
{
    const char *e = json_string_value(json_object_get(doc, "error"));

    return e ? e : "";
}

/* ---- tests ---- */

static void test_api_tokens(void **state)
{
    struct cp_apifix *h = *state;
    enum cp_token_err why;
    json_t *doc, *list;
    char secret[128];
    int st;

    doc = req(h, "POST", "/v1/tokens",
              "{\"spiffe_id\": \"" ID_A "\", \"ttl\": \"1h\", \"uses\": 2}", &st, NULL);
    assert_int_equal(st, 201);
    assert_string_equal(json_string_value(json_object_get(doc, "spiffe_id")), ID_A);
    assert_int_equal(json_integer_value(json_object_get(doc, "uses")), 2);
    assert_true(json_integer_value(json_object_get(doc, "expires_unix")) > tt_now_unix() + 3500);
    snprintf(secret, sizeof(secret), "%s", json_string_value(json_object_get(doc, "token")));
    assert_int_equal(strlen(secret), 43);
    json_decref(doc);
    /* The token works, for that identity. */
    assert_int_equal(cp_store_token_consume(h->store, secret, ID_B, &why), TT_E_DENIED);
    assert_int_equal(cp_store_token_consume(h->store, secret, ID_A, &why), 0);

    /* Defaults: one use, 24 hours. */
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"" ID_B "\"}", &st, NULL);
    assert_int_equal(st, 201);
    assert_int_equal(json_integer_value(json_object_get(doc, "uses")), 1);
    assert_true(json_integer_value(json_object_get(doc, "expires_unix")) >= tt_now_unix() + 86399);
    assert_true(json_integer_value(json_object_get(doc, "expires_unix")) <= tt_now_unix() + 86401);
    json_decref(doc);
    /* "ttl": "0": no expiry. */
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"" ID_B "\", \"ttl\": \"0\"}", &st, NULL);
    assert_int_equal(st, 201);
    assert_true(json_is_null(json_object_get(doc, "expires_unix")));
    json_decref(doc);

    /* The list never holds secrets. */
    {
        struct cp_httpc_response raw;

        list = req(h, "GET", "/v1/tokens", NULL, &st, &raw);
        assert_int_equal(st, 200);
        assert_null(strstr(raw.body, secret));
        cp_httpc_response_done(&raw);
    }
    assert_int_equal(json_array_size(json_object_get(list, "tokens")), 3);
    json_decref(list);
}

/* DELETE /v1/tokens?id=: by the listed id or a prefix of it; the token is then refused. */
static void test_api_token_delete(void **state)
{
    struct cp_apifix *h = *state;
    enum cp_token_err why;
    json_t *doc, *list;
    char secret[128], id[16], path[64];
    int st;

    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"" ID_A "\", \"uses\": 5}", &st, NULL);
    assert_int_equal(st, 201);
    snprintf(secret, sizeof(secret), "%s", json_string_value(json_object_get(doc, "token")));
    json_decref(doc);
    list = req(h, "GET", "/v1/tokens", NULL, &st, NULL);
    snprintf(id, sizeof(id), "%s",
             json_string_value(
                 json_object_get(json_array_get(json_object_get(list, "tokens"), 0), "id")));
    json_decref(list);
    assert_int_equal(strlen(id), 12);

    doc = req(h, "DELETE", "/v1/tokens?id=zz", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "hex digits"));
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/tokens", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "id=ID required"));
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/tokens?id=0000000000000", NULL, &st, NULL);
    assert_true(st == 404 || st == 409);
    json_decref(doc);

    /* The first 6 digits are enough (one token). */
    snprintf(path, sizeof(path), "/v1/tokens?id=%.6s", id);
    doc = req(h, "DELETE", path, NULL, &st, NULL);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(doc, "deleted")), id);
    json_decref(doc);
    assert_int_equal(cp_store_token_check(h->store, secret, ID_A, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_UNKNOWN);
    doc = req(h, "DELETE", path, NULL, &st, NULL);
    assert_int_equal(st, 404);
    json_decref(doc);
    list = req(h, "GET", "/v1/tokens", NULL, &st, NULL);
    assert_int_equal(json_array_size(json_object_get(list, "tokens")), 0);
    json_decref(list);
}

/* A body must be declared JSON: 415 with a JSON error otherwise; charset is fine. */
static void test_api_content_type(void **state)
{
    static const char body[] = "{\"spiffe_id\": \"" ID_A "\"}";
    static const struct {
        const char *ctype;
        int want;
    } cases[] = {
        {NULL, 415},
        {"text/plain", 415},
        {"application/x-www-form-urlencoded", 415},
        {"application/jsonx", 415},
        {"application/json", 201},
        {"Application/JSON; charset=utf-8", 201},
    };
    struct cp_apifix *h = *state;
    char err[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cp_httpc_response r;
        json_t *doc;

        if (cp_httpc_call(h->url, &h->creds, "POST", "/v1/tokens", cases[i].ctype, body,
                          strlen(body), 5000, &r, err, sizeof(err)) != 0)
            fail_msg("POST: %s", err);
        if (r.status != cases[i].want)
            fail_msg("Content-Type %s: %d, want %d", cases[i].ctype ? cases[i].ctype : "(none)",
                     r.status, cases[i].want);
        doc = json_loadb(r.body, r.body_len, 0, NULL);
        assert_non_null(doc);
        if (cases[i].want == 415)
            assert_non_null(strstr(err_of(doc), "expected application/json"));
        json_decref(doc);
        cp_httpc_response_done(&r);
    }
}

static void test_api_token_errors(void **state)
{
    struct cp_apifix *h = *state;
    json_t *doc;
    int st;

    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"" ID_A "\", \"usez\": 2}", &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "unknown key \"usez\""));
    json_decref(doc);
    doc = req(h, "POST", "/v1/tokens", "{\"ttl\": \"1h\"}", &st, NULL);
    assert_int_equal(st, 400);
    assert_string_equal(err_of(doc), "spiffe_id: required");
    json_decref(doc);
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"" ID_A "\", \"ttl\": \"1 hour\"}", &st,
              NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "ttl"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"" ID_A "\", \"uses\": 0}", &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "uses"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"spiffe://bad/../x\"}", &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "SPIFFE"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"spiffe://other.org/ns/a/sa/b\"}", &st,
              NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "trust domain (example.org)"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": ", &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "body: line 1"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/tokens", "[1]", &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "object"));
    json_decref(doc);
    /* Nothing was created by any of these. */
    doc = req(h, "GET", "/v1/tokens", NULL, &st, NULL);
    assert_int_equal(json_array_size(json_object_get(doc, "tokens")), 0);
    json_decref(doc);
}

static void test_api_policy_validation(void **state)
{
    struct cp_apifix *h = *state;
    const char *bad = "{\"default\": \"deny\", \"rules\": [{\"name\": \"x\", \"action\": "
                      "\"allow\", \"from\": [\"" ID_A "\"], \"portz\": [80]}]}";
    struct cp_httpc_response raw;
    json_t *doc;
    uint64_t v0 = cp_store_version(h->store);
    int st;

    doc = req(h, "GET", "/v1/policy", NULL, &st, NULL);
    assert_int_equal(st, 404);
    json_decref(doc);
    doc = req(h, "PUT", "/v1/policy", bad, &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "rules[0]"));
    assert_non_null(strstr(err_of(doc), "portz"));
    json_decref(doc);
    /* Never stored, never a new version. */
    doc = req(h, "GET", "/v1/policy", NULL, &st, NULL);
    assert_int_equal(st, 404);
    json_decref(doc);
    assert_int_equal(cp_store_version(h->store), v0);

    doc = req(h, "PUT", "/v1/policy", POLICY_OK, &st, NULL);
    assert_int_equal(st, 200);
    assert_int_equal(json_integer_value(json_object_get(doc, "version")), v0 + 1);
    json_decref(doc);
    doc = req(h, "GET", "/v1/policy", NULL, &st, &raw);
    assert_int_equal(st, 200);
    assert_string_equal(raw.body, POLICY_OK);
    assert_string_equal(raw.ctype, "application/json");
    cp_httpc_response_done(&raw);
    json_decref(doc);
}

static void test_api_revocations(void **state)
{
    struct cp_apifix *h = *state;
    json_t *doc;
    int st;

    doc = req(h, "POST", "/v1/revocations", "{\"serial\": \"00:0a:BC\"}", &st, NULL);
    assert_int_equal(st, 201);
    assert_string_equal(json_string_value(json_object_get(doc, "serial")), "ABC");
    json_decref(doc);
    assert_true(cp_store_is_revoked(h->store, "abc"));
    doc = req(h, "POST", "/v1/revocations", "{\"serial\": \"abc\"}", &st, NULL);
    assert_int_equal(st, 200);
    assert_true(json_is_true(json_object_get(doc, "already_revoked")));
    json_decref(doc);
    doc = req(h, "POST", "/v1/revocations", "{\"serial\": \"xyz\"}", &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "serial"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/revocations", "{\"serial\": 12}", &st, NULL);
    assert_int_equal(st, 400);
    json_decref(doc);
    doc = req(h, "GET", "/v1/revocations", NULL, &st, NULL);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(doc, "revocations")), 1);
    json_decref(doc);
}

/* A service address with endpoints through the API: created, listed with its endpoints,
 * endpoints added and removed one by one; bad bodies are named. */
static void test_api_service_endpoints(void **state)
{
    struct cp_apifix *h = *state;
    json_t *doc, *svc;
    int st;

    doc = req(h, "POST", "/v1/services",
              "{\"address\": \"10.96.0.10:80\", \"endpoints\": [{\"address\": \"10.1.0.1:8080\", "
              "\"spiffe_id\": \"" ID_A
              "\"}, {\"address\": \"10.1.0.2:8080\", \"spiffe_id\": \"" ID_A "\"}]}",
              &st, NULL);
    assert_int_equal(st, 201);
    assert_int_equal(json_array_size(json_object_get(doc, "endpoints")), 2);
    json_decref(doc);
    /* Both forms at once, an empty list, a bad element, an unknown key: 400, named. */
    doc = req(h, "POST", "/v1/services",
              "{\"address\": \"10.96.0.11:80\", \"spiffe_id\": \"" ID_A "\", \"endpoints\": []}",
              &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "not both"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/services", "{\"address\": \"10.96.0.11:80\", \"endpoints\": []}", &st,
              NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "endpoints: expected an array of 1 to"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/services",
              "{\"address\": \"10.96.0.11:80\", \"endpoints\": [{\"address\": \"10.1.0.1:8080\"}]}",
              &st, NULL);
    assert_int_equal(st, 400);
    assert_string_equal(err_of(doc), "endpoints[0].spiffe_id: expected a string");
    json_decref(doc);
    doc = req(h, "POST", "/v1/services",
              "{\"address\": \"10.96.0.11:80\", \"endpoints\": [{\"address\": \"x:1\", "
              "\"spiffe_id\": \"" ID_A "\", \"port\": 1}]}",
              &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "endpoints[0]: unknown key \"port\""));
    json_decref(doc);
    doc = req(h, "POST", "/v1/services",
              "{\"address\": \"10.96.0.11:80\", \"endpoints\": [{\"address\": \"10.1.0.1\", "
              "\"spiffe_id\": \"" ID_A "\"}]}",
              &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "endpoints[0].address 10.1.0.1"));
    json_decref(doc);
    /* One more endpoint, then one fewer. */
    doc = req(h, "POST", "/v1/services/endpoints",
              "{\"service\": \"10.96.0.10:80\", \"address\": \"10.1.0.3:8080\", \"spiffe_id\": "
              "\"" ID_A "\"}",
              &st, NULL);
    assert_int_equal(st, 201);
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services/endpoints?service=10.96.0.10%3A80&address=10.1.0.1%3A8080",
              NULL, &st, NULL);
    assert_int_equal(st, 200);
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services/endpoints?service=10.96.0.10%3A80&address=10.1.0.1%3A8080",
              NULL, &st, NULL);
    assert_int_equal(st, 404);
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services/endpoints?service=10.96.0.10%3A80", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_string_equal(err_of(doc), "query: address=ADDR:PORT required");
    json_decref(doc);
    doc = req(h, "GET", "/v1/services", NULL, &st, NULL);
    assert_int_equal(json_array_size(json_object_get(doc, "services")), 1);
    svc = json_array_get(json_object_get(doc, "services"), 0);
    assert_string_equal(json_string_value(json_object_get(svc, "source")), "operator");
    svc = json_object_get(svc, "endpoints");
    assert_int_equal(json_array_size(svc), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(svc, 1), "address")),
                        "10.1.0.3:8080");
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services?address=10.96.0.10%3A80", NULL, &st, NULL);
    assert_int_equal(st, 200);
    json_decref(doc);
}

static void test_api_services(void **state)
{
    struct cp_apifix *h = *state;
    json_t *doc;
    int st;

    doc = req(h, "POST", "/v1/services",
              "{\"address\": \"[::1]:8080\", \"spiffe_id\": \"" ID_A "\"}", &st, NULL);
    assert_int_equal(st, 201);
    json_decref(doc);
    doc = req(h, "POST", "/v1/services", "{\"address\": \"nope\", \"spiffe_id\": \"" ID_A "\"}",
              &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "address nope"));
    json_decref(doc);
    doc = req(h, "POST", "/v1/services", "{\"address\": \"10.0.0.1:80\"}", &st, NULL);
    assert_int_equal(st, 400);
    assert_string_equal(err_of(doc), "spiffe_id: required");
    json_decref(doc);
    doc = req(h, "GET", "/v1/services", NULL, &st, NULL);
    assert_int_equal(json_array_size(json_object_get(doc, "services")), 1);
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services?address=%5B%3A%3A1%5D%3A8080", NULL, &st, NULL);
    assert_int_equal(st, 200);
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services?address=%5B%3A%3A1%5D%3A8080", NULL, &st, NULL);
    assert_int_equal(st, 404);
    json_decref(doc);
    /* Malformed or ambiguous queries are refused, each with its reason. */
    doc = req(h, "DELETE", "/v1/services?address=%zz", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "address: malformed percent-escape"));
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services?address=10.0.0.1%3", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "address: malformed percent-escape"));
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services?address=a:1&address=b:2", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_non_null(strstr(err_of(doc), "address: given more than once"));
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services?addr=10.0.0.1:80", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_string_equal(err_of(doc), "query: address=ADDR:PORT required");
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/services", NULL, &st, NULL);
    assert_int_equal(st, 400);
    assert_string_equal(err_of(doc), "query: address=ADDR:PORT required");
    json_decref(doc);
}

static void test_api_bundle_sidecars_stats(void **state)
{
    struct cp_apifix *h = *state;
    struct cp_httpc_response raw;
    json_t *doc;
    int st;

    doc = req(h, "GET", "/v1/bundle", NULL, &st, &raw);
    assert_null(doc);
    assert_int_equal(st, 200);
    assert_string_equal(raw.body, cp_ca_bundle_pem(h->ca));
    assert_non_null(strstr(raw.ctype, "text/plain"));
    cp_httpc_response_done(&raw);

    assert_int_equal(cp_store_sidecar_seen(h->store, "s1", ID_A, "127.0.0.1:4000", "n1"), 0);
    cp_store_sidecar_nacked(h->store, "s1", 3, "bad policy");
    doc = req(h, "GET", "/v1/sidecars", NULL, &st, NULL);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(doc, "sidecars"), 0), "nack_reason")),
                        "bad policy");
    json_decref(doc);

    cp_store_count_refusal(h->store, "expired_token");
    assert_int_equal(
        cp_store_issued_add(h->store, "AB", ID_A, tt_now_unix() + 60, tt_now_unix(), CP_VIA_TOKEN),
        0);
    doc = req(h, "GET", "/stats", NULL, &st, NULL);
    assert_int_equal(st, 200);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(doc, "refusals"), "expired_token")), 1);
    assert_int_equal(json_integer_value(json_object_get(doc, "issued")), 1);
    assert_int_equal(json_integer_value(json_object_get(doc, "sidecars_connected")), 1);
    assert_true(json_is_integer(json_object_get(doc, "version")));
    json_decref(doc);
    doc = req(h, "GET", "/v1/identities", NULL, &st, NULL);
    assert_int_equal(st, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(doc, "identities"), 0), "serial")),
                        "AB");
    json_decref(doc);
}

static void test_api_not_found_and_methods(void **state)
{
    struct cp_apifix *h = *state;
    struct cp_httpc_response raw;
    json_t *doc;
    int st;

    doc = req(h, "GET", "/v1/nope", NULL, &st, NULL);
    assert_int_equal(st, 404);
    json_decref(doc);
    doc = req(h, "DELETE", "/v1/policy", NULL, &st, &raw);
    assert_int_equal(st, 405);
    cp_httpc_response_done(&raw);
    json_decref(doc);
    /* The client above does not show headers: read the Allow line off a raw socket. */
    {
        char rq[512];
        struct sockaddr_in sin = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)cp_api_port(h->api))};
        char buf[4096];
        size_t got = 0;
        ssize_t n;
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        snprintf(rq, sizeof(rq),
                 "DELETE /v1/policy HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                 "%s\r\nConnection: close\r\n\r\n",
                 h->token);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        assert_int_equal(write(fd, rq, strlen(rq)), (ssize_t)strlen(rq));
        while ((n = read(fd, buf + got, sizeof(buf) - 1 - got)) > 0)
            got += (size_t)n;
        buf[got] = '\0';
        close(fd);
        assert_non_null(strstr(buf, "HTTP/1.1 405"));
        assert_non_null(strstr(buf, "\r\nAllow: GET, PUT\r\n"));
    }
    /* HEAD is GET without a body. */
    doc = req(h, "HEAD", "/v1/bundle", NULL, &st, &raw);
    assert_int_equal(st, 200);
    assert_int_equal(raw.body_len, 0);
    cp_httpc_response_done(&raw);
    json_decref(doc);
}

static void test_api_body_limit(void **state)
{
    struct cp_apifix *h = *state;
    size_t n = CP_API_BODY_MAX + 10;

    assert_int_equal(CP_API_BODY_MAX, 64 * 1024); /* the documented limit */
    char *big = malloc(n + 1);
    json_t *doc;
    int st;

    memset(big, ' ', n);
    big[n] = '\0';
    big[0] = '{';
    doc = req(h, "PUT", "/v1/policy", big, &st, NULL);
    assert_int_equal(st, 413);
    /* JSON like every other error, saying the limit. */
    assert_non_null(doc);
    assert_non_null(strstr(err_of(doc), "at most 64 KiB"));
    json_decref(doc);
    /* Just under the limit is parsed (and refused as a policy, not as a size). */
    big[CP_API_BODY_MAX - 1] = '}';
    big[CP_API_BODY_MAX] = '\0';
    doc = req(h, "PUT", "/v1/policy", big, &st, NULL);
    assert_int_equal(st, 400);
    json_decref(doc);
    free(big);
}

/* ---- authentication ---- */

/* A local user without the state directory's credential: every request but the public
 * reads is refused with 401, whatever it tries, and nothing changes. */
static void test_api_operator_credential(void **state)
{
    struct cp_apifix *h = *state;
    static const char *const attempts[][3] = {
        {"POST", "/v1/tokens", "{\"spiffe_id\":\"spiffe://example.org/ns/a/sa/b\"}"},
        {"PUT", "/v1/policy", "{\"default\":\"allow\",\"rules\":[]}"},
        {"POST", "/v1/revocations", "{\"serial\":\"0A\"}"},
        {"GET", "/v1/tokens", NULL},
        {"GET", "/stats", NULL},
        {"DELETE", "/v1/policy", NULL}, /* 401 before 405: no hint of what exists */
    };
    const char *const wrong[] = {NULL, "Bearer nope", "Basic abc", "Bearer", ""};
    struct cp_httpc_tls creds = {0};
    struct cp_httpc_response r;
    char err[256], bad_token[CP_OPERATOR_TOKEN_MAX];
    json_t *doc;
    int st;

    snprintf(bad_token, sizeof(bad_token), "%s", h->token);
    bad_token[0] = bad_token[0] == 'a' ? 'b' : 'a'; /* same length, one character off */
    for (size_t w = 0; w < TT_ARRAY_SIZE(wrong) + 1; w++) {
        creds.bearer = w < TT_ARRAY_SIZE(wrong) ? wrong[w] : bad_token;
        if (creds.bearer != NULL && strncmp(creds.bearer, "Bearer", 6) == 0)
            creds.bearer = creds.bearer[6] ? creds.bearer + 7 : "";
        for (size_t i = 0; i < TT_ARRAY_SIZE(attempts); i++) {
            const char *body = attempts[i][2];

            assert_int_equal(cp_httpc_call(h->url, &creds, attempts[i][0], attempts[i][1],
                                           body ? "application/json" : NULL, body,
                                           body ? strlen(body) : 0, 5000, &r, err, sizeof(err)),
                             0);
            assert_int_equal(r.status, 401);
            doc = json_loadb(r.body, r.body_len, 0, NULL);
            assert_non_null(strstr(err_of(doc), "operator"));
            assert_non_null(strstr(err_of(doc), "operator.token"));
            json_decref(doc);
            cp_httpc_response_done(&r);
        }
    }
    /* Nothing happened: no token, no policy, no revocation. */
    doc = req(h, "GET", "/v1/tokens", NULL, &st, NULL);
    assert_int_equal(st, 200);
    assert_int_equal(json_array_size(json_object_get(doc, "tokens")), 0);
    json_decref(doc);
    doc = req(h, "GET", "/v1/policy", NULL, &st, NULL);
    assert_int_equal(st, 404);
    json_decref(doc);
    doc = req(h, "GET", "/v1/revocations", NULL, &st, NULL);
    assert_int_equal(json_array_size(json_object_get(doc, "revocations")), 0);
    json_decref(doc);
    /* The bundle is public. */
    creds.bearer = NULL;
    assert_int_equal(cp_httpc_call(h->url, &creds, "GET", "/v1/bundle", NULL, NULL, 0, 5000, &r,
                                   err, sizeof(err)),
                     0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "BEGIN CERTIFICATE"));
    cp_httpc_response_done(&r);
}

/* The credential file: made 0600 once and then kept; a file others can read, a link, or
 * one without a token is refused with a message naming it. */
static void test_operator_token_file(void **state)
{
    char dir[] = "/tmp/test-cp-optoken-XXXXXX", path[128], cmd[160];
    char a[CP_OPERATOR_TOKEN_MAX], b[CP_OPERATOR_TOKEN_MAX], err[512];
    struct stat st;
    FILE *fp;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/operator.token", dir);
    assert_int_equal(cp_operator_token_read(dir, a, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, path));
    assert_int_equal(cp_operator_token_ensure(dir, a, err, sizeof(err)), 0);
    assert_int_equal(strlen(a), 64);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(cp_operator_token_ensure(dir, b, err, sizeof(err)), 0);
    assert_string_equal(a, b);
    assert_int_equal(cp_operator_token_read(dir, b, err, sizeof(err)), 0);
    assert_string_equal(a, b);
    assert_true(cp_operator_token_matches(a, (snprintf(b, sizeof(b), "Bearer %s", a), b)));
    assert_true(cp_operator_token_matches(a, (snprintf(b, sizeof(b), "bearer %s", a), b)));
    assert_false(cp_operator_token_matches(a, a));
    assert_false(cp_operator_token_matches(a, NULL));
    b[strlen(b) - 1] = '\0';
    assert_false(cp_operator_token_matches(a, b));

    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(cp_operator_token_ensure(dir, b, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "0644"));
    assert_int_equal(chmod(path, 0600), 0);
    fp = fopen(path, "w");
    fputs("short\n", fp);
    fclose(fp);
    assert_int_equal(cp_operator_token_ensure(dir, b, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "expected one token"));
    unlink(path);
    assert_int_equal(symlink("/etc/hostname", path), 0);
    assert_true(cp_operator_token_ensure(dir, b, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, path));
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- transport security ---- */

static void test_api_refuses_non_loopback(void **state)
{
    struct cp_apifix h;
    struct cp_api_opts o = {.listen = "0.0.0.0:0"};
    char err[512] = "";
    struct tt_addr a;
    uv_loop_t loop;

    cp_apifix_open_state(&h, "test-cp-api");
    o.operator_token = h.token;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_null(cp_api_new(&loop, &o, h.store, h.ca, err, sizeof(err)));
    assert_string_equal(err,
                        "--listen-api 0.0.0.0:0: non-loopback addresses need mTLS (not yet wired)");
    o.listen = "[::]:0";
    assert_null(cp_api_new(&loop, &o, h.store, h.ca, err, sizeof(err)));
    assert_non_null(strstr(err, "need mTLS"));
    o.listen = "localhost:0";
    /* "localhost" resolves to a loopback address: allowed. */
    h.api = cp_api_new(&loop, &o, h.store, h.ca, err, sizeof(err));
    assert_non_null(h.api);
    cp_api_close(h.api);
    o.listen = "bogus";
    assert_null(cp_api_new(&loop, &o, h.store, h.ca, err, sizeof(err)));
    assert_non_null(strstr(err, "--listen-api bogus"));
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);

    assert_int_equal(tt_addr_parse("127.1.2.3:1", 0, &a), 0);
    assert_true(cp_api_addr_is_loopback(&a));
    assert_int_equal(tt_addr_parse("[::1]:1", 0, &a), 0);
    assert_true(cp_api_addr_is_loopback(&a));
    assert_int_equal(tt_addr_parse("10.0.0.1:1", 0, &a), 0);
    assert_false(cp_api_addr_is_loopback(&a));
    cp_apifix_close_state(&h);
}

struct adopt {
    struct cp_api *api;
    int fd;
    const char *peer;
    int rc;
};

static void adopt_on_loop(void *ud)
{
    struct adopt *a = ud;

    a->rc = cp_api_adopt_fd(a->api, a->fd, a->peer);
}

/* Sends GET /stats on one end of a socketpair whose other end the API adopted on its loop
 * thread, as the TLS bridge does, and reads the answer into *r. Returns the status. */
static int pair_request(struct cp_apifix *h, const char *peer, struct tt_httpfix_response *r)
{
    struct tt_httpfix_client *c;
    struct adopt a;
    int sv[2];

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    a = (struct adopt){h->api, sv[0], peer, -1};
    tt_httpfix_loop_call(&h->lp, adopt_on_loop, &a);
    assert_int_equal(a.rc, 0);
    c = tt_httpfix_client_adopt(sv[1]);
    tt_httpfix_sends(c, "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_true(tt_httpfix_read_response(c, r, false));
    assert_true(tt_httpfix_closed_by_server(c));
    tt_httpfix_client_free(c);
    return r->status;
}

static void test_api_mtls_adopted_admin_check(void **state)
{
    static const char admin[] = "spiffe://example.org/ns/tether-system/sa/tether-admin";
    struct cp_api_opts o = {.listen = "0.0.0.0:15014", .mtls = true};
    struct tt_httpfix_response r;
    struct cp_apifix h;

    cp_apifix_start(&h, "test-cp-api", &o);
    assert_int_equal(cp_api_port(h.api), 0); /* it does not listen itself */
    assert_true(cp_api_admin_allowed(h.api, admin));
    assert_false(cp_api_admin_allowed(h.api, ID_A));
    assert_false(cp_api_admin_allowed(h.api, NULL));
    assert_false(
        cp_api_admin_allowed(h.api, "spiffe://example.org/ns/tether-system/sa/tether-admin/"));

    assert_int_equal(pair_request(&h, admin, &r), 200);
    assert_non_null(strstr(r.body, "\"refusals\""));
    tt_httpfix_response_done(&r);
    assert_int_equal(pair_request(&h, ID_A, &r), 403);
    assert_non_null(strstr(r.body, "admin identity"));
    tt_httpfix_response_done(&r);
    assert_int_equal(pair_request(&h, NULL, &r), 403);
    tt_httpfix_response_done(&r);
    cp_apifix_stop(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_api_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_token_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_token_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_content_type, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_policy_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_revocations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_services, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_service_endpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_bundle_sidecars_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_not_found_and_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_body_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_operator_credential, setup, teardown),
        cmocka_unit_test(test_operator_token_file),
        cmocka_unit_test(test_api_refuses_non_loopback),
        cmocka_unit_test(test_api_mtls_adopted_admin_check),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
