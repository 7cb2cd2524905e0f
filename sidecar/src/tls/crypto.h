/* The few cryptographic primitives code outside tls/ needs, without BoringSSL's headers:
 * wiping secrets, random numbers, base64 (RFC 4648 §4, padded; BoringSSL does the work) and
 * base64url (RFC 4648 §5 without padding, as JWS writes it: RFC 7515 §2, Appendix C). */
#ifndef TT_CRYPTO_H
#define TT_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Overwrites p[0..n) with zeros in a way the compiler cannot drop (keys, tokens). */
void tt_crypto_wipe(void *p, size_t n);

/* True when a[0..n) equals b[0..n), in time that depends on n only (secrets). */
bool tt_crypto_equal(const void *a, const void *b, size_t n);

/* Fills buf[0..n) from the system's cryptographically secure generator. Aborts the process
 * if the generator fails (BoringSSL's behaviour: there is no safe fallback). */
void tt_crypto_random(void *buf, size_t n);

/* Base64 of in[0..n) as a malloc'ed NUL-terminated string, or NULL when out of memory. */
char *tt_crypto_base64_encode(const uint8_t *in, size_t n);

/* Decodes base64 text[0..len) into a malloc'ed buffer (*out, *out_len; the caller frees).
 * Returns 0, -EINVAL for text that is not padded base64, or -ENOMEM. */
int tt_crypto_base64_decode(const char *text, size_t len, uint8_t **out, size_t *out_len);

/* base64url of in[0..n) without padding (RFC 7515 §2) as a malloc'ed NUL-terminated
 * string, or NULL when out of memory. */
char *tt_crypto_base64url_encode(const uint8_t *in, size_t n);

/* Decodes unpadded base64url text[0..len) (RFC 4648 §5, RFC 7515 §2) into a malloc'ed
 * buffer (*out, *out_len; the caller frees; one spare byte, NUL, follows the data). Only
 * the canonical form is accepted: characters outside A-Z a-z 0-9 - _ (padding '=' and
 * whitespace included), a length of 4k+1, and non-zero bits left over in the last
 * character are -EINVAL. Returns 0, -EINVAL or -ENOMEM. */
int tt_crypto_base64url_decode(const char *text, size_t len, uint8_t **out, size_t *out_len);

#endif
