/* Fuzz target: what a caller of Identity.Sign controls in a service-account token, and
 * what an operator's JWK Set holds. Each input is used three ways:
 *   - as a whole token (control/jwt.c's parsing up to the signature check);
 *   - split at its first newline into a header and a claims text, which this target
 *     signs with its own ES256 key (listed in the JWK Set), so that mutated claims get
 *     past the signature and reach the exp/nbf/iat, aud, iss and kubernetes.io checks;
 *   - as a JWK Set (control/jwks.c), and as base64url (tls/crypto.c), where a text that
 *     decodes must encode back to itself (only canonical spellings are accepted).
 * An accepted token must map to a valid SPIFFE ID in the trust domain (parsed again
 * here); a refused one must say why and map to nothing. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/nid.h>
#include <openssl/sha.h>

#include "core/spiffe.h"
#include "jwks.h"
#include "jwt.h"
#include "tls/crypto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static EC_KEY *key;
static struct cp_jwks_file *keys;

/* Makes the key, writes its JWK Set to a temporary file and loads it. */
static void init(void)
{
    char path[] = "/tmp/fuzz-jwt-XXXXXX", err[512], *x, *y;
    uint8_t xb[32], yb[32];
    BIGNUM *bx = BN_new(), *by = BN_new();
    FILE *f;
    int fd;

    key = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    if (key == NULL || !EC_KEY_generate_key(key) ||
        !EC_POINT_get_affine_coordinates_GFp(EC_KEY_get0_group(key), EC_KEY_get0_public_key(key),
                                             bx, by, NULL) ||
        !BN_bn2bin_padded(xb, 32, bx) || !BN_bn2bin_padded(yb, 32, by))
        abort();
    x = tt_crypto_base64url_encode(xb, 32);
    y = tt_crypto_base64url_encode(yb, 32);
    fd = mkstemp(path);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL)
        abort();
    fprintf(f,
            "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"kid\": \"k\", \"x\": \"%s\", "
            "\"y\": \"%s\"}]}",
            x, y);
    fclose(f);
    keys = cp_jwks_file_open(path, err, sizeof(err));
    if (keys == NULL)
        abort();
    unlink(path); /* the set stays loaded; a refresh would only report it gone */
    free(x);
    free(y);
    BN_free(bx);
    BN_free(by);
}

/* Verifies tok[0..len) and checks what an acceptance means. */
static void verify(const char *tok, size_t len)
{
    struct cp_jwt_check chk = {.audience = "tether",
                               .issuer = "https://kubernetes.default.svc.cluster.local",
                               .trust_domain = "cluster.local",
                               .now = 1800000000};
    char id[TT_SPIFFE_MAX + 1], detail[512];
    enum cp_jwt_err e = cp_jwt_verify(keys, tok, len, &chk, id, sizeof(id), detail, sizeof(detail));

    if (e == CP_JWT_OK) {
        if (tt_spiffe_check(id, strlen(id), false) != 0 ||
            strncmp(id, "spiffe://cluster.local/ns/", 26) != 0)
            abort();
    } else if (id[0] != '\0' || detail[0] == '\0' || cp_jwt_err_name(e) == NULL) {
        abort();
    }
}

/* header.claims signed with the target's key. */
static void sign_and_verify(const uint8_t *hdr, size_t hlen, const uint8_t *claims, size_t clen)
{
    char *h = tt_crypto_base64url_encode(hdr, hlen), *c = tt_crypto_base64url_encode(claims, clen);
    uint8_t digest[SHA256_DIGEST_LENGTH], sig[64];
    char *input = NULL, *s = NULL, *tok = NULL;
    ECDSA_SIG *es = NULL;
    const BIGNUM *r, *sv;

    if (h == NULL || c == NULL || asprintf(&input, "%s.%s", h, c) < 0)
        goto out;
    SHA256((const uint8_t *)input, strlen(input), digest);
    es = ECDSA_do_sign(digest, sizeof(digest), key);
    if (es == NULL)
        goto out;
    ECDSA_SIG_get0(es, &r, &sv);
    if (!BN_bn2bin_padded(sig, 32, r) || !BN_bn2bin_padded(sig + 32, 32, sv))
        goto out;
    s = tt_crypto_base64url_encode(sig, sizeof(sig));
    if (s != NULL && asprintf(&tok, "%s.%s", input, s) >= 0)
        verify(tok, strlen(tok));
out:
    ECDSA_SIG_free(es);
    free(tok);
    free(s);
    free(input);
    free(h);
    free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl;
    uint8_t *dec;
    size_t dec_len;
    char err[512];

    if (keys == NULL)
        init();
    verify((const char *)data, size);
    nl = memchr(data, '\n', size);
    if (nl != NULL)
        sign_and_verify(data, (size_t)(nl - data), nl + 1, size - (size_t)(nl - data) - 1);
    cp_jwks_free(cp_jwks_parse((const char *)data, size, "fuzz", err, sizeof(err)));
    if (tt_crypto_base64url_decode((const char *)data, size, &dec, &dec_len) == 0) {
        char *again = tt_crypto_base64url_encode(dec, dec_len);

        if (again == NULL || strlen(again) != size || memcmp(again, data, size) != 0)
            abort();
        free(again);
        free(dec);
    }
    return 0;
}
