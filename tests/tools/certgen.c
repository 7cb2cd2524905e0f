/* Test certificate generator (see certgen.h), built on BoringSSL's X509 API. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/nid.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "certgen.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"

#ifndef OPENSSL_IS_BORINGSSL
#error "certgen.c must be compiled against BoringSSL (-I/usr/include/android)"
#endif

static EVP_PKEY *p256_key_new(void)
{
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *key = EVP_PKEY_new();

    if (ec == NULL || key == NULL || !EC_KEY_generate_key(ec) || !EVP_PKEY_assign_EC_KEY(key, ec))
        goto err;
    return key;
err:
    EC_KEY_free(ec);
    EVP_PKEY_free(key);
    return NULL;
}

/* A new private key of `type` ("p256" when NULL, "p384", "rsa2048", "ed25519"), or NULL
 * for an unknown type or a failure. */
static EVP_PKEY *key_new(const char *type)
{
    EVP_PKEY *key = NULL;

    if (type == NULL || strcmp(type, "p256") == 0)
        return p256_key_new();
    if (strcmp(type, "p384") == 0) {
        EC_KEY *ec = EC_KEY_new_by_curve_name(NID_secp384r1);
        key = EVP_PKEY_new();
        if (ec == NULL || key == NULL || !EC_KEY_generate_key(ec) ||
            !EVP_PKEY_assign_EC_KEY(key, ec)) {
            EC_KEY_free(ec);
            EVP_PKEY_free(key);
            return NULL;
        }
        return key;
    }
    if (strcmp(type, "rsa2048") == 0 || strcmp(type, "ed25519") == 0) {
        int id = type[0] == 'r' ? EVP_PKEY_RSA : EVP_PKEY_ED25519;
        EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(id, NULL);
        if (ctx != NULL && EVP_PKEY_keygen_init(ctx) == 1 &&
            (id != EVP_PKEY_RSA || EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 2048) == 1))
            EVP_PKEY_keygen(ctx, &key);
        EVP_PKEY_CTX_free(ctx);
        return key;
    }
    return NULL;
}

/* The digest to sign with `key`: none for Ed25519 (it hashes by itself), else SHA-256. */
static const EVP_MD *sign_md(EVP_PKEY *key)
{
    return EVP_PKEY_id(key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256();
}

static int set_serial(X509 *x, uint64_t serial)
{
    uint8_t bytes[16];
    BIGNUM *bn;
    int ok;

    if (serial == 0) {
        RAND_bytes(bytes, sizeof(bytes));
        bytes[0] &= 0x7f; /* keep it positive */
        bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
    } else {
        bn = BN_new();
        if (bn != NULL && !BN_set_u64(bn, serial)) {
            BN_free(bn);
            bn = NULL;
        }
    }
    if (bn == NULL)
        return 0;
    ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    return ok;
}

static int add_ext_conf(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509_EXTENSION *ext;
    int ok;

    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    ext = X509V3_EXT_nconf_nid(NULL, &v3, nid, value);
    if (ext == NULL)
        return 0;
    ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok;
}

/* Adds the URI SANs directly (not through the config syntax), so tests may use any
 * bytes, commas included. */
static int add_uri_sans(X509 *x, const char *const *uris, size_t n)
{
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    int ok = 0;
    size_t count = 0;

    if (names == NULL)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (uris[i] == NULL)
            continue;
        GENERAL_NAME *gn = GENERAL_NAME_new();
        ASN1_IA5STRING *s = ASN1_IA5STRING_new();
        if (gn == NULL || s == NULL || !ASN1_STRING_set(s, uris[i], (int)strlen(uris[i]))) {
            GENERAL_NAME_free(gn);
            ASN1_IA5STRING_free(s);
            goto out;
        }
        GENERAL_NAME_set0_value(gn, GEN_URI, s);
        if (!sk_GENERAL_NAME_push(names, gn)) {
            GENERAL_NAME_free(gn);
            goto out;
        }
        count++;
    }
    ok = count == 0 || X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT);
out:
    GENERAL_NAMES_free(names);
    return ok;
}

void tt_certgen_free(struct tt_certgen_cert *c)
{
    if (c == NULL)
        return;
    X509_free(c->x509);
    EVP_PKEY_free(c->key);
    free(c->cert_pem);
    free(c->key_pem);
    free(c->chain_pem);
    free(c);
}

