/* Idle keep-alive connections to the workload, kept by an inbound worker for reuse
 * (Tether issue 10): a request stream served over HTTP/1.1 (http/h2h1.h) whose response
 * left the workload's connection open parks it here, and the next request stream to the
 * same address takes it instead of opening a TCP connection. Only file descriptors are
 * kept (no libuv handle): a connection the workload closed meanwhile, or one idle longer
 * than TT_IDLE_FD_MS (under common servers' keep-alive timeouts, such as Node's 5 s), is
 * found out when taken and closed. One worker's thread only. */
#ifndef TT_IDLEFDS_H
#define TT_IDLEFDS_H

#include <stddef.h>
#include <stdint.h>

#include "core/util.h"
#include "snapshot/services.h" /* struct tt_addr_key */

#define TT_IDLE_FDS_MAX 64
#define TT_IDLE_FD_MS   2000

struct tt_idle_fds {
    struct tt_idle_fd {
        struct tt_addr_key key;
        int fd;
        uint64_t since_ms;
    } e[TT_IDLE_FDS_MAX];
    size_t n;
};

/* Parks fd, a connected socket to `target` at rest between responses (owned from here
 * on). When the cache is full the oldest entry is closed to make room. */
void tt_idle_fds_put(struct tt_idle_fds *c, const struct tt_addr *target, int fd, uint64_t now_ms);

/* A parked socket to `target` still open and idle for less than TT_IDLE_FD_MS (the
 * caller owns it), the newest first; or -1. Those found closed, stale or holding
 * unexpected bytes are closed on the way. */
int tt_idle_fds_take(struct tt_idle_fds *c, const struct tt_addr *target, uint64_t now_ms);

/* Closes every parked socket. */
void tt_idle_fds_close_all(struct tt_idle_fds *c);

#endif
