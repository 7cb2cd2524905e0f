/* TLS termination on an event loop (tls_acceptor.h).
 *
 * Everything below runs on the acceptor's loop thread except the functions marked "any
 * thread": cp_tls_acceptor_mark_called() looks a connection up by peer address in a hash
 * under `lock` and sets its `called` flag (an atomic the loop reads), and
 * cp_tls_acceptor_sweep()/_free() post a request through a uv_async_t.
 *
 * Data path per connection, as conn.c does it for the sidecar: ciphertext is read
 * straight into the TLS engine's input buffer (tt_tls_input_tail); decrypted plaintext
 * goes to the socketpair end, and plaintext from it is encrypted into the engine's
 * output, each written with uv_try_write first and the rest copied into a uv_write. A
 * side stops reading while the other side has more than CP_TLS_QUEUE_MAX bytes queued.
 * No SSL_ calls here. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <uv.h>

#include "core/buf.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/spiffe.h"
#include "core/util.h"
#include "net/acceptor.h"
#include "net/listener.h"
#include "tls/identity.h"
#include "tls_acceptor.h"

#define CP_TLS_QUEUE_MAX       (256 * 1024) /* bytes queued on one side before the other pauses */
#define CP_TLS_READ_MAX        16384        /* plaintext per read/decrypt (one TLS record) */
#define CP_TLS_BUCKETS         4096         /* hash buckets, for sources and for peer addresses */
#define CP_TLS_HOUSEKEEPING_MS 1000

/* The shed-episode counters, in the order of reason_names. */
enum reason {
    R_PER_SOURCE,
    R_LIMIT,
    R_EVICTED,
    R_HANDSHAKE_TIMEOUT,
    R_FIRST_CALL_TIMEOUT,
    R_BRIDGE_FAILED, /* no descriptors (or memory) for the socketpair of a verified peer */
    R_COUNT,
};
static const char *const reason_names[R_COUNT] = {
    "conn_limit_per_source", "conn_limit",         "conn_evicted",
    "handshake_timeout",     "first_call_timeout", "bridge_failed",
};

enum tconn_state {
    TCONN_S_HANDSHAKE, /* TLS handshake, under the handshake deadline */
    TCONN_S_RELAY,     /* verified and bridged; under the first-call deadline until called */
    TCONN_S_CLOSING,   /* unlinked; handles closing (after a FIN when graceful) */
};

/* Connections from one source IP address. */
struct source {
    struct source *next;
    unsigned n;
    char ip[64];
};

/* One connection. Its memory goes in the last handle's close callback. */
struct tconn {
    struct cp_tls_acceptor *a;
    struct tconn *prev, *next; /* a->conns, oldest first */
    struct tconn *hnext;       /* a->by_addr chain, under a->lock */
    struct source *src;
    uv_tcp_t net;
    uv_pipe_t app;
    uv_timer_t timer;
    uv_shutdown_t net_shutdown, app_shutdown;
    struct tt_tls *tls;
    enum tconn_state state;
    bool called;   /* atomic: set by cp_tls_acceptor_mark_called() from any thread */
    bool app_init; /* `app` is a handle */
    bool net_reading, app_reading;
    int handles; /* handles not yet closed */
    char peer_addr[64];
};

/* One write that the kernel did not take at once. */
struct wreq {
    uv_write_t req;
    struct tconn *c;
    size_t len;
    char data[];
};

struct cp_tls_acceptor {
    struct cp_tls_acceptor_opts opts;
    char name[32];
    int port;
    uv_loop_t loop;
    pthread_t thread;
    struct tt_acceptor acc;
    uv_async_t async;
    uv_timer_t housekeeping;
    bool stop_requested;  /* atomic */
    bool sweep_requested; /* atomic */

    struct tconn *oldest, *newest;
    struct source *sources[CP_TLS_BUCKETS];
    unsigned n_conns, n_handshaking; /* written by the loop, read anywhere */

    pthread_mutex_t lock; /* guards by_addr */
    struct tconn *by_addr[CP_TLS_BUCKETS];

