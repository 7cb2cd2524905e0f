/* Fuzz target: the HTTP/1.x-to-HTTP/2 translator (http/h1h2.c) driven as the outbound
 * sidecar drives it. An input is a sequence of records, an op byte (op % 10) then, for the
 * ops that carry bytes, a length byte and that many bytes:
 *   0 app bytes (len, bytes): tt_h1h2_from_app while tt_h1h2_wants_app()
 *   1 the app's EOF
 *   2 resume (after a wait)
 *   3 respond (a, b): status {200, 204, 304, 404, 500}[a % 5]; a bit 3: Content-Length b;
 *     bit 4: end_stream; bit 5: fields to be left out (a pseudo-header, Connection, a value
 *     with CRLF in it) and one to keep; bit 6: a second, conflicting Content-Length
 *   4 a response body piece (len, bytes)
 *   5 the response's end
 *   6 the sidecar's own answer, 503
 *   7 rewind
 *   8 take_raw: the translator is finished
 *   9 the app's side breaks: the next to_app fails, and the caller tears down after it
 * on_request takes the next byte of the input (from wherever the cursor is): bits 0-2 its
 * answer (0, TT_H1H2_WAIT or an error), bits 3-5 a call made inside it (respond, answer,
 * take_raw, or the calls that must fail there), bit 6 makes the body's callbacks fail, bit 7
 * has on_end answer the request.
 *
 * Asserted (abort): no callback after take_raw succeeded or once tt_h1h2_done() was true
 * when the call began, none outside a call, and the request's callbacks only inside the
 * calls that may read the app's bytes (never inside respond, response_body or take_raw,
 * nor inside a call made from a callback); on_body and on_end only after a request's
 * on_request returned 0 (not while it waits, not for an upgrade) and before its on_end;
 * on_request again for the same request only inside rewind; every return value is 0 or
 * a documented error; and what goes to the app parses as a sequence of HTTP/1.1 responses
 * framed as their heads say (no head inside a chunked body, nothing after a response that
 * said Connection: close, no pseudo-header or injected field). Nothing may crash, hang or
 * leak: the translator is freed at the end of every input. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/errors.h"
#include "http/h1h2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The errors the fuzzer's own callbacks return, apart from the translator's own codes. */
#define ERR_REQUEST (-EIO)
#define ERR_BODY    (-EPIPE)
#define ERR_APP     (-ECONNRESET)

/* Which API call is running (what its callbacks may be). */
enum call {
    C_NONE,   /* none: no callback may fire */
    C_READ,   /* from_app, app_eof, resume, response_end, answer, rewind: the reader may run */
    C_WRITE,  /* respond, response_body: only to_app */
    C_RAW,    /* take_raw: nothing */
    C_NESTED, /* a call made inside a callback: only to_app */
};

/* Where the output parser stands in the bytes written to the app. */
enum out_state {
    O_HEAD,       /* a response head (or nothing more) */
    O_LENGTH,     /* a Content-Length body: `left` bytes */
    O_CHUNK_SIZE, /* a chunk-size line */
    O_CHUNK_DATA, /* `left` bytes of chunk data */
    O_CHUNK_CRLF, /* the CRLF after chunk data: `left` bytes of it */
    O_LAST_CRLF,  /* the CRLF after the last chunk (no trailers are written) */
    O_CLOSE,      /* a body delimited by the close: everything */
    O_OVER,       /* a response said Connection: close and is complete: nothing more */
};

/* Where the current request's callbacks stand. */
enum phase {
    P_NONE,    /* no on_request yet (or the request's on_end ran) */
    P_BODY,    /* on_request returned 0: on_body, on_end may follow */
    P_WAIT,    /* on_request returned TT_H1H2_WAIT: nothing until resume or rewind */
    P_BLOCKED, /* on_request failed, or the request is an upgrade: nothing until rewind */
};

struct fz {
    const uint8_t *data;
    size_t size, pos; /* the cursor over the input */
    struct tt_h1h2 *x;

    enum call call;
    bool done_before; /* tt_h1h2_done() was true when the running call began */
    bool stopped;     /* take_raw succeeded */
    bool fail_body;   /* on_body and on_end return ERR_BODY */
    bool end_answer;  /* on_end answers the request (503) */
    bool app_broken;  /* to_app fails (once failed, the caller tears down) */
    bool app_failed;  /* to_app returned an error */
    bool rewinding;   /* inside tt_h1h2_rewind: on_request may fire again */
    enum phase phase;
    bool head_req; /* the current request is a HEAD: its response has no body */

