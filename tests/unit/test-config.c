/* Unit tests for config.c: flags, the JSON file, their precedence, every error message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "app/config.h"
#include "core/errors.h"

#define ID_API "spiffe://cluster.local/ns/shop/sa/api"
#define ID_DB  "spiffe://cluster.local/ns/shop/sa/db"

/* A temporary directory holding the files one test writes. */
static char tmpdir[64];

static int setup_dir(void **state)
{
    strcpy(tmpdir, "/tmp/tt-test-config-XXXXXX");
    return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int teardown_dir(void **state)
{
    char cmd[128];

    /* Only the directory this test created. */
    if (chdir("/") != 0)
        return -1;
    snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Writes text to tmpdir/name; returns the path (heap, caller frees). */
static char *write_tmp(const char *name, const char *text)
{
    char *path;
    FILE *f;

    assert_true(asprintf(&path, "%s/%s", tmpdir, name) > 0);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* Runs tt_config_parse_args on a NULL-terminated list of arguments (program name added).
 * argv is built fresh each time from copies, as main() would see it. */
static int parse(struct tt_config *cfg, char *err, size_t errlen, ...)
{
    char *argv[64];
    int argc = 0, rc;
    va_list ap;
    const char *a;

    argv[argc++] = strdup("tether-sidecar");
    va_start(ap, errlen);
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < 63);
        argv[argc++] = strdup(a);
    }
    va_end(ap);
    argv[argc] = NULL;
    rc = tt_config_parse_args(argc, argv, cfg, err, errlen);
    for (int i = 0; i < argc; i++)
        free(argv[i]);
    /* Whatever happened, the message is one line. */
    assert_null(strchr(err, '\n'));
    return rc;
}

#define IDENTITY "--identity-cert", "c.pem", "--identity-key", "k.pem", "--trust-bundle", "b.pem"

/* Expects parse(...) to fail with a message containing `want`. */
#define assert_parse_error(want, ...)                                                              \
    do {                                                                                           \
        struct tt_config cfg_;                                                                     \
        char err_[512];                                                                            \
        int rc_ = parse(&cfg_, err_, sizeof(err_), __VA_ARGS__, NULL);                             \
        if (rc_ != TT_E_CONFIG || strstr(err_, (want)) == NULL)                                    \
            fail_msg("rc %d, err \"%s\", wanted \"%s\"", rc_, err_, (want));                       \
        tt_config_done(&cfg_);                                                                     \
    } while (0)

static unsigned expected_default_workers(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n < 1 ? 1 : n > 256 ? 256 : (unsigned)n;
}

static void test_config_flags_defaults(void **state)
{
    struct tt_config cfg;
    char err[256];

    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--inbound",
                           "127.0.0.1:16006=127.0.0.1:8080", NULL),
                     0);
    assert_null(cfg.config_path);
    assert_string_equal(cfg.cert_path, "c.pem");
    assert_string_equal(cfg.key_path, "k.pem");
    assert_string_equal(cfg.bundle_path, "b.pem");
    assert_null(cfg.policy_path);
    assert_string_equal(cfg.admin.text, TT_DEFAULT_ADMIN);
    assert_int_equal(tt_addr_port(&cfg.admin), 15000);
    assert_int_equal(cfg.workers, expected_default_workers());
    assert_int_equal(cfg.log_level, TT_LOG_INFO);
    assert_int_equal(cfg.max_connections, TT_DEFAULT_MAX_CONNECTIONS);
    assert_int_equal(cfg.handshake_timeout_ms, 10000);
    assert_int_equal(cfg.connect_timeout_ms, 5000);
    assert_int_equal(cfg.idle_timeout_ms, 3600000);
    assert_int_equal(cfg.drain_timeout_ms, 20000);
    assert_true(cfg.pool);
    assert_int_equal(cfg.n_listeners, 1);
    assert_int_equal(cfg.listeners[0].kind, TT_LISTENER_INBOUND);
    assert_string_equal(cfg.listeners[0].name, "inbound:127.0.0.1:16006");
    assert_string_equal(cfg.listeners[0].listen.text, "127.0.0.1:16006");
    assert_string_equal(cfg.listeners[0].target.text, "127.0.0.1:8080");
    assert_null(cfg.listeners[0].expected_id);
    tt_config_done(&cfg);
    assert_null(cfg.listeners);
    assert_int_equal(cfg.n_listeners, 0);
}

static void test_config_control(void **state)
{
    struct tt_config cfg;
    char err[256];

    assert_int_equal(parse(&cfg, err, sizeof(err), "--control", "127.0.0.1:15012",
                           "--control-bundle", "cp.pem", "--join-token", "tok.txt", "--spiffe-id",
                           ID_API, "--inbound", "127.0.0.1:16006=127.0.0.1:8080", NULL),
                     0);
    assert_true(cfg.has_control);
    assert_string_equal(cfg.control.text, "127.0.0.1:15012");
    assert_string_equal(cfg.control_bundle_path, "cp.pem");
    assert_string_equal(cfg.join_token_path, "tok.txt");
    assert_null(cfg.jwt_path);
    assert_string_equal(cfg.spiffe_id, ID_API);
    assert_null(cfg.cert_path);
    assert_null(cfg.policy_path);
    tt_config_done(&cfg);
    assert_false(cfg.has_control);

    /* A Kubernetes service-account token instead of the join token. */
    assert_int_equal(parse(&cfg, err, sizeof(err), "--control", "127.0.0.1:15012",
                           "--control-bundle", "cp.pem", "--jwt-file", "/var/run/sa/token",
                           "--spiffe-id", ID_API, "--inbound", "127.0.0.1:16006=127.0.0.1:8080",
                           NULL),
                     0);
    assert_string_equal(cfg.jwt_path, "/var/run/sa/token");
    assert_null(cfg.join_token_path);
    tt_config_done(&cfg);
}

/* --crl is repeatable and adds to identity.crls (resolved against the file's directory);
 * a bad value or --crl with --control is refused with a message naming it. */
