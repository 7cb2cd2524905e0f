/* Bootstrap tokens (see store.h): tokens.json holds only the SHA-256 of each secret; every
 * change since it was written is a record in the journal (store_journal.c). An index by
 * hash makes a lookup cost the same with 10,000 tokens as with 10. */
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

/* ---- the index ---- */

/* The slot a hash starts probing at: its first 16 hex digits are already uniform. */
static size_t idx_home(const char *hash, size_t cap)
{
    uint64_t h = 0;

    for (int i = 0; i < 16; i++)
        h = h << 4 | (uint64_t)(isdigit((unsigned char)hash[i]) ? hash[i] - '0'
                                                                : (hash[i] | 0x20) - 'a' + 10);
    return (size_t)h & (cap - 1);
}

/* Puts position pos of tokens.v into the index (which has room). */
static void idx_put(struct cp_store *s, size_t pos)
{
    size_t i = idx_home(s->tokens.v[pos].hash, s->token_idx.cap);

    while (s->token_idx.slot[i] != 0)
        i = (i + 1) & (s->token_idx.cap - 1);
    s->token_idx.slot[i] = pos + 1;
}

/* Rebuilds the index for tokens.v[0..n) with room for want tokens. Returns 0 or -ENOMEM
 * (the old index is then dropped: lookups scan until the next rebuild). */
static int idx_rebuild(struct cp_store *s, size_t want)
{
    size_t cap = 16;

    while (cap < 2 * want)
        cap *= 2;
    free(s->token_idx.slot);
    s->token_idx.slot = calloc(cap, sizeof(*s->token_idx.slot));
    s->token_idx.cap = s->token_idx.slot ? cap : 0;
    if (s->token_idx.slot == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < s->tokens.n; i++)
        idx_put(s, i);
    return 0;
}

/* Finds the token with this hash, through the index (a scan when it is missing). The hash
 * is not secret (it is stored on disk): a lookup that is not constant-time reveals
 * nothing of a secret. Lock held. */
struct cp__token *cp__token_find_locked(struct cp_store *s, const char hash[CP__SHA256_HEX])
{
    if (s->token_idx.cap == 0) {
        for (size_t i = 0; i < s->tokens.n; i++)
            if (strcmp(s->tokens.v[i].hash, hash) == 0)
                return &s->tokens.v[i];
        return NULL;
    }
    for (size_t i = idx_home(hash, s->token_idx.cap); s->token_idx.slot[i] != 0;
         i = (i + 1) & (s->token_idx.cap - 1)) {
        struct cp__token *t = &s->tokens.v[s->token_idx.slot[i] - 1];

        if (strcmp(t->hash, hash) == 0)
            return t;
    }
    return NULL;
}

/* Appends t (ownership of its strings taken on success) and indexes it. Returns 0 or
 * -ENOMEM (nothing added). */
static int token_append(struct cp_store *s, const struct cp__token *t)
{
    if (CP__VEC_GROW(s->tokens) != 0)
        return -ENOMEM;
    s->tokens.v[s->tokens.n++] = *t;
    if (s->token_idx.cap == 0 || 2 * s->tokens.n > s->token_idx.cap)
        idx_rebuild(s, s->tokens.n * 2); /* a failure leaves lookups scanning */
    else
        idx_put(s, s->tokens.n - 1);
    return 0;
}

/* Removes tokens.v[pos] (freeing its strings), keeping the order, and rebuilds the index. */
static void token_remove(struct cp_store *s, size_t pos)
{
    free(s->tokens.v[pos].spiffe_id);
    memmove(&s->tokens.v[pos], &s->tokens.v[pos + 1],
            (s->tokens.n - pos - 1) * sizeof(*s->tokens.v));
    s->tokens.n--;
    idx_rebuild(s, s->tokens.n);
}

