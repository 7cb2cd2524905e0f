/* Unit tests for control/store.c: persistence across reload, corrupt files refused with
 * a message and left untouched, atomic writes, tokens, serials, services, policy, the
 * version and its change callback, the sidecar registry and counters. */
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
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/errors.h"
#include "tls/identity.h"
#include "store.h"
#include "core/util.h"

#define ID_A "spiffe://example.org/ns/shop/sa/web"
#define ID_B "spiffe://example.org/ns/shop/sa/api"
#define POLICY_OK                                                                                  \
    "{\"default\": \"deny\", \"rules\": [{\"name\": \"r1\", \"action\": \"allow\", \"from\": "     \
    "[\"" ID_A "\"], \"ports\": [8080]}]}"

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/test-cp-store-XXXXXX";
    char *d = mkdtemp(tmpl);

    assert_non_null(d);
    return strdup(d);
}

static void rm_rf(const char *dir)
{
    char cmd[512];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static struct cp_store *open_ok(const char *dir)
{
    char err[512] = "";
    struct cp_store *s = cp_store_open(dir, err, sizeof(err));

    if (s == NULL)
        fail_msg("cp_store_open: %s", err);
    return s;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static char *read_file(const char *dir, const char *name)
{
    char path[512];
    char *data = NULL;
    size_t len;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (tt_file_read(path, 1 << 20, &data, &len) != 0)
        return NULL;
    return data;
}

/* ---- serials ---- */

static void test_store_serial_normalization(void **state)
{
    char out[TT_SERIAL_MAX];

    assert_int_equal(tt_serial_normalize("0a:1B:2c", out, sizeof(out)), 0);
    assert_string_equal(out, "A1B2C");
    assert_int_equal(tt_serial_normalize("00000A1B2C", out, sizeof(out)), 0);
    assert_string_equal(out, "A1B2C");
    assert_int_equal(tt_serial_normalize("0x0a1b2c", out, sizeof(out)), 0);
    assert_string_equal(out, "A1B2C");
    assert_int_equal(tt_serial_normalize("a1b2c\n", out, sizeof(out)), 0);
    assert_string_equal(out, "A1B2C");
    assert_int_equal(tt_serial_normalize("00:00", out, sizeof(out)), 0);
    assert_string_equal(out, "0");
    assert_int_equal(tt_serial_normalize("", out, sizeof(out)), -EINVAL);
    assert_int_equal(tt_serial_normalize(":0a", out, sizeof(out)), -EINVAL);
    assert_int_equal(tt_serial_normalize("0a::1b", out, sizeof(out)), -EINVAL);
    assert_int_equal(tt_serial_normalize("0a:", out, sizeof(out)), -EINVAL);
    assert_int_equal(tt_serial_normalize("0g", out, sizeof(out)), -EINVAL);
    assert_int_equal(tt_serial_normalize("12 34", out, sizeof(out)), -EINVAL);
    assert_int_equal(tt_serial_normalize("0x", out, sizeof(out)), -EINVAL);
    /* 41 significant digits is more than any 160-bit serial. */
    assert_int_equal(
        tt_serial_normalize("10000000000000000000000000000000000000000", out, sizeof(out)),
        -EINVAL);
    assert_int_equal(tt_serial_normalize("ABCDEF", out, 4), -ENOSPC);
}

/* ---- atomic writes ---- */

static void test_store_atomic_write(void **state)
{
    char *dir = make_tmpdir();
    char path[512], tmp[520];
    struct stat st;
    char *text;

    snprintf(path, sizeof(path), "%s/f.json", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    assert_int_equal(cp_atomic_write(path, "one", 3, 0600), 0);
    assert_int_equal(cp_atomic_write(path, "second", 6, 0600), 0);
    text = read_file(dir, "f.json");
    assert_string_equal(text, "second");
    free(text);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_not_equal(access(tmp, F_OK), 0); /* no temporary left behind */
    /* A failing write (no such directory) leaves nothing and says why. */
    snprintf(path, sizeof(path), "%s/missing/f.json", dir);
    assert_int_equal(cp_atomic_write(path, "x", 1, 0600), -ENOENT);
    /* A stale temporary from a crash does not get in the way. */
    snprintf(path, sizeof(path), "%s/g.json", dir);
    write_file(dir, "g.json.tmp", "half-writ");
    assert_int_equal(cp_atomic_write(path, "whole", 5, 0644), 0);
    text = read_file(dir, "g.json");
    assert_string_equal(text, "whole");
    free(text);
    rm_rf(dir);
    free(dir);
}

/* ---- persistence ---- */

static void test_store_persists_across_reload(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX], err[512];
    const struct cp_endpoint_spec eps[] = {{"10.0.0.9:8080", ID_A}, {"10.0.0.10:8080", ID_B}};
    enum cp_token_err why;
    struct cp_snapshot *snap;
    uint64_t v;
    char *pol;
    json_t *j;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 2, secret, sizeof(secret), NULL), 0);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), 0);
    assert_int_equal(cp_store_policy_set(s, POLICY_OK, strlen(POLICY_OK), err, sizeof(err)), 0);
    assert_int_equal(cp_store_revoke(s, "0a:bc"), 0);
    assert_int_equal(
        cp_store_service_add(s, "10.0.0.1:8080", ID_B, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    assert_int_equal(
        cp_store_service_set(s, "10.96.0.10:80", eps, 2, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    assert_int_equal(
        cp_store_issued_add(s, "00FF", ID_A, tt_now_unix() + 3600, tt_now_unix(), CP_VIA_TOKEN), 0);
    assert_int_equal(cp_store_bundle_set(s, "PEM"), 0);
    v = cp_store_version(s);
    assert_true(v >= 5);
    cp_store_free(s);

    s = open_ok(dir);
    assert_int_equal(cp_store_version(s), v);
    /* The token has one use left, and only one. */
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), 0);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_USED_UP);
    pol = cp_store_policy_get(s);
    assert_string_equal(pol, POLICY_OK);
    free(pol);
    assert_true(cp_store_is_revoked(s, "ABC"));
    assert_true(cp_store_is_revoked(s, "00:0A:BC"));
    assert_false(cp_store_is_revoked(s, "ABD"));
    j = cp_store_issued_json(s);
    assert_int_equal(json_array_size(j), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(j, 0), "serial")), "FF");
    json_decref(j);
    snap = cp_store_snapshot(s);
    assert_non_null(snap);
    /* The bare entry, then the service's two endpoints under its address. */
    assert_int_equal(snap->n_services, 3);
    assert_string_equal(snap->services[0].service_address, "");
    assert_string_equal(snap->services[1].service_address, "10.96.0.10:80");
    assert_string_equal(snap->services[1].address, "10.0.0.9:8080");
    assert_string_equal(snap->services[2].spiffe_id, ID_B);
    assert_int_equal(snap->n_revoked, 1);
    assert_string_equal(snap->revoked[0], "ABC");
    assert_string_equal(snap->policy_json, POLICY_OK);
    cp_snapshot_free(snap);
    /* The same bundle after a restart is not a change. */
    assert_int_equal(cp_store_bundle_set(s, "PEM"), 0);
    assert_int_equal(cp_store_version(s), v);
    assert_int_equal(cp_store_bundle_set(s, "PEM2"), 0);
    assert_int_equal(cp_store_version(s), v + 1);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

/* Asserts that o is an object with exactly the keys of the NULL-terminated list. */
static void assert_keys(json_t *o, const char *const *keys)
{
    size_t n = 0;

    assert_true(json_is_object(o));
    for (; keys[n] != NULL; n++)
        if (json_object_get(o, keys[n]) == NULL)
            fail_msg("key \"%s\" missing in %s", keys[n], json_dumps(o, JSON_COMPACT));
    assert_int_equal(json_object_size(o), n);
}

/* The one item of collection file DIR/name {"<key>": [...]} at index i (borrowed from *doc,
 * which the caller decrefs). */
static json_t *file_item(const char *dir, const char *name, const char *key, size_t i, json_t **doc)
{
    char path[600];
    json_error_t jerr;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    *doc = json_load_file(path, 0, &jerr);
    if (*doc == NULL)
        fail_msg("%s: %s", path, jerr.text);
    return json_array_get(json_object_get(*doc, key), i);
}

/* Every field of every persisted collection survives save then load, and saving what was
 * loaded writes the same items again; the API listings show what the files hold (tokens
 * without the hash, with "id" and "expired"; issued records with "revoked"). */