    /* tt_acceptor's counters, and how much of them opts.count has been told. */
    uint64_t accept_failures, accept_dropped;
    uint64_t told_failures, told_dropped;

    /* The current shedding episode. */
    bool shedding;
    uint64_t shed_start_ms, shed_last_ms;
    uint64_t shed[R_COUNT];

    uint8_t scratch[CP_TLS_READ_MAX]; /* plaintext being moved; used within one callback */
};

static void conn_close(struct tconn *c, bool graceful);
static void relay_update(struct tconn *c);

static unsigned hash_str(const char *s)
{
    unsigned h = 2166136261u; /* FNV-1a */

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % CP_TLS_BUCKETS;
}

static void set_load(unsigned *field, unsigned v)
{
    __atomic_store_n(field, v, __ATOMIC_RELAXED);
}

/* ---- counting and the shedding episode ----------------------------------------------- */

static void count(struct cp_tls_acceptor *a, const char *reason)
{
    char full[96];

    if (a->opts.count == NULL)
        return;
    snprintf(full, sizeof(full), "%s_%s", a->name, reason);
    a->opts.count(a->opts.ud, full);
}

/* One connection shed for `r`: counted; the first of an episode is logged. */
static void shed(struct cp_tls_acceptor *a, enum reason r, const char *peer)
{
    uint64_t now = uv_now(&a->loop);

    count(a, reason_names[r]);
    a->shed[r]++;
    a->shed_last_ms = now;
    if (a->shedding)
        return;
    a->shedding = true;
    a->shed_start_ms = now;
    tt_log(TT_LOG_WARN, "connections_shed", TT_LS("listener", a->name),
           TT_LS("reason", reason_names[r]), TT_LS("peer", peer), TT_LU("connections", a->n_conns),
           TT_LU("max_connections", a->opts.max_conns),
           TT_LU("max_per_source", a->opts.max_per_source),
           TT_LS("detail", "further connections shed are counted, not logged, until "
                           "connections_shed_ended"));
}

/* Every second: tell opts.count about accept failures, and end a quiet episode. */
static void on_housekeeping(uv_timer_t *t)
{
    struct cp_tls_acceptor *a = t->data;
    uint64_t failures = __atomic_load_n(&a->accept_failures, __ATOMIC_RELAXED);
    uint64_t dropped = __atomic_load_n(&a->accept_dropped, __ATOMIC_RELAXED);

    for (; a->told_failures < failures; a->told_failures++)
        count(a, "accept_failed");
    for (; a->told_dropped < dropped; a->told_dropped++)
        count(a, "accept_dropped");
    if (!a->shedding || uv_now(&a->loop) - a->shed_last_ms < CP_TLS_QUIET_MS)
        return;
    tt_log(TT_LOG_INFO, "connections_shed_ended", TT_LS("listener", a->name),
           TT_LU(reason_names[R_PER_SOURCE], a->shed[R_PER_SOURCE]),
           TT_LU(reason_names[R_LIMIT], a->shed[R_LIMIT]),
           TT_LU(reason_names[R_EVICTED], a->shed[R_EVICTED]),
           TT_LU(reason_names[R_HANDSHAKE_TIMEOUT], a->shed[R_HANDSHAKE_TIMEOUT]),
           TT_LU(reason_names[R_FIRST_CALL_TIMEOUT], a->shed[R_FIRST_CALL_TIMEOUT]),
           TT_LU(reason_names[R_BRIDGE_FAILED], a->shed[R_BRIDGE_FAILED]),
           TT_LU("duration_ms", a->shed_last_ms - a->shed_start_ms),
           TT_LU("connections", a->n_conns));
    a->shedding = false;
    memset(a->shed, 0, sizeof(a->shed));
}

/* ---- the connection table ------------------------------------------------------------ */

/* The source entry for ip, or NULL. */
static struct source *source_find(struct cp_tls_acceptor *a, const char *ip)
{
    for (struct source *s = a->sources[hash_str(ip)]; s != NULL; s = s->next)
        if (strcmp(s->ip, ip) == 0)
            return s;
    return NULL;
}

/* The source entry for ip, created with n == 0 when there is none; NULL when out of
 * memory. */
