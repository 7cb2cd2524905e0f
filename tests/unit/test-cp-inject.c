/* Unit tests for control/inject.c and control/webhook.c's review: the plan's operations,
 * the injected containers and volumes, every annotation (and its refusals), the skips
 * (opted out, already injected, host network, other kinds), idempotence, the agreement
 * of the patch and the injected object, and AdmissionReview answers. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jansson.h>

#include "inject.h"
#include "webhook.h"
#include "tls/crypto.h"

#define BUNDLE "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

static const struct cp_inject_opts opts = {.bundle_pem = BUNDLE};

static json_t *load(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);

    if (!v)
        fail_msg("bad test JSON: %s: %s", e.text, text);
    return v;
}

#define POD_BASIC                                                                                  \
    "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"web\",\"namespace\":"        \
    "\"shop\"},\"spec\":{\"containers\":[{\"name\":\"web\",\"image\":\"nginx\",\"ports\":["        \
    "{\"containerPort\":8080},{\"containerPort\":9090,\"protocol\":\"UDP\"},{\"containerPort\":"   \
    "8443,\"protocol\":\"TCP\"}]},{\"name\":\"side\",\"image\":\"x\",\"ports\":[{"                 \
    "\"containerPort\":8080}]}]}}"

/* A pod with annotations set to `ann` (a JSON object's members, may be empty). */
static json_t *pod_with(const char *ann)
{
    char buf[4096];

    snprintf(
        buf, sizeof(buf),
        "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\","
        "\"annotations\":{%s}},\"spec\":{\"containers\":[{\"name\":\"app\",\"image\":\"a\","
        "\"ports\":[{\"containerPort\":80},{\"containerPort\":81}]}],\"initContainers\":["
        "{\"name\":\"setup\",\"image\":\"s\"}],\"volumes\":[{\"name\":\"data\",\"emptyDir\":{}}]}}",
        ann);
    return load(buf);
}

/* The container named name in spec.initContainers of the injected pod (or template). */
static json_t *init_named(json_t *spec, const char *name)
{
    size_t i;
    json_t *c;

    json_array_foreach(json_object_get(spec, "initContainers"), i, c)
    {
        if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0)
            return c;
    }
    fail_msg("no init container %s", name);
    return NULL;
}

/* The args of container c joined with spaces. */
static char *args_of(json_t *c, char *buf, size_t len)
{
    size_t i, o = 0;
    json_t *a;

    buf[0] = '\0';
    json_array_foreach(json_object_get(c, "args"), i, a)
    {
        o += snprintf(buf + o, len - o, "%s%s", i ? " " : "", json_string_value(a));
    }
    return buf;
}

static enum cp_inject_verdict inject(json_t *obj, json_t **out, char *why)
{
    return cp_inject_object(obj, &opts, out, why, 600);
}

static void test_inject_pod_patch_operations(void **state)
{
    json_t *pod = load(POD_BASIC), *patch, *applied, *injected;
    const char *paths1[] = {"/metadata/annotations", "/spec/initContainers", "/spec/volumes"};
    char why[600], err[200];
    size_t i;
    json_t *op;

    (void)state;
    assert_int_equal(cp_inject_pod_patch(pod, &opts, &patch, why, sizeof(why)), CP_INJECT_INJECTED);
    assert_int_equal(json_array_size(patch), 3);
    json_array_foreach(patch, i, op)
    {
        assert_string_equal(json_string_value(json_object_get(op, "op")), "add");
        assert_string_equal(json_string_value(json_object_get(op, "path")), paths1[i]);
    }
    /* Applied, the patch gives what cp_inject_object gives. */
    applied = json_deep_copy(pod);
    assert_int_equal(cp_inject_patch_apply(applied, patch, err, sizeof(err)), 0);
    assert_int_equal(inject(pod, &injected, why), CP_INJECT_INJECTED);
    assert_true(json_equal(applied, injected));
    /* The input is not changed. */
    {
        json_t *orig = load(POD_BASIC);
        assert_true(json_equal(orig, pod));
        json_decref(orig);
    }
    json_decref(applied);
    json_decref(injected);
    json_decref(patch);
    json_decref(pod);

    /* With annotations, init containers and volumes of its own: one add per key, the
     * two containers in front, the volumes appended. */
    pod = pod_with("\"team\":\"a/b~c\"");
    assert_int_equal(cp_inject_pod_patch(pod, &opts, &patch, why, sizeof(why)), CP_INJECT_INJECTED);
    {
        const char *want[] = {"/metadata/annotations/tether.io~1injected",
                              "/metadata/annotations/tether.io~1control-bundle",
                              "/metadata/annotations/prometheus.io~1scrape",
                              "/metadata/annotations/prometheus.io~1port",
                              "/metadata/annotations/prometheus.io~1path",
                              "/metadata/annotations/prometheus.io~1param_format",
                              "/spec/initContainers/0",
                              "/spec/initContainers/1",
                              "/spec/volumes/-",
                              "/spec/volumes/-"};
        assert_int_equal(json_array_size(patch), 10);
        json_array_foreach(patch, i, op)
        {
            assert_string_equal(json_string_value(json_object_get(op, "path")), want[i]);
        }
    }
    applied = json_deep_copy(pod);
    assert_int_equal(cp_inject_patch_apply(applied, patch, err, sizeof(err)), 0);
    {
        json_t *spec = json_object_get(applied, "spec");
        json_t *inits = json_object_get(spec, "initContainers");
        assert_int_equal(json_array_size(inits), 3);
        assert_string_equal(json_string_value(json_object_get(json_array_get(inits, 0), "name")),
                            "tether-init");
        assert_string_equal(json_string_value(json_object_get(json_array_get(inits, 1), "name")),
                            "tether-proxy");
        assert_string_equal(json_string_value(json_object_get(json_array_get(inits, 2), "name")),
                            "setup");
        assert_int_equal(json_array_size(json_object_get(spec, "volumes")), 3);
        assert_string_equal(
            json_string_value(json_object_get(
                json_object_get(json_object_get(applied, "metadata"), "annotations"), "team")),
            "a/b~c");
    }
    json_decref(applied);
    json_decref(patch);
    json_decref(pod);
}