static void test_config_crls(void **state)
{
    struct tt_config cfg;
    char err[512], want[256];
    char *path = write_tmp("crls.json", "{\"identity\": {\"crls\": [\"a.crl\", \"/abs/b.crl\"]}}");

    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", path, IDENTITY, "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", "--crl", "c.crl", NULL),
                     0);
    assert_int_equal(cfg.n_crls, 3);
    snprintf(want, sizeof(want), "%s/a.crl", tmpdir);
    assert_string_equal(cfg.crl_paths[0], want);
    assert_string_equal(cfg.crl_paths[1], "/abs/b.crl");
    assert_string_equal(cfg.crl_paths[2], "c.crl");
    tt_config_done(&cfg);
    free(path);

    path = write_tmp("crls-bad.json", "{\"identity\": {\"crls\": \"a.crl\"}}");
    assert_parse_error("identity.crls: expected an array of file names", "--config", path);
    free(path);
    path = write_tmp("crls-bad2.json", "{\"identity\": {\"crls\": [\"\"]}}");
    assert_parse_error("identity.crls[0]: expected a file name", "--config", path);
    free(path);
    assert_parse_error("--crl \"\": expected a file name", IDENTITY, "--inbound",
                       "127.0.0.1:1=127.0.0.1:2", "--crl", "");
    assert_parse_error("--crl x.crl: not with --control", "--control", "127.0.0.1:15012",
                       "--control-bundle", "cp.pem", "--join-token", "t", "--spiffe-id", ID_API,
                       "--inbound", "127.0.0.1:1=127.0.0.1:2", "--crl", "x.crl");
}

static void test_config_control_file(void **state)
{
    struct tt_config cfg;
    char err[512], want[256];
    char *path = write_tmp("control.json",
                           "{\"control\": {\"address\": \"127.0.0.1:15012\", \"bundle\": "
                           "\"cp.pem\", \"join_token\": \"/abs/tok\", \"spiffe_id\": \"" ID_API
                           "\"}, \"inbound\": [{\"listen\": \"127.0.0.1:16006\", \"forward\": "
                           "\"127.0.0.1:8080\"}]}");

    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", path, NULL), 0);
    assert_true(cfg.has_control);
    assert_string_equal(cfg.control.text, "127.0.0.1:15012");
    snprintf(want, sizeof(want), "%s/cp.pem", tmpdir);
    assert_string_equal(cfg.control_bundle_path, want);
    assert_string_equal(cfg.join_token_path, "/abs/tok");
    assert_string_equal(cfg.spiffe_id, ID_API);
    tt_config_done(&cfg);
    free(path);

    path = write_tmp("control-jwt.json",
                     "{\"control\": {\"address\": \"127.0.0.1:15012\", \"bundle\": "
                     "\"cp.pem\", \"jwt_file\": \"sa/token\", \"spiffe_id\": \"" ID_API
                     "\"}, \"inbound\": [{\"listen\": \"127.0.0.1:16006\", \"forward\": "
                     "\"127.0.0.1:8080\"}]}");
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", path, NULL), 0);
    snprintf(want, sizeof(want), "%s/sa/token", tmpdir);
    assert_string_equal(cfg.jwt_path, want);
    assert_null(cfg.join_token_path);
    tt_config_done(&cfg);
    /* Both proofs, one from the file and one from a flag: refused. */
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", path, "--join-token", "t", NULL),
                     TT_E_CONFIG);
    assert_non_null(strstr(err, "--join-token and --jwt-file exclude each other"));
    tt_config_done(&cfg);
    free(path);

    path = write_tmp("control-bad.json", "{\"control\": {\"adress\": \"127.0.0.1:1\"}}");
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", path, NULL), TT_E_CONFIG);
    assert_non_null(strstr(err, "control: unknown key \"adress\""));
    tt_config_done(&cfg);
    free(path);
    path = write_tmp("control-id.json", "{\"control\": {\"spiffe_id\": \"http://x\"}}");
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", path, NULL), TT_E_CONFIG);
    assert_non_null(strstr(err, "control.spiffe_id: expected a SPIFFE ID"));
    tt_config_done(&cfg);
    free(path);
}

static void test_config_flags_all(void **state)
{
    struct tt_config cfg;
    char err[256];

    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--outbound",
                           "127.0.0.1:15001=127.0.0.1:16006@" ID_API, "--inbound",
                           "[::1]:0=localhost:8080", "--policy", "p.json", "--admin", "127.0.0.1:0",
                           "--workers", "3", "--log-level", "debug", "--max-connections=1000000",
                           "--handshake-timeout", "250ms", "--connect-timeout", "1s",
                           "--idle-timeout", "1h30m", "--drain-timeout", "0s", "--outbound",
                           "127.0.0.1:15002=[::1]:9000@" ID_DB, "--request-timeout", "15s", NULL),
                     0);
    assert_string_equal(cfg.policy_path, "p.json");
    assert_string_equal(cfg.admin.text, "127.0.0.1:0");
    assert_int_equal(cfg.workers, 3);
    assert_int_equal(cfg.log_level, TT_LOG_DEBUG);
    assert_int_equal(cfg.max_connections, 1000000);
    assert_int_equal(cfg.handshake_timeout_ms, 250);
    assert_int_equal(cfg.connect_timeout_ms, 1000);
    assert_int_equal(cfg.idle_timeout_ms, 5400000);
    assert_int_equal(cfg.drain_timeout_ms, 0);
    assert_int_equal(cfg.request_timeout_ms, 15000);
    /* Listeners in command-line order. */
    assert_int_equal(cfg.n_listeners, 3);
    assert_int_equal(cfg.listeners[0].kind, TT_LISTENER_OUTBOUND);
    assert_string_equal(cfg.listeners[0].name, "outbound:127.0.0.1:15001");
    assert_string_equal(cfg.listeners[0].target.text, "127.0.0.1:16006");
    assert_string_equal(cfg.listeners[0].expected_id, ID_API);
    assert_int_equal(cfg.listeners[1].kind, TT_LISTENER_INBOUND);
    assert_string_equal(cfg.listeners[1].name, "inbound:[::1]:0");
    assert_string_equal(cfg.listeners[1].target.text, "localhost:8080");
    assert_null(cfg.listeners[1].expected_id);
    assert_string_equal(cfg.listeners[2].name, "outbound:127.0.0.1:15002");
    assert_string_equal(cfg.listeners[2].target.text, "[::1]:9000");
    assert_string_equal(cfg.listeners[2].expected_id, ID_DB);
    tt_config_done(&cfg);

    /* The last of a repeated single-valued flag wins; short -h is not needed for that. */
    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--workers", "2", "--workers", "5",
                           "--inbound", "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_int_equal(cfg.workers, 5);
    tt_config_done(&cfg);
}

