/* The sidecar's control-plane client (cpclient.h). One thread, blocking calls with
 * bounded timeouts: it owns the private key, the certificate chain, the members of the
 * last snapshot it applied, and the gRPC channel of the Watch stream. It publishes
 * through the snapshot slot only the members that changed. */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "control/cpclient.h"
#include "control/tlspipe.h"
#include "core/buf.h"
#include "core/errors.h"
#include "core/log.h"
#include "core/spiffe.h"
#include "core/util.h"
#include "grpc_glue.h"
#include "policy/policy.h"
#include "snapshot/services.h"
#include "snapshot/snapshot.h"
#include "tether/v1/tether.pb-c.h"
#include "tls/crypto.h"
#include "tls/identity.h"
#include "tls/revocations.h"
#include "tls/tls.h"

#define CP_CONNECT_TIMEOUT_MS   5000
#define CP_HANDSHAKE_TIMEOUT_MS 5000
#define CP_CALL_TIMEOUT_MS      10000
#define CP_RECV_SLICE_MS        500 /* longest blocking wait: how fast stop is noticed */
#define CP_BACKOFF_MIN_MS       500
#define CP_BACKOFF_MAX_MS       30000 /* DESIGN.md: retries capped at 30 s ... */
#define CP_FILE_MAX             (1024 * 1024)
#define CP_TOKEN_MAX            4096  /* a join token file */
#define CP_JWT_FILE_MAX         16384 /* a service-account token file (tether-control's bound) */
#define CP_SIGN_PATH            "/tether.v1.Identity/Sign"
#define CP_WATCH_PATH           "/tether.v1.Discovery/Watch"

struct tt_cpclient {
    /* Copied from tt_cpclient_opts. */
    struct tt_addr control;
    char *join_token_path; /* one of these two is set */
    char *jwt_path;
    char *spiffe_id;
    char **inbound_addresses;
    size_t n_inbound_addresses;
    struct tt_snapshot_slot *slot;
    uint16_t *opaque_ports;
    size_t n_opaque_ports;

    pthread_t thread;
    bool thread_started;
    bool stop; /* atomic */

    char control_id[TT_SPIFFE_MAX + 1]; /* the control plane's own SPIFFE ID */
    char *control_bundle;               /* roots its certificate chains to */
    size_t control_bundle_len;
    struct tt_identity *anonymous; /* trust-only identity for bootstrap */

    /* Credentials: the key never leaves this struct (and the runtime's SSL_CTXs). */
    char *key_pem;
    size_t key_len;
    char *chain_pem;
    int64_t received_unix;
    int64_t not_after;
    int64_t renew_at;
    uint64_t backoff_ms;

    /* The members of the last snapshot applied, each kept until a push changes it. */
    uint64_t version;             /* 0 until the first snapshot was applied and published */
    char *mesh_bundle;            /* from Sign, then from each snapshot */
    struct tt_identity *identity; /* chain + key + mesh bundle, with its SSL_CTXs */
    char *policy_text;
    struct tt_policy *policy;
    struct tt_revocations *revocations;
    struct tt_services *services;

    /* The Watch stream and what carries it. */
    struct tt_grpc_channel *watch_ch;
    struct tt_grpc_client_stream *watch;
    struct tt_tlspipe *watch_pipe;
    char watch_serial[TT_SERIAL_MAX]; /* the control plane's certificate on the stream */

    pthread_mutex_t lock; /* guards status */
    struct tt_cp_status status;
};

static const char *const state_names[] = {"connecting", "connected", "unreachable", "refused",
                                          "stopped"};

static bool cp_stopping(struct tt_cpclient *cp)
{
    return __atomic_load_n(&cp->stop, __ATOMIC_ACQUIRE);
}

static void cp_set_state(struct tt_cpclient *cp, enum tt_cp_state state, const char *error)
{
    pthread_mutex_lock(&cp->lock);
    cp->status.state = state;
    cp->status.state_name = state_names[state];
    if (error != NULL)
        snprintf(cp->status.last_error, sizeof(cp->status.last_error), "%.500s", error);
    if (state == TT_CP_S_CONNECTED) {
        cp->status.last_error[0] = '\0';
        cp->status.last_contact_unix = tt_now_unix();
    }
    pthread_mutex_unlock(&cp->lock);
}

static void cp_touch(struct tt_cpclient *cp)
{
    pthread_mutex_lock(&cp->lock);
    cp->status.last_contact_unix = tt_now_unix();
    pthread_mutex_unlock(&cp->lock);
}

/* Sleeps up to ms, waking early when asked to stop. */
static void cp_sleep(struct tt_cpclient *cp, uint64_t ms)
{
    while (ms > 0 && !cp_stopping(cp)) {
        uint64_t slice = ms < 100 ? ms : 100;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)slice * 1000000L};
        nanosleep(&ts, NULL);
        ms -= slice;
    }
}

