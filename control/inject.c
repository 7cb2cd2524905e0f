/* Sidecar injection: one plan of RFC 6902 "add" operations per pod, returned as the
 * webhook's patch or applied for `tetherctl inject` (inject.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inject.h"

#define PROXY_UID       1337
#define HEALTH_PORT     15021
#define METRICS_PORT    15020
#define MAX_PORTS       256
#define TOKEN_DIR       "/var/run/secrets/tether"
#define BUNDLE_DIR      "/etc/tether"
#define VOL_TOKEN       "tether-token"
#define VOL_BUNDLE      "tether-control-bundle"
#define INIT_NAME       "tether-init"
#define PROXY_NAME      "tether-proxy"
#define ANNOTATION_PFX  "tether.io/"
#define PRESTOP_SECONDS 5

/* Ports the proxy listens on or captures for itself: an app container may not use them. */
static const int proxy_ports[] = {15000, 15001, 15006, 15008, 15020, 15021};

/* What the annotations ask for, parsed. */
struct knobs {
    bool opt_out;
    const char *include_in; /* "*" or a normalized list ("" for none); NULL: default */
    const char *exclude_in; /* normalized lists, NULL when not given */
    const char *exclude_out;
    const char *exclude_cidrs;
    bool permissive;
    const char *opaque;
    const char *cpu, *memory, *cpu_limit, *memory_limit;
    int in_ports[MAX_PORTS], n_in; /* include_in as numbers (when not "*") */
    int ex_ports[MAX_PORTS], n_ex; /* exclude_in as numbers */
};

static void set_why(char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_why(char *why, size_t whylen, const char *fmt, ...)
{
    va_list ap;

    if (!why || whylen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(why, whylen, fmt, ap);
    va_end(ap);
}

static const char *or_default(const char *v, const char *d)
{
    return v && v[0] ? v : d;
}

/* ---- values from annotations ---- */

/* Parses "P[,P...]" (spaces around entries allowed) into ports[] without duplicates and
 * writes the normalized "P,P" into norm. Returns 0, or -EINVAL with a reason in err. */
static int parse_ports(const char *s, int *ports, int *n, char *norm, size_t normlen, char *err,
                       size_t errlen)
{
    const char *p = s;
    size_t off = 0;

    *n = 0;
    norm[0] = '\0';
    while (*p == ' ')
        p++;
    if (*p == '\0')
        return 0;
    for (;;) {
        long v = 0;
        int digits = 0;
        while (*p == ' ')
            p++;
        while (*p >= '0' && *p <= '9' && digits < 6)
            v = v * 10 + (*p++ - '0'), digits++;
        while (*p == ' ')
            p++;
        if (digits == 0 || (*p != ',' && *p != '\0') || v < 1 || v > 65535) {
            snprintf(err, errlen, "expected ports P[,P...] from 1 to 65535, got \"%.80s\"", s);
            return -EINVAL;
        }
        bool dup = false;
        for (int i = 0; i < *n; i++)
            dup |= ports[i] == v;
        if (!dup) {
            if (*n == MAX_PORTS) {
                snprintf(err, errlen, "more than %d ports", MAX_PORTS);
                return -EINVAL;
            }
            ports[(*n)++] = (int)v;
            off += snprintf(norm + off, normlen - off, "%s%ld", off ? "," : "", v);
        }
        if (*p == '\0')
            return 0;
        p++;
    }
}

/* Parses "CIDR[,CIDR...]" (IPv4 or IPv6, each with a prefix length) into the normalized
 * "CIDR,CIDR". Returns 0 or -EINVAL with a reason in err. */
static int parse_cidrs(const char *s, char *norm, size_t normlen, char *err, size_t errlen)
{
    const char *p = s;
    size_t off = 0;

    norm[0] = '\0';
    while (*p) {
        char item[64], addr[64];
        unsigned char buf[16];
        size_t len = strcspn(p, ",");
        const char *slash;
        char *end;
        long bits;
        bool v6;

        while (len > 0 && *p == ' ')
            p++, len--;
        while (len > 0 && p[len - 1] == ' ')
            len--;
        if (len == 0 || len >= sizeof(item))
            goto bad;
        memcpy(item, p, len);
        item[len] = '\0';
        slash = strchr(item, '/');
        if (!slash || slash == item || (size_t)(slash - item) >= sizeof(addr))
            goto bad;
        memcpy(addr, item, slash - item);
        addr[slash - item] = '\0';
        v6 = strchr(addr, ':') != NULL;
        if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, buf) != 1)
            goto bad;
        errno = 0;
        bits = strtol(slash + 1, &end, 10);
        if (slash[1] < '0' || slash[1] > '9' || *end || bits < 0 || bits > (v6 ? 128 : 32))
            goto bad;
        if (off + len + 2 > normlen) {
            snprintf(err, errlen, "too long");
            return -EINVAL;
        }
        off += snprintf(norm + off, normlen - off, "%s%s", off ? "," : "", item);
        p += strcspn(p, ",");
        if (*p == ',') {
            p++;
            if (*p == '\0')
                goto bad;
        }
    }
    return 0;
bad:
    snprintf(err, errlen, "expected CIDR[,CIDR...] (e.g. 10.0.0.0/8,fd00::/8), got \"%.80s\"", s);
    return -EINVAL;
}

/* Parses a Kubernetes quantity ("100m", "1.5", "128Mi", "1e3", "2G": a decimal number,
 * then a binary or decimal suffix or a decimal exponent) into *out. Returns 0 for a
 * positive finite quantity, else -EINVAL. Pure. */