static void test_inject_sidecar_container(void **state)
{
    json_t *pod = load(POD_BASIC), *out, *spec, *proxy, *init, *sc, *vols;
    char why[600], args[2048];

    (void)state;
    assert_int_equal(inject(pod, &out, why), CP_INJECT_INJECTED);
    spec = json_object_get(out, "spec");
    proxy = init_named(spec, "tether-proxy");
    init = init_named(spec, "tether-init");
    /* The sidecar: native, its command line, the downward API, probes, security. */
    assert_string_equal(json_string_value(json_object_get(proxy, "restartPolicy")), "Always");
    assert_string_equal(json_string_value(json_object_get(proxy, "image")),
                        CP_INJECT_DEFAULT_IMAGE);
    assert_string_equal(args_of(proxy, args, sizeof(args)),
                        "--transparent --control tether-control.tether-system.svc:15012 "
                        "--control-bundle /etc/tether/control-bundle.pem --jwt-file "
                        "/var/run/secrets/tether/token --spiffe-id "
                        "spiffe://cluster.local/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT) "
                        "--pod-ip $(POD_IP) --workload-ports 8080,8443");
    {
        json_t *want = load("[{\"name\":\"POD_NAMESPACE\",\"valueFrom\":{\"fieldRef\":{"
                            "\"apiVersion\":\"v1\",\"fieldPath\":\"metadata.namespace\"}}},"
                            "{\"name\":\"SERVICE_ACCOUNT\",\"valueFrom\":{\"fieldRef\":{"
                            "\"apiVersion\":\"v1\",\"fieldPath\":\"spec.serviceAccountName\"}}},"
                            "{\"name\":\"POD_IP\",\"valueFrom\":{\"fieldRef\":{\"apiVersion\":"
                            "\"v1\",\"fieldPath\":\"status.podIP\"}}}]");
        assert_true(json_equal(want, json_object_get(proxy, "env")));
        json_decref(want);
    }
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(proxy, "startupProbe"), "httpGet"), "port")),
        15021);
    assert_int_equal(
        json_integer_value(json_object_get(
            json_object_get(json_object_get(proxy, "readinessProbe"), "httpGet"), "port")),
        15021);
    sc = json_object_get(proxy, "securityContext");
    assert_int_equal(json_integer_value(json_object_get(sc, "runAsUser")), 1337);
    assert_true(json_is_true(json_object_get(sc, "readOnlyRootFilesystem")));
    assert_true(json_is_false(json_object_get(sc, "allowPrivilegeEscalation")));
    assert_true(json_is_false(json_object_get(sc, "privileged")));
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(json_object_get(sc, "capabilities"), "drop"), 0)),
                        "ALL");
    assert_null(json_object_get(json_object_get(sc, "capabilities"), "add"));
    assert_non_null(json_object_get(json_object_get(proxy, "lifecycle"), "preStop"));
    /* tether-init: root with NET_ADMIN and NET_RAW only. */
    assert_string_equal(json_string_value(json_array_get(json_object_get(init, "command"), 0)),
                        "tether-iptables");
    assert_string_equal(args_of(init, args, sizeof(args)), "install");
    sc = json_object_get(init, "securityContext");
    assert_int_equal(json_integer_value(json_object_get(sc, "runAsUser")), 0);
    assert_true(json_is_false(json_object_get(sc, "privileged")));
    assert_true(json_is_false(json_object_get(sc, "allowPrivilegeEscalation")));
    {
        json_t *want = load("{\"add\":[\"NET_ADMIN\",\"NET_RAW\"],\"drop\":[\"ALL\"]}");
        assert_true(json_equal(want, json_object_get(sc, "capabilities")));
        json_decref(want);
    }
    /* The token and the bundle. */
    vols = json_object_get(spec, "volumes");
    {
        json_t *want = load(
            "[{\"name\":\"tether-token\",\"projected\":{\"sources\":[{\"serviceAccountToken\":{"
            "\"audience\":\"tether\",\"expirationSeconds\":3600,\"path\":\"token\"}}]}},"
            "{\"name\":\"tether-control-bundle\",\"downwardAPI\":{\"items\":[{\"path\":"
            "\"control-bundle.pem\",\"fieldRef\":{\"apiVersion\":\"v1\",\"fieldPath\":"
            "\"metadata.annotations['tether.io/control-bundle']\"}}]}}]");
        assert_true(json_equal(want, vols));
        json_decref(want);
    }
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(out, "metadata"), "annotations"), CP_INJECT_A_BUNDLE)),
        BUNDLE);
    json_decref(out);

    /* Options. */
    {
        struct cp_inject_opts o2 = {.image = "reg/tether:1.2",
                                    .control_address = "cp:1",
                                    .trust_domain = "example.org",
                                    .jwt_audience = "aud-x",
                                    .bundle_pem = BUNDLE};
        assert_int_equal(cp_inject_object(pod, &o2, &out, why, sizeof(why)), CP_INJECT_INJECTED);
        spec = json_object_get(out, "spec");
        proxy = init_named(spec, "tether-proxy");
        assert_non_null(
            strstr(args_of(proxy, args, sizeof(args)), "--control cp:1 --control-bundle"));
        assert_non_null(strstr(args, "spiffe://example.org/ns/"));
        assert_string_equal(
            json_string_value(json_object_get(init_named(spec, "tether-init"), "image")),
            "reg/tether:1.2");
        {
            char *vols_text = json_dumps(json_object_get(spec, "volumes"), 0);
            assert_non_null(strstr(vols_text, "\"aud-x\""));
            free(vols_text);
        }
        json_decref(out);
    }
    json_decref(pod);
}

