/* The service table (see store.h): operator services, persisted in services.json, the
 * Kubernetes watcher's services, runtime only and replaced as a whole set, and sidecars'
 * registrations, runtime only, each bound to the IP its Watch connection came
 * from and to its certificate's identity, living as long as the stream plus a grace
 * period. Each entry keeps its source; a change to what sidecars receive bumps the
 * version. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/spiffe.h"
#include "store.h"
#include "store_int.h"
#include "core/util.h"

/* ---- addresses ---- */

/* Writes the form two addresses are compared in: the normalized text of an IP literal
 * (never resolved), else the text as given. */
static void addr_key(const char *text, char out[TT_ADDR_TEXT_MAX])
{
    struct tt_addr a;

    if (tt_addr_parse(text, TT_ADDR_NUMERIC, &a) == 0)
        snprintf(out, TT_ADDR_TEXT_MAX, "%s", a.text);
    else
        snprintf(out, TT_ADDR_TEXT_MAX, "%s", text);
}

static bool addr_same(const char *a, const char *b)
{
    char ka[TT_ADDR_TEXT_MAX], kb[TT_ADDR_TEXT_MAX];

    addr_key(a, ka);
    addr_key(b, kb);
    return strcmp(ka, kb) == 0;
}

/* ---- one service ---- */

static void endpoint_free(struct cp__endpoint *e)
{
    free(e->address);
    free(e->spiffe_id);
}

static void service_free(struct cp__service *e)
{
    free(e->address);
    free(e->source);
    free(e->name);
    for (size_t i = 0; i < e->eps.n; i++)
        endpoint_free(&e->eps.v[i]);
    free(e->eps.v);
    memset(e, 0, sizeof(*e));
}

/* Appends endpoint (address, spiffe_id), copied, to e. Returns 0 or -ENOMEM. */
static int service_push(struct cp__service *e, const char *address, const char *spiffe_id)
{
    struct cp__endpoint ep = {strdup(address), strdup(spiffe_id)};

    if (ep.address == NULL || ep.spiffe_id == NULL || CP__VEC_GROW(e->eps) != 0) {
        endpoint_free(&ep);
        return -ENOMEM;
    }
    e->eps.v[e->eps.n++] = ep;
    return 0;
}

/* Initialises e as the service address/source with no endpoint. Returns 0 or -ENOMEM. */
static int service_init(struct cp__service *e, const char *address, const char *source, bool bare)
{
    memset(e, 0, sizeof(*e));
    e->address = strdup(address);
    e->source = strdup(source);
    e->bare = bare;
    if (e->address == NULL || e->source == NULL) {
        service_free(e);
        return -ENOMEM;
    }
    return 0;
}

/* Deep copy of src into dst. Returns 0 or -ENOMEM (dst then empty). */
static int service_copy(struct cp__service *dst, const struct cp__service *src)
{
    int rc = service_init(dst, src->address, src->source, src->bare);

    for (size_t i = 0; rc == 0 && i < src->eps.n; i++)
        rc = service_push(dst, src->eps.v[i].address, src->eps.v[i].spiffe_id);
    if (rc != 0)
        service_free(dst);
    return rc;
}

static bool service_equal(const struct cp__service *a, const struct cp__service *b)
{
    if (a->bare != b->bare || a->eps.n != b->eps.n || strcmp(a->address, b->address) != 0)
        return false;
    for (size_t i = 0; i < a->eps.n; i++)
        if (strcmp(a->eps.v[i].address, b->eps.v[i].address) != 0 ||
            strcmp(a->eps.v[i].spiffe_id, b->eps.v[i].spiffe_id) != 0)
            return false;
    return true;
}

/* ---- services.json ---- */

static json_t *endpoint_json(const struct cp__endpoint *ep)
{
    return json_pack("{s:s,s:s}", "address", ep->address, "spiffe_id", ep->spiffe_id);
}