static struct source *source_get(struct cp_tls_acceptor *a, const char *ip)
{
    struct source *s = source_find(a, ip);

    if (s != NULL)
        return s;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    snprintf(s->ip, sizeof(s->ip), "%s", ip);
    s->next = a->sources[hash_str(ip)];
    a->sources[hash_str(ip)] = s;
    return s;
}

/* Frees src once no connection comes from it. */
static void source_forget_empty(struct cp_tls_acceptor *a, struct source *src)
{
    struct source **pp;

    if (src->n > 0)
        return;
    for (pp = &a->sources[hash_str(src->ip)]; *pp != src; pp = &(*pp)->next)
        ;
    *pp = src->next;
    free(src);
}

/* Links c as the newest connection and makes it findable by address. */
static void conn_link(struct cp_tls_acceptor *a, struct tconn *c)
{
    unsigned h = hash_str(c->peer_addr);

    c->prev = a->newest;
    if (a->newest != NULL)
        a->newest->next = c;
    else
        a->oldest = c;
    a->newest = c;
    c->src->n++;
    set_load(&a->n_conns, a->n_conns + 1);
    set_load(&a->n_handshaking, a->n_handshaking + 1);
    pthread_mutex_lock(&a->lock);
    c->hnext = a->by_addr[h];
    a->by_addr[h] = c;
    pthread_mutex_unlock(&a->lock);
}

static void conn_unlink(struct cp_tls_acceptor *a, struct tconn *c)
{
    struct tconn **pp;

    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        a->oldest = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        a->newest = c->prev;
    set_load(&a->n_conns, a->n_conns - 1);
    if (c->state == TCONN_S_HANDSHAKE)
        set_load(&a->n_handshaking, a->n_handshaking - 1);
    c->src->n--;
    source_forget_empty(a, c->src);
    pthread_mutex_lock(&a->lock);
    for (pp = &a->by_addr[hash_str(c->peer_addr)]; *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == c) {
            *pp = c->hnext;
            break;
        }
    }
    pthread_mutex_unlock(&a->lock);
}

/* The oldest connection with no call marked, or NULL. */
static struct tconn *oldest_uncalled(struct cp_tls_acceptor *a)
{
    for (struct tconn *c = a->oldest; c != NULL; c = c->next)
        if (!__atomic_load_n(&c->called, __ATOMIC_ACQUIRE))
            return c;
    return NULL;
}

/* ---- writing ------------------------------------------------------------------------- */

static size_t queued(uv_stream_t *s)
{
    return uv_stream_get_write_queue_size(s);
}

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = tt_container_of(req, struct wreq, req);
    struct tconn *c = w->c;

    free(w);
    if (c->state == TCONN_S_CLOSING)
        return;
    if (status < 0) {
        conn_close(c, false);
        return;
    }
    relay_update(c);
}

/* Sends data[0..len) on stream s: straight to the socket when nothing waits there, the
 * rest copied into a write request. Returns 0 or <0 (the caller closes). */
static int send_bytes(struct tconn *c, uv_stream_t *s, const void *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    struct wreq *w;
    int r = 0;

    if (len == 0)
        return 0;
    if (queued(s) == 0) {
        r = uv_try_write(s, &b, 1);
        if (r < 0 && r != UV_EAGAIN)
            return r;
        if (r < 0)
            r = 0;
        if ((size_t)r == len)
            return 0;
    }
    w = malloc(sizeof(*w) + len - (size_t)r);
    if (w == NULL)
        return -ENOMEM;
    w->c = c;
    w->len = len - (size_t)r;
    memcpy(w->data, (const char *)data + r, w->len);
    b = uv_buf_init(w->data, (unsigned)w->len);
    r = uv_write(&w->req, s, &b, 1, on_write);
    if (r < 0)
        free(w);
    return r;
}

/* Moves the TLS engine's pending ciphertext to the network socket. */
static int tls_flush(struct tconn *c)
{
    const uint8_t *data;
    size_t n = tt_tls_pending(c->tls, &data);
    int r = send_bytes(c, (uv_stream_t *)&c->net, data, n);

    if (r == 0)
        tt_tls_consume(c->tls, n);
    return r;
}

