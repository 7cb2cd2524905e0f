/* The pool of HTTP/2 links between sidecars (pool.h). Single-threaded: one pool per
 * worker. Connections are opaque here; everything that touches a socket or a stream of a
 * tunnel goes through the ops the connection module gives (no include of net/conn.h).
 *
 * Re-entrancy: a session call (feed, pending) fires stream callbacks into connections,
 * which may write to their streams, close themselves (tt_pool_detach) or ask for a flush;
 * `busy` marks those calls, and a flush asked for meanwhile runs when they return. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "core/log.h"
#include "http/h2.h"
#include "metrics/metrics.h"
#include "net/pool.h"

/* One destination of the outbound side: the address dialled and the identity required. */
struct pool_dest {
    struct pool_dest *next;
    struct tt_addr target;
    char *expected_id;
    struct tt_link *links;    /* dialling, up or retiring */
    uint64_t direct_until_ms; /* declined the token: direct until then */
};

enum link_state {
    LINK_DIALLING, /* the carrier connects and shakes hands; members wait */
    LINK_UP,       /* the session runs; members ride once tunnels are allowed */
    LINK_RETIRING, /* GOAWAY sent: no new tunnel; closes when the last one is over */
};

struct tt_link {
    struct tt_link *next, *prev; /* the destination's links, or the pool's inbound ones */
    struct tt_pool *pool;
    struct pool_dest *dest; /* outbound; NULL inbound */
    struct tt_conn *carrier;
    struct tt_h2 *h2;
    struct tt_listener_counters *counters;
    const void *identity; /* the snapshot identity the carrier shook hands with */
    enum link_state state;
    struct tt_pool_member *waiting; /* outbound: members waiting for tunnels to be allowed */
    struct tt_pool_member *tunnels; /* members riding a stream */
    struct tt_link *flush_next;     /* on the pool's deferred flush list */
    size_t n_waiting, n_tunnels;
    bool busy;           /* inside a session call (see the file's comment) */
    bool flush_wanted;   /* a flush was asked for while busy */
    bool flush_queued;   /* on the pool's deferred flush list (tt_link_flush_soon) */
    bool ping_out;       /* a PING waits for its answer */
    bool retire_when_up; /* retired while dialling: GOAWAY once its waiting members rode */
    unsigned wake_round; /* link_wake_blocked's rounds */
    uint64_t ping_sent_ms;
    uint64_t idle_since_ms;   /* the last tunnel ended (or the link came up) */
    uint64_t notice_since_ms; /* inbound: the first tick that saw our drain notice unanswered */
};

struct tt_pool {
    const struct tt_pool_ops *ops;
    uint64_t idle_ms;
    struct pool_dest *dests;
    struct tt_link *inbound;
    struct tt_link *flush_head; /* links that asked for a deferred flush */
    size_t n_links;
    bool draining;
    uint8_t out[16 * 1024 - 256]; /* frames batched into one TLS record */
};

static void link_ride_waiting(struct tt_link *link);

/* ---- member lists -------------------------------------------------------------------- */

static void member_push(struct tt_pool_member **head, struct tt_pool_member *m)
{
    m->prev = NULL;
    m->next = *head;
    if (*head != NULL)
        (*head)->prev = m;
    *head = m;
}

static void member_unlink(struct tt_pool_member **head, struct tt_pool_member *m)
{
    if (m->prev != NULL)
        m->prev->next = m->next;
    else
        *head = m->next;
    if (m->next != NULL)
        m->next->prev = m->prev;
    m->next = m->prev = NULL;
}

/* Makes member m wait for link to come up (on its waiting list). */
static void member_wait(struct tt_link *link, struct tt_pool_member *m)
{
    m->link = link;
    m->riding = false;
    member_push(&link->waiting, m);
    link->n_waiting++;
}

