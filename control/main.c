/* tether-control: the control plane's process. Flags, the state directory, the CA, the
 * sidecar API (gRPC over mTLS, sidecar_api.c), the operator API on a libuv loop (each
 * --listen-api: plaintext on loopback, else mTLS with an admin certificate through a
 * cp_tls_acceptor, whose loop thread hands connections to this loop through a
 * uv_async_t), and SIGTERM/SIGINT. The only place in control/ that exits.
 *
 * Exit status: 0 after a signal, 1 when a runtime start-up step fails (state, CA,
 * listeners), 2 for bad flags. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "api.h"
#include "ca.h"
#include "k8s_client.h"
#include "k8s_watch.h"
#include "yaml.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/spiffe.h"
#include "tls/crypto.h"
#include "store.h"
#include "tls_acceptor.h"
#include "core/util.h"
#include "jwks.h"
#include "operator_token.h"
#include "sidecar_api.h"
#include "webhook.h"

#define EXIT_RUNTIME      1
#define EXIT_USAGE        2
#define MAX_API_LISTENERS 4
#define MAX_SERVING_NAMES 16
/* Descriptors kept for everything but sidecar connections (gRPC's and libuv's own, the
 * state files, the acceptors' reserves), and per operator API listener. */
#define FD_RESERVE_BASE    64
#define FD_RESERVE_PER_API 16
/* The sidecar port's bounds (tls_acceptor.h), unless flags say otherwise. */
#define SIDECAR_MAX_CONNS_DEFAULT  10000
#define SIDECAR_MAX_PER_SOURCE     256
#define SIDECAR_HANDSHAKE_DEFAULT  "10s"
#define SIDECAR_FIRST_CALL_DEFAULT "10s"
#define API_MAX_CONNS              256
#define API_MAX_PER_SOURCE         64

static const char usage[] =
    "usage: tether-control --state-dir DIR [options]\n"
    "\n"
    "  --state-dir DIR            CA, tokens, policy, revocations, services, issued records,\n"
    "                             and operator.token: the credential the loopback API\n"
    "                             asks for (made at first start, mode 0600)\n"
    "  --trust-domain TD          SPIFFE trust domain (default cluster.local)\n"
    "  --listen-sidecars ADDR:PORT  gRPC over mTLS for sidecars (default 0.0.0.0:15012)\n"
    "  --listen-api ADDR:PORT     operator HTTP/JSON API (default 127.0.0.1:15014); may be\n"
    "                             given up to 4 times. Loopback addresses serve plaintext;\n"
    "                             any other address serves mTLS only and needs a client\n"
    "                             certificate with an admin identity (bootstrap one on\n"
    "                             this host with `tetherctl admin-cert create` over a\n"
    "                             loopback --listen-api)\n"
    "  --admin-id SPIFFE_ID       an identity allowed to administer over mTLS, in\n"
    "                             spiffe://TD/ns/tether-system/ (reserved); repeatable\n"
    "                             (up to 8; default spiffe://TD/ns/tether-system/sa/"
    "tether-admin)\n"
    "  --cert-ttl DURATION        lifetime of workload certificates (default 1h)\n"
    "  --serving-name NAME        a DNS name or IP address in the control plane's serving\n"
    "                             certificate (for standard gRPC clients); repeatable (up\n"
    "                             to 16). Default: localhost, 127.0.0.1, ::1, the\n"
    "                             --listen-sidecars address unless a wildcard,\n"
    "                             tether-control.tether-system.svc and\n"
    "                             tether-control.tether-system.svc.cluster.local\n"
    "  --sidecar-max-connections N  connections on --listen-sidecars at once (default 10000,\n"
    "                             lowered to what the open-files limit allows, 3 per\n"
    "                             connection); when full, the oldest one without a\n"
    "                             successful call is closed to make room\n"
    "  --sidecar-max-per-source N   connections from one source IP address (default 256)\n"
    "  --sidecar-handshake-timeout DURATION  for a TLS handshake (default 10s)\n"
    "  --sidecar-first-call-timeout DURATION  from the handshake to the first successful\n"
    "                             gRPC call (Sign, or a Watch opened); 0 for none\n"
    "                             (default 10s)\n"
    "  --ca-cert FILE --ca-key FILE [--ca-chain FILE]\n"
    "                             use this root or intermediate instead of the state's own\n"
    "  --registration-grace DURATION  how long a sidecar's registration of the endpoints\n"
    "                             it serves outlives its Watch stream (default 60s; 0 for\n"
    "                             none); the same identity reconnecting keeps it, another\n"
    "                             identity may take the address once the stream is gone\n"
    "  --listen-webhook ADDR:PORT the sidecar-injection admission webhook, POST /inject\n"
    "                             over HTTPS with the serving certificate (off by default;\n"
    "                             in Kubernetes 0.0.0.0:15017 behind Service port 443)\n"
    "  --sidecar-image IMAGE      the image the webhook injects (default " CP_INJECT_DEFAULT_IMAGE
    ")\n"
    "  --inject-control-address HOST:PORT  the sidecar API as injected sidecars reach it\n"
    "                             (default " CP_INJECT_DEFAULT_CONTROL ")\n"
    "  --jwks FILE                accept Kubernetes projected service-account tokens as\n"
    "                             proof in Identity.Sign, signed (ES256 or RS256) by a key\n"
    "                             of this JWK Set (the API server's /openid/v1/jwks); a\n"
    "                             token for namespace NS and service account SA gets\n"
    "                             spiffe://TD/ns/NS/sa/SA. Read again when it changes\n"
    "  --jwt-audience AUD         the audience the tokens must carry (required with --jwks);\n"
    "                             also the audience of the token the webhook injects\n"
    "                             (default there " CP_INJECT_DEFAULT_AUDIENCE ")\n"
    "  --jwt-issuer ISS           the issuer they must carry (default: any; e.g.\n"
    "                             https://kubernetes.default.svc.cluster.local)\n"
    "  --kubernetes               fill the service table from the cluster: watch Services,\n"
    "                             EndpointSlices and Pods (ClusterIP:port -> ready pod\n"
    "                             IP:targetPort -> spiffe://TD/ns/<pod ns>/sa/<service\n"
    "                             account>). In a pod: the API server from\n"
    "                             KUBERNETES_SERVICE_HOST/PORT, the service account's token\n"
    "                             and CA under " CP_K8S_SA_DIR "\n"
    "  --kubeconfig FILE          --kubernetes with the API server and credentials of FILE's\n"
    "                             current-context (server, certificate-authority(-data),\n"
    "                             token, tokenFile or client-certificate/key(-data))\n"
    "  --kubernetes-api URL       (testing, out of cluster) the API server, https://HOST:PORT\n"
    "  --kubernetes-token-file FILE  (testing, out of cluster) the bearer token, read again\n"
    "                             for every connection\n"
    "  --kubernetes-ca-file FILE  (testing, out of cluster) the CA of the API server\n"
    "  --webhook-config NAME      with --kubernetes: at start, and whenever the bundle\n"
    "                             changes, set the caBundle of webhook " CP_K8S_WEBHOOK_ENTRY "\n"
    "                             in MutatingWebhookConfiguration NAME (one PATCH; needs only\n"
    "                             the patch verb on that object)\n"
    "  --log-level LEVEL          debug, info, warn, error (default info)\n"
    "  -h, --help                 this text\n";

