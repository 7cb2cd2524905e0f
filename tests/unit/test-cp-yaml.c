/* Unit tests for control/yaml.c: scalar typing by the core schema, multi-document
 * streams, JSON as YAML, tags, anchors, aliases and merge keys, every refusal (with file,
 * line and column), the bounds against alias bombs and deep nesting, and round trips
 * through the writer. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <jansson.h>

#include "yaml.h"

/* Parses text; asserts success and returns the documents. */
static json_t *parse_ok(const char *text)
{
    char err[256];
    json_t *docs = NULL;
    int rc = cp_yaml_parse(text, strlen(text), "t.yaml", &docs, err, sizeof(err));

    if (rc != 0)
        fail_msg("unexpected error %d: %s", rc, err);
    assert_non_null(docs);
    return docs;
}

/* Parses text; asserts failure with code and an error holding want. */
static void parse_fails(const char *text, int code, const char *want)
{
    char err[256] = "";
    json_t *docs = (json_t *)1;
    int rc = cp_yaml_parse(text, strlen(text), "t.yaml", &docs, err, sizeof(err));

    if (rc != code || !strstr(err, want))
        fail_msg("for %s: got %d \"%s\", want %d \"%s\"", text, rc, err, code, want);
    assert_null(docs);
}

/* Asserts that the documents equal the JSON text want. */
static void assert_json(json_t *docs, const char *want)
{
    json_t *w = json_loads(want, JSON_DECODE_ANY, NULL);

    assert_non_null(w);
    if (!json_equal(docs, w)) {
        char *got = json_dumps(docs, JSON_ENCODE_ANY | JSON_COMPACT);
        fail_msg("got %s, want %s", got, want);
    }
    json_decref(w);
}

static void expect(const char *yaml, const char *json)
{
    json_t *docs = parse_ok(yaml);

    assert_json(docs, json);
    json_decref(docs);
}

static void test_yaml_scalars_core_schema(void **state)
{
    (void)state;
    expect("a: null\nb: ~\nc:\nd: Null\ne: NULL\n",
           "[{\"a\":null,\"b\":null,\"c\":null,\"d\":null,\"e\":null}]");
    expect(
        "[true, True, TRUE, false, False, FALSE, yes, no, on, off, y, n, tRUE]",
        "[[true,true,true,false,false,false,\"yes\",\"no\",\"on\",\"off\",\"y\",\"n\",\"tRUE\"]]");
    expect("[0, 12, -3, +4, 0x1F, 0o17, 0644, -0644, 08, 9223372036854775807, "
           "-9223372036854775808]",
           "[[0,12,-3,4,31,15,420,-420,8,9223372036854775807,-9223372036854775808]]");
    expect("[1.5, -0.5, .5, 1e3, 1.0, 2E-2, +3.]", "[[1.5,-0.5,0.5,1000.0,1.0,0.02,3.0]]");
    /* Quoted and block scalars are strings whatever they hold. */
    expect("['true', \"12\", 'null', '', \"0x10\"]", "[[\"true\",\"12\",\"null\",\"\",\"0x10\"]]");
    expect("a: |\n  7\nb: >-\n  true\n", "[{\"a\":\"7\\n\",\"b\":\"true\"}]");
    /* Things that look almost like numbers stay strings. */
    expect(
        "[1.2.3, 10.0.0.1/8, 1_000, 0x, 1e, 1-2, 12:30, .inf1, v1]",
        "[[\"1.2.3\",\"10.0.0.1/8\",\"1_000\",\"0x\",\"1e\",\"1-2\",\"12:30\",\".inf1\",\"v1\"]]");
    /* An integer key becomes a string key. */
    expect("{80: http, \"443\": https}", "[{\"80\":\"http\",\"443\":\"https\"}]");
}

static void test_yaml_multi_document(void **state)
{
    (void)state;
    expect("", "[]");
    expect("# only a comment\n", "[]");
    expect("a: 1\n---\nb: 2\n---\n- x\n", "[{\"a\":1},{\"b\":2},[\"x\"]]");
    expect("---\na: 1\n---\n---\nc: 3\n...\n", "[{\"a\":1},null,{\"c\":3}]");
    /* JSON is YAML. */
    expect("{\"kind\": \"Pod\", \"spec\": {\"containers\": [{\"name\": \"a\", \"ports\": "
           "[{\"containerPort\": 80}]}], \"x\": [true, null, 1.5, \"s\"]}}",
           "[{\"kind\":\"Pod\",\"spec\":{\"containers\":[{\"name\":\"a\",\"ports\":[{"
           "\"containerPort\":80}]}],\"x\":[true,null,1.5,\"s\"]}}]");
}

