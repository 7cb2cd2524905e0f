/* The control plane's state directory and in-memory model (see store.h). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/base64.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "ca.h"
#include "errors.h"
#include "identity.h"
#include "policy.h"
#include "spiffe.h"
#include "store.h"
#include "util.h"

#define STORE_FILE_MAX (256 * 1024 * 1024)
#define ISSUED_KEEP_S  86400 /* keep records this long after their not_after */

struct token {
    char hash[2 * SHA256_DIGEST_LENGTH + 1];
    char *spiffe_id;
    int64_t uses_left;
    int64_t expires; /* 0: never */
    int64_t created;
};

struct revoked {
    char serial[TT_SERIAL_MAX];
    int64_t at;
};

struct service {
    char *address;
    char *spiffe_id;
    char *source;
};

struct issued {
    char serial[TT_SERIAL_MAX];
    char *spiffe_id;
    int64_t not_after;
    int64_t issued_at;
};

struct sidecar {
    char *id;
    char *spiffe_id;
    char *peer;
    char *node;
    uint64_t acked;
    uint64_t nacked;
    char *nack_reason;
    int64_t last_seen;
};

struct refusal {
    char *reason;
    uint64_t n;
};

#define VEC(T)                                                                                     \
    struct {                                                                                       \
        T *v;                                                                                      \
        size_t n, cap;                                                                             \
    }

struct cp_store {
    pthread_mutex_t mu;
    char *dir;
    uint64_t version;
    char bundle_sha[2 * SHA256_DIGEST_LENGTH + 1];
    char *bundle_pem;
    char *policy; /* document text, or NULL */
    VEC(struct token) tokens;
    VEC(struct revoked) revoked;
    VEC(struct service) services;
    VEC(struct issued) issued;
    VEC(struct sidecar) sidecars;
    VEC(struct refusal) refusals;
    cp_store_change_cb cb;
    void *cb_ud;
};

/* Makes room for one more element. Returns 0 or -ENOMEM. */
static int vec_grow(void **v, size_t *cap, size_t n, size_t size)
{
    size_t ncap;
    void *p;

    if (n < *cap)
        return 0;
    ncap = *cap ? *cap * 2 : 8;
    p = realloc(*v, ncap * size);
    if (p == NULL)
        return -ENOMEM;
    *v = p;
    *cap = ncap;
    return 0;
}

#define VEC_GROW(vec) vec_grow((void **)&(vec).v, &(vec).cap, (vec).n, sizeof(*(vec).v))

static void sha256_hex(const void *data, size_t len, char out[2 * SHA256_DIGEST_LENGTH + 1])
{
    uint8_t md[SHA256_DIGEST_LENGTH];

    SHA256(data, len, md);
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* ---- shared helpers ---- */

/* Atomic replace of a file; see store.h. */
int cp_atomic_write(const char *path, const void *data, size_t len, int mode)
{
    char tmp[4096], dir[4096];
    const char *slash;
    size_t off = 0;
    int fd, dfd, rc = 0;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
        return -ENAMETOOLONG;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    /* The umask may have narrowed a wider mode; a narrower one must hold exactly. */
    if (fchmod(fd, (mode_t)mode) != 0)
        goto err_errno;
    while (off < len) {
        ssize_t n = write(fd, (const char *)data + off, len - off);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            goto err_errno;
        }
        off += (size_t)n;
    }
    if (fsync(fd) != 0)
        goto err_errno;
    if (close(fd) != 0) {
        fd = -1;
        goto err_errno;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto err_errno;
    slash = strrchr(path, '/');
    if (slash == NULL) {
        snprintf(dir, sizeof(dir), ".");
    } else if (slash == path) {
        snprintf(dir, sizeof(dir), "/");
    } else {
        snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
    }
    dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -errno;
    if (fsync(dfd) != 0)
        rc = -errno;
    close(dfd);
    return rc;

err_errno:
    rc = -errno;
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

/* Returns the reason's static name ("ok", "unknown_token", "expired_token", "token_used_up",
 * "identity_mismatch"), "unknown" for a value outside the enum. */
const char *cp_token_err_name(enum cp_token_err e)
{
    switch (e) {
    case CP_TOKEN_OK:
        return "ok";
    case CP_TOKEN_UNKNOWN:
        return "unknown_token";
    case CP_TOKEN_EXPIRED:
        return "expired_token";
    case CP_TOKEN_USED_UP:
        return "token_used_up";
    case CP_TOKEN_MISMATCH:
        return "identity_mismatch";
    }
    return "unknown";
}

/* ---- persistence ---- */

static void path_of(const struct cp_store *s, const char *name, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", s->dir, name);
}

/* Writes doc (consumed) as DIR/name. */
static int write_json(struct cp_store *s, const char *name, json_t *doc)
{
    char path[4096];
    char *text;
    int rc;

    if (doc == NULL)
        return -ENOMEM;
    text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(doc);
    if (text == NULL)
        return -ENOMEM;
    path_of(s, name, path, sizeof(path));
    {
        size_t len = strlen(text);
        char *t2 = realloc(text, len + 2);

        if (t2 == NULL) {
            free(text);
            return -ENOMEM;
        }
        text = t2;
        text[len] = '\n';
        text[len + 1] = '\0';
    }
    rc = cp_atomic_write(path, text, strlen(text), 0600);
    free(text);
    return rc;
}

static json_t *jint_or_null(int64_t v)
{
    return v ? json_integer(v) : json_null();
}

static int save_tokens(struct cp_store *s)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < s->tokens.n; i++) {
        struct token *t = &s->tokens.v[i];

        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:I,s:o,s:I}", "sha256", t->hash, "spiffe_id", t->spiffe_id,
                           "uses_left", (json_int_t)t->uses_left, "expires_unix",
                           jint_or_null(t->expires), "created_unix", (json_int_t)t->created));
    }
    return write_json(s, "tokens.json", arr ? json_pack("{s:o}", "tokens", arr) : NULL);
}

static int save_revocations(struct cp_store *s)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < s->revoked.n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:I}", "serial", s->revoked.v[i].serial,
                                             "revoked_unix", (json_int_t)s->revoked.v[i].at));
    return write_json(s, "revocations.json", arr ? json_pack("{s:o}", "revoked", arr) : NULL);
}

