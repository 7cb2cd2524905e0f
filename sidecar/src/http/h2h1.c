/* An HTTP/2 request served by an HTTP/1.1 server (see h2h1.h). The request head is
 * written once into a pooled buffer; the response is read by http/h1resp with its header
 * fields kept and its body de-chunked. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/util.h"
#include "http/h1.h"
#include "http/h1resp.h"
#include "http/h2h1.h"

struct tt_h2h1 {
    struct tt_h2h1_io io;
    struct tt_h1resp *resp;
    bool chunked;    /* the request body is chunked towards the server */
    bool body_sent;  /* respond ran without end_stream: body and end follow */
    bool responded;  /* respond ran */
    bool done;       /* the response is complete */
    bool keep_alive; /* the final response leaves the server's connection open */
    bool req_ended;  /* the request was written whole (its body's end too) */
};

/* ---- towards the server ---- */

/* Fields an HTTP/1.1 request or response may carry that mean nothing beyond the
 * connection they came on (RFC 9110 §7.6.1): HTTP/2's connection-specific ones, and "te",
 * which only says what this hop accepts. */
static bool hop_by_hop(const char *name, size_t len)
{
    return tt_h2_connection_specific(name, len) || (len == 2 && strncasecmp(name, "te", 2) == 0);
}

static bool name_is(const struct tt_h2_header *f, const char *name)
{
    return f->name_len == strlen(name) && memcmp(f->name, name, f->name_len) == 0;
}

static const struct tt_h2_header *field(const struct tt_h2_header *fields, size_t n,
                                        const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (name_is(&fields[i], name))
            return &fields[i];
    }
    return NULL;
}

/* Appends the cookie crumbs joined into one field (RFC 9113 §8.2.3). */
static int put_cookies(struct tt_buf *b, const struct tt_h2_header *fields, size_t n)
{
    bool first = true;
    int r = 0;

    for (size_t i = 0; i < n && r == 0; i++) {
        if (!name_is(&fields[i], "cookie"))
            continue;
        r = tt_buf_append(b, first ? "cookie: " : "; ", first ? 8 : 2);
        r = r ?: tt_buf_append(b, fields[i].value, fields[i].value_len);
        first = false;
    }
    return r == 0 && !first ? tt_buf_append(b, "\r\n", 2) : r;
}

/* Whether a request with this method and no body should say Content-Length: 0 (servers
 * may refuse a POST without framing with 411). */
static bool wants_zero_length(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
           strcmp(method, "PATCH") == 0;
}

/*
 * Writes the request head; see h2h1.h.
 */
int tt_h2h1_request(struct tt_h2h1 *x, const struct tt_h2_header *fields, size_t n, bool body)
{
    const struct tt_h2_header *method = field(fields, n, ":method");
    const struct tt_h2_header *path = field(fields, n, ":path");
    const struct tt_h2_header *authority = field(fields, n, ":authority");
    bool has_length = field(fields, n, "content-length") != NULL;
    struct tt_buf b;
    int r;

    if (method == NULL || path == NULL || strcmp(method->value, "CONNECT") == 0)
        return TT_E_HTTP;
    tt_buf_init(&b);
    r = tt_buf_append(&b, method->value, method->value_len);
    r = r ?: tt_buf_append(&b, " ", 1);
    r = r ?: tt_buf_append(&b, path->value, path->value_len);
    r = r ?: tt_buf_append(&b, " HTTP/1.1\r\n", 11);
    if (authority != NULL)
        r = r ?: tt_h1_put_field(&b, "host", 4, authority->value, authority->value_len);
    for (size_t i = 0; i < n && r == 0; i++) {
        const struct tt_h2_header *f = &fields[i];

        if (f->name_len == 0 || f->name[0] == ':' || hop_by_hop(f->name, f->name_len) ||
            name_is(f, "expect") || name_is(f, "cookie") ||
            (authority != NULL && name_is(f, "host")))
            continue;
        r = tt_h1_put_field(&b, f->name, f->name_len, f->value, f->value_len);
    }
    r = r ?: put_cookies(&b, fields, n);
    x->chunked = body && !has_length;
    if (x->chunked)
        r = r ?: tt_buf_append(&b, "transfer-encoding: chunked\r\n", 28);
    else if (!body && !has_length && wants_zero_length(method->value))
        r = r ?: tt_buf_append(&b, "content-length: 0\r\n", 19);
    r = r ?: tt_buf_append(&b, "\r\n", 2); /* keep-alive: the connection may serve another */
    r = r ?: tt_h1resp_expect(x->resp, method->value, false);
    x->req_ended = !body;
    if (r == 0)
        r = x->io.to_server(x->io.ud, (const char *)tt_buf_head(&b), b.len);
    tt_buf_done(&b);
    return r;
}

/*
 * A piece of the request body; see h2h1.h.
 */