static json_t *endpoints_json(const struct cp__service *e)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr != NULL && i < e->eps.n; i++) {
        if (json_array_append_new(arr, endpoint_json(&e->eps.v[i])) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

/* The one serialiser of a service: a bare endpoint as {"address", "spiffe_id", "source"}
 * (the form older versions wrote and read), a service with endpoints as {"address",
 * "endpoints": [{"address", "spiffe_id"}], "source"}. */
static json_t *service_json(const void *item)
{
    const struct cp__service *e = item;

    if (e->bare)
        return json_pack("{s:s,s:s,s:s}", "address", e->address, "spiffe_id", e->eps.v[0].spiffe_id,
                         "source", e->source);
    return json_pack("{s:s,s:o,s:s}", "address", e->address, "endpoints", endpoints_json(e),
                     "source", e->source);
}

static int service_from_json(struct cp_store *s, struct cp__lctx *c, json_t *o)
{
    struct cp__service e;
    const char *addr, *id, *src;
    json_t *eps = json_object_get(o, "endpoints"), *ep;
    size_t i;
    int rc;

    if ((rc = cp__get_str(c, o, "address", &addr)) != 0 ||
        (rc = cp__get_str(c, o, "source", &src)) != 0)
        return rc;
    /* Older versions saved sidecars' registrations here; they are runtime now. */
    if (strncmp(src, "sidecar:", 8) == 0)
        return 0;
    if (eps == NULL) {
        if ((rc = cp__get_str(c, o, "spiffe_id", &id)) != 0)
            return rc;
        if (service_init(&e, addr, src, true) != 0 || service_push(&e, addr, id) != 0)
            goto nomem;
    } else {
        if (!json_is_array(eps) || json_array_size(eps) == 0)
            return cp__bad_field(c, "endpoints", "a non-empty array of {address, spiffe_id}");
        if (service_init(&e, addr, src, false) != 0)
            return -ENOMEM;
        json_array_foreach(eps, i, ep)
        {
            const char *ea = json_string_value(json_object_get(ep, "address"));
            const char *ei = json_string_value(json_object_get(ep, "spiffe_id"));

            if (ea == NULL || ei == NULL) {
                service_free(&e);
                return cp__bad_field(c, "endpoints", "objects with string address and spiffe_id");
            }
            if (service_push(&e, ea, ei) != 0)
                goto nomem;
        }
    }
    if (CP__VEC_GROW(s->services) != 0)
        goto nomem;
    s->services.v[s->services.n++] = e;
    return 0;
nomem:
    service_free(&e);
    return -ENOMEM;
}

const struct cp__coll cp__services_coll = {
    .file = "services.json",
    .key = "services",
    .size = sizeof(struct cp__service),
    .to_json = service_json,
    .from_json = service_from_json,
};

static void reg_free(struct cp__reg *r)
{
    free(r->address);
    free(r->spiffe_id);
    free(r->holder);
}

/* Frees every service and registration and their arrays. */
void cp__services_free(struct cp_store *s)
{
    for (size_t i = 0; i < s->services.n; i++)
        service_free(&s->services.v[i]);
    free(s->services.v);
    for (size_t i = 0; i < s->regs.n; i++)
        reg_free(&s->regs.v[i]);
    free(s->regs.v);
    for (size_t i = 0; i < s->k8s.n; i++)
        service_free(&s->k8s.v[i]);
    free(s->k8s.v);
}

/* ---- operator services ---- */

/* Checks one address and identity; `what` names them in err ("endpoints[1]"; "" for the
 * top level). Returns 0, -EINVAL / -ENOENT (address) or TT_E_SPIFFE with err set. */
static int check_pair(const char *what, const char *address, const char *spiffe_id, char *err,
                      size_t errlen)
{
    struct tt_addr a;
    const char *dot = what[0] ? "." : "";
    int rc;

    if (address == NULL || (rc = tt_addr_parse(address, 0, &a)) != 0) {
        tt_errf(err, errlen, "%s%saddress %s: %s", what, dot, address ? address : "(none)",
                address && rc == -ENOENT ? "host does not resolve"
                                         : "expected IP:PORT, [IPv6]:PORT or host:PORT");
        return address ? rc : -EINVAL;
    }
    if (spiffe_id != NULL && tt_spiffe_check(spiffe_id, strlen(spiffe_id), false) != 0) {
        tt_errf(err, errlen, "%s%sspiffe_id %s: not a valid SPIFFE ID", what, dot, spiffe_id);
        return TT_E_SPIFFE;
    }
    return 0;
}

/* Checks a whole service: its address, each endpoint, and that an endpoint listed twice
 * has one identity. Returns as check_pair. */
static int check_service(const struct cp__service *e, char *err, size_t errlen)
{
    char what[32];
    int rc;

    if ((rc = check_pair("", e->address, NULL, err, errlen)) != 0)
        return rc;
    if (e->eps.n == 0) {
        tt_errf(err, errlen, "endpoints: expected at least one {address, spiffe_id}");
        return -EINVAL;
    }
    for (size_t i = 0; i < e->eps.n; i++) {
        snprintf(what, sizeof(what), e->bare ? "" : "endpoints[%zu]", i);
        if (e->eps.v[i].spiffe_id == NULL) {
            tt_errf(err, errlen, "%s%sspiffe_id: required", what, what[0] ? "." : "");
            return TT_E_SPIFFE;
        }
        if ((rc = check_pair(what, e->eps.v[i].address, e->eps.v[i].spiffe_id, err, errlen)) != 0)
            return rc;
        for (size_t j = 0; j < i; j++)
            if (addr_same(e->eps.v[i].address, e->eps.v[j].address) &&
                strcmp(e->eps.v[i].spiffe_id, e->eps.v[j].spiffe_id) != 0) {
                tt_errf(err, errlen, "%s: endpoint %s is listed with two identities (%s, %s)", what,
                        e->eps.v[i].address, e->eps.v[j].spiffe_id, e->eps.v[i].spiffe_id);
                return -EINVAL;
            }
    }
    return 0;
}

static ssize_t find_service(struct cp_store *s, const char *address, const char *source)
{
    for (size_t i = 0; i < s->services.n; i++)
        if (strcmp(s->services.v[i].source, source) == 0 &&
            addr_same(s->services.v[i].address, address))
            return (ssize_t)i;
    return -1;
}

/* The one way the operator table changes: the (address, source) service becomes *fresh
 * (consumed; NULL removes it), persisted, with the version bumped; an identical service is
 * left alone. On failure nothing changes. *v gets the new version (0: unchanged). Returns
 * 0, -ENOENT (removing what is not there) or -errno. Lock held. */
static int commit_locked(struct cp_store *s, const char *address, const char *source,
                         struct cp__service *fresh, uint64_t *v)
{
    ssize_t at = find_service(s, address, source);
    struct cp__service old;
    int rc;

    *v = 0;
    if (fresh == NULL && at < 0)
        return -ENOENT;
    if (fresh != NULL && at >= 0 && service_equal(fresh, &s->services.v[at])) {
        service_free(fresh);
        return 0;
    }
    if (at < 0 && (rc = CP__VEC_GROW(s->services)) != 0)
        goto fail;
    if ((rc = cp__store_bump_locked(s)) != 0)
        goto fail;
    if (at >= 0)
        old = s->services.v[at];
    if (fresh == NULL) {
        memmove(&s->services.v[at], &s->services.v[at + 1],
                (s->services.n - (size_t)at - 1) * sizeof(old));
        s->services.n--;
    } else if (at >= 0) {
        s->services.v[at] = *fresh;
    } else {
        s->services.v[s->services.n++] = *fresh;
    }
    rc = cp__coll_save(s, &cp__services_coll, s->services.v, s->services.n);
    if (rc != 0) { /* put the old table back */
        if (fresh == NULL) {
            memmove(&s->services.v[at + 1], &s->services.v[at],
                    (s->services.n - (size_t)at) * sizeof(old));
            s->services.v[at] = old;
            s->services.n++;
        } else if (at >= 0) {
            s->services.v[at] = old;
        } else {
            s->services.n--;
        }
        goto fail;
    }
    if (at >= 0)
        service_free(&old);
    *v = s->version;
    return 0;
fail:
    if (fresh != NULL)
        service_free(fresh);
    return rc;
}

/* Checks *fresh (consumed) and commits it under the lock; err gets the reason. */
static int commit(struct cp_store *s, struct cp__service *fresh, char *err, size_t errlen)
{
    uint64_t v = 0;
    int rc = check_service(fresh, err, errlen);

    if (rc != 0) {
        service_free(fresh);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    rc = commit_locked(s, fresh->address, fresh->source, fresh, &v);
    cp__store_unlock_notify(s, v);
    if (rc != 0)
        tt_errf(err, errlen, "saving services.json: %s", strerror(-rc));
    return rc;
}

/* Adds or replaces the bare endpoint address -> spiffe_id (see store.h). */
int cp_store_service_add(struct cp_store *s, const char *address, const char *spiffe_id,
                         const char *source, char *err, size_t errlen)
{
    struct cp__service e;

    if (address == NULL || spiffe_id == NULL) {
        int rc = check_pair("", address, NULL, err, errlen);

        if (rc != 0)
            return rc;
        tt_errf(err, errlen, "spiffe_id: required");
        return TT_E_SPIFFE;
    }
    if (service_init(&e, address, source, true) != 0 || service_push(&e, address, spiffe_id) != 0) {
        service_free(&e);
        tt_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return commit(s, &e, err, errlen);
}

/* Adds or replaces the service address with endpoints eps[0..n) (see store.h). */
int cp_store_service_set(struct cp_store *s, const char *address,
                         const struct cp_endpoint_spec *eps, size_t n, const char *source,
                         char *err, size_t errlen)
{
    struct cp__service e;
    int rc;

    if (address == NULL)
        return check_pair("", address, NULL, err, errlen);
    if ((rc = service_init(&e, address, source, false)) != 0)
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        char what[32];

        snprintf(what, sizeof(what), "endpoints[%zu]", i);
        if (eps[i].address == NULL || eps[i].spiffe_id == NULL) {
            service_free(&e);
            tt_errf(err, errlen, "%s: address and spiffe_id are required", what);
            return -EINVAL;
        }
        if ((rc = service_push(&e, eps[i].address, eps[i].spiffe_id)) != 0)
            goto nomem;
    }
    return commit(s, &e, err, errlen);
nomem:
    service_free(&e);
    tt_errf(err, errlen, "out of memory");
    return -ENOMEM;
}

/* Adds or re-identifies endpoint ep of service address, creating the service (see
 * store.h). */
int cp_store_service_endpoint_add(struct cp_store *s, const char *address, const char *ep,
                                  const char *spiffe_id, const char *source, char *err,
                                  size_t errlen)
{
    struct cp__service e;
    ssize_t at;
    uint64_t v = 0;
    int rc;

    if ((rc = check_pair("", address, NULL, err, errlen)) != 0 ||
        (rc = check_pair("endpoint", ep, spiffe_id ? spiffe_id : "", err, errlen)) != 0)
        return rc;
    if (spiffe_id == NULL) {
        tt_errf(err, errlen, "endpoint.spiffe_id: required");
        return TT_E_SPIFFE;
    }
    pthread_mutex_lock(&s->mu);
    at = find_service(s, address, source);
    rc = at >= 0 ? service_copy(&e, &s->services.v[at]) : service_init(&e, address, source, false);
    if (rc == 0) {
        size_t i;

        e.bare = false;
        for (i = 0; i < e.eps.n && !addr_same(e.eps.v[i].address, ep); i++)
            ;
        if (i < e.eps.n) {
            char *id = strdup(spiffe_id);

            rc = id ? 0 : -ENOMEM;
            if (id != NULL) {
                free(e.eps.v[i].spiffe_id);
                e.eps.v[i].spiffe_id = id;
            }
        } else {
            rc = service_push(&e, ep, spiffe_id);
        }
        if (rc != 0)
            service_free(&e);
        else
            rc = commit_locked(s, address, source, &e, &v);
    }
    cp__store_unlock_notify(s, v);
    if (rc != 0)
        tt_errf(err, errlen, "saving services.json: %s", strerror(-rc));
    return rc;
}

/* Removes endpoint ep of service address; the last one takes the service (see store.h). */
int cp_store_service_endpoint_remove(struct cp_store *s, const char *address, const char *ep,
                                     const char *source)
{
    struct cp__service e;
    ssize_t at;
    size_t i;
    uint64_t v = 0;
    int rc = -ENOENT;

    pthread_mutex_lock(&s->mu);
    at = find_service(s, address, source);
    if (at < 0)
        goto out;
    for (i = 0; i < s->services.v[at].eps.n && !addr_same(s->services.v[at].eps.v[i].address, ep);
         i++)
        ;
    if (i == s->services.v[at].eps.n)
        goto out;
    if (s->services.v[at].eps.n == 1) {
        rc = commit_locked(s, address, source, NULL, &v);
        goto out;
    }
    if ((rc = service_copy(&e, &s->services.v[at])) != 0)
        goto out;
    endpoint_free(&e.eps.v[i]);
    memmove(&e.eps.v[i], &e.eps.v[i + 1], (e.eps.n - i - 1) * sizeof(e.eps.v[0]));
    e.eps.n--;
    e.bare = false;
    rc = commit_locked(s, address, source, &e, &v);
out:
    cp__store_unlock_notify(s, v);
    return rc;
}

/* Removes the (address, source) service, persisted (see store.h). */
int cp_store_service_remove(struct cp_store *s, const char *address, const char *source)
{
    uint64_t v = 0;
    int rc;

    pthread_mutex_lock(&s->mu);
    rc = commit_locked(s, address, source, NULL, &v);
    cp__store_unlock_notify(s, v);
    return rc;
}

/* ---- Kubernetes services ---- */

static int cmp_endpoint(const void *a, const void *b)
{
    return strcmp(((const struct cp__endpoint *)a)->address,
                  ((const struct cp__endpoint *)b)->address);
}

static int cmp_service(const void *a, const void *b)
{
    const struct cp__service *x = a, *y = b;
    int c = strcmp(x->address, y->address);

    return c != 0 ? c : (int)x->bare - (int)y->bare;
}

/* Writes the normalized text of an IP literal with a port into out. Returns false for
 * anything else (a host name is never resolved here). */
static bool ip_port_norm(const char *text, char out[TT_ADDR_TEXT_MAX])
{
    struct tt_addr a;

    if (text == NULL || tt_addr_parse(text, TT_ADDR_NUMERIC, &a) != 0 || tt_addr_port(&a) == 0)
        return false;
    snprintf(out, TT_ADDR_TEXT_MAX, "%s", a.text);
    return true;
}

/* Builds the sorted, checked set from svcs[0..n) into *out (empty first): addresses
 * normalized, endpoints sorted and listed once (the first identity wins), entries that
 * cannot be pushed left out and counted in *dropped: a bad address or identity, a second
 * service at one address, a bare entry at a service's address. Returns 0 or -ENOMEM. */
static int k8s_build(const struct cp_service_spec *svcs, size_t n, struct cp__service **out,
                     size_t *n_out, size_t *dropped)
{
    struct cp__service *v = n ? calloc(n, sizeof(*v)) : NULL;
    char addr[TT_ADDR_TEXT_MAX], ep[TT_ADDR_TEXT_MAX];
    size_t k = 0, w = 0;

    *dropped = 0;
    if (n > 0 && v == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const struct cp_service_spec *sp = &svcs[i];
        struct cp__service *e = &v[k];

        if (!ip_port_norm(sp->address, addr)) {
            (*dropped)++;
            continue;
        }
        if (service_init(e, addr, CP_SOURCE_KUBERNETES, sp->bare) != 0)
            goto nomem;
        if (sp->name != NULL && (e->name = strdup(sp->name)) == NULL) {
            service_free(e);
            goto nomem;
        }
        for (size_t j = 0; j < sp->n_eps; j++) {
            const char *id = sp->eps[j].spiffe_id;

            if (!ip_port_norm(sp->eps[j].address, ep) || id == NULL ||
                tt_spiffe_check(id, strlen(id), false) != 0 || (sp->bare && strcmp(ep, addr))) {
                (*dropped)++;
                continue;
            }
            if (service_push(e, ep, id) != 0) {
                service_free(e);
                goto nomem;
            }
        }
        if (e->eps.n > 0)
            qsort(e->eps.v, e->eps.n, sizeof(e->eps.v[0]), cmp_endpoint);
        /* One identity per endpoint: the first after sorting (stable enough: the same input
         * gives the same table). */
        w = 0;
        for (size_t j = 0; j < e->eps.n; j++) {
            if (w > 0 && strcmp(e->eps.v[w - 1].address, e->eps.v[j].address) == 0) {
                endpoint_free(&e->eps.v[j]);
                continue;
            }
            e->eps.v[w++] = e->eps.v[j];
        }
        e->eps.n = w;
        if (sp->bare && e->eps.n == 0) {
            service_free(e);
            continue;
        }
        k++;
    }
    if (k > 0)
        qsort(v, k, sizeof(v[0]), cmp_service);
    /* One entry per address: a service (not bare) sorts before a bare entry there. */
    w = 0;
    for (size_t i = 0; i < k; i++) {
        if (w > 0 && strcmp(v[w - 1].address, v[i].address) == 0) {
            service_free(&v[i]);
            (*dropped)++;
            continue;
        }
        v[w++] = v[i];
    }
    *out = v;
    *n_out = w;
    return 0;
nomem:
    for (size_t i = 0; i < k; i++)
        service_free(&v[i]);
    free(v);
    return -ENOMEM;
}

/* Replaces the Kubernetes services as a whole set (see store.h). */
int cp_store_kubernetes_set(struct cp_store *s, const struct cp_service_spec *svcs, size_t n,
                            size_t *dropped)
{
    struct cp__service *v = NULL;
    size_t nv = 0, drop = 0;
    bool same;
    uint64_t ver = 0;
    int rc = k8s_build(svcs, n, &v, &nv, &drop);

    if (dropped != NULL)
        *dropped = drop;
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&s->mu);
    same = nv == s->k8s.n;
    for (size_t i = 0; same && i < nv; i++)
        same = service_equal(&v[i], &s->k8s.v[i]);
    if (!same && (rc = cp__store_bump_locked(s)) != 0) {
        pthread_mutex_unlock(&s->mu);
        for (size_t i = 0; i < nv; i++)
            service_free(&v[i]);
        free(v);
        return rc;
    }
    if (!same)
        ver = s->version;
    /* Replaced even when the same for sidecars: the names shown may have changed. */
    for (size_t i = 0; i < s->k8s.n; i++)
        service_free(&s->k8s.v[i]);
    free(s->k8s.v);
    s->k8s.v = v;
    s->k8s.n = nv;
    s->k8s.cap = nv;
    cp__store_unlock_notify(s, ver);
    return same ? 0 : 1;
}

/* ---- registrations ---- */

static uint64_t now_locked(struct cp_store *s)
{
    return s->now_ms != NULL ? s->now_ms(s->now_ud) : tt_now_ms();
}

/* Sets the grace period registrations keep after their stream ends. */
void cp_store_set_registration_grace(struct cp_store *s, uint64_t ms)
{
    pthread_mutex_lock(&s->mu);
    s->reg_grace_ms = ms;
    pthread_mutex_unlock(&s->mu);
}

/* Installs the registrations' clock (NULL: tt_now_ms). */
void cp_store_set_clock(struct cp_store *s, uint64_t (*now_ms)(void *ud), void *ud)
{
    pthread_mutex_lock(&s->mu);
    s->now_ms = now_ms;
    s->now_ud = ud;
    pthread_mutex_unlock(&s->mu);
}

static struct cp__reg *find_reg(struct cp_store *s, const char *address)
{
    for (size_t i = 0; i < s->regs.n; i++)
        if (strcmp(s->regs.v[i].address, address) == 0)
            return &s->regs.v[i];
    return NULL;
}

/* True when service e names address (normalized) as its address or as one of its
 * endpoints. */
static bool service_names(const struct cp__service *e, const char *address)
{
    if (addr_same(e->address, address))
        return true;
    for (size_t j = 0; j < e->eps.n; j++)
        if (addr_same(e->eps.v[j].address, address))
            return true;
    return false;
}

/* True when an operator service names address: the operator's entry wins. Lock held. */
static bool operator_covers_locked(struct cp_store *s, const char *address)
{
    for (size_t i = 0; i < s->services.n; i++)
        if (service_names(&s->services.v[i], address))
            return true;
    return false;
}

/* True when a Kubernetes service that is pushed names address as its address or as one
 * of its endpoints. Lock held. */
static bool k8s_covers_locked(struct cp_store *s, const char *address)
{
    for (size_t i = 0; i < s->k8s.n; i++) {
        const struct cp__service *e = &s->k8s.v[i];

        if (!operator_covers_locked(s, e->address) && service_names(e, address))
            return true;
    }
    return false;
}

/* True when a registration for address is not pushed: an operator or Kubernetes entry
 * names it. Lock held. */
static bool reg_shadowed_locked(struct cp_store *s, const char *address)
{
    return operator_covers_locked(s, address) || k8s_covers_locked(s, address);
}

/* The IP of a (AF_INET or AF_INET6) address with an IPv4-mapped IPv6 address turned into
 * IPv4, written into *out with port 0. */
static void ip_of(const struct tt_addr *a, struct sockaddr_storage *out)
{
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&a->ss;

    memset(out, 0, sizeof(*out));
    if (a->ss.ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)out;

        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, &s6->sin6_addr.s6_addr[12], 4);
    } else if (a->ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *d6 = (struct sockaddr_in6 *)out;

        d6->sin6_family = AF_INET6;
        d6->sin6_addr = s6->sin6_addr;
    } else {
        struct sockaddr_in *d4 = (struct sockaddr_in *)out;

        d4->sin_family = AF_INET;
        d4->sin_addr = ((const struct sockaddr_in *)&a->ss)->sin_addr;
    }
}

