/* tetherctl: the operator CLI over tether-control's HTTP/JSON API (see api.h).
 *
 * Exit status: 0 success, 1 the request failed (the server's error message or the
 * network problem on stderr), 2 usage error. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "httpc.h"
#include "inject.h"
#include "yaml.h"
#include "tls/crypto.h"
#include "tls/identity.h"
#include "core/query.h"
#include "operator_token.h"
#include "store_file.h"

#define DEFAULT_API       "http://127.0.0.1:15014"
#define DEFAULT_STATE_DIR "/var/lib/tether"
#define TIMEOUT_MS        10000
#define FILE_MAX          (1024 * 1024)
#define EXIT_FAIL         1
#define EXIT_USAGE        2

static const char usage[] =
    "usage: tetherctl [--api URL] [--json] COMMAND [ARGS]\n"
    "\n"
    "Operates tether-control through its API (default " DEFAULT_API ", or $TETHER_API).\n"
    "\n"
    "commands:\n"
    "  token create --spiffe-id ID [--ttl D] [--uses N]\n"
    "                          create a bootstrap token; prints the token alone\n"
    "                          (--ttl defaults to 24h; --ttl 0: it never expires)\n"
    "  token list              live tokens (never their secrets)\n"
    "  token delete ID         delete a token by the ID token list shows (or a\n"
    "                          prefix of at least 4 digits that names one token)\n"
    "  policy set FILE         validate and install a policy document (- for stdin)\n"
    "  policy get              print the current policy document\n"
    "  bundle get              print the trust bundle (the roots, PEM)\n"
    "  crl get                 print the revocations as a CRL signed by the CA (PEM; for\n"
    "                          nginx ssl_crl, HAProxy crl-file; valid 24 h: fetch it again\n"
    "                          well before)\n"
    "  revoke SERIAL           revoke a certificate (hex serial; case, colons ignored)\n"
    "  revocations             list revoked serials\n"
    "  identities              list issued certificates\n"
    "  service add ADDR:PORT SPIFFE_ID\n"
    "                          map an address to the identity that must answer there\n"
    "                          (one endpoint at that address)\n"
    "  service add VIP:PORT --endpoint IP:PORT=SPIFFE_ID [--endpoint ...]\n"
    "                          a service address with its endpoints (replaces them)\n"
    "  service endpoint add VIP:PORT IP:PORT SPIFFE_ID\n"
    "  service endpoint remove VIP:PORT IP:PORT\n"
    "  service remove ADDR:PORT\n"
    "  service list            the service table: each entry's endpoints and source\n"
    "                          (operator, registration) and a registration's state\n"
    "  sidecars                connected sidecars, the snapshot versions they run, the\n"
    "                          endpoints each registered and those refused (and why)\n"
    "  stats                   the control plane's counters (JSON)\n"
    "  inject -f FILE|- [--sidecar-image I] [--control-address HOST:PORT]\n"
    "         [--trust-domain TD] [--jwt-audience AUD] [--bundle FILE]\n"
    "                          inject the sidecar into the Pods, Deployments, StatefulSets,\n"
    "                          DaemonSets, ReplicaSets, Jobs and CronJobs of a manifest\n"
    "                          (multi-document YAML in, YAML out; JSON in, JSON out; other\n"
    "                          kinds pass through); the same pod the webhook makes. The\n"
    "                          bundle defaults to GET /v1/bundle from the API\n"
    "  admin-cert create --spiffe-id ID --out PREFIX [--ttl D]\n"
    "                          on the control host (loopback API): a certificate for an\n"
    "                          admin identity (a key made here, never sent) into\n"
    "                          PREFIX.crt, PREFIX.key (0600) and PREFIX.ca.crt (the bundle),\n"
    "                          for --cert/--key/--cacert from elsewhere\n"
    "\n"
    "options:\n"
    "  --api URL               the operator API, http://HOST:PORT (loopback) or\n"
    "                          https://HOST:PORT (any other address: mTLS)\n"
    "  --state-dir DIR         http://: tether-control's state directory, whose\n"
    "                          operator.token is the credential the loopback API asks\n"
    "                          for ($TETHER_STATE_DIR, default " DEFAULT_STATE_DIR ")\n"
    "  --cert FILE             https: the admin certificate ($TETHER_CERT)\n"
    "  --key FILE              https: its private key ($TETHER_KEY)\n"
    "  --cacert FILE           https: the control plane's trust bundle ($TETHER_CACERT)\n"
    "  --json                  print the server's JSON instead of a table\n"
    "  -h, --help              this text\n"
    "\n"
    "Durations are written 250ms, 10s, 5m, 1h, 1h30m.\n";

struct ctl {
    const char *api;
    bool json;
    struct cp_httpc_tls tls;
    const char *state_dir;
    char token[CP_OPERATOR_TOKEN_MAX]; /* tls.bearer points here once read */
    char token_err[512];               /* why it could not be read, for a 401's hint */
};

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int usage_error(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "tetherctl: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see tetherctl --help)\n");
    return EXIT_USAGE;
}

