/* SPIFFE IDs (spiffe://<trust-domain>/<path>) and the patterns policy rules use to
 * match them. Pure string functions: no allocation, no I/O. */
#ifndef TT_SPIFFE_H
#define TT_SPIFFE_H

#include <stdbool.h>
#include <stddef.h>

#define TT_SPIFFE_MAX 2048 /* longest accepted ID, in bytes (SPIFFE spec) */

/* Checks that id[0..len) is a valid SPIFFE ID per the SPIFFE ID specification: the
 * "spiffe://" scheme in lower case, a non-empty trust domain of [a-z0-9.-_], a path of
 * segments of [A-Za-z0-9.-_] that are not empty, "." or "..", no trailing slash, no
 * percent-encoding, query, fragment, port or userinfo, no NUL byte, at most
 * TT_SPIFFE_MAX bytes. A bare trust domain ("spiffe://td") is valid only when
 * allow_no_path. Returns 0 or TT_E_SPIFFE. */
int tt_spiffe_check(const char *id, size_t len, bool allow_no_path);

/* Checks a policy pattern: either a valid SPIFFE ID (exact match), a valid ID followed
 * by "/" "*" (matches every ID under that path, e.g. "spiffe://td/ns/shop/" + "*"; also
 * "spiffe://td/" + "*" for a whole trust domain), or "*" (any ID). Returns 0 or TT_E_SPIFFE. */
int tt_spiffe_pattern_check(const char *pattern);

/* True when `id` (a valid SPIFFE ID) matches `pattern` (valid per
 * tt_spiffe_pattern_check): exact string equality, or for "P/" "*" an ID that starts with
 * "P/" followed by at least one more character ("spiffe://td/ns/shop/" + "*" matches
 * "spiffe://td/ns/shop/sa/web" but not "spiffe://td/ns/shopping/sa/x" nor
 * "spiffe://td/ns/shop"). */
bool tt_spiffe_match(const char *pattern, const char *id);

/* Copies the trust domain of a valid ID into buf (NUL-terminated). Returns 0 or
 * TT_E_SPIFFE when it does not fit or the ID is invalid. */
int tt_spiffe_trust_domain(const char *id, char *buf, size_t len);

/* The namespace reserved for the control plane (DESIGN.md "Trust between the parts"): its
 * serving identity and the admin identities live under spiffe://<td>/ns/tether-system/. */
#define TT_SPIFFE_RESERVED_NS "tether-system"

/* True when id is a valid SPIFFE ID whose path is /ns/tether-system or below it, in any
 * trust domain. Pure. */
bool tt_spiffe_reserved(const char *id);

#endif
