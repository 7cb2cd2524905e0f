/* The registry of service entries (see store.h): services.json. Each entry keeps its
 * source (the operator, or a sidecar's registration); a change bumps the version, since
 * sidecars receive the table. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/spiffe.h"
#include "store.h"
#include "store_int.h"
#include "core/util.h"

/* The one serialiser of an entry: {"address", "spiffe_id", "source"}, for the file and the
 * API. */
static json_t *service_json(const void *item)
{
    const struct cp__service *e = item;

    return json_pack("{s:s,s:s,s:s}", "address", e->address, "spiffe_id", e->spiffe_id, "source",
                     e->source);
}

static int service_from_json(struct cp_store *s, struct cp__lctx *c, json_t *o)
{
    struct cp__service e = {0};
    const char *addr, *id, *src;
    int rc;

    if ((rc = cp__get_str(c, o, "address", &addr)) != 0 ||
        (rc = cp__get_str(c, o, "spiffe_id", &id)) != 0 ||
        (rc = cp__get_str(c, o, "source", &src)) != 0)
        return rc;
    e.address = strdup(addr);
    e.spiffe_id = strdup(id);
    e.source = strdup(src);
    if (!e.address || !e.spiffe_id || !e.source || CP__VEC_GROW(s->services) != 0) {
        free(e.address);
        free(e.spiffe_id);
        free(e.source);
        return -ENOMEM;
    }
    s->services.v[s->services.n++] = e;
    return 0;
}

const struct cp__coll cp__services_coll = {
    .file = "services.json",
    .key = "services",
    .size = sizeof(struct cp__service),
    .to_json = service_json,
    .from_json = service_from_json,
};

static void service_free(struct cp__service *e)
{
    free(e->address);
    free(e->spiffe_id);
    free(e->source);
}

/* Frees every entry's strings and the array. */
void cp__services_free(struct cp_store *s)
{
    for (size_t i = 0; i < s->services.n; i++)
        service_free(&s->services.v[i]);
    free(s->services.v);
}

static int save_services_locked(struct cp_store *s)
{
    return cp__coll_save(s, &cp__services_coll, s->services.v, s->services.n);
}

static int check_service(const char *address, const char *spiffe_id, char *err, size_t errlen)
{
    struct tt_addr a;
    int rc;

    if (address == NULL || (rc = tt_addr_parse(address, 0, &a)) != 0) {
        tt_errf(err, errlen, "address %s: %s", address ? address : "(none)",
                address && rc == -ENOENT ? "host does not resolve"
                                         : "expected IP:PORT, [IPv6]:PORT or host:PORT");
        return address ? rc : -EINVAL;
    }
    if (spiffe_id == NULL || tt_spiffe_check(spiffe_id, strlen(spiffe_id), false) != 0) {
        tt_errf(err, errlen, "spiffe_id %s: not a valid SPIFFE ID",
                spiffe_id ? spiffe_id : "(none)");
        return TT_E_SPIFFE;
    }
    return 0;
}

static ssize_t find_service(struct cp_store *s, const char *address, const char *source)
{
    for (size_t i = 0; i < s->services.n; i++)
        if (strcmp(s->services.v[i].address, address) == 0 &&
            strcmp(s->services.v[i].source, source) == 0)
            return (ssize_t)i;
    return -1;
}

/* Checks address and spiffe_id, then adds or replaces the (address, source) entry and persists
 * services.json; an identical entry is left alone. A change bumps the version and calls the change
 * callback after unlocking. Returns 0 or an error with err set (nothing changed). */