/* Sends one request; on any failure prints the reason and returns false. A 2xx answer
 * leaves the response in *r (caller frees). */
static bool call(const struct ctl *c, const char *method, const char *path, json_t *body_doc,
                 const char *raw_body, size_t raw_len, struct cp_httpc_response *r)
{
    char err[512];
    char *body = NULL;
    size_t len = 0;
    const char *ctype = NULL;
    int rc;

    if (body_doc != NULL) {
        body = json_dumps(body_doc, JSON_COMPACT);
        json_decref(body_doc);
        if (body == NULL) {
            fprintf(stderr, "tetherctl: out of memory\n");
            return false;
        }
        len = strlen(body);
        ctype = "application/json";
    } else if (raw_body != NULL) {
        body = (char *)raw_body;
        len = raw_len;
        ctype = "application/json";
    }
    rc = cp_httpc_call(c->api, &c->tls, method, path, ctype, body, len, TIMEOUT_MS, r, err,
                       sizeof(err));
    if (body_doc != NULL)
        free(body);
    if (rc != 0) {
        fprintf(stderr, "tetherctl: %s\n", err);
        return false;
    }
    if (r->status < 200 || r->status > 299) {
        json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);
        json_t *e = json_object_get(doc, "error");

        if (json_is_string(e))
            fprintf(stderr, "tetherctl: %s (HTTP %d)\n", json_string_value(e), r->status);
        else
            fprintf(stderr, "tetherctl: %s %s: HTTP %d %.200s\n", method, path, r->status, r->body);
        if (r->status == 401 && c->token_err[0] != '\0')
            fprintf(stderr, "tetherctl: no operator credential was sent: %s\n", c->token_err);
        json_decref(doc);
        cp_httpc_response_done(r);
        return false;
    }
    return true;
}

static json_t *parse_response(struct cp_httpc_response *r)
{
    json_t *doc = json_loadb(r->body, r->body_len, 0, NULL);

    if (doc == NULL)
        fprintf(stderr, "tetherctl: the server's answer is not JSON\n");
    return doc;
}

/* Prints the raw body (with a final newline). */
static void print_body(const struct cp_httpc_response *r)
{
    fwrite(r->body, 1, r->body_len, stdout);
    if (r->body_len == 0 || r->body[r->body_len - 1] != '\n')
        putchar('\n');
}

static const char *sval(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);

    return json_is_string(v) ? json_string_value(v) : "-";
}

static void ival(json_t *o, const char *key, char *buf, size_t len)
{
    json_t *v = json_object_get(o, key);

    if (json_is_integer(v))
        snprintf(buf, len, "%lld", (long long)json_integer_value(v));
    else if (json_is_true(v))
        snprintf(buf, len, "yes");
    else if (json_is_false(v))
        snprintf(buf, len, "no");
    else
        snprintf(buf, len, "-");
}

