/* Issued-certificate records (see store.h): issued.json. Records do not bump the version
 * (sidecars do not receive them); long-expired ones are pruned on the next write. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "store_int.h"
#include "core/spiffe.h"
#include "core/util.h"

#define ISSUED_KEEP_S 86400 /* keep records this long after their not_after */

/* The one serialiser of a record: {"serial", "spiffe_id", "not_after", "issued_at", "via"},
 * as issued.json holds it ("via" absent in records from before it was kept). */
static json_t *issued_json(const void *item)
{
    const struct cp__issued *e = item;
    json_t *o =
        json_pack("{s:s,s:s,s:I,s:I}", "serial", e->serial, "spiffe_id", e->spiffe_id, "not_after",
                  (json_int_t)e->not_after, "issued_at", (json_int_t)e->issued_at);

    if (o != NULL && e->via[0] != '\0' && json_object_set_new(o, "via", json_string(e->via)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

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
        return cp__bad_field(c, "via", "\"token\", \"renewal\" or \"admin-cert\"");
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

/* Records an issued certificate (serial normalized) in issued.json, first pruning records expired
 * for over a day. Returns 0, -EINVAL for a bad serial, -ENOMEM or -errno (nothing recorded). Does
 * not bump the version. Takes the store lock. */
int cp_store_issued_add(struct cp_store *s, const char *serial, const char *spiffe_id,
                        int64_t not_after, int64_t issued_at, const char *via)
{
    struct cp__issued e = {.not_after = not_after, .issued_at = issued_at};
    int64_t now = tt_now_unix();
    size_t w = 0;
    int rc;

    if (tt_serial_normalize(serial, e.serial, sizeof(e.serial)) != 0 || via == NULL ||
        strlen(via) >= sizeof(e.via))
        return -EINVAL;
    memcpy(e.via, via, strlen(via) + 1);
    e.spiffe_id = strdup(spiffe_id);
    if (e.spiffe_id == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&s->mu);
    /* Prune records long expired so the file does not grow without bound. */
    for (size_t i = 0; i < s->issued.n; i++) {
        if (s->issued.v[i].not_after + ISSUED_KEEP_S < now)
            free(s->issued.v[i].spiffe_id);
        else
            s->issued.v[w++] = s->issued.v[i];
    }
    s->issued.n = w;
    rc = CP__VEC_GROW(s->issued);
    if (rc == 0) {
        s->issued.v[s->issued.n++] = e;
        rc = cp__coll_save(s, &cp__issued_coll, s->issued.v, s->issued.n);
        if (rc != 0)
            s->issued.n--;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        free(e.spiffe_id);
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

/* Returns a new JSON array of issued certificates, each marked revoked or not, NULL when out of
 * memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_issued_json(struct cp_store *s)
{
    json_t *arr;

    pthread_mutex_lock(&s->mu);
    arr = cp__coll_array(&cp__issued_coll, s->issued.v, s->issued.n, issued_view, s);
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
