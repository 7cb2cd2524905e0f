/* The HTTP/1.x request reader (see h1.h). http-parser does the parsing; this module adds
 * what Debian's lenient build of it lets through and a proxy must not. Two small scanners
 * run ahead of http-parser over the raw bytes, the head's (line endings, obs-fold,
 * request-line spacing, header name and value bytes, bounds) and a chunked body's (it
 * passes one unit at a time: a framing line, a chunk's data, the CRLF after it), and let
 * http-parser see only the bytes before the first bad one: whichever of the two objects
 * to the earliest byte names the reason, however the input was split. Complete header
 * fields are then checked (Content-Length, Transfer-Encoding, Host, the target).
 * http-parser is paused at every event (head, body piece, end) so that events reach the
 * caller from tt_h1_feed's own loop, after these checks.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/util.h"
#include "http/h1.h"

#define H1_HEAD_MAX    (64 * 1024)
#define H1_MAX_HEADERS 100

enum h1_state {
    H1_S_HEAD,     /* before or inside a request head: the raw-head scanner runs first */
    H1_S_BODY,     /* after a head until the request's end */
    H1_S_DONE,     /* a request without keep-alive ended: nothing more is read */
    H1_S_UPGRADED, /* a CONNECT or upgrade request ended: the rest is not HTTP */
    H1_S_FAILED,   /* refused or a callback failed: every feed returns r->error */
};

/* The event a paused http-parser left for tt_h1_feed to deliver. */
enum h1_event { EV_NONE, EV_HEAD, EV_BODY, EV_END };

/* A header field, by offsets into its arena (the arena may move while it grows). */
struct hdr {
    size_t name, name_len, value, value_len;
    bool has_value; /* a value piece was seen (an empty value gets none) */
};

/* Bytes and fields of one header section: the head's, or the trailers'. */
struct arena {
    char *buf;
    size_t len, cap, max;
    struct hdr *hdrs;
    size_t n, cap_hdrs;
    struct tt_h1_header *out; /* the caller's view, built when delivered */
};

struct tt_h1 {
    http_parser parser;
    size_t head_max;
    unsigned max_headers;
    struct tt_h1_callbacks cb;
    void *ud;
    enum h1_state state;
    enum tt_h1_reason reason;
    long error;

    /* The raw-head scanner (RFC 9112 §2.2, §3, §5.2), per request. */
    struct head_scan {
        bool started;          /* a byte of the request line was seen */
        bool prev_cr;          /* the last byte was CR */
        bool done;             /* the empty line ending the head was seen */
        unsigned line;         /* 0: the request line */
        size_t col;            /* bytes in the current line before its CR */
        size_t bytes;          /* head bytes so far, leading empty lines included */
        unsigned spaces;       /* SP in the request line */
        char last;             /* the previous byte of the current line */
        bool colon;            /* the current header line's colon was seen */
        enum tt_h1_reason err; /* the first bad byte's reason (the scan stopped there) */
    } hs;
    /* Head bytes the scanner passed that http-parser has not consumed yet (it stops
     * before the last LF when paused at the head's end): not chunk framing. */
    size_t head_left;

    /* The request being read. */
    struct arena head_a, trail_a;
    struct arena *cur; /* where header callbacks go: head_a, then trail_a */
    bool in_value;     /* the last header callback was a value piece */
    size_t url_off, url_len;
    bool url_open;
    struct tt_h1_head head;

    /* The chunk framing scanner (RFC 9112 §7.1): like the head's, it runs before
     * http-parser and passes it one unit at a time (a framing line, a chunk's data, the
     * CRLF after the data), so that it knows which bytes are framing. */
    bool chunked;
    struct {
        enum fs_mode {
            FS_LINE, /* a chunk-size line, a trailer line or the empty last line */
            FS_DATA, /* chunk_left bytes of data */
            FS_CRLF, /* exactly CR LF after a chunk's data */
        } mode;
        bool prev_cr;
        size_t col;        /* bytes in the current line before its CR */
        size_t line_bytes; /* bytes of the current line, against head_max */
        size_t bytes;      /* bytes of the trailer section, against head_max */
        enum tt_h1_reason err;
    } fs;
    uint64_t chunk_left; /* data bytes of the current chunk not yet passed on */

    /* Set by the parser callbacks, delivered by tt_h1_feed. */
    enum h1_event ev;
    const char *body_at;
    size_t body_len;
};

/* ---- names and statuses ---- */

static const char *const reason_names[] = {
    [TT_H1_R_NONE] = "none",
    [TT_H1_R_MALFORMED] = "malformed",
    [TT_H1_R_BARE_LF] = "bare_lf",
    [TT_H1_R_BARE_CR] = "bare_cr",
    [TT_H1_R_OBS_FOLD] = "obs_fold",
    [TT_H1_R_CL_AND_TE] = "content_length_and_transfer_encoding",
    [TT_H1_R_DUP_CL] = "duplicate_content_length",
    [TT_H1_R_BAD_CL] = "bad_content_length",
    [TT_H1_R_BAD_TE] = "bad_transfer_encoding",
    [TT_H1_R_BAD_CHUNK] = "bad_chunk",
    [TT_H1_R_HEAD_TOO_LARGE] = "header_section_too_large",
    [TT_H1_R_TOO_MANY_HEADERS] = "too_many_headers",
    [TT_H1_R_BAD_HEADER_NAME] = "bad_header_name",
    [TT_H1_R_BAD_HEADER_VALUE] = "bad_header_value",
    [TT_H1_R_BAD_REQUEST_LINE] = "bad_request_line",
    [TT_H1_R_BAD_VERSION] = "bad_version",
    [TT_H1_R_BAD_TARGET] = "bad_target",
    [TT_H1_R_BAD_HOST] = "bad_host",
    [TT_H1_R_BAD_TRAILER] = "bad_trailer",
};