static int save_services(struct cp_store *s)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < s->services.n; i++) {
        struct service *e = &s->services.v[i];

        json_array_append_new(arr, json_pack("{s:s,s:s,s:s}", "address", e->address, "spiffe_id",
                                             e->spiffe_id, "source", e->source));
    }
    return write_json(s, "services.json", arr ? json_pack("{s:o}", "services", arr) : NULL);
}

static int save_issued(struct cp_store *s)
{
    json_t *arr = json_array();

    for (size_t i = 0; arr && i < s->issued.n; i++) {
        struct issued *e = &s->issued.v[i];

        json_array_append_new(arr, json_pack("{s:s,s:s,s:I,s:I}", "serial", e->serial, "spiffe_id",
                                             e->spiffe_id, "not_after", (json_int_t)e->not_after,
                                             "issued_at", (json_int_t)e->issued_at));
    }
    return write_json(s, "issued.json", arr ? json_pack("{s:o}", "issued", arr) : NULL);
}

static int save_state(struct cp_store *s)
{
    return write_json(
        s, "state.json",
        json_pack("{s:I,s:s}", "version", (json_int_t)s->version, "bundle_sha256", s->bundle_sha));
}

static int save_policy(struct cp_store *s)
{
    char path[4096];

    path_of(s, "policy.json", path, sizeof(path));
    return cp_atomic_write(path, s->policy, strlen(s->policy), 0600);
}

/* Bumps the version and persists it. The version goes to disk before the change it
 * counts, so that a crash in between never makes it go backwards. */
static int bump_locked(struct cp_store *s)
{
    int rc;

    s->version++;
    rc = save_state(s);
    if (rc != 0)
        s->version--;
    return rc;
}

static void notify(struct cp_store *s, uint64_t version)
{
    cp_store_change_cb cb;
    void *ud;

    pthread_mutex_lock(&s->mu);
    cb = s->cb;
    ud = s->cb_ud;
    pthread_mutex_unlock(&s->mu);
    if (cb)
        cb(ud, version);
}

/* ---- loading ---- */

struct lctx {
    const char *path;
    const char *arr;
    size_t i;
    char *err;
    size_t errlen;
};

static int bad_field(struct lctx *c, const char *key, const char *what)
{
    tt_errf(c->err, c->errlen, "%s: %s[%zu].%s: expected %s", c->path, c->arr, c->i, key, what);
    return -EINVAL;
}

static int get_str(struct lctx *c, json_t *o, const char *key, const char **out)
{
    json_t *v = json_object_get(o, key);

    if (!json_is_string(v))
        return bad_field(c, key, "a string");
    *out = json_string_value(v);
    return 0;
}

