/* Unit tests for tls/crl: loading CRL files (PEM, DER, several per file, and every way a
 * file can be wrong) and checking chains against them, as an attacker would try: a
 * listed leaf, a listed intermediate, a forged CRL with the issuer's name, a CA without
 * a CRL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "certgen.h"
#include "core/errors.h"
#include "core/util.h"
#include "tls/crl.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"

#define ID "spiffe://td/ns/shop/sa/web"

static struct tt_certgen_cert *root, *other_root, *inter, *forger, *leaf, *ileaf, *oleaf;
static char dir[] = "/tmp/tt-test-crl-XXXXXX";

/* Hex serial of c, as tt_certgen_crl takes it. */
static const char *serial_of(const struct tt_certgen_cert *c, char *buf, size_t cap)
{
    tt_serial_format(X509_get0_serialNumber(c->x509), buf, cap);
    return buf;
}

/* Writes data into DIR/name and returns the path (malloc'ed: the caller frees it). */
static char *write_tmp(const char *name, const void *data, size_t len)
{
    char *path = NULL;
    FILE *f;

    assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

/* A CRL of issuer listing one serial, written as PEM; returns its path (caller frees). */
static char *crl_file(const char *name, const struct tt_certgen_cert *issuer,
                      const struct tt_certgen_cert *revoked, int64_t next_update)
{
    char s[TT_SERIAL_MAX];
    const char *serials[1] = {revoked != NULL ? serial_of(revoked, s, sizeof(s)) : NULL};
    char *pem = tt_certgen_crl(issuer, serials, revoked != NULL ? 1 : 0, -60, next_update);
    char *path;

    assert_non_null(pem);
    path = write_tmp(name, pem, strlen(pem));
    free(pem);
    return path;
}

/* The chain c, then its issuers, as X509s (what verification builds). */
static STACK_OF(X509) * chain_of(struct tt_certgen_cert *const *certs, size_t n)
{
    STACK_OF(X509) *chain = sk_X509_new_null();

    for (size_t i = 0; i < n; i++)
        assert_true(sk_X509_push(chain, certs[i]->x509));
    return chain;
}

static int check(const struct tt_crls *crls, struct tt_certgen_cert *const *certs, size_t n,
                 char *detail, size_t cap)
{
    STACK_OF(X509) *chain = chain_of(certs, n);
    int r = tt_crls_check_chain(crls, (const struct stack_st_X509 *)chain, detail, cap);

    sk_X509_free(chain);
    return r;
}

static struct tt_identity *trust(void)
{
    char err[256];
    struct tt_identity *id =
        tt_identity_trust_only(root->cert_pem, strlen(root->cert_pem), "bundle", err, sizeof(err));
    assert_non_null(id);
    return id;
}

static int setup(void **state)
{
    struct tt_certgen_opts same_name_as_inter = {.cn = "inter", .is_ca = 1};

    assert_non_null(mkdtemp(dir));
    root = tt_certgen_ca("root", NULL);
    other_root = tt_certgen_ca("other", NULL);
    inter = tt_certgen_ca("inter", root);
    forger = tt_certgen_new(&same_name_as_inter, root); /* same DN as inter, other key */
    leaf = tt_certgen_leaf(root, ID);
    ileaf = tt_certgen_leaf(inter, ID);
    oleaf = tt_certgen_leaf(other_root, ID);
    assert_true(root && other_root && inter && forger && leaf && ileaf && oleaf);
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    tt_certgen_free(oleaf);
    tt_certgen_free(ileaf);
    tt_certgen_free(leaf);
    tt_certgen_free(forger);
    tt_certgen_free(inter);
    tt_certgen_free(other_root);
    tt_certgen_free(root);
    return 0;
}

static void test_crl_listed_leaf_revoked(void **state)
{
    char *path = crl_file("leaf.crl", root, leaf, 3600), err[256], detail[256], s[TT_SERIAL_MAX];
    struct tt_identity *id = trust();
    const char *paths[] = {path};
    struct tt_crls *crls = tt_crls_load(paths, 1, id, err, sizeof(err));
    struct tt_certgen_cert *chain[] = {leaf, root};
    struct tt_certgen_cert *other_chain[] = {ileaf, inter, root};

    assert_non_null(crls);
    assert_int_equal(tt_crls_count(crls), 1);
    assert_int_equal(tt_crls_info(crls, 0)->revoked, 1);
    assert_int_equal(tt_crls_expired(crls, tt_now_unix()), 0);
    assert_int_equal(check(crls, chain, 2, detail, sizeof(detail)), TT_E_REVOKED);
    assert_non_null(strstr(detail, serial_of(leaf, s, sizeof(s))));
    assert_non_null(strstr(detail, path));
    assert_non_null(strstr(detail, "depth 0"));
    /* Not listed: admitted. */
    assert_int_equal(check(crls, other_chain, 3, detail, sizeof(detail)), 0);
    /* An empty or NULL set revokes nothing. */
    assert_int_equal(check(NULL, chain, 2, detail, sizeof(detail)), 0);
    tt_crls_unref(crls);
    tt_identity_unref(id);
    free(path);
}

static void test_crl_intermediate_revoked_by_root(void **state)
{
    char *path = crl_file("inter.crl", root, inter, 3600), err[256], detail[256];
    const char *paths[] = {path};
    struct tt_crls *crls = tt_crls_load(paths, 1, NULL, err, sizeof(err));
    struct tt_certgen_cert *chain[] = {ileaf, inter, root};

    assert_non_null(crls);
    assert_int_equal(check(crls, chain, 3, detail, sizeof(detail)), TT_E_REVOKED);
    assert_non_null(strstr(detail, "depth 1"));
    tt_crls_unref(crls);
    free(path);
}

static void test_crl_forged_and_missing_crls_revoke_nothing(void **state)
{
    /* The forger has inter's name but not its key: its CRL listing ileaf is ignored. */
    char *forged = crl_file("forged.crl", forger, ileaf, 3600), err[256], detail[256];
    char *rootcrl = crl_file("empty.crl", root, NULL, 3600);
    const char *paths[] = {forged, rootcrl};
    struct tt_crls *crls = tt_crls_load(paths, 2, NULL, err, sizeof(err));
    struct tt_certgen_cert *chain[] = {ileaf, inter, root};
    struct tt_certgen_cert *ochain[] = {oleaf, other_root}; /* a CA without any CRL */

    assert_non_null(crls);
    assert_int_equal(check(crls, chain, 3, detail, sizeof(detail)), 0);
    assert_int_equal(check(crls, ochain, 2, detail, sizeof(detail)), 0);
    tt_crls_unref(crls);
    free(forged);
    free(rootcrl);
}

static void test_crl_der_and_several_per_file(void **state)
{
    char s1[TT_SERIAL_MAX], err[256], detail[256];
    const char *one[] = {serial_of(leaf, s1, sizeof(s1))};
    char *a = tt_certgen_crl(root, one, 1, -60, 3600), *b = tt_certgen_crl(inter, NULL, 0, -60, 0);
    size_t la = strlen(a), lb = strlen(b);
    char *both = malloc(la + lb + 1);
    struct tt_certgen_cert *chain[] = {leaf, root};

    memcpy(both, a, la);
    memcpy(both + la, b, lb + 1);
    char *p = write_tmp("both.crl", both, la + lb);
    const char *paths[] = {p};
    struct tt_crls *crls = tt_crls_load(paths, 1, NULL, err, sizeof(err));
    assert_non_null(crls);
    assert_int_equal(tt_crls_count(crls), 2);
    assert_non_null(strstr(tt_crls_info(crls, 1)->source, "#2"));
    assert_int_equal(tt_crls_info(crls, 1)->next_update, 0); /* none */
    assert_int_equal(check(crls, chain, 2, detail, sizeof(detail)), TT_E_REVOKED);
    tt_crls_unref(crls);

    /* The same CRL in DER. */
    BIO *bio = BIO_new_mem_buf(a, (int)la);
    X509_CRL *crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
    uint8_t *der = NULL;
    int dlen = i2d_X509_CRL(crl, &der);
    assert_true(dlen > 0);
    char *dp = write_tmp("one.der", der, (size_t)dlen);
    paths[0] = dp;
    crls = tt_crls_load(paths, 1, NULL, err, sizeof(err));
    assert_non_null(crls);
    assert_int_equal(check(crls, chain, 2, detail, sizeof(detail)), TT_E_REVOKED);
    tt_crls_unref(crls);
    OPENSSL_free(der);
    X509_CRL_free(crl);
    BIO_free(bio);
    free(dp);
    free(p);
    free(both);
    free(a);
    free(b);
}

static void test_crl_expired_still_refuses(void **state)
{
    char *path = crl_file("old.crl", root, leaf, -30), err[256], detail[256];
    const char *paths[] = {path};
    struct tt_crls *crls = tt_crls_load(paths, 1, NULL, err, sizeof(err));
    struct tt_certgen_cert *chain[] = {leaf, root};

    assert_non_null(crls);
    assert_int_equal(tt_crls_expired(crls, tt_now_unix()), 1);
    assert_int_equal(check(crls, chain, 2, detail, sizeof(detail)), TT_E_REVOKED);
    tt_crls_unref(crls);
    free(path);
}

static void test_crl_bad_files_named(void **state)
{
    struct tt_identity *id = trust();
    char err[256];
    char *garbage = write_tmp("garbage.crl", "hello", 5);
    char *empty = write_tmp("empty-file.crl", "", 0);
    char *cert = write_tmp("cert.pem", leaf->cert_pem, strlen(leaf->cert_pem));
    static const char bad_text[] = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
    char *bad_pem = write_tmp("bad.pem", bad_text, strlen(bad_text));
    /* A CRL claiming root's name, signed by another key, fails at load: root is in the
     * bundle. */
    struct tt_certgen_opts imposter_o = {.cn = "root", .is_ca = 1};
    struct tt_certgen_cert *imposter = tt_certgen_new(&imposter_o, NULL);
    char *wrong_key = crl_file("wrong-key.crl", imposter, leaf, 3600);
    const char *cases[][2] = {{garbage, "not a CRL"},
                              {empty, "empty"},
                              {cert, "no \"-----BEGIN X509 CRL-----\""},
                              {bad_pem, "not a valid X509 CRL"},
                              {"/nonexistent/x.crl", "cannot read"},
                              {wrong_key, "does not verify"}};

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *paths[] = {cases[i][0]};
        err[0] = '\0';
        assert_null(tt_crls_load(paths, 1, id, err, sizeof(err)));
        assert_non_null(strstr(err, cases[i][0]));
        assert_non_null(strstr(err, cases[i][1]));
    }
    tt_certgen_free(imposter);
    tt_identity_unref(id);
    free(garbage);
    free(empty);
    free(cert);
    free(bad_pem);
    free(wrong_key);
}

