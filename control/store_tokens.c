/* Bootstrap tokens (see store.h): tokens.json holds only the SHA-256 of each secret. */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/base64.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/errors.h"
#include "core/spiffe.h"
#include "store.h"
#include "store_int.h"
#include "core/util.h"

/* Lower-case hex SHA-256 of data[0..len) into out. */
void cp__sha256_hex(const void *data, size_t len, char out[CP__SHA256_HEX])
{
    uint8_t md[SHA256_DIGEST_LENGTH];

    SHA256(data, len, md);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

#define TOKEN_ID_LEN 12 /* hex digits of the hash the API shows as a token's id */

static json_t *jint_or_null(int64_t v)
{
    return v ? json_integer(v) : json_null();
}

/* The one serialiser of a token: {"sha256", "spiffe_id", "uses_left", "expires_unix"
 * (null: never), "created_unix"}, as tokens.json holds it. */
static json_t *token_json(const void *item)
{
    const struct cp__token *t = item;

    return json_pack("{s:s,s:s,s:I,s:o,s:I}", "sha256", t->hash, "spiffe_id", t->spiffe_id,
                     "uses_left", (json_int_t)t->uses_left, "expires_unix",
                     jint_or_null(t->expires), "created_unix", (json_int_t)t->created);
}

static int token_from_json(struct cp_store *s, struct cp__lctx *c, json_t *o)
{
    struct cp__token t = {0};
    const char *hash, *id;
    int rc;

    if ((rc = cp__get_str(c, o, "sha256", &hash)) != 0 ||
        (rc = cp__get_str(c, o, "spiffe_id", &id)) != 0 ||
        (rc = cp__get_int(c, o, "uses_left", false, &t.uses_left)) != 0 ||
        (rc = cp__get_int(c, o, "expires_unix", true, &t.expires)) != 0 ||
        (rc = cp__get_int(c, o, "created_unix", false, &t.created)) != 0)
        return rc;
    if (strlen(hash) != CP__SHA256_HEX - 1)
        return cp__bad_field(c, "sha256", "64 hex digits");
    memcpy(t.hash, hash, sizeof(t.hash));
    t.spiffe_id = strdup(id);
    if (t.spiffe_id == NULL || CP__VEC_GROW(s->tokens) != 0) {
        free(t.spiffe_id);
        return -ENOMEM;
    }
    s->tokens.v[s->tokens.n++] = t;
    return 0;
}

const struct cp__coll cp__tokens_coll = {
    .file = "tokens.json",
    .key = "tokens",
    .size = sizeof(struct cp__token),
    .to_json = token_json,
    .from_json = token_from_json,
};

/* Frees every token's strings and the array. */
void cp__tokens_free(struct cp_store *s)
{
    for (size_t i = 0; i < s->tokens.n; i++)
        free(s->tokens.v[i].spiffe_id);
    free(s->tokens.v);
}

static int save_tokens_locked(struct cp_store *s)
{
    return cp__coll_save(s, &cp__tokens_coll, s->tokens.v, s->tokens.n);
}

/* Returns the reason's static name ("ok", "unknown_token", "expired_token", "token_used_up",
 * "identity_mismatch"), "unknown" for a value outside the enum. */
const char *cp_token_err_name(enum cp_token_err e)
{
    switch (e) {
    case CP_TOKEN_OK:
        return "ok";
    case CP_TOKEN_UNKNOWN:
        return "unknown_token";
    case CP_TOKEN_EXPIRED:
        return "expired_token";
    case CP_TOKEN_USED_UP:
        return "token_used_up";
    case CP_TOKEN_MISMATCH:
        return "identity_mismatch";
    }
    return "unknown";
}

static void b64url(const uint8_t *in, size_t len, char *out, size_t outlen)
{
    uint8_t tmp[128];
    size_t n;

    n = EVP_EncodeBlock(tmp, in, len);
    while (n > 0 && tmp[n - 1] == '=')
        n--;
    for (size_t i = 0; i < n; i++)
        tmp[i] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : tmp[i];
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, tmp, n);
    out[n] = '\0';
    OPENSSL_cleanse(tmp, sizeof(tmp));
}

/* Draws a random secret (never starting with '-') into secret and persists only its SHA-256 with
 * spiffe_id, expiry and uses in tokens.json. Returns 0 and sets *expires_unix, or TT_E_SPIFFE,
 * -EINVAL, -ENOMEM, -errno with nothing kept (secret cleared if saving failed). */
