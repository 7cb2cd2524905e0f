/* The Kubernetes API client: HTTPS with a bearer token or client certificate (see
 * k8s_client.h). */
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/util.h"
#include "k8s_client.h"
#include "tls/crypto.h"
#include "tls/webtls.h"

struct cp_k8s_client {
    char host[256], port[8], prefix[512], host_hdr[300], where[300];
    char *ca_file, *ca_pem, *token_file, *token, *cert_file, *cert_pem, *key_file, *key_pem;
    int timeout_ms;
};

/* A copy of s, or NULL for NULL; *ok goes false when the copy fails. */
static char *dup_opt(const char *s, bool *ok)
{
    char *d;

    if (s == NULL)
        return NULL;
    d = strdup(s);
    if (d == NULL)
        *ok = false;
    return d;
}

/* Frees a secret after wiping it. */
static void free_secret(char *s)
{
    if (s != NULL) {
        tt_crypto_wipe(s, strlen(s));
        free(s);
    }
}

/* Checks and copies the options (see k8s_client.h). */
struct cp_k8s_client *cp_k8s_client_new(const struct cp_k8s_client_opts *o, char *err,
                                        size_t errlen)
{
    struct cp_k8s_client *c = calloc(1, sizeof(*c));
    char perr[256];
    bool ok = true;

    if (c == NULL) {
        tt_errf(err, errlen, "out of memory");
        return NULL;
    }
    if (o->server == NULL || !cp_httpc_url_is_https(o->server) ||
        cp_httpc_parse_url(o->server, c->host, sizeof(c->host), c->port, sizeof(c->port), c->prefix,
                           sizeof(c->prefix), perr, sizeof(perr)) != 0) {
        tt_errf(err, errlen, "Kubernetes API server %s: expected https://HOST:PORT",
                o->server ? o->server : "(none)");
        goto fail;
    }
    if (o->ca_file == NULL && o->ca_pem == NULL) {
        tt_errf(err, errlen, "Kubernetes API server %s: no CA to check it with", o->server);
        goto fail;
    }
    if ((o->cert_file || o->cert_pem) != (o->key_file || o->key_pem)) {
        tt_errf(err, errlen, "a client certificate needs its key, and a key its certificate");
        goto fail;
    }
    snprintf(c->host_hdr, sizeof(c->host_hdr), "%s%s%s:%s", strchr(c->host, ':') ? "[" : "",
             c->host, strchr(c->host, ':') ? "]" : "", c->port);
    snprintf(c->where, sizeof(c->where), "%s", c->host_hdr);
    c->ca_file = dup_opt(o->ca_file, &ok);
    c->ca_pem = dup_opt(o->ca_pem, &ok);
    c->token_file = dup_opt(o->token_file, &ok);
    c->token = dup_opt(o->token, &ok);
    c->cert_file = dup_opt(o->cert_file, &ok);
    c->cert_pem = dup_opt(o->cert_pem, &ok);
    c->key_file = dup_opt(o->key_file, &ok);
    c->key_pem = dup_opt(o->key_pem, &ok);
    c->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : 10000;
    if (!ok) {
        tt_errf(err, errlen, "out of memory");
        goto fail;
    }
    return c;
fail:
    cp_k8s_client_free(c);
    return NULL;
}

/* Frees the client, wiping the credentials it holds. Accepts NULL. */
void cp_k8s_client_free(struct cp_k8s_client *c)
{
    if (c == NULL)
        return;
    free(c->ca_file);
    free(c->ca_pem);
    free(c->token_file);
    free_secret(c->token);
    free(c->cert_file);
    free(c->cert_pem);
    free(c->key_file);
    free_secret(c->key_pem);
    free(c);
}

/* "HOST:PORT" of the API server. */
const char *cp_k8s_client_where(const struct cp_k8s_client *c)
{
    return c->where;
}

/* A credential: the file read now (whitespace at the end dropped), else a copy of the
 * data, else NULL with *out NULL. Returns 0 or -errno with err naming the file. */
static int cred_load(const char *file, const char *data, const char *what, char **out, size_t *len,
                     char *err, size_t errlen)
{
    int rc;

    *out = NULL;
    *len = 0;
    if (file != NULL) {
        rc = tt_file_read(file, CP_K8S_CRED_MAX, out, len);
        if (rc != 0) {
            tt_errf(err, errlen, "%s %s: %s", what, file,
                    rc == -EFBIG ? "too large" : strerror(-rc));
            return rc;
        }
        while (*len > 0 && strchr(" \t\r\n", (*out)[*len - 1]) != NULL)
            (*out)[--*len] = '\0';
        return 0;
    }
    if (data != NULL) {
        *out = strdup(data);
        if (*out == NULL)
            return -ENOMEM;
        *len = strlen(data);
    }
    return 0;
}

