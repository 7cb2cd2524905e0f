/* The control plane's state (see store.h and store_int.h): the store itself and its lock,
 * the version (state.json) and its change callback, the trust bundle, the policy document
 * (policy.json), the snapshot sidecars receive, and the refusal counters. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/errors.h"
#include "policy/policy.h"
#include "core/spiffe.h"
#include "store.h"
#include "core/util.h"
#include "store_file.h"
#include "store_int.h"

#define POLICY_FILE_MAX (256 * 1024 * 1024)

/* Doubles the capacity of *v when it is full. Returns 0 or -ENOMEM (*v unchanged). */
int cp__vec_grow(void **v, size_t *cap, size_t n, size_t size)
{
    size_t ncap;
    void *p;

    if (n < *cap)
        return 0;
    ncap = *cap ? *cap * 2 : 8;
    p = realloc(*v, ncap * size);
    if (p == NULL)
        return -ENOMEM;
    *v = p;
    *cap = ncap;
    return 0;
}

/* ---- version ---- */

static int save_state_locked(struct cp_store *s)
{
    return cp__store_write_json(
        s, "state.json",
        json_pack("{s:I,s:s}", "version", (json_int_t)s->version, "bundle_sha256", s->bundle_sha));
}

/* Bumps the version and persists it first; see store_int.h. */
int cp__store_bump_locked(struct cp_store *s)
{
    int rc;

    s->version++;
    rc = save_state_locked(s);
    if (rc != 0)
        s->version--;
    return rc;
}

/* Reads the change callback, releases the lock, then calls it with version when that is not 0. */
void cp__store_unlock_notify(struct cp_store *s, uint64_t version)
{
    cp_store_change_cb cb = s->cb;
    void *ud = s->cb_ud;

    pthread_mutex_unlock(&s->mu);
    if (cb != NULL && version != 0)
        cb(ud, version);
}

static int load_state(struct cp_store *s, char *err, size_t errlen)
{
    char path[4096];
    json_t *doc, *v, *b;
    int rc = cp__store_read_json(s, "state.json", &doc, path, sizeof(path), err, errlen);

    if (rc != 0 || doc == NULL)
        return rc;
    v = json_object_get(doc, "version");
    b = json_object_get(doc, "bundle_sha256");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        tt_errf(err, errlen, "%s: version: expected a non-negative integer", path);
        rc = -EINVAL;
    } else if (!json_is_string(b) || strlen(json_string_value(b)) >= sizeof(s->bundle_sha)) {
        tt_errf(err, errlen, "%s: bundle_sha256: expected a string", path);
        rc = -EINVAL;
    } else {
        s->version = (uint64_t)json_integer_value(v);
        snprintf(s->bundle_sha, sizeof(s->bundle_sha), "%s", json_string_value(b));
    }
    json_decref(doc);
    return rc;
}

/* ---- open, free ---- */