    /* The output parser. */
    enum out_state out;
    uint64_t left;
    char head[8192];
    size_t head_len;
    bool chunk_digits; /* a chunk-size line has a digit */
    bool chunk_cr;     /* a chunk-size line's CR was seen */
};

static int next_byte(struct fz *f)
{
    return f->pos < f->size ? f->data[f->pos++] : 0;
}

/* ---- the bytes written to the app ---- */

/* Whether the head's line (of len bytes, no CRLF) is the field `name`; sets *value. */
static bool field_is(const char *line, size_t len, const char *name, const char **value,
                     size_t *vlen)
{
    size_t n = strlen(name);

    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return false;
    *value = line + n + 1;
    *vlen = len - n - 1;
    while (*vlen > 0 && **value == ' ') {
        (*value)++;
        (*vlen)--;
    }
    return true;
}

/* A complete response head is in f->head (ending with CRLF CRLF): checks it and sets the
 * parser for its body. */
static void parse_head(struct fz *f)
{
    const char *h = f->head, *end = f->head + f->head_len - 2, *line;
    int status;
    long long length = -1;
    bool chunked = false, close = false, bodiless;

    if (f->head_len < 16 || memcmp(h, "HTTP/1.1 ", 9) != 0 || h[9] < '1' || h[9] > '5' ||
        h[10] < '0' || h[10] > '9' || h[11] < '0' || h[11] > '9' || h[12] != ' ')
        abort();
    status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    line = (const char *)memchr(h, '\n', f->head_len) + 1;
    while (line < end) {
        const char *eol = memchr(line, '\r', (size_t)(end - line)), *v;
        size_t len, vlen;

        if (eol == NULL || eol[1] != '\n')
            abort(); /* a bare CR or LF inside a field: a split response */
        len = (size_t)(eol - line);
        if (len == 0 || line[0] == ':' || memchr(line, ':', len) == NULL)
            abort();
        if (field_is(line, len, "x-injected", &v, &vlen))
            abort();
        if (field_is(line, len, "content-length", &v, &vlen)) {
            if (length >= 0 || vlen == 0 || vlen > 18)
                abort();
            length = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    abort();
                length = length * 10 + (v[i] - '0');
            }
        } else if (field_is(line, len, "transfer-encoding", &v, &vlen)) {
            if (chunked || vlen != 7 || strncasecmp(v, "chunked", 7) != 0)
                abort();
            chunked = true;
        } else if (field_is(line, len, "connection", &v, &vlen)) {
            close = vlen == 5 && strncasecmp(v, "close", 5) == 0;
        }
        line = eol + 2;
    }
    f->head_len = 0;
    f->left = 0;
    if (status < 200) {
        /* The only interim response written: 100 Continue, without fields. */
        if (status != 100 || length >= 0 || chunked || close)
            abort();
        return;
    }
    bodiless = f->head_req || status == 204 || status == 304;
    f->head_req = false;
    if (chunked && (length >= 0 || bodiless))
        abort();
    if (bodiless || (length == 0 && !chunked)) {
        f->out = close ? O_OVER : O_HEAD;
    } else if (chunked) {
        f->out = O_CHUNK_SIZE;
    } else if (length > 0) {
        f->out = O_LENGTH;
        f->left = (uint64_t)length;
    } else {
        /* Delimited by the close: the head must say so. */
        if (!close)
            abort();
        f->out = O_CLOSE;
    }
    if (close && f->out != O_CLOSE && f->out != O_OVER)
        f->left |= UINT64_C(1) << 63; /* remembered: O_OVER once this body is complete */
}

/* The current response's body is complete. */
static void body_complete(struct fz *f)
{
    f->out = (f->left & (UINT64_C(1) << 63)) ? O_OVER : O_HEAD;
    f->left = 0;
}

