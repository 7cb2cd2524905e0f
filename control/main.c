/* tether-control: the control plane's process. Flags, the state directory, the CA, the
 * operator API on a libuv loop, the sidecar API (gRPC over mTLS, sidecar_api.c), and
 * SIGTERM/SIGINT. The only place in control/ that exits.
 *
 * Exit status: 0 after a signal, 1 when a runtime start-up step fails (state, CA,
 * listeners), 2 for bad flags. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "api.h"
#include "ca.h"
#include "log.h"
#include "spiffe.h"
#include "store.h"
#include "util.h"

#ifdef CP_HAVE_SIDECAR_API
#include "sidecar_api.h"
#endif

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

static const char usage[] =
    "usage: tether-control --state-dir DIR [options]\n"
    "\n"
    "  --state-dir DIR            CA, tokens, policy, revocations, services, issued records\n"
    "  --trust-domain TD          SPIFFE trust domain (default cluster.local)\n"
    "  --listen-sidecars ADDR:PORT  gRPC over mTLS for sidecars (default 0.0.0.0:15012)\n"
    "  --listen-api ADDR:PORT     operator HTTP/JSON API, loopback only (default "
    "127.0.0.1:15014)\n"
    "  --cert-ttl DURATION        lifetime of workload certificates (default 1h)\n"
    "  --ca-cert FILE --ca-key FILE [--ca-chain FILE]\n"
    "                             use this root or intermediate instead of the state's own\n"
    "  --log-level LEVEL          debug, info, warn, error (default info)\n"
    "  -h, --help                 this text\n";

struct flags {
    const char *state_dir;
    const char *trust_domain;
    const char *listen_sidecars;
    const char *listen_api;
    const char *cert_ttl;
    const char *ca_cert, *ca_key, *ca_chain;
    const char *log_level;
};

struct control {
    uv_loop_t *loop;
    uv_signal_t sigterm, sigint;
    struct cp_store *store;
    struct cp_ca *ca;
    struct cp_api *api;
#ifdef CP_HAVE_SIDECAR_API
    struct cp_sidecar_api *sidecars;
#endif
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
        {"--listen-api", offsetof(struct flags, listen_api)},
        {"--cert-ttl", offsetof(struct flags, cert_ttl)},
        {"--ca-cert", offsetof(struct flags, ca_cert)},
        {"--ca-key", offsetof(struct flags, ca_key)},
        {"--ca-chain", offsetof(struct flags, ca_chain)},
        {"--log-level", offsetof(struct flags, log_level)},
    };

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        size_t k;

        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return -1;
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

static void on_signal_close(uv_handle_t *h)
{
}

/* SIGTERM/SIGINT: stop serving; the loop ends once every handle is closed. */
static void on_signal(uv_signal_t *s, int signum)
{
    struct control *c = s->data;

    tt_log(TT_LOG_INFO, "control_stopping", TT_LS("signal", signum == SIGTERM ? "TERM" : "INT"));
#ifdef CP_HAVE_SIDECAR_API
    cp_sidecar_api_stop(c->sidecars);
    c->sidecars = NULL;
#endif
    cp_api_close(c->api);
    c->api = NULL;
    uv_close((uv_handle_t *)&c->sigterm, on_signal_close);
    uv_close((uv_handle_t *)&c->sigint, on_signal_close);
}

#ifdef CP_HAVE_SIDECAR_API
/* The store changed what sidecars receive: push it (any thread). */
static void on_store_change(void *ud, uint64_t version)
{
    struct control *c = ud;

    if (c->sidecars)
        cp_sidecar_api_push(c->sidecars);
}
#endif

/* Starts the gRPC side for sidecars on --listen-sidecars. Without sidecar_api.c built
 * in, says so and serves the operator API only. Returns 0 or EXIT_RUNTIME. */
