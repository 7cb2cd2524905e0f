/* SPIFFE IDs and policy patterns: pure string checks, no allocation, no I/O.
 *
 * The rules follow the SPIFFE ID specification (spiffe/standards, SPIFFE-ID.md §2):
 * scheme "spiffe" in lower case, trust domain of lower-case letters, digits, '.', '-'
 * and '_', path segments of letters, digits, '.', '-' and '_' that are neither empty nor
 * "." nor "..". Everything URI syntax would otherwise allow (percent-encoding, query,
 * fragment, port, userinfo) is refused simply because those characters are not in the
 * two character sets. */
#include <string.h>

#include "core/errors.h"
#include "core/spiffe.h"

#define SCHEME     "spiffe://"
#define SCHEME_LEN (sizeof(SCHEME) - 1)

static bool is_td_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

static bool is_path_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

/* Returns the length of the trust domain of id[0..len) (0 when it is invalid), after
 * checking the scheme. */
static size_t td_span(const char *id, size_t len)
{
    size_t i;

    if (len < SCHEME_LEN || memcmp(id, SCHEME, SCHEME_LEN) != 0)
        return 0;
    for (i = SCHEME_LEN; i < len && id[i] != '/'; i++) {
        if (!is_td_char((unsigned char)id[i]))
            return 0;
    }
    return i - SCHEME_LEN;
}

/*
 * Validates id[0..len) as a SPIFFE ID; see spiffe.h. Works on a length so that an
 * embedded NUL byte (a classic certificate SAN trick) is seen and refused.
 */
int tt_spiffe_check(const char *id, size_t len, bool allow_no_path)
{
    size_t td, i, seg;

    if (id == NULL || len > TT_SPIFFE_MAX)
        return TT_E_SPIFFE;
    td = td_span(id, len);
    if (td == 0)
        return TT_E_SPIFFE;
    i = SCHEME_LEN + td;
    if (i == len)
        return allow_no_path ? 0 : TT_E_SPIFFE;

    /* id[i] == '/': one or more segments follow, each introduced by a slash. */
    while (i < len) {
        i++; /* the slash */
        seg = i;
        while (i < len && id[i] != '/') {
            if (!is_path_char((unsigned char)id[i]))
                return TT_E_SPIFFE;
            i++;
        }
        if (i == seg) /* empty segment: "//" or a trailing slash */
            return TT_E_SPIFFE;
        if (id[seg] == '.' && (i - seg == 1 || (i - seg == 2 && id[seg + 1] == '.')))
            return TT_E_SPIFFE;
    }
    return 0;
}

/*
 * Validates a policy pattern; see spiffe.h. An exact pattern must be a workload ID (with
 * a path): a bare trust domain names no workload, and "spiffe://td/" followed by "*" says
 * "the whole trust domain".
 */
int tt_spiffe_pattern_check(const char *pattern)
{
    size_t len;

    if (pattern == NULL)
        return TT_E_SPIFFE;
    len = strlen(pattern);
    if (len == 1 && pattern[0] == '*')
        return 0;
    if (len >= 2 && pattern[len - 2] == '/' && pattern[len - 1] == '*')
        return tt_spiffe_check(pattern, len - 2, true);
    return tt_spiffe_check(pattern, len, false);
}

/*
 * Matches an ID against a pattern; see spiffe.h. A NULL id matches nothing, not even
 * "*": "*" means any authenticated identity, not the absence of one.
 */
bool tt_spiffe_match(const char *pattern, const char *id)
{
    size_t plen;

    if (pattern == NULL || id == NULL)
        return false;
    plen = strlen(pattern);
    if (plen == 1 && pattern[0] == '*')
        return true;
    if (plen >= 2 && pattern[plen - 2] == '/' && pattern[plen - 1] == '*') {
        /* Compare the prefix including its slash, so a pattern ending ".../shop/" cannot match
         * ".../shopping/...", then require at least one more character. */
        return strncmp(id, pattern, plen - 1) == 0 && id[plen - 1] != '\0';
    }
    return strcmp(pattern, id) == 0;
}

/*
 * Copies the trust domain of a valid ID into buf; see spiffe.h.
 */
int tt_spiffe_trust_domain(const char *id, char *buf, size_t len)
{
    size_t idlen, td;

    if (id == NULL || buf == NULL)
        return TT_E_SPIFFE;
    idlen = strnlen(id, TT_SPIFFE_MAX + 1);
    if (tt_spiffe_check(id, idlen, true) != 0)
        return TT_E_SPIFFE;
    td = td_span(id, idlen);
    if (td + 1 > len)
        return TT_E_SPIFFE;
    memcpy(buf, id + SCHEME_LEN, td);
    buf[td] = '\0';
    return 0;
}

/* Reserved-namespace test: the path after the trust domain is "/ns/tether-system" exactly or
 * starts with "/ns/tether-system/". The ID is validated first, so no spelling of the path
 * ("..", "%2F", "//") can hide the prefix. */
bool tt_spiffe_reserved(const char *id)
{
    static const char prefix[] = "/ns/" TT_SPIFFE_RESERVED_NS;
    size_t idlen, td;
    const char *path;

    if (id == NULL)
        return false;
    idlen = strnlen(id, TT_SPIFFE_MAX + 1);
    if (tt_spiffe_check(id, idlen, true) != 0)
        return false;
    td = td_span(id, idlen);
    path = id + SCHEME_LEN + td;
    return strncmp(path, prefix, sizeof(prefix) - 1) == 0 &&
           (path[sizeof(prefix) - 1] == '\0' || path[sizeof(prefix) - 1] == '/');
}