/* Makes member m ride link (off its waiting list if it was there): counted. */
static void member_ride(struct tt_link *link, struct tt_pool_member *m)
{
    if (m->link == link && !m->riding) {
        member_unlink(&link->waiting, m);
        link->n_waiting--;
    }
    m->link = link;
    m->riding = true;
    member_push(&link->tunnels, m);
    link->n_tunnels++;
    TT_COUNTER_ADD(m->counters->pool.streams_opened, 1);
}

/* Takes m out of the pool (see pool.h). */
void tt_pool_detach(struct tt_pool_member *m)
{
    struct tt_link *link = m->link;

    if (link == NULL)
        return;
    if (m->riding) {
        member_unlink(&link->tunnels, m);
        link->n_tunnels--;
        TT_COUNTER_ADD(m->counters->pool.streams_closed, 1);
        if (link->n_tunnels == 0)
            link->idle_since_ms = tt_now_ms();
        if (link->n_tunnels == 0 && link->n_waiting == 0 && link->state == LINK_RETIRING &&
            link->carrier != NULL && link->pool->ops->wake != NULL)
            link->pool->ops->wake(link->carrier); /* done: close it now, not at its tick */
    } else {
        member_unlink(&link->waiting, m);
        link->n_waiting--;
    }
    m->link = NULL;
    m->riding = false;
    m->blocked = false;
}

/* ---- the pool ------------------------------------------------------------------------ */

/* A worker's pool (see pool.h). */
struct tt_pool *tt_pool_new(const struct tt_pool_ops *ops, uint64_t idle_ms)
{
    struct tt_pool *pool = calloc(1, sizeof(*pool));

    if (pool == NULL)
        return NULL;
    pool->ops = ops;
    pool->idle_ms = idle_ms;
    return pool;
}

/* Frees the pool and its destinations; the links are gone already (pool.h). */
void tt_pool_free(struct tt_pool *pool)
{
    if (pool == NULL)
        return;
    for (struct pool_dest *d = pool->dests, *next; d != NULL; d = next) {
        next = d->next;
        free(d->expected_id);
        free(d);
    }
    free(pool);
}

size_t tt_pool_links(const struct tt_pool *pool)
{
    return pool->n_links;
}

/* The destination for (target, expected_id), created on first use; NULL when out of
 * memory. */
static struct pool_dest *pool_dest_get(struct tt_pool *pool, const struct tt_addr *target,
                                       const char *expected_id)
{
    struct pool_dest *d;

    for (d = pool->dests; d != NULL; d = d->next) {
        if (strcmp(d->target.text, target->text) == 0 && strcmp(d->expected_id, expected_id) == 0)
            return d;
    }
    d = calloc(1, sizeof(*d));
    if (d == NULL || (d->expected_id = strdup(expected_id)) == NULL) {
        free(d);
        return NULL;
    }
    d->target = *target;
    d->next = pool->dests;
    pool->dests = d;
    return d;
}

static void link_list_push(struct tt_link **head, struct tt_link *link)
{
    link->prev = NULL;
    link->next = *head;
    if (*head != NULL)
        (*head)->prev = link;
    *head = link;
}

static void link_list_unlink(struct tt_link **head, struct tt_link *link)
{
    if (link->prev != NULL)
        link->prev->next = link->next;
    else
        *head = link->next;
    if (link->next != NULL)
        link->next->prev = link->prev;
    link->next = link->prev = NULL;
}

/* Streams a link could still take: its tunnels and waiting members count. */
static size_t link_room(const struct tt_link *link)
{
    size_t used = link->n_tunnels + link->n_waiting;

    return used < TT_POOL_STREAMS_PER_LINK ? TT_POOL_STREAMS_PER_LINK - used : 0;
}

/* Whether members can open tunnels on link now. */
static bool link_can_ride(struct tt_link *link)
{
    return link->state == LINK_UP && tt_h2_connect_allowed(link->h2);
}

/* Dials a new link for destination d and makes member m wait on it. Returns 0, or
 * -ENOMEM when nothing was started. Once the carrier started, it may fail before this
 * returns: the link is then gone and m was told (ops->wait_failed). */
