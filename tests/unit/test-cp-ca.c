/* Unit tests for control/ca.c: root creation and reload, loading a given root or
 * intermediate, CSR signing and every refusal, lifetime caps, the serving certificate. */
#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec_key.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "core/util.h"
#include "core/errors.h"
#include "certgen.h"
#include "store_file.h"

#define TD   "example.org"
#define ID_A "spiffe://example.org/ns/shop/sa/web"
#define ID_B "spiffe://example.org/ns/shop/sa/api"

/* ---- helpers ---- */

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/test-cp-ca-XXXXXX";
    char *d = mkdtemp(tmpl);

    assert_non_null(d);
    return strdup(d);
}

static void rm_rf(const char *dir)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static EVP_PKEY *ec_key(int nid)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(nid);
    EVP_PKEY *k = EVP_PKEY_new();

    assert_non_null(ec);
    assert_true(EC_KEY_generate_key(ec));
    assert_true(EVP_PKEY_assign_EC_KEY(k, ec));
    return k;
}

static EVP_PKEY *rsa_key(int bits)
{
    RSA *rsa = RSA_new();
    BIGNUM *e = BN_new();
    EVP_PKEY *k = EVP_PKEY_new();

    BN_set_word(e, RSA_F4);
    assert_true(RSA_generate_key_ex(rsa, bits, e, NULL));
    assert_true(EVP_PKEY_assign_RSA(k, rsa));
    BN_free(e);
    return k;
}

/* A CSR signed by key with the given URI SANs (and one DNS SAN when dns). */
static uint8_t *make_csr(EVP_PKEY *key, const char *const *uris, size_t n, const char *dns,
                         size_t *len)
{
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    uint8_t *der = NULL;
    int l;

    assert_true(X509_REQ_set_pubkey(req, key));
    for (size_t i = 0; i < n; i++) {
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();

        ASN1_STRING_set(s, uris[i], (int)strlen(uris[i]));
        GENERAL_NAME_set0_value(gn, GEN_URI, s);
        sk_GENERAL_NAME_push(names, gn);
    }
    if (dns) {
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();

        ASN1_STRING_set(s, dns, (int)strlen(dns));
        GENERAL_NAME_set0_value(gn, GEN_DNS, s);
        sk_GENERAL_NAME_push(names, gn);
    }
    if (sk_GENERAL_NAME_num(names) > 0) {
        X509_EXTENSION *ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, names);

        assert_non_null(ext);
        sk_X509_EXTENSION_push(exts, ext);
        assert_true(X509_REQ_add_extensions(req, exts));
    }
    assert_true(X509_REQ_sign(req, key, EVP_sha256()));
    l = i2d_X509_REQ(req, &der);
    assert_true(l > 0);
    *len = (size_t)l;
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    GENERAL_NAMES_free(names);
    X509_REQ_free(req);
    return der;
}

static uint8_t *csr_for(const char *uri, size_t *len)
{
    EVP_PKEY *k = ec_key(NID_X9_62_prime256v1);
    const char *uris[] = {uri};
    uint8_t *der = make_csr(k, uris, 1, NULL, len);

    EVP_PKEY_free(k);
    return der;
}

static X509 *first_cert(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, (int)strlen(pem));
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);

    BIO_free(b);
    assert_non_null(x);
    return x;
}

static int count_certs(const char *pem)
{
    int n = 0;

    for (const char *p = pem; (p = strstr(p, "-----BEGIN CERTIFICATE-----")); p++)
        n++;
    return n;
}

/* The root's validity is ten years from now (to a day). */
static bool asn1_time_ok_10y(X509 *x)
{
    int days = 0, secs = 0;

    assert_true(ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x)));
    return days >= 3649 && days <= 3650;
}

static struct cp_ca *open_new(const char *dir, uint64_t ttl_ms)
{
    struct cp_ca_opts o = {.state_dir = dir, .trust_domain = TD, .max_ttl_ms = ttl_ms};
    char err[512] = "";
    struct cp_ca *ca = cp_ca_open(&o, err, sizeof(err));

