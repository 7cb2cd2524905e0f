/* Fuzz target: whatever a peer sidecar sends over the pooled HTTP/2 connection. The bytes
 * go to a server session (inbound: it accepts streams, answers some, tunnels, reads and
 * resets others) in three pieces at split points taken from the data, and its output is
 * drained after each; then to a client session that has opened a request and a tunnel.
 * Each must refuse or carry on, never crash, leak or read out of bounds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/h2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void on_data(struct tt_h2_stream *s, void *ud)
{
    uint8_t buf[1024];
    /* Read some streams and leave others stalled. */
    if (tt_h2_stream_id(s) % 4 == 1)
        while (tt_h2_stream_read(s, buf, sizeof(buf)) > 0)
            ;
}

static void on_end(struct tt_h2_stream *s, void *ud)
{
    static const struct tt_h2_header trailer = {"grpc-status", 11, "0", 1};

    tt_h2_stream_write(s, "bye", 3);
    if (tt_h2_stream_id(s) % 2)
        tt_h2_stream_end_trailers(s, &trailer, 1);
    else
        tt_h2_stream_end(s);
}

static void on_reset(struct tt_h2_stream *s, int err, uint32_t code, bool by_peer, void *ud)
{
    (void)err;
    (void)code;
    (void)by_peer;
}

static const struct tt_h2_stream_callbacks stream_cbs = {NULL, on_data, on_end, on_reset};

static void on_stream(struct tt_h2 *h2, struct tt_h2_stream *s, void *ud)
{
    size_t n;
    const struct tt_h2_header *h = tt_h2_stream_headers(s, &n);
    const char *method = tt_h2_stream_header(s, ":method");

    for (size_t i = 0; i < n; i++)
        if (h[i].name[h[i].name_len] != '\0' || h[i].value[h[i].value_len] != '\0')
            abort();
    tt_h2_stream_set_callbacks(s, &stream_cbs, NULL);
    switch (tt_h2_stream_id(s) % 3) {
    case 0:
        tt_h2_stream_reset(s, 8);
        break;
    case 1:
        tt_h2_respond(s, method != NULL && strcmp(method, "CONNECT") == 0 ? 200 : 204, h,
                      n > 2 ? 2 : n, false);
        tt_h2_stream_write(s, "data", 4);
        break;
    default:
        break;
    }
    /* Streams are released when the session is freed (the fuzzer's view: never). */
    if (tt_h2_stream_id(s) % 5 == 0)
        tt_h2_stream_release(s);
}

static void on_settings(struct tt_h2 *h2, void *ud)
{
    tt_h2_ping(h2);
}

static const struct tt_h2_callbacks session_cbs = {on_stream, on_settings, NULL, NULL};

static void drain(struct tt_h2 *h2)
{
    static uint8_t out[16384];
    for (int i = 0; i < 64 && tt_h2_fill(h2, out, sizeof(out)) > 0; i++)
        ;
}

static void drive(struct tt_h2 *h2, const uint8_t *data, size_t size)
{
    size_t a = size > 0 ? data[0] % (size + 1) : 0;
    size_t b = size > 1 ? a + data[1] % (size - a + 1) : size;
    size_t cuts[4] = {0, a, b, size};

    for (int i = 0; i < 3; i++) {
        int r = tt_h2_feed(h2, data + cuts[i], cuts[i + 1] - cuts[i]);
        drain(h2);
        if (r < 0) {
            if (tt_h2_feed(h2, data, size) != r) /* sticky */
                abort();
            return;
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tt_h2_config cfg = {.max_streams = 8,
                               .max_header_list = 4096,
                               .stream_window = 65536,
                               .conn_window = 131072,
                               .recv_buffer_max = 200000,
                               .enable_connect = true};
    struct tt_h2 *s = tt_h2_new(TT_H2_SERVER, &cfg, &session_cbs, NULL);
    if (s == NULL)
        abort();
    drive(s, data, size);
    if (size > 0 && data[size - 1] & 1)
        tt_h2_goaway(s, 0);
    drain(s);
    tt_h2_free(s);

    /* The client side: a request and (if the bytes enable CONNECT) a tunnel are open. */
    struct tt_h2 *c = tt_h2_new(TT_H2_CLIENT, &cfg, &session_cbs, NULL);
    if (c == NULL)
        abort();
    struct tt_h2_request req = {"POST", "https", "10.1.2.3:80", "/", NULL, 0, false};
    int err;
    struct tt_h2_stream *st = tt_h2_open(c, &req, &stream_cbs, NULL, &err);
    if (st == NULL)
        abort();
    tt_h2_stream_write(st, "body", 4);
    drain(c);
    /* Skip a client preface in the input so the rest reads as a server's frames. */
    if (size >= 24 && memcmp(data, "PRI * HTTP/2.0", 14) == 0) {
        data += 24;
        size -= 24;
    }
    drive(c, data, size);
    if (tt_h2_connect_allowed(c)) {
        struct tt_h2_stream *t =
            tt_h2_open_tunnel(c, "tether-tcp", "10.1.2.3:80", NULL, 0, &stream_cbs, NULL, &err);
        if (t != NULL)
            tt_h2_stream_write(t, "x", 1);
        drain(c);
    }
    tt_h2_free(c);
    return 0;
}