static int pool_dial(struct tt_pool *pool, struct pool_dest *d, struct tt_pool_member *m,
                     const void *identity)
{
    struct tt_link *link = calloc(1, sizeof(*link));

    if (link == NULL)
        return -ENOMEM;
    link->pool = pool;
    link->dest = d;
    link->counters = m->counters;
    link->identity = identity;
    link->state = LINK_DIALLING;
    link_list_push(&d->links, link);
    pool->n_links++;
    member_wait(link, m);
    if (pool->ops->dial(link, m->conn, &d->target, d->expected_id) < 0) {
        tt_pool_detach(m);
        link_list_unlink(&d->links, link);
        pool->n_links--;
        free(link);
        return -ENOMEM;
    }
    return 0;
}

/* The link of destination d a new tunnel rides: the oldest that is up, made with `identity`
 * and has room; or NULL, with *wait_on the first one that will allow tunnels once the
 * peer's SETTINGS arrive (NULL when none). Links made with another identity are retired on
 * the way (rotation). Filling links in a fixed order keeps streams on as few links as
 * possible: each link batches its streams' frames into one TLS record and one write per
 * loop iteration, and the links a burst opened get nothing new once it is over, so they
 * idle out. Spreading to the least loaded did the opposite: after 1,000 concurrent app
 * connections had opened 10 links, 50 kept the 10 alive at 5 streams each, and the
 * keep-alive req/s fell by a fifth for good. The order is fixed (not "the fullest", whose
 * choice a stream left over from one wave changes) and the oldest first (not the newest,
 * which a link dialled for a wave's overflow would become): otherwise the bulk of the next
 * wave moves to another link, so to another inbound worker, whose kept workload connections
 * are its own. */
static struct tt_link *dest_pick_link(struct pool_dest *d, const void *identity,
                                      struct tt_link **wait_on)
{
    struct tt_link *best = NULL;

    *wait_on = NULL;
    for (struct tt_link *link = d->links; link != NULL; link = link->next) {
        if (link->state == LINK_RETIRING || link->retire_when_up)
            continue;
        if (link->identity != identity) {
            /* Made with the identity before a rotation: no new tunnel; it closes once its
             * tunnels are over (tt_link_done). */
            TT_COUNTER_ADD(link->counters->pool.links_recycled, 1);
            tt_link_retire(link);
            continue;
        }
        if (link_room(link) == 0)
            continue;
        if (link_can_ride(link)) {
            best = link; /* the list is newest first: the last one found is the oldest */
        } else if (*wait_on == NULL) {
            *wait_on = link;
        }
    }
    return best;
}

/* Puts an app connection in the pool (see pool.h). */
int tt_pool_attach(struct tt_pool *pool, struct tt_pool_member *m, const struct tt_addr *target,
                   const char *expected_id, const void *identity, uint64_t now_ms)
{
    struct tt_link *best, *wait_on;
    struct pool_dest *d;

    if (pool->draining)
        return TT_POOL_GO_DIRECT;
    d = pool_dest_get(pool, target, expected_id);
    if (d == NULL)
        return -ENOMEM;
    if (now_ms < d->direct_until_ms) {
        TT_COUNTER_ADD(m->counters->pool.fallback_direct, 1);
        return TT_POOL_GO_DIRECT;
    }
    best = dest_pick_link(d, identity, &wait_on);
    if (best != NULL) {
        member_ride(best, m);
        return pool->ops->ride(m->conn, best->h2) < 0 ? -ECONNABORTED : 1;
    }
    if (wait_on == NULL)
        return pool_dial(pool, d, m, identity);
    member_wait(wait_on, m);
    return 0;
}