    if (ca == NULL)
        fail_msg("cp_ca_open: %s", err);
    return ca;
}

/* ---- tests ---- */

static void test_ca_creates_root_and_reloads(void **state)
{
    char *dir = make_tmpdir();
    char path[512], cn[256];
    struct stat st;
    struct cp_ca *ca = open_new(dir, 0);
    char *bundle = strdup(cp_ca_bundle_pem(ca));
    X509 *root = first_cert(bundle);
    EVP_PKEY *pub = X509_get_pubkey(root);

    snprintf(path, sizeof(path), "%s/ca.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* Self-signed P-256 CA with the documented subject and usages. */
    assert_int_equal(X509_verify(root, pub), 1);
    assert_int_equal(EVP_PKEY_id(pub), EVP_PKEY_EC);
    assert_true(X509_check_ca(root) > 0);
    assert_true(X509_get_key_usage(root) & KU_KEY_CERT_SIGN);
    assert_true(X509_get_key_usage(root) & KU_CRL_SIGN);
    X509_NAME_get_text_by_NID(X509_get_subject_name(root), NID_commonName, cn, sizeof(cn));
    assert_string_equal(cn, "Tether Root CA " TD);
    X509_NAME_get_text_by_NID(X509_get_subject_name(root), NID_organizationName, cn, sizeof(cn));
    assert_string_equal(cn, "Tether");
    assert_true(asn1_time_ok_10y(root));
    cp_ca_free(ca);

    /* A restart keeps the same root. */
    ca = open_new(dir, 0);
    assert_string_equal(cp_ca_bundle_pem(ca), bundle);
    cp_ca_free(ca);

    EVP_PKEY_free(pub);
    X509_free(root);
    free(bundle);
    rm_rf(dir);
    free(dir);
}

static void test_ca_sign_happy_path(void **state)
{
    char *dir = make_tmpdir();
    struct cp_ca *ca = open_new(dir, 3600 * 1000);
    struct cp_ca_cert out;
    char err[256] = "";
    size_t len;
    uint8_t *der = csr_for(ID_A, &len);
    X509 *leaf, *root;
    EVP_PKEY *rootkey;
    GENERAL_NAMES *names;
    const GENERAL_NAME *gn;
    EXTENDED_KEY_USAGE *eku;
    BIGNUM *bn;
    char *hex;
    char norm[TT_SERIAL_MAX];
    time_t now = time(NULL);
    int days, secs;

    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), 0);
    assert_int_equal(count_certs(out.chain_pem), 1); /* root-signed: no intermediates */
    leaf = first_cert(out.chain_pem);
    root = first_cert(cp_ca_bundle_pem(ca));
    rootkey = X509_get_pubkey(root);
    assert_int_equal(X509_verify(leaf, rootkey), 1);
    assert_int_equal(X509_check_ca(leaf), 0);
    /* Only the URI SAN. */
    names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    assert_non_null(names);
    assert_int_equal(sk_GENERAL_NAME_num(names), 1);
    gn = sk_GENERAL_NAME_value(names, 0);
    assert_int_equal(gn->type, GEN_URI);
    assert_string_equal((const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier), ID_A);
    GENERAL_NAMES_free(names);
    /* EC: digitalSignature only; EKU both ways. */
    assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    eku = X509_get_ext_d2i(leaf, NID_ext_key_usage, NULL, NULL);
    assert_non_null(eku);
    assert_int_equal(sk_ASN1_OBJECT_num(eku), 2);
    assert_int_equal(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 0)), NID_server_auth);
    assert_int_equal(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, 1)), NID_client_auth);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    assert_non_null(X509_get0_subject_key_id(leaf));
    assert_non_null(X509_get0_authority_key_id(leaf));
    /* Serial as reported, 128-bit class. */
    bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(leaf), NULL);
    hex = BN_bn2hex(bn);
    assert_int_equal(tt_serial_normalize(hex, norm, sizeof(norm)), 0);
    assert_string_equal(norm, out.serial);
    assert_true(BN_num_bits(bn) > 64 && BN_num_bits(bn) <= 127);
    OPENSSL_free(hex);
    BN_free(bn);
    /* Validity: backdated a minute, an hour long. */
    assert_true(out.not_before <= now - 59 && out.not_before >= now - 62);
    assert_true(out.not_after >= now + 3598 && out.not_after <= now + 3601);
    ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(leaf));
    assert_true(days == 0 && secs > 3590 && secs <= 3601);

    /* Two issues never share a serial. */
    {
        struct cp_ca_cert out2;

        assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out2, err, sizeof(err)), 0);
        assert_string_not_equal(out.serial, out2.serial);
        cp_ca_cert_done(&out2);
    }
    EVP_PKEY_free(rootkey);
    X509_free(root);
    X509_free(leaf);
    cp_ca_cert_done(&out);
    OPENSSL_free(der);
    cp_ca_free(ca);
    rm_rf(dir);
    free(dir);
}