int tt_h2h1_request_body(struct tt_h2h1 *x, const char *data, size_t len)
{
    char size[24];
    int r;

    if (len == 0)
        return 0;
    if (!x->chunked)
        return x->io.to_server(x->io.ud, data, len);
    r = x->io.to_server(x->io.ud, size, (size_t)snprintf(size, sizeof(size), "%zx\r\n", len));
    r = r ?: x->io.to_server(x->io.ud, data, len);
    return r ?: x->io.to_server(x->io.ud, "\r\n", 2);
}

/*
 * The end of the request; see h2h1.h.
 */
int tt_h2h1_request_end(struct tt_h2h1 *x)
{
    x->req_ended = true;
    return x->chunked ? x->io.to_server(x->io.ud, "0\r\n\r\n", 5) : 0;
}

/* ---- requests the gate would pass on unchanged ---- */

/* Bounds well inside the gate's reader (http/h1.c: a 64 KiB head, 100 fields). */
#define PLAIN_HEAD_MAX   (32 * 1024)
#define PLAIN_FIELDS_MAX 64

/* The methods http-parser reads that a translated request may carry as they are. */
static bool plain_method(const struct tt_h2_header *m)
{
    static const char *const known[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (m->value_len == strlen(known[i]) && memcmp(m->value, known[i], m->value_len) == 0)
            return true; /* by length too: the translator writes value_len bytes */
    }
    return false;
}

/* RFC 3986 pchar but '%' (an encoding the gate would normalize), and '/'. */
static bool plain_path_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("-._~!$&'()*+,;=:@/", c) != NULL);
}

/* An origin-form target whose path normalization leaves as it is (no '%', no "." or ".."
 * segment), with a non-empty query of pchar, '/', '?' and '%' if any. */
static bool plain_target(const char *t, size_t len)
{
    size_t i = 0, seg = 1;

    if (len == 0 || t[0] != '/')
        return false;
    for (i = 1; i <= len; i++) {
        if (i == len || t[i] == '/' || t[i] == '?') {
            size_t n = i - seg;
            if ((n == 1 && t[seg] == '.') || (n == 2 && t[seg] == '.' && t[seg + 1] == '.'))
                return false;
            if (i == len || t[i] == '?')
                break;
            seg = i + 1;
        } else if (!plain_path_char((unsigned char)t[i])) {
            return false;
        }
    }
    if (i == len)
        return true;
    if (i + 1 == len)
        return false; /* an empty query */
    for (i++; i < len; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!plain_path_char(c) && c != '?' && c != '%')
            return false;
    }
    return true;
}

/* Visible ASCII and inner spaces and tabs: what the gate's reader passes on byte for byte
 * (it trims surrounding whitespace; obs-text is left to it). */
static bool plain_value(const char *v, size_t len)
{
    if (len > 0 && (v[0] == ' ' || v[0] == '\t' || v[len - 1] == ' ' || v[len - 1] == '\t'))
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c >= 0x7f)
            return false;
    }
    return true;
}

/* A lower-case token: what nghttp2 lets through, checked again here. */
static bool plain_name(const char *n, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)n[i];
        if ((c >= 'A' && c <= 'Z') || !tt_h1_is_tchar(c))
            return false;
    }
    return true;
}

/*
 * Whether the request head is one the gate passes on unchanged; see h2h1.h.
 */
bool tt_h2h1_plain(const struct tt_h2_header *fields, size_t n)
{
    const struct tt_h2_header *method = field(fields, n, ":method");
    const struct tt_h2_header *path = field(fields, n, ":path");
    const struct tt_h2_header *authority = field(fields, n, ":authority");
    size_t head = 0, lengths = 0;

    if (method == NULL || path == NULL || authority == NULL || n > PLAIN_FIELDS_MAX ||
        !plain_method(method) || !plain_target(path->value, path->value_len) ||
        authority->value_len == 0 || !plain_value(authority->value, authority->value_len) ||
        strpbrk(authority->value, " \t,/?#@") != NULL)
        return false;
    for (size_t i = 0; i < n; i++) {
        const struct tt_h2_header *f = &fields[i];

        head += f->name_len + f->value_len + 4;
        if (f->name_len > 0 && f->name[0] == ':') {
            if (f != method && f != path && f != authority && !name_is(f, ":scheme"))
                return false; /* another pseudo-field (":protocol"), or one repeated */
            continue;
        }
        if (!plain_name(f->name, f->name_len) || !plain_value(f->value, f->value_len) ||
            (f->value_len == 0 && name_is(f, "cookie"))) /* a joined "a=1; " would end in SP */
            return false;
        if (name_is(f, "content-length") &&
            (++lengths > 1 || f->value_len == 0 || f->value_len > 18 ||
             strspn(f->value, "0123456789") != f->value_len))
            return false;
    }
    return head <= PLAIN_HEAD_MAX;
}

/* ---- from the server ---- */

/* Fields and name bytes of a response head translated on the stack; a bigger head is
 * translated in heap memory. */
#define RESP_FIELDS_ON_STACK 32
#define RESP_NAMES_ON_STACK  1024

