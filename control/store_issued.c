/* Issued-certificate records (see store.h): issued.json plus "issue" records in the
 * journal (store_journal.c). Records do not bump the version (sidecars do not receive
 * them); long-expired ones are not listed and are pruned at load and compaction. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "store.h"
#include "store_int.h"
#include "core/spiffe.h"
#include "core/util.h"

#define ISSUED_KEEP_S 86400 /* keep records this long after their not_after */

/* The one serialiser of a record: {"serial", "spiffe_id", "not_after", "issued_at", "via"},
 * as issued.json and an "issue" record hold it ("via" absent in records from before it
 * was kept). */
json_t *cp__issued_item_json(const struct cp__issued *e)
{
    json_t *o =
        json_pack("{s:s,s:s,s:I,s:I}", "serial", e->serial, "spiffe_id", e->spiffe_id, "not_after",
                  (json_int_t)e->not_after, "issued_at", (json_int_t)e->issued_at);

    if (o != NULL && e->via[0] != '\0' && json_object_set_new(o, "via", json_string(e->via)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *issued_json(const void *item)
{
    return cp__issued_item_json(item);
}

/* Parses a record and appends it (a replayed duplicate goes at the next prune). */
static int issued_from_json(struct cp_store *s, struct cp__lctx *c, json_t *o)
{
    struct cp__issued e = {0};
    const char *serial, *id, *via = "";
    int rc;

    if ((rc = cp__get_str(c, o, "serial", &serial)) != 0 ||
        (rc = cp__get_str(c, o, "spiffe_id", &id)) != 0 ||
        (rc = cp__get_int(c, o, "not_after", false, &e.not_after)) != 0 ||
        (rc = cp__get_int(c, o, "issued_at", false, &e.issued_at)) != 0)
        return rc;
    if (json_object_get(o, "via") != NULL && (rc = cp__get_str(c, o, "via", &via)) != 0)
        return rc;
    if (strlen(via) >= sizeof(e.via))
        return cp__bad_field(c, "via", "\"token\", \"renewal\", \"admin-cert\" or \"k8s-jwt\"");
    memcpy(e.via, via, strlen(via) + 1);
    if (tt_serial_normalize(serial, e.serial, sizeof(e.serial)) != 0)
        return cp__bad_field(c, "serial", "a hexadecimal serial number");
    e.spiffe_id = strdup(id);
    if (e.spiffe_id == NULL || CP__VEC_GROW(s->issued) != 0) {
        free(e.spiffe_id);
        return -ENOMEM;
    }
    s->issued.v[s->issued.n++] = e;
    return 0;
}

const struct cp__coll cp__issued_coll = {
    .file = "issued.json",
    .key = "issued",
    .size = sizeof(struct cp__issued),
    .to_json = issued_json,
    .from_json = issued_from_json,
};

/* Frees every record's strings and the array. */
void cp__issued_free(struct cp_store *s)
{
    for (size_t i = 0; i < s->issued.n; i++)
        free(s->issued.v[i].spiffe_id);
    free(s->issued.v);
}

/* Applies an "issue" record's certificate; see store_int.h. */
int cp__issued_apply(struct cp_store *s, struct cp__lctx *c, json_t *rec)
{
    json_t *o = json_object_get(rec, "issued");

    if (!json_is_object(o))
        return cp__bad_field(c, "issued", "an object");
    return issued_from_json(s, c, o);
}

/* True when the record expired more than ISSUED_KEEP_S ago at now. */
static bool issued_stale(const struct cp__issued *e, int64_t now)
{
    return e->not_after + ISSUED_KEEP_S < now;
}

static int by_serial_then_position(const void *a, const void *b)
{
    const struct cp__issued *x = *(const struct cp__issued *const *)a;
    const struct cp__issued *y = *(const struct cp__issued *const *)b;
    int c = strcmp(x->serial, y->serial);

    return c != 0 ? c : (x > y) - (x < y);
}

/* Drops records expired for more than a day and later copies of a serial (a journal
 * replayed over the file it was compacted into repeats records), keeping the order of
 * the others: O(n log n). Without memory for the sort, only the stale ones go. */
void cp__issued_prune_locked(struct cp_store *s, int64_t now)
{
    struct cp__issued **by = malloc((s->issued.n + 1) * sizeof(*by));
    size_t w = 0;

    for (size_t i = 0; by != NULL && i < s->issued.n; i++)
        by[i] = &s->issued.v[i];
    if (by != NULL) {
        qsort(by, s->issued.n, sizeof(*by), by_serial_then_position);
        for (size_t i = 1; i < s->issued.n; i++)
            if (strcmp(by[i]->serial, by[i - 1]->serial) == 0)
                by[i]->not_after = INT64_MIN / 2; /* a copy: drop below */
        free(by);
    }
    for (size_t i = 0; i < s->issued.n; i++) {
        if (issued_stale(&s->issued.v[i], now))
            free(s->issued.v[i].spiffe_id);
        else
            s->issued.v[w++] = s->issued.v[i];
    }
    s->issued.n = w;
}

/* Records an issued certificate (serial normalized) and, with secret, uses that token once, in one
 * journal record. Returns 0, TT_E_DENIED with *reason, -EINVAL for a bad serial, -ENOMEM or -errno
 * (nothing recorded, no use counted). Does not bump the version. Takes the store lock. */
static int issue(struct cp_store *s, const char *serial, const char *spiffe_id, int64_t not_after,
                 int64_t issued_at, const char *via, const char *secret, enum cp_token_err *reason)
{
    struct cp__issued e = {.not_after = not_after, .issued_at = issued_at};
    char hash[CP__SHA256_HEX];
    struct cp__token *t = NULL;
    json_t *rec;
    int why = CP_TOKEN_OK, rc;

    if (tt_serial_normalize(serial, e.serial, sizeof(e.serial)) != 0 || via == NULL ||
        strlen(via) >= sizeof(e.via))
        return -EINVAL;
    memcpy(e.via, via, strlen(via) + 1);
    e.spiffe_id = strdup(spiffe_id);
    if (e.spiffe_id == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&s->mu);
    if (secret != NULL) {
        /* Checked again under this lock hold: another Sign may have used it up since. */
        t = cp__token_check_locked(s, secret, spiffe_id, hash, &why);
        if (t == NULL) {
            rc = TT_E_DENIED;
            goto out;
        }
    }
    rc = CP__VEC_GROW(s->issued);
    if (rc != 0)
        goto out;
    rec = json_pack("{s:s,s:o}", "op", "issue", "issued", cp__issued_item_json(&e));
    if (rec != NULL && t != NULL && json_object_set_new(rec, "token", cp__token_use_json(t)) != 0) {
        json_decref(rec);
        rec = NULL;
    }
    rc = cp__journal_append_locked(s, rec);
    if (rc != 0)
        goto out;
    s->issued.v[s->issued.n++] = e;
    e.spiffe_id = NULL;
    if (t != NULL)
        t->uses_left--;
    cp__journal_maybe_compact_locked(s);
out:
    pthread_mutex_unlock(&s->mu);
    free(e.spiffe_id);
    if (reason != NULL)
        *reason = (enum cp_token_err)why;
    return rc;
}

/* Records an issued certificate made `via` a CP_VIA_* path, journaled before returning. Returns 0,
 * -EINVAL for a bad serial or via, -ENOMEM or -errno (nothing recorded). Takes the store lock. */
int cp_store_issued_add(struct cp_store *s, const char *serial, const char *spiffe_id,
                        int64_t not_after, int64_t issued_at, const char *via)
{
    return issue(s, serial, spiffe_id, not_after, issued_at, via, NULL, NULL);
}

/* Records an issued certificate and one use of the token `secret` in one journal record; see
 * store.h. Takes the store lock. */
int cp_store_issued_add_token(struct cp_store *s, const char *serial, const char *spiffe_id,
                              int64_t not_after, int64_t issued_at, const char *secret,
                              enum cp_token_err *reason)
{
    enum cp_token_err why = CP_TOKEN_UNKNOWN;
    int rc;

    if (secret == NULL) {
        *reason = CP_TOKEN_UNKNOWN;
        return TT_E_DENIED;
    }
    rc = issue(s, serial, spiffe_id, not_after, issued_at, CP_VIA_TOKEN, secret, &why);
    *reason = why;
    return rc;
}

/* What the API shows of a record: the file's object (edited in place) plus "revoked".
 * Lock held (ud is the store). NULL when out of memory. */
static json_t *issued_view(json_t *obj, const void *item, void *ud)
{
    const struct cp__issued *e = item;

    if (json_object_set_new(obj, "revoked", json_boolean(cp__revoked_locked(ud, e->serial))) != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

/* Returns a new JSON array of issued certificates but those expired for more than a day, each
 * marked revoked or not, NULL when out of memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_issued_json(struct cp_store *s)
{
    int64_t now = tt_now_unix();
    json_t *arr = json_array();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr != NULL && i < s->issued.n; i++) {
        const struct cp__issued *e = &s->issued.v[i];
        json_t *o;

        if (issued_stale(e, now))
            continue;
        o = issued_json(e);
        if (o != NULL)
            o = issued_view(o, e, s);
        if (json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}

/* The not-after of the certificate with normalized serial `norm`, from its record, or 0
 * when none is kept. Lock held. */
int64_t cp__issued_not_after_locked(struct cp_store *s, const char *norm)
{
    for (size_t i = 0; i < s->issued.n; i++)
        if (strcmp(s->issued.v[i].serial, norm) == 0)
            return s->issued.v[i].not_after;
    return 0;
}

/* Collects the serials to revoke under the lock, then revokes them one by one (each revocation
 * takes the lock, saves and notifies). See store.h. */
int cp_store_revoke_reserved(struct cp_store *s, size_t *n_revoked)
{
    char(*serials)[TT_SERIAL_MAX] = NULL;
    int64_t now = tt_now_unix();
    size_t n = 0;
    int rc = 0;

    *n_revoked = 0;
    pthread_mutex_lock(&s->mu);
    if (s->issued.n > 0 && (serials = calloc(s->issued.n, sizeof(*serials))) == NULL)
        rc = -ENOMEM;
    for (size_t i = 0; serials != NULL && i < s->issued.n; i++) {
        const struct cp__issued *e = &s->issued.v[i];

        if (tt_spiffe_reserved(e->spiffe_id) && strcmp(e->via, CP_VIA_ADMIN_CERT) != 0 &&
            e->not_after >= now && !cp__revoked_locked(s, e->serial))
            memcpy(serials[n++], e->serial, TT_SERIAL_MAX);
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = cp_store_revoke(s, serials[i]);
        if (rc == 0)
            (*n_revoked)++;
        rc = rc > 0 ? 0 : rc;
    }
    free(serials);
    return rc;
}
