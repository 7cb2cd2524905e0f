/* tt-sign: a test client of tether-control's Identity.Sign, for integration tests and the
 * Sign benchmark. It makes a P-256 key and a CSR, connects (TLS, checking the control
 * plane's serving identity) anonymously with a bootstrap token or a Kubernetes
 * service-account token (--jwt-file, sent as k8s_sa_token as it is in the file, bar
 * trailing whitespace), or with a certificate for a renewal, and calls Sign, once or
 * --count times on one connection.
 *
 *   tt-sign --control ADDR:PORT --bundle FILE --spiffe-id ID
 *           [--token-file FILE | --jwt-file FILE | --cert FILE --key FILE] [--bad-csr]
 *           [--out PREFIX]
 *           [--count N]
 *
 * --bad-csr sends a CSR whose signature does not verify (an attacker's refused request).
 * --out writes PREFIX.crt (the chain) and PREFIX.key on success. Prints one JSON line per
 * call, {"code": N, "details": "...", "serial": "..."}; with --count N only a summary,
 * {"calls", "ok", "seconds", "per_second", "last_code", "last_details"}. Exit 0 when
 * every call answered OK, 1 when one was refused, 2 on a usage or connection error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include "control/tlspipe.h"
#include "core/spiffe.h"
#include "core/util.h"
#include "grpc_glue.h"
#include "tether/v1/tether.pb-c.h"
#include "tls/identity.h"
#include "tls/tls.h"

#define SIGN_PATH  "/tether.v1.Identity/Sign"
#define TIMEOUT_MS 10000

static char *read_text(const char *path)
{
    char *data = NULL;
    size_t len;

    if (tt_file_read(path, 1 << 20, &data, &len) != 0) {
        fprintf(stderr, "tt-sign: %s: cannot read\n", path);
        return NULL;
    }
    while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == ' ' || data[len - 1] == '\r'))
        data[--len] = '\0';
    return data;
}

static int write_text(const char *prefix, const char *ext, const char *text, int mode)
{
    char path[1024];
    FILE *f;

    snprintf(path, sizeof(path), "%s.%s", prefix, ext);
    f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs(text, f);
    fclose(f);
    return chmod(path, (mode_t)mode);
}

/* Connects and hands the plaintext side to a gRPC channel. */
static struct tt_grpc_channel *connect_control(const char *addr_text, struct tt_identity *id,
                                               enum tt_tls_role role, const char *control_id)
{
    struct tt_addr addr;
    struct tt_tls *tls;
    int fd, app_fd, r;

    if (tt_addr_parse(addr_text, 1, &addr) != 0) {
        fprintf(stderr, "tt-sign: --control %s: expected ADDR:PORT\n", addr_text);
        return NULL;
    }
    r = tt_tlspipe_connect(&addr, TIMEOUT_MS, &fd);
    if (r < 0) {
        fprintf(stderr, "tt-sign: connect %s: %s\n", addr_text, strerror(-r));
        return NULL;
    }
    tls = tt_tls_new(id, role, control_id);
    if (tls == NULL || (r = tt_tlspipe_handshake(fd, tls, TIMEOUT_MS)) < 0) {
        fprintf(stderr, "tt-sign: TLS with %s failed (%d)\n", addr_text, r);
        tt_tls_free(tls);
        close(fd);
        return NULL;
    }
    if (tt_tlspipe_new(fd, tls, &app_fd, NULL) < 0)
        return NULL;
    return tt_grpc_channel_new_from_fd(app_fd);
}

