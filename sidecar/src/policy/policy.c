/* Identity-based allow lists: parse a policy document into an immutable, refcounted
 * snapshot member and evaluate it (pure, no allocation). Per-rule hit counts live in the
 * workers' metrics, keyed by rule name (metrics.h), so they survive a new document that
 * keeps the rule. DESIGN.md "Policy" is the format; policy.h is the contract. */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/errors.h"
#include "policy/policy.h"
#include "policy/policy_json.h"
#include "core/spiffe.h"

#define MAX_DOC_BYTES (1024 * 1024) /* a document larger than this is refused */
#define MAX_RULES     10000
#define MAX_NAME      256 /* bytes in a rule name */
#define MAX_VERSION   128 /* bytes in a "version" string */
#define MAX_METHOD    32  /* bytes in an HTTP method token */

/* A SPIFFE pattern, pre-classified at parse time so that matching is one comparison. */
enum pat_kind {
    PAT_ANY,    /* "*": any identity */
    PAT_EXACT,  /* a full SPIFFE ID */
    PAT_PREFIX, /* "P/" + "*": s[0..len) is "P/" */
};

struct pat {
    enum pat_kind kind;
    size_t len; /* PAT_PREFIX: bytes to compare, the trailing slash included */
    char *s;    /* the pattern as written */
};

/* An HTTP path pattern: exact, or a prefix when written with a trailing '*'. */
struct path_pat {
    bool prefix;
    size_t len; /* bytes to compare: the whole path, or the prefix without its '*' */
    char *s;    /* the pattern as written */
};

struct rule {
    char *name;
    enum tt_policy_action action;
    enum tt_policy_mode mode;
    struct pat *from;
    size_t n_from;
    struct pat *to; /* n_to == 0: the rule applies to every workload */
    size_t n_to;
    uint16_t *ports; /* n_ports == 0: every port */
    size_t n_ports;
    char **methods; /* n_methods == 0: no method condition */
    size_t n_methods;
    struct path_pat *paths; /* n_paths == 0: no path condition */
    size_t n_paths;
};

struct tt_policy {
    int refs; /* atomic */
    bool default_allow;
    char *version;
    struct rule *rules;
    size_t n_rules;
    /* Evaluation orders, computed once: enforce rules (deny rules, then allow rules, each
     * in document order) and audit rules (same order). */
    int *enforce;
    size_t n_enforce;
    int *audit;
    size_t n_audit;
};

/* Where messages go while parsing. */
struct pctx {
    const char *source;
    char *err;
    size_t errlen;
};