static void test_ca_refuses_other_identity(void **state)
{
    char *dir = make_tmpdir();
    struct cp_ca *ca = open_new(dir, 0);
    struct cp_ca_cert out;
    char err[256] = "";
    size_t len;
    uint8_t *der = csr_for(ID_B, &len);

    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)),
                     TT_E_CSR_IDENTITY);
    assert_non_null(strstr(err, ID_B));
    assert_non_null(strstr(err, ID_A));
    assert_null(out.chain_pem);
    assert_string_equal(cp_ca_err_reason(TT_E_CSR_IDENTITY), "identity_mismatch");
    /* An identity outside the CA's trust domain is never signed, whatever the proof. */
    OPENSSL_free(der);
    der = csr_for("spiffe://other.org/ns/shop/sa/web", &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, "spiffe://other.org/ns/shop/sa/web", 0, &out, err,
                                    sizeof(err)),
                     TT_E_CSR_IDENTITY);
    assert_non_null(strstr(err, "trust domain " TD));
    assert_int_equal(cp_ca_sign_csr(ca, der, len, NULL, 0, &out, err, sizeof(err)),
                     TT_E_CSR_IDENTITY);
    OPENSSL_free(der);
    cp_ca_free(ca);
    rm_rf(dir);
    free(dir);
}

static void test_ca_refuses_bad_sans(void **state)
{
    char *dir = make_tmpdir();
    struct cp_ca *ca = open_new(dir, 0);
    struct cp_ca_cert out;
    char err[256] = "";
    EVP_PKEY *k = ec_key(NID_X9_62_prime256v1);
    const char *two[] = {ID_A, ID_B};
    const char *dup[] = {ID_A, ID_A};
    size_t len;
    uint8_t *der;

    der = make_csr(k, two, 2, NULL, &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR_SAN);
    assert_non_null(strstr(err, "2 URI SANs"));
    OPENSSL_free(der);
    der = make_csr(k, dup, 2, NULL, &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR_SAN);
    OPENSSL_free(der);
    der = make_csr(k, two, 1, "web.example.org", &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR_SAN);
    assert_non_null(strstr(err, "non-URI"));
    OPENSSL_free(der);
    der = make_csr(k, two, 0, NULL, &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR_SAN);
    assert_non_null(strstr(err, "no subjectAltName"));
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    cp_ca_free(ca);
    rm_rf(dir);
    free(dir);
}

