/* YAML streams <-> jansson values over libyaml's event API (yaml.h says what is read and
 * written). The reader builds values on a stack of open collections; the writer walks
 * the values and emits events. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <yaml.h>

#include "yaml.h"

#define TAG_STR   "tag:yaml.org,2002:str"
#define TAG_INT   "tag:yaml.org,2002:int"
#define TAG_FLOAT "tag:yaml.org,2002:float"
#define TAG_BOOL  "tag:yaml.org,2002:bool"
#define TAG_NULL  "tag:yaml.org,2002:null"
#define TAG_MAP   "tag:yaml.org,2002:map"
#define TAG_SEQ   "tag:yaml.org,2002:seq"

/* ---- reading ---- */

/* One open mapping or sequence. */
struct frame {
    json_t *node;     /* the object or array being filled */
    char *anchor;     /* its anchor, or NULL */
    size_t nodes0;    /* the stream's node count when it opened */
    int height;       /* the height of its tallest finished child, plus one */
    char *key;        /* a mapping's key waiting for its value, or NULL */
    bool merge;       /* the waiting key is `<<` */
    json_t *merges;   /* mappings named by `<<`, applied when the mapping ends */
    yaml_mark_t mark; /* where it opened */
};

/* An anchored value: what an alias copies, and what the copy costs. */
struct anchor {
    json_t *value;
    size_t nodes;
    int height;
};

struct reader {
    const char *name;
    char *err;
    size_t errlen;
    struct frame *stack;
    size_t depth, cap;
    size_t nodes;           /* values made in this stream, alias copies included */
    json_t *anchor_index;   /* anchor name -> index into anchors (the latest definition) */
    struct anchor *anchors; /* every definition in the stream */
    size_t n_anchors, cap_anchors;
    json_t *doc; /* the current document's root once finished */
    bool have_doc;
};