int main(int argc, char **argv)
{
    const char *control = NULL, *bundle_path = NULL, *id = NULL, *token_path = NULL;
    const char *cert_path = NULL, *key_path = NULL, *out = NULL, *jwt_path = NULL;
    char *bundle, *token = NULL, *key_pem = NULL, err[512], td[256], control_id[512];
    Tether__V1__SignRequest req = TETHER__V1__SIGN_REQUEST__INIT;
    struct tt_identity *conn_id;
    struct tt_grpc_channel *ch;
    bool bad_csr = false;
    long count = 0;
    size_t key_len, csr_len;
    uint8_t *csr;
    long ok = 0, calls;
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    char details[1024] = "";
    struct timespec t0, t1;

    for (int i = 1; i < argc; i++) {
        const char **dst = NULL;

        if (strcmp(argv[i], "--bad-csr") == 0) {
            bad_csr = true;
            continue;
        }
        if (strcmp(argv[i], "--control") == 0)
            dst = &control;
        else if (strcmp(argv[i], "--bundle") == 0)
            dst = &bundle_path;
        else if (strcmp(argv[i], "--spiffe-id") == 0)
            dst = &id;
        else if (strcmp(argv[i], "--token-file") == 0)
            dst = &token_path;
        else if (strcmp(argv[i], "--jwt-file") == 0)
            dst = &jwt_path;
        else if (strcmp(argv[i], "--cert") == 0)
            dst = &cert_path;
        else if (strcmp(argv[i], "--key") == 0)
            dst = &key_path;
        else if (strcmp(argv[i], "--out") == 0)
            dst = &out;
        else if (strcmp(argv[i], "--count") == 0 && i + 1 < argc) {
            count = atol(argv[++i]);
            continue;
        }
        if (dst == NULL || i + 1 >= argc) {
            fprintf(stderr, "tt-sign: bad argument %s (see the comment in tt-sign.c)\n", argv[i]);
            return 2;
        }
        *dst = argv[++i];
    }
    if (control == NULL || bundle_path == NULL || id == NULL ||
        (token_path == NULL && jwt_path == NULL && (cert_path == NULL || key_path == NULL))) {
        fprintf(stderr, "tt-sign: --control, --bundle, --spiffe-id and --token-file, --jwt-file "
                        "or --cert/--key are required\n");
        return 2;
    }
    if ((bundle = read_text(bundle_path)) == NULL ||
        (token_path != NULL && (token = read_text(token_path)) == NULL) ||
        (jwt_path != NULL && (token = read_text(jwt_path)) == NULL))
        return 2;
    if (tt_spiffe_trust_domain(id, td, sizeof(td)) != 0) {
        fprintf(stderr, "tt-sign: --spiffe-id %s: no trust domain\n", id);
        return 2;
    }
    snprintf(control_id, sizeof(control_id), "spiffe://%s/ns/tether-system/sa/tether-control", td);
    if (token != NULL)
        conn_id = tt_identity_trust_only(bundle, strlen(bundle), "--bundle", err, sizeof(err));
    else
        conn_id = tt_identity_load(cert_path, key_path, bundle_path, err, sizeof(err));
    if (conn_id == NULL) {
        fprintf(stderr, "tt-sign: %s\n", err);
        return 2;
    }
    if (tt_identity_keygen(&key_pem, &key_len) != 0 ||
        tt_identity_csr(key_pem, key_len, id, &csr, &csr_len) != 0) {
        fprintf(stderr, "tt-sign: cannot make a key and CSR\n");
        return 2;
    }
    if (bad_csr)
        csr[csr_len - 1] ^= 0x55; /* the signature's last byte: it no longer verifies */
    ch = connect_control(control, conn_id, token != NULL ? TT_TLS_CLIENT_ANONYMOUS : TT_TLS_CLIENT,
                         control_id);
    if (ch == NULL)
        return 2;
    req.csr_der.data = csr;
    req.csr_der.len = csr_len;
    req.spiffe_id = (char *)id;
    if (jwt_path != NULL)
        req.k8s_sa_token = token;
    else
        req.bootstrap_token = token;
    calls = count > 0 ? count : 1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < calls; i++) {
        Tether__V1__SignResponse *resp = NULL;

        if (tt_grpc_call_unary(ch, SIGN_PATH, &req.base, &tether__v1__sign_response__descriptor,
                               TIMEOUT_MS, (ProtobufCMessage **)&resp, &code, details,
                               sizeof(details)) < 0) {
            fprintf(stderr, "tt-sign: the call could not be made\n");
            return 2;
        }
        if (code == GRPC_STATUS_OK)
            ok++;
        if (count == 0) {
            /* Details are the server's words: quotes and backslashes escaped, control
             * characters dropped, so the line stays JSON. */
            printf("{\"code\": %d, \"details\": \"", (int)code);
            for (const char *p = code == GRPC_STATUS_OK ? "" : details; *p != '\0'; p++) {
                if (*p == '"' || *p == '\\')
                    putchar('\\');
                if ((unsigned char)*p >= 0x20)
                    putchar(*p);
            }
            printf("\", \"serial\": \"%s\"}\n", resp ? resp->serial : "");
            if (resp != NULL && out != NULL &&
                (write_text(out, "crt", resp->cert_chain_pem, 0644) != 0 ||
                 write_text(out, "key", key_pem, 0600) != 0))
                fprintf(stderr, "tt-sign: cannot write %s.crt/.key\n", out);
        }
        if (resp != NULL)
            protobuf_c_message_free_unpacked(&resp->base, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (count > 0) {
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;

        printf("{\"calls\": %ld, \"ok\": %ld, \"seconds\": %.3f, \"per_second\": %.1f, "
               "\"last_code\": %d}\n",
               calls, ok, s, (double)calls / s, (int)code);
    }
    fflush(stdout);
    /* The relay thread and gRPC are left to the process's exit. */
    _exit(ok == calls ? 0 : 1);
}