/* h1resp: a response head. Interim ones are dropped; a final one goes to the caller with
 * its fields translated (names lower-cased into one buffer). */
static int on_resp_head(void *ud, int status, bool keep_alive)
{
    struct tt_h2h1 *x = ud;
    size_t n = 0, out = 0, names_len = 0;
    const struct tt_h1_header *fields = tt_h1resp_headers(x->resp, &n);
    struct tt_h2_header h2_stack[RESP_FIELDS_ON_STACK], *h2 = h2_stack;
    char names_stack[RESP_NAMES_ON_STACK], *names = names_stack;
    bool chunked = false, bodiless, named;
    int r;

    if (status / 100 == 1)
        return 0;
    x->keep_alive = keep_alive;
    for (size_t i = 0; i < n; i++) {
        if (fields[i].name_len == 17 && strcasecmp(fields[i].name, "transfer-encoding") == 0)
            chunked = true;
        names_len += fields[i].name_len;
    }
    named = tt_h1_connection_names_others(fields, n);
    if (n > RESP_FIELDS_ON_STACK)
        h2 = malloc(n * sizeof(*h2));
    if (names_len >= RESP_NAMES_ON_STACK)
        names = malloc(names_len + 1);
    if (h2 == NULL || names == NULL) {
        r = -ENOMEM;
        goto out;
    }
    names_len = 0;
    for (size_t i = 0; i < n; i++) {
        const struct tt_h1_header *f = &fields[i];
        char *name = names + names_len;

        if (hop_by_hop(f->name, f->name_len) ||
            (named && tt_h1_connection_names(fields, n, f->name, f->name_len)) ||
            (chunked && f->name_len == 14 && strcasecmp(f->name, "content-length") == 0))
            continue;
        tt_ascii_lower(name, f->name, f->name_len);
        names_len += f->name_len;
        h2[out++] = (struct tt_h2_header){name, f->name_len, f->value, f->value_len};
    }
    /* A response that cannot have a body (to HEAD, 204, 304) ends with its head; any
     * other's end is told by on_resp_end. */
    bodiless = tt_h1resp_bodiless(x->resp);
    x->responded = true;
    x->body_sent = !bodiless;
    r = x->io.respond(x->io.ud, status, h2, out, bodiless);
out:
    if (h2 != h2_stack)
        free(h2);
    if (names != names_stack)
        free(names);
    return r;
}

/* h1resp: a piece of the body. */
static int on_resp_body(void *ud, const char *data, size_t len)
{
    struct tt_h2h1 *x = ud;

    return x->body_sent && len > 0 ? x->io.body(x->io.ud, data, len) : 0;
}

/* h1resp: a response ended; the final one completes the translation. */
static int on_resp_end(void *ud, int status)
{
    struct tt_h2h1 *x = ud;

    if (status / 100 == 1)
        return 0;
    x->done = true;
    return x->body_sent ? x->io.end(x->io.ud) : 0;
}

/*
 * Allocates a translator; see h2h1.h.
 */
struct tt_h2h1 *tt_h2h1_new(const struct tt_h2h1_io *io)
{
    static const struct tt_h1resp_callbacks cb = {
        .on_head = on_resp_head,
        .on_end = on_resp_end,
        .on_body = on_resp_body,
    };
    struct tt_h2h1 *x = calloc(1, sizeof(*x));

    if (x == NULL)
        return NULL;
    x->io = *io;
    x->resp = tt_h1resp_new(&cb, x);
    if (x->resp == NULL) {
        free(x);
        return NULL;
    }
    tt_h1resp_keep_headers(x->resp);
    return x;
}

void tt_h2h1_free(struct tt_h2h1 *x)
{
    if (x == NULL)
        return;
    tt_h1resp_free(x->resp);
    free(x);
}

/*
 * The server's bytes; see h2h1.h. Everything up to the response's end is read; a byte
 * after it is not a response anybody asked for.
 */
int tt_h2h1_from_server(struct tt_h2h1 *x, const char *data, size_t len)
{
    size_t off = 0;

    while (off < len) {
        long n;

        if (x->done)
            return TT_E_HTTP;
        n = tt_h1resp_feed(x->resp, data + off, len - off);
        if (n < 0)
            return (int)n;
        if (n == 0 && !tt_h1resp_ready(x->resp))
            return TT_E_HTTP;
        off += (size_t)n;
    }
    return 0;
}

/*
 * The server closed; see h2h1.h.
 */
int tt_h2h1_server_eof(struct tt_h2h1 *x)
{
    int r;

    if (x->done)
        return 0;
    r = tt_h1resp_finish(x->resp);
    if (r < 0)
        return r;
    return x->done ? 0 : TT_E_HTTP;
}

bool tt_h2h1_reusable(const struct tt_h2h1 *x)
{
    return x->done && x->keep_alive && x->req_ended;
}

bool tt_h2h1_responded(const struct tt_h2h1 *x)
{
    return x->responded;
}

bool tt_h2h1_response_done(const struct tt_h2h1 *x)
{
    return x->done;
}