static int start_sidecar_side(struct control *c, const struct tt_addr *listen, uint64_t ttl_ms)
{
#ifdef CP_HAVE_SIDECAR_API
    struct cp_sidecar_api_opts so = {
        .listen = listen, .ca = c->ca, .store = c->store, .cert_ttl_ms = ttl_ms};
    char err[512] = "";

    c->sidecars = cp_sidecar_api_start(&so, err, sizeof(err));
    if (c->sidecars == NULL) {
        tt_log(TT_LOG_ERROR, "control_start_failed", TT_LS("error", err));
        return EXIT_RUNTIME;
    }
    cp_store_set_change_cb(c->store, on_store_change, c);
    tt_log(TT_LOG_INFO, "sidecar_api_listening", TT_LS("addr", listen->text),
           TT_LI("port", cp_sidecar_api_port(c->sidecars)));
    return 0;
#else
    tt_log(TT_LOG_WARN, "sidecar_api_not_built", TT_LS("addr", listen->text));
    return 0;
#endif
}

int main(int argc, char **argv)
{
    struct flags f = {.trust_domain = "cluster.local",
                      .listen_sidecars = "0.0.0.0:15012",
                      .listen_api = "127.0.0.1:15014",
                      .cert_ttl = "1h",
                      .log_level = "info"};
    struct control c = {0};
    struct cp_ca_opts co = {0};
    struct cp_api_opts ao = {0};
    struct tt_addr sidecar_addr;
    enum tt_log_level level;
    char td_id[600], err[1024] = "";
    uint64_t ttl_ms;
    int rc;

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
    if ((f.ca_cert == NULL) != (f.ca_key == NULL))
        return die_usage("--ca-cert and --ca-key go together", NULL);
    if (f.ca_chain != NULL && f.ca_cert == NULL)
        return die_usage("--ca-chain needs --ca-cert and --ca-key", NULL);
    rc = tt_addr_parse(f.listen_sidecars, 1, &sidecar_addr);
    if (rc != 0)
        return die_usage("--listen-sidecars: expected IP:PORT, [IPv6]:PORT or host:PORT, got ",
                         f.listen_sidecars);

    c.store = cp_store_open(f.state_dir, err, sizeof(err));
    if (c.store == NULL) {
        tt_log(TT_LOG_ERROR, "state_invalid", TT_LS("error", err));
        fprintf(stderr, "tether-control: %s\n", err);
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
    rc = cp_store_bundle_set(c.store, cp_ca_bundle_pem(c.ca));
    if (rc != 0) {
        tt_log(TT_LOG_ERROR, "state_write_failed", TT_LS("error", strerror(-rc)));
        rc = EXIT_RUNTIME;
        goto out_ca;
    }

    c.loop = uv_default_loop();
    ao.listen = f.listen_api;
    c.api = cp_api_start(c.loop, &ao, c.store, c.ca, err, sizeof(err));
    if (c.api == NULL) {
        tt_log(TT_LOG_ERROR, "control_start_failed", TT_LS("error", err));
        fprintf(stderr, "tether-control: %s\n", err);
        rc = EXIT_RUNTIME;
        goto out_ca;
    }
    tt_log(TT_LOG_INFO, "api_listening", TT_LS("addr", f.listen_api),
           TT_LI("port", cp_api_port(c.api)));
    rc = start_sidecar_side(&c, &sidecar_addr, ttl_ms);
    if (rc != 0) {
        cp_api_close(c.api);
        uv_run(c.loop, UV_RUN_DEFAULT);
        goto out_ca;
    }
    uv_signal_init(c.loop, &c.sigterm);
    uv_signal_init(c.loop, &c.sigint);
    c.sigterm.data = &c;
    c.sigint.data = &c;
    uv_signal_start(&c.sigterm, on_signal, SIGTERM);
    uv_signal_start(&c.sigint, on_signal, SIGINT);
    tt_log(TT_LOG_INFO, "control_started", TT_LS("trust_domain", f.trust_domain),
           TT_LS("state_dir", f.state_dir), TT_LS("cert_ttl", f.cert_ttl),
           TT_LU("version", cp_store_version(c.store)));
    uv_run(c.loop, UV_RUN_DEFAULT);
    uv_loop_close(c.loop);
    tt_log(TT_LOG_INFO, "control_stopped", TT_LS("state_dir", f.state_dir));
    rc = 0;
out_ca:
    cp_ca_free(c.ca);
out_store:
    cp_store_free(c.store);
    return rc;
}
