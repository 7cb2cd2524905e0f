/* Unit tests for net/pool.c without sockets: an outbound pool and an inbound pool whose
 * links talk to each other through fake carriers that shuttle the session bytes in memory
 * (tt_link_feed on each side). The connection module's side (struct tt_pool_ops) is faked
 * here: app connections and carriers are this file's own `struct tt_conn`, which pool.c
 * never dereferences. Covered: dialling and waiting on one link, riding an up link,
 * destinations apart, a second link beyond TT_POOL_STREAMS_PER_LINK, retirement on an
 * identity rotation, the direct fallback for a peer without the ALPN token, a carrier
 * closing while dialling and while carrying tunnels, idle close, PING keepalive and its
 * timeout, drain, the inbound side refusing what is not a tether-tcp tunnel, and the
 * wake-up of blocked members, links retired while dialling (drain, rotation), and
 * deferred flushes (batched, a link closed while queued, a send failing). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/errors.h"
#include "core/util.h"
#include "http/h2.h"
#include "metrics/metrics.h"
#include "net/pool.h"

#define MAX_CONNS 512
#define IDLE_MS   1000
#define ID_A      "spiffe://test/ns/a/sa/server"
#define ID_B      "spiffe://test/ns/b/sa/server"

/* HTTP/2 frame types (RFC 9113 §6) looked for in what a carrier sent. */
#define FRAME_HEADERS 0x1
#define FRAME_PING    0x6
#define FRAME_GOAWAY  0x7
#define ANY_FLAGS     -1

/* One fake connection: an app connection (a pool member) or a link's carrier. */
struct tt_conn {
    /* app connection */
    struct tt_pool_member m;
    struct tt_h2_stream *st; /* its tunnel stream (outbound: opened by ride) */
    int rides, wait_failed, wait_err, lost, lost_err, progress;
    int ride_ret; /* what ride returns */
    bool reblock; /* progress marks it blocked again */
    bool reflush; /* progress also asks its link for a flush */
    /* carrier */
    bool carrier, client;
    struct tt_link *link;           /* NULL once closed */
    struct tt_conn *peer;           /* the carrier at the other end */
    bool unwritable;                /* writable() says no */
    bool drop;                      /* what it sends is lost on the way */
    int send_ret;                   /* what send returns (<0: a broken socket) */
    int defers, broken, broken_err; /* ops->defer and ops->broken calls */
    uint8_t *q;                     /* sent, not yet delivered to the peer */
    size_t qlen;
    uint8_t *log; /* everything sent, for the frame counts */
    size_t loglen;
    struct tt_addr target; /* dial's request */
    char expected_id[128];
};

/* The test's world (tests run one at a time). */
static struct {
    struct tt_pool *out, *in;
    struct tt_listener_counters octr, ictr;
    struct tt_conn conns[MAX_CONNS];
    size_t nconns;
    int dials, dial_ret, accepts, accept_ret;
    struct tt_conn *last_dial;
    struct tt_addr t1, t2;
    uint64_t now;
} T;

static struct tt_conn *conn_new(void)
{
    assert_true(T.nconns < MAX_CONNS);
    struct tt_conn *c = &T.conns[T.nconns++];
    memset(c, 0, sizeof(*c));
    c->m.conn = c;
    c->m.counters = &T.octr;
    return c;
}

static void append(uint8_t **buf, size_t *len, const uint8_t *data, size_t n)
{
    *buf = realloc(*buf, *len + n);
    assert_non_null(*buf);
    memcpy(*buf + *len, data, n);
    *len += n;
}

/* --- the fake ops ---------------------------------------------------------------------- */

static int fake_dial(struct tt_link *link, struct tt_conn *like, const struct tt_addr *target,
                     const char *expected_id)
{
    (void)like;
    T.dials++;
    if (T.dial_ret < 0)
        return T.dial_ret;
    struct tt_conn *c = conn_new();
    c->carrier = true;
    c->client = true;
    c->link = link;
    c->target = *target;
    snprintf(c->expected_id, sizeof(c->expected_id), "%s", expected_id);
    T.last_dial = c;
    return 0;
}

static int fake_send(struct tt_conn *c, const uint8_t *data, size_t len)
{
    assert_true(c->carrier);
    if (c->send_ret < 0)
        return c->send_ret;
    append(&c->log, &c->loglen, data, len);
    if (!c->drop)
        append(&c->q, &c->qlen, data, len);
    return 0;
}

static bool fake_writable(struct tt_conn *c)
{
    return !c->unwritable;
}

static const struct tt_h2_stream_callbacks app_stream_cbs = {0};

static int fake_ride(struct tt_conn *app, struct tt_h2 *h2)
{
    int err = 0;

    app->rides++;
    if (app->ride_ret < 0)
        return app->ride_ret;
    app->st = tt_h2_open_tunnel(h2, TT_POOL_PROTOCOL, "10.0.0.9:8080", NULL, 0, &app_stream_cbs,
                                app, &err);
    assert_non_null(app->st);
    return 0;
}

static void fake_wait_failed(struct tt_conn *app, struct tt_conn *carrier, int err)
{
    (void)carrier;
    assert_null(app->m.link); /* out of the pool already */
    app->wait_failed++;
    app->wait_err = err;
}

static void fake_lost(struct tt_conn *app, int err)
{
    assert_null(app->m.link);
    app->lost++;
    app->lost_err = err;
    app->st = NULL; /* freed with the link's session */
}

static void fake_progress(struct tt_conn *app)
{
    app->progress++;
    if (app->progress > 1000)
        fail_msg("progress called %d times: a wake-up loop", app->progress);
    if (app->reblock)
        app->m.blocked = true;
    if (app->reflush)
        assert_int_equal(tt_link_flush(app->m.link), 0);
}

