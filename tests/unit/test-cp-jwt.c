/* Unit tests for control/jwks.c and control/jwt.c: Kubernetes-shaped service-account tokens
 * signed here with EC P-256 and RSA-2048 keys made by BoringSSL, whose JWK Set is written
 * to a file the verifier loads; each refusal (alg none, HMAC with public material as the
 * secret, bad signature, unknown key, expiry, nbf, iat, audience, issuer, claims, format)
 * and the JWK Set's own errors and reload. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/digest.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/hmac.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "core/spiffe.h"
#include "jwks.h"
#include "jwt.h"
#include "tls/crypto.h"

#define TD  "cluster.local"
#define AUD "tether"
#define ISS "https://kubernetes.default.svc.cluster.local"
#define NOW 1800000000LL

static char tmpdir[64];
static EC_KEY *ec_key, *ec_other;
static RSA *rsa_key;
static char *jwks_text;

/* A JWK member: base64url of a big number, at least `pad` bytes wide. */
static char *b64_bn(const BIGNUM *bn, size_t pad)
{
    uint8_t buf[1024];
    size_t n = pad > 0 ? pad : BN_num_bytes(bn);

    assert_true(BN_bn2bin_padded(buf, n, bn));
    return tt_crypto_base64url_encode(buf, n);
}

static char *ec_jwk(const EC_KEY *k, const char *kid)
{
    BIGNUM *x = BN_new(), *y = BN_new();
    char *xs, *ys, *out;

    assert_true(EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(k), EC_KEY_get0_public_key(k),
                                                    x, y, NULL));
    xs = b64_bn(x, 32);
    ys = b64_bn(y, 32);
    assert_true(asprintf(&out,
                         "{\"kty\": \"EC\", \"crv\": \"P-256\", \"kid\": \"%s\", \"use\": "
                         "\"sig\", \"alg\": \"ES256\", \"x\": \"%s\", \"y\": \"%s\"}",
                         kid, xs, ys) > 0);
    free(xs);
    free(ys);
    BN_free(x);
    BN_free(y);
    return out;
}

static char *rsa_jwk(const RSA *k, const char *kid)
{
    const BIGNUM *n, *e;
    char *ns, *es, *out;

    RSA_get0_key(k, &n, &e, NULL);
    ns = b64_bn(n, 0);
    es = b64_bn(e, 0);
    assert_true(asprintf(&out, "{\"kty\": \"RSA\", \"kid\": \"%s\", \"n\": \"%s\", \"e\": \"%s\"}",
                         kid, ns, es) > 0);
    free(ns);
    free(es);
    return out;
}