struct tls_io {
    struct tt_webtls *tls;
};

static ssize_t tls_read(void *ud, void *buf, size_t len)
{
    return tt_webtls_read(((struct tls_io *)ud)->tls, buf, len);
}

static int tls_write(void *ud, const void *buf, size_t len)
{
    return tt_webtls_write(((struct tls_io *)ud)->tls, buf, len);
}

/* Publishes fd in slot (or clears it with -1). Returns false when the slot was canceled
 * (fd is then not published). */
static bool slot_set(struct cp_k8s_slot *slot, int fd)
{
    bool ok = true;

    if (slot == NULL)
        return true;
    pthread_mutex_lock(&slot->mu);
    if (fd >= 0 && slot->canceled)
        ok = false;
    else
        slot->fd = fd;
    pthread_mutex_unlock(&slot->mu);
    return ok;
}

/* True when the slot was canceled. */
static bool slot_canceled(struct cp_k8s_slot *slot)
{
    bool c = false;

    if (slot != NULL) {
        pthread_mutex_lock(&slot->mu);
        c = slot->canceled;
        pthread_mutex_unlock(&slot->mu);
    }
    return c;
}

/* Ends the slot's connection and refuses new ones (see k8s_client.h). */
void cp_k8s_slot_cancel(struct cp_k8s_slot *slot)
{
    pthread_mutex_lock(&slot->mu);
    slot->canceled = true;
    if (slot->fd >= 0)
        shutdown(slot->fd, SHUT_RDWR);
    pthread_mutex_unlock(&slot->mu);
}

/* One request over a new TLS connection (see k8s_client.h). */
int cp_k8s_request(struct cp_k8s_client *c, struct cp_k8s_slot *slot, const char *method,
                   const char *path, const char *ctype, const char *body, size_t body_len,
                   int (*on_body)(void *ud, const char *data, size_t len), void *body_ud,
                   int read_timeout_ms, struct cp_httpc_response *out, char *err, size_t errlen)
{
    char *ca = NULL, *token = NULL, *cert = NULL, *key = NULL, terr[256];
    size_t ca_len, token_len, cert_len, key_len;
    struct tls_io tio = {NULL};
    struct cp_httpc_io io = {tls_read, tls_write, &tio};
    struct cp_httpc_req rq = {.where = c->where,
                              .host_hdr = c->host_hdr,
                              .prefix = c->prefix,
                              .method = method,
                              .path = path,
                              .ctype = ctype,
                              .body = body,
                              .body_len = body_len,
                              .user_agent = CP_K8S_USER_AGENT,
                              .on_body = on_body,
                              .body_ud = body_ud};
    int fd = -1, rc;

    memset(out, 0, sizeof(*out));
    if ((rc = cred_load(c->ca_file, c->ca_pem, "CA file", &ca, &ca_len, err, errlen)) != 0 ||
        (rc = cred_load(c->token_file, c->token, "token file", &token, &token_len, err, errlen)) !=
            0 ||
        (rc = cred_load(c->cert_file, c->cert_pem, "client certificate", &cert, &cert_len, err,
                        errlen)) != 0 ||
        (rc = cred_load(c->key_file, c->key_pem, "client key", &key, &key_len, err, errlen)) != 0)
        goto out;
    if (token != NULL && (token_len == 0 || strpbrk(token, "\r\n") != NULL)) {
        tt_errf(err, errlen, "the bearer token is empty or holds a line break");
        rc = -EINVAL;
        goto out;
    }
    rq.bearer = token;
    fd = cp_httpc_connect(c->host, c->port, c->timeout_ms, err, errlen);
    if (fd < 0) {
        rc = fd;
        goto out;
    }
    if (!slot_set(slot, fd)) {
        tt_errf(err, errlen, "canceled");
        rc = -ECANCELED;
        goto out;
    }
    {
        struct tt_webtls_opts to = {ca, ca_len, c->host, cert, cert_len, key, key_len};

        tio.tls = tt_webtls_connect(fd, &to, terr, sizeof(terr));
    }
    if (tio.tls == NULL) {
        tt_errf(err, errlen, "TLS with %s: %s", c->where, terr);
        rc = -EPROTO;
        goto out;
    }
    if (read_timeout_ms > 0) {
        struct timeval tv = {.tv_sec = read_timeout_ms / 1000,
                             .tv_usec = (read_timeout_ms % 1000) * 1000};

        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    rc = cp_httpc_exchange(&io, &rq, out, err, errlen);
out:
    if (rc != 0 && slot_canceled(slot)) {
        tt_errf(err, errlen, "canceled");
        rc = -ECANCELED;
    }
    slot_set(slot, -1);
    tt_webtls_free(tio.tls);
    if (fd >= 0)
        close(fd);
    free(ca);
    free_secret(token);
    free(cert);
    free_secret(key);
    return rc;
}

/* RFC 1123 names (see k8s_client.h). */
bool cp_k8s_name_valid(const char *s, size_t max, bool dots)
{
    size_t n = s ? strlen(s) : 0;

    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');

        if (!alnum && c != '-' && !(dots && c == '.'))
            return false;
        if (!alnum && (i == 0 || i == n - 1))
            return false;
    }
    return true;
}