static void test_inject_annotations(void **state)
{
    json_t *pod, *out, *spec;
    char why[600], args[2048];

    (void)state;
    pod = pod_with("\"tether.io/exclude-inbound-ports\":\" 81 , 9000\","
                   "\"tether.io/exclude-outbound-ports\":\"5432\","
                   "\"tether.io/exclude-outbound-cidrs\":\"10.0.0.0/8, fd00::/8\","
                   "\"tether.io/include-inbound-ports\":\"*\","
                   "\"tether.io/inbound-mode\":\"permissive\","
                   "\"tether.io/opaque-ports\":\"3306,3306\","
                   "\"tether.io/proxy-cpu\":\"250m\",\"tether.io/proxy-memory\":\"2Gi\","
                   "\"tether.io/inject\":\"true\"");
    assert_int_equal(inject(pod, &out, why), CP_INJECT_INJECTED);
    spec = json_object_get(out, "spec");
    assert_string_equal(args_of(init_named(spec, "tether-init"), args, sizeof(args)),
                        "install --include-inbound-ports=* --exclude-inbound-ports=81,9000 "
                        "--exclude-outbound-ports=5432 "
                        "--exclude-outbound-cidrs=10.0.0.0/8,fd00::/8");
    args_of(init_named(spec, "tether-proxy"), args, sizeof(args));
    /* 81 is not captured inbound: not registered as an endpoint either. */
    assert_non_null(strstr(args, "--workload-ports 80 --inbound-mode permissive "
                                 "--opaque-ports 3306"));
    {
        /* A request above the default limit lifts the limit. */
        json_t *want = load("{\"requests\":{\"cpu\":\"250m\",\"memory\":\"2Gi\"},\"limits\":{"
                            "\"cpu\":\"2\",\"memory\":\"2Gi\"}}");
        assert_true(
            json_equal(want, json_object_get(init_named(spec, "tether-proxy"), "resources")));
        json_decref(want);
    }
    json_decref(out);
    json_decref(pod);

    /* Quantities in every form Kubernetes takes. */
    pod = pod_with("\"tether.io/proxy-cpu\":\"1e-1\",\"tether.io/proxy-cpu-limit\":\"1.5\","
                   "\"tether.io/proxy-memory\":\"+64M\",\"tether.io/proxy-memory-limit\":"
                   "\"0.5Gi\"");
    if (inject(pod, &out, why) != CP_INJECT_INJECTED)
        fail_msg("%s", why);
    {
        json_t *want = load("{\"requests\":{\"cpu\":\"1e-1\",\"memory\":\"+64M\"},\"limits\":{"
                            "\"cpu\":\"1.5\",\"memory\":\"0.5Gi\"}}");
        assert_true(json_equal(
            want, json_object_get(init_named(json_object_get(out, "spec"), "tether-proxy"),
                                  "resources")));
        json_decref(want);
    }
    json_decref(out);
    json_decref(pod);

    /* Only some inbound ports captured; strict mode says nothing. */
    pod = pod_with("\"tether.io/include-inbound-ports\":\"81\",\"tether.io/inbound-mode\":"
                   "\"strict\",\"tether.io/proxy-cpu-limit\":\"500m\"");
    assert_int_equal(inject(pod, &out, why), CP_INJECT_INJECTED);
    spec = json_object_get(out, "spec");
    args_of(init_named(spec, "tether-proxy"), args, sizeof(args));
    assert_non_null(strstr(args, "--workload-ports 81"));
    assert_null(strstr(args, "--inbound-mode"));
    assert_null(strstr(args, "--opaque-ports"));
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_object_get(init_named(spec, "tether-proxy"), "resources"),
                            "limits"),
            "cpu")),
        "500m");
    json_decref(out);
    json_decref(pod);
}