/* ---- relaying ------------------------------------------------------------------------ */

/* Decrypts what the engine holds into the plaintext end while that end has room. Returns
 * 0, 1 after the peer's close_notify, or <0. */
static int tls_pump(struct tconn *c)
{
    struct cp_tls_acceptor *a = c->a;
    int r;

    while (queued((uv_stream_t *)&c->app) < CP_TLS_QUEUE_MAX) {
        r = tt_tls_read(c->tls, a->scratch, sizeof(a->scratch));
        if (r == 0)
            break;
        if (r == TT_TLS_EOF)
            return 1;
        if (r < 0)
            return r;
        r = send_bytes(c, (uv_stream_t *)&c->app, a->scratch, (size_t)r);
        if (r < 0)
            return r;
    }
    r = tls_flush(c); /* a KeyUpdate answer, an alert */
    return r < 0 ? r : 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_net_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_app_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void set_reading(struct tconn *c, uv_stream_t *s, bool want)
{
    bool net = s == (uv_stream_t *)&c->net;
    bool *reading = net ? &c->net_reading : &c->app_reading;
    int r = 0;

    if (want == *reading)
        return;
    if (want)
        r = uv_read_start(s, on_alloc, net ? on_net_read : on_app_read);
    else
        uv_read_stop(s);
    if (r < 0) {
        conn_close(c, false);
        return;
    }
    *reading = want;
}

/* Reading follows the queues: ciphertext while the plaintext end has room (and the
 * engine's input is at most half a slab), plaintext while the network side has room. */
static void relay_update(struct tconn *c)
{
    if (c->state == TCONN_S_HANDSHAKE) {
        set_reading(c, (uv_stream_t *)&c->net, true);
        return;
    }
    if (c->state != TCONN_S_RELAY)
        return;
    if (tt_tls_input_len(c->tls) > 0 && queued((uv_stream_t *)&c->app) < CP_TLS_QUEUE_MAX) {
        int r = tls_pump(c);

        if (r != 0) {
            conn_close(c, r > 0);
            return;
        }
    }
    set_reading(c, (uv_stream_t *)&c->net,
                queued((uv_stream_t *)&c->app) < CP_TLS_QUEUE_MAX &&
                    tt_tls_input_len(c->tls) <= TT_BUF_SLAB / 2);
    if (c->state == TCONN_S_RELAY)
        set_reading(c, (uv_stream_t *)&c->app, queued((uv_stream_t *)&c->net) < CP_TLS_QUEUE_MAX);
}

static void on_timer(uv_timer_t *t);

/* The peer is verified: bridge it to a socketpair and hand the other end over. */
static void conn_established(struct tconn *c)
{
    struct cp_tls_acceptor *a = c->a;
    const char *peer_id = tt_tls_peer_id(c->tls);
    int sv[2], r;

    r = socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
    if (r < 0) {
        /* Counted and logged once per episode, like the other shed connections: a flood
         * that takes every descriptor would otherwise write one line per connection. */
        shed(a, R_BRIDGE_FAILED, c->peer_addr);
        conn_close(c, false);
        return;
    }
    uv_pipe_init(&a->loop, &c->app, 0);
    c->app.data = c;
    c->app_init = true;
    c->handles++;
    r = uv_pipe_open(&c->app, sv[0]);
    if (r < 0) {
        close(sv[0]);
        close(sv[1]);
        conn_close(c, false);
        return;
    }
    c->state = TCONN_S_RELAY;
    set_load(&a->n_handshaking, a->n_handshaking - 1);
    uv_timer_stop(&c->timer);
    if (a->opts.first_call_ms > 0)
        uv_timer_start(&c->timer, on_timer, a->opts.first_call_ms, 0);
    a->opts.on_accept(a->opts.ud, sv[1], peer_id[0] != '\0' ? peer_id : NULL,
                      tt_tls_peer_serial(c->tls), c->peer_addr);
    relay_update(c); /* application data that came with the handshake */
}

/* Drives the handshake after new input. */
static void handshake_progress(struct tconn *c)
{
    int r = tt_tls_handshake(c->tls);
    int fr = tls_flush(c);

    if (r < 0) {
        tt_log(TT_LOG_WARN, "handshake_failed", TT_LS("listener", c->a->name),
               TT_LS("peer", c->peer_addr), TT_LS("error", tt_strerror(r)),
               TT_LS("peer_id", tt_tls_peer_id(c->tls)),
               TT_LS("serial", tt_tls_peer_serial(c->tls)));
        conn_close(c, true); /* after the alert */
        return;
    }
    if (fr < 0) {
        conn_close(c, false);
        return;
    }
    if (r == 1)
        conn_established(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct tconn *c = h->data;
    size_t avail = 0;
    uint8_t *p;

    (void)suggested;
    if (h == (uv_handle_t *)&c->net) {
        p = tt_tls_input_tail(c->tls, &avail);
        *buf = uv_buf_init((char *)p, p != NULL ? (unsigned)avail : 0);
    } else {
        *buf = uv_buf_init((char *)c->a->scratch, sizeof(c->a->scratch));
    }
}

static void on_net_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tconn *c = s->data;

    (void)buf;
    if (c->state == TCONN_S_CLOSING)
        return;
    tt_tls_input_commit(c->tls, nread > 0 ? (size_t)nread : 0);
    if (nread < 0) {
        /* The client left (or reset): what it sent before is relayed, then both close. */
        if (c->state == TCONN_S_RELAY && tls_pump(c) < 0) {
            conn_close(c, false);
            return;
        }
        conn_close(c, nread == UV_EOF);
        return;
    }
    if (nread == 0)
        return;
    if (c->state == TCONN_S_HANDSHAKE)
        handshake_progress(c);
    else
        relay_update(c);
}

static void on_app_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct tconn *c = s->data;
    int r;

    if (c->state != TCONN_S_RELAY)
        return;
    if (nread < 0) {
        /* The owner closed its end: our close_notify, then FIN after what is queued. */
        if (tt_tls_close_notify(c->tls) < 0 || tls_flush(c) < 0) {
            conn_close(c, false);
            return;
        }
        conn_close(c, true);
        return;
    }
    if (nread == 0)
        return;
    r = tt_tls_write(c->tls, buf->base, (size_t)nread);
    if (r == 0)
        r = tls_flush(c);
    if (r < 0) {
        conn_close(c, false);
        return;
    }
    relay_update(c);
}

