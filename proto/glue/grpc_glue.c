/* Generic gRPC glue (see grpc_glue.h) over the C core of grpc_unsecure.
 *
 * Server: one completion queue, one thread draining it with grpc_completion_queue_next.
 * Every completion carries a `struct tag` whose function handles it. Each registered
 * method keeps one grpc_server_request_registered_call outstanding; when a call arrives
 * the next request is posted before the call is served.
 *
 * A server stream keeps at most one batch of each kind in flight: RECV_MESSAGE (re-armed
 * after each message), SEND_MESSAGE or SEND_STATUS_FROM_SERVER (fed from a locked queue,
 * so any thread may send), and SEND_INITIAL_METADATA + RECV_CLOSE_ON_SERVER, which
 * completes when the call is over and triggers on_close. The grpc_call is released as
 * soon as no batch is in flight after that, whatever references the application keeps,
 * so that server shutdown never waits for the application.
 *
 * Client: each unary call and each stream has its own pluck queue, so a caller waits for
 * exactly the operation it started; a receive that times out stays in flight and the
 * next receive waits for the same operation. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "grpc_glue.h"

/* The glue does not link the sidecar library (see proto/meson.build): its own copy. */
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct tag {
    void (*fn)(struct tag *t, int ok);
};

/* --- Messages <-> byte buffers -------------------------------------------------------- */

static grpc_byte_buffer *pack_bytes(const uint8_t *data, size_t len)
{
    grpc_slice s = grpc_slice_from_copied_buffer((const char *)data, len);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);

    grpc_slice_unref(s);
    return bb;
}

static grpc_byte_buffer *pack_msg(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice s = grpc_slice_malloc(len);
    grpc_byte_buffer *bb;

    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
    bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

/* Unpacks `bb` with `desc`: NULL when it is oversized or not a valid message. */
static ProtobufCMessage *unpack_msg(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc)
{
    grpc_byte_buffer_reader r;
    ProtobufCMessage *msg = NULL;

    if (grpc_byte_buffer_length(bb) > TT_GRPC_MSG_MAX || !grpc_byte_buffer_reader_init(&r, bb))
        return NULL;
    grpc_slice s = grpc_byte_buffer_reader_readall(&r);
    grpc_byte_buffer_reader_destroy(&r);
    msg = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
    grpc_slice_unref(s);
    return msg;
}

static void copy_slice(grpc_slice s, char *out, size_t cap)
{
    size_t n = GRPC_SLICE_LENGTH(s);

    if (out == NULL || cap == 0)
        return;
    if (n >= cap)
        n = cap - 1;
    memcpy(out, GRPC_SLICE_START_PTR(s), n);
    out[n] = '\0';
}

static gpr_timespec deadline_in(uint64_t ms)
{
    if (ms > (uint64_t)INT32_MAX * 1000)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis((int64_t)ms, GPR_TIMESPAN));
}

/* Shuts down and destroys a queue whose operations have all been collected. */
static void cq_destroy(grpc_completion_queue *cq, int pluck)
{
    grpc_completion_queue_shutdown(cq);
    for (;;) {
        grpc_event ev =
            pluck ? grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
                  : grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
    }
    grpc_completion_queue_destroy(cq);
}

/* --- Server ---------------------------------------------------------------------------- */

struct method {
    struct method *next;
    char *path;
    const ProtobufCMessageDescriptor *desc;
    void *handle; /* grpc_server_register_method's */
    int streaming;
    tt_grpc_unary_fn fn;
    struct tt_grpc_stream_cbs cbs;
    void *ud;
};

/* The identity of the connection that gRPC names "fd:<fd>". */
struct fd_peer {
    struct fd_peer *next;
    int fd;
    char *spiffe_id; /* NULL: no certificate */
    char *serial;
    char *address; /* the network peer, e.g. "10.0.0.7:41234" ("" if unknown) */
};

struct tt_grpc_server {
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t thread;
    struct method *methods;
    pthread_mutex_t lock; /* peers, shutdown state */
    pthread_cond_t cond;
    struct fd_peer *peers;
    int started, shutting_down, shutdown_done;
    struct tag shutdown_tag;
};

/* A call that arrived for a method, before it is served. */
struct incoming {
    struct tag tag;
    struct tt_grpc_server *srv;
    struct method *m;
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_byte_buffer *payload;
};

/* A peer record for one call: copies, so the fd table may change meanwhile. */
struct peer_copy {
    struct tt_grpc_peer pub;
    char *spiffe_id, *serial, *address;
};

static void peer_copy_done(struct peer_copy *p)
{
    free(p->spiffe_id);
    free(p->serial);
    free(p->address);
}

/* Maps the call's transport to the identity given to tt_grpc_server_add_fd(). A call on
 * an unknown transport gets no identity (spiffe_id NULL), never someone else's. */
