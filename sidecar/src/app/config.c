/* The sidecar's configuration: a JSON file (--config) read first, then the command-line
 * flags on top of it, then defaults and the checks that need the whole picture. Every
 * error is one line naming the flag, or the file and key, and what was expected. */
#include <errno.h>
#include <getopt.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "app/config.h"
#include "core/errors.h"
#include "core/spiffe.h"
#include "net/canary.h"

#define CONFIG_FILE_MAX        (1024 * 1024) /* --config files larger than this are refused */
#define CONFIG_LISTENERS_MAX   1024
#define WORKERS_MAX            256
#define MAX_CONNECTIONS_MAX    1000000
#define REQUEST_LOG_SAMPLE_MAX 1000000

/* Option values for long options without a short form; 'h' is --help. */
enum {
    OPT_CONFIG = 256,
    OPT_IDENTITY_CERT,
    OPT_IDENTITY_KEY,
    OPT_TRUST_BUNDLE,
    OPT_INBOUND,
    OPT_OUTBOUND,
    OPT_POLICY,
    OPT_ADMIN,
    OPT_ADMIN_REMOTE_CONTROL, /* takes no value: stored as "" when given */
    OPT_WORKERS,
    OPT_LOG_LEVEL,
    OPT_MAX_CONNECTIONS,
    OPT_REQUEST_LOG_SAMPLE,
    OPT_HANDSHAKE_TIMEOUT,
    OPT_CONNECT_TIMEOUT,
    OPT_IDLE_TIMEOUT,
    OPT_DRAIN_TIMEOUT,
    OPT_REQUEST_TIMEOUT,
    OPT_CONTROL,
    OPT_CONTROL_BUNDLE,
    OPT_JOIN_TOKEN,
    OPT_JWT_FILE,
    OPT_POD_IP,
    OPT_WORKLOAD_PORTS,
    OPT_OPAQUE_PORTS,
    OPT_OUTBOUND_UNKNOWN,
    OPT_INBOUND_MODE,
    OPT_DETECT_TIMEOUT,
    OPT_CHECK_INTERVAL,
    OPT_POOL,
    OPT_HTTP_STREAMS,
    OPT_SPIFFE_ID,
    OPT_CRL, /* repeatable: not among the single-valued flags */
    OPT_SERVICE,
    OPT_TRANSPARENT, /* no value */
};

static const struct option long_options[] = {
    {"config", required_argument, NULL, OPT_CONFIG},
    {"identity-cert", required_argument, NULL, OPT_IDENTITY_CERT},
    {"identity-key", required_argument, NULL, OPT_IDENTITY_KEY},
    {"trust-bundle", required_argument, NULL, OPT_TRUST_BUNDLE},
    {"inbound", required_argument, NULL, OPT_INBOUND},
    {"outbound", required_argument, NULL, OPT_OUTBOUND},
    {"policy", required_argument, NULL, OPT_POLICY},
    {"admin", required_argument, NULL, OPT_ADMIN},
    {"admin-allow-remote-control", no_argument, NULL, OPT_ADMIN_REMOTE_CONTROL},
    {"workers", required_argument, NULL, OPT_WORKERS},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"request-log-sample", required_argument, NULL, OPT_REQUEST_LOG_SAMPLE},
    {"handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"drain-timeout", required_argument, NULL, OPT_DRAIN_TIMEOUT},
    {"request-timeout", required_argument, NULL, OPT_REQUEST_TIMEOUT},
    {"control", required_argument, NULL, OPT_CONTROL},
    {"control-bundle", required_argument, NULL, OPT_CONTROL_BUNDLE},
    {"join-token", required_argument, NULL, OPT_JOIN_TOKEN},
    {"jwt-file", required_argument, NULL, OPT_JWT_FILE},
    {"spiffe-id", required_argument, NULL, OPT_SPIFFE_ID},
    {"crl", required_argument, NULL, OPT_CRL},
    {"service", required_argument, NULL, OPT_SERVICE},
    {"transparent", no_argument, NULL, OPT_TRANSPARENT},
    {"pod-ip", required_argument, NULL, OPT_POD_IP},
    {"workload-ports", required_argument, NULL, OPT_WORKLOAD_PORTS},
    {"opaque-ports", required_argument, NULL, OPT_OPAQUE_PORTS},
    {"outbound-unknown", required_argument, NULL, OPT_OUTBOUND_UNKNOWN},
    {"inbound-mode", required_argument, NULL, OPT_INBOUND_MODE},
    {"inbound-detect-timeout", required_argument, NULL, OPT_DETECT_TIMEOUT},
    {"capture-check-interval", required_argument, NULL, OPT_CHECK_INTERVAL},
    {"pool", required_argument, NULL, OPT_POOL},
    {"http-streams", required_argument, NULL, OPT_HTTP_STREAMS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* Single-valued flags, indexed by option value - OPT_CONFIG; the last occurrence wins. */
#define N_SINGLE (OPT_SPIFFE_ID - OPT_CONFIG + 1)

/* What the command line said, before it is applied over the file. */
struct flags {
    const char *single[N_SINGLE]; /* point into argv */
    struct {
        enum tt_listener_kind kind;
        const char *value;
    } * listeners;
    size_t n_listeners;
    const char **crls; /* --crl values, point into argv */
    size_t n_crls;
    const char **services; /* --service values, point into argv */
    size_t n_services;
    int transparent;
    int help;
};

/* Formats the error into err and replaces control bytes so that it stays one line even
 * when it quotes hostile input. Returns TT_E_CONFIG for `return errf(...)`. */
__attribute__((format(printf, 3, 4))) static int errf(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return TT_E_CONFIG;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    for (char *p = err; *p != '\0'; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    }
    return TT_E_CONFIG;
}

/* Name of the long option with value `val`, for messages. */
static const char *option_name(int val)
{
    for (const struct option *o = long_options; o->name != NULL; o++) {
        if (o->val == val)
            return o->name;
    }
    return "?";
}

/* Says why tt_addr_parse() refused `text` (rc is its return value), in a few words. */
static const char *addr_reason(const char *text, int allow_zero_port, int rc)
{
    const char *port, *colon;
    char *end;
    unsigned long v;

    if (rc == -ENOENT)
        return "host does not resolve";
    if (rc == -ENOMEM)
        return "out of memory";
    if (strlen(text) >= TT_ADDR_TEXT_MAX)
        return "address too long";
    if (text[0] == '[') {
        const char *close = strchr(text, ']');

        if (close == NULL || close[1] != ':')
            return "expected [IPv6]:PORT";
        if (close == text + 1)
            return "empty host";
        port = close + 2;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return "missing :PORT";
        if (memchr(text, ':', (size_t)(colon - text)) != NULL)
            return "IPv6 addresses need brackets, as in [::1]:8080";
        if (colon == text)
            return "empty host";
        port = colon + 1;
    }
    if (*port == '\0' || strspn(port, "0123456789") != strlen(port))
        return "expected a port number after ':'";
    errno = 0;
    v = strtoul(port, &end, 10);
    if (errno != 0 || v > 65535 || (v == 0 && !allow_zero_port))
        return allow_zero_port ? "port must be 0..65535" : "port must be 1..65535";
    return "expected IP:PORT, [IPv6]:PORT or HOST:PORT";
}

/* Parses an unsigned decimal integer in [min, max]: digits only, no sign or spaces. */
static int parse_uint(const char *s, unsigned long min, unsigned long max, unsigned long *out)
{
    unsigned long v = 0;

    if (*s == '\0')
        return -EINVAL;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9' || v > (max - (unsigned long)(*s - '0')) / 10)
            return -EINVAL;
        v = v * 10 + (unsigned long)(*s - '0');
    }
    if (v < min)
        return -EINVAL;
    *out = v;
    return 0;
}

/* Replaces *slot with a copy of s. */
static int set_str(char **slot, const char *s)
{
    char *copy = strdup(s);

    if (copy == NULL)
        return -ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

/* Appends a listener to cfg, taking ownership of l->expected_id on success. */
static int add_listener(struct tt_config *cfg, const struct tt_listener_cfg *l, char *err,
                        size_t errlen)
{
    struct tt_listener_cfg *n;

    if (cfg->n_listeners >= CONFIG_LISTENERS_MAX)
        return errf(err, errlen, "too many listeners (at most %d)", CONFIG_LISTENERS_MAX);
    n = realloc(cfg->listeners, (cfg->n_listeners + 1) * sizeof(*n));
    if (n == NULL)
        return errf(err, errlen, "out of memory");
    cfg->listeners = n;
    cfg->listeners[cfg->n_listeners++] = *l;
    return 0;
}

/* Fills name, listen, target and expected_id of out. Messages start with `where`: a flag
 * and its value ("--inbound L=F: forward address F: why"), or with in_file a file and array
 * element, followed by the key ("sidecar.json: inbound[0].forward: F: why"). */
static int fill_listener(enum tt_listener_kind kind, const char *listen, const char *target,
                         const char *id, size_t id_len, struct tt_listener_cfg *out,
                         const char *where, int in_file, char *err, size_t errlen)
{
    const char *kind_name = kind == TT_LISTENER_INBOUND ? "inbound" : "outbound";
    const char *target_key = kind == TT_LISTENER_INBOUND ? "forward" : "upstream";
    int rc;

    memset(out, 0, sizeof(*out));
    out->kind = kind;
    rc = tt_addr_parse(listen, 1, &out->listen);
    if (rc < 0 && in_file)
        return errf(err, errlen, "%s.listen: %.300s: %s", where, listen,
                    addr_reason(listen, 1, rc));
    if (rc < 0)
        return errf(err, errlen, "%s: %s", where, addr_reason(listen, 1, rc));
    rc = tt_addr_parse(target, 0, &out->target);
    if (rc < 0 && in_file)
        return errf(err, errlen, "%s.%s: %.300s: %s", where, target_key, target,
                    addr_reason(target, 0, rc));
    if (rc < 0)
        return errf(err, errlen, "%s: %s address %.300s: %s", where, target_key, target,
                    addr_reason(target, 0, rc));
    if (kind == TT_LISTENER_OUTBOUND) {
        if (tt_spiffe_check(id, id_len, false) != 0)
            return errf(
                err, errlen, "%s%sinvalid SPIFFE ID \"%.*s\" (expected spiffe://TRUST-DOMAIN/PATH)",
                where, in_file ? ".spiffe_id: " : ": ", (int)(id_len > 200 ? 200 : id_len), id);
        out->expected_id = strndup(id, id_len);
        if (out->expected_id == NULL)
            return errf(err, errlen, "out of memory");
    }
    /* The listen text is at most a 253-byte name and a port; a long one is cut, which
     * still leaves the name readable in /stats and logs. */
    if (snprintf(out->name, sizeof(out->name), "%s:%s", kind_name, out->listen.text) >=
        (int)sizeof(out->name))
        out->name[sizeof(out->name) - 1] = '\0';
    return 0;
}

/* Parses "LISTEN=FORWARD" (inbound) or "LISTEN=UPSTREAM@SPIFFE_ID" (outbound), as the
 * --inbound and --outbound flags take them. The listen port may be 0; forward and upstream
 * ports must be 1..65535; the SPIFFE ID must pass tt_spiffe_check() with a path. Returns 0
 * (out->expected_id is heap-allocated for outbound, the caller frees it, or hands out to a
 * tt_config) or TT_E_CONFIG with "--inbound VALUE: why" in err and nothing allocated. */
int tt_config_parse_listener(enum tt_listener_kind kind, const char *value,
                             struct tt_listener_cfg *out, char *err, size_t errlen)
{
    const char *flag = kind == TT_LISTENER_INBOUND ? "--inbound" : "--outbound";
    char where[TT_ADDR_TEXT_MAX + 32];
    char *copy, *eq, *at = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    snprintf(where, sizeof(where), "%s %.*s", flag, TT_ADDR_TEXT_MAX, value);
    copy = strdup(value);
    if (copy == NULL)
        return errf(err, errlen, "out of memory");
    eq = strchr(copy, '=');
    if (eq != NULL) {
        *eq = '\0';
        if (kind == TT_LISTENER_OUTBOUND) {
            at = strchr(eq + 1, '@');
            if (at != NULL)
                *at = '\0';
        }
    }
    if (eq == NULL || copy[0] == '\0' || eq[1] == '\0' ||
        (kind == TT_LISTENER_OUTBOUND && (at == NULL || at[1] == '\0'))) {
        rc = errf(err, errlen, "%s: expected %s", where,
                  kind == TT_LISTENER_INBOUND ? "LISTEN=FORWARD" : "LISTEN=UPSTREAM@SPIFFE_ID");
        goto out_free;
    }
    rc = fill_listener(kind, copy, eq + 1, at ? at + 1 : NULL, at ? strlen(at + 1) : 0, out, where,
                       0, err, errlen);
    if (rc != 0) {
        free(out->expected_id);
        memset(out, 0, sizeof(*out));
    }
out_free:
    free(copy);
    return rc;
}

/* ---- the JSON file ---------------------------------------------------------------- */

/* State for loading one file: its name as given (for messages) and its directory. */
struct file_ctx {
    const char *path;
    char *dir; /* NULL when the path has no '/' */
    char *err;
    size_t errlen;
};

/* Writes a compact JSON rendering of v (cut to fit) for "got ..." in messages. */
static void json_show(const json_t *v, char *buf, size_t len)
{
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);

    if (s == NULL) {
        snprintf(buf, len, "?");
        return;
    }
    if (strlen(s) > 80)
        snprintf(buf, len, "%.77s...", s);
    else
        snprintf(buf, len, "%s", s);
    free(s);
}

/* Refuses keys of obj not in the NULL-terminated list `known`. */
static int check_keys(struct file_ctx *f, const json_t *obj, const char *where,
                      const char *const *known)
{
    const char *key;
    json_t *v;

    json_object_foreach((json_t *)obj, key, v)
    {
        const char *const *k;

        for (k = known; *k != NULL; k++) {
            if (strcmp(key, *k) == 0)
                break;
        }
        if (*k == NULL)
            return errf(f->err, f->errlen, "%s: %s%sunknown key \"%.64s\"", f->path, where,
                        where[0] ? ": " : "", key);
    }
    return 0;
}

/* Returns the string value of obj[key] in *out (NULL when absent), or an error when it
 * is present but not a non-empty string. `what` names the expectation. */
static int get_string(struct file_ctx *f, const json_t *obj, const char *key, const char *where,
                      const char *what, const char **out)
{
    json_t *v = json_object_get(obj, key);
    char shown[96];

    *out = NULL;
    if (v == NULL)
        return 0;
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        json_show(v, shown, sizeof(shown));
        return errf(f->err, f->errlen, "%s: %s%s%s: expected %s, got %s", f->path, where,
                    where[0] ? "." : "", key, what, shown);
    }
    *out = json_string_value(v);
    return 0;
}

