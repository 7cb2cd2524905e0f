/* The admin HTTP/1.1 endpoint: the routes of the admin API over the shared HTTP core
 * (httpd.c: accept, parse, bounds, keep-alive, pipelining, idle sweep). Responses are
 * rendered by stats.c from a view the runtime lends us for the length of one request.
 *
 * Bounds, so that a hostile or broken local client cannot hurt the sidecar (enforced by
 * httpd with these values): request head 16 KiB and 100 header lines (431), body 64 KiB
 * (413), 64 clients at once (more are closed on accept), 10 s without progress closes a
 * client, and a client that pipelines faster than it reads its answers stops being read
 * until they drain. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>

#include "admin/admin.h"
#include "core/query.h"
#include "admin/httpd.h"
#include "core/log.h"
#include "policy/policy.h"
#include "policy/policy_json.h"

#define ADMIN_MAX_CLIENTS 64
#define ADMIN_HEAD_MAX    (16 * 1024)
#define ADMIN_MAX_HEADERS 100
#define ADMIN_BODY_MAX    (64 * 1024)
#define ADMIN_URL_MAX     2047 /* bytes of URL (a 2048-byte buffer with its NUL) */
#define ADMIN_IDLE_MS     10000

struct tt_admin {
    struct tt_httpd *httpd;
    struct tt_admin_ops ops;
    void *ud;
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

/* Answers with a JSON document (pretty-printed, newline-terminated) and drops it. */
static void respond_json(struct tt_admin *a, const struct request *rq, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    size_t len;
    char *body;

    json_decref(doc);
    if (text == NULL) {
        set_text(rq->resp, 500, "out of memory\n");
        return;
    }
    len = strlen(text);
    body = realloc(text, len + 2);
    if (body == NULL) {
        free(text);
        set_text(rq->resp, 500, "out of memory\n");
        return;
    }
    body[len++] = '\n';
    body[len] = '\0';
    rq->resp->status = 200;
    rq->resp->ctype = "application/json";
    rq->resp->body = body;
    rq->resp->body_len = len;
    rq->resp->free_body = true;
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

static void on_request(void *ud, const struct tt_httpd_request *hrq, struct tt_httpd_response *resp)
{
    struct tt_admin *a = ud;
    struct request rq = {.query = hrq->query, .resp = resp};

    for (size_t i = 0; i < TT_ARRAY_SIZE(routes); i++) {
        const struct route *r = &routes[i];
        bool ok;

        if (strcmp(hrq->path, r->path) != 0 ||
            (a->scope != TT_ADMIN_ROUTES_ALL && (r->scope & a->scope) == 0))
            continue;
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
                              const struct tt_admin_ops *ops, void *ud, int *errp)
{
    return tt_admin_new_scoped(loop, addr, ops, ud, TT_ADMIN_ROUTES_ALL, errp);
}

/* Binds addr and serves the routes of `scope` (admin.h). */
struct tt_admin *tt_admin_new_scoped(uv_loop_t *loop, const struct tt_addr *addr,
                                     const struct tt_admin_ops *ops, void *ud, unsigned scope,
                                     int *errp)
{
    struct tt_httpd_opts hopts = {
        .head_max = ADMIN_HEAD_MAX,
        .max_headers = ADMIN_MAX_HEADERS,
        .body_max = ADMIN_BODY_MAX,
        .url_max = ADMIN_URL_MAX,
        .max_clients = ADMIN_MAX_CLIENTS,
        .idle_ms = ADMIN_IDLE_MS,
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