/* The retry delay after a failure: doubling from CP_BACKOFF_MIN_MS, capped at a tenth of
 * the certificate lifetime and at 30 s (DESIGN.md). */
static uint64_t cp_next_backoff(struct tt_cpclient *cp)
{
    uint64_t cap = CP_BACKOFF_MAX_MS;
    int64_t lifetime = cp->not_after - cp->received_unix;

    if (cp->chain_pem != NULL && lifetime > 0 && (uint64_t)lifetime * 100 < cap)
        cap = (uint64_t)lifetime * 100; /* a tenth, in ms */
    if (cap < CP_BACKOFF_MIN_MS)
        cap = CP_BACKOFF_MIN_MS;
    uint64_t d = cp->backoff_ms == 0 ? CP_BACKOFF_MIN_MS : cp->backoff_ms * 2;
    cp->backoff_ms = d > cap ? cap : d;
    return cp->backoff_ms;
}

/* Opens a TLS connection to the control plane as `id` (its certificate, or none for the
 * anonymous role) and a gRPC channel over it. The pipe handle is returned when wanted. */
static int cp_connect(struct tt_cpclient *cp, struct tt_identity *id, enum tt_tls_role role,
                      struct tt_grpc_channel **ch, struct tt_tlspipe **pipe, char *serial,
                      char *err, size_t errlen)
{
    struct tt_tls *tls;
    int fd, app_fd, r;

    r = tt_tlspipe_connect(&cp->control, CP_CONNECT_TIMEOUT_MS, &fd);
    if (r < 0) {
        snprintf(err, errlen, "connect %s: %s", cp->control.text, tt_strerror(r));
        return r;
    }
    tls = tt_tls_new(id, role, cp->control_id);
    if (tls == NULL) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r = tt_tlspipe_handshake(fd, tls, CP_HANDSHAKE_TIMEOUT_MS);
    if (r < 0) {
        snprintf(err, errlen, "TLS with %s (expecting %.200s): %s", cp->control.text,
                 cp->control_id, tt_strerror(r));
        tt_tls_free(tls);
        close(fd);
        return r;
    }
    /* The pushed revocations apply to the control plane too: a certificate for its
     * identity that was stolen or mis-issued, once revoked, is a stranger. */
    if (tt_revocations_check(cp->revocations, tt_tls_peer_serial(tls))) {
        snprintf(err, errlen, "the control plane at %s presented certificate %s, which is revoked",
                 cp->control.text, tt_tls_peer_serial(tls));
        tt_tls_free(tls);
        close(fd);
        return TT_E_REVOKED;
    }
    if (serial != NULL)
        snprintf(serial, TT_SERIAL_MAX, "%s", tt_tls_peer_serial(tls));
    r = tt_tlspipe_new(fd, tls, &app_fd, pipe);
    if (r < 0) {
        snprintf(err, errlen, "TLS relay: %s", tt_strerror(r));
        return r;
    }
    *ch = tt_grpc_channel_new_from_fd(app_fd);
    if (*ch == NULL) {
        if (pipe != NULL) {
            tt_tlspipe_close(*pipe);
            *pipe = NULL;
        }
        snprintf(err, errlen, "cannot create the gRPC channel");
        return -ENOMEM;
    }
    return 0;
}

/* Reads the proof for a Sign without a certificate: the join token, or the service-account
 * token (read afresh at every call: kubelet rotates it). Either may have whitespace around
 * it (DESIGN.md); inside, none. Sets *jwt to say which it is. */
static int cp_read_token(struct tt_cpclient *cp, char **token, bool *jwt, char *err, size_t errlen)
{
    const char *path = cp->jwt_path != NULL ? cp->jwt_path : cp->join_token_path;
    const char *flag = cp->jwt_path != NULL ? "--jwt-file" : "--join-token";
    size_t max = cp->jwt_path != NULL ? CP_JWT_FILE_MAX : CP_TOKEN_MAX;
    char *data;
    size_t len, skip = 0;
    int r = tt_file_read(path, max, &data, &len);

    *jwt = cp->jwt_path != NULL;
    if (r < 0) {
        snprintf(err, errlen, "%s %s: %s", flag, path,
                 r == -EFBIG ? "larger than the bound on a token" : tt_strerror(r));
        return r;
    }
    while (len > 0 && strchr(" \t\r\n", data[len - 1]) != NULL)
        data[--len] = '\0';
    while (skip < len && strchr(" \t\r\n", data[skip]) != NULL)
        skip++;
    if (skip > 0)
        memmove(data, data + skip, len - skip + 1);
    len -= skip;
    if (len == 0 || strpbrk(data, " \t\r\n") != NULL || strlen(data) != len) {
        snprintf(err, errlen, "%s %s: expected the token alone on one line", flag, path);
        tt_crypto_wipe(data, len);
        free(data);
        return TT_E_CONFIG;
    }
    *token = data;
    return 0;
}

