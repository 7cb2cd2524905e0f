/* URL query strings for the operator API, the admin endpoint and tetherctl: finding one key's value
 * (percent-decoded) and writing a value percent-encoded. The URL itself is split into
 * path and query by http-parser (http_parser_parse_url); this takes the query part. Pure:
 * no allocation, no I/O. */
#ifndef TT_QUERY_H
#define TT_QUERY_H

#include <stddef.h>

/* Finds `key` in `query` (the text after '?', without it and without a fragment; NULL is
 * an empty query) and writes its value, percent-decoded, into out[outlen]. Parameters are
 * separated by '&'; names are compared as sent (not decoded); in the value "%XX" is the
 * byte XX and '+' a space (as HTML forms encode it); "key" without '=' has the value "".
 * Returns 0, or
 *   -ENOENT  no parameter named key;
 *   -EINVAL  the value holds a '%' not followed by two hex digits, or decodes to a NUL;
 *   -EEXIST  key is given more than once (ambiguous: refused rather than one picked);
 *   -ENOSPC  the decoded value does not fit in out.
 * out is "" on every error. Other parameters are not checked. */
int tt_query_get(const char *query, const char *key, char *out, size_t outlen);

/* Writes `value` percent-encoded for a query into out[outlen]: unreserved characters
 * (RFC 3986 §2.3: ALPHA DIGIT - . _ ~) as they are, every other byte as %XX (upper-case
 * hex). Returns 0, or -ENOSPC when it does not fit (out is then ""). */
int tt_query_escape(const char *value, char *out, size_t outlen);

#endif
