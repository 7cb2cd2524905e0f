/* Connected sidecars (see store.h): what each Watch stream said of itself and the versions
 * it acknowledged or refused. Runtime only: never persisted. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"
#include "store_int.h"
#include "core/util.h"

static void sidecar_free_fields(struct cp__sidecar *c)
{
    free(c->id);
    free(c->spiffe_id);
    free(c->peer);
    free(c->node);
    free(c->nack_reason);
    json_decref(c->registered);
    json_decref(c->refused);
    for (size_t i = 0; i < c->n_claims; i++)
        free(c->claims[i]);
    free(c->claims);
}

/* Frees every record's strings and the array. */
void cp__sidecars_free(struct cp_store *s)
{
    for (size_t i = 0; i < s->sidecars.n; i++)
        sidecar_free_fields(&s->sidecars.v[i]);
    free(s->sidecars.v);
}

static struct cp__sidecar *find_sidecar(struct cp_store *s, const char *id)
{
    for (size_t i = 0; i < s->sidecars.n; i++)
        if (strcmp(s->sidecars.v[i].id, id) == 0)
            return &s->sidecars.v[i];
    return NULL;
}

static void replace_str(char **dst, const char *src)
{
    char *c;

    if (src == NULL || (*dst != NULL && strcmp(*dst, src) == 0))
        return;
    c = strdup(src);
    if (c == NULL)
        return; /* keep the old value: this registry is informational */
    free(*dst);
    *dst = c;
}

/* Creates or refreshes the runtime record of sidecar id (copies of spiffe_id, peer and node; NULL
 * keeps the old value) and stamps it now. Returns 0 or -ENOMEM. Never persisted; takes the store
 * lock. */
int cp_store_sidecar_seen(struct cp_store *s, const char *id, const char *spiffe_id,
                          const char *peer, const char *node)
{
    struct cp__sidecar *c;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c == NULL) {
        if (CP__VEC_GROW(s->sidecars) != 0) {
            rc = -ENOMEM;
            goto out;
        }
        c = &s->sidecars.v[s->sidecars.n];
        memset(c, 0, sizeof(*c));
        c->id = strdup(id);
        if (c->id == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        s->sidecars.n++;
    }
    replace_str(&c->spiffe_id, spiffe_id);
    replace_str(&c->peer, peer);
    replace_str(&c->node, node);
    c->last_seen = tt_now_unix();
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Records that sidecar id acknowledged version and stamps it now; an unknown id is ignored. Takes
 * the store lock. */
void cp_store_sidecar_acked(struct cp_store *s, const char *id, uint64_t version)
{
    struct cp__sidecar *c;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c != NULL) {
        c->acked = version;
        c->last_seen = tt_now_unix();
    }
    pthread_mutex_unlock(&s->mu);
}

/* Records that sidecar id refused version, with a copy of reason (NULL: ""), and stamps it now; an
 * unknown id is ignored. Takes the store lock. */
void cp_store_sidecar_nacked(struct cp_store *s, const char *id, uint64_t version,
                             const char *reason)
{
    struct cp__sidecar *c;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c != NULL) {
        c->nacked = version;
        replace_str(&c->nack_reason, reason ? reason : "");
        c->last_seen = tt_now_unix();
    }
    pthread_mutex_unlock(&s->mu);
}

/* Records sidecar id's registration outcome (see store_int.h). Lock held. */
void cp__sidecar_set_registration_locked(struct cp_store *s, const char *id, json_t *registered,
                                         json_t *refused)
{
    struct cp__sidecar *c = find_sidecar(s, id);

    if (c == NULL) {
        json_decref(registered);
        json_decref(refused);
        return;
    }
    json_decref(c->registered);
    json_decref(c->refused);
    c->registered = registered;
    c->refused = refused;
}

/* Keeps copies of sidecar id's claims (see store_int.h). Lock held. */
void cp__sidecar_set_claims_locked(struct cp_store *s, const char *id, const char *const *addresses,
                                   size_t n)
{
    struct cp__sidecar *c = find_sidecar(s, id);
    char **copy = c != NULL ? calloc(n + 1, sizeof(*copy)) : NULL;
    size_t k = 0;

    if (copy == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        if (addresses[i] != NULL && (copy[k] = strdup(addresses[i])) != NULL)
            k++;
    for (size_t i = 0; i < c->n_claims; i++)
        free(c->claims[i]);
    free(c->claims);
    c->claims = copy;
    c->n_claims = k;
}

/* Forgets sidecar id and frees its record, starts the grace period of what it registered
 * and lets waiting streams take its addresses (pushing the change after unlocking); an
 * unknown id is ignored. Takes the store lock. */
void cp_store_sidecar_gone(struct cp_store *s, const char *id)
{
    struct cp__sidecar *c;
    uint64_t v = 0;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c != NULL) {
        size_t at = (size_t)(c - s->sidecars.v);

        sidecar_free_fields(c);
        memmove(c, c + 1, (s->sidecars.n - at - 1) * sizeof(*c));
        s->sidecars.n--;
    }
    /* After the record is gone, so that its own claims are not tried again. */
    cp__regs_stream_gone_locked(s, id, &v);
    cp__store_unlock_notify(s, v);
}

static json_t *jstr_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *juint_or_null(uint64_t v)
{
    return v ? json_integer((json_int_t)v) : json_null();
}

static json_t *jarray_copy(json_t *a)
{
    return a != NULL ? json_deep_copy(a) : json_array();
}

/* The one serialiser of a connected sidecar: {"id", "spiffe_id", "peer", "node",
 * "acked_version", "nacked_version", "nack_reason", "last_seen_unix", "registered",
 * "refused"}, null for what is unknown. */
static json_t *sidecar_json(const void *item)
{
    const struct cp__sidecar *c = item;

    return json_pack("{s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:I,s:o,s:o}", "id", c->id, "spiffe_id",
                     jstr_or_null(c->spiffe_id), "peer", jstr_or_null(c->peer), "node",
                     jstr_or_null(c->node), "acked_version", juint_or_null(c->acked),
                     "nacked_version", juint_or_null(c->nacked), "nack_reason",
                     jstr_or_null(c->nack_reason), "last_seen_unix", (json_int_t)c->last_seen,
                     "registered", jarray_copy(c->registered), "refused", jarray_copy(c->refused));
}

/* Runtime only: no file and no parser, only the array builder's serialiser. */
static const struct cp__coll sidecars_coll = {
    .key = "sidecars",
    .size = sizeof(struct cp__sidecar),
    .to_json = sidecar_json,
};

/* Returns a new JSON array describing each connected sidecar (null for unknown fields and
 * versions), NULL when out of memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_sidecars_json(struct cp_store *s)
{
    json_t *arr;

    pthread_mutex_lock(&s->mu);
    arr = cp__coll_array(&sidecars_coll, s->sidecars.v, s->sidecars.n, NULL, NULL);
    pthread_mutex_unlock(&s->mu);
    return arr;
}