/* Runs the parser over bytes written to the app. */
static void parse_out(struct fz *f, const char *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = d[i];
        uint64_t close_bit = f->left & (UINT64_C(1) << 63), count = f->left & ~close_bit;

        switch (f->out) {
        case O_HEAD:
            if (f->head_len == sizeof(f->head))
                abort(); /* no head the fuzzer causes is this long */
            f->head[f->head_len++] = c;
            /* Checked as soon as it can be, so that a stray byte fails here. */
            if (f->head_len <= 9 && c != "HTTP/1.1 "[f->head_len - 1])
                abort();
            if (f->head_len >= 4 && memcmp(f->head + f->head_len - 4, "\r\n\r\n", 4) == 0)
                parse_head(f);
            break;
        case O_LENGTH:
            if (--count == 0)
                body_complete(f);
            else
                f->left = close_bit | count;
            break;
        case O_CHUNK_SIZE:
            if (f->chunk_cr) {
                if (c != '\n' || !f->chunk_digits)
                    abort();
                f->chunk_cr = f->chunk_digits = false;
                if (count == 0) {
                    f->out = O_LAST_CRLF;
                    f->left = close_bit | 2;
                } else {
                    f->out = O_CHUNK_DATA;
                }
            } else if (c == '\r') {
                f->chunk_cr = true;
            } else {
                int v = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
                if (v < 0 || count > 0xffffff)
                    abort(); /* not a chunk size: a head inside the chunked body, say */
                f->left = close_bit | (count * 16 + (uint64_t)v);
                f->chunk_digits = true;
            }
            break;
        case O_CHUNK_DATA:
            if (--count == 0) {
                f->out = O_CHUNK_CRLF;
                count = 2;
            }
            f->left = close_bit | count;
            break;
        case O_CHUNK_CRLF:
        case O_LAST_CRLF:
            if (c != (count == 2 ? '\r' : '\n'))
                abort();
            if (--count > 0)
                f->left = close_bit | count;
            else if (f->out == O_LAST_CRLF)
                body_complete(f);
            else {
                f->out = O_CHUNK_SIZE;
                f->left = close_bit;
            }
            break;
        case O_CLOSE:
            break;
        case O_OVER:
            abort(); /* a byte after the response that closes the connection */
        }
    }
}

/* ---- the callbacks ---- */

/* Every callback: it may fire now at all. `reader`: it is one of the request's. */
static void check_callback(struct fz *f, bool reader)
{
    if (f->stopped || f->done_before || f->call == C_NONE || f->call == C_RAW)
        abort();
    if (reader && f->call != C_READ)
        abort();
}

/* Inside a callback, the calls that must fail there. */
static void probe(struct fz *f)
{
    struct tt_h1h2 *x = f->x;

    if (tt_h1h2_from_app(x, "GET / HTTP/1.1\r\n", 16) != -EINVAL || tt_h1h2_app_eof(x) != -EINVAL ||
        tt_h1h2_resume(x) != -EINVAL || tt_h1h2_rewind(x) != -EAGAIN)
        abort();
}

/* Inside a callback, a call that the contract allows there. */
static void nested(struct fz *f, int what)
{
    static const struct tt_h2_header cl0 = {"content-length", 14, "0", 1};
    enum call saved = f->call;
    struct tt_buf raw;
    int r;

    f->call = C_NESTED;
    switch (what) {
    case 4:
        r = tt_h1h2_respond(f->x, 200, &cl0, 1, true);
        if (r > 0 || (r < 0 && r != -EINVAL && r != -ENOMEM && r != ERR_APP))
            abort();
        break;
    case 5:
        r = tt_h1h2_answer(f->x, 503, "no_upstream", NULL);
        if (r > 0)
            abort();
        break;
    case 6:
        tt_buf_init(&raw);
        r = tt_h1h2_take_raw(f->x, &raw);
        if (r == 0)
            f->stopped = true;
        else if (r != -EAGAIN && r != -ENOMEM)
            abort();
        tt_buf_done(&raw);
        break;
    case 7:
        probe(f);
        break;
    default:
        break;
    }
    f->call = saved;
}

