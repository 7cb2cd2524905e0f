/* The operator API (see api.h): routes over the shared HTTP core, JSON with jansson. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <http_parser.h>
#include <jansson.h>
#include <netinet/in.h>

#include "api.h"
#include "core/util.h"
#include "tls/crypto.h"
#include "core/errors.h"
#include "admin/httpd.h"
#include "core/log.h"
#include "core/spiffe.h"
#include "tls/identity.h"
#include "core/query.h"
#include "operator_token.h"

struct cp_api {
    struct tt_httpd *httpd;
    struct cp_store *store;
    struct cp_ca *ca;
    bool mtls;
    char operator_token[CP_OPERATOR_TOKEN_MAX]; /* plaintext APIs: the credential to carry */
    char *admin_ids[CP_API_MAX_ADMINS];
    size_t n_admin_ids;
    char allow_hdr[160]; /* the 405 answer's Allow line, copied by httpd at once */
    json_t *(*stats_extra)(void *ud);
    void *stats_ud;
};

/* ---- helpers ---- */

/* True when addr is IPv4 127.0.0.0/8, IPv6 ::1 or an IPv4-mapped ::ffff:127.x address; false for
 * any other address or family. Pure. */
bool cp_api_addr_is_loopback(const struct tt_addr *addr)
{
    return tt_httpd_addr_is_loopback((const struct sockaddr *)&addr->ss);
}

/* True when peer_spiffe_id is a valid SPIFFE ID equal to one of the API's admin identities; false
 * when api or the ID is NULL or the ID fails tt_spiffe_check(). Pure. */
bool cp_api_admin_allowed(const struct cp_api *api, const char *peer_spiffe_id)
{
    if (api == NULL || peer_spiffe_id == NULL ||
        tt_spiffe_check(peer_spiffe_id, strlen(peer_spiffe_id), false) != 0)
        return false;
    for (size_t i = 0; i < api->n_admin_ids; i++)
        if (strcmp(api->admin_ids[i], peer_spiffe_id) == 0)
            return true;
    return false;
}

/* Answers with doc (consumed) as pretty JSON plus a newline. */
static void reply_json(struct tt_httpd_response *resp, int status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    size_t len;
    char *body;

    json_decref(doc);
    resp->ctype = "application/json";
    if (text == NULL) {
        resp->status = 500;
        resp->body = "{\"error\": \"out of memory\"}\n";
        resp->body_len = strlen(resp->body);
        return;
    }
    len = strlen(text);
    body = realloc(text, len + 2);
    if (body == NULL) {
        free(text);
        resp->status = 500;
        resp->body = "{\"error\": \"out of memory\"}\n";
        resp->body_len = strlen(resp->body);
        return;
    }
    body[len++] = '\n';
    body[len] = '\0';
    resp->status = status;
    resp->body = body;
    resp->body_len = len;
    resp->free_body = true;
}

static void reply_error(struct tt_httpd_response *resp, int status, const char *msg)
{
    reply_json(resp, status, json_pack("{s:s}", "error", msg));
}

/* Answers a store change that failed with rc: -EINVAL is the caller's bad input (400 with
 * einval_msg); anything else could not be saved (a full disk...): 503 with "saving WHAT:
 * <the errno's text>", the change not made. */
static void reply_save_error(struct tt_httpd_response *resp, int rc, const char *what,
                             const char *einval_msg)
{
    char msg[300];

    if (rc == -EINVAL) {
        reply_error(resp, 400, einval_msg);
        return;
    }
    snprintf(msg, sizeof(msg), "saving %s: %s (nothing was changed)", what,
             rc < 0 && rc > -4096 ? strerror(-rc) : tt_strerror(rc));
    tt_log(TT_LOG_ERROR, "api_save_failed", TT_LS("error", msg));
    reply_error(resp, 503, msg);
}

/* The server's own refusals (413, 431, 400...) as JSON like every other error; the 413
 * says the limit. */
static void on_error_body(const char *msg, struct tt_httpd_response *resp)
{
    char text[160];

    if (resp->status == 413)
        snprintf(text, sizeof(text),
                 "request body too large: the operator API takes at most %d KiB",
                 CP_API_BODY_MAX / 1024);
    else
        snprintf(text, sizeof(text), "%s", msg);
    reply_error(resp, resp->status, text);
}

/* True when a Content-Type value names application/json (parameters such as charset
 * allowed, case ignored). Pure. */
static bool ctype_is_json(const char *v)
{
    size_t n;

    if (v == NULL)
        return false;
    v += strspn(v, " \t");
    n = strcspn(v, "; \t");
    return n == 16 && strncasecmp(v, "application/json", 16) == 0;
}

/* A request that carries a body (POST, PUT or any non-empty body) must say it is JSON:
 * answers 415 and returns false otherwise. */
static bool body_type_ok(const struct tt_httpd_request *rq, struct tt_httpd_response *resp)
{
    char msg[200];

    if (rq->method != HTTP_POST && rq->method != HTTP_PUT && rq->body_len == 0)
        return true;
    if (ctype_is_json(rq->content_type))
        return true;
    snprintf(msg, sizeof(msg), "Content-Type: expected application/json, got %.100s",
             rq->content_type ? rq->content_type : "none");
    reply_error(resp, 415, msg);
    return false;
}

