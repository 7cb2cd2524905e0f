/* Unit tests for spiffe.c: ID validation (including hostile inputs), patterns, matching
 * and trust-domain extraction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "core/errors.h"
#include "core/spiffe.h"

static int check(const char *id, bool allow_no_path)
{
    return tt_spiffe_check(id, strlen(id), allow_no_path);
}

static void test_spiffe_valid_ids(void **state)
{
    static const char *const ok[] = {
        "spiffe://cluster.local/ns/shop/sa/web",
        "spiffe://td/a",
        "spiffe://td-1_x.y/A.b-c_D/0",
        "spiffe://td/.../..a/a..", /* only "." and ".." themselves are refused */
        "spiffe://example.org/Upper/Case/Path",
    };
    size_t i;

    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(check(ok[i], false), 0);
        assert_int_equal(check(ok[i], true), 0);
    }
}

static void test_spiffe_no_path(void **state)
{
    assert_int_equal(check("spiffe://td", true), 0);
    assert_int_equal(check("spiffe://td", false), TT_E_SPIFFE);
    /* An empty path after a slash is a trailing slash, never a bare trust domain. */
    assert_int_equal(check("spiffe://td/", true), TT_E_SPIFFE);
}

static void test_spiffe_hostile_ids(void **state)
{
    static const char *const bad[] = {
        "",
        "spiffe:",
        "spiffe://",
        "spiffe:///ns/a", /* empty trust domain */
        "SPIFFE://td/a",  /* upper-case scheme */
        "Spiffe://td/a",  /* mixed-case scheme */
        "spiffe://TD/a",  /* upper-case trust domain */
        "spiffe://Cluster.local/a",
        "spiffe:/td/a",     /* one slash */
        "http://td/a",      /* other scheme */
        " spiffe://td/a",   /* leading space */
        "spiffe://td//a",   /* empty segment */
        "spiffe://td/a//b", /* empty segment in the middle */
        "spiffe://td/a/",   /* trailing slash */
        "spiffe://td/",     /* trailing slash, no path */
        "spiffe://td/..",   /* dot segments */
        "spiffe://td/a/../b",
        "spiffe://td/.",
        "spiffe://td/a/./b",
        "spiffe://td/a/.",
        "spiffe://td/a%2Fb", /* percent-encoding */
        "spiffe://td/%61",
        "spiffe://td/a?x=1",  /* query */
        "spiffe://td/a#frag", /* fragment */
        "spiffe://td:443/a",  /* port */
        "spiffe://td:/a",
        "spiffe://user@td/a", /* userinfo */
        "spiffe://user:pw@td/a",
        "spiffe://td/caf\xc3\xa9", /* non-ASCII path */
        "spiffe://t\xc3\xa9/a",    /* non-ASCII trust domain */
        "spiffe://td/\xff",
        "spiffe://td/a b",  /* space */
        "spiffe://td/a\\b", /* backslash */
        "spiffe://td/a\nb", /* control character */
        "spiffe://td/a*",   /* a pattern is not an ID */
        "spiffe://td/*",
        "*",
    };
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (check(bad[i], true) != TT_E_SPIFFE)
            fail_msg("accepted hostile ID #%zu \"%s\"", i, bad[i]);
    }
    assert_int_equal(tt_spiffe_check(NULL, 0, true), TT_E_SPIFFE);
}

static void test_spiffe_embedded_nul(void **state)
{
    static const char id[] = "spiffe://td/a\0.evil.example/b";

    /* With the real length (as from a certificate SAN) the NUL is refused... */
    assert_int_equal(tt_spiffe_check(id, sizeof(id) - 1, false), TT_E_SPIFFE);
    /* ...while the bytes before it alone are a fine ID. */
    assert_int_equal(tt_spiffe_check(id, strlen(id), false), 0);
    /* A NUL in the trust domain too. */
    assert_int_equal(tt_spiffe_check("spiffe://t\0d/a", 14, false), TT_E_SPIFFE);
}

static void test_spiffe_length_limit(void **state)
{
    char id[TT_SPIFFE_MAX + 2];
    size_t n = strlen("spiffe://td/");

    memcpy(id, "spiffe://td/", n);
    memset(id + n, 'a', sizeof(id) - n - 1);
    id[sizeof(id) - 1] = '\0';
    /* Exactly TT_SPIFFE_MAX bytes is accepted, one more is not. */
    assert_int_equal(tt_spiffe_check(id, TT_SPIFFE_MAX, false), 0);
    assert_int_equal(tt_spiffe_check(id, TT_SPIFFE_MAX + 1, false), TT_E_SPIFFE);
    /* Only len bytes are read: a shorter len checks a shorter ID. */
    assert_int_equal(tt_spiffe_check("spiffe://td/ab/", 14, false), 0);
}

static void test_spiffe_pattern_check(void **state)
{
    static const char *const ok[] = {
        "*",
        "spiffe://td/*",
        "spiffe://td/ns/shop/*",
        "spiffe://td/ns/shop/sa/web",
    };
    static const char *const bad[] = {
        "",
        "**",
        "/*",
        "spiffe://*",
        "spiffe://td",          /* a bare trust domain names no workload */
        "spiffe://td/ns/shop*", /* a wildcard must be a whole segment */
        "spiffe://td/ns/*/sa/web",
        "spiffe://td/ns/shop/*/",
        "spiffe://td/ns/shop/**",
        "spiffe://td/a/",
        "spiffe://TD/*",
        "spiffe://td/a?b/*",
        "spiffe://td//*",
        "spiffe://td/../*",
    };
    size_t i;

    for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        assert_int_equal(tt_spiffe_pattern_check(ok[i]), 0);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (tt_spiffe_pattern_check(bad[i]) != TT_E_SPIFFE)
            fail_msg("accepted bad pattern \"%s\"", bad[i]);
    }
    assert_int_equal(tt_spiffe_pattern_check(NULL), TT_E_SPIFFE);
}

