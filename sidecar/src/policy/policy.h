/* Identity-based allow lists (DESIGN.md "Policy"). A parsed document is immutable and
 * refcounted, a snapshot member; tt_policy_check() is a pure verdict. Nothing in it
 * changes after parsing: per-rule hit counts are kept by the workers' metrics, keyed by
 * rule name (metrics.h: tt_metrics_policy_count). No libuv and no JSON types here
 * (policy_json.h renders a document). */
#ifndef TT_POLICY_H
#define TT_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tt_policy;

enum tt_policy_action {
    TT_POLICY_ALLOW,
    TT_POLICY_DENY,
};

enum tt_policy_mode {
    TT_POLICY_ENFORCE,
    TT_POLICY_AUDIT,
};

#define TT_POLICY_MAX_AUDIT    8 /* audit matches recorded per verdict (more are dropped) */
#define TT_POLICY_RULE_DEFAULT (-1)

/* The outcome of one evaluation. */
struct tt_policy_verdict {
    bool allowed;
    int rule;              /* index of the deciding enforce rule, or TT_POLICY_RULE_DEFAULT */
    const char *rule_name; /* its name, or "default"; valid while the policy lives */
    int audit[TT_POLICY_MAX_AUDIT]; /* indices of audit rules that matched */
    int n_audit;
    bool audit_would_deny; /* an audit deny rule matched */
};

/* Parses a policy document (format in DESIGN.md: "default", "rules" with "name",
 * "action", "from", optional "to", "ports", "methods", "paths", "mode"). Unknown keys,
 * wrong types, empty "from", invalid SPIFFE patterns, ports outside 1..65535 and
 * duplicate rule names are errors. On error returns NULL and writes one line to err
 * naming the source, the key path and what was expected, e.g.
 * "policy.json: rules[1].ports[0]: expected an integer 1..65535". `source` names the
 * document in messages. The version is the document's "version" string if present,
 * else a short hex digest of the text. Returns a policy with one reference. */
struct tt_policy *tt_policy_parse(const char *text, size_t len, const char *source, char *err,
                                  size_t errlen);

/* Reads and parses a file; messages name the path. */
struct tt_policy *tt_policy_load_file(const char *path, char *err, size_t errlen);

struct tt_policy *tt_policy_ref(struct tt_policy *p);
void tt_policy_unref(struct tt_policy *p); /* accepts NULL */

/* Evaluates the rules that apply to a workload with identity `self` (rules whose "to"
 * is absent or matches `self`) for a connection from `caller` to destination `port`.
 * Deny rules are evaluated before allow rules; the first enforce rule that matches
 * decides; audit rules never decide but are reported in out->audit. With no deciding
 * match the document's default applies. `method`/`path` may be NULL for TCP (rules
 * with "methods" or "paths" then never match). Pure: touches no counters. */
void tt_policy_check(const struct tt_policy *p, const char *caller, const char *self, uint16_t port,
                     const char *method, const char *path, struct tt_policy_verdict *out);

/* The per-request verdict of an HTTP-aware inbound (DESIGN.md "HTTP between sidecars";
 * http/gate.h asks it for each request; start-up and the control stream refuse deny rules
 * with HTTP conditions only on opaque ports, tt_policy_check_opaque_enforceable). The same
 * evaluation as a connection's, so the same precedence: deny rules before allow rules, the first
 * matching enforce rule decides, else the default; audit rules never decide, every
 * matching one is listed in out->audit (out->audit_would_deny when one of them denies:
 * count those per rule with tt_metrics_policy_count). Rules without "methods"/"paths"
 * match every request of their caller and port. `method` is the request's method token as
 * sent (compared case-sensitively), `path` its path without the query, already normalized
 * by the HTTP layer (http/h1.h: dot segments resolved, unreserved percent-encodings
 * decoded); both non-NULL. A NULL caller (no verified identity) matches no rule. Pure. */
void tt_policy_check_request(const struct tt_policy *p, const char *caller, const char *self,
                             uint16_t port, const char *method, const char *path,
                             struct tt_policy_verdict *out);

#define TT_POLICY_HTTP_F_ENFORCE 0x1u /* an enforce rule with methods/paths applies */
#define TT_POLICY_HTTP_F_AUDIT   0x2u /* an audit rule with methods/paths applies */

/* Whether rules with "methods" or "paths" apply to connections from `caller` to `port` on
 * the workload `self` (their "to", "from" and "ports" match; the HTTP conditions are not
 * evaluated): TT_POLICY_HTTP_F_* flags, 0 when none does. With _ENFORCE the inbound must
 * see every request (bytes that are not HTTP/1.x or HTTP/2 have to be refused: no
 * verdict could be given for them); with only _AUDIT it may parse requests to count
 * would-deny hits but must not refuse anything for that. A NULL caller matches no rule,
 * so it gets 0. Pure. */
unsigned tt_policy_http_rules(const struct tt_policy *p, const char *caller, const char *self,
                              uint16_t port);

/* Ports declared opaque (--opaque-ports: server-first protocols) are relayed without
 * parsing HTTP, so a deny rule conditioned on a method or a path could never match there:
 * the requests it names would be let through. Every other inbound port reads requests
 * where such rules apply (http/gate.h). Returns TT_E_POLICY with the first enforce deny
 * rule with HTTP conditions that applies to `self` and covers one of
 * opaque_ports[0..n_opaque) (a rule without "ports" covers them all) named in err, or 0
 * when the document can be enforced as written. (Allow rules with HTTP conditions only
 * fail closed, and audit rules never block: both are fine.) */
int tt_policy_check_opaque_enforceable(const struct tt_policy *p, const char *self,
                                       const uint16_t *opaque_ports, size_t n_opaque, char *err,
                                       size_t errlen);

const char *tt_policy_version(const struct tt_policy *p);
bool tt_policy_default_allows(const struct tt_policy *p);
size_t tt_policy_rule_count(const struct tt_policy *p);

/* Read-only view of rule i for /stats and /policy. */
struct tt_policy_rule_info {
    const char *name;
    enum tt_policy_action action;
    enum tt_policy_mode mode;
};
void tt_policy_rule_info(const struct tt_policy *p, size_t i, struct tt_policy_rule_info *out);

#endif