static int fail(struct reader *r, int code, const yaml_mark_t *m, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Writes "name:line:col: message" into r->err and returns code. */
static int fail(struct reader *r, int code, const yaml_mark_t *m, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (m)
        snprintf(r->err, r->errlen, "%s:%zu:%zu: %s", r->name, (size_t)m->line + 1,
                 (size_t)m->column + 1, msg);
    else
        snprintf(r->err, r->errlen, "%s: %s", r->name, msg);
    return code;
}

static bool is_digits(const char *s, size_t n, int base)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = base == 16
                      ? ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))
                  : base == 8 ? (c >= '0' && c <= '7')
                              : (c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static bool word_in(const char *s, const char *const *words)
{
    for (size_t i = 0; words[i]; i++)
        if (strcmp(s, words[i]) == 0)
            return true;
    return false;
}

static const char *const null_words[] = {"", "~", "null", "Null", "NULL", NULL};
static const char *const true_words[] = {"true", "True", "TRUE", NULL};
static const char *const false_words[] = {"false", "False", "FALSE", NULL};

enum kind { K_STR, K_NULL, K_BOOL, K_INT, K_FLOAT, K_OUT_OF_RANGE, K_NOT_FINITE };

/* Classifies a plain scalar s (NUL-terminated) by the core schema; an integer's value goes
 * to *iv, a float's to *dv, a boolean's to *bv. Pure. */
static enum kind classify(const char *s, json_int_t *iv, double *dv, bool *bv)
{
    const char *p = s;
    bool neg = false;
    int base = 10;

    if (word_in(s, null_words))
        return K_NULL;
    if (word_in(s, true_words) || word_in(s, false_words)) {
        *bv = word_in(s, true_words);
        return K_BOOL;
    }
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'o') && s[2]) {
        base = s[1] == 'x' ? 16 : 8;
        p = s + 2;
    } else {
        if (*p == '+' || *p == '-')
            neg = *p++ == '-';
        /* YAML 1.1's leading-zero octal (0644), as Kubernetes' own reader has it. */
        if (p[0] == '0' && p[1] && is_digits(p, strlen(p), 8))
            base = 8;
    }
    if (is_digits(p, strlen(p), base)) {
        unsigned long long u;
        errno = 0;
        u = strtoull(p, NULL, base);
        if (errno == ERANGE || u > (neg ? (unsigned long long)LLONG_MAX + 1 : LLONG_MAX))
            return K_OUT_OF_RANGE;
        *iv = neg ? (u == 0 ? 0 : -(json_int_t)(u - 1) - 1) : (json_int_t)u;
        return K_INT;
    }
    /* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
    {
        size_t i = (s[0] == '+' || s[0] == '-') ? 1 : 0, intd = 0, fracd = 0;
        while (s[i] >= '0' && s[i] <= '9')
            i++, intd++;
        if (s[i] == '.') {
            i++;
            while (s[i] >= '0' && s[i] <= '9')
                i++, fracd++;
        }
        bool ok = intd + fracd > 0;
        if (ok && (s[i] == 'e' || s[i] == 'E')) {
            size_t e = 0;
            i++;
            if (s[i] == '+' || s[i] == '-')
                i++;
            while (s[i] >= '0' && s[i] <= '9')
                i++, e++;
            ok = e > 0;
        }
        if (ok && s[i] == '\0') {
            *dv = strtod(s, NULL);
            return isfinite(*dv) ? K_FLOAT : K_OUT_OF_RANGE;
        }
    }
    {
        const char *t = (s[0] == '+' || s[0] == '-') ? s + 1 : s;
        static const char *const inf_nan[] = {".inf", ".Inf", ".INF", ".nan", ".NaN", ".NAN", NULL};
        if (word_in(t, inf_nan) && (t == s || t[1] == 'i' || t[1] == 'I'))
            return K_NOT_FINITE;
    }
    return K_STR;
}

/* Turns a scalar event into a value, or NULL with err set. */
static json_t *scalar_value(struct reader *r, const yaml_event_t *ev, int *code)
{
    const char *s = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    json_int_t iv = 0;
    double dv = 0;
    bool bv = false;
    enum kind k;
    json_t *v;

    *code = -EINVAL;
    if (tag && strcmp(tag, "!") == 0)
        plain = false, tag = NULL;
    if (tag && strcmp(tag, TAG_STR) != 0 && strcmp(tag, TAG_INT) != 0 &&
        strcmp(tag, TAG_FLOAT) != 0 && strcmp(tag, TAG_BOOL) != 0 && strcmp(tag, TAG_NULL) != 0) {
        fail(r, -EINVAL, &ev->start_mark, "unsupported tag %s on a scalar", tag);
        return NULL;
    }
    if (tag && strcmp(tag, TAG_STR) == 0)
        plain = false, tag = NULL;
    if (!plain && !tag) {
        v = json_stringn(s, n);
        if (!v)
            fail(r, -EINVAL, &ev->start_mark, "a string that is not UTF-8 or holds NUL");
        return v;
    }
    if (strlen(s) != n) {
        fail(r, -EINVAL, &ev->start_mark, "a scalar holds a NUL character");
        return NULL;
    }
    k = classify(s, &iv, &dv, &bv);
    if (k == K_OUT_OF_RANGE) {
        fail(r, -EINVAL, &ev->start_mark, "number out of range: %.40s", s);
        return NULL;
    }
    if (k == K_NOT_FINITE) {
        fail(r, -EINVAL, &ev->start_mark, "%s cannot be represented in JSON", s);
        return NULL;
    }
    if (tag) {
        bool match = (strcmp(tag, TAG_INT) == 0 && k == K_INT) ||
                     (strcmp(tag, TAG_FLOAT) == 0 && (k == K_FLOAT || k == K_INT)) ||
                     (strcmp(tag, TAG_BOOL) == 0 && k == K_BOOL) ||
                     (strcmp(tag, TAG_NULL) == 0 && k == K_NULL);
        if (!match) {
            fail(r, -EINVAL, &ev->start_mark, "\"%.40s\" is not a valid %s", s,
                 strrchr(tag, ':') + 1);
            return NULL;
        }
        if (strcmp(tag, TAG_FLOAT) == 0 && k == K_INT)
            dv = (double)iv, k = K_FLOAT;
    }
    switch (k) {
    case K_NULL:
        v = json_null();
        break;
    case K_BOOL:
        v = json_boolean(bv);
        break;
    case K_INT:
        v = json_integer(iv);
        break;
    case K_FLOAT:
        v = json_real(dv);
        break;
    default:
        v = json_stringn(s, n);
        if (!v)
            fail(r, -EINVAL, &ev->start_mark, "a string that is not UTF-8");
        return v;
    }
    if (!v) {
        *code = -ENOMEM;
        fail(r, -ENOMEM, &ev->start_mark, "out of memory");
    }
    return v;
}