/* Parses the body as a JSON object whose keys are all in `allowed` (NULL-terminated).
 * Returns the object or NULL after answering 400. */
static json_t *parse_body(const struct tt_httpd_request *rq, const char *const *allowed,
                          struct tt_httpd_response *resp)
{
    json_error_t jerr;
    json_t *doc;
    const char *key;
    json_t *v;
    char msg[300];

    doc = json_loadb(rq->body, rq->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        snprintf(msg, sizeof(msg), "body: line %d: %s", jerr.line, jerr.text);
        reply_error(resp, 400, msg);
        return NULL;
    }
    if (!json_is_object(doc)) {
        json_decref(doc);
        reply_error(resp, 400, "body: expected a JSON object");
        return NULL;
    }
    json_object_foreach(doc, key, v)
    {
        bool ok = false;

        for (size_t i = 0; allowed[i]; i++)
            ok = ok || strcmp(allowed[i], key) == 0;
        if (!ok) {
            snprintf(msg, sizeof(msg), "body: unknown key \"%.200s\"", key);
            json_decref(doc);
            reply_error(resp, 400, msg);
            return NULL;
        }
    }
    return doc;
}

/* Gets a required string member, or answers 400 and returns NULL. */
static const char *need_str(json_t *doc, const char *key, struct tt_httpd_response *resp)
{
    json_t *v = json_object_get(doc, key);
    char msg[200];

    if (!json_is_string(v)) {
        snprintf(msg, sizeof(msg), "%s: %s", key, v ? "expected a string" : "required");
        reply_error(resp, 400, msg);
        return NULL;
    }
    return json_string_value(v);
}

/* ---- routes ---- */

static void get_policy(struct cp_api *api, const struct tt_httpd_request *rq,
                       struct tt_httpd_response *resp)
{
    char *text = cp_store_policy_get(api->store);

    if (text == NULL) {
        reply_error(resp, 404, "no policy has been set");
        return;
    }
    resp->status = 200;
    resp->ctype = "application/json";
    resp->body = text;
    resp->body_len = strlen(text);
    resp->free_body = true;
}

static void put_policy(struct cp_api *api, const struct tt_httpd_request *rq,
                       struct tt_httpd_response *resp)
{
    char err[1024] = "";
    int rc = cp_store_policy_set(api->store, rq->body, rq->body_len, err, sizeof(err));

    if (rc == TT_E_POLICY) {
        tt_log(TT_LOG_INFO, "api_policy_refused", TT_LS("error", err));
        reply_error(resp, 400, err);
        return;
    }
    if (rc != 0) {
        tt_log(TT_LOG_ERROR, "api_policy_save_failed", TT_LS("error", err));
        reply_error(resp, 503, err);
        return;
    }
    tt_log(TT_LOG_INFO, "api_policy_set", TT_LU("version", cp_store_version(api->store)));
    reply_json(resp, 200, json_pack("{s:I}", "version", (json_int_t)cp_store_version(api->store)));
}

static void post_token(struct cp_api *api, const struct tt_httpd_request *rq,
                       struct tt_httpd_response *resp)
{
    static const char *const keys[] = {"spiffe_id", "ttl", "uses", NULL};
    json_t *doc = parse_body(rq, keys, resp);
    char secret[CP_TOKEN_SECRET_MAX];
    const char *id;
    json_t *v;
    uint64_t ttl_ms;
    json_int_t uses = 1;
    int64_t expires = 0;
    int rc;

    if (doc == NULL)
        return;
    id = need_str(doc, "spiffe_id", resp);
    if (id == NULL)
        goto out;
    if (tt_spiffe_check(id, strlen(id), false) != 0) {
        reply_error(resp, 400, "spiffe_id: not a valid SPIFFE ID (spiffe://<trust-domain>/<path>)");
        goto out;
    }
    if (tt_spiffe_reserved(id)) {
        tt_log(TT_LOG_WARN, "api_token_refused", TT_LS("spiffe_id", id),
               TT_LS("reason", "reserved_identity"));
        reply_error(resp, 400, CP_RESERVED_REFUSAL);
        goto out;
    }
    if (api->ca != NULL) {
        char td[256], msg[400];

        if (tt_spiffe_trust_domain(id, td, sizeof(td)) != 0 ||
            strcmp(td, cp_ca_trust_domain(api->ca)) != 0) {
            snprintf(msg, sizeof(msg), "spiffe_id: not in this control plane's trust domain (%s)",
                     cp_ca_trust_domain(api->ca));
            reply_error(resp, 400, msg);
            goto out;
        }
    }
    /* No ttl: CP_TOKEN_TTL_DEFAULT_MS (24h); "0" (or any zero duration): no expiry. */
    v = json_object_get(doc, "ttl");
    ttl_ms = CP_TOKEN_TTL_DEFAULT_MS;
    if (v != NULL &&
        (!json_is_string(v) || (strcmp(json_string_value(v), "0") != 0 &&
                                tt_duration_parse(json_string_value(v), &ttl_ms) != 0))) {
        reply_error(resp, 400,
                    "ttl: expected a duration such as \"10m\", \"1h\" or \"1h30m\", or \"0\" for "
                    "none");
        goto out;
    }
    if (v != NULL && strcmp(json_string_value(v), "0") == 0)
        ttl_ms = 0;
    v = json_object_get(doc, "uses");
    if (v != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 1000000) {
            reply_error(resp, 400, "uses: expected an integer 1..1000000");
            goto out;
        }
        uses = json_integer_value(v);
    }
    rc = cp_store_token_create(api->store, id, ttl_ms, (unsigned)uses, secret, sizeof(secret),
                               &expires);
    if (rc != 0) {
        reply_save_error(resp, rc, CP_STORE_JOURNAL, "ttl: too long");
        goto out;
    }
    /* Never log the secret. */
    tt_log(TT_LOG_INFO, "api_token_created", TT_LS("spiffe_id", id), TT_LI("uses", uses),
           TT_LI("expires_unix", expires));
    reply_json(resp, 201,
               json_pack("{s:s,s:s,s:o,s:I}", "token", secret, "spiffe_id", id, "expires_unix",
                         expires ? json_integer(expires) : json_null(), "uses", uses));
    memset(secret, 0, sizeof(secret));
