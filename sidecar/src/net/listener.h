/* Listeners: what a configured listener is (filled by app/config, read by the workers),
 * and its sockets: bound by the runtime on the main thread (so a bad address stops
 * start-up with a clear error), one SO_REUSEPORT socket per worker per listener, then
 * served by each worker's loop. This is where connections are accepted. */
#ifndef TT_LISTENER_H
#define TT_LISTENER_H

#include <stdbool.h>

#include <uv.h>

#include "core/util.h"
#include "tls/tls.h"

enum tt_listener_kind {
    TT_LISTENER_INBOUND,  /* terminate mTLS on listen, relay plaintext to target */
    TT_LISTENER_OUTBOUND, /* accept plaintext on listen, originate mTLS to target */
};

/* One configured listener. */
struct tt_listener_cfg {
    enum tt_listener_kind kind;
    char name[64]; /* "inbound:127.0.0.1:16006", used in /stats and logs */
    struct tt_addr listen;
    struct tt_addr target; /* inbound: forward address; outbound: upstream */
    char *expected_id;     /* outbound: server SPIFFE ID that must answer; else NULL */
};

struct tt_worker;

/* A listening socket of one worker. */
struct tt_listener {
    uv_tcp_t tcp;
    struct tt_worker *worker;
    int index;                         /* into the worker's listener configs and counters */
    const struct tt_listener_cfg *cfg; /* owned by the runtime's configuration */
    struct tt_tls_resume resume;       /* outbound: the upstream's newest session ticket */
    bool open;
};

/* Creates, binds and returns in *fd a non-blocking SO_REUSEPORT TCP socket for addr.
 * `first` marks the first socket of this address in the process: it fails with
 * -EADDRINUSE when any other socket is bound there (another process sharing the port
 * through SO_REUSEPORT would silently take part of the connections). When addr's port is
 * 0 the kernel's choice is written back into addr (so the other workers bind the same
 * port). Returns 0 or -errno. */
int tt_listener_bind(struct tt_addr *addr, bool first, int *fd);

/* Starts accepting on fd in worker w's loop, as listener `index` configured by cfg.
 * Takes ownership of fd. Returns 0 or <0 (close the listener either way). */
int tt_listener_start(struct tt_listener *l, struct tt_worker *w, int index,
                      const struct tt_listener_cfg *cfg, int fd);

/* Stops accepting and closes the socket (asynchronously). Safe to call twice. */
void tt_listener_close(struct tt_listener *l);

#endif
