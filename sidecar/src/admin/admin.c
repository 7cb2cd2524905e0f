/* The admin HTTP/1.1 endpoint: the routes of the admin API over the shared HTTP core
 * (httpd.c: accept, parse, bounds, keep-alive, pipelining, idle sweep). Responses are
 * rendered by stats.c from a view the runtime lends us for the length of one request.
 *
 * Bounds, so that a hostile or broken client cannot hurt the sidecar (enforced by httpd
 * with these values): request head 16 KiB and 100 header lines (431), body 64 KiB (413),
 * 64 clients at once and 16 from one address (at a bound the client that has waited
 * longest for a complete request is closed to make room; a connection is accepted once it
 * has sent something, and what it sent is read at once), a request head within 5 s and
 * a body within 10 s however slowly they trickle in, 10 s without progress closes a
 * client, and a client that pipelines faster than it reads its answers stops being read
 * until they drain.
 *
 * Who may do what: on a loopback address every route, to a request whose Host is
 * localhost or a loopback address (DNS rebinding); on any other local address (the pod's
 * IP, or through 0.0.0.0) only /ready, /live and /stats, whatever the Host (kubelet's
 * probes), unless TT_ADMIN_F_REMOTE_CONTROL. A request that changes state (any method but
 * GET and HEAD) is refused when it carries Origin or a form content type: that is what a
 * web page's cross-site form or fetch() sends, and no operator's tool does. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "admin/admin.h"
#include "core/query.h"
#include "admin/httpd.h"
#include "core/log.h"
#include "policy/policy.h"
#include "policy/policy_json.h"

#define ADMIN_MAX_CLIENTS 64
#define ADMIN_MAX_PER_SRC 16
#define ADMIN_HEAD_MS     5000
#define ADMIN_BODY_MS     10000
#define ADMIN_HEAD_MAX    (16 * 1024)
#define ADMIN_MAX_HEADERS 100
#define ADMIN_BODY_MAX    (64 * 1024)
#define ADMIN_URL_MAX     2047 /* bytes of URL (a 2048-byte buffer with its NUL) */
#define ADMIN_IDLE_MS     10000

struct tt_admin {
    struct tt_httpd *httpd;
    struct tt_admin_ops ops;
    void *ud;
    unsigned flags; /* TT_ADMIN_F_* */
    int port;
    unsigned scope; /* TT_ADMIN_ROUTES_* */
};

/* One request being answered. */
struct request {
    const char *query; /* after '?', or NULL */
    struct tt_httpd_response *resp;
};

static void set_text(struct tt_httpd_response *resp, int status, const char *text)
{
    resp->status = status;
    resp->ctype = "text/plain; charset=utf-8";
    resp->body = text;
    resp->body_len = strlen(text);
}

/* Answers status with a JSON document (pretty-printed, newline-terminated) and drops
 * it. */
static void respond_json_status(struct tt_httpd_response *resp, int status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    size_t len;
    char *body;

    json_decref(doc);
    if (text == NULL) {
        set_text(resp, 500, "out of memory\n");
        return;
    }
    len = strlen(text);
    body = realloc(text, len + 2);
    if (body == NULL) {
        free(text);
        set_text(resp, 500, "out of memory\n");
        return;
    }
    body[len++] = '\n';
    body[len] = '\0';
    resp->status = status;
    resp->ctype = "application/json";
    resp->body = body;
    resp->body_len = len;
    resp->free_body = true;
}

/* Answers 200 with a JSON document and drops it. */
static void respond_json(struct tt_admin *a, const struct request *rq, json_t *doc)
{
    respond_json_status(rq->resp, 200, doc);
}

/* Refuses a request with status and {"error": msg}, and logs it once. */
static void refuse(struct tt_httpd_response *resp, const struct tt_httpd_request *hrq, int status,
                   const char *msg)
{
    tt_log(TT_LOG_WARN, "admin_refused", TT_LS("method", hrq->method_name),
           TT_LS("path", hrq->path), TT_LI("status", status), TT_LS("reason", msg));
    respond_json_status(resp, status, json_pack("{s:s}", "error", msg));
}

static void get_view(struct tt_admin *a, struct tt_stats_view *view)
{
    memset(view, 0, sizeof(*view));
    if (a->ops.get_view)
        a->ops.get_view(a->ud, view);
}

static void put_view(struct tt_admin *a, struct tt_stats_view *view)
{
    if (a->ops.put_view)
        a->ops.put_view(a->ud, view);
}