out:
    json_decref(doc);
}

static void get_tokens(struct cp_api *api, const struct tt_httpd_request *rq,
                       struct tt_httpd_response *resp)
{
    reply_json(resp, 200, json_pack("{s:o}", "tokens", cp_store_tokens_json(api->store)));
}

/* DELETE /v1/tokens?id=PREFIX: the token whose listed id starts with PREFIX. */
static void delete_token(struct cp_api *api, const struct tt_httpd_request *rq,
                         struct tt_httpd_response *resp)
{
    char prefix[80], id[16], msg[200];
    int rc = tt_query_get(rq->query, "id", prefix, sizeof(prefix));

    if (rc != 0 || prefix[0] == '\0') {
        reply_error(resp, 400,
                    rc == -EEXIST   ? "query: id: given more than once (expected one token id)"
                    : rc == -EINVAL ? "query: id: malformed percent-escape"
                    : rc == -ENOSPC ? "query: id: longer than a token id (64 hex digits)"
                                    : "query: id=ID required (the hex id `tetherctl token list` "
                                      "shows, or at least its first 4 digits)");
        return;
    }
    rc = cp_store_token_delete(api->store, prefix, id, sizeof(id));
    if (rc == -EINVAL) {
        snprintf(msg, sizeof(msg), "id: %.64s: expected %d to 64 hex digits of a token id", prefix,
                 CP_TOKEN_ID_MIN);
        reply_error(resp, 400, msg);
        return;
    }
    if (rc == -ENOENT) {
        snprintf(msg, sizeof(msg), "no token with id %.64s (used-up and expired tokens are gone)",
                 prefix);
        reply_error(resp, 404, msg);
        return;
    }
    if (rc == -EEXIST) {
        snprintf(msg, sizeof(msg),
                 "id %.64s is ambiguous: several tokens start with it; give more digits", prefix);
        reply_error(resp, 409, msg);
        return;
    }
    if (rc != 0) {
        reply_save_error(resp, rc, CP_STORE_JOURNAL, "");
        return;
    }
    tt_log(TT_LOG_INFO, "api_token_deleted", TT_LS("id", id));
    reply_json(resp, 200, json_pack("{s:s}", "deleted", id));
}

static void get_identities(struct cp_api *api, const struct tt_httpd_request *rq,
                           struct tt_httpd_response *resp)
{
    reply_json(resp, 200, json_pack("{s:o}", "identities", cp_store_issued_json(api->store)));
}

static void post_revocation(struct cp_api *api, const struct tt_httpd_request *rq,
                            struct tt_httpd_response *resp)
{
    static const char *const keys[] = {"serial", NULL};
    json_t *doc = parse_body(rq, keys, resp);
    char norm[TT_SERIAL_MAX];
    const char *serial;
    int rc;

    if (doc == NULL)
        return;
    serial = need_str(doc, "serial", resp);
    if (serial == NULL)
        goto out;
    if (tt_serial_normalize(serial, norm, sizeof(norm)) != 0) {
        reply_error(resp, 400,
                    "serial: expected a hexadecimal serial number (e.g. 0A:1B:2C or "
                    "0a1b2c)");
        goto out;
    }
    rc = cp_store_revoke(api->store, norm);
    if (rc < 0) {
        reply_save_error(resp, rc, "the revocation", "serial: malformed");
        goto out;
    }
    tt_log(TT_LOG_INFO, "api_revoked", TT_LS("serial", norm), TT_LI("already", rc == 1));
    reply_json(resp, rc == 1 ? 200 : 201,
               json_pack("{s:s,s:b,s:I}", "serial", norm, "already_revoked", rc == 1, "version",
                         (json_int_t)cp_store_version(api->store)));
out:
    json_decref(doc);
}

static void get_revocations(struct cp_api *api, const struct tt_httpd_request *rq,
                            struct tt_httpd_response *resp)
{
    reply_json(resp, 200, json_pack("{s:o}", "revocations", cp_store_revocations_json(api->store)));
}

