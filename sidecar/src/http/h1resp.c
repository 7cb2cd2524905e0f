/* The HTTP/1.x response framing reader (see h1resp.h). llhttp in HTTP_RESPONSE mode does
 * all the parsing; this module tells it what only the request knows (a response to HEAD
 * has no body, a 2xx to CONNECT and a 101 to an upgrade end HTTP) and turns its callbacks
 * into events at exact byte offsets.
 *
 * llhttp is paused at each head and each message end, so that events reach the caller
 * from tt_h1resp_feed's own loop; it resumes where it paused (llhttp_get_error_pos). A
 * callback that pauses cannot also give on_headers_complete's "no body" answer, so the
 * head's callback sets what that answer would have set (F_SKIPBODY, and `upgrade` for the
 * end of HTTP) before it pauses: llhttp reads both after the pause, when it decides the
 * body's framing. Events wait in a queue of two (a head and the end behind it).
 *
 * llhttp rather than http-parser (which h1.c and the admin server use): it reads a
 * workload's response in about half the instructions, on the inbound's busiest path, and
 * it is strict by default (bare LF, spaces before a colon, Content-Length with
 * Transfer-Encoding are errors, not leniencies to build out).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <llhttp.h>

#include "core/errors.h"
#include "http/h1resp.h"

/* The longest response head read, status line to the empty line (http-parser's limit,
 * kept: llhttp has none of its own). */
#define HEAD_MAX (80 * 1024)

enum h1resp_state {
    RS_READING,  /* between or inside responses */
    RS_DONE,     /* a final response without keep-alive ended: nothing more is read */
    RS_UPGRADED, /* a 101 or a 2xx to CONNECT ended: the rest is not HTTP */
    RS_FAILED,   /* bad bytes or a callback failed: every call returns r->error */
};

/* What a request told by tt_h1resp_expect means for its response's framing. */
enum req_kind {
    REQ_OTHER,   /* a body framed by its headers */
    REQ_HEAD,    /* never a body (RFC 9110 §9.3.2) */
    REQ_CONNECT, /* a 2xx starts a tunnel (RFC 9110 §9.3.6) */
};

struct expected {
    enum req_kind kind;
    bool upgrade; /* the request asked for an upgrade: a 101 may answer it */
};

/* An event read from the bytes, waiting to be delivered. */
struct event {
    enum { EV_HEAD, EV_END } kind;
    int status;
    bool keep_alive; /* EV_HEAD's */
};

struct tt_h1resp {
    llhttp_t parser;
    struct tt_h1resp_callbacks cb;
    void *ud;
    enum h1resp_state state;
    long error;
    const char *why; /* tt_h1resp_why's answer once failed */

    /* The requests told and not yet answered by a final response: a ring. */
    struct expected *fifo;
    size_t fifo_cap, fifo_head, fifo_len;

    /* The response being read, set in on_headers_complete. */
    int status;
    bool keep_alive;
    bool upgrading; /* a 101 to an upgrade, a 2xx to CONNECT */
    bool bodiless;  /* the response has no body (rc of on_headers_complete) */
    bool head_read; /* on_headers_complete ran (and paused) in this execute */
    bool end_read;  /* on_message_complete ran (and paused) in this execute */

    /* Events read and not delivered yet, in order. */
    struct event evq[2];
    size_t ev_first, ev_n;

    /* The current response's header fields (tt_h1resp_keep_headers): names and values
     * NUL-terminated in hbuf, located by offsets while it grows, and given as views once
     * the head is complete. */
    bool keep;
    bool in_head;      /* between message begin and headers complete: not trailers */
    bool begun;        /* on_message_begin paused in this execute: the head starts there */
    size_t head_bytes; /* of the head being read, counted by execute */
    bool in_name;      /* a name's pieces are coming: on_header_field_complete has not run */
    char *hbuf;
    size_t hlen, hcap;
    struct field_at {
        size_t name, name_len, value, value_len;
    } * fields;
    size_t n_fields, fields_cap;
    struct tt_h1_header *view;
    size_t n_view;
    long body_error; /* on_body's negative answer */
};