static char *write_file(const char *name, const char *text)
{
    char *path;
    FILE *f;

    assert_true(asprintf(&path, "%s/%s", tmpdir, name) > 0);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* The token's signature with `alg` ("ES256", "RS256", "HS256" with hmac_secret, "none"). */
static char *sign(const char *alg, const char *input, EC_KEY *ec, RSA *rsa, const char *secret)
{
    uint8_t digest[SHA256_DIGEST_LENGTH], sig[1024];
    size_t sig_len = 0;

    SHA256((const uint8_t *)input, strlen(input), digest);
    if (strcmp(alg, "ES256") == 0) {
        ECDSA_SIG *s = ECDSA_do_sign(digest, sizeof(digest), ec);
        const BIGNUM *r, *sv;

        assert_non_null(s);
        ECDSA_SIG_get0(s, &r, &sv);
        assert_true(BN_bn2bin_padded(sig, 32, r) && BN_bn2bin_padded(sig + 32, 32, sv));
        sig_len = 64;
        ECDSA_SIG_free(s);
    } else if (strcmp(alg, "ES256-DER") == 0) {
        unsigned len = 0;

        assert_true(ECDSA_sign(0, digest, sizeof(digest), sig, &len, ec));
        sig_len = len;
    } else if (strcmp(alg, "RS256") == 0) {
        unsigned len = 0;

        assert_true(RSA_sign(NID_sha256, digest, sizeof(digest), sig, &len, rsa));
        sig_len = len;
    } else if (strcmp(alg, "HS256") == 0) {
        unsigned len = 0;

        assert_non_null(HMAC(EVP_sha256(), secret, strlen(secret), (const uint8_t *)input,
                             strlen(input), sig, &len));
        sig_len = len;
    }
    return tt_crypto_base64url_encode(sig, sig_len);
}

/* header.payload.signature from JSON texts. */
static char *token_raw(const char *header, const char *claims, const char *alg, EC_KEY *ec,
                       RSA *rsa, const char *secret)
{
    char *h = tt_crypto_base64url_encode((const uint8_t *)header, strlen(header));
    char *c = tt_crypto_base64url_encode((const uint8_t *)claims, strlen(claims));
    char *input, *s, *out;

    assert_true(asprintf(&input, "%s.%s", h, c) > 0);
    s = sign(alg, input, ec, rsa, secret);
    assert_true(asprintf(&out, "%s.%s", input, s) > 0);
    free(h);
    free(c);
    free(s);
    free(input);
    return out;
}

/* Claims as Kubernetes writes them for a projected token. */
static char *k8s_claims(const char *ns, const char *sa, const char *aud, const char *iss,
                        long long exp, long long nbf, long long iat)
{
    char *out;

    assert_true(asprintf(&out,
                         "{\"aud\": [\"%s\"], \"exp\": %lld, \"iat\": %lld, \"iss\": \"%s\", "
                         "\"kubernetes.io\": {\"namespace\": \"%s\", \"pod\": {\"name\": "
                         "\"web-1\", \"uid\": \"5a1c7c2e-1111-4222-8333-944445555666\"}, "
                         "\"serviceaccount\": {\"name\": \"%s\", \"uid\": "
                         "\"0d1c7c2e-1111-4222-8333-944445555666\"}}, \"nbf\": %lld, \"sub\": "
                         "\"system:serviceaccount:%s:%s\"}",
                         aud, exp, iat, iss, ns, sa, nbf, ns, sa) > 0);
    return out;
}

static char *good_claims(void)
{
    return k8s_claims("shop", "web", AUD, ISS, NOW + 3600, NOW - 10, NOW - 10);
}

static struct cp_jwks_file *open_jwks(void)
{
    char err[512];
    char *path = write_file("jwks.json", jwks_text);
    struct cp_jwks_file *f = cp_jwks_file_open(path, err, sizeof(err));

    if (f == NULL)
        fail_msg("%s", err);
    free(path);
    return f;
}

/* Verifies `tok` with the standard check; returns the verdict and the mapped ID. */
static enum cp_jwt_err verify(struct cp_jwks_file *f, const char *tok, const char *issuer, char *id)
{
    struct cp_jwt_check chk = {.audience = AUD, .issuer = issuer, .trust_domain = TD, .now = NOW};
    char detail[512];
    enum cp_jwt_err e =
        cp_jwt_verify(f, tok, strlen(tok), &chk, id, TT_SPIFFE_MAX + 1, detail, sizeof(detail));

    if (e != CP_JWT_OK)
        assert_true(detail[0] != '\0'); /* every refusal says why */
    return e;
}

/* Takes ownership of tok. */
static void expect(struct cp_jwks_file *f, char *tok, enum cp_jwt_err want)
{
    char id[TT_SPIFFE_MAX + 1];
    enum cp_jwt_err got = verify(f, tok, ISS, id);

    if (got != want)
        fail_msg("expected %s, got %s for %s", cp_jwt_err_name(want), cp_jwt_err_name(got), tok);
    if (want != CP_JWT_OK)
        assert_string_equal(id, "");
    free(tok);
}

static int setup(void **state)
{
    char *e1, *r1, *o1;
    BIGNUM *e = BN_new();

    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-cp-jwt-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    ec_key = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    ec_other = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    rsa_key = RSA_new();
    assert_true(EC_KEY_generate_key(ec_key) && EC_KEY_generate_key(ec_other));
    assert_true(BN_set_word(e, RSA_F4) && RSA_generate_key_ex(rsa_key, 2048, e, NULL));
    BN_free(e);
    e1 = ec_jwk(ec_key, "ec1");
    r1 = rsa_jwk(rsa_key, "rsa1");
    /* An "oct" key is skipped, never used as an HMAC secret. */
    o1 = strdup("{\"kty\": \"oct\", \"kid\": \"hmac\", \"k\": \"c2VjcmV0\"}");
    assert_true(asprintf(&jwks_text, "{\"keys\": [%s, %s, %s]}", e1, r1, o1) > 0);
    free(e1);
    free(r1);
    free(o1);
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];

    EC_KEY_free(ec_key);
    EC_KEY_free(ec_other);
    RSA_free(rsa_key);
    free(jwks_text);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

/* ES256 and RS256 tokens shaped as Kubernetes projects them map to ns/<ns>/sa/<sa>; a token
 * without kid is tried against every key of its type; an "aud" string works as well as an
 * array; without a configured issuer any issuer is accepted. A token is not single-use. */
static void test_jwt_accepts(void **state)
{
    struct cp_jwks_file *f = open_jwks();
    char id[TT_SPIFFE_MAX + 1], *c = good_claims(), *tok;

    tok = token_raw("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", c, "ES256", ec_key, NULL, NULL);
    assert_int_equal(verify(f, tok, ISS, id), CP_JWT_OK);
    assert_string_equal(id, "spiffe://" TD "/ns/shop/sa/web");
    assert_int_equal(verify(f, tok, ISS, id), CP_JWT_OK); /* again: still good */
    free(tok);
    tok = token_raw("{\"alg\":\"RS256\",\"kid\":\"rsa1\",\"typ\":\"JWT\"}", c, "RS256", NULL,
                    rsa_key, NULL);
    assert_int_equal(verify(f, tok, ISS, id), CP_JWT_OK);
    assert_string_equal(id, "spiffe://" TD "/ns/shop/sa/web");
    free(tok);
    tok = token_raw("{\"alg\":\"RS256\"}", c, "RS256", NULL, rsa_key, NULL);
    assert_int_equal(verify(f, tok, ISS, id), CP_JWT_OK);
    free(tok);
    tok = token_raw("{\"alg\":\"ES256\"}", c, "ES256", ec_key, NULL, NULL);
    assert_int_equal(verify(f, tok, NULL, id), CP_JWT_OK);
    free(tok);
    free(c);
    c = k8s_claims("shop", "web", AUD, "https://other", NOW + 3600, NOW, NOW);
    tok = token_raw("{\"alg\":\"ES256\"}", c, "ES256", ec_key, NULL, NULL);
    assert_int_equal(verify(f, tok, NULL, id), CP_JWT_OK);
    free(tok);
    free(c);
    /* aud as a single string; no nbf, no iat, no sub; a dotted service-account name. */
    c = strdup("{\"aud\": \"" AUD "\", \"exp\": 1800000100, \"kubernetes.io\": {\"namespace\": "
               "\"kube-x\", \"serviceaccount\": {\"name\": \"a.b-c\"}}}");
    tok = token_raw("{\"alg\":\"ES256\"}", c, "ES256", ec_key, NULL, NULL);
    assert_int_equal(verify(f, tok, ISS, id), CP_JWT_ISSUER); /* no iss, one configured */
    assert_int_equal(verify(f, tok, NULL, id), CP_JWT_OK);
    assert_string_equal(id, "spiffe://" TD "/ns/kube-x/sa/a.b-c");
    free(tok);
    free(c);
    cp_jwks_file_free(f);
}

/* "alg": "none", HS256 keyed with the public keys' own text (the key-confusion attack),
 * other algorithms and "crit" never reach a key. */
static void test_jwt_alg_refused(void **state)
{
    struct cp_jwks_file *f = open_jwks();
    char *c = good_claims(), *tok;

    /* none: empty signature, and with a signature part too. */
    tok = token_raw("{\"alg\":\"none\"}", c, "none", NULL, NULL, NULL);
    assert_non_null(strstr(tok, "."));
    assert_int_equal(tok[strlen(tok) - 1], '.');
    expect(f, tok, CP_JWT_ALG);
    expect(f, token_raw("{\"alg\":\"none\",\"kid\":\"ec1\"}", c, "ES256", ec_key, NULL, NULL),
           CP_JWT_ALG);
    expect(f, token_raw("{\"alg\":\"HS256\",\"kid\":\"rsa1\"}", c, "HS256", NULL, NULL, jwks_text),
           CP_JWT_ALG);
    expect(f, token_raw("{\"alg\":\"HS256\",\"kid\":\"hmac\"}", c, "HS256", NULL, NULL, "secret"),
           CP_JWT_ALG);
    expect(f, token_raw("{\"alg\":\"PS256\"}", c, "RS256", NULL, rsa_key, NULL), CP_JWT_ALG);
    expect(f, token_raw("{\"alg\":\"es256\"}", c, "ES256", ec_key, NULL, NULL), CP_JWT_ALG);
    expect(f, token_raw("{\"alg\":\"ES256\",\"crit\":[\"exp\"]}", c, "ES256", ec_key, NULL, NULL),
           CP_JWT_ALG);
    free(c);
    cp_jwks_file_free(f);
}

/* Signatures that do not verify, and keys that do not fit. */
static void test_jwt_signature_refused(void **state)
{
    struct cp_jwks_file *f = open_jwks();
    char *c = good_claims(), *tok, *c2;

    /* Another key under a known kid. */
    expect(f, token_raw("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", c, "ES256", ec_other, NULL, NULL),
           CP_JWT_SIGNATURE);
    expect(f, token_raw("{\"alg\":\"ES256\"}", c, "ES256", ec_other, NULL, NULL), CP_JWT_SIGNATURE);
    /* One bit of the signature. */
    tok = token_raw("{\"alg\":\"RS256\",\"kid\":\"rsa1\"}", c, "RS256", NULL, rsa_key, NULL);
    tok[strlen(tok) - 5] = tok[strlen(tok) - 5] == 'A' ? 'B' : 'A';
    expect(f, tok, CP_JWT_SIGNATURE);
    /* ES256 in DER (as OpenSSL's API gives it) is not the JWS form. */
    expect(f, token_raw("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", c, "ES256-DER", ec_key, NULL, NULL),
           CP_JWT_SIGNATURE);
    /* The claims changed after signing: a token for sa web made into one for sa api. */
    tok = token_raw("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", c, "ES256", ec_key, NULL, NULL);
    c2 = k8s_claims("shop", "api", AUD, ISS, NOW + 3600, NOW - 10, NOW - 10);
    {
        char *dot1 = strchr(tok, '.'), *dot2 = strchr(dot1 + 1, '.');
        char *payload = tt_crypto_base64url_encode((const uint8_t *)c2, strlen(c2)), *forged;

        *dot1 = '\0';
        assert_true(asprintf(&forged, "%s.%s%s", tok, payload, dot2) > 0);
        expect(f, forged, CP_JWT_SIGNATURE);
        free(payload);
    }
    free(tok);
    free(c2);
    /* No key of that kid, or of that type under it. */
    expect(f, token_raw("{\"alg\":\"ES256\",\"kid\":\"nope\"}", c, "ES256", ec_key, NULL, NULL),
           CP_JWT_UNKNOWN_KEY);
    expect(f, token_raw("{\"alg\":\"ES256\",\"kid\":\"rsa1\"}", c, "ES256", ec_key, NULL, NULL),
           CP_JWT_UNKNOWN_KEY);
    expect(f, token_raw("{\"alg\":\"RS256\",\"kid\":\"ec1\"}", c, "RS256", NULL, rsa_key, NULL),
           CP_JWT_UNKNOWN_KEY);
    free(c);
    cp_jwks_file_free(f);
}

/* exp, nbf and iat with the 60 s skew. */
static void test_jwt_times(void **state)
{
    struct cp_jwks_file *f = open_jwks();
    const char *h = "{\"alg\":\"ES256\",\"kid\":\"ec1\"}";
    char *c;

#define TIMES(exp, nbf, iat, want)                                                                 \
    c = k8s_claims("shop", "web", AUD, ISS, exp, nbf, iat);                                        \
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), want);                                 \
    free(c)
    TIMES(NOW - 3600, NOW - 7200, NOW - 7200, CP_JWT_EXPIRED);
    TIMES(NOW - CP_JWT_SKEW - 1, NOW - 7200, NOW - 7200, CP_JWT_EXPIRED);
    TIMES(NOW - CP_JWT_SKEW + 1, NOW - 7200, NOW - 7200, CP_JWT_OK);
    TIMES(NOW + 3600, NOW + 600, NOW - 10, CP_JWT_NOT_YET_VALID);
    TIMES(NOW + 3600, NOW + CP_JWT_SKEW + 1, NOW - 10, CP_JWT_NOT_YET_VALID);
    TIMES(NOW + 3600, NOW + CP_JWT_SKEW - 1, NOW - 10, CP_JWT_OK);
    TIMES(NOW + 3600, NOW - 10, NOW + 600, CP_JWT_NOT_YET_VALID);
