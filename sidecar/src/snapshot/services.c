/* The service table (services.h). Built once, then read-only: services sorted by a
 * normalized address key for bsearch, endpoints in one array, identities in one block of
 * strings owned by the table. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/spiffe.h"
#include "snapshot/services.h"

struct svc {
    struct tt_addr_key key;
    struct tt_service pub;
};

struct tt_services {
    int refs;         /* atomic */
    struct svc *svcs; /* sorted by key */
    size_t n;
    struct tt_endpoint *endpoints; /* service by service */
    size_t n_endpoints;            /* each holds a strdup'ed spiffe_id */
};

/* One checked builder entry. */
struct item {
    struct tt_addr_key skey, ekey;
    struct tt_addr saddr, eaddr;
    const char *spiffe_id;
    size_t index; /* in the builder's input, for messages and a stable order */
    bool bare;
};

/* The key of sa (services.h). */
bool tt_addr_key_of(const struct sockaddr *sa, struct tt_addr_key *k)
{
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

    memset(k, 0, sizeof(*k));
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        k->family = 4;
        memcpy(k->ip, &in->sin_addr, 4);
        k->port = ntohs(in->sin_port);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        k->port = ntohs(in6->sin6_port);
        if (memcmp(in6->sin6_addr.s6_addr, mapped, sizeof(mapped)) == 0) {
            k->family = 4;
            memcpy(k->ip, in6->sin6_addr.s6_addr + 12, 4);
        } else {
            k->family = 6;
            memcpy(k->ip, in6->sin6_addr.s6_addr, 16);
        }
        return true;
    }
    return false;
}

static int key_cmp(const struct tt_addr_key *a, const struct tt_addr_key *b)
{
    if (a->family != b->family)
        return a->family < b->family ? -1 : 1;
    int r = memcmp(a->ip, b->ip, sizeof(a->ip));
    if (r != 0)
        return r;
    return a->port == b->port ? 0 : a->port < b->port ? -1 : 1;
}

static int svc_cmp(const void *a, const void *b)
{
    return key_cmp(&((const struct svc *)a)->key, &((const struct svc *)b)->key);
}

/* Service address first, then input order: groups a service's endpoints in order. */
static int item_cmp(const void *a, const void *b)
{
    const struct item *x = a, *y = b;
    int r = key_cmp(&x->skey, &y->skey);
    return r != 0 ? r : x->index < y->index ? -1 : x->index > y->index;
}

static void services_free(struct tt_services *s)
{
    for (size_t i = 0; i < s->n_endpoints; i++)
        free((char *)s->endpoints[i].spiffe_id);
    free(s->endpoints);
    free(s->svcs);
    free(s);
}

/* Parses an IP-literal address with a non-zero port into out and its key. */
static bool parse_ip(const char *text, struct tt_addr *out, struct tt_addr_key *key)
{
    if (text == NULL || tt_addr_parse(text, TT_ADDR_NUMERIC, out) < 0)
        return false;
    tt_addr_key_of((const struct sockaddr *)&out->ss, key);
    return key->port != 0;
}

/* "name:PORT" with a DNS-style name: well formed, but not an address a captured
 * connection can be matched against. */
