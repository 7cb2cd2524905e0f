/* Idle keep-alive connections to the workload (idleconns.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "net/idleconns.h"

/* A handle from tt_idle_conn_new, with what its closer asked to run before it is freed. */
struct idle_handle {
    uv_tcp_t tcp; /* first: the handle's address is the block's */
    uv_close_cb on_closed;
};

uv_tcp_t *tt_idle_conn_new(uv_loop_t *loop)
{
    struct idle_handle *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return NULL;
    (void)uv_tcp_init(loop, &h->tcp); /* cannot fail without a socket to make */
    return &h->tcp;
}

static void on_idle_handle_closed(uv_handle_t *handle)
{
    struct idle_handle *h = (struct idle_handle *)handle;

    if (h->on_closed != NULL)
        h->on_closed(handle);
    free(h);
}

void tt_idle_conn_close(uv_tcp_t *tcp, bool reset, uv_close_cb cb)
{
    struct idle_handle *h = (struct idle_handle *)tcp;

    h->on_closed = cb;
    if (!reset || uv_tcp_close_reset(tcp, on_idle_handle_closed) < 0)
        uv_close((uv_handle_t *)tcp, on_idle_handle_closed);
}

/* Removes entry i, keeping the others in the order they were parked (oldest first). */
static void remove_at(struct tt_idle_conns *c, size_t i)
{
    c->n--;
    memmove(&c->e[i], &c->e[i + 1], (c->n - i) * sizeof(c->e[0]));
}

/* Removes entry i and closes its handle. */
static void close_at(struct tt_idle_conns *c, size_t i)
{
    uv_tcp_t *tcp = c->e[i].tcp;

    remove_at(c, i);
    tt_idle_conn_close(tcp, false, NULL);
}

/* Parks tcp (idleconns.h): appended, so that the entries stay in the order they were
 * parked and the newest of a target is the last one. */
void tt_idle_conns_put(struct tt_idle_conns *c, const struct tt_addr *target, uv_tcp_t *tcp,
                       uint64_t now_ms)
{
    struct tt_addr_key key;

    tcp->data = NULL;
    memset(&key, 0, sizeof(key));
    if (!tt_addr_key_of((const struct sockaddr *)&target->ss, &key)) {
        tt_idle_conn_close(tcp, false, NULL);
        return;
    }
    if (c->n == TT_IDLE_CONNS_MAX)
        close_at(c, 0); /* the oldest */
    c->e[c->n++] = (struct tt_idle_conn){key, tcp, now_ms};
}

/* Whether the peer of tcp has neither closed nor sent anything since its last read (what
 * the loop has not delivered yet is seen here). */
static bool still_idle(uv_tcp_t *tcp)
{
    uv_os_fd_t fd;
    char b;

    if (uv_fileno((uv_handle_t *)tcp, &fd) != 0)
        return false;
    ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Takes a parked handle to target (idleconns.h). */
uv_tcp_t *tt_idle_conns_take(struct tt_idle_conns *c, const struct tt_addr *target, uint64_t now_ms)
{
    struct tt_addr_key key;

    memset(&key, 0, sizeof(key));
    if (!tt_addr_key_of((const struct sockaddr *)&target->ss, &key))
        return NULL;
    /* Newest first: from the end (the entries are in parking order). */
    for (size_t i = c->n; i-- > 0;) {
        if (memcmp(&c->e[i].key, &key, sizeof(key)) != 0)
            continue;
        uv_tcp_t *tcp = c->e[i].tcp;
        if (now_ms - c->e[i].since_ms < TT_IDLE_CONN_MS && still_idle(tcp)) {
            remove_at(c, i);
            return tcp;
        }
        close_at(c, i); /* the entries after i moved down: i - 1 is the next older */
    }
    return NULL;
}

/* A parked handle's peer closed it or spoke (idleconns.h). */
void tt_idle_conns_drop(struct tt_idle_conns *c, uv_tcp_t *tcp)
{
    for (size_t i = 0; i < c->n; i++) {
        if (c->e[i].tcp == tcp) {
            close_at(c, i);
            return;
        }
    }
}

/* Closes every parked handle (idleconns.h). */
void tt_idle_conns_close_all(struct tt_idle_conns *c)
{
    while (c->n > 0)
        close_at(c, c->n - 1);
}
