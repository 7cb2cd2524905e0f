/* One HTTP/2 session between two sidecars, I/O-free: bytes from the peer in with
 * tt_h2_feed(), bytes for the peer out with tt_h2_pending()/tt_h2_consume() (or
 * tt_h2_fill()), the way tls.h works. No sockets, no libuv, no clock but the monotonic one
 * for PING round trips. This module is the only one that includes nghttp2's header.
 *
 * Roles: the client (the outbound sidecar's pooled connection to a peer sidecar) opens
 * request streams and extended CONNECT tunnel streams (RFC 8441, only once the peer's
 * SETTINGS_ENABLE_CONNECT_PROTOCOL=1 has arrived); the server (the inbound sidecar) is told
 * of each new stream once its headers are complete and answers with tt_h2_respond().
 *
 * Flow control: the stream window (default 4 MiB) is given back to the peer only when the
 * application takes the bytes (tt_h2_stream_read / tt_h2_stream_consume), so a reader
 * that stops reading stalls its own stream. The connection window (default 16 MiB) is given
 * back as soon as bytes are buffered here, while the bytes buffered for all streams stay
 * under `recv_buffer_max`, so one stalled stream never blocks the others.
 *
 * The pool's links between sidecars (net/pool.h) feed it from the TLS engine. */
#ifndef TT_H2_H
#define TT_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/errors.h"

struct tt_h2;
struct tt_h2_stream;

/* RFC 9113 §7 error codes, as they appear on the wire (RST_STREAM, GOAWAY). */
#define TT_H2_NO_ERROR       0x0
#define TT_H2_PROTOCOL_ERROR 0x1
#define TT_H2_INTERNAL_ERROR 0x2
#define TT_H2_REFUSED_STREAM 0x7
#define TT_H2_CANCEL         0x8

enum tt_h2_role {
    TT_H2_CLIENT, /* outbound: opens streams */
    TT_H2_SERVER, /* inbound: accepts streams */
};

/* One header field. Names are lower case on the wire (RFC 9113 §8.2.1); pseudo-headers
 * (":method", ":status", ...) are fields like the others. Not NUL-terminated in general;
 * the fields tt_h2_stream_headers() returns are (value[value_len] == '\0'). */
struct tt_h2_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* Limits and windows; zero fields take the defaults given. */
struct tt_h2_config {
    uint32_t max_streams;     /* concurrent streams the peer may open to us (100) */
    uint32_t max_header_list; /* bound on a received header list, RFC 9113 §6.5.2 (64 KiB) */
    uint32_t stream_window;   /* initial stream receive window (4 MiB) */
    uint32_t conn_window;     /* connection receive window (16 MiB) */
    size_t recv_buffer_max;   /* unread bytes of all streams before the connection window
                                 waits for readers too (conn_window) */
    bool enable_connect;      /* server: announce SETTINGS_ENABLE_CONNECT_PROTOCOL=1 */
};

/* Session events. Every callback may be NULL. They fire only from inside tt_h2_feed(),
 * tt_h2_pending() and tt_h2_fill(); they may call any function of this module on any
 * stream, except tt_h2_free(). */
struct tt_h2_callbacks {
    /* Server: a new stream whose request headers are complete (tt_h2_stream_headers()).
     * An extended CONNECT (with :protocol) arrives only if `enable_connect` was set; a
     * plain CONNECT (RFC 9113 §8.5, no :protocol) is valid HTTP/2 and arrives too: the
     * application tells them apart and refuses what it does not serve.
     * The application sets its stream callbacks (tt_h2_stream_set_callbacks) and later
     * answers (tt_h2_respond) or resets; it owns a reference it gives up with
     * tt_h2_stream_release(). */
    void (*on_stream)(struct tt_h2 *h2, struct tt_h2_stream *s, void *ud);
    /* The peer's SETTINGS arrived (first or changed): e.g. extended CONNECT may now be
     * allowed (tt_h2_connect_allowed). */
    void (*on_settings)(struct tt_h2 *h2, void *ud);
    /* The peer sent GOAWAY: streams with an id above `last_stream_id` that we opened were
     * never processed (each also gets on_reset with TT_E_H2_REFUSED) and may be retried
     * on another connection. `h2_code` is the peer's error code. */
    void (*on_goaway)(struct tt_h2 *h2, uint32_t last_stream_id, uint32_t h2_code, void *ud);
    /* The answer to our tt_h2_ping() arrived, `rtt_us` after it was queued. */
    void (*on_ping)(struct tt_h2 *h2, uint64_t rtt_us, void *ud);
};