/* Sets *slot to the file path at obj[key], resolved against the file's directory. */
static int get_path(struct file_ctx *f, const json_t *obj, const char *key, const char *where,
                    char **slot)
{
    const char *s;
    char *resolved;
    int rc;

    rc = get_string(f, obj, key, where, "a file name", &s);
    if (rc != 0 || s == NULL)
        return rc;
    if (s[0] == '/' || f->dir == NULL) {
        resolved = strdup(s);
    } else if (asprintf(&resolved, "%s/%s", f->dir, s) < 0) {
        resolved = NULL;
    }
    if (resolved == NULL)
        return errf(f->err, f->errlen, "out of memory");
    free(*slot);
    *slot = resolved;
    return 0;
}

/* Appends a copy of `path` to cfg's CRL files. Returns 0 or -ENOMEM. */
static int add_crl(struct tt_config *cfg, const char *path)
{
    char **n = realloc(cfg->crl_paths, (cfg->n_crls + 1) * sizeof(*n));

    if (n == NULL)
        return -ENOMEM;
    cfg->crl_paths = n;
    if ((n[cfg->n_crls] = strdup(path)) == NULL)
        return -ENOMEM;
    cfg->n_crls++;
    return 0;
}

/* Appends a service entry to cfg, taking ownership of the three strings (service may be
 * NULL). Returns 0 or TT_E_CONFIG (out of memory), freeing them. */
static int add_service(struct tt_config *cfg, char *service, char *endpoint, char *id, char *err,
                       size_t errlen)
{
    struct tt_service_entry *n = NULL;

    if (endpoint != NULL && id != NULL)
        n = realloc(cfg->services, (cfg->n_services + 1) * sizeof(*n));
    if (n == NULL) {
        free(service);
        free(endpoint);
        free(id);
        return errf(err, errlen, "out of memory");
    }
    cfg->services = n;
    n[cfg->n_services++] = (struct tt_service_entry){service, endpoint, id};
    return 0;
}

static int set_transparent(struct tt_config *cfg, int opt, const char *v, const char *where,
                           char *err, size_t errlen);

/* Reads the file's "services" array ([{"service": VIP (optional), "endpoint": ADDR,
 * "spiffe_id": ID}]) into cfg's list, and the transparent-mode keys. */