static int on_request(void *ud, const struct tt_h1h2_request *rq)
{
    struct fz *f = ud;
    int b = next_byte(f), ret;

    check_callback(f, true);
    /* Again for the same request (its on_end not run) only when it is read again. */
    if (f->phase != P_NONE && !f->rewinding)
        abort();
    /* RFC 9113 §8.5: CONNECT has no :path; every other request has one. */
    if (rq->method == NULL || rq->authority == NULL ||
        (rq->path == NULL) != (strcmp(rq->method, "CONNECT") == 0))
        abort();
    for (size_t i = 0; i < rq->n_fields; i++) {
        const struct tt_h2_header *h = &rq->fields[i];
        if (h->name_len == 0 || strlen(h->name) != h->name_len)
            abort();
        for (size_t k = 0; k < h->name_len; k++) {
            if (h->name[k] >= 'A' && h->name[k] <= 'Z')
                abort();
        }
    }
    f->head_req = strcmp(rq->method, "HEAD") == 0;
    f->fail_body = b & 0x40;
    f->end_answer = b & 0x80;
    switch (b & 7) {
    case 3:
    case 4:
        ret = TT_H1H2_WAIT;
        break;
    case 5:
        ret = ERR_REQUEST;
        break;
    default:
        ret = 0;
        break;
    }
    f->phase = ret != 0 || rq->upgrade ? (ret == TT_H1H2_WAIT && !rq->upgrade ? P_WAIT : P_BLOCKED)
                                       : P_BODY;
    nested(f, (b >> 3) & 7);
    return ret;
}

static int on_body(void *ud, const char *data, size_t len)
{
    struct fz *f = ud;

    check_callback(f, true);
    if (f->phase != P_BODY || data == NULL || len == 0)
        abort();
    return f->fail_body ? ERR_BODY : 0;
}

static int on_end(void *ud)
{
    struct fz *f = ud;

    check_callback(f, true);
    if (f->phase != P_BODY)
        abort();
    f->phase = P_NONE;
    if (f->end_answer)
        nested(f, 5); /* complete: the next request may be read once the reader returns */
    return f->fail_body ? ERR_BODY : 0;
}

static int to_app(void *ud, const char *data, size_t len)
{
    struct fz *f = ud;

    check_callback(f, false);
    if (data == NULL || len == 0)
        abort();
    if (f->app_broken) {
        f->app_failed = true;
        return ERR_APP;
    }
    parse_out(f, data, len);
    return 0;
}

/* ---- the caller ---- */

/* Every return value is 0 or one of the errors some call documents; none is positive. */
static void check_ret(int r)
{
    if (r == 0 || r == TT_E_HTTP || r == -EINVAL || r == -EAGAIN || r == -ENOMEM || r == -ENOBUFS ||
        r == ERR_REQUEST || r == ERR_BODY || r == ERR_APP)
        return;
    abort();
}

/* Starts an API call of the given kind. */
static void begin(struct fz *f, enum call c)
{
    f->call = c;
    f->done_before = tt_h1h2_done(f->x);
}

/* Ends it: checks what it returned. */
static void end(struct fz *f, int r)
{
    f->call = C_NONE;
    check_ret(r);
    /* A refusal (or a request cut short by the EOF) ends the connection, and says why. */
    if (r == TT_E_HTTP && (!tt_h1h2_done(f->x) || tt_h1h2_reason(f->x) == TT_H1_R_NONE))
        abort();
    /* Once done, always done. */
    if (f->done_before && !tt_h1h2_done(f->x))
        abort();
}