/* Counts one new value (or a copy of `nodes` values) against the stream's bound. */
static int count_nodes(struct reader *r, size_t nodes, const yaml_mark_t *m)
{
    if (nodes > CP_YAML_MAX_NODES - r->nodes)
        return fail(r, -E2BIG, m, "the stream holds more than %u values (aliases expanded)",
                    CP_YAML_MAX_NODES);
    r->nodes += nodes;
    return 0;
}

/* Records value under anchor (a finished value of `nodes` values and `height`). */
static int add_anchor(struct reader *r, const char *anchor, json_t *value, size_t nodes, int height,
                      const yaml_mark_t *m)
{
    json_t *idx;

    if (r->n_anchors == r->cap_anchors) {
        size_t cap = r->cap_anchors ? r->cap_anchors * 2 : 16;
        struct anchor *a = realloc(r->anchors, cap * sizeof(*a));
        if (!a)
            return fail(r, -ENOMEM, m, "out of memory");
        r->anchors = a;
        r->cap_anchors = cap;
    }
    idx = json_integer((json_int_t)r->n_anchors);
    if (!idx || json_object_set_new(r->anchor_index, anchor, idx) != 0)
        return fail(r, -ENOMEM, m, "out of memory");
    r->anchors[r->n_anchors++] = (struct anchor){json_incref(value), nodes, height};
    return 0;
}

/* Applies a mapping's `<<` merges: keys it does not hold itself are taken from each
 * merged mapping, the earlier merged mapping winning. */
static int apply_merges(struct reader *r, struct frame *f)
{
    size_t i;
    json_t *m;

    json_array_foreach(f->merges, i, m)
    {
        const char *k;
        json_t *v;
        json_object_foreach(m, k, v)
        {
            if (!json_object_get(f->node, k) &&
                json_object_set_new(f->node, k, json_deep_copy(v)) != 0)
                return fail(r, -ENOMEM, &f->mark, "out of memory");
        }
    }
    return 0;
}

/* Places a finished value v (taking the reference) of the given height where the open
 * collection on top of the stack wants it, or as the document's root. */
static int place(struct reader *r, json_t *v, int height, const yaml_mark_t *m)
{
    struct frame *f;
    int rc = 0;

    if (r->depth == 0) {
        r->doc = v;
        r->have_doc = true;
        return 0;
    }
    f = &r->stack[r->depth - 1];
    if (f->height < height + 1)
        f->height = height + 1;
    if (json_is_array(f->node)) {
        if (json_array_append_new(f->node, v) != 0)
            return fail(r, -ENOMEM, m, "out of memory");
        return 0;
    }
    if (!f->key) {
        /* A key: only scalars (strings after resolution) may be keys of a JSON object. */
        const char *k = json_is_string(v) ? json_string_value(v) : NULL;
        char num[64];
        if (!k && json_is_integer(v)) {
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            k = num;
        }
        if (!k) {
            json_decref(v);
            return fail(r, -EINVAL, m,
                        "mapping keys must be strings or integers (JSON objects have string "
                        "keys)");
        }
        f->key = strdup(k);
        json_decref(v);
        if (!f->key)
            return fail(r, -ENOMEM, m, "out of memory");
        return 0;
    }
    if (f->merge) {
        if (json_is_object(v)) {
            rc = json_array_append(f->merges, v);
        } else if (json_is_array(v)) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e)
            {
                if (!json_is_object(e)) {
                    rc = fail(r, -EINVAL, m, "a << merge key takes mappings only");
                    goto out;
                }
                rc = json_array_append(f->merges, e);
            }
        } else {
            rc = fail(r, -EINVAL, m, "a << merge key takes a mapping or a list of mappings");
            goto out;
        }
        if (rc != 0)
            rc = fail(r, -ENOMEM, m, "out of memory");
    out:
        json_decref(v);
    } else if (json_object_get(f->node, f->key)) {
        rc = fail(r, -EINVAL, m, "duplicate mapping key \"%.60s\"", f->key);
        json_decref(v);
    } else if (json_object_set_new(f->node, f->key, v) != 0) {
        rc = fail(r, -ENOMEM, m, "out of memory");
    }
    free(f->key);
    f->key = NULL;
    f->merge = false;
    return rc;
}

