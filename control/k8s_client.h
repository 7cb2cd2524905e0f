/* The Kubernetes API client of the control plane: HTTPS (tls/webtls: the API server's
 * certificate checked against the cluster CA and the host dialled) with a bearer token or
 * a client certificate, one request per connection, through httpc's HTTP/1.1 exchange.
 * Files (token, CA) are read again for every connection: a projected service-account
 * token rotates. Blocking: call it from a thread of its own, never from the gRPC
 * completion-queue thread or a libuv loop. */
#ifndef CP_K8S_CLIENT_H
#define CP_K8S_CLIENT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "httpc.h"

/* The in-cluster defaults (the service account's mount). */
#define CP_K8S_SA_DIR     "/var/run/secrets/kubernetes.io/serviceaccount"
#define CP_K8S_TOKEN_FILE CP_K8S_SA_DIR "/token"
#define CP_K8S_CA_FILE    CP_K8S_SA_DIR "/ca.crt"
#define CP_K8S_CRED_MAX   (64 * 1024) /* a token, key or CA file larger is refused */
#define CP_K8S_USER_AGENT "tether-control"

/* Where the API server is and how to prove who we are. Each credential comes from a file
 * (read at every connection) or from data given here (a kubeconfig's *-data, copied). */
struct cp_k8s_client_opts {
    const char *server; /* https://HOST:PORT */
    const char *ca_file, *ca_pem;
    const char *token_file, *token;
    const char *cert_file, *cert_pem; /* client certificate: with key_*, optional */
    const char *key_file, *key_pem;
    int timeout_ms; /* connect, handshake, and each read of a whole request */
};

struct cp_k8s_client;

/* One connection's fd as another thread can see it, to end a blocking call from outside
 * (cp_k8s_slot_cancel). Embedded by the caller; init with CP_K8S_SLOT_INIT. */
struct cp_k8s_slot {
    pthread_mutex_t mu;
    int fd;        /* the open connection's socket, or -1 */
    bool canceled; /* set by cp_k8s_slot_cancel: no new connection is made */
};
#define CP_K8S_SLOT_INIT                                                                           \
    {                                                                                              \
        PTHREAD_MUTEX_INITIALIZER, -1, false                                                       \
    }

/* What a kubeconfig says about its current context, as opts for cp_k8s_client_new: the
 * heap strings it owns (file paths resolved against the kubeconfig's folder, *-data
 * decoded from base64). */
struct cp_k8s_kubeconfig {
    char *server, *ca_file, *ca_pem, *token, *token_file, *cert_file, *cert_pem, *key_file,
        *key_pem;
};

/* Reads the kubeconfig `doc` (the first document of the file at `path`, parsed): the
 * current-context's cluster (server, certificate-authority or certificate-authority-data)
 * and user (token, tokenFile, or client-certificate(-data) with client-key(-data)) into
 * *kc. What Tether cannot honour is refused rather than ignored: insecure-skip-tls-verify,
 * tls-server-name, exec and auth-provider plugins, username/password, a proxy-url.
 * Returns 0 (free with cp_k8s_kubeconfig_done) or -EINVAL / -ENOMEM with err naming the
 * file and key ("kube.yaml: users[name=dev].user: ..."). */
int cp_k8s_kubeconfig_load(json_t *doc, const char *path, struct cp_k8s_kubeconfig *kc, char *err,
                           size_t errlen);

/* Fills the credential fields of *o from *kc (pointers into kc). */
void cp_k8s_kubeconfig_opts(const struct cp_k8s_kubeconfig *kc, struct cp_k8s_client_opts *o);

/* Frees what *kc holds (secrets wiped) and zeroes it. */
void cp_k8s_kubeconfig_done(struct cp_k8s_kubeconfig *kc);

/* True for a Kubernetes object name of at most max bytes (RFC 1123): lower-case letters,
 * digits and '-', alphanumeric at both ends, and with `dots` also '.' (a DNS subdomain:
 * most names, service accounts; without: a DNS label, namespaces). Pure. */
bool cp_k8s_name_valid(const char *s, size_t max, bool dots);

/* Checks opts (an https:// server URL with a port, a CA) and copies them. Returns the
 * client or NULL with err set ("--kubernetes-api URL: ..."). */
struct cp_k8s_client *cp_k8s_client_new(const struct cp_k8s_client_opts *o, char *err,
                                        size_t errlen);
void cp_k8s_client_free(struct cp_k8s_client *c); /* accepts NULL */

/* "HOST:PORT" of the server, for logs. */
const char *cp_k8s_client_where(const struct cp_k8s_client *c);

/* Runs one request: connects (TLS), sends method path (with its query) and an optional
 * body of type ctype, and reads the whole response into *out (bounded by
 * CP_HTTPC_BODY_MAX). With on_body set, a 2xx body is streamed to it instead (a watch),
 * and read_timeout_ms (0: the client's timeout) bounds the wait for each piece. slot, when
 * not NULL, shows the connection to cp_k8s_slot_cancel. Returns 0 with *out (free with
 * cp_httpc_response_done; any HTTP status), -ECANCELED after a cancel, or -errno with err
 * set. */
int cp_k8s_request(struct cp_k8s_client *c, struct cp_k8s_slot *slot, const char *method,
                   const char *path, const char *ctype, const char *body, size_t body_len,
                   int (*on_body)(void *ud, const char *data, size_t len), void *body_ud,
                   int read_timeout_ms, struct cp_httpc_response *out, char *err, size_t errlen);

/* Ends the slot's connection (shutdown of its socket: a blocked call returns) and keeps
 * new ones from starting. Any thread. */
void cp_k8s_slot_cancel(struct cp_k8s_slot *slot);

#endif