/* The status of a service table change that failed with rc. */
static int service_status(int rc)
{
    return rc == -EINVAL || rc == -ENOENT || rc == TT_E_SPIFFE ? 400 : 503;
}

/* Reads body["endpoints"] into eps[*n] (at most max). Returns true, or false after a 400
 * naming the bad element. */
static bool read_endpoints(json_t *arr, struct cp_endpoint_spec *eps, size_t max, size_t *n,
                           struct tt_httpd_response *resp)
{
    char msg[200];
    json_t *ep;
    size_t i;

    if (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > max) {
        snprintf(msg, sizeof(msg),
                 "endpoints: expected an array of 1 to %zu {\"address\", \"spiffe_id\"}", max);
        reply_error(resp, 400, msg);
        return false;
    }
    json_array_foreach(arr, i, ep)
    {
        const char *key, *bad = NULL;
        json_t *v;

        if (!json_is_object(ep)) {
            snprintf(msg, sizeof(msg),
                     "endpoints[%zu]: expected an object {\"address\", \"spiffe_id\"}", i);
            reply_error(resp, 400, msg);
            return false;
        }
        json_object_foreach(ep, key, v)
        {
            if (strcmp(key, "address") != 0 && strcmp(key, "spiffe_id") != 0) {
                snprintf(msg, sizeof(msg), "endpoints[%zu]: unknown key \"%.64s\"", i, key);
                reply_error(resp, 400, msg);
                return false;
            }
        }
        if (!json_is_string(json_object_get(ep, "address")))
            bad = "address";
        else if (!json_is_string(json_object_get(ep, "spiffe_id")))
            bad = "spiffe_id";
        if (bad != NULL) {
            snprintf(msg, sizeof(msg), "endpoints[%zu].%s: expected a string", i, bad);
            reply_error(resp, 400, msg);
            return false;
        }
        eps[i].address = json_string_value(json_object_get(ep, "address"));
        eps[i].spiffe_id = json_string_value(json_object_get(ep, "spiffe_id"));
    }
    *n = i;
    return true;
}

/* POST /v1/services: {"address", "spiffe_id"} is one endpoint at that address (a bare
 * endpoint); {"address", "endpoints": [{"address", "spiffe_id"}]} is a service whose
 * endpoints are those (replacing what it had). */
static void post_service(struct cp_api *api, const struct tt_httpd_request *rq,
                         struct tt_httpd_response *resp)
{
    static const char *const keys[] = {"address", "spiffe_id", "endpoints", NULL};
    json_t *doc = parse_body(rq, keys, resp);
    struct cp_endpoint_spec eps[CP_API_MAX_ENDPOINTS];
    json_t *arr;
    const char *addr, *id = NULL;
    char err[512] = "";
    size_t n = 0;
    int rc;

    if (doc == NULL)
        return;
    addr = need_str(doc, "address", resp);
    if (addr == NULL)
        goto out;
    arr = json_object_get(doc, "endpoints");
    if (arr != NULL && json_object_get(doc, "spiffe_id") != NULL) {
        reply_error(resp, 400,
                    "give either spiffe_id (one endpoint at address) or endpoints, not both");
        goto out;
    }
    if (arr == NULL && (id = need_str(doc, "spiffe_id", resp)) == NULL)
        goto out;
    if (arr != NULL && !read_endpoints(arr, eps, CP_API_MAX_ENDPOINTS, &n, resp))
        goto out;
    rc = arr != NULL
             ? cp_store_service_set(api->store, addr, eps, n, CP_SOURCE_OPERATOR, err, sizeof(err))
             : cp_store_service_add(api->store, addr, id, CP_SOURCE_OPERATOR, err, sizeof(err));
    if (rc != 0) {
        reply_error(resp, service_status(rc), err);
        goto out;
    }
    tt_log(TT_LOG_INFO, "api_service_added", TT_LS("address", addr),
           TT_LS("spiffe_id", id ? id : ""), TT_LU("endpoints", arr ? n : 1));
    if (arr == NULL)
        reply_json(resp, 201,
                   json_pack("{s:s,s:s,s:s}", "address", addr, "spiffe_id", id, "source",
                             CP_SOURCE_OPERATOR));
    else
        reply_json(resp, 201,
                   json_pack("{s:s,s:O,s:s}", "address", addr, "endpoints", arr, "source",
                             CP_SOURCE_OPERATOR));
out:
    json_decref(doc);
}

/* Reads the one query parameter `key` as an address into buf. Returns true, or false after
 * a 400 that names it. */
static bool query_addr(const struct tt_httpd_request *rq, const char *key, char *buf, size_t len,
                       struct tt_httpd_response *resp)
{
    int rc = tt_query_get(rq->query, key, buf, len);
    char msg[200];

    if (rc == -EINVAL)
        snprintf(msg, sizeof(msg),
                 "query: %s: malformed percent-escape (expected %%XX, two hex digits, and no "
                 "%%00)",
                 key);
    else if (rc == -EEXIST)
        snprintf(msg, sizeof(msg), "query: %s: given more than once (expected one address)", key);
    else if (rc == -ENOSPC)
        snprintf(msg, sizeof(msg), "query: %s: too long for an ADDR:PORT", key);
    else if (rc != 0 || buf[0] == '\0')
        snprintf(msg, sizeof(msg), "query: %s=ADDR:PORT required", key);
    else
        return true;
    reply_error(resp, 400, msg);
    return false;
}