static void test_yaml_tags(void **state)
{
    (void)state;
    expect("[!!str 123, !!str true, !!int \"12\", !!float 3, !!bool \"false\", !!null '', ! 12, "
           "!!map {a: 1}, !!seq [1]]",
           "[[\"123\",\"true\",12,3.0,false,null,\"12\",{\"a\":1},[1]]]");
    expect("%TAG !e! tag:yaml.org,2002:\n---\n!e!str 5\n", "[\"5\"]");
    parse_fails("a: !!int abc\n", -EINVAL, "t.yaml:1:4: \"abc\" is not a valid int");
    parse_fails("a: !custom 1\n", -EINVAL, "unsupported tag !custom");
    parse_fails("a: !!binary aGk=\n", -EINVAL, "unsupported tag tag:yaml.org,2002:binary");
    parse_fails("a: !!seq {b: 1}\n", -EINVAL, "unsupported tag tag:yaml.org,2002:seq on a mapping");
}

static void test_yaml_anchors_aliases_merge(void **state)
{
    (void)state;
    expect("base: &b {x: 1, y: [1, 2]}\ncopy: *b\ns: &s hi\nt: *s\n",
           "[{\"base\":{\"x\":1,\"y\":[1,2]},\"copy\":{\"x\":1,\"y\":[1,2]},\"s\":\"hi\",\"t\":"
           "\"hi\"}]");
    /* A redefined anchor: the later definition wins from there on. */
    expect("- &a 1\n- *a\n- &a 2\n- *a\n", "[[1,1,2,2]]");
    /* Merge keys: explicit keys win, the first merged mapping wins over the second. */
    expect("d: &d {a: 1, b: 2}\ne: &e {b: 3, c: 4}\nm:\n  <<: [*d, *e]\n  a: 9\n",
           "[{\"d\":{\"a\":1,\"b\":2},\"e\":{\"b\":3,\"c\":4},\"m\":{\"a\":9,\"b\":2,\"c\":4}}]");
    expect("d: &d {a: 1}\nm: {<<: *d, z: 0}\n", "[{\"d\":{\"a\":1},\"m\":{\"z\":0,\"a\":1}}]");
    /* A quoted "<<" is an ordinary key. */
    expect("{'<<': 1}", "[{\"<<\":1}]");
    /* Copies are independent values. */
    {
        json_t *docs = parse_ok("a: &a {k: v}\nb: *a\n");
        json_t *a = json_object_get(json_array_get(docs, 0), "a");
        json_t *b = json_object_get(json_array_get(docs, 0), "b");
        assert_ptr_not_equal(a, b);
        json_object_set_new(a, "k", json_string("changed"));
        assert_string_equal(json_string_value(json_object_get(b, "k")), "v");
        json_decref(docs);
    }
    parse_fails("a: *nope\n", -EINVAL, "t.yaml:1:4: alias *nope names no anchor before it");
    /* Anchors do not cross documents. */
    parse_fails("a: &x 1\n---\nb: *x\n", -EINVAL, "t.yaml:3:4: alias *x names no anchor");
    parse_fails("m: {<<: 1}\n", -EINVAL, "a << merge key takes a mapping");
    parse_fails("m: {<<: [1]}\n", -EINVAL, "a << merge key takes mappings only");
}

/* The billion laughs: nine levels of ten aliases would be 10^9 values. Refused quickly by
 * the node bound, not expanded. */