static int get_int(struct lctx *c, json_t *o, const char *key, bool nullable, int64_t *out)
{
    json_t *v = json_object_get(o, key);

    if (nullable && (v == NULL || json_is_null(v))) {
        *out = 0;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return bad_field(c, key,
                         nullable ? "a non-negative integer or null" : "a non-negative integer");
    *out = json_integer_value(v);
    return 0;
}

/* Reads DIR/name. Returns 0 with *doc NULL when the file does not exist. */
static int read_json(struct cp_store *s, const char *name, json_t **doc, char *path, size_t pathlen,
                     char *err, size_t errlen)
{
    json_error_t jerr;
    struct stat st;

    *doc = NULL;
    path_of(s, name, path, pathlen);
    if (stat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        tt_errf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (*doc == NULL) {
        if (jerr.line > 0)
            tt_errf(err, errlen, "%s: line %d: %s", path, jerr.line, jerr.text);
        else
            tt_errf(err, errlen, "%s: %s", path, jerr.text);
        return -EINVAL;
    }
    return 0;
}

/* Opens {"<key>": [objects]} and returns the array, or NULL with err set. */
static json_t *top_array(json_t *doc, const char *key, const char *path, char *err, size_t errlen)
{
    json_t *arr = json_is_object(doc) ? json_object_get(doc, key) : NULL;

    if (!json_is_array(arr)) {
        tt_errf(err, errlen, "%s: %s: expected an array in an object", path, key);
        return NULL;
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        if (!json_is_object(json_array_get(arr, i))) {
            tt_errf(err, errlen, "%s: %s[%zu]: expected an object", path, key, i);
            return NULL;
        }
    }
    return arr;
}

/* Parses one element of a collection file into the store. Returns 0, the error of a
 * field check (err set through c), or -ENOMEM. */
typedef int (*load_item_fn)(struct cp_store *s, struct lctx *c, json_t *o);

/* Loads DIR/file, {"<key>": [objects]}, element by element with fn. A missing file is an
 * empty collection. Returns 0 or <0 with err naming the file and the element. */
static int load_collection(struct cp_store *s, const char *file, const char *key, load_item_fn fn,
                           char *err, size_t errlen)
{
    char path[4096];
    json_t *doc, *arr;
    int rc = read_json(s, file, &doc, path, sizeof(path), err, errlen);
    struct lctx c = {path, key, 0, err, errlen};

    if (rc != 0 || doc == NULL)
        return rc;
    arr = top_array(doc, key, path, err, errlen);
    rc = arr ? 0 : -EINVAL;
    for (size_t i = 0; rc == 0 && i < json_array_size(arr); i++) {
        c.i = i;
        rc = fn(s, &c, json_array_get(arr, i));
        if (rc == -ENOMEM)
            tt_errf(err, errlen, "%s: out of memory", path);
    }
    json_decref(doc);
    return rc;
}

static int load_token(struct cp_store *s, struct lctx *c, json_t *o)
{
    struct token t = {0};
    const char *hash, *id;
    int rc;

    if ((rc = get_str(c, o, "sha256", &hash)) != 0 || (rc = get_str(c, o, "spiffe_id", &id)) != 0 ||
        (rc = get_int(c, o, "uses_left", false, &t.uses_left)) != 0 ||
        (rc = get_int(c, o, "expires_unix", true, &t.expires)) != 0 ||
        (rc = get_int(c, o, "created_unix", false, &t.created)) != 0)
        return rc;
    if (strlen(hash) != 2 * SHA256_DIGEST_LENGTH)
        return bad_field(c, "sha256", "64 hex digits");
    memcpy(t.hash, hash, sizeof(t.hash));
    t.spiffe_id = strdup(id);
    if (t.spiffe_id == NULL || VEC_GROW(s->tokens) != 0) {
        free(t.spiffe_id);
        return -ENOMEM;
    }
    s->tokens.v[s->tokens.n++] = t;
    return 0;
}

static int load_revoked(struct cp_store *s, struct lctx *c, json_t *o)
{
    struct revoked r = {0};
    const char *serial;
    int rc;

    if ((rc = get_str(c, o, "serial", &serial)) != 0 ||
        (rc = get_int(c, o, "revoked_unix", false, &r.at)) != 0)
        return rc;
    if (tt_serial_normalize(serial, r.serial, sizeof(r.serial)) != 0)
        return bad_field(c, "serial", "a hexadecimal serial number");
    if (VEC_GROW(s->revoked) != 0)
        return -ENOMEM;
    s->revoked.v[s->revoked.n++] = r;
    return 0;
}

static int load_service(struct cp_store *s, struct lctx *c, json_t *o)
{
    struct service e = {0};
    const char *addr, *id, *src;
    int rc;

    if ((rc = get_str(c, o, "address", &addr)) != 0 ||
        (rc = get_str(c, o, "spiffe_id", &id)) != 0 || (rc = get_str(c, o, "source", &src)) != 0)
        return rc;
    e.address = strdup(addr);
    e.spiffe_id = strdup(id);
    e.source = strdup(src);
    if (!e.address || !e.spiffe_id || !e.source || VEC_GROW(s->services) != 0) {
        free(e.address);
        free(e.spiffe_id);
        free(e.source);
        return -ENOMEM;
    }
    s->services.v[s->services.n++] = e;
    return 0;
}

static int load_issue(struct cp_store *s, struct lctx *c, json_t *o)
{
    struct issued e = {0};
    const char *serial, *id;
    int rc;

    if ((rc = get_str(c, o, "serial", &serial)) != 0 ||
        (rc = get_str(c, o, "spiffe_id", &id)) != 0 ||
        (rc = get_int(c, o, "not_after", false, &e.not_after)) != 0 ||
        (rc = get_int(c, o, "issued_at", false, &e.issued_at)) != 0)
        return rc;
    if (tt_serial_normalize(serial, e.serial, sizeof(e.serial)) != 0)
        return bad_field(c, "serial", "a hexadecimal serial number");
    e.spiffe_id = strdup(id);
    if (e.spiffe_id == NULL || VEC_GROW(s->issued) != 0) {
        free(e.spiffe_id);
        return -ENOMEM;
    }
    s->issued.v[s->issued.n++] = e;
    return 0;
}

static int load_state(struct cp_store *s, char *err, size_t errlen)
{
    char path[4096];
    json_t *doc, *v, *b;
    int rc = read_json(s, "state.json", &doc, path, sizeof(path), err, errlen);

    if (rc != 0 || doc == NULL)
        return rc;
    v = json_object_get(doc, "version");
    b = json_object_get(doc, "bundle_sha256");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        tt_errf(err, errlen, "%s: version: expected a non-negative integer", path);
        rc = -EINVAL;
    } else if (!json_is_string(b) || strlen(json_string_value(b)) >= sizeof(s->bundle_sha)) {
        tt_errf(err, errlen, "%s: bundle_sha256: expected a string", path);
        rc = -EINVAL;
    } else {
        s->version = (uint64_t)json_integer_value(v);
        snprintf(s->bundle_sha, sizeof(s->bundle_sha), "%s", json_string_value(b));
    }
    json_decref(doc);
    return rc;
}

static int load_policy(struct cp_store *s, char *err, size_t errlen)
{
    char path[4096];
    char *text = NULL;
    size_t len;
    struct tt_policy *p;
    int rc;

    path_of(s, "policy.json", path, sizeof(path));
    rc = tt_file_read(path, STORE_FILE_MAX, &text, &len);
    if (rc == -ENOENT)
        return 0;
    if (rc != 0) {
        tt_errf(err, errlen, "%s: %s", path, strerror(-rc));
        return rc;
    }
    p = tt_policy_parse(text, len, path, err, errlen);
    if (p == NULL) {
        free(text);
        return TT_E_POLICY;
    }
    tt_policy_unref(p);
    s->policy = text;
    return 0;
}

/* Loads the state directory; see store.h. */
struct cp_store *cp_store_open(const char *dir, char *err, size_t errlen)
{
    struct cp_store *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        tt_errf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->dir = strdup(dir);
    s->bundle_pem = strdup("");
    if (s->dir == NULL || s->bundle_pem == NULL) {
        tt_errf(err, errlen, "out of memory");
        goto err_free;
    }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        tt_errf(err, errlen, "%s: %s", dir, strerror(errno));
        goto err_free;
    }
    if (load_state(s, err, errlen) != 0 ||
        load_collection(s, "tokens.json", "tokens", load_token, err, errlen) != 0 ||
        load_collection(s, "revocations.json", "revoked", load_revoked, err, errlen) != 0 ||
        load_collection(s, "services.json", "services", load_service, err, errlen) != 0 ||
        load_collection(s, "issued.json", "issued", load_issue, err, errlen) != 0 ||
        load_policy(s, err, errlen) != 0)
        goto err_free;
    return s;

err_free:
    cp_store_free(s);
    return NULL;
}

static void sidecar_free_fields(struct sidecar *c)
{
    free(c->id);
    free(c->spiffe_id);
    free(c->peer);
    free(c->node);
    free(c->nack_reason);
}

/* Frees the store and everything it holds, writing nothing. Accepts NULL. No other thread may still
 * be using it. */
