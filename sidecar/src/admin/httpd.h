/* A small HTTP/1.1 server core on libuv + http-parser, shared by the sidecar's admin
 * endpoint and the control plane's operator API: accept, parse, bounds (head size,
 * header count, body size, clients), keep-alive, pipelining with backpressure, an idle
 * sweep, and ordered responses. What to answer is the caller's: one route callback per
 * complete request. Everything runs on the loop's thread; it never blocks. */
#ifndef TT_HTTPD_H
#define TT_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "core/util.h"

/* One complete request, valid for the length of the route callback. */
struct tt_httpd_request {
    int method;              /* http-parser's enum http_method (HTTP_GET, HTTP_POST...) */
    const char *method_name; /* "GET", "POST"... */
    const char *path;        /* the URL up to '?' (not percent-decoded) */
    const char *query;       /* after '?', or NULL */
    const char *body;        /* NUL-terminated; "" when there is none */
    size_t body_len;
    bool head; /* HEAD: the answer's body is dropped by the server */
    /* For connections given with tt_httpd_adopt_fd(): the peer identity it was given
     * with (e.g. the SPIFFE ID a TLS bridge verified); NULL for accepted sockets. */
    const char *peer_identity;
    /* The headers routes decide on, each NULL when absent (a second copy of any of them
     * is refused with 400 before routing): */
    const char *host;          /* Host */
    const char *authorization; /* Authorization */
    const char *origin;        /* Origin */
    const char *content_type;  /* Content-Type */
};

/* The answer the route callback fills in. Zeroed before the call. */
struct tt_httpd_response {
    int status;                /* required */
    const char *ctype;         /* NULL: "text/plain; charset=utf-8" */
    const char *extra_headers; /* extra header lines each ending in CRLF, or NULL */
    const char *body;          /* body_len bytes, copied by the server */
    size_t body_len;
    bool free_body; /* the server free()s body after copying it */
    bool close;     /* answer with Connection: close and end the connection */
    /* Called once, on the loop's thread, after this answer was written (or could not
     * be): e.g. /quitquitquit exits only after its answer left. May close the server. */
    void (*after_write)(void *ud);
    void *after_write_ud;
};

typedef void (*tt_httpd_route_cb)(void *ud, const struct tt_httpd_request *rq,
                                  struct tt_httpd_response *resp);

/* Bounds; 0 picks the default in brackets. */
struct tt_httpd_opts {
    size_t head_max;      /* request line + headers, bytes [16 KiB] -> 431 */
    unsigned max_headers; /* header lines [100] -> 431 */
    size_t body_max;      /* request body bytes [64 KiB] -> 413 */
    size_t url_max;       /* [2048] -> 414 */
    unsigned max_clients; /* connections at once; more are closed at accept [64] */
    uint64_t idle_ms;     /* no progress either way for this long closes a client [10 s] */
    const char *name;     /* names the server in debug logs ["httpd"] */
    /* Optional: fills the answer to a request the server refuses by itself (400, 413,
     * 414, 431) in the caller's format, e.g. JSON. resp arrives with status, close and
     * the server's text body set; msg is that one-line reason without its newline. The
     * hook may replace ctype and body (with free_body). NULL: the text answer. */
    void (*error_body)(const char *msg, struct tt_httpd_response *resp);
    /* Called once, on the loop's thread, when a started server has been freed after
     * tt_httpd_close() (every handle closed, no callback pending): the route `ud` may
     * be released there. Optional. */
    void (*on_closed)(void *ud);
};

struct tt_httpd;

/* Starts a server on loop; with addr, binds and listens there (addr NULL: serve only
 * adopted connections). Returns the server (end it with tt_httpd_close) or NULL with
 * *errp set to a -errno (e.g. UV_EADDRINUSE). The route callback runs on the loop's
 * thread for every complete request, in order per connection. */
struct tt_httpd *tt_httpd_new(uv_loop_t *loop, const struct tt_addr *addr,
                              const struct tt_httpd_opts *opts, tt_httpd_route_cb route, void *ud,
                              int *errp);

/* Serves an already connected stream socket (TCP, or one end of a socketpair such as
 * a TLS bridge's plaintext side). Takes ownership of fd in every case (closed on
 * failure). peer_identity (may be NULL) is copied and shown to the route callback for
 * every request on this connection. Returns 0 or -errno (-EBUSY when over the client
 * limit or closing). Call it on the loop's thread (from another thread, hand the fd over
 * with a uv_async_t first). */
int tt_httpd_adopt_fd(struct tt_httpd *h, int fd, const char *peer_identity);

/* Stops listening, closes every client connection and frees the server once libuv has
 * closed the handles (after the loop runs). Accepts NULL; a second call does nothing. */
void tt_httpd_close(struct tt_httpd *h);

/* The port actually bound (useful with port 0 in tests); 0 without a listener. */
int tt_httpd_port(const struct tt_httpd *h);

/* The reason phrase for a status code ("Not Found"). */
const char *tt_httpd_status_text(int status);

#endif
