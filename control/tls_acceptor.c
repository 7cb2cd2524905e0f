/* The blocking TLS acceptor (tls_acceptor.h). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/errors.h"
#include "tls/identity.h"
#include "net/listener.h"
#include "core/log.h"
#include "core/spiffe.h"
#include "tls_acceptor.h"
#include "control/tlspipe.h"
#include "core/util.h"

struct cp_tls_acceptor {
    struct cp_tls_acceptor_opts opts;
    char name[32];
    int listen_fd;
    int port;
    pthread_t thread;
    bool stop; /* atomic */

    pthread_mutex_t lock; /* guards pending */
    pthread_cond_t idle;  /* signalled when pending drops to 0 */
    unsigned pending;     /* handshake threads alive */
};

struct handshake_job {
    struct cp_tls_acceptor *a;
    int fd;
    char peer_addr[64];
};

static void job_done(struct cp_tls_acceptor *a)
{
    pthread_mutex_lock(&a->lock);
    if (--a->pending == 0)
        pthread_cond_broadcast(&a->idle);
    pthread_mutex_unlock(&a->lock);
}

/* One connection's handshake, then its hand-over to the relay and to the callback. */
static void *handshake_main(void *arg)
{
    struct handshake_job *job = arg;
    struct cp_tls_acceptor *a = job->a;
    struct tt_tlspipe *pipe = NULL;
    struct tt_tls *tls = NULL;
    struct tt_identity *id;
    char err[512], peer_id[TT_SPIFFE_MAX + 1], serial[TT_SERIAL_MAX];
    int app_fd, r;

    err[0] = '\0';
    id = a->opts.identity(a->opts.ud, err, sizeof(err));
    if (id == NULL) {
        tt_log(TT_LOG_ERROR, "serving_certificate_failed", TT_LS("listener", a->name),
               TT_LS("error", err));
        goto out;
    }
    tls = tt_tls_new(id, a->opts.role, NULL);
    tt_identity_unref(id);
    if (tls == NULL)
        goto out;
    r = tt_tlspipe_handshake(job->fd, tls, a->opts.handshake_ms);
    if (r < 0) {
        tt_log(TT_LOG_WARN, "handshake_failed", TT_LS("listener", a->name),
               TT_LS("peer", job->peer_addr), TT_LS("error", tt_strerror(r)),
               TT_LS("peer_id", tt_tls_peer_id(tls)), TT_LS("serial", tt_tls_peer_serial(tls)));
        goto out;
    }
    snprintf(peer_id, sizeof(peer_id), "%s", tt_tls_peer_id(tls));
    snprintf(serial, sizeof(serial), "%s", tt_tls_peer_serial(tls));
    r = tt_tlspipe_new(job->fd, tls, &app_fd, &pipe); /* owns fd and tls from here */
    job->fd = -1;
    tls = NULL;
    if (r < 0) {
        tt_log(TT_LOG_ERROR, "tlspipe_start_failed", TT_LS("listener", a->name),
               TT_LS("error", tt_strerror(r)));
        goto out;
    }
    a->opts.on_accept(a->opts.ud, app_fd, pipe, peer_id[0] ? peer_id : NULL, serial,
                      job->peer_addr);
out:
    tt_tls_free(tls);
    if (job->fd >= 0)
        close(job->fd);
    free(job);
    job_done(a);
    tt_buf_pool_drain(); /* this thread ends: return its cached slabs */
    return NULL;
}

static void *acceptor_main(void *arg)
{
    struct cp_tls_acceptor *a = arg;

    while (!__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
        struct pollfd p = {.fd = a->listen_fd, .events = POLLIN};
        struct sockaddr_storage ss;
        socklen_t sslen = sizeof(ss);
        struct handshake_job *job;
        pthread_t t;
        bool busy;
        int fd;

        if (poll(&p, 1, 200) <= 0)
            continue;
        fd = accept4(a->listen_fd, (struct sockaddr *)&ss, &sslen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        job = calloc(1, sizeof(*job));
        pthread_mutex_lock(&a->lock);
        busy = a->pending >= CP_TLS_ACCEPTOR_MAX_HANDSHAKES;
        if (!busy && job != NULL)
            a->pending++;
        pthread_mutex_unlock(&a->lock);
        if (job == NULL || busy) {
            /* Too many handshakes in flight: shed the newest rather than pile up threads. */
            free(job);
            close(fd);
            continue;
        }
        job->a = a;
        job->fd = fd;
        tt_sockaddr_format((struct sockaddr *)&ss, job->peer_addr, sizeof(job->peer_addr));
        if (pthread_create(&t, NULL, handshake_main, job) != 0) {
            close(fd);
            free(job);
            job_done(a);
            continue;
        }
        pthread_detach(t);
    }
    return NULL;
}

/* Binds, listens and starts the acceptor thread (see tls_acceptor.h). */
struct cp_tls_acceptor *cp_tls_acceptor_new(const struct cp_tls_acceptor_opts *opts, char *err,
                                            size_t errlen)
{
    struct cp_tls_acceptor *a;
    struct tt_addr addr = *opts->listen;
    int r;

    if (opts->identity == NULL || opts->on_accept == NULL ||
        (opts->role != TT_TLS_SERVER && opts->role != TT_TLS_SERVER_OPTIONAL_CLIENT)) {
        snprintf(err, errlen, "tls acceptor: bad options");
        return NULL;
    }
    a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->opts = *opts;
    if (a->opts.handshake_ms == 0)
        a->opts.handshake_ms = CP_TLS_ACCEPTOR_HANDSHAKE_MS;
    snprintf(a->name, sizeof(a->name), "%s", opts->name ? opts->name : "tls");
    a->opts.name = a->name;
    a->opts.flag = NULL; /* not kept: the caller's string */
    a->opts.listen = NULL;
    a->listen_fd = -1;
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->idle, NULL);

    r = tt_listener_bind(&addr, true, &a->listen_fd);
    if (r == 0 && listen(a->listen_fd, 128) < 0)
        r = -errno;
    if (r < 0) {
        snprintf(err, errlen, "%s %s: %s", opts->flag ? opts->flag : "listen", opts->listen->text,
                 tt_strerror(r));
        goto err_free;
    }
    a->port = tt_addr_port(&addr);
    if (pthread_create(&a->thread, NULL, acceptor_main, a) != 0) {
        snprintf(err, errlen, "cannot start the %s acceptor thread", a->name);
        goto err_free;
    }
    return a;

err_free:
    if (a->listen_fd >= 0)
        close(a->listen_fd);
    pthread_cond_destroy(&a->idle);
    pthread_mutex_destroy(&a->lock);
    free(a);
    return NULL;
}

/* The bound port. */
int cp_tls_acceptor_port(const struct cp_tls_acceptor *a)
{
    return a->port;
}

/* Stops, waits for handshakes in flight and frees the acceptor. */
void cp_tls_acceptor_free(struct cp_tls_acceptor *a)
{
    if (a == NULL)
        return;
    __atomic_store_n(&a->stop, true, __ATOMIC_RELEASE);
    pthread_join(a->thread, NULL);
    close(a->listen_fd);
    /* Handshakes in flight hold `a`; each ends within its timeout. */
    pthread_mutex_lock(&a->lock);
    while (a->pending > 0)
        pthread_cond_wait(&a->idle, &a->lock);
    pthread_mutex_unlock(&a->lock);
    pthread_cond_destroy(&a->idle);
    pthread_mutex_destroy(&a->lock);
    free(a);
}
