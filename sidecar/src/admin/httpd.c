/* The HTTP/1.1 server core (see httpd.h): one listening socket (net/acceptor.h: when the
 * process has no descriptor left, a waiting client is still served on the acceptor's
 * reserved one), one small state machine per client, http-parser for the bytes, answers
 * queued in request order.
 *
 * Bounds, so that a hostile or broken client cannot hurt the process: request head and
 * header lines (431), body (413), URL (414), clients at once in total and per source
 * address (at a bound, the client that has waited longest for a complete request makes
 * room), deadlines for a request's head and body however slowly it trickles in (the
 * slowloris attack), a time without progress that closes a client, and a client that
 * pipelines faster than it reads its answers stops being read until they drain. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <http_parser.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "admin/httpd.h"
#include "core/log.h"
#include "http/h1.h"
#include "net/acceptor.h"

/* Room for connections the kernel holds before accept(2): a connection deferred by
 * TCP_DEFER_ACCEPT (no byte yet) waits in the same bounded queue, and once it is full each
 * new SYN meets a cookie or a drop, which costs a kubelet probe its 1 s timeout (the
 * client's first SYN retransmit). The kernel caps it at net.core.somaxconn. */
#define HTTPD_BACKLOG    1024
#define HTTPD_LINGER_MS  2000
#define HTTPD_SWEEP_MS   1000
#define HTTPD_WRITE_HIGH (1024 * 1024) /* stop parsing above this many unsent bytes */
#define HTTPD_RBUF       16384
#define HTTPD_FIELD_MAX  16   /* longer field names are none of the captured ones */
#define HTTPD_VALUE_MAX  1024 /* a captured header's value; longer -> 431 */

/* The headers handed to routes (tt_httpd_request), by index into httpd_client.hdrs. */
enum httpd_captured { HDR_HOST, HDR_AUTHORIZATION, HDR_ORIGIN, HDR_CONTENT_TYPE, HTTPD_N_CAPTURED };
static const char *const captured_names[HTTPD_N_CAPTURED] = {
    [HDR_HOST] = "host",
    [HDR_AUTHORIZATION] = "authorization",
    [HDR_ORIGIN] = "origin",
    [HDR_CONTENT_TYPE] = "content-type",
};

enum httpd_client_state {
    HTTPD_C_S_READING, /* parsing requests and answering each in order */
    HTTPD_C_S_CLOSING, /* last answer queued (Connection: close, error); input ignored */
    HTTPD_C_S_LINGER,  /* write side shut down; input discarded until EOF or timeout, so
                        * that unread input does not turn our close into a reset that
                        * destroys the answer before the client reads it */
};

struct httpd_client {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_shutdown_t shutdown;
    http_parser parser;
    struct tt_httpd *httpd;
    struct httpd_client *prev, *next;
    enum httpd_client_state state;
    char *peer_identity;
    bool reading;    /* uv_read_start in effect */
    bool paused;     /* parser paused until the write queue drains */
    bool eof;        /* the client shut its write side */
    bool seen_input; /* it has sent at least one byte */
    unsigned pending_writes;
    uint64_t last_active; /* uv_now() of the last progress either way */
    int last_outq;        /* unsent bytes in the kernel at the last sweep */
    /* Where the connection comes from and where it went: for the per-source bound (a
     * zero family: none, as for a unix socket) and the Host check. */
    sa_family_t src_family;
    unsigned char src_addr[16];
    bool via_loopback;
    /* Deadlines: since when a request head (0: none awaited under a deadline) or a body
     * (0: none) is awaited. */
    uint64_t head_since;
    uint64_t body_since;
    /* Order in which clients began to wait for their current request (at connect, and
     * after each complete one): at a bound the smallest makes room. */
    uint64_t wait_seq;

    /* The request being parsed. */
    size_t head_bytes;
    unsigned n_headers;
    bool in_value;
    int reject; /* status to answer instead of routing (400, 413, 431), or 0 */
    /* The field name being read (lower-cased, truncated: only short names matter) and
     * which captured header its value goes to (-1: none). */
    char field[HTTPD_FIELD_MAX + 1];
    size_t field_len;
    int capture;
    struct httpd_header {
        bool seen;
        size_t len;
        char value[HTTPD_VALUE_MAX + 1];
    } hdrs[HTTPD_N_CAPTURED];
    size_t url_len;
    bool url_overflow;
    char *url;  /* url_max + 1 bytes */
    char *body; /* grows up to body_max + 1 */
    size_t body_len, body_cap;

    /* Input not yet parsed: rbuf[roff..rlen). Only one read is outstanding and a read
     * is processed before the next one, so one buffer per client is enough. */
    size_t roff, rlen;
    char rbuf[HTTPD_RBUF];
};

