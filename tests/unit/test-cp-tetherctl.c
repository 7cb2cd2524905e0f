/* Unit tests for tetherctl: argument errors (exit 2, a message naming the problem), and
 * the commands against a real operator API running in a thread (exit 1 with the
 * server's message on stderr when it refuses). The binary is TETHERCTL_PATH. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "ca.h"
#include "core/errors.h"
#include "cpapifix.h"
#include "httpc.h"
#include "store.h"

#define ID_A "spiffe://example.org/ns/shop/sa/web"

struct run {
    int status;
    char out[16384];
    char err[16384];
};

static void slurp(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, len - 1) : -1;

    buf[n > 0 ? n : 0] = '\0';
    if (fd >= 0)
        close(fd);
}

/* Runs tetherctl with argv (NULL-terminated, without argv[0]); TETHER_API unset. */
static void run_ctl(struct run *r, const char *const *args)
{
    char out_path[] = "/tmp/test-cp-ctl-out-XXXXXX", err_path[] = "/tmp/test-cp-ctl-err-XXXXXX";
    int ofd = mkstemp(out_path), efd = mkstemp(err_path);
    const char *argv[32] = {TETHERCTL_PATH};
    pid_t pid;
    int st = 0;

    for (size_t i = 0; args[i]; i++)
        argv[i + 1] = args[i];
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(ofd, 1);
        dup2(efd, 2);
        unsetenv("TETHER_API");
        execv(TETHERCTL_PATH, (char *const *)argv);
        _exit(127);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    slurp(out_path, r->out, sizeof(r->out));
    slurp(err_path, r->err, sizeof(r->err));
    close(ofd);
    close(efd);
    unlink(out_path);
    unlink(err_path);
}

#define RUN(r, ...) run_ctl((r), (const char *const[]){__VA_ARGS__, NULL})

/* ---- argument errors (no server needed) ---- */

static void test_tetherctl_usage_errors(void **state)
{
    struct run r;

    RUN(&r, "--help");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "token create --spiffe-id ID"));
    assert_non_null(strstr(r.out, "service add ADDR:PORT SPIFFE_ID"));

    run_ctl(&r, (const char *const[]){NULL});
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "usage:"));

    RUN(&r, "frobnicate");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "unknown command: frobnicate"));

    RUN(&r, "token", "create");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--spiffe-id is required"));

    RUN(&r, "token", "create", "--spiffe-id");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--spiffe-id needs a value"));

    RUN(&r, "token", "create", "--spiffe-id", ID_A, "--uses", "0");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--uses 0"));

    RUN(&r, "token", "create", "--spiffe-id", ID_A, "--uses", "3x");
    assert_int_equal(r.status, 2);

    RUN(&r, "token", "create", "--spiffe-id", ID_A, "--bogus");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "unexpected argument --bogus"));

    RUN(&r, "policy", "set");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "policy set FILE: missing argument"));

    RUN(&r, "service", "add", "10.0.0.1:80");
    assert_int_equal(r.status, 2);

    RUN(&r, "revoke", "A", "B");
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "too many arguments"));

    RUN(&r, "--api");
    assert_int_equal(r.status, 2);

    RUN(&r, "--api", "ftp://x", "sidecars");
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "--api ftp://x: expected http://HOST:PORT"));

    /* Nothing listens there: a clear network error, exit 1. */
    RUN(&r, "--api", "http://127.0.0.1:1", "sidecars");
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "cannot connect to 127.0.0.1:1"));
}

