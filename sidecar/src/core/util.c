/* Small shared helpers: durations ("1h30m"), addresses ("[::1]:8080"), clocks, whole-file
 * reads. No allocation except tt_file_read(); no logging. */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"

/* Duration units, largest first: a duration's components must follow this order. */
static const struct {
    const char *name;
    uint64_t ms;
} duration_units[] = {
    {"h", 3600 * 1000},
    {"m", 60 * 1000},
    {"s", 1000},
    {"ms", 1},
};

/* Matches the unit at `p` ("ms" is tried before "m"); returns its index or -1 and sets
 * *unit_len. */
static int duration_unit(const char *p, size_t *unit_len)
{
    if (p[0] == 'm' && p[1] == 's') {
        *unit_len = 2;
        return 3;
    }
    *unit_len = 1;
    switch (p[0]) {
    case 'h':
        return 0;
    case 'm':
        return 1;
    case 's':
        return 2;
    }
    return -1;
}

/* Parses "250ms", "10s", "1h30m", "1m30s500ms" into milliseconds. Each component is one or
 * more decimal digits followed by a unit (h, m, s, ms, lower case); units appear at most
 * once and in decreasing order. Returns 0 or -EINVAL (empty, sign, fraction, unknown unit,
 * wrong order, overflow of uint64_t milliseconds, trailing bytes). */
int tt_duration_parse(const char *text, uint64_t *ms_out)
{
    const char *p = text;
    uint64_t total = 0;
    int last_unit = -1;

    if (text == NULL || *text == '\0')
        return -EINVAL;
    while (*p != '\0') {
        uint64_t n = 0, part;
        size_t unit_len;
        int unit;

        if (!isdigit((unsigned char)*p))
            return -EINVAL;
        while (isdigit((unsigned char)*p)) {
            unsigned d = (unsigned)(*p - '0');

            if (n > (UINT64_MAX - d) / 10)
                return -EINVAL;
            n = n * 10 + d;
            p++;
        }
        unit = duration_unit(p, &unit_len);
        if (unit < 0 || unit <= last_unit)
            return -EINVAL;
        if (__builtin_mul_overflow(n, duration_units[unit].ms, &part) ||
            __builtin_add_overflow(total, part, &total))
            return -EINVAL;
        last_unit = unit;
        p += unit_len;
    }
    *ms_out = total;
    return 0;
}