/* Builds the data-plane identity from the current key and chain and `bundle`. NULL with
 * err set when they do not fit together (the leaf does not chain to the bundle). */
static struct tt_identity *cp_build_identity(struct tt_cpclient *cp, const char *bundle, char *err,
                                             size_t errlen)
{
    return tt_identity_from_pem(cp->chain_pem, strlen(cp->chain_pem), cp->key_pem, cp->key_len,
                                bundle, strlen(bundle), "control plane", err, errlen);
}

/* Publishes the members in `replace` (references taken here) once a snapshot has been
 * applied; before that only the certificate exists and nothing is published. */
static void cp_publish(struct tt_cpclient *cp, unsigned replace)
{
    struct tt_snapshot_update u = {.replace = replace};

    if (cp->version == 0 || replace == 0)
        return;
    if (replace & TT_SNAP_IDENTITY)
        u.identity = tt_identity_ref(cp->identity);
    if (replace & TT_SNAP_POLICY)
        u.policy = tt_policy_ref(cp->policy);
    if ((replace & TT_SNAP_REVOCATIONS) && cp->revocations != NULL)
        u.revocations = tt_revocations_ref(cp->revocations);
    if ((replace & TT_SNAP_SERVICES) && cp->services != NULL)
        u.services = tt_services_ref(cp->services);
    int64_t r = tt_snapshot_slot_publish(cp->slot, &u);
    if (r < 0)
        tt_log(TT_LOG_ERROR, "snapshot_publish_failed", TT_LS("error", tt_strerror((int)r)));
}

/* Schedules the renewal at half of the lifetime, with +-10% jitter (DESIGN.md). */
static void cp_schedule_renewal(struct tt_cpclient *cp)
{
    int64_t lifetime = cp->not_after - cp->received_unix;
    uint32_t rnd = 0;

    tt_crypto_random(&rnd, sizeof(rnd));
    int64_t jitter =
        lifetime > 10 ? (int64_t)(rnd % (uint32_t)(lifetime / 5 + 1)) - lifetime / 10 : 0;
    cp->renew_at = cp->received_unix + lifetime / 2 + jitter;
    pthread_mutex_lock(&cp->lock);
    cp->status.next_renewal_unix = cp->renew_at;
    pthread_mutex_unlock(&cp->lock);
}

/* Asks Identity.Sign for a certificate for a new key: with the current certificate when
 * `renewal`, else with the join token or the service-account token. Returns 0 or <0 with
 * err set. */
