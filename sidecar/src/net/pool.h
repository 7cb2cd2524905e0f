/* The pool of HTTP/2 links between sidecars (DESIGN.md "HTTP between sidecars"; README
 * "Pooling between sidecars"). A link is one mTLS connection whose plaintext is an HTTP/2
 * session (http/h2.h) under the ALPN token "tether-h2"; every app connection rides one
 * extended CONNECT stream on it (`:protocol tether-tcp`): a tunnel.
 *
 * The outbound side keeps, per worker and per destination (the address dialled and the
 * SPIFFE ID that must answer there), at most TT_POOL_LINKS_PER_DEST links, more only while
 * every one carries TT_POOL_STREAMS_PER_LINK streams. A destination whose server does not
 * select the token (HAProxy, nginx, an older sidecar) is remembered for
 * TT_POOL_DIRECT_MS: its app connections go direct, one mTLS connection each, as before.
 * The inbound side turns an accepted connection that negotiated the token into a link and
 * hands each tunnel stream to a new connection.
 *
 * This module owns the links' HTTP/2 sessions, their lifetimes (PING keepalive, idle
 * close, GOAWAY on drain, retirement when the identity rotates) and the waiting of app
 * connections for a link; the connection module (net/conn.c) owns the sockets, the TLS,
 * the tunnels' streams and their relays. The two meet through struct tt_pool_ops, so that
 * this module never includes the connection's header (no include cycle): connections are
 * opaque pointers here. */
#ifndef TT_POOL_H
#define TT_POOL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/util.h"

struct tt_conn;
struct tt_h2;
struct tt_h2_stream;
struct tt_listener_counters;
struct tt_pool;
struct tt_link;

#define TT_POOL_ALPN "tether-h2"
/* What a carrier offers: the token, and HTTP/1.1 so that a server which fails handshakes
 * offering nothing it knows (nginx) still completes it, without the token: direct. */
#define TT_POOL_ALPN_OFFER "tether-h2,http/1.1"
/* What an inbound selects: the token for sidecars, else "h2" for HTTP/2 clients outside
 * the mesh (curl --http2 --cert), whose requests are served as links' requests are. */
#define TT_POOL_ALPN_SERVE       "tether-h2,h2"
#define TT_POOL_PROTOCOL         "tether-tcp" /* the tunnels' :protocol */
#define TT_POOL_LINKS_PER_DEST   2
#define TT_POOL_STREAMS_PER_LINK 100
#define TT_POOL_DIRECT_MS        60000 /* a destination that declined the token goes direct */
#define TT_POOL_PING_MS          30000 /* keepalive PING while tunnels are open */
#define TT_POOL_NOTICE_MS        2000  /* inbound: the longest wait for a drain notice's PING */

/* An app connection's place in the pool: waiting for a link, then riding one. Embedded in
 * the connection; the pool links it into its lists. */
struct tt_pool_member {
    struct tt_pool_member *next, *prev;
    struct tt_conn *conn;
    struct tt_link *link; /* the link waited for or ridden; NULL: not in the pool */
    bool riding;          /* on link's tunnel list (else on its waiting list) */
    bool blocked;         /* the connection stopped reading: its stream's queue was full */
    unsigned woken;       /* the link's wake round that last let it go on */
    struct tt_listener_counters *counters; /* where its pool figures are counted */
};

/* What the pool needs from the connection module. */
struct tt_pool_ops {
    /* Outbound: open a link's carrier, an mTLS client connection to `target` that must
     * present `expected_id`, offering TT_POOL_ALPN, counted on `counters`' listener of
     * `like` (an app connection of that listener). Calls tt_link_up() or tt_link_closed()
     * later. Returns 0 or <0 (then nothing was started). */
    int (*dial)(struct tt_link *link, struct tt_conn *like, const struct tt_addr *target,
                const char *expected_id);
    /* Encrypt `len` bytes of the session for the peer, on the carrier's socket. */
    int (*send)(struct tt_conn *carrier, const uint8_t *data, size_t len);
    /* Whether the carrier's socket takes more now (its queue is short). */
    bool (*writable)(struct tt_conn *carrier);
    /* Outbound: a member's link is up; open its tunnel stream on `h2`. Returns 0 or <0 (the
     * connection closed itself). */
    int (*ride)(struct tt_conn *app, struct tt_h2 *h2);
    /* Outbound: a member's link failed before it was up (`err`), or the destination does
     * not speak the token (`err` == 0: go direct). `carrier` is the link's carrier (what
     * its handshake found, for the member's access line), or NULL if none started. The
     * member is out of the pool already. */
    void (*wait_failed)(struct tt_conn *app, struct tt_conn *carrier, int err);
    /* A tunnel's link is gone (closed, reset, failed): end the connection with `err`. The
     * member is out of the pool already; its stream is freed with the link. */
    void (*lost)(struct tt_conn *app, int err);
    /* A retired link's last tunnel is over: run the carrier's tick soon (outside any
     * session call), which closes it. May be NULL. */
    void (*wake)(struct tt_conn *carrier);
    /* A member that stopped reading (blocked) may go on: its stream's queue drained. */
    void (*progress)(struct tt_conn *app);
    /* Inbound: a tunnel (CONNECT tether-tcp) or a request stream arrived on the carrier's
     * link: start a connection for it. Returns 0, or <0 (the stream is refused with 503). */
    int (*accept)(struct tt_conn *carrier, struct tt_link *link, struct tt_h2_stream *s);
    /* A link asked for a deferred flush (tt_link_flush_soon): arrange for
     * tt_pool_run_flushes() to run on the carrier's loop before it next waits for events. */
    void (*defer)(struct tt_conn *carrier);
    /* A deferred flush failed (`err`): close the carrier (tt_link_closed follows). */
    void (*broken)(struct tt_conn *carrier, int err);
};