static int fake_accept(struct tt_conn *carrier, struct tt_link *link, struct tt_h2_stream *s)
{
    (void)carrier;
    T.accepts++;
    if (T.accept_ret < 0)
        return T.accept_ret;
    struct tt_conn *c = conn_new();
    c->m.counters = &T.ictr;
    c->st = s;
    tt_link_add_tunnel(link, &c->m);
    assert_int_equal(tt_h2_respond(s, 200, NULL, 0, false), 0);
    return 0;
}

static void fake_defer(struct tt_conn *carrier)
{
    assert_true(carrier->carrier);
    carrier->defers++;
}

/* A deferred flush failed: the carrier closes, as conn.c's does. */
static void fake_broken(struct tt_conn *carrier, int err)
{
    carrier->broken++;
    carrier->broken_err = err;
    tt_link_closed(carrier->link, carrier, err);
    carrier->link = NULL;
}

static const struct tt_pool_ops fake_ops = {
    .dial = fake_dial,
    .send = fake_send,
    .writable = fake_writable,
    .ride = fake_ride,
    .wait_failed = fake_wait_failed,
    .lost = fake_lost,
    .progress = fake_progress,
    .accept = fake_accept,
    .defer = fake_defer,
    .broken = fake_broken,
};

/* --- the harness ----------------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    memset(&T, 0, sizeof(T));
    /* pool.c stamps a link's idle start with tt_now_ms() in tt_pool_detach: tests use the
     * same clock for the now_ms they pass. */
    T.now = tt_now_ms();
    T.out = tt_pool_new(&fake_ops, IDLE_MS);
    T.in = tt_pool_new(&fake_ops, IDLE_MS);
    assert_non_null(T.out);
    assert_non_null(T.in);
    assert_int_equal(tt_addr_parse("10.0.0.1:15008", TT_ADDR_NUMERIC, &T.t1), 0);
    assert_int_equal(tt_addr_parse("10.0.0.2:15008", TT_ADDR_NUMERIC, &T.t2), 0);
    return 0;
}

/* Closes what is still open (outbound carriers first), then frees both pools. */
static int teardown(void **state)
{
    (void)state;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < T.nconns; i++) {
            struct tt_conn *c = &T.conns[i];
            if (c->carrier && c->client == (pass == 0) && c->link != NULL) {
                tt_link_closed(c->link, c, 0);
                c->link = NULL;
            }
        }
    }
    assert_int_equal(tt_pool_links(T.out), 0);
    assert_int_equal(tt_pool_links(T.in), 0);
    tt_pool_free(T.out);
    tt_pool_free(T.in);
    for (size_t i = 0; i < T.nconns; i++) {
        free(T.conns[i].q);
        free(T.conns[i].log);
    }
    return 0;
}

/* Delivers what the carriers sent to the links at the other end until nothing moves. */
static void pump(void)
{
    bool moved = true;

    while (moved) {
        moved = false;
        for (size_t i = 0; i < T.nconns; i++) {
            struct tt_conn *c = &T.conns[i];
            if (!c->carrier || c->qlen == 0 || c->peer == NULL || c->peer->link == NULL)
                continue;
            uint8_t *data = c->q;
            size_t n = c->qlen;
            c->q = NULL;
            c->qlen = 0;
            assert_int_equal(tt_link_feed(c->peer->link, data, n), 0);
            free(data);
            moved = true;
        }
    }
}

/* Completes the handshake of dialled carrier `oc` (with the token) and accepts it on the
 * inbound pool: both sessions start, but nothing they sent is delivered yet (the peers'
 * SETTINGS have not arrived). Returns the inbound carrier. */
static struct tt_conn *link_handshake(struct tt_conn *oc)
{
    struct tt_conn *ic = conn_new();

    ic->carrier = true;
    ic->link = tt_link_accept(T.in, ic, &T.ictr, T.now);
    assert_non_null(ic->link);
    ic->peer = oc;
    oc->peer = ic;
    assert_int_equal(tt_link_up(oc->link, oc, true, T.now), 0);
    return ic;
}

/* link_handshake(), then both sessions exchange their SETTINGS. Returns the inbound
 * carrier. */
static struct tt_conn *link_connect(struct tt_conn *oc)
{
    struct tt_conn *ic = link_handshake(oc);

    pump();
    return ic;
}

/* Closes a carrier (its link goes with it). */
static void carrier_close(struct tt_conn *c, int err)
{
    tt_link_closed(c->link, c, err);
    c->link = NULL;
}

/* Frames of `type` in what carrier c sent (flags ANY_FLAGS, or the ACK bit 0 or 1). */
static int frames(const struct tt_conn *c, uint8_t type, int ack)
{
    size_t off = c->client ? 24 : 0; /* the client's connection preface */
    int n = 0;

    while (off + 9 <= c->loglen) {
        const uint8_t *h = c->log + off;
        size_t len = ((size_t)h[0] << 16) | ((size_t)h[1] << 8) | h[2];
        if (h[3] == type && (ack == ANY_FLAGS || (h[4] & 1) == ack))
            n++;
        off += 9 + len;
    }
    return n;
}

static struct tt_conn *attach(const struct tt_addr *target, const char *id, const void *identity,
                              int expect)
{
    struct tt_conn *c = conn_new();
    assert_int_equal(tt_pool_attach(T.out, &c->m, target, id, identity, T.now), expect);
    return c;
}

static const int identity1 = 1, identity2 = 2;

