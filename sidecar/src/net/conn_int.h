/* The connection module's private header (libuv's internal.h style): the helpers and the
 * tt__ functions that its files call in each other. Only net/conn*.c include it; everyone
 * else uses conn.h.
 *
 * Who does what:
 *   conn.c          accepting and routing, detection, connecting, the handshake, timers,
 *                   closing (the access line, the counters)
 *   conn_relay.c    the data path: reading, writing, TLS pumping, relay progress,
 *                   half-close, the worker's once-per-iteration writes
 *   conn_gate.c     the allow list (tt__conn_authorize) and per-request policy (the gate)
 *   conn_pool.c     links' carriers, tunnels, the pool's callbacks (tt_conn_pool_ops)
 *   conn_streams.c  inbound request streams: to the workload as HTTP/1.1, gRPC as HTTP/2
 *   conn_h1.c       outbound HTTP/1.x apps: each request a stream; refusal answers
 */
#ifndef TT_CONN_INT_H
#define TT_CONN_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "metrics/metrics.h"
#include "net/conn-t.h"
#include "net/listener-t.h"
#include "net/worker-t.h"

#define TT_CONN_QUEUE_MAX (64 * 1024) /* bytes queued for a side before its source pauses */
/* TLS 1.3 adds 22 bytes per record of at most 16 KiB (RFC 8446 §5.2): a plaintext read of
 * this size encrypts into two records that fit one slab. */
#define TT_CONN_PLAIN_READ       (TT_BUF_SLAB - 128)
#define TT_TLS_RECORD_MAX        16384       /* most plaintext one tt_tls_read returns */
#define TT_CONN_CONNECT_ATTEMPTS 4           /* endpoints a balanced connection tries at most */
#define TT_CONN_REFUSED_RETRIES  1           /* a tunnel the peer did not process is retried once */
#define TT_CONN_REPLAY_MAX       (16 * 1024) /* a request held to send again (up_replay) */
#define TT_CONN_REFUSAL_WAIT_MS  500  /* a refused app connection: its first bytes, at most */
#define TT_CONN_LINGER_MS        2000 /* a closing link: the peer's end awaited, at most */

static inline struct tt_listener_counters *conn_counters(struct tt_conn *c)
{
    return &c->worker->metrics->listeners[c->listener->index];
}

static inline const struct tt_worker_settings *conn_settings(struct tt_conn *c)
{
    return c->worker->settings;
}

static inline bool conn_is_inbound(const struct tt_conn *c)
{
    return c->listener->cfg->kind == TT_LISTENER_INBOUND;
}

static inline size_t side_queue_len(const struct tt_side *s)
{
    return s->inflight.len + s->queued.len;
}

static inline void touch(struct tt_conn *c)
{
    c->last_activity_ms = uv_now(&c->worker->loop);
}

/* ---- conn.c ---- */

const char *tt__conn_peer_id(const struct tt_conn *c);
void tt__side_ended(struct tt_conn *c, const struct tt_side *s, int reset_err);
void tt__conn_hs_failed(struct tt_conn *c, enum tt_hs_reason reason);
void tt__on_timer(uv_timer_t *timer);
void tt__conn_kicked(struct tt_conn *c);
void tt__conn_enter(struct tt_conn *c, enum tt_conn_state state);
void tt__conn_start_relay(struct tt_conn *c);
void tt__on_connect(uv_connect_t *req, int status);
bool tt__conn_pick_endpoint(struct tt_conn *c);
void tt__conn_connect_failed(struct tt_conn *c, int status);
void tt__conn_start_connect(struct tt_conn *c);
bool tt__workload_retry(struct tt_conn *c);
void tt__conn_log_audit(struct tt_conn *c, const char *caller, const struct tt_policy_verdict *v);
void tt__handshake_progress(struct tt_conn *c);
bool tt__port_listed(const uint16_t *ports, size_t n, uint16_t port);
void tt__outbound_detect(struct tt_conn *c, const uint8_t *data, size_t n, bool final);
int tt__conn_send_early(struct tt_conn *c);
void tt__detect_done(struct tt_conn *c, const uint8_t *data, size_t n);
struct tt_conn *tt__conn_new(struct tt_listener *l);
void tt__on_untracked_closed(uv_handle_t *handle);
void tt__conn_track(struct tt_conn *c, struct tt_snapshot *snapshot, bool counted);
void tt__conn_close(struct tt_conn *c, int err, bool reset);

/* ---- conn_relay.c ---- */

