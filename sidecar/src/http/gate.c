/* The inbound request gate (gate.h). Requests wait in a small FIFO for their answers, in
 * the order they arrived: an answer of the workload completes the oldest request that was
 * passed on (http/h1resp.h finds where each one ends), and an answer of the gate's own
 * (403, 400) is written as soon as every request before it has been answered, so answers
 * reach the client in request order. Bytes for the workload are gathered in one buffer
 * per feed and written once. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/errors.h"
#include "core/util.h"
#include "http/detect.h"
#include "http/gate.h"
#include "http/h1.h"
#include "http/h1resp.h"
#include "policy/policy.h"

#define GATE_PATH_LOG   256         /* path bytes kept for the access line */
#define GATE_HELD_MAX   (256 << 10) /* client bytes held while the pipeline is full */
#define GATE_FLUSH_SIZE (16 << 10)  /* bytes gathered for the workload before a write */
#define GATE_ANSWER_MAX 4096        /* the gate's own answers */

enum gate_mode {
    G_DETECT,  /* audit only: the first bytes decide between HTTP and an opaque relay */
    G_HTTP,    /* reading requests */
    G_UPGRADE, /* an upgrade or CONNECT was passed on: the rest waits for its answer */
    G_OPAQUE,  /* bytes pass both ways unread */
    G_REFUSED, /* the gate's last answer is queued or written; client bytes are dropped */
};

/* One request, from its head until its answer is complete. */
struct greq {
    char method[24];
    char path[GATE_PATH_LOG];
    uint64_t seq;
    uint64_t start_us;
    uint64_t req_bytes, resp_bytes;
    int status;         /* final status, once known */
    const char *rule;   /* deciding rule, NULL when not evaluated */
    bool forwarded;     /* passed on: the workload answers it */
    int local_status;   /* else the gate answers with this status */
    const char *reason; /* x-tether-reason of the gate's answer */
    int refused_reason; /* enum tt_h1_reason */
    bool close_after;   /* the gate's answer ends the connection */
};

struct tt_gate {
    struct tt_gate_config cfg;
    struct tt_gate_io io;
    struct tt_h1 *h1;
    struct tt_h1resp *resp;
    enum gate_mode mode;
    bool finished;
    bool resp_ended; /* h1resp's on_end saw a final response end */
    uint64_t now_us;

    uint64_t next_seq;

    /* The request whose body is being read: passed on (framed anew) or dropped. */
    uint64_t body_seq;
    bool body_forward;
    bool body_chunked;

    char *held; /* client bytes not read yet */
    size_t held_len, held_cap;
    char *out; /* bytes for the workload, gathered */
    size_t out_len, out_cap;
    int error;

    /* The requests read and not yet answered, in order. */
    size_t q_head, q_len;
    size_t cap;      /* requests read ahead at most (cfg.pipeline_max) */
    struct greq q[]; /* ring of cap + 1: one slot beyond the pipeline for a refusal */
};

/* ---- the FIFO ---------------------------------------------------------------------- */

static struct greq *q_at(struct tt_gate *g, size_t i)
{
    return &g->q[(g->q_head + i) % (g->cap + 1)];
}

static struct greq *q_front(struct tt_gate *g)
{
    return g->q_len > 0 ? q_at(g, 0) : NULL;
}

/* The queued request with sequence number seq, or NULL once it has been answered. */
static struct greq *q_find(struct tt_gate *g, uint64_t seq)
{
    struct greq *front = q_front(g);

    if (front == NULL || seq < front->seq || seq - front->seq >= g->q_len)
        return NULL;
    return q_at(g, (size_t)(seq - front->seq));
}

/* A new request at the back; NULL when even the refusal slot is taken. */
static struct greq *q_push(struct tt_gate *g)
{
    struct greq *e;

    if (g->q_len == g->cap + 1)
        return NULL;
    e = q_at(g, g->q_len++);
    memset(e, 0, sizeof(*e));
    e->seq = g->next_seq++;
    e->start_us = g->now_us;
    return e;
}