/* Brings one link up with `n` riders on T.t1/ID_A. */
static struct tt_conn *link_with_riders(size_t n, struct tt_conn **riders)
{
    riders[0] = attach(&T.t1, ID_A, &identity1, 0);
    struct tt_conn *oc = T.last_dial;
    for (size_t i = 1; i < n; i++)
        riders[i] = attach(&T.t1, ID_A, &identity1, 0);
    link_connect(oc);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(riders[i]->rides, 1);
        assert_true(riders[i]->m.riding);
    }
    return oc;
}

/* App connection c's tunnel is over: its stream released, its place in the pool left. */
static void tunnel_over(struct tt_conn *c)
{
    tt_h2_stream_release(c->st);
    c->st = NULL;
    tt_pool_detach(&c->m);
}

/* --- the cases ------------------------------------------------------------------------- */

/* Two attaches while dialling share one dial; both ride once SETTINGS arrive. */
static void test_pool_wait_then_ride(void **state)
{
    (void)state;
    struct tt_conn *a = attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 1);
    struct tt_conn *oc = T.last_dial;
    assert_string_equal(oc->target.text, "10.0.0.1:15008");
    assert_string_equal(oc->expected_id, ID_A);
    assert_int_equal(tt_pool_links(T.out), 1);

    struct tt_conn *b = attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 1);
    assert_int_equal(a->rides + b->rides, 0);

    /* Up, but the peer's SETTINGS have not arrived: still waiting. */
    link_handshake(oc);
    assert_int_equal(a->rides + b->rides, 0);
    pump();
    assert_int_equal(a->rides, 1);
    assert_int_equal(b->rides, 1);
    assert_int_equal(T.octr.pool.streams_opened, 2);
    assert_int_equal(T.octr.pool.links_opened, 1);
    assert_int_equal(T.ictr.pool.links_opened, 1);
    /* The tunnels reached the inbound side and were accepted. */
    assert_int_equal(T.accepts, 2);
    assert_int_equal(T.ictr.pool.streams_opened, 2);
    assert_int_equal(tt_h2_stream_status(a->st), 200);
    assert_int_equal(tt_h2_stream_status(b->st), 200);
    assert_int_equal(T.dials, 1);
}

/* An attach once the link is up rides at once, without a dial. */
static void test_pool_ride_up_link(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    link_with_riders(1, r);
    struct tt_conn *c = attach(&T.t1, ID_A, &identity1, 1);
    assert_int_equal(c->rides, 1);
    assert_true(c->m.riding);
    assert_int_equal(T.dials, 1);
    assert_int_equal(T.octr.pool.streams_opened, 2);
    /* The caller flushes the tunnel's HEADERS (pool.h: "after touching a stream"). */
    assert_int_equal(tt_link_flush(c->m.link), 0);
    pump();
    assert_int_equal(T.accepts, 2);
}

/* Another target, or another expected identity, is another destination: its own link. */
static void test_pool_destinations_apart(void **state)
{
    (void)state;
    attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 1);
    attach(&T.t2, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);
    assert_string_equal(T.last_dial->target.text, "10.0.0.2:15008");
    attach(&T.t1, ID_B, &identity1, 0);
    assert_int_equal(T.dials, 3);
    assert_string_equal(T.last_dial->expected_id, ID_B);
    attach(&T.t1, ID_A, &identity1, 0);
    attach(&T.t2, ID_A, &identity1, 0);
    attach(&T.t1, ID_B, &identity1, 0);
    assert_int_equal(T.dials, 3);
    assert_int_equal(tt_pool_links(T.out), 3);
}

/* Beyond TT_POOL_STREAMS_PER_LINK members a second link is dialled; each rides its own. */
static void test_pool_second_link(void **state)
{
    (void)state;
    struct tt_conn *m[TT_POOL_STREAMS_PER_LINK + 1];

    for (size_t i = 0; i < TT_POOL_STREAMS_PER_LINK; i++)
        m[i] = attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 1);
    struct tt_conn *oc1 = T.last_dial;
    m[TT_POOL_STREAMS_PER_LINK] = attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);
    struct tt_conn *oc2 = T.last_dial;
    assert_ptr_not_equal(oc1, oc2);
    assert_ptr_equal(m[TT_POOL_STREAMS_PER_LINK]->m.link, oc2->link);

    link_connect(oc1);
    link_connect(oc2);
    for (size_t i = 0; i <= TT_POOL_STREAMS_PER_LINK; i++)
        assert_int_equal(m[i]->rides, 1);
    assert_int_equal(T.octr.pool.streams_opened, TT_POOL_STREAMS_PER_LINK + 1);
    assert_int_equal(T.octr.pool.links_opened, 2);
    assert_int_equal(T.accepts, TT_POOL_STREAMS_PER_LINK + 1);

    /* The first link is full: the next one rides the second. */
    struct tt_conn *full = attach(&T.t1, ID_A, &identity1, 1);
    assert_ptr_equal(full->m.link, oc2->link);
    assert_int_equal(T.dials, 2);

    /* With room on both, the oldest is ridden whatever the load (1 tunnel against 2
     * here), and so are the next ones: a fixed order, neither the least loaded link nor
     * the fullest. */
    for (size_t i = 0; i < TT_POOL_STREAMS_PER_LINK - 1; i++) {
        tunnel_over(m[i]);
    }
    for (int i = 0; i < 5; i++)
        assert_ptr_equal(attach(&T.t1, ID_A, &identity1, 1)->m.link, oc1->link);
    assert_int_equal(T.dials, 2);

    /* The burst is over: the second link's two tunnels end; new ones keep riding the
     * first, and the second, idle, closes (a GOAWAY at its idle tick). */
    struct tt_conn *on2[] = {m[TT_POOL_STREAMS_PER_LINK], full};
    for (size_t i = 0; i < TT_ARRAY_SIZE(on2); i++) {
        tunnel_over(on2[i]);
    }
    for (int i = 0; i < 5; i++)
        assert_ptr_equal(attach(&T.t1, ID_A, &identity1, 1)->m.link, oc1->link);
    assert_int_equal(tt_link_flush(oc2->link), 0);
    pump();
    assert_int_equal(tt_link_tick(oc2->link, tt_now_ms() + IDLE_MS), 1);
    assert_int_equal(frames(oc2, FRAME_GOAWAY, ANY_FLAGS), 1);
    assert_int_equal(frames(oc1, FRAME_GOAWAY, ANY_FLAGS), 0);
}

