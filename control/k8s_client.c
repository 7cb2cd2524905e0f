/* The Kubernetes API client: HTTPS with a bearer token or client certificate (see
 * k8s_client.h). */
#include <errno.h>
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