/* Reports the front request as over and drops it. */
static void q_complete_front(struct tt_gate *g)
{
    struct greq *e = q_front(g);
    struct tt_gate_request rq = {
        .method = e->method,
        .path = e->path,
        .status = e->status,
        .request_bytes = e->req_bytes,
        .response_bytes = e->resp_bytes,
        .duration_us = g->now_us > e->start_us ? g->now_us - e->start_us : 0,
        .rule = e->rule,
        .reason = e->reason,
        .denied = e->local_status == 403,
        .refused_reason = e->refused_reason,
    };

    if (g->io.on_request != NULL)
        g->io.on_request(g->io.ud, &rq);
    g->q_head = (g->q_head + 1) % (g->cap + 1);
    g->q_len--;
}

/* ---- output ------------------------------------------------------------------------ */

/* Makes room for `need` bytes in *buf (capacity *cap, doubled as needed). Returns 0 or
 * -ENOMEM (*buf unchanged). */
static int reserve(char **buf, size_t *cap, size_t need)
{
    size_t n = *cap > 0 ? *cap : 4096;
    char *p;

    if (need <= *cap)
        return 0;
    while (n < need)
        n *= 2;
    if ((p = realloc(*buf, n)) == NULL)
        return -ENOMEM;
    *buf = p;
    *cap = n;
    return 0;
}

/* Appends bytes for the workload to the gathered output. */
static int out_put(struct tt_gate *g, const char *data, size_t len)
{
    if (reserve(&g->out, &g->out_cap, g->out_len + len) < 0)
        return -ENOMEM;
    memcpy(g->out + g->out_len, data, len);
    g->out_len += len;
    return 0;
}

static int out_str(struct tt_gate *g, const char *s)
{
    return out_put(g, s, strlen(s));
}

/* Writes the gathered output to the workload. */
static int out_flush(struct tt_gate *g)
{
    int r = 0;

    if (g->out_len > 0)
        r = g->io.to_upstream(g->io.ud, g->out, g->out_len);
    g->out_len = 0;
    return r;
}

/* Answers the front request with the gate's own answer. */
static int answer_front(struct tt_gate *g)
{
    struct greq *e = q_front(g);
    char buf[GATE_ANSWER_MAX];
    int n = tt_h1_write_error(buf, sizeof(buf), e->local_status, e->reason,
                              e->local_status == 403 ? e->rule : NULL, e->close_after);
    int r;

    if (n < 0)
        return n;
    r = g->io.to_client(g->io.ud, buf, (size_t)n);
    if (r < 0)
        return r;
    e->status = e->local_status;
    e->resp_bytes = (uint64_t)n;
    if (e->close_after)
        g->finished = true;
    q_complete_front(g);
    return 0;
}