static void test_yaml_alias_bomb_refused(void **state)
{
    char text[2048];
    size_t n = 0;

    (void)state;
    n += snprintf(text + n, sizeof(text) - n, "a0: &a0 [lol]\n");
    for (int i = 1; i <= 9; i++) {
        n += snprintf(text + n, sizeof(text) - n, "a%d: &a%d [", i, i);
        for (int j = 0; j < 10; j++)
            n += snprintf(text + n, sizeof(text) - n, "%s*a%d", j ? ", " : "", i - 1);
        n += snprintf(text + n, sizeof(text) - n, "]\n");
    }
    parse_fails(text, -E2BIG, "more than 1048576 values (aliases expanded)");
    /* Depth through aliases: each level nests the previous one 200 deep. */
    {
        char *deep = malloc(4096);
        size_t m = 0;
        m += snprintf(deep + m, 4096 - m, "a: &a ");
        for (int i = 0; i < 200; i++)
            deep[m++] = '[';
        for (int i = 0; i < 200; i++)
            deep[m++] = ']';
        m += snprintf(deep + m, 4096 - m,
                      "\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
                      "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]"
                      "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
                      "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n");
        parse_fails(deep, -E2BIG, "nests deeper than 256 levels");
        free(deep);
    }
}

static void test_yaml_bounds_and_refusals(void **state)
{
    char *deep = malloc(1000);

    (void)state;
    memset(deep, '[', 300);
    memset(deep + 300, ']', 300);
    deep[600] = '\0';
    parse_fails(deep, -E2BIG, "t.yaml:1:257: nested deeper than 256 levels");
    free(deep);
    parse_fails("a: 1\na: 2\n", -EINVAL, "t.yaml:2:4: duplicate mapping key \"a\"");
    parse_fails("? [1]\n: x\n", -EINVAL, "t.yaml:1:3: mapping keys must be strings");
    parse_fails("? {a: 1}\n: x\n", -EINVAL, "mapping keys must be strings");
    parse_fails("a: b: c\n", -EINVAL, "t.yaml:1:5: mapping values are not allowed");
    parse_fails("a: [1, 2\n", -EINVAL, "t.yaml:2:1:");
    parse_fails("a: .inf\n", -EINVAL, ".inf cannot be represented in JSON");
    parse_fails("a: -.Inf\n", -EINVAL, "cannot be represented in JSON");
    parse_fails("a: .NaN\n", -EINVAL, "cannot be represented in JSON");
    parse_fails("a: 9223372036854775808\n", -EINVAL, "number out of range");
    parse_fails("a: 1e999\n", -EINVAL, "number out of range");
    {
        /* A NUL escape is a string of that length (JSON can hold it). */
        json_t *docs = parse_ok("a: \"x\\0y\"\n");
        assert_int_equal(json_string_length(json_object_get(json_array_get(docs, 0), "a")), 3);
        json_decref(docs);
    }
    {
        /* Not UTF-8. */
        const char bad[] = "a: \xff\xfe\n";
        char err[256];
        json_t *docs;
        assert_true(cp_yaml_parse(bad, sizeof(bad) - 1, "bad.yaml", &docs, err, sizeof(err)) < 0);
        assert_non_null(strstr(err, "bad.yaml:"));
    }
    {
        /* Not NUL-terminated: only len bytes are read. */
        const char text[] = "a: 1\nb: [";
        char err[256];
        json_t *docs;
        assert_int_equal(cp_yaml_parse(text, 5, NULL, &docs, err, sizeof(err)), 0);
        assert_json(docs, "[{\"a\":1}]");
        json_decref(docs);
    }
}

/* emit then parse gives the same documents. */
static void round_trip(const char *json, const char *must_contain)
{
    json_t *docs = json_loads(json, 0, NULL);
    json_t *back = NULL;
    char *out = NULL, err[256];

    assert_non_null(docs);
    if (cp_yaml_emit(docs, &out, err, sizeof(err)) != 0)
        fail_msg("emit: %s", err);
    if (must_contain && !strstr(out, must_contain))
        fail_msg("output lacks %s:\n%s", must_contain, out);
    if (cp_yaml_parse(out, strlen(out), "out", &back, err, sizeof(err)) != 0)
        fail_msg("reparse: %s\n%s", err, out);
    if (!json_equal(docs, back)) {
        char *got = json_dumps(back, JSON_COMPACT);
        fail_msg("round trip changed\n%s\ninto %s\nvia\n%s", json, got, out);
    }
    json_decref(docs);
    json_decref(back);
    free(out);
}