/* True when t has no use left or is past its expiry at now. */
bool cp__token_dead(const struct cp__token *t, int64_t now)
{
    return t->uses_left <= 0 || (t->expires != 0 && now >= t->expires);
}

/* Drops dead tokens, keeping the order of the others, and rebuilds the index. */
int cp__tokens_prune_locked(struct cp_store *s, int64_t now)
{
    size_t w = 0;

    for (size_t i = 0; i < s->tokens.n; i++) {
        if (cp__token_dead(&s->tokens.v[i], now))
            free(s->tokens.v[i].spiffe_id);
        else
            s->tokens.v[w++] = s->tokens.v[i];
    }
    s->tokens.n = w;
    return idx_rebuild(s, s->tokens.n);
}

/* ---- the file and the journal ---- */

static json_t *jint_or_null(int64_t v)
{
    return v ? json_integer(v) : json_null();
}

/* The one serialiser of a token: {"sha256", "spiffe_id", "uses_left", "expires_unix"
 * (null: never), "created_unix"}, as tokens.json and a "token_create" record hold it. */
static json_t *token_json(const void *item)
{
    const struct cp__token *t = item;

    return json_pack("{s:s,s:s,s:I,s:o,s:I}", "sha256", t->hash, "spiffe_id", t->spiffe_id,
                     "uses_left", (json_int_t)t->uses_left, "expires_unix",
                     jint_or_null(t->expires), "created_unix", (json_int_t)t->created);
}

/* Reads "sha256" of o into hash: 64 hex digits. Returns 0 or -EINVAL with err set. */
static int get_hash(struct cp__lctx *c, json_t *o, char hash[CP__SHA256_HEX])
{
    const char *h;
    int rc = cp__get_str(c, o, "sha256", &h);

    if (rc != 0)
        return rc;
    if (strlen(h) != CP__SHA256_HEX - 1 || strspn(h, "0123456789abcdef") != CP__SHA256_HEX - 1)
        return cp__bad_field(c, "sha256", "64 lower-case hex digits");
    memcpy(hash, h, CP__SHA256_HEX);
    return 0;
}

/* Parses a token object and adds it unless its hash is already known (replaying a
 * creation that tokens.json already holds changes nothing). */
static int token_from_json(struct cp_store *s, struct cp__lctx *c, json_t *o)
{
    struct cp__token t = {0};
    const char *id;
    int rc;

    if ((rc = get_hash(c, o, t.hash)) != 0 || (rc = cp__get_str(c, o, "spiffe_id", &id)) != 0 ||
        (rc = cp__get_int(c, o, "uses_left", false, &t.uses_left)) != 0 ||
        (rc = cp__get_int(c, o, "expires_unix", true, &t.expires)) != 0 ||
        (rc = cp__get_int(c, o, "created_unix", false, &t.created)) != 0)
        return rc;
    if (cp__token_find_locked(s, t.hash) != NULL)
        return 0;
    t.spiffe_id = strdup(id);
    if (t.spiffe_id == NULL || token_append(s, &t) != 0) {
        free(t.spiffe_id);
        return -ENOMEM;
    }
    return 0;
}

const struct cp__coll cp__tokens_coll = {
    .file = "tokens.json",
    .key = "tokens",
    .size = sizeof(struct cp__token),
    .to_json = token_json,
    .from_json = token_from_json,
};

/* The {"sha256", "uses_left"} of a record that uses t once: the count after the use, so
 * that replaying it twice counts one use. */
json_t *cp__token_use_json(const struct cp__token *t)
{
    return json_pack("{s:s,s:I}", "sha256", t->hash, "uses_left", (json_int_t)(t->uses_left - 1));
}

/* Applies a token record; see store_int.h. A use sets uses_left to the record's count
 * when that is lower; a use or deletion of an unknown token (pruned before a crash cut
 * the compaction short) changes nothing. */