/* Stream events; every callback may be NULL. */
struct tt_h2_stream_callbacks {
    /* Client: the response headers are complete (tt_h2_stream_status, _headers). */
    void (*on_headers)(struct tt_h2_stream *s, void *ud);
    /* New bytes from the peer can be read (tt_h2_stream_read / _peek). */
    void (*on_data)(struct tt_h2_stream *s, void *ud);
    /* The peer ended its side (END_STREAM): after the bytes buffered now, none follow;
     * its trailers, if any, are complete (tt_h2_stream_trailers). */
    void (*on_end)(struct tt_h2_stream *s, void *ud);
    /* The stream was reset and is closed: `err` is TT_E_H2_REFUSED when the peer did not
     * process it (REFUSED_STREAM, or above a GOAWAY's last stream id: retryable), else
     * TT_E_H2_RESET; `h2_code` is the RFC 9113 code, `by_peer` says who reset it. No
     * callback of this stream fires after it; the application still releases it. */
    void (*on_reset)(struct tt_h2_stream *s, int err, uint32_t h2_code, bool by_peer, void *ud);
};

/* Creates a session for `role` with `config` (copied; NULL for every default) and
 * `callbacks` (copied; NULL for none), queueing our connection preface and SETTINGS.
 * Returns NULL when out of memory. */
struct tt_h2 *tt_h2_new(enum tt_h2_role role, const struct tt_h2_config *config,
                        const struct tt_h2_callbacks *callbacks, void *ud);

/* Frees the session and every stream, released or not (their pointers become invalid;
 * no callback fires). Accepts NULL. */
void tt_h2_free(struct tt_h2 *h2);

/* Processes bytes received from the peer. Returns 0, or TT_E_H2_PROTOCOL when the peer
 * broke the protocol, or TT_E_H2_INTERNAL / -ENOMEM; after an error the session takes no
 * more input (every later call returns the same code) and the caller sends what
 * tt_h2_pending() still holds (a GOAWAY) and closes. A bad client preface or flooding is
 * reported by the call that fed it; other connection errors (a malformed frame) make
 * nghttp2 queue a GOAWAY with an error code, noticed when tt_h2_pending() takes it out:
 * from then on tt_h2_error() and tt_h2_feed() return TT_E_H2_PROTOCOL and tt_h2_done()
 * turns true once the bytes are taken. So the caller's loop is: feed, send pending, close
 * on an error or when tt_h2_done(). */
int tt_h2_feed(struct tt_h2 *h2, const uint8_t *data, size_t len);

/* The session's sticky error (see tt_h2_feed), 0 while none. */
int tt_h2_error(const struct tt_h2 *h2);

/* Bytes to send to the peer: sets *data and *len (0 when nothing is queued) without a
 * copy; they stay valid until the next tt_h2_pending(), tt_h2_fill() or tt_h2_free().
 * Follow with tt_h2_consume() for what was taken (it may be less than *len). Returns 0,
 * or TT_E_H2_INTERNAL / -ENOMEM. */
int tt_h2_pending(struct tt_h2 *h2, const uint8_t **data, size_t *len);

/* Marks `n` bytes of the last tt_h2_pending() as taken. */
void tt_h2_consume(struct tt_h2 *h2, size_t n);

/* Copies as many pending bytes as fit into buf[0..cap) (several frames at once). Returns
 * the byte count (0: nothing pending), or <0 as tt_h2_pending(). */
long tt_h2_fill(struct tt_h2 *h2, uint8_t *buf, size_t cap);

/* Whether the session is over: neither side has anything left to say (after GOAWAYs with
 * no active stream, or a protocol error once its GOAWAY was taken). The caller closes. */
bool tt_h2_done(struct tt_h2 *h2);

/* Whether the field named name[0..len) (any case) is one of the connection-specific
 * fields HTTP/2 forbids (RFC 9113 §8.2.2: connection, keep-alive, proxy-connection,
 * transfer-encoding, upgrade; "te" is allowed as "trailers" only, and not covered here).
 * Pure. */
bool tt_h2_connection_specific(const char *name, size_t len);