void cp_store_free(struct cp_store *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->tokens.n; i++)
        free(s->tokens.v[i].spiffe_id);
    for (size_t i = 0; i < s->services.n; i++) {
        free(s->services.v[i].address);
        free(s->services.v[i].spiffe_id);
        free(s->services.v[i].source);
    }
    for (size_t i = 0; i < s->issued.n; i++)
        free(s->issued.v[i].spiffe_id);
    for (size_t i = 0; i < s->sidecars.n; i++)
        sidecar_free_fields(&s->sidecars.v[i]);
    for (size_t i = 0; i < s->refusals.n; i++)
        free(s->refusals.v[i].reason);
    free(s->tokens.v);
    free(s->revoked.v);
    free(s->services.v);
    free(s->issued.v);
    free(s->sidecars.v);
    free(s->refusals.v);
    free(s->policy);
    free(s->bundle_pem);
    free(s->dir);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Returns the state directory the store was opened on, owned by the store. */
const char *cp_store_dir(const struct cp_store *s)
{
    return s->dir;
}

/* Installs cb with ud as the change callback (NULL removes it); later bumps call it with no lock
 * held. Takes the store lock. */
void cp_store_set_change_cb(struct cp_store *s, cp_store_change_cb cb, void *ud)
{
    pthread_mutex_lock(&s->mu);
    s->cb = cb;
    s->cb_ud = ud;
    pthread_mutex_unlock(&s->mu);
}

/* Returns the current snapshot version. Takes the store lock. */
uint64_t cp_store_version(struct cp_store *s)
{
    uint64_t v;

    pthread_mutex_lock(&s->mu);
    v = s->version;
    pthread_mutex_unlock(&s->mu);
    return v;
}

/* ---- bundle ---- */

/* Keeps a copy of pem as the bundle sidecars receive; when its SHA-256 differs from state.json's,
 * bumps and persists the version and calls the change callback after unlocking. Returns 0, -ENOMEM,
 * or -errno when persisting failed (the PEM is kept, digest and version are not). */
int cp_store_bundle_set(struct cp_store *s, const char *pem)
{
    char sha[sizeof(s->bundle_sha)];
    char *copy = strdup(pem);
    uint64_t v = 0;
    int rc = 0;

    if (copy == NULL)
        return -ENOMEM;
    sha256_hex(pem, strlen(pem), sha);
    pthread_mutex_lock(&s->mu);
    free(s->bundle_pem);
    s->bundle_pem = copy;
    if (strcmp(sha, s->bundle_sha) != 0) {
        char old[sizeof(s->bundle_sha)];

        memcpy(old, s->bundle_sha, sizeof(old));
        memcpy(s->bundle_sha, sha, sizeof(sha));
        rc = bump_locked(s);
        if (rc != 0)
            memcpy(s->bundle_sha, old, sizeof(old));
        else
            v = s->version;
    }
    pthread_mutex_unlock(&s->mu);
    if (v)
        notify(s, v);
    return rc;
}

/* ---- tokens ---- */

static void b64url(const uint8_t *in, size_t len, char *out, size_t outlen)
{
    uint8_t tmp[128];
    size_t n;

    n = EVP_EncodeBlock(tmp, in, len);
    while (n > 0 && tmp[n - 1] == '=')
        n--;
    for (size_t i = 0; i < n; i++)
        tmp[i] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : tmp[i];
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, tmp, n);
    out[n] = '\0';
}

/* Draws a random secret (never starting with '-') into secret and persists only its SHA-256 with
 * spiffe_id, expiry and uses in tokens.json. Returns 0 and sets *expires_unix, or TT_E_SPIFFE,
 * -EINVAL, -ENOMEM, -errno with nothing kept (secret cleared if saving failed). */
int cp_store_token_create(struct cp_store *s, const char *spiffe_id, uint64_t ttl_ms, unsigned uses,
                          char *secret, size_t secret_len, int64_t *expires_unix)
{
    uint8_t raw[32];
    struct token t = {0};
    int64_t now = tt_now_unix();
    int rc;

    if (spiffe_id == NULL || tt_spiffe_check(spiffe_id, strlen(spiffe_id), false) != 0)
        return TT_E_SPIFFE;
    if (secret_len < CP_TOKEN_SECRET_MAX || ttl_ms > (uint64_t)INT32_MAX * 1000)
        return -EINVAL;
    /* A token that starts with '-' would read as an option on a command line: draw
     * again (costs a fraction of a bit of the 256). */
    do {
        RAND_bytes(raw, sizeof(raw));
        b64url(raw, sizeof(raw), secret, secret_len);
    } while (secret[0] == '-');
    OPENSSL_cleanse(raw, sizeof(raw));
    sha256_hex(secret, strlen(secret), t.hash);
    t.spiffe_id = strdup(spiffe_id);
    t.uses_left = uses ? uses : 1;
    t.expires = ttl_ms ? now + (int64_t)((ttl_ms + 999) / 1000) : 0;
    t.created = now;
    if (t.spiffe_id == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&s->mu);
    rc = VEC_GROW(s->tokens);
    if (rc == 0) {
        s->tokens.v[s->tokens.n++] = t;
        rc = save_tokens(s);
        if (rc != 0)
            s->tokens.n--;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0) {
        free(t.spiffe_id);
        OPENSSL_cleanse(secret, secret_len);
        secret[0] = '\0';
        return rc;
    }
    if (expires_unix)
        *expires_unix = t.expires;
    return 0;
}

/* Checks the secret (trailing whitespace ignored) against the stored hashes for spiffe_id and uses
 * it once; persisted before returning. Returns 0, TT_E_DENIED with *reason, or -errno when saving
 * failed (use not counted). Takes the store lock, so concurrent consumers serialize. */
int cp_store_token_consume(struct cp_store *s, const char *secret, const char *spiffe_id,
                           enum cp_token_err *reason)
{
    char hash[2 * SHA256_DIGEST_LENGTH + 1];
    size_t len = secret ? strlen(secret) : 0;
    struct token *t = NULL;
    int rc = TT_E_DENIED;

