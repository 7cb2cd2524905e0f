/* The per-worker balancer (balancer.h): a fixed open-addressing table of endpoints keyed
 * by normalized address, written by its worker only. Fields /stats reads are stored with
 * relaxed atomics; a slot's key is written before it is marked used (release). */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "net/balancer.h"
#include "snapshot/services.h"
#include "tls/tls.h"

#define TABLE_SIZE (TT_BALANCER_ENDPOINTS_MAX * 2) /* at most half full */

struct slot {
    bool used; /* atomic (release on set) */
    struct tt_addr_key key;
    struct tt_addr addr;
    uint64_t active, picks, connect_failures, ejections, ewma_us, ejected_until_ms;
    unsigned streak;             /* consecutive connect failures */
    uint64_t last_sample_ms;     /* when ewma_us was last fed */
    struct tt_tls_resume resume; /* worker thread only: the endpoint's session ticket */
};

struct tt_balancer {
    uint64_t rng;
    size_t n_used;
    struct slot slots[TABLE_SIZE];
};

#define SET(f, v) __atomic_store_n(&(f), (v), __ATOMIC_RELAXED)
#define GET(f)    __atomic_load_n(&(f), __ATOMIC_RELAXED)

/* Creates a balancer (balancer.h). */
struct tt_balancer *tt_balancer_new(uint64_t seed)
{
    struct tt_balancer *b = calloc(1, sizeof(*b));

    if (b != NULL)
        b->rng = seed != 0 ? seed : 0x9e3779b97f4a7c15ull;
    return b;
}

/* Frees a balancer; accepts NULL. */
void tt_balancer_free(struct tt_balancer *b)
{
    free(b);
}

/* xorshift64*: the worker's private random numbers. */
static uint64_t next_random(struct tt_balancer *b)
{
    b->rng ^= b->rng >> 12;
    b->rng ^= b->rng << 25;
    b->rng ^= b->rng >> 27;
    return b->rng * 0x2545f4914f6cdd1dull;
}