static void delete_service(struct cp_api *api, const struct tt_httpd_request *rq,
                           struct tt_httpd_response *resp)
{
    char addr[TT_ADDR_TEXT_MAX];
    char msg[TT_ADDR_TEXT_MAX + 64];
    int rc;

    if (!query_addr(rq, "address", addr, sizeof(addr), resp))
        return;
    rc = cp_store_service_remove(api->store, addr, CP_SOURCE_OPERATOR);
    if (rc == -ENOENT) {
        snprintf(msg, sizeof(msg), "no operator service entry for %s", addr);
        reply_error(resp, 404, msg);
        return;
    }
    if (rc != 0) {
        reply_save_error(resp, rc, "services.json", "");
        return;
    }
    tt_log(TT_LOG_INFO, "api_service_removed", TT_LS("address", addr));
    reply_json(resp, 200, json_pack("{s:s}", "removed", addr));
}

/* POST /v1/services/endpoints: {"service", "address", "spiffe_id"} adds an endpoint to the
 * service (created when missing) or changes its identity. */
static void post_endpoint(struct cp_api *api, const struct tt_httpd_request *rq,
                          struct tt_httpd_response *resp)
{
    static const char *const keys[] = {"service", "address", "spiffe_id", NULL};
    json_t *doc = parse_body(rq, keys, resp);
    const char *svc, *addr = NULL, *id = NULL;
    char err[512] = "";
    int rc;

    if (doc == NULL)
        return;
    if ((svc = need_str(doc, "service", resp)) == NULL ||
        (addr = need_str(doc, "address", resp)) == NULL ||
        (id = need_str(doc, "spiffe_id", resp)) == NULL)
        goto out;
    rc = cp_store_service_endpoint_add(api->store, svc, addr, id, CP_SOURCE_OPERATOR, err,
                                       sizeof(err));
    if (rc != 0) {
        reply_error(resp, service_status(rc), err);
        goto out;
    }
    tt_log(TT_LOG_INFO, "api_endpoint_added", TT_LS("service", svc), TT_LS("address", addr),
           TT_LS("spiffe_id", id));
    reply_json(resp, 201,
               json_pack("{s:s,s:s,s:s}", "service", svc, "address", addr, "spiffe_id", id));
out:
    json_decref(doc);
}

/* DELETE /v1/services/endpoints?service=S&address=A: removes one endpoint (the service
 * goes with its last one). */
static void delete_endpoint(struct cp_api *api, const struct tt_httpd_request *rq,
                            struct tt_httpd_response *resp)
{
    char svc[TT_ADDR_TEXT_MAX], addr[TT_ADDR_TEXT_MAX];
    char msg[2 * TT_ADDR_TEXT_MAX + 64];
    int rc;

    if (!query_addr(rq, "service", svc, sizeof(svc), resp) ||
        !query_addr(rq, "address", addr, sizeof(addr), resp))
        return;
    rc = cp_store_service_endpoint_remove(api->store, svc, addr, CP_SOURCE_OPERATOR);
    if (rc == -ENOENT) {
        snprintf(msg, sizeof(msg), "no operator service %s with endpoint %s", svc, addr);
        reply_error(resp, 404, msg);
        return;
    }
    if (rc != 0) {
        reply_save_error(resp, rc, "services.json", "");
        return;
    }
    tt_log(TT_LOG_INFO, "api_endpoint_removed", TT_LS("service", svc), TT_LS("address", addr));
    reply_json(resp, 200, json_pack("{s:s,s:s}", "service", svc, "removed", addr));
}

static void get_services(struct cp_api *api, const struct tt_httpd_request *rq,
                         struct tt_httpd_response *resp)
{
    reply_json(resp, 200, json_pack("{s:o}", "services", cp_store_services_json(api->store)));
}

static void get_bundle(struct cp_api *api, const struct tt_httpd_request *rq,
                       struct tt_httpd_response *resp)
{
    if (api->ca == NULL) {
        reply_error(resp, 503, "no CA loaded");
        return;
    }
    resp->status = 200;
    resp->ctype = "text/plain; charset=utf-8";
    resp->body = cp_ca_bundle_pem(api->ca);
    resp->body_len = strlen(resp->body);
}

/* GET /v1/crl: the revocations as a CRL signed by the CA (cp_ca_crl), PEM as text, or DER
 * as application/pkix-crl (RFC 2585) with ?format=der. Open like the bundle: it is public. */
static void get_crl(struct cp_api *api, const struct tt_httpd_request *rq,
                    struct tt_httpd_response *resp)
{
    json_t *list = cp_store_revocations_json(api->store), *item;
    struct cp_ca_revoked *revoked = NULL;
    char format[8], err[256];
    uint8_t *der = NULL;
    char *pem = NULL;
    size_t n = 0, i, der_len = 0;
    int rc = tt_query_get(rq->query, "format", format, sizeof(format));
    bool want_der = rc == 0 && strcmp(format, "der") == 0;