static int load_policy(struct cp_store *s, char *err, size_t errlen)
{
    char path[4096];
    char *text = NULL;
    size_t len;
    struct tt_policy *p;
    int rc;

    rc = cp__store_path(s, "policy.json", path, sizeof(path));
    if (rc == 0)
        rc = tt_file_read(path, POLICY_FILE_MAX, &text, &len);
    if (rc == -ENOENT)
        return 0;
    if (rc != 0) {
        tt_errf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    p = tt_policy_parse(text, len, path, err, errlen);
    if (p == NULL) {
        free(text);
        return TT_E_POLICY;
    }
    tt_policy_unref(p);
    s->policy = text;
    return 0;
}

/* Loads the state directory; see store.h. */
struct cp_store *cp_store_open(const char *dir, char *err, size_t errlen)
{
    struct cp_store *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        tt_errf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->reg_grace_ms = CP_REG_GRACE_DEFAULT_MS;
    s->journal.fd = -1;
    s->dir = strdup(dir);
    s->bundle_pem = strdup("");
    if (s->dir == NULL || s->bundle_pem == NULL) {
        tt_errf(err, errlen, "out of memory");
        goto err_free;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        tt_errf(err, errlen, "%s: %s", dir, strerror(errno));
        goto err_free;
    }
    if (load_state(s, err, errlen) != 0 || cp__coll_load(s, &cp__tokens_coll, err, errlen) != 0 ||
        cp__coll_load(s, &cp__revoked_coll, err, errlen) != 0 ||
        cp__coll_load(s, &cp__services_coll, err, errlen) != 0 ||
        cp__coll_load(s, &cp__issued_coll, err, errlen) != 0 ||
        cp__journal_load(s, err, errlen) != 0 || load_policy(s, err, errlen) != 0)
        goto err_free;
    /* Used-up and expired tokens and long-expired records go now; the files lose them at
     * the next compaction. */
    cp__tokens_prune_locked(s, tt_now_unix());
    cp__issued_prune_locked(s, tt_now_unix());
    cp__journal_maybe_compact_locked(s);
    return s;

err_free:
    cp_store_free(s);
    return NULL;
}

/* Frees the store and everything it holds, writing nothing. Accepts NULL. No other thread may still
 * be using it. */
void cp_store_free(struct cp_store *s)
{
    if (s == NULL)
        return;
    cp__journal_close(s);
    cp__tokens_free(s);
    free(s->revoked.v);
    cp__services_free(s);
    cp__issued_free(s);
    cp__sidecars_free(s);
    for (size_t i = 0; i < s->refusals.n; i++)
        free(s->refusals.v[i].reason);
    free(s->refusals.v);
    free(s->policy);
    free(s->bundle_pem);
    free(s->dir);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Returns the state directory the store was opened on, owned by the store. */
const char *cp_store_dir(const struct cp_store *s)
{
    return s->dir;
}

/* Installs cb with ud as the change callback (NULL removes it); later bumps call it with no lock
 * held. Takes the store lock. */
void cp_store_set_change_cb(struct cp_store *s, cp_store_change_cb cb, void *ud)
{
    pthread_mutex_lock(&s->mu);
    s->cb = cb;
    s->cb_ud = ud;
    pthread_mutex_unlock(&s->mu);
}

/* Returns the current snapshot version. Takes the store lock. */
uint64_t cp_store_version(struct cp_store *s)
{
    uint64_t v;

    pthread_mutex_lock(&s->mu);
    v = s->version;
    pthread_mutex_unlock(&s->mu);
    return v;
}

/* ---- bundle ---- */

/* Keeps a copy of pem as the bundle sidecars receive; when its SHA-256 differs from state.json's,
 * bumps and persists the version and calls the change callback after unlocking. Returns 0, -ENOMEM,
 * or -errno when persisting failed (the PEM is kept, digest and version are not). */
int cp_store_bundle_set(struct cp_store *s, const char *pem)
{
    char sha[sizeof(s->bundle_sha)];
    char *copy = strdup(pem);
    uint64_t v = 0;
    int rc = 0;

    if (copy == NULL)
        return -ENOMEM;
    cp__sha256_hex(pem, strlen(pem), sha);
    pthread_mutex_lock(&s->mu);
    free(s->bundle_pem);
    s->bundle_pem = copy;
    if (strcmp(sha, s->bundle_sha) != 0) {
        char old[sizeof(s->bundle_sha)];

        memcpy(old, s->bundle_sha, sizeof(old));
        memcpy(s->bundle_sha, sha, sizeof(sha));
        rc = cp__store_bump_locked(s);
        if (rc != 0)
            memcpy(s->bundle_sha, old, sizeof(old));
        else
            v = s->version;
    }
    cp__store_unlock_notify(s, v);
    return rc;
}

/* Returns a copy of the bundle PEM ("" when none was set; caller frees), or NULL when out of
 * memory. */
char *cp_store_bundle_get(struct cp_store *s)
{
    char *copy;

    pthread_mutex_lock(&s->mu);
    copy = strdup(s->bundle_pem);
    pthread_mutex_unlock(&s->mu);
    return copy;
}

/* ---- policy ---- */

static int save_policy_locked(struct cp_store *s)
{
    char path[4096];
    int rc = cp__store_path(s, "policy.json", path, sizeof(path));

    return rc != 0 ? rc : cp_atomic_write(path, s->policy, strlen(s->policy), 0600);
}

/* Validates text[0..len) with tt_policy_parse() and, when it differs from the stored one, stores a
 * copy, persists policy.json, bumps the version and calls the change callback after unlocking.
 * Returns 0, TT_E_POLICY with the parser's message in err, or -errno (nothing kept). */
int cp_store_policy_set(struct cp_store *s, const char *text, size_t len, char *err, size_t errlen)
{
    struct tt_policy *p = tt_policy_parse(text, len, "policy", err, errlen);
    char *copy, *old;
    uint64_t v = 0;
    int rc;

    if (p == NULL)
        return TT_E_POLICY;
    tt_policy_unref(p);
    copy = malloc(len + 1);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, text, len);
    copy[len] = '\0';
    pthread_mutex_lock(&s->mu);
    old = s->policy;
    if (old != NULL && strcmp(old, copy) == 0) {
        free(copy);
        rc = 0;
    } else if ((rc = cp__store_bump_locked(s)) == 0) {
        s->policy = copy;
        rc = save_policy_locked(s);
        if (rc != 0) {
            s->policy = old;
            free(copy);
        } else {
            free(old);
            v = s->version;
        }
    } else {
        free(copy);
    }
    cp__store_unlock_notify(s, v);
    if (rc != 0)
        tt_errf(err, errlen, "saving policy.json: %s", strerror(-rc));
    return rc;
}

/* Returns a heap copy of the policy document (caller frees), or NULL when none was set or the copy
 * failed. Takes the store lock. */
char *cp_store_policy_get(struct cp_store *s)
{
    char *t;

    pthread_mutex_lock(&s->mu);
    t = s->policy ? strdup(s->policy) : NULL;
    pthread_mutex_unlock(&s->mu);
    return t;
}

/* ---- snapshot ---- */

/* Frees a snapshot and every string it holds. Accepts NULL. */
void cp_snapshot_free(struct cp_snapshot *snap)
{
    if (snap == NULL)
        return;
    free(snap->bundle_pem);
    free(snap->policy_json);
    for (size_t i = 0; i < snap->n_services; i++) {
        free(snap->services[i].address);
        free(snap->services[i].spiffe_id);
        free(snap->services[i].service_address);
    }
    free(snap->services);
    for (size_t i = 0; i < snap->n_revoked; i++)
        free(snap->revoked[i]);
    free(snap->revoked);
    free(snap->revoked_not_after);
    free(snap);
}

/* Copies version, bundle, policy, services (cp__services_snapshot_locked: operator entries win)
 * and revoked serials under one lock hold. Returns a snapshot the caller frees with
 * cp_snapshot_free(), or NULL on allocation failure. */
struct cp_snapshot *cp_store_snapshot(struct cp_store *s)
{
    struct cp_snapshot *snap = calloc(1, sizeof(*snap));
    bool ok;

    if (snap == NULL)
        return NULL;
    pthread_mutex_lock(&s->mu);
    snap->version = s->version;
    snap->bundle_pem = strdup(s->bundle_pem);
    snap->policy_json = s->policy ? strdup(s->policy) : NULL;
    snap->revoked = calloc(s->revoked.n + 1, sizeof(*snap->revoked));
    snap->revoked_not_after = calloc(s->revoked.n + 1, sizeof(*snap->revoked_not_after));
    ok = snap->bundle_pem && (!s->policy || snap->policy_json) && snap->revoked &&
         snap->revoked_not_after && cp__services_snapshot_locked(s, snap) == 0;
    for (size_t i = 0; ok && i < s->revoked.n; i++) {
        snap->revoked[i] = strdup(s->revoked.v[i].serial);
        /* Revocations from before not_after was kept: the issue record may still know. */
        snap->revoked_not_after[i] = s->revoked.v[i].not_after
                                         ? s->revoked.v[i].not_after
                                         : cp__issued_not_after_locked(s, s->revoked.v[i].serial);
        snap->n_revoked++;
        ok = snap->revoked[i] != NULL;
    }
    pthread_mutex_unlock(&s->mu);
    if (!ok) {
        cp_snapshot_free(snap);
        return NULL;
    }
    return snap;
}

/* ---- counters ---- */

/* Adds one to the refusal counter for reason (copied on first use; dropped silently when that
 * allocation fails). Lock held. */
void cp__count_refusal_locked(struct cp_store *s, const char *reason)
{
    for (size_t i = 0; i < s->refusals.n; i++) {
        if (strcmp(s->refusals.v[i].reason, reason) == 0) {
            s->refusals.v[i].n++;
            return;
        }
    }
    if (CP__VEC_GROW(s->refusals) == 0) {
        char *r = strdup(reason);

        if (r != NULL)
            s->refusals.v[s->refusals.n++] = (struct cp__refusal){r, 1};
    }
}

/* Adds one to the refusal counter for reason. Takes the store lock. */
void cp_store_count_refusal(struct cp_store *s, const char *reason)
{
    pthread_mutex_lock(&s->mu);
    cp__count_refusal_locked(s, reason);
    pthread_mutex_unlock(&s->mu);
}

/* Returns a new JSON object of counters (version, issued, tokens, sidecars, services, revocations,
 * policy_set, refusals by reason and their total), NULL when out of memory; the caller decrefs it.
 * Takes the store lock. */
json_t *cp_store_stats_json(struct cp_store *s)
{
    json_t *refusals = json_object();
    json_t *doc;
    uint64_t total = 0;
    size_t live_tokens = 0;
    int64_t now = tt_now_unix();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->tokens.n; i++)
        live_tokens += !cp__token_dead(&s->tokens.v[i], now);
    for (size_t i = 0; refusals && i < s->refusals.n; i++) {
        json_object_set_new(refusals, s->refusals.v[i].reason,
                            json_integer((json_int_t)s->refusals.v[i].n));
        total += s->refusals.v[i].n;
    }
    doc = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:I,s:o}", "version", (json_int_t)s->version,
                    "issued", (json_int_t)s->issued.n, "tokens", (json_int_t)live_tokens,
                    "sidecars_connected", (json_int_t)s->sidecars.n, "services",
                    (json_int_t)s->services.n, "revocations", (json_int_t)s->revoked.n,
                    "policy_set", s->policy != NULL, "refusals_total", (json_int_t)total,
                    "refusals", refusals ? refusals : json_object());
    pthread_mutex_unlock(&s->mu);
    return doc;
}