static int parse_quantity(const char *s, double *out)
{
    static const struct {
        const char *sfx;
        double mult;
    } sfx[] = {{"", 1},
               {"m", 1e-3},
               {"k", 1e3},
               {"M", 1e6},
               {"G", 1e9},
               {"T", 1e12},
               {"P", 1e15},
               {"E", 1e18},
               {"Ki", 1024.0},
               {"Mi", 1048576.0},
               {"Gi", 1073741824.0},
               {"Ti", 1099511627776.0},
               {"Pi", 1125899906842624.0},
               {"Ei", 1152921504606846976.0}};
    const char *p = s;
    size_t digits = 0;
    char num[64];
    double v, mult = -1;

    if (*p == '+')
        p++;
    while (*p >= '0' && *p <= '9')
        p++, digits++;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9')
            p++, digits++;
    }
    if (digits == 0 || (size_t)(p - s) >= sizeof(num))
        return -EINVAL;
    memcpy(num, s, p - s);
    num[p - s] = '\0';
    v = strtod(num, NULL);
    if ((p[0] == 'e' || p[0] == 'E') && p[1] && strchr("+-0123456789", p[1])) {
        /* A decimal exponent, e.g. 1e3; a bare E is the exa suffix. */
        const char *e = p + 1 + (p[1] == '+' || p[1] == '-');
        int ex = 0;
        if (*e == '\0' || strspn(e, "0123456789") != strlen(e) || strlen(e) > 2)
            return -EINVAL;
        ex = atoi(e) * (p[1] == '-' ? -1 : 1);
        mult = 1;
        for (int i = 0; i < (ex < 0 ? -ex : ex); i++)
            mult = ex < 0 ? mult / 10 : mult * 10;
    } else {
        for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++)
            if (strcmp(p, sfx[i].sfx) == 0)
                mult = sfx[i].mult;
    }
    if (mult < 0)
        return -EINVAL;
    *out = v * mult;
    return *out > 0 && *out < 1e30 ? 0 : -EINVAL;
}

/* The string value of annotation key in annotations (an object or NULL), or NULL. */
static const char *annotation(const json_t *annotations, const char *key)
{
    return json_string_value(json_object_get(annotations, key));
}

/* Reads every tether.io/ annotation into k, with normalized copies kept alive in store
 * (an object the caller frees). Returns 0 or -EINVAL with why naming the annotation. */
static int read_knobs(const json_t *annotations, struct knobs *k, json_t *store, char *why,
                      size_t whylen)
{
    const char *key;
    json_t *v;
    char err[400], norm[4096];

    memset(k, 0, sizeof(*k));
    json_object_foreach((json_t *)annotations, key, v)
    {
        const char *s;
        const char **slot = NULL;

        if (strncmp(key, ANNOTATION_PFX, strlen(ANNOTATION_PFX)) != 0)
            continue;
        s = json_string_value(v);
        if (!s) {
            set_why(why, whylen, "annotation %s: expected a string", key);
            return -EINVAL;
        }
        err[0] = '\0';
        if (strcmp(key, "tether.io/inject") == 0) {
            if (strcmp(s, "false") == 0)
                k->opt_out = true;
            else if (strcmp(s, "true") != 0)
                snprintf(err, sizeof(err), "expected \"true\" or \"false\", got \"%.40s\"", s);
        } else if (strcmp(key, CP_INJECT_A_INJECTED) == 0 || strcmp(key, CP_INJECT_A_BUNDLE) == 0) {
            continue; /* ours; the caller has looked at them */
        } else if (strcmp(key, "tether.io/include-inbound-ports") == 0) {
            if (strcmp(s, "*") == 0)
                k->include_in = "*";
            else if (parse_ports(s, k->in_ports, &k->n_in, norm, sizeof(norm), err, sizeof(err)) ==
                     0)
                slot = &k->include_in;
        } else if (strcmp(key, "tether.io/exclude-inbound-ports") == 0) {
            if (parse_ports(s, k->ex_ports, &k->n_ex, norm, sizeof(norm), err, sizeof(err)) == 0)
                slot = &k->exclude_in;
        } else if (strcmp(key, "tether.io/exclude-outbound-ports") == 0 ||
                   strcmp(key, "tether.io/opaque-ports") == 0) {
            int ports[MAX_PORTS], n;
            if (parse_ports(s, ports, &n, norm, sizeof(norm), err, sizeof(err)) == 0)
                slot = key[10] == 'e' ? &k->exclude_out : &k->opaque;
        } else if (strcmp(key, "tether.io/exclude-outbound-cidrs") == 0) {
            if (parse_cidrs(s, norm, sizeof(norm), err, sizeof(err)) == 0)
                slot = &k->exclude_cidrs;
        } else if (strcmp(key, "tether.io/inbound-mode") == 0) {
            if (strcmp(s, "permissive") == 0)
                k->permissive = true;
            else if (strcmp(s, "strict") != 0)
                snprintf(err, sizeof(err), "expected \"strict\" or \"permissive\", got \"%.40s\"",
                         s);
        } else if (strcmp(key, "tether.io/proxy-cpu") == 0 ||
                   strcmp(key, "tether.io/proxy-memory") == 0 ||
                   strcmp(key, "tether.io/proxy-cpu-limit") == 0 ||
                   strcmp(key, "tether.io/proxy-memory-limit") == 0) {
            double q;
            const char *what = key + strlen("tether.io/proxy-");
            if (parse_quantity(s, &q) != 0)
                snprintf(err, sizeof(err),
                         "expected a positive Kubernetes quantity (e.g. %s), got \"%.40s\"",
                         what[0] == 'c' ? "100m, 1.5" : "128Mi, 1Gi", s);
            else
                *(what[0] == 'c' ? (strchr(what, '-') ? &k->cpu_limit : &k->cpu)
                                 : (strchr(what, '-') ? &k->memory_limit : &k->memory)) = s;
        } else {
            snprintf(err, sizeof(err),
                     "unknown annotation (known: inject, include-inbound-ports, "
                     "exclude-inbound-ports, exclude-outbound-ports, exclude-outbound-cidrs, "
                     "inbound-mode, opaque-ports, proxy-cpu, proxy-memory, proxy-cpu-limit, "
                     "proxy-memory-limit)");
        }
        if (err[0]) {
            set_why(why, whylen, "annotation %s: %s", key, err);
            return -EINVAL;
        }
        if (slot) {
            json_t *copy = json_string(norm);
            if (!copy || json_object_set_new(store, key, copy) != 0) {
                set_why(why, whylen, "out of memory");
                return -ENOMEM;
            }
            *slot = json_string_value(copy);
        }
    }
    return 0;
}

