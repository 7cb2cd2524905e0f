/* The control plane's CA (see ca.h), on BoringSSL's X509 API. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <arpa/inet.h>

#include <openssl/asn1.h>
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
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "tls/identity.h"
#include "tls/identity_bssl.h"
#include "core/spiffe.h"
#include "core/util.h"
#include "store_file.h"

#ifndef OPENSSL_IS_BORINGSSL
#error "control/ca.c must be compiled against BoringSSL (-I/usr/include/android)"
#endif

#define CA_ROOT_DAYS  3650
#define CA_BACKDATE_S 60
#define CA_PEM_MAX    (1024 * 1024)

struct cp_ca {
    X509 *cert;             /* the signing CA */
    EVP_PKEY *key;          /* its key */
    STACK_OF(X509) * chain; /* intermediates between cert and the root (root excluded) */
    char *cert_pem;
    char *chain_pem;  /* what follows a leaf: cert (unless it is the root) + intermediates */
    char *bundle_pem; /* the root */
    char *trust_domain;
    int64_t not_after; /* the CA certificate's, unix seconds */
    uint64_t max_ttl_ms;
};

/* Names a refusal for logs and counters. */
const char *cp_ca_err_reason(int err)
{
    switch (err) {
    case TT_E_CSR:
        return "bad_csr";
    case TT_E_CSR_SIGNATURE:
        return "bad_csr_signature";
    case TT_E_CSR_KEY:
        return "weak_key";
    case TT_E_CSR_SAN:
        return "bad_san";
    case TT_E_CSR_IDENTITY:
        return "identity_mismatch";
    case TT_E_CA_INTERNAL:
        return "internal";
    default:
        return "unknown";
    }
}

/* ---- PEM helpers ---- */

static char *str_concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);

    if (s == NULL)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

/* Reads every certificate of a PEM file (tt_pem_parse_certs) into a new stack. NULL with
 * err naming the file on failure or when it holds none. */
static STACK_OF(X509) * read_certs(const char *path, char *err, size_t errlen)
{
    char *data = NULL;
    size_t len;
    int rc = tt_file_read(path, CA_PEM_MAX, &data, &len);
    STACK_OF(X509) *certs = NULL;

    if (rc != 0) {
        tt_errf(err, errlen, "%s: %s", path, strerror(-rc));
        return NULL;
    }
    rc = tt_pem_parse_certs(data, len, &certs);
    free(data);
    if (rc == TT_E_IDENTITY)
        tt_errf(err, errlen, "%s: no PEM certificate found", path);
    else if (rc == TT_E_PEM)
        tt_errf(err, errlen, "%s: a PEM certificate block does not parse", path);
    else if (rc != 0)
        tt_errf(err, errlen, "%s: %s", path, tt_strerror(rc));
    return rc == 0 ? certs : NULL;
}

/* Reads the private key of a PEM file (tt_pem_parse_key), wiping the file's text. NULL with
 * err naming the file on failure. */
static EVP_PKEY *read_key(const char *path, char *err, size_t errlen)
{
    char *data = NULL;
    size_t len;
    int rc = tt_file_read(path, CA_PEM_MAX, &data, &len);
    EVP_PKEY *key = NULL;

    if (rc != 0) {
        tt_errf(err, errlen, "%s: %s", path, strerror(-rc));
        return NULL;
    }
    rc = tt_pem_parse_key(data, len, &key);
    OPENSSL_cleanse(data, len);
    free(data);
    if (rc == TT_E_IDENTITY)
        tt_errf(err, errlen, "%s: no PEM private key found", path);
    else if (rc == TT_E_PEM)
        tt_errf(err, errlen,
                "%s: the PEM private key does not parse (encrypted keys are not "
                "supported)",
                path);
    else if (rc != 0)
        tt_errf(err, errlen, "%s: %s", path, tt_strerror(rc));
    return rc == 0 ? key : NULL;
}

/* ---- building certificates ---- */

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

