/* The few cryptographic primitives code outside tls/ needs, without BoringSSL's headers:
 * wiping secrets, random numbers and base64 (RFC 4648 §4, padded). BoringSSL does the work. */
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

#endif
