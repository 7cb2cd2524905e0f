/* The sidecar API: Identity.Sign and Discovery.Watch behind the TLS acceptor
 * (sidecar_api.h, tls_acceptor.h). */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "ca.h"
#include "core/errors.h"
#include "grpc_glue.h"
#include "jwks.h"
#include "jwt.h"
#include "tls/identity.h"
#include "core/log.h"
#include "sidecar_api.h"
#include "core/spiffe.h"
#include "store.h"
#include "tether/v1/tether.pb-c.h"
#include "tls/tls.h"
#include "tls_acceptor.h"
#include "core/util.h"

#define API_SERVING_TTL_MS (24ULL * 3600 * 1000)
/* When an operator has set no policy yet, sidecars get the document DESIGN.md implies:
 * deny everything (a mesh is closed until someone opens it). */
#define API_DEFAULT_POLICY "{\"default\": \"deny\", \"rules\": []}"

/* One open Discovery.Watch stream. */
struct watcher {
    struct watcher *next;
    struct tt_grpc_stream *st;
    char key[32];
    char spiffe_id[TT_SPIFFE_MAX + 1];
    char serial[TT_SERIAL_MAX];
    bool hello;
    uint64_t sent_version;
};

struct cp_sidecar_api {
    struct cp_ca *ca;
    struct cp_store *store;
    uint64_t cert_ttl_ms;
    const char **serving_names; /* DNS/IP names of the serving certificate (copied) */
    size_t n_serving_names;
    struct cp_tls_acceptor *acceptor;
    struct tt_grpc_server *grpc;
    struct cp_jwks_file *jwks; /* NULL: service-account tokens are not accepted */
    char *jwt_audience, *jwt_issuer, *trust_domain;

    pthread_mutex_t lock; /* guards everything below */
    struct tt_identity *serving;
    int64_t serving_renew_at;
    struct watcher *watchers;
    uint64_t next_watcher;
};

/* ---- Identity.Sign ----------------------------------------------------------------- */

/* Refuses a Sign call: logged, counted by reason, answered with a status that says why. */
static void sign_refuse(struct cp_sidecar_api *api, struct tt_grpc_reply *reply,
                        grpc_status_code code, const char *reason, const struct tt_grpc_peer *peer,
                        const char *asked, const char *msg)
{
    cp_store_count_refusal(api->store, reason);
    tt_log(TT_LOG_WARN, "sign_refused", TT_LS("reason", reason), TT_LS("detail", msg),
           TT_LS("spiffe_id", asked), TT_LS("peer_id", peer->spiffe_id),
           TT_LS("peer_serial", peer->serial), TT_LS("peer", peer->address));
    tt_grpc_reply_error(reply, code, "%s: %s", reason, msg);
}

/* Proof (c): verifies a service-account token (jwt.h) with the --jwks keys (read again
 * first if the file changed) and checks that it maps to exactly `asked`. Returns 0, or
 * -1 after refusing the call (counted by reason). */
static int sign_check_jwt(struct cp_sidecar_api *api, struct tt_grpc_reply *reply,
                          const struct tt_grpc_peer *peer, const char *asked, const char *token)
{
    struct cp_jwt_check chk = {.audience = api->jwt_audience,
                               .issuer = api->jwt_issuer,
                               .trust_domain = api->trust_domain,
                               .now = tt_now_unix()};
    char mapped[TT_SPIFFE_MAX + 1], detail[400], err[1024];
    enum cp_jwt_err why;
    int r;

    if (api->jwks == NULL) {
        sign_refuse(api, reply, GRPC_STATUS_UNIMPLEMENTED, "unsupported_proof", peer, asked,
                    "this control plane takes no Kubernetes service-account tokens (start it "
                    "with --jwks and --jwt-audience)");
        return -1;
    }
    r = cp_jwks_file_refresh(api->jwks, err, sizeof(err));
    if (r > 0)
        tt_log(TT_LOG_INFO, "jwks_reloaded", TT_LS("file", cp_jwks_file_path(api->jwks)),
               TT_LS("keys", err));
    else if (r < 0)
        tt_log(TT_LOG_WARN, "jwks_reload_failed", TT_LS("error", err),
               TT_LS("keeping", "the keys read before"));
    why = cp_jwt_verify(api->jwks, token, strlen(token), &chk, mapped, sizeof(mapped), detail,
                        sizeof(detail));
    if (why != CP_JWT_OK) {
        snprintf(err, sizeof(err), "service-account token refused: %s", detail);
        sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, cp_jwt_err_name(why), peer, asked,
                    err);
        return -1;
    }
    if (tt_spiffe_reserved(mapped)) { /* never, whatever the token says (DESIGN.md) */
        sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, "reserved_identity", peer, asked,
                    CP_RESERVED_REFUSAL);
        return -1;
    }
    if (strcmp(mapped, asked) != 0) {
        snprintf(err, sizeof(err), "the service-account token proves %.240s, not %.240s", mapped,
                 asked);
        sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, "identity_mismatch", peer, asked,
                    err);
        return -1;
    }
    return 0;
}