/* Opens a mapping or sequence for a start event. */
static int open_collection(struct reader *r, const yaml_event_t *ev, bool map)
{
    const char *tag =
        (const char *)(map ? ev->data.mapping_start.tag : ev->data.sequence_start.tag);
    const char *anchor =
        (const char *)(map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor);
    struct frame *f;
    int rc;

    if (tag && strcmp(tag, "!") != 0 && strcmp(tag, map ? TAG_MAP : TAG_SEQ) != 0)
        return fail(r, -EINVAL, &ev->start_mark, "unsupported tag %s on a %s", tag,
                    map ? "mapping" : "sequence");
    if (r->depth >= CP_YAML_MAX_DEPTH)
        return fail(r, -E2BIG, &ev->start_mark, "nested deeper than %d levels", CP_YAML_MAX_DEPTH);
    if (r->depth > 0) {
        struct frame *top = &r->stack[r->depth - 1];
        if (json_is_object(top->node) && !top->key)
            return fail(r, -EINVAL, &ev->start_mark,
                        "mapping keys must be strings or integers (JSON objects have string "
                        "keys)");
    }
    if ((rc = count_nodes(r, 1, &ev->start_mark)) != 0)
        return rc;
    if (r->depth == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        struct frame *s = realloc(r->stack, cap * sizeof(*s));
        if (!s)
            return fail(r, -ENOMEM, &ev->start_mark, "out of memory");
        r->stack = s;
        r->cap = cap;
    }
    f = &r->stack[r->depth];
    *f = (struct frame){.nodes0 = r->nodes - 1, .mark = ev->start_mark};
    f->node = map ? json_object() : json_array();
    f->merges = map ? json_array() : NULL;
    f->anchor = anchor ? strdup(anchor) : NULL;
    if (!f->node || (map && !f->merges) || (anchor && !f->anchor)) {
        json_decref(f->node);
        json_decref(f->merges);
        free(f->anchor);
        return fail(r, -ENOMEM, &ev->start_mark, "out of memory");
    }
    r->depth++;
    return 0;
}

static void frame_done(struct frame *f)
{
    json_decref(f->node);
    json_decref(f->merges);
    free(f->anchor);
    free(f->key);
}

/* Closes the collection on top of the stack for an end event and places it. */
static int close_collection(struct reader *r, const yaml_event_t *ev)
{
    struct frame f = r->stack[--r->depth];
    int rc = 0;

    if (f.merges && (rc = apply_merges(r, &f)) != 0)
        goto out;
    if (f.anchor &&
        (rc = add_anchor(r, f.anchor, f.node, r->nodes - f.nodes0, f.height, &ev->start_mark)) != 0)
        goto out;
    rc = place(r, json_incref(f.node), f.height, &ev->start_mark);
out:
    frame_done(&f);
    return rc;
}