/* Sets a random positive 128-bit serial and writes its canonical text into out. */
static int set_random_serial(X509 *x, char *out, size_t outlen)
{
    uint8_t bytes[16];
    char hex[2 * sizeof(bytes) + 1];
    BIGNUM *bn;
    int ok;

    do {
        RAND_bytes(bytes, sizeof(bytes));
        bytes[0] &= 0x7f; /* DER INTEGER stays positive in 16 bytes */
    } while (bytes[0] == 0 && bytes[1] == 0);
    bn = BN_bin2bn(bytes, sizeof(bytes), NULL);
    if (bn == NULL)
        return 0;
    ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    for (size_t i = 0; i < sizeof(bytes); i++)
        snprintf(hex + 2 * i, 3, "%02X", bytes[i]);
    return ok && tt_serial_normalize(hex, out, outlen) == 0;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
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

/* A DNS name or IP literal as a GENERAL_NAME (GEN_IPADD for an address inet_pton reads,
 * GEN_DNS otherwise), or NULL when out of memory. */
static GENERAL_NAME *host_name(const char *name)
{
    GENERAL_NAME *gn = GENERAL_NAME_new();
    uint8_t ip[16];
    int iplen = inet_pton(AF_INET, name, ip) == 1 ? 4 : inet_pton(AF_INET6, name, ip) == 1 ? 16 : 0;
    ASN1_STRING *s = iplen ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();

    if (gn == NULL || s == NULL ||
        !ASN1_STRING_set(s, iplen ? (const void *)ip : (const void *)name,
                         iplen ? iplen : (int)strlen(name))) {
        GENERAL_NAME_free(gn);
        ASN1_STRING_free(s);
        return NULL;
    }
    GENERAL_NAME_set0_value(gn, iplen ? GEN_IPADD : GEN_DNS, s);
    return gn;
}

/* Adds the subjectAltName extension: the URI `uri`, then each of hosts[0..n_hosts) (DNS
 * names or IP literals). Returns 1, or 0 on failure. */
static int add_sans(X509 *x, const char *uri, const char *const *hosts, size_t n_hosts)
{
    GENERAL_NAMES *names = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *s = ASN1_IA5STRING_new();
    int ok = 0;

    if (names == NULL || gn == NULL || s == NULL || !ASN1_STRING_set(s, uri, (int)strlen(uri)))
        goto out;
    GENERAL_NAME_set0_value(gn, GEN_URI, s);
    s = NULL;
    if (!sk_GENERAL_NAME_push(names, gn))
        goto out;
    gn = NULL;
    for (size_t i = 0; i < n_hosts; i++) {
        gn = host_name(hosts[i]);
        if (gn == NULL || !sk_GENERAL_NAME_push(names, gn))
            goto out;
        gn = NULL;
    }
    ok = X509_add1_ext_i2d(x, NID_subject_alt_name, names, 0, X509V3_ADD_DEFAULT);
out:
    ASN1_IA5STRING_free(s);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    return ok;
}

static int set_name(X509_NAME *name, const char *o, const char *cn)
{
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const uint8_t *)o, -1, -1, 0))
        return 0;
    if (cn != NULL &&
        !X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0))
        return 0;
    return 1;
}

/* Builds and signs a leaf for `uri` (plus the DNS/IP names hosts[0..n_hosts)) over `pub`.
 * Fills out (chain_pem, serial, times). */