    if (rc != -ENOENT && !want_der && !(rc == 0 && strcmp(format, "pem") == 0)) {
        reply_error(resp, 400, "query: format: expected pem (the default) or der");
        goto out;
    }
    if (api->ca == NULL) {
        reply_error(resp, 503, "no CA loaded");
        goto out;
    }
    if (list == NULL || (revoked = calloc(json_array_size(list) + 1, sizeof(*revoked))) == NULL) {
        reply_error(resp, 500, "out of memory");
        goto out;
    }
    json_array_foreach(list, i, item)
    {
        revoked[n].serial = json_string_value(json_object_get(item, "serial"));
        revoked[n].revoked_unix = json_integer_value(json_object_get(item, "revoked_unix"));
        if (revoked[n].serial != NULL)
            n++;
    }
    if (cp_ca_crl(api->ca, revoked, n, want_der ? NULL : &pem, want_der ? &der : NULL, &der_len,
                  err, sizeof(err)) != 0) {
        reply_error(resp, 500, err);
        goto out;
    }
    resp->status = 200;
    resp->ctype = want_der ? "application/pkix-crl" : "text/plain; charset=utf-8";
    resp->body = want_der ? (const char *)der : pem;
    resp->body_len = want_der ? der_len : strlen(pem);
    resp->free_body = true;
out:
    free(revoked);
    json_decref(list);
}

static void get_sidecars(struct cp_api *api, const struct tt_httpd_request *rq,
                         struct tt_httpd_response *resp)
{
    reply_json(resp, 200, json_pack("{s:o}", "sidecars", cp_store_sidecars_json(api->store)));
}

static void get_stats(struct cp_api *api, const struct tt_httpd_request *rq,
                      struct tt_httpd_response *resp)
{
    json_t *doc = cp_store_stats_json(api->store);

    if (doc && api->ca)
        json_object_set_new(doc, "trust_domain", json_string(cp_ca_trust_domain(api->ca)));
    if (doc && api->stats_extra) {
        json_t *extra = api->stats_extra(api->stats_ud);

        if (extra != NULL)
            json_object_update(doc, extra);
        json_decref(extra);
    }
    reply_json(resp, 200, doc);
}

typedef void (*route_fn)(struct cp_api *api, const struct tt_httpd_request *rq,
                         struct tt_httpd_response *resp);

/* POST /v1/admin-certs: signs the CSR of an operator who is on the control host (the
 * loopback API) for one of the admin identities, so that they can administer from
 * elsewhere over mTLS. The key never leaves the operator's side. Recorded as any issued
 * certificate, hence revocable. Refused over mTLS: a remote admin does not mint admins. */
static void post_admin_cert(struct cp_api *api, const struct tt_httpd_request *rq,
                            struct tt_httpd_response *resp)
{
    static const char *const keys[] = {"csr", "spiffe_id", "ttl", NULL};
    struct cp_ca_cert cert = {0};
    const char *csr_b64, *id;
    uint8_t *der = NULL;
    size_t der_len = 0;
    uint64_t ttl_ms = 0;
    char err[512];
    json_t *doc, *v;
    int rc;

    if (api->mtls) {
        reply_error(resp, 403, "admin certificates are issued only on the loopback API");
        return;
    }
    if (api->ca == NULL) {
        reply_error(resp, 503, "no CA");
        return;
    }
    doc = parse_body(rq, keys, resp);
    if (doc == NULL)
        return;
    csr_b64 = need_str(doc, "csr", resp);
    if (csr_b64 == NULL)
        goto out;
    v = json_object_get(doc, "spiffe_id");
    if (v != NULL && !json_is_string(v)) {
        reply_error(resp, 400, "spiffe_id: expected a string");
        goto out;
    }
    id = v != NULL ? json_string_value(v) : api->admin_ids[0];
    if (id == NULL || !cp_api_admin_allowed(api, id)) {
        snprintf(err, sizeof(err),
                 "spiffe_id: %.300s is not an admin identity (see tether-control --admin-id)",
                 id ? id : "(none)");
        reply_error(resp, 400, err);
        goto out;
    }
    v = json_object_get(doc, "ttl");
    if (v != NULL && (!json_is_string(v) || tt_duration_parse(json_string_value(v), &ttl_ms) != 0 ||
                      ttl_ms == 0)) {
        reply_error(resp, 400, "ttl: expected a duration such as \"10m\", \"1h\" or \"1h30m\"");
        goto out;
    }
    if (tt_crypto_base64_decode(csr_b64, strlen(csr_b64), &der, &der_len) < 0) {
        reply_error(resp, 400, "csr: expected base64 of a DER PKCS#10 request");
        goto out;
    }
    rc = cp_ca_sign_csr(api->ca, der, der_len, id, ttl_ms, &cert, err, sizeof(err));
    if (rc < 0) {
        reply_error(resp, rc == TT_E_CA_INTERNAL ? 500 : 400, err);
        goto out;
    }
    if (cp_store_issued_add(api->store, cert.serial, id, cert.not_after, tt_now_unix(),
                            CP_VIA_ADMIN_CERT) < 0) {
        reply_error(resp, 500, "saving the issued-certificate record failed");
        goto out;
    }
    tt_log(TT_LOG_INFO, "admin_certificate_issued", TT_LS("spiffe_id", id),
           TT_LS("serial", cert.serial), TT_LI("not_after", cert.not_after));
    reply_json(resp, 201,
               json_pack("{s:s,s:s,s:I,s:s,s:s}", "spiffe_id", id, "serial", cert.serial,
                         "not_after_unix", (json_int_t)cert.not_after, "cert_chain_pem",
                         cert.chain_pem, "bundle_pem", cp_ca_bundle_pem(api->ca)));
out:
    cp_ca_cert_done(&cert);
    free(der);
    json_decref(doc);
}

