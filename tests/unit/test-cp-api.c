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
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "ca.h"
#include "errors.h"
#include "httpc.h"
#include "store.h"

#define ID_A "spiffe://example.org/ns/shop/sa/web"
#define ID_B "spiffe://example.org/ns/shop/sa/api"
#define POLICY_OK                                                                                  \
    "{\"default\": \"deny\", \"rules\": [{\"name\": \"r1\", \"action\": \"allow\", \"from\": "     \
    "[\"" ID_A "\"], \"ports\": [8080]}]}"

struct harness {
    char dir[64];
    char url[64];
    struct cp_store *store;
    struct cp_ca *ca;
    struct cp_api *api;
    uv_loop_t loop;
    uv_async_t stop;
    pthread_t thread;
};

static void on_stop(uv_async_t *a)
{
    struct harness *h = a->data;

    cp_api_close(h->api);
    uv_close((uv_handle_t *)&h->stop, NULL);
}

static void *loop_thread(void *p)
{
    struct harness *h = p;

    uv_run(&h->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void open_state(struct harness *h)
{
    struct cp_ca_opts co = {.trust_domain = "example.org"};
    char err[512] = "";

    snprintf(h->dir, sizeof(h->dir), "/tmp/test-cp-api-XXXXXX");
    assert_non_null(mkdtemp(h->dir));
    h->store = cp_store_open(h->dir, err, sizeof(err));
    assert_non_null(h->store);
    co.state_dir = h->dir;
    h->ca = cp_ca_open(&co, err, sizeof(err));
    assert_non_null(h->ca);
}

static void close_state(struct harness *h)
{
    char cmd[128];

    cp_ca_free(h->ca);
    cp_store_free(h->store);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->dir);
    assert_int_equal(system(cmd), 0);
}

static int setup(void **state)
{
    struct harness *h = calloc(1, sizeof(*h));
    struct cp_api_opts o = {.listen = "127.0.0.1:0"};
    char err[512] = "";

    assert_non_null(h);
    open_state(h);
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(uv_async_init(&h->loop, &h->stop, on_stop), 0);
    h->stop.data = h;
    h->api = cp_api_start(&h->loop, &o, h->store, h->ca, err, sizeof(err));
    if (h->api == NULL)
        fail_msg("cp_api_start: %s", err);
    snprintf(h->url, sizeof(h->url), "http://127.0.0.1:%d", cp_api_port(h->api));
    assert_int_equal(pthread_create(&h->thread, NULL, loop_thread, h), 0);
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    struct harness *h = *state;

    uv_async_send(&h->stop);
    pthread_join(h->thread, NULL);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    close_state(h);
    free(h);
    return 0;
}

/* One request; returns the parsed JSON body (or NULL when not JSON) and the status. */
static json_t *req(struct harness *h, const char *method, const char *path, const char *body,
                   int *status, struct cp_httpc_response *raw)
{
    struct cp_httpc_response r;
    char err[256] = "";
    json_t *doc;

    if (cp_httpc_request(h->url, method, path, body ? "application/json" : NULL, body,
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
    struct harness *h = *state;
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

    /* Defaults: one use, no expiry. */
    doc = req(h, "POST", "/v1/tokens", "{\"spiffe_id\": \"" ID_B "\"}", &st, NULL);
    assert_int_equal(st, 201);
    assert_int_equal(json_integer_value(json_object_get(doc, "uses")), 1);
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
    assert_int_equal(json_array_size(json_object_get(list, "tokens")), 2);
    json_decref(list);
}

static void test_api_token_errors(void **state)
{
    struct harness *h = *state;
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
    struct harness *h = *state;
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
    struct harness *h = *state;
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

static void test_api_services(void **state)
{
    struct harness *h = *state;
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
    struct harness *h = *state;
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
    assert_int_equal(cp_store_issued_add(h->store, "AB", ID_A, tt_now_unix() + 60, tt_now_unix()),
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
    struct harness *h = *state;
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
        static const char rq[] = "DELETE /v1/policy HTTP/1.1\r\nHost: x\r\nConnection: "
                                 "close\r\n\r\n";
        struct sockaddr_in sin = {.sin_family = AF_INET,
                                  .sin_port = htons((uint16_t)cp_api_port(h->api))};
        char buf[4096];
        size_t got = 0;
        ssize_t n;
        int fd = socket(AF_INET, SOCK_STREAM, 0);

        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        assert_int_equal(write(fd, rq, sizeof(rq) - 1), (ssize_t)(sizeof(rq) - 1));
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
    struct harness *h = *state;
    size_t n = CP_API_BODY_MAX + 10;
    char *big = malloc(n + 1);
    json_t *doc;
    int st;

    memset(big, ' ', n);
    big[n] = '\0';
    big[0] = '{';
    doc = req(h, "PUT", "/v1/policy", big, &st, NULL);
    assert_int_equal(st, 413);
    json_decref(doc);
    /* Just under the limit is parsed (and refused as a policy, not as a size). */
    big[CP_API_BODY_MAX - 1] = '}';
    big[CP_API_BODY_MAX] = '\0';
    doc = req(h, "PUT", "/v1/policy", big, &st, NULL);
    assert_int_equal(st, 400);
    json_decref(doc);
    free(big);
}

/* ---- transport security ---- */

static void test_api_refuses_non_loopback(void **state)
{
    struct harness h = {0};
    struct cp_api_opts o = {.listen = "0.0.0.0:0"};
    char err[512] = "";
    struct tt_addr a;

    open_state(&h);
    assert_int_equal(uv_loop_init(&h.loop), 0);
    assert_null(cp_api_start(&h.loop, &o, h.store, h.ca, err, sizeof(err)));
    assert_string_equal(err,
                        "--listen-api 0.0.0.0:0: non-loopback addresses need mTLS (not yet wired)");
    o.listen = "[::]:0";
    assert_null(cp_api_start(&h.loop, &o, h.store, h.ca, err, sizeof(err)));
    assert_non_null(strstr(err, "need mTLS"));
    o.listen = "localhost:0";
    /* "localhost" resolves to a loopback address: allowed. */
    h.api = cp_api_start(&h.loop, &o, h.store, h.ca, err, sizeof(err));
    assert_non_null(h.api);
    cp_api_close(h.api);
    o.listen = "bogus";
    assert_null(cp_api_start(&h.loop, &o, h.store, h.ca, err, sizeof(err)));
    assert_non_null(strstr(err, "--listen-api bogus"));
    assert_int_equal(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&h.loop), 0);

    assert_int_equal(tt_addr_parse("127.1.2.3:1", 0, &a), 0);
    assert_true(cp_api_addr_is_loopback(&a));
    assert_int_equal(tt_addr_parse("[::1]:1", 0, &a), 0);
    assert_true(cp_api_addr_is_loopback(&a));
    assert_int_equal(tt_addr_parse("10.0.0.1:1", 0, &a), 0);
    assert_false(cp_api_addr_is_loopback(&a));
    close_state(&h);
}

/* Sends a request on one end of a socketpair whose other end the API adopted, runs the
 * loop until the answer is complete (Connection: close), returns the status. */
static int pair_request(uv_loop_t *loop, struct cp_api *api, const char *peer, char *out,
                        size_t outlen)
{
    static const char rq[] = "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    int sv[2];
    size_t got = 0;
    int status = 0;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(cp_api_adopt_fd(api, sv[0], peer), 0);
    assert_int_equal(write(sv[1], rq, sizeof(rq) - 1), (ssize_t)(sizeof(rq) - 1));
    for (int i = 0; i < 2000; i++) {
        ssize_t n;

        uv_run(loop, UV_RUN_NOWAIT);
        n = recv(sv[1], out + got, outlen - 1 - got, MSG_DONTWAIT);
        if (n == 0)
            break;
        if (n > 0)
            got += (size_t)n;
        else
            usleep(1000);
    }
    out[got] = '\0';
    close(sv[1]);
    sscanf(out, "HTTP/1.1 %d", &status);
    return status;
}

static void test_api_mtls_adopted_admin_check(void **state)
{
    struct harness h = {0};
    struct cp_api_opts o = {.listen = "0.0.0.0:15014", .mtls = true};
    char err[512] = "", buf[8192];

    open_state(&h);
    assert_int_equal(uv_loop_init(&h.loop), 0);
    h.api = cp_api_start(&h.loop, &o, h.store, h.ca, err, sizeof(err));
    assert_non_null(h.api);
    assert_int_equal(cp_api_port(h.api), 0); /* it does not listen itself */
    assert_true(
        cp_api_admin_allowed(h.api, "spiffe://example.org/ns/tether-system/sa/tether-admin"));
    assert_false(cp_api_admin_allowed(h.api, ID_A));
    assert_false(cp_api_admin_allowed(h.api, NULL));
    assert_false(
        cp_api_admin_allowed(h.api, "spiffe://example.org/ns/tether-system/sa/tether-admin/"));

    assert_int_equal(pair_request(&h.loop, h.api,
                                  "spiffe://example.org/ns/tether-system/sa/tether-admin", buf,
                                  sizeof(buf)),
                     200);
    assert_non_null(strstr(buf, "\"refusals\""));
    assert_int_equal(pair_request(&h.loop, h.api, ID_A, buf, sizeof(buf)), 403);
    assert_non_null(strstr(buf, "admin identity"));
    assert_int_equal(pair_request(&h.loop, h.api, NULL, buf, sizeof(buf)), 403);
    cp_api_close(h.api);
    assert_int_equal(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&h.loop), 0);
    close_state(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_api_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_token_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_policy_validation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_revocations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_services, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_bundle_sidecars_stats, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_not_found_and_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(test_api_body_limit, setup, teardown),
        cmocka_unit_test(test_api_refuses_non_loopback),
        cmocka_unit_test(test_api_mtls_adopted_admin_check),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