static int load_transparent(struct file_ctx *f, const json_t *root, struct tt_config *cfg)
{
    static const char *const svc_keys[] = {"service", "endpoint", "spiffe_id", NULL};
    static const struct {
        const char *key;
        int opt;
    } strs[] = {{"pod_ip", OPT_POD_IP},
                {"outbound_unknown", OPT_OUTBOUND_UNKNOWN},
                {"inbound_mode", OPT_INBOUND_MODE},
                {"inbound_detect_timeout", OPT_DETECT_TIMEOUT},
                {"capture_check_interval", OPT_CHECK_INTERVAL}};
    static const struct {
        const char *key;
        int opt;
    } lists[] = {{"workload_ports", OPT_WORKLOAD_PORTS}, {"opaque_ports", OPT_OPAQUE_PORTS}};
    json_t *v = json_object_get(root, "transparent"), *arr, *item;
    char where[PATH_MAX + 64], shown[96];
    size_t i;
    int rc;

    if (v != NULL && !json_is_boolean(v))
        return errf(f->err, f->errlen, "%s: transparent: expected true or false", f->path);
    if (v != NULL)
        cfg->transparent.enabled = json_is_true(v);
    for (i = 0; i < TT_ARRAY_SIZE(strs); i++) {
        const char *s;
        if ((rc = get_string(f, root, strs[i].key, "", "a string", &s)) != 0)
            return rc;
        snprintf(where, sizeof(where), "%s: %s:", f->path, strs[i].key);
        if (s != NULL && (rc = set_transparent(cfg, strs[i].opt, s, where, f->err, f->errlen)) != 0)
            return rc;
    }
    for (i = 0; i < TT_ARRAY_SIZE(lists); i++) {
        char text[1024] = "";
        size_t k, len = 0;
        arr = json_object_get(root, lists[i].key);
        if (arr == NULL)
            continue;
        snprintf(where, sizeof(where), "%s: %s:", f->path, lists[i].key);
        json_array_foreach(arr, k, item)
        {
            if (!json_is_integer(item) || len > sizeof(text) - 16)
                break;
            len += (size_t)snprintf(text + len, sizeof(text) - len, "%s%lld", k ? "," : "",
                                    (long long)json_integer_value(item));
        }
        if (!json_is_array(arr) || k != json_array_size(arr)) {
            json_show(arr, shown, sizeof(shown));
            return errf(f->err, f->errlen, "%s expected an array of ports 1..65535, got %s", where,
                        shown);
        }
        if ((rc = set_transparent(cfg, lists[i].opt, text, where, f->err, f->errlen)) != 0)
            return rc;
    }
    arr = json_object_get(root, "services");
    if (arr == NULL)
        return 0;
    if (!json_is_array(arr))
        return errf(f->err, f->errlen, "%s: services: expected an array of objects", f->path);
    json_array_foreach(arr, i, item)
    {
        const char *svc = NULL, *ep = NULL, *id = NULL;
        snprintf(where, sizeof(where), "services[%zu]", i);
        if (!json_is_object(item))
            return errf(f->err, f->errlen, "%s: %s: expected an object", f->path, where);
        if ((rc = check_keys(f, item, where, svc_keys)) != 0 ||
            (rc = get_string(f, item, "service", where, "an address", &svc)) != 0 ||
            (rc = get_string(f, item, "endpoint", where, "an address", &ep)) != 0 ||
            (rc = get_string(f, item, "spiffe_id", where, "a SPIFFE ID", &id)) != 0)
            return rc;
        if (ep == NULL || id == NULL)
            return errf(f->err, f->errlen, "%s: %s: missing \"%s\"", f->path, where,
                        ep == NULL ? "endpoint" : "spiffe_id");
        if ((rc = add_service(cfg, svc ? strdup(svc) : NULL, strdup(ep), strdup(id), f->err,
                              f->errlen)) != 0)
            return rc;
    }
    return 0;
}

/* Reads identity.crls, an array of file names (resolved against the file's directory), into
 * cfg's CRL files when present. */
static int get_crls(struct file_ctx *f, const json_t *identity, struct tt_config *cfg)
{
    json_t *arr = json_object_get(identity, "crls"), *v;
    size_t i;
    char shown[96];

    if (arr == NULL)
        return 0;
    if (!json_is_array(arr)) {
        json_show(arr, shown, sizeof(shown));
        return errf(f->err, f->errlen, "%s: identity.crls: expected an array of file names, got %s",
                    f->path, shown);
    }
    json_array_foreach(arr, i, v)
    {
        char *resolved = NULL;
        const char *s = json_is_string(v) ? json_string_value(v) : NULL;

        if (s == NULL || s[0] == '\0' || strlen(s) != json_string_length(v)) {
            json_show(v, shown, sizeof(shown));
            return errf(f->err, f->errlen, "%s: identity.crls[%zu]: expected a file name, got %s",
                        f->path, i, shown);
        }
        if (s[0] == '/' || f->dir == NULL)
            resolved = strdup(s);
        else if (asprintf(&resolved, "%s/%s", f->dir, s) < 0)
            resolved = NULL;
        if (resolved == NULL || add_crl(cfg, resolved) < 0) {
            free(resolved);
            return errf(f->err, f->errlen, "out of memory");
        }
        free(resolved);
    }
    return 0;
}

/* Reads an integer in [min, max] at obj[key] into *out when present. */
static int get_uint(struct file_ctx *f, const json_t *obj, const char *key, unsigned long min,
                    unsigned long max, unsigned *out)
{
    json_t *v = json_object_get(obj, key);
    char shown[96];

    if (v == NULL)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < (json_int_t)min ||
        json_integer_value(v) > (json_int_t)max) {
        json_show(v, shown, sizeof(shown));
        return errf(f->err, f->errlen, "%s: %s: expected an integer %lu..%lu, got %s", f->path, key,
                    min, max, shown);
    }
    *out = (unsigned)json_integer_value(v);
    return 0;
}

/* Reads a boolean at obj[key] into *out when present. */
static int get_bool(struct file_ctx *f, const json_t *obj, const char *key, bool *out)
{
    json_t *v = json_object_get(obj, key);
    char shown[96];

    if (v == NULL)
        return 0;
    if (!json_is_boolean(v)) {
        json_show(v, shown, sizeof(shown));
        return errf(f->err, f->errlen, "%s: %s: expected true or false, got %s", f->path, key,
                    shown);
    }
    *out = json_is_true(v);
    return 0;
}

/* Reads a duration string at obj[key] into *out when present; 0 only when allow_zero. */
static int get_duration(struct file_ctx *f, const json_t *obj, const char *key, int allow_zero,
                        uint64_t *out)
{
    json_t *v = json_object_get(obj, key);
    uint64_t ms;
    char shown[96];

    if (v == NULL)
        return 0;
    if (!json_is_string(v) || tt_duration_parse(json_string_value(v), &ms) != 0 ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        json_show(v, shown, sizeof(shown));
        return errf(f->err, f->errlen,
                    "%s: timeouts.%s: expected a duration such as \"10s\", got %s", f->path, key,
                    shown);
    }
    if (ms == 0 && !allow_zero)
        return errf(f->err, f->errlen, "%s: timeouts.%s: must be more than 0s", f->path, key);
    *out = ms;
    return 0;
}

/* An outbound listener's "request_timeout" (a duration, "0s": none even where
 * timeouts.request gives one) into *ms; left alone when absent. */
static int get_request_timeout(struct file_ctx *f, const json_t *item, const char *where,
                               uint64_t *ms)
{
    json_t *v = json_object_get(item, "request_timeout");
    char shown[96];

    if (v == NULL)
        return 0;
    if (!json_is_string(v) || tt_duration_parse(json_string_value(v), ms) != 0 ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        json_show(v, shown, sizeof(shown));
        return errf(f->err, f->errlen,
                    "%s: %s.request_timeout: expected a duration such as \"30s\", got %s", f->path,
                    where, shown);
    }
    if (*ms == 0)
        *ms = TT_REQUEST_TIMEOUT_NONE;
    return 0;
}

/* Loads the "inbound" or "outbound" array of the file into cfg. */
static int load_listeners(struct file_ctx *f, const json_t *root, enum tt_listener_kind kind,
                          struct tt_config *cfg)
{
    static const char *const in_keys[] = {"listen", "forward", NULL};
    static const char *const out_keys[] = {"listen", "upstream", "spiffe_id", "request_timeout",
                                           NULL};
    const char *key = kind == TT_LISTENER_INBOUND ? "inbound" : "outbound";
    const char *target_key = kind == TT_LISTENER_INBOUND ? "forward" : "upstream";
    json_t *arr = json_object_get(root, key), *item;
    size_t i;

    if (arr == NULL)
        return 0;
    if (!json_is_array(arr))
        return errf(f->err, f->errlen, "%s: %s: expected an array of objects", f->path, key);
    json_array_foreach(arr, i, item)
    {
        char where[64], w2[PATH_MAX + 64];
        const char *listen, *target, *id = NULL;
        struct tt_listener_cfg l;
        int rc;

        snprintf(where, sizeof(where), "%s[%zu]", key, i);
        if (!json_is_object(item))
            return errf(f->err, f->errlen, "%s: %s: expected an object", f->path, where);
        rc = check_keys(f, item, where, kind == TT_LISTENER_INBOUND ? in_keys : out_keys);
        if (rc == 0)
            rc = get_string(f, item, "listen", where, "an address", &listen);
        if (rc == 0)
            rc = get_string(f, item, target_key, where, "an address", &target);
        if (rc == 0 && kind == TT_LISTENER_OUTBOUND)
            rc = get_string(f, item, "spiffe_id", where, "a SPIFFE ID", &id);
        if (rc != 0)
            return rc;
        if (listen == NULL || target == NULL || (kind == TT_LISTENER_OUTBOUND && id == NULL))
            return errf(f->err, f->errlen, "%s: %s: missing \"%s\"", f->path, where,
                        listen == NULL   ? "listen"
                        : target == NULL ? target_key
                                         : "spiffe_id");
        snprintf(w2, sizeof(w2), "%s: %s", f->path, where);
        rc = fill_listener(kind, listen, target, id, id ? strlen(id) : 0, &l, w2, 1, f->err,
                           f->errlen);
        if (rc == 0 && kind == TT_LISTENER_OUTBOUND)
            rc = get_request_timeout(f, item, where, &l.request_timeout_ms);
        if (rc == 0)
            rc = add_listener(cfg, &l, f->err, f->errlen);
        if (rc != 0) {
            free(l.expected_id);
            return rc;
        }
    }
    return 0;
}