int cp_store_service_add(struct cp_store *s, const char *address, const char *spiffe_id,
                         const char *source, char *err, size_t errlen)
{
    struct cp__service e;
    ssize_t at;
    uint64_t v = 0;
    int rc;

    rc = check_service(address, spiffe_id, err, errlen);
    if (rc != 0)
        return rc;
    e.address = strdup(address);
    e.spiffe_id = strdup(spiffe_id);
    e.source = strdup(source);
    if (!e.address || !e.spiffe_id || !e.source) {
        service_free(&e);
        tt_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_lock(&s->mu);
    at = find_service(s, address, source);
    if (at >= 0 && strcmp(s->services.v[at].spiffe_id, spiffe_id) == 0) {
        rc = 0; /* unchanged */
        service_free(&e);
    } else if (at >= 0) {
        if ((rc = cp__store_bump_locked(s)) == 0) {
            struct cp__service old = s->services.v[at];

            s->services.v[at] = e;
            rc = save_services_locked(s);
            if (rc != 0) {
                s->services.v[at] = old;
                service_free(&e);
            } else {
                service_free(&old);
                v = s->version;
            }
        } else {
            service_free(&e);
        }
    } else if ((rc = CP__VEC_GROW(s->services)) == 0 && (rc = cp__store_bump_locked(s)) == 0) {
        s->services.v[s->services.n++] = e;
        rc = save_services_locked(s);
        if (rc != 0) {
            s->services.n--;
            service_free(&e);
        } else {
            v = s->version;
        }
    } else {
        service_free(&e);
    }
    cp__store_unlock_notify(s, v);
    if (rc != 0)
        tt_errf(err, errlen, "saving services.json: %s", strerror(-rc));
    return rc;
}

/* Removes the (address, source) entry, persists services.json, bumps the version and calls the
 * change callback after unlocking. Returns 0, -ENOENT when there is none, or -errno (entry kept).
 * Takes the store lock. */
int cp_store_service_remove(struct cp_store *s, const char *address, const char *source)
{
    uint64_t v = 0;
    ssize_t at;
    int rc;

    pthread_mutex_lock(&s->mu);
    at = find_service(s, address, source);
    if (at < 0) {
        rc = -ENOENT;
    } else if ((rc = cp__store_bump_locked(s)) == 0) {
        struct cp__service old = s->services.v[at];

        memmove(&s->services.v[at], &s->services.v[at + 1],
                (s->services.n - (size_t)at - 1) * sizeof(old));
        s->services.n--;
        rc = save_services_locked(s);
        if (rc != 0) {
            memmove(&s->services.v[at + 1], &s->services.v[at],
                    (s->services.n - (size_t)at) * sizeof(old));
            s->services.v[at] = old;
            s->services.n++;
        } else {
            service_free(&old);
            v = s->version;
        }
    }
    cp__store_unlock_notify(s, v);
    return rc;
}

/* Replaces every entry of source with addresses[0..n) mapped to spiffe_id, all or nothing: -EEXIST
 * when another identity's sidecar holds an address; the same set again is a no-op. A change is
 * persisted, bumps the version and calls the change callback after unlocking. Returns 0 or an error
 * with err set. */
int cp_store_service_register(struct cp_store *s, const char *source, const char *spiffe_id,
                              const char *const *addresses, size_t n, char *err, size_t errlen)
{
    struct cp__service *fresh = NULL;
    struct cp__service *old_v;
    size_t kept = 0, old_n, old_cap, alloc;
    bool same = true;
    uint64_t v = 0;
    int rc = 0;

    for (size_t i = 0; i < n; i++) {
        rc = check_service(addresses[i], spiffe_id, err, errlen);
        if (rc != 0)
            return rc;
    }
    pthread_mutex_lock(&s->mu);
    /* An address another workload's sidecar registered stays its own: a registration is
     * a claim the sidecar's certificate cannot prove for an IP, so a second identity
     * never takes an address over (an operator entry or removal decides). */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < s->services.n; j++) {
            const struct cp__service *e = &s->services.v[j];
            if (strcmp(e->address, addresses[i]) == 0 && strncmp(e->source, "sidecar:", 8) == 0 &&
                strcmp(e->spiffe_id, spiffe_id) != 0) {
                snprintf(err, errlen, "address %s is registered by %s", addresses[i], e->spiffe_id);
                pthread_mutex_unlock(&s->mu);
                return -EEXIST;
            }
        }
    }
    /* Same set as before: nothing to do (re-registration after a reconnect). */
    for (size_t i = 0; i < s->services.n; i++)
        if (strcmp(s->services.v[i].source, source) == 0)
            kept++;
    if (kept != n)
        same = false;
    for (size_t i = 0; same && i < n; i++) {
        ssize_t at = find_service(s, addresses[i], source);

        same = at >= 0 && strcmp(s->services.v[at].spiffe_id, spiffe_id) == 0;
    }
    if (same)
        goto out;
    alloc = s->services.n + n + 1;
    fresh = calloc(alloc, sizeof(*fresh));
    if (fresh == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    kept = 0;
    for (size_t i = 0; i < s->services.n; i++)
        if (strcmp(s->services.v[i].source, source) != 0)
            fresh[kept++] = s->services.v[i];
    old_n = kept;
    for (size_t i = 0; i < n; i++) {
        struct cp__service *e = &fresh[kept];

        e->address = strdup(addresses[i]);
        e->spiffe_id = strdup(spiffe_id);
        e->source = strdup(source);
        kept++;
        if (!e->address || !e->spiffe_id || !e->source) {
            rc = -ENOMEM;
            break;
        }
    }
    if (rc == 0)
        rc = cp__store_bump_locked(s);
    if (rc != 0) {
        for (size_t i = old_n; i < kept; i++)
            service_free(&fresh[i]);
        free(fresh);
        goto out;
    }
    old_v = s->services.v;
    old_n = s->services.n;
    old_cap = s->services.cap;
    s->services.v = fresh;
    s->services.n = kept;
    s->services.cap = alloc;
    rc = save_services_locked(s);
    if (rc != 0) {
        for (size_t i = 0; i < kept; i++)
            if (strcmp(fresh[i].source, source) == 0)
                service_free(&fresh[i]);
        free(fresh);
        s->services.v = old_v;
        s->services.n = old_n;
        s->services.cap = old_cap;
    } else {
        for (size_t i = 0; i < old_n; i++)
            if (strcmp(old_v[i].source, source) == 0)
                service_free(&old_v[i]);
        free(old_v);
        v = s->version;
    }
out:
    cp__store_unlock_notify(s, v);
    if (rc != 0)
        tt_errf(err, errlen, "saving services.json: %s", strerror(-rc));
    return rc;
}

/* Returns a new JSON array of {address, spiffe_id, source}, NULL when out of memory; the caller
 * decrefs it. Takes the store lock. */
json_t *cp_store_services_json(struct cp_store *s)
{
    json_t *arr;

    pthread_mutex_lock(&s->mu);
    arr = cp__coll_array(&cp__services_coll, s->services.v, s->services.n, NULL, NULL);
    pthread_mutex_unlock(&s->mu);
    return arr;
}