static bool ip_wildcard(const struct sockaddr_storage *ip)
{
    if (ip->ss_family == AF_INET)
        return ((const struct sockaddr_in *)ip)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ip)->sin6_addr);
}

static bool ip_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return false;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

/* Resolves one claimed address against the observed IP: writes the endpoint it stands
 * for (a wildcard IP replaced by the observed one) into norm and returns NULL, or returns
 * the refusal reason with detail set. */
static const char *claim_resolve(const char *claim, const struct sockaddr_storage *observed,
                                 char norm[TT_ADDR_TEXT_MAX], char *detail, size_t dlen)
{
    struct sockaddr_storage ip;
    struct tt_addr a;
    uint16_t port;
    char obs[64];

    if (claim == NULL || tt_addr_parse(claim, TT_ADDR_NUMERIC, &a) != 0) {
        snprintf(detail, dlen, "expected IP:PORT or [IPv6]:PORT, got \"%.100s\"",
                 claim ? claim : "");
        return "bad_address";
    }
    port = tt_addr_port(&a);
    ip_of(&a, &ip);
    tt_sockaddr_format((const struct sockaddr *)observed, obs, sizeof(obs));
    if (ip_wildcard(&ip)) {
        ip = *observed;
    } else if (!ip_equal(&ip, observed)) {
        snprintf(detail, dlen, "%.100s is not the IP this sidecar connects from (%s)", claim, obs);
        return "not_observed_ip";
    }
    if (ip.ss_family == AF_INET)
        ((struct sockaddr_in *)&ip)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)&ip)->sin6_port = htons(port);
    tt_sockaddr_format((const struct sockaddr *)&ip, norm, TT_ADDR_TEXT_MAX);
    return NULL;
}

