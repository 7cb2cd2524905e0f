/* The sidecar's control-plane client (DESIGN.md "Certificates and trust"): the only gRPC
 * user in the sidecar. On its own thread it creates the private key in memory, asks
 * Identity.Sign for a certificate (bootstrap token first, then renewal with the current
 * certificate at half of the lifetime with jitter, retries with capped backoff), keeps one
 * Discovery.Watch stream open (re-established after any failure), registers the inbound
 * addresses this sidecar serves, turns each pushed snapshot into a runtime snapshot
 * (tt_runtime_publish) and acknowledges it, or refuses it (NACK) and keeps the last good
 * one. */
#ifndef TT_CPCLIENT_H
#define TT_CPCLIENT_H

#include <stddef.h>
#include <stdint.h>

struct tt_runtime;
struct tt_cpclient;

/* Control connection states, as /stats spells them. */
enum tt_cp_state {
    TT_CP_S_CONNECTING,  /* no certificate yet, or (re)connecting */
    TT_CP_S_CONNECTED,   /* Watch stream open */
    TT_CP_S_UNREACHABLE, /* last attempt failed; serving with what we have */
    TT_CP_S_REFUSED,     /* the control plane answered and refused our request */
    TT_CP_S_STOPPED,
};

struct tt_cp_status {
    enum tt_cp_state state;
    const char *state_name;    /* "connecting", "connected", "unreachable", "refused",
                                * "stopped" */
    uint64_t version_applied;  /* last snapshot version applied (ACKed) */
    uint64_t version_refused;  /* last snapshot version refused (NACKed), 0 if none */
    uint64_t rotations;        /* certificates received after the first */
    int64_t last_contact_unix; /* last message received from the control plane */
    int64_t next_renewal_unix; /* when the next renewal is due */
    char last_error[512];      /* why the last attempt failed, "" if none */
};

/* Reads --control-bundle and --join-token (errors name the file), then starts the
 * control thread for rt. Returns the client or NULL with one line in err. */
struct tt_cpclient *tt_cpclient_start(struct tt_runtime *rt, char *err, size_t errlen);

/* Stops the thread (closing the stream) and frees the client. Accepts NULL. */
void tt_cpclient_stop(struct tt_cpclient *cp);

/* Copies the current status (any thread). */
void tt_cpclient_status(struct tt_cpclient *cp, struct tt_cp_status *out);

#endif