/* A new identity (rotation) retires the link made with the old one and dials anew. */
static void test_pool_identity_rotation(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);
    assert_int_equal(frames(oc, FRAME_GOAWAY, ANY_FLAGS), 0);

    struct tt_conn *c = attach(&T.t1, ID_A, &identity2, 0);
    assert_int_equal(T.octr.pool.links_recycled, 1);
    assert_int_equal(T.dials, 2);
    assert_ptr_not_equal(T.last_dial, oc);
    assert_ptr_equal(c->m.link, T.last_dial->link);
    assert_int_equal(frames(oc, FRAME_GOAWAY, ANY_FLAGS), 1);
    /* The old link's tunnel goes on; the link closes once it is over. */
    pump();
    assert_false(tt_link_done(oc->link));
    assert_int_equal(r[0]->lost, 0);

    /* The same new identity again: the old link is not counted twice. */
    attach(&T.t1, ID_A, &identity2, 0);
    assert_int_equal(T.octr.pool.links_recycled, 1);
    assert_int_equal(T.dials, 2);

    tunnel_over(r[0]);
    assert_int_equal(tt_link_flush(oc->link), 0);
    pump();
    assert_true(tt_link_done(oc->link));
}

/* A server that does not select the token: waiting members go direct, the destination goes
 * direct for TT_POOL_DIRECT_MS, then is dialled again. */
static void test_pool_alpn_declined(void **state)
{
    (void)state;
    struct tt_conn *a = attach(&T.t1, ID_A, &identity1, 0);
    struct tt_conn *b = attach(&T.t1, ID_A, &identity1, 0);
    struct tt_conn *oc = T.last_dial;

    assert_int_equal(tt_link_up(oc->link, oc, false, T.now), 1);
    assert_int_equal(a->wait_failed, 1);
    assert_int_equal(a->wait_err, 0);
    assert_int_equal(b->wait_failed, 1);
    assert_int_equal(b->wait_err, 0);
    assert_int_equal(a->rides + b->rides, 0);
    assert_int_equal(T.octr.pool.fallback_direct, 2);
    assert_int_equal(T.octr.pool.links_opened, 0);

    T.now += TT_POOL_DIRECT_MS - 1;
    attach(&T.t1, ID_A, &identity1, TT_POOL_GO_DIRECT);
    assert_int_equal(T.octr.pool.fallback_direct, 3);
    assert_int_equal(T.dials, 1);
    /* Another destination is not affected. */
    attach(&T.t2, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);

    carrier_close(oc, 0);
    assert_int_equal(T.octr.pool.links_closed, 0); /* never counted as a link */
    T.now += 1;
    attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 3);
    assert_int_equal(T.octr.pool.fallback_direct, 3);
}

/* A dial that fails at once: the attach fails, nothing stays in the pool. */
static void test_pool_dial_fails(void **state)
{
    (void)state;
    T.dial_ret = -EMFILE;
    struct tt_conn *c = conn_new();
    assert_true(tt_pool_attach(T.out, &c->m, &T.t1, ID_A, &identity1, T.now) < 0);
    assert_null(c->m.link);
    assert_int_equal(tt_pool_links(T.out), 0);
    T.dial_ret = 0;
    attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);
}

/* The carrier closes while dialling: the waiting members fail with its error. */
static void test_pool_closed_while_dialling(void **state)
{
    (void)state;
    struct tt_conn *a = attach(&T.t1, ID_A, &identity1, 0);
    struct tt_conn *b = attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(tt_pool_links(T.out), 1);

    carrier_close(T.last_dial, -ECONNREFUSED);
    assert_int_equal(a->wait_failed, 1);
    assert_int_equal(a->wait_err, -ECONNREFUSED);
    assert_int_equal(b->wait_failed, 1);
    assert_int_equal(b->wait_err, -ECONNREFUSED);
    assert_int_equal(a->lost + b->lost, 0);
    assert_int_equal(tt_pool_links(T.out), 0);
    assert_int_equal(T.octr.pool.links_closed, 0);
    attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);
}

/* The carrier closes with tunnels on it: they are lost, the link is counted closed. */
static void test_pool_closed_with_riders(void **state)
{
    (void)state;
    struct tt_conn *r[3];
    struct tt_conn *oc = link_with_riders(3, r);

    carrier_close(oc, -ECONNRESET);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(r[i]->lost, 1);
        assert_int_equal(r[i]->lost_err, -ECONNRESET);
        assert_int_equal(r[i]->wait_failed, 0);
    }
    assert_int_equal(T.octr.pool.links_closed, 1);
    assert_int_equal(T.octr.pool.streams_closed, 3);
    assert_int_equal(tt_pool_links(T.out), 0);
    /* A close without an error still gives the tunnels one. */
    carrier_close(oc->peer, 0);
    assert_int_equal(T.ictr.pool.links_closed, 1);
    assert_int_equal(tt_pool_links(T.in), 0);
    for (size_t i = 0; i < T.nconns; i++) {
        if (!T.conns[i].carrier && T.conns[i].m.counters == &T.ictr) {
            assert_int_equal(T.conns[i].lost, 1);
            assert_int_equal(T.conns[i].lost_err, TT_E_LINK_CLOSED);
        }
    }
}