/* ---- deadlines and closing ----------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    struct tconn *c = h->data;

    if (--c->handles > 0)
        return;
    tt_tls_free(c->tls);
    free(c);
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, on_handle_closed);
}

static void on_timer(uv_timer_t *t)
{
    struct tconn *c = t->data;
    struct cp_tls_acceptor *a = c->a;

    switch (c->state) {
    case TCONN_S_HANDSHAKE:
        shed(a, R_HANDSHAKE_TIMEOUT, c->peer_addr);
        conn_close(c, false);
        break;
    case TCONN_S_RELAY:
        if (__atomic_load_n(&c->called, __ATOMIC_ACQUIRE))
            break;
        shed(a, R_FIRST_CALL_TIMEOUT, c->peer_addr);
        conn_close(c, false);
        break;
    case TCONN_S_CLOSING:
        /* A graceful close took too long (a peer that reads nothing): end it now. */
        close_handle((uv_handle_t *)&c->net);
        if (c->app_init)
            close_handle((uv_handle_t *)&c->app);
        close_handle((uv_handle_t *)&c->timer);
        break;
    }
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct tconn *c = req->handle->data;

    (void)status;
    close_handle((uv_handle_t *)req->handle);
    if (uv_is_closing((uv_handle_t *)&c->net) &&
        (!c->app_init || uv_is_closing((uv_handle_t *)&c->app)))
        close_handle((uv_handle_t *)&c->timer);
}

/* Ends the connection: unlinked at once; with `graceful` each side gets a FIN after what
 * is queued for it (at most CP_TLS_CLOSE_WAIT_MS), else the network side is reset. */