static void test_store_round_trip_keeps_every_field(void **state)
{
    static const char *const token_file_keys[] = {"sha256",       "spiffe_id",    "uses_left",
                                                  "expires_unix", "created_unix", NULL};
    static const char *const token_api_keys[] = {
        "id", "spiffe_id", "uses_left", "expires_unix", "created_unix", "expired", NULL};
    static const char *const revoked_keys[] = {"serial", "revoked_unix", NULL};
    static const char *const service_api_keys[] = {"address", "spiffe_id", "source", "endpoints",
                                                   NULL};
    static const char *const service_file_keys[] = {"address", "endpoints", "source", NULL};
    static const char *const issued_file_keys[] = {"serial",    "spiffe_id", "not_after",
                                                   "issued_at", "via",       NULL};
    static const char *const issued_api_keys[] = {"serial",  "spiffe_id", "not_after", "issued_at",
                                                  "revoked", "via",       NULL};
    static const struct {
        const char *file, *key;
    } files[] = {{"tokens.json", "tokens"},
                 {"revocations.json", "revoked"},
                 {"services.json", "services"},
                 {"issued.json", "issued"}};
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX], other[CP_TOKEN_SECRET_MAX], err[512];
    const struct cp_endpoint_spec eps[] = {{"10.0.0.9:8080", ID_A}};
    int64_t t0 = tt_now_unix(), exp = 0, t1;
    json_t *before[4], *after[4], *saved[4], *doc, *o, *f;
    enum cp_token_err why;
    const char *key;
    uint64_t v;

    assert_int_equal(cp_store_token_create(s, ID_A, 3600 * 1000, 3, secret, sizeof(secret), &exp),
                     0);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), 0);
    assert_int_equal(cp_store_token_create(s, ID_B, 0, 1, other, sizeof(other), NULL), 0);
    assert_int_equal(cp_store_revoke(s, "0a:bc"), 0);
    assert_int_equal(
        cp_store_service_add(s, "10.0.0.1:8080", ID_B, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    assert_int_equal(
        cp_store_service_set(s, "10.96.0.10:80", eps, 1, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    assert_int_equal(cp_store_issued_add(s, "0A:BC", ID_A, t0 + 3600, t0 - 5, CP_VIA_TOKEN), 0);
    assert_int_equal(cp_store_issued_add(s, "00FF", ID_B, t0 + 7200, t0 - 7, CP_VIA_TOKEN), 0);
    assert_int_equal(cp_store_bundle_set(s, "PEM"), 0);
    t1 = tt_now_unix();
    v = cp_store_version(s);

    before[0] = cp_store_tokens_json(s);
    before[1] = cp_store_revocations_json(s);
    before[2] = cp_store_services_json(s);
    before[3] = cp_store_issued_json(s);

    /* What the API shows, field by field. */
    o = json_array_get(before[0], 0);
    assert_keys(o, token_api_keys);
    assert_string_equal(json_string_value(json_object_get(o, "spiffe_id")), ID_A);
    assert_int_equal(json_integer_value(json_object_get(o, "uses_left")), 2);
    assert_int_equal(json_integer_value(json_object_get(o, "expires_unix")), exp);
    assert_true(json_integer_value(json_object_get(o, "created_unix")) >= t0);
    assert_true(json_integer_value(json_object_get(o, "created_unix")) <= t1);
    assert_true(json_is_false(json_object_get(o, "expired")));
    assert_string_equal(json_object_iter_key(json_object_iter(o)), "id"); /* "id" first */
    o = json_array_get(before[0], 1);
    assert_keys(o, token_api_keys);
    assert_true(json_is_null(json_object_get(o, "expires_unix")));
    o = json_array_get(before[1], 0);
    assert_keys(o, revoked_keys);
    assert_string_equal(json_string_value(json_object_get(o, "serial")), "ABC");
    assert_true(json_integer_value(json_object_get(o, "revoked_unix")) >= t0);
    assert_int_equal(json_array_size(before[2]), 2);
    o = json_array_get(before[2], 1);
    assert_keys(o, service_api_keys);
    assert_string_equal(json_string_value(json_object_get(o, "address")), "10.96.0.10:80");
    assert_true(json_is_null(json_object_get(o, "spiffe_id")));
    assert_string_equal(json_string_value(json_object_get(o, "source")), CP_SOURCE_OPERATOR);
    o = json_array_get(json_object_get(o, "endpoints"), 0);
    assert_string_equal(json_string_value(json_object_get(o, "address")), "10.0.0.9:8080");
    assert_string_equal(json_string_value(json_object_get(o, "spiffe_id")), ID_A);
    o = json_array_get(before[3], 0);
    assert_keys(o, issued_api_keys);
    assert_string_equal(json_string_value(json_object_get(o, "serial")), "ABC");
    assert_string_equal(json_string_value(json_object_get(o, "spiffe_id")), ID_A);
    assert_int_equal(json_integer_value(json_object_get(o, "not_after")), t0 + 3600);
    assert_int_equal(json_integer_value(json_object_get(o, "issued_at")), t0 - 5);
    assert_true(json_is_true(json_object_get(o, "revoked")));
    assert_true(json_is_false(json_object_get(json_array_get(before[3], 1), "revoked")));

    /* The files hold the same items in their own format: the API's view of a token is the
     * file's item with the hash replaced by its first 12 digits, plus "expired". Token
     * and issue changes are in the journal until it is compacted into the files. */
    assert_int_equal(cp_store_compact(s), 0);
    f = file_item(dir, "tokens.json", "tokens", 0, &doc);
    assert_keys(f, token_file_keys);
    o = json_array_get(before[0], 0);
    assert_int_equal(strncmp(json_string_value(json_object_get(f, "sha256")),
                             json_string_value(json_object_get(o, "id")), 12),
                     0);
    json_object_foreach(f, key, o)
    {
        if (strcmp(key, "sha256") != 0)
            assert_true(json_equal(o, json_object_get(json_array_get(before[0], 0), key)));
    }
    json_decref(doc);
    f = file_item(dir, "issued.json", "issued", 0, &doc);
    assert_keys(f, issued_file_keys);
    json_object_foreach(f, key, o)
    {
        assert_true(json_equal(o, json_object_get(json_array_get(before[3], 0), key)));
    }
    json_decref(doc);
    f = file_item(dir, "revocations.json", "revoked", 0, &doc);
    assert_true(json_equal(f, json_array_get(before[1], 0)));
    json_decref(doc);
    f = file_item(dir, "services.json", "services", 1, &doc);
    assert_keys(f, service_file_keys);
    o = json_deep_copy(json_array_get(before[2], 1)); /* the API adds "spiffe_id": null */
    json_object_del(o, "spiffe_id");
    assert_true(json_equal(f, o));
    json_decref(o);
    json_decref(doc);
    for (size_t i = 0; i < 4; i++) {
        file_item(dir, files[i].file, files[i].key, 0, &doc);
        saved[i] = json_deep_copy(json_object_get(doc, files[i].key));
        assert_non_null(saved[i]);
        json_decref(doc);
    }
    cp_store_free(s);

    /* Loaded back: the same listings, the same version. */
    s = open_ok(dir);
    assert_int_equal(cp_store_version(s), v);
    after[0] = cp_store_tokens_json(s);
    after[1] = cp_store_revocations_json(s);
    after[2] = cp_store_services_json(s);
    after[3] = cp_store_issued_json(s);
    for (size_t i = 0; i < 4; i++) {
        if (!json_equal(before[i], after[i]))
            fail_msg("%s changed across a reload:\n%s\n%s", files[i].file,
                     json_dumps(before[i], JSON_COMPACT), json_dumps(after[i], JSON_COMPACT));
        json_decref(before[i]);
        json_decref(after[i]);
    }

    /* Saving what was loaded writes the same items again (each file rewritten by one more
     * change; the old items come first). */
    assert_int_equal(cp_store_token_consume(s, other, ID_B, &why), 0);
    assert_int_equal(cp_store_revoke(s, "0d"), 0);
    assert_int_equal(
        cp_store_service_add(s, "10.0.0.2:8080", ID_B, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    assert_int_equal(cp_store_issued_add(s, "0E", ID_A, t0 + 60, t0, CP_VIA_TOKEN), 0);
    assert_int_equal(cp_store_compact(s), 0);
    for (size_t i = 0; i < 4; i++) {
        json_t *now;

        file_item(dir, files[i].file, files[i].key, 0, &f);
        now = json_object_get(f, files[i].key);

        for (size_t j = 0; j < json_array_size(saved[i]); j++) {
            json_t *want = json_array_get(saved[i], j);

            if (i == 0 && j == 1) /* the token just used up: pruned at compaction */
                continue;
            if (!json_equal(want, json_array_get(now, j)))
                fail_msg("%s[%zu] changed by load and save:\n%s\n%s", files[i].file, j,
                         json_dumps(want, JSON_COMPACT),
                         json_dumps(json_array_get(now, j), JSON_COMPACT));
        }
        assert_int_equal(json_array_size(now), json_array_size(saved[i]) + (i == 0 ? -1 : 1));
        json_decref(f);
        json_decref(saved[i]);
    }
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

static void test_store_corrupt_file_refused(void **state)
{
    static const char *files[] = {"tokens.json", "revocations.json", "services.json", "issued.json",
                                  "state.json"};
    char *dir = make_tmpdir();
    char err[512], *after;
    struct cp_store *s;
    const char *bad = "{\n  \"tokens\": [\n    {,}\n  ]\n}\n";

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char expect[600];

        write_file(dir, files[i], bad);
        err[0] = '\0';
        s = cp_store_open(dir, err, sizeof(err));
        assert_null(s);
        snprintf(expect, sizeof(expect), "%s/%s: line 3: ", dir, files[i]);
        if (strncmp(err, expect, strlen(expect)) != 0)
            fail_msg("expected \"%s...\", got \"%s\"", expect, err);
        /* Never overwritten. */
        after = read_file(dir, files[i]);
        assert_string_equal(after, bad);
        free(after);
        {
            char path[600];

            snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
            unlink(path);
        }
    }
    /* Well-formed JSON with a wrong field names the field. */
    write_file(dir, "issued.json",
               "{\"issued\": [{\"serial\": \"0A\", \"spiffe_id\": \"" ID_A
               "\", \"not_after\": 1, \"issued_at\": 1}, {\"serial\": 5}]}");
    assert_null(cp_store_open(dir, err, sizeof(err)));
    assert_non_null(strstr(err, "issued.json: issued[1].serial: expected a string"));
    unlink(strcat(strcpy((char[600]){0}, dir), "/issued.json"));
    /* An invalid policy file stops start-up with the parser's message. */
    write_file(dir, "policy.json", "{\"default\": \"maybe\"}");
    assert_null(cp_store_open(dir, err, sizeof(err)));
    assert_non_null(strstr(err, "policy.json"));
    assert_non_null(strstr(err, "default"));
    rm_rf(dir);
    free(dir);
}

/* ---- tokens ---- */

static void test_store_token_single_use(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX], with_nl[CP_TOKEN_SECRET_MAX + 4];
    enum cp_token_err why;
    char *file;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 0, secret, sizeof(secret), NULL), 0);
    assert_int_equal(strlen(secret), 43);
    assert_int_equal(strspn(secret, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                    "0123456789-_"),
                     43);
    /* Only the hash is stored, in the journal and once compacted. */
    file = read_file(dir, "journal.log");
    assert_non_null(file);
    assert_non_null(strstr(file, "token_create"));
    assert_null(strstr(file, secret));
    free(file);
    assert_int_equal(cp_store_compact(s), 0);
    file = read_file(dir, "tokens.json");
    assert_non_null(file);
    assert_null(strstr(file, secret));
    free(file);
    /* A token file may end with whitespace. */
    snprintf(with_nl, sizeof(with_nl), "%s \n", secret);
    assert_int_equal(cp_store_token_consume(s, with_nl, ID_A, &why), 0);
    assert_int_equal(why, CP_TOKEN_OK);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_USED_UP);
    assert_string_equal(cp_token_err_name(why), "token_used_up");
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

/* Tokens never start with '-', which a command line would take for an option. With a
 * plain base64url draw, 400 tokens would show one with probability 1 - (63/64)^400
 * (99.8%). */
static void test_store_token_no_leading_dash(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX];

    for (int i = 0; i < 400; i++) {
        assert_int_equal(cp_store_token_create(s, ID_A, 0, 0, secret, sizeof(secret), NULL), 0);
        assert_true(secret[0] != '-');
    }
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

static void test_store_token_multi_use(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX];
    enum cp_token_err why;
    json_t *list;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 3, secret, sizeof(secret), NULL), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), 0);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_USED_UP);
    /* Used up: no longer listed (pruned), while another token is. */
    assert_int_equal(cp_store_token_create(s, ID_B, 0, 1, secret, sizeof(secret), NULL), 0);
    list = cp_store_tokens_json(s);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "spiffe_id")),
                        ID_B);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(list, 0), "uses_left")), 1);
    assert_int_equal(strlen(json_string_value(json_object_get(json_array_get(list, 0), "id"))), 12);
    assert_null(json_object_get(json_array_get(list, 0), "sha256"));
    json_decref(list);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