static void test_tetherctl_parse_url(void **state)
{
    char host[64], port[8], prefix[64], err[256];

    assert_int_equal(cp_httpc_parse_url("http://127.0.0.1:15014", host, sizeof(host), port,
                                        sizeof(port), prefix, sizeof(prefix), err, sizeof(err)),
                     0);
    assert_string_equal(host, "127.0.0.1");
    assert_string_equal(port, "15014");
    assert_string_equal(prefix, "");
    assert_int_equal(cp_httpc_parse_url("http://[::1]:99/base/", host, sizeof(host), port,
                                        sizeof(port), prefix, sizeof(prefix), err, sizeof(err)),
                     0);
    assert_string_equal(host, "::1");
    assert_string_equal(port, "99");
    assert_string_equal(prefix, "/base");
    assert_int_equal(cp_httpc_parse_url("http://host", host, sizeof(host), port, sizeof(port),
                                        prefix, sizeof(prefix), err, sizeof(err)),
                     0);
    assert_string_equal(port, "80");
    assert_int_equal(cp_httpc_parse_url("http://host:0", host, sizeof(host), port, sizeof(port),
                                        prefix, sizeof(prefix), err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(cp_httpc_parse_url("http://host:99999", host, sizeof(host), port, sizeof(port),
                                        prefix, sizeof(prefix), err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(cp_httpc_parse_url("http://:80", host, sizeof(host), port, sizeof(port),
                                        prefix, sizeof(prefix), err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(cp_httpc_parse_url("https://h:1", host, sizeof(host), port, sizeof(port),
                                        prefix, sizeof(prefix), err, sizeof(err)),
                     0);
    assert_string_equal(host, "h");
    assert_string_equal(port, "1");
    assert_true(cp_httpc_url_is_https("https://h:1"));
    assert_false(cp_httpc_url_is_https("http://h:1"));
    assert_int_equal(cp_httpc_parse_url("https://h", host, sizeof(host), port, sizeof(port), prefix,
                                        sizeof(prefix), err, sizeof(err)),
                     0);
    assert_string_equal(port, "443");
    assert_int_equal(cp_httpc_parse_url("https://h:x", host, sizeof(host), port, sizeof(port),
                                        prefix, sizeof(prefix), err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "https://HOST:PORT"));
    assert_int_equal(cp_httpc_parse_url("ftp://h:1", host, sizeof(host), port, sizeof(port), prefix,
                                        sizeof(prefix), err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "expected http://HOST:PORT or https://HOST:PORT"));
    /* http-parser's URL grammar: no user, query or fragment, no empty port or host. */
    {
        static const char *const bad[] = {"http://u@h:1", "http://h:1/p?x=1", "http://h:1#f",
                                          "http://host:", "http://[::1:80",   "http://h h:1",
                                          "http://"};

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            err[0] = '\0';
            if (cp_httpc_parse_url(bad[i], host, sizeof(host), port, sizeof(port), prefix,
                                   sizeof(prefix), err, sizeof(err)) != -EINVAL)
                fail_msg("%s: accepted", bad[i]);
            assert_non_null(strstr(err, bad[i]));
        }
    }
    assert_int_equal(cp_httpc_parse_url("http://h:1/a/b//", host, sizeof(host), port, sizeof(port),
                                        prefix, sizeof(prefix), err, sizeof(err)),
                     0);
    assert_string_equal(prefix, "/a/b");
}

/* https:// without the three credential files fails before any connection; http://
 * ignores them. */
static void test_tetherctl_https_needs_credentials(void **state)
{
    struct cp_httpc_tls half = {
        .cert_file = "/nonexistent.crt", .key_file = NULL, .cacert_file = "/nonexistent.pem"};
    struct cp_httpc_tls missing = {.cert_file = "/nonexistent.crt",
                                   .key_file = "/nonexistent.key",
                                   .cacert_file = "/nonexistent.pem"};
    struct cp_httpc_response r;
    char err[512];

    assert_int_equal(cp_httpc_request("https://127.0.0.1:1", "GET", "/stats", NULL, NULL, 0, 1000,
                                      &r, err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(err, "https:// needs --cert, --key and --cacert");
    assert_int_equal(cp_httpc_call("https://127.0.0.1:1", &half, "GET", "/stats", NULL, NULL, 0,
                                   1000, &r, err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(err, "https:// needs --cert, --key and --cacert");
    /* The files are read before connecting: the error names the file. */
    assert_int_equal(cp_httpc_call("https://127.0.0.1:1", &missing, "GET", "/stats", NULL, NULL, 0,
                                   1000, &r, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "/nonexistent.crt"));
    /* http:// with credentials: plain TCP as before. */
    assert_true(cp_httpc_call("http://127.0.0.1:1", &missing, "GET", "/stats", NULL, NULL, 0, 1000,
                              &r, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "cannot connect to 127.0.0.1:1"));
}

/* ---- against a real API ---- */

static int setup(void **state)
{
    struct cp_apifix *h = calloc(1, sizeof(*h));

    assert_non_null(h);
    cp_apifix_start(h, "test-cp-ctl", NULL);
    setenv("TETHER_STATE_DIR", h->dir, 1); /* tetherctl's credential, for the children */
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    cp_apifix_stop(*state);
    free(*state);
    return 0;
}

static void test_tetherctl_commands(void **state)
{
    struct cp_apifix *h = *state;
    char path[128];
    enum cp_token_err why;
    struct run r;
    size_t len;
    FILE *f;

    /* token create prints the token alone on one line. */
    RUN(&r, "--api", h->url, "token", "create", "--spiffe-id", ID_A, "--ttl", "10m", "--uses", "2");
    assert_int_equal(r.status, 0);
    len = strlen(r.out);
    assert_int_equal(len, 44);
    assert_int_equal(r.out[43], '\n');
    r.out[43] = '\0';
    assert_int_equal(cp_store_token_consume(h->store, r.out, ID_A, &why), 0);

    /* The server's refusal, on stderr, exit 1. */
    RUN(&r, "--api", h->url, "token", "create", "--spiffe-id", ID_A, "--ttl", "forever");
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "ttl: expected a duration"));
    assert_non_null(strstr(r.err, "HTTP 400"));

    /* policy set with an invalid document: the parser's message. */
    snprintf(path, sizeof(path), "%s/bad-policy.json", h->dir);
    f = fopen(path, "w");
    fputs("{\"default\": \"deny\", \"rules\": [], \"extra\": 1}", f);
    fclose(f);
    RUN(&r, "--api", h->url, "policy", "set", path);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "extra"));
    assert_null(cp_store_policy_get(h->store));
    RUN(&r, "--api", h->url, "policy", "set", "/nonexistent/p.json");
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "/nonexistent/p.json"));

    snprintf(path, sizeof(path), "%s/policy.in.json", h->dir);
    f = fopen(path, "w");
    fputs("{\"default\": \"allow\", \"rules\": []}", f);
    fclose(f);
    RUN(&r, "--api", h->url, "policy", "set", path);
    assert_int_equal(r.status, 0);
    RUN(&r, "--api", h->url, "policy", "get");
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, "{\"default\": \"allow\", \"rules\": []}\n");

    RUN(&r, "--api", h->url, "bundle", "get");
    assert_int_equal(r.status, 0);
    assert_string_equal(r.out, cp_ca_bundle_pem(h->ca));

    RUN(&r, "--api", h->url, "revoke", "0a:ff");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "AFF"));
    assert_true(cp_store_is_revoked(h->store, "AFF"));
    RUN(&r, "--api", h->url, "revoke", "nothex");
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "serial"));

    RUN(&r, "--api", h->url, "service", "add", "10.1.2.3:8080", ID_A);
    assert_int_equal(r.status, 0);
    RUN(&r, "--api", h->url, "service", "add", "10.1.2.3", ID_A);
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "address 10.1.2.3"));
    RUN(&r, "--api", h->url, "service", "list");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "ADDRESS"));
    assert_non_null(strstr(r.out, "10.1.2.3:8080"));
    assert_non_null(strstr(r.out, ID_A));
    RUN(&r, "--api", h->url, "--json", "service", "list");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "\"services\""));
    /* remove percent-encodes the address into the query ([, :, ] included). */
    RUN(&r, "--api", h->url, "service", "add", "[::1]:9090", ID_A);
    assert_int_equal(r.status, 0);
    RUN(&r, "--api", h->url, "service", "remove", "[::1]:9090");
    assert_int_equal(r.status, 0);
    RUN(&r, "--api", h->url, "service", "remove", "[::1]:9090");
    assert_int_equal(r.status, 1);
    assert_non_null(strstr(r.err, "no operator service entry for [::1]:9090"));

    assert_int_equal(cp_store_sidecar_seen(h->store, "x", ID_A, "127.0.0.1:3333", "node-7"), 0);
    cp_store_sidecar_nacked(h->store, "x", 4, "cannot apply policy");
    RUN(&r, "--api", h->url, "sidecars");
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "node-7"));
    assert_non_null(strstr(r.out, "cannot apply policy"));

    /* TETHER_API is honoured when --api is absent. */
    setenv("TETHER_API", h->url, 1);
    {
        pid_t pid = fork();
        int st;

        if (pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);

            dup2(devnull, 1);
            execl(TETHERCTL_PATH, TETHERCTL_PATH, "sidecars", (char *)NULL);
            _exit(127);
        }
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    unsetenv("TETHER_API");
}

