/* A blocking TLS acceptor for tether-control's low-volume listeners (the sidecar gRPC API
 * and the operator API off loopback): one thread polls the listening socket and accepts;
 * each handshake runs on a short-lived thread (at most CP_TLS_ACCEPTOR_MAX_HANDSHAKES at
 * once, further connections are closed at once) bounded by a timeout, with
 * tt_tlspipe_handshake(); an established session is handed to tt_tlspipe_new() and the
 * plaintext end to the caller's callback. The TLS side stays on tlspipe's relay thread. */
#ifndef CP_TLS_ACCEPTOR_H
#define CP_TLS_ACCEPTOR_H

#include <stddef.h>
#include <stdint.h>

#include "tls/tls.h"

#define CP_TLS_ACCEPTOR_MAX_HANDSHAKES 256
#define CP_TLS_ACCEPTOR_HANDSHAKE_MS   5000

struct tt_addr;
struct tt_identity;
struct tt_tlspipe;
struct cp_tls_acceptor;

/* Returns a reference to the identity to present (the caller unrefs it), or NULL with
 * one line in err (the connection is then closed). Called on handshake threads. */
typedef struct tt_identity *(*cp_tls_identity_fn)(void *ud, char *err, size_t errlen);

/* A verified connection: app_fd is the plaintext end (the callee owns it), pipe the
 * relay's handle (the callee owns it: tt_tlspipe_close() or tt_tlspipe_release()),
 * peer_id the client's SPIFFE ID or NULL when it presented no certificate (only with
 * TT_TLS_SERVER_OPTIONAL_CLIENT), serial its leaf serial ("" without one), peer_addr
 * "IP:PORT". The strings are valid during the call. Called on a handshake thread. */
typedef void (*cp_tls_accept_fn)(void *ud, int app_fd, struct tt_tlspipe *pipe, const char *peer_id,
                                 const char *serial, const char *peer_addr);

struct cp_tls_acceptor_opts {
    const struct tt_addr *listen; /* port 0 picks one: see cp_tls_acceptor_port() */
    enum tt_tls_role role;        /* TT_TLS_SERVER or TT_TLS_SERVER_OPTIONAL_CLIENT */
    cp_tls_identity_fn identity;
    cp_tls_accept_fn on_accept;
    void *ud;
    const char *name;      /* for logs and errors, e.g. "sidecar" or "api" */
    const char *flag;      /* the flag that named the address, for errors */
    uint64_t handshake_ms; /* 0: CP_TLS_ACCEPTOR_HANDSHAKE_MS */
};

/* Binds and listens on opts->listen and starts the acceptor thread. Returns NULL with
 * one line in err ("--listen-api 10.0.0.1:15014: Address already in use") on failure. */
struct cp_tls_acceptor *cp_tls_acceptor_new(const struct cp_tls_acceptor_opts *opts, char *err,
                                            size_t errlen);

/* The port actually bound. */
int cp_tls_acceptor_port(const struct cp_tls_acceptor *a);

/* Stops accepting, closes the listening socket, waits for the handshakes in flight (each
 * bounded by its timeout; no callback runs after this returns) and frees the acceptor.
 * Connections already handed over are not touched. Accepts NULL. */
void cp_tls_acceptor_free(struct cp_tls_acceptor *a);

#endif
