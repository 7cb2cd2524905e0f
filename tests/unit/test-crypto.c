/* Unit tests for tls/crypto.c: base64 (padded) and base64url (RFC 4648 §5 without
 * padding, as JWS uses it: RFC 7515 §2), including every way a text must be refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tls/crypto.h"

/* RFC 4648 §10's vectors, unpadded, both ways. */
static void test_crypto_base64url_vectors(void **state)
{
    static const struct {
        const char *raw, *enc;
    } cases[] = {
        {"", ""},           {"f", "Zg"},          {"fo", "Zm8"},          {"foo", "Zm9v"},
        {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *enc = tt_crypto_base64url_encode((const uint8_t *)cases[i].raw, strlen(cases[i].raw));
        uint8_t *dec = NULL;
        size_t dec_len = 99;

        assert_non_null(enc);
        assert_string_equal(enc, cases[i].enc);
        assert_int_equal(tt_crypto_base64url_decode(enc, strlen(enc), &dec, &dec_len), 0);
        assert_int_equal(dec_len, strlen(cases[i].raw));
        assert_memory_equal(dec, cases[i].raw, dec_len);
        assert_int_equal(dec[dec_len], 0); /* the spare NUL */
        free(enc);
        free(dec);
    }
}

/* The two characters that differ from base64 ('-' and '_' for '+' and '/'), and every
 * byte value round-trips. */
static void test_crypto_base64url_alphabet(void **state)
{
    uint8_t all[256], *dec;
    size_t dec_len;
    char *enc;

    enc = tt_crypto_base64url_encode((const uint8_t *)"\xfb\xff\xbf", 3);
    assert_string_equal(enc, "-_-_");
    free(enc);
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    for (size_t n = 0; n <= sizeof(all); n++) {
        enc = tt_crypto_base64url_encode(all, n);
        assert_non_null(enc);
        assert_null(strpbrk(enc, "+/="));
        assert_int_equal(tt_crypto_base64url_decode(enc, strlen(enc), &dec, &dec_len), 0);
        assert_int_equal(dec_len, n);
        assert_memory_equal(dec, all, n);
        free(enc);
        free(dec);
    }
}

/* Padding, base64's '+' and '/', whitespace, NUL, a lone last character (4k+1) and
 * non-zero leftover bits (a second spelling of the same bytes) are all refused. */
static void test_crypto_base64url_refused(void **state)
{
    static const char *const bad[] = {
        "Zg==",     "Zm8=",  "Zg=",  /* padding */
        "a+b/",     "ab+c",  "////", /* base64's alphabet */
        "Zm9v ",    " Zm9v", "Zm\n9v",
        "Zm9v\t",   "Z",     "Zm9vY",  /* 4k+1 characters: not whole bytes */
        "Zh",       "Zm9",   "Zm9vYh", /* leftover bits set: "Zg", "Zm8" are the canonical ones */
        "Zm9vYmF=", ".",     "Zm9v.",
    };
    uint8_t *dec = NULL;
    size_t dec_len = 0;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        dec = NULL;
        assert_int_equal(tt_crypto_base64url_decode(bad[i], strlen(bad[i]), &dec, &dec_len),
                         -EINVAL);
        assert_null(dec);
    }
    /* An embedded NUL inside the given length. */
    assert_int_equal(tt_crypto_base64url_decode("Zm\0v", 4, &dec, &dec_len), -EINVAL);
    /* The length is what counts, not a NUL: "Zm9vYmFy" cut to 4 is "foo". */
    assert_int_equal(tt_crypto_base64url_decode("Zm9vYmFy", 4, &dec, &dec_len), 0);
    assert_int_equal(dec_len, 3);
    assert_memory_equal(dec, "foo", 3);
    free(dec);
}

/* The padded base64 beside it still works (it is what PEM-free APIs use). */
static void test_crypto_base64_padded(void **state)
{
    uint8_t *dec;
    size_t dec_len;
    char *enc = tt_crypto_base64_encode((const uint8_t *)"\xfb\xff", 2);

    assert_string_equal(enc, "+/8=");
    assert_int_equal(tt_crypto_base64_decode(enc, strlen(enc), &dec, &dec_len), 0);
    assert_int_equal(dec_len, 2);
    free(dec);
    free(enc);
    assert_int_equal(tt_crypto_base64_decode("-_8", 3, &dec, &dec_len), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crypto_base64url_vectors),
        cmocka_unit_test(test_crypto_base64url_alphabet),
        cmocka_unit_test(test_crypto_base64url_refused),
        cmocka_unit_test(test_crypto_base64_padded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