    while (len > 0 && isspace((unsigned char)secret[len - 1]))
        len--;
    *reason = CP_TOKEN_UNKNOWN;
    if (len == 0 || spiffe_id == NULL)
        return TT_E_DENIED;
    sha256_hex(secret, len, hash);
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->tokens.n; i++) {
        if (CRYPTO_memcmp(s->tokens.v[i].hash, hash, sizeof(hash)) == 0) {
            t = &s->tokens.v[i];
            break;
        }
    }
    if (t == NULL) {
        *reason = CP_TOKEN_UNKNOWN;
    } else if (t->expires != 0 && tt_now_unix() >= t->expires) {
        *reason = CP_TOKEN_EXPIRED;
    } else if (t->uses_left <= 0) {
        *reason = CP_TOKEN_USED_UP;
    } else if (strcmp(t->spiffe_id, spiffe_id) != 0) {
        *reason = CP_TOKEN_MISMATCH;
    } else {
        t->uses_left--;
        rc = save_tokens(s);
        if (rc != 0)
            t->uses_left++;
        *reason = rc == 0 ? CP_TOKEN_OK : CP_TOKEN_UNKNOWN;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Returns a new JSON array describing every token (12-digit hash prefix as id, never the secret),
 * NULL when out of memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_tokens_json(struct cp_store *s)
{
    json_t *arr = json_array();
    int64_t now = tt_now_unix();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr && i < s->tokens.n; i++) {
        struct token *t = &s->tokens.v[i];

        json_array_append_new(
            arr, json_pack("{s:s%,s:s,s:I,s:o,s:I,s:b}", "id", t->hash, (size_t)12, "spiffe_id",
                           t->spiffe_id, "uses_left", (json_int_t)t->uses_left, "expires_unix",
                           jint_or_null(t->expires), "created_unix", (json_int_t)t->created,
                           "expired", t->expires != 0 && now >= t->expires));
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}

/* ---- revocations ---- */

static bool revoked_locked(struct cp_store *s, const char *norm)
{
    for (size_t i = 0; i < s->revoked.n; i++)
        if (strcmp(s->revoked.v[i].serial, norm) == 0)
            return true;
    return false;
}

/* Normalizes serial and adds it to revocations.json, bumping the version and calling the change
 * callback after unlocking. Returns 0 when added, 1 when already revoked, -EINVAL for a bad serial,
 * or -errno (nothing added). Takes the store lock. */
int cp_store_revoke(struct cp_store *s, const char *serial)
{
    struct revoked r = {.at = tt_now_unix()};
    uint64_t v = 0;
    int rc;

    if (tt_serial_normalize(serial, r.serial, sizeof(r.serial)) != 0)
        return -EINVAL;
    pthread_mutex_lock(&s->mu);
    if (revoked_locked(s, r.serial)) {
        rc = 1;
    } else if ((rc = VEC_GROW(s->revoked)) == 0 && (rc = bump_locked(s)) == 0) {
        s->revoked.v[s->revoked.n++] = r;
        rc = save_revocations(s);
        if (rc != 0)
            s->revoked.n--;
        else
            v = s->version;
    }
    pthread_mutex_unlock(&s->mu);
    if (v)
        notify(s, v);
    return rc;
}

/* True when the normalized serial is in the revocation list; false for a malformed serial. Takes
 * the store lock. */
bool cp_store_is_revoked(struct cp_store *s, const char *serial)
{
    char norm[TT_SERIAL_MAX];
    bool r;

    if (tt_serial_normalize(serial, norm, sizeof(norm)) != 0)
        return false;
    pthread_mutex_lock(&s->mu);
    r = revoked_locked(s, norm);
    pthread_mutex_unlock(&s->mu);
    return r;
}

/* Returns a new JSON array of {serial, revoked_unix}, NULL when out of memory; the caller decrefs
 * it. Takes the store lock. */
json_t *cp_store_revocations_json(struct cp_store *s)
{
    json_t *arr = json_array();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr && i < s->revoked.n; i++)
        json_array_append_new(arr, json_pack("{s:s,s:I}", "serial", s->revoked.v[i].serial,
                                             "revoked_unix", (json_int_t)s->revoked.v[i].at));
    pthread_mutex_unlock(&s->mu);
    return arr;
}

/* ---- services ---- */

static int check_service(const char *address, const char *spiffe_id, char *err, size_t errlen)
{
    struct tt_addr a;
    int rc;

    if (address == NULL || (rc = tt_addr_parse(address, 0, &a)) != 0) {
        tt_errf(err, errlen, "address %s: %s", address ? address : "(none)",
                address && rc == -ENOENT ? "host does not resolve"
                                         : "expected IP:PORT, [IPv6]:PORT or host:PORT");
        return address ? rc : -EINVAL;
    }
    if (spiffe_id == NULL || tt_spiffe_check(spiffe_id, strlen(spiffe_id), false) != 0) {
        tt_errf(err, errlen, "spiffe_id %s: not a valid SPIFFE ID",
                spiffe_id ? spiffe_id : "(none)");
        return TT_E_SPIFFE;
    }
    return 0;
}

static ssize_t find_service(struct cp_store *s, const char *address, const char *source)
{
    for (size_t i = 0; i < s->services.n; i++)
        if (strcmp(s->services.v[i].address, address) == 0 &&
            strcmp(s->services.v[i].source, source) == 0)
            return (ssize_t)i;
    return -1;
}

static void service_free(struct service *e)
{
    free(e->address);
    free(e->spiffe_id);
    free(e->source);
}

/* Checks address and spiffe_id, then adds or replaces the (address, source) entry and persists
 * services.json; an identical entry is left alone. A change bumps the version and calls the change
 * callback after unlocking. Returns 0 or an error with err set (nothing changed). */