static void on_sign(void *ud, const struct tt_grpc_peer *peer, const ProtobufCMessage *msg,
                    struct tt_grpc_reply *reply)
{
    struct cp_sidecar_api *api = ud;
    const Tether__V1__SignRequest *req = (const Tether__V1__SignRequest *)msg;
    Tether__V1__SignResponse resp = TETHER__V1__SIGN_RESPONSE__INIT;
    const char *asked = req->spiffe_id != NULL ? req->spiffe_id : "";
    const char *proof, *token = NULL, *via = CP_VIA_TOKEN;
    struct cp_ca_cert cert = {0};
    char err[512];
    int r;

    if (tt_spiffe_check(asked, strlen(asked), false) != 0) {
        sign_refuse(api, reply, GRPC_STATUS_INVALID_ARGUMENT, "bad_spiffe_id", peer, asked,
                    "spiffe_id is not a valid SPIFFE ID");
        return;
    }
    if (tt_spiffe_reserved(asked)) { /* whatever the proof: see DESIGN.md */
        sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, "reserved_identity", peer, asked,
                    CP_RESERVED_REFUSAL);
        return;
    }
    if (req->bootstrap_token != NULL && req->bootstrap_token[0] != '\0') {
        /* Proof (a): an operator's token for exactly this identity. Only checked here:
         * it is used when the certificate is recorded, so a refused CSR costs no use. */
        enum cp_token_err why = CP_TOKEN_OK;
        if (cp_store_token_check(api->store, req->bootstrap_token, asked, &why) < 0) {
            snprintf(err, sizeof(err), "bootstrap token refused for %s", asked);
            sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, cp_token_err_name(why), peer,
                        asked, err);
            return;
        }
        token = req->bootstrap_token;
        proof = "bootstrap_token";
    } else if (req->k8s_sa_token != NULL && req->k8s_sa_token[0] != '\0') {
        /* Proof (c): a Kubernetes service-account token. Not single-use: valid for any
         * number of Signs until it expires, as kubelet's projected tokens are. */
        if (sign_check_jwt(api, reply, peer, asked, req->k8s_sa_token) < 0)
            return;
        proof = "k8s_sa_token";
        via = CP_VIA_K8S_JWT;
    } else {
        /* Proof (b): renewal with the current certificate on this connection; TLS has
         * already checked its chain and validity dates. */
        via = CP_VIA_RENEWAL;
        if (peer->spiffe_id == NULL) {
            sign_refuse(api, reply, GRPC_STATUS_UNAUTHENTICATED, "no_proof", peer, asked,
                        "give a bootstrap token or a service-account token, or present the "
                        "current certificate");
            return;
        }
        if (cp_store_is_revoked(api->store, peer->serial)) {
            snprintf(err, sizeof(err), "certificate %s is revoked", peer->serial);
            sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, "revoked", peer, asked, err);
            return;
        }
        if (strcmp(peer->spiffe_id, asked) != 0) {
            snprintf(err, sizeof(err), "the certificate proves %s, not %s", peer->spiffe_id, asked);
            sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, "identity_mismatch", peer, asked,
                        err);
            return;
        }
        proof = "certificate";
    }

    r = cp_ca_sign_csr(api->ca, req->csr_der.data, req->csr_der.len, asked, api->cert_ttl_ms, &cert,
                       err, sizeof(err));
    if (r < 0) {
        sign_refuse(api, reply,
                    r == TT_E_CA_INTERNAL ? GRPC_STATUS_INTERNAL : GRPC_STATUS_INVALID_ARGUMENT,
                    cp_ca_err_reason(r), peer, asked, err);
        return;
    }
    /* Nothing is handed out that is not recorded (else it could not be found to revoke):
     * the record, and the token's use with it, are saved first. */
    if (token != NULL) {
        enum cp_token_err why = CP_TOKEN_OK;
        r = cp_store_issued_add_token(api->store, cert.serial, asked, cert.not_after, tt_now_unix(),
                                      token, &why);
        if (r == TT_E_DENIED) {
            snprintf(err, sizeof(err), "bootstrap token refused for %s", asked);
            sign_refuse(api, reply, GRPC_STATUS_PERMISSION_DENIED, cp_token_err_name(why), peer,
                        asked, err);
            goto out;
        }
    } else {
        r = cp_store_issued_add(api->store, cert.serial, asked, cert.not_after, tt_now_unix(), via);
    }
    if (r < 0) {
        snprintf(err, sizeof(err), "saving %s: %s (certificate %s not issued)", CP_STORE_JOURNAL,
                 strerror(-r), cert.serial);
        sign_refuse(api, reply, GRPC_STATUS_UNAVAILABLE, "store_unavailable", peer, asked, err);
        goto out;
    }
    resp.cert_chain_pem = cert.chain_pem;
    resp.trust_bundle_pem = (char *)cp_ca_bundle_pem(api->ca);
    resp.not_after_unix = cert.not_after;
    resp.serial = cert.serial;
    tt_grpc_reply_message(reply, &resp.base);
    /* A call that did what it came for: the connection is no longer idle-after-TLS. */
    cp_tls_acceptor_mark_called(api->acceptor, peer->address);
    tt_log(TT_LOG_INFO, "certificate_signed", TT_LS("spiffe_id", asked),
           TT_LS("serial", cert.serial), TT_LI("not_after", cert.not_after), TT_LS("proof", proof),
           TT_LS("peer", peer->address));