/* Checks that request <= limit for one resource, else why names both annotations. */
static int check_request_limit(const char *what, const char *req, const char *lim, bool lim_given,
                               char *why, size_t whylen)
{
    double r, l;

    parse_quantity(req, &r);
    parse_quantity(lim, &l);
    if (r > l && lim_given) {
        set_why(why, whylen,
                "annotation tether.io/proxy-%s: %s is above tether.io/proxy-%s-limit %s", what, req,
                what, lim);
        return -EINVAL;
    }
    return 0;
}

/* ---- understanding the pod ---- */

/* True when arr (an array or NULL) holds a container named name. */
static bool has_container(const json_t *arr, const char *name)
{
    size_t i;
    json_t *c;

    json_array_foreach((json_t *)arr, i, c)
    {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n && strcmp(n, name) == 0)
            return true;
    }
    return false;
}

/* Checks that field `key` of obj is absent or of the JSON type want; why names it. */
static bool field_type_ok(const json_t *obj, const char *where, const char *key, json_type want,
                          char *why, size_t whylen)
{
    json_t *v = json_object_get(obj, key);
    static const char *const names[] = {"an object", "an array",  "a string",  "an integer",
                                        "a number",  "a boolean", "a boolean", "null"};

    if (!v || json_is_null(v) || json_typeof(v) == want ||
        (want == JSON_TRUE && json_is_boolean(v)))
        return true;
    set_why(why, whylen, "%s.%s: expected %s", where, key, names[want]);
    return false;
}

/* Checks one app or init container: an object with a name, well-formed ports, not the
 * proxy's ports or UID/GID. Adds its TCP ports to ports[] when ports is not NULL. */
static int check_container(const json_t *c, const char *where, const json_t *pod_sc, int *ports,
                           int *n_ports, char *why, size_t whylen)
{
    const char *name;
    const json_t *sc;
    size_t i;
    json_t *p;

    if (!json_is_object(c)) {
        set_why(why, whylen, "%s: expected a container object", where);
        return -EINVAL;
    }
    name = json_string_value(json_object_get(c, "name"));
    if (!name || !name[0]) {
        set_why(why, whylen, "%s: a container without a name", where);
        return -EINVAL;
    }
    if (!field_type_ok(c, name, "ports", JSON_ARRAY, why, whylen) ||
        !field_type_ok(c, name, "securityContext", JSON_OBJECT, why, whylen))
        return -EINVAL;
    json_array_foreach(json_object_get(c, "ports"), i, p)
    {
        json_t *cp = json_object_get(p, "containerPort");
        const char *proto = json_string_value(json_object_get(p, "protocol"));
        json_int_t port;

        if (!json_is_integer(cp) || json_integer_value(cp) < 1 || json_integer_value(cp) > 65535) {
            set_why(why, whylen, "container %s: ports[%zu].containerPort: expected 1..65535", name,
                    i);
            return -EINVAL;
        }
        port = json_integer_value(cp);
        for (size_t j = 0; j < sizeof(proxy_ports) / sizeof(proxy_ports[0]); j++) {
            if (port == proxy_ports[j]) {
                set_why(why, whylen,
                        "container %s: port %d is one the proxy uses (15000, 15001, 15006, "
                        "15008, 15020, 15021)",
                        name, (int)port);
                return -EINVAL;
            }
        }
        if (ports && (!proto || strcmp(proto, "TCP") == 0)) {
            bool dup = false;
            for (int j = 0; j < *n_ports; j++)
                dup |= ports[j] == port;
            if (!dup && *n_ports < MAX_PORTS)
                ports[(*n_ports)++] = (int)port;
        }
    }
    /* A container running as the proxy's UID or GID is exempt from capture: its traffic
     * would bypass the proxy (mTLS and policy) unseen. */
    sc = json_object_get(c, "securityContext");
    for (int k = 0; k < 2; k++) {
        const char *f = k ? "runAsGroup" : "runAsUser";
        json_t *v = json_object_get(sc, f);
        if (!v)
            v = json_object_get(pod_sc, f);
        if (json_is_integer(v) && json_integer_value(v) == PROXY_UID) {
            set_why(why, whylen,
                    "container %s runs with %s %d, the proxy's: its traffic would bypass the "
                    "proxy",
                    name, f, PROXY_UID);
            return -EINVAL;
        }
    }
    return 0;
}

/* ---- building ---- */

/* Escapes a JSON pointer token (RFC 6901 §3: "~" -> "~0", "/" -> "~1") into out. */
static void pointer_escape(const char *s, char *out, size_t outlen)
{
    size_t o = 0;

    for (; *s && o + 3 < outlen; s++) {
        if (*s == '~' || *s == '/') {
            out[o++] = '~';
            out[o++] = *s == '~' ? '0' : '1';
        } else {
            out[o++] = *s;
        }
    }
    out[o] = '\0';
}