int cp_store_service_add(struct cp_store *s, const char *address, const char *spiffe_id,
                         const char *source, char *err, size_t errlen)
{
    struct service e;
    ssize_t at;
    uint64_t v = 0;
    int rc;

    rc = check_service(address, spiffe_id, err, errlen);
    if (rc != 0)
        return rc;
    e.address = strdup(address);
    e.spiffe_id = strdup(spiffe_id);
    e.source = strdup(source);
    if (!e.address || !e.spiffe_id || !e.source) {
        service_free(&e);
        tt_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    pthread_mutex_lock(&s->mu);
    at = find_service(s, address, source);
    if (at >= 0 && strcmp(s->services.v[at].spiffe_id, spiffe_id) == 0) {
        rc = 0; /* unchanged */
        service_free(&e);
    } else if (at >= 0) {
        if ((rc = bump_locked(s)) == 0) {
            struct service old = s->services.v[at];

            s->services.v[at] = e;
            rc = save_services(s);
            if (rc != 0) {
                s->services.v[at] = old;
                service_free(&e);
            } else {
                service_free(&old);
                v = s->version;
            }
        } else {
            service_free(&e);
        }
    } else if ((rc = VEC_GROW(s->services)) == 0 && (rc = bump_locked(s)) == 0) {
        s->services.v[s->services.n++] = e;
        rc = save_services(s);
        if (rc != 0) {
            s->services.n--;
            service_free(&e);
        } else {
            v = s->version;
        }
    } else {
        service_free(&e);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        tt_errf(err, errlen, "saving services.json: %s", strerror(-rc));
    if (v)
        notify(s, v);
    return rc;
}

/* Removes the (address, source) entry, persists services.json, bumps the version and calls the
 * change callback after unlocking. Returns 0, -ENOENT when there is none, or -errno (entry kept).
 * Takes the store lock. */
int cp_store_service_remove(struct cp_store *s, const char *address, const char *source)
{
    uint64_t v = 0;
    ssize_t at;
    int rc;

    pthread_mutex_lock(&s->mu);
    at = find_service(s, address, source);
    if (at < 0) {
        rc = -ENOENT;
    } else if ((rc = bump_locked(s)) == 0) {
        struct service old = s->services.v[at];

        memmove(&s->services.v[at], &s->services.v[at + 1],
                (s->services.n - (size_t)at - 1) * sizeof(old));
        s->services.n--;
        rc = save_services(s);
        if (rc != 0) {
            memmove(&s->services.v[at + 1], &s->services.v[at],
                    (s->services.n - (size_t)at) * sizeof(old));
            s->services.v[at] = old;
            s->services.n++;
        } else {
            service_free(&old);
            v = s->version;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (v)
        notify(s, v);
    return rc;
}

/* Replaces every entry of source with addresses[0..n) mapped to spiffe_id, all or nothing: -EEXIST
 * when another identity's sidecar holds an address; the same set again is a no-op. A change is
 * persisted, bumps the version and calls the change callback after unlocking. Returns 0 or an error
 * with err set. */
int cp_store_service_register(struct cp_store *s, const char *source, const char *spiffe_id,
                              const char *const *addresses, size_t n, char *err, size_t errlen)
{
    struct service *fresh = NULL;
    struct service *old_v;
    size_t kept = 0, old_n, old_cap, alloc;
    bool same = true;
    uint64_t v = 0;
    int rc = 0;

    for (size_t i = 0; i < n; i++) {
        rc = check_service(addresses[i], spiffe_id, err, errlen);
        if (rc != 0)
            return rc;
    }
    pthread_mutex_lock(&s->mu);
    /* An address another workload's sidecar registered stays its own: a registration is
     * a claim the sidecar's certificate cannot prove for an IP, so a second identity
     * never takes an address over (an operator entry or removal decides). */
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < s->services.n; j++) {
            const struct service *e = &s->services.v[j];
            if (strcmp(e->address, addresses[i]) == 0 && strncmp(e->source, "sidecar:", 8) == 0 &&
                strcmp(e->spiffe_id, spiffe_id) != 0) {
                snprintf(err, errlen, "address %s is registered by %s", addresses[i], e->spiffe_id);
                pthread_mutex_unlock(&s->mu);
                return -EEXIST;
            }
        }
    }
    /* Same set as before: nothing to do (re-registration after a reconnect). */
    for (size_t i = 0; i < s->services.n; i++)
        if (strcmp(s->services.v[i].source, source) == 0)
            kept++;
    if (kept != n)
        same = false;
    for (size_t i = 0; same && i < n; i++) {
        ssize_t at = find_service(s, addresses[i], source);

        same = at >= 0 && strcmp(s->services.v[at].spiffe_id, spiffe_id) == 0;
    }
    if (same)
        goto out;
    alloc = s->services.n + n + 1;
    fresh = calloc(alloc, sizeof(*fresh));
    if (fresh == NULL) {
        rc = -ENOMEM;
        goto out;
    }
    kept = 0;
    for (size_t i = 0; i < s->services.n; i++)
        if (strcmp(s->services.v[i].source, source) != 0)
            fresh[kept++] = s->services.v[i];
    old_n = kept;
    for (size_t i = 0; i < n; i++) {
        struct service *e = &fresh[kept];

        e->address = strdup(addresses[i]);
        e->spiffe_id = strdup(spiffe_id);
        e->source = strdup(source);
        kept++;
        if (!e->address || !e->spiffe_id || !e->source) {
            rc = -ENOMEM;
            break;
        }
    }
    if (rc == 0)
        rc = bump_locked(s);
    if (rc != 0) {
        for (size_t i = old_n; i < kept; i++)
            service_free(&fresh[i]);
        free(fresh);
        goto out;
    }
    old_v = s->services.v;
    old_n = s->services.n;
    old_cap = s->services.cap;
    s->services.v = fresh;
    s->services.n = kept;
    s->services.cap = alloc;
    rc = save_services(s);
    if (rc != 0) {
        for (size_t i = 0; i < kept; i++)
            if (strcmp(fresh[i].source, source) == 0)
                service_free(&fresh[i]);
        free(fresh);
        s->services.v = old_v;
        s->services.n = old_n;
        s->services.cap = old_cap;
    } else {
        for (size_t i = 0; i < old_n; i++)
            if (strcmp(old_v[i].source, source) == 0)
                service_free(&old_v[i]);
        free(old_v);
        v = s->version;
    }
out:
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        tt_errf(err, errlen, "saving services.json: %s", strerror(-rc));
    if (v)
        notify(s, v);
    return rc;
}

/* Returns a new JSON array of {address, spiffe_id, source}, NULL when out of memory; the caller
 * decrefs it. Takes the store lock. */
json_t *cp_store_services_json(struct cp_store *s)
{
    json_t *arr = json_array();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr && i < s->services.n; i++) {
        struct service *e = &s->services.v[i];

        json_array_append_new(arr, json_pack("{s:s,s:s,s:s}", "address", e->address, "spiffe_id",
                                             e->spiffe_id, "source", e->source));
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}

/* ---- policy ---- */

/* Validates text[0..len) with tt_policy_parse() and, when it differs from the stored one, stores a
 * copy, persists policy.json, bumps the version and calls the change callback after unlocking.
 * Returns 0, TT_E_POLICY with the parser's message in err, or -errno (nothing kept). */
int cp_store_policy_set(struct cp_store *s, const char *text, size_t len, char *err, size_t errlen)
{
    struct tt_policy *p = tt_policy_parse(text, len, "policy", err, errlen);
    char *copy, *old;
    uint64_t v = 0;
    int rc;

    if (p == NULL)
        return TT_E_POLICY;
    tt_policy_unref(p);
    copy = malloc(len + 1);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, text, len);
    copy[len] = '\0';
    pthread_mutex_lock(&s->mu);
    old = s->policy;
    if (old != NULL && strcmp(old, copy) == 0) {
        free(copy);
        rc = 0;
    } else if ((rc = bump_locked(s)) == 0) {
        s->policy = copy;
        rc = save_policy(s);
        if (rc != 0) {
            s->policy = old;
            free(copy);
        } else {
            free(old);
            v = s->version;
        }
    } else {
        free(copy);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        tt_errf(err, errlen, "saving policy.json: %s", strerror(-rc));
    if (v)
        notify(s, v);
    return rc;
}

/* Returns a heap copy of the policy document (caller frees), or NULL when none was set or the copy
 * failed. Takes the store lock. */
char *cp_store_policy_get(struct cp_store *s)
{
    char *t;

    pthread_mutex_lock(&s->mu);
    t = s->policy ? strdup(s->policy) : NULL;
    pthread_mutex_unlock(&s->mu);
    return t;
}

/* ---- issued ---- */

/* Records an issued certificate (serial normalized) in issued.json, first pruning records expired
 * for over a day. Returns 0, -EINVAL for a bad serial, -ENOMEM or -errno (nothing recorded). Does
 * not bump the version. Takes the store lock. */
int cp_store_issued_add(struct cp_store *s, const char *serial, const char *spiffe_id,
                        int64_t not_after, int64_t issued_at)
{
    struct issued e = {.not_after = not_after, .issued_at = issued_at};
    int64_t now = tt_now_unix();
    size_t w = 0;
    int rc;

    if (tt_serial_normalize(serial, e.serial, sizeof(e.serial)) != 0)
        return -EINVAL;
    e.spiffe_id = strdup(spiffe_id);
    if (e.spiffe_id == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&s->mu);
    /* Prune records long expired so the file does not grow without bound. */
    for (size_t i = 0; i < s->issued.n; i++) {
        if (s->issued.v[i].not_after + ISSUED_KEEP_S < now)
            free(s->issued.v[i].spiffe_id);
        else
            s->issued.v[w++] = s->issued.v[i];
    }
    s->issued.n = w;
    rc = VEC_GROW(s->issued);
    if (rc == 0) {
        s->issued.v[s->issued.n++] = e;
        rc = save_issued(s);
        if (rc != 0)
            s->issued.n--;
    }
    pthread_mutex_unlock(&s->mu);
    if (rc != 0)
        free(e.spiffe_id);
    return rc;
}

/* Returns a new JSON array of issued certificates, each marked revoked or not, NULL when out of
 * memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_issued_json(struct cp_store *s)
{
    json_t *arr = json_array();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr && i < s->issued.n; i++) {
        struct issued *e = &s->issued.v[i];

        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:I,s:I,s:b}", "serial", e->serial, "spiffe_id", e->spiffe_id,
                           "not_after", (json_int_t)e->not_after, "issued_at",
                           (json_int_t)e->issued_at, "revoked", revoked_locked(s, e->serial)));
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}

/* ---- snapshot ---- */

/* Frees a snapshot and every string it holds. Accepts NULL. */
void cp_snapshot_free(struct cp_snapshot *snap)
{
    if (snap == NULL)
        return;
    free(snap->bundle_pem);
    free(snap->policy_json);
    for (size_t i = 0; i < snap->n_services; i++) {
        free(snap->services[i].address);
        free(snap->services[i].spiffe_id);
    }
    free(snap->services);
    for (size_t i = 0; i < snap->n_revoked; i++)
        free(snap->revoked[i]);
    free(snap->revoked);
    free(snap);
}

static bool snap_has(const struct cp_snapshot *snap, const char *address)
{
    for (size_t i = 0; i < snap->n_services; i++)
        if (strcmp(snap->services[i].address, address) == 0)
            return true;
    return false;
}

static bool snap_add(struct cp_snapshot *snap, const struct service *e)
{
    struct cp_service_entry *d;

    if (snap_has(snap, e->address))
        return true;
    d = &snap->services[snap->n_services];
    d->address = strdup(e->address);
    d->spiffe_id = strdup(e->spiffe_id);
    snap->n_services++;
    return d->address && d->spiffe_id;
}

/* Copies version, bundle, policy, services (operator entries first, one per address) and revoked
 * serials under one lock hold. Returns a snapshot the caller frees with cp_snapshot_free(), or NULL
 * on allocation failure. */
struct cp_snapshot *cp_store_snapshot(struct cp_store *s)
{
    struct cp_snapshot *snap = calloc(1, sizeof(*snap));
    bool ok;

    if (snap == NULL)
        return NULL;
    pthread_mutex_lock(&s->mu);
    snap->version = s->version;
    snap->bundle_pem = strdup(s->bundle_pem);
    snap->policy_json = s->policy ? strdup(s->policy) : NULL;
    snap->services = calloc(s->services.n + 1, sizeof(*snap->services));
    snap->revoked = calloc(s->revoked.n + 1, sizeof(*snap->revoked));
    ok = snap->bundle_pem && (!s->policy || snap->policy_json) && snap->services && snap->revoked;
    /* Operator entries first, so they win over a sidecar's claim on the same address. */
    for (size_t i = 0; ok && i < s->services.n; i++)
        if (strcmp(s->services.v[i].source, CP_SOURCE_OPERATOR) == 0)
            ok = snap_add(snap, &s->services.v[i]);
    for (size_t i = 0; ok && i < s->services.n; i++)
        if (strcmp(s->services.v[i].source, CP_SOURCE_OPERATOR) != 0)
            ok = snap_add(snap, &s->services.v[i]);
    for (size_t i = 0; ok && i < s->revoked.n; i++) {
        snap->revoked[i] = strdup(s->revoked.v[i].serial);
        snap->n_revoked++;
        ok = snap->revoked[i] != NULL;
    }
    pthread_mutex_unlock(&s->mu);
    if (!ok) {
        cp_snapshot_free(snap);
        return NULL;
    }
    return snap;
}

/* ---- sidecars ---- */

static struct sidecar *find_sidecar(struct cp_store *s, const char *id)
{
    for (size_t i = 0; i < s->sidecars.n; i++)
        if (strcmp(s->sidecars.v[i].id, id) == 0)
            return &s->sidecars.v[i];
    return NULL;
}

static void replace_str(char **dst, const char *src)
{
    char *c;

    if (src == NULL || (*dst != NULL && strcmp(*dst, src) == 0))
        return;
    c = strdup(src);
    if (c == NULL)
        return; /* keep the old value: this registry is informational */
    free(*dst);
    *dst = c;
}

/* Creates or refreshes the runtime record of sidecar id (copies of spiffe_id, peer and node; NULL
 * keeps the old value) and stamps it now. Returns 0 or -ENOMEM. Never persisted; takes the store
 * lock. */
int cp_store_sidecar_seen(struct cp_store *s, const char *id, const char *spiffe_id,
                          const char *peer, const char *node)
{
    struct sidecar *c;
    int rc = 0;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c == NULL) {
        if (VEC_GROW(s->sidecars) != 0) {
            rc = -ENOMEM;
            goto out;
        }
        c = &s->sidecars.v[s->sidecars.n];
        memset(c, 0, sizeof(*c));
        c->id = strdup(id);
        if (c->id == NULL) {
            rc = -ENOMEM;
            goto out;
        }
        s->sidecars.n++;
    }
    replace_str(&c->spiffe_id, spiffe_id);
    replace_str(&c->peer, peer);
    replace_str(&c->node, node);
    c->last_seen = tt_now_unix();
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Records that sidecar id acknowledged version and stamps it now; an unknown id is ignored. Takes
 * the store lock. */
void cp_store_sidecar_acked(struct cp_store *s, const char *id, uint64_t version)
{
    struct sidecar *c;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c != NULL) {
        c->acked = version;
        c->last_seen = tt_now_unix();
    }
    pthread_mutex_unlock(&s->mu);
}

/* Records that sidecar id refused version, with a copy of reason (NULL: ""), and stamps it now; an
 * unknown id is ignored. Takes the store lock. */
void cp_store_sidecar_nacked(struct cp_store *s, const char *id, uint64_t version,
                             const char *reason)
{
    struct sidecar *c;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c != NULL) {
        c->nacked = version;
        replace_str(&c->nack_reason, reason ? reason : "");
        c->last_seen = tt_now_unix();
    }
    pthread_mutex_unlock(&s->mu);
}

