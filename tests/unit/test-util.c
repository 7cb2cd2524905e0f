/* Unit tests for util.c: durations, addresses, sockaddr formatting, clocks, file reads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/util.h"

static void test_util_duration_valid(void **state)
{
    static const struct {
        const char *text;
        uint64_t ms;
    } cases[] = {
        {"250ms", 250},
        {"10s", 10000},
        {"5m", 300000},
        {"1h", 3600000},
        {"1h30m", 5400000},
        {"1m30s500ms", 90500},
        {"0s", 0},
        {"0ms", 0},
        {"1h1ms", 3600001},
        {"2h3m4s5ms", 2 * 3600000 + 3 * 60000 + 4000 + 5},
        {"90m", 5400000},
        {"007s", 7000},
        {"18446744073709551615ms", UINT64_MAX},
    };

    for (size_t i = 0; i < TT_ARRAY_SIZE(cases); i++) {
        uint64_t ms = 12345;

        assert_int_equal(tt_duration_parse(cases[i].text, &ms), 0);
        assert_true(ms == cases[i].ms);
    }
}

static void test_util_duration_invalid(void **state)
{
    static const char *const cases[] = {
        "",
        "10",                      /* no unit */
        "s",                       /* no number */
        "-1s",                     /* sign */
        "+1s",                     /* sign */
        "1.5s",                    /* fraction */
        "10S",                     /* unit case */
        "1s1h",                    /* order */
        "1s1s",                    /* repeated unit */
        "1m1m",                    /* repeated unit */
        "500ms1s",                 /* order, ms before s */
        "10s ",                    /* trailing junk */
        " 10s",                    /* leading junk */
        "10sx",                    /* trailing junk */
        "10 s",                    /* inner space */
        "1d",                      /* unknown unit */
        "1us",                     /* unknown unit */
        "1hm",                     /* unit without number */
        "18446744073709551616ms",  /* number overflows uint64_t */
        "18446744073709551615s",   /* multiplication overflows */
        "5124095576030431h1h",     /* order and overflow */
        "5124095576030431h60000m", /* sum overflows */
        "99999999999999999999999999h",
    };

    for (size_t i = 0; i < TT_ARRAY_SIZE(cases); i++) {
        uint64_t ms = 777;

        assert_int_equal(tt_duration_parse(cases[i], &ms), -EINVAL);
        assert_true(ms == 777); /* untouched on error */
    }
    assert_int_equal(tt_duration_parse(NULL, &(uint64_t){0}), -EINVAL);
}

static void test_util_duration_format(void **state)
{
    static const struct {
        uint64_t ms;
        const char *text;
    } cases[] = {
        {0, "0s"},         {250, "250ms"},     {10000, "10s"},        {300000, "5m"},
        {3600000, "1h"},   {5400000, "1h30m"}, {90500, "1m30s500ms"}, {3600001, "1h1ms"},
        {86400000, "24h"}, {1001, "1s1ms"},
    };
    char buf[64];

    for (size_t i = 0; i < TT_ARRAY_SIZE(cases); i++) {
        uint64_t back;

        tt_duration_format(cases[i].ms, buf, sizeof(buf));
        assert_string_equal(buf, cases[i].text);
        assert_int_equal(tt_duration_parse(buf, &back), 0);
        assert_true(back == cases[i].ms);
    }
    /* The largest value round-trips too. */
    tt_duration_format(UINT64_MAX, buf, sizeof(buf));
    uint64_t back;
    assert_int_equal(tt_duration_parse(buf, &back), 0);
    assert_true(back == UINT64_MAX);

    /* A short buffer is cut but terminated. */
    memset(buf, 'x', sizeof(buf));
    tt_duration_format(5400000, buf, 3);
    assert_true(strlen(buf) < 3);
    tt_duration_format(5400000, buf, 0); /* must not write */
}