static int issue_leaf(struct cp_ca *ca, EVP_PKEY *pub, const char *uri, const char *const *hosts,
                      size_t n_hosts, uint64_t ttl_ms, struct cp_ca_cert *out, char *err,
                      size_t errlen)
{
    int64_t now = (int64_t)time(NULL);
    uint64_t ttl_s;
    int64_t not_after;
    bool rsa = EVP_PKEY_id(pub) == EVP_PKEY_RSA;
    X509 *x = X509_new();
    char *pem = NULL;

    if (ttl_ms == 0 || ttl_ms > ca->max_ttl_ms)
        ttl_ms = ca->max_ttl_ms;
    ttl_s = ttl_ms / 1000;
    if (ttl_s == 0)
        ttl_s = 1;
    not_after = now + (int64_t)ttl_s;
    if (not_after > ca->not_after)
        not_after = ca->not_after;
    if (not_after <= now) {
        tt_errf(err, errlen, "the CA certificate has expired");
        X509_free(x);
        return TT_E_CA_INTERNAL;
    }
    memset(out, 0, sizeof(*out));
    if (x == NULL || !X509_set_version(x, X509_VERSION_3) ||
        !set_random_serial(x, out->serial, sizeof(out->serial)) ||
        !set_name(X509_get_subject_name(x), "Tether", NULL) ||
        !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
        !ASN1_TIME_set(X509_getm_notBefore(x), (time_t)(now - CA_BACKDATE_S)) ||
        !ASN1_TIME_set(X509_getm_notAfter(x), (time_t)not_after) || !X509_set_pubkey(x, pub) ||
        !add_sans(x, uri, hosts, n_hosts) ||
        !add_ext(x, ca->cert, NID_basic_constraints, "critical,CA:FALSE") ||
        !add_ext(x, ca->cert, NID_key_usage,
                 rsa ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature") ||
        !add_ext(x, ca->cert, NID_ext_key_usage, "serverAuth,clientAuth") ||
        !add_ext(x, ca->cert, NID_subject_key_identifier, "hash") ||
        !add_ext(x, ca->cert, NID_authority_key_identifier, "keyid:always") ||
        !X509_sign(x, ca->key, EVP_sha256()) || (pem = tt_pem_from_cert(x)) == NULL) {
        tt_errf(err, errlen, "signing failed");
        goto err_free;
    }
    out->chain_pem = str_concat(pem, ca->chain_pem);
    if (out->chain_pem == NULL) {
        tt_errf(err, errlen, "out of memory");
        goto err_free;
    }
    out->not_before = now - CA_BACKDATE_S;
    out->not_after = not_after;
    free(pem);
    X509_free(x);
    return 0;

err_free:
    ERR_clear_error();
    free(pem);
    X509_free(x);
    return TT_E_CA_INTERNAL;
}

/* Creates a new self-signed root for the trust domain. */
static int make_root(struct cp_ca *ca, char *err, size_t errlen)
{
    char cn[300];
    char serial[TT_SERIAL_MAX];
    int64_t now = (int64_t)time(NULL);
    X509 *x = X509_new();
    EVP_PKEY *key = p256_key_new();

    snprintf(cn, sizeof(cn), "Tether Root CA %s", ca->trust_domain);
    if (x == NULL || key == NULL || !X509_set_version(x, X509_VERSION_3) ||
        !set_random_serial(x, serial, sizeof(serial)) ||
        !set_name(X509_get_subject_name(x), "Tether", cn) ||
        !X509_set_issuer_name(x, X509_get_subject_name(x)) ||
        !ASN1_TIME_set(X509_getm_notBefore(x), (time_t)(now - CA_BACKDATE_S)) ||
        !ASN1_TIME_set(X509_getm_notAfter(x), (time_t)(now + (int64_t)CA_ROOT_DAYS * 86400)) ||
        !X509_set_pubkey(x, key) || !add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") ||
        !add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") ||
        !add_ext(x, x, NID_subject_key_identifier, "hash") || !X509_sign(x, key, EVP_sha256())) {
        ERR_clear_error();
        X509_free(x);
        EVP_PKEY_free(key);
        tt_errf(err, errlen, "creating the root CA failed");
        return TT_E_CA_INTERNAL;
    }
    ca->cert = x;
    ca->key = key;
    return 0;
}

static bool is_self_signed(X509 *x)
{
    EVP_PKEY *pub = X509_get_pubkey(x);
    bool ok = pub != NULL &&
              X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)) == 0 &&
              X509_verify(x, pub) == 1;

    EVP_PKEY_free(pub);
    ERR_clear_error();
    return ok;
}

static bool signed_by(X509 *x, X509 *issuer)
{
    EVP_PKEY *pub = X509_get_pubkey(issuer);
    bool ok = pub != NULL && X509_verify(x, pub) == 1;

    EVP_PKEY_free(pub);
    ERR_clear_error();
    return ok;
}

/* Fills chain_pem, bundle_pem and not_after from cert, chain (intermediates) and the
 * root; `root` NULL means cert is the root. */
static int finish_load(struct cp_ca *ca, X509 *root, char *err, size_t errlen)
{
    char *p;

    ca->cert_pem = tt_pem_from_cert(ca->cert);
    if (ca->cert_pem == NULL)
        goto err_oom;
    if (root == NULL) {
        ca->chain_pem = strdup("");
        ca->bundle_pem = strdup(ca->cert_pem);
    } else {
        ca->chain_pem = strdup(ca->cert_pem);
        for (size_t i = 0; ca->chain_pem && i < sk_X509_num(ca->chain); i++) {
            char *one = tt_pem_from_cert(sk_X509_value(ca->chain, i));

            p = one ? str_concat(ca->chain_pem, one) : NULL;
            free(one);
            free(ca->chain_pem);
            ca->chain_pem = p;
        }
        ca->bundle_pem = tt_pem_from_cert(root);
    }
    if (ca->chain_pem == NULL || ca->bundle_pem == NULL)
        goto err_oom;
    ca->not_after = tt_asn1_time_unix(X509_get0_notAfter(ca->cert));
    return 0;
err_oom:
    tt_errf(err, errlen, "out of memory");
    return TT_E_CA_INTERNAL;
}