/* Loads the JSON file at path into cfg (over the defaults already there). */
/* Sets the control plane's address; `where` names the file, or NULL for the flag. */
static int set_control_addr(struct tt_config *cfg, const char *v, char *err, size_t errlen,
                            const char *where)
{
    int rc = tt_addr_parse(v, 0, &cfg->control);

    if (rc < 0) {
        if (where != NULL)
            return errf(err, errlen, "%s: control.address: %s: %s", where, v,
                        addr_reason(v, 0, rc));
        return errf(err, errlen, "--control %s: %s", v, addr_reason(v, 0, rc));
    }
    cfg->has_control = true;
    return 0;
}

/* Sets the SPIFFE ID the sidecar asks the control plane for. */
static int set_spiffe_id(struct tt_config *cfg, const char *v, char *err, size_t errlen,
                         const char *where)
{
    if (tt_spiffe_check(v, strlen(v), false) != 0) {
        if (where != NULL)
            return errf(err, errlen,
                        "%s: control.spiffe_id: expected a SPIFFE ID such as "
                        "spiffe://cluster.local/ns/NS/sa/SA, got \"%.128s\"",
                        where, v);
        return errf(err, errlen,
                    "--spiffe-id %.128s: expected a SPIFFE ID such as "
                    "spiffe://cluster.local/ns/NS/sa/SA",
                    v);
    }
    return set_str(&cfg->spiffe_id, v) != 0 ? errf(err, errlen, "out of memory") : 0;
}

static int load_file(const char *path, struct tt_config *cfg, char *err, size_t errlen)
{
    static const char *const top_keys[] = {"identity",
                                           "policy",
                                           "admin",
                                           "workers",
                                           "log_level",
                                           "max_connections",
                                           "request_log_sample",
                                           "pool",
                                           "http_streams",
                                           "timeouts",
                                           "inbound",
                                           "outbound",
                                           "control",
                                           "admin_allow_remote_control",
                                           "transparent",
                                           "pod_ip",
                                           "workload_ports",
                                           "opaque_ports",
                                           "outbound_unknown",
                                           "inbound_mode",
                                           "inbound_detect_timeout",
                                           "capture_check_interval",
                                           "services",
                                           NULL};
    static const char *const control_keys[] = {"address",  "bundle",    "join_token",
                                               "jwt_file", "spiffe_id", NULL};
    static const char *const id_keys[] = {"cert", "key", "trust_bundle", "crls", NULL};
    static const char *const timeout_keys[] = {"handshake", "connect", "idle",
                                               "drain",     "request", NULL};
    struct file_ctx f = {.path = path, .err = err, .errlen = errlen};
    const char *slash, *s;
    json_error_t jerr;
    json_t *root = NULL, *obj;
    char *data = NULL;
    size_t len;
    int rc;

    rc = tt_file_read(path, CONFIG_FILE_MAX, &data, &len);
    if (rc == -EFBIG)
        return errf(err, errlen, "%s: larger than 1 MiB", path);
    if (rc < 0)
        return errf(err, errlen, "%s: cannot read: %s", path, tt_strerror(rc));
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    free(data);
    if (root == NULL)
        return errf(err, errlen, "%s: line %d, column %d: %s", path, jerr.line, jerr.column,
                    jerr.text);
    if (!json_is_object(root)) {
        rc = errf(err, errlen, "%s: expected a JSON object at the top", path);
        goto out;
    }
    slash = strrchr(path, '/');
    if (slash != NULL) {
        f.dir = slash == path ? strdup("") : strndup(path, (size_t)(slash - path));
        if (f.dir == NULL) {
            rc = errf(err, errlen, "out of memory");
            goto out;
        }
    }
    rc = check_keys(&f, root, "", top_keys);
    if (rc != 0)
        goto out;

    obj = json_object_get(root, "identity");
    if (obj != NULL) {
        if (!json_is_object(obj)) {
            rc = errf(err, errlen, "%s: identity: expected an object with cert, key, trust_bundle",
                      path);
            goto out;
        }
        if ((rc = check_keys(&f, obj, "identity", id_keys)) != 0 ||
            (rc = get_path(&f, obj, "cert", "identity", &cfg->cert_path)) != 0 ||
            (rc = get_path(&f, obj, "key", "identity", &cfg->key_path)) != 0 ||
            (rc = get_path(&f, obj, "trust_bundle", "identity", &cfg->bundle_path)) != 0 ||
            (rc = get_crls(&f, obj, cfg)) != 0)
            goto out;
    }
    if ((rc = get_path(&f, root, "policy", "", &cfg->policy_path)) != 0)
        goto out;
    obj = json_object_get(root, "control");
    if (obj != NULL) {
        if (!json_is_object(obj)) {
            rc = errf(err, errlen,
                      "%s: control: expected an object with address, bundle, join_token or "
                      "jwt_file, spiffe_id",
                      path);
            goto out;
        }
        if ((rc = check_keys(&f, obj, "control", control_keys)) != 0 ||
            (rc = get_path(&f, obj, "bundle", "control", &cfg->control_bundle_path)) != 0 ||
            (rc = get_path(&f, obj, "join_token", "control", &cfg->join_token_path)) != 0 ||
            (rc = get_path(&f, obj, "jwt_file", "control", &cfg->jwt_path)) != 0)
            goto out;
        if ((rc = get_string(&f, obj, "address", "control", "an address such as \"10.0.0.1:15012\"",
                             &s)) != 0)
            goto out;
        if (s != NULL && (rc = set_control_addr(cfg, s, err, errlen, path)) != 0)
            goto out;
        if ((rc = get_string(&f, obj, "spiffe_id", "control", "a SPIFFE ID", &s)) != 0)
            goto out;
        if (s != NULL && (rc = set_spiffe_id(cfg, s, err, errlen, path)) != 0)
            goto out;
    }
    if ((rc = get_string(&f, root, "admin", "", "an address such as \"127.0.0.1:15000\"", &s)) != 0)
        goto out;
    if (s != NULL && (rc = tt_addr_parse(s, 1, &cfg->admin)) < 0) {
        rc = errf(err, errlen, "%s: admin: %s: %s", path, s, addr_reason(s, 1, rc));
        goto out;
    }
    if ((rc = get_bool(&f, root, "admin_allow_remote_control", &cfg->admin_remote_control)) != 0 ||
        (rc = get_bool(&f, root, "pool", &cfg->pool)) != 0 ||
        (rc = get_bool(&f, root, "http_streams", &cfg->http_streams)) != 0)
        goto out;
    if ((rc = get_uint(&f, root, "workers", 1, WORKERS_MAX, &cfg->workers)) != 0 ||
        (rc = get_uint(&f, root, "max_connections", 1, MAX_CONNECTIONS_MAX,
                       &cfg->max_connections)) != 0 ||
        (rc = get_uint(&f, root, "request_log_sample", 1, REQUEST_LOG_SAMPLE_MAX,
                       &cfg->request_log_sample)) != 0)
        goto out;
    if ((rc = get_string(&f, root, "log_level", "", "debug, info, warn or error", &s)) != 0)
        goto out;
    if (s != NULL && tt_log_level_parse(s, &cfg->log_level) != 0) {
        rc = errf(err, errlen, "%s: log_level: expected debug, info, warn or error, got \"%.64s\"",
                  path, s);
        goto out;
    }
    obj = json_object_get(root, "timeouts");
    if (obj != NULL) {
        if (!json_is_object(obj)) {
            rc = errf(err, errlen, "%s: timeouts: expected an object", path);
            goto out;
        }
        if ((rc = check_keys(&f, obj, "timeouts", timeout_keys)) != 0 ||
            (rc = get_duration(&f, obj, "handshake", 0, &cfg->handshake_timeout_ms)) != 0 ||
            (rc = get_duration(&f, obj, "connect", 0, &cfg->connect_timeout_ms)) != 0 ||
            (rc = get_duration(&f, obj, "idle", 0, &cfg->idle_timeout_ms)) != 0 ||
            (rc = get_duration(&f, obj, "drain", 1, &cfg->drain_timeout_ms)) != 0 ||
            (rc = get_duration(&f, obj, "request", 1, &cfg->request_timeout_ms)) != 0)
            goto out;
    }
    if ((rc = load_listeners(&f, root, TT_LISTENER_INBOUND, cfg)) != 0)
        goto out;
    rc = load_listeners(&f, root, TT_LISTENER_OUTBOUND, cfg);
    if (rc == 0)
        rc = load_transparent(&f, root, cfg);
out:
    free(f.dir);
    json_decref(root);
    return rc;
}

/* ---- flags ------------------------------------------------------------------------ */

/* Collects argv into fl without interpreting values. Returns 0 or TT_E_CONFIG. An error
 * is remembered while scanning goes on, so that --help anywhere still wins. */