struct flags {
    const char *state_dir;
    const char *trust_domain;
    const char *listen_sidecars;
    const char *listen_api[MAX_API_LISTENERS];
    size_t n_listen_api;
    const char *admin_ids[CP_API_MAX_ADMINS];
    size_t n_admin_ids;
    const char *cert_ttl;
    const char *serving_names[MAX_SERVING_NAMES];
    size_t n_serving_names;
    const char *sidecar_max_conns, *sidecar_max_per_source;
    const char *sidecar_handshake, *sidecar_first_call;
    const char *ca_cert, *ca_key, *ca_chain;
    const char *log_level;
    const char *registration_grace;
    bool kubernetes;
    const char *kubeconfig, *k8s_api, *k8s_token_file, *k8s_ca_file, *webhook_config;
    const char *listen_webhook, *sidecar_image, *inject_control_address;
    const char *jwks, *jwt_audience, *jwt_issuer;
};

/* One --listen-api. With mTLS, `acceptor` terminates TLS on its own threads and queues
 * each verified connection on the control's hand-off list for the loop thread. */
struct api_listener {
    struct control *c;
    const char *text;
    struct tt_addr addr;
    bool mtls;
    struct cp_api *api;
    struct cp_tls_acceptor *acceptor;
};

/* A connection on its way from an acceptor's loop thread to this loop's thread. */
struct handoff {
    struct handoff *next;
    struct api_listener *l; /* NULL: for the webhook */
    int fd;
    char peer_id[TT_SPIFFE_MAX + 1];
};

struct control {
    uv_loop_t *loop;
    uv_signal_t sigterm, sigint;
    struct cp_store *store;
    struct cp_ca *ca;
    struct api_listener apis[MAX_API_LISTENERS];
    size_t n_apis;
    uv_async_t handoff_async;
    bool handoff_init;
    pthread_mutex_t handoff_lock; /* guards handoffs */
    struct handoff *handoffs;
    struct cp_sidecar_api *sidecars;
    struct cp_webhook *webhook; /* --listen-webhook, or NULL */
    struct cp_tls_acceptor *webhook_acceptor;
    uv_timer_t reg_timer;     /* drops registrations past their grace period */
    struct cp_k8s_watch *k8s; /* --kubernetes: the cluster's services */
    pthread_mutex_t k8s_lock; /* guards k8s against the store callback on other threads */
    char operator_token[CP_OPERATOR_TOKEN_MAX]; /* the loopback APIs' credential */
};

static int die_usage(const char *msg, const char *arg)
{
    fprintf(stderr, "tether-control: %s%s\n(see tether-control --help)\n", msg, arg ? arg : "");
    return EXIT_USAGE;
}

/* Parses argv into f. Returns 0, -1 after --help, or EXIT_USAGE after a message. */
static int parse_flags(int argc, char **argv, struct flags *f)
{
    static const struct {
        const char *name;
        size_t off;
    } opts[] = {
        {"--state-dir", offsetof(struct flags, state_dir)},
        {"--trust-domain", offsetof(struct flags, trust_domain)},
        {"--listen-sidecars", offsetof(struct flags, listen_sidecars)},
        {"--cert-ttl", offsetof(struct flags, cert_ttl)},
        {"--sidecar-max-connections", offsetof(struct flags, sidecar_max_conns)},
        {"--sidecar-max-per-source", offsetof(struct flags, sidecar_max_per_source)},
        {"--sidecar-handshake-timeout", offsetof(struct flags, sidecar_handshake)},
        {"--sidecar-first-call-timeout", offsetof(struct flags, sidecar_first_call)},
        {"--ca-cert", offsetof(struct flags, ca_cert)},
        {"--ca-key", offsetof(struct flags, ca_key)},
        {"--ca-chain", offsetof(struct flags, ca_chain)},
        {"--log-level", offsetof(struct flags, log_level)},
        {"--registration-grace", offsetof(struct flags, registration_grace)},
        {"--kubeconfig", offsetof(struct flags, kubeconfig)},
        {"--kubernetes-api", offsetof(struct flags, k8s_api)},
        {"--kubernetes-token-file", offsetof(struct flags, k8s_token_file)},
        {"--kubernetes-ca-file", offsetof(struct flags, k8s_ca_file)},
        {"--webhook-config", offsetof(struct flags, webhook_config)},
        {"--listen-webhook", offsetof(struct flags, listen_webhook)},
        {"--sidecar-image", offsetof(struct flags, sidecar_image)},
        {"--inject-control-address", offsetof(struct flags, inject_control_address)},
        {"--jwt-audience", offsetof(struct flags, jwt_audience)},
        {"--jwks", offsetof(struct flags, jwks)},
        {"--jwt-issuer", offsetof(struct flags, jwt_issuer)},
    };

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        size_t k;

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return -1;
        }
        if (strcmp(a, "--kubernetes") == 0) {
            f->kubernetes = true;
            continue;
        }
        /* The repeatable ones. */
        if (strcmp(a, "--serving-name") == 0 || strncmp(a, "--serving-name=", 15) == 0) {
            if (a[14] == '=')
                val = a + 15;
            else if (i + 1 < argc)
                val = argv[++i];
            else
                return die_usage("--serving-name", " needs a value");
            if (f->n_serving_names == MAX_SERVING_NAMES)
                return die_usage("--serving-name: at most 16 names", NULL);
            f->serving_names[f->n_serving_names++] = val;
            continue;
        }
        if (strcmp(a, "--listen-api") == 0 || strncmp(a, "--listen-api=", 13) == 0 ||
            strcmp(a, "--admin-id") == 0 || strncmp(a, "--admin-id=", 11) == 0) {
            bool api = a[2] == 'l';
            const char *name = api ? "--listen-api" : "--admin-id";
            const char *eq = strchr(a, '=');

            if (eq != NULL)
                val = eq + 1;
            else if (i + 1 < argc)
                val = argv[++i];
            else
                return die_usage(name, " needs a value");
            if (api && f->n_listen_api == MAX_API_LISTENERS)
                return die_usage("--listen-api: at most 4 addresses", NULL);
            if (!api && f->n_admin_ids == CP_API_MAX_ADMINS)
                return die_usage("--admin-id: at most 8 identities", NULL);
            if (api)
                f->listen_api[f->n_listen_api++] = val;
            else
                f->admin_ids[f->n_admin_ids++] = val;
            continue;
        }
        for (k = 0; k < TT_ARRAY_SIZE(opts); k++) {
            size_t n = strlen(opts[k].name);

            if (strncmp(a, opts[k].name, n) != 0 || (a[n] != '\0' && a[n] != '='))
                continue;
            if (a[n] == '=') {
                val = a + n + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                return die_usage(opts[k].name, " needs a value");
            }
            *(const char **)((char *)f + opts[k].off) = val;
            break;
        }
        if (k == TT_ARRAY_SIZE(opts))
            return die_usage("unknown argument ", a);
    }
    return 0;
}