static int peer_lookup(struct tt_grpc_server *srv, grpc_call *call, struct peer_copy *out)
{
    char *addr = grpc_call_get_peer(call);
    int fd = -1;
    char end;

    memset(out, 0, sizeof(*out));
    if (addr != NULL && sscanf(addr, "fd:%d%c", &fd, &end) != 1)
        fd = -1;
    out->address = strdup(addr != NULL ? addr : "");
    gpr_free(addr);
    pthread_mutex_lock(&srv->lock);
    for (struct fd_peer *p = srv->peers; p != NULL && fd >= 0; p = p->next) {
        if (p->fd != fd)
            continue;
        if (p->spiffe_id != NULL)
            out->spiffe_id = strdup(p->spiffe_id);
        out->serial = strdup(p->serial);
        if (p->address[0] != '\0') {
            free(out->address);
            out->address = strdup(p->address);
        }
        break;
    }
    pthread_mutex_unlock(&srv->lock);
    if (out->serial == NULL)
        out->serial = strdup("");
    if (out->address == NULL || out->serial == NULL) {
        peer_copy_done(out);
        return -ENOMEM;
    }
    out->pub.spiffe_id = out->spiffe_id;
    out->pub.serial = out->serial;
    out->pub.address = out->address;
    return 0;
}

static void on_incoming(struct tag *t, int ok);

static int request_call(struct tt_grpc_server *srv, struct method *m)
{
    struct incoming *in = calloc(1, sizeof(*in));

    if (in == NULL)
        return -ENOMEM;
    in->tag.fn = on_incoming;
    in->srv = srv;
    in->m = m;
    grpc_metadata_array_init(&in->md);
    if (grpc_server_request_registered_call(srv->server, m->handle, &in->call, &in->deadline,
                                            &in->md, m->streaming ? NULL : &in->payload, srv->cq,
                                            srv->cq, &in->tag) != GRPC_CALL_OK) {
        grpc_metadata_array_destroy(&in->md);
        free(in);
        return -EIO;
    }
    return 0;
}

static void incoming_free(struct incoming *in)
{
    grpc_metadata_array_destroy(&in->md);
    if (in->payload != NULL)
        grpc_byte_buffer_destroy(in->payload);
    free(in);
}

/* Unary calls. */

struct unary_call {
    struct tag tag;
    grpc_call *call;
    grpc_byte_buffer *resp;
    grpc_slice details;
    int cancelled;
};

static void on_unary_done(struct tag *t, int ok)
{
    struct unary_call *u = (struct unary_call *)t;

    if (u->resp != NULL)
        grpc_byte_buffer_destroy(u->resp);
    grpc_slice_unref(u->details);
    grpc_call_unref(u->call);
    free(u);
}

static void serve_unary(struct incoming *in)
{
    struct tt_grpc_reply reply = {.code = GRPC_STATUS_UNKNOWN};
    struct unary_call *u = calloc(1, sizeof(*u));
    ProtobufCMessage *req = NULL;
    struct peer_copy peer;
    grpc_op ops[4];
    size_t n = 0;

    if (u == NULL) {
        grpc_call_cancel_with_status(in->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                                     NULL);
        grpc_call_unref(in->call);
        return;
    }
    u->tag.fn = on_unary_done;
    u->call = in->call;
    if (peer_lookup(in->srv, in->call, &peer) < 0) {
        tt_grpc_reply_error(&reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    } else {
        if (in->payload != NULL)
            req = unpack_msg(in->payload, in->m->desc);
        if (req == NULL) {
            tt_grpc_reply_error(&reply, GRPC_STATUS_INVALID_ARGUMENT, "request is not a valid %s",
                                in->m->desc->name);
        } else {
            in->m->fn(in->m->ud, &peer.pub, req, &reply);
            protobuf_c_message_free_unpacked(req, NULL);
        }
        peer_copy_done(&peer);
    }
    if (!reply.set)
        tt_grpc_reply_error(&reply, GRPC_STATUS_UNKNOWN, "handler set no reply");

    memset(ops, 0, sizeof(ops));
    ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (reply.code == GRPC_STATUS_OK) {
        u->resp = pack_bytes(reply.payload, reply.len);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = u->resp;
    }
    u->details = grpc_slice_from_copied_string(reply.details);
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = reply.code;
    ops[n++].data.send_status_from_server.status_details = &u->details;
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n++].data.recv_close_on_server.cancelled = &u->cancelled;
    free(reply.payload);
    if (grpc_call_start_batch(u->call, ops, n, &u->tag, NULL) != GRPC_CALL_OK)
        on_unary_done(&u->tag, 0);
}

/* Server streams. */

struct sendq {
    struct sendq *next;
    grpc_byte_buffer *bb;
};

struct tt_grpc_stream {
    pthread_mutex_t lock;
    int refs;    /* the glue's (until the call is released) and the application's */
    int batches; /* in flight, plus one until on_close ran; the call is released at 0 */
    struct tt_grpc_server *srv;
    struct method *m;
    grpc_call *call;
    struct peer_copy peer;
    void *data;
    struct sendq *head, *tail;
    int send_busy;   /* a SEND_MESSAGE or SEND_STATUS batch is in flight */
    int finishing;   /* tt_grpc_stream_finish() was called */
    int status_sent; /* its SEND_STATUS batch was started */
    int closed;      /* the call is over: nothing more may be started */
    int cancelled;
    grpc_status_code fin_code;
    grpc_slice fin_details;
    grpc_byte_buffer *sending, *recv_bb;
    struct tag send_tag, recv_tag, close_tag;
};