out:
    cp_ca_cert_done(&cert);
}

/* ---- Discovery.Watch --------------------------------------------------------------- */

/* Sends `snap` to w unless it already has that version. Called with api->lock held. */
static void watcher_send(struct watcher *w, const struct cp_snapshot *snap)
{
    Tether__V1__Snapshot msg = TETHER__V1__SNAPSHOT__INIT;
    Tether__V1__ServiceEntry *entries = NULL, **entry_ptrs = NULL;
    Tether__V1__Revocation *revs = NULL, **rev_ptrs = NULL;

    if (!w->hello || w->sent_version >= snap->version)
        return;
    msg.version = snap->version;
    msg.trust_bundle_pem = snap->bundle_pem;
    msg.policy_json = snap->policy_json != NULL ? snap->policy_json : API_DEFAULT_POLICY;
    msg.revoked_serials = snap->revoked;
    msg.n_revoked_serials = snap->n_revoked;
    if (snap->n_revoked > 0) {
        revs = calloc(snap->n_revoked, sizeof(*revs));
        rev_ptrs = calloc(snap->n_revoked, sizeof(*rev_ptrs));
        if (revs == NULL || rev_ptrs == NULL)
            goto out;
        for (size_t i = 0; i < snap->n_revoked; i++) {
            tether__v1__revocation__init(&revs[i]);
            revs[i].serial = snap->revoked[i];
            revs[i].not_after_unix = snap->revoked_not_after[i];
            rev_ptrs[i] = &revs[i];
        }
        msg.revocations = rev_ptrs;
        msg.n_revocations = snap->n_revoked;
    }
    if (snap->n_services > 0) {
        entries = calloc(snap->n_services, sizeof(*entries));
        entry_ptrs = calloc(snap->n_services, sizeof(*entry_ptrs));
        if (entries == NULL || entry_ptrs == NULL)
            goto out;
        for (size_t i = 0; i < snap->n_services; i++) {
            tether__v1__service_entry__init(&entries[i]);
            entries[i].address = snap->services[i].address;
            entries[i].spiffe_id = snap->services[i].spiffe_id;
            entries[i].service_address = snap->services[i].service_address;
            entry_ptrs[i] = &entries[i];
        }
        msg.services = entry_ptrs;
        msg.n_services = snap->n_services;
    }
    if (tt_grpc_stream_send(w->st, &msg.base) == 0)
        w->sent_version = snap->version;
out:
    free(entries);
    free(entry_ptrs);
    free(revs);
    free(rev_ptrs);
}