/* The reason's name: the x-tether-reason value. */
const char *tt_h1_reason_name(enum tt_h1_reason reason)
{
    if ((unsigned)reason < sizeof(reason_names) / sizeof(reason_names[0]))
        return reason_names[reason];
    return "malformed";
}

/* RFC 9110 §9.2.2 (h1.h). */
bool tt_h1_method_idempotent(const char *method)
{
    static const char *const methods[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};

    for (size_t i = 0; i < TT_ARRAY_SIZE(methods); i++) {
        if (strcmp(method, methods[i]) == 0)
            return true;
    }
    return false;
}

/* The status a refusal for `reason` is answered with. */
int tt_h1_reason_status(enum tt_h1_reason reason)
{
    return reason == TT_H1_R_HEAD_TOO_LARGE || reason == TT_H1_R_TOO_MANY_HEADERS ? 431 : 400;
}

/* The reason phrase of a status code (RFC 9110 §15). */
const char *tt_h1_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 421:
        return "Misdirected Request";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ---- arenas ---- */

static void arena_reset(struct arena *a)
{
    a->len = 0;
    a->n = 0;
}

static void arena_done(struct arena *a)
{
    free(a->buf);
    free(a->hdrs);
    free(a->out);
}

/* Appends n bytes; -1 when that would pass the arena's bound or memory is short. */
static int arena_put(struct arena *a, const char *s, size_t n)
{
    if (n > a->max - a->len)
        return -1;
    if (a->len + n > a->cap) {
        size_t cap = a->cap ? a->cap : 1024;
        char *b;

        while (cap < a->len + n)
            cap *= 2;
        if (cap > a->max)
            cap = a->max;
        b = realloc(a->buf, cap);
        if (b == NULL)
            return -1;
        a->buf = b;
        a->cap = cap;
    }
    memcpy(a->buf + a->len, s, n);
    a->len += n;
    return 0;
}

/* ---- checks ---- */

/* RFC 9110 §5.6.2 tchar: ALPHA, DIGIT and "!#$%&'*+-.^_`|~", by table (the head scanner
 * asks for every byte of every header name). */
static const bool tchar[256] = {
    ['!'] = true,         ['#'] = true,         ['$'] = true,         ['%'] = true, ['&'] = true,
    ['\''] = true,        ['*'] = true,         ['+'] = true,         ['-'] = true, ['.'] = true,
    ['^'] = true,         ['_'] = true,         ['`'] = true,         ['|'] = true, ['~'] = true,
    ['0' ... '9'] = true, ['A' ... 'Z'] = true, ['a' ... 'z'] = true,
};

/* RFC 9110 §5.6.2 tchar (h1.h). */
bool tt_h1_is_tchar(unsigned char c)
{
    return tchar[c];
}

/* RFC 9110 §5.6.2 token (h1.h): one call per name, not per byte. */
bool tt_h1_is_token(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;

    for (size_t i = 0; i < n; i++) {
        if (!tchar[u[i]])
            return false;
    }
    return n > 0;
}

/* Appends "name: value\r\n" (h1.h). */
int tt_h1_put_field(struct tt_buf *b, const char *name, size_t nlen, const char *value, size_t vlen)
{
    uint8_t *p = tt_buf_reserve(b, nlen + vlen + 4); /* one reservation: a head has many */

    if (p == NULL)
        return -ENOMEM;
    memcpy(p, name, nlen);
    p += nlen;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, value, vlen);
    p += vlen;
    *p++ = '\r';
    *p = '\n';
    tt_buf_commit(b, nlen + vlen + 4);
    return 0;
}

/* RFC 9110 §5.5: field-content is VCHAR, obs-text, SP and HTAB. */
static bool value_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static bool name_is(const struct arena *a, const struct hdr *h, const char *name)
{
    return h->name_len == strlen(name) && strncasecmp(a->buf + h->name, name, h->name_len) == 0;
}

static int refuse(struct tt_h1 *r, enum tt_h1_reason reason)
{
    if (r->reason == TT_H1_R_NONE)
        r->reason = reason;
    return -1;
}

/* ---- the raw-head scanner ---- */

/* The length of the run at p[0..n) (at most `room` bytes) of bytes inside a line that the
 * byte-by-byte scan below would pass changing nothing but the line's column and last byte:
 * in the request line, any byte above SP but DEL; in a name, token characters; in a value,
 * SP, HTAB and any byte from SP up but DEL. Most of a head is such runs. */
static size_t plain_run(const struct head_scan *hs, const char *p, size_t n, size_t room)
{
    const unsigned char *u = (const unsigned char *)p;
    size_t i = 0;

    if (n > room)
        n = room;
    if (hs->line == 0) {
        while (i < n && u[i] > 0x20 && u[i] != 0x7f)
            i++;
    } else if (hs->colon) {
        while (i < n && (u[i] >= 0x20 || u[i] == '\t') && u[i] != 0x7f)
            i++;
    } else {
        while (i < n && tchar[u[i]])
            i++;
    }
    return i;
}

/* Scans head bytes data[0..len) of the current request: line endings, obs-fold, the
 * request line's spacing, header names (tokens up to the colon) and values (no control
 * characters but HTAB), and the bounds. Returns how many bytes are clean: all of them, or
 * up to and including the LF of the empty line that ends the head, or up to the first
 * bad byte, whose reason it leaves in r->hs.err. The caller lets http-parser parse the
 * clean bytes first, so that whichever of the two objects to the earliest byte names
 * the reason, however the bytes were split. */
