/* Accepting with a backoff on descriptor shortages (acceptor.h).
 *
 * Why a uv_poll_t and not uv_listen(): libuv's accept loop (uv__server_io) retries a
 * failed accept at once and only leaves when one succeeds or the handle closes, so a
 * process without a free descriptor spins there, its loop never comes back to anything
 * else (reads, closes, timers, wake-ups) and it frees nothing. Closing and re-listening
 * would give up the port (and the backlog) for the pause. Watching the socket ourselves
 * lets a pause be one uv_poll_stop() and its end one uv_poll_start(). */
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/errors.h"
#include "core/log.h"
#include "core/util.h"
#include "metrics/metrics.h"
#include "net/acceptor.h"

static void on_readable(uv_poll_t *poll, int status, int events);

static void count(uint64_t *counter, uint64_t n)
{
    if (counter != NULL)
        TT_COUNTER_ADD(*counter, n);
}

static int open_reserve(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* Errors that concern the one connection accept(2) took (Linux passes a pending network
 * error of the new socket through accept, see accept(2)), or none: the next may succeed. */
static bool is_per_connection(int err)
{
    switch (-err) {
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM: /* a firewall refused this one */
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
        return true;
    default:
        return false;
    }
}

static void log_failed(const struct tt_acceptor *a, int err)
{
    const struct tt_log_field f[] = {
        TT_LS("listener", a->name),
        TT_LS("error", tt_strerror(err)),
        TT_LU("backoff_ms", a->backoff_ms),
        TT_LI("worker", a->worker),
    };

    if (tt_log_enabled(TT_LOG_WARN))
        tt_log_fields(TT_LOG_WARN, "accept_failed", f, a->worker >= 0 ? 4 : 3);
}

/* The end of an episode: its failures, the clients reset on the reserve, and the time from
 * the first failure to `resumed_ms`, when accepting resumed for good. */
static void log_resumed(const struct tt_acceptor *a, uint64_t resumed_ms)
{
    const struct tt_log_field f[] = {
        TT_LS("listener", a->name),
        TT_LU("failures", a->episode_failures),
        TT_LU("dropped", a->episode_dropped),
        TT_LU("duration_ms", resumed_ms - a->episode_start_ms),
        TT_LI("worker", a->worker),
    };

    if (tt_log_enabled(TT_LOG_INFO))
        tt_log_fields(TT_LOG_INFO, "accept_resumed", f, a->worker >= 0 ? 5 : 4);
}

/* Closes the reserve to take the connection that waits: hands it to the owner
 * (TT_ACCEPTOR_SERVE; the reserve is reopened by tt_acceptor_replenish() or at the end of
 * the backoff) or resets it and opens the reserve again (TT_ACCEPTOR_DROP). Another
 * thread may take the freed number first: then nothing is accepted, and the reserve is
 * opened again later. Returns true when a connection was handed over. */
static bool use_reserve(struct tt_acceptor *a)
{
    struct linger reset = {.l_onoff = 1, .l_linger = 0};
    int fd;

    if (a->reserve_fd < 0)
        return false;
    close(a->reserve_fd);
    a->reserve_fd = -1;
    fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0 && a->shortage == TT_ACCEPTOR_SERVE) {
        a->on_accept(a, fd);
        return true;
    }
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
        close(fd);
        a->episode_dropped++;
        count(a->dropped, 1);
    }
    a->reserve_fd = open_reserve();
    return false;
}

static void on_timer(uv_timer_t *timer)
{
    struct tt_acceptor *a = timer->data;
    uint64_t now = uv_now(timer->loop);

    if (a->state == TT_ACCEPTOR_S_PAUSED) {
        tt_acceptor_replenish(a);
        a->state = TT_ACCEPTOR_S_RECOVERING;
        uv_poll_start(&a->poll, UV_READABLE, on_readable);
        uv_timer_start(&a->timer, on_timer, TT_ACCEPTOR_QUIET_MS, 0);
    } else if (a->state == TT_ACCEPTOR_S_RECOVERING) {
        /* TT_ACCEPTOR_QUIET_MS without a failure: the episode is over. */
        log_resumed(a, now - TT_ACCEPTOR_QUIET_MS);
        a->state = TT_ACCEPTOR_S_WATCHING;
    }
}

/* accept(2) failed with err (not a per-connection error): count it, start or continue
 * the episode, try the reserve, and stop watching for the backoff unless the reserve
 * served a connection. Either way the caller stops its batch: Linux takes the descriptor
 * before it looks at the backlog, so another accept would fail at once. */