static size_t key_hash(const struct tt_addr_key *k)
{
    const uint8_t *p = (const uint8_t *)k;
    uint64_t h = 1469598103934665603ull;

    for (size_t i = 0; i < sizeof(*k); i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (size_t)h;
}

/* The slot of addr, created when `create` and absent; NULL when absent (or the table is
 * full). */
static struct slot *find(struct tt_balancer *b, const struct tt_addr *addr, bool create)
{
    struct tt_addr_key k;
    size_t i;

    memset(&k, 0, sizeof(k));
    if (!tt_addr_key_of((const struct sockaddr *)&addr->ss, &k))
        return NULL;
    for (i = key_hash(&k) % TABLE_SIZE;; i = (i + 1) % TABLE_SIZE) {
        struct slot *s = &b->slots[i];
        if (!s->used)
            break;
        if (memcmp(&s->key, &k, sizeof(k)) == 0)
            return s;
    }
    if (!create || b->n_used >= TT_BALANCER_ENDPOINTS_MAX)
        return NULL;
    struct slot *s = &b->slots[i];
    s->key = k;
    s->addr = *addr;
    b->n_used++;
    __atomic_store_n(&s->used, true, __ATOMIC_RELEASE);
    return s;
}

/* The cost of sending one more connection to s: (active + 1) x latency, latencies under
 * the floor counted as the floor (a local network's jitter is no preference). The
 * latency halves for every TT_BALANCER_DECAY_MS without a new sample, so an endpoint
 * that was slow once is tried again (it is fed only when picked). */
static uint64_t cost(const struct slot *s, uint64_t now_ms)
{
    uint64_t age =
        now_ms > s->last_sample_ms ? (now_ms - s->last_sample_ms) / TT_BALANCER_DECAY_MS : 0;
    uint64_t ewma = age >= 63 ? 0 : s->ewma_us >> age;
    uint64_t lat = ewma < TT_BALANCER_LATENCY_FLOOR ? TT_BALANCER_LATENCY_FLOOR : ewma;
    return (s->active + 1) * lat;
}

/* Picks an endpoint (balancer.h). */
int tt_balancer_pick(struct tt_balancer *b, const struct tt_service *svc, uint64_t tried,
                     uint64_t now_ms)
{
    int cand[64], n = 0, soonest = -1;
    uint64_t soonest_ms = UINT64_MAX;
    struct slot *slots[64];

    for (size_t i = 0; i < svc->n_endpoints && i < 64; i++) {
        if (tried & (1ull << i))
            continue;
        struct slot *s = find(b, &svc->endpoints[i].addr, true);
        if (s == NULL)
            return -1;
        slots[i] = s;
        if (s->ejected_until_ms > now_ms) {
            if (s->ejected_until_ms < soonest_ms) {
                soonest_ms = s->ejected_until_ms;
                soonest = (int)i;
            }
            continue;
        }
        cand[n++] = (int)i;
    }
    int pick;
    if (n == 0) {
        if (soonest < 0)
            return -1;
        pick = soonest;
    } else if (n == 1) {
        pick = cand[0];
    } else {
        int x = cand[next_random(b) % (uint64_t)n];
        int y = cand[next_random(b) % (uint64_t)(n - 1)];
        if (y == x)
            y = cand[n - 1]; /* two distinct choices */
        uint64_t cx = cost(slots[x], now_ms), cy = cost(slots[y], now_ms);
        pick = cx < cy ? x : cy < cx ? y : (next_random(b) & 1) ? x : y;
    }
    SET(slots[pick]->active, slots[pick]->active + 1);
    SET(slots[pick]->picks, slots[pick]->picks + 1);
    return pick;
}

/* Feeds a connect latency: the first sample sets the average, later ones weigh 1/4. */
void tt_balancer_connected(struct tt_balancer *b, const struct tt_addr *ep, uint64_t latency_us)
{
    struct slot *s = find(b, ep, false);

    if (s == NULL)
        return;
    SET(s->ewma_us, s->ewma_us == 0 ? latency_us : (s->ewma_us * 3 + latency_us) / 4);
    s->last_sample_ms = tt_now_ms();
    s->streak = 0;
}

/* Counts a failed connect and ejects the endpoint for the backoff (balancer.h). */
void tt_balancer_failed(struct tt_balancer *b, const struct tt_addr *ep, uint64_t now_ms)
{
    struct slot *s = find(b, ep, false);
    uint64_t backoff = TT_BALANCER_BACKOFF_MS;

    if (s == NULL)
        return;
    if (s->active > 0)
        SET(s->active, s->active - 1);
    SET(s->connect_failures, s->connect_failures + 1);
    if (s->ejected_until_ms > now_ms)
        return;
    for (unsigned i = 0; i < s->streak && backoff < TT_BALANCER_BACKOFF_MAX; i++)
        backoff *= 2;
    if (backoff > TT_BALANCER_BACKOFF_MAX)
        backoff = TT_BALANCER_BACKOFF_MAX;
    s->streak++;
    SET(s->ejections, s->ejections + 1);
    SET(s->ejected_until_ms, now_ms + backoff);
}

/* Releases a connected connection's active count. */
void tt_balancer_released(struct tt_balancer *b, const struct tt_addr *ep)
{
    struct slot *s = find(b, ep, false);

    if (s != NULL && s->active > 0)
        SET(s->active, s->active - 1);
}

/* Slots of the table, for /stats. */
size_t tt_balancer_capacity(const struct tt_balancer *b)
{
    return b != NULL ? TABLE_SIZE : 0;
}

/* Slot i's figures when in use (any thread). */
bool tt_balancer_stats_at(const struct tt_balancer *b, size_t i, struct tt_balancer_stats *out)
{
    const struct slot *s = &b->slots[i];

    if (!__atomic_load_n(&s->used, __ATOMIC_ACQUIRE))
        return false;
    out->addr = s->addr;
    out->active = GET(s->active);
    out->picks = GET(s->picks);
    out->connect_failures = GET(s->connect_failures);
    out->ejections = GET(s->ejections);
    out->ewma_connect_us = GET(s->ewma_us);
    out->ejected_until_ms = GET(s->ejected_until_ms);
    return true;
}

/* Slot i's ticket slot, NULL for a slot not in use (balancer.h). */
struct tt_tls_resume *tt_balancer_resume_at(struct tt_balancer *b, size_t i)
{
    return i < TABLE_SIZE && b->slots[i].used ? &b->slots[i].resume : NULL;
}

/* The endpoint's ticket slot (balancer.h). */
struct tt_tls_resume *tt_balancer_resume_slot(struct tt_balancer *b, const struct tt_addr *ep)
{
    struct slot *s = find(b, ep, true);

    return s != NULL ? &s->resume : NULL;
}