static int cp_sign(struct tt_cpclient *cp, bool renewal, char *err, size_t errlen)
{
    Tether__V1__SignRequest req = TETHER__V1__SIGN_REQUEST__INIT;
    Tether__V1__SignResponse *resp = NULL;
    struct tt_grpc_channel *ch = NULL;
    struct tt_identity *conn_id = NULL;
    char *key_pem = NULL, *token = NULL;
    size_t key_len = 0, csr_len = 0;
    uint8_t *csr = NULL;
    grpc_status_code code;
    char details[TT_GRPC_DETAILS_MAX];
    bool jwt = false;
    const char *proof = "current certificate";
    int r;

    r = tt_identity_keygen(&key_pem, &key_len);
    if (r == 0)
        r = tt_identity_csr(key_pem, key_len, cp->spiffe_id, &csr, &csr_len);
    if (r < 0) {
        snprintf(err, errlen, "cannot make a key and CSR: %s", tt_strerror(r));
        goto out;
    }
    req.csr_der.data = csr;
    req.csr_der.len = csr_len;
    req.spiffe_id = (char *)cp->spiffe_id;
    if (renewal) {
        /* The proof is the current certificate, presented on the mTLS connection. */
        conn_id = tt_identity_from_pem(cp->chain_pem, strlen(cp->chain_pem), cp->key_pem,
                                       cp->key_len, cp->control_bundle, cp->control_bundle_len,
                                       "current certificate", err, errlen);
        if (conn_id == NULL) {
            r = TT_E_IDENTITY;
            goto out;
        }
        r = cp_connect(cp, conn_id, TT_TLS_CLIENT, &ch, NULL, NULL, err, errlen);
    } else {
        r = cp_read_token(cp, &token, &jwt, err, errlen);
        if (r < 0)
            goto out;
        if (jwt)
            req.k8s_sa_token = token;
        else
            req.bootstrap_token = token;
        proof = jwt ? "service-account token" : "join token";
        r = cp_connect(cp, cp->anonymous, TT_TLS_CLIENT_ANONYMOUS, &ch, NULL, NULL, err, errlen);
    }
    if (r < 0)
        goto out;

    r = tt_grpc_call_unary(ch, CP_SIGN_PATH, &req.base, &tether__v1__sign_response__descriptor,
                           CP_CALL_TIMEOUT_MS, (ProtobufCMessage **)&resp, &code, details,
                           sizeof(details));
    if (r < 0) {
        snprintf(err, errlen, "Identity.Sign: call failed: %s", tt_strerror(r));
        goto out;
    }
    if (code != GRPC_STATUS_OK) {
        snprintf(err, errlen, "Identity.Sign refused (%s, status %d): %s", proof, (int)code,
                 details);
        r = code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_DEADLINE_EXCEEDED
                ? -EAGAIN
                : TT_E_IDENTITY;
        goto out;
    }
    cp_touch(cp);

    /* Check the answer before it replaces anything. */
    struct tt_identity *check =
        tt_identity_from_pem(resp->cert_chain_pem, strlen(resp->cert_chain_pem), key_pem, key_len,
                             resp->trust_bundle_pem, strlen(resp->trust_bundle_pem),
                             "Identity.Sign answer", err, errlen);
    if (check == NULL) {
        r = TT_E_IDENTITY;
        goto out;
    }
    if (strcmp(tt_identity_spiffe_id(check), cp->spiffe_id) != 0) {
        snprintf(err, errlen, "Identity.Sign answered a certificate for %s, not %s",
                 tt_identity_spiffe_id(check), cp->spiffe_id);
        tt_identity_unref(check);
        r = TT_E_IDENTITY;
        goto out;
    }
    const struct tt_cert_info *leaf = tt_identity_leaf(check);
    bool first = cp->chain_pem == NULL;

    if (cp->key_pem != NULL) {
        tt_crypto_wipe(cp->key_pem, cp->key_len);
        free(cp->key_pem);
    }
    free(cp->chain_pem);
    cp->key_pem = key_pem;
    cp->key_len = key_len;
    key_pem = NULL;
    cp->chain_pem = strdup(resp->cert_chain_pem);
    cp->received_unix = tt_now_unix();
    cp->not_after = leaf->not_after;
    if (cp->mesh_bundle == NULL)
        cp->mesh_bundle = strdup(resp->trust_bundle_pem);
    tt_log(TT_LOG_INFO, first ? "certificate_issued" : "certificate_renewed",
           TT_LS("spiffe_id", leaf->spiffe_id), TT_LS("serial", leaf->serial),
           TT_LI("not_after", leaf->not_after), TT_LS("proof", proof));
    tt_identity_unref(check);
    if (cp->chain_pem == NULL || cp->mesh_bundle == NULL) {
        snprintf(err, errlen, "out of memory");
        r = -ENOMEM;
        goto out;
    }
    if (!first) {
        pthread_mutex_lock(&cp->lock);
        cp->status.rotations++;
        pthread_mutex_unlock(&cp->lock);
    }
    cp_schedule_renewal(cp);

    /* New connections use the new certificate at once; live ones keep theirs. */
    struct tt_identity *id = cp_build_identity(cp, cp->mesh_bundle, err, errlen);
    if (id == NULL) {
        r = TT_E_IDENTITY;
        goto out;
    }
    tt_identity_unref(cp->identity);
    cp->identity = id;
    cp_publish(cp, TT_SNAP_IDENTITY);
    r = 0;

out:
    if (resp != NULL)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    tt_grpc_channel_free(ch);
    tt_identity_unref(conn_id);
    if (key_pem != NULL) {
        tt_crypto_wipe(key_pem, key_len);
        free(key_pem);
    }
    if (token != NULL)
        tt_crypto_wipe(token, strlen(token));
    free(token);
    free(csr);
    return r;
}

static void cp_watch_close(struct tt_cpclient *cp)
{
    tt_grpc_client_stream_close(cp->watch);
    tt_grpc_channel_free(cp->watch_ch);
    tt_tlspipe_close(cp->watch_pipe);
    cp->watch = NULL;
    cp->watch_ch = NULL;
    cp->watch_pipe = NULL;
}

/* Opens Discovery.Watch with the current certificate and sends the Hello that
 * registers this sidecar's inbound addresses. */