/* admin-cert create writes PREFIX.key (0600), PREFIX.crt and PREFIX.ca.crt (0644) with the
 * control plane's atomic writer: exact modes whatever the umask, a stale temporary replaced
 * and none left behind, and a write failure named with its file. */
static void test_tetherctl_admin_cert_files(void **state)
{
    struct cp_apifix *h = *state;
    static const char *const names[] = {"adm.key", "adm.crt", "adm.ca.crt"};
    static const int modes[] = {0600, 0644, 0644};
    char prefix[128], path[256], buf[8192];
    struct stat st;
    struct run r;
    mode_t old;
    FILE *f;

    snprintf(prefix, sizeof(prefix), "%s/adm", h->dir);
    snprintf(path, sizeof(path), "%s.crt.tmp", prefix);
    f = fopen(path, "w"); /* a crash's leftover */
    assert_non_null(f);
    fputs("half", f);
    fclose(f);
    old = umask(077);
    RUN(&r, "--api", h->url, "admin-cert", "create", "--spiffe-id",
        "spiffe://example.org/ns/tether-system/sa/tether-admin", "--out", prefix);
    umask(old);
    if (r.status != 0)
        fail_msg("admin-cert create: %d: %s", r.status, r.err);
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", h->dir, names[i]);
        assert_int_equal(stat(path, &st), 0);
        if ((int)(st.st_mode & 0777) != modes[i])
            fail_msg("%s: mode %o, expected %o", path, st.st_mode & 0777, modes[i]);
        snprintf(path, sizeof(path), "%s/%s.tmp", h->dir, names[i]);
        assert_int_not_equal(access(path, F_OK), 0);
    }
    snprintf(path, sizeof(path), "%s.ca.crt", prefix);
    slurp(path, buf, sizeof(buf));
    assert_string_equal(buf, cp_ca_bundle_pem(h->ca));
    snprintf(path, sizeof(path), "%s.crt", prefix);
    slurp(path, buf, sizeof(buf));
    assert_int_equal(strncmp(buf, "-----BEGIN CERTIFICATE-----", 27), 0);
    snprintf(path, sizeof(path), "%s.key", prefix);
    slurp(path, buf, sizeof(buf));
    assert_int_equal(strncmp(buf, "-----BEGIN PRIVATE KEY-----", 27), 0);

    snprintf(prefix, sizeof(prefix), "%s/missing/adm", h->dir);
    RUN(&r, "--api", h->url, "admin-cert", "create", "--spiffe-id",
        "spiffe://example.org/ns/tether-system/sa/tether-admin", "--out", prefix);
    assert_int_equal(r.status, 1);
    snprintf(path, sizeof(path), "tetherctl: %s.key: No such file or directory", prefix);
    assert_non_null(strstr(r.err, path));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tetherctl_usage_errors),
        cmocka_unit_test(test_tetherctl_parse_url),
        cmocka_unit_test(test_tetherctl_https_needs_credentials),
        cmocka_unit_test_setup_teardown(test_tetherctl_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tetherctl_admin_cert_files, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