/* Rides a link that is up now, or does nothing (see pool.h). */
int tt_pool_attach_up(struct tt_pool *pool, struct tt_pool_member *m, const struct tt_addr *target,
                      const char *expected_id, const void *identity, uint64_t now_ms)
{
    struct tt_link *best, *wait_on;
    struct pool_dest *d;

    if (pool->draining)
        return 0;
    d = pool_dest_get(pool, target, expected_id);
    if (d == NULL || now_ms < d->direct_until_ms)
        return 0;
    best = dest_pick_link(d, identity, &wait_on);
    if (best == NULL)
        return 0;
    member_ride(best, m);
    return pool->ops->ride(m->conn, best->h2) < 0 ? -ECONNABORTED : 1;
}

/* Drains every link (see pool.h). */
void tt_pool_drain(struct tt_pool *pool)
{
    pool->draining = true;
    for (struct pool_dest *d = pool->dests; d != NULL; d = d->next) {
        for (struct tt_link *link = d->links; link != NULL; link = link->next)
            tt_link_retire(link);
    }
    for (struct tt_link *link = pool->inbound; link != NULL; link = link->next)
        tt_link_retire(link);
}

/* ---- one link: the session's events ------------------------------------------------- */

/* Server: a new stream: a `CONNECT` with `:protocol tether-tcp` (a tunnel) or a request
 * (served to the workload as HTTP/1.1, http/h2h1.h) goes to the carrier's connection
 * (ops->accept; 503 when it cannot take it); any other CONNECT is answered 501 (no tunnel
 * to elsewhere is served); on a retiring link it is refused, unless our drain notice still waits
 * for its answer. */
static void link_on_stream(struct tt_h2 *h2, struct tt_h2_stream *s, void *ud)
{
    struct tt_link *link = ud;
    const char *method = tt_h2_stream_header(s, ":method");
    const char *protocol = tt_h2_stream_header(s, ":protocol");
    static const struct tt_h2_header reason = {"x-tether-reason", 15, "not_a_tunnel", 12};
    static const struct tt_h2_header busy = {"x-tether-reason", 15, "unavailable", 11};

    if (method == NULL || (strcmp(method, "CONNECT") == 0 &&
                           (protocol == NULL || strcmp(protocol, TT_POOL_PROTOCOL) != 0))) {
        (void)tt_h2_respond(s, 501, &reason, 1, true);
        tt_h2_stream_release(s);
        return;
    }
    if (link->state == LINK_RETIRING && !tt_h2_notice_pending(h2)) {
        /* After the caller's GOAWAY, or ours (the session refuses streams above its last
         * id; this is one whose head straddled it): not served, so the caller may send it
         * again on another link. While our drain notice waits for its answer, streams
         * the caller opened before it saw the notice are served. */
        (void)tt_h2_stream_reset(s, TT_H2_REFUSED_STREAM);
        tt_h2_stream_release(s);
        return;
    }
    if (link->pool->ops->accept(link->carrier, link, s) < 0) {
        (void)tt_h2_respond(s, 503, &busy, 1, true);
        tt_h2_stream_release(s);
    }
}

/* The peer's SETTINGS: tunnels may now be allowed for the waiting members. */
static void link_on_settings(struct tt_h2 *h2, void *ud)
{
    (void)h2;
    link_ride_waiting(ud);
}

/* The peer's GOAWAY: no new tunnel on this link (streams it did not process are reset
 * with TT_E_H2_REFUSED and retried by their connections). */
static void link_on_goaway(struct tt_h2 *h2, uint32_t last_stream_id, uint32_t h2_code, void *ud)
{
    struct tt_link *link = ud;

    (void)h2;
    (void)last_stream_id;
    (void)h2_code;
    link->state = LINK_RETIRING;
}

static void link_on_ping(struct tt_h2 *h2, uint64_t rtt_us, void *ud)
{
    struct tt_link *link = ud;

    (void)h2;
    (void)rtt_us;
    link->ping_out = false;
}

static const struct tt_h2_callbacks link_callbacks = {
    .on_stream = link_on_stream,
    .on_settings = link_on_settings,
    .on_goaway = link_on_goaway,
    .on_ping = link_on_ping,
};