/* Pushes the store's snapshot to every watcher and cuts revoked peers off. */
void cp_sidecar_api_push(struct cp_sidecar_api *api)
{
    struct cp_snapshot *snap = cp_store_snapshot(api->store);

    if (snap == NULL)
        return;
    pthread_mutex_lock(&api->lock);
    for (struct watcher *w = api->watchers; w != NULL; w = w->next) {
        if (cp_store_is_revoked(api->store, w->serial)) {
            tt_grpc_stream_finish(w->st, GRPC_STATUS_PERMISSION_DENIED,
                                  "revoked: this sidecar's certificate is revoked");
            continue;
        }
        watcher_send(w, snap);
    }
    pthread_mutex_unlock(&api->lock);
    /* A revocation also closes the connection itself, not only the stream on it. */
    cp_tls_acceptor_sweep(api->acceptor);
    cp_snapshot_free(snap);
}

static void on_watch_open(void *ud, struct tt_grpc_stream *st, const struct tt_grpc_peer *peer)
{
    struct cp_sidecar_api *api = ud;
    struct watcher *w;

    if (peer->spiffe_id == NULL) {
        tt_grpc_stream_finish(st, GRPC_STATUS_UNAUTHENTICATED,
                              "no_proof: Discovery.Watch needs the sidecar's certificate");
        return;
    }
    if (cp_store_is_revoked(api->store, peer->serial)) {
        cp_store_count_refusal(api->store, "revoked");
        tt_grpc_stream_finish(st, GRPC_STATUS_PERMISSION_DENIED,
                              "revoked: this sidecar's certificate is revoked");
        return;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        tt_grpc_stream_finish(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    w->st = tt_grpc_stream_ref(st);
    snprintf(w->spiffe_id, sizeof(w->spiffe_id), "%s", peer->spiffe_id);
    snprintf(w->serial, sizeof(w->serial), "%s", peer->serial != NULL ? peer->serial : "");
    pthread_mutex_lock(&api->lock);
    snprintf(w->key, sizeof(w->key), "w%llu", (unsigned long long)++api->next_watcher);
    w->next = api->watchers;
    api->watchers = w;
    pthread_mutex_unlock(&api->lock);
    tt_grpc_stream_set_data(st, w);
    cp_tls_acceptor_mark_called(api->acceptor, peer->address);
    cp_store_sidecar_seen(api->store, w->key, w->spiffe_id, peer->address, "");
    tt_log(TT_LOG_INFO, "watch_opened", TT_LS("spiffe_id", w->spiffe_id),
           TT_LS("serial", w->serial), TT_LS("stream", w->key));
}

/* The Hello: registration of the inbound addresses the sidecar serves, accepted only at
 * the IP its connection comes from (as the acceptor observed it, never as the sidecar
 * claims) and under the identity its certificate proves (cp_store_registration_set);
 * what is refused is logged, counted and listed with the sidecar. */
static void watch_hello(struct cp_sidecar_api *api, struct watcher *w,
                        const Tether__V1__Hello *hello)
{
    const char *observed = tt_grpc_stream_peer(w->st)->address;
    int refused;

    cp_store_sidecar_seen(api->store, w->key, w->spiffe_id, observed,
                          hello->node != NULL ? hello->node : "");
    refused = cp_store_registration_set(api->store, w->key, w->spiffe_id, observed,
                                        (const char *const *)hello->inbound_addresses,
                                        hello->n_inbound_addresses);
    if (refused != 0)
        tt_log(TT_LOG_WARN, "registration_refused", TT_LS("spiffe_id", w->spiffe_id),
               TT_LS("peer", observed), TT_LS("stream", w->key), TT_LI("refused", refused),
               TT_LS("see", "tetherctl sidecars"));
    pthread_mutex_lock(&api->lock);
    w->hello = true;
    pthread_mutex_unlock(&api->lock);
    /* The first snapshot (the registration may already have pushed a newer one). */
    cp_sidecar_api_push(api);
}

static void on_watch_message(void *ud, struct tt_grpc_stream *st, const ProtobufCMessage *msg)
{
    struct cp_sidecar_api *api = ud;
    struct watcher *w = tt_grpc_stream_get_data(st);
    const Tether__V1__WatchRequest *req = (const Tether__V1__WatchRequest *)msg;

    if (w == NULL)
        return;
    switch (req->kind_case) {
    case TETHER__V1__WATCH_REQUEST__KIND_HELLO:
        watch_hello(api, w, req->hello);
        break;
    case TETHER__V1__WATCH_REQUEST__KIND_ACK:
        if (req->ack->accepted) {
            cp_store_sidecar_acked(api->store, w->key, req->ack->version);
        } else {
            cp_store_sidecar_nacked(api->store, w->key, req->ack->version,
                                    req->ack->reason != NULL ? req->ack->reason : "");
            tt_log(TT_LOG_WARN, "snapshot_nacked", TT_LS("spiffe_id", w->spiffe_id),
                   TT_LU("version", req->ack->version), TT_LS("reason", req->ack->reason));
        }
        break;
    default:
        tt_grpc_stream_finish(st, GRPC_STATUS_INVALID_ARGUMENT,
                              "expected a hello or an ack in WatchRequest");
        break;
    }
}

static void on_watch_close(void *ud, struct tt_grpc_stream *st, grpc_status_code code)
{
    struct cp_sidecar_api *api = ud;
    struct watcher *w = tt_grpc_stream_get_data(st);

    if (w == NULL)
        return;
    pthread_mutex_lock(&api->lock);
    for (struct watcher **pp = &api->watchers; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
    pthread_mutex_unlock(&api->lock);
    cp_store_sidecar_gone(api->store, w->key);
    tt_log(TT_LOG_INFO, "watch_closed", TT_LS("spiffe_id", w->spiffe_id), TT_LS("stream", w->key),
           TT_LI("status", code));
    tt_grpc_stream_set_data(st, NULL);
    tt_grpc_stream_unref(w->st);
    free(w);
}

/* ---- TLS acceptor ------------------------------------------------------------------ */

/* The serving identity, re-issued at half of its lifetime. Returns a reference. */
static struct tt_identity *serving_identity(struct cp_sidecar_api *api, char *err, size_t errlen)
{
    struct tt_identity *id = NULL;
    struct cp_ca_cert cert = {0};

    pthread_mutex_lock(&api->lock);
    if (api->serving != NULL && tt_now_unix() < api->serving_renew_at) {
        id = tt_identity_ref(api->serving);
        pthread_mutex_unlock(&api->lock);
        return id;
    }
    pthread_mutex_unlock(&api->lock);

    if (cp_ca_issue_serving(api->ca, API_SERVING_TTL_MS, api->serving_names, api->n_serving_names,
                            &cert, err, errlen) < 0)
        return NULL;
    const char *bundle = cp_ca_bundle_pem(api->ca);
    id = tt_identity_from_pem(cert.chain_pem, strlen(cert.chain_pem), cert.key_pem,
                              strlen(cert.key_pem), bundle, strlen(bundle), "serving certificate",
                              err, errlen);
    if (id != NULL) {
        pthread_mutex_lock(&api->lock);
        tt_identity_unref(api->serving);
        api->serving = tt_identity_ref(id);
        api->serving_renew_at = cert.not_before + (cert.not_after - cert.not_before) / 2;
        pthread_mutex_unlock(&api->lock);
        tt_log(TT_LOG_INFO, "serving_certificate", TT_LS("serial", cert.serial),
               TT_LI("not_after", cert.not_after));
    }
    cp_ca_cert_done(&cert);
    return id;
}

/* A verified connection from the acceptor (its loop thread): hand the plaintext end to
 * gRPC. */
static void on_accept(void *ud, int app_fd, const char *peer_id, const char *serial,
                      const char *peer_addr)
{
    struct cp_sidecar_api *api = ud;

    tt_grpc_server_add_fd(api->grpc, app_fd, peer_id, serial, peer_addr); /* owns app_fd */
}

static bool acceptor_revoked(void *ud, const char *serial)
{
    struct cp_sidecar_api *api = ud;

    return cp_store_is_revoked(api->store, serial);
}

static void acceptor_count(void *ud, const char *reason)
{
    struct cp_sidecar_api *api = ud;

    cp_store_count_refusal(api->store, reason);
}

static struct tt_identity *acceptor_identity(void *ud, char *err, size_t errlen)
{
    return serving_identity(ud, err, errlen);
}

/* A reference to the current serving identity (see sidecar_api.h). */
struct tt_identity *cp_sidecar_api_serving_identity(struct cp_sidecar_api *api, char *err,
                                                    size_t errlen)
{
    return serving_identity(api, err, errlen);
}

/* ---- lifecycle --------------------------------------------------------------------- */

/* Frees the strings the API copied from its options. */
static void free_copies(struct cp_sidecar_api *api)
{
    free(api->jwt_audience);
    free(api->jwt_issuer);
    free(api->trust_domain);
    for (size_t i = 0; i < api->n_serving_names; i++)
        free((char *)api->serving_names[i]);
    free(api->serving_names);
}

/* Starts the API (see sidecar_api.h). */
struct cp_sidecar_api *cp_sidecar_api_new(const struct cp_sidecar_api_opts *opts, char *err,
                                          size_t errlen)
{
    struct cp_sidecar_api *api = calloc(1, sizeof(*api));
    struct cp_tls_acceptor_opts ao = {
        .listen = opts->listen,
        .role = TT_TLS_SERVER_OPTIONAL_CLIENT,
        .alpn = "h2", /* gRPC clients require it (RFC 7540 §3.3); ours offer none */
        .identity = acceptor_identity,
        .on_accept = on_accept,
        .revoked = acceptor_revoked,
        .count = acceptor_count,
        .name = "sidecar",
        .flag = "--listen-sidecars",
        .handshake_ms = opts->handshake_ms,
        .first_call_ms = opts->first_call_ms,
        .max_conns = opts->max_conns,
        .max_per_source = opts->max_per_source,
    };
    struct tt_identity *id;

    if (api == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    api->ca = opts->ca;
    api->store = opts->store;
    api->cert_ttl_ms = opts->cert_ttl_ms;
    pthread_mutex_init(&api->lock, NULL);
    api->jwks = opts->jwks;
    if (opts->jwks != NULL &&
        ((api->jwt_audience = strdup(opts->jwt_audience)) == NULL ||
         (opts->jwt_issuer != NULL && (api->jwt_issuer = strdup(opts->jwt_issuer)) == NULL) ||
         (api->trust_domain = strdup(opts->trust_domain)) == NULL)) {
        snprintf(err, errlen, "out of memory");
        goto err_free;
    }
    api->serving_names = calloc(opts->n_serving_names + 1, sizeof(*api->serving_names));
    if (api->serving_names == NULL) {
        snprintf(err, errlen, "out of memory");
        goto err_free;
    }
    for (size_t i = 0; i < opts->n_serving_names; i++) {
        api->serving_names[i] = strdup(opts->serving_names[i]);
        if (api->serving_names[i] == NULL) {
            snprintf(err, errlen, "out of memory");
            goto err_free;
        }
        api->n_serving_names++;
    }

    id = serving_identity(api, err, errlen);
    if (id == NULL)
        goto err_free;
    tt_identity_unref(id);

    api->grpc = tt_grpc_server_new();
    static const struct tt_grpc_stream_cbs watch_cbs = {
        .on_open = on_watch_open,
        .on_message = on_watch_message,
        .on_close = on_watch_close,
    };
    if (api->grpc == NULL ||
        tt_grpc_server_add_unary(api->grpc, "/tether.v1.Identity/Sign",
                                 &tether__v1__sign_request__descriptor, on_sign, api) < 0 ||
        tt_grpc_server_add_stream(api->grpc, "/tether.v1.Discovery/Watch",
                                  &tether__v1__watch_request__descriptor, &watch_cbs, api) < 0 ||
        tt_grpc_server_start(api->grpc) < 0) {
        snprintf(err, errlen, "cannot start the gRPC server");
        goto err_free;
    }
    /* Last: a connection may be handed to gRPC as soon as the acceptor runs. */
    ao.ud = api;
    api->acceptor = cp_tls_acceptor_new(&ao, err, errlen);
    if (api->acceptor == NULL)
        goto err_free;
    return api;

err_free:
    tt_grpc_server_free(api->grpc);
    tt_identity_unref(api->serving);
    free_copies(api);
    pthread_mutex_destroy(&api->lock);
    free(api);
    return NULL;
}

/* The bound port. */
int cp_sidecar_api_port(const struct cp_sidecar_api *api)
{
    return cp_tls_acceptor_port(api->acceptor);
}

/* Stops and frees the API. */
void cp_sidecar_api_free(struct cp_sidecar_api *api)
{
    if (api == NULL)
        return;
    /* gRPC first: once its thread has ended no handler can reach the acceptor; a
     * connection the acceptor hands over meanwhile is refused (closed). Then the loop
     * thread ends with every connection. */
    tt_grpc_server_shutdown(api->grpc); /* every stream gets on_close */
    cp_tls_acceptor_free(api->acceptor);
    tt_grpc_server_free(api->grpc);
    tt_identity_unref(api->serving);
    free_copies(api);
    pthread_mutex_destroy(&api->lock);
    free(api);
}