/* Each bad annotation is refused naming it, and nothing is returned. */
static void test_inject_annotation_refusals(void **state)
{
    static const struct {
        const char *ann, *want;
    } cases[] = {
        {"\"tether.io/inject\":\"maybe\"", "annotation tether.io/inject: expected \"true\""},
        {"\"tether.io/exclude-inbound-ports\":\"80,x\"",
         "tether.io/exclude-inbound-ports: expected ports"},
        {"\"tether.io/exclude-inbound-ports\":\"0\"", "tether.io/exclude-inbound-ports"},
        {"\"tether.io/exclude-inbound-ports\":\"65536\"", "tether.io/exclude-inbound-ports"},
        {"\"tether.io/exclude-inbound-ports\":\"80,\"", "tether.io/exclude-inbound-ports"},
        {"\"tether.io/include-inbound-ports\":\"**\"", "tether.io/include-inbound-ports"},
        {"\"tether.io/exclude-outbound-ports\":\"-1\"", "tether.io/exclude-outbound-ports"},
        {"\"tether.io/exclude-outbound-cidrs\":\"10.0.0.0\"",
         "tether.io/exclude-outbound-cidrs: expected CIDR"},
        {"\"tether.io/exclude-outbound-cidrs\":\"10.0.0.0/33\"",
         "tether.io/exclude-outbound-cidrs"},
        {"\"tether.io/exclude-outbound-cidrs\":\"fd00::/129\"", "tether.io/exclude-outbound-cidrs"},
        {"\"tether.io/exclude-outbound-cidrs\":\"10.0.0.0/8,\"",
         "tether.io/exclude-outbound-cidrs"},
        {"\"tether.io/exclude-outbound-cidrs\":\"x; rm -rf /\"",
         "tether.io/exclude-outbound-cidrs"},
        {"\"tether.io/inbound-mode\":\"open\"", "tether.io/inbound-mode: expected \"strict\""},
        {"\"tether.io/opaque-ports\":\"a\"", "tether.io/opaque-ports"},
        {"\"tether.io/proxy-cpu\":\"lots\"", "tether.io/proxy-cpu: expected a positive"},
        {"\"tether.io/proxy-cpu\":\"-1\"", "tether.io/proxy-cpu"},
        {"\"tether.io/proxy-cpu\":\"0\"", "tether.io/proxy-cpu"},
        {"\"tether.io/proxy-memory\":\"1Qi\"", "tether.io/proxy-memory"},
        {"\"tether.io/proxy-memory-limit\":\"1..2\"", "tether.io/proxy-memory-limit"},
        {"\"tether.io/proxy-memory-limit\":\"1e\"", "tether.io/proxy-memory-limit"},
        {"\"tether.io/proxy-memory-limit\":\"1e3x\"", "tether.io/proxy-memory-limit"},
        {"\"tether.io/proxy-memory-limit\":\".\"", "tether.io/proxy-memory-limit"},
        {"\"tether.io/proxy-memory-limit\":\"1 Gi\"", "tether.io/proxy-memory-limit"},
        {"\"tether.io/proxy-cpu\":\"2e0\",\"tether.io/proxy-cpu-limit\":\"1500m\"",
         "tether.io/proxy-cpu: 2e0 is above tether.io/proxy-cpu-limit 1500m"},
        {"\"tether.io/proxy-cpu\":\"1\",\"tether.io/proxy-cpu-limit\":\"500m\"",
         "tether.io/proxy-cpu: 1 is above tether.io/proxy-cpu-limit 500m"},
        {"\"tether.io/proxy-memory\":\"1Gi\",\"tether.io/proxy-memory-limit\":\"1G\"",
         "tether.io/proxy-memory: 1Gi is above"},
        {"\"tether.io/exclude-inbound-port\":\"80\"",
         "annotation tether.io/exclude-inbound-port: unknown"},
        {"\"tether.io/inbound-mode\":5", "annotation tether.io/inbound-mode: expected a string"},
    };
    char why[600];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *pod = pod_with(cases[i].ann), *out = (json_t *)1, *patch = (json_t *)1;
        enum cp_inject_verdict v = inject(pod, &out, why);
        if (v != CP_INJECT_REFUSED || !strstr(why, cases[i].want))
            fail_msg("%s: verdict %d \"%s\", want refusal \"%s\"", cases[i].ann, v, why,
                     cases[i].want);
        assert_null(out);
        assert_int_equal(cp_inject_pod_patch(pod, &opts, &patch, why, sizeof(why)),
                         CP_INJECT_REFUSED);
        assert_null(patch);
        assert_non_null(strstr(why, "Pod p: "));
        json_decref(pod);
    }
}