static size_t scan_head(struct tt_h1 *r, const char *data, size_t len)
{
    /* The state in locals (registers) for the loop, stored back once at the end. */
    struct head_scan hs = r->hs;
    const size_t head_max = r->head_max;
    const unsigned max_headers = r->max_headers;
    size_t i;

    for (i = 0; i < len && !hs.done && hs.err == TT_H1_R_NONE; i++) {
        enum tt_h1_reason bad = TT_H1_R_NONE;
        unsigned char c;

        if (hs.started && hs.col > 0 && !hs.prev_cr) {
            size_t run = plain_run(&hs, data + i, len - i, head_max - hs.bytes);

            if (run > 0) {
                hs.bytes += run;
                hs.col += run;
                hs.last = data[i + run - 1];
                i += run;
                if (i == len)
                    break;
            }
        }
        c = (unsigned char)data[i];
        if (hs.bytes + 1 > head_max) {
            bad = TT_H1_R_HEAD_TOO_LARGE;
        } else if (hs.prev_cr && c != '\n') {
            bad = TT_H1_R_BARE_CR;
        } else if (c == '\r' && hs.started && hs.line > 0 && hs.col > 0 && !hs.colon) {
            bad = TT_H1_R_BAD_HEADER_NAME; /* a line without a colon */
        } else if (c == '\n') {
            if (!hs.prev_cr)
                bad = TT_H1_R_BARE_LF;
            else if (hs.started && hs.line == 0 && (hs.spaces != 2 || hs.last == ' '))
                bad = TT_H1_R_BAD_REQUEST_LINE;
        } else if (c != '\r' && hs.line == 0) {
            /* Single spaces between three non-empty parts, nothing else below 0x21. */
            if (c < 0x20 || c == 0x7f)
                bad = TT_H1_R_BAD_REQUEST_LINE;
            else if (c == ' ' && (hs.col == 0 || hs.last == ' ' || hs.spaces >= 2))
                bad = TT_H1_R_BAD_REQUEST_LINE;
        } else if (c != '\r') {
            if (hs.col == 0 && (c == ' ' || c == '\t'))
                bad = TT_H1_R_OBS_FOLD;
            else if (hs.col == 0 && hs.line > max_headers)
                bad = TT_H1_R_TOO_MANY_HEADERS;
            else if (!hs.colon && c == ':' && hs.col == 0)
                bad = TT_H1_R_BAD_HEADER_NAME;
            else if (!hs.colon && c != ':' && !tchar[c])
                bad = TT_H1_R_BAD_HEADER_NAME;
            else if (hs.colon && ((c < 0x20 && c != '\t') || c == 0x7f))
                bad = TT_H1_R_BAD_HEADER_VALUE;
        }
        if (bad != TT_H1_R_NONE) {
            hs.err = bad;
            break;
        }
        hs.bytes++;
        if (c == '\n') {
            hs.prev_cr = false;
            if (!hs.started)
                continue; /* an empty line before the request line (RFC 9112 §2.2) */
            if (hs.col == 0 && hs.line > 0)
                hs.done = true;
            hs.line++;
            hs.col = 0;
            hs.colon = false;
            hs.last = '\0';
            continue;
        }
        if (c == '\r') {
            hs.prev_cr = true;
            continue;
        }
        hs.started = true;
        if (hs.line == 0 && c == ' ')
            hs.spaces++;
        if (hs.line > 0 && c == ':')
            hs.colon = true;
        hs.col++;
        hs.last = (char)c;
    }
    r->hs = hs;
    return i;
}

/* ---- the chunk framing scanner ---- */

/* Passes the next unit of a chunked body in data[0..len): the head's last bytes that
 * http-parser left (not framing), a chunk's data, the CRLF after it, or one framing line
 * (chunk size and extensions, a trailer, the last empty line) checked for bare CR and LF,
 * obs-fold and the byte bounds (a line, and the trailer section, as a head). Returns how many bytes
 * may go to http-parser; a bad byte stops the count before it and leaves its reason in r->fs.err.
 */
static size_t scan_chunked(struct tt_h1 *r, const char *data, size_t len)
{
    size_t i;

    if (r->head_left > 0)
        return r->head_left < len ? r->head_left : len;
    switch (r->fs.mode) {
    case FS_DATA:
        return r->chunk_left < len ? (size_t)r->chunk_left : len;
    case FS_CRLF:
        for (i = 0; i < len; i++) {
            if (data[i] != (r->fs.prev_cr ? '\n' : '\r')) {
                r->fs.err = TT_H1_R_BAD_CHUNK;
                return i;
            }
            if (r->fs.prev_cr) {
                r->fs.prev_cr = false;
                r->fs.mode = FS_LINE;
                return i + 1;
            }
            r->fs.prev_cr = true;
        }
        return i;
    case FS_LINE:
        break;
    }
    for (i = 0; i < len; i++) {
        char c = data[i];
        enum tt_h1_reason bad = TT_H1_R_NONE;

        if (r->fs.line_bytes + 1 > r->head_max ||
            (r->cur == &r->trail_a && r->fs.bytes + 1 > r->head_max))
            bad = TT_H1_R_HEAD_TOO_LARGE;
        else if (r->fs.prev_cr && c != '\n')
            bad = TT_H1_R_BARE_CR;
        else if (c == '\n' && !r->fs.prev_cr)
            bad = TT_H1_R_BARE_LF;
        else if (r->fs.col == 0 && (c == ' ' || c == '\t'))
            bad = TT_H1_R_OBS_FOLD;
        if (bad != TT_H1_R_NONE) {
            r->fs.err = bad;
            return i;
        }
        r->fs.line_bytes++;
        if (r->cur == &r->trail_a)
            r->fs.bytes++;
        if (c == '\n') {
            r->fs.prev_cr = false;
            r->fs.col = 0;
            r->fs.line_bytes = 0;
            return i + 1;
        }
        if (c == '\r')
            r->fs.prev_cr = true;
        else
            r->fs.col++;
    }
    return i;
}