static int cp_watch_open(struct tt_cpclient *cp, char *err, size_t errlen)
{
    Tether__V1__WatchRequest wr = TETHER__V1__WATCH_REQUEST__INIT;
    Tether__V1__Hello hello = TETHER__V1__HELLO__INIT;
    char node[256];
    struct tt_identity *id;
    int r;

    id = tt_identity_from_pem(cp->chain_pem, strlen(cp->chain_pem), cp->key_pem, cp->key_len,
                              cp->control_bundle, cp->control_bundle_len, "current certificate",
                              err, errlen);
    if (id == NULL)
        return TT_E_IDENTITY;
    r = cp_connect(cp, id, TT_TLS_CLIENT, &cp->watch_ch, &cp->watch_pipe, cp->watch_serial, err,
                   errlen);
    tt_identity_unref(id);
    if (r < 0)
        return r;
    cp->watch =
        tt_grpc_client_stream_open(cp->watch_ch, CP_WATCH_PATH, &tether__v1__snapshot__descriptor);
    if (cp->watch == NULL) {
        snprintf(err, errlen, "cannot open Discovery.Watch");
        cp_watch_close(cp);
        return -EIO;
    }
    hello.inbound_addresses = cp->inbound_addresses;
    hello.n_inbound_addresses = cp->n_inbound_addresses;
    if (gethostname(node, sizeof(node)) != 0)
        snprintf(node, sizeof(node), "unknown");
    node[sizeof(node) - 1] = '\0';
    hello.node = node;
    hello.last_version = cp->version;
    wr.kind_case = TETHER__V1__WATCH_REQUEST__KIND_HELLO;
    wr.hello = &hello;
    r = tt_grpc_client_stream_send(cp->watch, &wr.base, CP_CALL_TIMEOUT_MS);
    if (r < 0) {
        snprintf(err, errlen, "Discovery.Watch: cannot send Hello: %s", tt_strerror(r));
        cp_watch_close(cp);
        return r;
    }
    return 0;
}

/* The pushed service entries as a table (bare endpoints: the protocol carries no service
 * addresses yet). NULL with err set on a malformed entry. */
static struct tt_services *cp_build_services(const Tether__V1__Snapshot *snap, size_t *skipped,
                                             char *err, size_t errlen)
{
    struct tt_service_entry *entries = NULL;
    struct tt_services *services;
    char msg[512];

    if (snap->n_services > 0 && (entries = calloc(snap->n_services, sizeof(*entries))) == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < snap->n_services; i++) {
        entries[i].service = snap->services[i]->service_address; /* "" when bare */
        entries[i].endpoint = snap->services[i]->address;
        entries[i].spiffe_id = snap->services[i]->spiffe_id;
    }
    services = tt_services_new(entries, snap->n_services, skipped, msg, sizeof(msg));
    if (services == NULL)
        snprintf(err, errlen, "snapshot %llu: %.400s", (unsigned long long)snap->version, msg);
    free(entries);
    return services;
}

/* The revocation set after `snap`: what this sidecar held plus what was pushed (each
 * serial with its certificate's not-after; older control planes send serials only), minus
 * certificates that expired. A control plane can add serials, never remove one
 * (revocations.h: tt_revocations_merge). Returns 0 with *out, or <0 with err set. */
static int cp_merge_revocations(struct tt_cpclient *cp, const Tether__V1__Snapshot *snap,
                                struct tt_revocations **out, char *err, size_t errlen)
{
    bool with_dates = snap->n_revocations > 0;
    size_t n = with_dates ? snap->n_revocations : snap->n_revoked_serials, bad;
    struct tt_revocation *add = n > 0 ? calloc(n, sizeof(*add)) : NULL;
    int r;

    if (n > 0 && add == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        add[i].serial = with_dates ? snap->revocations[i]->serial : snap->revoked_serials[i];
        add[i].not_after = with_dates ? snap->revocations[i]->not_after_unix : 0;
    }
    *out = tt_revocations_merge(cp->revocations, add, n, tt_now_unix(), &bad);
    if (*out != NULL) {
        r = 0;
    } else if (bad < n) {
        snprintf(err, errlen, "snapshot %llu: revoked serial \"%.64s\" is not hexadecimal",
                 (unsigned long long)snap->version, add[bad].serial);
        r = TT_E_CONFIG;
    } else {
        snprintf(err, errlen, "out of memory");
        r = -ENOMEM;
    }
    free(add);
    return r;
}

/* Turns a pushed snapshot into the members that changed and publishes them. Every member
 * is checked before anything is replaced. Returns 0, or <0 with the reason for the NACK in
 * err (the last good snapshot then stays). */