static void test_ca_refuses_bad_signature_and_garbage(void **state)
{
    char *dir = make_tmpdir();
    struct cp_ca *ca = open_new(dir, 0);
    struct cp_ca_cert out;
    char err[256] = "";
    size_t len;
    uint8_t *der = csr_for(ID_A, &len);
    uint8_t junk[64];

    /* The signature is the DER's tail; flipping its last byte breaks it but keeps the
     * structure intact (an ECDSA INTEGER's last byte). */
    der[len - 1] ^= 0x01;
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)),
                     TT_E_CSR_SIGNATURE);
    assert_non_null(strstr(err, "signature"));
    der[len - 1] ^= 0x01;
    /* Truncated, trailing garbage, empty, random. */
    assert_int_equal(cp_ca_sign_csr(ca, der, len - 5, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR);
    {
        uint8_t *longer = malloc(len + 1);

        memcpy(longer, der, len);
        longer[len] = 0;
        assert_int_equal(cp_ca_sign_csr(ca, longer, len + 1, ID_A, 0, &out, err, sizeof(err)),
                         TT_E_CSR);
        free(longer);
    }
    assert_int_equal(cp_ca_sign_csr(ca, der, 0, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR);
    memset(junk, 0x30, sizeof(junk));
    assert_int_equal(cp_ca_sign_csr(ca, junk, sizeof(junk), ID_A, 0, &out, err, sizeof(err)),
                     TT_E_CSR);
    /* And the intact one still signs. */
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), 0);
    cp_ca_cert_done(&out);
    OPENSSL_free(der);
    cp_ca_free(ca);
    rm_rf(dir);
    free(dir);
}

static void test_ca_key_types(void **state)
{
    char *dir = make_tmpdir();
    struct cp_ca *ca = open_new(dir, 0);
    struct cp_ca_cert out;
    char err[256] = "";
    const char *uris[] = {ID_A};
    size_t len;
    EVP_PKEY *k;
    uint8_t *der;
    X509 *leaf;

    k = ec_key(NID_secp384r1);
    der = make_csr(k, uris, 1, NULL, &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR_KEY);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    k = rsa_key(1024);
    der = make_csr(k, uris, 1, NULL, &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), TT_E_CSR_KEY);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    /* RSA 2048 is fine and gets keyEncipherment too. */
    k = rsa_key(2048);
    der = make_csr(k, uris, 1, NULL, &len);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), 0);
    leaf = first_cert(out.chain_pem);
    assert_int_equal(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    X509_free(leaf);
    cp_ca_cert_done(&out);
    OPENSSL_free(der);
    EVP_PKEY_free(k);
    cp_ca_free(ca);
    rm_rf(dir);
    free(dir);
}

static void test_ca_ttl_capped(void **state)
{
    char *dir = make_tmpdir();
    struct cp_ca *ca = open_new(dir, 600 * 1000); /* --cert-ttl 10m */
    struct cp_ca_cert out;
    char err[256] = "";
    size_t len;
    uint8_t *der = csr_for(ID_A, &len);
    int64_t now = (int64_t)time(NULL);

    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 36000 * 1000ULL, &out, err, sizeof(err)),
                     0);
    assert_true(out.not_after <= now + 601 && out.not_after >= now + 598);
    cp_ca_cert_done(&out);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 10 * 1000, &out, err, sizeof(err)), 0);
    assert_true(out.not_after <= now + 11 && out.not_after >= now + 9);
    cp_ca_cert_done(&out);
    OPENSSL_free(der);
    cp_ca_free(ca);
    rm_rf(dir);
    free(dir);
}

/* A given CA that expires in two minutes caps every leaf at its own not_after. */
static void test_ca_capped_by_ca_expiry(void **state)
{
    char *dir = make_tmpdir();
    char prefix[512], crt[600], key[600], err[256] = "";
    struct tt_certgen_opts go = {.cn = "short", .is_ca = 1, .not_before = -60, .not_after = 120};
    struct tt_certgen_cert *root = tt_certgen_new(&go, NULL);
    struct cp_ca_opts o = {.state_dir = dir, .trust_domain = TD, .max_ttl_ms = 3600 * 1000};
    struct cp_ca *ca;
    struct cp_ca_cert out;
    size_t len;
    uint8_t *der = csr_for(ID_A, &len);
    int64_t now = (int64_t)time(NULL);

    snprintf(prefix, sizeof(prefix), "%s/given", dir);
    assert_int_equal(tt_certgen_write(root, prefix), 0);
    snprintf(crt, sizeof(crt), "%s.crt", prefix);
    snprintf(key, sizeof(key), "%s.key", prefix);
    o.cert_file = crt;
    o.key_file = key;
    ca = cp_ca_open(&o, err, sizeof(err));
    assert_non_null(ca);
    assert_string_equal(cp_ca_bundle_pem(ca), root->cert_pem);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), 0);
    assert_true(out.not_after <= now + 121);
    assert_true(out.not_after >= now + 110);
    cp_ca_cert_done(&out);
    cp_ca_free(ca);
    OPENSSL_free(der);
    tt_certgen_free(root);
    rm_rf(dir);
    free(dir);
}