/* v in decimal (util.h). */
size_t tt_u64_text(uint64_t v, char *buf)
{
    char rev[TT_U64_TEXT_MAX];
    size_t n = 0;

    do {
        rev[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        buf[i] = rev[n - 1 - i];
    buf[n] = '\0';
    return n;
}

/* A bounded string copy (util.h). */
size_t tt_str_copy(char *dst, size_t cap, const char *src)
{
    size_t n = src != NULL ? strnlen(src, cap - 1) : 0;

    if (n > 0) /* memcpy from NULL is undefined even for 0 bytes */
        memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

/* Writes ms as "1h30m", "250ms", "1m30s500ms" or "0s" into buf; truncates to fit len. */
void tt_duration_format(uint64_t ms, char *buf, size_t len)
{
    size_t pos = 0;

    if (len == 0)
        return;
    buf[0] = '\0';
    if (ms == 0) {
        snprintf(buf, len, "0s");
        return;
    }
    for (size_t i = 0; i < TT_ARRAY_SIZE(duration_units); i++) {
        uint64_t n = ms / duration_units[i].ms;
        int w;

        if (n == 0)
            continue;
        ms -= n * duration_units[i].ms;
        w = snprintf(buf + pos, len - pos, "%llu%s", (unsigned long long)n, duration_units[i].name);
        if (w < 0 || (size_t)w >= len - pos)
            return; /* truncated; snprintf left buf terminated */
        pos += (size_t)w;
    }
}

/* Parses a port of 1 to 5 decimal digits; returns it, or -1 when malformed or > 65535. */
static long parse_port(const char *s)
{
    long v = 0;
    size_t n = 0;

    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++, n++) {
        if (!isdigit((unsigned char)*s) || n >= 5)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v <= 65535 ? v : -1;
}

/* True when host is a plausible DNS name: letters, digits, '-', '.', '_', at most 253
 * bytes, and a last label that is not a number. Keeps hostile strings away from the
 * resolver, and refuses "1.2.3", "999.1.1.1" or "0x7f.1": getaddrinfo() would take some of
 * them as inet_aton()'s legacy IPv4 forms, and no top-level domain is a number. */
static int is_hostname(const char *host)
{
    size_t n = strlen(host);
    const char *last;

    if (n == 0 || n > 253)
        return 0;
    for (const char *p = host; *p != '\0'; p++) {
        unsigned char c = (unsigned char)*p;

        if (!isalnum(c) && c != '-' && c != '.' && c != '_')
            return 0;
    }
    last = strrchr(host, '.');
    last = last ? last + 1 : host;
    if (last[0] == '0' && (last[1] == 'x' || last[1] == 'X'))
        last += 2;
    if (*last == '\0' || strspn(last, "0123456789") == strlen(last))
        return 0;
    if (last != host && last[-1] != '.' && strspn(last, "0123456789abcdefABCDEF") == strlen(last))
        return 0; /* "0x7f" */
    return 1;
}

/* Sets the port of an AF_INET or AF_INET6 address (host order in). */
static void set_port(struct sockaddr_storage *ss, uint16_t port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons(port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons(port);
}

/* Parses "IP:PORT", "[IPv6]:PORT" or "host:PORT" into out. IPv4 literals must be dotted
 * quads, IPv6 literals must be bracketed, names are resolved now (first getaddrinfo()
 * result). out->text is normalized: "1.2.3.4:80", "[::1]:80", or the name in lower case
 * and the port. Returns 0, -EINVAL when malformed or the port is out of range (0 only
 * when allow_zero_port), -ENOENT when the name does not resolve, -ENOMEM. */
int tt_addr_parse(const char *text, int flags, struct tt_addr *out)
{
    char host[256]; /* a DNS name is at most 253 bytes, an IPv6 literal far less */
    const char *port_text;
    struct addrinfo hints, *res = NULL;
    long port;
    int bracketed = 0, rc;

    memset(out, 0, sizeof(*out));
    if (text == NULL || strlen(text) >= TT_ADDR_TEXT_MAX)
        return -EINVAL;

    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        size_t n;

        if (close == NULL || close[1] != ':')
            return -EINVAL;
        n = (size_t)(close - text - 1);
        if (n >= sizeof(host))
            return -EINVAL;
        memcpy(host, text + 1, n);
        host[n] = '\0';
        port_text = close + 2;
        bracketed = 1;
    } else {
        const char *colon = strrchr(text, ':');
        size_t n;

        if (colon == NULL)
            return -EINVAL;
        n = (size_t)(colon - text);
        if (n >= sizeof(host))
            return -EINVAL;
        memcpy(host, text, n);
        host[n] = '\0';
        if (strchr(host, ':') != NULL)
            return -EINVAL; /* IPv6 without brackets: "::1:80" is ambiguous */
        port_text = colon + 1;
    }
    if (host[0] == '\0')
        return -EINVAL;
    port = parse_port(port_text);
    if (port < 0 || (port == 0 && !(flags & TT_ADDR_ZERO_PORT)))
        return -EINVAL;

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    if (bracketed) {
        hints.ai_family = AF_INET6;
        hints.ai_flags = AI_NUMERICHOST;
    } else {
        struct in_addr a4;

        if (inet_pton(AF_INET, host, &a4) == 1) {
            hints.ai_family = AF_INET;
            hints.ai_flags = AI_NUMERICHOST;
        } else if (!is_hostname(host) || (flags & TT_ADDR_NUMERIC)) {
            return -EINVAL;
        } else {
            hints.ai_family = AF_UNSPEC;
        }
    }
    rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0) {
        if (rc == EAI_MEMORY)
            return -ENOMEM;
        return (hints.ai_flags & AI_NUMERICHOST) ? -EINVAL : -ENOENT;
    }
    if (res == NULL || res->ai_addrlen > sizeof(out->ss)) {
        freeaddrinfo(res);
        return -ENOENT;
    }
    memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
    out->len = res->ai_addrlen;
    freeaddrinfo(res);
    set_port(&out->ss, (uint16_t)port);

    if (hints.ai_flags & AI_NUMERICHOST) {
        tt_sockaddr_format((const struct sockaddr *)&out->ss, out->text, sizeof(out->text));
    } else {
        for (char *p = host; *p != '\0'; p++)
            *p = (char)tolower((unsigned char)*p);
        snprintf(out->text, sizeof(out->text), "%s:%ld", host, port);
    }
    return 0;
}

/* Returns the port of addr in host order, 0 for a family without ports. */
uint16_t tt_addr_port(const struct tt_addr *addr)
{
    if (addr->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&addr->ss)->sin_port);
    if (addr->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&addr->ss)->sin6_port);
    return 0;
}

/* Formats sa as "1.2.3.4:80", "[::1]:80" (with "%scope" for link-local), "unix:PATH", or
 * "-" for NULL and "family N" otherwise. Always NUL-terminates when len > 0. */
