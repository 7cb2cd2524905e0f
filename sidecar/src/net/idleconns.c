/* Idle keep-alive connections to the workload (idleconns.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "net/idleconns.h"

/* A handle from tt_idle_conn_new, with what its closer asked to run before it is freed
 * and, while it is parked, its entry in the cache. */
struct tt_idle_conn {
    uv_tcp_t tcp; /* first: the handle's address is the block's */
    uv_close_cb on_closed;
    bool parked;
    struct tt_addr_key key;
    uint64_t since_ms;                  /* when it was parked */
    struct tt_idle_conn *older, *newer; /* the cache's list, in parking order */
};

void tt_idle_conns_init(struct tt_idle_conns *c, size_t max)
{
    memset(c, 0, sizeof(*c));
    c->max = max > 0 ? max : 1;
}

uv_tcp_t *tt_idle_conn_new(uv_loop_t *loop)
{
    struct tt_idle_conn *h = calloc(1, sizeof(*h));

    if (h == NULL)
        return NULL;
    (void)uv_tcp_init(loop, &h->tcp); /* cannot fail without a socket to make */
    return &h->tcp;
}

static void on_idle_handle_closed(uv_handle_t *handle)
{
    struct tt_idle_conn *h = (struct tt_idle_conn *)handle;

    if (h->on_closed != NULL)
        h->on_closed(handle);
    free(h);
}

void tt_idle_conn_close(uv_tcp_t *tcp, bool reset, uv_close_cb cb)
{
    struct tt_idle_conn *h = (struct tt_idle_conn *)tcp;

    h->on_closed = cb;
    if (!reset || uv_tcp_close_reset(tcp, on_idle_handle_closed) < 0)
        uv_close((uv_handle_t *)tcp, on_idle_handle_closed);
}

/* Takes h off the cache's list. */
static void unlink_entry(struct tt_idle_conns *c, struct tt_idle_conn *h)
{
    if (h->older != NULL)
        h->older->newer = h->newer;
    else
        c->oldest = h->newer;
    if (h->newer != NULL)
        h->newer->older = h->older;
    else
        c->newest = h->older;
    h->older = h->newer = NULL;
    h->parked = false;
    c->n--;
}

/* Takes h off the list and closes its handle. */
static void close_entry(struct tt_idle_conns *c, struct tt_idle_conn *h)
{
    unlink_entry(c, h);
    tt_idle_conn_close(&h->tcp, false, NULL);
}

/* Closes the entries parked TT_IDLE_CONN_MS ago or longer: the oldest end of the list. A
 * clock behind an entry's (it should not be) expires nothing. */
static void expire(struct tt_idle_conns *c, uint64_t now_ms)
{
    while (c->oldest != NULL && now_ms >= c->oldest->since_ms &&
           now_ms - c->oldest->since_ms >= TT_IDLE_CONN_MS)
        close_entry(c, c->oldest);
}

/* Parks tcp (idleconns.h): appended at the newest end. */
void tt_idle_conns_put(struct tt_idle_conns *c, const struct tt_addr *target, uv_tcp_t *tcp,
                       uint64_t now_ms)
{
    struct tt_idle_conn *h = (struct tt_idle_conn *)tcp;

    tcp->data = NULL;
    memset(&h->key, 0, sizeof(h->key));
    if (!tt_addr_key_of((const struct sockaddr *)&target->ss, &h->key)) {
        tt_idle_conn_close(tcp, false, NULL);
        return;
    }
    expire(c, now_ms);
    if (c->n >= c->max)
        close_entry(c, c->oldest);
    h->since_ms = now_ms;
    h->parked = true;
    h->newer = NULL;
    h->older = c->newest;
    if (c->newest != NULL)
        c->newest->newer = h;
    else
        c->oldest = h;
    c->newest = h;
    c->n++;
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
uv_tcp_t *tt_idle_conns_take(struct tt_idle_conns *c, const struct tt_addr *target, uint64_t now_ms,
                             bool check)
{
    struct tt_addr_key key;

    memset(&key, 0, sizeof(key));
    if (!tt_addr_key_of((const struct sockaddr *)&target->ss, &key))
        return NULL;
    expire(c, now_ms);
    for (struct tt_idle_conn *h = c->newest, *older; h != NULL; h = older) {
        older = h->older;
        if (memcmp(&h->key, &key, sizeof(key)) != 0)
            continue;
        if (!check || still_idle(&h->tcp)) {
            unlink_entry(c, h);
            return &h->tcp;
        }
        close_entry(c, h);
    }
    return NULL;
}

/* A parked handle's peer closed it or spoke (idleconns.h). */
void tt_idle_conns_drop(struct tt_idle_conns *c, uv_tcp_t *tcp)
{
    struct tt_idle_conn *h = (struct tt_idle_conn *)tcp;

    if (h->parked)
        close_entry(c, h);
}

/* Closes every parked handle (idleconns.h). */
void tt_idle_conns_close_all(struct tt_idle_conns *c)
{
    while (c->newest != NULL)
        close_entry(c, c->newest);
}