int cp__tokens_apply(struct cp_store *s, struct cp__lctx *c, const char *op, json_t *rec)
{
    char hash[CP__SHA256_HEX];
    struct cp__token *t;
    json_t *o;
    int64_t left;
    int rc;

    if (strcmp(op, "token_create") == 0) {
        o = json_object_get(rec, "token");
        if (!json_is_object(o))
            return cp__bad_field(c, "token", "an object");
        return token_from_json(s, c, o);
    }
    o = strcmp(op, "issue") == 0 ? json_object_get(rec, "token") : rec;
    if (o == NULL)
        return 0; /* an issue without a token: a renewal */
    if (!json_is_object(o))
        return cp__bad_field(c, "token", "an object");
    if ((rc = get_hash(c, o, hash)) != 0)
        return rc;
    t = cp__token_find_locked(s, hash);
    if (strcmp(op, "token_delete") == 0) {
        if (t != NULL)
            token_remove(s, (size_t)(t - s->tokens.v));
        return 0;
    }
    if ((rc = cp__get_int(c, o, "uses_left", false, &left)) != 0)
        return rc;
    if (t != NULL && left < t->uses_left)
        t->uses_left = left;
    return 0;
}

/* Frees every token's strings, the array and the index. */
void cp__tokens_free(struct cp_store *s)
{
    for (size_t i = 0; i < s->tokens.n; i++)
        free(s->tokens.v[i].spiffe_id);
    free(s->tokens.v);
    free(s->token_idx.slot);
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

/* Draws a random secret (never starting with '-') into secret and journals only its SHA-256 with
 * spiffe_id, expiry and uses. Returns 0 and sets *expires_unix, or TT_E_SPIFFE, -EINVAL, -ENOMEM,
 * -errno with nothing kept (secret cleared if saving failed). */
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
    rc = cp__journal_append_locked(
        s, json_pack("{s:s,s:o}", "op", "token_create", "token", token_json(&t)));
    if (rc == 0) {
        rc = token_append(s, &t);
        /* Out of memory after the record is saved: the next load has the token. */
        cp__journal_maybe_compact_locked(s);
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

/* Finds the token for secret (trailing whitespace ignored) and checks it for spiffe_id; see
 * store_int.h. */
struct cp__token *cp__token_check_locked(struct cp_store *s, const char *secret,
                                         const char *spiffe_id, char hash[CP__SHA256_HEX],
                                         int *reason)
{
    size_t len = secret ? strlen(secret) : 0;
    struct cp__token *t;

    while (len > 0 && isspace((unsigned char)secret[len - 1]))
        len--;
    *reason = CP_TOKEN_UNKNOWN;
    if (len == 0 || spiffe_id == NULL)
        return NULL;
    cp__sha256_hex(secret, len, hash);
    t = cp__token_find_locked(s, hash);
    if (t == NULL)
        *reason = CP_TOKEN_UNKNOWN;
    else if (t->expires != 0 && tt_now_unix() >= t->expires)
        *reason = CP_TOKEN_EXPIRED;
    else if (t->uses_left <= 0)
        *reason = CP_TOKEN_USED_UP;
    else if (strcmp(t->spiffe_id, spiffe_id) != 0)
        *reason = CP_TOKEN_MISMATCH;
    else
        *reason = CP_TOKEN_OK;
    return *reason == CP_TOKEN_OK ? t : NULL;
}

/* Checks the secret for spiffe_id without using it. Returns 0 or TT_E_DENIED with *reason. Takes
 * the store lock. */
int cp_store_token_check(struct cp_store *s, const char *secret, const char *spiffe_id,
                         enum cp_token_err *reason)
{
    char hash[CP__SHA256_HEX];
    int why;
    struct cp__token *t;

    pthread_mutex_lock(&s->mu);
    t = cp__token_check_locked(s, secret, spiffe_id, hash, &why);
    pthread_mutex_unlock(&s->mu);
    *reason = (enum cp_token_err)why;
    return t != NULL ? 0 : TT_E_DENIED;
}

/* Checks the secret for spiffe_id and uses it once, journaled before returning. Returns 0,
 * TT_E_DENIED with *reason, or -errno when saving failed (use not counted; *reason
 * CP_TOKEN_UNKNOWN). Takes the store lock, so concurrent consumers serialize. */
int cp_store_token_consume(struct cp_store *s, const char *secret, const char *spiffe_id,
                           enum cp_token_err *reason)
{
    char hash[CP__SHA256_HEX];
    struct cp__token *t;
    int why, rc = TT_E_DENIED;
    json_t *rec;

    pthread_mutex_lock(&s->mu);
    t = cp__token_check_locked(s, secret, spiffe_id, hash, &why);
    if (t != NULL) {
        rec = cp__token_use_json(t);
        if (rec != NULL && json_object_set_new(rec, "op", json_string("token_use")) != 0) {
            json_decref(rec);
            rec = NULL;
        }
        rc = cp__journal_append_locked(s, rec);
        if (rc == 0) {
            t->uses_left--;
            cp__journal_maybe_compact_locked(s);
        } else {
            why = CP_TOKEN_UNKNOWN;
        }
    }
    pthread_mutex_unlock(&s->mu);
    *reason = (enum cp_token_err)why;
    return rc;
}

/* Deletes the one live token whose hash starts with prefix; see store.h. Takes the store lock. */
int cp_store_token_delete(struct cp_store *s, const char *prefix, char *id_out, size_t id_len)
{
    char want[CP__SHA256_HEX];
    size_t len = prefix ? strlen(prefix) : 0, found = 0, pos = 0;
    int64_t now = tt_now_unix();
    int rc;

    if (len < CP_TOKEN_ID_MIN || len > CP__SHA256_HEX - 1 ||
        strspn(prefix, "0123456789abcdefABCDEF") != len)
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        want[i] = (char)tolower((unsigned char)prefix[i]);
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->tokens.n; i++) {
        if (!cp__token_dead(&s->tokens.v[i], now) && strncmp(s->tokens.v[i].hash, want, len) == 0) {
            found++;
            pos = i;
        }
    }
    if (found == 0) {
        rc = -ENOENT;
    } else if (found > 1) {
        rc = -EEXIST;
    } else {
        rc = cp__journal_append_locked(
            s, json_pack("{s:s,s:s}", "op", "token_delete", "sha256", s->tokens.v[pos].hash));
        if (rc == 0) {
            if (id_out != NULL && id_len > 0)
                snprintf(id_out, id_len, "%.*s", TOKEN_ID_LEN, s->tokens.v[pos].hash);
            token_remove(s, pos);
            cp__journal_maybe_compact_locked(s);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* What the API shows of a token, from the file's object (consumed): the hash replaced by
 * its first TOKEN_ID_LEN digits as "id" (first), plus "expired" at now. NULL when out of
 * memory. */
static json_t *token_view(json_t *file, const struct cp__token *t, int64_t now)
{
    json_t *view = json_pack("{s:s%}", "id", t->hash, (size_t)TOKEN_ID_LEN);

    if (view == NULL || file == NULL || json_object_del(file, "sha256") != 0 ||
        json_object_update(view, file) != 0 ||
        json_object_set_new(view, "expired", json_boolean(cp__token_dead(t, now))) != 0) {
        json_decref(view);
        view = NULL;
    }
    json_decref(file);
    return view;
}

/* Returns a new JSON array describing every live token (token_view: never the hash nor the
 * secret), NULL when out of memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_tokens_json(struct cp_store *s)
{
    int64_t now = tt_now_unix();
    json_t *arr = json_array();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr != NULL && i < s->tokens.n; i++) {
        const struct cp__token *t = &s->tokens.v[i];

        if (cp__token_dead(t, now))
            continue;
        if (json_array_append_new(arr, token_view(token_json(t), t, now)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}