void tt_sockaddr_format(const struct sockaddr *sa, char *buf, size_t len)
{
    char host[NI_MAXHOST];

    if (len == 0)
        return;
    if (sa == NULL) {
        snprintf(buf, len, "-");
        return;
    }
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
        snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
        return;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

        /* getnameinfo() adds the scope ("%eth0") that inet_ntop() drops. */
        if (getnameinfo(sa, sizeof(*sin6), host, sizeof(host), NULL, 0, NI_NUMERICHOST) != 0)
            inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
        snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
        return;
    }
    case AF_UNIX: {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;

        snprintf(buf, len, "unix:%.*s", (int)sizeof(sun->sun_path), sun->sun_path);
        return;
    }
    }
    snprintf(buf, len, "family %d", (int)sa->sa_family);
}

/* Wall-clock seconds since the Unix epoch. */
int64_t tt_now_unix(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

/* Milliseconds on CLOCK_MONOTONIC: only differences are meaningful. */
uint64_t tt_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Reads the whole file at path into a NUL-terminated heap buffer (caller frees *data).
 * Works for files whose size stat() does not know (procfs, pipes). Returns 0, -EFBIG when
 * the file holds more than max_len bytes, -ENOMEM, or the -errno of open/read (-EISDIR
 * for a directory). On error *data and *len are untouched. */
int tt_file_read(const char *path, size_t max_len, char **data, size_t *len)
{
    struct stat st;
    size_t cap, used = 0;
    char *buf;
    int fd, rc;

    if (max_len > SIZE_MAX / 4)
        max_len = SIZE_MAX / 4; /* keeps max_len + 2 from wrapping */
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto err_close;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = -EISDIR;
        goto err_close;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max_len) {
        rc = -EFBIG;
        goto err_close;
    }
    cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : 4096;
    if (cap > max_len + 1)
        cap = max_len + 1;
    buf = malloc(cap);
    if (buf == NULL) {
        rc = -ENOMEM;
        goto err_close;
    }
    for (;;) {
        ssize_t n;

        if (used + 1 == cap) {
            /* Full: either the file grew, or its size was unknown. One more byte than
             * max_len proves it is too large. */
            size_t ncap = cap * 2;
            char *nbuf;

            if (used > max_len) {
                rc = -EFBIG;
                goto err_free;
            }
            if (ncap > max_len + 2)
                ncap = max_len + 2;
            nbuf = realloc(buf, ncap);
            if (nbuf == NULL) {
                rc = -ENOMEM;
                goto err_free;
            }
            buf = nbuf;
            cap = ncap;
        }
        n = read(fd, buf + used, cap - 1 - used);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            goto err_free;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    if (used > max_len) {
        rc = -EFBIG;
        goto err_free;
    }
    buf[used] = '\0';
    close(fd);
    *data = buf;
    *len = used;
    return 0;

err_free:
    free(buf);
err_close:
    close(fd);
    return rc;
}

/* Normalizes a certificate serial number (see util.h): optional "serial=" or "0x",
 * hex digits in either case, single colons between them, leading zeros ignored,
 * trailing whitespace allowed. */
int tt_serial_normalize(const char *in, char *out, size_t outlen)
{
    char digits[41];
    size_t n = 0;
    bool seen = false, last_colon = true;
    const char *p = in;

    if (in == NULL)
        return -EINVAL;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncmp(p, "serial=", 7) == 0) /* `openssl x509 -serial` output as it is */
        p += 7;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
        p += 2;
    for (; *p; p++) {
        if (*p == ':') {
            if (last_colon)
                return -EINVAL; /* leading or doubled colon */
            last_colon = true;
            continue;
        }
        if (!isxdigit((unsigned char)*p)) {
            /* Trailing whitespace (a pasted line) is fine; anything else is not. */
            while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
                p++;
            if (*p != '\0')
                return -EINVAL;
            break;
        }
        last_colon = false;
        seen = true;
        if (n == 0 && *p == '0')
            continue;
        if (n >= sizeof(digits) - 1)
            return -EINVAL;
        digits[n++] = (char)toupper((unsigned char)*p);
    }
    if (!seen || (last_colon && p > in && p[-1] == ':'))
        return -EINVAL;
    if (n == 0)
        digits[n++] = '0';
    digits[n] = '\0';
    if (n + 1 > outlen)
        return -ENOSPC;
    memcpy(out, digits, n + 1);
    return 0;
}

/* Formats a one-line error message into err (if any room). */
void tt_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Raises the soft open-files limit to the hard one (see util.h). */
int tt_nofile_raise(uint64_t *soft, uint64_t *hard)
{
    struct rlimit rl;
    int err = 0;

    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        err = -errno;
        rl.rlim_cur = rl.rlim_max = RLIM_INFINITY;
    } else if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = {.rlim_cur = rl.rlim_max, .rlim_max = rl.rlim_max};

        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl.rlim_cur = rl.rlim_max;
        else
            err = -errno;
    }
    if (soft != NULL)
        *soft = rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
    if (hard != NULL)
        *hard = rl.rlim_max == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_max;
    return err;
}