struct tt_httpd {
    uv_loop_t *loop;
    struct tt_acceptor acceptor; /* with an address only (listening) */
    uv_timer_t sweep;
    struct tt_httpd_opts opts;
    tt_httpd_route_cb route;
    void *ud;
    int port;
    bool listening;
    bool closing;
    unsigned open_handles; /* acceptor, timer and clients not yet closed */
    struct httpd_client *clients;
    size_t n_clients;
    uint64_t wait_seq; /* the last httpd_client.wait_seq given out */
};

/* One answer on its way to the socket; the bytes follow the struct. */
struct httpd_write {
    uv_write_t req;
    struct httpd_client *client;
    void (*after_write)(void *ud);
    void *after_write_ud;
    size_t len;
    char data[];
};

static void process(struct httpd_client *c);

/* ---- handle lifetimes ---- */

static void handle_closed(struct tt_httpd *h)
{
    void (*closed)(void *);
    void *ud;

    if (--h->open_handles != 0)
        return;
    closed = h->opts.on_closed;
    ud = h->ud;
    free(h);
    if (closed)
        closed(ud);
}

static void on_httpd_handle_close(uv_handle_t *handle)
{
    handle_closed(handle->data);
}

static void on_client_close(uv_handle_t *handle)
{
    struct httpd_client *c = tt_container_of(handle, struct httpd_client, h.handle);
    struct tt_httpd *h = c->httpd;

    if (c->prev)
        c->prev->next = c->next;
    else
        h->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->n_clients--;
    free(c->peer_identity);
    free(c->url);
    free(c->body);
    free(c);
    handle_closed(h);
}

static void client_close(struct httpd_client *c)
{
    struct tt_httpd *h = c->httpd;

    if (uv_is_closing(&c->h.handle))
        return;
    uv_close(&c->h.handle, on_client_close);
    /* The socket is closed now: if a shortage lent the acceptor's reserve to this client,
     * take the number back before another thread does. */
    if (h->listening)
        tt_acceptor_replenish(&h->acceptor);
}

/* ---- writing ---- */

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct httpd_client *c = tt_container_of(req, struct httpd_client, shutdown);

    if (uv_is_closing(&c->h.handle))
        return;
    if (status < 0 || c->eof) {
        client_close(c);
        return;
    }
    c->state = HTTPD_C_S_LINGER;
    c->last_active = uv_now(c->httpd->loop);
}

static void read_start(struct httpd_client *c);

/* Every answer of a closing client is written: end the connection. */
static void finish_close(struct httpd_client *c)
{
    if (c->eof || uv_shutdown(&c->shutdown, &c->h.stream, on_shutdown) != 0) {
        client_close(c);
        return;
    }
    /* Keep reading (and discarding) while the FIN goes out. */
    read_start(c);
}

static void on_write(uv_write_t *req, int status)
{
    struct httpd_write *w = tt_container_of(req, struct httpd_write, req);
    struct httpd_client *c = w->client;
    struct tt_httpd *h = c->httpd;
    void (*after)(void *) = w->after_write;
    void *after_ud = w->after_write_ud;

    free(w);
    c->pending_writes--;
    if (uv_is_closing(&c->h.handle)) {
        /* cancelled by a close; nothing to do but the callback below */
    } else if (status < 0) {
        client_close(c);
    } else {
        c->last_active = uv_now(h->loop);
        if (c->state == HTTPD_C_S_CLOSING && c->pending_writes == 0) {
            finish_close(c);
        } else if (c->paused && c->state == HTTPD_C_S_READING &&
                   uv_stream_get_write_queue_size(&c->h.stream) < HTTPD_WRITE_HIGH / 2) {
            c->paused = false;
            http_parser_pause(&c->parser, 0);
            process(c);
            if (!c->paused && c->state == HTTPD_C_S_READING) {
                if (!c->eof)
                    read_start(c);
                else if (c->pending_writes == 0)
                    client_close(c);
                else
                    c->state = HTTPD_C_S_CLOSING; /* close once the answers are out */
            }
        }
    }
    /* Last, after the answer reached the socket: the callback may close the whole
     * server. It is freed only once this client's close callback ran, so `h` is valid. */
    if (after)
        after(after_ud);
}

/* The reason phrase of a status code: the HTTP layer's table (http/h1.h), shared with the
 * sidecar's own error answers. */
const char *tt_httpd_status_text(int status)
{
    return tt_h1_status_text(status);
}

/* Queues one answer. On failure the client is closed (it cannot be answered). */
static void respond(struct httpd_client *c, const struct tt_httpd_response *ans, bool head_only)
{
    char head[1024];
    size_t body_len = head_only ? 0 : ans->body_len;
    struct httpd_write *w;
    uv_buf_t buf;
    int n;

    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                 "Cache-Control: no-store\r\n%sConnection: %s\r\n\r\n",
                 ans->status, tt_httpd_status_text(ans->status),
                 ans->ctype ? ans->ctype : "text/plain; charset=utf-8", ans->body_len,
                 ans->extra_headers ? ans->extra_headers : "", ans->close ? "close" : "keep-alive");
    if (n < 0 || (size_t)n >= sizeof(head))
        goto err_close;
    w = malloc(sizeof(*w) + (size_t)n + body_len);
    if (w == NULL)
        goto err_close;
    w->client = c;
    w->after_write = ans->after_write;
    w->after_write_ud = ans->after_write_ud;
    w->len = (size_t)n + body_len;
    memcpy(w->data, head, (size_t)n);
    if (body_len)
        memcpy(w->data + n, ans->body, body_len);
    buf = uv_buf_init(w->data, (unsigned)w->len);
    if (uv_write(&w->req, &c->h.stream, &buf, 1, on_write) != 0) {
        free(w);
        goto err_close;
    }
    c->pending_writes++;
    if (ans->close)
        c->state = HTTPD_C_S_CLOSING;
    return;