static void conn_close(struct tconn *c, bool graceful)
{
    struct cp_tls_acceptor *a = c->a;

    if (c->state == TCONN_S_CLOSING)
        return;
    conn_unlink(a, c);
    c->state = TCONN_S_CLOSING;
    uv_read_stop((uv_stream_t *)&c->net);
    if (c->app_init)
        uv_read_stop((uv_stream_t *)&c->app);
    if (graceful) {
        bool pending = false;

        if (uv_shutdown(&c->net_shutdown, (uv_stream_t *)&c->net, on_shutdown) == 0)
            pending = true;
        else
            close_handle((uv_handle_t *)&c->net);
        if (c->app_init) {
            if (uv_shutdown(&c->app_shutdown, (uv_stream_t *)&c->app, on_shutdown) == 0)
                pending = true;
            else
                close_handle((uv_handle_t *)&c->app);
        }
        if (pending) {
            /* The timer now bounds the close (on_timer, TCONN_S_CLOSING) */
            uv_timer_start(&c->timer, on_timer, CP_TLS_CLOSE_WAIT_MS, 0);
            return;
        }
    } else if (uv_tcp_close_reset(&c->net, on_handle_closed) < 0) {
        close_handle((uv_handle_t *)&c->net);
    }
    if (c->app_init)
        close_handle((uv_handle_t *)&c->app);
    close_handle((uv_handle_t *)&c->timer);
}

/* ---- accepting ----------------------------------------------------------------------- */

/* Resets and closes a socket that is not admitted. */
static void refuse_fd(int fd)
{
    struct linger reset = {.l_onoff = 1, .l_linger = 0};

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
    close(fd);
}

/* The peer's "IP:PORT" and "IP" of a connected socket. Returns 0 or -errno. */
static int peer_names(int fd, char *addr, size_t addrlen, char *ip, size_t iplen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof(ss);
    char *colon;

    if (getpeername(fd, (struct sockaddr *)&ss, &sslen) < 0)
        return -errno;
    tt_sockaddr_format((struct sockaddr *)&ss, addr, addrlen);
    snprintf(ip, iplen, "%s", addr);
    colon = strrchr(ip, ':'); /* "1.2.3.4:80" -> "1.2.3.4", "[::1]:80" -> "[::1]" */
    if (colon != NULL)
        *colon = '\0';
    return 0;
}