/* A link without tunnels closes after the idle time, GOAWAY first. */
static void test_pool_idle_close(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);
    uint64_t start = tt_now_ms();

    assert_int_equal(tt_link_tick(oc->link, start), 0);
    tunnel_over(r[0]);
    assert_null(r[0]->m.link);
    assert_int_equal(T.octr.pool.streams_closed, 1);
    tt_pool_detach(&r[0]->m); /* twice: no effect */
    assert_int_equal(T.octr.pool.streams_closed, 1);
    assert_int_equal(tt_link_flush(oc->link), 0);
    pump();

    uint64_t after = tt_now_ms() + IDLE_MS;
    assert_int_equal(tt_link_tick(oc->link, after - IDLE_MS / 2), 0);
    assert_int_equal(frames(oc, FRAME_GOAWAY, ANY_FLAGS), 0);
    assert_int_equal(tt_link_tick(oc->link, after), 1);
    assert_int_equal(frames(oc, FRAME_GOAWAY, ANY_FLAGS), 1);
    /* A retired link offers no tunnel: the next attach dials. */
    attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);
}

/* The idle time counts from the last tunnel's end on the caller's clock: a tick whose
 * now_ms is a little behind tt_now_ms() (libuv's cached loop time) must not see the link
 * idle for ~2^64 ms. */
static void test_pool_idle_clock(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);
    uint64_t loop_now = tt_now_ms();

    tunnel_over(r[0]);
    assert_int_equal(tt_link_tick(oc->link, loop_now - 1), 0);
    assert_int_equal(frames(oc, FRAME_GOAWAY, ANY_FLAGS), 0);
}

/* With tunnels, a PING per interval; one unanswered for a whole interval kills the link. */
static void test_pool_ping(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);
    uint64_t t = T.now + TT_POOL_PING_MS;

    assert_int_equal(tt_link_tick(oc->link, t), 0);
    assert_int_equal(frames(oc, FRAME_PING, 0), 1);
    pump();
    assert_int_equal(frames(oc->peer, FRAME_PING, 1), 1); /* the peer answered */

    /* Answered: the next interval sends another PING, the link lives. */
    assert_int_equal(tt_link_tick(oc->link, t + TT_POOL_PING_MS / 2), 0);
    assert_int_equal(frames(oc, FRAME_PING, 0), 1);
    t += TT_POOL_PING_MS;
    assert_int_equal(tt_link_tick(oc->link, t), 0);
    assert_int_equal(frames(oc, FRAME_PING, 0), 2);
    pump();
    assert_int_equal(frames(oc->peer, FRAME_PING, 1), 2);

    /* This one is lost on the way: after another interval the link is dead. */
    oc->drop = true;
    oc->qlen = 0;
    t += TT_POOL_PING_MS;
    assert_int_equal(tt_link_tick(oc->link, t), 0);
    assert_int_equal(frames(oc, FRAME_PING, 0), 3);
    pump();
    assert_int_equal(tt_link_tick(oc->link, t + TT_POOL_PING_MS - 1), 0);
    assert_true(tt_link_tick(oc->link, t + TT_POOL_PING_MS) < 0);
}

/* Drain of the outbound pool: GOAWAY on every link; new attaches go direct; a link
 * without tunnels is over, one with a tunnel waits for it. */
static void test_pool_drain(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc1 = link_with_riders(1, r);
    struct tt_conn *r2 = attach(&T.t2, ID_A, &identity1, 0);
    struct tt_conn *oc2 = T.last_dial;
    link_connect(oc2);
    tunnel_over(r2); /* oc2's rider is over */

    tt_pool_drain(T.out);
    assert_int_equal(frames(oc1, FRAME_GOAWAY, ANY_FLAGS), 1);
    assert_int_equal(frames(oc2, FRAME_GOAWAY, ANY_FLAGS), 1);
    attach(&T.t1, ID_A, &identity1, TT_POOL_GO_DIRECT);
    attach(&T.t2, ID_B, &identity1, TT_POOL_GO_DIRECT);
    assert_int_equal(T.dials, 2);
    pump();
    assert_true(tt_link_done(oc2->link));
    assert_false(tt_link_done(oc1->link));
    tunnel_over(r[0]);
    assert_int_equal(tt_link_flush(oc1->link), 0);
    pump();
    assert_true(tt_link_done(oc1->link));
}

/* Drain of the inbound pool: GOAWAY on every link, also on one accepted afterwards; the
 * outbound side stops riding a link whose peer said GOAWAY and dials a new one. */
static void test_pool_drain_inbound(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);

    tt_pool_drain(T.in);
    assert_int_equal(frames(oc->peer, FRAME_GOAWAY, ANY_FLAGS), 1);
    pump();
    struct tt_conn *c = attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);
    assert_int_equal(c->rides, 0);
    assert_int_equal(r[0]->lost, 0); /* the tunnel already open goes on */

    struct tt_conn *ic = link_connect(T.last_dial);
    assert_int_equal(frames(ic, FRAME_GOAWAY, ANY_FLAGS), 2); /* the notice, the final one */
}

/* An inbound link retired (a drain, a rotation) while the outbound's next tunnel is on its
 * way: that tunnel is served, not refused (the drain notice first, the final GOAWAY once
 * the outbound answered its PING), and the link is done only after that, once its
 * tunnels are over; the outbound dials anew for the next one. */