/* Pods this code does not understand, or must not inject, are refused with why. */
static void test_inject_pod_refusals(void **state)
{
    static const struct {
        const char *pod, *want;
    } cases[] = {
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{},\"spec\":{}}",
         "spec.containers: expected a non-empty array"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[]}}",
         "spec.containers: expected a non-empty array"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":{\"a\":1}}}",
         "spec.containers: expected a non-empty array"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":[]}", "spec: expected an object"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\"}", "spec: expected an object"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":[],\"spec\":{}}",
         "metadata: expected an object"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"annotations\":[]},\"spec\":{}}",
         "metadata.annotations: expected an object"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[7]}}",
         "spec.containers[0]: expected a container object"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"image\":\"a\"}]}}",
         "spec.containers[0]: a container without a name"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"name\":\"a\","
         "\"ports\":{}}]}}",
         "a.ports: expected an array"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"name\":\"a\","
         "\"ports\":[{\"containerPort\":\"80\"}]}]}}",
         "container a: ports[0].containerPort: expected 1..65535"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"name\":\"a\","
         "\"ports\":[{\"containerPort\":15001}]}]}}",
         "container a: port 15001 is one the proxy uses"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"securityContext\":{\"runAsUser\":"
         "1337},\"containers\":[{\"name\":\"a\"}]}}",
         "container a runs with runAsUser 1337, the proxy's"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"name\":\"a\"}],"
         "\"initContainers\":[{\"name\":\"i\",\"securityContext\":{\"runAsGroup\":1337}}]}}",
         "container i runs with runAsGroup 1337"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"name\":\"a\"}],"
         "\"initContainers\":{}}}",
         "spec.initContainers: expected an array"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"name\":\"a\"}],"
         "\"volumes\":[{\"name\":\"tether-token\",\"emptyDir\":{}}]}}",
         "spec.volumes: the name tether-token is the injector's"},
        {"{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{\"name\":\"a\"}],"
         "\"hostNetwork\":\"yes\"}}",
         "spec.hostNetwork: expected a boolean"},
        {"{\"kind\":\"Deployment\",\"apiVersion\":\"extensions/v1beta1\",\"metadata\":{\"name\":"
         "\"d\"},\"spec\":{}}",
         "Deployment d: apiVersion extensions/v1beta1: expected apps/v1"},
        {"{\"kind\":\"Deployment\",\"apiVersion\":\"apps/v1\",\"metadata\":{\"name\":\"d\"},"
         "\"spec\":{}}",
         "Deployment d: spec/template: expected an object"},
        {"{\"kind\":\"CronJob\",\"apiVersion\":\"batch/v1\",\"metadata\":{\"name\":\"c\"},"
         "\"spec\":{\"jobTemplate\":{\"spec\":{\"template\":{\"spec\":{}}}}}}",
         "CronJob c: spec.containers"},
        {"[1]", "a document that is not an object"},
    };
    char why[600];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *obj = json_loads(cases[i].pod, JSON_DECODE_ANY, NULL), *out = (json_t *)1;
        enum cp_inject_verdict v;

        assert_non_null(obj);
        v = inject(obj, &out, why);
        if (v != CP_INJECT_REFUSED || !strstr(why, cases[i].want))
            fail_msg("%s: verdict %d \"%s\", want refusal \"%s\"", cases[i].pod, v, why,
                     cases[i].want);
        assert_null(out);
        json_decref(obj);
    }
}

