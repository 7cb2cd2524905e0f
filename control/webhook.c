/* The injection webhook: AdmissionReview in, AdmissionReview out (webhook.h), over the
 * shared HTTP core. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "webhook.h"
#include "ca.h"
#include "admin/httpd.h"
#include "core/log.h"
#include "tls/crypto.h"

#define REVIEW_API "admission.k8s.io/v1"

struct cp_webhook {
    struct tt_httpd *httpd;
    struct cp_ca *ca;
    char *image, *control_address, *trust_domain, *jwt_audience;
};

/* {"error": msg} with HTTP 400. */
static int bad_request(json_t **out, char *reason, size_t reasonlen, const char *msg)
{
    snprintf(reason, reasonlen, "%s", msg);
    *out = json_pack("{s:s}", "error", msg);
    return 400;
}

/* The AdmissionReview response for uid: allowed with the patch (may be NULL: none), or
 * refused with msg. */
static json_t *review_response(const char *uid, bool allowed, const json_t *patch, const char *msg)
{
    json_t *resp = json_pack("{s:s, s:b}", "uid", uid, "allowed", allowed);
    json_t *review;

    if (!resp)
        return NULL;
    if (!allowed) {
        if (json_object_set_new(resp, "status",
                                json_pack("{s:i, s:s}", "code", 400, "message", msg)) != 0)
            goto oom;
    } else if (patch && json_array_size(patch) > 0) {
        char *text = json_dumps(patch, JSON_COMPACT), *b64;
        if (!text)
            goto oom;
        b64 = tt_crypto_base64_encode((const uint8_t *)text, strlen(text));
        free(text);
        if (!b64)
            goto oom;
        if (json_object_set_new(resp, "patchType", json_string("JSONPatch")) != 0 ||
            json_object_set_new(resp, "patch", json_string(b64)) != 0) {
            free(b64);
            goto oom;
        }
        free(b64);
    }
    review = json_pack("{s:s, s:s, s:o}", "apiVersion", REVIEW_API, "kind", "AdmissionReview",
                       "response", resp);
    return review;
oom:
    json_decref(resp);
    return NULL;
}

/* See webhook.h. */
int cp_webhook_review(const char *body, size_t len, const struct cp_inject_opts *opts, json_t **out,
                      char *reason, size_t reasonlen)
{
    json_error_t jerr;
    json_t *doc, *rq, *object, *patch = NULL, *kind, *resource;
    const char *uid, *api, *k, *op, *res;
    char msg[600], why[500];
    enum cp_inject_verdict v;
    int status = 200;

    *out = NULL;
    doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc) {
        snprintf(msg, sizeof(msg), "the body is not JSON: %s (line %d, column %d)", jerr.text,
                 jerr.line, jerr.column);
        return bad_request(out, reason, reasonlen, msg);
    }
    rq = json_object_get(doc, "request");
    uid = json_string_value(json_object_get(rq, "uid"));
    if (!json_is_object(doc) || !json_is_object(rq) || !uid || !uid[0]) {
        status = bad_request(out, reason, reasonlen,
                             "expected an AdmissionReview with request.uid (admission.k8s.io/v1)");
        goto done;
    }
    api = json_string_value(json_object_get(doc, "apiVersion"));
    k = json_string_value(json_object_get(doc, "kind"));
    if (!api || strcmp(api, REVIEW_API) != 0 || !k || strcmp(k, "AdmissionReview") != 0) {
        snprintf(msg, sizeof(msg),
                 "tether injection: expected apiVersion " REVIEW_API
                 " kind AdmissionReview, got %.60s %.60s",
                 api ? api : "(none)", k ? k : "(none)");
        goto refuse;
    }
    op = json_string_value(json_object_get(rq, "operation"));
    kind = json_object_get(rq, "kind");
    resource = json_object_get(rq, "resource");
    /* Only the creation of a pod is injected; the webhook's rules ask for nothing else,
     * so anything else is let through untouched. */
    res = json_string_value(json_object_get(resource, "resource"));
    if ((op && strcmp(op, "CREATE") != 0) || (resource && (!res || strcmp(res, "pods") != 0)) ||
        json_object_get(rq, "subResource")) {
        snprintf(reason, reasonlen, "not the creation of a pod: let through");
        *out = review_response(uid, true, NULL, NULL);
        goto done;
    }
    object = json_object_get(rq, "object");
    k = json_string_value(json_object_get(object, "kind"));
    if (!json_is_object(object) ||
        (json_is_object(kind) && json_string_value(json_object_get(kind, "kind")) &&
         strcmp(json_string_value(json_object_get(kind, "kind")), "Pod") != 0) ||
        (k && strcmp(k, "Pod") != 0)) {
        snprintf(msg, sizeof(msg), "tether injection: request.object is not a Pod (%.60s)",
                 k ? k : "no kind");
        goto refuse;
    }
    v = cp_inject_pod_patch(object, opts, &patch, why, sizeof(why));
    if (v == CP_INJECT_REFUSED) {
        snprintf(msg, sizeof(msg), "tether injection: %s", why);
        goto refuse;
    }
    snprintf(reason, reasonlen, "%s", v == CP_INJECT_INJECTED ? "injected" : why);
    *out = review_response(uid, true, patch, NULL);
    goto done;