static void test_pool_inbound_retire_serves_tunnel_in_flight(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);
    struct tt_conn *ic = oc->peer;
    struct tt_conn *b = attach(&T.t1, ID_A, &identity1, 1);

    assert_int_equal(tt_link_flush(oc->link), 0); /* b's HEADERS: sent, not delivered */
    tt_pool_drain(T.in);
    tunnel_over(r[0]); /* the first tunnel ends meanwhile */
    assert_int_equal(tt_link_flush(ic->link), 0);
    assert_false(tt_link_done(ic->link)); /* no tunnel left, but b may be on its way */
    pump();
    assert_int_equal(T.accepts, 2);
    assert_int_equal(b->lost, 0);
    assert_int_equal(tt_h2_stream_status(b->st), 200);
    assert_int_equal(frames(ic, FRAME_GOAWAY, ANY_FLAGS), 2);
    assert_false(tt_link_done(ic->link));
    struct tt_conn *c = attach(&T.t1, ID_A, &identity1, 0);
    assert_int_equal(T.dials, 2);
    assert_int_equal(c->rides, 0);
    for (size_t i = 0; i < T.nconns; i++) { /* the inbound side of b's tunnel ends */
        struct tt_conn *t = &T.conns[i];
        if (!t->carrier && t->m.link == ic->link)
            tunnel_over(t);
    }
    tunnel_over(b);
    assert_int_equal(tt_link_flush(oc->link), 0);
    assert_int_equal(tt_link_flush(ic->link), 0);
    pump();
    assert_true(tt_link_done(ic->link));
}

/* Drain while a link is still dialling: it must not come back as a usable link. */
static void test_pool_drain_while_dialling(void **state)
{
    (void)state;
    struct tt_conn *a = attach(&T.t1, ID_A, &identity1, 0);
    struct tt_conn *oc = T.last_dial;

    tt_pool_drain(T.out);
    link_connect(oc);
    (void)a;
    /* The session was drained before it started: it says GOAWAY once it runs. */
    assert_int_equal(frames(oc, FRAME_GOAWAY, ANY_FLAGS), 1);
}

/* Rotation while the old link is still dialling: once up, it stays retired. */
static void test_pool_rotation_while_dialling(void **state)
{
    (void)state;
    attach(&T.t1, ID_A, &identity1, 0);
    struct tt_conn *oc1 = T.last_dial;
    attach(&T.t1, ID_A, &identity2, 0);
    assert_int_equal(T.octr.pool.links_recycled, 1);
    assert_int_equal(T.dials, 2);
    link_connect(oc1);
    attach(&T.t1, ID_A, &identity2, 0);
    assert_int_equal(T.octr.pool.links_recycled, 1);
    assert_int_equal(frames(oc1, FRAME_GOAWAY, ANY_FLAGS), 1);
}

/* Rotation once the old link is up but before the peer's SETTINGS arrived: its waiting
 * members still ride it (they are not left waiting on a retired link until the peer closes
 * it), then it retires; the new identity's member gets a link of its own. */
static void test_pool_rotation_before_settings(void **state)
{
    (void)state;
    struct tt_conn *a = attach(&T.t1, ID_A, &identity1, 0);
    struct tt_conn *oc1 = T.last_dial;
    link_handshake(oc1);

    struct tt_conn *b = attach(&T.t1, ID_A, &identity2, 0);
    assert_int_equal(T.octr.pool.links_recycled, 1);
    assert_int_equal(T.dials, 2);
    assert_ptr_equal(b->m.link, T.last_dial->link);
    assert_int_equal(frames(oc1, FRAME_GOAWAY, ANY_FLAGS), 0);

    pump();
    assert_int_equal(a->rides, 1);
    assert_true(a->m.riding);
    assert_int_equal(a->wait_failed, 0);
    assert_int_equal(T.accepts, 1);
    assert_int_equal(tt_h2_stream_status(a->st), 200);
    assert_int_equal(frames(oc1, FRAME_GOAWAY, ANY_FLAGS), 1);
    /* Retired: nothing new rides it. */
    attach(&T.t1, ID_A, &identity2, 0);
    assert_int_equal(T.dials, 2);
    assert_int_equal(T.octr.pool.links_recycled, 1);
}

/* --- the inbound side, driven by a raw client session ----------------------------------- */

struct raw {
    struct tt_h2 *c;
    struct tt_conn *ic;
};

/* Moves bytes both ways between the raw client session and the inbound link. */
static void raw_pump(struct raw *r)
{
    uint8_t buf[16384];
    bool moved = true;

    while (moved) {
        long n;
        moved = false;
        while ((n = tt_h2_fill(r->c, buf, sizeof(buf))) > 0) {
            assert_int_equal(tt_link_feed(r->ic->link, buf, (size_t)n), 0);
            moved = true;
        }
        assert_true(n == 0);
        if (r->ic->qlen > 0) {
            uint8_t *data = r->ic->q;
            size_t len = r->ic->qlen;
            r->ic->q = NULL;
            r->ic->qlen = 0;
            assert_int_equal(tt_h2_feed(r->c, data, len), 0);
            free(data);
            moved = true;
        }
    }
}

static void raw_init(struct raw *r)
{
    r->c = tt_h2_new(TT_H2_CLIENT, NULL, NULL, NULL);
    assert_non_null(r->c);
    r->ic = conn_new();
    r->ic->carrier = true;
    r->ic->link = tt_link_accept(T.in, r->ic, &T.ictr, T.now);
    assert_non_null(r->ic->link);
    raw_pump(r);
    assert_true(tt_h2_connect_allowed(r->c));
}

static struct tt_h2_stream *raw_tunnel(struct raw *r, const char *protocol)
{
    int err = 0;
    struct tt_h2_stream *s =
        tt_h2_open_tunnel(r->c, protocol, "10.0.0.9:80", NULL, 0, &app_stream_cbs, NULL, &err);
    assert_non_null(s);
    return s;
}