/* Left alone: opted out, injected, host network, other kinds. */
static void test_inject_skips_and_idempotence(void **state)
{
    json_t *pod, *out, *again, *patch;
    char why[600];

    (void)state;
    /* Opted out, even with another annotation that would be refused. */
    pod = pod_with("\"tether.io/inject\":\"false\",\"tether.io/proxy-cpu\":\"lots\"");
    assert_int_equal(inject(pod, &out, why), CP_INJECT_SKIPPED);
    assert_non_null(strstr(why, "opted out"));
    assert_true(json_equal(pod, out));
    json_decref(out);
    assert_int_equal(cp_inject_pod_patch(pod, &opts, &patch, why, sizeof(why)), CP_INJECT_SKIPPED);
    assert_int_equal(json_array_size(patch), 0);
    json_decref(patch);
    json_decref(pod);

    /* Injected twice is injected once. */
    pod = load(POD_BASIC);
    assert_int_equal(inject(pod, &out, why), CP_INJECT_INJECTED);
    assert_int_equal(inject(out, &again, why), CP_INJECT_SKIPPED);
    assert_non_null(strstr(why, "already injected"));
    assert_true(json_equal(out, again));
    json_decref(again);
    /* The containers alone also mark an injected pod (the annotation removed). */
    json_object_del(json_object_get(json_object_get(out, "metadata"), "annotations"),
                    CP_INJECT_A_INJECTED);
    assert_int_equal(cp_inject_pod_patch(out, &opts, &patch, why, sizeof(why)), CP_INJECT_SKIPPED);
    assert_int_equal(json_array_size(patch), 0);
    json_decref(patch);
    json_decref(out);
    json_decref(pod);

    /* Host network. */
    pod = load("{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"h\"},\"spec\":{"
               "\"hostNetwork\":true,\"containers\":[{\"name\":\"a\"}]}}");
    assert_int_equal(cp_inject_pod_patch(pod, &opts, &patch, why, sizeof(why)), CP_INJECT_SKIPPED);
    assert_non_null(strstr(why, "Pod h: host network"));
    assert_int_equal(json_array_size(patch), 0);
    json_decref(patch);
    json_decref(pod);

    /* Other kinds pass through unchanged. */
    pod = load("{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{\"name\":\"s\"},"
               "\"spec\":{\"ports\":[{\"port\":80}]}}");
    assert_int_equal(inject(pod, &out, why), CP_INJECT_SKIPPED);
    assert_true(json_equal(pod, out));
    json_decref(out);
    json_decref(pod);
}

