/* Fuzz target: YAML streams (cp_yaml_parse), then the writer (cp_yaml_emit) whose output
 * must read back as the same documents, then injection of every document
 * (cp_inject_object), which must be idempotent. Input either parses or gets one line of
 * error; nothing in it may crash, hang or leak. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "inject.h"
#include "yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct cp_inject_opts opts = {
        .bundle_pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"};
    char err[512], why[700];
    json_t *docs, *back, *doc;
    char *text;
    size_t i;

    if (cp_yaml_parse((const char *)data, size, "fuzz", &docs, err, sizeof(err)) != 0)
        return 0;
    if (cp_yaml_emit(docs, &text, err, sizeof(err)) == 0) {
        if (cp_yaml_parse(text, strlen(text), "emitted", &back, err, sizeof(err)) != 0 ||
            !json_equal(docs, back)) {
            fprintf(stderr, "round trip failed (%s):\n%s\n", err, text);
            abort();
        }
        json_decref(back);
        free(text);
    }
    json_array_foreach(docs, i, doc)
    {
        json_t *out, *again;
        if (cp_inject_object(doc, &opts, &out, why, sizeof(why)) != CP_INJECT_INJECTED) {
            json_decref(out);
            continue;
        }
        if (cp_inject_object(out, &opts, &again, why, sizeof(why)) != CP_INJECT_SKIPPED ||
            !json_equal(out, again)) {
            fprintf(stderr, "injection is not idempotent: %s\n", why);
            abort();
        }
        json_decref(again);
        json_decref(out);
    }
    json_decref(docs);
    return 0;
}