/* ---- llhttp callbacks: pause at each event ---- */

static int on_message_begin(llhttp_t *p)
{
    struct tt_h1resp *r = p->data;

    /* A response nobody asked for (RFC 9112 §9.3: responses come in request order). */
    if (r->fifo_len == 0) {
        r->why = "unsolicited_response";
        return -1;
    }
    r->in_head = true;
    r->begun = true;
    r->head_bytes = 0;
    r->in_name = false;
    r->hlen = 0;
    r->n_fields = 0;
    r->n_view = 0;
    return HPE_PAUSED; /* so that execute counts the head's bytes from here */
}

/* Appends len bytes (and a NUL when nul) to the header buffer. Returns 0 or -1. */
static int hbuf_append(struct tt_h1resp *r, const char *at, size_t len, bool nul)
{
    size_t need = r->hlen + len + (nul ? 1 : 0);

    if (need > r->hcap) {
        size_t cap = r->hcap ? r->hcap : 1024;
        char *n;

        while (cap < need)
            cap *= 2;
        n = realloc(r->hbuf, cap);
        if (n == NULL)
            return -1;
        r->hbuf = n;
        r->hcap = cap;
    }
    memcpy(r->hbuf + r->hlen, at, len);
    r->hlen += len;
    if (nul)
        r->hbuf[r->hlen++] = '\0';
    return 0;
}

/* A piece of a header name (llhttp may split a name or a value across calls): the first
 * piece starts a field. */
static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct tt_h1resp *r = p->data;

    if (!r->keep || !r->in_head)
        return 0;
    if (!r->in_name) {
        if (r->n_fields == r->fields_cap) {
            size_t cap = r->fields_cap ? 2 * r->fields_cap : 16;
            struct field_at *n = realloc(r->fields, cap * sizeof(*n));
            if (n == NULL)
                goto nomem;
            r->fields = n;
            r->fields_cap = cap;
        }
        r->fields[r->n_fields++] = (struct field_at){.name = r->hlen};
        r->in_name = true;
    }
    r->fields[r->n_fields - 1].name_len += len;
    if (hbuf_append(r, at, len, false) == 0)
        return 0;
nomem:
    r->why = "out_of_memory";
    return -1;
}

/* The name is complete: it ends with a NUL and its value starts (llhttp gives no piece
 * for an empty value, but completes it all the same). */
static int on_header_field_complete(llhttp_t *p)
{
    struct tt_h1resp *r = p->data;

    if (!r->keep || !r->in_head || !r->in_name)
        return 0;
    r->in_name = false;
    if (hbuf_append(r, "", 0, true) < 0) {
        r->why = "out_of_memory";
        return -1;
    }
    r->fields[r->n_fields - 1].value = r->hlen;
    return 0;
}

/* A piece of a header value. */
static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct tt_h1resp *r = p->data;

    if (!r->keep || !r->in_head || r->n_fields == 0)
        return 0;
    r->fields[r->n_fields - 1].value_len += len;
    if (hbuf_append(r, at, len, false) == 0)
        return 0;
    r->why = "out_of_memory";
    return -1;
}

/* The value is complete: it ends with a NUL. */
static int on_header_value_complete(llhttp_t *p)
{
    struct tt_h1resp *r = p->data;

    if (!r->keep || !r->in_head || r->n_fields == 0)
        return 0;
    if (hbuf_append(r, "", 0, true) == 0)
        return 0;
    r->why = "out_of_memory";
    return -1;
}

/* The head is complete: the kept fields become views, values trimmed of whitespace (the
 * NUL after each moves to the trimmed end). */