static void test_ca_intermediate(void **state)
{
    char *dir = make_tmpdir();
    char p_root[512], p_int[512], crt[600], key[600], chain[600], err[256] = "";
    struct tt_certgen_cert *root = tt_certgen_ca("root", NULL);
    struct tt_certgen_cert *inter = tt_certgen_ca("inter", root);
    struct tt_certgen_cert *other = tt_certgen_ca("other", NULL);
    struct cp_ca_opts o = {.state_dir = dir, .trust_domain = TD};
    struct cp_ca *ca;
    struct cp_ca_cert out;
    size_t len;
    uint8_t *der = csr_for(ID_A, &len);
    X509 *leaf, *ix;
    EVP_PKEY *ik;

    snprintf(p_root, sizeof(p_root), "%s/root", dir);
    snprintf(p_int, sizeof(p_int), "%s/inter", dir);
    assert_int_equal(tt_certgen_write(root, p_root), 0);
    assert_int_equal(tt_certgen_write(inter, p_int), 0);
    snprintf(crt, sizeof(crt), "%s.crt", p_int);
    snprintf(key, sizeof(key), "%s.key", p_int);
    snprintf(chain, sizeof(chain), "%s.crt", p_root);
    o.cert_file = crt;
    o.key_file = key;

    /* Without its chain up to the root: refused, naming the file. */
    ca = cp_ca_open(&o, err, sizeof(err));
    assert_null(ca);
    assert_non_null(strstr(err, "chain"));
    assert_non_null(strstr(err, crt));

    o.chain_file = chain;
    ca = cp_ca_open(&o, err, sizeof(err));
    assert_non_null(ca);
    assert_string_equal(cp_ca_bundle_pem(ca), root->cert_pem);
    assert_int_equal(cp_ca_sign_csr(ca, der, len, ID_A, 0, &out, err, sizeof(err)), 0);
    assert_int_equal(count_certs(out.chain_pem), 2); /* leaf + intermediate */
    leaf = first_cert(out.chain_pem);
    ix = first_cert(inter->cert_pem);
    ik = X509_get_pubkey(ix);
    assert_int_equal(X509_verify(leaf, ik), 1);
    assert_non_null(strstr(out.chain_pem, inter->cert_pem));
    EVP_PKEY_free(ik);
    X509_free(ix);
    X509_free(leaf);
    cp_ca_cert_done(&out);
    cp_ca_free(ca);

    /* A chain that does not link up is refused. */
    snprintf(p_root, sizeof(p_root), "%s/other", dir);
    assert_int_equal(tt_certgen_write(other, p_root), 0);
    snprintf(chain, sizeof(chain), "%s.crt", p_root);
    assert_null(cp_ca_open(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "broken"));

    /* A key that does not match is refused. */
    snprintf(key, sizeof(key), "%s.key", p_root);
    o.chain_file = NULL;
    assert_null(cp_ca_open(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "does not match"));

    OPENSSL_free(der);
    tt_certgen_free(root);
    tt_certgen_free(inter);
    tt_certgen_free(other);
    rm_rf(dir);
    free(dir);
}

