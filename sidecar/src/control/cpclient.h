/* The sidecar's control-plane client (DESIGN.md "Certificates and trust"): the only gRPC
 * user in the sidecar. On its own thread it creates the private key in memory, asks
 * Identity.Sign for a certificate (bootstrap token or Kubernetes service-account token
 * first, then renewal with the current certificate at half of the lifetime with jitter,
 * falling back to the service-account token, read afresh, when that renewal fails or the
 * certificate has expired; retries with capped backoff), keeps one
 * Discovery.Watch stream open (re-established after any failure), registers the inbound
 * addresses this sidecar serves, turns each pushed snapshot into the members that changed
 * and publishes them through the snapshot slot (snapshot.h), then acknowledges it, or
 * refuses it (NACK) and keeps the last good one. It knows the slot, never the runtime: a
 * push that changes only policy, revocations or services leaves the identity (and its
 * SSL_CTXs and session-ticket keys) as it is. */
#ifndef TT_CPCLIENT_H
#define TT_CPCLIENT_H

#include <stddef.h>
#include <stdint.h>

struct tt_addr;
struct tt_cpclient;
struct tt_snapshot_slot;

/* What the client needs, copied by tt_cpclient_new() (the slot and control address must
 * outlive the client). */
struct tt_cpclient_opts {
    const struct tt_addr *control;        /* --control */
    const char *control_bundle_path;      /* --control-bundle */
    const char *join_token_path;          /* --join-token, or NULL with jwt_path */
    const char *jwt_path;                 /* --jwt-file, or NULL with join_token_path */
    const char *spiffe_id;                /* --spiffe-id */
    const char *const *inbound_addresses; /* registered with Discovery.Watch's Hello */
    size_t n_inbound_addresses;
    struct tt_snapshot_slot *slot; /* where snapshots are published */
    /* --opaque-ports: a policy denying by method or path there is refused (NACK). */
    const uint16_t *opaque_ports;
    size_t n_opaque_ports;
};

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

/* Reads --control-bundle and checks that the --join-token or --jwt-file (exactly one is
 * given) is readable (errors name the file). Returns the client (not started) or NULL with one line
 * in err. */
struct tt_cpclient *tt_cpclient_new(const struct tt_cpclient_opts *opts, char *err, size_t errlen);

/* Starts the control thread. Returns 0 or <0. */
int tt_cpclient_start(struct tt_cpclient *cp);

/* Stops the thread (closing the stream) and waits for it: when this returns, the client
 * publishes nothing more. Accepts NULL; safe to call twice. */
void tt_cpclient_stop(struct tt_cpclient *cp);

/* Stops the client if needed and frees it. Accepts NULL. */
void tt_cpclient_free(struct tt_cpclient *cp);

/* Copies the current status (any thread). */
void tt_cpclient_status(struct tt_cpclient *cp, struct tt_cp_status *out);

#endif
