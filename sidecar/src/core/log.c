/* JSON-lines logger: each call formats into a stack buffer and writes it with one
 * write(2), so concurrent threads never interleave within a line. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"

#define LOG_LINE_MAX 8192

static enum tt_log_level log_min_level = TT_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* Sets the lowest level written. */
void tt_log_set_level(enum tt_log_level level)
{
    __atomic_store_n(&log_min_level, level, __ATOMIC_RELAXED);
}

/* Parses a level name; returns 0 or -EINVAL. */
int tt_log_level_parse(const char *name, enum tt_log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum tt_log_level)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* True when `level` is at or above the configured minimum. */
bool tt_log_enabled(enum tt_log_level level)
{
    return level >= __atomic_load_n(&log_min_level, __ATOMIC_RELAXED);
}

/* Appends raw bytes, truncating at the capacity (one byte is kept for '\n'). */
static void put_raw(char *buf, size_t cap, size_t *pos, const char *s, size_t n)
{
    if (*pos >= cap)
        return;
    if (n > cap - *pos)
        n = cap - *pos;
    memcpy(buf + *pos, s, n);
    *pos += n;
}

/* Appends `s` JSON-escaped (RFC 8259 §7) without surrounding quotes. Bytes >= 0x80 are
 * copied as they are when they form valid UTF-8 and escaped as \u00XX otherwise, so a
 * hostile peer's string never breaks the line. */
void tt_json_escape(char *buf, size_t cap, size_t *pos, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;

    while (*p && *pos < cap) {
        unsigned char c = *p;
        char esc[8];
        size_t n = 0;

        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2);
            n = 2;
        } else if (c == '\r') {
            memcpy(esc, "\\r", 2);
            n = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2);
            n = 2;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        } else if (c >= 0x80) {
            /* Length of a well-formed UTF-8 sequence starting here, else 0. */
            size_t len = (c & 0xe0) == 0xc0 && c >= 0xc2   ? 2
                         : (c & 0xf0) == 0xe0              ? 3
                         : (c & 0xf8) == 0xf0 && c <= 0xf4 ? 4
                                                           : 0;
            for (size_t i = 1; i < len; i++) {
                if ((p[i] & 0xc0) != 0x80) {
                    len = 0;
                    break;
                }
            }
            if (len == 0) {
                memcpy(esc, "\\u00", 4);
                esc[4] = hex[c >> 4];
                esc[5] = hex[c & 15];
                n = 6;
            } else {
                if (*pos + len > cap)
                    return;
                put_raw(buf, cap, pos, (const char *)p, len);
                p += len;
                continue;
            }
        } else {
            esc[0] = (char)c;
            n = 1;
        }
        if (*pos + n > cap)
            return;
        put_raw(buf, cap, pos, esc, n);
        p++;
    }
}

/* Writes one JSON line with a UTC timestamp, the level, the event and the fields. */
void tt_log_fields(enum tt_log_level level, const char *event, const struct tt_log_field *fields,
                   size_t n)
{
    char line[LOG_LINE_MAX];
    size_t cap = sizeof(line) - 1; /* room for the newline */
    size_t pos = 0;
    struct timespec ts;
    struct tm tm;
    char tmp[96];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int len = snprintf(tmp, sizeof(tmp), "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\"",
                       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                       tm.tm_sec, ts.tv_nsec / 1000000);
    put_raw(line, cap, &pos, tmp, (size_t)len);
    put_raw(line, cap, &pos, ",\"level\":\"", 10);
    put_raw(line, cap, &pos, level_names[level], strlen(level_names[level]));
    put_raw(line, cap, &pos, "\",\"event\":\"", 11);
    tt_json_escape(line, cap, &pos, event);
    put_raw(line, cap, &pos, "\"", 1);

    /* Leave room for the closing brace on truncation. */
    size_t body_cap = cap - 1;
    for (size_t i = 0; i < n; i++) {
        const struct tt_log_field *f = &fields[i];
        size_t mark = pos;

        if (f->key == NULL || f->key[0] == '\0')
            continue;
        put_raw(line, body_cap, &pos, ",\"", 2);
        tt_json_escape(line, body_cap, &pos, f->key);
        put_raw(line, body_cap, &pos, "\":", 2);
        switch (f->type) {
        case TT_LF_STR:
            if (f->v.s == NULL) {
                put_raw(line, body_cap, &pos, "null", 4);
            } else {
                put_raw(line, body_cap, &pos, "\"", 1);
                tt_json_escape(line, body_cap, &pos, f->v.s);
                put_raw(line, body_cap, &pos, "\"", 1);
            }
            break;
        case TT_LF_INT:
            len = snprintf(tmp, sizeof(tmp), "%" PRId64, f->v.i);
            put_raw(line, body_cap, &pos, tmp, (size_t)len);
            break;
        case TT_LF_UINT:
            len = snprintf(tmp, sizeof(tmp), "%" PRIu64, f->v.u);
            put_raw(line, body_cap, &pos, tmp, (size_t)len);
            break;
        case TT_LF_DBL:
            len = snprintf(tmp, sizeof(tmp), "%.3f", f->v.d);
            put_raw(line, body_cap, &pos, tmp, (size_t)len);
            break;
        }
        if (pos >= body_cap) {
            /* Truncated inside this field: drop it whole so the line stays valid JSON. */
            pos = mark;
            break;
        }
    }
    line[pos++] = '}';
    line[pos++] = '\n';

    /* One write per line; a short write on a pipe under pressure is retried. */
    size_t off = 0;
    while (off < pos) {
        ssize_t w = write(STDERR_FILENO, line + off, pos - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
}
