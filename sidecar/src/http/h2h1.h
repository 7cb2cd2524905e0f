/* One HTTP/2 request served by an HTTP/1.1 server (Tether issue 10, "HTTP-aware
 * sidecars"): the inbound sidecar's translation for a request stream, from a caller outside
 * the mesh that negotiated ALPN "h2" (curl --http2 --cert, nghttp --cert) or from another
 * sidecar's link, to the workload, which speaks HTTP/1.1. I/O-free, like h1.h and gate.h:
 * the caller feeds what the stream and the workload send and moves what comes out through
 * the io callbacks.
 *
 * Towards the server: the request head is written from the stream's fields (RFC 9113
 * §8.3.1: ":method", ":path", ":authority" as Host; cookie crumbs joined, §8.2.3), in
 * keep-alive (the caller may reuse the connection for another request once
 * tt_h2h1_reusable says so) and fields that mean nothing
 * on HTTP/1.1 left out (connection-specific ones, "te", "expect": the caller already sends
 * its body). A body of known length goes as it is under its Content-Length; one of unknown
 * length is chunked; a POST, PUT or PATCH without a body says Content-Length: 0.
 *
 * From the server: the response (http/h1resp.h frames it, whatever its framing) becomes a
 * status, fields for HTTP/2 (names lower-cased; connection-specific fields and those the
 * Connection field names left out; Content-Length kept only when it framed the body) and
 * the body de-chunked. Interim responses (100, 103) are not passed on.
 *
 * The bytes written towards the server are HTTP/1.1 that the inbound request gate
 * (gate.h) reads as it reads a caller's own: this module does not decide policy or
 * validate the request; the gate refuses what is not a valid request (400). Where no
 * rule reads methods or paths, a request whose fields tt_h2h1_plain() accepts skips the
 * gate: the gate would pass its head on unchanged. */
#ifndef TT_H2H1_H
#define TT_H2H1_H

#include <stdbool.h>
#include <stddef.h>

#include "http/h2.h"

struct tt_h2h1_io {
    void *ud;
    /* Bytes of the HTTP/1.1 request for the server. Returns 0 or <0. */
    int (*to_server)(void *ud, const char *data, size_t len);
    /* The response head for the caller: a final status (200..599) and fields ready for
     * tt_h2_respond(); end_stream: no body follows (HEAD, 204, 304, or an empty body). */
    int (*respond)(void *ud, int status, const struct tt_h2_header *fields, size_t n,
                   bool end_stream);
    /* A piece of the response body. */
    int (*body)(void *ud, const char *data, size_t len);
    /* The response body is complete (only after respond without end_stream). */
    int (*end)(void *ud);
};

struct tt_h2h1;

/* A translator for one request; io is copied. NULL when out of memory. */
struct tt_h2h1 *tt_h2h1_new(const struct tt_h2h1_io *io);

/* Frees it. Accepts NULL. */
void tt_h2h1_free(struct tt_h2h1 *x);

/* Writes the request head from the stream's received fields (pseudo-headers included);
 * body: the caller's request has a body to come (no END_STREAM with its headers).
 * Returns 0, TT_E_HTTP when ":method" or ":path" is missing or the method is CONNECT (not
 * a request this serves), -ENOMEM, or to_server's error. */
int tt_h2h1_request(struct tt_h2h1 *x, const struct tt_h2_header *fields, size_t n, bool body);

/* Whether the head tt_h2h1_request() writes from these fields is one the request gate
 * would pass on as it is, only re-framing its body (tests/unit/test-h2h1.c checks this
 * against the gate): ":method" one of GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH;
 * ":path" an origin-form target whose path needs no normalization (pchar and '/' only: no
 * '%', no "." or ".." segment), with a non-empty query if any; ":authority" present, a
 * plain host[:port]; no other pseudo-field but ":scheme"; field names lower-case tokens;
 * values (cookie crumbs too, none empty) visible ASCII with inner spaces and tabs only; at most one
 * Content-Length, of 1..18 digits; at most 64 fields and 32 KiB. Anything else, however
 * valid, is left to the gate. */
bool tt_h2h1_plain(const struct tt_h2_header *fields, size_t n);

/* A piece of the request body, framed for the server. Returns 0 or <0. */
int tt_h2h1_request_body(struct tt_h2h1 *x, const char *data, size_t len);

/* The caller ended its request (END_STREAM): a chunked body gets its last chunk. Returns
 * 0 or <0. */
int tt_h2h1_request_end(struct tt_h2h1 *x);

/* Bytes of the server's response. Returns 0, TT_E_HTTP when they are not a valid
 * response (or follow the complete one), or an io callback's error. */
int tt_h2h1_from_server(struct tt_h2h1 *x, const char *data, size_t len);

/* The server closed its side: a response delimited by the close is complete now.
 * Returns 0 when the response is complete, TT_E_HTTP when it was cut short or never
 * began, or an io callback's error. */
int tt_h2h1_server_eof(struct tt_h2h1 *x);

/* The server's connection may serve another request: the request was written whole and
 * the final response is complete without closing it (RFC 9112 §9.3). */
bool tt_h2h1_reusable(const struct tt_h2h1 *x);

/* The response head went to the caller (respond ran). */
bool tt_h2h1_responded(const struct tt_h2h1 *x);

/* The whole response went to the caller. */
bool tt_h2h1_response_done(const struct tt_h2h1 *x);

#endif