/* Windows sized for throughput between sidecars; 100 concurrent tunnels. */
static const struct tt_h2_config link_config = {
    .max_streams = TT_POOL_STREAMS_PER_LINK,
    .stream_window = 512 * 1024,
    .conn_window = 16 * 1024 * 1024,
    .enable_connect = true,
};

/* Starts the session of an up link. Returns 0 or -ENOMEM. */
static int link_start(struct tt_link *link, struct tt_conn *carrier, enum tt_h2_role role,
                      uint64_t now_ms)
{
    link->h2 = tt_h2_new(role, &link_config, &link_callbacks, link);
    if (link->h2 == NULL)
        return -ENOMEM;
    link->carrier = carrier;
    link->state = LINK_UP;
    link->idle_since_ms = now_ms;
    TT_COUNTER_ADD(link->counters->pool.links_opened, 1);
    return 0;
}

/* Opens the tunnels of the members waiting on link, once the peer allows them. */
static void link_ride_waiting(struct tt_link *link)
{
    if (!link_can_ride(link))
        return;
    while (link->waiting != NULL) {
        struct tt_pool_member *m = link->waiting;
        member_ride(link, m);
        (void)link->pool->ops->ride(m->conn, link->h2); /* a failure closes the connection */
    }
    if (link->retire_when_up) {
        link->retire_when_up = false;
        tt_link_retire(link); /* their streams are open: only new ones are refused */
    }
    (void)tt_link_flush(link);
}

/* Outbound: the carrier's handshake is done (see pool.h). */
int tt_link_up(struct tt_link *link, struct tt_conn *carrier, bool alpn_ok, uint64_t now_ms)
{
    if (!alpn_ok) {
        struct pool_dest *d = link->dest;
        d->direct_until_ms = now_ms + TT_POOL_DIRECT_MS;
        link->carrier = carrier;
        link->state = LINK_RETIRING;
        tt_log(TT_LOG_INFO, "pool_fallback_direct", TT_LS("upstream", d->target.text),
               TT_LS("upstream_id", d->expected_id), TT_LS("reason", "alpn_declined"));
        while (link->waiting != NULL) {
            struct tt_pool_member *m = link->waiting;
            tt_pool_detach(m);
            TT_COUNTER_ADD(m->counters->pool.fallback_direct, 1);
            link->pool->ops->wait_failed(m->conn, carrier, 0);
        }
        return 1;
    }
    int r = link_start(link, carrier, TT_H2_CLIENT, now_ms);
    if (r < 0)
        return r;
    return tt_link_flush(link); /* our preface and SETTINGS */
}

/* Inbound: the carrier negotiated the token (see pool.h). */
struct tt_link *tt_link_accept(struct tt_pool *pool, struct tt_conn *carrier,
                               struct tt_listener_counters *counters, uint64_t now_ms)
{
    struct tt_link *link = calloc(1, sizeof(*link));

    if (link == NULL)
        return NULL;
    link->pool = pool;
    link->counters = counters;
    if (link_start(link, carrier, TT_H2_SERVER, now_ms) < 0) {
        free(link);
        return NULL;
    }
    link_list_push(&pool->inbound, link);
    pool->n_links++;
    if (pool->draining)
        tt_link_retire(link);
    return link;
}

/* Sends the session's pending bytes while the carrier takes them, several frames at a
 * time, each batch one TLS record. Returns 1 when something went out, 0 when nothing
 * did, or <0. */
static int link_send_pending(struct tt_link *link)
{
    const struct tt_pool_ops *ops = link->pool->ops;
    int sent = 0;

    while (link->carrier != NULL && ops->writable(link->carrier)) {
        long n = tt_h2_fill(link->h2, link->pool->out, sizeof(link->pool->out));
        if (n < 0)
            return (int)n;
        if (n == 0)
            break;
        int r = ops->send(link->carrier, link->pool->out, (size_t)n);
        if (r < 0)
            return r;
        sent = 1;
    }
    return sent;
}