static int scan_args(int argc, char **argv, struct flags *fl, char *err, size_t errlen)
{
    int rc = 0, c;

    /* optind = 0 makes glibc reinitialise getopt completely (including its position inside
     * a group of short options), so tests can parse several command lines in one process.
     * '+' stops at the first operand instead of permuting argv; ':' reports a missing value
     * as ':' rather than '?'. */
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:h", long_options, NULL)) != -1) {
        if (c == 'h') {
            fl->help = 1;
        } else if (c == OPT_INBOUND || c == OPT_OUTBOUND) {
            void *n = realloc(fl->listeners, (fl->n_listeners + 1) * sizeof(*fl->listeners));

            if (n == NULL)
                return errf(err, errlen, "out of memory");
            fl->listeners = n;
            fl->listeners[fl->n_listeners].kind =
                c == OPT_INBOUND ? TT_LISTENER_INBOUND : TT_LISTENER_OUTBOUND;
            fl->listeners[fl->n_listeners++].value = optarg;
        } else if (c == OPT_CRL) {
            const char **n = realloc(fl->crls, (fl->n_crls + 1) * sizeof(*fl->crls));

            if (n == NULL)
                return errf(err, errlen, "out of memory");
            fl->crls = n;
            fl->crls[fl->n_crls++] = optarg;
        } else if (c == OPT_SERVICE) {
            const char **n = realloc(fl->services, (fl->n_services + 1) * sizeof(*fl->services));

            if (n == NULL)
                return errf(err, errlen, "out of memory");
            fl->services = n;
            fl->services[fl->n_services++] = optarg;
        } else if (c == OPT_TRANSPARENT) {
            fl->transparent = 1;
        } else if (c >= OPT_CONFIG && c <= OPT_SPIFFE_ID) {
            fl->single[c - OPT_CONFIG] = optarg ? optarg : "";
        } else if (rc != 0) {
            continue; /* keep the first error, look on for --help */
        } else if (c == ':') {
            rc = errf(err, errlen, "option --%s requires a value", option_name(optopt));
        } else if (optopt == 'h' && strncmp(argv[optind - 1], "--", 2) == 0) {
            rc = errf(err, errlen, "option --help takes no value");
        } else if (optopt == OPT_ADMIN_REMOTE_CONTROL) {
            rc = errf(err, errlen, "option --%s takes no value", option_name(optopt));
        } else if (optopt != 0) {
            rc = errf(err, errlen, "unknown option -%c (see --help)", optopt);
        } else {
            const char *arg = argv[optind - 1];
            size_t n = strcspn(arg, "=");

            rc = errf(err, errlen, "unknown option %.*s (see --help)", (int)(n > 100 ? 100 : n),
                      arg);
        }
    }
    if (rc == 0 && optind < argc)
        rc = errf(err, errlen, "unexpected argument \"%.100s\" (see --help)", argv[optind]);
    return rc;
}

/* The value of a flag as messages show it: "" for an empty one. */
static const char *shown(const char *v)
{
    return v[0] == '\0' ? "\"\"" : v;
}

/* Applies the path flag `opt` (if given) to *slot. */
static int apply_path(const struct flags *fl, int opt, char **slot, char *err, size_t errlen)
{
    const char *v = fl->single[opt - OPT_CONFIG];

    if (v == NULL)
        return 0;
    if (v[0] == '\0')
        return errf(err, errlen, "--%s \"\": expected a file name", option_name(opt));
    if (set_str(slot, v) != 0)
        return errf(err, errlen, "out of memory");
    return 0;
}

/* Applies the duration flag `opt` (if given) to *ms; 0 only when allow_zero. */
static int apply_duration(const struct flags *fl, int opt, int allow_zero, uint64_t *ms, char *err,
                          size_t errlen)
{
    const char *v = fl->single[opt - OPT_CONFIG];
    uint64_t parsed;

    if (v == NULL)
        return 0;
    if (tt_duration_parse(v, &parsed) != 0)
        return errf(err, errlen, "--%s %.100s: expected a duration such as \"10s\"",
                    option_name(opt), shown(v));
    if (parsed == 0 && !allow_zero)
        return errf(err, errlen, "--%s %s: must be more than 0s", option_name(opt), v);
    *ms = parsed;
    return 0;
}

/* Parses a list of ports "P[,P...]" (each 1..65535) into a new array. `where` names the
 * flag or key for the message. */
static int parse_ports(const char *v, uint16_t **out, size_t *n_out, const char *where, char *err,
                       size_t errlen)
{
    char *copy = strdup(v), *save = NULL, *tok;
    uint16_t *ports = NULL;
    size_t n = 0;
    unsigned long port;

    if (copy == NULL)
        return errf(err, errlen, "out of memory");
    for (tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        uint16_t *np;
        if (parse_uint(tok, 1, 65535, &port) != 0) {
            errf(err, errlen, "%s %.100s: expected ports P[,P...], each 1..65535", where, v);
            goto err;
        }
        if ((np = realloc(ports, (n + 1) * sizeof(*np))) == NULL) {
            errf(err, errlen, "out of memory");
            goto err;
        }
        ports = np;
        ports[n++] = (uint16_t)port;
    }
    if (n == 0) {
        errf(err, errlen, "%s \"%.100s\": expected ports P[,P...], each 1..65535", where, v);
        goto err;
    }
    free(copy);
    free(*out);
    *out = ports;
    *n_out = n;
    return 0;
err:
    free(copy);
    free(ports);
    return TT_E_CONFIG;
}

/* Sets one transparent-mode setting from its text (a flag's value or a file's string):
 * opt says which. `where` names the flag or key. */
static int set_transparent(struct tt_config *cfg, int opt, const char *v, const char *where,
                           char *err, size_t errlen)
{
    struct tt_transparent_cfg *t = &cfg->transparent;
    uint64_t ms;
    int rc;

    switch (opt) {
    case OPT_POD_IP: {
        char text[TT_ADDR_TEXT_MAX + 8];
        snprintf(text, sizeof(text), strchr(v, ':') != NULL ? "[%.*s]:0" : "%.*s:0",
                 TT_ADDR_TEXT_MAX - 1, v);
        if ((rc = tt_addr_parse(text, TT_ADDR_NUMERIC | TT_ADDR_ZERO_PORT, &t->pod_ip)) < 0)
            return errf(err, errlen, "%s %.100s: expected an IPv4 or IPv6 address", where, v);
        return 0;
    }
    case OPT_WORKLOAD_PORTS:
        return parse_ports(v, &t->workload_ports, &t->n_workload_ports, where, err, errlen);
    case OPT_OPAQUE_PORTS:
        return parse_ports(v, &t->opaque_ports, &t->n_opaque_ports, where, err, errlen);
    case OPT_OUTBOUND_UNKNOWN:
        if (strcmp(v, "passthrough") != 0 && strcmp(v, "deny") != 0)
            return errf(err, errlen, "%s %.100s: expected passthrough or deny", where, v);
        t->outbound_deny = strcmp(v, "deny") == 0;
        return 0;
    case OPT_INBOUND_MODE:
        if (strcmp(v, "strict") != 0 && strcmp(v, "permissive") != 0)
            return errf(err, errlen, "%s %.100s: expected strict or permissive", where, v);
        t->permissive = strcmp(v, "permissive") == 0;
        return 0;
    case OPT_DETECT_TIMEOUT:
        if (tt_duration_parse(v, &ms) != 0 || ms == 0)
            return errf(err, errlen, "%s %.100s: expected a duration such as \"500ms\"", where, v);
        t->detect_ms = ms;
        return 0;
    case OPT_CHECK_INTERVAL:
        if (tt_duration_parse(v, &ms) != 0)
            return errf(err, errlen, "%s %.100s: expected a duration such as \"5s\" (0s: off)",
                        where, v);
        t->check_interval_ms = ms;
        t->check_interval_set = true;
        return 0;
    default:
        return errf(err, errlen, "internal: unknown transparent option");
    }
}

/* Parses a --service value: "ADDR:PORT=SPIFFE_ID" (an endpoint, a service of one) or
 * "VIP:PORT=ENDPOINT:PORT@SPIFFE_ID" (one endpoint of the service at VIP) into cfg's list
 * (checked as a whole by check_config). */
static int add_service_flag(struct tt_config *cfg, const char *v, char *err, size_t errlen)
{
    const char *eq = strchr(v, '=');
    const char *at = eq != NULL ? strchr(eq + 1, '@') : NULL;
    char *service = NULL, *endpoint, *id;

    if (eq == NULL || eq == v || eq[1] == '\0' || (at != NULL && (at == eq + 1 || at[1] == '\0')))
        return errf(err, errlen,
                    "--service %.200s: expected ADDR:PORT=SPIFFE_ID or "
                    "VIP:PORT=ENDPOINT:PORT@SPIFFE_ID",
                    v);
    if (at != NULL) {
        service = strndup(v, (size_t)(eq - v));
        endpoint = strndup(eq + 1, (size_t)(at - eq - 1));
        id = strdup(at + 1);
    } else {
        endpoint = strndup(v, (size_t)(eq - v));
        id = strdup(eq + 1);
    }
    return add_service(cfg, service, endpoint, id, err, errlen);
}