#undef TIMES
    /* No exp at all: refused; a string exp: malformed. */
    c = strdup("{\"aud\": [\"" AUD "\"], \"iss\": \"" ISS "\", \"kubernetes.io\": {\"namespace\": "
               "\"shop\", \"serviceaccount\": {\"name\": \"web\"}}}");
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), CP_JWT_EXPIRED);
    free(c);
    c = strdup("{\"aud\": [\"" AUD "\"], \"exp\": \"1800003600\", \"kubernetes.io\": "
               "{\"namespace\": \"shop\", \"serviceaccount\": {\"name\": \"web\"}}}");
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), CP_JWT_MALFORMED);
    free(c);
    cp_jwks_file_free(f);
}

/* Audience, issuer and the kubernetes.io claims. */
static void test_jwt_claims(void **state)
{
    struct cp_jwks_file *f = open_jwks();
    const char *h = "{\"alg\":\"ES256\",\"kid\":\"ec1\"}";
    char *c;

#define CLAIMS(ns, sa, aud, iss, want)                                                             \
    c = k8s_claims(ns, sa, aud, iss, NOW + 3600, NOW - 10, NOW - 10);                              \
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), want);                                 \
    free(c)
    CLAIMS("shop", "web", "other", ISS, CP_JWT_AUDIENCE);
    CLAIMS("shop", "web", "https://kubernetes.default.svc", ISS, CP_JWT_AUDIENCE);
    CLAIMS("shop", "web", AUD, "https://evil.example", CP_JWT_ISSUER);
    CLAIMS("Shop", "web", AUD, ISS, CP_JWT_CLAIMS);
    CLAIMS("shop", "web/../api", AUD, ISS, CP_JWT_CLAIMS);
    CLAIMS("-shop", "web", AUD, ISS, CP_JWT_CLAIMS);
    CLAIMS("shop", "", AUD, ISS, CP_JWT_CLAIMS);
    /* The reserved namespace maps (sidecar_api.c refuses it as reserved_identity). */
    CLAIMS("tether-system", "tether-admin", AUD, ISS, CP_JWT_OK);