/* ---- kubeconfig ---- */

/* The element of the array `list` (key `what`) whose "name" is name, or NULL. */
static json_t *named(json_t *list, const char *name)
{
    json_t *e;
    size_t i;

    json_array_foreach(list, i, e)
    {
        const char *n = json_string_value(json_object_get(e, "name"));

        if (n != NULL && strcmp(n, name) == 0)
            return e;
    }
    return NULL;
}

/* A path from the kubeconfig: absolute as given, relative resolved against dir. */
static char *resolve(const char *dir, const char *p)
{
    char *out;

    if (p[0] == '/')
        return strdup(p);
    if (asprintf(&out, "%s/%s", dir, p) < 0)
        return NULL;
    return out;
}

/* Decodes the base64 value v into a NUL-terminated heap string. NULL on bad base64. */
static char *b64_string(const char *v)
{
    uint8_t *raw = NULL;
    size_t n = 0;
    char *s;

    if (tt_crypto_base64_decode(v, strlen(v), &raw, &n) != 0)
        return NULL;
    s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, raw, n);
        s[n] = '\0';
    }
    tt_crypto_wipe(raw, n);
    free(raw);
    return s;
}

/* One string member of obj: the file (resolved, in *file) or the -data (decoded, in *data).
 * Returns 0 (neither is fine), or -EINVAL with err. */
static int file_or_data(json_t *obj, const char *fkey, const char *dkey, const char *dir,
                        const char *where, char **file, char **data, char *err, size_t errlen)
{
    json_t *f = json_object_get(obj, fkey), *d = json_object_get(obj, dkey);

    if ((f != NULL && !json_is_string(f)) || (d != NULL && !json_is_string(d))) {
        tt_errf(err, errlen, "%s: %s and %s must be strings", where, fkey, dkey);
        return -EINVAL;
    }
    if (d != NULL) {
        *data = b64_string(json_string_value(d));
        if (*data == NULL) {
            tt_errf(err, errlen, "%s.%s: not base64", where, dkey);
            return -EINVAL;
        }
    } else if (f != NULL) {
        *file = resolve(dir, json_string_value(f));
        if (*file == NULL)
            return -ENOMEM;
    }
    return 0;
}

