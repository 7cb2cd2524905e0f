/* Unit tests for snapshot/services.c: building the service table from entries, the errors
 * a bad entry gets, lookups by captured destination (IPv4, IPv6, IPv4-mapped) and equality. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "snapshot/services.h"

#define API "spiffe://td/ns/shop/sa/api"
#define DB  "spiffe://td/ns/shop/sa/db"

static struct sockaddr_storage v4(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss = {0};
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;

    in->sin_family = AF_INET;
    in->sin_port = htons(port);
    assert_int_equal(inet_pton(AF_INET, ip, &in->sin_addr), 1);
    return ss;
}

static struct sockaddr_storage v6(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss = {0};
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    assert_int_equal(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
    return ss;
}

static const struct tt_service *find(const struct tt_services *s, struct sockaddr_storage ss)
{
    return tt_services_lookup(s, (const struct sockaddr *)&ss);
}

static void test_services_build_and_lookup(void **state)
{
    const struct tt_service_entry e[] = {
        {"10.96.0.10:80", "10.1.0.5:8080", API},
        {NULL, "10.1.0.9:5432", DB},
        {"10.96.0.10:80", "10.1.0.6:8080", API},
        {"10.96.0.10:80", "10.1.0.5:8080", API}, /* again: kept once */
        {"", "[fd00::7]:8443", API},
        {NULL, "db.internal:5432", DB}, /* a name: cannot match a captured address */
    };
    char err[256] = "";
    size_t skipped = 99;
    struct tt_services *s = tt_services_new(e, 6, &skipped, err, sizeof(err));
    const struct tt_service *svc;

    assert_non_null(s);
    assert_int_equal(skipped, 1);
    assert_int_equal(tt_services_count(s), 5); /* and the VIP's two endpoints as themselves */

    svc = find(s, v4("10.96.0.10", 80));
    assert_non_null(svc);
    assert_string_equal(svc->address.text, "10.96.0.10:80");
    assert_int_equal(svc->n_endpoints, 2);
    assert_string_equal(svc->endpoints[0].addr.text, "10.1.0.5:8080"); /* input order */
    assert_string_equal(svc->endpoints[1].addr.text, "10.1.0.6:8080");
    assert_string_equal(svc->endpoints[0].spiffe_id, API);

    /* A bare endpoint is a service of one at its own address. */
    svc = find(s, v4("10.1.0.9", 5432));
    assert_non_null(svc);
    assert_int_equal(svc->n_endpoints, 1);
    assert_string_equal(svc->endpoints[0].spiffe_id, DB);

    /* IPv6, and an IPv4 destination seen through an IPv4-mapped IPv6 socket. */
    assert_non_null(find(s, v6("fd00::7", 8443)));
    assert_ptr_equal(find(s, v6("::ffff:10.96.0.10", 80)), find(s, v4("10.96.0.10", 80)));

    /* An endpoint of a service dialled directly: itself, with its own identity. */
    svc = find(s, v4("10.1.0.5", 8080));
    assert_non_null(svc);
    assert_string_equal(svc->address.text, "10.1.0.5:8080");
    assert_int_equal(svc->n_endpoints, 1);
    assert_string_equal(svc->endpoints[0].addr.text, "10.1.0.5:8080");
    assert_string_equal(svc->endpoints[0].spiffe_id, API);

    /* Misses: another port, another address, the empty table. */
    assert_null(find(s, v4("10.96.0.10", 81)));
    assert_null(find(s, v4("10.96.0.11", 80)));
    assert_null(find(s, v4("10.1.0.5", 8081)));
    assert_null(find(NULL, v4("10.96.0.10", 80)));
    assert_null(tt_services_get(s, 5));

    /* Listed in address order. */
    assert_string_equal(tt_services_get(s, 0)->address.text, "10.1.0.5:8080");
    assert_string_equal(tt_services_get(s, 1)->address.text, "10.1.0.6:8080");
    assert_string_equal(tt_services_get(s, 2)->address.text, "10.1.0.9:5432");
    assert_string_equal(tt_services_get(s, 3)->address.text, "10.96.0.10:80");
    assert_string_equal(tt_services_get(s, 4)->address.text, "[fd00::7]:8443");
    tt_services_unref(s);
}

/* An endpoint's own address: a service address or a bare entry there wins, and an address
 * two services list with two identities is not matched when dialled directly. */
