/* A TLS bridge for low-volume control connections (the gRPC traffic between a sidecar and
 * tether-control): blocking poll(2), one thread per connection, tt_tls for the
 * cryptography. gRPC only ever sees the plaintext end of a socketpair; the relay thread
 * moves bytes between the other end and TLS on the network socket, with half-close
 * mapped both ways (our close_notify <-> shutdown(SHUT_WR) of the plaintext side).
 * The data plane does not use this: conn.c drives tt_tls from libuv. */
#ifndef TT_TLSPIPE_H
#define TT_TLSPIPE_H

#include <stdint.h>

struct tt_addr;
struct tt_tls;
struct tt_tlspipe;

/* Connects a TCP socket to `addr`, waiting at most timeout_ms. On success returns 0 and
 * sets *fd (non-blocking, TCP_NODELAY, close-on-exec; the caller owns it). Returns
 * -ETIMEDOUT, or the -errno of socket(2)/connect(2). */
int tt_tlspipe_connect(const struct tt_addr *addr, uint64_t timeout_ms, int *fd);

/* Runs the TLS handshake of `tls` (either role) on the connected socket net_fd, blocking
 * for at most timeout_ms. The caller keeps ownership of both. Returns 0 when the peer is
 * verified (tt_tls_peer_id() and tt_tls_peer_serial() then name it), TT_E_TIMEOUT, the
 * handshake's tt_err (after a best-effort send of its alert), TT_E_PROTOCOL when the peer
 * closed the connection during the handshake, or -errno of a socket call. Leaves net_fd
 * non-blocking. tt_tls buffers come from the calling thread's slab pool: a short-lived
 * thread calls tt_buf_pool_drain() before it exits. */
int tt_tlspipe_handshake(int net_fd, struct tt_tls *tls, uint64_t timeout_ms);

/* Starts the relay of an established session (tt_tlspipe_handshake() returned 0). Takes
 * ownership of net_fd and tls in every case (on failure both are already closed/freed).
 * On success returns 0 and sets *app_fd to the plaintext end, a non-blocking,
 * close-on-exec AF_UNIX stream socket owned by the caller (typically handed to gRPC).
 * The relay runs in a detached thread until both directions have ended, an error, or
 * tt_tlspipe_close(); then it closes net_fd and its end of the pair and frees tls: the
 * application sees EOF or an error on app_fd. When `pipe` is not NULL, *pipe receives a
 * handle to force that end; release it with tt_tlspipe_close() (or
 * tt_tlspipe_release()). Returns -errno (socketpair, pthread_create) or -ENOMEM. */
int tt_tlspipe_new(int net_fd, struct tt_tls *tls, int *app_fd, struct tt_tlspipe **pipe);

/* Ends the relay now if it still runs (the network socket is shut down both ways, with
 * no close_notify: used to cut off a revoked peer) and releases the handle. Callable from
 * any thread, once per handle; accepts NULL. The relay thread frees everything itself. */
void tt_tlspipe_close(struct tt_tlspipe *pipe);

/* Releases the handle without touching the connection. Accepts NULL. */
void tt_tlspipe_release(struct tt_tlspipe *pipe);

/* 1 while the relay thread runs, 0 once it has ended (for tests and /stats). */
int tt_tlspipe_running(struct tt_tlspipe *pipe);

#endif
