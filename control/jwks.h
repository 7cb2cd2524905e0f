/* The public keys that sign Kubernetes service-account tokens: a JSON Web Key Set
 * (RFC 7517 §5) as the API server serves it at /openid/v1/jwks, parsed into BoringSSL keys
 * (RFC 7518 §6.2: EC P-256; §6.3: RSA of 2048 to 8192 bits), and the JWS signature check
 * with them (RFC 7518 §3.3 RS256, §3.4 ES256). A cp_jwks is immutable once parsed; a
 * cp_jwks_file holds the set read from a file and reads it again when the file changes.
 * Only the signature primitive lives here: the token format and its claims are jwt.c's. */
#ifndef CP_JWKS_H
#define CP_JWKS_H

#include <stddef.h>
#include <stdint.h>

/* The two signature algorithms accepted (RFC 7518 §3.1); nothing else is ever verified. */
enum cp_jws_alg {
    CP_JWS_ES256, /* ECDSA P-256 SHA-256, signature r||s, 32 bytes each */
    CP_JWS_RS256, /* RSASSA-PKCS1-v1_5 SHA-256 */
};

struct cp_jwks;
struct cp_jwks_file;

/* Parses a JWK Set {"keys": [...]} from text[0..len). Each key needs "kty" "EC" with "crv"
 * "P-256", "x" and "y" (32 bytes each, a point on the curve), or "kty" "RSA" with "n" and
 * "e" (2048 to 8192 bits, an odd exponent above 1); "kid" is optional; "use", when
 * present, must be "sig"; "alg", when present, must be ES256 for EC keys and RS256 for
 * RSA keys, and then binds the key to it. Keys of another "kty" (e.g. "oct", "OKP") are
 * skipped (RFC 7517 §5), but a set without one usable key is an error. `source` (a file
 * name) starts every error message, which names the key (its index and kid) and what was
 * expected. Returns the set or NULL with one line in err. */
struct cp_jwks *cp_jwks_parse(const char *text, size_t len, const char *source, char *err,
                              size_t errlen);

/* Frees a set. Accepts NULL. */
void cp_jwks_free(struct cp_jwks *ks);

/* The number of usable keys in the set. */
size_t cp_jwks_count(const struct cp_jwks *ks);

/* Verifies the JWS signature sig[0..sig_len) over msg[0..msg_len) (the ASCII JWS signing
 * input, RFC 7515 §5.2) with `alg`: with the key whose kid equals `kid` when kid is not
 * NULL, else with each key of the algorithm's type in turn. Returns 0 when a key verifies
 * it, -ENOENT when no key fits (unknown kid, or a key of another type or bound to another
 * alg), -EBADMSG when the signature does not verify (wrong length included). */
int cp_jwks_verify(const struct cp_jwks *ks, const char *kid, enum cp_jws_alg alg,
                   const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len);

/* Reads and parses the JWK Set in `path` (errors name the file). Returns the holder or
 * NULL with one line in err. */
struct cp_jwks_file *cp_jwks_file_open(const char *path, char *err, size_t errlen);

/* Frees the holder and its set. Accepts NULL. */
void cp_jwks_file_free(struct cp_jwks_file *f);

/* Reads the file again if it changed (inode, size or modification time) since it was last
 * read: the new set replaces the old one only when it parses; otherwise the old one stays
 * and err says why (each change is tried once; a file that cannot be found is reported
 * once until it is back). Returns 0 when unchanged, 1 after a reload (err holds the number
 * of keys), <0 when the change could not be loaded. Any thread. */
int cp_jwks_file_refresh(struct cp_jwks_file *f, char *err, size_t errlen);

/* cp_jwks_verify() with the holder's current set, under its lock. Any thread. */
int cp_jwks_file_verify(struct cp_jwks_file *f, const char *kid, enum cp_jws_alg alg,
                        const uint8_t *msg, size_t msg_len, const uint8_t *sig, size_t sig_len);

/* The holder's file name. */
const char *cp_jwks_file_path(const struct cp_jwks_file *f);

#endif