static void test_config_parse_listener(void **state)
{
    struct tt_listener_cfg l;
    char err[512];

    assert_int_equal(tt_config_parse_listener(TT_LISTENER_INBOUND, "0.0.0.0:15006=127.0.0.1:8080",
                                              &l, err, sizeof(err)),
                     0);
    assert_int_equal(l.kind, TT_LISTENER_INBOUND);
    assert_string_equal(l.name, "inbound:0.0.0.0:15006");
    assert_int_equal(tt_addr_port(&l.target), 8080);
    assert_null(l.expected_id);

    assert_int_equal(tt_config_parse_listener(TT_LISTENER_OUTBOUND,
                                              "127.0.0.1:15001=10.0.0.7:16006@" ID_API, &l, err,
                                              sizeof(err)),
                     0);
    assert_int_equal(l.kind, TT_LISTENER_OUTBOUND);
    assert_string_equal(l.name, "outbound:127.0.0.1:15001");
    assert_string_equal(l.target.text, "10.0.0.7:16006");
    assert_string_equal(l.expected_id, ID_API);
    free(l.expected_id);

    static const struct {
        enum tt_listener_kind kind;
        const char *value, *want;
    } bad[] = {
        {TT_LISTENER_INBOUND, "127.0.0.1:16006",
         "--inbound 127.0.0.1:16006: expected LISTEN=FORWARD"},
        {TT_LISTENER_INBOUND, "=127.0.0.1:80", "expected LISTEN=FORWARD"},
        {TT_LISTENER_INBOUND, "127.0.0.1:80=", "expected LISTEN=FORWARD"},
        {TT_LISTENER_INBOUND, "", "expected LISTEN=FORWARD"},
        {TT_LISTENER_INBOUND, "127.0.0.1:99999=x",
         "--inbound 127.0.0.1:99999=x: port must be 0..65535"},
        {TT_LISTENER_INBOUND, "127.0.0.1:1=127.0.0.1:0",
         "forward address 127.0.0.1:0: port must be 1..65535"},
        {TT_LISTENER_INBOUND, "127.0.0.1:1=127.0.0.1:65536", "port must be 1..65535"},
        {TT_LISTENER_INBOUND, "::1:80=127.0.0.1:80", "IPv6 addresses need brackets"},
        {TT_LISTENER_INBOUND, "127.0.0.1:1=::1:80", "IPv6 addresses need brackets"},
        {TT_LISTENER_INBOUND, "127.0.0.1=127.0.0.1:80", "missing :PORT"},
        {TT_LISTENER_INBOUND, ":80=127.0.0.1:80", "empty host"},
        {TT_LISTENER_INBOUND, "127.0.0.1:1=127.0.0.1:8x", "expected a port number"},
        {TT_LISTENER_INBOUND, "127.0.0.1:1=nohost.invalid:80", "does not resolve"},
        {TT_LISTENER_INBOUND, "127.0.0.1:1=[::1:80", "expected [IPv6]:PORT"},
        {TT_LISTENER_OUTBOUND, "127.0.0.1:1=127.0.0.1:2", "expected LISTEN=UPSTREAM@SPIFFE_ID"},
        {TT_LISTENER_OUTBOUND, "127.0.0.1:1=127.0.0.1:2@", "expected LISTEN=UPSTREAM@SPIFFE_ID"},
        {TT_LISTENER_OUTBOUND, "127.0.0.1:1@" ID_API, "expected LISTEN=UPSTREAM@SPIFFE_ID"},
        {TT_LISTENER_OUTBOUND, "127.0.0.1:1=127.0.0.1:2@http://x/y",
         "invalid SPIFFE ID \"http://x/y\""},
        {TT_LISTENER_OUTBOUND, "127.0.0.1:1=127.0.0.1:2@spiffe://td", "invalid SPIFFE ID"},
        {TT_LISTENER_OUTBOUND, "127.0.0.1:1=127.0.0.1:0@" ID_API,
         "upstream address 127.0.0.1:0: port must be 1..65535"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&l, 0x55, sizeof(l));
        err[0] = '\0';
        assert_int_equal(tt_config_parse_listener(bad[i].kind, bad[i].value, &l, err, sizeof(err)),
                         TT_E_CONFIG);
        if (strstr(err, bad[i].want) == NULL)
            fail_msg("\"%s\": got \"%s\", wanted \"%s\"", bad[i].value, err, bad[i].want);
        assert_null(l.expected_id); /* nothing to free on error */
    }
    /* A listen port of 0 is fine: the kernel picks one. */
    assert_int_equal(tt_config_parse_listener(TT_LISTENER_INBOUND, "127.0.0.1:0=127.0.0.1:80", &l,
                                              err, sizeof(err)),
                     0);
    assert_int_equal(tt_addr_port(&l.listen), 0);
}

static const char full_json[] =
    "{\"identity\":{\"cert\":\"certs/web.pem\",\"key\":\"/abs/web.key\","
    "\"trust_bundle\":\"bundle.pem\"},\n"
    " \"policy\":\"policy.json\", \"admin\":\"127.0.0.1:15100\", \"workers\":2,\n"
    " \"log_level\":\"warn\", \"max_connections\":100,\n"
    " \"timeouts\":{\"handshake\":\"3s\",\"connect\":\"2s\",\"idle\":\"5m\",\"drain\":\"1s\","
    "\"request\":\"30s\"},\n"
    " \"inbound\":[{\"listen\":\"127.0.0.1:16006\",\"forward\":\"127.0.0.1:8080\"}],\n"
    " \"outbound\":[{\"listen\":\"127.0.0.1:15001\",\"upstream\":\"127.0.0.1:16007\","
    "\"spiffe_id\":\"" ID_API "\",\"request_timeout\":\"2s\"},\n"
    "  {\"listen\":\"127.0.0.1:15002\",\"upstream\":\"127.0.0.1:16008\","
    "\"spiffe_id\":\"" ID_API "\",\"request_timeout\":\"0s\"},\n"
    "  {\"listen\":\"127.0.0.1:15003\",\"upstream\":\"127.0.0.1:16009\","
    "\"spiffe_id\":\"" ID_API "\"}]}\n";

