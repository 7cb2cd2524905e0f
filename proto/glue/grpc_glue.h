/* Generic gRPC glue over the C core (grpc_unsecure) and protobuf-c messages, written
 * once for both sides of the control plane: tether-control serves, the sidecar calls.
 * gRPC never sees TLS: each connection is a plaintext fd from tlspipe.h, and the server
 * learns the peer's verified identity from whoever hands it the fd.
 *
 * Server threading: one thread runs the completion queue and invokes every callback
 * (unary handlers, on_open, on_message, on_close); callbacks must not block.
 * tt_grpc_stream_send() and tt_grpc_stream_finish() may be called from any thread.
 * Client objects are used from one thread at a time. */
#ifndef TT_GRPC_GLUE_H
#define TT_GRPC_GLUE_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

struct tt_grpc_server;
struct tt_grpc_stream;
struct tt_grpc_channel;
struct tt_grpc_client_stream;

#define TT_GRPC_DETAILS_MAX 256
#define TT_GRPC_MSG_MAX     (4 * 1024 * 1024) /* larger messages are refused unparsed */

/* Who is calling, as established by TLS before gRPC saw the connection. Valid during the
 * callback it is passed to; copy what must be kept. */
struct tt_grpc_peer {
    const char *spiffe_id; /* NULL when the peer presented no certificate */
    const char *serial;    /* its leaf serial; "" when no certificate */
    const char *address;   /* the network peer ("10.0.0.7:41234"), else gRPC's "fd:12" */
};

/* What a unary handler answers: set through tt_grpc_reply_message() or
 * tt_grpc_reply_error(). A handler that sets neither answers UNKNOWN. */
struct tt_grpc_reply {
    grpc_status_code code;
    char details[TT_GRPC_DETAILS_MAX];
    uint8_t *payload; /* packed response; owned by the glue */
    size_t len;
    int set;
};

typedef void (*tt_grpc_unary_fn)(void *ud, const struct tt_grpc_peer *peer,
                                 const ProtobufCMessage *req, struct tt_grpc_reply *reply);

/* Callbacks of a server streaming method. on_open runs when a call arrives (the stream
 * holds one reference for the glue; take one with tt_grpc_stream_ref() to keep it);
 * on_message for each request message, already unpacked (freed after the callback);
 * on_close once, when the call is over: `code` is the status we finished with, or
 * GRPC_STATUS_CANCELLED when the client went away or the server shut down. After
 * on_close, sends fail with -EPIPE. */
struct tt_grpc_stream_cbs {
    void (*on_open)(void *ud, struct tt_grpc_stream *st, const struct tt_grpc_peer *peer);
    void (*on_message)(void *ud, struct tt_grpc_stream *st, const ProtobufCMessage *msg);
    void (*on_close)(void *ud, struct tt_grpc_stream *st, grpc_status_code code);
};

/* Creates a server (grpc_init is refcounted through it). Register methods, then
 * tt_grpc_server_start(). Returns NULL on failure. */
struct tt_grpc_server *tt_grpc_server_new(void);

/* Registers the unary method `path` ("/tether.v1.Identity/Sign"): requests are unpacked
 * with `req_desc` (an unparsable one is answered INVALID_ARGUMENT without calling the
 * handler). Only before start. Returns 0, -EINVAL after start, or -ENOMEM. */
int tt_grpc_server_add_unary(struct tt_grpc_server *srv, const char *path,
                             const ProtobufCMessageDescriptor *req_desc, tt_grpc_unary_fn fn,
                             void *ud);

/* Registers the bidirectional streaming method `path` ("/tether.v1.Discovery/Watch");
 * `cbs` is copied. Only before start. Returns 0, -EINVAL after start, or -ENOMEM. */
int tt_grpc_server_add_stream(struct tt_grpc_server *srv, const char *path,
                              const ProtobufCMessageDescriptor *req_desc,
                              const struct tt_grpc_stream_cbs *cbs, void *ud);

/* Starts the server and its completion-queue thread. Returns 0 or <0. */
int tt_grpc_server_start(struct tt_grpc_server *srv);

/* Serves one connection: `fd` is the plaintext end of a connection whose peer TLS
 * verified as `peer_spiffe_id` (NULL: no certificate) with leaf `peer_serial` (NULL or
 * ""), from network address `peer_address` (NULL or "": calls then show gRPC's own name
 * of the transport, "fd:N"). Takes ownership of fd in every case (gRPC closes it when the
 * connection ends); it must be non-blocking. Only after start. Returns 0, -EINVAL or -ENOMEM. */
int tt_grpc_server_add_fd(struct tt_grpc_server *srv, int fd, const char *peer_spiffe_id,
                          const char *peer_serial, const char *peer_address);

/* Stops accepting calls, cancels those in progress (each open stream gets on_close) and
 * waits for the completion-queue thread to end. Call from any thread but that one.
 * Idempotent. */