err_close:
    c->state = HTTPD_C_S_CLOSING;
    client_close(c);
    if (ans->after_write)
        ans->after_write(ans->after_write_ud);
}

static void respond_text(struct httpd_client *c, int status, const char *text, bool close)
{
    struct tt_httpd_response ans = {
        .status = status, .body = text, .body_len = strlen(text), .close = close};

    if (c->httpd->opts.error_body != NULL) {
        char msg[128];

        snprintf(msg, sizeof(msg), "%.*s", (int)strcspn(text, "\n"), text);
        c->httpd->opts.error_body(msg, &ans);
    }
    respond(c, &ans, false);
    if (ans.free_body)
        free((void *)ans.body);
}

/* ---- the Host check (DNS rebinding) ---- */

/* What a Host header value names. */
enum host_kind {
    HOST_BAD,      /* not host[:port] (empty, a bad port, an unclosed bracket...) */
    HOST_NAME,     /* a DNS name other than localhost */
    HOST_LOOPBACK, /* localhost, 127.0.0.0/8, [::1] or [::ffff:127.x.y.z] */
    HOST_IP,       /* any other IP literal */
};

/* True for loopback addresses; see httpd.h. */
bool tt_httpd_addr_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;

        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

/* Classifies a Host header value, uri-host [ ":" port ] (RFC 9110 §7.2) with an IPv6
 * literal in brackets. IPv4 literals are dotted quads only (browsers send them so); any
 * other spelling is a name. Pure. */
static enum host_kind host_classify(const char *host)
{
    const char *start = host, *end, *port;
    bool v6 = host[0] == '[';
    char name[64];
    size_t n;
    union {
        struct sockaddr sa;
        struct sockaddr_in in;
        struct sockaddr_in6 in6;
    } u = {0};

    if (v6) {
        start = host + 1;
        end = strchr(start, ']');
        if (end == NULL)
            return HOST_BAD;
        port = end + 1;
    } else {
        end = strchr(host, ':');
        if (end == NULL)
            end = host + strlen(host);
        port = end;
    }
    if (*port == ':') {
        n = strspn(port + 1, "0123456789");
        if (n == 0 || n > 5 || port[1 + n] != '\0')
            return HOST_BAD;
    } else if (*port != '\0') {
        return HOST_BAD;
    }
    n = (size_t)(end - start);
    if (n == 0)
        return HOST_BAD;
    if (n >= sizeof(name))
        return v6 ? HOST_BAD : HOST_NAME; /* longer than any IP literal */
    memcpy(name, start, n);
    name[n] = '\0';
    if (v6) {
        if (inet_pton(AF_INET6, name, &u.in6.sin6_addr) != 1)
            return HOST_BAD;
        u.sa.sa_family = AF_INET6;
    } else if (strcasecmp(name, "localhost") == 0 || strcasecmp(name, "localhost.") == 0) {
        return HOST_LOOPBACK;
    } else if (inet_pton(AF_INET, name, &u.in.sin_addr) == 1) {
        u.sa.sa_family = AF_INET;
    } else {
        return HOST_NAME;
    }
    return tt_httpd_addr_is_loopback(&u.sa) ? HOST_LOOPBACK : HOST_IP;
}

/* True when path is one of the server's host_open_paths. */
static bool host_path_open(const struct tt_httpd *h, const char *path)
{
    for (const char *const *p = h->opts.host_open_paths; p && *p; p++) {
        if (strcmp(*p, path) == 0)
            return true;
    }
    return false;
}

/* The Host rule of httpd.h (opts.host_check) for one request. */
static bool host_allowed(const struct tt_httpd *h, const struct tt_httpd_request *rq)
{
    enum host_kind k;

    if (rq->host == NULL)
        return true; /* HTTP/1.0: no Host, and no browser sends such a request */
    if (!rq->via_loopback && host_path_open(h, rq->path))
        return true;
    k = host_classify(rq->host);
    return k == HOST_LOOPBACK || (k == HOST_IP && !rq->via_loopback);
}

