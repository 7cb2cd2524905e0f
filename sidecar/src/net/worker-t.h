/* Worker types (HAProxy's -t.h style): a worker thread's state and the settings it is
 * handed, shared by the worker, its listeners and its connections. Types only; worker.h
 * has the functions. */
#ifndef TT_WORKER_T_H
#define TT_WORKER_T_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "net/listener-t.h"
#include "net/idleconns.h"

struct tt_conn;
struct tt_metrics;
struct tt_balancer;
struct tt_pool;
struct tt_snapshot;
struct tt_snapshot_slot;

/* What a worker and its connections need, given by the app layer; it must outlive the
 * worker. */
struct tt_worker_settings {
    const struct tt_listener_cfg *listeners;
    size_t n_listeners;
    struct tt_snapshot_slot *slot; /* where snapshots are published */
    unsigned max_connections;      /* this worker's share of --max-connections */
    uint64_t handshake_timeout_ms;
    uint64_t connect_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t request_timeout_ms; /* an outbound HTTP/1.x request's deadline; 0: none */
    unsigned request_log_sample; /* one request line in N (denials etc. always) */
    bool pool; /* --pool on: outbound app connections ride pooled HTTP/2 links (net/pool.h) */
    bool http_streams; /* --http-streams on: an outbound HTTP/1.x app's requests are streams */
    /* Pooling on: how long an outbound app's first bytes are waited for to tell HTTP/1.x
     * (requests as streams) from anything else (a tunnel): --inbound-detect-timeout in
     * transparent mode, else TT_DEFAULT_DETECT_TIMEOUT_MS. */
    uint64_t outbound_detect_ms;
    const struct tt_transparent_cfg *transparent; /* never NULL; .enabled in that mode */
};

/* Bytes a socket read may deliver at once (the plaintext side's reads land in the
 * worker's buffer; TLS-side reads land in the session's input buffer). */
#define TT_WORKER_READ_BUF (64 * 1024)

struct tt_worker {
    unsigned index;
    const struct tt_worker_settings *settings;
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t wakeup;
    uv_idle_t flush_idle;          /* runs the kicks, then the deferred writes: apps' gathered
                                    * bytes, then links' flushes (net/pool.h), before the loop
                                    * waits (conn_relay.c on_flush_idle) */
    struct tt_conn *push_conns;    /* HTTP/1.x apps with gathered bytes (conn_relay.c) */
    struct tt_conn *kick_head;     /* connections kicked (tt__conn_kick), oldest first */
    struct tt_conn *kick_tail;     /* the newest of them */
    uint64_t kick_round;           /* advances each time the kicks run */
    struct tt_listener *listeners; /* settings->n_listeners */
    int *listen_fds;               /* bound by the runtime, opened by the worker */
    struct tt_metrics *metrics;
    struct tt_balancer *balancer;    /* transparent outbound: this worker's endpoint state */
    struct tt_pool *pool;            /* links to and from other sidecars (net/pool.h) */
    struct tt_idle_conns idle_conns; /* inbound: keep-alive workload connections at rest */
    struct tt_snapshot *snapshot;    /* newest snapshot this worker has taken */
    uint64_t generation;             /* its generation; atomic for readers */
    struct tt_conn *conns;           /* every live connection (links' carriers too), for drain
                                        and stop */
    uint64_t requests_done;          /* requests over, for --request-log-sample */
    size_t n_conns;                  /* app connections (not carriers); atomic for readers */
    bool drain_requested;            /* atomic: set by tt_worker_drain */
    bool stop_requested;             /* atomic: set by tt_worker_stop */
    bool draining;                   /* listeners closed, waiting for connections */
    bool stopping;                   /* closing everything, then the loop ends */
    bool thread_started;
    /* Scratch space for the loop's single running callback: plaintext-side socket reads
     * land in read_buf, decrypted TLS plaintext in plain_buf. Never held across callbacks. */
    uint8_t read_buf[TT_WORKER_READ_BUF];
    uint8_t plain_buf[TT_WORKER_READ_BUF];
};

#endif