__attribute__((format(printf, 2, 3))) static void perr(struct pctx *c, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (c->err == NULL || c->errlen == 0)
        return;
    n = snprintf(c->err, c->errlen, "%s: ", c->source);
    if (n < 0 || (size_t)n >= c->errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Copies a bounded excerpt of untrusted text for a message, replacing anything that is
 * not printable ASCII with '?', so a message stays on one line whatever the document
 * holds. */
static const char *excerpt(const char *s, char *buf, size_t len)
{
    size_t i, max = len - 4;

    for (i = 0; s[i] != '\0' && i < max; i++)
        buf[i] = (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"') ? s[i] : '?';
    if (s[i] != '\0') {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

#define EXCERPT_BUF 72

static void rule_done(struct rule *r)
{
    size_t i;

    free(r->name);
    for (i = 0; i < r->n_from; i++)
        free(r->from[i].s);
    free(r->from);
    for (i = 0; i < r->n_to; i++)
        free(r->to[i].s);
    free(r->to);
    free(r->ports);
    for (i = 0; i < r->n_methods; i++)
        free(r->methods[i]);
    free(r->methods);
    for (i = 0; i < r->n_paths; i++)
        free(r->paths[i].s);
    free(r->paths);
}

static void policy_free(struct tt_policy *p)
{
    size_t i;

    for (i = 0; i < p->n_rules; i++)
        rule_done(&p->rules[i]);
    free(p->rules);
    free(p->enforce);
    free(p->audit);
    free(p->version);
    free(p);
}

/* Parses rules[ri].<key>, an array of SPIFFE patterns. */
static int parse_pats(struct pctx *c, json_t *arr, size_t ri, const char *key, struct pat **out,
                      size_t *n_out)
{
    char ex[EXCERPT_BUF];
    struct pat *pats;
    json_t *v;
    size_t i, n;

    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        perr(c, "rules[%zu].%s: expected a non-empty array of SPIFFE ID patterns", ri, key);
        return TT_E_POLICY;
    }
    n = json_array_size(arr);
    pats = calloc(n, sizeof(*pats));
    if (pats == NULL) {
        perr(c, "out of memory");
        return -ENOMEM;
    }
    /* Store the array first so the caller's cleanup frees what is filled in so far. */
    *out = pats;
    *n_out = 0;
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);
        size_t len;

        if (s == NULL) {
            perr(c, "rules[%zu].%s[%zu]: expected a SPIFFE ID pattern string", ri, key, i);
            return TT_E_POLICY;
        }
        if (tt_spiffe_pattern_check(s) != 0) {
            perr(c,
                 "rules[%zu].%s[%zu]: expected a SPIFFE ID pattern "
                 "(spiffe://<trust-domain>/<path>, with an optional trailing /*, or *), "
                 "got \"%s\"",
                 ri, key, i, excerpt(s, ex, sizeof(ex)));
            return TT_E_POLICY;
        }
        len = strlen(s);
        pats[i].s = strdup(s);
        if (pats[i].s == NULL) {
            perr(c, "out of memory");
            return -ENOMEM;
        }
        *n_out = i + 1;
        if (len == 1) {
            pats[i].kind = PAT_ANY;
        } else if (s[len - 1] == '*') {
            pats[i].kind = PAT_PREFIX;
            pats[i].len = len - 1;
        } else {
            pats[i].kind = PAT_EXACT;
            pats[i].len = len;
        }
    }
    return 0;
}

static int parse_ports(struct pctx *c, json_t *arr, size_t ri, struct rule *r)
{
    json_t *v;
    size_t i;

    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        perr(c, "rules[%zu].ports: expected a non-empty array of integers 1..65535", ri);
        return TT_E_POLICY;
    }
    r->ports = calloc(json_array_size(arr), sizeof(*r->ports));
    if (r->ports == NULL) {
        perr(c, "out of memory");
        return -ENOMEM;
    }
    json_array_foreach(arr, i, v)
    {
        json_int_t port;

        if (!json_is_integer(v) || (port = json_integer_value(v)) < 1 || port > 65535) {
            perr(c, "rules[%zu].ports[%zu]: expected an integer 1..65535", ri, i);
            return TT_E_POLICY;
        }
        r->ports[i] = (uint16_t)port;
        r->n_ports = i + 1;
    }
    return 0;
}

/* An HTTP method is a token (RFC 9110 §9.1, §5.6.2); methods are case-sensitive and the
 * standard ones upper case, so lower-case letters are refused as a likely mistake. */
static bool method_ok(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (!((ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("!#$%&'*+-.^_`|~", ch) != NULL))
            return false;
    }
    return i > 0 && i <= MAX_METHOD;
}

static int parse_methods(struct pctx *c, json_t *arr, size_t ri, struct rule *r)
{
    json_t *v;
    size_t i;

    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        perr(c, "rules[%zu].methods: expected a non-empty array of HTTP methods", ri);
        return TT_E_POLICY;
    }
    r->methods = calloc(json_array_size(arr), sizeof(*r->methods));
    if (r->methods == NULL) {
        perr(c, "out of memory");
        return -ENOMEM;
    }
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);

        if (s == NULL || !method_ok(s)) {
            perr(c, "rules[%zu].methods[%zu]: expected an upper-case HTTP method token", ri, i);
            return TT_E_POLICY;
        }
        r->methods[i] = strdup(s);
        if (r->methods[i] == NULL) {
            perr(c, "out of memory");
            return -ENOMEM;
        }
        r->n_methods = i + 1;
    }
    return 0;
}