/* Reads the current context of a kubeconfig (see k8s_client.h). */
int cp_k8s_kubeconfig_load(json_t *doc, const char *path, struct cp_k8s_kubeconfig *kc, char *err,
                           size_t errlen)
{
    static const char *const refused[] = {"exec", "auth-provider", "username", "password",
                                          "as",   "impersonate"};
    const char *cur = json_string_value(json_object_get(doc, "current-context"));
    char *pcopy = strdup(path), *dir = pcopy ? dirname(pcopy) : NULL;
    char where[600];
    json_t *ctx, *cluster, *user, *v;
    const char *cname, *uname;
    int rc = -EINVAL;

    memset(kc, 0, sizeof(*kc));
    if (dir == NULL) {
        free(pcopy);
        return -ENOMEM;
    }
    if (!json_is_object(doc)) {
        tt_errf(err, errlen, "%s: expected a kubeconfig (kind: Config)", path);
        goto out;
    }
    if (cur == NULL || cur[0] == '\0') {
        tt_errf(err, errlen, "%s: current-context: required", path);
        goto out;
    }
    ctx = json_object_get(named(json_object_get(doc, "contexts"), cur), "context");
    if (!json_is_object(ctx)) {
        tt_errf(err, errlen, "%s: contexts: no context named \"%s\" (the current-context)", path,
                cur);
        goto out;
    }
    cname = json_string_value(json_object_get(ctx, "cluster"));
    uname = json_string_value(json_object_get(ctx, "user"));
    cluster =
        cname ? json_object_get(named(json_object_get(doc, "clusters"), cname), "cluster") : NULL;
    if (!json_is_object(cluster)) {
        tt_errf(err, errlen, "%s: clusters: no cluster named \"%s\" (context %s)", path,
                cname ? cname : "", cur);
        goto out;
    }
    snprintf(where, sizeof(where), "%s: clusters[name=%s].cluster", path, cname);
    v = json_object_get(cluster, "server");
    if (!json_is_string(v)) {
        tt_errf(err, errlen, "%s.server: required (https://HOST:PORT)", where);
        goto out;
    }
    if (json_is_true(json_object_get(cluster, "insecure-skip-tls-verify")) ||
        json_object_get(cluster, "tls-server-name") != NULL ||
        json_object_get(cluster, "proxy-url") != NULL) {
        tt_errf(err, errlen,
                "%s: insecure-skip-tls-verify, tls-server-name and proxy-url are not supported",
                where);
        goto out;
    }
    if ((kc->server = strdup(json_string_value(v))) == NULL)
        goto nomem;
    if ((rc = file_or_data(cluster, "certificate-authority", "certificate-authority-data", dir,
                           where, &kc->ca_file, &kc->ca_pem, err, errlen)) != 0)
        goto out;
    if (kc->ca_file == NULL && kc->ca_pem == NULL) {
        tt_errf(err, errlen, "%s: certificate-authority or certificate-authority-data: required",
                where);
        rc = -EINVAL;
        goto out;
    }
    rc = -EINVAL;
    user = uname ? json_object_get(named(json_object_get(doc, "users"), uname), "user") : NULL;
    snprintf(where, sizeof(where), "%s: users[name=%s].user", path, uname ? uname : "");
    if (!json_is_object(user)) {
        tt_errf(err, errlen, "%s: no such user (context %s)", where, cur);
        goto out;
    }
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
        if (json_object_get(user, refused[i]) != NULL) {
            tt_errf(err, errlen,
                    "%s.%s: not supported (use a token, tokenFile or a client "
                    "certificate)",
                    where, refused[i]);
            goto out;
        }
    v = json_object_get(user, "token");
    if (v != NULL && (!json_is_string(v) || (kc->token = strdup(json_string_value(v))) == NULL)) {
        tt_errf(err, errlen, "%s.token: expected a string", where);
        goto out;
    }
    v = json_object_get(user, "tokenFile");
    if (kc->token == NULL && v != NULL &&
        (!json_is_string(v) || (kc->token_file = resolve(dir, json_string_value(v))) == NULL)) {
        tt_errf(err, errlen, "%s.tokenFile: expected a string", where);
        goto out;
    }
    if ((rc = file_or_data(user, "client-certificate", "client-certificate-data", dir, where,
                           &kc->cert_file, &kc->cert_pem, err, errlen)) != 0 ||
        (rc = file_or_data(user, "client-key", "client-key-data", dir, where, &kc->key_file,
                           &kc->key_pem, err, errlen)) != 0)
        goto out;
    rc = -EINVAL;
    if ((kc->cert_file || kc->cert_pem) != (kc->key_file || kc->key_pem)) {
        tt_errf(err, errlen, "%s: client-certificate(-data) and client-key(-data) go together",
                where);
        goto out;
    }
    if (kc->token == NULL && kc->token_file == NULL && kc->cert_file == NULL &&
        kc->cert_pem == NULL) {
        tt_errf(err, errlen, "%s: no credential (token, tokenFile or client-certificate)", where);
        goto out;
    }
    rc = 0;
    goto out;
nomem:
    rc = -ENOMEM;
    tt_errf(err, errlen, "out of memory");
out:
    if (rc != 0)
        cp_k8s_kubeconfig_done(kc);
    free(pcopy);
    return rc;
}

/* Points o's server and credentials at kc's. */
void cp_k8s_kubeconfig_opts(const struct cp_k8s_kubeconfig *kc, struct cp_k8s_client_opts *o)
{
    o->server = kc->server;
    o->ca_file = kc->ca_file;
    o->ca_pem = kc->ca_pem;
    o->token = kc->token;
    o->token_file = kc->token_file;
    o->cert_file = kc->cert_file;
    o->cert_pem = kc->cert_pem;
    o->key_file = kc->key_file;
    o->key_pem = kc->key_pem;
}

/* Frees the kubeconfig's strings, wiping the secrets. */
void cp_k8s_kubeconfig_done(struct cp_k8s_kubeconfig *kc)
{
    free(kc->server);
    free(kc->ca_file);
    free(kc->ca_pem);
    free_secret(kc->token);
    free(kc->token_file);
    free(kc->cert_file);
    free(kc->cert_pem);
    free(kc->key_file);
    free_secret(kc->key_pem);
    memset(kc, 0, sizeof(*kc));
}