/* Appends {"op": "add", "path": prefix + suffix, "value": value} to ops (takes value). */
static int add_op(json_t *ops, const char *prefix, const char *suffix, json_t *value)
{
    char path[1024];
    json_t *op;

    snprintf(path, sizeof(path), "%s%s", prefix, suffix);
    if (!value)
        return -ENOMEM;
    op = json_pack("{s:s, s:s, s:o}", "op", "add", "path", path, "value", value);
    if (!op || json_array_append_new(ops, op) != 0)
        return -ENOMEM;
    return 0;
}

/* Joins ports[0..n) as "P,P". */
static void join_ports(const int *ports, int n, char *out, size_t len)
{
    size_t o = 0;

    out[0] = '\0';
    for (int i = 0; i < n && o < len; i++)
        o += snprintf(out + o, len - o, "%s%d", i ? "," : "", ports[i]);
}

static json_t *env_field(const char *name, const char *path)
{
    return json_pack("{s:s, s:{s:{s:s, s:s}}}", "name", name, "valueFrom", "fieldRef", "apiVersion",
                     "v1", "fieldPath", path);
}

/* The tether-init container. */
static json_t *init_container(const struct cp_inject_opts *o, const struct knobs *k)
{
    json_t *args = json_pack("[s]", "install");
    json_t *c;
    struct {
        const char *flag, *val;
    } opt[] = {{"--include-inbound-ports", k->include_in},
               {"--exclude-inbound-ports", k->exclude_in},
               {"--exclude-outbound-ports", k->exclude_out},
               {"--exclude-outbound-cidrs", k->exclude_cidrs}};

    for (size_t i = 0; args && i < sizeof(opt) / sizeof(opt[0]); i++) {
        if (!opt[i].val)
            continue;
        json_t *a = json_sprintf("%s=%s", opt[i].flag, opt[i].val);
        if (!a || json_array_append_new(args, a) != 0) {
            json_decref(args);
            return NULL;
        }
    }
    if (!args)
        return NULL;
    c = json_pack("{s:s, s:s, s:[s], s:o, s:{s:{s:s, s:s}, s:{s:s, s:s}}, "
                  "s:{s:i, s:i, s:b, s:b, s:b, s:{s:[s, s], s:[s]}}}",
                  "name", INIT_NAME, "image", o->image, "command", "tether-iptables", "args", args,
                  "resources", "requests", "cpu", "10m", "memory", "16Mi", "limits", "cpu", "100m",
                  "memory", "64Mi", "securityContext", "runAsUser", 0, "runAsGroup", 0,
                  "runAsNonRoot", 0, "privileged", 0, "allowPrivilegeEscalation", 0, "capabilities",
                  "add", "NET_ADMIN", "NET_RAW", "drop", "ALL");
    return c;
}

/* The tether-proxy native sidecar. */
static json_t *proxy_container(const struct cp_inject_opts *o, const struct knobs *k,
                               const int *wports, int n_wports)
{
    char spiffe[512], list[MAX_PORTS * 6 + 1];
    const char *cpu = or_default(k->cpu, CP_INJECT_DEFAULT_CPU);
    const char *mem = or_default(k->memory, CP_INJECT_DEFAULT_MEMORY);
    const char *cpu_lim = or_default(k->cpu_limit, CP_INJECT_DEFAULT_CPU_LIM);
    const char *mem_lim = or_default(k->memory_limit, CP_INJECT_DEFAULT_MEM_LIM);
    double a, b;
    json_t *args;

    /* A request above the default limit raises the limit when none was given. */
    if (!k->cpu_limit && parse_quantity(cpu, &a) == 0 && parse_quantity(cpu_lim, &b) == 0 && a > b)
        cpu_lim = cpu;
    if (!k->memory_limit && parse_quantity(mem, &a) == 0 && parse_quantity(mem_lim, &b) == 0 &&
        a > b)
        mem_lim = mem;
    snprintf(spiffe, sizeof(spiffe), "spiffe://%s/ns/$(POD_NAMESPACE)/sa/$(SERVICE_ACCOUNT)",
             o->trust_domain);
    args =
        json_pack("[s, s, s, s, s, s, s, s, s, s, s]", "--transparent", "--control",
                  o->control_address, "--control-bundle", BUNDLE_DIR "/control-bundle.pem",
                  "--jwt-file", TOKEN_DIR "/token", "--spiffe-id", spiffe, "--pod-ip", "$(POD_IP)");
    if (!args)
        return NULL;
    if (n_wports > 0) {
        join_ports(wports, n_wports, list, sizeof(list));
        if (json_array_append_new(args, json_string("--workload-ports")) != 0 ||
            json_array_append_new(args, json_string(list)) != 0)
            goto oom;
    }
    if (k->permissive && (json_array_append_new(args, json_string("--inbound-mode")) != 0 ||
                          json_array_append_new(args, json_string("permissive")) != 0))
        goto oom;
    if (k->opaque && k->opaque[0] &&
        (json_array_append_new(args, json_string("--opaque-ports")) != 0 ||
         json_array_append_new(args, json_string(k->opaque)) != 0))
        goto oom;
    return json_pack("{s:s, s:s, s:[s], s:o, s:[o, o, o], s:[{s:s, s:i, s:s}, {s:s, s:i, s:s}], "
                     "s:s, "
                     "s:{s:{s:s, s:i}, s:i, s:i, s:i, s:i}, "
                     "s:{s:{s:s, s:i}, s:i, s:i, s:i}, "
                     "s:{s:{s:{s:i}}}, "
                     "s:{s:{s:s, s:s}, s:{s:s, s:s}}, "
                     "s:{s:i, s:i, s:b, s:b, s:b, s:b, s:{s:[s]}}, "
                     "s:[{s:s, s:s, s:b}, {s:s, s:s, s:b}]}",
                     "name", PROXY_NAME, "image", o->image, "command", "tether-sidecar", "args",
                     args, "env", env_field("POD_NAMESPACE", "metadata.namespace"),
                     env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
                     env_field("POD_IP", "status.podIP"), "ports", "name", "tether-metrics",
                     "containerPort", METRICS_PORT, "protocol", "TCP", "name", "tether-health",
                     "containerPort", HEALTH_PORT, "protocol", "TCP", "restartPolicy", "Always",
                     /* Native sidecar: the next containers start once this probe passed. */
                     "startupProbe", "httpGet", "path", "/ready", "port", HEALTH_PORT,
                     "periodSeconds", 1, "timeoutSeconds", 3, "failureThreshold", 600,
                     "successThreshold", 1, "readinessProbe", "httpGet", "path", "/ready", "port",
                     HEALTH_PORT, "periodSeconds", 5, "timeoutSeconds", 3, "failureThreshold", 3,
                     /* The app containers stop before the sidecar (native sidecars) and keep the
                      * network meanwhile; the wait lets the endpoint's removal reach the callers
                      * before the proxy's SIGTERM drain (--drain-timeout) begins. */
                     "lifecycle", "preStop", "sleep", "seconds", PRESTOP_SECONDS, "resources",
                     "requests", "cpu", cpu, "memory", mem, "limits", "cpu", cpu_lim, "memory",
                     mem_lim, "securityContext", "runAsUser", PROXY_UID, "runAsGroup", PROXY_UID,
                     "runAsNonRoot", 1, "readOnlyRootFilesystem", 1, "allowPrivilegeEscalation", 0,
                     "privileged", 0, "capabilities", "drop", "ALL", "volumeMounts", "name",
                     VOL_TOKEN, "mountPath", TOKEN_DIR, "readOnly", 1, "name", VOL_BUNDLE,
                     "mountPath", BUNDLE_DIR, "readOnly", 1);
oom:
    json_decref(args);
    return NULL;
}