/* Places a copy of the value an alias names. */
static int alias(struct reader *r, const yaml_event_t *ev)
{
    const char *name = (const char *)ev->data.alias.anchor;
    json_t *idx = json_object_get(r->anchor_index, name);
    struct anchor *a;
    json_t *copy;
    int rc;

    if (!idx)
        return fail(r, -EINVAL, &ev->start_mark, "alias *%.60s names no anchor before it", name);
    a = &r->anchors[json_integer_value(idx)];
    if ((rc = count_nodes(r, a->nodes, &ev->start_mark)) != 0)
        return rc;
    if (r->depth + (size_t)a->height > CP_YAML_MAX_DEPTH)
        return fail(r, -E2BIG, &ev->start_mark, "alias *%.60s nests deeper than %d levels", name,
                    CP_YAML_MAX_DEPTH);
    copy = json_deep_copy(a->value);
    if (!copy)
        return fail(r, -ENOMEM, &ev->start_mark, "out of memory");
    return place(r, copy, a->height, &ev->start_mark);
}

/* Handles a scalar event: a `<<` key, a key, or a value. */
static int scalar(struct reader *r, const yaml_event_t *ev)
{
    json_t *v;
    int rc, code;

    if (r->depth > 0) {
        struct frame *f = &r->stack[r->depth - 1];
        if (json_is_object(f->node) && !f->key && !ev->data.scalar.tag &&
            ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
            strcmp((const char *)ev->data.scalar.value, "<<") == 0) {
            f->key = strdup("<<");
            f->merge = true;
            return f->key ? 0 : fail(r, -ENOMEM, &ev->start_mark, "out of memory");
        }
    }
    if ((rc = count_nodes(r, 1, &ev->start_mark)) != 0)
        return rc;
    if (!(v = scalar_value(r, ev, &code)))
        return code;
    if (ev->data.scalar.anchor &&
        (rc = add_anchor(r, (const char *)ev->data.scalar.anchor, v, 1, 0, &ev->start_mark)) != 0) {
        json_decref(v);
        return rc;
    }
    return place(r, v, 0, &ev->start_mark);
}

static void reader_done(struct reader *r)
{
    while (r->depth > 0)
        frame_done(&r->stack[--r->depth]);
    free(r->stack);
    for (size_t i = 0; i < r->n_anchors; i++)
        json_decref(r->anchors[i].value);
    free(r->anchors);
    json_decref(r->anchor_index);
    json_decref(r->doc);
}

/* See yaml.h. */
int cp_yaml_parse(const char *text, size_t len, const char *name, json_t **docs_out, char *err,
                  size_t errlen)
{
    struct reader r = {.name = name ? name : "<input>", .err = err, .errlen = errlen};
    yaml_parser_t parser;
    json_t *docs = json_array();
    int rc = 0;
    bool done = false;

    *docs_out = NULL;
    if (errlen)
        err[0] = '\0';
    r.anchor_index = json_object();
    if (!docs || !r.anchor_index || !yaml_parser_initialize(&parser)) {
        json_decref(docs);
        json_decref(r.anchor_index);
        snprintf(err, errlen, "%s: out of memory", r.name);
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    while (!done && rc == 0) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            if (parser.error == YAML_MEMORY_ERROR)
                rc = fail(&r, -ENOMEM, NULL, "out of memory");
            else if (parser.context)
                rc = fail(&r, -EINVAL, &parser.problem_mark, "%s %s", parser.problem,
                          parser.context);
            else
                rc = fail(&r, -EINVAL, &parser.problem_mark, "%s",
                          parser.problem ? parser.problem : "malformed YAML");
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            /* Anchors are scoped to their document (YAML 1.2 §6.8.1 and §7.1). */
            json_object_clear(r.anchor_index);
            break;
        case YAML_DOCUMENT_END_EVENT:
            if (json_array_append_new(docs, r.have_doc ? r.doc : json_null()) != 0)
                rc = fail(&r, -ENOMEM, NULL, "out of memory");
            r.doc = NULL;
            r.have_doc = false;
            break;
        case YAML_SCALAR_EVENT:
            rc = scalar(&r, &ev);
            break;
        case YAML_ALIAS_EVENT:
            rc = alias(&r, &ev);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            rc = open_collection(&r, &ev, ev.type == YAML_MAPPING_START_EVENT);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            rc = close_collection(&r, &ev);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);
    reader_done(&r);
    if (rc != 0) {
        json_decref(docs);
        return rc;
    }
    *docs_out = docs;
    return 0;
}