static void test_services_endpoint_addresses(void **state)
{
    const struct tt_service_entry e[] = {
        {"10.96.0.1:80", "10.96.0.2:80", API}, /* an endpoint that is also a VIP */
        {"10.96.0.2:80", "10.1.0.7:8080", DB},
        {"10.96.0.3:80", "10.1.0.8:8080", API}, /* a bare entry says otherwise */
        {NULL, "10.1.0.8:8080", DB},
        {"10.96.0.4:80", "10.1.0.9:8080", API}, /* two identities for one address */
        {"10.96.0.5:80", "10.1.0.9:8080", DB},
        {"10.96.0.6:80", "10.1.0.10:8080", API}, /* one identity in two services */
        {"10.96.0.7:80", "10.1.0.10:8080", API},
    };
    char err[256] = "";
    struct tt_services *s = tt_services_new(e, 8, NULL, err, sizeof(err));
    const struct tt_service *svc;

    (void)state;
    assert_non_null(s);
    svc = find(s, v4("10.96.0.2", 80));
    assert_non_null(svc);
    assert_string_equal(svc->endpoints[0].addr.text, "10.1.0.7:8080"); /* the VIP */
    svc = find(s, v4("10.1.0.8", 8080));
    assert_non_null(svc);
    assert_int_equal(svc->n_endpoints, 1);
    assert_string_equal(svc->endpoints[0].spiffe_id, DB); /* the bare entry */
    assert_null(find(s, v4("10.1.0.9", 8080)));
    svc = find(s, v4("10.1.0.10", 8080));
    assert_non_null(svc);
    assert_int_equal(svc->n_endpoints, 1);
    assert_string_equal(svc->endpoints[0].spiffe_id, API);
    /* 7 VIPs, the bare entry, 10.1.0.7 and 10.1.0.10 as themselves. */
    assert_int_equal(tt_services_count(s), 10);
    tt_services_unref(s);
}

static void test_services_errors(void **state)
{
    static const struct {
        struct tt_service_entry e[2];
        size_t n;
        const char *says;
    } cases[] = {
        {{{NULL, "10.1.0.5", API}}, 1, "services[0].endpoint: expected IP:PORT"},
        {{{NULL, "10.1.0.5:0", API}}, 1, "services[0].endpoint"},
        {{{NULL, "10.1.0.5:99999", API}}, 1, "services[0].endpoint"},
        {{{NULL, "::1:80", API}}, 1, "services[0].endpoint"},
        {{{NULL, NULL, API}}, 1, "services[0].endpoint"},
        {{{NULL, "10.1.0.5:80", "http://x/y"}}, 1, "services[0].spiffe_id: expected a SPIFFE ID"},
        {{{NULL, "10.1.0.5:80", NULL}}, 1, "services[0].spiffe_id"},
        {{{"10.96.0.1", "10.1.0.5:80", API}}, 1, "services[0].service: expected IP:PORT"},
        {{{"10.96.0.1:80", "10.1.0.5:80", API}, {"10.96.0.1:80", "10.1.0.5:80", DB}},
         2,
         "services[1]: endpoint 10.1.0.5:80 of 10.96.0.1:80 listed with two identities"},
        {{{"10.96.0.1:80", "10.1.0.5:80", API}, {NULL, "10.96.0.1:80", API}},
         2,
         "is both a service address and a bare endpoint"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "";
        struct tt_services *s = tt_services_new(cases[i].e, cases[i].n, NULL, err, sizeof(err));
        if (s != NULL || strstr(err, cases[i].says) == NULL)
            fail_msg("case %zu: got %p, \"%s\"; expected \"%s\"", i, (void *)s, err, cases[i].says);
    }
}

static void test_services_equal(void **state)
{
    const struct tt_service_entry a[] = {{NULL, "10.1.0.5:80", API}, {NULL, "10.1.0.6:80", DB}};
    const struct tt_service_entry b[] = {{NULL, "10.1.0.6:80", DB}, {NULL, "10.1.0.5:80", API}};
    const struct tt_service_entry c[] = {{NULL, "10.1.0.6:80", API}, {NULL, "10.1.0.5:80", API}};
    char err[128];
    struct tt_services *sa = tt_services_new(a, 2, NULL, err, sizeof(err));
    struct tt_services *sb = tt_services_new(b, 2, NULL, err, sizeof(err));
    struct tt_services *sc = tt_services_new(c, 2, NULL, err, sizeof(err));
    struct tt_services *empty = tt_services_new(NULL, 0, NULL, err, sizeof(err));

    assert_true(tt_services_equal(sa, sb));  /* order of the input does not matter */
    assert_false(tt_services_equal(sa, sc)); /* an identity differs */
    assert_true(tt_services_equal(empty, NULL));
    assert_false(tt_services_equal(sa, NULL));
    assert_int_equal(tt_services_count(empty), 0);
    tt_services_unref(sa);
    tt_services_unref(sb);
    tt_services_unref(sc);
    tt_services_unref(empty);
    tt_services_unref(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_services_build_and_lookup),
        cmocka_unit_test(test_services_endpoint_addresses),
        cmocka_unit_test(test_services_errors),
        cmocka_unit_test(test_services_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