void tt_grpc_server_shutdown(struct tt_grpc_server *srv);

/* Shuts down if needed and frees the server. Streams the application still references
 * must be released first. Accepts NULL. */
void tt_grpc_server_free(struct tt_grpc_server *srv);

/* Packs `msg` into the reply (the caller keeps msg) with status OK. */
void tt_grpc_reply_message(struct tt_grpc_reply *reply, const ProtobufCMessage *msg);

/* Sets an error status with printf-style details (truncated to TT_GRPC_DETAILS_MAX). */
void tt_grpc_reply_error(struct tt_grpc_reply *reply, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Queues `msg` (packed now; the caller keeps msg) on the stream; messages go out in
 * order, one SEND_MESSAGE at a time. Any thread. Returns 0, -EPIPE once the stream is
 * finished or closed, or -ENOMEM. */
int tt_grpc_stream_send(struct tt_grpc_stream *st, const ProtobufCMessage *msg);

/* Ends the call with `code` and `details` (may be NULL) after the queued messages. Any
 * thread; later calls and sends fail with -EPIPE. Returns 0, -EPIPE or -ENOMEM. */
int tt_grpc_stream_finish(struct tt_grpc_stream *st, grpc_status_code code, const char *details);

/* The peer of a stream, valid while a reference is held. */
const struct tt_grpc_peer *tt_grpc_stream_peer(const struct tt_grpc_stream *st);

/* Application data attached to a stream. */
void tt_grpc_stream_set_data(struct tt_grpc_stream *st, void *data);
void *tt_grpc_stream_get_data(const struct tt_grpc_stream *st);

struct tt_grpc_stream *tt_grpc_stream_ref(struct tt_grpc_stream *st);
void tt_grpc_stream_unref(struct tt_grpc_stream *st); /* accepts NULL */

/* --- Client ---------------------------------------------------------------------------- */

/* Creates a channel over the connected plaintext fd (non-blocking; ownership passes to
 * gRPC in every case). A channel does not reconnect: when the connection drops, calls
 * fail with UNAVAILABLE and the caller makes a new channel over a new connection.
 * Returns NULL on failure. */
struct tt_grpc_channel *tt_grpc_channel_new_from_fd(int fd);

/* Destroys the channel; its calls must be closed first. Accepts NULL. */
void tt_grpc_channel_free(struct tt_grpc_channel *ch);

/* Calls the unary method `path` with `req` and waits at most timeout_ms. Returns 0 once
 * the call completed: *code holds the status, `details` (when not NULL, details_len
 * bytes) its message, and on GRPC_STATUS_OK *resp the response unpacked with
 * `resp_desc` (free with protobuf_c_message_free_unpacked), else *resp is NULL. An
 * unparsable response gives *code GRPC_STATUS_INTERNAL. Returns -ENOMEM or -EIO when
 * the call could not be made at all. */
int tt_grpc_call_unary(struct tt_grpc_channel *ch, const char *path, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc, uint64_t timeout_ms,
                       ProtobufCMessage **resp, grpc_status_code *code, char *details,
                       size_t details_len);

/* Opens a bidirectional stream on `path`; responses are unpacked with `resp_desc`.
 * Returns NULL on failure (a dead connection shows up later, as the stream's status). */
struct tt_grpc_client_stream *
tt_grpc_client_stream_open(struct tt_grpc_channel *ch, const char *path,
                           const ProtobufCMessageDescriptor *resp_desc);

/* Sends `msg` and blocks until gRPC has taken it (at most timeout_ms). Returns 0, -EPIPE
 * when the stream has ended, -ETIMEDOUT (the stream is then cancelled) or -ENOMEM. */
int tt_grpc_client_stream_send(struct tt_grpc_client_stream *st, const ProtobufCMessage *msg,
                               uint64_t timeout_ms);

/* Waits at most timeout_ms for the next message. Returns 1 and sets *msg (free with
 * protobuf_c_message_free_unpacked), 0 on timeout (the stream stays usable; the same
 * receive continues on the next call), or -EPIPE when the stream has ended: its status
 * is then available from tt_grpc_client_stream_status(). An unparsable message cancels
 * the stream (status INTERNAL). */
int tt_grpc_client_stream_recv(struct tt_grpc_client_stream *st, uint64_t timeout_ms,
                               ProtobufCMessage **msg);

/* The final status once recv returned -EPIPE (else GRPC_STATUS_UNKNOWN), with details
 * copied into `details` when not NULL. */
grpc_status_code tt_grpc_client_stream_status(const struct tt_grpc_client_stream *st, char *details,
                                              size_t details_len);

/* Cancels the call if it is still running and frees the stream. Accepts NULL. */
void tt_grpc_client_stream_close(struct tt_grpc_client_stream *st);

#endif
