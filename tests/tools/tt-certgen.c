/* tt-certgen: writes test CAs and leaves as PEM files for the integration tests.
 *
 *   tt-certgen ca --out DIR/name [--ca DIR/parent] [--cn CN]
 *   tt-certgen leaf --ca DIR/ca --out DIR/name [--spiffe-id ID [--spiffe-id ID2]]
 *                   [--cn CN] [--not-before SECS] [--not-after SECS] [--serial HEX]
 *                   [--key-type p256|p384|rsa2048|ed25519]
 *
 * Each writes name.crt (the certificate, followed by its intermediates) and name.key
 * (PKCS#8, mode 0600). Times are seconds relative to now (negative: in the past). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certgen.h"

static void usage(void)
{
    fprintf(stderr,
            "usage: tt-certgen ca --out PREFIX [--ca PARENT] [--cn CN] [--not-before S]\n"
            "                     [--not-after S]\n"
            "       tt-certgen leaf --ca PREFIX --out PREFIX [--spiffe-id ID]... [--cn CN]\n"
            "                     [--not-before S] [--not-after S] [--serial HEX]\n"
            "                     [--key-type p256|p384|rsa2048|ed25519]\n"
            "writes PREFIX.crt and PREFIX.key; times are seconds relative to now\n");
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;

    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct tt_certgen_opts o = {0};
    const char *out = NULL, *ca_prefix = NULL;
    int have_nb = 0, have_na = 0;
    size_t n_uris = 0;
    int is_ca;

    if (argc < 2) {
        usage();
        return 2;
    }
    if (strcmp(argv[1], "ca") == 0)
        is_ca = 1;
    else if (strcmp(argv[1], "leaf") == 0)
        is_ca = 0;
    else {
        usage();
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr, "tt-certgen: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--out") == 0) {
            out = v;
        } else if (strcmp(a, "--ca") == 0) {
            ca_prefix = v;
        } else if (strcmp(a, "--cn") == 0) {
            o.cn = v;
        } else if (strcmp(a, "--spiffe-id") == 0 || strcmp(a, "--uri") == 0) {
            if (n_uris == TT_CERTGEN_MAX_URIS) {
                fprintf(stderr, "tt-certgen: at most %d URI SANs\n", TT_CERTGEN_MAX_URIS);
                return 2;
            }
            o.uris[n_uris++] = v;
        } else if (strcmp(a, "--not-before") == 0) {
            if (parse_i64(v, &o.not_before) < 0)
                goto bad_value;
            have_nb = 1;
        } else if (strcmp(a, "--not-after") == 0) {
            if (parse_i64(v, &o.not_after) < 0)
                goto bad_value;
            have_na = 1;
        } else if (strcmp(a, "--key-type") == 0) {
            if (strcmp(v, "p256") != 0 && strcmp(v, "p384") != 0 && strcmp(v, "rsa2048") != 0 &&
                strcmp(v, "ed25519") != 0)
                goto bad_value;
            o.key_type = v;
        } else if (strcmp(a, "--serial") == 0) {
            char *end;
            errno = 0;
            o.serial = strtoull(v, &end, 16);
            if (errno != 0 || end == v || *end != '\0' || o.serial == 0)
                goto bad_value;
        } else {
            fprintf(stderr, "tt-certgen: unknown option %s\n", a);
            usage();
            return 2;
        }
        continue;
    bad_value:
        fprintf(stderr, "tt-certgen: bad value for %s: %s\n", a, v);
        return 2;
    }
    if (out == NULL || (!is_ca && ca_prefix == NULL)) {
        usage();
        return 2;
    }
    if (is_ca && n_uris > 0) {
        fprintf(stderr, "tt-certgen: --spiffe-id is for leaves\n");
        return 2;
    }
    /* Defaults: CAs ten years from an hour ago, leaves an hour from five minutes ago. */
    if (!have_nb)
        o.not_before = is_ca ? -3600 : -300;
    if (!have_na)
        o.not_after = is_ca ? 10LL * 365 * 86400 : 3600;
    if (o.not_before == 0 && o.not_after == 0)
        o.not_after = 1; /* both 0 would select the library's defaults */
    o.is_ca = is_ca;
    if (o.cn == NULL)
        o.cn = !is_ca              ? "workload"
               : ca_prefix != NULL ? "Tether test intermediate CA"
                                   : "Tether test CA";

    struct tt_certgen_cert *issuer = NULL;
    if (ca_prefix != NULL) {
        issuer = tt_certgen_read(ca_prefix);
        if (issuer == NULL) {
            fprintf(stderr, "tt-certgen: cannot load %s.crt and %s.key\n", ca_prefix, ca_prefix);
            return 1;
        }
    }
    struct tt_certgen_cert *c = tt_certgen_new(&o, issuer);
    if (c == NULL) {
        fprintf(stderr, "tt-certgen: certificate generation failed\n");
        tt_certgen_free(issuer);
        return 1;
    }
    int r = tt_certgen_write(c, out);
    if (r < 0)
        fprintf(stderr, "tt-certgen: writing %s.crt/.key: %s\n", out, strerror(-r));
    tt_certgen_free(c);
    tt_certgen_free(issuer);
    return r < 0 ? 1 : 0;
}
