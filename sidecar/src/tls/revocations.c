/* Revocation sets (revocations.h): a sorted array of normalized serials, searched with
 * bsearch. */
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "tls/identity.h"
#include "tls/revocations.h"

struct tt_revocations {
    int refs; /* atomic */
    size_t n;
    char **serials; /* sorted, unique */
};

static int cmp_serial(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void revocations_free(struct tt_revocations *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->serials[i]);
    free(r->serials);
    free(r);
}

/* Builds a set (see revocations.h). */
struct tt_revocations *tt_revocations_new(const char *const *serials, size_t n, size_t *err_index)
{
    struct tt_revocations *r = calloc(1, sizeof(*r));
    char norm[TT_SERIAL_MAX];

    *err_index = n;
    if (r == NULL)
        return NULL;
    r->refs = 1;
    if (n > 0 && (r->serials = calloc(n, sizeof(*r->serials))) == NULL)
        goto err_free;
    for (size_t i = 0; i < n; i++) {
        if (tt_serial_normalize(serials[i], norm, sizeof(norm)) < 0) {
            *err_index = i;
            goto err_free;
        }
        if ((r->serials[r->n] = strdup(norm)) == NULL)
            goto err_free;
        r->n++;
    }
    if (r->n > 1) {
        qsort(r->serials, r->n, sizeof(*r->serials), cmp_serial);
        size_t kept = 1;
        for (size_t i = 1; i < r->n; i++) {
            if (strcmp(r->serials[i], r->serials[kept - 1]) == 0)
                free(r->serials[i]);
            else
                r->serials[kept++] = r->serials[i];
        }
        r->n = kept;
    }
    return r;

err_free:
    revocations_free(r);
    return NULL;
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
    if (r == NULL || r->n == 0 || serial == NULL || serial[0] == '\0')
        return false;
    return bsearch(&serial, r->serials, r->n, sizeof(*r->serials), cmp_serial) != NULL;
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
        if (strcmp(a->serials[i], b->serials[i]) != 0)
            return false;
    }
    return true;
}
