/* TLS bridge for control connections (see tlspipe.h).
 *
 * One detached thread per connection polls two sockets: the network socket carrying
 * TLS and "our" end of a socketpair whose other end the application (gRPC) owns. Both
 * are non-blocking; every write uses MSG_NOSIGNAL so a closed peer is an error, never a
 * SIGPIPE. Memory is bounded: one record's worth of plaintext waits for the application
 * at a time, and the application is not read while more than OUT_MAX bytes of
 * ciphertext wait for the network (nor the network while the application is slow).
 *
 * The handle shared by the relay thread and the owner is refcounted; `running` and the
 * network fd are guarded by a mutex so that tt_tlspipe_close() never shuts down a
 * descriptor number the relay has already closed (and the kernel reused). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/errors.h"
#include "tls/tls.h"
#include "control/tlspipe.h"
#include "core/util.h"

#define CHUNK     16384       /* one TLS record of plaintext */
#define OUT_MAX   (64 * 1024) /* ciphertext waiting for the network before we stop reading */
#define IN_MAX    (64 * 1024) /* ciphertext fed but not decrypted before we stop reading */
#define LINGER_MS 10000       /* after one direction ended, how long the other may take */

struct tt_tlspipe {
    pthread_mutex_t lock;
    int refs;    /* the relay thread and the owner's handle; under lock */
    int running; /* under lock */
    int net_fd;  /* valid while running; closed by the relay under lock */
    int app_fd;  /* our end of the socketpair */
    struct tt_tls *tls;
};

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return -errno;
    return 0;
}

/* Milliseconds left until `deadline` (tt_now_ms() clock) as a poll(2) timeout. */
static int ms_left(uint64_t deadline)
{
    uint64_t now = tt_now_ms();

    if (now >= deadline)
        return 0;
    return deadline - now > INT32_MAX ? INT32_MAX : (int)(deadline - now);
}

/* Waits for `events` on fd until the deadline: 0 ready, TT_E_TIMEOUT or -errno. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events};

    for (;;) {
        int r = poll(&p, 1, ms_left(deadline));
        if (r > 0)
            return 0;
        if (r == 0)
            return TT_E_TIMEOUT;
        if (errno != EINTR)
            return -errno;
    }
}

/* Connects with a deadline; see tlspipe.h. */
int tt_tlspipe_connect(const struct tt_addr *addr, uint64_t timeout_ms, int *fd)
{
    uint64_t deadline = tt_now_ms() + timeout_ms;
    int s, r, one = 1;
    socklen_t len = sizeof(r);

    s = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s < 0)
        return -errno;
    (void)setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(s, (const struct sockaddr *)&addr->ss, addr->len) < 0) {
        if (errno != EINPROGRESS) {
            r = -errno;
            goto err_close;
        }
        r = wait_fd(s, POLLOUT, deadline);
        if (r == TT_E_TIMEOUT)
            r = -ETIMEDOUT;
        if (r < 0)
            goto err_close;
        if (getsockopt(s, SOL_SOCKET, SO_ERROR, &r, &len) < 0) {
            r = -errno;
            goto err_close;
        }
        if (r != 0) {
            r = -r;
            goto err_close;
        }
    }
    *fd = s;
    return 0;

err_close:
    close(s);
    return r;
}

/* Writes all pending ciphertext, waiting until the deadline. 0 or <0. */
static int flush_blocking(int fd, struct tt_tls *tls, uint64_t deadline)
{
    const uint8_t *p;
    size_t n;

    while ((n = tt_tls_pending(tls, &p)) > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            tt_tls_consume(tls, (size_t)w);
        } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            int r = wait_fd(fd, POLLOUT, deadline);
            if (r < 0)
                return r;
        } else {
            return w < 0 ? -errno : -EPIPE;
        }
    }
    return 0;
}

/* Runs the handshake; see tlspipe.h. */
int tt_tlspipe_handshake(int net_fd, struct tt_tls *tls, uint64_t timeout_ms)
{
    uint64_t deadline = tt_now_ms() + timeout_ms;
    uint8_t buf[CHUNK];
    int r;

    if ((r = set_nonblock(net_fd)) < 0)
        return r;
    for (;;) {
        int hs = tt_tls_handshake(tls);
        r = flush_blocking(net_fd, tls, deadline);
        if (hs < 0)
            return hs; /* the alert, if any, went out with the flush above */
        if (r < 0)
            return r;
        if (hs == 1)
            return 0;
        ssize_t n = recv(net_fd, buf, sizeof(buf), 0);
        if (n > 0) {
            if ((r = tt_tls_feed(tls, buf, (size_t)n)) < 0)
                return r;
        } else if (n == 0) {
            return TT_E_PROTOCOL; /* the peer gave up, usually after its own alert */
        } else if (errno == EAGAIN || errno == EINTR) {
            if ((r = wait_fd(net_fd, POLLIN, deadline)) < 0)
                return r;
        } else {
            return -errno;
        }
    }
}

