/* The connection's types (HAProxy's -t.h): its states, its two sides and the struct
 * itself, shared by net/conn.h (the module's functions) and net/conn_int.h (the parts of
 * the module: net/conn*.c). */
#ifndef TT_CONN_T_H
#define TT_CONN_T_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "core/buf.h"
#include "core/util.h"
#include "net/pool.h"

struct tt_listener;
struct tt_worker;
struct tt_snapshot;
struct tt_tls;
struct tt_service;
struct tt_gate;
struct tt_request_meter;
struct tt_h2h1;
struct tt_h2_upstream;
struct tt_h2;
struct tt_h2_stream;
struct tt_h1h2;
struct h1_request;

enum tt_conn_state {
    TT_CONN_S_ACCEPTED,   /* just accepted; nothing started yet */
    TT_CONN_S_DETECT,     /* permissive inbound: waiting for the first bytes (TLS or not) */
    TT_CONN_S_HANDSHAKE,  /* TLS handshake with the TLS-side peer in progress */
    TT_CONN_S_CONNECTING, /* TCP connect to the upstream in progress */
    TT_CONN_S_RELAY,      /* both sides open; bytes flow until both directions end */
    TT_CONN_S_REFUSING,   /* outbound that could not get through: reading the app's first
                           * bytes to tell an HTTP/1.x app why (tt__conn_refusal_start) */
    TT_CONN_S_CLOSING,    /* handles closing; freed when the last close callback runs */
};

/* One TCP socket of the connection and its write queue. */
struct tt_side {
    uv_tcp_t *tcp; /* &own, or a heap handle that may be kept between request streams
                    * (an inbound request stream's workload side: net/idleconns.h) */
    uv_tcp_t own;
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    struct tt_buf inflight; /* bytes handed to uv_write, frozen until its callback */
    struct tt_buf queued;   /* bytes waiting behind them */
    uint64_t bytes_read;
    uint64_t bytes_written;
    bool open;          /* tcp initialized, needs uv_close */
    bool connected;     /* accepted or connected: a reset is possible */
    bool reading;       /* uv_read_start active */
    bool read_eof;      /* the peer will send nothing more */
    bool sock_eof;      /* TLS side: FIN received; input may still wait for decryption */
    bool want_shutdown; /* send FIN once the queue drains */
    bool shutdown_sent; /* uv_shutdown issued */
    bool shutdown_done; /* FIN sent */
    bool corked;        /* bytes wait in the queue, unwritten, until uncorked */
};

