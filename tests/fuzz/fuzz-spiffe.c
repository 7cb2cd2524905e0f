/* Fuzz target: SPIFFE IDs and patterns, serial numbers and durations — every string a
 * peer or an operator can hand the parsers in util.c and spiffe.c. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/spiffe.h"
#include "core/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    char out[256];
    uint64_t ms;

    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    /* Exactly `size` bytes: embedded NULs are the check's business. */
    int valid = tt_spiffe_check((const char *)data, size, false) == 0;
    tt_spiffe_check(s, strlen(s), true);
    if (tt_spiffe_pattern_check(s) == 0) {
        tt_spiffe_match(s, "spiffe://td/ns/shop/sa/web");
        tt_spiffe_match(s, "spiffe://td/x");
    }
    if (valid && memchr(data, 0, size) == NULL) {
        /* A valid ID matches itself as a pattern and has a trust domain. */
        if (tt_spiffe_pattern_check(s) != 0 || !tt_spiffe_match(s, s))
            abort();
        if (tt_spiffe_trust_domain(s, out, sizeof(out)) != 0 && strlen(s) < sizeof(out))
            abort();
    }
    if (tt_serial_normalize(s, out, sizeof(out)) == 0) {
        char again[256];
        /* Normalizing is idempotent. */
        if (tt_serial_normalize(out, again, sizeof(again)) != 0 || strcmp(out, again) != 0)
            abort();
    }
    if (tt_duration_parse(s, &ms) == 0) {
        uint64_t back;
        tt_duration_format(ms, out, sizeof(out));
        if (tt_duration_parse(out, &back) != 0 || back != ms)
            abort();
    }
    free(s);
    return 0;
}
