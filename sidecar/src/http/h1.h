/* An I/O-free HTTP/1.x request reader over Debian's http-parser (Tether issue 10,
 * "HTTP-aware sidecars"), and the writer of the small error answers a sidecar gives by
 * itself. The inbound request gate (gate.h) feeds it what the TLS engine decrypted and
 * forwards the events; the outbound side will use it with the pool.
 *
 * The caller feeds bytes; the reader calls back for each request's head, its body in
 * pieces, and its end, one pipelined request after another. It refuses, with a reason
 * (enum tt_h1_reason) and status 400 or 431, what a proxy must not pass on because two
 * parsers could frame it differently (request smuggling, RFC 9112 §6.3, §11.2):
 * Content-Length with Transfer-Encoding, a second Content-Length, a Transfer-Encoding
 * other than one "chunked", bare LF or CR line endings (Debian's http-parser is built
 * lenient and accepts them, and bytes other than CRLF after chunk data: the reader
 * checks the raw head and chunk framing itself), obs-fold, header names that are not
 * tokens (as "Name :"), control characters in values, a request line with other than
 * single spaces, versions other than 1.0 and 1.1, a 1.1 request without exactly one
 * Host, and a header section over a byte or line bound.
 *
 * Bodies are given de-chunked: the chunk framing, extensions and trailers' line
 * breaks never reach the caller, so a forwarder frames the body anew (Content-Length
 * when it was given one, chunked otherwise, or DATA frames on HTTP/2) and no framing of
 * the client's is passed on to be read differently downstream. */
#ifndef TT_H1_H
#define TT_H1_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tt_buf;

/* Why a request was refused (tt_h1_reason()). The names (tt_h1_reason_name) are the
 * x-tether-reason header values and metric labels. */
enum tt_h1_reason {
    TT_H1_R_NONE,             /* "none": not refused */
    TT_H1_R_MALFORMED,        /* "malformed": anything http-parser refused not named below */
    TT_H1_R_BARE_LF,          /* "bare_lf": a line ending in LF without CR */
    TT_H1_R_BARE_CR,          /* "bare_cr": a CR not followed by LF */
    TT_H1_R_OBS_FOLD,         /* "obs_fold": a header line continued (RFC 9112 §5.2) */
    TT_H1_R_CL_AND_TE,        /* "content_length_and_transfer_encoding" */
    TT_H1_R_DUP_CL,           /* "duplicate_content_length" */
    TT_H1_R_BAD_CL,           /* "bad_content_length": not one decimal number */
    TT_H1_R_BAD_TE,           /* "bad_transfer_encoding": not exactly one "chunked"; or on
                               * HTTP/1.0 (RFC 9112 §6.1) */
    TT_H1_R_BAD_CHUNK,        /* "bad_chunk": chunk framing (size line, CRLF after data) */
    TT_H1_R_HEAD_TOO_LARGE,   /* "header_section_too_large" (431) */
    TT_H1_R_TOO_MANY_HEADERS, /* "too_many_headers" (431) */
    TT_H1_R_BAD_HEADER_NAME,  /* "bad_header_name": not a token (RFC 9110 §5.1) */
    TT_H1_R_BAD_HEADER_VALUE, /* "bad_header_value": a control character */
    TT_H1_R_BAD_REQUEST_LINE, /* "bad_request_line": method, spacing */
    TT_H1_R_BAD_VERSION,      /* "bad_version": not HTTP/1.0 or HTTP/1.1 */
    TT_H1_R_BAD_TARGET,       /* "bad_target": not origin-, absolute-, authority- (CONNECT)
                               * or asterisk-form (OPTIONS), a fragment, bad %-encoding */
    TT_H1_R_BAD_HOST,         /* "bad_host": HTTP/1.1 without Host, or two Host fields */
    TT_H1_R_BAD_TRAILER,      /* "bad_trailer": a trailer field's name or value */
    TT_H1_R__COUNT,
};

/* Bounds; 0 picks the default in brackets. */
struct tt_h1_opts {
    size_t head_max;      /* request line + header section, bytes [64 KiB]; also trailers */
    unsigned max_headers; /* header lines [100]; also trailer lines */
};

/* One header field. Both strings are NUL-terminated copies (no NUL can occur in them);
 * the name as sent, the value without leading and trailing whitespace. */
struct tt_h1_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* A request head. Every pointer is valid until the next tt_h1_feed() or tt_h1_free(). */
struct tt_h1_head {
    const char *method; /* the method token as sent, e.g. "GET" */
    const char *target; /* the request-target as sent */
    /* The path for policy and for forwarding: origin-form or absolute-form's path with
     * unreserved characters percent-decoded (RFC 3986 §2.3: "%61" is "a"; other
     * %-encodings, "%2F" among them, kept with upper-case hex) and dot segments removed
     * (RFC 3986 §5.2.4: "/a/./b/../c" is "/a/c"); "*" for OPTIONS *; NULL for CONNECT.
     * A forwarder sends path (+ "?" query) so that the application sees the path the
     * policy saw. */
    const char *path;
    const char *query;     /* after '?', as sent; NULL when absent */
    const char *authority; /* CONNECT's host:port, absolute-form's host[:port]; or NULL */
    int minor;             /* HTTP/1.<minor>: 0 or 1 */
    const struct tt_h1_header *headers;
    size_t n_headers;
    const char *host; /* the Host value, or NULL (HTTP/1.0 only) */
    bool keep_alive;  /* another request may follow on this connection (RFC 9112 §9.3) */
    /* CONNECT, or "Upgrade" with "Connection: upgrade": after this request the reader
     * takes no more bytes (tt_h1_upgraded): what follows is for the tunnel or the new
     * protocol, or, if the server declines the upgrade, for a new reader. */
    bool upgrade;
    bool connect;
    bool expect_continue;   /* "Expect: 100-continue" (RFC 9110 §10.1.1) */
    bool chunked;           /* the body was sent chunked */
    int64_t content_length; /* -1 when not given */
};

