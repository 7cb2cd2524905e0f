/* One proxied connection: the state machine that joins a downstream socket (accepted on
 * a listener) to an upstream socket, with TLS on one of the two sides (inbound: the
 * downstream side is mTLS and the upstream plaintext; outbound: the reverse). This is
 * where the handshake is driven, where the allow list is consulted, and where bytes are
 * relayed with backpressure, half-close and timeouts. With pooling, the TLS side of an
 * app connection is a tunnel stream on a link (net/pool.h) instead, and the link's own
 * mTLS connection (its carrier) is a connection of this module too. */
#ifndef TT_CONN_H
#define TT_CONN_H

#include <stdbool.h>

#include "net/conn-t.h"

struct tt_listener;
struct tt_revocations;
struct tt_crls;

/* How the pool (net/pool.h) reaches connections: links' carriers and tunnels. */
extern const struct tt_pool_ops tt_conn_pool_ops;

/* Takes fd, a socket the listener just accepted (owned from here on, closed on every
 * path), and starts its state machine with the worker's current snapshot and settings.
 * Never fails loudly: on error (the worker's share of --max-connections reached: reset
 * and logged as TT_E_CONN_LIMIT; out of memory) the client is closed and the refusal
 * counted. */
void tt_conn_accept(struct tt_listener *listener, int fd);

/* Closes the connection (reset, logged) when its verified TLS peer presented a
 * certificate whose serial is in `revocations`. Returns true when it did. */
bool tt_conn_close_if_revoked(struct tt_conn *c, const struct tt_revocations *revocations);

/* Closes the connection (reset, logged) when a CRL of `crls` revokes a certificate of its
 * verified TLS peer's chain (a reload brought new CRLs). Returns true when it did. */
bool tt_conn_close_if_crl_revoked(struct tt_conn *c, const struct tt_crls *crls);

/* Ends the connection now (drain timeout, worker stop), resetting both sockets. */
void tt_conn_abort(struct tt_conn *c);

#endif