void tt__side_start_write(struct tt_conn *c, struct tt_side *s);
int tt__side_send(struct tt_conn *c, struct tt_side *s, const uint8_t *data, size_t len);
void tt__worker_defer_writes(struct tt_worker *w);
void tt__app_push_soon(struct tt_conn *c);
void tt__app_push_unqueue(struct tt_conn *c);
void tt__conn_kick(struct tt_conn *c);
void tt__conn_kick_unqueue(struct tt_conn *c);
int tt__side_push(struct tt_conn *c, struct tt_side *s);
int tt__tls_flush(struct tt_conn *c);
void tt__tunnel_count(struct tt_side *s, size_t n, bool read);
int tt__stream_write(struct tt_conn *c, const void *data, size_t len);
int tt__secure_write(struct tt_conn *c, const void *data, size_t len);
int tt__secure_flush(struct tt_conn *c);
void tt__side_maybe_shutdown(struct tt_conn *c, struct tt_side *s);
void tt__side_set_reading(struct tt_conn *c, struct tt_side *s, bool want);
uint64_t tt__conn_now_us(struct tt_conn *c);
int tt__tls_close_notify_once(struct tt_conn *c);
int tt__tls_pump(struct tt_conn *c);
void tt__relay_progress(struct tt_conn *c);
void tt__carrier_progress(struct tt_conn *c);

/* ---- conn_h1.c ---- */

bool tt__conn_refusal_start(struct tt_conn *c, int err, bool reset);
void tt__refusal_read(struct tt_conn *c, const uint8_t *data, size_t n);
void tt__h1_record(struct tt_conn *c, int status, const char *reason);
void tt__h1_fail(struct tt_conn *c, int err);
void tt__h1_lost(struct tt_conn *c, int err);
void tt__h1_timed_out(struct tt_conn *c);
void tt__h1_settle(struct tt_conn *c);
void tt__h1_kick(struct tt_conn *c);
void tt__h1_app_read(struct tt_conn *c, const uint8_t *data, size_t n);
void tt__h1_app_eof(struct tt_conn *c);
void tt__h1_progress(struct tt_conn *c);
void tt__h1_start(struct tt_conn *c);

/* ---- conn_gate.c ---- */

void tt__request_over(struct tt_conn *c, const char *peer_id, const struct tt_gate_request *rq);
void tt__gate_on_request(void *ud, const struct tt_gate_request *rq);
bool tt__conn_authorize(struct tt_conn *c);
void tt__request_meter_end(struct tt_conn *c, int status, uint64_t response_bytes);

/* ---- conn_pool.c ---- */

bool tt__carrier_negotiated(struct tt_conn *c);
void tt__carrier_accept(struct tt_conn *c);
void tt__carrier_up(struct tt_conn *c);
void tt__conn_pool_attach(struct tt_conn *c);
/* The identity pooled links are made with now (the worker's newest snapshot's). */
const void *tt__pool_identity(const struct tt_conn *c);
void tt__conn_tunnel_leave(struct tt_conn *c);
void tt__conn_tunnel_end(struct tt_conn *c, int err, bool reset);
void tt__tunnel_on_data(struct tt_h2_stream *s, void *ud);
extern const struct tt_h2_stream_callbacks tt__tunnel_callbacks;
int tt__pool_ride(struct tt_conn *c, struct tt_h2 *h2);
void tt__pool_progress(struct tt_conn *c);

/* ---- conn_streams.c ---- */

int tt__h2h1_response_over(struct tt_conn *c);
int tt__h2h1_respond(void *ud, int status, const struct tt_h2_header *fields, size_t n,
                     bool end_stream);
int tt__h2h1_end(void *ud);
bool tt__grpc_path_canonical(const char *path);
struct tt_h2_header *tt__regular_fields(const struct tt_h2_stream *s, bool drop_host, size_t *k);
int tt__h2up_pump(struct tt_conn *c);
int tt__h2up_start(struct tt_conn *c);
bool tt__h2up_request_room(struct tt_conn *c);
int tt__h2up_request_body(struct tt_conn *c, const uint8_t *data, size_t n);
int tt__h2up_request_end(struct tt_conn *c);
int tt__h2up_from_workload(struct tt_conn *c, const uint8_t *data, size_t n);
void tt__h2up_free(struct tt_h2_upstream *up);
int tt__pool_accept(struct tt_conn *carrier, struct tt_link *link, struct tt_h2_stream *s);

#endif