/* Every workload kind gets the same pod as a Pod with the same template. */
static void test_inject_workload_kinds_agree(void **state)
{
    static const struct {
        const char *kind, *api, *wrap_pre, *wrap_post, *path[4];
    } kinds[] = {
        {"Deployment", "apps/v1", "{\"replicas\":1,\"template\":", "}", {"spec", "template"}},
        {"StatefulSet",
         "apps/v1",
         "{\"serviceName\":\"s\",\"template\":",
         "}",
         {"spec", "template"}},
        {"DaemonSet", "apps/v1", "{\"template\":", "}", {"spec", "template"}},
        {"ReplicaSet", "apps/v1", "{\"template\":", "}", {"spec", "template"}},
        {"Job", "batch/v1", "{\"template\":", "}", {"spec", "template"}},
        {"CronJob",
         "batch/v1",
         "{\"schedule\":\"* * * * *\",\"jobTemplate\":{\"spec\":{\"template\":",
         "}}}",
         {"spec", "jobTemplate", "spec", "template"}},
    };
    const char *tmpl = "{\"metadata\":{\"labels\":{\"app\":\"w\"},\"annotations\":{"
                       "\"tether.io/opaque-ports\":\"8080\"}},\"spec\":{\"containers\":[{"
                       "\"name\":\"w\",\"image\":\"i\",\"ports\":[{\"containerPort\":8080}]}]}}";
    json_t *pod, *pod_out, *pod_spec;
    char why[600], buf[2048];

    (void)state;
    pod = load(tmpl);
    json_object_set_new(pod, "apiVersion", json_string("v1"));
    json_object_set_new(pod, "kind", json_string("Pod"));
    assert_int_equal(inject(pod, &pod_out, why), CP_INJECT_INJECTED);
    pod_spec = json_object_get(pod_out, "spec");
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        json_t *obj, *out, *node;
        snprintf(buf, sizeof(buf),
                 "{\"apiVersion\":\"%s\",\"kind\":\"%s\",\"metadata\":{\"name\":\"w\"},\"spec\":"
                 "%s%s%s}",
                 kinds[i].api, kinds[i].kind, kinds[i].wrap_pre, tmpl, kinds[i].wrap_post);
        obj = load(buf);
        if (inject(obj, &out, why) != CP_INJECT_INJECTED)
            fail_msg("%s: %s", kinds[i].kind, why);
        node = out;
        for (int j = 0; j < 4 && kinds[i].path[j]; j++)
            node = json_object_get(node, kinds[i].path[j]);
        assert_true(json_equal(json_object_get(node, "spec"), pod_spec));
        assert_true(
            json_equal(json_object_get(node, "metadata"), json_object_get(pod_out, "metadata")));
        /* The workload's own metadata is not touched. */
        assert_null(json_object_get(json_object_get(out, "metadata"), "annotations"));
        json_decref(out);
        json_decref(obj);
    }
    /* A List is injected item by item. */
    {
        char *pod_text = json_dumps(pod, JSON_COMPACT);
        snprintf(buf, sizeof(buf),
                 "{\"apiVersion\":\"v1\",\"kind\":\"List\",\"items\":[%s,{\"kind\":"
                 "\"ConfigMap\",\"apiVersion\":\"v1\"}]}",
                 pod_text);
        free(pod_text);
    }
    {
        json_t *list = load(buf), *out;
        assert_int_equal(inject(list, &out, why), CP_INJECT_INJECTED);
        assert_true(json_equal(json_array_get(json_object_get(out, "items"), 0), pod_out));
        json_decref(out);
        json_decref(list);
    }
    json_decref(pod_out);
    json_decref(pod);
}

static void test_inject_opts_check(void **state)
{
    char err[300];
    struct cp_inject_opts o = {.bundle_pem = "not pem"};
    json_t *pod = load(POD_BASIC), *out;

    (void)state;
    assert_int_equal(cp_inject_opts_check(&o, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "bundle"));
    assert_int_equal(cp_inject_object(pod, &o, &out, err, sizeof(err)), CP_INJECT_REFUSED);
    o.bundle_pem = BUNDLE;
    o.control_address = "nohost";
    assert_int_equal(cp_inject_opts_check(&o, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "control address"));
    o.control_address = "h:70000";
    assert_int_equal(cp_inject_opts_check(&o, err, sizeof(err)), -EINVAL);
    o.control_address = "h:15012";
    o.trust_domain = "a/b";
    assert_int_equal(cp_inject_opts_check(&o, err, sizeof(err)), -EINVAL);
    o.trust_domain = NULL;
    assert_int_equal(cp_inject_opts_check(&o, err, sizeof(err)), 0);
    json_decref(pod);
}

/* Runs a review; returns the answer's response object (owned by *doc). */
static json_t *review(const char *body, int want_status, json_t **doc)
{
    char reason[600];
    int st = cp_webhook_review(body, strlen(body), &opts, doc, reason, sizeof(reason));

    if (st != want_status)
        fail_msg("status %d (%s), want %d", st, reason, want_status);
    assert_non_null(*doc);
    return json_object_get(*doc, "response");
}

#define REVIEW(obj, op)                                                                            \
    "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":"   \
    "\"u-42\",\"kind\":{\"group\":\"\",\"version\":\"v1\",\"kind\":\"Pod\"},\"resource\":{"        \
    "\"group\":\"\",\"version\":\"v1\",\"resource\":\"pods\"},\"operation\":\"" op                 \
    "\",\"namespace\":\"shop\",\"object\":" obj "}}"