static void test_store_token_refusals(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX], other[CP_TOKEN_SECRET_MAX];
    enum cp_token_err why;
    int64_t exp = 0;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 1, secret, sizeof(secret), NULL), 0);
    /* Unknown. */
    assert_int_equal(cp_store_token_consume(s, "nope", ID_A, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_UNKNOWN);
    assert_string_equal(cp_token_err_name(why), "unknown_token");
    assert_int_equal(cp_store_token_consume(s, "", ID_A, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_UNKNOWN);
    /* Wrong identity: refused, and the use is not spent. */
    assert_int_equal(cp_store_token_consume(s, secret, ID_B, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_MISMATCH);
    assert_string_equal(cp_token_err_name(why), "identity_mismatch");
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), 0);
    /* Expired: created with a 1 s lifetime, checked after it. */
    assert_int_equal(cp_store_token_create(s, ID_A, 1000, 1, other, sizeof(other), &exp), 0);
    assert_true(exp >= tt_now_unix() && exp <= tt_now_unix() + 1);
    sleep(2);
    assert_int_equal(cp_store_token_consume(s, other, ID_A, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_EXPIRED);
    assert_string_equal(cp_token_err_name(why), "expired_token");
    /* Bad identities cannot get a token. */
    assert_int_equal(cp_store_token_create(s, "spiffe://x/../y", 0, 1, other, sizeof(other), NULL),
                     TT_E_SPIFFE);
    assert_int_equal(cp_store_token_create(s, "http://x/y", 0, 1, other, sizeof(other), NULL),
                     TT_E_SPIFFE);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

struct race {
    struct cp_store *s;
    const char *secret;
    int wins;
};

static void *race_consume(void *arg)
{
    struct race *r = arg;
    enum cp_token_err why;

    for (int i = 0; i < 20; i++)
        if (cp_store_token_consume(r->s, r->secret, ID_A, &why) == 0)
            r->wins++;
    return NULL;
}

/* Many threads at once never spend more uses than the token has. */
static void test_store_token_atomic(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX];
    struct race r[4];
    pthread_t t[4];
    int total = 0;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 5, secret, sizeof(secret), NULL), 0);
    for (int i = 0; i < 4; i++) {
        r[i] = (struct race){s, secret, 0};
        pthread_create(&t[i], NULL, race_consume, &r[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += r[i].wins;
    }
    assert_int_equal(total, 5);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

/* ---- policy, services, revocations, version ---- */

static uint64_t last_cb_version;
static int cb_calls;

static void on_change(void *ud, uint64_t version)
{
    struct cp_store *s = ud;

    /* Called with the lock released: reading the store here must not deadlock. */
    assert_int_equal(cp_store_version(s), version);
    last_cb_version = version;
    cb_calls++;
}

static void test_store_policy_validation_and_version(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char err[512] = "";
    const char *bad = "{\"default\": \"deny\", \"rules\": [{\"name\": \"x\", \"action\": "
                      "\"allow\", \"from\": [\"" ID_A "\"], \"ports\": [70000]}]}";
    uint64_t v0 = cp_store_version(s);

    cp_store_set_change_cb(s, on_change, s);
    cb_calls = 0;
    assert_int_equal(cp_store_policy_set(s, bad, strlen(bad), err, sizeof(err)), TT_E_POLICY);
    assert_non_null(strstr(err, "rules[0].ports[0]"));
    assert_null(cp_store_policy_get(s));
    assert_int_equal(access(strcat(strcpy((char[600]){0}, dir), "/policy.json"), F_OK), -1);
    assert_int_equal(cb_calls, 0);
    assert_int_equal(cp_store_version(s), v0);

    assert_int_equal(cp_store_policy_set(s, POLICY_OK, strlen(POLICY_OK), err, sizeof(err)), 0);
    assert_int_equal(cb_calls, 1);
    assert_int_equal(last_cb_version, v0 + 1);
    /* Setting the same document again is no change. */
    assert_int_equal(cp_store_policy_set(s, POLICY_OK, strlen(POLICY_OK), err, sizeof(err)), 0);
    assert_int_equal(cb_calls, 1);

    assert_int_equal(cp_store_revoke(s, "0xABCD"), 0);
    assert_int_equal(cb_calls, 2);
    assert_int_equal(cp_store_revoke(s, "ab:cd"), 1); /* already */
    assert_int_equal(cb_calls, 2);
    assert_int_equal(cp_store_revoke(s, "zz"), -EINVAL);
    assert_int_equal(cp_store_version(s), v0 + 2);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

#define ID_C "spiffe://example.org/ns/shop/sa/db"

/* The snapshot entry for endpoint `address` under service `svc` ("" bare), or NULL. */
static const struct cp_service_entry *snap_find(const struct cp_snapshot *snap, const char *svc,
                                                const char *address)
{
    for (size_t i = 0; i < snap->n_services; i++)
        if (strcmp(snap->services[i].address, address) == 0 &&
            strcmp(snap->services[i].service_address, svc) == 0)
            return &snap->services[i];
    return NULL;
}

/* Operator services: a bare endpoint (today's form), a VIP with endpoints, endpoint add and
 * remove, bad input named, persistence, and an older services.json still loading. */
static void test_store_services(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char err[512] = "";
    const struct cp_endpoint_spec two[] = {{"10.1.0.1:8080", ID_A}, {"10.1.0.2:8080", ID_A}};
    const struct cp_endpoint_spec clash[] = {{"10.1.0.1:8080", ID_A}, {"10.1.0.1:8080", ID_B}};
    const struct cp_endpoint_spec badep[] = {{"10.1.0.1:8080", ID_A}, {"10.1.0.3", ID_A}};
    struct cp_snapshot *snap;
    json_t *list, *o;
    uint64_t v;
    char *text;

    assert_int_equal(
        cp_store_service_add(s, "10.0.0.1:8080", ID_B, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    /* Bad address, bad identity. */
    assert_int_equal(
        cp_store_service_add(s, "10.0.0.1", ID_B, CP_SOURCE_OPERATOR, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "address 10.0.0.1"));
    assert_int_equal(
        cp_store_service_add(s, "10.0.0.1:99999", ID_B, CP_SOURCE_OPERATOR, err, sizeof(err)),
        -EINVAL);
    assert_int_equal(cp_store_service_add(s, "10.0.0.1:80", "spiffe://x/a/../b", CP_SOURCE_OPERATOR,
                                          err, sizeof(err)),
                     TT_E_SPIFFE);
    assert_non_null(strstr(err, "spiffe_id"));
    /* A VIP with two endpoints; bad endpoints are named and change nothing. */
    v = cp_store_version(s);
    assert_int_equal(
        cp_store_service_set(s, "10.96.0.10:80", clash, 2, CP_SOURCE_OPERATOR, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "two identities"));
    assert_int_equal(
        cp_store_service_set(s, "10.96.0.10:80", badep, 2, CP_SOURCE_OPERATOR, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "endpoints[1].address 10.1.0.3"));
    assert_int_equal(
        cp_store_service_set(s, "10.96.0.10:80", two, 0, CP_SOURCE_OPERATOR, err, sizeof(err)),
        -EINVAL);
    assert_int_equal(cp_store_version(s), v);
    assert_int_equal(
        cp_store_service_set(s, "10.96.0.10:80", two, 2, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    assert_int_equal(cp_store_version(s), v + 1);
    /* The same again is no change. */
    assert_int_equal(
        cp_store_service_set(s, "10.96.0.10:80", two, 2, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    assert_int_equal(cp_store_version(s), v + 1);
    snap = cp_store_snapshot(s);
    assert_int_equal(snap->n_services, 3);
    assert_non_null(snap_find(snap, "", "10.0.0.1:8080"));
    assert_non_null(snap_find(snap, "10.96.0.10:80", "10.1.0.1:8080"));
    assert_non_null(snap_find(snap, "10.96.0.10:80", "10.1.0.2:8080"));
    cp_snapshot_free(snap);
    /* Endpoints one by one: a third, then the first two go; the last takes the service. */
    assert_int_equal(cp_store_service_endpoint_add(s, "10.96.0.10:80", "10.1.0.3:8080", ID_A,
                                                   CP_SOURCE_OPERATOR, err, sizeof(err)),
                     0);
    assert_int_equal(cp_store_service_endpoint_add(s, "10.96.0.10:80", "10.1.0.3:8080", "not an id",
                                                   CP_SOURCE_OPERATOR, err, sizeof(err)),
                     TT_E_SPIFFE);
    assert_int_equal(
        cp_store_service_endpoint_remove(s, "10.96.0.10:80", "10.1.0.9:8080", CP_SOURCE_OPERATOR),
        -ENOENT);
    assert_int_equal(
        cp_store_service_endpoint_remove(s, "10.96.0.11:80", "10.1.0.1:8080", CP_SOURCE_OPERATOR),
        -ENOENT);
    assert_int_equal(
        cp_store_service_endpoint_remove(s, "10.96.0.10:80", "10.1.0.1:8080", CP_SOURCE_OPERATOR),
        0);
    list = cp_store_services_json(s);
    assert_int_equal(json_array_size(list), 2);
    o = json_array_get(list, 1);
    assert_true(json_is_null(json_object_get(o, "spiffe_id")));
    assert_int_equal(json_array_size(json_object_get(o, "endpoints")), 2);
    /* A bare entry lists its one endpoint too. */
    o = json_array_get(list, 0);
    assert_string_equal(json_string_value(json_object_get(o, "spiffe_id")), ID_B);
    assert_int_equal(json_array_size(json_object_get(o, "endpoints")), 1);
    json_decref(list);
    /* Persisted: a reload gives the same table. */
    cp_store_free(s);
    s = open_ok(dir);
    snap = cp_store_snapshot(s);
    assert_int_equal(snap->n_services, 3);
    assert_non_null(snap_find(snap, "10.96.0.10:80", "10.1.0.3:8080"));
    cp_snapshot_free(snap);
    assert_int_equal(
        cp_store_service_endpoint_remove(s, "10.96.0.10:80", "10.1.0.2:8080", CP_SOURCE_OPERATOR),
        0);
    assert_int_equal(
        cp_store_service_endpoint_remove(s, "10.96.0.10:80", "10.1.0.3:8080", CP_SOURCE_OPERATOR),
        0);
    list = cp_store_services_json(s);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
    assert_int_equal(cp_store_service_remove(s, "10.0.0.2:8080", CP_SOURCE_OPERATOR), -ENOENT);
    assert_int_equal(cp_store_service_remove(s, "10.0.0.1:8080", CP_SOURCE_OPERATOR), 0);
    cp_store_free(s);

    /* A services.json an older version wrote: bare entries load, its saved registrations
     * are dropped (registrations are runtime now). */
    write_file(
        dir, "services.json",
        "{\"services\": [{\"address\": \"10.0.0.1:8080\", \"spiffe_id\": \"" ID_B
        "\", \"source\": \"operator\"}, {\"address\": \"10.0.0.9:8080\", \"spiffe_id\": \"" ID_A
        "\", \"source\": \"sidecar:" ID_A "\"}]}\n");
    s = open_ok(dir);
    list = cp_store_services_json(s);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "address")),
                        "10.0.0.1:8080");
    json_decref(list);
    /* ... and a bare entry is still written in that form. */
    assert_int_equal(
        cp_store_service_add(s, "10.0.0.2:8080", ID_A, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    text = read_file(dir, "services.json");
    assert_non_null(strstr(text, "\"spiffe_id\": \"" ID_A "\""));
    assert_null(strstr(text, "endpoints"));
    free(text);
    cp_store_free(s);
    /* A service whose endpoints are malformed is refused at load, naming the file. */
    write_file(dir, "services.json",
               "{\"services\": [{\"address\": \"10.96.0.1:80\", \"endpoints\": [], \"source\": "
               "\"operator\"}]}\n");
    assert_null(cp_store_open(dir, err, sizeof(err)));
    assert_non_null(strstr(err, "services.json"));
    assert_non_null(strstr(err, "endpoints"));
    rm_rf(dir);
    free(dir);
}

struct fake_clock {
    uint64_t ms;
};

static uint64_t fake_now(void *ud)
{
    return ((struct fake_clock *)ud)->ms;
}

/* The refusal counter's value in the store's stats. */
static json_int_t reg_refusals(struct cp_store *s)
{
    json_t *st = cp_store_stats_json(s);
    json_int_t n = json_integer_value(
        json_object_get(json_object_get(st, "refusals"), CP_REFUSAL_REGISTRATION));

    json_decref(st);
    return n;
}

/* The sidecar record of stream id in the listing (borrowed from *list). */
static json_t *sidecar_rec(struct cp_store *s, const char *id, json_t **list)
{
    json_t *o;
    size_t i;

    *list = cp_store_sidecars_json(s);
    json_array_foreach(*list, i, o)
    {
        if (strcmp(json_string_value(json_object_get(o, "id")), id) == 0)
            return o;
    }
    fail_msg("no sidecar %s", id);
    return NULL;
}

/* Registrations as an attacker tries them: an IP that is not the connection's, an address
 * another identity holds on an open stream; then the takeover once that stream is gone,
 * the same identity coming back within the grace period, expiry, wildcards, IPv6, and the
 * operator's entry winning. */
static void test_store_registrations(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    struct fake_clock clk = {.ms = 1000};
    const char *claim1[] = {"10.0.0.5:8080", "0.0.0.0:9090", "10.0.0.6:8080", "web:80",
                            "10.0.0.5:8080"};
    const char *claim2[] = {"10.0.0.5:8080"};
    const char *claim3[] = {"10.0.0.5:9090"};
    const char *claim6[] = {"[::]:80", "[fd00::6]:81"};
    const char *claim7[] = {"10.0.0.7:80"};
    struct cp_snapshot *snap;
    const struct cp_service_entry *e;
    json_t *list, *o;
    char err[512];
    uint64_t v;

    cp_store_set_clock(s, fake_now, &clk);
    cp_store_set_registration_grace(s, 60000);
    assert_int_equal(cp_store_sidecar_seen(s, "w1", ID_A, "10.0.0.5:40000", "pod-a"), 0);
    v = cp_store_version(s);
    /* Another IP, a host name: refused and counted; a wildcard is the observed IP; a
     * duplicate is taken once. */
    assert_int_equal(cp_store_registration_set(s, "w1", ID_A, "10.0.0.5:40000", claim1, 5), 2);
    assert_int_equal(reg_refusals(s), 2);
    assert_int_equal(cp_store_version(s), v + 1);
    o = sidecar_rec(s, "w1", &list);
    assert_int_equal(json_array_size(json_object_get(o, "registered")), 2);
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "registered"), 1)),
                        "10.0.0.5:9090");
    o = json_object_get(o, "refused");
    assert_int_equal(json_array_size(o), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(o, 0), "address")),
                        "10.0.0.6:8080");
    assert_string_equal(json_string_value(json_object_get(json_array_get(o, 0), "reason")),
                        "not_observed_ip");
    assert_non_null(
        strstr(json_string_value(json_object_get(json_array_get(o, 0), "detail")), "10.0.0.5"));
    assert_string_equal(json_string_value(json_object_get(json_array_get(o, 1), "reason")),
                        "bad_address");
    json_decref(list);
    snap = cp_store_snapshot(s);
    assert_int_equal(snap->n_services, 2);
    e = snap_find(snap, "", "10.0.0.5:9090");
    assert_non_null(e);
    assert_string_equal(e->spiffe_id, ID_A);
    cp_snapshot_free(snap);

    /* A second identity at the same IP (a new pod reusing it) while w1's stream is open:
     * refused. */
    assert_int_equal(cp_store_sidecar_seen(s, "w2", ID_B, "10.0.0.5:40001", ""), 0);
    v = cp_store_version(s);
    assert_int_equal(cp_store_registration_set(s, "w2", ID_B, "10.0.0.5:40001", claim2, 1), 1);
    assert_int_equal(reg_refusals(s), 3);
    assert_int_equal(cp_store_version(s), v);
    o = json_array_get(json_object_get(sidecar_rec(s, "w2", &list), "refused"), 0);
    assert_string_equal(json_string_value(json_object_get(o, "reason")), "held_by_other");
    assert_non_null(strstr(json_string_value(json_object_get(o, "detail")), ID_A));
    json_decref(list);
    /* w1's stream ends: w2, still open, takes the address at once (no grace wait, no new
     * Hello), and the refusal is not counted again. */
    v = cp_store_version(s);
    cp_store_sidecar_gone(s, "w1");
    assert_int_equal(cp_store_version(s), v + 1);
    assert_int_equal(reg_refusals(s), 3);
    o = sidecar_rec(s, "w2", &list);
    assert_int_equal(json_array_size(json_object_get(o, "refused")), 0);
    assert_string_equal(json_string_value(json_array_get(json_object_get(o, "registered"), 0)),
                        "10.0.0.5:8080");
    json_decref(list);
    snap = cp_store_snapshot(s);
    assert_string_equal(snap_find(snap, "", "10.0.0.5:8080")->spiffe_id, ID_B);
    /* w1's other address is in its grace period, still pushed. */
    assert_string_equal(snap_find(snap, "", "10.0.0.5:9090")->spiffe_id, ID_A);
    cp_snapshot_free(snap);
    list = cp_store_services_json(s);
    o = json_array_get(list, 1); /* in registration order: :8080, then :9090 */
    assert_string_equal(json_string_value(json_object_get(o, "address")), "10.0.0.5:9090");
    assert_string_equal(json_string_value(json_object_get(o, "source")), CP_SOURCE_REGISTRATION);
    assert_string_equal(json_string_value(json_object_get(o, "state")), "grace");
    assert_int_equal(json_integer_value(json_object_get(o, "grace_left_ms")), 60000);
    json_decref(list);

    /* The same identity reconnects within the grace: it keeps its entry, no change pushed. */
    clk.ms += 30000;
    assert_int_equal(cp_store_registrations_expire(s), 0);
    assert_int_equal(cp_store_sidecar_seen(s, "w3", ID_A, "10.0.0.5:40002", ""), 0);
    v = cp_store_version(s);
    assert_int_equal(cp_store_registration_set(s, "w3", ID_A, "10.0.0.5:40002", claim3, 1), 0);
    assert_int_equal(cp_store_version(s), v);
    /* It goes again; one tick short of the grace it stays, at the grace it is dropped. */
    cp_store_sidecar_gone(s, "w3");
    clk.ms += 59999;
    assert_int_equal(cp_store_registrations_expire(s), 0);
    clk.ms += 1;
    assert_int_equal(cp_store_registrations_expire(s), 1);
    assert_int_equal(cp_store_version(s), v + 1);
    snap = cp_store_snapshot(s);
    assert_int_equal(snap->n_services, 1);
    assert_null(snap_find(snap, "", "10.0.0.5:9090"));
    cp_snapshot_free(snap);

    /* IPv6: a wildcard is the observed IP; the sidecar's own other IP is refused. An
     * IPv4-mapped peer address is its IPv4 address. */
    assert_int_equal(cp_store_sidecar_seen(s, "w6", ID_C, "[fd00::5]:4000", ""), 0);
    assert_int_equal(cp_store_registration_set(s, "w6", ID_C, "[fd00::5]:4000", claim6, 2), 1);
    assert_int_equal(cp_store_sidecar_seen(s, "w7", ID_C, "[::ffff:10.0.0.7]:4000", ""), 0);
    assert_int_equal(cp_store_registration_set(s, "w7", ID_C, "[::ffff:10.0.0.7]:4000", claim7, 1),
                     0);
    /* No observed address: nothing is accepted. */
    assert_int_equal(cp_store_registration_set(s, "w8", ID_C, NULL, claim7, 1), 1);
    snap = cp_store_snapshot(s);
    assert_non_null(snap_find(snap, "", "[fd00::5]:80"));
    assert_null(snap_find(snap, "", "[fd00::6]:81"));
    assert_non_null(snap_find(snap, "", "10.0.0.7:80"));
    cp_snapshot_free(snap);

    /* The operator's entry wins: the registration is kept but not pushed. */
    assert_int_equal(
        cp_store_service_add(s, "10.0.0.5:8080", ID_C, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    snap = cp_store_snapshot(s);
    e = snap_find(snap, "", "10.0.0.5:8080");
    assert_string_equal(e->spiffe_id, ID_C);
    for (size_t i = 0; i < snap->n_services; i++)
        assert_false(strcmp(snap->services[i].address, "10.0.0.5:8080") == 0 &&
                     strcmp(snap->services[i].spiffe_id, ID_B) == 0);
    cp_snapshot_free(snap);
    list = cp_store_services_json(s);
    o = json_array_get(list, 1); /* after the operator's one entry */
    assert_string_equal(json_string_value(json_object_get(o, "address")), "10.0.0.5:8080");
    assert_true(json_is_true(json_object_get(o, "shadowed")));
    assert_string_equal(json_string_value(json_object_get(o, "state")), "live");
    json_decref(list);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

/* The Kubernetes source: replaced as a whole set, the version bumped only when what
 * sidecars receive changes (order and names do not count), unusable entries left out,
 * an operator entry at the same address wins, a registration it covers is shadowed,
 * nothing persisted. */
static void test_store_kubernetes(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    struct cp_endpoint_spec eps1[] = {{"10.244.1.2:8080", ID_A}, {"10.244.1.1:8080", ID_A}};
    struct cp_endpoint_spec eps2[] = {{"10.244.1.1:8080", ID_A}, {"10.244.1.2:8080", ID_A}};
    struct cp_endpoint_spec bad[] = {
        {"pod.local:80", ID_A}, {"10.244.1.3:80", "not-an-id"}, {"10.244.1.4:80", ID_B}};
    struct cp_endpoint_spec head[] = {{"10.244.3.3:5432", ID_B}};
    struct cp_service_spec set1[] = {{"10.96.0.10:80", "shop/web", false, eps1, 2},
                                     {"10.96.0.11:80", "shop/api", false, bad, 3}};
    struct cp_service_spec set2[] = {{"10.96.0.11:80", "shop/api2", false, bad, 3},
                                     {"10.96.0.10:80", "shop/web", false, eps2, 2}};
    struct cp_service_spec set3[] = {{"10.96.0.10:80", "shop/web", false, eps2, 1},
                                     {"10.244.3.3:5432", "data/db", true, head, 1}};
    const char *claim[] = {"10.244.1.1:8080"};
    struct cp_snapshot *snap;
    size_t dropped = 9;
    json_t *list;
    char err[256];
    uint64_t v = cp_store_version(s);

    assert_int_equal(cp_store_kubernetes_set(s, set1, 2, &dropped), 1);
    assert_int_equal(dropped, 2);
    assert_int_equal(cp_store_version(s), v + 1);
    snap = cp_store_snapshot(s);
    assert_int_equal(snap->n_services, 3);
    assert_string_equal(snap_find(snap, "10.96.0.10:80", "10.244.1.1:8080")->spiffe_id, ID_A);
    assert_non_null(snap_find(snap, "10.96.0.10:80", "10.244.1.2:8080"));
    assert_string_equal(snap_find(snap, "10.96.0.11:80", "10.244.1.4:80")->spiffe_id, ID_B);
    cp_snapshot_free(snap);
    /* The same table in another order, with another name shown: no new version. */
    assert_int_equal(cp_store_kubernetes_set(s, set2, 2, NULL), 0);
    assert_int_equal(cp_store_version(s), v + 1);
    list = cp_store_services_json(s);
    assert_int_equal(json_array_size(list), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 1), "kubernetes")),
                        "shop/api2");
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "source")),
                        CP_SOURCE_KUBERNETES);
    json_decref(list);
    /* A registration of a cluster endpoint is kept, not pushed. */
    assert_int_equal(cp_store_sidecar_seen(s, "w1", ID_B, "10.244.1.1:4000", ""), 0);
    assert_int_equal(cp_store_registration_set(s, "w1", ID_B, "10.244.1.1:4000", claim, 1), 0);
    snap = cp_store_snapshot(s);
    for (size_t i = 0; i < snap->n_services; i++)
        assert_false(strcmp(snap->services[i].spiffe_id, ID_B) == 0 &&
                     strcmp(snap->services[i].address, "10.244.1.1:8080") == 0);
    cp_snapshot_free(snap);
    /* Scaled down, a headless entry, the other Service gone. */
    v = cp_store_version(s);
    assert_int_equal(cp_store_kubernetes_set(s, set3, 2, NULL), 1);
    assert_int_equal(cp_store_version(s), v + 1);
    snap = cp_store_snapshot(s);
    assert_non_null(snap_find(snap, "10.96.0.10:80", "10.244.1.1:8080"));
    assert_null(snap_find(snap, "10.96.0.10:80", "10.244.1.2:8080"));
    assert_null(snap_find(snap, "10.96.0.11:80", "10.244.1.4:80"));
    assert_string_equal(snap_find(snap, "", "10.244.3.3:5432")->spiffe_id, ID_B);
    cp_snapshot_free(snap);
    /* An operator entry at the service address wins. */
    assert_int_equal(
        cp_store_service_add(s, "10.96.0.10:80", ID_B, CP_SOURCE_OPERATOR, err, sizeof(err)), 0);
    snap = cp_store_snapshot(s);
    assert_null(snap_find(snap, "10.96.0.10:80", "10.244.1.1:8080"));
    assert_string_equal(snap_find(snap, "", "10.96.0.10:80")->spiffe_id, ID_B);
    cp_snapshot_free(snap);
    /* Nothing of it is saved: a reload has only the operator's entry. */
    cp_store_free(s);
    s = open_ok(dir);
    list = cp_store_services_json(s);
    assert_int_equal(json_array_size(list), 1);
    json_decref(list);
    /* An empty set empties it. */
    assert_int_equal(cp_store_kubernetes_set(s, NULL, 0, NULL), 0);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

