/* Listeners' sockets: bound by the runtime on the main thread (so a bad address stops
 * start-up with a clear error), one SO_REUSEPORT socket per worker per listener, then
 * served by each worker's loop. This is where connections are accepted. */
#ifndef TT_LISTENER_H
#define TT_LISTENER_H

#include <stdbool.h>

#include "core/util.h"
#include "net/listener-t.h"

/* Creates, binds, listens on and returns in *fd a non-blocking SO_REUSEPORT TCP socket
 * for addr (so a connection made before the worker runs waits, never refused).
 * `first` marks the first socket of this address in the process: it fails with
 * -EADDRINUSE when any other socket is bound there (another process sharing the port
 * through SO_REUSEPORT would silently take part of the connections). When addr's port is
 * 0 the kernel's choice is written back into addr (so the other workers bind the same
 * port). Returns 0 or -errno. */
int tt_listener_bind(struct tt_addr *addr, bool first, int *fd);

/* Starts listening on fd in worker w's loop, as listener `index` configured by cfg: each
 * connection goes to tt_conn_accept(); when descriptors run out, accepting pauses with a
 * backoff (acceptor.h), counted in the listener's accept_failures and
 * refused_fd_shortage. Takes ownership of fd. Returns 0, or <0 with fd closed (closing
 * the listener is then a no-op). */
int tt_listener_start(struct tt_listener *l, struct tt_worker *w, int index,
                      const struct tt_listener_cfg *cfg, int fd);

/* Stops accepting and closes the socket (asynchronously). Safe to call twice. */
void tt_listener_close(struct tt_listener *l);

#endif