/* A CONNECT other than :protocol tether-tcp is answered 501 without reaching the
 * connection layer; a plain request goes to it (ops->accept: it is served to the workload
 * as HTTP/1.1, http/h2h1.h), as a tether-tcp tunnel does. */
static void test_pool_inbound_not_a_tunnel(void **state)
{
    (void)state;
    struct raw r;
    raw_init(&r);

    struct tt_h2_stream *s_ws = raw_tunnel(&r, "websocket");
    raw_pump(&r);
    assert_int_equal(tt_h2_stream_status(s_ws), 501);
    assert_string_equal(tt_h2_stream_header(s_ws, "x-tether-reason"), "not_a_tunnel");
    assert_int_equal(T.accepts, 0);
    assert_int_equal(T.ictr.pool.streams_opened, 0);

    int err = 0;
    struct tt_h2_request get = {"GET", "https", "10.0.0.9:80", "/", NULL, 0, true};
    struct tt_h2_stream *s_get = tt_h2_open(r.c, &get, &app_stream_cbs, NULL, &err);
    assert_non_null(s_get);
    raw_pump(&r);
    assert_int_equal(tt_h2_stream_status(s_get), 200); /* fake_accept's answer */
    assert_int_equal(T.accepts, 1);
    assert_int_equal(T.ictr.pool.streams_opened, 1);
    T.accepts = 0;
    T.ictr.pool.streams_opened = 0;

    /* A tether-tcp tunnel is accepted; one accept refuses is answered 503. */
    struct tt_h2_stream *s_ok = raw_tunnel(&r, TT_POOL_PROTOCOL);
    raw_pump(&r);
    assert_int_equal(tt_h2_stream_status(s_ok), 200);
    assert_int_equal(T.accepts, 1);
    assert_int_equal(T.ictr.pool.streams_opened, 1);
    T.accept_ret = -ENOMEM;
    struct tt_h2_stream *s_busy = raw_tunnel(&r, TT_POOL_PROTOCOL);
    raw_pump(&r);
    assert_int_equal(tt_h2_stream_status(s_busy), 503);
    assert_int_equal(T.accepts, 2);
    assert_int_equal(T.ictr.pool.streams_opened, 1);

    carrier_close(r.ic, 0);
    tt_h2_free(r.c);
}

static void raw_on_reset(struct tt_h2_stream *s, int err, uint32_t h2_code, bool by_peer, void *ud)
{
    (void)s;
    (void)by_peer;
    int *got = ud;
    got[0] = err;
    got[1] = (int)h2_code;
}

/* A tunnel whose HEADERS arrive after the caller's own GOAWAY (a retiring outbound), while
 * another tunnel is active (with none, nghttp2 ignores it), is not served: it is refused
 * (REFUSED_STREAM, which the caller retries on another link), never answered 503, which an
 * app would get as the answer. */
static void test_pool_inbound_stream_after_client_goaway(void **state)
{
    static const struct tt_h2_stream_callbacks cbs = {.on_reset = raw_on_reset};
    static const uint8_t goaway[] = {0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    int got[2] = {0, 0}, err = 0;
    struct raw r;

    (void)state;
    raw_init(&r);
    struct tt_h2_stream *first = raw_tunnel(&r, TT_POOL_PROTOCOL);
    raw_pump(&r);
    assert_int_equal(tt_h2_stream_status(first), 200);
    assert_int_equal(T.accepts, 1);
    assert_int_equal(tt_link_feed(r.ic->link, goaway, sizeof(goaway)), 0);
    struct tt_h2_stream *s =
        tt_h2_open_tunnel(r.c, TT_POOL_PROTOCOL, "10.0.0.9:80", NULL, 0, &cbs, got, &err);
    assert_non_null(s);
    raw_pump(&r);
    assert_int_equal(T.accepts, 1);
    assert_int_equal(tt_h2_stream_status(s), 0);
    assert_int_equal(got[0], TT_E_H2_REFUSED);
    assert_int_equal(got[1], TT_H2_REFUSED_STREAM);
    tt_h2_stream_release(s);
    tt_h2_stream_release(first);
    carrier_close(r.ic, 0);
    tt_h2_free(r.c);
}

/* --- wake-ups -------------------------------------------------------------------------- */

/* A blocked member is woken once per flush that sent something (a stream queue may have
 * drained), even when it blocks again meanwhile; a flush that sent nothing wakes nobody. */
static void test_pool_wake_blocked(void **state)
{
    (void)state;
    struct tt_conn *r[3];
    struct tt_conn *oc = link_with_riders(3, r);

    assert_int_equal(tt_link_flush(oc->link), 0);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(r[i]->progress, 0);

    r[0]->m.blocked = true;
    r[0]->reblock = true;
    r[2]->m.blocked = true;
    assert_int_equal(tt_link_flush(oc->link), 0); /* nothing went out: nobody woken */
    assert_int_equal(r[0]->progress, 0);
    assert_int_equal(tt_h2_ping(tt_link_h2(oc->link)), 0);
    assert_int_equal(tt_link_flush(oc->link), 0);
    assert_int_equal(r[0]->progress, 1);
    assert_int_equal(r[1]->progress, 0);
    assert_int_equal(r[2]->progress, 1);
    assert_true(r[0]->m.blocked);
    assert_false(r[2]->m.blocked);

    assert_int_equal(tt_h2_ping(tt_link_h2(oc->link)), 0);
    assert_int_equal(tt_link_flush(oc->link), 0);
    assert_int_equal(r[0]->progress, 2);
    assert_int_equal(r[2]->progress, 1);
}

/* A woken member that blocks again and asks for a flush (what a connection does after
 * writing to its stream) is woken once more per flush it caused, never forever. */
static void test_pool_wake_blocked_reflush(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);

    r[0]->m.blocked = true;
    r[0]->reblock = true;
    r[0]->reflush = true;
    assert_int_equal(tt_link_flush(oc->link), 0);
    assert_true(r[0]->progress <= 2);
}