static void test_crl_in_bundle_refused(void **state)
{
    char *crl = tt_certgen_crl(root, NULL, 0, -60, 3600), err[512];
    size_t a = strlen(root->cert_pem), b = strlen(crl);
    char *bundle = malloc(a + b + 1);

    memcpy(bundle, root->cert_pem, a);
    memcpy(bundle + a, crl, b + 1);
    assert_null(tt_identity_from_pem(leaf->chain_pem, strlen(leaf->chain_pem), leaf->key_pem,
                                     strlen(leaf->key_pem), bundle, a + b, "t", err, sizeof(err)));
    assert_non_null(strstr(err, "--crl"));
    assert_null(tt_identity_trust_only(bundle, a + b, "cb", err, sizeof(err)));
    assert_non_null(strstr(err, "--crl"));
    free(bundle);
    free(crl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crl_listed_leaf_revoked),
        cmocka_unit_test(test_crl_intermediate_revoked_by_root),
        cmocka_unit_test(test_crl_forged_and_missing_crls_revoke_nothing),
        cmocka_unit_test(test_crl_der_and_several_per_file),
        cmocka_unit_test(test_crl_expired_still_refuses),
        cmocka_unit_test(test_crl_bad_files_named),
        cmocka_unit_test(test_crl_in_bundle_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