static void time_val(json_t *o, const char *key, char *buf, size_t len)
{
    json_t *v = json_object_get(o, key);
    time_t t;
    struct tm tm;

    if (!json_is_integer(v) || json_integer_value(v) == 0) {
        snprintf(buf, len, "-");
        return;
    }
    t = (time_t)json_integer_value(v);
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Fetches path, then prints array `key` as a table (or the JSON with --json). */
static int list(const struct ctl *c, const char *path, const char *key, void (*header)(void),
                void (*row)(json_t *))
{
    struct cp_httpc_response r;
    json_t *doc, *arr, *it;
    size_t i;

    if (!call(c, "GET", path, NULL, NULL, 0, &r))
        return EXIT_FAIL;
    if (c->json) {
        print_body(&r);
        cp_httpc_response_done(&r);
        return 0;
    }
    doc = parse_response(&r);
    cp_httpc_response_done(&r);
    arr = json_object_get(doc, key);
    if (!json_is_array(arr)) {
        json_decref(doc);
        fprintf(stderr, "tetherctl: unexpected answer from %s\n", path);
        return EXIT_FAIL;
    }
    header();
    json_array_foreach(arr, i, it) row(it);
    json_decref(doc);
    return 0;
}

static void services_header(void)
{
    printf("%-30s %-30s %-60s %s\n", "ADDRESS", "ENDPOINT", "SPIFFE ID", "SOURCE");
}

/* One line per endpoint; a registration says whether its stream is open ("live"), in its
 * grace period, or covered by an operator entry ("shadowed"). */
static void services_row(json_t *o)
{
    json_t *eps = json_object_get(o, "endpoints"), *ep;
    char src[96];
    size_t i;

    snprintf(src, sizeof(src), "%s", sval(o, "source"));
    if (json_is_string(json_object_get(o, "state")))
        snprintf(src, sizeof(src), "%s (%s%s)", sval(o, "source"), sval(o, "state"),
                 json_is_true(json_object_get(o, "shadowed")) ? ", shadowed" : "");
    if (json_array_size(eps) == 0) {
        printf("%-30s %-30s %-60s %s\n", sval(o, "address"), sval(o, "address"),
               sval(o, "spiffe_id"), src);
        return;
    }
    json_array_foreach(eps, i, ep) printf("%-30s %-30s %-60s %s\n", sval(o, "address"),
                                          sval(ep, "address"), sval(ep, "spiffe_id"), src);
}

static void sidecars_header(void)
{
    printf("%-50s %-22s %-12s %-7s %-7s %-20s %s\n", "SPIFFE ID", "PEER", "NODE", "ACKED", "NACKED",
           "LAST SEEN", "NACK REASON");
}

static void sidecars_row(json_t *o)
{
    char acked[24], nacked[24], seen[32];

    ival(o, "acked_version", acked, sizeof(acked));
    ival(o, "nacked_version", nacked, sizeof(nacked));
    time_val(o, "last_seen_unix", seen, sizeof(seen));
    json_t *reg = json_object_get(o, "registered"), *bad = json_object_get(o, "refused"), *e;
    size_t i;

    printf("%-50s %-22s %-12s %-7s %-7s %-20s %s\n", sval(o, "spiffe_id"), sval(o, "peer"),
           sval(o, "node"), acked, nacked, seen, sval(o, "nack_reason"));
    json_array_foreach(reg, i, e) printf("    registered %s\n", json_string_value(e));
    json_array_foreach(bad, i, e) printf("    refused    %s: %s (%s)\n", sval(e, "address"),
                                         sval(e, "reason"), sval(e, "detail"));
}

static void tokens_header(void)
{
    printf("%-12s %-50s %-5s %-20s %s\n", "ID", "SPIFFE ID", "USES", "EXPIRES", "EXPIRED");
}

static void tokens_row(json_t *o)
{
    char uses[24], exp[32], expired[8];

    ival(o, "uses_left", uses, sizeof(uses));
    time_val(o, "expires_unix", exp, sizeof(exp));
    ival(o, "expired", expired, sizeof(expired));
    printf("%-12s %-50s %-5s %-20s %s\n", sval(o, "id"), sval(o, "spiffe_id"), uses, exp, expired);
}

static void identities_header(void)
{
    printf("%-34s %-50s %-20s %s\n", "SERIAL", "SPIFFE ID", "NOT AFTER", "REVOKED");
}

static void identities_row(json_t *o)
{
    char na[32], rev[8];

    time_val(o, "not_after", na, sizeof(na));
    ival(o, "revoked", rev, sizeof(rev));
    printf("%-34s %-50s %-20s %s\n", sval(o, "serial"), sval(o, "spiffe_id"), na, rev);
}

static void revocations_header(void)
{
    printf("%-34s %s\n", "SERIAL", "REVOKED AT");
}

static void revocations_row(json_t *o)
{
    char at[32];

    time_val(o, "revoked_unix", at, sizeof(at));
    printf("%-34s %s\n", sval(o, "serial"), at);
}

/* ---- commands ---- */

static int parse_uint(const char *s, long long max, long long *out)
{
    char *end;
    long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1 || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int cmd_token_create(const struct ctl *c, int argc, char **argv)
{
    const char *id = NULL, *ttl = NULL;
    long long uses = 0;
    struct cp_httpc_response r;
    json_t *body, *doc, *tok;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;

        if (strcmp(a, "--spiffe-id") == 0)
            dst = &id;
        else if (strcmp(a, "--ttl") == 0)
            dst = &ttl;
        else if (strcmp(a, "--uses") == 0) {
            if (i + 1 >= argc)
                return usage_error("%s needs a value", a);
            if (parse_uint(argv[++i], 1000000, &uses) != 0)
                return usage_error("--uses %s: expected an integer 1..1000000", argv[i]);
            continue;
        } else {
            return usage_error("token create: unexpected argument %s", a);
        }
        if (i + 1 >= argc)
            return usage_error("%s needs a value", a);
        *dst = argv[++i];
    }
    if (id == NULL)
        return usage_error("token create: %s is required", "--spiffe-id");
    body = json_pack("{s:s}", "spiffe_id", id);
    if (body == NULL)
        return EXIT_FAIL;
    if (ttl)
        json_object_set_new(body, "ttl", json_string(ttl));
    if (uses)
        json_object_set_new(body, "uses", json_integer(uses));
    if (!call(c, "POST", "/v1/tokens", body, NULL, 0, &r))
        return EXIT_FAIL;
    if (c->json) {
        print_body(&r);
        cp_httpc_response_done(&r);
        return 0;
    }
    doc = parse_response(&r);
    cp_httpc_response_done(&r);
    tok = json_object_get(doc, "token");
    if (!json_is_string(tok)) {
        json_decref(doc);
        fprintf(stderr, "tetherctl: the answer holds no token\n");
        return EXIT_FAIL;
    }
    printf("%s\n", json_string_value(tok));
    json_decref(doc);
    return 0;
}

static char *read_input(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    char *buf;
    size_t n = 0;

    if (f == NULL) {
        fprintf(stderr, "tetherctl: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    buf = malloc(FILE_MAX + 1);
    if (buf != NULL) {
        n = fread(buf, 1, FILE_MAX + 1, f);
        if (ferror(f)) {
            fprintf(stderr, "tetherctl: %s: %s\n", path, strerror(errno));
            free(buf);
            buf = NULL;
        } else if (n > FILE_MAX) {
            fprintf(stderr, "tetherctl: %s: larger than 1 MiB\n", path);
            free(buf);
            buf = NULL;
        }
    }
    if (f != stdin)
        fclose(f);
    if (buf)
        buf[n] = '\0';
    *len = n;
    return buf;
}

static int cmd_policy_set(const struct ctl *c, const char *file)
{
    struct cp_httpc_response r;
    size_t len;
    char *text = read_input(file, &len);
    bool ok;

    if (text == NULL)
        return EXIT_FAIL;
    ok = call(c, "PUT", "/v1/policy", NULL, text, len, &r);
    free(text);
    if (!ok)
        return EXIT_FAIL;
    if (c->json) {
        print_body(&r);
    } else {
        json_t *doc = json_loadb(r.body, r.body_len, 0, NULL);
        json_t *v = json_object_get(doc, "version");

        printf("policy set (snapshot version %lld)\n",
               json_is_integer(v) ? (long long)json_integer_value(v) : 0LL);
        json_decref(doc);
    }
    cp_httpc_response_done(&r);
    return 0;
}

static int cmd_get_raw(const struct ctl *c, const char *path)
{
    struct cp_httpc_response r;

    if (!call(c, "GET", path, NULL, NULL, 0, &r))
        return EXIT_FAIL;
    print_body(&r);
    cp_httpc_response_done(&r);
    return 0;
}

static int cmd_revoke(const struct ctl *c, const char *serial)
{
    struct cp_httpc_response r;
    json_t *doc;

    if (!call(c, "POST", "/v1/revocations", json_pack("{s:s}", "serial", serial), NULL, 0, &r))
        return EXIT_FAIL;
    if (c->json) {
        print_body(&r);
    } else {
        doc = json_loadb(r.body, r.body_len, 0, NULL);
        printf("%s %s\n",
               json_is_true(json_object_get(doc, "already_revoked")) ? "already revoked:"
                                                                     : "revoked:",
               sval(doc, "serial"));
        json_decref(doc);
    }
    cp_httpc_response_done(&r);
    return 0;
}

/* Sends body to method path and prints `done` (or the answer with --json). */
static int simple_call(const struct ctl *c, const char *method, const char *path, json_t *body,
                       const char *done)
{
    struct cp_httpc_response r;

    if (!call(c, method, path, body, NULL, 0, &r))
        return EXIT_FAIL;
    if (c->json)
        print_body(&r);
    else
        printf("%s\n", done);
    cp_httpc_response_done(&r);
    return 0;
}

/* service add ADDR SPIFFE_ID, or service add VIP --endpoint IP:PORT=SPIFFE_ID... (argv after
 * "add"). */
static int cmd_service_add(const struct ctl *c, int argc, char **argv)
{
    json_t *eps;
    char done[600];

    if (argc == 2 && strncmp(argv[1], "--", 2) != 0) {
        snprintf(done, sizeof(done), "service %s -> %s", argv[0], argv[1]);
        return simple_call(c, "POST", "/v1/services",
                           json_pack("{s:s,s:s}", "address", argv[0], "spiffe_id", argv[1]), done);
    }
    if (argc < 3)
        return usage_error("service add: expected ADDR:PORT SPIFFE_ID or VIP:PORT --endpoint "
                           "IP:PORT=SPIFFE_ID [--endpoint ...]");
    eps = json_array();
    for (int i = 1; i < argc; i += 2) {
        const char *eq = i + 1 < argc ? strchr(argv[i + 1], '=') : NULL;

        if (strcmp(argv[i], "--endpoint") != 0 || eq == NULL || eq == argv[i + 1]) {
            json_decref(eps);
            return usage_error("service add %s: expected --endpoint IP:PORT=SPIFFE_ID, got %s%s%s",
                               argv[0], argv[i], i + 1 < argc ? " " : "",
                               i + 1 < argc ? argv[i + 1] : "");
        }
        json_array_append_new(eps, json_pack("{s:s%,s:s}", "address", argv[i + 1],
                                             (size_t)(eq - argv[i + 1]), "spiffe_id", eq + 1));
    }
    snprintf(done, sizeof(done), "service %s with %d endpoint(s)", argv[0], (argc - 1) / 2);
    return simple_call(c, "POST", "/v1/services",
                       json_pack("{s:s,s:o}", "address", argv[0], "endpoints", eps), done);
}

/* service endpoint add VIP EP ID | service endpoint remove VIP EP (argv after "endpoint"). */
static int cmd_service_endpoint(const struct ctl *c, int argc, char **argv)
{
    char path[1024], done[600];
    int off;

    if (argc == 4 && strcmp(argv[0], "add") == 0) {
        snprintf(done, sizeof(done), "service %s: endpoint %s -> %s", argv[1], argv[2], argv[3]);
        return simple_call(c, "POST", "/v1/services/endpoints",
                           json_pack("{s:s,s:s,s:s}", "service", argv[1], "address", argv[2],
                                     "spiffe_id", argv[3]),
                           done);
    }
    if (argc == 3 && strcmp(argv[0], "remove") == 0) {
        off = snprintf(path, sizeof(path), "/v1/services/endpoints?service=");
        if (tt_query_escape(argv[1], path + off, sizeof(path) - (size_t)off) != 0)
            return usage_error("service endpoint remove: %.64s...: too long", argv[1]);
        off += (int)strlen(path + off);
        off += snprintf(path + off, sizeof(path) - (size_t)off, "&address=");
        if (tt_query_escape(argv[2], path + off, sizeof(path) - (size_t)off) != 0)
            return usage_error("service endpoint remove: %.64s...: too long", argv[2]);
        snprintf(done, sizeof(done), "service %s: endpoint %s removed", argv[1], argv[2]);
        return simple_call(c, "DELETE", path, NULL, done);
    }
    return usage_error("service endpoint: expected add VIP:PORT IP:PORT SPIFFE_ID or remove "
                       "VIP:PORT IP:PORT");
}

static int cmd_token_delete(const struct ctl *c, const char *id)
{
    static const char base[] = "/v1/tokens?id=";
    struct cp_httpc_response r;
    char path[256];

    memcpy(path, base, sizeof(base));
    if (tt_query_escape(id, path + sizeof(base) - 1, sizeof(path) - sizeof(base) + 1) != 0)
        return usage_error("token delete %.80s: too long for a token id", id);
    if (!call(c, "DELETE", path, NULL, NULL, 0, &r))
        return EXIT_FAIL;
    if (c->json) {
        print_body(&r);
    } else {
        json_t *doc = json_loadb(r.body, r.body_len, 0, NULL);

        printf("deleted token %s\n", sval(doc, "deleted"));
        json_decref(doc);
    }
    cp_httpc_response_done(&r);
    return 0;
}

static int cmd_service_remove(const struct ctl *c, const char *addr)
{
    static const char base[] = "/v1/services?address=";
    struct cp_httpc_response r;
    char path[1024];

    memcpy(path, base, sizeof(base));
    if (tt_query_escape(addr, path + sizeof(base) - 1, sizeof(path) - sizeof(base) + 1) != 0)
        return usage_error("service remove: %.64s...: too long for an address", addr);
    if (!call(c, "DELETE", path, NULL, NULL, 0, &r))
        return EXIT_FAIL;
    if (c->json)
        print_body(&r);
    else
        printf("service %s removed\n", addr);
    cp_httpc_response_done(&r);
    return 0;
}

/* --cert/--key/--cacert FILE (or --flag=FILE) at argv[*i]: stores it and returns true
 * (*rc nonzero after a usage error); false for any other argument. */
static bool tls_flag(int argc, char **argv, int *i, struct cp_httpc_tls *t, int *rc)
{
    static const char *const names[] = {"--cert", "--key", "--cacert"};
    const char **dst[] = {&t->cert_file, &t->key_file, &t->cacert_file};
    const char *a = argv[*i];

    *rc = 0;
    for (size_t k = 0; k < 3; k++) {
        size_t n = strlen(names[k]);

        if (strncmp(a, names[k], n) != 0 || (a[n] != '\0' && a[n] != '='))
            continue;
        if (a[n] == '=') {
            *dst[k] = a + n + 1;
        } else if (*i + 1 < argc) {
            *dst[k] = argv[++*i];
        } else {
            *rc = usage_error("%s needs a file", a);
        }
        return true;
    }
    return false;
}

/* Writes data to path with the control plane's one atomic writer (the directory is
 * fsync'ed too). Returns 0, or -errno after printing why. */
static int write_file(const char *path, const char *data, size_t len, int mode)
{
    int rc = cp_atomic_write(path, data, len, mode);

    if (rc != 0)
        fprintf(stderr, "tetherctl: %s: %s\n", path, strerror(-rc));
    return rc;
}

/* admin-cert create: key and CSR made here, signed by the loopback API. */
static int cmd_admin_cert_create(const struct ctl *c, int argc, char **argv)
{
    const char *id = NULL, *ttl = NULL, *out = NULL;
    char path[4096], *key_pem = NULL, *b64 = NULL;
    size_t key_len = 0, der_len = 0;
    uint8_t *der = NULL;
    struct cp_httpc_response r;
    json_t *body, *doc = NULL;
    const char *chain, *bundle, *serial;
    int rc = EXIT_FAIL;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **dst;

        if (strcmp(a, "--spiffe-id") == 0)
            dst = &id;
        else if (strcmp(a, "--ttl") == 0)
            dst = &ttl;
        else if (strcmp(a, "--out") == 0)
            dst = &out;
        else
            return usage_error("admin-cert create: unexpected argument %s", a);
        if (i + 1 >= argc)
            return usage_error("%s needs a value", a);
        *dst = argv[++i];
    }
    if (id == NULL || out == NULL || out[0] == '\0')
        return usage_error("admin-cert create: %s is required",
                           id == NULL ? "--spiffe-id" : "--out");
    if (strlen(out) > 4000)
        return usage_error("admin-cert create: --out: too long");
    if (tt_identity_keygen(&key_pem, &key_len) != 0) {
        fprintf(stderr, "tetherctl: cannot generate a key\n");
        return EXIT_FAIL;
    }
    if (tt_identity_csr(key_pem, key_len, id, &der, &der_len) != 0) {
        fprintf(stderr, "tetherctl: --spiffe-id %s: not a valid SPIFFE ID\n", id);
        goto out;
    }
    if ((b64 = tt_crypto_base64_encode(der, der_len)) == NULL)
        goto out;
    body = json_pack("{s:s,s:s}", "csr", b64, "spiffe_id", id);
    if (body == NULL)
        goto out;
    if (ttl)
        json_object_set_new(body, "ttl", json_string(ttl));
    if (!call(c, "POST", "/v1/admin-certs", body, NULL, 0, &r))
        goto out;
    doc = parse_response(&r);
    cp_httpc_response_done(&r);
    chain = json_string_value(json_object_get(doc, "cert_chain_pem"));
    bundle = json_string_value(json_object_get(doc, "bundle_pem"));
    serial = json_string_value(json_object_get(doc, "serial"));
    if (chain == NULL || bundle == NULL || serial == NULL) {
        fprintf(stderr, "tetherctl: the answer holds no certificate\n");
        goto out;
    }
    snprintf(path, sizeof(path), "%s.key", out);
    if (write_file(path, key_pem, key_len, 0600) != 0)
        goto out;
    snprintf(path, sizeof(path), "%s.crt", out);
    if (write_file(path, chain, strlen(chain), 0644) != 0)
        goto out;
    snprintf(path, sizeof(path), "%s.ca.crt", out);
    if (write_file(path, bundle, strlen(bundle), 0644) != 0)
        goto out;
    printf("%s.crt %s.key %s.ca.crt: %s (serial %s)\n", out, out, out, id, serial);
    rc = 0;
out:
    json_decref(doc);
    free(b64);
    free(der);
    if (key_pem != NULL) {
        tt_crypto_wipe(key_pem, key_len);
        free(key_pem);
    }
    return rc;
}

/* Checks that a command got exactly `want` arguments. */
static bool nargs(int argc, int want, const char *cmd, int *rc)
{
    if (argc == want)
        return true;
    if (argc < want)
        *rc = usage_error("%s: missing argument", cmd);
    else
        *rc = usage_error("%s: too many arguments", cmd);
    return false;
}

/* Injects one document (cp_inject_object) into *out; a skipped workload is noted on
 * stderr, a refusal printed. Returns 0 or EXIT_FAIL. */
static int inject_one(const json_t *doc, const struct cp_inject_opts *o, json_t **out)
{
    char why[700];
    enum cp_inject_verdict v = cp_inject_object(doc, o, out, why, sizeof(why));
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    static const char *const quiet[] = {"Pod",       "Deployment", "StatefulSet",
                                        "DaemonSet", "ReplicaSet", "Job",
                                        "CronJob",   "List",       NULL};
    bool workload = false;

    if (v == CP_INJECT_REFUSED) {
        fprintf(stderr, "tetherctl: inject: %s (nothing was written)\n", why);
        return EXIT_FAIL;
    }
    for (size_t i = 0; kind && quiet[i]; i++)
        workload |= strcmp(kind, quiet[i]) == 0;
    if (v == CP_INJECT_SKIPPED && workload)
        fprintf(stderr, "tetherctl: inject: %s\n", why);
    return 0;
}

/* tetherctl inject: reads a manifest, injects every workload in it, writes it out in
 * the format it came in. Nothing is written when any document is refused. */
static int cmd_inject(const struct ctl *c, int argc, char **argv)
{
    struct cp_inject_opts o = {0};
    const char *file = NULL, *bundle_file = NULL;
    char *text = NULL, *bundle = NULL, *outtext = NULL, err[600];
    json_t *docs = NULL, *outdocs = NULL, *doc;
    size_t len, i;
    bool json_in, json_list = false;
    int rc = EXIT_FAIL;

    for (int j = 0; j < argc; j++) {
        const char *a = argv[j];
        static const struct {
            const char *flag;
            size_t off;
        } flags[] = {{"--sidecar-image", offsetof(struct cp_inject_opts, image)},
                     {"--control-address", offsetof(struct cp_inject_opts, control_address)},
                     {"--trust-domain", offsetof(struct cp_inject_opts, trust_domain)},
                     {"--jwt-audience", offsetof(struct cp_inject_opts, jwt_audience)}};
        const char **slot = NULL;

        if (strcmp(a, "-f") == 0 || strcmp(a, "--filename") == 0)
            slot = &file;
        else if (strcmp(a, "--bundle") == 0)
            slot = &bundle_file;
        for (size_t k = 0; !slot && k < sizeof(flags) / sizeof(flags[0]); k++)
            if (strcmp(a, flags[k].flag) == 0)
                slot = (const char **)((char *)&o + flags[k].off);
        if (!slot)
            return usage_error("inject: unexpected argument %s", a);
        if (j + 1 >= argc || argv[j + 1][0] == '\0')
            return usage_error("%s needs a value", a);
        *slot = argv[++j];
    }
    if (!file)
        return usage_error("inject: -f FILE (or - for stdin) is required");
    if (bundle_file) {
        bundle = read_input(bundle_file, &len);
        if (!bundle)
            return EXIT_FAIL;
    } else {
        struct cp_httpc_response r;
        if (!call(c, "GET", "/v1/bundle", NULL, NULL, 0, &r)) {
            fprintf(stderr,
                    "tetherctl: inject: the bundle comes from the API (or --bundle FILE)\n");
            return EXIT_FAIL;
        }
        bundle = strndup(r.body, r.body_len);
        cp_httpc_response_done(&r);
        if (!bundle)
            return EXIT_FAIL;
    }
    o.bundle_pem = bundle;
    if (cp_inject_opts_check(&o, err, sizeof(err)) != 0) {
        fprintf(stderr, "tetherctl: inject: %s\n", err);
        goto out;
    }
    text = read_input(file, &len);
    if (!text)
        goto out;
    i = strspn(text, " \t\r\n");
    json_in = text[i] == '{' || text[i] == '[';
    if (json_in) {
        json_error_t jerr;
        doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!doc) {
            fprintf(stderr, "tetherctl: %s:%d:%d: %s\n", file, jerr.line, jerr.column, jerr.text);
            goto out;
        }
        json_list = json_is_array(doc);
        docs = json_list ? doc : json_pack("[o]", doc);
    } else if (cp_yaml_parse(text, len, file, &docs, err, sizeof(err)) != 0) {
        fprintf(stderr, "tetherctl: %s\n", err);
        goto out;
    }
    outdocs = json_array();
    if (!docs || !outdocs)
        goto out;
    json_array_foreach(docs, i, doc)
    {
        json_t *res;
        if (json_is_null(doc) && !json_in)
            continue; /* an empty YAML document */
        if (inject_one(doc, &o, &res) != 0)
            goto out;
        json_array_append_new(outdocs, res);
    }
    if (json_in) {
        /* The shape it came in: one object, or an array of them. */
        outtext = json_dumps(json_list ? outdocs : json_array_get(outdocs, 0),
                             JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    } else if (cp_yaml_emit(outdocs, &outtext, err, sizeof(err)) != 0) {
        fprintf(stderr, "tetherctl: inject: %s\n", err);
        goto out;
    }
    if (!outtext)
        goto out;
    fputs(outtext, stdout);
    if (json_in)
        fputc('\n', stdout);
    rc = fflush(stdout) == 0 ? 0 : EXIT_FAIL;
out:
    free(outtext);
    json_decref(docs);
    json_decref(outdocs);
    free(text);
    free(bundle);
    return rc;
}

/* Reads the operator credential from the state directory for an http:// API (over
 * https:// the certificate is the credential). A credential that cannot be read is not an
 * error yet: GET /v1/bundle needs none, and a 401 prints why none was sent. */
static void load_operator_token(struct ctl *c)
{
    const char *dir = c->state_dir && c->state_dir[0] ? c->state_dir : DEFAULT_STATE_DIR;

    if (cp_httpc_url_is_https(c->api))
        return;
    if (cp_operator_token_read(dir, c->token, c->token_err, sizeof(c->token_err)) == 0)
        c->tls.bearer = c->token;
}

/* tetherctl's entry: reads --api, --json and the TLS flags (or $TETHER_*) anywhere, then runs one
 * command against the API. Returns 0 on success, 1 when the request failed, 2 for a usage error. */
int main(int argc, char **argv)
{
    struct ctl c = {.api = getenv("TETHER_API"),
                    .tls = {.cert_file = getenv("TETHER_CERT"),
                            .key_file = getenv("TETHER_KEY"),
                            .cacert_file = getenv("TETHER_CACERT")}};
    char **rest = calloc((size_t)argc + 1, sizeof(*rest));
    int n = 0, rc = EXIT_USAGE;
    const char *cmd, *sub;

    if (rest == NULL)
        return EXIT_FAIL;
    if (c.api == NULL || c.api[0] == '\0')
        c.api = DEFAULT_API;
    c.state_dir = getenv("TETHER_STATE_DIR");
    /* Global options anywhere before "--"; everything else is the command. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            free(rest);
            return 0;
        } else if (strcmp(a, "--json") == 0) {
            c.json = true;
        } else if (strcmp(a, "--api") == 0) {
            if (i + 1 >= argc) {
                free(rest);
                return usage_error("%s needs a URL", a);
            }
            c.api = argv[++i];
        } else if (strncmp(a, "--api=", 6) == 0) {
            c.api = a + 6;
        } else if (strcmp(a, "--state-dir") == 0) {
            if (i + 1 >= argc) {
                free(rest);
                return usage_error("%s needs a directory", a);
            }
            c.state_dir = argv[++i];
        } else if (strncmp(a, "--state-dir=", 12) == 0) {
            c.state_dir = a + 12;
        } else if (tls_flag(argc, argv, &i, &c.tls, &rc)) {
            if (rc != 0) {
                free(rest);
                return rc;
            }
        } else {
            rest[n++] = argv[i];
        }
    }
    if (n == 0) {
        fputs(usage, stderr);
        free(rest);
        return EXIT_USAGE;
    }
    load_operator_token(&c);
    cmd = rest[0];
    sub = n > 1 ? rest[1] : NULL;
    if (strcmp(cmd, "token") == 0 && sub && strcmp(sub, "create") == 0) {
        rc = cmd_token_create(&c, n - 2, rest + 2);
    } else if (strcmp(cmd, "token") == 0 && sub && strcmp(sub, "list") == 0) {
        if (nargs(n, 2, "token list", &rc))
            rc = list(&c, "/v1/tokens", "tokens", tokens_header, tokens_row);
    } else if (strcmp(cmd, "token") == 0 && sub && strcmp(sub, "delete") == 0) {
        if (nargs(n, 3, "token delete ID", &rc))
            rc = cmd_token_delete(&c, rest[2]);
    } else if (strcmp(cmd, "policy") == 0 && sub && strcmp(sub, "set") == 0) {
        if (nargs(n, 3, "policy set FILE", &rc))
            rc = cmd_policy_set(&c, rest[2]);
    } else if (strcmp(cmd, "policy") == 0 && sub && strcmp(sub, "get") == 0) {
        if (nargs(n, 2, "policy get", &rc))
            rc = cmd_get_raw(&c, "/v1/policy");
    } else if (strcmp(cmd, "bundle") == 0 && sub && strcmp(sub, "get") == 0) {
        if (nargs(n, 2, "bundle get", &rc))
            rc = cmd_get_raw(&c, "/v1/bundle");
    } else if (strcmp(cmd, "crl") == 0 && sub && strcmp(sub, "get") == 0) {
        if (nargs(n, 2, "crl get", &rc))
            rc = cmd_get_raw(&c, "/v1/crl");
    } else if (strcmp(cmd, "revoke") == 0) {
        if (nargs(n, 2, "revoke SERIAL", &rc))
            rc = cmd_revoke(&c, rest[1]);
    } else if (strcmp(cmd, "revocations") == 0) {
        if (nargs(n, 1, "revocations", &rc))
            rc = list(&c, "/v1/revocations", "revocations", revocations_header, revocations_row);
    } else if (strcmp(cmd, "identities") == 0) {
        if (nargs(n, 1, "identities", &rc))
            rc = list(&c, "/v1/identities", "identities", identities_header, identities_row);
    } else if (strcmp(cmd, "service") == 0 && sub && strcmp(sub, "add") == 0) {
        rc = cmd_service_add(&c, n - 2, rest + 2);
    } else if (strcmp(cmd, "service") == 0 && sub && strcmp(sub, "endpoint") == 0) {
        rc = cmd_service_endpoint(&c, n - 2, rest + 2);
    } else if (strcmp(cmd, "service") == 0 && sub && strcmp(sub, "remove") == 0) {
        if (nargs(n, 3, "service remove ADDR:PORT", &rc))
            rc = cmd_service_remove(&c, rest[2]);
    } else if (strcmp(cmd, "service") == 0 && sub && strcmp(sub, "list") == 0) {
        if (nargs(n, 2, "service list", &rc))
            rc = list(&c, "/v1/services", "services", services_header, services_row);
    } else if (strcmp(cmd, "sidecars") == 0) {
        if (nargs(n, 1, "sidecars", &rc))
            rc = list(&c, "/v1/sidecars", "sidecars", sidecars_header, sidecars_row);
    } else if (strcmp(cmd, "admin-cert") == 0 && sub && strcmp(sub, "create") == 0) {
        rc = cmd_admin_cert_create(&c, n - 2, rest + 2);
    } else if (strcmp(cmd, "inject") == 0) {
        rc = cmd_inject(&c, n - 1, rest + 1);
    } else if (strcmp(cmd, "stats") == 0) {
        if (nargs(n, 1, "stats", &rc))
            rc = cmd_get_raw(&c, "/stats");
    } else {
        char what[256];

        snprintf(what, sizeof(what), "%s%s%s", cmd, sub ? " " : "", sub ? sub : "");
        rc = usage_error("unknown command: %s", what);
    }
    free(rest);
    tt_crypto_wipe(c.token, sizeof(c.token));
    return rc;
}