/* Lets members that stopped reading for a full stream queue go on, each once per round
 * (one that is still full blocks again and waits for the next flush); one at a time, as
 * any of them may end, or end others, meanwhile. */
static void link_wake_blocked(struct tt_link *link)
{
    unsigned round = ++link->wake_round;

    for (;;) {
        struct tt_pool_member *m = link->tunnels;
        while (m != NULL && (!m->blocked || m->woken == round))
            m = m->next;
        if (m == NULL)
            return;
        m->blocked = false;
        m->woken = round;
        link->pool->ops->progress(m->conn);
    }
}

/* Sends what the session has to say (see pool.h). */
int tt_link_flush(struct tt_link *link)
{
    int r = 0;

    if (link->h2 == NULL || link->carrier == NULL)
        return 0;
    if (link->busy) {
        link->flush_wanted = true;
        return 0;
    }
    link->busy = true;
    do {
        link->flush_wanted = false;
        r = link_send_pending(link);
        if (r <= 0)
            break; /* an error, or nothing went out: no stream queue drained */
        link_wake_blocked(link);
    } while (link->flush_wanted);
    link->busy = false;
    return r < 0 ? r : 0;
}

/* Queues the link for tt_pool_run_flushes() (see pool.h). */
void tt_link_flush_soon(struct tt_link *link)
{
    struct tt_pool *pool = link->pool;

    if (link->flush_queued || link->h2 == NULL || link->carrier == NULL)
        return;
    link->flush_queued = true;
    link->flush_next = pool->flush_head;
    pool->flush_head = link;
    pool->ops->defer(link->carrier);
}

/* Takes link off the deferred flush list if it is there. */
static void link_unqueue_flush(struct tt_link *link)
{
    if (!link->flush_queued)
        return;
    for (struct tt_link **p = &link->pool->flush_head; *p != NULL; p = &(*p)->flush_next) {
        if (*p == link) {
            *p = link->flush_next;
            break;
        }
    }
    link->flush_queued = false;
    link->flush_next = NULL;
}

/* Flushes every queued link, one at a time off the list: a failing link's carrier closes
 * (which frees it) and a flush may queue links again (see pool.h). */
void tt_pool_run_flushes(struct tt_pool *pool)
{
    while (pool->flush_head != NULL) {
        struct tt_link *link = pool->flush_head;
        pool->flush_head = link->flush_next;
        link->flush_next = NULL;
        link->flush_queued = false;
        int r = tt_link_flush(link);
        if (r < 0 && link->carrier != NULL)
            pool->ops->broken(link->carrier, r);
    }
}

/* Runs the session on the carrier's plaintext (see pool.h). */
int tt_link_feed(struct tt_link *link, const uint8_t *data, size_t len)
{
    int r, fr;

    if (link->h2 == NULL)
        return TT_E_LINK_CLOSED;
    link->busy = true;
    r = tt_h2_feed(link->h2, data, len);
    link->busy = false;
    fr = tt_link_flush(link); /* answers, window updates, a GOAWAY after an error */
    return r < 0 ? r : fr;
}

/* The tick's period: the PING interval, shorter when the idle timeout is. */
uint64_t tt_link_tick_ms(const struct tt_link *link)
{
    uint64_t idle = link->pool->idle_ms / 2;

    if (idle < 100)
        idle = 100;
    return idle < TT_POOL_PING_MS ? idle : TT_POOL_PING_MS;
}