static int cp_apply(struct tt_cpclient *cp, const Tether__V1__Snapshot *snap, char *err,
                    size_t errlen)
{
    const char *policy_text = snap->policy_json != NULL ? snap->policy_json : "";
    struct tt_policy *policy = NULL;
    struct tt_revocations *revocations = NULL;
    struct tt_services *services = NULL;
    struct tt_identity *identity = NULL;
    char *bundle = NULL, *text = NULL;
    unsigned replace = 0;
    size_t skipped = 0;
    int r;

    if (snap->version == 0) {
        snprintf(err, errlen, "snapshot without a version");
        return TT_E_CONFIG;
    }
    if (snap->trust_bundle_pem == NULL || snap->trust_bundle_pem[0] == '\0') {
        snprintf(err, errlen, "snapshot %llu: empty trust bundle",
                 (unsigned long long)snap->version);
        return TT_E_CONFIG;
    }

    /* Policy: parsed again only when its text changed. */
    if (cp->policy == NULL || strcmp(cp->policy_text, policy_text) != 0) {
        char source[64];
        snprintf(source, sizeof(source), "snapshot %llu policy", (unsigned long long)snap->version);
        policy = tt_policy_parse(policy_text, strlen(policy_text), source, err, errlen);
        if (policy == NULL)
            return TT_E_POLICY;
        r = tt_policy_check_opaque_enforceable(policy, cp->spiffe_id, cp->opaque_ports,
                                               cp->n_opaque_ports, err, errlen);
        if (r < 0)
            goto err;
        r = -ENOMEM;
        if ((text = strdup(policy_text)) == NULL)
            goto err_nomem;
        replace |= TT_SNAP_POLICY;
    }

    /* Revocations and services: replaced when they differ from what runs. */
    r = cp_merge_revocations(cp, snap, &revocations, err, errlen);
    if (r < 0)
        goto err;
    if (cp->version == 0 || !tt_revocations_equal(revocations, cp->revocations))
        replace |= TT_SNAP_REVOCATIONS;
    services = cp_build_services(snap, &skipped, err, errlen);
    if (services == NULL) {
        r = TT_E_CONFIG;
        goto err;
    }
    if (cp->version == 0 || !tt_services_equal(services, cp->services))
        replace |= TT_SNAP_SERVICES;

    /* A new bundle: our own certificate must chain to it, or no peer could verify us. The
     * identity (and its SSL_CTXs) is rebuilt only then. */
    if (cp->identity == NULL || cp->mesh_bundle == NULL ||
        strcmp(cp->mesh_bundle, snap->trust_bundle_pem) != 0) {
        identity = cp_build_identity(cp, snap->trust_bundle_pem, err, errlen);
        if (identity == NULL) {
            r = TT_E_IDENTITY;
            goto err;
        }
        if ((bundle = strdup(snap->trust_bundle_pem)) == NULL)
            goto err_nomem;
        replace |= TT_SNAP_IDENTITY;
    } else if (cp->version == 0) {
        replace |= TT_SNAP_IDENTITY; /* the first publish carries every member */
    }

    /* Everything checked: commit. */
    if (replace & TT_SNAP_POLICY) {
        tt_policy_unref(cp->policy);
        free(cp->policy_text);
        cp->policy = policy;
        cp->policy_text = text;
        policy = NULL;
        text = NULL;
    }
    if (identity != NULL) {
        tt_identity_unref(cp->identity);
        free(cp->mesh_bundle);
        cp->identity = identity;
        cp->mesh_bundle = bundle;
        identity = NULL;
        bundle = NULL;
    }
    if (replace & TT_SNAP_REVOCATIONS) {
        tt_revocations_unref(cp->revocations);
        cp->revocations = revocations;
        revocations = NULL;
    }
    if (replace & TT_SNAP_SERVICES) {
        tt_services_unref(cp->services);
        cp->services = services;
        services = NULL;
    }
    cp->version = snap->version;
    cp_publish(cp, replace);
    tt_log(TT_LOG_INFO, "snapshot_acked", TT_LU("version", snap->version),
           TT_LS("policy_version", tt_policy_version(cp->policy)),
           TT_LU("revoked", tt_revocations_count(cp->revocations)),
           TT_LU("services", tt_services_count(cp->services)), TT_LU("services_skipped", skipped),
           TT_LS("rebuilt_identity", replace & TT_SNAP_IDENTITY ? "yes" : "no"));
    tt_revocations_unref(revocations);
    tt_services_unref(services);
    return 0;

err_nomem:
    snprintf(err, errlen, "out of memory");
    r = -ENOMEM;
err:
    tt_policy_unref(policy);
    free(text);
    tt_revocations_unref(revocations);
    tt_services_unref(services);
    tt_identity_unref(identity);
    free(bundle);
    return r;
}

/* Answers a snapshot with an ACK or a NACK. */
static int cp_ack(struct tt_cpclient *cp, uint64_t version, bool accepted, const char *reason)
{
    Tether__V1__WatchRequest wr = TETHER__V1__WATCH_REQUEST__INIT;
    Tether__V1__Ack ack = TETHER__V1__ACK__INIT;

    ack.version = version;
    ack.accepted = accepted;
    ack.reason = (char *)(reason != NULL ? reason : "");
    wr.kind_case = TETHER__V1__WATCH_REQUEST__KIND_ACK;
    wr.ack = &ack;
    pthread_mutex_lock(&cp->lock);
    if (accepted)
        cp->status.version_applied = version;
    else
        cp->status.version_refused = version;
    pthread_mutex_unlock(&cp->lock);
    return tt_grpc_client_stream_send(cp->watch, &wr.base, CP_CALL_TIMEOUT_MS);
}

