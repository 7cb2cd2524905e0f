/* Sidecar injection into Kubernetes pods (README "Injection"), on jansson values: the
 * admission webhook (webhook.h) asks for the RFC 6902 JSONPatch of a Pod, `tetherctl
 * inject` for the injected copy of a workload (Pod, Deployment, StatefulSet, DaemonSet,
 * ReplicaSet, Job, CronJob, or a List of them). Both come from one plan: the list of
 * "add" operations for the pod (template); the injected copy is that list applied, so
 * the two agree by construction.
 *
 * What the plan adds to a pod:
 *   - init container `tether-init`: `tether-iptables install` with the options the
 *     annotations ask for, as root with only NET_ADMIN and NET_RAW;
 *   - init container `tether-proxy` with `restartPolicy: Always` (a native sidecar:
 *     Kubernetes 1.29 or later starts the app containers once its startup probe passed,
 *     and Jobs complete without it), running `tether-sidecar --transparent` as UID 1337
 *     with a read-only root filesystem, no privilege escalation, every capability dropped,
 *     resources, startup and readiness probes on 15021 (/ready), a preStop wait, the
 *     projected service-account token (audience opts->jwt_audience) and the control
 *     plane's bundle (from the pod's annotation `tether.io/control-bundle`, through a
 *     downwardAPI volume, so no ConfigMap is needed in the namespace);
 *   - annotations: `tether.io/injected`, `tether.io/control-bundle` and the
 *     prometheus.io scrape annotations for 15020 (unless the pod has its own).
 *
 * The pod's annotations that steer it (all values strings):
 *   tether.io/inject                "false" opts out ("true" is accepted and changes nothing)
 *   tether.io/include-inbound-ports "*" (default) or P[,P...] (may be empty: none)
 *   tether.io/exclude-inbound-ports P[,P...]
 *   tether.io/exclude-outbound-ports P[,P...]
 *   tether.io/exclude-outbound-cidrs CIDR[,CIDR...] (IPv4 or IPv6)
 *   tether.io/inbound-mode          strict (default) or permissive
 *   tether.io/opaque-ports          P[,P...] server-first ports
 *   tether.io/proxy-cpu, tether.io/proxy-memory, tether.io/proxy-cpu-limit,
 *   tether.io/proxy-memory-limit    Kubernetes quantities (defaults below)
 * Any other `tether.io/` annotation, or a bad value, is refused naming the annotation.
 *
 * Left alone (CP_INJECT_SKIPPED, with the reason): opted out, already injected (the
 * `tether.io/injected` annotation or a container named tether-init or tether-proxy),
 * host-network pods, and (for cp_inject_object) kinds that hold no pod. Refused
 * (CP_INJECT_REFUSED, with the reason): a pod this code does not understand (no
 * containers, fields of the wrong type), bad annotations, a container port the proxy
 * uses (15000, 15001, 15006, 15008, 15020, 15021), a container running as the proxy's
 * UID or GID 1337 (its traffic would bypass the proxy), a volume name the injector
 * uses. Nothing is ever half-injected. */
#ifndef CP_INJECT_H
#define CP_INJECT_H

#include <stddef.h>

#include <jansson.h>

#define CP_INJECT_DEFAULT_IMAGE    "tether/sidecar:latest"
#define CP_INJECT_DEFAULT_CONTROL  "tether-control.tether-system.svc:15012"
#define CP_INJECT_DEFAULT_TD       "cluster.local"
#define CP_INJECT_DEFAULT_AUDIENCE "tether"
#define CP_INJECT_DEFAULT_CPU      "100m"
#define CP_INJECT_DEFAULT_MEMORY   "128Mi"
#define CP_INJECT_DEFAULT_CPU_LIM  "2"
#define CP_INJECT_DEFAULT_MEM_LIM  "1Gi"

#define CP_INJECT_A_INJECTED "tether.io/injected"
#define CP_INJECT_A_BUNDLE   "tether.io/control-bundle"

struct cp_inject_opts {
    const char *image; /* the sidecar's image (also runs tether-iptables); NULL: default */
    const char *control_address; /* HOST:PORT of the sidecar API; NULL: default */
    const char *trust_domain;    /* NULL: default */
    const char *jwt_audience;    /* the projected token's audience; NULL: default */
    const char *bundle_pem;      /* the control plane's roots, PEM; required */
};

enum cp_inject_verdict {
    CP_INJECT_INJECTED, /* *out holds the patch or the injected object */
    CP_INJECT_SKIPPED,  /* left as it is; why says why; *out holds what to use (see below) */
    CP_INJECT_REFUSED,  /* not understood or bad annotations; why says why; *out NULL */
};

/* Checks opts (after defaults): an image, an address HOST:PORT, a trust domain, an
 * audience, a bundle holding "-----BEGIN CERTIFICATE-----". Returns 0 or -EINVAL with
 * one line in err naming the option. */
int cp_inject_opts_check(const struct cp_inject_opts *opts, char *err, size_t errlen);

/* The RFC 6902 patch that injects the Pod `pod` (as an admission webhook sees it): on
 * CP_INJECT_INJECTED *patch is a new array of "add" operations; on CP_INJECT_SKIPPED a
 * new empty array; on CP_INJECT_REFUSED NULL. why (may be NULL) gets one line. `pod` is
 * not changed. */
enum cp_inject_verdict cp_inject_pod_patch(const json_t *pod, const struct cp_inject_opts *opts,
                                           json_t **patch, char *why, size_t whylen);

/* The injected copy of obj, a Kubernetes object of any kind: Pods and the pod templates
 * of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs (apps/v1,
 * batch/v1, v1) are injected, each item of a List too; *out is a new object (on
 * CP_INJECT_SKIPPED an unchanged copy, e.g. for a Service). A List whose items are all
 * skipped is skipped; one refused item refuses the List. why names the object (kind and
 * name) and the reason. */
enum cp_inject_verdict cp_inject_object(const json_t *obj, const struct cp_inject_opts *opts,
                                        json_t **out, char *why, size_t whylen);

/* Applies the "add" operations of patch (as cp_inject_pod_patch makes them) to doc, in
 * place. Returns 0, or -EINVAL when a path does not resolve (err says which). */
int cp_inject_patch_apply(json_t *doc, const json_t *patch, char *err, size_t errlen);

#endif
