/* Kubernetes service-account tokens: JWS compact parsing and claim checks (jwt.h). The
 * signature itself is checked by jwks.c. */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "core/spiffe.h"
#include "jwks.h"
#include "jwt.h"
#include "tls/crypto.h"

#define K8S_NAMESPACE_MAX 63  /* a DNS-1123 label */
#define K8S_SA_MAX        253 /* a DNS-1123 subdomain */
/* NumericDates beyond this are not times a token means (year 10000). */
#define NUMERIC_DATE_MAX 253402300800.0

static const char *const err_names[] = {
    [CP_JWT_OK] = "ok",
    [CP_JWT_MALFORMED] = "jwt_malformed",
    [CP_JWT_ALG] = "jwt_alg",
    [CP_JWT_UNKNOWN_KEY] = "jwt_unknown_key",
    [CP_JWT_SIGNATURE] = "jwt_signature",
    [CP_JWT_EXPIRED] = "jwt_expired",
    [CP_JWT_NOT_YET_VALID] = "jwt_not_yet_valid",
    [CP_JWT_AUDIENCE] = "jwt_audience",
    [CP_JWT_ISSUER] = "jwt_issuer",
    [CP_JWT_CLAIMS] = "jwt_claims",
};

/* The refusal reason. */
const char *cp_jwt_err_name(enum cp_jwt_err err)
{
    if ((unsigned)err >= sizeof(err_names) / sizeof(err_names[0]) || err_names[err] == NULL)
        return "jwt_malformed";
    return err_names[err];
}

/* Decodes one base64url part holding a JSON object (RFC 7515 §7.1: the header; RFC 7519
 * §7.2: the claims). Returns the object or NULL. */
