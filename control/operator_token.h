/* The operator credential of the loopback API (DESIGN.md "Trust between the parts"): a
 * random token that tether-control makes at first start in <state-dir>/operator.token
 * (mode 0600, owned by the control plane's user) and that every operator request on a
 * plaintext --listen-api carries as "Authorization: Bearer <token>" (GET /v1/bundle and
 * GET /v1/crl excepted). Whoever can read the state directory may operate; every other
 * local user cannot, and an address on loopback proves nothing about who is calling. */
#ifndef CP_OPERATOR_TOKEN_H
#define CP_OPERATOR_TOKEN_H

#include <stdbool.h>
#include <stddef.h>

#define CP_OPERATOR_TOKEN_FILE "operator.token"
#define CP_OPERATOR_TOKEN_MAX  128 /* a token and its NUL */

/* tether-control at start: reads state_dir/operator.token, or creates it (0600, 32 random
 * bytes as 64 hex digits) when it does not exist. Refuses a file that is not a regular
 * file owned by this user or that group or others may read ("... mode 0644: other users
 * can read the operator credential; chmod 600 it"), and one that holds no valid token.
 * Fills out[CP_OPERATOR_TOKEN_MAX]. Returns 0 or a negative errno with err naming the
 * file. */
int cp_operator_token_ensure(const char *state_dir, char *out, char *err, size_t errlen);

/* tetherctl: reads the token from state_dir/operator.token into out[CP_OPERATOR_TOKEN_MAX]
 * (trailing whitespace dropped). Returns 0 or a negative errno with err naming the file
 * ("/var/lib/tether/operator.token: Permission denied"). */
int cp_operator_token_read(const char *state_dir, char *out, char *err, size_t errlen);

/* True when the Authorization header value `authorization` (NULL when absent) is
 * "Bearer <token>" (scheme case-insensitive). Compares in constant time. Pure. */
bool cp_operator_token_matches(const char *token, const char *authorization);

#endif