static void test_config_file(void **state)
{
    struct tt_config cfg;
    char err[512], want[256];
    char *path = write_tmp("sidecar.json", full_json);

    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", path, NULL), 0);
    assert_string_equal(cfg.config_path, path);
    /* Relative paths are relative to the file's directory, absolute ones stay. */
    snprintf(want, sizeof(want), "%s/certs/web.pem", tmpdir);
    assert_string_equal(cfg.cert_path, want);
    assert_string_equal(cfg.key_path, "/abs/web.key");
    snprintf(want, sizeof(want), "%s/bundle.pem", tmpdir);
    assert_string_equal(cfg.bundle_path, want);
    snprintf(want, sizeof(want), "%s/policy.json", tmpdir);
    assert_string_equal(cfg.policy_path, want);
    assert_string_equal(cfg.admin.text, "127.0.0.1:15100");
    assert_int_equal(cfg.workers, 2);
    assert_int_equal(cfg.log_level, TT_LOG_WARN);
    assert_int_equal(cfg.max_connections, 100);
    assert_int_equal(cfg.handshake_timeout_ms, 3000);
    assert_int_equal(cfg.connect_timeout_ms, 2000);
    assert_int_equal(cfg.idle_timeout_ms, 300000);
    assert_int_equal(cfg.drain_timeout_ms, 1000);
    assert_int_equal(cfg.request_timeout_ms, 30000);
    assert_int_equal(cfg.n_listeners, 4);
    /* Per outbound listener: its own, none ("0s"), or the global one (0). */
    assert_int_equal(cfg.listeners[1].request_timeout_ms, 2000);
    assert_int_equal(cfg.listeners[2].request_timeout_ms, TT_REQUEST_TIMEOUT_NONE);
    assert_int_equal(cfg.listeners[3].request_timeout_ms, 0);
    assert_string_equal(cfg.listeners[0].name, "inbound:127.0.0.1:16006");
    assert_string_equal(cfg.listeners[0].target.text, "127.0.0.1:8080");
    assert_string_equal(cfg.listeners[1].name, "outbound:127.0.0.1:15001");
    assert_string_equal(cfg.listeners[1].expected_id, ID_API);
    tt_config_done(&cfg);
    free(path);

    /* A file named without a directory keeps relative paths as they are (cwd). */
    assert_int_equal(chdir(tmpdir), 0);
    path = write_tmp("bare.json", "{\"identity\":{\"cert\":\"c.pem\",\"key\":\"k.pem\","
                                  "\"trust_bundle\":\"b.pem\"},\"inbound\":[{\"listen\":"
                                  "\"127.0.0.1:1\",\"forward\":\"127.0.0.1:2\"}]}");
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", "bare.json", NULL), 0);
    assert_string_equal(cfg.cert_path, "c.pem");
    assert_int_equal(cfg.workers, expected_default_workers());
    tt_config_done(&cfg);
    free(path);
}

static void test_config_flags_override_file(void **state)
{
    struct tt_config cfg;
    char err[512];
    char *path = write_tmp("sidecar.json", full_json);

    /* Flags win whether they come before or after --config. */
    assert_int_equal(parse(&cfg, err, sizeof(err), "--workers", "7", "--identity-cert", "/x.pem",
                           "--config", path, "--idle-timeout", "10s", "--admin", "127.0.0.1:15200",
                           "--log-level", "error", "--inbound", "127.0.0.1:16010=127.0.0.1:9090",
                           NULL),
                     0);
    assert_int_equal(cfg.workers, 7);
    assert_string_equal(cfg.cert_path, "/x.pem");
    assert_int_equal(cfg.idle_timeout_ms, 10000);
    assert_string_equal(cfg.admin.text, "127.0.0.1:15200");
    assert_int_equal(cfg.log_level, TT_LOG_ERROR);
    /* Untouched file values remain. */
    assert_int_equal(cfg.max_connections, 100);
    assert_int_equal(cfg.handshake_timeout_ms, 3000);
    /* --inbound adds to the file's listeners, after them. */
    assert_int_equal(cfg.n_listeners, 5);
    assert_string_equal(cfg.listeners[0].name, "inbound:127.0.0.1:16006");
    assert_string_equal(cfg.listeners[1].name, "outbound:127.0.0.1:15001");
    assert_string_equal(cfg.listeners[4].name, "inbound:127.0.0.1:16010");
    tt_config_done(&cfg);
    free(path);
}

/* Writes `json` as sidecar.json in tmpdir, then expects --config to fail with `want`. */
static void expect_file_error(const char *json, const char *want)
{
    char *path = write_tmp("sidecar.json", json);
    struct tt_config cfg;
    char err[512];

    /* Run from tmpdir so that messages name "sidecar.json" as it was given. */
    assert_int_equal(chdir(tmpdir), 0);
    int rc = parse(&cfg, err, sizeof(err), "--config", "sidecar.json", NULL);
    if (rc != TT_E_CONFIG || strstr(err, want) == NULL)
        fail_msg("%s: rc %d, err \"%s\", wanted \"%s\"", json, rc, err, want);
    tt_config_done(&cfg);
    free(path);
}

#define LISTEN_OK "\"inbound\":[{\"listen\":\"127.0.0.1:1\",\"forward\":\"127.0.0.1:2\"}]"