/* Adds {"address", "reason", "detail"} to refused and, when count, counts the refusal.
 * Lock held. */
static void refuse_locked(struct cp_store *s, json_t *refused, bool count, const char *address,
                          const char *reason, const char *detail)
{
    json_array_append_new(refused, json_pack("{s:s,s:s,s:s}", "address", address ? address : "",
                                             "reason", reason, "detail", detail));
    if (count)
        cp__count_refusal_locked(s, CP_REFUSAL_REGISTRATION);
}

/* Removes registration i. Lock held. */
static void reg_remove_locked(struct cp_store *s, size_t i)
{
    reg_free(&s->regs.v[i]);
    memmove(&s->regs.v[i], &s->regs.v[i + 1], (s->regs.n - i - 1) * sizeof(s->regs.v[0]));
    s->regs.n--;
}

static bool in_list(char (*list)[TT_ADDR_TEXT_MAX], const bool *ok, size_t n, const char *a)
{
    for (size_t i = 0; i < n; i++)
        if (ok[i] && strcmp(list[i], a) == 0)
            return true;
    return false;
}

/* The registration rules (see cp_store_registration_set) for holder's claims
 * addresses[0..n): updates the registrations and holder's sidecar record, counts the
 * refusals when count (not when a claim is tried again). *v gets the new version when
 * what sidecars receive changed. Returns the number refused, or -ENOMEM. Lock held. */