/* One step of the Watch stream: waits for a snapshot (up to the renewal time) and
 * answers it. Returns 0 to continue, <0 when the stream ended (err set). */
static int cp_watch_step(struct tt_cpclient *cp, char *err, size_t errlen)
{
    ProtobufCMessage *msg = NULL;
    char reason[512];
    int r = tt_grpc_client_stream_recv(cp->watch, CP_RECV_SLICE_MS, &msg);

    if (r == 0)
        return 0;
    if (r < 0) {
        char details[TT_GRPC_DETAILS_MAX] = "";
        grpc_status_code code = tt_grpc_client_stream_status(cp->watch, details, sizeof(details));
        snprintf(err, errlen, "Discovery.Watch ended (status %d): %s", (int)code, details);
        return -EPIPE;
    }
    cp_touch(cp);
    const Tether__V1__Snapshot *snap = (const Tether__V1__Snapshot *)msg;
    uint64_t version = snap->version;
    r = cp_apply(cp, snap, reason, sizeof(reason));
    protobuf_c_message_free_unpacked(msg, NULL);
    if (r < 0)
        tt_log(TT_LOG_WARN, "snapshot_refused", TT_LU("version", version), TT_LS("reason", reason),
               TT_LU("keeping_version", cp->version));
    r = cp_ack(cp, version, r == 0, r == 0 ? NULL : reason);
    if (r < 0) {
        snprintf(err, errlen, "Discovery.Watch: cannot send the ACK: %s", tt_strerror(r));
        return r;
    }
    if (tt_revocations_check(cp->revocations, cp->watch_serial)) {
        snprintf(err, errlen, "the control plane's certificate %s is now revoked",
                 cp->watch_serial);
        return TT_E_REVOKED;
    }
    return 0;
}

static void *cp_main(void *arg)
{
    struct tt_cpclient *cp = arg;
    char err[1024];
    int r;

    while (!cp_stopping(cp)) {
        int64_t now = tt_now_unix();

        if (cp->chain_pem == NULL || now >= cp->renew_at) {
            bool renewal = cp->chain_pem != NULL && now < cp->not_after;

            r = cp_sign(cp, renewal, err, sizeof(err));
            /* A service-account token stays a proof after the certificate fails as one
             * (refused, or the control plane lost its record): try it before waiting. */
            if (r < 0 && renewal && cp->jwt_path != NULL && !cp_stopping(cp)) {
                tt_log(TT_LOG_WARN, "certificate_renewal_failed", TT_LS("error", err),
                       TT_LS("next", "service-account token"));
                r = cp_sign(cp, false, err, sizeof(err));
            }
            if (r < 0) {
                uint64_t wait = cp_next_backoff(cp);
                tt_log(TT_LOG_WARN, "certificate_request_failed", TT_LS("error", err),
                       TT_LU("retry_ms", wait),
                       TT_LI("seconds_to_expiry", cp->chain_pem ? cp->not_after - now : 0));
                cp_set_state(cp, r == TT_E_IDENTITY ? TT_CP_S_REFUSED : TT_CP_S_UNREACHABLE, err);
                cp_sleep(cp, wait);
                continue;
            }
            cp->backoff_ms = 0;
        }
        if (cp->watch == NULL) {
            r = cp_watch_open(cp, err, sizeof(err));
            if (r < 0) {
                uint64_t wait = cp_next_backoff(cp);
                tt_log(TT_LOG_WARN, "control_unreachable", TT_LS("error", err),
                       TT_LU("retry_ms", wait));
                cp_set_state(cp, TT_CP_S_UNREACHABLE, err);
                cp_sleep(cp, wait);
                continue;
            }
            cp->backoff_ms = 0;
            cp_set_state(cp, TT_CP_S_CONNECTED, NULL);
            tt_log(TT_LOG_INFO, "control_connected", TT_LS("control", cp->control.text),
                   TT_LU("version", cp->version));
        }
        r = cp_watch_step(cp, err, sizeof(err));
        if (r < 0) {
            cp_watch_close(cp);
            cp_set_state(cp, TT_CP_S_UNREACHABLE, err);
            tt_log(TT_LOG_WARN, "control_disconnected", TT_LS("error", err));
            cp_sleep(cp, cp_next_backoff(cp));
        }
    }
    cp_watch_close(cp);
    cp_set_state(cp, TT_CP_S_STOPPED, NULL);
    tt_buf_pool_drain(); /* the handshakes on this thread used pooled slabs */
    return NULL;
}