refuse:
    snprintf(reason, reasonlen, "%s", msg);
    *out = review_response(uid, false, NULL, msg);
done:
    json_decref(patch);
    json_decref(doc);
    return status;
}

/* Answers doc (consumed) as compact JSON, or 500. */
static void reply(struct tt_httpd_response *resp, int status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;

    json_decref(doc);
    resp->ctype = "application/json";
    if (!text) {
        resp->status = 500;
        resp->body = "{\"error\":\"out of memory\"}";
        resp->body_len = strlen(resp->body);
        return;
    }
    resp->status = status;
    resp->body = text;
    resp->body_len = strlen(text);
    resp->free_body = true;
}

static void on_error_body(const char *msg, struct tt_httpd_response *resp)
{
    reply(resp, resp->status, json_pack("{s:s}", "error", msg));
}

/* The one route: POST /inject. */
static void on_request(void *ud, const struct tt_httpd_request *rq, struct tt_httpd_response *resp)
{
    struct cp_webhook *wh = ud;
    struct cp_inject_opts o = {wh->image, wh->control_address, wh->trust_domain, wh->jwt_audience,
                               cp_ca_bundle_pem(wh->ca)};
    char reason[600] = "";
    json_t *answer;
    int status;

    if (strcmp(rq->path, "/inject") != 0) {
        reply(resp, 404,
              json_pack("{s:s}", "error", "not found (the webhook serves POST /inject)"));
        return;
    }
    if (strcmp(rq->method_name, "POST") != 0) {
        resp->extra_headers = "Allow: POST\r\n";
        reply(resp, 405, json_pack("{s:s}", "error", "method not allowed (POST /inject)"));
        return;
    }
    status = cp_webhook_review(rq->body, rq->body_len, &o, &answer, reason, sizeof(reason));
    tt_log(status == 200 ? TT_LOG_INFO : TT_LOG_WARN, "webhook_review", TT_LI("status", status),
           TT_LS("result", reason));
    reply(resp, status, answer);
}

static void webhook_free(struct cp_webhook *wh)
{
    free(wh->image);
    free(wh->control_address);
    free(wh->trust_domain);
    free(wh->jwt_audience);
    free(wh);
}

/* The server is gone (httpd.h on_closed): no route runs any more. */
static void on_closed(void *ud)
{
    webhook_free(ud);
}

/* See webhook.h. */
struct cp_webhook *cp_webhook_new(uv_loop_t *loop, const struct cp_inject_opts *opts,
                                  struct cp_ca *ca, char *err, size_t errlen)
{
    struct tt_httpd_opts hopts = {.body_max = CP_WEBHOOK_BODY_MAX,
                                  .max_clients = 256,
                                  .idle_ms = 60000,
                                  .name = "webhook",
                                  .error_body = on_error_body,
                                  .on_closed = on_closed};
    struct cp_webhook *wh = calloc(1, sizeof(*wh));
    int rc;

    if (!wh)
        goto oom;
    wh->ca = ca;
    wh->image = strdup(opts->image ? opts->image : CP_INJECT_DEFAULT_IMAGE);
    wh->control_address =
        strdup(opts->control_address ? opts->control_address : CP_INJECT_DEFAULT_CONTROL);
    wh->trust_domain = strdup(opts->trust_domain ? opts->trust_domain : CP_INJECT_DEFAULT_TD);
    wh->jwt_audience = strdup(opts->jwt_audience ? opts->jwt_audience : CP_INJECT_DEFAULT_AUDIENCE);
    if (!wh->image || !wh->control_address || !wh->trust_domain || !wh->jwt_audience)
        goto oom;
    {
        struct cp_inject_opts check = {wh->image, wh->control_address, wh->trust_domain,
                                       wh->jwt_audience, cp_ca_bundle_pem(ca)};
        if (cp_inject_opts_check(&check, err, errlen) != 0)
            goto fail;
    }
    wh->httpd = tt_httpd_new(loop, NULL, &hopts, on_request, wh, &rc);
    if (!wh->httpd) {
        snprintf(err, errlen, "webhook: %s", uv_strerror(rc));
        goto fail;
    }
    return wh;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    if (wh)
        webhook_free(wh);
    return NULL;
}

/* See webhook.h. */
int cp_webhook_adopt_fd(struct cp_webhook *wh, int fd)
{
    return tt_httpd_adopt_fd(wh->httpd, fd, NULL);
}

/* See webhook.h. */
void cp_webhook_close(struct cp_webhook *wh)
{
    if (wh)
        tt_httpd_close(wh->httpd);
}
