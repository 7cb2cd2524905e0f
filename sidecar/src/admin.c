/* The admin HTTP/1.1 endpoint: one libuv TCP listener on the main loop, one small state
 * machine per client, http-parser for the bytes. Responses are rendered by stats.c
 * from a view the runtime lends us for the length of one request.
 *
 * Bounds, so that a hostile or broken local client cannot hurt the sidecar: request
 * head 16 KiB and 100 header lines (431), body 64 KiB (413), 64 clients at once (more
 * are closed on accept), 10 s without progress closes a client, and a client that
 * pipelines faster than it reads its answers stops being read until they drain. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>

#include "admin.h"
#include "log.h"
#include "policy.h"

#define ADMIN_BACKLOG     128
#define ADMIN_MAX_CLIENTS 64
#define ADMIN_HEAD_MAX    (16 * 1024)
#define ADMIN_MAX_HEADERS 100
#define ADMIN_BODY_MAX    (64 * 1024)
#define ADMIN_URL_MAX     2048
#define ADMIN_IDLE_MS     10000
#define ADMIN_LINGER_MS   2000
#define ADMIN_SWEEP_MS    1000
#define ADMIN_WRITE_HIGH  (1024 * 1024) /* stop parsing above this many unsent bytes */
#define ADMIN_RBUF        16384

enum admin_client_state {
    ADMIN_C_S_READING, /* parsing requests and answering each in order */
    ADMIN_C_S_CLOSING, /* last answer queued (Connection: close, error); input ignored */
    ADMIN_C_S_LINGER,  /* write side shut down; input discarded until EOF or timeout, so
                        * that unread input does not turn our close into a reset that
                        * destroys the answer before the client reads it */
};

struct admin_client {
    uv_tcp_t tcp;
    uv_shutdown_t shutdown;
    http_parser parser;
    struct tt_admin *admin;
    struct admin_client *prev, *next;
    enum admin_client_state state;
    bool reading; /* uv_read_start in effect */
    bool paused;  /* parser paused until the write queue drains */
    bool eof;     /* the client shut its write side */
    unsigned pending_writes;
    uint64_t last_active; /* uv_now() of the last progress either way */
    int last_outq;        /* unsent bytes in the kernel at the last sweep */

    /* The request being parsed. */
    size_t head_bytes;
    unsigned n_headers;
    bool in_value;
    size_t body_bytes;
    int reject; /* status to answer instead of routing (413, 431), or 0 */
    size_t url_len;
    bool url_overflow;
    char url[ADMIN_URL_MAX];

    /* Input not yet parsed: rbuf[roff..rlen). Only one read is outstanding and a read
     * is processed before the next one, so one buffer per client is enough. */
    size_t roff, rlen;
    char rbuf[ADMIN_RBUF];
};

struct tt_admin {
    uv_loop_t *loop;
    uv_tcp_t server;
    uv_timer_t sweep;
    struct tt_admin_ops ops;
    void *ud;
    int port;
    bool closing;
    unsigned open_handles; /* server, timer and clients not yet closed */
    struct admin_client *clients;
    size_t n_clients;
};

/* One answer on its way to the socket; the bytes follow the struct. */
struct admin_write {
    uv_write_t req;
    struct admin_client *client;
    bool quit_after;
    size_t len;
    char data[];
};

static void process(struct admin_client *c);

/* ---- handle lifetimes ---- */

static void handle_closed(struct tt_admin *a)
{
    if (--a->open_handles == 0)
        free(a);
}

static void on_admin_handle_close(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_client_close(uv_handle_t *h)
{
    struct admin_client *c = tt_container_of(h, struct admin_client, tcp);
    struct tt_admin *a = c->admin;

    if (c->prev)
        c->prev->next = c->next;
    else
        a->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->n_clients--;
    free(c);
    handle_closed(a);
}

static void client_close(struct admin_client *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_client_close);
}

static void on_reject_close(uv_handle_t *h)
{
    free(h);
}

