/* An app's HTTP/1.x connection served by HTTP/2 requests (Tether issue 10, "HTTP-aware
 * sidecars"): the outbound sidecar's translation when its app speaks HTTP/1.0 or 1.1.
 * Each request the app sends becomes one request stream on a pooled link (net/pool.h),
 * and each stream's response goes back to the app as HTTP/1.1. The inverse of h2h1.h,
 * and I/O-free like it: the caller feeds what the app and the stream send and moves what
 * comes out through the io callbacks.
 *
 * From the app: requests are read by the strict reader of http/h1.h (smuggling shapes,
 * bare LF and oversized heads are answered 400/431 here, with Connection: close, and the
 * connection ends). Requests are served one at a time: a pipelined request waits, unread,
 * until the response before it is complete, so responses go back in order. A request
 * becomes (RFC 9113 §8.3.1) :method, :scheme "http", :authority (absolute-form's
 * authority, else Host, else the default given at creation: HTTP/1.0 without Host),
 * :path (the reader's normalized path, "?" and the query as sent; "*" for OPTIONS *) and
 * its fields with names lower-cased, without the connection-specific ones, those its
 * Connection field names, "host", "expect" and a "te" other than "trailers". Its body is
 * given de-chunked; trailers of a chunked body are dropped. "Expect: 100-continue" is
 * answered here with "100 Continue" once the stream takes the body (the request's
 * on_request returned 0, or tt_h1h2_resume after a wait).
 *
 * CONNECT and Upgrade requests (WebSocket) are not served as streams: the caller relays
 * the rest of the connection as bytes (a tunnel) and takes the raw bytes from this
 * request's first byte on with tt_h1h2_take_raw. The same serves a destination that does
 * not pool (a direct mTLS connection for the rest of the connection).
 *
 * To the app: the response head is written as HTTP/1.1 with the stream's status and
 * fields (pseudo-headers and connection-specific fields left out); the body is framed by
 * the Content-Length the stream gave, else chunked for an HTTP/1.1 request, else (1.0)
 * delimited by the connection's close. A HEAD request's response and 204/304 carry no
 * body. "Connection: close" is written when no request may follow (the app asked for it,
 * HTTP/1.0 without keep-alive, a close-delimited body); an HTTP/1.0 keep-alive request
 * gets "Connection: keep-alive". */
#ifndef TT_H1H2_H
#define TT_H1H2_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"
#include "http/h1.h"
#include "http/h2.h"

/* The raw bytes of the current request are kept up to this bound (for a retry or a switch
 * to a byte relay: tt_h1h2_rewind, tt_h1h2_take_raw); beyond it, neither is possible. */
#define TT_H1H2_RETAIN_MAX (128 * 1024)
/* Bytes held unread (a pipelined request behind an unanswered one, a body behind a wait)
 * beyond which tt_h1h2_wants_app() turns false. */
#define TT_H1H2_HOLD_MAX (64 * 1024)

/* What on_request returns to have nothing more passed on until tt_h1h2_resume(). */
#define TT_H1H2_WAIT 1

/* One request, translated for tt_h2_open() (with scheme "http"). Every pointer is valid
 * during the on_request call only. */
struct tt_h1h2_request {
    const char *method;
    const char *authority;
    const char *path;                  /* NULL for CONNECT (RFC 9113 §8.5: no :path) */
    const struct tt_h2_header *fields; /* regular fields, lower-case names */
    size_t n_fields;
    bool has_body;   /* a body follows (chunked, or Content-Length above 0): on_body, on_end */
    bool idempotent; /* RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE */
    bool upgrade;    /* CONNECT or Upgrade: relay the rest as bytes (tt_h1h2_take_raw) */
};

struct tt_h1h2_io {
    void *ud;
    /* A request's head is complete: open its stream. Returns 0 (its body follows through
     * on_body), TT_H1H2_WAIT (nothing more is passed on, and no 100 Continue written,
     * until tt_h1h2_resume(): the stream waits for a link), or <0 (the feeding call
     * returns it). An upgrade request is never followed by on_body or on_end. */
    int (*on_request)(void *ud, const struct tt_h1h2_request *rq);
    /* A piece of the request body (de-chunked). Returns 0 or <0. */
    int (*on_body)(void *ud, const char *data, size_t len);
    /* The request is complete (after its body, if any; right after on_request when it has
     * none). Returns 0 or <0. */
    int (*on_end)(void *ud);
    /* Bytes for the app. Returns 0 or <0. */
    int (*to_app)(void *ud, const char *data, size_t len);
    /* Inside on_request, on_body and on_end the caller may respond, answer and take_raw;
     * from_app, app_eof and resume return -EINVAL there, rewind -EAGAIN. */
};

struct tt_h1h2;

/* A translator for one app connection; io is copied; default_authority (host[:port],
 * copied) serves HTTP/1.0 requests without Host. NULL when out of memory. */
struct tt_h1h2 *tt_h1h2_new(const struct tt_h1h2_io *io, const char *default_authority);

/* Frees it. Accepts NULL. */
void tt_h1h2_free(struct tt_h1h2 *x);