/* Forgets sidecar id and frees its record; an unknown id is ignored. Takes the store lock. */
void cp_store_sidecar_gone(struct cp_store *s, const char *id)
{
    struct sidecar *c;

    pthread_mutex_lock(&s->mu);
    c = find_sidecar(s, id);
    if (c != NULL) {
        size_t at = (size_t)(c - s->sidecars.v);

        sidecar_free_fields(c);
        memmove(c, c + 1, (s->sidecars.n - at - 1) * sizeof(*c));
        s->sidecars.n--;
    }
    pthread_mutex_unlock(&s->mu);
}

static json_t *jstr_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* Returns a new JSON array describing each connected sidecar (null for unknown fields and
 * versions), NULL when out of memory; the caller decrefs it. Takes the store lock. */
json_t *cp_store_sidecars_json(struct cp_store *s)
{
    json_t *arr = json_array();

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; arr && i < s->sidecars.n; i++) {
        struct sidecar *c = &s->sidecars.v[i];

        json_array_append_new(
            arr,
            json_pack("{s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:I}", "id", c->id, "spiffe_id",
                      jstr_or_null(c->spiffe_id), "peer", jstr_or_null(c->peer), "node",
                      jstr_or_null(c->node), "acked_version",
                      c->acked ? json_integer((json_int_t)c->acked) : json_null(), "nacked_version",
                      c->nacked ? json_integer((json_int_t)c->nacked) : json_null(), "nack_reason",
                      jstr_or_null(c->nack_reason), "last_seen_unix", (json_int_t)c->last_seen));
    }
    pthread_mutex_unlock(&s->mu);
    return arr;
}