static json_t *decode_json_part(const char *p, size_t len)
{
    uint8_t *raw;
    size_t raw_len;
    json_t *o;

    if (tt_crypto_base64url_decode(p, len, &raw, &raw_len) != 0)
        return NULL;
    /* Duplicate members are refused: two "alg" or two "aud" could be read either way. */
    o = json_loadb((const char *)raw, raw_len, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (o != NULL && !json_is_object(o)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* A Kubernetes DNS-1123 label: lower-case letters, digits and '-', starting and ending
 * with a letter or digit, 1..63 characters. */
static bool dns_label(const char *s, size_t len)
{
    if (len == 0 || len > K8S_NAMESPACE_MAX || s[0] == '-' || s[len - 1] == '-')
        return false;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

/* A Kubernetes DNS-1123 subdomain: dot-separated labels, at most 253 characters. */
static bool dns_subdomain(const char *s)
{
    size_t len = strlen(s);
    const char *p = s;

    if (len == 0 || len > K8S_SA_MAX)
        return false;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t n = dot != NULL ? (size_t)(dot - p) : strlen(p);

        if (!dns_label(p, n))
            return false;
        if (dot == NULL)
            return true;
        p = dot + 1;
    }
}

/* A NumericDate claim (RFC 7519 §2): *out is set when present. Returns false when present
 * but not a number in range. */
static bool numeric_date(json_t *claims, const char *name, bool *present, int64_t *out)
{
    json_t *v = json_object_get(claims, name);
    double d;

    *present = v != NULL;
    if (v == NULL)
        return true;
    if (!json_is_number(v))
        return false;
    d = json_number_value(v);
    if (!isfinite(d) || d < 0 || d > NUMERIC_DATE_MAX)
        return false;
    *out = (int64_t)d; /* d >= 0: truncation is floor */
    return true;
}

/* "aud" (RFC 7519 §4.1.3): a string or an array of strings, one of which must be `want`. */
static bool audience_ok(json_t *claims, const char *want)
{
    json_t *aud = json_object_get(claims, "aud");
    size_t i;
    json_t *v;

    if (json_is_string(aud))
        return strcmp(json_string_value(aud), want) == 0;
    if (!json_is_array(aud))
        return false;
    json_array_foreach(aud, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
            return true;
    }
    return false;
}

/* exp, nbf and iat against now, with CP_JWT_SKEW seconds either way. */
static enum cp_jwt_err check_times(json_t *claims, int64_t now, char *detail, size_t dlen)
{
    int64_t exp = 0, nbf = 0, iat = 0;
    bool has_exp, has_nbf, has_iat;

    if (!numeric_date(claims, "exp", &has_exp, &exp) ||
        !numeric_date(claims, "nbf", &has_nbf, &nbf) ||
        !numeric_date(claims, "iat", &has_iat, &iat)) {
        snprintf(detail, dlen, "exp, nbf and iat must be NumericDates (RFC 7519 §2)");
        return CP_JWT_MALFORMED;
    }
    /* A token that never expires is not what kubelet projects: refused as expired. */
    if (!has_exp) {
        snprintf(detail, dlen, "the token has no exp (expiry)");
        return CP_JWT_EXPIRED;
    }
    if (now > exp + CP_JWT_SKEW) {
        snprintf(detail, dlen, "the token expired at %lld (now %lld)", (long long)exp,
                 (long long)now);
        return CP_JWT_EXPIRED;
    }
    if (has_nbf && nbf > now + CP_JWT_SKEW) {
        snprintf(detail, dlen, "the token is not valid before %lld (now %lld)", (long long)nbf,
                 (long long)now);
        return CP_JWT_NOT_YET_VALID;
    }
    if (has_iat && iat > now + CP_JWT_SKEW) {
        snprintf(detail, dlen, "the token was issued in the future, at %lld (now %lld)",
                 (long long)iat, (long long)now);
        return CP_JWT_NOT_YET_VALID;
    }
    return CP_JWT_OK;
}

/* The kubernetes.io claim (namespace, serviceaccount.name) mapped to a SPIFFE ID; "sub",
 * when present, must agree with it. */
static enum cp_jwt_err map_identity(json_t *claims, const char *td, char *id, size_t idlen,
                                    char *detail, size_t dlen)
{
    json_t *k8s = json_object_get(claims, "kubernetes.io");
    json_t *sa = json_object_get(k8s, "serviceaccount");
    json_t *ns_v = json_object_get(k8s, "namespace"), *name_v = json_object_get(sa, "name");
    json_t *sub = json_object_get(claims, "sub");
    const char *ns, *name;
    char want_sub[K8S_NAMESPACE_MAX + K8S_SA_MAX + 32];
    int n;

    if (!json_is_object(k8s) || !json_is_object(sa) || !json_is_string(ns_v) ||
        !json_is_string(name_v)) {
        snprintf(detail, dlen,
                 "expected the claim \"kubernetes.io\" with \"namespace\" and "
                 "\"serviceaccount\": {\"name\"} (a projected service-account "
                 "token)");
        return CP_JWT_CLAIMS;
    }
    ns = json_string_value(ns_v);
    name = json_string_value(name_v);
    /* strlen: a string with an embedded NUL is not a name either. */
    if (strlen(ns) != json_string_length(ns_v) || !dns_label(ns, strlen(ns)) ||
        strlen(name) != json_string_length(name_v) || !dns_subdomain(name)) {
        snprintf(detail, dlen,
                 "kubernetes.io: namespace and serviceaccount name must be "
                 "Kubernetes names (DNS-1123)");
        return CP_JWT_CLAIMS;
    }
    snprintf(want_sub, sizeof(want_sub), "system:serviceaccount:%s:%s", ns, name);
    if (sub != NULL && (!json_is_string(sub) || strcmp(json_string_value(sub), want_sub) != 0)) {
        snprintf(detail, dlen, "sub is not %s", want_sub);
        return CP_JWT_CLAIMS;
    }
    n = snprintf(id, idlen, "spiffe://%s/ns/%s/sa/%s", td, ns, name);
    if (n < 0 || (size_t)n >= idlen || (size_t)n > TT_SPIFFE_MAX ||
        tt_spiffe_check(id, (size_t)n, false) != 0) {
        snprintf(detail, dlen, "namespace %s and service account %s make no valid SPIFFE ID", ns,
                 name);
        return CP_JWT_CLAIMS;
    }
    return CP_JWT_OK;
}

/* The header: "alg" ES256 or RS256, "kid" a string if present, "typ" JWT if present, no
 * "crit" (RFC 7515 §4.1.11: nothing here understands an extension). */
static enum cp_jwt_err check_header(json_t *hdr, enum cp_jws_alg *alg, const char **kid,
                                    char *detail, size_t dlen)
{
    json_t *a = json_object_get(hdr, "alg"), *k = json_object_get(hdr, "kid");
    json_t *typ = json_object_get(hdr, "typ");

    if (!json_is_string(a)) {
        snprintf(detail, dlen, "the header has no alg");
        return CP_JWT_MALFORMED;
    }
    /* Exactly these two: "none", the HMACs (whose secret could be our public key) and
     * anything else never reach a key (RFC 8725 §3.1, §3.2). */
    if (strcmp(json_string_value(a), "ES256") == 0) {
        *alg = CP_JWS_ES256;
    } else if (strcmp(json_string_value(a), "RS256") == 0) {
        *alg = CP_JWS_RS256;
    } else {
        snprintf(detail, dlen, "alg %.20s is not accepted (ES256 or RS256)", json_string_value(a));
        return CP_JWT_ALG;
    }
    if (json_object_get(hdr, "crit") != NULL) {
        snprintf(detail, dlen, "the header has crit extensions, which are not understood");
        return CP_JWT_ALG;
    }
    if (k != NULL &&
        (!json_is_string(k) || strlen(json_string_value(k)) != json_string_length(k))) {
        snprintf(detail, dlen, "the header's kid is not a string");
        return CP_JWT_MALFORMED;
    }
    if (typ != NULL && (!json_is_string(typ) || strcasecmp(json_string_value(typ), "JWT") != 0)) {
        snprintf(detail, dlen, "the header's typ is not JWT");
        return CP_JWT_MALFORMED;
    }
    *kid = k != NULL ? json_string_value(k) : NULL;
    return CP_JWT_OK;
}

/* Verifies a token (see jwt.h). */
enum cp_jwt_err cp_jwt_verify(struct cp_jwks_file *keys, const char *token, size_t len,
                              const struct cp_jwt_check *chk, char *id, size_t idlen, char *detail,
                              size_t dlen)
{
    const char *dot1, *dot2;
    json_t *hdr = NULL, *claims = NULL, *iss;
    uint8_t *sig = NULL;
    size_t sig_len;
    enum cp_jws_alg alg;
    const char *kid;
    enum cp_jwt_err why;
    int r;

    id[0] = '\0';
    detail[0] = '\0';
    if (len > CP_JWT_MAX_LEN) {
        snprintf(detail, dlen, "the token is longer than %d bytes", CP_JWT_MAX_LEN);
        return CP_JWT_MALFORMED;
    }
    /* Compact serialization: header.payload.signature (RFC 7515 §7.1), nothing else (a
     * JWE has five parts). */
    dot1 = memchr(token, '.', len);
    dot2 = dot1 != NULL ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL) {
        snprintf(detail, dlen, "expected a JWS in compact form, header.payload.signature");
        return CP_JWT_MALFORMED;
    }
    hdr = decode_json_part(token, (size_t)(dot1 - token));
    if (hdr == NULL) {
        snprintf(detail, dlen, "the header is not base64url of a JSON object");
        why = CP_JWT_MALFORMED;
        goto out;
    }
    why = check_header(hdr, &alg, &kid, detail, dlen);
    if (why != CP_JWT_OK)
        goto out;
    if (tt_crypto_base64url_decode(dot2 + 1, len - (size_t)(dot2 + 1 - token), &sig, &sig_len) !=
        0) {
        snprintf(detail, dlen, "the signature is not base64url");
        why = CP_JWT_MALFORMED;
        goto out;
    }
    r = cp_jwks_file_verify(keys, kid, alg, (const uint8_t *)token, (size_t)(dot2 - token), sig,
                            sig_len);
    if (r == -ENOENT) {
        snprintf(detail, dlen, "no %s key%s%.100s%s in %s", alg == CP_JWS_ES256 ? "EC" : "RSA",
                 kid != NULL ? " with kid \"" : "", kid != NULL ? kid : "", kid != NULL ? "\"" : "",
                 cp_jwks_file_path(keys));
        why = CP_JWT_UNKNOWN_KEY;
        goto out;
    }
    if (r != 0) {
        snprintf(detail, dlen, "the signature does not verify");
        why = CP_JWT_SIGNATURE;
        goto out;
    }
    /* Only now is anything in the claims believed. */
    claims = decode_json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    if (claims == NULL) {
        snprintf(detail, dlen, "the payload is not base64url of a JSON object");
        why = CP_JWT_MALFORMED;
        goto out;
    }
    why = check_times(claims, chk->now, detail, dlen);
    if (why != CP_JWT_OK)
        goto out;
    if (!audience_ok(claims, chk->audience)) {
        snprintf(detail, dlen, "the token's aud does not include %.200s", chk->audience);
        why = CP_JWT_AUDIENCE;
        goto out;
    }
    iss = json_object_get(claims, "iss");
    if (chk->issuer != NULL &&
        (!json_is_string(iss) || strcmp(json_string_value(iss), chk->issuer) != 0)) {
        snprintf(detail, dlen, "the token's iss is not %.200s", chk->issuer);
        why = CP_JWT_ISSUER;
        goto out;
    }
    why = map_identity(claims, chk->trust_domain, id, idlen, detail, dlen);
out:
    if (why != CP_JWT_OK)
        id[0] = '\0';
    free(sig);
    json_decref(hdr);
    json_decref(claims);
    return why;
}