/* A path pattern starts with '/', holds no whitespace, control characters, query or
 * fragment, and has '*' only as its last character. */
static bool path_ok(const char *s)
{
    size_t i;

    if (s[0] != '/')
        return false;
    for (i = 0; s[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)s[i];

        if (ch <= 0x20 || ch == 0x7f || ch == '?' || ch == '#')
            return false;
        if (ch == '*' && s[i + 1] != '\0')
            return false;
    }
    return true;
}

static int parse_paths(struct pctx *c, json_t *arr, size_t ri, struct rule *r)
{
    json_t *v;
    size_t i;

    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        perr(c, "rules[%zu].paths: expected a non-empty array of paths", ri);
        return TT_E_POLICY;
    }
    r->paths = calloc(json_array_size(arr), sizeof(*r->paths));
    if (r->paths == NULL) {
        perr(c, "out of memory");
        return -ENOMEM;
    }
    json_array_foreach(arr, i, v)
    {
        const char *s = json_string_value(v);
        size_t len;

        if (s == NULL || !path_ok(s)) {
            perr(c,
                 "rules[%zu].paths[%zu]: expected a path starting with \"/\" "
                 "(a trailing \"*\" matches a prefix)",
                 ri, i);
            return TT_E_POLICY;
        }
        len = strlen(s);
        r->paths[i].s = strdup(s);
        if (r->paths[i].s == NULL) {
            perr(c, "out of memory");
            return -ENOMEM;
        }
        r->n_paths = i + 1;
        r->paths[i].prefix = s[len - 1] == '*';
        r->paths[i].len = r->paths[i].prefix ? len - 1 : len;
    }
    return 0;
}

static bool name_ok(const char *s)
{
    size_t i;

    for (i = 0; s[i] != '\0'; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    }
    return i > 0 && i <= MAX_NAME;
}

/* Parses rules[ri] into r (zeroed by the caller; on error r holds what was filled in,
 * for rule_done). `names` maps the names seen so far to their index. */