static bool file_exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

/* Loads an operator-given CA: cert_file (+ its extra certificates), key_file and an
 * optional chain_file. */
static int load_given(struct cp_ca *ca, const struct cp_ca_opts *o, char *err, size_t errlen)
{
    STACK_OF(X509) *certs = NULL, *more = NULL;
    X509 *root = NULL, *prev;
    int rc = TT_E_CA_INTERNAL;

    if (o->key_file == NULL) {
        tt_errf(err, errlen, "--ca-cert needs --ca-key");
        return -EINVAL;
    }
    certs = read_certs(o->cert_file, err, errlen);
    if (certs == NULL)
        return -EINVAL;
    if (o->chain_file != NULL) {
        more = read_certs(o->chain_file, err, errlen);
        if (more == NULL) {
            rc = -EINVAL;
            goto out;
        }
        while (sk_X509_num(more) > 0)
            sk_X509_push(certs, sk_X509_shift(more));
    }
    ca->key = read_key(o->key_file, err, errlen);
    if (ca->key == NULL) {
        rc = -EINVAL;
        goto out;
    }
    ca->cert = sk_X509_shift(certs);
    if (!X509_check_private_key(ca->cert, ca->key)) {
        ERR_clear_error();
        tt_errf(err, errlen, "%s: the private key does not match %s", o->key_file, o->cert_file);
        rc = -EINVAL;
        goto out;
    }
    if (X509_check_ca(ca->cert) <= 0) {
        tt_errf(err, errlen, "%s: not a CA certificate (CA:TRUE with keyCertSign needed)",
                o->cert_file);
        rc = -EINVAL;
        goto out;
    }
    /* Walk the chain: each certificate must be signed by the next; a self-signed one
     * ends it and is the root (kept out of the chain sent with leaves). */
    ca->chain = sk_X509_new_null();
    if (ca->chain == NULL)
        goto out;
    prev = ca->cert;
    if (!is_self_signed(ca->cert)) {
        while (sk_X509_num(certs) > 0) {
            X509 *next = sk_X509_shift(certs);

            if (!signed_by(prev, next)) {
                X509_free(next);
                tt_errf(err, errlen,
                        "%s: the chain is broken (a certificate is not signed by the "
                        "next one)",
                        o->chain_file ? o->chain_file : o->cert_file);
                rc = -EINVAL;
                goto out;
            }
            if (is_self_signed(next)) {
                root = next;
                break;
            }
            sk_X509_push(ca->chain, next);
            prev = next;
        }
        if (root == NULL) {
            tt_errf(err, errlen,
                    "%s: an intermediate CA needs its chain up to the root (--ca-chain)",
                    o->cert_file);
            rc = -EINVAL;
            goto out;
        }
    }
    rc = finish_load(ca, root, err, errlen);
out:
    X509_free(root);
    sk_X509_pop_free(certs, X509_free);
    sk_X509_pop_free(more, X509_free);
    return rc;
}

/* The state directory's CA files, created together (cp_atomic_create_set). */
static const char *const ca_files[2] = {"ca.key", "ca.crt"};

/* Opens (loads or creates) the CA; see ca.h. */
struct cp_ca *cp_ca_open(const struct cp_ca_opts *o, char *err, size_t errlen)
{
    struct cp_ca *ca = calloc(1, sizeof(*ca));
    char crt_path[4096], key_path[4096];
    char *kp = NULL;
    int rc;