static void stream_free(struct tt_grpc_stream *st)
{
    while (st->head != NULL) {
        struct sendq *q = st->head;
        st->head = q->next;
        grpc_byte_buffer_destroy(q->bb);
        free(q);
    }
    grpc_slice_unref(st->fin_details);
    peer_copy_done(&st->peer);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

/* Takes a reference on the stream. */
struct tt_grpc_stream *tt_grpc_stream_ref(struct tt_grpc_stream *st)
{
    pthread_mutex_lock(&st->lock);
    st->refs++;
    pthread_mutex_unlock(&st->lock);
    return st;
}

/* Drops a reference; the last one frees the stream. */
void tt_grpc_stream_unref(struct tt_grpc_stream *st)
{
    if (st == NULL)
        return;
    pthread_mutex_lock(&st->lock);
    int last = --st->refs == 0;
    pthread_mutex_unlock(&st->lock);
    if (last)
        stream_free(st);
}

/* Ends one in-flight batch (or the base hold); the last releases the call. Called with
 * st->lock held; returns with it released. */
static void batch_done_locked(struct tt_grpc_stream *st)
{
    grpc_call *call = NULL;

    if (--st->batches == 0) {
        call = st->call;
        st->call = NULL;
    }
    pthread_mutex_unlock(&st->lock);
    if (call != NULL) {
        grpc_call_unref(call);
        tt_grpc_stream_unref(st); /* the glue's reference */
    }
}

/* Starts the next send if none is in flight. Called with st->lock held. */
static void kick_send_locked(struct tt_grpc_stream *st)
{
    grpc_op op;

    if (st->send_busy || st->closed)
        return;
    memset(&op, 0, sizeof(op));
    if (st->head != NULL) {
        struct sendq *q = st->head;
        st->head = q->next;
        if (st->head == NULL)
            st->tail = NULL;
        st->sending = q->bb;
        free(q);
        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = st->sending;
    } else if (st->finishing && !st->status_sent) {
        st->status_sent = 1;
        op.op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        op.data.send_status_from_server.status = st->fin_code;
        op.data.send_status_from_server.status_details = &st->fin_details;
    } else {
        return;
    }
    st->send_busy = 1;
    st->batches++;
    if (grpc_call_start_batch(st->call, &op, 1, &st->send_tag, NULL) != GRPC_CALL_OK) {
        /* Only a programming error gets here; fail the stream rather than hang. */
        st->send_busy = 0;
        st->batches--;
        grpc_call_cancel(st->call, NULL);
    }
}

static void on_stream_send(struct tag *t, int ok)
{
    struct tt_grpc_stream *st = container_of(t, struct tt_grpc_stream, send_tag);

    pthread_mutex_lock(&st->lock);
    st->send_busy = 0;
    if (st->sending != NULL) {
        grpc_byte_buffer_destroy(st->sending);
        st->sending = NULL;
    }
    if (ok)
        kick_send_locked(st);
    batch_done_locked(st);
}

static int start_recv_locked(struct tt_grpc_stream *st)
{
    grpc_op op;

    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &st->recv_bb;
    st->batches++;
    if (grpc_call_start_batch(st->call, &op, 1, &st->recv_tag, NULL) != GRPC_CALL_OK) {
        st->batches--;
        return -EIO;
    }
    return 0;
}

static void on_stream_recv(struct tag *t, int ok)
{
    struct tt_grpc_stream *st = container_of(t, struct tt_grpc_stream, recv_tag);
    grpc_byte_buffer *bb = st->recv_bb;
    ProtobufCMessage *msg = NULL;
    int closed;

    st->recv_bb = NULL;
    if (ok && bb != NULL) {
        msg = unpack_msg(bb, st->m->desc);
        grpc_byte_buffer_destroy(bb);
        pthread_mutex_lock(&st->lock);
        closed = st->closed;
        pthread_mutex_unlock(&st->lock);
        if (msg == NULL) {
            /* The status goes out through the call's close path. */
            tt_grpc_stream_finish(st, GRPC_STATUS_INVALID_ARGUMENT, "message is not valid");
        } else {
            if (!closed && st->m->cbs.on_message != NULL)
                st->m->cbs.on_message(st->m->ud, st, msg);
            protobuf_c_message_free_unpacked(msg, NULL);
            pthread_mutex_lock(&st->lock);
            if (!st->closed && start_recv_locked(st) < 0)
                grpc_call_cancel(st->call, NULL);
            batch_done_locked(st);
            return;
        }
    } else if (bb != NULL) {
        grpc_byte_buffer_destroy(bb);
    }
    /* No message: the client half-closed, or the call is over. Reading stops here. */
    pthread_mutex_lock(&st->lock);
    batch_done_locked(st);
}

static void on_stream_close(struct tag *t, int ok)
{
    struct tt_grpc_stream *st = container_of(t, struct tt_grpc_stream, close_tag);
    grpc_status_code code;

    pthread_mutex_lock(&st->lock);
    st->closed = 1;
    code = st->status_sent && !st->cancelled && ok ? st->fin_code : GRPC_STATUS_CANCELLED;
    while (st->head != NULL) {
        struct sendq *q = st->head;
        st->head = q->next;
        grpc_byte_buffer_destroy(q->bb);
        free(q);
    }
    st->tail = NULL;
    pthread_mutex_unlock(&st->lock);
    if (st->m->cbs.on_close != NULL)
        st->m->cbs.on_close(st->m->ud, st, code);
    pthread_mutex_lock(&st->lock);
    st->batches--;         /* the close batch */
    batch_done_locked(st); /* the base hold */
}

static void serve_stream(struct incoming *in)
{
    struct tt_grpc_stream *st = calloc(1, sizeof(*st));
    grpc_op ops[2];

    if (st == NULL || peer_lookup(in->srv, in->call, &st->peer) < 0) {
        free(st);
        grpc_call_cancel_with_status(in->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory",
                                     NULL);
        grpc_call_unref(in->call);
        return;
    }
    pthread_mutex_init(&st->lock, NULL);
    st->refs = 1;
    st->batches = 1;
    st->srv = in->srv;
    st->m = in->m;
    st->call = in->call;
    st->fin_details = grpc_empty_slice();
    st->send_tag.fn = on_stream_send;
    st->recv_tag.fn = on_stream_recv;
    st->close_tag.fn = on_stream_close;

    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[1].data.recv_close_on_server.cancelled = &st->cancelled;
    st->batches++;
    if (grpc_call_start_batch(st->call, ops, 2, &st->close_tag, NULL) != GRPC_CALL_OK) {
        grpc_call_cancel(st->call, NULL);
        grpc_call_unref(st->call);
        stream_free(st);
        return;
    }
    if (st->m->cbs.on_open != NULL)
        st->m->cbs.on_open(st->m->ud, st, &st->peer.pub);
    pthread_mutex_lock(&st->lock);
    if (!st->closed && start_recv_locked(st) < 0)
        grpc_call_cancel(st->call, NULL);
    pthread_mutex_unlock(&st->lock);
}

/* Calls for methods nobody registered: gRPC core leaves them pending until someone asks
 * with grpc_server_request_call, so one such request stays posted to answer them
 * UNIMPLEMENTED at once. */
struct unknown_call {
    struct tag tag;
    struct tt_grpc_server *srv;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
};

static void on_unknown(struct tag *t, int ok);

static int request_unknown(struct tt_grpc_server *srv)
{
    struct unknown_call *u = calloc(1, sizeof(*u));

    if (u == NULL)
        return -ENOMEM;
    u->tag.fn = on_unknown;
    u->srv = srv;
    grpc_call_details_init(&u->details);
    grpc_metadata_array_init(&u->md);
    if (grpc_server_request_call(srv->server, &u->call, &u->details, &u->md, srv->cq, srv->cq,
                                 &u->tag) != GRPC_CALL_OK) {
        grpc_call_details_destroy(&u->details);
        grpc_metadata_array_destroy(&u->md);
        free(u);
        return -EIO;
    }
    return 0;
}

static void on_unknown(struct tag *t, int ok)
{
    struct unknown_call *u = (struct unknown_call *)t;
    struct unary_call *a;
    grpc_op ops[3];

    if (ok) {
        (void)request_unknown(u->srv);
        a = calloc(1, sizeof(*a));
        if (a == NULL) {
            grpc_call_cancel(u->call, NULL);
            grpc_call_unref(u->call);
        } else {
            a->tag.fn = on_unary_done;
            a->call = u->call;
            a->details = grpc_slice_from_static_string("unknown method");
            memset(ops, 0, sizeof(ops));
            ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
            ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
            ops[1].data.send_status_from_server.status = GRPC_STATUS_UNIMPLEMENTED;
            ops[1].data.send_status_from_server.status_details = &a->details;
            ops[2].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
            ops[2].data.recv_close_on_server.cancelled = &a->cancelled;
            if (grpc_call_start_batch(a->call, ops, 3, &a->tag, NULL) != GRPC_CALL_OK)
                on_unary_done(&a->tag, 0);
        }
    }
    grpc_call_details_destroy(&u->details);
    grpc_metadata_array_destroy(&u->md);
    free(u);
}

static void on_incoming(struct tag *t, int ok)
{
    struct incoming *in = (struct incoming *)t;

    if (!ok) {
        incoming_free(in); /* the server is shutting down */
        return;
    }
    /* Keep one request posted for the next call before serving this one. */
    if (request_call(in->srv, in->m) < 0)
        fprintf(stderr, "grpc_glue: cannot post a request for %s\n", in->m->path);
    if (in->m->streaming)
        serve_stream(in);
    else
        serve_unary(in);
    incoming_free(in);
}

static void on_shutdown(struct tag *t, int ok)
{
    struct tt_grpc_server *srv = container_of(t, struct tt_grpc_server, shutdown_tag);

    pthread_mutex_lock(&srv->lock);
    srv->shutdown_done = 1;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
}

static void *cq_main(void *arg)
{
    struct tt_grpc_server *srv = arg;

    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type == GRPC_OP_COMPLETE) {
            struct tag *t = ev.tag;
            t->fn(t, ev.success);
        }
    }
    return NULL;
}