int cp_store_token_create(struct cp_store *s, const char *spiffe_id, uint64_t ttl_ms, unsigned uses,
                          char *secret, size_t secret_len, int64_t *expires_unix)
{
    uint8_t raw[32];
    struct cp__token t = {0};
    int64_t now = tt_now_unix();
    int rc;

    if (spiffe_id == NULL || tt_spiffe_check(spiffe_id, strlen(spiffe_id), false) != 0)
        return TT_E_SPIFFE;
    if (secret_len < CP_TOKEN_SECRET_MAX || ttl_ms > (uint64_t)INT32_MAX * 1000)
        return -EINVAL;
    /* A token that starts with '-' would read as an option on a command line: draw
     * again (costs a fraction of a bit of the 256). */
    do {
        RAND_bytes(raw, sizeof(raw));
        b64url(raw, sizeof(raw), secret, secret_len);
    } while (secret[0] == '-');
    OPENSSL_cleanse(raw, sizeof(raw));
    cp__sha256_hex(secret, strlen(secret), t.hash);
    t.spiffe_id = strdup(spiffe_id);
    t.uses_left = uses ? uses : 1;
    t.expires = ttl_ms ? now + (int64_t)((ttl_ms + 999) / 1000) : 0;
    t.created = now;
    if (t.spiffe_id == NULL) {
        rc = -ENOMEM;
        goto err_clear;
    }
    pthread_mutex_lock(&s->mu);
    rc = CP__VEC_GROW(s->tokens);
    if (rc == 0) {
        s->tokens.v[s->tokens.n++] = t;
        rc = save_tokens_locked(s);
        if (rc != 0)
            s->tokens.n--;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        goto err_free_id;
    if (expires_unix)
        *expires_unix = t.expires;
    return 0;

err_free_id:
    free(t.spiffe_id);
err_clear:
    OPENSSL_cleanse(secret, secret_len);
    secret[0] = '\0';
    return rc;
}

/* Checks the secret (trailing whitespace ignored) against the stored hashes for spiffe_id and uses
 * it once; persisted before returning. Returns 0, TT_E_DENIED with *reason, or -errno when saving
 * failed (use not counted). Takes the store lock, so concurrent consumers serialize. */
int cp_store_token_consume(struct cp_store *s, const char *secret, const char *spiffe_id,
                           enum cp_token_err *reason)
{
    char hash[CP__SHA256_HEX];
    size_t len = secret ? strlen(secret) : 0;
    struct cp__token *t = NULL;
    int rc = TT_E_DENIED;

    while (len > 0 && isspace((unsigned char)secret[len - 1]))
        len--;
    *reason = CP_TOKEN_UNKNOWN;
    if (len == 0 || spiffe_id == NULL)
        return TT_E_DENIED;
    cp__sha256_hex(secret, len, hash);
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->tokens.n; i++) {
        if (CRYPTO_memcmp(s->tokens.v[i].hash, hash, sizeof(hash)) == 0) {
            t = &s->tokens.v[i];
            break;
        }
    }
    if (t == NULL) {
        *reason = CP_TOKEN_UNKNOWN;
    } else if (t->expires != 0 && tt_now_unix() >= t->expires) {
        *reason = CP_TOKEN_EXPIRED;
    } else if (t->uses_left <= 0) {
        *reason = CP_TOKEN_USED_UP;
    } else if (strcmp(t->spiffe_id, spiffe_id) != 0) {
        *reason = CP_TOKEN_MISMATCH;
    } else {
        t->uses_left--;
        rc = save_tokens_locked(s);
        if (rc != 0)
            t->uses_left++;
        *reason = rc == 0 ? CP_TOKEN_OK : CP_TOKEN_UNKNOWN;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* What the API shows of a token, from the file's object (consumed): the hash replaced by
 * its first TOKEN_ID_LEN digits as "id" (first), plus "expired" at *(int64_t *)now. NULL
 * when out of memory. */
static json_t *token_view(json_t *file, const void *item, void *now)
{
    const struct cp__token *t = item;
    json_t *view = json_pack("{s:s%}", "id", t->hash, (size_t)TOKEN_ID_LEN);
    bool expired = t->expires != 0 && *(const int64_t *)now >= t->expires;

    if (view == NULL || json_object_del(file, "sha256") != 0 ||
        json_object_update(view, file) != 0 ||
        json_object_set_new(view, "expired", json_boolean(expired)) != 0) {
        json_decref(view);
        view = NULL;
    }
    json_decref(file);
    return view;
}

/* Returns a new JSON array describing every token (token_view: never the hash nor the secret),
 * NULL when out of memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_tokens_json(struct cp_store *s)
{
    int64_t now = tt_now_unix();
    json_t *arr;

    pthread_mutex_lock(&s->mu);
    arr = cp__coll_array(&cp__tokens_coll, s->tokens.v, s->tokens.n, token_view, &now);
    pthread_mutex_unlock(&s->mu);
    return arr;
}