    if (ca == NULL) {
        tt_errf(err, errlen, "out of memory");
        return NULL;
    }
    ca->trust_domain = strdup(o->trust_domain ? o->trust_domain : "cluster.local");
    ca->max_ttl_ms = o->max_ttl_ms ? o->max_ttl_ms : 3600 * 1000;
    if (ca->trust_domain == NULL)
        goto err_free;
    if (o->cert_file != NULL) {
        if (load_given(ca, o, err, errlen) != 0)
            goto err_free;
        return ca;
    }
    snprintf(crt_path, sizeof(crt_path), "%s/ca.crt", o->state_dir);
    snprintf(key_path, sizeof(key_path), "%s/ca.key", o->state_dir);
    /* A creation cut short by a crash: completed when it got as far as its commit, else
     * discarded (then no CA file exists and a new one is made below). */
    if (cp_atomic_set_recover(o->state_dir, "ca", ca_files, 2, err, errlen) != 0)
        goto err_free;
    if (file_exists(crt_path) || file_exists(key_path)) {
        struct cp_ca_opts g = *o;

        /* One without the other is damage, not a first start: never replace it. */
        if (!file_exists(crt_path) || !file_exists(key_path)) {
            tt_errf(err, errlen, "%s: missing while %s exists; refusing to create a new CA",
                    file_exists(crt_path) ? key_path : crt_path,
                    file_exists(crt_path) ? crt_path : key_path);
            goto err_free;
        }
        g.cert_file = crt_path;
        g.key_file = key_path;
        g.chain_file = NULL;
        if (load_given(ca, &g, err, errlen) != 0)
            goto err_free;
        return ca;
    }
    if (make_root(ca, err, errlen) != 0)
        goto err_free;
    kp = tt_pem_from_key(ca->key, NULL);
    if (kp == NULL || finish_load(ca, NULL, err, errlen) != 0) {
        tt_errf(err, errlen, "out of memory");
        goto err_free;
    }
    /* Both files together: a crash at any point leaves no CA or a matching pair, never
     * a key without its certificate (which the next start would refuse). */
    {
        const struct cp_file_part parts[2] = {
            {"ca.key", kp, strlen(kp), 0600},
            {"ca.crt", ca->cert_pem, strlen(ca->cert_pem), 0644},
        };

        rc = cp_atomic_create_set(o->state_dir, "ca", parts, 2, err, errlen);
        if (rc != 0)
            goto err_free;
    }
    OPENSSL_cleanse(kp, strlen(kp));
    free(kp);
    return ca;

err_free:
    if (kp != NULL) {
        OPENSSL_cleanse(kp, strlen(kp));
        free(kp);
    }
    cp_ca_free(ca);
    return NULL;
}

/* Frees the CA: its certificate, key, chain, the PEM copies and the trust domain. Accepts NULL.
 * Strings from cp_ca_bundle_pem() and friends die with it. */
void cp_ca_free(struct cp_ca *ca)
{
    if (ca == NULL)
        return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    sk_X509_pop_free(ca->chain, X509_free);
    free(ca->cert_pem);
    free(ca->chain_pem);
    free(ca->bundle_pem);
    free(ca->trust_domain);
    free(ca);
}

/* Releases an issued certificate's strings, wiping key_pem first, and zeroes *c so a second call is
 * harmless. Accepts NULL; does not free c itself. */
void cp_ca_cert_done(struct cp_ca_cert *c)
{
    if (c == NULL)
        return;
    free(c->chain_pem);
    if (c->key_pem != NULL) {
        OPENSSL_cleanse(c->key_pem, strlen(c->key_pem));
        free(c->key_pem);
    }
    memset(c, 0, sizeof(*c));
}

/* Checks the CSR key: EC P-256 or RSA of at least 2048 bits. */
static bool key_acceptable(EVP_PKEY *pub)
{
    switch (EVP_PKEY_id(pub)) {
    case EVP_PKEY_EC: {
        const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(pub);
        const EC_GROUP *g = ec ? EC_KEY_get0_group(ec) : NULL;

        return g != NULL && EC_GROUP_get_curve_name(g) == NID_X9_62_prime256v1;
    }
    case EVP_PKEY_RSA:
        return EVP_PKEY_bits(pub) >= 2048;
    default:
        return false;
    }
}

/* Finds the CSR's single URI SAN. Returns 0 and points *uri and *len into the names, or
 * TT_E_CSR_SAN with a reason. */
