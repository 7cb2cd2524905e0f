/* A tiny blocking HTTP/1.1 client for tetherctl: one request per connection (plain TCP,
 * Content-Length, Connection: close), the response parsed with http-parser. No TLS:
 * tetherctl talks to the operator API on loopback. */
#ifndef CP_HTTPC_H
#define CP_HTTPC_H

#include <stddef.h>

#define CP_HTTPC_BODY_MAX (16 * 1024 * 1024)

struct cp_httpc_response {
    int status;
    char *body; /* NUL-terminated, heap; "" when empty */
    size_t body_len;
    char ctype[128];
};

/* Sends `method` `path` (which may hold a query) to the server of base_url
 * ("http://HOST:PORT", host an IP, [IPv6] or a name; a path prefix is kept) with an
 * optional body, and reads the whole response. Times out after timeout_ms without
 * progress. Returns 0 and fills *out (free with cp_httpc_response_done), or a negative
 * errno with a message in err ("cannot connect to 127.0.0.1:15014: Connection
 * refused"). */
int cp_httpc_request(const char *base_url, const char *method, const char *path, const char *ctype,
                     const char *body, size_t body_len, int timeout_ms,
                     struct cp_httpc_response *out, char *err, size_t errlen);

void cp_httpc_response_done(struct cp_httpc_response *r);

/* Splits base_url into host, port and path prefix. Returns 0 or -EINVAL (with err:
 * "--api URL: ..."). Exposed for tests. */
int cp_httpc_parse_url(const char *url, char *host, size_t hostlen, char *port, size_t portlen,
                       char *prefix, size_t prefixlen, char *err, size_t errlen);

#endif