struct tt_conn {
    struct tt_conn *next, *prev; /* the worker's list */
    struct tt_worker *worker;
    struct tt_listener *listener;
    struct tt_snapshot *snapshot; /* taken at accept; kept for the connection's life */
    enum tt_conn_state state;
    struct tt_side down;        /* accepted from the client */
    struct tt_side up;          /* connected to the upstream */
    struct tt_side *tls_side;   /* &down (inbound) or &up (outbound) */
    struct tt_side *plain_side; /* the other one */
    struct tt_tls *tls;
    uv_timer_t timer; /* handshake, connect or idle deadline */
    uv_connect_t connect_req;
    uint64_t start_ms;
    uint64_t phase_ms;         /* when the current state began */
    uint64_t connect_start_us; /* when the current upstream connect began (tt__conn_now_us) */
    uint64_t last_activity_ms;
    int pending_closes;
    int error;                  /* first error that ended the connection, or 0 */
    const char *verdict;        /* "allow", "deny" or "error" for the access log */
    const char *rule;           /* deciding rule name, or NULL */
    int hs_reason;              /* the handshake failed: its enum tt_hs_reason, else -1 */
    int refusal_err;            /* REFUSING: why the connection could not get through */
    struct tt_buf refusal_held; /* REFUSING: the app's first bytes, read so far */
    bool refusal_up_reset;      /* REFUSING: the upstream side is reset when closed (else FIN) */
    const char *closed_by;      /* "client" or "upstream": that side ended first; NULL: the proxy */
    const char *reset_by;       /* "client", "upstream" or "proxy": who reset; NULL: no reset */
    bool close_notify_sent;
    bool lingering; /* a carrier: its FIN is out, the peer's end is awaited */
    char peer_addr[64];
    /* Where the upstream side connects and who must answer there: the listener's target
     * and expected_id, or in transparent mode what the original destination gives. */
    struct tt_addr target;
    const char *expected_id;          /* outbound: borrowed from the listener or the snapshot */
    const struct tt_service *service; /* transparent outbound: the balanced service */
    int endpoint;                     /* its endpoint picked, -1 for none */
    uint64_t tried;                   /* endpoints that failed to connect, bit per index */
    unsigned attempts;                /* connects that failed so far */
    bool balancer_active;             /* the balancer counts this connection on endpoint */
    bool plain;                       /* no TLS on either side (passthrough, plaintext) */
    const char *route;                /* transparent: "mesh", "passthrough", "plaintext" */
    /* Inbound, when rules with methods or paths apply to the caller and port: every
     * request passes the gate (http/gate.h), which asks policy per request. */
    struct tt_gate *gate;
    bool gate_ended; /* the gate refused the rest: the connection is being ended */
    /* Inbound request stream that no rule reads and whose head the gate would pass on
     * unchanged (tt_h2h1_plain): no gate; counted by the meter (net/conn_gate.c). */
    struct tt_request_meter *meter;
    /* Pooling between sidecars (net/pool.h). A tunnel is an app connection whose TLS side
     * is a stream on a link (no socket, no tt_tls of its own: down is virtual inbound, up
     * outbound); a carrier is the mTLS connection under a link. */
    struct tt_pool_member member; /* a tunnel's place in the pool */
    struct tt_h2_stream *stream;  /* tunnel: its stream, once opened (or accepted) */
    struct tt_link *link;         /* carrier: the link it carries */
    char *tunnel_peer_id;         /* tunnel: the SPIFFE ID its carrier verified */
    /* Inbound request stream (not a CONNECT): its translation to the workload's HTTP/1.1
     * (http/h2h1.h); the gate reads the request it writes. */
    struct tt_h2h1 *h2h1;
    /* Inbound gRPC request stream: relayed to the workload over HTTP/2 (h2c, prior
     * knowledge), stream to stream (net/conn_streams.c). */
    struct tt_h2_upstream *h2up;
    /* Outbound HTTP/1.x app (pooling on, detected by its first bytes): each request is a
     * stream of its own on a link (http/h1h2.h; net/conn_h1.c). */
    struct tt_h1h2 *h1h2;
    struct h1_request *h1_rq; /* the current request, for its counters and line */
    struct tt_h2 *h1_session; /* while riding starts: the link's session to open it on */
    struct tt_buf early;      /* outbound: the app's bytes read while detecting, not sent */
    bool detected;            /* outbound: detection read the app's first bytes */
    bool h1_need_link;        /* the current request waits for a link (tt__h1_settle) */
    bool h1_upgrade;          /* the current request upgrades: the rest is a tunnel */
    bool h1_idempotent;       /* the current request may be sent again (a retry) */
    bool h1_has_body;         /* the current request's body follows its head */
    bool h1_head;             /* the current request's response head arrived */
    bool h1_settling;         /* tt__h1_settle runs: a link ridden at once opens there */
    bool h1_kicked;           /* tt__h1_settle and the response wait for the kick (tt__h1_kick) */
    bool h1_sink;             /* the current request is read to its end and dropped */
    bool h1_retrying;         /* its stream failed; sent again once a link takes it (the
                                 body read meanwhile is dropped: the rewind reads it again) */
    bool push_queued;         /* bytes gathered for the app wait on the worker's push list */
    struct tt_conn *push_next, *push_prev; /* that list (conn_relay.c tt__app_push_soon) */
    bool kick_queued;                      /* waits on the worker's kick list (tt__conn_kick) */
    uint64_t kick_round;                   /* the worker's kick round it was queued in */
    struct tt_conn *kick_next, *kick_prev; /* that list */
    uint64_t h1_deadline_ms; /* the current request's --request-timeout deadline, 0: none */
    char *link_detail;       /* outbound tunnel: why its link's handshake failed */
    bool tunnel;             /* pooled: the TLS side is (or will be) a stream */
    bool carrier;            /* the mTLS connection of a link */
    bool direct;             /* outbound: one mTLS connection of its own (fallback) */
    bool answered;           /* inbound tunnel: its response head went out */
    int answer_status;       /* inbound request stream: the status it was answered with */
    bool park_up;            /* inbound request stream: the workload's connection is kept
                              * for the next one (net/idleconns.h), not closed */
    bool reused_up;          /* its workload connection is a kept one: relay on the kick */
    /* Inbound request stream on a kept workload connection, for a request that may be
     * sent again (idempotent): every byte sent to the workload, held until its first
     * byte back (at most TT_CONN_REPLAY_MAX), to send again on a new connection should
     * the kept one turn out closed (tt__workload_retry). */
    struct tt_buf up_replay;
    bool up_replay_armed;     /* up_replay holds all that was sent; a retry is possible */
    bool up_retrying;         /* tt__workload_retry's connect is under way */
    bool counted;             /* an app connection: in n_conns, accepted and closed */
    unsigned refused_retries; /* outbound tunnel: REFUSED_STREAM retries so far */
};

#endif