static void test_spiffe_match(void **state)
{
    /* Exact patterns. */
    assert_true(tt_spiffe_match("spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/b"));
    assert_false(tt_spiffe_match("spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa/bb"));
    assert_false(tt_spiffe_match("spiffe://td/ns/a/sa/b", "spiffe://td/ns/a/sa"));
    assert_false(tt_spiffe_match("spiffe://td/ns/a/sa/b", "spiffe://other/ns/a/sa/b"));

    /* Prefix patterns stop at a segment boundary. */
    assert_true(tt_spiffe_match("spiffe://td/ns/shop/*", "spiffe://td/ns/shop/sa/web"));
    assert_true(tt_spiffe_match("spiffe://td/ns/shop/*", "spiffe://td/ns/shop/x"));
    assert_false(tt_spiffe_match("spiffe://td/ns/shop/*", "spiffe://td/ns/shopping/sa/x"));
    assert_false(tt_spiffe_match("spiffe://td/ns/shop/*", "spiffe://td/ns/shop"));
    assert_false(tt_spiffe_match("spiffe://td/ns/shop/*", "spiffe://td/ns/sho"));
    assert_false(tt_spiffe_match("spiffe://td/ns/shop/*", "spiffe://td2/ns/shop/sa/web"));

    /* A whole trust domain, and not its look-alikes. */
    assert_true(tt_spiffe_match("spiffe://td/*", "spiffe://td/a"));
    assert_false(tt_spiffe_match("spiffe://td/*", "spiffe://td.evil/a"));
    assert_false(tt_spiffe_match("spiffe://td/*", "spiffe://td"));

    /* "*" matches any identity but not the absence of one. */
    assert_true(tt_spiffe_match("*", "spiffe://x/y"));
    assert_false(tt_spiffe_match("*", NULL));
    assert_false(tt_spiffe_match(NULL, "spiffe://x/y"));
}

static void test_spiffe_trust_domain(void **state)
{
    char buf[64];

    assert_int_equal(tt_spiffe_trust_domain("spiffe://cluster.local/ns/a/sa/b", buf, sizeof(buf)),
                     0);
    assert_string_equal(buf, "cluster.local");
    assert_int_equal(tt_spiffe_trust_domain("spiffe://td", buf, sizeof(buf)), 0);
    assert_string_equal(buf, "td");

    /* Exactly enough room (2 bytes + NUL), then one byte short. */
    assert_int_equal(tt_spiffe_trust_domain("spiffe://td/a", buf, 3), 0);
    assert_string_equal(buf, "td");
    memset(buf, 'x', sizeof(buf));
    assert_int_equal(tt_spiffe_trust_domain("spiffe://td/a", buf, 2), TT_E_SPIFFE);
    assert_int_equal(buf[2], 'x'); /* nothing written past the given length */
    assert_int_equal(tt_spiffe_trust_domain("spiffe://td/a", buf, 0), TT_E_SPIFFE);

    assert_int_equal(tt_spiffe_trust_domain("spiffe://TD/a", buf, sizeof(buf)), TT_E_SPIFFE);
    assert_int_equal(tt_spiffe_trust_domain("spiffe://td/a/", buf, sizeof(buf)), TT_E_SPIFFE);
    assert_int_equal(tt_spiffe_trust_domain("https://td/a", buf, sizeof(buf)), TT_E_SPIFFE);
    assert_int_equal(tt_spiffe_trust_domain(NULL, buf, sizeof(buf)), TT_E_SPIFFE);
}

/* The control plane's namespace, however an attacker spells a neighbour of it. */
static void test_spiffe_reserved(void **state)
{
    (void)state;
    assert_true(tt_spiffe_reserved("spiffe://td/ns/tether-system/sa/tether-control"));
    assert_true(tt_spiffe_reserved("spiffe://td/ns/tether-system/sa/tether-admin"));
    assert_true(tt_spiffe_reserved("spiffe://other.td/ns/tether-system"));
    assert_true(tt_spiffe_reserved("spiffe://td/ns/tether-system/x/y/z"));
    assert_false(tt_spiffe_reserved("spiffe://td/ns/tether-systems/sa/x"));
    assert_false(tt_spiffe_reserved("spiffe://td/ns/tether/sa/x"));
    assert_false(tt_spiffe_reserved("spiffe://td/ns/Tether-System/sa/x"));
    assert_false(tt_spiffe_reserved("spiffe://td/x/ns/tether-system/sa/x"));
    assert_false(tt_spiffe_reserved("spiffe://td/ns/shop/sa/tether-system"));
    assert_false(tt_spiffe_reserved("spiffe://td"));
    assert_false(tt_spiffe_reserved(NULL));
    /* Invalid IDs are not "reserved" either: they are refused earlier as invalid. */
    assert_false(tt_spiffe_reserved("spiffe://td/ns/x/../tether-system/sa/a"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spiffe_reserved),      cmocka_unit_test(test_spiffe_valid_ids),
        cmocka_unit_test(test_spiffe_no_path),       cmocka_unit_test(test_spiffe_hostile_ids),
        cmocka_unit_test(test_spiffe_embedded_nul),  cmocka_unit_test(test_spiffe_length_limit),
        cmocka_unit_test(test_spiffe_pattern_check), cmocka_unit_test(test_spiffe_match),
        cmocka_unit_test(test_spiffe_trust_domain),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