static void test_store_sidecars_and_counters(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    json_t *list, *row, *stats;

    assert_int_equal(cp_store_sidecar_seen(s, "c1", ID_A, "127.0.0.1:5000", "node-a"), 0);
    assert_int_equal(cp_store_sidecar_seen(s, "c2", ID_B, "127.0.0.1:5001", NULL), 0);
    cp_store_sidecar_acked(s, "c1", 7);
    cp_store_sidecar_nacked(s, "c2", 8, "policy: rules[0]: bad");
    cp_store_sidecar_acked(s, "nobody", 9); /* unknown ids are ignored */
    list = cp_store_sidecars_json(s);
    assert_int_equal(json_array_size(list), 2);
    row = json_array_get(list, 0);
    assert_string_equal(json_string_value(json_object_get(row, "node")), "node-a");
    assert_int_equal(json_integer_value(json_object_get(row, "acked_version")), 7);
    assert_true(json_is_null(json_object_get(row, "nacked_version")));
    row = json_array_get(list, 1);
    assert_int_equal(json_integer_value(json_object_get(row, "nacked_version")), 8);
    assert_string_equal(json_string_value(json_object_get(row, "nack_reason")),
                        "policy: rules[0]: bad");
    json_decref(list);
    cp_store_sidecar_gone(s, "c1");
    cp_store_count_refusal(s, "unknown_token");
    cp_store_count_refusal(s, "unknown_token");
    cp_store_count_refusal(s, "revoked");
    stats = cp_store_stats_json(s);
    assert_int_equal(json_integer_value(json_object_get(stats, "sidecars_connected")), 1);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(stats, "refusals"), "unknown_token")),
        2);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(stats, "refusals"), "revoked")), 1);
    assert_int_equal(json_integer_value(json_object_get(stats, "refusals_total")), 3);
    json_decref(stats);
    /* The registry is runtime only. */
    cp_store_free(s);
    s = open_ok(dir);
    list = cp_store_sidecars_json(s);
    assert_int_equal(json_array_size(list), 0);
    json_decref(list);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