/* ---- writing ---- */

struct outbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

/* libyaml's output handler: appends to the buffer. Returns 1, or 0 on allocation
 * failure. */
static int on_write(void *data, unsigned char *buf, size_t size)
{
    struct outbuf *o = data;

    if (o->len + size + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 1024;
        while (cap < o->len + size + 1)
            cap *= 2;
        char *p = realloc(o->p, cap);
        if (!p) {
            o->oom = true;
            return 0;
        }
        o->p = p;
        o->cap = cap;
    }
    memcpy(o->p + o->len, buf, size);
    o->len += size;
    o->p[o->len] = '\0';
    return 1;
}

/* True when the plain scalar s would not read back as the string s: under this reader's
 * core schema, or under YAML 1.1 (booleans y/n/yes/no/on/off, numbers with `_` or `:`,
 * `0b`), so every reader Kubernetes users meet reads it back as a string. */
static bool needs_quotes(const char *s, size_t n)
{
    static const char *const yaml11[] = {"y", "n", "yes", "no", "on", "off", "=", "<<", NULL};
    char lower[8];
    json_int_t iv;
    double dv;
    bool bv;
    size_t i;

    if (n == 0 || strlen(s) != n)
        return true;
    if (classify(s, &iv, &dv, &bv) != K_STR)
        return true;
    if (n < sizeof(lower)) {
        for (i = 0; i <= n; i++)
            lower[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] - 'A' + 'a' : s[i]);
        if (word_in(lower, yaml11) || strstr(lower, ".inf") || strstr(lower, ".nan"))
            return true;
    }
    /* Anything number-like in YAML 1.1 (1_000, 1:30, 0b101, .5, 1e3, 0x_1). */
    if (strchr("0123456789+-.", s[0])) {
        for (i = 0; i < n; i++)
            if (!strchr("0123456789abcdefABCDEFxXoObB_:.+-", s[i]))
                break;
        if (i == n)
            return true;
    }
    return false;
}

static int emit_event(yaml_emitter_t *e, yaml_event_t *ev, char *err, size_t errlen)
{
    if (!yaml_emitter_emit(e, ev)) {
        snprintf(err, errlen, "writing YAML: %s", e->problem ? e->problem : "out of memory");
        return e->error == YAML_MEMORY_ERROR || e->error == YAML_WRITER_ERROR ? -ENOMEM : -EINVAL;
    }
    return 0;
}

/* Emits one string scalar, quoted when it would read back as another type. */
static int emit_string(yaml_emitter_t *e, const char *s, size_t n, char *err, size_t errlen)
{
    yaml_event_t ev;
    yaml_scalar_style_t style = YAML_ANY_SCALAR_STYLE;
    bool quote = needs_quotes(s, n);

    if (quote)
        style = YAML_DOUBLE_QUOTED_SCALAR_STYLE;
    else if (memchr(s, '\n', n))
        style = YAML_LITERAL_SCALAR_STYLE; /* libyaml falls back to quotes if not allowed */
    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)n, !quote, 1,
                                      style)) {
        snprintf(err, errlen, "writing YAML: out of memory");
        return -ENOMEM;
    }
    return emit_event(e, &ev, err, errlen);
}

/* Writes a real so that it reads back as the same double and as a float (never an
 * integer): the shortest of %.15g..%.17g that round-trips, with ".0" when it has
 * neither a point nor an exponent. */
static void format_real(double d, char *buf, size_t len)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (!strpbrk(buf, ".eE"))
        strncat(buf, ".0", len - strlen(buf) - 1);
}

static int emit_value(yaml_emitter_t *e, json_t *v, char *err, size_t errlen);