static int parse_rule(struct pctx *c, json_t *obj, size_t ri, struct rule *r, json_t *names)
{
    char ex[EXCERPT_BUF];
    const char *key, *s;
    json_t *v, *seen;
    int rc;

    if (!json_is_object(obj)) {
        perr(c, "rules[%zu]: expected an object", ri);
        return TT_E_POLICY;
    }
    /* Unknown keys first: a misspelled "form" should be named as such, not reported as a
     * missing "from". */
    json_object_foreach(obj, key, v)
    {
        if (strcmp(key, "name") != 0 && strcmp(key, "action") != 0 && strcmp(key, "from") != 0 &&
            strcmp(key, "to") != 0 && strcmp(key, "ports") != 0 && strcmp(key, "methods") != 0 &&
            strcmp(key, "paths") != 0 && strcmp(key, "mode") != 0) {
            perr(c,
                 "rules[%zu].%s: unknown key (expected name, action, from, to, ports, "
                 "methods, paths, mode)",
                 ri, excerpt(key, ex, sizeof(ex)));
            return TT_E_POLICY;
        }
    }

    v = json_object_get(obj, "name");
    if (v == NULL) {
        perr(c, "rules[%zu].name: missing (expected a non-empty string)", ri);
        return TT_E_POLICY;
    }
    s = json_string_value(v);
    if (s == NULL || !name_ok(s)) {
        perr(c,
             "rules[%zu].name: expected a non-empty string of at most %d bytes without "
             "control characters",
             ri, MAX_NAME);
        return TT_E_POLICY;
    }
    seen = json_object_get(names, s);
    if (seen != NULL) {
        perr(c,
             "rules[%zu].name: duplicate rule name \"%s\" (also rules[%" JSON_INTEGER_FORMAT "])",
             ri, excerpt(s, ex, sizeof(ex)), json_integer_value(seen));
        return TT_E_POLICY;
    }
    if (json_object_set_new(names, s, json_integer((json_int_t)ri)) != 0) {
        perr(c, "out of memory");
        return -ENOMEM;
    }
    r->name = strdup(s);
    if (r->name == NULL) {
        perr(c, "out of memory");
        return -ENOMEM;
    }

    v = json_object_get(obj, "action");
    s = json_string_value(v);
    if (v == NULL) {
        perr(c, "rules[%zu].action: missing (expected \"allow\" or \"deny\")", ri);
        return TT_E_POLICY;
    } else if (s != NULL && strcmp(s, "allow") == 0) {
        r->action = TT_POLICY_ALLOW;
    } else if (s != NULL && strcmp(s, "deny") == 0) {
        r->action = TT_POLICY_DENY;
    } else {
        perr(c, "rules[%zu].action: expected \"allow\" or \"deny\"", ri);
        return TT_E_POLICY;
    }

    v = json_object_get(obj, "mode");
    s = json_string_value(v);
    if (v == NULL || (s != NULL && strcmp(s, "enforce") == 0)) {
        r->mode = TT_POLICY_ENFORCE;
    } else if (s != NULL && strcmp(s, "audit") == 0) {
        r->mode = TT_POLICY_AUDIT;
    } else {
        perr(c, "rules[%zu].mode: expected \"enforce\" or \"audit\"", ri);
        return TT_E_POLICY;
    }

    v = json_object_get(obj, "from");
    if (v == NULL) {
        perr(c, "rules[%zu].from: missing (expected a non-empty array of SPIFFE ID patterns)", ri);
        return TT_E_POLICY;
    }
    rc = parse_pats(c, v, ri, "from", &r->from, &r->n_from);
    if (rc != 0)
        return rc;

    v = json_object_get(obj, "to");
    if (v != NULL && (rc = parse_pats(c, v, ri, "to", &r->to, &r->n_to)) != 0)
        return rc;
    v = json_object_get(obj, "ports");
    if (v != NULL && (rc = parse_ports(c, v, ri, r)) != 0)
        return rc;
    v = json_object_get(obj, "methods");
    if (v != NULL && (rc = parse_methods(c, v, ri, r)) != 0)
        return rc;
    v = json_object_get(obj, "paths");
    if (v != NULL && (rc = parse_paths(c, v, ri, r)) != 0)
        return rc;
    return 0;
}

/* Fills p->enforce and p->audit: deny rules before allow rules, document order within. */
static int build_orders(struct tt_policy *p)
{
    size_t i;
    int pass;

    p->enforce = calloc(p->n_rules ? p->n_rules : 1, sizeof(*p->enforce));
    p->audit = calloc(p->n_rules ? p->n_rules : 1, sizeof(*p->audit));
    if (p->enforce == NULL || p->audit == NULL)
        return -ENOMEM;
    for (pass = 0; pass < 2; pass++) {
        enum tt_policy_action want = pass == 0 ? TT_POLICY_DENY : TT_POLICY_ALLOW;

        for (i = 0; i < p->n_rules; i++) {
            if (p->rules[i].action != want)
                continue;
            if (p->rules[i].mode == TT_POLICY_ENFORCE)
                p->enforce[p->n_enforce++] = (int)i;
            else
                p->audit[p->n_audit++] = (int)i;
        }
    }
    return 0;
}

/* A version for documents that carry none: 64-bit FNV-1a of the text, in hex. Not a
 * security digest; it only has to change when the document does. */
static char *text_digest(const char *text, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    char buf[17];
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= (unsigned char)text[i];
        h *= 0x100000001b3ULL;
    }
    snprintf(buf, sizeof(buf), "%016" PRIx64, h);
    return strdup(buf);
}

