/* The admin HTTP/1.1 endpoint (127.0.0.1:15000 by default): /stats (JSON, or
 * ?format=prometheus), /ready, /live, /certs, /policy, and POST /quitquitquit. It runs
 * on the main thread's loop and parses requests with http-parser; it never blocks and
 * bounds what a client may send (request size, header count, connections in total and
 * per address, deadlines for a request's head and body). On a loopback address it
 * answers only requests for localhost or a loopback address (DNS rebinding); on any other
 * address only /ready, /live and /stats unless TT_ADMIN_F_REMOTE_CONTROL; a request that
 * changes state is refused with Origin or a form content type (cross-site forms). */
#ifndef TT_ADMIN_H
#define TT_ADMIN_H

#include <stdbool.h>

#include <uv.h>

#include "admin/stats.h"
#include "core/util.h"

/* What the admin endpoint asks of the sidecar, on the loop's thread. */
struct tt_admin_ops {
    /* Fills *view for one request; resources stay valid until put_view. */
    void (*get_view)(void *ud, struct tt_stats_view *view);
    void (*put_view)(void *ud, struct tt_stats_view *view);
    /* POST /quitquitquit: begin a graceful exit. */
    void (*quit)(void *ud);
};

struct tt_admin;

/* Flags of tt_admin_new(). */
#define TT_ADMIN_F_REMOTE_CONTROL 1u /* serve /certs, /policy, /quitquitquit off loopback */

/* Binds addr and starts serving on loop; flags are TT_ADMIN_F_*. Returns the server
 * (owned by the caller, end it with tt_admin_close) or NULL with *errp set to a -errno
 * (e.g. UV_EADDRINUSE). */
struct tt_admin *tt_admin_new(uv_loop_t *loop, const struct tt_addr *addr,
                              const struct tt_admin_ops *ops, void *ud, unsigned flags, int *errp);

/* Which routes a server answers (others are 404). */
#define TT_ADMIN_ROUTES_ALL     0u
#define TT_ADMIN_ROUTES_HEALTH  1u /* /ready and /live only: kubelet's probes at the pod address */
#define TT_ADMIN_ROUTES_METRICS 2u /* GET /stats only: scrapes at the pod address */

/* tt_admin_new() answering only the routes of `scope` (TT_ADMIN_ROUTES_*). */
struct tt_admin *tt_admin_new_scoped(uv_loop_t *loop, const struct tt_addr *addr,
                                     const struct tt_admin_ops *ops, void *ud, unsigned flags,
                                     unsigned scope, int *errp);

/* Stops listening, closes every client connection and frees the server once libuv has
 * closed the handles (after the loop runs). Accepts NULL. */
void tt_admin_close(struct tt_admin *admin);

/* The port actually bound (useful with port 0 in tests). */
int tt_admin_port(const struct tt_admin *admin);

/* True when addr is not a loopback address (0.0.0.0 and :: included): there the endpoint
 * serves only /ready, /live and /stats unless TT_ADMIN_F_REMOTE_CONTROL. Pure. */
bool tt_admin_addr_is_remote(const struct tt_addr *addr);

#endif