static void test_config_file_errors(void **state)
{
    expect_file_error("{\"timeouts\":{\"idle\":\"ten\"}}",
                      "sidecar.json: timeouts.idle: expected a duration such as \"10s\", got "
                      "\"ten\"");
    expect_file_error("{\"timeouts\":{\"connect\":5}}",
                      "sidecar.json: timeouts.connect: expected a duration such as \"10s\", got 5");
    expect_file_error("{\"timeouts\":{\"handshake\":\"0s\"}}",
                      "sidecar.json: timeouts.handshake: must be more than 0s");
    expect_file_error("{\"timeouts\":{\"idel\":\"1s\"}}",
                      "sidecar.json: timeouts: unknown key \"idel\"");
    expect_file_error("{\"timeouts\":[]}", "sidecar.json: timeouts: expected an object");
    expect_file_error("{\"inbound\":[{\"lissten\":\"127.0.0.1:1\",\"forward\":\"127.0.0.1:2\"}]}",
                      "sidecar.json: inbound[0]: unknown key \"lissten\"");
    expect_file_error("{\"foo\":1}", "sidecar.json: unknown key \"foo\"");
    expect_file_error("{\"identity\":{\"crt\":\"x\"}}",
                      "sidecar.json: identity: unknown key \"crt\"");
    expect_file_error("{\"identity\":\"x\"}", "sidecar.json: identity: expected an object");
    expect_file_error("{\"identity\":{\"cert\":\"\"}}",
                      "sidecar.json: identity.cert: expected a file name, got \"\"");
    expect_file_error("{\"identity\":{\"cert\":7}}",
                      "sidecar.json: identity.cert: expected a file name, got 7");
    expect_file_error("{\"policy\":\"a\\u0000b\"}", "sidecar.json: line 1");
    expect_file_error("{\"policy\":\"\"}", "sidecar.json: policy: expected a file name, got \"\"");
    expect_file_error("{\"workers\":0}",
                      "sidecar.json: workers: expected an integer 1..256, got 0");
    expect_file_error("{\"workers\":\"2\"}", "workers: expected an integer 1..256, got \"2\"");
    expect_file_error("{\"workers\":2.5}", "workers: expected an integer 1..256");
    expect_file_error("{\"max_connections\":1000001}",
                      "max_connections: expected an integer 1..1000000");
    expect_file_error("{\"log_level\":\"loud\"}",
                      "sidecar.json: log_level: expected debug, info, warn or error, got \"loud\"");
    expect_file_error("{\"admin\":\"::1:15000\"}", "sidecar.json: admin: ::1:15000: IPv6 "
                                                   "addresses need brackets");
    expect_file_error("{\"inbound\":{}}", "sidecar.json: inbound: expected an array");
    expect_file_error("{\"inbound\":[1]}", "sidecar.json: inbound[0]: expected an object");
    expect_file_error("{\"inbound\":[{\"listen\":\"127.0.0.1:1\"}]}",
                      "sidecar.json: inbound[0]: missing \"forward\"");
    expect_file_error("{" LISTEN_OK ",\"inbound\":[]}", "duplicate");
    expect_file_error("{\"inbound\":[{\"listen\":\"127.0.0.1:1\",\"forward\":\"127.0.0.1:0\"}]}",
                      "sidecar.json: inbound[0].forward: 127.0.0.1:0: port must be 1..65535");
    expect_file_error(
        "{\"inbound\":[{\"listen\":\"127.0.0.1:99999\",\"forward\":\"127.0.0.1:2\"}]}",
        "sidecar.json: inbound[0].listen: 127.0.0.1:99999: port must be 0..65535");
    expect_file_error("{\"outbound\":[{\"listen\":\"127.0.0.1:1\",\"upstream\":\"127.0.0.1:2\"}]}",
                      "sidecar.json: outbound[0]: missing \"spiffe_id\"");
    expect_file_error("{\"outbound\":[{\"listen\":\"127.0.0.1:1\",\"upstream\":\"127.0.0.1:2\","
                      "\"spiffe_id\":\"spiffe://td/a\"},{\"listen\":\"127.0.0.1:3\",\"upstream\":"
                      "\"127.0.0.1:2\",\"spiffe_id\":\"spiffe://TD/a\"}]}",
                      "sidecar.json: outbound[1].spiffe_id: invalid SPIFFE ID \"spiffe://TD/a\"");
    expect_file_error("{\"outbound\":[{\"listen\":\"127.0.0.1:1\",\"forward\":\"127.0.0.1:2\"}]}",
                      "sidecar.json: outbound[0]: unknown key \"forward\"");
    expect_file_error("{\"outbound\":[{\"listen\":\"127.0.0.1:1\",\"upstream\":\"127.0.0.1:2\","
                      "\"spiffe_id\":\"spiffe://td/a\",\"request_timeout\":5}]}",
                      "sidecar.json: outbound[0].request_timeout: expected a duration such as "
                      "\"30s\", got 5");
    expect_file_error("{\"inbound\":[{\"listen\":\"127.0.0.1:1\",\"forward\":\"127.0.0.1:2\","
                      "\"request_timeout\":\"1s\"}]}",
                      "sidecar.json: inbound[0]: unknown key \"request_timeout\"");
    expect_file_error("{\"timeouts\":{\"request\":\"soon\"}}",
                      "sidecar.json: timeouts.request: expected a duration");
    expect_file_error("{\"workers\":", "sidecar.json: line 1");
    expect_file_error("[]", "sidecar.json: expected a JSON object");
    expect_file_error("", "sidecar.json: line 1");

    /* Missing file, directory, and the 1 MiB limit. */
    assert_parse_error("nope.json: cannot read: No such file", "--config",
                       "/nonexistent/nope.json");
    assert_parse_error("cannot read", "--config", "/tmp");
    assert_parse_error("--config \"\": expected a file name", "--config", "");
    {
        size_t n = 1024 * 1024 + 10;
        char *big = malloc(n + 1);
        char *path;

        assert_non_null(big);
        memset(big, ' ', n);
        big[0] = '{';
        big[n - 1] = '}';
        big[n] = '\0';
        path = write_tmp("big.json", big);
        assert_parse_error("big.json: larger than 1 MiB", "--config", path);
        free(path);
        free(big);
    }
    /* A file error is reported even when the flags alone would be complete. */
    char *path = write_tmp("bad.json", "{\"workers\":-1}");
    assert_parse_error("workers: expected an integer 1..256", IDENTITY, "--inbound",
                       "127.0.0.1:1=127.0.0.1:2", "--config", path);
    free(path);
}