static int parse_doc(struct pctx *c, json_t *doc, const char *text, size_t len, struct tt_policy *p)
{
    char ex[EXCERPT_BUF];
    json_t *v, *rules, *names;
    const char *key, *s;
    size_t i;
    int rc;

    if (!json_is_object(doc)) {
        perr(c, "expected a JSON object with \"rules\"");
        return TT_E_POLICY;
    }
    json_object_foreach(doc, key, v)
    {
        if (strcmp(key, "default") != 0 && strcmp(key, "rules") != 0 &&
            strcmp(key, "version") != 0) {
            perr(c, "%s: unknown key (expected default, rules, version)",
                 excerpt(key, ex, sizeof(ex)));
            return TT_E_POLICY;
        }
    }

    v = json_object_get(doc, "default");
    s = json_string_value(v);
    if (v == NULL || (s != NULL && strcmp(s, "deny") == 0)) {
        p->default_allow = false;
    } else if (s != NULL && strcmp(s, "allow") == 0) {
        p->default_allow = true;
    } else {
        perr(c, "default: expected \"allow\" or \"deny\"");
        return TT_E_POLICY;
    }

    v = json_object_get(doc, "version");
    if (v != NULL) {
        s = json_string_value(v);
        if (s == NULL || !name_ok(s) || strlen(s) > MAX_VERSION) {
            perr(c, "version: expected a non-empty string of at most %d bytes", MAX_VERSION);
            return TT_E_POLICY;
        }
        p->version = strdup(s);
    } else {
        p->version = text_digest(text, len);
    }
    if (p->version == NULL) {
        perr(c, "out of memory");
        return -ENOMEM;
    }

    rules = json_object_get(doc, "rules");
    if (rules == NULL) {
        perr(c, "rules: missing (expected an array of rules)");
        return TT_E_POLICY;
    }
    if (!json_is_array(rules)) {
        perr(c, "rules: expected an array of rules");
        return TT_E_POLICY;
    }
    if (json_array_size(rules) > MAX_RULES) {
        perr(c, "rules: expected at most %d rules", MAX_RULES);
        return TT_E_POLICY;
    }
    p->rules = calloc(json_array_size(rules) ? json_array_size(rules) : 1, sizeof(*p->rules));
    names = json_object();
    if (p->rules == NULL || names == NULL) {
        json_decref(names);
        perr(c, "out of memory");
        return -ENOMEM;
    }
    rc = 0;
    json_array_foreach(rules, i, v)
    {
        /* Count the rule before parsing it so that policy_free releases a partial one. */
        p->n_rules = i + 1;
        rc = parse_rule(c, v, i, &p->rules[i], names);
        if (rc != 0)
            break;
    }
    json_decref(names);
    if (rc != 0)
        return rc;
    if (build_orders(p) != 0) {
        perr(c, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

/*
 * Parses a policy document; see policy.h. Documents over 1 MiB are refused here as well
 * as in tt_policy_load_file, so that the control plane's and the file's limits agree.
 */
struct tt_policy *tt_policy_parse(const char *text, size_t len, const char *source, char *err,
                                  size_t errlen)
{
    struct pctx c = {source ? source : "policy", err, errlen};
    struct tt_policy *p;
    json_error_t jerr;
    json_t *doc;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    if (text == NULL) {
        perr(&c, "no document");
        return NULL;
    }
    if (len > MAX_DOC_BYTES) {
        perr(&c, "document larger than %d bytes", MAX_DOC_BYTES);
        return NULL;
    }
    doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL) {
        perr(&c, "line %d, column %d: invalid JSON: %s", jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        perr(&c, "out of memory");
        goto err_decref_doc;
    }
    p->refs = 1;
    if (parse_doc(&c, doc, text, len, p) != 0)
        goto err_free_policy;
    json_decref(doc);
    return p;

err_free_policy:
    policy_free(p);
err_decref_doc:
    json_decref(doc);
    return NULL;
}

/*
 * Reads at most 1 MiB from `path` and parses it; messages start with the path.
 */
struct tt_policy *tt_policy_load_file(const char *path, char *err, size_t errlen)
{
    struct pctx c = {path, err, errlen};
    struct tt_policy *p = NULL;
    size_t len = 0;
    char *text;
    ssize_t n;
    int fd;

    if (err != NULL && errlen > 0)
        err[0] = '\0';
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perr(&c, "cannot open: %s", strerror(errno));
        return NULL;
    }
    /* One byte more than the limit tells "exactly 1 MiB" from "larger". */
    text = malloc(MAX_DOC_BYTES + 1);
    if (text == NULL) {
        perr(&c, "out of memory");
        goto err_close;
    }
    for (;;) {
        n = read(fd, text + len, MAX_DOC_BYTES + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perr(&c, "cannot read: %s", strerror(errno));
            goto err_free_text;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > MAX_DOC_BYTES) {
            perr(&c, "document larger than %d bytes", MAX_DOC_BYTES);
            goto err_free_text;
        }
    }
    p = tt_policy_parse(text, len, path, err, errlen);

err_free_text:
    free(text);
err_close:
    close(fd);
    return p;
}

/*
 * Takes one more reference; returns p.
 */
struct tt_policy *tt_policy_ref(struct tt_policy *p)
{
    if (p != NULL)
        __atomic_fetch_add(&p->refs, 1, __ATOMIC_RELAXED);
    return p;
}

/*
 * Drops one reference; the last one frees the policy. Accepts NULL.
 */
void tt_policy_unref(struct tt_policy *p)
{
    if (p == NULL)
        return;
    if (__atomic_sub_fetch(&p->refs, 1, __ATOMIC_ACQ_REL) == 0)
        policy_free(p);
}

static bool pat_match(const struct pat *pt, const char *id)
{
    switch (pt->kind) {
    case PAT_ANY:
        return true;
    case PAT_PREFIX:
        return strncmp(id, pt->s, pt->len) == 0 && id[pt->len] != '\0';
    case PAT_EXACT:
        break;
    }
    return strcmp(id, pt->s) == 0;
}

/* True when `id` matches one of the patterns. A NULL id matches none. */
static bool pats_match(const struct pat *pats, size_t n, const char *id)
{
    size_t i;

    if (id == NULL)
        return false;
    for (i = 0; i < n; i++) {
        if (pat_match(&pats[i], id))
            return true;
    }
    return false;
}

/* The request path is compared without its query or fragment. It is compared as
 * given: normalizing dot segments and percent-encoding is the HTTP layer's job. */
static bool paths_match(const struct path_pat *pp, size_t n, const char *path)
{
    size_t i, plen;

    plen = strcspn(path, "?#");
    for (i = 0; i < n; i++) {
        if (pp[i].prefix ? plen >= pp[i].len && memcmp(path, pp[i].s, pp[i].len) == 0
                         : plen == pp[i].len && memcmp(path, pp[i].s, plen) == 0)
            return true;
    }
    return false;
}

/* True when rule r applies to destination `port` (a rule without "ports" covers all). */
static bool rule_covers(const struct rule *r, uint16_t port)
{
    for (size_t i = 0; i < r->n_ports; i++) {
        if (r->ports[i] == port)
            return true;
    }
    return r->n_ports == 0;
}

/* The connection part of a rule's conditions: "from" and "ports". */
static bool rule_matches_conn(const struct rule *r, const char *caller, uint16_t port)
{
    return pats_match(r->from, r->n_from, caller) && rule_covers(r, port);
}

static bool rule_has_http(const struct rule *r)
{
    return r->n_methods > 0 || r->n_paths > 0;
}

static bool rule_matches(const struct rule *r, const char *caller, uint16_t port,
                         const char *method, const char *path)
{
    size_t i;

    if (!rule_matches_conn(r, caller, port))
        return false;
    if (r->n_methods > 0) {
        if (method == NULL)
            return false;
        for (i = 0; i < r->n_methods && strcmp(r->methods[i], method) != 0; i++)
            ;
        if (i == r->n_methods)
            return false;
    }
    if (r->n_paths > 0 && (path == NULL || !paths_match(r->paths, r->n_paths, path)))
        return false;
    return true;
}

static bool rule_applies(const struct rule *r, const char *self)
{
    return r->n_to == 0 || pats_match(r->to, r->n_to, self);
}

/* The first of ports[0..n) that rule r covers, or 0 when none. */
static uint16_t rule_covers_any(const struct rule *r, const uint16_t *ports, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (rule_covers(r, ports[i]))
            return ports[i];
    }
    return 0;
}

/* Refuses deny rules this sidecar could not enforce on its opaque ports (see policy.h). */
int tt_policy_check_opaque_enforceable(const struct tt_policy *p, const char *self,
                                       const uint16_t *opaque_ports, size_t n_opaque, char *err,
                                       size_t errlen)
{
    for (size_t i = 0; i < p->n_rules; i++) {
        const struct rule *r = &p->rules[i];
        uint16_t port;

        if (r->action != TT_POLICY_DENY || r->mode != TT_POLICY_ENFORCE || !rule_has_http(r) ||
            !rule_applies(r, self) || (port = rule_covers_any(r, opaque_ports, n_opaque)) == 0)
            continue;
        snprintf(err, errlen,
                 "rule \"%.128s\" denies by HTTP %s on port %u, which is declared opaque "
                 "(--opaque-ports): its bytes are relayed unread, so the rule could not be "
                 "enforced; refusing the policy rather than letting those requests through",
                 r->name, r->n_methods > 0 ? "method" : "path", (unsigned)port);
        return TT_E_POLICY;
    }
    return 0;
}

/*
 * Evaluates the policy; see policy.h. Every matching audit rule is reported, whether or
 * not an enforce rule decided, so that an audit rule's counts show everything it would
 * match when enforced (its shadow traffic), not only what the enforce rules left over.
 * A NULL caller matches no rule (not even "*"); a NULL self only rules without "to".
 */
void tt_policy_check(const struct tt_policy *p, const char *caller, const char *self, uint16_t port,
                     const char *method, const char *path, struct tt_policy_verdict *out)
{
    const struct rule *r;
    size_t i;

    memset(out, 0, sizeof(*out));
    out->allowed = p->default_allow;
    out->rule = TT_POLICY_RULE_DEFAULT;
    out->rule_name = "default";

    for (i = 0; i < p->n_enforce; i++) {
        r = &p->rules[p->enforce[i]];
        if (rule_applies(r, self) && rule_matches(r, caller, port, method, path)) {
            out->allowed = r->action == TT_POLICY_ALLOW;
            out->rule = p->enforce[i];
            out->rule_name = r->name;
            break;
        }
    }
    for (i = 0; i < p->n_audit; i++) {
        r = &p->rules[p->audit[i]];
        if (!rule_applies(r, self) || !rule_matches(r, caller, port, method, path))
            continue;
        /* Deny audit rules come first, so the flag and the list agree unless more than
         * TT_POLICY_MAX_AUDIT deny rules matched. */
        if (r->action == TT_POLICY_DENY)
            out->audit_would_deny = true;
        if (out->n_audit < TT_POLICY_MAX_AUDIT)
            out->audit[out->n_audit++] = p->audit[i];
    }
}

/*
 * The per-request verdict (see policy.h): the same evaluation as a connection's, with the
 * request's method and path, so that the precedence cannot drift between the two.
 */
void tt_policy_check_request(const struct tt_policy *p, const char *caller, const char *self,
                             uint16_t port, const char *method, const char *path,
                             struct tt_policy_verdict *out)
{
    assert(method != NULL && path != NULL);
    tt_policy_check(p, caller, self, port, method, path, out);
}

/*
 * Which rules with "methods" or "paths" apply to this caller and port (see policy.h):
 * the rule's "to", "from" and "ports" are matched as for a verdict, its HTTP conditions
 * are not looked at.
 */
unsigned tt_policy_http_rules(const struct tt_policy *p, const char *caller, const char *self,
                              uint16_t port)
{
    unsigned flags = 0;

    for (size_t i = 0; i < p->n_rules; i++) {
        const struct rule *r = &p->rules[i];

        if (!rule_has_http(r) || !rule_applies(r, self) || !rule_matches_conn(r, caller, port))
            continue;
        flags |= r->mode == TT_POLICY_ENFORCE ? TT_POLICY_HTTP_F_ENFORCE : TT_POLICY_HTTP_F_AUDIT;
    }
    return flags;
}

/*
 * The document's "version", or the digest of its text. Valid while p lives.
 */
const char *tt_policy_version(const struct tt_policy *p)
{
    return p->version;
}

/*
 * True when the document's default is "allow".
 */
bool tt_policy_default_allows(const struct tt_policy *p)
{
    return p->default_allow;
}

/*
 * Number of rules in the document.
 */
size_t tt_policy_rule_count(const struct tt_policy *p)
{
    return p->n_rules;
}

/*
 * Fills out with rule i (i < tt_policy_rule_count(p)). out->name is valid while p lives.
 */
void tt_policy_rule_info(const struct tt_policy *p, size_t i, struct tt_policy_rule_info *out)
{
    const struct rule *r;

    assert(i < p->n_rules);
    r = &p->rules[i];
    out->name = r->name;
    out->action = r->action;
    out->mode = r->mode;
}

/* Appends a new array of the given strings to obj under key; returns 0 or -1. */
static int set_strings(json_t *obj, const char *key, char *const *strs, size_t stride, size_t n)
{
    json_t *arr = json_array();
    size_t i;

    if (arr == NULL)
        return -1;
    for (i = 0; i < n; i++) {
        const char *s = *(char *const *)((const char *)strs + i * stride);

        if (json_array_append_new(arr, json_string(s)) != 0) {
            json_decref(arr);
            return -1;
        }
    }
    return json_object_set_new(obj, key, arr);
}

static json_t *rule_to_json(const struct rule *r)
{
    json_t *o = json_object(), *ports;
    int rc = 0;
    size_t i;

    if (o == NULL)
        return NULL;
    rc |= json_object_set_new(o, "name", json_string(r->name));
    rc |= json_object_set_new(o, "action",
                              json_string(r->action == TT_POLICY_ALLOW ? "allow" : "deny"));
    rc |= json_object_set_new(o, "mode",
                              json_string(r->mode == TT_POLICY_ENFORCE ? "enforce" : "audit"));
    rc |= set_strings(o, "from", &r->from[0].s, sizeof(r->from[0]), r->n_from);
    if (r->n_to > 0)
        rc |= set_strings(o, "to", &r->to[0].s, sizeof(r->to[0]), r->n_to);
    if (r->n_ports > 0) {
        ports = json_array();
        rc |= json_object_set_new(o, "ports", ports);
        for (i = 0; ports != NULL && i < r->n_ports; i++)
            rc |= json_array_append_new(ports, json_integer(r->ports[i]));
    }
    if (r->n_methods > 0)
        rc |= set_strings(o, "methods", r->methods, sizeof(r->methods[0]), r->n_methods);
    if (r->n_paths > 0)
        rc |= set_strings(o, "paths", &r->paths[0].s, sizeof(r->paths[0]), r->n_paths);
    if (rc != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/*
 * Returns the normalized document: "version", "default" and every rule's "mode" written
 * out; optional conditions ("to", "ports", "methods", "paths") only when the rule has
 * them, since their absence means "any". Parsing the result gives an equivalent policy.
 */
json_t *tt_policy_to_json(const struct tt_policy *p)
{
    json_t *doc = json_object(), *rules = json_array();
    int rc = 0;
    size_t i;

    if (doc == NULL || rules == NULL) {
        json_decref(doc);
        json_decref(rules);
        return NULL;
    }
    rc |= json_object_set_new(doc, "version", json_string(p->version));
    rc |= json_object_set_new(doc, "default", json_string(p->default_allow ? "allow" : "deny"));
    rc |= json_object_set_new(doc, "rules", rules);
    for (i = 0; rc == 0 && i < p->n_rules; i++)
        rc |= json_array_append_new(rules, rule_to_json(&p->rules[i]));
    if (rc != 0) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}