/* Fills the PEM strings of c from its objects; `issuer` gives the rest of the chain. */
static int fill_pem(struct tt_certgen_cert *c, const struct tt_certgen_cert *issuer)
{
    c->cert_pem = tt_pem_from_cert(c->x509);
    c->key_pem = tt_pem_from_key(c->key, NULL);
    if (c->cert_pem == NULL || c->key_pem == NULL)
        return 0;
    const char *rest = issuer != NULL && !issuer->is_root ? issuer->chain_pem : "";
    size_t a = strlen(c->cert_pem), b = strlen(rest);
    c->chain_pem = malloc(a + b + 1);
    if (c->chain_pem == NULL)
        return 0;
    memcpy(c->chain_pem, c->cert_pem, a);
    memcpy(c->chain_pem + a, rest, b + 1);
    return 1;
}

/* Generates a key and a certificate per opts, signed by issuer or self-signed. */
struct tt_certgen_cert *tt_certgen_new(const struct tt_certgen_opts *opts,
                                       const struct tt_certgen_cert *issuer)
{
    struct tt_certgen_cert *c = calloc(1, sizeof(*c));
    int64_t nb = opts->not_before, na = opts->not_after;
    const char *cn = opts->cn != NULL ? opts->cn : "tether test";

    if (c == NULL)
        return NULL;
    if (nb == 0 && na == 0) {
        nb = -300;
        na = 3600;
    }
    c->key = key_new(opts->key_type);
    c->x509 = X509_new();
    if (c->key == NULL || c->x509 == NULL)
        goto err;
    X509 *x = c->x509;
    X509 *signer_cert = issuer != NULL ? issuer->x509 : x;
    EVP_PKEY *signer_key = issuer != NULL ? issuer->key : c->key;

    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_set_version(x, X509_VERSION_3) || !set_serial(x, opts->serial) ||
        !X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const uint8_t *)"Tether tests", -1,
                                    -1, 0) ||
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0) ||
        !X509_set_issuer_name(x, X509_get_subject_name(signer_cert)) ||
        X509_gmtime_adj(X509_getm_notBefore(x), (long)nb) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), (long)na) == NULL || !X509_set_pubkey(x, c->key))
        goto err;

    if (!add_ext_conf(x, signer_cert, NID_subject_key_identifier, "hash"))
        goto err;
    if (issuer != NULL && !add_ext_conf(x, signer_cert, NID_authority_key_identifier, "keyid"))
        goto err;
    if (opts->is_ca) {
        if (!add_ext_conf(x, signer_cert, NID_basic_constraints, "critical,CA:TRUE") ||
            !add_ext_conf(x, signer_cert, NID_key_usage, "critical,keyCertSign,cRLSign"))
            goto err;
    } else {
        if (!add_ext_conf(x, signer_cert, NID_basic_constraints, "critical,CA:FALSE") ||
            !add_ext_conf(x, signer_cert, NID_key_usage, "critical,digitalSignature") ||
            !add_ext_conf(x, signer_cert, NID_ext_key_usage,
                          opts->eku != NULL ? opts->eku : "serverAuth,clientAuth"))
            goto err;
    }
    if (!add_uri_sans(x, opts->uris, TT_CERTGEN_MAX_URIS))
        goto err;
    if (!X509_sign(x, signer_key, sign_md(signer_key)))
        goto err;
    c->is_root = issuer == NULL;
    if (!fill_pem(c, issuer))
        goto err;
    return c;
err:
    tt_certgen_free(c);
    return NULL;
}

/* Adds one revoked entry for the hexadecimal serial `hex`, revoked an hour ago. Returns 1,
 * or 0 when `hex` is no hexadecimal number or on failure. */
static int crl_add_serial(X509_CRL *crl, const char *hex)
{
    X509_REVOKED *rev = X509_REVOKED_new();
    BIGNUM *bn = NULL;
    ASN1_INTEGER *ai = NULL;
    ASN1_TIME *when = NULL;
    int ok = 0;

    if (rev == NULL || hex[0] == '\0' || hex[strspn(hex, "0123456789abcdefABCDEF")] != '\0' ||
        !BN_hex2bn(&bn, hex))
        goto out;
    ai = BN_to_ASN1_INTEGER(bn, NULL);
    when = X509_gmtime_adj(NULL, -3600);
    if (ai == NULL || when == NULL || !X509_REVOKED_set_serialNumber(rev, ai) ||
        !X509_REVOKED_set_revocationDate(rev, when) || !X509_CRL_add0_revoked(crl, rev))
        goto out;
    rev = NULL; /* owned by the CRL */
    ok = 1;
out:
    X509_REVOKED_free(rev);
    ASN1_INTEGER_free(ai);
    ASN1_TIME_free(when);
    BN_free(bn);
    return ok;
}