static void test_store_issued_pruned(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    int64_t now = tt_now_unix();
    json_t *list;

    assert_int_equal(
        cp_store_issued_add(s, "01", ID_A, now - 2 * 86400, now - 3 * 86400, CP_VIA_TOKEN), 0);
    assert_int_equal(cp_store_issued_add(s, "02", ID_A, now + 60, now, CP_VIA_TOKEN), 0);
    assert_int_equal(cp_store_issued_add(s, "zz", ID_A, now + 60, now, CP_VIA_TOKEN), -EINVAL);
    list = cp_store_issued_json(s);
    assert_int_equal(json_array_size(list), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "serial")), "2");
    json_decref(list);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

/* ---- the journal ---- */

/* Tokens, uses and issues go to journal.log, one line each, and are replayed at open; a
 * line cut short by a crash is dropped; compaction moves them into the files and
 * replaying the old journal over those files again changes nothing. */
static void test_store_journal_replay_and_compaction(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX], path[600], *j1;
    enum cp_token_err why;
    int64_t now = tt_now_unix();
    json_t *a, *b;
    FILE *f;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 3, secret, sizeof(secret), NULL), 0);
    assert_int_equal(cp_store_issued_add_token(s, "0A", ID_A, now + 60, now, secret, &why), 0);
    assert_int_equal(cp_store_issued_add(s, "0B", ID_A, now + 60, now, CP_VIA_TOKEN), 0);
    cp_store_free(s);
    j1 = read_file(dir, "journal.log");
    assert_non_null(j1);
    assert_null(read_file(dir, "tokens.json")); /* nothing rewritten per change */

    /* A crash in the middle of a record: the partial line is dropped and cut off. */
    snprintf(path, sizeof(path), "%s/journal.log", dir);
    f = fopen(path, "a");
    fputs("{\"op\": \"token_use\", \"sha2", f);
    fclose(f);
    s = open_ok(dir);
    a = cp_store_tokens_json(s);
    assert_int_equal(json_array_size(a), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(a, 0), "uses_left")), 2);
    b = cp_store_issued_json(s);
    assert_int_equal(json_array_size(b), 2);
    json_decref(b);
    {
        char *cut = read_file(dir, "journal.log");

        assert_string_equal(cut, j1);
        free(cut);
    }
    /* Compacted, then the old journal put back (a crash before it was emptied). */
    assert_int_equal(cp_store_compact(s), 0);
    {
        char *empty = read_file(dir, "journal.log");

        assert_string_equal(empty, "");
        free(empty);
    }
    cp_store_free(s);
    f = fopen(path, "w");
    fputs(j1, f);
    fclose(f);
    s = open_ok(dir);
    b = cp_store_tokens_json(s);
    assert_true(json_equal(a, b));
    json_decref(b);
    b = cp_store_issued_json(s);
    assert_int_equal(json_array_size(b), 2); /* not twice */
    json_decref(b);
    json_decref(a);
    /* The token's last uses still count once each. */
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), 0);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), 0);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), TT_E_DENIED);
    cp_store_free(s);

    /* A corrupt complete line is refused with the file and line, and left alone. */
    f = fopen(path, "a");
    fputs("{\"op\": \"token_use\", \"sha256\": 5}\n", f);
    fclose(f);
    {
        char err[512] = "";

        assert_null(cp_store_open(dir, err, sizeof(err)));
        assert_non_null(strstr(err, "journal.log: line[6].sha256: expected a string"));
    }
    free(j1);
    rm_rf(dir);
    free(dir);
}

