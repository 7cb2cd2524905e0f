/* JSON-lines logging on stderr. One line per call, written with a single write(2) so
 * lines from different threads never interleave. */
#ifndef TT_LOG_H
#define TT_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tt_log_level {
    TT_LOG_DEBUG,
    TT_LOG_INFO,
    TT_LOG_WARN,
    TT_LOG_ERROR,
};

enum tt_log_field_type {
    TT_LF_STR,
    TT_LF_INT,
    TT_LF_UINT,
    TT_LF_DBL,
};

struct tt_log_field {
    const char *key;
    enum tt_log_field_type type;
    union {
        const char *s; /* NULL is written as JSON null */
        int64_t i;
        uint64_t u;
        double d;
    } v;
};

#define TT_LS(k, val) ((struct tt_log_field){.key = (k), .type = TT_LF_STR, .v.s = (val)})
#define TT_LI(k, val) ((struct tt_log_field){.key = (k), .type = TT_LF_INT, .v.i = (val)})
#define TT_LU(k, val) ((struct tt_log_field){.key = (k), .type = TT_LF_UINT, .v.u = (val)})
#define TT_LD(k, val) ((struct tt_log_field){.key = (k), .type = TT_LF_DBL, .v.d = (val)})

/* Sets the lowest level that is written (default TT_LOG_INFO). */
void tt_log_set_level(enum tt_log_level level);

/* Parses "debug", "info", "warn" or "error". Returns 0 or -EINVAL. */
int tt_log_level_parse(const char *name, enum tt_log_level *out);

/* True when a line at `level` would be written. */
bool tt_log_enabled(enum tt_log_level level);

/* Writes {"ts":..., "level":..., "event":event, key:value...} to stderr. Strings are
 * JSON-escaped; a line longer than 8 KiB is truncated at a field boundary. */
void tt_log_fields(enum tt_log_level level, const char *event, const struct tt_log_field *fields,
                   size_t n);

/* tt_log(TT_LOG_INFO, "listening", TT_LS("addr", a), TT_LI("port", p)); at least one field. */
#define tt_log(level, event, ...)                                                                  \
    do {                                                                                           \
        if (tt_log_enabled(level)) {                                                               \
            const struct tt_log_field tt_log_f_[] = {__VA_ARGS__};                                 \
            tt_log_fields((level), (event), tt_log_f_, sizeof(tt_log_f_) / sizeof(tt_log_f_[0]));  \
        }                                                                                          \
    } while (0)

/* Appends `s` JSON-escaped (without quotes) to buf[*pos..cap), advancing *pos; stops
 * cleanly when full. Shared with the admin renderer's hand-written lines. */
void tt_json_escape(char *buf, size_t cap, size_t *pos, const char *s);

#endif
