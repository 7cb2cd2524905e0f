/* The sidecar-injection admission webhook (README "Injection"): POST /inject with an
 * `admission.k8s.io/v1` AdmissionReview whose request creates a Pod; the answer is an
 * AdmissionReview response with the request's uid, `allowed`, and for a pod to inject
 * `patchType: JSONPatch` with the base64 RFC 6902 patch (inject.h).
 *
 *   - a pod injected: allowed, with the patch;
 *   - a pod left alone (opted out, already injected, host network), an operation other
 *     than CREATE, a resource other than pods: allowed, no patch;
 *   - a review that names a request uid but cannot be acted on (not admission.k8s.io/v1
 *     AdmissionReview, no object, a Pod the injector does not understand, a bad
 *     tether.io/ annotation): allowed false with status.code 400 and status.message
 *     saying why (the pod is refused, never mangled);
 *   - a body that is not JSON, or has no request.uid to answer: HTTP 400 {"error"}.
 *     The API server treats that as a webhook failure: failurePolicy decides.
 *
 * The HTTP side runs the shared HTTP core (httpd.h) on the control plane's loop, on
 * connections whose TLS tether-control's main terminated (a cp_tls_acceptor with the
 * serving certificate) and handed over with cp_webhook_adopt_fd(). */
#ifndef CP_WEBHOOK_H
#define CP_WEBHOOK_H

#include <stddef.h>

#include <jansson.h>
#include <uv.h>

#include "inject.h"

#define CP_WEBHOOK_BODY_MAX                                                                        \
    (4 * 1024 * 1024) /* an AdmissionReview; Kubernetes objects are < 1.5 MiB */

struct cp_ca;
struct cp_webhook;

/* Answers one AdmissionReview body[0..len) with the injection options `opts` (whose
 * bundle_pem is used as is). Returns the HTTP status (200 or 400) and sets *out to the
 * answer (a new object: the AdmissionReview response, or {"error"} with 400), or NULL
 * on allocation failure (then answer 500). reason (may be NULL) gets one line for the
 * log: "injected", or why not. Pure. */
int cp_webhook_review(const char *body, size_t len, const struct cp_inject_opts *opts, json_t **out,
                      char *reason, size_t reasonlen);

/* Starts serving POST /inject on loop for connections given with cp_webhook_adopt_fd().
 * opts is copied (strings too); its bundle_pem is ignored: each review takes the CA's
 * current bundle (ca outlives the webhook). Returns NULL with err set on failure. */
struct cp_webhook *cp_webhook_new(uv_loop_t *loop, const struct cp_inject_opts *opts,
                                  struct cp_ca *ca, char *err, size_t errlen);

/* Serves one plaintext connection (the TLS bridge's end). Takes ownership of fd.
 * Returns 0 or -errno. Loop thread only. */
int cp_webhook_adopt_fd(struct cp_webhook *wh, int fd);

/* Stops serving; memory goes once the loop ran the close callbacks. Accepts NULL. */
void cp_webhook_close(struct cp_webhook *wh);

#endif