/* Sign checks the token, signs, then records the certificate and the use together: a
 * check never uses it; a token used up between check and record refuses the record. */
static void test_store_token_used_only_with_its_record(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX];
    enum cp_token_err why;
    int64_t now = tt_now_unix();
    json_t *l;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 1, secret, sizeof(secret), NULL), 0);
    for (int i = 0; i < 3; i++) /* e.g. refused CSRs: checked, never used */
        assert_int_equal(cp_store_token_check(s, secret, ID_A, &why), 0);
    assert_int_equal(cp_store_token_check(s, secret, ID_B, &why), TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_MISMATCH);
    assert_int_equal(cp_store_issued_add_token(s, "01", ID_A, now + 60, now, secret, &why), 0);
    /* A second Sign that checked before the first recorded: its record is refused. */
    assert_int_equal(cp_store_issued_add_token(s, "02", ID_A, now + 60, now, secret, &why),
                     TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_USED_UP);
    assert_int_equal(cp_store_issued_add_token(s, "03", ID_A, now + 60, now, "nope", &why),
                     TT_E_DENIED);
    assert_int_equal(why, CP_TOKEN_UNKNOWN);
    l = cp_store_issued_json(s);
    assert_int_equal(json_array_size(l), 1);
    json_decref(l);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

/* A save that fails (here the file size limit, as a full disk would) changes nothing:
 * not memory, not the files; the journal keeps no partial line. */