static int registration_apply_locked(struct cp_store *s, const char *holder, const char *spiffe_id,
                                     const char *observed, const char *const *addresses, size_t n,
                                     bool count, uint64_t *v)
{
    char(*norm)[TT_ADDR_TEXT_MAX] = calloc(n + 1, sizeof(*norm));
    bool *ok = calloc(n + 1, sizeof(*ok));
    json_t *registered = json_array(), *refused = json_array();
    struct sockaddr_storage obs_ip;
    struct tt_addr obs;
    bool have_obs = observed != NULL && tt_addr_parse(observed, TT_ADDR_NUMERIC, &obs) == 0;
    bool changed = false;
    int n_refused = 0;
    char detail[256];

    if (norm == NULL || ok == NULL || registered == NULL || refused == NULL) {
        free(norm);
        free(ok);
        json_decref(registered);
        json_decref(refused);
        return -ENOMEM;
    }
    if (have_obs)
        ip_of(&obs, &obs_ip);
    for (size_t i = 0; i < n; i++) {
        const char *reason = NULL;
        struct cp__reg *r;

        if (!have_obs) {
            snprintf(detail, sizeof(detail), "the connection's source address is unknown");
            reason = "no_observed_address";
        } else {
            reason = claim_resolve(addresses[i], &obs_ip, norm[i], detail, sizeof(detail));
        }
        if (reason == NULL && in_list(norm, ok, i, norm[i]))
            continue; /* listed twice */
        if (reason == NULL && (r = find_reg(s, norm[i])) != NULL && r->live &&
            strcmp(r->holder, holder) != 0 && strcmp(r->spiffe_id, spiffe_id) != 0) {
            snprintf(detail, sizeof(detail), "%s is registered by %.200s, whose stream is open",
                     norm[i], r->spiffe_id);
            reason = "held_by_other";
        }
        if (reason != NULL) {
            refuse_locked(s, refused, count, addresses[i], reason, detail);
            n_refused++;
            continue;
        }
        ok[i] = true;
    }
    /* What sidecars receive changes when an address comes, goes or changes identity. */
    for (size_t i = 0; i < s->regs.n && !changed; i++)
        changed =
            strcmp(s->regs.v[i].holder, holder) == 0 && !in_list(norm, ok, n, s->regs.v[i].address);
    for (size_t i = 0; i < n && !changed; i++) {
        struct cp__reg *r = ok[i] ? find_reg(s, norm[i]) : NULL;

        changed = ok[i] && (r == NULL || strcmp(r->spiffe_id, spiffe_id) != 0);
    }
    if (changed && cp__store_bump_locked(s) != 0) {
        for (size_t i = 0; i < n; i++)
            if (ok[i]) {
                refuse_locked(s, refused, count, addresses[i], "store_unavailable",
                              "the snapshot version could not be saved");
                ok[i] = false;
                n_refused++;
            }
        changed = false;
    }
    if (changed)
        *v = s->version;
    for (size_t i = s->regs.n; i-- > 0;)
        if (strcmp(s->regs.v[i].holder, holder) == 0 && !in_list(norm, ok, n, s->regs.v[i].address))
            reg_remove_locked(s, i);
    for (size_t i = 0; i < n; i++) {
        struct cp__reg *r;
        char *id, *h;

        if (!ok[i])
            continue;
        r = find_reg(s, norm[i]);
        if (r == NULL && CP__VEC_GROW(s->regs) == 0) {
            r = &s->regs.v[s->regs.n];
            memset(r, 0, sizeof(*r));
            if ((r->address = strdup(norm[i])) != NULL)
                s->regs.n++;
            else
                r = NULL;
        }
        id = strdup(spiffe_id);
        h = strdup(holder);
        if (r == NULL || id == NULL || h == NULL) {
            free(id);
            free(h);
            continue; /* out of memory: this one is not held */
        }
        free(r->spiffe_id);
        free(r->holder);
        r->spiffe_id = id;
        r->holder = h;
        r->live = true;
        json_array_append_new(registered, json_string(norm[i]));
    }
    cp__sidecar_set_registration_locked(s, holder, registered, refused);
    free(norm);
    free(ok);
    return n_refused;
}