static void on_handle_close(uv_handle_t *h)
{
}

/* Takes the queued connections off the hand-off list. */
static struct handoff *handoff_take(struct control *c)
{
    struct handoff *list;

    pthread_mutex_lock(&c->handoff_lock);
    list = c->handoffs;
    c->handoffs = NULL;
    pthread_mutex_unlock(&c->handoff_lock);
    return list;
}

/* Loop thread: serves each queued connection, oldest first (or drops it once the API is
 * closing). */
static void on_handoff(uv_async_t *as)
{
    struct control *c = as->data;
    struct handoff *list = handoff_take(c), *rev = NULL;

    while (list != NULL) { /* queued newest first */
        struct handoff *h = list;

        list = h->next;
        h->next = rev;
        rev = h;
    }
    for (struct handoff *h = rev, *next; h != NULL; h = next) {
        next = h->next;
        if (h->l == NULL) {
            int r = c->webhook ? cp_webhook_adopt_fd(c->webhook, h->fd) : (close(h->fd), 0);

            if (r < 0)
                tt_log(TT_LOG_WARN, "webhook_connection_refused",
                       TT_LS("error", r == -EBUSY ? "too many clients" : strerror(-r)));
        } else if (h->l->api == NULL) {
            close(h->fd);
        } else {
            /* The acceptor's relay ends when the HTTP side closes its end. */
            int r = cp_api_adopt_fd(h->l->api, h->fd, h->peer_id[0] ? h->peer_id : NULL);

            if (r < 0)
                tt_log(TT_LOG_WARN, "api_connection_refused", TT_LS("listener", h->l->text),
                       TT_LS("peer_id", h->peer_id),
                       TT_LS("error", r == -EBUSY ? "too many clients" : strerror(-r)));
        }
        free(h);
    }
}

/* Stops one --listen-api: the acceptor first (no new connection is queued after it
 * returns), then the API. Loop thread. */
static void api_listener_stop(struct api_listener *l)
{
    cp_tls_acceptor_free(l->acceptor);
    l->acceptor = NULL;
    cp_api_close(l->api);
    l->api = NULL;
}

/* Stops every API listener, drops queued connections and closes the hand-off handle. */
static void apis_stop(struct control *c)
{
    for (size_t i = 0; i < c->n_apis; i++)
        api_listener_stop(&c->apis[i]);
    cp_tls_acceptor_free(c->webhook_acceptor);
    c->webhook_acceptor = NULL;
    cp_webhook_close(c->webhook);
    c->webhook = NULL;
    if (c->handoff_init) {
        on_handoff(&c->handoff_async); /* every api is NULL now: closes what is queued */
        uv_close((uv_handle_t *)&c->handoff_async, on_handle_close);
        c->handoff_init = false;
    }
}

/* Stops the Kubernetes watcher: no store callback sees it once the lock is released, and
 * its threads are joined before it is freed. Loop thread. */
static void k8s_stop(struct control *c)
{
    struct cp_k8s_watch *w;

    pthread_mutex_lock(&c->k8s_lock);
    w = c->k8s;
    c->k8s = NULL;
    pthread_mutex_unlock(&c->k8s_lock);
    cp_k8s_watch_stop(w);
}

/* SIGTERM/SIGINT: stop serving; the loop ends once every handle is closed. The API
 * listeners go first: their handshakes use the sidecar API's serving identity. */
static void on_signal(uv_signal_t *s, int signum)
{
    struct control *c = s->data;

    tt_log(TT_LOG_INFO, "control_stopping", TT_LS("signal", signum == SIGTERM ? "TERM" : "INT"));
    apis_stop(c);
    /* Before the sidecar API: the watcher's threads change the store, whose callback
     * pushes through c->sidecars (joined here, so none runs after). */
    k8s_stop(c);
    cp_sidecar_api_free(c->sidecars);
    c->sidecars = NULL;
    uv_close((uv_handle_t *)&c->sigterm, on_handle_close);
    uv_close((uv_handle_t *)&c->sigint, on_handle_close);
    uv_close((uv_handle_t *)&c->reg_timer, on_handle_close);
}

/* Drops registrations whose grace period is over (the store pushes the change). */
static void on_reg_timer(uv_timer_t *t)
{
    struct control *c = t->data;

    cp_store_registrations_expire(c->store);
}

/* The store changed what sidecars receive: push it (any thread). */
static void on_store_change(void *ud, uint64_t version)
{
    struct control *c = ud;

    if (c->sidecars)
        cp_sidecar_api_push(c->sidecars);
    pthread_mutex_lock(&c->k8s_lock);
    cp_k8s_watch_bundle_changed(c->k8s);
    pthread_mutex_unlock(&c->k8s_lock);
}

/* Starts the gRPC side for sidecars on --listen-sidecars with the transport bounds and
 * serving names in `so` (listen, ca, store and cert_ttl_ms are set here). Returns 0 or
 * EXIT_RUNTIME. */
static int start_sidecar_side(struct control *c, const struct tt_addr *listen, uint64_t ttl_ms,
                              struct cp_sidecar_api_opts *so_in)
{
    struct cp_sidecar_api_opts so = *so_in;
    char err[512] = "";