/* tt_pool_attach_up rides a link that is up, and otherwise dials, waits and counts
 * nothing (the caller then goes the way of tt_pool_attach); like it, it retires a link
 * made with an identity that rotated. */
static void test_pool_attach_up(void **state)
{
    (void)state;
    struct tt_conn *a = conn_new();
    assert_int_equal(tt_pool_attach_up(T.out, &a->m, &T.t1, ID_A, &identity1, T.now), 0);
    assert_int_equal(T.dials, 0);
    assert_null(a->m.link);
    assert_int_equal(tt_pool_links(T.out), 0);

    struct tt_conn *w = attach(&T.t1, ID_A, &identity1, 0); /* dials */
    struct tt_conn *oc = T.last_dial;
    assert_int_equal(tt_pool_attach_up(T.out, &a->m, &T.t1, ID_A, &identity1, T.now), 0);
    assert_null(a->m.link); /* a dialling link is not waited on here */
    assert_int_equal(T.dials, 1);

    link_connect(oc);
    assert_int_equal(w->rides, 1);
    assert_int_equal(tt_pool_attach_up(T.out, &a->m, &T.t1, ID_A, &identity1, T.now), 1);
    assert_int_equal(a->rides, 1);
    assert_true(a->m.riding);
    assert_ptr_equal(a->m.link, oc->link);
    assert_int_equal(T.octr.pool.streams_opened, 2);
    /* Another identity (a rotation) finds no link made with it: no dial, and the old
     * link takes no new tunnel. */
    struct tt_conn *b = conn_new();
    assert_int_equal(tt_pool_attach_up(T.out, &b->m, &T.t1, ID_A, &identity2, T.now), 0);
    assert_null(b->m.link);
    assert_int_equal(T.dials, 1);
    assert_int_equal(T.octr.pool.links_recycled, 1);
    struct tt_conn *d = conn_new();
    assert_int_equal(tt_pool_attach_up(T.out, &d->m, &T.t1, ID_A, &identity1, T.now), 0);
}

/* --- deferred flushes ------------------------------------------------------------------ */

/* What several streams queue goes out in one send when the deferred flush runs: nothing is
 * sent when it is asked for, the carrier's loop is told once, and the peer gets it all. */
static void test_pool_flush_soon_batches(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc = link_with_riders(1, r);
    struct tt_conn *a = attach(&T.t1, ID_A, &identity1, 1);
    struct tt_conn *b = attach(&T.t1, ID_A, &identity1, 1);
    size_t logged = oc->loglen;

    tt_link_flush_soon(oc->link);
    tt_link_flush_soon(oc->link);
    assert_int_equal(oc->defers, 1); /* queued once */
    assert_int_equal(oc->loglen, logged);
    assert_int_equal(T.accepts, 1);
    tt_pool_run_flushes(T.out);
    assert_true(oc->loglen > logged);
    pump();
    assert_int_equal(T.accepts, 3); /* both tunnels' HEADERS arrived */
    assert_int_equal(tt_h2_stream_status(a->st), 200);
    assert_int_equal(tt_h2_stream_status(b->st), 200);
    /* Flushed: a new request is queued (and the loop told) again. */
    tt_link_flush_soon(oc->link);
    assert_int_equal(oc->defers, 2);
    tt_pool_run_flushes(T.out);
}

/* A carrier that closes while its link waits for a deferred flush leaves the queue (the
 * run touches no freed link); one whose socket fails in the deferred flush is closed
 * through ops->broken, and the other queued links still flush. */
static void test_pool_flush_soon_closed_and_broken(void **state)
{
    (void)state;
    struct tt_conn *r[1];
    struct tt_conn *oc1 = link_with_riders(1, r);
    struct tt_conn *a = attach(&T.t2, ID_A, &identity1, 0);
    struct tt_conn *oc2 = T.last_dial;
    link_connect(oc2);
    assert_int_equal(a->rides, 1);
    struct tt_conn *b = attach(&T.t1, ID_A, &identity1, 1);
    struct tt_conn *c = attach(&T.t2, ID_A, &identity1, 1);

    tt_link_flush_soon(oc1->link);
    tt_link_flush_soon(oc2->link);
    tt_link_closed(oc1->link, oc1, TT_E_LINK_CLOSED);
    oc1->link = NULL;
    assert_int_equal(b->lost, 1);
    tt_pool_run_flushes(T.out);
    pump();
    assert_int_equal(tt_h2_stream_status(c->st), 200);

    struct tt_conn *d = attach(&T.t2, ID_A, &identity1, 1);
    oc2->send_ret = -EPIPE;
    tt_link_flush_soon(oc2->link);
    tt_pool_run_flushes(T.out);
    assert_int_equal(oc2->broken, 1);
    assert_int_equal(oc2->broken_err, -EPIPE);
    assert_null(oc2->link);
    assert_int_equal(d->lost, 1);
    assert_int_equal(a->lost, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pool_wait_then_ride, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_ride_up_link, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_destinations_apart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_second_link, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_identity_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_alpn_declined, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_dial_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_closed_while_dialling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_closed_with_riders, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_idle_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_idle_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_ping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_drain_inbound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_inbound_retire_serves_tunnel_in_flight, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pool_drain_while_dialling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_rotation_while_dialling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_rotation_before_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_inbound_not_a_tunnel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_inbound_stream_after_client_goaway, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pool_wake_blocked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_wake_blocked_reflush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_attach_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_flush_soon_batches, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_flush_soon_closed_and_broken, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
