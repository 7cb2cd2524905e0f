/* Small shared helpers: container_of, durations and addresses as DESIGN.md writes them. */
#ifndef TT_UTIL_H
#define TT_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define tt_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define TT_ARRAY_SIZE(a)                   (sizeof(a) / sizeof((a)[0]))

/* Parses a duration such as "250ms", "10s", "5m", "1h", "1h30m" (units ms, s, m, h;
 * components in decreasing order; at least one) into milliseconds. Returns 0, or
 * -EINVAL for anything else (empty, negative, unknown unit, overflow). */
int tt_duration_parse(const char *text, uint64_t *ms_out);

/* Writes `ms` in the same notation ("1h30m", "250ms", "0s") into buf. */
void tt_duration_format(uint64_t ms, char *buf, size_t len);

/* Writes v in decimal into buf (TT_U64_TEXT_MAX bytes: 20 digits and a NUL), returns its
 * length. For per-request paths, where snprintf's cost shows. */
#define TT_U64_TEXT_MAX 21
size_t tt_u64_text(uint64_t v, char *buf);

/* Copies the string src (NULL reads as "") into dst of `cap` bytes (cap > 0), cut to
 * cap - 1 bytes, always NUL-terminated; returns the length copied. */
size_t tt_str_copy(char *dst, size_t cap, const char *src);

/* Copies src[0..n) into dst with ASCII A-Z lowered (header names; no locale, no call per
 * byte as tolower makes). dst may be src. */
static inline void tt_ascii_lower(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = src[i];

        dst[i] = c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
    }
}

#define TT_ADDR_TEXT_MAX 300

/* A socket address plus the text it was written as. */
struct tt_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[TT_ADDR_TEXT_MAX]; /* normalized: "1.2.3.4:80", "[::1]:80", "host:80" */
};

/* Flags of tt_addr_parse(). */
#define TT_ADDR_ZERO_PORT 1 /* port 0 is allowed (the kernel picks one) */
#define TT_ADDR_NUMERIC   2 /* IP literals only: a host name is -EINVAL, never resolved */

/* Parses "IP:PORT", "[IPv6]:PORT" or "host:PORT" (host resolved now with getaddrinfo,
 * first result, unless TT_ADDR_NUMERIC). Port must be 1..65535 (0 too with
 * TT_ADDR_ZERO_PORT). Returns 0, -EINVAL for a malformed string, or -ENOENT when the host
 * does not resolve. */
int tt_addr_parse(const char *text, int flags, struct tt_addr *out);

/* Port of a parsed address, in host order. */
uint16_t tt_addr_port(const struct tt_addr *addr);

/* Formats a sockaddr as "1.2.3.4:80" or "[::1]:80" into buf (at least 64 bytes). */
void tt_sockaddr_format(const struct sockaddr *sa, char *buf, size_t len);

/* Wall-clock seconds since the epoch and a monotonic clock in milliseconds. */
int64_t tt_now_unix(void);
uint64_t tt_now_ms(void);

/* Reads a whole file (at most max_len bytes) into a NUL-terminated heap buffer. Returns
 * 0 and sets *data (caller frees) and *len, or -errno (-EFBIG when over max_len). */
int tt_file_read(const char *path, size_t max_len, char **data, size_t *len);

/* Writes the canonical form of a certificate serial number (upper-case hex, no colons, no
 * leading zeros, "0" for zero; DESIGN.md) of `in`, which may use either case, single
 * colons between digits, leading zeros, a "serial=" prefix as `openssl x509 -serial`
 * prints it or "0x", and trailing whitespace. Returns 0, -EINVAL for anything else
 * (empty, other characters, more than 40 significant digits: RFC 5280 §4.1.2.2 allows 20
 * octets), or -ENOSPC when out is too small. */
int tt_serial_normalize(const char *in, char *out, size_t outlen);

/* Raises the process's soft RLIMIT_NOFILE to its hard limit (a process that may hold
 * thousands of connections should not live with a shell's 1024). Sets *soft to the soft
 * limit in force afterwards and *hard to the hard limit (UINT64_MAX for none; either may
 * be NULL). Returns 0, or -errno when getrlimit/setrlimit refused (the old limit stays;
 * the caller says so). Shared by the sidecar and tether-control. */
int tt_nofile_raise(uint64_t *soft, uint64_t *hard);

/* Writes a printf-style message into err[0..errlen) (nothing when err is NULL or errlen
 * is 0): the one way modules fill the `char *err, size_t errlen` they are given. */
void tt_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