#undef CLAIMS
    /* aud an empty array; no kubernetes.io; sub for another account. */
    c = strdup("{\"aud\": [], \"exp\": 1800003600, \"kubernetes.io\": {\"namespace\": \"shop\", "
               "\"serviceaccount\": {\"name\": \"web\"}}}");
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), CP_JWT_AUDIENCE);
    free(c);
    c = strdup("{\"aud\": \"" AUD "\", \"iss\": \"" ISS "\", \"exp\": 1800003600, \"sub\": "
               "\"system:serviceaccount:shop:web\"}");
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), CP_JWT_CLAIMS);
    free(c);
    c = strdup("{\"aud\": \"" AUD "\", \"iss\": \"" ISS "\", \"exp\": 1800003600, \"sub\": "
               "\"system:serviceaccount:shop:api\", \"kubernetes.io\": {\"namespace\": \"shop\", "
               "\"serviceaccount\": {\"name\": \"web\"}}}");
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), CP_JWT_CLAIMS);
    free(c);
    /* Duplicate members (two readings of one token) are malformed. */
    c = strdup("{\"aud\": \"other\", \"aud\": \"" AUD "\", \"exp\": 1800003600, "
               "\"kubernetes.io\": {\"namespace\": \"shop\", \"serviceaccount\": {\"name\": "
               "\"web\"}}}");
    expect(f, token_raw(h, c, "ES256", ec_key, NULL, NULL), CP_JWT_MALFORMED);
    free(c);
    cp_jwks_file_free(f);
}

