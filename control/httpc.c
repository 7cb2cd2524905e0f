/* tetherctl's blocking HTTP/1.1 client, plain or over mTLS (see httpc.h). */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <http_parser.h>

#include "core/errors.h"
#include "httpc.h"
#include "tls/identity.h"
#include "core/spiffe.h"
#include "tls/tls.h"
#include "control/tlspipe.h"
#include "core/util.h"

/* Copies field f of URL u (parsed from url) into out[outlen]. Returns false when it does not
 * fit. */
static bool url_field(const char *url, const struct http_parser_url *u,
                      enum http_parser_url_fields f, char *out, size_t outlen)
{
    size_t n = (u->field_set & (1 << f)) ? u->field_data[f].len : 0;

    if (n >= outlen)
        return false;
    memcpy(out, url + u->field_data[f].off, n);
    out[n] = '\0';
    return true;
}

/* Splits an http:// or https:// URL with http_parser_parse_url into host (brackets of an IPv6
 * literal removed), port (default 80 or 443; 1-65535) and path prefix (trailing slashes dropped),
 * each into the caller's buffer. A user, query or fragment is refused. Returns 0, or -EINVAL with
 * "--api URL: ..." in err. */
int cp_httpc_parse_url(const char *url, char *host, size_t hostlen, char *port, size_t portlen,
                       char *prefix, size_t prefixlen, char *err, size_t errlen)
{
    static const uint16_t refused = (1 << UF_USERINFO) | (1 << UF_QUERY) | (1 << UF_FRAGMENT);
    bool https = cp_httpc_url_is_https(url);
    struct http_parser_url u;
    size_t n;

    if (!https && strncmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "--api %s: expected http://HOST:PORT or https://HOST:PORT", url);
        return -EINVAL;
    }
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, strlen(url), 0, &u) != 0 || (u.field_set & refused) != 0 ||
        !(u.field_set & (1 << UF_HOST)) || u.field_data[UF_HOST].len == 0 ||
        !url_field(url, &u, UF_HOST, host, hostlen))
        goto bad;
    if (u.field_set & (1 << UF_PORT)) {
        if (u.port == 0 || (size_t)snprintf(port, portlen, "%u", u.port) >= portlen)
            goto bad;
    } else if ((size_t)snprintf(port, portlen, "%s", https ? "443" : "80") >= portlen) {
        goto bad;
    }
    if (!url_field(url, &u, UF_PATH, prefix, prefixlen))
        goto bad;
    /* A path prefix without its trailing slashes. */
    n = strlen(prefix);
    while (n > 0 && prefix[n - 1] == '/')
        prefix[--n] = '\0';
    return 0;
bad:
    snprintf(err, errlen, "--api %s: expected %s://HOST:PORT", url, https ? "https" : "http");
    return -EINVAL;
}

/* True when url starts with "https://" (case-sensitive). Pure. */
bool cp_httpc_url_is_https(const char *url)
{
    return strncmp(url, "https://", 8) == 0;
}

/* ---- response parsing ---- */

