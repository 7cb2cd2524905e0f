/* An I/O-free HTTP/1.x RESPONSE framing reader over llhttp (Tether issue 10,
 * "HTTP-aware sidecars"). The inbound per-request gate forwards a client's requests to
 * the local workload and feeds the workload's answers here, to learn where each response
 * ends: so that it can put its own answers (403 for a request the policy denied, 400 for
 * a malformed one) between responses in the pipelined order, count each response's
 * status, and notice an upgrade (101, or a 2xx to CONNECT) after which the bytes are a
 * tunnel. The workload is local and semi-trusted: this reader frames responses correctly
 * (RFC 9112 §6.3) and refuses what llhttp's strict defaults refuse (bare LF line ends,
 * Content-Length beside Transfer-Encoding, whitespace before a colon).
 *
 * The caller tells the reader each request it forwarded (tt_h1resp_expect: the method
 * and whether it asked for an upgrade, which decide how its response is framed) and
 * feeds the workload's bytes; the reader calls back at each response's head and at its
 * end, and consumes nothing it is not sure belongs to a response. Bodies are not given:
 * the caller forwards the bytes as they are.
 *
 * Framing (RFC 9112 §6.3): a response to HEAD, a 1xx, 204 and 304 have no body whatever
 * their headers say; then chunked; then Content-Length; otherwise the body runs until the
 * workload closes (tt_h1resp_finish ends it). Interim responses (1xx other than 101: 100
 * Continue, 103 Early Hints) are reported and do not answer the request: its final
 * response follows. A 101 answers only a request told with upgrade=true (anything else is
 * refused), and a 2xx to CONNECT, and either ends the reader: the bytes after it are not
 * HTTP. A final response without keep-alive ends it too. */
#ifndef TT_H1RESP_H
#define TT_H1RESP_H

#include <stdbool.h>
#include <stddef.h>

#include "http/h1.h" /* for TT_H1_PAUSE */

struct tt_h1resp_callbacks {
    /* A response head was read: status 100..599. keep_alive: the response lets the
     * connection carry another one (RFC 9112 §9.3, as http_should_keep_alive says, with
     * a bodiless response's framing applied); true for an interim 1xx (the final
     * response decides), false for a 101 or a 2xx to CONNECT. Informational (1xx, except
     * 101) heads also come here and are followed by on_end with the same status. */
    int (*on_head)(void *ud, int status, bool keep_alive);
    /* The response with `status` is complete: every byte of it up to its last was
     * consumed (so the caller can forward exactly those bytes and then insert its own
     * answer). */
    int (*on_end)(void *ud, int status);
    /* A piece of the current response's body, de-chunked (chunk sizes, extensions and
     * trailers removed): for a translator that frames the body anew (http/h2h1.h).
     * data points into the caller's buffer. NULL: bodies are only framed, as the gate
     * needs. It runs from inside tt_h1resp_feed and may not pause (TT_H1_PAUSE is taken
     * as 0). */
    int (*on_body)(void *ud, const char *data, size_t len);
};
/* Callbacks return 0 to go on, TT_H1_PAUSE to make tt_h1resp_feed return right after this
 * event (with the bytes consumed so far, INCLUDING the event's last byte), or a negative
 * value to fail. Either callback may be NULL. */

struct tt_h1resp;

/* A reader for one connection's responses. cb and ud are kept (cb is copied). Returns
 * NULL when out of memory. */
struct tt_h1resp *tt_h1resp_new(const struct tt_h1resp_callbacks *cb, void *ud);
void tt_h1resp_free(struct tt_h1resp *r); /* accepts NULL */

/* From now on the reader keeps each response's header fields (not its trailers), for
 * tt_h1resp_headers() during on_head. */
void tt_h1resp_keep_headers(struct tt_h1resp *r);
/* During on_head, after tt_h1resp_keep_headers(): the header fields of the response
 * whose head is delivered (NUL-terminated name as sent and value without surrounding
 * whitespace, as http/h1.h gives a request's), *n of them; valid until on_head returns. */
const struct tt_h1_header *tt_h1resp_headers(const struct tt_h1resp *r, size_t *n);
/* During on_head: the response has no body whatever its headers say (to HEAD, a 1xx,
 * 204, 304, or a 101 / 2xx to CONNECT), so on_end follows at once. */
bool tt_h1resp_bodiless(const struct tt_h1resp *r);
/* Tells the reader a request was sent whose response will come next in order (FIFO):
 * `method` is its method ("HEAD": the response has no body whatever its headers say;
 * "CONNECT": a 2xx ends the reader, the bytes after are a tunnel; methods compare
 * case-sensitively, as RFC 9110 §9.1 says). Returns 0 or -ENOMEM. A request that upgrades
 * ("Upgrade" + "Connection: upgrade", tt_h1_head.upgrade without .connect) is told with
 * upgrade=true: a 101 answer ends the reader (a 101 to any other request is refused). */
int tt_h1resp_expect(struct tt_h1resp *r, const char *method, bool upgrade);

/* Feeds len bytes of the workload's output. Returns how many were consumed (all unless a
 * callback paused or the reader ended: an upgrade (101, or 2xx to CONNECT), or a response
 * without keep-alive that is complete; bytes after that are not HTTP responses to read),
 * or TT_E_HTTP when the bytes are not a valid response (status outside 100..599, a
 * version other than HTTP/1.x, a head over 80 KiB, bad framing), or when a
 * response begins while no request is expected (an unsolicited response), or a
 * callback's negative value. Once failed, every call returns the same error. Bytes not
 * consumed must be fed again first in the next call. Callbacks run inside this call.
 *
 * After a pause, call it again even when every byte was consumed (len may be 0): an event
 * whose bytes were consumed already (the end of a bodiless response whose head paused) is
 * delivered at the start of the next call, before any byte is read; tt_h1resp_ready()
 * says whether one waits. */
long tt_h1resp_feed(struct tt_h1resp *r, const char *data, size_t len);

/* The workload closed its side (EOF). A response delimited by the close (no
 * Content-Length, not chunked, RFC 9112 §6.3 rule 8) is complete now: on_end runs (its
 * TT_H1_PAUSE means nothing here). Events still waiting from a paused feed are delivered
 * first. Returns 0 when that was at a message boundary or ended such a response,
 * TT_E_HTTP when a response was cut short, or a callback's negative value. Requests still
 * expected are not an error: the workload may close without answering (see
 * tt_h1resp_pending). */
int tt_h1resp_finish(struct tt_h1resp *r);

/* Why the reader failed, a token for logs and metric labels: "unsolicited_response",
 * "unexpected_101" (to a request that did not ask for an upgrade), "bad_status" (outside
 * 100..599), "bad_version" (not HTTP/1.x), "head_too_large" (over 80 KiB),
 * "malformed_response" (anything else llhttp refused), "response_cut_short"
 * (tt_h1resp_finish), "callback_failed"; NULL
 * while not failed. */
const char *tt_h1resp_why(const struct tt_h1resp *r);

bool tt_h1resp_upgraded(const struct tt_h1resp *r); /* a 101 / 2xx-to-CONNECT ended it */
bool tt_h1resp_done(const struct tt_h1resp *r); /* upgraded, or a response ended the connection */
/* Requests told by _expect not yet answered (by a final response). */
size_t tt_h1resp_pending(const struct tt_h1resp *r);
/* An event was read and waits for the next tt_h1resp_feed (a callback paused before it). */
bool tt_h1resp_ready(const struct tt_h1resp *r);

#endif