static void test_yaml_emit_round_trip(void **state)
{
    (void)state;
    round_trip("[]", NULL);
    round_trip("[{\"a\":1},{\"b\":[1,2]},null,\"s\"]", "\n---");
    round_trip("[{\"strings\":[\"true\",\"false\",\"null\",\"~\",\"\",\"123\",\"-1\",\"0x1F\","
               "\"0o17\",\"0644\",\"1.5\",\"1e3\",\".5\",\"yes\",\"No\",\"ON\",\"off\",\"y\","
               "\"N\",\"1_000\",\"12:30\",\".inf\",\"-.Inf\",\".nan\",\"<<\",\"=\",\"10.0.0.1\","
               "\"a: b\",\"- x\",\"# c\",\"&a\",\"*a\",\"!t\",\"%x\",\"@x\",\"`x\",\"{x}\","
               "\"[x]\",\"x,y\",\"'q'\",\"\\\"dq\\\"\",\" lead\",\"trail \",\"tab\\there\","
               "\"caf\\u00e9 \\u2603\",\"ctl\\u0001\"]}]",
               "\"true\"");
    round_trip("[{\"numbers\":[0,-1,9223372036854775807,-9223372036854775808,1.5,1.0,-0.0,"
               "1e300,0.1,123456789.123,2.5e-308]}]",
               NULL);
    round_trip("[{\"bools\":[true,false],\"n\":null,\"empty\":{},\"none\":[],"
               "\"nested\":{\"a\":[{\"b\":[[1,[2]],{}]}]}}]",
               NULL);
    /* Keys that look like other types. */
    round_trip("[{\"80\":1,\"true\":2,\"null\":3,\"\":4,\"a b\":5,\"on\":6}]", "\"80\":");
    /* Multi-line strings: literal blocks, trailing newlines kept or not. */
    round_trip("[{\"pem\":\"-----BEGIN CERTIFICATE-----\\nMIIB\\n-----END CERTIFICATE-----\\n\","
               "\"no_nl\":\"a\\nb\",\"two_nl\":\"a\\n\\n\",\"lead_space\":\"  x\\ny\\n\","
               "\"only_nl\":\"\\n\",\"trail_space\":\"a \\nb\"}]",
               "pem: |\n");
    /* A long line is not folded away. */
    {
        char json[3000];
        memset(json, 'x', sizeof(json));
        memcpy(json, "[\"", 2);
        memcpy(json + 2 + 2500, "\"]", 3);
        round_trip(json, NULL);
    }
}

static void test_yaml_emit_format(void **state)
{
    json_t *docs = json_loads("[{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":"
                              "\"p\",\"annotations\":{\"tether.io/inject\":\"false\"}}},"
                              "{\"kind\":\"Service\"}]",
                              0, NULL);
    char *out = NULL, err[256];

    (void)state;
    assert_int_equal(cp_yaml_emit(docs, &out, err, sizeof(err)), 0);
    assert_string_equal(out, "apiVersion: v1\n"
                             "kind: Pod\n"
                             "metadata:\n"
                             "  name: p\n"
                             "  annotations:\n"
                             "    tether.io/inject: \"false\"\n"
                             "---\n"
                             "kind: Service\n");
    free(out);
    json_decref(docs);

    /* YAML 1.1 readers (kubectl) would take these for booleans or numbers: quoted. */
    docs = json_loads("[[\"yes\",\"Off\",\"0644\",\"1_0\",\"1:2\",\"plain\",1.0,\"\"]]", 0, NULL);
    assert_int_equal(cp_yaml_emit(docs, &out, err, sizeof(err)), 0);
    assert_string_equal(out, "- \"yes\"\n- \"Off\"\n- \"0644\"\n- \"1_0\"\n- \"1:2\"\n- plain\n"
                             "- 1.0\n- \"\"\n");
    free(out);
    json_decref(docs);

    docs = json_object();
    assert_int_equal(cp_yaml_emit(docs, &out, err, sizeof(err)), -EINVAL);
    assert_null(out);
    assert_non_null(strstr(err, "expected an array"));
    json_decref(docs);

    docs = json_array();
    assert_int_equal(cp_yaml_emit(docs, &out, err, sizeof(err)), 0);
    assert_string_equal(out, "");
    free(out);
    json_decref(docs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_yaml_scalars_core_schema),
        cmocka_unit_test(test_yaml_multi_document),
        cmocka_unit_test(test_yaml_tags),
        cmocka_unit_test(test_yaml_anchors_aliases_merge),
        cmocka_unit_test(test_yaml_alias_bomb_refused),
        cmocka_unit_test(test_yaml_bounds_and_refusals),
        cmocka_unit_test(test_yaml_emit_round_trip),
        cmocka_unit_test(test_yaml_emit_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