struct rctx {
    struct cp_httpc_response *out;
    size_t cap;
    bool in_ctype;
    bool done;
    bool too_big;
    bool head; /* a HEAD request: the answer has no body whatever its length says */
    const struct cp_httpc_req *rq; /* its on_body, when set, takes a 2xx body */
    int cb_rc;                     /* what on_body returned when it stopped the parser */
    char field[32];
    size_t field_len;
};

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct rctx *r = p->data;

    if (len + r->field_len < sizeof(r->field)) {
        memcpy(r->field + r->field_len, at, len);
        r->field_len += len;
        r->field[r->field_len] = '\0';
    } else {
        r->field_len = sizeof(r->field) - 1; /* too long to be Content-Type */
        r->field[0] = '\0';
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct rctx *r = p->data;

    if (strcasecmp(r->field, "Content-Type") == 0) {
        size_t have = strlen(r->out->ctype);

        if (have + len < sizeof(r->out->ctype)) {
            memcpy(r->out->ctype + have, at, len);
            r->out->ctype[have + len] = '\0';
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct rctx *r = p->data;
    struct cp_httpc_response *o = r->out;

    if (r->rq != NULL && r->rq->on_body != NULL && p->status_code / 100 == 2) {
        int rc = r->rq->on_body(r->rq->body_ud, at, len);

        if (rc < 0) {
            r->cb_rc = rc;
            return -1;
        }
        return 0;
    }
    if (o->body_len + len > CP_HTTPC_BODY_MAX) {
        r->too_big = true;
        return -1;
    }
    if (o->body_len + len + 1 > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        char *b;

        while (cap < o->body_len + len + 1)
            cap *= 2;
        b = realloc(o->body, cap);
        if (b == NULL) {
            r->too_big = true;
            return -1;
        }
        o->body = b;
        r->cap = cap;
    }
    memcpy(o->body + o->body_len, at, len);
    o->body_len += len;
    o->body[o->body_len] = '\0';
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct rctx *r = p->data;

    return r->head ? 1 : 0; /* 1: no body follows */
}

static int on_message_complete(http_parser *p)
{
    struct rctx *r = p->data;

    r->done = true;
    return 0;
}

/* http-parser calls on_header_field for every piece of a name; a name that follows a
 * value starts a new header, so the collected name is reset then. in_ctype marks "the
 * last callback was a value". */
static int on_header_value_wrap(http_parser *p, const char *at, size_t len)
{
    struct rctx *r = p->data;

    r->in_ctype = true; /* marks "last callback was a value" */
    return on_header_value(p, at, len);
}

static int on_header_field_wrap(http_parser *p, const char *at, size_t len)
{
    struct rctx *r = p->data;

    if (r->in_ctype) {
        r->in_ctype = false;
        r->field_len = 0;
        r->field[0] = '\0';
    }
    return on_header_field(p, at, len);
}

static const http_parser_settings settings = {
    .on_header_field = on_header_field_wrap,
    .on_header_value = on_header_value_wrap,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Connects a blocking TCP socket with timeouts (see httpc.h). */
int cp_httpc_connect(const char *host, const char *port, int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res, *ai;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    int fd = -1, rc, saved = 0;

    rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -ENOENT;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot connect to %s:%s: %s", host, port, strerror(saved));
        return -(saved ? saved : ECONNREFUSED);
    }
    return fd;
}

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* The plain fd as a cp_httpc_io. */
static ssize_t fd_read(void *ud, void *buf, size_t len)
{
    ssize_t n;

    do
        n = recv(*(int *)ud, buf, len, 0);
    while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

static int fd_write(void *ud, const void *buf, size_t len)
{
    return write_all(*(int *)ud, buf, len);
}

/* Writes one request (Connection: close, Content-Length) through io and parses the response until
 * it is complete (see httpc.h). Returns 0 with *out filled (caller frees with
 * cp_httpc_response_done), or -errno with err set and *out released: -EFBIG over
 * CP_HTTPC_BODY_MAX, -EPROTO for a bad or cut reply, -ECONNRESET when nothing came, or what
 * rq->on_body returned. */
int cp_httpc_exchange(const struct cp_httpc_io *io, const struct cp_httpc_req *rq,
                      struct cp_httpc_response *out, char *err, size_t errlen)
{
    char head[4096], buf[16384];
    const char *bearer = rq->bearer, *ctype = rq->ctype;
    bool auth = bearer != NULL && bearer[0] != '\0';
    struct rctx r = {.out = out, .head = strcmp(rq->method, "HEAD") == 0, .rq = rq};
    http_parser parser;
    size_t total = 0;
    int rc, n;

    memset(out, 0, sizeof(*out));
    n = snprintf(head, sizeof(head),
                 "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n"
                 "Accept: application/json, text/plain\r\nConnection: close\r\n"
                 "%s%s%s%s%s%sContent-Length: %zu\r\n\r\n",
                 rq->method, rq->prefix, rq->path, rq->host_hdr,
                 rq->user_agent ? rq->user_agent : "tetherctl",
                 auth ? "Authorization: Bearer " : "", auth ? bearer : "", auth ? "\r\n" : "",
                 ctype ? "Content-Type: " : "", ctype ? ctype : "", ctype ? "\r\n" : "",
                 rq->body_len);
    if (n < 0 || (size_t)n >= sizeof(head)) {
        snprintf(err, errlen, "request too long");
        rc = -EINVAL;
        goto out;
    }
    rc = io->write(io->ud, head, (size_t)n);
    if (rc == 0 && rq->body_len)
        rc = io->write(io->ud, rq->body, rq->body_len);
    if (rc != 0) {
        snprintf(err, errlen, "sending to %s: %s", rq->where, strerror(-rc));
        /* The server hung up before reading: for the caller, the same as closing without
         * a byte (e.g. a TLS server that refused our certificate after the handshake). */
        if (rc == -EPIPE)
            rc = -ECONNRESET;
        goto out;
    }
    http_parser_init(&parser, HTTP_RESPONSE);
    parser.data = &r;
    for (;;) {
        ssize_t got = io->read(io->ud, buf, sizeof(buf));
        size_t used;

        if (got < 0) {
            rc = (int)got;
            snprintf(err, errlen, "reading from %s: %s", rq->where,
                     rc == -EAGAIN ? "timed out" : strerror(-rc));
            goto out;
        }
        total += (size_t)got;
        used = http_parser_execute(&parser, &settings, buf, (size_t)got);
        if (r.cb_rc != 0) {
            rc = r.cb_rc;
            snprintf(err, errlen, "%s: the streamed body was refused (%s)", rq->where,
                     strerror(-rc));
            goto out;
        }
        if (r.too_big) {
            snprintf(err, errlen, "response from %s too large", rq->where);
            rc = -EFBIG;
            goto out;
        }
        if (HTTP_PARSER_ERRNO(&parser) != HPE_OK || used != (size_t)got) {
            if (r.done)
                break;
            snprintf(err, errlen, "bad HTTP response from %s (%s)", rq->where,
                     http_errno_description(HTTP_PARSER_ERRNO(&parser)));
            rc = -EPROTO;
            goto out;
        }
        if (r.done || got == 0)
            break;
    }
    if (!r.done) {
        snprintf(err, errlen, "%s closed the connection before a complete response%s", rq->where,
                 total == 0 ? " (nothing was answered)" : "");
        rc = total == 0 ? -ECONNRESET : -EPROTO;
        goto out;
    }
    out->status = parser.status_code;
    if (out->body == NULL) {
        out->body = strdup("");
        if (out->body == NULL) {
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto out;
        }
    }
    rc = 0;
out:
    if (rc != 0)
        cp_httpc_response_done(out);
    return rc;
}

/* One request over the caller's blocking fd (see httpc.h): cp_httpc_exchange() on it. */
int cp_httpc_request_fd(int fd, const char *where, const char *host_hdr, const char *prefix,
                        const char *bearer, const char *method, const char *path, const char *ctype,
                        const char *body, size_t body_len, struct cp_httpc_response *out, char *err,
                        size_t errlen)
{
    struct cp_httpc_io io = {fd_read, fd_write, &fd};
    struct cp_httpc_req rq = {.where = where,
                              .host_hdr = host_hdr,
                              .prefix = prefix,
                              .bearer = bearer,
                              .method = method,
                              .path = path,
                              .ctype = ctype,
                              .body = body,
                              .body_len = body_len};

    return cp_httpc_exchange(&io, &rq, out, err, errlen);
}

/* Blocking I/O with timeouts on fd (the plaintext end of a tlspipe is non-blocking). */
static void set_blocking_timeouts(int fd, int timeout_ms)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    int fl = fcntl(fd, F_GETFL);

    if (fl >= 0)
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* TLS to host:port with the operator's certificate; on success *app_fd is the plaintext
 * end and *pipe the relay's handle. */
static int tls_connect(const char *host, const char *port, const struct cp_httpc_tls *t,
                       int timeout_ms, int *app_fd, struct tt_tlspipe **pipe, char *err,
                       size_t errlen)
{
    char addr_text[300], td[256], expected[TT_SPIFFE_MAX + 1], ierr[512];
    struct tt_identity *id;
    struct tt_tls *tls = NULL;
    struct tt_addr addr;
    int fd = -1, rc;

    if (t == NULL || t->cert_file == NULL || t->key_file == NULL || t->cacert_file == NULL ||
        !t->cert_file[0] || !t->key_file[0] || !t->cacert_file[0]) {
        snprintf(err, errlen, "https:// needs --cert, --key and --cacert");
        return -EINVAL;
    }
    id = tt_identity_load(t->cert_file, t->key_file, t->cacert_file, ierr, sizeof(ierr));
    if (id == NULL) {
        snprintf(err, errlen, "%s", ierr);
        return -EINVAL;
    }
    if (tt_spiffe_trust_domain(tt_identity_spiffe_id(id), td, sizeof(td)) != 0) {
        snprintf(err, errlen, "%s: the certificate has no SPIFFE ID", t->cert_file);
        rc = -EINVAL;
        goto out;
    }
    snprintf(expected, sizeof(expected), "spiffe://%s/ns/tether-system/sa/tether-control", td);
    snprintf(addr_text, sizeof(addr_text), "%s%s%s:%s", strchr(host, ':') ? "[" : "", host,
             strchr(host, ':') ? "]" : "", port);
    rc = tt_addr_parse(addr_text, 0, &addr);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s", addr_text);
        rc = -ENOENT;
        goto out;
    }
    rc = tt_tlspipe_connect(&addr, (uint64_t)timeout_ms, &fd);
    if (rc != 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", addr_text,
                 rc == -ETIMEDOUT ? "timed out" : strerror(-rc));
        goto out;
    }
    tls = tt_tls_new(id, TT_TLS_CLIENT, expected);
    if (tls == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    rc = tt_tlspipe_handshake(fd, tls, (uint64_t)timeout_ms);
    if (rc != 0) {
        const char *peer = tt_tls_peer_id(tls);

        snprintf(err, errlen, "TLS handshake with %s failed: %s%s%s%s", addr_text, tt_strerror(rc),
                 peer[0] ? " (server presented " : "", peer, peer[0] ? ")" : "");
        goto out;
    }
    rc = tt_tlspipe_new(fd, tls, app_fd, pipe); /* owns fd and tls from here */
    fd = -1;
    tls = NULL;
    if (rc != 0)
        snprintf(err, errlen, "TLS with %s: %s", addr_text, tt_strerror(rc));
out:
    tt_tls_free(tls);
    if (fd >= 0)
        close(fd);
    tt_identity_unref(id);
    return rc;
}

/* Closes the plaintext end and lets the relay send its close_notify and end (bounded). */
static void tls_finish(int app_fd, struct tt_tlspipe *pipe)
{
    close(app_fd);
    for (int i = 0; i < 1000 && tt_tlspipe_running(pipe); i++)
        usleep(1000);
    tt_tlspipe_close(pipe);
}

/* Parses base_url, connects (plain TCP, or mTLS with tls through a tlspipe; timeout_ms bounds each
 * step), runs one request with cp_httpc_request_fd() and closes the connection. Returns 0 with *out
 * filled (free with cp_httpc_response_done), or -errno with err set; a server that closed without
 * answering gets a hint (refused certificate, or plaintext off loopback). */
int cp_httpc_call(const char *base_url, const struct cp_httpc_tls *tls, const char *method,
                  const char *path, const char *ctype, const char *body, size_t body_len,
                  int timeout_ms, struct cp_httpc_response *out, char *err, size_t errlen)
{
    char host[256], port[8], prefix[512], host_hdr[300], where[300];
    struct tt_tlspipe *pipe = NULL;
    bool https = cp_httpc_url_is_https(base_url);
    int fd, rc;

    memset(out, 0, sizeof(*out));
    rc = cp_httpc_parse_url(base_url, host, sizeof(host), port, sizeof(port), prefix,
                            sizeof(prefix), err, errlen);
    if (rc != 0)
        return rc;
    snprintf(host_hdr, sizeof(host_hdr), "%s%s%s:%s", strchr(host, ':') ? "[" : "", host,
             strchr(host, ':') ? "]" : "", port);
    snprintf(where, sizeof(where), "%s:%s", host, port);
    if (https) {
        rc = tls_connect(host, port, tls, timeout_ms, &fd, &pipe, err, errlen);
        if (rc != 0)
            return rc;
        set_blocking_timeouts(fd, timeout_ms);
    } else {
        fd = cp_httpc_connect(host, port, timeout_ms, err, errlen);
        if (fd < 0)
            return fd;
    }
    rc = cp_httpc_request_fd(fd, where, host_hdr, prefix, !https && tls ? tls->bearer : NULL,
                             method, path, ctype, body, body_len, out, err, errlen);
    if (rc == -ECONNRESET && https) {
        /* TLS 1.3: the server checks our certificate after our side of the handshake. */
        snprintf(err, errlen,
                 "%s closed the TLS connection without answering: the client certificate "
                 "was refused (it must chain to the control plane's bundle and not be revoked)",
                 where);
    } else if (rc == -ECONNRESET) {
        size_t len = strlen(err);

        snprintf(err + len, errlen > len ? errlen - len : 0,
                 "; off loopback the API serves only https:// (mTLS)");
    }
    if (https)
        tls_finish(fd, pipe);
    else
        close(fd);
    return rc;
}

/* cp_httpc_call() without TLS credentials: http:// works, https:// fails with -EINVAL. Returns as
 * cp_httpc_call(). */
int cp_httpc_request(const char *base_url, const char *method, const char *path, const char *ctype,
                     const char *body, size_t body_len, int timeout_ms,
                     struct cp_httpc_response *out, char *err, size_t errlen)
{
    return cp_httpc_call(base_url, NULL, method, path, ctype, body, body_len, timeout_ms, out, err,
                         errlen);
}

/* Frees the response body and zeroes *r. Accepts NULL; does not free r itself. */
void cp_httpc_response_done(struct cp_httpc_response *r)
{
    if (r == NULL)
        return;
    free(r->body);
    memset(r, 0, sizeof(*r));
}
