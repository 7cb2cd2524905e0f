/* JSON Web Key Sets and JWS signature checks with BoringSSL (jwks.h). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/nid.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>

#include "core/errors.h"
#include "core/util.h"
#include "jwks.h"
#include "tls/crypto.h"

#define JWKS_FILE_MAX  (1024 * 1024)
#define JWKS_KEYS_MAX  64
#define JWK_KID_MAX    256
#define RSA_BITS_MIN   2048
#define RSA_BITS_MAX   8192
#define P256_COORD_LEN 32

/* One usable key. */
struct jwk {
    char *kid;           /* NULL when the key has none */
    bool has_alg;        /* "alg" given: only that algorithm may use the key */
    enum cp_jws_alg alg; /* the key's type (ES256: EC P-256, RS256: RSA) */
    EC_KEY *ec;
    RSA *rsa;
};

struct cp_jwks {
    struct jwk *keys;
    size_t n;
};

struct cp_jwks_file {
    char *path;
    pthread_mutex_t lock; /* guards keys and the file's identity below */
    struct cp_jwks *keys;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool missing; /* the last stat failed (reported once) */
};

static void jwk_done(struct jwk *k)
{
    free(k->kid);
    EC_KEY_free(k->ec);
    RSA_free(k->rsa);
}

/* Frees a set. */
void cp_jwks_free(struct cp_jwks *ks)
{
    if (ks == NULL)
        return;
    for (size_t i = 0; i < ks->n; i++)
        jwk_done(&ks->keys[i]);
    free(ks->keys);
    free(ks);
}

/* The number of keys. */
size_t cp_jwks_count(const struct cp_jwks *ks)
{
    return ks->n;
}

/* The base64url member `name` of a key, decoded into *out (caller frees). Returns 0, or
 * -EINVAL with err set ("where": which key). */
static int get_b64url(json_t *o, const char *name, const char *where, uint8_t **out,
                      size_t *out_len, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, name);

    *out = NULL;
    *out_len = 0;
    if (json_is_string(v) &&
        tt_crypto_base64url_decode(json_string_value(v), json_string_length(v), out, out_len) ==
            0 &&
        *out_len > 0)
        return 0;
    free(*out);
    *out = NULL;
    snprintf(err, errlen, "%s: \"%s\": expected unpadded base64url (RFC 7515 §2) of a number",
             where, name);
    return -EINVAL;
}

/* An EC key: "crv" "P-256" and coordinates "x" and "y" of exactly 32 bytes each
 * (RFC 7518 §6.2.1) making a point on the curve. */