static json_t *volumes(const struct cp_inject_opts *o)
{
    return json_pack("[{s:s, s:{s:[{s:{s:s, s:i, s:s}}]}}, {s:s, s:{s:[{s:s, s:{s:s, s:s}}]}}]",
                     "name", VOL_TOKEN, "projected", "sources", "serviceAccountToken", "audience",
                     o->jwt_audience, "expirationSeconds", 3600, "path", "token", "name",
                     VOL_BUNDLE, "downwardAPI", "items", "path", "control-bundle.pem", "fieldRef",
                     "apiVersion", "v1", "fieldPath",
                     "metadata.annotations['" CP_INJECT_A_BUNDLE "']");
}

/* Plans the injection of the pod whose metadata and spec are at prefix ("" for a Pod,
 * "/spec/template" for a Deployment...) in the object `root` into ops. what names the
 * pod in messages. Returns a verdict with why set unless injected. */
static enum cp_inject_verdict plan(const json_t *root, const char *prefix, const char *what,
                                   const struct cp_inject_opts *o, json_t *ops, char *why,
                                   size_t whylen)
{
    const json_t *meta, *spec, *annotations, *containers, *inits, *vols, *pod_sc;
    json_t *store = json_object(), *ann_add = NULL;
    enum cp_inject_verdict verdict = CP_INJECT_REFUSED;
    char w[300], sub[300], inner[300];
    int wports[MAX_PORTS], n_wports = 0;
    struct knobs k;
    size_t i;
    json_t *c;
    int rc = -ENOMEM;

    if (!store)
        goto oom;
    /* Find metadata and spec under the prefix. */
    {
        const json_t *node = root;
        const char *p = prefix;
        while (*p == '/') {
            size_t n = strcspn(p + 1, "/");
            char tok[64];
            snprintf(tok, sizeof(tok), "%.*s", (int)n, p + 1);
            node = json_object_get(node, tok);
            if (!json_is_object(node)) {
                set_why(why, whylen, "%s: %s: expected an object", what, prefix + 1);
                goto out;
            }
            p += n + 1;
        }
        meta = json_object_get(node, "metadata");
        spec = json_object_get(node, "spec");
        if (meta && !json_is_object(meta)) {
            set_why(why, whylen, "%s: metadata: expected an object", what);
            goto out;
        }
        if (!json_is_object(spec)) {
            set_why(why, whylen, "%s: spec: expected an object", what);
            goto out;
        }
    }
    annotations = json_object_get(meta, "annotations");
    if (annotations && !json_is_null(annotations) && !json_is_object(annotations)) {
        set_why(why, whylen, "%s: metadata.annotations: expected an object", what);
        goto out;
    }
    if (json_is_null(annotations))
        annotations = NULL;
    rc = read_knobs(annotations, &k, store, inner, sizeof(inner));
    if (rc == -ENOMEM)
        goto oom;
    /* An opted-out pod is left alone even with other bad annotations. */
    if (k.opt_out || (annotation(annotations, "tether.io/inject") &&
                      strcmp(annotation(annotations, "tether.io/inject"), "false") == 0)) {
        set_why(why, whylen, "%s: opted out (tether.io/inject: \"false\")", what);
        verdict = CP_INJECT_SKIPPED;
        goto out;
    }
    inits = json_object_get(spec, "initContainers");
    containers = json_object_get(spec, "containers");
    if (json_object_get(annotations, CP_INJECT_A_INJECTED) || has_container(inits, PROXY_NAME) ||
        has_container(inits, INIT_NAME) || has_container(containers, PROXY_NAME) ||
        has_container(containers, INIT_NAME)) {
        set_why(why, whylen, "%s: already injected", what);
        verdict = CP_INJECT_SKIPPED;
        goto out;
    }
    if (json_is_true(json_object_get(spec, "hostNetwork"))) {
        set_why(why, whylen, "%s: host network: the pod shares the node's network, left alone",
                what);
        verdict = CP_INJECT_SKIPPED;
        goto out;
    }
    if (rc != 0) {
        set_why(why, whylen, "%s: %s", what, inner);
        goto out;
    }
    snprintf(w, sizeof(w), "%s: spec", what);
    if (!field_type_ok(spec, w, "hostNetwork", JSON_TRUE, why, whylen) ||
        !field_type_ok(spec, w, "initContainers", JSON_ARRAY, why, whylen) ||
        !field_type_ok(spec, w, "volumes", JSON_ARRAY, why, whylen) ||
        !field_type_ok(spec, w, "securityContext", JSON_OBJECT, why, whylen))
        goto out;
    if (!json_is_array(containers) || json_array_size(containers) == 0) {
        set_why(why, whylen, "%s: spec.containers: expected a non-empty array", what);
        goto out;
    }
    pod_sc = json_object_get(spec, "securityContext");
    json_array_foreach(containers, i, c)
    {
        snprintf(sub, sizeof(sub), "spec.containers[%zu]", i);
        if (check_container(c, sub, pod_sc, wports, &n_wports, inner, sizeof(inner)) != 0) {
            set_why(why, whylen, "%s: %s", what, inner);
            goto out;
        }
    }
    json_array_foreach((json_t *)inits, i, c)
    {
        snprintf(sub, sizeof(sub), "spec.initContainers[%zu]", i);
        if (check_container(c, sub, pod_sc, NULL, NULL, inner, sizeof(inner)) != 0) {
            set_why(why, whylen, "%s: %s", what, inner);
            goto out;
        }
    }
    vols = json_object_get(spec, "volumes");
    json_array_foreach((json_t *)vols, i, c)
    {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (!n) {
            set_why(why, whylen, "%s: spec.volumes[%zu]: expected an object with a name", what, i);
            goto out;
        }
        if (strcmp(n, VOL_TOKEN) == 0 || strcmp(n, VOL_BUNDLE) == 0) {
            set_why(why, whylen, "%s: spec.volumes: the name %s is the injector's", what, n);
            goto out;
        }
    }
    if (check_request_limit("cpu", or_default(k.cpu, CP_INJECT_DEFAULT_CPU),
                            or_default(k.cpu_limit, CP_INJECT_DEFAULT_CPU_LIM), k.cpu_limit != NULL,
                            inner, sizeof(inner)) != 0 ||
        check_request_limit("memory", or_default(k.memory, CP_INJECT_DEFAULT_MEMORY),
                            or_default(k.memory_limit, CP_INJECT_DEFAULT_MEM_LIM),
                            k.memory_limit != NULL, inner, sizeof(inner)) != 0) {
        set_why(why, whylen, "%s: %s", what, inner);
        goto out;
    }
    /* The ports registered as endpoints: those whose inbound is captured. */
    {
        int kept = 0;
        for (int j = 0; j < n_wports; j++) {
            bool in = !k.include_in || strcmp(k.include_in, "*") == 0;
            for (int m = 0; !in && m < k.n_in; m++)
                in = k.in_ports[m] == wports[j];
            for (int m = 0; in && m < k.n_ex; m++)
                in = k.ex_ports[m] != wports[j];
            if (in)
                wports[kept++] = wports[j];
        }
        n_wports = kept;
    }

    /* The plan. Annotations first (the bundle's downwardAPI volume reads one). */
    ann_add =
        json_pack("{s:s, s:s}", CP_INJECT_A_INJECTED, "true", CP_INJECT_A_BUNDLE, o->bundle_pem);
    if (!ann_add)
        goto oom;
    if (!json_object_get(annotations, "prometheus.io/scrape") &&
        !json_object_get(annotations, "prometheus.io/port") &&
        !json_object_get(annotations, "prometheus.io/path")) {
        /* Prometheus's kubernetes_sd exposes these as __meta_kubernetes_pod_annotation_*;
         * the format parameter needs the relabeling README "Injection" shows. */
        if (json_object_set_new(ann_add, "prometheus.io/scrape", json_string("true")) != 0 ||
            json_object_set_new(ann_add, "prometheus.io/port", json_string("15020")) != 0 ||
            json_object_set_new(ann_add, "prometheus.io/path", json_string("/stats")) != 0 ||
            json_object_set_new(ann_add, "prometheus.io/param_format", json_string("prometheus")) !=
                0)
            goto oom;
    }
    if (!meta) {
        rc = add_op(ops, prefix, "/metadata", json_pack("{s:O}", "annotations", ann_add));
    } else if (!annotations) {
        rc = add_op(ops, prefix, "/metadata/annotations", json_incref(ann_add));
    } else {
        const char *key;
        json_t *v;
        rc = 0;
        json_object_foreach(ann_add, key, v)
        {
            char esc[256], suffix[300];
            pointer_escape(key, esc, sizeof(esc));
            snprintf(suffix, sizeof(suffix), "/metadata/annotations/%s", esc);
            if (rc == 0)
                rc = add_op(ops, prefix, suffix, json_incref(v));
        }
    }
    if (rc != 0)
        goto oom;
    if (!inits || json_is_null(inits)) {
        rc = add_op(
            ops, prefix, "/spec/initContainers",
            json_pack("[o, o]", init_container(o, &k), proxy_container(o, &k, wports, n_wports)));
    } else {
        /* Before the pod's own init containers: their traffic is captured, so the proxy
         * must be up for them. */
        rc = add_op(ops, prefix, "/spec/initContainers/0", init_container(o, &k));
        if (rc == 0)
            rc = add_op(ops, prefix, "/spec/initContainers/1",
                        proxy_container(o, &k, wports, n_wports));
    }
    if (rc != 0)
        goto oom;
    if (!vols || json_is_null(vols)) {
        rc = add_op(ops, prefix, "/spec/volumes", volumes(o));
    } else {
        json_t *vs = volumes(o);
        rc = vs ? 0 : -ENOMEM;
        json_array_foreach(vs, i, c)
        {
            if (rc == 0)
                rc = add_op(ops, prefix, "/spec/volumes/-", json_incref(c));
        }
        json_decref(vs);
    }
    if (rc != 0)
        goto oom;
    verdict = CP_INJECT_INJECTED;
    if (why && whylen)
        why[0] = '\0';
    goto out;
oom:
    set_why(why, whylen, "%s: out of memory", what);
    verdict = CP_INJECT_REFUSED;
out:
    json_decref(ann_add);
    json_decref(store);
    return verdict;
}