static void route_stats(struct tt_admin *a, const struct request *rq)
{
    struct tt_stats_view view;
    char format[32] = "json";
    char *text;

    int qr = tt_query_get(rq->query, "format", format, sizeof(format));
    if (qr == -ENOENT)
        strcpy(format, "json");
    if (strcmp(format, "json") != 0 && strcmp(format, "prometheus") != 0) {
        set_text(rq->resp, 400, "unknown format (json, prometheus)\n");
        return;
    }
    get_view(a, &view);
    if (strcmp(format, "json") == 0) {
        json_t *doc = tt_stats_json(&view);

        put_view(a, &view);
        respond_json(a, rq, doc);
        return;
    }
    text = tt_stats_prometheus(&view);
    put_view(a, &view);
    if (text == NULL) {
        set_text(rq->resp, 500, "out of memory\n");
        return;
    }
    rq->resp->status = 200;
    rq->resp->ctype = "text/plain; version=0.0.4; charset=utf-8";
    rq->resp->body = text;
    rq->resp->body_len = strlen(text);
    rq->resp->free_body = true;
}

static void route_ready(struct tt_admin *a, const struct request *rq)
{
    struct tt_stats_view view;
    bool ready;

    get_view(a, &view);
    ready = view.ready;
    put_view(a, &view);
    set_text(rq->resp, ready ? 200 : 503, ready ? "ready\n" : "not ready\n");
}

static void route_live(struct tt_admin *a, const struct request *rq)
{
    set_text(rq->resp, 200, "live\n");
}

static void route_certs(struct tt_admin *a, const struct request *rq)
{
    struct tt_stats_view view;
    json_t *doc;

    get_view(a, &view);
    doc = tt_stats_certs_json(view.identity);
    put_view(a, &view);
    respond_json(a, rq, doc);
}

static void route_policy(struct tt_admin *a, const struct request *rq)
{
    struct tt_stats_view view;
    json_t *doc;

    get_view(a, &view);
    doc = view.policy ? tt_policy_to_json(view.policy) : json_pack("{s:n}", "policy");
    put_view(a, &view);
    respond_json(a, rq, doc);
}

/* Runs after the /quitquitquit answer was written (or could not be). */
static void on_quit_written(void *ud)
{
    struct tt_admin *a = ud;

    if (a->ops.quit)
        a->ops.quit(a->ud);
}

static void route_quit(struct tt_admin *a, const struct request *rq)
{
    set_text(rq->resp, 200, "ok\n");
    rq->resp->after_write = on_quit_written;
    rq->resp->after_write_ud = a;
}

static const struct route {
    const char *path;
    bool post; /* POST only; otherwise GET and HEAD */
    void (*fn)(struct tt_admin *a, const struct request *rq);
    unsigned scope; /* the scoped servers that answer it too (TT_ADMIN_ROUTES_*) */
} routes[] = {
    {"/stats", false, route_stats, TT_ADMIN_ROUTES_METRICS},
    {"/ready", false, route_ready, TT_ADMIN_ROUTES_HEALTH},
    {"/live", false, route_live, TT_ADMIN_ROUTES_HEALTH},
    {"/certs", false, route_certs, 0},
    {"/policy", false, route_policy, 0},
    {"/quitquitquit", true, route_quit, 0},
};

/* The routes served on a non-loopback address too (read-only, nothing secret), and there
 * whatever the Host (httpd's host_open_paths). */
static const char *const remote_paths[] = {"/stats", "/ready", "/live", NULL};

/* True when path is one of remote_paths. */
static bool remote_route(const char *path)
{
    for (const char *const *p = remote_paths; *p; p++) {
        if (strcmp(*p, path) == 0)
            return true;
    }
    return false;
}

/* True when a Content-Type names one of the types an HTML form can send without a CORS
 * preflight (WHATWG Fetch, "CORS-safelisted request-header"): media type before any
 * parameters, case-insensitive, spaces around it ignored. */
static bool form_content_type(const char *ctype)
{
    static const char *const forms[] = {"application/x-www-form-urlencoded", "multipart/form-data",
                                        "text/plain"};
    size_t n;

    ctype += strspn(ctype, " \t");
    n = strcspn(ctype, ";");
    while (n > 0 && (ctype[n - 1] == ' ' || ctype[n - 1] == '\t'))
        n--;
    for (size_t i = 0; i < TT_ARRAY_SIZE(forms); i++) {
        if (n == strlen(forms[i]) && strncasecmp(ctype, forms[i], n) == 0)
            return true;
    }
    return false;
}

/* Why a request that would change state looks like one a web page made the browser send
 * (cross-site request forgery), or NULL. Browsers put Origin on every request other
 * than GET and HEAD (WHATWG Fetch), and a cross-site form or no-cors fetch() can only use
 * the form content types; curl, wget, a preStop hook or kubectl exec send neither. */
static const char *csrf_reason(const struct tt_httpd_request *hrq)
{
    if (hrq->origin != NULL)
        return "refused: a request that changes state may not carry an Origin header (web "
               "browsers send one; use a client such as curl)";
    if (hrq->content_type != NULL && form_content_type(hrq->content_type))
        return "refused: a request that changes state may not have a form content type "
               "(application/x-www-form-urlencoded, multipart/form-data, text/plain), which "
               "a web page can send; send no body (curl -X POST URL)";
    return NULL;
}

