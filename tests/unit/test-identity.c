/* Unit tests for identity.c: loading certificate, key and bundle from PEM text and from
 * files, what /certs shows of them, and every refusal with a message that names the
 * input. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "certgen.h"
#include "core/errors.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"

#define ID "spiffe://td/ns/a/sa/web"

static struct tt_certgen_cert *root, *root2, *inter, *leaf;
static char dir[] = "/tmp/tt-test-identity-XXXXXX";
static char err[1024];

static struct tt_identity *from_pem(const char *cert, const char *key, const char *bundle)
{
    err[0] = '\0';
    return tt_identity_from_pem(cert, strlen(cert), key, strlen(key), bundle, strlen(bundle),
                                "test", err, sizeof(err));
}

/* Writes text to DIR/name and returns the path (static storage, 4 slots). */
static const char *put(const char *name, const char *text)
{
    static char paths[4][256];
    static int slot;
    char *p = paths[slot++ % 4];
    FILE *f;

    snprintf(p, 256, "%s/%s", dir, name);
    f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

static int setup(void **state)
{
    if (mkdtemp(dir) == NULL)
        return -1;
    root = tt_certgen_ca("test root", NULL);
    root2 = tt_certgen_ca("second root", NULL);
    inter = tt_certgen_ca("test intermediate", root);
    leaf = tt_certgen_leaf(root, ID);
    return root && root2 && inter && leaf ? 0 : -1;
}

static int teardown(void **state)
{
    char cmd[512];

    tt_certgen_free(leaf);
    tt_certgen_free(inter);
    tt_certgen_free(root2);
    tt_certgen_free(root);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_identity_from_pem(void **state)
{
    struct tt_certgen_opts o = {.cn = "web", .uris = {ID}, .serial = 0x00ab12};
    struct tt_certgen_cert *c = tt_certgen_new(&o, root);
    char bundle[8192];
    int64_t now = (int64_t)time(NULL);

    assert_non_null(c);
    snprintf(bundle, sizeof(bundle), "%s%s", root->cert_pem, root2->cert_pem);
    struct tt_identity *id = from_pem(c->chain_pem, c->key_pem, bundle);
    assert_non_null(id);
    assert_string_equal(err, "");
    assert_string_equal(tt_identity_spiffe_id(id), ID);

    const struct tt_cert_info *li = tt_identity_leaf(id);
    assert_string_equal(li->spiffe_id, ID);
    assert_string_equal(li->serial, "AB12");
    assert_string_equal(li->subject, "CN=web,O=Tether tests");
    assert_string_equal(li->issuer, "CN=test root,O=Tether tests");
    assert_true(li->not_before >= now - 300 - 60 && li->not_before <= now - 300 + 60);
    assert_true(li->not_after >= now + 3600 - 60 && li->not_after <= now + 3600 + 60);

    assert_int_equal(tt_identity_root_count(id), 2);
    assert_string_equal(tt_identity_root(id, 0)->subject, "CN=test root,O=Tether tests");
    assert_string_equal(tt_identity_root(id, 1)->subject, "CN=second root,O=Tether tests");
    assert_string_equal(tt_identity_root(id, 0)->spiffe_id, "");
    assert_null(tt_identity_root(id, 2));

    /* Both contexts exist, carry our certificate, and allow TLS 1.2 to 1.3 only. */
    SSL_CTX *sctx = tt_identity_server_ctx(id), *cctx = tt_identity_client_ctx(id);
    assert_non_null(sctx);
    assert_non_null(cctx);
    assert_ptr_not_equal(sctx, cctx);
    assert_int_equal(SSL_CTX_get_min_proto_version(sctx), TLS1_2_VERSION);
    assert_int_equal(SSL_CTX_get_max_proto_version(sctx), TLS1_3_VERSION);
    assert_int_equal(SSL_CTX_get_min_proto_version(cctx), TLS1_2_VERSION);
    assert_non_null(SSL_CTX_get0_chain(sctx));
    assert_int_equal(sk_CRYPTO_BUFFER_num(SSL_CTX_get0_chain(cctx)), 1);
    assert_int_equal(SSL_CTX_get_verify_mode(sctx),
                     SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT);
    assert_non_null(tt_identity_trust_store(id));

    /* References: the identity lives until the last one goes. */
    assert_ptr_equal(tt_identity_ref(id), id);
    tt_identity_unref(id);
    assert_string_equal(tt_identity_spiffe_id(id), ID);
    tt_identity_unref(id);
    tt_identity_unref(NULL);
    tt_certgen_free(c);
}

/* The TLS 1.2 suites are the ECDHE-AEAD ones only. */
static void test_identity_cipher_list(void **state)
{
    struct tt_identity *id = from_pem(leaf->chain_pem, leaf->key_pem, root->cert_pem);
    assert_non_null(id);
    STACK_OF(SSL_CIPHER) *ciphers = SSL_CTX_get_ciphers(tt_identity_server_ctx(id));
    assert_true(sk_SSL_CIPHER_num(ciphers) > 0);
    for (size_t i = 0; i < sk_SSL_CIPHER_num(ciphers); i++) {
        const SSL_CIPHER *c = sk_SSL_CIPHER_value(ciphers, i);
        assert_int_equal(SSL_CIPHER_get_kx_nid(c), NID_kx_ecdhe);
        assert_true(SSL_CIPHER_is_aead(c));
    }
    tt_identity_unref(id);
}

static void test_identity_intermediate_chain(void **state)
{
    struct tt_certgen_cert *c = tt_certgen_leaf(inter, ID);
    assert_non_null(c);
    struct tt_identity *id = from_pem(c->chain_pem, c->key_pem, root->cert_pem);
    assert_non_null(id);
    /* We present the leaf and the intermediate. */
    assert_int_equal(sk_CRYPTO_BUFFER_num(SSL_CTX_get0_chain(tt_identity_server_ctx(id))), 2);
    assert_string_equal(tt_identity_leaf(id)->issuer, "CN=test intermediate,O=Tether tests");
    tt_identity_unref(id);

    /* Without the intermediate the leaf does not chain. */
    assert_null(from_pem(c->cert_pem, c->key_pem, root->cert_pem));
    assert_string_equal(err, "test cert: leaf does not chain to the trust bundle test bundle: "
                             "unable to get local issuer certificate");
    tt_certgen_free(c);
}

/* Our own certificate loads even outside its validity (and /stats reports it). */
static void test_identity_expired_own_cert_loads(void **state)
{
    struct tt_certgen_opts o = {.uris = {ID}, .not_before = -7200, .not_after = -3600};
    struct tt_certgen_cert *c = tt_certgen_new(&o, root);
    assert_non_null(c);
    struct tt_identity *id = from_pem(c->chain_pem, c->key_pem, root->cert_pem);
    assert_non_null(id);
    assert_true(tt_identity_leaf(id)->not_after < (int64_t)time(NULL));
    tt_identity_unref(id);
    tt_certgen_free(c);
}

static void test_identity_serial_format(void **state)
{
    static const struct {
        uint64_t serial;
        const char *text;
    } cases[] = {
        {1, "1"},
        {0x10, "10"},
        {0x0100, "100"},
        {0xdeadbeef, "DEADBEEF"},
        {0x8000000000000000ULL, "8000000000000000"}, /* encoded with a leading 00 byte */
    };
    struct tt_cert_info info;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tt_certgen_opts o = {.uris = {ID}, .serial = cases[i].serial};
        struct tt_certgen_cert *c = tt_certgen_new(&o, root);
        assert_non_null(c);
        assert_int_equal(tt_cert_info_fill(&info, c->x509), 0);
        assert_string_equal(info.serial, cases[i].text);
        tt_certgen_free(c);
    }
    /* Random 16-byte serials: upper-case hex, no leading zero. */
    for (int i = 0; i < 20; i++) {
        struct tt_certgen_cert *c = tt_certgen_leaf(root, ID);
        assert_int_equal(tt_cert_info_fill(&info, c->x509), 0);
        assert_true(strlen(info.serial) >= 1 && strlen(info.serial) <= 32);
        assert_true(info.serial[0] != '0');
        assert_int_equal(strspn(info.serial, "0123456789ABCDEF"), strlen(info.serial));
        tt_certgen_free(c);
    }
    /* A CA has no SPIFFE ID: filled, but not a workload identity. */
    assert_int_equal(tt_cert_info_fill(&info, root->x509), TT_E_BAD_SAN);
    assert_string_equal(info.spiffe_id, "");
    assert_string_equal(info.subject, "CN=test root,O=Tether tests");
}

/* Each bad leaf SAN is refused with a message saying what is wrong. */
static void test_identity_bad_san(void **state)
{
    static const struct {
        const char *uri1, *uri2, *msg;
    } cases[] = {
        {NULL, NULL, "test cert: leaf has no spiffe:// URI SAN"},
        {"https://td/ns/a", NULL, "test cert: leaf has no spiffe:// URI SAN"},
        {ID, "spiffe://td/ns/b/sa/x",
         "test cert: leaf has 2 URI SANs, expected exactly one "
         "spiffe:// ID"},
        {ID, "https://example.com",
         "test cert: leaf has 2 URI SANs, expected exactly one "
         "spiffe:// ID"},
        {"spiffe://TD/ns/a", NULL, "test cert: leaf URI SAN is not a valid SPIFFE ID"},
        {"spiffe://td", NULL, "test cert: leaf URI SAN is not a valid SPIFFE ID"},
        {"spiffe://td/a/", NULL, "test cert: leaf URI SAN is not a valid SPIFFE ID"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct tt_certgen_opts o = {.uris = {cases[i].uri1, cases[i].uri2}};
        struct tt_certgen_cert *c = tt_certgen_new(&o, root);
        assert_non_null(c);
        assert_null(from_pem(c->chain_pem, c->key_pem, root->cert_pem));
        assert_string_equal(err, cases[i].msg);
        tt_certgen_free(c);
    }
}

static void test_identity_pem_errors(void **state)
{
    struct tt_certgen_cert *other = tt_certgen_leaf(root, ID);
    assert_non_null(other);

    /* Key of another certificate. */
    assert_null(from_pem(leaf->chain_pem, other->key_pem, root->cert_pem));
    assert_string_equal(err, "test key: key does not match certificate test cert");

    /* Not PEM at all, and nothing in the input. */
    assert_null(from_pem("garbage\n", leaf->key_pem, root->cert_pem));
    assert_string_equal(err, "test cert: no certificate found");
    assert_null(from_pem("", leaf->key_pem, root->cert_pem));
    assert_string_equal(err, "test cert: no certificate found");
    assert_null(from_pem(leaf->chain_pem, "garbage", root->cert_pem));
    assert_string_equal(err, "test key: no private key found");
    assert_null(from_pem(leaf->chain_pem, leaf->key_pem, "garbage"));
    assert_string_equal(err, "test bundle: no certificate found");

    /* A key where the certificate should be, and the other way round. */
    assert_null(from_pem(leaf->key_pem, leaf->key_pem, root->cert_pem));
    assert_string_equal(err, "test cert: no certificate found");
    assert_null(from_pem(leaf->chain_pem, leaf->chain_pem, root->cert_pem));
    assert_string_equal(err, "test key: no private key found");

    /* Corrupt base64 inside the markers. */
    static const char bad_cert[] =
        "-----BEGIN CERTIFICATE-----\nMIIB!!!!notbase64\n-----END CERTIFICATE-----\n";
    assert_null(from_pem(bad_cert, leaf->key_pem, root->cert_pem));
    assert_string_equal(err, "test cert: invalid certificate PEM");
    static const char bad_key[] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert_null(from_pem(leaf->chain_pem, bad_key, root->cert_pem));
    assert_string_equal(err, "test key: cannot parse the private key (corrupt or encrypted PEM)");

    /* A good certificate followed by a truncated one. */
    char trunc[8192];
    snprintf(trunc, sizeof(trunc), "%s%.*s", leaf->chain_pem, 100, root->cert_pem);
    assert_null(from_pem(trunc, leaf->key_pem, root->cert_pem));
    assert_string_equal(err, "test cert: invalid certificate PEM");

    /* A leaf from a root that is not in the bundle. */
    assert_null(from_pem(leaf->chain_pem, leaf->key_pem, root2->cert_pem));
    assert_non_null(strstr(err, "test cert: leaf does not chain to the trust bundle"));

    /* Errors fit any buffer, and no buffer at all is fine. */
    char small[8];
    assert_null(tt_identity_from_pem("x", 1, "y", 1, "z", 1, "test", small, sizeof(small)));
    assert_string_equal(small, "test ce");
    assert_null(tt_identity_from_pem("x", 1, "y", 1, "z", 1, NULL, NULL, 0));

    /* Length is honoured: the text past len is not read. */
    assert_null(tt_identity_from_pem(leaf->chain_pem, 20, leaf->key_pem, strlen(leaf->key_pem),
                                     root->cert_pem, strlen(root->cert_pem), "test", err,
                                     sizeof(err)));
    assert_string_equal(err, "test cert: no certificate found");
    tt_certgen_free(other);
}

static void test_identity_load_files(void **state)
{
    char cert_path[256], key_path[256], bundle_path[256];

    snprintf(cert_path, sizeof(cert_path), "%s", put("web.crt", leaf->chain_pem));
    snprintf(key_path, sizeof(key_path), "%s", put("web.key", leaf->key_pem));
    snprintf(bundle_path, sizeof(bundle_path), "%s", put("bundle.pem", root->cert_pem));

    struct tt_identity *id = tt_identity_load(cert_path, key_path, bundle_path, err, sizeof(err));
    assert_non_null(id);
    assert_string_equal(tt_identity_spiffe_id(id), ID);
    tt_identity_unref(id);

    char want[600];
    char missing[300];
    snprintf(missing, sizeof(missing), "%s/nope.pem", dir);
    assert_null(tt_identity_load(cert_path, missing, bundle_path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: No such file or directory", missing);
    assert_string_equal(err, want);

    /* A directory is not a PEM file. */
    assert_null(tt_identity_load(cert_path, key_path, dir, err, sizeof(err)));
    assert_non_null(strstr(err, dir));

    const char *garbage = put("garbage.key", "not a key\n");
    assert_null(tt_identity_load(cert_path, garbage, bundle_path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: no private key found", garbage);
    assert_string_equal(err, want);

    struct tt_certgen_cert *other = tt_certgen_leaf(root, ID);
    const char *other_key = put("other.key", other->key_pem);
    assert_null(tt_identity_load(cert_path, other_key, bundle_path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: key does not match certificate %s", other_key, cert_path);
    assert_string_equal(err, want);
    tt_certgen_free(other);

    struct tt_certgen_cert *nosan = tt_certgen_leaf(root, NULL);
    const char *nosan_crt = put("nosan.crt", nosan->chain_pem);
    const char *nosan_key = put("nosan.key", nosan->key_pem);
    assert_null(tt_identity_load(nosan_crt, nosan_key, bundle_path, err, sizeof(err)));
    snprintf(want, sizeof(want), "%s: leaf has no spiffe:// URI SAN", nosan_crt);
    assert_string_equal(err, want);
    tt_certgen_free(nosan);
}

/* Files written by tt-certgen's library load as an identity (the integration tests rely
 * on it), and a CA read back can issue more leaves. */
static void test_identity_certgen_files(void **state)
{
    char prefix[300], c[320], k[320], b[320];

    snprintf(prefix, sizeof(prefix), "%s/ca", dir);
    assert_int_equal(tt_certgen_write(root, prefix), 0);
    struct tt_certgen_cert *ca = tt_certgen_read(prefix);
    assert_non_null(ca);
    assert_true(ca->is_root);
    struct tt_certgen_cert *l = tt_certgen_leaf(ca, ID);
    snprintf(prefix, sizeof(prefix), "%s/leaf", dir);
    assert_int_equal(tt_certgen_write(l, prefix), 0);
    snprintf(c, sizeof(c), "%s/leaf.crt", dir);
    snprintf(k, sizeof(k), "%s/leaf.key", dir);
    snprintf(b, sizeof(b), "%s/ca.crt", dir);
    struct tt_identity *id = tt_identity_load(c, k, b, err, sizeof(err));
    assert_non_null(id);
    tt_identity_unref(id);
    tt_certgen_free(l);
    tt_certgen_free(ca);
}

/* The shared PEM readers the control plane's CA uses: every certificate of a text in order,
 * the key, and each failure with its own code; and ASN1 times as unix seconds. */
static void test_identity_pem_parse_exported(void **state)
{
    char text[16384], corrupt[16384];
    STACK_OF(X509) *certs = NULL;
    EVP_PKEY *key = NULL;
    ASN1_TIME *t;
    const char *body;

    snprintf(text, sizeof(text), "a comment\n%sbetween\n%s", leaf->cert_pem, root->cert_pem);
    assert_int_equal(tt_pem_parse_certs(text, strlen(text), &certs), 0);
    assert_int_equal(sk_X509_num(certs), 2);
    assert_int_equal(X509_cmp(sk_X509_value(certs, 0), leaf->x509), 0);
    assert_int_equal(X509_cmp(sk_X509_value(certs, 1), root->x509), 0);
    sk_X509_pop_free(certs, X509_free);
    certs = NULL;
    assert_int_equal(tt_pem_parse_certs("no pem here\n", 12, &certs), TT_E_IDENTITY);
    assert_null(certs);
    /* A block whose base64 is damaged is an error, even after a good one. */
    body = strstr(root->cert_pem, "\n") + 1;
    snprintf(corrupt, sizeof(corrupt), "%s-----BEGIN CERTIFICATE-----\n!!%s", leaf->cert_pem,
             body + 2);
    assert_int_equal(tt_pem_parse_certs(corrupt, strlen(corrupt), &certs), TT_E_PEM);
    assert_null(certs);

    assert_int_equal(tt_pem_parse_key(leaf->key_pem, strlen(leaf->key_pem), &key), 0);
    assert_int_equal(EVP_PKEY_cmp(key, leaf->key), 1);
    EVP_PKEY_free(key);
    key = NULL;
    assert_int_equal(tt_pem_parse_key(leaf->cert_pem, strlen(leaf->cert_pem), &key), TT_E_IDENTITY);
    assert_null(key);

    t = ASN1_TIME_set(NULL, (time_t)1700000123);
    assert_non_null(t);
    assert_int_equal(tt_asn1_time_unix(t), 1700000123);
    ASN1_TIME_free(t);
    t = ASN1_TIME_set(NULL, (time_t)4102444800); /* 2100-01-01: GeneralizedTime */
    assert_non_null(t);
    assert_int_equal(tt_asn1_time_unix(t), 4102444800);
    ASN1_TIME_free(t);
    assert_int_equal(tt_asn1_time_unix(X509_get0_notAfter(leaf->x509)),
                     tt_asn1_time_unix(X509_get0_notBefore(leaf->x509)) + 3900);
    assert_int_equal(tt_asn1_time_unix(NULL), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identity_from_pem),
        cmocka_unit_test(test_identity_cipher_list),
        cmocka_unit_test(test_identity_intermediate_chain),
        cmocka_unit_test(test_identity_expired_own_cert_loads),
        cmocka_unit_test(test_identity_serial_format),
        cmocka_unit_test(test_identity_bad_san),
        cmocka_unit_test(test_identity_pem_errors),
        cmocka_unit_test(test_identity_load_files),
        cmocka_unit_test(test_identity_certgen_files),
        cmocka_unit_test(test_identity_pem_parse_exported),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