/* ---- header fields ---- */

/* Ends the current header field of the current arena: NUL-terminates its name and value,
 * trims the value's whitespace and checks both. For the head, also counts the fields
 * that frame the message. */
static int finish_field(struct tt_h1 *r)
{
    struct arena *a = r->cur;
    struct hdr *h;

    if (a->n == 0)
        return 0;
    h = &a->hdrs[a->n - 1];
    if (!h->has_value) {
        if (arena_put(a, "", 1) != 0)
            return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
        h->value = a->len;
        h->value_len = 0;
        h->has_value = true;
    }
    if (arena_put(a, "", 1) != 0)
        return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
    while (h->value_len > 0 && (a->buf[h->value] == ' ' || a->buf[h->value] == '\t')) {
        h->value++;
        h->value_len--;
    }
    while (h->value_len > 0 && (a->buf[h->value + h->value_len - 1] == ' ' ||
                                a->buf[h->value + h->value_len - 1] == '\t'))
        h->value_len--;
    a->buf[h->value + h->value_len] = '\0';
    if (h->name_len == 0)
        return refuse(r, a == &r->trail_a ? TT_H1_R_BAD_TRAILER : TT_H1_R_BAD_HEADER_NAME);
    for (size_t i = 0; i < h->name_len; i++) {
        if (!tt_h1_is_tchar((unsigned char)a->buf[h->name + i]))
            return refuse(r, a == &r->trail_a ? TT_H1_R_BAD_TRAILER : TT_H1_R_BAD_HEADER_NAME);
    }
    if (!value_ok(a->buf + h->value, h->value_len))
        return refuse(r, a == &r->trail_a ? TT_H1_R_BAD_TRAILER : TT_H1_R_BAD_HEADER_VALUE);
    return 0;
}

/* Starts a new header field in the current arena. */
static int start_field(struct tt_h1 *r)
{
    struct arena *a = r->cur;

    if (a->n >= r->max_headers)
        return refuse(r, TT_H1_R_TOO_MANY_HEADERS);
    if (a->n == a->cap_hdrs) {
        size_t cap = a->cap_hdrs ? a->cap_hdrs * 2 : 16;
        struct hdr *h = realloc(a->hdrs, cap * sizeof(*h));

        if (h == NULL)
            return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
        a->hdrs = h;
        a->cap_hdrs = cap;
    }
    a->hdrs[a->n++] = (struct hdr){.name = a->len};
    return 0;
}

/* Builds the caller's view of an arena's fields. */
static int arena_view(struct tt_h1 *r, struct arena *a)
{
    struct tt_h1_header *out;

    if (a->n == 0)
        return 0;
    out = realloc(a->out, a->n * sizeof(*out));
    if (out == NULL)
        return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
    a->out = out;
    for (size_t i = 0; i < a->n; i++) {
        out[i].name = a->buf + a->hdrs[i].name;
        out[i].name_len = a->hdrs[i].name_len;
        out[i].value = a->buf + a->hdrs[i].value;
        out[i].value_len = a->hdrs[i].value_len;
    }
    return 0;
}

/* Closes the request target in the arena (NUL) once its last piece came. */
static int close_url(struct tt_h1 *r)
{
    if (!r->url_open)
        return 0;
    r->url_open = false;
    if (arena_put(&r->head_a, "", 1) != 0)
        return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
    return 0;
}

/* ---- the request target ---- */

static bool is_unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Normalizes an absolute path in[0..n) (starting with '/') into out (n + 1 bytes, may be
 * the same buffer): unreserved characters percent-decoded, other %-encodings upper-cased,
 * then dot segments removed (RFC 3986 §6.2.2.2, §5.2.4). Returns the length (out is
 * NUL-terminated) or -1 for a '%' not followed by two hex digits. */