/* ---- counters ---- */

/* Adds one to the refusal counter for reason (copied on first use; dropped silently when that
 * allocation fails). Takes the store lock. */
void cp_store_count_refusal(struct cp_store *s, const char *reason)
{
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->refusals.n; i++) {
        if (strcmp(s->refusals.v[i].reason, reason) == 0) {
            s->refusals.v[i].n++;
            goto out;
        }
    }
    if (VEC_GROW(s->refusals) == 0) {
        char *r = strdup(reason);

        if (r != NULL)
            s->refusals.v[s->refusals.n++] = (struct refusal){r, 1};
    }
out:
    pthread_mutex_unlock(&s->mu);
}

/* Returns a new JSON object of counters (version, issued, tokens, sidecars, services, revocations,
 * policy_set, refusals by reason and their total), NULL when out of memory; the caller decrefs it.
 * Takes the store lock. */
json_t *cp_store_stats_json(struct cp_store *s)
{
    json_t *refusals = json_object();
    json_t *doc;
    uint64_t total = 0;

    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; refusals && i < s->refusals.n; i++) {
        json_object_set_new(refusals, s->refusals.v[i].reason,
                            json_integer((json_int_t)s->refusals.v[i].n));
        total += s->refusals.v[i].n;
    }
    doc = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:I,s:o}", "version", (json_int_t)s->version,
                    "issued", (json_int_t)s->issued.n, "tokens", (json_int_t)s->tokens.n,
                    "sidecars_connected", (json_int_t)s->sidecars.n, "services",
                    (json_int_t)s->services.n, "revocations", (json_int_t)s->revoked.n,
                    "policy_set", s->policy != NULL, "refusals_total", (json_int_t)total,
                    "refusals", refusals ? refusals : json_object());
    pthread_mutex_unlock(&s->mu);
    return doc;
}
