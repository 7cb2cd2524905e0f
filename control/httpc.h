/* A tiny blocking HTTP/1.1 client for tetherctl and the control plane's Kubernetes
 * client (k8s_client.c): one request per connection
 * (Content-Length, Connection: close), the response parsed with http-parser. http://
 * is plain TCP (the operator API on loopback); https:// is mutual TLS with the
 * operator's admin certificate (the API off loopback), through the sidecar's TLS
 * (tt_identity, tt_tls, tt_tlspipe): the HTTP client itself always runs over a connected
 * plaintext fd. */
#ifndef CP_HTTPC_H
#define CP_HTTPC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#define CP_HTTPC_BODY_MAX (16 * 1024 * 1024)

struct cp_httpc_response {
    int status;
    char *body; /* NUL-terminated, heap; "" when empty */
    size_t body_len;
    char ctype[128];
};

/* The operator's credentials for https:// (PEM files): the admin certificate (leaf then
 * intermediates), its key, and the control plane's trust bundle. The server must
 * present spiffe://<trust domain of cert_file's SPIFFE ID>/ns/tether-system/sa/
 * tether-control. */
struct cp_httpc_tls {
    const char *cert_file;
    const char *key_file;
    const char *cacert_file;
    /* http:// only (on https:// the certificate is the credential): the operator
     * credential (tether-control's <state-dir>/operator.token), sent as
     * "Authorization: Bearer"; NULL sends none. */
    const char *bearer;
};

/* Sends `method` `path` (which may hold a query) to the server of base_url
 * ("http://HOST:PORT" or "https://HOST:PORT", host an IP, [IPv6] or a name; a path prefix
 * is kept) with an optional body, and reads the whole response. https:// needs all of
 * `tls` (else -EINVAL, "https:// needs --cert, --key and --cacert"); http:// ignores it.
 * Times out after timeout_ms without progress. Returns 0 and fills *out (free with
 * cp_httpc_response_done), or a negative errno with a message in err ("cannot connect to
 * 127.0.0.1:15014: Connection refused", "TLS handshake with 10.0.0.1:15443 failed: peer
 * certificate does not chain to a trusted root"). */
int cp_httpc_call(const char *base_url, const struct cp_httpc_tls *tls, const char *method,
                  const char *path, const char *ctype, const char *body, size_t body_len,
                  int timeout_ms, struct cp_httpc_response *out, char *err, size_t errlen);

/* cp_httpc_call() without credentials (http:// only). */
int cp_httpc_request(const char *base_url, const char *method, const char *path, const char *ctype,
                     const char *body, size_t body_len, int timeout_ms,
                     struct cp_httpc_response *out, char *err, size_t errlen);

/* Runs one request over the connected, blocking stream fd (the caller's, not closed;
 * its timeouts apply): `where` names the server in errors, host_hdr is the Host header
 * value, prefix the URL's path prefix, bearer the operator credential (NULL: none).
 * Returns as cp_httpc_call(); -ECONNRESET when the server closed the connection without
 * sending a byte (before or after it read the request). */
int cp_httpc_request_fd(int fd, const char *where, const char *host_hdr, const char *prefix,
                        const char *bearer, const char *method, const char *path, const char *ctype,
                        const char *body, size_t body_len, struct cp_httpc_response *out, char *err,
                        size_t errlen);

void cp_httpc_response_done(struct cp_httpc_response *r);

/* Where a request's bytes go: a connected stream, plain or TLS, blocking with timeouts. */
struct cp_httpc_io {
    ssize_t (*read)(void *ud, void *buf, size_t len);    /* >0, 0 at the end, or -errno */
    int (*write)(void *ud, const void *buf, size_t len); /* all of it: 0 or -errno */
    void *ud;
};

/* One request. `where` names the server in errors, host_hdr is the Host header, prefix the
 * URL's path prefix, bearer a credential for "Authorization: Bearer" (NULL: none). */
struct cp_httpc_req {
    const char *where, *host_hdr, *prefix, *bearer;
    const char *method, *path, *ctype;
    const char *body;
    size_t body_len;
    const char *user_agent; /* NULL: "tetherctl" */
    /* When set, the body of a 2xx response is handed over as it arrives (chunked encoding
     * already removed) instead of collected in out->body; a negative return stops the
     * exchange, which then returns it. Other statuses are collected as usual. */
    int (*on_body)(void *ud, const char *data, size_t len);
    void *body_ud;
};

/* Sends rq through io and reads the response (see cp_httpc_request_fd for the returns;
 * also what on_body returned when it stopped the exchange). */
int cp_httpc_exchange(const struct cp_httpc_io *io, const struct cp_httpc_req *rq,
                      struct cp_httpc_response *out, char *err, size_t errlen);

/* Connects a blocking TCP socket to host:port with send and receive timeouts of
 * timeout_ms. Returns the fd, or -errno with err set ("cannot connect to ..."). */
int cp_httpc_connect(const char *host, const char *port, int timeout_ms, char *err, size_t errlen);

/* Splits base_url (http:// or https://; the port defaults to 80 or 443) into host, port
 * and path prefix, with http-parser's URL parser; a user, query or fragment in it is refused.
 * Returns 0 or -EINVAL (with err: "--api URL: ..."). Exposed for tests. */
int cp_httpc_parse_url(const char *url, char *host, size_t hostlen, char *port, size_t portlen,
                       char *prefix, size_t prefixlen, char *err, size_t errlen);

/* True when url starts with "https://". */
bool cp_httpc_url_is_https(const char *url);

#endif
