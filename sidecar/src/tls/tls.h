/* One TLS session, I/O-free: ciphertext in with tt_tls_feed(), ciphertext out with
 * tt_tls_pending()/tt_tls_consume(), plaintext through tt_tls_read()/tt_tls_write().
 * No sockets and no libuv here (STYLE.md); conn.c moves the bytes. Peer verification
 * (chain against the trust bundle with validity dates, exactly one spiffe:// URI SAN,
 * the revocation set, and for clients the expected server SPIFFE ID) happens inside the handshake
 * and fails it with a precise tt_err code. Buffers use the tt_buf slab pool, so an idle session
 * holds no I/O buffers. */
#ifndef TT_TLS_H
#define TT_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/errors.h"

struct tt_buf;
struct tt_crls;
struct tt_identity;
struct tt_revocations;
struct tt_tls;

enum tt_tls_role {
    TT_TLS_SERVER, /* inbound: terminate mTLS, require a client certificate */
    TT_TLS_CLIENT, /* outbound: originate mTLS, check the server's SPIFFE ID */
    /* Control plane: terminate TLS, verify a client certificate when one is presented
     * (exactly as TT_TLS_SERVER does), and let a client without one finish the handshake
     * with peer id "" (a sidecar bootstrapping with a token has no certificate yet). */
    TT_TLS_SERVER_OPTIONAL_CLIENT,
    /* Originate TLS without presenting our certificate, checking the server's SPIFFE ID
     * as TT_TLS_CLIENT does (asking the control plane for a certificate with a token). */
    TT_TLS_CLIENT_ANONYMOUS,
};

/* Creates a session on `id`'s SSL_CTX for `role` and takes a reference on `id`. For
 * the client roles, `expected_peer` is the exact SPIFFE ID the server must present
 * (copied); for the server roles it must be NULL. Returns NULL when out of memory. */
struct tt_tls *tt_tls_new(struct tt_identity *id, enum tt_tls_role role, const char *expected_peer);

/* A client-side resumption slot: the newest session ticket received from one upstream,
 * and the identity it was made with (a ticket is offered only with that identity, so a
 * rotated certificate never resumes as the old one). Zero-initialize it; one thread
 * uses it (conn.c keeps one per outbound listener per worker). A resumed session's
 * server is verified again from the chain the ticket carries (identity.c). */
struct tt_tls_resume {
    struct ssl_session_st *session;
    struct tt_identity *identity;
};

/* Releases what a slot holds; it is empty (and reusable) afterwards. */
void tt_tls_resume_done(struct tt_tls_resume *slot);

/* Client roles with a certificate, before the first tt_tls_handshake(): offers the slot's
 * ticket for resumption and stores the tickets this session receives into the slot. The
 * slot must outlive the session. Returns 0, -EINVAL for other roles, or TT_E_TLS. */
int tt_tls_set_resume(struct tt_tls *tls, struct tt_tls_resume *slot);

/* Before the first tt_tls_handshake(): the peer's leaf is refused with TT_E_REVOKED when
 * its serial is in `revocations` (a reference is taken; NULL, the default, revokes
 * nothing). Replaces any set given before. */
void tt_tls_set_revocations(struct tt_tls *tls, struct tt_revocations *revocations);

/* Before the first tt_tls_handshake(): every certificate of the peer's verified chain
 * (the trust anchor excepted) is refused with TT_E_REVOKED when a CRL of its issuer in
 * `crls` lists it (crl.h; a reference is taken; NULL, the default, checks nothing).
 * Replaces any set given before. */
void tt_tls_set_crls(struct tt_tls *tls, struct tt_crls *crls);

/* After a completed handshake: checks the peer's chain against `crls` (a newer set than
 * the session started with: a reload, or a live connection being re-checked). Returns 0,
 * TT_E_REVOKED with tt_tls_error_detail() saying which CRL lists what, or -ENOMEM. */
int tt_tls_check_crls(struct tt_tls *tls, const struct tt_crls *crls);

/* Before the first tt_tls_handshake(): `proto` is a comma-separated list of ALPN
 * protocols in order of preference. A server selects the first of them the client offers
 * (e.g. "tether-h2,h2"; a static string, not copied), and a client that offers no ALPN,
 * or other protocols only, still completes the handshake, without ALPN; a client offers
 * them all ("tether-h2,http/1.1"; tt_tls_alpn() then says which the server selected, if
 * any).
 * Returns 0, -EINVAL for an empty name or one longer than 255 bytes, or -ENOMEM. */
int tt_tls_set_alpn(struct tt_tls *tls, const char *proto);

/* The ALPN protocol the handshake selected, "" when none, copied into buf (truncated to
 * len - 1 bytes). */
void tt_tls_alpn(const struct tt_tls *tls, char *buf, size_t len);