/* Fills opts with defaults where unset. */
static void with_defaults(const struct cp_inject_opts *in, struct cp_inject_opts *out)
{
    out->image = or_default(in->image, CP_INJECT_DEFAULT_IMAGE);
    out->control_address = or_default(in->control_address, CP_INJECT_DEFAULT_CONTROL);
    out->trust_domain = or_default(in->trust_domain, CP_INJECT_DEFAULT_TD);
    out->jwt_audience = or_default(in->jwt_audience, CP_INJECT_DEFAULT_AUDIENCE);
    out->bundle_pem = in->bundle_pem;
}

/* See inject.h. */
int cp_inject_opts_check(const struct cp_inject_opts *in, char *err, size_t errlen)
{
    struct cp_inject_opts o;
    const char *colon;

    with_defaults(in, &o);
    colon = strrchr(o.control_address, ':');
    if (!colon || colon == o.control_address || !colon[1] ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) || atoi(colon + 1) < 1 ||
        atoi(colon + 1) > 65535) {
        snprintf(err, errlen, "control address: expected HOST:PORT, got \"%s\"", o.control_address);
        return -EINVAL;
    }
    if (strpbrk(o.image, " \t\n") || strpbrk(o.trust_domain, "/: \t\n") ||
        strpbrk(o.jwt_audience, "\n")) {
        snprintf(err, errlen, "image, trust domain or audience: unexpected characters");
        return -EINVAL;
    }
    if (!o.bundle_pem || !strstr(o.bundle_pem, "-----BEGIN CERTIFICATE-----")) {
        snprintf(err, errlen, "bundle: expected PEM certificates (-----BEGIN CERTIFICATE-----)");
        return -EINVAL;
    }
    return 0;
}

