/* TLS termination on an event loop for tether-control's listeners (the sidecar gRPC API
 * on --listen-sidecars, the operator API off loopback): DESIGN.md "Control plane",
 * "terminates sidecars' TLS on an event loop, not a thread per connection".
 *
 * One acceptor is one listening socket and one libuv loop on one thread of its own. The
 * socket is accepted with tt_acceptor (net/acceptor.h: on EMFILE/ENFILE it backs off,
 * accepts-and-closes on a reserved descriptor, logs once per episode and resumes by
 * itself). Each connection's handshake runs on the sidecar's I/O-free TLS engine (tls.h,
 * fed as conn.c feeds it); once the peer is verified, a socketpair is made, the
 * acceptor keeps one end on the loop and relays plaintext between it and TLS, and the
 * other end goes to the owner's callback (gRPC adopts it, or the operator API).
 *
 * Bounds, each counted through opts.count and logged once per episode (one
 * "connections_shed" line when shedding starts, one "connections_shed_ended" line with
 * the counts once CP_TLS_QUIET_MS passed without any):
 *   - a handshake deadline (opts.handshake_ms): "handshake_timeout";
 *   - a first-call deadline (opts.first_call_ms): a verified connection on which the
 *     owner has not called cp_tls_acceptor_mark_called() by then is closed:
 *     "first_call_timeout";
 *   - at most opts.max_per_source connections from one source IP address, the newest
 *     refused: "conn_limit_per_source";
 *   - at most opts.max_conns connections in all: at the bound the oldest connection that
 *     has no call marked (in its handshake or waiting for its first call) is closed to
 *     make room, "conn_evicted"; when every one has a call, the newcomer is refused,
 *     "conn_limit".
 * Descriptor shortages are counted as "accept_failed" and "accept_dropped" (at accept) and
 * "bridge_failed" (no socketpair for a verified connection, which is then closed).
 * Closed-by-bound connections are reset (RST), so they cost no TIME_WAIT here. */
#ifndef CP_TLS_ACCEPTOR_H
#define CP_TLS_ACCEPTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tls/tls.h"

#define CP_TLS_HANDSHAKE_MS  10000 /* default handshake deadline */
#define CP_TLS_MAX_CONNS     1024  /* default bound on connections */
#define CP_TLS_QUIET_MS      5000  /* a shedding episode ends after this long without one */
#define CP_TLS_CLOSE_WAIT_MS 2000  /* a graceful close (FIN after what is queued) gives up then */
#define CP_TLS_FDS_PER_CONN  3     /* the TLS socket and both ends of the socketpair */

struct tt_addr;
struct tt_identity;
struct cp_tls_acceptor;

/* Returns a reference to the identity to present (the caller unrefs it), or NULL with
 * one line in err (the connection is then closed). Called on the acceptor's loop thread,
 * once per connection. */
typedef struct tt_identity *(*cp_tls_identity_fn)(void *ud, char *err, size_t errlen);

/* A verified connection: app_fd is the plaintext end (non-blocking, close-on-exec; the
 * callee owns it), peer_id the client's SPIFFE ID or NULL when it presented no
 * certificate (only with TT_TLS_SERVER_OPTIONAL_CLIENT), serial its leaf serial ("" without
 * one), peer_addr "IP:PORT" (the key for cp_tls_acceptor_mark_called()). The strings are
 * valid during the call. Called on the loop thread; must not block. */
typedef void (*cp_tls_accept_fn)(void *ud, int app_fd, const char *peer_id, const char *serial,
                                 const char *peer_addr);

/* Whether a leaf serial is revoked now (cp_tls_acceptor_sweep). Loop thread. */
typedef bool (*cp_tls_revoked_fn)(void *ud, const char *serial);

/* One shed connection or one accept failure, by reason: "<opts.name>_<reason>" with the
 * reasons listed above (e.g. "sidecar_conn_evicted"). Loop thread. */
typedef void (*cp_tls_count_fn)(void *ud, const char *reason);

struct cp_tls_acceptor_opts {
    const struct tt_addr *listen; /* port 0 picks one: see cp_tls_acceptor_port() */
    enum tt_tls_role role;        /* TT_TLS_SERVER or TT_TLS_SERVER_OPTIONAL_CLIENT */
    const char *alpn;             /* ALPN protocol to select when offered ("h2"), or NULL */
    cp_tls_identity_fn identity;
    cp_tls_accept_fn on_accept;
    cp_tls_revoked_fn revoked; /* optional */
    cp_tls_count_fn count;     /* optional */
    void *ud;
    const char *name;        /* for logs and counters, e.g. "sidecar" or "api" */
    const char *flag;        /* the flag that named the address, for errors */
    uint64_t handshake_ms;   /* 0: CP_TLS_HANDSHAKE_MS */
    uint64_t first_call_ms;  /* 0: no first-call deadline */
    unsigned max_conns;      /* 0: CP_TLS_MAX_CONNS */
    unsigned max_per_source; /* 0: max_conns */
};

/* Binds and listens on opts->listen and starts the loop thread. opts->alpn must be a
 * static string. Returns NULL with one line in err ("--listen-api 10.0.0.1:15014: Address
 * already in use") on failure. */
struct cp_tls_acceptor *cp_tls_acceptor_new(const struct cp_tls_acceptor_opts *opts, char *err,
                                            size_t errlen);

/* The port actually bound. */
int cp_tls_acceptor_port(const struct cp_tls_acceptor *a);

/* The connection from peer_addr ("IP:PORT" as given to on_accept) completed or started a
 * call (the owner decides which): it is no longer subject to the first-call deadline nor
 * evicted to make room. Unknown addresses are ignored. Any thread. */
void cp_tls_acceptor_mark_called(struct cp_tls_acceptor *a, const char *peer_addr);

/* Closes, soon and on the loop thread, every verified connection whose leaf serial
 * opts.revoked says is revoked (logged as "revoked_connection_closed"). Any thread. */
void cp_tls_acceptor_sweep(struct cp_tls_acceptor *a);

/* What the acceptor holds now: connections in all, and those in their handshake. Any
 * thread (relaxed reads). */
struct cp_tls_acceptor_load {
    unsigned conns, handshaking;
};
void cp_tls_acceptor_load(const struct cp_tls_acceptor *a, struct cp_tls_acceptor_load *out);

/* Stops accepting, closes the listening socket and every connection (the owners' ends
 * see EOF), ends the loop thread and frees the acceptor; no callback runs after this
 * returns. Not on the loop thread. Accepts NULL. */
void cp_tls_acceptor_free(struct cp_tls_acceptor *a);

#endif