static void test_config_flag_errors(void **state)
{
    assert_parse_error("--workers 0: expected an integer 1..256", IDENTITY, "--workers", "0");
    assert_parse_error("--workers 257: expected an integer 1..256", IDENTITY, "--workers", "257");
    assert_parse_error("--workers -1: expected", IDENTITY, "--workers", "-1");
    assert_parse_error("--workers 2x: expected", IDENTITY, "--workers", "2x");
    assert_parse_error("--workers \"\": expected", IDENTITY, "--workers", "");
    assert_parse_error("--workers 99999999999999999999999: expected", IDENTITY, "--workers",
                       "99999999999999999999999");
    assert_parse_error("--max-connections 0: expected an integer 1..1000000", IDENTITY,
                       "--max-connections", "0");
    assert_parse_error("--max-connections 1000001: expected", IDENTITY, "--max-connections",
                       "1000001");
    assert_parse_error("--inbound 127.0.0.1:16006: expected LISTEN=FORWARD", IDENTITY, "--inbound",
                       "127.0.0.1:16006");
    assert_parse_error("--outbound 127.0.0.1:1=127.0.0.1:2: expected LISTEN=UPSTREAM@SPIFFE_ID",
                       IDENTITY, "--outbound", "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("--log-level loud: expected debug, info, warn or error", IDENTITY,
                       "--log-level", "loud");
    assert_parse_error("--idle-timeout ten: expected a duration such as \"10s\"", IDENTITY,
                       "--idle-timeout", "ten");
    assert_parse_error("--handshake-timeout 1.5s: expected a duration", IDENTITY,
                       "--handshake-timeout", "1.5s");
    assert_parse_error("--connect-timeout 0s: must be more than 0s", IDENTITY, "--connect-timeout",
                       "0s");
    assert_parse_error("--drain-timeout 1s1h: expected a duration", IDENTITY, "--drain-timeout",
                       "1s1h");
    assert_parse_error("--admin ::1:15000: IPv6 addresses need brackets", IDENTITY, "--admin",
                       "::1:15000");
    assert_parse_error("--admin 127.0.0.1: missing :PORT", IDENTITY, "--admin", "127.0.0.1");
    assert_parse_error("--identity-cert \"\": expected a file name",
                       "--identity-cert=", "--inbound", "127.0.0.1:1=127.0.0.1:2");

    /* getopt's own errors, in our words. */
    assert_parse_error("unknown option --foo (see --help)", IDENTITY, "--foo");
    assert_parse_error("unknown option --foo (see --help)", IDENTITY, "--foo=bar");
    assert_parse_error("unknown option -x (see --help)", IDENTITY, "-x");
    /* The control plane replaces the identity files and --policy. */
#define CONTROL                                                                                    \
    "--control", "127.0.0.1:15012", "--control-bundle", "cp.pem", "--join-token", "tok",           \
        "--spiffe-id", ID_API, "--inbound", "127.0.0.1:1=127.0.0.1:2"
    assert_parse_error("--control x: missing :PORT", IDENTITY, "--control", "x");
    assert_parse_error("--policy and --control exclude each other", CONTROL, "--policy", "p.json");
    assert_parse_error("exclude --control", CONTROL, "--identity-cert", "c.pem");
    assert_parse_error("--control needs --control-bundle", "--control", "127.0.0.1:15012",
                       "--join-token", "t", "--spiffe-id", ID_API, "--inbound",
                       "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("--control needs --spiffe-id", "--control", "127.0.0.1:15012",
                       "--control-bundle", "b", "--join-token", "t", "--inbound",
                       "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("--control needs --join-token", "--control", "127.0.0.1:15012",
                       "--control-bundle", "b", "--spiffe-id", ID_API, "--inbound",
                       "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("--spiffe-id spiffe://TD/x: expected a SPIFFE ID", "--control",
                       "127.0.0.1:15012", "--control-bundle", "b", "--join-token", "t",
                       "--spiffe-id", "spiffe://TD/x", "--inbound", "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("--join-token, --jwt-file and --spiffe-id need --control", IDENTITY,
                       "--join-token", "x", "--inbound", "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("--join-token, --jwt-file and --spiffe-id need --control", IDENTITY,
                       "--jwt-file", "x", "--inbound", "127.0.0.1:1=127.0.0.1:2");
    /* Exactly one proof for the first certificate. */
    assert_parse_error("--control needs --join-token FILE (a bootstrap token) or --jwt-file",
                       "--control", "127.0.0.1:15012", "--control-bundle", "b", "--spiffe-id",
                       ID_API, "--inbound", "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("--join-token and --jwt-file exclude each other", CONTROL, "--jwt-file",
                       "sa.jwt");
    assert_parse_error("option --workers requires a value", IDENTITY, "--workers");
    assert_parse_error("option --help takes no value", "--help=yes");
    assert_parse_error("unexpected argument \"extra\"", IDENTITY, "extra");
    assert_parse_error("unexpected argument \"extra\"", IDENTITY, "--", "extra");

    /* Whole-configuration checks. */
    assert_parse_error("missing --identity-cert (or identity.cert in the config file)",
                       "--identity-key", "k", "--trust-bundle", "b", "--inbound",
                       "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("missing --identity-key (or identity.key in the config file)",
                       "--identity-cert", "c", "--trust-bundle", "b", "--inbound",
                       "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("missing --trust-bundle (or identity.trust_bundle in the config file)",
                       "--identity-cert", "c", "--identity-key", "k", "--inbound",
                       "127.0.0.1:1=127.0.0.1:2");
    assert_parse_error("no listeners: give --inbound, --outbound or --transparent", IDENTITY);
    /* Transparent mode's flags: each bad value named, and none of them without the mode. */
    assert_parse_error("--outbound-unknown allow: expected passthrough or deny", IDENTITY,
                       "--transparent", "--pod-ip", "10.0.0.2", "--outbound-unknown", "allow");
    assert_parse_error("--inbound-mode lax: expected strict or permissive", IDENTITY,
                       "--transparent", "--pod-ip", "10.0.0.2", "--inbound-mode", "lax");
    assert_parse_error("--workload-ports 80,0: expected ports P[,P...], each 1..65535", IDENTITY,
                       "--transparent", "--pod-ip", "10.0.0.2", "--workload-ports", "80,0");
    assert_parse_error("--pod-ip 10.0.0.999: expected an IPv4 or IPv6 address", IDENTITY,
                       "--transparent", "--pod-ip", "10.0.0.999");
    assert_parse_error("need --transparent", IDENTITY, "--inbound", "127.0.0.1:0=127.0.0.1:80",
                       "--outbound-unknown", "deny");
    assert_parse_error("--service 10.0.0.2:80: expected ADDR:PORT=SPIFFE_ID", IDENTITY, "--inbound",
                       "127.0.0.1:0=127.0.0.1:80", "--service", "10.0.0.2:80");
    assert_parse_error("--service/services: services[0].spiffe_id: expected a SPIFFE ID", IDENTITY,
                       "--inbound", "127.0.0.1:0=127.0.0.1:80", "--service", "10.0.0.2:80=nope");
    assert_parse_error("duplicate listen address 127.0.0.1:16006", IDENTITY, "--inbound",
                       "127.0.0.1:16006=127.0.0.1:8080", "--outbound",
                       "127.0.0.1:16006=127.0.0.1:9@" ID_API);
    /* The same endpoint written two ways is still the same. */
    assert_parse_error("duplicate listen address", IDENTITY, "--inbound",
                       "[::1]:16006=127.0.0.1:8080", "--inbound", "[0:0::1]:16006=127.0.0.1:8081");
    assert_parse_error("duplicate listen address 127.0.0.1:15000", IDENTITY, "--inbound",
                       "127.0.0.1:15000=127.0.0.1:8080");

    /* Hostile input: control bytes never break the one-line message. */
    assert_parse_error("--workers 1?2: expected", IDENTITY, "--workers", "1\n2");
}