static void pipe_unref(struct tt_tlspipe *p)
{
    pthread_mutex_lock(&p->lock);
    int last = --p->refs == 0;
    pthread_mutex_unlock(&p->lock);
    if (!last)
        return;
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* The relay's state between two polls. */
struct relay {
    struct tt_tls *tls;
    int net, app;
    uint8_t to_app[CHUNK]; /* decrypted, not yet written to the application */
    size_t off, len;
    unsigned tls_eof : 1;     /* the peer's close_notify arrived */
    unsigned app_shut : 1;    /* ...and was passed on as shutdown(app, SHUT_WR) */
    unsigned app_eof : 1;     /* the application shut its write side: close_notify queued */
    unsigned net_shut : 1;    /* ...and went out, followed by shutdown(net, SHUT_WR) */
    unsigned net_eof : 1;     /* TCP FIN from the peer */
    unsigned net_hup : 1;     /* poll reported HUP/ERR on the network socket */
    unsigned app_hup : 1;     /* poll reported HUP/ERR on the application socket */
    uint64_t linger_deadline; /* set when the first direction ends */
};

/* Decrypts, writes to both sides what can be written, and propagates half-closes.
 * Returns 1 when both directions are over, 0 to keep going, <0 to end on an error. */
static int relay_progress(struct relay *r)
{
    const uint8_t *p;
    size_t n;

    /* Decrypt and deliver record after record until the application stops taking them
     * or the input runs out: records already fed must not wait for the next poll. */
    for (;;) {
        if (r->len == 0 && !r->tls_eof) {
            int d = tt_tls_read(r->tls, r->to_app, sizeof(r->to_app));
            if (d > 0) {
                r->off = 0;
                r->len = (size_t)d;
            } else if (d == TT_TLS_EOF) {
                r->tls_eof = 1;
            } else if (d < 0) {
                return d;
            } else if (r->net_eof) {
                return TT_E_PROTOCOL; /* FIN without close_notify: a truncation */
            }
        }
        if (r->len == 0)
            break;
        while (r->len > 0) {
            ssize_t w = send(r->app, r->to_app + r->off, r->len, MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            if (w <= 0)
                return w < 0 ? -errno : -EPIPE;
            r->off += (size_t)w;
            r->len -= (size_t)w;
        }
        if (r->len > 0)
            break; /* the application is slow: POLLOUT will bring us back */
    }
    if (r->tls_eof && r->len == 0 && !r->app_shut) {
        if (shutdown(r->app, SHUT_WR) < 0 && errno != ENOTCONN)
            return -errno;
        r->app_shut = 1;
    }
    while ((n = tt_tls_pending(r->tls, &p)) > 0) {
        ssize_t w = send(r->net, p, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        if (w <= 0)
            return w < 0 ? -errno : -EPIPE;
        tt_tls_consume(r->tls, (size_t)w);
    }
    if (r->app_eof && n == 0 && !r->net_shut) {
        if (shutdown(r->net, SHUT_WR) < 0 && errno != ENOTCONN)
            return -errno;
        r->net_shut = 1;
    }
    if ((r->app_shut || r->app_eof) && r->linger_deadline == 0)
        r->linger_deadline = tt_now_ms() + LINGER_MS;
    return r->app_shut && r->net_shut ? 1 : 0;
}

/* Reads what the application wrote and encrypts it. 0 or <0. */
static int relay_from_app(struct relay *r)
{
    uint8_t buf[CHUNK];
    ssize_t n = recv(r->app, buf, sizeof(buf), 0);

    if (n > 0)
        return tt_tls_write(r->tls, buf, (size_t)n);
    if (n == 0) {
        r->app_eof = 1;
        return tt_tls_close_notify(r->tls);
    }
    return errno == EAGAIN || errno == EINTR ? 0 : -errno;
}

/* Reads ciphertext from the network and feeds it. 0 or <0. */
static int relay_from_net(struct relay *r)
{
    uint8_t buf[CHUNK];
    ssize_t n = recv(r->net, buf, sizeof(buf), 0);

    if (n > 0)
        return tt_tls_feed(r->tls, buf, (size_t)n);
    if (n == 0) {
        r->net_eof = 1;
        return 0;
    }
    return errno == EAGAIN || errno == EINTR ? 0 : -errno;
}

static void relay_loop(struct relay *r)
{
    for (;;) {
        struct pollfd pf[2];
        const uint8_t *p;
        size_t pending;
        int rc = relay_progress(r);

        if (rc != 0)
            return;
        pending = tt_tls_pending(r->tls, &p);
        pf[0].fd = r->app;
        pf[0].events = 0;
        if (!r->app_eof && pending < OUT_MAX)
            pf[0].events |= POLLIN;
        if (r->len > 0)
            pf[0].events |= POLLOUT;
        pf[1].fd = r->net;
        pf[1].events = 0;
        if (!r->tls_eof && !r->net_eof && r->len == 0 && tt_tls_input_len(r->tls) < IN_MAX)
            pf[1].events |= POLLIN;
        if (pending > 0)
            pf[1].events |= POLLOUT;
        /* A hung-up socket reports POLLHUP whatever we ask: leave it out of the poll set
         * while we want nothing from it, or the loop would spin. */
        if (pf[0].events == 0 && r->app_hup)
            pf[0].fd = -1;
        if (pf[1].events == 0 && r->net_hup)
            pf[1].fd = -1;
        if (pf[0].fd < 0 && pf[1].fd < 0)
            return; /* both sides hung up and nothing can move any more */

        int timeout = r->linger_deadline != 0 ? ms_left(r->linger_deadline) : -1;
        int n = poll(pf, 2, timeout);
        if (n < 0 && errno != EINTR)
            return;
        if (n == 0 && r->linger_deadline != 0)
            return; /* the other direction never ended */
        if (n <= 0)
            continue;
        if (pf[0].revents & (POLLHUP | POLLERR))
            r->app_hup = 1;
        if (pf[1].revents & (POLLHUP | POLLERR))
            r->net_hup = 1;
        if ((pf[0].revents & (POLLIN | POLLHUP | POLLERR)) && (pf[0].events & POLLIN) &&
            relay_from_app(r) < 0)
            return;
        if ((pf[1].revents & (POLLIN | POLLHUP | POLLERR)) && (pf[1].events & POLLIN) &&
            relay_from_net(r) < 0)
            return;
    }
}

static void *relay_main(void *arg)
{
    struct tt_tlspipe *p = arg;
    struct relay *r = calloc(1, sizeof(*r));

    if (r != NULL) {
        r->tls = p->tls;
        r->net = p->net_fd;
        r->app = p->app_fd;
        relay_loop(r);
        free(r);
    }
    close(p->app_fd);
    tt_tls_free(p->tls);
    p->tls = NULL;
    pthread_mutex_lock(&p->lock);
    p->running = 0;
    close(p->net_fd);
    p->net_fd = -1;
    pthread_mutex_unlock(&p->lock);
    pipe_unref(p);
    tt_buf_pool_drain(); /* this thread's cached slabs would leak otherwise */
    return NULL;
}

/* Starts the relay thread; see tlspipe.h. */
int tt_tlspipe_new(int net_fd, struct tt_tls *tls, int *app_fd, struct tt_tlspipe **pipe)
{
    struct tt_tlspipe *p;
    pthread_attr_t attr;
    pthread_t tid;
    int sv[2], r;

    if ((r = set_nonblock(net_fd)) < 0)
        goto err_close_net;
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        r = -ENOMEM;
        goto err_close_net;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        r = -errno;
        goto err_free_pipe;
    }
    pthread_mutex_init(&p->lock, NULL);
    p->refs = pipe != NULL ? 2 : 1;
    p->running = 1;
    p->net_fd = net_fd;
    p->app_fd = sv[0];
    p->tls = tls;

    if ((r = pthread_attr_init(&attr)) != 0) {
        r = -r;
        goto err_close_pair;
    }
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024); /* two 16 KiB buffers, little else */
    r = pthread_create(&tid, &attr, relay_main, p);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        r = -r;
        goto err_close_pair;
    }
    *app_fd = sv[1];
    if (pipe != NULL)
        *pipe = p;
    return 0;

err_close_pair:
    pthread_mutex_destroy(&p->lock);
    close(sv[0]);
    close(sv[1]);
err_free_pipe:
    free(p);
err_close_net:
    close(net_fd);
    tt_tls_free(tls);
    return r;
}

/* Forces the relay to end and releases the handle. */
void tt_tlspipe_close(struct tt_tlspipe *pipe)
{
    if (pipe == NULL)
        return;
    pthread_mutex_lock(&pipe->lock);
    if (pipe->running)
        shutdown(pipe->net_fd, SHUT_RDWR); /* wakes the relay's poll with HUP/EOF */
    pthread_mutex_unlock(&pipe->lock);
    pipe_unref(pipe);
}

/* Releases the handle only. */
void tt_tlspipe_release(struct tt_tlspipe *pipe)
{
    if (pipe != NULL)
        pipe_unref(pipe);
}

/* Whether the relay still runs. */
int tt_tlspipe_running(struct tt_tlspipe *pipe)
{
    pthread_mutex_lock(&pipe->lock);
    int running = pipe->running;
    pthread_mutex_unlock(&pipe->lock);
    return running;
}