/* What is not a compact JWS at all. */
static void test_jwt_malformed(void **state)
{
    struct cp_jwks_file *f = open_jwks();
    char *c = good_claims(), *tok, *big;
    char id[TT_SPIFFE_MAX + 1];

    tok = token_raw("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", c, "ES256", ec_key, NULL, NULL);
    expect(f, strdup("abc"), CP_JWT_MALFORMED);
    expect(f, strdup("a.b"), CP_JWT_MALFORMED);
    expect(f, strdup(".."), CP_JWT_MALFORMED);
    {
        char *four;

        assert_true(asprintf(&four, "%s.x", tok) > 0);
        expect(f, four, CP_JWT_MALFORMED); /* JWE-like extra parts */
        assert_true(asprintf(&four, "%s=", tok) > 0);
        expect(f, four, CP_JWT_MALFORMED); /* padding on the signature */
        assert_true(asprintf(&four, "=%s", tok) > 0);
        expect(f, four, CP_JWT_MALFORMED);
    }
    expect(f, token_raw("[\"alg\", \"ES256\"]", c, "ES256", ec_key, NULL, NULL), CP_JWT_MALFORMED);
    expect(f, token_raw("{\"kid\":\"ec1\"}", c, "ES256", ec_key, NULL, NULL), CP_JWT_MALFORMED);
    expect(f, token_raw("{\"alg\":\"ES256\",\"alg\":\"none\"}", c, "ES256", ec_key, NULL, NULL),
           CP_JWT_MALFORMED);
    expect(f, token_raw("{\"alg\":\"ES256\",\"kid\":7}", c, "ES256", ec_key, NULL, NULL),
           CP_JWT_MALFORMED);
    expect(f, token_raw("{\"alg\":\"ES256\",\"typ\":\"at+jwt\"}", c, "ES256", ec_key, NULL, NULL),
           CP_JWT_MALFORMED);
    expect(f, token_raw("{\"alg\":\"ES256\"}", "not json", "ES256", ec_key, NULL, NULL),
           CP_JWT_MALFORMED);
    /* Over the bound: refused before anything is decoded. */
    big = calloc(1, CP_JWT_MAX_LEN + 2);
    memset(big, 'A', CP_JWT_MAX_LEN + 1);
    big[10] = '.';
    big[20] = '.';
    assert_int_equal(verify(f, big, ISS, id), CP_JWT_MALFORMED);
    free(big);
    free(tok);
    free(c);
    cp_jwks_file_free(f);
}

