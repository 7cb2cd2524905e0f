/* Idle keep-alive connections to the workload (idlefds.h). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/idlefds.h"

/* Removes entry i (closing nothing). */
static void drop_at(struct tt_idle_fds *c, size_t i)
{
    c->e[i] = c->e[--c->n];
}

/* Parks fd (idlefds.h). */
void tt_idle_fds_put(struct tt_idle_fds *c, const struct tt_addr *target, int fd, uint64_t now_ms)
{
    struct tt_addr_key key;
    size_t oldest = 0;

    memset(&key, 0, sizeof(key));
    if (!tt_addr_key_of((const struct sockaddr *)&target->ss, &key)) {
        close(fd);
        return;
    }
    if (c->n == TT_IDLE_FDS_MAX) {
        for (size_t i = 1; i < c->n; i++) {
            if (c->e[i].since_ms < c->e[oldest].since_ms)
                oldest = i;
        }
        close(c->e[oldest].fd);
        drop_at(c, oldest);
    }
    c->e[c->n++] = (struct tt_idle_fd){key, fd, now_ms};
}

/* Whether the peer of fd has neither closed nor sent anything while it was parked. */
static bool still_idle(int fd)
{
    char b;
    ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

    return r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Takes a parked socket to target (idlefds.h). */
int tt_idle_fds_take(struct tt_idle_fds *c, const struct tt_addr *target, uint64_t now_ms)
{
    struct tt_addr_key key;

    memset(&key, 0, sizeof(key));
    if (!tt_addr_key_of((const struct sockaddr *)&target->ss, &key))
        return -1;
    for (;;) {
        size_t best = c->n;

        for (size_t i = 0; i < c->n; i++) {
            if (memcmp(&c->e[i].key, &key, sizeof(key)) == 0 &&
                (best == c->n || c->e[i].since_ms > c->e[best].since_ms))
                best = i;
        }
        if (best == c->n)
            return -1;
        int fd = c->e[best].fd;
        bool fresh = now_ms - c->e[best].since_ms < TT_IDLE_FD_MS;
        drop_at(c, best);
        if (fresh && still_idle(fd))
            return fd;
        close(fd);
    }
}

/* Closes every parked socket (idlefds.h). */
void tt_idle_fds_close_all(struct tt_idle_fds *c)
{
    for (size_t i = 0; i < c->n; i++)
        close(c->e[i].fd);
    c->n = 0;
}