/* A worker's pool; NULL when out of memory. `ops` must outlive it; `idle_ms` is how long a
 * link without tunnels lives (--idle-timeout). */
struct tt_pool *tt_pool_new(const struct tt_pool_ops *ops, uint64_t idle_ms);

/* Frees the pool. Every carrier must have been closed first (tt_link_closed). */
void tt_pool_free(struct tt_pool *pool);

/* Outbound: puts app connection `m->conn` in the pool for the destination (`target`,
 * `expected_id`), with `identity` the identity its snapshot holds (links made with another
 * are retired: rotation). Returns 1 when a link is up and the tunnel was opened (ops->ride
 * ran), 0 when it waits (ops->ride or ops->wait_failed follow), TT_POOL_GO_DIRECT when the
 * destination is known not to speak the token (counted; the caller dials direct), or <0. */
#define TT_POOL_GO_DIRECT 2
int tt_pool_attach(struct tt_pool *pool, struct tt_pool_member *m, const struct tt_addr *target,
                   const char *expected_id, const void *identity, uint64_t now_ms);

/* Outbound: as tt_pool_attach() when a link to the destination is up with room for a
 * tunnel (ops->ride runs inside; returns 1, or <0 when ride failed); otherwise it returns
 * 0 having dialled, waited and counted nothing (links made with another identity are
 * retired, as tt_pool_attach does): the caller goes the way of tt_pool_attach(). For a
 * caller that can open a stream now but not wait here. */
int tt_pool_attach_up(struct tt_pool *pool, struct tt_pool_member *m, const struct tt_addr *target,
                      const char *expected_id, const void *identity, uint64_t now_ms);

/* Takes the member out of the pool (its connection ends): off the waiting or tunnel list;
 * a link left without tunnels starts its idle time. Its stream is the caller's to release
 * first. Accepts a member not in the pool. */
void tt_pool_detach(struct tt_pool_member *m);

/* Drains every link: GOAWAY, no new tunnel; each closes once its tunnels are over. */
void tt_pool_drain(struct tt_pool *pool);

/* Links open now (outbound and inbound). */
size_t tt_pool_links(const struct tt_pool *pool);

/* ---- one link ------------------------------------------------------------------------ */

/* Outbound: the carrier's handshake is done. With `alpn_ok` (the server selected
 * TT_POOL_ALPN) the session starts and waiting members ride it once the peer's SETTINGS
 * allow tunnels: returns 0. Otherwise the destination goes direct for TT_POOL_DIRECT_MS,
 * the waiting members are told so (ops->wait_failed with 0) and it returns 1: close the
 * carrier gracefully. <0: close the carrier (tt_link_closed follows either way). */
int tt_link_up(struct tt_link *link, struct tt_conn *carrier, bool alpn_ok, uint64_t now_ms);

/* Inbound: carrier negotiated TT_POOL_ALPN: a link of `pool`, counted on `counters`.
 * Returns the link, or NULL when out of memory (close the carrier). */
struct tt_link *tt_link_accept(struct tt_pool *pool, struct tt_conn *carrier,
                               struct tt_listener_counters *counters, uint64_t now_ms);

/* Plaintext the carrier decrypted. Runs the session (stream events fire into the
 * connections), then sends what it has to say. Returns 0, or <0 (a protocol error: close
 * the carrier after sending what is pending; tt_link_closed). */
int tt_link_feed(struct tt_link *link, const uint8_t *data, size_t len);

/* Sends what the session has to say while the carrier is writable; call when the carrier
 * drained its queue and after touching a stream. Deferred while the session runs. Returns
 * 0 or <0 (close the carrier). */
int tt_link_flush(struct tt_link *link);

/* Asks for tt_link_flush() before the loop next waits for events: what every stream of
 * the link queued in one loop iteration then leaves in as few TLS records and socket
 * writes as fit (the peer is woken once, not once per stream). Call after touching a
 * stream; errors surface through ops->broken. */
void tt_link_flush_soon(struct tt_link *link);

/* Runs the flushes that tt_link_flush_soon() asked for (ops->defer says when). */
void tt_pool_run_flushes(struct tt_pool *pool);

/* The carrier's periodic tick (every tt_link_tick_ms): PING while tunnels are open (a
 * link whose last PING went unanswered is dead), idle close, the final GOAWAY of an
 * inbound drain whose notice the peer left unanswered (TT_POOL_NOTICE_MS). Returns 0, 1 when the
 * link should close gracefully now, or <0 when it is dead. */
int tt_link_tick(struct tt_link *link, uint64_t now_ms);
uint64_t tt_link_tick_ms(const struct tt_link *link);

/* Retires the link: GOAWAY, no new tunnels; it closes once its tunnels are over (an
 * inbound one also once the peer answered its drain notice: tt_h2_goaway). */
void tt_link_retire(struct tt_link *link);

/* Whether the session is over (after the final GOAWAY, with no stream left): close the
 * carrier. */
bool tt_link_done(const struct tt_link *link);

/* The carrier is closing with `err`: waiting members fail (ops->wait_failed), tunnels are
 * lost (ops->lost), then the session and link are freed. */
void tt_link_closed(struct tt_link *link, struct tt_conn *carrier, int err);

/* The link's HTTP/2 session (for a tunnel's stream calls). */
struct tt_h2 *tt_link_h2(const struct tt_link *link);

/* Inbound: records member `m` as a tunnel riding `link` (after ops->accept). */
void tt_link_add_tunnel(struct tt_link *link, struct tt_pool_member *m);

#endif
