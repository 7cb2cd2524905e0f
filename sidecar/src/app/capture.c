/* The capture check (capture.h): two probes per round, each a TCP connect, a read of the
 * canary's answer, and a deadline. A failed direction is logged when it changes. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "app/capture.h"
#include "core/log.h"
#include "net/canary.h"

enum { OUT, IN, N_DIR };

#define TT_CAPTURE_FIRST_MS 200

static const char *const dir_names[N_DIR] = {"outbound", "inbound"};

/* One direction's probe connection. */
struct probe {
    struct tt_capture *owner;
    int dir;
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    bool open;    /* tcp initialized, needs uv_close */
    bool running; /* this round's probe has not finished */
    char got[32]; /* the answer read so far */
    size_t n_got;
    const char *state; /* "unchecked", "ok", "failed" */
};

struct tt_capture {
    uv_loop_t *loop;
    struct tt_addr target[N_DIR];
    uint64_t interval_ms, timeout_ms;
    uv_timer_t round;   /* next round */
    uv_timer_t timeout; /* this round's deadline */
    struct probe probes[N_DIR];
    int64_t checked_unix;
    int pending_closes;
    bool closing;
};

static void maybe_free(struct tt_capture *c)
{
    if (c->closing && c->pending_closes == 0)
        free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct tt_capture *c = h->data;

    c->pending_closes--;
    maybe_free(c);
}

static void on_probe_closed(uv_handle_t *h)
{
    struct probe *p = h->data;
    struct tt_capture *c = p->owner;

    c->pending_closes--;
    maybe_free(c);
}

/* Ends p's probe with `ok`; logs a change of state. */
static void probe_finish(struct probe *p, bool ok)
{
    const char *state = ok ? "ok" : "failed";

    if (!p->running)
        return;
    p->running = false;
    if (p->open) {
        p->open = false;
        p->owner->pending_closes++;
        uv_close((uv_handle_t *)&p->tcp, on_probe_closed);
    }
    if (strcmp(p->state, state) != 0)
        tt_log(ok ? TT_LOG_INFO : TT_LOG_ERROR, "capture_check",
               TT_LS("direction", dir_names[p->dir]), TT_LS("result", state),
               TT_LS("canary", p->owner->target[p->dir].text),
               TT_LS("effect", ok ? NULL : "/ready fails until the capture rules work"));
    p->state = state;
    p->owner->checked_unix = tt_now_unix();
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct probe *p = h->data;

    (void)suggested;
    *buf = uv_buf_init(p->got + p->n_got, (unsigned)(sizeof(p->got) - 1 - p->n_got));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    struct probe *p = s->data;
    size_t want = strlen(TT_CANARY_ANSWER);

    (void)buf;
    if (n < 0) {
        probe_finish(p, false);
        return;
    }
    p->n_got += (size_t)n;
    if (p->n_got >= want)
        probe_finish(p, memcmp(p->got, TT_CANARY_ANSWER, want) == 0);
    else if (p->n_got >= sizeof(p->got) - 1)
        probe_finish(p, false);
}

static void on_connect(uv_connect_t *req, int status)
{
    struct probe *p = tt_container_of(req, struct probe, connect_req);

    if (!p->running)
        return;
    if (status < 0 || uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read) < 0)
        probe_finish(p, false);
}

static void on_timeout(uv_timer_t *t)
{
    struct tt_capture *c = t->data;

    for (int d = 0; d < N_DIR; d++)
        probe_finish(&c->probes[d], false);
}

/* Starts direction d's probe of this round. Returns false when the last one has not
 * finished (this round skips it; its deadline stands). */
static bool probe_start(struct tt_capture *c, int d)
{
    struct probe *p = &c->probes[d];

    if (p->running || p->open)
        return false;
    memset(p->got, 0, sizeof(p->got));
    p->n_got = 0;
    p->running = true;
    if (uv_tcp_init(c->loop, &p->tcp) < 0) {
        probe_finish(p, false);
        return true;
    }
    p->tcp.data = p;
    p->open = true;
    if (uv_tcp_connect(&p->connect_req, &p->tcp, (const struct sockaddr *)&c->target[d].ss,
                       on_connect) < 0)
        probe_finish(p, false);
    return true;
}

static void on_round(uv_timer_t *t)
{
    struct tt_capture *c = t->data;
    bool started = false;

    for (int d = 0; d < N_DIR; d++)
        started |= probe_start(c, d);
    /* A deadline is armed only with new probes: re-arming it for a probe still running
     * would postpone that probe's failure for ever. */
    if (started)
        uv_timer_start(&c->timeout, on_timeout, c->timeout_ms, 0);
}

/* Starts the check (capture.h). */
struct tt_capture *tt_capture_start(uv_loop_t *loop, const struct tt_addr *outbound_canary,
                                    const struct tt_addr *inbound_canary, uint64_t interval_ms,
                                    uint64_t timeout_ms)
{
    struct tt_capture *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->loop = loop;
    c->target[OUT] = *outbound_canary;
    c->target[IN] = *inbound_canary;
    c->interval_ms = interval_ms;
    /* Each probe ends before the next round starts. */
    c->timeout_ms = timeout_ms < interval_ms * 3 / 4 ? timeout_ms : interval_ms * 3 / 4;
    for (int d = 0; d < N_DIR; d++) {
        c->probes[d].owner = c;
        c->probes[d].dir = d;
        c->probes[d].state = "unchecked";
    }
    uv_timer_init(loop, &c->round);
    uv_timer_init(loop, &c->timeout);
    c->round.data = c->timeout.data = c;
    /* The first round once the workers had a moment to start listening. */
    uv_timer_start(&c->round, on_round, TT_CAPTURE_FIRST_MS, interval_ms);
    return c;
}

/* The latest results. */
void tt_capture_status(const struct tt_capture *c, struct tt_capture_status *out)
{
    out->outbound = c->probes[OUT].state;
    out->inbound = c->probes[IN].state;
    out->ready = strcmp(out->outbound, "ok") == 0 && strcmp(out->inbound, "ok") == 0;
    out->checked_unix = c->checked_unix;
}

/* Stops checking (capture.h). */
void tt_capture_close(struct tt_capture *c)
{
    if (c == NULL)
        return;
    c->closing = true;
    for (int d = 0; d < N_DIR; d++) {
        struct probe *p = &c->probes[d];
        p->running = false;
        if (p->open) {
            p->open = false;
            c->pending_closes++;
            uv_close((uv_handle_t *)&p->tcp, on_probe_closed);
        }
    }
    c->pending_closes += 2;
    uv_close((uv_handle_t *)&c->round, on_handle_closed);
    uv_close((uv_handle_t *)&c->timeout, on_handle_closed);
}