static long normalize_path(const char *in, size_t n, char *out)
{
    size_t i, o = 0, len;

    for (i = 0; i < n; i++) {
        int hi, lo;

        if (in[i] != '%') {
            out[o++] = in[i];
            continue;
        }
        if (i + 2 >= n)
            return -1;
        hi = hexval(in[i + 1]);
        lo = hexval(in[i + 2]);
        if (hi < 0 || lo < 0)
            return -1;
        if (is_unreserved((unsigned char)(hi << 4 | lo))) {
            out[o++] = (char)(hi << 4 | lo);
        } else {
            out[o++] = '%';
            out[o++] = "0123456789ABCDEF"[hi];
            out[o++] = "0123456789ABCDEF"[lo];
        }
        i += 2;
    }
    /* Dot segments, in place: each segment is copied down (o never passes i), "."
     * dropped, ".." drops the segment before it. A path ending in "." or ".." keeps its
     * trailing slash, as RFC 3986 §5.2.4 does. */
    len = o;
    o = 0;
    for (i = 0; i < len;) {
        size_t j = i + 1, seg;

        while (j < len && out[j] != '/')
            j++;
        seg = j - i - 1;
        if (seg == 1 && out[i + 1] == '.') {
            if (j == len)
                out[o++] = '/';
        } else if (seg == 2 && out[i + 1] == '.' && out[i + 2] == '.') {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--;
            if (j == len)
                out[o++] = '/';
        } else {
            memmove(out + o, out + i, seg + 1);
            o += seg + 1;
        }
        i = j;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return (long)o;
}

/* Makes room for n more bytes, so that copies from inside the arena stay valid. */
static int arena_reserve(struct arena *a, size_t n)
{
    size_t len = a->len;

    if (n > a->max - len)
        return -1;
    if (len + n > a->cap) {
        size_t cap = a->cap ? a->cap : 1024;
        char *b;

        while (cap < len + n)
            cap *= 2;
        if (cap > a->max)
            cap = a->max;
        b = realloc(a->buf, cap);
        if (b == NULL)
            return -1;
        a->buf = b;
        a->cap = cap;
    }
    return 0;
}

/* Appends src[0..n) (which may lie inside the arena: call arena_reserve first) and a NUL;
 * returns the offset of the copy. */
static size_t arena_copy(struct arena *a, size_t src, size_t n)
{
    size_t off = a->len;

    memmove(a->buf + off, a->buf + src, n);
    a->buf[off + n] = '\0';
    a->len += n + 1;
    return off;
}

/* Splits and checks the request target (RFC 9112 §3.2) and fills head->path, ->query and
 * ->authority with copies in the head arena. Call before any other pointer into the
 * arena is taken: the arena may move. */
static int parse_target(struct tt_h1 *r, struct tt_h1_head *hd)
{
    struct arena *a = &r->head_a;
    bool connect = r->parser.method == HTTP_CONNECT;
    struct http_parser_url u;
    size_t path_off = 0, path_len = 0, auth_off = 0, auth_len = 0, q_off = 0, q_len = 0;
    size_t p_at, q_at = 0, a_at = 0;
    const char *url = a->buf + r->url_off;
    long norm;

    hd->path = hd->query = hd->authority = NULL;
    if (r->url_len == 1 && url[0] == '*') {
        if (r->parser.method != HTTP_OPTIONS)
            return refuse(r, TT_H1_R_BAD_TARGET);
        hd->path = url;
        return 0;
    }
    http_parser_url_init(&u);
    if (http_parser_parse_url(url, r->url_len, connect, &u) != 0)
        return refuse(r, TT_H1_R_BAD_TARGET);
    if (u.field_set & ((1 << UF_FRAGMENT) | (1 << UF_USERINFO)))
        return refuse(r, TT_H1_R_BAD_TARGET);
    if (connect) {
        hd->authority = url;
        return 0;
    }
    if (u.field_set & (1 << UF_SCHEMA)) {
        size_t slen = u.field_data[UF_SCHEMA].len;
        const char *s = url + u.field_data[UF_SCHEMA].off;

        if (!((slen == 4 && strncasecmp(s, "http", 4) == 0) ||
              (slen == 5 && strncasecmp(s, "https", 5) == 0)) ||
            !(u.field_set & (1 << UF_HOST)))
            return refuse(r, TT_H1_R_BAD_TARGET);
        /* The authority runs from the host (an IPv6 literal's bracket before it) to the
         * path, the query or the end. */
        auth_off = u.field_data[UF_HOST].off;
        if (auth_off > 0 && url[auth_off - 1] == '[')
            auth_off--;
        if (u.field_set & (1 << UF_PATH))
            auth_len = u.field_data[UF_PATH].off - auth_off;
        else if (u.field_set & (1 << UF_QUERY))
            auth_len = u.field_data[UF_QUERY].off - 1 - auth_off;
        else
            auth_len = r->url_len - auth_off;
    } else if (url[0] != '/') {
        return refuse(r, TT_H1_R_BAD_TARGET);
    }
    if (u.field_set & (1 << UF_PATH)) {
        path_off = u.field_data[UF_PATH].off;
        path_len = u.field_data[UF_PATH].len;
    }
    if (u.field_set & (1 << UF_QUERY)) {
        q_off = u.field_data[UF_QUERY].off;
        q_len = u.field_data[UF_QUERY].len;
    }
    /* The normalized path is at most as long as the original (or "/"). */
    if (arena_reserve(a, (path_len ? path_len : 1) + 1 + q_len + 1 + auth_len + 1) != 0)
        return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
    if (path_len) {
        p_at = arena_copy(a, r->url_off + path_off, path_len);
        norm = normalize_path(a->buf + p_at, path_len, a->buf + p_at);
        if (norm < 0)
            return refuse(r, TT_H1_R_BAD_TARGET);
        a->len = p_at + (size_t)norm + 1;
    } else {
        p_at = a->len;
        a->buf[a->len++] = '/';
        a->buf[a->len++] = '\0';
    }
    if (u.field_set & (1 << UF_QUERY))
        q_at = arena_copy(a, r->url_off + q_off, q_len);
    if (auth_len)
        a_at = arena_copy(a, r->url_off + auth_off, auth_len);
    hd->path = a->buf + p_at;
    hd->query = (u.field_set & (1 << UF_QUERY)) ? a->buf + q_at : NULL;
    hd->authority = auth_len ? a->buf + a_at : NULL;
    return 0;
}

/* ---- http-parser callbacks: collect, check, and pause at each event ---- */

static int on_message_begin(http_parser *p)
{
    struct tt_h1 *r = p->data;

    arena_reset(&r->head_a);
    arena_reset(&r->trail_a);
    r->cur = &r->head_a;
    r->in_value = false;
    r->url_off = 0;
    r->url_len = 0;
    r->url_open = true;
    r->chunked = false;
    r->chunk_left = 0;
    memset(&r->fs, 0, sizeof(r->fs));
    memset(&r->head, 0, sizeof(r->head));
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct tt_h1 *r = p->data;

    if (arena_put(&r->head_a, at, len) != 0)
        return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
    r->url_len += len;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct tt_h1 *r = p->data;

    if (close_url(r) != 0)
        return -1;
    /* A name after a value (or the first name) starts a new field. */
    if (r->in_value || r->cur->n == 0) {
        if (finish_field(r) != 0 || start_field(r) != 0)
            return -1;
        r->in_value = false;
    }
    if (arena_put(r->cur, at, len) != 0)
        return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
    r->cur->hdrs[r->cur->n - 1].name_len += len;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct tt_h1 *r = p->data;
    struct hdr *h = &r->cur->hdrs[r->cur->n - 1];

    if (!h->has_value) {
        if (arena_put(r->cur, "", 1) != 0)
            return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
        h->value = r->cur->len;
        h->has_value = true;
    }
    r->in_value = true;
    if (arena_put(r->cur, at, len) != 0)
        return refuse(r, TT_H1_R_HEAD_TOO_LARGE);
    h->value_len += len;
    return 0;
}

/* Checks the fields that frame the request and fills r->head. */
static int check_head(struct tt_h1 *r)
{
    struct arena *a = &r->head_a;
    struct tt_h1_head *hd = &r->head;
    size_t n_cl = 0, n_te = 0, n_host = 0, host = 0;

    if (r->parser.http_major != 1 || r->parser.http_minor > 1)
        return refuse(r, TT_H1_R_BAD_VERSION);
    for (size_t i = 0; i < a->n; i++) {
        const struct hdr *h = &a->hdrs[i];
        const char *v = a->buf + h->value;

        if (name_is(a, h, "content-length")) {
            if (++n_cl > 1)
                return refuse(r, TT_H1_R_DUP_CL);
            if (h->value_len == 0 || h->value_len > 18 || strspn(v, "0123456789") != h->value_len)
                return refuse(r, TT_H1_R_BAD_CL);
        } else if (name_is(a, h, "transfer-encoding")) {
            /* Only one coding, chunked, as Go's net/http accepts: a forwarder re-frames
             * the body and applies no other coding (RFC 9112 §6.1). */
            if (++n_te > 1 || strcasecmp(v, "chunked") != 0)
                return refuse(r, TT_H1_R_BAD_TE);
        } else if (name_is(a, h, "host")) {
            n_host++;
            host = i;
        } else if (name_is(a, h, "expect")) {
            hd->expect_continue = hd->expect_continue || strcasecmp(v, "100-continue") == 0;
        }
    }
    if (n_cl > 0 && n_te > 0)
        return refuse(r, TT_H1_R_CL_AND_TE);
    if (n_te > 0 && r->parser.http_minor == 0)
        return refuse(r, TT_H1_R_BAD_TE);
    if (n_host > 1 || (n_host == 0 && r->parser.http_minor == 1))
        return refuse(r, TT_H1_R_BAD_HOST);
    if (n_te > 0 && !(r->parser.flags & F_CHUNKED))
        return refuse(r, TT_H1_R_BAD_TE); /* http-parser did not see it as chunked */
    if (parse_target(r, hd) != 0)
        return -1;
    /* The arena does not move from here on for this request. */
    if (arena_view(r, a) != 0)
        return -1;
    hd->method = http_method_str((enum http_method)r->parser.method);
    hd->target = a->buf + r->url_off;
    if (hd->authority == a->buf + r->url_off)
        hd->authority = hd->target; /* CONNECT */
    if (hd->path == a->buf + r->url_off)
        hd->path = hd->target; /* "*" */
    hd->minor = r->parser.http_minor;
    hd->headers = a->out;
    hd->n_headers = a->n;
    hd->host = n_host ? a->out[host].value : NULL;
    hd->keep_alive = http_should_keep_alive(&r->parser) != 0;
    hd->connect = r->parser.method == HTTP_CONNECT;
    hd->upgrade = r->parser.upgrade != 0;
    hd->chunked = (r->parser.flags & F_CHUNKED) != 0;
    hd->content_length = n_cl ? (int64_t)r->parser.content_length : -1;
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct tt_h1 *r = p->data;

    if (close_url(r) != 0 || finish_field(r) != 0 || check_head(r) != 0)
        return -1;
    r->state = H1_S_BODY;
    r->chunked = r->head.chunked;
    r->ev = EV_HEAD;
    http_parser_pause(p, 1);
    return 0;
}

static int on_chunk_header(http_parser *p)
{
    struct tt_h1 *r = p->data;

    r->chunk_left = p->content_length;
    if (p->content_length > 0) {
        r->fs.mode = FS_DATA;
    } else { /* the last chunk: trailers may follow */
        r->cur = &r->trail_a;
        r->in_value = false;
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct tt_h1 *r = p->data;

    r->body_at = at;
    r->body_len = len;
    if (r->chunked) {
        r->chunk_left -= len < r->chunk_left ? len : r->chunk_left;
        if (r->chunk_left == 0)
            r->fs.mode = FS_CRLF;
    }
    r->ev = EV_BODY;
    http_parser_pause(p, 1);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct tt_h1 *r = p->data;

    if (r->cur == &r->trail_a && (finish_field(r) != 0 || arena_view(r, &r->trail_a) != 0))
        return -1;
    r->ev = EV_END;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_chunk_header = on_chunk_header,
};

/* ---- the reader ---- */

/*
 * Allocates a reader; see h1.h.
 */
struct tt_h1 *tt_h1_new(const struct tt_h1_opts *opts, const struct tt_h1_callbacks *cb, void *ud)
{
    struct tt_h1 *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->head_max = opts && opts->head_max ? opts->head_max : H1_HEAD_MAX;
    r->max_headers = opts && opts->max_headers ? opts->max_headers : H1_MAX_HEADERS;
    r->cb = *cb;
    r->ud = ud;
    /* The head arena holds the head's bytes, a NUL after each part and the normalized
     * target's copies; the trailers' arena as many bytes as a head. */
    r->head_a.max = 2 * r->head_max + 2 * (size_t)r->max_headers + 64;
    r->trail_a.max = r->head_max + 2 * (size_t)r->max_headers + 64;
    r->cur = &r->head_a;
    http_parser_init(&r->parser, HTTP_REQUEST);
    r->parser.data = r;
    return r;
}

/*
 * Frees a reader and everything its heads pointed to. Accepts NULL.
 */
void tt_h1_free(struct tt_h1 *r)
{
    if (r == NULL)
        return;
    arena_done(&r->head_a);
    arena_done(&r->trail_a);
    free(r);
}

static long fail(struct tt_h1 *r, long err)
{
    if (err == TT_E_HTTP && r->reason == TT_H1_R_NONE)
        r->reason = TT_H1_R_MALFORMED;
    r->state = H1_S_FAILED;
    r->error = err;
    return err;
}

/* The reason for an error http-parser stopped with (when no check of ours named one). */
static enum tt_h1_reason parser_reason(const struct tt_h1 *r, enum http_errno e)
{
    const struct arena *a = &r->head_a;
    size_t n_cl = 0, n_te = 0;

    switch (e) {
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        /* A second Content-Length, or one with Transfer-Encoding: it stops at the field
         * that makes two, whose name is in the arena already. */
        for (size_t i = 0; i < a->n; i++) {
            n_cl += name_is(a, &a->hdrs[i], "content-length");
            n_te += name_is(a, &a->hdrs[i], "transfer-encoding");
        }
        return n_cl > 1 ? TT_H1_R_DUP_CL : n_te > 0 ? TT_H1_R_CL_AND_TE : TT_H1_R_BAD_CL;
    case HPE_INVALID_CONTENT_LENGTH:
        return TT_H1_R_BAD_CL;
    case HPE_INVALID_TRANSFER_ENCODING:
        return TT_H1_R_BAD_TE;
    case HPE_INVALID_CHUNK_SIZE:
        return TT_H1_R_BAD_CHUNK;
    case HPE_HEADER_OVERFLOW:
        return TT_H1_R_HEAD_TOO_LARGE;
    case HPE_INVALID_HEADER_TOKEN:
        /* In a head the scanner names bad bytes before http-parser sees them; in trailers
         * whether a name or a value piece came last depends on how the bytes were split. */
        return r->cur == &r->trail_a ? TT_H1_R_BAD_TRAILER : TT_H1_R_BAD_HEADER_NAME;
    case HPE_INVALID_VERSION:
        return TT_H1_R_BAD_VERSION;
    case HPE_INVALID_METHOD:
        return TT_H1_R_BAD_REQUEST_LINE;
    case HPE_INVALID_URL:
        return TT_H1_R_BAD_TARGET;
    case HPE_LF_EXPECTED:
        return TT_H1_R_BARE_CR;
    default:
        return TT_H1_R_MALFORMED;
    }
}

/* Delivers the event the parser paused at. Returns the callback's answer. */
static int deliver(struct tt_h1 *r)
{
    enum h1_event ev = r->ev;
    int rc = 0;

    r->ev = EV_NONE;
    switch (ev) {
    case EV_NONE:
        break;
    case EV_HEAD:
        if (r->cb.on_head)
            rc = r->cb.on_head(r->ud, &r->head);
        break;
    case EV_BODY:
        if (r->cb.on_body && r->body_len > 0)
            rc = r->cb.on_body(r->ud, r->body_at, r->body_len);
        break;
    case EV_END:
        if (r->cb.on_end)
            rc = r->cb.on_end(r->ud, r->trail_a.n ? r->trail_a.out : NULL, r->trail_a.n);
        memset(&r->hs, 0, sizeof(r->hs));
        r->head_left = 0;
        if (r->head.upgrade)
            r->state = H1_S_UPGRADED;
        else if (!r->head.keep_alive)
            r->state = H1_S_DONE;
        else
            r->state = H1_S_HEAD;
        break;
    }
    return rc;
}

/*
 * Feeds bytes; see h1.h. Each round scans (in a head) what may go to http-parser, runs
 * it until its next event, scans the chunk framing it consumed and delivers the event.
 */
long tt_h1_feed(struct tt_h1 *r, const char *data, size_t len)
{
    size_t off = 0;

    if (r->state == H1_S_FAILED)
        return r->error;
    while (off < len && (r->state == H1_S_HEAD || r->state == H1_S_BODY)) {
        size_t avail = len - off, n;
        bool in_head = r->state == H1_S_HEAD;
        enum http_errno e;
        int rc;

        if (in_head) {
            avail = scan_head(r, data + off, avail);
            if (avail == 0 && r->hs.err != TT_H1_R_NONE) {
                refuse(r, r->hs.err);
                return fail(r, TT_E_HTTP);
            }
        } else if (r->chunked) {
            avail = scan_chunked(r, data + off, avail);
            if (avail == 0 && r->fs.err != TT_H1_R_NONE) {
                refuse(r, r->fs.err);
                return fail(r, TT_E_HTTP);
            }
        }
        r->ev = EV_NONE;
        n = http_parser_execute(&r->parser, &settings, data + off, avail);
        e = HTTP_PARSER_ERRNO(&r->parser);
        if (e != HPE_OK && e != HPE_PAUSED) {
            if (r->reason == TT_H1_R_NONE)
                r->reason = parser_reason(r, e);
            return fail(r, TT_E_HTTP);
        }
        if (e == HPE_PAUSED)
            http_parser_pause(&r->parser, 0);
        if (in_head) {
            /* Bytes the scanner passed that the parser left for later (the head's last
             * LF, when it paused at the head's end) are not chunk framing. */
            r->head_left = avail - n;
            if (r->state == H1_S_HEAD && n < avail)
                return fail(r, TT_E_HTTP);
            if (r->state == H1_S_HEAD && r->hs.err != TT_H1_R_NONE) {
                refuse(r, r->hs.err); /* http-parser took the clean bytes before it */
                return fail(r, TT_E_HTTP);
            }
        } else if (r->chunked) {
            /* Each unit is consumed whole (the parser pauses at its end at most). */
            if (n < avail && r->ev != EV_END)
                return fail(r, TT_E_HTTP);
            r->head_left -= r->head_left < n ? r->head_left : n;
            if (r->fs.err != TT_H1_R_NONE && r->ev == EV_NONE) {
                refuse(r, r->fs.err);
                return fail(r, TT_E_HTTP);
            }
        }
        off += n;
        rc = deliver(r);
        if (rc < 0)
            return fail(r, rc);
        if (rc == TT_H1_PAUSE)
            break;
        if (n == 0 && e != HPE_PAUSED)
            return fail(r, TT_E_HTTP); /* no progress: cannot happen with a sane parser */
    }
    return (long)off;
}

/*
 * The client's end of input; see h1.h.
 */
int tt_h1_finish(struct tt_h1 *r)
{
    if (r->state == H1_S_FAILED)
        return (int)r->error;
    if (r->state == H1_S_DONE || r->state == H1_S_UPGRADED)
        return 0;
    if (r->state == H1_S_HEAD && !r->hs.started && !r->hs.prev_cr)
        return 0;
    return (int)fail(r, TT_E_HTTP);
}

enum tt_h1_reason tt_h1_reason(const struct tt_h1 *r)
{
    return r->reason;
}

int tt_h1_status(const struct tt_h1 *r)
{
    return tt_h1_reason_status(r->reason);
}

bool tt_h1_upgraded(const struct tt_h1 *r)
{
    return r->state == H1_S_UPGRADED;
}

bool tt_h1_done(const struct tt_h1 *r)
{
    return r->state == H1_S_DONE || r->state == H1_S_UPGRADED;
}

/* True for a reason token: lower-case letters, digits, '_' and '-'. */
static bool reason_ok(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_' ||
              s[i] == '-'))
            return false;
    }
    return i > 0 && i <= 64;
}