/* Replaces holder's registration with what of addresses[0..n) it may hold (see store.h). */
int cp_store_registration_set(struct cp_store *s, const char *holder, const char *spiffe_id,
                              const char *observed, const char *const *addresses, size_t n)
{
    uint64_t v = 0;
    int rc;

    pthread_mutex_lock(&s->mu);
    /* Kept with the sidecar, to try again what another stream held once that one ends. */
    cp__sidecar_set_claims_locked(s, holder, addresses, n);
    rc = registration_apply_locked(s, holder, spiffe_id, observed, addresses, n, true, &v);
    cp__store_unlock_notify(s, v);
    return rc;
}

/* True when sidecar c has a claim refused because another stream held it. */
static bool waits_for_address(const struct cp__sidecar *c)
{
    json_t *e;
    size_t i;

    json_array_foreach(c->refused, i, e)
    {
        if (strcmp(json_string_value(json_object_get(e, "reason")), "held_by_other") == 0)
            return true;
    }
    return false;
}

/* Tries again the claims of every open stream that was refused an address another stream
 * held (their holder may just have ended): such a claim replaces the old registration
 * once its stream is gone. Refusals are not counted twice. Lock held. */
static void regs_retry_locked(struct cp_store *s, uint64_t *v)
{
    for (size_t i = 0; i < s->sidecars.n; i++) {
        struct cp__sidecar *c = &s->sidecars.v[i];

        if (c->spiffe_id != NULL && waits_for_address(c))
            registration_apply_locked(s, c->id, c->spiffe_id, c->peer,
                                      (const char *const *)c->claims, c->n_claims, false, v);
    }
}

