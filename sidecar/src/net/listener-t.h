/* Listener types (HAProxy's -t.h style): what a configured listener is, filled by
 * app/config and read by the workers, connections and /stats, and a worker's listening
 * socket. Types only; listener.h has the functions. */
#ifndef TT_LISTENER_T_H
#define TT_LISTENER_T_H

#include <stdbool.h>

#include <uv.h>

#include "core/util.h"
#include "net/acceptor.h"
#include "tls/tls.h"

enum tt_listener_kind {
    TT_LISTENER_INBOUND,  /* terminate mTLS on listen, relay plaintext to target */
    TT_LISTENER_OUTBOUND, /* accept plaintext on listen, originate mTLS to target */
};

/* One configured listener. */
struct tt_listener_cfg {
    enum tt_listener_kind kind;
    char name[64]; /* "inbound:127.0.0.1:16006", used in /stats and logs */
    struct tt_addr listen;
    struct tt_addr target; /* inbound: forward address; outbound: upstream */
    char *expected_id;     /* outbound: server SPIFFE ID that must answer; else NULL */
    bool transparent;      /* target and identity come from each connection's original
                            * destination (transparent mode's 15001 and 15006) */
    /* Outbound: an HTTP/1.x request's deadline from its stream's opening; 0: the global
     * --request-timeout; TT_REQUEST_TIMEOUT_NONE: none here whatever that says. */
    uint64_t request_timeout_ms;
};

#define TT_REQUEST_TIMEOUT_NONE UINT64_MAX

/* Transparent mode's settings (--transparent and the flags beside it). */
struct tt_transparent_cfg {
    bool enabled;
    bool outbound_deny;       /* --outbound-unknown deny: refuse non-mesh destinations */
    bool permissive;          /* --inbound-mode permissive: plaintext callers let in too */
    uint64_t detect_ms;       /* permissive: a silent client is plaintext after this */
    struct tt_addr pod_ip;    /* --pod-ip, port 0 */
    uint16_t *workload_ports; /* --workload-ports: registered as endpoints at pod_ip */
    size_t n_workload_ports;
    uint16_t *opaque_ports; /* --opaque-ports: server-first, no detection wait */
    size_t n_opaque_ports;
    struct tt_addr canary_outbound; /* net/canary.h: answered on 15001 */
    struct tt_addr canary_inbound;  /* pod_ip:TT_CANARY_INBOUND_PORT: answered on 15006 */
    uint64_t check_interval_ms;     /* capture check; 0: off (/ready ignores the capture) */
    bool check_interval_set;        /* given by flag or file */
};

struct tt_worker;

/* A listening socket of one worker. */
struct tt_listener {
    struct tt_acceptor acceptor; /* the socket, accepted with a backoff on fd shortages */
    struct tt_worker *worker;
    int index;                         /* into the worker's listener configs and counters */
    const struct tt_listener_cfg *cfg; /* owned by the runtime's configuration */
    struct tt_tls_resume resume;       /* outbound: the upstream's newest session ticket */
    bool open;
};

#endif