/* Creates a server; see grpc_glue.h. */
struct tt_grpc_server *tt_grpc_server_new(void)
{
    struct tt_grpc_server *srv = calloc(1, sizeof(*srv));

    if (srv == NULL)
        return NULL;
    grpc_init();
    srv->server = grpc_server_create(NULL, NULL);
    srv->cq = grpc_completion_queue_create_for_next(NULL);
    if (srv->server == NULL || srv->cq == NULL)
        goto err;
    grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->cond, NULL);
    srv->shutdown_tag.fn = on_shutdown;
    return srv;
err:
    if (srv->server != NULL)
        grpc_server_destroy(srv->server);
    if (srv->cq != NULL)
        cq_destroy(srv->cq, 0);
    grpc_shutdown();
    free(srv);
    return NULL;
}

static int add_method(struct tt_grpc_server *srv, const char *path,
                      const ProtobufCMessageDescriptor *desc, struct method *tmpl)
{
    struct method *m;

    if (srv->started)
        return -EINVAL;
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return -ENOMEM;
    *m = *tmpl;
    m->desc = desc;
    m->path = strdup(path);
    if (m->path == NULL) {
        free(m);
        return -ENOMEM;
    }
    m->handle = grpc_server_register_method(
        srv->server, m->path, NULL,
        m->streaming ? GRPC_SRM_PAYLOAD_NONE : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
    if (m->handle == NULL) {
        free(m->path);
        free(m);
        return -EINVAL; /* registered twice */
    }
    m->next = srv->methods;
    srv->methods = m;
    return 0;
}

/* Registers a unary method. */
int tt_grpc_server_add_unary(struct tt_grpc_server *srv, const char *path,
                             const ProtobufCMessageDescriptor *req_desc, tt_grpc_unary_fn fn,
                             void *ud)
{
    struct method m = {.fn = fn, .ud = ud};

    return add_method(srv, path, req_desc, &m);
}

/* Registers a bidirectional streaming method. */
int tt_grpc_server_add_stream(struct tt_grpc_server *srv, const char *path,
                              const ProtobufCMessageDescriptor *req_desc,
                              const struct tt_grpc_stream_cbs *cbs, void *ud)
{
    struct method m = {.streaming = 1, .cbs = *cbs, .ud = ud};

    return add_method(srv, path, req_desc, &m);
}

/* Starts the server and the completion-queue thread. */
int tt_grpc_server_start(struct tt_grpc_server *srv)
{
    int r;

    if (srv->started)
        return -EINVAL;
    grpc_server_start(srv->server);
    srv->started = 1;
    for (struct method *m = srv->methods; m != NULL; m = m->next)
        if ((r = request_call(srv, m)) < 0)
            goto err;
    if ((r = request_unknown(srv)) < 0)
        goto err;
    if ((r = pthread_create(&srv->thread, NULL, cq_main, srv)) != 0) {
        r = -r;
        goto err;
    }
    return 0;
err:
    /* Let shutdown collect the requests already posted, with a thread to drain them. */
    srv->shutting_down = 1;
    grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
    grpc_server_cancel_all_calls(srv->server);
    grpc_completion_queue_shutdown(srv->cq);
    cq_main(srv);
    return r;
}

/* Serves one plaintext connection. */
int tt_grpc_server_add_fd(struct tt_grpc_server *srv, int fd, const char *peer_spiffe_id,
                          const char *peer_serial, const char *peer_address)
{
    struct fd_peer *p, *found = NULL;
    char *id = NULL, *serial = NULL, *address = NULL;

    if (!srv->started || srv->shutting_down || fd < 0)
        goto err_close;
    serial = strdup(peer_serial != NULL ? peer_serial : "");
    address = strdup(peer_address != NULL ? peer_address : "");
    if (serial == NULL || address == NULL ||
        (peer_spiffe_id != NULL && (id = strdup(peer_spiffe_id)) == NULL))
        goto err_nomem;
    pthread_mutex_lock(&srv->lock);
    /* A descriptor number is reused once gRPC closed the previous connection on it: the
     * new identity replaces the old one. */
    for (p = srv->peers; p != NULL; p = p->next)
        if (p->fd == fd)
            found = p;
    if (found == NULL && (found = calloc(1, sizeof(*found))) != NULL) {
        found->fd = fd;
        found->next = srv->peers;
        srv->peers = found;
    }
    if (found != NULL) {
        free(found->spiffe_id);
        free(found->serial);
        free(found->address);
        found->spiffe_id = id;
        found->serial = serial;
        found->address = address;
    }
    pthread_mutex_unlock(&srv->lock);
    if (found == NULL)
        goto err_nomem;

    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    grpc_server_add_channel_from_fd(srv->server, fd, creds);
    grpc_server_credentials_release(creds);
    return 0;

err_nomem:
    free(id);
    free(serial);
    free(address);
    close(fd);
    return -ENOMEM;
err_close:
    if (fd >= 0)
        close(fd);
    return -EINVAL;
}

/* Stops the server and its thread. */
void tt_grpc_server_shutdown(struct tt_grpc_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    if (!srv->started || srv->shutting_down) {
        pthread_mutex_unlock(&srv->lock);
        return;
    }
    srv->shutting_down = 1;
    pthread_mutex_unlock(&srv->lock);

    grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
    grpc_server_cancel_all_calls(srv->server);
    pthread_mutex_lock(&srv->lock);
    while (!srv->shutdown_done)
        pthread_cond_wait(&srv->cond, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    grpc_completion_queue_shutdown(srv->cq);
    pthread_join(srv->thread, NULL);
}

/* Frees the server. */
void tt_grpc_server_free(struct tt_grpc_server *srv)
{
    if (srv == NULL)
        return;
    tt_grpc_server_shutdown(srv);
    if (!srv->started) {
        /* Never started: nothing was posted on the queue. */
        grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
        grpc_completion_queue_shutdown(srv->cq);
        cq_main(srv);
    }
    grpc_server_destroy(srv->server);
    grpc_completion_queue_destroy(srv->cq);
    while (srv->methods != NULL) {
        struct method *m = srv->methods;
        srv->methods = m->next;
        free(m->path);
        free(m);
    }
    while (srv->peers != NULL) {
        struct fd_peer *p = srv->peers;
        srv->peers = p->next;
        free(p->spiffe_id);
        free(p->serial);
        free(p->address);
        free(p);
    }
    pthread_cond_destroy(&srv->cond);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
    grpc_shutdown();
}

/* Packs the response into the reply. */
void tt_grpc_reply_message(struct tt_grpc_reply *reply, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len > 0 ? len : 1);

    if (buf == NULL) {
        tt_grpc_reply_error(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    free(reply->payload);
    reply->payload = buf;
    reply->len = protobuf_c_message_pack(msg, buf);
    reply->code = GRPC_STATUS_OK;
    reply->details[0] = '\0';
    reply->set = 1;
}

/* Sets an error status. */
void tt_grpc_reply_error(struct tt_grpc_reply *reply, grpc_status_code code, const char *fmt, ...)
{
    va_list ap;

    free(reply->payload);
    reply->payload = NULL;
    reply->len = 0;
    reply->code = code;
    va_start(ap, fmt);
    vsnprintf(reply->details, sizeof(reply->details), fmt, ap);
    va_end(ap);
    reply->set = 1;
}

/* Queues a message on a server stream. */
int tt_grpc_stream_send(struct tt_grpc_stream *st, const ProtobufCMessage *msg)
{
    struct sendq *q = malloc(sizeof(*q));
    int r = 0;

    if (q == NULL)
        return -ENOMEM;
    q->next = NULL;
    q->bb = pack_msg(msg);
    pthread_mutex_lock(&st->lock);
    if (st->closed || st->finishing) {
        r = -EPIPE;
    } else {
        if (st->tail != NULL)
            st->tail->next = q;
        else
            st->head = q;
        st->tail = q;
        q = NULL;
        kick_send_locked(st);
    }
    pthread_mutex_unlock(&st->lock);
    if (q != NULL) {
        grpc_byte_buffer_destroy(q->bb);
        free(q);
    }
    return r;
}

/* Finishes a server stream after the queued messages. */
int tt_grpc_stream_finish(struct tt_grpc_stream *st, grpc_status_code code, const char *details)
{
    int r = 0;

    pthread_mutex_lock(&st->lock);
    if (st->closed || st->finishing) {
        r = -EPIPE;
    } else {
        st->finishing = 1;
        st->fin_code = code;
        grpc_slice_unref(st->fin_details);
        st->fin_details = grpc_slice_from_copied_string(details != NULL ? details : "");
        kick_send_locked(st);
    }
    pthread_mutex_unlock(&st->lock);
    return r;
}

/* The stream's peer. */
const struct tt_grpc_peer *tt_grpc_stream_peer(const struct tt_grpc_stream *st)
{
    return &st->peer.pub;
}

/* Attaches application data (not freed by the glue). */
void tt_grpc_stream_set_data(struct tt_grpc_stream *st, void *data)
{
    st->data = data;
}

/* The attached application data. */
void *tt_grpc_stream_get_data(const struct tt_grpc_stream *st)
{
    return st->data;
}

/* --- Client ---------------------------------------------------------------------------- */

struct tt_grpc_channel {
    grpc_channel *ch;
};

/* Creates a channel over a plaintext fd. */
struct tt_grpc_channel *tt_grpc_channel_new_from_fd(int fd)
{
    struct tt_grpc_channel *ch = calloc(1, sizeof(*ch));
    grpc_channel_credentials *creds;

    if (ch == NULL) {
        close(fd);
        return NULL;
    }
    grpc_init();
    creds = grpc_insecure_credentials_create();
    /* The target is only the :authority; the connection is the fd. */
    ch->ch = grpc_channel_create_from_fd("tether-control", fd, creds, NULL);
    grpc_channel_credentials_release(creds);
    if (ch->ch == NULL) {
        grpc_shutdown();
        free(ch);
        return NULL;
    }
    return ch;
}

/* Destroys a channel. */
void tt_grpc_channel_free(struct tt_grpc_channel *ch)
{
    if (ch == NULL)
        return;
    grpc_channel_destroy(ch->ch);
    free(ch);
    grpc_shutdown();
}

/* Makes one unary call and waits for it. */
int tt_grpc_call_unary(struct tt_grpc_channel *ch, const char *path, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *resp_desc, uint64_t timeout_ms,
                       ProtobufCMessage **resp, grpc_status_code *code, char *details,
                       size_t details_len)
{
    grpc_metadata_array md_init, md_trail;
    grpc_byte_buffer *req_bb = NULL, *resp_bb = NULL;
    grpc_slice status_details = grpc_empty_slice();
    grpc_completion_queue *cq;
    grpc_call *call;
    grpc_op ops[6];
    char tag;
    int r = 0;

    *resp = NULL;
    *code = GRPC_STATUS_UNKNOWN;
    if (details != NULL && details_len > 0)
        details[0] = '\0';
    cq = grpc_completion_queue_create_for_pluck(NULL);
    if (cq == NULL)
        return -ENOMEM;
    grpc_slice method = grpc_slice_from_copied_string(path);
    call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                    deadline_in(timeout_ms), NULL);
    grpc_slice_unref(method);
    if (call == NULL) {
        cq_destroy(cq, 1);
        return -EIO;
    }
    grpc_metadata_array_init(&md_init);
    grpc_metadata_array_init(&md_trail);
    req_bb = pack_msg(req);

    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = req_bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_init;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &resp_bb;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &md_trail;
    ops[5].data.recv_status_on_client.status = code;
    ops[5].data.recv_status_on_client.status_details = &status_details;
    if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK) {
        r = -EIO;
        goto out;
    }
    /* The call's deadline bounds this wait: gRPC completes the batch with
     * DEADLINE_EXCEEDED. */
    grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    copy_slice(status_details, details, details_len);
    if (*code == GRPC_STATUS_OK) {
        if (resp_bb == NULL || (*resp = unpack_msg(resp_bb, resp_desc)) == NULL) {
            *code = GRPC_STATUS_INTERNAL;
            if (details != NULL && details_len > 0)
                snprintf(details, details_len, "response is not a valid %s", resp_desc->name);
        }
    }
out:
    if (resp_bb != NULL)
        grpc_byte_buffer_destroy(resp_bb);
    grpc_byte_buffer_destroy(req_bb);
    grpc_slice_unref(status_details);
    grpc_metadata_array_destroy(&md_init);
    grpc_metadata_array_destroy(&md_trail);
    grpc_call_unref(call);
    cq_destroy(cq, 1);
    return r;
}

struct tt_grpc_client_stream {
    grpc_completion_queue *cq;
    grpc_call *call;
    const ProtobufCMessageDescriptor *desc;
    grpc_metadata_array md_init, md_trail;
    grpc_status_code status;
    grpc_slice details;
    grpc_byte_buffer *recv_bb;
    int recv_pending;   /* a RECV_MESSAGE batch is in flight */
    int got_md;         /* RECV_INITIAL_METADATA was asked for already */
    int status_pending; /* the SEND_INITIAL_METADATA + RECV_STATUS batch is in flight */
    int ended;
    char tag_send, tag_recv, tag_status; /* their addresses are the tags */
};

/* Opens a client stream. */
struct tt_grpc_client_stream *
tt_grpc_client_stream_open(struct tt_grpc_channel *ch, const char *path,
                           const ProtobufCMessageDescriptor *resp_desc)
{
    struct tt_grpc_client_stream *st = calloc(1, sizeof(*st));
    grpc_op ops[2];

    if (st == NULL)
        return NULL;
    st->desc = resp_desc;
    st->status = GRPC_STATUS_UNKNOWN;
    st->details = grpc_empty_slice();
    grpc_metadata_array_init(&st->md_init);
    grpc_metadata_array_init(&st->md_trail);
    st->cq = grpc_completion_queue_create_for_pluck(NULL);
    if (st->cq == NULL)
        goto err_free;
    grpc_slice method = grpc_slice_from_copied_string(path);
    st->call = grpc_channel_create_call(ch->ch, NULL, GRPC_PROPAGATE_DEFAULTS, st->cq, method, NULL,
                                        gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_slice_unref(method);
    if (st->call == NULL)
        goto err_cq;

    /* The status arrives when the call ends; this batch stays in flight until then. */
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[1].data.recv_status_on_client.trailing_metadata = &st->md_trail;
    ops[1].data.recv_status_on_client.status = &st->status;
    ops[1].data.recv_status_on_client.status_details = &st->details;
    if (grpc_call_start_batch(st->call, ops, 2, &st->tag_status, NULL) != GRPC_CALL_OK)
        goto err_call;
    st->status_pending = 1;
    return st;

err_call:
    grpc_call_unref(st->call);
err_cq:
    cq_destroy(st->cq, 1);
err_free:
    grpc_metadata_array_destroy(&st->md_init);
    grpc_metadata_array_destroy(&st->md_trail);
    free(st);
    return NULL;
}

/* Collects the final status (the call is over, or cancelled just before). */
static void client_stream_end(struct tt_grpc_client_stream *st)
{
    if (st->status_pending) {
        grpc_completion_queue_pluck(st->cq, &st->tag_status, gpr_inf_future(GPR_CLOCK_REALTIME),
                                    NULL);
        st->status_pending = 0;
    }
    st->ended = 1;
}

/* Sends one message and waits until gRPC took it. */
int tt_grpc_client_stream_send(struct tt_grpc_client_stream *st, const ProtobufCMessage *msg,
                               uint64_t timeout_ms)
{
    grpc_op op;
    grpc_event ev;

    if (st->ended)
        return -EPIPE;
    memset(&op, 0, sizeof(op));
    op.op = GRPC_OP_SEND_MESSAGE;
    op.data.send_message.send_message = pack_msg(msg);
    if (grpc_call_start_batch(st->call, &op, 1, &st->tag_send, NULL) != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(op.data.send_message.send_message);
        return -EPIPE;
    }
    ev = grpc_completion_queue_pluck(st->cq, &st->tag_send, deadline_in(timeout_ms), NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
        grpc_call_cancel(st->call, NULL);
        ev = grpc_completion_queue_pluck(st->cq, &st->tag_send, gpr_inf_future(GPR_CLOCK_REALTIME),
                                         NULL);
        grpc_byte_buffer_destroy(op.data.send_message.send_message);
        return -ETIMEDOUT;
    }
    grpc_byte_buffer_destroy(op.data.send_message.send_message);
    return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -EPIPE;
}

/* Receives the next message, waiting at most timeout_ms. */
int tt_grpc_client_stream_recv(struct tt_grpc_client_stream *st, uint64_t timeout_ms,
                               ProtobufCMessage **msg)
{
    grpc_event ev;

    *msg = NULL;
    if (st->ended)
        return -EPIPE;
    if (!st->recv_pending) {
        grpc_op ops[2];
        size_t n = 0;
        memset(ops, 0, sizeof(ops));
        if (!st->got_md) {
            ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
            ops[n++].data.recv_initial_metadata.recv_initial_metadata = &st->md_init;
        }
        ops[n].op = GRPC_OP_RECV_MESSAGE;
        ops[n++].data.recv_message.recv_message = &st->recv_bb;
        if (grpc_call_start_batch(st->call, ops, n, &st->tag_recv, NULL) != GRPC_CALL_OK) {
            grpc_call_cancel(st->call, NULL);
            client_stream_end(st);
            return -EPIPE;
        }
        st->got_md = 1;
        st->recv_pending = 1;
    }
    ev = grpc_completion_queue_pluck(st->cq, &st->tag_recv, deadline_in(timeout_ms), NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT)
        return 0; /* the receive stays posted for the next call */
    st->recv_pending = 0;
    if (ev.type == GRPC_OP_COMPLETE && ev.success && st->recv_bb != NULL) {
        *msg = unpack_msg(st->recv_bb, st->desc);
        grpc_byte_buffer_destroy(st->recv_bb);
        st->recv_bb = NULL;
        if (*msg != NULL)
            return 1;
        grpc_call_cancel_with_status(st->call, GRPC_STATUS_INTERNAL, "unparsable message", NULL);
        client_stream_end(st);
        /* Our own cancellation's status is what the caller must see. */
        st->status = GRPC_STATUS_INTERNAL;
        grpc_slice_unref(st->details);
        st->details = grpc_slice_from_copied_string("unparsable message from the server");
        return -EPIPE;
    }
    /* No message: the server ended the call (its status follows) or it broke. */
    client_stream_end(st);
    return -EPIPE;
}

/* The final status. */
grpc_status_code tt_grpc_client_stream_status(const struct tt_grpc_client_stream *st, char *details,
                                              size_t details_len)
{
    if (!st->ended) {
        if (details != NULL && details_len > 0)
            details[0] = '\0';
        return GRPC_STATUS_UNKNOWN;
    }
    copy_slice(st->details, details, details_len);
    return st->status;
}

/* Cancels and frees a client stream. */
void tt_grpc_client_stream_close(struct tt_grpc_client_stream *st)
{
    if (st == NULL)
        return;
    if (!st->ended)
        grpc_call_cancel(st->call, NULL);
    if (st->recv_pending) {
        grpc_completion_queue_pluck(st->cq, &st->tag_recv, gpr_inf_future(GPR_CLOCK_REALTIME),
                                    NULL);
        if (st->recv_bb != NULL)
            grpc_byte_buffer_destroy(st->recv_bb);
    }
    client_stream_end(st);
    grpc_call_unref(st->call);
    cq_destroy(st->cq, 1);
    grpc_slice_unref(st->details);
    grpc_metadata_array_destroy(&st->md_init);
    grpc_metadata_array_destroy(&st->md_trail);
    free(st);
}