static void test_config_port_zero_listeners(void **state)
{
    struct tt_config cfg;
    char err[256];

    /* Two listeners on port 0 do not clash: each gets its own port from the kernel. */
    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--inbound",
                           "127.0.0.1:0=127.0.0.1:8080", "--inbound", "127.0.0.1:0=127.0.0.1:8081",
                           NULL),
                     0);
    assert_int_equal(cfg.n_listeners, 2);
    tt_config_done(&cfg);
}

static void test_config_repeated_calls(void **state)
{
    struct tt_config cfg;
    char err[256];

    for (int i = 0; i < 3; i++) {
        /* An error that stops getopt midway must not leak state into the next call. */
        assert_int_equal(parse(&cfg, err, sizeof(err), "-x", "--workers", NULL), TT_E_CONFIG);
        tt_config_done(&cfg);
        assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--workers", "4", "--inbound",
                               "127.0.0.1:1=127.0.0.1:2", NULL),
                         0);
        assert_int_equal(cfg.workers, 4);
        assert_int_equal(cfg.n_listeners, 1);
        tt_config_done(&cfg);
        /* A shorter command line after a longer one. */
        assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--outbound",
                               "127.0.0.1:1=127.0.0.1:2@" ID_API, NULL),
                         0);
        assert_int_equal(cfg.workers, expected_default_workers());
        assert_int_equal(cfg.n_listeners, 1);
        assert_int_equal(cfg.listeners[0].kind, TT_LISTENER_OUTBOUND);
        tt_config_done(&cfg);
    }
    /* tt_config_done is safe twice. */
    tt_config_done(&cfg);
}

/* --admin-allow-remote-control and admin_allow_remote_control: off unless given. */
static void test_config_admin_remote_control(void **state)
{
    struct tt_config cfg;
    char err[512];
    char *on = write_tmp("on.json", "{\"admin_allow_remote_control\": true}");
    char *off = write_tmp("off.json", "{\"admin_allow_remote_control\": false}");

    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--admin", "0.0.0.0:15000",
                           "--inbound", "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_false(cfg.admin_remote_control);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--admin-allow-remote-control",
                           "--inbound", "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_true(cfg.admin_remote_control);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", on, IDENTITY, "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_true(cfg.admin_remote_control);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", off, IDENTITY, "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_false(cfg.admin_remote_control);
    tt_config_done(&cfg);
    /* The flag wins over the file, as every flag does. */
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", off, IDENTITY,
                           "--admin-allow-remote-control", "--inbound", "127.0.0.1:1=127.0.0.1:2",
                           NULL),
                     0);
    assert_true(cfg.admin_remote_control);
    tt_config_done(&cfg);

    assert_parse_error("option --admin-allow-remote-control takes no value", IDENTITY,
                       "--admin-allow-remote-control=yes");
    expect_file_error("{\"admin_allow_remote_control\": \"yes\"}",
                      "sidecar.json: admin_allow_remote_control: expected true or false, got "
                      "\"yes\"");
    expect_file_error("{\"admin_allow_remote_control\": 1}",
                      "sidecar.json: admin_allow_remote_control: expected true or false, got 1");
    free(on);
    free(off);
}

/* --pool on|off and the file's "pool": on unless one says off, the flag over the file,
 * and each bad value named with what was expected. */