    so.listen = listen;
    so.ca = c->ca;
    so.store = c->store;
    so.cert_ttl_ms = ttl_ms;
    c->sidecars = cp_sidecar_api_new(&so, err, sizeof(err));
    if (c->sidecars == NULL) {
        tt_log(TT_LOG_ERROR, "control_start_failed", TT_LS("error", err));
        return EXIT_RUNTIME;
    }
    cp_store_set_change_cb(c->store, on_store_change, c);
    tt_log(TT_LOG_INFO, "sidecar_api_listening", TT_LS("addr", listen->text),
           TT_LI("port", cp_sidecar_api_port(c->sidecars)), TT_LU("max_connections", so.max_conns),
           TT_LU("max_per_source", so.max_per_source), TT_LU("handshake_ms", so.handshake_ms),
           TT_LU("first_call_ms", so.first_call_ms));
    return 0;
}

/* The certificate an mTLS --listen-api presents: the sidecar API's serving identity. */
static struct tt_identity *api_identity(void *ud, char *err, size_t errlen)
{
    struct api_listener *l = ud;

    return cp_sidecar_api_serving_identity(l->c->sidecars, err, errlen);
}

/* The acceptor's loop thread verified a client on an mTLS --listen-api: refuse a revoked
 * certificate, queue the rest for this loop's thread. */
static void on_api_accept(void *ud, int app_fd, const char *peer_id, const char *serial,
                          const char *peer_addr)
{
    struct api_listener *l = ud;
    struct control *c = l->c;
    struct handoff *h;

    if (serial[0] != '\0' && cp_store_is_revoked(c->store, serial)) {
        tt_log(TT_LOG_WARN, "api_revoked_certificate", TT_LS("listener", l->text),
               TT_LS("peer", peer_addr), TT_LS("peer_id", peer_id), TT_LS("serial", serial));
        goto drop;
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        goto drop;
    h->l = l;
    h->fd = app_fd;
    snprintf(h->peer_id, sizeof(h->peer_id), "%s", peer_id ? peer_id : "");
    tt_log(TT_LOG_DEBUG, "api_connection", TT_LS("listener", l->text), TT_LS("peer", peer_addr),
           TT_LS("peer_id", peer_id), TT_LS("serial", serial));
    pthread_mutex_lock(&c->handoff_lock);
    h->next = c->handoffs;
    c->handoffs = h;
    pthread_mutex_unlock(&c->handoff_lock);
    uv_async_send(&c->handoff_async);
    return;
drop:
    close(app_fd);
}

/* Counts what a --listen-api acceptor shed among the store's refusals (GET /stats). */
static void on_api_shed(void *ud, const char *reason)
{
    struct api_listener *l = ud;

    cp_store_count_refusal(l->c->store, reason);
}

/* GET /stats's "kubernetes" (the watcher's state) with --kubernetes; NULL without. Loop
 * thread (c->k8s changes only there). */
static json_t *k8s_stats(void *ud)
{
    struct control *c = ud;

    return c->k8s ? json_pack("{s:o}", "kubernetes", cp_k8s_watch_status_json(c->k8s)) : NULL;
}

/* Starts the operator API on every --listen-api: plaintext on loopback, otherwise the
 * API in mTLS mode behind a TLS acceptor that requires a client certificate verified
 * against the bundle (role TT_TLS_SERVER). Returns 0 or EXIT_RUNTIME (after a message). */
static int start_apis(struct control *c, const struct flags *f)
{
    struct cp_api_opts ao = {0};
    char err[1024] = "";

    for (size_t i = 0; i < f->n_admin_ids; i++)
        ao.admin_ids[i] = f->admin_ids[i];
    ao.n_admin_ids = f->n_admin_ids;
    ao.operator_token = c->operator_token;
    ao.stats_extra = k8s_stats;
    ao.stats_ud = c;
    for (size_t i = 0; i < c->n_apis; i++) {
        struct api_listener *l = &c->apis[i];

        ao.listen = l->text;
        ao.mtls = l->mtls;
        l->api = cp_api_new(c->loop, &ao, c->store, c->ca, err, sizeof(err));
        if (l->api == NULL)
            goto fail;
        if (l->mtls) {
            struct cp_tls_acceptor_opts to = {
                .listen = &l->addr,
                .role = TT_TLS_SERVER,
                .identity = api_identity,
                .on_accept = on_api_accept,
                .count = on_api_shed,
                .ud = l,
                .name = "api",
                .flag = "--listen-api",
                .max_conns = API_MAX_CONNS,
                .max_per_source = API_MAX_PER_SOURCE,
            };

            if (!c->handoff_init) {
                uv_async_init(c->loop, &c->handoff_async, on_handoff);
                c->handoff_async.data = c;
                c->handoff_init = true;
            }
            l->acceptor = cp_tls_acceptor_new(&to, err, sizeof(err));
            if (l->acceptor == NULL)
                goto fail;
        }
        tt_log(TT_LOG_INFO, "api_listening", TT_LS("addr", l->text),
               TT_LS("transport", l->mtls ? "mtls" : "plaintext"),
               TT_LI("port", l->mtls ? cp_tls_acceptor_port(l->acceptor) : cp_api_port(l->api)));
    }
    return 0;
fail:
    tt_log(TT_LOG_ERROR, "control_start_failed", TT_LS("error", err));
    fprintf(stderr, "tether-control: %s\n", err);
    return EXIT_RUNTIME;
}

/* The webhook presents the sidecar API's serving certificate (its DNS names from
 * --serving-name: the Service's, tether-control.tether-system.svc, by default). */
static struct tt_identity *webhook_identity(void *ud, char *err, size_t errlen)
{
    struct control *c = ud;

    return cp_sidecar_api_serving_identity(c->sidecars, err, errlen);
}

/* The acceptor's loop thread finished a handshake on --listen-webhook: queue the
 * connection for this loop's thread. */
static void on_webhook_accept(void *ud, int app_fd, const char *peer_id, const char *serial,
                              const char *peer_addr)
{
    struct control *c = ud;
    struct handoff *h = calloc(1, sizeof(*h));

    if (h == NULL) {
        close(app_fd);
        return;
    }
    h->fd = app_fd;
    pthread_mutex_lock(&c->handoff_lock);
    h->next = c->handoffs;
    c->handoffs = h;
    pthread_mutex_unlock(&c->handoff_lock);
    uv_async_send(&c->handoff_async);
}

static void on_webhook_shed(void *ud, const char *reason)
{
    struct control *c = ud;

    cp_store_count_refusal(c->store, reason);
}

/* Starts --listen-webhook when given: the webhook on this loop behind a TLS acceptor
 * (server authentication only: the API server presents no client certificate unless
 * configured to, and one that chains to our CA is verified). Returns 0 or EXIT_RUNTIME
 * (after a message). */
static int start_webhook(struct control *c, const struct flags *f, const struct tt_addr *addr)
{
    struct cp_inject_opts io = {.image = f->sidecar_image,
                                .control_address = f->inject_control_address,
                                .trust_domain = f->trust_domain,
                                .jwt_audience = f->jwt_audience};
    struct cp_tls_acceptor_opts to = {
        .listen = addr,
        .role = TT_TLS_SERVER_OPTIONAL_CLIENT,
        .identity = webhook_identity,
        .on_accept = on_webhook_accept,
        .count = on_webhook_shed,
        .ud = c,
        .name = "webhook",
        .flag = "--listen-webhook",
        .max_conns = API_MAX_CONNS,
        .max_per_source = API_MAX_CONNS,
    };
    char err[1024] = "";

    if (f->listen_webhook == NULL)
        return 0;
    c->webhook = cp_webhook_new(c->loop, &io, c->ca, err, sizeof(err));
    if (c->webhook == NULL)
        goto fail;
    if (!c->handoff_init) {
        uv_async_init(c->loop, &c->handoff_async, on_handoff);
        c->handoff_async.data = c;
        c->handoff_init = true;
    }
    c->webhook_acceptor = cp_tls_acceptor_new(&to, err, sizeof(err));
    if (c->webhook_acceptor == NULL)
        goto fail;
    tt_log(TT_LOG_INFO, "webhook_listening", TT_LS("addr", f->listen_webhook),
           TT_LI("port", cp_tls_acceptor_port(c->webhook_acceptor)),
           TT_LS("image", f->sidecar_image ? f->sidecar_image : CP_INJECT_DEFAULT_IMAGE));
    return 0;
fail:
    tt_log(TT_LOG_ERROR, "control_start_failed", TT_LS("error", err));
    fprintf(stderr, "tether-control: --listen-webhook: %s\n", err);
    return EXIT_RUNTIME;
}

/* Revokes the certificates for reserved identities that the workload signing path issued
 * before it refused them (store.h: cp_store_revoke_reserved), saying how many. Returns 0 or
 * EXIT_RUNTIME after a message. */
static int revoke_reserved(struct cp_store *store)
{
    size_t n = 0;
    int rc = cp_store_revoke_reserved(store, &n);

    if (n > 0)
        tt_log(TT_LOG_WARN, "reserved_certificates_revoked", TT_LU("count", n),
               TT_LS("why", "issued for ns/" TT_SPIFFE_RESERVED_NS
                            " outside `tetherctl admin-cert create`; re-create admin "
                            "certificates with it"));
    if (rc == 0)
        return 0;
    tt_log(TT_LOG_ERROR, "state_write_failed", TT_LS("error", strerror(-rc)));
    fprintf(stderr, "tether-control: revoking reserved-identity certificates: %s\n", strerror(-rc));
    return EXIT_RUNTIME;
}

/* Adds name to names[*n] unless it is there already (cap MAX_SERVING_NAMES + 1). */
static void add_name(const char **names, size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(names[i], name) == 0)
            return;
    if (*n < MAX_SERVING_NAMES + 1)
        names[(*n)++] = name;
}