static void test_webhook_review(void **state)
{
    json_t *doc, *resp, *pod = load(POD_BASIC), *patch;
    uint8_t *dec;
    size_t dec_len;
    char why[600];

    (void)state;
    /* Injected: the uid echoed, the patch that cp_inject_pod_patch makes. */
    resp = review(REVIEW(POD_BASIC, "CREATE"), 200, &doc);
    assert_string_equal(json_string_value(json_object_get(doc, "apiVersion")),
                        "admission.k8s.io/v1");
    assert_string_equal(json_string_value(json_object_get(doc, "kind")), "AdmissionReview");
    assert_string_equal(json_string_value(json_object_get(resp, "uid")), "u-42");
    assert_true(json_is_true(json_object_get(resp, "allowed")));
    assert_string_equal(json_string_value(json_object_get(resp, "patchType")), "JSONPatch");
    {
        const char *b64 = json_string_value(json_object_get(resp, "patch"));
        json_t *got;
        assert_int_equal(tt_crypto_base64_decode(b64, strlen(b64), &dec, &dec_len), 0);
        got = json_loadb((const char *)dec, dec_len, 0, NULL);
        assert_int_equal(cp_inject_pod_patch(pod, &opts, &patch, why, sizeof(why)),
                         CP_INJECT_INJECTED);
        assert_true(json_equal(got, patch));
        json_decref(got);
        json_decref(patch);
        free(dec);
    }
    json_decref(doc);

    /* Opted out: allowed, no patch. */
    resp = review(REVIEW("{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"metadata\":{\"annotations\":{"
                         "\"tether.io/inject\":\"false\"}},\"spec\":{\"containers\":[{\"name\":"
                         "\"a\"}]}}",
                         "CREATE"),
                  200, &doc);
    assert_true(json_is_true(json_object_get(resp, "allowed")));
    assert_null(json_object_get(resp, "patch"));
    assert_null(json_object_get(resp, "patchType"));
    json_decref(doc);

    /* Not understood: refused with the reason. */
    resp = review(REVIEW("{\"kind\":\"Pod\",\"apiVersion\":\"v1\",\"spec\":{\"containers\":[{"
                         "\"name\":\"a\",\"ports\":[{\"containerPort\":15006}]}]}}",
                         "CREATE"),
                  200, &doc);
    assert_true(json_is_false(json_object_get(resp, "allowed")));
    assert_string_equal(json_string_value(json_object_get(resp, "uid")), "u-42");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(resp, "status"), "code")),
                     400);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(resp, "status"), "message")),
               "port 15006 is one the proxy uses"));
    json_decref(doc);

    /* An update: let through untouched. */
    resp = review(REVIEW(POD_BASIC, "UPDATE"), 200, &doc);
    assert_true(json_is_true(json_object_get(resp, "allowed")));
    assert_null(json_object_get(resp, "patch"));
    json_decref(doc);

    /* Not a Pod. */
    resp = review(REVIEW("{\"kind\":\"Service\",\"apiVersion\":\"v1\"}", "CREATE"), 200, &doc);
    assert_true(json_is_false(json_object_get(resp, "allowed")));
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(resp, "status"), "message")),
               "not a Pod"));
    json_decref(doc);

    /* Another version of the review. */
    resp = review("{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\","
                  "\"request\":{\"uid\":\"u-1\"}}",
                  200, &doc);
    assert_true(json_is_false(json_object_get(resp, "allowed")));
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(resp, "status"), "message")),
               "expected apiVersion admission.k8s.io/v1"));
    json_decref(doc);

    /* Nothing to answer to: HTTP 400. */
    review("{not json", 400, &doc);
    assert_non_null(strstr(json_string_value(json_object_get(doc, "error")), "not JSON"));
    json_decref(doc);
    review("{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}", 400, &doc);
    json_decref(doc);
    review("[]", 400, &doc);
    json_decref(doc);
    json_decref(pod);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inject_pod_patch_operations),
        cmocka_unit_test(test_inject_sidecar_container),
        cmocka_unit_test(test_inject_annotations),
        cmocka_unit_test(test_inject_annotation_refusals),
        cmocka_unit_test(test_inject_pod_refusals),
        cmocka_unit_test(test_inject_skips_and_idempotence),
        cmocka_unit_test(test_inject_workload_kinds_agree),
        cmocka_unit_test(test_inject_opts_check),
        cmocka_unit_test(test_webhook_review),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
