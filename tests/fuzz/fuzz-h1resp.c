/* Fuzz target: the HTTP/1.x response framing reader (http/h1resp.c). An input is the
 * requests told, one letter each up to the first '\n' among the first 16 bytes (G: GET,
 * H: HEAD, C: CONNECT, U: GET asking for an upgrade; other letters: GET; no '\n': none),
 * then the workload's bytes. They are fed whole and then one byte at a time, both pausing
 * at every event, and once more whole without pausing. Every run must report the same
 * events, the pausing runs at the same offsets, with the same outcome; offsets never go
 * back; a final response answers one request; nothing may crash, hang or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "http/h1resp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A digest of the events of one run. */
struct run {
    struct tt_h1resp *r;
    bool pause;
    bool paused;
    uint64_t hash;   /* over events (and their offsets in a pausing run) */
    uint64_t plain;  /* over events without offsets */
    size_t last_off; /* offset of the last event */
    size_t pending;  /* tt_h1resp_pending before the event */
    unsigned events;
};

static void mix(uint64_t *h, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        *h ^= (v >> (8 * i)) & 0xff;
        *h *= 0x100000001b3ULL;
    }
}

static int on_head(void *ud, int status, bool keep_alive)
{
    struct run *r = ud;

    if (status < 100 || status > 599)
        abort();
    mix(&r->plain, 1000 + (uint64_t)status * 2 + keep_alive);
    r->events++;
    r->paused = r->pause;
    return r->pause ? TT_H1_PAUSE : 0;
}

static int on_end(void *ud, int status)
{
    struct run *r = ud;
    size_t now = tt_h1resp_pending(r->r);

    /* A final response answered the request in front; an interim one did not. */
    if (now != r->pending - (status / 100 != 1 || status == 101))
        abort();
    r->pending = now;
    mix(&r->plain, 5000 + (uint64_t)status);
    r->events++;
    r->paused = r->pause;
    return r->pause ? TT_H1_PAUSE : 0;
}

/* Tells the requests the input's prefix names; returns where the workload's bytes begin. */
static size_t tell(struct tt_h1resp *r, const uint8_t *data, size_t size)
{
    size_t n = 0;

    while (n < size && n < 16 && data[n] != '\n')
        n++;
    if (n == size || data[n] != '\n')
        return 0;
    for (size_t i = 0; i < n; i++) {
        const char *m = data[i] == 'H' ? "HEAD" : data[i] == 'C' ? "CONNECT" : "GET";

        if (tt_h1resp_expect(r, m, data[i] == 'U') != 0)
            abort();
    }
    return n + 1;
}

/* Feeds data in steps of `step` bytes (0: at once); returns the outcome: bytes consumed
 * (after EOF was told, when still reading), or the error. */
static long feed(const uint8_t *data, size_t size, size_t step, bool pause, struct run *out)
{
    static const struct tt_h1resp_callbacks cb = {on_head, on_end};
    struct tt_h1resp *r = tt_h1resp_new(&cb, out);
    size_t off, start, rounds = 0;
    long rc = 0;

    if (r == NULL)
        abort();
    memset(out, 0, sizeof(*out));
    out->r = r;
    out->pause = pause;
    off = start = tell(r, data, size);
    out->pending = tt_h1resp_pending(r);
    while (off < size || tt_h1resp_ready(r)) {
        size_t n = step == 0 || step > size - off ? size - off : step;
        long got = tt_h1resp_feed(r, (const char *)data + off, n);

        /* Each call takes a byte or delivers an event: a loop beyond that is a hang. */
        if (++rounds > 3 * size + 8)
            abort();

        if (got < 0) {
            rc = got;
            break;
        }
        off += (size_t)got;
        if (out->paused) {
            if (off < out->last_off)
                abort();
            out->last_off = off;
            mix(&out->hash, off - start);
            out->paused = false;
        } else if ((size_t)got < n && !tt_h1resp_done(r)) {
            abort(); /* bytes left without a pause or an end */
        }
        out->pending = tt_h1resp_pending(r);
        if (tt_h1resp_done(r) && !tt_h1resp_ready(r))
            break;
    }
    if (rc == 0 && !tt_h1resp_done(r))
        rc = tt_h1resp_finish(r);
    if (rc == 0)
        rc = (long)(off - start) * 4 + tt_h1resp_upgraded(r) * 2 + tt_h1resp_done(r);
    mix(&out->hash, out->plain);
    tt_h1resp_free(r);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run a, b, c;
    long oa, ob, oc;

    oa = feed(data, size, 0, true, &a);
    ob = feed(data, size, 1, true, &b);
    oc = feed(data, size, 0, false, &c);
    if (oa != ob || oa != oc || a.hash != b.hash || a.plain != c.plain || a.events != b.events) {
        fprintf(stderr, "h1resp: runs differ: %ld %ld %ld, %u %u %u events\n", oa, ob, oc, a.events,
                b.events, c.events);
        abort();
    }
    if (oa < 0 && oa != TT_E_HTTP)
        abort();
    return 0;
}