static int parse_ec(json_t *o, const char *where, struct jwk *k, char *err, size_t errlen)
{
    json_t *crv = json_object_get(o, "crv");
    uint8_t *x = NULL, *y = NULL, point[1 + 2 * P256_COORD_LEN];
    size_t xl = 0, yl = 0;
    EC_POINT *pt = NULL;
    int rc = -EINVAL;

    if (!json_is_string(crv) || strcmp(json_string_value(crv), "P-256") != 0) {
        snprintf(err, errlen, "%s: \"crv\": expected \"P-256\" (the only EC curve accepted)",
                 where);
        return -EINVAL;
    }
    if (get_b64url(o, "x", where, &x, &xl, err, errlen) != 0 ||
        get_b64url(o, "y", where, &y, &yl, err, errlen) != 0)
        goto out;
    if (xl != P256_COORD_LEN || yl != P256_COORD_LEN) {
        snprintf(err, errlen, "%s: \"x\" and \"y\": expected 32 bytes each (RFC 7518 §6.2.1.2)",
                 where);
        goto out;
    }
    point[0] = 0x04; /* uncompressed (SEC 1 §2.3.3) */
    memcpy(point + 1, x, P256_COORD_LEN);
    memcpy(point + 1 + P256_COORD_LEN, y, P256_COORD_LEN);
    k->ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    if (k->ec == NULL || (pt = EC_POINT_new(EC_KEY_get0_group(k->ec))) == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    if (!EC_POINT_oct2point(EC_KEY_get0_group(k->ec), pt, point, sizeof(point), NULL) ||
        !EC_KEY_set_public_key(k->ec, pt) || !EC_KEY_check_key(k->ec)) {
        snprintf(err, errlen, "%s: \"x\" and \"y\" are not a point on P-256", where);
        goto out;
    }
    k->alg = CP_JWS_ES256;
    rc = 0;
out:
    EC_POINT_free(pt);
    free(x);
    free(y);
    return rc;
}

/* An RSA key: modulus "n" of 2048 to 8192 bits and an odd public exponent "e" above 1
 * (RFC 7518 §6.3.1). */
static int parse_rsa(json_t *o, const char *where, struct jwk *k, char *err, size_t errlen)
{
    uint8_t *n = NULL, *e = NULL;
    size_t nl = 0, el = 0;
    BIGNUM *bn_n = NULL, *bn_e = NULL;
    int rc = -EINVAL;

    if (get_b64url(o, "n", where, &n, &nl, err, errlen) != 0 ||
        get_b64url(o, "e", where, &e, &el, err, errlen) != 0)
        goto out;
    if (nl > RSA_BITS_MAX / 8 + 1 || el > 8) {
        snprintf(err, errlen, "%s: \"n\" or \"e\" is too long (at most %d bits, 64-bit exponent)",
                 where, RSA_BITS_MAX);
        goto out;
    }
    bn_n = BN_bin2bn(n, nl, NULL);
    bn_e = BN_bin2bn(e, el, NULL);
    k->rsa = RSA_new();
    if (bn_n == NULL || bn_e == NULL || k->rsa == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto out;
    }
    if (BN_num_bits(bn_n) < RSA_BITS_MIN || BN_num_bits(bn_n) > RSA_BITS_MAX) {
        snprintf(err, errlen, "%s: \"n\": expected an RSA modulus of %d to %d bits, got %u bits",
                 where, RSA_BITS_MIN, RSA_BITS_MAX, BN_num_bits(bn_n));
        goto out;
    }
    if (!BN_is_odd(bn_e) || BN_is_one(bn_e) || !BN_is_odd(bn_n)) {
        snprintf(err, errlen,
                 "%s: \"n\" and \"e\": expected an odd modulus and an odd exponent "
                 "above 1",
                 where);
        goto out;
    }
    if (!RSA_set0_key(k->rsa, bn_n, bn_e, NULL)) {
        snprintf(err, errlen, "%s: not a usable RSA public key", where);
        goto out;
    }
    bn_n = bn_e = NULL; /* owned by k->rsa */
    k->alg = CP_JWS_RS256;
    rc = 0;
out:
    BN_free(bn_n);
    BN_free(bn_e);
    free(n);
    free(e);
    return rc;
}

/* One member of "keys". Returns 1 for a usable key (in *k), 0 for a key of a type that is
 * skipped, <0 with err set. */
static int parse_key(json_t *o, size_t index, struct jwk *k, char *err, size_t errlen)
{
    json_t *kty = json_object_get(o, "kty"), *kid = json_object_get(o, "kid");
    json_t *use = json_object_get(o, "use"), *alg = json_object_get(o, "alg");
    char where[JWK_KID_MAX + 64];
    const char *t;
    int rc;

    memset(k, 0, sizeof(*k));
    if (!json_is_object(o)) {
        snprintf(err, errlen, "keys[%zu]: expected a JSON object (a JWK, RFC 7517 §4)", index);
        return -EINVAL;
    }
    if (kid != NULL && (!json_is_string(kid) || json_string_length(kid) == 0 ||
                        json_string_length(kid) > JWK_KID_MAX ||
                        strlen(json_string_value(kid)) != json_string_length(kid))) {
        snprintf(err, errlen, "keys[%zu]: \"kid\": expected a string of 1 to %d characters", index,
                 JWK_KID_MAX);
        return -EINVAL;
    }
    if (kid != NULL)
        snprintf(where, sizeof(where), "keys[%zu] (kid \"%s\")", index, json_string_value(kid));
    else
        snprintf(where, sizeof(where), "keys[%zu]", index);
    if (!json_is_string(kty)) {
        snprintf(err, errlen, "%s: \"kty\": expected \"EC\" or \"RSA\"", where);
        return -EINVAL;
    }
    t = json_string_value(kty);
    if (strcmp(t, "EC") != 0 && strcmp(t, "RSA") != 0)
        return 0; /* RFC 7517 §5: ignore what is not understood (never a shared secret) */
    if (use != NULL && (!json_is_string(use) || strcmp(json_string_value(use), "sig") != 0)) {
        snprintf(err, errlen, "%s: \"use\": expected \"sig\" (or no \"use\")", where);
        return -EINVAL;
    }
    rc = t[0] == 'E' ? parse_ec(o, where, k, err, errlen) : parse_rsa(o, where, k, err, errlen);
    if (rc < 0)
        goto err;
    if (alg != NULL) {
        const char *want = k->alg == CP_JWS_ES256 ? "ES256" : "RS256";

        if (!json_is_string(alg) || strcmp(json_string_value(alg), want) != 0) {
            snprintf(err, errlen, "%s: \"alg\": expected \"%s\" for a %s key (or no \"alg\")",
                     where, want, t);
            rc = -EINVAL;
            goto err;
        }
        k->has_alg = true;
    }
    if (kid != NULL && (k->kid = strdup(json_string_value(kid))) == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto err;
    }
    return 1;
err:
    jwk_done(k);
    return rc;
}

/* Parses a JWK Set (see jwks.h). */
struct cp_jwks *cp_jwks_parse(const char *text, size_t len, const char *source, char *err,
                              size_t errlen)
{
    struct cp_jwks *ks = NULL;
    json_error_t je;
    json_t *doc, *keys;
    char msg[512];
    size_t i;

    doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (doc == NULL) {
        snprintf(err, errlen, "%s: not JSON (line %d: %s)", source, je.line, je.text);
        return NULL;
    }
    keys = json_object_get(doc, "keys");
    if (!json_is_object(doc) || !json_is_array(keys)) {
        snprintf(err, errlen, "%s: expected a JWK Set, {\"keys\": [...]} (RFC 7517 §5)", source);
        goto err;
    }
    if (json_array_size(keys) > JWKS_KEYS_MAX) {
        snprintf(err, errlen, "%s: \"keys\": at most %d keys", source, JWKS_KEYS_MAX);
        goto err;
    }
    ks = calloc(1, sizeof(*ks));
    if (ks == NULL || (ks->keys = calloc(json_array_size(keys) + 1, sizeof(*ks->keys))) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    for (i = 0; i < json_array_size(keys); i++) {
        int rc = parse_key(json_array_get(keys, i), i, &ks->keys[ks->n], msg, sizeof(msg));

        if (rc < 0) {
            snprintf(err, errlen, "%s: %s", source, msg);
            goto err;
        }
        if (rc > 0) {
            /* Two keys with one kid would make the choice ambiguous. */
            for (size_t j = 0; ks->keys[ks->n].kid != NULL && j < ks->n; j++) {
                if (ks->keys[j].kid != NULL && strcmp(ks->keys[j].kid, ks->keys[ks->n].kid) == 0) {
                    snprintf(err, errlen, "%s: keys[%zu]: kid \"%s\" is used twice", source, i,
                             ks->keys[j].kid);
                    ks->n++;
                    goto err;
                }
            }
            ks->n++;
        }
    }
    if (ks->n == 0) {
        snprintf(err, errlen,
                 "%s: no usable key (expected \"kty\" \"EC\" with \"crv\" \"P-256\", "
                 "or \"kty\" \"RSA\")",
                 source);
        goto err;
    }
    json_decref(doc);
    return ks;
err:
    cp_jwks_free(ks);
    json_decref(doc);
    return NULL;
}

/* Verifies an ES256 signature: r||s, 32 bytes each (RFC 7518 §3.4), never DER. */
static bool verify_es256(EC_KEY *ec, const uint8_t *digest, const uint8_t *sig, size_t sig_len)
{
    ECDSA_SIG *s;
    BIGNUM *r, *sv;
    bool ok;

    if (sig_len != 2 * P256_COORD_LEN || (s = ECDSA_SIG_new()) == NULL)
        return false;
    r = BN_bin2bn(sig, P256_COORD_LEN, NULL);
    sv = BN_bin2bn(sig + P256_COORD_LEN, P256_COORD_LEN, NULL);
    if (r == NULL || sv == NULL || !ECDSA_SIG_set0(s, r, sv)) {
        BN_free(r);
        BN_free(sv);
        ECDSA_SIG_free(s);
        return false;
    }
    ok = ECDSA_do_verify(digest, SHA256_DIGEST_LENGTH, s, ec) == 1;
    ECDSA_SIG_free(s);
    return ok;
}

/* Verifies a signature with the set's keys (see jwks.h). */
int cp_jwks_verify(const struct cp_jwks *ks, const char *kid, enum cp_jws_alg alg,
                   const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len)
{
    uint8_t digest[SHA256_DIGEST_LENGTH];
    bool tried = false;

    SHA256(msg, msg_len, digest);
    for (size_t i = 0; i < ks->n; i++) {
        const struct jwk *k = &ks->keys[i];
        bool ok;

        if (kid != NULL && (k->kid == NULL || strcmp(k->kid, kid) != 0))
            continue;
        /* The key's type decides the algorithm: an RSA key is never used for anything but
         * RS256, whatever the header says (no key confusion). */
        if (k->alg != alg)
            continue;
        tried = true;
        if (alg == CP_JWS_ES256)
            ok = verify_es256(k->ec, digest, sig, sig_len);
        else
            ok = sig_len == RSA_size(k->rsa) &&
                 RSA_verify(NID_sha256, digest, sizeof(digest), sig, sig_len, k->rsa) == 1;
        if (ok)
            return 0;
    }
    return tried ? -EBADMSG : -ENOENT;
}

/* Reads and parses `path`, and its identity for refresh. */
static struct cp_jwks *load_file(const char *path, struct stat *st, char *err, size_t errlen)
{
    struct cp_jwks *ks;
    char *data;
    size_t len;
    int r;

    if (stat(path, st) != 0) {
        snprintf(err, errlen, "--jwks %s: %s", path, strerror(errno));
        return NULL;
    }
    r = tt_file_read(path, JWKS_FILE_MAX, &data, &len);
    if (r < 0) {
        snprintf(err, errlen, "--jwks %s: %s", path,
                 r == -EFBIG ? "larger than 1 MiB" : tt_strerror(r));
        return NULL;
    }
    char source[600];
    snprintf(source, sizeof(source), "--jwks %s", path);
    ks = cp_jwks_parse(data, len, source, err, errlen);
    free(data);
    return ks;
}

static void remember(struct cp_jwks_file *f, const struct stat *st)
{
    f->dev = st->st_dev;
    f->ino = st->st_ino;
    f->size = st->st_size;
    f->mtime = st->st_mtim;
}

/* Opens the holder (see jwks.h). */
struct cp_jwks_file *cp_jwks_file_open(const char *path, char *err, size_t errlen)
{
    struct cp_jwks_file *f = calloc(1, sizeof(*f));
    struct stat st;

    if (f == NULL || (f->path = strdup(path)) == NULL) {
        free(f);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    f->keys = load_file(path, &st, err, errlen);
    if (f->keys == NULL) {
        free(f->path);
        free(f);
        return NULL;
    }
    remember(f, &st);
    pthread_mutex_init(&f->lock, NULL);
    return f;
}

/* Frees the holder. */
void cp_jwks_file_free(struct cp_jwks_file *f)
{
    if (f == NULL)
        return;
    cp_jwks_free(f->keys);
    pthread_mutex_destroy(&f->lock);
    free(f->path);
    free(f);
}

/* Re-reads the file when it changed (see jwks.h). A stat per call: cheap next to a
 * signature check. */
int cp_jwks_file_refresh(struct cp_jwks_file *f, char *err, size_t errlen)
{
    struct cp_jwks *ks;
    struct stat st;
    int rc = 0;

    if (stat(f->path, &st) != 0) {
        int e = errno;

        /* Said once while it lasts (a Sign each time would repeat it). */
        pthread_mutex_lock(&f->lock);
        rc = f->missing ? 0 : -e;
        f->missing = true;
        pthread_mutex_unlock(&f->lock);
        snprintf(err, errlen, "--jwks %s: %s (keeping the keys read before)", f->path, strerror(e));
        return rc;
    }
    pthread_mutex_lock(&f->lock);
    f->missing = false;
    if (st.st_dev == f->dev && st.st_ino == f->ino && st.st_size == f->size &&
        st.st_mtim.tv_sec == f->mtime.tv_sec && st.st_mtim.tv_nsec == f->mtime.tv_nsec)
        goto out;
    ks = load_file(f->path, &st, err, errlen);
    remember(f, &st); /* a bad file is tried once per change, not at every call */
    if (ks == NULL) {
        rc = -EINVAL;
        goto out;
    }
    cp_jwks_free(f->keys);
    f->keys = ks;
    snprintf(err, errlen, "%zu", ks->n);
    rc = 1;
out:
    pthread_mutex_unlock(&f->lock);
    return rc;
}

/* Verifies with the current set. */
int cp_jwks_file_verify(struct cp_jwks_file *f, const char *kid, enum cp_jws_alg alg,
                        const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len)
{
    int rc;

    pthread_mutex_lock(&f->lock);
    rc = cp_jwks_verify(f->keys, kid, alg, msg, msg_len, sig, sig_len);
    pthread_mutex_unlock(&f->lock);
    return rc;
}

/* The file name. */
const char *cp_jwks_file_path(const struct cp_jwks_file *f)
{
    return f->path;
}