static const struct route {
    const char *path;
    int method;
    route_fn fn;
} routes[] = {
    {"/v1/policy", HTTP_GET, get_policy},
    {"/v1/policy", HTTP_PUT, put_policy},
    {"/v1/tokens", HTTP_POST, post_token},
    {"/v1/tokens", HTTP_GET, get_tokens},
    {"/v1/tokens", HTTP_DELETE, delete_token},
    {"/v1/identities", HTTP_GET, get_identities},
    {"/v1/revocations", HTTP_POST, post_revocation},
    {"/v1/revocations", HTTP_GET, get_revocations},
    {"/v1/services", HTTP_POST, post_service},
    {"/v1/services", HTTP_DELETE, delete_service},
    {"/v1/services", HTTP_GET, get_services},
    {"/v1/services/endpoints", HTTP_POST, post_endpoint},
    {"/v1/services/endpoints", HTTP_DELETE, delete_endpoint},
    {"/v1/bundle", HTTP_GET, get_bundle},
    {"/v1/crl", HTTP_GET, get_crl},
    {"/v1/sidecars", HTTP_GET, get_sidecars},
    {"/v1/admin-certs", HTTP_POST, post_admin_cert},
    {"/stats", HTTP_GET, get_stats},
};

/* True for the requests anyone may make: reading the trust bundle and the CRL, which are
 * public by nature (a peer needs them to verify the mesh). */
static bool request_is_public(const struct tt_httpd_request *rq, int method)
{
    return method == HTTP_GET &&
           (strcmp(rq->path, "/v1/bundle") == 0 || strcmp(rq->path, "/v1/crl") == 0);
}

/* Authenticates a request: over mTLS the caller's certificate must carry an admin identity,
 * on a plaintext (loopback) API the request must carry the operator credential; public
 * requests pass either way. Answers 401/403 and returns false when the caller may not. */
static bool request_authorized(struct cp_api *api, const struct tt_httpd_request *rq, int method,
                               struct tt_httpd_response *resp)
{
    char msg[TT_SPIFFE_MAX + 128];

    if (request_is_public(rq, method))
        return true;
    if (!api->mtls) {
        if (cp_operator_token_matches(api->operator_token, rq->authorization))
            return true;
        tt_log(TT_LOG_WARN, "api_unauthorized", TT_LS("path", rq->path),
               TT_LS("method", rq->method_name),
               TT_LS("reason", rq->authorization ? "wrong credential" : "no credential"));
        resp->extra_headers = "WWW-Authenticate: Bearer realm=\"tether-control\"\r\n";
        reply_error(resp, 401,
                    rq->authorization
                        ? "the operator credential is wrong: send \"Authorization: Bearer\" "
                          "with the token in the state directory's operator.token"
                        : "an operator credential is required: \"Authorization: Bearer\" with "
                          "the token in the state directory's operator.token (tetherctl reads "
                          "it with --state-dir DIR or TETHER_STATE_DIR)");
        return false;
    }
    if (cp_api_admin_allowed(api, rq->peer_identity))
        return true;
    tt_log(TT_LOG_WARN, "api_forbidden", TT_LS("peer", rq->peer_identity), TT_LS("path", rq->path));
    if (rq->peer_identity == NULL || rq->peer_identity[0] == '\0')
        snprintf(msg, sizeof(msg), "an admin identity is required (no client certificate)");
    else
        snprintf(msg, sizeof(msg),
                 "an admin identity is required: %.*s is not one (see tether-control "
                 "--admin-id)",
                 TT_SPIFFE_MAX, rq->peer_identity);
    reply_error(resp, 403, msg);
    return false;
}

static void on_request(void *ud, const struct tt_httpd_request *rq, struct tt_httpd_response *resp)
{
    struct cp_api *api = ud;
    int method = rq->head ? HTTP_GET : rq->method;
    bool path_known = false;
    char allow[128] = "";

    if (!request_authorized(api, rq, method, resp))
        return;
    for (size_t i = 0; i < TT_ARRAY_SIZE(routes); i++) {
        if (strcmp(routes[i].path, rq->path) != 0)
            continue;
        path_known = true;
        if (routes[i].method == method) {
            if (body_type_ok(rq, resp))
                routes[i].fn(api, rq, resp);
            return;
        }
    }
    if (!path_known) {
        reply_error(resp, 404, "not found");
        return;
    }
    /* Allow: every method the path takes. */
    {
        size_t pos = 0;

        for (size_t i = 0; i < TT_ARRAY_SIZE(routes); i++) {
            if (strcmp(routes[i].path, rq->path) != 0)
                continue;
            pos += (size_t)snprintf(allow + pos, sizeof(allow) - pos, "%s%s", pos ? ", " : "",
                                    http_method_str((enum http_method)routes[i].method));
        }
        snprintf(api->allow_hdr, sizeof(api->allow_hdr), "Allow: %s\r\n", allow);
        resp->extra_headers = api->allow_hdr;
    }
    reply_error(resp, 405, "method not allowed");
}

