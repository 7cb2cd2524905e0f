/* Revoked serials (see store.h): revocations.json. Each revocation bumps the version:
 * sidecars receive the list. */
#include <errno.h>
#include <string.h>

#include "store.h"
#include "store_int.h"
#include "core/util.h"

/* The one serialiser of a revocation: {"serial", "revoked_unix", "not_after"} (not_after
 * absent when unknown), for the file and the API. */
static json_t *revoked_json(const void *item)
{
    const struct cp__revoked *r = item;
    json_t *o = json_pack("{s:s,s:I}", "serial", r->serial, "revoked_unix", (json_int_t)r->at);

    if (o != NULL && r->not_after != 0 &&
        json_object_set_new(o, "not_after", json_integer(r->not_after)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int revoked_from_json(struct cp_store *s, struct cp__lctx *c, json_t *o)
{
    struct cp__revoked r = {0};
    const char *serial;
    int rc;

    if ((rc = cp__get_str(c, o, "serial", &serial)) != 0 ||
        (rc = cp__get_int(c, o, "revoked_unix", false, &r.at)) != 0)
        return rc;
    if (json_object_get(o, "not_after") != NULL &&
        (rc = cp__get_int(c, o, "not_after", false, &r.not_after)) != 0)
        return rc;
    if (tt_serial_normalize(serial, r.serial, sizeof(r.serial)) != 0)
        return cp__bad_field(c, "serial", "a hexadecimal serial number");
    if (CP__VEC_GROW(s->revoked) != 0)
        return -ENOMEM;
    s->revoked.v[s->revoked.n++] = r;
    return 0;
}

const struct cp__coll cp__revoked_coll = {
    .file = "revocations.json",
    .key = "revoked",
    .size = sizeof(struct cp__revoked),
    .to_json = revoked_json,
    .from_json = revoked_from_json,
};

/* True when the normalized serial is in the list. Lock held. */
bool cp__revoked_locked(struct cp_store *s, const char *norm)
{
    for (size_t i = 0; i < s->revoked.n; i++)
        if (strcmp(s->revoked.v[i].serial, norm) == 0)
            return true;
    return false;
}

/* Normalizes serial and adds it to revocations.json, bumping the version and calling the change
 * callback after unlocking. Returns 0 when added, 1 when already revoked, -EINVAL for a bad serial,
 * or -errno (nothing added). Takes the store lock. */
int cp_store_revoke(struct cp_store *s, const char *serial)
{
    struct cp__revoked r = {.at = tt_now_unix()};
    uint64_t v = 0;
    int rc;

    if (tt_serial_normalize(serial, r.serial, sizeof(r.serial)) != 0)
        return -EINVAL;
    pthread_mutex_lock(&s->mu);
    r.not_after = cp__issued_not_after_locked(s, r.serial);
    if (cp__revoked_locked(s, r.serial)) {
        rc = 1;
    } else if ((rc = CP__VEC_GROW(s->revoked)) == 0 && (rc = cp__store_bump_locked(s)) == 0) {
        s->revoked.v[s->revoked.n++] = r;
        rc = cp__coll_save(s, &cp__revoked_coll, s->revoked.v, s->revoked.n);
        if (rc != 0)
            s->revoked.n--;
        else
            v = s->version;
    }
    cp__store_unlock_notify(s, v);
    return rc;
}

/* True when the normalized serial is in the revocation list; false for a malformed serial. Takes
 * the store lock. */
bool cp_store_is_revoked(struct cp_store *s, const char *serial)
{
    char norm[TT_SERIAL_MAX];
    bool r;

    if (tt_serial_normalize(serial, norm, sizeof(norm)) != 0)
        return false;
    pthread_mutex_lock(&s->mu);
    r = cp__revoked_locked(s, norm);
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* Returns a new JSON array of {serial, revoked_unix}, NULL when out of memory; the caller decrefs
 * it. Takes the store lock. */
json_t *cp_store_revocations_json(struct cp_store *s)
{
    json_t *arr;

    pthread_mutex_lock(&s->mu);
    arr = cp__coll_array(&cp__revoked_coll, s->revoked.v, s->revoked.n, NULL, NULL);
    pthread_mutex_unlock(&s->mu);
    return arr;
}
