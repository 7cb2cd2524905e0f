/* Fuzz target: the HTTP/1.x request reader (http/h1.c) and first-bytes detection
 * (http/detect.c). Each input is fed whole and then one byte at a time; both runs must
 * report the same heads, the same body bytes (up to a refusal) and the same outcome, and
 * nothing may crash, hang or leak. A head's strings must be NUL-terminated where their
 * lengths say. The path of every head goes through the error writer as a rule name. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/errors.h"
#include "http/detect.h"
#include "http/h1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A digest of the events of one run. */
struct run {
    uint64_t hash; /* over heads, trailers and ends */
    uint64_t body; /* over body bytes */
    size_t body_len;
    unsigned heads, ends;
};

static void mix(uint64_t *h, const void *p, size_t n)
{
    const unsigned char *s = p;

    for (size_t i = 0; i < n; i++) {
        *h ^= s[i];
        *h *= 0x100000001b3ULL;
    }
}

static void mix_str(uint64_t *h, const char *s)
{
    if (s == NULL)
        s = "\x01(null)";
    mix(h, s, strlen(s) + 1);
}

static int on_head(void *ud, const struct tt_h1_head *hd)
{
    struct run *r = ud;
    char out[4096];

    r->heads++;
    mix_str(&r->hash, hd->method);
    mix_str(&r->hash, hd->target);
    mix_str(&r->hash, hd->path);
    mix_str(&r->hash, hd->query);
    mix_str(&r->hash, hd->authority);
    mix_str(&r->hash, hd->host);
    mix(&r->hash, &hd->content_length, sizeof(hd->content_length));
    for (size_t i = 0; i < hd->n_headers; i++) {
        if (strlen(hd->headers[i].name) != hd->headers[i].name_len ||
            strlen(hd->headers[i].value) != hd->headers[i].value_len)
            abort();
        mix_str(&r->hash, hd->headers[i].name);
        mix_str(&r->hash, hd->headers[i].value);
    }
    if (hd->path != NULL &&
        tt_h1_write_error(out, sizeof(out), 403, "policy_denied", hd->path, !hd->keep_alive) < 0)
        abort();
    return 0;
}

static int on_body(void *ud, const char *p, size_t n)
{
    struct run *r = ud;

    mix(&r->body, p, n);
    r->body_len += n;
    return 0;
}

static int on_end(void *ud, const struct tt_h1_header *t, size_t n)
{
    struct run *r = ud;

    r->ends++;
    for (size_t i = 0; i < n; i++) {
        mix_str(&r->hash, t[i].name);
        mix_str(&r->hash, t[i].value);
    }
    mix_str(&r->hash, "END");
    return 0;
}

/* Feeds data in steps of `step` bytes (0: at once); returns the outcome: bytes consumed,
 * or the error. */
static long feed(const uint8_t *data, size_t size, size_t step, struct run *out,
                 enum tt_h1_reason *reason)
{
    static const struct tt_h1_callbacks cb = {on_head, on_body, on_end};
    struct tt_h1 *r = tt_h1_new(NULL, &cb, out);
    size_t off = 0;
    long rc = 0;

    if (r == NULL)
        abort();
    memset(out, 0, sizeof(*out));
    while (off < size) {
        size_t n = step == 0 || step > size - off ? size - off : step;
        long got = tt_h1_feed(r, (const char *)data + off, n);

        if (got < 0) {
            rc = got;
            break;
        }
        off += (size_t)got;
        if ((size_t)got < n)
            break; /* done or upgraded */
    }
    if (rc == 0)
        rc = (long)off;
    *reason = tt_h1_reason(r);
    if (rc >= 0)
        (void)tt_h1_finish(r);
    tt_h1_free(r);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run a, b;
    enum tt_h1_reason ra, rb;
    long oa, ob;

    (void)tt_detect_check(data, size, TT_DETECT_LIMIT);
    (void)tt_detect_check(data, size, 16);
    oa = feed(data, size, 0, &a, &ra);
    ob = feed(data, size, 1, &b, &rb);
    if (oa != ob || ra != rb || a.hash != b.hash || a.heads != b.heads || a.ends != b.ends) {
        FILE *f = fopen("/tmp/h1crash.bin", "wb");
        fwrite(data, 1, size, f);
        fclose(f);
        fprintf(stderr, "oa=%ld ob=%ld ra=%d rb=%d heads %u %u ends %u %u\n", oa, ob, ra, rb, a.heads, b.heads, a.ends, b.ends);
        abort();
    }
    /* A body streamed as it came may be cut short by a refusal at a different point. */
    if (oa >= 0 && (a.body != b.body || a.body_len != b.body_len))
        abort();
    if (oa < 0 && oa != TT_E_HTTP)
        abort();
    return 0;
}
