/* Unit tests for core/query.c: finding one key of a query string and percent-decoding
 * its value, every malformed input refused with its own code, and percent-encoding that
 * decodes back to every byte. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/query.h"

static void test_query_get_finds_and_decodes(void **state)
{
    char out[64];

    assert_int_equal(tt_query_get("address=10.0.0.1%3A80", "address", out, sizeof(out)), 0);
    assert_string_equal(out, "10.0.0.1:80");
    /* Among others, first, middle or last; a longer name that starts alike is another key. */
    assert_int_equal(
        tt_query_get("addresses=x&address=%5B%3a%3A1%5D:9&b=2", "address", out, sizeof(out)), 0);
    assert_string_equal(out, "[::1]:9");
    assert_int_equal(tt_query_get("a=1&b=two+words", "b", out, sizeof(out)), 0);
    assert_string_equal(out, "two words");
    assert_int_equal(tt_query_get("a=%2B", "a", out, sizeof(out)), 0);
    assert_string_equal(out, "+");
    /* Present without a value, or with an empty one: "". */
    assert_int_equal(tt_query_get("flag&a=1", "flag", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(tt_query_get("a=", "a", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    /* Exactly fits. */
    assert_int_equal(tt_query_get("a=abc", "a", out, 4), 0);
    assert_string_equal(out, "abc");
}

static void test_query_get_missing_key(void **state)
{
    char out[64] = "stale";

    assert_int_equal(tt_query_get(NULL, "address", out, sizeof(out)), -ENOENT);
    assert_string_equal(out, "");
    assert_int_equal(tt_query_get("", "address", out, sizeof(out)), -ENOENT);
    assert_int_equal(tt_query_get("addr=1", "address", out, sizeof(out)), -ENOENT);
    assert_int_equal(tt_query_get("addressx=1", "address", out, sizeof(out)), -ENOENT);
    assert_int_equal(tt_query_get("xaddress=1", "address", out, sizeof(out)), -ENOENT);
    /* Names are compared as sent, not decoded. */
    assert_int_equal(tt_query_get("addr%65ss=1", "address", out, sizeof(out)), -ENOENT);
}

/* A '%' must be followed by two hex digits inside the value, and nothing decodes to NUL. */
static void test_query_get_malformed_escape(void **state)
{
    static const char *const bad[] = {"a=%",   "a=%4",   "a=x%4&b=1", "a=%zz", "a=%4g",
                                      "a=%g4", "a=%%41", "a=%00",     "a=%-1", "a=1%2"};
    char out[64];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        strcpy(out, "stale");
        if (tt_query_get(bad[i], "a", out, sizeof(out)) != -EINVAL)
            fail_msg("%s: not refused as malformed", bad[i]);
        assert_string_equal(out, "");
    }
    /* A malformed escape in another parameter is not this key's problem. */
    assert_int_equal(tt_query_get("b=%zz&a=ok", "a", out, sizeof(out)), 0);
    assert_string_equal(out, "ok");
}

/* A key given twice is ambiguous: refused, whatever the values, rather than one picked. */
static void test_query_get_repeated_key(void **state)
{
    char out[64];

    assert_int_equal(tt_query_get("a=1&a=2", "a", out, sizeof(out)), -EEXIST);
    assert_string_equal(out, "");
    assert_int_equal(tt_query_get("a=1&b=0&a=1", "a", out, sizeof(out)), -EEXIST);
    assert_int_equal(tt_query_get("a&a", "a", out, sizeof(out)), -EEXIST);
}

static void test_query_get_too_long(void **state)
{
    char out[4];

    assert_int_equal(tt_query_get("a=abcd", "a", out, sizeof(out)), -ENOSPC);
    assert_string_equal(out, "");
    assert_int_equal(tt_query_get("a=%41%42%43%44", "a", out, sizeof(out)), -ENOSPC);
    assert_int_equal(tt_query_get("a=", "a", out, 0), -ENOSPC);
}

/* Every byte but NUL survives escape then get; unreserved characters stay as they are. */
static void test_query_escape_round_trip(void **state)
{
    char value[256], q[1024], out[256];
    size_t n = 0;

    for (int c = 1; c < 256; c++)
        value[n++] = (char)c;
    value[n] = '\0';
    memcpy(q, "k=", 2);
    assert_int_equal(tt_query_escape(value, q + 2, sizeof(q) - 2), 0);
    assert_null(strchr(q + 2, '&'));
    assert_null(strchr(q + 2, '+'));
    assert_int_equal(tt_query_get(q, "k", out, sizeof(out)), 0);
    assert_memory_equal(out, value, n + 1);

    assert_int_equal(tt_query_escape("[::1]:80 a~b", q, sizeof(q)), 0);
    assert_string_equal(q, "%5B%3A%3A1%5D%3A80%20a~b");
    assert_int_equal(tt_query_escape("abc", q, 4), 0);
    assert_int_equal(tt_query_escape("abc", q, 3), -ENOSPC);
    assert_string_equal(q, "");
    assert_int_equal(tt_query_escape(":", q, 3), -ENOSPC);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_query_get_finds_and_decodes),
        cmocka_unit_test(test_query_get_missing_key),
        cmocka_unit_test(test_query_get_malformed_escape),
        cmocka_unit_test(test_query_get_repeated_key),
        cmocka_unit_test(test_query_get_too_long),
        cmocka_unit_test(test_query_escape_round_trip),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