static void test_ca_refuses_half_state(void **state)
{
    char *dir = make_tmpdir();
    char path[512], err[512] = "";
    struct cp_ca_opts o = {.state_dir = dir, .trust_domain = TD};
    struct cp_ca *ca = open_new(dir, 0);

    cp_ca_free(ca);
    snprintf(path, sizeof(path), "%s/ca.crt", dir);
    assert_int_equal(unlink(path), 0);
    assert_null(cp_ca_open(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "ca.crt"));
    assert_non_null(strstr(err, "refusing"));
    /* And it did not create a new certificate over the old key. */
    assert_int_not_equal(access(path, F_OK), 0);

    /* A corrupt certificate is an error, not a reason to start over. */
    assert_int_equal(cp_atomic_write(path, "garbage\n", 8, 0644), 0);
    assert_null(cp_ca_open(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "no PEM certificate"));
    /* So is a certificate block that does not parse. */
    {
        static const char bad[] = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";

        assert_int_equal(cp_atomic_write(path, bad, strlen(bad), 0644), 0);
        assert_null(cp_ca_open(&o, err, sizeof(err)));
        assert_non_null(strstr(err, "ca.crt: a PEM certificate block does not parse"));
    }
    rm_rf(dir);
    free(dir);
}

static void test_ca_serving_certificate(void **state)
{
    char *dir = make_tmpdir();
    struct cp_ca *ca = open_new(dir, 60 * 1000);
    struct cp_ca_cert out;
    char err[256] = "", id[256];
    X509 *leaf;
    GENERAL_NAMES *names;
    BIO *b;
    EVP_PKEY *k;

    static const char *const hosts[] = {"localhost", "127.0.0.1", "::1",
                                        "tether-control.tether-system.svc"};
    static const uint8_t v4[4] = {127, 0, 0, 1}, v6[16] = {[15] = 1};

    assert_int_equal(cp_ca_issue_serving(ca, 24 * 3600 * 1000ULL, hosts, 4, &out, err, sizeof(err)),
                     0);
    cp_ca_serving_id(TD, id, sizeof(id));
    assert_string_equal(id, "spiffe://" TD "/ns/tether-system/sa/tether-control");
    leaf = first_cert(out.chain_pem);
    /* The URI first (what sidecars check), then the names a standard client checks. */
    names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    assert_int_equal(sk_GENERAL_NAME_num(names), 5);
    assert_int_equal(sk_GENERAL_NAME_value(names, 0)->type, GEN_URI);
    assert_string_equal((const char *)ASN1_STRING_get0_data(sk_GENERAL_NAME_value(names, 0)->d.ia5),
                        id);
    assert_int_equal(sk_GENERAL_NAME_value(names, 1)->type, GEN_DNS);
    assert_string_equal((const char *)ASN1_STRING_get0_data(sk_GENERAL_NAME_value(names, 1)->d.ia5),
                        "localhost");
    assert_int_equal(sk_GENERAL_NAME_value(names, 2)->type, GEN_IPADD);
    assert_int_equal(ASN1_STRING_length(sk_GENERAL_NAME_value(names, 2)->d.ip), 4);
    assert_memory_equal(ASN1_STRING_get0_data(sk_GENERAL_NAME_value(names, 2)->d.ip), v4, 4);
    assert_int_equal(sk_GENERAL_NAME_value(names, 3)->type, GEN_IPADD);
    assert_int_equal(ASN1_STRING_length(sk_GENERAL_NAME_value(names, 3)->d.ip), 16);
    assert_memory_equal(ASN1_STRING_get0_data(sk_GENERAL_NAME_value(names, 3)->d.ip), v6, 16);
    assert_int_equal(sk_GENERAL_NAME_value(names, 4)->type, GEN_DNS);
    GENERAL_NAMES_free(names);
    assert_int_equal(X509_check_host(leaf, "localhost", 9, 0, NULL), 1);
    assert_int_equal(X509_check_host(leaf, "example.com", 11, 0, NULL), 0);
    assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_ip_asc(leaf, "::1", 0), 1);
    /* The serving certificate is not capped by --cert-ttl (a minute here). */
    assert_true(out.not_after > (int64_t)time(NULL) + 3600);
    assert_non_null(out.key_pem);
    b = BIO_new_mem_buf(out.key_pem, (int)strlen(out.key_pem));
    k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
    assert_non_null(k);
    assert_true(X509_check_private_key(leaf, k));
    EVP_PKEY_free(k);
    BIO_free(b);
    X509_free(leaf);
    cp_ca_cert_done(&out);
    assert_null(out.key_pem);
    cp_ca_free(ca);
    rm_rf(dir);
    free(dir);
}