/* What a callback returns: 0 goes on; TT_H1_PAUSE makes tt_h1_feed() return after this
 * event with the bytes consumed so far (feed the rest again later); a negative value
 * makes tt_h1_feed() return that value (the reader is then failed). */
#define TT_H1_PAUSE 1

struct tt_h1_callbacks {
    int (*on_head)(void *ud, const struct tt_h1_head *head);
    /* A piece of the (de-chunked) body; data points into the caller's buffer. */
    int (*on_body)(void *ud, const char *data, size_t len);
    /* The request is complete; trailers of a chunked body (validated as headers are) or
     * none. After it the next request's head may follow in the same feed. */
    int (*on_end)(void *ud, const struct tt_h1_header *trailers, size_t n_trailers);
};

struct tt_h1;

/* A reader for one connection's requests. opts may be NULL (defaults); cb and ud are
 * kept. Returns NULL when out of memory. */
struct tt_h1 *tt_h1_new(const struct tt_h1_opts *opts, const struct tt_h1_callbacks *cb, void *ud);
void tt_h1_free(struct tt_h1 *r); /* accepts NULL */

/* Feeds len bytes. Returns how many were consumed (all of them unless a callback paused,
 * the request before them upgraded the connection or ended it, see tt_h1_done), or
 * TT_E_HTTP when the request is refused (tt_h1_reason, tt_h1_status), or a callback's
 * negative value. Bytes not consumed must be fed again, first, in the next call. Once
 * failed, every call returns the same error. Callbacks run inside this call. */
long tt_h1_feed(struct tt_h1 *r, const char *data, size_t len);

/* The client finished sending (EOF). Returns 0 when that was between requests, or
 * TT_E_HTTP (reason "malformed") when a request was cut short. */
int tt_h1_finish(struct tt_h1 *r);

enum tt_h1_reason tt_h1_reason(const struct tt_h1 *r);
int tt_h1_status(const struct tt_h1 *r);    /* the status to answer a refusal with: 400, 431 */
bool tt_h1_upgraded(const struct tt_h1 *r); /* the last request was CONNECT or an upgrade */
/* The last request ended the connection (no keep-alive) or upgraded it: nothing more is
 * read. */
bool tt_h1_done(const struct tt_h1 *r);

/* Whether c may appear in a token such as a field name (RFC 9110 §5.6.2 tchar). */
bool tt_h1_is_tchar(unsigned char c);

/* Whether s[0..n) is a token (RFC 9110 §5.6.2: one tchar or more), such as a field name. */
bool tt_h1_is_token(const char *s, size_t n);

/* Appends the header line "name: value\r\n" to b, as given (the caller checked both).
 * Returns 0 or -ENOMEM. */
int tt_h1_put_field(struct tt_buf *b, const char *name, size_t nlen, const char *value,
                    size_t vlen);

/* Whether the Connection fields among fields[0..n) list the token name[0..len), compared
 * case-insensitively (RFC 9110 §7.6.1: the fields so named are for this connection only,
 * and a proxy does not pass them on). */
bool tt_h1_connection_names(const struct tt_h1_header *fields, size_t n, const char *name,
                            size_t len);

/* Whether the Connection fields among fields[0..n) list any token but "keep-alive" (a field
 * HTTP/2's connection-specific list drops anyway, tt_h2_connection_specific): when they do
 * not, which is the common "Connection: keep-alive" or none, no field needs asking
 * tt_h1_connection_names, which a head would otherwise run once per field. */
bool tt_h1_connection_names_others(const struct tt_h1_header *fields, size_t n);

/* Whether a request with this method may be sent again when no answer to it arrived:
 * RFC 9110 §9.2.2's idempotent methods GET, HEAD, OPTIONS, TRACE, PUT and DELETE. */
bool tt_h1_method_idempotent(const char *method);

const char *tt_h1_reason_name(enum tt_h1_reason reason);
int tt_h1_reason_status(enum tt_h1_reason reason);

/* The reason phrase of a status code ("Forbidden"); "Unknown" for codes it does not
 * know. */
const char *tt_h1_status_text(int status);

/* Writes a complete HTTP/1.1 error answer into buf[0..cap): the status line, Content-Type
 * application/json, Content-Length, "x-tether-reason: <reason>", Cache-Control no-store,
 * "Connection: close" when close (else keep-alive), and the body
 * {"error": "<reason>", "rule": "<rule>"} (rule null when NULL; JSON-escaped). reason must
 * be a token of lower-case letters, digits, '_' and '-' (e.g. "policy_denied", or a
 * tt_h1_reason_name). Returns the length written, -EINVAL for a bad reason or status
 * outside 100..599, -ENOSPC when cap is too small (buf then holds nothing usable). */
int tt_h1_write_error(char *buf, size_t cap, int status, const char *reason, const char *rule,
                      bool close);

/* Writes only the JSON body of such an answer, {"error": "<reason>", "rule": ...}\n, into
 * body[0..cap) (for an HTTP/2 answer). Returns its length, or -EINVAL for a bad reason or
 * a cap below 64 + the reason's length (a long rule is cut to fit). */
int tt_h1_error_body(char *body, size_t cap, const char *reason, const char *rule);

#endif