/* Admits one accepted connection or sheds it (see the bounds in tls_acceptor.h). */
static void on_accept(struct tt_acceptor *acc, int fd)
{
    struct cp_tls_acceptor *a = acc->data;
    struct tt_identity *id;
    struct source *src;
    struct tconn *c, *victim;
    char addr[64], ip[64], err[512] = "";

    if (peer_names(fd, addr, sizeof(addr), ip, sizeof(ip)) < 0) {
        close(fd); /* gone already */
        return;
    }
    src = source_find(a, ip);
    if (src != NULL && src->n >= a->opts.max_per_source) {
        shed(a, R_PER_SOURCE, addr);
        refuse_fd(fd);
        return;
    }
    if (a->n_conns >= a->opts.max_conns) {
        victim = oldest_uncalled(a);
        if (victim == NULL) {
            shed(a, R_LIMIT, addr);
            refuse_fd(fd);
            return;
        }
        shed(a, R_EVICTED, victim->peer_addr);
        conn_close(victim, false); /* may free `src`: looked up again below */
    }
    src = source_get(a, ip);
    if (src == NULL) {
        refuse_fd(fd);
        return;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        goto err_refuse;
    c->a = a;
    c->src = src;
    snprintf(c->peer_addr, sizeof(c->peer_addr), "%s", addr);
    id = a->opts.identity(a->opts.ud, err, sizeof(err));
    if (id == NULL) {
        tt_log(TT_LOG_ERROR, "serving_certificate_failed", TT_LS("listener", a->name),
               TT_LS("error", err));
        goto err_free;
    }
    c->tls = tt_tls_new(id, a->opts.role, NULL);
    tt_identity_unref(id);
    if (c->tls == NULL || (a->opts.alpn != NULL && tt_tls_set_alpn(c->tls, a->opts.alpn) < 0))
        goto err_free;
    uv_tcp_init(&a->loop, &c->net);
    uv_timer_init(&a->loop, &c->timer);
    c->net.data = c->timer.data = c;
    c->handles = 2;
    c->state = TCONN_S_HANDSHAKE;
    conn_link(a, c); /* counts it in src */
    if (uv_tcp_open(&c->net, fd) < 0) {
        close(fd);
        conn_close(c, false);
        return;
    }
    uv_tcp_nodelay(&c->net, 1);
    uv_timer_start(&c->timer, on_timer, a->opts.handshake_ms, 0);
    relay_update(c);
    return;

err_free:
    tt_tls_free(c->tls);
    free(c);
err_refuse:
    source_forget_empty(a, src);
    refuse_fd(fd);
}

/* ---- the loop thread ------------------------------------------------------------------- */

static void on_loop_handle_closed(uv_handle_t *h)
{
}

/* At the stop: closes the handles of connections still closing gracefully. */
static void close_leftover(uv_handle_t *h, void *arg)
{
    struct cp_tls_acceptor *a = arg;

    if (h->data != a && h->data != &a->acc)
        close_handle(h);
}

/* A request from another thread: a revocation sweep, or the stop. */
static void on_async(uv_async_t *as)
{
    struct cp_tls_acceptor *a = as->data;

    if (__atomic_exchange_n(&a->sweep_requested, false, __ATOMIC_ACQ_REL) &&
        a->opts.revoked != NULL) {
        for (struct tconn *c = a->oldest, *next; c != NULL; c = next) {
            const char *serial = c->state == TCONN_S_RELAY ? tt_tls_peer_serial(c->tls) : "";

            next = c->next;
            if (serial[0] == '\0' || !a->opts.revoked(a->opts.ud, serial))
                continue;
            tt_log(TT_LOG_INFO, "revoked_connection_closed", TT_LS("listener", a->name),
                   TT_LS("peer", c->peer_addr), TT_LS("peer_id", tt_tls_peer_id(c->tls)),
                   TT_LS("serial", serial));
            /* Closing `c` may have closed nothing else: `next` stays valid. */
            conn_close(c, false);
        }
    }
    if (__atomic_load_n(&a->stop_requested, __ATOMIC_ACQUIRE)) {
        tt_acceptor_close(&a->acc);
        while (a->oldest != NULL)
            conn_close(a->oldest, false);
        uv_walk(&a->loop, close_leftover, a);
        uv_close((uv_handle_t *)&a->housekeeping, on_loop_handle_closed);
        uv_close((uv_handle_t *)&a->async, on_loop_handle_closed);
    }
}

static void *loop_main(void *arg)
{
    struct cp_tls_acceptor *a = arg;

    uv_run(&a->loop, UV_RUN_DEFAULT);
    tt_buf_pool_drain(); /* this thread ends: return its cached slabs */
    return NULL;
}

/* Binds, listens and starts the loop thread (see tls_acceptor.h). */
struct cp_tls_acceptor *cp_tls_acceptor_new(const struct cp_tls_acceptor_opts *opts, char *err,
                                            size_t errlen)
{
    struct cp_tls_acceptor *a;
    struct tt_addr addr = *opts->listen;
    int fd = -1, r;

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
        a->opts.handshake_ms = CP_TLS_HANDSHAKE_MS;
    if (a->opts.max_conns == 0)
        a->opts.max_conns = CP_TLS_MAX_CONNS;
    if (a->opts.max_per_source == 0 || a->opts.max_per_source > a->opts.max_conns)
        a->opts.max_per_source = a->opts.max_conns;
    snprintf(a->name, sizeof(a->name), "%s", opts->name ? opts->name : "tls");
    a->opts.name = a->name;
    a->opts.flag = NULL; /* not kept: the caller's string */
    a->opts.listen = NULL;
    pthread_mutex_init(&a->lock, NULL);

    r = tt_listener_bind(&addr, true, &fd);
    if (r == 0 && listen(fd, 1024) < 0)
        r = -errno;
    if (r < 0) {
        snprintf(err, errlen, "%s %s: %s", opts->flag ? opts->flag : "listen", opts->listen->text,
                 tt_strerror(r));
        goto err_close;
    }
    a->port = tt_addr_port(&addr);
    r = uv_loop_init(&a->loop);
    if (r < 0) {
        snprintf(err, errlen, "cannot start the %s loop: %s", a->name, uv_strerror(r));
        goto err_close;
    }
    a->acc.name = a->name;
    a->acc.worker = -1;
    a->acc.shortage = TT_ACCEPTOR_DROP;
    a->acc.on_accept = on_accept;
    a->acc.data = a;
    a->acc.failures = &a->accept_failures;
    a->acc.dropped = &a->accept_dropped;
    r = tt_acceptor_start(&a->acc, &a->loop, fd); /* owns fd from here */
    fd = -1;
    if (r < 0) {
        snprintf(err, errlen, "cannot watch the %s socket: %s", a->name, uv_strerror(r));
        goto err_loop;
    }
    uv_timer_init(&a->loop, &a->housekeeping);
    a->housekeeping.data = a;
    uv_timer_start(&a->housekeeping, on_housekeeping, CP_TLS_HOUSEKEEPING_MS,
                   CP_TLS_HOUSEKEEPING_MS);
    uv_async_init(&a->loop, &a->async, on_async);
    a->async.data = a;
    if (pthread_create(&a->thread, NULL, loop_main, a) != 0) {
        snprintf(err, errlen, "cannot start the %s loop thread", a->name);
        /* Close the handles on this thread instead. */
        __atomic_store_n(&a->stop_requested, true, __ATOMIC_RELEASE);
        on_async(&a->async);
        uv_run(&a->loop, UV_RUN_DEFAULT);
        goto err_loop;
    }
    return a;

err_loop:
    uv_loop_close(&a->loop);
err_close:
    if (fd >= 0)
        close(fd);
    pthread_mutex_destroy(&a->lock);
    free(a);
    return NULL;
}

/* The bound port. */
int cp_tls_acceptor_port(const struct cp_tls_acceptor *a)
{
    return a->port;
}

/* Marks the connection from peer_addr as having a call (any thread). */
void cp_tls_acceptor_mark_called(struct cp_tls_acceptor *a, const char *peer_addr)
{
    if (a == NULL || peer_addr == NULL)
        return;
    pthread_mutex_lock(&a->lock);
    for (struct tconn *c = a->by_addr[hash_str(peer_addr)]; c != NULL; c = c->hnext) {
        if (strcmp(c->peer_addr, peer_addr) != 0)
            continue;
        __atomic_store_n(&c->called, true, __ATOMIC_RELEASE);
        break;
    }
    pthread_mutex_unlock(&a->lock);
}

/* Requests a revocation sweep (any thread). */
void cp_tls_acceptor_sweep(struct cp_tls_acceptor *a)
{
    if (a == NULL)
        return;
    __atomic_store_n(&a->sweep_requested, true, __ATOMIC_RELEASE);
    uv_async_send(&a->async);
}

/* What the acceptor holds (any thread). */
void cp_tls_acceptor_load(const struct cp_tls_acceptor *a, struct cp_tls_acceptor_load *out)
{
    out->conns = __atomic_load_n(&a->n_conns, __ATOMIC_RELAXED);
    out->handshaking = __atomic_load_n(&a->n_handshaking, __ATOMIC_RELAXED);
}

/* Stops the loop thread and frees the acceptor. */
void cp_tls_acceptor_free(struct cp_tls_acceptor *a)
{
    if (a == NULL)
        return;
    __atomic_store_n(&a->stop_requested, true, __ATOMIC_RELEASE);
    uv_async_send(&a->async);
    pthread_join(a->thread, NULL);
    uv_loop_close(&a->loop);
    for (size_t i = 0; i < CP_TLS_BUCKETS; i++) {
        while (a->sources[i] != NULL) { /* none is left once every connection closed */
            struct source *s = a->sources[i];

            a->sources[i] = s->next;
            free(s);
        }
    }
    pthread_mutex_destroy(&a->lock);
    free(a);
}