static void test_store_failed_save_changes_nothing(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s = open_ok(dir);
    char secret[CP_TOKEN_SECRET_MAX], other[CP_TOKEN_SECRET_MAX], path[600];
    enum cp_token_err why;
    int64_t now = tt_now_unix();
    struct rlimit old, lim;
    struct stat st;
    json_t *t0, *i0, *t1, *i1;

    assert_int_equal(cp_store_token_create(s, ID_A, 0, 5, secret, sizeof(secret), NULL), 0);
    assert_int_equal(cp_store_issued_add(s, "0A", ID_A, now + 60, now, CP_VIA_TOKEN), 0);
    t0 = cp_store_tokens_json(s);
    i0 = cp_store_issued_json(s);
    snprintf(path, sizeof(path), "%s/journal.log", dir);
    assert_int_equal(stat(path, &st), 0);
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)st.st_size + 10; /* no room for a whole record */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    assert_int_equal(cp_store_token_create(s, ID_A, 0, 1, other, sizeof(other), NULL), -EFBIG);
    assert_int_equal(other[0], '\0');
    assert_int_equal(cp_store_issued_add_token(s, "0B", ID_A, now + 60, now, secret, &why), -EFBIG);
    assert_int_equal(cp_store_issued_add(s, "0C", ID_A, now + 60, now, CP_VIA_TOKEN), -EFBIG);
    assert_int_equal(cp_store_token_consume(s, secret, ID_A, &why), -EFBIG);
    setrlimit(RLIMIT_FSIZE, &old);
    struct stat st2;
    assert_int_equal(stat(path, &st2), 0);
    assert_int_equal(st2.st_size, st.st_size);
    t1 = cp_store_tokens_json(s);
    i1 = cp_store_issued_json(s);
    assert_true(json_equal(t0, t1));
    assert_true(json_equal(i0, i1));
    json_decref(t1);
    json_decref(i1);
    cp_store_free(s);
    /* And after a restart. */
    s = open_ok(dir);
    t1 = cp_store_tokens_json(s);
    i1 = cp_store_issued_json(s);
    assert_true(json_equal(t0, t1));
    assert_true(json_equal(i0, i1));
    json_decref(t0);
    json_decref(i0);
    json_decref(t1);
    json_decref(i1);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

#define HASH(p) p "00000000000000000000000000000000000000000000000000000000000"

/* Delete by id prefix: an ambiguous prefix deletes nothing; dead tokens and the old
 * tokens.json format (an upgrade) load; expired and used-up ones are pruned. */