static int emit_plain(yaml_emitter_t *e, const char *s, char *err, size_t errlen)
{
    yaml_event_t ev;

    if (!yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1, 0,
                                      YAML_PLAIN_SCALAR_STYLE)) {
        snprintf(err, errlen, "writing YAML: out of memory");
        return -ENOMEM;
    }
    return emit_event(e, &ev, err, errlen);
}

static int emit_value(yaml_emitter_t *e, json_t *v, char *err, size_t errlen)
{
    yaml_event_t ev;
    char num[64];
    int rc;

    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        json_t *m;
        yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
        if ((rc = emit_event(e, &ev, err, errlen)) != 0)
            return rc;
        json_object_foreach(v, k, m)
        {
            if ((rc = emit_string(e, k, strlen(k), err, errlen)) != 0 ||
                (rc = emit_value(e, m, err, errlen)) != 0)
                return rc;
        }
        yaml_mapping_end_event_initialize(&ev);
        return emit_event(e, &ev, err, errlen);
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *m;
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
        if ((rc = emit_event(e, &ev, err, errlen)) != 0)
            return rc;
        json_array_foreach(v, i, m)
        {
            if ((rc = emit_value(e, m, err, errlen)) != 0)
                return rc;
        }
        yaml_sequence_end_event_initialize(&ev);
        return emit_event(e, &ev, err, errlen);
    }
    case JSON_STRING:
        return emit_string(e, json_string_value(v), json_string_length(v), err, errlen);
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return emit_plain(e, num, err, errlen);
    case JSON_REAL:
        if (!isfinite(json_real_value(v))) {
            snprintf(err, errlen, "writing YAML: a number that is not finite");
            return -EINVAL;
        }
        format_real(json_real_value(v), num, sizeof(num));
        return emit_plain(e, num, err, errlen);
    case JSON_TRUE:
        return emit_plain(e, "true", err, errlen);
    case JSON_FALSE:
        return emit_plain(e, "false", err, errlen);
    case JSON_NULL:
    default:
        return emit_plain(e, "null", err, errlen);
    }
}

/* See yaml.h. */
int cp_yaml_emit(json_t *docs, char **out, char *err, size_t errlen)
{
    struct outbuf o = {0};
    yaml_emitter_t e;
    yaml_event_t ev;
    size_t i;
    json_t *doc;
    int rc = 0;

    *out = NULL;
    if (!json_is_array(docs)) {
        snprintf(err, errlen, "writing YAML: expected an array of documents");
        return -EINVAL;
    }
    if (!yaml_emitter_initialize(&e)) {
        snprintf(err, errlen, "writing YAML: out of memory");
        return -ENOMEM;
    }
    yaml_emitter_set_output(&e, on_write, &o);
    yaml_emitter_set_unicode(&e, 1);
    yaml_emitter_set_width(&e, -1);
    yaml_emitter_set_indent(&e, 2);
    yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING);
    if ((rc = emit_event(&e, &ev, err, errlen)) != 0)
        goto out;
    json_array_foreach(docs, i, doc)
    {
        yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, i == 0);
        if ((rc = emit_event(&e, &ev, err, errlen)) != 0 ||
            (rc = emit_value(&e, doc, err, errlen)) != 0)
            goto out;
        yaml_document_end_event_initialize(&ev, 1);
        if ((rc = emit_event(&e, &ev, err, errlen)) != 0)
            goto out;
    }
    yaml_stream_end_event_initialize(&ev);
    if ((rc = emit_event(&e, &ev, err, errlen)) != 0)
        goto out;
    if (!yaml_emitter_flush(&e) || o.oom) {
        snprintf(err, errlen, "writing YAML: out of memory");
        rc = -ENOMEM;
        goto out;
    }
    if (!o.p && on_write(&o, (unsigned char *)"", 0) == 0) {
        snprintf(err, errlen, "writing YAML: out of memory");
        rc = -ENOMEM;
        goto out;
    }
    *out = o.p;
    o.p = NULL;
out:
    yaml_emitter_delete(&e);
    free(o.p);
    return rc;
}