static bool is_host_address(const char *text)
{
    const char *colon = text != NULL ? strrchr(text, ':') : NULL;
    bool letter = false;

    if (colon == NULL || colon == text || colon[1] == '\0')
        return false;
    for (const char *p = text; p < colon; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
            letter = true;
        else if (!((*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
            return false;
    }
    for (const char *p = colon + 1; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return false;
    }
    return letter;
}

/* Checks entries[i] into *it. Returns 1 when kept, 0 when skipped (a host name), -1 on
 * error with err set. */
static int check_entry(const struct tt_service_entry *e, size_t i, struct item *it, char *err,
                       size_t errlen)
{
    it->index = i;
    it->bare = e->service == NULL || e->service[0] == '\0';
    it->spiffe_id = e->spiffe_id;
    if (!parse_ip(e->endpoint, &it->eaddr, &it->ekey)) {
        if (is_host_address(e->endpoint))
            return 0;
        tt_errf(err, errlen, "services[%zu].endpoint: expected IP:PORT, got \"%.100s\"", i,
                e->endpoint != NULL ? e->endpoint : "");
        return -1;
    }
    if (it->bare) {
        it->saddr = it->eaddr;
        it->skey = it->ekey;
    } else if (!parse_ip(e->service, &it->saddr, &it->skey)) {
        if (is_host_address(e->service))
            return 0;
        tt_errf(err, errlen, "services[%zu].service: expected IP:PORT, got \"%.100s\"", i,
                e->service);
        return -1;
    }
    if (e->spiffe_id == NULL || tt_spiffe_check(e->spiffe_id, strlen(e->spiffe_id), false) < 0) {
        tt_errf(err, errlen, "services[%zu].spiffe_id: expected a SPIFFE ID, got \"%.100s\"", i,
                e->spiffe_id != NULL ? e->spiffe_id : "");
        return -1;
    }
    return 1;
}

/* Adds items[0..n) (one service's, in input order) as service `v`'s endpoints, each
 * endpoint once. Returns 0, -1 with err set, or -ENOMEM. */
static int add_service(struct tt_services *s, const struct item *items, size_t n, char *err,
                       size_t errlen)
{
    struct svc *v = &s->svcs[s->n];
    size_t first = s->n_endpoints;

    v->key = items[0].skey;
    v->pub.address = items[0].saddr;
    for (size_t k = 0; k < n; k++) {
        const struct item *it = &items[k];
        bool dup = false;

        if (it->bare != items[0].bare) {
            tt_errf(err, errlen, "services[%zu]: %s is both a service address and a bare endpoint",
                    it->index, v->pub.address.text);
            return -1;
        }
        for (size_t j = first; j < s->n_endpoints; j++) {
            struct tt_addr_key jk;
            tt_addr_key_of((const struct sockaddr *)&s->endpoints[j].addr.ss, &jk);
            if (key_cmp(&jk, &it->ekey) != 0)
                continue;
            if (strcmp(s->endpoints[j].spiffe_id, it->spiffe_id) != 0) {
                tt_errf(err, errlen,
                        "services[%zu]: endpoint %s of %s listed with two identities "
                        "(%.200s, %.200s)",
                        it->index, it->eaddr.text, v->pub.address.text, s->endpoints[j].spiffe_id,
                        it->spiffe_id);
                return -1;
            }
            dup = true;
        }
        if (dup)
            continue;
        struct tt_endpoint *ep = &s->endpoints[s->n_endpoints];
        ep->addr = it->eaddr;
        if ((ep->spiffe_id = strdup(it->spiffe_id)) == NULL)
            return -ENOMEM;
        s->n_endpoints++;
    }
    v->pub.n_endpoints = s->n_endpoints - first;
    s->n++;
    return 0;
}

/* Orders items by endpoint address, then identity: groups one address's listings. */
static int endpoint_cmp(const void *a, const void *b)
{
    const struct item *x = *(const struct item *const *)a, *y = *(const struct item *const *)b;
    int r = key_cmp(&x->ekey, &y->ekey);
    return r != 0 ? r : strcmp(x->spiffe_id, y->spiffe_id);
}

/* Orders items by service address only (for bsearch over items sorted by item_cmp). */
static int skey_cmp(const void *key, const void *elem)
{
    return key_cmp(key, &((const struct item *)elem)->skey);
}

/* Makes each endpoint of a service reachable at its own address too ("an endpoint address
 * is dialled as is, with its identity required"): appends to items[0..n_items), sorted by
 * item_cmp and with room for twice as many, one bare item per endpoint address that is
 * neither a service address nor a bare entry already and that every service lists with
 * the same identity (an address listed with two identities has no one identity to require
 * when dialled directly, so it stays unmatched). Returns the new count, or 0 with
 * -ENOMEM in *rc. */
static size_t add_endpoint_items(struct item *items, size_t n_items, int *rc)
{
    const struct item **eps = malloc(n_items * sizeof(*eps));
    size_t n_eps = 0, n = n_items;

    if (eps == NULL) {
        *rc = -ENOMEM;
        return 0;
    }
    for (size_t i = 0; i < n_items; i++)
        if (!items[i].bare)
            eps[n_eps++] = &items[i];
    qsort(eps, n_eps, sizeof(*eps), endpoint_cmp);
    for (size_t start = 0, end; start < n_eps; start = end) {
        bool one_identity = true;

        for (end = start + 1; end < n_eps && key_cmp(&eps[end]->ekey, &eps[start]->ekey) == 0;
             end++)
            one_identity = one_identity && strcmp(eps[end]->spiffe_id, eps[start]->spiffe_id) == 0;
        if (!one_identity ||
            bsearch(&eps[start]->ekey, items, n_items, sizeof(*items), skey_cmp) != NULL)
            continue;
        items[n] = *eps[start];
        items[n].bare = true;
        items[n].saddr = items[n].eaddr;
        items[n].skey = items[n].ekey;
        n++;
    }
    free(eps);
    *rc = 0;
    return n;
}

/* Builds a table (see services.h). */
struct tt_services *tt_services_new(const struct tt_service_entry *entries, size_t n,
                                    size_t *skipped, char *err, size_t errlen)
{
    struct tt_services *s = calloc(1, sizeof(*s));
    struct item *items = NULL;
    size_t n_items = 0;

    if (skipped != NULL)
        *skipped = 0;
    if (s == NULL)
        goto err_nomem;
    s->refs = 1;
    if (n == 0)
        return s;
    /* Each entry may also make a service of one at its endpoint address. */
    items = calloc(2 * n, sizeof(*items));
    s->svcs = calloc(2 * n, sizeof(*s->svcs));
    s->endpoints = calloc(2 * n, sizeof(*s->endpoints));
    if (items == NULL || s->svcs == NULL || s->endpoints == NULL)
        goto err_nomem;

    for (size_t i = 0; i < n; i++) {
        int r = check_entry(&entries[i], i, &items[n_items], err, errlen);
        if (r < 0)
            goto err_free;
        if (r == 0 && skipped != NULL)
            (*skipped)++;
        n_items += (size_t)r;
    }
    qsort(items, n_items, sizeof(*items), item_cmp);
    if (n_items > 0) {
        int rc;
        size_t with_endpoints = add_endpoint_items(items, n_items, &rc);
        if (rc < 0)
            goto err_nomem;
        if (with_endpoints != n_items) {
            n_items = with_endpoints;
            qsort(items, n_items, sizeof(*items), item_cmp);
        }
    }
    for (size_t start = 0, end; start < n_items; start = end) {
        for (end = start + 1; end < n_items && key_cmp(&items[end].skey, &items[start].skey) == 0;
             end++)
            ;
        int r = add_service(s, &items[start], end - start, err, errlen);
        if (r == -ENOMEM)
            goto err_nomem;
        if (r < 0)
            goto err_free;
    }
    /* Runs were taken in key order, so svcs is sorted already; endpoints sit still. */
    for (size_t v = 0, pos = 0; v < s->n; v++) {
        s->svcs[v].pub.endpoints = &s->endpoints[pos];
        pos += s->svcs[v].pub.n_endpoints;
    }
    free(items);
    return s;

err_nomem:
    tt_errf(err, errlen, "services: out of memory");
err_free:
    free(items);
    if (s != NULL)
        services_free(s);
    return NULL;
}

/* Takes a reference; any thread. */
struct tt_services *tt_services_ref(struct tt_services *s)
{
    __atomic_fetch_add(&s->refs, 1, __ATOMIC_RELAXED);
    return s;
}

/* Drops a reference; the last one frees the table. */
void tt_services_unref(struct tt_services *s)
{
    if (s != NULL && __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0)
        services_free(s);
}

/* The service at `sa`, or NULL. */
const struct tt_service *tt_services_lookup(const struct tt_services *s, const struct sockaddr *sa)
{
    struct svc probe;
    const struct svc *hit;

    if (s == NULL || s->n == 0 || sa == NULL || !tt_addr_key_of(sa, &probe.key))
        return NULL;
    hit = bsearch(&probe, s->svcs, s->n, sizeof(*s->svcs), svc_cmp);
    return hit != NULL ? &hit->pub : NULL;
}

/* Number of services. */
size_t tt_services_count(const struct tt_services *s)
{
    return s != NULL ? s->n : 0;
}

/* Service i in address order. */
const struct tt_service *tt_services_get(const struct tt_services *s, size_t i)
{
    return s != NULL && i < s->n ? &s->svcs[i].pub : NULL;
}

/* Table equality: same services, same endpoints in the same order, same identities. */
bool tt_services_equal(const struct tt_services *a, const struct tt_services *b)
{
    size_t n = tt_services_count(a);

    if (n != tt_services_count(b))
        return false;
    for (size_t i = 0; i < n; i++) {
        const struct svc *x = &a->svcs[i], *y = &b->svcs[i];
        if (key_cmp(&x->key, &y->key) != 0 || x->pub.n_endpoints != y->pub.n_endpoints)
            return false;
        for (size_t j = 0; j < x->pub.n_endpoints; j++) {
            struct tt_addr_key kx, ky;
            tt_addr_key_of((const struct sockaddr *)&x->pub.endpoints[j].addr.ss, &kx);
            tt_addr_key_of((const struct sockaddr *)&y->pub.endpoints[j].addr.ss, &ky);
            if (key_cmp(&kx, &ky) != 0 ||
                strcmp(x->pub.endpoints[j].spiffe_id, y->pub.endpoints[j].spiffe_id) != 0)
                return false;
        }
    }
    return true;
}
