/* Query strings: one key's value, percent-decoded; one value, percent-encoded (see
 * query.h). */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "core/query.h"

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes v[0..n) into out[outlen]. Returns 0, -EINVAL or -ENOSPC. */
static int decode(const char *v, size_t n, char *out, size_t outlen)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        int ch = (unsigned char)v[i];

        if (ch == '%') {
            int hi, lo;

            if (i + 2 >= n) /* both digits must be inside the value */
                return -EINVAL;
            hi = hexval((unsigned char)v[i + 1]);
            lo = hexval((unsigned char)v[i + 2]);
            if (hi < 0 || lo < 0)
                return -EINVAL;
            ch = hi * 16 + lo;
            i += 2;
        } else if (ch == '+') {
            ch = ' ';
        }
        if (ch == 0)
            return -EINVAL;
        if (o + 1 >= outlen)
            return -ENOSPC;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

/* Finds key's single value and decodes it; see query.h. */
int tt_query_get(const char *query, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key);
    const char *q = query, *val = NULL;
    size_t vlen = 0;
    int rc;

    if (outlen == 0)
        return -ENOSPC;
    out[0] = '\0';
    while (q != NULL && *q != '\0') {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);

        if (n >= klen && strncmp(q, key, klen) == 0 && (n == klen || q[klen] == '=')) {
            if (val != NULL)
                return -EEXIST;
            val = n == klen ? q + n : q + klen + 1;
            vlen = n == klen ? 0 : n - klen - 1;
        }
        q = amp ? amp + 1 : NULL;
    }
    if (val == NULL)
        return -ENOENT;
    rc = decode(val, vlen, out, outlen);
    if (rc != 0)
        out[0] = '\0';
    return rc;
}

/* Percent-encodes value into out; see query.h. */
int tt_query_escape(const char *value, char *out, size_t outlen)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;

    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~';

        if (o + (plain ? 1 : 3) >= outlen) {
            if (outlen > 0)
                out[0] = '\0';
            return -ENOSPC;
        }
        if (plain) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    if (o >= outlen)
        return -ENOSPC;
    out[o] = '\0';
    return 0;
}