/* PING keepalive and idle close (see pool.h). */
int tt_link_tick(struct tt_link *link, uint64_t now_ms)
{
    if (link->h2 == NULL)
        return 0;
    if (tt_h2_notice_pending(link->h2)) {
        /* A peer that does not answer our drain notice's PING gets the final GOAWAY
         * anyway, TT_POOL_NOTICE_MS after a tick first saw it waiting. */
        if (link->notice_since_ms == 0)
            link->notice_since_ms = now_ms;
        else if (now_ms - link->notice_since_ms >= TT_POOL_NOTICE_MS)
            (void)tt_h2_goaway(link->h2, TT_H2_NO_ERROR);
    }
    if (link->n_tunnels == 0 && link->n_waiting == 0) {
        if (link->state == LINK_RETIRING ||
            (link->pool->idle_ms > 0 && now_ms >= link->idle_since_ms &&
             now_ms - link->idle_since_ms >= link->pool->idle_ms)) {
            if (link->state != LINK_RETIRING)
                (void)tt_h2_goaway(link->h2, TT_H2_NO_ERROR);
            link->state = LINK_RETIRING;
            (void)tt_link_flush(link);
            return 1;
        }
        return 0;
    }
    if (link->ping_out && now_ms - link->ping_sent_ms >= TT_POOL_PING_MS)
        return -ETIMEDOUT; /* the peer did not answer a PING for a whole interval */
    if (!link->ping_out && now_ms - link->ping_sent_ms >= TT_POOL_PING_MS) {
        if (tt_h2_ping(link->h2) == 0) {
            link->ping_out = true;
            link->ping_sent_ms = now_ms;
        }
        return tt_link_flush(link);
    }
    return 0;
}

/* No new tunnel; closes when the last one is over (see pool.h). */
void tt_link_retire(struct tt_link *link)
{
    if (link->state == LINK_RETIRING)
        return;
    if (link->state == LINK_DIALLING || (link->n_waiting > 0 && !link_can_ride(link))) {
        /* Its waiting members were promised a link: they ride it once the peer's SETTINGS
         * allow tunnels, then it retires. (Retired now, the GOAWAY would keep them waiting
         * until the peer closed the link, and they would fail.) */
        link->retire_when_up = true;
        return;
    }
    link->state = LINK_RETIRING;
    if (link->h2 != NULL) {
        (void)tt_h2_goaway(link->h2, TT_H2_NO_ERROR);
        (void)tt_link_flush(link);
    }
}

/* Whether the carrier can close: the link retired and carries nothing more. */
bool tt_link_done(const struct tt_link *link)
{
    return link->h2 != NULL && link->n_tunnels == 0 && link->n_waiting == 0 &&
           (tt_h2_done(link->h2) ||
            (link->state == LINK_RETIRING && !link->busy && !tt_h2_notice_pending(link->h2) &&
             tt_h2_active_streams(link->h2) == 0));
}

/* The carrier is closing (see pool.h). */
void tt_link_closed(struct tt_link *link, struct tt_conn *carrier, int err)
{
    struct tt_pool *pool = link->pool;
    const struct tt_pool_ops *ops = pool->ops;

    link_unqueue_flush(link);
    /* Out of the destination first: a member that fails over may dial a new link. */
    if (link->dest != NULL)
        link_list_unlink(&link->dest->links, link);
    else
        link_list_unlink(&pool->inbound, link);
    pool->n_links--;
    link->state = LINK_RETIRING;
    link->carrier = NULL; /* nothing more is sent */
    if (err == 0)
        err = TT_E_LINK_CLOSED;
    while (link->waiting != NULL) {
        struct tt_pool_member *m = link->waiting;
        tt_pool_detach(m);
        ops->wait_failed(m->conn, carrier, err);
    }
    while (link->tunnels != NULL) {
        struct tt_pool_member *m = link->tunnels;
        tt_pool_detach(m);
        ops->lost(m->conn, err);
    }
    if (link->h2 != NULL) /* it came up: counted in links_opened */
        TT_COUNTER_ADD(link->counters->pool.links_closed, 1);
    tt_h2_free(link->h2);
    free(link);
}

struct tt_h2 *tt_link_h2(const struct tt_link *link)
{
    return link->h2;
}

/* Inbound: m rides link (see pool.h). */
void tt_link_add_tunnel(struct tt_link *link, struct tt_pool_member *m)
{
    member_ride(link, m);
}
