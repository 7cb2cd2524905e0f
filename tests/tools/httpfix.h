/* The HTTP test fixture shared by the unit tests of HTTP servers (the sidecar's admin
 * endpoint, the control plane's operator API): a libuv loop running in a thread of its
 * own for the server under test, and a blocking client in the test's thread that sends
 * raw bytes and reads Content-Length framed responses. Failures are cmocka assertions.
 * For tests only. */
#ifndef TT_HTTPFIX_H
#define TT_HTTPFIX_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <uv.h>

/* A loop in its own thread. Embed it; the server under test is started on `loop` between
 * tt_httpfix_loop_init() and tt_httpfix_loop_start(). */
struct tt_httpfix_loop {
    uv_loop_t loop;
    uv_async_t stop;
    uv_async_t call;
    pthread_t thread;
    pthread_mutex_t mu; /* guards the call slot below */
    pthread_cond_t cv;
    void (*call_fn)(void *ud);
    void *call_ud;
    bool call_done;
    void (*on_stop)(void *ud);
    void *ud;
};

/* Initializes the loop and its handles; on_stop(ud) runs on the loop's thread when
 * tt_httpfix_loop_stop() is called and must close what the test started on the loop (the
 * server). */
void tt_httpfix_loop_init(struct tt_httpfix_loop *l, void (*on_stop)(void *ud), void *ud);

/* Runs the loop in a new thread until it has no more handles. */
void tt_httpfix_loop_start(struct tt_httpfix_loop *l);

/* Runs fn(ud) on the loop's thread and returns once it has returned (e.g. to hand a
 * server a connection it must adopt on its own thread). The loop must be started. */
void tt_httpfix_loop_call(struct tt_httpfix_loop *l, void (*fn)(void *ud), void *ud);

/* Calls on_stop on the loop's thread, closes the fixture's handles, joins the thread and
 * closes the loop. Returns uv_loop_close()'s result: 0, or UV_EBUSY when the server left a
 * handle open (a leak the caller should assert against). */
int tt_httpfix_loop_stop(struct tt_httpfix_loop *l);

/* A blocking client connection with a receive buffer of 1 MiB. */
struct tt_httpfix_client {
    int fd;
    size_t len;
    char buf[(1 << 20) + 1];
};

/* One response: status, head (status line and headers, CRLFCRLF included) and body. */
struct tt_httpfix_response {
    int status;
    char head[8192];
    char *body; /* NUL-terminated, malloc'ed; free with tt_httpfix_response_done */
    size_t body_len;
};

/* Connects to 127.0.0.1:port with a 15 s receive timeout and, when rcvbuf > 0, that
 * SO_RCVBUF. Asserts success. Free with tt_httpfix_client_free(). */
struct tt_httpfix_client *tt_httpfix_connect(int port, int rcvbuf);

/* A client on an already connected stream fd (e.g. a socketpair end), made blocking with a
 * 15 s receive timeout. Takes ownership of fd. */
struct tt_httpfix_client *tt_httpfix_client_adopt(int fd);

/* Closes the connection and frees the client. */
void tt_httpfix_client_free(struct tt_httpfix_client *c);

/* Sends data[0..len) (or the string s); stops quietly when the server has closed early
 * (431, 413...): reading the answer tells what happened. */
void tt_httpfix_send(struct tt_httpfix_client *c, const char *data, size_t len);
void tt_httpfix_sends(struct tt_httpfix_client *c, const char *s);

/* Reads more into the buffer. Returns the bytes read, 0 at EOF, -1 on error or timeout
 * (errno set). */
ssize_t tt_httpfix_fill(struct tt_httpfix_client *c);

/* Reads one response framed by Content-Length (no body after a HEAD request) and keeps
 * what follows it buffered for the next one. Returns false at EOF before a complete
 * head; asserts on anything malformed. */
bool tt_httpfix_read_response(struct tt_httpfix_client *c, struct tt_httpfix_response *r,
                              bool head_request);

/* Frees the body. */
void tt_httpfix_response_done(struct tt_httpfix_response *r);

/* True when the server closes the connection (EOF or reset) without sending more. */
bool tt_httpfix_closed_by_server(struct tt_httpfix_client *c);

#endif
