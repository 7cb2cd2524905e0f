/* Protocol detection on a connection's first bytes (see detect.h). Each candidate
 * protocol has a small matcher that says whether the bytes so far are a complete match,
 * still a prefix of one, or no match; the answer is the first complete match, else
 * "more" while some candidate is still possible (and the bound is not reached), else
 * opaque. */
#include <string.h>

#include "http/detect.h"

/* What one matcher says about the bytes so far. */
enum match {
    M_NO,   /* cannot be this protocol */
    M_MORE, /* a proper prefix: could still be */
    M_YES,  /* decided: it is */
};

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* The methods an HTTP/1.x request may start with: RFC 9110 §9, PATCH (RFC 5789), and the
 * others Debian's http-parser 2.9 parses (WebDAV, CalDAV, UPnP, PURGE...), so that
 * whatever detection calls HTTP/1 the reader can parse. Never "PRI": that is the HTTP/2
 * preface. */
static const char *const methods[] = {
    "GET",         "HEAD",       "POST",       "PUT",   "DELETE",   "CONNECT", "OPTIONS",
    "TRACE",       "PATCH",      "COPY",       "LOCK",  "MKCOL",    "MOVE",    "PROPFIND",
    "PROPPATCH",   "SEARCH",     "UNLOCK",     "BIND",  "REBIND",   "UNBIND",  "ACL",
    "REPORT",      "MKACTIVITY", "CHECKOUT",   "MERGE", "M-SEARCH", "NOTIFY",  "SUBSCRIBE",
    "UNSUBSCRIBE", "PURGE",      "MKCALENDAR", "LINK",  "UNLINK",   "SOURCE",
};

/* True when method[0..len) is a known method. */
bool tt_detect_method_known(const char *method, size_t len)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strlen(methods[i]) == len && memcmp(methods[i], method, len) == 0)
            return true;
    }
    return false;
}

/* True when s[0..len) is a proper or complete prefix of some known method. */
static bool method_prefix(const uint8_t *s, size_t len)
{
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        if (strlen(methods[i]) >= len && memcmp(methods[i], s, len) == 0)
            return true;
    }
    return false;
}

/* Compares data[0..len) with the literal lit: M_YES when data starts with all of it,
 * M_MORE when data is a proper prefix of it, M_NO otherwise. */
static enum match literal(const uint8_t *data, size_t len, const char *lit, size_t lit_len)
{
    size_t n = len < lit_len ? len : lit_len;

    if (memcmp(data, lit, n) != 0)
        return M_NO;
    return len >= lit_len ? M_YES : M_MORE;
}

/* "METHOD SP request-target SP HTTP/1.x" followed by CR or LF (RFC 9112 §3). The target is
 * one or more bytes that are neither whitespace nor control characters; its syntax is the
 * reader's to check. */
static enum match match_http1(const uint8_t *d, size_t len)
{
    static const char version[] = "HTTP/1.";
    size_t i, sp1, sp2, v;

    for (i = 0; i < len && d[i] != ' '; i++)
        ;
    if (!method_prefix(d, i))
        return M_NO;
    if (i == len)
        return M_MORE;
    if (!tt_detect_method_known((const char *)d, i))
        return M_NO;
    sp1 = i;
    for (i = sp1 + 1; i < len && d[i] > 0x20 && d[i] != 0x7f; i++)
        ;
    if (i == len)
        return M_MORE;
    if (d[i] != ' ' || i == sp1 + 1)
        return M_NO;
    sp2 = i;
    v = sp2 + 1;
    switch (literal(d + v, len - v, version, sizeof(version) - 1)) {
    case M_NO:
        return M_NO;
    case M_MORE:
        return M_MORE;
    case M_YES:
        break;
    }
    v += sizeof(version) - 1;
    if (v == len)
        return M_MORE;
    if (d[v] != '0' && d[v] != '1')
        return M_NO;
    if (v + 1 == len)
        return M_MORE;
    return d[v + 1] == '\r' || d[v + 1] == '\n' ? M_YES : M_NO;
}

/* A TLS record header (RFC 8446 §5.1: type 22 handshake, legacy version 0x0300..0x0304,
 * a length of 1..2^14+2048) whose first handshake byte is 1, client_hello (§4). */
static enum match match_tls(const uint8_t *d, size_t len)
{
    if (len >= 1 && d[0] != 0x16)
        return M_NO;
    if (len >= 2 && d[1] != 0x03)
        return M_NO;
    if (len >= 3 && d[2] > 0x04)
        return M_NO;
    if (len >= 5) {
        unsigned rlen = (unsigned)d[3] << 8 | d[4];

        if (rlen == 0 || rlen > 16384 + 2048)
            return M_NO;
    }
    if (len >= 6)
        return d[5] == 0x01 ? M_YES : M_NO;
    return M_MORE;
}

/* Classifies a connection's first bytes; see detect.h. */
enum tt_detect_proto tt_detect_check(const uint8_t *data, size_t len, size_t limit)
{
    enum match h1, h2, tls;

    if (len == 0)
        return limit == 0 ? TT_DETECT_OPAQUE : TT_DETECT_MORE;
    h2 = literal(data, len, h2_preface, sizeof(h2_preface) - 1);
    if (h2 == M_YES)
        return TT_DETECT_H2;
    h1 = match_http1(data, len);
    if (h1 == M_YES)
        return TT_DETECT_HTTP1;
    tls = match_tls(data, len);
    if (tls == M_YES)
        return TT_DETECT_TLS;
    if ((h1 == M_MORE || h2 == M_MORE || tls == M_MORE) && len < limit)
        return TT_DETECT_MORE;
    return TT_DETECT_OPAQUE;
}

/* A result's name for logs and metrics. */
const char *tt_detect_name(enum tt_detect_proto p)
{
    switch (p) {
    case TT_DETECT_MORE:
        return "more";
    case TT_DETECT_HTTP1:
        return "http1";
    case TT_DETECT_H2:
        return "h2";
    case TT_DETECT_TLS:
        return "tls";
    case TT_DETECT_OPAQUE:
        break;
    }
    return "opaque";
}