/* Starts the grace period of holder's registrations and lets streams waiting for one of
 * its addresses take it (see store_int.h). Lock held. */
void cp__regs_stream_gone_locked(struct cp_store *s, const char *holder, uint64_t *v)
{
    uint64_t now = now_locked(s);
    bool any = false;

    for (size_t i = 0; i < s->regs.n; i++)
        if (s->regs.v[i].live && strcmp(s->regs.v[i].holder, holder) == 0) {
            s->regs.v[i].live = false;
            s->regs.v[i].gone_ms = now;
            any = true;
        }
    if (any)
        regs_retry_locked(s, v);
}

static bool reg_expired(const struct cp__reg *r, uint64_t now, uint64_t grace)
{
    return !r->live && now - r->gone_ms >= grace;
}

/* Drops registrations past their grace period (see store.h). */
size_t cp_store_registrations_expire(struct cp_store *s)
{
    size_t dropped = 0;
    uint64_t now, v = 0;

    pthread_mutex_lock(&s->mu);
    now = now_locked(s);
    for (size_t i = 0; i < s->regs.n; i++)
        dropped += reg_expired(&s->regs.v[i], now, s->reg_grace_ms);
    /* The version first: when it cannot be saved, the entries stay until the next try. */
    if (dropped > 0 && cp__store_bump_locked(s) == 0) {
        v = s->version;
        for (size_t i = s->regs.n; i-- > 0;)
            if (reg_expired(&s->regs.v[i], now, s->reg_grace_ms))
                reg_remove_locked(s, i);
    } else {
        dropped = 0;
    }
    cp__store_unlock_notify(s, v);
    return dropped;
}