static int fields_view(struct tt_h1resp *r)
{
    r->in_head = false;
    if (!r->keep)
        return 0;
    free(r->view);
    r->view = r->n_fields > 0 ? malloc(r->n_fields * sizeof(*r->view)) : NULL;
    if (r->n_fields > 0 && r->view == NULL)
        return -1;
    for (size_t i = 0; i < r->n_fields; i++) {
        const struct field_at *f = &r->fields[i];
        char *v = r->hbuf + f->value;
        size_t vl = f->value_len;

        while (vl > 0 && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        v[vl] = '\0';
        r->view[i] = (struct tt_h1_header){r->hbuf + f->name, f->name_len, v, vl};
    }
    r->n_view = r->n_fields;
    return 0;
}

/* A piece of the body, de-chunked: to the caller that asked for bodies. */
static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct tt_h1resp *r = p->data;
    int rc = r->cb.on_body != NULL ? r->cb.on_body(r->ud, at, len) : 0;

    if (rc >= 0)
        return 0;
    r->why = "callback_failed";
    r->body_error = rc;
    return -1;
}

/* Decides the framing only the request knows and pauses. A HEAD request's response, a
 * 1xx, 204 and 304 have no body (llhttp would read one their Content-Length or chunked
 * coding announced: RFC 9112 §6.3 rules 1 and 2 say there is none); a 101 to an upgrade
 * or a 2xx to CONNECT has none and ends HTTP. It says so as on_headers_complete's answers
 * 1 and 2 would (F_SKIPBODY, `upgrade`), which llhttp reads once resumed. Returns
 * HPE_PAUSED, or -1 for what is not a response to the request in front. */
static int on_headers_complete(llhttp_t *p)
{
    struct tt_h1resp *r = p->data;
    const struct expected *req = &r->fifo[r->fifo_head];
    int st = (int)p->status_code;
    int rc = 0;

    if (p->http_major != 1) {
        r->why = "bad_version";
        return -1;
    }
    if (st < 100 || st > 599) {
        r->why = "bad_status";
        return -1;
    }
    if (fields_view(r) < 0) {
        r->why = "out_of_memory";
        return -1;
    }
    r->status = st;
    r->upgrading = false;
    if (st == 101) {
        if (!req->upgrade || req->kind == REQ_CONNECT) {
            r->why = "unexpected_101"; /* RFC 9110 §15.2.2: only to a request that asked */
            return -1;
        }
        r->upgrading = true;
        rc = 2;
    } else if (req->kind == REQ_CONNECT && st / 100 == 2) {
        r->upgrading = true;
        rc = 2;
    } else if (req->kind == REQ_HEAD || st / 100 == 1 || st == 204 || st == 304) {
        rc = 1;
    }
    r->bodiless = rc != 0;
    if (rc != 0)
        p->flags |= F_SKIPBODY;
    p->upgrade = rc == 2;
    r->head_read = true;
    return HPE_PAUSED;
}