static void test_util_addr_ipv4(void **state)
{
    struct tt_addr a;
    const struct sockaddr_in *sin = (const struct sockaddr_in *)&a.ss;

    assert_int_equal(tt_addr_parse("1.2.3.4:80", 0, &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    assert_int_equal(tt_addr_port(&a), 80);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x01020304);
    assert_string_equal(a.text, "1.2.3.4:80");

    /* Leading zeros in the port are normalized away. */
    assert_int_equal(tt_addr_parse("127.0.0.1:00080", 0, &a), 0);
    assert_string_equal(a.text, "127.0.0.1:80");
    assert_int_equal(tt_addr_parse("0.0.0.0:65535", 0, &a), 0);
    assert_int_equal(tt_addr_port(&a), 65535);
}

static void test_util_addr_ipv6(void **state)
{
    struct tt_addr a;
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a.ss;

    assert_int_equal(tt_addr_parse("[::1]:8080", 0, &a), 0);
    assert_int_equal(a.ss.ss_family, AF_INET6);
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    assert_int_equal(tt_addr_port(&a), 8080);
    assert_true(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
    assert_string_equal(a.text, "[::1]:8080");

    /* Normalized: the long form is written short. */
    assert_int_equal(tt_addr_parse("[0:0:0:0:0:0:0:1]:443", 0, &a), 0);
    assert_string_equal(a.text, "[::1]:443");
    assert_int_equal(tt_addr_parse("[::ffff:1.2.3.4]:80", 0, &a), 0);
    assert_string_equal(a.text, "[::ffff:1.2.3.4]:80");
}

static void test_util_addr_hostname(void **state)
{
    struct tt_addr a;

    assert_int_equal(tt_addr_parse("localhost:80", 0, &a), 0);
    assert_true(a.ss.ss_family == AF_INET || a.ss.ss_family == AF_INET6);
    assert_int_equal(tt_addr_port(&a), 80);
    assert_string_equal(a.text, "localhost:80");
    /* Names are case-insensitive: the text is lower case. */
    assert_int_equal(tt_addr_parse("LocalHost:81", 0, &a), 0);
    assert_string_equal(a.text, "localhost:81");
    assert_int_equal(tt_addr_port(&a), 81);

    /* The .invalid TLD never resolves (RFC 6761 §6.4). */
    assert_int_equal(tt_addr_parse("no-such-host.invalid:80", 0, &a), -ENOENT);
}

static void test_util_addr_zero_port(void **state)
{
    struct tt_addr a;

    assert_int_equal(tt_addr_parse("127.0.0.1:0", 0, &a), -EINVAL);
    assert_int_equal(tt_addr_parse("127.0.0.1:0", 1, &a), 0);
    assert_int_equal(tt_addr_port(&a), 0);
    assert_string_equal(a.text, "127.0.0.1:0");
    assert_int_equal(tt_addr_parse("[::1]:0", 0, &a), -EINVAL);
    assert_int_equal(tt_addr_parse("[::1]:0", 1, &a), 0);
}

static void test_util_addr_invalid(void **state)
{
    static const char *const cases[] = {
        "1.2.3.4",           /* missing port */
        "1.2.3.4:",          /* empty port */
        "localhost",         /* missing port */
        "1.2.3.4:65536",     /* port too large */
        "1.2.3.4:99999",     /* port too large */
        "1.2.3.4:123456",    /* port too long */
        "1.2.3.4:-1",        /* sign */
        "1.2.3.4:+80",       /* sign */
        "1.2.3.4:80x",       /* trailing junk */
        "1.2.3.4:80 ",       /* trailing space */
        " 1.2.3.4:80",       /* leading space */
        "::1:80",            /* IPv6 without brackets */
        "fe80::1:443",       /* IPv6 without brackets */
        ":80",               /* empty host */
        "[]:80",             /* empty host */
        "[::1]",             /* missing port */
        "[::1]:",            /* empty port */
        "[::1]80",           /* missing colon */
        "[::1]]:80",         /* junk */
        "[::1:80",           /* unclosed bracket */
        "[1.2.3.4]:80",      /* IPv4 in brackets */
        "[localhost]:80",    /* name in brackets */
        "1.2.3:80",          /* legacy inet_aton form */
        "999.1.1.1:80",      /* octet out of range */
        "0x7f.0.0.1:80",     /* legacy hex form */
        "localhost.0x7f:80", /* numeric last label */
        "host.:80",          /* empty last label */
        "a b:80",            /* space in name */
        "host\n:80",         /* control byte */
        "ho/st:80",          /* slash */
        "",
        ":",
    };

    for (size_t i = 0; i < TT_ARRAY_SIZE(cases); i++) {
        struct tt_addr a;
        int rc = tt_addr_parse(cases[i], 1, &a);

        if (rc != -EINVAL && rc != -ENOENT)
            fail_msg("\"%s\" parsed (rc %d)", cases[i], rc);
        assert_int_equal(a.text[0], '\0'); /* out is cleared on error */
    }
    assert_int_equal(tt_addr_parse("::1:80", 1, &(struct tt_addr){0}), -EINVAL);
    assert_int_equal(tt_addr_parse("1.2.3:80", 1, &(struct tt_addr){0}), -EINVAL);
    assert_int_equal(tt_addr_parse("0x7f.0.0.1:80", 1, &(struct tt_addr){0}), -EINVAL);
    assert_int_equal(tt_addr_parse("[1.2.3.4]:80", 1, &(struct tt_addr){0}), -EINVAL);
    assert_int_equal(tt_addr_parse(NULL, 1, &(struct tt_addr){0}), -EINVAL);

    /* A name longer than DNS allows, and a string longer than the text field. */
    char longname[400];
    memset(longname, 'a', sizeof(longname));
    strcpy(longname + 260, ":80");
    assert_int_equal(tt_addr_parse(longname, 1, &(struct tt_addr){0}), -EINVAL);
    memset(longname, 'a', sizeof(longname));
    strcpy(longname + 390, ":80");
    assert_int_equal(tt_addr_parse(longname, 1, &(struct tt_addr){0}), -EINVAL);
}

static void test_util_sockaddr_format(void **state)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(8080)};
    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(443)};
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    struct sockaddr other = {.sa_family = AF_APPLETALK};
    char buf[128];

    inet_pton(AF_INET, "10.1.2.3", &sin.sin_addr);
    tt_sockaddr_format((struct sockaddr *)&sin, buf, sizeof(buf));
    assert_string_equal(buf, "10.1.2.3:8080");

    inet_pton(AF_INET6, "2001:db8::1", &sin6.sin6_addr);
    tt_sockaddr_format((struct sockaddr *)&sin6, buf, sizeof(buf));
    assert_string_equal(buf, "[2001:db8::1]:443");

    strcpy(sun.sun_path, "/run/x.sock");
    tt_sockaddr_format((struct sockaddr *)&sun, buf, sizeof(buf));
    assert_string_equal(buf, "unix:/run/x.sock");

    tt_sockaddr_format(&other, buf, sizeof(buf));
    assert_non_null(strstr(buf, "family"));

    tt_sockaddr_format(NULL, buf, sizeof(buf));
    assert_string_equal(buf, "-");

    /* Short buffers are cut and terminated. */
    memset(buf, 'x', sizeof(buf));
    tt_sockaddr_format((struct sockaddr *)&sin, buf, 5);
    assert_string_equal(buf, "10.1");

    /* What tt_addr_parse() normalizes, tt_sockaddr_format() reproduces. */
    struct tt_addr a;
    assert_int_equal(tt_addr_parse("[fe80::1]:99", 0, &a), 0);
    tt_sockaddr_format((struct sockaddr *)&a.ss, buf, sizeof(buf));
    assert_string_equal(buf, a.text);
}