/* ---- what sidecars receive, what operators see ---- */

static int snap_push(struct cp_snapshot *snap, const char *address, const char *spiffe_id,
                     const char *service)
{
    struct cp_service_entry *d = &snap->services[snap->n_services];

    d->address = strdup(address);
    d->spiffe_id = strdup(spiffe_id);
    d->service_address = strdup(service);
    snap->n_services++;
    return d->address && d->spiffe_id && d->service_address ? 0 : -ENOMEM;
}

/* Fills snap->services (see store_int.h). Lock held. */
int cp__services_snapshot_locked(struct cp_store *s, struct cp_snapshot *snap)
{
    size_t n = s->regs.n + 1;
    int rc = 0;

    for (size_t i = 0; i < s->services.n; i++)
        n += s->services.v[i].eps.n;
    for (size_t i = 0; i < s->k8s.n; i++)
        n += s->k8s.v[i].eps.n;
    snap->services = calloc(n, sizeof(*snap->services));
    if (snap->services == NULL)
        return -ENOMEM;
    for (size_t i = 0; rc == 0 && i < s->services.n; i++) {
        const struct cp__service *e = &s->services.v[i];

        for (size_t j = 0; rc == 0 && j < e->eps.n; j++)
            rc = snap_push(snap, e->eps.v[j].address, e->eps.v[j].spiffe_id,
                           e->bare ? "" : e->address);
    }
    for (size_t i = 0; rc == 0 && i < s->k8s.n; i++) {
        const struct cp__service *e = &s->k8s.v[i];

        if (operator_covers_locked(s, e->address))
            continue;
        for (size_t j = 0; rc == 0 && j < e->eps.n; j++)
            rc = snap_push(snap, e->eps.v[j].address, e->eps.v[j].spiffe_id,
                           e->bare ? "" : e->address);
    }
    for (size_t i = 0; rc == 0 && i < s->regs.n; i++)
        if (!reg_shadowed_locked(s, s->regs.v[i].address))
            rc = snap_push(snap, s->regs.v[i].address, s->regs.v[i].spiffe_id, "");
    return rc;
}

/* The API's view of an operator service: every entry lists its endpoints, and
 * "spiffe_id" is null for a service with endpoints. */
static json_t *service_view(json_t *obj, const void *item, void *ud)
{
    const struct cp__service *e = item;

    (void)ud;
    if (e->bare && json_object_set_new(obj, "endpoints", endpoints_json(e)) != 0)
        goto nomem;
    if (!e->bare && json_object_set_new(obj, "spiffe_id", json_null()) != 0)
        goto nomem;
    return obj;
nomem:
    json_decref(obj);
    return NULL;
}

static json_t *reg_json_locked(struct cp_store *s, const struct cp__reg *r, uint64_t now)
{
    uint64_t left = 0;

    if (!r->live && now - r->gone_ms < s->reg_grace_ms)
        left = s->reg_grace_ms - (now - r->gone_ms);
    return json_pack("{s:s,s:s,s:s,s:[{s:s,s:s}],s:s,s:s,s:I,s:b}", "address", r->address,
                     "spiffe_id", r->spiffe_id, "source", CP_SOURCE_REGISTRATION, "endpoints",
                     "address", r->address, "spiffe_id", r->spiffe_id, "sidecar", r->holder,
                     "state", r->live ? "live" : "grace", "grace_left_ms", (json_int_t)left,
                     "shadowed", reg_shadowed_locked(s, r->address));
}

/* Returns a new JSON array of operator services then registrations (see store.h), NULL
 * when out of memory. Takes the store lock. */
json_t *cp_store_services_json(struct cp_store *s)
{
    json_t *arr;
    uint64_t now;

    pthread_mutex_lock(&s->mu);
    now = now_locked(s);
    arr = cp__coll_array(&cp__services_coll, s->services.v, s->services.n, service_view, NULL);
    for (size_t i = 0; arr != NULL && i < s->k8s.n; i++) {
        json_t *o = service_view(service_json(&s->k8s.v[i]), &s->k8s.v[i], NULL);

        if (o != NULL) {
            json_object_set_new(o, "kubernetes",
                                json_string(s->k8s.v[i].name ? s->k8s.v[i].name : ""));
            json_object_set_new(o, "shadowed",
                                json_boolean(operator_covers_locked(s, s->k8s.v[i].address)));
        }
        if (o == NULL || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    for (size_t i = 0; arr != NULL && i < s->regs.n; i++) {
        if (json_array_append_new(arr, reg_json_locked(s, &s->regs.v[i], now)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}