/* Writes the gate's answers that have reached the front of the FIFO. */
static int answer_ready(struct tt_gate *g)
{
    struct greq *e;

    while (!g->finished && (e = q_front(g)) != NULL && !e->forwarded) {
        int r = answer_front(g);
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- requests ---------------------------------------------------------------------- */

/* True when header `name` is one the gate frames anew (it is not passed on as sent). */
static bool framing_header(const char *name)
{
    return strcasecmp(name, "content-length") == 0 || strcasecmp(name, "transfer-encoding") == 0;
}

/* Writes an allowed request's head for the workload: the method, the normalized path (the
 * one policy saw) and query, the client's fields but its framing, and framing of our own
 * for the body the reader will hand over de-chunked. */
static int forward_head(struct tt_gate *g, const struct tt_h1_head *h)
{
    int r;
    char line[64];

    r = out_str(g, h->method);
    r = r ?: out_str(g, " ");
    if (h->connect || h->path == NULL) {
        r = r ?: out_str(g, h->target);
    } else {
        r = r ?: out_str(g, h->path);
        if (h->query != NULL) {
            r = r ?: out_str(g, "?");
            r = r ?: out_str(g, h->query);
        }
    }
    r = r ?: out_str(g, h->minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
    for (size_t i = 0; i < h->n_headers && r == 0; i++) {
        const struct tt_h1_header *f = &h->headers[i];
        if (framing_header(f->name))
            continue;
        r = out_put(g, f->name, f->name_len);
        r = r ?: out_str(g, ": ");
        r = r ?: out_put(g, f->value, f->value_len);
        r = r ?: out_str(g, "\r\n");
    }
    if (r == 0 && h->chunked) {
        r = out_str(g, "Transfer-Encoding: chunked\r\n");
    } else if (r == 0 && h->content_length >= 0) {
        r = out_str(g, "Content-Length: ");
        r = r ?: out_put(g, line, tt_u64_text((uint64_t)h->content_length, line));
        r = r ?: out_str(g, "\r\n");
    }
    return r ?: out_str(g, "\r\n");
}

static int on_req_head(void *ud, const struct tt_h1_head *h)
{
    struct tt_gate *g = ud;
    struct tt_policy_verdict v;
    const char *path = h->path != NULL ? h->path : h->target;
    struct greq *e = q_push(g);
    int r;

    if (e == NULL)
        return -ENOBUFS; /* cannot happen: the reader is paused while the pipeline is full */
    tt_str_copy(e->method, sizeof(e->method), h->method);
    tt_str_copy(e->path, sizeof(e->path), path);
    if (g->cfg.policy != NULL) {
        tt_policy_check_request(g->cfg.policy, g->cfg.caller, g->cfg.self, g->cfg.port, h->method,
                                path, &v);
    } else {
        /* No policy: every verified caller is allowed (README "Policy"). */
        memset(&v, 0, sizeof(v));
        v.allowed = true;
        v.rule = TT_POLICY_RULE_DEFAULT;
        v.rule_name = "no-policy";
    }
    if (g->io.on_verdict != NULL)
        g->io.on_verdict(g->io.ud, &v);
    e->rule = v.rule_name;
    g->body_seq = e->seq;
    g->body_chunked = h->chunked;
    g->body_forward = v.allowed;
    if (v.allowed) {
        e->forwarded = true;
        r = g->resp != NULL ? tt_h1resp_expect(g->resp, h->method, h->upgrade && !h->connect) : 0;
        r = r ?: forward_head(g, h);
        if (r < 0)
            return r;
        if (h->upgrade)
            g->mode = G_UPGRADE;
    } else {
        e->local_status = 403;
        e->reason = "policy_denied";
        /* The connection cannot go on where the client's next bytes are unknown: after a
         * refused upgrade or CONNECT, or a body the client may hold back waiting for
         * 100 Continue; and where the client asked for the end. */
        e->close_after = h->upgrade || !h->keep_alive ||
                         (h->expect_continue && (h->chunked || h->content_length > 0));
        if (e->close_after)
            g->mode = G_REFUSED;
    }
    r = answer_ready(g);
    if (r < 0)
        return r;
    /* An upgrade or CONNECT is read to its end (the reader stops by itself there: its
     * head's last byte is only taken then); a full pipeline stops the reader now. */
    return g->q_len >= g->cap && g->mode == G_HTTP ? TT_H1_PAUSE : 0;
}

static int on_req_body(void *ud, const char *data, size_t len)
{
    struct tt_gate *g = ud;
    struct greq *e = q_find(g, g->body_seq);
    char line[32];
    int r = 0;

    if (e != NULL)
        e->req_bytes += len;
    if (!g->body_forward || len == 0)
        return 0;
    if (g->body_chunked) {
        snprintf(line, sizeof(line), "%zx\r\n", len);
        r = out_str(g, line);
    }
    r = r ?: out_put(g, data, len);
    if (r == 0 && g->body_chunked)
        r = out_str(g, "\r\n");
    if (r == 0 && g->out_len >= GATE_FLUSH_SIZE)
        r = out_flush(g);
    return r;
}

static int on_req_end(void *ud, const struct tt_h1_header *trailers, size_t n_trailers)
{
    struct tt_gate *g = ud;
    int r = 0;

    if (g->body_forward && g->body_chunked) {
        r = out_str(g, "0\r\n");
        for (size_t i = 0; i < n_trailers && r == 0; i++) {
            r = out_put(g, trailers[i].name, trailers[i].name_len);
            r = r ?: out_str(g, ": ");
            r = r ?: out_put(g, trailers[i].value, trailers[i].value_len);
            r = r ?: out_str(g, "\r\n");
        }
        r = r ?: out_str(g, "\r\n");
    }
    g->body_forward = false;
    return r;
}

static const struct tt_h1_callbacks req_callbacks = {
    .on_head = on_req_head,
    .on_body = on_req_body,
    .on_end = on_req_end,
};

/* The client's bytes are not an acceptable request: queue the refusal that ends the
 * connection (after the answers owed before it). */
static int refuse(struct tt_gate *g)
{
    enum tt_h1_reason reason = tt_h1_reason(g->h1);
    struct greq *e = q_push(g);

    g->mode = G_REFUSED;
    g->body_forward = false;
    if (e == NULL)
        return TT_E_HTTP;
    e->local_status = tt_h1_status(g->h1);
    e->reason = tt_h1_reason_name(reason);
    e->refused_reason = (int)reason;
    e->close_after = true;
    return answer_ready(g);
}

/* ---- client bytes ------------------------------------------------------------------ */

/* Keeps data[0..len) behind the held bytes. */
static int hold(struct tt_gate *g, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    if (g->held_len + len > GATE_HELD_MAX)
        return -ENOBUFS;
    if (reserve(&g->held, &g->held_cap, g->held_len + len) < 0)
        return -ENOMEM;
    memmove(g->held + g->held_len, data, len);
    g->held_len += len;
    return 0;
}

/* Reads requests from data[0..len) while the pipeline has room; returns how many bytes
 * were used (the rest must be held), or <0. */
static long read_requests(struct tt_gate *g, const char *data, size_t len)
{
    size_t used = 0;

    while (used < len && g->mode == G_HTTP && g->q_len < g->cap) {
        if (tt_h1_done(g->h1) && !tt_h1_upgraded(g->h1))
            return (long)len; /* no keep-alive: nothing after that request is read */
        long r = tt_h1_feed(g->h1, data + used, len - used);
        if (r == TT_E_HTTP) {
            int rr = refuse(g);
            return rr < 0 ? rr : (long)len; /* the rest is dropped */
        }
        if (r < 0)
            return r;
        used += (size_t)r;
        if (r == 0)
            break;
    }
    return (long)used;
}

/* Passes on what the mode allows of data[0..len) and holds the rest. */
static int take_client(struct tt_gate *g, const char *data, size_t len)
{
    long used = 0;
    int r;

    switch (g->mode) {
    case G_DETECT: {
        enum tt_detect_proto p = tt_detect_check((const uint8_t *)data, len, TT_DETECT_LIMIT);
        if (p == TT_DETECT_MORE)
            return hold(g, data, len);
        g->mode = p == TT_DETECT_HTTP1 ? G_HTTP : G_OPAQUE;
        return take_client(g, data, len);
    }
    case G_OPAQUE:
        r = out_flush(g);
        return r ?: g->io.to_upstream(g->io.ud, data, len);
    case G_REFUSED:
        return 0;
    case G_HTTP:
        used = read_requests(g, data, len);
        if (used < 0)
            return (int)used;
        break;
    case G_UPGRADE:
        break;
    }
    r = out_flush(g);
    if (r < 0 || g->mode == G_REFUSED)
        return r; /* after the gate's last answer, the rest is dropped */
    return hold(g, data + used, len - (size_t)used);
}

/* Feeds the held bytes again (the pipeline made room, an upgrade was answered). */
static int release_held(struct tt_gate *g)
{
    char *data = g->held;
    size_t len = g->held_len;
    int r;

    if (len == 0)
        return 0;
    g->held = NULL;
    g->held_len = g->held_cap = 0;
    r = take_client(g, data, len);
    free(data);
    return r;
}

int tt_gate_from_client(struct tt_gate *g, const char *data, size_t len, uint64_t now_us)
{
    g->now_us = now_us;
    if (g->error < 0)
        return g->error;
    if (g->finished || g->mode == G_REFUSED)
        return 0;
    if (g->held_len > 0) {
        int r = hold(g, data, len);
        return r < 0 ? (g->error = r) : (g->error = release_held(g));
    }
    int r = take_client(g, data, len);
    return r < 0 ? (g->error = r) : 0;
}

/* ---- workload bytes ---------------------------------------------------------------- */

static int on_resp_head(void *ud, int status, bool keep_alive)
{
    struct tt_gate *g = ud;
    struct greq *e = q_front(g);

    (void)keep_alive;
    if (e != NULL && (status >= 200 || status == 101))
        e->status = status;
    return 0;
}

static int on_resp_end(void *ud, int status)
{
    struct tt_gate *g = ud;

    if (status < 200 && status != 101)
        return 0; /* an interim answer: the request waits for its final one */
    g->resp_ended = true;
    return TT_H1_PAUSE;
}

static const struct tt_h1resp_callbacks resp_callbacks = {
    .on_head = on_resp_head,
    .on_end = on_resp_end,
};

/* The workload answered an upgrade or CONNECT: it accepted (both ways opaque from now on)
 * or declined (the client's next bytes are requests again). */
static int upgrade_answered(struct tt_gate *g, bool accepted)
{
    if (accepted) {
        g->mode = G_OPAQUE;
        return release_held(g);
    }
    tt_h1_free(g->h1);
    g->h1 = tt_h1_new(NULL, &req_callbacks, g);
    if (g->h1 == NULL)
        return -ENOMEM;
    g->mode = G_HTTP;
    return release_held(g);
}

int tt_gate_from_upstream(struct tt_gate *g, const char *data, size_t len, uint64_t now_us)
{
    int r = 0;

    if (g->resp == NULL)
        return -EINVAL; /* caller_reads_responses: tt_gate_response_done */
    g->now_us = now_us;
    if (g->error < 0)
        return g->error;
    if (g->mode == G_DETECT) {
        /* The workload spoke first: not HTTP (audit only, where this mode exists). */
        g->mode = G_OPAQUE;
        if ((r = release_held(g)) < 0)
            return g->error = r;
    }
    while (len > 0 && !g->finished) {
        if (g->mode == G_OPAQUE || tt_h1resp_done(g->resp)) {
            /* After an upgrade the bytes are the new protocol's; after a last response
             * nothing more is expected, and what comes is passed on as the client's. */
            r = g->io.to_client(g->io.ud, data, len);
            break;
        }
        long n = tt_h1resp_feed(g->resp, data, len);
        if (n < 0) {
            r = (int)n;
            break;
        }
        struct greq *e = q_front(g);
        if (e != NULL)
            e->resp_bytes += (uint64_t)n;
        if (n > 0 && (r = g->io.to_client(g->io.ud, data, (size_t)n)) < 0)
            break;
        data += n;
        len -= (size_t)n;
        if (g->resp_ended) {
            g->resp_ended = false;
            bool was_upgrade = g->mode == G_UPGRADE && e != NULL && g->q_len == 1;
            if (e != NULL)
                q_complete_front(g);
            if ((r = answer_ready(g)) < 0)
                break;
            if (was_upgrade && (r = upgrade_answered(g, tt_h1resp_upgraded(g->resp))) < 0)
                break;
            if (g->mode == G_HTTP && g->held_len > 0 && g->q_len < g->cap &&
                (r = release_held(g)) < 0)
                break;
        } else if (n == 0) {
            break;
        }
    }
    if (r < 0)
        g->error = r;
    return r;
}

int tt_gate_response_done(struct tt_gate *g, int status, uint64_t bytes, uint64_t now_us)
{
    struct greq *e;
    int r;

    if (g->resp != NULL)
        return -EINVAL;
    g->now_us = now_us;
    if (g->error < 0)
        return g->error;
    e = q_front(g);
    if (g->finished || e == NULL || !e->forwarded)
        return 0; /* the gate answered it (or will): no response of the workload's */
    bool was_upgrade = g->mode == G_UPGRADE && g->q_len == 1;
    e->status = status;
    e->resp_bytes += bytes;
    q_complete_front(g);
    r = answer_ready(g);
    if (r == 0 && was_upgrade)
        r = upgrade_answered(g, status == 101);
    if (r == 0 && g->mode == G_HTTP && g->held_len > 0 && g->q_len < g->cap)
        r = release_held(g);
    if (r < 0)
        g->error = r;
    return r;
}

/* The workload's close. A response it cut short was passed on as it came: the client
 * sees the cut from its framing and the close that follows, so the gate only stops (no
 * answer of its own may follow a cut one) and the request is reported unanswered. */
int tt_gate_upstream_eof(struct tt_gate *g, uint64_t now_us)
{
    int r;

    g->now_us = now_us;
    if (g->mode == G_OPAQUE || g->finished || g->resp == NULL)
        return 0; /* caller_reads_responses: its reader finishes the response */
    r = tt_h1resp_finish(g->resp);
    if (r < 0) {
        struct greq *e = q_front(g);
        if (e != NULL)
            e->status = 0;
        g->finished = true;
        return 0;
    }
    if (g->resp_ended) {
        g->resp_ended = false;
        if (q_front(g) != NULL)
            q_complete_front(g);
        r = answer_ready(g);
    }
    return r;
}

int tt_gate_client_eof(struct tt_gate *g)
{
    if (g->mode == G_DETECT) {
        /* Too few bytes to be a request: an opaque relay (audit only). */
        g->mode = G_OPAQUE;
        return release_held(g);
    }
    if (g->mode != G_HTTP)
        return 0;
    int r = tt_h1_finish(g->h1);
    return r < 0 ? r : out_flush(g);
}

bool tt_gate_wants_client(const struct tt_gate *g)
{
    return !g->finished && g->mode != G_REFUSED && !(g->held_len > 0 && g->mode != G_DETECT);
}

bool tt_gate_finished(const struct tt_gate *g)
{
    return g->finished;
}

/* ---- life -------------------------------------------------------------------------- */

struct tt_gate *tt_gate_new(const struct tt_gate_config *cfg, const struct tt_gate_io *io)
{
    size_t cap = cfg->pipeline_max > 0 && cfg->pipeline_max < TT_GATE_PIPELINE_MAX
                     ? cfg->pipeline_max
                     : TT_GATE_PIPELINE_MAX;
    struct tt_gate *g = calloc(1, sizeof(*g) + (cap + 1) * sizeof(g->q[0]));

    if (g == NULL)
        return NULL;
    g->cap = cap;
    g->cfg = *cfg;
    g->io = *io;
    g->mode = cfg->enforce ? G_HTTP : G_DETECT;
    g->h1 = tt_h1_new(NULL, &req_callbacks, g);
    if (!cfg->caller_reads_responses)
        g->resp = tt_h1resp_new(&resp_callbacks, g);
    if (g->h1 == NULL || (g->resp == NULL && !cfg->caller_reads_responses)) {
        tt_gate_free(g, 0);
        return NULL;
    }
    return g;
}

void tt_gate_free(struct tt_gate *g, uint64_t now_us)
{
    if (g == NULL)
        return;
    g->now_us = now_us;
    while (g->q_len > 0)
        q_complete_front(g);
    tt_h1_free(g->h1);
    tt_h1resp_free(g->resp);
    free(g->held);
    free(g->out);
    free(g);
}
