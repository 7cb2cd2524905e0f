/* A parsed policy document rendered as JSON, for the admin endpoint's /policy. Apart from
 * policy.h so that the modules that evaluate policy (net/) never see jansson. */
#ifndef TT_POLICY_JSON_H
#define TT_POLICY_JSON_H

#include <jansson.h>

struct tt_policy;

/* The document as parsed, normalized, as a new JSON object (caller owns the reference).
 * NULL on allocation failure. */
json_t *tt_policy_to_json(const struct tt_policy *p);

#endif