static void test_store_token_delete_and_prune(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s;
    char id[16];
    json_t *l;
    char text[2048];

    snprintf(text, sizeof(text),
             "{\"tokens\": ["
             "{\"sha256\": \"%s\", \"spiffe_id\": \"" ID_A "\", \"uses_left\": 2, "
             "\"expires_unix\": null, \"created_unix\": 1},"
             "{\"sha256\": \"%s\", \"spiffe_id\": \"" ID_A "\", \"uses_left\": 1, "
             "\"expires_unix\": null, \"created_unix\": 1},"
             "{\"sha256\": \"%s\", \"spiffe_id\": \"" ID_A "\", \"uses_left\": 0, "
             "\"expires_unix\": null, \"created_unix\": 1},"
             "{\"sha256\": \"%s\", \"spiffe_id\": \"" ID_A "\", \"uses_left\": 4, "
             "\"expires_unix\": 5, \"created_unix\": 1}]}\n",
             HASH("abcd1"), HASH("abcd2"), HASH("abcd3"), HASH("abcd4"));
    write_file(dir, "tokens.json", text);
    s = open_ok(dir);
    l = cp_store_tokens_json(s);
    assert_int_equal(json_array_size(l), 2); /* used up and expired: pruned */
    json_decref(l);
    assert_int_equal(cp_store_token_delete(s, "abc", id, sizeof(id)), -EINVAL);
    assert_int_equal(cp_store_token_delete(s, "abcg", id, sizeof(id)), -EINVAL);
    assert_int_equal(cp_store_token_delete(s, "ABCD", id, sizeof(id)), -EEXIST);
    assert_int_equal(cp_store_token_delete(s, "abcd3", id, sizeof(id)), -ENOENT);
    assert_int_equal(cp_store_token_delete(s, "ABCD2", id, sizeof(id)), 0);
    assert_string_equal(id, "abcd20000000");
    assert_int_equal(cp_store_token_delete(s, "abcd", id, sizeof(id)), 0);
    assert_string_equal(id, "abcd10000000");
    l = cp_store_tokens_json(s);
    assert_int_equal(json_array_size(l), 0);
    json_decref(l);
    cp_store_free(s);
    s = open_ok(dir);
    l = cp_store_tokens_json(s);
    assert_int_equal(json_array_size(l), 0); /* the deletions were saved */
    json_decref(l);
    assert_int_equal(cp_store_compact(s), 0);
    cp_store_free(s);
    {
        char *file = read_file(dir, "tokens.json");

        assert_null(strstr(file, "abcd"));
        free(file);
    }
    rm_rf(dir);
    free(dir);
}

/* Files created together: every state a crash can leave is finished or discarded by
 * recovery; a part both staged and in place is refused. */
static void test_store_file_set_recovery(void **state)
{
    static const char *const names[] = {"ca.key", "ca.crt"};
    const struct cp_file_part parts[] = {{"ca.key", "K", 1, 0600}, {"ca.crt", "C", 1, 0644}};
    char *dir = make_tmpdir();
    char err[512], path[600];
    struct stat st;
    char *t;

    /* A whole creation. */
    assert_int_equal(cp_atomic_create_set(dir, "ca", parts, 2, err, sizeof(err)), 0);
    snprintf(path, sizeof(path), "%s/ca.key", dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    snprintf(path, sizeof(path), "%s/ca.new", dir);
    assert_int_not_equal(stat(path, &st), 0);

    /* Staged but not committed: discarded. */
    rm_rf(dir);
    mkdir(dir, 0700);
    snprintf(path, sizeof(path), "%s/ca.new.tmp", dir);
    mkdir(path, 0700);
    write_file(path, "ca.key", "K");
    assert_int_equal(cp_atomic_set_recover(dir, "ca", names, 2, err, sizeof(err)), 0);
    assert_int_not_equal(stat(path, &st), 0);
    assert_null(read_file(dir, "ca.key"));

    /* Committed, one part moved: completed. */
    snprintf(path, sizeof(path), "%s/ca.new", dir);
    mkdir(path, 0700);
    write_file(path, "ca.crt", "C");
    write_file(dir, "ca.key", "K");
    assert_int_equal(cp_atomic_set_recover(dir, "ca", names, 2, err, sizeof(err)), 0);
    t = read_file(dir, "ca.crt");
    assert_string_equal(t, "C");
    free(t);
    assert_int_not_equal(stat(path, &st), 0);

    /* A part both staged and in place: not a crash's doing, refused, both kept. */
    mkdir(path, 0700);
    write_file(path, "ca.crt", "C2");
    assert_int_equal(cp_atomic_set_recover(dir, "ca", names, 2, err, sizeof(err)), -EEXIST);
    assert_non_null(strstr(err, "both exist"));
    t = read_file(dir, "ca.crt");
    assert_string_equal(t, "C");
    free(t);
    rm_rf(dir);
    free(dir);
}

/* Certificates for reserved identities that did not come through the admin-cert path are
 * revoked (records from before "via" was kept included); admin certificates, workload
 * certificates and expired ones are left alone. A revocation carries the certificate's
 * not-after into the snapshot. */
static void test_store_revoke_reserved(void **state)
{
    char *dir = make_tmpdir();
    struct cp_store *s;
    int64_t now = tt_now_unix();
    struct cp_snapshot *snap;
    char text[2048];
    size_t n = 99;

    (void)state;
    /* An issued.json from before "via": a tether-control certificate from a token. */
    snprintf(text, sizeof(text),
             "{\"issued\": [{\"serial\": \"0C\", \"spiffe_id\": "
             "\"spiffe://example.org/ns/tether-system/sa/tether-control\", \"not_after\": %lld, "
             "\"issued_at\": %lld}]}",
             (long long)(now + 3600), (long long)now);
    write_file(dir, "issued.json", text);
    s = open_ok(dir);
    assert_int_equal(cp_store_issued_add(s, "0A", "spiffe://example.org/ns/tether-system/sa/x",
                                         now + 600, now, CP_VIA_TOKEN),
                     0);
    assert_int_equal(cp_store_issued_add(s, "0B", "spiffe://example.org/ns/tether-system/sa/x",
                                         now + 600, now, CP_VIA_RENEWAL),
                     0);
    assert_int_equal(cp_store_issued_add(s, "AD",
                                         "spiffe://example.org/ns/tether-system/sa/"
                                         "tether-admin",
                                         now + 600, now, CP_VIA_ADMIN_CERT),
                     0);
    assert_int_equal(cp_store_issued_add(s, "0E", "spiffe://example.org/ns/tether-system/sa/y",
                                         now + 120, now - 7200, CP_VIA_TOKEN),
                     0);
    assert_int_equal(cp_store_issued_add(s, "0F", ID_A, now + 600, now, CP_VIA_TOKEN), 0);
    assert_int_equal(cp_store_revoke_reserved(s, &n), 0);
    assert_int_equal(n, 4);
    assert_true(cp_store_is_revoked(s, "0A"));
    assert_true(cp_store_is_revoked(s, "0B"));
    assert_true(cp_store_is_revoked(s, "0C"));
    assert_true(cp_store_is_revoked(s, "0E"));
    assert_false(cp_store_is_revoked(s, "AD"));
    assert_false(cp_store_is_revoked(s, "0F"));
    /* Once is enough: the next start finds nothing new. */
    assert_int_equal(cp_store_revoke_reserved(s, &n), 0);
    assert_int_equal(n, 0);
    /* Each pushed revocation says until when it matters; an unknown serial says 0. */
    assert_int_equal(cp_store_revoke(s, "77"), 0);
    snap = cp_store_snapshot(s);
    assert_non_null(snap);
    assert_int_equal(snap->n_revoked, 5);
    for (size_t i = 0; i < snap->n_revoked; i++) {
        if (strcmp(snap->revoked[i], "C") == 0)
            assert_int_equal(snap->revoked_not_after[i], now + 3600);
        else if (strcmp(snap->revoked[i], "A") == 0)
            assert_int_equal(snap->revoked_not_after[i], now + 600);
        else if (strcmp(snap->revoked[i], "77") == 0)
            assert_int_equal(snap->revoked_not_after[i], 0);
    }
    cp_snapshot_free(snap);
    cp_store_free(s);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_serial_normalization),
        cmocka_unit_test(test_store_atomic_write),
        cmocka_unit_test(test_store_persists_across_reload),
        cmocka_unit_test(test_store_round_trip_keeps_every_field),
        cmocka_unit_test(test_store_corrupt_file_refused),
        cmocka_unit_test(test_store_token_single_use),
        cmocka_unit_test(test_store_token_multi_use),
        cmocka_unit_test(test_store_token_no_leading_dash),
        cmocka_unit_test(test_store_token_refusals),
        cmocka_unit_test(test_store_token_atomic),
        cmocka_unit_test(test_store_policy_validation_and_version),
        cmocka_unit_test(test_store_services),
        cmocka_unit_test(test_store_registrations),
        cmocka_unit_test(test_store_kubernetes),
        cmocka_unit_test(test_store_sidecars_and_counters),
        cmocka_unit_test(test_store_issued_pruned),
        cmocka_unit_test(test_store_revoke_reserved),
        cmocka_unit_test(test_store_journal_replay_and_compaction),
        cmocka_unit_test(test_store_token_used_only_with_its_record),
        cmocka_unit_test(test_store_failed_save_changes_nothing),
        cmocka_unit_test(test_store_token_delete_and_prune),
        cmocka_unit_test(test_store_file_set_recovery),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