/* Applies the transparent-mode flags and --service over what the file set. */
static int apply_transparent_flags(const struct flags *fl, struct tt_config *cfg, char *err,
                                   size_t errlen)
{
    static const int opts[] = {OPT_POD_IP,           OPT_WORKLOAD_PORTS, OPT_OPAQUE_PORTS,
                               OPT_OUTBOUND_UNKNOWN, OPT_INBOUND_MODE,   OPT_DETECT_TIMEOUT,
                               OPT_CHECK_INTERVAL};
    char where[64];
    int rc;

    if (fl->transparent)
        cfg->transparent.enabled = true;
    for (size_t i = 0; i < TT_ARRAY_SIZE(opts); i++) {
        const char *v = fl->single[opts[i] - OPT_CONFIG];
        if (v == NULL)
            continue;
        snprintf(where, sizeof(where), "--%s", option_name(opts[i]));
        if ((rc = set_transparent(cfg, opts[i], v, where, err, errlen)) != 0)
            return rc;
    }
    for (size_t i = 0; i < fl->n_services; i++) {
        if ((rc = add_service_flag(cfg, fl->services[i], err, errlen)) != 0)
            return rc;
    }
    return 0;
}

/* Applies the single-valued flags over what the file set. */
static int apply_flags(const struct flags *fl, struct tt_config *cfg, char *err, size_t errlen)
{
    const char *v;
    unsigned long n;
    int rc;

    if ((rc = apply_path(fl, OPT_IDENTITY_CERT, &cfg->cert_path, err, errlen)) != 0 ||
        (rc = apply_path(fl, OPT_IDENTITY_KEY, &cfg->key_path, err, errlen)) != 0 ||
        (rc = apply_path(fl, OPT_TRUST_BUNDLE, &cfg->bundle_path, err, errlen)) != 0 ||
        (rc = apply_path(fl, OPT_POLICY, &cfg->policy_path, err, errlen)) != 0 ||
        (rc = apply_path(fl, OPT_CONTROL_BUNDLE, &cfg->control_bundle_path, err, errlen)) != 0 ||
        (rc = apply_path(fl, OPT_JOIN_TOKEN, &cfg->join_token_path, err, errlen)) != 0 ||
        (rc = apply_path(fl, OPT_JWT_FILE, &cfg->jwt_path, err, errlen)) != 0)
        return rc;
    if ((v = fl->single[OPT_ADMIN - OPT_CONFIG]) != NULL &&
        (rc = tt_addr_parse(v, 1, &cfg->admin)) < 0)
        return errf(err, errlen, "--admin %.300s: %s", shown(v), addr_reason(v, 1, rc));
    if (fl->single[OPT_ADMIN_REMOTE_CONTROL - OPT_CONFIG] != NULL)
        cfg->admin_remote_control = true;
    if ((v = fl->single[OPT_CONTROL - OPT_CONFIG]) != NULL &&
        (rc = set_control_addr(cfg, v, err, errlen, NULL)) != 0)
        return rc;
    if ((v = fl->single[OPT_SPIFFE_ID - OPT_CONFIG]) != NULL &&
        (rc = set_spiffe_id(cfg, v, err, errlen, NULL)) != 0)
        return rc;
    if ((v = fl->single[OPT_WORKERS - OPT_CONFIG]) != NULL) {
        if (parse_uint(v, 1, WORKERS_MAX, &n) != 0)
            return errf(err, errlen, "--workers %.100s: expected an integer 1..%d", shown(v),
                        WORKERS_MAX);
        cfg->workers = (unsigned)n;
    }
    if ((v = fl->single[OPT_MAX_CONNECTIONS - OPT_CONFIG]) != NULL) {
        if (parse_uint(v, 1, MAX_CONNECTIONS_MAX, &n) != 0)
            return errf(err, errlen, "--max-connections %.100s: expected an integer 1..%d",
                        shown(v), MAX_CONNECTIONS_MAX);
        cfg->max_connections = (unsigned)n;
    }
    if ((v = fl->single[OPT_REQUEST_LOG_SAMPLE - OPT_CONFIG]) != NULL) {
        if (parse_uint(v, 1, REQUEST_LOG_SAMPLE_MAX, &n) != 0)
            return errf(err, errlen, "--request-log-sample %.100s: expected an integer 1..%d",
                        shown(v), REQUEST_LOG_SAMPLE_MAX);
        cfg->request_log_sample = (unsigned)n;
    }
    if ((v = fl->single[OPT_LOG_LEVEL - OPT_CONFIG]) != NULL &&
        tt_log_level_parse(v, &cfg->log_level) != 0)
        return errf(err, errlen, "--log-level %.100s: expected debug, info, warn or error",
                    shown(v));
    if ((v = fl->single[OPT_HTTP_STREAMS - OPT_CONFIG]) != NULL) {
        if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
            return errf(err, errlen, "--http-streams %.100s: expected on or off", shown(v));
        cfg->http_streams = strcmp(v, "on") == 0;
    }
    if ((v = fl->single[OPT_POOL - OPT_CONFIG]) != NULL) {
        if (strcmp(v, "on") != 0 && strcmp(v, "off") != 0)
            return errf(err, errlen, "--pool %.100s: expected on or off", shown(v));
        cfg->pool = strcmp(v, "on") == 0;
    }
    if ((rc = apply_duration(fl, OPT_HANDSHAKE_TIMEOUT, 0, &cfg->handshake_timeout_ms, err,
                             errlen)) != 0 ||
        (rc = apply_duration(fl, OPT_CONNECT_TIMEOUT, 0, &cfg->connect_timeout_ms, err, errlen)) !=
            0 ||
        (rc = apply_duration(fl, OPT_IDLE_TIMEOUT, 0, &cfg->idle_timeout_ms, err, errlen)) != 0 ||
        (rc = apply_duration(fl, OPT_DRAIN_TIMEOUT, 1, &cfg->drain_timeout_ms, err, errlen)) != 0 ||
        (rc = apply_duration(fl, OPT_REQUEST_TIMEOUT, 1, &cfg->request_timeout_ms, err, errlen)) !=
            0)
        return rc;
    for (size_t i = 0; i < fl->n_crls; i++) {
        if (fl->crls[i][0] == '\0')
            return errf(err, errlen, "--crl \"\": expected a file name");
        if (add_crl(cfg, fl->crls[i]) < 0)
            return errf(err, errlen, "out of memory");
    }
    if ((rc = apply_transparent_flags(fl, cfg, err, errlen)) != 0)
        return rc;
    for (size_t i = 0; i < fl->n_listeners; i++) {
        struct tt_listener_cfg l;

        rc = tt_config_parse_listener(fl->listeners[i].kind, fl->listeners[i].value, &l, err,
                                      errlen);
        if (rc == 0 && (rc = add_listener(cfg, &l, err, errlen)) != 0)
            free(l.expected_id);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* True when a and b are the same IP and port (port 0 never clashes: the kernel picks). */
static int same_endpoint(const struct tt_addr *a, const struct tt_addr *b)
{
    if (a->ss.ss_family != b->ss.ss_family || tt_addr_port(a) == 0)
        return 0;
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;

        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;

        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
    }
    return 0;
}

/* The namespace's first global address (IPv4 first, then IPv6; not loopback nor
 * link-local) into *out with port 0. Returns 0 or -ENOENT. */
static int first_global_address(struct tt_addr *out)
{
    struct ifaddrs *ifa, *i;
    int rc = -ENOENT;

    if (getifaddrs(&ifa) < 0)
        return -errno;
    for (int fam = AF_INET; rc != 0 && fam != 0; fam = fam == AF_INET ? AF_INET6 : 0) {
        for (i = ifa; i != NULL && rc != 0; i = i->ifa_next) {
            if (i->ifa_addr == NULL || i->ifa_addr->sa_family != fam ||
                (i->ifa_flags & IFF_LOOPBACK) || !(i->ifa_flags & IFF_UP))
                continue;
            if (fam == AF_INET6 &&
                IN6_IS_ADDR_LINKLOCAL(&((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr))
                continue;
            memset(out, 0, sizeof(*out));
            memcpy(&out->ss, i->ifa_addr,
                   fam == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
            out->len = fam == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
            ((struct sockaddr_in *)&out->ss)->sin_port = 0; /* same offset in sockaddr_in6 */
            if (fam == AF_INET6)
                ((struct sockaddr_in6 *)&out->ss)->sin6_scope_id = 0;
            tt_sockaddr_format((struct sockaddr *)&out->ss, out->text, sizeof(out->text));
            rc = 0;
        }
    }
    freeifaddrs(ifa);
    return rc;
}

/* addr with its port replaced. */
static struct tt_addr with_port(const struct tt_addr *addr, uint16_t port)
{
    struct tt_addr a = *addr;

    if (a.ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&a.ss)->sin_port = htons(port);
    else
        ((struct sockaddr_in6 *)&a.ss)->sin6_port = htons(port);
    tt_sockaddr_format((struct sockaddr *)&a.ss, a.text, sizeof(a.text));
    return a;
}

/* True when this namespace can listen on IPv6 (the module is loaded, not disabled). */
static bool ipv6_usable(void)
{
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int one = 1, fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool ok;

    if (fd < 0)
        return false;
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* Transparent mode: the pod address (given or found), the capture listeners (15001 and
 * 15006 on every address of each usable family), health and metrics at the pod address. */
static int setup_transparent(struct tt_config *cfg, char *err, size_t errlen)
{
    static const struct {
        enum tt_listener_kind kind;
        const char *listen;
    } caps[] = {{TT_LISTENER_OUTBOUND, "0.0.0.0:15001"},
                {TT_LISTENER_INBOUND, "0.0.0.0:15006"},
                {TT_LISTENER_OUTBOUND, "[::]:15001"},
                {TT_LISTENER_INBOUND, "[::]:15006"}};
    struct tt_transparent_cfg *t = &cfg->transparent;
    bool v6 = ipv6_usable();
    int rc;

    if (t->detect_ms == 0)
        t->detect_ms = TT_DEFAULT_DETECT_TIMEOUT_MS;
    if (!t->check_interval_set)
        t->check_interval_ms = TT_DEFAULT_CHECK_INTERVAL_MS;
    if (t->pod_ip.len == 0 && first_global_address(&t->pod_ip) < 0)
        return errf(err, errlen,
                    "--transparent: no global address in this network namespace; give --pod-ip");
    for (size_t i = 0; i < TT_ARRAY_SIZE(caps); i++) {
        struct tt_listener_cfg l;
        if (caps[i].listen[0] == '[' && !v6)
            continue;
        memset(&l, 0, sizeof(l));
        l.kind = caps[i].kind;
        l.transparent = true;
        if (tt_addr_parse(caps[i].listen, TT_ADDR_NUMERIC, &l.listen) < 0)
            return errf(err, errlen, "internal: %s", caps[i].listen);
        snprintf(l.name, sizeof(l.name), "transparent-%s:%.40s",
                 l.kind == TT_LISTENER_INBOUND ? "inbound" : "outbound", l.listen.text);
        if ((rc = add_listener(cfg, &l, err, errlen)) != 0)
            return rc;
    }
    if (tt_addr_parse(TT_CANARY_OUTBOUND, TT_ADDR_NUMERIC, &t->canary_outbound) < 0)
        return errf(err, errlen, "internal: %s", TT_CANARY_OUTBOUND);
    t->canary_inbound = with_port(&t->pod_ip, TT_CANARY_INBOUND_PORT);
    cfg->health = with_port(&t->pod_ip, TT_TRANSPARENT_HEALTH_PORT);
    cfg->metrics = with_port(&t->pod_ip, TT_TRANSPARENT_METRICS_PORT);
    return 0;
}

/* The checks that need the whole configuration. */
static int check_config(struct tt_config *cfg, char *err, size_t errlen)
{
    int rc;

    if (cfg->transparent.enabled && (rc = setup_transparent(cfg, err, errlen)) != 0)
        return rc;
    if (!cfg->transparent.enabled &&
        (cfg->transparent.pod_ip.len != 0 || cfg->transparent.n_workload_ports != 0 ||
         cfg->transparent.outbound_deny || cfg->transparent.permissive ||
         cfg->transparent.detect_ms != 0 || cfg->transparent.check_interval_set))
        return errf(err, errlen,
                    "--pod-ip, --workload-ports, --outbound-unknown, "
                    "--inbound-mode, --inbound-detect-timeout and --capture-check-interval need "
                    "--transparent");
    if (cfg->n_services > 0) {
        char serr[256];
        struct tt_services *t = NULL;
        if (cfg->has_control)
            return errf(err, errlen,
                        "--service (services) and --control exclude each other: with a control "
                        "plane the service table comes from it");
        t = tt_services_new(cfg->services, cfg->n_services, NULL, serr, sizeof(serr));
        if (t == NULL)
            return errf(err, errlen, "--service/services: %s", serr);
        tt_services_unref(t);
    }
    if (cfg->has_control) {
        /* Identity, trust and policy all come from the control plane. */
        if (cfg->policy_path != NULL)
            return errf(err, errlen,
                        "--policy and --control exclude each other: with a "
                        "control plane the policy comes from it");
        if (cfg->cert_path != NULL || cfg->key_path != NULL || cfg->bundle_path != NULL)
            return errf(err, errlen,
                        "--identity-cert, --identity-key and --trust-bundle "
                        "exclude --control: the control plane issues the identity");
        if (cfg->control_bundle_path == NULL)
            return errf(err, errlen,
                        "--control needs --control-bundle FILE (the roots that "
                        "the control plane's certificate chains to)");
        if (cfg->spiffe_id == NULL)
            return errf(err, errlen, "--control needs --spiffe-id ID (the identity to ask for)");
        /* Exactly one proof for the first certificate. */
        if (cfg->join_token_path == NULL && cfg->jwt_path == NULL)
            return errf(err, errlen,
                        "--control needs --join-token FILE (a bootstrap token) or --jwt-file "
                        "FILE (a Kubernetes service-account token)");
        if (cfg->join_token_path != NULL && cfg->jwt_path != NULL)
            return errf(err, errlen,
                        "--join-token and --jwt-file exclude each other: give one proof "
                        "(control.join_token or control.jwt_file in the config file)");
        if (cfg->n_crls > 0)
            return errf(err, errlen,
                        "--crl %s: not with --control: the control plane pushes its "
                        "revocations (CRLs are for --trust-bundle mode)",
                        cfg->crl_paths[0]);
    } else if (cfg->control_bundle_path != NULL || cfg->join_token_path != NULL ||
               cfg->jwt_path != NULL || cfg->spiffe_id != NULL) {
        return errf(err, errlen,
                    "--control-bundle, --join-token, --jwt-file and --spiffe-id need "
                    "--control ADDR:PORT");
    } else if (cfg->cert_path == NULL)
        return errf(err, errlen, "missing --identity-cert (or identity.cert in the config file)");
    if (!cfg->has_control && cfg->key_path == NULL)
        return errf(err, errlen, "missing --identity-key (or identity.key in the config file)");
    if (!cfg->has_control && cfg->bundle_path == NULL)
        return errf(err, errlen,
                    "missing --trust-bundle (or identity.trust_bundle in the config file)");
    if (cfg->n_listeners == 0)
        return errf(err, errlen, "no listeners: give --inbound, --outbound or --transparent");
    for (size_t i = 0; i < cfg->n_listeners; i++) {
        const struct tt_listener_cfg *a = &cfg->listeners[i];

        if (same_endpoint(&a->listen, &cfg->admin))
            return errf(err, errlen, "duplicate listen address %s: %s and --admin %s",
                        a->listen.text, a->name, cfg->admin.text);
        for (size_t j = 0; j < i; j++) {
            const struct tt_listener_cfg *b = &cfg->listeners[j];

            if (same_endpoint(&a->listen, &b->listen))
                return errf(err, errlen, "duplicate listen address %s: %s and %s", a->listen.text,
                            b->name, a->name);
        }
    }
    return 0;
}

/* Fills cfg from argv: --config FILE first (relative paths inside it resolved against its
 * directory), then the flags over it wherever they stand on the line (--inbound and
 * --outbound add to the file's lists), then defaults and whole-config checks. cfg is
 * overwritten (it must not hold anything that needs freeing). Returns 0; TT_CONFIG_HELP
 * after printing the usage to stdout; or TT_E_CONFIG with one line in err, cfg then to be
 * released with tt_config_done(). Uses getopt_long(): not thread-safe, and argv is not
 * permuted. */
int tt_config_parse_args(int argc, char **argv, struct tt_config *cfg, char *err, size_t errlen)
{
    struct flags fl;
    const char *config;
    long cpus;
    int rc;

    memset(cfg, 0, sizeof(*cfg));
    memset(&fl, 0, sizeof(fl));
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    cfg->log_level = TT_LOG_INFO;
    cfg->max_connections = TT_DEFAULT_MAX_CONNECTIONS;
    cfg->request_log_sample = 1;
    cfg->pool = true;
    cfg->http_streams = true;
    cfg->handshake_timeout_ms = TT_DEFAULT_HANDSHAKE_TIMEOUT_MS;
    cfg->connect_timeout_ms = TT_DEFAULT_CONNECT_TIMEOUT_MS;
    cfg->idle_timeout_ms = TT_DEFAULT_IDLE_TIMEOUT_MS;
    cfg->drain_timeout_ms = TT_DEFAULT_DRAIN_TIMEOUT_MS;
    if (tt_addr_parse(TT_DEFAULT_ADMIN, 1, &cfg->admin) != 0) {
        rc = errf(err, errlen, "cannot parse the default admin address");
        goto out;
    }

    rc = scan_args(argc, argv, &fl, err, errlen);
    if (fl.help) {
        tt_config_usage(stdout);
        rc = TT_CONFIG_HELP;
        goto out;
    }
    if (rc != 0)
        goto out;
    config = fl.single[OPT_CONFIG - OPT_CONFIG];
    if (config != NULL) {
        if (config[0] == '\0') {
            rc = errf(err, errlen, "--config \"\": expected a file name");
            goto out;
        }
        if (set_str(&cfg->config_path, config) != 0) {
            rc = errf(err, errlen, "out of memory");
            goto out;
        }
        if ((rc = load_file(config, cfg, err, errlen)) != 0)
            goto out;
    }
    if ((rc = apply_flags(&fl, cfg, err, errlen)) != 0)
        goto out;
    if (cfg->workers == 0) {
        cpus = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = cpus < 1 ? 1 : cpus > WORKERS_MAX ? WORKERS_MAX : (unsigned)cpus;
    }
    rc = check_config(cfg, err, errlen);
out:
    free(fl.listeners);
    free(fl.crls);
    free(fl.services);
    return rc;
}

/* Frees what cfg owns and zeroes it; accepts a zeroed cfg. */
void tt_config_done(struct tt_config *cfg)
{
    free(cfg->config_path);
    free(cfg->cert_path);
    free(cfg->key_path);
    free(cfg->bundle_path);
    for (size_t i = 0; i < cfg->n_crls; i++)
        free(cfg->crl_paths[i]);
    free(cfg->crl_paths);
    free(cfg->policy_path);
    free(cfg->control_bundle_path);
    free(cfg->join_token_path);
    free(cfg->jwt_path);
    free(cfg->spiffe_id);
    for (size_t i = 0; i < cfg->n_listeners; i++)
        free(cfg->listeners[i].expected_id);
    free(cfg->listeners);
    free(cfg->transparent.workload_ports);
    free(cfg->transparent.opaque_ports);
    for (size_t i = 0; i < cfg->n_services; i++) {
        free((char *)cfg->services[i].service);
        free((char *)cfg->services[i].endpoint);
        free((char *)cfg->services[i].spiffe_id);
    }
    free(cfg->services);
    memset(cfg, 0, sizeof(*cfg));
}

/* Prints the --help text to out. */
void tt_config_usage(FILE *out)
{
    fputs(
        "Usage: tether-sidecar [OPTIONS]\n"
        "\n"
        "Tether's sidecar: terminates and originates mutual TLS for one workload, letting in\n"
        "only callers whose SPIFFE ID the policy allows. Flags override --config values\n"
        "wherever they appear on the line; --inbound, --outbound and --crl add to the file's "
        "lists.\n"
        "\n"
        "Configuration file:\n"
        "  --config FILE               JSON file with any of the settings below; relative\n"
        "                              paths in it are relative to its directory (max 1 MiB)\n"
        "\n"
        "Identity (required, from flags or the file):\n"
        "  --identity-cert FILE        PEM certificate chain, leaf first, with a spiffe:// URI "
        "SAN\n"
        "  --identity-key FILE         PEM private key of that certificate\n"
        "  --trust-bundle FILE         PEM root certificates that peers must chain to\n"
        "  --crl FILE                  certificate revocation list, PEM or DER (repeatable;\n"
        "                              file key identity.crls): a peer whose chain holds a\n"
        "                              certificate its issuer's CRL lists is refused; reloaded\n"
        "                              on SIGHUP\n"
        "\n"
        "Control plane (instead of the three identity flags and --policy):\n"
        "  --control ADDR:PORT         tether-control's sidecar API (gRPC over mTLS, usually\n"
        "                              port 15012): certificates, trust bundle, policy\n"
        "  --control-bundle FILE       PEM roots that the control plane's certificate chains to\n"
        "  --join-token FILE           bootstrap token from `tetherctl token create` (the\n"
        "                              first certificate; renewals use the current one)\n"
        "  --jwt-file FILE             or a Kubernetes projected service-account token (a JWT;\n"
        "                              the control plane needs --jwks): read again at every\n"
        "                              request, as kubelet rotates it; used for the first\n"
        "                              certificate and whenever renewal with the current\n"
        "                              one is refused or it has expired. Exactly one of\n"
        "                              --join-token and --jwt-file\n"
        "  --spiffe-id ID              the identity to ask for, e.g.\n"
        "                              spiffe://cluster.local/ns/shop/sa/web\n"
        "\n"
        "Listeners (at least one; repeatable, kept in the order given):\n"
        "  --inbound LISTEN=FORWARD    accept mTLS on LISTEN, relay plaintext to FORWARD\n"
        "  --outbound LISTEN=UPSTREAM@SPIFFE_ID\n"
        "                              accept plaintext on LISTEN, open mTLS to UPSTREAM and\n"
        "                              require the server to be SPIFFE_ID\n"
        "                              Addresses are IP:PORT, [IPv6]:PORT or HOST:PORT; a LISTEN\n"
        "                              port may be 0, FORWARD and UPSTREAM ports are 1..65535\n"
        "\n"
        "Policy and operation:\n"
        "  --policy FILE               JSON allow-list policy (default: none, any caller with a\n"
        "                              valid certificate from the trust bundle is let in)\n"
        "  --admin ADDR:PORT           admin HTTP endpoint: /stats /ready /live /certs /policy\n"
        "                              /quitquitquit (default 127.0.0.1:15000; port 0 allowed);\n"
        "                              on an address other than loopback only /ready /live\n"
        "                              /stats are served there\n"
        "  --admin-allow-remote-control\n"
        "                              serve /certs /policy /quitquitquit on such an address\n"
        "                              too, to anyone who can reach it\n"
        "  --workers N                 worker threads, 1..256 (default: online CPUs)\n"
        "  --log-level LEVEL           debug, info, warn or error (default info)\n"
        "  --max-connections N         open connections at most, 1..1000000 (default 16384)\n"
        "  --request-log-sample N      write one request line in N (default 1: all); denied,\n"
        "                              refused, 5xx and unanswered requests are always written\n"
        "                              (key request_log_sample)\n"
        "  --http-streams on|off       pooling on: an outbound HTTP/1.x app's requests ride a\n"
        "                              stream each (per-request balancing, retries, metrics);\n"
        "                              off: its connection is one tunnel, as any other\n"
        "                              protocol's (default on; key http_streams)\n"
        "  --pool on|off               outbound app connections to another sidecar ride a few\n"
        "                              pooled HTTP/2 mTLS connections per destination, one\n"
        "                              tunnel stream each, instead of one handshake each;\n"
        "                              off: one mTLS connection per app connection (default\n"
        "                              on; key pool: true|false)\n"
        "\n"
        "Timeouts (durations such as 250ms, 10s, 5m, 1h, 1h30m):\n"
        "  --handshake-timeout D       TLS handshake must finish within D (default 10s)\n"
        "  --connect-timeout D         TCP connect to FORWARD or UPSTREAM (default 5s)\n"
        "  --idle-timeout D            close a connection idle both ways for D (default 1h)\n"
        "  --drain-timeout D           on SIGTERM, let connections finish for D; 0s closes at\n"
        "                              once (default 20s)\n"
        "  --request-timeout D         pooled outbound HTTP/1.x: a request not answered in D\n"
        "                              gets 504 request_timeout (default 0s: none; key\n"
        "                              timeouts.request; per outbound listener in the file:\n"
        "                              request_timeout)\n"
        "\n"
        "Transparent mode (capture by tether-iptables; the sidecar runs as UID 1337):\n"
        "  --transparent               listen on 15001 (outbound capture) and 15006 (inbound\n"
        "                              capture); health (/ready, /live) on POD_IP:15021 and\n"
        "                              metrics (/stats) on POD_IP:15020 (file key transparent)\n"
        "  --pod-ip IP                 the pod's address (default: the namespace's first global\n"
        "                              address; key pod_ip)\n"
        "  --workload-ports P[,P...]   ports registered with the control plane as endpoints at\n"
        "                              POD_IP (key workload_ports)\n"
        "  --opaque-ports P[,P...]     server-first workload ports, relayed unread: no detection\n"
        "                              wait, no per-request policy (a policy denying by method\n"
        "                              or path there is refused); in permissive mode they stay\n"
        "                              mTLS-only; explicit mode too (key opaque_ports)\n"
        "  --outbound-unknown passthrough|deny\n"
        "                              destinations outside the service table: relayed in\n"
        "                              plaintext or refused (default passthrough; key\n"
        "                              outbound_unknown)\n"
        "  --inbound-mode strict|permissive\n"
        "                              strict: mTLS only (default); permissive: plaintext callers\n"
        "                              too, told apart by their first bytes (key inbound_mode)\n"
        "  --inbound-detect-timeout D  permissive: a caller silent for D is plaintext (default\n"
        "                              500ms; key inbound_detect_timeout)\n"
        "  --capture-check-interval D  how often /ready's capture check runs: probes through\n"
        "                              192.0.2.1:15009 and POD_IP:15008, which tether-iptables\n"
        "                              redirects; 0s turns it off (default 5s; key\n"
        "                              capture_check_interval)\n"
        "  --service ADDR:PORT=SPIFFE_ID | VIP:PORT=ENDPOINT:PORT@SPIFFE_ID\n"
        "                              a service table entry without a control plane\n"
        "                              (repeatable; key services: [{service, endpoint,\n"
        "                              spiffe_id}])\n"
        "\n"
        "  -h, --help                  print this text and exit\n"
        "\n"
        "Example:\n"
        "  tether-sidecar --identity-cert web.pem --identity-key web.key \\\n"
        "      --trust-bundle bundle.pem \\\n"
        "      --inbound 127.0.0.1:16006=127.0.0.1:8080 \\\n"
        "      --outbound 127.0.0.1:15001=10.0.0.7:16006@spiffe://cluster.local/ns/shop/sa/api\n",
        out);
}
