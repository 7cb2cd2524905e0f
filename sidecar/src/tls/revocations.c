/* Revocation sets (revocations.h): a sorted array of normalized serials, each with its
 * certificate's not-after, searched with bsearch. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tls/identity.h"
#include "tls/revocations.h"

struct tt_revocations {
    int refs; /* atomic */
    size_t n;
    struct revoked {
        char *serial;      /* normalized */
        int64_t not_after; /* the certificate's; 0: unknown, kept for good */
    } * v;                 /* sorted by serial, unique */
};

static int cmp_revoked(const void *a, const void *b)
{
    return strcmp(((const struct revoked *)a)->serial, ((const struct revoked *)b)->serial);
}

static void revocations_free(struct tt_revocations *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->v[i].serial);
    free(r->v);
    free(r);
}

/* True when an entry no longer matters: its certificate expired before `now` (and so
 * cannot be presented any more). now 0 keeps everything. */
static bool revoked_expired(int64_t not_after, int64_t now)
{
    return now != 0 && not_after != 0 && not_after < now;
}

/* Appends a copy of (serial, not_after) to r (room for it was allocated). */
static int revoked_append(struct tt_revocations *r, const char *norm, int64_t not_after)
{
    if ((r->v[r->n].serial = strdup(norm)) == NULL)
        return -1;
    r->v[r->n++].not_after = not_after;
    return 0;
}

/* Sorts and drops duplicates, keeping the later not-after of two (0, unknown, is the
 * latest of all). */
static void revoked_sort_unique(struct tt_revocations *r)
{
    size_t kept = 1;

    if (r->n < 2)
        return;
    qsort(r->v, r->n, sizeof(*r->v), cmp_revoked);
    for (size_t i = 1; i < r->n; i++) {
        struct revoked *last = &r->v[kept - 1];

        if (strcmp(r->v[i].serial, last->serial) != 0) {
            r->v[kept++] = r->v[i];
            continue;
        }
        if (last->not_after != 0 && (r->v[i].not_after == 0 || r->v[i].not_after > last->not_after))
            last->not_after = r->v[i].not_after;
        free(r->v[i].serial);
    }
    r->n = kept;
}

/* Builds held + add minus what expired (see revocations.h). */
struct tt_revocations *tt_revocations_merge(const struct tt_revocations *held,
                                            const struct tt_revocation *add, size_t n, int64_t now,
                                            size_t *err_index)
{
    struct tt_revocations *r = calloc(1, sizeof(*r));
    size_t cap = tt_revocations_count(held) + n;
    char norm[TT_SERIAL_MAX];

    *err_index = n;
    if (r == NULL)
        return NULL;
    r->refs = 1;
    if (cap > 0 && (r->v = calloc(cap, sizeof(*r->v))) == NULL)
        goto err_free;
    for (size_t i = 0; i < tt_revocations_count(held); i++) {
        if (!revoked_expired(held->v[i].not_after, now) &&
            revoked_append(r, held->v[i].serial, held->v[i].not_after) != 0)
            goto err_free;
    }
    for (size_t i = 0; i < n; i++) {
        if (tt_serial_normalize(add[i].serial, norm, sizeof(norm)) < 0) {
            *err_index = i;
            goto err_free;
        }
        if (!revoked_expired(add[i].not_after, now) &&
            revoked_append(r, norm, add[i].not_after < 0 ? 0 : add[i].not_after) != 0)
            goto err_free;
    }
    revoked_sort_unique(r);
    return r;

err_free:
    revocations_free(r);
    return NULL;
}

/* Builds a set of serials with unknown not-afters (see revocations.h). */
struct tt_revocations *tt_revocations_new(const char *const *serials, size_t n, size_t *err_index)
{
    struct tt_revocation *add = n > 0 ? calloc(n, sizeof(*add)) : NULL;
    struct tt_revocations *r;

    *err_index = n;
    if (n > 0 && add == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        add[i].serial = serials[i];
    r = tt_revocations_merge(NULL, add, n, 0, err_index);
    free(add);
    return r;
}

/* Takes a reference; any thread. */
struct tt_revocations *tt_revocations_ref(struct tt_revocations *r)
{
    __atomic_fetch_add(&r->refs, 1, __ATOMIC_RELAXED);
    return r;
}

/* Drops a reference; the last one frees the set. */
void tt_revocations_unref(struct tt_revocations *r)
{
    if (r != NULL && __atomic_sub_fetch(&r->refs, 1, __ATOMIC_ACQ_REL) == 0)
        revocations_free(r);
}

/* Membership of a normalized serial. */
bool tt_revocations_check(const struct tt_revocations *r, const char *serial)
{
    struct revoked key = {.serial = (char *)serial};

    if (r == NULL || r->n == 0 || serial == NULL || serial[0] == '\0')
        return false;
    return bsearch(&key, r->v, r->n, sizeof(*r->v), cmp_revoked) != NULL;
}

/* Size of the set. */
size_t tt_revocations_count(const struct tt_revocations *r)
{
    return r != NULL ? r->n : 0;
}

/* Set equality. */
bool tt_revocations_equal(const struct tt_revocations *a, const struct tt_revocations *b)
{
    size_t n = tt_revocations_count(a);

    if (n != tt_revocations_count(b))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(a->v[i].serial, b->v[i].serial) != 0 || a->v[i].not_after != b->v[i].not_after)
            return false;
    }
    return true;
}