/* The serving certificate's names: each --serving-name, or else the defaults (see the
 * usage text), with the --listen-sidecars host unless it is a wildcard; `host` is the
 * caller's buffer for it. Returns 0, or EXIT_USAGE after a message naming the bad one. */
static int serving_names(const struct flags *f, char *host, size_t hostlen, const char **names,
                         size_t *n)
{
    static const char *const defaults[] = {"localhost", "127.0.0.1", "::1",
                                           "tether-control.tether-system.svc",
                                           "tether-control.tether-system.svc.cluster.local"};
    const char *colon = strrchr(f->listen_sidecars, ':');
    size_t len = colon != NULL ? (size_t)(colon - f->listen_sidecars) : 0;

    *n = 0;
    for (size_t i = 0; i < f->n_serving_names; i++) {
        if (cp_ca_check_serving_name(f->serving_names[i]) != 0)
            return die_usage("--serving-name: expected a DNS name (letters, digits, hyphens "
                             "and dots; no wildcard) or an IP address, got ",
                             f->serving_names[i]);
        add_name(names, n, f->serving_names[i]);
    }
    if (*n > 0)
        return 0;
    for (size_t i = 0; i < TT_ARRAY_SIZE(defaults); i++)
        add_name(names, n, defaults[i]);
    /* "[::1]:15012" -> "::1", "10.0.0.5:15012" -> "10.0.0.5"; not 0.0.0.0 or ::. */
    if (len >= 2 && f->listen_sidecars[0] == '[' && f->listen_sidecars[len - 1] == ']')
        snprintf(host, hostlen, "%.*s", (int)(len - 2), f->listen_sidecars + 1);
    else
        snprintf(host, hostlen, "%.*s", (int)len, f->listen_sidecars);
    if (strcmp(host, "0.0.0.0") != 0 && strcmp(host, "::") != 0 &&
        cp_ca_check_serving_name(host) == 0)
        add_name(names, n, host);
    return 0;
}

/* The client of --kubeconfig FILE's current context, or NULL after a usage message. */
static struct cp_k8s_client *k8s_client_from_kubeconfig(const char *path)
{
    struct cp_k8s_client_opts o = {.timeout_ms = 5000};
    struct cp_k8s_kubeconfig kc;
    struct cp_k8s_client *k = NULL;
    json_t *docs = NULL;
    char *text = NULL, err[1024];
    size_t len = 0;
    int rc = tt_file_read(path, 1024 * 1024, &text, &len);

    if (rc != 0) {
        snprintf(err, sizeof(err), "%s: %s", path,
                 rc == -EFBIG ? "larger than 1 MiB" : strerror(-rc));
        goto fail;
    }
    if (cp_yaml_parse(text, len, path, &docs, err, sizeof(err)) != 0)
        goto fail;
    if (cp_k8s_kubeconfig_load(json_array_get(docs, 0), path, &kc, err, sizeof(err)) != 0)
        goto fail;
    cp_k8s_kubeconfig_opts(&kc, &o);
    k = cp_k8s_client_new(&o, err, sizeof(err));
    cp_k8s_kubeconfig_done(&kc);
    if (k == NULL)
        goto fail;
    json_decref(docs);
    tt_crypto_wipe(text, len);
    free(text);
    return k;
fail:
    json_decref(docs);
    if (text != NULL)
        tt_crypto_wipe(text, len);
    free(text);
    die_usage("--kubeconfig: ", err);
    return NULL;
}