static void test_util_clocks(void **state)
{
    uint64_t a = tt_now_ms(), b;
    int64_t now = tt_now_unix();
    struct timespec ts = {.tv_nsec = 30 * 1000 * 1000};

    assert_true(now > 1600000000);
    assert_true(now - (int64_t)time(NULL) <= 1 && (int64_t)time(NULL) - now <= 1);
    nanosleep(&ts, NULL);
    b = tt_now_ms();
    assert_true(b >= a + 25);
    assert_true(b < a + 10000);
    /* Monotonic: CLOCK_MONOTONIC is not the epoch. */
    assert_true(b < (uint64_t)now * 1000 || b - (uint64_t)now * 1000 > 1000);
}

/* Writes len bytes to a new file in dir and returns its path (static buffer). */
static const char *write_file(const char *dir, const char *name, const void *data, size_t len)
{
    static char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

static void test_util_file_read(void **state)
{
    char dir[] = "/tmp/tt-test-util-XXXXXX";
    const char *path;
    char *data = NULL;
    size_t len = 0;

    assert_non_null(mkdtemp(dir));

    path = write_file(dir, "a.txt", "hello\0world", 11);
    assert_int_equal(tt_file_read(path, 1024, &data, &len), 0);
    assert_int_equal(len, 11);
    assert_memory_equal(data, "hello\0world", 11);
    assert_int_equal(data[11], '\0');
    free(data);

    /* Exactly max_len is fine, one more is -EFBIG and leaves outputs alone. */
    data = NULL;
    assert_int_equal(tt_file_read(path, 11, &data, &len), 0);
    free(data);
    data = NULL;
    len = 99;
    assert_int_equal(tt_file_read(path, 10, &data, &len), -EFBIG);
    assert_null(data);
    assert_int_equal(len, 99);
    unlink(path);

    path = write_file(dir, "empty", "", 0);
    assert_int_equal(tt_file_read(path, 0, &data, &len), 0);
    assert_int_equal(len, 0);
    assert_string_equal(data, "");
    free(data);
    unlink(path);

    /* A larger file read in several chunks. */
    size_t big = 100000;
    char *content = malloc(big);
    assert_non_null(content);
    for (size_t i = 0; i < big; i++)
        content[i] = (char)('a' + i % 26);
    path = write_file(dir, "big", content, big);
    assert_int_equal(tt_file_read(path, big, &data, &len), 0);
    assert_int_equal(len, big);
    assert_memory_equal(data, content, big);
    free(data);
    assert_int_equal(tt_file_read(path, big - 1, &data, &len), -EFBIG);
    unlink(path);
    free(content);

    /* Size unknown to stat(): procfs files read to the end, and max_len still holds. */
    assert_int_equal(tt_file_read("/proc/self/status", 1 << 20, &data, &len), 0);
    assert_true(len > 0);
    assert_non_null(strstr(data, "Name:"));
    free(data);
    assert_int_equal(tt_file_read("/proc/self/status", 10, &data, &len), -EFBIG);

    char missing[600];
    snprintf(missing, sizeof(missing), "%s/missing", dir);
    assert_int_equal(tt_file_read(missing, 100, &data, &len), -ENOENT);
    assert_int_equal(tt_file_read(dir, 100, &data, &len), -EISDIR);

    assert_int_equal(rmdir(dir), 0);
}

/* Decimal text of 0, small, and the largest values; a bounded copy cut and terminated. */
static void test_util_u64_text_and_str_copy(void **state)
{
    char buf[TT_U64_TEXT_MAX], small[4];
    (void)state;

    assert_int_equal(tt_u64_text(0, buf), 1);
    assert_string_equal(buf, "0");
    assert_int_equal(tt_u64_text(404, buf), 3);
    assert_string_equal(buf, "404");
    assert_int_equal(tt_u64_text(UINT64_MAX, buf), 20);
    assert_string_equal(buf, "18446744073709551615");
    assert_int_equal(tt_str_copy(small, sizeof(small), "GET"), 3);
    assert_string_equal(small, "GET");
    assert_int_equal(tt_str_copy(small, sizeof(small), "DELETE"), 3);
    assert_string_equal(small, "DEL");
    assert_int_equal(tt_str_copy(small, sizeof(small), ""), 0);
    assert_string_equal(small, "");
    strcpy(small, "xyz");
    assert_int_equal(tt_str_copy(small, sizeof(small), NULL), 0);
    assert_string_equal(small, "");
}

/* tt_ascii_lower lowers A-Z only: the bytes around them in ASCII ('@', '[', '`', '{'),
 * digits, '-' and bytes above 0x7f pass unchanged; it works in place too. */
static void test_util_ascii_lower(void **state)
{
    const char in[] = "Content-TYPE@[`{09-\xc3\x84Z";
    const char want[] = "content-type@[`{09-\xc3\x84z";
    char out[sizeof(in)];

    tt_ascii_lower(out, in, sizeof(in));
    assert_memory_equal(out, want, sizeof(want));
    memcpy(out, in, sizeof(in));
    tt_ascii_lower(out, out, 7);
    assert_memory_equal(out, "content-TYPE", 12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_util_duration_valid),
        cmocka_unit_test(test_util_duration_invalid),
        cmocka_unit_test(test_util_duration_format),
        cmocka_unit_test(test_util_addr_ipv4),
        cmocka_unit_test(test_util_addr_ipv6),
        cmocka_unit_test(test_util_addr_hostname),
        cmocka_unit_test(test_util_addr_zero_port),
        cmocka_unit_test(test_util_addr_invalid),
        cmocka_unit_test(test_util_sockaddr_format),
        cmocka_unit_test(test_util_clocks),
        cmocka_unit_test(test_util_file_read),
        cmocka_unit_test(test_util_u64_text_and_str_copy),
        cmocka_unit_test(test_util_ascii_lower),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
