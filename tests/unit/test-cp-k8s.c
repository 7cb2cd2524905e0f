/* Unit tests for k8s_client.c's pure parts: Kubernetes names and kubeconfig reading. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "k8s_client.h"

static void test_k8s_names(void **state)
{
    (void)state;
    assert_true(cp_k8s_name_valid("shop", 63, false));
    assert_true(cp_k8s_name_valid("web-7d9f.x", 253, true));
    assert_false(cp_k8s_name_valid("web.x", 63, false)); /* a namespace has no dots */
    assert_false(cp_k8s_name_valid("", 63, false));
    assert_false(cp_k8s_name_valid(NULL, 63, false));
    assert_false(cp_k8s_name_valid("-a", 63, false));
    assert_false(cp_k8s_name_valid("a-", 63, false));
    assert_false(cp_k8s_name_valid("Shop", 63, false));
    assert_false(cp_k8s_name_valid("shop/x", 253, true));
    assert_false(cp_k8s_name_valid("aaaa", 3, false));
}

/* Loads a kubeconfig given as JSON text. */
static int load(const char *text, struct cp_k8s_kubeconfig *kc, char *err, size_t errlen)
{
    json_t *doc = json_loads(text, 0, NULL);
    int rc;

    assert_non_null(doc);
    rc = cp_k8s_kubeconfig_load(doc, "/etc/kube/config", kc, err, errlen);
    json_decref(doc);
    return rc;
}

#define KC_HEAD                                                                                    \
    "{\"current-context\": \"t\", \"contexts\": [{\"name\": \"t\", \"context\": "                  \
    "{\"cluster\": \"c\", \"user\": \"u\"}}], "

static void test_k8s_kubeconfig(void **state)
{
    struct cp_k8s_kubeconfig kc;
    struct cp_k8s_client_opts o = {0};
    char err[512];

    (void)state;
    /* Relative paths against the file's folder; a token file. */
    assert_int_equal(load(KC_HEAD "\"clusters\": [{\"name\": \"c\", \"cluster\": {\"server\": "
                                  "\"https://10.0.0.1:6443\", \"certificate-authority\": "
                                  "\"ca.crt\"}}], \"users\": [{\"name\": \"u\", \"user\": "
                                  "{\"tokenFile\": \"/run/token\"}}]}",
                          &kc, err, sizeof(err)),
                     0);
    assert_string_equal(kc.server, "https://10.0.0.1:6443");
    assert_string_equal(kc.ca_file, "/etc/kube/ca.crt");
    assert_string_equal(kc.token_file, "/run/token");
    cp_k8s_kubeconfig_opts(&kc, &o);
    assert_ptr_equal(o.ca_file, kc.ca_file);
    cp_k8s_kubeconfig_done(&kc);
    /* -data decoded (base64 of "PEM"). */
    assert_int_equal(load(KC_HEAD "\"clusters\": [{\"name\": \"c\", \"cluster\": {\"server\": "
                                  "\"https://k:6443\", \"certificate-authority-data\": "
                                  "\"UEVN\"}}], \"users\": [{\"name\": \"u\", \"user\": "
                                  "{\"client-certificate-data\": \"UEVN\", \"client-key-data\": "
                                  "\"UEVN\"}}]}",
                          &kc, err, sizeof(err)),
                     0);
    assert_string_equal(kc.ca_pem, "PEM");
    assert_string_equal(kc.cert_pem, "PEM");
    assert_string_equal(kc.key_pem, "PEM");
    cp_k8s_kubeconfig_done(&kc);
    /* Refusals name the file and the key. */
    assert_int_equal(load("{\"contexts\": []}", &kc, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "/etc/kube/config: current-context"));
    assert_int_equal(load(KC_HEAD "\"clusters\": [{\"name\": \"c\", \"cluster\": {\"server\": "
                                  "\"https://k:6443\", \"certificate-authority-data\": "
                                  "\"UEVN\"}}], \"users\": [{\"name\": \"u\", \"user\": "
                                  "{\"exec\": {\"command\": \"aws\"}}}]}",
                          &kc, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "users[name=u].user.exec: not supported"));
    assert_int_equal(load(KC_HEAD "\"clusters\": [{\"name\": \"c\", \"cluster\": {\"server\": "
                                  "\"https://k:6443\"}}], \"users\": [{\"name\": \"u\", \"user\": "
                                  "{\"token\": \"t\"}}]}",
                          &kc, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "certificate-authority or certificate-authority-data"));
    assert_int_equal(load(KC_HEAD "\"clusters\": [{\"name\": \"c\", \"cluster\": {\"server\": "
                                  "\"https://k:6443\", \"certificate-authority-data\": "
                                  "\"not base64!\"}}], \"users\": []}",
                          &kc, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "certificate-authority-data: not base64"));
    assert_int_equal(load(KC_HEAD "\"clusters\": [{\"name\": \"c\", \"cluster\": {\"server\": "
                                  "\"https://k:6443\", \"certificate-authority-data\": "
                                  "\"UEVN\"}}], \"users\": [{\"name\": \"u\", \"user\": "
                                  "{\"client-certificate-data\": \"UEVN\"}}]}",
                          &kc, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "go together"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_k8s_names),
        cmocka_unit_test(test_k8s_kubeconfig),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
