/* The HTTP test fixture (see httpfix.h). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "httpfix.h"

/* ---- the loop thread ---- */

static void on_stop(uv_async_t *a)
{
    struct tt_httpfix_loop *l = a->data;

    l->on_stop(l->ud);
    uv_close((uv_handle_t *)&l->call, NULL);
    uv_close((uv_handle_t *)&l->stop, NULL);
}

static void on_call(uv_async_t *a)
{
    struct tt_httpfix_loop *l = a->data;

    pthread_mutex_lock(&l->mu);
    if (l->call_fn != NULL && !l->call_done) {
        l->call_fn(l->call_ud);
        l->call_done = true;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
}

static void *loop_main(void *p)
{
    struct tt_httpfix_loop *l = p;

    uv_run(&l->loop, UV_RUN_DEFAULT);
    return NULL;
}

/* Initializes the loop, its stop and call handles and the call slot. */
void tt_httpfix_loop_init(struct tt_httpfix_loop *l, void (*stop_fn)(void *ud), void *ud)
{
    memset(l, 0, sizeof(*l));
    l->on_stop = stop_fn;
    l->ud = ud;
    assert_int_equal(pthread_mutex_init(&l->mu, NULL), 0);
    assert_int_equal(pthread_cond_init(&l->cv, NULL), 0);
    assert_int_equal(uv_loop_init(&l->loop), 0);
    assert_int_equal(uv_async_init(&l->loop, &l->stop, on_stop), 0);
    assert_int_equal(uv_async_init(&l->loop, &l->call, on_call), 0);
    l->stop.data = l;
    l->call.data = l;
}

/* Starts the loop's thread. */
void tt_httpfix_loop_start(struct tt_httpfix_loop *l)
{
    assert_int_equal(pthread_create(&l->thread, NULL, loop_main, l), 0);
}

/* Runs fn(ud) on the loop's thread and waits for it. One call at a time. */
void tt_httpfix_loop_call(struct tt_httpfix_loop *l, void (*fn)(void *ud), void *ud)
{
    pthread_mutex_lock(&l->mu);
    l->call_fn = fn;
    l->call_ud = ud;
    l->call_done = false;
    pthread_mutex_unlock(&l->mu);
    assert_int_equal(uv_async_send(&l->call), 0);
    pthread_mutex_lock(&l->mu);
    while (!l->call_done)
        pthread_cond_wait(&l->cv, &l->mu);
    l->call_fn = NULL;
    pthread_mutex_unlock(&l->mu);
}

/* Stops the server through on_stop, joins the thread, closes the loop. */
int tt_httpfix_loop_stop(struct tt_httpfix_loop *l)
{
    int rc;

    assert_int_equal(uv_async_send(&l->stop), 0);
    assert_int_equal(pthread_join(l->thread, NULL), 0);
    rc = uv_loop_close(&l->loop);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    return rc;
}

/* ---- the client ---- */

static struct tt_httpfix_client *client_new(int fd)
{
    struct tt_httpfix_client *c = malloc(sizeof(*c));
    struct timeval tv = {.tv_sec = 15};

    assert_non_null(c);
    c->fd = fd;
    c->len = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return c;
}

/* Connects to 127.0.0.1:port; see httpfix.h. */
struct tt_httpfix_client *tt_httpfix_connect(int port, int rcvbuf)
{
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct tt_httpfix_client *c;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    assert_true(fd >= 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c = client_new(fd);
    if (rcvbuf > 0)
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    return c;
}

/* Wraps a connected fd, made blocking. */
struct tt_httpfix_client *tt_httpfix_client_adopt(int fd)
{
    int fl = fcntl(fd, F_GETFL);

    assert_true(fl >= 0);
    assert_int_equal(fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
    return client_new(fd);
}

/* Closes and frees. */
void tt_httpfix_client_free(struct tt_httpfix_client *c)
{
    close(c->fd);
    free(c);
}

/* Sends all of data unless the server closed first. */
void tt_httpfix_send(struct tt_httpfix_client *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return; /* the server may close early (431, 413): reading tells */
        data += n;
        len -= (size_t)n;
    }
}

/* Sends the string s. */
void tt_httpfix_sends(struct tt_httpfix_client *c, const char *s)
{
    tt_httpfix_send(c, s, strlen(s));
}

/* One recv into the buffer's free space. */
ssize_t tt_httpfix_fill(struct tt_httpfix_client *c)
{
    ssize_t n;

    assert_true(c->len < sizeof(c->buf) - 1);
    do {
        n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0)
        c->len += (size_t)n;
    return n;
}

/* Reads one Content-Length framed response; see httpfix.h. */
bool tt_httpfix_read_response(struct tt_httpfix_client *c, struct tt_httpfix_response *r,
                              bool head_request)
{
    char *end, *cl;
    size_t head_len, need;

    memset(r, 0, sizeof(*r));
    for (;;) {
        c->buf[c->len] = '\0';
        end = c->len ? strstr(c->buf, "\r\n\r\n") : NULL;
        if (end)
            break;
        if (tt_httpfix_fill(c) <= 0)
            return false;
    }
    head_len = (size_t)(end - c->buf) + 4;
    assert_true(head_len < sizeof(r->head));
    memcpy(r->head, c->buf, head_len);
    r->head[head_len] = '\0';
    assert_int_equal(sscanf(r->head, "HTTP/1.1 %d ", &r->status), 1);
    cl = strcasestr(r->head, "\r\nContent-Length: ");
    assert_non_null(cl);
    r->body_len = head_request ? 0 : strtoul(cl + 18, NULL, 10);
    need = head_len + r->body_len;
    while (c->len < need)
        assert_true(tt_httpfix_fill(c) > 0);
    r->body = malloc(r->body_len + 1);
    assert_non_null(r->body);
    memcpy(r->body, c->buf + head_len, r->body_len);
    r->body[r->body_len] = '\0';
    memmove(c->buf, c->buf + need, c->len - need);
    c->len -= need;
    return true;
}

/* Frees the body; a second call is harmless. */
void tt_httpfix_response_done(struct tt_httpfix_response *r)
{
    free(r->body);
    r->body = NULL;
}

/* EOF or reset, and nothing more. */
bool tt_httpfix_closed_by_server(struct tt_httpfix_client *c)
{
    ssize_t n = tt_httpfix_fill(c);

    return n == 0 || (n < 0 && errno == ECONNRESET);
}