/* A JWK Set that is not usable fails to open with a message naming the file, the key and
 * what was expected. */
static void test_jwks_errors(void **state)
{
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"{", "not JSON"},
        {"{\"keys\": {}}", "expected a JWK Set"},
        {"{\"keys\": []}", "no usable key"},
        {"{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}", "no usable key"},
        {"{\"keys\": [7]}", "keys[0]: expected a JSON object"},
        {"{\"keys\": [{\"kid\": \"a\"}]}", "keys[0] (kid \"a\"): \"kty\""},
        {"{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-384\", \"x\": \"AA\", \"y\": \"AA\"}]}",
         "keys[0]: \"crv\": expected \"P-256\""},
        {"{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"kid\": \"k\", \"x\": \"AA==\", "
         "\"y\": \"AA\"}]}",
         "keys[0] (kid \"k\"): \"x\": expected unpadded base64url"},
        {"{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"AQ\", \"y\": \"AQ\"}]}",
         "expected 32 bytes each"},
        {"{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": "
         "\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\", \"y\": "
         "\"AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}",
         "not a point on P-256"},
        {"{\"keys\": [{\"kty\": \"RSA\", \"kid\": \"r\", \"n\": \"3w\", \"e\": \"AQAB\"}]}",
         "keys[0] (kid \"r\"): \"n\": expected an RSA modulus of 2048"},
    };
    char err[512];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *path = write_file("bad.json", cases[i].text);
        struct cp_jwks_file *f = cp_jwks_file_open(path, err, sizeof(err));

        assert_null(f);
        if (strstr(err, cases[i].want) == NULL || strstr(err, path) == NULL)
            fail_msg("case %zu: %s", i, err);
        free(path);
    }
    assert_null(cp_jwks_file_open("/nonexistent/jwks.json", err, sizeof(err)));
    assert_non_null(strstr(err, "/nonexistent/jwks.json"));

    /* use, alg and kid rules, and a 1024-bit RSA key. */
    {
        char *e1 = ec_jwk(ec_key, "dup"), *e2 = ec_jwk(ec_other, "dup"), *text, *path;
        RSA *small = RSA_new();
        BIGNUM *e = BN_new();

        assert_true(asprintf(&text, "{\"keys\": [%s, %s]}", e1, e2) > 0);
        path = write_file("dup.json", text);
        assert_null(cp_jwks_file_open(path, err, sizeof(err)));
        assert_non_null(strstr(err, "keys[1]: kid \"dup\" is used twice"));
        free(text);
        free(path);
        assert_true(BN_set_word(e, RSA_F4) && RSA_generate_key_ex(small, 1024, e, NULL));
        free(e2);
        e2 = rsa_jwk(small, "small");
        assert_true(asprintf(&text, "{\"keys\": [%s]}", e2) > 0);
        path = write_file("small.json", text);
        assert_null(cp_jwks_file_open(path, err, sizeof(err)));
        assert_non_null(strstr(err, "got 1024 bits"));
        free(text);
        free(path);
        free(e2);
        e2 = rsa_jwk(rsa_key, "r");
        e2[strlen(e2) - 1] = '\0';
        assert_true(asprintf(&text, "{\"keys\": [%s, \"alg\": \"ES256\"}]}", e2) > 0);
        path = write_file("alg.json", text);
        assert_null(cp_jwks_file_open(path, err, sizeof(err)));
        assert_non_null(strstr(err, "\"alg\": expected \"RS256\" for a RSA key"));
        free(text);
        free(path);
        assert_true(asprintf(&text, "{\"keys\": [%s, \"use\": \"enc\"}]}", e2) > 0);
        path = write_file("use.json", text);
        assert_null(cp_jwks_file_open(path, err, sizeof(err)));
        assert_non_null(strstr(err, "\"use\": expected \"sig\""));
        free(text);
        free(path);
        free(e1);
        free(e2);
        RSA_free(small);
        BN_free(e);
    }
}