/* "Kind namespace/name" (or generateName...) for messages. */
static void describe(const json_t *obj, const char *kind, char *out, size_t len)
{
    const json_t *meta = json_object_get(obj, "metadata");
    const char *ns = json_string_value(json_object_get(meta, "namespace"));
    const char *name = json_string_value(json_object_get(meta, "name"));
    const char *gen = json_string_value(json_object_get(meta, "generateName"));

    if (name)
        snprintf(out, len, "%s %s%s%.100s", kind, ns ? ns : "", ns ? "/" : "", name);
    else if (gen)
        snprintf(out, len, "%s %s%s%.100s*", kind, ns ? ns : "", ns ? "/" : "", gen);
    else
        snprintf(out, len, "%s", kind);
}

/* See inject.h. */
enum cp_inject_verdict cp_inject_pod_patch(const json_t *pod, const struct cp_inject_opts *in,
                                           json_t **patch, char *why, size_t whylen)
{
    struct cp_inject_opts o;
    enum cp_inject_verdict v;
    char what[300];

    *patch = NULL;
    with_defaults(in, &o);
    if (cp_inject_opts_check(&o, why, whylen) != 0)
        return CP_INJECT_REFUSED;
    if (!json_is_object(pod)) {
        set_why(why, whylen, "the object is not a JSON object");
        return CP_INJECT_REFUSED;
    }
    describe(pod, "Pod", what, sizeof(what));
    *patch = json_array();
    if (!*patch) {
        set_why(why, whylen, "out of memory");
        return CP_INJECT_REFUSED;
    }
    v = plan(pod, "", what, &o, *patch, why, whylen);
    if (v == CP_INJECT_REFUSED) {
        json_decref(*patch);
        *patch = NULL;
    } else if (v == CP_INJECT_SKIPPED) {
        json_array_clear(*patch);
    }
    return v;
}

/* Resolves the parent of the JSON pointer path in doc: *parent and the last token. */
static int resolve_parent(json_t *doc, const char *path, json_t **parent, char *last, size_t len)
{
    const char *p = path;
    json_t *node = doc;

    if (*p != '/')
        return -EINVAL;
    for (;;) {
        size_t n = strcspn(p + 1, "/");
        char tok[512];
        size_t t = 0;

        for (size_t i = 0; i < n && t + 1 < sizeof(tok); i++) {
            char ch = p[1 + i];
            if (ch == '~' && i + 1 < n && (p[2 + i] == '0' || p[2 + i] == '1'))
                ch = p[2 + i++] == '0' ? '~' : '/';
            tok[t++] = ch;
        }
        tok[t] = '\0';
        if (p[1 + n] == '\0') {
            *parent = node;
            snprintf(last, len, "%s", tok);
            return 0;
        }
        if (json_is_object(node))
            node = json_object_get(node, tok);
        else if (json_is_array(node))
            node = json_array_get(node, strtoul(tok, NULL, 10));
        else
            return -EINVAL;
        if (!node)
            return -EINVAL;
        p += n + 1;
    }
}