static int csr_uri(X509_REQ *req, GENERAL_NAMES **names_out, const char **uri, size_t *len,
                   char *err, size_t errlen)
{
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    GENERAL_NAMES *names = NULL;
    int idx, n_uri = 0, n_other = 0;

    *names_out = NULL;
    if (exts == NULL) {
        ERR_clear_error();
        tt_errf(err, errlen, "the CSR has no subjectAltName");
        return TT_E_CSR_SAN;
    }
    idx = X509v3_get_ext_by_NID(exts, NID_subject_alt_name, -1);
    if (idx < 0 || X509v3_get_ext_by_NID(exts, NID_subject_alt_name, idx) >= 0) {
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        tt_errf(err, errlen,
                idx < 0 ? "the CSR has no subjectAltName"
                        : "the CSR has more than one subjectAltName extension");
        return TT_E_CSR_SAN;
    }
    names = X509V3_EXT_d2i(sk_X509_EXTENSION_value(exts, (size_t)idx));
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    ERR_clear_error();
    if (names == NULL) {
        tt_errf(err, errlen, "the CSR's subjectAltName does not parse");
        return TT_E_CSR_SAN;
    }
    for (size_t i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);

        if (gn->type == GEN_URI) {
            n_uri++;
            *uri = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
            *len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        } else {
            n_other++;
        }
    }
    if (n_uri != 1 || n_other != 0) {
        GENERAL_NAMES_free(names);
        tt_errf(err, errlen,
                n_other ? "the CSR carries non-URI subjectAltNames (only the SPIFFE ID is allowed)"
                : n_uri ? "the CSR carries %d URI SANs (exactly one, the SPIFFE ID, is allowed)"
                        : "the CSR carries no URI SAN",
                n_uri);
        return TT_E_CSR_SAN;
    }
    *names_out = names;
    return 0;
}

/* True when id is a valid SPIFFE ID of the CA's trust domain. */
static bool in_trust_domain(const struct cp_ca *ca, const char *id)
{
    char td[256];

    return tt_spiffe_check(id, strlen(id), false) == 0 &&
           tt_spiffe_trust_domain(id, td, sizeof(td)) == 0 && strcmp(td, ca->trust_domain) == 0;
}

/* Signs a CSR for spiffe_id; see ca.h. */
int cp_ca_sign_csr(struct cp_ca *ca, const uint8_t *der, size_t len, const char *spiffe_id,
                   uint64_t ttl_ms, struct cp_ca_cert *out, char *err, size_t errlen)
{
    const uint8_t *p = der;
    X509_REQ *req = NULL;
    EVP_PKEY *pub = NULL;
    GENERAL_NAMES *names = NULL;
    const char *uri = NULL;
    size_t uri_len = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    if (spiffe_id == NULL || !in_trust_domain(ca, spiffe_id)) {
        tt_errf(err, errlen, "%s is not an identity of trust domain %s",
                spiffe_id ? spiffe_id : "(none)", ca->trust_domain);
        return TT_E_CSR_IDENTITY;
    }
    if (der == NULL || len == 0 || len > 65536 ||
        (req = d2i_X509_REQ(NULL, &p, (long)len)) == NULL || p != der + len) {
        ERR_clear_error();
        tt_errf(err, errlen, "the CSR is not a DER PKCS#10 request");
        rc = TT_E_CSR;
        goto out;
    }
    pub = X509_REQ_get_pubkey(req);
    if (pub == NULL) {
        tt_errf(err, errlen, "the CSR's public key does not parse");
        rc = TT_E_CSR;
        goto out;
    }
    if (X509_REQ_verify(req, pub) != 1) {
        tt_errf(err, errlen, "the CSR's signature does not verify");
        rc = TT_E_CSR_SIGNATURE;
        goto out;
    }
    if (!key_acceptable(pub)) {
        tt_errf(err, errlen, "the CSR's key must be EC P-256 or RSA of at least 2048 bits");
        rc = TT_E_CSR_KEY;
        goto out;
    }
    rc = csr_uri(req, &names, &uri, &uri_len, err, errlen);
    if (rc != 0)
        goto out;
    if (uri_len != strlen(spiffe_id) || memcmp(uri, spiffe_id, uri_len) != 0) {
        tt_errf(err, errlen, "the CSR asks for %.*s but the proof is for %s",
                (int)(uri_len > 300 ? 300 : uri_len), uri, spiffe_id);
        rc = TT_E_CSR_IDENTITY;
        goto out;
    }
    rc = issue_leaf(ca, pub, spiffe_id, NULL, 0, ttl_ms, out, err, errlen);
out:
    ERR_clear_error();
    GENERAL_NAMES_free(names);
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    return rc;
}