/* The file is read again when it changes; a bad new version keeps the old keys. */
static void test_jwks_reload(void **state)
{
    struct cp_jwks_file *f = open_jwks();
    char *c = good_claims(), *other = ec_jwk(ec_other, "ec2"), *text, *path;
    char *tok1 = token_raw("{\"alg\":\"ES256\",\"kid\":\"ec1\"}", c, "ES256", ec_key, NULL, NULL);
    char *tok2 = token_raw("{\"alg\":\"ES256\",\"kid\":\"ec2\"}", c, "ES256", ec_other, NULL, NULL);
    char id[TT_SPIFFE_MAX + 1], err[512];
    struct timespec times[2] = {{0, 0}, {1000000000, 0}};

    assert_int_equal(cp_jwks_file_refresh(f, err, sizeof(err)), 0); /* unchanged */
    assert_int_equal(verify(f, tok1, ISS, id), CP_JWT_OK);
    assert_int_equal(verify(f, tok2, ISS, id), CP_JWT_UNKNOWN_KEY);
    /* The API server rotated its key. */
    assert_true(asprintf(&text, "{\"keys\": [%s]}", other) > 0);
    path = write_file("jwks.json", text);
    assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);
    assert_int_equal(cp_jwks_file_refresh(f, err, sizeof(err)), 1);
    assert_string_equal(err, "1");
    assert_int_equal(verify(f, tok1, ISS, id), CP_JWT_UNKNOWN_KEY);
    assert_int_equal(verify(f, tok2, ISS, id), CP_JWT_OK);
    /* A broken file: refused once, the keys stay. */
    free(write_file("jwks.json", "{\"keys\": ["));
    times[1].tv_sec++;
    assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);
    assert_true(cp_jwks_file_refresh(f, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "not JSON"));
    assert_int_equal(cp_jwks_file_refresh(f, err, sizeof(err)), 0);
    assert_int_equal(verify(f, tok2, ISS, id), CP_JWT_OK);
    /* Gone: reported once, the keys stay; back: read again. */
    assert_int_equal(unlink(path), 0);
    assert_true(cp_jwks_file_refresh(f, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "keeping the keys read before"));
    assert_int_equal(cp_jwks_file_refresh(f, err, sizeof(err)), 0);
    assert_int_equal(verify(f, tok2, ISS, id), CP_JWT_OK);
    free(write_file("jwks.json", jwks_text));
    assert_int_equal(cp_jwks_file_refresh(f, err, sizeof(err)), 1);
    assert_int_equal(verify(f, tok1, ISS, id), CP_JWT_OK);
    free(text);
    free(path);
    free(other);
    free(c);
    free(tok1);
    free(tok2);
    cp_jwks_file_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jwt_accepts),
        cmocka_unit_test(test_jwt_alg_refused),
        cmocka_unit_test(test_jwt_signature_refused),
        cmocka_unit_test(test_jwt_times),
        cmocka_unit_test(test_jwt_claims),
        cmocka_unit_test(test_jwt_malformed),
        cmocka_unit_test(test_jwks_errors),
        cmocka_unit_test(test_jwks_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
