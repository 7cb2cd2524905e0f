/* Fuzz target: policy documents (tt_policy_parse), then evaluation and the normalized
 * JSON of whatever parsed. A document either parses or gets one line of error; nothing
 * it contains may crash, hang or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "metrics/metrics.h"
#include "policy/policy.h"
#include "policy/policy_json.h"

/* Counts verdicts across inputs, as a worker does across pushes. */
static struct tt_metrics *counts;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const ids[] = {"spiffe://td/ns/shop/sa/web", "spiffe://td/ns/a/sa/b",
                                      "spiffe://other/x"};
    char err[512];
    struct tt_policy *p = tt_policy_parse((const char *)data, size, "fuzz", err, sizeof(err));

    if (p == NULL)
        return 0;
    if (counts == NULL)
        counts = tt_metrics_new(0);
    tt_metrics_policy_prepare(counts, p);
    for (size_t i = 0; i < 3; i++) {
        struct tt_policy_verdict v;
        tt_policy_check(p, ids[i], ids[(i + 1) % 3], (uint16_t)(8080 + i), i ? "GET" : NULL,
                        i ? "/x" : NULL, &v);
        tt_metrics_policy_count(counts, p, &v);
        tt_policy_check_opaque_enforceable(p, ids[i], (const uint16_t[]){25, 8080}, 2, err,
                                           sizeof(err));
    }
    for (size_t i = 0; i < tt_policy_rule_count(p); i++) {
        struct tt_policy_rule_info info;
        tt_policy_rule_info(p, i, &info);
    }
    json_t *doc = tt_policy_to_json(p);
    char *text = doc != NULL ? json_dumps(doc, 0) : NULL;
    if (text != NULL) {
        /* The normalized document parses again. */
        struct tt_policy *again = tt_policy_parse(text, strlen(text), "again", err, sizeof(err));
        if (again == NULL)
            abort();
        tt_policy_unref(again);
    }
    free(text);
    json_decref(doc);
    tt_policy_unref(p);
    return 0;
}