/* --serving-name values: host names and IP literals pass, anything else is refused. */
static void test_ca_serving_name_check(void **state)
{
    static const char *const good[] = {
        "localhost",     "127.0.0.1", "::1",
        "fe80::1",       "a",         "tether-control.tether-system.svc.cluster.local",
        "x1.EXAMPLE.org"};
    static const char *const bad[] = {"",       "*.example.org", "-a.org",      "a-.org",
                                      "a..org", "a.org.",        "[::1]",       "a_b.org",
                                      "a b",    "1.2.3.4:80",    "spiffe://x/y"};
    char long_label[80];

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_int_equal(cp_ca_check_serving_name(good[i]), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cp_ca_check_serving_name(bad[i]), -EINVAL);
    memset(long_label, 'a', 64);
    long_label[64] = '\0';
    assert_int_equal(cp_ca_check_serving_name(long_label), -EINVAL);
    long_label[63] = '\0';
    assert_int_equal(cp_ca_check_serving_name(long_label), 0);
}

/* The CA's refusals are codes of the project's one error space: below -1000, distinct from
 * every other code, each described by tt_strerror() (not "unknown error", not an errno's
 * text) and named for logs and /stats by cp_ca_err_reason() as operators' scripts know them. */
static void test_ca_error_codes(void **state)
{
    static const struct {
        int code;
        const char *reason;
    } codes[] = {
        {TT_E_CSR, "bad_csr"},
        {TT_E_CSR_SIGNATURE, "bad_csr_signature"},
        {TT_E_CSR_KEY, "weak_key"},
        {TT_E_CSR_SAN, "bad_san"},
        {TT_E_CSR_IDENTITY, "identity_mismatch"},
        {TT_E_CA_INTERNAL, "internal"},
    };
    static const int others[] = {TT_E_TLS,    TT_E_BAD_SAN, TT_E_PEM,    TT_E_IDENTITY, TT_E_POLICY,
                                 TT_E_DENIED, TT_E_CONFIG,  TT_E_SPIFFE, TT_E_REVOKED,  -EINVAL};

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        const char *msg = tt_strerror(codes[i].code);

        assert_true(codes[i].code < -1000);
        assert_string_equal(cp_ca_err_reason(codes[i].code), codes[i].reason);
        assert_string_not_equal(msg, "unknown error");
        assert_string_not_equal(msg, strerror(-codes[i].code)); /* "Unknown error 1060" */
        for (size_t j = 0; j < i; j++) {
            assert_int_not_equal(codes[i].code, codes[j].code);
            assert_string_not_equal(msg, tt_strerror(codes[j].code));
        }
        for (size_t j = 0; j < sizeof(others) / sizeof(others[0]); j++) {
            assert_int_not_equal(codes[i].code, others[j]);
            assert_string_not_equal(msg, tt_strerror(others[j]));
        }
    }
    assert_string_equal(cp_ca_err_reason(-EINVAL), "unknown");
    assert_string_equal(cp_ca_err_reason(TT_E_POLICY), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ca_creates_root_and_reloads),
        cmocka_unit_test(test_ca_sign_happy_path),
        cmocka_unit_test(test_ca_refuses_other_identity),
        cmocka_unit_test(test_ca_refuses_bad_sans),
        cmocka_unit_test(test_ca_refuses_bad_signature_and_garbage),
        cmocka_unit_test(test_ca_key_types),
        cmocka_unit_test(test_ca_ttl_capped),
        cmocka_unit_test(test_ca_capped_by_ca_expiry),
        cmocka_unit_test(test_ca_intermediate),
        cmocka_unit_test(test_ca_refuses_half_state),
        cmocka_unit_test(test_ca_serving_certificate),
        cmocka_unit_test(test_ca_serving_name_check),
        cmocka_unit_test(test_ca_error_codes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