/* Client: whether the peer's SETTINGS_ENABLE_CONNECT_PROTOCOL is 1. */
bool tt_h2_connect_allowed(struct tt_h2 *h2);

/* Streams opened (both directions) and not yet closed or reset. */
size_t tt_h2_active_streams(const struct tt_h2 *h2);

/* Stream objects the session still holds: open ones, and closed ones the application has
 * not released yet (a number that only grows points at a missing release). */
size_t tt_h2_streams_held(const struct tt_h2 *h2);

/* A request to open (client). `authority` is host[:port]; `headers` are the regular
 * fields (no pseudo-headers), copied when the call returns. With `end_stream` the request
 * has no body; otherwise the body follows with tt_h2_stream_write() and tt_h2_stream_end(). */
struct tt_h2_request {
    const char *method, *scheme, *authority, *path;
    const struct tt_h2_header *headers;
    size_t nheaders;
    bool end_stream;
};

/* Client: opens a request stream. Returns the stream (owned by the application until
 * tt_h2_stream_release) or NULL with *err: TT_E_H2_GOAWAY (no new stream on this
 * session), TT_E_H2_HEADERS (a pseudo-header value missing, or a field HTTP/2 forbids: a
 * pseudo-header among `headers`, upper case, CR/LF/NUL, connection-specific fields such
 * as connection or transfer-encoding, RFC 9113 §8.2.2), -EINVAL (server role), the
 * session's error after a failure, TT_E_H2_INTERNAL or -ENOMEM. Beyond the peer's concurrency limit
 * the stream waits for a free slot. */
struct tt_h2_stream *tt_h2_open(struct tt_h2 *h2, const struct tt_h2_request *req,
                                const struct tt_h2_stream_callbacks *cbs, void *ud, int *err);

/* Client: opens an extended CONNECT tunnel (RFC 8441 §4): `:method CONNECT`,
 * `:protocol` = `protocol` (e.g. "tether-tcp", "websocket"), `:authority` = `authority`
 * (the original destination IP:port), `:scheme https`, `:path /`, and `headers`. Bytes go
 * both ways with tt_h2_stream_write()/_read() once the response (2xx) arrives. Returns as
 * tt_h2_open(), with TT_E_H2_NO_CONNECT when the peer has not enabled extended CONNECT. */
struct tt_h2_stream *tt_h2_open_tunnel(struct tt_h2 *h2, const char *protocol,
                                       const char *authority, const struct tt_h2_header *headers,
                                       size_t nheaders, const struct tt_h2_stream_callbacks *cbs,
                                       void *ud, int *err);

/* Server: sends the response head: `status`, then `headers` (copied). With `end_stream`
 * the body ends after what was already written (none, usually); otherwise it follows with
 * tt_h2_stream_write() and tt_h2_stream_end() (bytes written before the head wait for
 * it). For a tunnel, a 2xx without `end_stream`. Returns 0, TT_E_H2_CLOSED (reset or
 * already answered), -EINVAL (client stream, status outside 200..999: no 1xx heads),
 * TT_E_H2_HEADERS (a field HTTP/2 forbids, as for tt_h2_open), TT_E_H2_INTERNAL or
 * -ENOMEM. */
int tt_h2_respond(struct tt_h2_stream *s, int status, const struct tt_h2_header *headers,
                  size_t nheaders, bool end_stream);

/* Sets (replaces) the stream's callbacks and user pointer (copied). */
void tt_h2_stream_set_callbacks(struct tt_h2_stream *s, const struct tt_h2_stream_callbacks *cbs,
                                void *ud);

/* Queues body or tunnel bytes (copied into pooled buffers) for the peer; they go out as
 * the peer's windows allow. Returns 0, TT_E_H2_CLOSED (reset, or ended by us) or -ENOMEM.
 * tt_h2_stream_queued() tells how much waits: bound it to apply backpressure. */
int tt_h2_stream_write(struct tt_h2_stream *s, const void *data, size_t len);

/* Bytes written and not yet framed for the peer. */
size_t tt_h2_stream_queued(const struct tt_h2_stream *s);

/* Ends our side (END_STREAM after the queued bytes). Returns 0 or TT_E_H2_CLOSED. */
int tt_h2_stream_end(struct tt_h2_stream *s);