/* Answers 421 with a JSON error that names the refused Host, and logs it once. */
static void refuse_host(struct httpd_client *c, const struct tt_httpd_request *rq, bool close)
{
    char shown[101], body[512];
    size_t pos;
    struct tt_httpd_response ans = {.status = 421, .ctype = "application/json", .close = close};

    snprintf(shown, sizeof(shown), "%s", rq->host); /* at most 100 bytes of it */
    tt_log(TT_LOG_WARN, "http_host_refused", TT_LS("server", c->httpd->opts.name),
           TT_LS("host", shown), TT_LS("method", rq->method_name), TT_LS("path", rq->path));
    pos = (size_t)snprintf(body, sizeof(body), "{\"error\": \"Host header \\\"");
    tt_json_escape(body, sizeof(body), &pos, shown);
    snprintf(body + pos, sizeof(body) - pos,
             "\\\" refused: this server answers only requests for localhost or %s (a "
             "protection against DNS rebinding)\"}\n",
             rq->via_loopback ? "a loopback address" : "an IP address");
    ans.body = body;
    ans.body_len = strlen(body);
    respond(c, &ans, rq->head);
}

static const char *method_name(int m)
{
    return http_method_str((enum http_method)m);
}

/* Hands a complete request to the route callback and queues its answer. */
/* A captured header's value, or NULL when the request did not carry it. */
static const char *captured(const struct httpd_client *c, size_t i)
{
    return c->hdrs[i].seen ? c->hdrs[i].value : NULL;
}

static void route_request(struct httpd_client *c, bool close)
{
    struct tt_httpd *h = c->httpd;
    struct tt_httpd_request rq = {
        .method = c->parser.method,
        .method_name = method_name(c->parser.method),
        .path = c->url,
        .body = c->body ? c->body : "",
        .body_len = c->body_len,
        .head = c->parser.method == HTTP_HEAD,
        .peer_identity = c->peer_identity,
        .host = captured(c, HDR_HOST),
        .authorization = captured(c, HDR_AUTHORIZATION),
        .origin = captured(c, HDR_ORIGIN),
        .content_type = captured(c, HDR_CONTENT_TYPE),
    };
    struct tt_httpd_response resp = {0};
    struct http_parser_url u;

    if (c->url_overflow) {
        respond_text(c, 414, "uri too long\n", close);
        return;
    }
    /* The request target split by http-parser: path and query (a fragment, which a client
     * should not send, is dropped); a target it cannot parse or without a path is refused.
     * Both parts are cut out of c->url in place, query first since it lies behind the path. */
    http_parser_url_init(&u);
    if (http_parser_parse_url(c->url, strlen(c->url), 0, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH))) {
        respond_text(c, 400, "bad request target\n", true);
        return;
    }
    if (u.field_set & (1 << UF_QUERY)) {
        c->url[u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len] = '\0';
        rq.query = c->url + u.field_data[UF_QUERY].off;
    }
    c->url[u.field_data[UF_PATH].off + u.field_data[UF_PATH].len] = '\0';
    rq.path = c->url + u.field_data[UF_PATH].off;
    rq.via_loopback = c->via_loopback;
    /* Before the route and its authentication: a rebinding page must learn nothing. */
    if (h->opts.host_check && !host_allowed(h, &rq)) {
        refuse_host(c, &rq, close);
        return;
    }
    h->route(h->ud, &rq, &resp);
    if (resp.status < 100 || resp.status > 999)
        resp.status = 500;
    resp.close = resp.close || close;
    respond(c, &resp, rq.head);
    if (resp.free_body)
        free((void *)resp.body);
}

/* ---- parsing ---- */