/* Frees what tt_cpclient_new() and the thread left. */
static void cp_free_fields(struct tt_cpclient *cp)
{
    tt_identity_unref(cp->anonymous);
    free(cp->control_bundle);
    if (cp->key_pem != NULL) {
        tt_crypto_wipe(cp->key_pem, cp->key_len);
        free(cp->key_pem);
    }
    free(cp->chain_pem);
    free(cp->mesh_bundle);
    tt_identity_unref(cp->identity);
    free(cp->policy_text);
    tt_policy_unref(cp->policy);
    tt_revocations_unref(cp->revocations);
    tt_services_unref(cp->services);
    for (size_t i = 0; i < cp->n_inbound_addresses; i++)
        free(cp->inbound_addresses[i]);
    free(cp->inbound_addresses);
    free(cp->join_token_path);
    free(cp->jwt_path);
    free(cp->spiffe_id);
    free(cp->opaque_ports);
    pthread_mutex_destroy(&cp->lock);
    free(cp);
}

/* Copies the options and reads the files (see cpclient.h). */
struct tt_cpclient *tt_cpclient_new(const struct tt_cpclient_opts *opts, char *err, size_t errlen)
{
    struct tt_cpclient *cp = calloc(1, sizeof(*cp));
    char td[256], source[600];
    char *token = NULL;
    bool jwt;
    int r;

    if (cp == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&cp->lock, NULL);
    cp->status.state = TT_CP_S_CONNECTING;
    cp->status.state_name = state_names[TT_CP_S_CONNECTING];
    cp->control = *opts->control;
    cp->slot = opts->slot;
    if (opts->jwt_path != NULL)
        cp->jwt_path = strdup(opts->jwt_path);
    else
        cp->join_token_path = strdup(opts->join_token_path);
    cp->spiffe_id = strdup(opts->spiffe_id);
    cp->inbound_addresses = calloc(opts->n_inbound_addresses + 1, sizeof(char *));
    cp->opaque_ports = calloc(opts->n_opaque_ports + 1, sizeof(uint16_t));
    if ((cp->join_token_path == NULL && cp->jwt_path == NULL) || cp->spiffe_id == NULL ||
        cp->inbound_addresses == NULL || cp->opaque_ports == NULL)
        goto err_nomem;
    if (opts->n_opaque_ports > 0)
        memcpy(cp->opaque_ports, opts->opaque_ports, opts->n_opaque_ports * sizeof(uint16_t));
    cp->n_opaque_ports = opts->n_opaque_ports;
    for (size_t i = 0; i < opts->n_inbound_addresses; i++) {
        if ((cp->inbound_addresses[i] = strdup(opts->inbound_addresses[i])) == NULL)
            goto err_nomem;
        cp->n_inbound_addresses++;
    }

    if (tt_spiffe_trust_domain(cp->spiffe_id, td, sizeof(td)) < 0) {
        snprintf(err, errlen, "--spiffe-id %s: no trust domain", cp->spiffe_id);
        goto err_free;
    }
    snprintf(cp->control_id, sizeof(cp->control_id),
             "spiffe://%s/ns/tether-system/sa/tether-control", td);
    r = tt_file_read(opts->control_bundle_path, CP_FILE_MAX, &cp->control_bundle,
                     &cp->control_bundle_len);
    if (r < 0) {
        snprintf(err, errlen, "--control-bundle %s: %s", opts->control_bundle_path, tt_strerror(r));
        goto err_free;
    }
    snprintf(source, sizeof(source), "--control-bundle %s", opts->control_bundle_path);
    cp->anonymous =
        tt_identity_trust_only(cp->control_bundle, cp->control_bundle_len, source, err, errlen);
    if (cp->anonymous == NULL)
        goto err_free;
    /* Fail fast on an unreadable token: it is needed for the first certificate. */
    if (cp_read_token(cp, &token, &jwt, err, errlen) < 0)
        goto err_free;
    tt_crypto_wipe(token, strlen(token));
    free(token);
    return cp;

err_nomem:
    snprintf(err, errlen, "out of memory");
err_free:
    cp_free_fields(cp);
    return NULL;
}

/* Starts the control thread. */
int tt_cpclient_start(struct tt_cpclient *cp)
{
    int r = pthread_create(&cp->thread, NULL, cp_main, cp);

    if (r != 0)
        return -r;
    cp->thread_started = true;
    return 0;
}

/* Stops and joins the thread. */
void tt_cpclient_stop(struct tt_cpclient *cp)
{
    if (cp == NULL || !cp->thread_started)
        return;
    __atomic_store_n(&cp->stop, true, __ATOMIC_RELEASE);
    pthread_join(cp->thread, NULL);
    cp->thread_started = false;
}

/* Stops and frees the client. */
void tt_cpclient_free(struct tt_cpclient *cp)
{
    if (cp == NULL)
        return;
    tt_cpclient_stop(cp);
    cp_free_fields(cp);
}

/* Copies the status under the lock. */
void tt_cpclient_status(struct tt_cpclient *cp, struct tt_cp_status *out)
{
    pthread_mutex_lock(&cp->lock);
    *out = cp->status;
    pthread_mutex_unlock(&cp->lock);
}