/* ---- writing ---- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct admin_client *c = tt_container_of(req, struct admin_client, shutdown);

    if (uv_is_closing((uv_handle_t *)&c->tcp))
        return;
    if (status < 0 || c->eof) {
        client_close(c);
        return;
    }
    c->state = ADMIN_C_S_LINGER;
    c->last_active = uv_now(c->admin->loop);
}

static void read_start(struct admin_client *c);

/* Every answer of a closing client is written: end the connection. */
static void finish_close(struct admin_client *c)
{
    if (c->eof || uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        client_close(c);
        return;
    }
    /* Keep reading (and discarding) while the FIN goes out. */
    read_start(c);
}

static void on_write(uv_write_t *req, int status)
{
    struct admin_write *w = tt_container_of(req, struct admin_write, req);
    struct admin_client *c = w->client;
    struct tt_admin *a = c->admin;
    bool quit = w->quit_after;

    free(w);
    c->pending_writes--;
    if (uv_is_closing((uv_handle_t *)&c->tcp)) {
        /* cancelled by a close; nothing to do but the quit below */
    } else if (status < 0) {
        client_close(c);
    } else {
        c->last_active = uv_now(a->loop);
        if (c->state == ADMIN_C_S_CLOSING && c->pending_writes == 0) {
            finish_close(c);
        } else if (c->paused && c->state == ADMIN_C_S_READING &&
                   uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < ADMIN_WRITE_HIGH / 2) {
            c->paused = false;
            http_parser_pause(&c->parser, 0);
            process(c);
            if (!c->paused && c->state == ADMIN_C_S_READING) {
                if (!c->eof)
                    read_start(c);
                else if (c->pending_writes == 0)
                    client_close(c);
                else
                    c->state = ADMIN_C_S_CLOSING; /* close once the answers are out */
            }
        }
    }
    /* Last, after the answer reached the socket: quit may close the whole admin. The
     * admin is freed only once this client's close callback ran, so `a` is valid. */
    if (quit && a->ops.quit)
        a->ops.quit(a->ud);
}

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

struct answer {
    int status;
    const char *ctype;
    const char *extra; /* extra header lines, each ending in CRLF, or NULL */
    const char *body;
    size_t body_len;
    bool head_only; /* HEAD: same headers, no body */
    bool close;     /* Connection: close, then end the connection */
    bool quit;      /* call ops->quit once written */
};

/* Queues one answer. On failure the client is closed (it cannot be answered). */
static void respond(struct admin_client *c, const struct answer *ans)
{
    char head[512];
    size_t body_len = ans->head_only ? 0 : ans->body_len;
    struct admin_write *w;
    uv_buf_t buf;
    int n;

    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\n%sConnection: %s\r\n\r\n",
                 ans->status, status_text(ans->status), ans->ctype, ans->body_len,
                 ans->extra ? ans->extra : "", ans->close ? "close" : "keep-alive");
    if (n < 0 || (size_t)n >= sizeof(head))
        goto err_close;
    w = malloc(sizeof(*w) + (size_t)n + body_len);
    if (w == NULL)
        goto err_close;
    w->client = c;
    w->quit_after = ans->quit;
    w->len = (size_t)n + body_len;
    memcpy(w->data, head, (size_t)n);
    if (body_len)
        memcpy(w->data + n, ans->body, body_len);
    buf = uv_buf_init(w->data, (unsigned)w->len);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write) != 0) {
        free(w);
        goto err_close;
    }
    c->pending_writes++;
    if (ans->close)
        c->state = ADMIN_C_S_CLOSING;
    return;

err_close:
    c->state = ADMIN_C_S_CLOSING;
    client_close(c);
    if (ans->quit && c->admin->ops.quit)
        c->admin->ops.quit(c->admin->ud);
}