static int count_head(struct httpd_client *c, size_t len)
{
    c->head_bytes += len;
    if (c->head_bytes > c->httpd->opts.head_max) {
        c->reject = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct httpd_client *c = p->data;

    /* The first request's head deadline runs from the connection, a later one's from
     * its first byte (between requests, idle_ms applies). */
    if (c->head_since == 0)
        c->head_since = uv_now(c->httpd->loop);
    c->head_bytes = 0;
    c->n_headers = 0;
    c->in_value = false;
    c->body_len = 0;
    if (c->body)
        c->body[0] = '\0';
    c->reject = 0;
    c->url_len = 0;
    c->url_overflow = false;
    c->url[0] = '\0';
    c->field_len = 0;
    c->capture = -1;
    for (size_t i = 0; i < HTTPD_N_CAPTURED; i++)
        c->hdrs[i].seen = false;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct httpd_client *c = p->data;

    if (count_head(c, len) != 0)
        return -1;
    if (len > c->httpd->opts.url_max - c->url_len) {
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
    struct httpd_client *c = p->data;

    /* A field after a value (or the first one) starts a new header line; count it
     * with its ": " and CRLF. Pieces of one field split across reads do not. */
    if (c->in_value || c->n_headers == 0) {
        c->in_value = false;
        c->field_len = 0;
        c->capture = -1;
        if (++c->n_headers > c->httpd->opts.max_headers) {
            c->reject = 431;
            return -1;
        }
        if (count_head(c, 4) != 0)
            return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (c->field_len < sizeof(c->field) - 1)
            c->field[c->field_len] = (char)tolower((unsigned char)at[i]);
        c->field_len++;
    }
    return count_head(c, len);
}

/* The first piece of a value: decides whether this header is one that routes see. A
 * second copy of a captured header is refused (which Host or credential would count?). */
static int header_capture_begin(struct httpd_client *c)
{
    c->capture = -1;
    if (c->field_len >= sizeof(c->field))
        return 0;
    for (size_t i = 0; i < HTTPD_N_CAPTURED; i++) {
        if (c->field_len == strlen(captured_names[i]) &&
            memcmp(c->field, captured_names[i], c->field_len) == 0) {
            if (c->hdrs[i].seen) {
                c->reject = 400;
                return -1;
            }
            c->hdrs[i].seen = true;
            c->hdrs[i].len = 0;
            c->hdrs[i].value[0] = '\0';
            c->capture = (int)i;
            break;
        }
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct httpd_client *c = p->data;

    if (!c->in_value && header_capture_begin(c) != 0)
        return -1;
    c->in_value = true;
    if (c->capture >= 0) {
        struct httpd_header *hd = &c->hdrs[c->capture];

        if (len > HTTPD_VALUE_MAX - hd->len) {
            c->reject = 431;
            return -1;
        }
        memcpy(hd->value + hd->len, at, len);
        hd->len += len;
        hd->value[hd->len] = '\0';
    }
    return count_head(c, len);
}

static int on_headers_complete(http_parser *p)
{
    struct httpd_client *c = p->data;

    for (size_t i = 0; i < HTTPD_N_CAPTURED; i++) { /* optional whitespace after a value */
        struct httpd_header *hd = &c->hdrs[i];

        while (hd->seen && hd->len > 0 &&
               (hd->value[hd->len - 1] == ' ' || hd->value[hd->len - 1] == '\t'))
            hd->value[--hd->len] = '\0';
    }

    if (p->content_length != ULLONG_MAX && p->content_length > c->httpd->opts.body_max) {
        c->reject = 413;
        return -1;
    }
    c->head_since = 0;
    c->body_since = uv_now(c->httpd->loop);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct httpd_client *c = p->data;
    size_t need;

    if (len > c->httpd->opts.body_max - c->body_len) {
        c->reject = 413;
        return -1;
    }
    need = c->body_len + len + 1;
    if (need > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 1024;
        char *b;

        while (cap < need)
            cap *= 2;
        b = realloc(c->body, cap);
        if (b == NULL) {
            c->reject = 413; /* cannot hold it: refuse rather than truncate */
            return -1;
        }
        c->body = b;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct httpd_client *c = p->data;
    /* HTTP/1.0 always closes; 1.1 unless "Connection: close". A CONNECT or Upgrade
     * request leaves non-HTTP bytes behind it, so it closes as well. */
    bool close =
        (p->http_major == 1 && p->http_minor == 0) || !http_should_keep_alive(p) || p->upgrade;

    c->body_since = 0;
    c->wait_seq = ++c->httpd->wait_seq; /* its answer is queued next: the wait starts again */
    route_request(c, close);
    if (c->state != HTTPD_C_S_READING) {
        http_parser_pause(p, 1); /* stop at this message; the rest is ignored */
    } else if (uv_stream_get_write_queue_size(&c->h.stream) > HTTPD_WRITE_HIGH) {
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
static void process(struct httpd_client *c)
{
    while (c->roff < c->rlen && c->state == HTTPD_C_S_READING && !c->paused) {
        size_t n =
            http_parser_execute(&c->parser, &parser_settings, c->rbuf + c->roff, c->rlen - c->roff);
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);

        c->roff += n;
        if (err == HPE_PAUSED) {
            if (c->paused) {
                uv_read_stop(&c->h.stream);
                c->reading = false;
            }
            return;
        }
        if (err == HPE_OK && n > 0 && !c->parser.upgrade)
            continue;
        if (err == HPE_OK && c->state != HTTPD_C_S_READING)
            return; /* an upgrade request was answered with close */
        {
            int status = c->reject ? c->reject : err == HPE_HEADER_OVERFLOW ? 431 : 400;

            tt_log(TT_LOG_DEBUG, "http_bad_request", TT_LS("server", c->httpd->opts.name),
                   TT_LI("status", status), TT_LS("error", http_errno_name(err)));
            respond_text(c, status,
                         status == 413   ? "request body too large\n"
                         : status == 431 ? "request header fields too large\n"
                                         : "bad request\n",
                         true);
            return;
        }
    }
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct httpd_client *c = tt_container_of(handle, struct httpd_client, h.handle);

    *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

/* nread bytes in c->rbuf (or EOF, or an error as a UV_E* code). */
static void client_input(struct httpd_client *c, ssize_t nread)
{
    if (nread < 0) {
        /* EOF or error. Answers already queued are still delivered after EOF (a client
         * may send its requests and shut its write side at once). */
        uv_read_stop(&c->h.stream);
        c->reading = false;
        c->eof = true;
        if (nread == UV_EOF && c->paused && c->state == HTTPD_C_S_READING)
            return; /* on_write goes on with the buffered requests */
        if (nread != UV_EOF || c->pending_writes == 0 || c->state == HTTPD_C_S_LINGER)
            client_close(c);
        else
            c->state = HTTPD_C_S_CLOSING;
        return;
    }
    if (c->state != HTTPD_C_S_READING)
        return; /* closing or lingering: discard (no progress: it must not keep a linger) */
    c->last_active = uv_now(c->httpd->loop);
    c->seen_input = true;
    c->roff = 0;
    c->rlen = (size_t)nread;
    process(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    if (nread != 0)
        client_input(tt_container_of(s, struct httpd_client, h.stream), nread);
}

/* Reads what a new client sent with its connection before the loop ever polls it: a
 * request that came with the connection (as a real client's does) is answered at once,
 * so that a flood of newcomers cannot push it out of its slot before it was read. */
static void read_now(struct httpd_client *c, int fd)
{
    ssize_t n;

    if (!c->reading || uv_is_closing(&c->h.handle))
        return;
    n = recv(fd, c->rbuf, sizeof(c->rbuf), MSG_DONTWAIT);
    if (n > 0)
        client_input(c, n);
    else if (n == 0)
        client_input(c, UV_EOF);
    /* An error (EAGAIN: nothing yet) is left to libuv's read. */
}

static void read_start(struct httpd_client *c)
{
    if (c->reading || c->eof)
        return;
    if (uv_read_start(&c->h.stream, on_alloc, on_read) != 0) {
        client_close(c);
        return;
    }
    c->reading = true;
}

/* ---- accepting ---- */

/* A new client, linked into the server; its handle is initialized by the caller. */
static struct httpd_client *client_new(struct tt_httpd *h)
{
    struct httpd_client *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->url = malloc(h->opts.url_max + 1);
    if (c->url == NULL) {
        free(c);
        return NULL;
    }
    c->url[0] = '\0';
    c->httpd = h;
    return c;
}

static void client_link(struct tt_httpd *h, struct httpd_client *c)
{
    c->next = h->clients;
    if (h->clients)
        h->clients->prev = c;
    h->clients = c;
    h->n_clients++;
    h->open_handles++;
    c->last_active = uv_now(h->loop);
    c->head_since = c->last_active;
    c->wait_seq = ++h->wait_seq;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
}

static void client_free_unlinked(struct httpd_client *c)
{
    free(c->url);
    free(c->peer_identity);
    free(c);
}

/* The addresses of a connected socket that matter here: the peer's, as the source for
 * the per-source bound (family 0 when it has none, as a unix socket), and whether the
 * local end is a loopback address (a unix socket counts as local). */
static void conn_addrs(int fd, struct httpd_client *c)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    c->src_family = 0;
    c->via_loopback = getsockname(fd, (struct sockaddr *)&ss, &len) != 0 ||
                      ss.ss_family == AF_UNIX ||
                      tt_httpd_addr_is_loopback((const struct sockaddr *)&ss);
    len = sizeof(ss);
    if (getpeername(fd, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        c->src_family = AF_INET;
        memcpy(c->src_addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)&ss)->sin6_addr;

        /* An IPv4 client of a dual-stack socket is the same source as over IPv4. */
        c->src_family = IN6_IS_ADDR_V4MAPPED(a) ? AF_INET : AF_INET6;
        memcpy(c->src_addr, IN6_IS_ADDR_V4MAPPED(a) ? &a->s6_addr[12] : a->s6_addr,
               c->src_family == AF_INET ? 4 : 16);
    }
}

/* True when closing c now loses nothing it was promised: it waits for (the rest of) a
 * request and has no answer on its way, or it has had its answer and lingers. */
static bool client_evictable(const struct httpd_client *c)
{
    if (uv_is_closing(&c->h.handle))
        return false;
    return c->state == HTTPD_C_S_LINGER ||
           (c->state == HTTPD_C_S_READING && !c->paused && c->pending_writes == 0);
}

/* The order in which evictable clients make room: those that linger (they had their
 * answer), then those that sent something but no complete request or sit between
 * requests, and last those that have not sent a byte (a new client's request may still be
 * on its way); within a rank, the one that has waited longest. True when a goes first. */
static bool evicts_before(const struct httpd_client *a, const struct httpd_client *b)
{
    unsigned ra = a->state == HTTPD_C_S_LINGER ? 0 : a->seen_input ? 1 : 2;
    unsigned rb = b->state == HTTPD_C_S_LINGER ? 0 : b->seen_input ? 1 : 2;

    return ra != rb ? ra < rb : a->wait_seq < b->wait_seq;
}

static bool same_source(const struct httpd_client *a, const struct httpd_client *b)
{
    return a->src_family != 0 && a->src_family == b->src_family &&
           memcmp(a->src_addr, b->src_addr, a->src_family == AF_INET ? 4 : 16) == 0;
}

/* Makes room for the client nc (not yet linked): at the per-source bound the first
 * evictable client of its source (evicts_before) is closed, else at the total bound the
 * first of all. Returns false when a bound is reached and no client there may be closed:
 * nc must be refused. */
static bool make_room(struct tt_httpd *h, const struct httpd_client *nc)
{
    struct httpd_client *oldest = NULL, *oldest_src = NULL, *victim;
    size_t live = 0, from_src = 0;
    bool per_source;

    for (struct httpd_client *c = h->clients; c; c = c->next) {
        bool same;

        if (uv_is_closing(&c->h.handle))
            continue;
        live++;
        same = same_source(c, nc);
        from_src += same;
        if (!client_evictable(c))
            continue;
        if (oldest == NULL || evicts_before(c, oldest))
            oldest = c;
        if (same && (oldest_src == NULL || evicts_before(c, oldest_src)))
            oldest_src = c;
    }
    per_source = nc->src_family != 0 && from_src >= h->opts.max_per_source;
    if (per_source)
        victim = oldest_src; /* one fewer in total as well */
    else if (live >= h->opts.max_clients)
        victim = oldest;
    else
        return true;
    if (victim == NULL)
        return false;
    tt_log(TT_LOG_DEBUG, "http_client_evicted", TT_LS("server", h->opts.name),
           TT_LS("bound", per_source ? "per_source" : "total"));
    client_close(victim);
    return true;
}

/* A connection from the listening socket; when no room can be made (or shutting down)
 * it is closed at once. */
static void on_accept(struct tt_acceptor *a, int fd)
{
    struct tt_httpd *h = a->data;
    struct httpd_client *c;

    if (h->closing) {
        close(fd);
        return;
    }
    c = client_new(h);
    if (c == NULL) {
        close(fd);
        return;
    }
    conn_addrs(fd, c);
    if (!make_room(h, c)) {
        client_free_unlinked(c);
        close(fd);
        return;
    }
    if (uv_tcp_init(h->loop, &c->h.tcp) != 0) {
        client_free_unlinked(c);
        close(fd);
        return;
    }
    client_link(h, c);
    if (uv_tcp_open(&c->h.tcp, fd) != 0) {
        close(fd);
        client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->h.tcp, 1);
    read_start(c);
    read_now(c, fd);
}

static void on_acceptor_closed(struct tt_acceptor *a)
{
    handle_closed(a->data);
}

/* A listening socket on addr, as uv_tcp_bind() and uv_listen() would make it
 * (SO_REUSEADDR; IPv6 also reaches IPv4), with TCP_DEFER_ACCEPT for defer_s seconds when
 * defer_s > 0. Returns the descriptor or -errno. */
static int listen_on(const struct tt_addr *addr, int defer_s)
{
    int one = 1, off = 0, err;
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (addr->ss.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) < 0) ||
        (defer_s > 0 &&
         setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer_s, sizeof(defer_s)) < 0) ||
        bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 ||
        listen(fd, HTTPD_BACKLOG) < 0) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

/* Serves a connected socket; see httpd.h. */
int tt_httpd_adopt_fd(struct tt_httpd *h, int fd, const char *peer_identity)
{
    struct httpd_client *c;
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    bool inited = false;
    int err;

    if (h->closing) {
        close(fd);
        return -EBUSY;
    }
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) != 0) {
        err = -errno;
        close(fd);
        return err;
    }
    c = client_new(h);
    if (c == NULL || (peer_identity && (c->peer_identity = strdup(peer_identity)) == NULL)) {
        if (c)
            client_free_unlinked(c);
        close(fd);
        return -ENOMEM;
    }
    conn_addrs(fd, c);
    if (!make_room(h, c)) {
        client_free_unlinked(c);
        close(fd);
        return -EBUSY;
    }
    /* TCP sockets as TCP handles (nodelay); anything else (AF_UNIX) as a pipe. */
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
        err = uv_tcp_init(h->loop, &c->h.tcp);
        inited = err == 0;
        if (inited && (err = uv_tcp_open(&c->h.tcp, fd)) == 0)
            uv_tcp_nodelay(&c->h.tcp, 1);
    } else {
        err = uv_pipe_init(h->loop, &c->h.pipe, 0);
        inited = err == 0;
        if (inited)
            err = uv_pipe_open(&c->h.pipe, fd);
    }
    if (err != 0) {
        close(fd);
        if (inited) {
            /* An initialized handle must be closed through libuv. */
            client_link(h, c);
            client_close(c);
        } else {
            client_free_unlinked(c);
        }
        return err;
    }
    client_link(h, c);
    read_start(c);
    read_now(c, fd);
    return 0;
}

/* Closes clients that made no progress for too long (idle, or stalled reading their
 * answers). A client still draining an answer from the kernel's send buffer is making
 * progress even though libuv sees nothing: the buffer's fill level tells. */
static void on_sweep(uv_timer_t *t)
{
    struct tt_httpd *h = tt_container_of(t, struct tt_httpd, sweep);
    uint64_t now = uv_now(h->loop);

    for (struct httpd_client *c = h->clients; c; c = c->next) {
        uint64_t limit = c->state == HTTPD_C_S_LINGER ? HTTPD_LINGER_MS : h->opts.idle_ms;
        uv_os_fd_t fd;
        int outq = 0;

        if (uv_is_closing(&c->h.handle))
            continue;
        if (uv_fileno(&c->h.handle, &fd) == 0 && ioctl(fd, SIOCOUTQ, &outq) == 0 &&
            outq != c->last_outq) {
            c->last_outq = outq;
            c->last_active = now;
        }
        if (now - c->last_active >= limit) {
            client_close(c);
            continue;
        }
        if (c->state != HTTPD_C_S_READING || c->paused)
            continue;
        if ((c->head_since != 0 && now - c->head_since >= h->opts.head_timeout_ms) ||
            (c->body_since != 0 && now - c->body_since >= h->opts.body_timeout_ms)) {
            tt_log(TT_LOG_DEBUG, "http_deadline", TT_LS("server", h->opts.name),
                   TT_LS("part", c->head_since != 0 ? "head" : "body"));
            client_close(c);
        }
    }
}

static void apply_defaults(struct tt_httpd_opts *o)
{
    if (o->head_max == 0)
        o->head_max = 16 * 1024;
    if (o->max_headers == 0)
        o->max_headers = 100;
    if (o->body_max == 0)
        o->body_max = 64 * 1024;
    if (o->url_max == 0)
        o->url_max = 2047; /* a 2048-byte buffer with its NUL, as admin always had */
    if (o->max_clients == 0)
        o->max_clients = 64;
    if (o->max_per_source == 0 || o->max_per_source > o->max_clients)
        o->max_per_source = o->max_clients;
    if (o->idle_ms == 0)
        o->idle_ms = 10000;
    if (o->head_timeout_ms == 0)
        o->head_timeout_ms = 10000;
    if (o->body_timeout_ms == 0)
        o->body_timeout_ms = 30000;
    if (o->name == NULL)
        o->name = "httpd";
}

/* Starts the server; see httpd.h. On a failure after the timer was made, the memory is
 * released by a close callback the next time the loop runs. */
struct tt_httpd *tt_httpd_new(uv_loop_t *loop, const struct tt_addr *addr,
                              const struct tt_httpd_opts *opts, tt_httpd_route_cb route, void *ud,
                              int *errp)
{
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    struct tt_httpd *h;
    int err, fd;

    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        err = UV_ENOMEM;
        goto err_out;
    }
    h->loop = loop;
    if (opts)
        h->opts = *opts;
    apply_defaults(&h->opts);
    h->route = route;
    h->ud = ud;
    err = uv_timer_init(loop, &h->sweep);
    if (err != 0)
        goto err_free_httpd;
    h->sweep.data = h;
    h->open_handles = 1;
    if (addr != NULL) {
        /* A silent connection waits in the kernel for about a second rather than in a
         * slot; one whose request came with it is read at accept (read_now). */
        fd = listen_on(addr, h->opts.defer_accept ? 1 : 0);
        if (fd < 0) {
            err = fd;
            goto err_close_timer;
        }
        if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0) {
            err = -errno;
            close(fd);
            goto err_close_timer;
        }
        h->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
        /* Admin requests are rare and small: during a descriptor shortage, serve the
         * waiting one on the reserve rather than turn it away. */
        h->acceptor.name = h->opts.name;
        h->acceptor.worker = -1;
        h->acceptor.shortage = TT_ACCEPTOR_SERVE;
        h->acceptor.on_accept = on_accept;
        h->acceptor.on_closed = on_acceptor_closed;
        h->acceptor.data = h;
        err = tt_acceptor_start(&h->acceptor, loop, fd);
        if (err != 0)
            goto err_close_timer;
        h->open_handles++;
        h->listening = true;
    }
    uv_timer_start(&h->sweep, on_sweep, HTTPD_SWEEP_MS, HTTPD_SWEEP_MS);
    return h;

err_close_timer:
    h->closing = true;
    h->opts.on_closed = NULL; /* the caller never had this server */
    uv_close((uv_handle_t *)&h->sweep, on_httpd_handle_close);
    *errp = err;
    return NULL;
err_free_httpd:
    free(h);
err_out:
    *errp = err;
    return NULL;
}

/* Stops listening and closes every client; freed once libuv closed all handles. */
void tt_httpd_close(struct tt_httpd *h)
{
    if (h == NULL || h->closing)
        return;
    h->closing = true;
    for (struct httpd_client *c = h->clients; c; c = c->next)
        client_close(c);
    uv_close((uv_handle_t *)&h->sweep, on_httpd_handle_close);
    if (h->listening)
        tt_acceptor_close(&h->acceptor);
}

/* The bound port, in host order. */
int tt_httpd_port(const struct tt_httpd *h)
{
    return h->port;
}