/* ---- lifecycle ---- */

/* Starts the API on loop: plaintext on opts->listen (default 127.0.0.1:15014, refused unless
 * loopback), or with opts->mtls no listener, connections coming through cp_api_adopt_fd(). Copies
 * the admin IDs (default the trust domain's tether-admin when ca is given); store and ca are
 * borrowed. Returns the API, or NULL with err set. Routes run on the loop's thread. */
struct cp_api *cp_api_new(uv_loop_t *loop, const struct cp_api_opts *opts, struct cp_store *store,
                          struct cp_ca *ca, char *err, size_t errlen)
{
    const char *listen = opts->listen ? opts->listen : "127.0.0.1:15014";
    struct tt_httpd_opts hopts = {.body_max = CP_API_BODY_MAX,
                                  .max_clients = 128,
                                  .idle_ms = 30000,
                                  .name = "api",
                                  .error_body = on_error_body};
    struct tt_addr addr;
    struct cp_api *api;
    int rc;

    if (!opts->mtls) {
        rc = tt_addr_parse(listen, 1, &addr);
        if (rc != 0) {
            snprintf(err, errlen, "--listen-api %s: %s", listen,
                     rc == -ENOENT ? "host does not resolve"
                                   : "expected IP:PORT, [IPv6]:PORT or host:PORT");
            return NULL;
        }
        if (!cp_api_addr_is_loopback(&addr)) {
            snprintf(err, errlen,
                     "--listen-api %s: non-loopback addresses need mTLS (not yet wired)", listen);
            return NULL;
        }
        if (opts->operator_token == NULL || strlen(opts->operator_token) >= CP_OPERATOR_TOKEN_MAX) {
            snprintf(err, errlen, "--listen-api %s: a plaintext API needs the operator credential",
                     listen);
            return NULL;
        }
    }
    api = calloc(1, sizeof(*api));
    if (api == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    api->store = store;
    api->ca = ca;
    api->mtls = opts->mtls;
    if (!opts->mtls)
        snprintf(api->operator_token, sizeof(api->operator_token), "%s", opts->operator_token);
    api->stats_extra = opts->stats_extra;
    api->stats_ud = opts->stats_ud;
    for (size_t i = 0; i < opts->n_admin_ids && i < CP_API_MAX_ADMINS; i++) {
        api->admin_ids[api->n_admin_ids] = strdup(opts->admin_ids[i]);
        if (api->admin_ids[api->n_admin_ids] == NULL)
            goto err_oom;
        api->n_admin_ids++;
    }
    if (api->n_admin_ids == 0 && ca != NULL) {
        char id[512];

        snprintf(id, sizeof(id), "spiffe://%s/ns/tether-system/sa/tether-admin",
                 cp_ca_trust_domain(ca));
        api->admin_ids[0] = strdup(id);
        if (api->admin_ids[0] == NULL)
            goto err_oom;
        api->n_admin_ids = 1;
    }
    hopts.host_check = !opts->mtls; /* refuse DNS rebinding onto the loopback listener */
    api->httpd = tt_httpd_new(loop, opts->mtls ? NULL : &addr, &hopts, on_request, api, &rc);
    if (api->httpd == NULL) {
        snprintf(err, errlen, "--listen-api %s: %s", listen, uv_strerror(rc));
        goto err_free;
    }
    return api;

err_oom:
    snprintf(err, errlen, "out of memory");
err_free:
    for (size_t i = 0; i < api->n_admin_ids; i++)
        free(api->admin_ids[i]);
    tt_crypto_wipe(api->operator_token, sizeof(api->operator_token));
    free(api);
    return NULL;
}

/* Hands fd (owned from here, closed on failure) to the HTTP server as one plaintext connection from
 * peer_spiffe_id (copied; NULL: none), which each request on an mTLS API must pass
 * cp_api_admin_allowed() with. Returns 0 or -errno (-EBUSY when full). Loop thread only. */
int cp_api_adopt_fd(struct cp_api *api, int fd, const char *peer_spiffe_id)
{
    return tt_httpd_adopt_fd(api->httpd, fd, peer_spiffe_id);
}

/* Returns the port the plaintext listener bound, 0 for an mTLS API (no listener). */
int cp_api_port(const struct cp_api *api)
{
    return tt_httpd_port(api->httpd);
}

/* Closes the HTTP server (its connections and memory go once the loop runs the close callbacks) and
 * frees the API and its admin IDs at once; no route runs after this. Accepts NULL. */
void cp_api_close(struct cp_api *api)
{
    if (api == NULL)
        return;
    /* No route runs after this: the server's clients are closing. */
    tt_httpd_close(api->httpd);
    for (size_t i = 0; i < api->n_admin_ids; i++)
        free(api->admin_ids[i]);
    tt_crypto_wipe(api->operator_token, sizeof(api->operator_token));
    free(api);
}
