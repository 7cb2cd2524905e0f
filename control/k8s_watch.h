/* The service table from the cluster (--kubernetes): lists and watches Services,
 * EndpointSlices and Pods through the Kubernetes API (k8s_client) and keeps the store's
 * CP_SOURCE_KUBERNETES entries equal to what they say: each Service's ClusterIP and port
 * -> the ready endpoints' pod IP and target port -> spiffe://TD/ns/<pod namespace>/sa/
 * <pod serviceAccountName>. The list/watch protocol as client-go's reflector speaks it:
 * list with ?limit and continue, then ?watch=1 from the list's resourceVersion with
 * bookmarks, the resourceVersion followed through every event, a new list on 410 Gone
 * (an HTTP status or an ERROR event), a dropped stream watched again from the last
 * resourceVersion after a jittered, capped exponential backoff. One thread per resource
 * (blocking I/O with timeouts, nothing on the gRPC or libuv threads); the table is pushed
 * once all three have listed, and then on every change.
 *
 * With a webhook configuration name it also keeps the caBundle of that
 * MutatingWebhookConfiguration's webhook "inject.tether.io" equal to the control plane's
 * bundle: one strategic-merge PATCH at start and one each time the bundle changes
 * (retried with backoff until the server accepts it); it never reads the object.
 *
 * What the API server sends is untrusted: sizes, counts and shapes are bounded and
 * checked; an object that does not fit is left out and logged. */
#ifndef CP_K8S_WATCH_H
#define CP_K8S_WATCH_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct cp_k8s_client;
struct cp_store;

#define CP_K8S_WEBHOOK_ENTRY "inject.tether.io"

struct cp_k8s_watch_opts {
    struct cp_k8s_client *client; /* taken: freed by cp_k8s_watch_stop (or on failure) */
    struct cp_store *store;
    const char *trust_domain;
    const char *webhook_config; /* the MutatingWebhookConfiguration's name, or NULL */
    unsigned watch_timeout_s;   /* a watch's timeoutSeconds (0: 300) */
    uint64_t backoff_min_ms;    /* 0: 200ms */
    uint64_t backoff_max_ms;    /* 0: 30s */
};

struct cp_k8s_watch;

/* Starts the threads. Returns the watcher or NULL with err set (out of memory, no
 * thread); the client is freed then. */
struct cp_k8s_watch *cp_k8s_watch_start(const struct cp_k8s_watch_opts *o, char *err,
                                        size_t errlen);

/* The store's change callback calls this (any thread, no lock held): the webhook's
 * caBundle is compared with the bundle again. */
void cp_k8s_watch_bundle_changed(struct cp_k8s_watch *w);

/* {"synced", "resources": {"services": {"objects", "resource_version", "lists",
 * "watches", "gone", "errors", "last_error"}, ...}, "webhook": {...}}. New reference. */
json_t *cp_k8s_watch_status_json(struct cp_k8s_watch *w);

/* Stops the threads (their connections are shut down), joins them and frees everything.
 * The store keeps the last table. Accepts NULL. */
void cp_k8s_watch_stop(struct cp_k8s_watch *w);

#endif
