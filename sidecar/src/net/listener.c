/* Listening sockets and where their connections go (listener.h); the accepting itself,
 * with its backoff when descriptors run out, is the acceptor's (acceptor.h). */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics/metrics.h"
#include "net/acceptor.h"
#include "net/conn.h"
#include "net/listener.h"
#include "net/worker-t.h"

#define TT_LISTEN_BACKLOG 1024

/* EADDRINUSE when another socket, of this process or another, is bound to addr: a
 * plain bind without SO_REUSEPORT conflicts with any socket on the address. */
static int probe_unused(const struct tt_addr *addr)
{
    int one = 1, r = 0;
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (addr->ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0)
        r = -errno;
    close(fd);
    return r;
}

/* Binds a reusable, non-blocking listening socket (see listener.h). */
int tt_listener_bind(struct tt_addr *addr, bool first, int *fd_out)
{
    int one = 1;
    int fd, err;

    /* SO_REUSEPORT lets our workers share the port, but it would also let a second
     * process with the same user join it silently and take part of the traffic: the
     * first socket of a port makes sure nobody holds it yet. */
    if (first && tt_addr_port(addr) != 0 && (err = probe_unused(addr)) < 0)
        return err;
    fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto err_close;
    if (addr->ss.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
        goto err_close;
    if (bind(fd, (struct sockaddr *)&addr->ss, addr->len) < 0)
        goto err_close;
    /* Listening from here: connections that arrive before the worker's loop runs wait in
     * the backlog instead of being refused (/ready may already say yes). */
    if (listen(fd, TT_LISTEN_BACKLOG) < 0)
        goto err_close;
    if (tt_addr_port(addr) == 0) {
        socklen_t len = sizeof(addr->ss);
        if (getsockname(fd, (struct sockaddr *)&addr->ss, &len) < 0)
            goto err_close;
        tt_sockaddr_format((struct sockaddr *)&addr->ss, addr->text, sizeof(addr->text));
    }
    *fd_out = fd;
    return 0;

err_close:
    err = -errno;
    close(fd);
    return err;
}

static void on_accept(struct tt_acceptor *a, int fd)
{
    tt_conn_accept(a->data, fd);
}

/* Adopts fd into w's loop and starts listening (see listener.h). */
int tt_listener_start(struct tt_listener *l, struct tt_worker *w, int index,
                      const struct tt_listener_cfg *cfg, int fd)
{
    struct tt_listener_counters *lc = &w->metrics->listeners[index];
    int r;

    l->worker = w;
    l->index = index;
    l->cfg = cfg;
    /* Refused connections during a shortage are reset at once (the connection limit keeps
     * descriptors in reserve for the admin endpoint, which gets its own acceptor). */
    l->acceptor.name = cfg->name;
    l->acceptor.worker = (int)w->index;
    l->acceptor.shortage = TT_ACCEPTOR_DROP;
    l->acceptor.on_accept = on_accept;
    l->acceptor.on_closed = NULL;
    l->acceptor.data = l;
    l->acceptor.failures = &lc->accept_failures;
    l->acceptor.dropped = &lc->refused_fd_shortage;
    r = tt_acceptor_start(&l->acceptor, &w->loop, fd);
    if (r < 0)
        return r;
    l->open = true;
    return 0;
}

/* Closes the listening socket; pending connections in its backlog are dropped. */
void tt_listener_close(struct tt_listener *l)
{
    if (!l->open)
        return;
    l->open = false;
    tt_acceptor_close(&l->acceptor);
}
