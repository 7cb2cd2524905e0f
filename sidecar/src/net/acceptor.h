/* Accepting on a listening socket without ever spinning when the process runs out of file
 * descriptors. libuv's uv_listen() cannot be used for that: when accept(2) fails with
 * EMFILE or ENFILE, uv__server_io calls the connection callback with the error and tries
 * again at once, in a loop that only ends when an accept succeeds or the handle is closed
 * (its own reserve-fd trick, uv__emfile_trick, is per loop and fails for good as soon as
 * another thread takes the descriptor it frees). An acceptor watches the socket with a
 * uv_poll_t, calls accept4() itself and, on a shortage, stops watching for a backoff:
 *
 *   - a reserved descriptor (an open /dev/null) is closed to accept the connection that
 *     waits, which is then closed at once (TT_ACCEPTOR_DROP, as libev and nginx do: the
 *     client learns at once instead of waiting in the backlog) or handed to the owner
 *     (TT_ACCEPTOR_SERVE: the admin endpoint answers one request at a time even when
 *     every descriptor is taken); the reserve is opened again afterwards;
 *   - the socket is not watched for a backoff that starts at TT_ACCEPTOR_BACKOFF_MIN_MS and
 *     doubles up to TT_ACCEPTOR_BACKOFF_MAX_MS while failures follow each other with no
 *     accept in between (an accept in between starts it again from the minimum: the
 *     shortage is easing, as when a backlog of abandoned connections is worked off); the
 *     listening socket stays open (its backlog and its place in a SO_REUSEPORT group are
 *     kept);
 *   - one "accept_failed" line starts an episode; the episode ends after
 *     TT_ACCEPTOR_QUIET_MS without a failure with one "accept_resumed" line that counts
 *     its failures and the connections it dropped.
 *
 * Everything runs on the loop's thread; the counters may be read from any thread. */
#ifndef TT_ACCEPTOR_H
#define TT_ACCEPTOR_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#define TT_ACCEPTOR_BACKOFF_MIN_MS 100
#define TT_ACCEPTOR_BACKOFF_MAX_MS 1000
#define TT_ACCEPTOR_QUIET_MS       2000
#define TT_ACCEPTOR_BATCH          64 /* accepts per readiness event, then the loop goes on */

struct tt_acceptor;

/* A connection was accepted: fd is a connected, non-blocking, close-on-exec socket that
 * the callee now owns. */
typedef void (*tt_acceptor_accept_cb)(struct tt_acceptor *a, int fd);

/* Both handles of a closed acceptor are closed; its memory may go. */
typedef void (*tt_acceptor_closed_cb)(struct tt_acceptor *a);

/* What the reserve's accept does with the waiting connection during a shortage. */
enum tt_acceptor_shortage {
    TT_ACCEPTOR_DROP,  /* close it at once (reset) and count it in *dropped */
    TT_ACCEPTOR_SERVE, /* hand it to the accept callback */
};

enum tt_acceptor_state {
    TT_ACCEPTOR_S_WATCHING,   /* accepting; no shortage seen lately */
    TT_ACCEPTOR_S_PAUSED,     /* not watching the socket until the backoff timer fires */
    TT_ACCEPTOR_S_RECOVERING, /* accepting again; the episode ends after a quiet time */
    TT_ACCEPTOR_S_CLOSED,     /* tt_acceptor_close() was called */
};

struct tt_acceptor {
    uv_poll_t poll;
    uv_timer_t timer; /* PAUSED: end of the backoff; RECOVERING: end of the episode */
    int fd;           /* the listening socket, owned */
    int reserve_fd;   /* the reserved descriptor, or -1 while it could not be reopened */
    enum tt_acceptor_state state;
    enum tt_acceptor_shortage shortage;
    const char *name; /* "listener" of the log lines; must outlive the acceptor */
    int worker;       /* "worker" of the log lines, or -1 for none */
    tt_acceptor_accept_cb on_accept;
    tt_acceptor_closed_cb on_closed;
    void *data; /* the owner's */
    /* Optional counters the owner reads (single writer, relaxed atomics), or NULL. */
    uint64_t *failures; /* accept(2) calls that failed for want of descriptors or memory */
    uint64_t *dropped;  /* connections accepted on the reserve and closed at once */
    /* The current episode. */
    uint64_t backoff_ms;
    bool accepted; /* a connection was accepted since the last failure */
    uint64_t episode_start_ms;
    uint64_t episode_failures;
    uint64_t episode_dropped;
    int pending_closes;
};

/* Starts accepting on fd, a bound, listening, non-blocking socket, in loop; takes
 * ownership of fd (closed by tt_acceptor_close(), or here on failure). name, worker,
 * shortage, on_accept, on_closed, data, failures and dropped must be set by the caller
 * before (the rest of *a is initialized here). on_accept runs on the loop's thread for
 * each connection. Returns 0, or <0 when the handles could not be made (nothing to close
 * then: on_closed is never called). */
int tt_acceptor_start(struct tt_acceptor *a, uv_loop_t *loop, int fd);

/* Opens the reserved descriptor again if a shortage took it and it could not be reopened
 * since. The owner of a TT_ACCEPTOR_SERVE acceptor calls it when it closes a connection,
 * so that the descriptor it frees becomes the reserve again before another thread takes
 * it. */
void tt_acceptor_replenish(struct tt_acceptor *a);

/* Stops accepting, closes the listening socket and the reserve now and both handles
 * asynchronously; on_closed (when set) runs once they are closed. Connections waiting in
 * the backlog are dropped by the kernel. Safe to call twice. */
void tt_acceptor_close(struct tt_acceptor *a);

/* True while an episode of shortage lasts (PAUSED or RECOVERING). */
bool tt_acceptor_in_shortage(const struct tt_acceptor *a);

#endif