/* The response ended: pauses. */
static int on_message_complete(llhttp_t *p)
{
    struct tt_h1resp *r = p->data;

    r->end_read = true;
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_body = on_body,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

/* Readies the parser for a response from its first byte. */
static void parser_start(struct tt_h1resp *r)
{
    llhttp_init(&r->parser, HTTP_RESPONSE, &settings);
    r->parser.data = r;
}

/* ---- the reader ---- */

/*
 * Allocates a reader; see h1resp.h.
 */
struct tt_h1resp *tt_h1resp_new(const struct tt_h1resp_callbacks *cb, void *ud)
{
    struct tt_h1resp *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return NULL;
    r->cb = *cb;
    r->ud = ud;
    parser_start(r);
    return r;
}

/*
 * Frees a reader. Accepts NULL.
 */
void tt_h1resp_free(struct tt_h1resp *r)
{
    if (r == NULL)
        return;
    free(r->fifo);
    free(r->hbuf);
    free(r->fields);
    free(r->view);
    free(r);
}

/*
 * Keeps header fields from now on; see h1resp.h. The buffer grows with the first head.
 */
void tt_h1resp_keep_headers(struct tt_h1resp *r)
{
    r->keep = true;
}

/*
 * The delivered head's fields; see h1resp.h.
 */
const struct tt_h1_header *tt_h1resp_headers(const struct tt_h1resp *r, size_t *n)
{
    *n = r->n_view;
    return r->view;
}

/*
 * Queues a request's response; see h1resp.h. The ring doubles when full (unwrapped into
 * the new array), so a long pipeline costs one allocation per doubling.
 */
int tt_h1resp_expect(struct tt_h1resp *r, const char *method, bool upgrade)
{
    struct expected *e;

    if (r->fifo_len == r->fifo_cap) {
        size_t cap = r->fifo_cap ? 2 * r->fifo_cap : 4;
        struct expected *n = malloc(cap * sizeof(*n));

        if (n == NULL)
            return -ENOMEM;
        for (size_t i = 0; i < r->fifo_len; i++)
            n[i] = r->fifo[(r->fifo_head + i) % r->fifo_cap];
        free(r->fifo);
        r->fifo = n;
        r->fifo_cap = cap;
        r->fifo_head = 0;
    }
    e = &r->fifo[(r->fifo_head + r->fifo_len) % r->fifo_cap];
    e->kind = strcmp(method, "HEAD") == 0      ? REQ_HEAD
              : strcmp(method, "CONNECT") == 0 ? REQ_CONNECT
                                               : REQ_OTHER;
    e->upgrade = upgrade;
    r->fifo_len++;
    return 0;
}

/* Fails the reader with err; `why` names the cause unless a callback of ours named it. */
static long fail(struct tt_h1resp *r, long err, const char *why)
{
    if (r->why == NULL)
        r->why = why;
    r->state = RS_FAILED;
    r->error = err;
    r->ev_n = 0;
    return err;
}

static void push_event(struct tt_h1resp *r, const struct event *ev)
{
    r->evq[(r->ev_first + r->ev_n) % 2] = *ev;
    r->ev_n++;
}

/* Queues the events the last execute paused at: the head (with its keep-alive, now that
 * llhttp knows whether the body is skipped), then the end. */
static void queue_events(struct tt_h1resp *r)
{
    if (r->head_read) {
        struct event ev = {.kind = EV_HEAD, .status = r->status};

        /* An interim response never ends the connection: the final one follows. */
        if (r->upgrading)
            ev.keep_alive = false;
        else if (r->status / 100 == 1)
            ev.keep_alive = true;
        else
            ev.keep_alive = llhttp_should_keep_alive(&r->parser) != 0;
        r->keep_alive = ev.keep_alive;
        push_event(r, &ev);
        r->head_read = false;
    }
    if (r->end_read) {
        struct event ev = {.kind = EV_END, .status = r->status};

        push_event(r, &ev);
        r->end_read = false;
    }
}

/* Delivers the first waiting event and applies what it means to the reader: a final
 * response answers the request in front; an upgrade or a final response without
 * keep-alive ends the reader. Returns the callback's answer. */
static int deliver(struct tt_h1resp *r)
{
    struct event ev = r->evq[r->ev_first];
    int rc = 0;

    r->ev_first = (r->ev_first + 1) % 2;
    r->ev_n--;
    if (ev.kind == EV_HEAD) {
        if (r->cb.on_head)
            rc = r->cb.on_head(r->ud, ev.status, ev.keep_alive);
        return rc;
    }
    if (ev.status / 100 != 1 || ev.status == 101) {
        r->fifo_head = (r->fifo_head + 1) % r->fifo_cap;
        r->fifo_len--;
    }
    if (r->upgrading)
        r->state = RS_UPGRADED;
    else if (!r->keep_alive && ev.status / 100 != 1)
        r->state = RS_DONE;
    else {
        /* A fresh parser for the next response: llhttp stops for good after a message
         * without keep-alive, an interim response saying "Connection: close" among them,
         * where only the final response decides. */
        parser_start(r);
    }
    if (r->cb.on_end)
        rc = r->cb.on_end(r->ud, ev.status);
    return rc;
}

/* Delivers waiting events until none is left or one pauses. Returns 0, TT_H1_PAUSE, or a
 * callback's negative value (the reader then failed). */
static int deliver_all(struct tt_h1resp *r)
{
    while (r->ev_n > 0) {
        int rc = deliver(r);

        if (rc < 0)
            return (int)fail(r, rc, "callback_failed");
        if (rc == TT_H1_PAUSE)
            return rc;
    }
    return 0;
}

/* Runs llhttp over data[0..len) until its next event (a response's start, head or end),
 * counting the bytes of a head against HEAD_MAX. Returns the bytes consumed (events
 * queued) or TT_E_HTTP (or a body callback's error). */
static long execute(struct tt_h1resp *r, const char *data, size_t len)
{
    bool in_head = r->in_head && !r->begun; /* every byte read now is the head's */
    llhttp_errno_t e = llhttp_execute(&r->parser, data, len);
    size_t n = len;

    if (e == HPE_PAUSED) {
        n = (size_t)(llhttp_get_error_pos(&r->parser) - data);
        llhttp_resume(&r->parser);
    } else if (e != HPE_OK) {
        return r->body_error < 0 ? r->body_error : TT_E_HTTP;
    }
    if (r->head_read && !r->end_read) {
        /* Paused at a head's end: no byte more is needed to end a bodiless response,
         * which llhttp decides once resumed: an empty run lets it, so that the end of a
         * head that ends the buffer is read too. */
        e = llhttp_execute(&r->parser, data + n, 0);
        if (e == HPE_PAUSED)
            llhttp_resume(&r->parser);
        else if (e != HPE_OK)
            return TT_E_HTTP;
    }
    if (n == 0 && !r->begun && !r->head_read && !r->end_read)
        return TT_E_HTTP; /* no progress, no event: not llhttp's behaviour */
    r->begun = false;
    if (in_head) {
        r->head_bytes += n;
        if (r->head_bytes > HEAD_MAX) {
            r->why = "head_too_large";
            return TT_E_HTTP;
        }
    }
    queue_events(r);
    return (long)n;
}

/*
 * Feeds the workload's bytes; see h1resp.h. Each round delivers what is waiting, then
 * runs llhttp until its next event.
 */
long tt_h1resp_feed(struct tt_h1resp *r, const char *data, size_t len)
{
    size_t off = 0;
    int rc;

    if (r->state == RS_FAILED)
        return r->error;
    for (;;) {
        long n;

        rc = deliver_all(r);
        if (rc < 0)
            return rc;
        if (rc == TT_H1_PAUSE || r->state != RS_READING || off == len)
            break;
        n = execute(r, data + off, len - off);
        if (n < 0)
            return fail(r, n, "malformed_response");
        off += (size_t)n;
    }
    return (long)off;
}

/*
 * The workload's end of output; see h1resp.h.
 */
int tt_h1resp_finish(struct tt_h1resp *r)
{
    llhttp_errno_t e;
    int rc;

    if (r->state == RS_FAILED)
        return (int)r->error;
    while (r->ev_n > 0) {
        rc = deliver_all(r);
        if (rc < 0)
            return rc;
    }
    if (r->state != RS_READING)
        return 0;
    /* llhttp completes a body read until the close, accepts the boundary between
     * messages, and refuses the rest. */
    e = llhttp_finish(&r->parser);
    if (e != HPE_OK && e != HPE_PAUSED)
        return (int)fail(r, TT_E_HTTP, "response_cut_short");
    if (e == HPE_PAUSED)
        llhttp_resume(&r->parser);
    queue_events(r);
    if (r->ev_n == 0)
        return 0;
    /* A close-delimited body has no keep-alive: its end ends the reader. */
    rc = deliver_all(r);
    return rc < 0 ? rc : 0;
}

bool tt_h1resp_bodiless(const struct tt_h1resp *r)
{
    return r->bodiless;
}

bool tt_h1resp_upgraded(const struct tt_h1resp *r)
{
    return r->state == RS_UPGRADED;
}

bool tt_h1resp_done(const struct tt_h1resp *r)
{
    return r->state == RS_DONE || r->state == RS_UPGRADED;
}

const char *tt_h1resp_why(const struct tt_h1resp *r)
{
    return r->state == RS_FAILED ? r->why : NULL;
}

size_t tt_h1resp_pending(const struct tt_h1resp *r)
{
    return r->fifo_len;
}

bool tt_h1resp_ready(const struct tt_h1resp *r)
{
    return r->state != RS_FAILED && r->ev_n > 0;
}