/* Ends our side with trailers (e.g. gRPC's grpc-status), sent after the queued bytes;
 * `trailers` (regular fields only) are copied. Needs a body: a request opened without
 * `end_stream`, or a response not answered with `end_stream`. Returns 0, TT_E_H2_CLOSED
 * (reset, or ended already), TT_E_H2_HEADERS (none given, or a field HTTP/2 forbids, as
 * for tt_h2_open) or -ENOMEM. */
int tt_h2_stream_end_trailers(struct tt_h2_stream *s, const struct tt_h2_header *trailers,
                              size_t n);

/* Resets the stream with RST_STREAM `h2_code` (on_reset fires with by_peer false).
 * Returns 0, or TT_E_H2_CLOSED when it is already closed. */
int tt_h2_stream_reset(struct tt_h2_stream *s, uint32_t h2_code);

/* Received bytes not yet taken by the application. */
size_t tt_h2_stream_readable(const struct tt_h2_stream *s);

/* Copies up to `len` received bytes into buf and gives their window back to the peer.
 * Returns the count (0: nothing buffered). */
size_t tt_h2_stream_read(struct tt_h2_stream *s, void *buf, size_t len);

/* The first received bytes without a copy: sets *data, returns their length (at most a
 * slab's worth: less than tt_h2_stream_readable() when more follow); valid until the next
 * call on this session. Follow with tt_h2_stream_consume() for what was taken. */
size_t tt_h2_stream_peek(const struct tt_h2_stream *s, const uint8_t **data);
void tt_h2_stream_consume(struct tt_h2_stream *s, size_t n);

/* Whether the peer ended its side and every byte it sent has been taken. */
bool tt_h2_stream_eof(const struct tt_h2_stream *s);

/* Whether the peer ended its side (END_STREAM arrived); bytes may still wait to be taken. */
bool tt_h2_stream_peer_ended(const struct tt_h2_stream *s);

/* The received header fields (request on the server, response on the client), valid
 * while the stream lives; NUL-terminated names and values. */
const struct tt_h2_header *tt_h2_stream_headers(const struct tt_h2_stream *s, size_t *n);

/* The value of the first field named `name` (lower case), or NULL. */
const char *tt_h2_stream_header(const struct tt_h2_stream *s, const char *name);

/* The trailers the peer sent after the body (complete when on_end fired), as above. */
const struct tt_h2_header *tt_h2_stream_trailers(const struct tt_h2_stream *s, size_t *n);
const char *tt_h2_stream_trailer(const struct tt_h2_stream *s, const char *name);

/* Client: the response's :status, 0 before it arrived. */
int tt_h2_stream_status(const struct tt_h2_stream *s);

/* The stream id (assigned when the stream is opened, even while it waits for a slot
 * under the peer's concurrency limit). */
uint32_t tt_h2_stream_id(const struct tt_h2_stream *s);

/* The session a stream belongs to. */
struct tt_h2 *tt_h2_stream_session(const struct tt_h2_stream *s);

/* Gives up the application's reference: no callback fires for the stream any more;
 * unread bytes are dropped (their connection window given back). A stream still open is
 * reset with CANCEL, unless our side was ended (a complete answer, a tunnel's last bytes):
 * then what we queued still goes out and, if the peer has not ended its side, RST_STREAM
 * NO_ERROR follows our END_STREAM. The session frees it once closed. Accepts NULL. */
void tt_h2_stream_release(struct tt_h2_stream *s);

/* Queues a PING; on_ping reports its round trip. Returns 0, TT_E_H2_INTERNAL or -ENOMEM. */
int tt_h2_ping(struct tt_h2 *h2);

/* Drains the session: no new stream is accepted or opened, active streams finish. With
 * an error code, GOAWAY with the last stream id we processed is queued at once. A
 * graceful drain (NO_ERROR) of a server queues a shutdown notice and a PING, and the final
 * GOAWAY once the peer answered it: the streams the peer opened before it saw the notice
 * are served, not refused (tt_h2_notice_pending meanwhile; calling again sends the final
 * GOAWAY at once, for a caller that stops waiting). A client's graceful GOAWAY goes out
 * after the request heads already queued. Returns 0 or TT_E_H2_INTERNAL / -ENOMEM. */
int tt_h2_goaway(struct tt_h2 *h2, uint32_t h2_code);

/* Whether a server's graceful drain waits for the peer to answer its notice's PING:
 * streams may still arrive, and the session is not done, until then. */
bool tt_h2_notice_pending(const struct tt_h2 *h2);

#endif