/* See inject.h. */
int cp_inject_patch_apply(json_t *doc, const json_t *patch, char *err, size_t errlen)
{
    size_t i;
    json_t *op;

    json_array_foreach((json_t *)patch, i, op)
    {
        const char *path = json_string_value(json_object_get(op, "path"));
        const char *kind = json_string_value(json_object_get(op, "op"));
        json_t *value = json_object_get(op, "value"), *parent;
        char last[512];
        int rc = -EINVAL;

        if (!path || !kind || strcmp(kind, "add") != 0 || !value ||
            resolve_parent(doc, path, &parent, last, sizeof(last)) != 0) {
            snprintf(err, errlen, "patch[%zu]: cannot apply %s", i, path ? path : "(no path)");
            return -EINVAL;
        }
        value = json_deep_copy(value);
        if (json_is_object(parent)) {
            rc = json_object_set_new(parent, last, value);
        } else if (json_is_array(parent)) {
            if (strcmp(last, "-") == 0)
                rc = json_array_append_new(parent, value);
            else if (last[0] && strspn(last, "0123456789") == strlen(last) &&
                     strtoul(last, NULL, 10) <= json_array_size(parent))
                rc = json_array_insert_new(parent, strtoul(last, NULL, 10), value);
            else
                json_decref(value);
        } else {
            json_decref(value);
        }
        if (rc != 0) {
            snprintf(err, errlen, "patch[%zu]: cannot apply %s", i, path);
            return -EINVAL;
        }
    }
    return 0;
}

/* Where each kind keeps its pod, and the apiVersion it must have. */
static const struct {
    const char *kind, *api_version, *prefix;
} workloads[] = {
    {"Pod", "v1", ""},
    {"Deployment", "apps/v1", "/spec/template"},
    {"StatefulSet", "apps/v1", "/spec/template"},
    {"DaemonSet", "apps/v1", "/spec/template"},
    {"ReplicaSet", "apps/v1", "/spec/template"},
    {"Job", "batch/v1", "/spec/template"},
    {"CronJob", "batch/v1", "/spec/jobTemplate/spec/template"},
};

/* See inject.h. */
enum cp_inject_verdict cp_inject_object(const json_t *obj, const struct cp_inject_opts *in,
                                        json_t **out, char *why, size_t whylen)
{
    struct cp_inject_opts o;
    const char *kind, *api;
    json_t *ops, *copy;
    enum cp_inject_verdict v;
    char what[300], err[200];

    *out = NULL;
    with_defaults(in, &o);
    if (cp_inject_opts_check(&o, why, whylen) != 0)
        return CP_INJECT_REFUSED;
    if (!json_is_object(obj)) {
        set_why(why, whylen, "a document that is not an object");
        return CP_INJECT_REFUSED;
    }
    kind = json_string_value(json_object_get(obj, "kind"));
    api = json_string_value(json_object_get(obj, "apiVersion"));
    if (kind && strcmp(kind, "List") == 0 && json_is_array(json_object_get(obj, "items"))) {
        bool any = false;
        size_t i;
        json_t *item, *items;
        copy = json_deep_copy(obj);
        items = json_object_get(copy, "items");
        json_array_foreach(items, i, item)
        {
            json_t *res;
            v = cp_inject_object(item, in, &res, why, whylen);
            if (v == CP_INJECT_REFUSED) {
                json_decref(copy);
                return v;
            }
            any |= v == CP_INJECT_INJECTED;
            json_array_set_new(items, i, res);
        }
        *out = copy;
        if (!any)
            set_why(why, whylen, "List: nothing to inject");
        else if (why && whylen)
            why[0] = '\0';
        return any ? CP_INJECT_INJECTED : CP_INJECT_SKIPPED;
    }
    for (size_t i = 0; kind && i < sizeof(workloads) / sizeof(workloads[0]); i++) {
        if (strcmp(kind, workloads[i].kind) != 0)
            continue;
        describe(obj, kind, what, sizeof(what));
        if (!api || strcmp(api, workloads[i].api_version) != 0) {
            set_why(why, whylen, "%s: apiVersion %s: expected %s", what, api ? api : "(none)",
                    workloads[i].api_version);
            return CP_INJECT_REFUSED;
        }
        if (!(ops = json_array())) {
            set_why(why, whylen, "out of memory");
            return CP_INJECT_REFUSED;
        }
        v = plan(obj, workloads[i].prefix, what, &o, ops, why, whylen);
        if (v == CP_INJECT_REFUSED) {
            json_decref(ops);
            return v;
        }
        copy = json_deep_copy(obj);
        if (!copy || cp_inject_patch_apply(copy, ops, err, sizeof(err)) != 0) {
            set_why(why, whylen, "%s: %s", what, copy ? err : "out of memory");
            json_decref(copy);
            json_decref(ops);
            return CP_INJECT_REFUSED;
        }
        json_decref(ops);
        *out = copy;
        return v;
    }
    describe(obj, kind ? kind : "(no kind)", what, sizeof(what));
    set_why(why, whylen, "%s: holds no pod, left as it is", what);
    *out = json_deep_copy(obj);
    return *out ? CP_INJECT_SKIPPED : CP_INJECT_REFUSED;
}
