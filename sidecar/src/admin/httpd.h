/* A small HTTP/1.1 server core on libuv + http-parser, shared by the sidecar's admin
 * endpoint and the control plane's operator API: accept, parse, bounds (head size,
 * header count, body size, clients in total and per source address, deadlines for a
 * request's head and body), keep-alive, pipelining with backpressure, an idle sweep, an
 * optional Host check against DNS rebinding, and ordered responses. What to answer is the
 * caller's: one route callback per complete request. Everything runs on the loop's thread;
 * it never blocks. */
#ifndef TT_HTTPD_H
#define TT_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

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
    /* The connection reached a loopback address of this host (or is a unix socket); false
     * when it came to any other local address (e.g. the pod's IP on a 0.0.0.0 listener). */
    bool via_loopback;
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
    /* Connections at once [64]. At the bound a new connection takes the place of the
     * client that has waited longest for a complete request (a slow or silent client, or
     * one idle between keep-alive requests); only when every client has an answer on its
     * way is the new connection closed at accept. So slow clients cannot hold every slot:
     * each newcomer pushes the oldest of them out. */
    unsigned max_clients;
    /* Connections at once from one peer address [max_clients]; at the bound the same
     * rule, among that address's clients only, so that one address cannot push out the
     * others. Adopted unix sockets have no address and count only in max_clients. */
    unsigned max_per_source;
    uint64_t idle_ms; /* no progress either way for this long closes a client [10 s] */
    /* Deadlines, however slowly the bytes trickle in: a request head must be complete
     * this long after the connection was made (first request) or after its first byte
     * (later ones) [10 s]; a body this long after its head [30 s]. Past one the client
     * is closed. Between keep-alive requests idle_ms applies. */
    uint64_t head_timeout_ms;
    uint64_t body_timeout_ms;
    /* Accept a connection only once it has sent something, or after about a second
     * (TCP_DEFER_ACCEPT: the kernel holds a silent one meanwhile, the head deadline runs
     * from the accept), and read what it sent at once: a request that arrives with its
     * connection is answered before newcomers could push it out of its slot. */
    bool defer_accept;
    /* DNS rebinding (a web page whose host name an attacker re-points at this address,
     * so that the victim's browser sends it requests as if same-origin): when set, a
     * request whose Host header names anything but localhost or a loopback address
     * (127.0.0.0/8, [::1]; with or without :port) is answered 421 with a JSON error
     * before the route callback runs. On a connection that reached a non-loopback address
     * an IP literal is accepted too (that is how such an address is named; a rebinding
     * page always sends a DNS name), and the paths in host_open_paths (NULL-terminated;
     * e.g. kubelet's probes, which send Host: <pod IP>:<port> or whatever the probe says)
     * are not checked there. A request without Host (HTTP/1.0) passes; a second Host is a
     * 400. */
    bool host_check;
    const char *const *host_open_paths;
    const char *name; /* names the server in debug logs ["httpd"] */
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

/* True when sa is an IPv4 127.0.0.0/8, IPv6 ::1 or IPv4-mapped ::ffff:127.x address;
 * false for any other address or family. Pure. */
bool tt_httpd_addr_is_loopback(const struct sockaddr *sa);

/* The reason phrase for a status code ("Not Found"). */
const char *tt_httpd_status_text(int status);

#endif