static void respond(struct fz *f)
{
    int a = next_byte(f), b = next_byte(f);
    static const int statuses[] = {200, 204, 304, 404, 500};
    char len[12], other[12];
    struct tt_h2_header fields[8];
    size_t n = 0;
    int r;

    snprintf(len, sizeof(len), "%d", b);
    snprintf(other, sizeof(other), "%d", b + 1);
    if (a & 0x08)
        fields[n++] = (struct tt_h2_header){"content-length", 14, len, strlen(len)};
    if (a & 0x20) {
        fields[n++] = (struct tt_h2_header){":status", 7, "200", 3};
        fields[n++] = (struct tt_h2_header){"connection", 10, "keep-alive", 10};
        fields[n++] = (struct tt_h2_header){"x-bad", 5, "a\r\nx-injected: 1", 17};
        fields[n++] = (struct tt_h2_header){"x-injected\r\n", 12, "1", 1};
        fields[n++] = (struct tt_h2_header){"x-ok", 4, "yes", 3};
    }
    if (a & 0x40)
        fields[n++] = (struct tt_h2_header){"Content-Length", 14, other, strlen(other)};
    begin(f, C_WRITE);
    r = tt_h1h2_respond(f->x, statuses[a % 5], n > 0 ? fields : NULL, n, a & 0x10);
    end(f, r);
    if (r == TT_E_HTTP || r == ERR_REQUEST || r == ERR_BODY || r == -EAGAIN || r == -ENOBUFS)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct tt_h1h2_io io_template = {
        .on_request = on_request, .on_body = on_body, .on_end = on_end, .to_app = to_app};
    struct tt_h1h2_io io = io_template;
    struct fz *f = calloc(1, sizeof(*f));
    struct tt_buf raw;

    if (f == NULL)
        return 0;
    f->data = data;
    f->size = size;
    io.ud = f;
    tt_buf_init(&raw);
    f->x = tt_h1h2_new(&io, "svc.local:8080");
    if (f->x == NULL)
        abort();
    while (f->pos < f->size && !f->stopped && !f->app_failed) {
        int op = data[f->pos++] % 10, r = 0;
        size_t len = 0;
        const char *bytes = NULL;

        if (op == 0 || op == 4) {
            len = next_byte(f);
            if (len > f->size - f->pos)
                len = f->size - f->pos;
            bytes = (const char *)data + f->pos;
            f->pos += len;
        }
        switch (op) {
        case 0:
            /* A caller stops reading the app while the translator holds enough. */
            if (!tt_h1h2_wants_app(f->x))
                break;
            begin(f, C_READ);
            r = tt_h1h2_from_app(f->x, bytes, len);
            end(f, r);
            break;
        case 1:
            begin(f, C_READ);
            r = tt_h1h2_app_eof(f->x);
            end(f, r);
            break;
        case 2: {
            /* The body may flow inside the call; nothing changed when it is refused. */
            enum phase saved = f->phase;

            if (f->phase == P_WAIT)
                f->phase = P_BODY;
            begin(f, C_READ);
            r = tt_h1h2_resume(f->x);
            end(f, r);
            if (r == -EINVAL)
                f->phase = saved;
            break;
        }
        case 3:
            respond(f);
            break;
        case 4:
            begin(f, C_WRITE);
            r = tt_h1h2_response_body(f->x, bytes, len);
            end(f, r);
            if (r != 0 && r != -EINVAL && r != ERR_APP)
                abort();
            break;
        case 5:
            begin(f, C_READ);
            r = tt_h1h2_response_end(f->x);
            end(f, r);
            break;
        case 6:
            begin(f, C_READ);
            r = tt_h1h2_answer(f->x, 503, "no_upstream", (f->pos & 1) ? "r-1" : NULL);
            end(f, r);
            break;
        case 7: {
            /* on_request fires again inside: the request is read anew. Nothing changed
             * when it is refused. */
            enum phase saved = f->phase;

            f->phase = P_NONE;
            f->rewinding = true;
            begin(f, C_READ);
            r = tt_h1h2_rewind(f->x);
            end(f, r);
            f->rewinding = false;
            if (r == -EAGAIN || r == -EINVAL)
                f->phase = saved;
            break;
        }
        case 8:
            begin(f, C_RAW);
            r = tt_h1h2_take_raw(f->x, &raw);
            end(f, r);
            if (r == 0)
                f->stopped = true;
            else if (r != -EAGAIN && r != -ENOMEM)
                abort();
            tt_buf_done(&raw);
            break;
        case 9:
            f->app_broken = true;
            break;
        }
    }
    if (f->stopped) {
        /* Every call but free fails now, and nothing fires. */
        begin(f, C_NONE);
        if (tt_h1h2_from_app(f->x, "x", 1) != -EINVAL || tt_h1h2_app_eof(f->x) != -EINVAL ||
            tt_h1h2_resume(f->x) != -EINVAL || tt_h1h2_response_end(f->x) != -EINVAL ||
            tt_h1h2_rewind(f->x) != -EINVAL || tt_h1h2_wants_app(f->x) ||
            tt_h1h2_respond(f->x, 200, NULL, 0, true) != -EINVAL ||
            tt_h1h2_response_body(f->x, "x", 1) != -EINVAL ||
            tt_h1h2_answer(f->x, 503, "no_upstream", NULL) != -EINVAL ||
            tt_h1h2_take_raw(f->x, &raw) != -EINVAL)
            abort();
        end(f, 0);
    }
    tt_buf_done(&raw);
    tt_h1h2_free(f->x);
    free(f);
    return 0;
}