/* Writes an error answer's JSON body; see h1.h. The rule name is escaped within cap. */
int tt_h1_error_body(char *body, size_t cap, const char *reason, const char *rule)
{
    size_t pos;
    int n;

    if (reason == NULL || !reason_ok(reason) || cap < 64 + strlen(reason))
        return -EINVAL;
    n = snprintf(body, cap, "{\"error\": \"%s\", \"rule\": ", reason);
    pos = (size_t)n;
    if (rule != NULL) {
        body[pos++] = '"';
        tt_json_escape(body, cap - 4, &pos, rule);
        body[pos++] = '"';
    } else {
        memcpy(body + pos, "null", 4);
        pos += 4;
    }
    body[pos++] = '}';
    body[pos++] = '\n';
    return (int)pos;
}

/*
 * Writes an error answer; see h1.h. The body is built first (its length goes in the
 * head), in a bounded buffer: a rule name is at most 256 bytes, escaped at most 6 times.
 */
int tt_h1_write_error(char *buf, size_t cap, int status, const char *reason, const char *rule,
                      bool close)
{
    char body[2048];
    int n, len;

    if (status < 100 || status > 599)
        return -EINVAL;
    len = tt_h1_error_body(body, sizeof(body), reason, rule);
    if (len < 0)
        return len;
    n = snprintf(buf, cap,
                 "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 "x-tether-reason: %s\r\nCache-Control: no-store\r\nConnection: %s\r\n\r\n",
                 status, tt_h1_status_text(status), len, reason, close ? "close" : "keep-alive");
    if (n < 0 || (size_t)n + (size_t)len > cap)
        return -ENOSPC;
    memcpy(buf + n, body, (size_t)len);
    return n + len;
}