static void test_config_pool(void **state)
{
    struct tt_config cfg;
    char err[512];
    char *off = write_tmp("pool-off.json", "{\"pool\": false}");
    char *on = write_tmp("pool-on.json", "{\"pool\": true}");

    assert_int_equal(
        parse(&cfg, err, sizeof(err), IDENTITY, "--inbound", "127.0.0.1:1=127.0.0.1:2", NULL), 0);
    assert_true(cfg.pool);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--pool", "off", "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_false(cfg.pool);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", off, IDENTITY, "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_false(cfg.pool);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", on, IDENTITY, "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_true(cfg.pool);
    tt_config_done(&cfg);
    /* The flag wins over the file, wherever it stands on the line. */
    assert_int_equal(parse(&cfg, err, sizeof(err), "--pool", "on", "--config", off, IDENTITY,
                           "--inbound", "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_true(cfg.pool);
    tt_config_done(&cfg);

    /* --http-streams: on by default, off by flag or file, the flag winning. */
    char *hs = write_tmp("streams-off.json", "{\"http_streams\": false}");
    assert_int_equal(
        parse(&cfg, err, sizeof(err), IDENTITY, "--inbound", "127.0.0.1:1=127.0.0.1:2", NULL), 0);
    assert_true(cfg.http_streams);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), IDENTITY, "--http-streams", "off", "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_false(cfg.http_streams);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), "--config", hs, IDENTITY, "--inbound",
                           "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_false(cfg.http_streams);
    tt_config_done(&cfg);
    assert_int_equal(parse(&cfg, err, sizeof(err), "--http-streams", "on", "--config", hs, IDENTITY,
                           "--inbound", "127.0.0.1:1=127.0.0.1:2", NULL),
                     0);
    assert_true(cfg.http_streams);
    tt_config_done(&cfg);
    free(hs);
    assert_parse_error("--http-streams yes: expected on or off", IDENTITY, "--http-streams", "yes");
    expect_file_error("{\"http_streams\": 1}",
                      "sidecar.json: http_streams: expected true or false");

    assert_parse_error("--pool maybe: expected on or off", IDENTITY, "--pool", "maybe");
    assert_parse_error("--pool \"\": expected on or off", IDENTITY, "--pool", "");
    assert_parse_error("--pool ON: expected on or off", IDENTITY, "--pool", "ON");
    assert_parse_error("option --pool requires a value", IDENTITY, "--pool");
    expect_file_error("{\"pool\": \"off\"}",
                      "sidecar.json: pool: expected true or false, got \"off\"");
    expect_file_error("{\"pool\": 0}", "sidecar.json: pool: expected true or false, got 0");
    free(off);
    free(on);
}

/* Runs parse() with stdout sent to a file; returns what was printed (heap). */
static char *capture_parse(int *rc, ...)
{
    struct tt_config cfg;
    char err[256], *out;
    char *argv[8];
    int argc = 0, saved, fd;
    const char *a;
    va_list ap;
    FILE *f;
    long n;

    argv[argc++] = "tether-sidecar";
    va_start(ap, rc);
    while ((a = va_arg(ap, const char *)) != NULL)
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;

    f = tmpfile();
    assert_non_null(f);
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    fd = fileno(f);
    assert_true(dup2(fd, STDOUT_FILENO) >= 0);
    *rc = tt_config_parse_args(argc, argv, &cfg, err, sizeof(err));
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    tt_config_done(&cfg);

    n = lseek(fd, 0, SEEK_END);
    assert_true(n > 0);
    out = calloc(1, (size_t)n + 1);
    assert_non_null(out);
    assert_int_equal(pread(fd, out, (size_t)n, 0), n);
    fclose(f);
    return out;
}

static void test_config_help(void **state)
{
    int rc;
    char *out;

    out = capture_parse(&rc, "--help", NULL);
    assert_int_equal(rc, TT_CONFIG_HELP);
    assert_non_null(strstr(out, "--identity-cert FILE"));
    free(out);

    out = capture_parse(&rc, "-h", NULL);
    assert_int_equal(rc, TT_CONFIG_HELP);
    assert_non_null(strstr(out, "Usage:"));
    free(out);

    /* --help wins over errors elsewhere on the line. */
    out = capture_parse(&rc, "--workers", "0", "--bogus", "--help", NULL);
    assert_int_equal(rc, TT_CONFIG_HELP);
    assert_non_null(strstr(out, "Usage:"));
    free(out);
}

static void test_config_usage_complete(void **state)
{
    static const char *const want[] = {
        "--config FILE",
        "--identity-cert FILE",
        "--identity-key FILE",
        "--trust-bundle FILE",
        "--inbound LISTEN=FORWARD",
        "--outbound LISTEN=UPSTREAM@SPIFFE_ID",
        "--policy FILE",
        "--admin ADDR:PORT",
        "default 127.0.0.1:15000",
        "--admin-allow-remote-control",
        "--workers N",
        "default: online CPUs",
        "--log-level LEVEL",
        "default info",
        "--max-connections N",
        "default 16384",
        "--handshake-timeout D",
        "default 10s",
        "--connect-timeout D",
        "default 5s",
        "--idle-timeout D",
        "default 1h",
        "--drain-timeout D",
        "default 20s",
        "--request-timeout D",
        "--pool on|off",
        "key pool: true|false",
        "--http-streams on|off",
        "-h, --help",
        "Example:",
        "--inbound 127.0.0.1:16006=127.0.0.1:8080",
        "--outbound 127.0.0.1:15001=",
    };
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    assert_non_null(f);
    tt_config_usage(f);
    fclose(f);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (strstr(buf, want[i]) == NULL)
            fail_msg("usage lacks \"%s\"", want[i]);
    }
    /* No line wider than 100 columns. */
    for (char *line = buf, *nl; *line != '\0'; line = nl + 1) {
        nl = strchr(line, '\n');
        assert_non_null(nl);
        assert_true(nl - line <= 100);
    }
    free(buf);
}

static void test_config_example_parses(void **state)
{
    struct tt_config cfg;
    char err[256];

    assert_int_equal(parse(&cfg, err, sizeof(err), "--identity-cert", "web.pem", "--identity-key",
                           "web.key", "--trust-bundle", "bundle.pem", "--inbound",
                           "127.0.0.1:16006=127.0.0.1:8080", "--outbound",
                           "127.0.0.1:15001=10.0.0.7:16006@spiffe://cluster.local/ns/shop/sa/api",
                           NULL),
                     0);
    assert_int_equal(cfg.n_listeners, 2);
    tt_config_done(&cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_flags_defaults),
        cmocka_unit_test(test_config_flags_all),
        cmocka_unit_test(test_config_control),
        cmocka_unit_test(test_config_control_file),
        cmocka_unit_test(test_config_crls),
        cmocka_unit_test(test_config_parse_listener),
        cmocka_unit_test_setup_teardown(test_config_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_config_flags_override_file, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_config_file_errors, setup_dir, teardown_dir),
        cmocka_unit_test(test_config_flag_errors),
        cmocka_unit_test(test_config_port_zero_listeners),
        cmocka_unit_test(test_config_repeated_calls),
        cmocka_unit_test(test_config_help),
        cmocka_unit_test(test_config_usage_complete),
        cmocka_unit_test(test_config_example_parses),
        cmocka_unit_test_setup_teardown(test_config_admin_remote_control, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_config_pool, setup_dir, teardown_dir),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