static void on_request(void *ud, const struct tt_httpd_request *hrq, struct tt_httpd_response *resp)
{
    struct tt_admin *a = ud;
    struct request rq = {.query = hrq->query, .resp = resp};

    for (size_t i = 0; i < TT_ARRAY_SIZE(routes); i++) {
        const struct route *r = &routes[i];
        const char *why;
        bool ok;

        if (strcmp(hrq->path, r->path) != 0 ||
            (a->scope != TT_ADMIN_ROUTES_ALL && (r->scope & a->scope) == 0))
            continue;
        if (!hrq->via_loopback && !(a->flags & TT_ADMIN_F_REMOTE_CONTROL) &&
            !remote_route(r->path)) {
            refuse(resp, hrq, 403,
                   "this route is served only on a loopback address: the admin endpoint "
                   "serves /ready, /live and /stats on other addresses unless the sidecar "
                   "runs with --admin-allow-remote-control");
            return;
        }
        if (hrq->method != HTTP_GET && hrq->method != HTTP_HEAD &&
            (why = csrf_reason(hrq)) != NULL) {
            refuse(resp, hrq, 403, why);
            return;
        }
        ok = r->post ? hrq->method == HTTP_POST
                     : (hrq->method == HTTP_GET || hrq->method == HTTP_HEAD);
        if (!ok) {
            set_text(resp, 405, "method not allowed\n");
            resp->extra_headers = r->post ? "Allow: POST\r\n" : "Allow: GET, HEAD\r\n";
            return;
        }
        r->fn(a, &rq);
        return;
    }
    set_text(resp, 404, "not found\n");
}

/* The HTTP core is gone (every handle closed): the admin may go too. */
static void on_httpd_closed(void *ud)
{
    free(ud);
}

/* Binds addr and starts serving on loop. Returns the server or NULL with *errp set
 * (-errno). */
struct tt_admin *tt_admin_new(uv_loop_t *loop, const struct tt_addr *addr,
                              const struct tt_admin_ops *ops, void *ud, unsigned flags, int *errp)
{
    return tt_admin_new_scoped(loop, addr, ops, ud, flags, TT_ADMIN_ROUTES_ALL, errp);
}

/* Binds addr and serves the routes of `scope` (admin.h). */
struct tt_admin *tt_admin_new_scoped(uv_loop_t *loop, const struct tt_addr *addr,
                                     const struct tt_admin_ops *ops, void *ud, unsigned flags,
                                     unsigned scope, int *errp)
{
    struct tt_httpd_opts hopts = {
        .head_max = ADMIN_HEAD_MAX,
        .max_headers = ADMIN_MAX_HEADERS,
        .body_max = ADMIN_BODY_MAX,
        .url_max = ADMIN_URL_MAX,
        .max_clients = ADMIN_MAX_CLIENTS,
        .max_per_source = ADMIN_MAX_PER_SRC,
        .idle_ms = ADMIN_IDLE_MS,
        .head_timeout_ms = ADMIN_HEAD_MS,
        .body_timeout_ms = ADMIN_BODY_MS,
        .defer_accept = true,
        .host_check = true,
        .host_open_paths = remote_paths,
        .name = scope == TT_ADMIN_ROUTES_HEALTH    ? "health"
                : scope == TT_ADMIN_ROUTES_METRICS ? "metrics"
                                                   : "admin",
        .on_closed = on_httpd_closed,
    };
    struct tt_admin *a = calloc(1, sizeof(*a));

    if (a == NULL) {
        *errp = UV_ENOMEM;
        return NULL;
    }
    if (ops)
        a->ops = *ops;
    a->ud = ud;
    a->scope = scope;
    a->flags = flags;
    a->httpd = tt_httpd_new(loop, addr, &hopts, on_request, a, errp);
    if (a->httpd == NULL) {
        free(a); /* on failure httpd never calls on_closed */
        return NULL;
    }
    a->port = tt_httpd_port(a->httpd);
    return a;
}

/* Stops listening and closes every client; the server is freed once libuv closed
 * all its handles. Accepts NULL; a second call does nothing. */
void tt_admin_close(struct tt_admin *admin)
{
    if (admin == NULL || admin->httpd == NULL)
        return;
    tt_httpd_close(admin->httpd);
    admin->httpd = NULL; /* freed, with the admin, in on_httpd_closed */
}

/* The bound port, in host order. */
int tt_admin_port(const struct tt_admin *admin)
{
    return admin->port;
}

/* True unless addr is a loopback address; see admin.h. */
bool tt_admin_addr_is_remote(const struct tt_addr *addr)
{
    return !tt_httpd_addr_is_loopback((const struct sockaddr *)&addr->ss);
}
