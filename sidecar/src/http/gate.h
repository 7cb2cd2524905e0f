/* The inbound request gate (Tether issue 10, "Per-request policy"): an I/O-free filter
 * between a verified caller (the decrypted side of an inbound mTLS connection) and the
 * workload, used when rules with "methods" or "paths" apply to the caller and port.
 *
 * Client bytes are read as HTTP/1.x requests (http/h1.h, strict: smuggling shapes are
 * refused); each request gets its own policy verdict (tt_policy_check_request). An
 * allowed request is passed on with its body framed anew (Content-Length, or chunked when
 * the client chunked it) and its normalized path, so that the workload sees the request
 * the policy saw. A denied request is answered by the gate itself: 403 with an
 * x-tether-reason header and a JSON body naming the rule, written in its pipelined place
 * between the workload's responses (their ends are found by http/h1resp.h), and the
 * connection goes on. Bytes that are not HTTP/1.x get 400 (431 for oversized heads) and
 * the connection ends after it: when an enforce rule applies, no bytes reach the
 * workload unseen. When only audit rules apply, a connection whose first bytes are not
 * an HTTP/1.x request is relayed as it is (audit never refuses), and HTTP ones are read
 * to count would-deny verdicts. An accepted upgrade (101) or CONNECT (2xx) turns the rest
 * of the connection into an opaque relay, both ways.
 *
 * The caller moves the bytes: it feeds what it read and gets what to write through the
 * io callbacks (inside the feeding call). Times are the caller's clock in microseconds. */
#ifndef TT_GATE_H
#define TT_GATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tt_policy;
struct tt_policy_verdict;

#define TT_GATE_PIPELINE_MAX 32 /* requests read ahead of their responses */

/* A request that is over, for counters and the access line. Strings are valid during the
 * on_request callback only (rule: while the policy lives). */
struct tt_gate_request {
    const char *method;      /* as sent; "" when the bytes were not a request */
    const char *path;        /* normalized path (truncated for the log), or the target */
    int status;              /* final status the client got, 0 when none (connection ended) */
    uint64_t request_bytes;  /* body bytes received from the client */
    uint64_t response_bytes; /* bytes of the answer sent to the client */
    uint64_t duration_us;    /* head received -> answer complete (or the end) */
    const char *rule;        /* deciding rule name ("default"), NULL when not evaluated */
    const char *reason;      /* the gate answered: "policy_denied" or a tt_h1_reason_name */
    bool denied;             /* refused by policy */
    int refused_reason;      /* enum tt_h1_reason of a malformed request, else 0 */
};

struct tt_gate_io {
    void *ud;
    /* Writes bytes toward the workload / the client; returns 0 or <0 (the gate fails). */
    int (*to_upstream)(void *ud, const char *data, size_t len);
    int (*to_client)(void *ud, const char *data, size_t len);
    /* Every verdict, to be counted per rule (tt_metrics_policy_count) and logged. */
    void (*on_verdict)(void *ud, const struct tt_policy_verdict *v);
    /* A request is over: answered, refused, or cut by the connection's end. */
    void (*on_request)(void *ud, const struct tt_gate_request *rq);
};

/* Who is calling and where: the policy (a reference is not taken: it must outlive the
 * gate, as the connection's snapshot does), the verified caller's SPIFFE ID, the
 * workload's own ID and the destination port. enforce: an enforce rule with HTTP
 * conditions applies (tt_policy_http_rules), so bytes that are not HTTP are refused. */
struct tt_gate_config {
    const struct tt_policy *policy; /* NULL: no policy, every request allowed ("no-policy") */
    const char *caller;
    const char *self;
    uint16_t port;
    bool enforce;
    /* Requests read ahead of their responses, at most TT_GATE_PIPELINE_MAX; 0 means that.
     * The head of the last one that fits stops the reader: its body waits until an answer
     * makes room, so 1 would starve a lone request's body. An inbound request stream
     * carries one request: 2 (the gate then holds three requests' slots, not 33). */
    size_t pipeline_max;
    /* The caller reads the workload's responses itself (an inbound request stream, whose
     * translator, http/h2h1.h, parses the one response it gets) and says when each is
     * complete with tt_gate_response_done() instead of feeding tt_gate_from_upstream():
     * the gate then parses requests only, not every response a second time. */
    bool caller_reads_responses;
};

struct tt_gate;

/* A gate for one connection; cfg strings and io are kept (they must outlive it). NULL
 * when out of memory. */
struct tt_gate *tt_gate_new(const struct tt_gate_config *cfg, const struct tt_gate_io *io);

/* Frees the gate; requests still open are reported (on_request, status 0). Accepts NULL. */
void tt_gate_free(struct tt_gate *g, uint64_t now_us);

/* Client bytes. The gate consumes them all: what it cannot pass on yet (the pipeline is
 * full, an upgrade waits for its answer) is held, and tt_gate_wants_client() turns false
 * until it is passed on. Returns 0, or <0 when writing failed. */
int tt_gate_from_client(struct tt_gate *g, const char *data, size_t len, uint64_t now_us);

/* Workload bytes (responses). Returns 0, or <0: the workload broke HTTP (a response
 * nobody asked for, a malformed one) or writing failed; end the connection. */
int tt_gate_from_upstream(struct tt_gate *g, const char *data, size_t len, uint64_t now_us);

/* The workload closed its side: a response delimited by the close is complete, answers
 * the gate still owes are written. A response cut short (its length not reached, its
 * chunked body or its head incomplete) ends the gate instead (tt_gate_finished): it was
 * passed on as it came, and the connection's close, not a reset that could destroy the
 * answers before it unread, tells the client; the request is reported unanswered
 * (status 0). Returns 0, or <0 when writing an owed answer failed. */
int tt_gate_upstream_eof(struct tt_gate *g, uint64_t now_us);

/* caller_reads_responses: the final response to the oldest request the workload was given
 * is complete, with `status` and `bytes` (as the workload sent them, head included); the
 * request is reported (on_request) and answers the gate owes go out. With no such request
 * waiting (the gate answered it itself) nothing happens. Returns 0 or <0 (writing failed);
 * -EINVAL without caller_reads_responses. (tt_gate_from_upstream returns -EINVAL with it.) */
int tt_gate_response_done(struct tt_gate *g, int status, uint64_t bytes, uint64_t now_us);

/* The client closed its side. Returns 0, or TT_E_HTTP when a request was cut short. */
int tt_gate_client_eof(struct tt_gate *g);

/* False while client bytes are held: stop reading the client. */
bool tt_gate_wants_client(const struct tt_gate *g);

/* The gate refused the connection's bytes and wrote its last answer: end the connection
 * (close_notify and FIN to the client, FIN to the workload); later bytes are dropped. */
bool tt_gate_finished(const struct tt_gate *g);

#endif