/* Bytes the app sent. They are all taken: what cannot be passed on yet is held (see
 * tt_h1h2_wants_app). Callbacks run inside. Returns 0; TT_E_HTTP when the app's bytes are
 * not a valid request (the 400 or 431 answer was written through to_app unless a response
 * to it had begun: tt_h1h2_done() is true, tt_h1h2_reason() says why); a callback's error;
 * -ENOBUFS when the bytes held pass 4 * TT_H1H2_HOLD_MAX (wants_app was ignored); or
 * -ENOMEM. */
int tt_h1h2_from_app(struct tt_h1h2 *x, const char *data, size_t len);

/* The app closed its side. No request follows what it sent: the requests received
 * before (pipelined, held) are still served in order, and the connection is done once
 * the last one's response is complete (tt_h1h2_done). Returns 0, or TT_E_HTTP when a
 * request was cut short (its head or body incomplete). */
int tt_h1h2_app_eof(struct tt_h1h2 *x);

/* After on_request returned TT_H1H2_WAIT: the stream takes the body now. Writes the
 * 100 Continue if the request asked for it, then passes on what is held. Returns as
 * tt_h1h2_from_app(). */
int tt_h1h2_resume(struct tt_h1h2 *x);

/* The current request's response head: status 200..599 and the stream's fields (pseudo-
 * headers among them are skipped); end_stream: no body follows (tt_h1h2_response_end still
 * completes the response). Returns 0, -EINVAL (no request waits for a response, or a bad
 * status), -ENOMEM or to_app's error. */
int tt_h1h2_respond(struct tt_h1h2 *x, int status, const struct tt_h2_header *fields, size_t n,
                    bool end_stream);

/* A piece of the response body. Returns 0, -EINVAL (no head written, or the response is
 * complete) or to_app's error. */
int tt_h1h2_response_body(struct tt_h1h2 *x, const char *data, size_t len);

/* The response body is complete: the last chunk is written when chunked. Then, if
 * another request may follow, what is held is read: the next request's callbacks may run
 * inside. Returns as tt_h1h2_from_app(), or -EINVAL when no head was written. A response
 * that completes before its request did ends the connection after it (tt_h1h2_done): the
 * rest of that body is never read. */
int tt_h1h2_response_end(struct tt_h1h2 *x);

/* The current response was cut short (its stream failed after a byte of it went to the
 * app): nothing more is written or read, and the connection is done (tt_h1h2_done), the
 * answers before it intact. Returns true when the app can tell the cut from the
 * connection's plain close (a Content-Length not reached, a chunked body without its last
 * chunk, or a response that was whole already), false when the body was delimited by the
 * close: only a reset then says that it is incomplete. */
bool tt_h1h2_cut(struct tt_h1h2 *x);

/* The sidecar answers the current request itself (no stream took it, or its stream failed
 * before a response head): `status` with tt_h1_write_error's JSON body naming `reason` and
 * `rule` (may be NULL). The connection stays open for the next request when the request
 * was complete and asked for keep-alive; otherwise the answer says Connection: close and
 * the connection is done. Returns as tt_h1h2_response_end(), or -EINVAL when a response
 * head was written already (the caller can only end the connection). */
int tt_h1h2_answer(struct tt_h1h2 *x, int status, const char *reason, const char *rule);

/* Starts the current request again from its first byte, for a retry on another stream:
 * on_request fires again (inside this call), then its body as the app sent it. Possible
 * while no byte of its response was written and its raw bytes were retained
 * (TT_H1H2_RETAIN_MAX). Returns as tt_h1h2_from_app(), or -EAGAIN when not possible. The
 * caller decides which requests may be retried (tt_h1h2_request's idempotent). */
int tt_h1h2_rewind(struct tt_h1h2 *x);

/* Hands the connection over to a byte relay: appends to `out` the current request's raw
 * bytes from its first byte and every byte held after them, and stops translating (no
 * callback fires again; every later call but tt_h1h2_free fails with -EINVAL). Possible at
 * an upgrade request, or while no byte of the current request's response was written and
 * its raw bytes were retained. Returns 0, -EAGAIN when not possible (nothing changed), or
 * -ENOMEM. Between requests (none begun), it hands over what is held. */
int tt_h1h2_take_raw(struct tt_h1h2 *x, struct tt_buf *out);

/* False while the bytes held reach TT_H1H2_HOLD_MAX: stop reading the app. */
bool tt_h1h2_wants_app(const struct tt_h1h2 *x);

/* True while a request has begun (any byte of it read) and its response is not complete. */
bool tt_h1h2_busy(const struct tt_h1h2 *x);

/* A byte of the current request's response went to the app (the request can no longer
 * be retried or answered by the sidecar). */
bool tt_h1h2_responded(const struct tt_h1h2 *x);

/* The connection is over once what was written reaches the app: the last response was
 * complete and no request may follow (Connection: close, HTTP/1.0, the app's EOF, a
 * refusal), or the response is delimited by the close and its end was given. The caller
 * sends a FIN after the written bytes. */
bool tt_h1h2_done(const struct tt_h1h2 *x);

/* Why the app's bytes were refused (after TT_E_HTTP), TT_H1_R_NONE otherwise. */
enum tt_h1_reason tt_h1h2_reason(const struct tt_h1h2 *x);

#endif