static void respond_text(struct admin_client *c, int status, const char *text, bool close)
{
    struct answer ans = {.status = status,
                         .ctype = "text/plain; charset=utf-8",
                         .body = text,
                         .body_len = strlen(text),
                         .close = close};

    respond(c, &ans);
}

/* ---- routes ---- */

struct request {
    const char *query; /* after '?', or NULL */
    bool head;
    bool close;
};

/* Answers with a JSON document (pretty-printed, newline-terminated) and drops it. */
static void respond_json(struct admin_client *c, const struct request *rq, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
    size_t len;
    char *body;

    json_decref(doc);
    if (text == NULL) {
        respond_text(c, 500, "out of memory\n", rq->close);
        return;
    }
    len = strlen(text);
    body = realloc(text, len + 2);
    if (body == NULL) {
        free(text);
        respond_text(c, 500, "out of memory\n", rq->close);
        return;
    }
    body[len++] = '\n';
    body[len] = '\0';
    respond(c, &(struct answer){.status = 200,
                                .ctype = "application/json",
                                .body = body,
                                .body_len = len,
                                .head_only = rq->head,
                                .close = rq->close});
    free(body);
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

/* Finds the value of `format` in a query string; returns false when it is absent. */
static bool query_format(const char *q, char *out, size_t len)
{
    while (q && *q) {
        const char *end = strchr(q, '&');
        size_t n = end ? (size_t)(end - q) : strlen(q);

        if (n >= 7 && strncmp(q, "format=", 7) == 0) {
            n -= 7;
            if (n >= len)
                n = len - 1;
            memcpy(out, q + 7, n);
            out[n] = '\0';
            return true;
        }
        q = end ? end + 1 : NULL;
    }
    return false;
}

static void route_stats(struct admin_client *c, const struct request *rq)
{
    struct tt_admin *a = c->admin;
    struct tt_stats_view view;
    char format[32] = "json";
    char *text;

    query_format(rq->query, format, sizeof(format));
    if (strcmp(format, "json") != 0 && strcmp(format, "prometheus") != 0) {
        respond_text(c, 400, "unknown format (json, prometheus)\n", rq->close);
        return;
    }
    get_view(a, &view);
    if (strcmp(format, "json") == 0) {
        json_t *doc = tt_stats_json(&view);

        put_view(a, &view);
        respond_json(c, rq, doc);
        return;
    }
    text = tt_stats_prometheus(&view);
    put_view(a, &view);
    if (text == NULL) {
        respond_text(c, 500, "out of memory\n", rq->close);
        return;
    }
    respond(c, &(struct answer){.status = 200,
                                .ctype = "text/plain; version=0.0.4; charset=utf-8",
                                .body = text,
                                .body_len = strlen(text),
                                .head_only = rq->head,
                                .close = rq->close});
    free(text);
}

static void route_ready(struct admin_client *c, const struct request *rq)
{
    struct tt_stats_view view;
    bool ready;

    get_view(c->admin, &view);
    ready = view.ready;
    put_view(c->admin, &view);
    respond(c, &(struct answer){.status = ready ? 200 : 503,
                                .ctype = "text/plain; charset=utf-8",
                                .body = ready ? "ready\n" : "not ready\n",
                                .body_len = ready ? 6 : 10,
                                .head_only = rq->head,
                                .close = rq->close});
}

static void route_live(struct admin_client *c, const struct request *rq)
{
    respond(c, &(struct answer){.status = 200,
                                .ctype = "text/plain; charset=utf-8",
                                .body = "live\n",
                                .body_len = 5,
                                .head_only = rq->head,
                                .close = rq->close});
}

static void route_certs(struct admin_client *c, const struct request *rq)
{
    struct tt_stats_view view;
    json_t *doc;

    get_view(c->admin, &view);
    doc = tt_stats_certs_json(view.identity);
    put_view(c->admin, &view);
    respond_json(c, rq, doc);
}

static void route_policy(struct admin_client *c, const struct request *rq)
{
    struct tt_stats_view view;
    json_t *doc;

    get_view(c->admin, &view);
    doc = view.policy ? tt_policy_to_json(view.policy) : json_pack("{s:n}", "policy");
    put_view(c->admin, &view);
    respond_json(c, rq, doc);
}

static void route_quit(struct admin_client *c, const struct request *rq)
{
    respond(c, &(struct answer){.status = 200,
                                .ctype = "text/plain; charset=utf-8",
                                .body = "ok\n",
                                .body_len = 3,
                                .close = rq->close,
                                .quit = true});
}

static const struct route {
    const char *path;
    bool post; /* POST only; otherwise GET and HEAD */
    void (*fn)(struct admin_client *c, const struct request *rq);
} routes[] = {
    {"/stats", false, route_stats},   {"/ready", false, route_ready},
    {"/live", false, route_live},     {"/certs", false, route_certs},
    {"/policy", false, route_policy}, {"/quitquitquit", true, route_quit},
};

static void route(struct admin_client *c, bool close)
{
    enum http_method method = c->parser.method;
    struct request rq = {.close = close, .head = method == HTTP_HEAD};
    char *q;

    if (c->url_overflow) {
        respond_text(c, 414, "uri too long\n", close);
        return;
    }
    q = strchr(c->url, '?');
    if (q) {
        *q = '\0';
        rq.query = q + 1;
    }
    for (size_t i = 0; i < TT_ARRAY_SIZE(routes); i++) {
        const struct route *r = &routes[i];
        bool ok;

        if (strcmp(c->url, r->path) != 0)
            continue;
        ok = r->post ? method == HTTP_POST : (method == HTTP_GET || method == HTTP_HEAD);
        if (!ok) {
            respond(c,
                    &(struct answer){.status = 405,
                                     .ctype = "text/plain; charset=utf-8",
                                     .extra = r->post ? "Allow: POST\r\n" : "Allow: GET, HEAD\r\n",
                                     .body = "method not allowed\n",
                                     .body_len = 19,
                                     .head_only = rq.head,
                                     .close = close});
            return;
        }
        r->fn(c, &rq);
        return;
    }
    respond(c, &(struct answer){.status = 404,
                                .ctype = "text/plain; charset=utf-8",
                                .body = "not found\n",
                                .body_len = 10,
                                .head_only = rq.head,
                                .close = close});
}

/* ---- parsing ---- */

static int count_head(struct admin_client *c, size_t len)
{
    c->head_bytes += len;
    if (c->head_bytes > ADMIN_HEAD_MAX) {
        c->reject = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct admin_client *c = p->data;

    c->head_bytes = 0;
    c->n_headers = 0;
    c->in_value = false;
    c->body_bytes = 0;
    c->reject = 0;
    c->url_len = 0;
    c->url_overflow = false;
    c->url[0] = '\0';
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct admin_client *c = p->data;

    if (count_head(c, len) != 0)
        return -1;
    if (len >= sizeof(c->url) - c->url_len) {
        c->url_overflow = true;
        return 0;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    c->url[c->url_len] = '\0';
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct admin_client *c = p->data;

    /* A field after a value (or the first one) starts a new header line; count it
     * with its ": " and CRLF. Pieces of one field split across reads do not. */
    if (c->in_value || c->n_headers == 0) {
        c->in_value = false;
        if (++c->n_headers > ADMIN_MAX_HEADERS) {
            c->reject = 431;
            return -1;
        }
        if (count_head(c, 4) != 0)
            return -1;
    }
    return count_head(c, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct admin_client *c = p->data;

    c->in_value = true;
    return count_head(c, len);
}

static int on_headers_complete(http_parser *p)
{
    struct admin_client *c = p->data;

    if (p->content_length != ULLONG_MAX && p->content_length > ADMIN_BODY_MAX) {
        c->reject = 413;
        return -1;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct admin_client *c = p->data;

    c->body_bytes += len;
    if (c->body_bytes > ADMIN_BODY_MAX) {
        c->reject = 413;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct admin_client *c = p->data;
    /* HTTP/1.0 always closes; 1.1 unless "Connection: close". A CONNECT or Upgrade
     * request leaves non-HTTP bytes behind it, so it closes as well. */
    bool close =
        (p->http_major == 1 && p->http_minor == 0) || !http_should_keep_alive(p) || p->upgrade;

    route(c, close);
    if (c->state != ADMIN_C_S_READING) {
        http_parser_pause(p, 1); /* stop at this message; the rest is ignored */
    } else if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) > ADMIN_WRITE_HIGH) {
        c->paused = true;
        http_parser_pause(p, 1);
    }
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Parses what is buffered, answering each complete request, until the buffer is empty,
 * the client is closing, or the parser was paused for backpressure (reading then
 * stops; on_write resumes). */
static void process(struct admin_client *c)
{
    while (c->roff < c->rlen && c->state == ADMIN_C_S_READING && !c->paused) {
        size_t n =
            http_parser_execute(&c->parser, &parser_settings, c->rbuf + c->roff, c->rlen - c->roff);
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);

        c->roff += n;
        if (err == HPE_PAUSED) {
            if (c->paused) {
                uv_read_stop((uv_stream_t *)&c->tcp);
                c->reading = false;
            }
            return;
        }
        if (err == HPE_OK && n > 0 && !c->parser.upgrade)
            continue;
        if (err == HPE_OK && c->state != ADMIN_C_S_READING)
            return; /* an upgrade request was answered with close */
        {
            int status = c->reject ? c->reject : err == HPE_HEADER_OVERFLOW ? 431 : 400;

            tt_log(TT_LOG_DEBUG, "admin_bad_request", TT_LI("status", status),
                   TT_LS("error", http_errno_name(err)));
            respond_text(c, status,
                         status == 413   ? "request body too large\n"
                         : status == 431 ? "request header fields too large\n"
                                         : "bad request\n",
                         true);
            return;
        }
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct admin_client *c = tt_container_of(h, struct admin_client, tcp);

    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct admin_client *c = tt_container_of(s, struct admin_client, tcp);

    if (nread == 0)
        return;
    if (nread < 0) {
        /* EOF or error. Answers already queued are still delivered after EOF (a client
         * may send its requests and shut its write side at once). */
        uv_read_stop(s);
        c->reading = false;
        c->eof = true;
        if (nread == UV_EOF && c->paused && c->state == ADMIN_C_S_READING)
            return; /* on_write goes on with the buffered requests */
        if (nread != UV_EOF || c->pending_writes == 0 || c->state == ADMIN_C_S_LINGER)
            client_close(c);
        else
            c->state = ADMIN_C_S_CLOSING;
        return;
    }
    c->last_active = uv_now(c->admin->loop);
    if (c->state != ADMIN_C_S_READING)
        return; /* closing or lingering: discard */
    c->roff = 0;
    c->rlen = (size_t)nread;
    process(c);
}

static void read_start(struct admin_client *c)
{
    if (c->reading || c->eof)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        client_close(c);
        return;
    }
    c->reading = true;
}

/* ---- accepting ---- */

/* Accepts a connection only to close it (over the client limit, or shutting down):
 * libuv stops accepting while a pending connection is not taken. */
static void reject_connection(struct tt_admin *a)
{
    uv_tcp_t *t = malloc(sizeof(*t));

    if (t == NULL)
        return;
    if (uv_tcp_init(a->loop, t) != 0) {
        free(t);
        return;
    }
    uv_accept((uv_stream_t *)&a->server, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, on_reject_close);
}

static void on_connection(uv_stream_t *server, int status)
{
    struct tt_admin *a = tt_container_of(server, struct tt_admin, server);
    struct admin_client *c;

    if (status < 0)
        return;
    if (a->closing || a->n_clients >= ADMIN_MAX_CLIENTS) {
        reject_connection(a);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        reject_connection(a);
        return;
    }
    if (uv_tcp_init(a->loop, &c->tcp) != 0) {
        free(c);
        reject_connection(a);
        return;
    }
    c->admin = a;
    c->next = a->clients;
    if (a->clients)
        a->clients->prev = c;
    a->clients = c;
    a->n_clients++;
    a->open_handles++;
    c->last_active = uv_now(a->loop);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    read_start(c);
}

/* Closes clients that made no progress for too long (idle, or stalled reading their
 * answers). A client still draining an answer from the kernel's send buffer is making
 * progress even though libuv sees nothing: the buffer's fill level tells. */
static void on_sweep(uv_timer_t *t)
{
    struct tt_admin *a = tt_container_of(t, struct tt_admin, sweep);
    uint64_t now = uv_now(a->loop);

    for (struct admin_client *c = a->clients; c; c = c->next) {
        uint64_t limit = c->state == ADMIN_C_S_LINGER ? ADMIN_LINGER_MS : ADMIN_IDLE_MS;
        uv_os_fd_t fd;
        int outq = 0;

        if (uv_is_closing((uv_handle_t *)&c->tcp))
            continue;
        if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0 && ioctl(fd, SIOCOUTQ, &outq) == 0 &&
            outq != c->last_outq) {
            c->last_outq = outq;
            c->last_active = now;
        }
        if (now - c->last_active >= limit)
            client_close(c);
    }
}

/* Binds addr, listens and starts the idle sweep on loop. Returns the server or NULL
 * with *errp set (-errno). On a failure after the socket was made, the memory is
 * released by a close callback the next time the loop runs. */
struct tt_admin *tt_admin_start(uv_loop_t *loop, const struct tt_addr *addr,
                                const struct tt_admin_ops *ops, void *ud, int *errp)
{
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    struct tt_admin *a;
    int err;

    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        err = UV_ENOMEM;
        goto err_out;
    }
    a->loop = loop;
    if (ops)
        a->ops = *ops;
    a->ud = ud;
    err = uv_tcp_init(loop, &a->server);
    if (err != 0)
        goto err_free_admin;
    a->server.data = a;
    a->open_handles = 1;
    err = uv_tcp_bind(&a->server, (const struct sockaddr *)&addr->ss, 0);
    if (err != 0)
        goto err_close_server;
    err = uv_listen((uv_stream_t *)&a->server, ADMIN_BACKLOG, on_connection);
    if (err != 0)
        goto err_close_server;
    err = uv_tcp_getsockname(&a->server, (struct sockaddr *)&ss, &sslen);
    if (err != 0)
        goto err_close_server;
    a->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                             : ((struct sockaddr_in *)&ss)->sin_port);
    err = uv_timer_init(loop, &a->sweep);
    if (err != 0)
        goto err_close_server;
    a->sweep.data = a;
    a->open_handles++;
    uv_timer_start(&a->sweep, on_sweep, ADMIN_SWEEP_MS, ADMIN_SWEEP_MS);
    return a;

err_close_server:
    a->closing = true;
    uv_close((uv_handle_t *)&a->server, on_admin_handle_close);
    *errp = err;
    return NULL;
err_free_admin:
    free(a);
err_out:
    *errp = err;
    return NULL;
}

/* Stops listening and closes every client; the server is freed once libuv closed
 * all its handles. Accepts NULL; a second call does nothing. */
void tt_admin_close(struct tt_admin *admin)
{
    if (admin == NULL || admin->closing)
        return;
    admin->closing = true;
    for (struct admin_client *c = admin->clients; c; c = c->next)
        client_close(c);
    uv_close((uv_handle_t *)&admin->sweep, on_admin_handle_close);
    uv_close((uv_handle_t *)&admin->server, on_admin_handle_close);
}

/* The bound port, in host order. */
int tt_admin_port(const struct tt_admin *admin)
{
    return admin->port;
}