/* A CRL of `issuer` listing the serials (see certgen.h). */
char *tt_certgen_crl(const struct tt_certgen_cert *issuer, const char *const *serials, size_t n,
                     int64_t this_update, int64_t next_update)
{
    X509_CRL *crl = X509_CRL_new();
    ASN1_TIME *t = NULL;
    BIO *bio = NULL;
    char *pem = NULL;
    const uint8_t *data;
    size_t len;

    if (crl == NULL || !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
        !X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer->x509)))
        goto out;
    t = X509_gmtime_adj(NULL, (long)this_update);
    if (t == NULL || !X509_CRL_set1_lastUpdate(crl, t))
        goto out;
    if (next_update != 0 &&
        (X509_gmtime_adj(t, (long)next_update) == NULL || !X509_CRL_set1_nextUpdate(crl, t)))
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (!crl_add_serial(crl, serials[i]))
            goto out;
    }
    X509_CRL_sort(crl);
    if (!X509_CRL_sign(crl, issuer->key, sign_md(issuer->key)))
        goto out;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL || !PEM_write_bio_X509_CRL(bio, crl) || !BIO_mem_contents(bio, &data, &len))
        goto out;
    pem = malloc(len + 1);
    if (pem != NULL) {
        memcpy(pem, data, len);
        pem[len] = '\0';
    }
out:
    BIO_free(bio);
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    ERR_clear_error();
    return pem;
}

/* A CA valid for ten years from an hour ago. */
struct tt_certgen_cert *tt_certgen_ca(const char *cn, const struct tt_certgen_cert *issuer)
{
    struct tt_certgen_opts o = {
        .cn = cn, .not_before = -3600, .not_after = 10L * 365 * 86400, .is_ca = 1};
    return tt_certgen_new(&o, issuer);
}

/* A leaf with one URI SAN (or none) and the default validity. */
struct tt_certgen_cert *tt_certgen_leaf(const struct tt_certgen_cert *issuer, const char *uri)
{
    struct tt_certgen_opts o = {.cn = "workload", .uris = {uri, NULL}};
    return tt_certgen_new(&o, issuer);
}

static int write_file(const char *path, const char *data, mode_t mode)
{
    size_t len = strlen(data), off = 0;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

    if (fd < 0)
        return -errno;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int e = -errno;
            close(fd);
            return e;
        }
        off += (size_t)n;
    }
    if (close(fd) < 0)
        return -errno;
    return 0;
}

/* Writes PREFIX.crt and PREFIX.key. */
int tt_certgen_write(const struct tt_certgen_cert *c, const char *prefix)
{
    char path[4096];
    int r;

    if ((size_t)snprintf(path, sizeof(path), "%s.crt", prefix) >= sizeof(path))
        return -ENAMETOOLONG;
    r = write_file(path, c->chain_pem, 0644);
    if (r < 0)
        return r;
    snprintf(path, sizeof(path), "%s.key", prefix);
    return write_file(path, c->key_pem, 0600);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;

    if (f == NULL)
        return NULL;
    for (;;) {
        if (cap - len < 4096) {
            char *p = realloc(buf, cap + 65536);
            if (p == NULL)
                goto err;
            buf = p;
            cap += 65536;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f))
        goto err;
    fclose(f);
    buf[len] = '\0';
    return buf;
err:
    free(buf);
    fclose(f);
    return NULL;
}

/* Loads a certificate and key written by tt_certgen_write(). */
struct tt_certgen_cert *tt_certgen_read(const char *prefix)
{
    char path[4096];
    struct tt_certgen_cert *c = calloc(1, sizeof(*c));
    BIO *bio = NULL;

    if (c == NULL)
        return NULL;
    if ((size_t)snprintf(path, sizeof(path), "%s.crt", prefix) >= sizeof(path))
        goto err;
    c->chain_pem = read_text(path);
    snprintf(path, sizeof(path), "%s.key", prefix);
    c->key_pem = read_text(path);
    if (c->chain_pem == NULL || c->key_pem == NULL)
        goto err;
    bio = BIO_new_mem_buf(c->chain_pem, -1);
    if (bio == NULL || (c->x509 = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL)
        goto err;
    BIO_free(bio);
    bio = BIO_new_mem_buf(c->key_pem, -1);
    if (bio == NULL || (c->key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL)) == NULL)
        goto err;
    BIO_free(bio);
    bio = NULL;
    if (!X509_check_private_key(c->x509, c->key))
        goto err;
    c->cert_pem = tt_pem_from_cert(c->x509);
    if (c->cert_pem == NULL)
        goto err;
    /* Self-signed: same name on both sides and signed by its own key. */
    c->is_root =
        X509_NAME_cmp(X509_get_subject_name(c->x509), X509_get_issuer_name(c->x509)) == 0 &&
        X509_verify(c->x509, c->key) == 1;
    ERR_clear_error();
    return c;
err:
    BIO_free(bio);
    tt_certgen_free(c);
    return NULL;
}