/* Calls fn(token, len, arg) for each token of the Connection fields among fields[0..n)
 * until it returns true; returns whether one did. */
static bool connection_tokens(const struct tt_h1_header *fields, size_t n,
                              bool (*fn)(const char *, size_t, const void *), const void *arg)
{
    for (size_t i = 0; i < n; i++) {
        const char *p = fields[i].value;

        /* The length first: this runs for every field of a head (is it named here?). */
        if (fields[i].name_len != 10 || strcasecmp(fields[i].name, "connection") != 0)
            continue;
        while (*p != '\0') {
            size_t t;

            p += strspn(p, " \t,");
            t = strcspn(p, " \t,");
            if (t > 0 && fn(p, t, arg))
                return true;
            p += t;
        }
    }
    return false;
}

/* connection_tokens: the token is the name arg points at (struct { name, len }). */
struct token_want {
    const char *name;
    size_t len;
};

static bool token_is(const char *tok, size_t len, const void *arg)
{
    const struct token_want *w = arg;

    return len == w->len && strncasecmp(tok, w->name, len) == 0;
}

static bool token_not_keep_alive(const char *tok, size_t len, const void *arg)
{
    (void)arg;
    return !(len == 10 && strncasecmp(tok, "keep-alive", 10) == 0);
}

/* Whether the Connection fields among fields[0..n) name `name` (h1.h). */
bool tt_h1_connection_names(const struct tt_h1_header *fields, size_t n, const char *name,
                            size_t len)
{
    struct token_want w = {name, len};

    return len > 0 && connection_tokens(fields, n, token_is, &w);
}

/* Whether they name anything but keep-alive (h1.h). */
bool tt_h1_connection_names_others(const struct tt_h1_header *fields, size_t n)
{
    return connection_tokens(fields, n, token_not_keep_alive, NULL);
}
