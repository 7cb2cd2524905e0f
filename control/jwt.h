/* Kubernetes projected service-account tokens as proof of identity (DESIGN.md
 * "Certificates and trust", proof (c)): a JWS in compact serialization (RFC 7515 §7.1)
 * whose header names ES256 or RS256 (nothing else: not "none", never an HMAC), whose
 * signature verifies with a key of the control plane's JWK Set (jwks.h), and whose claims
 * (RFC 7519 §4.1) say it is current ("exp" required; "nbf" and "iat" when present; a
 * small skew allowed), for the control plane's audience and, when one is configured, from
 * its issuer. Its "kubernetes.io" claim (namespace, serviceaccount.name; pod is not
 * needed) maps it to spiffe://TD/ns/<namespace>/sa/<serviceaccount>. Pure: no I/O, no
 * logging; the caller counts and logs the verdict. */
#ifndef CP_JWT_H
#define CP_JWT_H

#include <stddef.h>
#include <stdint.h>

struct cp_jwks_file;

#define CP_JWT_MAX_LEN 16384 /* a longer token is refused unread */
#define CP_JWT_SKEW    60    /* seconds of clock difference allowed on exp, nbf, iat */

/* Why a token was refused; cp_jwt_err_name() gives the refusal reason counted in /stats. */
enum cp_jwt_err {
    CP_JWT_OK = 0,
    CP_JWT_MALFORMED,     /* "jwt_malformed": not three base64url parts, not JSON, too long */
    CP_JWT_ALG,           /* "jwt_alg": alg other than ES256/RS256 ("none", HS256...), crit */
    CP_JWT_UNKNOWN_KEY,   /* "jwt_unknown_key": no key with that kid, or of that type */
    CP_JWT_SIGNATURE,     /* "jwt_signature": the signature does not verify */
    CP_JWT_EXPIRED,       /* "jwt_expired": exp (+ skew) has passed, or there is no exp */
    CP_JWT_NOT_YET_VALID, /* "jwt_not_yet_valid": nbf or iat later than now + skew */
    CP_JWT_AUDIENCE,      /* "jwt_audience": aud does not hold the control plane's audience */
    CP_JWT_ISSUER,        /* "jwt_issuer": iss is not the configured issuer */
    CP_JWT_CLAIMS,        /* "jwt_claims": kubernetes.io claims missing or not valid names,
                           * sub not system:serviceaccount:<ns>:<sa> */
};

/* What a token must satisfy. */
struct cp_jwt_check {
    const char *audience;     /* required, one of the token's aud */
    const char *issuer;       /* NULL: any issuer */
    const char *trust_domain; /* of the SPIFFE ID it maps to */
    int64_t now;              /* Unix seconds */
};

/* The refusal reason for err ("jwt_expired", ...; "ok" for CP_JWT_OK). */
const char *cp_jwt_err_name(enum cp_jwt_err err);

/* Verifies token[0..len) against the keys of `keys` and the rules in `chk` (in this
 * order: format, alg, key, signature, exp/nbf/iat, aud, iss, kubernetes.io claims: no
 * claim of a token is looked at before its signature verifies). On success writes the
 * SPIFFE ID it maps to into id (at least TT_SPIFFE_MAX + 1 bytes) and returns CP_JWT_OK;
 * otherwise returns why and writes a one-line explanation (never the token) into detail. */
enum cp_jwt_err cp_jwt_verify(struct cp_jwks_file *keys, const char *token, size_t len,
                              const struct cp_jwt_check *chk, char *id, size_t idlen, char *detail,
                              size_t detail_len);

#endif