/* Checks a --serving-name (see ca.h). */
int cp_ca_check_serving_name(const char *name)
{
    uint8_t ip[16];
    size_t len = strlen(name), label = 0;

    if (inet_pton(AF_INET, name, ip) == 1 || inet_pton(AF_INET6, name, ip) == 1)
        return 0;
    if (len == 0 || len > 253 || name[len - 1] == '.')
        return -EINVAL;
    /* RFC 1123 §2.1 host names: letters, digits and hyphens in dot-separated labels of 1
     * to 63 characters that neither start nor end with a hyphen. */
    for (size_t i = 0; i <= len; i++) {
        char ch = name[i];

        if (ch == '.' || ch == '\0') {
            if (label == 0 || name[i - 1] == '-')
                return -EINVAL;
            label = 0;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch == '-' && label > 0)) ||
            ++label > 63)
            return -EINVAL;
    }
    return 0;
}

/* Writes spiffe://<trust_domain>/ns/tether-system/sa/tether-control into buf[len], truncated to
 * fit. */
void cp_ca_serving_id(const char *trust_domain, char *buf, size_t len)
{
    snprintf(buf, len, "spiffe://%s/ns/tether-system/sa/tether-control", trust_domain);
}

/* Issues the control plane's serving certificate with a new key; see ca.h. */
int cp_ca_issue_serving(struct cp_ca *ca, uint64_t ttl_ms, const char *const *names, size_t n_names,
                        struct cp_ca_cert *out, char *err, size_t errlen)
{
    char id[512];
    EVP_PKEY *key = p256_key_new();
    uint64_t saved = ca->max_ttl_ms;
    int rc;

    if (key == NULL) {
        tt_errf(err, errlen, "key generation failed");
        return TT_E_CA_INTERNAL;
    }
    cp_ca_serving_id(ca->trust_domain, id, sizeof(id));
    /* The serving certificate is not a workload's: --cert-ttl does not cap it. Issuing
     * reads max_ttl_ms only through this call's argument. */
    if (ttl_ms == 0)
        ttl_ms = saved;
    {
        struct cp_ca tmp = *ca;

        tmp.max_ttl_ms = ttl_ms;
        rc = issue_leaf(&tmp, key, id, names, n_names, ttl_ms, out, err, errlen);
    }
    if (rc == 0) {
        out->key_pem = tt_pem_from_key(key, NULL);
        if (out->key_pem == NULL) {
            cp_ca_cert_done(out);
            tt_errf(err, errlen, "out of memory");
            rc = TT_E_CA_INTERNAL;
        }
    }
    EVP_PKEY_free(key);
    return rc;
}

/* Returns the trust bundle (the root as PEM), owned by the CA and valid while it lives. */
const char *cp_ca_bundle_pem(const struct cp_ca *ca)
{
    return ca->bundle_pem;
}

/* Returns the CA's own certificate (root or intermediate) as PEM, owned by the CA and valid while
 * it lives. */
const char *cp_ca_cert_pem(const struct cp_ca *ca)
{
    return ca->cert_pem;
}

/* Returns the CA's trust domain (e.g. "cluster.local"), owned by the CA. */
const char *cp_ca_trust_domain(const struct cp_ca *ca)
{
    return ca->trust_domain;
}

/* Returns the cap on a leaf's lifetime in milliseconds (--cert-ttl; 1 h when none was given). */
uint64_t cp_ca_max_ttl_ms(const struct cp_ca *ca)
{
    return ca->max_ttl_ms;
}

/* ---- CRL ---- */

/* Adds revoked entry r to crl. Returns 0, or TT_E_CA_INTERNAL with err set. */
static int crl_add_revoked(X509_CRL *crl, const struct cp_ca_revoked *r, char *err, size_t errlen)
{
    X509_REVOKED *rev = X509_REVOKED_new();
    char norm[TT_SERIAL_MAX];
    BIGNUM *bn = NULL;
    ASN1_INTEGER *serial = NULL;
    ASN1_TIME *when = NULL;
    int rc = TT_E_CA_INTERNAL;

    if (tt_serial_normalize(r->serial, norm, sizeof(norm)) != 0 || !BN_hex2bn(&bn, norm)) {
        tt_errf(err, errlen, "revoked serial \"%.80s\" is not hexadecimal", r->serial);
        goto out;
    }
    serial = BN_to_ASN1_INTEGER(bn, NULL);
    when = ASN1_TIME_set(NULL, (time_t)r->revoked_unix);
    if (rev == NULL || serial == NULL || when == NULL ||
        !X509_REVOKED_set_serialNumber(rev, serial) ||
        !X509_REVOKED_set_revocationDate(rev, when) || !X509_CRL_add0_revoked(crl, rev)) {
        tt_errf(err, errlen, "out of memory");
        goto out;
    }
    rev = NULL; /* the CRL's now */
    rc = 0;
out:
    X509_REVOKED_free(rev);
    ASN1_INTEGER_free(serial);
    ASN1_TIME_free(when);
    BN_free(bn);
    return rc;
}