static void accept_failed(struct tt_acceptor *a, int err)
{
    count(a->failures, 1);
    if (a->state == TT_ACCEPTOR_S_WATCHING) {
        a->episode_start_ms = uv_now(a->poll.loop);
        a->episode_failures = 0;
        a->episode_dropped = 0;
        a->backoff_ms = TT_ACCEPTOR_BACKOFF_MIN_MS;
        log_failed(a, err);
    } else if (a->accepted) {
        a->backoff_ms = TT_ACCEPTOR_BACKOFF_MIN_MS;
    } else if (a->backoff_ms < TT_ACCEPTOR_BACKOFF_MAX_MS) {
        a->backoff_ms *= 2;
        if (a->backoff_ms > TT_ACCEPTOR_BACKOFF_MAX_MS)
            a->backoff_ms = TT_ACCEPTOR_BACKOFF_MAX_MS;
    }
    a->accepted = false;
    a->episode_failures++;
    a->state = TT_ACCEPTOR_S_RECOVERING;
    if ((err == -EMFILE || err == -ENFILE) && use_reserve(a)) {
        /* Served on the reserve (the owner may have closed us meanwhile): keep watching;
         * if more connections wait, the next failure finds no reserve and pauses. */
        if (a->state != TT_ACCEPTOR_S_CLOSED)
            uv_timer_start(&a->timer, on_timer, TT_ACCEPTOR_QUIET_MS, 0);
        return;
    }
    a->state = TT_ACCEPTOR_S_PAUSED;
    uv_poll_stop(&a->poll);
    uv_timer_start(&a->timer, on_timer, a->backoff_ms, 0);
}

static void on_readable(uv_poll_t *poll, int status, int events)
{
    struct tt_acceptor *a = poll->data;

    (void)events;
    if (status < 0) {
        /* The poll itself failed (EBADF...): back off rather than spin on it. */
        accept_failed(a, status);
        return;
    }
    tt_acceptor_replenish(a);
    /* A batch, then the loop serves the rest of its work; the socket stays readable while
     * connections wait, so the next iteration comes back here. */
    for (int i = 0; i < TT_ACCEPTOR_BATCH; i++) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        int err = fd < 0 ? -errno : 0;

        if (fd >= 0) {
            a->accepted = true;
            a->on_accept(a, fd);
        } else if (err == -EAGAIN || err == -EWOULDBLOCK) {
            return;
        } else if (!is_per_connection(err)) {
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM or anything unexpected: never retry at once */
            accept_failed(a, err);
            return;
        }
        if (a->state == TT_ACCEPTOR_S_CLOSED)
            return;
    }
}

static void on_handle_closed(uv_handle_t *handle)
{
    struct tt_acceptor *a = handle->data;

    if (--a->pending_closes == 0 && a->on_closed != NULL)
        a->on_closed(a);
}

/* Starts accepting on fd (see acceptor.h). */
int tt_acceptor_start(struct tt_acceptor *a, uv_loop_t *loop, int fd)
{
    int r;

    a->fd = fd;
    a->reserve_fd = -1;
    a->state = TT_ACCEPTOR_S_CLOSED;
    a->backoff_ms = TT_ACCEPTOR_BACKOFF_MIN_MS;
    a->accepted = false;
    a->episode_start_ms = a->episode_failures = a->episode_dropped = 0;
    a->pending_closes = 0;
    r = uv_poll_init(loop, &a->poll, fd);
    if (r < 0) {
        close(fd);
        a->fd = -1;
        return r;
    }
    /* Neither call below fails on Unix once the poll handle exists (a timer needs
     * nothing; a valid event mask is all uv_poll_start checks). */
    uv_timer_init(loop, &a->timer);
    a->poll.data = a->timer.data = a;
    a->reserve_fd = open_reserve();
    a->state = TT_ACCEPTOR_S_WATCHING;
    uv_poll_start(&a->poll, UV_READABLE, on_readable);
    return 0;
}

/* Reopens the reserve if it is missing (see acceptor.h). */
void tt_acceptor_replenish(struct tt_acceptor *a)
{
    if (a->reserve_fd < 0 && a->state != TT_ACCEPTOR_S_CLOSED)
        a->reserve_fd = open_reserve();
}

/* Stops accepting and closes everything (see acceptor.h). */
void tt_acceptor_close(struct tt_acceptor *a)
{
    if (a->state == TT_ACCEPTOR_S_CLOSED)
        return;
    a->state = TT_ACCEPTOR_S_CLOSED;
    a->pending_closes = 2;
    /* libuv wants the poll handle stopped before its descriptor is closed. */
    uv_close((uv_handle_t *)&a->poll, on_handle_closed);
    uv_close((uv_handle_t *)&a->timer, on_handle_closed);
    close(a->fd);
    a->fd = -1;
    if (a->reserve_fd >= 0)
        close(a->reserve_fd);
    a->reserve_fd = -1;
}

/* True during a shortage episode (see acceptor.h). */
bool tt_acceptor_in_shortage(const struct tt_acceptor *a)
{
    return a->state == TT_ACCEPTOR_S_PAUSED || a->state == TT_ACCEPTOR_S_RECOVERING;
}
