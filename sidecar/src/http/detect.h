/* Protocol detection on the first bytes of a connection (Tether issue 10, "HTTP-aware
 * sidecars"): an HTTP/1.x request, the HTTP/2 connection preface (prior knowledge), a TLS
 * ClientHello, or anything else (opaque). Pure and I/O-free: the caller buffers what the
 * client sent and asks again as more arrives. The inbound request gate (gate.h) uses it
 * where only audit rules apply (HTTP is read, anything else relayed); the outbound side
 * will use it with the pool to choose between HTTP streams and a tunnel.
 *
 * The caller owns the timeout: a client that waits for the server to speak first (SMTP,
 * MySQL, SSH servers...) sends nothing, so when the caller's detection timer fires while
 * the answer is still TT_DETECT_MORE, the connection is opaque. */
#ifndef TT_DETECT_H
#define TT_DETECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tt_detect_proto {
    TT_DETECT_MORE,   /* the bytes so far are a prefix of more than one answer: read more */
    TT_DETECT_HTTP1,  /* a request line "METHOD SP target SP HTTP/1.0|1.1" then CR or LF */
    TT_DETECT_H2,     /* the whole 24-byte preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */
    TT_DETECT_TLS,    /* a TLS handshake record holding a ClientHello (first 6 bytes) */
    TT_DETECT_OPAQUE, /* anything else */
};

/* The default byte bound: a request line longer than this is not waited for. */
#define TT_DETECT_LIMIT 8192

/* Classifies the first `len` bytes a client sent. TT_DETECT_MORE while they are still a
 * proper prefix of an HTTP/1.x request line (a known method, see
 * tt_detect_method_known), of the HTTP/2 preface or of a TLS ClientHello record header,
 * and len < limit; at `limit` bytes an undecided prefix is TT_DETECT_OPAQUE. Once an answer
 * other than TT_DETECT_MORE is given, more bytes behind the same prefix give the same
 * answer. The bytes after the line break are not looked at: a request line ending in a
 * bare LF is HTTP/1 here and refused by the HTTP/1 reader (http/h1.h), not tunnelled.
 * Pure. */
enum tt_detect_proto tt_detect_check(const uint8_t *data, size_t len, size_t limit);

/* True when method[0..len) is one of the methods detection counts as HTTP/1.x (the
 * RFC 9110 methods, PATCH, and the WebDAV and other methods Debian's http-parser knows).
 * Pure. */
bool tt_detect_method_known(const char *method, size_t len);

/* The name of a result ("http1", "h2", "tls", "opaque", "more") for logs and metrics. */
const char *tt_detect_name(enum tt_detect_proto p);

#endif