/* Builds the Kubernetes API client from the flags: --kubernetes-api and its files, else
 * in-cluster (KUBERNETES_SERVICE_HOST/PORT, the service account's token and CA). Returns
 * the client, or NULL after a usage message (*rc = EXIT_USAGE). */
static struct cp_k8s_client *k8s_client_from_flags(const struct flags *f, int *rc)
{
    struct cp_k8s_client_opts o = {.timeout_ms = 5000};
    const char *host = getenv("KUBERNETES_SERVICE_HOST"), *port = getenv("KUBERNETES_SERVICE_PORT");
    char url[600], err[512];
    struct cp_k8s_client *k;

    *rc = EXIT_USAGE;
    if (f->kubeconfig != NULL)
        return k8s_client_from_kubeconfig(f->kubeconfig);
    if (f->k8s_api != NULL) {
        snprintf(url, sizeof(url), "%s", f->k8s_api);
    } else if (host != NULL && host[0] && port != NULL && port[0]) {
        bool v6 = strchr(host, ':') != NULL;

        snprintf(url, sizeof(url), "https://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port);
    } else {
        die_usage("--kubernetes: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set "
                  "(not in a pod?); give --kubernetes-api URL or --kubeconfig FILE",
                  NULL);
        return NULL;
    }
    o.server = url;
    o.token_file = f->k8s_token_file ? f->k8s_token_file : CP_K8S_TOKEN_FILE;
    o.ca_file = f->k8s_ca_file ? f->k8s_ca_file : CP_K8S_CA_FILE;
    k = cp_k8s_client_new(&o, err, sizeof(err));
    if (k == NULL)
        die_usage("--kubernetes: ", err);
    return k;
}

/* Starts the Kubernetes watcher with client k (taken). Returns 0 or EXIT_RUNTIME. */
static int start_k8s(struct control *c, const struct flags *f, struct cp_k8s_client *k)
{
    struct cp_k8s_watch_opts o = {.client = k,
                                  .store = c->store,
                                  .trust_domain = f->trust_domain,
                                  .webhook_config = f->webhook_config};
    struct cp_k8s_watch *w;
    char err[512];

    w = cp_k8s_watch_start(&o, err, sizeof(err));
    if (w == NULL) {
        tt_log(TT_LOG_ERROR, "control_start_failed", TT_LS("error", err));
        return EXIT_RUNTIME;
    }
    pthread_mutex_lock(&c->k8s_lock);
    c->k8s = w;
    pthread_mutex_unlock(&c->k8s_lock);
    tt_log(TT_LOG_INFO, "kubernetes_watching", TT_LS("api", cp_k8s_client_where(k)),
           TT_LS("webhook_config", f->webhook_config));
    return 0;
}

/* Parses the sidecar port's bounds into so and fits the connection bound to the open-files
 * limit (raised to the hard limit first): the default is lowered to what fits, with one
 * line; an explicit --sidecar-max-connections above it is kept, with one line (the
 * acceptor then rides out descriptor shortages, tls_acceptor.h). Returns 0 or EXIT_USAGE. */
static int sidecar_bounds(const struct flags *f, size_t n_api, struct cp_sidecar_api_opts *so)
{
    const char *hs = f->sidecar_handshake ? f->sidecar_handshake : SIDECAR_HANDSHAKE_DEFAULT;
    const char *fc = f->sidecar_first_call ? f->sidecar_first_call : SIDECAR_FIRST_CALL_DEFAULT;
    uint64_t nofile, hard, kept = FD_RESERVE_BASE + FD_RESERVE_PER_API * n_api, fits;
    unsigned long v;
    char *end;
    int err;

    if (tt_duration_parse(hs, &so->handshake_ms) != 0 || so->handshake_ms == 0)
        return die_usage("--sidecar-handshake-timeout: expected a duration above 0 (e.g. 10s), "
                         "got ",
                         hs);
    if (strcmp(fc, "0") != 0 && (tt_duration_parse(fc, &so->first_call_ms) != 0))
        return die_usage("--sidecar-first-call-timeout: expected a duration (e.g. 10s) or 0, "
                         "got ",
                         fc);
    so->max_conns = SIDECAR_MAX_CONNS_DEFAULT;
    so->max_per_source = SIDECAR_MAX_PER_SOURCE;
    if (f->sidecar_max_conns != NULL) {
        errno = 0;
        v = strtoul(f->sidecar_max_conns, &end, 10);
        if (errno != 0 || *end != '\0' || end == f->sidecar_max_conns || v == 0 || v > 1000000)
            return die_usage("--sidecar-max-connections: expected a number from 1 to 1000000, "
                             "got ",
                             f->sidecar_max_conns);
        so->max_conns = (unsigned)v;
    }
    if (f->sidecar_max_per_source != NULL) {
        errno = 0;
        v = strtoul(f->sidecar_max_per_source, &end, 10);
        if (errno != 0 || *end != '\0' || end == f->sidecar_max_per_source || v == 0 || v > 1000000)
            return die_usage("--sidecar-max-per-source: expected a number from 1 to 1000000, "
                             "got ",
                             f->sidecar_max_per_source);
        so->max_per_source = (unsigned)v;
    }

    err = tt_nofile_raise(&nofile, &hard);
    if (err < 0)
        tt_log(TT_LOG_WARN, "open_files_limit_kept", TT_LU("open_files_limit", nofile),
               TT_LU("hard_limit", hard), TT_LS("error", tt_strerror(err)));
    if (nofile == UINT64_MAX)
        return 0;
    fits = nofile > kept + CP_TLS_FDS_PER_CONN ? (nofile - kept) / CP_TLS_FDS_PER_CONN : 1;
    if (so->max_conns <= fits)
        return 0;
    tt_log(TT_LOG_WARN,
           f->sidecar_max_conns != NULL ? "max_connections_above_open_files"
                                        : "max_connections_capped",
           TT_LS("listener", "sidecar"), TT_LU("requested", so->max_conns),
           TT_LU("max_connections", f->sidecar_max_conns != NULL ? so->max_conns : fits),
           TT_LU("open_files_limit", nofile), TT_LU("reserved_fds", kept),
           TT_LS("reason", "each sidecar connection holds three descriptors; raise the hard "
                           "open-files limit (ulimit -Hn, LimitNOFILE=) to admit more"));
    if (f->sidecar_max_conns == NULL)
        so->max_conns = (unsigned)fits;
    if (so->max_per_source > so->max_conns)
        so->max_per_source = so->max_conns;
    return 0;
}

/* --jwks, --jwt-audience and --jwt-issuer into `so`: the JWK Set is read now (a bad file
 * is a usage error naming the file and the key); --jwks needs --jwt-audience, --jwt-issuer
 * needs --jwks. Returns 0 or EXIT_USAGE after a message. */
static int jwt_flags(const struct flags *f, struct cp_sidecar_api_opts *so)
{
    char err[1024];

    if (f->jwks == NULL) {
        /* --jwt-audience alone still names the audience the webhook injects. */
        if (f->jwt_issuer != NULL)
            return die_usage("--jwt-issuer needs --jwks FILE", NULL);
        return 0;
    }
    if (f->jwt_audience == NULL || f->jwt_audience[0] == '\0')
        return die_usage("--jwks needs --jwt-audience AUD (the audience the service-account "
                         "tokens are projected for)",
                         NULL);
    if (f->jwt_issuer != NULL && f->jwt_issuer[0] == '\0')
        return die_usage("--jwt-issuer: expected the issuer (iss) of the tokens, got nothing",
                         NULL);
    so->jwks = cp_jwks_file_open(f->jwks, err, sizeof(err));
    if (so->jwks == NULL)
        return die_usage(err, NULL);
    so->jwt_audience = f->jwt_audience;
    so->jwt_issuer = f->jwt_issuer;
    so->trust_domain = f->trust_domain;
    return 0;
}

/* tether-control's entry: parses and checks flags, opens the store and the CA, starts the sidecar
 * API and each operator API, then runs the loop until SIGTERM or SIGINT. Returns 0 after a signal
 * (or --help), 1 when start-up fails, 2 for bad flags. */
int main(int argc, char **argv)
{
    struct flags f = {.trust_domain = "cluster.local",
                      .listen_sidecars = "0.0.0.0:15012",
                      .cert_ttl = "1h",
                      .log_level = "info",
                      .registration_grace = "60s"};
    struct control c = {0};
    struct cp_ca_opts co = {0};
    struct cp_sidecar_api_opts so = {0};
    const char *names[MAX_SERVING_NAMES + 1];
    char listen_host[300];
    struct tt_addr sidecar_addr, webhook_addr;
    struct cp_k8s_client *k8s = NULL;
    enum tt_log_level level;
    char td_id[600], err[1024] = "";
    uint64_t ttl_ms, grace_ms, tick_ms;
    int rc, state_lock_fd = -1; /* held until exit: the state directory is ours */

    signal(SIGPIPE, SIG_IGN);
    rc = parse_flags(argc, argv, &f);
    if (rc != 0)
        return rc < 0 ? 0 : rc;
    if (tt_log_level_parse(f.log_level, &level) != 0)
        return die_usage("--log-level: expected debug, info, warn or error, got ", f.log_level);
    tt_log_set_level(level);
    if (f.state_dir == NULL || f.state_dir[0] == '\0')
        return die_usage("--state-dir is required", NULL);
    snprintf(td_id, sizeof(td_id), "spiffe://%s", f.trust_domain);
    if (tt_spiffe_check(td_id, strlen(td_id), true) != 0)
        return die_usage("--trust-domain: not a valid trust domain: ", f.trust_domain);
    if (tt_duration_parse(f.cert_ttl, &ttl_ms) != 0 || ttl_ms < 1000)
        return die_usage("--cert-ttl: expected a duration of at least 1s (e.g. 10s, 1h), got ",
                         f.cert_ttl);
    if (tt_duration_parse(f.registration_grace, &grace_ms) != 0)
        return die_usage("--registration-grace: expected a duration (e.g. 60s, 0s), got ",
                         f.registration_grace);
    if ((f.ca_cert == NULL) != (f.ca_key == NULL))
        return die_usage("--ca-cert and --ca-key go together", NULL);
    if (f.ca_chain != NULL && f.ca_cert == NULL)
        return die_usage("--ca-chain needs --ca-cert and --ca-key", NULL);
    rc = tt_addr_parse(f.listen_sidecars, 1, &sidecar_addr);
    if (rc != 0)
        return die_usage("--listen-sidecars: expected IP:PORT, [IPv6]:PORT or host:PORT, got ",
                         f.listen_sidecars);
    if (f.listen_webhook != NULL && tt_addr_parse(f.listen_webhook, 1, &webhook_addr) != 0)
        return die_usage("--listen-webhook: expected IP:PORT, [IPv6]:PORT or host:PORT, got ",
                         f.listen_webhook);
    rc = serving_names(&f, listen_host, sizeof(listen_host), names, &so.n_serving_names);
    if (rc != 0)
        return rc;
    so.serving_names = names;
    if (f.n_listen_api == 0)
        f.listen_api[f.n_listen_api++] = "127.0.0.1:15014";
    for (size_t i = 0; i < f.n_listen_api; i++) {
        struct api_listener *l = &c.apis[c.n_apis++];

        l->c = &c;
        l->text = f.listen_api[i];
        if (tt_addr_parse(l->text, 1, &l->addr) != 0)
            return die_usage("--listen-api: expected IP:PORT, [IPv6]:PORT or host:PORT, got ",
                             l->text);
        l->mtls = !cp_api_addr_is_loopback(&l->addr);
    }
    for (size_t i = 0; i < f.n_admin_ids; i++) {
        const char *id = f.admin_ids[i];
        char td[256];

        if (tt_spiffe_check(id, strlen(id), false) != 0 ||
            tt_spiffe_trust_domain(id, td, sizeof(td)) != 0 || strcmp(td, f.trust_domain) != 0)
            return die_usage("--admin-id: expected a SPIFFE ID in the trust domain "
                             "(spiffe://TD/PATH), got ",
                             id);
        /* Only the reserved namespace cannot be minted through a token: an admin anywhere
         * else could be impersonated by any workload that gets a certificate there. */
        if (!tt_spiffe_reserved(id))
            return die_usage("--admin-id: admin identities must be in the reserved namespace "
                             "spiffe://TD/ns/" TT_SPIFFE_RESERVED_NS "/... (workloads can be "
                             "issued any other identity), got ",
                             id);
    }

    rc = sidecar_bounds(&f, f.n_listen_api, &so);
    if (rc != 0)
        return rc;
    if (f.webhook_config != NULL && !f.kubernetes && f.kubeconfig == NULL)
        return die_usage("--webhook-config needs --kubernetes (or --kubeconfig)", NULL);
    if (f.webhook_config != NULL && !cp_k8s_name_valid(f.webhook_config, 253, true))
        return die_usage("--webhook-config: expected an object name (lower-case letters, "
                         "digits, '-' and '.'), got ",
                         f.webhook_config);
    if (f.kubeconfig != NULL &&
        (f.k8s_api != NULL || f.k8s_token_file != NULL || f.k8s_ca_file != NULL))
        return die_usage("--kubeconfig gives the API server and credentials: not with "
                         "--kubernetes-api, --kubernetes-token-file or --kubernetes-ca-file",
                         NULL);
    if (!f.kubernetes && f.kubeconfig == NULL &&
        (f.k8s_api != NULL || f.k8s_token_file != NULL || f.k8s_ca_file != NULL))
        return die_usage("--kubernetes-api, --kubernetes-token-file and --kubernetes-ca-file "
                         "need --kubernetes",
                         NULL);
    rc = jwt_flags(&f, &so);
    if (rc != 0)
        return rc;
    if (f.kubernetes || f.kubeconfig != NULL) {
        k8s = k8s_client_from_flags(&f, &rc);
        if (k8s == NULL) {
            cp_jwks_file_free(so.jwks);
            return rc;
        }
    }

    /* One control plane per state directory: a second one would overwrite the first's
     * files (last writer wins) or race it creating the CA. */
    rc = cp_state_dir_lock(f.state_dir, &state_lock_fd, err, sizeof(err));
    if (rc < 0) {
        tt_log(TT_LOG_ERROR, "state_locked", TT_LS("error", err));
        fprintf(stderr, "tether-control: %s\n", err);
        cp_k8s_client_free(k8s);
        cp_jwks_file_free(so.jwks);
        return rc == -EBUSY ? EXIT_USAGE : EXIT_RUNTIME;
    }
    c.store = cp_store_open(f.state_dir, err, sizeof(err));
    if (c.store == NULL) {
        tt_log(TT_LOG_ERROR, "state_invalid", TT_LS("error", err));
        fprintf(stderr, "tether-control: %s\n", err);
        cp_k8s_client_free(k8s);
        cp_jwks_file_free(so.jwks);
        return EXIT_RUNTIME;
    }
    co.state_dir = f.state_dir;
    co.trust_domain = f.trust_domain;
    co.cert_file = f.ca_cert;
    co.key_file = f.ca_key;
    co.chain_file = f.ca_chain;
    co.max_ttl_ms = ttl_ms;
    c.ca = cp_ca_open(&co, err, sizeof(err));
    if (c.ca == NULL) {
        tt_log(TT_LOG_ERROR, "ca_invalid", TT_LS("error", err));
        fprintf(stderr, "tether-control: %s\n", err);
        rc = EXIT_RUNTIME;
        goto out_store;
    }
    /* The credential last: a start refused over a bad state directory leaves it as it was. */
    rc = cp_operator_token_ensure(f.state_dir, c.operator_token, err, sizeof(err));
    if (rc < 0) {
        tt_log(TT_LOG_ERROR, "operator_token_invalid", TT_LS("error", err));
        fprintf(stderr, "tether-control: %s\n", err);
        rc = EXIT_RUNTIME;
        goto out_ca;
    }
    rc = revoke_reserved(c.store);
    if (rc != 0)
        goto out_ca;
    rc = cp_store_bundle_set(c.store, cp_ca_bundle_pem(c.ca));
    if (rc != 0) {
        tt_log(TT_LOG_ERROR, "state_write_failed", TT_LS("error", strerror(-rc)));
        rc = EXIT_RUNTIME;
        goto out_ca;
    }

    c.loop = uv_default_loop();
    pthread_mutex_init(&c.handoff_lock, NULL);
    pthread_mutex_init(&c.k8s_lock, NULL);
    /* The sidecar side first: it owns the serving identity the mTLS API presents. */
    rc = start_sidecar_side(&c, &sidecar_addr, ttl_ms, &so);
    if (rc != 0)
        goto out_lock;
    rc = start_apis(&c, &f);
    if (rc == 0)
        rc = start_webhook(&c, &f, &webhook_addr);
    if (rc != 0) {
        apis_stop(&c);
        cp_sidecar_api_free(c.sidecars);
        c.sidecars = NULL;
        uv_run(c.loop, UV_RUN_DEFAULT);
        goto out_lock;
    }
    if (k8s != NULL) {
        rc = start_k8s(&c, &f, k8s); /* takes k8s */
        k8s = NULL;
        if (rc != 0) {
            apis_stop(&c);
            cp_sidecar_api_free(c.sidecars);
            c.sidecars = NULL;
            uv_run(c.loop, UV_RUN_DEFAULT);
            goto out_lock;
        }
    }
    cp_store_set_registration_grace(c.store, grace_ms);
    uv_timer_init(c.loop, &c.reg_timer);
    c.reg_timer.data = &c;
    /* A registration goes at most a tick after its grace: a quarter of it, 100ms..1s. */
    tick_ms = grace_ms / 4 < 100 ? 100 : grace_ms / 4 > 1000 ? 1000 : grace_ms / 4;
    uv_timer_start(&c.reg_timer, on_reg_timer, tick_ms, tick_ms);
    uv_signal_init(c.loop, &c.sigterm);
    uv_signal_init(c.loop, &c.sigint);
    c.sigterm.data = &c;
    c.sigint.data = &c;
    uv_signal_start(&c.sigterm, on_signal, SIGTERM);
    uv_signal_start(&c.sigint, on_signal, SIGINT);
    tt_log(TT_LOG_INFO, "control_started", TT_LS("trust_domain", f.trust_domain),
           TT_LS("state_dir", f.state_dir), TT_LS("cert_ttl", f.cert_ttl),
           TT_LU("version", cp_store_version(c.store)));
    if (so.jwks != NULL)
        tt_log(TT_LOG_INFO, "jwt_proof_accepted", TT_LS("jwks", f.jwks),
               TT_LS("audience", f.jwt_audience),
               TT_LS("issuer", f.jwt_issuer != NULL ? f.jwt_issuer : "(any)"));
    uv_run(c.loop, UV_RUN_DEFAULT);
    uv_loop_close(c.loop);
    tt_log(TT_LOG_INFO, "control_stopped", TT_LS("state_dir", f.state_dir));
    rc = 0;
out_lock:
    pthread_mutex_destroy(&c.handoff_lock);
    pthread_mutex_destroy(&c.k8s_lock);
out_ca:
    cp_ca_free(c.ca);
out_store:
    cp_k8s_client_free(k8s);
    cp_store_free(c.store);
    cp_jwks_file_free(so.jwks);
    tt_crypto_wipe(c.operator_token, sizeof(c.operator_token));
    return rc;
}