/* Frees the session and drops the identity reference. Accepts NULL. */
void tt_tls_free(struct tt_tls *tls);

/* Appends ciphertext received from the peer (copied). Returns 0 or -ENOMEM. */
int tt_tls_feed(struct tt_tls *tls, const void *data, size_t len);

/* Reading ciphertext straight into the session's input buffer, without a copy: returns
 * where up to *avail bytes may be written (a pooled slab; *avail is 0 when the buffer is
 * full), or NULL when out of memory. Follow with tt_tls_input_commit() (also with 0 when
 * the read brought nothing, so an idle session holds no buffer). */
uint8_t *tt_tls_input_tail(struct tt_tls *tls, size_t *avail);
void tt_tls_input_commit(struct tt_tls *tls, size_t n);

/* The pending ciphertext as a buffer, for a caller that hands it to its write queue
 * without a copy (tt_buf_move) or consumes part of it; same bytes as tt_tls_pending(). */
struct tt_buf *tt_tls_output(struct tt_tls *tls);

/* Bytes fed but not yet consumed by the TLS engine. */
size_t tt_tls_input_len(const struct tt_tls *tls);

/* Advances the handshake with the input fed so far. Returns 1 when complete (peer
 * verified), 0 when it needs more input (send tt_tls_pending() first), or <0: one of
 * TT_E_NO_CERT, TT_E_UNKNOWN_CA, TT_E_EXPIRED, TT_E_NOT_YET_VALID, TT_E_BAD_SAN,
 * TT_E_WRONG_IDENTITY, TT_E_REVOKED, TT_E_PROTOCOL, TT_E_TLS, -ENOMEM. After a failure,
 * tt_tls_pending() may hold an alert for the peer. */
int tt_tls_handshake(struct tt_tls *tls);

/* The peer sent close_notify: no more plaintext will come. A code of its own in the
 * project's error space (it was -1, which is also -EPERM). */
#define TT_TLS_EOF TT_E_TLS_CLOSED

/* Decrypts into buf. Returns >0 bytes, 0 when more input is needed, TT_TLS_EOF after
 * the peer's close_notify, or another <0 tt_err on a protocol error. May produce
 * ciphertext (e.g. a KeyUpdate answer): check tt_tls_pending() after. */
int tt_tls_read(struct tt_tls *tls, void *buf, size_t len);

/* Encrypts all of buf[0..len) into the pending output. Returns 0 or <0. */
int tt_tls_write(struct tt_tls *tls, const void *buf, size_t len);

/* Queues a close_notify alert (our half-close). Returns 0 or <0. */
int tt_tls_close_notify(struct tt_tls *tls);

/* Ciphertext waiting to be sent: sets *data and returns its length (0 when none).
 * Valid until the next call on this session. */
size_t tt_tls_pending(struct tt_tls *tls, const uint8_t **data);

/* Marks n pending bytes as sent. */
void tt_tls_consume(struct tt_tls *tls, size_t n);

/* What is known of the peer: its SPIFFE ID, its leaf serial (upper-case hex, no colons)
 * and issuer (one-line DN), each "" when unknown. After a failed handshake they hold
 * whatever the peer presented (for /stats' recent failures). Valid while the session
 * lives. Also the protocol version ("TLSv1.3") and whether the session was resumed. */
const char *tt_tls_peer_id(const struct tt_tls *tls);
const char *tt_tls_peer_serial(const struct tt_tls *tls);
const char *tt_tls_peer_issuer(const struct tt_tls *tls);
const char *tt_tls_version(const struct tt_tls *tls);
int tt_tls_resumed(const struct tt_tls *tls);

/* After a failed handshake (or tt_tls_check_crls refusal): one line saying why, in more
 * words than the error code: the X.509 error and the depth it applies to, the CRL that
 * lists the serial, the identity that was presented instead of the expected one, the alert
 * the peer sent, or the TLS library's reason (e.g. "TLS library:
 * no_common_signature_algorithms"). "" when nothing failed. Valid while the session lives. */
#define TT_TLS_DETAIL_MAX 384
const char *tt_tls_error_detail(const struct tt_tls *tls);

/* The TLS alert (RFC 8446 §6) the peer ended the session with, -1 when it sent none. */
int tt_tls_peer_alert(const struct tt_tls *tls);

/* Whether the peer has shown that it accepted the handshake. A TLS 1.3 client finishes
 * before the server has checked the client's certificate (RFC 8446 §4.4.4: the server may
 * still refuse it with an alert); it knows it was accepted once a record arrives after
 * the handshake (a session ticket or data). Servers, and TLS 1.2 clients (the server's
 * Finished follows its check), are confirmed when the handshake completes. */
bool tt_tls_peer_confirmed(const struct tt_tls *tls);

#endif