/* Adds the CRL number (RFC 5280 §5.2.3) and the authority key identifier (§5.2.1). */
static bool crl_add_extensions(X509_CRL *crl, X509 *issuer, int64_t number)
{
    ASN1_INTEGER *n = ASN1_INTEGER_new();
    X509V3_CTX v3;
    X509_EXTENSION *akid;
    bool ok = n != NULL && ASN1_INTEGER_set_uint64(n, (uint64_t)number) &&
              X509_CRL_add1_ext_i2d(crl, NID_crl_number, n, 0, 0) == 1;

    ASN1_INTEGER_free(n);
    X509V3_set_ctx(&v3, issuer, NULL, NULL, crl, 0);
    akid =
        ok ? X509V3_EXT_nconf_nid(NULL, &v3, NID_authority_key_identifier, "keyid:always") : NULL;
    ok = akid != NULL && X509_CRL_add_ext(crl, akid, -1);
    X509_EXTENSION_free(akid);
    return ok;
}

/* Signs a CRL of the revoked serials (see ca.h). */
int cp_ca_crl(struct cp_ca *ca, const struct cp_ca_revoked *revoked, size_t n, char **pem,
              uint8_t **der, size_t *der_len, char *err, size_t errlen)
{
    X509_CRL *crl = X509_CRL_new();
    int64_t now = tt_now_unix();
    ASN1_TIME *t = NULL;
    BIO *bio = NULL;
    uint8_t *out = NULL;
    int len, rc = TT_E_CA_INTERNAL;

    if (pem != NULL)
        *pem = NULL;
    if (der != NULL)
        *der = NULL;
    if (crl == NULL || !X509_CRL_set_version(crl, X509_CRL_VERSION_2) ||
        !X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca->cert)) ||
        (t = ASN1_TIME_set(NULL, (time_t)now)) == NULL || !X509_CRL_set1_lastUpdate(crl, t) ||
        ASN1_TIME_set(t, (time_t)(now + CP_CA_CRL_VALIDITY_S)) == NULL ||
        !X509_CRL_set1_nextUpdate(crl, t) || !crl_add_extensions(crl, ca->cert, now)) {
        tt_errf(err, errlen, "cannot build the CRL");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (crl_add_revoked(crl, &revoked[i], err, errlen) != 0)
            goto out;
    }
    if (!X509_CRL_sort(crl) ||
        !X509_CRL_sign(crl, ca->key,
                       EVP_PKEY_id(ca->key) == EVP_PKEY_ED25519 ? NULL : EVP_sha256())) {
        tt_errf(err, errlen, "cannot sign the CRL");
        goto out;
    }
    if (pem != NULL) {
        const uint8_t *data;
        size_t plen;

        bio = BIO_new(BIO_s_mem());
        if (bio == NULL || !PEM_write_bio_X509_CRL(bio, crl) ||
            !BIO_mem_contents(bio, &data, &plen) || (*pem = malloc(plen + 1)) == NULL) {
            tt_errf(err, errlen, "out of memory");
            goto out;
        }
        memcpy(*pem, data, plen);
        (*pem)[plen] = '\0';
    }
    if (der != NULL) {
        len = i2d_X509_CRL(crl, &out);
        if (len <= 0 || (*der = malloc((size_t)len)) == NULL) {
            tt_errf(err, errlen, "out of memory");
            goto out;
        }
        memcpy(*der, out, (size_t)len);
        *der_len = (size_t)len;
    }
    rc = 0;
out:
    if (rc != 0 && pem != NULL) {
        free(*pem);
        *pem = NULL;
    }
    OPENSSL_free(out);
    BIO_free(bio);
    ASN1_TIME_free(t);
    X509_CRL_free(crl);
    ERR_clear_error();
    return rc;
}
